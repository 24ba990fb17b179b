//! ReLU, `y = max(x, 0)`. At x = 0 the gradient is 0 (PyTorch's choice).

use ndarray::ArrayD;

use crate::broadcast::mask_in_place;
use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "relu";

/// `y = max(x, 0)`, any shape.
pub fn relu<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let par = tape.par();
    let y = hla_tensor::relu(tape.checked(x, OP)?.view(), par);
    Ok(tape.push_op(y, &[x], || Op::Relu { x }))
}

/// `dx = dy ⊙ 1[x > 0]`; `x` is read from the tape (nothing saved). Written over `dy` (owned), no new allocation.
pub(crate) fn relu_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, dy: ArrayD<F>) {
    let mut dx = dy;
    mask_in_place(&mut dx, bw.output(), bw.par, |v| v > F::zero());
    bw.add(x, dx);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;

    #[test]
    fn gradcheck_relu_away_from_kink() {
        let x = ArrayD::from_shape_vec(vec![2, 3], vec![-2.0, -0.5, 0.25, 3.0, 0.7, -0.1]).unwrap();
        check(|t, v| relu(t, v[0]), &[x], 7).unwrap();
    }

    #[test]
    fn relu_gradient_at_zero_is_zero() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(ArrayD::from_shape_vec(vec![3], vec![-1.0, 0.0, 1.0]).unwrap());
        let y = relu(&mut t, x).unwrap();
        let g = t.backward_with(y, ArrayD::from_elem(vec![3], 5.0)).unwrap();
        assert_eq!(g.get(x).unwrap().as_slice().unwrap(), &[0.0, 0.0, 5.0]);
    }
}
