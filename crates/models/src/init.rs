//! Weight initialisation as torchvision / PyTorch do it, drawn from an explicit seeded RNG.
//!
//! The *distributions* are PyTorch's; the random streams are ours (`ChaCha8Rng`), so values are
//! reproducible for a given seed but not equal to PyTorch's for `torch.manual_seed` (parity tests
//! load PyTorch's weights instead).

use ndarray::ArrayD;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};

/// `(fan_in, fan_out)` of a weight as `torch.nn.init._calculate_fan_in_and_fan_out`:
/// `fan_in = shape[1]·receptive`, `fan_out = shape[0]·receptive` with `receptive` the product of
/// the remaining dimensions (groups are ignored, as in PyTorch).
pub fn fans(shape: &[usize]) -> (usize, usize) {
    let receptive: usize = shape.iter().skip(2).product();
    let fan_in = shape.get(1).copied().unwrap_or(1) * receptive;
    let fan_out = shape.first().copied().unwrap_or(1) * receptive;
    (fan_in, fan_out)
}

/// Samples of `N(0, std²)` in row-major order.
pub fn normal(shape: &[usize], std: f32, rng: &mut ChaCha8Rng) -> ArrayD<f32> {
    match Normal::new(0.0f32, std) {
        Ok(d) => ArrayD::from_shape_simple_fn(shape, || d.sample(rng)),
        // std is finite and ≥ 0 at every call site; fall back to the standard normal scaled.
        Err(_) => ArrayD::from_shape_simple_fn(shape, || {
            std * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, rng)
        }),
    }
}

/// Samples of `U(-bound, bound)` in row-major order.
pub fn uniform(shape: &[usize], bound: f32, rng: &mut ChaCha8Rng) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(shape, || (rng.random::<f32>() * 2.0 - 1.0) * bound)
}

/// `kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`: `N(0, 2 / fan_out)` — torchvision's
/// conv init for ResNet and MobileNetV2.
pub fn kaiming_normal_fan_out(shape: &[usize], rng: &mut ChaCha8Rng) -> ArrayD<f32> {
    let (_, fan_out) = fans(shape);
    normal(shape, (2.0 / fan_out.max(1) as f64).sqrt() as f32, rng)
}

/// `kaiming_normal_(w)` with PyTorch's defaults (fan_in, gain √2): `N(0, 2 / fan_in)` — the init
/// of the CIFAR ResNets (akamaster/pytorch_resnet_cifar10 `_weights_init`).
pub fn kaiming_normal_fan_in(shape: &[usize], rng: &mut ChaCha8Rng) -> ArrayD<f32> {
    let (fan_in, _) = fans(shape);
    normal(shape, (2.0 / fan_in.max(1) as f64).sqrt() as f32, rng)
}

/// `nn.Linear`'s default weight init, `kaiming_uniform_(a=√5)`: `U(±1/√fan_in)`; the default bias
/// init uses the same bound.
pub fn torch_linear_bound(fan_in: usize) -> f32 {
    (1.0 / (fan_in.max(1) as f64).sqrt()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn moments(a: &ArrayD<f32>) -> (f64, f64) {
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    #[test]
    fn fans_follow_pytorch() {
        assert_eq!(fans(&[64, 3, 7, 7]), (147, 3136));
        assert_eq!(fans(&[32, 1, 3, 3]), (9, 288)); // depthwise: groups ignored
        assert_eq!(fans(&[1000, 512]), (512, 1000));
    }

    #[test]
    fn kaiming_fan_out_has_the_torchvision_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w = kaiming_normal_fan_out(&[128, 64, 3, 3], &mut rng);
        let (m, v) = moments(&w);
        let want = 2.0 / (128.0 * 9.0);
        assert!(m.abs() < 3e-3, "mean {m}");
        assert!((v / want - 1.0).abs() < 0.03, "var {v} want {want}");
    }

    #[test]
    fn kaiming_fan_in_has_the_akamaster_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let w = kaiming_normal_fan_in(&[64, 32, 3, 3], &mut rng);
        let (_, v) = moments(&w);
        let want = 2.0 / (32.0 * 9.0);
        assert!((v / want - 1.0).abs() < 0.04, "var {v} want {want}");
    }

    #[test]
    fn uniform_stays_in_bounds_and_fills_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let b = torch_linear_bound(64);
        assert_eq!(b, 0.125);
        let u = uniform(&[4000], b, &mut rng);
        assert!(u.iter().all(|&v| v.abs() <= b));
        let max = u.iter().fold(0f32, |m, &v| m.max(v.abs()));
        assert!(max > 0.99 * b);
        let (_, var) = moments(&u);
        assert!((var / (b as f64 * b as f64 / 3.0) - 1.0).abs() < 0.08);
    }

    #[test]
    fn same_seed_same_values() {
        let a = normal(&[10], 1.0, &mut ChaCha8Rng::seed_from_u64(9));
        let b = normal(&[10], 1.0, &mut ChaCha8Rng::seed_from_u64(9));
        let c = normal(&[10], 1.0, &mut ChaCha8Rng::seed_from_u64(10));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
