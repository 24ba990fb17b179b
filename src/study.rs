//! `hla study PLAN.toml`: runs every run of a study plan that is missing or unfinished, in plan
//! order (a finished run is never redone; an unfinished one is resumed; a stage-2 run continues
//! its shared stage-1 run), exports each ternary model, then writes `RESULTS.md` with the plan's
//! tables and the accuracy–sparsity plot. With every run finished it only rewrites the tables.
//!
//! A run's config is the plan's `base` config with the run's `set` values and `name = id`
//! (plus `quantize.stage1_from = <out>/<stage1>`); an existing run directory must hold exactly
//! that config. A finished run is recognised by its `result.json` (its checkpoint need not be
//! kept); a shared stage-1 run keeps its checkpoint, which its stage-2 runs start from.

use crate::commands::{self, Prepared};
use crate::config::{self, Config};
use crate::plots::{self, Series};
use crate::rundir;
use crate::Ctx;
use anyhow::{bail, Context, Result};
use hla_core::Method;
use hla_train::checkpoint::{atomic_write, Checkpoint, LATEST};
use hla_train::metrics::{EpochRecord, MetricsWriter};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A study plan (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// `[study]`.
    pub study: Head,
    /// `[[run]]`, in the order they run.
    #[serde(default)]
    pub run: Vec<RunSpec>,
    /// `[[table]]`, in the order `RESULTS.md` shows them.
    #[serde(default)]
    pub table: Vec<TableSpec>,
    /// `[[curve]]`: the lines of the accuracy–sparsity plot.
    #[serde(default)]
    pub curve: Vec<CurveSpec>,
}

/// `[study]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Title of `RESULTS.md`.
    #[serde(default)]
    pub title: String,
    /// The base config every run starts from.
    pub base: PathBuf,
    /// Directory of the run directories and `RESULTS.md`.
    pub out: PathBuf,
    /// Text placed after the title (what the numbers show, written after reading them).
    #[serde(default)]
    pub summary: String,
    /// Run id of the full-precision reference line of the plot.
    #[serde(default)]
    pub fp_reference: Option<String>,
}

/// `[[run]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Directory name and config `name`.
    pub id: String,
    /// Id of the stage-1 run this stage-2 run continues.
    #[serde(default)]
    pub stage1: Option<String>,
    /// `key=value` overrides of the base config.
    #[serde(default)]
    pub set: Vec<String>,
}

/// `[[table]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Heading.
    pub title: String,
    /// Text under the heading.
    #[serde(default)]
    pub note: String,
    /// `rows` (one record of a run each) or `sims` (Table 4: Sim at each t).
    #[serde(default)]
    pub kind: TableKind,
    /// The rows.
    pub rows: Vec<RowSpec>,
    /// Row label whose top-1 the "Δ" column is relative to.
    #[serde(default)]
    pub delta_to: Option<String>,
}

/// What a table shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// Accuracy, sparsity, cos-sim, Δ̄, speed per row.
    #[default]
    Rows,
    /// Table 4: the Sim columns of the records.
    Sims,
}

/// One row: a record of a run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowSpec {
    /// Row label.
    pub label: String,
    /// Run id.
    pub run: String,
    /// The record at this many epochs of the run (default: its last record; `0` = its start).
    #[serde(default)]
    pub at: Option<f64>,
    /// Which Sim column (Table 4 rows): `normalized` (default) or `raw`.
    #[serde(default)]
    pub sim: Option<String>,
}

/// `[[curve]]`: one line of the accuracy–sparsity plot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurveSpec {
    /// Legend label.
    pub label: String,
    /// Run ids; each contributes its final (sparsity, top-1).
    pub runs: Vec<String>,
}

/// Written into a run directory when the run has finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Run id.
    pub id: String,
    /// Method.
    pub method: String,
    /// Final test top-1 (%).
    pub test_top1: f64,
    /// Final test top-5 (%).
    pub test_top5: f64,
    /// Final sparsity of the ternary weights.
    pub sparsity: Option<f64>,
    /// Final mean cos-sim of W and Ŵ.
    pub cos_sim: Option<f64>,
    /// SHA-256 of the final model state.
    pub weights_sha256: String,
    /// Optimizer steps of the run (stage 1 included for a stage-2 run).
    pub steps: u64,
}

/// `hla study` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct StudyArgs {
    /// The plan (TOML).
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// Run only these ids (default: all); tables are written from whatever has finished.
    #[arg(long, value_name = "ID")]
    pub only: Vec<String>,
    /// Write the tables and plots from the finished runs; run nothing.
    #[arg(long)]
    pub report_only: bool,
}

/// Reads and checks a plan: unique ids, stage-1 runs named before their stage-2 runs, tables
/// naming planned runs.
pub fn load_plan(path: &Path) -> Result<Plan> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the plan", path.display()))?;
    let plan: Plan = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message().trim()))?;
    let mut seen = std::collections::BTreeSet::new();
    for r in &plan.run {
        if r.id.is_empty()
            || !r
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(
                "{}: run id {:?}: letters, digits, '-', '_', '.' only",
                path.display(),
                r.id
            );
        }
        if let Some(s) = &r.stage1 {
            if !seen.contains(s) {
                bail!(
                    "{}: run `{}` continues `{s}`, which is not a run listed before it",
                    path.display(),
                    r.id
                );
            }
        }
        if !seen.insert(r.id.clone()) {
            bail!("{}: run id `{}` appears twice", path.display(), r.id);
        }
    }
    let names = plan
        .table
        .iter()
        .flat_map(|t| t.rows.iter().map(|r| r.run.clone()))
        .chain(plan.curve.iter().flat_map(|c| c.runs.clone()))
        .chain(plan.study.fp_reference.clone());
    for n in names {
        if !seen.contains(&n) {
            bail!(
                "{}: a table or curve names `{n}`, which is not a run",
                path.display()
            );
        }
    }
    Ok(plan)
}

/// The config of run `r`.
pub fn planned_config(plan: &Plan, r: &RunSpec) -> Result<Config> {
    let mut set = r.set.clone();
    set.push(format!("name={}", r.id));
    if let Some(s) = &r.stage1 {
        let from = plan.study.out.join(s);
        set.push(format!(
            "quantize.stage1_from={}",
            toml_string(&from.display().to_string())
        ));
    }
    Ok(config::load(&plan.study.base, &set)?)
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn result_path(dir: &Path) -> PathBuf {
    dir.join("result.json")
}

/// Whether a run has finished (its `result.json` exists).
pub fn is_finished(dir: &Path) -> bool {
    result_path(dir).is_file()
}

/// `hla study`.
pub fn study(ctx: &Ctx, a: &StudyArgs) -> Result<()> {
    let plan = load_plan(&a.plan)?;
    for id in &a.only {
        if !plan.run.iter().any(|r| &r.id == id) {
            bail!("--only {id}: not a run of {}", a.plan.display());
        }
    }
    let mut ran = 0;
    let mut skipped = 0;
    for r in &plan.run {
        if !a.only.is_empty() && !a.only.contains(&r.id) {
            continue;
        }
        if a.report_only {
            continue;
        }
        match run_one(ctx, &plan, r)? {
            true => ran += 1,
            false => skipped += 1,
        }
    }
    let md = write_results(&plan)?;
    let finished = plan
        .run
        .iter()
        .filter(|r| is_finished(&plan.study.out.join(&r.id)))
        .count();
    ctx.ui.result(
        format!(
            "study {}: {ran} run(s) trained now, {skipped} finished before; {finished} of {} finished; wrote {}",
            a.plan.display(),
            plan.run.len(),
            md.display()
        ),
        serde_json::json!({"event": "result", "command": "study", "trained": ran,
            "finished_before": skipped, "finished": finished, "planned": plan.run.len(),
            "results": md.display().to_string()}),
    );
    Ok(())
}

/// Runs (or resumes) one run unless it has finished; returns whether it trained.
fn run_one(ctx: &Ctx, plan: &Plan, r: &RunSpec) -> Result<bool> {
    let dir = plan.study.out.join(&r.id);
    let cfg = planned_config(plan, r)?;
    if dir.join(rundir::RESOLVED).exists() {
        let have = rundir::load_resolved(&dir)?;
        if have.to_toml() != cfg.to_toml() {
            let diff = have
                .to_toml()
                .lines()
                .zip(cfg.to_toml().lines())
                .find(|(x, y)| x != y)
                .map(|(x, y)| format!(" (`{x}` there, `{y}` in the plan)"))
                .unwrap_or_default();
            bail!(
                "{} holds a run of another config{diff}; move it away or change the plan",
                dir.display()
            );
        }
    }
    if is_finished(&dir) {
        return Ok(false);
    }
    // Without a checkpoint the directory holds at most what a start killed before its first
    // checkpoint wrote (its config was checked above): start afresh.
    let resume = if dir.join(LATEST).exists() {
        let ck = Checkpoint::load(&dir)?;
        (!ck.state.finished).then_some(ck)
    } else {
        None
    };
    let p = Prepared {
        cfg: cfg.clone(),
        dir: dir.clone(),
        resume,
    };
    ctx.ui
        .info(format!("study: run {} -> {}", r.id, dir.display()));
    let finished_before = p.resume.is_none() && dir.join(LATEST).exists();
    let out = if finished_before {
        // the checkpoint says finished but result.json is missing (killed in between)
        let ck = Checkpoint::load(&dir)?;
        let recs = MetricsWriter::resume_read(&dir, ck.state.metrics_records)?;
        let last = recs.last().cloned().unwrap_or_default();
        hla_train::run::RunSummary {
            method: cfg.hla.method,
            top1: last.test_top1,
            top5: last.test_top5,
            sparsity: last.sparsity,
            cos_sim: last.cos_sim,
            hash: ck_hash(&ck),
            records: recs,
        }
    } else {
        commands::run_quantize(ctx, &p, None)?
    };
    let ck = Checkpoint::load(&dir)?;
    let stage1_only = cfg.hla.method == Method::Hla && cfg.hla.stage2_epochs == 0.0;
    let packed = dir.join("model.ternary.safetensors");
    if cfg.hla.method != Method::Fp && !stage1_only && !packed.exists() {
        hla_train::run::export_packed(&cfg, &ck, &dir)?.write(&packed)?;
    }
    let res = RunResult {
        id: r.id.clone(),
        method: cfg.hla.method.name().to_string(),
        test_top1: out.top1,
        test_top5: out.top5,
        sparsity: out.sparsity,
        cos_sim: out.cos_sim,
        weights_sha256: out.hash,
        steps: ck.state.step,
    };
    atomic_write(
        &result_path(&dir),
        serde_json::to_string_pretty(&res)?.as_bytes(),
    )?;
    Ok(true)
}

fn ck_hash(ck: &Checkpoint) -> String {
    let model: std::collections::BTreeMap<_, _> = ck
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with("param/") || k.starts_with("buffer/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    hla_train::checkpoint::weights_hash(&model, "")
}

/// The records of a finished run (`None` while it is missing or unfinished).
fn records(plan: &Plan, id: &str) -> Result<Option<Vec<EpochRecord>>> {
    let dir = plan.study.out.join(id);
    if !is_finished(&dir) {
        return Ok(None);
    }
    let text = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .with_context(|| format!("{}: no metrics.jsonl", dir.display()))?;
    let mut out = Vec::new();
    for (i, l) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        out.push(
            serde_json::from_str(l)
                .with_context(|| format!("{}/metrics.jsonl line {}", dir.display(), i + 1))?,
        );
    }
    Ok(Some(out))
}

/// The record of `row` (at `at` epochs, or the last).
fn pick(recs: &[EpochRecord], at: Option<f64>) -> Option<&EpochRecord> {
    match at {
        None => recs.last(),
        Some(e) => recs.iter().rev().find(|r| (r.epochs - e).abs() < 1e-9),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1} %", 100.0 * x))
        .unwrap_or_else(|| "—".into())
}

/// Mean training images/s of a run's records up to `upto` (records with training steps only).
fn speed(recs: &[EpochRecord], upto: &EpochRecord) -> Option<f64> {
    let v: Vec<f64> = recs
        .iter()
        .take_while(|r| r.step <= upto.step)
        .filter(|r| r.images_per_s > 0.0)
        .map(|r| r.images_per_s)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Writes `<out>/RESULTS.md` (and `accuracy_sparsity.png` when the plan has curves) from the
/// finished runs; missing ones are listed as pending.
pub fn write_results(plan: &Plan) -> Result<PathBuf> {
    let out = &plan.study.out;
    std::fs::create_dir_all(out)?;
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", plan.study.title);
    if !plan.study.summary.trim().is_empty() {
        let _ = writeln!(md, "{}\n", plan.study.summary.trim());
    }
    let done = plan
        .run
        .iter()
        .filter(|r| is_finished(&out.join(&r.id)))
        .count();
    let _ = writeln!(
        md,
        "{done} of {} planned runs have finished. Every number below is read from a committed `<run>/metrics.jsonl`; regenerate this file with `hla study --report-only PLAN` and any missing run with `hla study PLAN`.\n",
        plan.run.len()
    );
    for t in &plan.table {
        let _ = writeln!(md, "## {}\n", t.title);
        if !t.note.trim().is_empty() {
            let _ = writeln!(md, "{}\n", t.note.trim());
        }
        match t.kind {
            TableKind::Rows => rows_table(plan, t, &mut md)?,
            TableKind::Sims => sims_table(plan, t, &mut md)?,
        }
    }
    if !plan.curve.is_empty() {
        let mut series = Vec::new();
        for c in &plan.curve {
            let mut pts = Vec::new();
            for id in &c.runs {
                if let Some(recs) = records(plan, id)? {
                    if let Some(r) = recs.last() {
                        pts.push((100.0 * r.sparsity.unwrap_or(0.0), r.test_top1));
                    }
                }
            }
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            series.push(Series {
                label: c.label.clone(),
                points: pts,
            });
        }
        let fp = match &plan.study.fp_reference {
            Some(id) => records(plan, id)?.and_then(|r| r.last().map(|x| x.test_top1)),
            None => None,
        };
        let png = out.join("accuracy_sparsity.png");
        plots::accuracy_vs_sparsity(
            &png,
            "Test top-1 vs sparsity at equal budget",
            &series,
            fp.map(|y| ("full precision (same budget)", y)),
        )?;
        let _ = writeln!(
            md,
            "## Accuracy against sparsity\n\n![accuracy vs sparsity](accuracy_sparsity.png)\n"
        );
    }
    let pending: Vec<&str> = plan
        .run
        .iter()
        .filter(|r| !is_finished(&out.join(&r.id)))
        .map(|r| r.id.as_str())
        .collect();
    if !pending.is_empty() {
        let _ = writeln!(
            md,
            "Pending runs (not yet trained): {}.\n",
            pending.join(", ")
        );
    }
    let path = out.join("RESULTS.md");
    atomic_write(&path, md.as_bytes())?;
    Ok(path)
}

fn rows_table(plan: &Plan, t: &TableSpec, md: &mut String) -> Result<()> {
    let _ = writeln!(
        md,
        "| run | at epoch | test top-1 % | Δ top-1 | sparsity | mean cos(W, Ŵ) | Δ̄ start → end | train img/s | record |\n|---|---|---|---|---|---|---|---|---|"
    );
    let base = match &t.delta_to {
        Some(label) => match t.rows.iter().find(|r| &r.label == label) {
            Some(r) => {
                records(plan, &r.run)?.and_then(|recs| pick(&recs, r.at).map(|x| x.test_top1))
            }
            None => bail!("table `{}`: delta_to names no row label `{label}`", t.title),
        },
        None => None,
    };
    for row in &t.rows {
        let Some(recs) = records(plan, &row.run)? else {
            let _ = writeln!(
                md,
                "| {} | — | pending | | | | | | `{}` |",
                row.label, row.run
            );
            continue;
        };
        let Some(r) = pick(&recs, row.at) else {
            let _ = writeln!(
                md,
                "| {} | {:?} | no such record | | | | | | `{}` |",
                row.label, row.at, row.run
            );
            continue;
        };
        let delta = base
            .map(|b| format!("{:+.2}", r.test_top1 - b))
            .unwrap_or_default();
        let db = match (r.delta_bar_start, r.phase.as_str()) {
            (Some(s), "hla_stage2") => format!("{s:.4} → {:.4}", r.threshold.unwrap_or(f64::NAN)),
            _ => "—".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.2} | {delta} | {} | {} | {db} | {} | [`{}`]({}/metrics.jsonl) |",
            row.label,
            r.epochs,
            r.test_top1,
            pct(r.sparsity),
            r.cos_sim
                .map(|c| format!("{c:.3}"))
                .unwrap_or_else(|| "—".into()),
            speed(&recs, r)
                .map(|s| format!("{s:.0}"))
                .unwrap_or_else(|| "—".into()),
            row.run,
            row.run
        );
    }
    let _ = writeln!(md);
    Ok(())
}

fn sims_table(plan: &Plan, t: &TableSpec, md: &mut String) -> Result<()> {
    let mut header: Vec<u32> = Vec::new();
    let mut lines = Vec::new();
    for row in &t.rows {
        let r = records(plan, &row.run)?.and_then(|recs| pick(&recs, row.at).cloned());
        let Some(r) = r else {
            lines.push((row.label.clone(), None));
            continue;
        };
        let raw = row.sim.as_deref() == Some("raw");
        let vals: Vec<(u32, f64)> = r
            .sims
            .iter()
            .map(|s| (s.t_pct, if raw { s.raw } else { s.normalized }))
            .collect();
        for (tp, _) in &vals {
            if !header.contains(tp) {
                header.push(*tp);
            }
        }
        lines.push((
            format!("{} (`{}`, epoch {:.1})", row.label, row.run, r.epochs),
            Some(vals),
        ));
    }
    header.sort_unstable();
    let _ = write!(md, "| weights |");
    for tp in &header {
        let _ = write!(md, " t = {:.2} |", *tp as f64 / 100.0);
    }
    let _ = writeln!(md, "\n|---|{}", "---|".repeat(header.len()));
    for (label, vals) in lines {
        let _ = write!(md, "| {label} |");
        for tp in &header {
            let v = vals
                .as_ref()
                .and_then(|v| v.iter().find(|x| x.0 == *tp))
                .map(|x| format!("{:.4}", x.1))
                .unwrap_or_else(|| "pending".into());
            let _ = write!(md, " {v} |");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md);
    Ok(())
}
