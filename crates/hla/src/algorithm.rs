//! Algorithm 1 (spec section 9) as an explicit, resumable state machine.
//!
//! The machine knows *where* a run is (phase, stage index k with t_pct = 30 + 4k, epoch within
//! the phase, global epoch and step counters) and *which thresholds* are in force (the stage-1 Δ
//! per layer, the stage-2 Δ̄ snapshot). It computes nothing from weights itself: the driver asks
//! [`Algorithm1::plan`] what the coming epoch needs (e.g. "compute Δ = T(42) now"), supplies the
//! values, runs the epoch's steps, and calls [`Algorithm1::end_epoch`]. The whole state is serde,
//! so a checkpoint taken between epochs resumes exactly (Δ is stored, not recomputed from weights
//! that moved).
//!
//! Phases by method:
//! - HLA: `Warmup` (hs_warmup_epochs, λ = 0; A21) → `Stage1` × K sub-stages
//!   (stage1_epochs_per_stage each) → `Stage2` (stage2_epochs) → `Done`.
//! - FP / TWN / TTQ: `Baseline` (stage2_epochs) → `Done`.

use crate::config::{HlaConfig, Method};
use crate::error::{HlaError, Result};
use serde::{Deserialize, Serialize};

/// Where a run is.
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

/// What the driver must do before/while running the coming epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochPlan {
    /// Phase of the epoch.
    pub phase: Phase,
    /// Stage-1 sparsity in percent (Stage1 only).
    pub t_pct: Option<u32>,
    /// Stage 1: Δ must be computed now (first epoch of a sub-stage, or every step with
    /// `per_step` refresh) from T(t_pct) and handed to [`Algorithm1::set_delta`].
    pub needs_delta: bool,
    /// Stage 2: Δ̄ must be initialised now to T(pct) and handed to [`Algorithm1::set_delta_bar`].
    pub init_delta_bar_pct: Option<u32>,
    /// Weight λ of L_d in this epoch (0 in warm-up and for baselines).
    pub lambda: f64,
}

/// Algorithm 1's resumable state.
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
    /// Epochs completed within the current phase / sub-stage.
    pub epoch_in_phase: usize,
    /// Epochs completed in total.
    pub epochs_done: u64,
    /// Optimiser steps completed in total (drives the per-iteration SGDR schedule).
    pub steps_done: u64,
    /// Stage-1 Δ per quantised layer for the current sub-stage (`None` until computed).
    pub delta: Option<Vec<f64>>,
    /// Stage-2 Δ̄ per quantised layer (last value synchronised from the trainable parameters).
    pub delta_bar: Option<Vec<f64>>,
    /// Length settings copied from the config at creation (a resumed run keeps them).
    pub warmup_epochs: usize,
    /// Epochs per stage-1 sub-stage.
    pub stage1_epochs_per_stage: usize,
    /// Stage-2 (or baseline) epochs.
    pub stage2_epochs: usize,
    /// Stage-2 initial quantile in percent.
    pub stage2_init_pct: u32,
    /// λ of stage 1 / 2.
    pub lambda_d: f64,
}

impl Algorithm1 {
    /// Fresh state at the start of a run of `cfg.method`.
    ///
    /// # Errors
    /// `Config` if the configuration is invalid.
    pub fn new(cfg: &HlaConfig) -> Result<Self> {
        cfg.validate()?;
        let mut s = Self {
            method: cfg.method,
            phase: Phase::Done,
            stage_index: 0,
            t_pcts: cfg.stage1_t_pcts(),
            epoch_in_phase: 0,
            epochs_done: 0,
            steps_done: 0,
            delta: None,
            delta_bar: None,
            warmup_epochs: cfg.hs_warmup_epochs,
            stage1_epochs_per_stage: cfg.stage1_epochs_per_stage,
            stage2_epochs: cfg.stage2_epochs,
            stage2_init_pct: cfg.stage2_init_pct,
            lambda_d: cfg.lambda_d,
        };
        s.phase = match cfg.method {
            Method::Hla if s.warmup_epochs > 0 => Phase::Warmup,
            Method::Hla => Phase::Stage1,
            _ => Phase::Baseline,
        };
        s.skip_empty_phases();
        Ok(s)
    }

    /// Total number of epochs of the whole run.
    pub fn total_epochs(&self) -> u64 {
        match self.method {
            Method::Hla => {
                (self.warmup_epochs
                    + self.t_pcts.len() * self.stage1_epochs_per_stage
                    + self.stage2_epochs) as u64
            }
            _ => self.stage2_epochs as u64,
        }
    }

    /// Whether the run is finished.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Current stage-1 t in percent (Stage1 only).
    pub fn t_pct(&self) -> Option<u32> {
        (self.phase == Phase::Stage1).then(|| self.t_pcts[self.stage_index])
    }

    /// What the coming epoch needs; `refresh_per_step` = `stage1_delta_refresh == per_step`.
    pub fn plan(&self, refresh_per_step: bool) -> EpochPlan {
        let lambda = match self.phase {
            Phase::Stage1 | Phase::Stage2 => self.lambda_d,
            _ => 0.0,
        };
        EpochPlan {
            phase: self.phase,
            t_pct: self.t_pct(),
            needs_delta: self.phase == Phase::Stage1 && (self.delta.is_none() || refresh_per_step),
            init_delta_bar_pct: (self.phase == Phase::Stage2 && self.delta_bar.is_none())
                .then_some(self.stage2_init_pct),
            lambda,
        }
    }

    /// Stores the stage-1 Δ of the current sub-stage (one value per quantised layer).
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
    /// # Errors
    /// `State` outside stage 2 / done.
    pub fn set_delta_bar(&mut self, delta_bar: Vec<f64>) -> Result<()> {
        if !matches!(self.phase, Phase::Stage2 | Phase::Done) {
            return Err(HlaError::State {
                op: "set_delta_bar",
                reason: format!("Δ̄ exists in stage 2, phase is {:?}", self.phase),
            });
        }
        self.delta_bar = Some(delta_bar);
        Ok(())
    }

    /// Counts one optimiser step.
    pub fn record_step(&mut self) {
        self.steps_done += 1;
    }

    /// Ends the current epoch and advances the phase / sub-stage when its epochs are used up.
    /// At a sub-stage boundary Δ is cleared (the next [`plan`](Self::plan) asks for T(t_next)).
    pub fn end_epoch(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        self.epochs_done += 1;
        self.epoch_in_phase += 1;
        self.skip_empty_phases();
    }

    /// Moves past phases whose epochs are used up (including zero-length ones).
    fn skip_empty_phases(&mut self) {
        loop {
            let len = match self.phase {
                Phase::Warmup => self.warmup_epochs,
                Phase::Stage1 => self.stage1_epochs_per_stage,
                Phase::Stage2 | Phase::Baseline => self.stage2_epochs,
                Phase::Done => return,
            };
            if self.epoch_in_phase < len {
                return;
            }
            self.epoch_in_phase = 0;
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
    }

    /// JSON form for checkpoints.
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

    /// Default HLA run: 10 sub-stages of 10 epochs with t = 30..66, Δ asked once per sub-stage,
    /// then 200 stage-2 epochs with Δ̄ initialised at T(80) once.
    #[test]
    fn default_schedule_walk() {
        let cfg = HlaConfig::default();
        let mut a = Algorithm1::new(&cfg).unwrap();
        assert_eq!(a.total_epochs(), 300);
        let mut seen = Vec::new();
        let mut delta_requests = 0;
        let mut s2 = 0;
        while !a.is_done() {
            let p = a.plan(false);
            if p.needs_delta {
                delta_requests += 1;
                seen.push(p.t_pct.unwrap());
                a.set_delta(vec![0.1]).unwrap();
            }
            if let Some(pct) = p.init_delta_bar_pct {
                assert_eq!(pct, 80);
                a.set_delta_bar(vec![0.2]).unwrap();
            }
            if p.phase == Phase::Stage2 {
                s2 += 1;
                assert_eq!(p.lambda, 1.0);
            }
            a.end_epoch();
        }
        assert_eq!(seen, vec![30, 34, 38, 42, 46, 50, 54, 58, 62, 66]);
        assert_eq!(delta_requests, 10);
        assert_eq!(s2, 200);
        assert_eq!(a.epochs_done, 300);
    }

    /// A state serialised mid-run resumes to the identical sequence of plans.
    #[test]
    fn resume_from_json_is_exact() {
        let cfg = HlaConfig {
            stage1_epochs_per_stage: 2,
            stage2_epochs: 3,
            hs_warmup_epochs: 1,
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
                log.push((p.phase, p.t_pct, p.lambda, a.delta.clone()));
                a.end_epoch();
            }
            log
        };
        let mut a = Algorithm1::new(&cfg).unwrap();
        let first = run(&mut a, 7);
        assert_eq!(first[0].0, Phase::Warmup);
        assert_eq!(first[0].2, 0.0);
        let snap = a.to_json().unwrap();
        let rest_a = run(&mut a, 17);
        let mut b = Algorithm1::from_json(&snap).unwrap();
        let rest_b = run(&mut b, 17);
        assert_eq!(rest_a, rest_b);
        assert!(a.is_done() && b.is_done());
        assert_eq!(a, b);
        assert_eq!(a.epochs_done, 1 + 20 + 3);
    }

    #[test]
    fn baselines_and_per_step_refresh() {
        for m in [Method::Fp, Method::Twn, Method::Ttq] {
            let cfg = HlaConfig {
                method: m,
                stage2_epochs: 2,
                ..Default::default()
            };
            let mut a = Algorithm1::new(&cfg).unwrap();
            assert_eq!(a.plan(false).phase, Phase::Baseline);
            assert_eq!(a.plan(false).lambda, 0.0);
            a.end_epoch();
            a.end_epoch();
            assert!(a.is_done());
        }
        let mut a = Algorithm1::new(&HlaConfig::default()).unwrap();
        a.set_delta(vec![0.1]).unwrap();
        assert!(!a.plan(false).needs_delta);
        assert!(a.plan(true).needs_delta);
        assert!(a.set_delta_bar(vec![0.1]).is_err());
    }
}
