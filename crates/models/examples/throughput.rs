//! Forward and training-step throughput (images/s) of ResNet-20 (batch 128, 32×32), ResNet-18
//! and MobileNetV2 (batch 16, 224×224), the same cases as `../shared/bench/torch_models.py`.
//!
//! ```sh
//! cargo run --release -p hla-models --example throughput -- --threads 2 [--only resnet20] [--reps 5]
//! ```
//! A training step is forward (train mode) + cross-entropy + backward + an SGD update
//! (`hla_autograd::optim::Sgd`, momentum 0.9, weight decay 1e-4) of every parameter, like the
//! PyTorch script. Inference is timed twice: as training-time evaluation computes it (conv,
//! BatchNorm and activation one after the other, like PyTorch's eager eval) and in deployment
//! form (`hla_models::fold::FoldBn`: BN folded into each conv, activation fused).

use hla_autograd::optim::{Sgd, SgdConfig};
use hla_autograd::{ops, Tape};
use hla_models::timing::Protocol;
use hla_models::{build, Mode};
use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn time(protocol: &Protocol, mut f: impl FnMut()) -> (f64, usize) {
    let r = protocol.median(|| {
        f();
        Ok::<(), std::convert::Infallible>(())
    });
    match r {
        Ok(t) => t,
        Err(never) => match never {},
    }
}

fn bench(arch: &str, batch: usize, hw: usize, classes: usize, protocol: &Protocol) {
    let mut model = build(arch, classes, 0).expect("build");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = ArrayD::from_shape_simple_fn(IxDyn(&[batch, 3, hw, hw]), || {
        StandardNormal.sample(&mut rng)
    });
    let labels: Vec<usize> = (0..batch).map(|i| (i * 7) % classes).collect();
    let (t_inf, n_inf) = time(protocol, || {
        let mut tape = Tape::no_grad();
        let xv = tape.constant(x.clone());
        model
            .forward(&mut tape, xv, Mode::Eval, None)
            .expect("forward");
    });
    // folded once (on the first warm-up), as a deployment would
    let mut fold = hla_models::fold::FoldBn::default();
    let (t_fold, n_fold) = time(protocol, || {
        let mut tape = Tape::no_grad();
        let xv = tape.constant(x.clone());
        model
            .forward(&mut tape, xv, Mode::Eval, Some(&mut fold))
            .expect("forward");
    });
    let mut sgd = Sgd::<f32>::new(SgdConfig {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 1e-4,
        nesterov: false,
    });
    let group = sgd.group();
    let (t_train, n_train) = time(protocol, || {
        let mut tape = Tape::new();
        let xv = tape.batch_input(x.clone());
        let y = model
            .forward(&mut tape, xv, Mode::Train, None)
            .expect("forward");
        let loss = ops::cross_entropy(&mut tape, y, &labels, 0.0).expect("loss");
        let grads = tape.backward(loss).expect("backward");
        drop(tape); // the parameters' storage is no longer shared: updated in place
        let mut entries: Vec<_> = model
            .params_mut()
            .into_iter()
            .map(|(_, p)| {
                let g = grads.of_param(p);
                (p, g, &group)
            })
            .collect();
        sgd.step(0.01, &mut entries).expect("sgd");
    });
    println!(
        "{{\"bench\":\"{arch}\",\"mode\":\"inference\",\"batch\":{batch},\"hw\":{hw},\"sec\":{t_inf:.4},\"img_s\":{:.1},\"reps\":{n_inf}}}",
        batch as f64 / t_inf
    );
    println!(
        "{{\"bench\":\"{arch}\",\"mode\":\"inference_folded\",\"batch\":{batch},\"hw\":{hw},\"sec\":{t_fold:.4},\"img_s\":{:.1},\"reps\":{n_fold}}}",
        batch as f64 / t_fold
    );
    println!(
        "{{\"bench\":\"{arch}\",\"mode\":\"train_step\",\"batch\":{batch},\"hw\":{hw},\"sec\":{t_train:.4},\"img_s\":{:.1},\"reps\":{n_train}}}",
        batch as f64 / t_train
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let threads: usize = get("--threads").and_then(|t| t.parse().ok()).unwrap_or(2);
    let mut protocol = Protocol::default();
    if let Some(r) = get("--reps").and_then(|t| t.parse().ok()) {
        protocol.min_reps = r;
    }
    let only = get("--only");
    hla_tensor::alloc::keep_freed_memory();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    println!(
        "threads {threads}; {} warm-ups, median of at least {} runs (more until {:?}, at most {})",
        protocol.warmup, protocol.min_reps, protocol.min_time, protocol.max_reps
    );
    // on a thread of the pool, as the `hla` binary runs its commands: the kernels' parallel
    // loops are then queued there rather than handed over from the main thread and waited for
    rayon::scope(|_| {
        for (arch, batch, hw, classes) in [
            ("resnet20", 128, 32, 10),
            ("resnet18", 16, 224, 1000),
            ("mobilenet_v2", 16, 224, 1000),
        ] {
            if only.is_none() || only.as_deref() == Some(arch) {
                bench(arch, batch, hw, classes, &protocol);
            }
        }
    });
}
