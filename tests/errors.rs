//! Bad input — config, path, checkpoint — gives one clear error line and a non-zero exit, and
//! leaves existing outputs untouched.

use crate::util::{assert_one_error_line, run_in, scratch, snapshot};
use std::path::Path;

const GOOD: &str = r#"
name = "tiny"
[model]
arch = "resnet20"
num_classes = 10
[data]
format = "cifar10"
root = "data/cifar10"
"#;

/// A directory holding an earlier run's outputs, which no failing command may touch.
fn existing_run(dir: &Path) {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("metrics.jsonl"),
        "{\"phase\":\"fp\",\"epoch\":1}\n",
    )
    .unwrap();
    std::fs::write(out.join("report.md"), "# earlier report\n").unwrap();
}

fn check_untouched(dir: &Path, before: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>) {
    assert_eq!(
        &snapshot(dir),
        before,
        "a failing command changed files in {}",
        dir.display()
    );
}

#[test]
fn unknown_config_key_names_the_key() {
    let d = scratch("unknown-key");
    existing_run(&d);
    std::fs::write(d.join("c.toml"), format!("{GOOD}[hla]\nlamda_d = 0.5\n")).unwrap();
    let before = snapshot(&d);
    for sub in ["train", "quantize"] {
        let out = run_in(&d, &[sub, "--config", "c.toml", "--out", "out"]);
        assert_one_error_line(&out, &["c.toml", "hla.lamda_d", "unknown field"]);
    }
    check_untouched(&d, &before);
}

#[test]
fn wrong_type_and_out_of_range_name_the_key_and_range() {
    let d = scratch("bad-values");
    existing_run(&d);
    std::fs::write(
        d.join("type.toml"),
        format!("{GOOD}[hla]\nstage2_epochs = \"many\"\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("range.toml"),
        format!("{GOOD}[hla]\nt_start_pct = 130\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("variant.toml"),
        format!("{GOOD}[hla]\nthreshold_scope = \"local\"\n"),
    )
    .unwrap();
    std::fs::write(d.join("syntax.toml"), "name = \n").unwrap();
    let before = snapshot(&d);
    let out = run_in(&d, &["train", "--config", "type.toml", "--out", "out"]);
    assert_one_error_line(&out, &["type.toml", "hla.stage2_epochs"]);
    let out = run_in(&d, &["train", "--config", "range.toml", "--out", "out"]);
    assert_one_error_line(&out, &["hla.t_start_pct", "130", "1 <= x <= 99"]);
    let out = run_in(
        &d,
        &["quantize", "--config", "variant.toml", "--out", "out"],
    );
    assert_one_error_line(&out, &["hla.threshold_scope", "global", "per_layer"]);
    let out = run_in(&d, &["train", "--config", "syntax.toml", "--out", "out"]);
    assert_one_error_line(&out, &["syntax.toml", "line 1"]);
    let out = run_in(
        &d,
        &[
            "train",
            "--config",
            "range.toml",
            "--set",
            "nonsense",
            "--out",
            "out",
        ],
    );
    assert_one_error_line(&out, &["--set nonsense", "KEY=VALUE"]);
    check_untouched(&d, &before);
}

#[test]
fn missing_config_and_missing_data_name_the_path() {
    let d = scratch("bad-path");
    existing_run(&d);
    let before = snapshot(&d);
    let out = run_in(
        &d,
        &["train", "--config", "nope/none.toml", "--out", "out2"],
    );
    assert_one_error_line(&out, &["nope/none.toml"]);
    std::fs::write(
        d.join("c.toml"),
        GOOD.replace("data/cifar10", "/definitely/not/here"),
    )
    .unwrap();
    let before2 = snapshot(&d);
    let out = run_in(&d, &["train", "--config", "c.toml", "--out", "out2"]);
    assert_one_error_line(&out, &["/definitely/not/here"]);
    assert!(
        !d.join("out2").exists(),
        "a failed run created its output directory"
    );
    check_untouched(&d, &before2);
    let _ = before;
}

#[test]
fn an_existing_run_is_never_overwritten() {
    let d = scratch("no-overwrite");
    existing_run(&d);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10");
    let good = GOOD.replace("data/cifar10", &data.display().to_string());
    std::fs::write(d.join("c.toml"), good).unwrap();
    let before = snapshot(&d);
    let out = run_in(&d, &["train", "--config", "c.toml", "--out", "out"]);
    assert_one_error_line(&out, &["already holds a run", "--resume"]);
    check_untouched(&d, &before);
}

#[test]
fn corrupt_checkpoint_is_reported_and_left_alone() {
    let d = scratch("corrupt-ckpt");
    existing_run(&d);
    // Not a checkpoint at all.
    std::fs::write(
        d.join("out/checkpoint.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage",
    )
    .unwrap();
    let before = snapshot(&d);
    let out = run_in(&d, &["eval", "out/checkpoint.safetensors"]);
    assert_one_error_line(&out, &["checkpoint.safetensors", "checkpoint"]);
    let out = run_in(&d, &["train", "--resume", "out"]);
    assert_one_error_line(&out, &["checkpoint"]);
    let out = run_in(&d, &["export", "out"]);
    assert_one_error_line(&out, &["checkpoint"]);
    check_untouched(&d, &before);
}
