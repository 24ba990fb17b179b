//! W2A8 inference from an exported ternary model: the quantised layers take 8-bit activations
//! and compute with integer kernels ([`hla_tensor::ternary_conv`]); everything else (first conv,
//! FC, BatchNorm, residual adds) stays f32, through the model's own forward.
//!
//! Each quantised layer's input is quantised with a per-tensor step and zero point,
//! `x ≈ s·(q − z)`, calibrated once from the min / max that layer's input reaches over N
//! training images under the exact (W2/A32) packed model ([`calibrate`]) and stored in the
//! export (metadata `a8_calibration`). Post-ReLU inputs get `z = 0` and the full 0..=255 range.
//! HLA's input normalisation divides by the patch norm of the *quantised* input, so the
//! hyperspherical geometry holds for what the integer kernel sees.
//!
//! A fused layer whose output is the very next fused layer's input (conv → BN → ReLU feeding a
//! conv, as inside every residual block and inverted bottleneck) learns that at the first
//! forward; from then on its epilogue also writes the output's codes on the next layer's grid,
//! which that layer takes instead of quantising the f32 output again (the same codes: the
//! quantiser's formula on the same values).
//!
//! Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).

use crate::error::{HlaError, Result};
use crate::export::PackedModel;
use crate::ops::hyperspherical::divide_by_patch_norm;
use crate::packed::{load_packed, PackedHook};
use hla_autograd::{ops, AutogradError, Conv2dParams, Par, Tape, Var};
use hla_models::{BnEval, FusedAct, LayerHook, Mode, Model};
use hla_tensor::ternary_conv::{
    ternary_conv2d_u8_requant, Activation, Int8Isa, PackedCodes, QuantInput, TernaryConv,
};
use hla_tensor::ternary_gemm::quantize_u8_vec;
use ndarray::{Array4, ArrayD};
use std::collections::BTreeMap;

/// Metadata key of the calibration in an export.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
pub const CALIBRATION_KEY: &str = "a8_calibration";

/// Step and zero point of one layer's 8-bit input: `x ≈ scale·(q − zero)`.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActQuant {
    /// Step.
    pub scale: f32,
    /// Code of 0.0.
    pub zero: u8,
}

impl ActQuant {
    /// The affine 8-bit grid covering `[min(lo, 0), max(hi, 0)]` (0.0 exactly representable):
    /// non-negative inputs get `zero = 0`; an all-zero or non-finite range gets step 1.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    pub fn from_range(lo: f32, hi: f32) -> Self {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let span = hi - lo;
        if !(span.is_finite() && span > 0.0) {
            return ActQuant {
                scale: 1.0,
                zero: 0,
            };
        }
        let scale = span / 255.0;
        let zero = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        ActQuant { scale, zero }
    }
}

/// The calibration stored in an export: images used and each quantised layer's input grid.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// Number of training images the ranges were taken over.
    pub images: usize,
    /// Layer (torchvision module name) → input grid.
    pub layers: BTreeMap<String, ActQuant>,
}

impl Calibration {
    /// Stores the calibration in the export's metadata.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    pub fn store(&self, pm: &mut PackedModel) {
        pm.metadata.insert(
            CALIBRATION_KEY.into(),
            serde_json::to_string(self).expect("plain data serialises"),
        );
    }

    /// The calibration of an export, `None` when it has none.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    ///
    /// # Errors
    /// `Format` for malformed JSON or a non-positive / non-finite step.
    pub fn of(pm: &PackedModel) -> Result<Option<Self>> {
        let Some(s) = pm.metadata.get(CALIBRATION_KEY) else {
            return Ok(None);
        };
        let c: Calibration = serde_json::from_str(s).map_err(|e| HlaError::Format {
            path: "packed model".into(),
            reason: format!("{CALIBRATION_KEY}: {e}"),
        })?;
        if let Some((l, q)) = c
            .layers
            .iter()
            .find(|(_, q)| !(q.scale.is_finite() && q.scale > 0.0))
        {
            return Err(HlaError::Format {
                path: "packed model".into(),
                reason: format!("{CALIBRATION_KEY}: {l}: step {} is not positive", q.scale),
            });
        }
        Ok(Some(c))
    }
}

/// Records each quantised layer's input range while the packed hook computes.
struct Recorder<'a> {
    base: &'a mut PackedHook,
    ranges: BTreeMap<String, (f32, f32)>,
}

impl Recorder<'_> {
    fn record(&mut self, tape: &Tape<f32>, layer: &str, x: Var) {
        if !self.base.has_layer(layer) {
            return;
        }
        let v = tape.value(x);
        let (lo, hi) = v
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let e = self
            .ranges
            .entry(layer.to_string())
            .or_insert((f32::INFINITY, f32::NEG_INFINITY));
        *e = (e.0.min(lo), e.1.max(hi));
    }
}

impl LayerHook for Recorder<'_> {
    fn conv2d(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w: Var,
        p: &Conv2dParams,
        mode: Mode,
    ) -> hla_models::Result<Var> {
        self.record(tape, layer, x);
        self.base.conv2d(tape, layer, x, w, p, mode)
    }

    fn linear(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w: Var,
        b: Option<Var>,
        mode: Mode,
    ) -> hla_models::Result<Var> {
        self.record(tape, layer, x);
        self.base.linear(tape, layer, x, w, b, mode)
    }
}

/// Calibrates the 8-bit input grids of `pm`'s quantised layers: runs the exact packed model
/// (loaded into `model`) over `batches` (`[n, 3, h, w]`, normalised, no augmentation) and takes
/// each layer input's min / max ([`ActQuant::from_range`]).
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
///
/// # Errors
/// `Empty` without images; the packed model's and the forward's errors.
pub fn calibrate(
    model: &mut dyn Model,
    pm: &PackedModel,
    batches: impl IntoIterator<Item = ArrayD<f32>>,
) -> Result<Calibration> {
    let mut base = load_packed(model, pm)?;
    let mut rec = Recorder {
        base: &mut base,
        ranges: BTreeMap::new(),
    };
    let mut images = 0;
    for x in batches {
        images += x.shape().first().copied().unwrap_or(0);
        let mut tape = Tape::<f32>::no_grad();
        let xv = tape.constant(x);
        model.forward(&mut tape, xv, Mode::Eval, Some(&mut rec))?;
    }
    if images == 0 {
        return Err(HlaError::Empty { op: "calibrate" });
    }
    let layers = rec
        .ranges
        .into_iter()
        .map(|(l, (lo, hi))| (l, ActQuant::from_range(lo, hi)))
        .collect();
    Ok(Calibration { images, layers })
}

/// One quantised layer of the W2A8 hook. The codes are packed for the kernel at the first
/// forward, when the convolution's groups are known (the weight's shape does not carry them).
#[derive(Debug)]
struct A8Layer {
    act: ActQuant,
    codes_i8: Vec<i8>,
    rows: usize,
    k: usize,
    packed: Option<Packed>,
    alpha: Vec<f32>,
    alpha_neg: Option<Vec<f32>>,
    kernel: (usize, usize),
}

/// Codes in the kernel's layout for one group count.
#[derive(Debug)]
struct Packed {
    groups: usize,
    codes: PackedCodes,
    magnitudes: Option<PackedCodes>,
}

impl A8Layer {
    fn ensure_packed(&mut self, groups: usize) -> std::result::Result<(), AutogradError> {
        if self.packed.as_ref().is_none_or(|p| p.groups != groups) {
            let (kh, kw) = self.kernel;
            let cg = self.k / (kh * kw).max(1);
            let codes = PackedCodes::for_conv(&self.codes_i8, [self.rows, cg, kh, kw], groups)?;
            let magnitudes = self.alpha_neg.as_ref().map(|_| codes.magnitudes());
            self.packed = Some(Packed {
                groups,
                codes,
                magnitudes,
            });
        }
        Ok(())
    }
}

/// W2A8 inference hook: integer kernels for the calibrated quantised layers, the exact packed
/// hook for everything it does not cover.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
#[derive(Debug)]
pub struct A8Hook {
    base: PackedHook,
    layers: BTreeMap<String, A8Layer>,
    isa: Int8Isa,
    par: Par,
    fuse: bool,
    fuse_sum: bool,
    fused: usize,
    /// Fused layer → the grid of the fused layer that reads its output (learnt).
    next_grid: BTreeMap<String, ActQuant>,
    /// The output of the last hook call, when it was a fused layer's.
    last: Option<Produced>,
    reused: usize,
}

/// A fused layer's output as the next hook call can recognise it: the value `var` at tape
/// length `tape_len` (nothing recorded since) with data at `addr`, and its codes on the next
/// layer's grid when that is known.
#[derive(Debug)]
struct Produced {
    layer: String,
    var: Var,
    tape_len: usize,
    addr: usize,
    codes: Option<(ActQuant, Array4<u8>)>,
}

impl Produced {
    /// Whether `x` on `tape` is this output, untouched since.
    fn is(&self, tape: &Tape<f32>, x: Var) -> bool {
        x == self.var && tape.len() == self.tape_len && tape.value(x).as_ptr() as usize == self.addr
    }
}

/// Loads `pm` into `model` like [`load_packed`] and returns the W2A8 hook over its calibration,
/// running the best integer kernel of this CPU.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
///
/// # Errors
/// `Format` when the export has no calibration (calibrate it first), a calibrated layer is not
/// in the file, or codes / shapes are malformed.
pub fn load_a8(model: &mut dyn Model, pm: &PackedModel) -> Result<A8Hook> {
    let base = load_packed(model, pm)?;
    let calib = Calibration::of(pm)?.ok_or_else(|| HlaError::Format {
        path: "packed model".into(),
        reason: format!("no {CALIBRATION_KEY}: calibrate the export first (`hla calibrate`)"),
    })?;
    let qnames = crate::packed::quantised_names(pm)?;
    let mut layers = BTreeMap::new();
    for (layer, act) in &calib.layers {
        let weight = qnames
            .iter()
            .find(|(l, _)| l == layer)
            .map(|(_, w)| w)
            .ok_or_else(|| HlaError::Format {
                path: "packed model".into(),
                reason: format!("{CALIBRATION_KEY}: {layer} is not a quantised layer"),
            })?;
        let pl = pm
            .layers
            .iter()
            .find(|l| l.name == *weight)
            .ok_or_else(|| HlaError::Format {
                path: "packed model".into(),
                reason: format!("{weight}: no packed codes"),
            })?;
        let (rows, k) = crate::real::rows_shape("load_a8", &pl.shape)?;
        let kernel = match pl.shape.as_slice() {
            &[_, _, kh, kw] => (kh, kw),
            _ => (1, 1),
        };
        layers.insert(
            layer.clone(),
            A8Layer {
                act: *act,
                codes_i8: pl.codes_i8()?,
                rows,
                k,
                packed: None,
                alpha: pl.alpha.clone(),
                alpha_neg: pl.alpha_neg.clone(),
                kernel,
            },
        );
    }
    Ok(A8Hook {
        base,
        layers,
        isa: Int8Isa::detect(),
        par: Par::Rayon,
        fuse: true,
        fuse_sum: true,
        fused: 0,
        next_grid: BTreeMap::new(),
        last: None,
        reused: 0,
    })
}

impl A8Hook {
    /// Forces an integer kernel (tests compare them) and the thread use.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    pub fn with_kernel(mut self, isa: Int8Isa, par: Par) -> Self {
        self.isa = isa;
        self.par = par;
        self
    }

    /// Whether a BatchNorm after a quantised conv is folded into the kernel's epilogue (and the
    /// activation fused) in evaluation — on by default; off runs BN and activation as the
    /// model's own f32 ops (tests compare both).
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    pub fn with_bn_folding(mut self, fuse: bool) -> Self {
        self.fuse = fuse;
        self
    }

    /// Whether a residual block's last fused conv also adds the block's shortcut and applies
    /// the activation after the sum in its epilogue (the same bits as the sum after it) — on by
    /// default; off leaves the sum and activation to the model's f32 ops (tests compare both).
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    pub fn with_sum_epilogue(mut self, fuse: bool) -> Self {
        self.fuse_sum = fuse;
        self
    }

    /// How many conv → BN (→ activation) calls ran fused so far.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    pub fn fused_calls(&self) -> usize {
        self.fused
    }

    /// How many fused layers took their input's codes from the previous layer's epilogue
    /// instead of quantising it (see the module doc).
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    pub fn reused_codes(&self) -> usize {
        self.reused
    }

    /// The integer kernel in use.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    pub fn kernel(&self) -> Int8Isa {
        self.isa
    }

    /// Logits of `x` in eval mode through the W2A8 layers.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    ///
    /// # Errors
    /// Model errors.
    pub fn eval_logits(&mut self, model: &mut dyn Model, x: ArrayD<f32>) -> Result<ArrayD<f32>> {
        self.last = None;
        let mut tape = Tape::<f32>::no_grad();
        let xv = tape.constant(x);
        let y = model.forward(&mut tape, xv, Mode::Eval, Some(self))?;
        Ok(tape.value(y).clone())
    }
}

/// What the integer conv applies after the products: per-channel scales (α, or α folded with
/// the gain and a BatchNorm), a shift, per-position norms and an activation.
struct Epilogue<'a> {
    alpha: &'a [f32],
    alpha_neg: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
    norms: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    act: Activation,
}

/// Quantises a 4-D input with the layer's grid.
fn quantise(l: &A8Layer, x4: ndarray::ArrayView4<f32>, par: Par) -> Array4<u8> {
    let xs = x4.as_standard_layout();
    let xs_slice = xs.as_slice().expect("standard layout");
    let q = quantize_u8_vec(xs_slice, l.act.scale, l.act.zero, par);
    Array4::from_shape_vec(xs.dim(), q).expect("one code per element")
}

/// The integer conv of a quantised input with epilogue `ep`.
fn run_conv(
    l: &mut A8Layer,
    q: &Array4<u8>,
    p: &Conv2dParams,
    ep: &Epilogue,
    next: Option<ActQuant>,
    (isa, par): (Int8Isa, Par),
) -> std::result::Result<(Array4<f32>, Option<Array4<u8>>), AutogradError> {
    l.ensure_packed(p.groups)?;
    let pk = l.packed.as_ref().expect("packed above");
    let w = TernaryConv {
        codes: &pk.codes,
        magnitudes: pk.magnitudes.as_ref(),
        kernel: l.kernel,
        alpha: ep.alpha,
        alpha_neg: ep.alpha_neg,
        bias: ep.bias,
        norms: ep.norms,
        residual: ep.residual,
        act: ep.act,
    };
    let qi = QuantInput {
        q: q.view(),
        scale: l.act.scale,
        zero: l.act.zero,
    };
    let next = next.map(|a| (a.scale, a.zero));
    Ok(ternary_conv2d_u8_requant(&qi, &w, p, next, isa, par)?)
}

/// Quantises a 4-D input, runs the integer conv (α only), and returns `(y, quantised input)`.
fn int_conv(
    l: &mut A8Layer,
    x4: ndarray::ArrayView4<f32>,
    p: &Conv2dParams,
    isa: Int8Isa,
    par: Par,
) -> std::result::Result<(Array4<f32>, Array4<u8>), AutogradError> {
    let q = quantise(l, x4, par);
    let (alpha, alpha_neg) = (l.alpha.clone(), l.alpha_neg.clone());
    let ep = Epilogue {
        alpha: &alpha,
        alpha_neg: alpha_neg.as_deref(),
        bias: None,
        norms: None,
        residual: None,
        act: Activation::None,
    };
    let (y, _) = run_conv(l, &q, p, &ep, None, (isa, par))?;
    Ok((y, q))
}

/// Channels whose integer squares (each at most 255²) a u32 sum holds.
#[cfg(not(test))]
const SQUARES_PER_U32: usize = (u32::MAX / (255 * 255)) as usize;
/// Small in the tests, so that their 6-channel inputs take several runs.
#[cfg(test)]
const SQUARES_PER_U32: usize = 4;

/// HLA's patch norms `sqrt(Σ_patch x² + eps)` `[n, groups, h_out, w_out]` of the quantised
/// input `x = s·(q − z)`: the integer squares summed over each group's channels, then over the
/// k×k window (padding is the zero point, which adds 0) as a row sum then a column sum, exact
/// in u64, scaled by s² in f64. Integer sums are exact in any order, so the (sample, group)
/// planes run in parallel with `par` and give the same bits for any thread count.
fn quantised_patch_norms(
    q: &Array4<u8>,
    act: ActQuant,
    (kh, kw): (usize, usize),
    p: &Conv2dParams,
    eps_x: f64,
    par: Par,
) -> std::result::Result<Array4<f32>, AutogradError> {
    let (n, c, h, w) = q.dim();
    let g = p.groups.max(1);
    let (ho, wo) = p.output_hw(h, w, kh, kw)?;
    let cg = c / g;
    let z = act.zero as i16;
    let s2 = (act.scale as f64) * (act.scale as f64);
    let qs = q.as_slice().expect("fresh array is contiguous");
    let mut out = Array4::<f32>::zeros((n, g, ho, wo));
    let os = out.as_slice_mut().expect("fresh array is contiguous");
    let ((sh, sw), (dh, dw), (ph, pw)) = (p.stride, p.dilation, p.padding);
    // output columns ox of kernel column kx inside the input row, and the input column of ox = 0
    let cols: Vec<(isize, usize, usize)> = (0..kw)
        .map(|kx| {
            let off = (kx * dw) as isize - pw as isize;
            let lo = (0..wo)
                .find(|&ox| (ox * sw) as isize + off >= 0)
                .unwrap_or(wo);
            let hi = (lo..wo)
                .find(|&ox| (ox * sw) as isize + off >= w as isize)
                .unwrap_or(wo);
            (off, lo, hi)
        })
        .collect();
    // scratch: channel sums [h, w], row sums [h, wo], one output row's column sums [wo]
    let scratch = || (vec![0u32; h * w], vec![0u64; h * wo], vec![0u64; wo]);
    let plane = |(sq, hs, col): &mut (Vec<u32>, Vec<u64>, Vec<u64>), ig: usize, o: &mut [f32]| {
        let (i, gi) = (ig / g, ig % g);
        hs.fill(0);
        // channels in runs whose squares (each ≤ 255²) cannot overflow a u32, each run's
        // row sums added into the u64 ones
        for run in (gi * cg..(gi + 1) * cg).step_by(SQUARES_PER_U32) {
            sq.fill(0);
            for ci in run..(run + SQUARES_PER_U32).min((gi + 1) * cg) {
                let plane = &qs[(i * c + ci) * h * w..][..h * w];
                for (acc, &v) in sq.iter_mut().zip(plane) {
                    let d = (v as i16 - z).unsigned_abs(); // ≤ 255, so d² fits a u16
                    *acc += (d * d) as u32;
                }
            }
            for (srow, hrow) in sq.chunks_exact(w).zip(hs.chunks_exact_mut(wo)) {
                for &(off, lo, hi) in &cols {
                    for (ox, t) in hrow.iter_mut().enumerate().take(hi).skip(lo) {
                        *t += srow[((ox * sw) as isize + off) as usize] as u64;
                    }
                }
            }
        }
        for (oy, orow) in o.chunks_exact_mut(wo).enumerate() {
            col.fill(0);
            for ky in 0..kh {
                let iy = (oy * sh + ky * dh) as isize - ph as isize;
                if iy < 0 || iy as usize >= h {
                    continue;
                }
                let hrow = &hs[iy as usize * wo..][..wo];
                col.iter_mut().zip(hrow).for_each(|(t, &v)| *t += v);
            }
            for (o, &t) in orow.iter_mut().zip(col.iter()) {
                *o = (s2 * t as f64 + eps_x).sqrt() as f32;
            }
        }
    };
    hla_tensor::for_each_chunk(par, os, ho * wo, scratch, plane);
    Ok(out)
}

fn as4(a: &ArrayD<f32>) -> std::result::Result<ndarray::ArrayView4<'_, f32>, AutogradError> {
    a.view()
        .into_dimensionality::<ndarray::Ix4>()
        .map_err(|_| AutogradError::BadShape {
            op: "a8 conv2d",
            shape: a.shape().to_vec(),
            expected: "[n, c, h, w]".into(),
        })
}

impl A8Hook {
    /// [`LayerHook::conv_bn_act`] (no `r`) and [`LayerHook::conv_bn_add_act`]: the BatchNorm
    /// folded into the integer conv's scales and shift, the shortcut `r` (when it has the
    /// output's shape) and the activation applied in its epilogue.
    #[allow(clippy::too_many_arguments)] // the conv's operands plus the BN, shortcut and activation
    fn fused(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w: &ArrayD<f32>,
        p: &Conv2dParams,
        bn: &BnEval<'_, f32>,
        (r, act): (Option<Var>, FusedAct),
    ) -> hla_models::Result<Option<Var>> {
        // a shortcut is summed in the epilogue when it is a contiguous [n, c_out, h_out, w_out]
        // (quantised layers only); otherwise decline before anything changes, so the model's
        // conv_bn_act call still finds the previous layer's output
        if let Some(r) = r {
            if !self.fuse_sum {
                return Ok(None);
            }
            let (xs, rv) = (tape.value(x).shape(), tape.value(r));
            let want = match (self.layers.get(layer), xs) {
                (Some(l), &[n, _, h, wd]) => {
                    let (kh, kw) = l.kernel;
                    let hw = p.output_hw(h, wd, kh, kw).ok();
                    hw.map(|(ho, wo)| [n, l.alpha.len(), ho, wo])
                }
                _ => None,
            };
            if want.is_none_or(|s| rv.shape() != s) || !rv.is_standard_layout() {
                return Ok(None);
            }
        }
        let prev = self.last.take();
        let Some(l) = self.layers.get_mut(layer) else {
            // a full-precision conv (the first one, or a skipped layer computed with the
            // model's weight `w`): folded in f32 like the rest of the network's inference
            if !self.fuse || self.base.entry(layer).is_some() {
                return Ok(None);
            }
            return hla_models::fold::fold_conv_bn_act(tape, x, w, p, bn, act);
        };
        let e = self
            .base
            .entry(layer)
            .expect("calibrated layers are packed layers");
        let c = l.alpha.len();
        let lens = [
            bn.weight.len(),
            bn.bias.len(),
            bn.running_mean.len(),
            bn.running_var.len(),
        ];
        if !self.fuse || lens.iter().any(|&n| n != c) {
            return Ok(None);
        }
        // y = s_j·(gain_j·conv_j) + t_j with s = γ/sqrt(var + eps), t = β − mean·s (f64)
        let gain = match (e.hyperspherical, &e.gain) {
            (true, Some(g)) => Some(g),
            _ => None,
        };
        let mut scale = vec![0f64; c];
        let mut shift = vec![0f32; c];
        for j in 0..c {
            let s = bn.weight[j] as f64 / (bn.running_var[j] as f64 + bn.eps as f64).sqrt();
            shift[j] = (bn.bias[j] as f64 - bn.running_mean[j] as f64 * s) as f32;
            scale[j] = s * gain.map_or(1.0, |g| g.as_slice().map_or(1.0, |g| g[j] as f64));
        }
        let fold = |a: &[f32]| -> Vec<f32> {
            a.iter()
                .zip(&scale)
                .map(|(&a, &s)| (a as f64 * s) as f32)
                .collect()
        };
        let alpha = fold(&l.alpha);
        let alpha_neg = l.alpha_neg.as_deref().map(fold);
        // the previous fused layer's codes of x when it wrote them on this grid; otherwise
        // quantise, and when x is that layer's output, have it write them from now on
        let q = match prev.filter(|pr| pr.is(tape, x)) {
            Some(Produced {
                codes: Some((grid, q)),
                ..
            }) if grid == l.act => {
                self.reused += 1;
                q
            }
            Some(pr) => {
                self.next_grid.insert(pr.layer, l.act);
                quantise(l, as4(tape.value(x))?, self.par)
            }
            None => quantise(l, as4(tape.value(x))?, self.par),
        };
        let norms = if e.input_norm {
            let nm = quantised_patch_norms(&q, l.act, l.kernel, p, self.base.eps_x(), self.par)?;
            Some(nm.into_raw_vec_and_offset().0)
        } else {
            None
        };
        let ep = Epilogue {
            alpha: &alpha,
            alpha_neg: alpha_neg.as_deref(),
            bias: Some(&shift),
            norms: norms.as_deref(),
            residual: r.map(|r| tape.value(r).as_slice().expect("contiguous, checked above")),
            act: act.into(),
        };
        let next = self.next_grid.get(layer).copied();
        let (y, codes) = run_conv(l, &q, p, &ep, next, (self.isa, self.par))?;
        self.fused += 1;
        let var = tape.constant(y.into_dyn());
        self.last = Some(Produced {
            layer: layer.to_string(),
            var,
            tape_len: tape.len(),
            addr: tape.value(var).as_ptr() as usize,
            codes: next.zip(codes),
        });
        Ok(Some(var))
    }
}

impl LayerHook for A8Hook {
    fn conv2d(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w: Var,
        p: &Conv2dParams,
        mode: Mode,
    ) -> hla_models::Result<Var> {
        self.last = None;
        let Some(l) = self.layers.get_mut(layer) else {
            return self.base.conv2d(tape, layer, x, w, p, mode);
        };
        let (kernel, act) = (l.kernel, l.act);
        let (y, q) = int_conv(l, as4(tape.value(x))?, p, self.isa, self.par)?;
        let mut y = tape.constant(y.into_dyn());
        let e = self
            .base
            .entry(layer)
            .expect("calibrated layers are packed layers");
        if e.input_norm {
            let xn = quantised_patch_norms(&q, act, kernel, p, self.base.eps_x(), self.par)?;
            let xn = tape.constant(xn.into_dyn());
            y = divide_by_patch_norm(tape, y, xn)?;
        }
        Ok(e.apply_conv_gain(tape, y)?)
    }

    fn conv_bn_act(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w: &ArrayD<f32>,
        p: &Conv2dParams,
        bn: &BnEval<'_, f32>,
        act: FusedAct,
    ) -> hla_models::Result<Option<Var>> {
        self.fused(tape, layer, x, w, p, bn, (None, act))
    }

    fn conv_bn_add_act(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w: &ArrayD<f32>,
        p: &Conv2dParams,
        bn: &BnEval<'_, f32>,
        r: Var,
        act: FusedAct,
    ) -> hla_models::Result<Option<Var>> {
        self.fused(tape, layer, x, w, p, bn, (Some(r), act))
    }

    fn fuses_unquantised(&self) -> bool {
        self.fuse
    }

    fn linear(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w: Var,
        b: Option<Var>,
        mode: Mode,
    ) -> hla_models::Result<Var> {
        self.last = None;
        let Some(l) = self.layers.get_mut(layer) else {
            return self.base.linear(tape, layer, x, w, b, mode);
        };
        // [n, in] as one 1×n "image" with `in` channels: the batch becomes the patches.
        let xv = tape.value(x);
        let (n, k) = (xv.shape()[0], xv.len() / xv.shape()[0].max(1));
        let x4 = xv
            .view()
            .into_shape_with_order((n, k))
            .map_err(|e| AutogradError::BadShape {
                op: "a8 linear",
                shape: xv.shape().to_vec(),
                expected: format!("[n, in]: {e}"),
            })?
            .t()
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((1, k, 1, n))
            .expect("k·n elements");
        let p1 = Conv2dParams::new(1, 0);
        let act = l.act;
        let (y, q) = int_conv(l, x4.view(), &p1, self.isa, self.par)?;
        let xd = q.mapv(|v| act.scale * (v as f32 - act.zero as f32));
        let rows = y.shape()[1];
        let y2 = y
            .into_shape_with_order((rows, n))
            .expect("[1, out, 1, n]")
            .t()
            .as_standard_layout()
            .into_owned();
        let mut y = tape.constant(y2.into_dyn());
        let e = self
            .base
            .entry(layer)
            .expect("calibrated layers are packed layers");
        if e.hyperspherical {
            if e.input_norm {
                // the same ops as `normalized_linear`, on the quantised input
                let xd = xd.into_shape_with_order((k, n)).expect("[1, k, 1, n]");
                let xd = tape.constant(xd.t().as_standard_layout().into_owned().into_dyn());
                let x2 = ops::square(tape, xd)?;
                let s = ops::sum(tape, x2, &[1], true)?; // [n, 1]
                let s = ops::add_scalar(tape, s, self.base.eps_x() as f32)?;
                let xn = ops::sqrt(tape, s)?;
                y = ops::div(tape, y, xn)?;
            }
            if let Some(g) = &e.gain {
                let gv = tape.constant(g.clone());
                y = ops::mul(tape, y, gv)?;
            }
        }
        Ok(match b {
            Some(b) => ops::add(tape, y, b)?,
            None => y,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Post-ReLU ranges get zero point 0 and the full 0..=255 grid; signed ranges put 0.0 on a
    /// code exactly; degenerate ranges get a usable step.
    #[test]
    fn grids_from_ranges() {
        let q = ActQuant::from_range(0.0, 2.55);
        assert_eq!(q.zero, 0);
        assert!((q.scale - 0.01).abs() < 1e-8);
        let q = ActQuant::from_range(0.5, 2.55); // the range always includes 0
        assert_eq!(q.zero, 0);
        assert!((q.scale - 0.01).abs() < 1e-8);
        let q = ActQuant::from_range(-1.0, 3.0);
        assert_eq!(q.zero, 64); // 1 / (4/255) = 63.75
        let q = ActQuant::from_range(-2.0, -1.0);
        assert_eq!((q.zero, q.scale), (255, 2.0 / 255.0));
        for (lo, hi) in [(0.0, 0.0), (f32::NAN, f32::NAN), (0.0, f32::INFINITY)] {
            assert_eq!(
                ActQuant::from_range(lo, hi),
                ActQuant {
                    scale: 1.0,
                    zero: 0
                }
            );
        }
    }

    /// The integer patch norms equal the tape's `patch_norm` of the dequantised input (strides,
    /// padding, groups, dilation, a zero point) up to f32 rounding, and exactly the window sum
    /// taken tap by tap, with one thread or several.
    #[test]
    fn quantised_patch_norms_match_patch_norm() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let act = ActQuant {
            scale: 0.02,
            zero: 17,
        };
        for (p, k) in [
            (Conv2dParams::new(1, 1), (3, 3)),
            (Conv2dParams::new(2, 1), (3, 3)),
            (
                Conv2dParams {
                    groups: 3,
                    ..Conv2dParams::new(1, 0)
                },
                (3, 3),
            ),
            (Conv2dParams::new(2, 2).with_dilation(2), (3, 2)),
            (Conv2dParams::new(2, 0), (1, 1)),
        ] {
            let q = Array4::from_shape_fn((2, 6, 7, 9), |_| rng.random::<u8>());
            let got = quantised_patch_norms(&q, act, k, &p, 1e-4, Par::Rayon).unwrap();
            let seq = quantised_patch_norms(&q, act, k, &p, 1e-4, Par::Seq).unwrap();
            assert_eq!(got, seq);
            // the window sum tap by tap, in u64
            let g = p.groups;
            for ((i, gi, oy, ox), &v) in got.indexed_iter() {
                let mut t = 0u64;
                for ci in gi * 6 / g..(gi + 1) * 6 / g {
                    for ky in 0..k.0 {
                        for kx in 0..k.1 {
                            let iy = (oy * p.stride.0 + ky * p.dilation.0) as isize
                                - p.padding.0 as isize;
                            let ix = (ox * p.stride.1 + kx * p.dilation.1) as isize
                                - p.padding.1 as isize;
                            if (0..7).contains(&iy) && (0..9).contains(&ix) {
                                let d = q[[i, ci, iy as usize, ix as usize]] as i64 - 17;
                                t += (d * d) as u64;
                            }
                        }
                    }
                }
                let want = (0.02f32 as f64 * 0.02f32 as f64 * t as f64 + 1e-4).sqrt() as f32;
                assert_eq!(v.to_bits(), want.to_bits(), "{p:?} {i} {gi} {oy} {ox}");
            }
            let xd = q.mapv(|v| act.scale * (v as f32 - act.zero as f32));
            let mut tape = Tape::<f32>::no_grad();
            let xv = tape.constant(xd.into_dyn());
            let want = crate::ops::patch_norm(&mut tape, xv, k, &p, 1e-4).unwrap();
            let want = tape.value(want);
            assert_eq!(got.shape(), want.shape());
            for (a, b) in got.iter().zip(want.iter()) {
                assert!((a - b).abs() <= 1e-5 * b.abs(), "{a} vs {b}");
            }
        }
    }
}
