//! The regulariser L_d of Eq. 7 and its analytic gradient (Ŵ treated as a constant, A9).
//!
//! Per layer with n rows: `c_j = w_j·ŵ_j`, `L_d^l = (1/n) Σ_j (c_j − 1)²`;
//! `∂L_d/∂w_j = (2/n)(c_j − 1) ŵ_j`; through `w = v/r` (spec 3.1):
//! `∂L_d/∂v_j = (2/n)(c_j − 1)(ŵ_j − c_j w_j)/r_j`.
//! The training path computes L_d with autograd ops (see `crate::ops`); these plain versions are
//! the reference the tape is tested against, and serve the metrics.
//!
//! Guide: [Eq. 7](crate::guide#eq-7).

use crate::config::LdReduce;
use crate::real::{cst, Real};
use ndarray::{Array1, Array2, ArrayView2};

/// L_d of one layer: (value, c `[n]`, ∂L_d/∂W `[n, m]`). `w`, `what`: `[n, m]`.
///
/// Guide: [Eq. 7](crate::guide#eq-7).
pub fn ld_layer<F: Real>(
    w: ArrayView2<'_, F>,
    what: ArrayView2<'_, F>,
) -> (F, Array1<F>, Array2<F>) {
    let n = w.nrows();
    let two_over_n = cst::<F>(2.0) / cst::<F>(n.max(1) as f64);
    let mut c = Array1::zeros(n);
    let mut grad = Array2::zeros(w.dim());
    let mut total = F::zero();
    for j in 0..n {
        // fixed-order dot product
        let mut cj = F::zero();
        for (&a, &b) in w.row(j).iter().zip(what.row(j).iter()) {
            cj = cj + a * b;
        }
        c[j] = cj;
        let e = cj - F::one();
        total = total + e * e;
        let k = two_over_n * e;
        for (g, &b) in grad.row_mut(j).iter_mut().zip(what.row(j).iter()) {
            *g = k * b;
        }
    }
    (total / cst::<F>(n.max(1) as f64), c, grad)
}

/// ∂L_d/∂V through the row normalisation: `(2/n)(c_j − 1)(ŵ_j − c_j w_j)/r_j` with
/// `r_j = sqrt(‖v_j‖² + eps_w)`, `w = v/r`. `v`, `what`: `[n, m]`.
///
/// Guide: [Eq. 7](crate::guide#eq-7).
pub fn ld_grad_latent<F: Real>(
    v: ArrayView2<'_, F>,
    what: ArrayView2<'_, F>,
    eps_w: F,
) -> Array2<F> {
    let (w, r) = normalize_rows(v, eps_w);
    let (_, _, gw) = ld_layer(w.view(), what);
    let mut out = Array2::zeros(v.dim());
    for j in 0..v.nrows() {
        // (I − w wᵀ) g / r applied to g = ∂L_d/∂w_j
        let mut wg = F::zero();
        for (&a, &b) in w.row(j).iter().zip(gw.row(j).iter()) {
            wg = wg + a * b;
        }
        for ((o, &g), &a) in out
            .row_mut(j)
            .iter_mut()
            .zip(gw.row(j).iter())
            .zip(w.row(j).iter())
        {
            *o = (g - wg * a) / r[j];
        }
    }
    out
}

/// w = v / r, r_j = sqrt(Σ_i v_ji² + eps_w) (spec 3.1), computed as v·(1/r) in row order exactly
/// like `hla_autograd::ops::normalize_rows`. Returns (W `[n, m]`, r `[n]`).
///
/// Guide: [Eq. 3](crate::guide#eq-3).
pub fn normalize_rows<F: Real>(v: ArrayView2<'_, F>, eps_w: F) -> (Array2<F>, Array1<F>) {
    let mut w = v.to_owned();
    let mut r = Array1::zeros(v.nrows());
    for (j, mut row) in w.outer_iter_mut().enumerate() {
        let mut s = F::zero();
        for &x in row.iter() {
            s = s + x * x;
        }
        let rj = (s + eps_w).sqrt();
        r[j] = rj;
        // multiply by 1/r (not divide by r): the same arithmetic as the tape's normalize_rows,
        // so thresholds and exports computed here see bit-identical weights to the forward pass
        let inv = F::one() / rj;
        row.mapv_inplace(|x| x * inv);
    }
    (w, r)
}

/// Combines per-layer L_d values under `ld_reduce` (A8): sum, or mean over layers.
///
/// Guide: [Eq. 6](crate::guide#eq-6).
pub fn reduce_layers<F: Real>(values: &[F], reduce: LdReduce) -> F {
    let mut s = F::zero();
    for &v in values {
        s = s + v;
    }
    match reduce {
        LdReduce::Sum => s,
        LdReduce::Mean if values.is_empty() => F::zero(),
        LdReduce::Mean => s / cst::<F>(values.len() as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EmptyRow;
    use crate::ternary::ternarize_rows;
    use crate::testutil::{assert_close, t1_v, t1_w, t4_b};
    use ndarray::{array, Array2};

    fn m(a: ndarray::ArrayD<f64>) -> Array2<f64> {
        a.into_dimensionality().unwrap()
    }

    /// T1: normalising V gives W with r = [11, 6.5].
    #[test]
    fn t1_normalisation() {
        let (w, r) = normalize_rows(m(t1_v()).view(), 0.0);
        assert_close(w.iter(), m(t1_w()).iter(), 1e-15);
        assert_eq!(r.to_vec(), vec![11.0, 6.5]);
    }

    /// T3: L_d, ∂L_d/∂W and ∂L_d/∂V at Δ = 4/11; ∂V also against central differences.
    #[test]
    fn t3_ld_value_and_gradients() {
        let w = m(t1_w());
        let wh = ternarize_rows(w.view(), 4.0 / 11.0, EmptyRow::Zero).dequantize();
        let (l, c, gw) = ld_layer(w.view(), wh.view());
        assert!((l - 0.0043512444).abs() < 1e-10, "{l}");
        assert_close(
            c.iter(),
            [10.0 / 11.0, 9.0 * 2f64.sqrt() / 13.0].iter(),
            1e-15,
        );
        let want_w = array![
            [-0.09090909, 0.0, 0.0, 0.0],
            [0.0, -0.01479909, 0.01479909, 0.0]
        ];
        assert_close(gw.iter(), want_w.iter(), 1e-8);
        let v = m(t1_v());
        let gv = ld_grad_latent(v.view(), wh.view(), 0.0);
        let want_v = array![
            [-0.00143433, -0.00136603, 0.00273205, -0.00068301],
            [0.00048500, -0.00033680, -0.00014819, 0.00024250]
        ];
        assert_close(gv.iter(), want_v.iter(), 1e-8);
        // central differences of L_d(V) with Ŵ fixed
        let h = 1e-6;
        for j in 0..2 {
            for i in 0..4 {
                let f = |d: f64| {
                    let mut vp = v.clone();
                    vp[[j, i]] += d;
                    let (wp, _) = normalize_rows(vp.view(), 0.0);
                    ld_layer(wp.view(), wh.view()).0
                };
                let num = (f(h) - f(-h)) / (2.0 * h);
                assert!(
                    (num - gv[[j, i]]).abs() < 1e-9,
                    "({j},{i}) {num} vs {}",
                    gv[[j, i]]
                );
            }
        }
    }

    /// T4: L_d of layer B under global (0.6) and per-layer (0.8, empty row) thresholds; sums.
    #[test]
    fn t4_ld_two_layers() {
        let a = m(t1_w());
        let b = m(t4_b());
        let la = ld_layer(
            a.view(),
            ternarize_rows(a.view(), 4.0 / 11.0, EmptyRow::Zero)
                .dequantize()
                .view(),
        )
        .0;
        let (lb, _, gb) = ld_layer(
            b.view(),
            ternarize_rows(b.view(), 0.6, EmptyRow::Zero)
                .dequantize()
                .view(),
        );
        assert!((lb - 0.0208).abs() < 1e-12);
        assert_close(gb.iter(), [0.0, 0.2, 0.0, -0.04].iter(), 1e-12);
        // global Δ = 0.6 for layer A gives the same Ŵ_A as 4/11 (no |w| in (4/11, 0.6])
        let la6 = ld_layer(
            a.view(),
            ternarize_rows(a.view(), 0.6, EmptyRow::Zero)
                .dequantize()
                .view(),
        )
        .0;
        assert!((la6 - la).abs() < 1e-15);
        assert!((reduce_layers(&[la6, lb], LdReduce::Sum) - 0.0251512444).abs() < 1e-10);
        let (lb, _, gb) = ld_layer(
            b.view(),
            ternarize_rows(b.view(), 0.8, EmptyRow::Zero)
                .dequantize()
                .view(),
        );
        assert!((lb - 0.5008).abs() < 1e-12);
        assert_close(gb.iter(), [0.0, 0.0, 0.0, -0.04].iter(), 1e-12);
        assert!((reduce_layers(&[la, lb], LdReduce::Sum) - 0.5051512444).abs() < 1e-10);
        assert!((reduce_layers(&[la, lb], LdReduce::Mean) - 0.5051512444 / 2.0).abs() < 1e-10);
    }

    /// T2 (kth_smallest) and T8: L_d at Δ = 2/11 or 0.3 is 0.0052236056; T12: L_d(Ŵ) = 0.
    #[test]
    fn t2_t8_t12_ld_values() {
        let a = m(t1_w());
        for d in [2.0 / 11.0, 0.3] {
            let wh = ternarize_rows(a.view(), d, EmptyRow::Zero).dequantize();
            let (l, _, g) = ld_layer(a.view(), wh.view());
            assert!((l - 0.0052236056).abs() < 1e-10, "{l}");
            if d == 0.3 {
                let want = array![
                    [-0.07074314, 0.0, -0.07074314, 0.0],
                    [0.0, -0.01479909, 0.01479909, 0.0]
                ];
                assert_close(g.iter(), want.iter(), 1e-8);
            }
        }
        let wh = ternarize_rows(a.view(), 4.0 / 11.0, EmptyRow::Zero).dequantize();
        let wh2 = ternarize_rows(wh.view(), 4.0 / 11.0, EmptyRow::Zero).dequantize();
        assert!(ld_layer(wh.view(), wh2.view()).0.abs() < 1e-15);
    }
}

#[cfg(test)]
mod consistency {
    use hla_autograd::{ops, Tape};
    use ndarray::{Array2, ArrayD};
    use rand::{Rng, SeedableRng};

    /// The plain normalisation used for thresholds, metrics and export is bit-identical to the
    /// tape op used in the forward pass (otherwise a weight within one ulp of Δ could be zeroed
    /// in one and kept in the other).
    #[test]
    fn plain_normalisation_matches_tape_bitwise() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        let v = Array2::from_shape_fn((16, 37), |_| rng.random_range(-1.0f32..1.0));
        let (w, _) = super::normalize_rows(v.view(), 1e-12);
        let mut tape = Tape::<f32>::no_grad();
        let vv = tape.constant(v.clone().into_dyn());
        let wv = ops::normalize_rows(&mut tape, vv, 1e-12).unwrap();
        let bits = |a: &ArrayD<f32>| a.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&w.into_dyn()), bits(tape.value(wv)));
    }
}
