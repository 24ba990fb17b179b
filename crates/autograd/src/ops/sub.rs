//! Element-wise subtraction with NumPy broadcasting, `y = a − b`.

use ndarray::ArrayD;

use crate::broadcast::binary_map;
use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "sub";

/// `y = a − b`, broadcasting like NumPy.
///
/// # Errors
/// `ShapeMismatch` if the shapes do not broadcast.
pub fn sub<F: Float>(tape: &mut Tape<F>, a: Var, b: Var) -> Result<Var> {
    let y = binary_map(
        OP,
        tape.checked(a, OP)?,
        tape.checked(b, OP)?,
        tape.par(),
        |x, y| x - y,
    )?;
    Ok(tape.push_op(y, &[a, b], || Op::Sub { a, b }))
}

/// `da = Σ_bcast dy`, `db = −Σ_bcast dy`.
pub(crate) fn sub_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    a: Var,
    b: Var,
    dy: ArrayD<F>,
) -> Result<()> {
    let negated = |bw: &Backprop<'_, F>, d: ArrayD<F>| -> Result<ArrayD<F>> {
        let mut d = bw.reduce_to(d, b)?;
        d.mapv_inplace(|v| -v);
        Ok(d)
    };
    match (bw.needs(a), bw.needs(b)) {
        (true, true) => {
            bw.add(a, bw.reduce_to(dy.clone(), a)?);
            bw.add(b, negated(bw, dy)?);
        }
        (true, false) => bw.add(a, bw.reduce_to(dy, a)?),
        (false, true) => bw.add(b, negated(bw, dy)?),
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
    fn gradcheck_sub_broadcasting() {
        for (sa, sb) in [
            (vec![3, 2], vec![3, 2]),
            (vec![3, 2], vec![3, 1]),
            (vec![2], vec![4, 2]),
        ] {
            let xs = [uniform(&sa, 5), uniform(&sb, 6)];
            check(|t, v| sub(t, v[0], v[1]), &xs, 7).unwrap();
        }
    }

    #[test]
    fn sub_of_itself_has_zero_gradient() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(uniform(&[2], 1));
        let y = sub(&mut t, x, x).unwrap();
        let g = t.backward_with(y, ArrayD::from_elem(vec![2], 1.0)).unwrap();
        assert_eq!(g.get(x).unwrap().as_slice().unwrap(), &[0.0, 0.0]);
    }
}
