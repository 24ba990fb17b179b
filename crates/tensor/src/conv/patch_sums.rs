//! Sums of squares over the patches of a convolution, `conv2d(x ⊙ x, ONES)`, and their input
//! gradient `(convᵀ(dn, ONES) · 2) · x`: HLA's patch norms without a convolution.
//!
//! With a ONES kernel `[g, c_in / g, k_h, k_w]`, the conv's output is one value per group and
//! position, and its input gradient one plane per group, the same for every channel of the
//! group. Where the convolution would take the direct kernels, the loops here compute these
//! with the very terms the kernels sum, in their order, from zero: the bits of the convolution,
//! without the `x ⊙ x` tensor, the padded copy of every channel, or a convolution with one
//! output (or one input) channel. Where the input gradient would take GEMM + col2im (strided
//! layers without AVX-512; f64; no SIMD), its column rows are all `dn` itself (a product with
//! one output channel), so col2im of a single channel gives the group's plane, with the very
//! additions of every channel's col2im. Elsewhere (the AVX-512 scatter kernel, whose tap blocks
//! of 16 give each channel another order; depthwise and 1×1 layers) they are the composition
//! itself.
//!
//! The kernels sum an output over its taps `(c, k_i, k_j)` in that order, starting from zero,
//! each term an `fma(1, v, acc)`, which is `acc + v` rounded once; padding positions contribute
//! `+0`. The loops below add the same values of a zero-padded plane in the same order.

use super::backward::{add_into, input_path, standard, InputPath};
use super::geom::{dims4, Geom};
use super::im2col::col2im_rows;
use super::params::Conv2dParams;
use super::{conv2d, conv2d_backward_input};
use crate::{
    for_each_chunk, for_each_uninit_chunk, for_each_zeroed_chunk, isa, map, Float, Par, Result,
    TensorError,
};
use ndarray::{Array4, ArrayView4};

/// `conv2d(x ⊙ x, ONES)` with `ONES` `[g, c_in / g, k_h, k_w]` (`g = p.groups`): the sum of
/// squares over every patch, per group, bit for bit the composition's values (see the module
/// documentation). In parallel over samples when `par` allows it.
///
/// # Shapes
/// `x`: `[n, c_in, h, w]`, `k_hw = (k_h, k_w)` → `[n, g, h_out, w_out]`.
/// # Errors
/// As [`conv2d`] with that kernel (op `patch_square_sums`).
pub fn patch_square_sums<F: Float>(
    x: ArrayView4<F>,
    k_hw: (usize, usize),
    p: &Conv2dParams,
    par: Par,
) -> Result<Array4<F>> {
    let op = "patch_square_sums";
    let xd = dims4(&x);
    let ones_d = ones_dims(xd[1], k_hw, p);
    let g = Geom::new(op, xd, ones_d, p)?;
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    if g.direct_forward::<F>().is_none() {
        let x2 = map(xs, par, |v| v * v);
        let x2 = Array4::from_shape_vec(x.raw_dim(), x2).expect("one square per element of x");
        let ones = Array4::from_elem(ones_d, F::one());
        return conv2d(x2.view(), ones.view(), None, p, par);
    }
    let (hw, np) = (g.h * g.w, g.npix());
    let padded = Padded {
        h: g.h + 2 * g.ph,
        w: g.w + 2 * g.pw,
        ph: g.ph,
        pw: g.pw,
    };
    let taps = Taps {
        k: (g.kh, g.kw),
        s: (g.sh, g.sw),
        d: (g.dh, g.dw),
    };
    let plane = padded.h * padded.w;
    let ys = for_each_zeroed_chunk(
        par,
        g.n * g.groups * np,
        g.groups * np,
        || vec![F::zero(); g.cin_g * plane],
        |pad, s, y_s| {
            // the sums bound: compiled for the CPU's vectors (the same additions either way)
            isa::vectorised(
                #[inline(always)]
                || {
                    for (gi, y_g) in y_s.chunks_exact_mut(np).enumerate() {
                        // the group's squares, each channel's plane padded, then all their
                        // taps in one pass (the sums stay in registers across channels)
                        let x_g = &xs[(s * g.c_in + gi * g.cin_g) * hw..][..g.cin_g * hw];
                        for (pad, x_c) in pad.chunks_exact_mut(plane).zip(x_g.chunks_exact(hw)) {
                            padded.fill(pad, x_c, g.w, |v| v * v);
                        }
                        taps.add(y_g, (g.ho, g.wo), pad, padded.w, (g.cin_g, plane));
                    }
                },
            )
        },
    );
    Ok(Array4::from_shape_vec((g.n, g.groups, g.ho, g.wo), ys).expect("n·g·h_out·w_out sums"))
}

/// The input gradient of [`patch_square_sums`] given `dn`, the gradient of the sums, added into
/// `acc` when there is one: `acc + (convᵀ(dn, ONES) · 2) · x`, bit for bit
/// [`conv2d_backward_input`] with the ONES kernel, then `(d · 2) · x` element by element, then
/// the sum with `acc` (see the module documentation). In parallel over samples when `par`
/// allows it.
///
/// # Shapes
/// `dn`: `[n, g, h_out, w_out]`, `x` and `acc`: `[n, c_in, h, w]` → `[n, c_in, h, w]`.
/// # Errors
/// As [`conv2d_backward_input`] with that kernel (op `patch_square_sums_backward`), plus
/// `ShapeMismatch` if `acc` is not `x`'s shape.
pub fn patch_square_sums_backward<F: Float>(
    dn: ArrayView4<F>,
    x: ArrayView4<F>,
    k_hw: (usize, usize),
    p: &Conv2dParams,
    par: Par,
    acc: Option<Array4<F>>,
) -> Result<Array4<F>> {
    let op = "patch_square_sums_backward";
    let xd = dims4(&x);
    let ones_d = ones_dims(xd[1], k_hw, p);
    let g = Geom::new(op, xd, ones_d, p)?;
    let dnd = dims4(&dn);
    if dnd != [g.n, g.groups, g.ho, g.wo] {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: dnd.to_vec(),
            rhs: vec![g.n, g.groups, g.ho, g.wo],
        });
    }
    if let Some(a) = acc.as_ref().filter(|a| dims4(&a.view()) != xd) {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: a.shape().to_vec(),
            rhs: xd.to_vec(),
        });
    }
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let plane = match input_path::<F>(&g) {
        InputPath::Direct => {
            // dn padded by `d·(k − 1) − p`, summed over the taps at stride 1
            let (eh, ew) = (g.dh * (g.kh - 1), g.dw * (g.kw - 1));
            let padded = Padded {
                h: g.ho + 2 * (eh - g.ph),
                w: g.wo + 2 * (ew - g.pw),
                ph: eh - g.ph,
                pw: ew - g.pw,
            };
            let taps = Taps {
                k: (g.kh, g.kw),
                s: (1, 1),
                d: (g.dh, g.dw),
            };
            GroupPlane::Taps(padded, taps)
        }
        InputPath::Col2im => GroupPlane::Col2im,
        InputPath::Scatter | InputPath::Depthwise | InputPath::Pointwise => {
            return composition(dn, x.view(), ones_d, &g, p, par, acc)
        }
    };
    let dn = dn.as_standard_layout();
    let dns = dn.as_slice().expect("standard layout is contiguous");
    let hw = g.h * g.w;
    let grad = InputGrad {
        g: &g,
        plane,
        xs,
        dns,
    };
    let pad_len = match plane {
        GroupPlane::Taps(padded, _) => padded.h * padded.w,
        GroupPlane::Col2im => 0,
    };
    let init = || (vec![F::zero(); pad_len], vec![F::zero(); hw]);
    let sample_len = g.c_in * hw;
    Ok(match acc {
        Some(acc) => {
            let mut acc = standard(acc);
            let a = acc.as_slice_mut().expect("standard layout is contiguous");
            for_each_chunk(par, a, sample_len, init, |sc, s, a_s| {
                grad.sample(sc, s, a_s, |a, v| *a = *a + v)
            });
            acc
        }
        None => {
            let n = g.n * sample_len;
            let dx = for_each_uninit_chunk(par, n, sample_len, init, |sc, s, y_s| {
                grad.sample(sc, s, y_s, |y, v| {
                    y.write(v);
                })
            });
            Array4::from_shape_vec((g.n, g.c_in, g.h, g.w), dx).expect("n·c_in·h·w values")
        }
    })
}

/// [`patch_square_sums_backward`] as its definition: [`conv2d_backward_input`] with the ONES
/// kernel, then `(d · 2) · x`, then the sum with `acc`: for the input-gradient paths whose sums
/// the loops here do not reproduce (the AVX-512 scatter, whose tap blocks give each channel
/// another order; the depthwise loops' own order; the 1×1 GEMM's direct writes, not sums from
/// zero).
fn composition<F: Float>(
    dn: ArrayView4<F>,
    x: ArrayView4<F>,
    ones_d: [usize; 4],
    g: &Geom,
    p: &Conv2dParams,
    par: Par,
    acc: Option<Array4<F>>,
) -> Result<Array4<F>> {
    let xs = x.as_slice().expect("standard layout is contiguous");
    let two = F::one() + F::one();
    let ones = Array4::from_elem(ones_d, F::one());
    let mut dx = conv2d_backward_input(dn, ones.view(), (g.h, g.w), p, par)?;
    let dxs = dx.as_slice_mut().expect("fresh array is contiguous");
    for_each_chunk(
        par,
        dxs,
        g.c_in * g.h * g.w,
        || (),
        |_, s, d_s| {
            let x_s = &xs[s * d_s.len()..][..d_s.len()];
            d_s.iter_mut()
                .zip(x_s)
                .for_each(|(d, &x)| *d = *d * two * x);
        },
    );
    Ok(add_into(acc, dx, par))
}

/// How [`InputGrad`] sums a group's plane `convᵀ(dn, ONES)`, as the input-gradient path it
/// stands for does.
#[derive(Clone, Copy)]
enum GroupPlane {
    /// The direct path: `dn` zero-padded, its taps summed at stride 1 ([`Taps::add`]).
    Taps(Padded, Taps),
    /// GEMM + col2im: every column row is `dn` itself (`1 · dn` with one output channel), so
    /// col2im of one channel's rows gives every channel's plane.
    Col2im,
}

/// The fast paths of [`patch_square_sums_backward`]: the geometry, how a group's plane is
/// summed, `x` and `dn` (standard layout).
struct InputGrad<'a, F> {
    g: &'a Geom,
    plane: GroupPlane,
    xs: &'a [F],
    dns: &'a [F],
}

impl<F: Float> InputGrad<'_, F> {
    /// Sample `s`: per group, the plane `t = convᵀ(dn, ONES)` (one channel's, the same for all
    /// of the group's), then `put(out_i, (t · 2) · x_i)` for every element of the sample's
    /// `[c_in, h, w]`. `scratch`: the padded `dn` plane and `t`.
    fn sample<T>(
        &self,
        (pad, t): &mut (Vec<F>, Vec<F>),
        s: usize,
        out: &mut [T],
        put: impl Fn(&mut T, F),
    ) {
        let g = self.g;
        let (hw, np) = (g.h * g.w, g.npix());
        let two = F::one() + F::one();
        let x_s = &self.xs[s * g.c_in * hw..][..g.c_in * hw];
        // the sums and products bound: compiled for the CPU's vectors (the same values)
        isa::vectorised(
            #[inline(always)]
            || {
                for gi in 0..g.groups {
                    let dn_g = &self.dns[(s * g.groups + gi) * np..][..np];
                    t.fill(F::zero());
                    match self.plane {
                        GroupPlane::Taps(padded, taps) => {
                            padded.fill(pad, dn_g, g.wo, |v| v);
                            taps.add(t, (g.h, g.w), pad, padded.w, (1, 0));
                        }
                        GroupPlane::Col2im => col2im_rows(g, 1, |_| dn_g, t),
                    }
                    let chans = gi * g.cin_g * hw..(gi + 1) * g.cin_g * hw;
                    for (o, x_c) in out[chans.clone()]
                        .chunks_exact_mut(hw)
                        .zip(x_s[chans].chunks_exact(hw))
                    {
                        for ((o, &t), &x) in o.iter_mut().zip(t.iter()).zip(x_c) {
                            put(o, t * two * x);
                        }
                    }
                }
            },
        )
    }
}

/// `[g, c_in / g, k_h, k_w]`: the ONES kernel's dimensions (`c_in / g` is checked by
/// [`Geom::new`] afterwards; `g = 0` reaches it too).
fn ones_dims(c_in: usize, k_hw: (usize, usize), p: &Conv2dParams) -> [usize; 4] {
    [p.groups, c_in / p.groups.max(1), k_hw.0, k_hw.1]
}

/// A plane zero-padded by `(ph, pw)` to `h × w` (the padding stays zero: [`Padded::fill`]
/// writes only the interior).
#[derive(Clone, Copy)]
struct Padded {
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
}

impl Padded {
    /// `pad[(i + ph)·w + j + pw] = f(src[i·src_w + j])`; the rest of `pad` is left as it is.
    #[inline(always)]
    fn fill<F: Float>(&self, pad: &mut [F], src: &[F], src_w: usize, f: impl Fn(F) -> F) {
        for (i, row) in src.chunks_exact(src_w).enumerate() {
            let dst = &mut pad[(i + self.ph) * self.w + self.pw..][..src_w];
            dst.iter_mut().zip(row).for_each(|(d, &v)| *d = f(v));
        }
    }
}

/// The taps of a convolution: kernel size, stride and dilation.
#[derive(Clone, Copy)]
struct Taps {
    k: (usize, usize),
    s: (usize, usize),
    d: (usize, usize),
}

impl Taps {
    /// `out[o_h, o_w] += Σ_c src_c[o_h·s_h + k_i·d_h, o_w·s_w + k_j·d_w]` over the channels `c`
    /// and taps `(k_i, k_j)` in that order, for `out` `[ho, wo]` and `chans` planes `src_c` of
    /// rows of `src_w`, `plane` elements apart: blocks of up to 4 rows × 16, 8, 4 or 1
    /// positions, kept in registers over all the terms (each position's sum is a chain of
    /// dependent additions; a block's rows and vectors are independent chains).
    #[inline(always)]
    fn add<F: Float>(
        &self,
        out: &mut [F],
        (ho, wo): (usize, usize),
        src: &[F],
        src_w: usize,
        chans: (usize, usize),
    ) {
        let mut oh = 0;
        while oh < ho {
            let rows = if ho - oh >= 4 { 4 } else { 1 };
            let mut ow = 0;
            while ow < wo {
                let b = Block {
                    out,
                    wo,
                    at: (oh, ow),
                    src,
                    src_w,
                    chans,
                };
                ow += if self.is_3x3() {
                    self.dispatch::<3, F>(rows, wo - ow, b)
                } else {
                    self.dispatch::<0, F>(rows, wo - ow, b)
                };
            }
            oh += rows;
        }
    }

    /// A 3×3 kernel at column stride 1 without dilation: the taps' loops are unrolled.
    fn is_3x3(&self) -> bool {
        self.k == (3, 3) && self.s.1 == 1 && self.d == (1, 1)
    }

    /// The block for `rows` (4 or 1) rows and `left` positions left in the row; returns its
    /// positions. `K`: 3 for [`Taps::is_3x3`], 0 for any kernel.
    #[inline(always)]
    fn dispatch<const K: usize, F: Float>(
        &self,
        rows: usize,
        left: usize,
        b: Block<'_, F>,
    ) -> usize {
        match (rows, left) {
            (4, 16..) => self.add_block::<4, 16, K, F>(b),
            (4, 8..) => self.add_block::<4, 8, K, F>(b),
            (4, 4..) => self.add_block::<4, 4, K, F>(b),
            (4, _) => self.add_block::<4, 1, K, F>(b),
            (_, 16..) => self.add_block::<1, 16, K, F>(b),
            (_, 8..) => self.add_block::<1, 8, K, F>(b),
            (_, 4..) => self.add_block::<1, 4, K, F>(b),
            _ => self.add_block::<1, 1, K, F>(b),
        }
    }

    /// [`Taps::add`] for the `R × L` positions from `b.at`; returns `L`. `K` as in
    /// [`Taps::dispatch`].
    #[inline(always)]
    fn add_block<const R: usize, const L: usize, const K: usize, F: Float>(
        &self,
        b: Block<'_, F>,
    ) -> usize {
        let ((kh, kw), (sh, sw), (dh, dw)) = if K > 0 {
            ((K, K), (self.s.0, 1), (1, 1))
        } else {
            (self.k, self.s, self.d)
        };
        let Block {
            out,
            wo,
            at: (oh, ow),
            src,
            src_w,
            chans: (chans, plane),
        } = b;
        // every term of the block, bounds checked once here rather than per term
        let first = oh * sh * src_w + ow * sw;
        let last = (chans - 1) * plane
            + ((R - 1) * sh + (kh - 1) * dh) * src_w
            + (kw - 1) * dw
            + (L - 1) * sw;
        let src = &src[first..=first + last];
        let mut a = [[F::zero(); L]; R];
        for (r, a) in a.iter_mut().enumerate() {
            a.copy_from_slice(&out[(oh + r) * wo + ow..][..L]);
        }
        for c in 0..chans {
            for ki in 0..kh {
                for kj in 0..kw {
                    for (r, a) in a.iter_mut().enumerate() {
                        let o = c * plane + (r * sh + ki * dh) * src_w + kj * dw;
                        if sw == 1 {
                            // SAFETY: `o + L − 1 ≤ last`, the end of `src`.
                            let v = unsafe { src.get_unchecked(o..o + L) };
                            a.iter_mut().zip(v).for_each(|(a, &v)| *a = *a + v);
                        } else {
                            for (l, a) in a.iter_mut().enumerate() {
                                // SAFETY: `o + l·sw ≤ last`, the end of `src`.
                                *a = *a + unsafe { *src.get_unchecked(o + l * sw) };
                            }
                        }
                    }
                }
            }
        }
        for (r, a) in a.iter().enumerate() {
            out[(oh + r) * wo + ow..][..L].copy_from_slice(a);
        }
        L
    }
}

/// The operands of one block of [`Taps::add`]: the output `[.., wo]`, the block's first
/// position, the source planes and their row length, and `(channels, plane length)`.
struct Block<'a, F> {
    out: &'a mut [F],
    wo: usize,
    at: (usize, usize),
    src: &'a [F],
    src_w: usize,
    chans: (usize, usize),
}

#[cfg(test)]
mod tests {
    use super::super::geom::{FORCE_AVX2, NO_DIRECT};
    use super::super::tests::pool;
    use super::*;
    use crate::testutil::{bits, rand_array};

    /// `(n, c_in, (h, w), (k_h, k_w), stride, padding, dilation, groups)`: rows and columns
    /// that leave every block shape of `Taps::add` (4 and 1 rows; 16, 8, 4 and 1 positions),
    /// stride 1 and 2, padding 0 to 2, dilation, groups, a 1×1 and a non-square kernel.
    type Case = (
        usize,
        usize,
        (usize, usize),
        (usize, usize),
        usize,
        usize,
        usize,
        usize,
    );

    fn cases() -> Vec<Case> {
        vec![
            (3, 16, (9, 31), (3, 3), 1, 1, 1, 1),
            (2, 8, (6, 13), (3, 3), 1, 0, 1, 2),
            (2, 12, (11, 18), (3, 2), 1, 1, 1, 3),
            (1, 8, (10, 29), (5, 5), 1, 2, 1, 1),
            (2, 8, (9, 12), (3, 3), 1, 2, 2, 1),
            (2, 8, (9, 31), (3, 3), 2, 1, 1, 1),
            (2, 6, (7, 8), (1, 1), 2, 0, 1, 1),
            (2, 6, (7, 8), (1, 1), 1, 0, 1, 1),
            (1, 2, (5, 6), (3, 3), 1, 1, 1, 2),
        ]
    }

    fn params(&(_, _, _, _, s, p, d, g): &Case) -> Conv2dParams {
        Conv2dParams::new(s, p).with_dilation(d).with_groups(g)
    }

    /// Random values with exact zeros and negative zeros among them.
    fn values(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
        let mut a = rand_array::<f32, _, _>(shape, seed);
        for (i, v) in a.iter_mut().enumerate() {
            match i % 11 {
                3 => *v = 0.0,
                7 => *v = -0.0,
                _ => {}
            }
        }
        a
    }

    /// `f` with the direct kernels (AVX-512, or AVX2 with `avx2`) or, with `no_direct`,
    /// without them, on a pool of `threads`.
    fn run<T: Send>(
        threads: usize,
        (no_direct, avx2): (bool, bool),
        f: impl Fn() -> T + Send + Sync,
    ) -> T {
        pool(threads).install(|| {
            NO_DIRECT.with(|c| c.set(no_direct));
            FORCE_AVX2.with(|c| c.set(avx2));
            let out = f();
            NO_DIRECT.with(|c| c.set(false));
            FORCE_AVX2.with(|c| c.set(false));
            out
        })
    }

    const PATHS: [(bool, bool); 3] = [(false, false), (false, true), (true, false)];

    /// The sums are `conv2d(x ⊙ x, ONES)` bit for bit on every path, for 1, 2 and 4 threads.
    #[test]
    fn sums_are_the_convolutions_bits() {
        for (i, c) in cases().into_iter().enumerate() {
            let (n, ci, (h, w), k, ..) = c;
            let p = params(&c);
            let x = values((n, ci, h, w), 10 + i as u64);
            let ones = Array4::from_elem((p.groups, ci / p.groups, k.0, k.1), 1.0f32);
            for path in PATHS {
                let want = run(1, path, || {
                    let x2 = x.mapv(|v| v * v);
                    conv2d(x2.view(), ones.view(), None, &p, Par::Seq).unwrap()
                });
                for threads in [1, 2, 4] {
                    let got = run(threads, path, || {
                        patch_square_sums(x.view(), k, &p, Par::Rayon).unwrap()
                    });
                    assert_eq!(bits(&got), bits(&want), "{c:?} {path:?} threads={threads}");
                }
            }
        }
    }

    /// The input gradient is `conv2d_backward_input(dn, ONES)`, then `(d · 2) · x`, then the
    /// sum with the accumulated gradient (in standard or column-major layout), bit for bit on
    /// every path, for 1, 2 and 4 threads.
    #[test]
    fn input_gradient_is_the_convolutions_bits() {
        for (i, c) in cases().into_iter().enumerate() {
            let (n, ci, (h, w), k, ..) = c;
            let p = params(&c);
            let (ho, wo) = p.output_hw(h, w, k.0, k.1).unwrap();
            let x = values((n, ci, h, w), 20 + i as u64);
            let dn = values((n, p.groups, ho, wo), 30 + i as u64);
            let acc = values((n, ci, h, w), 40 + i as u64);
            let mut acc_f = Array4::<f32>::zeros(ndarray::ShapeBuilder::f((n, ci, h, w)));
            acc_f.assign(&acc);
            let ones = Array4::from_elem((p.groups, ci / p.groups, k.0, k.1), 1.0f32);
            for path in PATHS {
                let dx = run(1, path, || {
                    let t = conv2d_backward_input(dn.view(), ones.view(), (h, w), &p, Par::Seq);
                    let mut dx = t.unwrap();
                    dx.zip_mut_with(&x, |d, &x| *d = *d * 2.0 * x);
                    dx
                });
                let want = bits(&dx);
                let want_acc = bits(&(&acc + &dx));
                for threads in [1, 2, 4] {
                    let grad = |a: Option<&Array4<f32>>| {
                        let a = a.cloned();
                        run(threads, path, || {
                            let (dn, x) = (dn.view(), x.view());
                            patch_square_sums_backward(dn, x, k, &p, Par::Rayon, a.clone()).unwrap()
                        })
                    };
                    let at = format!("{c:?} {path:?} threads={threads}");
                    assert_eq!(bits(&grad(None)), want, "{at}");
                    assert_eq!(bits(&grad(Some(&acc))), want_acc, "{at}");
                    assert_eq!(bits(&grad(Some(&acc_f))), want_acc, "{at}");
                }
            }
        }
    }

    /// In f64 (GEMM + col2im, or the depthwise and 1×1 paths) the input gradient is the
    /// composition's too, for 1 and 2 threads, with and without an accumulated gradient.
    #[test]
    fn f64_input_gradient_is_the_convolutions_bits() {
        for (i, c) in cases().into_iter().enumerate() {
            let (n, ci, (h, w), k, ..) = c;
            let p = params(&c);
            let (ho, wo) = p.output_hw(h, w, k.0, k.1).unwrap();
            let x = values((n, ci, h, w), 50 + i as u64).mapv(f64::from);
            let dn = values((n, p.groups, ho, wo), 60 + i as u64).mapv(f64::from);
            let acc = values((n, ci, h, w), 70 + i as u64).mapv(f64::from);
            let ones = Array4::from_elem((p.groups, ci / p.groups, k.0, k.1), 1.0f64);
            let t = conv2d_backward_input(dn.view(), ones.view(), (h, w), &p, Par::Seq);
            let mut dx = t.unwrap();
            dx.zip_mut_with(&x, |d, &x| *d = *d * 2.0 * x);
            for threads in [1, 2] {
                let grad = |a: Option<Array4<f64>>| {
                    pool(threads).install(|| {
                        patch_square_sums_backward(dn.view(), x.view(), k, &p, Par::Rayon, a)
                            .unwrap()
                    })
                };
                let at = format!("{c:?} threads={threads}");
                assert_eq!(bits(&grad(None)), bits(&dx), "{at}");
                assert_eq!(bits(&grad(Some(acc.clone()))), bits(&(&acc + &dx)), "{at}");
            }
        }
    }

    /// Shapes that do not fit are refused with errors naming the op.
    #[test]
    fn bad_shapes_are_refused() {
        let p = Conv2dParams::new(1, 1);
        let x = Array4::<f32>::zeros((2, 4, 5, 5));
        let dn = Array4::<f32>::zeros((2, 1, 5, 5));
        let err = patch_square_sums(x.view(), (3, 3), &p.with_groups(3), Par::Seq);
        assert!(matches!(err, Err(TensorError::BadGroups { .. })), "{err:?}");
        let err = patch_square_sums(x.view(), (9, 9), &p, Par::Seq);
        assert!(
            matches!(
                err,
                Err(TensorError::KernelTooLarge {
                    op: "patch_square_sums",
                    ..
                })
            ),
            "{err:?}"
        );
        let bad_dn = Array4::<f32>::zeros((2, 1, 4, 5));
        let err = patch_square_sums_backward(bad_dn.view(), x.view(), (3, 3), &p, Par::Seq, None);
        assert!(
            matches!(err, Err(TensorError::ShapeMismatch { .. })),
            "{err:?}"
        );
        let bad_acc = Some(Array4::<f32>::zeros((2, 4, 5, 4)));
        let err = patch_square_sums_backward(dn.view(), x.view(), (3, 3), &p, Par::Seq, bad_acc);
        assert!(
            matches!(err, Err(TensorError::ShapeMismatch { .. })),
            "{err:?}"
        );
    }
}
