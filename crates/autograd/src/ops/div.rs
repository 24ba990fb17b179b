//! Element-wise quotient with NumPy broadcasting, `y = a / b`.

use ndarray::{ArrayD, Zip};

use crate::broadcast::{binary_map, row_pattern, rows_in_place};
use crate::op::Op;
use crate::tape::Backprop;
use crate::{Float, Result, Tape, Var};

const OP: &str = "div";

/// `y = a / b`, broadcasting like NumPy. Division by zero follows IEEE (inf/NaN), like PyTorch.
///
/// # Errors
/// `ShapeMismatch` if the shapes do not broadcast.
pub fn div<F: Float>(tape: &mut Tape<F>, a: Var, b: Var) -> Result<Var> {
    let y = binary_map(
        OP,
        tape.checked(a, OP)?,
        tape.checked(b, OP)?,
        tape.par(),
        |x, y| x / y,
    )?;
    Ok(tape.push_op(y, &[a, b], || Op::Div { a, b }))
}

/// `da = Σ_bcast dy / b`, `db = −Σ_bcast dy ⊙ a / b²`.
pub(crate) fn div_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    a: Var,
    b: Var,
    dy: ArrayD<F>,
) -> Result<()> {
    let par = bw.par;
    let da_of = |mut d: ArrayD<F>, b: &ArrayD<F>| {
        // a conv output over its patch norms: rows of `d` against rows of `b`, same values
        let rows = row_pattern(d.shape(), b.shape());
        match (rows, d.as_slice_mut(), b.as_slice()) {
            (Some((_, mid, inner)), Some(ds), Some(bs)) => {
                rows_in_place(ds, bs, (mid, inner), par, |d, b| d / b)
            }
            _ => d.zip_mut_with(b, |d, &b| *d = *d / b),
        }
        d
    };
    let db_of = |mut d: ArrayD<F>, a: &ArrayD<F>, b: &ArrayD<F>| {
        let rows = (d.shape() == a.shape())
            .then(|| row_pattern(d.shape(), b.shape()))
            .flatten();
        match (rows, d.as_slice_mut(), a.as_slice(), b.as_slice()) {
            (Some((_, mid, inner)), Some(ds), Some(xs), Some(bs)) => {
                // d ← d·a first (same shape), then −(d·a)/(b·b) by rows: the same operations
                // in the same order as the broadcast loop below
                ds.iter_mut().zip(xs).for_each(|(d, &a)| *d = -*d * a);
                rows_in_place(ds, bs, (mid, inner), par, |da, b| da / (b * b));
            }
            _ => Zip::from(&mut d)
                .and_broadcast(a)
                .and_broadcast(b)
                .for_each(|d, &a, &b| *d = -*d * a / (b * b)),
        }
        d
    };
    match (bw.needs(a), bw.needs(b)) {
        (true, true) => {
            let da = da_of(dy.clone(), bw.value(b));
            let db = db_of(dy, bw.value(a), bw.value(b));
            bw.add(a, bw.reduce_to(da, a)?);
            bw.add(b, bw.reduce_to(db, b)?);
        }
        (true, false) => {
            let da = da_of(dy, bw.value(b));
            bw.add(a, bw.reduce_to(da, a)?);
        }
        (false, true) => {
            let db = db_of(dy, bw.value(a), bw.value(b));
            bw.add(b, bw.reduce_to(db, b)?);
        }
        (false, false) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::{positive, uniform};

    #[test]
    fn gradcheck_div_broadcasting() {
        for (sa, sb) in [
            (vec![3, 2], vec![3, 2]),
            (vec![2, 3], vec![3]),
            (vec![3], vec![2, 1]),
        ] {
            let xs = [uniform(&sa, 11), positive(&sb, 12)];
            check(|t, v| div(t, v[0], v[1]), &xs, 13).unwrap();
        }
    }

    #[test]
    fn gradcheck_div_by_row_broadcast() {
        // a conv output over its patch norms, and the reverse; plus a middle run of axes
        for (sa, sb) in [
            (vec![2, 3, 2, 2], vec![2, 1, 2, 2]),
            (vec![2, 1, 3], vec![2, 4, 3]),
            (vec![2, 2, 3, 2], vec![2, 1, 1, 2]),
        ] {
            let xs = [uniform(&sa, 21), positive(&sb, 22)];
            check(|t, v| div(t, v[0], v[1]), &xs, 23).unwrap();
        }
    }

    /// The row path computes every element with the same operations as the general broadcast
    /// loop (taken for operands not in standard layout): values and both gradients
    /// bit-identical, for 1 and 2 threads.
    #[test]
    fn row_path_is_bit_identical_to_the_broadcast_loop() {
        use crate::Par;
        let (sa, sb) = (vec![3, 5, 6, 7], vec![3, 1, 6, 7]);
        let f32s = |x: ArrayD<f64>| x.mapv(|v| v as f32);
        let (a0, b0) = (f32s(uniform(&sa, 31)), f32s(positive(&sb, 32)));
        let dy = f32s(uniform(&sa, 33));
        // the same values in reversed (Fortran) layout: no contiguous slice, general loop
        let fortran = |x: &ArrayD<f32>| x.t().as_standard_layout().into_owned().reversed_axes();
        let run = |a: ArrayD<f32>, b: ArrayD<f32>| {
            let mut t = Tape::<f32>::new();
            t.set_par(Par::Rayon);
            let (a, b) = (t.leaf(a), t.leaf(b));
            let y = div(&mut t, a, b).unwrap();
            let yv = t.value(y).clone();
            let g = t.backward_with(y, dy.clone()).unwrap();
            (yv, g.get(a).unwrap().clone(), g.get(b).unwrap().clone())
        };
        assert!(fortran(&a0).as_slice().is_none());
        let reference = run(fortran(&a0), fortran(&b0));
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(|| run(a0.clone(), b0.clone()));
            assert_eq!(got, reference, "{threads} threads");
        }
    }
}
