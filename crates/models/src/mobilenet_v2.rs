//! torchvision MobileNetV2 (width 1.0): `features.0` conv3×3/2 + BN + ReLU6, 17 inverted
//! residual blocks (expand 1×1 → depthwise 3×3 → linear project 1×1; residual when stride 1 and
//! same width), `features.18` conv1×1 320→1280 + BN + ReLU6, global average pool,
//! `classifier` = Dropout(0.2) + Linear(1280, classes). Names and init as torchvision (conv
//! kaiming normal fan_out, BN γ = 1 β = 0, Linear N(0, 0.01²) with zero bias).

use hla_autograd::{ops, Float, Tape, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::layers::{
    conv_bn_act, conv_bn_add_act, releasing, Act, BatchNorm2d, Conv2d, ConvBnAct, ConvInit,
    ConvSpec, Dropout, Hook, Linear, LinearInit,
};
use crate::model::{impl_model, Collector, CollectorMut, Mode, Module};
use crate::{ModelError, Result};

/// `(t, c, n, s)`: expansion, output channels, repeats, first stride (torchvision's
/// `inverted_residual_setting`).
const SETTING: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Default dropout before the classifier.
pub const DEFAULT_DROPOUT: f32 = 0.2;

/// Inverted residual block, names `features.{i}.conv.{…}`.
#[derive(Debug)]
pub struct InvertedResidual<F: Float = f32> {
    expand: Option<ConvBnAct<F>>,
    dw: ConvBnAct<F>,
    project: Conv2d<F>,
    bn: BatchNorm2d<F>,
    use_res: bool,
}

impl<F: Float> InvertedResidual<F> {
    fn new(
        name: &str,
        inp: usize,
        oup: usize,
        stride: usize,
        t: usize,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let hidden = inp * t;
        let mut idx = 0;
        let expand = (t != 1).then(|| {
            idx += 1;
            ConvBnAct::new(
                &format!("{name}.conv.0"),
                ConvSpec::new(inp, hidden, 1, 1, 0),
                Act::Relu6,
                true,
                rng,
            )
        });
        let dw = ConvBnAct::new(
            &format!("{name}.conv.{idx}"),
            ConvSpec::new(hidden, hidden, 3, stride, 1).groups(hidden),
            Act::Relu6,
            true,
            rng,
        );
        let project = Conv2d::new(
            format!("{name}.conv.{}", idx + 1),
            ConvSpec::new(hidden, oup, 1, 1, 0),
            ConvInit::KaimingFanOut,
            rng,
        )
        .quantisable(true);
        let bn = BatchNorm2d::new(format!("{name}.conv.{}", idx + 2), oup);
        InvertedResidual {
            expand,
            dw,
            project,
            bn,
            use_res: stride == 1 && inp == oup,
        }
    }

    fn forward(
        &mut self,
        tape: &mut Tape<F>,
        x: Var,
        mode: Mode,
        hook: &mut Hook<F>,
    ) -> Result<Var> {
        let mut y = x;
        if let Some(e) = &mut self.expand {
            y = e.forward(tape, y, mode, hook)?;
        }
        let y = self.dw.forward(tape, y, mode, hook)?;
        let (conv, bn) = (&self.project, &mut self.bn);
        if self.use_res {
            conv_bn_add_act(conv, bn, Act::None, tape, y, x, mode, hook)
        } else {
            conv_bn_act(conv, bn, Act::None, tape, y, mode, hook)
        }
    }
}

impl<F: Float> Module<F> for InvertedResidual<F> {
    fn visit<'a>(&'a self, c: &mut Collector<'a, F>) {
        if let Some(e) = &self.expand {
            e.visit(c);
        }
        self.dw.visit(c);
        self.project.visit(c);
        self.bn.visit(c);
    }
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a, F>) {
        if let Some(e) = &mut self.expand {
            e.visit_mut(c);
        }
        self.dw.visit_mut(c);
        self.project.visit_mut(c);
        self.bn.visit_mut(c);
    }
}

/// torchvision MobileNetV2, width multiplier 1.0.
#[derive(Debug)]
pub struct MobileNetV2<F: Float = f32> {
    arch: String,
    num_classes: usize,
    stem: ConvBnAct<F>,
    blocks: Vec<InvertedResidual<F>>,
    head: ConvBnAct<F>,
    /// Dropout before the classifier (p = 0.2 by default; set `p = 0` to disable).
    pub dropout: Dropout,
    classifier: Linear<F>,
}

impl<F: Float> MobileNetV2<F> {
    /// Draws the network from `seed` in module order; the dropout stream is seeded from
    /// `seed` too (reseed per step with [`crate::Model::set_dropout_seed`]).
    pub fn new(arch: &str, num_classes: usize, seed: u64) -> Result<Self> {
        if num_classes == 0 {
            return Err(ModelError::BadConfig {
                arch: arch.into(),
                reason: "classes must be >= 1".into(),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // The first conv stays full precision (not quantisable).
        let stem = ConvBnAct::new(
            "features.0",
            ConvSpec::new(3, 32, 3, 2, 1),
            Act::Relu6,
            false,
            &mut rng,
        );
        let mut blocks = Vec::new();
        let mut inp = 32;
        for (t, c, n, s) in SETTING {
            for i in 0..n {
                let name = format!("features.{}", blocks.len() + 1);
                blocks.push(InvertedResidual::new(
                    &name,
                    inp,
                    c,
                    if i == 0 { s } else { 1 },
                    t,
                    &mut rng,
                ));
                inp = c;
            }
        }
        let head_name = format!("features.{}", blocks.len() + 1);
        let head = ConvBnAct::new(
            &head_name,
            ConvSpec::new(inp, 1280, 1, 1, 0),
            Act::Relu6,
            true,
            &mut rng,
        );
        let classifier = Linear::new(
            "classifier.1",
            1280,
            num_classes,
            LinearInit::Normal001,
            &mut rng,
        )
        .quantisable(true);
        let dropout = Dropout::new(DEFAULT_DROPOUT, seed ^ 0x6d6f_6269_6c65_6e65);
        Ok(MobileNetV2 {
            arch: arch.into(),
            num_classes,
            stem,
            blocks,
            head,
            dropout,
            classifier,
        })
    }

    fn forward_impl(
        &mut self,
        tape: &mut Tape<F>,
        x: Var,
        mode: Mode,
        hook: &mut Hook<F>,
    ) -> Result<Var> {
        let mut y = self.stem.forward(tape, x, mode, hook)?;
        for b in &mut self.blocks {
            y = releasing(tape, y, false, |t| b.forward(t, y, mode, hook))?;
        }
        let y = releasing(tape, y, false, |t| self.head.forward(t, y, mode, hook))?;
        let y = ops::global_avg_pool(tape, y)?;
        let y = self.dropout.forward(tape, y, mode)?;
        self.classifier.forward(tape, y, mode, hook)
    }

    fn reseed(&mut self, seed: u64) {
        self.dropout.reseed(seed);
    }
}

impl<F: Float> Module<F> for MobileNetV2<F> {
    fn visit<'a>(&'a self, c: &mut Collector<'a, F>) {
        self.stem.visit(c);
        for b in &self.blocks {
            b.visit(c);
        }
        self.head.visit(c);
        self.classifier.visit(c);
    }
    fn visit_mut<'a>(&'a mut self, c: &mut CollectorMut<'a, F>) {
        self.stem.visit_mut(c);
        for b in &mut self.blocks {
            b.visit_mut(c);
        }
        self.head.visit_mut(c);
        self.classifier.visit_mut(c);
    }
}

impl_model!(MobileNetV2);
