//! Every knob of the method, with the defaults of the spec's section 15 (docs/method.md).
//!
//! Each ambiguity A1–A27 of the spec is one field here; the doc comment names the ambiguity. The
//! struct deserialises from TOML/JSON with `deny_unknown_fields` (a misspelt knob is an error, not
//! a silently ignored default) and every missing field takes its documented default.

use crate::error::{HlaError, Result};
use serde::{Deserialize, Serialize};

/// Which training method runs (FP, the two baselines, or HLA); "one config field" selects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Full precision: plain layers, no quantisation (the reference model).
    Fp,
    /// Ternary Weight Networks (spec 11.1): Δ = 0.7·mean|W|, α = mean of |w| above Δ, identity STE.
    Twn,
    /// Trained Ternary Quantization (spec 11.2): Δ = 0.05·max|W|, learned W^p / W^n.
    Ttq,
    /// Hyperspherical Loss-Aware ternary quantisation (Algorithm 1).
    #[default]
    Hla,
}

impl Method {
    /// Every method, in the order tables list them.
    pub const ALL: [Method; 4] = [Method::Fp, Method::Hla, Method::Twn, Method::Ttq];

    /// Lower-case name, as in configs (`method = "twn"`) and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Fp => "fp",
            Method::Twn => "twn",
            Method::Ttq => "ttq",
            Method::Hla => "hla",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = HlaError;

    fn from_str(s: &str) -> Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| bad("method", s, "must be one of fp, hla, twn, ttq"))
    }
}

/// A1: over which weights the quantile T(t) is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdScope {
    /// One value over all quantised layers ("Δ is a global magnitude threshold").
    #[default]
    Global,
    /// One value per layer from its own weights (Eq. 8 as written for one W).
    PerLayer,
}

/// A2: which order statistic T(t) returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantileIndex {
    /// T = a[min(⌊tN⌋, N−1)] (0-based, ascending): ⌊tN⌋ + 1 zeros without ties.
    #[default]
    ZeroBased,
    /// T = a[⌊tN⌋ − 1]: exactly ⌊tN⌋ zeros without ties (T = 0 when ⌊tN⌋ = 0).
    KthSmallest,
}

/// A5: when the stage-1 threshold Δ is recomputed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaRefresh {
    /// Once at the start of each sub-stage (Alg. 1 line 6 is outside the inner loop).
    #[default]
    PerStage,
    /// At every step from the current weights.
    PerStep,
}

/// A8: how per-layer L_d terms are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LdReduce {
    /// Σ_l L_d^l.
    #[default]
    Sum,
    /// (1/|Q|) Σ_l L_d^l.
    Mean,
}

/// A10: what an empty row (no |w| > Δ) becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyRow {
    /// ŵ_j = 0, α_j = 0.
    #[default]
    Zero,
    /// Keep the largest-|w| entry (first in index order on ties) at ±1, α_j = 1.
    KeepMax,
}

/// A13: scaling of the straight-through gradient (Eqs. 11–12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SteScale {
    /// dW = G ⊙ (1 − W ⊙ W) on the normalised W.
    #[default]
    OneMinusW2,
    /// dW = G (plain STE; Figure 3's "without S").
    Identity,
}

/// A14(a): whether Δ̄'s gradient averages the gradient before or after the STE scaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaGradSource {
    /// g = G ⊙ S (the gradient at the full-precision w; with `ste_scale = identity`, S = 1).
    #[default]
    PostS,
    /// g = G (the gradient at the ternary weights).
    PreS,
}

/// A14(b): which entries enter Δ̄'s gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaGradMask {
    /// Only entries with ŵ_ij ≠ 0.
    #[default]
    Nonzero,
    /// All entries.
    All,
}

/// A14(c): the divisor of Δ̄'s gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaGradNorm {
    /// m·n (all elements of the layer, as Eq. 13 is written).
    #[default]
    Numel,
    /// The number of entries in the mask (0 entries → gradient 0).
    Count,
}

/// A14(e): sign convention of Δ̄'s gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaGradSign {
    /// The signed sum as written.
    #[default]
    Signed,
    /// −(1/N)·Σ|g|: always raises Δ̄ (the text's intent, not the formula).
    NegAbs,
}

/// A16: input normalisation of hyperspherical layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputNorm {
    /// Divide by the receptive-field patch norm sqrt(conv(x², ONES) + eps_x).
    #[default]
    Patch,
    /// No input normalisation (weights still normalised).
    None,
}

/// A17: how unit-norm rows are maintained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormMode {
    /// w = v / sqrt(‖v‖² + eps_w) in every forward (gradient through the normalisation).
    #[default]
    Reparam,
    /// w = v used directly; v's rows are re-projected onto the unit sphere after each step.
    Project,
}

/// A17: which layers are hyperspherical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HypersphericalLayers {
    /// Exactly the quantised layers.
    #[default]
    Quantised,
    /// Every conv/linear (not supported: the model only routes quantisable layers to the method).
    All,
}

/// A18: per-row gain for quantised layers with no BatchNorm after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoBnGain {
    /// Learnable g_j initialised to the pretrained row norm ‖v_j‖.
    #[default]
    Learnable,
    /// No gain.
    None,
}

/// A22: how the Table-4 similarity Sim is averaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimAverage {
    /// Unweighted mean of c_j over all rows of all quantised layers.
    #[default]
    Rows,
    /// Mean over layers of each layer's row mean.
    Layers,
}

/// A27: the gradient of TTQ's negative scale W^n.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtqWnGrad {
    /// ∂L/∂W^n = −Σ_{I^n} G (chain rule, since Ŵ = −W^n there).
    #[default]
    ChainRule,
    /// ∂L/∂W^n = +Σ_{I^n} G (TTQ's Eq. 7 as usually transcribed).
    Literal,
}

/// A27: initial TTQ scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtqScaleInit {
    /// W^p = W^n = 1.
    #[default]
    One,
    /// W^p (W^n) = mean |W| / max|W| over I^p (I^n).
    TwnAlpha,
}

/// All knobs of the method and of its training loop. Defaults = spec section 15.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HlaConfig {
    /// FP / TWN / TTQ / HLA.
    pub method: Method,
    /// A1 (default global).
    pub threshold_scope: ThresholdScope,
    /// A2 (default zero_based).
    pub quantile_index: QuantileIndex,
    /// A3: first stage-1 sparsity in percent (default 30).
    pub t_start_pct: u32,
    /// A4: stage-1 step in percent (default 4).
    pub t_step_pct: u32,
    /// A4: stage-1 loop bound in percent, `while t < t_end` (default 70).
    pub t_end_pct: u32,
    /// A4: also run a sub-stage at exactly t_end (default false).
    pub t_include_end: bool,
    /// A5 (default per_stage).
    pub stage1_delta_refresh: DeltaRefresh,
    /// A6: epochs per stage-1 sub-stage (default 10); may be fractional (0.5), counted in
    /// optimizer steps (see `algorithm`).
    pub stage1_epochs_per_stage: f64,
    /// A7: weight λ of L_d (default 1).
    pub lambda_d: f64,
    /// A8 (default sum).
    pub ld_reduce: LdReduce,
    /// A9: pass L_d's gradient through Ŵ by the STE as well (default false = Ŵ detached).
    pub ld_ste: bool,
    /// A10 (default zero).
    pub empty_row: EmptyRow,
    /// A11: stage-2 initial Δ̄ = T(stage2_init_pct) (default 80).
    pub stage2_init_pct: u32,
    /// A13 (default one_minus_w2).
    pub ste_scale: SteScale,
    /// A14 (default post_s).
    pub delta_grad_source: DeltaGradSource,
    /// A14 (default nonzero).
    pub delta_grad_mask: DeltaGradMask,
    /// A14 (default numel).
    pub delta_grad_norm: DeltaGradNorm,
    /// A14 (default signed).
    pub delta_grad_sign: DeltaGradSign,
    /// A15: Δ̄ learning-rate multiplier (default 1).
    pub delta_lr_mult: f64,
    /// A15: Δ̄ momentum (default 0.9).
    pub delta_momentum: f64,
    /// A15: Δ̄ weight decay (default 0; the spec excludes Δ̄ from decay).
    pub delta_wd: f64,
    /// A16 (default patch).
    pub input_norm: InputNorm,
    /// A16: epsilon inside the patch norm (default 1e-4).
    pub eps_x: f64,
    /// A16: epsilon inside the row norm (default 1e-12).
    pub eps_w: f64,
    /// A17 (default reparam).
    pub norm_mode: NormMode,
    /// A17 (default quantised).
    pub hyperspherical_layers: HypersphericalLayers,
    /// A18: apply input normalisation to quantised layers with no BN after them (default false).
    pub no_bn_input_norm: bool,
    /// A18 (default learnable).
    pub no_bn_gain: NoBnGain,
    /// A19: SGDR period in epochs (default 10; may be fractional), of stage 1 and the warm-up,
    /// and of stage 2 and the baselines unless `sgdr_t0_epochs_stage2` is set. Each phase starts
    /// a fresh cycle.
    pub sgdr_t0_epochs: f64,
    /// A19: SGDR period of stage 2 and the baselines in epochs (default: `sgdr_t0_epochs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sgdr_t0_epochs_stage2: Option<f64>,
    /// A19: SGDR period multiplier (default 1).
    pub sgdr_t_mult: usize,
    /// A19: SGDR minimum learning rate (default 0).
    pub sgdr_eta_min: f64,
    /// A20: stage-2 epochs (default 200; may be fractional; 0 ends an HLA run after stage 1);
    /// also the training length of FP/TWN/TTQ runs.
    pub stage2_epochs: f64,
    /// A21: hyperspherical warm-up epochs with λ = 0 before stage 1 (default 0).
    pub hs_warmup_epochs: f64,
    /// A22 (default rows).
    pub sim_average: SimAverage,
    /// A22: t (percent) of the Sim metric (default 70).
    pub sim_t_pct: u32,
    /// A23: layer names not quantised; `None` = the model's own quantisable flags.
    pub skip_layers: Option<Vec<String>>,
    /// A24: fp16 activations (not supported: activations are f32; must stay false).
    pub amp: bool,
    /// A26: weight decay on BatchNorm affine parameters (default true).
    pub wd_on_bn: bool,
    /// A27 (default chain_rule).
    pub ttq_wn_grad: TtqWnGrad,
    /// A27 (default one).
    pub ttq_scale_init: TtqScaleInit,
    /// A27: multiply TTQ's latent-weight gradient by 1/max|W| (default false).
    pub ttq_grad_div_max: bool,
    /// A27: before TTQ training, divide each quantised layer's latent weights once by their
    /// max|W| so they lie in [−1, 1], as the TTQ paper describes (default true). The ternary
    /// assignment (Δ = t·max|W|) does not depend on it, but the initial scales W^p = W^n = 1
    /// (`ttq_scale_init = one`) are the scale of normalised weights, and the step size relative
    /// to the latent weights (which decides how fast assignments flip) differs by max|W|
    /// (≈ 0.1–0.5 for pretrained convolutions). `false` keeps the pretrained scale.
    pub ttq_normalize_init: bool,
    /// TTQ threshold factor t in Δ = t·max|W| (default 0.05).
    pub ttq_threshold: f64,
    /// TWN threshold factor in Δ = f·mean|W| (default 0.7).
    pub twn_threshold: f64,
    /// Section 3.3 note: train-mode forwards (no update) to re-estimate BN stats after conversion (default 0).
    pub bn_recalibrate_batches: usize,
    /// Peak learning rate (default 0.01).
    pub lr: f64,
    /// SGD momentum (default 0.9).
    pub momentum: f64,
    /// Weight decay on trainable weights except Δ̄ and the TTQ scales (default 1e-4).
    pub weight_decay: f64,
    /// Nesterov momentum (default false).
    pub nesterov: bool,
}

impl Default for HlaConfig {
    fn default() -> Self {
        Self {
            method: Method::Hla,
            threshold_scope: ThresholdScope::Global,
            quantile_index: QuantileIndex::ZeroBased,
            t_start_pct: 30,
            t_step_pct: 4,
            t_end_pct: 70,
            t_include_end: false,
            stage1_delta_refresh: DeltaRefresh::PerStage,
            stage1_epochs_per_stage: 10.0,
            lambda_d: 1.0,
            ld_reduce: LdReduce::Sum,
            ld_ste: false,
            empty_row: EmptyRow::Zero,
            stage2_init_pct: 80,
            ste_scale: SteScale::OneMinusW2,
            delta_grad_source: DeltaGradSource::PostS,
            delta_grad_mask: DeltaGradMask::Nonzero,
            delta_grad_norm: DeltaGradNorm::Numel,
            delta_grad_sign: DeltaGradSign::Signed,
            delta_lr_mult: 1.0,
            delta_momentum: 0.9,
            delta_wd: 0.0,
            input_norm: InputNorm::Patch,
            eps_x: 1e-4,
            eps_w: 1e-12,
            norm_mode: NormMode::Reparam,
            hyperspherical_layers: HypersphericalLayers::Quantised,
            no_bn_input_norm: false,
            no_bn_gain: NoBnGain::Learnable,
            sgdr_t0_epochs: 10.0,
            sgdr_t0_epochs_stage2: None,
            sgdr_t_mult: 1,
            sgdr_eta_min: 0.0,
            stage2_epochs: 200.0,
            hs_warmup_epochs: 0.0,
            sim_average: SimAverage::Rows,
            sim_t_pct: 70,
            skip_layers: None,
            amp: false,
            wd_on_bn: true,
            ttq_wn_grad: TtqWnGrad::ChainRule,
            ttq_scale_init: TtqScaleInit::One,
            ttq_grad_div_max: false,
            ttq_normalize_init: true,
            ttq_threshold: 0.05,
            twn_threshold: 0.7,
            bn_recalibrate_batches: 0,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: false,
        }
    }
}

fn bad(knob: &'static str, value: impl std::fmt::Display, reason: &str) -> HlaError {
    HlaError::Config {
        knob,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

impl HlaConfig {
    /// Parses a TOML document (unknown fields are errors), then validates it.
    ///
    /// # Errors
    /// `Config` naming the offending field.
    pub fn from_toml_str(s: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(s).map_err(|e| bad("config", "<toml>", &e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a JSON document (as stored in checkpoints), then validates it.
    ///
    /// # Errors
    /// `Config` naming the offending field.
    pub fn from_json_str(s: &str) -> Result<Self> {
        let cfg: Self =
            serde_json::from_str(s).map_err(|e| bad("config", "<json>", &e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every knob's domain and rejects the combinations this implementation does not
    /// support (`hyperspherical_layers = all`, `amp = true`).
    ///
    /// # Errors
    /// `Config` naming the first offending knob.
    pub fn validate(&self) -> Result<()> {
        let pct = |knob: &'static str, v: u32| {
            if v == 0 || v >= 100 {
                Err(bad(knob, v, "must be in 1..=99 (percent, 0 < t < 1)"))
            } else {
                Ok(())
            }
        };
        pct("t_start_pct", self.t_start_pct)?;
        pct("stage2_init_pct", self.stage2_init_pct)?;
        pct("sim_t_pct", self.sim_t_pct)?;
        if self.t_end_pct > 100 {
            return Err(bad("t_end_pct", self.t_end_pct, "must be <= 100"));
        }
        if self.t_step_pct == 0 {
            return Err(bad("t_step_pct", 0, "must be > 0"));
        }
        if self.t_start_pct > self.t_end_pct
            || (self.t_start_pct == self.t_end_pct && !self.t_include_end)
        {
            return Err(bad(
                "t_start_pct",
                self.t_start_pct,
                "gives no stage-1 sub-stage (must be < t_end_pct)",
            ));
        }
        if self.t_include_end && self.t_end_pct >= 100 {
            return Err(bad("t_end_pct", self.t_end_pct, "t = 1 cannot be a stage"));
        }
        if self.t_step_pct > 98 {
            return Err(bad("t_step_pct", self.t_step_pct, "must be in 1..=98"));
        }
        let within = |knob: &'static str, v: f64, lo: f64, hi: f64, allowed: &str| {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(bad(knob, v, allowed))
            }
        };
        within(
            "lr",
            self.lr,
            f64::MIN_POSITIVE,
            10.0,
            "must be in 0 < lr <= 10",
        )?;
        within(
            "momentum",
            self.momentum,
            0.0,
            0.999_999,
            "must be in 0 <= momentum < 1",
        )?;
        within(
            "weight_decay",
            self.weight_decay,
            0.0,
            1.0,
            "must be in 0..=1",
        )?;
        within(
            "sgdr_eta_min",
            self.sgdr_eta_min,
            0.0,
            self.lr,
            "must be in 0 <= eta_min <= lr",
        )?;
        within("lambda_d", self.lambda_d, 0.0, 1e6, "must be in 0..=1e6")?;
        within(
            "delta_lr_mult",
            self.delta_lr_mult,
            0.0,
            1e6,
            "must be in 0..=1e6",
        )?;
        within(
            "delta_momentum",
            self.delta_momentum,
            0.0,
            0.999_999,
            "must be in 0 <= x < 1",
        )?;
        within("delta_wd", self.delta_wd, 0.0, 1.0, "must be in 0..=1")?;
        within("eps_x", self.eps_x, 0.0, 1.0, "must be in 0..=1")?;
        within("eps_w", self.eps_w, 0.0, 1.0, "must be in 0..=1")?;
        within(
            "twn_threshold",
            self.twn_threshold,
            0.0,
            10.0,
            "must be in 0..=10",
        )?;
        within(
            "ttq_threshold",
            self.ttq_threshold,
            0.0,
            0.999,
            "must be in 0 <= t < 1",
        )?;
        within(
            "sgdr_t0_epochs",
            self.sgdr_t0_epochs,
            1e-6,
            1e6,
            "must be in 0 < epochs <= 1e6",
        )?;
        if let Some(t) = self.sgdr_t0_epochs_stage2 {
            within(
                "sgdr_t0_epochs_stage2",
                t,
                1e-6,
                1e6,
                "must be in 0 < epochs <= 1e6",
            )?;
        }
        if !(1..=10).contains(&self.sgdr_t_mult) {
            return Err(bad("sgdr_t_mult", self.sgdr_t_mult, "must be in 1..=10"));
        }
        within(
            "stage1_epochs_per_stage",
            self.stage1_epochs_per_stage,
            1e-6,
            1e6,
            "must be in 0 < epochs <= 1e6",
        )?;
        within(
            "stage2_epochs",
            self.stage2_epochs,
            0.0,
            1e6,
            "must be in 0..=1e6 epochs",
        )?;
        within(
            "hs_warmup_epochs",
            self.hs_warmup_epochs,
            0.0,
            1e6,
            "must be in 0..=1e6 epochs",
        )?;
        if self.hyperspherical_layers == HypersphericalLayers::All {
            return Err(bad(
                "hyperspherical_layers",
                "all",
                "not supported: models route only quantisable layers to the method",
            ));
        }
        if self.amp {
            return Err(bad(
                "amp",
                true,
                "not supported: activations are f32 (report runs as W2/A32)",
            ));
        }
        Ok(())
    }

    /// The stage-1 sparsity values t_pct (A3/A4): `t_start + k·t_step` while `< t_end`
    /// (or `<= t_end` with `t_include_end`), in integer percent — never accumulated in floating
    /// point. Defaults give exactly 30, 34, …, 66 (10 sub-stages).
    pub fn stage1_t_pcts(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut t = self.t_start_pct;
        while t < self.t_end_pct || (self.t_include_end && t == self.t_end_pct) {
            out.push(t);
            t += self.t_step_pct.max(1);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_spec_section_15() {
        let c = HlaConfig::default();
        assert_eq!(c.threshold_scope, ThresholdScope::Global);
        assert_eq!(c.quantile_index, QuantileIndex::ZeroBased);
        assert_eq!((c.t_start_pct, c.t_step_pct, c.t_end_pct), (30, 4, 70));
        assert!(!c.t_include_end);
        assert_eq!(c.stage1_epochs_per_stage, 10.0);
        assert_eq!(c.lambda_d, 1.0);
        assert_eq!(c.stage2_init_pct, 80);
        assert_eq!(c.ste_scale, SteScale::OneMinusW2);
        assert_eq!(c.eps_x, 1e-4);
        assert_eq!(c.eps_w, 1e-12);
        assert_eq!(c.stage2_epochs, 200.0);
        assert_eq!(c.sim_t_pct, 70);
        assert_eq!((c.lr, c.momentum, c.weight_decay), (0.01, 0.9, 1e-4));
        c.validate().unwrap();
    }

    #[test]
    fn toml_partial_config_takes_defaults_and_rejects_unknown_fields() {
        let c: HlaConfig =
            toml::from_str("threshold_scope = \"per_layer\"\nste_scale = \"identity\"\n").unwrap();
        assert_eq!(c.threshold_scope, ThresholdScope::PerLayer);
        assert_eq!(c.ste_scale, SteScale::Identity);
        assert_eq!(c.stage2_init_pct, 80);
        assert!(toml::from_str::<HlaConfig>("treshold_scope = \"global\"\n").is_err());
        assert!(toml::from_str::<HlaConfig>("ste_scale = \"sometimes\"\n").is_err());
    }

    #[test]
    fn json_round_trip_and_validation_errors() {
        let c = HlaConfig {
            method: Method::Ttq,
            ..Default::default()
        };
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(HlaConfig::from_json_str(&s).unwrap(), c);
        let t = toml::to_string(&c).unwrap();
        assert_eq!(HlaConfig::from_toml_str(&t).unwrap(), c);
        let bad = HlaConfig {
            t_step_pct: 0,
            ..Default::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(HlaError::Config {
                knob: "t_step_pct",
                ..
            })
        ));
        let amp = HlaConfig {
            amp: true,
            ..Default::default()
        };
        assert!(amp.validate().is_err());
    }

    /// T6: exactly 10 stage-1 values 30..66; 70 excluded unless `t_include_end`.
    #[test]
    fn t6_stage1_schedule_has_ten_integer_values() {
        let c = HlaConfig::default();
        assert_eq!(
            c.stage1_t_pcts(),
            vec![30, 34, 38, 42, 46, 50, 54, 58, 62, 66]
        );
        let inc = HlaConfig {
            t_include_end: true,
            t_start_pct: 50,
            ..Default::default()
        };
        assert_eq!(inc.stage1_t_pcts(), vec![50, 54, 58, 62, 66, 70]);
    }
}
