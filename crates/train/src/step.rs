//! One optimizer step, the same for every method: forward (through the method's layer hook when
//! there is one), J = CE + λ·L_d, backward, SGD on the model's parameters, then the method's own
//! update (Δ̄ with its momentum and clamp, TTQ scales, A18 gains) and after-step work.

use crate::error::{Result, TrainError};
use crate::eval::topk_hits;
use hla_autograd::optim::{ParamGroup, Sgd, SgdConfig, SgdEntry};
use hla_autograd::{ops, Tape, Var};
use hla_core::algorithm::SegmentPlan;
use hla_core::method::MethodState;
use hla_core::HlaConfig;
use hla_models::{LayerHook, Mode, Model};
use hla_tensor::group::Group;
use ndarray::ArrayD;

/// The SGD optimizer of a model's own parameters and their groups, in `model.params()` order:
/// weight decay on all, or on all but rank-1 parameters (BN affine, biases) when
/// `wd_on_bn = false` (A26). The learning rate is passed to every step, not stored here.
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

/// Statistics of one training step (batch means).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// J = CE + λ·L_d.
    pub loss: f64,
    /// Cross-entropy (with label smoothing when set).
    pub ce: f64,
    /// λ·L_d (0 when off).
    pub ld: f64,
    /// Correct top-1 predictions in the batch.
    pub correct: usize,
    /// Batch size (of the global batch in a data-parallel step).
    pub n: usize,
    /// Learning rate used.
    pub lr: f64,
}

/// Running sums over the steps of an epoch (or a part of one).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EpochStats {
    /// Σ loss·n.
    pub loss: f64,
    /// Σ CE·n.
    pub ce: f64,
    /// Σ λL_d·n.
    pub ld: f64,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Samples.
    pub n: usize,
}

impl EpochStats {
    /// Adds one step's batch.
    pub fn add(&mut self, s: &StepStats) {
        let n = s.n as f64;
        self.loss += s.loss * n;
        self.ce += s.ce * n;
        self.ld += s.ld * n;
        self.correct += s.correct;
        self.n += s.n;
    }
    /// Mean loss.
    pub fn mean_loss(&self) -> f64 {
        self.loss / self.n.max(1) as f64
    }
    /// Top-1 training accuracy in percent.
    pub fn acc(&self) -> f64 {
        100.0 * self.correct as f64 / self.n.max(1) as f64
    }
}

/// What trains: a model, its optimizer, and for HLA / TWN / TTQ (or hyperspherical training)
/// the method state of crates/hla, whose hook computes the quantisable layers.
pub struct Learner {
    /// The network.
    pub model: Box<dyn Model>,
    /// Method state; `None` trains the plain full-precision network.
    pub method: Option<MethodState>,
    /// Optimizer of the model's parameters.
    pub sgd: Sgd<f32>,
    /// Groups of the model's parameters, in `model.params()` order.
    pub groups: Vec<ParamGroup>,
    /// Label smoothing of the cross-entropy (0 = none).
    pub label_smoothing: f64,
    /// Data-parallel group: each step's batch is this rank's slice of the global batch, and
    /// the step computes the single-process result of the whole batch (`None`: one process).
    pub group: Option<Group>,
    /// With a group: per-rank BatchNorm statistics (`train.sync_bn = false`) instead of the
    /// global batch's.
    pub local_bn: bool,
}

impl Learner {
    /// A learner with the optimizer of [`model_optimizer`] (momentum, decay, Nesterov from `cfg`).
    pub fn new(model: Box<dyn Model>, method: Option<MethodState>, cfg: &HlaConfig) -> Self {
        let (sgd, groups) = model_optimizer(cfg, model.as_ref());
        Learner {
            model,
            method,
            sgd,
            groups,
            label_smoothing: 0.0,
            group: None,
            local_bn: false,
        }
    }

    /// The method state, if any.
    pub fn state(&self) -> Option<&MethodState> {
        self.method.as_ref()
    }

    /// Whether the method's schedule is finished (always false without a method).
    pub fn is_done(&self) -> bool {
        self.method.as_ref().is_some_and(|st| st.algo.is_done())
    }

    /// Prepares the method's current segment (Δ = T(t) at a sub-stage start, Δ̄ = T(80) at
    /// the start of stage 2, see [`MethodState::begin_segment`]); `None` without a method.
    ///
    /// # Errors
    /// Method errors (threshold of empty weights, a finished run).
    pub fn begin_segment(&mut self) -> Result<Option<SegmentPlan>> {
        let model = self.model.as_ref();
        match self.method.as_mut() {
            Some(st) => Ok(Some(st.begin_segment(model)?)),
            None => Ok(None),
        }
    }

    /// Ends the method's segment if its steps are done (Algorithm 1 advances); returns whether
    /// it did (always false without a method).
    pub fn end_segment(&mut self) -> bool {
        self.method.as_mut().is_some_and(|st| st.end_segment())
    }

    /// The model and the hook its forward uses (`None` = plain full precision).
    pub fn parts(&mut self) -> (&mut dyn Model, Option<&mut dyn LayerHook>) {
        match self.method.as_mut() {
            Some(st) => {
                st.hook.clear_ld();
                (self.model.as_mut(), st.hook_mut())
            }
            None => (self.model.as_mut(), None),
        }
    }

    /// One training step on a batch at learning rate `lr`: the method's before-step work
    /// (per-step Δ refresh), forward in train mode, J = CE + λ·L_d, backward, SGD on the model's
    /// parameters, the method's own update and its after-step work (row re-projection, step
    /// count).
    ///
    /// # Shapes
    /// `x`: `[n, c, h, w]`, `labels`: n class indices.
    /// # Errors
    /// `Diverged` for a non-finite loss (nothing is updated); model, tape, optimizer and method
    /// errors.
    pub fn train_step(&mut self, x: ArrayD<f32>, labels: &[usize], lr: f64) -> Result<StepStats> {
        let model = self.model.as_mut();
        if let Some(st) = self.method.as_mut() {
            st.before_step(model)?;
        }
        let mut tape = Tape::<f32>::new();
        tape.set_group(self.group.clone());
        tape.set_local_batch_norm(self.local_bn);
        let xv = tape.batch_input(x);
        let hook = self.method.as_mut().and_then(|st| st.hook_mut());
        let logits = model.forward(&mut tape, xv, Mode::Train, hook)?;
        let (mut correct, _) = topk_hits(tape.value(logits), labels, 1);
        let mut n = labels.len();
        if let Some(g) = tape.group() {
            correct = g
                .sum_count("train_step", correct)
                .map_err(hla_autograd::AutogradError::from)?;
            n = g
                .sum_count("train_step", n)
                .map_err(hla_autograd::AutogradError::from)?;
        }
        let ce = ops::cross_entropy(&mut tape, logits, labels, self.label_smoothing as f32)?;
        let ld = match self.method.as_mut() {
            Some(st) => st.extra_loss(&mut tape)?,
            None => None,
        };
        let loss = match ld {
            Some(l) => ops::add(&mut tape, ce, l)?,
            None => ce,
        };
        let val =
            |t: &Tape<f32>, v: Var| t.value(v).iter().next().copied().unwrap_or(f32::NAN) as f64;
        let (lv, cv, dv) = (
            val(&tape, loss),
            val(&tape, ce),
            ld.map_or(0.0, |l| val(&tape, l)),
        );
        if !lv.is_finite() {
            return Err(TrainError::Diverged { loss: lv });
        }
        let mut grads = tape.backward(loss)?;
        drop(tape); // release the tape's shares of parameter storage before updating in place
        {
            let mut params = model.params_mut();
            if params.len() != self.groups.len() {
                return Err(TrainError::Mismatch(format!(
                    "train_step: {} parameter groups for {} parameters",
                    self.groups.len(),
                    params.len()
                )));
            }
            let gs: Vec<Option<ArrayD<f32>>> =
                params.iter().map(|(_, p)| grads.take_param(p)).collect();
            let mut entries: Vec<SgdEntry<'_, f32>> = params
                .iter_mut()
                .zip(&gs)
                .zip(&self.groups)
                .map(|(((_, p), g), grp)| (&mut **p, g.as_ref(), grp))
                .collect();
            self.sgd.step(lr, &mut entries)?;
        }
        if let Some(st) = self.method.as_mut() {
            st.step_extras(&mut grads, lr)?;
            st.after_step(model)?;
        }
        Ok(StepStats {
            loss: lv,
            ce: cv,
            ld: dv,
            correct,
            n,
            lr,
        })
    }
}
