//! `hla calibrate` and `hla infer`: W2A8 inference of exported ternary models (8-bit
//! activations, integer kernels; `hla_core::a8`) and predictions for image files.

use crate::{config, rundir, Ctx};
use anyhow::{bail, Context, Result};
use clap::Args;
use hla_core::a8::{calibrate, load_a8, Calibration};
use hla_core::export::PackedModel;
use hla_models::{LayerHook, Model};
use hla_train::config::Config;
use hla_train::data::Preprocess;
use hla_train::run::{add_input_metadata, CLASS_NAMES_KEY, PREPROCESS_KEY};
use ndarray::{Array4, ArrayD, Axis};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Training images calibrated over by default.
pub const DEFAULT_CALIBRATION_IMAGES: usize = 512;

/// `hla calibrate`.
#[derive(Debug, Clone, Args)]
pub struct CalibrateArgs {
    /// Exported ternary model (`*.ternary.safetensors`).
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Config giving the data (default: `config.resolved.toml` beside MODEL).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Training images (no augmentation, the run's shuffled order) to take the ranges over.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CALIBRATION_IMAGES)]
    pub images: usize,
    /// Write here instead of replacing MODEL (atomically) in place.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `hla infer`.
#[derive(Debug, Clone, Args)]
pub struct InferArgs {
    /// Exported ternary model (`*.ternary.safetensors`).
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// JPEG / PNG files, or folders searched recursively for them.
    #[arg(value_name = "IMAGE_OR_FOLDER", required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// Classes listed per image.
    #[arg(long, value_name = "K", default_value_t = 5)]
    pub top_k: usize,
    /// Decode the weights to f32 and keep f32 activations (W2/A32, bit-identical to
    /// training-time evaluation) instead of the W2A8 integer path.
    #[arg(long)]
    pub exact: bool,
    /// Images per forward.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub batch: usize,
}

/// The config of a model file: `--config` or the resolved config beside it.
pub fn model_config(model: &Path, cfg: Option<&Path>, set: &[String]) -> Result<Config> {
    match cfg {
        Some(c) => Ok(config::load(c, set)?),
        None => {
            let dir = rundir::dir_of(model);
            let p = dir.join(rundir::RESOLVED);
            if !p.exists() {
                bail!(
                    "{}: no {} beside the model; pass --config FILE",
                    dir.display(),
                    rundir::RESOLVED
                );
            }
            Ok(config::load(&p, set)?)
        }
    }
}

/// The network an export is for, freshly built (its state comes from the file).
pub fn model_of(pm: &PackedModel, cfg: Option<&Config>) -> Result<Box<dyn Model>> {
    let arch = pm
        .metadata
        .get("arch")
        .cloned()
        .or_else(|| cfg.map(|c| c.model.arch.name().to_string()))
        .context("packed model: metadata \"arch\" missing")?;
    let classes = match pm.metadata.get("num_classes") {
        Some(v) => v
            .parse()
            .with_context(|| format!("packed model: num_classes {v:?}"))?,
        None => cfg
            .map(|c| c.model.num_classes)
            .context("packed model: metadata \"num_classes\" missing")?,
    };
    Ok(hla_models::build(&arch, classes, 0)?)
}

/// Calibrates `pm` over the first `images` training images of `cfg` (no augmentation).
pub fn calibrate_export(
    cfg: &Config,
    pm: &PackedModel,
    images: usize,
    threads: usize,
) -> Result<Calibration> {
    if images == 0 {
        bail!("--images must be at least 1");
    }
    let mut c = cfg.clone();
    c.data.augment = false;
    crate::commands::check_data(&c)?;
    let data = hla_train::data::load_data(&c, threads)?;
    let mut model = model_of(pm, Some(cfg))?;
    let mut err = None;
    let mut left = images;
    let batches = data.train.epoch(0).map_while(|b| {
        if left == 0 {
            return None;
        }
        match b {
            Ok(b) => {
                let k = left.min(b.images.shape()[0]);
                left -= k;
                Some(
                    b.images
                        .slice_axis(Axis(0), (0..k).into())
                        .to_owned()
                        .into_dyn(),
                )
            }
            Err(e) => {
                err = Some(e);
                None
            }
        }
    });
    let cal = calibrate(model.as_mut(), pm, batches);
    if let Some(e) = err {
        return Err(e.into());
    }
    Ok(cal?)
}

/// `hla calibrate`: adds the 8-bit activation calibration (and the preprocessing and class
/// names, when missing) to an export.
pub fn calibrate_cmd(ctx: &Ctx, a: &CalibrateArgs) -> Result<()> {
    let mut pm = PackedModel::read(&a.model)?;
    let cfg = model_config(&a.model, a.config.as_deref(), &a.set)?;
    let t0 = Instant::now();
    let cal = calibrate_export(&cfg, &pm, a.images, ctx.threads())?;
    cal.store(&mut pm);
    if !pm.metadata.contains_key(PREPROCESS_KEY) || !pm.metadata.contains_key(CLASS_NAMES_KEY) {
        add_input_metadata(&cfg, &mut pm)?;
    }
    let out = a.output.clone().unwrap_or_else(|| a.model.clone());
    pm.write(&out)?;
    ctx.ui.result(
        format!(
            "wrote {}: 8-bit input grids of {} layers from {} training images ({:.1} s)",
            out.display(),
            cal.layers.len(),
            cal.images,
            t0.elapsed().as_secs_f64()
        ),
        serde_json::json!({
            "event": "result", "command": "calibrate", "file": out.display().to_string(),
            "layers": cal.layers.len(), "images": cal.images,
        }),
    );
    Ok(())
}

/// The hook an export computes with: W2A8 when calibrated (unless `exact`), else W2/A32.
pub enum InferHook {
    /// Integer kernels, 8-bit activations (boxed: the hook is much larger than the other).
    A8(Box<hla_core::a8::A8Hook>),
    /// Decoded ternary weights, f32 activations.
    Exact(hla_core::packed::PackedHook),
}

impl InferHook {
    /// Loads `pm` into `model` and picks the path.
    pub fn load(model: &mut dyn Model, pm: &PackedModel, exact: bool) -> Result<Self> {
        if !exact && Calibration::of(pm)?.is_some() {
            return Ok(InferHook::A8(Box::new(load_a8(model, pm)?)));
        }
        Ok(InferHook::Exact(hla_core::packed::load_packed(model, pm)?))
    }

    /// A line naming the path, e.g. "W2A8 (avx512-vnni kernel)".
    pub fn describe(&self) -> String {
        match self {
            InferHook::A8(h) => format!("W2A8 ({} kernel)", h.kernel().name()),
            InferHook::Exact(_) => "W2/A32 (decoded, exact)".into(),
        }
    }

    /// As a layer hook.
    pub fn hook(&mut self) -> &mut dyn LayerHook {
        match self {
            InferHook::A8(h) => h.as_mut(),
            InferHook::Exact(h) => h,
        }
    }
}

/// JPEG / PNG files of `inputs` (folders searched recursively, in sorted order).
fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn is_image(p: &Path) -> bool {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
    }
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read folder", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if is_image(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for i in inputs {
        if i.is_dir() {
            walk(i, &mut out)?;
        } else if i.is_file() {
            out.push(i.clone());
        } else {
            bail!("{}: no such file or directory", i.display());
        }
    }
    if out.is_empty() {
        bail!("no JPEG or PNG images in the inputs");
    }
    Ok(out)
}

/// Probabilities (softmax, f64) of one logit row, top `k` as `(class, p)`.
fn top_k(row: ndarray::ArrayView1<f32>, k: usize) -> Vec<(usize, f64)> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut idx: Vec<usize> = (0..e.len()).collect();
    idx.sort_by(|&a, &b| e[b].total_cmp(&e[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, e[i] / z)).collect()
}

/// `hla infer`: top-k predictions for image files.
pub fn infer(ctx: &Ctx, a: &InferArgs) -> Result<()> {
    if a.top_k == 0 || a.batch == 0 {
        bail!("--top-k and --batch must be at least 1");
    }
    let pm = PackedModel::read(&a.model)?;
    let pre: Preprocess = match pm.metadata.get(PREPROCESS_KEY) {
        Some(s) => serde_json::from_str(s)
            .with_context(|| format!("{}: metadata {PREPROCESS_KEY}", a.model.display()))?,
        None => bail!(
            "{}: the export does not say how to preprocess images; add it with `hla calibrate {}`",
            a.model.display(),
            a.model.display()
        ),
    };
    let names: Option<Vec<String>> = match pm.metadata.get(CLASS_NAMES_KEY) {
        Some(s) => Some(
            serde_json::from_str(s)
                .with_context(|| format!("{}: metadata {CLASS_NAMES_KEY}", a.model.display()))?,
        ),
        None => None,
    };
    let (transform, norm) = pre.transform()?;
    let lut = norm.lut();
    let files = image_files(&a.inputs)?;
    let mut model = model_of(&pm, None)?;
    let mut hook = InferHook::load(model.as_mut(), &pm, a.exact)?;
    ctx.ui.info(format!(
        "{}: {} on {} image(s)",
        a.model.display(),
        hook.describe(),
        files.len()
    ));
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let (mut compute, t0) = (0.0f64, Instant::now());
    for chunk in files.chunks(a.batch) {
        let mut x = Array4::<f32>::zeros((chunk.len(), 3, pre.crop, pre.crop));
        for (f, out) in chunk.iter().zip(x.outer_iter_mut()) {
            let img = hla_data::load_rgb(f)?;
            transform.apply(&img, &mut rng, &lut, out)?;
        }
        let tc = Instant::now();
        let logits: ArrayD<f32> =
            hla_train::eval::logits(model.as_mut(), Some(hook.hook()), x.into_dyn())?;
        compute += tc.elapsed().as_secs_f64();
        for (f, row) in chunk.iter().zip(logits.outer_iter()) {
            let row = row.into_dimensionality::<ndarray::Ix1>()?;
            let top = top_k(row, a.top_k);
            let name = |c: usize| {
                names
                    .as_ref()
                    .and_then(|n| n.get(c).cloned())
                    .unwrap_or_else(|| format!("class {c}"))
            };
            let text: Vec<String> = top
                .iter()
                .map(|&(c, p)| format!("{} {:.1}%", name(c), 100.0 * p))
                .collect();
            ctx.ui.result(
                format!("{}: {}", f.display(), text.join(", ")),
                serde_json::json!({
                    "event": "prediction", "file": f.display().to_string(),
                    "top": top.iter().map(|&(c, p)| serde_json::json!({
                        "class": c, "name": name(c), "prob": p,
                    })).collect::<Vec<_>>(),
                }),
            );
        }
    }
    let total = t0.elapsed().as_secs_f64();
    ctx.ui.result(
        format!(
            "{} image(s) in {:.2} s ({:.1} images/s end to end, {:.1} images/s in the network); {}",
            files.len(),
            total,
            files.len() as f64 / total.max(1e-9),
            files.len() as f64 / compute.max(1e-9),
            hook.describe()
        ),
        serde_json::json!({
            "event": "result", "command": "infer", "images": files.len(),
            "seconds": total, "network_seconds": compute, "path": hook.describe(),
        }),
    );
    Ok(())
}
