//! Custom-gradient op: user-supplied forward and backward (the quantisers of the method crate
//! are such ops; a straight-through estimator is a backward that ignores the forward's kink).

use std::sync::Arc;

use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::{standard, Backprop};
use crate::{AutogradError, Float, Result, Tape, Var};

/// A differentiable op defined outside this crate.
pub trait CustomOp<F: Float>: Send + Sync {
    /// Name used in errors and reports.
    fn name(&self) -> &'static str;
    /// `y = f(inputs)`.
    fn forward(&self, inputs: &[&ArrayD<F>]) -> Result<ArrayD<F>>;
    /// The gradient for each input (`None` = no gradient), given the inputs, the forward output
    /// and `dL/dy`. Each returned gradient must have its input's shape.
    fn backward(
        &self,
        inputs: &[&ArrayD<F>],
        output: &ArrayD<F>,
        dy: &ArrayD<F>,
    ) -> Result<Vec<Option<ArrayD<F>>>>;
}

/// Records `op.forward(inputs)`; backward calls `op.backward`.
///
/// # Errors
/// Whatever `op.forward` returns; `UnknownVar` for inputs not on this tape.
pub fn custom<F: Float>(
    tape: &mut Tape<F>,
    inputs: &[Var],
    op: Arc<dyn CustomOp<F>>,
) -> Result<Var> {
    let values = inputs
        .iter()
        .map(|&v| tape.checked(v, op.name()))
        .collect::<Result<Vec<_>>>()?;
    let y = op.forward(&values)?;
    let inputs = inputs.to_vec();
    Ok(tape.push_op(y, &inputs.clone(), || Op::Custom { inputs, op }))
}

/// Calls the user's backward and checks the count and shapes of what it returns.
pub(crate) fn custom_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    inputs: &[Var],
    op: &dyn CustomOp<F>,
    dy: ArrayD<F>,
) -> Result<()> {
    let grads = {
        let values: Vec<&ArrayD<F>> = inputs.iter().map(|&v| bw.value(v)).collect();
        op.backward(&values, bw.output(), &dy)?
    };
    if grads.len() != inputs.len() {
        return Err(AutogradError::Custom {
            op: op.name(),
            reason: format!(
                "backward returned {} gradients for {} inputs",
                grads.len(),
                inputs.len()
            ),
        });
    }
    for (i, (&v, g)) in inputs.iter().zip(grads).enumerate() {
        let Some(g) = g else { continue };
        if g.shape() != bw.shape(v) {
            return Err(AutogradError::Custom {
                op: op.name(),
                reason: format!(
                    "gradient {i} has shape {:?}, input has shape {:?}",
                    g.shape(),
                    bw.shape(v)
                ),
            });
        }
        bw.add(v, standard(g));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;

    /// `y = a·b²` written as a custom op.
    struct ProdSquare;
    impl<F: Float> CustomOp<F> for ProdSquare {
        fn name(&self) -> &'static str {
            "prod_square"
        }
        fn forward(&self, x: &[&ArrayD<F>]) -> Result<ArrayD<F>> {
            Ok(x[0] * &x[1].mapv(|b| b * b))
        }
        fn backward(
            &self,
            x: &[&ArrayD<F>],
            _y: &ArrayD<F>,
            dy: &ArrayD<F>,
        ) -> Result<Vec<Option<ArrayD<F>>>> {
            let two = F::one() + F::one();
            let da = dy * &x[1].mapv(|b| b * b);
            let db = dy * &(x[0] * &x[1].mapv(|b| two * b));
            Ok(vec![Some(da), Some(db)])
        }
    }

    /// Sign with a straight-through (identity) gradient: a kink the numeric check cannot see,
    /// so it is tested by value.
    struct SignSte;
    impl<F: Float> CustomOp<F> for SignSte {
        fn name(&self) -> &'static str {
            "sign_ste"
        }
        fn forward(&self, x: &[&ArrayD<F>]) -> Result<ArrayD<F>> {
            // sign with sign(0) = 0 (num-traits' `signum` gives 1 at +0)
            Ok(x[0].mapv(|v| if v == F::zero() { v } else { v.signum() }))
        }
        fn backward(
            &self,
            _: &[&ArrayD<F>],
            _: &ArrayD<F>,
            dy: &ArrayD<F>,
        ) -> Result<Vec<Option<ArrayD<F>>>> {
            Ok(vec![Some(dy.clone())])
        }
    }

    /// Returns a gradient of the wrong shape.
    struct Broken;
    impl<F: Float> CustomOp<F> for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn forward(&self, x: &[&ArrayD<F>]) -> Result<ArrayD<F>> {
            Ok(x[0].clone())
        }
        fn backward(
            &self,
            _: &[&ArrayD<F>],
            _: &ArrayD<F>,
            _: &ArrayD<F>,
        ) -> Result<Vec<Option<ArrayD<F>>>> {
            Ok(vec![Some(ArrayD::zeros(vec![7]))])
        }
    }

    #[test]
    fn gradcheck_custom_op() {
        let xs = [uniform(&[2, 3], 1), uniform(&[2, 3], 2)];
        check(|t, v| custom(t, v, Arc::new(ProdSquare)), &xs, 3).unwrap();
    }

    #[test]
    fn straight_through_passes_gradient_unchanged() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(ArrayD::from_shape_vec(vec![3], vec![-0.3, 0.0, 2.0]).unwrap());
        let y = custom(&mut t, &[x], Arc::new(SignSte)).unwrap();
        assert_eq!(t.value(y).as_slice().unwrap(), &[-1.0, 0.0, 1.0]);
        let seed = ArrayD::from_shape_vec(vec![3], vec![0.5, -1.0, 2.0]).unwrap();
        let g = t.backward_with(y, seed.clone()).unwrap();
        assert_eq!(g.get(x).unwrap(), &seed);
    }

    #[test]
    fn wrong_gradient_shape_is_an_error_naming_the_op() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(ArrayD::zeros(vec![2]));
        let y = custom(&mut t, &[x], Arc::new(Broken)).unwrap();
        let e = t.backward_with(y, ArrayD::zeros(vec![2])).err().unwrap();
        assert!(
            matches!(e, AutogradError::Custom { op: "broken", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("[7]"), "{e}");
    }
}
