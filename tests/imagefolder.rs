//! ImageFolder end to end: `hla train`, `hla quantize` and `hla eval` on a JPEG tree, and a
//! broken image: skipped with a warning the user sees (also in `--json` mode) under
//! `on_bad_image = "skip"`, an error naming the file otherwise.

use crate::util::{assert_one_error_line, run_in, scratch};
use std::path::Path;

fn config(root: &Path, extra: &str) -> String {
    format!(
        r#"
name = "folder"
seed = 5
[model]
arch = "resnet8"
num_classes = 10
[data]
format = "imagefolder"
root = "{}"
image_size = 32
resize = 32
train_limit = 64
test_limit = 40
batch_size = 16
eval_batch_size = 20
{extra}
[train]
epochs = 1
lr = 0.05
[hla]
stage2_epochs = 1
[report]
plots = false
"#,
        root.display()
    )
}

/// `hla train` then `hla quantize --method twn` from it, with `d/c.toml`; the quantize output.
fn train_then_twn(d: &Path) -> std::process::Output {
    let t = run_in(d, &["--json", "train", "--config", "c.toml", "--out", "fp"]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let args = [
        "--json", "quantize", "--config", "c.toml", "--method", "twn", "--from", "fp",
    ];
    let q = run_in(d, &[&args[..], &["--out", "twn"]].concat());
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    q
}

fn shipped_tree() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10-jpeg")
}

#[test]
fn train_quantize_eval_on_a_jpeg_tree() {
    let d = scratch("imagefolder-e2e");
    std::fs::write(d.join("c.toml"), config(&shipped_tree(), "")).unwrap();
    train_then_twn(&d);
    let e = run_in(&d, &["--json", "eval", "twn"]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let text = String::from_utf8_lossy(&e.stdout);
    let v: serde_json::Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a JSON result");
    let top1 = v["top1"]
        .as_f64()
        .or_else(|| v["test_top1"].as_f64())
        .expect("top-1 in the result");
    assert!((0.0..=100.0).contains(&top1), "{v}");
}

#[test]
fn a_broken_image_is_skipped_with_a_warning_or_named_in_the_error() {
    let d = scratch("imagefolder-bad");
    let src = shipped_tree();
    for split in ["train", "val"] {
        for class in ["airplane", "cat"] {
            let to = d.join("tree").join(split).join(class);
            std::fs::create_dir_all(&to).unwrap();
            for i in 0..8 {
                let n = format!("{i:04}.jpg");
                std::fs::copy(src.join(split).join(class).join(&n), to.join(&n)).unwrap();
            }
        }
    }
    let good = std::fs::read(src.join("train/cat/0000.jpg")).unwrap();
    std::fs::write(d.join("tree/train/cat/zz-cut.jpg"), &good[..good.len() / 2]).unwrap();
    let tree = d.join("tree");
    let cfg =
        config(&tree, "on_bad_image = \"skip\"").replace("train_limit = 64\ntest_limit = 40\n", "");
    std::fs::write(d.join("skip.toml"), &cfg).unwrap();
    let out = run_in(
        &d,
        &["--json", "train", "--config", "skip.toml", "--out", "s"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("\"event\":\"warning\"") && stdout.contains("zz-cut.jpg"),
        "no warning event: {stdout}"
    );
    assert!(
        stderr.contains("warning: skipped sample") && stderr.contains("zz-cut.jpg"),
        "{stderr}"
    );
    std::fs::write(
        d.join("error.toml"),
        cfg.replace("on_bad_image = \"skip\"", ""),
    )
    .unwrap();
    let out = run_in(&d, &["train", "--config", "error.toml", "--out", "e"]);
    assert_one_error_line(&out, &["zz-cut.jpg"]);
}

/// The ImageNet-style sample (`data/imagenette`: real photos, wnid folders, the 1000-class
/// index file): a few training steps and a TWN quantisation.
#[cfg(unix)]
#[test]
fn imagenette_sample_trains_and_quantises() {
    let d = scratch("imagenette-e2e");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/imagenette");
    // The sample ships one split; it serves as both (a test of the path, not of accuracy).
    std::fs::create_dir_all(d.join("tree")).unwrap();
    for split in ["train", "val"] {
        std::os::unix::fs::symlink(src.join("val"), d.join("tree").join(split)).unwrap();
    }
    let cfg = config(&d.join("tree"), "")
        .replace("num_classes = 10", "num_classes = 1000")
        .replace(
            "image_size = 32\nresize = 32",
            "image_size = 64\nresize = 72",
        )
        .replace(
            "train_limit = 64\ntest_limit = 40\nbatch_size = 16",
            "batch_size = 8",
        )
        .replace(
            "[data]\n",
            &format!(
                "[data]\nclass_index = \"{}\"\n",
                src.join("classes.tsv").display()
            ),
        );
    std::fs::write(d.join("c.toml"), cfg).unwrap();
    let q = train_then_twn(&d);
    let stdout = String::from_utf8_lossy(&q.stdout);
    assert!(stdout.contains("\"sparsity\""), "{stdout}");
}
