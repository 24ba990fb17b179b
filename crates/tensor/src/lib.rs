//! Numeric kernels of hla over `ndarray` in NCHW layout: GEMM, im2col convolution (grouped and
//! depthwise), pooling, activations, log-softmax / cross-entropy and batch-norm statistics, each
//! with its backward. No autograd and no model knowledge live here; `hla-autograd` composes these
//! kernels into differentiable ops.
