//! Permutation of axes (and transpose): `y[i_p0, i_p1, …] = x[i_0, i_1, …]`.

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::{AutogradError, Float, Result, Tape, Var};

const OP: &str = "permute";

/// Axis `k` of `y` is axis `axes[k]` of `x` (PyTorch's `permute`). The result is stored in
/// standard layout (one copy), so every later op sees contiguous data.
///
/// # Errors
/// `BadAxes` if `axes` is not a permutation of `0..ndim`.
pub fn permute<F: Float>(tape: &mut Tape<F>, x: Var, axes: &[usize]) -> Result<Var> {
    let xv = tape.checked(x, OP)?;
    tape.check_batch_axis(OP, x, axes.first() == Some(&0))?;
    let mut seen = vec![false; xv.ndim()];
    let valid = axes.len() == xv.ndim()
        && axes
            .iter()
            .all(|&a| a < seen.len() && !std::mem::replace(&mut seen[a], true));
    if !valid {
        return Err(AutogradError::BadAxes {
            op: OP,
            axes: axes.to_vec(),
            shape: xv.shape().to_vec(),
        });
    }
    let y = xv
        .view()
        .permuted_axes(axes)
        .as_standard_layout()
        .into_owned();
    let axes = axes.to_vec();
    Ok(tape.push_op(y, &[x], || Op::Permute { x, axes }))
}

/// Swaps axes `a0` and `a1`.
///
/// # Errors
/// `BadAxes` if either is out of range.
pub fn transpose<F: Float>(tape: &mut Tape<F>, x: Var, a0: usize, a1: usize) -> Result<Var> {
    let ndim = tape.checked(x, "transpose")?.ndim();
    if a0 >= ndim || a1 >= ndim {
        return Err(AutogradError::BadAxes {
            op: "transpose",
            axes: vec![a0, a1],
            shape: tape.shape(x).to_vec(),
        });
    }
    let mut axes: Vec<usize> = (0..ndim).collect();
    axes.swap(a0, a1);
    permute(tape, x, &axes)
}

/// `dx = dy` permuted by the inverse permutation.
pub(crate) fn permute_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    x: Var,
    axes: &[usize],
    dy: ArrayD<F>,
) {
    let mut inverse = vec![0; axes.len()];
    for (k, &a) in axes.iter().enumerate() {
        inverse[a] = k;
    }
    let dx = dy.permuted_axes(inverse).as_standard_layout().into_owned();
    bw.add(x, dx);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;

    #[test]
    fn gradcheck_permute_and_transpose() {
        let x = uniform(&[2, 3, 4], 1);
        check(
            |t, v| permute(t, v[0], &[2, 0, 1]),
            std::slice::from_ref(&x),
            2,
        )
        .unwrap();
        check(
            |t, v| permute(t, v[0], &[1, 2, 0]),
            std::slice::from_ref(&x),
            3,
        )
        .unwrap();
        check(|t, v| transpose(t, v[0], 0, 2), &[x], 4).unwrap();
    }

    #[test]
    fn permute_moves_elements() {
        let mut t = Tape::<f64>::new();
        let x =
            t.constant(ArrayD::from_shape_vec(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap());
        let y = transpose(&mut t, x, 0, 1).unwrap();
        assert_eq!(t.shape(y), &[3, 2]);
        assert_eq!(t.value(y).as_slice().unwrap(), &[1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn permute_rejects_non_permutations() {
        let mut t = Tape::<f32>::new();
        let x = t.leaf(ArrayD::zeros(vec![2, 3]));
        assert!(permute(&mut t, x, &[0, 0]).is_err());
        assert!(permute(&mut t, x, &[0]).is_err());
        assert!(permute(&mut t, x, &[0, 2]).is_err());
    }
}
