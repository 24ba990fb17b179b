//! The command-line surface: help, version and error reporting.

use std::process::Command;

fn hla() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hla"))
}

#[test]
fn help_lists_the_tool() {
    let out = hla().arg("--help").output().expect("run hla --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Usage: hla"), "help text: {text}");
}

#[test]
fn version_matches_the_package() {
    let out = hla().arg("--version").output().expect("run hla --version");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("hla {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn unknown_subcommand_fails_with_one_error() {
    let out = hla().arg("no-such-command").output().expect("run hla");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error"), "stderr: {err}");
}
