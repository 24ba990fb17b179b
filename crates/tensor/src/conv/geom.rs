//! The validated geometry of one convolution and the plan chosen once per call from it (and
//! the CPU, never the thread count): direct SIMD kernels, im2col + GEMM, the pointwise shortcut
//! (1×1, stride 1, unpadded: the input is the column matrix), depthwise; and the forward's
//! per-sample channel split.

use super::direct::{detect, Direct, Isa, Kernel};
use super::params::Conv2dParams;
use crate::{Result, TensorError};
use ndarray::ArrayView4;

/// Multiply-adds below which a task is not worth its scheduling and its copy of the padded
/// input ([`Geom::forward_split`]; CIFAR ResNet-20's convs, 2.4 M per sample, stay whole).
pub(super) const SPLIT_MIN_WORK: usize = 1 << 21;

/// Tasks a small batch of a 1×1 stride-1 convolution is split into ([`Geom::forward_split`]):
/// each channel block's GEMM packs the whole input again, so fewer blocks than for the direct
/// kernels (MobileNetV2 at batch 1, BN folded, alternating runs on a 2-core Xeon: 4 blocks
/// 14.9–15.5 ms, 2 blocks 13.6–14.8 ms).
pub(super) const POINTWISE_SPLIT_TASKS: usize = 2;

/// Fewest positions of a task of [`Geom::pointwise_columns`].
const POINTWISE_MIN_COLUMNS: usize = 64;

/// Validated geometry of one convolution.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) c_in: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c_out: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    pub(super) sh: usize,
    pub(super) sw: usize,
    pub(super) ph: usize,
    pub(super) pw: usize,
    pub(super) dh: usize,
    pub(super) dw: usize,
    pub(super) groups: usize,
    pub(super) cin_g: usize,
    pub(super) cout_g: usize,
}

impl Geom {
    /// Checks `x: [n, c_in, h, w]` against `w: [c_out, c_in / groups, k_h, k_w]`.
    pub(super) fn new(
        op: &'static str,
        xs: [usize; 4],
        ws: [usize; 4],
        p: &Conv2dParams,
    ) -> Result<Geom> {
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
    pub(super) fn kdim(&self) -> usize {
        self.cin_g * self.kh * self.kw
    }
    /// Output pixels per plane: `h_out·w_out`.
    pub(super) fn npix(&self) -> usize {
        self.ho * self.wo
    }
    pub(super) fn in_sample(&self) -> usize {
        self.c_in * self.h * self.w
    }
    pub(super) fn out_sample(&self) -> usize {
        self.c_out * self.npix()
    }
    /// Output-channel blocks per sample in the forward: a batch smaller than four splits each
    /// sample's output channels into up to 4 / n equal blocks (1×1 convolutions:
    /// [`POINTWISE_SPLIT_TASKS`] / n), one task each, of at least
    /// `SPLIT_MIN_WORK` multiply-adds, so that batch 1 keeps every core busy. Chosen from the shapes only, never the thread count; every output
    /// is computed by the same kernel in the same summation order either way (the direct
    /// kernels' channel blocks stay whole: `align` is the plan's channel block, 1 off the
    /// direct path), so the bits do not change. Grouped convs other than depthwise are not split.
    // `%` rather than `is_multiple_of`: the workspace's rust-version is 1.80
    #[allow(clippy::manual_is_multiple_of)]
    pub(super) fn forward_split(&self, align: usize) -> usize {
        let work = self.c_out * self.npix() * self.kdim(); // multiply-adds per sample
        if self.n >= 4 || (self.groups > 1 && !self.depthwise()) || work < 2 * SPLIT_MIN_WORK {
            return 1;
        }
        if self.pointwise_columns() > 1 {
            return 1;
        }
        let tasks = if self.pointwise() {
            POINTWISE_SPLIT_TASKS
        } else {
            4
        };
        let want = tasks.div_ceil(self.n).min(work / SPLIT_MIN_WORK);
        (1..=want)
            .rev()
            .find(|&k| {
                let cb = self.c_out / k;
                self.c_out % k == 0 && cb % align == 0
            })
            .unwrap_or(1)
    }
    /// Position ranges per sample that a small batch of a 1×1 stride-1 convolution is split
    /// into instead of output-channel blocks ([`POINTWISE_SPLIT_TASKS`] / n of them, or 1 for
    /// no such split): when the plane has more positions than the conv has output channels, the
    /// input is the larger GEMM operand, and channel blocks would each pack all of it again
    /// (MobileNetV2's expansions: 16 × 12544 inputs, 96 × 16 weights), while position ranges
    /// pack only their own columns. Same shape-only rule and work threshold as
    /// [`Geom::forward_split`], which then splits nothing; the GEMM computes each output in the
    /// same order either way, so the bits do not change.
    pub(super) fn pointwise_columns(&self) -> usize {
        let np = self.npix();
        let work = self.c_out * np * self.kdim();
        let small = self.n < 4 && work >= 2 * SPLIT_MIN_WORK;
        if !self.pointwise() || self.groups != 1 || !small || np <= self.c_out {
            return 1;
        }
        POINTWISE_SPLIT_TASKS
            .div_ceil(self.n)
            .min(work / SPLIT_MIN_WORK)
            .min(np / POINTWISE_MIN_COLUMNS)
            .max(1)
    }
    /// 1×1, stride 1, no padding: the input plane is the column matrix.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
    /// One input channel per group: direct convolution per channel.
    pub(super) fn depthwise(&self) -> bool {
        self.cin_g == 1
    }
    /// The direct forward / weight-gradient kernels apply (f32, not depthwise, not 1×1
    /// unpadded stride 1, a SIMD instruction set present).
    pub(super) fn direct_forward<F: 'static>(&self) -> Option<(Direct, Isa)> {
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
    pub(super) fn direct_backward_input<F: 'static>(&self) -> Option<(Direct, Isa)> {
        let (eh, ew) = (self.dh * (self.kh - 1), self.dw * (self.kw - 1));
        if self.ph > eh || self.pw > ew {
            return None;
        }
        if self.sh != 1 || self.sw != 1 {
            return None;
        }
        let (_, isa) = self.direct_forward::<F>()?;
        if self.cin_g < Direct::grid_cob(isa) / 2 {
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
    pub(super) fn col_range(&self, kj: usize) -> (isize, usize, usize) {
        valid_range(kj * self.dw, self.pw, self.sw, self.w, self.wo)
    }
    /// Input row for output row `oh` and kernel row `ki`, if inside the image.
    pub(super) fn in_row(&self, oh: usize, ki: usize) -> Option<usize> {
        let r = (oh * self.sh + ki * self.dh) as isize - self.ph as isize;
        (r >= 0 && (r as usize) < self.h).then_some(r as usize)
    }
}

/// The kernel the direct forward must take where it has the choice between the grid and the
/// row kernel (only ever set by the tests, to compare both).
pub(super) fn forced_kernel() -> Option<Kernel> {
    #[cfg(test)]
    {
        FORCE_KERNEL.with(|c| c.get())
    }
    #[cfg(not(test))]
    {
        None
    }
}

/// Whether the direct path is switched off (only ever by the tests, to compare both paths).
pub(super) fn direct_disabled() -> bool {
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
    /// Per-thread switch used by the tests to pick the grid or the row kernel.
    pub(crate) static FORCE_KERNEL: std::cell::Cell<Option<Kernel>> =
        const { std::cell::Cell::new(None) };
}

/// The instruction set of the direct kernels (the tests may downgrade AVX-512 to AVX2).
pub(super) fn detect_isa() -> Option<Isa> {
    let isa = detect()?;
    #[cfg(test)]
    {
        if FORCE_AVX2.with(|c| c.get()) {
            return super::direct::detect_avx2();
        }
    }
    Some(isa)
}

pub(super) fn rename(e: TensorError, op: &'static str) -> TensorError {
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
pub(super) fn valid_range(
    koff: usize,
    pad: usize,
    s: usize,
    len: usize,
    out: usize,
) -> (isize, usize, usize) {
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

pub(super) fn dims4<F>(a: &ArrayView4<F>) -> [usize; 4] {
    let d = a.dim();
    [d.0, d.1, d.2, d.3]
}
