//! W2A8 convolution: ternary weights {−1, 0, +1} (packed once per layer, [`PackedCodes`]) times
//! 8-bit activations (`x ≈ s·(q − z)`), accumulated exactly in `i32`, then one f32 epilogue per
//! output: `s·α_j·(acc − z·Σ codes_j) + b_j`, ReLU fused. Asymmetric scales (TTQ: +1 ↦ α⁺,
//! −1 ↦ −α⁻) take a second product with |codes|: Σ₊ = (abs + acc)/2, Σ₋ = (abs − acc)/2.
//!
//! Layout: per sample and group the patches are written as *k-quads*: byte `r` of quad `q` of
//! patch `p` sits at `(q·m_p + p)·4 + r` (`m_p` = patches rounded up to [`NR`]), so one 32-byte
//! load holds 8 patches × 4 consecutive k, against which a row's 4 codes of that quad are
//! broadcast. AVX2: `vpmaddubsw` (u8 × i8, adjacent pairs into i16, |pair| ≤ 510) accumulated in
//! i16 for at most 64 quads (64 · 510 < 2^15), then widened once with `vpmaddwd`. AVX-512 VNNI:
//! `vpdpbusd` (four products into i32 in one instruction). The instruction set is a token only
//! detection can create ([`Int8Isa::detect`]). Integer sums are exact, so every path and every
//! thread count gives the same bits.

use crate::ternary_gemm::{quantize_one, Avx2};
use crate::{Conv2dParams, Par, Result, TensorError};
use ndarray::{Array4, ArrayView4};
use std::mem::MaybeUninit;

/// Code rows per kernel block.
pub const MR: usize = 4;
/// Patches per kernel block, and the granule the positions are padded to: one AVX2 block (two
/// 8-lane vectors), half an AVX-512 one (which takes 32 where it can, then a 16-patch tail).
pub const NR: usize = 16;
/// Quads accumulated in i16 before widening (AVX2): 64 · 2 · 255 < 2^15.
const I16_QUADS: usize = 64;
/// Least products per task when a small batch splits each sample's output channels
/// ([`channel_block`]).
const SPLIT_MIN_PRODUCTS: usize = 1 << 19;

/// Proof that the CPU has AVX-512 F/BW and VNNI: created only by [`Vnni512::detect`].
#[derive(Clone, Copy, Debug)]
pub struct Vnni512(());

impl Vnni512 {
    /// `Some` when this CPU supports AVX-512 F, BW and VNNI (checked at run time) and the
    /// process's ceiling ([`crate::isa`]) allows AVX-512.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if crate::isa::allows(crate::isa::MaxIsa::Avx512)
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            return Some(Vnni512(()));
        }
        None
    }
}

/// The integer kernel in use; the SIMD variants hold their detection token.
#[derive(Clone, Copy, Debug)]
pub enum Int8Isa {
    /// Portable loops.
    Scalar,
    /// `vpmaddubsw` / `vpmaddwd` on 256-bit vectors.
    Avx2(Avx2),
    /// `vpdpbusd` on 512-bit vectors.
    Vnni512(Vnni512),
}

impl Int8Isa {
    /// The best kernel this CPU supports.
    pub fn detect() -> Self {
        if let Some(t) = Vnni512::detect() {
            return Int8Isa::Vnni512(t);
        }
        match Avx2::detect() {
            Some(t) => Int8Isa::Avx2(t),
            None => Int8Isa::Scalar,
        }
    }

    /// Every kernel this CPU can run, portable first (tests compare them).
    pub fn available() -> Vec<Self> {
        let mut v = vec![Int8Isa::Scalar];
        v.extend(Avx2::detect().map(Int8Isa::Avx2));
        v.extend(Vnni512::detect().map(Int8Isa::Vnni512));
        v
    }

    /// Short name for reports: `scalar`, `avx2`, `avx512-vnni`.
    pub fn name(&self) -> &'static str {
        match self {
            Int8Isa::Scalar => "scalar",
            Int8Isa::Avx2(_) => "avx2",
            Int8Isa::Vnni512(_) => "avx512-vnni",
        }
    }
}

/// A layer's ternary codes in the kernel's layout, packed once: per group, rows padded to a
/// multiple of [`MR`], each row's `k` codes padded with zeros to whole quads.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedCodes {
    groups: usize,
    rows_per_group: usize,
    rows_padded: usize,
    k: usize,
    quads: usize,
    data: Vec<i8>,
    row_sum: Vec<i32>,
    /// Groups 1 with a known kernel: the codes in tap-major, channel-quad order for the direct
    /// path (quad `q = tap·⌈c/4⌉ + c/4` holds channels `4·(c/4) .. +4` of that tap).
    direct: Option<Direct>,
}

/// The direct path's code layout (see [`PackedCodes`]).
#[derive(Clone, Debug, PartialEq)]
struct Direct {
    kernel: (usize, usize),
    channel_quads: usize,
    data: Vec<i8>,
}

impl PackedCodes {
    /// Packs `codes` `[c_out, k]` (row `j` belongs to group `j / (c_out / groups)`).
    ///
    /// # Errors
    /// `ShapeMismatch` if `codes.len() != c_out·k`, `groups ∤ c_out`, a code is outside
    /// {−1, 0, 1}, or `k` is so large that an i32 sum could overflow (k > 2^23).
    pub fn new(codes: &[i8], c_out: usize, groups: usize, k: usize) -> Result<Self> {
        let bad = || TensorError::ShapeMismatch {
            op: "PackedCodes::new",
            lhs: vec![codes.len()],
            rhs: vec![c_out, groups, k],
        };
        #[allow(clippy::manual_is_multiple_of)] // rust-version 1.80
        let ok = groups > 0
            && c_out % groups == 0
            && c_out.checked_mul(k) == Some(codes.len())
            && k <= 1 << 23
            && codes.iter().all(|c| (-1..=1).contains(c));
        if !ok {
            return Err(bad());
        }
        let rows_per_group = c_out / groups;
        let rows_padded = rows_per_group.div_ceil(MR) * MR;
        let quads = k.div_ceil(4);
        let mut data = vec![0i8; groups * rows_padded * quads * 4];
        for g in 0..groups {
            for r in 0..rows_per_group {
                let src = &codes[(g * rows_per_group + r) * k..][..k];
                data[(g * rows_padded + r) * quads * 4..][..k].copy_from_slice(src);
            }
        }
        let row_sum = codes
            .chunks(k.max(1))
            .take(c_out)
            .map(|r| r.iter().map(|&c| c as i32).sum())
            .collect::<Vec<_>>();
        let row_sum = if k == 0 { vec![0; c_out] } else { row_sum };
        Ok(Self {
            groups,
            rows_per_group,
            rows_padded,
            k,
            quads,
            data,
            row_sum,
            direct: None,
        })
    }

    /// Packs the codes of a weight `[c_out, c_in/groups, k_h, k_w]` (also in the direct
    /// layout when `groups == 1`).
    ///
    /// # Errors
    /// As [`PackedCodes::new`].
    pub fn for_conv(codes: &[i8], shape: [usize; 4], groups: usize) -> Result<Self> {
        let [c_out, cg, kh, kw] = shape;
        let mut pc = Self::new(codes, c_out, groups, cg * kh * kw)?;
        if groups == 1 {
            let cq = cg.div_ceil(4);
            let row = kh * kw * cq * 4;
            let mut data = vec![0i8; pc.rows_padded * row];
            for j in 0..c_out {
                for ci in 0..cg {
                    for t in 0..kh * kw {
                        data[j * row + (t * cq + ci / 4) * 4 + ci % 4] =
                            codes[(j * cg + ci) * kh * kw + t];
                    }
                }
            }
            pc.direct = Some(Direct {
                kernel: (kh, kw),
                channel_quads: cq,
                data,
            });
        }
        Ok(pc)
    }

    /// The same layer with every code replaced by its magnitude (asymmetric scales).
    pub fn magnitudes(&self) -> Self {
        let mut m = self.clone();
        m.data.iter_mut().for_each(|c| *c = c.abs());
        if let Some(d) = &mut m.direct {
            d.data.iter_mut().for_each(|c| *c = c.abs());
        }
        let k = self.k;
        for g in 0..self.groups {
            for r in 0..self.rows_per_group {
                let row = &m.data[(g * self.rows_padded + r) * self.quads * 4..][..k];
                m.row_sum[g * self.rows_per_group + r] = row.iter().map(|&c| c as i32).sum();
            }
        }
        m
    }

    /// The `k` codes of row `r` of group `gi` (im2col order).
    fn code_row(&self, gi: usize, r: usize) -> &[i8] {
        &self.data[(gi * self.rows_padded + r) * self.quads * 4..][..self.k]
    }

    /// Output channels (`c_out`).
    pub fn rows(&self) -> usize {
        self.groups * self.rows_per_group
    }

    /// Codes per row (`c_in/groups · k_h · k_w`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Groups of the convolution.
    pub fn groups(&self) -> usize {
        self.groups
    }
}

/// An 8-bit activation tensor `[n, c, h, w]`: `x ≈ scale · (q − zero)`.
#[derive(Clone, Copy, Debug)]
pub struct QuantInput<'a> {
    /// The codes.
    pub q: ArrayView4<'a, u8>,
    /// Step.
    pub scale: f32,
    /// Code of 0.0 (0 for post-ReLU inputs); also the padding value.
    pub zero: u8,
}

/// One W2A8 convolution layer: packed codes and per-output constants.
#[derive(Clone, Copy, Debug)]
pub struct TernaryConv<'a> {
    /// Codes `[c_out, c_in/groups · k_h · k_w]` in the weight's `[c_out, c_in/g, k_h, k_w]` order.
    pub codes: &'a PackedCodes,
    /// `codes.magnitudes()`, required with `alpha_neg`.
    pub magnitudes: Option<&'a PackedCodes>,
    /// `(k_h, k_w)`.
    pub kernel: (usize, usize),
    /// Scale of +1 (and of −1 without `alpha_neg`), `[c_out]`.
    pub alpha: &'a [f32],
    /// Magnitude of −1 when the scales are asymmetric, `[c_out]`.
    pub alpha_neg: Option<&'a [f32]>,
    /// Added after scaling, `[c_out]` (a folded BatchNorm's shift).
    pub bias: Option<&'a [f32]>,
    /// Per-position divisors `[n, groups, h_out, w_out]` applied before the bias (HLA's patch
    /// norms of the input, so BN can be folded into `alpha` and `bias`).
    pub norms: Option<&'a [f32]>,
    /// Added after the bias, before the activation, `[n, c_out, h_out, w_out]`: a residual
    /// block's shortcut, summed while the output is in cache instead of in a pass of its own.
    pub residual: Option<&'a [f32]>,
    /// Fused activation.
    pub act: Activation,
}

pub use crate::activation::Activation;

/// Per-task scratch: the k-quad patches and the i32 products.
struct Scratch {
    quads: Vec<u8>,
    acc: Vec<i32>,
    acc_abs: Vec<i32>,
}

/// W2A8 convolution (see the module doc). With `Par::Rayon` the samples are split over the
/// rayon pool, and a batch smaller than four also splits each sample's output channels (at
/// least 2^19 products per task, from the shapes only), so batch 1 keeps every core busy; the
/// bits never depend on either.
///
/// # Shapes
/// `x.q`: `[n, c, h, w]`, codes `[c_out, c/groups·k_h·k_w]` → `[n, c_out, h_out, w_out]`.
/// # Errors
/// `ShapeMismatch` when the codes, scales, bias or groups disagree with `x` and `p`; the
/// geometry's errors.
pub fn ternary_conv2d_u8(
    x: &QuantInput,
    w: &TernaryConv,
    p: &Conv2dParams,
    isa: Int8Isa,
    par: Par,
) -> Result<Array4<f32>> {
    Ok(ternary_conv2d_u8_requant(x, w, p, None, isa, par)?.0)
}

/// [`ternary_conv2d_u8`] that also quantises its outputs for the next W2A8 layer when `next`
/// gives that layer's grid `(scale, zero)`: the codes are those
/// [`crate::ternary_gemm::quantize_u8`] would make of the returned f32 outputs (the same formula
/// on the same values), written by the epilogue instead of a second pass over the output.
///
/// # Shapes
/// As [`ternary_conv2d_u8`]; the codes have the output's shape.
/// # Errors
/// As [`ternary_conv2d_u8`].
pub fn ternary_conv2d_u8_requant(
    x: &QuantInput,
    w: &TernaryConv,
    p: &Conv2dParams,
    next: Option<(f32, u8)>,
    isa: Int8Isa,
    par: Par,
) -> Result<(Array4<f32>, Option<Array4<u8>>)> {
    conv_u8(x, w, p, next, isa, par, None)
}

/// Output channels per task for `n` samples of a layer with `products` multiply-adds per
/// output channel and sample: a whole sample, except that a batch smaller than four splits
/// each sample's channels into up to 4 / n blocks of at least [`SPLIT_MIN_PRODUCTS`] — whole
/// [`MR`]-row blocks for one group, whole groups otherwise, so every block starts on a block
/// of the packed codes. Chosen from the shapes only, never the thread count; the integer sums
/// are exact, so the split cannot change the bits (tested).
fn channel_block(n: usize, pc: &PackedCodes, products: usize) -> usize {
    let c_out = pc.rows();
    let work = c_out * products;
    if n >= 4 || work < 2 * SPLIT_MIN_PRODUCTS {
        return c_out;
    }
    let want = 4usize.div_ceil(n).min(work / SPLIT_MIN_PRODUCTS);
    let unit = if pc.groups == 1 {
        MR
    } else {
        pc.rows_per_group
    };
    (c_out.div_ceil(unit).div_ceil(want) * unit).min(c_out)
}

/// [`ternary_conv2d_u8_requant`] with `block` output channels per task (`None`: from
/// [`channel_block`]; a test override must be a multiple of [`MR`] for one group and of the
/// group's rows otherwise).
#[allow(clippy::manual_is_multiple_of)] // rust-version 1.80
fn conv_u8(
    x: &QuantInput,
    w: &TernaryConv,
    p: &Conv2dParams,
    next: Option<(f32, u8)>,
    isa: Int8Isa,
    par: Par,
    block: Option<usize>,
) -> Result<(Array4<f32>, Option<Array4<u8>>)> {
    let (n, c, h, wd) = x.q.dim();
    let pc = w.codes;
    let (kh, kw) = w.kernel;
    let c_out = pc.rows();
    let g = pc.groups;
    let ok = p.groups == g
        && c % g == 0
        && pc.k == (c / g) * kh * kw
        && w.alpha.len() == c_out
        && w.alpha_neg.is_none_or(|a| a.len() == c_out)
        && w.alpha_neg.is_some() == w.magnitudes.is_some()
        && w.magnitudes
            .is_none_or(|m| m.rows() == c_out && m.k == pc.k && m.groups == g)
        && w.bias.is_none_or(|b| b.len() == c_out);
    if !ok {
        return Err(TensorError::ShapeMismatch {
            op: "ternary_conv2d_u8",
            lhs: vec![n, c, h, wd],
            rhs: vec![c_out, pc.k, kh, kw, p.groups],
        });
    }
    let (ho, wo) = p.output_hw(h, wd, kh, kw)?;
    let m = ho * wo;
    if w.norms.is_some_and(|nm| nm.len() != n * g * m) {
        return Err(TensorError::ShapeMismatch {
            op: "ternary_conv2d_u8 (norms)",
            lhs: vec![w.norms.map_or(0, |nm| nm.len())],
            rhs: vec![n, g, ho, wo],
        });
    }
    if w.residual.is_some_and(|r| r.len() != n * c_out * m) {
        return Err(TensorError::ShapeMismatch {
            op: "ternary_conv2d_u8 (residual)",
            lhs: vec![w.residual.map_or(0, |r| r.len())],
            rhs: vec![n, c_out, ho, wo],
        });
    }
    let xq = x.q.as_standard_layout();
    let xs = xq.as_slice().expect("standard layout is contiguous");
    let len = n * c_out * m;
    if len == 0 {
        let codes = next.map(|_| Array4::zeros((n, c_out, ho, wo)));
        return Ok((Array4::zeros((n, c_out, ho, wo)), codes));
    }
    // every output (and code) is written once by the epilogue below: no zero-fill first
    let mut yv: Vec<f32> = Vec::with_capacity(len);
    let mut qv: Vec<u8> = Vec::with_capacity(if next.is_some() { len } else { 0 });
    let requant = next.map(|(scale, zero)| (1.0 / scale, zero as f32 + 0.5));
    let cg = c / g;
    let block = block.unwrap_or_else(|| channel_block(n, pc, m * pc.k));
    let rpg = pc.rows_per_group;
    debug_assert!(block == c_out || (block > 0 && block % if g == 1 { MR } else { rpg } == 0));
    // one (sample, first channel, outputs, codes) piece per `block` channels of a sample
    let mut qs = next.map(|_| qv.spare_capacity_mut()[..len].chunks_mut(c_out * m));
    let mut pieces = Vec::with_capacity(n * c_out.div_ceil(block));
    for (i, y) in yv.spare_capacity_mut()[..len]
        .chunks_mut(c_out * m)
        .enumerate()
    {
        let mut q = qs
            .as_mut()
            .and_then(|q| q.next())
            .map(|q| q.chunks_mut(block * m));
        for (b, y) in y.chunks_mut(block * m).enumerate() {
            pieces.push((i, b * block, y, q.as_mut().and_then(|q| q.next())));
        }
    }
    let direct = pc
        .direct
        .as_ref()
        .filter(|d| d.kernel == (kh, kw) && p.dilation == (1, 1));
    let (sh, sw) = p.stride;
    // One input channel per group (depthwise): shifted adds over the padded plane instead of a
    // product whose rows would be padded from 1 to MR.
    let depthwise = g > 1 && cg == 1;
    let (hp, wp) = (h + 2 * p.padding.0, wd + 2 * p.padding.1);
    // The product's geometry: `mp` padded positions, the byte offset of each quad's operand
    // in the patch buffer, and where output (oy, ox) sits among the positions.
    let (mp, offs, buf_len, pos_row) = match direct {
        // Depthwise: the one channel's padded plane split into stride phases the same way
        // (dilated taps included), each tap a shifted add over whole phase planes.
        _ if depthwise => {
            let (hq, wq) = (hp.div_ceil(sh), wp.div_ceil(sw));
            let (dh, dw) = p.dilation;
            let reach = ((kh - 1) * dh / sh) * wq + (kw - 1) * dw / sw;
            let plen = (hq * wq).max(ho * wq + reach);
            let offs = (0..kh)
                .flat_map(|ky| (0..kw).map(move |kx| (ky * dh, kx * dw)))
                .map(|(y, x)| ((y % sh) * sw + x % sw) * plen + (y / sh) * wq + x / sw)
                .collect();
            ((ho * wq).div_ceil(NR) * NR, offs, sh * sw * plen, wq)
        }
        // The padded plane split into stride phases (phase (ry, rx) holds the padded rows
        // ≡ ry mod s_h and columns ≡ rx mod s_w, `wq` wide), so that every tap reads one phase
        // with unit stride: positions p' = oy·wq + ox (ox >= wo are discarded), and the
        // operand of tap (ky, kx) is phase (ky mod s_h, kx mod s_w) shifted by
        // (ky / s_h)·wq + kx / s_w. At stride 1 there is one phase: the padded plane itself.
        Some(d) => {
            let (hq, wq) = (hp.div_ceil(sh), wp.div_ceil(sw));
            let mp = (ho * wq).div_ceil(NR) * NR;
            let plen = (hq * wq).max(mp + ((kh - 1) / sh) * wq + (kw - 1) / sw);
            let mut offs = Vec::with_capacity(kh * kw * d.channel_quads);
            for (ky, kx) in (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky, kx))) {
                for cq in 0..d.channel_quads {
                    let phase = (cq * sh + ky % sh) * sw + kx % sw;
                    offs.push((phase * plen + (ky / sh) * wq + kx / sw) * 4);
                }
            }
            (mp, offs, d.channel_quads * sh * sw * plen * 4, wq)
        }
        None => {
            let mp = m.div_ceil(NR) * NR;
            let offs = (0..pc.quads).map(|q| q * mp * 4).collect();
            (mp, offs, pc.quads * mp * 4, wo)
        }
    };
    // a piece's sums: at most `block` rows of one group, from its first row r0, in whole
    // MR-row blocks
    let rows = block.min(rpg).div_ceil(MR) * MR * mp;
    crate::for_each_chunk(
        par,
        &mut pieces,
        1,
        || Scratch {
            quads: vec![x.zero; buf_len],
            acc: vec![0; rows],
            acc_abs: vec![0; if w.magnitudes.is_some() { rows } else { 0 }],
        },
        |s, _, piece| {
            let (i, j0, out, codes) = &mut piece[0];
            let (i, j0) = (*i, *j0);
            let j1 = j0 + out.len() / m;
            let sample = &xs[i * c * h * wd..(i + 1) * c * h * wd];
            // the groups this piece's channels belong to, and its rows r0..r1 of each
            for gi in j0 / rpg..j1.div_ceil(rpg) {
                let (r0, r1) = (
                    j0.max(gi * rpg) - gi * rpg,
                    j1.min((gi + 1) * rpg) - gi * rpg,
                );
                let xg = &sample[gi * cg * h * wd..(gi + 1) * cg * h * wd];
                if depthwise {
                    let plen = buf_len / (sh * sw);
                    pad_phases(xg, (h, wd), p, (pos_row, plen), &mut s.quads);
                    let len = ho * pos_row;
                    for r in r0..r1 {
                        let acc = &mut s.acc[(r - r0) * mp..][..len];
                        depthwise_taps(isa, pc.code_row(gi, r), &s.quads, &offs, acc);
                        if let Some(mc) = w.magnitudes {
                            let acc = &mut s.acc_abs[(r - r0) * mp..][..len];
                            depthwise_taps(isa, mc.code_row(gi, r), &s.quads, &offs, acc);
                        }
                    }
                } else {
                    match direct {
                        Some(_) => pad_quads(
                            xg,
                            (cg, h, wd),
                            p,
                            (kh, kw),
                            (pos_row, buf_len / 4 / (cg.div_ceil(4) * sh * sw)),
                            &mut s.quads,
                        ),
                        None => im2col_quads(
                            xg,
                            (cg, h, wd),
                            (kh, kw),
                            p,
                            (ho, wo),
                            x.zero,
                            mp,
                            &mut s.quads,
                        ),
                    }
                    gemm_group(
                        isa,
                        pc,
                        direct.is_some(),
                        (gi, r0..r1),
                        &s.quads,
                        &offs,
                        mp,
                        &mut s.acc,
                    );
                    if let Some(mc) = w.magnitudes {
                        gemm_group(
                            isa,
                            mc,
                            direct.is_some(),
                            (gi, r0..r1),
                            &s.quads,
                            &offs,
                            mp,
                            &mut s.acc_abs,
                        );
                    }
                }
                let z = x.zero as i32;
                // the epilogue runs over output rows, or over whole planes where the positions
                // have no discarded columns (1×1 convs, the im2col path)
                let (segs, seg) = if pos_row == wo { (1, m) } else { (ho, wo) };
                // HLA's patch norms of this sample and group, one per output position
                let norms = w.norms.map(|nm| &nm[(i * g + gi) * m..][..m]);
                // positive norms keep every output finite, as the branch-free rows assume
                // (a zero norm, possible with eps_x = 0, takes the element-wise loop below)
                let norms_positive = norms.is_none_or(|nm| nm.iter().all(|&v| v > 0.0));
                for r in r0..r1 {
                    let j = gi * rpg + r;
                    // channel j's plane within this piece
                    let at = (j - j0) * m;
                    let b = w.bias.map_or(0.0, |b| b[j]);
                    // channel j's shortcut plane in sample i
                    let res = w.residual.map(|rs| &rs[(i * c_out + j) * m..][..m]);
                    let za = z * pc.row_sum[j];
                    let zb = w.magnitudes.map_or(0, |mc| z * mc.row_sum[j]);
                    let (ap, an) = match w.alpha_neg {
                        Some(an) => (x.scale * w.alpha[j], Some(x.scale * an[j])),
                        None => (x.scale * w.alpha[j], None),
                    };
                    if an.is_none() && norms_positive {
                        // the common case (symmetric scales): branch-free rows
                        let row = Row {
                            za,
                            ap,
                            b,
                            act: w.act,
                            width: seg,
                            pos_row,
                            norms,
                            res,
                        };
                        let o = &mut out[at..][..m];
                        let q = codes.as_deref_mut().map(|q| &mut q[at..][..m]);
                        finish(isa, &row, &s.acc[(r - r0) * mp..], o, q.zip(requant));
                        continue;
                    }
                    for oy in 0..segs {
                        let o = &mut out[at + oy * seg..][..seg];
                        let mut q = codes.as_deref_mut().map(|q| &mut q[at + oy * seg..][..seg]);
                        let sums = (r - r0) * mp + oy * pos_row;
                        let acc = &s.acc[sums..sums + seg];
                        let abs = an.map(|_| &s.acc_abs[sums..sums + seg]);
                        let nrow = norms.map(|nm| &nm[oy * seg..(oy + 1) * seg]);
                        let rrow = res.map(|rs| &rs[oy * seg..(oy + 1) * seg]);
                        for (ox, (o, &a)) in o.iter_mut().zip(acc).enumerate() {
                            let a = a - za;
                            let mut v = match (an, abs) {
                                (Some(an), Some(abs)) => {
                                    let b2 = abs[ox] - zb;
                                    ap * ((b2 + a) / 2) as f32 - an * ((b2 - a) / 2) as f32
                                }
                                _ => ap * a as f32,
                            };
                            if let Some(nr) = nrow {
                                v /= nr[ox];
                            }
                            let v = match rrow {
                                Some(rr) => w.act.apply(v + b + rr[ox]),
                                None => w.act.apply(v + b),
                            };
                            o.write(v);
                            if let (Some(q), Some((inv, z))) = (q.as_deref_mut(), requant) {
                                q[ox].write(quantize_one(v, inv, z));
                            }
                        }
                    }
                }
            }
        },
    );
    drop(pieces);
    // SAFETY: the epilogue wrote all `len` outputs, and with `next` all `len` codes (every
    // sample, channel j0..j1 of each piece and position; the pieces cover the slices exactly,
    // and their channel ranges each sample's c_out channels); a panic
    // propagates before this line.
    unsafe {
        yv.set_len(len);
        if next.is_some() {
            qv.set_len(len);
        }
    }
    let dim = (n, c_out, ho, wo);
    let codes = next.map(|_| Array4::from_shape_vec(dim, qv).expect("one code per output"));
    Ok((
        Array4::from_shape_vec(dim, yv).expect("n·c_out·h_out·w_out outputs"),
        codes,
    ))
}

/// Where an epilogue writes the next layer's codes, with that grid's `(1/s, z + ½)`.
type Requant<'a> = (&'a mut [MaybeUninit<u8>], (f32, f32));

/// The constants of one output channel's epilogue, `act(ap·(acc − za) + b)` (with HLA's patch
/// norms `act(ap·(acc − za) / norm + b)`, with a shortcut `act(… + b + res)`), and where its
/// rows sit: `width` outputs a row, row `oy`'s sums from `oy·pos_row` in the accumulator, its
/// norms and shortcut values from `oy·width` in `norms` and `res`.
struct Row<'a> {
    za: i32,
    ap: f32,
    b: f32,
    act: Activation,
    width: usize,
    pos_row: usize,
    norms: Option<&'a [f32]>,
    res: Option<&'a [f32]>,
}

/// `o = act(ap·(acc − za) + b)` (or `act(ap·(acc − za) / norm + b)`, plus `res` after the bias)
/// over one output channel's plane `o` (rows of `row.width`, read from `acc` at `row.pos_row`
/// apart), and with `q = Some((codes, (1/s, z + ½)))` each output's code on the next layer's
/// grid. Without a shortcut, `f32::max` returns the non-NaN operand, so unlike
/// [`Activation::apply`] a NaN would become 0 under ReLU here; the products of integer sums and
/// finite scales, divided by positive norms, are never NaN. A shortcut may hold anything, so
/// with one the ReLU is [`Activation::apply`]'s (NaN and −0.0 kept, as the separate sum and
/// ReLU give). Plain multiplies and adds (never fused), so the AVX2 and AVX-512 entries below
/// give the same bits.
#[inline(always)]
fn finish_any(row: &Row, acc: &[i32], o: &mut [MaybeUninit<f32>], q: Option<Requant<'_>>) {
    /// One plane with the divisions (`NORM`) and the shortcut (`RES`) compiled in or out.
    #[inline(always)]
    fn go<const NORM: bool, const RES: bool>(
        r: &Row,
        acc: &[i32],
        o: &mut [MaybeUninit<f32>],
        mut q: Option<Requant<'_>>,
        act: impl Fn(f32) -> f32,
    ) {
        for (oy, o) in o.chunks_mut(r.width).enumerate() {
            let (len, at) = (o.len(), oy * r.width);
            // every slice cut to `len`, so the indexing below needs no bounds checks
            let acc = &acc[oy * r.pos_row..][..len];
            let nm = r
                .norms
                .filter(|_| NORM)
                .map_or(&[][..], |nm| &nm[at..][..len]);
            let rs = r.res.filter(|_| RES).map_or(&[][..], |rs| &rs[at..][..len]);
            let value = |x: usize| {
                let mut v = r.ap * (acc[x] - r.za) as f32;
                if NORM {
                    v /= nm[x];
                }
                v += r.b;
                if RES {
                    v += rs[x];
                }
                act(v)
            };
            match q.as_mut() {
                None => (0..len).for_each(|x| {
                    o[x].write(value(x));
                }),
                Some((q, (inv, z))) => {
                    let (q, inv, z) = (&mut q[at..][..len], *inv, *z);
                    for x in 0..len {
                        let v = value(x);
                        o[x].write(v);
                        q[x].write(quantize_one(v, inv, z));
                    }
                }
            }
        }
    }
    #[inline(always)]
    fn with_act<const NORM: bool, const RES: bool>(
        r: &Row,
        acc: &[i32],
        o: &mut [MaybeUninit<f32>],
        q: Option<Requant<'_>>,
    ) {
        match (r.act, RES) {
            (Activation::None, _) => go::<NORM, RES>(r, acc, o, q, |v| v),
            (Activation::Relu, false) => go::<NORM, RES>(r, acc, o, q, |v| v.max(0.0)),
            (Activation::Relu, true) => {
                go::<NORM, RES>(r, acc, o, q, |v| if v < 0.0 { 0.0 } else { v })
            }
            // `clamp` keeps NaN and −0.0, as `Activation::apply` does
            (Activation::Relu6, _) => go::<NORM, RES>(r, acc, o, q, |v| v.clamp(0.0, 6.0)),
        }
    }
    match (row.norms.is_some(), row.res.is_some()) {
        (false, false) => with_act::<false, false>(row, acc, o, q),
        (true, false) => with_act::<true, false>(row, acc, o, q),
        (false, true) => with_act::<false, true>(row, acc, o, q),
        (true, true) => with_act::<true, true>(row, acc, o, q),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn finish_avx2(row: &Row, acc: &[i32], o: &mut [MaybeUninit<f32>], q: Option<Requant<'_>>) {
    finish_any(row, acc, o, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn finish_avx512(
    row: &Row,
    acc: &[i32],
    o: &mut [MaybeUninit<f32>],
    q: Option<Requant<'_>>,
) {
    finish_any(row, acc, o, q)
}

/// [`finish_any`] compiled for `isa`.
fn finish(
    isa: Int8Isa,
    row: &Row,
    acc: &[i32],
    o: &mut [MaybeUninit<f32>],
    q: Option<Requant<'_>>,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the token proves AVX2; the body is safe code.
        Int8Isa::Avx2(_) => unsafe { finish_avx2(row, acc, o, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the token proves AVX-512 F and BW; the body is safe code.
        Int8Isa::Vnni512(_) => unsafe { finish_avx512(row, acc, o, q) },
        _ => finish_any(row, acc, o, q),
    }
}

/// Positions a depthwise channel sums per pass in i16 (2 KiB of sums, in L1 with the rows
/// they read).
const DW_CHUNK: usize = 1024;
/// Taps summed in i16 before widening: 128 · 255 < 2^15.
const DW_I16_TAPS: usize = 128;

/// One depthwise output channel, exactly: `acc[p] = Σ_t codes[t] · plane[offs[t] + p]` for
/// every `p < acc.len()` (the stride-phase plane of [`pad_phases`], tap offsets from the
/// geometry in [`ternary_conv2d_u8`]); every non-zero tap is one shifted add or subtract of a
/// whole plane, in i16 lanes (exact below [`DW_I16_TAPS`] taps) widened once per pass. The
/// loops vectorise with whatever instructions the caller was compiled for: the AVX2 and
/// AVX-512 entries below are this function under `target_feature`.
#[inline(always)]
fn depthwise_taps_any(codes: &[i8], plane: &[u8], offs: &[usize], acc: &mut [i32]) {
    let mut t = [0i16; DW_CHUNK];
    for (start, acc) in (0..).step_by(DW_CHUNK).zip(acc.chunks_mut(DW_CHUNK)) {
        let n = acc.len();
        let t = &mut t[..n];
        for (pass, (cs, os)) in codes
            .chunks(DW_I16_TAPS)
            .zip(offs.chunks(DW_I16_TAPS))
            .enumerate()
        {
            t.fill(0);
            for (&c, &o) in cs.iter().zip(os) {
                let src = &plane[o + start..][..n];
                match c {
                    1 => t.iter_mut().zip(src).for_each(|(d, &v)| *d += v as i16),
                    -1 => t.iter_mut().zip(src).for_each(|(d, &v)| *d -= v as i16),
                    _ => {}
                }
            }
            if pass == 0 {
                acc.iter_mut()
                    .zip(t.iter())
                    .for_each(|(a, &v)| *a = v as i32);
            } else {
                acc.iter_mut()
                    .zip(t.iter())
                    .for_each(|(a, &v)| *a += v as i32);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_taps_avx2(codes: &[i8], plane: &[u8], offs: &[usize], acc: &mut [i32]) {
    depthwise_taps_any(codes, plane, offs, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn depthwise_taps_avx512(codes: &[i8], plane: &[u8], offs: &[usize], acc: &mut [i32]) {
    depthwise_taps_any(codes, plane, offs, acc)
}

/// [`depthwise_taps_any`] compiled for `isa` (codes are {−1, 0, 1}, checked at packing).
fn depthwise_taps(isa: Int8Isa, codes: &[i8], plane: &[u8], offs: &[usize], acc: &mut [i32]) {
    debug_assert_eq!(codes.len(), offs.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the token proves AVX2; the body is safe code (bounds-checked slices).
        Int8Isa::Avx2(_) => unsafe { depthwise_taps_avx2(codes, plane, offs, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the token proves AVX-512 F and BW; the body is safe code.
        Int8Isa::Vnni512(_) => unsafe { depthwise_taps_avx512(codes, plane, offs, acc) },
        _ => depthwise_taps_any(codes, plane, offs, acc),
    }
}

/// Writes one channel `[h, w]` into the depthwise buffer: `s_h·s_w` stride-phase planes of
/// `plen` positions, `wq` wide (phase (ry, rx) holds the padded rows ≡ ry mod s_h and columns
/// ≡ rx mod s_w). Borders and slack keep the zero point the buffer was filled with.
fn pad_phases(
    x: &[u8],
    (h, w): (usize, usize),
    p: &Conv2dParams,
    (wq, plen): (usize, usize),
    buf: &mut [u8],
) {
    let ((sh, sw), (pt, pl)) = (p.stride, p.padding);
    if w == 0 {
        return;
    }
    for (yy, src) in x.chunks_exact(w).take(h).enumerate() {
        let (ry, qy) = ((yy + pt) % sh, (yy + pt) / sh);
        for rx in 0..sw {
            // the columns of phase rx: padded x ≡ rx (mod s_w), from input column xx0
            let xx0 = (rx + sw - pl % sw) % sw;
            let at = (ry * sw + rx) * plen + qy * wq + (xx0 + pl) / sw;
            if sw == 1 {
                buf[at..at + w].copy_from_slice(src);
            } else {
                for (d, &v) in buf[at..].iter_mut().zip(src.iter().skip(xx0).step_by(sw)) {
                    *d = v;
                }
            }
        }
    }
}

/// Writes one input `[c, h, w]` into the direct path's buffer: per channel quad `s_h·s_w`
/// phase planes of `plen` positions (`wq` wide; see the geometry in [`ternary_conv2d_u8`]), 4
/// channels a position. Phases no tap reads (a kernel smaller than the stride) are skipped.
/// Borders, the slack after each plane and the lanes of missing channels keep the zero point
/// the buffer was filled with (never written here).
fn pad_quads(
    x: &[u8],
    (c, h, w): (usize, usize, usize),
    p: &Conv2dParams,
    (kh, kw): (usize, usize),
    (wq, plen): (usize, usize),
    buf: &mut [u8],
) {
    let ((sh, sw), (pt, pl)) = (p.stride, p.padding);
    let hw = h * w;
    for cq in 0..c.div_ceil(4) {
        let lanes = (c - 4 * cq).min(4);
        for yy in 0..h {
            let (ry, qy) = ((yy + pt) % sh, (yy + pt) / sh);
            if ry >= kh {
                continue;
            }
            let row = |r: usize| &x[(4 * cq + r) * hw + yy * w..][..w];
            let phase_row = |rx: usize| ((cq * sh + ry) * sw + rx) * plen + qy * wq;
            if sw == 1 && lanes == 4 {
                let dst = &mut buf[(phase_row(0) + pl) * 4..][..w * 4];
                interleave4([row(0), row(1), row(2), row(3)], dst);
                continue;
            }
            for r in 0..lanes {
                let src = row(r);
                // the columns of phase rx: padded x ≡ rx (mod s_w), from input column xx0
                for rx in 0..sw.min(kw) {
                    let xx0 = (rx + sw - pl % sw) % sw;
                    let at = phase_row(rx) + (xx0 + pl) / sw;
                    for (k, &v) in src.iter().skip(xx0).step_by(sw).enumerate() {
                        buf[(at + k) * 4 + r] = v;
                    }
                }
            }
        }
    }
}

/// `dst[4·i + r] = rows[r][i]`: four channel rows into one row of 4-byte positions (SSE2,
/// part of every x86-64 CPU, 16 positions a step).
fn interleave4(rows: [&[u8]; 4], dst: &mut [u8]) {
    let w = dst.len() / 4;
    assert!(rows.iter().all(|r| r.len() >= w), "interleave4: short row");
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        while done + 16 <= w {
            // SAFETY: done + 16 <= w bounds the 16-byte loads from each row (length >= w,
            // asserted above) and the 64-byte store into dst (length 4·w); SSE2 is baseline.
            unsafe {
                let ld = |r: &[u8]| _mm_loadu_si128(r.as_ptr().add(done) as *const __m128i);
                let (a, b, c, d) = (ld(rows[0]), ld(rows[1]), ld(rows[2]), ld(rows[3]));
                let (ab0, ab1) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
                let (cd0, cd1) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
                let o = dst.as_mut_ptr().add(done * 4) as *mut __m128i;
                _mm_storeu_si128(o, _mm_unpacklo_epi16(ab0, cd0));
                _mm_storeu_si128(o.add(1), _mm_unpackhi_epi16(ab0, cd0));
                _mm_storeu_si128(o.add(2), _mm_unpacklo_epi16(ab1, cd1));
                _mm_storeu_si128(o.add(3), _mm_unpackhi_epi16(ab1, cd1));
            }
            done += 16;
        }
    }
    for (i, d) in dst.chunks_exact_mut(4).enumerate().skip(done) {
        d.copy_from_slice(&[rows[0][i], rows[1][i], rows[2][i], rows[3][i]]);
    }
}

/// Writes the patches of one group's input `[cg, h, w]` as k-quads (module doc); positions
/// outside the input read `zero`.
#[allow(clippy::too_many_arguments)] // one conv geometry, each part named
fn im2col_quads(
    x: &[u8],
    (cg, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    p: &Conv2dParams,
    (ho, wo): (usize, usize),
    zero: u8,
    mp: usize,
    quads: &mut [u8],
) {
    for ci in 0..cg {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let t = (ci * kh + ky) * kw + kx;
                let dst = &mut quads[(t / 4) * mp * 4..];
                let r = t % 4;
                for oy in 0..ho {
                    let iy = (oy * p.stride.0 + ky * p.dilation.0) as isize - p.padding.0 as isize;
                    let row_in = iy >= 0 && (iy as usize) < h;
                    for ox in 0..wo {
                        let ix =
                            (ox * p.stride.1 + kx * p.dilation.1) as isize - p.padding.1 as isize;
                        let v = if row_in && ix >= 0 && (ix as usize) < w {
                            plane[iy as usize * w + ix as usize]
                        } else {
                            zero
                        };
                        dst[(oy * wo + ox) * 4 + r] = v;
                    }
                }
            }
        }
    }
}

/// `acc[(r − rows.start)·mp + p] = Σ_q Σ_i codes[row r, quad q, i] · buf[offs[q] + 4·p + i]`
/// for the rows `rows` of group `gi` (the start a multiple of [`MR`], the end rounded up to
/// whole blocks of the padded rows) and every position `p < mp` (im2col or direct code layout).
#[allow(clippy::too_many_arguments)] // the product's operands, each named
#[allow(clippy::manual_is_multiple_of)] // rust-version 1.80
fn gemm_group(
    isa: Int8Isa,
    pc: &PackedCodes,
    direct: bool,
    (gi, rows): (usize, std::ops::Range<usize>),
    buf: &[u8],
    offs: &[usize],
    mp: usize,
    acc: &mut [i32],
) {
    let (data, kq) = match (&pc.direct, direct) {
        (Some(d), true) => (&d.data, offs.len()),
        _ => (&pc.data, pc.quads),
    };
    debug_assert_eq!(kq, offs.len());
    debug_assert!(rows.start % MR == 0 && rows.end <= pc.rows_padded);
    let r0 = rows.start;
    for rb in rows.step_by(MR) {
        let codes = &data[(gi * pc.rows_padded + rb) * kq * 4..][..MR * kq * 4];
        let out = &mut acc[(rb - r0) * mp..(rb - r0 + MR) * mp];
        let mut pb = 0;
        while pb < mp {
            // the patches this step covers: NR, or 2·NR for a full AVX-512 block
            let width = match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the token proves AVX2; `codes` holds MR rows of kq quads, every
                // offs[q] + 4·(pb + width) lies within `buf` (mp is a multiple of NR, and the
                // callers' layout holds mp positions; checked in debug builds below), `out`
                // holds MR rows of mp >= pb + width.
                Int8Isa::Avx2(_) => unsafe {
                    block_avx2(codes, buf, offs, pb, out, mp);
                    NR
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above, the token proves AVX-512 F/BW/VNNI.
                Int8Isa::Vnni512(_) if pb + 2 * NR <= mp => unsafe {
                    block_vnni512::<2>(codes, buf, offs, pb, out, mp);
                    2 * NR
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Int8Isa::Vnni512(_) => unsafe {
                    block_vnni512::<1>(codes, buf, offs, pb, out, mp);
                    NR
                },
                _ => {
                    block_scalar(codes, buf, offs, pb, out, mp);
                    NR
                }
            };
            pb += width;
        }
    }
}

/// Portable block: MR rows × NR positions from `pb`.
fn block_scalar(codes: &[i8], buf: &[u8], offs: &[usize], pb: usize, out: &mut [i32], mp: usize) {
    let kq = offs.len();
    for r in 0..MR {
        let row = &codes[r * kq * 4..(r + 1) * kq * 4];
        for pp in pb..pb + NR {
            let mut s = 0i32;
            for (q, &o) in offs.iter().enumerate() {
                let a = &buf[o + pp * 4..][..4];
                let b = &row[q * 4..q * 4 + 4];
                s += (0..4).map(|i| a[i] as i32 * b[i] as i32).sum::<i32>();
            }
            out[r * mp + pp] = s;
        }
    }
}

/// AVX2 block: MR rows × 16 patches from `pb` (two 8-patch vectors per row).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2(
    codes: &[i8],
    buf: &[u8],
    offs: &[usize],
    pb: usize,
    out: &mut [i32],
    mp: usize,
) {
    use std::arch::x86_64::*;
    let kq = offs.len();
    debug_assert!(codes.len() >= MR * kq * 4 && pb + 16 <= mp);
    debug_assert!(offs.iter().all(|&o| o + (pb + 16) * 4 <= buf.len()));
    let ones = _mm256_set1_epi16(1);
    let mut acc32 = [_mm256_setzero_si256(); 2 * MR];
    let (cp, ap) = (codes.as_ptr(), buf.as_ptr());
    let mut q = 0;
    while q < kq {
        let end = (q + I16_QUADS).min(kq);
        let mut acc16 = [_mm256_setzero_si256(); 2 * MR];
        while q < end {
            // SAFETY: offs[q] + 4·(pb + 16) <= buf.len() bounds the 64 bytes read.
            let (a0, a1) = unsafe {
                let a = ap.add(*offs.get_unchecked(q) + pb * 4);
                (
                    _mm256_loadu_si256(a as *const __m256i),
                    _mm256_loadu_si256(a.add(32) as *const __m256i),
                )
            };
            for r in 0..MR {
                // SAFETY: row r's quad q lies within the MR·kq·4 codes.
                let c4 = unsafe { (cp.add((r * kq + q) * 4) as *const i32).read_unaligned() };
                let b = _mm256_set1_epi32(c4);
                acc16[2 * r] = _mm256_add_epi16(acc16[2 * r], _mm256_maddubs_epi16(a0, b));
                acc16[2 * r + 1] = _mm256_add_epi16(acc16[2 * r + 1], _mm256_maddubs_epi16(a1, b));
            }
            q += 1;
        }
        for (a32, a16) in acc32.iter_mut().zip(&acc16) {
            *a32 = _mm256_add_epi32(*a32, _mm256_madd_epi16(*a16, ones));
        }
    }
    let op = out.as_mut_ptr();
    for r in 0..MR {
        for v in 0..2 {
            // SAFETY: row r of `out` has mp >= pb + 16 entries.
            unsafe {
                _mm256_storeu_si256(
                    op.add(r * mp + pb + 8 * v) as *mut __m256i,
                    acc32[2 * r + v],
                )
            };
        }
    }
}

/// AVX-512 VNNI block: MR rows × 16·V patches (V 16-patch vectors per row).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block_vnni512<const V: usize>(
    codes: &[i8],
    buf: &[u8],
    offs: &[usize],
    pb: usize,
    out: &mut [i32],
    mp: usize,
) {
    use std::arch::x86_64::*;
    let kq = offs.len();
    debug_assert!(codes.len() >= MR * kq * 4 && pb + 16 * V <= mp);
    debug_assert!(offs.iter().all(|&o| o + (pb + 16 * V) * 4 <= buf.len()));
    let mut acc = [[_mm512_setzero_si512(); V]; MR];
    let (cp, ap) = (codes.as_ptr(), buf.as_ptr());
    for (q, &o) in offs.iter().enumerate() {
        let mut a = [_mm512_setzero_si512(); V];
        for (v, a) in a.iter_mut().enumerate() {
            // SAFETY: o + 4·(pb + 16·V) <= buf.len() bounds the 64·V bytes read.
            *a = unsafe { _mm512_loadu_si512(ap.add(o + pb * 4 + 64 * v) as *const __m512i) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row r's quad q lies within the MR·kq·4 codes.
            let c4 = unsafe { (cp.add((r * kq + q) * 4) as *const i32).read_unaligned() };
            let b = _mm512_set1_epi32(c4);
            for (acc, &a) in acc.iter_mut().zip(&a) {
                *acc = _mm512_dpbusd_epi32(*acc, a, b);
            }
        }
    }
    let op = out.as_mut_ptr();
    for (r, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: row r of `out` has mp >= pb + 16·V entries.
            unsafe { _mm512_storeu_si512(op.add(r * mp + pb + 16 * v) as *mut __m512i, acc) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ternary_gemm::quantize_u8;
    use rand::{Rng, SeedableRng};

    /// The direct definition in i64: Σ codes·(q − z) per output, then the f32 epilogue.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &Array4<u8>,
        zero: u8,
        codes: &[i8],
        c_out: usize,
        (kh, kw): (usize, usize),
        p: &Conv2dParams,
        scale: f32,
        alpha: &[f32],
        alpha_neg: Option<&[f32]>,
    ) -> Array4<f32> {
        let (n, c, h, w) = q.dim();
        let (ho, wo) = p.output_hw(h, w, kh, kw).unwrap();
        let (cg, og) = (c / p.groups, c_out / p.groups);
        Array4::from_shape_fn((n, c_out, ho, wo), |(i, j, oy, ox)| {
            let (mut pos, mut neg) = (0i64, 0i64);
            for ci in 0..cg {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy =
                            (oy * p.stride.0 + ky * p.dilation.0) as isize - p.padding.0 as isize;
                        let ix =
                            (ox * p.stride.1 + kx * p.dilation.1) as isize - p.padding.1 as isize;
                        let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                        let v = if inside {
                            q[[i, (j / og) * cg + ci, iy as usize, ix as usize]] as i64
                                - zero as i64
                        } else {
                            0
                        };
                        match codes[((j * cg + ci) * kh + ky) * kw + kx] {
                            1 => pos += v,
                            -1 => neg += v,
                            _ => {}
                        }
                    }
                }
            }
            let an = alpha_neg.map_or(alpha[j], |a| a[j]);
            scale * alpha[j] * pos as f32 - scale * an * neg as f32
        })
    }

    /// Every available kernel gives the reference exactly (integer sums; the epilogue is
    /// written the same way) on random shapes: strides, padding, dilation, groups, depthwise,
    /// 1×1, zero points, asymmetric scales, channel counts off the block sizes; and the f32
    /// results are bit-identical for every kernel and both `Par` modes.
    #[test]
    fn every_kernel_matches_the_reference() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let dil = |d, s, pad| Conv2dParams {
            dilation: (d, d),
            ..Conv2dParams::new(s, pad)
        };
        let grp = |g, s, pad| Conv2dParams {
            groups: g,
            ..Conv2dParams::new(s, pad)
        };
        let dw_dil = |g, d, s, pad| Conv2dParams {
            dilation: (d, d),
            ..grp(g, s, pad)
        };
        // all inputs 255 (and for the 12×12 depthwise all codes +1: 144 · 255 > 2^15 in one
        // i16 pass)
        let (saturated, all_plus) = ([9, 17], 17);
        // (c, c_out, hw, k, params)
        let cases = [
            (3, 8, 9, 3, Conv2dParams::new(1, 1)),
            (16, 16, 8, 3, Conv2dParams::new(2, 1)),
            (5, 4, 7, 1, Conv2dParams::new(1, 0)),
            (4, 6, 10, 3, dil(2, 1, 2)),
            (8, 12, 6, 3, grp(4, 1, 1)),
            (6, 6, 9, 3, grp(6, 2, 1)), // depthwise, stride 2
            (6, 6, 9, 3, grp(6, 1, 1)), // depthwise, stride 1
            (4, 8, 7, 3, grp(4, 1, 1)), // depthwise, channel multiplier 2
            (33, 7, 5, 1, grp(1, 1, 0)),
            (64, 5, 6, 3, Conv2dParams::new(1, 1)), // k = 576 > 64 quads·4 (i16 flushes)
            (8, 8, 9, 1, Conv2dParams::new(2, 0)),  // 1×1 stride 2: one phase of four read
            (7, 4, 11, 3, Conv2dParams::new(2, 1)), // stride 2, odd plane, partial channel quad
            (4, 4, 10, 5, Conv2dParams::new(3, 2)), // stride 3, kernel above the stride
            (5, 4, 37, 3, Conv2dParams::new(1, 1)), // rows past 16 positions + tail, 5 channels
            (3, 3, 10, 3, dw_dil(3, 2, 1, 2)),      // depthwise, dilation 2
            (2, 2, 11, 5, grp(2, 3, 2)),            // depthwise, stride 3, kernel above it
            (2, 4, 40, 3, grp(2, 1, 1)),            // depthwise, planes past one i16 pass
            (2, 2, 13, 12, grp(2, 1, 5)),           // depthwise, 144 taps (two i16 passes)
        ];
        for (ci, &(c, c_out, hw, kk, p)) in cases.iter().enumerate() {
            let n = 3;
            let k = (c / p.groups) * kk * kk;
            let codes: Vec<i8> = (0..c_out * k)
                .map(|_| match ci == all_plus {
                    true => 1,
                    false => rng.random_range(-1i8..=1),
                })
                .collect();
            let alpha: Vec<f32> = (0..c_out).map(|j| 0.05 + 0.01 * j as f32).collect();
            let alpha_neg: Vec<f32> = (0..c_out).map(|j| 0.07 - 0.002 * j as f32).collect();
            // im2col layout only, and with the direct layout where it applies
            let plain = PackedCodes::new(&codes, c_out, p.groups, k).unwrap();
            let conv =
                PackedCodes::for_conv(&codes, [c_out, c / p.groups, kk, kk], p.groups).unwrap();
            for (pc, zero) in [
                (&plain, 0u8),
                (&conv, 0),
                (&plain, 128),
                (&conv, 128),
                (&conv, 255),
            ] {
                let mc = pc.magnitudes();
                let q = Array4::from_shape_fn((n, c, hw, hw), |_| {
                    if saturated.contains(&ci) {
                        255
                    } else {
                        rng.random::<u8>()
                    }
                });
                for asym in [false, true] {
                    let an = asym.then_some(alpha_neg.as_slice());
                    let want = reference(&q, zero, &codes, c_out, (kk, kk), &p, 0.1, &alpha, an);
                    let mut first: Option<Array4<f32>> = None;
                    for isa in Int8Isa::available() {
                        for par in [Par::Seq, Par::Rayon] {
                            let x = QuantInput {
                                q: q.view(),
                                scale: 0.1,
                                zero,
                            };
                            let w = TernaryConv {
                                codes: pc,
                                magnitudes: asym.then_some(&mc),
                                kernel: (kk, kk),
                                alpha: &alpha,
                                alpha_neg: an,
                                bias: None,
                                norms: None,
                                residual: None,
                                act: Activation::None,
                            };
                            let y = ternary_conv2d_u8(&x, &w, &p, isa, par).unwrap();
                            assert_eq!(y.dim(), want.dim());
                            for (a, b) in y.iter().zip(want.iter()) {
                                let tol = 1e-5 * (1.0 + b.abs());
                                assert!(
                                    (a - b).abs() <= tol,
                                    "case {ci} z {zero} {isa:?}: {a} vs {b}"
                                );
                            }
                            // the epilogue's codes for a next layer: the quantiser's of y
                            let (next_s, next_z) = (0.02, 128);
                            let (y2, codes) = ternary_conv2d_u8_requant(
                                &x,
                                &w,
                                &p,
                                Some((next_s, next_z)),
                                isa,
                                par,
                            )
                            .unwrap();
                            assert_eq!(y2, y, "case {ci} {isa:?}: requant changed the outputs");
                            let mut want_q = vec![0u8; y.len()];
                            crate::ternary_gemm::quantize_u8(
                                y.as_slice().unwrap(),
                                next_s,
                                next_z,
                                &mut want_q,
                                Par::Seq,
                            );
                            let codes = codes.expect("codes asked for");
                            assert_eq!(codes.as_slice().unwrap(), &want_q[..], "case {ci} {isa:?}");
                            match &first {
                                None => first = Some(y),
                                Some(f) => assert_eq!(f, &y, "case {ci} {isa:?} {par:?}"),
                            }
                        }
                    }
                }
            }
        }
    }

    /// Splitting a sample's output channels over tasks (any block of whole code blocks or
    /// groups, as a small batch does) gives the bits of the unsplit sample, for every kernel
    /// and for 1, 2 and 4 threads; and batch 1 of a large layer is split.
    #[test]
    fn channel_blocks_and_thread_counts_give_the_same_bits() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let grp = |g, s, pad| Conv2dParams {
            groups: g,
            ..Conv2dParams::new(s, pad)
        };
        // (c, c_out, hw, k, params, asymmetric scales, with norms)
        let cases = [
            (8, 13, 9, 3, Conv2dParams::new(1, 1), false, false), // direct, c_out ∤ MR
            (6, 12, 8, 3, Conv2dParams::new(2, 1), true, false),  // direct, stride 2, TTQ
            (8, 12, 6, 3, grp(2, 1, 1), false, true),             // grouped (im2col), norms
            (6, 12, 9, 3, grp(6, 2, 1), true, false),             // depthwise ×2, stride 2
            (16, 8, 5, 1, Conv2dParams::new(1, 0), false, false), // 1×1
        ];
        for (ci, &(c, c_out, hw, kk, p, asym, with_norms)) in cases.iter().enumerate() {
            let g = p.groups;
            let k = (c / g) * kk * kk;
            let codes: Vec<i8> = (0..c_out * k).map(|_| rng.random_range(-1i8..=1)).collect();
            let alpha: Vec<f32> = (0..c_out).map(|j| 0.05 + 0.01 * j as f32).collect();
            let alpha_neg: Vec<f32> = (0..c_out).map(|j| 0.07 - 0.002 * j as f32).collect();
            let bias: Vec<f32> = (0..c_out).map(|j| 0.1 * j as f32 - 0.5).collect();
            let pc = PackedCodes::for_conv(&codes, [c_out, c / g, kk, kk], g).unwrap();
            let mc = pc.magnitudes();
            let (ho, wo) = p.output_hw(hw, hw, kk, kk).unwrap();
            for n in [1, 2] {
                let q = Array4::from_shape_fn((n, c, hw, hw), |_| rng.random::<u8>());
                let norms: Vec<f32> = (0..n * g * ho * wo)
                    .map(|_| rng.random_range(0.5f32..2.0))
                    .collect();
                let x = QuantInput {
                    q: q.view(),
                    scale: 0.1,
                    zero: 3,
                };
                let w = TernaryConv {
                    codes: &pc,
                    magnitudes: asym.then_some(&mc),
                    kernel: (kk, kk),
                    alpha: &alpha,
                    alpha_neg: asym.then_some(alpha_neg.as_slice()),
                    bias: Some(&bias),
                    norms: with_norms.then_some(norms.as_slice()),
                    residual: None,
                    act: Activation::Relu,
                };
                let next = Some((0.05, 7));
                let want = conv_u8(&x, &w, &p, next, Int8Isa::Scalar, Par::Seq, Some(c_out));
                let want = want.unwrap();
                let unit = if g == 1 { MR } else { c_out / g };
                for isa in Int8Isa::available() {
                    for block in (unit..c_out).step_by(unit) {
                        for threads in [1, 2, 4] {
                            let pool = rayon::ThreadPoolBuilder::new()
                                .num_threads(threads)
                                .build()
                                .unwrap();
                            let got = pool
                                .install(|| conv_u8(&x, &w, &p, next, isa, Par::Rayon, Some(block)))
                                .unwrap();
                            assert!(
                                got == want,
                                "case {ci} n {n} {isa:?} block {block} threads {threads}"
                            );
                        }
                    }
                }
            }
        }
        // batch 1 of ResNet-18's 3×3, 64-channel layer: four blocks of 16 channels; batch 4
        // and a small layer stay whole
        let pc = PackedCodes::for_conv(&vec![0; 64 * 576], [64, 64, 3, 3], 1).unwrap();
        assert_eq!(channel_block(1, &pc, 56 * 56 * 576), 16);
        assert_eq!(channel_block(2, &pc, 56 * 56 * 576), 32);
        assert_eq!(channel_block(4, &pc, 56 * 56 * 576), 64);
        assert_eq!(channel_block(1, &pc, 10), 64);
        // depthwise: whole groups
        let dw = PackedCodes::for_conv(&vec![0; 96 * 9], [96, 1, 3, 3], 96).unwrap();
        assert_eq!(channel_block(1, &dw, 112 * 112 * 9), 24);
    }

    /// The epilogue tests' layer: 3×3 codes `[12, 8·9]` packed for the direct path, α, α⁻ and a
    /// bias per channel, a random u8 input `[2, 8, 7, 7]` (zero point 3, scale 0.1 in
    /// [`EpilogueCase::x`]) and positive patch norms `[2, 1, 7, 7]`.
    struct EpilogueCase {
        pc: PackedCodes,
        alpha: Vec<f32>,
        alpha_neg: Vec<f32>,
        bias: Vec<f32>,
        q: Array4<u8>,
        norms: Vec<f32>,
    }

    /// `(n, c, c_out, hw, k)` of [`EpilogueCase`].
    const EPILOGUE_DIMS: (usize, usize, usize, usize, usize) = (2, 8, 12, 7, 3);

    impl EpilogueCase {
        fn new(seed: u64) -> Self {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let (n, c, c_out, hw, kk) = EPILOGUE_DIMS;
            let codes: Vec<i8> = (0..c_out * c * kk * kk)
                .map(|_| rng.random_range(-1i8..=1))
                .collect();
            EpilogueCase {
                pc: PackedCodes::for_conv(&codes, [c_out, c, kk, kk], 1).unwrap(),
                alpha: (0..c_out).map(|j| 0.05 + 0.01 * j as f32).collect(),
                alpha_neg: (0..c_out).map(|j| 0.07 - 0.002 * j as f32).collect(),
                bias: (0..c_out).map(|j| 0.1 * j as f32 - 0.5).collect(),
                q: Array4::from_shape_fn((n, c, hw, hw), |_| rng.random::<u8>()),
                norms: (0..n * hw * hw)
                    .map(|_| rng.random_range(0.5f32..2.0))
                    .collect(),
            }
        }

        fn x(&self) -> QuantInput<'_> {
            QuantInput {
                q: self.q.view(),
                scale: 0.1,
                zero: 3,
            }
        }

        /// The layer with α only: no α⁻, bias, norms, shortcut or activation.
        fn plain(&self) -> TernaryConv<'_> {
            TernaryConv {
                codes: &self.pc,
                magnitudes: None,
                kernel: (EPILOGUE_DIMS.4, EPILOGUE_DIMS.4),
                alpha: &self.alpha,
                alpha_neg: None,
                bias: None,
                norms: None,
                residual: None,
                act: Activation::None,
            }
        }
    }

    /// HLA's patch norms in the branch-free epilogue: every output is exactly
    /// `act(ap·(acc − za) / norm + b)` of the plain output `ap·(acc − za)`, and its code the
    /// quantiser's of that value, on every kernel and activation; a zero norm (`eps_x = 0` over
    /// a patch at the zero point) gives the NaN that the f32 path gives there.
    #[test]
    fn patch_norm_epilogue_is_the_formula_bit_for_bit() {
        let mut case = EpilogueCase::new(12);
        let (_, _, _, hw, _) = EPILOGUE_DIMS;
        let p = Conv2dParams::new(1, 1);
        // sample 1's first rows at the zero point: a zero patch for the last check
        case.q.slice_mut(ndarray::s![1, .., ..3, ..]).fill(3);
        let mut norms = case.norms.clone();
        let x = case.x();
        let m = hw * hw;
        let plain_w = case.plain();
        let (inv, z) = (1.0 / 0.05, 7.0 + 0.5);
        for isa in Int8Isa::available() {
            let plain = conv_u8(&x, &plain_w, &p, None, isa, Par::Seq, None)
                .unwrap()
                .0;
            for act in [Activation::None, Activation::Relu, Activation::Relu6] {
                let w = TernaryConv {
                    bias: Some(&case.bias),
                    norms: Some(&norms),
                    act,
                    ..plain_w
                };
                let (y, codes) =
                    conv_u8(&x, &w, &p, Some((0.05, 7)), isa, Par::Rayon, None).unwrap();
                let codes = codes.unwrap();
                for ((i, j, oy, ox), &got) in y.indexed_iter() {
                    let v = plain[[i, j, oy, ox]] / norms[i * m + oy * hw + ox] + case.bias[j];
                    let v = act.apply(v);
                    assert_eq!(
                        got.to_bits(),
                        v.to_bits(),
                        "{isa:?} {act:?} {i} {j} {oy} {ox}"
                    );
                    assert_eq!(codes[[i, j, oy, ox]], quantize_one(v, inv, z));
                }
            }
        }
        // a zero norm where sample 1's sums are zero: NaN through ReLU, as in f32
        norms[m + hw + 1] = 0.0;
        let w = TernaryConv {
            norms: Some(&norms),
            act: Activation::Relu,
            ..plain_w
        };
        for isa in Int8Isa::available() {
            let y = conv_u8(&x, &w, &p, None, isa, Par::Seq, None).unwrap().0;
            assert!(y[[1, 0, 1, 1]].is_nan(), "{isa:?}");
        }
    }

    /// A shortcut in the epilogue is the separate sum: every output is exactly
    /// `act(y + r)` of the output `y` without it (bias, patch norms and asymmetric scales
    /// included) and its code the quantiser's of that value, on every kernel, activation and
    /// thread mode; NaN, infinities and −0.0 in the shortcut come out as the separate sum and
    /// [`Activation::apply`] give them. A shortcut of the wrong length is an error.
    #[test]
    fn residual_epilogue_is_the_separate_sum_bit_for_bit() {
        let case = EpilogueCase::new(13);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
        let (n, _, c_out, hw, _) = EPILOGUE_DIMS;
        let p = Conv2dParams::new(1, 1);
        let mc = case.pc.magnitudes();
        let x = case.x();
        let mut res: Vec<f32> = (0..n * c_out * hw * hw)
            .map(|_| rng.random_range(-3.0f32..3.0))
            .collect();
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, 7.5];
        for (i, v) in specials.into_iter().enumerate() {
            res[i * 37] = v;
        }
        let (inv, z) = (1.0 / 0.05, 7.0 + 0.5);
        for isa in Int8Isa::available() {
            for (with_norms, asym) in [(false, false), (true, false), (false, true), (true, true)] {
                for act in [Activation::None, Activation::Relu, Activation::Relu6] {
                    let w = TernaryConv {
                        magnitudes: asym.then_some(&mc),
                        alpha_neg: asym.then_some(case.alpha_neg.as_slice()),
                        bias: Some(&case.bias),
                        norms: with_norms.then_some(case.norms.as_slice()),
                        ..case.plain()
                    };
                    let y = conv_u8(&x, &w, &p, None, isa, Par::Seq, None).unwrap().0;
                    let w = TernaryConv {
                        residual: Some(&res),
                        act,
                        ..w
                    };
                    for par in [Par::Seq, Par::Rayon] {
                        let (got, codes) =
                            conv_u8(&x, &w, &p, Some((0.05, 7)), isa, par, None).unwrap();
                        let codes = codes.unwrap();
                        for ((e, &g), (&y, &r)) in got.iter().enumerate().zip(y.iter().zip(&res)) {
                            let v = act.apply(y + r);
                            let what = format!("{isa:?} {with_norms} {asym} {act:?} {par:?} {e}");
                            assert_eq!(g.to_bits(), v.to_bits(), "{what}");
                            assert_eq!(codes.as_slice().unwrap()[e], quantize_one(v, inv, z));
                        }
                    }
                }
            }
        }
        let short = TernaryConv {
            residual: Some(&res[1..]),
            ..case.plain()
        };
        let e = ternary_conv2d_u8(&x, &short, &p, Int8Isa::detect(), Par::Seq).unwrap_err();
        assert!(e.to_string().contains("residual"), "{e}");
    }

    /// Against the f32 convolution of the dequantised operands, with bias and fused ReLU.
    #[test]
    fn matches_the_f32_conv_of_its_operands() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (n, c, c_out, hw, kk) = (2, 8, 10, 9, 3);
        let p = Conv2dParams::new(1, 1);
        let x: Vec<f32> = (0..n * c * hw * hw)
            .map(|_| rng.random_range(-1.0f32..3.0))
            .collect();
        let (scale, zero) = (4.0 / 255.0, 64u8);
        let mut xq = vec![0u8; x.len()];
        quantize_u8(&x, scale, zero, &mut xq, Par::Seq);
        let k = c * kk * kk;
        let codes: Vec<i8> = (0..c_out * k).map(|_| rng.random_range(-1i8..=1)).collect();
        let alpha: Vec<f32> = (0..c_out).map(|j| 0.05 + 0.01 * j as f32).collect();
        let bias: Vec<f32> = (0..c_out).map(|j| 0.1 * j as f32 - 0.3).collect();
        let q4 = Array4::from_shape_vec((n, c, hw, hw), xq).unwrap();
        let pc = PackedCodes::for_conv(&codes, [c_out, c, kk, kk], 1).unwrap();
        let w = TernaryConv {
            codes: &pc,
            magnitudes: None,
            kernel: (kk, kk),
            alpha: &alpha,
            alpha_neg: None,
            bias: Some(&bias),
            norms: None,
            residual: None,
            act: Activation::Relu,
        };
        let xin = QuantInput {
            q: q4.view(),
            scale,
            zero,
        };
        let y = ternary_conv2d_u8(&xin, &w, &p, Int8Isa::detect(), Par::Rayon).unwrap();
        let xd = q4.mapv(|q| (q as f32 - zero as f32) * scale);
        let wd = Array4::from_shape_fn((c_out, c, kk, kk), |(j, ci, a, b)| {
            alpha[j] * codes[((j * c + ci) * kk + a) * kk + b] as f32
        });
        let b1 = ndarray::Array1::from(bias.clone());
        let want = crate::conv2d(xd.view(), wd.view(), Some(b1.view()), &p, Par::Seq).unwrap();
        for (a, b) in y.iter().zip(want.iter()) {
            assert!(
                (a - b.max(0.0)).abs() <= 1e-5 * (1.0 + b.abs()),
                "{a} vs {b}"
            );
        }
        // per-position divisors before the bias, and ReLU6
        let plain = crate::conv2d(xd.view(), wd.view(), None, &p, Par::Seq).unwrap();
        let norms: Vec<f32> = (0..n * hw * hw)
            .map(|_| rng.random_range(0.5f32..2.0))
            .collect();
        let w6 = TernaryConv {
            norms: Some(&norms),
            residual: None,
            act: Activation::Relu6,
            ..w
        };
        let y6 = ternary_conv2d_u8(&xin, &w6, &p, Int8Isa::detect(), Par::Seq).unwrap();
        for ((i, j, oy, ox), &a) in y6.indexed_iter() {
            let v = plain[[i, j, oy, ox]] / norms[(i * hw + oy) * hw + ox] + b1[j];
            let want = v.clamp(0.0, 6.0);
            assert!((a - want).abs() <= 1e-5 * (1.0 + v.abs()), "{a} vs {want}");
        }
        let bad = TernaryConv {
            norms: Some(&norms[1..]),
            residual: None,
            ..w
        };
        assert!(ternary_conv2d_u8(&xin, &bad, &p, Int8Isa::Scalar, Par::Seq).is_err());
    }

    #[test]
    fn bad_operands_are_errors() {
        assert!(PackedCodes::new(&[0, 1, 2, 0], 2, 1, 2).is_err()); // code 2
        assert!(PackedCodes::new(&[0; 6], 3, 2, 2).is_err()); // groups ∤ c_out
        assert!(PackedCodes::new(&[0; 5], 2, 1, 3).is_err()); // length
        let pc = PackedCodes::new(&[0; 2 * 27], 2, 1, 27).unwrap();
        let q = Array4::<u8>::zeros((1, 2, 4, 4)); // 2 channels, codes want 3
        let w = TernaryConv {
            codes: &pc,
            magnitudes: None,
            kernel: (3, 3),
            alpha: &[1.0, 1.0],
            alpha_neg: None,
            bias: None,
            norms: None,
            residual: None,
            act: Activation::None,
        };
        let x = QuantInput {
            q: q.view(),
            scale: 1.0,
            zero: 0,
        };
        let e = ternary_conv2d_u8(&x, &w, &Conv2dParams::new(1, 1), Int8Isa::Scalar, Par::Seq);
        assert!(matches!(e, Err(TensorError::ShapeMismatch { .. })));
    }
}
