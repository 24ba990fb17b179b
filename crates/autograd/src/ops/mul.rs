//! Element-wise product with NumPy broadcasting, `y = a ⊙ b`.

use ndarray::ArrayD;

use crate::broadcast::binary_map;
use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "mul";

/// `y = a ⊙ b`, broadcasting like NumPy.
///
/// # Errors
/// `ShapeMismatch` if the shapes do not broadcast.
pub fn mul<F: Float>(tape: &mut Tape<F>, a: Var, b: Var) -> Result<Var> {
    let y = binary_map(
        OP,
        tape.checked(a, OP)?,
        tape.checked(b, OP)?,
        tape.par(),
        |x, y| x * y,
    )?;
    Ok(tape.push_op(y, &[a, b], || Op::Mul { a, b }))
}

/// `da = Σ_bcast dy ⊙ b`, `db = Σ_bcast dy ⊙ a`. Operands are read from the tape (nothing
/// is copied at record time); `dy` is reused in place for the last gradient computed.
pub(crate) fn mul_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    a: Var,
    b: Var,
    dy: ArrayD<F>,
) -> Result<()> {
    let times = |mut d: ArrayD<F>, by: &ArrayD<F>| {
        d.zip_mut_with(by, |d, &x| *d = *d * x);
        d
    };
    match (bw.needs(a), bw.needs(b)) {
        (true, true) => {
            let da = times(dy.clone(), bw.value(b));
            let db = times(dy, bw.value(a));
            bw.add(a, bw.reduce_to(da, a)?);
            bw.add(b, bw.reduce_to(db, b)?);
        }
        (true, false) => {
            let da = times(dy, bw.value(b));
            bw.add(a, bw.reduce_to(da, a)?);
        }
        (false, true) => {
            let db = times(dy, bw.value(a));
            bw.add(b, bw.reduce_to(db, b)?);
        }
        (false, false) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;

    #[test]
    fn gradcheck_mul_broadcasting() {
        for (sa, sb) in [
            (vec![3, 4], vec![3, 4]),
            (vec![2, 3, 4], vec![3, 1]),
            (vec![1, 5], vec![2, 1]),
            (vec![], vec![3]),
        ] {
            let xs = [uniform(&sa, 8), uniform(&sb, 9)];
            check(|t, v| mul(t, v[0], v[1]), &xs, 10).unwrap();
        }
    }

    #[test]
    fn mul_by_constant_only_differentiates_the_leaf() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(ArrayD::from_shape_vec(vec![2], vec![1.0, 2.0]).unwrap());
        let c = t.constant(ArrayD::from_shape_vec(vec![2], vec![3.0, -4.0]).unwrap());
        let y = mul(&mut t, x, c).unwrap();
        let g = t.backward_with(y, ArrayD::from_elem(vec![2], 1.0)).unwrap();
        assert_eq!(g.get(x).unwrap().as_slice().unwrap(), &[3.0, -4.0]);
        assert!(g.get(c).is_none());
    }
}
