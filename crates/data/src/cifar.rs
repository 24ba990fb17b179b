//! CIFAR-10 "binary version" reader: files of 3,073-byte records, byte 0 the label (0–9),
//! then 1,024 red, 1,024 green and 1,024 blue bytes, each plane 32×32 row-major. No header.

use std::path::{Path, PathBuf};

use ndarray::Array4;

use crate::dataset::{ArrayDataset, ImageSet};
use crate::error::{DataError, Result};
use crate::transforms::{Normalize, PixelTransform};

/// Bytes per record: 1 label byte + 3 × 32 × 32 pixels.
pub const CIFAR10_RECORD: usize = 1 + 3 * 32 * 32;

/// CIFAR-10 class names in label order (as in `batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Parses CIFAR-10 records from `bytes` (read from `path`).
///
/// # Errors
/// `BadCifar` if the size is 0 or not a multiple of 3,073, or a label is ≥ 10.
pub fn parse_cifar10(bytes: &[u8], path: &Path) -> Result<ImageSet> {
    if bytes.is_empty() || bytes.len() % CIFAR10_RECORD != 0 {
        return Err(DataError::BadCifar {
            path: path.to_path_buf(),
            reason: format!(
                "size {} bytes is not a positive multiple of the {CIFAR10_RECORD}-byte record",
                bytes.len()
            ),
        });
    }
    let n = bytes.len() / CIFAR10_RECORD;
    let mut pixels = Vec::with_capacity(n * (CIFAR10_RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for (r, rec) in bytes.chunks_exact(CIFAR10_RECORD).enumerate() {
        if rec[0] >= 10 {
            return Err(DataError::BadCifar {
                path: path.to_path_buf(),
                reason: format!("record {r}: label byte {} is not in 0..10", rec[0]),
            });
        }
        labels.push(rec[0] as usize);
        pixels.extend_from_slice(&rec[1..]);
    }
    let images = Array4::from_shape_vec((n, 3, 32, 32), pixels)
        .expect("cifar: n·3072 bytes make [n, 3, 32, 32]");
    Ok(ImageSet {
        images,
        labels,
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        source: path.display().to_string(),
    })
}

/// Reads one CIFAR-10 `.bin` file.
///
/// # Errors
/// `Io` if it cannot be read; otherwise as [`parse_cifar10`].
pub fn read_cifar10_bin(path: &Path) -> Result<ImageSet> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_cifar10(&bytes, path)
}

/// Concatenates sets with the same image shape and classes (train batches 1–5).
fn concat(sets: Vec<ImageSet>, source: String) -> ImageSet {
    let n: usize = sets.iter().map(|s| s.len()).sum();
    let (_, c, h, w) = sets[0].images.dim();
    let classes = sets[0].classes.clone();
    let mut pixels = Vec::with_capacity(n * c * h * w);
    let mut labels = Vec::with_capacity(n);
    for s in sets {
        pixels.extend(s.images.iter());
        labels.extend(s.labels);
    }
    ImageSet {
        images: Array4::from_shape_vec((n, c, h, w), pixels)
            .expect("cifar: concatenated sizes agree"),
        labels,
        classes,
        source,
    }
}

/// The CIFAR-10 train and test sets.
#[derive(Clone, Debug)]
pub struct Cifar10 {
    /// `data_batch_1.bin` … `data_batch_5.bin` (those present), in that order.
    pub train: ImageSet,
    /// `test_batch.bin`.
    pub test: ImageSet,
}

impl Cifar10 {
    /// Loads CIFAR-10 from `dir`, which holds the `.bin` files or a `cifar-10-batches-bin`
    /// folder with them. Train batches that are absent are skipped (a subset may ship only
    /// `data_batch_1.bin`), but at least one must exist, and `test_batch.bin` must.
    ///
    /// # Errors
    /// `Io` naming the missing folder or file; `BadCifar` for a malformed file.
    pub fn load(dir: impl AsRef<Path>) -> Result<Cifar10> {
        let dir = Self::resolve(dir.as_ref())?;
        let train_files: Vec<PathBuf> = (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .filter(|p| p.is_file())
            .collect();
        if train_files.is_empty() {
            let p = dir.join("data_batch_1.bin");
            return Err(DataError::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no data_batch_*.bin"),
            ));
        }
        let sets = train_files
            .iter()
            .map(|p| read_cifar10_bin(p))
            .collect::<Result<Vec<_>>>()?;
        let train = concat(sets, format!("{}/data_batch_*.bin", dir.display()));
        let test = read_cifar10_bin(&dir.join("test_batch.bin"))?;
        Ok(Cifar10 { train, test })
    }

    /// The usual training and evaluation datasets: train with [`PixelTransform::cifar_train`]
    /// (pad-4 random crop + horizontal flip), test without augmentation, both normalised by
    /// `normalize` (e.g. [`Normalize::imagenet`], which the pretrained ResNet-20 uses).
    ///
    /// # Errors
    /// `BadOption` if `normalize` is not for 3 channels.
    pub fn into_datasets(self, normalize: Normalize) -> Result<(ArrayDataset, ArrayDataset)> {
        Ok((
            self.train
                .into_dataset(PixelTransform::cifar_train(), normalize.clone())?,
            self.test.into_dataset(PixelTransform::Eval, normalize)?,
        ))
    }

    /// Loads only the test set (`test_batch.bin`) from `dir` (as in [`Cifar10::load`]).
    ///
    /// # Errors
    /// As [`Cifar10::load`].
    pub fn load_test(dir: impl AsRef<Path>) -> Result<ImageSet> {
        let dir = Self::resolve(dir.as_ref())?;
        read_cifar10_bin(&dir.join("test_batch.bin"))
    }

    fn resolve(dir: &Path) -> Result<PathBuf> {
        if !dir.is_dir() {
            return Err(DataError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "CIFAR-10 folder not found"),
            ));
        }
        let nested = dir.join("cifar-10-batches-bin");
        Ok(if nested.is_dir() {
            nested
        } else {
            dir.to_path_buf()
        })
    }
}
