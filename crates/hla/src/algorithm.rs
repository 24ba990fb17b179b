//! Algorithm 1 (spec section 9) as an explicit, resumable state machine, counted in optimizer
//! steps.
//!
//! A run is a sequence of *segments*: the hyperspherical warm-up, each stage-1 sub-stage
//! (t_pct = 30 + 4k), stage 2, or a baseline's single segment. Lengths are given in epochs and
//! may be fractional (`stage1_epochs_per_stage = 0.5`); with `S` steps per epoch they become step
//! boundaries measured from the start of their phase and rounded once, cumulatively: sub-stage
//! `k` of stage 1 ends at step `round((k + 1) · E₁ · S)` of stage 1, so half-epoch sub-stages end
//! on every epoch boundary and half-way through (rounding half away from zero), whatever `S`.
//! Warm-up, stage 1 and stage 2 follow each other; a zero-length segment is skipped.
//!
//! The machine knows *where* a run is (phase, stage index, steps done) and *which thresholds*
//! are in force (the stage-1 Δ per layer, the stage-2 Δ̄ snapshot). It computes nothing from
//! weights itself: the driver asks [`Algorithm1::plan`] what the current segment needs (e.g.
//! "compute Δ = T(42) now"), supplies the values, runs steps ([`record_step`](Algorithm1::record_step)),
//! and when [`segment_complete`](Algorithm1::segment_complete) evaluates and calls
//! [`end_segment`](Algorithm1::end_segment). The whole state is serde, so a checkpoint taken at
//! any step resumes exactly (Δ is stored, not recomputed from weights that moved).
//!
//! Phases by method:
//! - HLA: `Warmup` (hs_warmup_epochs, λ = 0; A21) → `Stage1` × K sub-stages
//!   (stage1_epochs_per_stage each) → `Stage2` (stage2_epochs) → `Done`.
//! - FP / TWN / TTQ: `Baseline` (stage2_epochs, or `baseline_epochs` of the run config) → `Done`.
//!
//! Guide: [Algorithm 1](crate::guide#alg1).

use crate::config::{HlaConfig, Method};
use crate::error::{HlaError, Result};
use serde::{Deserialize, Serialize};

/// Where a run is.
///
/// Guide: [Algorithm 1](crate::guide#alg1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Hyperspherical fine-tuning without L_d (A21; 0 epochs by default).
    Warmup,
    /// Stage 1: FP hyperspherical forward, J = CE + λ·L_d with Δ = T(t_pct).
    Stage1,
    /// Stage 2: ternary forward with learnable Δ̄, STE with S.
    Stage2,
    /// FP / TWN / TTQ training.
    Baseline,
    /// Finished.
    Done,
}

/// What the driver must do before/while running the current segment.
///
/// Guide: [Alg. 1 line 4](crate::guide#alg1-line-4).
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentPlan {
    /// Phase of the segment.
    pub phase: Phase,
    /// Stage-1 sparsity in percent (Stage1 only).
    pub t_pct: Option<u32>,
    /// Stage 1: Δ must be computed now (start of a sub-stage, or every step with `per_step`
    /// refresh) from T(t_pct) and handed to [`Algorithm1::set_delta`].
    pub needs_delta: bool,
    /// Stage 2: Δ̄ must be initialised now to T(pct) and handed to [`Algorithm1::set_delta_bar`].
    pub init_delta_bar_pct: Option<u32>,
    /// Weight λ of L_d in this segment (0 in warm-up and for baselines).
    pub lambda: f64,
    /// Step (of the run) at which the segment ends.
    pub end_step: u64,
}

/// Algorithm 1's resumable state.
///
/// Guide: [Algorithm 1](crate::guide#alg1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Algorithm1 {
    /// Method of the run.
    pub method: Method,
    /// Current phase.
    pub phase: Phase,
    /// Stage-1 sub-stage index k (`t_pct = t_pcts[k]`).
    pub stage_index: usize,
    /// Stage-1 sparsity schedule in percent (A3/A4).
    pub t_pcts: Vec<u32>,
    /// Optimiser steps completed in total (drives the per-iteration SGDR schedule).
    pub steps_done: u64,
    /// Steps per data epoch of the run, which turns every length into steps (0 until the driver
    /// sets it with [`set_steps_per_epoch`](Self::set_steps_per_epoch)).
    #[serde(default)]
    pub steps_per_epoch: u64,
    /// Stage-1 Δ per quantised layer for the current sub-stage (`None` until computed).
    pub delta: Option<Vec<f64>>,
    /// Stage-2 Δ̄ per quantised layer (last value synchronised from the trainable parameters).
    pub delta_bar: Option<Vec<f64>>,
    /// Stage-2 Δ̄ per quantised layer as initialised (T(stage2_init_pct)).
    #[serde(default)]
    pub delta_bar_init: Option<Vec<f64>>,
    /// Length settings copied from the config at creation (a resumed run keeps them), epochs.
    pub warmup_epochs: f64,
    /// Epochs per stage-1 sub-stage.
    pub stage1_epochs_per_stage: f64,
    /// Stage-2 (or baseline) epochs.
    pub stage2_epochs: f64,
    /// Stage-2 initial quantile in percent.
    pub stage2_init_pct: u32,
    /// λ of stage 1 / 2.
    pub lambda_d: f64,
}

/// `round(epochs · S)` steps.
///
/// Guide: [Alg. 1 line 4](crate::guide#alg1-line-4).
pub fn epochs_to_steps(epochs: f64, steps_per_epoch: u64) -> u64 {
    (epochs * steps_per_epoch as f64).round().max(0.0) as u64
}

impl Algorithm1 {
    /// Fresh state at the start of a run of `cfg.method` (lengths from `cfg`; a baseline runs
    /// `stage2_epochs`).
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    ///
    /// # Errors
    /// `Config` if the configuration is invalid.
    pub fn new(cfg: &HlaConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            method: cfg.method,
            phase: match cfg.method {
                Method::Hla if cfg.hs_warmup_epochs > 0.0 => Phase::Warmup,
                Method::Hla => Phase::Stage1,
                _ => Phase::Baseline,
            },
            stage_index: 0,
            t_pcts: cfg.stage1_t_pcts(),
            steps_done: 0,
            steps_per_epoch: 0,
            delta: None,
            delta_bar: None,
            delta_bar_init: None,
            warmup_epochs: cfg.hs_warmup_epochs,
            stage1_epochs_per_stage: cfg.stage1_epochs_per_stage,
            stage2_epochs: cfg.stage2_epochs,
            stage2_init_pct: cfg.stage2_init_pct,
            lambda_d: cfg.lambda_d,
        })
    }

    /// The state at the start of stage 2 of a run of `cfg` (HLA) after `steps_done` steps, for a
    /// run that continues a finished stage-1 run: the steps must be exactly those of the
    /// warm-up and stage 1 under `cfg`, and stage 2 must have steps.
    ///
    /// Guide: [Alg. 1 line 11](crate::guide#alg1-line-11).
    ///
    /// # Errors
    /// `Config` for an invalid configuration; `State` if the steps do not end stage 1.
    pub fn at_stage2(cfg: &HlaConfig, steps_per_epoch: u64, steps_done: u64) -> Result<Self> {
        let mut a = Self::new(cfg)?;
        if a.method != Method::Hla {
            return Err(HlaError::State {
                op: "at_stage2",
                reason: format!("method {} has no stage 2", a.method),
            });
        }
        a.set_steps_per_epoch(steps_per_epoch)?;
        a.phase = Phase::Stage2;
        a.stage_index = a.t_pcts.len();
        a.steps_done = steps_done;
        if a.phase_start() != steps_done || a.segment_end() <= steps_done {
            return Err(HlaError::State {
                op: "at_stage2",
                reason: format!(
                    "{steps_done} steps done, but stage 1 ends at step {} and stage 2 at {}",
                    a.phase_start(),
                    a.segment_end()
                ),
            });
        }
        Ok(a)
    }

    /// Fixes the number of steps per epoch (once; a resumed run must keep its data) and moves
    /// past zero-length segments.
    ///
    /// Guide: [Alg. 1 line 4](crate::guide#alg1-line-4).
    ///
    /// # Errors
    /// `State` if it is 0 or differs from the value already set.
    pub fn set_steps_per_epoch(&mut self, steps: u64) -> Result<()> {
        if steps == 0 || (self.steps_per_epoch != 0 && self.steps_per_epoch != steps) {
            return Err(HlaError::State {
                op: "set_steps_per_epoch",
                reason: format!(
                    "the run has {} steps per epoch, the data gives {steps} (another data set or batch size?)",
                    self.steps_per_epoch
                ),
            });
        }
        self.steps_per_epoch = steps;
        self.skip_complete_segments();
        Ok(())
    }

    fn steps(&self, epochs: f64) -> u64 {
        epochs_to_steps(epochs, self.steps_per_epoch)
    }

    /// First step of the current phase (warm-up, stage 1 — all sub-stages —, stage 2 or the
    /// baseline); the SGDR schedule of a phase counts from here.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn phase_start(&self) -> u64 {
        let w = self.steps(self.warmup_epochs);
        let s1 = self.steps(self.t_pcts.len() as f64 * self.stage1_epochs_per_stage);
        match self.phase {
            Phase::Warmup | Phase::Baseline => 0,
            Phase::Stage1 => w,
            Phase::Stage2 | Phase::Done => w + s1,
        }
    }

    /// Step at which the current segment ends.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn segment_end(&self) -> u64 {
        let start = self.phase_start();
        match self.phase {
            Phase::Warmup => self.steps(self.warmup_epochs),
            Phase::Stage1 => {
                start + self.steps((self.stage_index + 1) as f64 * self.stage1_epochs_per_stage)
            }
            Phase::Stage2 | Phase::Baseline => start + self.steps(self.stage2_epochs),
            Phase::Done => self.steps_done,
        }
    }

    /// Steps of the whole run.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn total_steps(&self) -> u64 {
        match self.method {
            Method::Hla => {
                self.steps(self.warmup_epochs)
                    + self.steps(self.t_pcts.len() as f64 * self.stage1_epochs_per_stage)
                    + self.steps(self.stage2_epochs)
            }
            _ => self.steps(self.stage2_epochs),
        }
    }

    /// Epochs of the whole run.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn total_epochs(&self) -> f64 {
        match self.method {
            Method::Hla => {
                self.warmup_epochs
                    + self.t_pcts.len() as f64 * self.stage1_epochs_per_stage
                    + self.stage2_epochs
            }
            _ => self.stage2_epochs,
        }
    }

    /// Whether the run is finished.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Current stage-1 t in percent (Stage1 only).
    ///
    /// Guide: [Alg. 1 line 2](crate::guide#alg1-line-2).
    pub fn t_pct(&self) -> Option<u32> {
        (self.phase == Phase::Stage1).then(|| self.t_pcts[self.stage_index])
    }

    /// Whether the current segment's steps are all done (the driver evaluates, then calls
    /// [`end_segment`](Self::end_segment)).
    ///
    /// Guide: [Alg. 1 line 4](crate::guide#alg1-line-4).
    pub fn segment_complete(&self) -> bool {
        self.phase != Phase::Done && self.steps_done >= self.segment_end()
    }

    /// What the current segment needs; `refresh_per_step` = `stage1_delta_refresh == per_step`.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn plan(&self, refresh_per_step: bool) -> SegmentPlan {
        let lambda = match self.phase {
            Phase::Stage1 | Phase::Stage2 => self.lambda_d,
            _ => 0.0,
        };
        SegmentPlan {
            phase: self.phase,
            t_pct: self.t_pct(),
            needs_delta: self.phase == Phase::Stage1 && (self.delta.is_none() || refresh_per_step),
            init_delta_bar_pct: (self.phase == Phase::Stage2 && self.delta_bar.is_none())
                .then_some(self.stage2_init_pct),
            lambda,
            end_step: self.segment_end(),
        }
    }

    /// Stores the stage-1 Δ of the current sub-stage (one value per quantised layer).
    ///
    /// Guide: [Alg. 1 line 3](crate::guide#alg1-line-3).
    ///
    /// # Errors
    /// `State` outside stage 1.
    pub fn set_delta(&mut self, delta: Vec<f64>) -> Result<()> {
        if self.phase != Phase::Stage1 {
            return Err(HlaError::State {
                op: "set_delta",
                reason: format!("Δ is a stage-1 threshold, phase is {:?}", self.phase),
            });
        }
        self.delta = Some(delta);
        Ok(())
    }

    /// Stores Δ̄ (initial value at the start of stage 2, or a snapshot of the trained values).
    ///
    /// Guide: [Alg. 1 line 12](crate::guide#alg1-line-12).
    ///
    /// # Errors
    /// `State` outside stage 2 / done.
    pub fn set_delta_bar(&mut self, delta_bar: Vec<f64>) -> Result<()> {
        if !matches!(self.phase, Phase::Stage2 | Phase::Done) {
            return Err(HlaError::State {
                op: "set_delta_bar",
                reason: format!("Δ̄ exists in stage 2, phase is {:?}", self.phase),
            });
        }
        if self.delta_bar_init.is_none() {
            self.delta_bar_init = Some(delta_bar.clone());
        }
        self.delta_bar = Some(delta_bar);
        Ok(())
    }

    /// Counts one optimiser step.
    ///
    /// Guide: [Alg. 1 line 5](crate::guide#alg1-line-5).
    pub fn record_step(&mut self) {
        self.steps_done += 1;
    }

    /// Ends the current segment if its steps are done and moves to the next non-empty one. At
    /// a sub-stage boundary Δ is cleared (the next [`plan`](Self::plan) asks for T(t_next)).
    /// Returns whether a segment ended.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn end_segment(&mut self) -> bool {
        if !self.segment_complete() {
            return false;
        }
        self.advance();
        self.skip_complete_segments();
        true
    }

    fn advance(&mut self) {
        self.phase = match self.phase {
            Phase::Warmup => Phase::Stage1,
            Phase::Stage1 => {
                self.delta = None;
                self.stage_index += 1;
                if self.stage_index < self.t_pcts.len() {
                    Phase::Stage1
                } else {
                    Phase::Stage2
                }
            }
            Phase::Stage2 | Phase::Baseline | Phase::Done => Phase::Done,
        };
    }

    /// Moves past segments of zero steps (e.g. no warm-up) that are complete before any step.
    fn skip_complete_segments(&mut self) {
        if self.steps_per_epoch == 0 {
            return;
        }
        while self.phase != Phase::Done {
            let empty = self.segment_end() <= self.segment_start();
            if !(empty && self.steps_done >= self.segment_end()) {
                return;
            }
            self.advance();
        }
    }

    /// Step at which the current segment starts.
    fn segment_start(&self) -> u64 {
        let start = self.phase_start();
        match self.phase {
            Phase::Stage1 => {
                start + self.steps(self.stage_index as f64 * self.stage1_epochs_per_stage)
            }
            _ => start,
        }
    }

    /// JSON form for checkpoints.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    ///
    /// # Errors
    /// Never in practice (all fields serialise).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| HlaError::State {
            op: "algorithm1.to_json",
            reason: e.to_string(),
        })
    }

    /// Parses [`to_json`](Self::to_json) output.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    ///
    /// # Errors
    /// `State` if the document is not a valid state.
    pub fn from_json(s: &str) -> Result<Self> {
        serde_json::from_str(s).map_err(|e| HlaError::State {
            op: "algorithm1.from_json",
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs every step of `a`, answering the plans; returns (phase, t, steps of the segment).
    fn walk(a: &mut Algorithm1) -> Vec<(Phase, Option<u32>, u64)> {
        let mut out = Vec::new();
        let mut seg_steps = 0;
        while !a.is_done() {
            let p = a.plan(false);
            if p.needs_delta {
                a.set_delta(vec![0.1]).unwrap();
            }
            if p.init_delta_bar_pct.is_some() {
                a.set_delta_bar(vec![0.2]).unwrap();
            }
            a.record_step();
            seg_steps += 1;
            if a.segment_complete() {
                out.push((p.phase, p.t_pct, seg_steps));
                seg_steps = 0;
                assert!(a.end_segment());
            }
        }
        out
    }

    /// Default HLA run: 10 sub-stages of 10 epochs with t = 30..66, Δ asked once per sub-stage,
    /// then 200 stage-2 epochs with Δ̄ initialised at T(80) once.
    #[test]
    fn default_schedule_walk() {
        let cfg = HlaConfig::default();
        let mut a = Algorithm1::new(&cfg).unwrap();
        a.set_steps_per_epoch(3).unwrap();
        assert_eq!(a.total_epochs(), 300.0);
        assert_eq!(a.total_steps(), 900);
        assert_eq!(a.phase, Phase::Stage1, "no warm-up");
        let mut delta_requests = Vec::new();
        let mut inits = 0;
        let mut steps = 0;
        while !a.is_done() {
            let p = a.plan(false);
            if p.needs_delta {
                delta_requests.push(p.t_pct.unwrap());
                a.set_delta(vec![0.1]).unwrap();
            }
            if let Some(pct) = p.init_delta_bar_pct {
                assert_eq!(pct, 80);
                inits += 1;
                a.set_delta_bar(vec![0.2]).unwrap();
            }
            if p.phase == Phase::Stage2 {
                assert_eq!(p.lambda, 1.0);
            }
            a.record_step();
            steps += 1;
            a.end_segment();
        }
        assert_eq!(delta_requests, vec![30, 34, 38, 42, 46, 50, 54, 58, 62, 66]);
        assert_eq!((inits, steps, a.steps_done), (1, 900, 900));
    }

    /// Half-epoch sub-stages end on every epoch boundary and half-way, with lengths alternating
    /// when the epoch has an odd number of steps; stage 2 then runs whole epochs.
    #[test]
    fn fractional_substages_are_rounded_cumulatively() {
        let cfg = HlaConfig {
            stage1_epochs_per_stage: 0.5,
            stage2_epochs: 3.0,
            ..Default::default()
        };
        let mut a = Algorithm1::new(&cfg).unwrap();
        a.set_steps_per_epoch(391).unwrap();
        let segs = walk(&mut a);
        assert_eq!(segs.len(), 11);
        let s1: Vec<u64> = segs[..10].iter().map(|s| s.2).collect();
        assert_eq!(s1, vec![196, 195, 196, 195, 196, 195, 196, 195, 196, 195]);
        assert_eq!(s1.iter().sum::<u64>(), 5 * 391);
        assert_eq!(segs[10], (Phase::Stage2, None, 3 * 391));
        let mut b = Algorithm1::new(&cfg).unwrap();
        b.set_steps_per_epoch(390).unwrap();
        assert!(walk(&mut b)[..10].iter().all(|s| s.2 == 195));
    }

    /// A state serialised at any step resumes to the identical sequence of plans.
    #[test]
    fn resume_from_json_is_exact() {
        let cfg = HlaConfig {
            stage1_epochs_per_stage: 0.7,
            stage2_epochs: 1.5,
            hs_warmup_epochs: 0.3,
            ..Default::default()
        };
        let run = |a: &mut Algorithm1, n: usize| {
            let mut log = Vec::new();
            for _ in 0..n {
                let p = a.plan(false);
                if p.needs_delta {
                    a.set_delta(vec![p.t_pct.unwrap() as f64]).unwrap();
                }
                if p.init_delta_bar_pct.is_some() {
                    a.set_delta_bar(vec![0.5]).unwrap();
                }
                a.record_step();
                let ended = a.end_segment();
                log.push((p.phase, p.t_pct, p.lambda, a.delta.clone(), ended));
            }
            log
        };
        let mut a = Algorithm1::new(&cfg).unwrap();
        a.set_steps_per_epoch(7).unwrap();
        let first = run(&mut a, 9);
        assert_eq!(first[0].0, Phase::Warmup);
        assert_eq!(first[0].2, 0.0);
        let snap = a.to_json().unwrap();
        let total = a.total_steps() as usize;
        let rest_a = run(&mut a, total - 9);
        let mut b = Algorithm1::from_json(&snap).unwrap();
        b.set_steps_per_epoch(7).unwrap();
        assert!(b.set_steps_per_epoch(8).is_err());
        let rest_b = run(&mut b, total - 9);
        assert_eq!(rest_a, rest_b);
        assert!(a.is_done() && b.is_done());
        assert_eq!(a, b);
        // 0.3·7 = 2.1 → 2 warm-up steps, 10 × 0.7 · 7 = 49, 1.5 · 7 = 10.5 → 11
        assert_eq!(a.steps_done, 2 + 49 + 11);
    }

    #[test]
    fn baselines_and_per_step_refresh() {
        for m in [Method::Fp, Method::Twn, Method::Ttq] {
            let cfg = HlaConfig {
                method: m,
                stage2_epochs: 2.0,
                ..Default::default()
            };
            let mut a = Algorithm1::new(&cfg).unwrap();
            a.set_steps_per_epoch(1).unwrap();
            assert_eq!(a.plan(false).phase, Phase::Baseline);
            assert_eq!(a.plan(false).lambda, 0.0);
            a.record_step();
            assert!(!a.end_segment());
            a.record_step();
            assert!(a.end_segment());
            assert!(a.is_done());
        }
        let mut a = Algorithm1::new(&HlaConfig::default()).unwrap();
        a.set_steps_per_epoch(10).unwrap();
        a.set_delta(vec![0.1]).unwrap();
        assert!(!a.plan(false).needs_delta);
        assert!(a.plan(true).needs_delta);
        assert!(a.set_delta_bar(vec![0.1]).is_err());
    }

    /// A checkpoint of the epoch-counting layout (before fractional lengths) still loads.
    #[test]
    fn old_layout_loads() {
        let old = r#"{"method":"twn","phase":"baseline","stage_index":0,"t_pcts":[30],"epoch_in_phase":1,"epochs_done":1,"steps_done":40,"delta":null,"delta_bar":null,"warmup_epochs":0,"stage1_epochs_per_stage":10,"stage2_epochs":10,"stage2_init_pct":80,"lambda_d":1.0}"#;
        let mut a = Algorithm1::from_json(old).unwrap();
        a.set_steps_per_epoch(40).unwrap();
        assert_eq!((a.stage2_epochs, a.steps_done), (10.0, 40));
        assert!(!a.segment_complete());
        assert_eq!(a.total_steps(), 400);
    }
}
