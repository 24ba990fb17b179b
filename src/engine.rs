//! The training engine: data sets and loaders from the config, the per-step forward / loss /
//! backward / SGD update, evaluation (top-1 / top-5), BN re-estimation, and the conversion of a
//! model's state, optimizer state and method state to and from checkpoint tensors.
//!
//! The epoch loop drives a [`Trainee`]: [`FpTrainee`] for full-precision training, and the
//! method state of crates/hla (hook, Algorithm 1, Δ̄ / TTQ parameters) for quantisation.

use crate::checkpoint::{Checkpoint, Tensor, TensorData};
use crate::config::{resolve_path, BadImagePolicy, Config, DataFormat};
use crate::metrics::LayerRecord;
use anyhow::{bail, Context, Result};
use hla_autograd::optim::{ParamGroup, Sgd, SgdConfig};
use hla_autograd::schedule::{Constant, Cosine, CosineWarmRestarts, LrSchedule};
use hla_autograd::{ops, Tape, Var};
use hla_data::{
    Cifar10, Dataset, ErrorPolicy, ImageFolder, ImageFolderOptions, ImageSet, ImageTransform,
    Loader, LoaderConfig, Normalize, PixelTransform,
};
use hla_models::{BufferMut, BufferRef, LayerHook, Mode, Model, StateMut, StateRef};
use ndarray::{ArrayD, ArrayViewMut3, Axis};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::Arc;

/// CIFAR-10 per-channel mean (of the training set, the usual constants).
pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 per-channel standard deviation.
pub const CIFAR_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// The first `n` samples of a data set.
struct Prefix {
    inner: Arc<dyn Dataset>,
    n: usize,
}

impl Dataset for Prefix {
    fn len(&self) -> usize {
        self.n
    }
    fn label(&self, index: usize) -> usize {
        self.inner.label(index)
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn sample_shape(&self) -> [usize; 3] {
        self.inner.sample_shape()
    }
    fn load(
        &self,
        index: usize,
        rng: &mut ChaCha8Rng,
        out: ArrayViewMut3<f32>,
    ) -> hla_data::Result<()> {
        self.inner.load(index, rng, out)
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
}

fn limit(d: Arc<dyn Dataset>, n: Option<usize>) -> Arc<dyn Dataset> {
    match n {
        Some(n) if n < d.len() => Arc::new(Prefix { inner: d, n }),
        _ => d,
    }
}

/// Train and test loaders of a run.
pub struct Data {
    /// Shuffled, augmented training batches.
    pub train: Loader,
    /// Test batches in index order, no augmentation.
    pub test: Loader,
    /// Number of classes in the data.
    pub num_classes: usize,
}

impl Data {
    /// A one-line description, e.g. "CIFAR-10 data/cifar10: 5000 train / 1000 test images".
    pub fn describe(&self, cfg: &Config) -> String {
        format!(
            "{} {}: {} train / {} test images, {} classes",
            match cfg.data.format {
                DataFormat::Cifar10 => "CIFAR-10",
                DataFormat::Imagefolder => "ImageFolder",
            },
            cfg.data.root.display(),
            self.train.dataset().len(),
            self.test.dataset().len(),
            self.num_classes
        )
    }
}

/// Opens the data sets named by the config and builds both loaders.
pub fn load_data(cfg: &Config, threads: usize) -> Result<Data> {
    let root = resolve_path(&cfg.data.root);
    let policy = match cfg.data.on_bad_image {
        BadImagePolicy::Error => ErrorPolicy::Error,
        BadImagePolicy::Skip => ErrorPolicy::Skip,
    };
    let (train, test): (Arc<dyn Dataset>, Arc<dyn Dataset>) = match cfg.data.format {
        DataFormat::Cifar10 => {
            let c =
                Cifar10::load(&root).with_context(|| format!("data.root {}", root.display()))?;
            let norm = || Normalize::new(&CIFAR_MEAN, &CIFAR_STD);
            let aug = if cfg.data.augment {
                PixelTransform::cifar_train()
            } else {
                PixelTransform::Eval
            };
            let tr: Arc<ImageSet> = Arc::new(c.train);
            let te: Arc<ImageSet> = Arc::new(c.test);
            (
                Arc::new(hla_data::ArrayDataset::new(tr, aug, norm()?)?),
                Arc::new(hla_data::ArrayDataset::new(
                    te,
                    PixelTransform::Eval,
                    norm()?,
                )?),
            )
        }
        DataFormat::Imagefolder => {
            let opts = |t: ImageTransform| ImageFolderOptions {
                class_index: cfg.data.class_index.as_deref().map(resolve_path),
                on_error: policy,
                transform: t,
                normalize: Normalize::imagenet(),
            };
            let train_t = if cfg.data.augment {
                ImageTransform::train(cfg.data.image_size)
            } else {
                ImageTransform::eval(cfg.data.resize, cfg.data.image_size)
            };
            let eval_t = ImageTransform::eval(cfg.data.resize, cfg.data.image_size);
            let tr = ImageFolder::open(root.join("train"), &opts(train_t))?;
            let te = ImageFolder::open(root.join("val"), &opts(eval_t))?;
            (Arc::new(tr), Arc::new(te))
        }
    };
    let num_classes = train.num_classes();
    if num_classes > cfg.model.num_classes {
        bail!(
            "model.num_classes = {} but the data has {num_classes} classes",
            cfg.model.num_classes
        );
    }
    let train = limit(train, cfg.data.train_limit);
    let test = limit(test, cfg.data.test_limit);
    let base = LoaderConfig {
        batch_size: cfg.data.batch_size,
        seed: cfg.seed,
        shuffle: true,
        drop_last: cfg.data.drop_last,
        threads: threads.max(1),
        prefetch: 2,
        on_error: policy,
        ..LoaderConfig::default()
    };
    let train = Loader::new(train, base.clone())?;
    let test = Loader::new(
        test,
        LoaderConfig {
            batch_size: cfg.data.eval_batch_size,
            shuffle: false,
            drop_last: false,
            ..base
        },
    )?;
    if train.batches_per_epoch() == 0 {
        bail!(
            "data.batch_size = {} is larger than the {} training images (with drop_last)",
            cfg.data.batch_size,
            train.dataset().len()
        );
    }
    Ok(Data {
        train,
        test,
        num_classes,
    })
}

/// Something the epoch loop can train and evaluate: a model with its optimizer and, for the
/// quantisation methods, the method state of crates/hla.
pub trait Trainee {
    /// One optimizer step on a batch; `step` is the phase's step index (LR schedule position).
    fn step(
        &mut self,
        images: ndarray::Array4<f32>,
        labels: &[usize],
        step: u64,
    ) -> Result<StepStats>;
    /// The learning rate of step `step`.
    fn lr(&self, step: u64) -> f64;
    /// The model and the hook its forward uses (None = plain full precision).
    fn parts(&mut self) -> (&mut dyn Model, Option<&mut dyn LayerHook>);
    /// Per-layer ternary statistics (empty for full precision).
    fn layer_stats(&mut self) -> Result<Vec<LayerRecord>> {
        Ok(Vec::new())
    }
}

/// Full-precision training: plain model, SGD, a schedule over the phase's steps.
pub struct FpTrainee {
    /// The network.
    pub model: Box<dyn Model>,
    /// Optimizer.
    pub sgd: Sgd<f32>,
    /// Groups of the model's parameters.
    pub groups: Vec<ParamGroup>,
    /// LR schedule.
    pub sched: Sched,
    /// Label smoothing.
    pub label_smoothing: f64,
    /// `train.mode = hyperspherical`: the method state whose hook computes the quantisable
    /// layers with normalised weights and inputs (λ = 0: no L_d; Table 4 "Hypersphere").
    pub hs: Option<hla_core::method::MethodState>,
}

impl FpTrainee {
    /// Sets up hyperspherical layers (hook in hyperspherical mode, λ = 0).
    pub fn enable_hyperspherical(&mut self, cfg: &Config) -> Result<()> {
        let mut h = cfg.hla.clone();
        h.method = hla_core::Method::Hla;
        let mut st = hla_core::method::MethodState::new(h, self.model.as_ref())?;
        st.hook
            .set_mode(hla_core::method::HookMode::Hyperspherical, 0.0);
        self.hs = Some(st);
        Ok(())
    }
}

impl Trainee for FpTrainee {
    fn step(
        &mut self,
        images: ndarray::Array4<f32>,
        labels: &[usize],
        step: u64,
    ) -> Result<StepStats> {
        let lr = self.sched.lr(step);
        if let Some(st) = self.hs.as_mut() {
            let s = hla_core::method::train_step(
                self.model.as_mut(),
                st,
                &mut self.sgd,
                &self.groups,
                images.into_dyn(),
                labels,
                lr,
            )?;
            if !s.loss.is_finite() {
                bail!(
                    "training diverged: loss is {} (lower the learning rate)",
                    s.loss
                );
            }
            let n = s.n as f64;
            return Ok(StepStats {
                loss: s.loss * n,
                ce: s.ce * n,
                ld: s.ld * n,
                correct: s.correct,
                n: s.n,
            });
        }
        train_step(
            self.model.as_mut(),
            &mut self.sgd,
            &self.groups,
            images,
            labels,
            lr,
            self.label_smoothing,
        )
    }
    fn lr(&self, step: u64) -> f64 {
        self.sched.lr(step)
    }
    fn parts(&mut self) -> (&mut dyn Model, Option<&mut dyn LayerHook>) {
        match self.hs.as_mut() {
            Some(st) => {
                st.hook.clear_ld();
                (self.model.as_mut(), st.hook_mut())
            }
            None => (self.model.as_mut(), None),
        }
    }
}

/// Quantisation (HLA / TWN / TTQ): the model, its optimizer, and the method state of
/// crates/hla (hook, Algorithm 1, Δ̄ and TTQ scales with their own optimizers).
pub struct QuantTrainee {
    /// The network.
    pub model: Box<dyn Model>,
    /// Method state.
    pub st: hla_core::method::MethodState,
    /// Optimizer of the model's parameters.
    pub sgd: Sgd<f32>,
    /// Groups of the model's parameters.
    pub groups: Vec<ParamGroup>,
    /// Steps per epoch (the SGDR period is counted in steps).
    pub steps_per_epoch: usize,
    /// Learning rate of the last step.
    pub last_lr: f64,
}

impl QuantTrainee {
    /// Puts the hook of a finished run in its final mode (HLA: ternary forward), so that
    /// evaluation and export see the quantised network.
    pub fn finalize_mode(&mut self) {
        use hla_core::method::HookMode;
        if self.st.algo.is_done() && self.st.cfg.method == hla_core::Method::Hla {
            let l = self.st.cfg.lambda_d;
            self.st.hook.set_mode(HookMode::Ternary, l);
        }
    }
}

impl Trainee for QuantTrainee {
    fn step(
        &mut self,
        images: ndarray::Array4<f32>,
        labels: &[usize],
        _step: u64,
    ) -> Result<StepStats> {
        let lr = self.st.lr(self.steps_per_epoch)?;
        self.last_lr = lr;
        let s = hla_core::method::train_step(
            self.model.as_mut(),
            &mut self.st,
            &mut self.sgd,
            &self.groups,
            images.into_dyn(),
            labels,
            lr,
        )?;
        if !s.loss.is_finite() {
            bail!("training diverged: loss is {} (lower hla.lr)", s.loss);
        }
        let n = s.n as f64;
        Ok(StepStats {
            loss: s.loss * n,
            ce: s.ce * n,
            ld: s.ld * n,
            correct: s.correct,
            n: s.n,
        })
    }
    fn lr(&self, _step: u64) -> f64 {
        self.last_lr
    }
    fn parts(&mut self) -> (&mut dyn Model, Option<&mut dyn LayerHook>) {
        self.st.hook.clear_ld();
        (self.model.as_mut(), self.st.hook_mut())
    }
    fn layer_stats(&mut self) -> Result<Vec<LayerRecord>> {
        let m = self.st.metrics(self.model.as_ref())?;
        Ok(m.layers
            .into_iter()
            .map(|l| LayerRecord {
                layer: l.layer,
                sparsity: l.sparsity,
                cos_sim: l.mean_cos,
                threshold: l.threshold.unwrap_or(f64::NAN),
                empty_rows: l.empty_rows,
                rows: l.rows,
                weights: l.rows * l.fan_in,
            })
            .collect())
    }
}

/// Evaluation only: a model and, for an exported ternary file, the hook computing the
/// quantised layers from the packed codes.
pub struct Inference {
    /// The network.
    pub model: Box<dyn Model>,
    /// Packed-model hook (None = the model's own layers).
    pub hook: Option<hla_core::packed::PackedHook>,
}

impl Trainee for Inference {
    fn step(
        &mut self,
        _images: ndarray::Array4<f32>,
        _labels: &[usize],
        _step: u64,
    ) -> Result<StepStats> {
        bail!("internal: an inference model cannot be trained")
    }
    fn lr(&self, _step: u64) -> f64 {
        0.0
    }
    fn parts(&mut self) -> (&mut dyn Model, Option<&mut dyn LayerHook>) {
        (
            self.model.as_mut(),
            self.hook.as_mut().map(|h| h as &mut dyn LayerHook),
        )
    }
}

/// Loads starting weights from `path`: an hla checkpoint file or run directory, or a plain
/// safetensors state dict (torchvision names).
pub fn load_weights(model: &mut dyn Model, path: &std::path::Path) -> Result<()> {
    let file = crate::checkpoint::checkpoint_file(path);
    if !file.exists() {
        bail!("{}: no such checkpoint or weights file", path.display());
    }
    let bytes = std::fs::read(&file).with_context(|| format!("{}: cannot read", file.display()))?;
    let is_ck = safetensors::SafeTensors::read_metadata(&bytes)
        .ok()
        .and_then(|(_, m)| {
            m.metadata()
                .as_ref()
                .and_then(|md| md.get("format").cloned())
        })
        .is_some_and(|f| f == crate::checkpoint::FORMAT);
    if is_ck {
        let ck = Checkpoint::from_bytes(&bytes, &file)?;
        load_model_tensors(model, &ck)
    } else {
        hla_models::load_safetensors(model, &file, true)
            .with_context(|| format!("{}: cannot load weights", file.display()))
    }
}

/// Builds the model of the config (weights drawn from the run seed) and loads
/// `model.pretrained` if set.
pub fn build_model(cfg: &Config) -> Result<Box<dyn Model>> {
    let mut m = hla_models::build(cfg.model.arch.name(), cfg.model.num_classes, cfg.seed)
        .with_context(|| format!("model.arch = {}", cfg.model.arch))?;
    if let Some(p) = &cfg.model.pretrained {
        let p = resolve_path(p);
        hla_models::load_safetensors(m.as_mut(), &p, true)
            .with_context(|| format!("model.pretrained {}", p.display()))?;
    }
    Ok(m)
}

/// The SGD optimizer and the parameter groups of a model's parameters (weight decay on all,
/// or on all but 1-D parameters — BN affine and biases — when `wd_on_bn = false`).
pub fn optimizer(cfg: &Config, model: &dyn Model, lr: f64) -> (Sgd<f32>, Vec<ParamGroup>) {
    let h = &cfg.hla;
    let sgd = Sgd::new(SgdConfig {
        lr,
        momentum: h.momentum,
        weight_decay: h.weight_decay,
        nesterov: h.nesterov,
    });
    let groups = model
        .params()
        .iter()
        .map(|(_, p)| {
            let wd = if !h.wd_on_bn && p.shape().len() == 1 {
                0.0
            } else {
                h.weight_decay
            };
            ParamGroup {
                weight_decay: wd,
                lr_mult: 1.0,
            }
        })
        .collect();
    (sgd, groups)
}

/// Learning-rate schedules over optimizer steps.
pub enum Sched {
    /// Constant.
    Constant(Constant),
    /// One cosine over the phase.
    Cosine(Cosine),
    /// SGDR.
    Sgdr(CosineWarmRestarts),
}

impl Sched {
    /// The rate at step `t`.
    pub fn lr(&self, t: u64) -> f64 {
        match self {
            Sched::Constant(s) => s.lr(t),
            Sched::Cosine(s) => s.lr(t),
            Sched::Sgdr(s) => s.lr(t),
        }
    }

    /// Builds a schedule of `kind` for a phase of `epochs` epochs of `steps_per_epoch` steps.
    pub fn new(
        kind: crate::config::Schedule,
        lr: f64,
        cfg: &Config,
        epochs: usize,
        steps_per_epoch: usize,
    ) -> Result<Sched> {
        let spe = steps_per_epoch.max(1) as u64;
        Ok(match kind {
            crate::config::Schedule::Constant => Sched::Constant(Constant { lr }),
            crate::config::Schedule::Cosine => Sched::Cosine(Cosine::new(
                lr,
                (epochs.max(1) as u64) * spe,
                cfg.hla.sgdr_eta_min,
            )?),
            crate::config::Schedule::Sgdr => Sched::Sgdr(CosineWarmRestarts::new(
                lr,
                cfg.hla.sgdr_t0_epochs as u64 * spe,
                cfg.hla.sgdr_t_mult as u64,
                cfg.hla.sgdr_eta_min,
            )?),
        })
    }
}

/// Running sums of one epoch.
#[derive(Debug, Default, Clone, Copy)]
pub struct StepStats {
    /// Σ loss·n.
    pub loss: f64,
    /// Σ CE·n.
    pub ce: f64,
    /// Σ λL_d·n.
    pub ld: f64,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Samples.
    pub n: usize,
}

impl StepStats {
    /// Mean loss.
    pub fn mean_loss(&self) -> f64 {
        self.loss / self.n.max(1) as f64
    }
    /// Top-1 accuracy in percent.
    pub fn acc(&self) -> f64 {
        100.0 * self.correct as f64 / self.n.max(1) as f64
    }
}

fn scalar(tape: &Tape<f32>, v: Var) -> f64 {
    tape.value(v).iter().next().copied().unwrap_or(f32::NAN) as f64
}

/// Index of the k largest logits of each row (ties: lower index first), as (top-1 hits,
/// top-k hits).
fn topk_hits(logits: &ArrayD<f32>, labels: &[usize], k: usize) -> (usize, usize) {
    let mut t1 = 0;
    let mut tk = 0;
    for (row, &y) in logits.axis_iter(Axis(0)).zip(labels) {
        let v: Vec<f32> = row.iter().copied().collect();
        let target = v[y];
        // Rank of the label: number of logits strictly greater, plus equal ones before it.
        let rank = v
            .iter()
            .enumerate()
            .filter(|&(i, &x)| x > target || (x == target && i < y))
            .count();
        if rank == 0 {
            t1 += 1;
        }
        if rank < k {
            tk += 1;
        }
    }
    (t1, tk)
}

/// One full-precision SGD step on a batch: forward (train mode), CE, backward, SGD update.
pub fn train_step(
    model: &mut dyn Model,
    sgd: &mut Sgd<f32>,
    groups: &[ParamGroup],
    images: ndarray::Array4<f32>,
    labels: &[usize],
    lr: f64,
    label_smoothing: f64,
) -> Result<StepStats> {
    let n = labels.len();
    let mut tape = Tape::<f32>::new();
    let x = tape.constant(images.into_dyn());
    let logits = model.forward(&mut tape, x, Mode::Train, None)?;
    let loss = ops::cross_entropy(&mut tape, logits, labels, label_smoothing as f32)?;
    let loss_v = scalar(&tape, loss);
    let ce_v = loss_v;
    if !loss_v.is_finite() {
        bail!("training diverged: loss is {loss_v} (lower the learning rate)");
    }
    let (correct, _) = topk_hits(tape.value(logits), labels, 1);
    let mut grads = tape.backward(loss)?;
    drop(tape); // release the tape's shares of parameter storage before updating in place
    {
        let mut params = model.params_mut();
        let gs: Vec<Option<ArrayD<f32>>> =
            params.iter().map(|(_, p)| grads.take_param(p)).collect();
        let mut entries: Vec<hla_autograd::optim::SgdEntry<'_, f32>> = params
            .iter_mut()
            .zip(&gs)
            .zip(groups)
            .map(|(((_, p), g), grp)| (&mut **p, g.as_ref(), grp))
            .collect();
        sgd.step(lr, &mut entries)?;
    }
    Ok(StepStats {
        loss: loss_v * n as f64,
        ce: ce_v * n as f64,
        ld: (loss_v - ce_v) * n as f64,
        correct,
        n,
    })
}

/// Test accuracy: (top-1 %, top-5 %, mean CE) over the whole test loader, eval mode.
pub fn evaluate(t: &mut dyn Trainee, test: &Loader) -> Result<(f64, f64, f64)> {
    let (mut t1, mut t5, mut n, mut loss) = (0usize, 0usize, 0usize, 0f64);
    for batch in test.epoch(0) {
        let batch = batch?;
        let mut tape = Tape::<f32>::no_grad();
        let x = tape.constant(batch.images.into_dyn());
        let (model, hook) = t.parts();
        let logits = model.forward(&mut tape, x, Mode::Eval, hook)?;
        let ce = ops::cross_entropy(&mut tape, logits, &batch.labels, 0.0)?;
        let (a, b) = topk_hits(tape.value(logits), &batch.labels, 5);
        t1 += a;
        t5 += b;
        n += batch.labels.len();
        loss += scalar(&tape, ce) * batch.labels.len() as f64;
    }
    let d = n.max(1) as f64;
    Ok((100.0 * t1 as f64 / d, 100.0 * t5 as f64 / d, loss / d))
}

/// Re-estimates BatchNorm running statistics as the plain average over `batches` training
/// batches (PyTorch's cumulative mode, momentum = None), through the method's hook: after a
/// change of the layers' output scale (hyperspherical conversion, ternarisation) the running
/// statistics are stale, and short runs have no time to let them decay (spec section 3.3).
///
/// Each train-mode forward moves a running statistic to `(1 − m)·old + m·batch`; the batch value
/// is recovered from that and averaged in batch order (deterministic).
pub fn recalibrate_bn(
    t: &mut dyn Trainee,
    train: &Loader,
    batches: usize,
    data_epoch: u64,
) -> Result<()> {
    if batches == 0 {
        return Ok(());
    }
    let snapshot = |m: &dyn Model| -> Vec<Option<ndarray::Array1<f32>>> {
        m.buffers()
            .into_iter()
            .map(|(_, b)| match b {
                BufferRef::F32(a) => Some(a.clone()),
                BufferRef::Count(_) => None,
            })
            .collect()
    };
    const M: f32 = 0.1; // BatchNorm momentum (PyTorch default, used by the models)
    let mut sums: Option<Vec<Option<ndarray::Array1<f64>>>> = None;
    let mut count = 0usize;
    for batch in train.epoch(data_epoch).take(batches) {
        let batch = batch?;
        let (model, hook) = t.parts();
        let before = snapshot(model);
        let mut tape = Tape::<f32>::no_grad();
        let x = tape.constant(batch.images.into_dyn());
        model.forward(&mut tape, x, Mode::Train, hook)?;
        let after = snapshot(model);
        let s = sums.get_or_insert_with(|| vec![None; before.len()]);
        for ((slot, b), a) in s.iter_mut().zip(&before).zip(&after) {
            if let (Some(b), Some(a)) = (b, a) {
                let batch_stat = (a - &(b * (1.0 - M))) / M;
                let batch_stat = batch_stat.mapv(|v| v as f64);
                match slot {
                    Some(acc) => *acc += &batch_stat,
                    None => *slot = Some(batch_stat),
                }
            }
        }
        count += 1;
    }
    let Some(sums) = sums else { return Ok(()) };
    let (model, _) = t.parts();
    for ((_, b), s) in model.buffers_mut().into_iter().zip(sums) {
        if let (BufferMut::F32(a), Some(s)) = (b, s) {
            *a = s.mapv(|v| (v / count as f64) as f32);
        }
    }
    Ok(())
}

/// The model's parameters and buffers as checkpoint tensors (`param/…`, `buffer/…`).
pub fn model_tensors(model: &dyn Model, out: &mut BTreeMap<String, Tensor>) {
    for (name, s) in model.state() {
        let t = match s {
            StateRef::Param(p) => {
                Tensor::f32(p.shape().to_vec(), p.value().iter().copied().collect())
            }
            StateRef::Buffer(BufferRef::F32(a)) => {
                Tensor::f32(a.shape().to_vec(), a.iter().copied().collect())
            }
            StateRef::Buffer(BufferRef::Count(c)) => Tensor {
                shape: vec![],
                data: TensorData::I64(vec![c as i64]),
            },
        };
        let prefix = if matches!(s, StateRef::Param(_)) {
            "param/"
        } else {
            "buffer/"
        };
        out.insert(format!("{prefix}{name}"), t);
    }
}

/// Loads `param/…` and `buffer/…` tensors into the model; every entry must be present with the
/// model's shape (a checkpoint of another architecture is refused before anything changes).
pub fn load_model_tensors(model: &mut dyn Model, ck: &Checkpoint) -> Result<()> {
    // Validate first.
    for (name, s) in model.state() {
        let (key, shape) = match s {
            StateRef::Param(p) => (format!("param/{name}"), p.shape().to_vec()),
            StateRef::Buffer(BufferRef::F32(a)) => (format!("buffer/{name}"), a.shape().to_vec()),
            StateRef::Buffer(BufferRef::Count(_)) => (format!("buffer/{name}"), vec![]),
        };
        let t = ck
            .tensors
            .get(&key)
            .ok_or_else(|| anyhow::anyhow!("checkpoint has no tensor `{key}` (another model?)"))?;
        if t.shape != shape {
            bail!(
                "checkpoint tensor `{key}` has shape {:?}, the model expects {:?}",
                t.shape,
                shape
            );
        }
    }
    for (name, s) in model.state_mut() {
        match s {
            StateMut::Param(p) => {
                let key = format!("param/{name}");
                let d = ck.tensors[&key].as_f32(&key)?;
                for (v, &x) in p.value_mut().iter_mut().zip(d) {
                    *v = x;
                }
            }
            StateMut::Buffer(BufferMut::F32(a)) => {
                let key = format!("buffer/{name}");
                let d = ck.tensors[&key].as_f32(&key)?;
                for (v, &x) in a.iter_mut().zip(d) {
                    *v = x;
                }
            }
            StateMut::Buffer(BufferMut::Count(c)) => {
                let key = format!("buffer/{name}");
                if let TensorData::I64(v) = &ck.tensors[&key].data {
                    *c = v.first().copied().unwrap_or(0).max(0) as u64;
                }
            }
        }
    }
    Ok(())
}

/// Momentum buffers as `optim/<position>` tensors (absent = no buffer yet).
pub fn optim_tensors(sgd: &Sgd<f32>, out: &mut BTreeMap<String, Tensor>) {
    for (i, b) in sgd.state().iter().enumerate() {
        if let Some(b) = b {
            out.insert(
                format!("optim/{i:05}"),
                Tensor::f32(b.shape().to_vec(), b.iter().copied().collect()),
            );
        }
    }
}

/// Restores momentum buffers saved by [`optim_tensors`] for `len` parameter positions.
pub fn load_optim_tensors(sgd: &mut Sgd<f32>, ck: &Checkpoint, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mut bufs = Vec::with_capacity(len);
    for i in 0..len {
        let key = format!("optim/{i:05}");
        bufs.push(match ck.tensors.get(&key) {
            Some(t) => Some(
                ArrayD::from_shape_vec(t.shape.clone(), t.as_f32(&key)?.to_vec())
                    .with_context(|| format!("checkpoint tensor `{key}`"))?,
            ),
            None => None,
        });
    }
    sgd.load_state(bufs)?;
    Ok(())
}

/// SHA-256 of the model's parameters and buffers, in state-dict order (printed at the end of a
/// run so two runs can be compared for bit-identity).
pub fn model_hash(model: &dyn Model) -> String {
    let mut t = BTreeMap::new();
    model_tensors(model, &mut t);
    crate::checkpoint::weights_hash(&t, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_counts_ranks_with_ties_broken_by_index() {
        let logits = ArrayD::from_shape_vec(
            vec![3, 6],
            vec![
                0.1, 0.9, 0.3, 0.2, 0.0, 0.5, // label 1: rank 0
                0.5, 0.5, 0.4, 0.3, 0.2,
                0.6, // label 1: 0.6 and the equal 0.5 at index 0 beat it: rank 2
                1.0, 2.0, 3.0, 4.0, 5.0, 6.0, // label 0: rank 5
            ],
        )
        .unwrap();
        assert_eq!(topk_hits(&logits, &[1, 1, 0], 5), (1, 2));
        assert_eq!(topk_hits(&logits, &[1, 1, 0], 1), (1, 1));
    }
}
