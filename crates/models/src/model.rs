//! The model interface crates/hla and the CLI program against: [`Model`], [`Mode`], [`LayerHook`]
//! and the description of quantisable layers.

use hla_autograd::{Conv2dParams, Float, Param, Tape, Var};
use ndarray::Array1;

use crate::Result;

/// Training or evaluation: passed explicitly to every forward (BatchNorm uses batch statistics and
/// updates its running statistics in `Train`, uses the running statistics in `Eval`; dropout is
/// active only in `Train`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Training: batch statistics, running-stat updates, dropout.
    Train,
    /// Evaluation: running statistics, no dropout; the model is not mutated.
    Eval,
}

/// Lets crates/hla replace the computation of a quantisable layer (hyperspherical / ternary path)
/// without the model knowing anything about quantisation.
///
/// Called **only** for layers marked quantisable (see [`Model::quantisable`]); other layers compute
/// plainly. `layer` is the torchvision module name, e.g. `"layer1.0.conv1"`.
pub trait LayerHook<F: Float = f32> {
    /// Must return `y = conv2d(x, w', no bias)` for this layer, `x` `[n, c_in, h, w]`, `w`
    /// `[c_out, c_in/groups, k_h, k_w]` (a bias, if the layer has one, is added by the model).
    fn conv2d(
        &mut self,
        tape: &mut Tape<F>,
        layer: &str,
        x: Var,
        w: Var,
        p: &Conv2dParams,
        mode: Mode,
    ) -> Result<Var>;
    /// Evaluation only: may compute `act(bn(conv(x)))` of a quantisable conv followed by its
    /// BatchNorm in one go (BN folded into the layer's output scale and shift, the activation
    /// fused), or return `None` to let the model call [`LayerHook::conv2d`], the BatchNorm and
    /// the activation one after the other. `w` is the model's own weight
    /// `[c_out, c_in/groups, k_h, k_w]`. The default declines.
    #[allow(clippy::too_many_arguments)] // the conv's operands plus the BN and activation
    fn conv_bn_act(
        &mut self,
        _tape: &mut Tape<F>,
        _layer: &str,
        _x: Var,
        _w: &ndarray::ArrayD<F>,
        _p: &Conv2dParams,
        _bn: &BnEval<'_, F>,
        _act: FusedAct,
    ) -> Result<Option<Var>> {
        Ok(None)
    }
    /// Evaluation only: may compute `act(bn(conv(x)) + r)`, a residual block's last conv with
    /// its BatchNorm, the block's shortcut `r` (of the output's shape) and the activation after
    /// the sum in one go, or return `None` to let the model call [`LayerHook::conv_bn_act`] and
    /// then the sum and the activation. Offered the same convs as `conv_bn_act`. The default
    /// declines.
    #[allow(clippy::too_many_arguments)] // the conv's operands plus the BN, shortcut and activation
    fn conv_bn_add_act(
        &mut self,
        _tape: &mut Tape<F>,
        _layer: &str,
        _x: Var,
        _w: &ndarray::ArrayD<F>,
        _p: &Conv2dParams,
        _bn: &BnEval<'_, F>,
        _r: Var,
        _act: FusedAct,
    ) -> Result<Option<Var>> {
        Ok(None)
    }
    /// Whether [`LayerHook::conv_bn_act`] is offered the convs that are not quantisable too
    /// (the first conv of every model, and any conv a model leaves in full precision): true for
    /// hooks that fold BatchNorm without quantising ([`crate::fold::FoldBn`]). The default is
    /// false.
    fn fuses_unquantised(&self) -> bool {
        false
    }
    /// Must return `y = x·w'ᵀ + b` for this layer, `x` `[n, in]`, `w` `[out, in]`, `b` `[out]`.
    fn linear(
        &mut self,
        tape: &mut Tape<F>,
        layer: &str,
        x: Var,
        w: Var,
        b: Option<Var>,
        mode: Mode,
    ) -> Result<Var>;
}

/// A BatchNorm in evaluation mode, as [`LayerHook::conv_bn_act`] sees it:
/// `y = γ·(x − mean)/sqrt(var + eps) + β` per channel.
#[derive(Clone, Copy, Debug)]
pub struct BnEval<'a, F: Float = f32> {
    /// γ `[c]`.
    pub weight: &'a ndarray::ArrayD<F>,
    /// β `[c]`.
    pub bias: &'a ndarray::ArrayD<F>,
    /// Running mean `[c]`.
    pub running_mean: &'a Array1<F>,
    /// Running (unbiased) variance `[c]`.
    pub running_var: &'a Array1<F>,
    /// Added to the variance.
    pub eps: F,
}

/// The activation after a fused conv + BatchNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedAct {
    /// None (a linear bottleneck, or a MobileNetV2 residual sum).
    None,
    /// `max(y, 0)`.
    Relu,
    /// `min(max(y, 0), 6)`.
    Relu6,
}

impl From<FusedAct> for hla_tensor::Activation {
    fn from(a: FusedAct) -> Self {
        match a {
            FusedAct::None => hla_tensor::Activation::None,
            FusedAct::Relu => hla_tensor::Activation::Relu,
            FusedAct::Relu6 => hla_tensor::Activation::Relu6,
        }
    }
}

/// Kind of a quantisable layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// 2-D convolution, weight `[c_out, c_in/groups, k_h, k_w]`.
    Conv,
    /// Fully connected, weight `[out, in]`.
    Linear,
}

/// One quantisable layer of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantLayerInfo {
    /// torchvision module name, e.g. `"layer1.0.conv1"` (what [`LayerHook`] receives).
    pub layer: String,
    /// Name of its weight parameter, e.g. `"layer1.0.conv1.weight"`.
    pub weight: String,
    /// Convolution or linear.
    pub kind: LayerKind,
    /// Whether a BatchNorm directly follows the layer's output.
    pub followed_by_bn: bool,
}

/// Read access to a buffer (non-trainable state).
#[derive(Clone, Copy, Debug)]
pub enum BufferRef<'a, F: Float = f32> {
    /// A float vector (BatchNorm `running_mean` / `running_var`, `[c]`).
    F32(&'a Array1<F>),
    /// A counter (BatchNorm `num_batches_tracked`, stored as an I64 scalar).
    Count(u64),
}

/// Write access to a buffer.
#[derive(Debug)]
pub enum BufferMut<'a, F: Float = f32> {
    /// A float vector (BatchNorm `running_mean` / `running_var`, `[c]`).
    F32(&'a mut Array1<F>),
    /// A counter (BatchNorm `num_batches_tracked`).
    Count(&'a mut u64),
}

/// One entry of a model's state dict, read access.
#[derive(Clone, Copy, Debug)]
pub enum StateRef<'a, F: Float = f32> {
    /// A trainable parameter.
    Param(&'a Param<F>),
    /// A buffer.
    Buffer(BufferRef<'a, F>),
}

/// One entry of a model's state dict, write access.
#[derive(Debug)]
pub enum StateMut<'a, F: Float = f32> {
    /// A trainable parameter.
    Param(&'a mut Param<F>),
    /// A buffer.
    Buffer(BufferMut<'a, F>),
}

/// A network: forward on an autograd tape plus its named state in torchvision's `state_dict`
/// order.
pub trait Model: Send {
    /// Architecture name as given to [`crate::build`], e.g. `"resnet20"`.
    fn arch(&self) -> &str;
    /// Number of output classes.
    fn num_classes(&self) -> usize;
    /// Logits `[n, classes]` of `x` `[n, 3, h, w]`; `hook = None` computes the plain
    /// full-precision network. In `Mode::Train` BatchNorm running statistics are updated.
    fn forward(
        &mut self,
        tape: &mut Tape<f32>,
        x: Var,
        mode: Mode,
        hook: Option<&mut dyn LayerHook>,
    ) -> Result<Var>;
    /// Every parameter and buffer with its torchvision `state_dict` name, in `state_dict` order.
    fn state(&self) -> Vec<(String, StateRef<'_>)>;
    /// Same entries and order as [`Model::state`], writable.
    fn state_mut(&mut self) -> Vec<(String, StateMut<'_>)>;
    /// The quantisable layers in forward order (ResNets: every conv/linear except the first conv
    /// and the last fc; MobileNetV2: every conv/linear except the first conv).
    fn quantisable(&self) -> Vec<QuantLayerInfo>;
    /// Every BatchNorm layer's module name (`layer1.0.bn1`, whose buffers are
    /// `layer1.0.bn1.running_mean` / `.running_var`) with its running-average momentum, in
    /// `state_dict` order: BN re-estimation undoes one running-average update with it.
    fn batch_norm_momenta(&self) -> Vec<(String, f32)>;
    /// Reseeds the dropout stream (models without dropout ignore it). Trainers derive the seed
    /// from (run seed, epoch, step) so a resumed run draws the same masks.
    fn set_dropout_seed(&mut self, _seed: u64) {}

    /// Every parameter, in a fixed order, with its torchvision `state_dict` name.
    fn params(&self) -> Vec<(String, &Param<f32>)> {
        self.state()
            .into_iter()
            .filter_map(|(n, s)| match s {
                StateRef::Param(p) => Some((n, p)),
                StateRef::Buffer(_) => None,
            })
            .collect()
    }
    /// Same as [`Model::params`], writable (optimizers).
    fn params_mut(&mut self) -> Vec<(String, &mut Param<f32>)> {
        self.state_mut()
            .into_iter()
            .filter_map(|(n, s)| match s {
                StateMut::Param(p) => Some((n, p)),
                StateMut::Buffer(_) => None,
            })
            .collect()
    }
    /// Buffers (BN `running_mean` / `running_var` / `num_batches_tracked`) by name.
    fn buffers(&self) -> Vec<(String, BufferRef<'_>)> {
        self.state()
            .into_iter()
            .filter_map(|(n, s)| match s {
                StateRef::Buffer(b) => Some((n, b)),
                StateRef::Param(_) => None,
            })
            .collect()
    }
    /// Same as [`Model::buffers`], writable.
    fn buffers_mut(&mut self) -> Vec<(String, BufferMut<'_>)> {
        self.state_mut()
            .into_iter()
            .filter_map(|(n, s)| match s {
                StateMut::Buffer(b) => Some((n, b)),
                StateMut::Param(_) => None,
            })
            .collect()
    }
    /// Number of trainable scalars (torchvision's `sum(p.numel() for p in model.parameters())`).
    fn num_params(&self) -> usize {
        self.params().iter().map(|(_, p)| p.len()).sum()
    }
}

/// Collects state entries and quantisable-layer descriptions while a [`Module`] walks its
/// layers in `state_dict` order.
pub struct Collector<'a, F: Float = f32> {
    pub(crate) state: Vec<(String, StateRef<'a, F>)>,
    pub(crate) quant: Vec<QuantLayerInfo>,
    pub(crate) bn_momenta: Vec<(String, F)>,
}

impl<F: Float> Default for Collector<'_, F> {
    fn default() -> Self {
        Collector {
            state: Vec::new(),
            quant: Vec::new(),
            bn_momenta: Vec::new(),
        }
    }
}

impl<'a, F: Float> Collector<'a, F> {
    /// The named state entries collected so far, in `state_dict` order.
    pub fn into_state(self) -> Vec<(String, StateRef<'a, F>)> {
        self.state
    }
    /// The quantisable layers collected so far, in order.
    pub fn quantisable(&self) -> &[QuantLayerInfo] {
        &self.quant
    }
    /// The BatchNorm layers collected so far (module name, running-average momentum).
    pub fn batch_norm_momenta(&self) -> &[(String, F)] {
        &self.bn_momenta
    }
}

/// Writable counterpart of [`Collector`].
pub struct CollectorMut<'a, F: Float = f32> {
    pub(crate) state: Vec<(String, StateMut<'a, F>)>,
}

impl<F: Float> Default for CollectorMut<'_, F> {
    fn default() -> Self {
        CollectorMut { state: Vec::new() }
    }
}

impl<'a, F: Float> CollectorMut<'a, F> {
    /// The named writable state entries collected so far, in `state_dict` order.
    pub fn into_state(self) -> Vec<(String, StateMut<'a, F>)> {
        self.state
    }
}

/// A network component with named state (the layers of [`crate::layers`] and the blocks built
/// from them): it reports its parameters and buffers, each under its full torchvision name, in
/// PyTorch's `state_dict` order (a module's own parameters, then its buffers, then its children
/// in registration order), and its quantisable layers.
pub trait Module<F: Float = f32> {
    /// Pushes read access to every entry (and quantisable layer) onto `c`.
    fn visit<'a>(&'a self, c: &mut Collector<'a, F>);
    /// Pushes write access to every entry onto `c`, in the same order as [`Module::visit`].
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a, F>);
}

/// Copies every entry of `from` into the entry of the same name in `to`, converting the float
/// type (e.g. an f32 model's loaded weights into an f64 twin for a reference run).
///
/// # Errors
/// `MissingTensors` (path `<memory>`) if `to` has a name `from` lacks; `ShapeMismatch` on a
/// shape difference.
pub fn copy_state<F: Float, G: Float>(
    from: Vec<(String, StateRef<'_, F>)>,
    to: Vec<(String, StateMut<'_, G>)>,
) -> Result<()> {
    use std::collections::HashMap;
    let from: HashMap<String, StateRef<'_, F>> = from.into_iter().collect();
    let mem = std::path::PathBuf::from("<memory>");
    let cast = |a: &ndarray::ArrayD<F>| a.mapv(|v| G::from_f64(v.to_f64()));
    let missing: Vec<String> = to
        .iter()
        .filter(|(n, _)| !from.contains_key(n))
        .map(|(n, _)| n.clone())
        .collect();
    if !missing.is_empty() {
        return Err(crate::ModelError::MissingTensors {
            path: mem,
            names: missing,
        });
    }
    for (name, dst) in to {
        let mismatch = |e: &[usize], f: &[usize]| crate::ModelError::ShapeMismatch {
            path: mem.clone(),
            name: name.clone(),
            expected: e.to_vec(),
            found: f.to_vec(),
        };
        match (dst, from[&name]) {
            (StateMut::Param(d), StateRef::Param(s)) => {
                if d.shape() != s.shape() {
                    return Err(mismatch(d.shape(), s.shape()));
                }
                *d.value_mut() = cast(s.value());
            }
            (StateMut::Buffer(BufferMut::F32(d)), StateRef::Buffer(BufferRef::F32(s))) => {
                if d.shape() != s.shape() {
                    return Err(mismatch(d.shape(), s.shape()));
                }
                d.assign(&s.mapv(|v| G::from_f64(v.to_f64())));
            }
            (StateMut::Buffer(BufferMut::Count(d)), StateRef::Buffer(BufferRef::Count(s))) => {
                *d = s
            }
            _ => return Err(mismatch(&[], &[])),
        }
    }
    Ok(())
}

/// Implements, for an architecture `$t<F>` with `Module<F>`, `forward_impl`, `reseed`, `arch` and
/// `num_classes`: generic inherent methods (`forward_t`, `named_state`, `named_state_mut`) and
/// [`Model`] for `$t<f32>`.
macro_rules! impl_model {
    ($t:ident) => {
        impl<F: hla_autograd::Float> $t<F> {
            /// [`Model::forward`](crate::Model::forward) in any float type (f64 for reference runs).
            pub fn forward_t(
                &mut self,
                tape: &mut hla_autograd::Tape<F>,
                x: hla_autograd::Var,
                mode: $crate::model::Mode,
                mut hook: Option<&mut dyn $crate::model::LayerHook<F>>,
            ) -> $crate::Result<hla_autograd::Var> {
                $crate::layers::check_input(&self.arch, tape.shape(x))?;
                self.forward_impl(tape, x, mode, &mut hook)
            }
            /// [`Model::state`](crate::Model::state) in any float type.
            pub fn named_state(&self) -> Vec<(String, $crate::model::StateRef<'_, F>)> {
                let mut c = $crate::model::Collector::default();
                $crate::model::Module::visit(self, &mut c);
                c.state
            }
            /// [`Model::state_mut`](crate::Model::state_mut) in any float type.
            pub fn named_state_mut(&mut self) -> Vec<(String, $crate::model::StateMut<'_, F>)> {
                let mut c = $crate::model::CollectorMut::default();
                $crate::model::Module::visit_mut(self, &mut c);
                c.state
            }
        }

        impl $crate::model::Model for $t<f32> {
            fn arch(&self) -> &str {
                &self.arch
            }
            fn num_classes(&self) -> usize {
                self.num_classes
            }
            fn forward(
                &mut self,
                tape: &mut hla_autograd::Tape<f32>,
                x: hla_autograd::Var,
                mode: $crate::model::Mode,
                hook: Option<&mut dyn $crate::model::LayerHook>,
            ) -> $crate::Result<hla_autograd::Var> {
                self.forward_t(tape, x, mode, hook)
            }
            fn state(&self) -> Vec<(String, $crate::model::StateRef<'_>)> {
                self.named_state()
            }
            fn state_mut(&mut self) -> Vec<(String, $crate::model::StateMut<'_>)> {
                self.named_state_mut()
            }
            fn quantisable(&self) -> Vec<$crate::model::QuantLayerInfo> {
                let mut c = $crate::model::Collector::<f32>::default();
                $crate::model::Module::visit(self, &mut c);
                c.quant
            }
            fn batch_norm_momenta(&self) -> Vec<(String, f32)> {
                let mut c = $crate::model::Collector::<f32>::default();
                $crate::model::Module::visit(self, &mut c);
                c.bn_momenta
            }
            fn set_dropout_seed(&mut self, seed: u64) {
                self.reseed(seed)
            }
        }
    };
}
pub(crate) use impl_model;
