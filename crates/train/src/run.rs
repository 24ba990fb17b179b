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
use crate::data::{load_data, Data};
use crate::error::{Result, TrainError};
use crate::eval::evaluate;
use crate::metrics::{EpochRecord, LayerRecord, MetricsWriter};
use crate::schedule::Sched;
use crate::step::{EpochStats, Learner};
use hla_core::algorithm::Phase;
use hla_core::method::{HookMode, MethodCheckpoint, MethodState};
use hla_core::Method;
use hla_models::Model;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// File name of the resolved config inside a run directory.
pub const RESOLVED: &str = "config.resolved.toml";

/// What a run reports while it goes. Every method has an empty default.
pub trait Observer {
    /// A line of information (setup, resume position).
    fn info(&mut self, _msg: &str) {}
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

/// Where a run is: epochs done, optimizer steps done, position inside the current epoch and the
/// running sums of the current (partial) epoch. Stored in checkpoints (`extra.position`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Position {
    /// Epochs completed in the phase.
    pub epoch: usize,
    /// Optimizer steps taken in the phase (LR schedule position).
    pub step: u64,
    /// Batches of epoch `epoch` already consumed.
    pub batch: usize,
    /// Σ loss·n of the partial epoch (restored on a mid-epoch resume).
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
    /// The running sums of the partial epoch.
    pub fn stats(&self) -> EpochStats {
        EpochStats {
            loss: self.loss,
            ce: self.ce,
            ld: self.ld,
            correct: self.correct,
            n: self.n,
        }
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
    /// The method's per-iteration SGDR (Algorithm 1 and the baselines), `steps_per_epoch`.
    Method(usize),
}

impl Lr {
    fn at(&self, l: &Learner, t: u64) -> Result<f64> {
        match (self, l.method.as_ref()) {
            (Lr::Sched(s), _) => Ok(s.lr(t)),
            (Lr::Method(spe), Some(st)) => Ok(st.lr_at(*spe, t)?),
            (Lr::Method(_), None) => Err(TrainError::Mismatch(
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
    /// Whether epoch records carry per-layer ternary statistics (quantize runs).
    layer_stats: bool,
}

enum EpochEnd {
    Completed,
    Interrupted,
}

impl Loop<'_> {
    /// Runs the rest of one epoch from `pos.batch`, updating `pos`.
    fn run_epoch(
        &self,
        l: &mut Learner,
        pos: &mut Position,
        label: &str,
        data_epoch: u64,
        obs: &mut dyn Observer,
    ) -> Result<EpochEnd> {
        let loader = &self.data.train;
        obs.epoch_start(
            label,
            loader.batches_per_epoch(),
            loader.config().batch_size,
            pos.batch,
        );
        let start = Instant::now();
        let base_seconds = pos.seconds;
        let mut stats = pos.stats();
        let mut end = EpochEnd::Completed;
        for batch in loader.epoch_from(data_epoch, pos.batch)? {
            if self.opts.stop.is_requested() {
                end = EpochEnd::Interrupted;
                break;
            }
            let batch = batch?;
            l.model.set_dropout_seed(hla_data::derive_seed(
                self.cfg.seed,
                hla_data::Purpose::Augment,
                data_epoch,
                1 << 40 | pos.batch as u64,
            ));
            let lr = self.lr.at(l, pos.step)?;
            let s = l.train_step(batch.images.into_dyn(), &batch.labels, lr)?;
            stats.add(&s);
            pos.set_stats(stats);
            pos.step += 1;
            pos.batch += 1;
            obs.step(&stats);
        }
        pos.seconds = base_seconds + start.elapsed().as_secs_f64();
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
        data_epoch: u64,
    ) -> Result<EpochRecord> {
        let t0 = Instant::now();
        if recalibrate > 0 {
            let (m, h) = l.parts();
            crate::bn::recalibrate_bn(
                m,
                h,
                &self.data.train,
                recalibrate,
                1_000_000 + data_epoch,
            )?;
        }
        let ev = {
            let (m, h) = l.parts();
            evaluate(m, h, &self.data.test)?
        };
        let layers = if self.layer_stats {
            layer_records(l)?
        } else {
            Vec::new()
        };
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
        let path = self.dir.join(LATEST);
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

/// Per-layer ternary statistics of the learner's quantised layers (empty without a method).
fn layer_records(l: &Learner) -> Result<Vec<LayerRecord>> {
    let Some(st) = l.method.as_ref() else {
        return Ok(Vec::new());
    };
    let m = st.metrics(l.model.as_ref())?;
    Ok(m.layers
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
        .collect())
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
fn restore_train(l: &mut Learner, cfg: &Config, ck: &Checkpoint, dir: &Path, hs: bool) -> Result<()> {
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
    let data = load_data(cfg, opts.threads)?;
    let model = build_model(cfg)?;
    let lr = cfg.train.lr.unwrap_or(cfg.hla.lr);
    let mut l = Learner::new(model, None, &cfg.hla);
    l.label_smoothing = cfg.train.label_smoothing;
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
            (pos, MetricsWriter::resume(dir, ck.state.metrics_records)?)
        }
        None => {
            if hs {
                l.method = Some(hyperspherical_state(cfg, l.model.as_ref())?);
            }
            (Position::default(), MetricsWriter::create(dir)?)
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
        layer_stats: false,
    };
    let mut ran = 0;
    while pos.epoch < epochs {
        let label = format!("{phase} {}/{epochs}", pos.epoch + 1);
        let data_epoch = pos.epoch as u64;
        if let EpochEnd::Interrupted = lp.run_epoch(&mut l, &mut pos, &label, data_epoch, obs)? {
            lp.save(&l, phase, &pos, false, metrics.records().len())?;
            return Ok(RunEnd::Interrupted);
        }
        let r = lp.epoch_record(&mut l, phase, &pos, None, 0, data_epoch)?;
        lp.finish_epoch(obs, &mut metrics, &label, r)?;
        pos.next_epoch();
        lp.save(&l, phase, &pos, pos.epoch == epochs, metrics.records().len())?;
        ran += 1;
        if opts.stop_after_epochs == Some(ran) && pos.epoch < epochs {
            return Ok(RunEnd::StoppedEarly { epochs: ran });
        }
    }
    let weights = dir.join("model.safetensors");
    hla_models::save_safetensors(l.model.as_ref(), &weights)?;
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
    let st = MethodState::new(cfg.hla.clone(), model.as_ref())?;
    Ok(Learner::new(model, Some(st), &cfg.hla))
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

/// Runs (or resumes) `hla quantize`: Algorithm 1 (HLA) or the FP / TWN / TTQ baseline of
/// `hla.method`, from `quantize.from`, `model.pretrained` or scratch.
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
    let data = load_data(cfg, opts.threads)?;
    let mut l = quantize_learner(cfg, resume.is_none())?;
    let (mut pos, mut metrics) = match resume {
        Some(ck) => {
            refuse_finished(ck, dir)?;
            checkpoint::load_model_tensors(l.model.as_mut(), ck)?;
            checkpoint::load_optim_tensors(&mut l.sgd, ck, optim_len_of(ck))?;
            let mc = method_checkpoint_of(ck, dir)?;
            if let Some(st) = l.method.as_mut() {
                st.restore(&mc)?;
            }
            let pos = position_of(ck)?;
            obs.info(&format!(
                "resuming {} at epoch {} batch {}",
                dir.display(),
                pos.epoch + 1,
                pos.batch
            ));
            (pos, MetricsWriter::resume(dir, ck.state.metrics_records)?)
        }
        None => {
            if cfg.report.plots {
                save_hist(dir, cfg, &l, "start", false)?;
            }
            (Position::default(), MetricsWriter::create(dir)?)
        }
    };
    let spe = data.train.batches_per_epoch();
    let total = method_state(&l)?.algo.total_epochs();
    obs.info(&format!(
        "hla quantize ({method}): {} on {}; {total} epochs x {spe} steps of batch {}; lr {} (SGDR T_0 = {} epochs); threads {}; out {}",
        cfg.model.arch,
        data.describe(cfg),
        cfg.data.batch_size,
        cfg.hla.lr,
        cfg.hla.sgdr_t0_epochs,
        opts.threads,
        dir.display()
    ));
    let lp = Loop {
        cfg,
        dir,
        data,
        opts,
        lr: Lr::Method(spe),
        command: "quantize",
        layer_stats: true,
    };
    let phase_name = method.name();
    let mut ran = 0;
    while !method_state(&l)?.algo.is_done() {
        let model = l.model.as_ref();
        let st = l
            .method
            .as_mut()
            .expect("a quantize learner has a method state");
        let plan = st.begin_epoch(model)?;
        let epochs_done = st.algo.epochs_done;
        let phase = match plan.phase {
            Phase::Warmup => "hla_warmup".to_string(),
            Phase::Stage1 => "hla_stage1".to_string(),
            Phase::Stage2 => "hla_stage2".to_string(),
            _ => phase_name.to_string(),
        };
        let label = match plan.t_pct {
            Some(tp) => format!("{phase} t=0.{tp:02} {}/{total}", epochs_done + 1),
            None => format!("{phase} {}/{total}", epochs_done + 1),
        };
        if let EpochEnd::Interrupted = lp.run_epoch(&mut l, &mut pos, &label, epochs_done, obs)? {
            lp.save(&l, phase_name, &pos, false, metrics.records().len())?;
            return Ok(RunEnd::Interrupted);
        }
        let was_stage1 = plan.phase == Phase::Stage1;
        let r = lp.epoch_record(
            &mut l,
            &phase,
            &pos,
            plan.t_pct,
            cfg.hla.bn_recalibrate_batches,
            epochs_done,
        )?;
        let st = l.method.as_mut().expect("checked above");
        st.end_epoch();
        let (left_stage1, done) = (st.algo.phase != Phase::Stage1, st.algo.is_done());
        lp.finish_epoch(obs, &mut metrics, &label, r)?;
        pos.next_epoch();
        if cfg.report.plots && was_stage1 && left_stage1 {
            save_hist(dir, cfg, &l, "stage1", false)?;
        }
        if done {
            finalize_mode(&mut l);
            if cfg.report.plots {
                save_hist(dir, cfg, &l, "ternary", true)?;
            }
        }
        lp.save(&l, phase_name, &pos, done, metrics.records().len())?;
        ran += 1;
        if opts.stop_after_epochs == Some(ran) && !done {
            return Ok(RunEnd::StoppedEarly { epochs: ran });
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
    let mut st = MethodState::new(cfg.hla.clone(), model.as_ref())?;
    st.restore(&method_checkpoint_of(ck, dir)?)?;
    if !st.algo.is_done() {
        st.begin_epoch(model.as_ref())?;
    }
    let mut l = Learner::new(model, Some(st), &cfg.hla);
    finalize_mode(&mut l);
    Ok(l)
}

/// The packed 2-bit model of a finished quantize run (checkpoint + config), with the config's
/// digest in its metadata.
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
    Ok(pm)
}
