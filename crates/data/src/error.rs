//! The crate's typed errors: every variant names the file (or the option) it is about.

use std::path::PathBuf;

/// Result alias used throughout `hla-data`.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong while reading or batching data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Occurs when a file or folder cannot be opened or read (missing root, permissions, ...).
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Occurs when a CIFAR-10 file is not a whole number of 3,073-byte records, or a record's
    /// label byte is not in `0..10`.
    #[error("{}: bad CIFAR-10 file: {reason}", .path.display())]
    BadCifar {
        /// The `.bin` file.
        path: PathBuf,
        /// What is wrong (sizes, label).
        reason: String,
    },
    /// Occurs when an MNIST IDX file has a wrong magic number, wrong dimensions or a size that
    /// disagrees with its header, or when images and labels disagree in count.
    #[error("{}: bad IDX file: {reason}", .path.display())]
    BadIdx {
        /// The IDX file (raw or `.gz`).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Occurs when an image file cannot be decoded (corrupt, unsupported, not an image).
    #[error("{}: cannot decode image: {source}", .path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// Occurs when a JPEG's data ends before its end-of-image marker (a truncated download).
    #[error("{}: truncated JPEG ({len} bytes, no end-of-image marker)", .path.display())]
    Truncated {
        /// The image file.
        path: PathBuf,
        /// File size in bytes.
        len: usize,
    },
    /// Occurs when a file is empty or its first bytes are neither JPEG nor PNG.
    #[error("{}: not a JPEG or PNG file ({len} bytes)", .path.display())]
    NotAnImage {
        /// The file.
        path: PathBuf,
        /// File size in bytes.
        len: usize,
    },
    /// Occurs when an ImageFolder class folder holds no image file.
    #[error("{}: class folder contains no image (.jpg/.jpeg/.png)", .path.display())]
    EmptyClass {
        /// The class folder.
        path: PathBuf,
    },
    /// Occurs when an ImageFolder root has no class sub-folder at all.
    #[error("{}: no class folders found", .path.display())]
    NoClasses {
        /// The root folder.
        path: PathBuf,
    },
    /// Occurs when a class folder is not listed in the class-index file given.
    #[error("{}: class folder {class:?} is not in class-index file {}", .root.display(), .index_file.display())]
    UnknownClass {
        /// The ImageFolder root.
        root: PathBuf,
        /// The folder name.
        class: String,
        /// The class-index file.
        index_file: PathBuf,
    },
    /// Occurs when a class-index file cannot be parsed.
    #[error("{}:{line}: bad class-index line: {reason}", .path.display())]
    BadClassIndex {
        /// The class-index file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Occurs when a loader or transform option is invalid (batch size 0, rank ≥ world, ...).
    #[error("{op}: invalid option: {reason}")]
    BadOption {
        /// The constructor or transform that rejected the option.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Occurs when a sample's shape does not match what the batch expects.
    #[error("{op}: shape mismatch, expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// Where.
        op: &'static str,
        /// Expected `[c, h, w]`.
        expected: Vec<usize>,
        /// Actual shape.
        got: Vec<usize>,
    },
    /// Occurs when a resume position lies past the end of the epoch.
    #[error("loader: resume position batch {batch} is past the epoch's {batches} batches")]
    BadPosition {
        /// Requested batch position.
        batch: usize,
        /// Batches in one epoch of this shard.
        batches: usize,
    },
}

impl DataError {
    /// Builds an [`DataError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
