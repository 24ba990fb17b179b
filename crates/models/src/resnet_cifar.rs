//! CIFAR ResNet-20/32/44/56/110 (He et al. 2016, Sec. 4.2) as in the widely used PyTorch
//! reproduction akamaster/pytorch_resnet_cifar10 (`resnet.py`), with the same state-dict names:
//! `conv1`, `bn1`, `layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}`, `linear`.
//!
//! 3×3 conv 3→16 + BN + ReLU, three stages of `n` BasicBlocks with 16, 32, 64 channels (stride 2
//! at the first block of stages 2 and 3), global average pool, linear 64→classes. 6n + 2 layers.

use hla_autograd::{ops, Float, Tape, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::layers::{
    conv_bn_act, conv_bn_add_act, releasing, Act, BatchNorm2d, Conv2d, ConvInit, ConvSpec, Hook,
    Linear, LinearInit,
};
use crate::model::{impl_model, Collector, CollectorMut, Mode, Module};
use crate::shortcut_a::shortcut_a;
use crate::{ModelError, Result};

/// Shortcut of a block whose stride or width changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShortcutKind {
    /// Option A (the paper's CIFAR choice, parameter-free): even rows/columns, channels
    /// zero-padded by `planes/4` on both sides.
    A,
    /// Option B: 1×1 conv with the block's stride + BatchNorm, named `shortcut.0` / `shortcut.1`.
    B,
}

#[derive(Debug)]
enum Shortcut<F: Float> {
    Identity,
    A {
        pad: usize,
    },
    B {
        conv: Box<Conv2d<F>>,
        bn: Box<BatchNorm2d<F>>,
    },
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.
#[derive(Debug)]
pub struct CifarBlock<F: Float = f32> {
    conv1: Conv2d<F>,
    bn1: BatchNorm2d<F>,
    conv2: Conv2d<F>,
    bn2: BatchNorm2d<F>,
    shortcut: Shortcut<F>,
}

impl<F: Float> CifarBlock<F> {
    fn new(
        name: &str,
        c_in: usize,
        planes: usize,
        stride: usize,
        kind: ShortcutKind,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let init = ConvInit::KaimingFanIn;
        let conv1 = Conv2d::new(
            format!("{name}.conv1"),
            ConvSpec::new(c_in, planes, 3, stride, 1),
            init,
            rng,
        )
        .quantisable(true);
        let bn1 = BatchNorm2d::new(format!("{name}.bn1"), planes);
        let conv2 = Conv2d::new(
            format!("{name}.conv2"),
            ConvSpec::new(planes, planes, 3, 1, 1),
            init,
            rng,
        )
        .quantisable(true);
        let bn2 = BatchNorm2d::new(format!("{name}.bn2"), planes);
        let shortcut = if stride == 1 && c_in == planes {
            Shortcut::Identity
        } else {
            match kind {
                ShortcutKind::A => Shortcut::A { pad: planes / 4 },
                ShortcutKind::B => Shortcut::B {
                    conv: Box::new(
                        Conv2d::new(
                            format!("{name}.shortcut.0"),
                            ConvSpec::new(c_in, planes, 1, stride, 0),
                            init,
                            rng,
                        )
                        .quantisable(true),
                    ),
                    bn: Box::new(BatchNorm2d::new(format!("{name}.shortcut.1"), planes)),
                },
            }
        };
        CifarBlock {
            conv1,
            bn1,
            conv2,
            bn2,
            shortcut,
        }
    }

    fn forward(
        &mut self,
        tape: &mut Tape<F>,
        x: Var,
        mode: Mode,
        hook: &mut Hook<F>,
    ) -> Result<Var> {
        // Without a recording tape, option A's shortcut goes first, so that the second conv
        // may take the sum into its epilogue, and before the first conv, whose output is then
        // the very next value the second reads (the W2A8 hook hands its codes on only then).
        // A recording tape keeps the order conv1, conv2, shortcut: backward sums the input's
        // gradients in the reverse of that order, and an HLA layer uses its input several
        // times, so another order would change the bits of training. A projection always
        // comes after the second conv, as hooks expect the layers in forward order
        // (`Model::quantisable`).
        let early = match &self.shortcut {
            Shortcut::A { pad } if !tape.is_recording() => Some(shortcut_a(tape, x, *pad)?),
            _ => None,
        };
        let y = conv_bn_act(&self.conv1, &mut self.bn1, Act::Relu, tape, x, mode, hook)?;
        let (conv2, bn2) = (&self.conv2, &mut self.bn2);
        let s = match (&mut self.shortcut, early) {
            (Shortcut::Identity, _) => x,
            (Shortcut::A { .. }, Some(s)) => s,
            (Shortcut::A { pad }, None) => {
                let y = conv_bn_act(conv2, bn2, Act::None, tape, y, mode, hook)?;
                let s = shortcut_a(tape, x, *pad)?;
                return Ok(ops::add_relu(tape, y, s)?);
            }
            (Shortcut::B { conv, bn }, _) => {
                let y = conv_bn_act(conv2, bn2, Act::None, tape, y, mode, hook)?;
                let s = conv_bn_act(conv, bn, Act::None, tape, x, mode, hook)?;
                return Ok(ops::add_relu(tape, y, s)?);
            }
        };
        conv_bn_add_act(conv2, bn2, Act::Relu, tape, y, s, mode, hook)
    }
}

impl<F: Float> Module<F> for CifarBlock<F> {
    fn visit<'a>(&'a self, c: &mut Collector<'a, F>) {
        self.conv1.visit(c);
        self.bn1.visit(c);
        self.conv2.visit(c);
        self.bn2.visit(c);
        if let Shortcut::B { conv, bn } = &self.shortcut {
            conv.visit(c);
            bn.visit(c);
        }
    }
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a, F>) {
        self.conv1.visit_mut(c);
        self.bn1.visit_mut(c);
        self.conv2.visit_mut(c);
        self.bn2.visit_mut(c);
        if let Shortcut::B { conv, bn } = &mut self.shortcut {
            conv.visit_mut(c);
            bn.visit_mut(c);
        }
    }
}

/// A CIFAR ResNet of depth `6n + 2`.
#[derive(Debug)]
pub struct CifarResNet<F: Float = f32> {
    arch: String,
    num_classes: usize,
    conv1: Conv2d<F>,
    bn1: BatchNorm2d<F>,
    blocks: Vec<CifarBlock<F>>,
    linear: Linear<F>,
}

impl<F: Float> CifarResNet<F> {
    /// `n` blocks per stage (3 → ResNet-20, 5 → 32, 7 → 44, 9 → 56, 18 → 110), weights drawn
    /// from `seed` as akamaster's `_weights_init` (kaiming normal fan_in for conv and linear
    /// weights, PyTorch default linear bias, BN γ = 1, β = 0). Layers are drawn in module order.
    pub fn new(
        arch: &str,
        n: usize,
        num_classes: usize,
        shortcut: ShortcutKind,
        seed: u64,
    ) -> Result<Self> {
        if n == 0 || num_classes == 0 {
            return Err(ModelError::BadConfig {
                arch: arch.into(),
                reason: format!("blocks per stage {n} and classes {num_classes} must be >= 1"),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let conv1 = Conv2d::new(
            "conv1",
            ConvSpec::new(3, 16, 3, 1, 1),
            ConvInit::KaimingFanIn,
            &mut rng,
        );
        let bn1 = BatchNorm2d::new("bn1", 16);
        let mut blocks = Vec::with_capacity(3 * n);
        let mut c_in = 16;
        for (stage, (planes, stride)) in [(16, 1), (32, 2), (64, 2)].into_iter().enumerate() {
            for i in 0..n {
                let name = format!("layer{}.{i}", stage + 1);
                let s = if i == 0 { stride } else { 1 };
                blocks.push(CifarBlock::new(&name, c_in, planes, s, shortcut, &mut rng));
                c_in = planes;
            }
        }
        let linear = Linear::new(
            "linear",
            64,
            num_classes,
            LinearInit::KaimingFanIn,
            &mut rng,
        );
        Ok(CifarResNet {
            arch: arch.into(),
            num_classes,
            conv1,
            bn1,
            blocks,
            linear,
        })
    }

    fn forward_impl(
        &mut self,
        tape: &mut Tape<F>,
        x: Var,
        mode: Mode,
        hook: &mut Hook<F>,
    ) -> Result<Var> {
        let mut y = conv_bn_act(&self.conv1, &mut self.bn1, Act::Relu, tape, x, mode, hook)?;
        for b in &mut self.blocks {
            y = releasing(tape, y, false, |t| b.forward(t, y, mode, hook))?;
        }
        // F.avg_pool2d(out, out.size(3)) == global average for the square maps of CIFAR inputs
        let y = ops::global_avg_pool(tape, y)?;
        self.linear.forward(tape, y, mode, hook)
    }

    fn reseed(&mut self, _seed: u64) {}
}

impl<F: Float> Module<F> for CifarResNet<F> {
    fn visit<'a>(&'a self, c: &mut Collector<'a, F>) {
        self.conv1.visit(c);
        self.bn1.visit(c);
        for b in &self.blocks {
            b.visit(c);
        }
        self.linear.visit(c);
    }
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a, F>) {
        self.conv1.visit_mut(c);
        self.bn1.visit_mut(c);
        for b in &mut self.blocks {
            b.visit_mut(c);
        }
        self.linear.visit_mut(c);
    }
}

impl_model!(CifarResNet);

#[cfg(test)]
mod tests {
    use super::*;
    use hla_autograd::gradcheck;
    use ndarray::{ArrayD, IxDyn};
    use rand_distr::{Distribution, StandardNormal};
    use std::cell::RefCell;

    /// Whole-network gradient check in f64 (central differences on the input, autograd's fixed
    /// tolerances): train mode, so BatchNorm differentiates through batch statistics, and both
    /// shortcut kinds. ResNet-8 on 2 × 3 × 8 × 8 keeps it to a few hundred small forwards.
    #[test]
    fn resnet8_input_gradient_matches_central_differences() {
        for kind in [ShortcutKind::A, ShortcutKind::B] {
            let net = RefCell::new(CifarResNet::<f64>::new("resnet8", 1, 3, kind, 4).unwrap());
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            let x = ArrayD::from_shape_simple_fn(IxDyn(&[2, 3, 8, 8]), || {
                StandardNormal.sample(&mut rng)
            });
            let report = gradcheck::check(
                |tape, v| {
                    net.borrow_mut()
                        .forward_t(tape, v[0], Mode::Train, None)
                        .map_err(|e| match e {
                            ModelError::Autograd(a) => a,
                            other => panic!("{other}"),
                        })
                },
                &[x],
                17,
            )
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(report.elements, 2 * 3 * 8 * 8);
        }
    }
}
