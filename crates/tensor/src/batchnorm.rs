//! Batch-norm kernels over `[n, c, h, w]`, per channel: statistics, the normalisation, and the
//! train-mode backward through the batch statistics. Every per-channel sum runs over samples in
//! order, each `h × w` plane in scan order (a fixed order, whatever the thread count). Channels
//! are independent, so they are spread over the rayon pool without changing any result.

use crate::Float;
use ndarray::{Array1, Array4, ArrayView1, ArrayView4, Axis};
use rayon::prelude::*;

/// Sum of one plane in scan order.
fn plane_sum<F: Float>(it: impl Iterator<Item = F>) -> F {
    it.fold(F::zero(), |a, v| a + v)
}

/// Per-channel mean and biased variance (two passes: mean first, then `Σ (x − mean)² / m`,
/// `m = n·h·w`).
///
/// # Shapes
/// `x`: `[n, c, h, w]` → `(mean [c], var [c])`. With `n·h·w == 0` both are NaN.
pub fn channel_mean_var<F: Float>(x: ArrayView4<F>) -> (Array1<F>, Array1<F>) {
    let (n, c, h, w) = x.dim();
    let m = F::from_f64((n * h * w) as f64);
    let stats: Vec<(F, F)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let xc = x.index_axis(Axis(1), ch);
            let s = xc
                .axis_iter(Axis(0))
                .fold(F::zero(), |a, p| a + plane_sum(p.iter().copied()));
            let mu = s / m;
            let q = xc.axis_iter(Axis(0)).fold(F::zero(), |a, p| {
                a + plane_sum(p.iter().map(|&v| (v - mu) * (v - mu)))
            });
            (mu, q / m)
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
    let c = x.dim().1;
    let lens = [mean.len(), var.len(), gamma.len(), beta.len()];
    assert!(
        lens.iter().all(|&l| l == c),
        "batch_norm_forward: mean/var/gamma/beta lengths {lens:?} vs x {:?}",
        x.shape()
    );
    let inv_std = var.mapv(|v| F::one() / (v + eps).sqrt());
    let mut x_hat = x.to_owned();
    let mut y = Array4::<F>::zeros(x.dim());
    x_hat
        .axis_iter_mut(Axis(1))
        .into_par_iter()
        .zip(y.axis_iter_mut(Axis(1)).into_par_iter())
        .enumerate()
        .for_each(|(ch, (mut xh, mut yc))| {
            let (mu, is, g, b) = (mean[ch], inv_std[ch], gamma[ch], beta[ch]);
            xh.mapv_inplace(|v| (v - mu) * is);
            yc.zip_mut_with(&xh, |yv, &xv| *yv = g * xv + b);
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
    let m = F::from_f64((n * h * w) as f64);
    let mut dx = dy.to_owned();
    let sums: Vec<(F, F)> = dx
        .axis_iter_mut(Axis(1))
        .into_par_iter()
        .enumerate()
        .map(|(ch, mut dxc)| {
            let d = dy.index_axis(Axis(1), ch);
            let xh = x_hat.index_axis(Axis(1), ch);
            let db = d
                .axis_iter(Axis(0))
                .fold(F::zero(), |a, p| a + plane_sum(p.iter().copied()));
            let dg = d
                .axis_iter(Axis(0))
                .zip(xh.axis_iter(Axis(0)))
                .fold(F::zero(), |a, (p, q)| {
                    a + plane_sum(p.iter().zip(q.iter()).map(|(&u, &v)| u * v))
                });
            let k = gamma[ch] * inv_std[ch] / m;
            dxc.zip_mut_with(&xh, |dv, &xv| *dv = k * (m * *dv - db - xv * dg));
            (dg, db)
        })
        .collect();
    let dgamma = sums.iter().map(|s| s.0).collect::<Array1<F>>();
    let dbeta = sums.iter().map(|s| s.1).collect::<Array1<F>>();
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{bits, check_fd, inner, max_rel_err, rand_array};

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
