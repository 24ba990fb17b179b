//! Sum over axes, `y = Σ_axes x`.

use ndarray::{ArrayD, Axis};

use crate::op::Op;
use crate::tape::{scalar, Backprop};
use crate::{AutogradError, Float, Result, Tape, Var};

const OP: &str = "sum";

/// Checks that `axes` are distinct and below `ndim`; returns them sorted ascending.
pub(crate) fn sorted_axes(op: &'static str, axes: &[usize], shape: &[usize]) -> Result<Vec<usize>> {
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != axes.len() || sorted.last().is_some_and(|&a| a >= shape.len()) {
        return Err(AutogradError::BadAxes {
            op,
            axes: axes.to_vec(),
            shape: shape.to_vec(),
        });
    }
    Ok(sorted)
}

/// Sums `x` over sorted `axes` (each a sequential, index-order sum), optionally keeping them as
/// size-1 dimensions.
pub(crate) fn reduce_sum<F: Float>(x: &ArrayD<F>, axes: &[usize], keepdim: bool) -> ArrayD<F> {
    if axes.len() == x.ndim() && !keepdim {
        return scalar(x.sum());
    }
    let mut rev = axes.iter().rev();
    let mut y = match rev.next() {
        Some(&ax) => x.sum_axis(Axis(ax)),
        None => x.clone(),
    };
    for &ax in rev {
        y = y.sum_axis(Axis(ax));
    }
    if keepdim {
        for &ax in axes {
            y.insert_axis_inplace(Axis(ax));
        }
    }
    y
}

/// Broadcasts the gradient of a reduction back to the input's `shape`, scaled by `scale`.
pub(crate) fn expand_grad<F: Float>(
    dy: ArrayD<F>,
    axes: &[usize],
    keepdim: bool,
    shape: &[usize],
    scale: F,
) -> ArrayD<F> {
    let mut dy = dy;
    if !keepdim {
        for &ax in axes {
            dy.insert_axis_inplace(Axis(ax));
        }
    }
    let view = dy
        .broadcast(shape)
        .expect("hla-autograd internal error: reduced gradient does not broadcast to input");
    view.mapv(|d| d * scale)
}

/// `y = Σ_axes x`; with `keepdim` the summed axes stay as size-1 dimensions. Empty `axes`
/// returns `x` unchanged (NumPy's `axis=()`).
///
/// # Errors
/// `BadAxes` if an axis repeats or is out of range.
pub fn sum<F: Float>(tape: &mut Tape<F>, x: Var, axes: &[usize], keepdim: bool) -> Result<Var> {
    let xv = tape.checked(x, OP)?;
    tape.check_batch_axis(OP, x, !axes.contains(&0))?;
    let sorted = sorted_axes(OP, axes, xv.shape())?;
    let y = reduce_sum(xv, &sorted, keepdim);
    Ok(tape.push_op(y, &[x], || Op::Sum {
        x,
        axes: sorted,
        keepdim,
    }))
}

/// Sum of all elements, a 0-dimensional value.
pub fn sum_all<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let all: Vec<usize> = (0..tape.checked(x, OP)?.ndim()).collect();
    sum(tape, x, &all, false)
}

/// `dx = dy` broadcast back over the summed axes.
pub(crate) fn sum_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    x: Var,
    axes: &[usize],
    keepdim: bool,
    dy: ArrayD<F>,
) {
    let shape = bw.shape(x).to_vec();
    bw.add(x, expand_grad(dy, axes, keepdim, &shape, F::one()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;

    #[test]
    fn gradcheck_sum_over_axes() {
        let x = uniform(&[2, 3, 4], 1);
        for (axes, keepdim) in [
            (vec![0], false),
            (vec![1], true),
            (vec![2, 0], false),
            (vec![0, 1, 2], true),
            (vec![], false),
        ] {
            check(
                |t, v| sum(t, v[0], &axes, keepdim),
                std::slice::from_ref(&x),
                2,
            )
            .unwrap();
        }
        check(|t, v| sum_all(t, v[0]), &[x], 3).unwrap();
    }

    #[test]
    fn sum_values_and_shapes() {
        let mut t = Tape::<f64>::new();
        let x =
            t.constant(ArrayD::from_shape_vec(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap());
        let s = sum(&mut t, x, &[1], true).unwrap();
        assert_eq!(t.shape(s), &[2, 1]);
        assert_eq!(t.value(s).as_slice().unwrap(), &[6., 15.]);
        let a = sum_all(&mut t, x).unwrap();
        assert_eq!(t.shape(a), &[] as &[usize]);
        assert_eq!(t.value(a).sum(), 21.);
    }

    #[test]
    fn sum_rejects_bad_axes() {
        let mut t = Tape::<f32>::new();
        let x = t.leaf(ArrayD::zeros(vec![2, 3]));
        assert!(matches!(
            sum(&mut t, x, &[2], false),
            Err(AutogradError::BadAxes { .. })
        ));
        assert!(matches!(
            sum(&mut t, x, &[1, 1], false),
            Err(AutogradError::BadAxes { .. })
        ));
    }
}
