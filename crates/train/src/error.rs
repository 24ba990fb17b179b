//! Typed errors of the training engine; each names the file, key, op or shape involved.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// A configuration value outside its allowed range, named by its dotted key (`data.batch_size`).
/// Where the value came from (file and line, or `--set`) is for the loader to add: the
/// validator sees only values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("key `{key}` = {value} is out of range (allowed: {allowed})")]
pub struct RangeError {
    /// Dotted key, e.g. `hla.t_start_pct`.
    pub key: String,
    /// The offending value, printed.
    pub value: String,
    /// The allowed range or set.
    pub allowed: String,
}

/// Errors of a training, evaluation or checkpoint operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A configuration value is out of range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// Data files could not be read or decoded.
    #[error(transparent)]
    Data(#[from] hla_data::DataError),
    /// A model operation failed (unknown architecture, weights file, forward).
    #[error(transparent)]
    Model(#[from] hla_models::ModelError),
    /// The method (hook, thresholds, Algorithm 1, export) failed.
    #[error(transparent)]
    Method(#[from] hla_core::HlaError),
    /// An autograd op or the optimizer failed.
    #[error(transparent)]
    Autograd(#[from] hla_autograd::AutogradError),
    /// Reading or writing a file failed.
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("cannot read checkpoint", ...).
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint or metrics file is malformed, corrupt or belongs to another run.
    #[error("{}: {reason}", .path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The configuration and the data or model disagree (e.g. more classes in the data than in
    /// the classifier).
    #[error("{0}")]
    Mismatch(String),
    /// The loss became NaN or infinite.
    #[error("training diverged: loss is {loss} (lower the learning rate)")]
    Diverged {
        /// The loss value.
        loss: f64,
    },
    /// A JSON (de)serialisation of run state failed.
    #[error("{what}: {source}")]
    Json {
        /// What was being (de)serialised.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            what,
            source,
        }
    }

    /// A malformed checkpoint (or other run file) at `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
