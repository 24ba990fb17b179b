//! A conv output divided by the norms of its input patches, `q = y / sqrt(conv2d(x ⊙ x, ONES) +
//! eps)` (HLA's input normalisation) as one op: the same values and gradients, bit for bit, as
//! the composition [`square`](super::square) → [`conv2d`](super::conv2d) with a ONES kernel →
//! [`add_scalar`](super::add_scalar) → [`sqrt`](super::sqrt) → [`div`](super::div) (group-wise,
//! through [`reshape`](super::reshape) for `1 < groups < c_out`), in fewer passes, in parallel
//! over samples, and keeping only the norms (`[n, groups, h_out, w_out]`) instead of `x ⊙ x`
//! and the patch sums.
//!
//! Bit identity holds by construction: the two reductions (the patch sums and their input
//! gradient) are [`hla_tensor::patch_square_sums`] and [`hla_tensor::patch_square_sums_backward`],
//! which give the bits of the convolution calls the composition makes (tested there) without
//! making them, and every other step applies the composed ops' per-element formulas in their
//! order (`(−dq·y) / (n·n)` summed over a group's channels as a fold from zero, `d / (2·n)`,
//! `d·2·x`, and the sum with another use's gradient of `x`).

use ndarray::{Array4, ArrayD, ArrayView4};
use rayon::prelude::*;

use crate::broadcast::PAR_MIN_LEN;
use crate::op::Op;
use crate::tape::Backprop;
use crate::views::{as4, grad4};
use crate::{AutogradError, Conv2dParams, Float, Par, Result, Tape, Var};

const OP: &str = "patch_normalize";

/// `q = y / sqrt(conv2d(x ⊙ x, ONES) + eps)` with `ONES` `[g, c_in/g, k_h, k_w]` and the conv
/// parameters `p` of the conv that made `y`: output channel `c` is divided by the norm of its
/// group, `⌊c / (c_out/g)⌋`. Gradients flow to both `y` and `x` (the quotient rule through the
/// norm).
///
/// # Shapes
/// `y`: `[n, c_out, h_out, w_out]`, `x`: `[n, c_in, h, w]` → `[n, c_out, h_out, w_out]`, where
/// `(h_out, w_out)` is the conv output size of `x` under `k_hw` and `p`.
/// # Errors
/// `BadShape` if `y` or `x` is not 4-D, or `groups` divides neither `c_in` nor `c_out`;
/// `ShapeMismatch` if `y` is not the conv output shape of `x`; conv errors otherwise.
pub fn patch_normalize<F: Float>(
    tape: &mut Tape<F>,
    y: Var,
    x: Var,
    k_hw: (usize, usize),
    p: &Conv2dParams,
    eps: F,
) -> Result<Var> {
    let par = tape.par();
    let (yv, xv) = (
        as4(OP, tape.checked(y, OP)?)?,
        as4(OP, tape.checked(x, OP)?)?,
    );
    let g = p.groups.max(1);
    let ((n, c_out, ho, wo), c_in) = (yv.dim(), xv.dim().1);
    // `%` rather than `is_multiple_of`: the workspace's rust-version is 1.80
    #[allow(clippy::manual_is_multiple_of)]
    if c_in % g != 0 || c_out % g != 0 {
        return Err(AutogradError::BadShape {
            op: OP,
            shape: yv.shape().to_vec(),
            expected: format!("groups {g} dividing c_out and c_in ({c_in})"),
        });
    }
    let xn = norms(xv, k_hw, p, eps, par)?;
    if xn.dim() != (n, g, ho, wo) {
        return Err(AutogradError::ShapeMismatch {
            op: OP,
            lhs: yv.shape().to_vec(),
            rhs: vec![xn.dim().0, c_out, xn.dim().2, xn.dim().3],
        });
    }
    let yv = yv.as_standard_layout();
    let q = hla_tensor::map_group_rows(
        yv.as_slice().expect("standard layout is contiguous"),
        xn.as_slice().expect("fresh array is contiguous"),
        (c_out / g, ho * wo),
        par,
        |q, n| q / n,
    );
    let q = ArrayD::from_shape_vec(yv.shape(), q).expect("one value per element of y");
    let p = *p;
    Ok(tape.push_op(q, &[y, x], || Op::PatchNormalize { y, x, xn, k_hw, p }))
}

/// `sqrt(conv2d(x ⊙ x, ONES) + eps)`, `[n, g, h_out, w_out]`: the composition's square and
/// convolution in one call (the sums of squares over every patch), then its `add_scalar` and
/// `sqrt` in one pass.
fn norms<F: Float>(
    x: ArrayView4<F>,
    k_hw: (usize, usize),
    p: &Conv2dParams,
    eps: F,
    par: Par,
) -> Result<Array4<F>> {
    let mut s = hla_tensor::patch_square_sums(x, k_hw, p, par)?;
    map_in_place(par, s.as_slice_mut().expect("contiguous"), |v| {
        *v = (*v + eps).sqrt()
    });
    Ok(s)
}

/// `f` on every element, in parallel from [`PAR_MIN_LEN`] elements when `par` allows it.
fn map_in_place<F: Float>(par: Par, xs: &mut [F], f: impl Fn(&mut F) + Sync + Send) {
    // square roots bound: compiled for the CPU's vectors (exact either way)
    let chunk = |c: &mut [F]| {
        hla_tensor::isa::vectorised(
            #[inline(always)]
            || c.iter_mut().for_each(&f),
        )
    };
    if par == Par::Rayon && xs.len() >= PAR_MIN_LEN {
        xs.par_chunks_mut(PAR_MIN_LEN / 4).for_each(chunk);
    } else {
        chunk(xs);
    }
}

/// `f(v, norm)` for every element of `full` `[n, g·cpg, pix]` with the norm of its group in
/// `norms` `[n, g, pix]` (`cpg` channels per group), samples in parallel when `par` allows it.
fn per_sample<F: Float>(
    par: Par,
    full: &mut [F],
    norms: &[F],
    (cpg, pix): (usize, usize),
    f: impl Fn(&mut F, F) + Sync + Send,
) {
    let row = |(r, vs): (usize, &mut [F])| {
        let ns = &norms[(r / cpg) * pix..][..pix];
        vs.iter_mut().zip(ns).for_each(|(v, &n)| f(v, n));
    };
    if pix == 0 {
        return;
    }
    if par == Par::Rayon && full.len() >= PAR_MIN_LEN {
        full.par_chunks_mut(pix).enumerate().for_each(row);
    } else {
        full.chunks_mut(pix).enumerate().for_each(row);
    }
}

/// `dy = dq / n`; `dx = 2·x ⊙ convᵀ(Σ_group (−dq ⊙ y) / n² / (2·n), ONES)`; both read `dq`
/// in one pass.
pub(crate) fn patch_normalize_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    (y, x): (Var, Var),
    xn: Array4<F>,
    k_hw: (usize, usize),
    p: &Conv2dParams,
    dq: ArrayD<F>,
) -> Result<()> {
    let par = bw.par;
    let mut dq = grad4(dq);
    let (n, c_out, ho, wo) = dq.dim();
    let g = xn.dim().1;
    let (cpg, pix) = (c_out / g, ho * wo);
    let two = F::one() + F::one();
    let ns = xn.as_slice().expect("fresh array is contiguous");
    let needs_y = bw.needs(y);
    if bw.needs(x) {
        let ys = bw.value(y).as_slice().expect("tape values are contiguous");
        // d(loss)/d(norm) per group, then through the square root: the division's
        // `(−dq·y) / (n·n)`, summed over the group's channels from zero as `sum_axis` folds
        // (one channel per group: no sum, as the composition broadcasts nothing), then `d / (2·n)`;
        // in the same pass, `dq / n` in place when `y` needs its gradient
        let mut dn = Array4::<F>::zeros((n, g, ho, wo));
        let per = g * pix;
        // divisions bound: compiled for the CPU's vectors (the quotients are exact either way)
        let sample = |(s, (dn_s, dq_s)): (usize, (&mut [F], &mut [F]))| {
            hla_tensor::isa::vectorised(
                #[inline(always)]
                || {
                    for gi in 0..g {
                        let acc = &mut dn_s[gi * pix..][..pix];
                        let nrm = &ns[(s * g + gi) * pix..][..pix];
                        for c in gi * cpg..(gi + 1) * cpg {
                            let (d, a) = (
                                &mut dq_s[c * pix..][..pix],
                                &ys[(s * c_out + c) * pix..][..pix],
                            );
                            // `needs_y` outside the loop: inside, the conditional division
                            // compiled to a masked store (slow on AMD's Zen 2/3)
                            match needs_y {
                                true => fold_norm_grad::<F, true>(acc, d, a, nrm, cpg == 1),
                                false => fold_norm_grad::<F, false>(acc, d, a, nrm, cpg == 1),
                            }
                        }
                        for (t, &b) in acc.iter_mut().zip(nrm) {
                            *t = *t / (two * b);
                        }
                    }
                },
            )
        };
        let dns = dn.as_slice_mut().expect("fresh array is contiguous");
        let dqs = dq.as_slice_mut().expect("fresh array is contiguous");
        if per > 0 {
            if par == Par::Rayon && n * c_out * pix >= PAR_MIN_LEN {
                dns.par_chunks_mut(per)
                    .zip(dqs.par_chunks_mut(c_out * pix))
                    .enumerate()
                    .for_each(sample);
            } else {
                dns.chunks_mut(per)
                    .zip(dqs.chunks_mut(c_out * pix))
                    .enumerate()
                    .for_each(sample);
            }
        }
        // the composition's `(convᵀ(dn, ONES)·2)·x`, added into another use's gradient of `x`
        // in place
        let acc = bw.take_grad(x).map(grad4);
        let xv = as4(OP, bw.value(x))?;
        let dx = hla_tensor::patch_square_sums_backward(dn.view(), xv, k_hw, p, par, acc)?;
        bw.add(x, dx.into_dyn());
    }
    if needs_y {
        if !bw.needs(x) {
            let dqs = dq.as_slice_mut().expect("fresh array is contiguous");
            per_sample(par, dqs, ns, (cpg, pix), |d, n| *d = *d / n);
        }
        bw.add(y, dq.into_dyn());
    }
    Ok(())
}

/// One channel's terms of the norm's gradient: `acc ← (−dq·y) / (n·n)` (`first`) or
/// `acc + (−dq·y) / (n·n)`, and with `DIV` also `dq ← dq / n` in the same pass.
#[inline(always)]
fn fold_norm_grad<F: Float, const DIV: bool>(
    acc: &mut [F],
    dq: &mut [F],
    y: &[F],
    norms: &[F],
    first: bool,
) {
    for (((t, d), &a), &b) in acc.iter_mut().zip(dq).zip(y).zip(norms) {
        let v = (-*d * a) / (b * b);
        *t = if first { v } else { *t + v };
        if DIV {
            *d = *d / b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::ops;
    use crate::testutil::uniform;

    /// `(x shape, c_out, kernel, params)`: stride 1 and 2, padding, dilation, groups 1 / 2 /
    /// c_in (depthwise, with a channel multiplier), a 1×1 kernel, a non-square kernel.
    type Case = (Vec<usize>, usize, (usize, usize), Conv2dParams);

    fn cases() -> Vec<Case> {
        vec![
            (vec![2, 4, 6, 5], 3, (3, 3), Conv2dParams::new(1, 1)),
            (vec![2, 4, 7, 6], 6, (3, 3), Conv2dParams::new(2, 1)),
            (
                vec![2, 4, 5, 5],
                6,
                (3, 2),
                Conv2dParams::new(1, 0).with_groups(2),
            ),
            (
                vec![2, 4, 6, 6],
                8,
                (3, 3),
                Conv2dParams::new(2, 1).with_groups(4),
            ),
            (
                vec![2, 4, 6, 6],
                4,
                (3, 3),
                Conv2dParams::new(1, 1).with_groups(4),
            ),
            (
                vec![1, 3, 7, 7],
                2,
                (3, 3),
                Conv2dParams::new(1, 2).with_dilation(2),
            ),
            (vec![2, 5, 4, 4], 3, (1, 1), Conv2dParams::new(1, 0)),
            (vec![2, 5, 5, 4], 3, (1, 1), Conv2dParams::new(2, 0)),
        ]
    }

    /// The composition this op replaces (square, ONES conv, + eps, sqrt, group-wise division).
    pub(crate) fn composed<F: Float>(
        t: &mut Tape<F>,
        y: Var,
        x: Var,
        k_hw: (usize, usize),
        p: &Conv2dParams,
        eps: F,
    ) -> Result<Var> {
        let xs = t.shape(x).to_vec();
        let g = p.groups;
        let ones = t.constant(ArrayD::from_elem(
            vec![g, xs[1] / g, k_hw.0, k_hw.1],
            F::one(),
        ));
        let x2 = ops::square(t, x)?;
        let s = ops::conv2d(t, x2, ones, None, p)?;
        let s = ops::add_scalar(t, s, eps)?;
        let xn = ops::sqrt(t, s)?;
        let ys = t.shape(y).to_vec();
        let (n, c, ho, wo) = (ys[0], ys[1], ys[2], ys[3]);
        if g == 1 || g == c {
            return ops::div(t, y, xn);
        }
        let y5 = ops::reshape(t, y, &[n, g, c / g, ho, wo])?;
        let x5 = ops::reshape(t, xn, &[n, g, 1, ho, wo])?;
        let q = ops::div(t, y5, x5)?;
        ops::reshape(t, q, &[n, c, ho, wo])
    }

    fn y_shape(xs: &[usize], c_out: usize, k: (usize, usize), p: &Conv2dParams) -> Vec<usize> {
        let ho = (xs[2] + 2 * p.padding.0 - p.dilation.0 * (k.0 - 1) - 1) / p.stride.0 + 1;
        let wo = (xs[3] + 2 * p.padding.1 - p.dilation.1 * (k.1 - 1) - 1) / p.stride.1 + 1;
        vec![xs[0], c_out, ho, wo]
    }

    #[test]
    fn gradcheck_patch_normalize() {
        for (i, (xs, c_out, k, p)) in cases().into_iter().enumerate() {
            let ys = y_shape(&xs, c_out, k, &p);
            let inputs = [uniform(&ys, 30 + i as u64), uniform(&xs, 40 + i as u64)];
            check(
                |t, v| patch_normalize(t, v[0], v[1], k, &p, 1e-3),
                &inputs,
                50,
            )
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        }
    }

    /// Values and both gradients equal the composed ops' bit for bit (f32), with `x` also
    /// feeding the conv that makes `y` and a second consumer (its gradients accumulate in the
    /// same order), for `Par::Seq` and 1, 2 and 4 threads, at sizes above the parallel
    /// threshold; and `y` alone needing a gradient (an image input).
    #[test]
    fn same_bits_as_the_composition() {
        let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let mut cases = cases();
        cases.push((vec![8, 16, 32, 32], 16, (3, 3), Conv2dParams::new(1, 1)));
        cases.push((vec![8, 16, 32, 32], 32, (3, 3), Conv2dParams::new(2, 1)));
        cases.push((
            vec![4, 24, 16, 16],
            24,
            (3, 3),
            Conv2dParams::new(2, 1).with_groups(24),
        ));
        for (i, (xs, c_out, k, p)) in cases.into_iter().enumerate() {
            let x0 = uniform(&xs, 60 + i as u64).mapv(|v| v as f32);
            let wsh = [c_out, xs[1] / p.groups, k.0, k.1];
            let w0 = uniform(&wsh, 70 + i as u64).mapv(|v| v as f32);
            let run = |fused: bool, par: Par, x_grad: bool| {
                let mut t = Tape::<f32>::new();
                t.set_par(par);
                let x = if x_grad {
                    t.leaf(x0.clone())
                } else {
                    t.constant(x0.clone())
                };
                let w = t.leaf(w0.clone());
                let y = ops::conv2d(&mut t, x, w, None, &p).unwrap();
                let q = if fused {
                    patch_normalize(&mut t, y, x, k, &p, 1e-4).unwrap()
                } else {
                    composed(&mut t, y, x, k, &p, 1e-4).unwrap()
                };
                let qs = ops::sum_all(&mut t, q).unwrap();
                let xs = ops::mul_scalar(&mut t, x, 0.25).unwrap();
                let xs = ops::sum_all(&mut t, xs).unwrap();
                let sq = ops::square(&mut t, q).unwrap();
                let sq = ops::sum_all(&mut t, sq).unwrap();
                let l = ops::add(&mut t, qs, sq).unwrap();
                let l = ops::add(&mut t, l, xs).unwrap();
                let value = t.value(q).clone();
                let g = t.backward(l).unwrap();
                let gx = g.get(x).cloned();
                (bits(&value), gx.map(|g| bits(&g)), bits(g.get(w).unwrap()))
            };
            for x_grad in [true, false] {
                let want = run(false, Par::Seq, x_grad);
                assert_eq!(want.1.is_some(), x_grad);
                assert_eq!(run(true, Par::Seq, x_grad), want, "case {i}, sequential");
                for threads in [1, 2, 4] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let got = pool.install(|| run(true, Par::Rayon, x_grad));
                    assert_eq!(got, want, "case {i}, {threads} threads");
                }
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_errors_naming_the_op() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(uniform(&[2, 4, 6, 6], 1));
        let p = Conv2dParams::new(1, 1);
        for ys in [vec![2, 3, 5, 6], vec![1, 3, 6, 6], vec![2, 3, 6]] {
            let y = t.leaf(uniform(&ys, 2));
            let e = patch_normalize(&mut t, y, x, (3, 3), &p, 1e-4).unwrap_err();
            assert!(e.to_string().contains(OP), "{ys:?}: {e}");
        }
        let y = t.leaf(uniform(&[2, 3, 6, 6], 3));
        let e = patch_normalize(&mut t, y, x, (3, 3), &p.with_groups(3), 1e-4).unwrap_err();
        assert!(matches!(e, AutogradError::BadShape { op: OP, .. }), "{e}");
    }
}
