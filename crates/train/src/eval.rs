//! Evaluation: top-1 / top-5 accuracy and mean cross-entropy over a loader in eval mode, and the
//! logits of one batch, through the method's hook when there is one.

use crate::error::Result;
use hla_autograd::{ops, Tape};
use hla_data::Loader;
use hla_models::{LayerHook, Mode, Model};
use ndarray::{ArrayD, Axis};

/// Accuracy of a model on a whole loader.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EvalStats {
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent.
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Images evaluated.
    pub images: usize,
}

/// (top-1 hits, top-k hits) of `logits` `[n, classes]` against `labels`. The rank of a label is
/// the number of logits strictly greater than its own plus the equal ones at a lower index, so
/// ties go to the lower class index (like `argmax`).
pub fn topk_hits(logits: &ArrayD<f32>, labels: &[usize], k: usize) -> (usize, usize) {
    let mut t1 = 0;
    let mut tk = 0;
    for (row, &y) in logits.axis_iter(Axis(0)).zip(labels) {
        let Some(&target) = row.get(y) else { continue };
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(i, &x)| x > target || (x == target && i < y))
            .count();
        if rank == 0 {
            t1 += 1;
        }
        if rank < k {
            tk += 1;
        }
    }
    (t1, tk)
}

/// Logits `[n, classes]` of `x` in eval mode (no gradient recorded).
///
/// # Errors
/// Model errors.
pub fn logits(
    model: &mut dyn Model,
    hook: Option<&mut dyn LayerHook>,
    x: ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    let mut tape = Tape::<f32>::no_grad();
    let xv = tape.constant(x);
    let y = model.forward(&mut tape, xv, Mode::Eval, hook)?;
    Ok(tape.value(y).clone())
}

/// Top-1 / top-5 / mean CE over every batch of `test` (eval mode, data epoch 0).
///
/// # Errors
/// Data and model errors.
pub fn evaluate(
    model: &mut dyn Model,
    mut hook: Option<&mut dyn LayerHook>,
    test: &Loader,
) -> Result<EvalStats> {
    let (mut t1, mut t5, mut n, mut loss) = (0usize, 0usize, 0usize, 0f64);
    for batch in test.epoch(0) {
        let batch = batch?;
        let mut tape = Tape::<f32>::no_grad();
        let x = tape.constant(batch.images.into_dyn());
        let logits = model.forward(
            &mut tape,
            x,
            Mode::Eval,
            hook.as_deref_mut().map(|h| h as &mut dyn LayerHook),
        )?;
        let ce = ops::cross_entropy(&mut tape, logits, &batch.labels, 0.0)?;
        let (a, b) = topk_hits(tape.value(logits), &batch.labels, 5);
        t1 += a;
        t5 += b;
        n += batch.labels.len();
        let ce = tape.value(ce).iter().next().copied().unwrap_or(f32::NAN) as f64;
        loss += ce * batch.labels.len() as f64;
    }
    let d = n.max(1) as f64;
    Ok(EvalStats {
        top1: 100.0 * t1 as f64 / d,
        top5: 100.0 * t5 as f64 / d,
        loss: loss / d,
        images: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_counts_ranks_with_ties_broken_by_index() {
        let logits = ArrayD::from_shape_vec(
            vec![3, 6],
            vec![
                0.1, 0.9, 0.3, 0.2, 0.0, 0.5, // label 1: rank 0
                0.5, 0.5, 0.4, 0.3, 0.2,
                0.6, // label 1: 0.6 and the equal 0.5 at index 0 beat it: rank 2
                1.0, 2.0, 3.0, 4.0, 5.0, 6.0, // label 0: rank 5
            ],
        )
        .unwrap();
        assert_eq!(topk_hits(&logits, &[1, 1, 0], 5), (1, 2));
        assert_eq!(topk_hits(&logits, &[1, 1, 0], 1), (1, 1));
    }
}
