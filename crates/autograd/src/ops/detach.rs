//! Detach / stop-gradient: the same value as a constant, so no gradient flows back through it.

use crate::{Float, Result, Tape, Var};

/// A constant with the value of `x` (shared, not copied). Gradients stop here; the value is
/// still used in the forward pass (e.g. ŵ treated as a constant in the method's `c_j = w_j·ŵ_j`).
///
/// # Errors
/// `UnknownVar` if `x` is not on this tape.
pub fn detach<F: Float>(tape: &mut Tape<F>, x: Var) -> Result<Var> {
    tape.checked(x, "detach")?;
    Ok(tape.constant_shared(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{add, mul};
    use crate::testutil::uniform;
    use ndarray::ArrayD;

    #[test]
    fn detached_branch_gets_no_gradient() {
        // y = x·detach(x) + x  ⇒  dy/dx = detach(x) + 1 (the detached factor is a constant)
        let mut t = Tape::<f64>::new();
        let xv = uniform(&[3], 1);
        let x = t.leaf(xv.clone());
        let d = detach(&mut t, x).unwrap();
        assert!(!t.requires_grad(d));
        let p = mul(&mut t, x, d).unwrap();
        let y = add(&mut t, p, x).unwrap();
        let g = t.backward_with(y, ArrayD::from_elem(vec![3], 1.0)).unwrap();
        let want = xv.mapv(|v| v + 1.0);
        assert_eq!(g.get(x).unwrap(), &want);
    }
}
