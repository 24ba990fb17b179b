//! `hla explain`: the spec's hand-worked layer prints the numbers the unit tests pin (T1–T8),
//! and a pretrained layer gives a slide and the Figure 1 files.

use crate::util::{assert_one_error_line, run_in, scratch};
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn spec_example_prints_the_hand_worked_numbers() {
    let out = run_in(repo(), &["explain", "--spec-example"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // T1 rows and norms, T2 Δ = 4/11, T5 α, T3 L_d and ∂L_d/∂V, T8 G ⊙ S, Δ̄ gradient and step.
    for want in [
        "0.90909091 -0.18181818  0.36363636 -0.09090909",
        "‖v_j‖ = [11.00000000, 6.50000000]",
        "Δ = T(0.50) = 0.36363636",
        "α_j   = [1.00000000, 0.70710678]",
        "L_d = 0.0043512444",
        "-0.00143433 -0.00136603  0.00273205 -0.00068301",
        "0.01735537 -0.19338843  0.26033058 -0.39669421",
        "∂J/∂Δ̄ = (1/(m·n)) Σ_(ŵ ≠ 0) G ⊙ S = 0.02383796",
        "= 0.29761620",
    ] {
        assert!(text.contains(want), "output lacks {want:?}:\n{text}");
    }
}

#[test]
fn pretrained_layer_gives_a_slide_and_figure_1() {
    let weights = repo().join("data/pretrained/resnet20_cifar10_akamaster.safetensors");
    if !weights.exists() || !repo().join("data/cifar10/data_batch_1.bin").exists() {
        eprintln!("skipped: shipped weights or data absent");
        return;
    }
    let dir = scratch("explain");
    let out_dir = dir.to_str().unwrap();
    let out = run_in(
        repo(),
        &["explain", "--layer", "layer2.0.conv2", "--out", out_dir],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // layer2.0.conv2: 32 rows of 32·3·3 = 288 weights; T(0.50) zeroes ⌊0.5·9216⌋ + 1 = 4609.
    assert!(
        text.contains("32 rows (output units) x 288 weights"),
        "{text}"
    );
    assert!(
        text.contains("(4609 of 9216 weights have |w| ≤ Δ"),
        "{text}"
    );
    assert!(text.contains("Δ̄ ←"), "{text}");
    let png = dir.join("fig1-layer2.0.conv2.png");
    assert!(std::fs::metadata(&png)
        .map(|m| m.len() > 1000)
        .unwrap_or(false));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("fig1-layer2.0.conv2.json")).unwrap())
            .unwrap();
    let panels = json["panels"].as_array().unwrap();
    assert_eq!(panels.len(), 4);
    for p in panels {
        assert_eq!(p["values"].as_array().unwrap().len(), 9216);
    }
    // A layer that is not quantised (the first conv) is refused with the list of choices.
    let out = run_in(repo(), &["explain", "--layer", "conv1"]);
    assert_one_error_line(
        &out,
        &["conv1", "not a quantisable layer", "layer1.0.conv1"],
    );
}
