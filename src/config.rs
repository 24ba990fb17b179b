//! Experiment configuration: the TOML schema, loading with one-line errors that name the key,
//! range validation, `--set key=value` overrides, and the resolved config written next to the
//! results.
//!
//! Every method knob of `docs/hla-algorithm.md` section 15 is a field of [`HlaKnobs`] with the
//! documented default, so an auditor switches one ambiguity by editing one line.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a configuration was rejected. Every variant names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", .path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type.
    #[error("{}: {location}{message}", .path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// "line L: key `a.b`: " prefix (may be empty).
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A value is outside its allowed range.
    #[error("{}: key `{key}` = {value} is out of range (allowed: {allowed})", .path.display())]
    Range {
        /// The config file.
        path: PathBuf,
        /// Dotted key, e.g. `hla.t_start_pct`.
        key: String,
        /// The offending value.
        value: String,
        /// The allowed range or set.
        allowed: String,
    },
    /// A `--set key=value` override is malformed.
    #[error("--set {spec}: {message}")]
    Override {
        /// The override as given.
        spec: String,
        /// What is wrong.
        message: String,
    },
}

/// Network architecture (names as `hla_models::build` takes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// CIFAR-10 binary batches (`data_batch_*.bin`, `test_batch.bin`) in `root`.
    Cifar10,
    /// ImageNet-layout JPEG folders `root/train/<class>/*.JPEG`, `root/val/<class>/*.JPEG`.
    Imagefolder,
}

/// What to do with an undecodable image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadImagePolicy {
    /// Stop with an error naming the file.
    Error,
    /// Skip it and count a warning.
    Skip,
}

/// `[data]`: where the images are and how they are batched.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset format.
    pub format: DataFormat,
    /// Dataset root; relative paths are resolved against the working directory (then against the
    /// source tree, so `data/...` works from anywhere for the shipped data).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainMode {
    /// Plain full-precision network.
    Fp,
    /// Hyperspherical layers (w = v/‖v‖, input normalisation), no L_d: Table 4 "Hypersphere".
    Hyperspherical,
}

/// `[train]`: the full-precision (or hyperspherical) training phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// Quantisation method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Full precision (no quantisation): the reference.
    Fp,
    /// Algorithm 1: hyperspherical stage 1 with L_d, then ternary stage 2 with learnable Δ̄.
    Hla,
    /// Ternary Weight Networks (Li et al. 2016): Δ = 0.7·mean|W|, α = mean |W| above Δ.
    Twn,
    /// Trained Ternary Quantization (Zhu et al. 2016): Δ = 0.05·max|W|, learned W^p, W^n.
    Ttq,
}

impl Method {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Fp => "fp",
            Method::Hla => "hla",
            Method::Twn => "twn",
            Method::Ttq => "ttq",
        }
    }
}

impl Method {
    /// The same method as crates/hla names it.
    pub fn core(self) -> hla_core::Method {
        match self {
            Method::Fp => hla_core::Method::Fp,
            Method::Hla => hla_core::Method::Hla,
            Method::Twn => hla_core::Method::Twn,
            Method::Ttq => hla_core::Method::Ttq,
        }
    }

    /// The CLI's name of a crates/hla method.
    pub fn from_core(m: hla_core::Method) -> Method {
        match m {
            hla_core::Method::Fp => Method::Fp,
            hla_core::Method::Hla => Method::Hla,
            hla_core::Method::Twn => Method::Twn,
            hla_core::Method::Ttq => Method::Ttq,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[quantize]`: which method `hla quantize` runs and from where.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeConfig {
    /// Start from this checkpoint file or run directory (its weights only); absent = from
    /// `model.pretrained`, or from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    /// Epochs of TWN / TTQ training (default: `hla.stage2_epochs`, the same budget as stage 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_epochs: Option<usize>,
}

/// `[hla]`: every knob of the method (spec section 15, ambiguities A1–A27) with its
/// documented default, plus the optimiser of the quantisation phases (paper section 10.1) and
/// the TWN / TTQ thresholds: exactly the knobs struct of crates/hla, so no knob can be missing.
pub type HlaKnobs = hla_core::HlaConfig;

/// `[report]`: what the report and plots show.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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

impl Config {
    /// Reads, parses (with `--set` overrides applied) and validates `path`.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path, overrides)
    }

    /// Parses `text` (`path` only names the source in errors) and validates it.
    pub fn from_toml_str(
        text: &str,
        path: &Path,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let cfg: Config = if overrides.is_empty() {
            parse_with_path(text, path)?
        } else {
            let mut value: toml::Table =
                toml::from_str(text).map_err(|e| parse_error(path, text, &e, None))?;
            for spec in overrides {
                apply_override(&mut value, spec)?;
            }
            // Re-serialise so the serde path of any error still points at the key.
            let merged = toml::to_string(&value).map_err(|e| ConfigError::Override {
                spec: overrides.join(" "),
                message: e.to_string(),
            })?;
            parse_with_path(&merged, path)?
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks every numeric field against its allowed range.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let range = |key: &str, value: String, allowed: &str| ConfigError::Range {
            path: path.to_path_buf(),
            key: key.to_string(),
            value,
            allowed: allowed.to_string(),
        };
        let pos = |key: &str, v: usize| {
            if v == 0 {
                Err(range(key, v.to_string(), ">= 1"))
            } else {
                Ok(())
            }
        };
        let finite_in = |key: &str, v: f64, lo: f64, hi: f64, allowed: &str| {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(range(key, v.to_string(), allowed))
            }
        };
        let pct = |key: &str, v: u32| {
            if (1..=99).contains(&v) {
                Ok(())
            } else {
                Err(range(key, v.to_string(), "1..=99 (percent)"))
            }
        };
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
        if !(2..=100_000).contains(&self.model.num_classes) {
            return Err(range(
                "model.num_classes",
                self.model.num_classes.to_string(),
                "2..=100000",
            ));
        }
        pos("data.batch_size", self.data.batch_size)?;
        pos("data.eval_batch_size", self.data.eval_batch_size)?;
        if let Some(n) = self.data.train_limit {
            pos("data.train_limit", n)?;
        }
        if let Some(n) = self.data.test_limit {
            pos("data.test_limit", n)?;
        }
        if !(8..=1024).contains(&self.data.image_size) {
            return Err(range(
                "data.image_size",
                self.data.image_size.to_string(),
                "8..=1024",
            ));
        }
        if self.data.resize < self.data.image_size {
            return Err(range(
                "data.resize",
                self.data.resize.to_string(),
                ">= data.image_size",
            ));
        }
        let h = &self.hla;
        finite_in("hla.lr", h.lr, f64::MIN_POSITIVE, 10.0, "0 < lr <= 10")?;
        if let Some(lr) = self.train.lr {
            finite_in("train.lr", lr, f64::MIN_POSITIVE, 10.0, "0 < lr <= 10")?;
        }
        pos("train.epochs", self.train.epochs)?;
        finite_in(
            "train.label_smoothing",
            self.train.label_smoothing,
            0.0,
            0.999,
            "0 <= x < 1",
        )?;
        finite_in(
            "hla.momentum",
            h.momentum,
            0.0,
            0.999_999,
            "0 <= momentum < 1",
        )?;
        finite_in("hla.weight_decay", h.weight_decay, 0.0, 1.0, "0..=1")?;
        pos("hla.sgdr_t0_epochs", h.sgdr_t0_epochs)?;
        if !(1..=10).contains(&h.sgdr_t_mult) {
            return Err(range(
                "hla.sgdr_t_mult",
                h.sgdr_t_mult.to_string(),
                "1..=10",
            ));
        }
        finite_in(
            "hla.sgdr_eta_min",
            h.sgdr_eta_min,
            0.0,
            h.lr,
            "0 <= eta_min <= hla.lr",
        )?;
        pct("hla.t_start_pct", h.t_start_pct)?;
        pct("hla.t_end_pct", h.t_end_pct)?;
        if h.t_step_pct == 0 || h.t_step_pct > 98 {
            return Err(range("hla.t_step_pct", h.t_step_pct.to_string(), "1..=98"));
        }
        if h.t_end_pct <= h.t_start_pct && !(h.t_include_end && h.t_end_pct == h.t_start_pct) {
            return Err(range(
                "hla.t_end_pct",
                h.t_end_pct.to_string(),
                "> hla.t_start_pct",
            ));
        }
        pct("hla.stage2_init_pct", h.stage2_init_pct)?;
        pct("hla.sim_t_pct", h.sim_t_pct)?;
        pos("hla.stage1_epochs_per_stage", h.stage1_epochs_per_stage)?;
        pos("hla.stage2_epochs", h.stage2_epochs)?;
        finite_in("hla.lambda_d", h.lambda_d, 0.0, 1e6, "0..=1e6")?;
        finite_in("hla.delta_lr_mult", h.delta_lr_mult, 0.0, 1e6, "0..=1e6")?;
        finite_in(
            "hla.delta_momentum",
            h.delta_momentum,
            0.0,
            0.999_999,
            "0 <= x < 1",
        )?;
        finite_in("hla.delta_wd", h.delta_wd, 0.0, 1.0, "0..=1")?;
        finite_in("hla.eps_x", h.eps_x, 0.0, 1.0, "0..=1")?;
        finite_in("hla.eps_w", h.eps_w, 0.0, 1.0, "0..=1")?;
        if let Err(hla_core::HlaError::Config {
            knob,
            value,
            reason,
        }) = h.validate()
        {
            return Err(range(&format!("hla.{knob}"), value, &reason));
        }
        if let Some(n) = self.quantize.baseline_epochs {
            pos("quantize.baseline_epochs", n)?;
        }
        finite_in("hla.twn_threshold", h.twn_threshold, 0.0, 10.0, "0..=10")?;
        finite_in(
            "hla.ttq_threshold",
            h.ttq_threshold,
            0.0,
            0.999,
            "0 <= t < 1",
        )?;
        Ok(())
    }

    /// The stage-1 sparsity targets in percent (integer counter, A4): 30, 34, …, 66 by default.
    pub fn stage1_schedule(&self) -> Vec<u32> {
        let h = &self.hla;
        let mut v = Vec::new();
        let mut t = h.t_start_pct;
        while t < h.t_end_pct || (h.t_include_end && t == h.t_end_pct) {
            v.push(t);
            t += h.t_step_pct;
        }
        v
    }

    /// Epochs of the TWN / TTQ baselines.
    pub fn baseline_epochs(&self) -> usize {
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

fn parse_with_path<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        parse_error(path, text, &inner, Some(key))
    })
}

fn parse_error(path: &Path, text: &str, e: &toml::de::Error, key: Option<String>) -> ConfigError {
    let mut location = String::new();
    if let Some(span) = e.span() {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        location.push_str(&format!("line {line}: "));
    }
    // serde_path_to_error reports `.` for the root; for an unknown field the path ends with it.
    let message = e.message().trim().replace('\n', " ");
    match key.as_deref() {
        Some(".") | Some("") | None => {}
        Some(k) => location.push_str(&format!("key `{k}`: ")),
    }
    ConfigError::Parse {
        path: path.to_path_buf(),
        location,
        message,
    }
}

/// Applies `a.b.c=value` to the table; `value` is parsed as a TOML value, or taken as a string
/// if it does not parse (so `--set data.root=/x/y` works without quotes).
fn apply_override(table: &mut toml::Table, spec: &str) -> Result<(), ConfigError> {
    let err = |message: &str| ConfigError::Override {
        spec: spec.to_string(),
        message: message.to_string(),
    };
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| err("expected KEY=VALUE, e.g. hla.lambda_d=0"))?;
    let key = key.trim();
    let raw = raw.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(err("empty key"));
    }
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("the key just parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| err(&format!("`{p}` is not a table")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Resolves a data or weight path: as given if it exists, else relative to the source tree the
/// binary was built from (so the shipped `data/` is found from any working directory).
pub fn resolve_path(p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    let alt = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
    if alt.exists() {
        alt
    } else {
        p.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[model]
arch = "resnet20"
num_classes = 10
[data]
format = "cifar10"
root = "data/cifar10"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("x.toml"), &[])
    }

    #[test]
    fn minimal_config_gets_the_spec_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(
            c.hla.threshold_scope,
            hla_core::config::ThresholdScope::Global
        );
        assert_eq!(c.hla.stage2_init_pct, 80);
        assert_eq!(c.hla.lambda_d, 1.0);
        assert_eq!(c.hla.lr, 0.01);
        assert_eq!(c.hla.sgdr_t0_epochs, 10);
        assert_eq!(c.train.schedule, Schedule::Cosine);
        assert_eq!(
            c.stage1_schedule(),
            vec![30, 34, 38, 42, 46, 50, 54, 58, 62, 66]
        );
        assert_eq!(c.baseline_epochs(), 200);
    }

    #[test]
    fn include_end_adds_the_last_stage() {
        let c = Config::from_toml_str(
            MINIMAL,
            Path::new("x.toml"),
            &["hla.t_include_end=true".into()],
        )
        .unwrap();
        assert_eq!(c.stage1_schedule().last(), Some(&70));
        assert_eq!(c.stage1_schedule().len(), 11);
    }

    #[test]
    fn unknown_key_names_the_table_and_the_key() {
        let e = load(&format!("{MINIMAL}\n[hla]\nlamda_d = 1.0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `hla.lamda_d`") && e.contains("unknown field"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_variant_name_the_key() {
        let e = load(&format!("{MINIMAL}\n[hla]\nstage2_init_pct = \"eighty\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hla.stage2_init_pct"), "{e}");
        let e = load(&format!(
            "{MINIMAL}\n[hla]\nthreshold_scope = \"galactic\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("hla.threshold_scope") && e.contains("per_layer"),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_names_key_and_range() {
        let e = load(&format!("{MINIMAL}\n[hla]\nt_start_pct = 120\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hla.t_start_pct") && e.contains("120") && e.contains("1..=99"),
            "{e}"
        );
        let e = load(&format!("{MINIMAL}\n[hla]\nlr = -1.0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hla.lr"), "{e}");
    }

    #[test]
    fn override_changes_a_knob_and_is_validated() {
        let c = Config::from_toml_str(MINIMAL, Path::new("x.toml"), &["hla.lambda_d=0".into()])
            .unwrap();
        assert_eq!(c.hla.lambda_d, 0.0);
        let e = Config::from_toml_str(MINIMAL, Path::new("x.toml"), &["hla.lambda_d=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("hla.lambda_d"), "{e}");
        let e = Config::from_toml_str(MINIMAL, Path::new("x.toml"), &["hla.lambda_d".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let c = Config::from_toml_str(
            MINIMAL,
            Path::new("x.toml"),
            &["data.root=/somewhere/else".into()],
        )
        .unwrap();
        assert_eq!(c.data.root, PathBuf::from("/somewhere/else"));
    }

    #[test]
    fn resolved_config_round_trips_and_digest_is_stable() {
        let c = load(MINIMAL).unwrap();
        let again = load(&c.to_toml()).unwrap();
        assert_eq!(c.to_toml(), again.to_toml());
        assert_eq!(c.digest(), again.digest());
        let mut d = c.clone();
        d.hla.lambda_d = 0.5;
        assert_ne!(c.digest(), d.digest());
    }

    #[test]
    fn shipped_configs_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().and_then(|e| e.to_str()) == Some("toml") {
                Config::load(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(
            n >= 5,
            "expected the paper and demo configs in {}",
            dir.display()
        );
    }
}
