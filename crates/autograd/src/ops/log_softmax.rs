//! Row-wise log-softmax, `y_ij = x_ij − log Σ_k exp(x_ik)`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::views::{as2, grad2};
use crate::{Float, Result, Tape, Var};

const OP: &str = "log_softmax";

/// Log-softmax of each row (numerically stable: the row max is subtracted first).
///
/// # Shapes
/// `x`: `[n, k]` → `[n, k]`.
/// # Errors
/// `BadShape` if `x` is not 2-D.
pub fn log_softmax<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let y = hla_tensor::log_softmax(as2(OP, tape.checked(x, OP)?)?);
    Ok(tape.push_op(y.into_dyn(), &[x], || Op::LogSoftmax { x }))
}

/// `dx_ij = dy_ij − softmax_ij·Σ_k dy_ik`, from the op's own output `y` (nothing saved).
pub(crate) fn log_softmax_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    x: Var,
    dy: ArrayD<F>,
) -> Result<()> {
    let y = as2(OP, bw.output())?;
    let dx = hla_tensor::log_softmax_backward(y, grad2(dy).view());
    bw.add(x, dx.into_dyn());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;

    #[test]
    fn gradcheck_log_softmax() {
        let x = uniform(&[3, 5], 1).mapv(|v| 3.0 * v);
        check(|t, v| log_softmax(t, v[0]), &[x], 2).unwrap();
    }
}
