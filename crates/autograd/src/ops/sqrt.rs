//! Square root, `y = √x`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "sqrt";

/// `y = √x` (NaN for x < 0, as in PyTorch).
pub fn sqrt<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let y = tape.checked(x, OP)?.mapv(|v| v.sqrt());
    Ok(tape.push_op(y, &[x], || Op::Sqrt { x }))
}

/// `dx = dy / (2y)`, from the saved output `y` (no extra state).
pub(crate) fn sqrt_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, mut dy: ArrayD<F>) {
    let two = F::one() + F::one();
    dy.zip_mut_with(bw.output(), |d, &y| *d = *d / (two * y));
    bw.add(x, dy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    #[allow(unused_imports)]
    use crate::testutil::{positive, uniform};

    #[test]
    fn gradcheck_sqrt() {
        check(|t, v| sqrt(t, v[0]), &[positive(&[3, 3], 7)], 8).unwrap();
    }
}
