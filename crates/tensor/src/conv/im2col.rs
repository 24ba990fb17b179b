//! im2col / col2im of one group of one sample, for the GEMM path.

use super::geom::Geom;
use crate::Float;

/// im2col of one group of one sample: `x_g: [c_in_g, h, w]` → `cols: [c_in_g·k_h·k_w, h_out·w_out]`
/// (row `(ci·k_h + ki)·k_w + kj`), zeros where the window reaches into the padding.
pub(super) fn im2col<F: Float>(g: &Geom, x_g: &[F], cols: &mut [F]) {
    let (hw, np) = (g.h * g.w, g.npix());
    for ci in 0..g.cin_g {
        let plane = &x_g[ci * hw..(ci + 1) * hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let r = (ci * g.kh + ki) * g.kw + kj;
                let row = &mut cols[r * np..(r + 1) * np];
                let (off, lo, hi) = g.col_range(kj);
                for oh in 0..g.ho {
                    let out = &mut row[oh * g.wo..(oh + 1) * g.wo];
                    let Some(ih) = g.in_row(oh, ki) else {
                        out.fill(F::zero());
                        continue;
                    };
                    let src = &plane[ih * g.w..(ih + 1) * g.w];
                    out[..lo].fill(F::zero());
                    out[hi..].fill(F::zero());
                    if g.sw == 1 {
                        let s0 = (lo as isize + off) as usize;
                        out[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                    } else {
                        for (ow, o) in out.iter_mut().enumerate().take(hi).skip(lo) {
                            *o = src[((ow * g.sw) as isize + off) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// col2im of one group of one sample: `dx_g[c_in_g, h, w] += cols[c_in_g·k_h·k_w, h_out·w_out]`
/// scattered back to the input positions (the adjoint of [`im2col`]).
pub(super) fn col2im<F: Float>(g: &Geom, cols: &[F], dx_g: &mut [F]) {
    let np = g.npix();
    col2im_rows(g, g.cin_g, |r| &cols[r * np..(r + 1) * np], dx_g);
}

/// [`col2im`] of `chans` channels whose column row `r = (c·k_h + k_i)·k_w + k_j` is `row(r)`
/// (`h_out·w_out` values): each input position takes its terms in tap order.
pub(super) fn col2im_rows<'a, F: Float + 'a>(
    g: &Geom,
    chans: usize,
    row: impl Fn(usize) -> &'a [F],
    dx_g: &mut [F],
) {
    let hw = g.h * g.w;
    for ci in 0..chans {
        let plane = &mut dx_g[ci * hw..(ci + 1) * hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = row((ci * g.kh + ki) * g.kw + kj);
                let (off, lo, hi) = g.col_range(kj);
                for oh in 0..g.ho {
                    let Some(ih) = g.in_row(oh, ki) else { continue };
                    let src = &row[oh * g.wo..(oh + 1) * g.wo];
                    let dst = &mut plane[ih * g.w..(ih + 1) * g.w];
                    if g.sw == 1 {
                        let d0 = (lo as isize + off) as usize;
                        for (d, &s) in dst[d0..d0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d = *d + s;
                        }
                    } else {
                        for (ow, &s) in src.iter().enumerate().take(hi).skip(lo) {
                            let d = &mut dst[((ow * g.sw) as isize + off) as usize];
                            *d = *d + s;
                        }
                    }
                }
            }
        }
    }
}
