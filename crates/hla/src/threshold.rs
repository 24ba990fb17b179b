//! The threshold T(t) of Eq. 8: a magnitude quantile of the (normalised) weights.
//!
//! Rule (spec section 5, A1, A2): `a` = ascending |w| over the scope (all quantised layers for
//! `global`, one layer for `per_layer`), N = len(a), `idx = ⌊t_pct·N/100⌋` in integer arithmetic
//! (t in percent, never a float — A4), then
//! - `zero_based`: T = a[min(idx, N−1)]; since Eq. 4 zeroes |w| ≤ T, ⌊tN⌋ + 1 weights become zero
//!   when there are no ties;
//! - `kth_smallest`: T = a[idx − 1] (exactly ⌊tN⌋ zeros without ties; T = 0 when idx = 0).
//!
//! Ties: T is the order statistic itself (a value, not a position), so it is unique and independent
//! of how equal magnitudes are ordered; all weights equal to T are zeroed, so with ties the realised
//! sparsity can exceed the count above (T12 states "at least"). The order statistic is found with
//! `select_nth_unstable_by` on a copy (O(N), no full sort), which is deterministic in its result.
//!
//! Guide: [Eq. 8](crate::guide#eq-8).

use crate::config::{QuantileIndex, ThresholdScope};
use crate::error::{HlaError, Result};
use crate::real::{check_finite, Real};
use ndarray::ArrayViewD;

/// The index into the ascending |w| array for `t_pct` percent of `n` values (A2, A4).
///
/// `zero_based`: `min(⌊t_pct·n/100⌋, n−1)`; `kth_smallest`: `⌊t_pct·n/100⌋ − 1`, or `None` when
/// that is negative (no value is below the threshold: T = 0).
///
/// Guide: [Eq. 8](crate::guide#eq-8).
///
/// # Errors
/// `Empty` if `n == 0`; `Config` if `t_pct > 100`.
pub fn quantile_position(t_pct: u32, n: usize, conv: QuantileIndex) -> Result<Option<usize>> {
    if n == 0 {
        return Err(HlaError::Empty { op: "threshold" });
    }
    if t_pct > 100 {
        return Err(HlaError::Config {
            knob: "t_pct",
            value: t_pct.to_string(),
            reason: "must be <= 100".into(),
        });
    }
    // u128: t_pct·n cannot overflow for any slice length.
    let idx = ((t_pct as u128) * (n as u128) / 100) as usize;
    Ok(match conv {
        QuantileIndex::ZeroBased => Some(idx.min(n - 1)),
        QuantileIndex::KthSmallest => idx.checked_sub(1).map(|i| i.min(n - 1)),
    })
}

/// T(t) over the magnitudes in `mags` (consumed as scratch; order is destroyed).
///
/// Guide: [Eq. 8](crate::guide#eq-8).
///
/// # Errors
/// `Empty` for no values, `NonFinite` for NaN/inf.
pub fn threshold_of_magnitudes<F: Real>(
    mags: &mut [F],
    t_pct: u32,
    conv: QuantileIndex,
) -> Result<F> {
    check_finite("threshold", mags.iter())?;
    let Some(pos) = quantile_position(t_pct, mags.len(), conv)? else {
        return Ok(F::zero());
    };
    let (_, nth, _) = mags.select_nth_unstable_by(pos, |a, b| {
        a.partial_cmp(b).expect("finite values are totally ordered")
    });
    Ok(*nth)
}

/// T(t) over all elements of all `layers` (global scope, A1).
///
/// Guide: [Eq. 8](crate::guide#eq-8).
///
/// # Errors
/// `Empty` if the layers hold no weight; `NonFinite` for NaN/inf.
pub fn threshold_global<F: Real>(
    layers: &[ArrayViewD<'_, F>],
    t_pct: u32,
    conv: QuantileIndex,
) -> Result<F> {
    let total: usize = layers.iter().map(|l| l.len()).sum();
    let mut mags = Vec::with_capacity(total);
    for l in layers {
        mags.extend(l.iter().map(|v| v.abs()));
    }
    threshold_of_magnitudes(&mut mags, t_pct, conv)
}

/// One threshold per layer under `scope`: global → the same T for every layer, per_layer → T_l
/// from each layer's own weights.
///
/// Guide: [Eq. 8](crate::guide#eq-8).
///
/// # Errors
/// As [`threshold_global`]; with `per_layer`, `Empty` if any layer is empty.
pub fn thresholds<F: Real>(
    layers: &[ArrayViewD<'_, F>],
    t_pct: u32,
    scope: ThresholdScope,
    conv: QuantileIndex,
) -> Result<Vec<F>> {
    match scope {
        ThresholdScope::Global => {
            let t = threshold_global(layers, t_pct, conv)?;
            Ok(vec![t; layers.len()])
        }
        ThresholdScope::PerLayer => layers
            .iter()
            .map(|l| threshold_global(std::slice::from_ref(l), t_pct, conv))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{t1_w, t4_b};
    use ndarray::ArrayD;

    /// T2: sorted |W| of T1, N = 8, t = 0.5 → idx 4 → Δ = 4/11; kth_smallest → 2/11.
    #[test]
    fn t2_half_quantile_of_t1() {
        let w = t1_w::<f64>();
        let d = threshold_global(&[w.view()], 50, QuantileIndex::ZeroBased).unwrap();
        assert!((d - 4.0 / 11.0).abs() < 1e-15, "{d}");
        let d = threshold_global(&[w.view()], 50, QuantileIndex::KthSmallest).unwrap();
        assert!((d - 2.0 / 11.0).abs() < 1e-15, "{d}");
        // f32: Δ is one of the |w| values exactly.
        let w32 = t1_w::<f32>();
        let d32 = threshold_global(&[w32.view()], 50, QuantileIndex::ZeroBased).unwrap();
        assert_eq!(d32, 4.0f32 / 11.0);
    }

    /// T4: global over two layers → 0.6; per layer → 4/11 and 0.8; stage-2 init T(80) → 0.8.
    #[test]
    fn t4_global_vs_per_layer() {
        let a = t1_w::<f64>();
        let b = t4_b::<f64>();
        let ls = [a.view(), b.view()];
        let g = thresholds(&ls, 50, ThresholdScope::Global, QuantileIndex::ZeroBased).unwrap();
        assert_eq!(g, vec![0.6, 0.6]);
        let p = thresholds(&ls, 50, ThresholdScope::PerLayer, QuantileIndex::ZeroBased).unwrap();
        assert!((p[0] - 4.0 / 11.0).abs() < 1e-15);
        assert_eq!(p[1], 0.8);
        let s2 = threshold_global(&ls, 80, QuantileIndex::ZeroBased).unwrap();
        assert_eq!(s2, 0.8);
    }

    /// T6: index ⌊t_pct·8/100⌋ for the 10 stages; N = 100 gives t_pct itself; stage 2 → 6.
    /// Also documents the float-drift failure the integer schedule avoids.
    #[test]
    fn t6_indices_without_float_drift() {
        let pcts = [30, 34, 38, 42, 46, 50, 54, 58, 62, 66];
        let idx: Vec<usize> = pcts
            .iter()
            .map(|&p| {
                quantile_position(p, 8, QuantileIndex::ZeroBased)
                    .unwrap()
                    .unwrap()
            })
            .collect();
        assert_eq!(idx, vec![2, 2, 3, 3, 3, 4, 4, 4, 4, 5]);
        for &p in &pcts {
            assert_eq!(
                quantile_position(p, 100, QuantileIndex::ZeroBased).unwrap(),
                Some(p as usize)
            );
        }
        assert_eq!(
            quantile_position(80, 8, QuantileIndex::ZeroBased).unwrap(),
            Some(6)
        );
        // The naive float loop drifts: sixth value 0.4999999999999999 → ⌊t·8⌋ = 3, not 4.
        let mut t = 0.3f64;
        for _ in 0..5 {
            t += 0.04;
        }
        assert_eq!((t * 8.0).floor() as usize, 3);
    }

    /// T12: zero_based zeroes at least ⌊tN⌋ + 1 weights (exactly that many without ties).
    #[test]
    fn t12_zero_count_property_random() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for n in [1usize, 2, 7, 100, 1001] {
            let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let a = ArrayD::from_shape_vec(vec![n], v.clone()).unwrap();
            for p in [1u32, 30, 50, 66, 80, 99] {
                let d = threshold_global(&[a.view()], p, QuantileIndex::ZeroBased).unwrap();
                let zeros = v.iter().filter(|x| x.abs() <= d).count();
                let want = ((p as usize * n) / 100 + 1).min(n);
                assert_eq!(zeros, want, "n={n} p={p}");
                let d = threshold_global(&[a.view()], p, QuantileIndex::KthSmallest).unwrap();
                let zeros = v.iter().filter(|x| x.abs() <= d).count();
                assert_eq!(zeros, (p as usize * n) / 100, "kth n={n} p={p}");
            }
        }
        // ties: all equal → everything is zeroed, and the value is the tied magnitude.
        let a = ArrayD::from_elem(vec![10], 0.25f64);
        assert_eq!(
            threshold_global(&[a.view()], 30, QuantileIndex::ZeroBased).unwrap(),
            0.25
        );
    }

    #[test]
    fn errors_on_empty_and_nan() {
        let e = ArrayD::<f32>::zeros(vec![0]);
        assert!(matches!(
            threshold_global(&[e.view()], 50, QuantileIndex::ZeroBased),
            Err(HlaError::Empty { .. })
        ));
        let a = ArrayD::from_shape_vec(vec![2], vec![1.0f32, f32::NAN]).unwrap();
        assert!(matches!(
            threshold_global(&[a.view()], 50, QuantileIndex::ZeroBased),
            Err(HlaError::NonFinite { index: 1, .. })
        ));
    }

    /// T(t) over ResNet-50's 25.5 M quantised weights (select, not sort); prints the time.
    /// Run: `cargo test -p hla-core --release -- --ignored --nocapture threshold_resnet50_scale`
    /// (ignored: allocates ~200 MB and is a timing, not a check).
    #[test]
    #[ignore]
    fn threshold_resnet50_scale() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let a = ArrayD::from_shape_fn(vec![25_500_000], |_| rng.random_range(-1.0f32..1.0));
        let t0 = std::time::Instant::now();
        let d = threshold_global(&[a.view()], 66, QuantileIndex::ZeroBased).unwrap();
        println!(
            "T(66) over 25.5 M weights = {d} in {:.0} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        assert!((d - 0.66).abs() < 0.01);
    }
}
