//! Batch-norm statistics over `[n, c, h, w]`, per channel (the normalisation and its backward are
//! fused into the autograd op, `hla_autograd::ops::batch_norm2d`). Every per-channel sum runs
//! over samples in order, each `h × w` plane into [`Lanes`] (16 partial sums, element `j` of a
//! plane to lane `j % 16`, combined in a fixed tree): a fixed order whatever the thread count,
//! and one the compiler vectorises. Channels are independent, so they are spread over the rayon
//! pool without changing any result.

use crate::group::{channel_lanes, Group};
use crate::lanes::Lanes;
use crate::{Activation, Float, Par, Result};
use ndarray::{Array1, Array4, ArrayView1, ArrayView4};
use rayon::prelude::*;

/// The `n` planes of channel `ch` of a contiguous `[n, c, h·w]` buffer, in sample order, each
/// yielded with a prefetch of the next one's start ([`crate::prefetch`]: the planes are a sample
/// apart, so the hardware prefetchers miss every plane's first lines).
pub fn channel_planes<F>(
    xs: &[F],
    c: usize,
    hw: usize,
    ch: usize,
) -> impl Iterator<Item = &[F]> + Clone {
    xs.chunks_exact(hw)
        .skip(ch)
        .step_by(c)
        .inspect(move |p| crate::prefetch::prefetch_next_plane(p, c * hw))
}

/// One channel's mean and biased variance over its `planes`, `m` values in all: the two
/// passes back to back, so that the second reads the channel's planes from cache.
#[inline(always)] // into the vectorised sweep
fn planes_mean_var<'a, F: Float>(planes: impl Iterator<Item = &'a [F]> + Clone, m: F) -> (F, F) {
    let mut s = Lanes::new();
    for p in planes.clone() {
        s.add(p);
    }
    let mu = s.total() / m;
    let mut q = Lanes::new();
    for p in planes {
        q.add_map(p, |v| (v - mu) * (v - mu));
    }
    (mu, q.total() / m)
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
    if group.filter(|g| g.size() > 1).is_none() {
        // one channel at a time, both passes: the bits of the two passes over all channels
        let (mean, var): (Vec<F>, Vec<F>) =
            crate::map_range(par, c, |ch| planes_mean_var(planes(ch), m))
                .into_iter()
                .unzip();
        return Ok((Array1::from(mean), Array1::from(var), count));
    }
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

/// `f(ch, planes)` for every channel `ch` of a `[n, c, hw]` buffer, `planes` its `n` planes in
/// sample order (each channel's sweep in one task, so its planes stay in that core's cache);
/// channels in parallel when `par` allows it, results in channel order.
pub fn map_channel_planes<T: Send, R: Send>(
    buf: &mut [T],
    (c, hw): (usize, usize),
    par: Par,
    f: impl Fn(usize, &mut [&mut [T]]) -> R + Sync + Send,
) -> Vec<R> {
    let mut by_channel: Vec<Vec<&mut [T]>> = (0..c).map(|_| Vec::new()).collect();
    if hw > 0 {
        for (i, p) in buf.chunks_exact_mut(hw).enumerate() {
            by_channel[i % c].push(p);
        }
    }
    // the sweeps are plain loops: compiled for the CPU's vectors (pass `f` `#[inline(always)]`)
    let one = |(ch, planes): (usize, &mut Vec<&mut [T]>)| {
        crate::isa::vectorised(
            #[inline(always)]
            || f(ch, planes),
        )
    };
    match par {
        Par::Seq => by_channel.iter_mut().enumerate().map(one).collect(),
        Par::Rayon => by_channel.par_iter_mut().enumerate().map(one).collect(),
    }
}

/// Train-mode batch norm of one process (no group), each channel in one sweep while its planes
/// are in cache: its mean and biased variance as [`channel_mean_var`], then `inv_std = 1 /
/// √(var + ε)` and `y = act(γ·((x − mean)·inv_std) + β)`, the formulas of the two-step
/// computation followed by [`Activation::apply`] (and their bits). Channels run in parallel when
/// `par` allows, the same bits either way.
///
/// # Shapes
/// `x`: `[n, c, h, w]` with `n·h·w > 0`, `gamma`, `beta`: `[c]` → (`y [n, c, h, w]`, `mean`,
/// `var`, `inv_std`, each `[c]`).
///
/// # Panics
/// If `n·h·w == 0` or `gamma` or `beta` is not `[c]` (a caller bug: the autograd op checks).
pub fn batch_norm_train_forward<F: Float>(
    x: ArrayView4<F>,
    (gamma, beta): (ArrayView1<F>, ArrayView1<F>),
    eps: F,
    (act, par): (Activation, Par),
) -> (Array4<F>, Array1<F>, Array1<F>, Array1<F>) {
    let affine = (gamma, beta);
    // the activation chosen outside the loops, so that each loop is a plain select
    match act {
        Activation::None => train_forward(x, affine, eps, par, |v| v),
        Activation::Relu => train_forward(x, affine, eps, par, |v| Activation::Relu.apply(v)),
        Activation::Relu6 => train_forward(x, affine, eps, par, |v| Activation::Relu6.apply(v)),
    }
}

/// [`batch_norm_train_forward`] with the activation `a`.
fn train_forward<F: Float>(
    x: ArrayView4<F>,
    (gamma, beta): (ArrayView1<F>, ArrayView1<F>),
    eps: F,
    par: Par,
    a: impl Fn(F) -> F + Sync + Send,
) -> (Array4<F>, Array1<F>, Array1<F>, Array1<F>) {
    let (n, c, h, w) = x.dim();
    let hw = h * w;
    assert!(
        n * hw > 0 && gamma.len() == c && beta.len() == c,
        "batch_norm_train_forward: shapes {:?}, [{}], [{}]",
        x.shape(),
        gamma.len(),
        beta.len()
    );
    let m = F::from_f64((n * hw) as f64);
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let mut y = Array4::<F>::uninit(x.raw_dim());
    let ys = y.as_slice_mut().expect("fresh array is contiguous");
    let stats = map_channel_planes(
        ys,
        (c, hw),
        par,
        #[inline(always)]
        |ch, ys| {
            let planes = channel_planes(xs, c, hw, ch);
            let (mu, var) = planes_mean_var(planes.clone(), m);
            let s = F::one() / (var + eps).sqrt();
            let (g, b) = (gamma[ch], beta[ch]);
            for (yp, xp) in ys.iter_mut().zip(planes) {
                for (o, &v) in yp.iter_mut().zip(xp) {
                    o.write(a(g * ((v - mu) * s) + b));
                }
            }
            (mu, var, s)
        },
    );
    // SAFETY: every plane of `y` was in exactly one channel's list and written in full above.
    let y = unsafe { y.assume_init() };
    let mean = stats.iter().map(|t| t.0).collect();
    let var = stats.iter().map(|t| t.1).collect();
    let inv_std = stats.iter().map(|t| t.2).collect();
    (y, mean, var, inv_std)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{bits, hw_swapped, rand_array};
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
        let t = hw_swapped(&x);
        let t = t.view().permuted_axes([0, 1, 3, 2]);
        assert!(!t.is_standard_layout());
        let (mt, vt) = channel_mean_var(t, Par::Rayon);
        assert_eq!((bits(&mt), bits(&vt)), (bits(&mean), bits(&var)));
    }

    /// The one-sweep train forward gives the bits of `channel_mean_var` followed by the
    /// per-element formula and the activation, sequentially and on 1, 2 and 4 threads, for a
    /// non-standard layout too; a mutated formula (`γ·(x − μ)·s + β`) is told apart. The
    /// values cross 0 and 6, so that ReLU and ReLU6 both clip.
    #[test]
    fn train_forward_is_stats_then_formula_bit_for_bit() {
        let x = rand_array::<f32, _, _>((5, 3, 4, 7), 43).mapv(|v| 3.0 * v + 1.0);
        let (g, b) = (
            Array1::from(vec![0.5f32, -1.25, 4.0]),
            Array1::from(vec![0.1f32, 0.0, -0.3]),
        );
        let eps = 1e-5f32;
        let (mean, var) = channel_mean_var(x.view(), Par::Seq);
        let inv: Array1<f32> = var.mapv(|v| 1.0 / (v + eps).sqrt());
        let mut want = x.clone();
        let mut loose = x.clone();
        for ((i, v), l) in want.indexed_iter_mut().zip(loose.iter_mut()) {
            let ch = i.1;
            let x0 = *v;
            *v = g[ch] * ((x0 - mean[ch]) * inv[ch]) + b[ch];
            *l = g[ch] * (x0 - mean[ch]) * inv[ch] + b[ch];
        }
        assert_ne!(
            bits(&want),
            bits(&loose),
            "the mutation must change some value"
        );
        assert!(want.iter().any(|&v| v < 0.0) && want.iter().any(|&v| v > 6.0));
        for act in [Activation::None, Activation::Relu, Activation::Relu6] {
            let want = want.mapv(|v| act.apply(v));
            let run = |x: ArrayView4<f32>, par| {
                batch_norm_train_forward(x, (g.view(), b.view()), eps, (act, par))
            };
            let check = |(y, m, v, s): (Array4<f32>, Array1<f32>, Array1<f32>, Array1<f32>),
                         what: &str| {
                assert_eq!(bits(&y), bits(&want), "{act:?}, {what}: y");
                assert_eq!(
                    (bits(&m), bits(&v), bits(&s)),
                    (bits(&mean), bits(&var), bits(&inv)),
                    "{act:?}, {what}: stats"
                );
            };
            check(run(x.view(), Par::Seq), "sequential");
            for threads in [1, 2, 4] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                check(
                    pool.install(|| run(x.view(), Par::Rayon)),
                    &format!("{threads} threads"),
                );
            }
            let t = hw_swapped(&x);
            let t = t.view().permuted_axes([0, 1, 3, 2]);
            assert!(!t.is_standard_layout());
            check(run(t, Par::Rayon), "non-standard layout");
        }
    }
}
