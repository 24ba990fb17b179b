//! Data sets and loaders of a run, from its `[data]` section: CIFAR-10 binary batches or an
//! ImageNet-layout JPEG folder, the first N samples when a limit is set, a shuffled augmented
//! training loader and an in-order evaluation loader.

use crate::config::{BadImagePolicy, Config, DataFormat};
use crate::error::{Result, TrainError};
use hla_data::{
    Cifar10, Dataset, ErrorPolicy, ImageFolder, ImageFolderOptions, ImageSet, ImageTransform,
    Loader, LoaderConfig, Normalize, PixelTransform, Shard,
};
use ndarray::ArrayViewMut3;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// CIFAR-10 per-channel mean (of the training set, the usual constants).
pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 per-channel standard deviation.
pub const CIFAR_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// The first `n` samples of a data set.
struct Prefix {
    inner: Arc<dyn Dataset>,
    n: usize,
}

impl Dataset for Prefix {
    fn len(&self) -> usize {
        self.n
    }
    fn label(&self, index: usize) -> usize {
        self.inner.label(index)
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn sample_shape(&self) -> [usize; 3] {
        self.inner.sample_shape()
    }
    fn load(
        &self,
        index: usize,
        rng: &mut ChaCha8Rng,
        out: ArrayViewMut3<f32>,
    ) -> hla_data::Result<()> {
        self.inner.load(index, rng, out)
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
}

fn limit(d: Arc<dyn Dataset>, n: Option<usize>) -> Arc<dyn Dataset> {
    match n {
        Some(n) if n < d.len() => Arc::new(Prefix { inner: d, n }),
        _ => d,
    }
}

/// Train and test loaders of a run.
pub struct Data {
    /// Shuffled, augmented training batches.
    pub train: Loader,
    /// Test batches in index order, no augmentation.
    pub test: Loader,
    /// Number of classes in the data.
    pub num_classes: usize,
    /// Warnings of the data scan (e.g. empty class folders skipped under `on_bad_image =
    /// skip`), for the caller to report.
    pub warnings: Vec<String>,
}

impl Data {
    /// A one-line description, e.g. "CIFAR-10 data/cifar10: 5000 train / 1000 test images".
    pub fn describe(&self, cfg: &Config) -> String {
        format!(
            "{} {}: {} train / {} test images, {} classes",
            match cfg.data.format {
                DataFormat::Cifar10 => "CIFAR-10",
                DataFormat::Imagefolder => "ImageFolder",
            },
            cfg.data.root.display(),
            self.train.dataset().len(),
            self.test.dataset().len(),
            self.num_classes
        )
    }
}

/// Opens the data sets named by the config and builds both loaders.
pub fn load_data(cfg: &Config, threads: usize) -> Result<Data> {
    load_data_sharded(cfg, threads, Shard::default())
}

/// [`load_data`] for one rank of a data-parallel run: the training loader reads `shard`'s
/// slice of every global batch (the test loader reads everything).
///
/// # Errors
/// As [`load_data`].
pub fn load_data_sharded(cfg: &Config, threads: usize, shard: Shard) -> Result<Data> {
    let root = &cfg.data.root;
    let policy = match cfg.data.on_bad_image {
        BadImagePolicy::Error => ErrorPolicy::Error,
        BadImagePolicy::Skip => ErrorPolicy::Skip,
    };
    let mut warnings = Vec::new();
    let (train, test): (Arc<dyn Dataset>, Arc<dyn Dataset>) = match cfg.data.format {
        DataFormat::Cifar10 => {
            let c = Cifar10::load(root)?;
            let norm = || Normalize::new(&CIFAR_MEAN, &CIFAR_STD);
            let aug = if cfg.data.augment {
                PixelTransform::cifar_train()
            } else {
                PixelTransform::Eval
            };
            let tr: Arc<ImageSet> = Arc::new(c.train);
            let te: Arc<ImageSet> = Arc::new(c.test);
            (
                Arc::new(hla_data::ArrayDataset::new(tr, aug, norm()?)?),
                Arc::new(hla_data::ArrayDataset::new(
                    te,
                    PixelTransform::Eval,
                    norm()?,
                )?),
            )
        }
        DataFormat::Imagefolder => {
            let opts = |t: ImageTransform| ImageFolderOptions {
                class_index: cfg.data.class_index.clone(),
                on_error: policy,
                transform: t,
                normalize: Normalize::imagenet(),
            };
            let train_t = if cfg.data.augment {
                ImageTransform::train(cfg.data.image_size)
            } else {
                ImageTransform::eval(cfg.data.resize, cfg.data.image_size)
            };
            let eval_t = ImageTransform::eval(cfg.data.resize, cfg.data.image_size);
            let tr = ImageFolder::open(root.join("train"), &opts(train_t))?;
            let te = ImageFolder::open(root.join("val"), &opts(eval_t))?;
            warnings.extend(tr.warnings().iter().chain(te.warnings()).cloned());
            (Arc::new(tr), Arc::new(te))
        }
    };
    let num_classes = train.num_classes();
    if num_classes > cfg.model.num_classes {
        return Err(TrainError::Mismatch(format!(
            "model.num_classes = {} but the data has {num_classes} classes",
            cfg.model.num_classes
        )));
    }
    let train = limit(train, cfg.data.train_limit);
    let test = limit(test, cfg.data.test_limit);
    let base = LoaderConfig {
        batch_size: cfg.data.batch_size,
        seed: cfg.seed,
        shuffle: true,
        drop_last: cfg.data.drop_last,
        threads: threads.max(1),
        prefetch: 2,
        on_error: policy,
        ..LoaderConfig::default()
    };
    let train = Loader::new(
        train,
        LoaderConfig {
            shard,
            ..base.clone()
        },
    )?;
    let test = Loader::new(
        test,
        LoaderConfig {
            batch_size: cfg.data.eval_batch_size,
            shuffle: false,
            drop_last: false,
            ..base
        },
    )?;
    if train.batches_per_epoch() == 0 {
        return Err(TrainError::Mismatch(format!(
            "data.batch_size = {} is larger than the {} training images (with drop_last)",
            cfg.data.batch_size,
            train.dataset().len()
        )));
    }
    Ok(Data {
        train,
        test,
        num_classes,
        warnings,
    })
}

/// How an exported model wants its input (stored in the export as metadata `preprocess`, read
/// by `hla infer`): resize the shorter side to `resize`, centre-crop `crop`, then
/// `(v / 255 − mean) / std` per channel. CIFAR-10 models take 32 × 32 images as they are.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    /// Shorter side after resizing.
    pub resize: usize,
    /// Side of the centre crop (the network's input size).
    pub crop: usize,
    /// Per-channel mean (on the `[0, 1]` scale).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Preprocess {
    /// The evaluation preprocessing of `cfg`'s data.
    pub fn of(cfg: &Config) -> Self {
        match cfg.data.format {
            DataFormat::Cifar10 => Preprocess {
                resize: 32,
                crop: 32,
                mean: CIFAR_MEAN.to_vec(),
                std: CIFAR_STD.to_vec(),
            },
            DataFormat::Imagefolder => {
                let n = Normalize::imagenet();
                Preprocess {
                    resize: cfg.data.resize,
                    crop: cfg.data.image_size,
                    mean: n.mean,
                    std: n.std,
                }
            }
        }
    }

    /// The transform and normalisation as the data crate's types.
    ///
    /// # Errors
    /// `Data` for sizes of 0 or a bad mean / std.
    pub fn transform(&self) -> Result<(ImageTransform, Normalize)> {
        let t = ImageTransform::eval(self.resize, self.crop);
        t.validate()?;
        Ok((t, Normalize::new(&self.mean, &self.std)?))
    }
}

/// Readable class names of `cfg`'s data in label order: CIFAR-10's `batches.meta.txt` beside
/// the batches (the standard ten names without it); an ImageFolder's class-index names, or its
/// sorted training folder names.
///
/// # Errors
/// `Data` when the class index or the training folder cannot be read.
pub fn class_names(cfg: &Config) -> Result<Vec<String>> {
    let root = &cfg.data.root;
    Ok(match cfg.data.format {
        DataFormat::Cifar10 => std::fs::read_to_string(root.join("batches.meta.txt"))
            .ok()
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|v| v.len() == hla_data::CIFAR10_CLASSES.len())
            .unwrap_or_else(|| hla_data::CIFAR10_CLASSES.map(String::from).to_vec()),
        DataFormat::Imagefolder => match &cfg.data.class_index {
            Some(p) => hla_data::folder::read_class_index(p)?
                .into_iter()
                .map(|c| c.name)
                .collect(),
            None => {
                let dir = root.join("train");
                let rd = std::fs::read_dir(&dir).map_err(|e| hla_data::DataError::Io {
                    path: dir.clone(),
                    source: e,
                })?;
                let mut v: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            }
        },
    })
}
