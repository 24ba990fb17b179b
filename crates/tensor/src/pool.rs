//! 2-D max pooling (with argmax for the backward), average pooling (padding counted, PyTorch's
//! default `count_include_pad = true`) and global average pooling, each with its backward.
//! Floor mode output sizes: `h_out = (h + 2·p_h − k_h) / s_h + 1`.

use crate::conv::direct::Isa;
use crate::lanes::lane_sum;
use crate::{Float, Par, Result, TensorError};
use ndarray::{Array2, Array4, ArrayView2, ArrayView4, Axis};
use rayon::prelude::*;

/// Pooling window, stride and zero padding (each `(h, w)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dParams {
    /// Window `(k_h, k_w)`, each ≥ 1.
    pub kernel: (usize, usize),
    /// Stride `(s_h, s_w)`, each ≥ 1.
    pub stride: (usize, usize),
    /// Padding `(p_h, p_w)` on each side, at most half the window (PyTorch's rule).
    pub padding: (usize, usize),
}

impl Pool2dParams {
    /// Square window `k`, stride `s`, padding `p`.
    pub fn new(k: usize, s: usize, p: usize) -> Self {
        Pool2dParams {
            kernel: (k, k),
            stride: (s, s),
            padding: (p, p),
        }
    }
    /// Output `(h_out, w_out)` for input `(h, w)`.
    /// # Errors
    /// `InvalidParam` for a zero window or stride or padding above half the window;
    /// `KernelTooLarge` if the window does not fit in the padded input.
    pub fn output_hw(&self, op: &'static str, h: usize, w: usize) -> Result<(usize, usize)> {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 || 2 * ph > kh || 2 * pw > kw {
            return Err(TensorError::InvalidParam {
                op,
                msg: format!("{self:?}"),
            });
        }
        if kh > h + 2 * ph || kw > w + 2 * pw {
            return Err(TensorError::KernelTooLarge {
                op,
                input: (h, w),
                kernel: self.kernel,
                padding: self.padding,
                dilation: (1, 1),
            });
        }
        Ok(((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1))
    }
    /// Input rows (or columns) covered by output index `o` along one axis: `lo..hi`, clipped.
    fn window(o: usize, s: usize, p: usize, k: usize, len: usize) -> (usize, usize) {
        let start = (o * s) as isize - p as isize;
        let lo = start.max(0) as usize;
        let hi = ((start + k as isize).max(0) as usize).min(len);
        (lo, hi)
    }
}

fn check_nonempty(op: &'static str, s: &[usize]) -> Result<()> {
    if s.contains(&0) {
        return Err(TensorError::EmptyDim {
            op,
            shape: s.to_vec(),
        });
    }
    Ok(())
}

/// Max pooling; padded positions never win. Returns `y` and `argmax`, the flat index
/// `ih·w + iw` of the maximum inside each input plane (first maximum in scan order on ties; a NaN
/// wins like in PyTorch).
///
/// # Shapes
/// `x`: `[n, c, h, w]` → (`[n, c, h_out, w_out]`, `[n, c, h_out, w_out]`).
/// # Errors
/// `EmptyDim`, `InvalidParam`, `KernelTooLarge` (op `max_pool2d`).
pub fn max_pool2d<F: Float>(
    x: ArrayView4<F>,
    p: &Pool2dParams,
    par: Par,
) -> Result<(Array4<F>, Array4<u32>)> {
    max_pool2d_on(x, p, par, crate::conv::direct::detect())
}

/// [`max_pool2d`] with its planes compiled for `isa` (`None`: the portable build).
fn max_pool2d_on<F: Float>(
    x: ArrayView4<F>,
    p: &Pool2dParams,
    par: Par,
    isa: Option<Isa>,
) -> Result<(Array4<F>, Array4<u32>)> {
    let op = "max_pool2d";
    check_nonempty(op, x.shape())?;
    let (n, c, h, w) = x.dim();
    let (ho, wo) = p.output_hw(op, h, w)?;
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let mut y = Array4::<F>::zeros((n, c, ho, wo));
    let mut am = Array4::<u32>::zeros((n, c, ho, wo));
    let (hw, np) = (h * w, ho * wo);
    let scan = MaxScan::new(p, (h, w), wo);
    let plane = |i: usize, yp: &mut [F], ap: &mut [u32], phases: &mut Vec<F>| {
        let xp = &xs[i * hw..(i + 1) * hw];
        match isa {
            // SAFETY: holding an `Isa` proves run-time detection found its instruction set.
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx512(_)) => unsafe { max_plane_avx512(&scan, xp, yp, ap, phases) },
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx2(_)) => unsafe { max_plane_avx2(&scan, xp, yp, ap, phases) },
            _ => max_plane(&scan, xp, yp, ap, phases),
        }
    };
    let ys = y.as_slice_mut().expect("fresh array is contiguous");
    let ams = am.as_slice_mut().expect("fresh array is contiguous");
    match par {
        Par::Seq => {
            let mut phases = Vec::new();
            ys.chunks_mut(np)
                .zip(ams.chunks_mut(np))
                .enumerate()
                .for_each(|(i, (yp, ap))| plane(i, yp, ap, &mut phases))
        }
        Par::Rayon => ys
            .par_chunks_mut(np)
            .zip(ams.par_chunks_mut(np))
            .enumerate()
            .for_each_init(Vec::new, |phases, (i, (yp, ap))| plane(i, yp, ap, phases)),
    }
    Ok((y, am))
}

/// One max-pooling plane's geometry for [`max_plane`]: the parameters, the input `(h, w)`,
/// `w_out`, and per window column `kw` the outputs `lo..hi` whose input column is inside.
struct MaxScan {
    p: Pool2dParams,
    hw: (usize, usize),
    wo: usize,
    cols: Vec<(usize, usize)>,
    /// Per window column `kw`: where its value for output `cols[kw].0` lies in a row's column
    /// phases (see [`MaxScan::tap`]).
    first: Vec<usize>,
}

impl MaxScan {
    fn new(p: &Pool2dParams, (h, w): (usize, usize), wo: usize) -> Self {
        let (sw, pw) = (p.stride.1, p.padding.1);
        // the outputs whose input column `ow·s_w + kw − p_w` is inside `0..w`
        let cols: Vec<(usize, usize)> = (0..p.kernel.1)
            .map(|kw| {
                let lo = pw.saturating_sub(kw).div_ceil(sw);
                let hi = if w + pw > kw {
                    ((w - 1 + pw - kw) / sw + 1).min(wo)
                } else {
                    0
                };
                (lo, hi.max(lo))
            })
            .collect();
        // input column `ow·s_w + kw − p_w = (ow + q)·s_w + r`: phase `r`, element `ow + q`
        let pl = w.div_ceil(sw);
        let first = cols
            .iter()
            .enumerate()
            .map(|(kw, &(lo, _))| {
                let t = kw as isize - pw as isize;
                let (r, q) = (
                    t.rem_euclid(sw as isize) as usize,
                    t.div_euclid(sw as isize),
                );
                r * pl + (lo as isize + q) as usize
            })
            .collect();
        MaxScan {
            p: *p,
            hw: (h, w),
            wo,
            cols,
            first,
        }
    }
    /// Splits every input row of the plane `xp` into its `s_w` column phases once (rows are
    /// shared by overlapping windows), `[h][s_w][pl]` in `ph`, so that one window column's
    /// values for consecutive outputs are contiguous; returns the phase length `pl`. At stride
    /// 1 the rows are the phases and `ph` is left alone.
    #[inline(always)]
    fn split_phases<F: Float>(&self, xp: &[F], ph: &mut Vec<F>) -> usize {
        let ((h, w), sw) = (self.hw, self.p.stride.1);
        let pl = w.div_ceil(sw);
        if sw > 1 {
            ph.resize(h * sw * pl, F::zero());
            for (xr, pr) in xp.chunks_exact(w).zip(ph.chunks_exact_mut(sw * pl)) {
                if sw == 2 {
                    // pairs, so that the loop vectorises
                    let (even, odd) = pr.split_at_mut(pl);
                    let pairs = xr.chunks_exact(2);
                    if let Some(&v) = pairs.remainder().first() {
                        even[w / 2] = v;
                    }
                    for ((e, o), p) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                        (*e, *o) = (p[0], p[1]);
                    }
                    continue;
                }
                for (j, c) in xr.chunks(sw).enumerate() {
                    for (r, &v) in c.iter().enumerate() {
                        pr[r * pl + j] = v;
                    }
                }
            }
        }
        pl
    }

    /// For window column `kw`: where its value for output `cols[kw].0` lies in a row's column
    /// phases (of [`MaxScan::split_phases`]), and `kw − p_w`.
    #[inline(always)]
    fn tap(&self, kw: usize) -> (usize, isize) {
        (self.first[kw], kw as isize - self.p.padding.1 as isize)
    }
}

/// One plane of [`max_pool2d`]. Each output row runs the scan of its windows tap by tap in
/// row-major order (input row, then window column), over all its outputs at once: the running
/// maximum is replaced by a later value if strictly greater or NaN, as a select rather than a
/// branch per tap (a branch on random data mispredicts; the per-output scan was 5 % of a
/// ResNet-18 training step). With stride `s_w` each input row is first split (once per plane)
/// into its `s_w` column phases, so that one tap's values for consecutive outputs are
/// contiguous and the loop vectorises (compiled for AVX-512 / AVX2 at run time, whose masked
/// stores it needs).
#[inline(always)]
fn max_plane<F: Float>(m: &MaxScan, xp: &[F], yp: &mut [F], ap: &mut [u32], ph: &mut Vec<F>) {
    let ((h, w), wo) = (m.hw, m.wo);
    let (sw, pw) = (m.p.stride.1, m.p.padding.1);
    let pl = m.split_phases(xp, ph);
    for ((oh, yr), ar) in yp.chunks_mut(wo).enumerate().zip(ap.chunks_mut(wo)) {
        let (h0, h1) = Pool2dParams::window(oh, m.p.stride.0, m.p.padding.0, m.p.kernel.0, h);
        yr.fill(F::neg_infinity());
        for (ow, a) in ar.iter_mut().enumerate() {
            let (w0, _) = Pool2dParams::window(ow, sw, pw, m.p.kernel.1, w);
            *a = (h0 * w + w0) as u32;
        }
        for ih in h0..h1 {
            let rows: &[F] = if sw == 1 {
                &xp[ih * w..(ih + 1) * w]
            } else {
                &ph[ih * sw * pl..(ih + 1) * sw * pl]
            };
            for (kw, &(lo, hi)) in m.cols.iter().enumerate() {
                let (j0, t) = m.tap(kw);
                let src = &rows[j0..j0 + (hi - lo)];
                let mut at = ((ih * w + lo * sw) as isize + t) as u32;
                for ((y, a), &v) in yr[lo..hi].iter_mut().zip(&mut ar[lo..hi]).zip(src) {
                    let take = (v > *y) | v.is_nan();
                    *y = if take { v } else { *y };
                    *a = if take { at } else { *a };
                    at += sw as u32;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_plane_avx512<F: Float>(
    m: &MaxScan,
    xp: &[F],
    yp: &mut [F],
    ap: &mut [u32],
    ph: &mut Vec<F>,
) {
    max_plane(m, xp, yp, ap, ph)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_plane_avx2<F: Float>(
    m: &MaxScan,
    xp: &[F],
    yp: &mut [F],
    ap: &mut [u32],
    ph: &mut Vec<F>,
) {
    max_plane(m, xp, yp, ap, ph)
}

/// [`max_pool2d`]'s values without the argmax (evaluation: no backward will need it), in
/// two separable passes — the maximum over each window's columns for every input row, then over
/// its rows — whose inner loops run over contiguous positions (the columns' pass on the rows'
/// column phases, like [`max_pool2d`]; both compiled for AVX-512 / AVX2 at run time). Each
/// output is the same element the scan of [`max_pool2d`] picks (the first maximum in row-major
/// order, or the last NaN, so even the sign of a zero matches): bit-identical values (tested on
/// every instruction set), about 3× faster.
///
/// # Shapes
/// As [`max_pool2d`].
/// # Errors
/// As [`max_pool2d`].
pub fn max_pool2d_values<F: Float>(
    x: ArrayView4<F>,
    p: &Pool2dParams,
    par: Par,
) -> Result<Array4<F>> {
    max_pool2d_values_on(x, p, par, crate::conv::direct::detect())
}

/// [`max_pool2d_values`] with its planes compiled for `isa` (`None`: the portable build).
fn max_pool2d_values_on<F: Float>(
    x: ArrayView4<F>,
    p: &Pool2dParams,
    par: Par,
    isa: Option<Isa>,
) -> Result<Array4<F>> {
    let op = "max_pool2d";
    check_nonempty(op, x.shape())?;
    let (n, c, h, w) = x.dim();
    let (ho, wo) = p.output_hw(op, h, w)?;
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let mut y = Array4::<F>::zeros((n, c, ho, wo));
    let (hw, np) = (h * w, ho * wo);
    let scan = MaxScan::new(p, (h, w), wo);
    let plane = |i: usize, yp: &mut [F], bufs: &mut (Vec<F>, Vec<F>)| {
        let xp = &xs[i * hw..(i + 1) * hw];
        match isa {
            // SAFETY: holding an `Isa` proves run-time detection found its instruction set.
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx512(_)) => unsafe { max_values_plane_avx512(&scan, xp, yp, bufs) },
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx2(_)) => unsafe { max_values_plane_avx2(&scan, xp, yp, bufs) },
            _ => max_values_plane(&scan, xp, yp, bufs),
        }
    };
    let ys = y.as_slice_mut().expect("fresh array is contiguous");
    match par {
        Par::Seq => {
            let mut bufs = (Vec::new(), Vec::new());
            ys.chunks_mut(np)
                .enumerate()
                .for_each(|(i, yp)| plane(i, yp, &mut bufs));
        }
        Par::Rayon => ys.par_chunks_mut(np).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |bufs, (i, yp)| plane(i, yp, bufs),
        ),
    }
    Ok(y)
}

/// One plane of [`max_pool2d_values`]: each input row's maximum over every window's columns
/// (window column by window column over all the outputs at once, on the row's column phases
/// as in [`max_plane`], so the loops vectorise), then the maximum of those over each window's
/// rows. `bufs`: the row maxima `[h][w_out]` and the phases. Both passes take the columns and
/// rows in increasing order and keep the scan's rule (a later value replaces the running
/// maximum if strictly greater or NaN).
#[inline(always)]
fn max_values_plane<F: Float>(
    m: &MaxScan,
    xp: &[F],
    yp: &mut [F],
    (rows, ph): &mut (Vec<F>, Vec<F>),
) {
    let ((h, w), wo, p) = (m.hw, m.wo, m.p);
    let pl = m.split_phases(xp, ph);
    rows.clear();
    rows.resize(h * wo, F::neg_infinity());
    // the outputs every window column reaches: blocks of them in registers over all the
    // columns (a running maximum kept in memory was stored masked, with AVX-512, and read back
    // by the next column: no store forwarding); the others column by column
    let lo_all = m.cols.iter().map(|c| c.0).max().unwrap_or(0);
    let hi_all = m.cols.iter().map(|c| c.1).min().unwrap_or(0).max(lo_all);
    for (ih, r) in rows.chunks_mut(wo).enumerate() {
        let src_row: &[F] = if p.stride.1 == 1 {
            &xp[ih * w..(ih + 1) * w]
        } else {
            &ph[ih * p.stride.1 * pl..(ih + 1) * p.stride.1 * pl]
        };
        // the value of window column `kw` for output `ow` (valid: `cols[kw].0 ≤ ow < cols[kw].1`)
        let at = |kw: usize, ow: usize| m.tap(kw).0 + ow - m.cols[kw].0;
        for ow in (0..lo_all).chain(hi_all..wo) {
            for (kw, &(lo, hi)) in m.cols.iter().enumerate() {
                if (lo..hi).contains(&ow) {
                    r[ow] = pick(r[ow], src_row[at(kw, ow)]);
                }
            }
        }
        let mut ow = lo_all;
        while ow + MAX_BLOCK <= hi_all {
            let mut acc = [F::neg_infinity(); MAX_BLOCK];
            for kw in 0..m.cols.len() {
                let src = &src_row[at(kw, ow)..][..MAX_BLOCK];
                acc.iter_mut().zip(src).for_each(|(a, &v)| *a = pick(*a, v));
            }
            r[ow..ow + MAX_BLOCK].copy_from_slice(&acc);
            ow += MAX_BLOCK;
        }
        for ow in ow..hi_all {
            for kw in 0..m.cols.len() {
                r[ow] = pick(r[ow], src_row[at(kw, ow)]);
            }
        }
    }
    for (oh, yr) in yp.chunks_mut(wo).enumerate() {
        let (h0, h1) = Pool2dParams::window(oh, p.stride.0, p.padding.0, p.kernel.0, h);
        let rows = &rows[h0 * wo..h1 * wo];
        let mut ow = 0;
        while ow < wo {
            let n = MAX_BLOCK.min(wo - ow);
            let mut acc = [F::neg_infinity(); MAX_BLOCK];
            for r in rows.chunks_exact(wo) {
                acc.iter_mut()
                    .zip(&r[ow..ow + n])
                    .for_each(|(a, &v)| *a = pick(*a, v));
            }
            yr[ow..ow + n].copy_from_slice(&acc[..n]);
            ow += n;
        }
    }
}

/// Outputs of [`max_values_plane`] kept in registers at a time.
const MAX_BLOCK: usize = 16;

/// The scan's rule: a later value replaces the running maximum if strictly greater or NaN.
#[inline(always)]
fn pick<F: Float>(best: F, v: F) -> F {
    if v > best || v.is_nan() {
        v
    } else {
        best
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_values_plane_avx512<F: Float>(
    m: &MaxScan,
    xp: &[F],
    yp: &mut [F],
    bufs: &mut (Vec<F>, Vec<F>),
) {
    max_values_plane(m, xp, yp, bufs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_values_plane_avx2<F: Float>(
    m: &MaxScan,
    xp: &[F],
    yp: &mut [F],
    bufs: &mut (Vec<F>, Vec<F>),
) {
    max_values_plane(m, xp, yp, bufs)
}

/// Backward of [`max_pool2d`]: `dx[argmax] += dy` per plane (scan order of `dy`).
///
/// # Shapes
/// `dy`, `argmax`: `[n, c, h_out, w_out]`, `x_hw = (h, w)` → `[n, c, h, w]`.
/// # Errors
/// `ShapeMismatch` if `dy` and `argmax` differ or an argmax is outside `h·w`; `EmptyDim`.
pub fn max_pool2d_backward<F: Float>(
    dy: ArrayView4<F>,
    argmax: ArrayView4<u32>,
    x_hw: (usize, usize),
    par: Par,
) -> Result<Array4<F>> {
    let op = "max_pool2d_backward";
    if dy.shape() != argmax.shape() {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: dy.shape().to_vec(),
            rhs: argmax.shape().to_vec(),
        });
    }
    let (n, c, _, _) = dy.dim();
    check_nonempty(op, &[n, c, x_hw.0, x_hw.1])?;
    let hw = x_hw.0 * x_hw.1;
    if argmax.iter().any(|&a| a as usize >= hw) {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: argmax.shape().to_vec(),
            rhs: vec![n, c, x_hw.0, x_hw.1],
        });
    }
    let mut dx = Array4::<F>::zeros((n, c, x_hw.0, x_hw.1));
    let np = dy.dim().2 * dy.dim().3;
    if np == 0 {
        return Ok(dx);
    }
    let dy = dy.as_standard_layout();
    let argmax = argmax.as_standard_layout();
    let ds = dy.as_slice().expect("standard layout is contiguous");
    let am = argmax.as_slice().expect("standard layout is contiguous");
    // Planes are independent and each is written by one task, in `dy`'s scan order.
    let dxs = dx.as_slice_mut().expect("fresh array is contiguous");
    crate::for_each_chunk(
        par,
        dxs,
        hw,
        || (),
        |_, i, dps| {
            let (yp, ap) = (&ds[i * np..(i + 1) * np], &am[i * np..(i + 1) * np]);
            for (&g, &a) in yp.iter().zip(ap) {
                dps[a as usize] = dps[a as usize] + g;
            }
        },
    );
    Ok(dx)
}

/// Average pooling with padding counted in the divisor (`count_include_pad = true`, PyTorch's
/// default): `y = Σ_window x / (k_h·k_w)`.
///
/// # Shapes
/// `x`: `[n, c, h, w]` → `[n, c, h_out, w_out]`.
/// # Errors
/// `EmptyDim`, `InvalidParam`, `KernelTooLarge` (op `avg_pool2d`).
pub fn avg_pool2d<F: Float>(x: ArrayView4<F>, p: &Pool2dParams, par: Par) -> Result<Array4<F>> {
    let op = "avg_pool2d";
    check_nonempty(op, x.shape())?;
    let (n, c, h, w) = x.dim();
    let (ho, wo) = p.output_hw(op, h, w)?;
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let div = F::from_f64((p.kernel.0 * p.kernel.1) as f64);
    let mut y = Array4::<F>::zeros((n, c, ho, wo));
    let (hw, np) = (h * w, ho * wo);
    crate::for_each_chunk(
        par,
        y.as_slice_mut().expect("contiguous"),
        np,
        || (),
        |_, i, yp| {
            let xp = &xs[i * hw..(i + 1) * hw];
            for oh in 0..ho {
                let (h0, h1) = Pool2dParams::window(oh, p.stride.0, p.padding.0, p.kernel.0, h);
                for ow in 0..wo {
                    let (w0, w1) = Pool2dParams::window(ow, p.stride.1, p.padding.1, p.kernel.1, w);
                    let mut s = F::zero();
                    for ih in h0..h1 {
                        for iw in w0..w1 {
                            s = s + xp[ih * w + iw];
                        }
                    }
                    yp[oh * wo + ow] = s / div;
                }
            }
        },
    );
    Ok(y)
}

/// Backward of [`avg_pool2d`]: each `dy / (k_h·k_w)` is added to the input positions of its
/// window (scan order of `dy`).
///
/// # Shapes
/// `dy`: `[n, c, h_out, w_out]`, `x_hw = (h, w)` → `[n, c, h, w]`.
/// # Errors
/// As [`avg_pool2d`] (op `avg_pool2d_backward`), plus `ShapeMismatch` if `dy`'s spatial size is
/// not `(h_out, w_out)`.
pub fn avg_pool2d_backward<F: Float>(
    dy: ArrayView4<F>,
    x_hw: (usize, usize),
    p: &Pool2dParams,
) -> Result<Array4<F>> {
    let op = "avg_pool2d_backward";
    let (n, c, dh, dw) = dy.dim();
    let (h, w) = x_hw;
    check_nonempty(op, &[n, c, h, w])?;
    let (ho, wo) = p.output_hw(op, h, w)?;
    if (dh, dw) != (ho, wo) {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: dy.shape().to_vec(),
            rhs: vec![n, c, ho, wo],
        });
    }
    let div = F::from_f64((p.kernel.0 * p.kernel.1) as f64);
    let mut dx = Array4::<F>::zeros((n, c, h, w));
    for (mut dxs, dys) in dx.axis_iter_mut(Axis(0)).zip(dy.axis_iter(Axis(0))) {
        for (mut dp, yp) in dxs.axis_iter_mut(Axis(0)).zip(dys.axis_iter(Axis(0))) {
            for oh in 0..ho {
                let (h0, h1) = Pool2dParams::window(oh, p.stride.0, p.padding.0, p.kernel.0, h);
                for ow in 0..wo {
                    let (w0, w1) = Pool2dParams::window(ow, p.stride.1, p.padding.1, p.kernel.1, w);
                    let g = yp[[oh, ow]] / div;
                    for ih in h0..h1 {
                        for iw in w0..w1 {
                            dp[[ih, iw]] = dp[[ih, iw]] + g;
                        }
                    }
                }
            }
        }
    }
    Ok(dx)
}

/// Global average pooling: `y[n, c] = Σ_{h, w} x[n, c, h, w] / (h·w)`, each plane into 16
/// partial sums (element `j` to lane `j % 16`, combined in a fixed tree; vectorised), planes in
/// parallel: the same bits for any thread count.
///
/// # Shapes
/// `x`: `[n, c, h, w]` → `[n, c]`. With `h·w == 0` the result is NaN.
pub fn global_avg_pool<F: Float>(x: ArrayView4<F>, par: Par) -> Array2<F> {
    let (n, c, h, w) = x.dim();
    let hw = h * w;
    let div = F::from_f64(hw as f64);
    if hw == 0 {
        return Array2::from_elem((n, c), F::nan());
    }
    let mut y = Array2::<F>::zeros((n, c));
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    // One sample (its c planes) per task.
    let ys = y.as_slice_mut().expect("fresh array is contiguous");
    crate::for_each_chunk(
        par,
        ys,
        c.max(1),
        || (),
        |_, i, vs| {
            for (k, v) in vs.iter_mut().enumerate() {
                let p = (i * c + k) * hw;
                *v = lane_sum(&xs[p..p + hw]) / div;
            }
        },
    );
    y
}

/// Backward of [`global_avg_pool`]: `dx[n, c, h, w] = dy[n, c] / (h·w)` (planes in parallel).
///
/// # Shapes
/// `dy`: `[n, c]`, `x_hw = (h, w)` → `[n, c, h, w]`.
pub fn global_avg_pool_backward<F: Float>(
    dy: ArrayView2<F>,
    x_hw: (usize, usize),
    par: Par,
) -> Array4<F> {
    let (n, c) = dy.dim();
    let hw = x_hw.0 * x_hw.1;
    let div = F::from_f64(hw as f64);
    let mut dx = Array4::<F>::zeros((n, c, x_hw.0, x_hw.1));
    if hw == 0 {
        return dx;
    }
    let dy = dy.as_standard_layout();
    let ds = dy.as_slice().expect("standard layout is contiguous");
    let dxs = dx.as_slice_mut().expect("fresh array is contiguous");
    crate::for_each_chunk(par, dxs, hw, || (), |_, i, p| p.fill(ds[i] / div));
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::direct::{detect, detect_avx2};
    use crate::testutil::{bits, check_fd, hw_swapped, inner, max_rel_err, rand_array};

    /// The definition, output by output: the scan of the window in row-major order, a later
    /// value replacing the running maximum if strictly greater or NaN.
    fn scan(x: &Array4<f32>, p: &Pool2dParams) -> (Array4<f32>, Array4<u32>) {
        let (n, c, h, w) = x.dim();
        let (ho, wo) = p.output_hw("scan", h, w).unwrap();
        let mut y = Array4::zeros((n, c, ho, wo));
        let mut am = Array4::zeros((n, c, ho, wo));
        for ((s, ch, oh, ow), o) in y.indexed_iter_mut() {
            let (h0, h1) = Pool2dParams::window(oh, p.stride.0, p.padding.0, p.kernel.0, h);
            let (w0, w1) = Pool2dParams::window(ow, p.stride.1, p.padding.1, p.kernel.1, w);
            let (mut best, mut bi) = (f32::NEG_INFINITY, h0 * w + w0);
            for ih in h0..h1 {
                for iw in w0..w1 {
                    let v = x[[s, ch, ih, iw]];
                    if v > best || v.is_nan() {
                        (best, bi) = (v, ih * w + iw);
                    }
                }
            }
            *o = best;
            am[[s, ch, oh, ow]] = bi as u32;
        }
        (y, am)
    }

    /// Both max poolings pick the very element the scan picks: the first maximum (ties and ±0
    /// included) or the last NaN, and the argmax its position, for several windows (clipped
    /// by padding on every side), on every instruction set, sequentially and with 1, 2 and 4
    /// threads.
    #[test]
    fn max_pool2d_is_the_scan_bit_for_bit() {
        // 9 columns, and 45 (rows wider than the evaluation pass's register blocks)
        for w in [9, 45] {
            max_pool2d_is_the_scan_for_width(w);
        }
    }

    fn max_pool2d_is_the_scan_for_width(w: usize) {
        let mut x: Array4<f32> = rand_array((3, 4, 11, w), 41);
        // ties, signed zeros, infinities and NaNs in some windows
        for (k, v) in x.iter_mut().enumerate() {
            match k % 17 {
                0 => *v = 0.0,
                3 => *v = -0.0,
                5 => *v = 0.5,
                7 if k % 3 == 0 => *v = f32::NAN,
                9 => *v = f32::NEG_INFINITY,
                11 => *v = -f32::NAN,
                _ => {}
            }
        }
        x.slice_mut(ndarray::s![0, 0, .., ..])
            .fill(f32::NEG_INFINITY);
        // all-zero plane of mixed signs: every maximum is a tie, and its sign shows which won
        let mut zeros = x.slice_mut(ndarray::s![0, 1, .., ..]);
        for ih in 0..11usize {
            for iw in 0..w {
                let sign = (5 * ih + iw * iw + ih * iw) % 3;
                zeros[[ih, iw]] = if sign == 0 { 0.0 } else { -0.0 };
            }
        }
        for p in [
            Pool2dParams::new(3, 2, 1),
            Pool2dParams::new(2, 2, 0),
            Pool2dParams::new(3, 1, 1),
            Pool2dParams {
                kernel: (3, 2),
                stride: (2, 1),
                padding: (1, 0),
            },
            Pool2dParams {
                kernel: (2, 5),
                stride: (1, 3),
                padding: (1, 2),
            },
        ] {
            let (want, want_am) = scan(&x, &p);
            // sequential, then on pools of 1, 2 and 4 threads
            let runs = [
                (Par::Seq, 1),
                (Par::Rayon, 1),
                (Par::Rayon, 2),
                (Par::Rayon, 4),
            ];
            for ((par, threads), isa) in runs
                .into_iter()
                .flat_map(|r| [detect(), detect_avx2(), None].map(|i| (r, i)))
            {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let at = format!("{p:?} {par:?} {threads} threads {isa:?}");
                let (got, am) = pool.install(|| max_pool2d_on(x.view(), &p, par, isa).unwrap());
                assert_eq!(bits(&got), bits(&want), "{at}");
                assert_eq!(am, want_am, "{at}");
                let got = pool.install(|| max_pool2d_values_on(x.view(), &p, par, isa).unwrap());
                assert_eq!(bits(&got), bits(&want), "{at}");
            }
        }
        let e = max_pool2d_values(x.view(), &Pool2dParams::new(20, 1, 0), Par::Seq);
        assert!(e.is_err());
    }

    /// Direct loops: (max, first argmax, average with padding counted) per window.
    fn naive(x: &Array4<f64>, p: &Pool2dParams) -> (Array4<f64>, Array4<u32>, Array4<f64>) {
        let (n, c, h, w) = x.dim();
        let ho = (h + 2 * p.padding.0 - p.kernel.0) / p.stride.0 + 1;
        let wo = (w + 2 * p.padding.1 - p.kernel.1) / p.stride.1 + 1;
        let mut mx = Array4::zeros((n, c, ho, wo));
        let mut am = Array4::zeros((n, c, ho, wo));
        let mut av = Array4::zeros((n, c, ho, wo));
        for ((s, ch, oh, ow), v) in mx.indexed_iter_mut() {
            let (mut best, mut bi, mut sum) = (f64::NEG_INFINITY, 0, 0.0);
            for ki in 0..p.kernel.0 {
                for kj in 0..p.kernel.1 {
                    let ih = (oh * p.stride.0 + ki) as isize - p.padding.0 as isize;
                    let iw = (ow * p.stride.1 + kj) as isize - p.padding.1 as isize;
                    if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                        continue;
                    }
                    let u = x[[s, ch, ih as usize, iw as usize]];
                    sum += u;
                    if u > best {
                        best = u;
                        bi = ih as usize * w + iw as usize;
                    }
                }
            }
            *v = best;
            am[[s, ch, oh, ow]] = bi as u32;
            av[[s, ch, oh, ow]] = sum / (p.kernel.0 * p.kernel.1) as f64;
        }
        (mx, am, av)
    }

    fn cases() -> Vec<((usize, usize, usize, usize), Pool2dParams)> {
        vec![
            ((1, 2, 7, 9), Pool2dParams::new(3, 2, 1)),
            ((3, 3, 8, 7), Pool2dParams::new(2, 2, 0)),
            (
                (3, 1, 5, 6),
                Pool2dParams {
                    kernel: (3, 2),
                    stride: (1, 2),
                    padding: (1, 1),
                },
            ),
            ((1, 2, 4, 4), Pool2dParams::new(4, 1, 2)),
        ]
    }

    #[test]
    fn pools_match_naive_and_finite_differences() {
        for (i, (shape, p)) in cases().into_iter().enumerate() {
            let x = rand_array::<f64, _, _>(shape, i as u64);
            let (rm, ra, rv) = naive(&x, &p);
            let (y, am) = max_pool2d(x.view(), &p, Par::Rayon).unwrap();
            assert_eq!(y, rm, "{p:?}");
            assert_eq!(am, ra, "{p:?}");
            let av = avg_pool2d(x.view(), &p, Par::Rayon).unwrap();
            assert!(max_rel_err(&av, &rv) < 1e-14);
            let g = rand_array::<f64, _, _>(y.dim(), 50 + i as u64);
            let hw = (shape.2, shape.3);
            let dmax = max_pool2d_backward(g.view(), am.view(), hw, Par::Rayon).unwrap();
            check_fd("max_pool2d", &x, &dmax, |xp| {
                inner(&max_pool2d(xp.view(), &p, Par::Seq).unwrap().0, &g)
            });
            let davg = avg_pool2d_backward(g.view(), hw, &p).unwrap();
            check_fd("avg_pool2d", &x, &davg, |xp| {
                inner(&avg_pool2d(xp.view(), &p, Par::Seq).unwrap(), &g)
            });
            // f32 and Seq vs Rayon bit identity.
            let xf = x.mapv(|v| v as f32);
            let (a, b) = (
                max_pool2d(xf.view(), &p, Par::Seq).unwrap(),
                max_pool2d(xf.view(), &p, Par::Rayon).unwrap(),
            );
            assert_eq!((bits(&a.0), a.1), (bits(&b.0), b.1));
            assert_eq!(
                bits(&avg_pool2d(xf.view(), &p, Par::Seq).unwrap()),
                bits(&avg_pool2d(xf.view(), &p, Par::Rayon).unwrap())
            );
        }
    }

    #[test]
    fn max_pool_ties_go_to_first_max_in_scan_order() {
        let x =
            Array4::from_shape_vec((1, 1, 2, 4), vec![1.0f32, 1., 0., 2., 1., 0., 2., 2.]).unwrap();
        let (y, am) = max_pool2d(x.view(), &Pool2dParams::new(2, 2, 0), Par::Seq).unwrap();
        assert_eq!(y.as_slice().unwrap(), &[1., 2.]);
        assert_eq!(am.as_slice().unwrap(), &[0, 3]);
        let dy = Array4::from_shape_vec((1, 1, 1, 2), vec![1.0f32, 2.]).unwrap();
        let dx = max_pool2d_backward(dy.view(), am.view(), (2, 4), Par::Rayon).unwrap();
        assert_eq!(dx.as_slice().unwrap(), &[1., 0., 0., 2., 0., 0., 0., 0.]);
    }

    /// Max-pool backward and global average pooling (+ backward) give the same bits on 1 and 2
    /// threads, and match f64 references; a non-standard-layout input gives the same bits too.
    #[test]
    fn planewise_pool_kernels_match_reference_and_thread_counts() {
        let x = rand_array::<f32, _, _>((6, 5, 7, 9), 21);
        let p = Pool2dParams::new(3, 2, 1);
        let (y, am) = max_pool2d(x.view(), &p, Par::Seq).unwrap();
        let g = rand_array::<f32, _, _>(y.dim(), 22);
        let g2 = rand_array::<f32, _, _>((6, 5), 23);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let dx = max_pool2d_backward(g.view(), am.view(), (7, 9), Par::Rayon).unwrap();
                let gp = global_avg_pool(x.view(), Par::Rayon);
                let gb = global_avg_pool_backward(g2.view(), (7, 9), Par::Rayon);
                (dx, gp, gb)
            })
        };
        let (dx1, gp1, gb1) = run(1);
        let (dx2, gp2, gb2) = run(2);
        assert_eq!(bits(&dx1), bits(&dx2));
        assert_eq!(bits(&gp1), bits(&gp2));
        assert_eq!(bits(&gb1), bits(&gb2));
        // References in f64: scatter of dy at the argmax; plane means; broadcast.
        let mut rdx = Array4::<f64>::zeros(x.dim());
        for ((i, j, a, b), &v) in g.indexed_iter() {
            let k = am[[i, j, a, b]] as usize;
            rdx[[i, j, k / 9, k % 9]] += v as f64;
        }
        assert!(max_rel_err(&dx1.mapv(|v| v as f64), &rdx) < 1e-6);
        for ((i, j), &v) in gp1.indexed_iter() {
            let r = x
                .slice(ndarray::s![i, j, .., ..])
                .iter()
                .map(|&u| u as f64)
                .sum::<f64>()
                / 63.0;
            assert!((v as f64 - r).abs() < 1e-6, "gap [{i}, {j}]");
            assert!(gb1
                .slice(ndarray::s![i, j, .., ..])
                .iter()
                .all(|&d| d == g2[[i, j]] / 63.0));
        }
        // Same values through a permuted (non-standard layout) view.
        let xt = hw_swapped(&x);
        let xt = xt.view().permuted_axes([0, 1, 3, 2]);
        assert!(!xt.is_standard_layout());
        assert_eq!(bits(&global_avg_pool(xt, Par::Rayon)), bits(&gp1));
    }

    #[test]
    fn global_avg_pool_and_backward() {
        let x = rand_array::<f64, _, _>((3, 2, 5, 3), 9);
        let y = global_avg_pool(x.view(), Par::Rayon);
        assert!((y[[2, 1]] - x.slice(ndarray::s![2, 1, .., ..]).sum() / 15.0).abs() < 1e-15);
        let g = rand_array::<f64, _, _>((3, 2), 10);
        let dx = global_avg_pool_backward(g.view(), (5, 3), Par::Rayon);
        check_fd("global_avg_pool", &x, &dx, |xp| {
            inner(&global_avg_pool(xp.view(), Par::Rayon), &g)
        });
    }

    #[test]
    fn pools_reject_bad_input() {
        let x = Array4::<f32>::zeros((2, 3, 4, 4));
        assert!(matches!(
            max_pool2d(x.view(), &Pool2dParams::new(5, 1, 0), Par::Seq),
            Err(TensorError::KernelTooLarge {
                op: "max_pool2d",
                input: (4, 4),
                kernel: (5, 5),
                ..
            })
        ));
        assert!(matches!(
            avg_pool2d(x.view(), &Pool2dParams::new(2, 1, 2), Par::Seq),
            Err(TensorError::InvalidParam {
                op: "avg_pool2d",
                ..
            })
        ));
        assert_eq!(
            max_pool2d(
                Array4::<f32>::zeros((2, 0, 4, 4)).view(),
                &Pool2dParams::new(2, 2, 0),
                Par::Seq
            )
            .unwrap_err(),
            TensorError::EmptyDim {
                op: "max_pool2d",
                shape: vec![2, 0, 4, 4]
            }
        );
        let dy = Array4::<f32>::zeros((2, 3, 2, 2));
        let am = Array4::<u32>::from_elem((2, 3, 2, 2), 16);
        assert!(matches!(
            max_pool2d_backward(dy.view(), am.view(), (4, 4), Par::Rayon),
            Err(TensorError::ShapeMismatch {
                op: "max_pool2d_backward",
                ..
            })
        ));
        assert!(matches!(
            avg_pool2d_backward(dy.view(), (4, 4), &Pool2dParams::new(3, 1, 0)).map(|_| ()),
            Ok(())
        ));
        assert!(matches!(
            avg_pool2d_backward(dy.view(), (5, 5), &Pool2dParams::new(3, 1, 0)),
            Err(TensorError::ShapeMismatch {
                op: "avg_pool2d_backward",
                ..
            })
        ));
    }
}
