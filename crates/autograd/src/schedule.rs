//! Learning-rate schedules as pure functions of the step index, so a resumed run gets the same
//! rates without saving schedule state. Semantics follow PyTorch's closed forms; a "step" is
//! whatever unit the caller counts (the method's default is one SGD iteration).

use crate::{AutogradError, Result};

/// A learning rate for every step `t = 0, 1, 2, …`.
pub trait LrSchedule {
    /// The learning rate to use for step `t`.
    fn lr(&self, t: u64) -> f64;
}

impl<S: LrSchedule + ?Sized> LrSchedule for &S {
    fn lr(&self, t: u64) -> f64 {
        (**self).lr(t)
    }
}

impl<S: LrSchedule + ?Sized> LrSchedule for Box<S> {
    fn lr(&self, t: u64) -> f64 {
        (**self).lr(t)
    }
}

fn positive(op: &'static str, name: &str, v: u64) -> Result<()> {
    if v == 0 {
        return Err(AutogradError::BadArgument {
            op,
            reason: format!("{name} must be >= 1"),
        });
    }
    Ok(())
}

/// `lr(t) = lr`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Constant {
    /// The learning rate.
    pub lr: f64,
}

impl LrSchedule for Constant {
    fn lr(&self, _t: u64) -> f64 {
        self.lr
    }
}

/// `lr(t) = base_lr · γ^⌊t / step_size⌋` (PyTorch's `StepLR`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// Rate at `t = 0`.
    pub base_lr: f64,
    /// Steps between decays (≥ 1; 0 is treated as 1).
    pub step_size: u64,
    /// Decay factor.
    pub gamma: f64,
}

impl Step {
    /// A validated `Step` schedule.
    ///
    /// # Errors
    /// `BadArgument` if `step_size == 0`.
    pub fn new(base_lr: f64, step_size: u64, gamma: f64) -> Result<Self> {
        positive("Step", "step_size", step_size)?;
        Ok(Step {
            base_lr,
            step_size,
            gamma,
        })
    }
}

impl LrSchedule for Step {
    fn lr(&self, t: u64) -> f64 {
        let k = t / self.step_size.max(1);
        self.base_lr * self.gamma.powi(k.min(i32::MAX as u64) as i32)
    }
}

/// Half a cosine from `base_lr` down to `eta_min` over `t_max` steps (PyTorch's
/// `CosineAnnealingLR` closed form):
/// `lr(t) = η_min + (base_lr − η_min)·(1 + cos(π·t / T_max)) / 2`.
/// Past `t_max` the closed form continues (rises again), exactly as PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cosine {
    /// Rate at `t = 0`.
    pub base_lr: f64,
    /// Steps to reach `eta_min` (≥ 1; 0 is treated as 1).
    pub t_max: u64,
    /// Rate at `t = t_max`.
    pub eta_min: f64,
}

impl Cosine {
    /// A validated `Cosine` schedule.
    ///
    /// # Errors
    /// `BadArgument` if `t_max == 0`.
    pub fn new(base_lr: f64, t_max: u64, eta_min: f64) -> Result<Self> {
        positive("Cosine", "t_max", t_max)?;
        Ok(Cosine {
            base_lr,
            t_max,
            eta_min,
        })
    }
}

/// `η_min + (η_max − η_min)·(1 + cos(π·t_cur / t_i)) / 2`.
fn cosine(eta_max: f64, eta_min: f64, t_cur: f64, t_i: f64) -> f64 {
    eta_min + (eta_max - eta_min) * (1.0 + (std::f64::consts::PI * t_cur / t_i).cos()) / 2.0
}

impl LrSchedule for Cosine {
    fn lr(&self, t: u64) -> f64 {
        cosine(
            self.base_lr,
            self.eta_min,
            t as f64,
            self.t_max.max(1) as f64,
        )
    }
}

/// Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2016; PyTorch's
/// `CosineAnnealingWarmRestarts`): periods of length `T_0, T_0·T_mult, T_0·T_mult², …`; inside a
/// period of length `T_i`, at offset `T_cur`,
/// `lr = η_min + (base_lr − η_min)·(1 + cos(π·T_cur / T_i)) / 2`, restarting at `base_lr`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineWarmRestarts {
    /// Rate at the start of every period.
    pub base_lr: f64,
    /// Length of the first period (≥ 1; 0 is treated as 1).
    pub t_0: u64,
    /// Growth factor of the period length (≥ 1; 0 is treated as 1).
    pub t_mult: u64,
    /// Rate approached at the end of every period.
    pub eta_min: f64,
}

impl CosineWarmRestarts {
    /// A validated SGDR schedule.
    ///
    /// # Errors
    /// `BadArgument` if `t_0 == 0` or `t_mult == 0`.
    pub fn new(base_lr: f64, t_0: u64, t_mult: u64, eta_min: f64) -> Result<Self> {
        positive("CosineWarmRestarts", "t_0", t_0)?;
        positive("CosineWarmRestarts", "t_mult", t_mult)?;
        Ok(CosineWarmRestarts {
            base_lr,
            t_0,
            t_mult,
            eta_min,
        })
    }

    /// `(T_cur, T_i)`: offset in the current period and its length, for step `t`.
    pub fn position(&self, t: u64) -> (u64, u64) {
        let (t_0, t_mult) = (self.t_0.max(1), self.t_mult.max(1));
        if t_mult == 1 {
            return (t % t_0, t_0);
        }
        let (mut t_cur, mut t_i) = (t, t_0);
        while t_cur >= t_i {
            t_cur -= t_i;
            t_i = t_i.saturating_mul(t_mult);
        }
        (t_cur, t_i)
    }
}

impl LrSchedule for CosineWarmRestarts {
    fn lr(&self, t: u64) -> f64 {
        let (t_cur, t_i) = self.position(t);
        cosine(self.base_lr, self.eta_min, t_cur as f64, t_i as f64)
    }
}

/// SGDR whose periods are given in (possibly fractional) epochs: the `k`-th restart is at step
/// `round(S · T₀ · (1 + m + … + m^(k−1)))` for `S` steps per epoch, period `T₀` epochs and
/// multiplier `m`, so restarts stay on the same steps however the fractions round (a period of
/// 0.5 epoch restarts at every epoch boundary and half-way, alternating 195 / 196 steps for
/// `S` = 391). Within a period the rate is the same cosine as [`CosineWarmRestarts`], which it
/// equals step for step when `S · T₀` is a whole number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochSgdr {
    /// Rate at the start of every period.
    pub base_lr: f64,
    /// First period in steps, `S · T₀` (> 0; may be fractional).
    pub period_steps: f64,
    /// Growth factor of the period length (≥ 1).
    pub t_mult: u64,
    /// Rate approached at the end of every period.
    pub eta_min: f64,
}

impl EpochSgdr {
    /// A validated schedule: periods of `t0_epochs` epochs of `steps_per_epoch` steps.
    ///
    /// # Errors
    /// `BadArgument` if the first period is shorter than one step, not finite, or `t_mult == 0`.
    pub fn new(
        base_lr: f64,
        t0_epochs: f64,
        steps_per_epoch: u64,
        t_mult: u64,
        eta_min: f64,
    ) -> Result<Self> {
        let period_steps = t0_epochs * steps_per_epoch as f64;
        if !(period_steps.is_finite() && period_steps >= 1.0) {
            return Err(AutogradError::BadArgument {
                op: "EpochSgdr",
                reason: format!(
                    "a period of {t0_epochs} epochs x {steps_per_epoch} steps is shorter than one step"
                ),
            });
        }
        positive("EpochSgdr", "t_mult", t_mult)?;
        Ok(EpochSgdr {
            base_lr,
            period_steps,
            t_mult,
            eta_min,
        })
    }

    /// Step of the `k`-th restart (`k = 0` is step 0).
    fn restart(&self, k: u64) -> u64 {
        let periods = if self.t_mult == 1 {
            k as f64
        } else {
            let m = self.t_mult as f64;
            (m.powf(k as f64) - 1.0) / (m - 1.0)
        };
        (self.period_steps * periods).round() as u64
    }

    /// `(T_cur, T_i)`: offset in the current period and its length, for step `t`.
    pub fn position(&self, t: u64) -> (u64, u64) {
        let mut k = if self.t_mult == 1 {
            (t as f64 / self.period_steps).floor() as u64
        } else {
            0
        };
        while k > 0 && self.restart(k) > t {
            k -= 1;
        }
        while self.restart(k + 1) <= t {
            k += 1;
        }
        let start = self.restart(k);
        (t - start, (self.restart(k + 1) - start).max(1))
    }
}

impl LrSchedule for EpochSgdr {
    fn lr(&self, t: u64) -> f64 {
        let (t_cur, t_i) = self.position(t);
        cosine(self.base_lr, self.eta_min, t_cur as f64, t_i as f64)
    }
}

/// Linear warm-up, then `inner` (PyTorch's `SequentialLR([LinearLR(start_factor,
/// total_iters = W), inner], milestones = [W])`):
/// for `t < W`, `lr(t) = inner.lr(0)·(f₀ + (1 − f₀)·t / W)`; for `t ≥ W`, `lr(t) = inner.lr(t − W)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearWarmup<S> {
    /// Warm-up length `W` (0 = no warm-up).
    pub warmup_steps: u64,
    /// Factor `f₀` of the first step's rate (e.g. 0.1).
    pub start_factor: f64,
    /// Schedule after the warm-up, started at its own step 0.
    pub inner: S,
}

impl<S: LrSchedule> LrSchedule for LinearWarmup<S> {
    fn lr(&self, t: u64) -> f64 {
        if t >= self.warmup_steps {
            return self.inner.lr(t - self.warmup_steps);
        }
        let frac = t as f64 / self.warmup_steps as f64;
        self.inner.lr(0) * (self.start_factor + (1.0 - self.start_factor) * frac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn constant_and_step() {
        assert_eq!(Constant { lr: 0.3 }.lr(1234), 0.3);
        let s = Step::new(1.0, 3, 0.1).unwrap();
        let got: Vec<f64> = (0..7).map(|t| s.lr(t)).collect();
        let want = [1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01];
        assert!(got.iter().zip(want).all(|(&a, b)| close(a, b)), "{got:?}");
        assert!(Step::new(1.0, 0, 0.1).is_err());
    }

    /// Hand values: T_max = 4, base 1, η_min 0: t = 0..4 gives (1 + cos(πt/4))/2 =
    /// 1, (1 + √2/2)/2, 1/2, (1 − √2/2)/2, 0.
    #[test]
    fn cosine_hand_values() {
        let c = Cosine::new(1.0, 4, 0.0).unwrap();
        let r = std::f64::consts::FRAC_1_SQRT_2;
        let want = [1.0, (1.0 + r) / 2.0, 0.5, (1.0 - r) / 2.0, 0.0];
        for (t, w) in want.into_iter().enumerate() {
            assert!(close(c.lr(t as u64), w), "t={t}: {} vs {w}", c.lr(t as u64));
        }
        let c = Cosine::new(0.1, 10, 0.01).unwrap();
        assert!(close(c.lr(5), 0.055)); // midpoint: (0.1 + 0.01) / 2
    }

    /// SGDR, T_0 = 2, T_mult = 2: periods [0, 2), [2, 6), [6, 14), …
    /// PyTorch: `CosineAnnealingWarmRestarts(opt, T_0=2, T_mult=2, eta_min=0.0)` with base lr 1
    /// gives at t = 0..7: 1, 0.5, 1, 0.8536, 0.5, 0.1464, 1, 0.9619 ((1 + cos(π·T_cur/T_i))/2).
    #[test]
    fn sgdr_restarts_with_growing_periods() {
        let s = CosineWarmRestarts::new(1.0, 2, 2, 0.0).unwrap();
        let pos: Vec<(u64, u64)> = (0..8).map(|t| s.position(t)).collect();
        assert_eq!(
            pos,
            [
                (0, 2),
                (1, 2),
                (0, 4),
                (1, 4),
                (2, 4),
                (3, 4),
                (0, 8),
                (1, 8)
            ]
        );
        let h = |c: f64, i: f64| (1.0 + (std::f64::consts::PI * c / i).cos()) / 2.0;
        let want = [1.0, 0.5, 1.0, h(1., 4.), 0.5, h(3., 4.), 1.0, h(1., 8.)];
        for (t, w) in want.into_iter().enumerate() {
            assert!(close(s.lr(t as u64), w), "t={t}");
        }
        // T_mult = 1: the same period forever, with η_min as the floor.
        let s = CosineWarmRestarts::new(0.01, 10, 1, 0.001).unwrap();
        assert!(close(s.lr(25), s.lr(5)) && close(s.lr(30), 0.01));
        assert!(close(s.lr(5), 0.0055));
        assert!(CosineWarmRestarts::new(1.0, 0, 1, 0.0).is_err());
    }

    #[test]
    fn linear_warmup_then_inner_from_its_start() {
        let w = LinearWarmup {
            warmup_steps: 4,
            start_factor: 0.2,
            inner: Step::new(1.0, 2, 0.5).unwrap(),
        };
        let got: Vec<f64> = (0..8).map(|t| w.lr(t)).collect();
        let want = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.5, 0.5];
        assert!(got.iter().zip(want).all(|(&a, b)| close(a, b)), "{got:?}");
    }

    /// Whole-step periods give exactly CosineWarmRestarts; a half-epoch period of an odd epoch
    /// restarts on the epoch boundaries and half-way (196 / 195 steps).
    #[test]
    fn epoch_sgdr_matches_integer_sgdr_and_rounds_fractional_periods() {
        for mult in [1, 2] {
            let a = CosineWarmRestarts::new(0.1, 30, mult, 1e-4).unwrap();
            let b = EpochSgdr::new(0.1, 3.0, 10, mult, 1e-4).unwrap();
            for t in 0..400 {
                assert_eq!(a.position(t), b.position(t), "t = {t}, mult {mult}");
                assert_eq!(a.lr(t).to_bits(), b.lr(t).to_bits());
            }
        }
        let h = EpochSgdr::new(0.1, 0.5, 391, 1, 0.0).unwrap();
        let restarts: Vec<u64> = (0..2000).filter(|&t| h.position(t).0 == 0).collect();
        assert_eq!(&restarts[..5], &[0, 196, 391, 587, 782]);
        assert_eq!(h.position(195), (195, 196));
        assert_eq!(h.position(196), (0, 195));
        assert!(close(h.lr(0), 0.1) && h.lr(195) < 1e-4);
        assert!(EpochSgdr::new(0.1, 0.001, 100, 1, 0.0).is_err());
        assert!(EpochSgdr::new(0.1, 1.0, 100, 0, 0.0).is_err());
    }
}
