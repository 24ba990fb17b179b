//! Absolute value, `y = |x|`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "abs";

/// `y = |x|`.
pub fn abs<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let y = tape.checked(x, OP)?.mapv(|v| v.abs());
    Ok(tape.push_op(y, &[x], || Op::Abs { x }))
}

/// `dx = sign(x)·dy`, with sign(0) = 0 (PyTorch's choice at the kink).
pub(crate) fn abs_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, mut dy: ArrayD<F>) {
    dy.zip_mut_with(bw.value(x), |d, &x| {
        *d = if x > F::zero() {
            *d
        } else if x < F::zero() {
            -*d
        } else {
            F::zero()
        }
    });
    bw.add(x, dy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    #[allow(unused_imports)]
    use crate::testutil::{positive, uniform};

    #[test]
    fn gradcheck_abs_away_from_zero() {
        let x = ndarray::ArrayD::from_shape_vec(vec![4], vec![-1.5, -0.25, 0.5, 2.0]).unwrap();
        check(|t, v| abs(t, v[0]), &[x], 11).unwrap();
    }

    #[test]
    fn abs_gradient_at_zero_is_zero() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(ndarray::ArrayD::zeros(vec![1]));
        let y = abs(&mut t, x).unwrap();
        let g = t.backward(y).unwrap();
        assert_eq!(g.get(x).unwrap()[[0]], 0.0);
    }
}
