//! The readers under test, each with valid seed inputs built from the shipped data (and the
//! `../shared/data/bad-images` set when present).

use crate::mutate::Kind;
use hla_core::{HlaConfig, Method};
use hla_data::Dataset;
use std::path::{Path, PathBuf};

/// Reads one input; `Err` holds the typed error's message.
pub type ReadFn = Box<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// One reader: a name, its input kind, valid seeds and the read itself.
pub struct Target {
    /// Short name (also the regression folder's).
    pub name: &'static str,
    /// Which mutations suit its inputs.
    pub kind: Kind,
    /// Valid inputs to mutate.
    pub seeds: Vec<Vec<u8>>,
    /// Reads one input as the tool does; `Err` holds the typed error's message.
    pub read: ReadFn,
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A scratch folder for this process's seeds and file-based reads.
fn scratch(name: &str) -> Result<PathBuf, String> {
    let d = std::env::temp_dir().join(format!("hla-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(s)?;
    Ok(d)
}

fn resnet8() -> Box<dyn hla_models::Model> {
    hla_models::build("resnet8", 10, 0).expect("resnet8 builds")
}

/// A real training checkpoint (one tiny epoch of ResNet-8 on the shipped CIFAR subset).
fn checkpoint_seed(repo: &Path) -> Result<Vec<u8>, String> {
    let dir = scratch("ckpt-run")?;
    let cfg: hla_train::Config = toml::from_str(&format!(
        "name = \"fuzz-seed\"\n[model]\narch = \"resnet8\"\nnum_classes = 10\n\
         [data]\nformat = \"cifar10\"\nroot = {:?}\ntrain_limit = 32\ntest_limit = 16\n\
         batch_size = 16\neval_batch_size = 16\n[train]\nepochs = 1\n[report]\nplots = false\n",
        repo.join("data/cifar10").display().to_string()
    ))
    .map_err(s)?;
    let opts = hla_train::RunOptions {
        threads: 1,
        stop_after_epochs: None,
        stop: hla_train::StopFlag::default(),
        group: None,
    };
    hla_train::run::train(&cfg, &dir, None, &opts, &mut hla_train::run::Silent).map_err(s)?;
    std::fs::read(dir.join("checkpoint.safetensors")).map_err(s)
}

/// A packed ternary export (TWN on a ResNet-8).
fn packed_seed() -> Result<Vec<u8>, String> {
    let model = resnet8();
    let cfg = HlaConfig {
        method: Method::Twn,
        ..Default::default()
    };
    let st = hla_core::method::MethodState::new(cfg, model.as_ref()).map_err(s)?;
    let pm = hla_core::packed::export_model(model.as_ref(), &st).map_err(s)?;
    pm.to_bytes().map_err(s)
}

fn weights_seed() -> Result<Vec<u8>, String> {
    let p = scratch("weights-seed")?.join("w.safetensors");
    hla_models::io::save_safetensors(resnet8().as_ref(), &p).map_err(s)?;
    std::fs::read(p).map_err(s)
}

fn idx_images(n: u32, r: u32, c: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for v in [n, r, c] {
        b.extend(v.to_be_bytes());
    }
    b.extend((0..(n * r * c) as usize).map(|i| (i % 251) as u8));
    b
}

fn image_seeds(repo: &Path) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for class in ["airplane", "cat", "ship"] {
        out.push(
            std::fs::read(repo.join(format!("data/cifar10-jpeg/val/{class}/0000.jpg")))
                .map_err(s)?,
        );
    }
    let img = image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 200]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(s)?;
    out.push(png);
    let bad = repo.join("../shared/data/bad-images");
    if let Ok(rd) = std::fs::read_dir(&bad) {
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "JPEG"))
        {
            out.push(std::fs::read(f).map_err(s)?);
        }
    }
    Ok(out)
}

/// Every target, seeded from the repository at `repo` (the workspace root).
///
/// # Errors
/// A seed that cannot be built (shipped data missing).
pub fn all_targets(repo: &Path) -> Result<Vec<Target>, String> {
    let repo = repo.to_path_buf();
    let cifar = std::fs::read(repo.join("data/cifar10/test_batch.bin")).map_err(s)?;
    let cifar_seed = cifar[..4 * 3073].to_vec();
    let images = image_seeds(&repo)?;
    let mut configs = Vec::new();
    for name in [
        "demo.toml",
        "cifar10-resnet20.toml",
        "imagenet-resnet18.toml",
    ] {
        if let Ok(b) = std::fs::read(repo.join("configs").join(name)) {
            configs.push(b);
        }
    }
    if configs.is_empty() {
        return Err("no configs/*.toml seed found".into());
    }
    let weights_dir = scratch("weights")?;
    let folder_dir = scratch("folder")?;
    let good_jpeg = images[0].clone();
    let mut t = vec![
        Target {
            name: "checkpoint",
            kind: Kind::Safetensors,
            seeds: vec![checkpoint_seed(&repo)?],
            read: Box::new(|b| {
                let ck = hla_train::checkpoint::Checkpoint::from_bytes(b, Path::new("fuzz.ckpt"))
                    .map_err(s)?;
                let mut m = resnet8();
                hla_train::checkpoint::load_model_tensors(m.as_mut(), &ck).map_err(s)
            }),
        },
        Target {
            name: "packed",
            kind: Kind::Safetensors,
            seeds: vec![packed_seed()?],
            read: Box::new(|b| {
                let pm = hla_core::export::PackedModel::from_bytes(b, "fuzz.ternary.safetensors")
                    .map_err(s)?;
                for l in &pm.layers {
                    l.dequantize().map_err(s)?;
                }
                let mut m = resnet8();
                hla_core::packed::load_packed(m.as_mut(), &pm)
                    .map(|_| ())
                    .map_err(s)
            }),
        },
        Target {
            name: "weights",
            kind: Kind::Safetensors,
            seeds: vec![weights_seed()?],
            read: Box::new(move |b| {
                let p = weights_dir.join("w.safetensors");
                std::fs::write(&p, b).map_err(s)?;
                hla_models::io::read_tensors(&p).map_err(s)?;
                let mut m = resnet8();
                hla_models::io::load_safetensors(m.as_mut(), &p, false).map_err(s)?;
                hla_models::io::load_safetensors(m.as_mut(), &p, true).map_err(s)
            }),
        },
        Target {
            name: "cifar",
            kind: Kind::Binary,
            seeds: vec![cifar_seed],
            read: Box::new(|b| {
                let set = hla_data::cifar::parse_cifar10(b, Path::new("fuzz.bin")).map_err(s)?;
                let ds = set
                    .into_dataset(
                        hla_data::transforms::PixelTransform::Eval,
                        hla_data::transforms::Normalize::imagenet(),
                    )
                    .map_err(s)?;
                let mut out = ndarray::Array3::<f32>::zeros(ds.sample_shape());
                let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
                for i in 0..ds.len().min(4) {
                    ds.load(i, &mut rng, out.view_mut()).map_err(s)?;
                }
                Ok(())
            }),
        },
        Target {
            name: "idx-images",
            kind: Kind::Binary,
            seeds: vec![idx_images(3, 28, 28), idx_images(1, 2, 3)],
            read: Box::new(|b| {
                hla_data::mnist::parse_idx_images(b, Path::new("fuzz-idx3"))
                    .map(|_| ())
                    .map_err(s)
            }),
        },
        Target {
            name: "idx-labels",
            kind: Kind::Binary,
            seeds: vec![vec![0, 0, 8, 1, 0, 0, 0, 3, 5, 0, 4]],
            read: Box::new(|b| {
                hla_data::mnist::parse_idx_labels(b, Path::new("fuzz-idx1"))
                    .map(|_| ())
                    .map_err(s)
            }),
        },
        Target {
            name: "image",
            kind: Kind::Binary,
            seeds: images.clone(),
            read: Box::new(|b| {
                hla_data::decode_rgb(b, Path::new("fuzz.jpg"))
                    .map(|_| ())
                    .map_err(s)
            }),
        },
        Target {
            name: "image-folder",
            kind: Kind::Binary,
            seeds: images,
            read: Box::new(move |b| {
                // A two-class tree: one good image, one under test; read under both policies.
                let root = &folder_dir;
                for c in ["a", "b"] {
                    std::fs::create_dir_all(root.join(c)).map_err(s)?;
                }
                std::fs::write(root.join("a/good.jpg"), &good_jpeg).map_err(s)?;
                std::fs::write(root.join("b/test.jpg"), b).map_err(s)?;
                let mut last = Ok(());
                for on_error in [hla_data::ErrorPolicy::Skip, hla_data::ErrorPolicy::Error] {
                    let opts = hla_data::folder::ImageFolderOptions {
                        on_error,
                        transform: hla_data::transforms::ImageTransform::eval(40, 32),
                        ..Default::default()
                    };
                    let ds = hla_data::folder::ImageFolder::open(root, &opts).map_err(s)?;
                    let mut out = ndarray::Array3::<f32>::zeros(ds.sample_shape());
                    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
                    for i in 0..ds.len() {
                        if let Err(e) = ds.load(i, &mut rng, out.view_mut()) {
                            last = Err(s(e));
                        }
                    }
                }
                last
            }),
        },
    ];
    t.push(Target {
        name: "config",
        kind: Kind::Text,
        seeds: configs,
        read: Box::new(|b| {
            let text = std::str::from_utf8(b).map_err(s)?;
            let cfg: hla_train::Config = toml::from_str(text).map_err(s)?;
            cfg.validate().map_err(s)?;
            // What a run derives from a valid config must not panic either.
            let _ = cfg.to_toml();
            let _ = cfg.stage1_schedule();
            hla_core::algorithm::Algorithm1::new(&cfg.hla)
                .map(|_| ())
                .map_err(s)
        }),
    });
    Ok(t)
}
