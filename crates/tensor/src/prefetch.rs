//! Software prefetch hints for passes that walk activations plane by plane. The hardware
//! prefetchers follow a stream only within a 4 KiB page, and a `[n, c, h, w]` activation is read
//! in planes of `h·w` values (4 KiB for ResNet-20's 32 × 32 stage), often one plane per page
//! and, in a per-channel sweep, a whole sample (`c` planes) apart: every plane starts with
//! misses. Asking for the next plane's first lines while the current one is processed hides them.
//! A hint changes no value.

/// Asks for the cache lines of `bytes` bytes from `p` (into every cache level). No memory is
/// accessed and nothing faults, whatever the address, so `p` may point past any allocation.
#[inline(always)]
pub fn prefetch<T>(p: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = p.cast::<i8>();
        for l in (0..bytes).step_by(64) {
            // SAFETY: SSE is part of x86_64; a prefetch reads nothing and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(l)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// Bytes of a plane's start that [`prefetch_next_plane`] asks for: enough lines for the hardware
/// prefetcher to take over the rest of the page.
const PLANE_HEAD: usize = 1 << 10;

/// Asks for the start of the plane `stride` elements after `plane` (the plane a sweep reads
/// next), at most its first 1 KiB.
#[inline(always)]
pub fn prefetch_next_plane<T>(plane: &[T], stride: usize) {
    let bytes = std::mem::size_of_val(plane).min(PLANE_HEAD);
    prefetch(plane.as_ptr().wrapping_add(stride), bytes);
}
