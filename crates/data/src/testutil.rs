//! Helpers shared by the crate's tests.

use std::path::PathBuf;

/// The shared reference data, or `None` after printing why the calling test skips.
pub fn shared_or_skip(what: &str) -> Option<PathBuf> {
    let d = crate::shared_data_dir();
    if d.is_none() {
        eprintln!("skipped {what}: ../shared/data is absent");
    }
    d
}

/// A fresh empty folder under the system temp dir, unique per test name and process.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hla-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("test: create temp dir");
    d
}
