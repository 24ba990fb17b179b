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

/// A small HLA run on the shipped CIFAR-10 subset: ResNet-8, two stage-1 sub-stages of half an
/// epoch and one stage-2 epoch of batches of 32, BN re-estimated before every evaluation.
fn run_cfg(train_limit: usize) -> hla_train::Config {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/cifar10");
    toml::from_str(&format!(
        "name = \"dp\"\nseed = 5\n[model]\narch = \"resnet8\"\nnum_classes = 10\n\
         [data]\nformat = \"cifar10\"\nroot = {:?}\ntrain_limit = {train_limit}\ntest_limit = 40\n\
         batch_size = 32\neval_batch_size = 20\ndrop_last = false\n\
         [hla]\nmethod = \"hla\"\nt_start_pct = 30\nt_step_pct = 20\nt_end_pct = 50\n\
         stage1_epochs_per_stage = 0.5\nsgdr_t0_epochs = 0.5\nstage2_epochs = 1.0\n\
         bn_recalibrate_batches = 2\n[report]\nplots = true\n",
        root.display().to_string()
    ))
    .unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hla-dp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(group: Option<Group>, stop_after: Option<usize>) -> hla_train::RunOptions {
    hla_train::RunOptions {
        threads: 1,
        stop_after_epochs: stop_after,
        stop: hla_train::StopFlag::default(),
        group,
    }
}

fn summary(end: hla_train::RunEnd) -> hla_train::run::RunSummary {
    match end {
        hla_train::RunEnd::Finished(s) => s,
        other => panic!("run did not finish: {other:?}"),
    }
}

/// `hla quantize` on two in-process ranks sharing one run directory: stopped after the first
/// epoch and resumed with the same two ranks, it ends with the single-process model hash and
/// records (losses, accuracies, sparsity; the last batch of 16 is split 8 + 8). Four ranks
/// cannot split that last batch and are refused with a clear error.
#[test]
fn hla_quantize_run_on_two_ranks_with_resume_matches_one_process() {
    let cfg = run_cfg(80);
    let one = summary(
        hla_train::run::quantize(
            &cfg,
            &scratch("one"),
            None,
            &opts(None, None),
            &mut hla_train::run::Silent,
        )
        .unwrap(),
    );
    let dir = scratch("two");
    let ranks = |stop: Option<usize>, resume: bool| -> Vec<hla_train::RunEnd> {
        let hs: Vec<_> = local_groups(2)
            .into_iter()
            .map(|g| {
                let (cfg, dir) = (cfg.clone(), dir.clone());
                std::thread::spawn(move || {
                    let ck = resume.then(|| {
                        hla_train::checkpoint::Checkpoint::load(&dir.join("checkpoint.safetensors"))
                            .unwrap()
                    });
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .unwrap();
                    pool.install(|| {
                        let o = opts(Some(g), stop);
                        hla_train::run::quantize(
                            &cfg,
                            &dir,
                            ck.as_ref(),
                            &o,
                            &mut hla_train::run::Silent,
                        )
                        .unwrap()
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    };
    for end in ranks(Some(1), false) {
        assert!(
            matches!(end, hla_train::RunEnd::StoppedEarly { epochs: 1 }),
            "{end:?}"
        );
    }
    for end in ranks(None, true) {
        let s = summary(end);
        assert_eq!(s.hash, one.hash);
        assert_eq!(s.records.len(), one.records.len());
        for (a, b) in s.records.iter().zip(&one.records) {
            let key = |r: &hla_train::metrics::EpochRecord| {
                (
                    r.step,
                    r.train_loss.to_bits(),
                    r.train_top1.to_bits(),
                    r.test_top1.to_bits(),
                    r.sparsity.map(f64::to_bits),
                )
            };
            assert_eq!(key(a), key(b), "record {} of {}", a.epoch, a.phase);
        }
    }
    assert!(dir.join("metrics.jsonl").is_file() && dir.join("hist-ternary.json").is_file());

    let four: Vec<_> = local_groups(4)
        .into_iter()
        .map(|g| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let dir = scratch(&format!("four-{}", g.rank()));
                hla_train::run::quantize(
                    &cfg,
                    &dir,
                    None,
                    &opts(Some(g), None),
                    &mut hla_train::run::Silent,
                )
                .err()
                .map(|e| e.to_string())
            })
        })
        .collect();
    for h in four {
        let e = h
            .join()
            .unwrap()
            .expect("4 ranks cannot split a batch of 16");
        assert!(e.contains("leaves rank 2 without samples"), "{e}");
    }
}

/// Bits of every parameter (not the BN running statistics) of a model.
fn param_bits(m: &dyn Model) -> Vec<u32> {
    m.params()
        .iter()
        .flat_map(|(_, p)| p.value().iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        .collect()
}

/// Per-rank BatchNorm statistics (`train.sync_bn = false`, DDP's default): the ranks still end
/// with the same parameters (every gradient, BN's affine ones included, is summed across them),
/// but not with the single-process ones, and their running statistics differ.
#[test]
fn per_rank_batch_norm_keeps_ranks_in_step_but_is_another_result() {
    let run = |group: Option<Group>, local: bool| {
        let mut l = Learner::new(
            hla_models::build("resnet8", 10, 3).unwrap(),
            None,
            &HlaConfig::default(),
        );
        l.group = group.clone();
        l.local_bn = local;
        for step in 0..3 {
            let (x, y) = global_batch(step, 32, 16);
            let rows = group.as_ref().map_or(0..32, |g| g.rows(32));
            let x = x.slice_axis(Axis(0), Slice::from(rows.clone())).to_owned();
            l.train_step(x, &y[rows], 0.05).unwrap();
        }
        (param_bits(l.model.as_ref()), model_hash(l.model.as_ref()))
    };
    let one = run(None, true);
    let hs: Vec<_> = local_groups(2)
        .into_iter()
        .map(|g| std::thread::spawn(move || run(Some(g), true)))
        .collect();
    let ranks: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(ranks[0].0, ranks[1].0, "parameters agree across ranks");
    assert_ne!(ranks[0].1, ranks[1].1, "running statistics are per rank");
    assert_ne!(ranks[0].0, one.0, "per-rank statistics are another result");
    assert_eq!(
        run(None, false),
        one,
        "without a group the option changes nothing"
    );
}

/// The loader and the kernels cut a global batch the same way (the data crate has its own copy
/// of the rule: it does not depend on the kernels).
#[test]
fn loader_shards_and_group_rows_agree() {
    assert_eq!(hla_data::SHARD_ALIGN, hla_tensor::DW_CHUNK);
    for world in 1..=5 {
        for rank in 0..world {
            for n in 0..200 {
                let shard = hla_data::Shard { rank, world };
                assert_eq!(shard.rows(n), hla_tensor::group::shard_rows(n, rank, world));
            }
        }
    }
}
