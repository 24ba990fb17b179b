//! The method on one layer, step by step, with every intermediate number kept: what
//! `hla explain` prints for a teacher's slide (docs/method.md follows the same order).
//!
//! Every value is computed by the same functions the training uses ([`normalize_rows`],
//! [`threshold_global`], [`ternarize_rows`], [`ld_layer`], [`ld_grad_latent`], [`ste_grad`],
//! [`delta_bar_grad`], [`sgd_step_clamped`]), in f64, so the walkthrough of the spec's
//! hand-worked layer (T1–T8) prints exactly the numbers its tests pin.
//!
//! Guide: [The method in one page](crate::guide#one-page).

use crate::config::{HlaConfig, SteScale};
use crate::delta_grad::{delta_bar_grad, sgd_step_clamped, DeltaGradKnobs};
use crate::error::{HlaError, Result};
use crate::ld::{ld_grad_latent, ld_layer, normalize_rows};
use crate::ternary::{s_scale, ste_grad, ternarize_rows, TernaryRows};
use crate::threshold::threshold_global;
use ndarray::{Array1, Array2, ArrayView2};
use std::fmt::Write;

/// Every intermediate value of one stage-1 step and one stage-2 step on one layer.
///
/// Guide: [The method in one page](crate::guide#one-page).
#[derive(Debug, Clone)]
pub struct Walkthrough {
    /// Latent weights V, one row per output unit `[n, m]`.
    pub v: Array2<f64>,
    /// Row norms r_j = ‖v_j‖ (Eq. 3).
    pub row_norms: Array1<f64>,
    /// Unit rows W = V / r (Eq. 3).
    pub w: Array2<f64>,
    /// Stage-1 sparsity t in percent.
    pub t_pct: u32,
    /// Δ = T(t) over this layer's |W| (Eq. 8).
    pub delta: f64,
    /// Ternary(W, Δ): codes, nnz and α_j = 1/√nnz_j (Eqs. 4–5).
    pub ternary: TernaryRows<f64>,
    /// Ŵ = α ⊙ codes.
    pub w_hat: Array2<f64>,
    /// c_j = w_j · ŵ_j, the cosine of each row with its ternary (both unit).
    pub cos: Array1<f64>,
    /// L_d(W, Δ) (Eq. 7).
    pub ld: f64,
    /// ∂L_d/∂W with Ŵ detached (Eq. 7).
    pub ld_grad_w: Array2<f64>,
    /// ∂L_d/∂V through the normalisation.
    pub ld_grad_v: Array2<f64>,
    /// The upstream gradient G = ∂L/∂Ŵ the stage-2 step receives.
    pub g: Array2<f64>,
    /// What G stands for (printed with it).
    pub g_source: String,
    /// S = 1 − W ⊙ W (Eq. 12).
    pub s: Array2<f64>,
    /// ∂J/∂W ≈ G ⊙ S (Eq. 11).
    pub ste_with_s: Array2<f64>,
    /// ∂J/∂W ≈ G (plain STE, Figure 3's "without S").
    pub ste_without_s: Array2<f64>,
    /// Δ̄ before the stage-2 step.
    pub delta_bar: f64,
    /// Ternary(W, Δ̄) (Eq. 10).
    pub ternary_bar: TernaryRows<f64>,
    /// ∂J/∂Δ̄ (Eq. 13, with the configured A14 variants).
    pub delta_bar_grad: f64,
    /// Learning rate of the Δ̄ step (plain SGD, no momentum).
    pub lr: f64,
    /// Δ̄ after the step, clamped at 0 (Alg. 1 line 20).
    pub delta_bar_next: f64,
}

impl Walkthrough {
    /// Walks one layer: `v` `[n, m]` latent rows, stage-1 sparsity `t_pct`, upstream gradient
    /// `g` `[n, m]` (described by `g_source`), Δ̄ before the stage-2 step and its learning rate.
    /// The quantile index, empty-row rule, eps_w and the A14 knobs come from `cfg`.
    ///
    /// Guide: [The method in one page](crate::guide#one-page).
    ///
    /// # Errors
    /// `ShapeMismatch` when `g` and `v` differ; `Empty` / `NonFinite` from the threshold.
    pub fn compute(
        v: ArrayView2<'_, f64>,
        t_pct: u32,
        g: ArrayView2<'_, f64>,
        g_source: &str,
        delta_bar: f64,
        lr: f64,
        cfg: &HlaConfig,
    ) -> Result<Self> {
        if g.dim() != v.dim() {
            return Err(HlaError::ShapeMismatch {
                op: "walkthrough (G vs V)",
                lhs: g.shape().to_vec(),
                rhs: v.shape().to_vec(),
            });
        }
        let (w, row_norms) = normalize_rows(v, cfg.eps_w);
        let delta = threshold_global(&[w.view().into_dyn()], t_pct, cfg.quantile_index)?;
        let ternary = ternarize_rows(w.view(), delta, cfg.empty_row);
        let w_hat = ternary.dequantize();
        let (ld, cos, ld_grad_w) = ld_layer(w.view(), w_hat.view());
        let ld_grad_v = ld_grad_latent(v, w_hat.view(), cfg.eps_w);
        let s = s_scale(w.view());
        let ste_with_s = ste_grad(g, w.view(), SteScale::OneMinusW2);
        let ste_without_s = ste_grad(g, w.view(), SteScale::Identity);
        let ternary_bar = ternarize_rows(w.view(), delta_bar, cfg.empty_row);
        let w_bar = ternary_bar.dequantize();
        let knobs = DeltaGradKnobs::from_config(cfg);
        let grad = delta_bar_grad(g, w.view(), w_bar.view(), knobs);
        Ok(Self {
            v: v.to_owned(),
            row_norms,
            w,
            t_pct,
            delta,
            ternary,
            w_hat,
            cos,
            ld,
            ld_grad_w,
            ld_grad_v,
            g: g.to_owned(),
            g_source: g_source.to_string(),
            s,
            ste_with_s,
            ste_without_s,
            delta_bar,
            ternary_bar,
            delta_bar_grad: grad,
            lr,
            delta_bar_next: sgd_step_clamped(delta_bar, grad, lr),
        })
    }

    /// The spec's hand-worked layer (T1: V = [[10, −2, 4, −1], [1, 4, −5, 0.5]], t = 0.5;
    /// T8: G = [[0.1, −0.2, 0.3, −0.4], [0.5, −0.6, 0.7, −0.8]], Δ̄ = 0.3, lr = 0.1), with
    /// eps_w = 0 as the hand computation assumes: every number can be checked on paper.
    ///
    /// Guide: [The method in one page](crate::guide#one-page).
    ///
    /// # Errors
    /// None in practice (fixed finite input); the signature is [`Walkthrough::compute`]'s.
    pub fn spec_example() -> Result<Self> {
        let v = ndarray::array![[10.0, -2.0, 4.0, -1.0], [1.0, 4.0, -5.0, 0.5]];
        let g = ndarray::array![[0.1, -0.2, 0.3, -0.4], [0.5, -0.6, 0.7, -0.8]];
        let cfg = HlaConfig {
            eps_w: 0.0,
            ..Default::default()
        };
        Self::compute(
            v.view(),
            50,
            g.view(),
            "the spec's T8 example",
            0.3,
            0.1,
            &cfg,
        )
    }

    /// The slide: each step with its equation, showing at most `rows` × `cols` of each matrix.
    ///
    /// Guide: [The method in one page](crate::guide#one-page).
    pub fn slide(&self, rows: usize, cols: usize) -> String {
        let (n, m) = self.w.dim();
        let mut s = String::new();
        let shown = format!(
            "(showing {} of {n} rows, {} of {m} columns)",
            rows.min(n),
            cols.min(m)
        );
        let _ = writeln!(
            s,
            "Layer: {n} rows (output units) x {m} weights each {shown}"
        );
        let mat = |s: &mut String, title: &str, a: &Array2<f64>| {
            let _ = writeln!(s, "  {title}");
            for r in a.outer_iter().take(rows) {
                // + 0.0 turns −0 into 0, so detached zeros print as 0
                let cells: Vec<String> = r
                    .iter()
                    .take(cols)
                    .map(|&x| format!("{:>12.8}", x + 0.0))
                    .collect();
                let more = if m > cols { "  ..." } else { "" };
                let _ = writeln!(s, "    [{}]{more}", cells.join(""));
            }
        };
        let vec = |v: &Array1<f64>| {
            let cells: Vec<String> = v.iter().take(rows).map(|x| format!("{x:.8}")).collect();
            let more = if v.len() > rows { ", ..." } else { "" };
            format!("[{}{more}]", cells.join(", "))
        };
        let _ = writeln!(s, "\n1. Hyperspherical rows (Eq. 3): w_j = v_j / ‖v_j‖");
        mat(&mut s, "V (latent)", &self.v);
        let _ = writeln!(s, "  ‖v_j‖ = {}", vec(&self.row_norms));
        mat(&mut s, "W (unit rows)", &self.w);
        let nz = self.ternary.zeros();
        let _ = writeln!(
            s,
            "\n2. Threshold (Eq. 8): Δ = T({:.2}) = {:.8}  ({} of {} weights have |w| ≤ Δ: {:.2} % zeros)",
            self.t_pct as f64 / 100.0,
            self.delta,
            nz,
            n * m,
            100.0 * nz as f64 / (n * m) as f64
        );
        let _ = writeln!(
            s,
            "\n3. Ternary (Eqs. 4–5): ŵ_j = α_j · sign(w_j) · [|w_j| > Δ], α_j = 1/√nnz_j"
        );
        let nnz: Vec<String> = self
            .ternary
            .nnz
            .iter()
            .take(rows)
            .map(|k| k.to_string())
            .collect();
        let _ = writeln!(
            s,
            "  nnz_j = [{}{}]",
            nnz.join(", "),
            if n > rows { ", ..." } else { "" }
        );
        let _ = writeln!(s, "  α_j   = {}", vec(&self.ternary.alpha));
        mat(&mut s, "Ŵ", &self.w_hat);
        let _ = writeln!(
            s,
            "\n4. Regulariser (Eq. 7): L_d = (1/n) Σ_j (w_j·ŵ_j − 1)²"
        );
        let _ = writeln!(s, "  c_j = w_j·ŵ_j = {}", vec(&self.cos));
        let _ = writeln!(s, "  L_d = {:.10}", self.ld);
        mat(
            &mut s,
            "∂L_d/∂W = (2/n)(c_j − 1) ŵ_j  (Ŵ detached)",
            &self.ld_grad_w,
        );
        mat(
            &mut s,
            "∂L_d/∂V = (I − w_j w_jᵀ) ∂L_d/∂w_j / ‖v_j‖",
            &self.ld_grad_v,
        );
        let _ = writeln!(
            s,
            "\n5. Straight-through estimator (Eqs. 11–12), G = {}",
            self.g_source
        );
        mat(&mut s, "G = ∂L/∂Ŵ", &self.g);
        mat(&mut s, "S = 1 − W ⊙ W", &self.s);
        mat(&mut s, "∂J/∂W ≈ G ⊙ S  (with S)", &self.ste_with_s);
        mat(&mut s, "∂J/∂W ≈ G      (without S)", &self.ste_without_s);
        let _ = writeln!(s, "\n6. Learnable threshold (Eq. 13, Alg. 1 lines 19–20)");
        let _ = writeln!(
            s,
            "  Δ̄ = {:.8}: Ternary(W, Δ̄) keeps {} of {} weights",
            self.delta_bar,
            n * m - self.ternary_bar.zeros(),
            n * m
        );
        let _ = writeln!(
            s,
            "  ∂J/∂Δ̄ = (1/(m·n)) Σ_(ŵ ≠ 0) G ⊙ S = {:.8}",
            self.delta_bar_grad
        );
        let _ = writeln!(
            s,
            "  Δ̄ ← max(Δ̄ − lr·∂J/∂Δ̄, 0) = max({:.8} − {}·{:.8}, 0) = {:.8}",
            self.delta_bar, self.lr, self.delta_bar_grad, self.delta_bar_next
        );
        s
    }
}

/// Figure 1 in isolation: L_d alone acting on one layer. For each stage-1 sparsity in
/// `t_pcts`, Δ = T(t) is taken once (A5 `per_stage`), then `steps` projected gradient steps
/// `w_j ← (w_j − lr·∂L_d/∂w_j) / ‖·‖` pull every row toward its ternary. Returns the unit rows
/// at the start and after each sub-stage, labelled. (In training, CE acts too; this shows
/// what the regulariser itself does to the distribution: three clusters, at 0 and ±α.)
///
/// Guide: [The method in one page](crate::guide#one-page).
///
/// # Errors
/// As [`threshold_global`].
pub fn ld_descent(
    w: ArrayView2<'_, f64>,
    t_pcts: &[u32],
    steps: usize,
    lr: f64,
    cfg: &HlaConfig,
) -> Result<Vec<(String, Array2<f64>)>> {
    let mut w = w.to_owned();
    let mut out = vec![("start".to_string(), w.clone())];
    for &t in t_pcts {
        let delta = threshold_global(&[w.view().into_dyn()], t, cfg.quantile_index)?;
        for _ in 0..steps {
            let wh = ternarize_rows(w.view(), delta, cfg.empty_row).dequantize();
            let (_, _, g) = ld_layer(w.view(), wh.view());
            w = &w - &(g * lr);
            w = normalize_rows(w.view(), 0.0).0;
        }
        out.push((format!("t = {:.2}", t as f64 / 100.0), w.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, t1_v, t1_w};

    fn toy() -> Walkthrough {
        Walkthrough::spec_example().unwrap()
    }

    /// The walkthrough of the spec's layer reproduces T1, T2, T3, T5 and T8 (the numbers the
    /// tests next to each op pin).
    #[test]
    fn toy_layer_gives_the_hand_worked_numbers() {
        let wt = toy();
        assert_close(wt.w.iter(), t1_w::<f64>().iter(), 1e-15);
        assert_eq!(wt.row_norms.to_vec(), vec![11.0, 6.5]);
        assert!((wt.delta - 4.0 / 11.0).abs() < 1e-15);
        assert_eq!(wt.ternary.nnz, vec![1, 2]);
        assert_close(
            wt.ternary.alpha.iter(),
            [1.0, std::f64::consts::FRAC_1_SQRT_2].iter(),
            1e-15,
        );
        assert!((wt.ld - 0.0043512444).abs() < 1e-10);
        assert_close(
            wt.ld_grad_v.iter(),
            [
                -0.00143433,
                -0.00136603,
                0.00273205,
                -0.00068301,
                0.00048500,
                -0.00033680,
                -0.00014819,
                0.00024250,
            ]
            .iter(),
            1e-8,
        );
        assert_close(
            wt.ste_with_s.iter(),
            crate::testutil::T8_STE_WITH_S.iter(),
            1e-8,
        );
        assert_eq!(wt.ste_without_s, wt.g);
        assert!((wt.delta_bar_grad - 0.02383796).abs() < 1e-8);
        assert!((wt.delta_bar_next - 0.29761620).abs() < 1e-8);
        let slide = wt.slide(2, 4);
        for printed in [
            "0.36363636",
            "L_d = 0.0043512444",
            "0.02383796",
            "= 0.29761620",
            "0.70710678",
        ] {
            assert!(slide.contains(printed), "slide lacks {printed}:\n{slide}");
        }
    }

    /// L_d alone raises every row's cosine with its ternary (and leaves the rows unit).
    #[test]
    fn ld_descent_pulls_rows_toward_their_ternary() {
        let w: Array2<f64> = t1_w().into_dimensionality().unwrap();
        let cfg = HlaConfig::default();
        let snaps = ld_descent(w.view(), &[50], 50, 1.0, &cfg).unwrap();
        assert_eq!(snaps.len(), 2);
        let cos = |a: &Array2<f64>| {
            let wh = ternarize_rows(a.view(), 4.0 / 11.0, cfg.empty_row).dequantize();
            ld_layer(a.view(), wh.view()).1
        };
        let (before, after) = (cos(&snaps[0].1), cos(&snaps[1].1));
        for j in 0..2 {
            assert!(
                after[j] > before[j] && after[j] <= 1.0 + 1e-12,
                "{before} -> {after}"
            );
            let r = snaps[1].1.row(j);
            assert!((r.dot(&r) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn mismatched_gradient_is_a_shape_error() {
        let v: Array2<f64> = t1_v().into_dimensionality().unwrap();
        let g = Array2::zeros((3, 4));
        let e = Walkthrough::compute(v.view(), 50, g.view(), "", 0.3, 0.1, &HlaConfig::default());
        assert!(matches!(e, Err(HlaError::ShapeMismatch { .. })));
    }
}
