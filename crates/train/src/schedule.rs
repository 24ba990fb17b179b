//! Learning-rate schedules of a training phase, counted in optimizer steps.

use crate::config::{Config, Schedule};
use crate::error::Result;
use hla_autograd::schedule::{Constant, Cosine, EpochSgdr, LrSchedule};

/// The schedule of a phase (`train.schedule`).
pub enum Sched {
    /// Constant.
    Constant(Constant),
    /// One cosine over the phase.
    Cosine(Cosine),
    /// SGDR with period `hla.sgdr_t0_epochs` epochs.
    Sgdr(EpochSgdr),
}

impl Sched {
    /// The rate at step `t`.
    pub fn lr(&self, t: u64) -> f64 {
        match self {
            Sched::Constant(s) => s.lr(t),
            Sched::Cosine(s) => s.lr(t),
            Sched::Sgdr(s) => s.lr(t),
        }
    }

    /// Builds a schedule of `kind` peaking at `lr` for a phase of `epochs` epochs of
    /// `steps_per_epoch` steps (SGDR periods and η_min from `cfg.hla`).
    ///
    /// # Errors
    /// Schedule errors (a zero-length period).
    pub fn new(
        kind: Schedule,
        lr: f64,
        cfg: &Config,
        epochs: usize,
        steps_per_epoch: usize,
    ) -> Result<Sched> {
        let spe = steps_per_epoch.max(1) as u64;
        Ok(match kind {
            Schedule::Constant => Sched::Constant(Constant { lr }),
            Schedule::Cosine => Sched::Cosine(Cosine::new(
                lr,
                (epochs.max(1) as u64) * spe,
                cfg.hla.sgdr_eta_min,
            )?),
            Schedule::Sgdr => Sched::Sgdr(EpochSgdr::new(
                lr,
                cfg.hla.sgdr_t0_epochs,
                spe,
                cfg.hla.sgdr_t_mult as u64,
                cfg.hla.sgdr_eta_min,
            )?),
        })
    }
}
