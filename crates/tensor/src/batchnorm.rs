//! Batch-norm statistics over `[n, c, h, w]`, per channel (the normalisation and its backward are
//! fused into the autograd op, `hla_autograd::ops::batch_norm2d`). Every per-channel sum runs
//! over samples in order, each `h × w` plane into [`Lanes`] (16 partial sums, element `j` of a
//! plane to lane `j % 16`, combined in a fixed tree): a fixed order whatever the thread count,
//! and one the compiler vectorises. Channels are independent, so they are spread over the rayon
//! pool without changing any result.

use crate::group::{channel_lanes, Group};
use crate::{Float, Par, Result};
use ndarray::{Array1, ArrayView4};

/// The `n` planes of channel `ch` of a contiguous `[n, c, h·w]` buffer, in sample order.
fn channel_planes<F>(xs: &[F], c: usize, hw: usize, ch: usize) -> impl Iterator<Item = &[F]> {
    xs.chunks_exact(hw).skip(ch).step_by(c)
}

/// Per-channel mean and biased variance (two passes: mean first, then `Σ (x − mean)² / m`,
/// `m = n·h·w`).
///
/// # Shapes
/// `x`: `[n, c, h, w]` → `(mean [c], var [c])`. With `n·h·w == 0` both are NaN.
pub fn channel_mean_var<F: Float>(x: ArrayView4<F>, par: Par) -> (Array1<F>, Array1<F>) {
    let (mean, var, _) = channel_mean_var_in(x, par, None).expect("no transfer without a group");
    (mean, var)
}

/// [`channel_mean_var`] over a batch split across the ranks of `group` (synchronised batch
/// norm): both passes' lane sums continue across the ranks in rank order, `m` is the global
/// count, and every rank gets the single-process bits. Also returns `m`.
///
/// # Errors
/// `Comm` for a failed transfer.
pub fn channel_mean_var_in<F: Float>(
    x: ArrayView4<F>,
    par: Par,
    group: Option<&Group>,
) -> Result<(Array1<F>, Array1<F>, usize)> {
    const OP: &str = "batch_norm2d_stats";
    let (n, c, h, w) = x.dim();
    let hw = h * w;
    let count = match group.filter(|g| g.size() > 1) {
        Some(g) => g.sum_count(OP, n * hw)?,
        None => n * hw,
    };
    if count == 0 {
        let nan = Array1::from_elem(c, F::nan());
        return Ok((nan.clone(), nan, 0));
    }
    let m = F::from_f64(count as f64);
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let planes = |ch| {
        (hw > 0)
            .then(|| channel_planes(xs, c, hw, ch))
            .into_iter()
            .flatten()
    };
    let sums = channel_lanes::<F, 1>(group, OP, c, par, |ch, s| {
        for p in planes(ch) {
            s[0].add(p);
        }
    })?;
    let mean: Array1<F> = sums.into_iter().map(|[s]| s.total() / m).collect();
    let sq = channel_lanes::<F, 1>(group, OP, c, par, |ch, q| {
        let mu = mean[ch];
        for p in planes(ch) {
            q[0].add_map(p, |v| (v - mu) * (v - mu));
        }
    })?;
    let var = sq.into_iter().map(|[q]| q.total() / m).collect();
    Ok((mean, var, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{bits, rand_array};
    use ndarray::Axis;

    #[test]
    fn mean_var_match_direct_formulas() {
        let x = rand_array::<f64, _, _>((3, 4, 5, 3), 1).mapv(|v| 2.0 * v + 0.5);
        let (mean, var) = channel_mean_var(x.view(), Par::Rayon);
        for c in 0..4 {
            let v: Vec<f64> = x.index_axis(Axis(1), c).iter().copied().collect();
            let mu = v.iter().sum::<f64>() / v.len() as f64;
            let s2 = v.iter().map(|u| (u - mu) * (u - mu)).sum::<f64>() / v.len() as f64;
            assert!((mean[c] - mu).abs() < 1e-14 && (var[c] - s2).abs() < 1e-14);
        }
    }

    /// f32 lane sums against f64 sequential sums on planes whose size is not a multiple of the
    /// lane count; 1 and 2 threads and a non-standard-layout input give the same bits.
    #[test]
    fn mean_var_f32_matches_f64_and_is_thread_and_layout_independent() {
        let x = rand_array::<f32, _, _>((7, 3, 5, 7), 41).mapv(|v| 3.0 * v + 1.0);
        let (mean, var) = channel_mean_var(x.view(), Par::Rayon);
        let m = (7 * 5 * 7) as f64;
        for c in 0..3 {
            let xc: Vec<f64> = x.index_axis(Axis(1), c).iter().map(|&v| v as f64).collect();
            let mu = xc.iter().sum::<f64>() / m;
            let v2 = xc.iter().map(|u| (u - mu) * (u - mu)).sum::<f64>() / m;
            assert!((mean[c] as f64 - mu).abs() < 1e-6 && (var[c] as f64 - v2).abs() < 1e-5);
        }
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (m2, v2) = pool.install(|| channel_mean_var(x.view(), Par::Rayon));
            assert_eq!((bits(&m2), bits(&v2)), (bits(&mean), bits(&var)));
        }
        let t = x
            .view()
            .permuted_axes([0, 1, 3, 2])
            .as_standard_layout()
            .into_owned();
        let t = t.view().permuted_axes([0, 1, 3, 2]);
        assert!(!t.is_standard_layout());
        let (mt, vt) = channel_mean_var(t, Par::Rayon);
        assert_eq!((bits(&mt), bits(&vt)), (bits(&mean), bits(&var)));
    }
}
