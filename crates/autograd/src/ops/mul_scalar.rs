//! Scaling by a constant, `y = s·x`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "mul_scalar";

/// `y = s·x` for a constant scalar `s` (divide with `mul_scalar(x, 1/s)`).
pub fn mul_scalar<F: Float>(tape: &mut Tape<F>, x: Var, s: F) -> Result<Var> {
    let y = tape.checked(x, OP)?.mapv(|v| v * s);
    Ok(tape.push_op(y, &[x], || Op::MulScalar { x, s }))
}

/// `dx = s·dy`.
pub(crate) fn mul_scalar_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    x: Var,
    s: F,
    mut dy: ArrayD<F>,
) {
    dy.mapv_inplace(|d| d * s);
    bw.add(x, dy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    #[allow(unused_imports)]
    use crate::testutil::{positive, uniform};

    #[test]
    fn gradcheck_mul_scalar() {
        check(|t, v| mul_scalar(t, v[0], -1.5), &[uniform(&[2, 3], 5)], 6).unwrap();
    }
}
