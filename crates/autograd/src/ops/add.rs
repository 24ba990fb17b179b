//! Element-wise addition with NumPy broadcasting, `y = a + b`.

use ndarray::ArrayD;

use crate::broadcast::binary_map;
use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "add";

/// `y = a + b`, broadcasting like NumPy (`[n, c] + [c]`, `[n, 1] + [1, k]`, …).
///
/// # Errors
/// `ShapeMismatch` if the shapes do not broadcast.
pub fn add<F: Float>(tape: &mut Tape<F>, a: Var, b: Var) -> Result<Var> {
    let y = binary_map(
        OP,
        tape.checked(a, OP)?,
        tape.checked(b, OP)?,
        tape.par(),
        |x, y| x + y,
    )?;
    Ok(tape.push_op(y, &[a, b], || Op::Add { a, b }))
}

/// `da = Σ_bcast dy`, `db = Σ_bcast dy` (each summed over the axes it was broadcast along).
pub(crate) fn add_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    a: Var,
    b: Var,
    dy: ArrayD<F>,
) -> Result<()> {
    match (bw.needs(a), bw.needs(b)) {
        (true, true) => {
            bw.add(a, bw.reduce_to(dy.clone(), a)?);
            bw.add(b, bw.reduce_to(dy, b)?);
        }
        (true, false) => bw.add(a, bw.reduce_to(dy, a)?),
        (false, true) => bw.add(b, bw.reduce_to(dy, b)?),
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
    fn gradcheck_add_broadcasting_edge_cases() {
        for (sa, sb) in [
            (vec![2, 3], vec![2, 3]),
            (vec![2, 3], vec![3]),
            (vec![4, 1, 3], vec![2, 1]),
            (vec![], vec![2, 5]),
            (vec![1], vec![3, 1, 2]),
        ] {
            let xs = [uniform(&sa, 1), uniform(&sb, 2)];
            check(|t, v| add(t, v[0], v[1]), &xs, 3).unwrap();
        }
    }

    #[test]
    fn add_to_itself_sums_both_uses() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(uniform(&[3], 4));
        let y = add(&mut t, x, x).unwrap();
        let g = t.backward_with(y, ArrayD::from_elem(vec![3], 1.0)).unwrap();
        assert_eq!(g.get(x).unwrap().as_slice().unwrap(), &[2.0, 2.0, 2.0]);
    }

    /// Above the parallel threshold, forward and the accumulation of a value used twice run on
    /// rayon; the results must equal the sequential ones bit for bit.
    #[test]
    fn large_add_is_bit_identical_seq_vs_rayon() {
        let n = crate::broadcast::PAR_MIN_LEN + 3;
        let (xa, xb) = (
            uniform(&[n], 1).mapv(|v| v as f32),
            uniform(&[n], 2).mapv(|v| v as f32),
        );
        let run = |par| {
            let mut t = Tape::<f32>::new();
            t.set_par(par);
            let (a, b) = (t.leaf(xa.clone()), t.leaf(xb.clone()));
            let s = add(&mut t, a, b).unwrap();
            let y = add(&mut t, s, a).unwrap(); // `a` used twice: its gradients accumulate
            let seed = xb.mapv(|v| v * 3.0);
            let g = t.backward_with(y, seed).unwrap();
            let bits = |x: &ArrayD<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            (bits(t.value(y)), bits(g.get(a).unwrap()))
        };
        assert_eq!(run(crate::Par::Seq), run(crate::Par::Rayon));
    }

    #[test]
    fn add_rejects_non_broadcastable_shapes_naming_them() {
        let mut t = Tape::<f32>::new();
        let a = t.leaf(ArrayD::zeros(vec![2, 3]));
        let b = t.leaf(ArrayD::zeros(vec![2]));
        let e = add(&mut t, a, b).unwrap_err();
        assert!(
            matches!(&e, crate::AutogradError::ShapeMismatch { op: "add", lhs, rhs }
                if lhs == &[2, 3] && rhs == &[2]),
            "{e}"
        );
    }
}
