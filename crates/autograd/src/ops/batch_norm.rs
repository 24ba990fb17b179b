//! 2-D batch normalisation with PyTorch's semantics (`nn.BatchNorm2d`).
//!
//! Train: normalise with the batch's per-channel mean and *biased* variance, and update the
//! running statistics with momentum 0.1 using the *unbiased* variance:
//! `running_mean ← (1 − m)·running_mean + m·mean`,
//! `running_var ← (1 − m)·running_var + m·var·N/(N − 1)`, `N = n·h·w`.
//! Eval: normalise with the running statistics (nothing is updated).
//! Both: `y = γ·(x − μ)/√(σ² + ε) + β`, ε = 1e-5.

use std::mem::MaybeUninit;

use ndarray::{Array1, Array4, ArrayD, ArrayView1, ArrayView4, Axis, Zip};
use rayon::prelude::*;

use crate::broadcast::PAR_MIN_LEN;
use hla_tensor::group::channel_lanes;
use hla_tensor::lanes::Lanes;
use hla_tensor::prefetch::prefetch_next_plane;
use hla_tensor::Activation;

use crate::op::Op;
use crate::tape::Backprop;
use crate::views::{as1, as4, grad4};
use crate::{AutogradError, Float, Par, Result, Tape, Var};

const OP: &str = "batch_norm2d";

/// Running statistics and hyper-parameters of one batch-norm layer (PyTorch's buffers).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormState<F: Float> {
    /// Running mean per channel (starts at 0).
    pub running_mean: Array1<F>,
    /// Running unbiased variance per channel (starts at 1).
    pub running_var: Array1<F>,
    /// Number of training batches seen.
    pub num_batches_tracked: u64,
    /// Weight of the new batch in the running average (PyTorch: 0.1).
    pub momentum: F,
    /// Added to the variance before the square root (PyTorch: 1e-5).
    pub eps: F,
}

impl<F: Float> BatchNormState<F> {
    /// Fresh statistics for `channels` channels with PyTorch's defaults.
    pub fn new(channels: usize) -> Self {
        BatchNormState {
            running_mean: Array1::zeros(channels),
            running_var: Array1::ones(channels),
            num_batches_tracked: 0,
            momentum: F::from_f64(0.1),
            eps: F::from_f64(1e-5),
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.running_mean.len()
    }
}

/// Batch norm over `[n, c, h, w]` per channel; `train` selects batch statistics (and updates
/// `state`) or running statistics.
///
/// # Shapes
/// `x`: `[n, c, h, w]`, `gamma`, `beta`: `[c]`, `state` for `c` channels → `[n, c, h, w]`.
/// # Errors
/// `BadShape` if `x` is not 4-D or, in train mode, has a single value per channel (its unbiased
/// variance is undefined; PyTorch errors too); `ShapeMismatch` if `gamma`, `beta` or `state`
/// do not have `c` channels.
pub fn batch_norm2d<F: Float>(
    tape: &mut Tape<F>,
    x: Var,
    gamma: Var,
    beta: Var,
    state: &mut BatchNormState<F>,
    train: bool,
) -> Result<Var> {
    batch_norm2d_with((x, gamma, beta), state, (train, Activation::None), tape)
}

/// `act(batch_norm2d(x))` in train mode as one op: the activation is applied in the
/// normalisation's pass, and backward masks `dy` inside its per-channel sweep (the mask
/// recomputed from `x`, whose pre-activation values are those of the forward's formula), so a
/// training step makes two passes over the activation fewer and never holds the pre-activation
/// tensor. The values and gradients are those of [`batch_norm2d`] followed by
/// [`super::relu`] / [`super::relu6`], bit for bit.
///
/// # Shapes
/// As [`batch_norm2d`].
/// # Errors
/// As [`batch_norm2d`] in train mode.
pub fn batch_norm2d_train_act<F: Float>(
    tape: &mut Tape<F>,
    (x, gamma, beta): (Var, Var, Var),
    state: &mut BatchNormState<F>,
    act: Activation,
) -> Result<Var> {
    batch_norm2d_with((x, gamma, beta), state, (true, act), tape)
}

/// [`batch_norm2d`] with an activation fused into train mode (eval mode takes
/// `Activation::None` only: [`batch_norm2d_eval_act`] handles its activations).
fn batch_norm2d_with<F: Float>(
    (x, gamma, beta): (Var, Var, Var),
    state: &mut BatchNormState<F>,
    (train, act): (bool, Activation),
    tape: &mut Tape<F>,
) -> Result<Var> {
    debug_assert!(train || act == Activation::None);
    let xv = as4(OP, tape.checked(x, OP)?)?;
    let (n, c, h, w) = xv.dim();
    let gv = as1(OP, tape.checked(gamma, OP)?)?;
    let bv = as1(OP, tape.checked(beta, OP)?)?;
    check_channels(
        &xv,
        c,
        [
            gv.len(),
            bv.len(),
            state.running_mean.len(),
            state.running_var.len(),
        ],
    )?;
    let inputs = [x, gamma, beta];
    if train {
        // With a data-parallel group the statistics are those of the global batch.
        let synced = tape.batch_norm_group().is_some();
        let (mean, var, count, y, inv_std) = match tape.batch_norm_group() {
            Some(g) => {
                let (mean, var, count) = hla_tensor::channel_mean_var_in(xv, tape.par(), Some(g))?;
                too_few(count, &xv)?;
                // x̂ is not kept: backward recomputes it from x (on the tape), mean and
                // inv_std, so a training step holds one activation-sized tensor less per
                // batch-norm layer.
                let (y, inv_std) = forward(
                    (xv, None),
                    (&mean, &var),
                    (gv, bv),
                    state.eps,
                    (act, tape.par()),
                );
                (mean, var, count, y, inv_std)
            }
            None => {
                too_few(n * h * w, &xv)?;
                // statistics and normalisation in one sweep per channel (same bits)
                let (y, mean, var, inv_std) = hla_tensor::batch_norm_train_forward(
                    xv,
                    (gv, bv),
                    state.eps,
                    (act, tape.par()),
                );
                (mean, var, n * h * w, y, inv_std)
            }
        };
        let m = state.momentum;
        let bessel = F::from_f64(count as f64 / (count - 1) as f64);
        Zip::from(&mut state.running_mean)
            .and(&mean)
            .for_each(|r, &mu| *r = (F::one() - m) * *r + m * mu);
        Zip::from(&mut state.running_var)
            .and(&var)
            .for_each(|r, &v| *r = (F::one() - m) * *r + m * v * bessel);
        state.num_batches_tracked += 1;
        Ok(
            tape.push_op(y.into_dyn(), &inputs, || Op::BatchNorm2dTrain {
                x,
                gamma,
                beta,
                mean,
                inv_std,
                count,
                synced,
                act,
            }),
        )
    } else {
        let stats = (&state.running_mean, &state.running_var);
        let (y, inv_std) = forward(
            (xv, None),
            stats,
            (gv, bv),
            state.eps,
            (Activation::None, tape.par()),
        );
        let mean = state.running_mean.clone();
        Ok(tape.push_op(y.into_dyn(), &inputs, || Op::BatchNorm2dEval {
            x,
            gamma,
            beta,
            mean,
            inv_std,
        }))
    }
}

/// `act(batch_norm2d(x))` in evaluation mode (running statistics): on a tape that does not
/// record, the activation is applied in the normalisation's pass, one pass over the activation
/// instead of two, with the values of the two ops (the same formula, then
/// [`Activation::apply`], as [`super::relu`] / [`super::relu6`] compute it). On a recording tape
/// it is the two ops, so that backward sees them.
///
/// # Shapes
/// As [`batch_norm2d`].
/// # Errors
/// As [`batch_norm2d`].
pub fn batch_norm2d_eval_act<F: Float>(
    tape: &mut Tape<F>,
    (x, gamma, beta): (Var, Var, Var),
    state: &BatchNormState<F>,
    act: Activation,
) -> Result<Var> {
    if tape.is_recording() || act == Activation::None {
        let mut state = state.clone();
        let y = batch_norm2d(tape, x, gamma, beta, &mut state, false)?;
        let out = match act {
            Activation::None => return Ok(y),
            Activation::Relu => super::relu(tape, y)?,
            Activation::Relu6 => super::relu6(tape, y)?,
        };
        tape.release(y);
        return Ok(out);
    }
    eval_constant(tape, (x, gamma, beta), state, None, act)
}

/// `act(batch_norm2d(x) + r)` in evaluation mode: a residual block's last BatchNorm, its
/// shortcut `r` (of `x`'s shape) and the activation after the sum. On a tape that does not
/// record, one pass over the activation instead of three (and no tensor for the BatchNorm's
/// output), with the values of the ops one after the other (the BatchNorm's formula, then `+ r`,
/// then [`Activation::apply`], as [`super::add_relu`] computes it). On a recording tape it is
/// those ops ([`super::add_relu`] for ReLU, [`super::add`] then the activation otherwise).
///
/// # Shapes
/// As [`batch_norm2d`]; `r` has `x`'s shape.
/// # Errors
/// As [`batch_norm2d`]; `ShapeMismatch` if `r` is not of `x`'s shape.
pub fn batch_norm2d_eval_add_act<F: Float>(
    tape: &mut Tape<F>,
    (x, gamma, beta): (Var, Var, Var),
    state: &BatchNormState<F>,
    r: Var,
    act: Activation,
) -> Result<Var> {
    if tape.is_recording() {
        let y = batch_norm2d_eval_act(tape, (x, gamma, beta), state, Activation::None)?;
        let out = match act {
            Activation::Relu => super::add_relu(tape, y, r)?,
            Activation::None => super::add(tape, y, r)?,
            Activation::Relu6 => {
                let s = super::add(tape, y, r)?;
                let out = super::relu6(tape, s)?;
                tape.release(s);
                out
            }
        };
        tape.release(y);
        return Ok(out);
    }
    eval_constant(tape, (x, gamma, beta), state, Some(r), act)
}

/// `act(batch_norm2d(x) [+ r])` in evaluation as a constant (a tape that does not record: no
/// backward will ask for the op), after checking the shapes.
fn eval_constant<F: Float>(
    tape: &mut Tape<F>,
    (x, gamma, beta): (Var, Var, Var),
    state: &BatchNormState<F>,
    r: Option<Var>,
    act: Activation,
) -> Result<Var> {
    let xv = as4(OP, tape.checked(x, OP)?)?;
    let rv = match r {
        Some(r) => Some(as4(OP, tape.checked(r, OP)?)?),
        None => None,
    };
    if let Some(rv) = rv.as_ref().filter(|rv| rv.shape() != xv.shape()) {
        return Err(AutogradError::ShapeMismatch {
            op: OP,
            lhs: xv.shape().to_vec(),
            rhs: rv.shape().to_vec(),
        });
    }
    let gv = as1(OP, tape.checked(gamma, OP)?)?;
    let bv = as1(OP, tape.checked(beta, OP)?)?;
    let c = xv.dim().1;
    check_channels(
        &xv,
        c,
        [
            gv.len(),
            bv.len(),
            state.channels(),
            state.running_var.len(),
        ],
    )?;
    let stats = (&state.running_mean, &state.running_var);
    let (y, _) = forward((xv, rv), stats, (gv, bv), state.eps, (act, tape.par()));
    Ok(tape.constant(y.into_dyn()))
}

/// `ShapeMismatch` unless every length in `lens` (γ, β, the running statistics) is `c`.
fn check_channels<F: Float>(x: &ArrayView4<'_, F>, c: usize, lens: [usize; 4]) -> Result<()> {
    match lens.into_iter().find(|&len| len != c) {
        Some(len) => Err(AutogradError::ShapeMismatch {
            op: OP,
            lhs: x.shape().to_vec(),
            rhs: vec![len],
        }),
        None => Ok(()),
    }
}

/// `BadShape` for a train-mode batch of `count < 2` values per channel (the unbiased variance is
/// undefined; PyTorch errors too).
fn too_few<F: Float>(count: usize, x: &ArrayView4<'_, F>) -> Result<()> {
    if count < 2 {
        return Err(AutogradError::BadShape {
            op: OP,
            shape: x.shape().to_vec(),
            expected: "more than one value per channel in train mode".into(),
        });
    }
    Ok(())
}

/// `y = γ·(x − μ)·inv_std + β` per channel with `inv_std = 1/√(var + ε)`, computed as
/// `t = (x − μ)·inv_std`, `y = γ·t + β`, without materialising `x̂` (backward recomputes it) and
/// without zero-filling `y` first. Planes are independent: split over rayon when `par` allows, same result.
///
/// # Shapes
/// `x`: `[n, c, h, w]` (standard layout or not), `stats` = (mean, var), `affine` = (γ, β): `[c]`
/// → (`y [n, c, h, w]`, `inv_std [c]`).
fn forward<F: Float>(
    (x, r): (ArrayView4<'_, F>, Option<ArrayView4<'_, F>>),
    (mean, var): (&Array1<F>, &Array1<F>),
    (gamma, beta): (ArrayView1<'_, F>, ArrayView1<'_, F>),
    eps: F,
    (act, par): (Activation, Par),
) -> (Array4<F>, Array1<F>) {
    let (_, c, h, w) = x.dim();
    let hw = h * w;
    let inv_std = var.mapv(|v| F::one() / (v + eps).sqrt());
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let r = r.as_ref().map(|r| r.as_standard_layout());
    let rs = r
        .as_ref()
        .map(|r| r.as_slice().expect("standard layout is contiguous"));
    let mut y = Array4::<F>::uninit(x.raw_dim());
    if hw > 0 && c > 0 {
        let ys = y.as_slice_mut().expect("fresh array is contiguous");
        let rows = (xs, rs, c, hw, par);
        let affine = (mean, &inv_std, gamma, beta);
        // the activation chosen outside the loops, so that each loop is a plain select
        match act {
            Activation::None => normalise(ys, rows, affine, |v| v),
            Activation::Relu => normalise(ys, rows, affine, |v| Activation::Relu.apply(v)),
            Activation::Relu6 => normalise(ys, rows, affine, |v| Activation::Relu6.apply(v)),
        }
    }
    // SAFETY: when `hw > 0 && c > 0` the loop above wrote every element (the chunks of `ys`
    // cover it exactly); otherwise the array has no element.
    let y = unsafe { y.assume_init() };
    (y, inv_std)
}

/// `ys = a(γ·((x − μ)·inv_std) + β [+ r])` plane by plane (`xs` and `rs` `[n, c, hw]`), planes
/// in parallel when `par` allows it.
#[allow(clippy::type_complexity)] // the per-channel parameters, named at the call
fn normalise<F: Float>(
    ys: &mut [MaybeUninit<F>],
    (xs, rs, c, hw, par): (&[F], Option<&[F]>, usize, usize, Par),
    (mean, inv_std, gamma, beta): (&Array1<F>, &Array1<F>, ArrayView1<'_, F>, ArrayView1<'_, F>),
    a: impl Fn(F) -> F + Sync + Send,
) {
    let par = if xs.len() >= PAR_MIN_LEN {
        par
    } else {
        Par::Seq
    };
    for_each_plane(
        ys,
        xs,
        (hw, par),
        #[inline(always)]
        |i, yp, xp| {
            let ch = i % c;
            let (mu, s, g, b) = (mean[ch], inv_std[ch], gamma[ch], beta[ch]);
            match rs {
                None => {
                    for (o, &v) in yp.iter_mut().zip(xp) {
                        o.write(a(g * ((v - mu) * s) + b));
                    }
                }
                Some(rs) => {
                    let rp = &rs[i * hw..(i + 1) * hw];
                    for ((o, &v), &r) in yp.iter_mut().zip(xp).zip(rp) {
                        o.write(a(g * ((v - mu) * s) + b + r));
                    }
                }
            }
        },
    );
}

/// `f(plane, out_plane, x_plane)` for every plane of `out` and `xs` (`[n, c, hw]` both; plane
/// `i` is channel `i % c` of sample `i / c`), planes in parallel when `par` allows it.
fn for_each_plane<T: Send, F: Float>(
    out: &mut [T],
    xs: &[F],
    (hw, par): (usize, Par),
    f: impl Fn(usize, &mut [T], &[F]) + Sync + Send,
) {
    let plane = |(i, (o, x)): (usize, (&mut [T], &[F]))| {
        hla_tensor::isa::vectorised(
            #[inline(always)]
            || f(i, o, x),
        )
    };
    match par {
        Par::Rayon => out
            .par_chunks_mut(hw)
            .zip(xs.par_chunks(hw))
            .enumerate()
            .for_each(plane),
        Par::Seq => out
            .chunks_mut(hw)
            .zip(xs.chunks(hw))
            .enumerate()
            .for_each(plane),
    }
}

/// Folds one plane of `dy` and `x` into a channel's sums: `Σdy` into `db`, `Σ dy·x̂` into `dg`
/// (`x̂ = (x − mu)·s` on the fly).
#[inline(always)]
fn fold_plane<F: Float>(d: &[F], xp: &[F], (mu, s): (F, F), db: &mut Lanes<F>, dg: &mut Lanes<F>) {
    db.add_map(d, |v| v);
    dg.add_dot_map(d, xp, |v| (v - mu) * s);
}

/// The backward of a fused activation on one plane: `dy ← dy ⊙ 1[keep(y)]` with the
/// pre-activation `y = γ·((x − mu)·s) + β` recomputed (the forward's formula, so its bits);
/// `keep` is [`super::relu`]'s `y > 0` or [`super::relu6`]'s `0 < y < 6`, which hold for the
/// activation's output exactly when they hold for `y`.
#[inline(always)]
fn mask_plane<F: Float>(act: Activation, dp: &mut [F], xp: &[F], (mu, s, g, b): (F, F, F, F)) {
    let six = F::from_f64(6.0);
    let y = |v: F| g * ((v - mu) * s) + b;
    // the activation chosen outside the loop, so it vectorises
    match act {
        Activation::None => {}
        Activation::Relu => keep_where(dp, xp, |v| y(v) > F::zero()),
        Activation::Relu6 => keep_where(dp, xp, |v| {
            let y = y(v);
            y > F::zero() && y < six
        }),
    }
}

/// `d[i] ← if keep(x[i]) { d[i] } else { 0 }`, in blocks selected into a stack buffer and
/// copied back whole. Written in place (`*d = if keep { *d } else { 0 }`), the loop compiles
/// to a masked store of the zeros (`vmaskmovps` to memory), which AMD's Zen 2/3 run at about
/// one per 12 cycles; a select into other memory and a plain copy are full-speed stores.
#[inline(always)]
fn keep_where<F: Float>(dp: &mut [F], xp: &[F], keep: impl Fn(F) -> bool) {
    const BLOCK: usize = 64;
    let mut t = [F::zero(); BLOCK];
    for (d, x) in dp.chunks_mut(BLOCK).zip(xp.chunks(BLOCK)) {
        let t = &mut t[..d.len()];
        for ((t, &dv), &xv) in t.iter_mut().zip(d.iter()).zip(x) {
            *t = if keep(xv) { dv } else { F::zero() };
        }
        d.copy_from_slice(t);
    }
}

/// One plane of `dx = k·(m·dy − Σdy − x̂·Σ(dy·x̂))` written over `dy`, `k = γ·inv_std/m`.
#[inline(always)]
fn dx_plane<F: Float>(dp: &mut [F], xp: &[F], (mu, s): (F, F), (k, m, db, dg): (F, F, F, F)) {
    for (o, &v) in dp.iter_mut().zip(xp) {
        *o = k * (m * *o - db - ((v - mu) * s) * dg);
    }
}

/// Train mode, through the batch statistics (the kernel's formula):
/// `dx = γ·inv_std/m·(m·dy − Σdy − x̂·Σ(dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`
/// (sums per channel over n, h, w, `m = n·h·w`). `x̂ = (x − mean)·inv_std` is recomputed on the
/// fly from the recorded `x`, never stored, and `dx` is written over `dy` (owned here), so the
/// backward allocates nothing activation-sized. The sums use the kernels' fixed lane order
/// (per channel, samples in order, [`hla_tensor::lanes`]), so results do not depend on the
/// thread count.
pub(crate) fn batch_norm_train_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    (x, gamma, beta): (Var, Var, Var),
    (mean, inv_std, count, synced): (Array1<F>, Array1<F>, usize, bool),
    act: Activation,
    dy: ArrayD<F>,
) -> Result<()> {
    // Per-rank statistics: this rank's sums give dx; dγ and dβ are summed over the ranks below.
    let sum_group = if synced { bw.group } else { None };
    let mut dy = grad4(dy);
    let xv = as4(OP, bw.value(x))?;
    let gv = as1(OP, bw.value(gamma))?;
    let (n, c, h, w) = xv.dim();
    let hw = h * w;
    // a fused activation's mask needs β; without one it is never read
    let bv = match act {
        Activation::None => None,
        _ => Some(as1(OP, bw.value(beta))?),
    };
    let pre = |ch: usize| {
        (
            mean[ch],
            inv_std[ch],
            gv[ch],
            bv.map_or(F::zero(), |b| b[ch]),
        )
    };
    if bw.group.is_none() && (n * hw == 0 || c == 0) {
        bw.add(x, dy.into_dyn());
        bw.add(gamma, ArrayD::zeros(vec![c]));
        bw.add(beta, ArrayD::zeros(vec![c]));
        return Ok(());
    }
    // `count` = n·h·w of the global batch (of this tape's batch without a group).
    let m = F::from_f64(count as f64);
    let xs = xv.as_slice().expect("tape values are in standard layout");
    let par = if xs.len() >= PAR_MIN_LEN {
        bw.par
    } else {
        Par::Seq
    };
    let sums: Vec<(F, F)> = if sum_group.is_none() && bw.needs(x) && hw > 0 {
        // One sweep per channel: its sums, then its dx while its planes of dy and x are still
        // in cache (the formulas and orders of the two separate passes below, so their bits).
        let ds = dy.as_slice_mut().expect("gradients are in standard layout");
        let sums = hla_tensor::map_channel_planes(
            ds,
            (c, hw),
            par,
            #[inline(always)]
            |ch, dps| {
                let (mu, s) = (mean[ch], inv_std[ch]);
                let x_planes = hla_tensor::channel_planes(xs, c, hw, ch);
                let (mut db, mut dg) = (Lanes::new(), Lanes::new());
                for (d, xp) in dps.iter_mut().zip(x_planes.clone()) {
                    prefetch_next_plane(d, c * hw);
                    mask_plane(act, d, xp, pre(ch));
                    fold_plane(d, xp, (mu, s), &mut db, &mut dg);
                }
                let (dg, db) = (dg.total(), db.total());
                let k = gv[ch] * s / m;
                for (dp, xp) in dps.iter_mut().zip(x_planes) {
                    prefetch_next_plane(dp, c * hw);
                    dx_plane(dp, xp, (mu, s), (k, m, db, dg));
                }
                (dg, db)
            },
        );
        bw.add(x, dy.into_dyn());
        sums
    } else {
        if act != Activation::None && hw > 0 {
            let ds = dy.as_slice_mut().expect("gradients are in standard layout");
            for_each_plane(
                ds,
                xs,
                (hw, par),
                #[inline(always)]
                |i, dp, xp| mask_plane(act, dp, xp, pre(i % c)),
            );
        }
        let sums: Vec<(F, F)> = {
            let ds = dy.as_slice().expect("gradients are in standard layout");
            let lanes = channel_lanes::<F, 2>(sum_group, OP, c, par, |ch, [db, dg]| {
                if hw == 0 {
                    return;
                }
                let (mu, s) = (mean[ch], inv_std[ch]);
                let d_planes = hla_tensor::channel_planes(ds, c, hw, ch);
                let x_planes = hla_tensor::channel_planes(xs, c, hw, ch);
                for (d, xp) in d_planes.zip(x_planes) {
                    fold_plane(d, xp, (mu, s), db, dg);
                }
            })?;
            lanes
                .into_iter()
                .map(|[db, dg]| (dg.total(), db.total()))
                .collect()
        };
        if bw.needs(x) {
            let ds = dy.as_slice_mut().expect("gradients are in standard layout");
            for_each_plane(
                ds,
                xs,
                (hw, par),
                #[inline(always)]
                |i, dp, xp| {
                    let ch = i % c;
                    let (dg, db) = sums[ch];
                    let (mu, s) = (mean[ch], inv_std[ch]);
                    dx_plane(dp, xp, (mu, s), (gv[ch] * s / m, m, db, dg));
                },
            );
            bw.add(x, dy.into_dyn());
        }
        sums
    };
    let mut dgamma: Array1<F> = sums.iter().map(|s| s.0).collect();
    let mut dbeta: Array1<F> = sums.iter().map(|s| s.1).collect();
    if let (Some(g), false) = (bw.group, synced) {
        // Each rank's totals, summed in rank order (like any other parameter's gradient).
        let mine: Vec<F> = dgamma.iter().chain(dbeta.iter()).copied().collect();
        let mut acc = vec![F::zero(); 2 * c];
        g.chain(OP, &mut acc, |acc, first| {
            for (a, &v) in acc.iter_mut().zip(&mine) {
                *a = if first { v } else { *a + v };
            }
        })?;
        dgamma = Array1::from_vec(acc[..c].to_vec());
        dbeta = Array1::from_vec(acc[c..].to_vec());
    }
    bw.add(gamma, dgamma.into_dyn());
    bw.add(beta, dbeta.into_dyn());
    Ok(())
}

/// Eval mode, statistics constant: `dx = dy·γ·inv_std`, `dγ = Σ dy·x̂`, `dβ = Σ dy` with
/// `x̂ = (x − running_mean)·inv_std` (per channel; sums over samples in order, each plane in
/// scan order; `x̂` is never materialised).
pub(crate) fn batch_norm_eval_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    (x, gamma, beta): (Var, Var, Var),
    mean: Array1<F>,
    inv_std: Array1<F>,
    dy: ArrayD<F>,
) -> Result<()> {
    let dy = grad4(dy);
    let c = dy.dim().1;
    if bw.needs(gamma) {
        let xv = as4(OP, bw.value(x))?;
        let dgamma: Array1<F> = (0..c)
            .map(|ch| {
                let (m, s) = (mean[ch], inv_std[ch]);
                let (d, xc) = (dy.index_axis(Axis(1), ch), xv.index_axis(Axis(1), ch));
                let sum = d
                    .outer_iter()
                    .zip(xc.outer_iter())
                    .fold(F::zero(), |acc, (d, xc)| {
                        d.iter()
                            .zip(xc.iter())
                            .fold(acc, |acc, (&d, &v)| acc + d * (v - m))
                    });
                sum * s
            })
            .collect();
        bw.add(gamma, dgamma.into_dyn());
    }
    if bw.needs(beta) {
        let dbeta: Array1<F> = (0..c)
            .map(|ch| {
                let d = dy.index_axis(Axis(1), ch);
                d.outer_iter()
                    .fold(F::zero(), |s, p| p.iter().fold(s, |s, &v| s + v))
            })
            .collect();
        bw.add(beta, dbeta.into_dyn());
    }
    if bw.needs(x) {
        let scale = &as1(OP, bw.value(gamma))?.to_owned() * &inv_std;
        let mut dx = dy;
        for (ch, mut plane) in dx.axis_iter_mut(Axis(1)).enumerate() {
            let s = scale[ch];
            plane.mapv_inplace(|d| d * s);
        }
        bw.add(x, dx.into_dyn());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::{positive, uniform};
    use std::sync::Mutex;

    #[test]
    fn gradcheck_batch_norm_train_and_eval() {
        let xs = [
            uniform(&[3, 2, 3, 2], 1),
            positive(&[2], 2),
            uniform(&[2], 3),
        ];
        for train in [true, false] {
            let mut init = BatchNormState::new(2);
            init.running_mean = ndarray::arr1(&[0.2, -0.1]);
            init.running_var = ndarray::arr1(&[0.5, 2.0]);
            let state = Mutex::new(init);
            check(
                |t, v| batch_norm2d(t, v[0], v[1], v[2], &mut state.lock().unwrap(), train),
                &xs,
                4,
            )
            .unwrap_or_else(|e| panic!("train = {train}: {e}"));
        }
    }

    /// PyTorch semantics by hand: one channel, values 1, 2, 3, 6 (n = 2, h = 1, w = 2):
    /// mean 3, biased var (4 + 1 + 0 + 9)/4 = 3.5, unbiased 14/3.
    /// running_mean = 0.9·0 + 0.1·3 = 0.3; running_var = 0.9·1 + 0.1·14/3 = 1.3666…;
    /// y = (x − 3)/√(3.5 + 1e-5).
    #[test]
    fn train_updates_running_stats_with_unbiased_var() {
        let mut t = Tape::<f64>::new();
        let x = t.leaf(ArrayD::from_shape_vec(vec![2, 1, 1, 2], vec![1., 2., 3., 6.]).unwrap());
        let g = t.leaf(ArrayD::ones(vec![1]));
        let b = t.leaf(ArrayD::zeros(vec![1]));
        let mut s = BatchNormState::new(1);
        let y = batch_norm2d(&mut t, x, g, b, &mut s, true).unwrap();
        assert!((s.running_mean[0] - 0.3).abs() < 1e-15);
        assert!((s.running_var[0] - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-15);
        assert_eq!(s.num_batches_tracked, 1);
        let want = (6.0 - 3.0) / (3.5f64 + 1e-5).sqrt();
        assert!((t.value(y)[[1, 0, 0, 1]] - want).abs() < 1e-12);
        // eval uses the running stats and changes nothing
        let before = s.clone();
        let ye = batch_norm2d(&mut t, x, g, b, &mut s, false).unwrap();
        assert_eq!(s, before);
        let want = (6.0 - 0.3) / (s.running_var[0] + 1e-5).sqrt();
        assert!((t.value(ye)[[1, 0, 0, 1]] - want).abs() < 1e-12);
    }

    /// The f32 op (fused forward/backward, lane sums, `dx` written over `dy`) against the same op
    /// in f64, on planes whose size is not a multiple of the lane count.
    #[test]
    fn train_f32_matches_f64() {
        let xv = uniform(&[3, 4, 5, 7], 8).mapv(|v| 2.0 * v + 0.3);
        let gv = uniform(&[4], 9);
        let bv = uniform(&[4], 10);
        let seed = uniform(&[3, 4, 5, 7], 11);
        let f32s = |a: &ArrayD<f64>| a.mapv(|v| v as f32);
        let mut t = Tape::<f32>::new();
        let (x, g, b) = (t.leaf(f32s(&xv)), t.leaf(f32s(&gv)), t.leaf(f32s(&bv)));
        let y = batch_norm2d(&mut t, x, g, b, &mut BatchNormState::new(4), true).unwrap();
        let y32 = t.value(y).clone();
        let g32 = t.backward_with(y, f32s(&seed)).unwrap();
        let mut u = Tape::<f64>::new();
        let (x6, g6, b6) = (u.leaf(xv.clone()), u.leaf(gv.clone()), u.leaf(bv.clone()));
        let y6 = batch_norm2d(&mut u, x6, g6, b6, &mut BatchNormState::new(4), true).unwrap();
        let y64 = u.value(y6).clone();
        let g64 = u.backward_with(y6, seed.clone()).unwrap();
        let close = |a: &ArrayD<f32>, b: &ArrayD<f64>, tol: f64, what: &str| {
            for (i, (&p, &q)) in a.iter().zip(b.iter()).enumerate() {
                assert!(
                    (p as f64 - q).abs() < tol * (1.0 + q.abs()),
                    "{what} #{i}: {p} vs {q}"
                );
            }
        };
        close(&y32, &y64, 1e-5, "y");
        close(g32.get(x).unwrap(), g64.get(x6).unwrap(), 1e-4, "dx");
        close(g32.get(g).unwrap(), g64.get(g6).unwrap(), 1e-4, "dgamma");
        close(g32.get(b).unwrap(), g64.get(b6).unwrap(), 1e-4, "dbeta");
    }

    /// Above the parallel threshold `x̂` is recomputed on rayon; gradients must equal the
    /// sequential ones bit for bit.
    #[test]
    fn large_train_backward_is_bit_identical_seq_vs_rayon() {
        let xv = uniform(&[4, 3, 80, 80], 5).mapv(|v| v as f32);
        let run = |par| {
            let mut t = Tape::<f32>::new();
            t.set_par(par);
            let x = t.leaf(xv.clone());
            let g = t.leaf(ArrayD::from_elem(vec![3], 1.5));
            let b = t.leaf(ArrayD::zeros(vec![3]));
            let y = batch_norm2d(&mut t, x, g, b, &mut BatchNormState::new(3), true).unwrap();
            let seed = xv.mapv(|v| v * v);
            let grads = t.backward_with(y, seed).unwrap();
            let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            (bits(grads.get(x).unwrap()), bits(grads.get(g).unwrap()))
        };
        assert_eq!(run(crate::Par::Seq), run(crate::Par::Rayon));
    }

    #[test]
    fn channel_mismatch_and_single_value_are_errors() {
        let mut t = Tape::<f32>::new();
        let x = t.leaf(ArrayD::zeros(vec![2, 3, 2, 2]));
        let g = t.leaf(ArrayD::ones(vec![2]));
        let b = t.leaf(ArrayD::zeros(vec![3]));
        let e = batch_norm2d(&mut t, x, g, b, &mut BatchNormState::new(3), true).unwrap_err();
        assert!(
            matches!(
                e,
                AutogradError::ShapeMismatch {
                    op: "batch_norm2d",
                    ..
                }
            ),
            "{e}"
        );
        let one = t.leaf(ArrayD::zeros(vec![1, 3, 1, 1]));
        let g = t.leaf(ArrayD::ones(vec![3]));
        let e = batch_norm2d(&mut t, one, g, b, &mut BatchNormState::new(3), true).unwrap_err();
        assert!(matches!(e, AutogradError::BadShape { .. }), "{e}");
    }

    /// An input `[4, 3, 40, 30]` in (−8, 8) with a NaN (values straddling 0 and 6), γ, β and
    /// running statistics for the evaluation tests.
    fn eval_case(seed: u64) -> (ArrayD<f32>, ArrayD<f32>, ArrayD<f32>, BatchNormState<f32>) {
        let mut x = uniform(&[4, 3, 40, 30], seed).mapv(|v| (8.0 * v) as f32);
        x[[1, 2, 3, 4]] = f32::NAN;
        let g = ArrayD::from_shape_vec(vec![3], vec![1.5f32, -2.0, 3.0]).unwrap();
        let b = ArrayD::from_shape_vec(vec![3], vec![0.5f32, 1.0, 2.5]).unwrap();
        let mut s = BatchNormState::<f32>::new(3);
        s.running_mean = ndarray::arr1(&[0.1, -0.2, 0.3]);
        s.running_var = ndarray::arr1(&[0.5, 1.5, 2.0]);
        (x, g, b, s)
    }

    /// The bits of `f(tape, vars)` with `inputs` as constants on a tape that does not record:
    /// on the calling thread with the tape's defaults (`threads` `None`), or in parallel on a
    /// pool of that many threads.
    fn no_grad_bits(
        threads: Option<usize>,
        inputs: &[&ArrayD<f32>],
        f: impl Fn(&mut Tape<f32>, &[Var]) -> Var + Send + Sync,
    ) -> Vec<u32> {
        let run = || {
            let mut t = Tape::<f32>::no_grad();
            if threads.is_some() {
                t.set_par(Par::Rayon);
            }
            let vs: Vec<Var> = inputs.iter().map(|a| t.constant((*a).clone())).collect();
            let y = f(&mut t, &vs);
            t.value(y).iter().map(|v| v.to_bits()).collect()
        };
        match threads {
            None => run(),
            Some(k) => rayon::ThreadPoolBuilder::new()
                .num_threads(k)
                .build()
                .unwrap()
                .install(run),
        }
    }

    /// In evaluation on a tape that does not record, BatchNorm with a fused activation gives
    /// the bits of `batch_norm2d` followed by `relu` / `relu6` (values straddling 0 and 6, a
    /// NaN, 1/2 threads above the parallel threshold); on a recording tape it is those two ops,
    /// gradients included.
    #[test]
    fn eval_act_is_batch_norm_then_activation() {
        let (x, g, b, s) = eval_case(71);
        let inputs = [&x, &g, &b];
        for act in [Activation::Relu, Activation::Relu6, Activation::None] {
            let want = no_grad_bits(None, &inputs, |t, v| {
                let y = batch_norm2d(t, v[0], v[1], v[2], &mut s.clone(), false).unwrap();
                match act {
                    Activation::Relu => crate::ops::relu(t, y).unwrap(),
                    Activation::Relu6 => crate::ops::relu6(t, y).unwrap(),
                    Activation::None => y,
                }
            });
            for threads in [1, 2] {
                let got = no_grad_bits(Some(threads), &inputs, |t, v| {
                    batch_norm2d_eval_act(t, (v[0], v[1], v[2]), &s, act).unwrap()
                });
                assert_eq!(got, want, "{act:?}, {threads} threads");
            }
        }
        let xs = [
            uniform(&[2, 3, 3, 2], 72),
            positive(&[3], 73),
            uniform(&[3], 74),
        ];
        let s = BatchNormState::<f64>::new(3);
        for act in [Activation::Relu, Activation::Relu6] {
            check(
                |t, v| batch_norm2d_eval_act(t, (v[0], v[1], v[2]), &s, act),
                &xs,
                75,
            )
            .unwrap();
        }
    }

    /// In evaluation on a tape that does not record, BatchNorm with the residual sum and
    /// activation gives the bits of `batch_norm2d`, `add` and `relu` / `relu6` (or `add_relu`)
    /// (values straddling 0 and 6, a NaN in `x` and one in `r`, 1/2 threads above the parallel
    /// threshold); on a recording tape it is those ops, gradients included; a residual of
    /// another shape is refused.
    #[test]
    fn eval_add_act_is_batch_norm_then_sum_then_activation() {
        let (x, g, b, s) = eval_case(91);
        let mut r = uniform(&[4, 3, 40, 30], 92).mapv(|v| (4.0 * v) as f32);
        r[[2, 1, 5, 6]] = f32::NAN;
        let inputs = [&x, &g, &b, &r];
        for act in [Activation::Relu, Activation::Relu6, Activation::None] {
            let want = no_grad_bits(None, &inputs, |t, v| {
                let y = batch_norm2d(t, v[0], v[1], v[2], &mut s.clone(), false).unwrap();
                match act {
                    Activation::Relu => crate::ops::add_relu(t, y, v[3]).unwrap(),
                    Activation::Relu6 => {
                        let y = crate::ops::add(t, y, v[3]).unwrap();
                        crate::ops::relu6(t, y).unwrap()
                    }
                    Activation::None => crate::ops::add(t, y, v[3]).unwrap(),
                }
            });
            for threads in [1, 2] {
                let got = no_grad_bits(Some(threads), &inputs, |t, v| {
                    batch_norm2d_eval_add_act(t, (v[0], v[1], v[2]), &s, v[3], act).unwrap()
                });
                assert_eq!(got, want, "{act:?}, {threads} threads");
            }
        }
        let xs = [
            uniform(&[2, 3, 3, 2], 93),
            positive(&[3], 94),
            uniform(&[3], 95),
            uniform(&[2, 3, 3, 2], 96),
        ];
        let s = BatchNormState::<f64>::new(3);
        for act in [Activation::Relu, Activation::Relu6, Activation::None] {
            check(
                |t, v| batch_norm2d_eval_add_act(t, (v[0], v[1], v[2]), &s, v[3], act),
                &xs,
                97,
            )
            .unwrap();
        }
        let mut t = Tape::<f32>::no_grad();
        let xv = t.constant(ArrayD::zeros(vec![2, 3, 2, 2]));
        let rv = t.constant(ArrayD::zeros(vec![2, 3, 2, 1]));
        let (gv, bv) = (
            t.constant(ArrayD::ones(vec![3])),
            t.constant(ArrayD::zeros(vec![3])),
        );
        let s = BatchNormState::<f32>::new(3);
        let e =
            batch_norm2d_eval_add_act(&mut t, (xv, gv, bv), &s, rv, Activation::Relu).unwrap_err();
        assert!(
            matches!(&e, AutogradError::ShapeMismatch { op: "batch_norm2d", lhs, rhs }
                if lhs == &[2, 3, 2, 2] && rhs == &[2, 3, 2, 1]),
            "{e}"
        );
    }

    /// In train mode BatchNorm with a fused activation gives the bits of `batch_norm2d`
    /// followed by `relu` / `relu6`: the output, the running statistics and the gradients of
    /// `x`, γ and β, on 1 and 2 threads above the parallel threshold (values straddling 0 and
    /// 6); and it passes a gradient check (f64, away from the kinks).
    #[test]
    fn train_act_is_batch_norm_then_activation() {
        let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let x = uniform(&[4, 3, 40, 30], 81).mapv(|v| (8.0 * v) as f32);
        let dy = uniform(&[4, 3, 40, 30], 82).mapv(|v| v as f32);
        let g = ArrayD::from_shape_vec(vec![3], vec![1.5f32, -2.0, 4.0]).unwrap();
        let b = ArrayD::from_shape_vec(vec![3], vec![0.5f32, 1.0, 2.5]).unwrap();
        // y, running mean and var, dx, dγ, dβ
        let run = |act: Activation, fused: bool| {
            let mut s = BatchNormState::<f32>::new(3);
            let mut t = Tape::<f32>::new();
            t.set_par(Par::Rayon);
            let (xv, gv, bv) = (t.leaf(x.clone()), t.leaf(g.clone()), t.leaf(b.clone()));
            let y = if fused {
                batch_norm2d_train_act(&mut t, (xv, gv, bv), &mut s, act).unwrap()
            } else {
                let y = batch_norm2d(&mut t, xv, gv, bv, &mut s, true).unwrap();
                match act {
                    Activation::Relu => crate::ops::relu(&mut t, y).unwrap(),
                    Activation::Relu6 => crate::ops::relu6(&mut t, y).unwrap(),
                    Activation::None => y,
                }
            };
            let out = bits(t.value(y));
            let gr = t.backward_with(y, dy.clone()).unwrap();
            let grads = [xv, gv, bv].map(|v| bits(gr.get(v).unwrap()));
            let stats = [&s.running_mean, &s.running_var]
                .map(|a| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            (out, stats, grads)
        };
        for act in [Activation::Relu, Activation::Relu6, Activation::None] {
            let want = run(act, false);
            if act == Activation::Relu6 {
                let y: Vec<f32> = want.0.iter().map(|&v| f32::from_bits(v)).collect();
                assert!(y.contains(&0.0) && y.contains(&6.0), "both bounds clip");
            }
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let got = pool.install(|| run(act, true));
                assert!(got == want, "{act:?}, {threads} threads");
            }
        }
        let xs = [
            uniform(&[2, 3, 3, 2], 83),
            positive(&[3], 84),
            uniform(&[3], 85),
        ];
        for act in [Activation::Relu, Activation::Relu6] {
            let s = Mutex::new(BatchNormState::<f64>::new(3));
            check(
                |t, v| batch_norm2d_train_act(t, (v[0], v[1], v[2]), &mut s.lock().unwrap(), act),
                &xs,
                86,
            )
            .unwrap();
        }
    }
}
