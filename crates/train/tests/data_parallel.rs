//! Data-parallel training steps: R in-process ranks, each holding its slice of every global
//! batch, end with the parameters, buffers and method state of one process, bit for bit —
//! for R = 1, 2, 4 (and 3: uneven slices), FP, HLA and TTQ, ResNet-20 and MobileNetV2
//! (depthwise convolutions, dropout, a linear classifier with bias).

use hla_core::config::{HlaConfig, Method};
use hla_core::method::{MethodCheckpoint, MethodState};
use hla_models::Model;
use hla_tensor::group::{local_groups, Group};
use hla_train::checkpoint::model_hash;
use hla_train::Learner;
use ndarray::{ArrayD, Axis, Slice};
use rand::{Rng, SeedableRng};

/// Global batch `step` of a run: `n` random images of `hw × hw` and their labels.
fn global_batch(step: u64, n: usize, hw: usize) -> (ArrayD<f32>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1000 + step);
    let x = ArrayD::from_shape_fn(vec![n, 3, hw, hw], |_| rng.random_range(-1.0f32..1.0));
    let y = (0..n).map(|_| rng.random_range(0..10)).collect();
    (x, y)
}

#[derive(Clone, Copy)]
struct Case {
    arch: &'static str,
    method: Option<Method>,
    hw: usize,
    batch: usize,
    steps: u64,
}

fn method_cfg(method: Method) -> HlaConfig {
    HlaConfig {
        method,
        stage1_epochs_per_stage: 1.0,
        stage2_epochs: 4.0,
        sgdr_t0_epochs: 1.0,
        // Quantise every quantisable layer: MobileNetV2's classifier has no BatchNorm after it,
        // so HLA adds the A18 gain and the input norm of a linear layer — broadcast parameters
        // whose gradients sum over the batch.
        skip_layers: Some(Vec::new()),
        ..Default::default()
    }
}

/// What a run ends with: the model hash and the method state.
type End = (String, Option<MethodCheckpoint>, Vec<u64>);

/// `case` trained by one rank of `group` (or alone): every rank draws the same global batches
/// and keeps its rows.
fn train(case: Case, group: Option<Group>) -> End {
    let model: Box<dyn Model> = hla_models::build(case.arch, 10, 3).unwrap();
    let mut l = match case.method {
        Some(m) => {
            let cfg = method_cfg(m);
            let mut st = MethodState::new(cfg.clone(), model.as_ref()).unwrap();
            st.algo.set_steps_per_epoch(2).unwrap();
            Learner::new(model, Some(st), &cfg)
        }
        None => Learner::new(model, None, &HlaConfig::default()),
    };
    if let Some(st) = l.method.as_ref() {
        st.prepare_weights(l.model.as_mut()).unwrap();
    }
    l.group = group.clone();
    let mut stats = Vec::new();
    for step in 0..case.steps {
        let (x, y) = global_batch(step, case.batch, case.hw);
        let rows = group.as_ref().map_or(0..case.batch, |g| g.rows(case.batch));
        let x = x.slice_axis(Axis(0), Slice::from(rows.clone())).to_owned();
        let y = &y[rows];
        l.model.set_dropout_seed(77 + step);
        l.begin_segment().unwrap();
        let lr = l.state().map_or(0.05, |st| st.lr().unwrap());
        let s = l.train_step(x, y, lr).unwrap();
        stats.push(s.loss.to_bits());
        stats.push(s.correct as u64);
        stats.push(s.n as u64);
        l.end_segment();
    }
    (
        model_hash(l.model.as_ref()),
        l.state().map(|st| st.checkpoint()),
        stats,
    )
}

/// `case` on `ranks` in-process ranks, each on a one-thread pool of its own; the ends in rank
/// order.
fn train_on(case: Case, ranks: usize) -> Vec<End> {
    let hs: Vec<_> = local_groups(ranks)
        .into_iter()
        .map(|g| {
            std::thread::spawn(move || {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap();
                pool.install(|| train(case, Some(g)))
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

fn check(case: Case, ranks: &[usize]) {
    let one = {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| train(case, None))
    };
    for &r in ranks {
        for (rank, end) in train_on(case, r).into_iter().enumerate() {
            assert_eq!(
                end.0, one.0,
                "{} {:?}: model of rank {rank} of {r}",
                case.arch, case.method
            );
            assert!(
                end.1 == one.1,
                "{} {:?}: method state of rank {rank} of {r}",
                case.arch,
                case.method
            );
            assert_eq!(
                end.2, one.2,
                "{} {:?}: step statistics of rank {rank} of {r}",
                case.arch, case.method
            );
        }
    }
}

#[test]
fn resnet20_fp_hla_ttq_steps_are_bit_identical_on_1_2_3_4_ranks() {
    for method in [None, Some(Method::Hla), Some(Method::Ttq)] {
        let case = Case {
            arch: "resnet20",
            method,
            hw: 16,
            batch: 32,
            steps: 3,
        };
        check(case, &[1, 2, 3, 4]);
    }
}

#[test]
fn mobilenet_v2_fp_and_hla_steps_are_bit_identical_on_2_and_4_ranks() {
    for method in [None, Some(Method::Hla)] {
        let case = Case {
            arch: "mobilenet_v2",
            method,
            hw: 32,
            batch: 32,
            steps: 2,
        };
        check(case, &[2, 4]);
    }
}
