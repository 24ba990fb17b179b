//! Decoded + augmented images per second of the ImageFolder loader on the ImageNet sample,
//! for the `train_224` (`RandomResizedCrop(224)` + flip + normalise) and `eval_256_224`
//! (`Resize(256)` + `CenterCrop(224)` + normalise) pipelines at 1 and 2 decode threads.
//! Mirrors `shared/bench/torch_dataloader.py` (batch 32, shuffled, 2 epochs). Also reports the
//! CIFAR-10 training pipeline on the shipped subset (`cifar_train_32`, batch 128).
//!
//! Run: `cargo bench -p hla-data` (optional: `-- --root DIR --epochs N`).
//! Uses `../shared/data/imagenet-sample/val` when present, else the workspace's
//! `data/imagenette/val`.

use std::sync::Arc;
use std::time::Instant;

use hla_data::{Dataset, ImageFolder, ImageFolderOptions, ImageTransform, Loader, LoaderConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let root = arg("--root")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            hla_data::shared_data_dir()
                .map(|d| d.join("imagenet-sample/val"))
                .unwrap_or_else(|| hla_data::shipped_data_dir().join("imagenette/val"))
        });
    let epochs: u64 = arg("--epochs").map(|s| s.parse()).transpose()?.unwrap_or(2);
    println!("root {} ({} epochs, batch 32)", root.display(), epochs);
    for (name, t) in [
        ("train_224", ImageTransform::train(224)),
        ("eval_256_224", ImageTransform::eval(256, 224)),
    ] {
        let opts = ImageFolderOptions {
            transform: t,
            ..Default::default()
        };
        let ds: Arc<dyn Dataset> = Arc::new(ImageFolder::open(&root, &opts)?);
        for threads in [1, 2] {
            let cfg = LoaderConfig {
                batch_size: 32,
                seed: 0,
                threads,
                prefetch: 2,
                ..Default::default()
            };
            let loader = Loader::new(ds.clone(), cfg)?;
            let t0 = Instant::now();
            let mut n = 0usize;
            let mut checksum = 0f64;
            for e in 0..epochs {
                for b in loader.epoch(e) {
                    let b = b?;
                    n += b.labels.len();
                    checksum += b.images[[0, 0, 0, 0]] as f64; // keep the work observable
                }
            }
            let s = t0.elapsed().as_secs_f64();
            println!(
                "{{\"pipeline\": \"{name}\", \"threads\": {threads}, \"img_s\": {:.1}, \"images\": {n}, \"checksum\": {checksum:.4}}}",
                n as f64 / s
            );
        }
    }
    // CIFAR-10 training pipeline (pad-4 crop + flip + normalise) on the shipped subset.
    let cifar = hla_data::Cifar10::load(hla_data::shipped_data_dir().join("cifar10"))?;
    let (train, _) = cifar.into_datasets(hla_data::Normalize::imagenet())?;
    let ds: Arc<dyn Dataset> = Arc::new(train);
    for threads in [1, 2] {
        let cfg = LoaderConfig {
            batch_size: 128,
            threads,
            ..Default::default()
        };
        let loader = Loader::new(ds.clone(), cfg)?;
        let t0 = Instant::now();
        let mut n = 0usize;
        for e in 0..epochs {
            for b in loader.epoch(e) {
                n += b?.labels.len();
            }
        }
        let s = t0.elapsed().as_secs_f64();
        println!(
            "{{\"pipeline\": \"cifar_train_32\", \"threads\": {threads}, \"img_s\": {:.1}, \"images\": {n}}}",
            n as f64 / s
        );
    }
    Ok(())
}
