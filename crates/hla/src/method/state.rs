//! [`MethodState`]: everything the method adds to a model — the hook, Algorithm 1's state
//! machine driven epoch by epoch, the Δ̄ / TTQ-scale / gain optimisers — and the per-step work
//! around the generic training step (per-step Δ refresh, the method's parameter update and
//! clamp, row re-projection), plus metrics of the current quantisation.
//!
//! Guide: [Algorithm 1](crate::guide#alg1).

use super::hook::{first, scalar_param, HlaHook, HookMode, LayerState, QuantizedLayer};
use crate::algorithm::{Algorithm1, Phase, SegmentPlan};
use crate::config::{HlaConfig, Method, NoBnGain, NormMode};
use crate::error::{HlaError, Result};
use crate::ld::normalize_rows;
use crate::metrics::{layer_metrics, summarize, LayerMetrics, ModelMetrics};
use crate::real::{from_rows, with_rows};
use crate::ternary::ternarize_rows;
use crate::threshold::thresholds;
use crate::ttq::{ttq_forward, ttq_init_scales};
use crate::twn::twn_quantize;
use hla_autograd::optim::{ParamGroup, Sgd, SgdConfig};
use hla_autograd::schedule::{EpochSgdr, LrSchedule};
use hla_autograd::{Gradients, Param, Tape, Var};
use hla_models::{LayerHook, Model};
use ndarray::{Array2, ArrayD};
use std::collections::{BTreeMap, BTreeSet};

/// Everything the method adds to a model: hook, Algorithm 1, Δ̄ / TTQ / gain optimisers.
///
/// Guide: [Algorithm 1](crate::guide#alg1).
#[derive(Debug)]
pub struct MethodState {
    /// The configuration (validated).
    pub cfg: HlaConfig,
    /// Algorithm 1's state.
    pub algo: Algorithm1,
    /// The layer hook (owns Δ̄, TTQ scales, gains).
    pub hook: HlaHook,
    pub(super) delta_sgd: Sgd<f32>,
    pub(super) aux_sgd: Sgd<f32>,
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
    /// Guide: [Alg. 1 line 0](crate::guide#alg1-line-0).
    ///
    /// # Errors
    /// `Config` for an invalid configuration; `UnknownLayer` if a weight name is missing.
    pub fn new(cfg: HlaConfig, model: &dyn Model) -> Result<Self> {
        let algo = Algorithm1::new(&cfg)?;
        let skip = cfg.skip_layers.clone().unwrap_or_default();
        let quantisable = model.quantisable();
        if let Some(bad) = skip
            .iter()
            .find(|n| !quantisable.iter().any(|q| &q.layer == *n))
        {
            return Err(HlaError::Config {
                knob: "skip_layers",
                value: bad.clone(),
                reason: format!(
                    "not a quantisable layer of {} (quantisable: {})",
                    model.arch(),
                    quantisable
                        .iter()
                        .map(|q| q.layer.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let mut layers = Vec::new();
        let mut index = BTreeMap::new();
        let mut skipped = BTreeSet::new();
        for info in quantisable {
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
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn phase_mode(&self) -> HookMode {
        match (self.cfg.method, self.algo.phase) {
            (Method::Fp, _) => HookMode::Fp,
            (Method::Twn, _) => HookMode::Twn,
            (Method::Ttq, _) => HookMode::Ttq,
            (Method::Hla, Phase::Warmup | Phase::Stage1) => HookMode::Hyperspherical,
            (Method::Hla, _) => HookMode::Ternary,
        }
    }

    pub(super) fn sync_mode(&mut self) {
        let plan = self.algo.plan(false);
        self.hook.set_mode(self.phase_mode(), plan.lambda);
    }

    /// The normalised weights `[n, m]` of every quantised layer (the quantiser's input for HLA).
    ///
    /// Guide: [Eq. 3](crate::guide#eq-3).
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
    /// Guide: [Eq. 8](crate::guide#eq-8).
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

    /// Prepares the current segment (call it before every step; it is cheap once the
    /// segment's thresholds exist): sets the hook mode and λ, computes Δ = T(t) at the start of a
    /// stage-1 sub-stage and Δ̄ = T(stage2_init_pct) at the start of stage 2 (global scope by
    /// default: one value for every layer), and re-applies stored thresholds after a resume.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    ///
    /// # Errors
    /// Threshold errors; `State` if the run is done.
    pub fn begin_segment(&mut self, model: &dyn Model) -> Result<SegmentPlan> {
        if self.algo.is_done() {
            return Err(HlaError::State {
                op: "begin_segment",
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

    /// Replaces Algorithm 1's state (e.g. by [`Algorithm1::at_stage2`]) and sets the hook's
    /// mode for it.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn set_algo(&mut self, algo: Algorithm1) {
        self.algo = algo;
        if !self.algo.is_done() {
            self.sync_mode();
        }
    }

    /// One-time changes of the starting weights a method asks for, applied by the driver at the
    /// start of a fresh run (not on resume): with `ttq_normalize_init`, TTQ's division of each
    /// quantised layer's latent weights by its max|W| (A27; a layer of zeros is left as is);
    /// with HLA's `norm_mode = project`, the projection of every quantised row onto the unit
    /// sphere (A17).
    ///
    /// Guide: [Alg. 1 line 0](crate::guide#alg1-line-0).
    ///
    /// # Errors
    /// `UnknownLayer` for a missing weight.
    pub fn prepare_weights(&self, model: &mut dyn Model) -> Result<()> {
        if self.cfg.method == Method::Hla && self.cfg.norm_mode == NormMode::Project {
            // A17 `project`: the rows start on the sphere, not only after the first step
            return self.project_rows(model);
        }
        if !(self.cfg.method == Method::Ttq && self.cfg.ttq_normalize_init) {
            return Ok(());
        }
        let names: BTreeSet<&str> = self
            .hook
            .layers
            .iter()
            .map(|l| l.info.weight.as_str())
            .collect();
        let mut found = 0;
        for (n, p) in model.params_mut() {
            if names.contains(n.as_str()) {
                let m = p.value().iter().fold(0.0f32, |a, &v| a.max(v.abs()));
                if m > 0.0 {
                    p.value_mut().mapv_inplace(|v| v / m);
                }
                found += 1;
            }
        }
        if found != names.len() {
            return Err(HlaError::UnknownLayer {
                op: "prepare_weights",
                layer: format!("{} of {} quantised weights found", found, names.len()),
            });
        }
        Ok(())
    }

    /// Per-step work before the forward: with `stage1_delta_refresh = per_step`, Δ = T(t) from
    /// the current weights.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
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
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn hook_mut(&mut self) -> Option<&mut dyn LayerHook> {
        match self.hook.mode {
            HookMode::Fp => None,
            _ => Some(&mut self.hook),
        }
    }

    /// λ·L_d recorded by the last training forward (drains the hook's terms).
    ///
    /// Guide: [Alg. 1 line 8](crate::guide#alg1-line-8).
    ///
    /// # Errors
    /// Tape errors.
    pub fn extra_loss(&mut self, tape: &mut Tape<f32>) -> Result<Option<Var>> {
        Ok(self.hook.take_ld(tape)?)
    }

    /// Learning rate of the coming step (`algo.steps_done`): per-iteration SGDR (A19) within the
    /// current phase, restarting every `sgdr_t0_epochs` epochs (stage 1 and the warm-up) or
    /// `sgdr_t0_epochs_stage2` epochs (stage 2 and the baselines; default: the same period),
    /// counted from the phase's first step, with restarts on whole steps (see
    /// [`EpochSgdr`]).
    ///
    /// Guide: [Alg. 1 line 0](crate::guide#alg1-line-0).
    ///
    /// # Errors
    /// `State` before the steps per epoch are known.
    pub fn lr(&self) -> Result<f64> {
        self.lr_at(self.algo.steps_done)
    }

    /// Learning rate of step `step` of the run under the current phase's schedule.
    ///
    /// Guide: [Alg. 1 line 0](crate::guide#alg1-line-0).
    ///
    /// # Errors
    /// `State` before the steps per epoch are known.
    pub fn lr_at(&self, step: u64) -> Result<f64> {
        let spe = self.algo.steps_per_epoch;
        if spe == 0 {
            return Err(HlaError::State {
                op: "lr",
                reason: "steps per epoch not set (Algorithm1::set_steps_per_epoch)".into(),
            });
        }
        let t0 = match self.algo.phase {
            Phase::Warmup | Phase::Stage1 => self.cfg.sgdr_t0_epochs,
            _ => self
                .cfg
                .sgdr_t0_epochs_stage2
                .unwrap_or(self.cfg.sgdr_t0_epochs),
        };
        let s = EpochSgdr::new(
            self.cfg.lr,
            t0,
            spe,
            self.cfg.sgdr_t_mult as u64,
            self.cfg.sgdr_eta_min,
        )?;
        Ok(s.lr(step.saturating_sub(self.algo.phase_start())))
    }

    /// Updates the method-owned parameters from `grads` (Δ̄ in stage 2 with its own momentum,
    /// lr × delta_lr_mult and no decay; TTQ scales and gains with the model's momentum, no
    /// decay), then clamps Δ̄, W^p, W^n ≥ 0.
    ///
    /// Guide: [Alg. 1 line 20](crate::guide#alg1-line-20).
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
    ///
    /// Guide: [Alg. 1 line 20](crate::guide#alg1-line-20).
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
    ///
    /// Guide: [Alg. 1 line 20](crate::guide#alg1-line-20).
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
    /// Guide: [Algorithm 1](crate::guide#alg1).
    ///
    /// # Errors
    /// `UnknownLayer` for a missing weight.
    pub fn after_step(&mut self, model: &mut dyn Model) -> Result<()> {
        if self.cfg.method == Method::Hla && self.cfg.norm_mode == NormMode::Project {
            self.project_rows(model)?;
        }
        self.algo.record_step();
        Ok(())
    }

    /// Projects every quantised layer's rows onto the unit sphere (`norm_mode = project`).
    fn project_rows(&self, model: &mut dyn Model) -> Result<()> {
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
        Ok(())
    }

    /// Ends the current segment once its steps are done: stores the current Δ̄ in Algorithm 1's
    /// state and moves it to the next segment (see [`Algorithm1::end_segment`]). Returns
    /// whether a segment ended.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn end_segment(&mut self) -> bool {
        if !self.algo.segment_complete() {
            return false;
        }
        if self.algo.phase == Phase::Stage2 {
            self.algo.delta_bar = Some(self.delta_bars());
        }
        self.algo.end_segment();
        if !self.algo.is_done() {
            self.sync_mode();
        }
        true
    }

    /// Current Δ̄ per layer.
    ///
    /// Guide: [Alg. 1 line 12](crate::guide#alg1-line-12).
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
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
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
    /// Guide: [Metrics](crate::guide#metrics).
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
    /// Guide: [Metrics](crate::guide#metrics).
    ///
    /// # Errors
    /// Threshold errors; `UnknownLayer` for a missing weight.
    pub fn sim_at(&self, model: &dyn Model, t_pct: u32) -> Result<f64> {
        self.sim_of(model, t_pct, true)
    }

    /// Table 4's Sim at `t_pct` of the quantised layers' rows as they are (`normalized =
    /// false`: the threshold T(t) ranks raw |w|, so rows of large norm keep more entries) or
    /// normalised to unit length first (`true`, the hyperspherical view, as [`sim_at`](Self::sim_at)).
    ///
    /// Guide: [Metrics](crate::guide#metrics).
    ///
    /// # Errors
    /// Threshold errors; `UnknownLayer` for a missing weight.
    pub fn sim_of(&self, model: &dyn Model, t_pct: u32, normalized: bool) -> Result<f64> {
        let ws: Vec<Array2<f32>> = if normalized {
            self.normalized_weights(model)?
        } else {
            self.hook
                .layers
                .iter()
                .map(|l| {
                    let v = param_by_name(model, &l.info.weight)?.value();
                    with_rows("sim_of", v.view(), |r| r.to_owned())
                })
                .collect::<Result<_>>()?
        };
        if ws.is_empty() {
            return Ok(f64::NAN);
        }
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
}
