//! Numeric kernels of hla over `ndarray` in NCHW layout: GEMM, im2col convolution (grouped and
//! depthwise), pooling, activations, log-softmax / cross-entropy and batch-norm statistics, each
//! with its backward. No autograd and no model knowledge live here; `hla-autograd` composes these
//! kernels into differentiable ops.
//!
//! Determinism: every reduction runs in a fixed order that does not depend on the thread count,
//! so `Par::Seq` and `Par::Rayon` (with any pool size) give bit-identical results on one machine.
//! Across machines `matrixmultiply` may select a different SIMD kernel, so bit identity is not
//! promised there.
#![warn(missing_docs)]

mod activation;
pub mod alloc;
mod batchnorm;
mod conv;

mod elementwise;
mod error;
mod float;
mod gemm;
pub mod group;
pub mod isa;
pub mod lanes;
mod pool;
pub mod prefetch;
mod scratch;
mod softmax;
pub mod ternary_conv;
pub mod ternary_gemm;
#[cfg(test)]
mod testutil;

pub use activation::{add_relu, relu, relu6, relu6_backward, relu_backward, Activation};
pub use batchnorm::{
    batch_norm_train_forward, channel_mean_var, channel_mean_var_in, channel_planes,
    map_channel_planes,
};
pub use conv::{
    conv2d, conv2d_act, conv2d_act_packed, conv2d_add_act_packed, conv2d_backward_bias,
    conv2d_backward_bias_in, conv2d_backward_input, conv2d_backward_input_add,
    conv2d_backward_weight, conv2d_backward_weight_in, patch_square_sums,
    patch_square_sums_backward, Conv2dParams, PackedWeights, DW_CHUNK,
};
pub use elementwise::{add_assign, map, map_group_rows};
pub use error::{Result, TensorError};
pub use float::Float;
pub use gemm::{gemm, gemm_par, matmul, GEMM_PAR_COLS};
pub use pool::{
    avg_pool2d, avg_pool2d_backward, global_avg_pool, global_avg_pool_backward, max_pool2d,
    max_pool2d_backward, max_pool2d_values, Pool2dParams,
};
pub use softmax::{cross_entropy, log_softmax, log_softmax_backward};

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// How a kernel may parallelise; results are bit-identical for both (and for any rayon pool
/// size): parallel kernels only split work over independent outputs or constant-size chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Par {
    /// Run on the calling thread.
    Seq,
    /// Split over the current rayon pool (use `ThreadPool::install` to choose its size).
    #[default]
    Rayon,
}

/// `(0..n).map(f)` collected in index order, on the calling thread (`Seq`) or the rayon pool
/// (`Rayon`): each `f(i)` is computed alone, so the results are the same either way.
pub(crate) fn map_range<T, G>(par: Par, n: usize, f: G) -> Vec<T>
where
    T: Send,
    G: Fn(usize) -> T + Sync + Send,
{
    match par {
        Par::Seq => (0..n).map(f).collect(),
        Par::Rayon => (0..n).into_par_iter().map(f).collect(),
    }
}

/// Calls `f(scratch, i, chunk_i)` for each `chunk`-sized piece of `data`, in order (`Seq`) or on
/// the rayon pool (`Rayon`); `init` builds a scratch value reused across the calls of one task.
/// The scratch's contents must not influence results (callers overwrite before reading).
pub fn for_each_chunk<T, S, I, G>(par: Par, data: &mut [T], chunk: usize, init: I, f: G)
where
    T: Send,
    I: Fn() -> S + Sync + Send,
    G: Fn(&mut S, usize, &mut [T]) + Sync + Send,
{
    if data.is_empty() || chunk == 0 {
        return;
    }
    match par {
        Par::Seq => {
            let mut s = init();
            for (i, c) in data.chunks_mut(chunk).enumerate() {
                f(&mut s, i, c);
            }
        }
        Par::Rayon => data
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(init, |s, (i, c)| f(s, i, c)),
    }
}

/// [`for_each_chunk`] over a fresh vector of `n` zeros, which it returns. Each chunk is zeroed
/// by the task that then fills it, while the chunk is in that core's cache, instead of by a
/// memset of the whole vector beforehand: one pass less over an output that does not fit in
/// cache (the zero fills of the convolutions' outputs were 3 % of a MobileNetV2 training step).
/// The values are those of `vec![F::zero(); n]` followed by [`for_each_chunk`].
pub fn for_each_zeroed_chunk<F, S, I, G>(par: Par, n: usize, chunk: usize, init: I, f: G) -> Vec<F>
where
    F: Float,
    I: Fn() -> S + Sync + Send,
    G: Fn(&mut S, usize, &mut [F]) + Sync + Send,
{
    if chunk == 0 {
        // no chunk to hand out, as in `for_each_chunk`
        return vec![F::zero(); n];
    }
    // `zeroed` writes every element
    for_each_uninit_chunk(par, n, chunk, init, |s, i, c| f(s, i, zeroed(c)))
}

/// [`for_each_chunk`] over a fresh, uninitialised vector of `n` elements, which it returns:
/// for kernels that write every element of their chunk anyway (the direct convolutions store
/// each output once), so that no zero fill precedes them — one write pass less over the output
/// (the fills were 6 % of a ResNet-20 inference). `f` must write every element of its chunk
/// (the contract the `set_len` below relies on, which is why this is not public). Under
/// `cfg(test)` every chunk is NaN-filled first, so that an element a kernel misses shows in
/// the tests' comparisons with reference values.
pub(crate) fn for_each_uninit_chunk<F, S, I, G>(
    par: Par,
    n: usize,
    chunk: usize,
    init: I,
    f: G,
) -> Vec<F>
where
    F: Float,
    I: Fn() -> S + Sync + Send,
    G: Fn(&mut S, usize, &mut [MaybeUninit<F>]) + Sync + Send,
{
    assert!(chunk > 0 || n == 0, "for_each_uninit_chunk: empty chunks");
    let mut out = Vec::with_capacity(n);
    for_each_chunk(
        par,
        &mut out.spare_capacity_mut()[..n],
        chunk,
        init,
        |s, i, c| {
            #[cfg(test)]
            c.iter_mut().for_each(|v| {
                v.write(F::nan());
            });
            f(s, i, c)
        },
    );
    // SAFETY: the chunks cover all `n` elements and `f` writes every element of its chunk (the
    // contract above); a panic in `f` propagates before this line and the vector stays empty.
    unsafe { out.set_len(n) };
    out
}

/// `c` filled with zeros, as the initialised slice it now is.
pub(crate) fn zeroed<F: Float>(c: &mut [MaybeUninit<F>]) -> &mut [F] {
    for v in c.iter_mut() {
        v.write(F::zero());
    }
    // SAFETY: every element was written just above, and `MaybeUninit<F>` has the layout of `F`.
    unsafe { assume_init_mut(c) }
}

/// `c` as the initialised slice it is.
///
/// # Safety
/// Every element of `c` must have been written.
pub(crate) unsafe fn assume_init_mut<F>(c: &mut [MaybeUninit<F>]) -> &mut [F] {
    // SAFETY: `MaybeUninit<F>` has the layout of `F`, and the caller vouches for the values.
    unsafe { &mut *(c as *mut [MaybeUninit<F>] as *mut [F]) }
}

/// A fresh vector of `n` elements whose chunk `i` (`chunk` elements, the last shorter) is
/// written by `fill(i, chunk_i)`, chunks on the rayon pool with `Par::Rayon`. The vector is not
/// zeroed first (a memset would write every output twice); every caller zips each chunk with an
/// input slice at least as long and writes every element (the contract the `set_len` below
/// relies on, which is why this is not public).
pub(crate) fn collect_chunks<F: Send>(
    n: usize,
    chunk: usize,
    par: Par,
    fill: impl Fn(usize, &mut [MaybeUninit<F>]) + Sync + Send,
) -> Vec<F> {
    let mut out = Vec::with_capacity(n);
    for_each_chunk(
        par,
        &mut out.spare_capacity_mut()[..n],
        chunk,
        || (),
        |_, i, o| fill(i, o),
    );
    // SAFETY: `fill` writes every element of its chunk (the contract above); a panic in `fill`
    // propagates before this line and the vector stays empty.
    unsafe { out.set_len(n) };
    out
}

/// The instruction set the f32 convolution kernels use on this CPU, chosen at run time under
/// the process's ceiling ([`isa::set_max_isa`]): `"avx512f"`, `"avx2+fma"`, or `"portable"`
/// (im2col + GEMM only), for benchmark reports.
pub fn simd_name() -> &'static str {
    match conv::direct::detect() {
        Some(conv::direct::Isa::Avx512(_)) => "avx512f",
        Some(conv::direct::Isa::Avx2(_)) => "avx2+fma",
        None => "portable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks that are only partly written (here: every third element, plus the chunk index in
    /// its first), a last chunk shorter than the others, and no chunk at all: the result is
    /// that of a zeroed vector and `for_each_chunk`, sequentially and on pools of 1, 2 and 4 threads.
    #[test]
    fn zeroed_chunks_are_zeros_then_for_each_chunk() {
        let write = |s: &mut usize, i: usize, c: &mut [f32]| {
            *s += 1;
            c[0] = i as f32 + 0.5;
            for v in c.iter_mut().skip(1).step_by(3) {
                *v = -1.25;
            }
        };
        for (n, chunk) in [(1000, 64), (7, 7), (5, 9), (0, 4), (6, 0)] {
            let mut want = vec![0.0f32; n];
            for_each_chunk(Par::Seq, &mut want, chunk, || 0, write);
            for threads in [1, 2, 4] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for par in [Par::Seq, Par::Rayon] {
                    let got = pool.install(|| for_each_zeroed_chunk(par, n, chunk, || 0, write));
                    assert_eq!(
                        got, want,
                        "n {n}, chunk {chunk}, {par:?}, {threads} threads"
                    );
                }
            }
        }
    }
}
