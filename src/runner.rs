//! Running epochs: the progress bar, Ctrl-C at step boundaries, evaluation and metrics at the
//! end of an epoch, checkpoints after every epoch, `--stop-after-epochs`.

use crate::checkpoint::{Checkpoint, RunState};
use crate::config::Config;
use crate::engine::{self, Data, StepStats, Trainee};
use crate::interrupt;
use crate::metrics::{EpochRecord, MetricsWriter};
use crate::Ctx;
use anyhow::Result;
use hla_autograd::optim::Sgd;
use hla_models::Model;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where a phase is: epochs done, optimizer steps done, position inside the current epoch and
/// the running sums of the current (partial) epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Position {
    /// Epochs completed in the phase.
    pub epoch: usize,
    /// Optimizer steps taken in the phase (LR schedule position).
    pub step: u64,
    /// Batches of epoch `epoch` already consumed.
    pub batch: usize,
    /// Running sums of the partial epoch (restored on a mid-epoch resume).
    pub loss: f64,
    /// Σ CE·n.
    pub ce: f64,
    /// Σ λL_d·n.
    pub ld: f64,
    /// Correct predictions so far.
    pub correct: usize,
    /// Samples so far.
    pub n: usize,
    /// Training seconds of the partial epoch.
    pub seconds: f64,
}

impl Position {
    fn stats(&self) -> StepStats {
        StepStats {
            loss: self.loss,
            ce: self.ce,
            ld: self.ld,
            correct: self.correct,
            n: self.n,
        }
    }
    fn add(&mut self, s: StepStats) {
        self.loss += s.loss;
        self.ce += s.ce;
        self.ld += s.ld;
        self.correct += s.correct;
        self.n += s.n;
    }
    /// Moves to the start of the next epoch.
    pub fn next_epoch(&mut self) {
        *self = Position {
            epoch: self.epoch + 1,
            step: self.step,
            ..Position::default()
        };
    }
}

/// How an epoch ended.
pub enum Outcome {
    /// All batches done.
    Completed,
    /// Ctrl-C: stopped after a step; the position says where.
    Interrupted,
}

/// The things an epoch needs besides the model and method.
pub struct EpochCtx<'a> {
    /// Invocation context (output mode).
    pub ctx: &'a Ctx,
    /// Config.
    pub cfg: &'a Config,
    /// Loaders.
    pub data: &'a Data,
    /// Label of the bar, e.g. "fp 3/10".
    pub label: String,
    /// Data epoch (seeds the shuffle / augmentation of this epoch).
    pub data_epoch: u64,
}

/// Runs the rest of one epoch from `pos.batch`, updating `pos`.
pub fn run_epoch(e: &EpochCtx<'_>, t: &mut dyn Trainee, pos: &mut Position) -> Result<Outcome> {
    let loader = &e.data.train;
    let total = loader.batches_per_epoch();
    let mut bar = e
        .ctx
        .ui
        .epoch_bar(&e.label, total, loader.config().batch_size);
    let start = Instant::now();
    let base_seconds = pos.seconds;
    let mut outcome = Outcome::Completed;
    if pos.batch > 0 {
        for _ in 0..pos.batch {
            bar.step(pos.stats().mean_loss(), pos.stats().acc());
        }
    }
    for batch in loader.epoch_from(e.data_epoch, pos.batch)? {
        if interrupt::requested() {
            outcome = Outcome::Interrupted;
            break;
        }
        let batch = batch?;
        t.parts().0.set_dropout_seed(hla_data::derive_seed(
            e.cfg.seed,
            hla_data::Purpose::Augment,
            e.data_epoch,
            1 << 40 | pos.batch as u64,
        ));
        let s = t.step(batch.images, &batch.labels, pos.step)?;
        pos.add(s);
        pos.step += 1;
        pos.batch += 1;
        bar.step(pos.stats().mean_loss(), pos.stats().acc());
    }
    pos.seconds = base_seconds + start.elapsed().as_secs_f64();
    bar.finish();
    Ok(outcome)
}

/// Builds the epoch-end record (evaluation included) for `pos` (a completed epoch).
pub fn epoch_record(
    e: &EpochCtx<'_>,
    t: &mut dyn Trainee,
    phase: &str,
    pos: &Position,
    t_pct: Option<u32>,
    recalibrate: usize,
) -> Result<EpochRecord> {
    let t0 = Instant::now();
    if recalibrate > 0 {
        engine::recalibrate_bn(t, &e.data.train, recalibrate, 1_000_000 + e.data_epoch)?;
    }
    let (top1, top5, _) = engine::evaluate(t, &e.data.test)?;
    let layers = t.layer_stats()?;
    let s = pos.stats();
    let n = s.n.max(1) as f64;
    let (sparsity, cos_sim, threshold, empty_rows) = if layers.is_empty() {
        (None, None, None, None)
    } else {
        let total: f64 = layers
            .iter()
            .map(|l| l.weights as f64)
            .sum::<f64>()
            .max(1.0);
        let zeros: f64 = layers.iter().map(|l| l.sparsity * l.weights as f64).sum();
        let rows: f64 = layers.iter().map(|l| l.rows as f64).sum::<f64>().max(1.0);
        let cos: f64 = layers.iter().map(|l| l.cos_sim * l.rows as f64).sum();
        let thr = layers.iter().map(|l| l.threshold).sum::<f64>() / layers.len() as f64;
        (
            Some(zeros / total),
            Some(cos / rows),
            Some(thr),
            Some(layers.iter().map(|l| l.empty_rows).sum()),
        )
    };
    Ok(EpochRecord {
        phase: phase.to_string(),
        epoch: pos.epoch + 1,
        t_pct,
        lr: t.lr(pos.step.saturating_sub(1)),
        train_loss: s.loss / n,
        train_ce: s.ce / n,
        train_ld: s.ld / n,
        train_top1: s.acc(),
        test_top1: top1,
        test_top5: top5,
        sparsity,
        cos_sim,
        threshold,
        empty_rows,
        images_per_s: s.n as f64 / pos.seconds.max(1e-9),
        seconds: pos.seconds + t0.elapsed().as_secs_f64(),
        layers,
    })
}

/// Everything saved in a checkpoint besides the model.
pub struct Snapshot<'a> {
    /// Command name.
    pub command: &'a str,
    /// Phase label.
    pub phase: &'a str,
    /// Config.
    pub cfg: &'a Config,
    /// Position.
    pub pos: &'a Position,
    /// Whether the phase is finished.
    pub finished: bool,
    /// Metric records written.
    pub metrics_records: usize,
    /// Method state (JSON).
    pub method_state: serde_json::Value,
    /// Method tensors (`method/...`).
    pub method_tensors: BTreeMap<String, crate::checkpoint::Tensor>,
}

/// Writes `dir/checkpoint.safetensors` atomically.
pub fn save_checkpoint(
    dir: &Path,
    model: &dyn Model,
    sgd: &Sgd<f32>,
    s: Snapshot<'_>,
) -> Result<PathBuf> {
    let mut tensors = BTreeMap::new();
    engine::model_tensors(model, &mut tensors);
    engine::optim_tensors(sgd, &mut tensors);
    tensors.extend(s.method_tensors);
    let ck = Checkpoint {
        state: RunState {
            command: s.command.to_string(),
            phase: s.phase.to_string(),
            config_digest: s.cfg.digest(),
            arch: s.cfg.model.arch.name().to_string(),
            seed: s.cfg.seed,
            epoch: s.pos.epoch,
            step: s.pos.step,
            batch_in_epoch: s.pos.batch,
            finished: s.finished,
            metrics_records: s.metrics_records,
            method_state: s.method_state,
            extra: serde_json::json!({
                "position": s.pos,
                "optim_len": sgd.state().len(),
            }),
        },
        tensors,
    };
    let path = dir.join(crate::checkpoint::LATEST);
    ck.save(&path)?;
    Ok(path)
}

/// Restores the position saved by [`save_checkpoint`].
pub fn position_of(ck: &Checkpoint) -> Result<Position> {
    let p = ck
        .state
        .extra
        .get("position")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    Ok(serde_json::from_value(p)?)
}

/// Number of optimizer parameter positions saved by [`save_checkpoint`].
pub fn optim_len_of(ck: &Checkpoint) -> usize {
    ck.state
        .extra
        .get("optim_len")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as usize
}

/// Appends the record, prints it, and returns whether `--stop-after-epochs` is reached.
pub fn finish_epoch(
    ctx: &Ctx,
    metrics: &mut MetricsWriter,
    label: &str,
    r: EpochRecord,
) -> Result<()> {
    ctx.ui.epoch_done(label, &r);
    metrics.push(r)
}
