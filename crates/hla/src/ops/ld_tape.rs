//! L_d (Eq. 7) composed from plain tape ops, so its gradient comes from the tape:
//! `c = Σ_i (w ⊙ ŵ)_{·,i}` per row, `L_d^l = mean_j (c_j − 1)²`. Pass Ŵ detached (A9 default) —
//! then ∂L_d/∂W = (2/n)(c_j − 1)ŵ_j, checked against [`crate::ld::ld_layer`] in the tests.
//!
//! Guide: [Eq. 7](crate::guide#eq-7).

use crate::config::LdReduce;
use crate::real::cst;
use hla_autograd::{ops, AutogradError, Float, Result, Tape, Var};

/// L_d^l of one layer as a scalar `[]` Var. `w`, `what`: `[n, …]` of the same shape.
///
/// Guide: [Eq. 7](crate::guide#eq-7).
///
/// # Errors
/// `ShapeMismatch` if the shapes differ; `BadShape` for rank < 2.
pub fn ld_term<F: Float>(tape: &mut Tape<F>, w: Var, what: Var) -> Result<Var> {
    let shape = tape.shape(w).to_vec();
    if shape != tape.shape(what) {
        return Err(AutogradError::ShapeMismatch {
            op: "ld_term",
            lhs: shape,
            rhs: tape.shape(what).to_vec(),
        });
    }
    let (n, m) =
        crate::real::rows_shape("ld_term", &shape).map_err(|e| super::custom_err("ld_term", e))?;
    let p = ops::mul(tape, w, what)?; // [n, …]
    let p = ops::reshape(tape, p, &[n, m])?; // [n, m]
    let c = ops::sum(tape, p, &[1], false)?; // [n]: c_j = w_j·ŵ_j
    let e = ops::add_scalar(tape, c, -F::one())?;
    let s = ops::square(tape, e)?;
    ops::mean_all(tape, s) // (1/n) Σ_j (c_j − 1)²
}

/// λ·reduce(terms) under `ld_reduce` (A8); `None` for no terms.
///
/// Guide: [Eq. 7](crate::guide#eq-7).
///
/// # Errors
/// Propagates tape errors.
pub fn ld_total<F: Float>(
    tape: &mut Tape<F>,
    terms: &[Var],
    reduce: LdReduce,
    lambda: f64,
) -> Result<Option<Var>> {
    let Some((&first, rest)) = terms.split_first() else {
        return Ok(None);
    };
    let mut acc = first;
    for &t in rest {
        acc = ops::add(tape, acc, t)?; // fixed order: layer order
    }
    let scale = match reduce {
        LdReduce::Sum => lambda,
        LdReduce::Mean => lambda / terms.len() as f64,
    };
    Ok(Some(if scale == 1.0 {
        acc
    } else {
        ops::mul_scalar(tape, acc, cst::<F>(scale))?
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EmptyRow;
    use crate::ld::ld_layer;
    use crate::ternary::ternarize_rows;
    use crate::testutil::{assert_close, t1_w, t4_b};
    use hla_autograd::gradcheck;
    use ndarray::{Array2, ArrayD};
    use rand::{Rng, SeedableRng};

    /// Tape gradient of L_d (Ŵ constant) equals the analytic (2/n)(c − 1)ŵ on random rows.
    #[test]
    fn ld_tape_matches_analytic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let v = Array2::from_shape_fn((5, 7), |_| rng.random_range(-1.0f64..1.0));
        let (w, _) = crate::ld::normalize_rows(v.view(), 0.0);
        let q = ternarize_rows(w.view(), 0.3, EmptyRow::Zero).dequantize();
        let (l, _, gw) = ld_layer(w.view(), q.view());
        let mut tape = Tape::<f64>::new();
        let wv = tape.leaf(w.into_dyn());
        let qv = tape.constant(q.into_dyn());
        let ld = ld_term(&mut tape, wv, qv).unwrap();
        assert!((tape.value(ld).iter().next().unwrap() - l).abs() < 1e-15);
        let grads = tape.backward(ld).unwrap();
        assert_close(grads.get(wv).unwrap().iter(), gw.iter(), 1e-15);
    }

    /// Gradcheck in f64 of L_d(normalize_rows(V), Ŵ fixed) w.r.t. V, 4-D conv-shaped weights.
    #[test]
    fn gradcheck_ld_through_normalisation() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        let v = ArrayD::from_shape_fn(vec![3, 2, 3, 3], |_| rng.random_range(-1.0f64..1.0));
        let vr: Array2<f64> = v.clone().into_shape_with_order((3, 18)).unwrap();
        let (w, _) = crate::ld::normalize_rows(vr.view(), 1e-12);
        let q = ternarize_rows(w.view(), 0.2, EmptyRow::Zero)
            .dequantize()
            .into_shape_with_order(vec![3, 2, 3, 3])
            .unwrap();
        let rep = gradcheck::check(
            |t, x| {
                let w = ops::normalize_rows(t, x[0], 1e-12)?;
                let qc = t.constant(q.clone());
                ld_term(t, w, qc)
            },
            &[v],
            4,
        )
        .unwrap();
        assert_eq!(rep.elements, 54);
    }

    /// T4 global: L_d^A + L_d^B = 0.0251512444 via ld_total (sum); mean halves it; λ scales.
    #[test]
    fn t4_ld_total_on_tape() {
        let mut tape = Tape::<f64>::new();
        let mut terms = Vec::new();
        for w in [t1_w::<f64>(), t4_b()] {
            let q = crate::real::with_rows("t", w.view(), |r| {
                ternarize_rows(r, 0.6, EmptyRow::Zero).dequantize()
            })
            .unwrap();
            let wv = tape.leaf(w.clone());
            let qv = tape.constant(q.into_dyn());
            terms.push(ld_term(&mut tape, wv, qv).unwrap());
        }
        let s = ld_total(&mut tape, &terms, LdReduce::Sum, 1.0)
            .unwrap()
            .unwrap();
        assert!((tape.value(s).iter().next().unwrap() - 0.0251512444).abs() < 1e-10);
        let m = ld_total(&mut tape, &terms, LdReduce::Mean, 2.0)
            .unwrap()
            .unwrap();
        assert!((tape.value(m).iter().next().unwrap() - 0.0251512444).abs() < 1e-10);
        assert!(ld_total::<f64>(&mut tape, &[], LdReduce::Sum, 1.0)
            .unwrap()
            .is_none());
    }
}
