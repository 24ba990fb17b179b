//! Quantise the pretrained CIFAR ResNet-20 to ternary weights with HLA (Algorithm 1), scripted
//! against the library: data, model, method state, the training step, evaluation.
//!
//!     cargo run --release -p hla-train --example hla_resnet20 [-- CIFAR_DIR]
//!
//! A short schedule on the shipped 5,000-image subset by default (a few minutes on 2 cores);
//! `hla quantize` runs the same loop with checkpoints, metrics and resume.

use hla_core::method::MethodState;
use hla_train::{bn, data, eval, Config, Learner};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // keep freed activation memory for the next batch instead of page-faulting it back in
    hla_tensor::alloc::keep_freed_memory();
    let root = std::env::args().nth(1).unwrap_or("data/cifar10".into());
    let cfg: Config = toml::from_str(&format!(
        r#"
        [model]
        arch = "resnet20"
        num_classes = 10
        pretrained = "data/pretrained/resnet20_cifar10_akamaster.safetensors"
        [data]
        format = "cifar10"
        root = "{root}"
        batch_size = 128
        [hla]                  # stage 1: t = 0.30, 0.50 for half an epoch each; stage 2: 1 epoch
        t_step_pct = 20
        stage1_epochs_per_stage = 0.5
        stage2_epochs = 1
        sgdr_t0_epochs = 0.5
        sgdr_t0_epochs_stage2 = 1
        "#
    ))?;
    cfg.validate()?;
    let data = data::load_data(&cfg, 2)?;
    let model = hla_train::run::build_model(&cfg)?; // pretrained weights loaded
    let mut method = MethodState::new(cfg.hla.clone(), model.as_ref())?;
    method
        .algo
        .set_steps_per_epoch(data.train.batches_per_epoch() as u64)?;
    let mut l = Learner::new(model, Some(method), &cfg.hla);
    let mut epoch = 0;
    while !l.is_done() {
        for batch in data.train.epoch(epoch) {
            let batch = batch?;
            let plan = l.begin_segment()?.expect("HLA"); // Δ = T(t), Δ̄ = T(80) when due
            let lr = l.state().expect("HLA").lr()?; // per-iteration SGDR
            l.train_step(batch.images.into_dyn(), &batch.labels, lr)?;
            if l.state().expect("HLA").algo.segment_complete() {
                let (m, hook) = l.parts(); // a sub-stage or stage 2 ends: evaluate it
                bn::recalibrate_bn(m, hook, &data.train, 8, 1_000_000 + epoch, None)?;
                let (m, hook) = l.parts();
                let ev = eval::evaluate(m, hook, &data.test)?;
                let q = l.state().expect("HLA").metrics(l.model.as_ref())?;
                println!(
                    "{:?} t = {:?}: test top-1 {:.2} %, sparsity {:.1} %, cos(W, Ŵ) {:.3}",
                    plan.phase,
                    plan.t_pct,
                    ev.top1,
                    100.0 * q.sparsity,
                    q.sim
                );
                l.end_segment();
                if l.is_done() {
                    break;
                }
            }
        }
        epoch += 1;
    }
    Ok(())
}
