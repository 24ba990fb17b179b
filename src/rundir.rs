//! Run directories: where a run writes its resolved config, metrics, checkpoints, plots and
//! report, and the rule that an existing run is never overwritten.

use crate::checkpoint;
use crate::config::Config;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// File name of the resolved config inside a run directory.
pub const RESOLVED: &str = "config.resolved.toml";

/// Files whose presence marks a directory as holding a run.
const MARKERS: [&str; 3] = [checkpoint::LATEST, "metrics.jsonl", RESOLVED];

/// The output directory: `--out`, or `runs/<name>-<suffix>`.
pub fn out_dir(out: Option<&Path>, cfg: &Config, suffix: &str) -> PathBuf {
    match out {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("runs").join(format!("{}-{suffix}", cfg.name)),
    }
}

/// Checks that `dir` does not already hold a run (without creating anything).
pub fn check_fresh(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("--out {}: exists and is not a directory", dir.display());
    }
    for m in MARKERS {
        if dir.join(m).exists() {
            bail!(
                "{} already holds a run ({m}); continue it with `--resume {}` or choose another --out",
                dir.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Creates `dir` (after [`check_fresh`]) and writes the resolved config into it.
pub fn create(dir: &Path, cfg: &Config) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    checkpoint::atomic_write(&dir.join(RESOLVED), cfg.to_toml().as_bytes())
}

/// The resolved config of an existing run directory.
pub fn load_resolved(dir: &Path) -> Result<Config> {
    let p = dir.join(RESOLVED);
    if !p.exists() {
        bail!(
            "{}: no {RESOLVED} (is this a run directory?)",
            dir.display()
        );
    }
    Ok(Config::load(&p, &[])?)
}

/// The run directory holding `path` (a run directory itself or a file inside one).
pub fn dir_of(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    }
}
