//! Helpers shared by this crate's tests: locating ../shared, reading golden tensors, comparing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ndarray::ArrayD;

use crate::io::{read_tensors, Tensor};

/// `/work/shared`-style folder next to the workspace root (`<workspace>/../shared`).
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// The golden folder, or `None` when it is absent (see [`skip_unless`]).
pub fn golden_dir(test: &str) -> Option<PathBuf> {
    let d = shared_dir().join("golden");
    skip_unless(test, &d.join("README.md")).then_some(d)
}

/// Whether `needed` exists. If not, the calling test skips, saying why on the real stderr
/// (libtest does not capture it, so the user sees the skip), unless `HLA_REQUIRE_SHARED` is
/// set (as `.ci/run` does), where a missing `../shared` file fails the test instead.
pub fn skip_unless(test: &str, needed: &std::path::Path) -> bool {
    if needed.exists() {
        return true;
    }
    let why = format!("{test}: {} is absent", needed.display());
    assert!(
        std::env::var_os("HLA_REQUIRE_SHARED").is_none(),
        "HLA_REQUIRE_SHARED is set and {why}"
    );
    use std::io::Write;
    writeln!(std::io::stderr(), "skipped {why}").ok();
    false
}

/// All tensors of a golden file (panics with the file name on error: test-only).
pub fn golden(dir: &std::path::Path, file: &str) -> BTreeMap<String, Tensor> {
    read_tensors(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The f32 tensor `name` of a golden map.
pub fn f32_of(m: &BTreeMap<String, Tensor>, name: &str) -> ArrayD<f32> {
    match m.get(name) {
        Some(Tensor::F32(a)) => a.clone(),
        other => panic!("golden tensor {name}: expected F32, got {other:?}"),
    }
}

/// The i64 tensor `name` of a golden map.
pub fn i64_of(m: &BTreeMap<String, Tensor>, name: &str) -> ArrayD<i64> {
    match m.get(name) {
        Some(Tensor::I64(a)) => a.clone(),
        other => panic!("golden tensor {name}: expected I64, got {other:?}"),
    }
}

/// The larger of `m` and `e`, or NaN if either is (`f64::max` drops a NaN, which would hide a
/// NaN output from the comparisons below).
pub fn nan_max(m: f64, e: f64) -> f64 {
    if e.is_nan() || e > m {
        e
    } else {
        m
    }
}

/// `max|a − b| / max|b|` (0 for two all-zero tensors; NaN if any difference is); panics on a
/// shape mismatch.
pub fn rel_err(what: &str, a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes differ");
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0f64, |m, (&x, &y)| nan_max(m, (x as f64 - y as f64).abs()));
    let scale = b.iter().fold(0f64, |m, &y| m.max((y as f64).abs()));
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// Asserts `rel_err(a, b) <= tol`, printing both the error and the tolerance.
pub fn assert_close(what: &str, a: &ArrayD<f32>, b: &ArrayD<f32>, tol: f64) {
    let e = rel_err(what, a, b);
    println!("{what}: relative error {e:.3e} (tolerance {tol:.0e})");
    assert!(e <= tol, "{what}: relative error {e:e} > tolerance {tol:e}");
}
