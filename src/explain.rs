//! `hla explain`: the method on one layer, step by step (normalised rows, T(t), Ŵ and α, L_d
//! and its gradient, the STE gradient with and without S, the Δ̄ update), printed as a teacher
//! would put it on a slide, plus the Figure 1 histograms of that layer. With
//! `--spec-example` it walks the spec's hand-worked 2 × 4 layer, whose every number is pinned
//! by a test (`hla_core::walkthrough`).

use crate::plots;
use crate::Ctx;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use hla_autograd::{ops, Tape};
use hla_core::walkthrough::{ld_descent, Walkthrough};
use hla_core::HlaConfig;
use hla_models::Mode;
use ndarray::{Array2, ArrayD};
use std::path::PathBuf;

/// Arguments of `hla explain`.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// Walk the spec's hand-worked 2 × 4 layer instead of a pretrained one.
    #[arg(long)]
    pub spec_example: bool,
    /// Full-precision weights (safetensors, torchvision names).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "data/pretrained/resnet20_cifar10_akamaster.safetensors"
    )]
    pub weights: PathBuf,
    /// Architecture of the weights.
    #[arg(long, default_value = "resnet20")]
    pub arch: String,
    /// Quantisable layer to walk through.
    #[arg(long, default_value = "layer1.0.conv1")]
    pub layer: String,
    /// Stage-1 sparsity t in percent (Δ = T(t)).
    #[arg(long, default_value_t = 50)]
    pub t_pct: u32,
    /// Stage-2 starting Δ̄ = T(this percent) of the layer (Alg. 1 line 12).
    #[arg(long, default_value_t = 80)]
    pub delta_bar_pct: u32,
    /// Learning rate of the shown Δ̄ step.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// CIFAR-10 folder whose first training images give the real gradient G.
    #[arg(long, value_name = "DIR", default_value = "data/cifar10")]
    pub data: PathBuf,
    /// Images in the batch that gives G.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Rows and columns of each matrix shown.
    #[arg(long, default_value_t = 3)]
    pub rows: usize,
    /// Columns of each matrix shown.
    #[arg(long, default_value_t = 6)]
    pub cols: usize,
    /// Folder for the Figure 1 histograms (`fig1-<layer>.png`, `.json`); none = not written.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Runs `hla explain`.
pub fn explain(_ctx: &Ctx, a: &ExplainArgs) -> Result<()> {
    if a.spec_example {
        let w = Walkthrough::spec_example()?;
        println!("The spec's hand-worked layer (docs/method.md; tests T1–T8 pin every number)");
        print!("{}", w.slide(2, 4));
        return Ok(());
    }
    if !(1..=99).contains(&a.t_pct) || !(1..=99).contains(&a.delta_bar_pct) {
        bail!("--t-pct and --delta-bar-pct must be in 1..=99");
    }
    if a.batch == 0 || a.rows == 0 || a.cols == 0 {
        bail!("--batch, --rows and --cols must be at least 1");
    }
    let mut model = hla_models::build(&a.arch, 10, 0)?;
    hla_models::io::load_safetensors(model.as_mut(), &a.weights, true)
        .with_context(|| format!("{}: cannot load weights", a.weights.display()))?;
    let names: Vec<String> = model
        .quantisable()
        .iter()
        .map(|q| q.layer.clone())
        .collect();
    if !names.contains(&a.layer) {
        bail!(
            "layer `{}` is not a quantisable layer of {}; choose one of: {}",
            a.layer,
            a.arch,
            names.join(", ")
        );
    }
    let (v, g) = layer_and_gradient(model.as_mut(), a)?;
    let cfg = HlaConfig::default();
    let wn = hla_core::ld::normalize_rows(v.view(), cfg.eps_w).0;
    let delta_bar = hla_core::threshold::threshold_global(
        &[wn.view().into_dyn()],
        a.delta_bar_pct,
        cfg.quantile_index,
    )?;
    let source = format!(
        "∂CE/∂W of the pretrained full-precision model on the first {} training images of {} \
         (the upstream gradient a training step delivers; in stage 2 it arrives at Ŵ)",
        a.batch,
        a.data.display()
    );
    let w = Walkthrough::compute(v.view(), a.t_pct, g.view(), &source, delta_bar, a.lr, &cfg)?;
    println!(
        "{} of {} ({}), t = {:.2}, Δ̄₀ = T({:.2})",
        a.layer,
        a.arch,
        a.weights.display(),
        a.t_pct as f64 / 100.0,
        a.delta_bar_pct as f64 / 100.0
    );
    print!("{}", w.slide(a.rows, a.cols));
    if let Some(dir) = &a.out {
        figure1(&w.w, a, &cfg, dir)?;
    }
    Ok(())
}

/// The layer's weights as rows `[out, in·k·k]` and ∂CE/∂W of one batch, same shape.
fn layer_and_gradient(
    model: &mut dyn hla_models::Model,
    a: &ExplainArgs,
) -> Result<(Array2<f64>, Array2<f64>)> {
    let set = hla_data::Cifar10::load(&a.data)?.train;
    let n = a.batch.min(set.len());
    let lut = hla_data::transforms::Normalize::imagenet().lut();
    let imgs = set.images.slice(ndarray::s![..n, .., .., ..]);
    let mut x = ArrayD::<f32>::zeros(imgs.shape());
    for ((i, c, h, w), &p) in imgs.indexed_iter() {
        x[[i, c, h, w]] = lut[c][p as usize];
    }
    let labels = &set.labels[..n];
    let mut tape = Tape::<f32>::new();
    let xv = tape.constant(x);
    let logits = model.forward(&mut tape, xv, Mode::Train, None)?;
    let ce = ops::cross_entropy(&mut tape, logits, labels, 0.0)?;
    let mut grads = tape.backward(ce)?;
    drop(tape);
    let key = format!("{}.weight", a.layer);
    let params = model.params();
    let (_, p) = params
        .iter()
        .find(|(name, _)| *name == key)
        .ok_or_else(|| anyhow!("{key}: no such parameter"))?;
    let g = grads
        .take_param(p)
        .ok_or_else(|| anyhow!("{key}: no gradient reached the layer"))?;
    let rows = |t: &ArrayD<f32>| -> Result<Array2<f64>> {
        let out = t.shape()[0];
        let r = t.len() / out.max(1);
        Ok(t.mapv(f64::from).into_shape_with_order((out, r))?)
    };
    Ok((rows(p.value())?, rows(&g)?))
}

/// Figure 1 for the layer: its unit rows, then after L_d alone has acted at each stage-1 t.
fn figure1(w: &Array2<f64>, a: &ExplainArgs, cfg: &HlaConfig, dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let ts = [30, 50, 66];
    let n = w.nrows() as f64;
    // lr·(2/n) = 0.5: each step moves a row half-way along its ternary direction's error.
    let snaps = ld_descent(w.view(), &ts, 20, 0.25 * n, cfg)?;
    let panels: Vec<(String, Vec<f32>)> = snaps
        .iter()
        .map(|(label, m)| {
            let l = if label == "start" {
                "unit rows of the pretrained layer".to_string()
            } else {
                format!("after L_d alone, 20 steps at {label}")
            };
            (l, m.iter().map(|&x| x as f32).collect())
        })
        .collect();
    let png = dir.join(format!("fig1-{}.png", a.layer));
    plots::histograms(
        &png,
        &format!("Figure 1: {} weight distribution", a.layer),
        &panels,
        121,
    )?;
    let json = serde_json::json!({
        "layer": a.layer,
        "weights": a.weights.display().to_string(),
        "panels": panels.iter().map(|(l, v)| serde_json::json!({"label": l, "values": v})).collect::<Vec<_>>(),
    });
    let path = dir.join(format!("fig1-{}.json", a.layer));
    std::fs::write(&path, serde_json::to_string(&json)?)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    println!("\nFigure 1 histograms: {}", png.display());
    Ok(())
}
