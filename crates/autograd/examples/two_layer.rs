//! Fits a two-layer network (linear → ReLU → linear) to a toy problem: classify 2-D points as
//! inside or outside the circle of radius 0.8. Prints the training loss, which falls.
//!
//! Run: `cargo run -p hla-autograd --release --example two_layer`

use hla_autograd::optim::{Sgd, SgdConfig};
use hla_autograd::schedule::{Cosine, LrSchedule};
use hla_autograd::{ops, Param, Result, Tape};
use ndarray::{Array2, ArrayD};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HIDDEN: usize = 32;
const POINTS: usize = 256;
const STEPS: u64 = 300;

fn main() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // data: points uniform in [-1, 1]², label 1 inside the circle
    let x = Array2::from_shape_simple_fn((POINTS, 2), || rng.random_range(-1.0f32..1.0));
    let labels: Vec<usize> = x
        .rows()
        .into_iter()
        .map(|p| usize::from(p[0] * p[0] + p[1] * p[1] < 0.64))
        .collect();
    // parameters: uniform ±1/√fan_in, like PyTorch's nn.Linear
    let mut init = |shape: &[usize], fan_in: usize| {
        let bound = 1.0 / (fan_in as f32).sqrt();
        Param::new(ArrayD::from_shape_simple_fn(shape.to_vec(), || {
            rng.random_range(-bound..bound)
        }))
    };
    let mut params = [
        init(&[HIDDEN, 2], 2),
        init(&[HIDDEN], 2),
        init(&[2, HIDDEN], HIDDEN),
        init(&[2], HIDDEN),
    ];
    let config = SgdConfig {
        lr: 0.5,
        momentum: 0.9,
        weight_decay: 1e-4,
        nesterov: false,
    };
    let schedule = Cosine::new(config.lr, STEPS, 0.0)?;
    let mut opt = Sgd::new(config);
    let group = opt.group();

    for step in 0..STEPS {
        let mut tape = Tape::new();
        let input = tape.constant(x.clone().into_dyn());
        let w: Vec<_> = params.iter().map(|p| tape.param(p)).collect();
        let h = ops::linear(&mut tape, input, w[0], Some(w[1]))?;
        let h = ops::relu(&mut tape, h)?;
        let logits = ops::linear(&mut tape, h, w[2], Some(w[3]))?;
        let loss = ops::cross_entropy(&mut tape, logits, &labels, 0.0)?;
        let loss_value = tape.value(loss).sum();
        let accuracy = {
            let l = tape.value(logits);
            let correct = (0..POINTS)
                .filter(|&i| usize::from(l[[i, 1]] > l[[i, 0]]) == labels[i])
                .count();
            correct as f32 / POINTS as f32
        };
        let mut grads = tape.backward(loss)?;
        drop(tape); // releases the parameters' storage: the update below is in place
        let gs: Vec<_> = params.iter().map(|p| grads.take_param(p)).collect();
        let mut entries: Vec<_> = params
            .iter_mut()
            .zip(&gs)
            .map(|(p, g)| (p, g.as_ref(), &group))
            .collect();
        opt.step(schedule.lr(step), &mut entries)?;
        if step % 30 == 0 || step == STEPS - 1 {
            println!(
                "step {step:3}  loss {loss_value:.4}  accuracy {:.1}%",
                100.0 * accuracy
            );
        }
    }
    Ok(())
}
