//! Per-epoch metric records, appended to `metrics.jsonl` (one JSON object per line, every field)
//! and `metrics.csv` (fixed columns, for spreadsheets and plotting scripts).

use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Statistics of one quantised layer at the end of an epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    /// torchvision layer name.
    pub layer: String,
    /// Fraction of zero ternary weights.
    pub sparsity: f64,
    /// Mean cosine similarity between the rows of W and Ŵ.
    pub cos_sim: f64,
    /// The layer's threshold (Δ, Δ̄_l, TWN/TTQ Δ).
    pub threshold: f64,
    /// Rows with no surviving weight.
    pub empty_rows: usize,
    /// Number of rows (output units) n.
    pub rows: usize,
    /// Number of weights m·n.
    pub weights: usize,
}

/// Table 4's Sim of the current weights at one t: mean cosine between each row and its ternary
/// projection Ternary(W, T(t)).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SimRecord {
    /// t in percent.
    pub t_pct: u32,
    /// Rows normalised to unit length before thresholding (the hyperspherical view).
    pub normalized: f64,
    /// Rows as they are.
    pub raw: f64,
}

/// One evaluation point of a run: the end of an epoch or of a segment of Algorithm 1 (a
/// stage-1 sub-stage, stage 2, a baseline), or the start of a quantize run (`epoch` 0).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// Phase: `fp`, `hyperspherical`, `hla_stage1`, `hla_stage2`, `twn`, `ttq`.
    pub phase: String,
    /// Data epoch of the run in which the record was taken, from 1.
    pub epoch: usize,
    /// Optimizer steps of the run done at this record.
    #[serde(default)]
    pub step: u64,
    /// Progress in epochs (`step` / steps per epoch; fractional at a mid-epoch sub-stage end).
    #[serde(default)]
    pub epochs: f64,
    /// Stage-1 sparsity target t in percent (stage 1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_pct: Option<u32>,
    /// Mean over layers of Δ̄ as initialised at the start of stage 2 (HLA stage 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_bar_start: Option<f64>,
    /// Learning rate at the last step before the record.
    pub lr: f64,
    /// Mean training objective J over the epoch.
    pub train_loss: f64,
    /// Mean cross-entropy part.
    pub train_ce: f64,
    /// Mean λ·L_d part (0 when not used).
    pub train_ld: f64,
    /// Training top-1 accuracy (%), on the augmented batches.
    pub train_top1: f64,
    /// Test top-1 accuracy (%).
    pub test_top1: f64,
    /// Test top-5 accuracy (%).
    pub test_top5: f64,
    /// Overall sparsity of the ternary weights (quantised phases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// Mean cosine similarity W vs Ŵ (quantised phases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cos_sim: Option<f64>,
    /// Mean threshold over layers (Δ in stage 1, mean Δ̄ in stage 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Empty ternary rows over all layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_rows: Option<usize>,
    /// Training throughput (images/s).
    pub images_per_s: f64,
    /// Wall time of the epoch (s), evaluation included.
    pub seconds: f64,
    /// Table 4's Sim at t = 0.5, 0.7, 0.9, 0.95 and `hla.sim_t_pct`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sims: Vec<SimRecord>,
    /// Per-layer statistics (JSONL only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerRecord>,
}

const CSV_HEADER: &str = "phase,epoch,step,epochs,t_pct,lr,train_loss,train_ce,train_ld,train_top1,test_top1,test_top5,sparsity,cos_sim,threshold,empty_rows,images_per_s,seconds";

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

impl EpochRecord {
    fn csv_row(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.3}",
            self.phase,
            self.epoch,
            self.step,
            self.epochs,
            opt(&self.t_pct),
            self.lr,
            self.train_loss,
            self.train_ce,
            self.train_ld,
            self.train_top1,
            self.test_top1,
            self.test_top5,
            opt(&self.sparsity),
            opt(&self.cos_sim),
            opt(&self.threshold),
            opt(&self.empty_rows),
            self.images_per_s,
            self.seconds
        )
    }
}

fn to_json(r: &EpochRecord) -> Result<String> {
    serde_json::to_string(r).map_err(|source| TrainError::Json {
        what: "metrics record",
        source,
    })
}

/// Appends records to `metrics.jsonl` and `metrics.csv` in a run directory, keeping both files
/// in step with the records a checkpoint knows about (a resume drops any written after it).
pub struct MetricsWriter {
    jsonl: PathBuf,
    csv: PathBuf,
    records: Vec<EpochRecord>,
    /// Whether the files are written (false: records kept in memory only, for the ranks of a
    /// data-parallel run other than rank 0).
    write: bool,
}

impl MetricsWriter {
    /// Starts fresh files in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        let w = MetricsWriter {
            jsonl: dir.join("metrics.jsonl"),
            csv: dir.join("metrics.csv"),
            records: Vec::new(),
            write: true,
        };
        w.rewrite()?;
        Ok(w)
    }

    /// [`MetricsWriter::create`], or for `write = false` the same without touching the files.
    ///
    /// # Errors
    /// I/O errors.
    pub fn create_for(dir: &Path, write: bool) -> Result<Self> {
        if write {
            return Self::create(dir);
        }
        Ok(MetricsWriter {
            jsonl: dir.join("metrics.jsonl"),
            csv: dir.join("metrics.csv"),
            records: Vec::new(),
            write: false,
        })
    }

    /// [`MetricsWriter::resume`], or for `write = false` the records only.
    ///
    /// # Errors
    /// As [`MetricsWriter::resume`].
    pub fn resume_for(dir: &Path, keep: usize, write: bool) -> Result<Self> {
        if write {
            return Self::resume(dir, keep);
        }
        Ok(MetricsWriter {
            jsonl: dir.join("metrics.jsonl"),
            csv: dir.join("metrics.csv"),
            records: Self::resume_read(dir, keep)?,
            write: false,
        })
    }

    /// Re-opens the files of an interrupted run, keeping only its first `keep` records (those
    /// covered by the checkpoint being resumed).
    pub fn resume(dir: &Path, keep: usize) -> Result<Self> {
        let w = MetricsWriter {
            jsonl: dir.join("metrics.jsonl"),
            csv: dir.join("metrics.csv"),
            records: Self::resume_read(dir, keep)?,
            write: true,
        };
        w.rewrite()?;
        Ok(w)
    }

    /// The first `keep` records of `dir/metrics.jsonl` (those a checkpoint knows about).
    ///
    /// # Errors
    /// `Checkpoint` if the file holds fewer or malformed records.
    pub fn resume_read(dir: &Path, keep: usize) -> Result<Vec<EpochRecord>> {
        let jsonl = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&jsonl).unwrap_or_default();
        let mut records = Vec::new();
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            if i >= keep {
                break;
            }
            records.push(
                serde_json::from_str(line)
                    .map_err(|e| TrainError::checkpoint(&jsonl, format!("line {}: {e}", i + 1)))?,
            );
        }
        if records.len() < keep {
            return Err(TrainError::checkpoint(
                &jsonl,
                format!(
                    "holds {} records but the checkpoint expects {keep}",
                    records.len()
                ),
            ));
        }
        Ok(records)
    }

    fn rewrite(&self) -> Result<()> {
        let mut j = String::new();
        let mut c = String::from(CSV_HEADER);
        c.push('\n');
        for r in &self.records {
            j.push_str(&to_json(r)?);
            j.push('\n');
            c.push_str(&r.csv_row());
            c.push('\n');
        }
        // Atomic: a run killed here keeps the previous complete files.
        crate::checkpoint::atomic_write(&self.jsonl, j.as_bytes())?;
        crate::checkpoint::atomic_write(&self.csv, c.as_bytes())
    }

    /// Appends one record to both files.
    pub fn push(&mut self, r: EpochRecord) -> Result<()> {
        if !self.write {
            self.records.push(r);
            return Ok(());
        }
        let append = |p: &Path, line: String| -> Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .map_err(|e| TrainError::io(p, "cannot open", e))?;
            writeln!(f, "{line}").map_err(|e| TrainError::io(p, "cannot write", e))
        };
        append(&self.jsonl, to_json(&r)?)?;
        append(&self.csv, r.csv_row())?;
        self.records.push(r);
        Ok(())
    }

    /// All records so far.
    pub fn records(&self) -> &[EpochRecord] {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_drops_records_after_the_checkpoint() {
        let d = std::env::temp_dir().join(format!("hla-metrics-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let mut w = MetricsWriter::create(&d).unwrap();
        for e in 1..=3 {
            w.push(EpochRecord {
                phase: "fp".into(),
                epoch: e,
                test_top1: e as f64,
                ..Default::default()
            })
            .unwrap();
        }
        let w2 = MetricsWriter::resume(&d, 2).unwrap();
        assert_eq!(w2.records().len(), 2);
        let csv = std::fs::read_to_string(d.join("metrics.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3, "{csv}");
        assert!(csv.starts_with("phase,epoch,"));
        let jl = std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
        assert_eq!(jl.lines().count(), 2);
        assert!(MetricsWriter::resume(&d, 5).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
