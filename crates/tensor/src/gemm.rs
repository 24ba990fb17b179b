//! GEMM `C ← α·A·B + β·C` through `matrixmultiply` (sgemm / dgemm with strides, so transposed
//! views cost nothing). `matrixmultiply` runs single-threaded here: parallelism lives in the
//! callers (convolution over the batch), which keeps every reduction in a fixed order.

use crate::{Float, Par, Result, TensorError};
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `C ← α·A·B + β·C`.
///
/// # Shapes
/// - `a`: `[m, k]`, `b`: `[k, n]`, `c`: `[m, n]`; any strides (pass `x.t()` for a transpose).
/// - When `beta == 0`, `c` is not read (NaNs in it do not propagate).
/// # Errors
/// `ShapeMismatch` (op `gemm`) if the inner dimensions or the output shape disagree.
pub fn gemm<F: Float>(
    alpha: F,
    a: ArrayView2<F>,
    b: ArrayView2<F>,
    beta: F,
    mut c: ArrayViewMut2<F>,
) -> Result<()> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    if k != k2 {
        return Err(TensorError::ShapeMismatch {
            op: "gemm",
            lhs: a.shape().to_vec(),
            rhs: b.shape().to_vec(),
        });
    }
    if c.dim() != (m, n) {
        return Err(TensorError::ShapeMismatch {
            op: "gemm",
            lhs: vec![m, n],
            rhs: c.shape().to_vec(),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // Empty sum: C ← β·C (and C ← 0 when β = 0, without reading C).
        if beta == F::zero() {
            c.fill(F::zero());
        } else {
            c.mapv_inplace(|v| beta * v);
        }
        return Ok(());
    }
    let (rsa, csa) = (a.strides()[0], a.strides()[1]);
    let (rsb, csb) = (b.strides()[0], b.strides()[1]);
    let (rsc, csc) = (c.strides()[0], c.strides()[1]);
    // C[m, n] = α · A[m, k] · B[k, n] + β · C[m, n]
    // SAFETY: pointers and strides come from live views of exactly these shapes; `c` is a unique
    // mutable borrow, so it aliases neither `a` nor `b`.
    unsafe {
        F::gemm_raw(
            m,
            k,
            n, // matrixmultiply order: (m, k, n)
            alpha,
            a.as_ptr(),
            rsa,
            csa, // A: [m, k]
            b.as_ptr(),
            rsb,
            csb, // B: [k, n]
            beta,
            c.as_mut_ptr(),
            rsc,
            csc, // C: [m, n]
        );
    }
    Ok(())
}

/// `A·B` into a new array.
///
/// # Shapes
/// `a`: `[m, k]`, `b`: `[k, n]` → `[m, n]`.
/// # Errors
/// `ShapeMismatch` (op `gemm`) if the inner dimensions disagree.
pub fn matmul<F: Float>(a: ArrayView2<F>, b: ArrayView2<F>) -> Result<Array2<F>> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    gemm(F::one(), a, b, F::zero(), c.view_mut())?;
    Ok(c)
}

/// Smallest column block of [`gemm_par`]: narrower outputs run as one [`gemm`].
pub const GEMM_PAR_COLS: usize = 128;

/// [`gemm`] split over column blocks of `C` (on the rayon pool with `Par::Rayon`): four blocks of
/// `⌈n / 4⌉` columns rounded up to a multiple of 16, at least [`GEMM_PAR_COLS`] wide. The split
/// depends only on the shape (fewer blocks mean less re-packing of `A`), and every element is
/// computed by the same single-threaded kernel in the same `k` order whatever the split, so the
/// result is bit-identical to [`gemm`] and across thread counts.
///
/// # Shapes
/// As [`gemm`]: `a`: `[m, k]`, `b`: `[k, n]`, `c`: `[m, n]`.
/// # Errors
/// `ShapeMismatch` (op `gemm`) if the inner dimensions or the output shape disagree.
pub fn gemm_par<F: Float>(
    alpha: F,
    a: ArrayView2<F>,
    b: ArrayView2<F>,
    beta: F,
    mut c: ArrayViewMut2<F>,
    par: Par,
) -> Result<()> {
    if par == Par::Seq
        || b.ncols() <= GEMM_PAR_COLS
        || a.ncols() != b.nrows()
        || c.dim() != (a.nrows(), b.ncols())
    {
        return gemm(alpha, a, b, beta, c);
    }
    let width = (b.ncols().div_ceil(4).div_ceil(16) * 16).max(GEMM_PAR_COLS);
    let cb: Vec<_> = c.axis_chunks_iter_mut(Axis(1), width).collect();
    let bb: Vec<_> = b.axis_chunks_iter(Axis(1), width).collect();
    cb.into_par_iter()
        .zip(bb)
        .try_for_each(|(cj, bj)| gemm(alpha, a, bj, beta, cj))
}

/// A matrix stored in a slice: `[rows, cols]` with element strides (non-negative).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Mat {
    /// Row-major `[rows, cols]`.
    pub fn rm(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose (free: swaps strides).
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
    /// One past the largest element offset addressed (0 when empty).
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// Internal slice GEMM: `C ← α·A·B + β·C` with `A = (a, am)`, `B = (b, bm)`, `C = (c, cm)`.
/// Bounds are checked once per call (an internal invariant: a failure is a bug here).
#[allow(clippy::too_many_arguments)] // the BLAS argument list, grouped as (data, layout) pairs
pub(crate) fn gemm_slices<F: Float>(
    alpha: F,
    a: &[F],
    am: Mat,
    b: &[F],
    bm: Mat,
    beta: F,
    c: &mut [F],
    cm: Mat,
) {
    assert!(
        am.cols == bm.rows && am.rows == cm.rows && bm.cols == cm.cols,
        "hla-tensor internal error: gemm_slices shapes {am:?} {bm:?} {cm:?}"
    );
    assert!(
        am.extent() <= a.len() && bm.extent() <= b.len() && cm.extent() <= c.len(),
        "hla-tensor internal error: gemm_slices out of bounds"
    );
    if cm.rows == 0 || cm.cols == 0 {
        return;
    }
    if am.cols == 0 {
        for i in 0..cm.rows {
            for j in 0..cm.cols {
                let v = &mut c[i * cm.rs + j * cm.cs];
                *v = if beta == F::zero() {
                    F::zero()
                } else {
                    beta * *v
                };
            }
        }
        return;
    }
    // SAFETY: extents checked above against the slices; `c` is a unique borrow distinct from
    // `a` and `b`.
    unsafe { gemm_mats(alpha, (a, am), (b, bm), beta, (c.as_mut_ptr(), cm)) }
}

/// `C ← α·A·B + β·C` on matrices given as (data, layout) pairs, C as a raw pointer.
///
/// # Safety
/// `a` and `b` must hold their layouts' extents, `c` must be valid for writes (and, unless
/// `beta` is 0, reads) of `cm`'s extent and alias neither, and `am.cols == bm.rows > 0`.
unsafe fn gemm_mats<F: Float>(
    alpha: F,
    (a, am): (&[F], Mat),
    (b, bm): (&[F], Mat),
    beta: F,
    (c, cm): (*mut F, Mat),
) {
    // SAFETY: the caller's contract.
    unsafe {
        F::gemm_raw(
            am.rows,
            am.cols,
            bm.cols, // (m, k, n)
            alpha,
            a.as_ptr(),
            am.rs as isize,
            am.cs as isize, // A: [m, k]
            b.as_ptr(),
            bm.rs as isize,
            bm.cs as isize, // B: [k, n]
            beta,
            c,
            cm.rs as isize,
            cm.cs as isize, // C: [m, n]
        );
    }
}

/// `C = A·B` into the uninitialised `c` (`[m, n]` row-major, exactly `m·n` elements), all of
/// which it writes: matrixmultiply does not read C when beta = 0, so no zero fill has to
/// precede the product (one pass less over an output that often exceeds the cache).
pub(crate) fn gemm_uninit<F: Float>(a: &[F], am: Mat, b: &[F], bm: Mat, c: &mut [MaybeUninit<F>]) {
    let cm = Mat::rm(am.rows, bm.cols);
    assert!(
        am.cols == bm.rows && c.len() == cm.rows * cm.cols,
        "hla-tensor internal error: gemm_uninit shapes {am:?} {bm:?} {}",
        c.len()
    );
    assert!(
        am.extent() <= a.len() && bm.extent() <= b.len(),
        "hla-tensor internal error: gemm_uninit out of bounds"
    );
    if c.is_empty() {
        return;
    }
    if am.cols == 0 {
        c.iter_mut().for_each(|v| {
            v.write(F::zero());
        });
        return;
    }
    // SAFETY: extents checked above; `c` is a unique borrow of `m·n` elements distinct from `a`
    // and `b`, and with beta = 0 the GEMM writes every one of them without reading any
    // (matrixmultiply's contract: "if β is zero, then C does not need to be initialized").
    unsafe {
        let c = (c.as_mut_ptr().cast::<F>(), cm);
        gemm_mats(F::one(), (a, am), (b, bm), F::zero(), c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_rel_err, rand_array, to_f64};
    use ndarray::Array2;

    /// Direct triple loop `α·A·B + β·C`.
    fn naive(
        alpha: f64,
        a: &Array2<f64>,
        b: &Array2<f64>,
        beta: f64,
        c: &Array2<f64>,
    ) -> Array2<f64> {
        let mut r = c.mapv(|v| beta * v);
        for i in 0..a.nrows() {
            for j in 0..b.ncols() {
                let s: f64 = (0..a.ncols()).map(|l| a[[i, l]] * b[[l, j]]).sum();
                r[[i, j]] += alpha * s;
            }
        }
        r
    }

    #[test]
    fn gemm_matches_naive_with_transposes_alpha_beta() {
        for (m, k, n) in [(1, 1, 1), (7, 5, 3), (17, 33, 9), (64, 3, 70)] {
            let a = rand_array::<f64, _, _>((m, k), 1);
            let at = rand_array::<f64, _, _>((k, m), 2); // used transposed
            let b = rand_array::<f64, _, _>((k, n), 3);
            let c0 = rand_array::<f64, _, _>((m, n), 4);
            let mut c = c0.clone();
            gemm(0.5, a.view(), b.view(), -2.0, c.view_mut()).unwrap();
            assert!(
                max_rel_err(&c, &naive(0.5, &a, &b, -2.0, &c0)) < 1e-13,
                "{m} {k} {n}"
            );
            // op(A) = Aᵀ through a view, C written into a transposed view.
            let mut ct = c0.t().to_owned();
            gemm(1.0, at.t(), b.view(), 1.0, ct.view_mut().reversed_axes()).unwrap();
            assert!(
                max_rel_err(
                    &ct.t().to_owned(),
                    &naive(1.0, &at.t().to_owned(), &b, 1.0, &c0)
                ) < 1e-13
            );
            // f32 through matmul.
            let (af, bf) = (a.mapv(|v| v as f32), b.mapv(|v| v as f32));
            let cf = matmul(af.view(), bf.view()).unwrap();
            let r = naive(1.0, &to_f64(&af), &to_f64(&bf), 0.0, &Array2::zeros((m, n)));
            assert!(max_rel_err(&to_f64(&cf), &r) < 1e-5);
        }
    }

    #[test]
    fn gemm_beta_zero_ignores_nan_in_c_and_k_zero_scales_c() {
        let a = rand_array::<f64, _, _>((3, 4), 1);
        let b = rand_array::<f64, _, _>((4, 2), 2);
        let mut c = Array2::from_elem((3, 2), f64::NAN);
        gemm(1.0, a.view(), b.view(), 0.0, c.view_mut()).unwrap();
        assert!(c.iter().all(|v| v.is_finite()));
        let mut c = Array2::from_elem((3, 2), 2.0);
        gemm(
            1.0,
            Array2::zeros((3, 0)).view(),
            Array2::zeros((0, 2)).view(),
            3.0,
            c.view_mut(),
        )
        .unwrap();
        assert!(c.iter().all(|&v| v == 6.0));
    }

    #[test]
    fn gemm_par_is_bit_identical_to_gemm_for_any_thread_count() {
        let a = rand_array::<f32, _, _>((70, 90), 1);
        let b = rand_array::<f32, _, _>((90, 333), 2);
        let c0 = rand_array::<f32, _, _>((70, 333), 3);
        let run = |par, threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut c = c0.clone();
            pool.install(|| gemm_par(1.5, a.view(), b.view(), 0.5, c.view_mut(), par))
                .unwrap();
            c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let seq = run(Par::Seq, 1);
        assert_eq!(seq, run(Par::Rayon, 1));
        assert_eq!(seq, run(Par::Rayon, 2));
    }

    #[test]
    fn gemm_rejects_mismatched_shapes() {
        let a = Array2::<f32>::zeros((3, 4));
        let b = Array2::<f32>::zeros((5, 2));
        let e = matmul(a.view(), b.view()).unwrap_err();
        assert_eq!(
            e,
            TensorError::ShapeMismatch {
                op: "gemm",
                lhs: vec![3, 4],
                rhs: vec![5, 2]
            }
        );
        let b = Array2::<f32>::zeros((4, 2));
        let mut c = Array2::<f32>::zeros((3, 3));
        let e = gemm(1.0, a.view(), b.view(), 0.0, c.view_mut()).unwrap_err();
        assert_eq!(
            e,
            TensorError::ShapeMismatch {
                op: "gemm",
                lhs: vec![3, 2],
                rhs: vec![3, 3]
            }
        );
    }
}
