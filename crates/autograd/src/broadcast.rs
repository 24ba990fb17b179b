//! NumPy-style broadcasting: the output shape of two operands, and the reduction of a gradient
//! back to an operand's shape.

use ndarray::{ArrayD, Axis, IxDyn, Zip};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::{AutogradError, Float, Par, Result};
use hla_tensor::group::Group;

/// The broadcast shape of `a` and `b`: align trailing dimensions; each pair must be equal or
/// contain a 1 (NumPy's rule).
///
/// # Errors
/// [`AutogradError::ShapeMismatch`] naming `op` if some aligned pair differs and neither is 1.
pub(crate) fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for (i, o) in out.iter_mut().enumerate() {
        // dimension i of the output, counted from the left of the longer shape
        let da = (i + a.len()).checked_sub(n).map_or(1, |j| a[j]);
        let db = (i + b.len()).checked_sub(n).map_or(1, |j| b[j]);
        *o = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(AutogradError::ShapeMismatch {
                op,
                lhs: a.to_vec(),
                rhs: b.to_vec(),
            });
        };
    }
    Ok(out)
}

/// Element count from which element-wise work is split across rayon threads (below it the
/// split costs more than it saves). Element-wise results do not depend on the split.
pub(crate) const PAR_MIN_LEN: usize = 1 << 16;

/// Elements per rayon task in the slice-based element-wise loops (large enough to amortise
/// scheduling, small enough to balance two threads).
const PAR_CHUNK: usize = 1 << 14;

/// `(outer, mid, inner)` when `small` is `full` with one run of adjacent axes set to 1 (e.g.
/// `[n, 1, h, w]` against `[n, c, h, w]`: `(n, c, h·w)`), so that row `r` of `inner` elements of
/// `full` meets row `r / mid` of `small`. `None` for equal shapes or any other pattern.
pub(crate) fn row_pattern(full: &[usize], small: &[usize]) -> Option<(usize, usize, usize)> {
    if full.len() != small.len() {
        return None;
    }
    let first = (0..full.len()).find(|&i| full[i] != small[i])?;
    let last = (0..full.len()).rev().find(|&i| full[i] != small[i])?;
    if small[first..=last].iter().any(|&d| d != 1) {
        return None;
    }
    let prod = |d: &[usize]| d.iter().product::<usize>();
    Some((
        prod(&full[..first]),
        prod(&full[first..=last]),
        prod(&full[last + 1..]),
    ))
}

/// `out[r·inner + j] = f(full[r·inner + j], small[(r / mid)·inner + j])` for the
/// [`row_pattern`] `(_, mid, inner)`, rows in parallel from [`PAR_MIN_LEN`] elements when `par`
/// allows (each element computed alone: the split cannot change a bit). Writes `full` in place.
pub(crate) fn rows_in_place<F: Float>(
    full: &mut [F],
    small: &[F],
    (mid, inner): (usize, usize),
    par: Par,
    f: impl Fn(F, F) -> F + Sync + Send,
) {
    let row = |(r, xs): (usize, &mut [F])| {
        let ys = &small[(r / mid) * inner..][..inner];
        xs.iter_mut().zip(ys).for_each(|(x, &y)| *x = f(*x, y));
    };
    if inner == 0 {
        return;
    }
    if par == Par::Rayon && full.len() >= PAR_MIN_LEN {
        full.par_chunks_mut(inner).enumerate().for_each(row);
    } else {
        full.chunks_mut(inner).enumerate().for_each(row);
    }
}

/// `f(a, b)` element-wise over the broadcast shape, in standard layout; same-shape operands
/// of at least [`PAR_MIN_LEN`] elements are processed in parallel when `par` allows it.
pub(crate) fn binary_map<F: Float>(
    op: &'static str,
    a: &ArrayD<F>,
    b: &ArrayD<F>,
    par: Par,
    f: impl Fn(F, F) -> F + Sync + Send,
) -> Result<ArrayD<F>> {
    if a.shape() == b.shape() {
        if let (Some(xs), Some(ys)) = (a.as_slice(), b.as_slice()) {
            // contiguous operands: an indexed collect writes the output once, no zero fill
            let v: Vec<F> = if par == Par::Rayon && a.len() >= PAR_MIN_LEN {
                xs.par_iter().zip(ys).map(|(&x, &y)| f(x, y)).collect()
            } else {
                xs.iter().zip(ys).map(|(&x, &y)| f(x, y)).collect()
            };
            return Ok(ArrayD::from_shape_vec(a.raw_dim(), v)
                .expect("hla-autograd internal error: element count of a same-shape map"));
        }
        return Ok(Zip::from(a).and(b).map_collect(|&x, &y| f(x, y)));
    }
    // one operand broadcast along a run of axes (a conv output over its patch norms): rows
    if let (Some(xs), Some(ys)) = (a.as_slice(), b.as_slice()) {
        if let Some((_, mid, inner)) = row_pattern(a.shape(), b.shape()) {
            let mut out = xs.to_vec();
            rows_in_place(&mut out, ys, (mid, inner), par, &f);
            return Ok(ArrayD::from_shape_vec(a.raw_dim(), out)
                .expect("hla-autograd internal error: element count of a row map"));
        }
        if let Some((_, mid, inner)) = row_pattern(b.shape(), a.shape()) {
            let mut out = ys.to_vec();
            rows_in_place(&mut out, xs, (mid, inner), par, |y, x| f(x, y));
            return Ok(ArrayD::from_shape_vec(b.raw_dim(), out)
                .expect("hla-autograd internal error: element count of a row map"));
        }
    }
    let shape = IxDyn(&broadcast_shape(op, a.shape(), b.shape())?);
    const BROKEN: &str =
        "hla-autograd internal error: broadcast_shape accepted an impossible shape";
    let av = a.broadcast(shape.clone()).expect(BROKEN);
    let bv = b.broadcast(shape).expect(BROKEN);
    Ok(Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y)))
}

/// `dy ← dy ⊙ 1[keep(x)]` in place (the backward of ReLU-like masks without allocating a new
/// gradient); split across rayon threads from [`PAR_MIN_LEN`] elements when `par` allows.
/// Shapes: `dy`, `x` the same (a caller bug otherwise: they come from one forward).
pub(crate) fn mask_in_place<F: Float>(
    dy: &mut ArrayD<F>,
    x: &ArrayD<F>,
    par: Par,
    keep: impl Fn(F) -> bool + Sync + Send,
) {
    // a select, not a branch, so the loop vectorises
    let f = |d: &mut F, &v: &F| *d = if keep(v) { *d } else { F::zero() };
    match (dy.as_slice_mut(), x.as_slice()) {
        (Some(ds), Some(xs)) => {
            if par == Par::Rayon && xs.len() >= PAR_MIN_LEN {
                ds.par_chunks_mut(PAR_CHUNK)
                    .zip(xs.par_chunks(PAR_CHUNK))
                    .for_each(|(dc, xc)| dc.iter_mut().zip(xc).for_each(|(d, v)| f(d, v)));
            } else {
                ds.iter_mut().zip(xs).for_each(|(d, v)| f(d, v));
            }
        }
        _ => Zip::from(dy).and(x).for_each(f),
    }
}

/// [`mask_in_place`] that also returns a copy of the masked `dy`, written in the same pass
/// (the backward of a masked sum, whose two operands each take the gradient): one read of `dy`
/// less than masking and then cloning. Values as [`mask_in_place`] followed by `clone`.
pub(crate) fn mask_in_place_copy<F: Float>(
    dy: &mut ArrayD<F>,
    x: &ArrayD<F>,
    par: Par,
    keep: impl Fn(F) -> bool + Sync + Send,
) -> ArrayD<F> {
    let dim = dy.raw_dim();
    let (Some(ds), Some(xs)) = (dy.as_slice_mut(), x.as_slice()) else {
        mask_in_place(dy, x, par, keep);
        return dy.clone();
    };
    let n = ds.len();
    let mut out: Vec<F> = Vec::with_capacity(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    let f = |d: &mut F, o: &mut MaybeUninit<F>, &v: &F| {
        let m = if keep(v) { *d } else { F::zero() };
        *d = m;
        o.write(m);
    };
    let run = |dc: &mut [F], oc: &mut [MaybeUninit<F>], xc: &[F]| {
        dc.iter_mut()
            .zip(oc.iter_mut())
            .zip(xc)
            .for_each(|((d, o), v)| f(d, o, v))
    };
    if par == Par::Rayon && n >= PAR_MIN_LEN {
        ds.par_chunks_mut(PAR_CHUNK)
            .zip(spare.par_chunks_mut(PAR_CHUNK))
            .zip(xs.par_chunks(PAR_CHUNK))
            .for_each(|((dc, oc), xc)| run(dc, oc, xc));
    } else {
        run(ds, spare, xs);
    }
    // SAFETY: `dy` and `x` have the same length (one forward's shapes), so every one of the
    // `n` elements was written above; a panic propagates before this line.
    unsafe { out.set_len(n) };
    ArrayD::from_shape_vec(dim, out).expect("dy's shape, standard layout")
}

/// `acc ← acc + g` element-wise in place (gradient accumulation): [`hla_tensor::add_assign`]
/// on contiguous arrays (each element is one addition, so the result does not depend on the
/// split). Shapes: the same.
pub(crate) fn add_in_place<F: Float>(acc: &mut ArrayD<F>, g: &ArrayD<F>, par: Par) {
    match (acc.as_slice_mut(), g.as_slice()) {
        (Some(a), Some(b)) => hla_tensor::add_assign(a, b, par),
        _ => acc.zip_mut_with(g, |a, &b| *a = *a + b),
    }
}

/// Sums a gradient of the broadcast output shape down to an operand's `shape`: leading
/// dimensions the operand lacks are summed away, dimensions where the operand has 1 are summed
/// with the axis kept. Returns `g` itself (no copy) when the shapes already agree. Sums run
/// in index order (deterministic).
pub(crate) fn sum_to_shape<F: Float>(mut g: ArrayD<F>, shape: &[usize]) -> ArrayD<F> {
    if g.shape() == shape {
        return g;
    }
    while g.ndim() > shape.len() {
        g = g.sum_axis(Axis(0));
    }
    for (ax, &s) in shape.iter().enumerate() {
        if s == 1 && g.shape()[ax] != 1 {
            g = g.sum_axis(Axis(ax)).insert_axis(Axis(ax));
        }
    }
    g
}

/// [`sum_to_shape`] of a gradient whose axis 0 is the batch, split over the ranks of `group`:
/// the fold over axis 0 (a left fold from zero in sample order, as `sum_axis` does it)
/// continues across the ranks in rank order, then the other axes are reduced locally; every
/// rank gets the single-process bits. An operand that lacks axis 0 or has 1 there.
///
/// # Errors
/// `Tensor(Comm)` for a failed transfer.
pub(crate) fn sum_to_shape_in<F: Float>(
    g: ArrayD<F>,
    shape: &[usize],
    group: &Group,
) -> Result<ArrayD<F>> {
    if g.ndim() == 1 {
        // `sum_axis` of a vector is an unrolled sum, not a fold that splits: sum the gathered
        // batch instead (one value per sample).
        let all = group.gather("broadcast_backward", &g.iter().copied().collect::<Vec<_>>())?;
        return Ok(sum_to_shape(
            ArrayD::from_shape_vec(IxDyn(&[all.len()]), all).expect("1-D"),
            shape,
        ));
    }
    let g = g.as_standard_layout();
    let mut dims = g.shape().to_vec();
    dims.remove(0);
    let mut acc = ArrayD::<F>::zeros(IxDyn(&dims));
    let state = acc.as_slice_mut().expect("fresh array is contiguous");
    let xs = g.as_slice().expect("standard layout is contiguous");
    let per = state.len();
    group.chain("broadcast_backward", state, |st, _| {
        if per > 0 {
            for sample in xs.chunks_exact(per) {
                for (a, &v) in st.iter_mut().zip(sample) {
                    *a = *a + v;
                }
            }
        }
    })?;
    let lead = if shape.len() < g.ndim() {
        acc
    } else {
        acc.insert_axis(Axis(0))
    };
    Ok(sum_to_shape(lead, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;

    #[test]
    fn broadcast_shapes_follow_numpy() {
        assert_eq!(broadcast_shape("t", &[2, 3], &[3]).unwrap(), vec![2, 3]);
        assert_eq!(
            broadcast_shape("t", &[2, 1, 4], &[3, 1]).unwrap(),
            vec![2, 3, 4]
        );
        assert_eq!(broadcast_shape("t", &[], &[5]).unwrap(), vec![5]);
        assert_eq!(broadcast_shape("t", &[1], &[0]).unwrap(), vec![0]);
        let e = broadcast_shape("t", &[2, 3], &[2]).unwrap_err();
        assert!(
            e.to_string().contains("[2, 3]") && e.to_string().contains("[2]"),
            "{e}"
        );
    }

    /// The slice paths (sequential, rayon) and the strided fallback agree with the definition.
    #[test]
    fn in_place_mask_and_add_match_definitions_on_every_path() {
        let n = PAR_MIN_LEN + 37;
        let x = crate::testutil::uniform(&[n], 1);
        let g = crate::testutil::uniform(&[n], 2);
        let want_mask: Vec<f64> = x
            .iter()
            .zip(&g)
            .map(|(&v, &d)| if v > 0.0 { d } else { 0.0 })
            .collect();
        let want_add: Vec<f64> = x.iter().zip(&g).map(|(&v, &d)| v + d).collect();
        for par in [Par::Seq, Par::Rayon] {
            let mut d = g.clone();
            mask_in_place(&mut d, &x, par, |v| v > 0.0);
            assert_eq!(d.as_slice().unwrap(), &want_mask[..]);
            let mut a = x.clone();
            add_in_place(&mut a, &g, par);
            assert_eq!(a.as_slice().unwrap(), &want_add[..]);
        }
        // a transposed (non-contiguous) accumulator takes the strided path
        let m = crate::testutil::uniform(&[3, 4], 3);
        let mut t = m.clone().reversed_axes();
        let h = crate::testutil::uniform(&[4, 3], 4);
        add_in_place(&mut t, &h, Par::Rayon);
        assert_eq!(t, &m.t() + &h);
    }

    #[test]
    fn sum_to_shape_reduces_broadcast_axes() {
        let g = ArrayD::from_shape_vec(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(
            sum_to_shape(g.clone(), &[3]).into_raw_vec_and_offset().0,
            vec![5., 7., 9.]
        );
        let r = sum_to_shape(g.clone(), &[2, 1]);
        assert_eq!(r.shape(), &[2, 1]);
        assert_eq!(r.into_raw_vec_and_offset().0, vec![6., 15.]);
        assert_eq!(sum_to_shape(g, &[]).into_raw_vec_and_offset().0, vec![21.]);
    }
}
