//! 2-D average pooling (padding counted in the divisor, PyTorch's default
//! `count_include_pad = True`).

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::views::{as4, grad4};
use crate::{Float, Pool2dParams, Result, Tape, Var};

const OP: &str = "avg_pool2d";

/// `y[n, c, i, j] = (1/(k_h·k_w)) Σ` over the window at `(i, j)`.
///
/// # Shapes
/// `x`: `[n, c, h, w]` → `[n, c, h_out, w_out]`.
/// # Errors
/// `BadShape` if `x` is not 4-D; the kernel's errors for windows that do not fit.
pub fn avg_pool2d<F: Float>(tape: &mut Tape<F>, x: Var, p: &Pool2dParams) -> Result<Var> {
    let xv = as4(OP, tape.checked(x, OP)?)?;
    let y = hla_tensor::avg_pool2d(xv, p, tape.par())?;
    let p = *p;
    Ok(tape.push_op(y.into_dyn(), &[x], || Op::AvgPool2d { x, p }))
}

/// `dx` = each `dy` spread evenly over its window.
pub(crate) fn avg_pool2d_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    x: Var,
    p: &Pool2dParams,
    dy: ArrayD<F>,
) -> Result<()> {
    let shape = bw.shape(x);
    let x_hw = (shape[2], shape[3]);
    let dx = hla_tensor::avg_pool2d_backward(grad4(dy).view(), x_hw, p)?;
    bw.add(x, dx.into_dyn());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;

    #[test]
    fn gradcheck_avg_pool() {
        let x = uniform(&[2, 3, 5, 7], 1);
        for p in [Pool2dParams::new(2, 2, 0), Pool2dParams::new(3, 2, 1)] {
            check(|t, v| avg_pool2d(t, v[0], &p), std::slice::from_ref(&x), 2).unwrap();
        }
    }
}
