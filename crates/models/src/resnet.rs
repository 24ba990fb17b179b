//! torchvision ResNet-18/34/50/101/152 (v1.5: the stride of a Bottleneck is on its 3×3 conv),
//! with torchvision's state-dict names (`conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}`,
//! `...downsample.{0,1}`, `fc`) and init (conv kaiming normal fan_out, BN γ = 1 β = 0, `fc` as
//! `nn.Linear`'s default).

use hla_autograd::{ops, Float, Pool2dParams, Tape, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::layers::{
    conv_bn_act, conv_bn_add_act, releasing, Act, BatchNorm2d, Conv2d, ConvInit, ConvSpec, Hook,
    Linear, LinearInit,
};
use crate::model::{impl_model, Collector, CollectorMut, Mode, Module};
use crate::{ModelError, Result};

/// Residual block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 convs (expansion 1): ResNet-18/34.
    Basic,
    /// 1×1 → 3×3 (stride) → 1×1 ×4 (expansion 4): ResNet-50/101/152.
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// One residual block: `relu(convs(x) + downsample(x))`.
#[derive(Debug)]
pub struct Block<F: Float = f32> {
    /// (conv, bn) pairs in order: 2 for Basic, 3 for Bottleneck.
    convs: Vec<(Conv2d<F>, BatchNorm2d<F>)>,
    downsample: Option<(Conv2d<F>, BatchNorm2d<F>)>,
}

impl<F: Float> Block<F> {
    fn new(
        name: &str,
        kind: BlockKind,
        c_in: usize,
        planes: usize,
        stride: usize,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let fo = ConvInit::KaimingFanOut;
        let specs: Vec<ConvSpec> = match kind {
            BlockKind::Basic => {
                vec![
                    ConvSpec::new(c_in, planes, 3, stride, 1),
                    ConvSpec::new(planes, planes, 3, 1, 1),
                ]
            }
            BlockKind::Bottleneck => vec![
                ConvSpec::new(c_in, planes, 1, 1, 0),
                ConvSpec::new(planes, planes, 3, stride, 1),
                ConvSpec::new(planes, planes * 4, 1, 1, 0),
            ],
        };
        let convs = specs
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let conv =
                    Conv2d::new(format!("{name}.conv{}", i + 1), s, fo, rng).quantisable(true);
                (
                    conv,
                    BatchNorm2d::new(format!("{name}.bn{}", i + 1), s.c_out),
                )
            })
            .collect();
        let c_out = planes * kind.expansion();
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let conv = Conv2d::new(
                format!("{name}.downsample.0"),
                ConvSpec::new(c_in, c_out, 1, stride, 0),
                fo,
                rng,
            )
            .quantisable(true);
            (
                conv,
                BatchNorm2d::new(format!("{name}.downsample.1"), c_out),
            )
        });
        Block { convs, downsample }
    }

    fn forward(
        &mut self,
        tape: &mut Tape<F>,
        x: Var,
        mode: Mode,
        hook: &mut Hook<F>,
    ) -> Result<Var> {
        let (last, rest) = self.convs.split_last_mut().expect("a block has convs");
        let mut y = x;
        for (conv, bn) in rest {
            y = conv_bn_act(conv, bn, Act::Relu, tape, y, mode, hook)?;
        }
        let (conv, bn) = (&last.0, &mut last.1);
        match &mut self.downsample {
            // the projection after the last conv, as the hook expects the layers in forward
            // order (`Model::quantisable`)
            Some((ds, ds_bn)) => {
                let y = conv_bn_act(conv, bn, Act::None, tape, y, mode, hook)?;
                let s = conv_bn_act(ds, ds_bn, Act::None, tape, x, mode, hook)?;
                Ok(ops::add_relu(tape, y, s)?)
            }
            // the last conv takes the sum into its epilogue
            None => conv_bn_add_act(conv, bn, Act::Relu, tape, y, x, mode, hook),
        }
    }
}

impl<F: Float> Module<F> for Block<F> {
    fn visit<'a>(&'a self, c: &mut Collector<'a, F>) {
        for (conv, bn) in &self.convs {
            conv.visit(c);
            bn.visit(c);
        }
        if let Some((conv, bn)) = &self.downsample {
            conv.visit(c);
            bn.visit(c);
        }
    }
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a, F>) {
        for (conv, bn) in &mut self.convs {
            conv.visit_mut(c);
            bn.visit_mut(c);
        }
        if let Some((conv, bn)) = &mut self.downsample {
            conv.visit_mut(c);
            bn.visit_mut(c);
        }
    }
}

/// torchvision ResNet.
#[derive(Debug)]
pub struct ResNet<F: Float = f32> {
    arch: String,
    num_classes: usize,
    conv1: Conv2d<F>,
    bn1: BatchNorm2d<F>,
    blocks: Vec<Block<F>>,
    fc: Linear<F>,
}

impl<F: Float> ResNet<F> {
    /// Block counts per stage: ResNet-18 `[2, 2, 2, 2]` Basic, 34 `[3, 4, 6, 3]` Basic,
    /// 50 `[3, 4, 6, 3]` Bottleneck, 101 `[3, 4, 23, 3]`, 152 `[3, 8, 36, 3]`.
    /// Layers are drawn from `seed` in module order.
    pub fn new(
        arch: &str,
        kind: BlockKind,
        layers: [usize; 4],
        num_classes: usize,
        seed: u64,
    ) -> Result<Self> {
        if num_classes == 0 || layers.contains(&0) {
            return Err(ModelError::BadConfig {
                arch: arch.into(),
                reason: format!(
                    "blocks per stage {layers:?} and classes {num_classes} must be >= 1"
                ),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let conv1 = Conv2d::new(
            "conv1",
            ConvSpec::new(3, 64, 7, 2, 3),
            ConvInit::KaimingFanOut,
            &mut rng,
        );
        let bn1 = BatchNorm2d::new("bn1", 64);
        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (stage, &n) in layers.iter().enumerate() {
            let planes = 64 << stage;
            for i in 0..n {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                blocks.push(Block::new(&name, kind, c_in, planes, stride, &mut rng));
                c_in = planes * kind.expansion();
            }
        }
        let fc = Linear::new("fc", c_in, num_classes, LinearInit::Torch, &mut rng);
        Ok(ResNet {
            arch: arch.into(),
            num_classes,
            conv1,
            bn1,
            blocks,
            fc,
        })
    }

    fn forward_impl(
        &mut self,
        tape: &mut Tape<F>,
        x: Var,
        mode: Mode,
        hook: &mut Hook<F>,
    ) -> Result<Var> {
        let y = conv_bn_act(&self.conv1, &mut self.bn1, Act::Relu, tape, x, mode, hook)?;
        let pool = Pool2dParams {
            kernel: (3, 3),
            stride: (2, 2),
            padding: (1, 1),
        };
        let stem = y;
        let mut y = ops::max_pool2d(tape, stem, &pool)?;
        tape.release(stem);
        for b in &mut self.blocks {
            y = releasing(tape, y, false, |t| b.forward(t, y, mode, hook))?;
        }
        let y = ops::global_avg_pool(tape, y)?;
        self.fc.forward(tape, y, mode, hook)
    }

    fn reseed(&mut self, _seed: u64) {}
}

impl<F: Float> Module<F> for ResNet<F> {
    fn visit<'a>(&'a self, c: &mut Collector<'a, F>) {
        self.conv1.visit(c);
        self.bn1.visit(c);
        for b in &self.blocks {
            b.visit(c);
        }
        self.fc.visit(c);
    }
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a, F>) {
        self.conv1.visit_mut(c);
        self.bn1.visit_mut(c);
        for b in &mut self.blocks {
            b.visit_mut(c);
        }
        self.fc.visit_mut(c);
    }
}

impl_model!(ResNet);
