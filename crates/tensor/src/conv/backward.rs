//! Input, weight and bias gradients of [`super::conv2d`].

use super::depthwise::{dw_plane, dw_scratch_len, Plane};
use super::direct::{
    backward_input_scatter, backward_weight_samples, conv_sample, flip_transpose, pack_weights,
    transpose_weights, Direct, Dst,
};
use super::geom::{detect_isa, dims4, Geom};
use super::im2col::{col2im, im2col};
use super::params::Conv2dParams;
use super::DW_CHUNK;
use crate::gemm::{gemm_slices, gemm_uninit, Mat};
use crate::group::{channel_lanes, Group};
use crate::scratch::Pool;
use crate::{
    assume_init_mut, for_each_chunk, for_each_uninit_chunk, for_each_zeroed_chunk, zeroed, Float,
    Par, Result, TensorError,
};
use ndarray::{Array1, Array4, ArrayView4};

/// Input gradient of [`conv2d`](super::conv2d): `dx = convᵀ(dy)`, by GEMM `Wᵀ·dy` and col2im (or directly
/// per channel for depthwise, without col2im for 1×1 stride-1 unpadded kernels, and for f32
/// stride-1 convolutions as a direct convolution of `dy` with the flipped, transposed kernel).
///
/// # Shapes
/// - `dy`: `[n, c_out, h_out, w_out]`, `w`: `[c_out, c_in / groups, k_h, k_w]`, `x_hw = (h, w)`
///   → `dx`: `[n, c_in, h, w]` with `c_in = w.dim(1)·groups`
/// # Errors
/// As [`conv2d`](super::conv2d) (op `conv2d_backward_input`), plus `ShapeMismatch` if `dy` is not
/// `[n, c_out, h_out, w_out]` for these parameters.
pub fn conv2d_backward_input<F: Float>(
    dy: ArrayView4<F>,
    w: ArrayView4<F>,
    x_hw: (usize, usize),
    p: &Conv2dParams,
    par: Par,
) -> Result<Array4<F>> {
    backward_input(dy, w, x_hw, p, par, None)
}

/// `acc + dx` with `dx` of [`conv2d_backward_input`], in `acc`'s buffer: a gradient that
/// already holds another use's contribution (a residual block's shortcut) takes this one's
/// without a separate pass over both. The bits of computing `dx` and then adding it to `acc`
/// element by element; the direct stride-1 path adds each block as it stores it.
///
/// # Shapes
/// As [`conv2d_backward_input`], with `acc`: `[n, c_in, h, w]`.
/// # Errors
/// As [`conv2d_backward_input`], plus `ShapeMismatch` if `acc` is not `dx`'s shape.
pub fn conv2d_backward_input_add<F: Float>(
    dy: ArrayView4<F>,
    w: ArrayView4<F>,
    x_hw: (usize, usize),
    p: &Conv2dParams,
    par: Par,
    acc: Array4<F>,
) -> Result<Array4<F>> {
    backward_input(dy, w, x_hw, p, par, Some(acc))
}

/// [`conv2d_backward_input`], added into `acc` when there is one.
fn backward_input<F: Float>(
    dy: ArrayView4<F>,
    w: ArrayView4<F>,
    x_hw: (usize, usize),
    p: &Conv2dParams,
    par: Par,
    acc: Option<Array4<F>>,
) -> Result<Array4<F>> {
    let op = "conv2d_backward_input";
    let dyd = dims4(&dy);
    let wd = dims4(&w);
    let xs = [dyd[0], wd[1] * p.groups, x_hw.0, x_hw.1];
    let g = Geom::new(op, xs, wd, p)?;
    if dyd != [g.n, g.c_out, g.ho, g.wo] {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: dyd.to_vec(),
            rhs: vec![g.n, g.c_out, g.ho, g.wo],
        });
    }
    if let Some(a) = acc.as_ref().filter(|a| dims4(&a.view()) != xs) {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: a.shape().to_vec(),
            rhs: xs.to_vec(),
        });
    }
    let dy = dy.as_standard_layout();
    let w = w.as_standard_layout();
    let dys = dy.as_slice().expect("standard layout is contiguous");
    let ws = w.as_slice().expect("standard layout is contiguous");
    let (np, kd, hw) = (g.npix(), g.kdim(), g.h * g.w);
    // the tasks' scratch buffers, reused across the pieces of this call
    let pool = Pool::<F>::new();
    let dx_len = g.n * g.c_in * hw;
    let dx = |dxs: Vec<F>| {
        Array4::from_shape_vec((g.n, g.c_in, g.h, g.w), dxs).expect("n·c_in·h·w values")
    };
    // Fused product + col2im on the phase-split grid (AVX-512): strided convolutions and those
    // with too few input channels per group for the flipped-kernel path below.
    if input_path::<F>(&g) == InputPath::Scatter {
        let (d, isa) = g
            .direct_forward::<F>()
            .expect("the scatter path has direct kernels");
        let wts: Vec<Vec<F>> = (0..g.groups)
            .map(|gi| transpose_weights(&d, &ws[gi * g.cout_g * kd..(gi + 1) * g.cout_g * kd]))
            .collect();
        let sl = d.scatter_scratch_len();
        let dxs = for_each_zeroed_chunk(
            par,
            dx_len,
            g.in_sample(),
            || pool.take(sl),
            |sc, s, dx_s| {
                let dy_s = &dys[s * g.out_sample()..(s + 1) * g.out_sample()];
                for (gi, wt) in wts.iter().enumerate() {
                    let dy_g = &dy_s[gi * g.cout_g * np..(gi + 1) * g.cout_g * np];
                    let dx_g = &mut dx_s[gi * g.cin_g * hw..(gi + 1) * g.cin_g * hw];
                    backward_input_scatter(&d, isa, wt, dy_g, dx_g, sc);
                }
            },
        );
        return Ok(add_into(acc, dx(dxs), par));
    }
    // Direct path: dx = stride-1 convolution of dy with the flipped, transposed kernel.
    let direct = g.direct_backward_input::<F>();
    let tables = direct.map(|(d, _)| d.tables());
    let plan = direct.map(|(d, isa)| d.plan(isa));
    let packed: Vec<Vec<F>> = match direct {
        Some((d, _)) => (0..g.groups)
            .map(|gi| {
                let w_g = &ws[gi * g.cout_g * kd..(gi + 1) * g.cout_g * kd];
                let wb = flip_transpose(w_g, g.cout_g, g.cin_g, g.kh, g.kw);
                let cob = plan.expect("plan chosen with the direct path").cob;
                pack_weights(&d, &wb, cob, par)
            })
            .collect(),
        None => Vec::new(),
    };
    let scratch = match direct {
        Some((d, _)) => d.scratch_len(),
        None if g.depthwise() => dw_scratch_len(&g),
        None if g.pointwise() => 0,
        None => kd * np,
    };
    let dw_isa = if g.depthwise() { detect_isa() } else { None };
    // one sample's direct input gradient into `out` (the sample's `[c_in, h, w]`)
    let sample = |s: usize, dcols: &mut [F], mut out: Dst<'_, F>| {
        let (d, isa) = direct.expect("the direct path");
        let dy_s = &dys[s * g.out_sample()..(s + 1) * g.out_sample()];
        for (gi, wpk) in packed.iter().enumerate() {
            let dy_g = &dy_s[gi * g.cout_g * np..(gi + 1) * g.cout_g * np];
            conv_sample(
                &d,
                isa,
                plan.expect("plan chosen with the direct path"),
                dy_g,
                wpk,
                out.part(gi * g.cin_g * hw..(gi + 1) * g.cin_g * hw),
                dcols,
                tables.as_ref().expect("tables built with the direct plan"),
                0..g.cin_g,
            );
        }
    };
    let acc = match (acc, direct) {
        (Some(acc), Some(_)) => {
            // each block added into `acc` as it is stored
            let mut acc = standard(acc);
            let a = acc.as_slice_mut().expect("standard layout is contiguous");
            for_each_chunk(
                par,
                a,
                g.in_sample(),
                || pool.take(scratch),
                |dcols, s, a_s| sample(s, dcols, Dst::Add(a_s)),
            );
            return Ok(acc);
        }
        (acc, _) => acc,
    };
    // the direct kernels write every element of `dx`; the other paths' start from zeros
    let dxs = for_each_uninit_chunk(
        par,
        dx_len,
        g.in_sample(),
        || pool.take(scratch),
        |dcols, s, dx_u| {
            if direct.is_some() {
                sample(s, dcols, Dst::Write(dx_u));
                return;
            }
            let dy_s = &dys[s * g.out_sample()..(s + 1) * g.out_sample()];
            // the other paths accumulate into zeros, each plane or group zeroed just before
            // its first term while it is in cache; the 1×1 GEMM writes its output outright
            if g.depthwise() {
                for co in 0..g.c_out {
                    let ci = co / g.cout_g;
                    let wk = &ws[co * g.kh * g.kw..(co + 1) * g.kh * g.kw];
                    let dy_c = &dy_s[co * np..(co + 1) * np];
                    let plane = &mut dx_u[ci * hw..(ci + 1) * hw];
                    let dx_c = if co % g.cout_g == 0 {
                        zeroed(plane)
                    } else {
                        // SAFETY: zeroed at `co − co % cout_g`, the first channel of `ci`.
                        unsafe { assume_init_mut(plane) }
                    };
                    dw_plane(
                        dw_isa,
                        Plane::BackwardInput,
                        &g,
                        dy_c,
                        wk,
                        dx_c,
                        dcols,
                        co > 0,
                    );
                }
                return;
            }
            for gi in 0..g.groups {
                let w_g = &ws[gi * g.cout_g * kd..(gi + 1) * g.cout_g * kd];
                let dy_g = &dy_s[gi * g.cout_g * np..(gi + 1) * g.cout_g * np];
                let dx_g = &mut dx_u[gi * g.cin_g * hw..(gi + 1) * g.cin_g * hw];
                // A: [m = c_in_g·k_h·k_w, k = c_out_g] (transposed view), B: [k, n = h_out·w_out]
                let (am, bm) = (Mat::rm(g.cout_g, kd).t(), Mat::rm(g.cout_g, np));
                if g.pointwise() {
                    // dX_g[c_in_g, h·w] = W_gᵀ[c_in_g, c_out_g] · dY_g[c_out_g, h·w]
                    gemm_uninit(w_g, am, dy_g, bm, dx_g);
                    continue;
                }
                // dcols[c_in_g·k_h·k_w, h_out·w_out] = W_gᵀ[c_in_g·k_h·k_w, c_out_g] · dY_g[c_out_g, h_out·w_out]
                // C: [m, n]; beta = 0 so C is not read
                gemm_slices(
                    F::one(),
                    w_g,
                    am,
                    dy_g,
                    bm,
                    F::zero(),
                    dcols,
                    Mat::rm(kd, np),
                );
                col2im(&g, dcols, zeroed(dx_g));
            }
        },
    );
    Ok(add_into(acc, dx(dxs), par))
}

/// How [`conv2d_backward_input`] computes the input gradient of a geometry (for `F`, on this
/// CPU): one source for it and for the patch norms' gradient, which depends on whether every
/// channel's sums take the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InputPath {
    /// A direct stride-1 convolution of `dy` with the flipped, transposed kernel.
    Direct,
    /// `Wᵀ·dy` fused with col2im (AVX-512), tap blocks of 16.
    Scatter,
    /// Per channel (one input channel per group).
    Depthwise,
    /// `Wᵀ·dy` without col2im (1×1, stride 1, unpadded).
    Pointwise,
    /// `Wᵀ·dy` by GEMM, then col2im: every input position takes its terms in tap order, from
    /// zero.
    Col2im,
}

/// The [`InputPath`] of `g` for `F`.
pub(super) fn input_path<F: 'static>(g: &Geom) -> InputPath {
    if g.direct_backward_input::<F>().is_some() {
        InputPath::Direct
    } else if g
        .direct_forward::<F>()
        .is_some_and(|(_, isa)| Direct::scatter_supported(isa))
    {
        InputPath::Scatter
    } else if g.depthwise() {
        InputPath::Depthwise
    } else if g.pointwise() {
        InputPath::Pointwise
    } else {
        InputPath::Col2im
    }
}

/// `a` itself when it is in standard layout, else a copy that is.
pub(super) fn standard<F: Float>(a: Array4<F>) -> Array4<F> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

/// `acc + dx` element by element in `acc`'s buffer (`dx` itself without `acc`).
pub(super) fn add_into<F: Float>(acc: Option<Array4<F>>, dx: Array4<F>, par: Par) -> Array4<F> {
    let Some(acc) = acc else {
        return dx;
    };
    let mut acc = standard(acc);
    let a = acc.as_slice_mut().expect("standard layout is contiguous");
    crate::add_assign(a, dx.as_slice().expect("fresh array is contiguous"), par);
    acc
}

/// Weight gradient of [`conv2d`](super::conv2d): `dw = Σ_samples dy_s · im2col(x_s)ᵀ`, the per-sample terms
/// summed in chunks of [`DW_CHUNK`] samples, each chunk in order, then the chunks in order
/// (bit-identical for any thread count); f32 uses the direct SIMD kernels, which accumulate a
/// chunk's samples in order. Depthwise: a direct sum per channel, parallel over channels,
/// samples in order.
///
/// # Shapes
/// - `x`: `[n, c_in, h, w]`, `dy`: `[n, c_out, h_out, w_out]`, `k_hw = (k_h, k_w)`
///   → `dw`: `[c_out, c_in / groups, k_h, k_w]`
/// # Errors
/// As [`conv2d`](super::conv2d) (op `conv2d_backward_weight`), plus `ShapeMismatch` if `dy` is not
/// `[n, c_out, h_out, w_out]` for these parameters.
pub fn conv2d_backward_weight<F: Float>(
    x: ArrayView4<F>,
    dy: ArrayView4<F>,
    k_hw: (usize, usize),
    p: &Conv2dParams,
    par: Par,
) -> Result<Array4<F>> {
    conv2d_backward_weight_in(x, dy, k_hw, p, par, None)
}

/// [`conv2d_backward_weight`] of a batch split over the ranks of `group` (this rank holds
/// `x` and `dy` of its rows, [`Group::rows`]): the chunk partials are computed locally and
/// their fold in chunk order continues across the ranks ([`Group::chain`]), so every rank
/// gets the single-process bits of the whole batch. Depthwise: the per-sample terms are
/// computed locally, their sum in sample order runs across the ranks.
///
/// # Errors
/// As [`conv2d_backward_weight`]; `Comm` for a failed transfer.
pub fn conv2d_backward_weight_in<F: Float>(
    x: ArrayView4<F>,
    dy: ArrayView4<F>,
    k_hw: (usize, usize),
    p: &Conv2dParams,
    par: Par,
    group: Option<&Group>,
) -> Result<Array4<F>> {
    let op = "conv2d_backward_weight";
    let group = group.filter(|g| g.size() > 1);
    let xd = dims4(&x);
    let dyd = dims4(&dy);
    if p.groups == 0 || (xd[1] % p.groups, dyd[1] % p.groups) != (0, 0) {
        return Err(TensorError::BadGroups {
            op,
            c_in: xd[1],
            c_out: dyd[1],
            groups: p.groups,
        });
    }
    let wd = [dyd[1], xd[1] / p.groups, k_hw.0, k_hw.1];
    let g = Geom::new(op, xd, wd, p)?;
    if dyd != [g.n, g.c_out, g.ho, g.wo] {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: dyd.to_vec(),
            rhs: vec![g.n, g.c_out, g.ho, g.wo],
        });
    }
    let x = x.as_standard_layout();
    let dy = dy.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let dys = dy.as_slice().expect("standard layout is contiguous");
    let (np, kd, hw) = (g.npix(), g.kdim(), g.h * g.w);
    // the tasks' scratch buffers, reused across the pieces of this call
    let (pool, pool_dy) = (Pool::<F>::new(), Pool::<F>::new());
    let mut dw = Array4::<F>::zeros((g.c_out, g.cin_g, g.kh, g.kw));
    let dws = dw.as_slice_mut().expect("fresh array is contiguous");

    if g.depthwise() {
        // Each output channel is independent: parallel over channels, samples summed in order.
        let kk = g.kh * g.kw;
        let (isa, scratch) = (detect_isa(), dw_scratch_len(&g));
        let Some(group) = group else {
            for_each_chunk(
                par,
                dws,
                kk,
                || (vec![F::zero(); kk], pool.take(scratch)),
                |(t, sc), co, dwk| {
                    let ci = co / g.cout_g;
                    for s in 0..g.n {
                        let x_c = &xs[s * g.in_sample() + ci * hw..][..hw];
                        let dy_c = &dys[s * g.out_sample() + co * np..][..np];
                        dw_plane(isa, Plane::Terms, &g, x_c, dy_c, t, sc, s > 0);
                        for (d, &v) in dwk.iter_mut().zip(t.iter()) {
                            *d = *d + v;
                        }
                    }
                },
            );
            return Ok(dw);
        };
        // The per-sample terms `[c_out, n, k_h·k_w]` in parallel, then their sum across ranks.
        let mut terms = vec![F::zero(); g.c_out * g.n * kk];
        for_each_chunk(
            par,
            &mut terms,
            g.n * kk,
            || pool.take(scratch),
            |sc, co, tc| {
                let ci = co / g.cout_g;
                for (s, t) in tc.chunks_exact_mut(kk).enumerate() {
                    let x_c = &xs[s * g.in_sample() + ci * hw..][..hw];
                    let dy_c = &dys[s * g.out_sample() + co * np..][..np];
                    dw_plane(isa, Plane::Terms, &g, x_c, dy_c, t, sc, s > 0);
                }
            },
        );
        group.chain(op, dws, |acc, _| {
            for (dwk, tc) in acc.chunks_exact_mut(kk).zip(terms.chunks_exact(g.n * kk)) {
                for t in tc.chunks_exact(kk) {
                    for (d, &v) in dwk.iter_mut().zip(t) {
                        *d = *d + v;
                    }
                }
            }
        })?;
        return Ok(dw);
    }

    let wlen = g.c_out * kd;
    let nchunks = g.n.div_ceil(DW_CHUNK);
    let mut partials = vec![F::zero(); nchunks * wlen];
    if let Some((d, isa)) = g.direct_forward::<F>() {
        // Direct stride-1 path: one call per (chunk, group) accumulates the chunk's samples.
        let (xl, dl) = (d.scratch_len(), d.dy_scratch_len(isa));
        for_each_chunk(
            par,
            &mut partials,
            wlen,
            || (pool.take(DW_CHUNK * xl), pool_dy.take(DW_CHUNK * dl)),
            |(xsc, dsc), c, part| {
                let samples = c * DW_CHUNK..((c + 1) * DW_CHUNK).min(g.n);
                let ns = samples.len();
                for gi in 0..g.groups {
                    let xg: Vec<&[F]> = samples
                        .clone()
                        .map(|s| &xs[s * g.in_sample() + gi * g.cin_g * hw..][..g.cin_g * hw])
                        .collect();
                    let dyg: Vec<&[F]> = samples
                        .clone()
                        .map(|s| &dys[s * g.out_sample() + gi * g.cout_g * np..][..g.cout_g * np])
                        .collect();
                    let dw_g = &mut part[gi * g.cout_g * kd..(gi + 1) * g.cout_g * kd];
                    backward_weight_samples(
                        &d,
                        isa,
                        &xg,
                        &dyg,
                        dw_g,
                        &mut xsc[..ns * xl],
                        &mut dsc[..ns * dl],
                    );
                }
            },
        );
    } else {
        let scratch = if g.pointwise() { 0 } else { kd * np };
        for_each_chunk(
            par,
            &mut partials,
            wlen,
            || pool.take(scratch),
            |cols, c, part| {
                for (i, s) in (c * DW_CHUNK..((c + 1) * DW_CHUNK).min(g.n)).enumerate() {
                    let beta = if i == 0 { F::zero() } else { F::one() };
                    let x_s = &xs[s * g.in_sample()..(s + 1) * g.in_sample()];
                    let dy_s = &dys[s * g.out_sample()..(s + 1) * g.out_sample()];
                    for gi in 0..g.groups {
                        let x_g = &x_s[gi * g.cin_g * hw..(gi + 1) * g.cin_g * hw];
                        let dy_g = &dy_s[gi * g.cout_g * np..(gi + 1) * g.cout_g * np];
                        let dw_g = &mut part[gi * g.cout_g * kd..(gi + 1) * g.cout_g * kd];
                        let b_src: &[F] = if g.pointwise() {
                            x_g
                        } else {
                            im2col(&g, x_g, cols);
                            cols
                        };
                        // dW_g[c_out_g, c_in_g·k_h·k_w] (+)= dY_g[c_out_g, h_out·w_out] · colsᵀ[h_out·w_out, c_in_g·k_h·k_w]
                        gemm_slices(
                            F::one(),
                            dy_g,
                            Mat::rm(g.cout_g, np), // A: [m = c_out_g, k = h_out·w_out]
                            b_src,
                            Mat::rm(kd, np).t(), // B: [k, n = c_in_g·k_h·k_w] (transposed view)
                            beta,
                            dw_g,
                            Mat::rm(g.cout_g, kd), // C: [m, n]; beta = 0 on a chunk's first sample
                        );
                    }
                }
            },
        );
    }
    // Chunk partials summed in chunk order (the first chunk of the batch is copied).
    let fold = |acc: &mut [F], first: bool| {
        let mut parts = partials.chunks_exact(wlen);
        if first {
            acc.copy_from_slice(parts.next().expect("n > 0 gives a chunk"));
        }
        for part in parts {
            for (d, &v) in acc.iter_mut().zip(part) {
                *d = *d + v;
            }
        }
    };
    match group {
        Some(group) => group.chain(op, dws, fold)?,
        None => fold(dws, true),
    }
    Ok(dw)
}

/// Bias gradient of [`conv2d`](super::conv2d): `db[c] = Σ_{n, h, w} dy[n, c, h, w]`, the planes of a channel
/// in sample order into 16 partial sums (element `j` of a plane to lane `j % 16`, combined in a
/// fixed tree; vectorised), channels in parallel: the same bits for any thread count.
///
/// # Shapes
/// `dy`: `[n, c_out, h_out, w_out]` → `[c_out]`.
pub fn conv2d_backward_bias<F: Float>(dy: ArrayView4<F>, par: Par) -> Array1<F> {
    conv2d_backward_bias_in(dy, par, None).expect("no transfer without a group")
}

/// [`conv2d_backward_bias`] of a batch split over the ranks of `group`: each channel's lane
/// sums continue across the ranks in rank order (see [`crate::group::channel_lanes`]).
///
/// # Errors
/// `Comm` for a failed transfer.
pub fn conv2d_backward_bias_in<F: Float>(
    dy: ArrayView4<F>,
    par: Par,
    group: Option<&Group>,
) -> Result<Array1<F>> {
    let (_, c, h, w) = dy.dim();
    let hw = h * w;
    let dy = dy.as_standard_layout();
    let ds = dy.as_slice().expect("standard layout is contiguous");
    let sums = channel_lanes::<F, 1>(group, "conv2d_backward_bias", c, par, |ch, acc| {
        if hw > 0 {
            for p in crate::channel_planes(ds, c, hw, ch) {
                acc[0].add(p);
            }
        }
    })?;
    Ok(sums.into_iter().map(|[l]| l.total()).collect())
}
