//! The model interface crates/hla and the CLI program against: [`Model`], [`Mode`], [`LayerHook`]
//! and the description of quantisable layers.

use hla_autograd::{Conv2dParams, Param, Tape, Var};
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
pub trait LayerHook {
    /// Must return `y = conv2d(x, w', no bias)` for this layer, `x` `[n, c_in, h, w]`, `w`
    /// `[c_out, c_in/groups, k_h, k_w]` (a bias, if the layer has one, is added by the model).
    fn conv2d(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w: Var,
        p: &Conv2dParams,
        mode: Mode,
    ) -> Result<Var>;
    /// Must return `y = x·w'ᵀ + b` for this layer, `x` `[n, in]`, `w` `[out, in]`, `b` `[out]`.
    fn linear(
        &mut self,
        tape: &mut Tape<f32>,
        layer: &str,
        x: Var,
        w: Var,
        b: Option<Var>,
        mode: Mode,
    ) -> Result<Var>;
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
pub enum BufferRef<'a> {
    /// A float vector (BatchNorm `running_mean` / `running_var`, `[c]`).
    F32(&'a Array1<f32>),
    /// A counter (BatchNorm `num_batches_tracked`, stored as an I64 scalar).
    Count(u64),
}

/// Write access to a buffer.
#[derive(Debug)]
pub enum BufferMut<'a> {
    /// A float vector (BatchNorm `running_mean` / `running_var`, `[c]`).
    F32(&'a mut Array1<f32>),
    /// A counter (BatchNorm `num_batches_tracked`).
    Count(&'a mut u64),
}

/// One entry of a model's state dict, read access.
#[derive(Clone, Copy, Debug)]
pub enum StateRef<'a> {
    /// A trainable parameter.
    Param(&'a Param<f32>),
    /// A buffer.
    Buffer(BufferRef<'a>),
}

/// One entry of a model's state dict, write access.
#[derive(Debug)]
pub enum StateMut<'a> {
    /// A trainable parameter.
    Param(&'a mut Param<f32>),
    /// A buffer.
    Buffer(BufferMut<'a>),
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

/// Collects state entries and quantisable-layer descriptions while walking a model's layers in
/// `state_dict` order.
#[derive(Default)]
pub(crate) struct Collector<'a> {
    pub(crate) state: Vec<(String, StateRef<'a>)>,
    pub(crate) quant: Vec<QuantLayerInfo>,
}

/// Writable counterpart of [`Collector`].
#[derive(Default)]
pub(crate) struct CollectorMut<'a> {
    pub(crate) state: Vec<(String, StateMut<'a>)>,
}

/// Walk over a module's state in `state_dict` order.
pub(crate) trait Visit {
    fn visit<'a>(&'a self, c: &mut Collector<'a>);
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a>);
}

/// Implements [`Model`]'s state methods for an architecture implementing [`Visit`] plus a
/// `forward_impl`, `arch_name` and `classes`.
macro_rules! impl_model {
    ($t:ty) => {
        impl $crate::model::Model for $t {
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
                mut hook: Option<&mut dyn $crate::model::LayerHook>,
            ) -> $crate::Result<hla_autograd::Var> {
                $crate::layers::check_input(&self.arch, tape.shape(x))?;
                self.forward_impl(tape, x, mode, &mut hook)
            }
            fn state(&self) -> Vec<(String, $crate::model::StateRef<'_>)> {
                let mut c = $crate::model::Collector::default();
                $crate::model::Visit::visit(self, &mut c);
                c.state
            }
            fn state_mut(&mut self) -> Vec<(String, $crate::model::StateMut<'_>)> {
                let mut c = $crate::model::CollectorMut::default();
                $crate::model::Visit::visit_mut(self, &mut c);
                c.state
            }
            fn quantisable(&self) -> Vec<$crate::model::QuantLayerInfo> {
                let mut c = $crate::model::Collector::default();
                $crate::model::Visit::visit(self, &mut c);
                c.quant
            }
            fn set_dropout_seed(&mut self, seed: u64) {
                self.reseed(seed)
            }
        }
    };
}
pub(crate) use impl_model;
