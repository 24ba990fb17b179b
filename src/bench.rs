//! `hla bench`: training-step and inference throughput (images/s) of a model on random inputs,
//! in full precision or through the HLA stage-2 layers, with the thread count in use.

use crate::cli::{BenchArgs, BenchPath, BenchWhat};
use crate::Ctx;
use anyhow::{bail, Result};
use hla_train::{eval, Learner};
use ndarray::Array4;
use rand::{Rng, SeedableRng};

/// Median seconds per call under the reference scripts' protocol, with `iters` as the least
/// number of timed runs ([`hla_models::timing`] says why one warm-up is not enough).
fn timed(iters: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    let protocol = hla_models::timing::Protocol {
        min_reps: iters,
        ..Default::default()
    };
    Ok(protocol.median(f)?.0)
}

/// Resets the process's peak resident set size (Linux: `VmHWM`, through `/proc/self/clear_refs`)
/// to the current one, so that [`peak_rss_mib`] reports the peak of the work that follows.
/// Returns the current RSS in MiB, or `None` where the counters are not available.
pub fn reset_peak_rss() -> Option<f64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    status_mib("VmRSS")
}

/// Peak resident set size since the last [`reset_peak_rss`] (or since start), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM")
}

fn status_mib(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s
        .lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    let kib: f64 = line[key.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// `" (peak RSS N MiB, M before)"` for the human output, empty where not measured.
fn rss_note(base: Option<f64>, peak: Option<f64>) -> String {
    match (base, peak) {
        (Some(b), Some(p)) => format!(", peak RSS {p:.0} MiB ({b:.0} MiB before)"),
        _ => String::new(),
    }
}

/// `hla bench`.
pub fn bench(ctx: &Ctx, a: &BenchArgs) -> Result<()> {
    if a.batch == 0 || a.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    if !a.compare.is_empty() {
        return crate::compare::compare(ctx, a);
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
    let threads = ctx.threads();
    if a.path == BenchPath::Ternary {
        if a.what == BenchWhat::Train {
            bail!("--path ternary measures inference only (--what infer)");
        }
        return bench_ternary(ctx, a, model, x, (classes, size, threads));
    }
    let mut l = match a.path {
        BenchPath::Fp | BenchPath::Ternary => Learner::new(model, None, &cfg),
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
    ctx.ui.info(format!(
        "hla bench: {} ({classes} classes), batch {} of 3x{size}x{size}, {:?} path, {} kernels, {threads} threads, median of at least {} timed iterations",
        a.arch, a.batch, a.path, hla_tensor::simd_name(), a.iters
    ));
    let mut res = serde_json::Map::new();
    let mut lines = Vec::new();
    // Peak RSS of each measurement: the counter is reset before it, so it reports that work's
    // peak — but memory an earlier measurement left with the allocator counts as well, so the
    // first measurement of a process is the one to read (`hla bench --compare` runs one each).
    if matches!(a.what, BenchWhat::Train | BenchWhat::Both) {
        let base = reset_peak_rss();
        let s = timed(a.iters, || {
            l.train_step(x.clone().into_dyn(), &labels, cfg.lr)?;
            Ok(())
        })?;
        let peak = peak_rss_mib();
        let ips = a.batch as f64 / s;
        lines.push(format!(
            "train step: {:.1} ms/step, {ips:.1} images/s{}",
            1e3 * s,
            rss_note(base, peak)
        ));
        res.insert("train_images_per_s".into(), ips.into());
        res.insert("train_base_rss_mib".into(), base.into());
        res.insert("train_peak_rss_mib".into(), peak.into());
    }
    if matches!(a.what, BenchWhat::Infer | BenchWhat::Both) {
        let base = reset_peak_rss();
        let s = timed(a.iters, || {
            let (m, hook) = l.parts();
            eval::logits(m, hook, x.clone().into_dyn())?;
            Ok(())
        })?;
        let peak = peak_rss_mib();
        let ips = a.batch as f64 / s;
        lines.push(format!(
            "inference: {:.1} ms/batch, {ips:.1} images/s{}",
            1e3 * s,
            rss_note(base, peak)
        ));
        res.insert("infer_images_per_s".into(), ips.into());
        res.insert("infer_base_rss_mib".into(), base.into());
        res.insert("infer_peak_rss_mib".into(), peak.into());
        if a.path == BenchPath::Fp {
            // deployment form: BatchNorm folded into each conv (once, on the warm-up forward),
            // activation fused
            let mut fold = hla_models::fold::FoldBn::default();
            let s = timed(a.iters, || {
                let (m, _) = l.parts();
                eval::logits(m, Some(&mut fold), x.clone().into_dyn())?;
                Ok(())
            })?;
            let ips = a.batch as f64 / s;
            lines.push(format!(
                "inference, BN folded: {:.1} ms/batch, {ips:.1} images/s",
                1e3 * s
            ));
            res.insert("infer_folded_images_per_s".into(), ips.into());
        }
    }
    res.insert("event".into(), "result".into());
    res.insert("command".into(), "bench".into());
    res.insert("arch".into(), a.arch.clone().into());
    res.insert("batch".into(), a.batch.into());
    res.insert("threads".into(), threads.into());
    res.insert("image_size".into(), size.into());
    res.insert("isa".into(), hla_tensor::simd_name().into());
    ctx.ui
        .result(lines.join("\n"), serde_json::Value::Object(res));
    Ok(())
}

/// `--path ternary`: the f32 network, then its TWN (or HLA) export decoded (W2/A32) and through
/// the integer kernels (W2A8, calibrated on the benchmark batch), one after the other in this run.
fn bench_ternary(
    ctx: &Ctx,
    a: &BenchArgs,
    mut model: Box<dyn hla_models::Model>,
    x: Array4<f32>,
    (classes, size, threads): (usize, usize, usize),
) -> Result<()> {
    let cfg = hla_core::HlaConfig {
        method: match a.method {
            crate::cli::BenchMethod::Twn => hla_core::Method::Twn,
            crate::cli::BenchMethod::Hla => hla_core::Method::Hla,
        },
        ..Default::default()
    };
    let mut st = hla_core::method::MethodState::new(cfg.clone(), model.as_ref())?;
    if cfg.method == hla_core::Method::Hla {
        // straight to stage 2 (one step per epoch): Δ̄ = T(stage2_init_pct) of these weights
        use hla_core::algorithm::{epochs_to_steps, Algorithm1};
        let mut algo = Algorithm1::new(&cfg)?;
        algo.set_steps_per_epoch(1)?;
        let start = algo.total_steps() - epochs_to_steps(cfg.stage2_epochs, 1);
        st.set_algo(Algorithm1::at_stage2(&cfg, 1, start)?);
        st.begin_segment(model.as_ref())?;
    }
    st.prepare_weights(model.as_mut())?;
    let mut pm = hla_core::packed::export_model(model.as_ref(), &st)?;
    let isa = hla_tensor::ternary_conv::Int8Isa::detect();
    ctx.ui.info(format!(
        "hla bench: {} ({classes} classes), batch {} of 3x{size}x{size}, ternary inference ({} f32 kernels, {} integer kernel), {threads} threads, median of at least {} timed iterations",
        a.arch, a.batch, hla_tensor::simd_name(), isa.name(), a.iters
    ));
    let xd = x.into_dyn();
    let f32_s = timed(a.iters, || {
        eval::logits(model.as_mut(), None, xd.clone())?;
        Ok(())
    })?;
    let mut fold = hla_models::fold::FoldBn::default();
    let folded_s = timed(a.iters, || {
        eval::logits(model.as_mut(), Some(&mut fold), xd.clone())?;
        Ok(())
    })?;
    let mut exact = hla_core::packed::load_packed(model.as_mut(), &pm)?;
    let w2_s = timed(a.iters, || {
        exact.eval_logits(model.as_mut(), xd.clone())?;
        Ok(())
    })?;
    hla_core::a8::calibrate(model.as_mut(), &pm, [xd.clone()])?.store(&mut pm);
    let ips = |s: f64| a.batch as f64 / s;
    let bytes = pm.size_report();
    let file_bytes = pm.to_bytes()?.len();
    let mut lines = vec![
        format!(
            "quantised layers:    {:.1} KiB f32 -> {:.1} KiB packed ({:.1}x smaller); export file {:.1} KiB",
            bytes.f32_bytes as f64 / 1024.0,
            bytes.packed_bytes as f64 / 1024.0,
            bytes.ratio,
            file_bytes as f64 / 1024.0
        ),
        format!(
            "f32 inference:       {:8.1} ms/batch, {:8.1} images/s",
            1e3 * f32_s,
            ips(f32_s)
        ),
        format!(
            "f32, BN folded:      {:8.1} ms/batch, {:8.1} images/s",
            1e3 * folded_s,
            ips(folded_s)
        ),
        format!(
            "W2/A32 (exact):      {:8.1} ms/batch, {:8.1} images/s",
            1e3 * w2_s,
            ips(w2_s)
        ),
    ];
    // every SIMD kernel this CPU has, the detected (best) one last
    let mut a8_ips = serde_json::Map::new();
    let mut a8_s = f64::NAN;
    let kernels = hla_tensor::ternary_conv::Int8Isa::available();
    let skip = usize::from(kernels.len() > 1); // the scalar kernel only when it is the only one
    for k in kernels.into_iter().skip(skip) {
        let mut a8 =
            hla_core::a8::load_a8(model.as_mut(), &pm)?.with_kernel(k, hla_autograd::Par::Rayon);
        a8_s = timed(a.iters, || {
            a8.eval_logits(model.as_mut(), xd.clone())?;
            Ok(())
        })?;
        lines.push(format!(
            "W2A8 ({:>11}):  {:8.1} ms/batch, {:8.1} images/s  ({:.2}x f32, {:.2}x folded f32)",
            k.name(),
            1e3 * a8_s,
            ips(a8_s),
            f32_s / a8_s,
            folded_s / a8_s
        ));
        a8_ips.insert(k.name().into(), ips(a8_s).into());
    }
    ctx.ui.result(
        lines.join("\n"),
        serde_json::json!({
            "event": "result", "command": "bench", "path": "ternary", "arch": a.arch,
            "batch": a.batch, "threads": threads, "image_size": size, "kernel": isa.name(), "isa": hla_tensor::simd_name(),
            "f32_images_per_s": ips(f32_s), "f32_folded_images_per_s": ips(folded_s),
            "w2a32_images_per_s": ips(w2_s),
            "w2a8_images_per_s": ips(a8_s), "w2a8_by_kernel": a8_ips,
            "f32_bytes": bytes.f32_bytes, "packed_bytes": bytes.packed_bytes, "file_bytes": file_bytes,
        }),
    );
    Ok(())
}
