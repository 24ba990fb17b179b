//! Gradient checking: the tape's gradients against central differences, in f64.
//!
//! For a function `f` of some inputs, [`check`] draws a fixed random upstream gradient `g`
//! (non-uniform, so a backward that sends the right values to the wrong positions fails) and
//! compares the tape's `dL/dx` for `L = Σ g ⊙ f(x)` with `(L(x + h) − L(x − h)) / 2h` for every
//! element of every input. Tolerances are fixed constants, never per test.

use ndarray::{ArrayD, Dimension};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{AutogradError, Result, Tape, Var};

/// Finite-difference step.
pub const H: f64 = 1e-5;
/// Relative tolerance (times `|numeric|`).
pub const RTOL: f64 = 1e-5;
/// Absolute tolerance.
pub const ATOL: f64 = 1e-7;

/// The element whose analytic and numeric gradients differ most relative to the tolerance.
#[derive(Clone, Debug, PartialEq)]
pub struct WorstElement {
    /// Position of the input in the list passed to [`check`].
    pub input: usize,
    /// Multi-index of the element.
    pub index: Vec<usize>,
    /// Gradient from backward.
    pub analytic: f64,
    /// Gradient from central differences.
    pub numeric: f64,
    /// `|analytic − numeric|`.
    pub diff: f64,
    /// `ATOL + RTOL·|numeric|`.
    pub tol: f64,
}

/// Outcome of a passing [`check`]: how many elements were compared and the worst one.
#[derive(Clone, Debug, PartialEq)]
pub struct GradcheckReport {
    /// Number of input elements compared.
    pub elements: usize,
    /// Worst element (by `diff / tol`), `None` when there were no elements.
    pub worst: Option<WorstElement>,
}

impl std::fmt::Display for GradcheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.worst {
            None => write!(f, "{} elements", self.elements),
            Some(w) => write!(
                f,
                "{} elements, worst input {} {:?}: analytic {:e} numeric {:e} (diff {:e}, tol {:e})",
                self.elements, w.input, w.index, w.analytic, w.numeric, w.diff, w.tol
            ),
        }
    }
}

/// `L = Σ g ⊙ f(xs)` evaluated on a no-grad tape, summed in index order.
fn weighted_output<Fun>(f: &Fun, xs: &[ArrayD<f64>], g: &ArrayD<f64>) -> Result<f64>
where
    Fun: Fn(&mut Tape<f64>, &[Var]) -> Result<Var>,
{
    let mut tape = Tape::no_grad();
    let vars: Vec<Var> = xs.iter().map(|x| tape.constant(x.clone())).collect();
    let y = f(&mut tape, &vars)?;
    let y = tape.value(y);
    if y.shape() != g.shape() {
        return Err(AutogradError::ShapeMismatch {
            op: "gradcheck (output shape changed between evaluations)",
            lhs: g.shape().to_vec(),
            rhs: y.shape().to_vec(),
        });
    }
    Ok(y.iter().zip(g).fold(0.0, |s, (&y, &g)| s + y * g))
}

/// Compares the tape's gradients of `L = Σ g ⊙ f(xs)` with central differences for every
/// element of every input, `g` being a random upstream gradient drawn from `seed` (entries
/// `±[0.5, 1.5]`, signs random). Before backward the tape releases every value its ops'
/// backward does not read ([`Tape::release`]), so an op whose `Op::reads` list misses a value
/// fails the check instead of a training step.
///
/// Returns the report (element count, worst element) when every element satisfies
/// `|analytic − numeric| ≤ ATOL + RTOL·|numeric|`.
///
/// # Errors
/// [`AutogradError::GradcheckMismatch`] with the worst element otherwise; any error of `f`.
pub fn check<Fun>(f: Fun, xs: &[ArrayD<f64>], seed: u64) -> Result<GradcheckReport>
where
    Fun: Fn(&mut Tape<f64>, &[Var]) -> Result<Var>,
{
    let mut tape = Tape::new();
    let vars: Vec<Var> = xs.iter().map(|x| tape.leaf(x.clone())).collect();
    let y = f(&mut tape, &vars)?;
    // keep only what backward reads (Op::reads): an op that reads more fails here
    tape.release_since(0, y);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let g = tape.value(y).mapv(|_| {
        let magnitude: f64 = rng.random_range(0.5..1.5);
        if rng.random_bool(0.5) {
            magnitude
        } else {
            -magnitude
        }
    });
    let grads = tape.backward_with(y, g.clone())?;

    let mut elements = 0;
    let mut worst: Option<(f64, WorstElement)> = None;
    let mut probe = xs.to_vec();
    for (i, &v) in vars.iter().enumerate() {
        let analytic = grads.get(v);
        for (index, &x0) in xs[i].indexed_iter() {
            let index = index.slice().to_vec();
            probe[i][index.as_slice()] = x0 + H;
            let plus = weighted_output(&f, &probe, &g)?;
            probe[i][index.as_slice()] = x0 - H;
            let minus = weighted_output(&f, &probe, &g)?;
            probe[i][index.as_slice()] = x0;
            let numeric = (plus - minus) / (2.0 * H);
            let analytic = analytic.map_or(0.0, |a| a[index.as_slice()]);
            let diff = (analytic - numeric).abs();
            let tol = ATOL + RTOL * numeric.abs();
            let ratio = if diff.is_nan() {
                f64::INFINITY
            } else {
                diff / tol
            };
            elements += 1;
            if worst.as_ref().is_none_or(|(r, _)| ratio > *r) {
                let w = WorstElement {
                    input: i,
                    index,
                    analytic,
                    numeric,
                    diff,
                    tol,
                };
                worst = Some((ratio, w));
            }
        }
    }
    match worst {
        Some((ratio, w)) if ratio > 1.0 => Err(AutogradError::GradcheckMismatch {
            input: w.input,
            index: w.index,
            analytic: w.analytic,
            numeric: w.numeric,
            diff: w.diff,
            tol: w.tol,
        }),
        worst => Ok(GradcheckReport {
            elements,
            worst: worst.map(|(_, w)| w),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{mul, CustomOp};
    use crate::testutil::uniform;
    use std::sync::Arc;

    /// `y = x²` with a deliberately wrong backward (gradient sent to the reversed position).
    struct Misrouted;
    impl CustomOp<f64> for Misrouted {
        fn name(&self) -> &'static str {
            "misrouted"
        }
        fn forward(&self, x: &[&ArrayD<f64>]) -> Result<ArrayD<f64>> {
            Ok(x[0].mapv(|v| v * v))
        }
        fn backward(
            &self,
            x: &[&ArrayD<f64>],
            _: &ArrayD<f64>,
            dy: &ArrayD<f64>,
        ) -> Result<Vec<Option<ArrayD<f64>>>> {
            let mut g = dy * &x[0].mapv(|v| 2.0 * v);
            g.as_slice_mut().unwrap().reverse();
            Ok(vec![Some(g)])
        }
    }

    #[test]
    fn detects_gradient_sent_to_wrong_positions() {
        let x = ArrayD::from_shape_vec(vec![2], vec![1.0, 1.0]).unwrap();
        // With an all-ones upstream a reversed gradient of a symmetric input would pass; the
        // random upstream makes it fail.
        let e = check(
            |t, v| crate::ops::custom(t, v, Arc::new(Misrouted)),
            &[x],
            1,
        )
        .unwrap_err();
        assert!(
            matches!(e, AutogradError::GradcheckMismatch { input: 0, .. }),
            "{e}"
        );
    }

    #[test]
    fn report_counts_elements_and_names_worst() {
        let xs = [uniform(&[2, 3], 1), uniform(&[3], 2)];
        let r = check(|t, v| mul(t, v[0], v[1]), &xs, 3).unwrap();
        assert_eq!(r.elements, 9);
        let w = r.worst.unwrap();
        assert!(w.diff <= w.tol, "{w:?}");
    }
}
