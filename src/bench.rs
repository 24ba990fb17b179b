//! `hla bench`: training-step and inference throughput (images/s) of a model on random inputs,
//! in full precision or through the HLA stage-2 layers, with the thread count in use.

use crate::cli::{BenchArgs, BenchPath, BenchWhat};
use crate::engine::{self, StepStats, Trainee};
use crate::Ctx;
use anyhow::{bail, Result};
use hla_autograd::optim::{Sgd, SgdConfig};
use hla_autograd::Tape;
use hla_models::Mode;
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
    let mut cfg = hla_core::HlaConfig::default();
    let mut t: Box<dyn Trainee> = match a.path {
        BenchPath::Fp => {
            let sgd = Sgd::new(SgdConfig {
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 1e-4,
                nesterov: false,
            });
            let groups = vec![sgd.group(); model.params().len()];
            Box::new(engine::FpTrainee {
                model,
                sgd,
                groups,
                sched: engine::Sched::Constant(hla_autograd::schedule::Constant { lr: 0.01 }),
                label_smoothing: 0.0,
                hs: None,
            })
        }
        BenchPath::Hla => {
            cfg.method = hla_core::Method::Hla;
            cfg.stage1_epochs_per_stage = 1;
            cfg.t_step_pct = 40; // one stage-1 sub-stage, then stage 2
            let st = hla_core::method::MethodState::new(cfg.clone(), model.as_ref())?;
            let (sgd, groups) = hla_core::method::model_optimizer(&cfg, model.as_ref());
            let mut q = engine::QuantTrainee {
                model,
                st,
                sgd,
                groups,
                steps_per_epoch: 1,
                last_lr: cfg.lr,
            };
            // Walk to stage 2 (Δ̄ initialised at T(80)).
            q.st.begin_epoch(q.model.as_ref())?;
            q.st.end_epoch();
            q.st.begin_epoch(q.model.as_ref())?;
            Box::new(q)
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
        let mut step = 0u64;
        let s = timed(a.iters, || {
            let st: StepStats = t.step(x.clone(), &labels, step)?;
            step += 1;
            if !st.mean_loss().is_finite() {
                bail!("bench: loss became non-finite");
            }
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
            let (m, hook) = t.parts();
            let mut tape = Tape::<f32>::no_grad();
            let xv = tape.constant(x.clone().into_dyn());
            m.forward(&mut tape, xv, Mode::Eval, hook)?;
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
