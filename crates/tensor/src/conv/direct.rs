//! Direct convolution microkernels (part of the convolution family in `conv/`): no im2col
//! and no GEMM packing. Used on x86-64 with AVX2+FMA or AVX-512, for `f32`, for grouped
//! convolutions with `c_in / groups ≥ 2`: the forward and the weight gradient at any stride, and
//! the input gradient at stride 1 (a stride-1 convolution of `dy` with the flipped, transposed
//! kernel).
//!
//! Layout trick: the zero-padded input is split into `s_h·s_w` phase planes
//! (`P_ab[i, j] = x_p[i·s_h + a, j·s_w + b]`, each `h_q × w_q`), so every tap `(ci, ki, kj)`
//! reads one phase plane at a fixed offset, and output position `q = oh·w_q + ow` of the
//! flattened grid reads `plane[q + offset_t]`. A block of consecutive `q` is then one contiguous
//! load per tap, even across rows; the `w_q − w_out` junk columns per row are computed and
//! dropped. Stride 1 is the single-phase case. Sums run over taps in `(ci, ki, kj)` order with
//! fused multiply-adds; the order never depends on the thread count.

use super::geom::forced_kernel;
use crate::isa::MaxIsa;
use crate::{Float, Par};
use std::mem::MaybeUninit;

/// Proof that run-time detection found AVX-512F on this CPU: its field is private, so only
/// [`detect`] can make one, and no caller can pick the `unsafe` AVX-512 kernels by mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Avx512Found(());

/// Proof that run-time detection found AVX2 and FMA (see [`Avx512Found`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Avx2Found(());

/// Instruction set chosen at run time (constant for a machine, so results are reproducible);
/// each variant carries its detection proof, so holding an `Isa` means the CPU has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512(Avx512Found),
    Avx2(Avx2Found),
}

/// The best supported instruction set under the process's ceiling ([`crate::isa`]), or `None`
/// (then callers use im2col + GEMM).
pub(crate) fn detect() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::isa::allows(MaxIsa::Avx512) && std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Isa::Avx512(Avx512Found(())));
        }
    }
    detect_avx2()
}

/// AVX2 + FMA if this CPU has them and the ceiling allows them (also on AVX-512 machines: the
/// tests run both kernels).
pub(crate) fn detect_avx2() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::isa::allows(MaxIsa::Avx2)
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(Isa::Avx2(Avx2Found(())));
        }
    }
    None
}

/// One convolution of a single group: `x [cin, h, w]` → `y [cout, ho, wo]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Direct {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub ph: usize,
    pub pw: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub cout: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Direct {
    /// Phase-plane height `ceil((h + 2·p_h) / s_h)`.
    fn hq(&self) -> usize {
        (self.h + 2 * self.ph).div_ceil(self.sh)
    }
    /// Phase-plane width `ceil((w + 2·p_w) / s_w)`: the row pitch of the flattened grid.
    fn wq(&self) -> usize {
        (self.w + 2 * self.pw).div_ceil(self.sw)
    }
    fn taps(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// One past the last valid flattened output position.
    fn qend(&self) -> usize {
        (self.ho - 1) * self.wq() + self.wo
    }
    /// Whether the direct kernels exist for `F` (only `f32`; `f64` takes im2col + GEMM).
    pub fn supported<F: 'static>() -> bool {
        std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>()
    }
    /// The forward kernel for this geometry on `isa` (f32), from the shapes only:
    /// - a few output channels (HLA's patch norms have one): the narrow kernel, one channel ×
    ///   `NARROW_NV` vectors, instead of a mostly empty `COB`-channel block;
    /// - small planes, where the flattened grid's junk columns and its last partial block would
    ///   cost more than the row kernel's blocks (`ROWS512_COST`, `ROWS2_COST`): the row kernel,
    ///   whose blocks never leave an output row;
    /// - otherwise the grid kernel, `COB` channels × `PXB` flattened positions.
    pub fn plan(&self, isa: Isa) -> Plan {
        let (cob, lanes, nv, rows_max, cost) = match isa {
            Isa::Avx512(_) => (AVX512_COB, 16, AVX512_NV, ROWS512_P, ROWS512_COST),
            Isa::Avx2(_) => (AVX2_COB, 8, AVX2_NV, ROWS2_P, ROWS2_COST),
        };
        if self.cout <= cob / 4 {
            return Plan {
                kernel: Kernel::Narrow,
                cob: 1,
                pxb: lanes * NARROW_NV,
            };
        }
        let pxb = lanes * nv;
        let grid = self.qend().div_ceil(pxb) * pxb; // positions the grid kernel computes
        let rows_cob = 2 * lanes;
        // positions the row kernel computes: each row in its blocks, the last one rounded up
        let rows = self.ho * row_blocks(self.wo, rows_max).sum::<usize>();
        #[allow(clippy::manual_is_multiple_of)] // `%`: the workspace's rust-version is 1.80
        let fits = self.cout % rows_cob == 0;
        let take_rows = match forced_kernel() {
            Some(k) => fits && k == Kernel::Rows,
            None => fits && rows * cost.0 < grid * cost.1,
        };
        if take_rows {
            return Plan {
                kernel: Kernel::Rows,
                cob: rows_cob,
                pxb: rows_max,
            };
        }
        Plan {
            kernel: Kernel::Grid,
            cob,
            pxb,
        }
    }
    /// The grid kernel's channel block on `isa`.
    pub fn grid_cob(isa: Isa) -> usize {
        match isa {
            Isa::Avx512(_) => AVX512_COB,
            Isa::Avx2(_) => AVX2_COB,
        }
    }
    /// `(channel block, tap block, lanes)` of this layer's weight-gradient kernel (AVX2: see
    /// [`DW2_BLOCKS`]).
    pub fn dw_blocks(&self, isa: Isa) -> (usize, usize, usize) {
        match isa {
            Isa::Avx512(_) => (4, 6, 16),
            // 3-channel blocks unless their padding adds more than 1/16 (16 channels: 18)
            Isa::Avx2(_) => {
                let [(c3, t3), (c2, t2)] = DW2_BLOCKS;
                #[cfg(test)]
                if let Some(i) = DW2_BLOCK_TEST.with(|c| c.get()) {
                    return (DW2_BLOCKS[i].0, DW2_BLOCKS[i].1, 8);
                }
                match self.cout.div_ceil(c3) * c3 * 16 <= self.cout * 17 {
                    true => (c3, t3, 8),
                    false => (c2, t2, 8),
                }
            }
        }
    }
    /// Scratch length for the phase-split padded input (with slack so that a whole vector
    /// block can always be loaded: every read is below `cin·s_h·s_w·h_q·w_q + 64`).
    pub fn scratch_len(&self) -> usize {
        self.cin * self.channel_len() + 64
    }
    /// Elements of one input channel in the padded, phase-split layout (its `s_h·s_w` planes).
    pub fn channel_len(&self) -> usize {
        self.sh * self.sw * self.hq() * self.wq()
    }
    /// Flattened output positions rounded up to whole vectors of `lanes`.
    fn qpad(&self, lanes: usize) -> usize {
        self.qend().div_ceil(lanes) * lanes
    }
    /// Whether [`backward_weight_samples`] takes the channel-vectorised kernel (AVX-512, from
    /// 32 output channels on: measured faster there), which reads `dy` transposed.
    fn dw_channel_vectorised(&self, isa: Isa) -> bool {
        cfg!(target_arch = "x86_64") && matches!(isa, Isa::Avx512(_)) && self.cout >= 32
    }
    /// Scratch length for `dy` of one sample: transposed to `[channel block][position][block's
    /// channels]` (channels rounded up to a whole block) for the channel-vectorised kernel, else
    /// on the flattened grid (rows padded to a whole channel block).
    pub fn dy_scratch_len(&self, isa: Isa) -> usize {
        if self.dw_channel_vectorised(isa) {
            let (v, _) = dw_pix_blocks(self.cout);
            return self.ho * self.wo * self.cout.div_ceil(16 * v) * 16 * v;
        }
        let (cob, _, lanes) = self.dw_blocks(isa);
        self.cout.div_ceil(cob) * cob * self.qpad(lanes)
    }
    /// Offset of tap `(ci, ki, kj)` (in that order) into the phase-split input, padded with
    /// zeros to a multiple of `mult` entries.
    fn tap_offsets(&self, mult: usize) -> Vec<usize> {
        let (hq, wq) = (self.hq(), self.wq());
        let mut off = vec![0usize; self.taps().div_ceil(mult) * mult];
        for ci in 0..self.cin {
            for ki in 0..self.kh {
                for kj in 0..self.kw {
                    let (r, c) = (ki * self.dh, kj * self.dw);
                    let (a, b) = (r % self.sh, c % self.sw);
                    let plane = (ci * self.sh + a) * self.sw + b;
                    off[(ci * self.kh + ki) * self.kw + kj] =
                        plane * hq * wq + (r / self.sh) * wq + c / self.sw;
                }
            }
        }
        off
    }
    /// Writes `x [cin, h, w]` zero-padded and phase-split into `dst` (fully overwritten):
    /// every entry is written once (no memset of the whole buffer first). At stride 1 each
    /// row, padding included, is written in masked vector stores; otherwise each input row
    /// goes into its phase rows in one pass (a de-interleave at stride 2).
    pub(crate) fn fill_input<F: Float>(&self, isa: Isa, x: &[F], dst: &mut [F]) {
        let (hq, wq) = (self.hq(), self.wq());
        let (sh, sw, pw, w) = (self.sh, self.sw, self.pw, self.w);
        let plane = hq * wq;
        let used = self.cin * sh * sw * plane;
        dst[used..].fill(F::zero());
        // phase rows `i0..i1` of phase `a` hold the input rows `i·s_h + a − p_h`; phase columns
        // `j0..j1` of phase `b` the input columns `j·s_w + b − p_w`
        let span = |p: usize, n: usize, s: usize, q: usize, len: usize| {
            let lo = p.saturating_sub(q).div_ceil(s).min(len);
            (lo, (p + n).saturating_sub(q).div_ceil(s).clamp(lo, len))
        };
        for (pi, pl) in dst[..used].chunks_exact_mut(plane).enumerate() {
            let (i0, i1) = span(self.ph, self.h, sh, pi / sw % sh, hq);
            pl[..i0 * wq].fill(F::zero());
            pl[i1 * wq..].fill(F::zero());
        }
        if w == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if sh == 1 && sw == 1 && Direct::supported::<F>() {
            let (x, dst) = (as_f32(x), as_f32_mut(&mut dst[..used]));
            let rows = (self.h, self.ph * wq, plane);
            // SAFETY: an `Isa` carries its detection proof; the kernels assert their bounds.
            unsafe {
                match isa {
                    Isa::Avx512(_) => pad_rows_avx512(x, (w, pw), dst, rows),
                    Isa::Avx2(_) => pad_rows_avx2(x, (w, pw), dst, rows),
                }
            }
            return;
        }
        let _ = isa;
        // the padding columns of the rows that hold input
        for (pi, pl) in dst[..used].chunks_exact_mut(plane).enumerate() {
            let (i0, i1) = span(self.ph, self.h, sh, pi / sw % sh, hq);
            let (j0, j1) = span(pw, w, sw, pi % sw, wq);
            for row in pl[i0 * wq..i1 * wq].chunks_exact_mut(wq) {
                row[..j0].fill(F::zero());
                row[j1..].fill(F::zero());
            }
        }
        for ci in 0..self.cin {
            for ih in 0..self.h {
                let r = ih + self.ph;
                let (a, i) = (r % sh, r / sh);
                let src = &x[(ci * self.h + ih) * w..][..w];
                // the row of phase (a, 0); phase b's row is `b` planes further
                let at = (ci * sh + a) * sw * plane + i * wq;
                match sw {
                    1 => dst[at + pw..at + pw + w].copy_from_slice(src),
                    2 => {
                        // input column `iw` is padded column `iw + p_w`: phase `(iw + p_w) % 2`,
                        // column `(iw + p_w) / 2`; the even input columns go to phase `p_w % 2`
                        let (lo, hi) = dst[at..at + plane + wq].split_at_mut(plane);
                        let (even, odd) = if pw % 2 == 0 { (lo, hi) } else { (hi, lo) };
                        let (je, jo) = (pw / 2, pw / 2 + pw % 2);
                        let pairs = src.chunks_exact(2);
                        if let Some(&v) = pairs.remainder().first() {
                            even[je + w / 2] = v;
                        }
                        for ((e, o), pr) in even[je..je + w / 2]
                            .iter_mut()
                            .zip(&mut odd[jo..jo + w / 2])
                            .zip(pairs)
                        {
                            *e = pr[0];
                            *o = pr[1];
                        }
                    }
                    _ => {
                        for (iw, &v) in src.iter().enumerate() {
                            let c = iw + pw;
                            dst[at + (c % sw) * plane + c / sw] = v;
                        }
                    }
                }
            }
        }
    }
}

/// The padded row width `w + 2·p_w` of the padded-row kernels, after checking that `x` holds
/// whole channels of `h × w` and `dst` as many planes, each with room for the rows from `first`.
#[cfg(target_arch = "x86_64")]
fn pad_rows_width(
    x: usize,
    (w, pw): (usize, usize),
    dst: usize,
    (h, first, plane): (usize, usize, usize),
) -> usize {
    let wq = w + 2 * pw;
    let cin = x / (h * w);
    assert!(
        x == cin * h * w && dst == cin * plane && first + h * wq <= plane,
        "hla-tensor internal error: padded rows"
    );
    wq
}

/// The stride-1 rows of [`Direct::fill_input`]: for every channel `c` of `x` (`h` rows of
/// `w`) and row `i`, `dst[c·plane + first + i·wq + j] = x[c, i, j − p_w]` for
/// `p_w ≤ j < p_w + w`, else 0 (`wq = w + 2·p_w`), each row in masked vector loads and stores
/// (masked-off lanes touch no memory), the masks built once per call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pad_rows_avx512(
    x: &[f32],
    (w, pw): (usize, usize),
    dst: &mut [f32],
    (h, first, plane): (usize, usize, usize),
) {
    use std::arch::x86_64::*;
    const L: usize = 16;
    let wq = pad_rows_width(x.len(), (w, pw), dst.len(), (h, first, plane));
    let mask = |j0: usize, lo: usize, hi: usize| {
        (0..16u16).fold(0u16, |m, l| {
            m | ((((lo..hi).contains(&(j0 + l as usize))) as u16) << l)
        })
    };
    // per vector of the row: its first column, which lanes read the input, which lanes lie
    // inside the row
    let chunks: Vec<(usize, __mmask16, __mmask16)> = (0..wq)
        .step_by(L)
        .map(|j0| (j0, mask(j0, pw, pw + w), mask(j0, 0, wq)))
        .collect();
    for (c, x_c) in x.chunks_exact(h * w).enumerate() {
        let rows = &mut dst[c * plane + first..][..h * wq];
        for (src, row) in x_c.chunks_exact(w).zip(rows.chunks_exact_mut(wq)) {
            let (sp, rp) = (src.as_ptr(), row.as_mut_ptr());
            for &(j0, lm, sm) in &chunks {
                // the lanes of `lm` read `src[j − p_w]`, inside the row; lane 0's address may
                // lie outside it, but masked-off lanes are not read
                let v = _mm512_maskz_loadu_ps(lm, sp.wrapping_add(j0).wrapping_sub(pw));
                _mm512_mask_storeu_ps(rp.add(j0), sm, v);
            }
        }
    }
}

/// The AVX2 [`pad_rows_avx512`]: the same masked loads, but whole-vector stores. AMD's Zen 2/3
/// run a masked store (`vmaskmovps` to memory) at one per ~12 cycles, which made this copy
/// 11 % of a ResNet-20 training step on a Zen 3. A row's last vector may run past the row; its
/// extra lanes were masked off in the load, so it writes zeros into what follows: the next
/// rows (written later, as rows go up in address), or padding, which holds zeros already. Only
/// a vector that would leave `dst` is stored masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pad_rows_avx2(
    x: &[f32],
    (w, pw): (usize, usize),
    dst: &mut [f32],
    (h, first, plane): (usize, usize, usize),
) {
    use std::arch::x86_64::*;
    const L: usize = 8;
    let wq = pad_rows_width(x.len(), (w, pw), dst.len(), (h, first, plane));
    let mask = |j0: usize, lo: usize, hi: usize| {
        let m: [i32; 8] = std::array::from_fn(|l| -((lo..hi).contains(&(j0 + l)) as i32));
        _mm256_loadu_si256(m.as_ptr() as *const __m256i)
    };
    // per vector of the row: its first column and which lanes read the input
    let chunks: Vec<(usize, __m256i)> = (0..wq)
        .step_by(L)
        .map(|j0| (j0, mask(j0, pw, pw + w)))
        .collect();
    let (tail_j0, tail_store) = (wq - (wq - 1) % L - 1, mask(wq - (wq - 1) % L - 1, 0, wq));
    let len = dst.len();
    for (c, x_c) in x.chunks_exact(h * w).enumerate() {
        let at = c * plane + first;
        for (i, src) in x_c.chunks_exact(w).enumerate() {
            let (sp, row) = (src.as_ptr(), at + i * wq);
            crate::prefetch::prefetch(sp.wrapping_add(PF_AHEAD / 4), 4 * w);
            let rp = dst.as_mut_ptr().add(row);
            for &(j0, lm) in &chunks {
                // the lanes of `lm` read `src[j − p_w]`, inside the row; lane 0's address may
                // lie outside it, but masked-off lanes are not read
                let p = sp.wrapping_add(j0).wrapping_sub(pw);
                let v = if j0 >= pw && j0 + L <= pw + w {
                    _mm256_loadu_ps(p)
                } else {
                    _mm256_maskload_ps(p, lm)
                };
                if row + j0 + L <= len {
                    _mm256_storeu_ps(rp.add(j0), v);
                } else {
                    debug_assert_eq!(j0, tail_j0);
                    _mm256_maskstore_ps(rp.add(j0), tail_store, v);
                }
            }
        }
    }
}

/// How far ahead of a row being copied the padded-row copy asks for its input: 512 bytes, four
/// rows of 32 values (on the Zen 3 the copy took about a fifth fewer samples with it; see
/// [`crate::prefetch`]).
const PF_AHEAD: usize = 512;

/// Taps per chunk of [`pack_weights`]: 64 taps × 32 channels are 8 KiB of packed weights.
const PACK_TAPS: usize = 64;

/// Weights below which [`pack_weights`] packs on the calling thread.
const PACK_PAR_MIN: usize = 1 << 16;

/// Packs `w [cout, cin, kh, kw]` (row-major) into `COB`-channel blocks laid out
/// `[block][ci][ki][kj][COB]`, zero-filled past `cout`.
pub(crate) fn pack_weights<F: Float>(d: &Direct, w: &[F], cob: usize, par: Par) -> Vec<F> {
    let taps = d.taps();
    let nb = d.cout.div_ceil(cob);
    let mut out = vec![F::zero(); nb * taps * cob];
    // one channel block per task (a copy: the split cannot change any value); at batch 1 the
    // packing of ResNet-18's weights is several per cent of a forward, while waking the
    // workers for a small layer's weights costs more than it saves
    let par = if w.len() < PACK_PAR_MIN {
        Par::Seq
    } else {
        par
    };
    crate::for_each_chunk(
        par,
        &mut out,
        taps * cob,
        || (),
        |_, b, blk| {
            // taps in chunks, so that the chunk's `[tap][cob]` rows stay in L1 while every
            // channel of the block writes into them (one line per tap and channel otherwise)
            for t0 in (0..taps).step_by(PACK_TAPS) {
                let t1 = taps.min(t0 + PACK_TAPS);
                for co in b * cob..d.cout.min((b + 1) * cob) {
                    let c = co - b * cob;
                    for (t, &v) in w[co * taps + t0..co * taps + t1].iter().enumerate() {
                        blk[(t0 + t) * cob + c] = v;
                    }
                }
            }
        },
    );
    out
}

/// Flipped, transposed kernel for the input gradient: `wb[ci, co, ki, kj] =
/// w[co, ci, kh−1−ki, kw−1−kj]`, with `w [cout, cin, kh, kw]` → `wb [cin, cout, kh, kw]`.
pub(crate) fn flip_transpose<F: Float>(
    w: &[F],
    cout: usize,
    cin: usize,
    kh: usize,
    kw: usize,
) -> Vec<F> {
    let mut out = vec![F::zero(); w.len()];
    for co in 0..cout {
        for ci in 0..cin {
            for ki in 0..kh {
                for kj in 0..kw {
                    out[((ci * cout + co) * kh + ki) * kw + kj] =
                        w[((co * cin + ci) * kh + (kh - 1 - ki)) * kw + (kw - 1 - kj)];
                }
            }
        }
    }
    out
}

/// Reinterprets an `f32`-typed generic slice (checked by the caller through
/// [`Direct::supported`]).
fn as_f32<F: Float>(s: &[F]) -> &[f32] {
    assert!(
        Direct::supported::<F>(),
        "hla-tensor internal error: direct convolution needs f32"
    );
    // SAFETY: F is f32 (asserted), so the layout is identical.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) }
}

/// Mutable version of [`as_f32`].
fn as_f32_mut<F: Float>(s: &mut [F]) -> &mut [f32] {
    assert!(
        Direct::supported::<F>(),
        "hla-tensor internal error: direct convolution needs f32"
    );
    // SAFETY: F is f32 (asserted), so the layout is identical.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut f32, s.len()) }
}

/// `y [chans, ho, wo] = conv(x [cin, h, w])` for the output channels `chans` (all of them:
/// `0..cout`; a split starts at a multiple of the channel block) with the kernel of `plan`
/// (this geometry's [`Direct::plan`], chosen once per call) and the packed weights `wpk` of all
/// channels (see [`pack_weights`], in blocks of `plan.cob`), written to or added into `y`.
/// `scratch` must hold [`Direct::scratch_len`] elements.
#[allow(clippy::too_many_arguments)] // the kernel's operands plus the channel range
pub(crate) fn conv_sample<F: Float>(
    d: &Direct,
    isa: Isa,
    plan: Plan,
    x: &[F],
    wpk: &[F],
    y: Dst<'_, F>,
    scratch: &mut [F],
    tables: &Tables,
    chans: std::ops::Range<usize>,
) {
    d.fill_input(isa, x, scratch);
    conv_padded(d, isa, plan, scratch, wpk, y, tables, chans);
}

/// [`conv_sample`] on an input already padded and phase-split by [`Direct::fill_input`] into
/// `scratch` (which several tasks may then share: a sample split into channel blocks).
#[allow(clippy::too_many_arguments)] // the kernel's operands plus the channel range
#[allow(clippy::manual_is_multiple_of)] // `%`: the workspace's rust-version is 1.80
pub(crate) fn conv_padded<F: Float>(
    d: &Direct,
    isa: Isa,
    plan: Plan,
    scratch: &[F],
    wpk: &[F],
    y: Dst<'_, F>,
    tables: &Tables,
    chans: std::ops::Range<usize>,
) {
    let Plan { kernel, cob, pxb } = plan;
    assert!(
        chans.start % cob == 0 && chans.end <= d.cout && chans.start < chans.end,
        "hla-tensor internal error: direct channel range {chans:?} of {} (blocks of {cob})",
        d.cout
    );
    let off = &tables.off;
    // the grid kernels read whole blocks past `qend`; the row kernel's last block of a row is
    // rounded up to a third of `pxb`
    let reach = match kernel {
        Kernel::Rows => d.qend() + pxb / 3,
        Kernel::Grid | Kernel::Narrow => d.qend().div_ceil(pxb) * pxb,
    };
    let max_read = off.iter().copied().max().unwrap_or(0) + reach;
    assert!(
        max_read <= scratch.len(),
        "hla-tensor internal error: direct scratch too small"
    );
    assert_eq!(
        wpk.len(),
        d.cout.div_ceil(cob) * d.taps() * cob,
        "hla-tensor internal error: packed weights"
    );
    let (y, add) = match y {
        Dst::Write(y) => (y, false),
        // SAFETY: `MaybeUninit<F>` has the layout of `F`, and only values are written through
        // the view, so `y` stays initialised; `add` tells `store_block` that it may read it.
        Dst::Add(y) => (
            unsafe { &mut *(y as *mut [F] as *mut [MaybeUninit<F>]) },
            true,
        ),
    };
    assert_eq!(
        y.len(),
        chans.len() * d.ho * d.wo,
        "hla-tensor internal error: direct output"
    );
    let taps = d.taps();
    let wpk = &wpk[chans.start / cob * taps * cob..chans.end.div_ceil(cob) * taps * cob];
    let nout = chans.len();
    let (xp, wpk) = (as_f32(scratch), as_f32(wpk));
    assert!(
        Direct::supported::<F>(),
        "hla-tensor internal error: direct convolution needs f32"
    );
    // SAFETY: F is f32 (asserted), so `MaybeUninit<F>` has the layout of `MaybeUninit<f32>`.
    let y = unsafe { &mut *(y as *mut [MaybeUninit<F>] as *mut [MaybeUninit<f32>]) };
    let rows = Rows {
        wq: d.wq(),
        ho: d.ho,
        wo: d.wo,
    };
    let mut store = |out: &[f32], pxb: usize, q0: usize, len: usize, co0: usize, nco: usize| {
        // SAFETY: with `add`, `y` is initialised (`Dst::Add`).
        unsafe { store_block(d, isa, out, (pxb, q0, len), (co0, nco), (y, add)) }
    };
    // SAFETY: an `Isa` carries its detection proof (only `detect*` make one); bounds asserted
    // above (for the block shape of the plan).
    unsafe { run_kernel(isa, kernel, xp, wpk, off, nout, d.qend(), rows, &mut store) };
}

/// Where [`conv_sample`] puts its results.
pub(crate) enum Dst<'a, F> {
    /// Written over uninitialised memory (every value of the channel range).
    Write(&'a mut [MaybeUninit<F>]),
    /// Added into the values there (`y ← y + conv(x)`): a gradient accumulated in place, with
    /// the bits of computing the convolution first and adding it afterwards.
    Add(&'a mut [F]),
}

impl<F> Dst<'_, F> {
    /// The values `r` of this destination, put there the same way.
    pub(crate) fn part(&mut self, r: std::ops::Range<usize>) -> Dst<'_, F> {
        match self {
            Dst::Write(y) => Dst::Write(&mut y[r]),
            Dst::Add(y) => Dst::Add(&mut y[r]),
        }
    }
}

/// The forward kernels of [`conv_sample`] (all sum each output over the taps in order from
/// zero, so they give the same bits; only the blocking differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// One channel × `NARROW_NV` vectors of flattened positions.
    Narrow,
    /// `COB` channels × `NV` vectors of flattened positions, blocks crossing rows.
    Grid,
    /// Two vectors of channels × up to `ROWS*_P` positions of one output row.
    Rows,
}

/// A forward kernel with its channel block (the weights are packed in blocks of `cob`) and its
/// positions per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub kernel: Kernel,
    pub cob: usize,
    pub pxb: usize,
}

/// The output plane as the row kernel walks it: row pitch on the flattened grid, rows, valid
/// columns.
#[derive(Clone, Copy, Debug)]
struct Rows {
    wq: usize,
    ho: usize,
    wo: usize,
}

/// Index tables of [`conv_sample`], built once per call (not per sample): tap offsets into the
/// phase-split input.
pub(crate) struct Tables {
    off: Vec<usize>,
}

impl Direct {
    /// The [`Tables`] of this geometry.
    pub(crate) fn tables(&self) -> Tables {
        Tables {
            off: self.tap_offsets(1),
        }
    }
}

/// Writes (or with `add`, adds into `y`) the valid positions of one block (`out [COB][pxb]`,
/// starting at flattened `q0`) of the forward grid to `y [cout, ho, wo]`. The kernels' blocks
/// cover every valid position of every channel of their range, so `y` is written in full (it
/// need not be initialised unless `add`).
///
/// # Safety
/// With `add`, `y` must be initialised.
unsafe fn store_block(
    d: &Direct,
    isa: Isa,
    out: &[f32],
    (pxb, q0, len): (usize, usize, usize),
    (co0, nco): (usize, usize),
    (y, add): (&mut [MaybeUninit<f32>], bool),
) {
    let wq = d.wq();
    let npix = d.ho * d.wo;
    let qb = (q0 + len).min(d.qend());
    assert!(
        nco * pxb <= out.len() && (co0 + nco) * npix <= y.len(),
        "hla-tensor internal error: direct block store"
    );
    let mut q = q0;
    while q < qb {
        let (oh, ow) = (q / wq, q % wq);
        if ow >= d.wo {
            q += wq - ow; // skip the junk columns
            continue;
        }
        let len = (d.wo - ow).min(qb - q);
        let (lane, o) = (q - q0, oh * d.wo + ow);
        // SAFETY: `isa` proves its instruction set; channel `c < nco` reads
        // `out[c·pxb + lane..][..len]` (`lane + len ≤ pxb`) and writes
        // `y[(co0 + c)·npix + o..][..len]` (`o + len ≤ npix`), inside the asserted lengths
        // (and reads it only with `add`, when the caller promises it initialised).
        unsafe {
            let (src, dst) = (out.as_ptr().add(lane), y.as_mut_ptr().add(co0 * npix + o));
            let dst = (dst as *mut f32, npix);
            if add {
                copy_rows::<true>(isa, (src, pxb), dst, (nco, len));
            } else {
                copy_rows::<false>(isa, (src, pxb), dst, (nco, len));
            }
        }
        q += len;
    }
}

/// `dst[c·ds + i] = src[c·ss + i]` (with `ADD`: `dst[c·ds + i] + src[c·ss + i]`) for
/// `c < rows`, `i < len`, in vector moves (a `memcpy` call per row segment cost about a tenth
/// of the grid kernel's time).
///
/// # Safety
/// `isa` proves its instruction set; the rows must be readable / writable (with `ADD`,
/// initialised) and not overlap.
#[inline(always)]
unsafe fn copy_rows<const ADD: bool>(
    isa: Isa,
    src: (*const f32, usize),
    dst: (*mut f32, usize),
    (rows, len): (usize, usize),
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match isa {
            Isa::Avx512(_) => copy_rows_avx512::<ADD>(src, dst, rows, len),
            Isa::Avx2(_) => copy_rows_avx2::<ADD>(src, dst, rows, len),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, src, dst, rows, len);
        unreachable!("hla-tensor internal error: direct convolution without a detected ISA");
    }
}

/// [`copy_rows`] with AVX-512: whole vectors, then one masked vector (masked-off lanes touch no
/// memory).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_rows_avx512<const ADD: bool>(
    (sp, ss): (*const f32, usize),
    (dp, ds): (*mut f32, usize),
    rows: usize,
    len: usize,
) {
    use std::arch::x86_64::*;
    let tail = ((1u32 << (len % 16)) - 1) as __mmask16;
    for c in 0..rows {
        let (s, d) = (sp.add(c * ss), dp.add(c * ds));
        let mut i = 0;
        while i + 16 <= len {
            let mut v = _mm512_loadu_ps(s.add(i));
            if ADD {
                v = _mm512_add_ps(_mm512_loadu_ps(d.add(i)), v);
            }
            _mm512_storeu_ps(d.add(i), v);
            i += 16;
        }
        if tail != 0 {
            let mut v = _mm512_maskz_loadu_ps(tail, s.add(i));
            if ADD {
                v = _mm512_add_ps(_mm512_maskz_loadu_ps(tail, d.add(i)), v);
            }
            _mm512_mask_storeu_ps(d.add(i), tail, v);
        }
    }
}

/// [`copy_rows`] with AVX: whole vectors, then the last values one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_rows_avx2<const ADD: bool>(
    (sp, ss): (*const f32, usize),
    (dp, ds): (*mut f32, usize),
    rows: usize,
    len: usize,
) {
    use std::arch::x86_64::*;
    for c in 0..rows {
        let (s, d) = (sp.add(c * ss), dp.add(c * ds));
        let mut i = 0;
        while i + 8 <= len {
            let mut v = _mm256_loadu_ps(s.add(i));
            if ADD {
                v = _mm256_add_ps(_mm256_loadu_ps(d.add(i)), v);
            }
            _mm256_storeu_ps(d.add(i), v);
            i += 8;
        }
        while i < len {
            *d.add(i) = if ADD {
                *d.add(i) + *s.add(i)
            } else {
                *s.add(i)
            };
            i += 1;
        }
    }
}

/// Receives each finished block: `(out [COB·PXB] row-major, PXB, q0, positions from q0 (≤ PXB),
/// first channel, channels)`.
type Store<'a> = dyn FnMut(&[f32], usize, usize, usize, usize, usize) + 'a;

macro_rules! direct_kernel {
    ($name:ident, $feat:literal, $vec:ty, $lanes:literal, $nv:expr, $cob:expr, $zero:ident, $load:ident, $set1:ident, $fmadd:ident, $store:ident) => {
        /// Blocks of `COB` output channels × `NV` vectors of flattened positions (`0..qend`),
        /// channel blocks outer: per tap `NV` input loads and `COB` weight broadcasts feed
        /// `COB·NV` FMAs. Taps are `off` (offsets into `xp`) with weights packed
        /// `[block][tap][COB]`.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $name(
            xp: &[f32],
            wpk: &[f32],
            off: &[usize],
            nout: usize,
            qend: usize,
            store: &mut Store<'_>,
        ) {
            use std::arch::x86_64::*;
            const COB: usize = $cob;
            const L: usize = $lanes;
            const NV: usize = $nv;
            const PXB: usize = L * NV;
            let taps = off.len();
            let xpp = xp.as_ptr();
            for b in 0..nout.div_ceil(COB) {
                let wb = wpk.as_ptr().add(b * taps * COB);
                let nco = COB.min(nout - b * COB);
                let mut q0 = 0;
                while q0 < qend {
                    let mut acc: [[$vec; NV]; COB] = [[$zero(); NV]; COB];
                    for (t, &o) in off.iter().enumerate() {
                        // SAFETY (whole block): indices bounded by the caller's asserts.
                        let mut xv: [$vec; NV] = [$zero(); NV];
                        for (v, x) in xv.iter_mut().enumerate() {
                            *x = $load(xpp.add(o + q0 + v * L));
                        }
                        let wt = wb.add(t * COB);
                        for (c, a) in acc.iter_mut().enumerate() {
                            let wc = $set1(*wt.add(c));
                            for v in 0..NV {
                                a[v] = $fmadd(wc, xv[v], a[v]);
                            }
                        }
                    }
                    let mut out = [0.0f32; COB * PXB];
                    for (c, a) in acc.iter().enumerate() {
                        for v in 0..NV {
                            $store(out.as_mut_ptr().add(c * PXB + v * L), a[v]);
                        }
                    }
                    store(&out, PXB, q0, PXB, b * COB, nco);
                    q0 += PXB;
                }
            }
        }
    };
}

/// Runs the forward kernel `kernel` for `isa` (bounds checked by the caller).
///
/// # Safety
/// `isa` proves its instruction set (see [`Isa`]); every `off[t] + q` for `q < round_up(qend,
/// PXB)` (row kernel: `q < qend + PXB / 3`) must be inside `xp`, and `wpk` must hold `ceil(nout / COB)·off.len()·COB` values
/// (`COB`, `PXB` of [`Direct::plan`]).
#[allow(clippy::too_many_arguments)] // the kernel's operands plus the choice of kernel
unsafe fn run_kernel(
    isa: Isa,
    kernel: Kernel,
    xp: &[f32],
    wpk: &[f32],
    off: &[usize],
    nout: usize,
    qend: usize,
    rows: Rows,
    store: &mut Store<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match (isa, kernel) {
            (Isa::Avx512(_), Kernel::Grid) => run_avx512(xp, wpk, off, nout, qend, store),
            (Isa::Avx2(_), Kernel::Grid) => run_avx2(xp, wpk, off, nout, qend, store),
            (Isa::Avx512(_), Kernel::Narrow) => run_narrow_avx512(xp, wpk, off, nout, qend, store),
            (Isa::Avx2(_), Kernel::Narrow) => run_narrow_avx2(xp, wpk, off, nout, qend, store),
            (Isa::Avx512(_), Kernel::Rows) => run_rows_avx512(xp, wpk, off, nout, rows, store),
            (Isa::Avx2(_), Kernel::Rows) => run_rows_avx2(xp, wpk, off, nout, rows, store),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, kernel, xp, wpk, off, nout, qend, rows, store);
        unreachable!("hla-tensor internal error: direct convolution without a detected ISA");
    }
}

macro_rules! rows_kernel {
    ($name:ident, $tile:ident, $feat:literal, $vec:ty, $lanes:literal, $pmax:expr, [$($p:literal),+], $zero:ident, $load:ident, $set1:ident, $fmadd:ident, $store:ident) => {
        /// One block of the row kernel: `2·L` channels (two vectors of the packed weights of a
        /// tap) × `P` consecutive positions of one row from flattened `q0` (one broadcast input
        /// value each), over the taps `off` (weights from `wb`), in `acc [PMAX][2·L]`
        /// (position-major): its sums go on from the values there, or from zero if `first`.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn $tile<const P: usize>(
            xpp: *const f32,
            wb: *const f32,
            off: &[usize],
            q0: usize,
            (acc_io, first): (&mut [[f32; 2 * $lanes]; $pmax], bool),
        ) {
            use std::arch::x86_64::*;
            const L: usize = $lanes;
            let mut acc: [[$vec; 2]; P] = [[$zero(); 2]; P];
            if !first {
                for (a, o) in acc.iter_mut().zip(acc_io.iter()) {
                    *a = [$load(o.as_ptr()), $load(o.as_ptr().add(L))];
                }
            }
            for (t, &o) in off.iter().enumerate() {
                // SAFETY (whole block): indices bounded by the caller's asserts.
                let w0 = $load(wb.add(t * 2 * L));
                let w1 = $load(wb.add(t * 2 * L + L));
                let x = xpp.add(o + q0);
                for (p, a) in acc.iter_mut().enumerate() {
                    let xv = $set1(*x.add(p));
                    a[0] = $fmadd(w0, xv, a[0]);
                    a[1] = $fmadd(w1, xv, a[1]);
                }
            }
            for (o, a) in acc_io.iter_mut().zip(acc.iter()) {
                $store(o.as_mut_ptr(), a[0]);
                $store(o.as_mut_ptr().add(L), a[1]);
            }
        }

        /// Row kernel for small planes: blocks of `2·L` output channels × up to `PMAX`
        /// positions of one output row ([`row_blocks`]: the row's last block rounded up to a
        /// multiple of `PMAX / 3`), so no block computes a junk column of the flattened grid
        /// beyond that rounding. Sums over taps in the same order as the grid kernel. Weights
        /// packed `[block][tap][2·L]`.
        ///
        /// Many taps are taken in chunks of about `ROW_TAP_BYTES` of weights
        /// ([`row_tap_chunks`]), every block of a group of up to `ROW_PARK` blocks over a chunk
        /// before the next chunk, their sums parked in between: the chunk's weights are read
        /// from L1 by every block of the group instead of each block streaming all of the
        /// channel block's weights (295 KB for ResNet-18's 512-channel layers with AVX2) from
        /// L2 or beyond. Each sum goes on from its parked value, so the bits are the same.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $name(
            xp: &[f32],
            wpk: &[f32],
            off: &[usize],
            nout: usize,
            rows: Rows,
            store: &mut Store<'_>,
        ) {
            const COB: usize = 2 * $lanes;
            const PMAX: usize = $pmax;
            let taps = off.len();
            let xpp = xp.as_ptr();
            let chunks = row_tap_chunks(taps, COB);
            // each group's blocks: (flattened first position, width, valid positions) and sums
            let mut group = [(0usize, 0usize, 0usize); ROW_PARK];
            // one block more than the group: a block's transposition reads whole groups of 8
            // positions, past its `PMAX` into the next block (see below)
            let mut park = [[[0.0f32; COB]; PMAX]; ROW_PARK + 1];
            // the blocks of a row gathered channel-major, stored together: one store per row
            // segment of up to `ROW_GATHER` positions instead of one per block, so that the
            // copy to `y` moves whole vectors (a 6-position block is copied value by value);
            // each channel's row has room for a last block's 8-position transposition
            const GP: usize = ROW_GATHER + 8;
            let mut gather = [0.0f32; COB * GP];
            for b in 0..nout.div_ceil(COB) {
                let wb = wpk.as_ptr().add(b * taps * COB);
                let (co0, nco) = (b * COB, COB.min(nout - b * COB));
                // the gathered segment: its first flattened position and length
                let (mut seg_q, mut seg_n) = (0, 0);
                let mut blocks = (0..rows.ho).flat_map(|oh| {
                    let mut ow = 0;
                    row_blocks(rows.wo, PMAX).map(move |width| {
                        let np = width.min(rows.wo - ow);
                        ow += np;
                        (oh * rows.wq + ow - np, width, np)
                    })
                });
                loop {
                    let mut n = 0;
                    for blk in blocks.by_ref().take(ROW_PARK) {
                        group[n] = blk;
                        n += 1;
                    }
                    if n == 0 {
                        break;
                    }
                    for (ci, c) in chunks.clone().enumerate() {
                        let (oc, wc) = (&off[c.clone()], wb.add(c.start * COB));
                        for (&(q0, width, _), acc) in group[..n].iter().zip(park.iter_mut()) {
                            match width {
                                $($p => $tile::<$p>(xpp, wc, oc, q0, (acc, ci == 0)),)+
                                _ => unreachable!("hla-tensor internal error: row block"),
                            }
                        }
                    }
                    for (i, &(q0, width, np)) in group[..n].iter().enumerate() {
                        if seg_n > 0 && (q0 != seg_q + seg_n || seg_n + width > ROW_GATHER) {
                            store(&gather, GP, seg_q, seg_n, co0, nco);
                            seg_n = 0;
                        }
                        if seg_n == 0 {
                            seg_q = q0;
                        }
                        // to the grid kernels' channel-major block layout for `store`, in
                        // 8 × 8 transpositions: positions `np..` of a group of 8 are another
                        // block's sums (or stale ones), written past this block's positions,
                        // where the next block of the segment overwrites them or `store`
                        // never reads them (each group of 8 starts below `seg_n + np ≤
                        // ROW_GATHER`, so it ends inside the row of `GP`; and the `ROW_PARK +
                        // 1` blocks of `park` hold every position row read)
                        let src = park.as_ptr().cast::<f32>().add(i * PMAX * COB);
                        let dst = gather.as_mut_ptr().add(seg_n);
                        for p in (0..np).step_by(8) {
                            for c in (0..COB).step_by(8) {
                                transpose8x8(src.add(p * COB + c), COB, dst.add(c * GP + p), GP);
                            }
                        }
                        seg_n += np;
                    }
                }
                if seg_n > 0 {
                    store(&gather, GP, seg_q, seg_n, co0, nco);
                }
            }
        }
    };
}

/// Bytes of packed weights per tap chunk of the row kernel (see [`run_rows_avx2`]): 128 taps
/// of 16 channels with AVX2, 64 of 32 with AVX-512.
const ROW_TAP_BYTES: usize = 8 << 10;

/// Blocks of the row kernel that share each tap chunk (their sums parked: 6 KiB with AVX2,
/// 24 KiB with AVX-512).
const ROW_PARK: usize = 16;

/// The tap chunks of the row kernel for `taps` taps of `cob` channels: as equal as possible,
/// each of at most [`ROW_TAP_BYTES`] of weights (one chunk where they all fit).
fn row_tap_chunks(taps: usize, cob: usize) -> impl Iterator<Item = std::ops::Range<usize>> + Clone {
    let per = (ROW_TAP_BYTES / (4 * cob)).max(1);
    let n = taps.div_ceil(per).max(1);
    (0..n).map(move |i| i * taps / n..(i + 1) * taps / n)
}

/// Positions of an output row that the row kernel gathers before storing them (see
/// [`run_rows_avx2`]); at least the largest block.
const ROW_GATHER: usize = 64;

/// The blocks in which the row kernel covers an output row of `wo` positions: the fewest blocks
/// of at most `pmax` positions, in multiples of `pmax / 3`, as equal as that allows (larger
/// first); only the last may reach past the row, by less than `pmax / 3`. Equal blocks matter:
/// a block of `pmax / 3` positions keeps too few sums in flight to hide the multiply-add's
/// latency (on a Zen 3 the two-position AVX2 tile runs at half the rate of the larger ones),
/// so a row of 32 is 6+6+6+6+4+4 rather than 6+6+6+6+6+2.
fn row_blocks(wo: usize, pmax: usize) -> impl Iterator<Item = usize> {
    let step = pmax / 3;
    let units = wo.div_ceil(step);
    let n = wo.div_ceil(pmax);
    (0..n).map(move |i| (units / n + usize::from(i < units % n)) * step)
}

/// Forward block shapes (channels × vectors): one source for the kernels and [`Direct::plan`].
const AVX512_COB: usize = 8;
const AVX512_NV: usize = 3;
const AVX2_COB: usize = 8;
const AVX2_NV: usize = 1;
/// Vectors of positions per block of the narrow (one-channel) kernels.
const NARROW_NV: usize = 4;
/// Positions per block of the row kernels (AVX-512: 24 accumulators; AVX2: 12 of its 16
/// registers), multiples of 3 so that a row's last block is rounded up to a third of it.
const ROWS512_P: usize = 12;
const ROWS2_P: usize = 6;
/// `(a, b)`: the row kernel is chosen when `a ×` its positions `< b ×` the grid kernel's. With
/// AVX-512 its blocks take more loads per multiply-add than the grid kernel's (14 per 24 against
/// 11 per 24), with AVX2 fewer (8 per 12 against 9 per 8).
const ROWS512_COST: (usize, usize) = (115, 100);
const ROWS2_COST: (usize, usize) = (100, 100);

rows_kernel!(
    run_rows_avx512,
    rows_tile_avx512,
    "avx512f",
    __m512,
    16,
    ROWS512_P,
    [4, 8, 12],
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);
rows_kernel!(
    run_rows_avx2,
    rows_tile_avx2,
    "avx2,fma",
    __m256,
    8,
    ROWS2_P,
    [2, 4, 6],
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);

direct_kernel!(
    run_avx512,
    "avx512f",
    __m512,
    16,
    AVX512_NV,
    AVX512_COB,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);
direct_kernel!(
    run_narrow_avx512,
    "avx512f",
    __m512,
    16,
    NARROW_NV,
    1,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);
direct_kernel!(
    run_narrow_avx2,
    "avx2,fma",
    __m256,
    8,
    NARROW_NV,
    1,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);
direct_kernel!(
    run_avx2,
    "avx2,fma",
    __m256,
    8,
    AVX2_NV,
    AVX2_COB,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);

/// Weight gradient of a few samples on the flattened grid:
/// `dw[co, t] += Σ_s Σ_q dy_q[s, co, q] · x_q[s, q + off_t]` with `t = (ci, ki, kj)`, where
/// `dy_q` is `dy` laid out on the grid pitch (zeros in the junk columns) and `x_q` the
/// phase-split padded input. Each `(co, t)` is accumulated lane-wise over samples (in order) and
/// positions, then reduced over the lanes in a fixed pairwise order and added to `dw`: the order
/// depends only on the number of samples passed, never on the thread count.
///
/// `xs_in[s]`: `[cin, h, w]`, `dys_in[s]`: `[cout, ho, wo]`, `dw [cout, cin·kh·kw]` (accumulated
/// into); `xs` scratch of `n·`[`Direct::scratch_len`], `ds` of `n·`[`Direct::dy_scratch_len`].
pub(crate) fn backward_weight_samples<F: Float>(
    d: &Direct,
    isa: Isa,
    xs_in: &[&[F]],
    dys_in: &[&[F]],
    dw: &mut [F],
    xs: &mut [F],
    ds: &mut [F],
) {
    let ns = xs_in.len();
    assert_eq!(ns, dys_in.len(), "hla-tensor internal error: sample lists");
    let wq = d.wq();
    let (cob, tb, lanes) = d.dw_blocks(isa);
    let (xl, dl) = (d.scratch_len(), d.dy_scratch_len(isa));
    let qpad = d.qpad(lanes);
    assert!(
        xs.len() >= ns * xl && ds.len() >= ns * dl,
        "hla-tensor internal error: dw scratch"
    );
    #[cfg(target_arch = "x86_64")]
    if d.dw_channel_vectorised(isa) {
        // dy transposed to [channel block][position][16·V channels] per sample
        let (v, tb) = dw_pix_blocks(d.cout);
        let (npix, cob) = (d.ho * d.wo, 16 * v);
        let cp = d.cout.div_ceil(cob) * cob;
        assert!(dl >= npix * cp, "hla-tensor internal error: dy scratch");
        for (s, (x, dy)) in xs_in.iter().zip(dys_in).enumerate() {
            d.fill_input(isa, x, &mut xs[s * xl..(s + 1) * xl]);
            let dst = &mut ds[s * dl..s * dl + npix * cp];
            if cp > d.cout {
                // the last block's padding channels; the rest is overwritten below
                let last = &mut dst[(cp - cob) * npix..];
                for row in last.chunks_exact_mut(cob) {
                    row[d.cout % cob..].fill(F::zero());
                }
            }
            // SAFETY: AVX-512 detected (`dw_channel_vectorised`); the bounds are checked inside.
            unsafe { transpose_dy_avx512(as_f32(dy), (d.cout, npix), as_f32_mut(dst), cob) };
        }
        let off = d.tap_offsets(tb);
        let qs: Vec<usize> = (0..npix).map(|i| (i / d.wo) * wq + i % d.wo).collect();
        let max_read = off.iter().copied().max().unwrap_or(0) + qs.last().copied().unwrap_or(0);
        assert!(
            max_read < xl,
            "hla-tensor internal error: direct dw scratch"
        );
        assert_eq!(
            dw.len(),
            d.cout * d.taps(),
            "hla-tensor internal error: dw length"
        );
        let (xp, dp, dw) = (as_f32(xs), as_f32(ds), as_f32_mut(dw));
        // SAFETY: AVX-512 detected; reads bounded by the asserts above.
        unsafe {
            let dims = (ns, xl, dl);
            match (v, tb) {
                (4, 6) => dw_pix_avx512::<4, 6>(d, xp, dp, &off, &qs, dims, dw),
                (2, 8) => dw_pix_avx512::<2, 8>(d, xp, dp, &off, &qs, dims, dw),
                _ => unreachable!("hla-tensor internal error: dw block"),
            }
        };
        return;
    }
    let rows = d.cout.div_ceil(cob) * cob;
    assert!(dl >= rows * qpad, "hla-tensor internal error: dy scratch");
    for (s, (x, dy)) in xs_in.iter().zip(dys_in).enumerate() {
        d.fill_input(isa, x, &mut xs[s * xl..(s + 1) * xl]);
        // each channel's row: its output rows at the grid pitch, zeros in the junk columns, in
        // the tail up to `qpad` and in the padding channels
        for (co, row) in ds[s * dl..][..rows * qpad]
            .chunks_exact_mut(qpad)
            .enumerate()
        {
            if co >= d.cout {
                row.fill(F::zero());
                continue;
            }
            for oh in 0..d.ho {
                let (at, end) = (oh * wq, if oh + 1 == d.ho { qpad } else { (oh + 1) * wq });
                row[at..at + d.wo].copy_from_slice(&dy[(co * d.ho + oh) * d.wo..][..d.wo]);
                row[at + d.wo..end].fill(F::zero());
            }
        }
    }
    let off = d.tap_offsets(tb);
    let max_off = off.iter().copied().max().unwrap_or(0);
    assert!(
        max_off + qpad <= xl,
        "hla-tensor internal error: direct dw scratch"
    );
    assert_eq!(
        dw.len(),
        d.cout * d.taps(),
        "hla-tensor internal error: dw length"
    );
    let (xp, dp, dw) = (as_f32(xs), as_f32(ds), as_f32_mut(dw));
    // positions per chunk: the chunk's rows of every input plane and every `dy` channel fit in
    // `dw_chunk_bytes(isa)`
    let planes = d.cin * d.sh * d.sw + rows;
    let chunk = match dw_chunk_bytes(isa) {
        Some(bytes) => (bytes / (4 * planes) / lanes * lanes).max(lanes),
        None => qpad,
    };
    let dims = (ns, xl, dl, qpad, chunk);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: an `Isa` carries its detection proof; loads bounded by the asserts above.
    unsafe {
        match isa {
            Isa::Avx512(_) => dw_avx512(d, xp, dp, &off, dims, dw),
            Isa::Avx2(_) if (cob, tb) == DW2_BLOCKS[0] => dw_avx2_3x4(d, xp, dp, &off, dims, dw),
            Isa::Avx2(_) => dw_avx2_2x6(d, xp, dp, &off, dims, dw),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, xp, dp, off, dims, dw);
        unreachable!("hla-tensor internal error: direct convolution without a detected ISA");
    }
}

/// Scratch bytes (padded input and `dy`) of a call's samples above which the whole-plane
/// position-vectorised weight gradient takes the samples one at a time for each channel block
/// (ResNet-18's layers at batch 8 per call: 2.4–14 MB) instead of inside each block.
const DW_SAMPLE_MAJOR_BYTES: usize = 2 << 20;

/// Vectors of positions per plane below which the weight gradient keeps the samples inside
/// each block whatever their bytes: taking them one at a time parks every tap block's sums
/// once per sample, which costs as much as a plane of few positions (ResNet-18's 7 × 7 layers,
/// 8 vectors with AVX2, ran at 30–39 GFLOP/s sample by sample against 44–46 on a Zen 3).
const DW_SAMPLE_MAJOR_MIN_VECTORS: usize = 16;

#[cfg(test)]
thread_local! {
    /// Per-thread override of [`DW_SAMPLE_MAJOR_BYTES`] (and of the plane-size rule), for the
    /// tests to take both orders.
    static DW_SAMPLE_MAJOR_TEST: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Whether the weight gradient takes the samples one at a time for each channel block, for
/// `bytes` of scratch and planes of `vectors` vectors ([`DW_SAMPLE_MAJOR_BYTES`],
/// [`DW_SAMPLE_MAJOR_MIN_VECTORS`], or the tests' override).
fn dw_sample_major(bytes: usize, vectors: usize) -> bool {
    #[cfg(test)]
    if let Some(b) = DW_SAMPLE_MAJOR_TEST.with(|c| c.get()) {
        return bytes > b;
    }
    bytes > DW_SAMPLE_MAJOR_BYTES && vectors >= DW_SAMPLE_MAJOR_MIN_VECTORS
}

/// Bytes of input and `dy` rows per position chunk of the position-vectorised AVX-512 weight
/// gradient (`dw_avx512`): they stay in L1 while every block reads them (measured on ResNet-20's
/// 16-channel layers: 24 KiB chunks gained 5 %, 40 KiB 14 %, 64 KiB varied).
const DW_CHUNK_BYTES: usize = 40 << 10;

#[cfg(test)]
thread_local! {
    /// Per-thread choice of the AVX2 weight-gradient block ([`DW2_BLOCKS`] index), for the
    /// tests to compare them.
    static DW2_BLOCK_TEST: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Per-thread override of [`dw_chunk_bytes`] (both ISAs), for the tests to compare chunk sizes.
    static DW_CHUNK_TEST: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Bytes per position chunk of the position-vectorised weight gradient on `isa`, `None` for
/// whole planes: [`DW_CHUNK_BYTES`] with AVX-512; whole planes with AVX2 (its blocks move half
/// the bytes per multiply-add, and chunks measured slower there). The tests' override applies
/// to both, so that both kernels' chunked paths are checked.
fn dw_chunk_bytes(isa: Isa) -> Option<usize> {
    #[cfg(test)]
    if let Some(b) = DW_CHUNK_TEST.with(|c| c.get()) {
        return Some(b);
    }
    match isa {
        Isa::Avx512(_) => Some(DW_CHUNK_BYTES),
        Isa::Avx2(_) => None,
    }
}

/// `(V, TB)` of [`dw_pix_avx512`] for `cout` output channels: 64-channel blocks × 6 taps
/// where they divide the channels (ResNet-18's layers), else 32 × 8. Either way 16 to 24
/// accumulators, and the block's tap offsets stay in registers.
#[allow(clippy::manual_is_multiple_of)] // `%`: the workspace's rust-version is 1.80
fn dw_pix_blocks(cout: usize) -> (usize, usize) {
    if cout % 64 == 0 {
        (4, 6)
    } else {
        (2, 8)
    }
}

/// Positions per chunk of the weight gradient's `dy` transposition: 32 rows of up to 512
/// channels are 64 KiB.
const DW_TRANSPOSE_POS: usize = 32;

/// `dy [cout, npix]` transposed into blocks of `cob` channels: `dst[(co / cob)·npix·cob +
/// p·cob + co % cob] = dy[co·npix + p]` for every channel `co < cout` and position `p < npix`
/// (the padding channels of the last block are left alone). Block by block, so that a
/// block's rows of consecutive positions are contiguous: with one row of all channels per
/// position, the rows a block reads were `4·cp` bytes apart and, from 128 channels up, fell
/// into a few of L1's sets, evicting each other. In chunks of positions, so that the chunk's
/// rows of `dst` stay in L1 while every channel writes into them, and in 8 × 8 blocks through
/// registers (a scalar loop was 2 % of a ResNet-20 training step). Only moves values.
///
/// # Safety
/// The CPU must have AVX-512 F (whose `avx2` the 256-bit shuffles use).
///
/// # Panics
/// If `dy` or `dst` is too short or `cob` is not a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::manual_is_multiple_of)] // `%`: the workspace's rust-version is 1.80
unsafe fn transpose_dy_avx512(
    dy: &[f32],
    (cout, npix): (usize, usize),
    dst: &mut [f32],
    cob: usize,
) {
    assert!(
        dy.len() >= cout * npix
            && dst.len() >= cout.div_ceil(cob.max(1)) * cob * npix
            && cob > 0
            && cob % 8 == 0,
        "hla-tensor internal error: dy transposition"
    );
    let at = |p: usize, c: usize| (c / cob) * npix * cob + p * cob + c % cob;
    for p0 in (0..npix).step_by(DW_TRANSPOSE_POS) {
        let p1 = npix.min(p0 + DW_TRANSPOSE_POS);
        let mut co = 0;
        while co + 8 <= cout {
            let mut p = p0;
            while p + 8 <= p1 {
                // SAFETY: rows co..co+8 of dy and rows p..p+8 of the channels' block of dst
                // (co % cob + 8 ≤ cob), within the bounds asserted above.
                transpose8x8(
                    dy.as_ptr().add(co * npix + p),
                    npix,
                    dst.as_mut_ptr().add(at(p, co)),
                    cob,
                );
                p += 8;
            }
            for p in p..p1 {
                for c in co..co + 8 {
                    dst[at(p, c)] = dy[c * npix + p];
                }
            }
            co += 8;
        }
        for c in co..cout {
            for p in p0..p1 {
                dst[at(p, c)] = dy[c * npix + p];
            }
        }
    }
}

/// `dst[j·ds + i] = src[i·ss + j]` for `i, j < 8`: the classic unpack / shuffle / lane-permute
/// transposition of eight 256-bit rows.
///
/// # Safety
/// AVX (implied by AVX2 and by AVX-512 F); eight rows of eight readable / writable values at
/// each pointer.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn transpose8x8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let u = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    for j in 0..4 {
        _mm256_storeu_ps(
            dst.add(j * ds),
            _mm256_permute2f128_ps::<0x20>(u[j], u[j + 4]),
        );
        _mm256_storeu_ps(
            dst.add((j + 4) * ds),
            _mm256_permute2f128_ps::<0x31>(u[j], u[j + 4]),
        );
    }
}

/// Bytes of transposed `dy` per position chunk of [`dw_pix_avx512`]: 32 KiB stay in L1 while
/// every tap block reads them.
const DW_PIX_CHUNK_BYTES: usize = 32 << 10;

/// Channel-vectorised weight gradient: for a block of `16·V` output channels (`V` vectors of
/// the transposed `dy`) and `TB` taps (`V·TB` accumulators), `acc[t] += x[q + off_t] ·
/// dy[q, co..co+16·V]` over the chunk's samples in order and the valid positions `qs` in order;
/// no lane reductions. `dp` holds per sample `[channel block][qs.len()][16·V]` (see
/// [`transpose_dy_avx512`]), `dw [cout, taps]` is accumulated into. Per position: `V` loads of `dy` and `TB` broadcasts of `x` feed `V·TB` multiply-adds.
/// The positions are taken a chunk at a time ([`DW_PIX_CHUNK_BYTES`] of `dy`) with every tap
/// block's accumulators parked in between (each lane's sequence of multiply-adds is unchanged,
/// so are the bits): `dy` is read from L1 once per tap block instead of from L2 / L3 on every
/// pass. The lanes' sequences do not depend on `V` or `TB` either.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dw_pix_avx512<const V: usize, const TB: usize>(
    d: &Direct,
    xp: &[f32],
    dp: &[f32],
    off: &[usize],
    qs: &[usize],
    (ns, xl, dl): (usize, usize, usize),
    dw: &mut [f32],
) {
    use std::arch::x86_64::*;
    let taps = d.taps();
    let cob = 16 * V;
    let chunk_len = DW_PIX_CHUNK_BYTES / (cob * 4);
    let (xpp, dpp) = (xp.as_ptr(), dp.as_ptr());
    let ntb = off.len() / TB;
    // every tap block's accumulators, parked between position chunks
    let mut parked = vec![[[_mm512_setzero_ps(); V]; TB]; ntb];
    for cb in 0..d.cout.div_ceil(cob) {
        let nco = cob.min(d.cout - cb * cob);
        parked.fill([[_mm512_setzero_ps(); V]; TB]);
        for s in 0..ns {
            let (xb, db) = (xpp.add(s * xl), dpp.add(s * dl + cb * qs.len() * cob));
            for p0 in (0..qs.len()).step_by(chunk_len) {
                let chunk = &qs[p0..qs.len().min(p0 + chunk_len)];
                for (tbk, acc) in parked.iter_mut().enumerate() {
                    let o: [usize; TB] = off[tbk * TB..(tbk + 1) * TB]
                        .try_into()
                        .expect("TB offsets");
                    let mut a = *acc;
                    for (p, &q) in (p0..).zip(chunk) {
                        // SAFETY (whole block): bounded by the caller's asserts.
                        let mut dv = [_mm512_setzero_ps(); V];
                        for (v, x) in dv.iter_mut().enumerate() {
                            *x = _mm512_loadu_ps(db.add(p * cob + 16 * v));
                        }
                        let xq = xb.add(q);
                        for t in 0..TB {
                            let xv = _mm512_set1_ps(*xq.add(o[t]));
                            for v in 0..V {
                                a[t][v] = _mm512_fmadd_ps(xv, dv[v], a[t][v]);
                            }
                        }
                    }
                    *acc = a;
                }
            }
        }
        // The parked sums are `[tap][cob]` (tap `tbk·TB + t`, channel `16·v + lane`); `dw` is
        // `[cout][taps]`. Added in tiles of DW_PIX_STORE_TAPS taps, channel by channel, so each
        // channel's taps are written as one run: tap by tap, the 16–64 channels' values are
        // `4·taps` bytes apart, which from 128 channels up fell into a few of L1's sets (11 %
        // of this kernel's time on ResNet-18's last layers).
        // SAFETY: `parked` holds `ntb·TB·V` vectors of 16 `f32` each, contiguous.
        let sums = std::slice::from_raw_parts(parked.as_ptr() as *const f32, ntb * TB * cob);
        for t0 in (0..taps).step_by(DW_PIX_STORE_TAPS) {
            let t1 = taps.min(t0 + DW_PIX_STORE_TAPS);
            for c in 0..nco {
                let row = &mut dw[(cb * cob + c) * taps..][t0..t1];
                for (d, tap) in row.iter_mut().zip(t0..t1) {
                    *d += sums[tap * cob + c];
                }
            }
        }
    }
}

/// Taps per tile of [`dw_pix_avx512`]'s final additions into `dw`: 64 taps × 64 channels of
/// sums are 16 KiB.
const DW_PIX_STORE_TAPS: usize = 64;

/// The AVX2 weight-gradient blocks ([`Direct::dw_blocks`]): 3 channels × 4 taps (12
/// accumulators, 3 vectors of `dy` and one of the input in the 16 registers: 7 loads per 12
/// multiply-adds), or 2 × 6 (8 loads per 12) where 3-channel blocks would pad too many
/// channels (16 → 18). The inner loop is bound by its loads (the input's, at tap offsets, often
/// split across cache lines). Measured on a Zen 3, one thread, both blocks alternating in one
/// process on ResNet-20's weight gradients at batch 128: 3 × 4 against the former 2 × 5 (7
/// loads per 10) 2–9 % faster from 32 channels on, 2 × 6 on the 16-channel layers 8 % faster
/// than 3 × 4; 3 × 3 gained nothing, 4 × 3 spills. Each lane's sequence of multiply-adds does
/// not depend on the block, so neither do the bits.
const DW2_BLOCKS: [(usize, usize); 2] = [(3, 4), (2, 6)];

macro_rules! dw_kernel {
    ($name:ident, $feat:literal, $vec:ty, $lanes:literal, $cob:expr, $tb:expr, $zero:ident, $load:ident, $fmadd:ident, $store:ident) => {
        /// Blocks of `COB` channels × `TB` taps, each accumulated lane-wise over the samples in
        /// order and, within a sample, over the positions in order; then reduced over the lanes
        /// in a fixed pairwise order.
        ///
        /// Large planes (`chunk < qpad`) are taken `chunk` positions at a time, every block
        /// (all channel blocks × tap blocks) over the chunk before the next chunk, with the
        /// blocks' accumulators parked in memory in between: the chunk's input and `dy` rows
        /// stay in L1 while every block reads them, instead of each block streaming the whole
        /// sample from L2. Each lane's sequence of multiply-adds is the same either way, so
        /// are the bits.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $name(
            d: &Direct,
            xp: &[f32],
            dp: &[f32],
            off: &[usize],
            (ns, xl, dl, qpad, chunk): (usize, usize, usize, usize, usize),
            dw: &mut [f32],
        ) {
            use std::arch::x86_64::*;
            const COB: usize = $cob;
            const TB: usize = $tb;
            const L: usize = $lanes;
            type Acc = [[$vec; TB]; COB];
            let taps = d.taps();
            let (xpp, dpp) = (xp.as_ptr(), dp.as_ptr());
            let (ncb, ntb) = (d.cout.div_ceil(COB), off.len() / TB);
            let offsets = |tbk: usize| -> [usize; TB] {
                off[tbk * TB..(tbk + 1) * TB]
                    .try_into()
                    .expect("TB offsets")
            };
            // `acc += x[q + o_t] · dy[cb·COB + c, q]` for the positions `q0..q1` of sample `s`
            let accumulate = |acc: &mut Acc, s: usize, cb: usize, o: &[usize; TB], (q0, q1)| {
                // SAFETY (whole block): bounded by the caller's asserts.
                let (xb, db) = (xpp.add(s * xl), dpp.add(s * dl));
                let mut q = q0;
                while q < q1 {
                    let mut dv: [$vec; COB] = [$zero(); COB];
                    for (c, v) in dv.iter_mut().enumerate() {
                        *v = $load(db.add((cb * COB + c) * qpad + q));
                    }
                    for t in 0..TB {
                        let xv = $load(xb.add(o[t] + q));
                        for c in 0..COB {
                            acc[c][t] = $fmadd(dv[c], xv, acc[c][t]);
                        }
                    }
                    q += L;
                }
            };
            let mut reduce = |acc: &Acc, cb: usize, tbk: usize| {
                for c in 0..COB {
                    let co = cb * COB + c;
                    if co >= d.cout {
                        break;
                    }
                    for t in 0..TB {
                        let tap = tbk * TB + t;
                        if tap >= taps {
                            break;
                        }
                        let mut lanes = [0.0f32; L];
                        $store(lanes.as_mut_ptr(), acc[c][t]);
                        // Fixed pairwise order over the lanes.
                        let mut n = L;
                        while n > 1 {
                            n /= 2;
                            for i in 0..n {
                                lanes[i] += lanes[i + n];
                            }
                        }
                        dw[co * taps + tap] += lanes[0];
                    }
                }
            };
            if chunk >= qpad && dw_sample_major(ns * (xl + dl) * 4, qpad / L) {
                // Sample by sample for each channel block, every tap block's accumulators
                // parked in between: the sample's input and the block's `dy` rows stay in
                // L2 while every tap block reads them, where taking the samples inside each
                // block streamed all of them from L3 once per block. The lanes' sequences
                // are unchanged, so are the bits.
                let mut parked: Vec<Acc> = vec![[[$zero(); TB]; COB]; ntb];
                for cb in 0..ncb {
                    parked.fill([[$zero(); TB]; COB]);
                    for s in 0..ns {
                        for (tbk, acc) in parked.iter_mut().enumerate() {
                            let mut a = *acc;
                            accumulate(&mut a, s, cb, &offsets(tbk), (0, qpad));
                            *acc = a;
                        }
                    }
                    for (tbk, acc) in parked.iter().enumerate() {
                        reduce(acc, cb, tbk);
                    }
                }
                return;
            }
            if chunk >= qpad {
                for cb in 0..ncb {
                    for tbk in 0..ntb {
                        let o = offsets(tbk);
                        let mut acc: Acc = [[$zero(); TB]; COB];
                        for s in 0..ns {
                            accumulate(&mut acc, s, cb, &o, (0, qpad));
                        }
                        reduce(&acc, cb, tbk);
                    }
                }
                return;
            }
            let mut parked: Vec<Acc> = vec![[[$zero(); TB]; COB]; ncb * ntb];
            for s in 0..ns {
                for q0 in (0..qpad).step_by(chunk) {
                    let q1 = qpad.min(q0 + chunk);
                    for (i, acc) in parked.iter_mut().enumerate() {
                        let (cb, tbk) = (i / ntb, i % ntb);
                        let mut a = *acc;
                        accumulate(&mut a, s, cb, &offsets(tbk), (q0, q1));
                        *acc = a;
                    }
                }
            }
            for (i, acc) in parked.iter().enumerate() {
                reduce(acc, i / ntb, i % ntb);
            }
        }
    };
}

dw_kernel!(
    dw_avx512,
    "avx512f",
    __m512,
    16,
    4,
    6,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);
dw_kernel!(
    dw_avx2_3x4,
    "avx2,fma",
    __m256,
    8,
    DW2_BLOCKS[0].0,
    DW2_BLOCKS[0].1,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);
dw_kernel!(
    dw_avx2_2x6,
    "avx2,fma",
    __m256,
    8,
    DW2_BLOCKS[1].0,
    DW2_BLOCKS[1].1,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);

impl Direct {
    /// Scratch of [`backward_input_scatter`]: the phase-split padded `dx` accumulator followed
    /// by `dy` on the grid pitch.
    pub(crate) fn scatter_scratch_len(&self) -> usize {
        self.scratch_len() + self.cout * self.qpad(16)
    }
    /// Whether the inverse of [`Direct::fill_input`] and [`backward_input_scatter`] apply.
    pub(crate) fn scatter_supported(isa: Isa) -> bool {
        matches!(isa, Isa::Avx512(_))
    }
}

/// `wt [taps rounded up to 16][cout]` = `wᵀ` of `w [cout, cin·kh·kw]` (zero rows past `taps`).
pub(crate) fn transpose_weights<F: Float>(d: &Direct, w: &[F]) -> Vec<F> {
    let taps = d.taps();
    let mut wt = vec![F::zero(); taps.div_ceil(16) * 16 * d.cout];
    for co in 0..d.cout {
        for t in 0..taps {
            wt[t * d.cout + co] = w[co * taps + t];
        }
    }
    wt
}

/// Input gradient of one sample and group at any stride, col2im fused into the product: for
/// each block of 16 taps and 16 grid positions, `acc[t] = Σ_co wᵀ[t, co] · dy_q[co, q]` (over
/// `co` in order), then `dx_p[off_t + q] += acc[t]` in tap order; finally `dx` is read back out
/// of the phase-split padded layout. The order of every sum depends only on the shapes.
/// `wt` from [`transpose_weights`]; `scratch` of [`Direct::scatter_scratch_len`].
pub(crate) fn backward_input_scatter<F: Float>(
    d: &Direct,
    isa: Isa,
    wt: &[F],
    dy: &[F],
    dx: &mut [F],
    scratch: &mut [F],
) {
    assert!(
        Direct::scatter_supported(isa),
        "hla-tensor internal error: scatter needs AVX-512"
    );
    let (wq, qpad) = (d.wq(), d.qpad(16));
    let xl = d.scratch_len();
    let (buf, dyq) = scratch.split_at_mut(xl);
    assert!(
        dyq.len() >= d.cout * qpad,
        "hla-tensor internal error: scatter scratch"
    );
    buf.fill(F::zero());
    dyq.fill(F::zero());
    for co in 0..d.cout {
        for oh in 0..d.ho {
            let o = co * qpad + oh * wq;
            dyq[o..o + d.wo].copy_from_slice(&dy[(co * d.ho + oh) * d.wo..][..d.wo]);
        }
    }
    let off = d.tap_offsets(16);
    let max_off = off.iter().copied().max().unwrap_or(0);
    assert!(
        max_off + qpad <= xl,
        "hla-tensor internal error: scatter bounds"
    );
    assert_eq!(
        wt.len(),
        off.len() * d.cout,
        "hla-tensor internal error: transposed weights"
    );
    {
        let (bf, dq, w32) = (as_f32_mut(buf), as_f32(dyq), as_f32(wt));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 (asserted via `scatter_supported`); bounds asserted above.
        unsafe {
            scatter_avx512(bf, dq, w32, &off, d.cout, qpad)
        };
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (bf, dq, w32);
            unreachable!("hla-tensor internal error: direct convolution without a detected ISA");
        }
    }
    // Read dx back out of the phase-split padded layout (the inverse of `fill_input`).
    let (hq, wq) = (d.hq(), d.wq());
    for ci in 0..d.cin {
        for ih in 0..d.h {
            let r = ih + d.ph;
            let (a, i) = (r % d.sh, r / d.sh);
            let dst = &mut dx[(ci * d.h + ih) * d.w..][..d.w];
            if d.sw == 1 {
                let o = ((ci * d.sh + a) * hq + i) * wq + d.pw;
                dst.copy_from_slice(&buf[o..o + d.w]);
            } else {
                for b in 0..d.sw {
                    let o = (((ci * d.sh + a) * d.sw + b) * hq + i) * wq;
                    let row = &buf[o..o + wq];
                    let j0 = d.pw.saturating_sub(b).div_ceil(d.sw);
                    for (j, &v) in row.iter().enumerate().skip(j0) {
                        let iw = j * d.sw + b - d.pw;
                        if iw >= d.w {
                            break;
                        }
                        dst[iw] = v;
                    }
                }
            }
        }
    }
}

/// Kernel of [`backward_input_scatter`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scatter_avx512(
    buf: &mut [f32],
    dyq: &[f32],
    wt: &[f32],
    off: &[usize],
    cout: usize,
    qpad: usize,
) {
    use std::arch::x86_64::*;
    const TB: usize = 16;
    let (bp, dp, wp) = (buf.as_mut_ptr(), dyq.as_ptr(), wt.as_ptr());
    for tbk in 0..off.len() / TB {
        let o: [usize; TB] = off[tbk * TB..(tbk + 1) * TB]
            .try_into()
            .expect("TB offsets");
        let wb = wp.add(tbk * TB * cout);
        let mut q0 = 0;
        while q0 < qpad {
            let mut acc = [_mm512_setzero_ps(); TB];
            for co in 0..cout {
                // SAFETY (whole block): bounded by the caller's asserts.
                let dv = _mm512_loadu_ps(dp.add(co * qpad + q0));
                for (t, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*wb.add(t * cout + co)), dv, *a);
                }
            }
            for (t, a) in acc.iter().enumerate() {
                let p = bp.add(o[t] + q0);
                _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), *a));
            }
            q0 += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{detect, detect_avx2, row_blocks, Direct, ROWS2_P, ROWS512_P};

    /// The weight gradient's `dy` transposition puts `dy[co, p]` at `dst[(co / cob)·npix·cob +
    /// p·cob + co % cob]` for every channel and position — whole 8 × 8 blocks, partial blocks
    /// of channels and positions, several position chunks, one and several channel blocks —
    /// and leaves the padding channels alone.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn dy_transposition_is_the_definition() {
        use super::{transpose_dy_avx512, Isa};
        let Some(Isa::Avx512(_)) = detect() else {
            return; // the transposition runs only with AVX-512
        };
        for (cout, npix, cob) in [
            (64usize, 64, 64),
            (128, 37, 64),
            (32, 49, 48),
            (40, 70, 32),
            (13, 70, 16),
            (8, 8, 8),
            (3, 5, 16),
        ] {
            let cp = cout.div_ceil(cob) * cob;
            let dy: Vec<f32> = (0..cout * npix).map(|i| i as f32 + 0.5).collect();
            let mut dst = vec![-1.0f32; npix * cp];
            // SAFETY: AVX-512 detected above.
            unsafe { transpose_dy_avx512(&dy, (cout, npix), &mut dst, cob) };
            for p in 0..npix {
                for c in 0..cp {
                    let want = if c < cout { dy[c * npix + p] } else { -1.0 };
                    let at = (c / cob) * npix * cob + p * cob + c % cob;
                    assert_eq!(dst[at], want, "{cout}×{npix}, cob {cob}: [{p}, {c}]");
                }
            }
        }
    }

    /// The position-vectorised weight gradient gives the same bits whatever its position
    /// chunks and loop order (the lanes' sequences of multiply-adds do not change): whole
    /// planes against chunks of one vector up to a few rows and against the samples taken one
    /// at a time per channel block, at strides 1 and 2, with partial channel and tap blocks,
    /// on every ISA of this CPU; and on AVX2 whatever its block of channels × taps.
    #[test]
    fn dw_chunks_keep_the_bits() {
        use super::{
            backward_weight_samples, DW2_BLOCKS, DW2_BLOCK_TEST, DW_CHUNK_TEST,
            DW_SAMPLE_MAJOR_TEST,
        };
        let geoms = [
            (3, 16, 12, 12, 1),
            (16, 16, 9, 11, 1),
            (5, 7, 10, 10, 2),
            (8, 13, 6, 17, 1),
            (6, 9, 7, 9, 1),
            (4, 32, 9, 10, 2),
        ];
        for (cin, cout, h, w, s) in geoms {
            let (ho, wo) = ((h + 2 - 3) / s + 1, (w + 2 - 3) / s + 1);
            let d = Direct {
                cin,
                h,
                w,
                ph: 1,
                pw: 1,
                kh: 3,
                kw: 3,
                sh: s,
                sw: s,
                dh: 1,
                dw: 1,
                cout,
                ho,
                wo,
            };
            let ns = 3;
            let wave = |i: usize, k: f32| ((i as f32 * k).sin() * 3.0).exp() - 1.0;
            let xs: Vec<Vec<f32>> = (0..ns)
                .map(|n| (0..cin * h * w).map(|i| wave(i + 977 * n, 0.37)).collect())
                .collect();
            let dys: Vec<Vec<f32>> = (0..ns)
                .map(|n| {
                    (0..cout * ho * wo)
                        .map(|i| wave(i + 131 * n, 0.71))
                        .collect()
                })
                .collect();
            let (xr, dr): (Vec<&[f32]>, Vec<&[f32]>) = (
                xs.iter().map(|v| v.as_slice()).collect(),
                dys.iter().map(|v| v.as_slice()).collect(),
            );
            for isa in [detect(), detect_avx2()].into_iter().flatten() {
                let run = |bytes: usize| {
                    DW_CHUNK_TEST.with(|c| c.set(Some(bytes)));
                    let mut dw = vec![0.25f32; cout * d.taps()];
                    let mut xsc = vec![f32::NAN; ns * d.scratch_len()];
                    let mut dsc = vec![f32::NAN; ns * d.dy_scratch_len(isa)];
                    backward_weight_samples(&d, isa, &xr, &dr, &mut dw, &mut xsc, &mut dsc);
                    DW_CHUNK_TEST.with(|c| c.set(None));
                    dw.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                let whole = run(usize::MAX);
                assert!(whole.iter().all(|b| f32::from_bits(*b).is_finite()));
                for bytes in [1, 4 * (cin * s * s + 16) * 32, 40 << 10] {
                    assert_eq!(
                        run(bytes),
                        whole,
                        "{isa:?}: {cin}→{cout}, {h}×{w}, stride {s}, {bytes} bytes per chunk"
                    );
                }
                if matches!(isa, super::Isa::Avx2(_)) {
                    for (i, block) in DW2_BLOCKS.iter().enumerate() {
                        DW2_BLOCK_TEST.with(|c| c.set(Some(i)));
                        let (got, chunked) = (run(usize::MAX), run(1));
                        DW2_BLOCK_TEST.with(|c| c.set(None));
                        let what = format!("{cin}→{cout}, stride {s}, AVX2 {block:?}");
                        assert_eq!(got, whole, "{what}");
                        assert_eq!(chunked, whole, "{what}, chunks of one vector");
                    }
                }
                // whole planes, the samples taken one at a time for each channel block
                DW_SAMPLE_MAJOR_TEST.with(|c| c.set(Some(0)));
                let sample_major = run(usize::MAX);
                DW_SAMPLE_MAJOR_TEST.with(|c| c.set(None));
                assert_eq!(
                    sample_major, whole,
                    "{isa:?}: {cin}→{cout}, {h}×{w}, stride {s}, sample by sample"
                );
            }
        }
    }

    /// `fill_input` (each ISA's kernels) writes every entry of its destination (NaN-filled beforehand) with the
    /// phase-split zero-padded input of the definition `P_ab[i, j] = x_p[i·s_h + a, j·s_w + b]`,
    /// for strides 1–3, paddings 0–3 and widths that leave each phase row short or long.
    #[test]
    fn row_blocks_are_equal_and_cover_the_row() {
        for pmax in [ROWS2_P, ROWS512_P] {
            let step = pmax / 3;
            for wo in 1..200 {
                let b: Vec<usize> = row_blocks(wo, pmax).collect();
                assert_eq!(
                    b.len(),
                    wo.div_ceil(pmax),
                    "{wo} in blocks of {pmax}: {b:?}"
                );
                assert_eq!(
                    b.iter().sum::<usize>(),
                    wo.div_ceil(step) * step,
                    "{wo}: {b:?}"
                );
                assert!(b.iter().all(|&n| n % step == 0 && n <= pmax), "{wo}: {b:?}");
                assert!(b.windows(2).all(|p| p[0] >= p[1]), "{wo}: {b:?}");
                assert!(b[0] - b[b.len() - 1] <= step, "{wo}: {b:?}");
            }
        }
        assert_eq!(row_blocks(32, 6).collect::<Vec<_>>(), [6, 6, 6, 6, 4, 4]);
    }

    #[test]
    fn fill_input_is_the_phase_split_padded_input() {
        for (h, w) in [(5, 7), (4, 4), (1, 6), (6, 1), (3, 19), (2, 33)] {
            for (sh, sw) in [(1, 1), (2, 2), (1, 3), (3, 2), (2, 1)] {
                for (ph, pw) in [(0, 0), (1, 1), (2, 3), (3, 0)] {
                    let d = Direct {
                        cin: 2,
                        h,
                        w,
                        ph,
                        pw,
                        kh: 1,
                        kw: 1,
                        sh,
                        sw,
                        dh: 1,
                        dw: 1,
                        cout: 1,
                        ho: 1,
                        wo: 1,
                    };
                    let x: Vec<f32> = (0..2 * h * w).map(|i| i as f32 + 1.0).collect();
                    for isa in [detect(), detect_avx2()].into_iter().flatten() {
                        let mut dst = vec![f32::NAN; d.scratch_len()];
                        d.fill_input(isa, &x, &mut dst);
                        let (hq, wq) = (d.hq(), d.wq());
                        for (k, &v) in dst.iter().enumerate() {
                            let want = if k >= 2 * sh * sw * hq * wq {
                                0.0
                            } else {
                                let (pl, i, j) = (k / (hq * wq), k / wq % hq, k % wq);
                                let (ci, a, b) = (pl / (sh * sw), pl / sw % sh, pl % sw);
                                let (r, c) = (i * sh + a, j * sw + b);
                                if r < ph || r >= ph + h || c < pw || c >= pw + w {
                                    0.0
                                } else {
                                    x[(ci * h + r - ph) * w + c - pw]
                                }
                            };
                            assert_eq!(
                            v.to_bits(),
                            want.to_bits(),
                            "{isa:?}: {h}×{w}, stride ({sh}, {sw}), pad ({ph}, {pw}), entry {k}"
                        );
                        }
                    }
                }
            }
        }
    }
}
