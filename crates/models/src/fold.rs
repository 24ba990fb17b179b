//! Inference with every BatchNorm folded into the conv before it and the activation fused into
//! the conv's epilogue: `act(bn(conv(x, w)))` becomes `act(conv(x, w·s) + t)` with
//! `s = γ/√(var + ε)` and `t = β − mean·s` per output channel, one pass over the activations
//! instead of three.
//!
//! Folding rounds differently from the separate ops (the products `w·s` are rounded once, the
//! BN's `(y − mean)·s·γ + β` not at all), so logits agree with [`Mode::Eval`] without a hook
//! to a few ulps, not bit for bit. It is therefore for inference (`hla infer`, `hla bench
//! --what infer`); training-time evaluation keeps the separate ops so the accuracies of a run
//! stay reproducible across versions that fold or not.

use crate::model::{BnEval, FusedAct, LayerHook, Mode};
use crate::Result;
use hla_autograd::{ops, Conv2dParams, Tape, Var};
use hla_tensor::{Float, PackedWeights};
use ndarray::{Array1, ArrayD, Ix4};
use std::collections::HashMap;

/// The [`LayerHook`] of folded inference: pass `Some(&mut FoldBn::default())` to
/// [`crate::Model::forward`] in [`Mode::Eval`] on a tape that does not record
/// ([`Tape::no_grad`]). Every conv followed by a BatchNorm is folded (quantisable or not);
/// other layers compute as without a hook. On a recording tape nothing is folded.
///
/// The hook folds each layer once, on its first forward, and keeps the folded weights (and the
/// kernel's packing of them) by layer name for later forwards through it (deployment: fold
/// once, then serve every batch). They
/// are not refolded if the model's weights or BatchNorm statistics change while the hook is
/// kept: use a fresh hook after training or loading weights.
#[derive(Clone, Debug)]
pub struct FoldBn<F: Float = f32> {
    folded: usize,
    /// Each folded layer, by layer name.
    cache: HashMap<String, Folded<F>>,
}

/// One folded layer: `w·s`, `t`, and the kernel's packing of `w·s`.
type Folded<F> = (ArrayD<F>, Array1<F>, PackedWeights<F>);

impl<F: Float> Default for FoldBn<F> {
    fn default() -> Self {
        FoldBn {
            folded: 0,
            cache: HashMap::new(),
        }
    }
}

impl<F: Float> FoldBn<F> {
    /// Number of conv + BatchNorm pairs folded so far, over every forward through the hook (for
    /// tests and reports).
    pub fn folded(&self) -> usize {
        self.folded
    }

    /// Number of layers whose folded weights the hook keeps.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// `(w·s, t)` of the fold, `s` and `t` in f64 so that each result is rounded once.
fn fold_weights<F: Float>(w: &ArrayD<F>, bn: &BnEval<'_, F>) -> Option<(ArrayD<F>, Array1<F>)> {
    let c = w.shape().first().copied()?;
    let lens = [
        bn.weight.len(),
        bn.bias.len(),
        bn.running_mean.len(),
        bn.running_var.len(),
    ];
    if lens.iter().any(|&n| n != c) || w.ndim() != 4 {
        return None;
    }
    let s: Vec<f64> = (0..c)
        .map(|j| bn.weight[j].to_f64() / (bn.running_var[j].to_f64() + bn.eps.to_f64()).sqrt())
        .collect();
    let t = Array1::from_shape_fn(c, |j| {
        F::from_f64(bn.bias[j].to_f64() - bn.running_mean[j].to_f64() * s[j])
    });
    let per = w.len() / c;
    let mut wf = w.as_standard_layout().into_owned();
    for (j, row) in wf
        .as_slice_mut()
        .expect("standard layout is contiguous")
        .chunks_mut(per)
        .enumerate()
    {
        for v in row {
            *v = F::from_f64(v.to_f64() * s[j]);
        }
    }
    Some((wf, t))
}

/// `act(bn(conv(x, w)))` with the BatchNorm folded into `w` and a bias and the activation
/// fused, as a constant on a non-recording tape; `None` (compute the ops one after the other)
/// on a recording tape or when the shapes do not fit. For hooks that fold the layers they do not
/// compute themselves (the W2A8 hook's first conv).
///
/// # Errors
/// The convolution's shape errors.
pub fn fold_conv_bn_act<F: Float>(
    tape: &mut Tape<F>,
    x: Var,
    w: &ArrayD<F>,
    p: &Conv2dParams,
    bn: &BnEval<'_, F>,
    act: FusedAct,
) -> Result<Option<Var>> {
    if tape.is_recording() {
        return Ok(None);
    }
    let Some((wf, t)) = fold_weights(w, bn) else {
        return Ok(None);
    };
    folded_conv(
        tape,
        x,
        (&wf, &t),
        p,
        (None, act),
        &mut PackedWeights::default(),
    )
}

/// `act(conv(x, wf) + t + r)` (no `r`: `act(conv(x, wf) + t)`) as a constant, the kernel's
/// packing of `wf` kept in `packed`; `None` when the shapes do not fit a 2-D conv.
fn folded_conv<F: Float>(
    tape: &mut Tape<F>,
    x: Var,
    (wf, t): (&ArrayD<F>, &Array1<F>),
    p: &Conv2dParams,
    (r, act): (Option<Var>, FusedAct),
    packed: &mut PackedWeights<F>,
) -> Result<Option<Var>> {
    let (Ok(xv), Ok(wv)) = (
        tape.value(x).view().into_dimensionality::<Ix4>(),
        wf.view().into_dimensionality::<Ix4>(),
    ) else {
        return Ok(None);
    };
    let (t, act, par) = (Some(t.view()), act.into(), tape.par());
    let y = match r {
        None => hla_tensor::conv2d_act_packed(xv, wv, t, act, p, par, packed),
        Some(r) => {
            let Ok(rv) = tape.value(r).view().into_dimensionality::<Ix4>() else {
                return Ok(None);
            };
            hla_tensor::conv2d_add_act_packed(xv, wv, t, rv, act, p, par, packed)
        }
    };
    let y = y.map_err(hla_autograd::AutogradError::from)?;
    Ok(Some(tape.constant(y.into_dyn())))
}

impl<F: Float> FoldBn<F> {
    /// [`LayerHook::conv_bn_act`] (no `r`) and [`LayerHook::conv_bn_add_act`]: the layer's
    /// folded weights, from the cache or folded now, through [`folded_conv`].
    #[allow(clippy::too_many_arguments)] // the conv's operands plus the BN, shortcut and activation
    fn fold(
        &mut self,
        tape: &mut Tape<F>,
        layer: &str,
        x: Var,
        w: &ArrayD<F>,
        p: &Conv2dParams,
        bn: &BnEval<'_, F>,
        epilogue: (Option<Var>, FusedAct),
    ) -> Result<Option<Var>> {
        if tape.is_recording() {
            return Ok(None);
        }
        let fresh = match self.cache.get(layer) {
            Some((wf, _, _)) => wf.shape() != w.shape(),
            None => true,
        };
        if fresh {
            let Some((wf, t)) = fold_weights(w, bn) else {
                return Ok(None);
            };
            let entry = (wf, t, PackedWeights::default());
            self.cache.insert(layer.to_string(), entry);
        }
        let (wf, t, packed) = self.cache.get_mut(layer).expect("inserted above");
        let y = folded_conv(tape, x, (wf, t), p, epilogue, packed)?;
        self.folded += usize::from(y.is_some());
        Ok(y)
    }
}

impl<F: Float> LayerHook<F> for FoldBn<F> {
    fn conv2d(
        &mut self,
        tape: &mut Tape<F>,
        _layer: &str,
        x: Var,
        w: Var,
        p: &Conv2dParams,
        _mode: Mode,
    ) -> Result<Var> {
        Ok(ops::conv2d(tape, x, w, None, p)?)
    }

    fn conv_bn_act(
        &mut self,
        tape: &mut Tape<F>,
        layer: &str,
        x: Var,
        w: &ArrayD<F>,
        p: &Conv2dParams,
        bn: &BnEval<'_, F>,
        act: FusedAct,
    ) -> Result<Option<Var>> {
        self.fold(tape, layer, x, w, p, bn, (None, act))
    }

    fn conv_bn_add_act(
        &mut self,
        tape: &mut Tape<F>,
        layer: &str,
        x: Var,
        w: &ArrayD<F>,
        p: &Conv2dParams,
        bn: &BnEval<'_, F>,
        r: Var,
        act: FusedAct,
    ) -> Result<Option<Var>> {
        self.fold(tape, layer, x, w, p, bn, (Some(r), act))
    }

    fn fuses_unquantised(&self) -> bool {
        true
    }

    fn linear(
        &mut self,
        tape: &mut Tape<F>,
        _layer: &str,
        x: Var,
        w: Var,
        b: Option<Var>,
        _mode: Mode,
    ) -> Result<Var> {
        Ok(ops::linear(tape, x, w, b)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BufferMut, StateMut};
    use hla_autograd::Par;
    use ndarray::IxDyn;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A model with BatchNorm statistics and affine parameters far from (0, 1), so that a fold
    /// that dropped or misplaced any of them would show in the logits.
    fn model_with_bn_stats(arch: &str, seed: u64) -> Box<dyn crate::Model> {
        let mut m = crate::build(arch, 10, seed).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
        for (name, s) in m.state_mut() {
            let bn_param = name.ends_with(".weight") || name.ends_with(".bias");
            match s {
                StateMut::Param(p) if bn_param && p.value().ndim() == 1 => {
                    let (lo, hi) = if name.ends_with(".weight") {
                        (0.5, 1.5)
                    } else {
                        (-0.3, 0.3)
                    };
                    p.value_mut().mapv_inplace(|_| rng.random_range(lo..hi));
                }
                StateMut::Buffer(BufferMut::F32(b)) => {
                    let (lo, hi) = if name.ends_with("running_var") {
                        (0.2, 3.0)
                    } else {
                        (-0.5, 0.5)
                    };
                    b.mapv_inplace(|_| rng.random_range(lo..hi));
                }
                _ => {}
            }
        }
        m
    }

    fn logits(m: &mut dyn crate::Model, x: &ArrayD<f32>, fold: Option<&mut FoldBn>) -> ArrayD<f32> {
        let mut tape = Tape::no_grad();
        let xv = tape.constant(x.clone());
        let hook = fold.map(|f| f as &mut dyn LayerHook);
        let y = m.forward(&mut tape, xv, Mode::Eval, hook).unwrap();
        tape.value(y).clone()
    }

    fn input(shape: &[usize], seed: u64) -> ArrayD<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(-2.0f32..2.0))
    }

    /// Folded logits agree with the separate conv / BN / activation ops to f32 rounding on
    /// every model family (basic and bottleneck ResNets with and without projection shortcuts,
    /// MobileNetV2's depthwise convs and ReLU6), and every conv + BN pair is folded.
    #[test]
    fn folded_inference_matches_separate_ops() {
        for (arch, hw, pairs) in [
            ("resnet20", 32, 19),
            ("resnet20_b", 16, 21),
            ("resnet18", 64, 20),
            ("resnet50", 64, 53),
            ("mobilenet_v2", 64, 52),
        ] {
            let mut m = model_with_bn_stats(arch, 7);
            let x = input(&[2, 3, hw, hw], 11);
            let plain = logits(m.as_mut(), &x, None);
            let mut fold = FoldBn::default();
            let folded = logits(m.as_mut(), &x, Some(&mut fold));
            assert_eq!(fold.folded(), pairs, "{arch}");
            let scale = plain.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let err = plain.iter().zip(&folded).fold(0f32, |a, (&p, &f)| {
                crate::testutil::nan_max(a as f64, (p - f).abs() as f64) as f32
            });
            assert!(scale > 0.1, "{arch}: logits {scale}");
            assert!(
                err <= 1e-4 * scale,
                "{arch}: max |Δ| {err} for logits up to {scale}"
            );
            assert_ne!(plain, folded, "{arch}: the folded path must really run");
        }
    }

    /// [`FoldBn`] declining every residual sum ([`LayerHook::conv_bn_add_act`]'s default), so
    /// the model adds the shortcut and applies the activation as separate ops.
    struct SumApart(FoldBn);

    impl LayerHook for SumApart {
        fn conv2d(
            &mut self,
            tape: &mut Tape<f32>,
            layer: &str,
            x: Var,
            w: Var,
            p: &Conv2dParams,
            mode: Mode,
        ) -> Result<Var> {
            self.0.conv2d(tape, layer, x, w, p, mode)
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
        ) -> Result<Option<Var>> {
            self.0.conv_bn_act(tape, layer, x, w, p, bn, act)
        }

        fn fuses_unquantised(&self) -> bool {
            true
        }

        fn linear(
            &mut self,
            tape: &mut Tape<f32>,
            layer: &str,
            x: Var,
            w: Var,
            b: Option<Var>,
            mode: Mode,
        ) -> Result<Var> {
            self.0.linear(tape, layer, x, w, b, mode)
        }
    }

    /// The residual sum and its activation in the last conv's epilogue give the bits of the
    /// folded conv followed by the sum and activation ops, in every block kind (identity,
    /// option-A shortcuts, bottlenecks, MobileNetV2's sum without activation; projection
    /// shortcuts keep it apart), and every conv + BN pair is still folded; each block that fuses
    /// the sum records one op less.
    #[test]
    fn residual_epilogue_gives_the_bits_of_separate_sum_ops() {
        // blocks with a projection shortcut keep the sum apart (see `CifarBlock::forward`)
        for (arch, hw, pairs, sums) in [
            ("resnet20", 32, 19, 9),
            ("resnet20_b", 16, 21, 7),
            ("resnet18", 64, 20, 5),
            ("resnet50", 64, 53, 12),
            ("mobilenet_v2", 64, 52, 10),
        ] {
            let mut m = model_with_bn_stats(arch, 8);
            let x = input(&[2, 3, hw, hw], 12);
            let mut run = |hook: &mut dyn LayerHook| {
                let mut tape = Tape::no_grad();
                let xv = tape.constant(x.clone());
                let y = m.forward(&mut tape, xv, Mode::Eval, Some(hook)).unwrap();
                (tape.value(y).mapv(f32::to_bits), tape.len())
            };
            let mut apart = SumApart(FoldBn::default());
            let (want, ops_apart) = run(&mut apart);
            let mut fold = FoldBn::default();
            let (got, ops) = run(&mut fold);
            assert_eq!((fold.folded(), apart.0.folded()), (pairs, pairs), "{arch}");
            assert_eq!(got, want, "{arch}");
            assert_eq!(
                ops + sums,
                ops_apart,
                "{arch}: one fused sum per residual block"
            );
        }
    }

    /// Folded inference gives the same bits on 1, 2 and 4 threads.
    #[test]
    fn folded_inference_is_bit_identical_across_thread_counts() {
        let mut m = model_with_bn_stats("mobilenet_v2", 3);
        let x = input(&[3, 3, 48, 48], 5);
        let run = |m: &mut dyn crate::Model, threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut tape = Tape::no_grad();
                tape.set_par(if threads == 1 { Par::Seq } else { Par::Rayon });
                let xv = tape.constant(x.clone());
                let mut fold = FoldBn::default();
                let y = m
                    .forward(&mut tape, xv, Mode::Eval, Some(&mut fold))
                    .unwrap();
                tape.value(y).mapv(f32::to_bits)
            })
        };
        let one = run(m.as_mut(), 1);
        assert_eq!(one, run(m.as_mut(), 2));
        assert_eq!(one, run(m.as_mut(), 4));
    }

    /// A hook kept across forwards folds each layer once and gives the bits of a fresh hook
    /// every time; layers are kept apart by name (ResNet-20's 19 pairs, 19 entries).
    #[test]
    fn kept_hook_folds_once_and_gives_a_fresh_hooks_bits() {
        let mut m = model_with_bn_stats("resnet20", 4);
        let x = input(&[2, 3, 32, 32], 6);
        let fresh = logits(m.as_mut(), &x, Some(&mut FoldBn::default()));
        let mut kept = FoldBn::default();
        for round in 1..=3 {
            let y = logits(m.as_mut(), &x, Some(&mut kept));
            assert_eq!(
                y.mapv(f32::to_bits),
                fresh.mapv(f32::to_bits),
                "round {round}"
            );
            assert_eq!((kept.cached(), kept.folded()), (19, 19 * round));
        }
    }

    /// On a recording tape nothing is folded: training graphs keep their BatchNorm.
    #[test]
    fn recording_tape_is_not_folded() {
        let mut m = model_with_bn_stats("resnet20", 1);
        let mut tape = Tape::new();
        let xv = tape.constant(input(&[1, 3, 32, 32], 2));
        let mut fold = FoldBn::default();
        m.forward(&mut tape, xv, Mode::Eval, Some(&mut fold))
            .unwrap();
        assert_eq!(fold.folded(), 0);
    }
}
