//! The ternary quantiser of Eqs. 4–5 and the STE re-scaling S of Eq. 12 (plain numerics).
//!
//! Per row j of a weight matrix `[n, m]` (already normalised, spec 3.1):
//! `mask_ij = |w_ij| > Δ` (strict: |w| = Δ → 0), `nnz_j = Σ_i mask_ij`,
//! `α_j = 1/√nnz_j` (A10: the count of *surviving* entries, so ‖ŵ_j‖ = 1),
//! `ŵ_ij = sign(w_ij)·mask_ij·α_j`. Empty rows follow the `empty_row` knob.
//!
//! Guide: [Eq. 4](crate::guide#eq-4).

use crate::config::EmptyRow;
use crate::real::{cst, Real};
use ndarray::{Array1, Array2, ArrayView2, Zip};

/// A ternarised weight matrix in its exported form: codes w̄ ∈ {−1, 0, +1} and per-row α.
///
/// Guide: [Eq. 4](crate::guide#eq-4).
#[derive(Clone, Debug, PartialEq)]
pub struct TernaryRows<F> {
    /// w̄ `[n, m]`, values in {−1, 0, 1}.
    pub codes: Array2<i8>,
    /// α `[n]`: 1/√nnz_j (0 for an empty row under `empty_row = zero`).
    pub alpha: Array1<F>,
    /// nnz_j `[n]`: surviving entries per row.
    pub nnz: Vec<usize>,
    /// Rows that had no |w| > Δ (before the `empty_row` rule).
    pub empty_rows: usize,
}

impl<F: Real> TernaryRows<F> {
    /// Ŵ = α_j·w̄_ij, `[n, m]` (the fake-quantised weights).
    ///
    /// Guide: [Eq. 4](crate::guide#eq-4).
    pub fn dequantize(&self) -> Array2<F> {
        let mut out = Array2::zeros(self.codes.dim());
        for (mut row, (codes, &a)) in out
            .outer_iter_mut()
            .zip(self.codes.outer_iter().zip(self.alpha.iter()))
        {
            for (o, &c) in row.iter_mut().zip(codes.iter()) {
                *o = match c {
                    1 => a,
                    -1 => -a,
                    _ => F::zero(),
                };
            }
        }
        out
    }

    /// Number of zero codes.
    ///
    /// Guide: [Eq. 4](crate::guide#eq-4).
    pub fn zeros(&self) -> usize {
        self.codes.iter().filter(|&&c| c == 0).count()
    }

    /// (count of −1, count of 0, count of +1): the ternary value histogram.
    ///
    /// Guide: [Eq. 4](crate::guide#eq-4).
    pub fn histogram(&self) -> [usize; 3] {
        let mut h = [0usize; 3];
        for &c in self.codes.iter() {
            h[(c + 1) as usize] += 1;
        }
        h
    }
}

/// Ternary(W, Δ) per row (Eqs. 4–5). `w`: `[n, m]` normalised rows, `delta` ≥ 0 (a negative Δ
/// keeps every entry).
///
/// Guide: [Eq. 4](crate::guide#eq-4).
pub fn ternarize_rows<F: Real>(w: ArrayView2<'_, F>, delta: F, empty: EmptyRow) -> TernaryRows<F> {
    let (n, m) = w.dim();
    let mut codes = Array2::<i8>::zeros((n, m));
    let mut alpha = Array1::<F>::zeros(n);
    let mut nnz = vec![0usize; n];
    let mut empty_rows = 0;
    for j in 0..n {
        let row = w.row(j);
        let mut count = 0usize;
        for (i, &v) in row.iter().enumerate() {
            if v.abs() > delta {
                codes[[j, i]] = if v > F::zero() { 1 } else { -1 };
                count += 1;
            }
        }
        if count == 0 {
            empty_rows += 1;
            if empty == EmptyRow::KeepMax && m > 0 {
                // first index of the largest |w| (ties → lowest index)
                let mut best = 0;
                for (i, &v) in row.iter().enumerate() {
                    if v.abs() > row[best].abs() {
                        best = i;
                    }
                }
                // a row of exact zeros has no sign to keep: it stays empty
                if row[best] != F::zero() {
                    codes[[j, best]] = if row[best] > F::zero() { 1 } else { -1 };
                    count = 1;
                }
            }
        }
        nnz[j] = count;
        alpha[j] = if count > 0 {
            F::one() / cst::<F>(count as f64).sqrt()
        } else {
            F::zero()
        };
    }
    TernaryRows {
        codes,
        alpha,
        nnz,
        empty_rows,
    }
}

/// S = 1 − W ⊙ W (Eq. 12) on the normalised weights, `[n, m]` → `[n, m]`.
///
/// Guide: [Eq. 12](crate::guide#eq-12).
pub fn s_scale<F: Real>(w: ArrayView2<'_, F>) -> Array2<F> {
    w.mapv(|v| F::one() - v * v)
}

/// The straight-through weight gradient of stage 2: `G ⊙ S` (`one_minus_w2`) or `G` (`identity`).
/// `g`, `w`: `[n, m]`.
///
/// Guide: [Eq. 11](crate::guide#eq-11).
pub fn ste_grad<F: Real>(
    g: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    scale: crate::config::SteScale,
) -> Array2<F> {
    match scale {
        crate::config::SteScale::Identity => g.to_owned(),
        crate::config::SteScale::OneMinusW2 => {
            let mut out = g.to_owned();
            Zip::from(&mut out)
                .and(&w)
                .for_each(|o, &v| *o = *o * (F::one() - v * v));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SteScale;
    use crate::testutil::{assert_close, t1_w, t4_b};
    use ndarray::{array, Array2};

    fn w2(a: &ndarray::ArrayD<f64>) -> Array2<f64> {
        a.clone().into_dimensionality().unwrap()
    }

    /// T1: S of the normalised T1 matrix, row means exactly 1 − 1/m.
    #[test]
    fn t1_s_values_and_row_means() {
        let w = w2(&t1_w::<f64>());
        let s = s_scale(w.view());
        let want: Array2<f64> = array![
            [21.0, 117.0, 105.0, 120.0],
            [
                165.0 * 121.0 / 169.0,
                105.0 * 121.0 / 169.0,
                69.0 * 121.0 / 169.0,
                168.0 * 121.0 / 169.0
            ]
        ] / 121.0;
        assert_close(s.iter(), want.iter(), 1e-12);
        for r in s.outer_iter() {
            assert!((r.sum() / 4.0 - 0.75).abs() < 1e-15);
        }
    }

    /// T2 + T5: Ternary at Δ = 4/11: nnz [1, 2], α [1, 1/√2], ‖ŵ_j‖ = 1, w̄_2 = [0, 1, −1, 0].
    #[test]
    fn t2_t5_ternary_rows() {
        let w = w2(&t1_w::<f64>());
        let t = ternarize_rows(w.view(), 4.0 / 11.0, EmptyRow::Zero);
        assert_eq!(t.nnz, vec![1, 2]);
        assert_eq!(t.codes, array![[1i8, 0, 0, 0], [0, 1, -1, 0]]);
        assert_close(
            t.alpha.iter(),
            [1.0, std::f64::consts::FRAC_1_SQRT_2].iter(),
            1e-15,
        );
        let wh = t.dequantize();
        for r in wh.outer_iter() {
            assert!((r.dot(&r).sqrt() - 1.0).abs() < 1e-15);
        }
        assert_eq!(t.zeros(), 5);
        assert_eq!(t.histogram(), [1, 5, 2]);
        // kth_smallest Δ = 2/11: ŵ_1 = [1/√2, 0, 1/√2, 0]
        let t = ternarize_rows(w.view(), 2.0 / 11.0, EmptyRow::Zero);
        assert_eq!(t.nnz, vec![2, 2]);
        assert_eq!(t.codes.row(0).to_vec(), vec![1, 0, 1, 0]);
        // f32: the same 3 survivors at Δ = 4/11 (exact ≤ comparison)
        let w32: Array2<f32> = t1_w::<f32>().into_dimensionality().unwrap();
        let t32 = ternarize_rows(w32.view(), 4.0f32 / 11.0, EmptyRow::Zero);
        assert_eq!(t32.nnz, vec![1, 2]);
    }

    /// T4 per-layer: layer B at Δ = 0.8 has an empty first row (zero) or keeps −0.8 (keep_max).
    #[test]
    fn t4_empty_row_guard_and_keep_max() {
        let b = w2(&t4_b::<f64>());
        let t = ternarize_rows(b.view(), 0.8, EmptyRow::Zero);
        assert_eq!(t.empty_rows, 1);
        assert_eq!(t.alpha.to_vec(), vec![0.0, 1.0]);
        assert_eq!(t.dequantize(), array![[0.0, 0.0], [0.0, 1.0]]);
        let k = ternarize_rows(b.view(), 0.8, EmptyRow::KeepMax);
        assert_eq!(k.empty_rows, 1);
        assert_eq!(k.dequantize(), array![[0.0, -1.0], [0.0, 1.0]]);
    }

    /// T12: every row norm is 0 or 1 after Ternary; Ŵ of T2 is a fixed point (1/√2 > 4/11).
    #[test]
    fn t12_row_norms_and_fixed_point() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let w = Array2::from_shape_fn((7, 13), |_| rng.random_range(-1.0f64..1.0));
        for d in [0.0, 0.3, 0.7, 0.99] {
            let t = ternarize_rows(w.view(), d, EmptyRow::Zero);
            for (r, &a) in t.dequantize().outer_iter().zip(t.alpha.iter()) {
                let nrm = r.dot(&r).sqrt();
                assert!(nrm == 0.0 || (nrm - 1.0).abs() < 1e-14, "{nrm}");
                // α·√nnz = 1 invariant
                let nz = r.iter().filter(|v| **v != 0.0).count();
                if nz > 0 {
                    assert!((a * (nz as f64).sqrt() - 1.0).abs() < 1e-14);
                }
            }
        }
        let wt = w2(&t1_w::<f64>());
        let wh = ternarize_rows(wt.view(), 4.0 / 11.0, EmptyRow::Zero).dequantize();
        let again = ternarize_rows(wh.view(), 4.0 / 11.0, EmptyRow::Zero).dequantize();
        assert_eq!(wh, again);
    }

    /// T8 STE part and T12: G ⊙ S; rows with |w| = 1/√m give G·(1 − 1/m).
    #[test]
    fn t8_ste_backward_values() {
        let w = w2(&t1_w::<f64>());
        let g = array![[0.1, -0.2, 0.3, -0.4], [0.5, -0.6, 0.7, -0.8]];
        let d = ste_grad(g.view(), w.view(), SteScale::OneMinusW2);
        assert_close(d.iter(), crate::testutil::T8_STE_WITH_S.iter(), 1e-8);
        assert_eq!(ste_grad(g.view(), w.view(), SteScale::Identity), g);
        let flat = Array2::from_elem((1, 4), 0.5f64);
        let d = ste_grad(
            g.slice(ndarray::s![0..1, ..]),
            flat.view(),
            SteScale::OneMinusW2,
        );
        assert_close(d.iter(), [0.075, -0.15, 0.225, -0.3].iter(), 1e-15);
    }
}
