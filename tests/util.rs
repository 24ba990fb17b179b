//! Helpers shared by the end-to-end tests: running the binary, scratch directories, snapshots
//! of a directory's contents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `hla` binary under test.
pub fn hla() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hla"));
    c.env_remove("RUST_BACKTRACE");
    c
}

/// Runs `hla` with `args` in `cwd`.
pub fn run_in(cwd: &Path, args: &[&str]) -> Output {
    hla()
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run the hla binary")
}

/// A fresh, empty scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// Every file under `dir` with its bytes (to prove a failed command changed nothing).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).expect("read file"));
            }
        }
    }
    out
}

/// Asserts a failed run: non-zero exit, exactly one line on stderr starting with `error:`, and
/// that line contains every `needles` item. Returns the line.
pub fn assert_one_error_line(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "stderr: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {}", lines[0]);
    }
    lines[0].to_string()
}

/// The shipped CIFAR-10 subset, or None (with a printed reason) when it is absent.
pub fn shipped_cifar() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cifar10");
    if p.join("test_batch.bin").exists() {
        Some(p)
    } else {
        use std::io::Write;
        writeln!(std::io::stderr(), "skipped: {} is absent", p.display()).ok();
        None
    }
}
