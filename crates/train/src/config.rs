//! The run configuration: one struct per TOML section (`[model]`, `[data]`, `[train]`,
//! `[quantize]`, `[hla]`, `[report]`), each validated in one place, by its own `validate`.
//!
//! Parsing files and `--set` overrides, and naming the line a bad value came from, is the
//! caller's business (the `hla` CLI): a [`RangeError`] names the dotted key, which is enough to
//! find the source. Every method knob of `docs/method.md` section 15 is a field of
//! [`hla_core::HlaConfig`] with the documented default, so an auditor switches one ambiguity by
//! editing one line.

use crate::error::RangeError;
use hla_core::config::{Domain, NumericKnob};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// Network architecture (names as `hla_models::build` takes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// CIFAR ResNet-8 (He et al. 2016 family, 1 block per stage): for demos and tests.
    Resnet8,
    /// CIFAR ResNet-14.
    Resnet14,
    /// CIFAR ResNet-20 (16/32/64 channels).
    Resnet20,
    /// CIFAR ResNet-32.
    Resnet32,
    /// CIFAR ResNet-44.
    Resnet44,
    /// CIFAR ResNet-56.
    Resnet56,
    /// torchvision ResNet-18.
    Resnet18,
    /// torchvision ResNet-34.
    Resnet34,
    /// torchvision ResNet-50.
    Resnet50,
    /// torchvision MobileNetV2 (width 1.0).
    MobilenetV2,
}

impl Arch {
    /// The name `hla_models::build` understands.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet8 => "resnet8",
            Arch::Resnet14 => "resnet14",
            Arch::Resnet20 => "resnet20",
            Arch::Resnet32 => "resnet32",
            Arch::Resnet44 => "resnet44",
            Arch::Resnet56 => "resnet56",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::MobilenetV2 => "mobilenet_v2",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[model]`: which network and where its starting weights come from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Number of classes of the classifier (10 for CIFAR-10, 1000 for ImageNet).
    pub num_classes: usize,
    /// Optional pretrained full-precision weights (safetensors, torchvision parameter names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PathBuf>,
}

/// Dataset format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// CIFAR-10 binary batches (`data_batch_*.bin`, `test_batch.bin`) in `root`.
    Cifar10,
    /// ImageNet-layout JPEG folders `root/train/<class>/*.JPEG`, `root/val/<class>/*.JPEG`.
    Imagefolder,
}

/// What to do with an undecodable image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BadImagePolicy {
    /// Stop with an error naming the file.
    Error,
    /// Skip it and count a warning.
    Skip,
}

/// `[data]`: where the images are and how they are batched.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset format.
    pub format: DataFormat,
    /// Dataset root; a relative path is taken relative to the working directory.
    pub root: PathBuf,
    /// Use only the first N training samples (class-balanced subsets are made by the data files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// Use only the first N test samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_limit: Option<usize>,
    /// Training minibatch size (paper: 256).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Evaluation minibatch size.
    #[serde(default = "d_eval_batch")]
    pub eval_batch_size: usize,
    /// Training augmentation (CIFAR: pad-4 random crop + flip; ImageNet: RandomResizedCrop + flip).
    #[serde(default = "d_true")]
    pub augment: bool,
    /// ImageNet crop size (224).
    #[serde(default = "d_image_size")]
    pub image_size: usize,
    /// ImageNet evaluation resize of the shorter side before the centre crop (256).
    #[serde(default = "d_resize")]
    pub resize: usize,
    /// Optional ImageNet class-index file (wnid → index) so a subset keeps the 1000-class indices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_index: Option<PathBuf>,
    /// Undecodable images: `error` (default) or `skip`.
    #[serde(default = "d_bad_image")]
    pub on_bad_image: BadImagePolicy,
    /// Drop the last incomplete training batch.
    #[serde(default = "d_true")]
    pub drop_last: bool,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant learning rate.
    Constant,
    /// One cosine decay over the whole phase.
    Cosine,
    /// Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2016): the paper's choice.
    Sgdr,
}

/// What `hla train` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrainMode {
    /// Plain full-precision network.
    Fp,
    /// Hyperspherical layers (w = v/‖v‖, input normalisation), no L_d: Table 4 "Hypersphere".
    Hyperspherical,
}

/// `[train]`: the full-precision (or hyperspherical) training phase.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `fp` or `hyperspherical`.
    #[serde(default = "d_train_mode")]
    pub mode: TrainMode,
    /// Epochs of training.
    #[serde(default = "d_train_epochs")]
    pub epochs: usize,
    /// Learning rate for this phase (defaults to `hla.lr`). From-scratch training of a small
    /// CIFAR network needs a larger one than the paper's fine-tuning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Learning-rate schedule of this phase: `cosine` (default), `sgdr` (period
    /// `hla.sgdr_t0_epochs`) or `constant`.
    #[serde(default = "d_train_schedule")]
    pub schedule: Schedule,
    /// Label smoothing of the cross-entropy in this phase (0 = none).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Data-parallel runs (`hla train` and `hla quantize` under `mpirun`): BatchNorm statistics
    /// of the global batch, reduced across the ranks in the single-process order, so the run is
    /// bit-identical to one process (`true`); `false` normalises with each rank's own slice
    /// (PyTorch DDP's default: no transfer in the forward pass, a different result, per-rank
    /// running statistics of which rank 0's are saved).
    #[serde(default = "d_true", skip_serializing_if = "is_true")]
    pub sync_bn: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// `[quantize]`: which method `hla quantize` runs and from where.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizeConfig {
    /// Start from this checkpoint file or run directory (its weights only); absent = from
    /// `model.pretrained`, or from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    /// Epochs of FP / TWN / TTQ training (default: `hla.stage2_epochs`, the same budget as
    /// stage 2); may be fractional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_epochs: Option<f64>,
    /// Run only stage 2 of HLA, continuing the finished stage-1 run in this directory (a run
    /// with `hla.stage2_epochs = 0` and the same stage-1 settings): several stage-2 variants
    /// share one stage 1, each bit-identical to an uninterrupted run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage1_from: Option<PathBuf>,
}

/// `[hla]`: every knob of the method (spec section 15, ambiguities A1–A27) with its
/// documented default, plus the optimiser of the quantisation phases (paper section 10.1) and
/// the TWN / TTQ thresholds: exactly the knobs struct of crates/hla, so no knob can be missing.
pub type HlaKnobs = hla_core::HlaConfig;

/// `[report]`: what the report and plots show.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Layer whose weight histogram is plotted (Figure 1); empty = a middle quantised layer.
    #[serde(default)]
    pub histogram_layer: String,
    /// Write PNG plots and report.md.
    #[serde(default = "d_true")]
    pub plots: bool,
}

/// A whole experiment.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Run name (used for the default output directory `runs/<name>`).
    #[serde(default = "d_name")]
    pub name: String,
    /// Master seed: initialisation, data order and augmentation all derive from it.
    #[serde(default)]
    pub seed: u64,
    /// `[model]`.
    pub model: ModelConfig,
    /// `[data]`.
    pub data: DataConfig,
    /// `[train]`.
    #[serde(default)]
    pub train: TrainConfig,
    /// `[quantize]`.
    #[serde(default)]
    pub quantize: QuantizeConfig,
    /// `[hla]`.
    #[serde(default)]
    pub hla: HlaKnobs,
    /// `[report]`.
    #[serde(default)]
    pub report: ReportConfig,
}

fn d_batch() -> usize {
    256
}
fn d_eval_batch() -> usize {
    256
}
fn d_true() -> bool {
    true
}
fn d_image_size() -> usize {
    224
}
fn d_resize() -> usize {
    256
}
fn d_bad_image() -> BadImagePolicy {
    BadImagePolicy::Error
}
fn d_train_schedule() -> Schedule {
    Schedule::Cosine
}
fn d_train_mode() -> TrainMode {
    TrainMode::Fp
}
fn d_train_epochs() -> usize {
    90
}
fn d_name() -> String {
    "run".to_string()
}

/// Implements `Default` through serde defaults, so the two can never disagree.
macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect(concat!("serde defaults of ", stringify!($t)))
            }
        }
    )*};
}
default_from_serde!(TrainConfig, QuantizeConfig, ReportConfig);

fn range(key: &str, value: impl fmt::Display, allowed: &str) -> RangeError {
    RangeError {
        key: key.to_string(),
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

/// Checks `c` against a section's table of numeric knobs; keys are reported as
/// `section.knob`.
fn check_numeric<C>(section: &str, table: &[NumericKnob<C>], c: &C) -> Result<(), RangeError> {
    match NumericKnob::first_violation(table, c) {
        Some((name, v, domain)) => Err(range(&format!("{section}.{name}"), v, &domain.to_string())),
        None => Ok(()),
    }
}

/// At least one (a count: batches, samples, epochs).
const COUNT: Domain = Domain::closed(1.0, 1e12);

impl ModelConfig {
    /// The numeric knobs of `[model]` and their allowed values.
    #[rustfmt::skip]
    pub const NUMERIC: &'static [NumericKnob<Self>] = &[NumericKnob {
        name: "num_classes",
        domain: Domain::closed(2.0, 100_000.0),
        get: |c| Some(c.num_classes as f64),
    }];

    /// Checks `[model]`.
    ///
    /// # Errors
    /// The first out-of-range key.
    pub fn validate(&self) -> Result<(), RangeError> {
        check_numeric("model", Self::NUMERIC, self)
    }
}

impl DataConfig {
    /// The numeric knobs of `[data]` and their allowed values (and `resize >= image_size`).
    #[rustfmt::skip]
    pub const NUMERIC: &'static [NumericKnob<Self>] = &[
        NumericKnob { name: "batch_size", domain: COUNT, get: |c| Some(c.batch_size as f64) },
        NumericKnob { name: "eval_batch_size", domain: COUNT, get: |c| Some(c.eval_batch_size as f64) },
        NumericKnob { name: "train_limit", domain: COUNT, get: |c| c.train_limit.map(|n| n as f64) },
        NumericKnob { name: "test_limit", domain: COUNT, get: |c| c.test_limit.map(|n| n as f64) },
        NumericKnob { name: "image_size", domain: Domain::closed(8.0, 1024.0), get: |c| Some(c.image_size as f64) },
        NumericKnob { name: "resize", domain: Domain::closed(8.0, 4096.0), get: |c| Some(c.resize as f64) },
    ];

    /// Checks `[data]`.
    ///
    /// # Errors
    /// The first out-of-range key.
    pub fn validate(&self) -> Result<(), RangeError> {
        check_numeric("data", Self::NUMERIC, self)?;
        if self.resize < self.image_size {
            return Err(range("data.resize", self.resize, ">= data.image_size"));
        }
        Ok(())
    }
}

impl TrainConfig {
    /// The numeric knobs of `[train]` and their allowed values.
    #[rustfmt::skip]
    pub const NUMERIC: &'static [NumericKnob<Self>] = &[
        NumericKnob { name: "epochs", domain: COUNT, get: |c| Some(c.epochs as f64) },
        NumericKnob { name: "lr", domain: Domain::above(0.0, 10.0), get: |c| c.lr },
        NumericKnob { name: "label_smoothing", domain: Domain::below(0.0, 1.0), get: |c| Some(c.label_smoothing) },
    ];

    /// Checks `[train]`.
    ///
    /// # Errors
    /// The first out-of-range key.
    pub fn validate(&self) -> Result<(), RangeError> {
        check_numeric("train", Self::NUMERIC, self)
    }
}

impl QuantizeConfig {
    /// The numeric knobs of `[quantize]` and their allowed values.
    #[rustfmt::skip]
    pub const NUMERIC: &'static [NumericKnob<Self>] = &[NumericKnob {
        name: "baseline_epochs",
        domain: Domain::above(0.0, 1e6),
        get: |c| c.baseline_epochs,
    }];

    /// Checks `[quantize]`.
    ///
    /// # Errors
    /// The first out-of-range key.
    pub fn validate(&self) -> Result<(), RangeError> {
        check_numeric("quantize", Self::NUMERIC, self)
    }
}

impl Config {
    /// Checks every section (each by its own `validate`; `[hla]` by
    /// [`hla_core::HlaConfig::validate`]) and the run name.
    ///
    /// # Errors
    /// The first out-of-range key, as a dotted key (`hla.t_start_pct`).
    pub fn validate(&self) -> Result<(), RangeError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(range(
                "name",
                format!("{:?}", self.name),
                "non-empty, letters, digits, '-', '_', '.'",
            ));
        }
        self.model.validate()?;
        self.data.validate()?;
        self.train.validate()?;
        self.quantize.validate()?;
        // Domains through the same table walk as the other sections; `HlaConfig::validate`
        // then checks the constraints between knobs.
        check_numeric("hla", HlaKnobs::NUMERIC, &self.hla)?;
        if let Err(e) = self.hla.validate() {
            return Err(match e {
                hla_core::HlaError::Config {
                    knob,
                    value,
                    reason,
                } => range(&format!("hla.{knob}"), value, &reason),
                other => range("hla", "?", &other.to_string()),
            });
        }
        Ok(())
    }

    /// The stage-1 sparsity targets in percent (integer counter, A4): 30, 34, …, 66 by default.
    pub fn stage1_schedule(&self) -> Vec<u32> {
        self.hla.stage1_t_pcts()
    }

    /// Epochs of the TWN / TTQ baselines.
    pub fn baseline_epochs(&self) -> f64 {
        self.quantize
            .baseline_epochs
            .unwrap_or(self.hla.stage2_epochs)
    }

    /// The config as TOML (written as `config.resolved.toml` next to the results).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serialises to TOML")
    }

    /// Stable hash of the resolved config (hex SHA-256), recorded in checkpoints so a resume
    /// with a different config is refused.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::digest(self.to_toml().as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect()
    }
}
