//! Adding a constant, `y = x + s`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "add_scalar";

/// `y = x + s` for a constant scalar `s` (subtract with `add_scalar(x, -s)`).
pub fn add_scalar<F: Float>(tape: &mut Tape<F>, x: Var, s: F) -> Result<Var> {
    let y = tape.checked(x, OP)?.mapv(|v| v + s);
    Ok(tape.push_op(y, &[x], || Op::AddScalar { x }))
}

/// `dx = dy`.
pub(crate) fn add_scalar_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, dy: ArrayD<F>) {
    bw.add(x, dy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    #[allow(unused_imports)]
    use crate::testutil::{positive, uniform};

    #[test]
    fn gradcheck_add_scalar() {
        check(|t, v| add_scalar(t, v[0], 0.75), &[uniform(&[4], 3)], 4).unwrap();
    }
}
