//! Row-wise L2 normalisation over the fan-in, `y_j = v_j / √(‖v_j‖² + ε)`.
//!
//! A weight `[c_out, c_in, k_h, k_w]` (or `[out, in]`) is viewed as `[rows = c_out, fan-in]`;
//! each row (one output unit's weights) is projected onto the unit sphere. This is the
//! hyperspherical layer's weight map (docs/method.md: Jacobian `(I − w_j w_jᵀ)/r_j`).

use ndarray::{Array1, ArrayD, Axis};

use crate::op::Op;
use crate::tape::Backprop;
use crate::{AutogradError, Float, Result, Tape, Var};

const OP: &str = "normalize_rows";

/// `y_j = v_j / r_j` with `r_j = √(‖v_j‖² + ε)` for each row `j` of `v` viewed as
/// `[dim 0, product of the other dims]`.
///
/// # Shapes
/// `v`: `[rows, …]` (rank ≥ 1) → same shape.
/// # Errors
/// `BadShape` for a 0-dimensional `v`; `BadArgument` for `eps < 0`.
pub fn normalize_rows<F: Float>(tape: &mut Tape<F>, v: Var, eps: F) -> Result<Var> {
    let vv = tape.checked(v, OP)?;
    if vv.ndim() == 0 {
        return Err(AutogradError::BadShape {
            op: OP,
            shape: vec![],
            expected: "rank >= 1 (rows along dimension 0)".into(),
        });
    }
    if eps.is_nan() || eps < F::zero() {
        return Err(AutogradError::BadArgument {
            op: OP,
            reason: format!("eps must be >= 0, got {eps}"),
        });
    }
    let rows = rows_view(vv);
    let inv_norm: Array1<F> = rows
        .outer_iter()
        .map(|row| F::one() / (row.iter().fold(F::zero(), |s, &x| s + x * x) + eps).sqrt())
        .collect();
    let mut y = vv.clone();
    for (mut row, &inv) in rows_view_mut(&mut y).outer_iter_mut().zip(&inv_norm) {
        row.mapv_inplace(|x| x * inv);
    }
    Ok(tape.push_op(y, &[v], || Op::NormalizeRows { v, inv_norm }))
}

fn rows_view<F: Float>(x: &ArrayD<F>) -> ndarray::ArrayView2<'_, F> {
    let rows = x.shape()[0];
    let fan_in = x.len().checked_div(rows).unwrap_or(0);
    x.view()
        .into_shape_with_order((rows, fan_in))
        .expect("hla-autograd internal error: node values are contiguous")
}

fn rows_view_mut<F: Float>(x: &mut ArrayD<F>) -> ndarray::ArrayViewMut2<'_, F> {
    let rows = x.shape()[0];
    let fan_in = x.len().checked_div(rows).unwrap_or(0);
    x.view_mut()
        .into_shape_with_order((rows, fan_in))
        .expect("hla-autograd internal error: node values are contiguous")
}

/// `dv_j = (dy_j − y_j (y_j · dy_j)) / r_j`, from the output `y` and the saved `1/r_j`.
pub(crate) fn normalize_rows_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    v: Var,
    inv_norm: &Array1<F>,
    mut dy: ArrayD<F>,
) {
    let y = rows_view(bw.output());
    let mut d = rows_view_mut(&mut dy);
    for ((mut d_row, y_row), &inv) in d.outer_iter_mut().zip(y.outer_iter()).zip(inv_norm) {
        let dot = d_row
            .iter()
            .zip(&y_row)
            .fold(F::zero(), |s, (&d, &y)| s + d * y);
        d_row.zip_mut_with(&y_row, |d, &y| *d = (*d - y * dot) * inv);
    }
    bw.add(v, dy);
}

/// Row norms `r_j = √(‖v_j‖² + ε)` (for tests and diagnostics).
pub fn row_norms<F: Float>(v: &ArrayD<F>, eps: F) -> Array1<F> {
    rows_view(v).map_axis(Axis(1), |row| {
        (row.iter().fold(F::zero(), |s, &x| s + x * x) + eps).sqrt()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;

    #[test]
    fn gradcheck_normalize_rows_of_conv_and_fc_weights() {
        check(
            |t, v| normalize_rows(t, v[0], 1e-8),
            &[uniform(&[3, 2, 3, 3], 1)],
            2,
        )
        .unwrap();
        check(
            |t, v| normalize_rows(t, v[0], 0.1),
            &[uniform(&[4, 5], 3)],
            4,
        )
        .unwrap();
    }

    #[test]
    fn rows_have_unit_norm_with_zero_eps() {
        let mut t = Tape::<f64>::new();
        let v = t.leaf(uniform(&[3, 2, 2], 5));
        let y = normalize_rows(&mut t, v, 0.0).unwrap();
        for r in row_norms(t.value(y), 0.0) {
            assert!((r - 1.0).abs() < 1e-12, "{r}");
        }
    }
}
