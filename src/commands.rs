//! The subcommands: input validation first (config, paths, checkpoints), then the work.

use crate::checkpoint::Checkpoint;
use crate::cli::{EvalArgs, ExportArgs, RunOpts};
use crate::config::{resolve_path, Config};
use crate::rundir;
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
pub fn prepare(ctx: &Ctx, run: &RunOpts, cmd: &str, suffix: &str) -> Result<Prepared> {
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
    check_data(&cfg)?;
    let dir = rundir::out_dir(ctx.global.out.as_deref(), &cfg, suffix);
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

/// `hla train`.
pub fn train(ctx: &Ctx, run: &RunOpts) -> Result<()> {
    let _p = prepare(ctx, run, "train", "train")?;
    bail!("`hla train`: the training engine is not built yet")
}

/// `hla quantize`.
pub fn quantize(ctx: &Ctx, run: &RunOpts) -> Result<()> {
    let _p = prepare(ctx, run, "quantize", "quantize")?;
    bail!("`hla quantize`: the training engine is not built yet")
}

/// `hla eval`.
pub fn eval(_ctx: &Ctx, a: &EvalArgs) -> Result<()> {
    let _ck = load_model_file(&a.model)?;
    bail!("`hla eval`: the model library is not built yet")
}

/// `hla export`.
pub fn export(_ctx: &Ctx, a: &ExportArgs) -> Result<()> {
    let _ck = Checkpoint::load(&a.run)?;
    bail!("`hla export`: the export library is not built yet")
}

fn load_model_file(p: &Path) -> Result<Checkpoint> {
    if !p.exists() {
        bail!("{}: no such file or directory", p.display());
    }
    Checkpoint::load(p)
}
