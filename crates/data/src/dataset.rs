//! The [`Dataset`] trait the loader batches from, and in-memory byte image sets.

use std::sync::Arc;

use ndarray::{Array4, ArrayViewMut3, Axis};
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};
use crate::transforms::{Normalize, PixelTransform};

/// A finite, indexable set of labelled samples that produce `[c, h, w]` `f32` tensors.
///
/// `load` gets the sample's own RNG (derived from seed, epoch and index by the loader), so a
/// sample's tensor does not depend on which thread produces it or in which order.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there is no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class label of sample `index` (cheap: no decoding).
    fn label(&self, index: usize) -> usize;
    /// Number of classes (labels are in `0..num_classes`).
    fn num_classes(&self) -> usize;
    /// Shape `[c, h, w]` of every produced sample.
    fn sample_shape(&self) -> [usize; 3];
    /// Produces sample `index` into `out` (`[c, h, w]`), drawing augmentations from `rng`.
    ///
    /// # Errors
    /// The sample's file cannot be read or decoded (the error names the file).
    fn load(&self, index: usize, rng: &mut ChaCha8Rng, out: ArrayViewMut3<f32>) -> Result<()>;
    /// Human-readable name of sample `index` (a file path, or `file#record`), for messages.
    fn describe(&self, index: usize) -> String;
}

/// In-memory 8-bit images `[n, c, h, w]` with labels, as read from CIFAR-10 or MNIST files.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// Pixels, `[n, c, h, w]`, channel planes row-major (CIFAR's record layout).
    pub images: Array4<u8>,
    /// Label of each image, in `0..classes.len()`.
    pub labels: Vec<usize>,
    /// Class names, index order.
    pub classes: Vec<String>,
    /// Where the images came from (for messages).
    pub source: String,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Count of images per class, `[classes.len()]`.
    pub fn histogram(&self) -> Vec<usize> {
        let mut h = vec![0; self.classes.len()];
        for &l in &self.labels {
            h[l] += 1;
        }
        h
    }

    /// Turns the set into a [`Dataset`] applying `transform` then `normalize` to every sample.
    ///
    /// # Errors
    /// `BadOption` if `normalize` is not for the set's channel count.
    pub fn into_dataset(
        self,
        transform: PixelTransform,
        normalize: Normalize,
    ) -> Result<ArrayDataset> {
        ArrayDataset::new(Arc::new(self), transform, normalize)
    }
}

/// An [`ImageSet`] with its per-sample transform: the CIFAR-10 / MNIST [`Dataset`].
#[derive(Clone, Debug)]
pub struct ArrayDataset {
    set: Arc<ImageSet>,
    transform: PixelTransform,
    lut: Vec<[f32; 256]>,
}

impl ArrayDataset {
    /// Wraps a shared set (train and eval datasets can share one copy of the pixels).
    ///
    /// # Errors
    /// `BadOption` if `normalize` is not for the set's channel count.
    pub fn new(
        set: Arc<ImageSet>,
        transform: PixelTransform,
        normalize: Normalize,
    ) -> Result<Self> {
        let c = set.images.dim().1;
        if normalize.channels() != c {
            return Err(DataError::BadOption {
                op: "ArrayDataset::new",
                reason: format!(
                    "{}: images have {c} channels, Normalize has {}",
                    set.source,
                    normalize.channels()
                ),
            });
        }
        Ok(ArrayDataset {
            lut: normalize.lut(),
            set,
            transform,
        })
    }

    /// The underlying images.
    pub fn set(&self) -> &ImageSet {
        &self.set
    }
}

impl Dataset for ArrayDataset {
    fn len(&self) -> usize {
        self.set.len()
    }
    fn label(&self, index: usize) -> usize {
        self.set.labels[index]
    }
    fn num_classes(&self) -> usize {
        self.set.classes.len()
    }
    fn sample_shape(&self) -> [usize; 3] {
        let (_, c, h, w) = self.set.images.dim();
        [c, h, w]
    }
    fn load(&self, index: usize, rng: &mut ChaCha8Rng, out: ArrayViewMut3<f32>) -> Result<()> {
        let src = self.set.images.index_axis(Axis(0), index);
        self.transform.apply(src, rng, &self.lut, out)
    }
    fn describe(&self, index: usize) -> String {
        format!("{}#{index}", self.set.source)
    }
}
