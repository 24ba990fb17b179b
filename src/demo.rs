//! `hla demo`: the default showcase. On the CIFAR-10 subset shipped in `data/`, train a CIFAR
//! ResNet in full precision, then quantise that same network with HLA (stage 1 + stage 2), TWN
//! and TTQ for the same number of epochs, export each to the 2-bit format, and print and write a
//! comparison (top-1, sparsity, size, cos-sim) with plots.

use crate::cli::DemoArgs;
use crate::commands::{self, Prepared};
use crate::config::{self, Config};
use crate::plots;
use crate::report::{self, Figure};
use crate::rundir;
use crate::Ctx;
use anyhow::{bail, Result};
use hla_core::Method;
use hla_train::metrics::EpochRecord;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The built-in demo configuration (`configs/demo.toml`).
pub const DEMO_TOML: &str = include_str!("../configs/demo.toml");

/// One row of the comparison table.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    top1: f64,
    top5: f64,
    sparsity: Option<f64>,
    cos_sim: Option<f64>,
    /// Bytes of the quantisable layers (f32 for FP, packed for the ternary models).
    bytes: usize,
    ratio: f64,
    records: Vec<EpochRecord>,
}

fn load_hist(dir: &Path, name: &str) -> Option<(String, Vec<f32>)> {
    let text = std::fs::read_to_string(dir.join(format!("hist-{name}.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let layer = v.get("layer")?.as_str()?.to_string();
    let vals = v
        .get("values")?
        .as_array()?
        .iter()
        .filter_map(|x| x.as_f64().map(|f| f as f32))
        .collect();
    Some((layer, vals))
}

/// `hla demo`.
pub fn demo(ctx: &Ctx, a: &DemoArgs) -> Result<()> {
    let started = Instant::now();
    let (mut cfg, source) = match &a.config {
        Some(p) => (config::load(p, &a.set)?, p.display().to_string()),
        None => (
            config::from_toml_str(DEMO_TOML, Path::new("configs/demo.toml (built in)"), &a.set)?,
            "configs/demo.toml (built in)".to_string(),
        ),
    };
    if let Some(s) = ctx.global.seed {
        cfg.seed = s;
    }
    commands::check_data(&cfg)?;
    let out = ctx
        .global
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    rundir::check_fresh(&out)?;
    for sub in ["fp", "hla", "twn", "ttq"] {
        rundir::check_fresh(&out.join(sub))?;
    }
    let data = hla_train::data::load_data(&cfg, ctx.threads())?;
    let n_train = data.train.dataset().len();
    let n_test = data.test.dataset().len();
    drop(data);
    let stage1 = cfg.stage1_schedule();
    let hla_epochs = stage1.len() as f64 * cfg.hla.stage1_epochs_per_stage + cfg.hla.stage2_epochs;
    let base_epochs = cfg.baseline_epochs();
    let fp_epochs = if cfg.model.pretrained.is_some() {
        0.0
    } else {
        cfg.train.epochs as f64
    };
    let total_epochs = fp_epochs + hla_epochs + 2.0 * base_epochs;
    let start = match &cfg.model.pretrained {
        Some(p) => format!("from the pretrained weights {}", p.display()),
        None => format!(
            "FP {} epochs from scratch (lr {}), then from the same FP weights",
            cfg.train.epochs,
            cfg.train.lr.unwrap_or(cfg.hla.lr)
        ),
    };
    let budget = format!(
        "budget: {} on {n_train} train / {n_test} test CIFAR-10 images (batch {}), {} threads; \
         {start}: HLA {} stage-1 sub-stages t = {} x {} epoch(s) + {} stage-2 epoch(s) = {hla_epochs} epochs, \
         TWN {base_epochs} epochs, TTQ {base_epochs} epochs (lr {}, SGDR T_0 = {} / {} epoch(s)); {total_epochs} epochs = {} training images in all",
        cfg.model.arch,
        cfg.data.batch_size,
        ctx.threads(),
        stage1.len(),
        stage1.iter().map(|t| format!("0.{t:02}")).collect::<Vec<_>>().join("/"),
        cfg.hla.stage1_epochs_per_stage,
        cfg.hla.stage2_epochs,
        cfg.hla.lr,
        cfg.hla.sgdr_t0_epochs,
        cfg.hla.sgdr_t0_epochs_stage2.unwrap_or(cfg.hla.sgdr_t0_epochs),
        (total_epochs * n_train as f64).round()
    );
    if hla_epochs != base_epochs {
        ctx.ui.info(format!(
            "note: HLA runs {hla_epochs} epochs and the baselines {base_epochs} (set quantize.baseline_epochs = {hla_epochs} for equal budgets)"
        ));
    }
    ctx.ui
        .info(format!("hla demo ({source}) -> {}", out.display()));
    ctx.ui.info(&budget);
    ctx.ui
        .event(serde_json::json!({"event": "budget", "text": budget, "epochs": total_epochs}));
    std::fs::create_dir_all(&out)?;
    hla_train::checkpoint::atomic_write(&out.join(rundir::RESOLVED), cfg.to_toml().as_bytes())?;

    // 1. Full precision: the pretrained model evaluated, or trained from scratch without one.
    let pretrained = cfg.model.pretrained.is_some();
    let fp_out = if pretrained {
        let data = hla_train::data::load_data(&cfg, ctx.threads())?;
        let mut model = hla_train::run::build_model(&cfg)?;
        let ev = hla_train::eval::evaluate(model.as_mut(), None, &data.test)?;
        ctx.ui.info(format!(
            "pretrained {}: test top-1 {:.2} % on {} images",
            cfg.model.pretrained.as_ref().expect("checked").display(),
            ev.top1,
            ev.images
        ));
        hla_train::run::RunSummary {
            method: Method::Fp,
            top1: ev.top1,
            top5: ev.top5,
            sparsity: None,
            cos_sim: None,
            hash: String::new(),
            records: Vec::new(),
        }
    } else {
        let mut fp_cfg = cfg.clone();
        fp_cfg.hla.method = hla_core::Method::Fp;
        let fp = Prepared {
            cfg: fp_cfg,
            dir: out.join("fp"),
            resume: None,
        };
        commands::run_train(ctx, &fp, None)?
    };
    let fp_model = hla_models::build(cfg.model.arch.name(), cfg.model.num_classes, 0)?;
    let qset: Vec<String> = fp_model
        .quantisable()
        .into_iter()
        .filter(|q| {
            !cfg.hla
                .skip_layers
                .as_ref()
                .is_some_and(|s| s.contains(&q.layer))
        })
        .map(|q| q.weight)
        .collect();
    let f32_bytes: usize = fp_model
        .params()
        .iter()
        .filter(|(n, _)| qset.contains(n))
        .map(|(_, p)| 4 * p.len())
        .sum();
    let mut rows = vec![Row {
        name: if pretrained {
            "FP (pretrained)".into()
        } else {
            "FP (start point)".into()
        },
        top1: fp_out.top1,
        top5: fp_out.top5,
        sparsity: None,
        cos_sim: None,
        bytes: f32_bytes,
        ratio: 1.0,
        records: fp_out.records.clone(),
    }];

    // 2. HLA, TWN, TTQ from the same FP checkpoint.
    let mut per_layer: Vec<(String, Vec<String>, Vec<f64>)> = Vec::new();
    for m in [Method::Hla, Method::Twn, Method::Ttq] {
        let mut c = cfg.clone();
        c.hla.method = m;
        if !pretrained {
            c.quantize.from = Some(out.join("fp"));
        }
        if m != Method::Hla {
            c.hla.stage2_epochs = base_epochs;
        }
        let p = Prepared {
            cfg: c,
            dir: out.join(m.name()),
            resume: None,
        };
        let q = commands::run_quantize(ctx, &p, None)?;
        let ck = hla_train::checkpoint::Checkpoint::load(&p.dir)?;
        let pm = hla_train::run::export_packed(&p.cfg, &ck, &p.dir)?;
        let file = p.dir.join("model.ternary.safetensors");
        pm.write(&file)?;
        let r = pm.size_report();
        if let Some(last) = q.records.last() {
            per_layer.push((
                format!("{} final", m.name().to_uppercase()),
                last.layers.iter().map(|l| l.layer.clone()).collect(),
                last.layers.iter().map(|l| l.cos_sim).collect(),
            ));
        }
        if m == Method::Hla {
            if let Some(s1) = q.records.iter().rev().find(|r| r.phase == "hla_stage1") {
                per_layer.insert(
                    0,
                    (
                        "HLA end of stage 1 (FP)".into(),
                        s1.layers.iter().map(|l| l.layer.clone()).collect(),
                        s1.layers.iter().map(|l| l.cos_sim).collect(),
                    ),
                );
            }
        }
        rows.push(Row {
            name: match m {
                Method::Hla => "HLA (stage 1 + 2)".into(),
                Method::Twn => "TWN".into(),
                Method::Ttq => "TTQ".into(),
                Method::Fp => "FP".into(),
            },
            top1: q.top1,
            top5: q.top5,
            sparsity: q.sparsity,
            cos_sim: q.cos_sim,
            bytes: r.packed_bytes,
            ratio: r.ratio,
            records: q.records,
        });
    }

    // 3. Table, plots, report.
    let table = table_text(&rows);
    let elapsed = started.elapsed().as_secs_f64();
    let mut figs = Vec::new();
    if cfg.report.plots {
        figs = figures(&out, &rows, &per_layer)?;
    }
    write_report(&out, &cfg, &budget, &rows, &figs, elapsed)?;
    match ctx.ui.mode {
        crate::progress::OutputMode::Json => {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({"method": r.name, "test_top1": r.top1, "test_top5": r.top5,
                        "sparsity": r.sparsity, "cos_sim": r.cos_sim, "bytes": r.bytes, "ratio": r.ratio})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"event": "result", "command": "demo", "rows": v,
                    "seconds": elapsed, "dir": out.display().to_string()})
            );
        }
        _ => {
            println!("\n{table}");
            println!(
                "{} in {:.0} s ({:.1} min) on {}. Report: {}",
                budget,
                elapsed,
                elapsed / 60.0,
                cpu_model(),
                out.join("report.md").display()
            );
            println!(
                "The full study (50,000 CIFAR-10 images, several CPU hours, resumable): hla study configs/study-cifar10-resnet20.toml"
            );
        }
    }
    if rows.iter().any(|r| !r.top1.is_finite()) {
        bail!("a run produced a non-finite accuracy");
    }
    Ok(())
}

fn table_text(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<20} {:>8} {:>8} {:>10} {:>9} {:>14} {:>8}",
        "method", "top-1 %", "top-5 %", "sparsity", "cos-sim", "size (q-layers)", "ratio"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<20} {:>8.2} {:>8.2} {:>10} {:>9} {:>14} {:>8}",
            r.name,
            r.top1,
            r.top5,
            r.sparsity
                .map(|x| format!("{:.1}%", 100.0 * x))
                .unwrap_or_else(|| "—".into()),
            r.cos_sim
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "—".into()),
            format!("{:.1} KiB", r.bytes as f64 / 1024.0),
            format!("{:.1}x", r.ratio)
        );
    }
    s
}

fn figures(
    out: &Path,
    rows: &[Row],
    per_layer: &[(String, Vec<String>, Vec<f64>)],
) -> Result<Vec<Figure>> {
    let mut figs = Vec::new();
    // Accuracy and sparsity over the quantisation epochs (Figure 4 idea).
    let groups: Vec<(String, Vec<EpochRecord>)> = rows
        .iter()
        .skip(1)
        .map(|r| (r.name.clone(), r.records.clone()))
        .collect();
    let f = report::curves_figure(
        out,
        "accuracy_sparsity.png",
        "Test top-1 (solid) and sparsity (dashed) per quantisation epoch",
        &groups,
    )?;
    figs.push(f);
    if !rows[0].records.is_empty() {
        let f = report::curves_figure(
            out,
            "fp_accuracy.png",
            "Full-precision training: test top-1 per epoch",
            &[("FP".to_string(), rows[0].records.clone())],
        )?;
        figs.push(f);
    }
    // Weight histograms of one layer (Figure 1 idea).
    let hdir = out.join("hla");
    let mut panels = Vec::new();
    let mut layer = String::new();
    for (name, label) in [
        ("start", "FP weights, row-normalised (start of HLA)"),
        ("stage1", "after stage 1 (hyperspherical + L_d)"),
        ("ternary", "after stage 2, ternary Ŵ"),
    ] {
        if let Some((l, v)) = load_hist(&hdir, name) {
            layer = l;
            panels.push((label.to_string(), v));
        }
    }
    if !panels.is_empty() {
        let title = format!("Weights of {layer}: before, after stage 1, ternarised");
        plots::histograms(&out.join("weights_hist.png"), &title, &panels, 121)?;
        figs.push(Figure {
            file: "weights_hist.png".into(),
            caption: format!(
                "{title} (the paper's Figure 1 idea: L_d pulls the normalised weights into three clusters)."
            ),
        });
    }
    // Per-layer cos-sim (Table 4 idea).
    if let Some((_, labels, _)) = per_layer.first() {
        // "layer2.0.conv1" -> "2.0.c1", "layer1.0.downsample.0" -> "1.0.ds" (fits under a bar group)
        let short: Vec<String> = labels
            .iter()
            .map(|l| {
                l.trim_start_matches("layer")
                    .replace("downsample.0", "ds")
                    .replace("conv", "c")
            })
            .collect();
        let groups: Vec<(String, Vec<f64>)> = per_layer
            .iter()
            .map(|(n, _, v)| (n.clone(), v.clone()))
            .collect();
        plots::bars(
            &out.join("cos_sim_layers.png"),
            "Per-layer cosine similarity between W and its ternary Ŵ",
            "mean cosine similarity of the rows",
            &short,
            &groups,
            (0.0, 1.35),
        )?;
        figs.push(Figure {
            file: "cos_sim_layers.png".into(),
            caption: "Per-layer mean cosine similarity between each row of W and of its ternary projection Ŵ (the paper's Table 4 quantity), per method; layer names shortened (`2.0.c1` = `layer2.0.conv1`).".into(),
        });
    }
    Ok(figs)
}

fn write_report(
    out: &Path,
    cfg: &Config,
    budget: &str,
    rows: &[Row],
    figs: &[Figure],
    seconds: f64,
) -> Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# hla demo — {}\n", cfg.name);
    let _ = writeln!(
        md,
        "A small CIFAR ResNet trained in full precision on the CIFAR-10 subset shipped in `data/`, then quantised to ternary weights from the same full-precision weights by HLA (Algorithm 1: stage 1 + stage 2), TWN and TTQ. All numbers are measured in this run (seed {}, {:.0} s).\n",
        cfg.seed, seconds
    );
    let _ = writeln!(md, "**{budget}.**\n");
    let _ = writeln!(
        md,
        "| method | test top-1 % | test top-5 % | sparsity | cos-sim | size of quantised layers | ratio vs f32 |\n|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {} | {} | {:.1} KiB | {:.1}× |",
            r.name,
            r.top1,
            r.top5,
            r.sparsity
                .map(|x| format!("{:.1} %", 100.0 * x))
                .unwrap_or_else(|| "—".into()),
            r.cos_sim
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "—".into()),
            r.bytes as f64 / 1024.0,
            r.ratio
        );
    }
    let _ = writeln!(
        md,
        "\nSizes count the quantisable layers only (f32 for FP; 2-bit codes + one f32 scale per row for the ternary models, as written to `*/model.ternary.safetensors`). Accuracies of short runs on a 10-class subset are far from the paper's ImageNet numbers and say little about the methods' ranking; compare accuracy together with sparsity.\n"
    );
    report::push_figures(&mut md, figs);
    let _ = writeln!(
        md,
        "Runs: [`fp/`](fp/report.md), [`hla/`](hla/report.md), [`twn/`](twn/report.md), [`ttq/`](ttq/report.md) — each with its resolved config, `metrics.jsonl`, `metrics.csv` and checkpoint.\n"
    );
    for r in rows.iter().skip(1) {
        let _ = writeln!(md, "## {}\n\n{}", r.name, report::epochs_table(&r.records));
    }
    std::fs::write(out.join("report.md"), md)?;
    Ok(())
}

/// The CPU model (`/proc/cpuinfo`), for the timing line.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
