//! Typed errors of the autograd crate; every variant names the op and the shapes involved.

/// Result alias of this crate.
pub type Result<T, E = AutogradError> = std::result::Result<T, E>;

/// Errors returned by recording ops, backward, gradient checks and optimizers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AutogradError {
    /// Occurs when an op would mix or reduce the samples of a batch split over data-parallel
    /// ranks in a way that has no cross-rank form (e.g. a sum over the batch axis).
    #[error("{op}: not supported in data-parallel training: {reason}")]
    DataParallel {
        /// Name of the op.
        op: &'static str,
        /// What the op would do to the batch axis.
        reason: String,
    },
    /// Occurs when `op` cannot combine its operands' shapes (e.g. non-broadcastable operands,
    /// inner dimensions of a matmul that differ).
    #[error("{op}: shape mismatch, lhs {lhs:?} vs rhs {rhs:?}")]
    ShapeMismatch {
        /// Name of the op.
        op: &'static str,
        /// Shape of the first operand.
        lhs: Vec<usize>,
        /// Shape of the second operand.
        rhs: Vec<usize>,
    },
    /// Occurs when `op` is given a tensor whose shape it does not accept (wrong rank, element
    /// count that does not fit a reshape, …).
    #[error("{op}: bad shape {shape:?}, expected {expected}")]
    BadShape {
        /// Name of the op.
        op: &'static str,
        /// Shape given.
        shape: Vec<usize>,
        /// What the op accepts, in words.
        expected: String,
    },
    /// Occurs when an axis (or a permutation) does not fit the rank of the input.
    #[error("{op}: bad axes {axes:?} for a tensor of shape {shape:?}")]
    BadAxes {
        /// Name of the op.
        op: &'static str,
        /// Axes given.
        axes: Vec<usize>,
        /// Shape of the input.
        shape: Vec<usize>,
    },
    /// Occurs when a `Var` does not belong to the tape it is used with.
    #[error("{op}: variable {index} is not on this tape (tape has {len} values)")]
    UnknownVar {
        /// Name of the op.
        op: &'static str,
        /// Index of the variable.
        index: usize,
        /// Number of values recorded on the tape.
        len: usize,
    },
    /// Occurs when an op reads a value that an evaluation forward already released
    /// ([`crate::Tape::release`]): a model that releases a value it still needs.
    #[error("{op}: variable {index} was released after its last use in this evaluation")]
    Released {
        /// Name of the op.
        op: &'static str,
        /// Index of the variable.
        index: usize,
    },
    /// Occurs when `backward` is called on an output with more than one element and no seed
    /// gradient (use `backward_with`).
    #[error("backward: output of shape {shape:?} is not a scalar; pass a seed gradient with backward_with")]
    NonScalarOutput {
        /// Shape of the output.
        shape: Vec<usize>,
    },
    /// Occurs when `backward` is called a second time on the same tape: the first pass
    /// consumed (freed) what the ops saved for it.
    #[error("backward: this tape was already differentiated; record a new tape")]
    BackwardTwice,
    /// Occurs when an op's parameter is outside its domain (e.g. `clamp` with lo > hi, a
    /// label-smoothing factor outside [0, 1]).
    #[error("{op}: {reason}")]
    BadArgument {
        /// Name of the op.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Occurs when a user-supplied custom op fails or returns gradients of the wrong number or
    /// shape.
    #[error("custom op {op}: {reason}")]
    Custom {
        /// Name returned by `CustomOp::name`.
        op: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Occurs when a gradient check finds an element whose analytic and numeric gradients
    /// differ by more than the tolerance (the worst such element is reported).
    #[error(
        "gradcheck: input {input} element {index:?}: analytic {analytic:e} vs numeric {numeric:e} \
         (|diff| {diff:e} > tol {tol:e})"
    )]
    GradcheckMismatch {
        /// Which input (position in the input list).
        input: usize,
        /// Multi-index of the element.
        index: Vec<usize>,
        /// Gradient from backward.
        analytic: f64,
        /// Gradient from central differences.
        numeric: f64,
        /// Absolute difference.
        diff: f64,
        /// Tolerance `atol + rtol·|numeric|` it exceeds.
        tol: f64,
    },
    /// Occurs when optimizer state does not match the parameters it is used with (count or
    /// shapes, e.g. a checkpoint from another model).
    #[error("{op}: state mismatch at parameter {position}: expected {expected:?}, got {got:?}")]
    StateMismatch {
        /// Name of the optimizer / operation.
        op: &'static str,
        /// Position of the parameter in the list passed to `step`.
        position: usize,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape found.
        got: Vec<usize>,
    },
    /// A kernel of `hla-tensor` failed (its error names the kernel and the shapes).
    #[error(transparent)]
    Tensor(#[from] hla_tensor::TensorError),
}
