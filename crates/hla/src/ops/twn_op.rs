//! TWN as a [`CustomOp`]: forward Ŵ = TWN(W) per tensor (spec 11.1), backward the identity STE.
//!
//! Guide: [TWN](crate::guide#twn).

use crate::real::cst;
use crate::twn::twn_quantize;
use hla_autograd::{ops, CustomOp, Float, Result, Tape, Var};
use ndarray::ArrayD;
use std::sync::Arc;

/// TWN quantiser with threshold factor (0.7 by default).
///
/// Guide: [TWN](crate::guide#twn).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TwnOp {
    /// f in Δ = f·mean|W|.
    pub factor: f64,
}

impl<F: Float> CustomOp<F> for TwnOp {
    fn name(&self) -> &'static str {
        "twn"
    }
    fn forward(&self, inputs: &[&ArrayD<F>]) -> Result<ArrayD<F>> {
        Ok(twn_quantize(inputs[0].view(), cst::<F>(self.factor)).what)
    }
    /// ∂L/∂W := ∂L/∂Ŵ (Δ and α are statistics without gradient).
    fn backward(
        &self,
        _: &[&ArrayD<F>],
        _: &ArrayD<F>,
        dy: &ArrayD<F>,
    ) -> Result<Vec<Option<ArrayD<F>>>> {
        Ok(vec![Some(dy.clone())])
    }
}

/// Records Ŵ = TWN(w) (any shape → same shape).
///
/// Guide: [TWN](crate::guide#twn).
///
/// # Errors
/// `UnknownVar` if `w` is not on the tape.
pub fn twn<F: Float>(tape: &mut Tape<F>, w: Var, factor: f64) -> Result<Var> {
    ops::custom(tape, &[w], Arc::new(TwnOp { factor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T10 on the tape: values and the identity gradient.
    #[test]
    fn t10_twn_on_tape() {
        let mut tape = Tape::<f64>::new();
        let w = tape.leaf(
            ArrayD::from_shape_vec(vec![2, 4], vec![0.9, -0.1, 0.3, -0.5, 0.04, 0.6, -0.7, 0.2])
                .unwrap(),
        );
        let q = twn(&mut tape, w, 0.7).unwrap();
        let got: Vec<f64> = tape.value(q).iter().copied().collect();
        let want = [0.6, 0.0, 0.6, -0.6, 0.0, 0.6, -0.6, 0.0];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-15);
        }
        let g =
            ArrayD::from_shape_vec(vec![2, 4], (0..8).map(|i| i as f64 - 3.5).collect()).unwrap();
        let grads = tape.backward_with(q, g.clone()).unwrap();
        assert_eq!(grads.get(w).unwrap(), &g);
    }
}
