//! Hyperspherical layer forward (Eq. 3, spec 3.2) composed from autograd ops.
//!
//! Input normalisation: the norm of every receptive-field patch at once,
//! `xnorm = sqrt(conv2d(x ⊙ x, ONES) + eps_x)` with the layer's stride, padding, dilation and
//! groups (ONES `[g, c_in/g, k_h, k_w]`, so xnorm is `[n, g, h_out, w_out]`), and
//! `y = conv2d(x, W) / xnorm` where output channel c uses xnorm channel ⌊c / (c_out/g)⌋.
//! For a linear layer `xnorm = sqrt(Σ_i x_i² + eps_x)` per sample. Everything is built from tape
//! ops, so the gradient flows through xnorm too (quotient rule) and is gradient-checked below;
//! the conv layer's norm and division run as one of them, `ops::patch_normalize`, whose values
//! and gradients equal [`patch_norm`] then [`divide_by_patch_norm`] bit for bit.
//!
//! Guide: [Eq. 3](crate::guide#eq-3).

use crate::real::cst;
use hla_autograd::{ops, AutogradError, Conv2dParams, Float, Result, Tape, Var};
use ndarray::ArrayD;

/// `sqrt(conv2d(x², ONES) + eps_x)`: patch norms.
///
/// Guide: [Eq. 3](crate::guide#eq-3).
///
/// # Shapes
/// `x`: `[n, c_in, h, w]`, kernel `(k_h, k_w)` → `[n, groups, h_out, w_out]`.
/// # Errors
/// `BadShape` if `x` is not 4-D or `groups ∤ c_in`; conv errors otherwise.
pub fn patch_norm<F: Float>(
    tape: &mut Tape<F>,
    x: Var,
    k_hw: (usize, usize),
    p: &Conv2dParams,
    eps_x: f64,
) -> Result<Var> {
    let shape = tape.shape(x).to_vec();
    let g = p.groups.max(1);
    // `%` rather than `is_multiple_of`: the workspace's rust-version is 1.80
    #[allow(clippy::manual_is_multiple_of)]
    let bad = shape.len() != 4 || shape[1] % g != 0;
    if bad {
        return Err(AutogradError::BadShape {
            op: "patch_norm",
            shape,
            expected: format!("[n, c_in, h, w] with groups {g} dividing c_in"),
        });
    }
    let ones = tape.constant(ArrayD::from_elem(
        vec![g, shape[1] / g, k_hw.0, k_hw.1],
        F::one(),
    ));
    let x2 = ops::square(tape, x)?;
    let s = ops::conv2d(tape, x2, ones, None, p)?; // [n, g, h_out, w_out]
    let s = ops::add_scalar(tape, s, cst::<F>(eps_x))?;
    ops::sqrt(tape, s)
}

/// Divides a conv output `y` `[n, c_out, h_out, w_out]` by patch norms `xn` `[n, g, h_out, w_out]`
/// group-wise (output channel c ↔ xnorm channel ⌊c/(c_out/g)⌋).
///
/// Guide: [Eq. 3](crate::guide#eq-3).
///
/// # Errors
/// `BadShape` if `g ∤ c_out`.
pub fn divide_by_patch_norm<F: Float>(tape: &mut Tape<F>, y: Var, xn: Var) -> Result<Var> {
    let ys = tape.shape(y).to_vec();
    let xs = tape.shape(xn).to_vec();
    let (n, c_out, ho, wo) = (ys[0], ys[1], ys[2], ys[3]);
    let g = xs[1];
    if g == 1 || g == c_out {
        return ops::div(tape, y, xn);
    }
    if c_out % g != 0 {
        return Err(AutogradError::BadShape {
            op: "divide_by_patch_norm",
            shape: ys,
            expected: format!("c_out divisible by groups {g}"),
        });
    }
    let y5 = ops::reshape(tape, y, &[n, g, c_out / g, ho, wo])?;
    let x5 = ops::reshape(tape, xn, &[n, g, 1, ho, wo])?;
    let q = ops::div(tape, y5, x5)?;
    ops::reshape(tape, q, &[n, c_out, ho, wo])
}

/// Hyperspherical conv: `conv2d(x, w) / sqrt(conv2d(x², ONES) + eps_x)`; `w` is already the
/// normalised (stage 1) or ternary (stage 2) weight.
///
/// Guide: [Eq. 3](crate::guide#eq-3).
///
/// # Shapes
/// `x`: `[n, c_in, h, w]`, `w`: `[c_out, c_in/groups, k_h, k_w]` → `[n, c_out, h_out, w_out]`.
/// # Errors
/// Conv / shape errors.
pub fn normalized_conv2d<F: Float>(
    tape: &mut Tape<F>,
    x: Var,
    w: Var,
    p: &Conv2dParams,
    eps_x: f64,
) -> Result<Var> {
    let ws = tape.shape(w).to_vec();
    if ws.len() != 4 {
        return Err(AutogradError::BadShape {
            op: "normalized_conv2d",
            shape: ws,
            expected: "[c_out, c_in/groups, k_h, k_w]".into(),
        });
    }
    let y = ops::conv2d(tape, x, w, None, p)?;
    // one op with the same bits as `divide_by_patch_norm(y, patch_norm(x))` (tested there)
    ops::patch_normalize(tape, y, x, (ws[2], ws[3]), p, cst::<F>(eps_x))
}

/// Hyperspherical linear: `(x·wᵀ) / sqrt(Σ_i x_i² + eps_x) + b`.
///
/// Guide: [Eq. 3](crate::guide#eq-3).
///
/// # Shapes
/// `x`: `[n, in]`, `w`: `[out, in]`, `b`: `[out]` → `[n, out]`.
/// # Errors
/// Shape errors of the underlying ops.
pub fn normalized_linear<F: Float>(
    tape: &mut Tape<F>,
    x: Var,
    w: Var,
    b: Option<Var>,
    eps_x: f64,
) -> Result<Var> {
    let y = ops::linear(tape, x, w, None)?;
    let x2 = ops::square(tape, x)?;
    let s = ops::sum(tape, x2, &[1], true)?; // [n, 1]
    let s = ops::add_scalar(tape, s, cst::<F>(eps_x))?;
    let xn = ops::sqrt(tape, s)?;
    let y = ops::div(tape, y, xn)?;
    match b {
        Some(b) => ops::add(tape, y, b),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::assert_close;
    use hla_autograd::gradcheck;
    use rand::{Rng, SeedableRng};

    /// T9: one 3×3 input, unit 2×2 kernel, stride 1, no padding.
    #[test]
    fn t9_patch_normalised_conv() {
        let x = ArrayD::from_shape_vec(
            vec![1, 1, 3, 3],
            vec![1.0, 2.0, 0.0, 0.0, 1.0, -1.0, 2.0, 0.0, 1.0],
        )
        .unwrap();
        let w = ArrayD::from_shape_vec(vec![1, 1, 2, 2], vec![0.5, -0.5, 0.5, 0.5]).unwrap();
        let p = Conv2dParams::new(1, 0);
        for (eps, want) in [
            (1e-4, [0.0, 0.40824489, 0.22360456, 0.86601097]),
            (0.0, [0.0, 0.40824829, 0.22360680, 0.86602540]),
        ] {
            let mut tape = Tape::<f64>::new();
            let xv = tape.constant(x.clone());
            let wv = tape.constant(w.clone());
            let xn = patch_norm(&mut tape, xv, (2, 2), &p, 0.0).unwrap();
            assert_close(
                tape.value(xn).mapv(|v| v * v).iter(),
                [6.0, 6.0, 5.0, 3.0].iter(),
                1e-12,
            );
            let y = normalized_conv2d(&mut tape, xv, wv, &p, eps).unwrap();
            assert_close(tape.value(y).iter(), want.iter(), 1e-8);
        }
    }

    fn rnd(shape: &[usize], seed: u64) -> ArrayD<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        ArrayD::from_shape_fn(shape.to_vec(), |_| rng.random_range(-1.0..1.0))
    }

    /// Gradcheck (f64) of the normalised conv w.r.t. x and w: odd shapes, stride 2, padding 1,
    /// groups 1 / 2 / c_in (depthwise, with channel multiplier 2 for c_out = 2·c_in).
    #[test]
    fn gradcheck_normalized_conv2d_groups() {
        for (g, c_out, seed) in [(1usize, 3usize, 1u64), (2, 4, 2), (4, 4, 3), (4, 8, 4)] {
            let c_in = 4;
            let x = rnd(&[2, c_in, 5, 4], seed);
            let w = rnd(&[c_out, c_in / g, 3, 3], seed + 10);
            let p = Conv2dParams::new(2, 1).with_groups(g);
            gradcheck::check(
                |t, v| normalized_conv2d(t, v[0], v[1], &p, 1e-4),
                &[x, w],
                seed,
            )
            .unwrap_or_else(|e| panic!("groups {g}, c_out {c_out}: {e}"));
        }
    }

    /// Gradcheck (f64) of the normalised linear layer and of weight normalisation feeding it.
    #[test]
    fn gradcheck_normalized_linear_with_weight_norm() {
        let x = rnd(&[3, 5], 7);
        let v = rnd(&[2, 5], 8);
        let b = rnd(&[2], 9);
        gradcheck::check(
            |t, a| {
                let w = ops::normalize_rows(t, a[1], 1e-12)?;
                normalized_linear(t, a[0], w, Some(a[2]), 1e-4)
            },
            &[x, v, b],
            5,
        )
        .unwrap();
    }
}
