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
