//! Shared test data: the matrices of the spec's section 14 and a closeness assertion.

use crate::real::{cst, to_f64, Real};
use ndarray::ArrayD;

/// T1's normalised W (`[2, 4]`): rows [10, −2, 4, −1]/11 and [2, 8, −10, 1]/13.
pub fn t1_w<F: Real>() -> ArrayD<F> {
    let v = [
        10.0 / 11.0,
        -2.0 / 11.0,
        4.0 / 11.0,
        -1.0 / 11.0,
        2.0 / 13.0,
        8.0 / 13.0,
        -10.0 / 13.0,
        1.0 / 13.0,
    ];
    ArrayD::from_shape_vec(vec![2, 4], v.iter().map(|&x| cst(x)).collect()).unwrap()
}

/// T1's latent V (`[2, 4]`), row norms 11 and 6.5.
pub fn t1_v<F: Real>() -> ArrayD<F> {
    let v = [10.0, -2.0, 4.0, -1.0, 1.0, 4.0, -5.0, 0.5];
    ArrayD::from_shape_vec(vec![2, 4], v.iter().map(|&x| cst(x)).collect()).unwrap()
}

/// T8: G ⊙ S = G ⊙ (1 − W ⊙ W) for T1's W and G = [[0.1, −0.2, 0.3, −0.4], [0.5, −0.6, 0.7,
/// −0.8]], row-major, 8 decimals (the STE gradient "with S" every STE test pins).
pub const T8_STE_WITH_S: [f64; 8] = [
    0.01735537,
    -0.19338843,
    0.26033058,
    -0.39669421,
    0.48816568,
    -0.37278107,
    0.28579882,
    -0.79526627,
];

/// T4's layer B (`[2, 2]`, unit rows): [0.6, −0.8], [0.28, 0.96].
pub fn t4_b<F: Real>() -> ArrayD<F> {
    let v = [0.6, -0.8, 0.28, 0.96];
    ArrayD::from_shape_vec(vec![2, 2], v.iter().map(|&x| cst(x)).collect()).unwrap()
}

/// Asserts element-wise |a − b| ≤ tol, printing index and both values on failure.
pub fn assert_close<'a, 'b, F: Real + 'a, G: Real + 'b>(
    a: impl IntoIterator<Item = &'a F>,
    b: impl IntoIterator<Item = &'b G>,
    tol: f64,
) {
    let a: Vec<f64> = a.into_iter().map(|&x| to_f64(x)).collect();
    let b: Vec<f64> = b.into_iter().map(|&x| to_f64(x)).collect();
    assert_eq!(a.len(), b.len(), "length mismatch: {a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tol,
            "index {i}: {x} vs {y} (|diff| {} > {tol})\n left: {a:?}\nright: {b:?}",
            (x - y).abs()
        );
    }
}
