//! Fully connected layer, `Y = X·Wᵀ + b` (PyTorch's `nn.Linear` layout).

use ndarray::{Array2, ArrayD, ArrayView2, Axis};

use crate::linalg::gemm;
use crate::op::Op;
use crate::tape::Backprop;
use crate::views::as2;
use crate::{AutogradError, Float, Result, Tape, Var};

const OP: &str = "linear";

/// `Y = X·Wᵀ + b`.
///
/// # Shapes
/// `x`: `[n, in]`, `w`: `[out, in]`, `b`: `[out]` → `[n, out]`.
/// # Errors
/// `BadShape` for operands of the wrong rank; `ShapeMismatch` if `in` or `out` disagree.
pub fn linear<F: Float>(tape: &mut Tape<F>, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
    let xv = as2(OP, tape.checked(x, OP)?)?;
    let wv = as2(OP, tape.checked(w, OP)?)?;
    if xv.ncols() != wv.ncols() {
        return Err(AutogradError::ShapeMismatch {
            op: OP,
            lhs: xv.shape().to_vec(),
            rhs: wv.shape().to_vec(),
        });
    }
    let mut y = Array2::zeros((xv.nrows(), wv.nrows()));
    if let Some(b) = b {
        let bv = tape.checked(b, OP)?;
        if bv.shape() != [wv.nrows()] {
            return Err(AutogradError::ShapeMismatch {
                op: OP,
                lhs: wv.shape().to_vec(),
                rhs: bv.shape().to_vec(),
            });
        }
        y.zip_mut_with(bv, |y, &b| *y = b); // bias in every row, then beta = 1 below
    }
    let beta = if b.is_some() { F::one() } else { F::zero() };
    // Y[n, out] = X[n, in] · Wᵀ[in, out] (+ Y holding the bias)
    gemm(F::one(), xv, wv.t(), beta, y.view_mut())?;
    let mut inputs = vec![x, w];
    inputs.extend(b);
    Ok(tape.push_op(y.into_dyn(), &inputs, || Op::Linear { x, w, b }))
}

/// `dX = dY·W`, `dW = dYᵀ·X`, `db = Σ_n dY`.
pub(crate) fn linear_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    x: Var,
    w: Var,
    b: Option<Var>,
    dy: ArrayD<F>,
) -> Result<()> {
    let dy2 = as2(OP, &dy)?;
    let (xv, wv) = (as2(OP, bw.value(x))?, as2(OP, bw.value(w))?);
    let dx = if bw.needs(x) {
        let mut dx = Array2::zeros(xv.raw_dim());
        // dX[n, in] = dY[n, out] · W[out, in]
        gemm(F::one(), dy2, wv, F::zero(), dx.view_mut())?;
        Some(dx)
    } else {
        None
    };
    // With a data-parallel group, dW and db need the whole batch: the rows of X and dY are
    // gathered (a classifier's inputs and outputs are small) and every rank computes what one
    // process would.
    let gathered = match bw.group {
        Some(g) if bw.batched(bw.out) && (bw.needs(w) || b.is_some_and(|b| bw.needs(b))) => {
            let rows = |v: ArrayView2<'_, F>| -> Result<Array2<F>> {
                let cols = v.ncols();
                let all = g.gather(OP, v.as_standard_layout().as_slice().expect("standard"))?;
                Ok(Array2::from_shape_vec((all.len() / cols.max(1), cols), all)
                    .expect("whole rows"))
            };
            Some((rows(xv)?, rows(dy2)?))
        }
        _ => None,
    };
    let (xa, dya) = match &gathered {
        Some((x, d)) => (x.view(), d.view()),
        None => (xv, dy2),
    };
    let dw = if bw.needs(w) {
        let mut dw = Array2::zeros(wv.raw_dim());
        // dW[out, in] = dYᵀ[out, n] · X[n, in]
        gemm(F::one(), dya.t(), xa, F::zero(), dw.view_mut())?;
        Some(dw)
    } else {
        None
    };
    let db = b.filter(|&b| bw.needs(b)).map(|_| dya.sum_axis(Axis(0)));
    if let Some(dx) = dx {
        bw.add(x, dx.into_dyn());
    }
    if let Some(dw) = dw {
        bw.add(w, dw.into_dyn());
    }
    if let (Some(b), Some(db)) = (b, db) {
        bw.add(b, db.into_dyn());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;

    #[test]
    fn gradcheck_linear_with_and_without_bias() {
        let xs = [uniform(&[4, 3], 1), uniform(&[5, 3], 2), uniform(&[5], 3)];
        check(|t, v| linear(t, v[0], v[1], Some(v[2])), &xs, 4).unwrap();
        check(|t, v| linear(t, v[0], v[1], None), &xs[..2], 5).unwrap();
    }

    #[test]
    fn linear_rejects_wrong_bias() {
        let mut t = Tape::<f32>::new();
        let x = t.leaf(ArrayD::zeros(vec![2, 3]));
        let w = t.leaf(ArrayD::zeros(vec![4, 3]));
        let b = t.leaf(ArrayD::zeros(vec![3]));
        assert!(matches!(
            linear(&mut t, x, w, Some(b)),
            Err(AutogradError::ShapeMismatch { op: "linear", .. })
        ));
    }
}
