//! `hla bench --compare FILE...`: our figures for every model case of PyTorch reference files
//! (`../shared/bench/torch_models.py --json`, `tools/bench/torch_peak_memory.py --json`,
//! `tools/bench/torch_latency.py --json` for batch-1 inference), in one
//! table with the ratio, the peak resident memory of both, the CPU and the instruction set.
//!
//! Each of our measurements runs in a fresh `hla bench` process, as the memory script does for
//! PyTorch: memory one case left with the allocator would otherwise count towards the next.

use crate::cli::BenchArgs;
use crate::Ctx;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// One model case of the reference files: `(bench, mode, batch, hw)`.
type Key = (String, String, u64, u64);

/// What the reference files say about one case.
#[derive(Default)]
struct Reference {
    img_s: Option<f64>,
    base_mib: Option<f64>,
    peak_mib: Option<f64>,
}

/// Our architecture name and class count for a reference `bench` name.
fn our_arch(bench: &str) -> Option<(&'static str, usize)> {
    match bench {
        "cifar_resnet20" => Some(("resnet20", 10)),
        "resnet18" => Some(("resnet18", 1000)),
        "resnet50" => Some(("resnet50", 1000)),
        "mobilenet_v2" => Some(("mobilenet_v2", 1000)),
        _ => None,
    }
}

/// The model cases of the files in the order they first appear, and the files' info lines.
type References = (Vec<(Key, Reference)>, Vec<String>);

/// Reads the `--compare` files.
fn read_references(files: &[PathBuf]) -> Result<References> {
    let mut order: Vec<Key> = Vec::new();
    let mut refs: BTreeMap<Key, Reference> = BTreeMap::new();
    let mut info = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", f.display()))?;
        let results = v["results"].as_array().ok_or_else(|| {
            anyhow!(
                "{}: no \"results\" list (expected the --json output of torch_models.py or torch_peak_memory.py)",
                f.display()
            )
        })?;
        if let Some(i) = v.get("info") {
            info.push(format!("{}: {i}", f.display()));
        }
        for r in results {
            let (Some(bench), Some(mode), Some(batch), Some(hw)) = (
                r["bench"].as_str(),
                r["mode"].as_str(),
                r["batch"].as_u64(),
                r["hw"].as_u64(),
            ) else {
                continue; // e.g. the torch.mm rows
            };
            if our_arch(bench).is_none() || !matches!(mode, "inference" | "train_step") {
                continue;
            }
            let key = (bench.to_string(), mode.to_string(), batch, hw);
            let e = refs.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                Reference::default()
            });
            e.img_s = r["img_s"].as_f64().or(e.img_s);
            e.base_mib = r["base_rss_mib"].as_f64().or(e.base_mib);
            e.peak_mib = r["peak_rss_mib"].as_f64().or(e.peak_mib);
        }
    }
    if order.is_empty() {
        bail!("no model case (cifar_resnet20, resnet18, resnet50, mobilenet_v2; inference or train_step) in the --compare files");
    }
    let cases = order
        .into_iter()
        .map(|k| {
            let r = refs.remove(&k).expect("every ordered key has an entry");
            (k, r)
        })
        .collect();
    Ok((cases, info))
}

/// Runs `hla bench` for one case in a child process and returns its JSON result.
fn run_ours(ctx: &Ctx, a: &BenchArgs, arch: &str, classes: usize, key: &Key) -> Result<Value> {
    let exe = std::env::current_exe().context("locating the hla binary")?;
    let what = if key.1 == "train_step" {
        "train"
    } else {
        "infer"
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--json")
        .arg("--threads")
        .arg(ctx.threads().to_string());
    if let Some(s) = ctx.global.seed {
        cmd.arg("--seed").arg(s.to_string());
    }
    // the child must run under the same ceiling the table's header reports
    if let Some(isa) = ctx.global.isa {
        cmd.arg("--isa").arg(isa.max_isa().name());
    }
    cmd.args(["bench", "--arch", arch, "--what", what])
        .arg("--batch")
        .arg(key.2.to_string())
        .arg("--image-size")
        .arg(key.3.to_string())
        .arg("--classes")
        .arg(classes.to_string())
        .arg("--iters")
        .arg(a.iters.to_string());
    let out = cmd.output().context("running hla bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "hla bench --arch {arch} --batch {} failed: {}",
            key.2,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "result")
        .ok_or_else(|| anyhow!("hla bench --arch {arch}: no result line in its output"))
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.digits$}"))
}

fn fmt_mem(base: Option<f64>, peak: Option<f64>) -> String {
    match (base, peak) {
        (Some(b), Some(p)) => format!("{p:.0} MiB (+{:.0})", p - b),
        (None, Some(p)) => format!("{p:.0} MiB"),
        _ => "—".into(),
    }
}

/// `hla bench --compare FILE...`.
pub fn compare(ctx: &Ctx, a: &BenchArgs) -> Result<()> {
    let (cases, info) = read_references(&a.compare)?;
    let cpu = crate::demo::cpu_model();
    let isa = hla_tensor::simd_name();
    ctx.ui.info(format!(
        "hla bench --compare: {} case(s) on {cpu} ({isa}), {} threads",
        cases.len(),
        ctx.threads()
    ));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{cpu}; our kernels: {isa}; {} threads\n{}\n",
        ctx.threads(),
        info.join("\n")
    );
    md.push_str("| work | ours img/s | PyTorch img/s | ours / PyTorch | ours peak RSS (+ above start) | PyTorch peak RSS (+ above start) |\n|---|---|---|---|---|---|\n");
    let mut rows = Vec::new();
    for (key, r) in &cases {
        let (arch, classes) = our_arch(&key.0).expect("read_references keeps known benches");
        ctx.ui
            .info(format!("  {arch} {} batch {} ...", key.1, key.2));
        let v = run_ours(ctx, a, arch, classes, key)?;
        if v["isa"].as_str() != Some(isa) {
            bail!(
                "hla bench --arch {arch} ran {} kernels, not the {isa} this table reports",
                v["isa"]
            );
        }
        let train = key.1 == "train_step";
        let p = if train { "train" } else { "infer" };
        let ours = v[format!("{p}_images_per_s")].as_f64();
        let (base, peak) = (
            v[format!("{p}_base_rss_mib")].as_f64(),
            v[format!("{p}_peak_rss_mib")].as_f64(),
        );
        let what = if train { "training step" } else { "inference" };
        let work = format!("{arch} {what}, batch {}, {}²", key.2, key.3);
        let ratio = ours.zip(r.img_s).map(|(o, t)| o / t);
        let _ = writeln!(
            md,
            "| {work} | {} | {} | {} | {} | {} |",
            fmt_opt(ours, 1),
            fmt_opt(r.img_s, 1),
            fmt_opt(ratio, 2),
            fmt_mem(base, peak),
            fmt_mem(r.base_mib, r.peak_mib)
        );
        rows.push(serde_json::json!({
            "arch": arch, "mode": key.1, "batch": key.2, "image_size": key.3,
            "images_per_s": ours, "torch_images_per_s": r.img_s, "ratio": ratio,
            "peak_rss_mib": peak, "base_rss_mib": base, "isa": v["isa"],
            "torch_peak_rss_mib": r.peak_mib, "torch_base_rss_mib": r.base_mib,
        }));
        if !train {
            let folded = v["infer_folded_images_per_s"].as_f64();
            let ratio = folded.zip(r.img_s).map(|(o, t)| o / t);
            let _ = writeln!(
                md,
                "| {work}, BN folded | {} | {} | {} | | |",
                fmt_opt(folded, 1),
                fmt_opt(r.img_s, 1),
                fmt_opt(ratio, 2)
            );
            rows.push(serde_json::json!({
                "arch": arch, "mode": "inference_folded", "batch": key.2, "image_size": key.3,
                "images_per_s": folded, "torch_images_per_s": r.img_s, "ratio": ratio,
            }));
        }
    }
    ctx.ui.result(
        md.trim_end(),
        serde_json::json!({
            "event": "result", "command": "bench", "compare": true, "cpu": cpu, "isa": isa,
            "threads": ctx.threads(), "rows": rows,
        }),
    );
    Ok(())
}
