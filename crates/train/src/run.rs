//! Whole runs in a run directory: `train` (full precision or hyperspherical, `train.mode`) and
//! `quantize` (Algorithm 1 for HLA, or the FP / TWN / TTQ baselines), each resumable from its
//! checkpoint at any step boundary and bit-identical to an uninterrupted run.
//!
//! The directory must exist and hold the run's resolved config (the caller writes it, see
//! [`RESOLVED`]); a run writes `checkpoint.safetensors` after every epoch (and when stopped),
//! `metrics.jsonl` / `metrics.csv`, `hist-*.json` (weights of the histogram layer at the start,
//! after stage 1 and ternarised, when `report.plots`) and, for `train`, `model.safetensors`.
//! Progress goes to an [`Observer`]; a [`StopFlag`] asks the loop to stop after the current step
//! and write a checkpoint.

use crate::checkpoint::{self, Checkpoint, RunState, Tensor, LATEST};
use crate::config::{Config, TrainMode};
use crate::data::{load_data_sharded, Data};
use crate::error::{Result, TrainError};
use crate::eval::evaluate;
use crate::metrics::{EpochRecord, LayerRecord, MetricsWriter, SimRecord};
use crate::schedule::Sched;
use crate::step::{EpochStats, Learner};
use hla_core::algorithm::Phase;
use hla_core::method::{HookMode, MethodCheckpoint, MethodState};
use hla_core::Method;
use hla_data::Shard;
use hla_models::Model;
use hla_tensor::group::{shard_rows, Group};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// File name of the resolved config inside a run directory.
pub const RESOLVED: &str = "config.resolved.toml";

/// What a run reports while it goes. Every method has a default: nothing, or for
/// [`Observer::warning`], a call of [`Observer::info`].
pub trait Observer {
    /// A line of information (setup, resume position).
    fn info(&mut self, _msg: &str) {}
    /// Something the user must see in every output mode (a skipped image, a skipped empty
    /// class folder); the library prints nothing itself. Default: [`Observer::info`].
    fn warning(&mut self, msg: &str) {
        self.info(&format!("warning: {msg}"));
    }
    /// An epoch (or the rest of one, from batch `done`) of `batches` batches begins.
    fn epoch_start(&mut self, _label: &str, _batches: usize, _batch_size: usize, _done: usize) {}
    /// One optimizer step finished; `so_far` sums the epoch's steps.
    fn step(&mut self, _so_far: &EpochStats) {}
    /// An epoch finished and was evaluated.
    fn epoch_end(&mut self, _label: &str, _record: &EpochRecord) {}
}

/// An observer that ignores everything.
pub struct Silent;

impl Observer for Silent {}

/// Asks a running loop to stop at the next step boundary (Ctrl-C). Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Requests the stop; returns whether it had been requested before.
    pub fn request(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }
    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How a run is driven.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Loader threads (the kernels use the global rayon pool; results do not depend on either).
    pub threads: usize,
    /// Stop (with a checkpoint) after this many epochs of this invocation.
    pub stop_after_epochs: Option<usize>,
    /// Stop request from outside.
    pub stop: StopFlag,
    /// Data-parallel group (`None`: one process). Every rank runs the same call with the same
    /// config and directory; each reads its slice of every global batch, the reductions run
    /// across the ranks in the single-process order (bit-identical results), and only rank 0
    /// writes to the run directory.
    pub group: Option<Group>,
}

impl RunOptions {
    /// Whether this process writes the run directory (rank 0, or the only process).
    pub fn writes(&self) -> bool {
        !matches!(&self.group, Some(g) if g.rank() != 0)
    }

    /// This process's slice of the training data.
    pub fn shard(&self) -> Shard {
        self.group.as_ref().map_or(Shard::default(), |g| Shard {
            rank: g.rank(),
            world: g.size(),
        })
    }
}

/// Loads the run's data for this process and checks that every global batch gives each rank
/// at least one sample (a rank without samples has nothing to compute its part with).
fn load_run_data(cfg: &Config, opts: &RunOptions) -> Result<Data> {
    let data = load_data_sharded(cfg, opts.threads, opts.shard())?;
    if let Some(g) = &opts.group {
        let (n, b) = (data.train.samples_per_epoch(), cfg.data.batch_size);
        let last = if cfg.data.drop_last || n % b == 0 {
            b
        } else {
            n % b
        };
        for size in [b.min(n), last] {
            let end = (0..g.size()).map(|r| shard_rows(size, r, g.size()));
            if let Some(r) = end.clone().position(|r| r.is_empty()) {
                return Err(TrainError::Mismatch(format!(
                    "data-parallel run on {} ranks: a batch of {size} samples leaves rank {r} without samples (slices of {}); use fewer ranks, a larger data.batch_size or data.drop_last = true",
                    g.size(),
                    shard_rows(size, 0, g.size()).len()
                )));
            }
        }
    }
    Ok(data)
}

/// Final numbers of a finished run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Method of the run (`fp` for `train`).
    pub method: Method,
    /// Test top-1 (%) at the end.
    pub top1: f64,
    /// Test top-5 (%) at the end.
    pub top5: f64,
    /// Overall sparsity of the ternary weights (quantised runs).
    pub sparsity: Option<f64>,
    /// Mean cosine similarity of W and Ŵ (quantised runs).
    pub cos_sim: Option<f64>,
    /// SHA-256 of the final model state.
    pub hash: String,
    /// All epoch records.
    pub records: Vec<EpochRecord>,
}

/// How a run call ended.
#[derive(Debug, Clone)]
pub enum RunEnd {
    /// Every epoch done.
    Finished(RunSummary),
    /// Stopped by the [`StopFlag`] after a step; the checkpoint holds the position.
    Interrupted,
    /// Stopped after `epochs` epochs as asked (`stop_after_epochs`); checkpoint written.
    StoppedEarly {
        /// Epochs run by this call.
        epochs: usize,
    },
}

/// Where a run is: data epochs done, optimizer steps done, position inside the current epoch and
/// the running sums since the last record. Stored in checkpoints (`extra.position`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Position {
    /// Epochs completed in the phase.
    pub epoch: usize,
    /// Optimizer steps taken in the phase (LR schedule position).
    pub step: u64,
    /// Batches of epoch `epoch` already consumed.
    pub batch: usize,
    /// Σ loss·n since the last record (restored on a mid-epoch resume).
    pub loss: f64,
    /// Σ CE·n.
    pub ce: f64,
    /// Σ λL_d·n.
    pub ld: f64,
    /// Correct predictions so far.
    pub correct: usize,
    /// Samples so far.
    pub n: usize,
    /// Training seconds since the last record.
    pub seconds: f64,
}

impl Position {
    /// The running sums since the last record.
    pub fn stats(&self) -> EpochStats {
        EpochStats {
            loss: self.loss,
            ce: self.ce,
            ld: self.ld,
            correct: self.correct,
            n: self.n,
        }
    }
    /// Clears the running sums (after a record): the next record covers the steps after it.
    pub fn reset_stats(&mut self) {
        self.set_stats(EpochStats::default());
        self.seconds = 0.0;
    }
    fn set_stats(&mut self, s: EpochStats) {
        self.loss = s.loss;
        self.ce = s.ce;
        self.ld = s.ld;
        self.correct = s.correct;
        self.n = s.n;
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

/// Builds the model of the config (weights drawn from the run seed) and loads
/// `model.pretrained` if set.
///
/// # Errors
/// Unknown architecture; unreadable weights.
pub fn build_model(cfg: &Config) -> Result<Box<dyn Model>> {
    let mut m = hla_models::build(cfg.model.arch.name(), cfg.model.num_classes, cfg.seed)?;
    if let Some(p) = &cfg.model.pretrained {
        hla_models::load_safetensors(m.as_mut(), p, true)?;
    }
    Ok(m)
}

/// Where the learning rate of step `t` comes from.
enum Lr {
    /// A schedule over the phase (`hla train`).
    Sched(Sched),
    /// The method's per-iteration SGDR of the current phase (Algorithm 1 and the baselines).
    Method,
}

impl Lr {
    fn at(&self, l: &Learner, t: u64) -> Result<f64> {
        match (self, l.method.as_ref()) {
            (Lr::Sched(s), _) => Ok(s.lr(t)),
            (Lr::Method, Some(st)) => Ok(st.lr_at(t)?),
            (Lr::Method, None) => Err(TrainError::Mismatch(
                "internal: a method schedule needs a method state".into(),
            )),
        }
    }
}

/// The fixed parts of one run's loop.
struct Loop<'a> {
    cfg: &'a Config,
    dir: &'a Path,
    data: Data,
    opts: &'a RunOptions,
    lr: Lr,
    /// Command recorded in the checkpoint (`train`, `quantize`); a resume must match it.
    command: &'static str,
    /// Quantize runs: segments of Algorithm 1 (evaluation at each segment end, the method's
    /// thresholds prepared before every step) and per-layer ternary statistics in the records.
    segments: bool,
}

enum EpochEnd {
    /// The data epoch is done.
    Completed,
    /// Stopped by the stop flag before a step.
    Interrupted,
    /// A segment of Algorithm 1 is complete (possibly on the epoch's last step too).
    Segment,
}

impl Loop<'_> {
    /// Runs the rest of one data epoch from `pos.batch`, updating `pos`; a quantize run stops
    /// early when a segment of Algorithm 1 is complete.
    fn run_epoch(
        &self,
        l: &mut Learner,
        pos: &mut Position,
        label: &str,
        obs: &mut dyn Observer,
    ) -> Result<EpochEnd> {
        let segment_done =
            |l: &Learner| self.segments && l.state().is_some_and(|st| st.algo.segment_complete());
        if segment_done(l) {
            return Ok(EpochEnd::Segment);
        }
        let loader = &self.data.train;
        let data_epoch = pos.epoch as u64;
        obs.epoch_start(
            label,
            loader.batches_per_epoch(),
            loader.config().batch_size,
            pos.batch,
        );
        let start = Instant::now();
        let base_seconds = pos.seconds;
        let (first_batch, sent_before) = (
            pos.batch,
            self.opts.group.as_ref().map_or(0, |g| g.bytes_sent()),
        );
        let mut stats = pos.stats();
        let mut end = EpochEnd::Completed;
        for batch in loader.epoch_from(data_epoch, pos.batch)? {
            // Ranks stop together: at the first step boundary where any of them was asked to.
            let stop = self.opts.stop.is_requested();
            let stop = match &self.opts.group {
                Some(g) => {
                    let n = g.sum_count("stop", usize::from(stop));
                    n.map_err(hla_autograd::AutogradError::from)? > 0
                }
                None => stop,
            };
            if stop {
                end = EpochEnd::Interrupted;
                break;
            }
            let batch = batch?;
            for r in &batch.skip_reasons {
                obs.warning(&format!("skipped {r}"));
            }
            l.model.set_dropout_seed(hla_data::derive_seed(
                self.cfg.seed,
                hla_data::Purpose::Augment,
                data_epoch,
                1 << 40 | pos.batch as u64,
            ));
            if self.segments {
                l.begin_segment()?;
            }
            let lr = self.lr.at(l, pos.step)?;
            let s = l.train_step(batch.images.into_dyn(), &batch.labels, lr)?;
            stats.add(&s);
            pos.set_stats(stats);
            pos.step += 1;
            pos.batch += 1;
            obs.step(&stats);
            if segment_done(l) {
                end = EpochEnd::Segment;
                break;
            }
        }
        pos.seconds = base_seconds + start.elapsed().as_secs_f64();
        if let Some(g) = &self.opts.group {
            let steps = (pos.batch - first_batch).max(1) as f64;
            obs.info(&format!(
                "data-parallel: rank {} of {} sent {:.2} MB per step",
                g.rank(),
                g.size(),
                (g.bytes_sent() - sent_before) as f64 / steps / 1e6
            ));
        }
        Ok(end)
    }

    /// The epoch-end record (evaluation included, after `recalibrate` BN batches) of `pos`.
    fn epoch_record(
        &self,
        l: &mut Learner,
        phase: &str,
        pos: &Position,
        t_pct: Option<u32>,
        recalibrate: usize,
    ) -> Result<EpochRecord> {
        let data_epoch = pos.epoch as u64;
        let t0 = Instant::now();
        if recalibrate > 0 {
            let (m, h) = l.parts();
            // Per-rank BN statistics (`train.sync_bn = false`) are re-estimated per rank too.
            let group = self.opts.group.as_ref().filter(|_| self.cfg.train.sync_bn);
            let train = &self.data.train;
            crate::bn::recalibrate_bn(m, h, train, recalibrate, 1_000_000 + data_epoch, group)?;
        }
        let ev = {
            let (m, h) = l.parts();
            evaluate(m, h, &self.data.test)?
        };
        let (layers, sim) = if self.segments {
            layer_records(l)?
        } else {
            (Vec::new(), None)
        };
        let sims = sim_records(self.cfg, l)?;
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
            let thr = layers.iter().map(|l| l.threshold).sum::<f64>() / layers.len() as f64;
            (
                Some(zeros / total),
                sim,
                Some(thr),
                Some(layers.iter().map(|l| l.empty_rows).sum()),
            )
        };
        let spe = self.data.train.batches_per_epoch().max(1) as f64;
        let delta_bar_start = l
            .state()
            .and_then(|st| st.algo.delta_bar_init.as_ref())
            .filter(|d| !d.is_empty())
            .map(|d| d.iter().sum::<f64>() / d.len() as f64);
        Ok(EpochRecord {
            phase: phase.to_string(),
            epoch: pos.epoch + 1,
            step: pos.step,
            epochs: pos.step as f64 / spe,
            t_pct,
            delta_bar_start,
            lr: self.lr.at(l, pos.step.saturating_sub(1))?,
            train_loss: s.loss / n,
            train_ce: s.ce / n,
            train_ld: s.ld / n,
            train_top1: s.acc(),
            test_top1: ev.top1,
            test_top5: ev.top5,
            sparsity,
            cos_sim,
            threshold,
            empty_rows,
            images_per_s: s.n as f64 / pos.seconds.max(1e-9),
            seconds: pos.seconds + t0.elapsed().as_secs_f64(),
            sims,
            layers,
        })
    }

    /// Writes `checkpoint.safetensors` atomically.
    fn save(
        &self,
        l: &Learner,
        phase: &str,
        pos: &Position,
        finished: bool,
        metrics_records: usize,
    ) -> Result<PathBuf> {
        let path = self.dir.join(LATEST);
        if !self.opts.writes() {
            return Ok(path);
        }
        let method_state = match &l.method {
            Some(st) => {
                let mc = st.checkpoint();
                let v = serde_json::to_value(&mc).map_err(|source| TrainError::Json {
                    what: "method state",
                    source,
                })?;
                let back: MethodCheckpoint =
                    serde_json::from_value(v.clone()).map_err(|source| TrainError::Json {
                        what: "method state",
                        source,
                    })?;
                if back != mc {
                    return Err(TrainError::Mismatch(
                        "internal: method state does not round-trip through JSON exactly".into(),
                    ));
                }
                v
            }
            None => serde_json::Value::Null,
        };
        let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
        checkpoint::model_tensors(l.model.as_ref(), &mut tensors);
        checkpoint::optim_tensors(&l.sgd, &mut tensors);
        let ck = Checkpoint {
            state: RunState {
                command: self.command.to_string(),
                phase: phase.to_string(),
                config_digest: self.cfg.digest(),
                arch: self.cfg.model.arch.name().to_string(),
                seed: self.cfg.seed,
                epoch: pos.epoch,
                step: pos.step,
                batch_in_epoch: pos.batch,
                finished,
                metrics_records,
                method_state,
                extra: serde_json::json!({
                    "position": pos,
                    "optim_len": l.sgd.state().len(),
                }),
            },
            tensors,
        };
        ck.save(&path)?;
        Ok(path)
    }

    fn finish_epoch(
        &self,
        obs: &mut dyn Observer,
        metrics: &mut MetricsWriter,
        label: &str,
        r: EpochRecord,
    ) -> Result<()> {
        obs.epoch_end(label, &r);
        metrics.push(r)
    }
}

/// Per-layer ternary statistics of the learner's quantised layers and their Sim under
/// `sim_average` (empty / `None` without a method).
fn layer_records(l: &Learner) -> Result<(Vec<LayerRecord>, Option<f64>)> {
    let Some(st) = l.method.as_ref() else {
        return Ok((Vec::new(), None));
    };
    let m = st.metrics(l.model.as_ref())?;
    let sim = (!m.layers.is_empty()).then_some(m.sim);
    let layers = m
        .layers
        .into_iter()
        .map(|x| LayerRecord {
            layer: x.layer,
            sparsity: x.sparsity,
            cos_sim: x.mean_cos,
            threshold: x.threshold.unwrap_or(f64::NAN),
            empty_rows: x.empty_rows,
            rows: x.rows,
            weights: x.rows * x.fan_in,
        })
        .collect();
    Ok((layers, sim))
}

/// t (percent) of the Table-4 Sims in every record: 50, 70, 90, 95 and `sim_t_pct`.
fn sim_points(cfg: &Config) -> Vec<u32> {
    let mut t = vec![50, 70, 90, 95, cfg.hla.sim_t_pct];
    t.sort_unstable();
    t.dedup();
    t
}

/// Table 4's Sims of the learner's weights (the quantisable layers of `cfg.hla`'s method state,
/// or of a throw-away one for full-precision training).
fn sim_records(cfg: &Config, l: &Learner) -> Result<Vec<SimRecord>> {
    let owned;
    let st = match l.method.as_ref() {
        Some(st) => st,
        None => {
            let mut h = cfg.hla.clone();
            h.method = Method::Hla;
            owned = MethodState::new(h, l.model.as_ref())?;
            &owned
        }
    };
    if st.hook.layers.is_empty() {
        return Ok(Vec::new());
    }
    sim_points(cfg)
        .into_iter()
        .map(|t| {
            Ok(SimRecord {
                t_pct: t,
                normalized: st.sim_of(l.model.as_ref(), t, true)?,
                raw: st.sim_of(l.model.as_ref(), t, false)?,
            })
        })
        .collect()
}

/// Position saved by the run loop in a checkpoint.
///
/// # Errors
/// `Json` if the stored position is malformed.
pub fn position_of(ck: &Checkpoint) -> Result<Position> {
    let p = ck
        .state
        .extra
        .get("position")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    serde_json::from_value(p).map_err(|source| TrainError::Json {
        what: "checkpoint position",
        source,
    })
}

/// Number of optimizer parameter positions saved in a checkpoint.
pub fn optim_len_of(ck: &Checkpoint) -> usize {
    ck.state
        .extra
        .get("optim_len")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as usize
}

/// The method state stored in a checkpoint.
///
/// # Errors
/// `Checkpoint` if it is missing or unreadable.
pub fn method_checkpoint_of(ck: &Checkpoint, dir: &Path) -> Result<MethodCheckpoint> {
    serde_json::from_value(ck.state.method_state.clone())
        .map_err(|e| TrainError::checkpoint(dir, format!("method state unreadable: {e}")))
}

/// The hyperspherical-training method state: the hook in hyperspherical mode with λ = 0 (no
/// L_d; Table 4 "Hypersphere"), normalised weights and inputs on the quantisable layers.
///
/// # Errors
/// Method errors.
pub fn hyperspherical_state(cfg: &Config, model: &dyn Model) -> Result<MethodState> {
    let mut h = cfg.hla.clone();
    h.method = Method::Hla;
    let mut st = MethodState::new(h, model)?;
    st.hook.set_mode(HookMode::Hyperspherical, 0.0);
    Ok(st)
}

/// Restores the learner of a `train` checkpoint: model, momentum and, for a hyperspherical run
/// (`hs`), the method state set up on the restored weights (A18 gains and their momentum).
fn restore_train(
    l: &mut Learner,
    cfg: &Config,
    ck: &Checkpoint,
    dir: &Path,
    hs: bool,
) -> Result<()> {
    checkpoint::load_model_tensors(l.model.as_mut(), ck)?;
    checkpoint::load_optim_tensors(&mut l.sgd, ck, optim_len_of(ck))?;
    if hs {
        let mut st = hyperspherical_state(cfg, l.model.as_ref())?;
        st.restore(&method_checkpoint_of(ck, dir)?)?;
        st.hook.set_mode(HookMode::Hyperspherical, 0.0);
        l.method = Some(st);
    }
    Ok(())
}

fn refuse_finished(ck: &Checkpoint, dir: &Path) -> Result<()> {
    if ck.state.finished {
        return Err(TrainError::checkpoint(dir, "this run has already finished"));
    }
    Ok(())
}

/// Passes the data scan's warnings to the observer (the library itself prints nothing).
fn report_data_warnings(data: &crate::data::Data, obs: &mut dyn Observer) {
    for w in &data.warnings {
        obs.warning(w);
    }
}

/// Runs (or resumes, when `resume` is given) `hla train`: full-precision training, or
/// hyperspherical training with `train.mode = hyperspherical`.
///
/// # Errors
/// Data, model, checkpoint and I/O errors; `Diverged`.
pub fn train(
    cfg: &Config,
    dir: &Path,
    resume: Option<&Checkpoint>,
    opts: &RunOptions,
    obs: &mut dyn Observer,
) -> Result<RunEnd> {
    let hs = cfg.train.mode == TrainMode::Hyperspherical;
    let phase = if hs { "hyperspherical" } else { "fp" };
    let data = load_run_data(cfg, opts)?;
    report_data_warnings(&data, obs);
    let model = build_model(cfg)?;
    let lr = cfg.train.lr.unwrap_or(cfg.hla.lr);
    let mut l = Learner::new(model, None, &cfg.hla);
    l.label_smoothing = cfg.train.label_smoothing;
    l.group = opts.group.clone();
    l.local_bn = !cfg.train.sync_bn;
    let (mut pos, mut metrics) = match resume {
        Some(ck) => {
            refuse_finished(ck, dir)?;
            restore_train(&mut l, cfg, ck, dir, hs)?;
            let pos = position_of(ck)?;
            obs.info(&format!(
                "resuming {} at epoch {} batch {}",
                dir.display(),
                pos.epoch + 1,
                pos.batch
            ));
            let m = MetricsWriter::resume_for(dir, ck.state.metrics_records, opts.writes())?;
            (pos, m)
        }
        None => {
            if hs {
                let st = hyperspherical_state(cfg, l.model.as_ref())?;
                st.prepare_weights(l.model.as_mut())?;
                l.method = Some(st);
            }
            (
                Position::default(),
                MetricsWriter::create_for(dir, opts.writes())?,
            )
        }
    };
    let epochs = cfg.train.epochs;
    let spe = data.train.batches_per_epoch();
    let sched = Sched::new(cfg.train.schedule, lr, cfg, epochs, spe)?;
    obs.info(&format!(
        "hla train: {} on {}; {epochs} epochs x {spe} steps of batch {}; lr {lr} ({:?}); threads {}; out {}",
        cfg.model.arch,
        data.describe(cfg),
        cfg.data.batch_size,
        cfg.train.schedule,
        opts.threads,
        dir.display()
    ));
    let lp = Loop {
        cfg,
        dir,
        data,
        opts,
        lr: Lr::Sched(sched),
        command: "train",
        segments: false,
    };
    let mut ran = 0;
    while pos.epoch < epochs {
        let label = format!("{phase} {}/{epochs}", pos.epoch + 1);
        if let EpochEnd::Interrupted = lp.run_epoch(&mut l, &mut pos, &label, obs)? {
            lp.save(&l, phase, &pos, false, metrics.records().len())?;
            return Ok(RunEnd::Interrupted);
        }
        let r = lp.epoch_record(&mut l, phase, &pos, None, cfg.hla.bn_recalibrate_batches)?;
        lp.finish_epoch(obs, &mut metrics, &label, r)?;
        pos.next_epoch();
        lp.save(
            &l,
            phase,
            &pos,
            pos.epoch == epochs,
            metrics.records().len(),
        )?;
        ran += 1;
        if opts.stop_after_epochs == Some(ran) && pos.epoch < epochs {
            return Ok(RunEnd::StoppedEarly { epochs: ran });
        }
    }
    if opts.writes() {
        let weights = dir.join("model.safetensors");
        hla_models::save_safetensors(l.model.as_ref(), &weights)?;
    }
    let records = metrics.records().to_vec();
    let last = records.last().cloned().unwrap_or_default();
    Ok(RunEnd::Finished(RunSummary {
        method: Method::Fp,
        top1: last.test_top1,
        top5: last.test_top5,
        sparsity: None,
        cos_sim: None,
        hash: checkpoint::model_hash(l.model.as_ref()),
        records,
    }))
}

/// Index of the histogram layer (`report.histogram_layer`, else a middle quantised layer).
fn histogram_index(st: &MethodState, cfg: &Config) -> Option<usize> {
    let layers = &st.hook.layers;
    if layers.is_empty() {
        return None;
    }
    Some(
        layers
            .iter()
            .position(|l| l.info.layer == cfg.report.histogram_layer)
            .unwrap_or(layers.len() / 2),
    )
}

/// Writes `hist-<name>.json` with the histogram layer's normalised weights (or, with
/// `ternary`, its ternary weights Ŵ).
fn save_hist(dir: &Path, cfg: &Config, l: &Learner, name: &str, ternary: bool) -> Result<()> {
    let Some(st) = l.method.as_ref() else {
        return Ok(());
    };
    let (layer, values): (String, Vec<f32>) = match histogram_index(st, cfg) {
        None => (String::new(), Vec::new()),
        Some(i) => {
            let layer = st.hook.layers[i].info.layer.clone();
            let v = if ternary {
                st.quantized(l.model.as_ref())?
                    .get(i)
                    .map(|q| q.what.iter().copied().collect())
                    .unwrap_or_default()
            } else {
                st.normalized_weights(l.model.as_ref())?[i]
                    .iter()
                    .copied()
                    .collect()
            };
            (layer, v)
        }
    };
    let v = serde_json::json!({ "layer": layer, "values": values });
    checkpoint::atomic_write(
        &dir.join(format!("hist-{name}.json")),
        v.to_string().as_bytes(),
    )
}

/// A fresh quantisation learner for `cfg`: the model (pretrained or from `quantize.from` when
/// `load_start`), the method state and the optimizer.
///
/// # Errors
/// Model, checkpoint and method errors.
pub fn quantize_learner(cfg: &Config, load_start: bool) -> Result<Learner> {
    let mut model = build_model(cfg)?;
    if load_start {
        if let Some(f) = &cfg.quantize.from {
            checkpoint::load_weights(model.as_mut(), f)?;
        }
    }
    let st = MethodState::new(method_config(cfg), model.as_ref())?;
    Ok(Learner::new(model, Some(st), &cfg.hla))
}

/// The method's knobs of a quantize run: `[hla]`, with `quantize.baseline_epochs` (when set) as
/// the length of an FP / TWN / TTQ baseline.
pub fn method_config(cfg: &Config) -> hla_core::HlaConfig {
    let mut h = cfg.hla.clone();
    if h.method != Method::Hla {
        if let Some(e) = cfg.quantize.baseline_epochs {
            h.stage2_epochs = e;
        }
    }
    h
}

/// Puts the hook of a finished run in its final mode (HLA: ternary forward), so that
/// evaluation and export see the quantised network.
pub fn finalize_mode(l: &mut Learner) {
    if let Some(st) = l.method.as_mut() {
        if st.algo.is_done() && st.cfg.method == Method::Hla {
            let lambda = st.cfg.lambda_d;
            st.hook.set_mode(HookMode::Ternary, lambda);
        }
    }
}

/// Name of a phase in records and labels.
fn phase_name(phase: Phase, method: Method) -> &'static str {
    match phase {
        Phase::Warmup => "hla_warmup",
        Phase::Stage1 => "hla_stage1",
        Phase::Stage2 => "hla_stage2",
        _ => method.name(),
    }
}

/// The config with everything that cannot change stage 1 reset, for comparing the stage-1
/// part of two runs: the name, `[quantize]`, `[report]`, and the stage-2 knobs (Δ̄ start, length,
/// SGDR period, optimiser and gradient variants; the STE scaling too unless L_d uses the STE).
fn stage1_part(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    let d = hla_core::HlaConfig::default();
    c.name = String::new();
    c.quantize = Default::default();
    c.report = Default::default();
    let h = &mut c.hla;
    h.stage2_init_pct = d.stage2_init_pct;
    h.stage2_epochs = d.stage2_epochs;
    h.sgdr_t0_epochs_stage2 = None;
    h.delta_grad_source = d.delta_grad_source;
    h.delta_grad_mask = d.delta_grad_mask;
    h.delta_grad_norm = d.delta_grad_norm;
    h.delta_grad_sign = d.delta_grad_sign;
    h.delta_lr_mult = d.delta_lr_mult;
    h.delta_momentum = d.delta_momentum;
    h.delta_wd = d.delta_wd;
    if !h.ld_ste {
        h.ste_scale = d.ste_scale;
    }
    c
}

/// Checks that `cfg` (a stage-2 run) shares its stage 1 with `src` (the stage-1 run's config).
fn check_same_stage1(cfg: &Config, src: &Config, src_dir: &Path) -> Result<()> {
    let (a, b) = (stage1_part(cfg).to_toml(), stage1_part(src).to_toml());
    if let Some((x, y)) = a.lines().zip(b.lines()).find(|(x, y)| x != y) {
        return Err(TrainError::checkpoint(
            src_dir,
            format!("stage 1 ran with another config (`{y}`; this run has `{x}`)"),
        ));
    }
    if a != b {
        return Err(TrainError::checkpoint(
            src_dir,
            "stage 1 ran with another config",
        ));
    }
    Ok(())
}

/// A stage-2 run that continues the finished stage-1 run in `src` (`quantize.stage1_from`):
/// weights, momentum, BN statistics, method state, data position and the stage-1 records, so
/// the result is bit-identical to one uninterrupted run of `cfg`.
fn fork_stage1(
    cfg: &Config,
    dir: &Path,
    src: &Path,
    spe: usize,
    write: bool,
) -> Result<(Learner, Position, MetricsWriter)> {
    let ck = Checkpoint::load(src)?;
    let src_cfg_path = src.join(RESOLVED);
    let text = std::fs::read_to_string(&src_cfg_path)
        .map_err(|e| TrainError::io(&src_cfg_path, "cannot read", e))?;
    let src_cfg: Config =
        toml::from_str(&text).map_err(|e| TrainError::checkpoint(&src_cfg_path, e.to_string()))?;
    check_same_stage1(cfg, &src_cfg, src)?;
    if ck.state.command != "quantize" || !ck.state.finished {
        return Err(TrainError::checkpoint(
            src,
            "not a finished `hla quantize` stage-1 run (hla.stage2_epochs = 0)",
        ));
    }
    let mut l = quantize_learner(cfg, false)?;
    checkpoint::load_model_tensors(l.model.as_mut(), &ck)?;
    checkpoint::load_optim_tensors(&mut l.sgd, &ck, optim_len_of(&ck))?;
    let mc = method_checkpoint_of(&ck, src)?;
    let st = l
        .method
        .as_mut()
        .expect("a quantize learner has a method state");
    st.restore(&mc)?;
    let algo = hla_core::algorithm::Algorithm1::at_stage2(&cfg.hla, spe as u64, mc.algo.steps_done)
        .map_err(|e| TrainError::checkpoint(src, e.to_string()))?;
    st.set_algo(algo);
    let pos = position_of(&ck)?;
    let mut metrics = MetricsWriter::create_for(dir, write)?;
    for r in MetricsWriter::resume_read(src, ck.state.metrics_records)? {
        metrics.push(r)?;
    }
    if !write {
        return Ok((l, pos, metrics));
    }
    // The stage-1 histograms (start, every sub-stage end, end of stage 1) of the source run.
    let entries = std::fs::read_dir(src).map_err(|e| TrainError::io(src, "cannot list", e))?;
    let mut hists: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("hist-st") && n.ends_with(".json"))
        })
        .collect();
    hists.sort();
    for f in hists {
        let b = std::fs::read(&f).map_err(|e| TrainError::io(&f, "cannot read", e))?;
        let name = f.file_name().expect("listed files have names");
        checkpoint::atomic_write(&dir.join(name), &b)?;
    }
    Ok((l, pos, metrics))
}

/// Runs (or resumes) `hla quantize`: Algorithm 1 (HLA) or the FP / TWN / TTQ baseline of
/// `hla.method`, from `quantize.from`, `model.pretrained`, scratch, or — for stage 2 only — the
/// finished stage-1 run `quantize.stage1_from`. A record is written at the end of every segment
/// (stage-1 sub-stage, stage 2, a baseline) and of every data epoch, each followed by a
/// checkpoint.
///
/// # Errors
/// Data, model, method, checkpoint and I/O errors; `Diverged`.
pub fn quantize(
    cfg: &Config,
    dir: &Path,
    resume: Option<&Checkpoint>,
    opts: &RunOptions,
    obs: &mut dyn Observer,
) -> Result<RunEnd> {
    let method = cfg.hla.method;
    let data = load_run_data(cfg, opts)?;
    report_data_warnings(&data, obs);
    let spe = data.train.batches_per_epoch();
    let (mut l, mut pos, mut metrics) = match (resume, &cfg.quantize.stage1_from) {
        (Some(ck), _) => {
            refuse_finished(ck, dir)?;
            let mut l = quantize_learner(cfg, false)?;
            checkpoint::load_model_tensors(l.model.as_mut(), ck)?;
            checkpoint::load_optim_tensors(&mut l.sgd, ck, optim_len_of(ck))?;
            let mc = method_checkpoint_of(ck, dir)?;
            method_state_mut(&mut l)?.restore(&mc)?;
            let pos = position_of(ck)?;
            obs.info(&format!(
                "resuming {} at epoch {} batch {} (step {})",
                dir.display(),
                pos.epoch + 1,
                pos.batch,
                pos.step
            ));
            let m = MetricsWriter::resume_for(dir, ck.state.metrics_records, opts.writes())?;
            (l, pos, m)
        }
        (None, Some(src)) => {
            obs.info(&format!("stage 2 from the stage-1 run {}", src.display()));
            fork_stage1(cfg, dir, src, spe, opts.writes())?
        }
        (None, None) => {
            let mut l = quantize_learner(cfg, true)?;
            let st = l
                .method
                .as_ref()
                .expect("a quantize learner has a method state");
            st.prepare_weights(l.model.as_mut())?;
            if cfg.report.plots && opts.writes() {
                save_hist(dir, cfg, &l, "start", false)?;
            }
            (
                l,
                Position::default(),
                MetricsWriter::create_for(dir, opts.writes())?,
            )
        }
    };
    l.group = opts.group.clone();
    l.local_bn = !cfg.train.sync_bn;
    method_state_mut(&mut l)?
        .algo
        .set_steps_per_epoch(spe as u64)?;
    let fresh = resume.is_none() && cfg.quantize.stage1_from.is_none();
    let total = method_state(&l)?.algo.total_epochs();
    obs.info(&format!(
        "hla quantize ({method}): {} on {}; {total} epochs x {spe} steps of batch {}; lr {} (SGDR T_0 = {} / {} epochs); threads {}; out {}",
        cfg.model.arch,
        data.describe(cfg),
        cfg.data.batch_size,
        cfg.hla.lr,
        cfg.hla.sgdr_t0_epochs,
        cfg.hla.sgdr_t0_epochs_stage2.unwrap_or(cfg.hla.sgdr_t0_epochs),
        opts.threads,
        dir.display()
    ));
    let lp = Loop {
        cfg,
        dir,
        data,
        opts,
        lr: Lr::Method,
        command: "quantize",
        segments: true,
    };
    let recal = cfg.hla.bn_recalibrate_batches;
    if fresh {
        // the starting point: the pretrained (or converted, or ternarised) network at step 0
        l.begin_segment()?;
        let r = lp.epoch_record(&mut l, "start", &pos, None, recal)?;
        let r = EpochRecord { epoch: 0, ..r };
        lp.finish_epoch(obs, &mut metrics, "start", r)?;
        lp.save(&l, method.name(), &pos, false, metrics.records().len())?;
    }
    let mut ran = 0;
    while !method_state(&l)?.algo.is_done() {
        let plan = method_state(&l)?.algo.plan(false);
        let phase = phase_name(plan.phase, method);
        let label = match plan.t_pct {
            Some(tp) => format!("{phase} t=0.{tp:02} {}/{}", pos.epoch + 1, total.ceil()),
            None => format!("{phase} {}/{}", pos.epoch + 1, total.ceil()),
        };
        let end = lp.run_epoch(&mut l, &mut pos, &label, obs)?;
        if let EpochEnd::Interrupted = end {
            lp.save(&l, method.name(), &pos, false, metrics.records().len())?;
            return Ok(RunEnd::Interrupted);
        }
        // the record belongs to the segment that ran (its end is not applied yet)
        let plan = method_state(&l)?.algo.plan(false);
        let phase = phase_name(plan.phase, method);
        let r = lp.epoch_record(&mut l, phase, &pos, plan.t_pct, recal)?;
        let st = method_state_mut(&mut l)?;
        let ended = st.end_segment();
        let (left_stage1, done) = (st.algo.phase != Phase::Stage1, st.algo.is_done());
        lp.finish_epoch(obs, &mut metrics, &label, r)?;
        pos.reset_stats();
        let epoch_over = pos.batch >= spe;
        if epoch_over {
            pos.next_epoch();
        }
        let plots = cfg.report.plots && opts.writes();
        if plots && ended && plan.phase == Phase::Stage1 {
            // Figure 1 over time: the end of every sub-stage (the start of the next one;
            // `hist-start` is the start of the first), and the end of stage 1.
            if let Some(tp) = plan.t_pct {
                save_hist(dir, cfg, &l, &format!("stage1-t{tp:02}"), false)?;
            }
            if left_stage1 {
                save_hist(dir, cfg, &l, "stage1", false)?;
            }
        }
        if done {
            finalize_mode(&mut l);
            if plots {
                save_hist(dir, cfg, &l, "ternary", true)?;
            }
        }
        lp.save(&l, method.name(), &pos, done, metrics.records().len())?;
        if epoch_over {
            ran += 1;
            if opts.stop_after_epochs == Some(ran) && !done {
                return Ok(RunEnd::StoppedEarly { epochs: ran });
            }
        }
    }
    finalize_mode(&mut l);
    let records = metrics.records().to_vec();
    let last = records.last().cloned().unwrap_or_default();
    Ok(RunEnd::Finished(RunSummary {
        method,
        top1: last.test_top1,
        top5: last.test_top5,
        sparsity: Some(last.sparsity.unwrap_or(0.0)),
        cos_sim: Some(last.cos_sim.unwrap_or(0.0)),
        hash: checkpoint::model_hash(l.model.as_ref()),
        records,
    }))
}

fn method_state_mut(l: &mut Learner) -> Result<&mut MethodState> {
    l.method
        .as_mut()
        .ok_or_else(|| TrainError::Mismatch("internal: no method state".into()))
}

fn method_state(l: &Learner) -> Result<&MethodState> {
    l.method
        .as_ref()
        .ok_or_else(|| TrainError::Mismatch("internal: no method state".into()))
}

/// The learner of a checkpoint of either command, ready to evaluate: a `train` checkpoint's
/// model (with its hyperspherical state when it has one), or a `quantize` checkpoint's model and
/// method state in the mode of its phase (HLA after stage 2: ternary).
///
/// # Errors
/// `Mismatch` for a checkpoint of another architecture; checkpoint and method errors.
pub fn restore_learner(cfg: &Config, ck: &Checkpoint, dir: &Path) -> Result<Learner> {
    if ck.state.arch != cfg.model.arch.name() {
        return Err(TrainError::Mismatch(format!(
            "{}: checkpoint is a {} but the config says {}",
            dir.display(),
            ck.state.arch,
            cfg.model.arch
        )));
    }
    let mut model = hla_models::build(cfg.model.arch.name(), cfg.model.num_classes, cfg.seed)?;
    if ck.state.command == "train" {
        let mut l = Learner::new(model, None, &cfg.hla);
        restore_train(&mut l, cfg, ck, dir, ck.state.phase == "hyperspherical")?;
        return Ok(l);
    }
    checkpoint::load_model_tensors(model.as_mut(), ck)?;
    let mut st = MethodState::new(method_config(cfg), model.as_ref())?;
    st.restore(&method_checkpoint_of(ck, dir)?)?;
    let mut l = Learner::new(model, Some(st), &cfg.hla);
    if !l.is_done() && l.state().is_some_and(|st| st.algo.steps_per_epoch > 0) {
        l.begin_segment()?;
    }
    finalize_mode(&mut l);
    Ok(l)
}

/// Metadata keys of an export that say how to feed it: the preprocessing and the class names.
pub const PREPROCESS_KEY: &str = "preprocess";
/// See [`PREPROCESS_KEY`].
pub const CLASS_NAMES_KEY: &str = "class_names";

/// Stores `cfg`'s evaluation preprocessing and class names in an export (what `hla infer`
/// needs to read a JPEG).
///
/// # Errors
/// `Data` when the class names cannot be read.
pub fn add_input_metadata(cfg: &Config, pm: &mut hla_core::export::PackedModel) -> Result<()> {
    let pre = crate::data::Preprocess::of(cfg);
    pm.metadata.insert(
        PREPROCESS_KEY.into(),
        serde_json::to_string(&pre).expect("plain data serialises"),
    );
    let names = crate::data::class_names(cfg)?;
    pm.metadata.insert(
        CLASS_NAMES_KEY.into(),
        serde_json::to_string(&names).expect("strings serialise"),
    );
    Ok(())
}

/// The packed 2-bit model of a finished quantize run (checkpoint + config), with the config's
/// digest, preprocessing and class names in its metadata.
///
/// # Errors
/// Checkpoint, method and export errors.
pub fn export_packed(
    cfg: &Config,
    ck: &Checkpoint,
    dir: &Path,
) -> Result<hla_core::export::PackedModel> {
    let l = restore_learner(cfg, ck, dir)?;
    let st = method_state(&l)?;
    let mut pm = hla_core::packed::export_model(l.model.as_ref(), st)?;
    pm.metadata.insert("config_sha256".into(), cfg.digest());
    add_input_metadata(cfg, &mut pm)?;
    Ok(pm)
}
