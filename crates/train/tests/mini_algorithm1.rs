//! A miniature Algorithm 1 end to end for FP, TWN, TTQ and HLA on CIFAR ResNet-20 with synthetic
//! 8×8 data (two steps per epoch, one epoch per stage-1 sub-stage, two stage-2 epochs): checks
//! the realised sparsity against the configured thresholds, the α·√nnz = 1 invariant after
//! stage 2, and that inference from the packed 2-bit file reproduces the fake-quantised logits.

use hla_core::algorithm::Phase;
use hla_core::config::{HlaConfig, Method};
use hla_core::export::PackedModel;
use hla_core::method::MethodState;
use hla_core::packed::{alpha_sqrt_nnz, export_model, load_packed};
use hla_models::Model;
use hla_train::{eval, Learner};
use ndarray::ArrayD;
use rand::{Rng, SeedableRng};

const STEPS: usize = 2;

/// Synthetic batch: the label is the quadrant-brightness argmax (learnable, deterministic).
fn batch(seed: u64) -> (ArrayD<f32>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = 4;
    let x = ArrayD::from_shape_fn(vec![n, 3, 8, 8], |_| rng.random_range(-1.0f32..1.0));
    let y = (0..n)
        .map(|i| (x[[i, 0, 0, 0]] > 0.0) as usize + 2 * (x[[i, 1, 0, 0]] > 0.0) as usize)
        .collect();
    (x, y)
}

struct Outcome {
    model: Box<dyn Model>,
    st: MethodState,
    stage1_sparsity: Vec<(u32, f64)>,
}

fn run(method: Method) -> Outcome {
    let cfg = HlaConfig {
        method,
        stage1_epochs_per_stage: 1.0,
        stage2_epochs: 2.0,
        sgdr_t0_epochs: 1.0,
        ..Default::default()
    };
    let model = hla_models::build("resnet20", 10, 5).unwrap();
    let mut st = MethodState::new(cfg.clone(), model.as_ref()).unwrap();
    st.algo.set_steps_per_epoch(STEPS as u64).unwrap();
    let mut l = Learner::new(model, Some(st), &cfg);
    let mut k = 0;
    let mut stage1_sparsity = Vec::new();
    while !l.is_done() {
        // at the first step of a sub-stage, Δ = T(t) has just been computed
        let plan = l.begin_segment().unwrap().unwrap();
        let st = l.state().unwrap();
        if plan.phase == Phase::Stage1 && plan.needs_delta {
            let m = st.metrics(l.model.as_ref()).unwrap();
            stage1_sparsity.push((plan.t_pct.unwrap(), m.sparsity));
        }
        let (x, y) = batch(k);
        k += 1;
        let lr = st.lr().unwrap();
        let s = l.train_step(x, &y, lr).unwrap();
        assert!(s.loss.is_finite() && s.ce.is_finite(), "{method:?}: {s:?}");
        if method != Method::Hla {
            assert_eq!(s.ld, 0.0);
        }
        l.end_segment();
    }
    let Learner { model, method, .. } = l;
    Outcome {
        model,
        st: method.unwrap(),
        stage1_sparsity,
    }
}

/// Exports, reloads into a differently initialised model and compares eval logits bit for bit.
fn packed_matches(o: &mut Outcome) -> PackedModel {
    let pm = export_model(o.model.as_ref(), &o.st).unwrap();
    let back = PackedModel::from_bytes(&pm.to_bytes().unwrap(), "mem").unwrap();
    let (x, _) = batch(1000);
    let want = eval::logits(o.model.as_mut(), o.st.hook_mut(), x.clone()).unwrap();
    let mut fresh = hla_models::build("resnet20", 10, 123).unwrap();
    let got = load_packed(fresh.as_mut(), &back)
        .unwrap()
        .eval_logits(fresh.as_mut(), x)
        .unwrap();
    let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want));
    let r = back.size_report();
    assert!(r.ratio >= 14.0, "{r:?}");
    back
}

#[test]
fn hla_miniature_algorithm1() {
    let mut o = run(Method::Hla);
    // stage 1: the global zero_based threshold at t zeroes ⌊tN⌋ + 1 weights at each sub-stage start
    let ts: Vec<u32> = o.stage1_sparsity.iter().map(|p| p.0).collect();
    assert_eq!(ts, vec![30, 34, 38, 42, 46, 50, 54, 58, 62, 66]);
    for &(t, s) in &o.stage1_sparsity {
        assert!(
            (s - t as f64 / 100.0).abs() < 0.002,
            "t = {t}: sparsity {s}"
        );
    }
    // stage 2: Δ̄ started at T(80) and moved little in 4 steps; every Δ̄ ≥ 0
    let m = o.st.metrics(o.model.as_ref()).unwrap();
    assert!(
        (m.sparsity - 0.80).abs() < 0.03,
        "stage-2 sparsity {}",
        m.sparsity
    );
    assert!(o.st.delta_bars().iter().all(|&d| d >= 0.0));
    let pm = packed_matches(&mut o);
    for l in &pm.layers {
        for v in alpha_sqrt_nnz(l).unwrap() {
            assert!(
                v == 0.0 || (v - 1.0).abs() < 1e-6,
                "{}: α·√nnz = {v}",
                l.name
            );
        }
    }
}

#[test]
fn twn_miniature() {
    let mut o = run(Method::Twn);
    let m = o.st.metrics(o.model.as_ref()).unwrap();
    // Δ = 0.7·mean|W| on bell-shaped weights zeroes roughly 35–45 %
    assert!(m.sparsity > 0.25 && m.sparsity < 0.6, "{}", m.sparsity);
    let pm = packed_matches(&mut o);
    for l in &pm.layers {
        // one α per tensor, symmetric
        assert!(l.alpha_neg.is_none());
        assert!(l.alpha.iter().all(|&a| a == l.alpha[0]));
    }
}

#[test]
fn ttq_miniature() {
    let mut o = run(Method::Ttq);
    let m = o.st.metrics(o.model.as_ref()).unwrap();
    // Δ = 0.05·max|W| zeroes only the smallest few percent
    assert!(m.sparsity > 0.0 && m.sparsity < 0.25, "{}", m.sparsity);
    // the scales were trained (moved from their initial 1.0) and stay ≥ 0
    let moved =
        o.st.hook
            .layers
            .iter()
            .any(|l| l.ttq_wp.value()[[0]] != 1.0);
    assert!(moved);
    assert!(o
        .st
        .hook
        .layers
        .iter()
        .all(|l| l.ttq_wp.value()[[0]] >= 0.0 && l.ttq_wn.value()[[0]] >= 0.0));
    packed_matches(&mut o);
}

#[test]
fn fp_miniature() {
    let o = run(Method::Fp);
    assert!(o.st.metrics(o.model.as_ref()).unwrap().layers.is_empty());
    assert!(export_model(o.model.as_ref(), &o.st).is_err());
}
