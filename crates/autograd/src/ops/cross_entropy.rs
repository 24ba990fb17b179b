//! Mean cross-entropy with integer labels and optional label smoothing (PyTorch's
//! `F.cross_entropy(logits, labels, label_smoothing = ε)`, reduction `mean`):
//! `L = (1/n) Σ_i [ −(1 − ε)·log p_i[y_i] − (ε/k) Σ_j log p_i[j] ]`, `p_i = softmax(logits_i)`.

use ndarray::{s, Array2, ArrayD};

use crate::op::Op;
use crate::tape::{scalar, Backprop};
use crate::views::as2;
use crate::{AutogradError, Float, Result, Tape, Var};

const OP: &str = "cross_entropy";

/// The mean loss as a 0-dimensional value. With a data-parallel group (and batched logits),
/// the mean over the global batch, the same on every rank.
///
/// # Shapes
/// `logits`: `[n, k]`, `labels`: `n` values in `0..k` → `[]`.
/// # Errors
/// `BadShape` if `logits` is not 2-D; the kernel's errors for a label count other than `n`, a
/// label `≥ k`, or `ε ∉ [0, 1]`.
pub fn cross_entropy<F: Float>(
    tape: &mut Tape<F>,
    logits: Var,
    labels: &[usize],
    label_smoothing: F,
) -> Result<Var> {
    let lv = as2(OP, tape.checked(logits, OP)?)?;
    let (loss, dlogits) = match tape.group() {
        Some(g) if tape.is_batched(logits) => {
            // The mean over the global batch: gather every rank's logits and labels (small),
            // compute what one process would, keep this rank's rows of the gradient.
            let k = lv.ncols();
            let (start, _) = tape.global_rows(lv.nrows())?;
            let rows = g.gather(OP, lv.as_standard_layout().as_slice().expect("standard"))?;
            let labs: Vec<f64> = labels.iter().map(|&l| l as f64).collect();
            let labs: Vec<usize> = g.gather(OP, &labs)?.iter().map(|&l| l as usize).collect();
            let n_all = rows.len() / k.max(1);
            if n_all * k != rows.len() || n_all != labs.len() {
                return Err(AutogradError::BadShape {
                    op: OP,
                    shape: vec![rows.len()],
                    expected: format!("{} gathered rows of {k} logits", labs.len()),
                });
            }
            let all = Array2::from_shape_vec((n_all, k), rows).expect("checked above");
            let (loss, d) = hla_tensor::cross_entropy(all.view(), &labs, label_smoothing)?;
            let mine = d.slice(s![start..start + lv.nrows(), ..]).to_owned();
            (loss, mine)
        }
        _ => hla_tensor::cross_entropy(lv, labels, label_smoothing)?,
    };
    let y = tape.push_op(scalar(loss), &[logits], || Op::CrossEntropy {
        logits,
        dlogits,
    });
    tape.unbatch(y);
    Ok(y)
}

/// `dlogits = dL · (softmax − target) / n`; the kernel computed `(softmax − target)/n` in the
/// forward pass, which is saved (`[n, k]`, small) and scaled by the upstream scalar here.
pub(crate) fn cross_entropy_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    logits: Var,
    mut dlogits: Array2<F>,
    dy: ArrayD<F>,
) {
    let s = dy.iter().copied().next().unwrap_or_else(F::zero);
    dlogits.mapv_inplace(|g| g * s);
    bw.add(logits, dlogits.into_dyn());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;
    use crate::AutogradError;

    #[test]
    fn gradcheck_cross_entropy_with_and_without_smoothing() {
        let x = uniform(&[4, 5], 1).mapv(|v| 2.0 * v);
        let labels = [0, 3, 4, 3];
        for eps in [0.0, 0.1] {
            check(
                |t, v| cross_entropy(t, v[0], &labels, eps),
                std::slice::from_ref(&x),
                2,
            )
            .unwrap();
        }
    }

    /// Two classes with equal logits: p = 1/2 each, loss = ln 2 whatever the smoothing.
    #[test]
    fn uniform_logits_give_ln2() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(ArrayD::zeros(vec![3, 2]));
        let l = cross_entropy(&mut t, x, &[0, 1, 1], 0.2).unwrap();
        assert!((t.value(l).sum() - std::f64::consts::LN_2).abs() < 1e-15);
    }

    #[test]
    fn bad_labels_are_errors() {
        let mut t = Tape::<f32>::new();
        let x = t.leaf(ArrayD::zeros(vec![2, 3]));
        assert!(matches!(
            cross_entropy(&mut t, x, &[0, 3], 0.0),
            Err(AutogradError::Tensor(_))
        ));
        assert!(matches!(
            cross_entropy(&mut t, x, &[0], 0.0),
            Err(AutogradError::Tensor(_))
        ));
    }
}
