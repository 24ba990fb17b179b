//! The gradient of the learnable threshold Δ̄ (Eq. 13) with the A14 variants.
//!
//! Default: `∂J/∂Δ̄_l = (1/(m·n)) Σ_{ŵ_ij ≠ 0} G_ij·S_ij` with G = ∂L_CE/∂Ŵ_l (the gradient that
//! reaches the ternary op from the network; L_d's direct term does not pass through it).
//!
//! Guide: [Eq. 13](crate::guide#eq-13).

use crate::config::{DeltaGradMask, DeltaGradNorm, DeltaGradSign, DeltaGradSource, SteScale};
use crate::real::{cst, Real};
use ndarray::ArrayView2;

/// The A14 knobs of Δ̄'s gradient plus the STE scaling (which defines "post-S").
///
/// Guide: [Eq. 13](crate::guide#eq-13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeltaGradKnobs {
    /// Pre- or post-S gradient.
    pub source: DeltaGradSource,
    /// Masked (ŵ ≠ 0) or all entries.
    pub mask: DeltaGradMask,
    /// Divide by m·n or by the masked count.
    pub norm: DeltaGradNorm,
    /// Signed sum or −Σ|g|.
    pub sign: DeltaGradSign,
    /// STE scaling; with `identity`, post-S equals pre-S.
    pub ste_scale: SteScale,
}

impl DeltaGradKnobs {
    /// The knobs of a configuration.
    ///
    /// Guide: [Eq. 13](crate::guide#eq-13).
    pub fn from_config(c: &crate::config::HlaConfig) -> Self {
        Self {
            source: c.delta_grad_source,
            mask: c.delta_grad_mask,
            norm: c.delta_grad_norm,
            sign: c.delta_grad_sign,
            ste_scale: c.ste_scale,
        }
    }
}

/// ∂J/∂Δ̄ of one layer. `g` = ∂L/∂Ŵ, `w` = normalised W, `what` = Ŵ; all `[n, m]`.
///
/// Guide: [Eq. 13](crate::guide#eq-13).
pub fn delta_bar_grad<F: Real>(
    g: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    what: ArrayView2<'_, F>,
    k: DeltaGradKnobs,
) -> F {
    let mut sum = F::zero();
    let mut count = 0usize;
    for ((&gij, &wij), &qij) in g.iter().zip(w.iter()).zip(what.iter()) {
        if k.mask == DeltaGradMask::Nonzero && qij == F::zero() {
            continue;
        }
        let s = match (k.source, k.ste_scale) {
            (DeltaGradSource::PostS, SteScale::OneMinusW2) => F::one() - wij * wij,
            _ => F::one(),
        };
        let v = gij * s;
        sum = sum
            + match k.sign {
                DeltaGradSign::Signed => v,
                DeltaGradSign::NegAbs => v.abs(),
            };
        count += 1;
    }
    let denom = match k.norm {
        DeltaGradNorm::Numel => g.len(),
        DeltaGradNorm::Count => count,
    };
    if denom == 0 {
        return F::zero();
    }
    let mean = sum / cst::<F>(denom as f64);
    match k.sign {
        DeltaGradSign::Signed => mean,
        DeltaGradSign::NegAbs => -mean,
    }
}

/// One plain SGD step (no momentum) with the clamp Δ̄ ≥ 0 (spec 8.5); used by tests and as the
/// reference for the optimiser path.
///
/// Guide: [Alg. 1 line 20](crate::guide#alg1-line-20).
pub fn sgd_step_clamped<F: Real>(delta_bar: F, grad: F, lr: F) -> F {
    (delta_bar - lr * grad).max(F::zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EmptyRow;
    use crate::ternary::ternarize_rows;
    use crate::testutil::t1_w;
    use ndarray::{array, Array2};

    /// T8: every row of the variant table, the SGD step and the clamp.
    #[test]
    fn t8_delta_bar_gradient_variants() {
        let w: Array2<f64> = t1_w().into_dimensionality().unwrap();
        let wh = ternarize_rows(w.view(), 0.3, EmptyRow::Zero).dequantize();
        let g = array![[0.1, -0.2, 0.3, -0.4], [0.5, -0.6, 0.7, -0.8]];
        let k = |source, mask, norm, sign| DeltaGradKnobs {
            source,
            mask,
            norm,
            sign,
            ste_scale: SteScale::OneMinusW2,
        };
        use DeltaGradMask::*;
        use DeltaGradNorm::*;
        use DeltaGradSign::*;
        use DeltaGradSource::*;
        let cases = [
            (k(PostS, Nonzero, Numel, Signed), 0.02383796),
            (k(PreS, Nonzero, Numel, Signed), 0.0625),
            (k(PostS, All, Numel, Signed), -0.08830994),
            (k(PostS, Nonzero, Count, Signed), 0.04767593),
            (k(PreS, All, Numel, Signed), -0.05),
            (k(PostS, Nonzero, Numel, NegAbs), -0.11703323),
        ];
        for (kn, want) in cases {
            let got = delta_bar_grad(g.view(), w.view(), wh.view(), kn);
            assert!((got - want).abs() < 1e-8, "{kn:?}: {got} vs {want}");
        }
        let exact = (0.1 * 21.0 / 121.0 + 0.3 * 105.0 / 121.0 - 0.6 * 105.0 / 169.0
            + 0.7 * 69.0 / 169.0)
            / 8.0;
        let d = delta_bar_grad(g.view(), w.view(), wh.view(), DeltaGradKnobs::default());
        assert!((d - exact).abs() < 1e-15);
        assert!((sgd_step_clamped(0.3, d, 0.1) - 0.29761620).abs() < 1e-8);
        assert_eq!(sgd_step_clamped(0.001, 0.05, 0.1), 0.0);
        // identity STE: post-S == pre-S
        let id = DeltaGradKnobs {
            ste_scale: SteScale::Identity,
            ..Default::default()
        };
        assert!((delta_bar_grad(g.view(), w.view(), wh.view(), id) - 0.0625).abs() < 1e-15);
    }
}
