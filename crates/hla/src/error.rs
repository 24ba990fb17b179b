//! Typed errors of the method crate; every variant names the op (or file) and the shapes involved.
//!
//! Guide: [Conventions](crate::guide#conventions).

/// Result alias of this crate.
///
/// Guide: [Conventions](crate::guide#conventions).
pub type Result<T, E = HlaError> = std::result::Result<T, E>;

/// Errors returned by the method's ops, configuration, schedules and export.
///
/// Guide: [Conventions](crate::guide#conventions).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HlaError {
    /// Occurs when `op` is given operands whose shapes do not fit together.
    #[error("{op}: shape mismatch, {lhs:?} vs {rhs:?}")]
    ShapeMismatch {
        /// Name of the op.
        op: &'static str,
        /// First shape.
        lhs: Vec<usize>,
        /// Second shape.
        rhs: Vec<usize>,
    },
    /// Occurs when a shape's element count does not fit in `usize` (a crafted or corrupt file:
    /// an unchecked product would wrap around and pass later length checks).
    #[error("{op}: shape {shape:?} has more elements than can be addressed")]
    ShapeOverflow {
        /// Name of the op.
        op: &'static str,
        /// The shape.
        shape: Vec<usize>,
    },
    /// Occurs when `op` needs a tensor of a given rank (e.g. a weight matrix with rows).
    #[error("{op}: expected a tensor of rank >= {min_rank}, got shape {shape:?}")]
    BadRank {
        /// Name of the op.
        op: &'static str,
        /// Smallest accepted rank.
        min_rank: usize,
        /// Shape given.
        shape: Vec<usize>,
    },
    /// Occurs when `op` gets no values at all (e.g. a threshold over zero weights).
    #[error("{op}: empty input")]
    Empty {
        /// Name of the op.
        op: &'static str,
    },
    /// Occurs when a NaN or infinity reaches an op that orders or counts values.
    #[error("{op}: non-finite value {value} at flat index {index}")]
    NonFinite {
        /// Name of the op.
        op: &'static str,
        /// Flat index of the offending value.
        index: usize,
        /// The value (as f64).
        value: f64,
    },
    /// Occurs when a configuration field has a value outside its domain.
    #[error("config: {knob} = {value}: {reason}")]
    Config {
        /// Knob (field) name.
        knob: &'static str,
        /// The value given, printed.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// Occurs when a layer name is not known to the method state.
    #[error("{op}: unknown layer {layer:?}")]
    UnknownLayer {
        /// Name of the op.
        op: &'static str,
        /// The layer name.
        layer: String,
    },
    /// Occurs when a state transition is requested in the wrong phase.
    #[error("{op}: {reason}")]
    State {
        /// Name of the op.
        op: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Occurs when a packed ternary file is malformed.
    #[error("{path}: {reason}")]
    Format {
        /// File (or tensor) that is malformed.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Occurs when reading or writing a file fails.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Occurs when an autograd op fails (names the op and shapes itself).
    #[error(transparent)]
    Autograd(#[from] hla_autograd::AutogradError),
    /// Occurs when a model operation fails.
    #[error(transparent)]
    Model(#[from] hla_models::ModelError),
    /// Occurs when safetensors (de)serialisation fails.
    #[error("{path}: safetensors: {source}")]
    Safetensors {
        /// The file (or `"<memory>"`).
        path: String,
        /// The safetensors error.
        #[source]
        source: safetensors::SafeTensorError,
    },
}
