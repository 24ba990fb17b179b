//! Every knob of the method, with the defaults of the spec's section 15 (docs/method.md).
//!
//! Each ambiguity A1–A27 of the spec is one field here; the doc comment names the ambiguity. The
//! struct deserialises from TOML/JSON with `deny_unknown_fields` (a misspelt knob is an error, not
//! a silently ignored default) and every missing field takes its documented default.
//!
//! Guide: [Knob index](crate::guide#knob-index).

use crate::error::{HlaError, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which training method runs (FP, the two baselines, or HLA); "one config field" selects it.
///
/// Guide: [Knob index](crate::guide#knob-index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Full precision: plain layers, no quantisation (the reference model).
    Fp,
    /// Ternary Weight Networks (docs/method.md, TWN): Δ = 0.7·mean|W|, α = mean of |w| above Δ, identity STE.
    Twn,
    /// Trained Ternary Quantization (docs/method.md, TTQ): Δ = 0.05·max|W|, learned W^p / W^n.
    Ttq,
    /// Hyperspherical Loss-Aware ternary quantisation (Algorithm 1).
    #[default]
    Hla,
}

impl Method {
    /// Every method, in the order tables list them.
    ///
    /// Guide: [Knob index](crate::guide#knob-index).
    pub const ALL: [Method; 4] = [Method::Fp, Method::Hla, Method::Twn, Method::Ttq];

    /// Lower-case name, as in configs (`method = "twn"`) and on the command line.
    ///
    /// Guide: [Knob index](crate::guide#knob-index).
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
///
/// Guide: [Eq. 8](crate::guide#eq-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdScope {
    /// One value over all quantised layers ("Δ is a global magnitude threshold").
    #[default]
    Global,
    /// One value per layer from its own weights (Eq. 8 as written for one W).
    PerLayer,
}

/// A2: which order statistic T(t) returns.
///
/// Guide: [Eq. 8](crate::guide#eq-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuantileIndex {
    /// T = a[min(⌊tN⌋, N−1)] (0-based, ascending): ⌊tN⌋ + 1 zeros without ties.
    #[default]
    ZeroBased,
    /// T = a[⌊tN⌋ − 1]: exactly ⌊tN⌋ zeros without ties (T = 0 when ⌊tN⌋ = 0).
    KthSmallest,
}

/// A5: when the stage-1 threshold Δ is recomputed.
///
/// Guide: [Alg. 1 line 3](crate::guide#alg1-line-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeltaRefresh {
    /// Once at the start of each sub-stage (Alg. 1 line 3 is outside the inner loop).
    #[default]
    PerStage,
    /// At every step from the current weights.
    PerStep,
}

/// A8: how per-layer L_d terms are combined.
///
/// Guide: [Eq. 6](crate::guide#eq-6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LdReduce {
    /// Σ_l L_d^l.
    #[default]
    Sum,
    /// (1/|Q|) Σ_l L_d^l.
    Mean,
}

/// A10: what an empty row (no |w| > Δ) becomes.
///
/// Guide: [Eq. 5](crate::guide#eq-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmptyRow {
    /// ŵ_j = 0, α_j = 0.
    #[default]
    Zero,
    /// Keep the largest-|w| entry (first in index order on ties) at ±1, α_j = 1.
    KeepMax,
}

/// A13: scaling of the straight-through gradient (Eqs. 11–12).
///
/// Guide: [Eq. 12](crate::guide#eq-12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SteScale {
    /// dW = G ⊙ (1 − W ⊙ W) on the normalised W.
    #[default]
    OneMinusW2,
    /// dW = G (plain STE; Figure 3's "without S").
    Identity,
}

/// A14(a): whether Δ̄'s gradient averages the gradient before or after the STE scaling.
///
/// Guide: [Eq. 13](crate::guide#eq-13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeltaGradSource {
    /// g = G ⊙ S (the gradient at the full-precision w; with `ste_scale = identity`, S = 1).
    #[default]
    PostS,
    /// g = G (the gradient at the ternary weights).
    PreS,
}

/// A14(b): which entries enter Δ̄'s gradient.
///
/// Guide: [Eq. 13](crate::guide#eq-13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeltaGradMask {
    /// Only entries with ŵ_ij ≠ 0.
    #[default]
    Nonzero,
    /// All entries.
    All,
}

/// A14(c): the divisor of Δ̄'s gradient.
///
/// Guide: [Eq. 13](crate::guide#eq-13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeltaGradNorm {
    /// m·n (all elements of the layer, as Eq. 13 is written).
    #[default]
    Numel,
    /// The number of entries in the mask (0 entries → gradient 0).
    Count,
}

/// A14(e): sign convention of Δ̄'s gradient.
///
/// Guide: [Eq. 13](crate::guide#eq-13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeltaGradSign {
    /// The signed sum as written.
    #[default]
    Signed,
    /// −(1/N)·Σ|g|: always raises Δ̄ (the text's intent, not the formula).
    NegAbs,
}

/// A16: input normalisation of hyperspherical layers.
///
/// Guide: [Eq. 3](crate::guide#eq-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputNorm {
    /// Divide by the receptive-field patch norm sqrt(conv(x², ONES) + eps_x).
    #[default]
    Patch,
    /// No input normalisation (weights still normalised).
    None,
}

/// A17: how unit-norm rows are maintained.
///
/// Guide: [Eq. 3](crate::guide#eq-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NormMode {
    /// w = v / sqrt(‖v‖² + eps_w) in every forward (gradient through the normalisation).
    #[default]
    Reparam,
    /// w = v used directly; v's rows are re-projected onto the unit sphere after each step.
    Project,
}

/// A17: which layers are hyperspherical.
///
/// Guide: [Eq. 3](crate::guide#eq-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HypersphericalLayers {
    /// Exactly the quantised layers.
    #[default]
    Quantised,
    /// Every conv/linear (not supported: the model only routes quantisable layers to the method).
    All,
}

/// A18: per-row gain for quantised layers with no BatchNorm after them.
///
/// Guide: [Eq. 3](crate::guide#eq-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoBnGain {
    /// Learnable g_j initialised to the pretrained row norm ‖v_j‖.
    #[default]
    Learnable,
    /// No gain.
    None,
}

/// A22: how the Table-4 similarity Sim is averaged.
///
/// Guide: [Metrics](crate::guide#metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SimAverage {
    /// Unweighted mean of c_j over all rows of all quantised layers.
    #[default]
    Rows,
    /// Mean over layers of each layer's row mean.
    Layers,
}

/// A27: the gradient of TTQ's negative scale W^n.
///
/// Guide: [TTQ](crate::guide#ttq).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TtqWnGrad {
    /// ∂L/∂W^n = −Σ_{I^n} G (chain rule, since Ŵ = −W^n there).
    #[default]
    ChainRule,
    /// ∂L/∂W^n = +Σ_{I^n} G (TTQ's Eq. 7 as usually transcribed).
    Literal,
}

/// A27: initial TTQ scales.
///
/// Guide: [TTQ](crate::guide#ttq).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TtqScaleInit {
    /// W^p = W^n = 1.
    #[default]
    One,
    /// W^p (W^n) = mean |W| / max|W| over I^p (I^n).
    TwnAlpha,
}

/// All knobs of the method and of its training loop. Defaults = spec section 15.
///
/// Guide: [Knob index](crate::guide#knob-index).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HlaConfig {
    /// Which method trains: `hla` (Algorithm 1), the baselines `twn` (TWN) and `ttq` (TTQ), or `fp`
    /// fine-tuning.
    pub method: Method,
    /// A1, Eq. 8: whether T(t) is one quantile over all quantised layers or one per layer.
    pub threshold_scope: ThresholdScope,
    /// A2, Eq. 8: which order statistic of the sorted |W| T(t) returns.
    pub quantile_index: QuantileIndex,
    /// A3, Alg. 1 line 2: the first stage-1 sparsity t, in percent.
    pub t_start_pct: u32,
    /// A4, Alg. 1 line 10: the step of t between stage-1 sub-stages, in percent.
    pub t_step_pct: u32,
    /// A4, Alg. 1 line 2: stage 1 runs while t < t_end (percent).
    pub t_end_pct: u32,
    /// A4, Alg. 1 line 2: also run a sub-stage at exactly t = t_end.
    pub t_include_end: bool,
    /// A5, Alg. 1 line 3: when the stage-1 threshold Δ = T(t) is recomputed.
    pub stage1_delta_refresh: DeltaRefresh,
    /// A6, Alg. 1 line 4: epochs of each stage-1 sub-stage; may be fractional (0.5), counted in
    /// optimizer steps (see `algorithm`).
    pub stage1_epochs_per_stage: f64,
    /// A7, Eq. 6: the weight λ of L_d in the objective (0 = no L_d, Table 4 "Hypersphere").
    pub lambda_d: f64,
    /// A8, Eq. 6: how the per-layer L_d terms are combined.
    pub ld_reduce: LdReduce,
    /// A9, Eq. 7: pass L_d's gradient through Ŵ by the STE as well (false = Ŵ detached).
    pub ld_ste: bool,
    /// A10, Eqs. 4–5: what a row with no |w| > Δ becomes (its ‖w_j‖₀ would be 0).
    pub empty_row: EmptyRow,
    /// A11, Alg. 1 line 12: stage 2 starts with Δ̄ = T(stage2_init_pct) over the unit rows.
    pub stage2_init_pct: u32,
    /// A13, Eqs. 11–12: the scaling S of the straight-through gradient.
    pub ste_scale: SteScale,
    /// A14(a), Eq. 13: which gradient Δ̄'s gradient averages.
    pub delta_grad_source: DeltaGradSource,
    /// A14(b), Eq. 13: which entries enter Δ̄'s gradient.
    pub delta_grad_mask: DeltaGradMask,
    /// A14(c), Eq. 13: the divisor of Δ̄'s gradient.
    pub delta_grad_norm: DeltaGradNorm,
    /// A14(e), Eq. 13: the sign convention of Δ̄'s gradient.
    pub delta_grad_sign: DeltaGradSign,
    /// A15, Alg. 1 line 20: Δ̄'s learning rate as a multiple of `lr`.
    pub delta_lr_mult: f64,
    /// A15, Alg. 1 line 20: Δ̄'s SGD momentum.
    pub delta_momentum: f64,
    /// A15, Alg. 1 line 20: Δ̄'s weight decay (the spec excludes Δ̄ from decay).
    pub delta_wd: f64,
    /// A16, Eq. 3: whether hyperspherical layers also normalise their input patches.
    pub input_norm: InputNorm,
    /// A16, Eq. 3: epsilon inside the input patch norm.
    pub eps_x: f64,
    /// A16, Eq. 3: epsilon inside the weight row norm.
    pub eps_w: f64,
    /// A17, Eq. 3: how the weight rows are kept on the unit sphere.
    pub norm_mode: NormMode,
    /// A17, Eq. 3: which layers are hyperspherical.
    pub hyperspherical_layers: HypersphericalLayers,
    /// A18, Eq. 3: also normalise the input of quantised layers with no BatchNorm after them.
    pub no_bn_input_norm: bool,
    /// A18, Eq. 3: the per-row gain of quantised layers with no BatchNorm after them.
    pub no_bn_gain: NoBnGain,
    /// A19, Alg. 1 line 0: SGDR period in epochs (may be fractional), of stage 1 and the warm-up,
    /// and of stage 2 and the baselines unless `sgdr_t0_epochs_stage2` is set. Each phase starts
    /// a fresh cycle.
    pub sgdr_t0_epochs: f64,
    /// A19, Alg. 1 line 0: SGDR period of stage 2 and the baselines in epochs (unset:
    /// `sgdr_t0_epochs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sgdr_t0_epochs_stage2: Option<f64>,
    /// A19, Alg. 1 line 0: SGDR period multiplier.
    pub sgdr_t_mult: usize,
    /// A19, Alg. 1 line 0: SGDR minimum learning rate (at most `lr`).
    pub sgdr_eta_min: f64,
    /// A20, Alg. 1 line 13: stage-2 epochs (may be fractional; 0 ends an HLA run after stage 1);
    /// also the training length of FP/TWN/TTQ runs.
    pub stage2_epochs: f64,
    /// A21, Alg. 1 line 1: hyperspherical warm-up epochs with λ = 0 before stage 1.
    pub hs_warmup_epochs: f64,
    /// A22, Table 4: how the similarity Sim is averaged.
    pub sim_average: SimAverage,
    /// A22, Table 4: the sparsity t (percent) at which Sim is measured.
    pub sim_t_pct: u32,
    /// A23: names of layers kept in full precision; unset = the model's own quantisable flags
    /// (first conv and classifier full precision).
    pub skip_layers: Option<Vec<String>>,
    /// A24, Alg. 1 line 0: fp16 activations (not supported: activations are f32; must stay false).
    pub amp: bool,
    /// A26, Alg. 1 line 0: weight decay on BatchNorm affine parameters.
    pub wd_on_bn: bool,
    /// A27, TTQ: the gradient of TTQ's negative scale W^n.
    pub ttq_wn_grad: TtqWnGrad,
    /// A27, TTQ: the initial scales W^p, W^n.
    pub ttq_scale_init: TtqScaleInit,
    /// A27, TTQ: multiply the latent-weight gradient by 1/max|W|.
    pub ttq_grad_div_max: bool,
    /// A27, TTQ: before TTQ training, divide each quantised layer's latent weights once by their
    /// max|W| so they lie in [−1, 1], as the TTQ paper describes (default true). The ternary
    /// assignment (Δ = t·max|W|) does not depend on it, but the initial scales W^p = W^n = 1
    /// (`ttq_scale_init = one`) are the scale of normalised weights, and the step size relative
    /// to the latent weights (which decides how fast assignments flip) differs by max|W|
    /// (≈ 0.1–0.5 for pretrained convolutions). `false` keeps the pretrained scale.
    pub ttq_normalize_init: bool,
    /// TTQ: the threshold factor t in Δ = t·max|W|.
    pub ttq_threshold: f64,
    /// TWN: the threshold factor f in Δ = f·mean|W|.
    pub twn_threshold: f64,
    /// Training-mode forwards (no update) that re-estimate the BatchNorm statistics after the
    /// conversion and before every evaluation (0 = off; stale statistics after the conversion of
    /// Eq. 3).
    pub bn_recalibrate_batches: usize,
    /// Alg. 1 line 0: the peak learning rate of the quantisation phases.
    pub lr: f64,
    /// Alg. 1 line 0: SGD momentum.
    pub momentum: f64,
    /// Alg. 1 line 0: weight decay of the trainable weights (not Δ̄, not the TTQ scales).
    pub weight_decay: f64,
    /// Alg. 1 line 0: Nesterov momentum.
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

/// The allowed values of a numeric knob: an interval `lo ≤ x ≤ hi` whose ends may be open,
/// and always finite. One table ([`HlaConfig::NUMERIC`]) both enforces the domains and prints
/// them in `docs/knobs.md`, so the two cannot disagree.
///
/// Guide: [Knob index](crate::guide#knob-index).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Domain {
    /// Lower bound.
    pub lo: f64,
    /// `lo` itself is excluded.
    pub lo_open: bool,
    /// Upper bound.
    pub hi: f64,
    /// `hi` itself is excluded.
    pub hi_open: bool,
}

impl Domain {
    /// `lo ≤ x ≤ hi`.
    ///
    /// Guide: [Knob index](crate::guide#knob-index).
    pub const fn closed(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            lo_open: false,
            hi,
            hi_open: false,
        }
    }

    /// `lo < x ≤ hi`.
    ///
    /// Guide: [Knob index](crate::guide#knob-index).
    pub const fn above(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            lo_open: true,
            hi,
            hi_open: false,
        }
    }

    /// `lo ≤ x < hi`.
    ///
    /// Guide: [Knob index](crate::guide#knob-index).
    pub const fn below(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            lo_open: false,
            hi,
            hi_open: true,
        }
    }

    /// Whether `v` is finite and inside the interval.
    ///
    /// Guide: [Knob index](crate::guide#knob-index).
    pub fn contains(&self, v: f64) -> bool {
        let lo_ok = if self.lo_open {
            v > self.lo
        } else {
            v >= self.lo
        };
        let hi_ok = if self.hi_open {
            v < self.hi
        } else {
            v <= self.hi
        };
        v.is_finite() && lo_ok && hi_ok
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lo = if self.lo_open { "<" } else { "<=" };
        let hi = if self.hi_open { "<" } else { "<=" };
        write!(f, "{} {lo} x {hi} {}", self.lo, self.hi)
    }
}

/// A numeric knob of a config section `C`: its name, its [`Domain`], and how to read it
/// (`None` when an optional knob is unset).
///
/// Guide: [Knob index](crate::guide#knob-index).
#[derive(Clone, Copy)]
pub struct NumericKnob<C> {
    /// Field name, as in the TOML section.
    pub name: &'static str,
    /// Allowed values.
    pub domain: Domain,
    /// Reads the value as f64 (exact for every integer knob: all are below 2^53).
    pub get: fn(&C) -> Option<f64>,
}

impl<C> NumericKnob<C> {
    /// The first knob of `table` whose value in `c` lies outside its domain, with that value.
    ///
    /// Guide: [Knob index](crate::guide#knob-index).
    pub fn first_violation(table: &[Self], c: &C) -> Option<(&'static str, f64, Domain)> {
        table.iter().find_map(|k| {
            (k.get)(c)
                .filter(|v| !k.domain.contains(*v))
                .map(|v| (k.name, v, k.domain))
        })
    }
}

impl<C> std::fmt::Debug for NumericKnob<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.domain)
    }
}

/// One epoch count's domain (fractional epochs are counted in steps; see `algorithm`).
const EPOCHS: Domain = Domain::above(0.0, 1e6);
/// A sparsity in percent, 0 < t < 1.
const PCT: Domain = Domain::closed(1.0, 99.0);

impl HlaConfig {
    /// Every numeric knob of `[hla]` with its allowed values. `validate` checks these first,
    /// then the constraints between knobs: `t_start_pct < t_end_pct` (or `=` with
    /// `t_include_end`), `t_end_pct < 100` with `t_include_end`, `sgdr_eta_min <= lr`.
    ///
    /// Guide: [Knob index](crate::guide#knob-index).
    #[rustfmt::skip]
    pub const NUMERIC: &'static [NumericKnob<HlaConfig>] = &[
        NumericKnob { name: "t_start_pct", domain: PCT, get: |c| Some(c.t_start_pct.into()) },
        NumericKnob { name: "t_step_pct", domain: Domain::closed(1.0, 98.0), get: |c| Some(c.t_step_pct.into()) },
        NumericKnob { name: "t_end_pct", domain: Domain::closed(0.0, 100.0), get: |c| Some(c.t_end_pct.into()) },
        NumericKnob { name: "stage1_epochs_per_stage", domain: EPOCHS, get: |c| Some(c.stage1_epochs_per_stage) },
        NumericKnob { name: "lambda_d", domain: Domain::closed(0.0, 1e6), get: |c| Some(c.lambda_d) },
        NumericKnob { name: "stage2_init_pct", domain: PCT, get: |c| Some(c.stage2_init_pct.into()) },
        NumericKnob { name: "delta_lr_mult", domain: Domain::closed(0.0, 1e6), get: |c| Some(c.delta_lr_mult) },
        NumericKnob { name: "delta_momentum", domain: Domain::below(0.0, 1.0), get: |c| Some(c.delta_momentum) },
        NumericKnob { name: "delta_wd", domain: Domain::closed(0.0, 1.0), get: |c| Some(c.delta_wd) },
        NumericKnob { name: "eps_x", domain: Domain::closed(0.0, 1.0), get: |c| Some(c.eps_x) },
        NumericKnob { name: "eps_w", domain: Domain::closed(0.0, 1.0), get: |c| Some(c.eps_w) },
        NumericKnob { name: "sgdr_t0_epochs", domain: EPOCHS, get: |c| Some(c.sgdr_t0_epochs) },
        NumericKnob { name: "sgdr_t0_epochs_stage2", domain: EPOCHS, get: |c| c.sgdr_t0_epochs_stage2 },
        NumericKnob { name: "sgdr_t_mult", domain: Domain::closed(1.0, 10.0), get: |c| Some(c.sgdr_t_mult as f64) },
        NumericKnob { name: "sgdr_eta_min", domain: Domain::closed(0.0, 10.0), get: |c| Some(c.sgdr_eta_min) },
        NumericKnob { name: "stage2_epochs", domain: Domain::closed(0.0, 1e6), get: |c| Some(c.stage2_epochs) },
        NumericKnob { name: "hs_warmup_epochs", domain: Domain::closed(0.0, 1e6), get: |c| Some(c.hs_warmup_epochs) },
        NumericKnob { name: "sim_t_pct", domain: PCT, get: |c| Some(c.sim_t_pct.into()) },
        NumericKnob { name: "ttq_threshold", domain: Domain::below(0.0, 1.0), get: |c| Some(c.ttq_threshold) },
        NumericKnob { name: "twn_threshold", domain: Domain::closed(0.0, 10.0), get: |c| Some(c.twn_threshold) },
        NumericKnob { name: "bn_recalibrate_batches", domain: Domain::closed(0.0, 1e6), get: |c| Some(c.bn_recalibrate_batches as f64) },
        NumericKnob { name: "lr", domain: Domain::above(0.0, 10.0), get: |c| Some(c.lr) },
        NumericKnob { name: "momentum", domain: Domain::below(0.0, 1.0), get: |c| Some(c.momentum) },
        NumericKnob { name: "weight_decay", domain: Domain::closed(0.0, 1.0), get: |c| Some(c.weight_decay) },
    ];

    /// Parses a TOML document (unknown fields are errors), then validates it.
    ///
    /// Guide: [Knob index](crate::guide#knob-index).
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
    /// Guide: [Knob index](crate::guide#knob-index).
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
    /// Guide: [Knob index](crate::guide#knob-index).
    ///
    /// # Errors
    /// `Config` naming the first offending knob.
    pub fn validate(&self) -> Result<()> {
        if let Some((knob, v, domain)) = NumericKnob::first_violation(Self::NUMERIC, self) {
            return Err(bad(knob, v, &format!("must be in {domain}")));
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
        if self.sgdr_eta_min > self.lr {
            return Err(bad("sgdr_eta_min", self.sgdr_eta_min, "must be <= lr"));
        }
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
    ///
    /// Guide: [Alg. 1 line 2](crate::guide#alg1-line-2).
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
