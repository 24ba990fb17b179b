//! 2-D convolution (NCHW) with grouped and depthwise variants, and its backward w.r.t. input,
//! weight and bias.
//!
//! One file per part: `params.rs` ([`Conv2dParams`], output sizes), `geom.rs` (the validated
//! geometry and the plan chosen once per call: which path below, and the forward's channel
//! split), `forward.rs` ([`conv2d`], [`conv2d_act`]), `backward.rs` (input, weight and bias
//! gradients), `direct.rs` (the SIMD kernels), `im2col.rs`, `depthwise.rs`, `pointwise.rs`
//! (1×1 convs of a small batch split by positions), `patch_sums.rs` (HLA's sums of squares over
//! every patch, `conv2d(x ⊙ x, ONES)`, and their gradient, with the direct kernels' bits but no
//! convolution), and `tests.rs`.
//!
//! Paths, chosen per call from the shapes and the CPU (never from the thread count):
//! - `c_in / groups == 1` (depthwise, possibly with a channel multiplier): a direct convolution
//!   per channel, no im2col and no GEMM of size 1 (`depthwise.rs`).
//! - 1×1 kernel, stride 1, no padding (pointwise): `x` itself is the column matrix of one GEMM
//!   per (sample, group), no im2col. A batch smaller than four whose planes have more
//!   positions than the conv has output channels splits each sample's positions instead of its
//!   channels (`pointwise.rs`), so that each task packs only its own columns of the input.
//! - `f32` on x86-64 with AVX-512 or AVX2+FMA: the direct SIMD kernels of `direct.rs` for
//!   the forward and weight gradient (any stride) and the input gradient (stride 1 with at least
//!   `COB / 2` input channels per group: a convolution with the flipped kernel; otherwise, with
//!   AVX-512, the product `Wᵀ·dy` with col2im fused into it).
//! - otherwise im2col into a per-task scratch buffer, then one GEMM per (sample, group); the
//!   input gradient by GEMM `Wᵀ·dy` and col2im.
//!
//! The direct forward kernel blocks `COB` output channels (8 × 48 positions with AVX-512, 8 × 8
//! with AVX2) on the flattened grid; small planes, where that grid's junk columns would cost
//! more, take a row kernel (32 / 16 channels × up to 12 / 6 positions of one output row), and
//! convs with at most `COB / 4` output channels per group (HLA's patch norms: one) a
//! one-channel variant: all with the same per-output summation order, hence the same bits
//! (`Direct::plan` picks one from the shapes). [`conv2d_act`] adds
//! the bias and applies ReLU / ReLU6 in the same per-sample epilogue (inference with BatchNorm
//! folded in); [`conv2d_add_act_packed`] adds a residual block's shortcut there too.
//!
//! Parallelism (`Par::Rayon`) is over the batch (and over channels for the depthwise weight
//! gradient); a forward with fewer than four samples also splits each sample's output channels
//! into blocks when the conv is large enough (`Geom::forward_split`, from the shapes only), so
//! batch-1 inference keeps every core busy. Forward and input gradient are per output element
//! sums in a fixed order, hence independent of either split (tested against the unsplit batch). The
//! weight gradient sums per-sample terms in chunks of [`DW_CHUNK`] samples (a constant, not the
//! thread count), each chunk in sample order, then the chunk partials in chunk order, so results
//! are bit-identical for `Par::Seq` and any number of threads on one machine. (Across machines
//! `matrixmultiply` may pick a different kernel, so bit identity is not promised there.)

mod backward;
mod depthwise;
pub(crate) mod direct;
mod forward;
mod geom;
mod im2col;
mod params;
mod patch_sums;
mod pointwise;
#[cfg(test)]
mod tests;

pub use backward::{
    conv2d_backward_bias, conv2d_backward_bias_in, conv2d_backward_input,
    conv2d_backward_input_add, conv2d_backward_weight, conv2d_backward_weight_in,
};
pub use forward::{conv2d, conv2d_act, conv2d_act_packed, conv2d_add_act_packed, PackedWeights};
pub use params::Conv2dParams;
pub use patch_sums::{patch_square_sums, patch_square_sums_backward};

/// Number of samples whose weight-gradient terms are summed in one task (a constant so the
/// summation order does not depend on the thread count).
pub const DW_CHUNK: usize = 8;
