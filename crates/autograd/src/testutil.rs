//! Helpers shared by the tests of this crate: seeded inputs.

use ndarray::ArrayD;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Values uniform in [-1, 1) drawn from `seed`.
pub(crate) fn uniform(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    ArrayD::from_shape_simple_fn(shape.to_vec(), || rng.random_range(-1.0..1.0))
}

/// Values uniform in [0.5, 2) drawn from `seed` (for sqrt, log, divisors).
pub(crate) fn positive(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    ArrayD::from_shape_simple_fn(shape.to_vec(), || rng.random_range(0.5..2.0))
}

/// Distinct values (a seeded permutation of `0..len`, scaled to spacing 0.1) shifted so that
/// none is within 0.05 of `avoid`: no two elements tie (max-pool) and none sits on a kink.
pub(crate) fn distinct(shape: &[usize], avoid: f64, seed: u64) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..n).rev() {
        perm.swap(i, rng.random_range(0..=i));
    }
    // values avoid + 0.05 + 0.1·(k − n/2): symmetric around `avoid`, never equal to it
    let half = (n / 2) as f64;
    let values = perm
        .iter()
        .map(|&k| avoid + 0.05 + 0.1 * (k as f64 - half))
        .collect();
    ArrayD::from_shape_vec(shape.to_vec(), values).expect("shape matches length")
}

/// A tiny residual conv net used by the end-to-end tests (composite gradient check,
/// determinism, memory): stem conv → 2 residual blocks (the first with a grouped conv, a max
/// pool between them) → global average pool → linear.
///
/// Input `[n, 3, h, w]` → logits `[n, 3]`. Parameters, in order: for each of the 5 convs
/// `(w, γ, β)`, then the linear `(w, b)`.
pub(crate) mod tiny_net {
    use ndarray::ArrayD;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use crate::ops::{self, BatchNormState};
    use crate::{Conv2dParams, Float, Param, Pool2dParams, Result, Tape, Var};

    /// Conv weight shapes `[c_out, c_in / groups, k, k]` and their params.
    const CONVS: [([usize; 4], usize); 5] = [
        ([4, 3, 3, 3], 1), // stem
        ([4, 4, 3, 3], 1), // block 1, conv a
        ([4, 2, 3, 3], 2), // block 1, conv b (grouped)
        ([4, 4, 3, 3], 1), // block 2, conv a
        ([4, 4, 3, 3], 1), // block 2, conv b
    ];
    /// Number of classes.
    pub(crate) const CLASSES: usize = 3;

    /// Initial values drawn from `seed` (uniform ±1/√fan_in for weights, γ near 1, β near 0).
    pub(crate) fn init<F: Float>(seed: u64) -> Vec<ArrayD<F>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut draw = |shape: &[usize], centre: f64, half: f64| {
            ArrayD::from_shape_simple_fn(shape.to_vec(), || {
                F::from_f64(centre + rng.random_range(-half..half))
            })
        };
        let mut out = Vec::new();
        for (shape, _) in CONVS {
            let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
            out.push(draw(&shape, 0.0, 1.0 / fan_in.sqrt()));
            out.push(draw(&[shape[0]], 1.0, 0.2));
            out.push(draw(&[shape[0]], 0.0, 0.2));
        }
        out.push(draw(&[CLASSES, 4], 0.0, 0.5));
        out.push(draw(&[CLASSES], 0.0, 0.1));
        out
    }

    /// Fresh batch-norm states, one per conv.
    pub(crate) fn bn_states<F: Float>() -> Vec<BatchNormState<F>> {
        CONVS
            .iter()
            .map(|(s, _)| BatchNormState::new(s[0]))
            .collect()
    }

    /// The parameters as [`Param`]s.
    pub(crate) fn params<F: Float>(seed: u64) -> Vec<Param<F>> {
        init(seed).into_iter().map(Param::new).collect()
    }

    fn conv_bn<F: Float>(
        t: &mut Tape<F>,
        x: Var,
        w: &[Var],
        bn: &mut BatchNormState<F>,
        groups: usize,
        train: bool,
    ) -> Result<Var> {
        let y = ops::conv2d(
            t,
            x,
            w[0],
            None,
            &Conv2dParams::new(1, 1).with_groups(groups),
        )?;
        ops::batch_norm2d(t, y, w[1], w[2], bn, train)
    }

    /// Logits `[n, CLASSES]` for input `x` given the parameter vars `w` (in [`init`] order).
    pub(crate) fn forward<F: Float>(
        t: &mut Tape<F>,
        x: Var,
        w: &[Var],
        bn: &mut [BatchNormState<F>],
        train: bool,
    ) -> Result<Var> {
        let stem = conv_bn(t, x, &w[0..3], &mut bn[0], CONVS[0].1, train)?;
        let mut h = ops::relu(t, stem)?;
        for (block, first) in [(0, 1), (1, 3)] {
            let a = conv_bn(
                t,
                h,
                &w[3 * first..3 * first + 3],
                &mut bn[first],
                CONVS[first].1,
                train,
            )?;
            let a = ops::relu(t, a)?;
            let (j, bn_j) = (first + 1, &mut bn[first + 1]);
            let b = conv_bn(t, a, &w[3 * j..3 * j + 3], bn_j, CONVS[j].1, train)?;
            let sum = ops::add(t, b, h)?;
            h = ops::relu(t, sum)?;
            if block == 0 {
                h = ops::max_pool2d(t, h, &Pool2dParams::new(2, 2, 0))?;
            }
        }
        let pooled = ops::global_avg_pool(t, h)?;
        ops::linear(t, pooled, w[15], Some(w[16]))
    }
}
