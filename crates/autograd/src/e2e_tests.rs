//! End-to-end tests of the tape: a composite residual net under gradient check, determinism of
//! training across thread counts and runs, errors of backward, and memory release.

use std::sync::Mutex;

use ndarray::ArrayD;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::gradcheck::check;
use crate::ops;
use crate::optim::{ParamGroup, Sgd, SgdConfig};
use crate::testutil::tiny_net::{self, CLASSES};
use crate::testutil::uniform;
use crate::{AutogradError, Float, Param, Result, Tape};

/// The whole tiny residual net (convs incl. a grouped one, BN in train mode, ReLU, a residual
/// add, max pool, global pool, linear, cross-entropy) checked end to end against central
/// differences, for the input and every parameter.
#[test]
fn gradcheck_tiny_residual_net_end_to_end() {
    let mut xs = vec![uniform(&[2, 3, 6, 6], 1)];
    xs.extend(tiny_net::init::<f64>(2));
    let labels = [2, 0];
    let bn = Mutex::new(tiny_net::bn_states::<f64>());
    let report = check(
        |t, v| {
            let logits = tiny_net::forward(t, v[0], &v[1..], &mut bn.lock().unwrap(), true)?;
            ops::cross_entropy(t, logits, &labels, 0.05)
        },
        &xs,
        3,
    )
    .unwrap();
    assert_eq!(report.elements, xs.iter().map(|x| x.len()).sum::<usize>());
}

/// Trains the tiny net for `steps` SGD steps (momentum, weight decay, BN without decay) on a
/// seeded random batch; returns the bits of every parameter and running statistic.
fn train_bits(steps: usize) -> Result<Vec<u32>> {
    // several of the kernels' fixed-size sample chunks, so work is really split across threads
    const BATCH: usize = 24;
    let mut params: Vec<Param<f32>> = tiny_net::params(7);
    let mut bn = tiny_net::bn_states::<f32>();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let x = ArrayD::from_shape_simple_fn(vec![BATCH, 3, 8, 8], || rng.random_range(-1.0f32..1.0));
    let labels: Vec<usize> = (0..BATCH).map(|_| rng.random_range(0..CLASSES)).collect();
    let mut opt = Sgd::new(SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
    });
    let (decay, no_decay) = (opt.group(), ParamGroup::no_decay());
    for _ in 0..steps {
        let mut grads = {
            let mut t = Tape::<f32>::new();
            let xv = t.constant(x.clone());
            let w: Vec<_> = params.iter().map(|p| t.param(p)).collect();
            let logits = tiny_net::forward(&mut t, xv, &w, &mut bn, true)?;
            let loss = ops::cross_entropy(&mut t, logits, &labels, 0.0)?;
            t.backward(loss)?
        }; // tape dropped here: parameters are updated without a copy
        let gs: Vec<Option<ArrayD<f32>>> = params.iter().map(|p| grads.take_param(p)).collect();
        let mut entries: Vec<_> = params
            .iter_mut()
            .zip(&gs)
            .map(|(p, g)| {
                let group = if p.shape().len() == 1 {
                    &no_decay
                } else {
                    &decay
                };
                (p, g.as_ref(), group)
            })
            .collect();
        opt.step(0.1, &mut entries)?;
    }
    let mut bits: Vec<u32> = params
        .iter()
        .flat_map(|p| p.value().iter().map(|v| v.to_bits()))
        .collect();
    for s in &bn {
        bits.extend(
            s.running_mean
                .iter()
                .chain(&s.running_var)
                .map(|v| v.to_bits()),
        );
    }
    Ok(bits)
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

/// Same seed ⇒ bit-identical weights with 1 and 2 rayon threads, and on two runs.
#[test]
fn training_is_bit_identical_across_thread_counts_and_runs() {
    let one = in_pool(1, || train_bits(3)).unwrap();
    let two = in_pool(2, || train_bits(3)).unwrap();
    let again = in_pool(2, || train_bits(3)).unwrap();
    assert_eq!(one.len(), two.len());
    assert!(one == two, "1 vs 2 threads differ");
    assert!(two == again, "two runs differ");
    // and training moved the weights (the comparison is not between untouched initial values)
    let init = in_pool(1, || train_bits(0)).unwrap();
    assert_ne!(init, one);
}

/// The training loss of the tiny net falls over a few steps (the optimizer and the gradients
/// agree in sign and scale).
#[test]
fn sgd_reduces_the_loss_of_the_tiny_net() {
    let mut params: Vec<Param<f32>> = tiny_net::params(11);
    let mut bn = tiny_net::bn_states::<f32>();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let x = ArrayD::from_shape_simple_fn(vec![6, 3, 6, 6], || rng.random_range(-1.0f32..1.0));
    let labels: Vec<usize> = (0..6).map(|i| i % CLASSES).collect();
    let mut opt = Sgd::new(SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 0.0,
        nesterov: true,
    });
    let group = opt.group();
    let mut losses = Vec::new();
    for _ in 0..15 {
        let mut t = Tape::<f32>::new();
        let xv = t.constant(x.clone());
        let w: Vec<_> = params.iter().map(|p| t.param(p)).collect();
        let logits = tiny_net::forward(&mut t, xv, &w, &mut bn, true).unwrap();
        let loss = ops::cross_entropy(&mut t, logits, &labels, 0.0).unwrap();
        losses.push(t.value(loss).sum());
        let mut g = t.backward(loss).unwrap();
        drop(t);
        let gs: Vec<_> = params.iter().map(|p| g.take_param(p)).collect();
        let mut entries: Vec<_> = params
            .iter_mut()
            .zip(&gs)
            .map(|(p, g)| (p, g.as_ref(), &group))
            .collect();
        opt.step(0.05, &mut entries).unwrap();
    }
    assert!(losses[14] < 0.5 * losses[0], "{losses:?}");
}

#[test]
fn backward_on_non_scalar_without_seed_is_an_error() {
    let mut t = Tape::<f32>::new();
    let x = t.leaf(ArrayD::zeros(vec![2, 3]));
    let y = ops::square(&mut t, x).unwrap();
    let e = t.backward(y).err().unwrap();
    assert!(
        matches!(&e, AutogradError::NonScalarOutput { shape } if shape == &[2, 3]),
        "{e}"
    );
    // a one-element non-0-d output is a valid loss
    let s = ops::sum(&mut t, y, &[0, 1], true).unwrap();
    assert_eq!(t.shape(s), &[1, 1]);
    assert!(t.backward(s).is_ok());
}

#[test]
fn wrong_seed_shape_second_backward_and_foreign_vars_are_errors() {
    let mut t = Tape::<f64>::new();
    let x = t.leaf(ArrayD::zeros(vec![3]));
    let y = ops::exp(&mut t, x).unwrap();
    let e = t.backward_with(y, ArrayD::zeros(vec![4])).err().unwrap();
    assert!(matches!(e, AutogradError::ShapeMismatch { .. }), "{e}");
    let l = ops::sum_all(&mut t, y).unwrap();
    t.backward(l).unwrap();
    assert!(matches!(t.backward(l), Err(AutogradError::BackwardTwice)));
    let mut other = Tape::<f64>::new();
    let e = ops::relu(&mut other, y).unwrap_err();
    assert!(
        matches!(e, AutogradError::UnknownVar { op: "relu", .. }),
        "{e}"
    );
}

#[test]
fn fan_out_sums_every_use_of_a_parameter() {
    // L = Σ (p·p + 3p): dL/dp = 2p + 3, with p recorded twice on the tape
    let p = Param::new(ArrayD::from_shape_vec(vec![2], vec![1.0f64, -2.0]).unwrap());
    let mut t = Tape::new();
    let (a, b) = (t.param(&p), t.param(&p));
    assert_eq!(a, b);
    let sq = ops::mul(&mut t, a, b).unwrap();
    let lin = ops::mul_scalar(&mut t, b, 3.0).unwrap();
    let s = ops::add(&mut t, sq, lin).unwrap();
    let l = ops::sum_all(&mut t, s).unwrap();
    let g = t.backward(l).unwrap();
    assert_eq!(g.of_param(&p).unwrap().as_slice().unwrap(), &[5.0, -1.0]);
}

#[test]
fn no_grad_tape_records_nothing_and_gives_same_values() {
    let params: Vec<Param<f64>> = tiny_net::params(3);
    let x = uniform(&[2, 3, 6, 6], 4);
    let mut values = Vec::new();
    for mut t in [Tape::new(), Tape::no_grad()] {
        let xv = t.constant(x.clone());
        let w: Vec<_> = params.iter().map(|p| t.param(p)).collect();
        let y = tiny_net::forward(&mut t, xv, &w, &mut tiny_net::bn_states(), false).unwrap();
        assert_eq!(t.requires_grad(y), t.is_recording());
        assert_eq!(t.nodes.iter().any(|n| n.op.is_some()), t.is_recording());
        values.push(t.value(y).clone());
    }
    assert_eq!(values[0], values[1]);
}

/// Backward frees every op's saved state; dropping the tape releases the parameters' storage
/// so an optimizer updates them in place (no copy).
#[test]
fn backward_frees_saved_state_and_tape_releases_params() {
    let mut params: Vec<Param<f32>> = tiny_net::params(5);
    let mut t = Tape::<f32>::new();
    let x = t.constant(ArrayD::zeros(vec![2, 3, 4, 4]));
    let w: Vec<_> = params.iter().map(|p| t.param(p)).collect();
    let logits = tiny_net::forward(&mut t, x, &w, &mut tiny_net::bn_states(), true).unwrap();
    let loss = ops::cross_entropy(&mut t, logits, &[0, 1], 0.0).unwrap();
    assert!(t.nodes.iter().filter(|n| n.op.is_some()).count() > 20);
    let _g = t.backward(loss).unwrap();
    assert!(
        t.nodes.iter().all(|n| n.op.is_none()),
        "saved state left after backward"
    );
    drop(t);
    let before = params[0].value().as_ptr();
    params[0].value_mut()[[0, 0, 0, 0]] = 1.0;
    assert_eq!(
        params[0].value().as_ptr(),
        before,
        "value_mut copied a released parameter"
    );
}

/// f32 and f64 are both supported by the same code (training in f32, checks in f64).
#[test]
fn generic_over_f32_and_f64() {
    fn loss_of<F: Float>() -> f64 {
        let mut t = Tape::<F>::new();
        let x = t.leaf(ArrayD::from_elem(vec![2], F::from_f64(0.5)));
        let y = ops::square(&mut t, x).unwrap();
        let l = ops::sum_all(&mut t, y).unwrap();
        Float::to_f64(*t.value(l).iter().next().unwrap())
    }
    assert_eq!(loss_of::<f32>(), 0.5);
    assert_eq!(loss_of::<f64>(), 0.5);
}

#[test]
fn retained_intermediate_gradients_are_returned() {
    // y = 3·x, L = Σ y²: dL/dy = 2y, dL/dx = 6y
    let mut t = Tape::<f64>::new();
    let x = t.leaf(ArrayD::from_shape_vec(vec![2], vec![1.0, -1.0]).unwrap());
    let y = ops::mul_scalar(&mut t, x, 3.0).unwrap();
    let sq = ops::square(&mut t, y).unwrap();
    let l = ops::sum_all(&mut t, sq).unwrap();
    t.retain_grad(y);
    let g = t.backward(l).unwrap();
    assert_eq!(g.get(y).unwrap().as_slice().unwrap(), &[6.0, -6.0]);
    assert_eq!(g.get(x).unwrap().as_slice().unwrap(), &[18.0, -18.0]);
    assert!(
        g.get(sq).is_none(),
        "non-retained intermediate gradients are freed"
    );
}

#[test]
fn backward_of_a_constant_gives_no_gradients() {
    let p = Param::new(ArrayD::from_elem(vec![2], 1.0f32));
    let mut t = Tape::no_grad();
    let v = t.param(&p);
    let l = ops::sum_all(&mut t, v).unwrap();
    assert!(!t.requires_grad(l));
    let g = t.backward(l).unwrap();
    assert!(g.of_param(&p).is_none());
}
