//! The command-line surface: help, version and usage errors.

use crate::util::hla;

#[test]
fn help_lists_the_tool_and_every_subcommand() {
    let out = hla().arg("--help").output().expect("run hla --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Usage: hla"), "help text: {text}");
    for sub in [
        "train", "quantize", "eval", "export", "bench", "demo", "study", "explain",
    ] {
        assert!(text.contains(sub), "help lacks {sub}: {text}");
    }
    for opt in ["--seed", "--threads", "--out", "--quiet", "--json"] {
        assert!(text.contains(opt), "help lacks {opt}: {text}");
    }
}

#[test]
fn every_subcommand_has_help_explaining_its_options() {
    let cases: [(&str, &[&str]); 6] = [
        (
            "train",
            &["--config", "--resume", "--set", "--stop-after-epochs"],
        ),
        ("quantize", &["--config", "--method", "--from", "--resume"]),
        ("eval", &["--config", "MODEL"]),
        ("export", &["--output", "RUN"]),
        ("bench", &["--arch", "--batch", "--iters"]),
        ("demo", &["--config", "--set"]),
    ];
    for (sub, opts) in cases {
        let out = hla().args([sub, "--help"]).output().expect("run hla");
        assert!(out.status.success(), "{sub} --help failed");
        let text = String::from_utf8_lossy(&out.stdout);
        for o in opts {
            assert!(text.contains(o), "`hla {sub} --help` lacks {o}: {text}");
        }
        // Global options are accepted after the subcommand too.
        assert!(text.contains("--seed"), "`hla {sub} --help` lacks --seed");
    }
}

#[test]
fn version_matches_the_package() {
    let out = hla().arg("--version").output().expect("run hla --version");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("hla {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn unknown_subcommand_fails_with_an_error() {
    let out = hla().arg("no-such-command").output().expect("run hla");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error"), "stderr: {err}");
}

/// `hla bench --compare`: every model case of a reference file is measured (the matrix-multiply
/// rows skipped), the ratio is ours over PyTorch's figure and both peak memories are shown,
/// every case runs under the `--isa` ceiling the table reports; unreadable or case-free files
/// are one-line errors.
#[test]
fn bench_compare_measures_every_reference_case() {
    let dir = crate::util::scratch("bench-compare");
    let reference = dir.join("torch.json");
    std::fs::write(
        &reference,
        r#"{"info": {"torch": "reference"}, "results": [
 {"bench": "torch.mm", "shape": "256x256x256", "sec": 0.1, "gflops": 1.0},
 {"bench": "cifar_resnet20", "mode": "inference", "batch": 2, "hw": 32, "sec": 0.1, "img_s": 20.0},
 {"bench": "cifar_resnet20", "mode": "train_step", "batch": 2, "hw": 32, "sec": 0.1, "img_s": 10.0,
  "base_rss_mib": 600.0, "peak_rss_mib": 700.0}]}"#,
    )
    .unwrap();
    let out = hla()
        .args([
            "--json",
            "--threads",
            "1",
            "bench",
            "--iters",
            "1",
            "--compare",
        ])
        .arg(&reference)
        .output()
        .expect("run hla bench --compare");
    let v = last_json(&out);
    let rows = v["rows"].as_array().unwrap();
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["inference", "inference_folded", "train_step"]);
    for r in rows {
        let (ours, torch) = (
            r["images_per_s"].as_f64().unwrap(),
            r["torch_images_per_s"].as_f64().unwrap(),
        );
        assert!(ours > 0.0);
        assert!((r["ratio"].as_f64().unwrap() - ours / torch).abs() < 1e-9 * ours);
    }
    assert_eq!(rows[2]["torch_peak_rss_mib"], 700.0);
    assert_eq!(rows[0]["isa"], v["isa"]);

    // each case runs in a child process, under the parent's `--isa` ceiling
    let out = hla()
        .args(["--json", "--threads", "1", "--isa", "portable", "bench"])
        .args(["--iters", "1", "--compare"])
        .arg(&reference)
        .output()
        .expect("run hla --isa portable bench --compare");
    let v = last_json(&out);
    assert_eq!(v["isa"], "portable");
    for r in v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["isa"].is_string())
    {
        assert_eq!(r["isa"], "portable", "{r}");
    }
    if cfg!(target_os = "linux") {
        let (base, peak) = (
            rows[2]["base_rss_mib"].as_f64().unwrap(),
            rows[2]["peak_rss_mib"].as_f64().unwrap(),
        );
        assert!(peak > base, "training allocates: {base} -> {peak} MiB");
    }

    let empty = dir.join("empty.json");
    std::fs::write(
        &empty,
        r#"{"results": [{"bench": "torch.mm", "gflops": 1.0}]}"#,
    )
    .unwrap();
    for (file, needle) in [
        (empty.as_path(), "no model case"),
        (dir.join("absent.json").as_path(), "absent.json"),
    ] {
        let out = hla()
            .args(["bench", "--compare"])
            .arg(file)
            .output()
            .unwrap();
        crate::util::assert_one_error_line(&out, &[needle]);
    }
}

/// `--isa` caps the kernels for the whole process: `portable` leaves only im2col + GEMM and the
/// scalar integer loop, `avx2` never reaches an AVX-512 kernel (on an AVX-512 machine this is
/// the AVX2-only machine's code path), and an unknown name is rejected. The ternary result's
/// `image_size` is the input's size (it once held the model's byte counts).
#[test]
fn isa_ceiling_limits_every_kernel() {
    for (isa, allowed_f32, allowed_int8) in [
        ("portable", &["portable"][..], &["scalar"][..]),
        (
            "avx2",
            &["portable", "avx2+fma"][..],
            &["scalar", "avx2"][..],
        ),
    ] {
        let out = hla()
            .args(["--json", "--threads", "1", "--isa", isa, "bench"])
            .args(["--arch", "resnet20", "--batch", "1", "--iters", "1"])
            .args(["--path", "ternary", "--what", "infer"])
            .output()
            .expect("run hla bench");
        let v = last_json(&out);
        let f32_isa = v["isa"].as_str().unwrap();
        assert!(allowed_f32.contains(&f32_isa), "--isa {isa}: f32 {f32_isa}");
        let kernels: Vec<&String> = v["w2a8_by_kernel"].as_object().unwrap().keys().collect();
        assert!(!kernels.is_empty());
        for k in kernels {
            assert!(allowed_int8.contains(&k.as_str()), "--isa {isa}: int8 {k}");
        }
        assert!(allowed_int8.contains(&v["kernel"].as_str().unwrap()));
        // the result names the input size, beside the model's bytes
        assert_eq!(v["image_size"].as_u64(), Some(32), "--isa {isa}: {v}");
        assert!(v["packed_bytes"].as_u64().unwrap() < v["f32_bytes"].as_u64().unwrap());
    }
    let out = hla().args(["--isa", "avx1", "bench"]).output().unwrap();
    assert!(!out.status.success());
}

/// The last JSON line of a successful `hla --json` run (its result).
fn last_json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a result line")).expect("JSON result")
}
