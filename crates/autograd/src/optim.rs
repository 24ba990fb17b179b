//! Stochastic gradient descent with PyTorch's semantics (`torch.optim.SGD`, dampening 0).
//!
//! For each parameter `p` with gradient `g`, learning rate `lr` and group weight decay `wd`:
//! ```text
//! g ← g + wd·p                                   (weight decay added to the gradient)
//! if momentum ≠ 0:
//!     buf ← g                 at the first step  (buf is a copy of g)
//!     buf ← momentum·buf + g  afterwards         (dampening 0)
//!     g ← g + momentum·buf    if nesterov, else g ← buf
//! p ← p − lr·g
//! ```
//! Parameters without a gradient are skipped (their buffers untouched), as in PyTorch.

use ndarray::{ArrayD, Zip};

use crate::{AutogradError, Float, Param, Result};

/// Hyper-parameters of [`Sgd`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Base learning rate (what a schedule starts from; [`Sgd::step`] takes the current rate).
    pub lr: f64,
    /// Momentum factor (0 = plain SGD).
    pub momentum: f64,
    /// Default weight decay (see [`Sgd::group`]); each [`ParamGroup`] carries its own.
    pub weight_decay: f64,
    /// Nesterov momentum (needs `momentum > 0`).
    pub nesterov: bool,
}

/// Per-parameter-group settings, e.g. no weight decay on BN, bias or threshold parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamGroup {
    /// Weight decay for this group's parameters.
    pub weight_decay: f64,
    /// Multiplier on the learning rate passed to [`Sgd::step`].
    pub lr_mult: f64,
}

impl ParamGroup {
    /// A group with no weight decay and the full learning rate.
    pub fn no_decay() -> Self {
        ParamGroup {
            weight_decay: 0.0,
            lr_mult: 1.0,
        }
    }
}

/// One entry of the list passed to [`Sgd::step`]: the parameter, its gradient (`None` = skip),
/// and its group.
pub type SgdEntry<'a, F> = (&'a mut Param<F>, Option<&'a ArrayD<F>>, &'a ParamGroup);

/// SGD with momentum / Nesterov / weight decay; momentum buffers are kept per position in the
/// parameter list passed to [`Sgd::step`] (callers pass parameters in a fixed order).
#[derive(Clone, Debug)]
pub struct Sgd<F: Float> {
    config: SgdConfig,
    buffers: Vec<Option<ArrayD<F>>>,
}

impl<F: Float> Sgd<F> {
    /// A new optimizer with empty momentum buffers.
    pub fn new(config: SgdConfig) -> Self {
        Sgd {
            config,
            buffers: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The default group: the configuration's weight decay, full learning rate.
    pub fn group(&self) -> ParamGroup {
        ParamGroup {
            weight_decay: self.config.weight_decay,
            lr_mult: 1.0,
        }
    }

    /// Updates every parameter that has a gradient, with learning rate `lr · group.lr_mult`.
    ///
    /// # Errors
    /// `BadArgument` for Nesterov without momentum; `ShapeMismatch` if a gradient's shape differs
    /// from its parameter's; `StateMismatch` if the parameter count or a buffer's shape differs
    /// from the state (e.g. a checkpoint of another model). Nothing is updated on error.
    pub fn step(&mut self, lr: f64, params: &mut [SgdEntry<'_, F>]) -> Result<()> {
        let momentum = self.config.momentum;
        if self.config.nesterov && momentum <= 0.0 {
            return Err(AutogradError::BadArgument {
                op: "sgd",
                reason: "nesterov momentum requires momentum > 0".into(),
            });
        }
        if self.buffers.is_empty() {
            self.buffers = vec![None; params.len()];
        }
        if self.buffers.len() != params.len() {
            return Err(AutogradError::StateMismatch {
                op: "sgd",
                position: self.buffers.len().min(params.len()),
                expected: vec![self.buffers.len()],
                got: vec![params.len()],
            });
        }
        for (i, (p, g, _)) in params.iter().enumerate() {
            if let Some(g) = g {
                if g.shape() != p.shape() {
                    return Err(AutogradError::ShapeMismatch {
                        op: "sgd (gradient vs parameter)",
                        lhs: g.shape().to_vec(),
                        rhs: p.shape().to_vec(),
                    });
                }
            }
            if let Some(buf) = &self.buffers[i] {
                if buf.shape() != p.shape() {
                    return Err(AutogradError::StateMismatch {
                        op: "sgd",
                        position: i,
                        expected: p.shape().to_vec(),
                        got: buf.shape().to_vec(),
                    });
                }
            }
        }
        let mom = F::from_f64(momentum);
        let nesterov = self.config.nesterov;
        for ((p, g, group), buf) in params.iter_mut().zip(&mut self.buffers) {
            let Some(g) = g else { continue };
            let lr = F::from_f64(lr * group.lr_mult);
            let wd = F::from_f64(group.weight_decay);
            let value = p.value_mut();
            if momentum == 0.0 {
                Zip::from(value).and(*g).for_each(|p, &g| {
                    let g = g + wd * *p;
                    *p = *p - lr * g;
                });
                continue;
            }
            match buf {
                None => {
                    // first step: buf = g + wd·p
                    let mut b = ArrayD::zeros(value.raw_dim());
                    Zip::from(value).and(*g).and(&mut b).for_each(|p, &g, b| {
                        let g = g + wd * *p;
                        *b = g;
                        let d = if nesterov { g + mom * g } else { g };
                        *p = *p - lr * d;
                    });
                    *buf = Some(b);
                }
                Some(b) => {
                    Zip::from(value).and(*g).and(b).for_each(|p, &g, b| {
                        let g = g + wd * *p;
                        *b = mom * *b + g;
                        let d = if nesterov { g + mom * *b } else { *b };
                        *p = *p - lr * d;
                    });
                }
            }
        }
        Ok(())
    }

    /// Momentum buffers by parameter position (`None` before a parameter's first update), for
    /// checkpoints.
    pub fn state(&self) -> &[Option<ArrayD<F>>] {
        &self.buffers
    }

    /// Restores momentum buffers saved with [`Sgd::state`]; shapes are checked at the next step.
    ///
    /// # Errors
    /// Currently infallible; returns `Result` so that validation can grow without an API change.
    pub fn load_state(&mut self, buffers: Vec<Option<ArrayD<F>>>) -> Result<()> {
        self.buffers = buffers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p1(v: f64) -> Param<f64> {
        Param::new(ArrayD::from_elem(vec![1], v))
    }

    fn g1(v: f64) -> ArrayD<f64> {
        ArrayD::from_elem(vec![1], v)
    }

    /// Hand computation, p₀ = 1, gradient g = 2p (the gradient of p²), lr 0.1, momentum 0.9,
    /// wd 0.1 (so d = g + wd·p = 2.1p):
    /// step 1: d = 2.1, buf = 2.1, p = 1 − 0.21 = 0.79
    /// step 2: d = 2.1·0.79 = 1.659, buf = 0.9·2.1 + 1.659 = 3.549, p = 0.79 − 0.3549 = 0.4351
    /// PyTorch (float64) gives the same: `p = torch.tensor([1.], dtype=torch.float64,
    /// requires_grad=True); o = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)`,
    /// then twice `o.zero_grad(); (p**2).sum().backward(); o.step()`.
    #[test]
    fn momentum_and_weight_decay_by_hand() {
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.1,
            nesterov: false,
        };
        let mut opt = Sgd::new(cfg);
        let group = opt.group();
        let mut p = p1(1.0);
        for want in [0.79, 0.4351] {
            let g = g1(2.0 * p.value()[[0]]);
            opt.step(cfg.lr, &mut [(&mut p, Some(&g), &group)]).unwrap();
            assert!(
                (p.value()[[0]] - want).abs() < 1e-12,
                "{} vs {want}",
                p.value()[[0]]
            );
        }
        assert!((opt.state()[0].as_ref().unwrap()[[0]] - 3.549).abs() < 1e-12);
    }

    /// Nesterov, no wd, lr 0.1, momentum 0.5, constant gradient 1:
    /// step 1: buf = 1, d = 1 + 0.5·1 = 1.5, p = −0.15
    /// step 2: buf = 0.5 + 1 = 1.5, d = 1 + 0.75 = 1.75, p = −0.15 − 0.175 = −0.325
    #[test]
    fn nesterov_by_hand() {
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.5,
            weight_decay: 0.0,
            nesterov: true,
        };
        let mut opt = Sgd::new(cfg);
        let group = opt.group();
        let mut p = p1(0.0);
        let g = g1(1.0);
        for want in [-0.15, -0.325] {
            opt.step(0.1, &mut [(&mut p, Some(&g), &group)]).unwrap();
            assert!((p.value()[[0]] - want).abs() < 1e-12);
        }
    }

    /// Groups: lr_mult scales the rate, weight decay is per group, a parameter without a
    /// gradient is left alone. Plain SGD (momentum 0): p ← p − lr·mult·(g + wd·p).
    #[test]
    fn groups_and_missing_gradients() {
        let cfg = SgdConfig {
            lr: 0.5,
            momentum: 0.0,
            weight_decay: 0.5,
            nesterov: false,
        };
        let mut opt = Sgd::new(cfg);
        let decayed = opt.group();
        let half_no_decay = ParamGroup {
            weight_decay: 0.0,
            lr_mult: 0.5,
        };
        let (mut a, mut b, mut c) = (p1(2.0), p1(2.0), p1(2.0));
        let g = g1(1.0);
        opt.step(
            0.5,
            &mut [
                (&mut a, Some(&g), &decayed),
                (&mut b, Some(&g), &half_no_decay),
                (&mut c, None, &decayed),
            ],
        )
        .unwrap();
        assert_eq!(a.value()[[0]], 2.0 - 0.5 * (1.0 + 0.5 * 2.0)); // 1.0
        assert_eq!(b.value()[[0]], 2.0 - 0.25 * 1.0); // 1.75
        assert_eq!(c.value()[[0]], 2.0);
    }

    #[test]
    fn state_round_trip_and_mismatches() {
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        };
        let mut a = Sgd::<f64>::new(cfg);
        let group = a.group();
        let (mut p, mut q) = (p1(1.0), p1(1.0));
        let g = g1(1.0);
        a.step(0.1, &mut [(&mut p, Some(&g), &group)]).unwrap();
        let mut b = Sgd::<f64>::new(cfg);
        b.load_state(a.state().to_vec()).unwrap();
        q.value_mut().assign(p.value());
        a.step(0.1, &mut [(&mut p, Some(&g), &group)]).unwrap();
        b.step(0.1, &mut [(&mut q, Some(&g), &group)]).unwrap();
        assert_eq!(p.value(), q.value());

        let mut wrong = Param::new(ArrayD::zeros(vec![2]));
        let g2 = ArrayD::zeros(vec![2]);
        let e = b
            .step(0.1, &mut [(&mut wrong, Some(&g2), &group)])
            .unwrap_err();
        assert!(matches!(e, AutogradError::StateMismatch { .. }), "{e}");
        let e = b.step(0.1, &mut [(&mut q, Some(&g2), &group)]).unwrap_err();
        assert!(matches!(e, AutogradError::ShapeMismatch { .. }), "{e}");
    }
}
