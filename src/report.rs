//! `report.md` next to a run's results: what ran, the results table, the per-epoch metrics,
//! and the PNG figures embedded with captions.

use crate::config::Config;
use crate::plots::{self, Series};
use anyhow::{Context, Result};
use hla_train::metrics::EpochRecord;
use std::fmt::Write as _;
use std::path::Path;

/// A figure written next to the report.
#[derive(Debug, Clone)]
pub struct Figure {
    /// File name inside the run directory.
    pub file: String,
    /// Caption (also carries the title when text could not be rendered in the PNG).
    pub caption: String,
}

/// Accuracy (and sparsity) over epochs, one series per phase group, epochs counted across the
/// records in order.
pub fn curves_figure(
    dir: &Path,
    file: &str,
    title: &str,
    groups: &[(String, Vec<EpochRecord>)],
) -> Result<Figure> {
    let mut acc = Vec::new();
    let mut sp = Vec::new();
    for (label, recs) in groups {
        let pts: Vec<(f64, f64)> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| ((i + 1) as f64, r.test_top1))
            .collect();
        acc.push(Series {
            label: label.clone(),
            points: pts,
        });
        let s: Vec<(f64, f64)> = recs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.sparsity.map(|s| ((i + 1) as f64, 100.0 * s)))
            .collect();
        if !s.is_empty() {
            sp.push(Series {
                label: label.clone(),
                points: s,
            });
        }
    }
    plots::curves(&dir.join(file), title, "epoch", &acc, &sp)?;
    Ok(Figure {
        file: file.to_string(),
        caption: format!(
            "{title}: test top-1 accuracy (solid, left axis){}.",
            if sp.is_empty() {
                ""
            } else {
                " and ternary sparsity (dashed, right axis) per epoch"
            }
        ),
    })
}

/// Markdown table of the per-epoch records.
pub fn epochs_table(records: &[EpochRecord]) -> String {
    let mut s = String::from(
        "| phase | epoch | t | lr | train loss | λ·L_d | train top-1 | test top-1 | test top-5 | sparsity | cos-sim | threshold | img/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let o = |v: Option<f64>, scale: f64, prec: usize| {
        v.map(|x| format!("{:.*}", prec, x * scale))
            .unwrap_or_else(|| "—".into())
    };
    for r in records {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2e} | {:.4} | {:.4} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {:.0} |",
            r.phase,
            r.epoch,
            r.t_pct.map(|t| format!("0.{t:02}")).unwrap_or_else(|| "—".into()),
            r.lr,
            r.train_loss,
            r.train_ld,
            r.train_top1,
            r.test_top1,
            r.test_top5,
            o(r.sparsity, 100.0, 1),
            o(r.cos_sim, 1.0, 4),
            o(r.threshold, 1.0, 5),
            r.images_per_s
        );
    }
    s
}

/// Writes `report.md` for a single run (train or quantize): the command, config, final result,
/// the accuracy curve and the epochs table; `figures` are embedded as well.
pub fn write_run_report(
    dir: &Path,
    cfg: &Config,
    title: &str,
    records: &[EpochRecord],
    figures: &[Figure],
) -> Result<()> {
    let mut figs = Vec::new();
    if cfg.report.plots && !records.is_empty() {
        let mut groups: Vec<(String, Vec<EpochRecord>)> = Vec::new();
        for r in records {
            match groups.last_mut() {
                Some((p, v)) if *p == r.phase => v.push(r.clone()),
                _ => groups.push((r.phase.clone(), vec![r.clone()])),
            }
        }
        // Epochs of consecutive phases continue each other on one axis.
        let mut offset = 0;
        let mut series = Vec::new();
        for (p, v) in &groups {
            let mut recs = Vec::new();
            for _ in 0..offset {
                recs.push(None);
            }
            recs.extend(v.iter().cloned().map(Some));
            offset += v.len();
            series.push((p.clone(), recs));
        }
        let mut acc = Vec::new();
        let mut sp = Vec::new();
        for (p, recs) in &series {
            let pts: Vec<(f64, f64)> = recs
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.as_ref().map(|r| ((i + 1) as f64, r.test_top1)))
                .collect();
            acc.push(Series {
                label: p.clone(),
                points: pts,
            });
            let s: Vec<(f64, f64)> = recs
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    r.as_ref()
                        .and_then(|r| r.sparsity)
                        .map(|s| ((i + 1) as f64, 100.0 * s))
                })
                .collect();
            if !s.is_empty() {
                sp.push(Series {
                    label: p.clone(),
                    points: s,
                });
            }
        }
        let file = "accuracy.png";
        plots::curves(
            &dir.join(file),
            &format!("{} — {}", cfg.name, title),
            "epoch",
            &acc,
            &sp,
        )?;
        figs.push(Figure {
            file: file.into(),
            caption: format!(
                "Test top-1 accuracy per epoch{} ({}).",
                if sp.is_empty() {
                    ""
                } else {
                    " (solid, left axis) and ternary sparsity (dashed, right axis)"
                },
                title
            ),
        });
    }
    figs.extend_from_slice(figures);
    let mut md = String::new();
    let _ = writeln!(md, "# {} — `{}`\n", cfg.name, title);
    let _ = writeln!(
        md,
        "Model `{}` ({} classes), data `{}` ({:?}), seed {}. The resolved configuration is in `config.resolved.toml`; per-epoch metrics in `metrics.jsonl` / `metrics.csv`.\n",
        cfg.model.arch,
        cfg.model.num_classes,
        cfg.data.root.display(),
        cfg.data.format,
        cfg.seed
    );
    if let Some(r) = records.last() {
        let _ = writeln!(
            md,
            "**Final:** test top-1 {:.2} %, top-5 {:.2} %{}.\n",
            r.test_top1,
            r.test_top5,
            r.sparsity
                .map(|s| format!(", sparsity {:.1} %", 100.0 * s))
                .unwrap_or_default()
        );
    }
    push_figures(&mut md, &figs);
    let _ = writeln!(md, "## Epochs\n\n{}", epochs_table(records));
    std::fs::write(dir.join("report.md"), md)
        .with_context(|| format!("{}: cannot write report.md", dir.display()))
}

/// Appends `![caption](file)` blocks.
pub fn push_figures(md: &mut String, figs: &[Figure]) {
    for f in figs {
        let _ = writeln!(md, "![{}]({})\n\n*{}*\n", f.caption, f.file, f.caption);
    }
    if !figs.is_empty() && !plots::text_renders() {
        let _ = writeln!(
            md,
            "(No system font was found, so the figures carry no text; their titles and axes are given in the captions.)\n"
        );
    }
}
