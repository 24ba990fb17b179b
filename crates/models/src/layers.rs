//! Building blocks: Conv2d, BatchNorm2d, Linear, activations and dropout. Each layer knows its
//! full torchvision module name (e.g. `layer1.0.conv1`), which names its state entries and is
//! what a [`LayerHook`] receives.

use hla_autograd::ops;
use hla_autograd::ops::BatchNormState;
use hla_autograd::{Conv2dParams, Float, Param, Tape, Var};
use hla_tensor::PackedWeights;
use ndarray::{ArrayD, Axis, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Mutex, PoisonError};

use crate::init;
use crate::model::{
    BufferMut, BufferRef, Collector, CollectorMut, FusedAct, LayerHook, LayerKind, Mode, Module,
    QuantLayerInfo, StateMut, StateRef,
};
use crate::{ModelError, Result};

/// The optional hook threaded through a forward pass.
pub(crate) type Hook<'h, F> = Option<&'h mut dyn LayerHook<F>>;

/// An f32 array converted to `F` (weights are drawn in f32 for every float type, so an f64 twin
/// of a model starts from the same values).
fn cast<F: Float>(a: ArrayD<f32>) -> ArrayD<F> {
    a.mapv(|v| F::from_f64(v as f64))
}

/// Checks that a model input is `[n ≥ 1, 3, h ≥ 1, w ≥ 1]`.
pub(crate) fn check_input(arch: &str, shape: &[usize]) -> Result<()> {
    if shape.len() != 4 || shape[0] == 0 || shape[1] != 3 || shape[2] == 0 || shape[3] == 0 {
        return Err(ModelError::BadInput {
            arch: arch.to_string(),
            shape: shape.to_vec(),
            expected: "[n >= 1, 3, h, w] (NCHW, RGB)".into(),
        });
    }
    Ok(())
}

/// How a convolution's weight is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvInit {
    /// torchvision: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, bias 0.
    KaimingFanOut,
    /// akamaster CIFAR ResNets: `kaiming_normal_` (fan_in, gain √2).
    KaimingFanIn,
}

/// How a linear layer's weight and bias are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearInit {
    /// `nn.Linear` default: weight and bias `U(±1/√fan_in)` (torchvision ResNet `fc`).
    Torch,
    /// akamaster CIFAR ResNets: weight `kaiming_normal_` (fan_in), bias `nn.Linear` default.
    KaimingFanIn,
    /// torchvision MobileNetV2: weight `N(0, 0.01²)`, bias 0.
    Normal001,
}

/// Hyper-parameters of a [`Conv2d`] (square kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel size `k` (`k × k`).
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Groups (`c_in` for depthwise).
    pub groups: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl ConvSpec {
    /// A `k × k` convolution without bias, groups 1.
    pub fn new(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize) -> Self {
        ConvSpec {
            c_in,
            c_out,
            k,
            stride,
            pad,
            groups: 1,
            bias: false,
        }
    }
    /// Same with `groups`.
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
}

/// 2-D convolution `y = conv2d(x, w) (+ b)`, `w` `[c_out, c_in/groups, k, k]`.
#[derive(Debug)]
pub struct Conv2d<F: Float = f32> {
    /// Module name, e.g. `layer1.0.conv1`.
    pub name: String,
    /// Weight `[c_out, c_in/groups, k, k]`.
    pub weight: Param<F>,
    /// Optional bias `[c_out]`.
    pub bias: Option<Param<F>>,
    /// Stride / padding / dilation / groups.
    pub params: Conv2dParams,
    /// Whether a [`LayerHook`] computes this layer.
    pub quantisable: bool,
    /// Whether a BatchNorm follows (reported in [`QuantLayerInfo`]).
    pub followed_by_bn: bool,
    /// The kernel's packing of `weight`, kept between evaluation forwards.
    packed: EvalPacking<F>,
}

/// The direct kernel's packing of a conv's weights, kept from one forward on a non-recording
/// tape to the next while the weight's [`Param::stamp`] stays the same: evaluation and
/// inference then pack each layer once instead of on every batch (ResNet-18's packing is a
/// fifth of a batch-1 forward). A recording forward drops it, so training holds no copy.
#[derive(Debug, Default)]
struct EvalPacking<F>(Mutex<Option<(u64, PackedWeights<F>)>>);

impl<F: Float> EvalPacking<F> {
    /// `conv2d(x, w, b)` with the packing kept on a non-recording tape; `stamp` is the
    /// [`Param::stamp`] of the weight `w` holds.
    fn conv2d(
        &self,
        tape: &mut Tape<F>,
        (x, w, b): (Var, Var, Option<Var>),
        stamp: u64,
        p: &Conv2dParams,
    ) -> Result<Var> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if tape.is_recording() {
            *kept = None;
            return Ok(ops::conv2d(tape, x, w, b, p)?);
        }
        if kept.as_ref().map(|(s, _)| *s) != Some(stamp) {
            *kept = Some((stamp, PackedWeights::default()));
        }
        let (_, packed) = kept.as_mut().expect("set above");
        Ok(ops::conv2d_packed(tape, x, w, b, p, packed)?)
    }
}

impl<F: Float> Conv2d<F> {
    /// Draws a convolution from `rng` (weight, then bias).
    pub fn new(name: impl Into<String>, s: ConvSpec, init: ConvInit, rng: &mut ChaCha8Rng) -> Self {
        let shape = [s.c_out, s.c_in / s.groups.max(1), s.k, s.k];
        let w = match init {
            ConvInit::KaimingFanOut => init::kaiming_normal_fan_out(&shape, rng),
            ConvInit::KaimingFanIn => init::kaiming_normal_fan_in(&shape, rng),
        };
        let bias = s.bias.then(|| Param::new(ArrayD::zeros(IxDyn(&[s.c_out]))));
        Conv2d {
            name: name.into(),
            weight: Param::new(cast(w)),
            bias,
            params: Conv2dParams::new(s.stride, s.pad).with_groups(s.groups),
            quantisable: false,
            followed_by_bn: true,
            packed: EvalPacking::default(),
        }
    }

    /// Marks the layer quantisable (computed by the hook when one is given).
    pub fn quantisable(mut self, q: bool) -> Self {
        self.quantisable = q;
        self
    }

    /// `x` `[n, c_in, h, w]` → `[n, c_out, h_out, w_out]`.
    pub fn forward(
        &self,
        tape: &mut Tape<F>,
        x: Var,
        mode: Mode,
        hook: &mut Hook<F>,
    ) -> Result<Var> {
        let w = tape.param(&self.weight);
        match hook {
            Some(h) if self.quantisable => {
                let y = h.conv2d(tape, &self.name, x, w, &self.params, mode)?;
                match &self.bias {
                    Some(b) => {
                        let b = tape.param(b);
                        let c = self.weight.shape()[0];
                        let b = ops::reshape(tape, b, &[1, c, 1, 1])?;
                        Ok(ops::add(tape, y, b)?)
                    }
                    None => Ok(y),
                }
            }
            _ => {
                let b = self.bias.as_ref().map(|b| tape.param(b));
                let stamp = self.weight.stamp();
                self.packed.conv2d(tape, (x, w, b), stamp, &self.params)
            }
        }
    }
}

impl<F: Float> Module<F> for Conv2d<F> {
    fn visit<'a>(&'a self, c: &mut Collector<'a, F>) {
        let weight = format!("{}.weight", self.name);
        if self.quantisable {
            c.quant.push(QuantLayerInfo {
                layer: self.name.clone(),
                weight: weight.clone(),
                kind: LayerKind::Conv,
                followed_by_bn: self.followed_by_bn,
            });
        }
        c.state.push((weight, StateRef::Param(&self.weight)));
        if let Some(b) = &self.bias {
            c.state
                .push((format!("{}.bias", self.name), StateRef::Param(b)));
        }
    }
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a, F>) {
        c.state.push((
            format!("{}.weight", self.name),
            StateMut::Param(&mut self.weight),
        ));
        if let Some(b) = &mut self.bias {
            c.state
                .push((format!("{}.bias", self.name), StateMut::Param(b)));
        }
    }
}

/// BatchNorm2d (eps 1e-5, momentum 0.1, affine), PyTorch semantics: train mode normalises with
/// the biased batch variance and updates `running_var` with the unbiased one.
#[derive(Debug)]
pub struct BatchNorm2d<F: Float = f32> {
    /// Module name, e.g. `layer1.0.bn1`.
    pub name: String,
    /// γ `[c]`, initialised to 1.
    pub weight: Param<F>,
    /// β `[c]`, initialised to 0.
    pub bias: Param<F>,
    /// Running statistics and hyper-parameters.
    pub state: BatchNormState<F>,
}

impl<F: Float> BatchNorm2d<F> {
    /// γ = 1, β = 0, running mean 0, running var 1.
    pub fn new(name: impl Into<String>, c: usize) -> Self {
        BatchNorm2d {
            name: name.into(),
            weight: Param::new(ArrayD::ones(IxDyn(&[c]))),
            bias: Param::new(ArrayD::zeros(IxDyn(&[c]))),
            state: BatchNormState::new(c),
        }
    }

    /// `x` `[n, c, h, w]` → same shape.
    pub fn forward(&mut self, tape: &mut Tape<F>, x: Var, mode: Mode) -> Result<Var> {
        let g = tape.param(&self.weight);
        let b = tape.param(&self.bias);
        Ok(ops::batch_norm2d(
            tape,
            x,
            g,
            b,
            &mut self.state,
            mode == Mode::Train,
        )?)
    }

    /// `act(self(x))` in evaluation mode, in one pass over the activation on a tape that does not
    /// record ([`ops::batch_norm2d_eval_act`]; the same values as [`BatchNorm2d::forward`]
    /// followed by [`Act::forward`]).
    pub fn forward_eval_act(&self, tape: &mut Tape<F>, x: Var, act: Act) -> Result<Var> {
        let g = tape.param(&self.weight);
        let b = tape.param(&self.bias);
        Ok(ops::batch_norm2d_eval_act(
            tape,
            (x, g, b),
            &self.state,
            act.activation(),
        )?)
    }

    /// `act(self(x) + r)` in evaluation mode, as one op when the tape does not record
    /// ([`ops::batch_norm2d_eval_add_act`]; the values of [`BatchNorm2d::forward`], the sum and
    /// [`Act::forward`] one after the other).
    pub fn forward_eval_add_act(
        &self,
        tape: &mut Tape<F>,
        x: Var,
        r: Var,
        act: Act,
    ) -> Result<Var> {
        let g = tape.param(&self.weight);
        let b = tape.param(&self.bias);
        Ok(ops::batch_norm2d_eval_add_act(
            tape,
            (x, g, b),
            &self.state,
            r,
            act.activation(),
        )?)
    }

    /// `act(self(x))` in train mode as one op ([`ops::batch_norm2d_train_act`]: the values and
    /// gradients of [`BatchNorm2d::forward`] followed by [`Act::forward`], with two passes over
    /// the activation fewer).
    pub fn forward_train_act(&mut self, tape: &mut Tape<F>, x: Var, act: Act) -> Result<Var> {
        let g = tape.param(&self.weight);
        let b = tape.param(&self.bias);
        Ok(ops::batch_norm2d_train_act(
            tape,
            (x, g, b),
            &mut self.state,
            act.activation(),
        )?)
    }
}

impl<F: Float> Module<F> for BatchNorm2d<F> {
    fn visit<'a>(&'a self, c: &mut Collector<'a, F>) {
        let n = &self.name;
        c.state
            .push((format!("{n}.weight"), StateRef::Param(&self.weight)));
        c.state
            .push((format!("{n}.bias"), StateRef::Param(&self.bias)));
        let s = &self.state;
        c.bn_momenta.push((n.clone(), s.momentum));
        c.state.push((
            format!("{n}.running_mean"),
            StateRef::Buffer(BufferRef::F32(&s.running_mean)),
        ));
        c.state.push((
            format!("{n}.running_var"),
            StateRef::Buffer(BufferRef::F32(&s.running_var)),
        ));
        c.state.push((
            format!("{n}.num_batches_tracked"),
            StateRef::Buffer(BufferRef::Count(s.num_batches_tracked)),
        ));
    }
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a, F>) {
        let n = &self.name;
        c.state
            .push((format!("{n}.weight"), StateMut::Param(&mut self.weight)));
        c.state
            .push((format!("{n}.bias"), StateMut::Param(&mut self.bias)));
        let s = &mut self.state;
        c.state.push((
            format!("{n}.running_mean"),
            StateMut::Buffer(BufferMut::F32(&mut s.running_mean)),
        ));
        c.state.push((
            format!("{n}.running_var"),
            StateMut::Buffer(BufferMut::F32(&mut s.running_var)),
        ));
        c.state.push((
            format!("{n}.num_batches_tracked"),
            StateMut::Buffer(BufferMut::Count(&mut s.num_batches_tracked)),
        ));
    }
}

/// Fully connected layer `y = x·wᵀ + b`, `w` `[out, in]`.
#[derive(Debug)]
pub struct Linear<F: Float = f32> {
    /// Module name, e.g. `fc`.
    pub name: String,
    /// Weight `[out, in]`.
    pub weight: Param<F>,
    /// Bias `[out]`.
    pub bias: Option<Param<F>>,
    /// Whether a [`LayerHook`] computes this layer.
    pub quantisable: bool,
}

impl<F: Float> Linear<F> {
    /// Draws a linear layer with bias from `rng` (weight, then bias).
    pub fn new(
        name: impl Into<String>,
        fan_in: usize,
        out: usize,
        init: LinearInit,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let shape = [out, fan_in];
        let bound = init::torch_linear_bound(fan_in);
        let (w, b) = match init {
            LinearInit::Torch => (
                init::uniform(&shape, bound, rng),
                init::uniform(&[out], bound, rng),
            ),
            LinearInit::KaimingFanIn => (
                init::kaiming_normal_fan_in(&shape, rng),
                init::uniform(&[out], bound, rng),
            ),
            LinearInit::Normal001 => (
                init::normal(&shape, 0.01, rng),
                ArrayD::zeros(IxDyn(&[out])),
            ),
        };
        Linear {
            name: name.into(),
            weight: Param::new(cast(w)),
            bias: Some(Param::new(cast(b))),
            quantisable: false,
        }
    }

    /// Marks the layer quantisable.
    pub fn quantisable(mut self, q: bool) -> Self {
        self.quantisable = q;
        self
    }

    /// `x` `[n, in]` → `[n, out]`.
    pub fn forward(
        &self,
        tape: &mut Tape<F>,
        x: Var,
        mode: Mode,
        hook: &mut Hook<F>,
    ) -> Result<Var> {
        let w = tape.param(&self.weight);
        let b = self.bias.as_ref().map(|b| tape.param(b));
        match hook {
            Some(h) if self.quantisable => h.linear(tape, &self.name, x, w, b, mode),
            _ => Ok(ops::linear(tape, x, w, b)?),
        }
    }
}

impl<F: Float> Module<F> for Linear<F> {
    fn visit<'a>(&'a self, c: &mut Collector<'a, F>) {
        let weight = format!("{}.weight", self.name);
        if self.quantisable {
            c.quant.push(QuantLayerInfo {
                layer: self.name.clone(),
                weight: weight.clone(),
                kind: LayerKind::Linear,
                followed_by_bn: false,
            });
        }
        c.state.push((weight, StateRef::Param(&self.weight)));
        if let Some(b) = &self.bias {
            c.state
                .push((format!("{}.bias", self.name), StateRef::Param(b)));
        }
    }
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a, F>) {
        c.state.push((
            format!("{}.weight", self.name),
            StateMut::Param(&mut self.weight),
        ));
        if let Some(b) = &mut self.bias {
            c.state
                .push((format!("{}.bias", self.name), StateMut::Param(b)));
        }
    }
}

/// Element-wise activation after a BatchNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)` (MobileNetV2).
    Relu6,
    /// Identity (MobileNetV2's linear bottleneck).
    None,
}

impl Act {
    /// The kernels' name for it.
    pub fn activation(self) -> hla_tensor::Activation {
        match self {
            Act::Relu => hla_tensor::Activation::Relu,
            Act::Relu6 => hla_tensor::Activation::Relu6,
            Act::None => hla_tensor::Activation::None,
        }
    }

    /// Applies the activation.
    pub fn forward<F: Float>(self, tape: &mut Tape<F>, x: Var) -> Result<Var> {
        Ok(match self {
            Act::Relu => ops::relu(tape, x)?,
            Act::Relu6 => ops::relu6(tape, x)?,
            Act::None => x,
        })
    }
}

/// `act(bn(conv(x)))`: in evaluation, a quantisable bias-free conv (any bias-free conv when
/// the hook [fuses unquantised ones](crate::LayerHook::fuses_unquantised)) is offered to the
/// hook's fused path first ([`crate::LayerHook::conv_bn_act`]); otherwise, or when it declines,
/// the three are computed one after the other.
pub(crate) fn conv_bn_act<F: Float>(
    conv: &Conv2d<F>,
    bn: &mut BatchNorm2d<F>,
    act: Act,
    tape: &mut Tape<F>,
    x: Var,
    mode: Mode,
    hook: &mut Hook<F>,
) -> Result<Var> {
    if let Some((h, e, fa)) = fusing(conv, bn, act, mode, hook) {
        let w = conv.weight.value();
        if let Some(y) = h.conv_bn_act(tape, &conv.name, x, w, &conv.params, &e, fa)? {
            return Ok(y);
        }
    }
    // each output is released after its one use (kept on a recording tape if backward reads it)
    let c = conv.forward(tape, x, mode, hook)?;
    // BatchNorm and activation in one op (in evaluation, when the tape does not record)
    let y = match mode {
        Mode::Eval => bn.forward_eval_act(tape, c, act)?,
        Mode::Train => bn.forward_train_act(tape, c, act)?,
    };
    tape.release(c);
    Ok(y)
}

/// Conv → BatchNorm → `+ r` → activation: a residual block's last conv and its sum with the
/// shortcut `r` (ReLU after the sum in ResNets, none in MobileNetV2). A hook may fuse it all
/// ([`LayerHook::conv_bn_add_act`]) or the conv and BatchNorm alone; otherwise the conv, then in
/// evaluation BatchNorm, sum and activation as one op ([`BatchNorm2d::forward_eval_add_act`]), in
/// training BatchNorm then the sum and activation ops. The same values either way.
#[allow(clippy::too_many_arguments)] // conv_bn_act's operands plus the shortcut
pub(crate) fn conv_bn_add_act<F: Float>(
    conv: &Conv2d<F>,
    bn: &mut BatchNorm2d<F>,
    act: Act,
    tape: &mut Tape<F>,
    x: Var,
    r: Var,
    mode: Mode,
    hook: &mut Hook<F>,
) -> Result<Var> {
    if let Some((h, e, fa)) = fusing(conv, bn, act, mode, hook) {
        let w = conv.weight.value();
        if let Some(y) = h.conv_bn_add_act(tape, &conv.name, x, w, &conv.params, &e, r, fa)? {
            return Ok(y);
        }
        // a hook may still take the conv and BatchNorm without the sum
        let (p, none) = (&conv.params, FusedAct::None);
        if let Some(y) = h.conv_bn_act(tape, &conv.name, x, w, p, &e, none)? {
            return sum_act(tape, y, r, act);
        }
    }
    let c = conv.forward(tape, x, mode, hook)?;
    let y = match mode {
        // BatchNorm, sum and activation in one op (when the tape does not record)
        Mode::Eval => bn.forward_eval_add_act(tape, c, r, act)?,
        Mode::Train => {
            let y = bn.forward_train_act(tape, c, Act::None)?;
            tape.release(c);
            return sum_act(tape, y, r, act);
        }
    };
    tape.release(c);
    Ok(y)
}

/// `act(y + r)` as the sum and activation ops (one op for ReLU).
fn sum_act<F: Float>(tape: &mut Tape<F>, y: Var, r: Var, act: Act) -> Result<Var> {
    Ok(match act {
        Act::Relu => ops::add_relu(tape, y, r)?,
        Act::None => ops::add(tape, y, r)?,
        Act::Relu6 => {
            let s = ops::add(tape, y, r)?;
            ops::relu6(tape, s)?
        }
    })
}

/// The hook, BatchNorm and activation to offer a conv + BatchNorm for fusion: in evaluation, a
/// conv without a bias, quantisable or with a hook that fuses unquantised convs too.
fn fusing<'a, 'h, F: Float>(
    conv: &Conv2d<F>,
    bn: &'a BatchNorm2d<F>,
    act: Act,
    mode: Mode,
    hook: &'a mut Hook<'h, F>,
) -> Option<(
    &'a mut dyn LayerHook<F>,
    crate::model::BnEval<'a, F>,
    FusedAct,
)> {
    let (Mode::Eval, None, Some(h)) = (mode, &conv.bias, hook.as_deref_mut()) else {
        return None;
    };
    if !(conv.quantisable || h.fuses_unquantised()) {
        return None;
    }
    let s = &bn.state;
    let e = crate::model::BnEval {
        weight: bn.weight.value(),
        bias: bn.bias.value(),
        running_mean: &s.running_mean,
        running_var: &s.running_var,
        eps: s.eps,
    };
    let fa = match act {
        Act::Relu => FusedAct::Relu,
        Act::Relu6 => FusedAct::Relu6,
        Act::None => FusedAct::None,
    };
    Some((h, e, fa))
}

/// Runs `block` on `x` and releases what it recorded except its output, and `x` itself unless
/// `keep_input` (the model's own input belongs to the caller): an evaluation then holds about
/// one block's activations at a time instead of all of them, and a training tape keeps only the
/// values backward reads (`Tape::release` keeps those).
pub(crate) fn releasing<F: Float>(
    tape: &mut Tape<F>,
    x: Var,
    keep_input: bool,
    block: impl FnOnce(&mut Tape<F>) -> Result<Var>,
) -> Result<Var> {
    let start = tape.len();
    let y = block(tape)?;
    tape.release_since(start, y);
    if !keep_input && y != x {
        tape.release(x);
    }
    Ok(y)
}

/// Conv → BatchNorm → activation (torchvision's `Conv2dNormActivation`, named `<name>.0`,
/// `<name>.1`).
#[derive(Debug)]
pub struct ConvBnAct<F: Float = f32> {
    /// The convolution (`<name>.0`).
    pub conv: Conv2d<F>,
    /// The BatchNorm (`<name>.1`).
    pub bn: BatchNorm2d<F>,
    /// The activation.
    pub act: Act,
}

impl<F: Float> ConvBnAct<F> {
    /// Conv2dNormActivation with torchvision's conv init.
    pub fn new(name: &str, s: ConvSpec, act: Act, quantisable: bool, rng: &mut ChaCha8Rng) -> Self {
        ConvBnAct {
            conv: Conv2d::new(format!("{name}.0"), s, ConvInit::KaimingFanOut, rng)
                .quantisable(quantisable),
            bn: BatchNorm2d::new(format!("{name}.1"), s.c_out),
            act,
        }
    }

    /// `act(bn(conv(x)))`.
    pub fn forward(
        &mut self,
        tape: &mut Tape<F>,
        x: Var,
        mode: Mode,
        hook: &mut Hook<F>,
    ) -> Result<Var> {
        conv_bn_act(&self.conv, &mut self.bn, self.act, tape, x, mode, hook)
    }
}

impl<F: Float> Module<F> for ConvBnAct<F> {
    fn visit<'a>(&'a self, c: &mut Collector<'a, F>) {
        self.conv.visit(c);
        self.bn.visit(c);
    }
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a, F>) {
        self.conv.visit_mut(c);
        self.bn.visit_mut(c);
    }
}

/// Dropout with probability `p` (inverted: kept values scaled by `1/(1-p)`), active only in
/// `Mode::Train`; masks come from a seeded stream owned by the layer.
#[derive(Debug, Clone)]
pub struct Dropout {
    /// Drop probability in `[0, 1)`; 0 disables the layer.
    pub p: f32,
    rng: ChaCha8Rng,
}

impl Dropout {
    /// Dropout with probability `p`, masks drawn from `seed`.
    pub fn new(p: f32, seed: u64) -> Self {
        Dropout {
            p,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Restarts the mask stream from `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    /// `x ⊙ mask / (1 − p)` in train mode, `x` otherwise.
    pub fn forward<F: Float>(&mut self, tape: &mut Tape<F>, x: Var, mode: Mode) -> Result<Var> {
        if mode == Mode::Eval || self.p <= 0.0 {
            return Ok(x);
        }
        let keep = 1.0 - self.p;
        let scale = 1.0 / keep;
        // With a data-parallel group, the mask of the global batch is drawn (the same stream
        // as one process) and this rank keeps its rows.
        let mut shape = tape.shape(x).to_vec();
        let n = shape.first().copied().unwrap_or(1);
        let (start, total) = if tape.is_batched(x) {
            tape.global_rows(n)?
        } else {
            (0, n)
        };
        if let Some(d) = shape.first_mut() {
            *d = total;
        }
        let rng = &mut self.rng;
        let mask = ArrayD::from_shape_simple_fn(IxDyn(&shape), || {
            if rng.random::<f32>() < keep {
                F::from_f64(scale as f64)
            } else {
                F::zero()
            }
        });
        let mask = if shape.is_empty() || total == n {
            mask
        } else {
            mask.slice_axis(Axis(0), (start..start + n).into())
                .to_owned()
        };
        let m = tape.constant(mask);
        Ok(ops::mul(tape, x, m)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropout_out(d: &mut Dropout, mode: Mode) -> ArrayD<f32> {
        let mut tape = Tape::<f32>::no_grad();
        let x = tape.constant(ArrayD::ones(IxDyn(&[4, 1000])));
        let y = d.forward(&mut tape, x, mode).unwrap();
        tape.value(y).clone()
    }

    #[test]
    fn dropout_scales_kept_values_and_is_identity_in_eval() {
        let mut d = Dropout::new(0.2, 5);
        let y = dropout_out(&mut d, Mode::Train);
        let kept = y.iter().filter(|&&v| v != 0.0).count();
        assert!(
            y.iter().all(|&v| v == 0.0 || v == 1.25),
            "inverted scaling 1/(1-p)"
        );
        let frac = kept as f64 / y.len() as f64;
        assert!((frac - 0.8).abs() < 0.03, "kept fraction {frac}");
        assert!(dropout_out(&mut d, Mode::Eval).iter().all(|&v| v == 1.0));
        // reseeding replays the same masks; the stream moves on otherwise
        let mut e = Dropout::new(0.2, 5);
        assert_eq!(dropout_out(&mut e, Mode::Train), y);
        assert_ne!(dropout_out(&mut e, Mode::Train), y);
        e.reseed(5);
        assert_eq!(dropout_out(&mut e, Mode::Train), y);
    }

    /// Evaluation keeps the kernel's packing of a conv's weights between forwards, but never
    /// past a change of the weights: after an in-place `value_mut` (same buffer, so only the
    /// stamp tells), a forward computes with the new values. A recording forward drops it.
    #[test]
    fn kept_packing_follows_the_weights() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let spec = ConvSpec::new(8, 16, 3, 1, 1);
        let mut conv = Conv2d::<f32>::new("c", spec, ConvInit::KaimingFanOut, &mut rng);
        let x = ArrayD::from_shape_fn(IxDyn(&[2, 8, 9, 9]), |i| {
            ((i[1] * 7 + i[2] * 3 + i[3]) % 11) as f32 - 5.0
        });
        let run = |conv: &Conv2d<f32>, record: bool| {
            let mut tape = if record { Tape::new() } else { Tape::no_grad() };
            let xv = tape.constant(x.clone());
            let y = conv.forward(&mut tape, xv, Mode::Eval, &mut None).unwrap();
            tape.value(y).clone()
        };
        let packed = |conv: &Conv2d<f32>| {
            let kept = conv.packed.0.lock().unwrap();
            kept.as_ref().is_some_and(|(_, p)| p.is_packed())
        };
        let first = run(&conv, false);
        // machines without the direct kernels (no AVX2) have nothing to keep
        let direct = packed(&conv);
        assert_eq!(run(&conv, false), first);
        let at = conv.weight.value().as_ptr();
        conv.weight.value_mut().mapv_inplace(|v| -2.0 * v);
        assert_eq!(conv.weight.value().as_ptr(), at, "updated in place");
        // scaling every weight by −2 scales every product and sum exactly
        assert_eq!(run(&conv, false), first.mapv(|v| -2.0 * v));
        assert_eq!(packed(&conv), direct);
        assert_eq!(run(&conv, true), first.mapv(|v| -2.0 * v));
        assert!(conv.packed.0.lock().unwrap().is_none());
    }

    #[test]
    fn bad_input_shapes_are_errors() {
        assert!(check_input("resnet20", &[2, 3, 32, 32]).is_ok());
        for s in [
            &[3, 32, 32][..],
            &[2, 1, 32, 32],
            &[0, 3, 32, 32],
            &[2, 3, 0, 32],
        ] {
            let e = check_input("resnet20", s).unwrap_err();
            assert!(e.to_string().contains("resnet20"), "{e}");
        }
    }
}
