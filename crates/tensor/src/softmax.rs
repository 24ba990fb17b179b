//! Row-wise log-softmax and mean cross-entropy with label smoothing (PyTorch semantics), with
//! their backward. Numerically stable: the row maximum is subtracted before `exp`.

use crate::{Float, Result, TensorError};
use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

/// `(max, log Σ exp(x − max))` of one row, summed in index order.
fn row_lse<F: Float>(r: ArrayView1<F>) -> (F, F) {
    let m = r
        .iter()
        .fold(F::neg_infinity(), |a, &v| if v > a { v } else { a });
    let m = if m.is_finite() { m } else { F::zero() };
    let s = r.iter().fold(F::zero(), |a, &v| a + (v - m).exp());
    (m, s.ln())
}

/// `y[i, j] = x[i, j] − log Σ_j exp x[i, j]`, per row.
///
/// # Shapes
/// `x`: `[n, k]` → `[n, k]`.
pub fn log_softmax<F: Float>(x: ArrayView2<F>) -> Array2<F> {
    let mut y = x.to_owned();
    for mut row in y.axis_iter_mut(Axis(0)) {
        let (m, l) = row_lse(row.view());
        row.mapv_inplace(|v| v - m - l);
    }
    y
}

/// Backward of [`log_softmax`]: `dx = dy − exp(y) · Σ_j dy`, per row, where `y` is the forward
/// output.
///
/// # Shapes
/// `y`, `dy`: `[n, k]` → `[n, k]`.
/// # Panics
/// If `y` and `dy` differ in shape (a caller bug: they come from one forward).
pub fn log_softmax_backward<F: Float>(y: ArrayView2<F>, dy: ArrayView2<F>) -> Array2<F> {
    assert_eq!(
        y.dim(),
        dy.dim(),
        "log_softmax_backward: y {:?} vs dy {:?}",
        y.dim(),
        dy.dim()
    );
    let mut dx = dy.to_owned();
    for (mut d, yr) in dx.axis_iter_mut(Axis(0)).zip(y.axis_iter(Axis(0))) {
        let s = d.iter().fold(F::zero(), |a, &v| a + v);
        d.zip_mut_with(&yr, |dv, &yv| *dv = *dv - yv.exp() * s);
    }
    dx
}

/// Mean cross-entropy over the batch with integer labels and label smoothing `ε` (PyTorch's
/// `F.cross_entropy(logits, labels, label_smoothing=ε)`):
/// `loss = mean_i [ (1 − ε)·(−log p[i, y_i]) + ε/k · Σ_j (−log p[i, j]) ]`, and its gradient
/// `dloss/dlogits = (softmax(logits) − t) / n` with `t = (1 − ε)·onehot(y) + ε/k`.
///
/// # Shapes
/// `logits`: `[n, k]`, `labels`: `n` entries in `0..k` → `(loss, [n, k])`.
/// # Errors
/// `EmptyDim` if `n == 0` or `k == 0`; `ShapeMismatch` if `labels.len() != n`;
/// `LabelOutOfRange` if a label is `≥ k`; `InvalidParam` if `ε ∉ [0, 1]`. Op `cross_entropy`.
pub fn cross_entropy<F: Float>(
    logits: ArrayView2<F>,
    labels: &[usize],
    label_smoothing: F,
) -> Result<(F, Array2<F>)> {
    let op = "cross_entropy";
    let (n, k) = logits.dim();
    if n == 0 || k == 0 {
        return Err(TensorError::EmptyDim {
            op,
            shape: vec![n, k],
        });
    }
    if labels.len() != n {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: vec![n, k],
            rhs: vec![labels.len()],
        });
    }
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= k) {
        return Err(TensorError::LabelOutOfRange {
            op,
            label,
            index,
            classes: k,
        });
    }
    let eps = label_smoothing;
    if !(eps >= F::zero() && eps <= F::one()) {
        return Err(TensorError::InvalidParam {
            op,
            msg: format!("label_smoothing {eps}"),
        });
    }
    let kf = F::from_f64(k as f64);
    let nf = F::from_f64(n as f64);
    let on = F::one() - eps;
    let off = eps / kf;
    let mut total = F::zero();
    let mut grad = Array2::<F>::zeros((n, k));
    for ((row, mut g), &y) in logits
        .axis_iter(Axis(0))
        .zip(grad.axis_iter_mut(Axis(0)))
        .zip(labels)
    {
        let (m, l) = row_lse(row);
        // −log p[j] = m + l − x[j]
        let nll_y = m + l - row[y];
        let sum_nll = row.iter().fold(F::zero(), |a, &v| a + (m + l - v));
        total = total + on * nll_y + off * sum_nll;
        for (j, (gv, &v)) in g.iter_mut().zip(row.iter()).enumerate() {
            let t = if j == y { on + off } else { off };
            *gv = ((v - m - l).exp() - t) / nf;
        }
    }
    Ok((total / nf, grad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{check_fd, inner, max_rel_err, rand_array};
    use ndarray::{arr2, Array2};

    #[test]
    fn log_softmax_matches_direct_formula_and_is_stable() {
        let x = rand_array::<f64, _, _>((4, 7), 1);
        let y = log_softmax(x.view());
        let mut r = x.clone();
        for mut row in r.rows_mut() {
            let l = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            row.mapv_inplace(|v| v - l);
        }
        assert!(max_rel_err(&y, &r) < 1e-14);
        // Huge logits: a naive exp would overflow.
        let big = arr2(&[[1000.0f32, 1000.0, -1000.0]]);
        let yb = log_softmax(big.view());
        assert!((yb[[0, 0]] + std::f32::consts::LN_2).abs() < 1e-6 && yb[[0, 2]] < -1900.0);
    }

    #[test]
    fn log_softmax_backward_matches_finite_differences() {
        let x = rand_array::<f64, _, _>((3, 5), 2).mapv(|v| 3.0 * v);
        let g = rand_array::<f64, _, _>((3, 5), 3);
        let y = log_softmax(x.view());
        let dx = log_softmax_backward(y.view(), g.view());
        check_fd("log_softmax", &x, &dx, |xp| {
            inner(&log_softmax(xp.view()), &g)
        });
    }

    #[test]
    fn cross_entropy_matches_formula_and_finite_differences() {
        let x = rand_array::<f64, _, _>((4, 6), 5).mapv(|v| 2.0 * v);
        let labels = [0, 5, 2, 2];
        for eps in [0.0, 0.1] {
            let (loss, grad) = cross_entropy(x.view(), &labels, eps).unwrap();
            // Direct: mean over rows of (1 − ε)·(−log p_y) + ε/k·Σ_j(−log p_j).
            let lp = log_softmax(x.view());
            let r: f64 = (0..4)
                .map(|i| {
                    (1.0 - eps) * -lp[[i, labels[i]]]
                        + eps / 6.0 * lp.row(i).iter().map(|v| -v).sum::<f64>()
                })
                .sum::<f64>()
                / 4.0;
            assert!((loss - r).abs() < 1e-14, "eps {eps}: {loss} vs {r}");
            check_fd("cross_entropy", &x, &grad, |xp| {
                cross_entropy(xp.view(), &labels, eps).unwrap().0
            });
        }
    }

    #[test]
    fn cross_entropy_rejects_bad_labels() {
        let x = Array2::<f32>::zeros((2, 3));
        assert_eq!(
            cross_entropy(x.view(), &[0, 3], 0.0).unwrap_err(),
            TensorError::LabelOutOfRange {
                op: "cross_entropy",
                label: 3,
                index: 1,
                classes: 3
            }
        );
        assert_eq!(
            cross_entropy(x.view(), &[0], 0.0).unwrap_err(),
            TensorError::ShapeMismatch {
                op: "cross_entropy",
                lhs: vec![2, 3],
                rhs: vec![1]
            }
        );
        assert!(matches!(
            cross_entropy(Array2::<f32>::zeros((0, 3)).view(), &[], 0.0),
            Err(TensorError::EmptyDim {
                op: "cross_entropy",
                ..
            })
        ));
    }
}
