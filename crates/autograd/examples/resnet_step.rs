//! Measures one training step of a ResNet-20-shaped network (CIFAR layout: 3 stages of 3 basic
//! blocks at 16/32/64 channels, 1×1-conv projection shortcuts, 32×32 inputs, 10 classes) built
//! directly from this crate's ops: time per step and resident memory across repeated steps, to
//! show that memory stays bounded (the tape and its intermediates are dropped every step).
//!
//! Run: `cargo run -p hla-autograd --release --example resnet_step -- [steps] [batch]`
//! (defaults: 50 steps, batch 128). Memory is read from `/proc/self/status` (Linux).

use std::time::Instant;

use hla_autograd::ops::{self, BatchNormState};
use hla_autograd::optim::{ParamGroup, Sgd, SgdConfig};
use hla_autograd::{Conv2dParams, Param, Result, Tape, Var};
use ndarray::ArrayD;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A conv weight with its BN (γ, β, running stats) and stride.
struct ConvBn {
    w: Param<f32>,
    gamma: Param<f32>,
    beta: Param<f32>,
    bn: BatchNormState<f32>,
    stride: usize,
    pad: usize,
}

impl ConvBn {
    fn new(rng: &mut ChaCha8Rng, c_in: usize, c_out: usize, k: usize, stride: usize) -> Self {
        let fan_in = (c_in * k * k) as f32;
        let bound = (6.0 / fan_in).sqrt(); // Kaiming-uniform bound for ReLU
        ConvBn {
            w: Param::new(ArrayD::from_shape_simple_fn(
                vec![c_out, c_in, k, k],
                || rng.random_range(-bound..bound),
            )),
            gamma: Param::new(ArrayD::ones(vec![c_out])),
            beta: Param::new(ArrayD::zeros(vec![c_out])),
            bn: BatchNormState::new(c_out),
            stride,
            pad: k / 2,
        }
    }

    fn forward(&mut self, t: &mut Tape<f32>, x: Var) -> Result<Var> {
        let (w, g, b) = (t.param(&self.w), t.param(&self.gamma), t.param(&self.beta));
        let y = ops::conv2d(t, x, w, None, &Conv2dParams::new(self.stride, self.pad))?;
        ops::batch_norm2d(t, y, g, b, &mut self.bn, true)
    }

    fn params_mut(&mut self) -> [&mut Param<f32>; 3] {
        [&mut self.w, &mut self.gamma, &mut self.beta]
    }
}

struct Block {
    a: ConvBn,
    b: ConvBn,
    shortcut: Option<ConvBn>,
}

struct Net {
    stem: ConvBn,
    blocks: Vec<Block>,
    fc_w: Param<f32>,
    fc_b: Param<f32>,
}

impl Net {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let stem = ConvBn::new(&mut rng, 3, 16, 3, 1);
        let mut blocks = Vec::new();
        let mut c_in = 16;
        for (stage, c) in [16, 32, 64].into_iter().enumerate() {
            for i in 0..3 {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let shortcut =
                    (stride != 1 || c_in != c).then(|| ConvBn::new(&mut rng, c_in, c, 1, stride));
                blocks.push(Block {
                    a: ConvBn::new(&mut rng, c_in, c, 3, stride),
                    b: ConvBn::new(&mut rng, c, c, 3, 1),
                    shortcut,
                });
                c_in = c;
            }
        }
        let bound = 1.0 / 8.0;
        let fc_w = Param::new(ArrayD::from_shape_simple_fn(vec![10, 64], || {
            rng.random_range(-bound..bound)
        }));
        Net {
            stem,
            blocks,
            fc_w,
            fc_b: Param::new(ArrayD::zeros(vec![10])),
        }
    }

    fn forward(&mut self, t: &mut Tape<f32>, x: Var) -> Result<Var> {
        let s = self.stem.forward(t, x)?;
        let mut h = ops::relu(t, s)?;
        for block in &mut self.blocks {
            let a = block.a.forward(t, h)?;
            let a = ops::relu(t, a)?;
            let b = block.b.forward(t, a)?;
            let skip = match &mut block.shortcut {
                Some(sc) => sc.forward(t, h)?,
                None => h,
            };
            let sum = ops::add(t, b, skip)?;
            h = ops::relu(t, sum)?;
        }
        let pooled = ops::global_avg_pool(t, h)?;
        let (w, b) = (t.param(&self.fc_w), t.param(&self.fc_b));
        ops::linear(t, pooled, w, Some(b))
    }

    fn params_mut(&mut self) -> Vec<&mut Param<f32>> {
        let mut out: Vec<&mut Param<f32>> = self.stem.params_mut().into_iter().collect();
        for block in &mut self.blocks {
            out.extend(block.a.params_mut());
            out.extend(block.b.params_mut());
            if let Some(sc) = &mut block.shortcut {
                out.extend(sc.params_mut());
            }
        }
        out.push(&mut self.fc_w);
        out.push(&mut self.fc_b);
        out
    }
}

/// `VmRSS` and `VmHWM` (peak) in MiB, from `/proc/self/status`.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(50);
    let batch: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(128);
    let mut net = Net::new(0);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = ArrayD::from_shape_simple_fn(vec![batch, 3, 32, 32], || rng.random_range(-1.0f32..1.0));
    let labels: Vec<usize> = (0..batch).map(|_| rng.random_range(0..10)).collect();
    let mut opt = Sgd::new(SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
        nesterov: false,
    });
    let decay = opt.group();
    let no_decay = ParamGroup::no_decay();
    let count: usize = net.params_mut().iter().map(|p| p.len()).sum();
    println!(
        "ResNet-20-shaped net: {count} parameters, batch {batch}, {steps} steps, {} rayon threads",
        rayon::current_num_threads()
    );
    let (mut fwd_total, mut bwd_total, mut opt_total) = (0.0, 0.0, 0.0);
    for step in 1..=steps {
        let t0 = Instant::now();
        let mut tape = Tape::new();
        let input = tape.constant(x.clone());
        let logits = net.forward(&mut tape, input)?;
        let loss = ops::cross_entropy(&mut tape, logits, &labels, 0.0)?;
        let loss_value = tape.value(loss).sum();
        let t1 = Instant::now();
        let mut grads = tape.backward(loss)?;
        drop(tape);
        let t2 = Instant::now();
        let mut params = net.params_mut();
        let gs: Vec<_> = params.iter().map(|p| grads.take_param(p)).collect();
        let mut entries: Vec<_> = params
            .iter_mut()
            .zip(&gs)
            .map(|(p, g)| {
                let group = if p.shape().len() == 1 {
                    &no_decay
                } else {
                    &decay
                };
                (&mut **p, g.as_ref(), group)
            })
            .collect();
        opt.step(0.1, &mut entries)?;
        let t3 = Instant::now();
        fwd_total += (t1 - t0).as_secs_f64();
        bwd_total += (t2 - t1).as_secs_f64();
        opt_total += (t3 - t2).as_secs_f64();
        if step == 1 || step % 10 == 0 || step == steps {
            let (rss, peak) = rss_mib();
            println!(
                "step {step:3}  loss {loss_value:.4}  step {:.3}s (fwd {:.3}s, bwd {:.3}s, sgd {:.4}s)  RSS {rss:.0} MiB  peak {peak:.0} MiB",
                (t3 - t0).as_secs_f64(), (t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64(), (t3 - t2).as_secs_f64()
            );
        }
    }
    let n = steps as f64;
    println!(
        "mean per step: fwd {:.3}s, bwd {:.3}s, sgd {:.4}s, total {:.3}s",
        fwd_total / n,
        bwd_total / n,
        opt_total / n,
        (fwd_total + bwd_total + opt_total) / n
    );
    Ok(())
}
