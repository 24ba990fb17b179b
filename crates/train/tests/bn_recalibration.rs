//! BN re-estimation against statistics computed by hand from the batches themselves, on a net
//! whose BatchNorm sees the input directly (so its batch statistics are those of the pixels).

use hla_autograd::ops::{self, BatchNormState};
use hla_autograd::{Param, Tape, Var};
use hla_data::{ArrayDataset, ImageSet, Loader, LoaderConfig, Normalize, PixelTransform};
use hla_models::{
    BufferMut, BufferRef, LayerHook, Mode, Model, QuantLayerInfo, StateMut, StateRef,
};
use hla_train::bn::recalibrate_bn;
use ndarray::{Array4, ArrayD};
use std::sync::Arc;

/// x `[n, 3, h, w]` → BatchNorm(3) → global average pool → linear 3 → 2.
struct BnNet {
    gamma: Param<f32>,
    beta: Param<f32>,
    bn: BatchNormState<f32>,
    fc: Param<f32>,
}

impl Model for BnNet {
    fn arch(&self) -> &str {
        "bnnet"
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn forward(
        &mut self,
        tape: &mut Tape<f32>,
        x: Var,
        mode: Mode,
        _hook: Option<&mut dyn LayerHook>,
    ) -> hla_models::Result<Var> {
        let (g, b) = (tape.param(&self.gamma), tape.param(&self.beta));
        let y = ops::batch_norm2d(tape, x, g, b, &mut self.bn, mode == Mode::Train)?;
        let y = ops::global_avg_pool(tape, y)?;
        let w = tape.param(&self.fc);
        Ok(ops::linear(tape, y, w, None)?)
    }
    fn state(&self) -> Vec<(String, StateRef<'_>)> {
        vec![
            ("bn.weight".into(), StateRef::Param(&self.gamma)),
            ("bn.bias".into(), StateRef::Param(&self.beta)),
            (
                "bn.running_mean".into(),
                StateRef::Buffer(BufferRef::F32(&self.bn.running_mean)),
            ),
            (
                "bn.running_var".into(),
                StateRef::Buffer(BufferRef::F32(&self.bn.running_var)),
            ),
            (
                "bn.num_batches_tracked".into(),
                StateRef::Buffer(BufferRef::Count(self.bn.num_batches_tracked)),
            ),
            ("fc.weight".into(), StateRef::Param(&self.fc)),
        ]
    }
    fn state_mut(&mut self) -> Vec<(String, StateMut<'_>)> {
        vec![
            ("bn.weight".into(), StateMut::Param(&mut self.gamma)),
            ("bn.bias".into(), StateMut::Param(&mut self.beta)),
            (
                "bn.running_mean".into(),
                StateMut::Buffer(BufferMut::F32(&mut self.bn.running_mean)),
            ),
            (
                "bn.running_var".into(),
                StateMut::Buffer(BufferMut::F32(&mut self.bn.running_var)),
            ),
            (
                "bn.num_batches_tracked".into(),
                StateMut::Buffer(BufferMut::Count(&mut self.bn.num_batches_tracked)),
            ),
            ("fc.weight".into(), StateMut::Param(&mut self.fc)),
        ]
    }
    fn quantisable(&self) -> Vec<QuantLayerInfo> {
        Vec::new()
    }
    fn batch_norm_momenta(&self) -> Vec<(String, f32)> {
        vec![("bn".into(), self.bn.momentum)]
    }
}

/// 24 images of 3×4×4 pixels with a different brightness per channel and image.
fn loader() -> Loader {
    let images = Array4::from_shape_fn((24, 3, 4, 4), |(i, c, y, x)| {
        ((i * 37 + c * 61 + y * 11 + x * 7 + (i * c) % 5) % 256) as u8
    });
    let set = ImageSet {
        images,
        labels: (0..24).map(|i| i % 2).collect(),
        classes: vec!["a".into(), "b".into()],
        source: "memory".into(),
    };
    let norm = Normalize::new(&[0.5, 0.4, 0.3], &[0.25, 0.2, 0.3]).unwrap();
    let ds = ArrayDataset::new(Arc::new(set), PixelTransform::Eval, norm).unwrap();
    Loader::new(
        Arc::new(ds),
        LoaderConfig {
            batch_size: 5,
            seed: 3,
            shuffle: true,
            drop_last: true,
            threads: 1,
            ..LoaderConfig::default()
        },
    )
    .unwrap()
}

fn net(momentum: f32) -> BnNet {
    let mut bn = BatchNormState::new(3);
    bn.momentum = momentum;
    // stale statistics that the re-estimation must discard entirely
    bn.running_mean = ndarray::arr1(&[7.0, -3.0, 0.5]);
    bn.running_var = ndarray::arr1(&[9.0, 0.01, 4.0]);
    BnNet {
        gamma: Param::new(ArrayD::from_elem(vec![3], 1.5)),
        beta: Param::new(ArrayD::from_elem(vec![3], -0.5)),
        bn,
        fc: Param::new(ArrayD::from_elem(vec![2, 3], 0.1)),
    }
}

/// Per channel: the average over the batches of each batch's mean and unbiased variance, in
/// f64 straight from the loaded pixels.
fn by_hand(loader: &Loader, epoch: u64, batches: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
    let mut k = 0;
    for b in loader.epoch(epoch).take(batches) {
        let x = b.unwrap().images;
        for c in 0..3 {
            let vals: Vec<f64> = x
                .index_axis(ndarray::Axis(1), c)
                .iter()
                .map(|&p| p as f64)
                .collect();
            let n = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / n;
            let var = vals.iter().map(|p| (p - mean) * (p - mean)).sum::<f64>() / (n - 1.0);
            m[c] += mean;
            v[c] += var;
        }
        k += 1;
    }
    (
        m.iter().map(|s| s / k as f64).collect(),
        v.iter().map(|s| s / k as f64).collect(),
    )
}

#[test]
fn recalibration_is_the_plain_average_of_batch_statistics() {
    let loader = loader();
    for momentum in [0.1f32, 0.25, 1.0] {
        let mut m = net(momentum);
        recalibrate_bn(&mut m, None, &loader, 3, 7, None).unwrap();
        let (mean, var) = by_hand(&loader, 7, 3);
        for c in 0..3 {
            let (gm, gv) = (m.bn.running_mean[c] as f64, m.bn.running_var[c] as f64);
            assert!(
                (gm - mean[c]).abs() < 2e-5 * (1.0 + mean[c].abs()),
                "momentum {momentum}, channel {c}: mean {gm} vs {}",
                mean[c]
            );
            assert!(
                (gv - var[c]).abs() < 2e-5 * (1.0 + var[c]),
                "momentum {momentum}, channel {c}: var {gv} vs {}",
                var[c]
            );
        }
        assert_eq!(m.bn.num_batches_tracked, 3);
        // weights are untouched
        assert!(m.gamma.value().iter().all(|&g| g == 1.5));
    }
}

#[test]
fn zero_batches_change_nothing_and_a_missing_momentum_is_an_error() {
    let loader = loader();
    let mut m = net(0.1);
    recalibrate_bn(&mut m, None, &loader, 0, 0, None).unwrap();
    assert_eq!(m.bn.running_mean[0], 7.0);
    m.bn.momentum = 0.0;
    let e = recalibrate_bn(&mut m, None, &loader, 2, 0, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("momentum 0") && e.contains("`bn`"), "{e}");
}
