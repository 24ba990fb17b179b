//! ReLU6, `y = min(max(x, 0), 6)` (MobileNetV2). The gradient is 0 at both kinks (PyTorch's
//! `hardtanh_backward` passes it only strictly inside (0, 6)).

use ndarray::ArrayD;

use crate::broadcast::mask_in_place;
use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "relu6";

/// `y = min(max(x, 0), 6)`, any shape.
pub fn relu6<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let par = tape.par();
    let y = hla_tensor::relu6(tape.checked(x, OP)?.view(), par);
    Ok(tape.push_op(y, &[x], || Op::Relu6 { x }))
}

/// `dx = dy ⊙ 1[0 < x < 6]`. Written over `dy` (owned), no new allocation.
pub(crate) fn relu6_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, dy: ArrayD<F>) {
    let six = F::from_f64(6.0);
    let mut dx = dy;
    // `&`, not `&&`: both comparisons are evaluated, so the mask is a select and the loop
    // vectorises (with `&&` it compiled to a scalar branch per element, a sixth of a
    // MobileNetV2 training step)
    mask_in_place(&mut dx, bw.output(), bw.par, |v| {
        (v > F::zero()) & (v < six)
    });
    bw.add(x, dx);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;

    #[test]
    fn gradcheck_relu6_away_from_kinks() {
        let x = ArrayD::from_shape_vec(vec![5], vec![-1.0, 0.5, 3.0, 5.5, 7.0]).unwrap();
        check(|t, v| relu6(t, v[0]), &[x], 8).unwrap();
    }

    #[test]
    fn relu6_blocks_gradient_at_and_beyond_kinks() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(ArrayD::from_shape_vec(vec![4], vec![0.0, 3.0, 6.0, 8.0]).unwrap());
        let y = relu6(&mut t, x).unwrap();
        assert_eq!(t.value(y).as_slice().unwrap(), &[0.0, 3.0, 6.0, 6.0]);
        let g = t.backward_with(y, ArrayD::from_elem(vec![4], 1.0)).unwrap();
        assert_eq!(g.get(x).unwrap().as_slice().unwrap(), &[0.0, 1.0, 0.0, 0.0]);
    }
}
