//! Depthwise convolution (one input channel per group): direct per-plane forward, input
//! gradient and weight-gradient terms, no GEMM.
//!
//! The forward (and the input gradient of stride-1 layers, as the forward of its adjoint:
//! `dy` padded, the kernel flipped) copies the plane once into zero-padded stride-phase planes
//! and sums 64 consecutive positions of the flattened output grid in registers, tap after tap
//! (the layout of the direct kernels in `direct.rs`, one channel wide); the few junk columns of
//! the grid are dropped. Padding's products are ±0 and leave a sum that started at +0
//! unchanged (such a sum is never −0), so this gives the bits of summing only the in-bounds
//! taps, for finite weights. The weight gradient's per-sample terms read the same planes
//! against `dy` laid on the grid, 16-lane sums in position order. Strided input gradients go
//! row by row over stride-phase-split rows, queued taps summed in blocks of 16 / 8 / 4 in
//! registers. All of it is compiled for AVX-512 / AVX2 at run time ([`Isa`]); Rust never
//! fuses a multiply and an add, so every element is the same sequence of rounded products and
//! sums on every instruction set: each forward and input-gradient element the sum of its
//! taps in row-major tap order (`each_tap` in the tests pins it).

use super::direct::Isa;
use super::geom::Geom;
use crate::Float;

/// Taps gathered per row before they are applied (longer tap lists are applied in runs of
/// this many, one after the other: the same sequence per element).
const MAX_TAPS: usize = 32;

/// One kernel tap's contribution to a destination row segment: for `i` in `lo..hi`,
/// `dst[i] += w · src[i + c]`.
#[derive(Clone, Copy)]
struct Tap<'a, F> {
    w: F,
    src: &'a [F],
    c: isize,
    lo: usize,
    hi: usize,
}

/// The taps of one destination row, applied in the order they were pushed.
struct Taps<'a, F> {
    taps: [Tap<'a, F>; MAX_TAPS],
    len: usize,
}

impl<'a, F: Float> Taps<'a, F> {
    fn new() -> Self {
        let t = Tap {
            w: F::zero(),
            src: &[],
            c: 0,
            lo: 0,
            hi: 0,
        };
        Taps {
            taps: [t; MAX_TAPS],
            len: 0,
        }
    }

    /// Queues a tap; a full queue is applied to `dst` first.
    #[inline(always)]
    fn push(&mut self, dst: &mut [F], t: Tap<'a, F>) {
        if t.lo >= t.hi {
            return;
        }
        if self.len == MAX_TAPS {
            self.apply(dst);
        }
        self.taps[self.len] = t;
        self.len += 1;
    }

    /// `dst[i] = (…(dst[i] + w₁·src₁[i + c₁]) + w₂·src₂[i + c₂]) …` over the queued taps valid
    /// at `i`, in queue order: blocks of 16, 8 and 4 elements in registers where every tap is
    /// valid, element by element at the edges. Empties the queue.
    #[inline(always)]
    fn apply(&mut self, dst: &mut [F]) {
        let taps = &self.taps[..self.len];
        self.len = 0;
        let n = dst.len();
        let lo = taps.iter().map(|t| t.lo).max().unwrap_or(0).min(n);
        let hi = taps.iter().map(|t| t.hi).min().unwrap_or(n).max(lo);
        let one = |dst: &mut [F], i: usize, all: bool| {
            let mut v = dst[i];
            for t in taps {
                if all || (t.lo..t.hi).contains(&i) {
                    v = v + t.w * t.src[(i as isize + t.c) as usize];
                }
            }
            dst[i] = v;
        };
        for i in (0..lo).chain(hi..n) {
            one(dst, i, false);
        }
        let mut i = lo;
        i = block::<F, 16>(taps, dst, i, hi);
        i = block::<F, 8>(taps, dst, i, hi);
        i = block::<F, 4>(taps, dst, i, hi);
        for i in i..hi {
            one(dst, i, true);
        }
    }
}

/// Applies every tap to `dst[i..]` in blocks of `B` elements summed in registers while a whole
/// block fits below `hi` (every tap valid there); returns where it stopped.
#[inline(always)]
fn block<F: Float, const B: usize>(
    taps: &[Tap<'_, F>],
    dst: &mut [F],
    mut i: usize,
    hi: usize,
) -> usize {
    while i + B <= hi {
        let mut acc = [F::zero(); B];
        acc.copy_from_slice(&dst[i..i + B]);
        for t in taps {
            let s0 = (i as isize + t.c) as usize;
            let src = &t.src[s0..s0 + B];
            for l in 0..B {
                acc[l] = acc[l] + t.w * src[l];
            }
        }
        dst[i..i + B].copy_from_slice(&acc);
        i += B;
    }
    i
}

/// Per kernel column `kj` of a layer with column stride `s`: the phase `b` its inputs lie in
/// and `e` with input column `ow·s + off = (ow + e)·s + b`, so output column `ow` reads element
/// `ow + e` of that phase.
fn col_phase(g: &Geom, kj: usize) -> (usize, isize) {
    let off = (kj * g.dw) as isize - g.pw as isize;
    let s = g.sw as isize;
    (off.rem_euclid(s) as usize, off.div_euclid(s))
}

/// Outputs of the forward's flattened grid summed in registers at once.
const GRID_BLOCK: usize = 64;

/// Taps whose plane offsets and weights the forward keeps in a stack array (larger kernels
/// compute the rest per block).
const GRID_TAPS: usize = 64;

/// The forward's padded phase planes: `s_h·s_w` planes of `hq × wq` (each followed by
/// `wq + GRID_BLOCK` slack elements, so a block running past the grid's end stays in bounds), where
/// plane `(a, b)` holds `x_pad[i·s_h + a, j·s_w + b]` and output `(oh, ow)` of tap `(ki, kj)`
/// reads its plane at `(oh + ki·d_h / s_h, ow + kj·d_w / s_w)` — row pitch `wq` for the
/// outputs too, so a block of consecutive grid positions is one contiguous load per tap.
fn grid_dims(g: &Geom) -> (usize, usize, usize) {
    let hq = g.ho + (g.kh - 1) * g.dh / g.sh;
    let wq = g.wo + (g.kw - 1) * g.dw / g.sw;
    (hq, wq, (hq + 1) * wq + GRID_BLOCK)
}

/// Scratch elements [`dw_plane`] needs per task: the phase planes and output grid of the
/// forward and of the stride-1 input gradient's adjoint, or a phase-split plane for any other
/// input gradient.
pub(super) fn dw_scratch_len(g: &Geom) -> usize {
    let grid = |g: &Geom| {
        let (_, wq, pitch) = grid_dims(g);
        g.sh * g.sw * pitch + g.ho * wq + GRID_BLOCK + g.sw * wq
    };
    let backward = match adjoint(g) {
        Some(gb) => grid(&gb),
        None => g.h * g.w,
    };
    grid(g).max(backward)
}

/// Elements of phase `b` in a row of `w` at stride `s`.
fn phase_len(w: usize, s: usize, b: usize) -> usize {
    (w - b.min(w)).div_ceil(s)
}

/// Start of phase `b` within a phase-split row of `w` elements at stride `s` (phases stored
/// one after the other: `row[b], row[b + s], …`).
fn phase_start(w: usize, s: usize, b: usize) -> usize {
    (0..b).map(|a| phase_len(w, s, a)).sum()
}

/// Splits every row of `src: [h, w]` into its `s` column phases, into `dst: [h, w]`.
fn split_phases<F: Copy>(src: &[F], dst: &mut [F], w: usize, s: usize) {
    for (sr, dr) in src.chunks_exact(w).zip(dst.chunks_exact_mut(w)) {
        if s == 2 {
            let (even, odd) = dr.split_at_mut(w.div_ceil(2));
            for (k, p) in sr.chunks_exact(2).enumerate() {
                even[k] = p[0];
                odd[k] = p[1];
            }
            if w % 2 == 1 {
                even[w / 2] = sr[w - 1];
            }
            continue;
        }
        let mut k = 0;
        for b in 0..s {
            for &v in sr[b..].iter().step_by(s) {
                dr[k] = v;
                k += 1;
            }
        }
    }
}

/// The inverse of [`split_phases`].
fn merge_phases<F: Copy>(src: &[F], dst: &mut [F], w: usize, s: usize) {
    for (sr, dr) in src.chunks_exact(w).zip(dst.chunks_exact_mut(w)) {
        if s == 2 {
            let (even, odd) = sr.split_at(w.div_ceil(2));
            for (k, p) in dr.chunks_exact_mut(2).enumerate() {
                p[0] = even[k];
                p[1] = odd[k];
            }
            if w % 2 == 1 {
                dr[w - 1] = even[w / 2];
            }
            continue;
        }
        let mut k = 0;
        for b in 0..s {
            for d in dr[b..].iter_mut().step_by(s) {
                *d = sr[k];
                k += 1;
            }
        }
    }
}

/// A direct depthwise kernel over one plane; `scratch` holds [`dw_scratch_len`] elements.
#[derive(Clone, Copy)]
pub(super) enum Plane {
    /// `y[h_out, w_out] = Σ_{ki,kj} w[ki,kj]·x[..]` over the input plane `x: [h, w]` (`src`),
    /// `y` (`dst`) zero on entry, each output summed over its taps in row-major order.
    Forward,
    /// The input gradient `dx[h, w] += Σ w[ki,kj]·dy[..]` (`dy` is `src`, `dx` is `dst`):
    /// each element receives its terms in row-major tap order, after whatever `dx` held.
    BackwardInput,
    /// One sample's weight-gradient terms `dw[ki, kj] = Σ dy·x[..]` (`x` is `src`, `dy` is
    /// `wk`, the `k_h·k_w` terms are `dst`), each a 16-lane sum over the output grid in
    /// position order, lanes added in a fixed tree.
    Terms,
}

/// Runs `op` (reading `src`, writing `dst`) compiled for `isa`. With `clean`, the scratch `sc`
/// last served a plane of the same op and geometry, so the zeros it wrote around that plane's
/// values (padding, junk columns) are still there and are not written again: pass `true` for
/// every plane of a loop over one scratch buffer but the first (per plane, the zero fills were
/// a few calls of a few elements each, 1–2 % of a MobileNetV2 batch-1 inference).
#[allow(clippy::too_many_arguments)] // the plane's operands plus the scratch's state
pub(super) fn dw_plane<F: Float>(
    isa: Option<Isa>,
    op: Plane,
    g: &Geom,
    src: &[F],
    wk: &[F],
    dst: &mut [F],
    sc: &mut [F],
    clean: bool,
) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: holding an `Isa` proves run-time detection found its instruction set.
        Some(Isa::Avx512(_)) => unsafe { plane_avx512(op, g, src, wk, dst, sc, clean) },
        Some(Isa::Avx2(_)) => unsafe { plane_avx2(op, g, src, wk, dst, sc, clean) },
        None => plane(op, g, src, wk, dst, sc, clean),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        plane(op, g, src, wk, dst, sc, clean)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn plane_avx512<F: Float>(
    p: Plane,
    g: &Geom,
    s: &[F],
    w: &[F],
    d: &mut [F],
    sc: &mut [F],
    clean: bool,
) {
    plane(p, g, s, w, d, sc, clean)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn plane_avx2<F: Float>(
    p: Plane,
    g: &Geom,
    s: &[F],
    w: &[F],
    d: &mut [F],
    sc: &mut [F],
    clean: bool,
) {
    plane(p, g, s, w, d, sc, clean)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)] // as `dw_plane`
fn plane<F: Float>(
    op: Plane,
    g: &Geom,
    src: &[F],
    wk: &[F],
    dst: &mut [F],
    sc: &mut [F],
    clean: bool,
) {
    match op {
        Plane::Forward => grid_body(g, src, wk, dst, sc, false, clean),
        Plane::BackwardInput => backward_input_body(g, src, wk, dst, sc, clean),
        Plane::Terms => terms_body(g, src, wk, dst, sc, clean),
    }
}

/// Fills the padded phase planes of `x` ([`grid_dims`]; zeros outside the input): each padded
/// row of phase a, then its columns split into the s_w planes (a, b). `padded` holds a padded
/// row (`s_w·wq` elements) for strided columns. With `clean` (see [`dw_plane`]) the zeros are
/// there already: only the input's values are written.
#[inline(always)]
fn fill_planes<F: Float>(g: &Geom, x: &[F], planes: &mut [F], padded: &mut [F], clean: bool) {
    let (hq, wq, pitch) = grid_dims(g);
    let padded = &mut padded[..g.sw * wq];
    for a in 0..g.sh {
        for i in 0..hq {
            let r = (i * g.sh + a) as isize - g.ph as isize;
            let src = (r >= 0 && (r as usize) < g.h)
                .then(|| &x[r as usize * g.w..(r as usize + 1) * g.w]);
            let row_of = |b: usize| (a * g.sw + b) * pitch + i * wq;
            let Some(src) = src else {
                if clean {
                    continue;
                }
                for b in 0..g.sw {
                    planes[row_of(b)..row_of(b) + wq].fill(F::zero());
                }
                continue;
            };
            let dst: &mut [F] = if g.sw == 1 {
                &mut planes[row_of(0)..row_of(0) + wq]
            } else {
                &mut *padded
            };
            // dst[c] = src[c − p_w] where that is inside the row
            let lo = g.pw.min(dst.len());
            let hi = (g.pw + g.w).min(dst.len());
            if !clean {
                dst[..lo].fill(F::zero());
                dst[hi..].fill(F::zero());
            }
            dst[lo..hi].copy_from_slice(&src[..hi - lo]);
            if g.sw == 2 {
                let (p0, p1) = (row_of(0), row_of(1));
                let (even, odd) = planes.split_at_mut(p1);
                let (even, odd) = (&mut even[p0..p0 + wq], &mut odd[..wq]);
                for (j, pair) in padded.chunks_exact(2).enumerate() {
                    even[j] = pair[0];
                    odd[j] = pair[1];
                }
            } else if g.sw > 2 {
                for b in 0..g.sw {
                    let row = &mut planes[row_of(b)..row_of(b) + wq];
                    for (d, &v) in row.iter_mut().zip(padded[b..].iter().step_by(g.sw)) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// Splits `scratch` into the phase planes, filled from `x`, and the output grid
/// (`ho·wq + GRID_BLOCK` elements).
#[inline(always)]
fn planes_and_grid<'s, F: Float>(
    g: &Geom,
    x: &[F],
    scratch: &'s mut [F],
    clean: bool,
) -> (&'s mut [F], &'s mut [F]) {
    let (_, wq, pitch) = grid_dims(g);
    let (planes, rest) = scratch.split_at_mut(g.sh * g.sw * pitch);
    let (grid, padded) = rest.split_at_mut(g.ho * wq + GRID_BLOCK);
    fill_planes(g, x, planes, padded, clean);
    (planes, grid)
}

/// Where tap `(ki, kj)` reads the phase planes for grid position 0: position q = oh·wq + ow
/// reads `planes[tap_offset + q]`.
#[inline(always)]
fn tap_offset(g: &Geom, ki: usize, kj: usize) -> usize {
    let (_, wq, pitch) = grid_dims(g);
    let (a, r) = ((ki * g.dh) % g.sh, (ki * g.dh) / g.sh);
    let (b, c) = ((kj * g.dw) % g.sw, (kj * g.dw) / g.sw);
    (a * g.sw + b) * pitch + r * wq + c
}

/// The forward of `g` on its padded phase planes' flattened grid, `GRID_BLOCK` outputs at a
/// time in registers. With `adjoint`, the input gradient of a stride-1 layer as the forward of
/// its adjoint geometry ([`adjoint`]: `x` is `dy`, `y` is `dx`): tap `t` of the original kernel
/// reads the flipped kernel's tap `n − 1 − t`, the taps run in the original's order, and the
/// sums start from `y`'s values instead of zero.
#[inline(always)]
fn grid_body<F: Float>(
    g: &Geom,
    x: &[F],
    wk: &[F],
    y: &mut [F],
    scratch: &mut [F],
    adjoint: bool,
    clean: bool,
) {
    let wq = grid_dims(g).1;
    let (planes, grid) = planes_and_grid(g, x, scratch, clean);
    let ntaps = g.kh * g.kw;
    let tap = |t: usize| {
        let u = if adjoint { ntaps - 1 - t } else { t };
        (tap_offset(g, u / g.kw, u % g.kw), wk[t])
    };
    let mut cached = [(0usize, F::zero()); GRID_TAPS];
    for (t, e) in cached.iter_mut().enumerate().take(ntaps) {
        *e = tap(t);
    }
    if adjoint {
        for (src, dst) in y.chunks_exact(g.wo).zip(grid.chunks_mut(wq)) {
            dst[..g.wo].copy_from_slice(src);
        }
    }
    let planes = &*planes;
    for (q0, out) in (0..g.ho * wq)
        .step_by(GRID_BLOCK)
        .zip(grid.chunks_exact_mut(GRID_BLOCK))
    {
        // every output the sum of all its taps in row-major order from zero: the padding's
        // products are ±0, which leave a sum that started at +0 unchanged (it never is −0),
        // so these are the bits of summing the in-bounds taps alone (for finite weights)
        let mut acc = [F::zero(); GRID_BLOCK];
        if adjoint {
            acc.copy_from_slice(out);
        }
        for t in 0..ntaps {
            let (o, w) = cached.get(t).copied().unwrap_or_else(|| tap(t));
            let src = &planes[o + q0..o + q0 + GRID_BLOCK];
            for l in 0..GRID_BLOCK {
                acc[l] = acc[l] + w * src[l];
            }
        }
        out.copy_from_slice(&acc);
    }
    for (dst, src) in y.chunks_exact_mut(g.wo).zip(grid.chunks(wq)) {
        dst.copy_from_slice(&src[..g.wo]);
    }
}

/// Lanes of the weight-gradient terms' sums.
const TERM_LANES: usize = 16;

/// [`Plane::Terms`]: `x`'s padded phase planes against `dy` laid on the output grid (junk
/// columns zero, so they add ±0: the same sums as over the outputs alone, for finite inputs).
#[inline(always)]
fn terms_body<F: Float>(
    g: &Geom,
    x: &[F],
    dy: &[F],
    terms: &mut [F],
    scratch: &mut [F],
    clean: bool,
) {
    let (hq, wq, pitch) = grid_dims(g);
    let (planes, grid) = planes_and_grid(g, x, scratch, clean);
    let len = (g.ho * wq).div_ceil(TERM_LANES) * TERM_LANES; // ≤ ho·wq + GRID_BLOCK
    if !clean {
        // the last block's tail reads past the planes' rows: zeros there, as in the grid
        for plane in planes.chunks_exact_mut(pitch) {
            plane[hq * wq..].fill(F::zero());
        }
        for row in grid[..g.ho * wq].chunks_exact_mut(wq) {
            row[g.wo..].fill(F::zero());
        }
        grid[g.ho * wq..len].fill(F::zero());
    }
    for (oh, row) in grid[..g.ho * wq].chunks_exact_mut(wq).enumerate() {
        row[..g.wo].copy_from_slice(&dy[oh * g.wo..(oh + 1) * g.wo]);
    }
    let grid = &grid[..len];
    for (t, term) in terms.iter_mut().enumerate().take(g.kh * g.kw) {
        let src = &planes[tap_offset(g, t / g.kw, t % g.kw)..][..len];
        let mut acc = [F::zero(); TERM_LANES];
        for (d, s) in grid
            .chunks_exact(TERM_LANES)
            .zip(src.chunks_exact(TERM_LANES))
        {
            for l in 0..TERM_LANES {
                acc[l] = acc[l] + d[l] * s[l];
            }
        }
        // fixed tree: pairs 8 apart, then 4, 2, 1
        let mut w = TERM_LANES;
        while w > 1 {
            w /= 2;
            for l in 0..w {
                acc[l] = acc[l] + acc[l + w];
            }
        }
        *term = acc[0];
    }
}

/// The stride-1 convolution whose forward is the input gradient of `g` (`dy` padded by
/// `d·(k − 1) − p`, the kernel flipped), if `g` has stride 1 and that padding is not negative.
fn adjoint(g: &Geom) -> Option<Geom> {
    let (eh, ew) = (g.dh * (g.kh - 1), g.dw * (g.kw - 1));
    if g.sh != 1 || g.sw != 1 || g.ph > eh || g.pw > ew {
        return None;
    }
    Some(Geom {
        h: g.ho,
        w: g.wo,
        ho: g.h,
        wo: g.w,
        ph: eh - g.ph,
        pw: ew - g.pw,
        ..*g
    })
}

#[inline(always)]
// `%` rather than `is_multiple_of`: the workspace's rust-version is 1.80
#[allow(clippy::manual_is_multiple_of)]
fn backward_input_body<F: Float>(
    g: &Geom,
    dy: &[F],
    wk: &[F],
    dx: &mut [F],
    scratch: &mut [F],
    clean: bool,
) {
    if let Some(gb) = adjoint(g) {
        return grid_body(&gb, dy, wk, dx, scratch, true, clean);
    }
    let strided = g.sw > 1;
    let acc: &mut [F] = if strided {
        let sc = &mut scratch[..g.h * g.w];
        split_phases(dx, sc, g.w, g.sw);
        sc
    } else {
        &mut *dx
    };
    let mut taps = Taps::new();
    // Input row by input row, phase by phase: an input row is reached from at most one output
    // row per kernel row, and an element of phase b only by the kernel columns of that phase,
    // so queueing (ki, kj) in order gives every element its terms in tap order.
    for (ih, row) in acc.chunks_exact_mut(g.w).enumerate() {
        for b in 0..g.sw {
            let (p0, len) = (phase_start(g.w, g.sw, b), phase_len(g.w, g.sw, b));
            let dst = &mut row[p0..p0 + len];
            for ki in 0..g.kh {
                let t = (ih + g.ph) as isize - (ki * g.dh) as isize;
                if t < 0 || t as usize % g.sh != 0 || t as usize / g.sh >= g.ho {
                    continue;
                }
                let oh = t as usize / g.sh;
                let src = &dy[oh * g.wo..(oh + 1) * g.wo];
                for kj in 0..g.kw {
                    let (bk, e) = col_phase(g, kj);
                    if bk != b {
                        continue;
                    }
                    // element j is input column j·s + b = (ow + e)·s + b of output column ow = j − e
                    let lo = e.max(0) as usize;
                    let hi = (g.wo as isize + e).max(0) as usize;
                    let (lo, hi) = (lo.min(len), hi.min(len));
                    let w = wk[ki * g.kw + kj];
                    taps.push(
                        dst,
                        Tap {
                            w,
                            src,
                            c: -e,
                            lo,
                            hi,
                        },
                    );
                }
            }
            taps.apply(dst);
        }
    }
    if strided {
        merge_phases(&scratch[..g.h * g.w], dx, g.w, g.sw);
    }
}

#[cfg(test)]
mod tests {
    use super::super::direct::{detect, detect_avx2};
    use super::super::params::Conv2dParams;
    use super::*;

    type Pair = (usize, usize);

    /// The tap-major loops these kernels replaced: `f(output index, input index, tap)` for
    /// every in-bounds tap, taps in row-major order, the output rows within each tap.
    fn each_tap(g: &Geom, mut f: impl FnMut(usize, usize, usize)) {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let (off, lo, hi) = g.col_range(kj);
                for oh in 0..g.ho {
                    let Some(ih) = g.in_row(oh, ki) else { continue };
                    for ow in lo..hi {
                        let i = ih * g.w + ((ow * g.sw) as isize + off) as usize;
                        f(oh * g.wo + ow, i, ki * g.kw + kj);
                    }
                }
            }
        }
    }

    // `%` rather than `is_multiple_of`: the workspace's rust-version is 1.80
    #[allow(clippy::manual_is_multiple_of)]
    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // signed, with exact zeros now and then (signed-zero sums)
                if s % 11 == 0 {
                    0.0
                } else {
                    (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                }
            })
            .collect()
    }

    /// Every instruction set, stride 1 to 3, padding wider than the kernel's reach (no adjoint),
    /// dilation, wide kernels, kernels with more taps than `GRID_TAPS` and
    /// `MAX_TAPS`, planes narrower than a vector: exactly the reference bits, for the forward
    /// (scratch starting as NaN, so an unwritten padding element would show) and for an input
    /// gradient added to a non-zero `dx`; the weight-gradient terms the same bits on every
    /// instruction set and the f64 sums within f32 rounding. Each op then serves a second plane
    /// on its scratch with `clean` (its zeros kept, not written again): the same, for new data.
    #[test]
    fn depthwise_kernels_give_the_tap_major_bits() {
        #[rustfmt::skip]
        let cases: &[(usize, usize, Pair, Pair, Pair, Pair)] = &[
            // (h, w, k, stride, padding, dilation)
            (112, 112, (3, 3), (1, 1), (1, 1), (1, 1)),
            (112, 112, (3, 3), (2, 2), (1, 1), (1, 1)),
            (7, 7, (3, 3), (1, 1), (1, 1), (1, 1)),
            (15, 13, (5, 5), (2, 2), (2, 2), (1, 1)),
            (14, 17, (3, 3), (3, 3), (1, 1), (1, 1)),
            (11, 19, (3, 5), (2, 1), (0, 3), (2, 1)),
            (9, 40, (1, 18), (1, 1), (0, 9), (1, 1)),
            (9, 40, (1, 17), (1, 2), (0, 9), (1, 1)),
            (5, 3, (3, 3), (1, 2), (4, 4), (1, 1)),
            (6, 6, (3, 3), (2, 2), (1, 1), (2, 2)),
            (10, 12, (3, 3), (1, 1), (2, 2), (2, 2)),
            (12, 12, (9, 9), (1, 1), (4, 4), (1, 1)),
            (20, 21, (7, 7), (2, 2), (3, 3), (1, 1)),
        ];
        let mut isas = vec![None, detect_avx2(), detect()];
        isas.dedup();
        for (i, &(h, w, k, s, p, d)) in cases.iter().enumerate() {
            let params = Conv2dParams {
                stride: s,
                padding: p,
                dilation: d,
                groups: 1,
            };
            let g = Geom::new("t", [1, 1, h, w], [1, 1, k.0, k.1], &params).unwrap();
            // per instruction set, one scratch buffer per op (NaN at first, so an unwritten
            // padding element would show), each serving a second plane with `clean`
            let mut scratch = vec![vec![vec![f32::NAN; dw_scratch_len(&g)]; 3]; isas.len()];
            for clean in [false, true] {
                let seed = 10 + i as u64 + if clean { 1000 } else { 0 };
                let x = rand(h * w, seed);
                let wk = rand(k.0 * k.1, seed + 10);
                let dy = rand(g.ho * g.wo, seed + 20);
                let dx0 = rand(h * w, seed + 30);
                // every output (input-gradient element) the sum of its in-bounds taps in
                // row-major tap order: the bits the kernels must give
                let mut y_ref = vec![0.0; g.ho * g.wo];
                each_tap(&g, |o, i, t| y_ref[o] += wk[t] * x[i]);
                let mut dx_ref = dx0.clone();
                each_tap(&g, |o, i, t| dx_ref[i] += wk[t] * dy[o]);
                // weight-gradient terms in f64, and the sums of their magnitudes for the
                // tolerance
                let (mut t_ref, mut t_abs) = (vec![0f64; k.0 * k.1], vec![0f64; k.0 * k.1]);
                each_tap(&g, |o, i, t| {
                    let p = dy[o] as f64 * x[i] as f64;
                    t_ref[t] += p;
                    t_abs[t] += p.abs();
                });
                let mut terms_first: Option<Vec<f32>> = None;
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                for (&isa, sc) in isas.iter().zip(scratch.iter_mut()) {
                    let at = format!("case {i} {isa:?} clean={clean}");
                    let mut y = vec![0.0; g.ho * g.wo];
                    dw_plane(isa, Plane::Forward, &g, &x, &wk, &mut y, &mut sc[0], clean);
                    assert_eq!(bits(&y), bits(&y_ref), "forward {at}");
                    let mut dx = dx0.clone();
                    let bw = Plane::BackwardInput;
                    dw_plane(isa, bw, &g, &dy, &wk, &mut dx, &mut sc[1], clean);
                    assert_eq!(bits(&dx), bits(&dx_ref), "input gradient {at}");
                    let mut terms = vec![f32::NAN; k.0 * k.1];
                    dw_plane(
                        isa,
                        Plane::Terms,
                        &g,
                        &x,
                        &dy,
                        &mut terms,
                        &mut sc[2],
                        clean,
                    );
                    // the same bits on every instruction set, and the f64 sums within f32
                    // rounding
                    let first = terms_first.get_or_insert_with(|| terms.clone());
                    assert_eq!(bits(&terms), bits(first), "terms {at}");
                    for (t, (&got, (&want, &mag))) in
                        terms.iter().zip(t_ref.iter().zip(&t_abs)).enumerate()
                    {
                        let tol = 1e-6 * mag + 1e-30;
                        assert!(
                            (got as f64 - want).abs() <= tol,
                            "terms {at} tap {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
