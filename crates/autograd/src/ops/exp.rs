//! Exponential, `y = eˣ`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "exp";

/// `y = eˣ`.
pub fn exp<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let y = tape.checked(x, OP)?.mapv(|v| v.exp());
    Ok(tape.push_op(y, &[x], || Op::Exp { x }))
}

/// `dx = y·dy`, from the saved output.
pub(crate) fn exp_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, mut dy: ArrayD<F>) {
    dy.zip_mut_with(bw.output(), |d, &y| *d = *d * y);
    bw.add(x, dy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    #[allow(unused_imports)]
    use crate::testutil::{positive, uniform};

    #[test]
    fn gradcheck_exp() {
        check(|t, v| exp(t, v[0]), &[uniform(&[3, 1, 2], 14)], 15).unwrap();
    }
}
