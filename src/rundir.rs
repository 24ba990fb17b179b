//! Run directories: where a run writes its resolved config, metrics, checkpoints, plots and
//! report, and the rule that an existing run is never overwritten.

use crate::config::{self, Config};
use anyhow::{bail, Context, Result};
use hla_train::checkpoint::{atomic_write, LATEST};
pub use hla_train::run::RESOLVED;
use std::path::{Path, PathBuf};

/// Files whose presence means a directory holds a run.
const MARKERS: [&str; 3] = [LATEST, "metrics.jsonl", RESOLVED];

/// `--out` or `runs/<name>-<suffix>`.
pub fn out_dir(out: Option<&Path>, cfg: &Config, suffix: &str) -> PathBuf {
    match out {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("runs").join(format!("{}-{suffix}", cfg.name)),
    }
}

/// Refuses a directory that already holds a run (or is a file).
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

/// Creates the directory and writes the resolved config into it.
pub fn create(dir: &Path, cfg: &Config) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    Ok(atomic_write(&dir.join(RESOLVED), cfg.to_toml().as_bytes())?)
}

/// The resolved config of a run directory.
pub fn load_resolved(dir: &Path) -> Result<Config> {
    let p = dir.join(RESOLVED);
    if !p.exists() {
        bail!(
            "{}: no {RESOLVED} (is this a run directory?)",
            dir.display()
        );
    }
    Ok(config::load(&p, &[])?)
}

/// The directory of a run given as a directory or as a file inside it.
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
