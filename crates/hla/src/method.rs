//! The method plugged into a model: a [`LayerHook`] computing every quantisable layer per mode
//! (FP / hyperspherical stage 1 / ternary stage 2 / TWN / TTQ) and collecting L_d terms, the
//! method-owned parameters (Δ̄ per layer, TTQ W^p/W^n, A18 gains), Algorithm 1's state, and one
//! generic training step (forward, J = CE + λ·L_d, backward, SGD, Δ̄ update and clamp).
//!
//! Driving a run (the CLI does the same with its data loader):
//! ```text
//! let mut st = MethodState::new(cfg, model)?;
//! let (mut sgd, groups) = model_optimizer(&cfg, model);
//! while !st.algo.is_done() {
//!     st.begin_epoch(model)?;                       // Δ = T(t) / Δ̄ = T(80) when due
//!     for (x, y) in batches { let lr = st.lr(steps_per_epoch)?;
//!                             train_step(model, &mut st, &mut sgd, &groups, x, &y, lr)?; }
//!     st.end_epoch();                               // checkpoint st.checkpoint() here
//! }
//! ```

use crate::algorithm::{Algorithm1, EpochPlan, Phase};
use crate::config::{HlaConfig, InputNorm, Method, NoBnGain, NormMode};
use crate::error::{HlaError, Result};
use crate::ld::normalize_rows;
use crate::metrics::{layer_metrics, summarize, LayerMetrics, ModelMetrics};
use crate::ops::{
    ld_term, ld_total, normalized_conv2d, normalized_linear, ternary_ste, ttq, twn, TernarySte,
    TtqOp,
};
use crate::real::{from_rows, with_rows};
use crate::ternary::ternarize_rows;
use crate::threshold::thresholds;
use crate::ttq::{ttq_forward, ttq_init_scales};
use crate::twn::twn_quantize;
use hla_autograd::optim::{ParamGroup, Sgd, SgdConfig};
use hla_autograd::schedule::{CosineWarmRestarts, LrSchedule};
use hla_autograd::{ops, Conv2dParams, Gradients, Param, Tape, Var};
use hla_models::{LayerHook, LayerKind, Mode, Model, ModelError, QuantLayerInfo};
use ndarray::{Array2, ArrayD};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How the hook computes quantisable layers right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookMode {
    /// Plain layers (the model's own computation).
    Fp,
    /// Hyperspherical FP forward with normalised weights (warm-up and stage 1); L_d against
    /// Ternary(W, Δ) when λ > 0.
    Hyperspherical,
    /// Hyperspherical forward with Ŵ = Ternary(W, Δ̄) via the STE (stage 2), plus L_d.
    Ternary,
    /// TWN on the latent weights (plain layers).
    Twn,
    /// TTQ on the latent weights (plain layers).
    Ttq,
}

/// Method state of one quantised layer.
#[derive(Debug)]
pub struct LayerState {
    /// The model's description of the layer.
    pub info: QuantLayerInfo,
    /// Stage-1 threshold Δ in force.
    pub delta: f64,
    /// Stage-2 learnable threshold Δ̄ (`[1]`), no weight decay, clamped ≥ 0.
    pub delta_bar: Param<f32>,
    /// TTQ positive scale W^p (`[1]`), clamped ≥ 0.
    pub ttq_wp: Param<f32>,
    /// TTQ negative scale W^n (`[1]`), clamped ≥ 0.
    pub ttq_wn: Param<f32>,
    /// A18 per-row gain (`[n]`) of a hyperspherical layer with no BN after it.
    pub gain: Option<Param<f32>>,
}

/// The [`LayerHook`] of the method.
#[derive(Debug)]
pub struct HlaHook {
    cfg: HlaConfig,
    mode: HookMode,
    lambda: f64,
    /// Quantised layers in the model's forward order.
    pub layers: Vec<LayerState>,
    index: BTreeMap<String, usize>,
    /// Quantisable layers excluded by `skip_layers` (A23): computed plainly.
    skipped: BTreeSet<String>,
    ld_terms: Vec<Var>,
}

fn hook_err(reason: String) -> ModelError {
    ModelError::BadConfig {
        arch: "hla hook".into(),
        reason,
    }
}

fn scalar_param(v: f64) -> Param<f32> {
    Param::new(ArrayD::from_elem(vec![1], v as f32))
}

fn first(p: &Param<f32>) -> f64 {
    p.value().iter().next().copied().unwrap_or(0.0) as f64
}

impl HlaHook {
    /// Current mode.
    pub fn mode(&self) -> HookMode {
        self.mode
    }

    /// Sets the mode and the L_d weight λ (0 disables L_d).
    pub fn set_mode(&mut self, mode: HookMode, lambda: f64) {
        self.mode = mode;
        self.lambda = lambda;
    }

    fn layer_index(&self, layer: &str) -> hla_models::Result<usize> {
        self.index.get(layer).copied().ok_or_else(|| {
            hook_err(format!(
                "layer {layer:?} is not a quantised layer of this method state"
            ))
        })
    }

    /// Normalised rows of the latent weight (reparam) or the weight itself (project).
    fn normalized(&self, tape: &mut Tape<f32>, w: Var) -> hla_autograd::Result<Var> {
        match self.cfg.norm_mode {
            NormMode::Reparam => ops::normalize_rows(tape, w, self.cfg.eps_w as f32),
            NormMode::Project => Ok(w),
        }
    }

    /// The weight the layer computes with and whether the layer is hyperspherical; records L_d.
    fn effective_weight(
        &mut self,
        tape: &mut Tape<f32>,
        i: usize,
        w: Var,
    ) -> hla_models::Result<(Var, bool)> {
        let rec = tape.is_recording();
        let ld_on = rec && self.lambda > 0.0;
        Ok(match self.mode {
            HookMode::Fp => (w, false),
            HookMode::Twn => (twn(tape, w, self.cfg.twn_threshold)?, false),
            HookMode::Ttq => {
                let l = &self.layers[i];
                let wp = tape.param(&l.ttq_wp);
                let wn = tape.param(&l.ttq_wn);
                let op = TtqOp {
                    threshold: self.cfg.ttq_threshold,
                    wn_grad: self.cfg.ttq_wn_grad,
                    grad_div_max: self.cfg.ttq_grad_div_max,
                };
                (ttq(tape, w, wp, wn, op)?, false)
            }
            HookMode::Hyperspherical => {
                let wn = self.normalized(tape, w)?;
                if ld_on {
                    let delta = self.layers[i].delta as f32;
                    let q = if self.cfg.ld_ste {
                        let d = tape.constant(ArrayD::from_elem(vec![1], delta));
                        ternary_ste(tape, wn, d, TernarySte::from_config(&self.cfg))?
                    } else {
                        let qv = with_rows("hook", tape.value(wn).view(), |r| {
                            ternarize_rows(r, delta, self.cfg.empty_row).dequantize()
                        })
                        .map_err(|e| hook_err(e.to_string()))?;
                        let shape = tape.shape(wn).to_vec();
                        tape.constant(from_rows(qv, &shape))
                    };
                    let t = ld_term(tape, wn, q)?;
                    self.ld_terms.push(t);
                }
                (wn, true)
            }
            HookMode::Ternary => {
                let wn = self.normalized(tape, w)?;
                let d = tape.param(&self.layers[i].delta_bar);
                let op = TernarySte::from_config(&self.cfg);
                let q = ternary_ste(tape, wn, d, op)?;
                if ld_on {
                    let qd = if self.cfg.ld_ste {
                        // STE for L_d too, but Δ̄ sees only the task path (A14(d))
                        let dc = tape.constant(tape.value(d).clone());
                        ternary_ste(tape, wn, dc, op)?
                    } else {
                        ops::detach(tape, q)?
                    };
                    let t = ld_term(tape, wn, qd)?;
                    self.ld_terms.push(t);
                }
                (q, true)
            }
        })
    }

    /// Whether a hyperspherical layer normalises its input (A16, A18).
    fn input_norm_on(&self, i: usize) -> bool {
        self.cfg.input_norm == InputNorm::Patch
            && (self.layers[i].info.followed_by_bn || self.cfg.no_bn_input_norm)
    }

    /// Takes the L_d terms recorded since the last call and returns λ·reduce(L_d) (A7, A8).
    ///
    /// # Errors
    /// Tape errors.
    pub fn take_ld(&mut self, tape: &mut Tape<f32>) -> hla_autograd::Result<Option<Var>> {
        let terms = std::mem::take(&mut self.ld_terms);
        ld_total(tape, &terms, self.cfg.ld_reduce, self.lambda)
    }

    /// Drops recorded L_d terms (e.g. after an evaluation forward).
    pub fn clear_ld(&mut self) {
        self.ld_terms.clear();
    }
}

impl LayerHook for HlaHook {
    fn conv2d(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w: Var,
        p: &Conv2dParams,
        _mode: Mode,
    ) -> hla_models::Result<Var> {
        if self.skipped.contains(layer) {
            return Ok(ops::conv2d(tape, x, w, None, p)?);
        }
        let i = self.layer_index(layer)?;
        let (q, hs) = self.effective_weight(tape, i, w)?;
        let mut y = if hs && self.input_norm_on(i) {
            normalized_conv2d(tape, x, q, p, self.cfg.eps_x)?
        } else {
            ops::conv2d(tape, x, q, None, p)?
        };
        if hs {
            if let Some(g) = &self.layers[i].gain {
                let n = g.len();
                let gv = tape.param(g);
                let g4 = ops::reshape(tape, gv, &[1, n, 1, 1])?;
                y = ops::mul(tape, y, g4)?;
            }
        }
        Ok(y)
    }

    fn linear(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w: Var,
        b: Option<Var>,
        _mode: Mode,
    ) -> hla_models::Result<Var> {
        if self.skipped.contains(layer) {
            return Ok(ops::linear(tape, x, w, b)?);
        }
        let i = self.layer_index(layer)?;
        let (q, hs) = self.effective_weight(tape, i, w)?;
        if !hs {
            return Ok(ops::linear(tape, x, q, b)?);
        }
        let mut y = if self.input_norm_on(i) {
            normalized_linear(tape, x, q, None, self.cfg.eps_x)?
        } else {
            ops::linear(tape, x, q, None)?
        };
        if let Some(g) = &self.layers[i].gain {
            let gv = tape.param(g);
            y = ops::mul(tape, y, gv)?;
        }
        Ok(match b {
            Some(b) => ops::add(tape, y, b)?,
            None => y,
        })
    }
}

/// One quantised layer as the current mode sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedLayer {
    /// Full-precision rows the quantiser saw, `[n, m]` (normalised for HLA, latent for TWN/TTQ).
    pub w: Array2<f32>,
    /// Fake-quantised Ŵ, `[n, m]`.
    pub what: Array2<f32>,
    /// Threshold in force (Δ, Δ̄_l, or the TWN/TTQ Δ).
    pub threshold: Option<f64>,
}

/// Serialisable method state for checkpoints: Algorithm 1 plus the method-owned parameters and
/// their optimiser buffers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodCheckpoint {
    /// Algorithm 1's state.
    pub algo: Algorithm1,
    /// Per quantised layer (forward order): (layer, Δ, Δ̄, W^p, W^n, gain).
    pub layers: Vec<LayerCheckpoint>,
    /// Momentum buffers of the Δ̄ optimiser (flattened; `None` = not yet created).
    pub delta_momentum: Vec<Option<Vec<f32>>>,
    /// Momentum buffers of the TTQ-scale / gain optimiser.
    pub aux_momentum: Vec<Option<Vec<f32>>>,
}

/// One layer of a [`MethodCheckpoint`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerCheckpoint {
    /// Layer name.
    pub layer: String,
    /// Stage-1 Δ.
    pub delta: f64,
    /// Δ̄.
    pub delta_bar: f32,
    /// TTQ W^p.
    pub ttq_wp: f32,
    /// TTQ W^n.
    pub ttq_wn: f32,
    /// A18 gain, if any.
    pub gain: Option<Vec<f32>>,
}

/// Statistics of one training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// J = CE + λ·L_d.
    pub loss: f64,
    /// Cross-entropy.
    pub ce: f64,
    /// λ·L_d (0 when off).
    pub ld: f64,
    /// Correct top-1 predictions in the batch.
    pub correct: usize,
    /// Batch size.
    pub n: usize,
    /// Learning rate used.
    pub lr: f64,
}

/// Everything the method adds to a model: hook, Algorithm 1, Δ̄ / TTQ / gain optimisers.
#[derive(Debug)]
pub struct MethodState {
    /// The configuration (validated).
    pub cfg: HlaConfig,
    /// Algorithm 1's state.
    pub algo: Algorithm1,
    /// The layer hook (owns Δ̄, TTQ scales, gains).
    pub hook: HlaHook,
    delta_sgd: Sgd<f32>,
    aux_sgd: Sgd<f32>,
}

/// The SGD optimiser for a model's own parameters and their groups (weight decay on all, or on
/// all but rank-1 parameters — BN affine and biases — when `wd_on_bn = false`, A26).
pub fn model_optimizer(cfg: &HlaConfig, model: &dyn Model) -> (Sgd<f32>, Vec<ParamGroup>) {
    let sgd = Sgd::new(SgdConfig {
        lr: cfg.lr,
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        nesterov: cfg.nesterov,
    });
    let groups = model
        .params()
        .iter()
        .map(|(_, p)| ParamGroup {
            weight_decay: if !cfg.wd_on_bn && p.shape().len() == 1 {
                0.0
            } else {
                cfg.weight_decay
            },
            lr_mult: 1.0,
        })
        .collect();
    (sgd, groups)
}

fn param_by_name<'a>(model: &'a dyn Model, name: &str) -> Result<&'a Param<f32>> {
    model
        .params()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
        .ok_or_else(|| HlaError::UnknownLayer {
            op: "method",
            layer: name.to_string(),
        })
}

impl MethodState {
    /// Sets up the method for `model`: the quantised layers are `model.quantisable()` minus
    /// `skip_layers` (A23); TTQ scales and A18 gains are initialised from the current weights.
    ///
    /// # Errors
    /// `Config` for an invalid configuration; `UnknownLayer` if a weight name is missing.
    pub fn new(cfg: HlaConfig, model: &dyn Model) -> Result<Self> {
        let algo = Algorithm1::new(&cfg)?;
        let skip = cfg.skip_layers.clone().unwrap_or_default();
        let mut layers = Vec::new();
        let mut index = BTreeMap::new();
        let mut skipped = BTreeSet::new();
        for info in model.quantisable() {
            if skip.contains(&info.layer) {
                skipped.insert(info.layer.clone());
                continue;
            }
            let w = param_by_name(model, &info.weight)?.value();
            let (wp, wn) = ttq_init_scales(w.view(), cfg.ttq_threshold as f32, cfg.ttq_scale_init);
            let gain = if cfg.method == Method::Hla
                && !info.followed_by_bn
                && cfg.no_bn_gain == NoBnGain::Learnable
            {
                let norms = with_rows("gain init", w.view(), |r| normalize_rows(r, 0.0).1)?;
                Some(Param::new(norms.into_dyn()))
            } else {
                None
            };
            index.insert(info.layer.clone(), layers.len());
            layers.push(LayerState {
                info,
                delta: 0.0,
                delta_bar: scalar_param(0.0),
                ttq_wp: scalar_param(wp as f64),
                ttq_wn: scalar_param(wn as f64),
                gain,
            });
        }
        let hook = HlaHook {
            cfg: cfg.clone(),
            mode: HookMode::Fp,
            lambda: 0.0,
            layers,
            index,
            skipped,
            ld_terms: Vec::new(),
        };
        let delta_sgd = Sgd::new(SgdConfig {
            lr: cfg.lr,
            momentum: cfg.delta_momentum,
            weight_decay: cfg.delta_wd,
            nesterov: false,
        });
        let aux_sgd = Sgd::new(SgdConfig {
            lr: cfg.lr,
            momentum: cfg.momentum,
            weight_decay: 0.0,
            nesterov: false,
        });
        let mut st = Self {
            cfg,
            algo,
            hook,
            delta_sgd,
            aux_sgd,
        };
        st.sync_mode();
        Ok(st)
    }

    /// The hook mode of the current phase.
    pub fn phase_mode(&self) -> HookMode {
        match (self.cfg.method, self.algo.phase) {
            (Method::Fp, _) => HookMode::Fp,
            (Method::Twn, _) => HookMode::Twn,
            (Method::Ttq, _) => HookMode::Ttq,
            (Method::Hla, Phase::Warmup | Phase::Stage1) => HookMode::Hyperspherical,
            (Method::Hla, _) => HookMode::Ternary,
        }
    }

    fn sync_mode(&mut self) {
        let plan = self.algo.plan(false);
        self.hook.set_mode(self.phase_mode(), plan.lambda);
    }

    /// The normalised weights `[n, m]` of every quantised layer (the quantiser's input for HLA).
    ///
    /// # Errors
    /// `UnknownLayer` if a weight is missing from the model.
    pub fn normalized_weights(&self, model: &dyn Model) -> Result<Vec<Array2<f32>>> {
        self.hook
            .layers
            .iter()
            .map(|l| {
                let v = param_by_name(model, &l.info.weight)?.value();
                with_rows("normalized_weights", v.view(), |r| {
                    match self.cfg.norm_mode {
                        NormMode::Reparam => normalize_rows(r, self.cfg.eps_w as f32).0,
                        NormMode::Project => r.to_owned(),
                    }
                })
            })
            .collect()
    }

    /// T(pct) over the quantised layers' normalised weights under the configured scope.
    ///
    /// # Errors
    /// Threshold errors (empty / non-finite weights).
    pub fn threshold_values(&self, model: &dyn Model, pct: u32) -> Result<Vec<f64>> {
        let ws = self.normalized_weights(model)?;
        let views: Vec<_> = ws.iter().map(|a| a.view().into_dyn()).collect();
        if views.is_empty() {
            return Ok(Vec::new());
        }
        let ts = thresholds(
            &views,
            pct,
            self.cfg.threshold_scope,
            self.cfg.quantile_index,
        )?;
        Ok(ts.into_iter().map(|t| t as f64).collect())
    }

    /// Prepares the coming epoch: sets the hook mode and λ, computes Δ = T(t) at the start of a
    /// stage-1 sub-stage and Δ̄ = T(stage2_init_pct) at the start of stage 2 (global scope by
    /// default: one value for every layer), and re-applies stored thresholds after a resume.
    ///
    /// # Errors
    /// Threshold errors; `State` if the run is done.
    pub fn begin_epoch(&mut self, model: &dyn Model) -> Result<EpochPlan> {
        if self.algo.is_done() {
            return Err(HlaError::State {
                op: "begin_epoch",
                reason: "the run is finished".into(),
            });
        }
        self.hook.clear_ld();
        self.sync_mode();
        let plan = self.algo.plan(false);
        if plan.needs_delta {
            let t = plan.t_pct.expect("stage 1 has t");
            let d = self.threshold_values(model, t)?;
            self.algo.set_delta(d)?;
        }
        if let Some(pct) = plan.init_delta_bar_pct {
            let d = self.threshold_values(model, pct)?;
            for (l, &v) in self.hook.layers.iter_mut().zip(&d) {
                *l.delta_bar.value_mut() = ArrayD::from_elem(vec![1], v as f32);
            }
            self.algo.set_delta_bar(d)?;
        }
        if let Some(d) = &self.algo.delta {
            for (l, &v) in self.hook.layers.iter_mut().zip(d) {
                l.delta = v;
            }
        }
        Ok(plan)
    }

    /// Per-step work before the forward: with `stage1_delta_refresh = per_step`, Δ = T(t) from
    /// the current weights.
    ///
    /// # Errors
    /// Threshold errors.
    pub fn before_step(&mut self, model: &dyn Model) -> Result<()> {
        use crate::config::DeltaRefresh;
        if self.cfg.stage1_delta_refresh == DeltaRefresh::PerStep
            && self.algo.phase == Phase::Stage1
        {
            let t = self.algo.t_pct().expect("stage 1 has t");
            let d = self.threshold_values(model, t)?;
            for (l, &v) in self.hook.layers.iter_mut().zip(&d) {
                l.delta = v;
            }
            self.algo.set_delta(d)?;
        }
        Ok(())
    }

    /// The hook to pass to `Model::forward` (`None` for full precision).
    pub fn hook_mut(&mut self) -> Option<&mut dyn LayerHook> {
        match self.hook.mode {
            HookMode::Fp => None,
            _ => Some(&mut self.hook),
        }
    }

    /// λ·L_d recorded by the last training forward (drains the hook's terms).
    ///
    /// # Errors
    /// Tape errors.
    pub fn extra_loss(&mut self, tape: &mut Tape<f32>) -> Result<Option<Var>> {
        Ok(self.hook.take_ld(tape)?)
    }

    /// Learning rate of step `algo.steps_done`: per-iteration SGDR with T_0 = sgdr_t0_epochs ·
    /// `steps_per_epoch` (A19).
    ///
    /// # Errors
    /// `Config` for `steps_per_epoch == 0`.
    pub fn lr(&self, steps_per_epoch: usize) -> Result<f64> {
        if steps_per_epoch == 0 {
            return Err(HlaError::Config {
                knob: "steps_per_epoch",
                value: "0".into(),
                reason: "an epoch needs at least one step".into(),
            });
        }
        let s = CosineWarmRestarts::new(
            self.cfg.lr,
            (self.cfg.sgdr_t0_epochs * steps_per_epoch) as u64,
            self.cfg.sgdr_t_mult as u64,
            self.cfg.sgdr_eta_min,
        )?;
        Ok(s.lr(self.algo.steps_done))
    }

    /// Updates the method-owned parameters from `grads` (Δ̄ in stage 2 with its own momentum,
    /// lr × delta_lr_mult and no decay; TTQ scales and gains with the model's momentum, no
    /// decay), then clamps Δ̄, W^p, W^n ≥ 0.
    ///
    /// # Errors
    /// Optimiser errors.
    pub fn step_extras(&mut self, grads: &mut Gradients<f32>, lr: f64) -> Result<()> {
        let stage2 = self.hook.mode == HookMode::Ternary;
        let ttq_on = self.hook.mode == HookMode::Ttq;
        let dgroup = ParamGroup {
            weight_decay: self.cfg.delta_wd,
            lr_mult: self.cfg.delta_lr_mult,
        };
        let agroup = ParamGroup::no_decay();
        let dgrads: Vec<Option<ArrayD<f32>>> = self
            .hook
            .layers
            .iter()
            .map(|l| {
                if stage2 {
                    grads.take_param(&l.delta_bar)
                } else {
                    None
                }
            })
            .collect();
        let mut agrads: Vec<Option<ArrayD<f32>>> = Vec::new();
        for l in &self.hook.layers {
            agrads.push(if ttq_on {
                grads.take_param(&l.ttq_wp)
            } else {
                None
            });
            agrads.push(if ttq_on {
                grads.take_param(&l.ttq_wn)
            } else {
                None
            });
            if let Some(g) = &l.gain {
                agrads.push(grads.take_param(g));
            }
        }
        {
            let mut entries: Vec<_> = self
                .hook
                .layers
                .iter_mut()
                .zip(&dgrads)
                .map(|(l, g)| (&mut l.delta_bar, g.as_ref(), &dgroup))
                .collect();
            self.delta_sgd.step(lr, &mut entries)?;
        }
        {
            let mut entries = Vec::new();
            let mut gi = agrads.iter();
            for l in self.hook.layers.iter_mut() {
                entries.push((&mut l.ttq_wp, gi.next().and_then(|g| g.as_ref()), &agroup));
                entries.push((&mut l.ttq_wn, gi.next().and_then(|g| g.as_ref()), &agroup));
                if let Some(g) = l.gain.as_mut() {
                    entries.push((g, gi.next().and_then(|g| g.as_ref()), &agroup));
                }
            }
            self.aux_sgd.step(lr, &mut entries)?;
        }
        self.clamp_extras();
        Ok(())
    }

    /// The method-owned trainable parameters with their groups, in a fixed order (per layer:
    /// Δ̄, W^p, W^n, then the gain if any), for callers that step them with their own optimiser
    /// instead of [`step_extras`](Self::step_extras). Δ̄: weight decay `delta_wd`, lr ×
    /// `delta_lr_mult`; TTQ scales and gains: no decay. (With a shared optimiser Δ̄ uses that
    /// optimiser's momentum, not `delta_momentum`.) Call [`clamp_extras`](Self::clamp_extras) after
    /// the step.
    pub fn extra_params_mut(&mut self) -> Vec<(&mut Param<f32>, ParamGroup)> {
        let dgroup = ParamGroup {
            weight_decay: self.cfg.delta_wd,
            lr_mult: self.cfg.delta_lr_mult,
        };
        let mut out = Vec::new();
        for l in self.hook.layers.iter_mut() {
            out.push((&mut l.delta_bar, dgroup));
            out.push((&mut l.ttq_wp, ParamGroup::no_decay()));
            out.push((&mut l.ttq_wn, ParamGroup::no_decay()));
            if let Some(g) = l.gain.as_mut() {
                out.push((g, ParamGroup::no_decay()));
            }
        }
        out
    }

    /// Clamps Δ̄, W^p and W^n at 0 (spec 8.5 and 11.2).
    pub fn clamp_extras(&mut self) {
        for l in self.hook.layers.iter_mut() {
            for p in [&mut l.delta_bar, &mut l.ttq_wp, &mut l.ttq_wn] {
                if p.value().iter().any(|&v| v < 0.0) {
                    p.value_mut().mapv_inplace(|v| v.max(0.0));
                }
            }
        }
    }

    /// After the optimiser step: re-projects latent rows onto the sphere (`norm_mode = project`)
    /// and counts the step.
    ///
    /// # Errors
    /// `UnknownLayer` for a missing weight.
    pub fn after_step(&mut self, model: &mut dyn Model) -> Result<()> {
        if self.cfg.method == Method::Hla && self.cfg.norm_mode == NormMode::Project {
            let names: Vec<String> = self
                .hook
                .layers
                .iter()
                .map(|l| l.info.weight.clone())
                .collect();
            for (n, p) in model.params_mut() {
                if names.contains(&n) {
                    let shape = p.shape().to_vec();
                    let w = with_rows("project", p.value().view(), |r| {
                        normalize_rows(r, self.cfg.eps_w as f32).0
                    })?;
                    *p.value_mut() = from_rows(w, &shape);
                }
            }
        }
        self.algo.record_step();
        Ok(())
    }

    /// Ends the epoch: stores the current Δ̄ in Algorithm 1's state and advances it.
    pub fn end_epoch(&mut self) {
        if self.algo.phase == Phase::Stage2 {
            let d = self.delta_bars();
            let _ = self.algo.set_delta_bar(d);
        }
        self.algo.end_epoch();
        if !self.algo.is_done() {
            self.sync_mode();
        }
    }

    /// Current Δ̄ per layer.
    pub fn delta_bars(&self) -> Vec<f64> {
        self.hook
            .layers
            .iter()
            .map(|l| first(&l.delta_bar))
            .collect()
    }

    /// The quantised weights `[n, m]` the current mode would use (HLA stage 1: Ternary(W, Δ);
    /// stage 2: Ternary(W, Δ̄); TWN / TTQ: their quantisers on the latent weights), each with the
    /// full-precision rows it came from and its threshold.
    ///
    /// # Errors
    /// `UnknownLayer` for a missing weight.
    pub fn quantized(&self, model: &dyn Model) -> Result<Vec<QuantizedLayer>> {
        let mode = match self.hook.mode {
            HookMode::Fp => return Ok(Vec::new()),
            m => m,
        };
        let normed = self.normalized_weights(model)?;
        let mut out = Vec::new();
        for (l, wn) in self.hook.layers.iter().zip(normed) {
            let v = param_by_name(model, &l.info.weight)?.value();
            let latent = with_rows("quantized", v.view(), |r| r.to_owned())?;
            out.push(match mode {
                HookMode::Hyperspherical | HookMode::Ternary => {
                    let d = if mode == HookMode::Ternary {
                        first(&l.delta_bar)
                    } else {
                        l.delta
                    };
                    let q = ternarize_rows(wn.view(), d as f32, self.cfg.empty_row).dequantize();
                    QuantizedLayer {
                        w: wn,
                        what: q,
                        threshold: Some(d),
                    }
                }
                HookMode::Twn => {
                    let t = twn_quantize(latent.view().into_dyn(), self.cfg.twn_threshold as f32);
                    let q = t.what.into_dimensionality().expect("2-D in, 2-D out");
                    QuantizedLayer {
                        w: latent,
                        what: q,
                        threshold: Some(t.delta as f64),
                    }
                }
                HookMode::Ttq => {
                    let (q, d) = ttq_forward(
                        latent.view().into_dyn(),
                        first(&l.ttq_wp) as f32,
                        first(&l.ttq_wn) as f32,
                        self.cfg.ttq_threshold as f32,
                    );
                    QuantizedLayer {
                        w: latent,
                        what: q.into_dimensionality().expect("2-D in, 2-D out"),
                        threshold: Some(d as f64),
                    }
                }
                HookMode::Fp => unreachable!("handled above"),
            });
        }
        Ok(out)
    }

    /// Per-layer and overall metrics of the current quantisation (empty for FP).
    ///
    /// # Errors
    /// `UnknownLayer` for a missing weight.
    pub fn metrics(&self, model: &dyn Model) -> Result<ModelMetrics> {
        let q = self.quantized(model)?;
        let layers: Vec<LayerMetrics> = self
            .hook
            .layers
            .iter()
            .zip(&q)
            .map(|(l, q)| layer_metrics(&l.info.layer, q.w.view(), q.what.view(), q.threshold))
            .collect();
        Ok(summarize(layers, self.cfg.sim_average))
    }

    /// Table 4's Sim (A22) of the current weights at `t_pct` (default knob `sim_t_pct` = 70):
    /// rows normalised, Ŵ = Ternary(W, T(t_pct)) with the configured scope, mean cosine averaged
    /// per `sim_average`. Independent of the run's phase (also for the FP baseline).
    ///
    /// # Errors
    /// Threshold errors; `UnknownLayer` for a missing weight.
    pub fn sim_at(&self, model: &dyn Model, t_pct: u32) -> Result<f64> {
        let ws = self.normalized_weights(model)?;
        let views: Vec<_> = ws.iter().map(|a| a.view().into_dyn()).collect();
        // already normalised: eps 0 and a second normalisation would only add rounding
        let mut ls = Vec::new();
        let ts = thresholds(
            &views,
            t_pct,
            self.cfg.threshold_scope,
            self.cfg.quantile_index,
        )?;
        for ((l, w), t) in self.hook.layers.iter().zip(&ws).zip(ts) {
            let q = ternarize_rows(w.view(), t, self.cfg.empty_row).dequantize();
            ls.push(layer_metrics(
                &l.info.layer,
                w.view(),
                q.view(),
                Some(t as f64),
            ));
        }
        Ok(summarize(ls, self.cfg.sim_average).sim)
    }

    /// Serialisable snapshot (take it between epochs).
    pub fn checkpoint(&self) -> MethodCheckpoint {
        let bufs = |s: &Sgd<f32>| -> Vec<Option<Vec<f32>>> {
            s.state()
                .iter()
                .map(|b| b.as_ref().map(|a| a.iter().copied().collect()))
                .collect()
        };
        MethodCheckpoint {
            algo: self.algo.clone(),
            layers: self
                .hook
                .layers
                .iter()
                .map(|l| LayerCheckpoint {
                    layer: l.info.layer.clone(),
                    delta: l.delta,
                    delta_bar: first(&l.delta_bar) as f32,
                    ttq_wp: first(&l.ttq_wp) as f32,
                    ttq_wn: first(&l.ttq_wn) as f32,
                    gain: l.gain.as_ref().map(|g| g.value().iter().copied().collect()),
                })
                .collect(),
            delta_momentum: bufs(&self.delta_sgd),
            aux_momentum: bufs(&self.aux_sgd),
        }
    }

    /// Restores a snapshot taken by [`checkpoint`](Self::checkpoint) on the same model layout.
    ///
    /// # Errors
    /// `State` if the layers differ.
    pub fn restore(&mut self, ck: &MethodCheckpoint) -> Result<()> {
        if ck.layers.len() != self.hook.layers.len()
            || ck
                .layers
                .iter()
                .zip(&self.hook.layers)
                .any(|(c, l)| c.layer != l.info.layer)
        {
            return Err(HlaError::State {
                op: "restore",
                reason: "checkpoint layers differ from the model's quantised layers".into(),
            });
        }
        for (c, l) in ck.layers.iter().zip(self.hook.layers.iter_mut()) {
            l.delta = c.delta;
            *l.delta_bar.value_mut() = ArrayD::from_elem(vec![1], c.delta_bar);
            *l.ttq_wp.value_mut() = ArrayD::from_elem(vec![1], c.ttq_wp);
            *l.ttq_wn.value_mut() = ArrayD::from_elem(vec![1], c.ttq_wn);
            match (&mut l.gain, &c.gain) {
                (Some(g), Some(v)) if g.len() == v.len() => {
                    *g.value_mut() =
                        ArrayD::from_shape_vec(vec![v.len()], v.clone()).expect("length checked");
                }
                (None, None) => {}
                _ => {
                    return Err(HlaError::State {
                        op: "restore",
                        reason: format!("gain of {} does not match", c.layer),
                    })
                }
            }
        }
        // momentum buffers are restored with the shapes of the parameters they belong to
        let shapes_d: Vec<Vec<usize>> = self.hook.layers.iter().map(|_| vec![1]).collect();
        let mut shapes_a = Vec::new();
        for l in &self.hook.layers {
            shapes_a.push(vec![1]);
            shapes_a.push(vec![1]);
            if let Some(g) = &l.gain {
                shapes_a.push(g.shape().to_vec());
            }
        }
        let rebuild = |bufs: &[Option<Vec<f32>>],
                       shapes: &[Vec<usize>]|
         -> Result<Vec<Option<ArrayD<f32>>>> {
            if bufs.is_empty() {
                return Ok(Vec::new());
            }
            if bufs.len() != shapes.len() {
                return Err(HlaError::State {
                    op: "restore",
                    reason: format!(
                        "{} momentum buffers for {} parameters",
                        bufs.len(),
                        shapes.len()
                    ),
                });
            }
            bufs.iter()
                .zip(shapes)
                .map(|(b, s)| match b {
                    None => Ok(None),
                    Some(v) => ArrayD::from_shape_vec(s.clone(), v.clone())
                        .map(Some)
                        .map_err(|e| HlaError::State {
                            op: "restore",
                            reason: e.to_string(),
                        }),
                })
                .collect()
        };
        self.delta_sgd
            .load_state(rebuild(&ck.delta_momentum, &shapes_d)?)?;
        self.aux_sgd
            .load_state(rebuild(&ck.aux_momentum, &shapes_a)?)?;
        self.algo = ck.algo.clone();
        if !self.algo.is_done() {
            self.sync_mode();
        }
        Ok(())
    }
}

/// One training step: forward (with the method's hook), J = CE + λ·L_d, backward, SGD on the
/// model's parameters (`groups` in `model.params()` order), the method's own update (Δ̄ and
/// clamp, TTQ scales, gains), then the method's after-step work.
///
/// # Shapes
/// `x`: `[n, c, h, w]`, `labels`: n class indices.
/// # Errors
/// Model, tape, optimiser and threshold errors.
pub fn train_step(
    model: &mut dyn Model,
    st: &mut MethodState,
    sgd: &mut Sgd<f32>,
    groups: &[ParamGroup],
    x: ArrayD<f32>,
    labels: &[usize],
    lr: f64,
) -> Result<StepStats> {
    st.before_step(model)?;
    let mut tape = Tape::<f32>::new();
    let xv = tape.constant(x);
    let logits = model
        .forward(&mut tape, xv, Mode::Train, st.hook_mut())
        .map_err(|e| HlaError::State {
            op: "train_step forward",
            reason: e.to_string(),
        })?;
    let correct = count_correct(tape.value(logits), labels);
    let ce = ops::cross_entropy(&mut tape, logits, labels, 0.0)?;
    let ld = st.extra_loss(&mut tape)?;
    let loss = match ld {
        Some(l) => ops::add(&mut tape, ce, l)?,
        None => ce,
    };
    let val = |t: &Tape<f32>, v: Var| t.value(v).iter().next().copied().unwrap_or(0.0) as f64;
    let (lv, cv, dv) = (
        val(&tape, loss),
        val(&tape, ce),
        ld.map_or(0.0, |l| val(&tape, l)),
    );
    let mut grads = tape.backward(loss)?;
    drop(tape); // release the tape's shares of parameter storage before updating in place
    {
        let mut params = model.params_mut();
        if params.len() != groups.len() {
            return Err(HlaError::State {
                op: "train_step",
                reason: format!(
                    "{} parameter groups for {} parameters",
                    groups.len(),
                    params.len()
                ),
            });
        }
        let gs: Vec<Option<ArrayD<f32>>> =
            params.iter().map(|(_, p)| grads.take_param(p)).collect();
        let mut entries: Vec<_> = params
            .iter_mut()
            .zip(&gs)
            .zip(groups)
            .map(|(((_, p), g), grp)| (&mut **p, g.as_ref(), grp))
            .collect();
        sgd.step(lr, &mut entries)?;
    }
    st.step_extras(&mut grads, lr)?;
    st.after_step(model)?;
    Ok(StepStats {
        loss: lv,
        ce: cv,
        ld: dv,
        correct,
        n: labels.len(),
        lr,
    })
}

/// Top-1 hits of `logits` `[n, k]` (ties → lowest index).
pub fn count_correct(logits: &ArrayD<f32>, labels: &[usize]) -> usize {
    let Ok(l2) = logits.view().into_dimensionality::<ndarray::Ix2>() else {
        return 0;
    };
    l2.outer_iter()
        .zip(labels)
        .filter(|(row, &y)| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best == y
        })
        .count()
}

/// Logits of `x` in eval mode with the method's current forward (no gradient recorded).
///
/// # Errors
/// Model errors.
pub fn eval_logits(
    model: &mut dyn Model,
    st: &mut MethodState,
    x: ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    let mut tape = Tape::<f32>::no_grad();
    let xv = tape.constant(x);
    let y = model
        .forward(&mut tape, xv, Mode::Eval, st.hook_mut())
        .map_err(|e| HlaError::State {
            op: "eval forward",
            reason: e.to_string(),
        })?;
    st.hook.clear_ld();
    Ok(tape.value(y).clone())
}

/// Re-estimates BatchNorm running statistics with train-mode forwards and no weight update
/// (spec 3.3 note, `bn_recalibrate_batches`).
///
/// # Errors
/// Model errors.
pub fn recalibrate_bn(
    model: &mut dyn Model,
    st: &mut MethodState,
    batches: impl IntoIterator<Item = ArrayD<f32>>,
) -> Result<()> {
    for x in batches {
        let mut tape = Tape::<f32>::no_grad();
        let xv = tape.constant(x);
        model
            .forward(&mut tape, xv, Mode::Train, st.hook_mut())
            .map_err(|e| HlaError::State {
                op: "recalibrate_bn",
                reason: e.to_string(),
            })?;
        st.hook.clear_ld();
    }
    Ok(())
}

/// Whether `kind` layers can be quantised by this hook (both kinds are).
pub fn supports(kind: LayerKind) -> bool {
    matches!(kind, LayerKind::Conv | LayerKind::Linear)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::{alpha_sqrt_nnz, export_model, load_packed};
    use rand::{Rng, SeedableRng};

    fn batch(seed: u64, n: usize) -> (ArrayD<f32>, Vec<usize>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let x = ArrayD::from_shape_fn(vec![n, 3, 8, 8], |_| rng.random_range(-1.0f32..1.0));
        let y = (0..n).map(|_| rng.random_range(0..10)).collect();
        (x, y)
    }

    fn small_cfg(method: Method) -> HlaConfig {
        HlaConfig {
            method,
            stage1_epochs_per_stage: 1,
            stage2_epochs: 2,
            sgdr_t0_epochs: 1,
            ..Default::default()
        }
    }

    /// Runs the whole (miniature) schedule with `steps` batches per epoch.
    fn run(model: &mut dyn Model, st: &mut MethodState, steps: usize) -> Vec<StepStats> {
        let (mut sgd, groups) = model_optimizer(&st.cfg, model);
        let mut out = Vec::new();
        let mut k = 0;
        while !st.algo.is_done() {
            st.begin_epoch(model).unwrap();
            for _ in 0..steps {
                let (x, y) = batch(k, 4);
                k += 1;
                let lr = st.lr(steps).unwrap();
                out.push(train_step(model, st, &mut sgd, &groups, x, &y, lr).unwrap());
            }
            st.end_epoch();
        }
        out
    }

    /// Stage 1's L_d from the tape equals the plain Σ_l L_d^l of the normalised weights with
    /// Ternary(W, Δ) at the global threshold T(30).
    #[test]
    fn stage1_ld_on_tape_matches_plain_sum() {
        let mut model = hla_models::build("resnet20", 10, 1).unwrap();
        let mut st = MethodState::new(small_cfg(Method::Hla), model.as_ref()).unwrap();
        let plan = st.begin_epoch(model.as_ref()).unwrap();
        assert_eq!(plan.t_pct, Some(30));
        let ws = st.normalized_weights(model.as_ref()).unwrap();
        let d = st.algo.delta.clone().unwrap();
        assert!(d.windows(2).all(|p| p[0] == p[1]), "global scope: one Δ");
        let mut want = 0.0f64;
        for (w, &dl) in ws.iter().zip(&d) {
            let q = ternarize_rows(w.view(), dl as f32, st.cfg.empty_row).dequantize();
            want += crate::ld::ld_layer(w.mapv(|v| v as f64).view(), q.mapv(|v| v as f64).view()).0;
        }
        let (mut sgd, groups) = model_optimizer(&st.cfg, model.as_ref());
        let (x, y) = batch(0, 4);
        let s = train_step(model.as_mut(), &mut st, &mut sgd, &groups, x, &y, 0.01).unwrap();
        assert!(
            (s.ld - want).abs() < 1e-5 * want.max(1.0),
            "{} vs {want}",
            s.ld
        );
        assert!((s.loss - s.ce - s.ld).abs() < 1e-5);
        // the global zero_based threshold zeroes ⌊0.3N⌋ + 1 of N weights (no ties in random init)
        let m = st.metrics(model.as_ref()).unwrap();
        let n: usize = m.layers.iter().map(|l| l.rows * l.fan_in).sum();
        let zeros: usize = m.layers.iter().map(|l| l.zeros).sum();
        assert!(zeros >= 1, "{zeros}");
        assert!(((zeros as f64 / n as f64) - 0.3).abs() < 0.01);
        // Sim at t = 30 before the step equals the stage-1 metric's mean cosine at Δ = T(30)
        let fresh = hla_models::build("resnet20", 10, 1).unwrap();
        let mut st2 = MethodState::new(small_cfg(Method::Hla), fresh.as_ref()).unwrap();
        st2.begin_epoch(fresh.as_ref()).unwrap();
        let sim = st2.sim_at(fresh.as_ref(), 30).unwrap();
        assert_eq!(sim, st2.metrics(fresh.as_ref()).unwrap().sim);
        assert!(sim > 0.0 && sim < 1.0);
    }

    /// Copies every parameter and buffer of `src` into `dst` (same architecture).
    fn copy_state(src: &dyn Model, dst: &mut dyn Model) {
        use hla_models::{BufferMut, BufferRef, StateMut, StateRef};
        let vals: Vec<_> = src
            .state()
            .into_iter()
            .map(|(_, s)| match s {
                StateRef::Param(p) => (Some(p.value().clone()), None, None),
                StateRef::Buffer(BufferRef::F32(a)) => (None, Some(a.clone()), None),
                StateRef::Buffer(BufferRef::Count(c)) => (None, None, Some(c)),
            })
            .collect();
        for ((_, d), v) in dst.state_mut().into_iter().zip(vals) {
            match (d, v) {
                (StateMut::Param(p), (Some(a), _, _)) => *p.value_mut() = a,
                (StateMut::Buffer(BufferMut::F32(b)), (_, Some(a), _)) => b.assign(&a),
                (StateMut::Buffer(BufferMut::Count(c)), (_, _, Some(n))) => *c = n,
                _ => panic!("state layouts differ"),
            }
        }
    }

    /// Checkpoint after 11 epochs (inside stage 2, Δ̄ trained), resume in a fresh process-like
    /// setup (JSON round trip of the method state, copied model state and SGD buffers): the
    /// resumed run ends bit-identical to the uninterrupted one.
    #[test]
    fn resume_mid_stage2_is_bit_identical() {
        let cfg = HlaConfig {
            stage2_epochs: 3,
            ..small_cfg(Method::Hla)
        };
        let epoch = |model: &mut dyn Model,
                     st: &mut MethodState,
                     sgd: &mut Sgd<f32>,
                     groups: &[ParamGroup]| {
            st.begin_epoch(model).unwrap();
            let e = st.algo.epochs_done;
            for i in 0..2 {
                let (x, y) = batch(e * 10 + i, 4);
                let lr = st.lr(2).unwrap();
                train_step(model, st, sgd, groups, x, &y, lr).unwrap();
            }
            st.end_epoch();
        };
        let mut a = hla_models::build("resnet20", 10, 3).unwrap();
        let mut sa = MethodState::new(cfg.clone(), a.as_ref()).unwrap();
        let (mut sgd_a, groups) = model_optimizer(&cfg, a.as_ref());
        for _ in 0..11 {
            epoch(a.as_mut(), &mut sa, &mut sgd_a, &groups);
        }
        assert_eq!(sa.algo.phase, Phase::Stage2);
        let ck = serde_json::to_string(&sa.checkpoint()).unwrap();
        let mut b = hla_models::build("resnet20", 10, 99).unwrap();
        copy_state(a.as_ref(), b.as_mut());
        let mut sb = MethodState::new(cfg.clone(), b.as_ref()).unwrap();
        sb.restore(&serde_json::from_str(&ck).unwrap()).unwrap();
        let mut sgd_b = model_optimizer(&cfg, b.as_ref()).0;
        sgd_b.load_state(sgd_a.state().to_vec()).unwrap();
        while !sa.algo.is_done() {
            epoch(a.as_mut(), &mut sa, &mut sgd_a, &groups);
            epoch(b.as_mut(), &mut sb, &mut sgd_b, &groups);
        }
        assert!(sb.algo.is_done());
        assert_eq!(sa.checkpoint(), sb.checkpoint());
        for ((n, p), (_, q)) in a.params().into_iter().zip(b.params()) {
            let bits = |x: &ArrayD<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(p.value()), bits(q.value()), "{n}");
        }
    }

    /// A full miniature HLA run; after stage 2 every non-empty row has α·√nnz = 1, the packed
    /// file is ≥ 14× smaller than f32 for the quantised layers, and inference from the packed
    /// form reproduces the fake-quantised model's logits bit for bit.
    #[test]
    fn hla_run_export_and_packed_inference_match() {
        let mut model = hla_models::build("resnet20", 10, 2).unwrap();
        let mut st = MethodState::new(small_cfg(Method::Hla), model.as_ref()).unwrap();
        let stats = run(model.as_mut(), &mut st, 1);
        assert_eq!(stats.len(), 12);
        assert!(stats.iter().all(|s| s.loss.is_finite()));
        assert!(st.delta_bars().iter().all(|&d| d >= 0.0));
        let m = st.metrics(model.as_ref()).unwrap();
        assert!((m.sparsity - 0.8).abs() < 0.05, "sparsity {}", m.sparsity);
        let pm = export_model(model.as_ref(), &st).unwrap();
        for l in &pm.layers {
            for (j, v) in alpha_sqrt_nnz(l).unwrap().into_iter().enumerate() {
                assert!(
                    v == 0.0 || (v - 1.0).abs() < 1e-6,
                    "{} row {j}: α√nnz = {v}",
                    l.name
                );
            }
        }
        assert!(pm.size_report().ratio >= 14.0, "{:?}", pm.size_report());
        let bytes = pm.to_bytes().unwrap();
        let back = crate::export::PackedModel::from_bytes(&bytes, "mem").unwrap();
        let (x, _) = batch(99, 3);
        let want = eval_logits(model.as_mut(), &mut st, x.clone()).unwrap();
        let mut fresh = hla_models::build("resnet20", 10, 77).unwrap();
        let mut hook = load_packed(fresh.as_mut(), &back).unwrap();
        let got = hook.eval_logits(fresh.as_mut(), x).unwrap();
        let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
    }
}
