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
