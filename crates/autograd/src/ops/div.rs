//! Element-wise quotient with NumPy broadcasting, `y = a / b`.

use ndarray::{ArrayD, Zip};

use crate::broadcast::binary_map;
use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "div";

/// `y = a / b`, broadcasting like NumPy. Division by zero follows IEEE (inf/NaN), like PyTorch.
///
/// # Errors
/// `ShapeMismatch` if the shapes do not broadcast.
pub fn div<F: Float>(tape: &mut Tape<F>, a: Var, b: Var) -> Result<Var> {
    let y = binary_map(
        OP,
        tape.checked(a, OP)?,
        tape.checked(b, OP)?,
        tape.par(),
        |x, y| x / y,
    )?;
    Ok(tape.push_op(y, &[a, b], || Op::Div { a, b }))
}

/// `da = Σ_bcast dy / b`, `db = −Σ_bcast dy ⊙ a / b²`.
pub(crate) fn div_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    a: Var,
    b: Var,
    dy: ArrayD<F>,
) -> Result<()> {
    let da_of = |mut d: ArrayD<F>, b: &ArrayD<F>| {
        d.zip_mut_with(b, |d, &b| *d = *d / b);
        d
    };
    let db_of = |mut d: ArrayD<F>, a: &ArrayD<F>, b: &ArrayD<F>| {
        Zip::from(&mut d)
            .and_broadcast(a)
            .and_broadcast(b)
            .for_each(|d, &a, &b| *d = -*d * a / (b * b));
        d
    };
    match (bw.needs(a), bw.needs(b)) {
        (true, true) => {
            let da = da_of(dy.clone(), bw.value(b));
            let db = db_of(dy, bw.value(a), bw.value(b));
            bw.add(a, bw.reduce_to(da, a)?);
            bw.add(b, bw.reduce_to(db, b)?);
        }
        (true, false) => {
            let da = da_of(dy, bw.value(b));
            bw.add(a, bw.reduce_to(da, a)?);
        }
        (false, true) => {
            let db = db_of(dy, bw.value(a), bw.value(b));
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
    use crate::testutil::{positive, uniform};

    #[test]
    fn gradcheck_div_broadcasting() {
        for (sa, sb) in [
            (vec![3, 2], vec![3, 2]),
            (vec![2, 3], vec![3]),
            (vec![3], vec![2, 1]),
        ] {
            let xs = [uniform(&sa, 11), positive(&sb, 12)];
            check(|t, v| div(t, v[0], v[1]), &xs, 13).unwrap();
        }
    }
}
