//! 2-D convolution (NCHW) with grouped and depthwise variants, and its backward w.r.t. input,
//! weight and bias.
//!
//! Paths, chosen per call from the shapes and the CPU (never from the thread count):
//! - `c_in / groups == 1` (depthwise, possibly with a channel multiplier): a direct convolution
//!   per channel, no im2col and no GEMM of size 1.
//! - 1×1 kernel, stride 1, no padding: `x` itself is the column matrix (no im2col).
//! - `f32` on x86-64 with AVX-512 or AVX2+FMA: the direct SIMD kernels of `conv_direct.rs` for
//!   the forward and weight gradient (any stride) and the input gradient (stride 1 with at least
//!   `COB / 2` input channels per group: a convolution with the flipped kernel; otherwise, with
//!   AVX-512, the product `Wᵀ·dy` with col2im fused into it).
//! - otherwise im2col into a per-task scratch buffer, then one GEMM per (sample, group); the
//!   input gradient by GEMM `Wᵀ·dy` and col2im.
//!
//! The direct forward kernel blocks `COB` output channels (16 with AVX-512, 8 with AVX2); convs
//! with at most `COB / 4` output channels per group (HLA's patch norms: one) take a one-channel
//! variant with the same per-output summation order, hence the same bits. [`conv2d_act`] adds
//! the bias and applies ReLU / ReLU6 in the same per-sample epilogue (inference with BatchNorm
//! folded in).
//!
//! Parallelism (`Par::Rayon`) is over the batch (and over channels for the depthwise weight
//! gradient); a forward with fewer than four samples also splits each sample's output channels
//! into blocks when the conv is large enough (`Geom::forward_split`, from the shapes only), so
//! batch-1 inference keeps every core busy. Forward and input gradient are per output element
//! sums in a fixed order, hence independent of either split (tested against the unsplit batch). The
//! weight gradient sums per-sample terms in chunks of [`DW_CHUNK`] samples (a constant, not the
//! thread count), each chunk in sample order, then the chunk partials in chunk order, so results
//! are bit-identical for `Par::Seq` and any number of threads on one machine. (Across machines
//! `matrixmultiply` may pick a different kernel, so bit identity is not promised there.)

use crate::activation::Activation;
use crate::conv_direct::{
    backward_input_scatter, backward_weight_samples, conv_sample, detect, flip_transpose,
    pack_weights, transpose_weights, Direct, Isa,
};
use crate::gemm::{gemm_slices, Mat};
use crate::group::{channel_lanes, Group};
use crate::{for_each_chunk, Float, Par, Result, TensorError};
use ndarray::{Array1, Array4, ArrayView1, ArrayView4};

/// Number of samples whose weight-gradient terms are summed in one task (a constant so the
/// summation order does not depend on the thread count).
pub const DW_CHUNK: usize = 8;

/// Multiply-adds below which a task is not worth its scheduling and its copy of the padded
/// input ([`Geom::forward_split`]; CIFAR ResNet-20's convs, 2.4 M per sample, stay whole).
const SPLIT_MIN_WORK: usize = 1 << 21;

/// Channel alignment of a split direct forward ([`Geom::forward_split`]): a multiple of every
/// ISA's channel block (16 with AVX-512, 8 with AVX2), so no kernel block straddles two tasks.
const FORWARD_SPLIT_ALIGN: usize = 16;

/// Hyper-parameters of a 2-D convolution: `(h, w)` pairs for stride, padding (each side) and
/// dilation, and the number of groups (`groups == c_in` is depthwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Stride `(s_h, s_w)`, each ≥ 1.
    pub stride: (usize, usize),
    /// Zero padding `(p_h, p_w)` on each side.
    pub padding: (usize, usize),
    /// Dilation `(d_h, d_w)`, each ≥ 1.
    pub dilation: (usize, usize),
    /// Number of groups, dividing both `c_in` and `c_out`.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self::new(1, 0)
    }
}

impl Conv2dParams {
    /// Square stride and padding, dilation 1, groups 1.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dParams {
            stride: (stride, stride),
            padding: (padding, padding),
            dilation: (1, 1),
            groups: 1,
        }
    }
    /// Same parameters with `g` groups.
    pub fn with_groups(self, g: usize) -> Self {
        Conv2dParams { groups: g, ..self }
    }
    /// Same parameters with square dilation `d`.
    pub fn with_dilation(self, d: usize) -> Self {
        Conv2dParams {
            dilation: (d, d),
            ..self
        }
    }
    /// Output spatial size `(h_out, w_out)` for input `(h, w)` and kernel `(k_h, k_w)`:
    /// `h_out = (h + 2·p_h − d_h·(k_h − 1) − 1) / s_h + 1`, same for `w_out`.
    /// # Errors
    /// `InvalidParam` for a zero stride, dilation or kernel; `KernelTooLarge` when the dilated
    /// kernel does not fit in the padded input.
    pub fn output_hw(&self, h: usize, w: usize, kh: usize, kw: usize) -> Result<(usize, usize)> {
        let op = "conv2d";
        if self.stride.0 == 0 || self.stride.1 == 0 {
            return Err(TensorError::InvalidParam {
                op,
                msg: format!("stride {:?}", self.stride),
            });
        }
        if self.dilation.0 == 0 || self.dilation.1 == 0 {
            return Err(TensorError::InvalidParam {
                op,
                msg: format!("dilation {:?}", self.dilation),
            });
        }
        if kh == 0 || kw == 0 {
            return Err(TensorError::InvalidParam {
                op,
                msg: format!("kernel ({kh}, {kw})"),
            });
        }
        let eh = self.dilation.0 * (kh - 1) + 1;
        let ew = self.dilation.1 * (kw - 1) + 1;
        let ph = h + 2 * self.padding.0;
        let pw = w + 2 * self.padding.1;
        if eh > ph || ew > pw {
            return Err(TensorError::KernelTooLarge {
                op,
                input: (h, w),
                kernel: (kh, kw),
                padding: self.padding,
                dilation: self.dilation,
            });
        }
        Ok(((ph - eh) / self.stride.0 + 1, (pw - ew) / self.stride.1 + 1))
    }
}

/// Validated geometry of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    dh: usize,
    dw: usize,
    groups: usize,
    cin_g: usize,
    cout_g: usize,
}

impl Geom {
    /// Checks `x: [n, c_in, h, w]` against `w: [c_out, c_in / groups, k_h, k_w]`.
    fn new(op: &'static str, xs: [usize; 4], ws: [usize; 4], p: &Conv2dParams) -> Result<Geom> {
        if xs.contains(&0) {
            return Err(TensorError::EmptyDim {
                op,
                shape: xs.to_vec(),
            });
        }
        if ws.contains(&0) {
            return Err(TensorError::EmptyDim {
                op,
                shape: ws.to_vec(),
            });
        }
        let [n, c_in, h, w] = xs;
        let [c_out, cin_g, kh, kw] = ws;
        let g = p.groups;
        if g == 0 || c_in % g != 0 || c_out % g != 0 {
            return Err(TensorError::BadGroups {
                op,
                c_in,
                c_out,
                groups: g,
            });
        }
        if cin_g * g != c_in {
            return Err(TensorError::ShapeMismatch {
                op,
                lhs: xs.to_vec(),
                rhs: ws.to_vec(),
            });
        }
        let (ho, wo) = p.output_hw(h, w, kh, kw).map_err(|e| rename(e, op))?;
        Ok(Geom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            ho,
            wo,
            sh: p.stride.0,
            sw: p.stride.1,
            ph: p.padding.0,
            pw: p.padding.1,
            dh: p.dilation.0,
            dw: p.dilation.1,
            groups: g,
            cin_g,
            cout_g: c_out / g,
        })
    }
    /// Rows of the column matrix per group: `c_in_g·k_h·k_w`.
    fn kdim(&self) -> usize {
        self.cin_g * self.kh * self.kw
    }
    /// Output pixels per plane: `h_out·w_out`.
    fn npix(&self) -> usize {
        self.ho * self.wo
    }
    fn in_sample(&self) -> usize {
        self.c_in * self.h * self.w
    }
    fn out_sample(&self) -> usize {
        self.c_out * self.npix()
    }
    /// Output-channel blocks per sample in the forward: a batch smaller than four splits each
    /// sample's output channels into up to 4 / n equal blocks (one task each) of at least
    /// `SPLIT_MIN_WORK` multiply-adds, so that batch 1 keeps every core busy. Chosen from the shapes only, never the thread count; every output
    /// is computed by the same kernel in the same summation order either way (the direct
    /// kernels' channel blocks stay whole, `FORWARD_SPLIT_ALIGN`), so the bits do not change.
    /// Grouped convs other than depthwise are not split.
    // `%` rather than `is_multiple_of`: the workspace's rust-version is 1.80
    #[allow(clippy::manual_is_multiple_of)]
    fn forward_split(&self, direct: bool) -> usize {
        let work = self.c_out * self.npix() * self.kdim(); // multiply-adds per sample
        if self.n >= 4 || (self.groups > 1 && !self.depthwise()) || work < 2 * SPLIT_MIN_WORK {
            return 1;
        }
        let want = 4usize.div_ceil(self.n).min(work / SPLIT_MIN_WORK);
        (1..=want)
            .rev()
            .find(|&k| {
                let cb = self.c_out / k;
                self.c_out % k == 0 && (!direct || cb % FORWARD_SPLIT_ALIGN == 0)
            })
            .unwrap_or(1)
    }
    /// 1×1, stride 1, no padding: the input plane is the column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
    /// One input channel per group: direct convolution per channel.
    fn depthwise(&self) -> bool {
        self.cin_g == 1
    }
    /// The direct forward / weight-gradient kernels apply (f32, not depthwise, not 1×1
    /// unpadded stride 1, a SIMD instruction set present).
    fn direct_forward<F: 'static>(&self) -> Option<(Direct, Isa)> {
        if !Direct::supported::<F>() || self.depthwise() || self.pointwise() || direct_disabled() {
            return None;
        }
        let isa = detect_isa()?;
        let d = Direct {
            cin: self.cin_g,
            h: self.h,
            w: self.w,
            ph: self.ph,
            pw: self.pw,
            kh: self.kh,
            kw: self.kw,
            sh: self.sh,
            sw: self.sw,
            dh: self.dh,
            dw: self.dw,
            cout: self.cout_g,
            ho: self.ho,
            wo: self.wo,
        };
        Some((d, isa))
    }
    /// The input gradient as a direct stride-1 convolution of `dy` (padding `d·(k − 1) − p`,
    /// which must be ≥ 0) with the flipped, transposed kernel.
    fn direct_backward_input<F: 'static>(&self) -> Option<(Direct, Isa)> {
        let (eh, ew) = (self.dh * (self.kh - 1), self.dw * (self.kw - 1));
        if self.ph > eh || self.pw > ew {
            return None;
        }
        if self.sh != 1 || self.sw != 1 {
            return None;
        }
        let (_, isa) = self.direct_forward::<F>()?;
        if self.cin_g < Direct::blocks(isa, usize::MAX).0 / 2 {
            return None; // a mostly empty channel block: im2col + GEMM is cheaper
        }
        let d = Direct {
            cin: self.cout_g,
            h: self.ho,
            w: self.wo,
            ph: eh - self.ph,
            pw: ew - self.pw,
            kh: self.kh,
            kw: self.kw,
            sh: 1,
            sw: 1,
            dh: self.dh,
            dw: self.dw,
            cout: self.cin_g,
            ho: self.h,
            wo: self.w,
        };
        Some((d, isa))
    }
    /// `(h_off, valid ow range)` helpers: for kernel column `kj`, the output columns `ow` whose
    /// input column `ow·s_w + kj·d_w − p_w` lies inside `[0, w)`, and that offset.
    fn col_range(&self, kj: usize) -> (isize, usize, usize) {
        valid_range(kj * self.dw, self.pw, self.sw, self.w, self.wo)
    }
    /// Input row for output row `oh` and kernel row `ki`, if inside the image.
    fn in_row(&self, oh: usize, ki: usize) -> Option<usize> {
        let r = (oh * self.sh + ki * self.dh) as isize - self.ph as isize;
        (r >= 0 && (r as usize) < self.h).then_some(r as usize)
    }
}

/// Whether the direct path is switched off (only ever by the tests, to compare both paths).
fn direct_disabled() -> bool {
    #[cfg(test)]
    {
        NO_DIRECT.with(|c| c.get())
    }
    #[cfg(not(test))]
    {
        false
    }
}

#[cfg(test)]
thread_local! {
    /// Per-thread switch used by the tests to force the im2col path.
    pub(crate) static NO_DIRECT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Per-thread switch used by the tests to run the AVX2 kernels on an AVX-512 machine.
    pub(crate) static FORCE_AVX2: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The instruction set of the direct kernels (the tests may downgrade AVX-512 to AVX2).
fn detect_isa() -> Option<Isa> {
    let isa = detect()?;
    #[cfg(test)]
    {
        if FORCE_AVX2.with(|c| c.get()) {
            return crate::conv_direct::detect_avx2();
        }
    }
    Some(isa)
}

fn rename(e: TensorError, op: &'static str) -> TensorError {
    match e {
        TensorError::KernelTooLarge {
            input,
            kernel,
            padding,
            dilation,
            ..
        } => TensorError::KernelTooLarge {
            op,
            input,
            kernel,
            padding,
            dilation,
        },
        TensorError::InvalidParam { msg, .. } => TensorError::InvalidParam { op, msg },
        other => other,
    }
}

/// For input index `o·s + koff − pad` with `o` in `0..out`, returns `(koff − pad, lo, hi)` where
/// `lo..hi` are the `o` that land inside `[0, len)`.
fn valid_range(koff: usize, pad: usize, s: usize, len: usize, out: usize) -> (isize, usize, usize) {
    let off = koff as isize - pad as isize;
    let lo = if off >= 0 {
        0
    } else {
        ((-off) as usize).div_ceil(s)
    };
    let last = len as isize - 1 - off; // need o·s ≤ last
    let hi = if last < 0 {
        0
    } else {
        (last as usize / s + 1).min(out)
    };
    (off, lo.min(hi), hi)
}

fn dims4<F>(a: &ArrayView4<F>) -> [usize; 4] {
    let d = a.dim();
    [d.0, d.1, d.2, d.3]
}

/// im2col of one group of one sample: `x_g: [c_in_g, h, w]` → `cols: [c_in_g·k_h·k_w, h_out·w_out]`
/// (row `(ci·k_h + ki)·k_w + kj`), zeros where the window reaches into the padding.
fn im2col<F: Float>(g: &Geom, x_g: &[F], cols: &mut [F]) {
    let (hw, np) = (g.h * g.w, g.npix());
    for ci in 0..g.cin_g {
        let plane = &x_g[ci * hw..(ci + 1) * hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let r = (ci * g.kh + ki) * g.kw + kj;
                let row = &mut cols[r * np..(r + 1) * np];
                let (off, lo, hi) = g.col_range(kj);
                for oh in 0..g.ho {
                    let out = &mut row[oh * g.wo..(oh + 1) * g.wo];
                    let Some(ih) = g.in_row(oh, ki) else {
                        out.fill(F::zero());
                        continue;
                    };
                    let src = &plane[ih * g.w..(ih + 1) * g.w];
                    out[..lo].fill(F::zero());
                    out[hi..].fill(F::zero());
                    if g.sw == 1 {
                        let s0 = (lo as isize + off) as usize;
                        out[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                    } else {
                        for (ow, o) in out.iter_mut().enumerate().take(hi).skip(lo) {
                            *o = src[((ow * g.sw) as isize + off) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// col2im of one group of one sample: `dx_g[c_in_g, h, w] += cols[c_in_g·k_h·k_w, h_out·w_out]`
/// scattered back to the input positions (the adjoint of [`im2col`]).
fn col2im<F: Float>(g: &Geom, cols: &[F], dx_g: &mut [F]) {
    let (hw, np) = (g.h * g.w, g.npix());
    for ci in 0..g.cin_g {
        let plane = &mut dx_g[ci * hw..(ci + 1) * hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let r = (ci * g.kh + ki) * g.kw + kj;
                let row = &cols[r * np..(r + 1) * np];
                let (off, lo, hi) = g.col_range(kj);
                for oh in 0..g.ho {
                    let Some(ih) = g.in_row(oh, ki) else { continue };
                    let src = &row[oh * g.wo..(oh + 1) * g.wo];
                    let dst = &mut plane[ih * g.w..(ih + 1) * g.w];
                    if g.sw == 1 {
                        let d0 = (lo as isize + off) as usize;
                        for (d, &s) in dst[d0..d0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d = *d + s;
                        }
                    } else {
                        for (ow, &s) in src.iter().enumerate().take(hi).skip(lo) {
                            let d = &mut dst[((ow * g.sw) as isize + off) as usize];
                            *d = *d + s;
                        }
                    }
                }
            }
        }
    }
}

/// Direct depthwise forward of one output plane: `y[h_out, w_out] += Σ_{ki,kj} w[ki,kj]·x[..]`
/// over the input plane `x: [h, w]` (summed kernel tap by kernel tap, in row-major tap order).
fn dw_plane_forward<F: Float>(g: &Geom, x: &[F], wk: &[F], y: &mut [F]) {
    for ki in 0..g.kh {
        for kj in 0..g.kw {
            let wv = wk[ki * g.kw + kj];
            let (off, lo, hi) = g.col_range(kj);
            for oh in 0..g.ho {
                let Some(ih) = g.in_row(oh, ki) else { continue };
                let src = &x[ih * g.w..(ih + 1) * g.w];
                let out = &mut y[oh * g.wo..(oh + 1) * g.wo];
                if g.sw == 1 {
                    let s0 = (lo as isize + off) as usize;
                    for (o, &s) in out[lo..hi].iter_mut().zip(&src[s0..s0 + (hi - lo)]) {
                        *o = *o + wv * s;
                    }
                } else {
                    for (ow, o) in out.iter_mut().enumerate().take(hi).skip(lo) {
                        *o = *o + wv * src[((ow * g.sw) as isize + off) as usize];
                    }
                }
            }
        }
    }
}

/// Direct depthwise input gradient of one plane: `dx[h, w] += Σ w[ki,kj]·dy[..]` (adjoint of
/// [`dw_plane_forward`]).
fn dw_plane_backward_input<F: Float>(g: &Geom, dy: &[F], wk: &[F], dx: &mut [F]) {
    for ki in 0..g.kh {
        for kj in 0..g.kw {
            let wv = wk[ki * g.kw + kj];
            let (off, lo, hi) = g.col_range(kj);
            for oh in 0..g.ho {
                let Some(ih) = g.in_row(oh, ki) else { continue };
                let src = &dy[oh * g.wo..(oh + 1) * g.wo];
                let dst = &mut dx[ih * g.w..(ih + 1) * g.w];
                if g.sw == 1 {
                    let d0 = (lo as isize + off) as usize;
                    for (d, &s) in dst[d0..d0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                        *d = *d + wv * s;
                    }
                } else {
                    for (ow, &s) in src.iter().enumerate().take(hi).skip(lo) {
                        let d = &mut dst[((ow * g.sw) as isize + off) as usize];
                        *d = *d + wv * s;
                    }
                }
            }
        }
    }
}

/// Fixed-order dot product with 8 independent lanes (vectorisable), lanes combined in a fixed
/// tree: the result depends only on the inputs.
fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    let mut acc = [F::zero(); 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[l] = acc[l] + x * y;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Direct depthwise weight gradient of one (sample, output plane): `dwk[ki, kj] += Σ dy·x[..]`.
fn dw_plane_terms<F: Float>(g: &Geom, x: &[F], dy: &[F], terms: &mut [F]) {
    for ki in 0..g.kh {
        for kj in 0..g.kw {
            let (off, lo, hi) = g.col_range(kj);
            let mut s = F::zero();
            for oh in 0..g.ho {
                let Some(ih) = g.in_row(oh, ki) else { continue };
                let xr = &x[ih * g.w..(ih + 1) * g.w];
                let dr = &dy[oh * g.wo..(oh + 1) * g.wo];
                if g.sw == 1 {
                    let s0 = (lo as isize + off) as usize;
                    s = s + dot(&dr[lo..hi], &xr[s0..s0 + (hi - lo)]);
                } else {
                    let mut t = F::zero();
                    for (ow, &d) in dr.iter().enumerate().take(hi).skip(lo) {
                        t = t + d * xr[((ow * g.sw) as isize + off) as usize];
                    }
                    s = s + t;
                }
            }
            terms[ki * g.kw + kj] = s;
        }
    }
}

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
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let xs = x.as_slice().expect("standard layout is contiguous");
    let ws = w.as_slice().expect("standard layout is contiguous");
    let bias: Option<Vec<F>> = bias.map(|b| b.to_vec());
    let mut y = Array4::<F>::zeros((g.n, g.c_out, g.ho, g.wo));
    let ys = y.as_slice_mut().expect("fresh array is contiguous");
    let (np, kd) = (g.npix(), g.kdim());
    // Direct stride-1 path: one packed weight set per group.
    let direct = g.direct_forward::<F>();
    let tables = direct.map(|(d, _)| d.tables());
    let packed: Vec<Vec<F>> = match direct {
        Some((d, isa)) => (0..g.groups)
            .map(|gi| {
                let cob = Direct::blocks(isa, g.cout_g).0;
                pack_weights(
                    &d,
                    &ws[gi * g.cout_g * kd..(gi + 1) * g.cout_g * kd],
                    cob,
                    par,
                )
            })
            .collect(),
        None => Vec::new(),
    };
    let scratch = match direct {
        Some((d, _)) => d.scratch_len(),
        None if g.depthwise() || g.pointwise() => 0,
        None => kd * np,
    };
    // one task per (sample, block of `cb` output channels); blocks > 1 only for groups == 1
    // or depthwise, so a block lies within one group unless it is the whole sample
    let split = g.forward_split(direct.is_some());
    let cb = g.c_out / split;
    for_each_chunk(
        par,
        ys,
        cb * np,
        || vec![F::zero(); scratch],
        |cols, t, y_t| {
            let (s, co0) = (t / split, (t % split) * cb);
            let x_s = &xs[s * g.in_sample()..(s + 1) * g.in_sample()];
            if let Some((d, isa)) = direct {
                if split > 1 {
                    let wpk = &packed[0];
                    let tables = tables.as_ref().expect("tables built with the direct plan");
                    conv_sample(&d, isa, x_s, wpk, y_t, cols, tables, co0..co0 + cb);
                } else {
                    for (gi, wpk) in packed.iter().enumerate() {
                        let x_g = &x_s[gi * g.cin_g * g.h * g.w..(gi + 1) * g.cin_g * g.h * g.w];
                        let y_g = &mut y_t[gi * g.cout_g * np..(gi + 1) * g.cout_g * np];
                        let tables = tables.as_ref().expect("tables built with the direct plan");
                        conv_sample(&d, isa, x_g, wpk, y_g, cols, tables, 0..g.cout_g);
                    }
                }
            } else if g.depthwise() {
                for co in co0..co0 + cb {
                    let ci = co / g.cout_g;
                    let x_c = &x_s[ci * g.h * g.w..(ci + 1) * g.h * g.w];
                    let wk = &ws[co * g.kh * g.kw..(co + 1) * g.kh * g.kw];
                    let y_c = &mut y_t[(co - co0) * np..(co - co0 + 1) * np];
                    dw_plane_forward(&g, x_c, wk, y_c);
                }
            } else {
                // with split > 1, groups == 1: the block's rows of W
                let (ng, rows) = if split > 1 {
                    (1, cb)
                } else {
                    (g.groups, g.cout_g)
                };
                for gi in 0..ng {
                    let x_g = &x_s[gi * g.cin_g * g.h * g.w..(gi + 1) * g.cin_g * g.h * g.w];
                    let w0 = (gi * g.cout_g + co0) * kd;
                    let w_g = &ws[w0..w0 + rows * kd];
                    let y_g = &mut y_t[gi * rows * np..(gi + 1) * rows * np];
                    let b_src: &[F] = if g.pointwise() {
                        x_g
                    } else {
                        im2col(&g, x_g, cols);
                        cols
                    };
                    // Y_g[rows, h_out·w_out] = W_g[rows, c_in_g·k_h·k_w] · cols[c_in_g·k_h·k_w, h_out·w_out]
                    gemm_slices(
                        F::one(),
                        w_g,
                        Mat::rm(rows, kd), // A: [m = rows, k = c_in_g·k_h·k_w]
                        b_src,
                        Mat::rm(kd, np), // B: [k, n = h_out·w_out]
                        F::zero(),
                        y_g,
                        Mat::rm(rows, np), // C: [m, n]; beta = 0 so C is not read
                    );
                }
            }
            match (&bias, act) {
                (None, Activation::None) => {}
                (None, act) => y_t.iter_mut().for_each(|v| *v = act.apply(*v)),
                (Some(b), act) => {
                    for (c, &bv) in b[co0..co0 + cb].iter().enumerate() {
                        for v in &mut y_t[c * np..(c + 1) * np] {
                            *v = act.apply(*v + bv);
                        }
                    }
                }
            }
        },
    );
    Ok(y)
}

/// Input gradient of [`conv2d`]: `dx = convᵀ(dy)`, by GEMM `Wᵀ·dy` and col2im (or directly
/// per channel for depthwise, without col2im for 1×1 stride-1 unpadded kernels, and for f32
/// stride-1 convolutions as a direct convolution of `dy` with the flipped, transposed kernel).
///
/// # Shapes
/// - `dy`: `[n, c_out, h_out, w_out]`, `w`: `[c_out, c_in / groups, k_h, k_w]`, `x_hw = (h, w)`
///   → `dx`: `[n, c_in, h, w]` with `c_in = w.dim(1)·groups`
/// # Errors
/// As [`conv2d`] (op `conv2d_backward_input`), plus `ShapeMismatch` if `dy` is not
/// `[n, c_out, h_out, w_out]` for these parameters.
pub fn conv2d_backward_input<F: Float>(
    dy: ArrayView4<F>,
    w: ArrayView4<F>,
    x_hw: (usize, usize),
    p: &Conv2dParams,
    par: Par,
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
    let dy = dy.as_standard_layout();
    let w = w.as_standard_layout();
    let dys = dy.as_slice().expect("standard layout is contiguous");
    let ws = w.as_slice().expect("standard layout is contiguous");
    let mut dx = Array4::<F>::zeros((g.n, g.c_in, g.h, g.w));
    let dxs = dx.as_slice_mut().expect("fresh array is contiguous");
    let (np, kd, hw) = (g.npix(), g.kdim(), g.h * g.w);
    // Fused product + col2im on the phase-split grid (AVX-512): strided convolutions and those
    // with too few input channels per group for the flipped-kernel path below.
    if let Some((d, isa)) = g.direct_forward::<F>() {
        if Direct::scatter_supported(isa) && g.direct_backward_input::<F>().is_none() {
            let wts: Vec<Vec<F>> = (0..g.groups)
                .map(|gi| transpose_weights(&d, &ws[gi * g.cout_g * kd..(gi + 1) * g.cout_g * kd]))
                .collect();
            let sl = d.scatter_scratch_len();
            for_each_chunk(
                par,
                dxs,
                g.in_sample(),
                || vec![F::zero(); sl],
                |sc, s, dx_s| {
                    let dy_s = &dys[s * g.out_sample()..(s + 1) * g.out_sample()];
                    for (gi, wt) in wts.iter().enumerate() {
                        let dy_g = &dy_s[gi * g.cout_g * np..(gi + 1) * g.cout_g * np];
                        let dx_g = &mut dx_s[gi * g.cin_g * hw..(gi + 1) * g.cin_g * hw];
                        backward_input_scatter(&d, isa, wt, dy_g, dx_g, sc);
                    }
                },
            );
            return Ok(dx);
        }
    }
    // Direct path: dx = stride-1 convolution of dy with the flipped, transposed kernel.
    let direct = g.direct_backward_input::<F>();
    let tables = direct.map(|(d, _)| d.tables());
    let packed: Vec<Vec<F>> = match direct {
        Some((d, isa)) => (0..g.groups)
            .map(|gi| {
                let w_g = &ws[gi * g.cout_g * kd..(gi + 1) * g.cout_g * kd];
                let wb = flip_transpose(w_g, g.cout_g, g.cin_g, g.kh, g.kw);
                pack_weights(&d, &wb, Direct::blocks(isa, g.cin_g).0, par)
            })
            .collect(),
        None => Vec::new(),
    };
    let scratch = match direct {
        Some((d, _)) => d.scratch_len(),
        None if g.depthwise() || g.pointwise() => 0,
        None => kd * np,
    };
    for_each_chunk(
        par,
        dxs,
        g.in_sample(),
        || vec![F::zero(); scratch],
        |dcols, s, dx_s| {
            let dy_s = &dys[s * g.out_sample()..(s + 1) * g.out_sample()];
            if let Some((d, isa)) = direct {
                for (gi, wpk) in packed.iter().enumerate() {
                    let dy_g = &dy_s[gi * g.cout_g * np..(gi + 1) * g.cout_g * np];
                    let dx_g = &mut dx_s[gi * g.cin_g * hw..(gi + 1) * g.cin_g * hw];
                    conv_sample(
                        &d,
                        isa,
                        dy_g,
                        wpk,
                        dx_g,
                        dcols,
                        tables.as_ref().expect("tables built with the direct plan"),
                        0..g.cin_g,
                    );
                }
                return;
            }
            if g.depthwise() {
                for co in 0..g.c_out {
                    let ci = co / g.cout_g;
                    let wk = &ws[co * g.kh * g.kw..(co + 1) * g.kh * g.kw];
                    let dy_c = &dy_s[co * np..(co + 1) * np];
                    dw_plane_backward_input(&g, dy_c, wk, &mut dx_s[ci * hw..(ci + 1) * hw]);
                }
                return;
            }
            for gi in 0..g.groups {
                let w_g = &ws[gi * g.cout_g * kd..(gi + 1) * g.cout_g * kd];
                let dy_g = &dy_s[gi * g.cout_g * np..(gi + 1) * g.cout_g * np];
                let dx_g = &mut dx_s[gi * g.cin_g * hw..(gi + 1) * g.cin_g * hw];
                let out: &mut [F] = if g.pointwise() { dx_g } else { dcols };
                // dcols[c_in_g·k_h·k_w, h_out·w_out] = W_gᵀ[c_in_g·k_h·k_w, c_out_g] · dY_g[c_out_g, h_out·w_out]
                gemm_slices(
                    F::one(),
                    w_g,
                    Mat::rm(g.cout_g, kd).t(), // A: [m = c_in_g·k_h·k_w, k = c_out_g] (transposed view)
                    dy_g,
                    Mat::rm(g.cout_g, np), // B: [k, n = h_out·w_out]
                    F::zero(),
                    out,
                    Mat::rm(kd, np), // C: [m, n]; beta = 0 so C is not read
                );
                if !g.pointwise() {
                    col2im(&g, dcols, dx_g);
                }
            }
        },
    );
    Ok(dx)
}

/// Weight gradient of [`conv2d`]: `dw = Σ_samples dy_s · im2col(x_s)ᵀ`, the per-sample terms
/// summed in chunks of [`DW_CHUNK`] samples, each chunk in order, then the chunks in order
/// (bit-identical for any thread count); f32 uses the direct SIMD kernels, which accumulate a
/// chunk's samples in order. Depthwise: a direct sum per channel, parallel over channels,
/// samples in order.
///
/// # Shapes
/// - `x`: `[n, c_in, h, w]`, `dy`: `[n, c_out, h_out, w_out]`, `k_hw = (k_h, k_w)`
///   → `dw`: `[c_out, c_in / groups, k_h, k_w]`
/// # Errors
/// As [`conv2d`] (op `conv2d_backward_weight`), plus `ShapeMismatch` if `dy` is not
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
    let mut dw = Array4::<F>::zeros((g.c_out, g.cin_g, g.kh, g.kw));
    let dws = dw.as_slice_mut().expect("fresh array is contiguous");

    if g.depthwise() {
        // Each output channel is independent: parallel over channels, samples summed in order.
        let kk = g.kh * g.kw;
        let Some(group) = group else {
            for_each_chunk(
                par,
                dws,
                kk,
                || vec![F::zero(); kk],
                |t, co, dwk| {
                    let ci = co / g.cout_g;
                    for s in 0..g.n {
                        let x_c = &xs[s * g.in_sample() + ci * hw..][..hw];
                        let dy_c = &dys[s * g.out_sample() + co * np..][..np];
                        dw_plane_terms(&g, x_c, dy_c, t);
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
            || (),
            |_, co, tc| {
                let ci = co / g.cout_g;
                for (s, t) in tc.chunks_exact_mut(kk).enumerate() {
                    let x_c = &xs[s * g.in_sample() + ci * hw..][..hw];
                    let dy_c = &dys[s * g.out_sample() + co * np..][..np];
                    dw_plane_terms(&g, x_c, dy_c, t);
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
            || {
                (
                    vec![F::zero(); DW_CHUNK * xl],
                    vec![F::zero(); DW_CHUNK * dl],
                )
            },
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
            || vec![F::zero(); scratch],
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

/// Bias gradient of [`conv2d`]: `db[c] = Σ_{n, h, w} dy[n, c, h, w]`, the planes of a channel
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
            for p in ds.chunks_exact(hw).skip(ch).step_by(c) {
                acc[0].add(p);
            }
        }
    })?;
    Ok(sums.into_iter().map(|[l]| l.total()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{
        bits, check_fd, inner, max_rel_err, naive_conv2d, naive_conv2d_backward, rand_array, to_f64,
    };
    use ndarray::Array1;

    /// One convolution case: shapes and parameters.
    #[derive(Clone, Copy, Debug)]
    struct Case {
        n: usize,
        c_in: usize,
        c_out: usize,
        hw: (usize, usize),
        k: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
        dil: (usize, usize),
        groups: usize,
    }

    impl Case {
        fn params(&self) -> Conv2dParams {
            Conv2dParams {
                stride: self.stride,
                padding: self.pad,
                dilation: self.dil,
                groups: self.groups,
            }
        }
        fn x_shape(&self) -> (usize, usize, usize, usize) {
            (self.n, self.c_in, self.hw.0, self.hw.1)
        }
        fn w_shape(&self) -> (usize, usize, usize, usize) {
            (self.c_out, self.c_in / self.groups, self.k.0, self.k.1)
        }
        fn y_shape(&self) -> (usize, usize, usize, usize) {
            let (ho, wo) = self
                .params()
                .output_hw(self.hw.0, self.hw.1, self.k.0, self.k.1)
                .unwrap();
            (self.n, self.c_out, ho, wo)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn case(
        n: usize,
        c_in: usize,
        c_out: usize,
        hw: (usize, usize),
        k: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
        dil: (usize, usize),
        groups: usize,
    ) -> Case {
        Case {
            n,
            c_in,
            c_out,
            hw,
            k,
            stride,
            pad,
            dil,
            groups,
        }
    }

    /// Odd sizes, stride 1/2/3, padding, dilation, groups 1/2/3/C (and a channel multiplier),
    /// batch 1 and 3, non-square kernels, 1×1 kernels, a kernel as large as the padded input.
    fn cases() -> Vec<Case> {
        vec![
            case(1, 3, 5, (7, 9), (3, 3), (1, 1), (1, 1), (1, 1), 1),
            case(3, 4, 6, (8, 7), (3, 2), (2, 2), (1, 0), (1, 1), 2),
            case(3, 6, 6, (9, 11), (3, 3), (2, 1), (1, 1), (1, 1), 6),
            case(1, 6, 12, (7, 7), (3, 3), (1, 1), (2, 2), (2, 2), 6),
            case(3, 4, 8, (5, 7), (1, 1), (1, 1), (0, 0), (1, 1), 1),
            case(3, 4, 6, (5, 7), (1, 1), (1, 1), (0, 0), (1, 1), 2),
            case(3, 4, 6, (7, 7), (1, 1), (2, 2), (0, 0), (1, 1), 1),
            case(1, 2, 3, (6, 5), (1, 3), (2, 1), (0, 1), (2, 2), 1),
            case(3, 5, 4, (10, 9), (5, 3), (3, 3), (2, 1), (1, 1), 1),
            case(1, 1, 4, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1),
            case(3, 6, 6, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1), 3),
            case(1, 2, 2, (3, 4), (5, 6), (1, 1), (1, 1), (1, 1), 1),
            case(3, 5, 5, (6, 7), (2, 3), (2, 2), (1, 1), (2, 1), 5),
        ]
    }

    #[test]
    fn conv2d_forward_matches_naive_f64_and_f32() {
        for (i, c) in cases().into_iter().enumerate() {
            let p = c.params();
            let seed = 100 * i as u64;
            let x = rand_array::<f64, _, _>(c.x_shape(), seed);
            let w = rand_array::<f64, _, _>(c.w_shape(), seed + 1);
            let b: Array1<f64> = rand_array(c.c_out, seed + 2);
            let r = naive_conv2d(&x, &w, Some(&b), &p);
            let y = conv2d(x.view(), w.view(), Some(b.view()), &p, Par::Rayon).unwrap();
            assert_eq!(y.dim(), c.y_shape(), "{c:?}");
            let e = max_rel_err(&y, &r);
            assert!(e < 1e-13, "f64 {c:?}: max err {e}");

            let xf = rand_array::<f32, _, _>(c.x_shape(), seed);
            let wf = rand_array::<f32, _, _>(c.w_shape(), seed + 1);
            let rf = naive_conv2d(&to_f64(&xf), &to_f64(&wf), None, &p);
            let yf = conv2d(xf.view(), wf.view(), None, &p, Par::Rayon).unwrap();
            let e = max_rel_err(&to_f64(&yf), &rf);
            assert!(e < 1e-5, "f32 {c:?}: max err {e}");
        }
    }

    #[test]
    fn conv2d_backward_matches_naive_f64_and_f32() {
        for (i, c) in cases().into_iter().enumerate() {
            let p = c.params();
            let seed = 100 * i as u64 + 7;
            let x = rand_array::<f64, _, _>(c.x_shape(), seed);
            let w = rand_array::<f64, _, _>(c.w_shape(), seed + 1);
            let dy = rand_array::<f64, _, _>(c.y_shape(), seed + 2);
            let (rdx, rdw) = naive_conv2d_backward(&x, &w, &dy, &p);
            let dx = conv2d_backward_input(dy.view(), w.view(), c.hw, &p, Par::Rayon).unwrap();
            let dw = conv2d_backward_weight(x.view(), dy.view(), c.k, &p, Par::Rayon).unwrap();
            assert!(max_rel_err(&dx, &rdx) < 1e-13, "f64 dx {c:?}");
            assert!(max_rel_err(&dw, &rdw) < 1e-13, "f64 dw {c:?}");

            let (xf, wf, dyf) = (
                x.mapv(|v| v as f32),
                w.mapv(|v| v as f32),
                dy.mapv(|v| v as f32),
            );
            let (rdx, rdw) = naive_conv2d_backward(&to_f64(&xf), &to_f64(&wf), &to_f64(&dyf), &p);
            let dx = conv2d_backward_input(dyf.view(), wf.view(), c.hw, &p, Par::Rayon).unwrap();
            let dw = conv2d_backward_weight(xf.view(), dyf.view(), c.k, &p, Par::Rayon).unwrap();
            assert!(max_rel_err(&to_f64(&dx), &rdx) < 1e-5, "f32 dx {c:?}");
            assert!(max_rel_err(&to_f64(&dw), &rdw) < 1e-5, "f32 dw {c:?}");
        }
    }

    /// ⟨conv(x, w), g⟩ = ⟨x, conv_backward_input(g, w)⟩ = ⟨w, conv_backward_weight(x, g)⟩.
    #[test]
    fn conv2d_adjoint_identities() {
        for (i, c) in cases().into_iter().enumerate() {
            let p = c.params();
            let seed = 100 * i as u64 + 11;
            let x = rand_array::<f64, _, _>(c.x_shape(), seed);
            let w = rand_array::<f64, _, _>(c.w_shape(), seed + 1);
            let g = rand_array::<f64, _, _>(c.y_shape(), seed + 2);
            let y = conv2d(x.view(), w.view(), None, &p, Par::Seq).unwrap();
            let dx = conv2d_backward_input(g.view(), w.view(), c.hw, &p, Par::Seq).unwrap();
            let dw = conv2d_backward_weight(x.view(), g.view(), c.k, &p, Par::Seq).unwrap();
            let lhs = inner(&y, &g);
            assert!(
                (lhs - inner(&x, &dx)).abs() <= 1e-12 * (1.0 + lhs.abs()),
                "dx {c:?}"
            );
            assert!(
                (lhs - inner(&w, &dw)).abs() <= 1e-12 * (1.0 + lhs.abs()),
                "dw {c:?}"
            );
        }
    }

    /// L = Σ g ⊙ conv(x, w, b): analytic dL/dx, dL/dw, dL/db vs central differences.
    #[test]
    fn conv2d_gradients_match_finite_differences() {
        for (i, c) in cases().into_iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            let p = c.params();
            let seed = 100 * i as u64 + 13;
            let x = rand_array::<f64, _, _>(c.x_shape(), seed);
            let w = rand_array::<f64, _, _>(c.w_shape(), seed + 1);
            let b: Array1<f64> = rand_array(c.c_out, seed + 2);
            let g = rand_array::<f64, _, _>(c.y_shape(), seed + 3);
            let loss = |x: &Array4<f64>, w: &Array4<f64>, b: &Array1<f64>| {
                inner(
                    &conv2d(x.view(), w.view(), Some(b.view()), &p, Par::Seq).unwrap(),
                    &g,
                )
            };
            let dx = conv2d_backward_input(g.view(), w.view(), c.hw, &p, Par::Seq).unwrap();
            let dw = conv2d_backward_weight(x.view(), g.view(), c.k, &p, Par::Seq).unwrap();
            let db = conv2d_backward_bias(g.view(), Par::Rayon);
            check_fd("conv2d dx", &x, &dx, |xp| loss(xp, &w, &b));
            check_fd("conv2d dw", &w, &dw, |wp| loss(&x, wp, &b));
            check_fd("conv2d db", &b, &db, |bp| loss(&x, &w, bp));
        }
    }

    fn all_outputs(c: &Case, par: Par) -> [Vec<u64>; 3] {
        let p = c.params();
        let x = rand_array::<f32, _, _>(c.x_shape(), 5);
        let w = rand_array::<f32, _, _>(c.w_shape(), 6);
        let dy = rand_array::<f32, _, _>(c.y_shape(), 7);
        let b: Array1<f32> = rand_array(c.c_out, 8);
        [
            bits(&conv2d(x.view(), w.view(), Some(b.view()), &p, par).unwrap()),
            bits(&conv2d_backward_input(dy.view(), w.view(), c.hw, &p, par).unwrap()),
            bits(&conv2d_backward_weight(x.view(), dy.view(), c.k, &p, par).unwrap()),
        ]
    }

    #[test]
    fn conv2d_is_bit_identical_seq_vs_rayon() {
        for c in cases() {
            assert_eq!(
                all_outputs(&c, Par::Seq),
                all_outputs(&c, Par::Rayon),
                "{c:?}"
            );
        }
    }

    /// f32: the direct stride-1 kernels (when this CPU has them) and the im2col + GEMM path both
    /// match the f64 naive reference, on the case matrix plus wider channel counts that fill
    /// whole SIMD channel blocks.
    #[test]
    fn conv2d_f32_direct_and_im2col_paths_match_naive() {
        let mut cs = cases();
        cs.push(case(3, 16, 24, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1));
        cs.push(case(1, 32, 20, (5, 11), (3, 2), (1, 1), (2, 1), (2, 1), 2));
        cs.push(case(3, 16, 12, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1), 1));
        cs.push(case(2, 24, 10, (11, 13), (3, 2), (2, 3), (1, 2), (2, 1), 2));
        cs.push(case(2, 16, 8, (7, 7), (1, 1), (2, 2), (0, 0), (1, 1), 1));
        cs.push(case(1, 8, 8, (6, 6), (3, 3), (3, 3), (2, 2), (1, 1), 1));
        cs.push(case(3, 8, 40, (7, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1));
        cs.push(case(2, 12, 64, (9, 9), (3, 2), (2, 2), (1, 1), (1, 1), 2));
        for (i, c) in cs.into_iter().enumerate() {
            let p = c.params();
            let seed = 1000 + 10 * i as u64;
            let x = rand_array::<f32, _, _>(c.x_shape(), seed);
            let w = rand_array::<f32, _, _>(c.w_shape(), seed + 1);
            let dy = rand_array::<f32, _, _>(c.y_shape(), seed + 2);
            let (xd, wd, dyd) = (to_f64(&x), to_f64(&w), to_f64(&dy));
            let ry = naive_conv2d(&xd, &wd, None, &p);
            let (rdx, rdw) = naive_conv2d_backward(&xd, &wd, &dyd, &p);
            for (no_direct, avx2) in [(false, false), (false, true), (true, false)] {
                NO_DIRECT.with(|f| f.set(no_direct));
                FORCE_AVX2.with(|f| f.set(avx2));
                let y = conv2d(x.view(), w.view(), None, &p, Par::Rayon).unwrap();
                let dx = conv2d_backward_input(dy.view(), w.view(), c.hw, &p, Par::Rayon).unwrap();
                let dw = conv2d_backward_weight(x.view(), dy.view(), c.k, &p, Par::Rayon).unwrap();
                NO_DIRECT.with(|f| f.set(false));
                FORCE_AVX2.with(|f| f.set(false));
                assert!(
                    max_rel_err(&to_f64(&y), &ry) < 1e-5,
                    "y {c:?} no_direct={no_direct} avx2={avx2}"
                );
                assert!(
                    max_rel_err(&to_f64(&dx), &rdx) < 1e-5,
                    "dx {c:?} no_direct={no_direct} avx2={avx2}"
                );
                assert!(
                    max_rel_err(&to_f64(&dw), &rdw) < 1e-5,
                    "dw {c:?} no_direct={no_direct} avx2={avx2}"
                );
            }
        }
    }

    /// Convs with a few output channels (HLA's patch norms: one) take the narrow direct kernel;
    /// each output is the same ordered sum of the same products as in the wide kernel, so the
    /// first channels of a wide conv carry exactly the bits of the narrow conv of those channels,
    /// on both instruction sets, at stride 1 and 2, with groups.
    #[test]
    fn narrow_direct_kernel_gives_the_wide_kernels_bits() {
        // the one-channel convs below really take the narrow kernel on this CPU
        for isa in [detect(), crate::conv_direct::detect_avx2()]
            .into_iter()
            .flatten()
        {
            assert_eq!(Direct::blocks(isa, 1).0, 1, "{isa:?}");
        }
        for (c, narrow) in [
            (
                case(2, 16, 24, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1),
                1,
            ),
            (
                case(2, 32, 32, (8, 8), (3, 3), (2, 2), (1, 1), (1, 1), 1),
                2,
            ),
            (
                case(1, 16, 32, (11, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1),
                4,
            ),
            (
                case(2, 16, 32, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 2),
                1,
            ),
        ] {
            let p = c.params();
            let x = rand_array::<f32, _, _>(c.x_shape(), 41).mapv(|v| v * v);
            let w = rand_array::<f32, _, _>(c.w_shape(), 42);
            // the narrow conv: the first `narrow` output channels of every group
            let per = c.c_out / c.groups;
            let rows: Vec<usize> = (0..c.groups)
                .flat_map(|gi| (0..narrow).map(move |j| gi * per + j))
                .collect();
            let wn = w.select(ndarray::Axis(0), &rows);
            for avx2 in [false, true] {
                FORCE_AVX2.with(|f| f.set(avx2));
                let wide = conv2d(x.view(), w.view(), None, &p, Par::Rayon).unwrap();
                let thin = conv2d(x.view(), wn.view(), None, &p, Par::Rayon).unwrap();
                FORCE_AVX2.with(|f| f.set(false));
                let want = wide.select(ndarray::Axis(1), &rows);
                assert_eq!(
                    bits(&thin),
                    bits(&want),
                    "{c:?} narrow={narrow} avx2={avx2}"
                );
            }
        }
    }

    /// The fused epilogue gives exactly the bits of the conv followed by the activation, with
    /// and without a bias, on every path (direct AVX-512 / AVX2, im2col, depthwise, 1×1).
    #[test]
    fn conv2d_act_is_conv2d_then_activation_bit_for_bit() {
        let mut cs = cases();
        cs.push(case(2, 16, 24, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1));
        cs.push(case(2, 16, 12, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1), 1));
        for (i, c) in cs.into_iter().enumerate() {
            let p = c.params();
            let seed = 3000 + 10 * i as u64;
            // Inputs in (-4, 4) so that ReLU6 clips at both ends.
            let x = rand_array::<f32, _, _>(c.x_shape(), seed).mapv(|v| 4.0 * v);
            let w = rand_array::<f32, _, _>(c.w_shape(), seed + 1);
            let b: Array1<f32> = rand_array(c.c_out, seed + 2);
            for (no_direct, avx2) in [(false, false), (false, true), (true, false)] {
                NO_DIRECT.with(|f| f.set(no_direct));
                FORCE_AVX2.with(|f| f.set(avx2));
                for bias in [None, Some(b.view())] {
                    let y = conv2d(x.view(), w.view(), bias, &p, Par::Rayon).unwrap();
                    for (act, r) in [
                        (Activation::None, y.clone().into_dyn()),
                        (Activation::Relu, crate::relu(y.view().into_dyn(), Par::Seq)),
                        (
                            Activation::Relu6,
                            crate::relu6(y.view().into_dyn(), Par::Seq),
                        ),
                    ] {
                        let f = conv2d_act(x.view(), w.view(), bias, act, &p, Par::Rayon).unwrap();
                        assert_eq!(
                            bits(&f),
                            bits(&r),
                            "{c:?} {act:?} bias={} no_direct={no_direct} avx2={avx2}",
                            bias.is_some()
                        );
                    }
                }
                NO_DIRECT.with(|f| f.set(false));
                FORCE_AVX2.with(|f| f.set(false));
            }
        }
    }

    /// Batch 10 > DW_CHUNK, so the weight gradient really is split into several chunks.
    /// Bias gradient: matches an f64 sum within f32 rounding, the same bits on 1 and 2 threads
    /// and for a non-standard-layout `dy`.
    #[test]
    fn conv2d_backward_bias_matches_reference_and_thread_counts() {
        let dy = rand_array::<f32, _, _>((9, 5, 7, 6), 31);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| conv2d_backward_bias(dy.view(), Par::Rayon))
        };
        let db = run(1);
        assert_eq!(bits(&db), bits(&run(2)));
        for (c, &v) in db.iter().enumerate() {
            let r: f64 = dy
                .index_axis(ndarray::Axis(1), c)
                .iter()
                .map(|&u| u as f64)
                .sum();
            assert!((v as f64 - r).abs() < 1e-5, "db[{c}] {v} vs {r}");
        }
        let t = dy
            .view()
            .permuted_axes([0, 1, 3, 2])
            .as_standard_layout()
            .into_owned();
        let t = t.view().permuted_axes([0, 1, 3, 2]);
        assert!(!t.is_standard_layout());
        assert_eq!(bits(&conv2d_backward_bias(t, Par::Rayon)), bits(&db));
    }

    /// A batch smaller than four splits each sample's output channels over several tasks
    /// (`Geom::forward_split`); every path then gives each sample exactly the bits it gets in
    /// a batch of four (no split), with 1 and 4 threads, on both instruction sets.
    #[test]
    fn split_forward_gives_each_sample_its_batch_bits() {
        let pool = |k| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(k)
                .build()
                .unwrap()
        };
        // a CIFAR ResNet-20 conv at batch 1 (2.4 M multiply-adds) is not worth splitting
        let small = case(1, 32, 32, (16, 16), (3, 3), (1, 1), (1, 1), (1, 1), 1);
        let g = Geom::new("t", [1, 32, 16, 16], [32, 32, 3, 3], &small.params());
        assert_eq!(g.unwrap().forward_split(true), 1);
        for c in [
            // large enough to split (SPLIT_MIN_WORK)
            case(4, 32, 64, (32, 32), (3, 3), (1, 1), (1, 1), (1, 1), 1), // direct
            case(4, 32, 64, (33, 31), (3, 3), (2, 2), (1, 1), (1, 1), 1), // direct stride 2
            case(4, 256, 128, (4, 4), (3, 3), (1, 1), (1, 1), (1, 1), 1), // small planes
            case(4, 64, 96, (32, 32), (1, 1), (1, 1), (0, 0), (1, 1), 1), // pointwise GEMM
            case(4, 128, 64, (48, 48), (1, 1), (2, 2), (0, 0), (1, 1), 1), // 1×1 stride 2
            case(4, 64, 64, (96, 96), (3, 3), (1, 1), (1, 1), (1, 1), 64), // depthwise
            case(4, 32, 64, (96, 96), (3, 3), (1, 1), (1, 1), (1, 1), 32), // multiplier 2
            case(4, 32, 64, (32, 32), (3, 3), (1, 1), (1, 1), (1, 1), 2), // grouped: no split
        ] {
            let p = c.params();
            let x = rand_array::<f32, _, _>(c.x_shape(), 21);
            let w = rand_array::<f32, _, _>(c.w_shape(), 22);
            let b: Array1<f32> = rand_array(c.c_out, 23);
            for (no_direct, avx2) in [(false, false), (false, true), (true, false)] {
                NO_DIRECT.with(|f| f.set(no_direct));
                FORCE_AVX2.with(|f| f.set(avx2));
                let run = |x: ArrayView4<f32>, threads| {
                    let y = pool(threads).install(|| {
                        NO_DIRECT.with(|f| f.set(no_direct));
                        FORCE_AVX2.with(|f| f.set(avx2));
                        let act = Activation::Relu;
                        conv2d_act(x, w.view(), Some(b.view()), act, &p, Par::Rayon).unwrap()
                    });
                    bits(&y)
                };
                let whole = run(x.view(), 1);
                let per = whole.len() / c.n;
                for n in 1..c.n {
                    let g = Geom::new("t", [n, c.c_in, c.hw.0, c.hw.1], dims4(&w.view()), &p);
                    let g = g.unwrap();
                    let split = g.forward_split(g.direct_forward::<f32>().is_some());
                    assert_eq!(split > 1, c.groups == 1 || g.depthwise(), "{c:?} n={n}");
                    let xn = x.slice(ndarray::s![..n, .., .., ..]);
                    for threads in [1, 4] {
                        assert_eq!(
                            run(xn, threads),
                            whole[..n * per],
                            "{c:?} n={n} threads={threads} no_direct={no_direct} avx2={avx2}"
                        );
                    }
                }
                NO_DIRECT.with(|f| f.set(false));
                FORCE_AVX2.with(|f| f.set(false));
            }
        }
    }

    #[test]
    fn conv2d_is_bit_identical_with_1_and_2_threads() {
        let pool = |k| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(k)
                .build()
                .unwrap()
        };
        for c in [
            case(10, 4, 6, (9, 7), (3, 3), (2, 1), (1, 1), (1, 1), 2),
            case(10, 6, 6, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 6),
            case(10, 4, 8, (5, 7), (1, 1), (1, 1), (0, 0), (1, 1), 1),
            case(10, 16, 24, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1),
            case(10, 16, 24, (9, 7), (3, 3), (2, 2), (1, 1), (1, 1), 1),
            case(10, 8, 40, (7, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1),
        ] {
            let one = pool(1).install(|| all_outputs(&c, Par::Rayon));
            let two = pool(2).install(|| all_outputs(&c, Par::Rayon));
            assert_eq!(one, two, "{c:?}");
        }
    }

    #[test]
    fn conv2d_rejects_bad_input_with_typed_errors() {
        let x = Array4::<f32>::zeros((2, 4, 5, 5));
        let p = Conv2dParams::new(1, 0);
        // Mismatched channels: w expects 3 input channels.
        let w = Array4::<f32>::zeros((6, 3, 3, 3));
        let e = conv2d(x.view(), w.view(), None, &p, Par::Seq).unwrap_err();
        assert_eq!(
            e,
            TensorError::ShapeMismatch {
                op: "conv2d",
                lhs: vec![2, 4, 5, 5],
                rhs: vec![6, 3, 3, 3]
            }
        );
        assert!(e.to_string().contains("conv2d") && e.to_string().contains("[6, 3, 3, 3]"));
        // Kernel larger than the padded input.
        let w = Array4::<f32>::zeros((6, 4, 7, 3));
        let e = conv2d(x.view(), w.view(), None, &Conv2dParams::new(1, 0), Par::Seq).unwrap_err();
        assert!(
            matches!(
                e,
                TensorError::KernelTooLarge {
                    op: "conv2d",
                    input: (5, 5),
                    kernel: (7, 3),
                    ..
                }
            ),
            "{e}"
        );
        // ... but fits once padded.
        assert!(conv2d(x.view(), w.view(), None, &Conv2dParams::new(1, 1), Par::Seq).is_ok());
        // Zero-sized dims.
        let x0 = Array4::<f32>::zeros((0, 4, 5, 5));
        let w = Array4::<f32>::zeros((6, 4, 3, 3));
        let e = conv2d(x0.view(), w.view(), None, &p, Par::Seq).unwrap_err();
        assert_eq!(
            e,
            TensorError::EmptyDim {
                op: "conv2d",
                shape: vec![0, 4, 5, 5]
            }
        );
        // Groups not dividing the channels.
        let w = Array4::<f32>::zeros((6, 2, 3, 3));
        let e = conv2d(x.view(), w.view(), None, &p.with_groups(3), Par::Seq).unwrap_err();
        assert_eq!(
            e,
            TensorError::BadGroups {
                op: "conv2d",
                c_in: 4,
                c_out: 6,
                groups: 3
            }
        );
        let e = conv2d_backward_weight(
            x.view(),
            Array4::<f32>::zeros((2, 6, 3, 3)).view(),
            (3, 3),
            &p.with_groups(3),
            Par::Seq,
        )
        .unwrap_err();
        assert_eq!(
            e,
            TensorError::BadGroups {
                op: "conv2d_backward_weight",
                c_in: 4,
                c_out: 6,
                groups: 3
            }
        );
        // Zero stride; bias of the wrong length; dy of the wrong shape.
        let w = Array4::<f32>::zeros((6, 4, 3, 3));
        assert!(matches!(
            conv2d(x.view(), w.view(), None, &Conv2dParams::new(0, 0), Par::Seq),
            Err(TensorError::InvalidParam { op: "conv2d", .. })
        ));
        let b = Array1::<f32>::zeros(5);
        assert!(matches!(
            conv2d(x.view(), w.view(), Some(b.view()), &p, Par::Seq),
            Err(TensorError::ShapeMismatch { op: "conv2d", .. })
        ));
        let dy = Array4::<f32>::zeros((2, 6, 4, 3));
        let e = conv2d_backward_input(dy.view(), w.view(), (5, 5), &p, Par::Seq).unwrap_err();
        assert_eq!(
            e,
            TensorError::ShapeMismatch {
                op: "conv2d_backward_input",
                lhs: vec![2, 6, 4, 3],
                rhs: vec![2, 6, 3, 3]
            }
        );
        let e = conv2d_backward_weight(x.view(), dy.view(), (3, 3), &p, Par::Seq).unwrap_err();
        assert!(
            matches!(
                e,
                TensorError::ShapeMismatch {
                    op: "conv2d_backward_weight",
                    ..
                }
            ),
            "{e}"
        );
    }

    /// Non-contiguous (transposed-then-permuted) inputs give the same result as contiguous ones.
    #[test]
    fn conv2d_accepts_non_contiguous_views() {
        let c = case(3, 4, 6, (7, 5), (3, 3), (1, 2), (1, 1), (1, 1), 2);
        let p = c.params();
        let x = rand_array::<f64, _, _>((3, 4, 5, 7), 1);
        let xt = x.view().permuted_axes([0, 1, 3, 2]);
        let w = rand_array::<f64, _, _>(c.w_shape(), 2);
        let y = conv2d(xt, w.view(), None, &p, Par::Seq).unwrap();
        let r = naive_conv2d(&xt.to_owned(), &w, None, &p);
        assert!(max_rel_err(&y, &r) < 1e-13);
    }

    #[test]
    fn output_hw_follows_pytorch_formula() {
        let p = Conv2dParams::new(2, 1).with_dilation(2);
        // (h + 2·1 − 2·(3 − 1) − 1) / 2 + 1 with h = 9: (9 + 2 − 4 − 1) / 2 + 1 = 4; w = 8: 3 + 1
        assert_eq!(p.output_hw(9, 8, 3, 3).unwrap(), (4, 3));
    }
}
