//! The method driven through the engine's training step on synthetic data: L_d on the tape,
//! resume inside stage 2, a whole miniature HLA run with export, and the A18 gain on a tiny net
//! whose quantised fc has no BatchNorm after it.

use hla_core::algorithm::Phase;
use hla_core::config::{HlaConfig, Method};
use hla_core::method::MethodState;
use hla_core::packed::{alpha_sqrt_nnz, export_model, load_packed};
use hla_core::ternary::ternarize_rows;
use hla_core::tinynet::TinyNet;
use hla_models::Model;
use hla_train::{eval, Learner, StepStats};
use ndarray::ArrayD;
use rand::{Rng, SeedableRng};

fn batch(seed: u64, n: usize) -> (ArrayD<f32>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = ArrayD::from_shape_fn(vec![n, 3, 8, 8], |_| rng.random_range(-1.0f32..1.0));
    let y = (0..n).map(|_| rng.random_range(0..10)).collect();
    (x, y)
}

fn small_cfg(method: Method) -> HlaConfig {
    HlaConfig {
        method,
        stage1_epochs_per_stage: 1.0,
        stage2_epochs: 2.0,
        sgdr_t0_epochs: 1.0,
        ..Default::default()
    }
}

/// A learner for `cfg` whose epochs have `steps` steps.
fn learner(model: Box<dyn Model>, cfg: &HlaConfig, steps: u64) -> Learner {
    let mut st = MethodState::new(cfg.clone(), model.as_ref()).unwrap();
    st.algo.set_steps_per_epoch(steps).unwrap();
    Learner::new(model, Some(st), cfg)
}

fn st(l: &Learner) -> &MethodState {
    l.method.as_ref().unwrap()
}

fn begin(l: &mut Learner) -> hla_core::algorithm::SegmentPlan {
    l.begin_segment().unwrap().unwrap()
}

/// One epoch of `steps` batches (seeds from `seed`), each step preceded by `begin_segment` and
/// followed by `end_segment` (a no-op until the segment's steps are done).
fn epoch(l: &mut Learner, steps: usize, seed: u64) -> Vec<StepStats> {
    let mut out = Vec::new();
    for i in 0..steps {
        begin(l);
        let (x, y) = batch(seed + i as u64, 4);
        let lr = st(l).lr().unwrap();
        out.push(l.train_step(x, &y, lr).unwrap());
        l.end_segment();
    }
    out
}

/// Stage 1's L_d from the tape equals the plain Σ_l L_d^l of the normalised weights with
/// Ternary(W, Δ) at the global threshold T(30).
#[test]
fn stage1_ld_on_tape_matches_plain_sum() {
    let mut l = learner(
        hla_models::build("resnet20", 10, 1).unwrap(),
        &small_cfg(Method::Hla),
        1,
    );
    let plan = begin(&mut l);
    assert_eq!(plan.t_pct, Some(30));
    let s0 = st(&l);
    let ws = s0.normalized_weights(l.model.as_ref()).unwrap();
    let d = s0.algo.delta.clone().unwrap();
    assert!(d.windows(2).all(|p| p[0] == p[1]), "global scope: one Δ");
    let mut want = 0.0f64;
    for (w, &dl) in ws.iter().zip(&d) {
        let q = ternarize_rows(w.view(), dl as f32, s0.cfg.empty_row).dequantize();
        want += hla_core::ld::ld_layer(w.mapv(|v| v as f64).view(), q.mapv(|v| v as f64).view()).0;
    }
    let (x, y) = batch(0, 4);
    let s = l.train_step(x, &y, 0.01).unwrap();
    assert!(
        (s.ld - want).abs() < 1e-5 * want.max(1.0),
        "{} vs {want}",
        s.ld
    );
    assert!((s.loss - s.ce - s.ld).abs() < 1e-5);
    // the global zero_based threshold zeroes ⌊0.3N⌋ + 1 of N weights (no ties in random init)
    let m = st(&l).metrics(l.model.as_ref()).unwrap();
    let n: usize = m.layers.iter().map(|l| l.rows * l.fan_in).sum();
    let zeros: usize = m.layers.iter().map(|l| l.zeros).sum();
    assert!(zeros >= 1, "{zeros}");
    assert!(((zeros as f64 / n as f64) - 0.3).abs() < 0.01);
    // Sim at t = 30 before the step equals the stage-1 metric's mean cosine at Δ = T(30)
    let fresh = hla_models::build("resnet20", 10, 1).unwrap();
    let mut st2 = MethodState::new(small_cfg(Method::Hla), fresh.as_ref()).unwrap();
    st2.algo.set_steps_per_epoch(1).unwrap();
    st2.begin_segment(fresh.as_ref()).unwrap();
    let sim = st2.sim_at(fresh.as_ref(), 30).unwrap();
    assert_eq!(sim, st2.metrics(fresh.as_ref()).unwrap().sim);
    assert!(sim > 0.0 && sim < 1.0);
}

/// Copies every parameter and buffer of `src` into `dst` (same architecture).
fn copy_state(src: &dyn Model, dst: &mut dyn Model) {
    use hla_models::{BufferMut, BufferRef, StateMut, StateRef};
    let vals: Vec<_> = src
        .state()
        .into_iter()
        .map(|(_, s)| match s {
            StateRef::Param(p) => (Some(p.value().clone()), None, None),
            StateRef::Buffer(BufferRef::F32(a)) => (None, Some(a.clone()), None),
            StateRef::Buffer(BufferRef::Count(c)) => (None, None, Some(c)),
        })
        .collect();
    for ((_, d), v) in dst.state_mut().into_iter().zip(vals) {
        match (d, v) {
            (StateMut::Param(p), (Some(a), _, _)) => *p.value_mut() = a,
            (StateMut::Buffer(BufferMut::F32(b)), (_, Some(a), _)) => b.assign(&a),
            (StateMut::Buffer(BufferMut::Count(c)), (_, _, Some(n))) => *c = n,
            _ => panic!("state layouts differ"),
        }
    }
}

/// Checkpoint after 11 epochs (inside stage 2, Δ̄ trained), resume in a fresh process-like
/// setup (JSON round trip of the method state, copied model state and SGD buffers): the
/// resumed run ends bit-identical to the uninterrupted one.
#[test]
fn resume_mid_stage2_is_bit_identical() {
    let cfg = HlaConfig {
        stage2_epochs: 3.0,
        ..small_cfg(Method::Hla)
    };
    let mut a = learner(hla_models::build("resnet20", 10, 3).unwrap(), &cfg, 2);
    for e in 0..11 {
        epoch(&mut a, 2, e * 10);
    }
    assert_eq!(st(&a).algo.phase, Phase::Stage2);
    let ck = serde_json::to_string(&st(&a).checkpoint()).unwrap();
    let mut b = learner(hla_models::build("resnet20", 10, 99).unwrap(), &cfg, 2);
    copy_state(a.model.as_ref(), b.model.as_mut());
    b.method
        .as_mut()
        .unwrap()
        .restore(&serde_json::from_str(&ck).unwrap())
        .unwrap();
    b.sgd.load_state(a.sgd.state().to_vec()).unwrap();
    let mut e = 11;
    while !st(&a).algo.is_done() {
        epoch(&mut a, 2, e * 10);
        epoch(&mut b, 2, e * 10);
        e += 1;
    }
    assert!(st(&b).algo.is_done());
    assert_eq!(st(&a).checkpoint(), st(&b).checkpoint());
    for ((n, p), (_, q)) in a.model.params().into_iter().zip(b.model.params()) {
        let bits = |x: &ArrayD<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(p.value()), bits(q.value()), "{n}");
    }
}

/// A full miniature HLA run; after stage 2 every non-empty row has α·√nnz = 1, the packed
/// file is ≥ 14× smaller than f32 for the quantised layers, and inference from the packed
/// form reproduces the fake-quantised model's logits bit for bit.
#[test]
fn hla_run_export_and_packed_inference_match() {
    let mut l = learner(
        hla_models::build("resnet20", 10, 2).unwrap(),
        &small_cfg(Method::Hla),
        1,
    );
    let mut stats = Vec::new();
    let mut k = 0;
    while !st(&l).algo.is_done() {
        stats.extend(epoch(&mut l, 1, k));
        k += 1;
    }
    assert_eq!(stats.len(), 12);
    assert!(stats.iter().all(|s| s.loss.is_finite()));
    assert!(st(&l).delta_bars().iter().all(|&d| d >= 0.0));
    let m = st(&l).metrics(l.model.as_ref()).unwrap();
    assert!((m.sparsity - 0.8).abs() < 0.05, "sparsity {}", m.sparsity);
    let pm = export_model(l.model.as_ref(), st(&l)).unwrap();
    for layer in &pm.layers {
        for (j, v) in alpha_sqrt_nnz(layer).unwrap().into_iter().enumerate() {
            assert!(
                v == 0.0 || (v - 1.0).abs() < 1e-6,
                "{} row {j}: α√nnz = {v}",
                layer.name
            );
        }
    }
    assert!(pm.size_report().ratio >= 14.0, "{:?}", pm.size_report());
    let bytes = pm.to_bytes().unwrap();
    let back = hla_core::export::PackedModel::from_bytes(&bytes, "mem").unwrap();
    let (x, _) = batch(99, 3);
    let (m, h) = l.parts();
    let want = eval::logits(m, h, x.clone()).unwrap();
    let mut fresh = hla_models::build("resnet20", 10, 77).unwrap();
    let mut hook = load_packed(fresh.as_mut(), &back).unwrap();
    let got = hook.eval_logits(fresh.as_mut(), x.clone()).unwrap();
    let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want));
    let chained = check_a8(
        fresh.as_mut(),
        back,
        vec![batch(5, 8).0, batch(6, 8).0],
        x,
        &want,
    );
    // each block's conv1 → conv2, and conv2 (with the shortcut summed in its epilogue) → the
    // next block's conv1 where that block's shortcut is the identity (6 of 8)
    assert_eq!(
        chained, 15,
        "conv1 → conv2 in 9 blocks, block → block 6 times"
    );
}

/// W2A8 inference of `pm` (calibrated on `calib`) on `x` against the exact logits `want`:
/// every integer kernel and thread mode gives the same bits, and the 8-bit activations move
/// the logits by less than 5 % (relative L2; 8-bit steps are 1/255 of each layer's range).
/// Without a calibration the W2A8 hook is an error that says so. Returns how many layers per
/// forward took their input codes from the previous layer's epilogue.
fn check_a8(
    model: &mut dyn Model,
    mut pm: hla_core::export::PackedModel,
    calib: Vec<ArrayD<f32>>,
    x: ArrayD<f32>,
    want: &ArrayD<f32>,
) -> usize {
    use hla_core::a8::{calibrate, load_a8};
    use hla_tensor::ternary_conv::Int8Isa;
    let e = load_a8(model, &pm).unwrap_err().to_string();
    assert!(e.contains("calibrate"), "{e}");
    let c = calibrate(model, &pm, calib).unwrap();
    assert_eq!(c.layers.len(), pm.layers.len());
    c.store(&mut pm);
    let back = hla_core::export::PackedModel::from_bytes(&pm.to_bytes().unwrap(), "mem").unwrap();
    assert_eq!(hla_core::a8::Calibration::of(&back).unwrap(), Some(c));
    let mut first: Option<ArrayD<f32>> = None;
    for isa in Int8Isa::available() {
        for par in [hla_autograd::Par::Seq, hla_autograd::Par::Rayon] {
            let mut h = load_a8(model, &back).unwrap().with_kernel(isa, par);
            let got = h.eval_logits(model, x.clone()).unwrap();
            match &first {
                None => first = Some(got),
                Some(f) => assert_eq!(f, &got, "{isa:?} {par:?}"),
            }
        }
    }
    let got = first.unwrap();
    let l2 = |a: &ArrayD<f32>| a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    // BN folded into the epilogue (the default) against BN and activation as separate f32 ops:
    // the same function up to float reassociation
    let mut h = load_a8(model, &back).unwrap().with_bn_folding(false);
    let unfused = h.eval_logits(model, x.clone()).unwrap();
    assert_eq!(h.fused_calls(), 0);
    // the shortcut summed in the last conv's epilogue against the model's sum after it
    let mut h = load_a8(model, &back).unwrap().with_sum_epilogue(false);
    let apart = h.eval_logits(model, x.clone()).unwrap();
    let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&apart), bits(&got), "sum in the epilogue");
    // later forwards take chained layers' input codes from the previous layer's epilogue:
    // the same bits as the first forward's quantiser passes, for this input and another
    let mut h = load_a8(model, &back).unwrap();
    assert_eq!(h.eval_logits(model, x.clone()).unwrap(), got);
    assert_eq!(
        h.reused_codes(),
        0,
        "nothing is learnt before the first forward ends"
    );
    assert_eq!(h.eval_logits(model, x.clone()).unwrap(), got);
    let per_forward = h.reused_codes();
    let x2 = x.mapv(|v| 0.5 - v);
    let fresh = load_a8(model, &back)
        .unwrap()
        .eval_logits(model, x2.clone());
    assert_eq!(h.eval_logits(model, x2).unwrap(), fresh.unwrap());
    assert_eq!(h.reused_codes(), 2 * per_forward);
    let fold_err = l2(&(&got - &unfused)) / l2(&unfused);
    assert!(fold_err < 1e-3, "BN folding moved the logits by {fold_err}");
    let err = l2(&(&got - want)) / l2(want);
    assert!(err < 0.05 && got != *want, "relative error {err}");
    per_forward
}

fn tiny_x(seed: u64) -> ArrayD<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    ArrayD::from_shape_fn(vec![4, 3, 6, 5], |_| rng.random_range(-1.0f32..1.0))
}

/// A18: with only the BN-less fc quantised, the converted model (w = v/‖v‖ times the gain
/// ‖v‖, no input normalisation, bias kept) computes the pretrained function at the start of
/// stage 1, up to f32 rounding.
#[test]
fn a18_gain_reproduces_pretrained_function() {
    let mut m = TinyNet::new(1);
    let cfg = HlaConfig {
        skip_layers: Some(vec!["c1".into()]),
        ..Default::default()
    };
    let mut st = MethodState::new(cfg, &m).unwrap();
    assert_eq!(st.hook.layers.len(), 1);
    assert!(st.hook.layers[0].gain.is_some());
    st.algo.set_steps_per_epoch(1).unwrap();
    st.begin_segment(&m).unwrap();
    let plain = eval::logits(&mut m, None, tiny_x(2)).unwrap();
    let hooked = eval::logits(&mut m, st.hook_mut(), tiny_x(2)).unwrap();
    for (a, b) in plain.iter().zip(hooked.iter()) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
    }
}

/// Full miniature HLA on the tiny net: the gain is trained, and the packed model (conv with
/// input normalisation, linear with gain and bias) reproduces the fake-quantised logits bit
/// for bit.
#[test]
fn tinynet_hla_gain_trained_and_packed_inference_matches() {
    let cfg = HlaConfig {
        stage1_epochs_per_stage: 1.0,
        stage2_epochs: 1.0,
        sgdr_t0_epochs: 1.0,
        method: Method::Hla,
        ..Default::default()
    };
    let mut l = learner(Box::new(TinyNet::new(3)), &cfg, 1);
    let g0 = st(&l).hook.layers[1].gain.as_ref().unwrap().value().clone();
    let mut k = 0;
    while !st(&l).algo.is_done() {
        begin(&mut l);
        let lr = st(&l).lr().unwrap();
        let y = vec![0, 1, 2, (k % 3) as usize];
        l.train_step(tiny_x(10 + k), &y, lr).unwrap();
        k += 1;
        l.end_segment();
    }
    assert_ne!(st(&l).hook.layers[1].gain.as_ref().unwrap().value(), &g0);
    let pm = export_model(l.model.as_ref(), st(&l)).unwrap();
    assert!(pm.dense.contains_key("fc.hla_gain"));
    assert!(!pm.dense.contains_key("fc.weight") && pm.dense.contains_key("fc.bias"));
    let (m, h) = l.parts();
    let want = eval::logits(m, h, tiny_x(5)).unwrap();
    let mut fresh = TinyNet::new(8);
    let got = load_packed(&mut fresh, &pm)
        .unwrap()
        .eval_logits(&mut fresh, tiny_x(5))
        .unwrap();
    assert_eq!(got, want);
    check_a8(
        &mut fresh,
        pm,
        vec![tiny_x(20), tiny_x(21)],
        tiny_x(5),
        &want,
    );
    // the plain forward of the fresh net differs (the packed hook is what computes it)
    let plain = eval::logits(&mut fresh, None, tiny_x(5)).unwrap();
    assert_ne!(plain, want);
}

/// A27 `ttq_normalize_init` (default on): each quantised layer's latent weights are divided once
/// by their max|W| (so max|W| = 1 exactly); the ternary assignment does not change. Off: the
/// weights are left as they are.
#[test]
fn ttq_normalize_init_scales_latent_weights_and_keeps_the_assignment() {
    let cfg = HlaConfig {
        method: Method::Ttq,
        ..Default::default()
    };
    assert!(cfg.ttq_normalize_init);
    let mut model = hla_models::build("resnet20", 10, 4).unwrap();
    let st = MethodState::new(cfg.clone(), model.as_ref()).unwrap();
    let pattern = |st: &MethodState, m: &dyn Model| -> Vec<Vec<i8>> {
        st.quantized(m)
            .unwrap()
            .iter()
            .map(|q| q.what.iter().map(|&v| v.signum() as i8).collect())
            .collect()
    };
    let before = pattern(&st, model.as_ref());
    let names: Vec<String> = st
        .hook
        .layers
        .iter()
        .map(|l| l.info.weight.clone())
        .collect();
    let first_fp = model.params()[0].1.value().clone(); // conv1: not quantised
    st.prepare_weights(model.as_mut()).unwrap();
    for (n, p) in model.params() {
        if names.contains(&n) {
            let m = p.value().iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            assert_eq!(m, 1.0, "{n}");
        }
    }
    assert_eq!(model.params()[0].1.value(), &first_fp);
    assert_eq!(pattern(&st, model.as_ref()), before);
    let off = HlaConfig {
        ttq_normalize_init: false,
        ..cfg
    };
    let mut m2 = hla_models::build("resnet20", 10, 4).unwrap();
    let w0 = m2.params()[3].1.value().clone();
    MethodState::new(off, m2.as_ref())
        .unwrap()
        .prepare_weights(m2.as_mut())
        .unwrap();
    assert_eq!(m2.params()[3].1.value(), &w0);
}

/// A23: a `skip_layers` name that is no quantisable layer is an error naming it; A17
/// `norm_mode = project`: the rows are on the unit sphere from the start, not only after the
/// first step.
#[test]
fn unknown_skip_layer_is_an_error_and_project_starts_on_the_sphere() {
    let model = hla_models::build("resnet20", 10, 4).unwrap();
    let bad = HlaConfig {
        skip_layers: Some(vec!["layer1.0.conv1".into(), "layer9.conv".into()]),
        ..Default::default()
    };
    let e = MethodState::new(bad, model.as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("skip_layers") && e.contains("layer9.conv"),
        "{e}"
    );
    let cfg = HlaConfig {
        norm_mode: hla_core::config::NormMode::Project,
        ..Default::default()
    };
    let mut model = model;
    let st = MethodState::new(cfg, model.as_ref()).unwrap();
    st.prepare_weights(model.as_mut()).unwrap();
    for w in st.normalized_weights(model.as_ref()).unwrap() {
        for row in w.outer_iter() {
            let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-5, "row norm {n}");
        }
    }
}

/// Table 4's Sim on a hand-checkable layer: only the 3 × 6 fc of the tiny net is quantised, its
/// rows are 18..13, 12..7 and 6..1, so the global T(t) = a[⌊18t⌋] of the sorted |w| is 10 at
/// t = 0.5 and 17 at t = 0.9. At t = 0.5 row 0 keeps all six entries (cos = Σw / (‖w‖√6)), row 1
/// keeps 12 and 11 (cos = 23 / (‖w‖√2)) and row 2 none (cos 0); Sim is their mean.
#[test]
fn table4_sim_at_several_t_by_hand() {
    let mut m = TinyNet::new(1);
    for (n, p) in m.params_mut() {
        if n == "fc.weight" {
            *p.value_mut() =
                ArrayD::from_shape_vec(vec![3, 6], (1..=18).rev().map(|v| v as f32).collect())
                    .unwrap();
        }
    }
    let cfg = HlaConfig {
        skip_layers: Some(vec!["c1".into()]),
        ..Default::default()
    };
    let st = MethodState::new(cfg, &m).unwrap();
    let norm = |r: &[f64]| r.iter().map(|v| v * v).sum::<f64>().sqrt();
    let r0: Vec<f64> = (13..=18).map(|v| v as f64).collect();
    let r1: Vec<f64> = (7..=12).map(|v| v as f64).collect();
    let want50 = (93.0 / (norm(&r0) * 6f64.sqrt()) + 23.0 / (norm(&r1) * 2f64.sqrt())) / 3.0;
    let want90 = (18.0 / norm(&r0)) / 3.0;
    let got50 = st.sim_of(&m, 50, false).unwrap();
    let got90 = st.sim_of(&m, 90, false).unwrap();
    assert!((got50 - want50).abs() < 1e-6, "{got50} vs {want50}");
    assert!((got90 - want90).abs() < 1e-6, "{got90} vs {want90}");
    // unit rows rank entries within their row's scale: every row keeps some entries at t = 0.5
    let n50 = st.sim_of(&m, 50, true).unwrap();
    assert!(n50 > got50 && n50 < 1.0, "{n50}");
}

/// W2A8 on the other layer kinds: TTQ's asymmetric scales on ResNet-20, and TWN on
/// MobileNetV2 (depthwise and 1×1 convs, signed inputs after the linear bottlenecks, so
/// non-zero zero points, and a quantised fc).
#[test]
fn a8_inference_of_ttq_resnet_and_twn_mobilenet() {
    for (arch, method, hw) in [
        ("resnet20", Method::Ttq, 8),
        ("mobilenet_v2", Method::Twn, 32),
    ] {
        let mut model = hla_models::build(arch, 10, 4).unwrap();
        let cfg = HlaConfig {
            method,
            ..Default::default()
        };
        let mut st = MethodState::new(cfg, model.as_ref()).unwrap();
        st.prepare_weights(model.as_mut()).unwrap();
        let img = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            ArrayD::from_shape_fn(vec![2, 3, hw, hw], |_| rng.random_range(-1.0f32..1.0))
        };
        // BN statistics of the ternary network (a random net's activations otherwise vanish
        // layer after layer, and 8-bit grids of a vanishing signal measure nothing)
        for k in 0..40 {
            let mut tape = hla_autograd::Tape::<f32>::no_grad();
            let x = tape.constant(img(100 + k));
            model
                .forward(&mut tape, x, hla_models::Mode::Train, st.hook_mut())
                .unwrap();
        }
        let mut pm = export_model(model.as_ref(), &st).unwrap();
        if method == Method::Ttq {
            // TTQ starts with W⁺ = W⁻; make the scales asymmetric as training would
            for l in &mut pm.layers {
                let neg = l.alpha.iter().map(|a| 0.7 * a).collect();
                l.alpha_neg = Some(neg);
            }
        }
        let mut fresh = hla_models::build(arch, 10, 9).unwrap();
        let want = load_packed(fresh.as_mut(), &pm)
            .unwrap()
            .eval_logits(fresh.as_mut(), img(1))
            .unwrap();
        let c = hla_core::a8::calibrate(fresh.as_mut(), &pm, vec![img(2)]).unwrap();
        if arch == "mobilenet_v2" {
            assert!(c.layers.values().any(|q| q.zero > 0), "signed inputs");
        }
        let chained = check_a8(fresh.as_mut(), pm, vec![img(2), img(3)], img(1), &want);
        assert!(chained > 0, "{arch}: no conv → conv chain found");
    }
}
