//! Negation, `y = −x`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "neg";

/// `y = −x`.
pub fn neg<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let y = tape.checked(x, OP)?.mapv(|v| -v);
    Ok(tape.push_op(y, &[x], || Op::Neg { x }))
}

/// `dx = −dy`.
pub(crate) fn neg_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, mut dy: ArrayD<F>) {
    dy.mapv_inplace(|d| -d);
    bw.add(x, dy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    #[allow(unused_imports)]
    use crate::testutil::{positive, uniform};

    #[test]
    fn gradcheck_neg() {
        check(|t, v| neg(t, v[0]), &[uniform(&[3, 2], 1)], 2).unwrap();
    }
}
