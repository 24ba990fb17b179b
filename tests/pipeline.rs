//! A tiny train → quantize → export → eval chain on the shipped CIFAR-10 subset, for each
//! quantisation method, checking the files written and the numbers reported.

use crate::util::{assert_one_error_line, run_in, scratch, shipped_cifar};
use std::path::Path;

/// A config small enough to train in seconds: 128 training images, 64 test images, one
/// stage-1 sub-stage and one stage-2 epoch.
pub fn tiny_config(root: &Path, extra: &str) -> String {
    format!(
        r#"
name = "tiny"
seed = 3
[model]
arch = "resnet20"
num_classes = 10
[data]
format = "cifar10"
root = "{}"
train_limit = 128
test_limit = 64
batch_size = 32
eval_batch_size = 64
[train]
epochs = 2
lr = 0.05
[hla]
stage1_epochs_per_stage = 1
t_start_pct = 30
t_step_pct = 20
t_end_pct = 70
sgdr_t0_epochs = 1
stage2_epochs = 1
bn_recalibrate_batches = 2
[quantize]
baseline_epochs = 1
{extra}
"#,
        root.display()
    )
}

/// The JSON result line of a `--json` run.
pub fn result_json(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "run failed: {}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "result")
        .unwrap_or_else(|| panic!("no result line in: {text}"))
}

#[test]
fn train_quantize_export_eval_chain() {
    let Some(root) = shipped_cifar() else { return };
    let d = scratch("chain");
    std::fs::write(d.join("c.toml"), tiny_config(&root, "")).unwrap();
    let out = run_in(
        &d,
        &["--json", "train", "--config", "c.toml", "--out", "fp"],
    );
    let r = result_json(&out);
    let top1 = r["test_top1"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&top1), "{r}");
    for f in [
        "checkpoint.safetensors",
        "model.safetensors",
        "metrics.jsonl",
        "metrics.csv",
        "config.resolved.toml",
        "report.md",
        "accuracy.png",
    ] {
        assert!(d.join("fp").join(f).is_file(), "fp/{f} missing");
    }
    let jl = std::fs::read_to_string(d.join("fp/metrics.jsonl")).unwrap();
    assert_eq!(jl.lines().count(), 2, "{jl}");

    for method in ["hla", "twn", "ttq"] {
        let out = run_in(
            &d,
            &[
                "--json", "quantize", "--config", "c.toml", "--method", method, "--from", "fp",
                "--out", method,
            ],
        );
        let r = result_json(&out);
        let sp = r["sparsity"].as_f64().unwrap();
        assert!(sp > 0.0 && sp < 1.0, "{method}: sparsity {sp}");
        if method == "hla" {
            // Stage 2 starts at Δ̄ = T(80): about 80 % zeros after one short epoch.
            assert!(sp > 0.6, "hla sparsity {sp}");
            let jl = std::fs::read_to_string(d.join("hla/metrics.jsonl")).unwrap();
            let phases: Vec<String> = jl
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["phase"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            assert_eq!(
                phases,
                ["start", "hla_stage1", "hla_stage1", "hla_stage2"],
                "{jl}"
            );
            // Figure 1 over time: the layer's weights at the start, at the end of each
            // sub-stage (t = 0.30, 0.50), at the end of stage 1 and as ternary; L_d moves them.
            let hist = |name: &str| -> Vec<f64> {
                let p = d.join("hla").join(format!("hist-{name}.json"));
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                v["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            };
            let (h0, h30, h50) = (hist("start"), hist("stage1-t30"), hist("stage1-t50"));
            assert!(!h0.is_empty() && h0.len() == h30.len() && h30.len() == h50.len());
            assert!(
                h0 != h30 && h30 != h50,
                "sub-stage histograms do not change"
            );
            assert_eq!(h50, hist("stage1"), "the last sub-stage ends stage 1");
            assert!(!hist("ternary").is_empty());
        }
        let out = run_in(&d, &["--json", "export", method]);
        let e = result_json(&out);
        assert!(e["ratio"].as_f64().unwrap() >= 14.0, "{method}: {e}");
        let file = d.join(method).join("model.ternary.safetensors");
        assert!(file.is_file());
        // Exporting again never overwrites.
        let again = run_in(&d, &["export", method]);
        assert!(!again.status.success());
        // The packed model evaluates to the accuracy the run reported (same forward).
        let ev = run_in(&d, &["--json", "eval", &file.display().to_string()]);
        let ev = result_json(&ev);
        assert_eq!(
            ev["test_top1"].as_f64().unwrap(),
            r["test_top1"].as_f64().unwrap(),
            "{method}: {ev} vs {r}"
        );
        let evc = result_json(&run_in(&d, &["--json", "eval", method]));
        assert_eq!(
            evc["test_top1"].as_f64().unwrap(),
            r["test_top1"].as_f64().unwrap(),
            "{method}: {evc}"
        );
        // W2A8: the export carries its calibration; 8-bit activations move few predictions.
        let a8 = result_json(&run_in(
            &d,
            &["--json", "eval", "--a8", &file.display().to_string()],
        ));
        assert!(a8["kind"].as_str().unwrap().contains("W2A8"), "{a8}");
        let (t_a8, t_ex) = (
            a8["test_top1"].as_f64().unwrap(),
            ev["test_top1"].as_f64().unwrap(),
        );
        assert!(
            (t_a8 - t_ex).abs() <= 5.0,
            "{method}: W2A8 {t_a8} vs exact {t_ex}"
        );
        infer_on_shipped_jpegs(&d, &file, method);
    }
}

/// `hla infer` on the shipped JPEG copies of CIFAR-10 test images (one class folder): one
/// prediction per image with the CIFAR-10 class names, probabilities descending and summing
/// to at most 1; the W2A8 and exact paths agree on most top-1 classes; a missing input is one
/// error line.
fn infer_on_shipped_jpegs(d: &std::path::Path, model: &std::path::Path, method: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-jpeg/val/cat");
    let images = std::fs::read_dir(&dir).unwrap().count();
    let preds = |extra: &[&str]| -> Vec<serde_json::Value> {
        let m = model.display().to_string();
        let dd = dir.display().to_string();
        let mut args = vec!["--json", "infer", m.as_str(), dd.as_str(), "--top-k", "3"];
        args.extend_from_slice(extra);
        let out = run_in(d, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let v: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["event"] == "prediction")
            .collect();
        assert_eq!(v.len(), images, "{text}");
        v
    };
    let (a8, exact) = (preds(&[]), preds(&["--exact"]));
    let names = hla_data::CIFAR10_CLASSES;
    let mut agree = 0;
    for (a, e) in a8.iter().zip(&exact) {
        let top = a["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let p: Vec<f64> = top.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
        assert!(p.windows(2).all(|w| w[0] >= w[1]) && p.iter().sum::<f64>() <= 1.0 + 1e-9);
        assert!(top
            .iter()
            .all(|t| names.contains(&t["name"].as_str().unwrap())));
        agree += (top[0]["class"] == e["top"][0]["class"]) as usize;
    }
    assert!(
        4 * agree >= 3 * images,
        "{method}: W2A8 and exact agree on {agree}/{images}"
    );
    let bad = run_in(d, &["infer", &model.display().to_string(), "nowhere.jpg"]);
    assert_one_error_line(&bad, &["nowhere.jpg"]);
}

#[test]
fn hyperspherical_training_and_eval_of_its_checkpoint() {
    let Some(root) = shipped_cifar() else { return };
    let d = scratch("hypersphere");
    let cfg = tiny_config(&root, "").replace("epochs = 2", "epochs = 1\nmode = \"hyperspherical\"");
    std::fs::write(d.join("c.toml"), cfg).unwrap();
    let r = result_json(&run_in(
        &d,
        &["--json", "train", "--config", "c.toml", "--out", "hs"],
    ));
    let jl = std::fs::read_to_string(d.join("hs/metrics.jsonl")).unwrap();
    assert!(jl.contains("\"phase\":\"hyperspherical\""), "{jl}");
    // Evaluating the checkpoint uses the same hyperspherical forward.
    let ev = result_json(&run_in(&d, &["--json", "eval", "hs"]));
    assert_eq!(ev["test_top1"], r["test_top1"], "{ev} vs {r}");
}
