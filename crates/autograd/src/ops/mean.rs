//! Mean over axes, `y = (1/N) Σ_axes x` with N the number of summed elements.

use ndarray::ArrayD;

use crate::op::Op;
use crate::ops::sum::{expand_grad, reduce_sum, sorted_axes};
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "mean";

/// `y = (1/N) Σ_axes x`, N = product of the reduced dimensions; `keepdim` as in [`super::sum`].
///
/// # Errors
/// `BadAxes` if an axis repeats or is out of range.
pub fn mean<F: Float>(tape: &mut Tape<F>, x: Var, axes: &[usize], keepdim: bool) -> Result<Var> {
    let xv = tape.checked(x, OP)?;
    tape.check_batch_axis(OP, x, !axes.contains(&0))?;
    let sorted = sorted_axes(OP, axes, xv.shape())?;
    let count: usize = sorted.iter().map(|&a| xv.shape()[a]).product();
    let inv = F::one() / F::from_f64(count as f64);
    let mut y = reduce_sum(xv, &sorted, keepdim);
    y.mapv_inplace(|v| v * inv);
    Ok(tape.push_op(y, &[x], || Op::Mean {
        x,
        axes: sorted,
        keepdim,
    }))
}

/// Mean of all elements, a 0-dimensional value.
pub fn mean_all<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    let all: Vec<usize> = (0..tape.checked(x, OP)?.ndim()).collect();
    mean(tape, x, &all, false)
}

/// `dx = dy / N` broadcast back over the reduced axes.
pub(crate) fn mean_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    x: Var,
    axes: &[usize],
    keepdim: bool,
    dy: ArrayD<F>,
) {
    let shape = bw.shape(x).to_vec();
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    let inv = F::one() / F::from_f64(count as f64);
    bw.add(x, expand_grad(dy, axes, keepdim, &shape, inv));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;

    #[test]
    fn gradcheck_mean_over_axes() {
        let x = uniform(&[3, 2, 5], 4);
        for (axes, keepdim) in [(vec![2], false), (vec![0, 2], true), (vec![1], false)] {
            check(
                |t, v| mean(t, v[0], &axes, keepdim),
                std::slice::from_ref(&x),
                5,
            )
            .unwrap();
        }
        check(|t, v| mean_all(t, v[0]), &[x], 6).unwrap();
    }

    #[test]
    fn mean_value() {
        let mut t = Tape::<f64>::new();
        let x = t.constant(ArrayD::from_shape_vec(vec![2, 2], vec![1., 2., 3., 6.]).unwrap());
        let m = mean(&mut t, x, &[0], false).unwrap();
        assert_eq!(t.value(m).as_slice().unwrap(), &[2., 4.]);
    }
}
