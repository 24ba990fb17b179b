//! The subcommands: input validation first (config, paths, checkpoints), then the work, which
//! is the training engine's (`hla_train`); here only run directories, printing and reports.

use crate::cli::{EvalArgs, ExportArgs, QuantizeArgs, RunOpts};
use crate::config::{self, Config};
use crate::interrupt;
use crate::progress::UiObserver;
use crate::report;
use crate::rundir;
use crate::Ctx;
use anyhow::{bail, Result};
use hla_train::checkpoint::{self, Checkpoint};
use hla_train::run::{self, RunEnd, RunOptions, RunSummary};
use hla_train::{eval, Learner};
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
        if run.config.is_some() || !run.set.is_empty() || ctx.global.seed.is_some() {
            bail!("--resume reuses the run's own config; drop --config / --set / --seed");
        }
        if !checkpoint::checkpoint_file(dir).exists() {
            // Stopped (or killed) before its first checkpoint: nothing of it was kept, so
            // resuming is starting over, in the same directory with its own config.
            let cfg = rundir::load_resolved(dir)?;
            check_data(&cfg)?;
            ctx.ui.info(format!(
                "{}: no checkpoint yet; starting the run from the beginning",
                dir.display()
            ));
            return Ok(Prepared {
                cfg,
                dir: dir.clone(),
                resume: None,
            });
        }
        let ck = Checkpoint::load(dir)?;
        let cfg = rundir::load_resolved(dir)?;
        // The digest is of the resolved config as written; a run written before a knob was
        // added re-serialises differently but its file is unchanged.
        let written = std::fs::read(dir.join(rundir::RESOLVED))?;
        if ck.state.config_digest != cfg.digest() && ck.state.config_digest != sha256_hex(&written)
        {
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
    let mut cfg = config::load(path, &run.set)?;
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

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks that the dataset and pretrained weights named by the config exist.
pub fn check_data(cfg: &Config) -> Result<()> {
    if !cfg.data.root.is_dir() {
        bail!(
            "data.root {}: no such directory (set it in the config or with --set data.root=DIR)",
            cfg.data.root.display()
        );
    }
    if let Some(p) = &cfg.model.pretrained {
        if !p.is_file() {
            bail!("model.pretrained {}: no such file", p.display());
        }
    }
    Ok(())
}

fn options(ctx: &Ctx, stop_after: Option<usize>) -> RunOptions {
    RunOptions {
        threads: ctx.threads(),
        stop_after_epochs: stop_after,
        stop: interrupt::flag(),
        group: ctx.group.clone(),
    }
}

/// Turns a stopped run into the CLI's outcome (an error the caller prints, exit 130 or 0).
fn finished(end: RunEnd, dir: &Path) -> Result<RunSummary> {
    let dir = dir.display().to_string();
    match end {
        RunEnd::Finished(s) => Ok(s),
        RunEnd::Interrupted => Err(interrupt::Interrupted { dir }.into()),
        RunEnd::StoppedEarly { epochs } => Err(interrupt::StoppedEarly { epochs, dir }.into()),
    }
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

/// Runs (or resumes) a training run in `p.dir` and writes its report; used by `hla train` and
/// `hla demo`.
pub fn run_train(ctx: &Ctx, p: &Prepared, stop_after: Option<usize>) -> Result<RunSummary> {
    in_run_dir(ctx, p, stop_after, run::train, |_| "hla train".into())
}

/// Creates the run directory of a fresh run, runs `f` in it with the CLI's observer and stop
/// flag, and writes the report of a finished run.
fn in_run_dir(
    ctx: &Ctx,
    p: &Prepared,
    stop_after: Option<usize>,
    f: RunFn,
    title: impl Fn(&RunSummary) -> String,
) -> Result<RunSummary> {
    // Under MPI every rank has validated the inputs before rank 0 creates the directory the
    // others then read from.
    let barrier = |what| -> Result<()> {
        match &ctx.group {
            Some(g) => Ok(g.barrier(what)?),
            None => Ok(()),
        }
    };
    let writes = ctx.group.as_ref().is_none_or(|g| g.rank() == 0);
    if p.resume.is_none() {
        barrier("prepare")?;
        if writes {
            rundir::create(&p.dir, &p.cfg)?;
        }
        barrier("create")?;
    }
    let mut obs = UiObserver::new(ctx.ui);
    let end = f(
        &p.cfg,
        &p.dir,
        p.resume.as_ref(),
        &options(ctx, stop_after),
        &mut obs,
    )?;
    let out = finished(end, &p.dir)?;
    if writes {
        report::write_run_report(&p.dir, &p.cfg, &title(&out), &out.records, &[])?;
    }
    Ok(out)
}

/// `run::train` or `run::quantize`.
type RunFn = fn(
    &Config,
    &Path,
    Option<&Checkpoint>,
    &RunOptions,
    &mut dyn hla_train::Observer,
) -> hla_train::Result<RunEnd>;

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
        &|c| c.hla.method.name().to_string(),
        &|c| {
            if let Some(m) = method {
                c.hla.method = m;
            }
            if let Some(f) = &from {
                c.quantize.from = Some(f.clone());
            }
        },
    )?;
    if p.resume.is_none() {
        if let Some(f) = &p.cfg.quantize.from {
            if !f.exists() {
                bail!("--from {}: no such checkpoint or weights file", f.display());
            }
            // Verify it before anything is written (a corrupt file is reported, not used).
            if checkpoint::checkpoint_file(f).is_file() {
                checkpoint::load_weights(run::build_model(&p.cfg)?.as_mut(), f)?;
            }
        }
    }
    let out = run_quantize(ctx, &p, a.run.stop_after_epochs)?;
    let (sparsity, cos) = (out.sparsity.unwrap_or(0.0), out.cos_sim.unwrap_or(0.0));
    ctx.ui.result(
        format!(
            "done: {} test top-1 {:.2}% top-5 {:.2}%, sparsity {:.1}%, cos-sim {:.3}; {}",
            out.method,
            out.top1,
            out.top5,
            100.0 * sparsity,
            cos,
            p.dir.display()
        ),
        serde_json::json!({
            "event": "result", "command": "quantize", "method": out.method.name(),
            "test_top1": out.top1, "test_top5": out.top5, "sparsity": sparsity,
            "cos_sim": cos, "weights_sha256": out.hash, "dir": p.dir.display().to_string(),
        }),
    );
    Ok(())
}

/// Runs (or resumes) a quantisation run in `p.dir` and writes its report; used by
/// `hla quantize`, `hla demo` and `hla study`.
pub fn run_quantize(ctx: &Ctx, p: &Prepared, stop_after: Option<usize>) -> Result<RunSummary> {
    in_run_dir(ctx, p, stop_after, run::quantize, |out| {
        format!("hla quantize --method {}", out.method)
    })
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
    let packed = is_packed(&a.model);
    if a.a8 && !packed {
        bail!(
            "{}: --a8 evaluates exported ternary models (`hla export`)",
            a.model.display()
        );
    }
    let ck = if packed {
        None
    } else {
        Some(Checkpoint::load(&a.model)?)
    };
    let mut cfg = crate::infer::model_config(&a.model, a.config.as_deref(), &a.set)?;
    if let Some(s) = ctx.global.seed {
        cfg.seed = s;
    }
    check_data(&cfg)?;
    let data = hla_train::data::load_data(&cfg, ctx.threads())?;
    let (what, ev) = match &ck {
        None => {
            let pm = hla_core::export::PackedModel::read(&a.model)?;
            let mut model = crate::infer::model_of(&pm, Some(&cfg))?;
            let m = pm.metadata.get("method").cloned().unwrap_or_default();
            let mut hook = if a.a8 {
                crate::infer::InferHook::A8(Box::new(hla_core::a8::load_a8(model.as_mut(), &pm)?))
            } else {
                crate::infer::InferHook::Exact(hla_core::packed::load_packed(model.as_mut(), &pm)?)
            };
            let ev = eval::evaluate(model.as_mut(), Some(hook.hook()), &data.test)?;
            (
                format!("exported {m} model (2-bit packed), {}", hook.describe()),
                ev,
            )
        }
        Some(ck) => {
            let mut l: Learner = run::restore_learner(&cfg, ck, &a.model)?;
            let (m, h) = l.parts();
            let ev = eval::evaluate(m, h, &data.test)?;
            (format!("{} checkpoint", ck.state.phase), ev)
        }
    };
    ctx.ui.result(
        format!(
            "{}: {what}; {} test images: top-1 {:.2}%  top-5 {:.2}%  (loss {:.4})",
            a.model.display(),
            data.test.dataset().len(),
            ev.top1,
            ev.top5,
            ev.loss
        ),
        serde_json::json!({
            "event": "result", "command": "eval", "model": a.model.display().to_string(),
            "kind": what, "test_top1": ev.top1, "test_top5": ev.top5, "test_loss": ev.loss,
            "images": data.test.dataset().len(),
        }),
    );
    Ok(())
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
    let mut pm = run::export_packed(&cfg, &ck, &dir)?;
    if a.calibrate_images > 0 {
        crate::infer::calibrate_export(&cfg, &pm, a.calibrate_images, ctx.threads())?
            .store(&mut pm);
    }
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
