//! Power with a constant exponent, `y = xᵖ`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "pow";

/// `y = xᵖ` for a constant exponent `p` (NaN for x < 0 and non-integer p, as in PyTorch).
pub fn pow<F: Float>(tape: &mut Tape<F>, x: Var, p: F) -> Result<Var> {
    let y = tape.checked(x, OP)?.mapv(|v| v.powf(p));
    Ok(tape.push_op(y, &[x], || Op::Pow { x, p }))
}

/// `dx = p·xᵖ⁻¹·dy`.
pub(crate) fn pow_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, p: F, mut dy: ArrayD<F>) {
    let pm1 = p - F::one();
    dy.zip_mut_with(bw.value(x), |d, &x| *d = *d * p * x.powf(pm1));
    bw.add(x, dy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    #[allow(unused_imports)]
    use crate::testutil::{positive, uniform};

    #[test]
    fn gradcheck_pow() {
        for p in [3.0, -0.5, 2.5] {
            check(|t, v| pow(t, v[0], p), &[positive(&[2, 3], 12)], 13).unwrap();
        }
    }
}
