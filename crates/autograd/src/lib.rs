//! Reverse-mode automatic differentiation for hla: a tape of recorded ops, `Var` handles, one
//! file per differentiable op with its backward and gradient check, optimizers and learning-rate
//! schedules with PyTorch semantics.
