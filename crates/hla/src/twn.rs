//! TWN — Ternary Weight Networks (Li, Zhang and Liu 2016), spec section 11.1, per tensor.
//!
//! `Δ = f·mean|W|` (f = 0.7), `I_Δ = {i : |W_i| > Δ}`, `α = mean_{I_Δ} |W_i|`,
//! `Ŵ_i = α·sign(W_i)` on I_Δ else 0; backward is the identity STE (Δ, α are statistics).
//! Guard: |I_Δ| = 0 → Ŵ = 0, α = 0.
//!
//! Guide: [TWN](crate::guide#twn).

use crate::real::{cst, Real};
use ndarray::{ArrayD, ArrayViewD};

/// Result of TWN's forward on one tensor.
///
/// Guide: [TWN](crate::guide#twn).
#[derive(Clone, Debug, PartialEq)]
pub struct TwnQuant<F> {
    /// Δ = f·mean|W|.
    pub delta: F,
    /// α = mean |W| over I_Δ (0 if empty).
    pub alpha: F,
    /// Ŵ, same shape as W.
    pub what: ArrayD<F>,
    /// |I_Δ|.
    pub count: usize,
}

/// TWN forward with threshold factor `factor` (0.7 by default). Sums run in index order.
///
/// Guide: [TWN](crate::guide#twn).
pub fn twn_quantize<F: Real>(w: ArrayViewD<'_, F>, factor: F) -> TwnQuant<F> {
    let n = w.len();
    let mut s = F::zero();
    for &v in w.iter() {
        s = s + v.abs();
    }
    let mean = if n == 0 {
        F::zero()
    } else {
        s / cst::<F>(n as f64)
    };
    let delta = factor * mean;
    let mut sa = F::zero();
    let mut count = 0usize;
    for &v in w.iter() {
        if v.abs() > delta {
            sa = sa + v.abs();
            count += 1;
        }
    }
    let alpha = if count == 0 {
        F::zero()
    } else {
        sa / cst::<F>(count as f64)
    };
    let what = w.mapv(|v| {
        if v.abs() > delta {
            if v > F::zero() {
                alpha
            } else {
                -alpha
            }
        } else {
            F::zero()
        }
    });
    TwnQuant {
        delta,
        alpha,
        what,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::assert_close;

    /// T10: Δ = 0.29225, α = 0.6, Ŵ as in the spec.
    #[test]
    fn t10_twn_values() {
        let w = ArrayD::from_shape_vec(vec![8], vec![0.9, -0.1, 0.3, -0.5, 0.04, 0.6, -0.7, 0.2])
            .unwrap();
        let q = twn_quantize(w.view(), 0.7f64);
        assert!((q.delta - 0.29225).abs() < 1e-15);
        assert!((q.alpha - 0.6).abs() < 1e-15);
        assert_eq!(q.count, 5);
        assert_close(
            q.what.iter(),
            [0.6, 0.0, 0.6, -0.6, 0.0, 0.6, -0.6, 0.0].iter(),
            1e-15,
        );
        let z = ArrayD::<f64>::zeros(vec![3]);
        assert_eq!(twn_quantize(z.view(), 0.7).what, z);
    }
}
