//! Scalar trait for the method's plain (tape-free) numerics, and the row view of a weight tensor.
//!
//! The method works on weights viewed as a matrix `[n, m]`: row j (= the paper's column w_j) holds
//! the m = fan-in weights of output unit j (spec section 1). A conv weight
//! `[c_out, c_in/groups, k_h, k_w]` is `[c_out, (c_in/groups)·k_h·k_w]`, a linear `[out, in]` is itself.
//!
//! Guide: [Conventions](crate::guide#conventions).

use crate::error::{HlaError, Result};
use ndarray::{ArrayD, ArrayView2, ArrayViewD, Ix2};

/// f32 / f64: what the plain numerics need. Implemented for every `num_traits::Float` that is
/// also `Debug + Display + Send + Sync + 'static`, so any `hla_tensor::Float` qualifies.
///
/// Guide: [Conventions](crate::guide#conventions).
pub trait Real:
    num_traits::Float + std::fmt::Debug + std::fmt::Display + Send + Sync + Default + 'static
{
}
impl<T> Real for T where
    T: num_traits::Float + std::fmt::Debug + std::fmt::Display + Send + Sync + Default + 'static
{
}

/// `x` (an f64 constant) as `F`. f64 → f32 rounds to nearest; it cannot fail for finite input.
///
/// Guide: [Conventions](crate::guide#conventions).
#[inline]
pub fn cst<F: Real>(x: f64) -> F {
    <F as num_traits::NumCast>::from(x).expect("f64 -> Float conversion of a finite constant")
}

/// `x` as f64 (lossless for f32 and f64).
///
/// Guide: [Conventions](crate::guide#conventions).
#[inline]
pub fn to_f64<F: Real>(x: F) -> f64 {
    <f64 as num_traits::NumCast>::from(x).unwrap_or(f64::NAN)
}

/// `(n, m)` of a weight tensor viewed as rows: n = dim 0, m = product of the other dims.
///
/// Guide: [Conventions](crate::guide#conventions).
///
/// # Errors
/// `BadRank` if the tensor has rank < 2 (a weight matrix needs rows and a fan-in).
pub fn rows_shape(op: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 {
        return Err(HlaError::BadRank {
            op,
            min_rank: 2,
            shape: shape.to_vec(),
        });
    }
    // Checked: shapes can come from files, where a wrapped product would pass length checks.
    let m = shape[1..]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&m| m.checked_mul(shape[0]).is_some())
        .ok_or_else(|| HlaError::ShapeOverflow {
            op,
            shape: shape.to_vec(),
        })?;
    Ok((shape[0], m))
}

/// Calls `f` with `w` viewed as `[n, m]` rows (copying only if `w` is not in standard layout).
///
/// Guide: [Conventions](crate::guide#conventions).
///
/// # Errors
/// `BadRank` if `w` has rank < 2.
pub fn with_rows<F: Real, R>(
    op: &'static str,
    w: ArrayViewD<'_, F>,
    f: impl FnOnce(ArrayView2<'_, F>) -> R,
) -> Result<R> {
    let (n, m) = rows_shape(op, w.shape())?;
    let std = w.as_standard_layout();
    let v = std
        .view()
        .into_shape_with_order((n, m))
        .expect("standard-layout tensor reshapes to its row view");
    Ok(f(v))
}

/// Reshapes an owned `[n, m]` result back to `shape` (same number of elements).
///
/// Guide: [Conventions](crate::guide#conventions).
pub fn from_rows<F: Real>(a: ndarray::Array2<F>, shape: &[usize]) -> ArrayD<F> {
    let a = if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    };
    a.into_shape_with_order(ndarray::IxDyn(shape))
        .expect("row view has the same element count as the tensor")
}

/// Checks that every value is finite; returns the first offender as a `NonFinite` error.
///
/// Guide: [Conventions](crate::guide#conventions).
pub fn check_finite<'a, F: Real>(op: &'static str, it: impl Iterator<Item = &'a F>) -> Result<()> {
    for (index, &v) in it.enumerate() {
        if !v.is_finite() {
            return Err(HlaError::NonFinite {
                op,
                index,
                value: to_f64(v),
            });
        }
    }
    Ok(())
}

/// Shorthand used by tests and callers: a 2-D view of a dynamic array that is known to be 2-D.
///
/// Guide: [Conventions](crate::guide#conventions).
pub fn view2<F: Real>(a: &ArrayD<F>) -> Option<ArrayView2<'_, F>> {
    a.view().into_dimensionality::<Ix2>().ok()
}
