//! A residual block's sum and ReLU as one op, `y = max(a + b, 0)`: the same values and
//! gradients, bit for bit, as [`add`](super::add) then [`relu`](super::relu), in one pass
//! and without keeping the sum. No broadcasting (both operands have the block's shape).

use ndarray::ArrayD;

use crate::broadcast::{mask_in_place, mask_in_place_copy};
use crate::op::Op;
use crate::tape::Backprop;
use crate::{AutogradError, Float, Result, Tape, Var};

const OP: &str = "add_relu";

/// `y = max(a + b, 0)`, `a` and `b` of one shape.
///
/// # Errors
/// `ShapeMismatch` if the shapes differ.
pub fn add_relu<F: Float>(tape: &mut Tape<F>, a: Var, b: Var) -> Result<Var> {
    let (va, vb) = (tape.checked(a, OP)?, tape.checked(b, OP)?);
    if va.shape() != vb.shape() {
        return Err(AutogradError::ShapeMismatch {
            op: OP,
            lhs: va.shape().to_vec(),
            rhs: vb.shape().to_vec(),
        });
    }
    let y = hla_tensor::add_relu(va.view(), vb.view(), tape.par());
    Ok(tape.push_op(y, &[a, b], || Op::AddRelu { a, b }))
}

/// `da = db = dy ⊙ 1[y > 0]` (the output is read; at a + b = 0 the gradient is 0, as ReLU's).
pub(crate) fn add_relu_backward<F: Float>(bw: &mut Backprop<'_, F>, a: Var, b: Var, dy: ArrayD<F>) {
    let mut dz = dy;
    let keep = |v| v > F::zero();
    match (bw.needs(a), bw.needs(b)) {
        (true, true) => {
            let copy = mask_in_place_copy(&mut dz, bw.output(), bw.par, keep);
            bw.add(a, copy);
            bw.add(b, dz);
        }
        (true, false) => {
            mask_in_place(&mut dz, bw.output(), bw.par, keep);
            bw.add(a, dz);
        }
        (false, true) => {
            mask_in_place(&mut dz, bw.output(), bw.par, keep);
            bw.add(b, dz);
        }
        (false, false) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::ops;
    use crate::testutil::uniform;

    #[test]
    fn gradcheck_add_relu() {
        let xs = [uniform(&[2, 3, 4], 1), uniform(&[2, 3, 4], 2)];
        check(|t, v| add_relu(t, v[0], v[1]), &xs, 3).unwrap();
    }

    /// Values and gradients equal `relu(add(a, b))` bit for bit, also when `b` is `a` (a use
    /// twice) and when `a` feeds another op too (its gradients accumulate in the same order),
    /// above the parallel threshold.
    #[test]
    fn same_bits_as_add_then_relu() {
        let n = crate::broadcast::PAR_MIN_LEN + 5;
        let xa = uniform(&[n], 4).mapv(|v| v as f32);
        let xb = uniform(&[n], 5).mapv(|v| v as f32);
        let seed = uniform(&[n], 6).mapv(|v| v as f32);
        let bits = |x: &ArrayD<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for twice in [false, true] {
            let run = |fused: bool| {
                let mut t = Tape::<f32>::new();
                let (a, b) = (t.leaf(xa.clone()), t.leaf(xb.clone()));
                let b = if twice { a } else { b };
                let h = ops::mul_scalar(&mut t, a, 0.5).unwrap();
                let y = if fused {
                    add_relu(&mut t, h, b).unwrap()
                } else {
                    let s = ops::add(&mut t, h, b).unwrap();
                    ops::relu(&mut t, s).unwrap()
                };
                let g = t.backward_with(y, seed.clone()).unwrap();
                (
                    bits(t.value(y)),
                    bits(g.get(a).unwrap()),
                    g.get(b).map(bits),
                )
            };
            assert_eq!(run(true), run(false), "b is a: {twice}");
        }
    }

    #[test]
    fn add_relu_rejects_different_shapes_naming_them() {
        let mut t = Tape::<f32>::new();
        let a = t.leaf(ArrayD::zeros(vec![2, 3]));
        let b = t.leaf(ArrayD::zeros(vec![3]));
        let e = add_relu(&mut t, a, b).unwrap_err();
        assert!(
            matches!(&e, AutogradError::ShapeMismatch { op: "add_relu", lhs, rhs }
                if lhs == &[2, 3] && rhs == &[3]),
            "{e}"
        );
    }
}
