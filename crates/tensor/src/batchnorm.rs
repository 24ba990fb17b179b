//! Batch-norm kernels over `[n, c, h, w]`, per channel: statistics, the normalisation, and the
//! train-mode backward through the batch statistics. Every per-channel sum runs over samples in
//! order, each `h × w` plane into [`Lanes`] (16 partial sums, element `j` of a plane to lane
//! `j % 16`, combined in a fixed tree): a fixed order whatever the thread count, and one the
//! compiler vectorises. Channels (sums) and planes (element-wise parts) are independent, so they
//! are spread over the rayon pool without changing any result.

use crate::lanes::Lanes;
use crate::Float;
use ndarray::{Array1, Array4, ArrayView1, ArrayView4};
use rayon::prelude::*;

/// The `n` planes of channel `ch` of a contiguous `[n, c, h·w]` buffer, in sample order.
fn channel_planes<F>(xs: &[F], c: usize, hw: usize, ch: usize) -> impl Iterator<Item = &[F]> {
    xs.chunks_exact(hw).skip(ch).step_by(c)
}

/// Per-channel mean and biased variance (two passes: mean first, then `Σ (x − mean)² / m`,
/// `m = n·h·w`).
///
/// # Shapes
/// `x`: `[n, c, h, w]` → `(mean [c], var [c])`. With `n·h·w == 0` both are NaN.
pub fn channel_mean_var<F: Float>(x: ArrayView4<F>) -> (Array1<F>, Array1<F>) {
    let (n, c, h, w) = x.dim();
    let hw = h * w;
    let m = F::from_f64((n * hw) as f64);
    if n * hw == 0 {
        return (
            Array1::from_elem(c, F::nan()),
            Array1::from_elem(c, F::nan()),
        );
    }
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let stats: Vec<(F, F)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut s = Lanes::new();
            for p in channel_planes(xs, c, hw, ch) {
                s.add(p);
            }
            let mu = s.total() / m;
            let mut q = Lanes::new();
            for p in channel_planes(xs, c, hw, ch) {
                q.add_map(p, |v| (v - mu) * (v - mu));
            }
            (mu, q.total() / m)
        })
        .collect();
    let mean = stats.iter().map(|s| s.0).collect::<Array1<F>>();
    let var = stats.iter().map(|s| s.1).collect::<Array1<F>>();
    (mean, var)
}

/// `y = γ·(x − mean)/√(var + ε) + β` per channel; returns `(y, x_hat, inv_std)` where
/// `x_hat = (x − mean)·inv_std` and `inv_std = 1/√(var + ε)` (what the backward needs).
///
/// # Shapes
/// `x`: `[n, c, h, w]`; `mean`, `var`, `gamma`, `beta`: `[c]` → (`[n, c, h, w]`,
/// `[n, c, h, w]`, `[c]`).
/// # Panics
/// If a per-channel vector's length is not `c` (a caller bug: the BN op owns these shapes).
pub fn batch_norm_forward<F: Float>(
    x: ArrayView4<F>,
    mean: ArrayView1<F>,
    var: ArrayView1<F>,
    gamma: ArrayView1<F>,
    beta: ArrayView1<F>,
    eps: F,
) -> (Array4<F>, Array4<F>, Array1<F>) {
    let (_, c, h, w) = x.dim();
    let lens = [mean.len(), var.len(), gamma.len(), beta.len()];
    assert!(
        lens.iter().all(|&l| l == c),
        "batch_norm_forward: mean/var/gamma/beta lengths {lens:?} vs x {:?}",
        x.shape()
    );
    let inv_std = var.mapv(|v| F::one() / (v + eps).sqrt());
    let mut x_hat = Array4::<F>::zeros(x.dim());
    let mut y = Array4::<F>::zeros(x.dim());
    let hw = h * w;
    if x_hat.is_empty() {
        return (y, x_hat, inv_std);
    }
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    x_hat
        .as_slice_mut()
        .expect("fresh array is contiguous")
        .par_chunks_mut(hw)
        .zip(
            y.as_slice_mut()
                .expect("fresh array is contiguous")
                .par_chunks_mut(hw),
        )
        .zip(xs.par_chunks(hw))
        .enumerate()
        .for_each(|(i, ((xh, yp), xp))| {
            let ch = i % c;
            let (mu, is, g, b) = (mean[ch], inv_std[ch], gamma[ch], beta[ch]);
            for ((hv, yv), &v) in xh.iter_mut().zip(yp.iter_mut()).zip(xp) {
                let t = (v - mu) * is;
                *hv = t;
                *yv = g * t + b;
            }
        });
    (y, x_hat, inv_std)
}

/// Train-mode backward through the batch statistics, per channel with `m = n·h·w`:
/// `dβ = Σ dy`, `dγ = Σ dy·x_hat`, `dx = γ·inv_std/m · (m·dy − dβ − x_hat·dγ)`.
/// Returns `(dx, dgamma, dbeta)`.
///
/// # Shapes
/// `dy`, `x_hat`: `[n, c, h, w]`; `gamma`, `inv_std`: `[c]` → (`[n, c, h, w]`, `[c]`, `[c]`).
/// # Panics
/// If shapes disagree (a caller bug: they come from one forward).
pub fn batch_norm_backward<F: Float>(
    dy: ArrayView4<F>,
    x_hat: ArrayView4<F>,
    gamma: ArrayView1<F>,
    inv_std: ArrayView1<F>,
) -> (Array4<F>, Array1<F>, Array1<F>) {
    assert_eq!(
        dy.shape(),
        x_hat.shape(),
        "batch_norm_backward: dy vs x_hat"
    );
    let (n, c, h, w) = dy.dim();
    assert!(
        gamma.len() == c && inv_std.len() == c,
        "batch_norm_backward: gamma {:?} / inv_std {:?} vs dy {:?}",
        gamma.shape(),
        inv_std.shape(),
        dy.shape()
    );
    let hw = h * w;
    let m = F::from_f64((n * hw) as f64);
    let mut dx = Array4::<F>::zeros(dy.dim());
    if n * hw == 0 {
        return (dx, Array1::zeros(c), Array1::zeros(c));
    }
    let dy = dy.as_standard_layout();
    let x_hat = x_hat.as_standard_layout();
    let ds = dy.as_slice().expect("standard layout is contiguous");
    let xs = x_hat.as_slice().expect("standard layout is contiguous");
    let sums: Vec<(F, F)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut db, mut dg) = (Lanes::new(), Lanes::new());
            for (d, xh) in channel_planes(ds, c, hw, ch).zip(channel_planes(xs, c, hw, ch)) {
                db.add(d);
                dg.add_dot(d, xh);
            }
            (dg.total(), db.total())
        })
        .collect();
    dx.as_slice_mut()
        .expect("fresh array is contiguous")
        .par_chunks_mut(hw)
        .zip(ds.par_chunks(hw))
        .zip(xs.par_chunks(hw))
        .enumerate()
        .for_each(|(i, ((dxp, dp), xp))| {
            let ch = i % c;
            let (dg, db) = sums[ch];
            let k = gamma[ch] * inv_std[ch] / m;
            for ((o, &d), &xv) in dxp.iter_mut().zip(dp).zip(xp) {
                *o = k * (m * d - db - xv * dg);
            }
        });
    let dgamma = sums.iter().map(|s| s.0).collect::<Array1<F>>();
    let dbeta = sums.iter().map(|s| s.1).collect::<Array1<F>>();
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{bits, check_fd, inner, max_rel_err, rand_array};
    use ndarray::Axis;

    #[test]
    fn mean_var_and_forward_match_direct_formulas() {
        let x = rand_array::<f64, _, _>((3, 4, 5, 3), 1).mapv(|v| 2.0 * v + 0.5);
        let (mean, var) = channel_mean_var(x.view());
        for c in 0..4 {
            let v: Vec<f64> = x.index_axis(Axis(1), c).iter().copied().collect();
            let mu = v.iter().sum::<f64>() / v.len() as f64;
            let s2 = v.iter().map(|u| (u - mu) * (u - mu)).sum::<f64>() / v.len() as f64;
            assert!((mean[c] - mu).abs() < 1e-14 && (var[c] - s2).abs() < 1e-14);
        }
        let gamma = rand_array::<f64, _, _>(4, 2);
        let beta = rand_array::<f64, _, _>(4, 3);
        let (y, x_hat, inv_std) = batch_norm_forward(
            x.view(),
            mean.view(),
            var.view(),
            gamma.view(),
            beta.view(),
            1e-5,
        );
        let mut r = x.clone();
        for ((_, c, _, _), v) in r.indexed_iter_mut() {
            *v = gamma[c] * (*v - mean[c]) / (var[c] + 1e-5).sqrt() + beta[c];
        }
        assert!(max_rel_err(&y, &r) < 1e-13);
        assert!((inv_std[1] - 1.0 / (var[1] + 1e-5).sqrt()).abs() < 1e-14);
        assert!((x_hat[[2, 1, 3, 2]] - (x[[2, 1, 3, 2]] - mean[1]) * inv_std[1]).abs() < 1e-14);
    }

    #[test]
    fn batch_norm_is_bit_identical_with_1_and_2_threads() {
        let x = rand_array::<f32, _, _>((5, 6, 7, 3), 11);
        let g = rand_array::<f32, _, _>((5, 6, 7, 3), 12);
        let gamma = rand_array::<f32, _, _>(6, 13);
        let beta = rand_array::<f32, _, _>(6, 14);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (m, v) = channel_mean_var(x.view());
                let (y, xh, is) = batch_norm_forward(
                    x.view(),
                    m.view(),
                    v.view(),
                    gamma.view(),
                    beta.view(),
                    1e-5,
                );
                let (dx, dgm, dbt) =
                    batch_norm_backward(g.view(), xh.view(), gamma.view(), is.view());
                let mut b = bits(&m);
                for a in [&v, &is, &dgm, &dbt] {
                    b.extend(bits(a));
                }
                b.extend(bits(&y));
                b.extend(bits(&dx));
                b
            })
        };
        assert_eq!(run(1), run(2));
    }

    /// f32 kernels (lane sums) against the same formulas evaluated in f64 with sequential sums,
    /// on planes whose size is not a multiple of the lane count; a non-standard-layout input
    /// gives the same bits.
    #[test]
    fn batch_norm_f32_matches_f64_reference() {
        let x = rand_array::<f32, _, _>((7, 3, 5, 7), 41).mapv(|v| 3.0 * v + 1.0);
        let g = rand_array::<f32, _, _>((7, 3, 5, 7), 42);
        let gamma = rand_array::<f32, _, _>(3, 43);
        let beta = rand_array::<f32, _, _>(3, 44);
        let (mean, var) = channel_mean_var(x.view());
        let (y, xh, is) = batch_norm_forward(
            x.view(),
            mean.view(),
            var.view(),
            gamma.view(),
            beta.view(),
            1e-5,
        );
        let (dx, dgm, dbt) = batch_norm_backward(g.view(), xh.view(), gamma.view(), is.view());
        let m = (7 * 5 * 7) as f64;
        for c in 0..3 {
            let xc: Vec<f64> = x.index_axis(Axis(1), c).iter().map(|&v| v as f64).collect();
            let gc: Vec<f64> = g.index_axis(Axis(1), c).iter().map(|&v| v as f64).collect();
            let mu = xc.iter().sum::<f64>() / m;
            let v2 = xc.iter().map(|u| (u - mu) * (u - mu)).sum::<f64>() / m;
            assert!((mean[c] as f64 - mu).abs() < 1e-6 && (var[c] as f64 - v2).abs() < 1e-5);
            let s = 1.0 / (v2 + 1e-5).sqrt();
            let xhc: Vec<f64> = xc.iter().map(|u| (u - mu) * s).collect();
            let db: f64 = gc.iter().sum();
            let dg: f64 = gc.iter().zip(&xhc).map(|(a, b)| a * b).sum();
            assert!((dbt[c] as f64 - db).abs() < 1e-4 && (dgm[c] as f64 - dg).abs() < 1e-4);
            let k = gamma[c] as f64 * s / m;
            let ours = dx.index_axis(Axis(1), c);
            let yc = y.index_axis(Axis(1), c);
            for (j, (&d, &yv)) in ours.iter().zip(yc.iter()).enumerate() {
                let r = k * (m * gc[j] - db - xhc[j] * dg);
                assert!((d as f64 - r).abs() < 1e-4, "dx ch {c} #{j}: {d} vs {r}");
                let ry = gamma[c] as f64 * xhc[j] + beta[c] as f64;
                assert!((yv as f64 - ry).abs() < 1e-5, "y ch {c} #{j}: {yv} vs {ry}");
            }
        }
        let t = x
            .view()
            .permuted_axes([0, 1, 3, 2])
            .as_standard_layout()
            .into_owned();
        let t = t.view().permuted_axes([0, 1, 3, 2]);
        assert!(!t.is_standard_layout());
        let (mt, vt) = channel_mean_var(t);
        assert_eq!((bits(&mt), bits(&vt)), (bits(&mean), bits(&var)));
        let (yt, _, _) =
            batch_norm_forward(t, mean.view(), var.view(), gamma.view(), beta.view(), 1e-5);
        assert_eq!(bits(&yt), bits(&y));
    }

    /// Train mode: L = Σ g ⊙ BN(x) with batch statistics; dx, dγ, dβ vs central differences.
    #[test]
    fn batch_norm_backward_matches_finite_differences() {
        let x = rand_array::<f64, _, _>((3, 2, 3, 5), 4);
        let gamma = rand_array::<f64, _, _>(2, 5);
        let beta = rand_array::<f64, _, _>(2, 6);
        let g = rand_array::<f64, _, _>((3, 2, 3, 5), 7);
        let eps = 1e-3;
        let loss = |x: &Array4<f64>, gamma: &Array1<f64>, beta: &Array1<f64>| {
            let (m, v) = channel_mean_var(x.view());
            inner(
                &batch_norm_forward(x.view(), m.view(), v.view(), gamma.view(), beta.view(), eps).0,
                &g,
            )
        };
        let (m, v) = channel_mean_var(x.view());
        let (_, x_hat, inv_std) =
            batch_norm_forward(x.view(), m.view(), v.view(), gamma.view(), beta.view(), eps);
        let (dx, dgamma, dbeta) =
            batch_norm_backward(g.view(), x_hat.view(), gamma.view(), inv_std.view());
        check_fd("bn dx", &x, &dx, |xp| loss(xp, &gamma, &beta));
        check_fd("bn dgamma", &gamma, &dgamma, |gp| loss(&x, gp, &beta));
        check_fd("bn dbeta", &beta, &dbeta, |bp| loss(&x, &gamma, bp));
    }
}
