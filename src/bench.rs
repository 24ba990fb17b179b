//! `hla bench`: training-step and inference throughput (images/s) of a model on random inputs,
//! in full precision or through the HLA stage-2 layers, with the thread count in use.

use crate::cli::{BenchArgs, BenchPath, BenchWhat};
use crate::Ctx;
use anyhow::{bail, Result};
use hla_train::{eval, Learner};
use ndarray::Array4;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn timed(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

/// `hla bench`.
pub fn bench(ctx: &Ctx, a: &BenchArgs) -> Result<()> {
    if a.batch == 0 || a.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let cifar = a.arch.starts_with("resnet")
        && ["20", "32", "44", "56", "110"]
            .iter()
            .any(|d| a.arch.trim_start_matches("resnet").trim_end_matches("_b") == *d);
    let size = a.image_size.unwrap_or(if cifar { 32 } else { 224 });
    let classes = a.classes.unwrap_or(if cifar { 10 } else { 1000 });
    let seed = ctx.global.seed.unwrap_or(0);
    let model = hla_models::build(&a.arch, classes, seed)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = Array4::from_shape_fn((a.batch, 3, size, size), |_| rng.random_range(-1.0f32..1.0));
    let labels: Vec<usize> = (0..a.batch).map(|i| i % classes).collect();
    let mut cfg = hla_core::HlaConfig {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 1e-4,
        nesterov: false,
        ..Default::default()
    };
    let mut l = match a.path {
        BenchPath::Fp => Learner::new(model, None, &cfg),
        BenchPath::Hla => {
            cfg.method = hla_core::Method::Hla;
            cfg.stage1_epochs_per_stage = 1.0;
            cfg.t_step_pct = 40; // one stage-1 sub-stage, then stage 2
            let mut st = hla_core::method::MethodState::new(cfg.clone(), model.as_ref())?;
            // Walk to stage 2 (Δ̄ initialised at T(80)): a one-step epoch.
            st.algo.set_steps_per_epoch(1)?;
            st.begin_segment(model.as_ref())?;
            st.algo.record_step();
            st.end_segment();
            st.begin_segment(model.as_ref())?;
            Learner::new(model, Some(st), &cfg)
        }
    };
    let threads = ctx.threads();
    ctx.ui.info(format!(
        "hla bench: {} ({classes} classes), batch {} of 3x{size}x{size}, {:?} path, {threads} threads, {} timed iterations",
        a.arch, a.batch, a.path, a.iters
    ));
    let mut res = serde_json::Map::new();
    let mut lines = Vec::new();
    if matches!(a.what, BenchWhat::Train | BenchWhat::Both) {
        let s = timed(a.iters, || {
            l.train_step(x.clone().into_dyn(), &labels, cfg.lr)?;
            Ok(())
        })?;
        let ips = a.batch as f64 / s;
        lines.push(format!(
            "train step: {:.1} ms/step, {ips:.1} images/s",
            1e3 * s
        ));
        res.insert("train_images_per_s".into(), ips.into());
    }
    if matches!(a.what, BenchWhat::Infer | BenchWhat::Both) {
        let s = timed(a.iters, || {
            let (m, hook) = l.parts();
            eval::logits(m, hook, x.clone().into_dyn())?;
            Ok(())
        })?;
        let ips = a.batch as f64 / s;
        lines.push(format!(
            "inference: {:.1} ms/batch, {ips:.1} images/s",
            1e3 * s
        ));
        res.insert("infer_images_per_s".into(), ips.into());
    }
    res.insert("event".into(), "result".into());
    res.insert("command".into(), "bench".into());
    res.insert("arch".into(), a.arch.clone().into());
    res.insert("batch".into(), a.batch.into());
    res.insert("threads".into(), threads.into());
    res.insert("image_size".into(), size.into());
    ctx.ui
        .result(lines.join("\n"), serde_json::Value::Object(res));
    Ok(())
}
