//! TTQ as a [`CustomOp`] (spec 11.2): inputs `[w, w_p, w_n]` (scales one element each), forward
//! Ŵ ∈ {+W^p, 0, −W^n}, backward the scaled latent gradient and the two scale gradients.
//!
//! Guide: [TTQ](crate::guide#ttq).

use crate::config::TtqWnGrad;
use crate::real::cst;
use crate::ttq::{ttq_backward, ttq_forward};
use hla_autograd::{ops, AutogradError, CustomOp, Float, Result, Tape, Var};
use ndarray::ArrayD;
use std::sync::Arc;

const OP: &str = "ttq";

/// TTQ quantiser and its A27 knobs.
///
/// Guide: [TTQ](crate::guide#ttq).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TtqOp {
    /// t in Δ = t·max|W| (0.05).
    pub threshold: f64,
    /// Sign convention of ∂W^n.
    pub wn_grad: TtqWnGrad,
    /// Multiply the latent gradient by 1/max|W|.
    pub grad_div_max: bool,
}

fn one<F: Float>(a: &ArrayD<F>) -> Result<F> {
    if a.len() != 1 {
        return Err(AutogradError::BadShape {
            op: OP,
            shape: a.shape().to_vec(),
            expected: "a one-element scale".into(),
        });
    }
    Ok(*a.iter().next().expect("one element"))
}

impl<F: Float> CustomOp<F> for TtqOp {
    fn name(&self) -> &'static str {
        OP
    }
    fn forward(&self, inputs: &[&ArrayD<F>]) -> Result<ArrayD<F>> {
        let (wp, wn) = (one(inputs[1])?, one(inputs[2])?);
        Ok(ttq_forward(inputs[0].view(), wp, wn, cst::<F>(self.threshold)).0)
    }
    fn backward(
        &self,
        inputs: &[&ArrayD<F>],
        _: &ArrayD<F>,
        dy: &ArrayD<F>,
    ) -> Result<Vec<Option<ArrayD<F>>>> {
        let (wp, wn) = (one(inputs[1])?, one(inputs[2])?);
        let (dw, dp, dn) = ttq_backward(
            inputs[0].view(),
            dy.view(),
            wp,
            wn,
            cst::<F>(self.threshold),
            self.wn_grad,
            self.grad_div_max,
        );
        Ok(vec![
            Some(dw),
            Some(ArrayD::from_elem(inputs[1].shape(), dp)),
            Some(ArrayD::from_elem(inputs[2].shape(), dn)),
        ])
    }
}

/// Records Ŵ = TTQ(w; W^p, W^n). `w` any shape; `wp`, `wn` one element each.
///
/// Guide: [TTQ](crate::guide#ttq).
///
/// # Errors
/// `BadShape` for scales that are not one element.
pub fn ttq<F: Float>(tape: &mut Tape<F>, w: Var, wp: Var, wn: Var, op: TtqOp) -> Result<Var> {
    ops::custom(tape, &[w, wp, wn], Arc::new(op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::assert_close;

    /// T11 on the tape.
    #[test]
    fn t11_ttq_on_tape() {
        let mut tape = Tape::<f64>::new();
        let w = tape.leaf(
            ArrayD::from_shape_vec(vec![8], vec![0.9, -0.1, 0.3, -0.5, 0.04, 0.6, -0.7, 0.2])
                .unwrap(),
        );
        let wp = tape.leaf(ArrayD::from_elem(vec![1], 1.2));
        let wn = tape.leaf(ArrayD::from_elem(vec![1], 0.8));
        let op = TtqOp {
            threshold: 0.05,
            wn_grad: TtqWnGrad::ChainRule,
            grad_div_max: false,
        };
        let q = ttq(&mut tape, w, wp, wn, op).unwrap();
        assert_close(
            tape.value(q).iter(),
            [1.2, -0.8, 1.2, -0.8, 0.0, 1.2, -0.8, 1.2].iter(),
            1e-15,
        );
        let g = ArrayD::from_shape_vec(vec![8], vec![0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8])
            .unwrap();
        let grads = tape.backward_with(q, g).unwrap();
        assert_close(
            grads.get(w).unwrap().iter(),
            [0.12, -0.16, 0.36, -0.32, 0.5, -0.72, 0.56, -0.96].iter(),
            1e-15,
        );
        assert_close(grads.get(wp).unwrap().iter(), [-1.0].iter(), 1e-15);
        assert_close(grads.get(wn).unwrap().iter(), [-0.1].iter(), 1e-15);
    }
}
