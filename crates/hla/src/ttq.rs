//! TTQ — Trained Ternary Quantization (Zhu, Han, Mao and Dally 2016), spec section 11.2, per tensor.
//!
//! `Δ = t·max|W|` (t = 0.05); Ŵ = +W^p on I^p (W > Δ), 0 on I^z, −W^n on I^n (W < −Δ).
//! Gradients with G = ∂L/∂Ŵ: `∂W^p = Σ_{I^p} G`, `∂W^n = −Σ_{I^n} G` (chain rule; `literal`: +),
//! `∂W_i = W^p·G_i` (I^p), `G_i` (I^z), `W^n·G_i` (I^n), optionally × 1/max|W| (A27).
//!
//! Guide: [TTQ](crate::guide#ttq).

use crate::config::{TtqScaleInit, TtqWnGrad};
use crate::real::{cst, Real};
use ndarray::{ArrayD, ArrayViewD, Zip};

/// Region of one weight under TTQ's threshold.
fn region<F: Real>(v: F, delta: F) -> i8 {
    if v > delta {
        1
    } else if v < -delta {
        -1
    } else {
        0
    }
}

/// max|W| over the tensor (0 for an empty tensor).
///
/// Guide: [TTQ](crate::guide#ttq).
pub fn max_abs<F: Real>(w: ArrayViewD<'_, F>) -> F {
    w.iter().fold(F::zero(), |m, &v| m.max(v.abs()))
}

/// TTQ forward: (Ŵ, Δ). `wp`, `wn` are the positive and negative scales (both ≥ 0).
///
/// Guide: [TTQ](crate::guide#ttq).
pub fn ttq_forward<F: Real>(w: ArrayViewD<'_, F>, wp: F, wn: F, t: F) -> (ArrayD<F>, F) {
    let delta = t * max_abs(w.view());
    let what = w.mapv(|v| match region(v, delta) {
        1 => wp,
        -1 => -wn,
        _ => F::zero(),
    });
    (what, delta)
}

/// Gradients of TTQ: (∂L/∂W, ∂L/∂W^p, ∂L/∂W^n) given `g` = ∂L/∂Ŵ (same shape as `w`).
///
/// Guide: [TTQ](crate::guide#ttq).
pub fn ttq_backward<F: Real>(
    w: ArrayViewD<'_, F>,
    g: ArrayViewD<'_, F>,
    wp: F,
    wn: F,
    t: F,
    wn_grad: TtqWnGrad,
    grad_div_max: bool,
) -> (ArrayD<F>, F, F) {
    let mx = max_abs(w.view());
    let delta = t * mx;
    let scale = if grad_div_max && mx > F::zero() {
        F::one() / mx
    } else {
        F::one()
    };
    let mut dw = ArrayD::zeros(w.shape());
    let (mut dp, mut dn) = (F::zero(), F::zero());
    // sums in index order (the Zip visits both standard-layout arrays in logical order)
    Zip::from(&mut dw).and(&w).and(&g).for_each(|d, &v, &gi| {
        let r = region(v, delta);
        *d = scale
            * gi
            * match r {
                1 => wp,
                -1 => wn,
                _ => F::one(),
            };
        match r {
            1 => dp = dp + gi,
            -1 => dn = dn + gi,
            _ => {}
        }
    });
    let dn = match wn_grad {
        TtqWnGrad::ChainRule => -dn,
        TtqWnGrad::Literal => dn,
    };
    (dw, dp, dn)
}

/// Initial (W^p, W^n) under `ttq_scale_init` (A27): 1, or mean|W|/max|W| over I^p and I^n
/// (falling back to 1 for an empty region).
///
/// Guide: [TTQ](crate::guide#ttq).
pub fn ttq_init_scales<F: Real>(w: ArrayViewD<'_, F>, t: F, init: TtqScaleInit) -> (F, F) {
    match init {
        TtqScaleInit::One => (F::one(), F::one()),
        TtqScaleInit::TwnAlpha => {
            let mx = max_abs(w.view());
            let delta = t * mx;
            let (mut sp, mut np, mut sn, mut nn) = (F::zero(), 0usize, F::zero(), 0usize);
            for &v in w.iter() {
                match region(v, delta) {
                    1 => {
                        sp = sp + v;
                        np += 1
                    }
                    -1 => {
                        sn = sn - v;
                        nn += 1
                    }
                    _ => {}
                }
            }
            let f = |s: F, n: usize| {
                if n == 0 || mx == F::zero() {
                    F::one()
                } else {
                    s / cst::<F>(n as f64) / mx
                }
            };
            (f(sp, np), f(sn, nn))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::assert_close;

    fn w() -> ArrayD<f64> {
        ArrayD::from_shape_vec(vec![8], vec![0.9, -0.1, 0.3, -0.5, 0.04, 0.6, -0.7, 0.2]).unwrap()
    }

    /// T11: Δ = 0.045, Ŵ, ∂W^p = −1.0, ∂W^n = −0.1 (literal +0.1), ∂W.
    #[test]
    fn t11_ttq_values() {
        let w = w();
        let g = ArrayD::from_shape_vec(vec![8], vec![0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8])
            .unwrap();
        let (what, delta) = ttq_forward(w.view(), 1.2, 0.8, 0.05);
        assert!((delta - 0.045).abs() < 1e-15);
        assert_eq!(
            what.iter().copied().collect::<Vec<_>>(),
            vec![1.2, -0.8, 1.2, -0.8, 0.0, 1.2, -0.8, 1.2]
        );
        let (dw, dp, dn) = ttq_backward(
            w.view(),
            g.view(),
            1.2,
            0.8,
            0.05,
            TtqWnGrad::ChainRule,
            false,
        );
        assert!((dp + 1.0).abs() < 1e-15);
        assert!((dn + 0.1).abs() < 1e-15);
        assert_close(
            dw.iter(),
            [0.12, -0.16, 0.36, -0.32, 0.5, -0.72, 0.56, -0.96].iter(),
            1e-15,
        );
        let (_, _, dn) = ttq_backward(
            w.view(),
            g.view(),
            1.2,
            0.8,
            0.05,
            TtqWnGrad::Literal,
            false,
        );
        assert!((dn - 0.1).abs() < 1e-15);
        let (dw2, _, _) = ttq_backward(
            w.view(),
            g.view(),
            1.2,
            0.8,
            0.05,
            TtqWnGrad::ChainRule,
            true,
        );
        assert_close(dw2.iter(), dw.mapv(|x| x / 0.9).iter(), 1e-15);
    }

    #[test]
    fn ttq_scale_init_variants() {
        let w = w();
        assert_eq!(
            ttq_init_scales(w.view(), 0.05, TtqScaleInit::One),
            (1.0, 1.0)
        );
        let (p, n) = ttq_init_scales(w.view(), 0.05, TtqScaleInit::TwnAlpha);
        assert!((p - (2.0 / 4.0) / 0.9).abs() < 1e-15);
        assert!((n - (1.3 / 3.0) / 0.9).abs() < 1e-15);
    }
}
