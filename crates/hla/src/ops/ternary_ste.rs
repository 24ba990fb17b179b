//! Ternary straight-through op of stage 2 (Eqs. 10–13): forward Ŵ = Ternary(W, Δ̄), backward
//! `∂W = G ⊙ S` (or `G`, knob `ste_scale`) and `∂Δ̄` per Eq. 13 with the A14 variants.
//!
//! Inputs: `[w, delta]` with `w` the normalised weights (`[n, …]`, rows along dim 0) and `delta`
//! a one-element tensor (`[]` or `[1]`). Δ̄ is an input, so the tape returns its gradient; pass it
//! as `tape.constant` to get no gradient (stage 1 with `ld_ste`, or a fixed threshold).
//! Only the gradient arriving at this op's output counts for Δ̄ ("task-loss path only", A14(d)):
//! L_d uses a detached copy of Ŵ and so never reaches this op.
//!
//! Guide: [Eq. 11](crate::guide#eq-11).

use super::custom_err;
use crate::config::{EmptyRow, HlaConfig, SteScale};
use crate::delta_grad::{delta_bar_grad, DeltaGradKnobs};
use crate::real::{from_rows, with_rows};
use crate::ternary::{ste_grad, ternarize_rows};
use hla_autograd::{ops, AutogradError, CustomOp, Float, Result, Tape, Var};
use ndarray::ArrayD;
use std::sync::Arc;

const OP: &str = "ternary_ste";

/// The ternary STE as a [`CustomOp`]; its fields are the knobs it depends on.
///
/// Guide: [Eq. 11](crate::guide#eq-11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TernarySte {
    /// A10.
    pub empty_row: EmptyRow,
    /// A13 (the weight path).
    pub ste_scale: SteScale,
    /// A14 (the Δ̄ path; its `ste_scale` should equal the field above).
    pub delta: DeltaGradKnobs,
}

impl TernarySte {
    /// The op configured from `cfg`.
    ///
    /// Guide: [Eq. 11](crate::guide#eq-11).
    pub fn from_config(cfg: &HlaConfig) -> Self {
        Self {
            empty_row: cfg.empty_row,
            ste_scale: cfg.ste_scale,
            delta: DeltaGradKnobs::from_config(cfg),
        }
    }
}

fn scalar<F: Float>(d: &ArrayD<F>) -> Result<F> {
    if d.len() != 1 {
        return Err(AutogradError::BadShape {
            op: OP,
            shape: d.shape().to_vec(),
            expected: "a one-element threshold".into(),
        });
    }
    Ok(*d.iter().next().expect("one element"))
}

impl<F: Float> CustomOp<F> for TernarySte {
    fn name(&self) -> &'static str {
        OP
    }

    fn forward(&self, inputs: &[&ArrayD<F>]) -> Result<ArrayD<F>> {
        let (w, d) = (inputs[0], scalar(inputs[1])?);
        let q = with_rows(OP, w.view(), |rows| {
            ternarize_rows(rows, d, self.empty_row).dequantize()
        })
        .map_err(|e| custom_err(OP, e))?;
        Ok(from_rows(q, w.shape()))
    }

    fn backward(
        &self,
        inputs: &[&ArrayD<F>],
        output: &ArrayD<F>,
        dy: &ArrayD<F>,
    ) -> Result<Vec<Option<ArrayD<F>>>> {
        let (w, d) = (inputs[0], inputs[1]);
        let shape = w.shape();
        let res = with_rows(OP, w.view(), |wr| {
            with_rows(OP, dy.view(), |gr| {
                with_rows(OP, output.view(), |qr| {
                    let dw = ste_grad(gr, wr, self.ste_scale);
                    let dd = delta_bar_grad(gr, wr, qr, self.delta);
                    (dw, dd)
                })
            })
        });
        let (dw, dd) = res
            .and_then(|r| r)
            .and_then(|r| r)
            .map_err(|e| custom_err(OP, e))?;
        Ok(vec![
            Some(from_rows(dw, shape)),
            Some(ArrayD::from_elem(d.shape(), dd)),
        ])
    }
}

/// Records Ŵ = Ternary(w, Δ̄) with the STE backward. `w`: normalised weights `[n, …]`,
/// `delta`: one-element Δ̄ → `[n, …]`.
///
/// Guide: [Eq. 11](crate::guide#eq-11).
///
/// # Errors
/// `BadShape` if `delta` is not one element or `w` has rank < 2.
pub fn ternary_ste<F: Float>(
    tape: &mut Tape<F>,
    w: Var,
    delta: Var,
    op: TernarySte,
) -> Result<Var> {
    ops::custom(tape, &[w, delta], Arc::new(op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, t1_v, t1_w};
    use ndarray::ArrayD;

    fn g() -> ArrayD<f64> {
        ArrayD::from_shape_vec(vec![2, 4], vec![0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8])
            .unwrap()
    }

    /// T8 through the tape: forward Ŵ, G ⊙ S at W, ∂Δ̄ = 0.02383796.
    #[test]
    fn t8_ste_and_delta_bar_on_tape() {
        let mut tape = Tape::<f64>::new();
        let w = tape.leaf(t1_w());
        let d = tape.leaf(ArrayD::from_elem(vec![1], 0.3));
        let q = ternary_ste(&mut tape, w, d, TernarySte::default()).unwrap();
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert_close(
            tape.value(q).iter(),
            [h, 0.0, h, 0.0, 0.0, h, -h, 0.0].iter(),
            1e-15,
        );
        let grads = tape.backward_with(q, g()).unwrap();
        let want = crate::testutil::T8_STE_WITH_S;
        assert_close(grads.get(w).unwrap().iter(), want.iter(), 1e-8);
        assert_close(grads.get(d).unwrap().iter(), [0.02383796].iter(), 1e-8);
        // identity STE passes G unchanged
        let mut tape = Tape::<f64>::new();
        let w = tape.leaf(t1_w());
        let d = tape.constant(ArrayD::from_elem(vec![], 0.3));
        let op = TernarySte {
            ste_scale: SteScale::Identity,
            ..Default::default()
        };
        let q = ternary_ste(&mut tape, w, d, op).unwrap();
        let grads = tape.backward_with(q, g()).unwrap();
        assert_eq!(grads.get(w).unwrap(), &g());
        assert!(grads.get(d).is_none());
    }

    /// T8 total gradient: task path through the STE (G ⊙ S) plus L_d's direct path with Ŵ
    /// detached, at W and, through normalize_rows, at the latent V.
    #[test]
    fn t8_total_gradient_at_w_and_v() {
        let mut tape = Tape::<f64>::new();
        let v = tape.leaf(t1_v());
        let w = ops::normalize_rows(&mut tape, v, 0.0).unwrap();
        let d = tape.leaf(ArrayD::from_elem(vec![1], 0.3));
        let q = ternary_ste(&mut tape, w, d, TernarySte::default()).unwrap();
        // L = Σ G ⊙ Ŵ (task loss with ∂L/∂Ŵ = G) + L_d(W, detach(Ŵ))
        let gc = tape.constant(g());
        let task = ops::mul(&mut tape, q, gc).unwrap();
        let task = ops::sum_all(&mut tape, task).unwrap();
        let qd = ops::detach(&mut tape, q).unwrap();
        let ld = crate::ops::ld_term(&mut tape, w, qd).unwrap();
        assert!((tape.value(ld).iter().next().unwrap() - 0.0052236056).abs() < 1e-10);
        let loss = ops::add(&mut tape, task, ld).unwrap();
        let grads = tape.backward(loss).unwrap();
        let want_v = [
            -0.01242626,
            -0.01606620,
            0.01420609,
            -0.03530583,
            0.08589086,
            -0.01647392,
            -0.00769641,
            -0.11695443,
        ];
        assert_close(grads.get(v).unwrap().iter(), want_v.iter(), 1e-8);
        // Δ̄ sees only the task path
        assert_close(grads.get(d).unwrap().iter(), [0.02383796].iter(), 1e-8);
    }
}
