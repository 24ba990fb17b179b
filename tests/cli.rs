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
