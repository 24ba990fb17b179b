//! 2-bit packed ternary export (safetensors) and its loader.
//!
//! # File format `hla-ternary-v1`
//! One safetensors file. For every quantised weight tensor named `<w>` (the model's parameter
//! name, e.g. `layer1.0.conv1.weight`, original shape `[n, ...]`, N elements):
//! - `<w>.ternary_codes` — dtype **U8**, shape `[⌈N/4⌉]`: the codes w̄ of the flattened tensor
//!   (row-major, i.e. row j = output unit j occupies elements `j·m .. (j+1)·m`), four per byte,
//!   element k in bits `2·(k mod 4) .. 2·(k mod 4)+1` of byte `k / 4` (little-endian within the
//!   byte). Code `0b00` = 0, `0b01` = +1, `0b10` = −1; `0b11` is invalid. Pad bits are 0.
//! - `<w>.ternary_alpha` — dtype **F32**, shape `[n]`: the per-row scale α_j (the value of +1).
//! - `<w>.ternary_alpha_neg` — dtype **F32**, shape `[n]`, optional: the magnitude of −1 when it
//!   differs from α_j (TTQ's W^n); absent means symmetric.
//!
//! The weight's original shape is stored in the header metadata under `shape.<w>` as
//! comma-separated integers. Every other tensor (non-quantised weights, biases, BN parameters and
//! running statistics) is stored under its own name as **F32**, integer buffers (e.g.
//! `num_batches_tracked`) as **I64**. Metadata `format` = `hla-ternary-v1`, plus free-form keys
//! (e.g. `method`). Dequantisation gives ŵ = α_j·w̄ (+1), −α_neg_j (−1), 0 — bit-identical to the
//! fake-quantised f32 weights, since α is stored in f32.
//!
//! Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).

use crate::error::{HlaError, Result};
use crate::real::{rows_shape, Real};
use crate::ternary::TernaryRows;
use ndarray::ArrayD;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};

/// Format tag stored in the metadata.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
pub const FORMAT: &str = "hla-ternary-v1";

/// Packs ternary codes (−1, 0, +1) four per byte (see the module doc).
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
///
/// # Errors
/// `Format` if a code is not in {−1, 0, 1}.
pub fn pack_codes(codes: impl IntoIterator<Item = i8>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (k, c) in codes.into_iter().enumerate() {
        let bits: u8 = match c {
            0 => 0b00,
            1 => 0b01,
            -1 => 0b10,
            other => {
                return Err(HlaError::Format {
                    path: "<pack_codes>".into(),
                    reason: format!("code {other} at {k} is not ternary"),
                })
            }
        };
        if k % 4 == 0 {
            out.push(0);
        }
        *out.last_mut().expect("pushed above") |= bits << (2 * (k % 4));
    }
    Ok(out)
}

/// Unpacks `len` codes from `bytes`.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
///
/// # Errors
/// `Format` if `bytes` is too short or holds the invalid code `0b11`.
pub fn unpack_codes(bytes: &[u8], len: usize) -> Result<Vec<i8>> {
    if bytes.len() != len.div_ceil(4) {
        return Err(HlaError::Format {
            path: "<unpack_codes>".into(),
            reason: format!(
                "{} bytes for {len} codes (want {})",
                bytes.len(),
                len.div_ceil(4)
            ),
        });
    }
    let mut out = Vec::with_capacity(len);
    for k in 0..len {
        out.push(match (bytes[k / 4] >> (2 * (k % 4))) & 0b11 {
            0b00 => 0,
            0b01 => 1,
            0b10 => -1,
            _ => {
                return Err(HlaError::Format {
                    path: "<unpack_codes>".into(),
                    reason: format!("invalid code 0b11 at element {k}"),
                })
            }
        });
    }
    Ok(out)
}

/// One quantised weight in packed form.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedLayer {
    /// Parameter name of the weight.
    pub name: String,
    /// Original weight shape `[n, ...]`.
    pub shape: Vec<usize>,
    /// Packed codes, `⌈N/4⌉` bytes.
    pub codes: Vec<u8>,
    /// α per row, `[n]`.
    pub alpha: Vec<f32>,
    /// Magnitude of −1 per row when asymmetric (TTQ).
    pub alpha_neg: Option<Vec<f32>>,
}

impl PackedLayer {
    /// Packs a ternarised weight (codes `[n, m]`, α `[n]`) with its original `shape`.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    ///
    /// # Errors
    /// `ShapeMismatch` if `shape` does not match the codes.
    pub fn from_ternary<F: Real>(name: &str, shape: &[usize], t: &TernaryRows<F>) -> Result<Self> {
        let (n, m) = rows_shape("export", shape)?;
        if t.codes.dim() != (n, m) {
            return Err(HlaError::ShapeMismatch {
                op: "export",
                lhs: shape.to_vec(),
                rhs: vec![t.codes.nrows(), t.codes.ncols()],
            });
        }
        Ok(Self {
            name: name.to_string(),
            shape: shape.to_vec(),
            codes: pack_codes(t.codes.iter().copied())?,
            alpha: t
                .alpha
                .iter()
                .map(|&a| crate::real::to_f64(a) as f32)
                .collect(),
            alpha_neg: None,
        })
    }

    /// Packs an arbitrary fake-quantised tensor whose rows hold at most one positive and one
    /// negative value each (HLA, TWN, TTQ all qualify): +a → +1 with α = a, −b → −1 with α_neg = b.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    ///
    /// # Errors
    /// `Format` if a row has two different positive (or negative) values; `BadRank` for rank < 2.
    pub fn from_dequantized(name: &str, what: &ArrayD<f32>) -> Result<Self> {
        let shape = what.shape().to_vec();
        let (n, m) = rows_shape("export", &shape)?;
        let flat: Vec<f32> = what.iter().copied().collect();
        let mut alpha = vec![0f32; n];
        let mut alpha_neg = vec![0f32; n];
        let mut codes = Vec::with_capacity(n * m);
        for j in 0..n {
            let (mut p, mut q) = (None::<f32>, None::<f32>);
            for &v in &flat[j * m..(j + 1) * m] {
                let slot = if v > 0.0 {
                    codes.push(1);
                    &mut p
                } else if v < 0.0 {
                    codes.push(-1);
                    &mut q
                } else {
                    codes.push(0);
                    continue;
                };
                match slot {
                    None => *slot = Some(v.abs()),
                    Some(a) if *a == v.abs() => {}
                    Some(a) => {
                        return Err(HlaError::Format {
                            path: name.to_string(),
                            reason: format!("row {j} is not ternary: {a} and {}", v.abs()),
                        })
                    }
                }
            }
            // a row with only one sign reuses its magnitude for the other (keeps it symmetric)
            let a = p.or(q).unwrap_or(0.0);
            alpha[j] = p.unwrap_or(a);
            alpha_neg[j] = q.unwrap_or(a);
        }
        let symmetric = alpha == alpha_neg;
        Ok(Self {
            name: name.to_string(),
            shape,
            codes: pack_codes(codes)?,
            alpha,
            alpha_neg: if symmetric { None } else { Some(alpha_neg) },
        })
    }

    /// Number of weights (saturating at `usize::MAX` for a shape too large to exist, which no
    /// code buffer can then satisfy; [`PackedModel::from_bytes`] rejects such shapes).
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// Bytes of the packed form (codes + scales).
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    pub fn packed_bytes(&self) -> usize {
        self.codes.len() + 4 * self.alpha.len() + self.alpha_neg.as_ref().map_or(0, |a| 4 * a.len())
    }

    /// The codes w̄ as `[n, m]` row-major `i8`.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    ///
    /// # Errors
    /// `Format` for a malformed code buffer.
    pub fn codes_i8(&self) -> Result<Vec<i8>> {
        unpack_codes(&self.codes, self.numel()).map_err(|e| match e {
            HlaError::Format { reason, .. } => HlaError::Format {
                path: self.name.clone(),
                reason,
            },
            e => e,
        })
    }

    /// Ŵ in f32 with the original shape.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    ///
    /// # Errors
    /// `Format` for malformed codes or scales.
    pub fn dequantize(&self) -> Result<ArrayD<f32>> {
        let (n, m) = rows_shape("dequantize", &self.shape)?;
        if self.alpha.len() != n || self.alpha_neg.as_ref().is_some_and(|a| a.len() != n) {
            return Err(HlaError::Format {
                path: self.name.clone(),
                reason: format!("{} scales for {n} rows", self.alpha.len()),
            });
        }
        let codes = self.codes_i8()?;
        let mut out = Vec::with_capacity(n * m);
        for j in 0..n {
            let a = self.alpha[j];
            let b = self.alpha_neg.as_ref().map_or(a, |v| v[j]);
            out.extend(codes[j * m..(j + 1) * m].iter().map(|&c| match c {
                1 => a,
                -1 => -b,
                _ => 0.0,
            }));
        }
        Ok(ArrayD::from_shape_vec(self.shape.clone(), out).expect("n·m elements"))
    }
}

/// A whole model in packed form: quantised layers plus dense f32 / i64 tensors and metadata.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedModel {
    /// Quantised weights.
    pub layers: Vec<PackedLayer>,
    /// Everything else in f32, by name.
    pub dense: BTreeMap<String, ArrayD<f32>>,
    /// Integer buffers (e.g. `num_batches_tracked`), by name.
    pub ints: BTreeMap<String, ArrayD<i64>>,
    /// Free-form metadata (the `format` and `shape.*` keys are managed here).
    pub metadata: BTreeMap<String, String>,
}

/// Sizes of the quantised layers: f32 bytes vs packed bytes.
///
/// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SizeReport {
    /// 4 · Σ N_l.
    pub f32_bytes: usize,
    /// Σ (codes + scales) bytes.
    pub packed_bytes: usize,
    /// f32_bytes / packed_bytes.
    pub ratio: f64,
}

fn le_bytes_f32(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

impl PackedModel {
    /// Size of the quantised layers, f32 vs packed.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    pub fn size_report(&self) -> SizeReport {
        let f32_bytes: usize = self.layers.iter().map(|l| 4 * l.numel()).sum();
        let packed_bytes: usize = self.layers.iter().map(|l| l.packed_bytes()).sum();
        SizeReport {
            f32_bytes,
            packed_bytes,
            ratio: f32_bytes as f64 / packed_bytes.max(1) as f64,
        }
    }

    /// Serialises to safetensors bytes (format in the module doc).
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    ///
    /// # Errors
    /// `Safetensors` on serialisation failure (e.g. a duplicate name).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut meta: HashMap<String, String> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        meta.insert("format".into(), FORMAT.into());
        for l in &self.layers {
            let shape = l
                .shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",");
            meta.insert(format!("shape.{}", l.name), shape);
            bufs.push((
                format!("{}.ternary_codes", l.name),
                Dtype::U8,
                vec![l.codes.len()],
                l.codes.clone(),
            ));
            bufs.push((
                format!("{}.ternary_alpha", l.name),
                Dtype::F32,
                vec![l.alpha.len()],
                le_bytes_f32(l.alpha.iter().copied()),
            ));
            if let Some(a) = &l.alpha_neg {
                bufs.push((
                    format!("{}.ternary_alpha_neg", l.name),
                    Dtype::F32,
                    vec![a.len()],
                    le_bytes_f32(a.iter().copied()),
                ));
            }
        }
        for (k, v) in &self.dense {
            bufs.push((
                k.clone(),
                Dtype::F32,
                v.shape().to_vec(),
                le_bytes_f32(v.iter().copied()),
            ));
        }
        for (k, v) in &self.ints {
            bufs.push((
                k.clone(),
                Dtype::I64,
                v.shape().to_vec(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
        let mut views = Vec::with_capacity(bufs.len());
        for (name, dt, shape, data) in &bufs {
            let tv = TensorView::new(*dt, shape.clone(), data).map_err(|source| {
                HlaError::Safetensors {
                    path: name.clone(),
                    source,
                }
            })?;
            views.push((name.clone(), tv));
        }
        hla_models::io::serialize_sorted(views, Some(meta)).map_err(|source| {
            HlaError::Safetensors {
                path: "<memory>".into(),
                source,
            }
        })
    }

    /// Parses safetensors bytes written by [`PackedModel::to_bytes`].
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    ///
    /// # Errors
    /// `Safetensors` / `Format` naming `path` and what is wrong.
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Self> {
        let st_err = |source| HlaError::Safetensors {
            path: path.to_string(),
            source,
        };
        let fmt = |reason: String| HlaError::Format {
            path: path.to_string(),
            reason,
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(st_err)?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(fmt(format!(
                "metadata format is {:?}, want {FORMAT:?}",
                meta.get("format")
            )));
        }
        let st = SafeTensors::deserialize(bytes).map_err(st_err)?;
        let mut out = PackedModel::default();
        let mut names: Vec<String> = st.names().into_iter().cloned().collect();
        names.sort();
        let f32s = |tv: &TensorView<'_>, name: &str| -> Result<Vec<f32>> {
            if tv.dtype() != Dtype::F32 {
                return Err(fmt(format!("{name}: dtype {:?}, want F32", tv.dtype())));
            }
            Ok(tv
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        for name in &names {
            let tv = st.tensor(name).map_err(st_err)?;
            if let Some(w) = name.strip_suffix(".ternary_codes") {
                if tv.dtype() != Dtype::U8 {
                    return Err(fmt(format!("{name}: dtype {:?}, want U8", tv.dtype())));
                }
                let shape_s = meta
                    .get(&format!("shape.{w}"))
                    .ok_or_else(|| fmt(format!("no shape.{w} metadata")))?;
                let shape = shape_s
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| fmt(format!("shape.{w} = {shape_s:?}: {e}")))?;
                let (n, m) = rows_shape("read packed layer", &shape)
                    .map_err(|e| fmt(format!("{name}: shape.{w} = {shape_s:?}: {e}")))?;
                let numel = n * m; // checked by rows_shape
                if tv.data().len() != numel.div_ceil(4) {
                    return Err(fmt(format!(
                        "{name}: {} code bytes for shape {shape:?} ({numel} weights need {})",
                        tv.data().len(),
                        numel.div_ceil(4)
                    )));
                }
                let alpha_name = format!("{w}.ternary_alpha");
                let at = st.tensor(&alpha_name).map_err(st_err)?;
                let alpha = f32s(&at, &alpha_name)?;
                let neg_name = format!("{w}.ternary_alpha_neg");
                let alpha_neg = match st.tensor(&neg_name) {
                    Ok(t) => Some(f32s(&t, &neg_name)?),
                    Err(_) => None,
                };
                let layer = PackedLayer {
                    name: w.to_string(),
                    shape,
                    codes: tv.data().to_vec(),
                    alpha,
                    alpha_neg,
                };
                layer.dequantize()?; // validates codes and scale lengths
                out.layers.push(layer);
            } else if name.ends_with(".ternary_alpha") || name.ends_with(".ternary_alpha_neg") {
                continue;
            } else {
                match tv.dtype() {
                    Dtype::F32 => {
                        let v = f32s(&tv, name)?;
                        out.dense.insert(
                            name.clone(),
                            ArrayD::from_shape_vec(tv.shape().to_vec(), v)
                                .map_err(|e| fmt(format!("{name}: {e}")))?,
                        );
                    }
                    Dtype::I64 => {
                        let v: Vec<i64> = tv
                            .data()
                            .chunks_exact(8)
                            .map(|c| i64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                            .collect();
                        out.ints.insert(
                            name.clone(),
                            ArrayD::from_shape_vec(tv.shape().to_vec(), v)
                                .map_err(|e| fmt(format!("{name}: {e}")))?,
                        );
                    }
                    d => return Err(fmt(format!("{name}: unsupported dtype {d:?}"))),
                }
            }
        }
        for (k, v) in meta {
            if k != "format" && !k.starts_with("shape.") {
                out.metadata.insert(k, v);
            }
        }
        Ok(out)
    }

    /// Writes the file atomically ([`hla_models::io::atomic_write`]: unique temp file, fsync,
    /// rename): a killed export never leaves a torn file under `path`.
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    ///
    /// # Errors
    /// `Io` / `Safetensors`.
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        hla_models::io::atomic_write(path, &bytes).map_err(|(p, source)| HlaError::Io {
            path: p.display().to_string(),
            source,
        })
    }

    /// Reads a file written by [`PackedModel::write`].
    ///
    /// Guide: [Alg. 1 line 21](crate::guide#alg1-line-21).
    ///
    /// # Errors
    /// `Io` / `Safetensors` / `Format`.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| HlaError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EmptyRow;
    use crate::ternary::ternarize_rows;
    use crate::testutil::t1_w;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    /// A crafted `shape.<w>` whose element count wraps around usize to the true count (2·4)
    /// used to pass every length check and panic in `dequantize`; now it is a clean error, as
    /// is a shape whose count disagrees with the code bytes.
    #[test]
    fn crafted_wrapping_shape_is_rejected_not_a_panic() {
        let w: Array2<f32> = t1_w().into_dimensionality().unwrap();
        let t = ternarize_rows(w.view(), 4.0 / 11.0, EmptyRow::Zero);
        let good = PackedLayer::from_ternary("l.weight", &[2, 4], &t).unwrap();
        let (a, b) = ((1usize << 32) + 1, (1usize << 32) - 1); // a·b ≡ −1 (mod 2^64)
        let wrapping = vec![2, a, b, a, b, 4];
        assert_eq!(wrapping.iter().fold(1usize, |x, &d| x.wrapping_mul(d)), 8);
        for (shape, needle) in [
            (wrapping, "more elements than can be addressed"),
            (vec![2, 8], "2 code bytes for shape [2, 8]"),
            (vec![2, 0], "code bytes"),
        ] {
            let mut pm = PackedModel::default();
            pm.layers.push(PackedLayer {
                shape,
                ..good.clone()
            });
            let bytes = pm.to_bytes().unwrap();
            let e = PackedModel::from_bytes(&bytes, "crafted.ternary.safetensors").unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with("crafted.ternary.safetensors: l.weight.ternary_codes")
                    && msg.contains(needle),
                "{msg}"
            );
        }
        assert!(rows_shape("t", &[usize::MAX, 2]).is_err());
        assert_eq!(
            PackedLayer {
                shape: vec![usize::MAX, 2],
                ..good
            }
            .numel(),
            usize::MAX
        );
    }

    #[test]
    fn pack_unpack_round_trip_and_bit_layout() {
        let codes = [1i8, -1, 0, 1, -1];
        let p = pack_codes(codes).unwrap();
        assert_eq!(p, vec![0b01_00_10_01, 0b10]);
        assert_eq!(unpack_codes(&p, 5).unwrap(), codes.to_vec());
        assert!(unpack_codes(&[0b11], 1).is_err());
        assert!(unpack_codes(&[0], 5).is_err());
        assert!(pack_codes([2i8]).is_err());
    }

    #[test]
    fn t5_packed_layer_dequantizes_exactly_and_file_round_trip() {
        let w: Array2<f32> = t1_w().into_dimensionality().unwrap();
        let t = ternarize_rows(w.view(), 4.0 / 11.0, EmptyRow::Zero);
        let l = PackedLayer::from_ternary("l.weight", &[2, 1, 2, 2], &t).unwrap();
        let dq = l.dequantize().unwrap();
        assert_eq!(dq.as_slice().unwrap(), t.dequantize().as_slice().unwrap());
        assert_eq!(l.codes_i8().unwrap(), vec![1, 0, 0, 0, 0, 1, -1, 0]);
        // from the dequantised form: same packing
        assert_eq!(PackedLayer::from_dequantized("l.weight", &dq).unwrap(), l);
        let mut pm = PackedModel::default();
        pm.layers.push(l);
        // an asymmetric (TTQ-like) layer
        let ttq =
            ArrayD::from_shape_vec(vec![2, 3], vec![1.2f32, -0.8, 0.0, 0.0, 1.2, -0.8]).unwrap();
        let lt = PackedLayer::from_dequantized("t.weight", &ttq).unwrap();
        assert_eq!(lt.alpha, vec![1.2, 1.2]);
        assert_eq!(lt.alpha_neg, Some(vec![0.8, 0.8]));
        assert_eq!(lt.dequantize().unwrap(), ttq);
        pm.layers.push(lt);
        pm.dense
            .insert("fc.weight".into(), ArrayD::from_elem(vec![2, 3], 0.5));
        pm.ints.insert(
            "bn.num_batches_tracked".into(),
            ArrayD::from_elem(vec![], 7),
        );
        pm.metadata.insert("method".into(), "hla".into());
        let bytes = pm.to_bytes().unwrap();
        let back = PackedModel::from_bytes(&bytes, "mem").unwrap();
        let mut want = pm.clone();
        want.layers.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, want);
        // not ternary → error
        let bad = ArrayD::from_shape_vec(vec![1, 2], vec![1.0f32, 2.0]).unwrap();
        assert!(PackedLayer::from_dequantized("b", &bad).is_err());
        // wrong format tag → error
        let plain =
            safetensors::tensor::serialize(Vec::<(String, TensorView<'_>)>::new(), &None).unwrap();
        assert!(PackedModel::from_bytes(&plain, "plain").is_err());
    }

    /// A 3×3 conv with 16 input channels (m = 144, CIFAR ResNet's smallest) is ≥ 14× smaller.
    #[test]
    fn size_ratio_at_least_14x() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let w = Array2::from_shape_fn((16, 144), |_| rng.random_range(-1.0f32..1.0));
        let t = ternarize_rows(w.view(), 0.5, EmptyRow::Zero);
        let l = PackedLayer::from_ternary("c.weight", &[16, 16, 3, 3], &t).unwrap();
        let pm = PackedModel {
            layers: vec![l],
            ..Default::default()
        };
        let r = pm.size_report();
        assert_eq!(r.f32_bytes, 16 * 144 * 4);
        assert_eq!(r.packed_bytes, 16 * 144 / 4 + 16 * 4);
        assert!(r.ratio >= 14.0, "{}", r.ratio);
    }
}
