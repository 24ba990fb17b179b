//! Depthwise convolution (one input channel per group): direct per-plane forward, input
//! gradient and weight-gradient terms, no GEMM.

use super::geom::Geom;
use crate::Float;

/// Direct depthwise forward of one output plane: `y[h_out, w_out] += Σ_{ki,kj} w[ki,kj]·x[..]`
/// over the input plane `x: [h, w]` (summed kernel tap by kernel tap, in row-major tap order).
pub(super) fn dw_plane_forward<F: Float>(g: &Geom, x: &[F], wk: &[F], y: &mut [F]) {
    for ki in 0..g.kh {
        for kj in 0..g.kw {
            let wv = wk[ki * g.kw + kj];
            let (off, lo, hi) = g.col_range(kj);
            for oh in 0..g.ho {
                let Some(ih) = g.in_row(oh, ki) else { continue };
                let src = &x[ih * g.w..(ih + 1) * g.w];
                let out = &mut y[oh * g.wo..(oh + 1) * g.wo];
                if g.sw == 1 {
                    let s0 = (lo as isize + off) as usize;
                    for (o, &s) in out[lo..hi].iter_mut().zip(&src[s0..s0 + (hi - lo)]) {
                        *o = *o + wv * s;
                    }
                } else {
                    for (ow, o) in out.iter_mut().enumerate().take(hi).skip(lo) {
                        *o = *o + wv * src[((ow * g.sw) as isize + off) as usize];
                    }
                }
            }
        }
    }
}

/// Direct depthwise input gradient of one plane: `dx[h, w] += Σ w[ki,kj]·dy[..]` (adjoint of
/// [`dw_plane_forward`]).
pub(super) fn dw_plane_backward_input<F: Float>(g: &Geom, dy: &[F], wk: &[F], dx: &mut [F]) {
    for ki in 0..g.kh {
        for kj in 0..g.kw {
            let wv = wk[ki * g.kw + kj];
            let (off, lo, hi) = g.col_range(kj);
            for oh in 0..g.ho {
                let Some(ih) = g.in_row(oh, ki) else { continue };
                let src = &dy[oh * g.wo..(oh + 1) * g.wo];
                let dst = &mut dx[ih * g.w..(ih + 1) * g.w];
                if g.sw == 1 {
                    let d0 = (lo as isize + off) as usize;
                    for (d, &s) in dst[d0..d0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                        *d = *d + wv * s;
                    }
                } else {
                    for (ow, &s) in src.iter().enumerate().take(hi).skip(lo) {
                        let d = &mut dst[((ow * g.sw) as isize + off) as usize];
                        *d = *d + wv * s;
                    }
                }
            }
        }
    }
}

/// Fixed-order dot product with 8 independent lanes (vectorisable), lanes combined in a fixed
/// tree: the result depends only on the inputs.
pub(super) fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    let mut acc = [F::zero(); 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[l] = acc[l] + x * y;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Direct depthwise weight gradient of one (sample, output plane): `dwk[ki, kj] += Σ dy·x[..]`.
pub(super) fn dw_plane_terms<F: Float>(g: &Geom, x: &[F], dy: &[F], terms: &mut [F]) {
    for ki in 0..g.kh {
        for kj in 0..g.kw {
            let (off, lo, hi) = g.col_range(kj);
            let mut s = F::zero();
            for oh in 0..g.ho {
                let Some(ih) = g.in_row(oh, ki) else { continue };
                let xr = &x[ih * g.w..(ih + 1) * g.w];
                let dr = &dy[oh * g.wo..(oh + 1) * g.wo];
                if g.sw == 1 {
                    let s0 = (lo as isize + off) as usize;
                    s = s + dot(&dr[lo..hi], &xr[s0..s0 + (hi - lo)]);
                } else {
                    let mut t = F::zero();
                    for (ow, &d) in dr.iter().enumerate().take(hi).skip(lo) {
                        t = t + d * xr[((ow * g.sw) as isize + off) as usize];
                    }
                    s = s + t;
                }
            }
            terms[ki * g.kw + kj] = s;
        }
    }
}
