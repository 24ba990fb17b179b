//! Helpers shared by the crate's tests.

use std::path::PathBuf;

/// The shared reference data, or `None` after saying on the real stderr (libtest does not
/// capture it) why the calling test skips. Under `HLA_REQUIRE_SHARED` (set by `.ci/run`) a
/// missing `../shared/data` fails the test instead.
pub fn shared_or_skip(what: &str) -> Option<PathBuf> {
    let d = crate::shared_data_dir();
    if d.is_none() {
        assert!(
            std::env::var_os("HLA_REQUIRE_SHARED").is_none(),
            "HLA_REQUIRE_SHARED is set and ../shared/data is absent ({what})"
        );
        use std::io::Write;
        writeln!(
            std::io::stderr(),
            "skipped {what}: ../shared/data is absent"
        )
        .ok();
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
