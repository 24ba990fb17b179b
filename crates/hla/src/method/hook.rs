//! The method's [`LayerHook`]: how every quantisable layer is computed in each mode (FP,
//! hyperspherical stage 1, ternary stage 2, TWN, TTQ), and the L_d terms it records on the way.
//!
//! Guide: [Alg. 1 line 6](crate::guide#alg1-line-6).

use crate::config::{HlaConfig, InputNorm, NormMode};
use crate::ops::{
    ld_term, ld_total, normalized_conv2d, normalized_linear, ternary_ste, ttq, twn, TernarySte,
    TtqOp,
};
use crate::real::{from_rows, with_rows};
use crate::ternary::ternarize_rows;
use hla_autograd::{ops, Conv2dParams, Param, Tape, Var};
use hla_models::{LayerHook, Mode, ModelError, QuantLayerInfo};
use ndarray::{Array2, ArrayD};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How the hook computes quantisable layers right now.
///
/// Guide: [Algorithm 1](crate::guide#alg1).
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
///
/// Guide: [Alg. 1 line 6](crate::guide#alg1-line-6).
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
///
/// Guide: [Alg. 1 line 6](crate::guide#alg1-line-6).
#[derive(Debug)]
pub struct HlaHook {
    pub(super) cfg: HlaConfig,
    pub(super) mode: HookMode,
    pub(super) lambda: f64,
    /// Quantised layers in the model's forward order.
    pub layers: Vec<LayerState>,
    pub(super) index: BTreeMap<String, usize>,
    /// Quantisable layers excluded by `skip_layers` (A23): computed plainly.
    pub(super) skipped: BTreeSet<String>,
    pub(super) ld_terms: Vec<Var>,
}

fn hook_err(reason: String) -> ModelError {
    ModelError::BadConfig {
        arch: "hla hook".into(),
        reason,
    }
}

pub(super) fn scalar_param(v: f64) -> Param<f32> {
    Param::new(ArrayD::from_elem(vec![1], v as f32))
}

pub(super) fn first(p: &Param<f32>) -> f64 {
    p.value().iter().next().copied().unwrap_or(0.0) as f64
}

impl HlaHook {
    /// Current mode.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn mode(&self) -> HookMode {
        self.mode
    }

    /// Sets the mode and the L_d weight λ (0 disables L_d).
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
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
    /// Guide: [Alg. 1 line 8](crate::guide#alg1-line-8).
    ///
    /// # Errors
    /// Tape errors.
    pub fn take_ld(&mut self, tape: &mut Tape<f32>) -> hla_autograd::Result<Option<Var>> {
        let terms = std::mem::take(&mut self.ld_terms);
        ld_total(tape, &terms, self.cfg.ld_reduce, self.lambda)
    }

    /// Drops recorded L_d terms (e.g. after an evaluation forward).
    ///
    /// Guide: [Alg. 1 line 8](crate::guide#alg1-line-8).
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
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedLayer {
    /// Full-precision rows the quantiser saw, `[n, m]` (normalised for HLA, latent for TWN/TTQ).
    pub w: Array2<f32>,
    /// Fake-quantised Ŵ, `[n, m]`.
    pub what: Array2<f32>,
    /// Threshold in force (Δ, Δ̄_l, or the TWN/TTQ Δ).
    pub threshold: Option<f64>,
}
