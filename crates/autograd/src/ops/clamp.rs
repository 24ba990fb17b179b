//! Clamping to an interval, `y = min(max(x, lo), hi)`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::{AutogradError, Float, Result, Tape, Var};

const OP: &str = "clamp";

/// `y = min(max(x, lo), hi)`.
///
/// # Errors
/// `BadArgument` if `lo > hi` or either bound is NaN.
pub fn clamp<F: Float>(tape: &mut Tape<F>, x: Var, lo: F, hi: F) -> Result<Var> {
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(AutogradError::BadArgument {
            op: OP,
            reason: format!("bounds must satisfy lo <= hi, got lo = {lo}, hi = {hi}"),
        });
    }
    let y = tape.checked(x, OP)?.mapv(|v| v.max(lo).min(hi));
    Ok(tape.push_op(y, &[x], || Op::Clamp { x, lo, hi }))
}

/// `dx = dy·1[lo ≤ x ≤ hi]` (bounds included, as PyTorch's `clamp_backward`).
pub(crate) fn clamp_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    x: Var,
    lo: F,
    hi: F,
    mut dy: ArrayD<F>,
) {
    dy.zip_mut_with(bw.value(x), |d, &x| {
        if !(x >= lo && x <= hi) {
            *d = F::zero();
        }
    });
    bw.add(x, dy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;

    #[test]
    fn gradcheck_clamp_away_from_bounds() {
        let x = ArrayD::from_shape_vec(vec![2, 3], vec![-2.0, -0.7, -0.2, 0.3, 0.9, 1.8]).unwrap();
        check(|t, v| clamp(t, v[0], -0.5, 1.0), &[x], 1).unwrap();
    }

    #[test]
    fn clamp_passes_gradient_at_the_bounds_and_blocks_outside() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(ArrayD::from_shape_vec(vec![4], vec![-1.0, -0.5, 1.0, 1.5]).unwrap());
        let y = clamp(&mut t, x, -0.5, 1.0).unwrap();
        assert_eq!(t.value(y).as_slice().unwrap(), &[-0.5, -0.5, 1.0, 1.0]);
        let g = t.backward_with(y, ArrayD::from_elem(vec![4], 2.0)).unwrap();
        assert_eq!(g.get(x).unwrap().as_slice().unwrap(), &[0.0, 2.0, 2.0, 0.0]);
    }

    #[test]
    fn clamp_rejects_inverted_bounds() {
        let mut t = Tape::<f32>::new();
        let x = t.leaf(ArrayD::zeros(vec![1]));
        assert!(matches!(
            clamp(&mut t, x, 1.0, 0.0),
            Err(AutogradError::BadArgument { .. })
        ));
    }
}
