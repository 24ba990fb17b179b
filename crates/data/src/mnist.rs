//! MNIST IDX reader (raw or gzip-compressed): big-endian header, images magic 2051
//! (`00 00 08 03`, count, rows, cols, then bytes), labels magic 2049 (`00 00 08 01`, count,
//! then bytes).

use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::Array4;

use crate::dataset::ImageSet;
use crate::error::{DataError, Result};

/// Reads a whole file, transparently gunzipping it if it starts with the gzip magic `1F 8B`.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1F, 0x8B]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::BadIdx {
                path: path.to_path_buf(),
                reason: format!("gzip: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IDX3 image file: returns `(count, rows, cols, pixels)`.
///
/// # Errors
/// `BadIdx` for a wrong magic number or a size that disagrees with the header.
pub fn parse_idx_images(b: &[u8], path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let bad = |reason: String| DataError::BadIdx {
        path: path.to_path_buf(),
        reason,
    };
    if b.len() < 16 || be32(b, 0) != 2051 {
        return Err(bad(format!(
            "not an IDX3 image file ({} bytes, need magic 2051)",
            b.len()
        )));
    }
    let (n, r, c) = (
        be32(b, 4) as usize,
        be32(b, 8) as usize,
        be32(b, 12) as usize,
    );
    // Checked: the three u32 header fields can multiply past u64 and wrap to the file size.
    let pixels = n.checked_mul(r).and_then(|x| x.checked_mul(c));
    if pixels != Some(b.len() - 16) {
        return Err(bad(format!(
            "header says {n}×{r}×{c} = {} bytes of pixels, file has {}",
            pixels.map_or("more than can be addressed".to_string(), |p| p.to_string()),
            b.len() - 16
        )));
    }
    Ok((n, r, c, b[16..].to_vec()))
}

/// Parses an IDX1 label file.
///
/// # Errors
/// `BadIdx` for a wrong magic number or a size that disagrees with the header.
pub fn parse_idx_labels(b: &[u8], path: &Path) -> Result<Vec<u8>> {
    let bad = |reason: String| DataError::BadIdx {
        path: path.to_path_buf(),
        reason,
    };
    if b.len() < 8 || be32(b, 0) != 2049 {
        return Err(bad(format!(
            "not an IDX1 label file ({} bytes, need magic 2049)",
            b.len()
        )));
    }
    let n = be32(b, 4) as usize;
    if b.len() != 8 + n {
        return Err(bad(format!(
            "header says {n} labels, file has {}",
            b.len() - 8
        )));
    }
    Ok(b[8..].to_vec())
}

/// Reads an image file and its label file into an [`ImageSet`] `[n, 1, rows, cols]` with
/// classes `"0"`…`"9"`.
///
/// # Errors
/// `Io`, or `BadIdx` naming the file for bad headers, sizes, counts or labels ≥ 10.
pub fn read_idx_pair(images: &Path, labels: &Path) -> Result<ImageSet> {
    let (n, r, c, px) = parse_idx_images(&read_maybe_gz(images)?, images)?;
    let lab = parse_idx_labels(&read_maybe_gz(labels)?, labels)?;
    if lab.len() != n {
        return Err(DataError::BadIdx {
            path: labels.to_path_buf(),
            reason: format!(
                "{} labels but {} has {n} images",
                lab.len(),
                images.display()
            ),
        });
    }
    if let Some(i) = lab.iter().position(|&l| l >= 10) {
        return Err(DataError::BadIdx {
            path: labels.to_path_buf(),
            reason: format!("label {} at {i} is not in 0..10", lab[i]),
        });
    }
    Ok(ImageSet {
        images: Array4::from_shape_vec((n, 1, r, c), px)
            .expect("mnist: sizes checked against the header"),
        labels: lab.into_iter().map(usize::from).collect(),
        classes: (0..10).map(|d| d.to_string()).collect(),
        source: images.display().to_string(),
    })
}

/// MNIST (or Fashion-MNIST: same format) train and test sets.
#[derive(Clone, Debug)]
pub struct Mnist {
    /// `train-images-idx3-ubyte[.gz]` + `train-labels-idx1-ubyte[.gz]`.
    pub train: ImageSet,
    /// `t10k-images-idx3-ubyte[.gz]` + `t10k-labels-idx1-ubyte[.gz]`.
    pub test: ImageSet,
}

impl Mnist {
    /// Loads the four standard files from `dir`, each raw or with a `.gz` suffix.
    ///
    /// # Errors
    /// `Io` naming a missing file; `BadIdx` for a malformed one.
    pub fn load(dir: impl AsRef<Path>) -> Result<Mnist> {
        let dir = dir.as_ref();
        let find = |stem: &str| -> PathBuf {
            let raw = dir.join(stem);
            let gz = dir.join(format!("{stem}.gz"));
            if !raw.is_file() && gz.is_file() {
                gz
            } else {
                raw
            }
        };
        Ok(Mnist {
            train: read_idx_pair(
                &find("train-images-idx3-ubyte"),
                &find("train-labels-idx1-ubyte"),
            )?,
            test: read_idx_pair(
                &find("t10k-images-idx3-ubyte"),
                &find("t10k-labels-idx1-ubyte"),
            )?,
        })
    }
}
