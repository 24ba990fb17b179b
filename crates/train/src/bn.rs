//! BatchNorm re-estimation: after a change of the layers' output scale (hyperspherical
//! conversion, ternarisation) the running statistics are stale, and short runs have no time to
//! let them decay (spec section 3.3 note, knob `bn_recalibrate_batches`).

use crate::error::{Result, TrainError};
use hla_autograd::Tape;
use hla_data::Loader;
use hla_models::{BufferMut, BufferRef, LayerHook, Mode, Model};
use hla_tensor::group::Group;
use ndarray::Array1;
use std::collections::HashMap;

/// Replaces every BN layer's running mean and variance by their plain average over `batches`
/// training batches of data epoch `data_epoch` (PyTorch's cumulative mode, `momentum = None`),
/// computed with train-mode forwards through `hook` and no weight update.
///
/// Each train-mode forward moves a running statistic to `(1 − m)·old + m·batch`, with `m` the
/// layer's own momentum ([`Model::batch_norm_momenta`]); the batch value is recovered as
/// `(new − (1 − m)·old) / m` and the values are averaged in f64 in batch order
/// (deterministic). `num_batches_tracked` counts the forwards, as in PyTorch.
///
/// # Errors
/// `Mismatch` if a running statistic belongs to no BN layer the model reports, or its momentum
/// is 0; data and model errors.
pub fn recalibrate_bn(
    model: &mut dyn Model,
    mut hook: Option<&mut dyn LayerHook>,
    train: &Loader,
    batches: usize,
    data_epoch: u64,
    group: Option<&Group>,
) -> Result<()> {
    if batches == 0 {
        return Ok(());
    }
    let momenta: HashMap<String, f32> = model.batch_norm_momenta().into_iter().collect();
    // One momentum per F32 buffer (running_mean / running_var), in buffer order.
    let mut per_buffer = Vec::new();
    for (name, b) in model.buffers() {
        if let BufferRef::F32(_) = b {
            let layer = name
                .rsplit_once('.')
                .map(|(l, _)| l)
                .unwrap_or(name.as_str());
            let m = momenta.get(layer).copied().ok_or_else(|| {
                TrainError::Mismatch(format!(
                    "recalibrate_bn: buffer `{name}` belongs to no BatchNorm layer of {}",
                    model.arch()
                ))
            })?;
            if !(m > 0.0 && m <= 1.0) {
                return Err(TrainError::Mismatch(format!(
                    "recalibrate_bn: BatchNorm `{layer}` has momentum {m}; need 0 < m <= 1"
                )));
            }
            per_buffer.push(m);
        }
    }
    let snapshot = |m: &dyn Model| -> Vec<Array1<f32>> {
        m.buffers()
            .into_iter()
            .filter_map(|(_, b)| match b {
                BufferRef::F32(a) => Some(a.clone()),
                BufferRef::Count(_) => None,
            })
            .collect()
    };
    let mut sums: Vec<Option<Array1<f64>>> = vec![None; per_buffer.len()];
    let mut count = 0usize;
    for batch in train.epoch(data_epoch).take(batches) {
        let batch = batch?;
        let before = snapshot(model);
        let mut tape = Tape::<f32>::no_grad();
        tape.set_group(group.cloned());
        let x = tape.batch_input(batch.images.into_dyn());
        model.forward(
            &mut tape,
            x,
            Mode::Train,
            hook.as_deref_mut().map(|h| h as &mut dyn LayerHook),
        )?;
        let after = snapshot(model);
        for (((slot, b), a), &m) in sums.iter_mut().zip(&before).zip(&after).zip(&per_buffer) {
            let batch_stat = ((a - &(b * (1.0 - m))) / m).mapv(|v| v as f64);
            match slot {
                Some(acc) => *acc += &batch_stat,
                None => *slot = Some(batch_stat),
            }
        }
        count += 1;
    }
    if count == 0 {
        return Ok(());
    }
    let mut sums = sums.into_iter();
    for (_, b) in model.buffers_mut() {
        if let BufferMut::F32(a) = b {
            if let Some(Some(s)) = sums.next() {
                *a = s.mapv(|v| (v / count as f64) as f32);
            }
        }
    }
    Ok(())
}
