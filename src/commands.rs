//! The subcommands: input validation first (config, paths, checkpoints), then the work.

use crate::checkpoint::Checkpoint;
use crate::cli::{EvalArgs, ExportArgs, QuantizeArgs, RunOpts};
use crate::config::{resolve_path, Config, Method, TrainMode};
use crate::engine::{self, Sched};
use crate::interrupt;
use crate::metrics::MetricsWriter;
use crate::report;
use crate::rundir;
use crate::runner::{self, EpochCtx, Outcome, Position, Snapshot};
use crate::Ctx;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A validated run: its config, output directory and (when resuming) checkpoint.
pub struct Prepared {
    /// Resolved config.
    pub cfg: Config,
    /// Output directory (not created yet unless resuming).
    pub dir: PathBuf,
    /// Checkpoint to continue from.
    pub resume: Option<Checkpoint>,
}

/// Loads the config (with `--seed` and `--set` applied) or, with `--resume`, the checkpoint and
/// the run's own resolved config; checks the data path; checks that a new output directory does
/// not hold a run. Writes nothing.
pub fn prepare(
    ctx: &Ctx,
    run: &RunOpts,
    cmd: &str,
    suffix: &dyn Fn(&Config) -> String,
    adjust: &dyn Fn(&mut Config),
) -> Result<Prepared> {
    if let Some(dir) = &run.resume {
        if !dir.is_dir() {
            bail!("--resume {}: not a run directory", dir.display());
        }
        let ck = Checkpoint::load(dir)?;
        let cfg = rundir::load_resolved(dir)?;
        if ck.state.config_digest != cfg.digest() {
            bail!(
                "{}: checkpoint was written with a different config than {} (refusing to resume)",
                dir.display(),
                rundir::RESOLVED
            );
        }
        if ck.state.command != cmd {
            bail!(
                "{}: checkpoint belongs to `hla {}`, not `hla {cmd}`",
                dir.display(),
                ck.state.command
            );
        }
        if run.config.is_some() || !run.set.is_empty() || ctx.global.seed.is_some() {
            bail!("--resume reuses the run's own config; drop --config / --set / --seed");
        }
        check_data(&cfg)?;
        return Ok(Prepared {
            cfg,
            dir: dir.clone(),
            resume: Some(ck),
        });
    }
    let path = run
        .config
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("`hla {cmd}` needs --config FILE (or --resume DIR)"))?;
    let mut cfg = Config::load(path, &run.set)?;
    if let Some(s) = ctx.global.seed {
        cfg.seed = s;
    }
    adjust(&mut cfg);
    check_data(&cfg)?;
    let dir = rundir::out_dir(ctx.global.out.as_deref(), &cfg, &suffix(&cfg));
    rundir::check_fresh(&dir)?;
    Ok(Prepared {
        cfg,
        dir,
        resume: None,
    })
}

/// Checks that the dataset and pretrained weights named by the config exist.
pub fn check_data(cfg: &Config) -> Result<()> {
    let root = resolve_path(&cfg.data.root);
    if !root.is_dir() {
        bail!(
            "data.root {}: no such directory (set it in the config or with --set data.root=DIR)",
            cfg.data.root.display()
        );
    }
    if let Some(p) = &cfg.model.pretrained {
        if !resolve_path(p).is_file() {
            bail!("model.pretrained {}: no such file", p.display());
        }
    }
    Ok(())
}

/// `hla train`: full-precision training (or hyperspherical, `train.mode`).
pub fn train(ctx: &Ctx, run: &RunOpts) -> Result<()> {
    let p = prepare(ctx, run, "train", &|_| "train".into(), &|_| {})?;
    let out = run_train(ctx, &p, run.stop_after_epochs)?;
    ctx.ui.result(
        format!(
            "done: test top-1 {:.2}% top-5 {:.2}% after {} epochs; weights {} (sha256 {})",
            out.top1,
            out.top5,
            p.cfg.train.epochs,
            p.dir.join("model.safetensors").display(),
            &out.hash[..16]
        ),
        serde_json::json!({
            "event": "result", "command": "train", "test_top1": out.top1,
            "test_top5": out.top5, "epochs": p.cfg.train.epochs, "weights_sha256": out.hash,
            "dir": p.dir.display().to_string(),
        }),
    );
    Ok(())
}

/// Final numbers of a training run.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Test top-1 (%).
    pub top1: f64,
    /// Test top-5 (%).
    pub top5: f64,
    /// SHA-256 of the final model state.
    pub hash: String,
    /// All epoch records.
    pub records: Vec<crate::metrics::EpochRecord>,
}

/// Runs (or resumes) a training run in `p.dir`; used by `hla train` and `hla demo`.
pub fn run_train(ctx: &Ctx, p: &Prepared, stop_after: Option<usize>) -> Result<TrainOutcome> {
    let cfg = &p.cfg;
    let hs = cfg.train.mode == TrainMode::Hyperspherical;
    let phase = if hs { "hyperspherical" } else { "fp" };
    let data = engine::load_data(cfg, ctx.threads())?;
    let mut model = engine::build_model(cfg)?;
    let lr = cfg.train.lr.unwrap_or(cfg.hla.lr);
    let (mut sgd, groups) = engine::optimizer(cfg, model.as_ref(), lr);
    let (pos0, mut metrics) = match &p.resume {
        Some(ck) => {
            if ck.state.finished {
                bail!("{}: this run has already finished", p.dir.display());
            }
            engine::load_model_tensors(model.as_mut(), ck)?;
            engine::load_optim_tensors(&mut sgd, ck, runner::optim_len_of(ck))?;
            let pos = runner::position_of(ck)?;
            let m = MetricsWriter::resume(&p.dir, ck.state.metrics_records)?;
            ctx.ui.info(format!(
                "resuming {} at epoch {} batch {}",
                p.dir.display(),
                pos.epoch + 1,
                pos.batch
            ));
            (pos, m)
        }
        None => {
            rundir::create(&p.dir, cfg)?;
            (Position::default(), MetricsWriter::create(&p.dir)?)
        }
    };
    let mut pos = pos0;
    interrupt::install();
    let epochs = cfg.train.epochs;
    let sched = Sched::new(
        cfg.train.schedule,
        lr,
        cfg,
        epochs,
        data.train.batches_per_epoch(),
    )?;
    let mut t = engine::FpTrainee {
        model,
        sgd,
        groups,
        sched,
        label_smoothing: cfg.train.label_smoothing,
        hs: None,
    };
    if hs {
        t.enable_hyperspherical(cfg)?;
        if let Some(ck) = &p.resume {
            restore_hs(&mut t, ck)?;
        }
    }
    ctx.ui.info(format!(
        "hla train: {} on {}; {epochs} epochs x {} steps of batch {}; lr {lr} ({:?}); threads {}; out {}",
        cfg.model.arch,
        data.describe(cfg),
        data.train.batches_per_epoch(),
        cfg.data.batch_size,
        cfg.train.schedule,
        ctx.threads(),
        p.dir.display()
    ));
    let mut ran = 0;
    while pos.epoch < epochs {
        let label = format!("{phase} {}/{epochs}", pos.epoch + 1);
        let e = EpochCtx {
            ctx,
            cfg,
            data: &data,
            label: label.clone(),
            data_epoch: pos.epoch as u64,
        };
        let outcome = runner::run_epoch(&e, &mut t, &mut pos)?;
        if let Outcome::Interrupted = outcome {
            runner::save_checkpoint(
                &p.dir,
                t.model.as_ref(),
                &t.sgd,
                fp_snapshot(cfg, &pos, false, metrics.records().len(), &t)?,
            )?;
            return Err(interrupt::Interrupted {
                dir: p.dir.display().to_string(),
            }
            .into());
        }
        let r = runner::epoch_record(&e, &mut t, phase, &pos, None, 0)?;
        runner::finish_epoch(ctx, &mut metrics, &label, r)?;
        pos.next_epoch();
        runner::save_checkpoint(
            &p.dir,
            t.model.as_ref(),
            &t.sgd,
            fp_snapshot(cfg, &pos, pos.epoch == epochs, metrics.records().len(), &t)?,
        )?;
        ran += 1;
        if stop_after == Some(ran) && pos.epoch < epochs {
            return Err(interrupt::StoppedEarly {
                epochs: ran,
                dir: p.dir.display().to_string(),
            }
            .into());
        }
    }
    let weights = p.dir.join("model.safetensors");
    hla_models::save_safetensors(t.model.as_ref(), &weights)?;
    let last = metrics.records().last().cloned().unwrap_or_default();
    let hash = engine::model_hash(t.model.as_ref());
    report::write_run_report(&p.dir, cfg, "hla train", metrics.records(), &[])?;
    Ok(TrainOutcome {
        top1: last.test_top1,
        top5: last.test_top5,
        hash,
        records: metrics.records().to_vec(),
    })
}

fn fp_snapshot<'a>(
    cfg: &'a Config,
    pos: &'a Position,
    finished: bool,
    records: usize,
    t: &engine::FpTrainee,
) -> Result<Snapshot<'a>> {
    let method_state = match &t.hs {
        Some(st) => serde_json::to_value(st.checkpoint())?,
        None => serde_json::Value::Null,
    };
    Ok(Snapshot {
        command: "train",
        phase: if t.hs.is_some() {
            "hyperspherical"
        } else {
            "fp"
        },
        cfg,
        pos,
        finished,
        metrics_records: records,
        method_state,
        method_tensors: Default::default(),
    })
}

/// Restores the method state (A18 gains and their momentum) of a hyperspherical training run.
fn restore_hs(t: &mut engine::FpTrainee, ck: &Checkpoint) -> Result<()> {
    if let Some(st) = t.hs.as_mut() {
        let mc: hla_core::method::MethodCheckpoint =
            serde_json::from_value(ck.state.method_state.clone())
                .map_err(|e| anyhow::anyhow!("checkpoint method state unreadable: {e}"))?;
        st.restore(&mc)?;
        st.hook
            .set_mode(hla_core::method::HookMode::Hyperspherical, 0.0);
    }
    Ok(())
}

/// `hla quantize`: Algorithm 1 (HLA), TWN or TTQ, from `--from` weights, `model.pretrained`,
/// or scratch.
pub fn quantize(ctx: &Ctx, a: &QuantizeArgs) -> Result<()> {
    if a.run.resume.is_some() && (a.method.is_some() || a.from.is_some()) {
        bail!("--resume reuses the run's own config; drop --method / --from");
    }
    let method = a.method;
    let from = a.from.clone();
    let p = prepare(
        ctx,
        &a.run,
        "quantize",
        &|c| Method::from_core(c.hla.method).name().to_string(),
        &|c| {
            if let Some(m) = method {
                c.hla.method = m.core();
            }
            if let Some(f) = &from {
                c.quantize.from = Some(f.clone());
            }
        },
    )?;
    if p.resume.is_none() {
        if let Some(f) = &p.cfg.quantize.from {
            let f = resolve_path(f);
            if !f.exists() {
                bail!("--from {}: no such checkpoint or weights file", f.display());
            }
            // Verify it before anything is written (a corrupt file is reported, not used).
            if crate::checkpoint::checkpoint_file(&f).is_file() {
                engine::load_weights(engine::build_model(&p.cfg)?.as_mut(), &f)?;
            }
        }
    }
    let out = run_quantize(ctx, &p, a.run.stop_after_epochs, "quantize")?;
    ctx.ui.result(
        format!(
            "done: {} test top-1 {:.2}% top-5 {:.2}%, sparsity {:.1}%, cos-sim {:.3}; {}",
            out.method,
            out.top1,
            out.top5,
            100.0 * out.sparsity,
            out.cos_sim,
            p.dir.display()
        ),
        serde_json::json!({
            "event": "result", "command": "quantize", "method": out.method.name(),
            "test_top1": out.top1, "test_top5": out.top5, "sparsity": out.sparsity,
            "cos_sim": out.cos_sim, "weights_sha256": out.hash, "dir": p.dir.display().to_string(),
        }),
    );
    Ok(())
}

/// Final numbers of a quantisation run.
#[derive(Debug, Clone)]
pub struct QuantOutcome {
    /// Method.
    pub method: Method,
    /// Test top-1 (%).
    pub top1: f64,
    /// Test top-5 (%).
    pub top5: f64,
    /// Overall sparsity of the ternary weights.
    pub sparsity: f64,
    /// Mean cosine similarity W vs Ŵ.
    pub cos_sim: f64,
    /// SHA-256 of the final model state.
    pub hash: String,
    /// All epoch records.
    pub records: Vec<crate::metrics::EpochRecord>,
}

/// Normalised weights of the report's histogram layer (or a middle quantised layer).
fn histogram_values(t: &engine::QuantTrainee, cfg: &Config) -> Result<(String, Vec<f32>)> {
    let layers = &t.st.hook.layers;
    if layers.is_empty() {
        return Ok((String::new(), Vec::new()));
    }
    let idx = layers
        .iter()
        .position(|l| l.info.layer == cfg.report.histogram_layer)
        .unwrap_or(layers.len() / 2);
    let w = t.st.normalized_weights(t.model.as_ref())?;
    Ok((
        layers[idx].info.layer.clone(),
        w[idx].iter().copied().collect(),
    ))
}

/// Ternary weights Ŵ of the same layer as [`histogram_values`].
fn histogram_ternary(t: &engine::QuantTrainee, cfg: &Config) -> Result<Vec<f32>> {
    let layers = &t.st.hook.layers;
    if layers.is_empty() {
        return Ok(Vec::new());
    }
    let idx = layers
        .iter()
        .position(|l| l.info.layer == cfg.report.histogram_layer)
        .unwrap_or(layers.len() / 2);
    let q = t.st.quantized(t.model.as_ref())?;
    Ok(q.get(idx)
        .map(|l| l.what.iter().copied().collect())
        .unwrap_or_default())
}

fn save_hist(dir: &Path, name: &str, layer: &str, values: &[f32]) -> Result<()> {
    let v = serde_json::json!({ "layer": layer, "values": values });
    crate::checkpoint::atomic_write(
        &dir.join(format!("hist-{name}.json")),
        v.to_string().as_bytes(),
    )
}

/// Runs (or resumes) a quantisation run in `p.dir`; used by `hla quantize` and `hla demo`.
pub fn run_quantize(
    ctx: &Ctx,
    p: &Prepared,
    stop_after: Option<usize>,
    command: &str,
) -> Result<QuantOutcome> {
    let cfg = &p.cfg;
    let method = Method::from_core(cfg.hla.method);
    let data = engine::load_data(cfg, ctx.threads())?;
    let mut model = engine::build_model(cfg)?;
    if p.resume.is_none() {
        if let Some(f) = &cfg.quantize.from {
            engine::load_weights(model.as_mut(), &resolve_path(f))?;
        }
    }
    let (sgd, groups) = engine::optimizer(cfg, model.as_ref(), cfg.hla.lr);
    let st = hla_core::method::MethodState::new(cfg.hla.clone(), model.as_ref())?;
    let mut t = engine::QuantTrainee {
        model,
        st,
        sgd,
        groups,
        steps_per_epoch: data.train.batches_per_epoch(),
        last_lr: cfg.hla.lr,
    };
    let (mut pos, mut metrics) = match &p.resume {
        Some(ck) => {
            if ck.state.finished {
                bail!("{}: this run has already finished", p.dir.display());
            }
            engine::load_model_tensors(t.model.as_mut(), ck)?;
            engine::load_optim_tensors(&mut t.sgd, ck, runner::optim_len_of(ck))?;
            let mc: hla_core::method::MethodCheckpoint =
                serde_json::from_value(ck.state.method_state.clone()).map_err(|e| {
                    anyhow::anyhow!("{}: method state unreadable: {e}", p.dir.display())
                })?;
            t.st.restore(&mc)?;
            let pos = runner::position_of(ck)?;
            ctx.ui.info(format!(
                "resuming {} at epoch {} batch {}",
                p.dir.display(),
                pos.epoch + 1,
                pos.batch
            ));
            (
                pos,
                MetricsWriter::resume(&p.dir, ck.state.metrics_records)?,
            )
        }
        None => {
            rundir::create(&p.dir, cfg)?;
            if cfg.report.plots {
                let (layer, v) = histogram_values(&t, cfg)?;
                save_hist(&p.dir, "start", &layer, &v)?;
            }
            (Position::default(), MetricsWriter::create(&p.dir)?)
        }
    };
    interrupt::install();
    let total = t.st.algo.total_epochs();
    ctx.ui.info(format!(
        "hla {command} ({method}): {} on {}; {total} epochs x {} steps of batch {}; lr {} (SGDR T_0 = {} epochs); threads {}; out {}",
        cfg.model.arch,
        data.describe(cfg),
        data.train.batches_per_epoch(),
        cfg.data.batch_size,
        cfg.hla.lr,
        cfg.hla.sgdr_t0_epochs,
        ctx.threads(),
        p.dir.display()
    ));
    let mut ran = 0;
    let snapshot =
        |t: &engine::QuantTrainee, pos: &Position, finished: bool, records: usize| -> Result<()> {
            let mc = t.st.checkpoint();
            let v = serde_json::to_value(&mc)?;
            let back: hla_core::method::MethodCheckpoint = serde_json::from_value(v.clone())?;
            if back != mc {
                bail!("internal: method state does not round-trip through JSON exactly");
            }
            runner::save_checkpoint(
                &p.dir,
                t.model.as_ref(),
                &t.sgd,
                Snapshot {
                    command,
                    phase: method.name(),
                    cfg,
                    pos,
                    finished,
                    metrics_records: records,
                    method_state: v,
                    method_tensors: Default::default(),
                },
            )?;
            Ok(())
        };
    while !t.st.algo.is_done() {
        let plan = t.st.begin_epoch(t.model.as_ref())?;
        let phase = match plan.phase {
            hla_core::algorithm::Phase::Warmup => "hla_warmup".to_string(),
            hla_core::algorithm::Phase::Stage1 => "hla_stage1".to_string(),
            hla_core::algorithm::Phase::Stage2 => "hla_stage2".to_string(),
            _ => method.name().to_string(),
        };
        let label = match plan.t_pct {
            Some(tp) => format!("{phase} t=0.{tp:02} {}/{total}", t.st.algo.epochs_done + 1),
            None => format!("{phase} {}/{total}", t.st.algo.epochs_done + 1),
        };
        let e = EpochCtx {
            ctx,
            cfg,
            data: &data,
            label: label.clone(),
            data_epoch: t.st.algo.epochs_done,
        };
        if let Outcome::Interrupted = runner::run_epoch(&e, &mut t, &mut pos)? {
            snapshot(&t, &pos, false, metrics.records().len())?;
            return Err(interrupt::Interrupted {
                dir: p.dir.display().to_string(),
            }
            .into());
        }
        let was_stage1 = plan.phase == hla_core::algorithm::Phase::Stage1;
        let r = runner::epoch_record(
            &e,
            &mut t,
            &phase,
            &pos,
            plan.t_pct,
            cfg.hla.bn_recalibrate_batches,
        )?;
        t.st.end_epoch();
        runner::finish_epoch(ctx, &mut metrics, &label, r)?;
        pos.next_epoch();
        if cfg.report.plots && was_stage1 && t.st.algo.phase != hla_core::algorithm::Phase::Stage1 {
            let (layer, v) = histogram_values(&t, cfg)?;
            save_hist(&p.dir, "stage1", &layer, &v)?;
        }
        let done = t.st.algo.is_done();
        if done {
            t.finalize_mode();
            if cfg.report.plots {
                let (layer, _) = histogram_values(&t, cfg)?;
                save_hist(&p.dir, "ternary", &layer, &histogram_ternary(&t, cfg)?)?;
            }
        }
        snapshot(&t, &pos, done, metrics.records().len())?;
        ran += 1;
        if stop_after == Some(ran) && !done {
            return Err(interrupt::StoppedEarly {
                epochs: ran,
                dir: p.dir.display().to_string(),
            }
            .into());
        }
    }
    t.finalize_mode();
    let records = metrics.records().to_vec();
    let last = records.last().cloned().unwrap_or_default();
    let hash = engine::model_hash(t.model.as_ref());
    report::write_run_report(
        &p.dir,
        cfg,
        &format!("hla {command} --method {method}"),
        &records,
        &[],
    )?;
    Ok(QuantOutcome {
        method,
        top1: last.test_top1,
        top5: last.test_top5,
        sparsity: last.sparsity.unwrap_or(0.0),
        cos_sim: last.cos_sim.unwrap_or(0.0),
        hash,
        records,
    })
}

/// Rebuilds the quantisation state of a quantize run from its checkpoint and config.
pub fn restore_quant(
    cfg: &Config,
    ck: &Checkpoint,
    steps_per_epoch: usize,
) -> Result<engine::QuantTrainee> {
    let mut model = hla_models::build(cfg.model.arch.name(), cfg.model.num_classes, cfg.seed)?;
    engine::load_model_tensors(model.as_mut(), ck)?;
    let (sgd, groups) = engine::optimizer(cfg, model.as_ref(), cfg.hla.lr);
    let st = hla_core::method::MethodState::new(cfg.hla.clone(), model.as_ref())?;
    let mut t = engine::QuantTrainee {
        model,
        st,
        sgd,
        groups,
        steps_per_epoch: steps_per_epoch.max(1),
        last_lr: cfg.hla.lr,
    };
    let mc: hla_core::method::MethodCheckpoint =
        serde_json::from_value(ck.state.method_state.clone())
            .map_err(|e| anyhow::anyhow!("checkpoint method state unreadable: {e}"))?;
    t.st.restore(&mc)?;
    if !t.st.algo.is_done() {
        t.st.begin_epoch(t.model.as_ref())?;
    }
    t.finalize_mode();
    Ok(t)
}

/// Whether `path` is an exported ternary model (safetensors with format `hla-ternary-v1`).
fn is_packed(path: &Path) -> bool {
    path.is_file()
        && std::fs::read(path)
            .ok()
            .and_then(|b| {
                safetensors::SafeTensors::read_metadata(&b)
                    .ok()
                    .and_then(|(_, m)| {
                        m.metadata()
                            .as_ref()
                            .and_then(|md| md.get("format").cloned())
                    })
            })
            .is_some_and(|f| f == hla_core::export::FORMAT)
}

/// `hla eval`: top-1 / top-5 of a checkpoint, run directory or exported ternary model.
pub fn eval(ctx: &Ctx, a: &EvalArgs) -> Result<()> {
    if !a.model.exists() {
        bail!("{}: no such file or directory", a.model.display());
    }
    let dir = rundir::dir_of(&a.model);
    let packed = is_packed(&a.model);
    let ck = if packed {
        None
    } else {
        Some(Checkpoint::load(&a.model)?)
    };
    let mut cfg = match &a.config {
        Some(c) => Config::load(c, &a.set)?,
        None => {
            let p = dir.join(rundir::RESOLVED);
            if !p.exists() {
                bail!(
                    "{}: no {} beside the model; pass --config FILE",
                    dir.display(),
                    rundir::RESOLVED
                );
            }
            Config::load(&p, &a.set)?
        }
    };
    if let Some(s) = ctx.global.seed {
        cfg.seed = s;
    }
    check_data(&cfg)?;
    let data = engine::load_data(&cfg, ctx.threads())?;
    let (what, mut t): (String, Box<dyn engine::Trainee>) = if packed {
        let pm = hla_core::export::PackedModel::read(&a.model)?;
        let arch = pm
            .metadata
            .get("arch")
            .cloned()
            .unwrap_or_else(|| cfg.model.arch.name().into());
        let classes: usize = pm
            .metadata
            .get("num_classes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(cfg.model.num_classes);
        let mut model = hla_models::build(&arch, classes, 0)?;
        let hook = hla_core::packed::load_packed(model.as_mut(), &pm)?;
        let m = pm.metadata.get("method").cloned().unwrap_or_default();
        (
            format!("exported {m} model (2-bit packed)"),
            Box::new(engine::Inference {
                model,
                hook: Some(hook),
            }),
        )
    } else {
        let ck = ck.as_ref().expect("loaded above");
        if ck.state.arch != cfg.model.arch.name() {
            bail!(
                "{}: checkpoint is a {} but the config says {}",
                a.model.display(),
                ck.state.arch,
                cfg.model.arch
            );
        }
        if ck.state.command == "train" {
            let mut model =
                hla_models::build(cfg.model.arch.name(), cfg.model.num_classes, cfg.seed)?;
            engine::load_model_tensors(model.as_mut(), ck)?;
            let (sgd, groups) = engine::optimizer(&cfg, model.as_ref(), cfg.hla.lr);
            let mut t = engine::FpTrainee {
                model,
                sgd,
                groups,
                sched: Sched::Constant(hla_autograd::schedule::Constant { lr: cfg.hla.lr }),
                label_smoothing: 0.0,
                hs: None,
            };
            if ck.state.phase == "hyperspherical" {
                t.enable_hyperspherical(&cfg)?;
                restore_hs(&mut t, ck)?;
            }
            (format!("{} checkpoint", ck.state.phase), Box::new(t))
        } else {
            let t = restore_quant(&cfg, ck, data.train.batches_per_epoch())?;
            (format!("{} checkpoint", ck.state.phase), Box::new(t))
        }
    };
    let (top1, top5, loss) = engine::evaluate(t.as_mut(), &data.test)?;
    ctx.ui.result(
        format!(
            "{}: {what}; {} test images: top-1 {top1:.2}%  top-5 {top5:.2}%  (loss {loss:.4})",
            a.model.display(),
            data.test.dataset().len()
        ),
        serde_json::json!({
            "event": "result", "command": "eval", "model": a.model.display().to_string(),
            "kind": what, "test_top1": top1, "test_top5": top5, "test_loss": loss,
            "images": data.test.dataset().len(),
        }),
    );
    Ok(())
}

/// Packs a finished quantize run (checkpoint + config) into the 2-bit format.
pub fn export_packed(cfg: &Config, ck: &Checkpoint) -> Result<hla_core::export::PackedModel> {
    let t = restore_quant(cfg, ck, 1)?;
    let mut pm = hla_core::packed::export_model(t.model.as_ref(), &t.st)?;
    pm.metadata.insert("config_sha256".into(), cfg.digest());
    Ok(pm)
}

/// `hla export`: the packed ternary file of a quantised run, with its size report.
pub fn export(ctx: &Ctx, a: &ExportArgs) -> Result<()> {
    let dir = rundir::dir_of(&a.run);
    let ck = Checkpoint::load(&a.run)?;
    if ck.state.command == "train" {
        bail!(
            "{}: a full-precision run has no ternary weights; export a `hla quantize` run",
            a.run.display()
        );
    }
    if !ck.state.finished {
        bail!(
            "{}: the run has not finished (continue it with `--resume`)",
            dir.display()
        );
    }
    let cfg = rundir::load_resolved(&dir)?;
    let out = a
        .output
        .clone()
        .unwrap_or_else(|| dir.join("model.ternary.safetensors"));
    if out.exists() {
        bail!(
            "{}: already exists (never overwritten); pass another --output",
            out.display()
        );
    }
    let pm = export_packed(&cfg, &ck)?;
    pm.write(&out)?;
    let r = pm.size_report();
    let file_bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    ctx.ui.result(
        format!(
            "wrote {}: {} quantised layers, {:.1} KiB f32 -> {:.1} KiB packed ({:.1}x smaller); file {:.1} KiB",
            out.display(),
            pm.layers.len(),
            r.f32_bytes as f64 / 1024.0,
            r.packed_bytes as f64 / 1024.0,
            r.ratio,
            file_bytes as f64 / 1024.0
        ),
        serde_json::json!({
            "event": "result", "command": "export", "file": out.display().to_string(),
            "layers": pm.layers.len(), "f32_bytes": r.f32_bytes, "packed_bytes": r.packed_bytes,
            "ratio": r.ratio, "file_bytes": file_bytes,
        }),
    );
    Ok(())
}
