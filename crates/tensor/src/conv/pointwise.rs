//! 1×1 stride-1 convolutions of a small batch with each sample's positions, not its output
//! channels, split over tasks ([`Geom::pointwise_columns`]): the input plane is then the
//! larger GEMM operand, and a position range packs only its own columns of it.

use super::forward::epilogue;
use super::geom::Geom;
use crate::activation::Activation;
use crate::{Float, Par};
use rayon::prelude::*;

/// Alignment of the position ranges' starts (whole vectors of the GEMM's micro-kernel).
const COLUMN_ALIGN: usize = 16;

/// The output buffer, shared by tasks that write disjoint elements of it.
#[derive(Clone, Copy)]
struct Out<F>(*mut F);

// SAFETY: the tasks write disjoint elements (the position ranges partition each sample's
// plane, see `pointwise_by_columns`), and none reads what another writes.
unsafe impl<F: Send> Send for Out<F> {}
// SAFETY: as above.
unsafe impl<F: Send> Sync for Out<F> {}

impl<F> Out<F> {
    /// The element at offset `i`.
    ///
    /// # Safety
    /// `i` must lie within the buffer.
    unsafe fn at(self, i: usize) -> *mut F {
        // SAFETY: the caller keeps `i` in bounds.
        unsafe { self.0.add(i) }
    }
}

/// `act(W · x_s + bias + res_s)` for every sample `s` of a 1×1 stride-1 convolution with
/// groups 1 (`xs` `[n, c_in, np]`, `ws` `[c_out, c_in]` → `[n, c_out, np]`, `np` = positions), each
/// sample's positions cut into `parts` ranges, one task each. A task's GEMM packs its own
/// columns of `x_s` and writes the same columns of every output row (strided, disjoint from
/// the other tasks'), with `beta = 0` so the output is never read before it is written. The
/// GEMM computes each output in the same order for any column range, and the epilogue is the
/// one of the channel-split path, so the bits are those of an unsplit sample.
pub(super) fn pointwise_by_columns<F: Float>(
    g: &Geom,
    xs: &[F],
    ws: &[F],
    (bias, res, act): (Option<&[F]>, Option<&[F]>, Activation),
    parts: usize,
    par: Par,
) -> Vec<F> {
    let (np, ci, co) = (g.npix(), g.cin_g, g.c_out);
    let len = g.n * co * np;
    assert!(
        g.pointwise() && g.groups == 1 && ci > 0 && parts > 0,
        "hla-tensor internal error: pointwise_by_columns on {g:?}"
    );
    assert!(
        xs.len() == g.n * ci * np
            && ws.len() == co * ci
            && bias.is_none_or(|b| b.len() == co)
            && res.is_none_or(|r| r.len() == len),
        "hla-tensor internal error: pointwise_by_columns operand lengths"
    );
    let mut y: Vec<F> = Vec::with_capacity(len);
    // the tests see an output a task misses as NaN
    #[cfg(test)]
    y.resize(len, F::nan());
    let out = Out(y.as_mut_ptr());
    let start = |k: usize| {
        if k == parts {
            np
        } else {
            np * k / parts / COLUMN_ALIGN * COLUMN_ALIGN
        }
    };
    let task = |t: usize| {
        let (s, k) = (t / parts, t % parts);
        let (j0, j1) = (start(k), start(k + 1));
        if j0 == j1 {
            return;
        }
        let x_s = &xs[s * ci * np..(s + 1) * ci * np];
        // SAFETY: `s·c_out·np + j0 < len`: `s < n` and `j0 < j1 ≤ np`.
        let y_s = unsafe { out.at(s * co * np + j0) };
        // Y_s[c_out, j0..j1] = W[c_out, c_in] · X_s[c_in, j0..j1] (row strides np)
        // SAFETY: A spans `c_out·c_in = ws.len()` elements; B rows `j0..j1` of `c_in` rows of
        // stride `np` lie in `x_s`; C likewise in sample `s` of the output, written only by
        // this task; beta = 0, so C is not read (matrixmultiply's contract).
        unsafe {
            F::gemm_raw(
                co,
                ci,
                j1 - j0, // (m, k, n)
                F::one(),
                ws.as_ptr(),
                ci as isize,
                1, // A: [c_out, c_in]
                x_s.as_ptr().add(j0),
                np as isize,
                1, // B: [c_in, j1 − j0]
                F::zero(),
                y_s,
                np as isize,
                1, // C: [c_out, j1 − j0]
            );
        }
        if bias.is_none() && res.is_none() && act == Activation::None {
            return;
        }
        for c in 0..co {
            // SAFETY: row `c` of this task's columns, written by the GEMM above and by no
            // other task.
            let row = unsafe { std::slice::from_raw_parts_mut(y_s.add(c * np), j1 - j0) };
            let r = res.map(|r| &r[(s * co + c) * np + j0..(s * co + c) * np + j1]);
            epilogue(row, bias.map(|b| b[c]), r, act);
        }
    };
    match par {
        Par::Seq => (0..g.n * parts).for_each(task),
        Par::Rayon => (0..g.n * parts).into_par_iter().for_each(task),
    }
    // SAFETY: the ranges `start(k)..start(k + 1)` partition `0..np` for every sample, and each
    // task's GEMM wrote all `c_out` rows of its range: every element is initialised. A panic in
    // a task propagates before this line.
    unsafe { y.set_len(len) };
    y
}
