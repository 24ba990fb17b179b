//! Square, `y = x²`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "square";

/// `y = x²`.
pub fn square<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let y = tape.checked(x, OP)?.mapv(|v| v * v);
    Ok(tape.push_op(y, &[x], || Op::Square { x }))
}

/// `dx = 2x·dy`.
pub(crate) fn square_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, mut dy: ArrayD<F>) {
    let two = F::one() + F::one();
    dy.zip_mut_with(bw.value(x), |d, &x| *d = *d * two * x);
    bw.add(x, dy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    #[allow(unused_imports)]
    use crate::testutil::{positive, uniform};

    #[test]
    fn gradcheck_square() {
        check(|t, v| square(t, v[0]), &[uniform(&[5], 9)], 10).unwrap();
    }
}
