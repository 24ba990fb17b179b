//! Data loading for hla: CIFAR-10 and MNIST binary readers, an ImageFolder JPEG loader with
//! torchvision-style transforms, and deterministic parallel batching.
//!
//! # Overview
//! - [`Cifar10::load`] / [`Mnist::load`] read the original binary formats into an
//!   [`ImageSet`] (`[n, c, h, w]` bytes + labels), validated against sizes and headers.
//!   [`ImageSet::into_dataset`] attaches a [`PixelTransform`] (CIFAR: pad-4 random crop + flip)
//!   and a [`Normalize`].
//! - [`ImageFolder::open`] scans `root/<class>/<image>` (classes sorted by name, or indexed by a
//!   class-index file so a subset keeps ImageNet's 1000-class indices); images are decoded on
//!   demand (JPEG or PNG, sniffed from the bytes; grayscale, CMYK and RGBA become RGB) and put
//!   through an [`ImageTransform`] (`RandomResizedCrop` + flip, or `Resize` + `CenterCrop`), with
//!   Pillow-exact bilinear resampling.
//! - [`Loader`] batches any [`Dataset`] into `Array4<f32>` NCHW + `Vec<usize>` labels.
//!
//! ```no_run
//! use std::sync::Arc;
//! use hla_data::{Cifar10, Loader, LoaderConfig, Normalize, PixelTransform};
//!
//! let cifar = Cifar10::load(hla_data::shipped_data_dir().join("cifar10"))?;
//! let train = cifar.train.into_dataset(PixelTransform::cifar_train(), Normalize::imagenet())?;
//! let cfg = LoaderConfig { batch_size: 128, seed: 42, threads: 2, ..LoaderConfig::default() };
//! let loader = Loader::new(Arc::new(train), cfg)?;
//! for epoch in 0..2 {
//!     for batch in loader.epoch(epoch) {
//!         let batch = batch?; // batch.images: [n, 3, 32, 32], batch.labels: [n]
//!         # let _ = batch;
//!     }
//! }
//! // Resume after a checkpoint taken after batch 9 of epoch 1:
//! let rest = loader.epoch_from(1, 10)?;
//! # let _ = rest;
//! # Ok::<(), hla_data::DataError>(())
//! ```
//!
//! # Determinism
//! The epoch permutation is drawn from `(seed, Shuffle, epoch)` and each sample's augmentation
//! from `(seed, Augment, epoch, sample index)` (splitmix64 [`derive_seed`] + ChaCha8), so a batch
//! is a function of `(data, seed, epoch, position)` only: bit-identical with 1 or N decode
//! threads, with or without prefetch, and when resumed mid-epoch. The augmentation of a sample
//! does not depend on the shuffle or the shard either. Across machines the pixels are the same
//! too (integer resampling, no SIMD-dependent float sums).
//!
//! # Bad input
//! Every failure is a [`DataError`] naming the file. [`LoaderConfig::on_error`] chooses between
//! stopping ([`ErrorPolicy::Error`], default) and leaving the sample out of its batch with its
//! reason in [`Batch::skip_reasons`] and a count ([`ErrorPolicy::Skip`], see
//! [`Loader::skipped`]). The crate writes nothing to stdout or stderr: reporting is the
//! caller's (the `hla` CLI prints each reason as a warning line).
#![warn(missing_docs)]

pub mod cifar;
pub mod dataset;
pub mod decode;
pub mod error;
pub mod folder;
pub mod loader;
pub mod mnist;
pub mod seed;
pub mod transforms;

pub use cifar::{read_cifar10_bin, Cifar10, CIFAR10_CLASSES};
pub use dataset::{ArrayDataset, Dataset, ImageSet};
pub use decode::{decode_rgb, load_rgb};
pub use error::{DataError, Result};
pub use folder::{ClassInfo, ErrorPolicy, ImageFolder, ImageFolderOptions};
pub use loader::{Batch, Batches, Loader, LoaderConfig, Shard, SHARD_ALIGN};
pub use mnist::Mnist;
pub use seed::{derive_seed, splitmix64, Purpose};
pub use transforms::{
    CropBox, ImageTransform, Normalize, PixelTransform, IMAGENET_MEAN, IMAGENET_STD,
};

use std::path::PathBuf;

/// The workspace's `data/` folder (small real data shipped with the project: a CIFAR-10
/// subset in `data/cifar10`, ImageFolder samples in `data/imagenette` and `data/cifar10-jpeg`).
/// Found from this crate's source location, so it works from any working directory of a
/// source checkout.
pub fn shipped_data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data")
}

/// The reference data in `../shared/data` next to the workspace, if present (larger sets:
/// full CIFAR-10, MNIST, the 1000-image ImageNet sample, bad images).
pub fn shared_data_dir() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    p.is_dir().then_some(p)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
