//! [`conv2d`] and [`conv2d_act`]: the forward on the plan of [`super::geom`].

use super::depthwise::{dw_plane, dw_scratch_len, Plane};
use super::direct::{conv_padded, conv_sample, pack_weights, Direct, Dst, Isa, Plan};
use super::geom::{detect_isa, dims4, Geom};
use super::im2col::im2col;
use super::params::Conv2dParams;
use super::pointwise::pointwise_by_columns;
use crate::activation::Activation;
use crate::gemm::{gemm_uninit, Mat};
use crate::{
    assume_init_mut, for_each_uninit_chunk, for_each_zeroed_chunk, zeroed, Float, Par, Result,
    TensorError,
};
use ndarray::{Array4, ArrayView1, ArrayView4};

/// 2-D convolution: direct SIMD kernels (f32), or im2col + one GEMM per (sample, group);
/// `groups == c_in` is depthwise (direct per-channel path); 1×1 stride-1 unpadded convolutions
/// skip im2col. See the module documentation for the path choice.
///
/// # Shapes
/// - `x`: `[n, c_in, h, w]`, `w`: `[c_out, c_in / groups, k_h, k_w]`, `bias`: `[c_out]`
///   → `[n, c_out, h_out, w_out]`
/// - `h_out = (h + 2·p_h − d_h·(k_h − 1) − 1) / s_h + 1`, same for `w_out`
/// # Errors
/// `EmptyDim` for a zero-sized dimension; `BadGroups` if `groups ∤ c_in` or `c_out`;
/// `ShapeMismatch` if `c_in != w.dim(1)·groups` or the bias length is not `c_out`;
/// `KernelTooLarge` / `InvalidParam` from [`Conv2dParams::output_hw`]. All name op `conv2d`.
pub fn conv2d<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    bias: Option<ArrayView1<F>>,
    p: &Conv2dParams,
    par: Par,
) -> Result<Array4<F>> {
    conv2d_act(x, w, bias, Activation::None, p, par)
}

/// `act(conv2d(x, w) + bias)`: [`conv2d`] with the activation applied in the same per-sample
/// epilogue as the bias, while the sample's output is still in cache (inference with BatchNorm
/// folded into `w` and `bias`). Bit-identical to [`conv2d`] followed by [`crate::relu`] /
/// [`crate::relu6`].
///
/// # Shapes
/// As [`conv2d`].
/// # Errors
/// As [`conv2d`].
pub fn conv2d_act<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    bias: Option<ArrayView1<F>>,
    act: Activation,
    p: &Conv2dParams,
    par: Par,
) -> Result<Array4<F>> {
    conv2d_act_packed(x, w, bias, act, p, par, &mut PackedWeights::default())
}

/// `row ← act(row + bias + res)` (in that order), the forward's per-channel epilogue. Without a
/// bias or residual nothing is added (`−0 + 0` would be `+0`), so the bits are those of the conv
/// followed by the sum and `act` as separate ops.
pub(super) fn epilogue<F: Float>(
    row: &mut [F],
    bias: Option<F>,
    res: Option<&[F]>,
    act: Activation,
) {
    match (bias, res) {
        (None, None) if act == Activation::None => {}
        (None, None) => row.iter_mut().for_each(|v| *v = act.apply(*v)),
        (Some(b), None) => row.iter_mut().for_each(|v| *v = act.apply(*v + b)),
        (None, Some(r)) => {
            for (v, &r) in row.iter_mut().zip(r) {
                *v = act.apply(*v + r);
            }
        }
        (Some(b), Some(r)) => {
            for (v, &r) in row.iter_mut().zip(r) {
                *v = act.apply(*v + b + r);
            }
        }
    }
}

/// A convolution's weights packed for the direct kernel, kept across calls by a caller whose
/// weights do not change (folded inference: `hla_models::fold::FoldBn`). Packing reads and
/// rewrites every weight on each call, which at batch 1 is a large share of a forward
/// (ResNet-18's 512-channel layers hold 9.4 MB each).
///
/// The packing is reused only for the same weight buffer (its address and dimensions, in
/// standard layout), input size, parameters and instruction set; anything else packs again. A
/// caller that keeps one must not change the weights' values in place meanwhile.
#[derive(Clone, Debug)]
pub struct PackedWeights<F> {
    key: Option<PackKey>,
    groups: Vec<Vec<F>>,
}

impl<F> Default for PackedWeights<F> {
    fn default() -> Self {
        PackedWeights {
            key: None,
            groups: Vec::new(),
        }
    }
}

impl<F> PackedWeights<F> {
    /// Whether it holds a packing (the last call took the direct path with the caller's own
    /// weight buffer).
    pub fn is_packed(&self) -> bool {
        self.key.is_some()
    }
}

/// What a packing depends on, and the weight buffer it was made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PackKey {
    w_addr: usize,
    x_hw: (usize, usize),
    w_dims: [usize; 4],
    p: Conv2dParams,
    isa: Isa,
    plan: Plan,
}

/// [`conv2d_act`] that keeps the direct kernel's packed weights in `cache` for later calls with
/// the same weights ([`PackedWeights`]); same values as [`conv2d_act`].
///
/// # Shapes
/// As [`conv2d`].
/// # Errors
/// As [`conv2d`].
pub fn conv2d_act_packed<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    bias: Option<ArrayView1<F>>,
    act: Activation,
    p: &Conv2dParams,
    par: Par,
    cache: &mut PackedWeights<F>,
) -> Result<Array4<F>> {
    conv2d_epilogue(x, w, bias, None, act, p, par, cache)
}

/// `act(conv2d(x, w) + bias + res)`: [`conv2d_act_packed`] with a residual block's sum in the
/// same per-sample epilogue (inference with BatchNorm folded: the block's last conv, its
/// shortcut `res` and the ReLU after the sum in one pass over the output while it is in cache).
/// Bit-identical to [`conv2d`] followed by adding the bias, then `res`, then the activation.
///
/// # Shapes
/// As [`conv2d`]; `res` has the output's shape `[n, c_out, h_out, w_out]`.
/// # Errors
/// As [`conv2d`]; `ShapeMismatch` (op `conv2d`) if `res` is not of the output's shape.
#[allow(clippy::too_many_arguments)] // the conv's operands, its epilogue and the packing
pub fn conv2d_add_act_packed<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    bias: Option<ArrayView1<F>>,
    res: ArrayView4<F>,
    act: Activation,
    p: &Conv2dParams,
    par: Par,
    cache: &mut PackedWeights<F>,
) -> Result<Array4<F>> {
    conv2d_epilogue(x, w, bias, Some(res), act, p, par, cache)
}

/// The forward of [`conv2d_act_packed`] and [`conv2d_add_act_packed`].
#[allow(clippy::too_many_arguments)] // the conv's operands, its epilogue and the packing
fn conv2d_epilogue<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    bias: Option<ArrayView1<F>>,
    res: Option<ArrayView4<F>>,
    act: Activation,
    p: &Conv2dParams,
    par: Par,
    cache: &mut PackedWeights<F>,
) -> Result<Array4<F>> {
    let op = "conv2d";
    let g = Geom::new(op, dims4(&x), dims4(&w), p)?;
    if let Some(b) = &bias {
        if b.len() != g.c_out {
            return Err(TensorError::ShapeMismatch {
                op,
                lhs: w.shape().to_vec(),
                rhs: b.shape().to_vec(),
            });
        }
    }
    if let Some(r) = &res {
        if r.shape() != [g.n, g.c_out, g.ho, g.wo] {
            return Err(TensorError::ShapeMismatch {
                op,
                lhs: vec![g.n, g.c_out, g.ho, g.wo],
                rhs: r.shape().to_vec(),
            });
        }
    }
    let res = res.as_ref().map(|r| r.as_standard_layout());
    let rs = res
        .as_ref()
        .map(|r| r.as_slice().expect("standard layout is contiguous"));
    let x = x.as_standard_layout();
    let w_in = w;
    let w = w_in.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let ws = w.as_slice().expect("standard layout is contiguous");
    let bias: Option<Vec<F>> = bias.map(|b| b.to_vec());
    let parts = g.pointwise_columns();
    if parts > 1 {
        let ys = pointwise_by_columns(&g, xs, ws, (bias.as_deref(), rs, act), parts, par);
        let shape = (g.n, g.c_out, g.ho, g.wo);
        return Ok(Array4::from_shape_vec(shape, ys).expect("n·c_out·h_out·w_out values"));
    }
    let (np, kd) = (g.npix(), g.kdim());
    // Direct stride-1 path: one packed weight set per group.
    let direct = g.direct_forward::<F>();
    let tables = direct.map(|(d, _)| d.tables());
    let plan = direct.map(|(d, isa)| d.plan(isa));
    let mut fresh = PackedWeights::default();
    let packed: &[Vec<F>] = match (direct, plan) {
        (Some((d, isa)), Some(plan)) => {
            // a copy made by `as_standard_layout` is not the caller's buffer: never kept
            let key = (w.as_ptr() == w_in.as_ptr()).then_some(PackKey {
                w_addr: ws.as_ptr() as usize,
                x_hw: (g.h, g.w),
                w_dims: dims4(&w_in),
                p: *p,
                isa,
                plan,
            });
            let c = if key.is_some() { cache } else { &mut fresh };
            if key.is_none() || c.key != key {
                c.groups = (0..g.groups)
                    .map(|gi| {
                        let w_g = &ws[gi * g.cout_g * kd..(gi + 1) * g.cout_g * kd];
                        pack_weights(&d, w_g, plan.cob, par)
                    })
                    .collect();
                c.key = key;
            }
            &c.groups
        }
        _ => &[],
    };
    let scratch = match direct {
        Some((d, _)) => d.scratch_len(),
        None if g.depthwise() => dw_scratch_len(&g),
        None if g.pointwise() => 0,
        None => kd * np,
    };
    let dw_isa = if g.depthwise() { detect_isa() } else { None };
    // one task per (sample, block of `cb` output channels); blocks > 1 only for groups == 1
    // or depthwise, so a block lies within one group unless it is the whole sample
    let split = g.forward_split(plan.map_or(1, |p| p.cob));
    let cb = g.c_out / split;
    // a sample split into channel blocks on the direct path: its padded input written once,
    // for all of its tasks, instead of once per task
    let shared: Option<Vec<Vec<F>>> = match direct {
        Some((d, isa)) if split > 1 => Some(
            (0..g.n)
                .map(|s| padded_input(&d, isa, &xs[s * g.in_sample()..][..g.in_sample()], par))
                .collect(),
        ),
        _ => None,
    };
    let scratch = if shared.is_some() { 0 } else { scratch };
    // the direct kernels write every output; the other paths' outputs start from zeros
    let ys = for_each_uninit_chunk(
        par,
        g.n * g.c_out * np,
        cb * np,
        || vec![F::zero(); scratch],
        |cols, t, y_u| {
            let (s, co0) = (t / split, (t % split) * cb);
            let x_s = &xs[s * g.in_sample()..(s + 1) * g.in_sample()];
            // groups of this task (with split > 1, groups == 1: the block's rows of W)
            let (ng, rows) = if split > 1 {
                (1, cb)
            } else {
                (g.groups, g.cout_g)
            };
            let y_t: &mut [F] = if let Some((d, isa)) = direct {
                let tables = tables.as_ref().expect("tables built with the direct plan");
                let plan = plan.expect("plan chosen with the direct path");
                for (gi, wpk) in packed.iter().enumerate().take(ng) {
                    let x_g = &x_s[gi * g.cin_g * g.h * g.w..(gi + 1) * g.cin_g * g.h * g.w];
                    let y_g = Dst::Write(&mut y_u[gi * rows * np..(gi + 1) * rows * np]);
                    let chans = co0..co0 + rows;
                    match &shared {
                        // split > 1: one group
                        Some(p) => conv_padded(&d, isa, plan, &p[s], wpk, y_g, tables, chans),
                        None => conv_sample(&d, isa, plan, x_g, wpk, y_g, cols, tables, chans),
                    }
                }
                // SAFETY: `conv_sample` writes every output of its channel range, and the
                // `ng` groups' ranges tile the chunk.
                unsafe { assume_init_mut(y_u) }
            } else if g.depthwise() {
                for co in co0..co0 + cb {
                    let ci = co / g.cout_g;
                    let x_c = &x_s[ci * g.h * g.w..(ci + 1) * g.h * g.w];
                    let wk = &ws[co * g.kh * g.kw..(co + 1) * g.kh * g.kw];
                    // zeroed plane by plane, each just before the kernel overwrites it while it
                    // is in cache, not the task's whole chunk first (megabytes at 224²)
                    let y_c = zeroed(&mut y_u[(co - co0) * np..(co - co0 + 1) * np]);
                    dw_plane(dw_isa, Plane::Forward, &g, x_c, wk, y_c, cols, co > co0);
                }
                // SAFETY: every plane of the chunk was zeroed (and then overwritten) above.
                unsafe { assume_init_mut(y_u) }
            } else {
                for gi in 0..ng {
                    let x_g = &x_s[gi * g.cin_g * g.h * g.w..(gi + 1) * g.cin_g * g.h * g.w];
                    let w0 = (gi * g.cout_g + co0) * kd;
                    let w_g = &ws[w0..w0 + rows * kd];
                    let y_g = &mut y_u[gi * rows * np..(gi + 1) * rows * np];
                    let b_src: &[F] = if g.pointwise() {
                        x_g
                    } else {
                        im2col(&g, x_g, cols);
                        cols
                    };
                    // Y_g[rows, h_out·w_out] = W_g[rows, c_in_g·k_h·k_w] · cols[c_in_g·k_h·k_w, h_out·w_out]
                    // A: [m = rows, k = c_in_g·k_h·k_w], B: [k, n = h_out·w_out], C: [m, n]
                    gemm_uninit(w_g, Mat::rm(rows, kd), b_src, Mat::rm(kd, np), y_g);
                }
                // SAFETY: `gemm_uninit` wrote each group's rows, and the groups tile the chunk.
                unsafe { assume_init_mut(y_u) }
            };
            // the residual's values of this task's chunk (sample `s`, channels `co0..co0 + cb`)
            let r_t = rs.map(|r| &r[t * cb * np..(t + 1) * cb * np]);
            for (c, row) in y_t.chunks_exact_mut(np).enumerate() {
                let r_c = r_t.map(|r| &r[c * np..(c + 1) * np]);
                epilogue(row, bias.as_ref().map(|b| b[co0 + c]), r_c, act);
            }
        },
    );
    Ok(Array4::from_shape_vec((g.n, g.c_out, g.ho, g.wo), ys).expect("n·c_out·h_out·w_out values"))
}

/// Tasks of [`padded_input`] per sample: its channels in at most this many blocks.
const PAD_TASKS: usize = 8;

/// `x` (one sample, one group) padded and phase-split by [`Direct::fill_input`], in parallel
/// over blocks of its channels (each channel's planes depend on that channel alone, so the
/// values are those of one call): the input that all of a sample's channel-block tasks read.
fn padded_input<F: Float>(d: &Direct, isa: Isa, x: &[F], par: Par) -> Vec<F> {
    let (per, hw) = (d.channel_len(), d.h * d.w);
    let k = d.cin.div_ceil(PAD_TASKS);
    // the last piece also holds the slack after the planes (zeros)
    for_each_zeroed_chunk(
        par,
        d.scratch_len(),
        k * per,
        || (),
        |_, i, dst| {
            let c0 = i * k;
            let nc = k.min(d.cin.saturating_sub(c0));
            if nc > 0 {
                let block = Direct { cin: nc, ..*d };
                block.fill_input(isa, &x[c0 * hw..(c0 + nc) * hw], &mut dst[..nc * per]);
            }
        },
    )
}
