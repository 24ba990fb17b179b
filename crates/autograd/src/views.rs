//! Fixed-rank views of the tape's dynamic-rank values, with errors naming the op.

use ndarray::{ArrayD, ArrayView1, ArrayView2, ArrayView4, Dimension};

use crate::{AutogradError, Float, Result};

fn view<'a, F: Float, D: Dimension>(
    op: &'static str,
    x: &'a ArrayD<F>,
    expected: &str,
) -> Result<ndarray::ArrayView<'a, F, D>> {
    x.view()
        .into_dimensionality::<D>()
        .map_err(|_| AutogradError::BadShape {
            op,
            shape: x.shape().to_vec(),
            expected: expected.into(),
        })
}

/// A 1-D view of `x`, or `BadShape` naming `op`.
pub(crate) fn as1<'a, F: Float>(op: &'static str, x: &'a ArrayD<F>) -> Result<ArrayView1<'a, F>> {
    view(op, x, "a 1-D vector")
}

/// A 2-D view of `x`, or `BadShape` naming `op`.
pub(crate) fn as2<'a, F: Float>(op: &'static str, x: &'a ArrayD<F>) -> Result<ArrayView2<'a, F>> {
    view(op, x, "a 2-D matrix")
}

/// A 4-D (NCHW) view of `x`, or `BadShape` naming `op`.
pub(crate) fn as4<'a, F: Float>(op: &'static str, x: &'a ArrayD<F>) -> Result<ArrayView4<'a, F>> {
    view(op, x, "a 4-D tensor [n, c, h, w]")
}

/// An upstream gradient as a 4-D array (it always has its op's output rank).
pub(crate) fn grad4<F: Float>(dy: ArrayD<F>) -> ndarray::Array4<F> {
    dy.into_dimensionality()
        .expect("hla-autograd internal error: gradient rank differs from its output's")
}

/// An upstream gradient as a 2-D array (it always has its op's output rank).
pub(crate) fn grad2<F: Float>(dy: ArrayD<F>) -> ndarray::Array2<F> {
    dy.into_dimensionality()
        .expect("hla-autograd internal error: gradient rank differs from its output's")
}
