//! `hla study` on a miniature plan: shared stage 1 (a stage-2 run continuing it equals one
//! uninterrupted run bit for bit), a half-epoch schedule, skipping finished runs, resuming an
//! unfinished one, and a second call that only rewrites the tables.

use crate::util::{run_in, scratch, shipped_cifar};
use std::path::Path;

fn result(dir: &Path, id: &str) -> serde_json::Value {
    let p = dir.join("out").join(id).join("result.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
        .unwrap()
}

fn records(dir: &Path, id: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("out").join(id).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn miniature_study_shares_stage1_skips_finished_and_resumes() {
    let Some(root) = shipped_cifar() else { return };
    let d = scratch("study");
    // 128 images in batches of 32: 4 steps per epoch; half-epoch sub-stages t = 0.30, 0.50
    std::fs::write(
        d.join("base.toml"),
        format!(
            r#"
name = "base"
seed = 5
[model]
arch = "resnet8"
num_classes = 10
[data]
format = "cifar10"
root = "{}"
train_limit = 128
test_limit = 64
batch_size = 32
eval_batch_size = 64
[hla]
t_start_pct = 30
t_step_pct = 20
t_end_pct = 70
stage1_epochs_per_stage = 0.5
sgdr_t0_epochs = 0.5
sgdr_t0_epochs_stage2 = 1.0
stage2_epochs = 1.0
bn_recalibrate_batches = 1
[report]
plots = false
"#,
            root.display()
        ),
    )
    .unwrap();
    let plan = r#"
[study]
title = "mini"
base = "base.toml"
out = "out"
fp_reference = "twn-long"

[[run]]
id = "s1"
set = ["hla.stage2_epochs=0.0"]

[[run]]
id = "t65"
stage1 = "s1"
set = ["hla.stage2_init_pct=65"]

[[run]]
id = "t65-whole"
set = ["hla.stage2_init_pct=65"]

[[run]]
id = "twn"
set = ["hla.method=\"twn\"", "hla.stage2_epochs=2.0"]

[[run]]
id = "twn-long"
set = ["hla.method=\"twn\"", "hla.stage2_epochs=3.0"]

[[table]]
title = "P1"
delta_to = "HLA"
rows = [{ label = "HLA", run = "t65", at = 2.0 }, { label = "TWN 2", run = "twn-long", at = 2.0 }]

[[table]]
title = "Table 4"
kind = "sims"
rows = [{ label = "start", run = "twn", at = 0.0, sim = "raw" }, { label = "after stage 1", run = "s1" }]

[[curve]]
label = "TWN"
runs = ["twn", "twn-long"]
"#;
    std::fs::write(d.join("plan.toml"), plan).unwrap();
    // an unfinished run the study must resume: twn-long stopped after its first epoch
    let out = run_in(
        &d,
        &[
            "--quiet",
            "--out",
            "out/twn-long",
            "quantize",
            "--config",
            "base.toml",
            "--set",
            "hla.method=\"twn\"",
            "--set",
            "hla.stage2_epochs=3.0",
            "--set",
            "name=twn-long",
            "--stop-after-epochs",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("out/twn-long/result.json").exists());

    let out = run_in(&d, &["--json", "study", "plan.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"trained\":5"), "{text}");

    // a stage-2 run continuing the shared stage 1 is the uninterrupted run, bit for bit
    assert_eq!(
        result(&d, "t65")["weights_sha256"],
        result(&d, "t65-whole")["weights_sha256"]
    );
    let (a, b) = (records(&d, "t65"), records(&d, "t65-whole"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["test_top1"], y["test_top1"]);
        assert_eq!(x["step"], y["step"]);
    }
    // start, 2 half-epoch sub-stages (4 steps per epoch: records at steps 0, 2, 4), stage 2 (8)
    let steps: Vec<u64> = a.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![0, 2, 4, 8]);
    assert_eq!(a[1]["t_pct"], 30);
    assert_eq!(a[3]["phase"], "hla_stage2");
    assert!(a[0]["sims"].as_array().unwrap().len() >= 4);
    // the resumed run equals a 3-epoch run's first epochs: its epoch-2 record equals twn's last
    let long = records(&d, "twn-long");
    let short = records(&d, "twn");
    assert_eq!(long[2]["test_top1"], short[2]["test_top1"]);
    assert_eq!(long[2]["train_loss"], short[2]["train_loss"]);
    assert!(d.join("out/t65/model.ternary.safetensors").exists());
    assert!(!d.join("out/s1/model.ternary.safetensors").exists());

    // second call: nothing trains, the tables are rewritten
    let before = std::fs::read(d.join("out/t65/metrics.jsonl")).unwrap();
    let out = run_in(&d, &["--json", "study", "plan.toml"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"trained\":0") && text.contains("\"finished_before\":5"),
        "{text}"
    );
    assert_eq!(
        before,
        std::fs::read(d.join("out/t65/metrics.jsonl")).unwrap()
    );
    let md = std::fs::read_to_string(d.join("out/RESULTS.md")).unwrap();
    assert!(md.contains("| HLA | 2.0 |") && md.contains("+0.00"), "{md}");
    assert!(md.contains("t = 0.95") && !md.contains("pending"), "{md}");
    assert!(d.join("out/accuracy_sparsity.png").exists());

    // a run directory holding another config is refused, naming the difference
    std::fs::write(
        d.join("plan2.toml"),
        plan.replace(
            "hla.stage2_init_pct=65\"]\n\n[[run]]\nid = \"t65-whole\"",
            "hla.stage2_init_pct=70\"]\n\n[[run]]\nid = \"t65-whole\"",
        ),
    )
    .unwrap();
    let out = run_in(&d, &["study", "plan2.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another config") && err.contains("70"),
        "{err}"
    );
}
