//! Element-wise ReLU and ReLU6 with their backward, on arrays of any dimension. NaN passes
//! through the forward like PyTorch's `clamp`; at the kinks the gradient is 0 (PyTorch's choice).

use crate::Float;
use ndarray::{ArrayD, ArrayViewD, Zip};

/// `y = max(x, 0)` (NaN stays NaN). Shape: any → same.
pub fn relu<F: Float>(x: ArrayViewD<F>) -> ArrayD<F> {
    x.mapv(|v| if v < F::zero() { F::zero() } else { v })
}

/// `dx = dy ⊙ 1[x > 0]`. Shapes: `x`, `dy` the same (any) → same.
///
/// # Panics
/// If `x` and `dy` differ in shape (a caller bug: they come from one forward).
pub fn relu_backward<F: Float>(x: ArrayViewD<F>, dy: ArrayViewD<F>) -> ArrayD<F> {
    assert_eq!(
        x.shape(),
        dy.shape(),
        "relu_backward: x {:?} vs dy {:?}",
        x.shape(),
        dy.shape()
    );
    Zip::from(&x)
        .and(&dy)
        .map_collect(|&v, &d| if v > F::zero() { d } else { F::zero() })
}

/// `y = min(max(x, 0), 6)` (NaN stays NaN). Shape: any → same.
pub fn relu6<F: Float>(x: ArrayViewD<F>) -> ArrayD<F> {
    let six = F::from_f64(6.0);
    x.mapv(|v| {
        if v < F::zero() {
            F::zero()
        } else if v > six {
            six
        } else {
            v
        }
    })
}

/// `dx = dy ⊙ 1[0 < x < 6]`. Shapes: `x`, `dy` the same (any) → same.
///
/// # Panics
/// If `x` and `dy` differ in shape (a caller bug: they come from one forward).
pub fn relu6_backward<F: Float>(x: ArrayViewD<F>, dy: ArrayViewD<F>) -> ArrayD<F> {
    assert_eq!(
        x.shape(),
        dy.shape(),
        "relu6_backward: x {:?} vs dy {:?}",
        x.shape(),
        dy.shape()
    );
    let six = F::from_f64(6.0);
    Zip::from(&x).and(&dy).map_collect(|&v, &d| {
        if v > F::zero() && v < six {
            d
        } else {
            F::zero()
        }
    })
}
