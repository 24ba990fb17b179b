//! Element-wise ReLU and ReLU6 with their backward, on arrays of any dimension. NaN passes
//! through the forward like PyTorch's `clamp`; at the kinks the gradient is 0 (PyTorch's choice).

use crate::elementwise::{map, map_pair, PAR_MIN};
use crate::{Float, Par};
use ndarray::{ArrayD, ArrayViewD, Zip};

/// An activation applied to each value: what [`relu`] and [`relu6`] compute, and what the conv
/// kernels fuse into their epilogue ([`crate::conv2d_act`], [`crate::ternary_conv`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Identity.
    None,
    /// `max(y, 0)`.
    Relu,
    /// `min(max(y, 0), 6)`.
    Relu6,
}

impl Activation {
    /// Applies the activation to one value (NaN stays NaN, −0.0 stays −0.0).
    #[inline]
    pub fn apply<F: Float>(self, v: F) -> F {
        match self {
            Activation::None => v,
            Activation::Relu => {
                if v < F::zero() {
                    F::zero()
                } else {
                    v
                }
            }
            Activation::Relu6 => {
                let six = F::from_f64(6.0);
                if v < F::zero() {
                    F::zero()
                } else if v > six {
                    six
                } else {
                    v
                }
            }
        }
    }
}

/// `f` applied element-wise. Contiguous inputs go through plain slices split into fixed
/// blocks (vectorisable loops; ndarray's parallel `Zip` splits per element and was a third of
/// MobileNetV2's inference time).
fn map1<F: Float>(x: ArrayViewD<F>, par: Par, f: impl Fn(F) -> F + Sync + Send) -> ArrayD<F> {
    let par = if x.len() >= PAR_MIN { par } else { Par::Seq };
    match x.as_slice() {
        Some(xs) => {
            let out = map(xs, par, f);
            ArrayD::from_shape_vec(x.raw_dim(), out).expect("same element count")
        }
        None if par == Par::Rayon => Zip::from(&x).par_map_collect(|&v| f(v)),
        None => x.mapv(f),
    }
}

/// `f` applied element-wise to two same-shaped arrays (contiguous: as [`map1`]).
fn map2<F: Float>(
    x: ArrayViewD<F>,
    y: ArrayViewD<F>,
    par: Par,
    f: impl Fn(F, F) -> F + Sync + Send,
) -> ArrayD<F> {
    let par = if x.len() >= PAR_MIN { par } else { Par::Seq };
    match (x.as_slice(), y.as_slice()) {
        (Some(xs), Some(ys)) if x.shape() == y.shape() => {
            let out = map_pair(xs, ys, par, f);
            ArrayD::from_shape_vec(x.raw_dim(), out).expect("same element count")
        }
        _ => {
            let z = Zip::from(&x).and(&y);
            if par == Par::Rayon {
                z.par_map_collect(|&a, &b| f(a, b))
            } else {
                z.map_collect(|&a, &b| f(a, b))
            }
        }
    }
}

/// `y = max(x, 0)` (NaN stays NaN). Shape: any → same.
pub fn relu<F: Float>(x: ArrayViewD<F>, par: Par) -> ArrayD<F> {
    map1(x, par, |v| Activation::Relu.apply(v))
}

/// `y = max(a + b, 0)` in one pass (a residual block's sum and ReLU): the same bits as
/// [`relu`] of the sum, without writing and re-reading the sum. Shapes: `a`, `b` the same
/// (any) → same.
///
/// # Panics
/// If `a` and `b` differ in shape (callers check: the autograd op returns an error).
pub fn add_relu<F: Float>(a: ArrayViewD<F>, b: ArrayViewD<F>, par: Par) -> ArrayD<F> {
    assert_eq!(
        a.shape(),
        b.shape(),
        "add_relu: a {:?} vs b {:?}",
        a.shape(),
        b.shape()
    );
    map2(a, b, par, |x, y| Activation::Relu.apply(x + y))
}

/// `dx = dy ⊙ 1[x > 0]`. Shapes: `x`, `dy` the same (any) → same.
///
/// # Panics
/// If `x` and `dy` differ in shape (a caller bug: they come from one forward).
pub fn relu_backward<F: Float>(x: ArrayViewD<F>, dy: ArrayViewD<F>, par: Par) -> ArrayD<F> {
    assert_eq!(
        x.shape(),
        dy.shape(),
        "relu_backward: x {:?} vs dy {:?}",
        x.shape(),
        dy.shape()
    );
    map2(x, dy, par, |v, d| if v > F::zero() { d } else { F::zero() })
}

/// `y = min(max(x, 0), 6)` (NaN stays NaN). Shape: any → same.
pub fn relu6<F: Float>(x: ArrayViewD<F>, par: Par) -> ArrayD<F> {
    map1(x, par, |v| Activation::Relu6.apply(v))
}

/// `dx = dy ⊙ 1[0 < x < 6]`. Shapes: `x`, `dy` the same (any) → same.
///
/// # Panics
/// If `x` and `dy` differ in shape (a caller bug: they come from one forward).
pub fn relu6_backward<F: Float>(x: ArrayViewD<F>, dy: ArrayViewD<F>, par: Par) -> ArrayD<F> {
    assert_eq!(
        x.shape(),
        dy.shape(),
        "relu6_backward: x {:?} vs dy {:?}",
        x.shape(),
        dy.shape()
    );
    let six = F::from_f64(6.0);
    // `&`, not `&&`: a select the compiler vectorises, not a branch per element
    map2(x, dy, par, |v, d| {
        if (v > F::zero()) & (v < six) {
            d
        } else {
            F::zero()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{check_fd, inner, rand_array};
    use ndarray::{arr1, IxDyn};

    #[test]
    fn relu_and_relu6_values_and_nan() {
        let x = arr1(&[-2.0f32, -0.0, 0.5, 5.5, 6.0, 7.0, f32::NAN]).into_dyn();
        let y = relu(x.view(), Par::Rayon);
        assert_eq!(&y.as_slice().unwrap()[..6], &[0.0, 0.0, 0.5, 5.5, 6.0, 7.0]);
        assert!(y[6].is_nan());
        let y6 = relu6(x.view(), Par::Rayon);
        assert_eq!(
            &y6.as_slice().unwrap()[..6],
            &[0.0, 0.0, 0.5, 5.5, 6.0, 6.0]
        );
        assert!(y6[6].is_nan());
        let dy = arr1(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).into_dyn();
        // Kinks (0 and 6) get gradient 0.
        assert_eq!(
            relu_backward(x.view(), dy.view(), Par::Rayon)
                .as_slice()
                .unwrap(),
            &[0.0, 0.0, 3.0, 4.0, 5.0, 6.0, 0.0]
        );
        assert_eq!(
            relu6_backward(x.view(), dy.view(), Par::Rayon)
                .as_slice()
                .unwrap(),
            &[0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0]
        );
    }

    /// Large arrays take the parallel path: same values as the element-wise definition.
    #[test]
    fn large_arrays_match_elementwise_definition() {
        let x = rand_array::<f32, _, _>(IxDyn(&[3, 5, 61, 47]), 8).mapv(|v| 8.0 * v);
        let dy = rand_array::<f32, _, _>(IxDyn(&[3, 5, 61, 47]), 9);
        assert!(x.len() >= PAR_MIN);
        assert_eq!(relu(x.view(), Par::Rayon), x.mapv(|v| v.max(0.0)));
        assert_eq!(relu6(x.view(), Par::Rayon), x.mapv(|v| v.clamp(0.0, 6.0)));
        let y = dy.mapv(|v| 8.0 * v - 4.0);
        let sum = ndarray::Zip::from(&x).and(&y).map_collect(|&a, &b| a + b);
        assert_eq!(
            add_relu(x.view(), y.view(), Par::Rayon),
            relu(sum.view(), Par::Seq)
        );
        let xt = x.t(); // not contiguous: the Zip path
        let yt = y.t();
        let sum_t = ndarray::Zip::from(&xt).and(&yt).map_collect(|&a, &b| a + b);
        assert_eq!(add_relu(xt, yt, Par::Rayon), relu(sum_t.view(), Par::Seq));
        let r = Zip::from(&x)
            .and(&dy)
            .map_collect(|&v, &d| if v > 0.0 { d } else { 0.0 });
        assert_eq!(relu_backward(x.view(), dy.view(), Par::Rayon), r);
        let r6 = Zip::from(&x)
            .and(&dy)
            .map_collect(|&v, &d| if v > 0.0 && v < 6.0 { d } else { 0.0 });
        assert_eq!(relu6_backward(x.view(), dy.view(), Par::Rayon), r6);
    }

    #[test]
    fn relu_gradients_match_finite_differences() {
        // Values in (-8, 8) on a 2×3×5 grid, kept away from the kinks 0 and 6.
        let x = rand_array::<f64, _, _>(IxDyn(&[2, 3, 5]), 3).mapv(|v| {
            let v = 8.0 * v;
            if v.abs() < 0.05 || (v - 6.0).abs() < 0.05 {
                v + 0.2
            } else {
                v
            }
        });
        let g = rand_array::<f64, _, _>(IxDyn(&[2, 3, 5]), 4);
        check_fd(
            "relu",
            &x,
            &relu_backward(x.view(), g.view(), Par::Rayon),
            |xp| inner(&relu(xp.view(), Par::Rayon), &g),
        );
        check_fd(
            "relu6",
            &x,
            &relu6_backward(x.view(), g.view(), Par::Rayon),
            |xp| inner(&relu6(xp.view(), Par::Rayon), &g),
        );
    }
}
