//! A process-wide ceiling on the SIMD instruction sets this crate's kernels pick. With it an
//! AVX-512 machine runs exactly the kernels an AVX2-only machine runs (`hla --isa avx2`), so the
//! AVX2 paths can be measured, and their bits reproduced, without such a machine.
//!
//! The ceiling only lowers what run-time detection finds: every `unsafe` kernel still needs the
//! token that only detection of this CPU creates, so a ceiling above the CPU changes nothing. It
//! is fixed once per process — by [`set_max_isa`], or at the first kernel call — so one run never
//! mixes instruction sets. `matrixmultiply`'s GEMM (used by 1×1 and im2col convolutions and
//! linear layers) keeps its own run-time dispatch, which this ceiling does not reach: version
//! 0.3.11 picks its AVX-512 kernel wherever the CPU has one, so under `--isa avx2` on an AVX-512
//! machine the GEMMs still run AVX-512 (MobileNetV2's 1×1 layers, notably).

use std::sync::OnceLock;

/// The widest instruction set the kernels may use, ordered `Portable < Avx2 < Avx512`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MaxIsa {
    /// No SIMD kernels of this crate: im2col + GEMM and the portable integer loops.
    Portable,
    /// AVX2 (+ FMA for f32): the 256-bit kernels.
    Avx2,
    /// Everything detection finds (AVX-512 F/BW, VNNI): the default.
    Avx512,
}

impl MaxIsa {
    /// The name `hla --isa` takes: `portable`, `avx2`, `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            MaxIsa::Portable => "portable",
            MaxIsa::Avx2 => "avx2",
            MaxIsa::Avx512 => "avx512",
        }
    }
}

static MAX_ISA: OnceLock<MaxIsa> = OnceLock::new();

/// Caps the instruction sets for the rest of the process. Call it before any kernel runs: once
/// fixed (by an earlier call or by the first kernel, which fixes [`MaxIsa::Avx512`]) the
/// ceiling cannot change, and asking for a different one returns the one in force as the error.
pub fn set_max_isa(max: MaxIsa) -> std::result::Result<(), MaxIsa> {
    let fixed = *MAX_ISA.get_or_init(|| max);
    if fixed == max {
        Ok(())
    } else {
        Err(fixed)
    }
}

/// The ceiling in force (fixing the default, no ceiling, if none was set).
pub fn max_isa() -> MaxIsa {
    *MAX_ISA.get_or_init(|| MaxIsa::Avx512)
}

/// Whether kernels of `level` may run (detection must still find them on this CPU).
pub(crate) fn allows(level: MaxIsa) -> bool {
    max_isa() >= level
}

/// Runs `f` compiled for the widest vector instructions this CPU has under the ceiling
/// (AVX-512 F, else AVX2 + FMA, else the baseline), for the plain loops of element-wise
/// and batch-norm passes that the compiler vectorises itself: without it they are built for the
/// x86-64 baseline (SSE2) and, e.g., batch norm's 16-lane sums spill. `f` (and what it calls)
/// must be inlined into the wrapper to benefit: pass `#[inline(always)]` closures. The values
/// do not change — the same operations in the same order, and the compiler never contracts a
/// multiply and an add into an FMA by itself.
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::conv::direct::{detect, Isa};
        match detect() {
            // SAFETY: the token proves that detection found these features on this CPU.
            Some(Isa::Avx512(_)) => return unsafe { with_avx512(f) },
            // SAFETY: as above.
            Some(Isa::Avx2(_)) => return unsafe { with_avx2(f) },
            None => {}
        }
    }
    f()
}

/// `f()` with AVX-512 enabled for the code inlined into it.
///
/// # Safety
/// The CPU must have AVX-512 F (callers hold the detection token).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `f()` with AVX2 and FMA enabled for the code inlined into it.
///
/// # Safety
/// The CPU must have AVX2 and FMA (callers hold the detection token).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ordering the ceiling compares with, and a ceiling that cannot move once fixed: the
    /// test binary's kernels fixed the default, so asking for AVX2 reports AVX-512 in force
    /// and leaves every kernel as detected.
    #[test]
    fn ceiling_is_ordered_and_fixed_once() {
        assert!(MaxIsa::Portable < MaxIsa::Avx2 && MaxIsa::Avx2 < MaxIsa::Avx512);
        assert!(allows(MaxIsa::Avx512) && allows(MaxIsa::Portable));
        assert_eq!(set_max_isa(MaxIsa::Avx512), Ok(()));
        assert_eq!(set_max_isa(MaxIsa::Avx2), Err(MaxIsa::Avx512));
        assert_eq!(max_isa(), MaxIsa::Avx512);
        assert!(allows(MaxIsa::Avx512));
    }
}
