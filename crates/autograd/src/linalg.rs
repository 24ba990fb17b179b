//! GEMM entry point used by the matrix ops (one place to route to the kernels crate).

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::{Float, Result};

/// `C ← α·A·B + β·C` with `A: [m, k]`, `B: [k, n]`, `C: [m, n]`; transposed views are free.
pub(crate) fn gemm<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    c: ArrayViewMut2<'_, F>,
) -> Result<()> {
    Ok(hla_tensor::gemm(alpha, a, b, beta, c)?)
}
