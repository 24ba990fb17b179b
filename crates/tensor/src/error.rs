//! The crate's typed error: every variant names the op and the shapes involved.

/// Errors returned by the kernels of this crate on bad input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// Occurs when `op` cannot combine its operands' shapes (`lhs` is the first operand, `rhs`
    /// the second or the shape that was expected).
    #[error("{op}: shape mismatch, lhs {lhs:?} vs rhs {rhs:?}")]
    ShapeMismatch {
        /// The op that rejected its input.
        op: &'static str,
        /// Shape of the first operand.
        lhs: Vec<usize>,
        /// Shape of the second operand, or the expected shape.
        rhs: Vec<usize>,
    },
    /// Occurs when input or output channels are not divisible by `groups` (or `groups == 0`).
    #[error("{op}: c_in {c_in} / c_out {c_out} not divisible by groups {groups}")]
    BadGroups {
        /// The op that rejected its input.
        op: &'static str,
        /// Input channels.
        c_in: usize,
        /// Output channels.
        c_out: usize,
        /// Requested number of groups.
        groups: usize,
    },
    /// Occurs when the dilated kernel does not fit in the padded input.
    #[error(
        "{op}: kernel {kernel:?} (dilation {dilation:?}) larger than padded input {input:?} + padding {padding:?}"
    )]
    KernelTooLarge {
        /// The op that rejected its input.
        op: &'static str,
        /// Input spatial size `(h, w)`.
        input: (usize, usize),
        /// Kernel size `(k_h, k_w)`.
        kernel: (usize, usize),
        /// Padding `(p_h, p_w)` on each side.
        padding: (usize, usize),
        /// Dilation `(d_h, d_w)`.
        dilation: (usize, usize),
    },
    /// Occurs when an operand has a zero-sized dimension where the op needs at least one element.
    #[error("{op}: zero-sized dimension in shape {shape:?}")]
    EmptyDim {
        /// The op that rejected its input.
        op: &'static str,
        /// The offending shape.
        shape: Vec<usize>,
    },
    /// Occurs when a hyper-parameter is out of range (zero stride, zero dilation, padding larger
    /// than half the pooling window, ...).
    #[error("{op}: invalid parameter: {msg}")]
    InvalidParam {
        /// The op that rejected its input.
        op: &'static str,
        /// What is wrong, with the values.
        msg: String,
    },
    /// Occurs when a class label is not below the number of classes.
    #[error("{op}: label {label} at batch index {index} out of range for {classes} classes")]
    LabelOutOfRange {
        /// The op that rejected its input.
        op: &'static str,
        /// The offending label.
        label: usize,
        /// Its position in the batch.
        index: usize,
        /// Number of classes (columns of the logits).
        classes: usize,
    },
    /// Occurs when a transfer between the ranks of a data-parallel group fails.
    #[error("{op}: data-parallel transfer failed: {reason}")]
    Comm {
        /// The op whose reduction failed.
        op: &'static str,
        /// What failed.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TensorError>;
