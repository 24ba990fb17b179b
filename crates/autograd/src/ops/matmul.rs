//! Matrix product of two 2-D values, `Y = A·B`.

use ndarray::{Array2, ArrayD};

use crate::linalg::gemm;
use crate::op::Op;
use crate::tape::Backprop;
use crate::views::as2;
use crate::{AutogradError, Float, Result, Tape, Var};

const OP: &str = "matmul";

/// `Y = A·B`.
///
/// # Shapes
/// `a`: `[m, k]`, `b`: `[k, n]` → `[m, n]`.
/// # Errors
/// `BadShape` if an operand is not 2-D; `ShapeMismatch` if the inner dimensions differ.
pub fn matmul<F: Float>(tape: &mut Tape<F>, a: Var, b: Var) -> Result<Var> {
    let av = as2(OP, tape.checked(a, OP)?)?;
    let bv = as2(OP, tape.checked(b, OP)?)?;
    // dB = Aᵀ·dY would sum over a batched A's rows on this rank only.
    let keeps = !(tape.is_batched(a) && !tape.is_batched(b) && tape.requires_grad(b));
    tape.check_batch_axis(OP, a, keeps)?;
    if av.ncols() != bv.nrows() {
        return Err(AutogradError::ShapeMismatch {
            op: OP,
            lhs: av.shape().to_vec(),
            rhs: bv.shape().to_vec(),
        });
    }
    let mut y = Array2::zeros((av.nrows(), bv.ncols()));
    // Y[m, n] = A[m, k] · B[k, n]
    gemm(F::one(), av, bv, F::zero(), y.view_mut())?;
    Ok(tape.push_op(y.into_dyn(), &[a, b], || Op::MatMul { a, b }))
}

/// `dA = dY·Bᵀ`, `dB = Aᵀ·dY`; each computed only if needed.
pub(crate) fn matmul_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    a: Var,
    b: Var,
    dy: ArrayD<F>,
) -> Result<()> {
    let dy = as2(OP, &dy)?;
    let (av, bv) = (as2(OP, bw.value(a))?, as2(OP, bw.value(b))?);
    let da = if bw.needs(a) {
        let mut da = Array2::zeros(av.raw_dim());
        // dA[m, k] = dY[m, n] · Bᵀ[n, k]
        gemm(F::one(), dy, bv.t(), F::zero(), da.view_mut())?;
        Some(da)
    } else {
        None
    };
    let db = if bw.needs(b) {
        let mut db = Array2::zeros(bv.raw_dim());
        // dB[k, n] = Aᵀ[k, m] · dY[m, n]
        gemm(F::one(), av.t(), dy, F::zero(), db.view_mut())?;
        Some(db)
    } else {
        None
    };
    if let Some(da) = da {
        bw.add(a, da.into_dyn());
    }
    if let Some(db) = db {
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
    fn gradcheck_matmul_non_square() {
        let xs = [uniform(&[3, 5], 1), uniform(&[5, 2], 2)];
        check(|t, v| matmul(t, v[0], v[1]), &xs, 3).unwrap();
    }

    #[test]
    fn matmul_value_and_mismatch_error() {
        let mut t = Tape::<f64>::new();
        let a = t.constant(ArrayD::from_shape_vec(vec![1, 2], vec![1., 2.]).unwrap());
        let b = t.constant(ArrayD::from_shape_vec(vec![2, 1], vec![3., 4.]).unwrap());
        let y = matmul(&mut t, a, b).unwrap();
        assert_eq!(t.value(y).as_slice().unwrap(), &[11.]);
        let e = matmul(&mut t, a, a).unwrap_err();
        assert!(
            matches!(&e, AutogradError::ShapeMismatch { op: "matmul", lhs, rhs }
                if lhs == &[1, 2] && rhs == &[1, 2]),
            "{e}"
        );
    }
}
