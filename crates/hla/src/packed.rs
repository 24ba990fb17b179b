//! Export of a trained model to the packed ternary file ([`crate::export`]) and inference
//! directly from the packed form through a [`LayerHook`].
//!
//! The packed hook computes each quantised layer from the stored codes and scales
//! (ŵ = α_j·w̄, bit-identical to the fake-quantised f32 weights) with the same ops as training
//! (hyperspherical input normalisation for HLA), so its logits equal the fake-quantised model's
//! exactly; the tests assert bit equality.
//!
//! Extra names in the file besides the format of [`crate::export`]:
//! - `<layer>.hla_gain` (F32 `[n]`): A18 gains of HLA layers without BN.
//! - metadata `method` (`hla`/`twn`/`ttq`), `input_norm` (`patch`/`none`), `eps_x`,
//!   `no_bn_input_norm`, `arch`, `num_classes`, and `quantised_layers` (JSON list of
//!   `[layer, weight]`).
//!
//! Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).

use crate::config::{InputNorm, Method};
use crate::error::{HlaError, Result};
use crate::export::{PackedLayer, PackedModel};
use crate::method::MethodState;
use crate::ops::{normalized_conv2d, normalized_linear};
use crate::ternary::ternarize_rows;
use hla_autograd::{ops, Conv2dParams, Tape, Var};
use hla_models::{BufferMut, BufferRef, LayerHook, Mode, Model, StateMut, StateRef};
use ndarray::ArrayD;
use std::collections::BTreeMap;

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Fp => "fp",
        Method::Twn => "twn",
        Method::Ttq => "ttq",
        Method::Hla => "hla",
    }
}

/// Packs `model` with the quantisation of `st` in its current mode (HLA stage 2: Ternary(W, Δ̄);
/// TWN / TTQ: their quantisers). Non-quantised state goes in f32 / i64.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
///
/// # Errors
/// `State` if the method is FP or HLA is not in stage 2 / done; format errors.
pub fn export_model(model: &dyn Model, st: &MethodState) -> Result<PackedModel> {
    use crate::method::HookMode;
    let mode = st.phase_mode();
    if !matches!(mode, HookMode::Ternary | HookMode::Twn | HookMode::Ttq) {
        return Err(HlaError::State {
            op: "export_model",
            reason: format!(
                "no ternary weights to export in mode {mode:?} (HLA exports after stage 1)"
            ),
        });
    }
    let mut pm = PackedModel::default();
    let quant = st.quantized(model)?;
    let mut qnames = Vec::new();
    for (l, ql) in st.hook.layers.iter().zip(&quant) {
        let (w, q, t) = (&ql.w, &ql.what, ql.threshold);
        let shape = model
            .params()
            .into_iter()
            .find(|(n, _)| *n == l.info.weight)
            .map(|(_, p)| p.shape().to_vec())
            .ok_or_else(|| HlaError::UnknownLayer {
                op: "export_model",
                layer: l.info.weight.clone(),
            })?;
        let packed = if mode == HookMode::Ternary {
            let tr = ternarize_rows(w.view(), t.unwrap_or(0.0) as f32, st.cfg.empty_row);
            PackedLayer::from_ternary(&l.info.weight, &shape, &tr)?
        } else {
            let qd = q
                .clone()
                .into_shape_with_order(ndarray::IxDyn(&shape))
                .map_err(|e| HlaError::Format {
                    path: l.info.weight.clone(),
                    reason: e.to_string(),
                })?;
            PackedLayer::from_dequantized(&l.info.weight, &qd)?
        };
        pm.layers.push(packed);
        if mode == HookMode::Ternary {
            if let Some(g) = &l.gain {
                pm.dense
                    .insert(format!("{}.hla_gain", l.info.layer), g.value().clone());
            }
        }
        qnames.push((l.info.layer.clone(), l.info.weight.clone()));
    }
    let weights: Vec<&String> = qnames.iter().map(|(_, w)| w).collect();
    for (name, s) in model.state() {
        if weights.contains(&&name) {
            continue;
        }
        match s {
            StateRef::Param(p) => {
                pm.dense.insert(name, p.value().clone());
            }
            StateRef::Buffer(BufferRef::F32(a)) => {
                pm.dense.insert(name, a.clone().into_dyn());
            }
            StateRef::Buffer(BufferRef::Count(c)) => {
                pm.ints.insert(name, ArrayD::from_elem(vec![], c as i64));
            }
        }
    }
    let md = &mut pm.metadata;
    md.insert("method".into(), method_name(st.cfg.method).into());
    md.insert(
        "input_norm".into(),
        match st.cfg.input_norm {
            InputNorm::Patch => "patch",
            InputNorm::None => "none",
        }
        .into(),
    );
    md.insert("eps_x".into(), format!("{:e}", st.cfg.eps_x));
    md.insert(
        "no_bn_input_norm".into(),
        st.cfg.no_bn_input_norm.to_string(),
    );
    md.insert("arch".into(), model.arch().to_string());
    md.insert("num_classes".into(), model.num_classes().to_string());
    md.insert(
        "quantised_layers".into(),
        serde_json::to_string(&qnames).expect("strings serialise"),
    );
    Ok(pm)
}

impl PackedEntry {
    /// `y · gain` per output channel (`[n, c_out, h, w]`) for HLA layers with an A18 gain.
    pub(crate) fn apply_conv_gain(
        &self,
        tape: &mut Tape<f32>,
        y: Var,
    ) -> std::result::Result<Var, hla_autograd::AutogradError> {
        match (self.hyperspherical, &self.gain) {
            (true, Some(g)) => {
                let n = g.len();
                let gv = tape.constant(g.clone());
                let g4 = ops::reshape(tape, gv, &[1, n, 1, 1])?;
                ops::mul(tape, y, g4)
            }
            _ => Ok(y),
        }
    }
}

/// Per-layer data of the packed hook.
#[derive(Debug)]
pub(crate) struct PackedEntry {
    weight: ArrayD<f32>,
    pub(crate) hyperspherical: bool,
    pub(crate) input_norm: bool,
    pub(crate) gain: Option<ArrayD<f32>>,
}

/// Inference from a packed file: every quantised layer computes with the stored ternary weights.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
#[derive(Debug)]
pub struct PackedHook {
    layers: BTreeMap<String, PackedEntry>,
    eps_x: f64,
}

fn meta<'a>(pm: &'a PackedModel, key: &str) -> Result<&'a str> {
    pm.metadata
        .get(key)
        .map(String::as_str)
        .ok_or_else(|| HlaError::Format {
            path: "packed model".into(),
            reason: format!("metadata {key:?} missing"),
        })
}

/// The `[layer, weight]` names of the quantised layers of `pm`.
pub(crate) fn quantised_names(pm: &PackedModel) -> Result<Vec<(String, String)>> {
    serde_json::from_str(meta(pm, "quantised_layers")?).map_err(|e| HlaError::Format {
        path: "packed model".into(),
        reason: format!("quantised_layers: {e}"),
    })
}

/// Loads the dense state of `pm` into `model` (by name; the quantised weights stay untouched)
/// and returns the hook computing the quantised layers from the packed codes.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
///
/// # Errors
/// `Format` for missing metadata / tensors or shape mismatches.
pub fn load_packed(model: &mut dyn Model, pm: &PackedModel) -> Result<PackedHook> {
    let method = meta(pm, "method")?;
    let input_norm = meta(pm, "input_norm")? == "patch";
    let eps_x: f64 = meta(pm, "eps_x")?.parse().map_err(|e| HlaError::Format {
        path: "packed model".into(),
        reason: format!("eps_x: {e}"),
    })?;
    let no_bn_in = meta(pm, "no_bn_input_norm")? == "true";
    let qnames = quantised_names(pm)?;
    let fmt = |reason: String| HlaError::Format {
        path: "packed model".into(),
        reason,
    };
    for (name, s) in model.state_mut() {
        match s {
            StateMut::Param(p) => {
                if let Some(v) = pm.dense.get(&name) {
                    if v.shape() != p.shape() {
                        return Err(fmt(format!(
                            "{name}: shape {:?} vs model {:?}",
                            v.shape(),
                            p.shape()
                        )));
                    }
                    *p.value_mut() = v.clone();
                } else if !qnames.iter().any(|(_, w)| *w == name) {
                    return Err(fmt(format!("{name}: missing")));
                }
            }
            StateMut::Buffer(BufferMut::F32(a)) => {
                let v = pm
                    .dense
                    .get(&name)
                    .ok_or_else(|| fmt(format!("{name}: missing")))?;
                if v.shape() != a.shape() {
                    return Err(fmt(format!(
                        "{name}: shape {:?} vs model {:?}",
                        v.shape(),
                        a.shape()
                    )));
                }
                a.assign(
                    &v.view()
                        .into_dimensionality::<ndarray::Ix1>()
                        .map_err(|e| fmt(e.to_string()))?,
                );
            }
            StateMut::Buffer(BufferMut::Count(c)) => {
                let v = pm
                    .ints
                    .get(&name)
                    .ok_or_else(|| fmt(format!("{name}: missing")))?;
                *c = v.iter().next().copied().unwrap_or(0).max(0) as u64;
            }
        }
    }
    let infos = model.quantisable();
    let mut layers = BTreeMap::new();
    for (layer, weight) in &qnames {
        let pl = pm
            .layers
            .iter()
            .find(|l| l.name == *weight)
            .ok_or_else(|| fmt(format!("{weight}: no packed codes")))?;
        let bn = infos
            .iter()
            .find(|i| i.layer == *layer)
            .map(|i| i.followed_by_bn)
            .ok_or_else(|| {
                fmt(format!(
                    "{layer}: not a quantisable layer of {}",
                    model.arch()
                ))
            })?;
        let hs = method == "hla";
        layers.insert(
            layer.clone(),
            PackedEntry {
                weight: pl.dequantize()?,
                hyperspherical: hs,
                input_norm: hs && input_norm && (bn || no_bn_in),
                gain: pm.dense.get(&format!("{layer}.hla_gain")).cloned(),
            },
        );
    }
    Ok(PackedHook { layers, eps_x })
}

impl PackedHook {
    /// Whether `layer` computes from packed codes.
    pub(crate) fn has_layer(&self, layer: &str) -> bool {
        self.layers.contains_key(layer)
    }

    /// The packed data of `layer`.
    pub(crate) fn entry(&self, layer: &str) -> Option<&PackedEntry> {
        self.layers.get(layer)
    }

    /// ε of the input normalisation.
    pub(crate) fn eps_x(&self) -> f64 {
        self.eps_x
    }

    /// Logits of `x` in eval mode from the packed model.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    ///
    /// # Errors
    /// Model errors.
    pub fn eval_logits(&mut self, model: &mut dyn Model, x: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let mut tape = Tape::<f32>::no_grad();
        let xv = tape.constant(x);
        let y = model.forward(&mut tape, xv, Mode::Eval, Some(self))?;
        Ok(tape.value(y).clone())
    }
}

impl LayerHook for PackedHook {
    fn conv2d(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w_model: Var,
        p: &Conv2dParams,
        _mode: Mode,
    ) -> hla_models::Result<Var> {
        // a quantisable layer not in the file (skip_layers) computes plainly with the weight
        // loaded from the file's dense tensors
        let Some(e) = self.layers.get(layer) else {
            return Ok(ops::conv2d(tape, x, w_model, None, p)?);
        };
        let w = tape.constant(e.weight.clone());
        let y = if e.input_norm {
            normalized_conv2d(tape, x, w, p, self.eps_x)?
        } else {
            ops::conv2d(tape, x, w, None, p)?
        };
        Ok(e.apply_conv_gain(tape, y)?)
    }

    fn linear(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w_model: Var,
        b: Option<Var>,
        _mode: Mode,
    ) -> hla_models::Result<Var> {
        let Some(e) = self.layers.get(layer) else {
            return Ok(ops::linear(tape, x, w_model, b)?);
        };
        let w = tape.constant(e.weight.clone());
        if !e.hyperspherical {
            return Ok(ops::linear(tape, x, w, b)?);
        }
        let mut y = if e.input_norm {
            normalized_linear(tape, x, w, None, self.eps_x)?
        } else {
            ops::linear(tape, x, w, None)?
        };
        if let Some(g) = &e.gain {
            let gv = tape.constant(g.clone());
            y = ops::mul(tape, y, gv)?;
        }
        Ok(match b {
            Some(b) => ops::add(tape, y, b)?,
            None => y,
        })
    }
}

/// Row-wise α·√nnz of a packed layer (the invariant α_j·√nnz_j = 1 of HLA; rows with nnz = 0
/// give 0).
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
///
/// # Errors
/// `Format` for malformed codes.
pub fn alpha_sqrt_nnz(l: &PackedLayer) -> Result<Vec<f64>> {
    let codes = l.codes_i8()?;
    let (n, m) = crate::real::rows_shape("alpha_sqrt_nnz", &l.shape)?;
    Ok((0..n)
        .map(|j| {
            let nnz = codes[j * m..(j + 1) * m]
                .iter()
                .filter(|&&c| c != 0)
                .count();
            l.alpha[j] as f64 * (nnz as f64).sqrt()
        })
        .collect())
}
