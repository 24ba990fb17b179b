//! Command-line surface (clap derive): global options and one struct per subcommand.

use clap::{Args, Parser, Subcommand, ValueEnum};
use hla_core::Method;
use std::path::PathBuf;

/// Hyperspherical Loss-Aware Ternary Quantization (arXiv 2212.12649): train, quantise, export,
/// evaluate and benchmark ternary ResNets / MobileNetV2 on the CPU, reproducibly.
///
/// Start with `hla demo`: it trains a small CIFAR-10 ResNet, quantises it with HLA, TWN and TTQ
/// under the same budget and prints a comparison table and a report.
#[derive(Debug, Parser)]
#[command(name = "hla", version, about, long_about)]
pub struct Cli {
    /// Global options (accepted before or after the subcommand).
    #[command(flatten)]
    pub global: GlobalOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// Master seed; overrides the config's `seed`. Weights, data order and augmentation all
    /// derive from it, so the same seed gives bit-identical results.
    #[arg(long, global = true, value_name = "N")]
    pub seed: Option<u64>,
    /// Worker threads for kernels and data loading (default: all cores). Results do not depend
    /// on it.
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// Output directory (default: `runs/<name>-train` for train, `runs/<name>-<method>` for
    /// quantize, `runs/<name>` for demo, with `<name>` the config's `name`). An existing run
    /// there is never overwritten: continue it with `--resume` or pick another directory.
    #[arg(long, global = true, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print only final results (no progress bars or per-epoch lines).
    #[arg(long, short, global = true, conflicts_with = "json")]
    pub quiet: bool,
    /// Print JSON lines on stdout (one per epoch and one per result) for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// Widest SIMD instruction set the kernels may use (default: all this CPU has). `avx2` on
    /// an AVX-512 machine runs exactly the kernels of an AVX2-only machine, with their bits;
    /// `portable` turns this project's SIMD kernels off. It never enables what the CPU lacks.
    #[arg(long, global = true, value_enum, value_name = "ISA")]
    pub isa: Option<IsaCeiling>,
}

/// `--isa`: the ceiling on the kernels' instruction sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsaCeiling {
    /// No SIMD kernels of this project (im2col + GEMM, portable integer loops).
    Portable,
    /// AVX2 + FMA kernels at most.
    Avx2,
    /// Everything the CPU has (AVX-512 F/BW, VNNI).
    Avx512,
}

impl IsaCeiling {
    /// The library's ceiling.
    pub fn max_isa(self) -> hla_tensor::isa::MaxIsa {
        use hla_tensor::isa::MaxIsa;
        match self {
            IsaCeiling::Portable => MaxIsa::Portable,
            IsaCeiling::Avx2 => MaxIsa::Avx2,
            IsaCeiling::Avx512 => MaxIsa::Avx512,
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a network in full precision (or with hyperspherical layers) from a config.
    Train(TrainArgs),
    /// Quantise to ternary weights with HLA (Algorithm 1), TWN or TTQ, from a checkpoint or
    /// from scratch.
    Quantize(QuantizeArgs),
    /// Top-1 / top-5 test accuracy of a checkpoint, run directory or exported ternary model.
    Eval(EvalArgs),
    /// Write the packed 2-bit ternary model of a quantised run and report its size.
    Export(ExportArgs),
    /// Add the 8-bit activation calibration (W2A8 inference) to an exported ternary model.
    Calibrate(crate::infer::CalibrateArgs),
    /// Top-k predictions of an exported ternary model for JPEG / PNG files (W2A8 integer path
    /// when calibrated).
    Infer(crate::infer::InferArgs),
    /// Measure training-step and inference throughput (images/s) for a model and batch size.
    Bench(BenchArgs),
    /// The default showcase: FP training, then HLA stage 1 + 2, TWN and TTQ from the same start
    /// under the same budget on the shipped CIFAR-10 subset; prints a table and writes a report.
    Demo(DemoArgs),
    /// Run a study plan (every missing or unfinished run, resumable, sharing stage 1 between
    /// HLA points), then write its tables and plots (`RESULTS.md`).
    Study(crate::study::StudyArgs),
    /// The method on one layer, step by step: normalised rows, T(t), Ŵ and α, L_d and its
    /// gradient, the STE gradient with and without S, the Δ̄ update; Figure 1 histograms.
    Explain(crate::explain::ExplainArgs),
}

/// Options shared by the training subcommands.
#[derive(Debug, Clone, Args)]
pub struct RunOpts {
    /// Experiment config (TOML), e.g. `configs/cifar10-resnet20.toml`.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one config key, e.g. `--set hla.lambda_d=0.5` or `--set data.batch_size=64`
    /// (repeatable; the value is TOML, bare words are taken as strings).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the interrupted run in DIR from its last checkpoint (its config is reused; the
    /// result is bit-identical to an uninterrupted run).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many epochs in this invocation; `--resume` continues.
    #[arg(long, value_name = "N")]
    pub stop_after_epochs: Option<usize>,
}

/// `hla train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Config, overrides, resume.
    #[command(flatten)]
    pub run: RunOpts,
}

/// `hla quantize`.
#[derive(Debug, Clone, Args)]
pub struct QuantizeArgs {
    /// Config, overrides, resume.
    #[command(flatten)]
    pub run: RunOpts,
    /// Quantisation method (default: the config's `hla.method`).
    #[arg(long, short, value_parser = parse_method, value_name = "fp|hla|twn|ttq")]
    pub method: Option<Method>,
    /// Start from the weights of this checkpoint file or run directory (e.g. an `hla train`
    /// output) instead of `model.pretrained` or random initialisation.
    #[arg(long, value_name = "PATH")]
    pub from: Option<PathBuf>,
}

/// `hla eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Checkpoint file, run directory, or exported ternary model (`*.ternary.safetensors`).
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Config giving the data and model (default: `config.resolved.toml` beside MODEL).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one config key (repeatable), e.g. `--set data.test_limit=500`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Exported models: evaluate the W2A8 integer path (8-bit activations; needs a calibrated
    /// export) instead of the exact decoded weights.
    #[arg(long)]
    pub a8: bool,
}

/// `hla export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Run directory or checkpoint of a quantised run (`hla quantize` / `hla demo` output).
    #[arg(value_name = "RUN")]
    pub run: PathBuf,
    /// Output file (default: `<RUN dir>/model.ternary.safetensors`). Never overwritten.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Training images for the 8-bit activation calibration stored in the file (0: none).
    #[arg(long, value_name = "N", default_value_t = crate::infer::DEFAULT_CALIBRATION_IMAGES)]
    pub calibrate_images: usize,
}

/// What `hla bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchWhat {
    /// Forward + backward + SGD step.
    Train,
    /// Forward only (evaluation mode).
    Infer,
    /// Both.
    Both,
}

/// Weight path that `hla bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchPath {
    /// Plain full-precision layers.
    Fp,
    /// HLA stage-2 layers (normalisation + ternary STE + L_d).
    Hla,
    /// Inference of an exported ternary model (the benchmarked network quantised by
    /// `--method`): f32 network, W2/A32 (decoded weights) and W2A8 (integer kernels) in one run.
    Ternary,
}

/// How `hla bench --path ternary` quantises the benchmarked network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMethod {
    /// TWN: plain ternary layers.
    Twn,
    /// HLA: hyperspherical layers, so W2A8 also computes each layer's patch norms.
    Hla,
}

/// `hla bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Architecture, e.g. resnet20, resnet18, resnet50, mobilenet_v2.
    #[arg(long, default_value = "resnet20")]
    pub arch: String,
    /// Minibatch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Input height = width (32 for CIFAR models, 224 for ImageNet models).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Number of classes.
    #[arg(long)]
    pub classes: Option<usize>,
    /// Least number of timed iterations: after 2 warm-ups, timing goes on until 3 s have passed
    /// (at most 50 runs) and the median is reported, as in `../shared/bench/torch_models.py`.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = BenchWhat::Both)]
    pub what: BenchWhat,
    /// Layer path to measure.
    #[arg(long, value_enum, default_value_t = BenchPath::Fp)]
    pub path: BenchPath,
    /// Quantisation of the exported model with `--path ternary`.
    #[arg(long, value_enum, default_value_t = BenchMethod::Twn)]
    pub method: BenchMethod,
    /// PyTorch reference JSON (`../shared/bench/torch_models.py --json`,
    /// `tools/bench/torch_peak_memory.py --json`; repeatable): measure every model case in it
    /// (each in a fresh process) and print one table with ours, PyTorch, the ratio and the peak
    /// resident memory of both. `--arch`, `--batch` and `--what` then come from the files.
    #[arg(long, value_name = "FILE")]
    pub compare: Vec<std::path::PathBuf>,
}

/// `hla demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Config (default: the built-in `configs/demo.toml`).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

fn parse_method(s: &str) -> Result<Method, String> {
    s.parse().map_err(|e: hla_core::HlaError| e.to_string())
}
