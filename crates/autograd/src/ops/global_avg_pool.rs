//! Global average pooling, `[n, c, h, w] → [n, c]` (the head of the ResNets).

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::views::{as4, grad2};
use crate::{Float, Result, Tape, Var};

const OP: &str = "global_avg_pool";

/// `y[n, c] = mean over h, w of x[n, c]`.
///
/// # Shapes
/// `x`: `[n, c, h, w]` → `[n, c]`.
/// # Errors
/// `BadShape` if `x` is not 4-D.
pub fn global_avg_pool<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let par = tape.par();
    let y = hla_tensor::global_avg_pool(as4(OP, tape.checked(x, OP)?)?, par);
    Ok(tape.push_op(y.into_dyn(), &[x], || Op::GlobalAvgPool { x }))
}

/// `dx[n, c, ·, ·] = dy[n, c] / (h·w)`.
pub(crate) fn global_avg_pool_backward<F: Float>(bw: &mut Backprop<'_, F>, x: Var, dy: ArrayD<F>) {
    let shape = bw.shape(x);
    let x_hw = (shape[2], shape[3]);
    let dx = hla_tensor::global_avg_pool_backward(grad2(dy).view(), x_hw, bw.par);
    bw.add(x, dx.into_dyn());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;

    #[test]
    fn gradcheck_global_avg_pool() {
        check(
            |t, v| global_avg_pool(t, v[0]),
            &[uniform(&[2, 3, 4, 5], 1)],
            2,
        )
        .unwrap();
    }
}
