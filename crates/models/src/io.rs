//! safetensors I/O of state dicts with torchvision names: floats stored as F32 (F16 / BF16 / F64
//! accepted on load and converted exactly or by rounding to f32), `num_batches_tracked` as an I64
//! scalar.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::model::{BufferMut, BufferRef, Model, StateMut, StateRef};
use crate::{ModelError, Result};

/// A tensor read from a safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    /// Any float dtype, converted to f32.
    F32(ArrayD<f32>),
    /// Any integer dtype, converted to i64.
    I64(ArrayD<i64>),
}

impl Tensor {
    /// Shape of the tensor.
    pub fn shape(&self) -> &[usize] {
        match self {
            Tensor::F32(a) => a.shape(),
            Tensor::I64(a) => a.shape(),
        }
    }
}

fn st_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::SafeTensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn convert(path: &Path, name: &str, v: &TensorView<'_>) -> Result<Tensor> {
    let shape = IxDyn(v.shape());
    let d = v.data();
    let f32s = |vals: Vec<f32>| {
        ArrayD::from_shape_vec(shape.clone(), vals)
            .map(Tensor::F32)
            .map_err(|e| st_err(path, e))
    };
    let i64s = |vals: Vec<i64>| {
        ArrayD::from_shape_vec(shape.clone(), vals)
            .map(Tensor::I64)
            .map_err(|e| st_err(path, e))
    };
    match v.dtype() {
        Dtype::F32 => f32s(
            d.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => f32s(
            d.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => f32s(
            d.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::F64 => f32s(
            d.chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
        ),
        Dtype::I64 => i64s(
            d.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        Dtype::I32 => i64s(
            d.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        Dtype::U8 => i64s(d.iter().map(|&b| b as i64).collect()),
        other => Err(ModelError::Dtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            dtype: format!("{other:?}"),
        }),
    }
}

/// Reads every tensor of a safetensors file (floats as f32, integers as i64), by name.
///
/// # Errors
/// `Io` if the file cannot be read, `SafeTensors` if it is malformed, `Dtype` for other dtypes.
pub fn read_tensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| st_err(path, format!("{e:?}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = convert(path, &name, &view)?;
        out.insert(name, t);
    }
    Ok(out)
}

/// What a non-strict load skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Model tensors absent from the file (left unchanged).
    pub missing: Vec<String>,
    /// File tensors the model does not have (ignored).
    pub unexpected: Vec<String>,
}

/// Loads a state dict into `model`.
///
/// `strict = true` (PyTorch's default) requires the file's names to equal the model's, except
/// that a missing `*.num_batches_tracked` is accepted and set to 0 (checkpoints from old PyTorch
/// versions, like the pretrained CIFAR ResNet-20, have none; PyTorch's BatchNorm accepts them the
/// same way). `strict = false` loads the intersection and reports the rest. A tensor whose shape
/// differs from the model's is an error either way. Nothing is modified unless the whole load
/// succeeds.
///
/// # Errors
/// `MissingTensors` / `UnexpectedTensors` (strict; all names listed), `ShapeMismatch`, `Dtype`,
/// plus the errors of [`read_tensors`].
pub fn load_safetensors_report(
    model: &mut dyn Model,
    path: impl AsRef<Path>,
    strict: bool,
) -> Result<LoadReport> {
    let path = path.as_ref();
    let mut file = read_tensors(path)?;
    let p = |path: &Path| -> PathBuf { path.to_path_buf() };
    let mut report = LoadReport::default();
    let mut zero_counts = Vec::new();
    // Validate everything before touching the model.
    let expected: Vec<(String, Vec<usize>, bool)> = model
        .state()
        .into_iter()
        .map(|(n, s)| match s {
            StateRef::Param(q) => (n, q.shape().to_vec(), true),
            StateRef::Buffer(BufferRef::F32(a)) => (n, a.shape().to_vec(), true),
            StateRef::Buffer(BufferRef::Count(_)) => (n, vec![], false),
        })
        .collect();
    let mut staged: HashMap<String, Tensor> = HashMap::new();
    for (name, shape, is_float) in &expected {
        let Some(t) = file.remove(name) else {
            if !is_float && name.ends_with("num_batches_tracked") {
                zero_counts.push(name.clone());
            } else {
                report.missing.push(name.clone());
            }
            continue;
        };
        let ok_kind = matches!(
            (&t, is_float),
            (Tensor::F32(_), true) | (Tensor::I64(_), false)
        );
        if !ok_kind {
            let dtype = if *is_float {
                "an integer dtype (a float was expected)"
            } else {
                "a float dtype (an integer was expected)"
            };
            return Err(ModelError::Dtype {
                path: p(path),
                name: name.clone(),
                dtype: dtype.into(),
            });
        }
        // scalars may come as [] or [1]
        let shape_ok = t.shape() == shape.as_slice()
            || (!is_float && t.shape().iter().product::<usize>() == 1);
        if !shape_ok {
            return Err(ModelError::ShapeMismatch {
                path: p(path),
                name: name.clone(),
                expected: shape.clone(),
                found: t.shape().to_vec(),
            });
        }
        staged.insert(name.clone(), t);
    }
    report.unexpected = file.into_keys().collect();
    if strict && !report.missing.is_empty() {
        return Err(ModelError::MissingTensors {
            path: p(path),
            names: report.missing,
        });
    }
    if strict && !report.unexpected.is_empty() {
        return Err(ModelError::UnexpectedTensors {
            path: p(path),
            names: report.unexpected,
        });
    }
    for (name, s) in model.state_mut() {
        let t = staged.remove(&name);
        match (s, t) {
            (StateMut::Param(q), Some(Tensor::F32(a))) => *q.value_mut() = a,
            (StateMut::Buffer(BufferMut::F32(b)), Some(Tensor::F32(a))) => b.assign(
                &a.into_dimensionality::<ndarray::Ix1>()
                    .map_err(|e| st_err(path, e))?,
            ),
            (StateMut::Buffer(BufferMut::Count(c)), Some(Tensor::I64(a))) => {
                *c = a.iter().next().copied().unwrap_or(0).max(0) as u64
            }
            (StateMut::Buffer(BufferMut::Count(c)), None) if zero_counts.contains(&name) => *c = 0,
            _ => {}
        }
    }
    Ok(report)
}

/// Strict or non-strict load of a state dict (see [`load_safetensors_report`]).
pub fn load_safetensors(model: &mut dyn Model, path: impl AsRef<Path>, strict: bool) -> Result<()> {
    load_safetensors_report(model, path, strict).map(|_| ())
}

/// Saves the model's state dict (parameters and BN buffers as F32, `num_batches_tracked` as I64
/// scalars, metadata `arch` and `format = pt`) atomically, by [`atomic_write`].
///
/// # Errors
/// `Io` if the file cannot be written, `SafeTensors` if serialisation fails.
pub fn save_safetensors(model: &dyn Model, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, s) in model.state() {
        let (dtype, shape, bytes) = match s {
            StateRef::Param(q) => (Dtype::F32, q.shape().to_vec(), f32_bytes(q.value().iter())),
            StateRef::Buffer(BufferRef::F32(a)) => {
                (Dtype::F32, a.shape().to_vec(), f32_bytes(a.iter()))
            }
            StateRef::Buffer(BufferRef::Count(c)) => {
                (Dtype::I64, vec![], (c as i64).to_le_bytes().to_vec())
            }
        };
        blobs.push((name, dtype, shape, bytes));
    }
    let mut views = Vec::with_capacity(blobs.len());
    for (name, dtype, shape, bytes) in &blobs {
        let v = TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| st_err(path, format!("{name}: {e:?}")))?;
        views.push((name.as_str(), v));
    }
    let meta: HashMap<String, String> = [
        ("arch".to_string(), model.arch().to_string()),
        ("format".to_string(), "pt".to_string()),
    ]
    .into();
    let data = serialize_sorted(views, Some(meta)).map_err(|e| st_err(path, format!("{e:?}")))?;
    atomic_write(path, &data).map_err(|(path, source)| ModelError::Io { path, source })?;
    Ok(())
}

/// `safetensors::serialize` with the header's keys in sorted order. The crate writes its
/// metadata map in hash order, which changes from process to process, so the same tensors
/// would give different files; every file this project writes goes through here instead, and
/// the same content always gives the same bytes.
///
/// # Errors
/// What `safetensors::serialize` reports.
pub fn serialize_sorted<'a>(
    views: Vec<(impl AsRef<str>, TensorView<'a>)>,
    meta: Option<HashMap<String, String>>,
) -> std::result::Result<Vec<u8>, safetensors::SafeTensorError> {
    let views: Vec<(String, TensorView<'a>)> = views
        .into_iter()
        .map(|(n, v)| (n.as_ref().to_string(), v))
        .collect();
    let raw = safetensors::serialize(views, &meta)?;
    let n = u64::from_le_bytes(raw[..8].try_into().expect("8-byte length")) as usize;
    // Every top-level entry (tensors, `__metadata__`) is an object: sort both levels.
    type Sorted = BTreeMap<String, BTreeMap<String, serde_json::Value>>;
    let header: Sorted =
        serde_json::from_slice(&raw[8..8 + n]).expect("safetensors writes a JSON header");
    let mut h = serde_json::to_vec(&header).expect("a JSON value serialises");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + raw.len() - 8 - n);
    out.extend((h.len() as u64).to_le_bytes());
    out.extend(h);
    out.extend(&raw[8 + n..]);
    Ok(out)
}

/// Writes `bytes` to `path` so that `path` is always either its old content or all of
/// `bytes`, never a torn file, whatever moment the process is killed: the bytes go to a
/// temporary file in the same folder whose name is unique per process and per call
/// (`.<name>.tmp-<pid>-<n>`), are flushed to disk (`fsync`), and the temporary file is then
/// renamed over `path` (atomic on POSIX file systems); the folder is synced afterwards so the
/// rename itself survives a power cut. Every file the project writes for keeps (checkpoints,
/// exports, metrics, weights) goes through here.
///
/// # Errors
/// The I/O error and the path it concerns (the temporary file or `path`); the temporary
/// file is removed on failure.
pub fn atomic_write(
    path: &Path,
    bytes: &[u8],
) -> std::result::Result<(), (PathBuf, std::io::Error)> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        (
            path.to_path_buf(),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{n}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| (tmp.clone(), e))?;
        f.write_all(bytes).map_err(|e| (tmp.clone(), e))?;
        f.sync_all().map_err(|e| (tmp.clone(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| (path.to_path_buf(), e))?;
        // Durability of the rename; a folder that cannot be opened or synced (some file
        // systems) does not make the write itself fail.
        if let Ok(d) = std::fs::File::open(dir) {
            d.sync_all().ok();
        }
        Ok(())
    })();
    if result.is_err() {
        // Best effort: the write error is what the caller needs to see.
        std::fs::remove_file(&tmp).ok();
    }
    result
}

fn f32_bytes<'a>(it: impl Iterator<Item = &'a f32>) -> Vec<u8> {
    // row-major iteration order of ndarray == C order of safetensors
    it.flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;

    /// The same tensors and metadata give the same bytes, whatever order the metadata map
    /// iterates in (each HashMap has its own random hash keys), and the file reads back.
    #[test]
    fn serialize_sorted_is_independent_of_map_order() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let file = |keys: &mut dyn Iterator<Item = usize>| {
            let meta: HashMap<String, String> =
                keys.map(|i| (format!("k{i}"), format!("v{i}"))).collect();
            let v = TensorView::new(Dtype::F32, vec![2], &data).unwrap();
            serialize_sorted(vec![("b", v.clone()), ("a", v)], Some(meta)).unwrap()
        };
        let one = file(&mut (0..40));
        let two = file(&mut (0..40).rev());
        assert_eq!(one, two);
        let st = safetensors::SafeTensors::deserialize(&one).unwrap();
        assert_eq!(st.tensor("a").unwrap().data(), &data);
        let (_, md) = safetensors::SafeTensors::read_metadata(&one).unwrap();
        assert_eq!(md.metadata().as_ref().unwrap()["k7"], "v7");
    }

    /// A killed writer leaves at most a temporary file; the target is the old or the new file.
    #[test]
    fn atomic_write_replaces_whole_files_and_cleans_up_on_error() {
        let d = std::env::temp_dir().join(format!("hla-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("f.bin");
        atomic_write(&p, b"old").unwrap();
        atomic_write(&p, b"new contents").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.bin")]);
        let (path, _) = atomic_write(&d.join("no/such/dir/f.bin"), b"x").unwrap_err();
        assert!(path.to_string_lossy().contains("no/such/dir"));
        std::fs::remove_dir_all(&d).ok();
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hla-models-io-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    fn state_values(m: &dyn Model) -> Vec<(String, Vec<f32>)> {
        m.state()
            .into_iter()
            .map(|(n, s)| {
                let v = match s {
                    StateRef::Param(p) => p.value().iter().copied().collect(),
                    StateRef::Buffer(BufferRef::F32(a)) => a.to_vec(),
                    StateRef::Buffer(BufferRef::Count(c)) => vec![c as f32],
                };
                (n, v)
            })
            .collect()
    }

    #[test]
    fn save_then_load_restores_every_tensor() {
        let mut a = build("resnet20", 10, 1).unwrap();
        // make buffers non-trivial so they are checked too
        for (i, (_, b)) in a.buffers_mut().into_iter().enumerate() {
            match b {
                BufferMut::F32(x) => x.fill(i as f32 * 0.5),
                BufferMut::Count(c) => *c = i as u64,
            }
        }
        let path = tmp("roundtrip.safetensors");
        save_safetensors(a.as_ref(), &path).unwrap();
        let mut b = build("resnet20", 10, 2).unwrap();
        assert_ne!(state_values(a.as_ref()), state_values(b.as_ref()));
        load_safetensors(b.as_mut(), &path, true).unwrap();
        assert_eq!(state_values(a.as_ref()), state_values(b.as_ref()));
        let file = read_tensors(&path).unwrap();
        assert!(
            matches!(file.get("bn1.num_batches_tracked"), Some(Tensor::I64(a)) if a.shape().is_empty())
        );
    }

    #[test]
    fn mismatches_are_named() {
        let a = build("resnet20", 10, 1).unwrap();
        let path = tmp("r20.safetensors");
        save_safetensors(a.as_ref(), &path).unwrap();

        // mis-shaped: other number of classes, strict or not; model left untouched
        let mut c = build("resnet20", 100, 3).unwrap();
        let before = state_values(c.as_ref());
        for strict in [true, false] {
            match load_safetensors(c.as_mut(), &path, strict) {
                Err(ModelError::ShapeMismatch {
                    name,
                    expected,
                    found,
                    ..
                }) => {
                    assert_eq!(
                        (name.as_str(), expected, found),
                        ("linear.weight", vec![100, 64], vec![10, 64])
                    );
                }
                other => panic!("expected ShapeMismatch, got {other:?}"),
            }
        }
        assert_eq!(before, state_values(c.as_ref()));

        // missing: option-B model has projection shortcuts the file lacks
        let mut b = build("resnet20_b", 10, 3).unwrap();
        match load_safetensors(b.as_mut(), &path, true) {
            Err(e @ ModelError::MissingTensors { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("layer2.0.shortcut.0.weight") && msg.contains("r20.safetensors"),
                    "{msg}"
                );
            }
            other => panic!("expected MissingTensors, got {other:?}"),
        }
        let report = load_safetensors_report(b.as_mut(), &path, false).unwrap();
        // 2 shortcuts × (conv weight + BN weight, bias, running_mean, running_var); a missing
        // num_batches_tracked is accepted (set to 0), not reported
        assert_eq!(report.missing.len(), 2 * 5);
        assert!(report.unexpected.is_empty());
        let conv1 = |m: &dyn Model| m.params()[0].1.value().clone();
        assert_eq!(conv1(b.as_ref()), conv1(a.as_ref()));

        // unexpected: the option-B file loaded into an option-A model
        let path_b = tmp("r20b.safetensors");
        save_safetensors(b.as_ref(), &path_b).unwrap();
        let mut d = build("resnet20", 10, 4).unwrap();
        match load_safetensors(d.as_mut(), &path_b, true) {
            Err(ModelError::UnexpectedTensors { names, .. }) => {
                assert_eq!(names.len(), 2 * 6); // now with num_batches_tracked
                assert!(names.contains(&"layer3.0.shortcut.1.running_var".to_string()));
            }
            other => panic!("expected UnexpectedTensors, got {other:?}"),
        }
        load_safetensors(d.as_mut(), &path_b, false).unwrap();
    }

    #[test]
    fn f16_and_missing_counters_load() {
        // a file with F16 values and no num_batches_tracked, like the golden inits / old checkpoints
        let m = build("resnet20", 10, 5).unwrap();
        let mut blobs = Vec::new();
        for (n, s) in m.state() {
            let vals: Vec<f32> = match s {
                StateRef::Param(p) => p.value().iter().copied().collect(),
                StateRef::Buffer(BufferRef::F32(a)) => a.to_vec(),
                StateRef::Buffer(BufferRef::Count(_)) => continue,
            };
            let shape = match s {
                StateRef::Param(p) => p.shape().to_vec(),
                _ => vec![vals.len()],
            };
            let bytes: Vec<u8> = vals
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect();
            blobs.push((n, shape, bytes, vals));
        }
        let views: Vec<_> = blobs
            .iter()
            .map(|(n, s, b, _)| {
                (
                    n.as_str(),
                    TensorView::new(Dtype::F16, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let path = tmp("f16.safetensors");
        std::fs::write(&path, safetensors::serialize(views, &None).unwrap()).unwrap();
        let mut t = build("resnet20", 10, 6).unwrap();
        load_safetensors(t.as_mut(), &path, true).unwrap();
        let loaded = state_values(t.as_ref());
        let mut k = 0;
        for (n, v) in loaded {
            if n.ends_with("num_batches_tracked") {
                assert_eq!(v, vec![0.0]);
                continue;
            }
            let want: Vec<f32> = blobs[k]
                .3
                .iter()
                .map(|&x| half::f16::from_f32(x).to_f32())
                .collect();
            assert_eq!(v, want, "{n}");
            k += 1;
        }
    }

    #[test]
    fn unreadable_files_name_the_file() {
        let mut m = build("resnet20", 10, 0).unwrap();
        let e = load_safetensors(m.as_mut(), "/nonexistent/x.safetensors", true).unwrap_err();
        assert!(
            matches!(e, ModelError::Io { .. })
                && e.to_string().contains("/nonexistent/x.safetensors")
        );
        let path = tmp("garbage.safetensors");
        std::fs::write(&path, b"not a safetensors file at all").unwrap();
        let e = load_safetensors(m.as_mut(), &path, true).unwrap_err();
        assert!(matches!(e, ModelError::SafeTensors { .. }), "{e}");
    }
}
