//! 2-D max pooling; on ties the gradient goes to the first maximum in scan order (PyTorch).

use ndarray::{Array4, ArrayD};

use crate::op::Op;
use crate::tape::Backprop;
use crate::views::{as4, grad4};
use crate::{Float, Pool2dParams, Result, Tape, Var};

const OP: &str = "max_pool2d";

/// `y[n, c, i, j] = max` of the window at `(i, j)`.
///
/// # Shapes
/// `x`: `[n, c, h, w]` → `[n, c, h_out, w_out]`, `h_out = (h + 2·pad − k) / stride + 1`.
/// # Errors
/// `BadShape` if `x` is not 4-D; the kernel's errors for windows that do not fit.
pub fn max_pool2d<F: Float>(tape: &mut Tape<F>, x: Var, p: &Pool2dParams) -> Result<Var> {
    let xv = as4(OP, tape.checked(x, OP)?)?;
    if !tape.any_requires_grad(&[x]) {
        // no backward: the faster values-only kernel (same bits)
        let y = hla_tensor::max_pool2d_values(xv, p, tape.par())?;
        return Ok(tape.push_op(y.into_dyn(), &[x], || unreachable!("x needs no gradient")));
    }
    let (y, argmax) = hla_tensor::max_pool2d(xv, p, tape.par())?;
    Ok(tape.push_op(y.into_dyn(), &[x], || Op::MaxPool2d { x, argmax }))
}

/// `dx[argmax] += dy`; the saved argmax (u32 per output) is all backward needs.
pub(crate) fn max_pool2d_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    x: Var,
    argmax: Array4<u32>,
    dy: ArrayD<F>,
) -> Result<()> {
    let shape = bw.shape(x);
    let x_hw = (shape[2], shape[3]);
    let dx = hla_tensor::max_pool2d_backward(grad4(dy).view(), argmax.view(), x_hw, bw.par)?;
    bw.add(x, dx.into_dyn());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;

    #[test]
    fn gradcheck_max_pool_without_ties() {
        let x = crate::testutil::distinct(&[2, 3, 5, 7], 0.0, 1);
        for p in [Pool2dParams::new(2, 2, 0), Pool2dParams::new(3, 2, 1)] {
            check(|t, v| max_pool2d(t, v[0], &p), std::slice::from_ref(&x), 2).unwrap();
        }
    }

    /// Ties send the gradient to the first max in scan order: window [1, 1; 1, 0] → position 0.
    #[test]
    fn ties_go_to_first_max() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(ArrayD::from_shape_vec(vec![1, 1, 2, 2], vec![1., 1., 1., 0.]).unwrap());
        let y = max_pool2d(&mut t, x, &Pool2dParams::new(2, 2, 0)).unwrap();
        let g = t
            .backward_with(y, ArrayD::from_elem(vec![1, 1, 1, 1], 3.0))
            .unwrap();
        assert_eq!(g.get(x).unwrap().as_slice().unwrap(), &[3., 0., 0., 0.]);
    }
}
