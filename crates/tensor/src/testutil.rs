//! Shared test helpers: seeded random arrays and bitwise comparison.

use crate::Float;
use ndarray::{Array, Array4, Dimension, IntoDimension};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Uniform `[-1, 1)` array of the given shape from `seed`.
pub fn rand_array<F: Float, D: Dimension, Sh: IntoDimension<Dim = D>>(
    shape: Sh,
    seed: u64,
) -> Array<F, D> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dim = shape.into_dimension();
    let n = dim.size();
    let v: Vec<F> = (0..n)
        .map(|_| F::from_f64(rng.random_range(-1.0..1.0)))
        .collect();
    Array::from_shape_vec(dim, v).expect("shape and data agree")
}

/// Bit patterns (as f64 bits) for exact comparison.
pub fn bits<F: Float, D: Dimension>(a: &Array<F, D>) -> Vec<u64> {
    a.iter().map(|&v| v.to_f64().to_bits()).collect()
}

/// Naive direct-loop convolution (the reference the fast kernels are tested against):
/// `y[n, co, oh, ow] = b[co] + Σ_{ci_g, ki, kj} w[co, ci_g, ki, kj] · x[n, g·c_in_g + ci_g, ih, iw]`.
pub fn naive_conv2d(
    x: &ndarray::Array4<f64>,
    w: &ndarray::Array4<f64>,
    bias: Option<&ndarray::Array1<f64>>,
    p: &crate::Conv2dParams,
) -> ndarray::Array4<f64> {
    let (n, c_in, h, wd) = x.dim();
    let (c_out, cin_g, kh, kw) = w.dim();
    let (ho, wo) = p.output_hw(h, wd, kh, kw).unwrap();
    let cout_g = c_out / p.groups;
    assert_eq!(cin_g * p.groups, c_in);
    let mut y = ndarray::Array4::<f64>::zeros((n, c_out, ho, wo));
    for s in 0..n {
        for co in 0..c_out {
            let gi = co / cout_g;
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut acc = bias.map_or(0.0, |b| b[co]);
                    for cg in 0..cin_g {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let ih = (oh * p.stride.0 + ki * p.dilation.0) as isize
                                    - p.padding.0 as isize;
                                let iw = (ow * p.stride.1 + kj * p.dilation.1) as isize
                                    - p.padding.1 as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                    continue;
                                }
                                acc += w[[co, cg, ki, kj]]
                                    * x[[s, gi * cin_g + cg, ih as usize, iw as usize]];
                            }
                        }
                    }
                    y[[s, co, oh, ow]] = acc;
                }
            }
        }
    }
    y
}

/// Naive direct-loop gradients of [`naive_conv2d`] for upstream `dy`: `(dx, dw)` with
/// `dx[s, ci, ih, iw] = Σ w·dy` and `dw[co, cg, ki, kj] = Σ x·dy` over all taps that touch them.
pub fn naive_conv2d_backward(
    x: &ndarray::Array4<f64>,
    w: &ndarray::Array4<f64>,
    dy: &ndarray::Array4<f64>,
    p: &crate::Conv2dParams,
) -> (ndarray::Array4<f64>, ndarray::Array4<f64>) {
    let (n, _, h, wd) = x.dim();
    let (c_out, cin_g, kh, kw) = w.dim();
    let (_, _, ho, wo) = dy.dim();
    let cout_g = c_out / p.groups;
    let mut dx = ndarray::Array4::<f64>::zeros(x.dim());
    let mut dw = ndarray::Array4::<f64>::zeros(w.dim());
    for s in 0..n {
        for co in 0..c_out {
            let gi = co / cout_g;
            for oh in 0..ho {
                for ow in 0..wo {
                    let g = dy[[s, co, oh, ow]];
                    for cg in 0..cin_g {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let ih = (oh * p.stride.0 + ki * p.dilation.0) as isize
                                    - p.padding.0 as isize;
                                let iw = (ow * p.stride.1 + kj * p.dilation.1) as isize
                                    - p.padding.1 as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= wd as isize {
                                    continue;
                                }
                                let xi = [s, gi * cin_g + cg, ih as usize, iw as usize];
                                dx[xi] += w[[co, cg, ki, kj]] * g;
                                dw[[co, cg, ki, kj]] += x[xi] * g;
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw)
}

/// Largest `|a − b| / (1 + |b|)` over two same-shaped arrays (mixed absolute/relative error).
pub fn max_rel_err<D: Dimension>(a: &Array<f64, D>, b: &Array<f64, D>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "max_rel_err: shapes differ");
    a.iter().zip(b.iter()).fold(0.0f64, |m, (&u, &v)| {
        let e = (u - v).abs() / (1.0 + v.abs());
        // a NaN anywhere is the result (`f64::max` would drop it, hiding a missed output)
        if e.is_nan() || e > m {
            e
        } else {
            m
        }
    })
}

/// Checks `analytic` against central differences `(L(x + h·e_i) − L(x − h·e_i)) / 2h` for every
/// element `i` of `x` (f64, `h = 1e-6`, tolerance `1e-7 + 1e-5·|numeric|`). Panics with the
/// index and both values on the first mismatch.
pub fn check_fd<D: Dimension>(
    what: &str,
    x: &Array<f64, D>,
    analytic: &Array<f64, D>,
    loss: impl Fn(&Array<f64, D>) -> f64,
) {
    const H: f64 = 1e-6;
    const RTOL: f64 = 1e-5;
    const ATOL: f64 = 1e-7;
    assert_eq!(x.shape(), analytic.shape(), "{what}: gradient shape");
    assert!(
        x.is_standard_layout() && analytic.is_standard_layout(),
        "{what}: layouts"
    );
    let mut xp = x.clone();
    for (i, &a) in analytic.iter().enumerate() {
        let orig = xp.as_slice_memory_order().expect("contiguous")[i];
        xp.as_slice_memory_order_mut().expect("contiguous")[i] = orig + H;
        let lp = loss(&xp);
        xp.as_slice_memory_order_mut().expect("contiguous")[i] = orig - H;
        let lm = loss(&xp);
        xp.as_slice_memory_order_mut().expect("contiguous")[i] = orig;
        let num = (lp - lm) / (2.0 * H);
        assert!(
            (a - num).abs() <= ATOL + RTOL * num.abs(),
            "{what}: index {i}: analytic {a} vs numeric {num}"
        );
    }
}

/// `Σ a ⊙ b`.
pub fn inner<D: Dimension>(a: &Array<f64, D>, b: &Array<f64, D>) -> f64 {
    a.iter().zip(b.iter()).map(|(u, v)| u * v).sum()
}

/// f32 copy → f64.
pub fn to_f64<D: Dimension>(a: &Array<f32, D>) -> Array<f64, D> {
    a.mapv(|v| v as f64)
}

/// `x` stored with its last two axes swapped: `.view().permuted_axes([0, 1, 3, 2])` of the
/// result is `x` again, in a non-standard layout (to test that kernels accept such views).
pub fn hw_swapped<F: Clone>(x: &Array4<F>) -> Array4<F> {
    x.view()
        .permuted_axes([0, 1, 3, 2])
        .as_standard_layout()
        .into_owned()
}
