//! Typed errors of the models crate; file errors name the file, tensor errors name the tensor.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Errors returned by model construction, forward passes and state-dict I/O.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Occurs when `build` is given an architecture name it does not know.
    #[error("unknown architecture {arch:?} (known: {known})")]
    UnknownArch {
        /// Name given.
        arch: String,
        /// Names accepted, comma separated.
        known: String,
    },
    /// Occurs when an architecture's hyper-parameters are invalid (e.g. zero classes).
    #[error("{arch}: bad configuration: {reason}")]
    BadConfig {
        /// Architecture name.
        arch: String,
        /// What is wrong.
        reason: String,
    },
    /// Occurs when the input of a forward pass does not have the shape the model accepts.
    #[error("{arch}: bad input shape {shape:?}, expected {expected}")]
    BadInput {
        /// Architecture name.
        arch: String,
        /// Shape given.
        shape: Vec<usize>,
        /// What the model accepts, in words.
        expected: String,
    },
    /// An op of the autograd tape failed (its error names the op and the shapes).
    #[error(transparent)]
    Autograd(#[from] hla_autograd::AutogradError),
    /// Occurs when a file cannot be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Occurs when a file is not valid safetensors (bad header, truncated data, …).
    #[error("{}: not a valid safetensors file: {reason}", .path.display())]
    SafeTensors {
        /// File concerned.
        path: PathBuf,
        /// What the safetensors reader reported.
        reason: String,
    },
    /// Occurs on a strict load when the model has tensors the file does not.
    #[error("{}: missing tensors ({} of them): {}", .path.display(), .names.len(), .names.join(", "))]
    MissingTensors {
        /// File concerned.
        path: PathBuf,
        /// Names of the model's tensors absent from the file.
        names: Vec<String>,
    },
    /// Occurs on a strict load when the file has tensors the model does not.
    #[error("{}: unexpected tensors ({} of them): {}", .path.display(), .names.len(), .names.join(", "))]
    UnexpectedTensors {
        /// File concerned.
        path: PathBuf,
        /// Names of the file's tensors the model does not have.
        names: Vec<String>,
    },
    /// Occurs when a tensor of the file has another shape than the model's tensor of that name
    /// (strict or not: a mis-shaped tensor is never loaded).
    #[error("{}: tensor {name}: shape {found:?} in the file, the model expects {expected:?}", .path.display())]
    ShapeMismatch {
        /// File concerned.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape the model expects.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// Occurs when a tensor of the file has a dtype that cannot be converted to what the model
    /// stores (floats: F32/F16/BF16/F64; counters: I64/I32/U8…).
    #[error("{}: tensor {name}: unsupported dtype {dtype}", .path.display())]
    Dtype {
        /// File concerned.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Dtype found, as safetensors names it.
        dtype: String,
    },
}
