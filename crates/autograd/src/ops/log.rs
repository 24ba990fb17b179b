//! Natural logarithm, `y = ln x`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "log";

/// `y = ln x` (−inf at 0, NaN below, as in PyTorch).
pub fn log<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let y = tape.checked(x, OP)?.mapv(|v| v.ln());
    Ok(tape.push_op(y, &[x], || Op::Log { x }))
}

/// `dx = dy / x`.
pub(crate) fn log_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, mut dy: ArrayD<F>) {
    dy.zip_mut_with(bw.value(x), |d, &x| *d = *d / x);
    bw.add(x, dy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    #[allow(unused_imports)]
    use crate::testutil::{positive, uniform};

    #[test]
    fn gradcheck_log() {
        check(|t, v| log(t, v[0]), &[positive(&[4, 2], 16)], 17).unwrap();
    }
}
