//! Reshape (and flatten): the same elements in row-major order under a new shape.

use ndarray::{ArrayD, IxDyn};

use crate::op::Op;
use crate::tape::{standard, Backprop};
use crate::{AutogradError, Float, Result, Tape, Var};

const OP: &str = "reshape";

/// `y` = the elements of `x` in row-major order with shape `shape`.
///
/// # Errors
/// `BadShape` if the element counts differ.
pub fn reshape<F: Float>(tape: &mut Tape<F>, x: Var, shape: &[usize]) -> Result<Var> {
    let xv = tape.checked(x, OP)?;
    tape.check_batch_axis(OP, x, shape.first() == xv.shape().first())?;
    if xv.len() != shape.iter().product::<usize>() {
        return Err(AutogradError::BadShape {
            op: OP,
            shape: xv.shape().to_vec(),
            expected: format!("{} elements to match the target shape {shape:?}", xv.len()),
        });
    }
    // Node values are in standard layout, so this is a plain copy of the buffer.
    let y = xv
        .to_shape(IxDyn(shape))
        .expect("hla-autograd internal error: element count checked above")
        .into_owned();
    Ok(tape.push_op(y, &[x], || Op::Reshape { x }))
}

/// Flattens dimensions `start_dim..` into one: `[n, c, h, w]` with `start_dim = 1` →
/// `[n, c·h·w]` (PyTorch's `flatten(start_dim)`).
///
/// # Errors
/// `BadAxes` if `start_dim` is beyond the rank.
pub fn flatten<F: Float>(tape: &mut Tape<F>, x: Var, start_dim: usize) -> Result<Var> {
    let shape = tape.checked(x, "flatten")?.shape().to_vec();
    if start_dim > shape.len() {
        return Err(AutogradError::BadAxes {
            op: "flatten",
            axes: vec![start_dim],
            shape,
        });
    }
    let mut target = shape[..start_dim].to_vec();
    target.push(shape[start_dim..].iter().product());
    reshape(tape, x, &target)
}

/// `dx = dy` read in row-major order with the input's shape (no copy).
pub(crate) fn reshape_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, dy: ArrayD<F>) {
    let shape = ndarray::IxDyn(bw.shape(x));
    let dx = standard(dy)
        .into_shape_with_order(shape)
        .expect("hla-autograd internal error: reshape gradient has the input's element count");
    bw.add(x, dx);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;

    #[test]
    fn gradcheck_reshape_and_flatten() {
        let x = uniform(&[2, 3, 2], 1);
        check(
            |t, v| reshape(t, v[0], &[3, 4]),
            std::slice::from_ref(&x),
            2,
        )
        .unwrap();
        check(|t, v| flatten(t, v[0], 1), std::slice::from_ref(&x), 3).unwrap();
        check(|t, v| flatten(t, v[0], 0), &[x], 4).unwrap();
    }

    #[test]
    fn reshape_rejects_wrong_count() {
        let mut t = Tape::<f32>::new();
        let x = t.leaf(ArrayD::zeros(vec![2, 3]));
        let e = reshape(&mut t, x, &[4, 2]).unwrap_err();
        assert!(
            matches!(e, AutogradError::BadShape { op: "reshape", .. }),
            "{e}"
        );
    }
}
