//! Checkpoint files: one safetensors file holding every tensor of a run (weights, BN buffers,
//! optimizer momentum, method state such as Δ̄) plus a JSON run state (phase, epoch, schedule
//! step, data position, Algorithm 1 state) in its metadata, sealed with a SHA-256 over all of it.
//!
//! Files are written atomically (temp file in the same directory, fsync, rename), so a crash or
//! Ctrl-C during a write leaves the previous checkpoint intact. A file whose checksum does not
//! match is reported as corrupt and never loaded.

use crate::error::{Result, TrainError};
use hla_autograd::optim::Sgd;
use hla_models::{BufferMut, BufferRef, Model, StateMut, StateRef};
use ndarray::ArrayD;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Value of `format` in the metadata of every checkpoint.
pub const FORMAT: &str = "hla-checkpoint";
/// Version of the layout below; bumped on incompatible changes.
pub const VERSION: u32 = 1;
/// File name of the latest checkpoint inside a run directory.
pub const LATEST: &str = "checkpoint.safetensors";

/// The data of one stored tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// 32-bit floats (weights, buffers, momentum).
    F32(Vec<f32>),
    /// 64-bit integers (counters such as BN `num_batches_tracked`).
    I64(Vec<i64>),
}

/// A named tensor: shape and row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Data, `shape.iter().product()` elements.
    pub data: TensorData,
}

impl Tensor {
    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Tensor {
            shape,
            data: TensorData::F32(data),
        }
    }

    /// The f32 data, or an error naming the tensor.
    pub fn as_f32(&self, name: &str) -> Result<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Ok(v),
            TensorData::I64(_) => Err(TrainError::Mismatch(format!(
                "checkpoint tensor `{name}` is i64, expected f32"
            ))),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match &self.data {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    fn dtype(&self) -> Dtype {
        match self.data {
            TensorData::F32(_) => Dtype::F32,
            TensorData::I64(_) => Dtype::I64,
        }
    }
}

/// Everything a run needs to continue exactly where it stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    /// Subcommand that wrote it (`train`, `quantize`, `demo`).
    pub command: String,
    /// Phase label, e.g. `fp`, `hla`, `twn`, `ttq`.
    pub phase: String,
    /// SHA-256 of the resolved config: resuming with a different config is refused.
    pub config_digest: String,
    /// Architecture name, checked before any weight is loaded.
    pub arch: String,
    /// Run seed.
    pub seed: u64,
    /// Epochs completed in this phase.
    pub epoch: usize,
    /// Optimizer steps taken in this phase (the LR schedule position).
    pub step: u64,
    /// Batches of epoch `epoch` already consumed (0 at an epoch boundary).
    pub batch_in_epoch: usize,
    /// Whether the phase has finished.
    pub finished: bool,
    /// Number of metric records written so far (a resume drops any later, partial records).
    pub metrics_records: usize,
    /// Method state (Algorithm 1 stage index, thresholds, …) as the method serialises it.
    #[serde(default)]
    pub method_state: serde_json::Value,
    /// Free-form extras (e.g. best accuracy so far).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A checkpoint in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Run state.
    pub state: RunState,
    /// Named tensors (`param/…`, `buffer/…`, `optim/…`, `method/…`).
    pub tensors: BTreeMap<String, Tensor>,
}

fn digest(state_json: &str, tensors: &BTreeMap<String, Tensor>) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(VERSION.to_le_bytes());
    h.update((state_json.len() as u64).to_le_bytes());
    h.update(state_json.as_bytes());
    for (name, t) in tensors {
        // BTreeMap: sorted names, a fixed order.
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update([t.dtype() as u8]);
        h.update((t.shape.len() as u64).to_le_bytes());
        for &d in &t.shape {
            h.update((d as u64).to_le_bytes());
        }
        h.update(t.bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Checkpoint {
    /// Serialises to bytes (safetensors with the state and checksum in its metadata).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        for (name, t) in &self.tensors {
            let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let len = match &t.data {
                TensorData::F32(v) => v.len(),
                TensorData::I64(v) => v.len(),
            };
            if n != Some(len) {
                return Err(TrainError::Mismatch(format!(
                    "checkpoint tensor `{name}`: shape {:?} does not hold the {len} values of its data",
                    t.shape
                )));
            }
        }
        let state_json = serde_json::to_string(&self.state).map_err(|source| TrainError::Json {
            what: "checkpoint run state",
            source,
        })?;
        let sum = digest(&state_json, &self.tensors);
        let bytes: Vec<(String, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.bytes()))
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for ((name, t), (_, b)) in self.tensors.iter().zip(&bytes) {
            let v = TensorView::new(t.dtype(), t.shape.clone(), b)
                .map_err(|e| TrainError::Mismatch(format!("checkpoint tensor `{name}`: {e}")))?;
            views.push((name.clone(), v));
        }
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("version".to_string(), VERSION.to_string());
        meta.insert("state".to_string(), state_json);
        meta.insert("sha256".to_string(), sum);
        hla_models::io::serialize_sorted(views, Some(meta))
            .map_err(|e| TrainError::Mismatch(format!("checkpoint serialisation: {e}")))
    }

    /// Parses and verifies bytes read from `path` (named in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let err = |reason: String| TrainError::checkpoint(path, reason);
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
            err(format!(
                "not a valid checkpoint (corrupt or truncated header: {e})"
            ))
        })?;
        let md = meta
            .metadata()
            .as_ref()
            .ok_or_else(|| err("not an hla checkpoint (no metadata)".into()))?;
        if md.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(err(format!(
                "not an hla checkpoint (format is not `{FORMAT}`)"
            )));
        }
        let version = md.get("version").cloned().unwrap_or_default();
        if version != VERSION.to_string() {
            return Err(err(format!(
                "checkpoint version {version} is not supported (this build reads {VERSION})"
            )));
        }
        let state_json = md
            .get("state")
            .ok_or_else(|| err("checkpoint has no run state".into()))?;
        let stored = md
            .get("sha256")
            .ok_or_else(|| err("checkpoint has no checksum".into()))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| err(format!("corrupt checkpoint: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let t = match view.dtype() {
                Dtype::F32 => TensorData::F32(
                    data.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4-byte chunk")))
                        .collect(),
                ),
                Dtype::I64 => TensorData::I64(
                    data.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                        .collect(),
                ),
                other => {
                    return Err(err(format!(
                        "checkpoint tensor `{name}` has unsupported dtype {other:?}"
                    )))
                }
            };
            tensors.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data: t,
                },
            );
        }
        if &digest(state_json, &tensors) != stored {
            return Err(err(
                "checkpoint is corrupt (SHA-256 checksum mismatch); it was not loaded".into(),
            ));
        }
        let state: RunState = serde_json::from_str(state_json)
            .map_err(|e| err(format!("checkpoint run state unreadable: {e}")))?;
        Ok(Checkpoint { state, tensors })
    }

    /// Reads and verifies a checkpoint file (or `DIR/checkpoint.safetensors` for a run directory).
    pub fn load(path: &Path) -> Result<Self> {
        let file = checkpoint_file(path);
        let bytes =
            std::fs::read(&file).map_err(|e| TrainError::io(&file, "cannot read checkpoint", e))?;
        Self::from_bytes(&bytes, &file)
    }

    /// Writes atomically: temp file beside `path`, fsync, rename over `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        atomic_write(path, &bytes)
    }
}

/// `path` itself if it is a file, else `path/checkpoint.safetensors`.
pub fn checkpoint_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(LATEST)
    } else {
        path.to_path_buf()
    }
}

/// Writes `bytes` to `path` atomically (temp file in the same directory + fsync + rename).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    hla_models::io::atomic_write(path, bytes)
        .map_err(|(p, e)| TrainError::io(&p, "cannot write atomically", e))
}

/// SHA-256 (hex) of the f32 tensors whose names start with `prefix`, in name order: the
/// "final weights hash" that the resume test compares.
pub fn weights_hash(tensors: &BTreeMap<String, Tensor>, prefix: &str) -> String {
    let mut h = Sha256::new();
    for (name, t) in tensors.range(prefix.to_string()..) {
        if !name.starts_with(prefix) {
            break;
        }
        h.update(name.as_bytes());
        h.update(t.bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The model's parameters and buffers as checkpoint tensors (`param/…`, `buffer/…`).
pub fn model_tensors(model: &dyn Model, out: &mut BTreeMap<String, Tensor>) {
    for (name, s) in model.state() {
        let t = match s {
            StateRef::Param(p) => {
                Tensor::f32(p.shape().to_vec(), p.value().iter().copied().collect())
            }
            StateRef::Buffer(BufferRef::F32(a)) => {
                Tensor::f32(a.shape().to_vec(), a.iter().copied().collect())
            }
            StateRef::Buffer(BufferRef::Count(c)) => Tensor {
                shape: vec![],
                data: TensorData::I64(vec![c as i64]),
            },
        };
        let prefix = if matches!(s, StateRef::Param(_)) {
            "param/"
        } else {
            "buffer/"
        };
        out.insert(format!("{prefix}{name}"), t);
    }
}

/// Loads `param/…` and `buffer/…` tensors into the model; every entry must be present with the
/// model's shape (a checkpoint of another architecture is refused before anything changes).
///
/// # Errors
/// `Mismatch` naming the missing or mis-shaped tensor.
pub fn load_model_tensors(model: &mut dyn Model, ck: &Checkpoint) -> Result<()> {
    // Validate first.
    for (name, s) in model.state() {
        let (key, shape) = match s {
            StateRef::Param(p) => (format!("param/{name}"), p.shape().to_vec()),
            StateRef::Buffer(BufferRef::F32(a)) => (format!("buffer/{name}"), a.shape().to_vec()),
            StateRef::Buffer(BufferRef::Count(_)) => (format!("buffer/{name}"), vec![]),
        };
        let t = ck.tensors.get(&key).ok_or_else(|| {
            TrainError::Mismatch(format!("checkpoint has no tensor `{key}` (another model?)"))
        })?;
        if t.shape != shape {
            return Err(TrainError::Mismatch(format!(
                "checkpoint tensor `{key}` has shape {:?}, the model expects {:?}",
                t.shape, shape
            )));
        }
        if let StateRef::Param(_) | StateRef::Buffer(BufferRef::F32(_)) = s {
            t.as_f32(&key)?;
        }
    }
    for (name, s) in model.state_mut() {
        match s {
            StateMut::Param(p) => {
                let key = format!("param/{name}");
                let d = ck.tensors[&key].as_f32(&key)?;
                for (v, &x) in p.value_mut().iter_mut().zip(d) {
                    *v = x;
                }
            }
            StateMut::Buffer(BufferMut::F32(a)) => {
                let key = format!("buffer/{name}");
                let d = ck.tensors[&key].as_f32(&key)?;
                for (v, &x) in a.iter_mut().zip(d) {
                    *v = x;
                }
            }
            StateMut::Buffer(BufferMut::Count(c)) => {
                let key = format!("buffer/{name}");
                if let TensorData::I64(v) = &ck.tensors[&key].data {
                    *c = v.first().copied().unwrap_or(0).max(0) as u64;
                }
            }
        }
    }
    Ok(())
}

/// Momentum buffers as `optim/<position>` tensors (absent = no buffer yet).
pub fn optim_tensors(sgd: &Sgd<f32>, out: &mut BTreeMap<String, Tensor>) {
    for (i, b) in sgd.state().iter().enumerate() {
        if let Some(b) = b {
            out.insert(
                format!("optim/{i:05}"),
                Tensor::f32(b.shape().to_vec(), b.iter().copied().collect()),
            );
        }
    }
}

/// Restores momentum buffers saved by [`optim_tensors`] for `len` parameter positions.
///
/// # Errors
/// `Mismatch` for a malformed buffer; optimizer errors for a count that does not fit.
pub fn load_optim_tensors(sgd: &mut Sgd<f32>, ck: &Checkpoint, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mut bufs = Vec::with_capacity(len);
    for i in 0..len {
        let key = format!("optim/{i:05}");
        bufs.push(match ck.tensors.get(&key) {
            Some(t) => Some(
                ArrayD::from_shape_vec(t.shape.clone(), t.as_f32(&key)?.to_vec())
                    .map_err(|e| TrainError::Mismatch(format!("checkpoint tensor `{key}`: {e}")))?,
            ),
            None => None,
        });
    }
    sgd.load_state(bufs)?;
    Ok(())
}

/// SHA-256 of the model's parameters and buffers, in state-dict order (printed at the end of a
/// run so two runs can be compared for bit-identity).
pub fn model_hash(model: &dyn Model) -> String {
    let mut t = BTreeMap::new();
    model_tensors(model, &mut t);
    weights_hash(&t, "")
}

/// Loads starting weights from `path`: an hla checkpoint file or run directory, or a plain
/// safetensors state dict (torchvision names).
///
/// # Errors
/// `Io` if the file cannot be read; checkpoint or model errors for a bad file.
pub fn load_weights(model: &mut dyn Model, path: &Path) -> Result<()> {
    let file = checkpoint_file(path);
    if !file.exists() {
        return Err(TrainError::checkpoint(
            path,
            "no such checkpoint or weights file",
        ));
    }
    let bytes = std::fs::read(&file).map_err(|e| TrainError::io(&file, "cannot read", e))?;
    if is_checkpoint(&bytes) {
        let ck = Checkpoint::from_bytes(&bytes, &file)?;
        load_model_tensors(model, &ck)
    } else {
        Ok(hla_models::load_safetensors(model, &file, true)?)
    }
}

/// Whether `bytes` is a safetensors file whose metadata says it is an hla checkpoint.
pub fn is_checkpoint(bytes: &[u8]) -> bool {
    safetensors::SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, m)| {
            m.metadata()
                .as_ref()
                .and_then(|md| md.get("format").cloned())
        })
        .is_some_and(|f| f == FORMAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "param/conv1.weight".into(),
            Tensor::f32(vec![2, 3], vec![0.5, -1.0, 2.0, 3.5, 1e-7, -0.0]),
        );
        tensors.insert(
            "buffer/bn1.num_batches_tracked".into(),
            Tensor {
                shape: vec![],
                data: TensorData::I64(vec![42]),
            },
        );
        Checkpoint {
            state: RunState {
                command: "train".into(),
                phase: "fp".into(),
                config_digest: "abc".into(),
                arch: "resnet20".into(),
                seed: 7,
                epoch: 3,
                step: 120,
                batch_in_epoch: 0,
                finished: false,
                metrics_records: 3,
                method_state: serde_json::json!({"stage": 2, "delta": [0.25]}),
                extra: serde_json::Value::Null,
            },
            tensors,
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hla-ckpt-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_is_exact() {
        let d = tmpdir("rt");
        let p = d.join(LATEST);
        let c = sample();
        c.save(&p).unwrap();
        let back = Checkpoint::load(&d).unwrap();
        assert_eq!(c, back);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let bytes = sample().to_bytes().unwrap();
        // Flip one byte at a time across the whole file: every variant must fail to load.
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let r = Checkpoint::from_bytes(&b, Path::new("x"));
            assert!(
                r.is_err(),
                "flipped byte {i} of {} was not detected",
                bytes.len()
            );
        }
        assert!(Checkpoint::from_bytes(&bytes[..bytes.len() - 3], Path::new("x")).is_err());
    }

    #[test]
    fn weights_hash_sees_only_the_prefix() {
        let mut c = sample();
        let a = weights_hash(&c.tensors, "param/");
        c.tensors
            .insert("zzz/other".into(), Tensor::f32(vec![1], vec![1.0]));
        assert_eq!(a, weights_hash(&c.tensors, "param/"));
        c.tensors
            .insert("param/x".into(), Tensor::f32(vec![1], vec![1.0]));
        assert_ne!(a, weights_hash(&c.tensors, "param/"));
    }
}
