//! Keeping freed activation memory for the next batch.
//!
//! Every tape value is a fresh `ndarray` allocation, most of them megabytes. glibc's malloc
//! serves blocks above its mmap threshold (128 KiB at start, raised dynamically only as such
//! blocks are freed) with a fresh `mmap`, and returns the top of a heap to the kernel once more
//! than its trim threshold is free. A forward pass frees its activations all at once, so both
//! rules hand the same memory back to the kernel every batch and take it again, page fault by
//! page fault: on a 2-core EPYC (Zen 4) ResNet-20 batch-128 inference ran at 620 img/s with
//! 1.4 M page faults in 3 s, and at 1850 img/s with 85 K once freed memory was kept. Peak
//! resident memory does not change (the memory is in use at the peak anyway); it only stays
//! resident after the peak instead of being returned.
//!
//! Two more rules matter once the work runs on the threads of the rayon pool (the `hla`
//! command does, see its `main`): a thread other than the main one allocates from a secondary
//! arena, whose heaps are at most 64 MiB each, and glibc's mmap threshold cannot be raised
//! above 32 MiB. Every block larger than that (a MobileNetV2 activation at batch 16 and 224²
//! is 77 MB, a ResNet-18 one 51 MB) was therefore mapped and unmapped on every use: on a
//! 2-core Xeon, a MobileNetV2 training step took 1.2 s with 0.9 M page faults per run and
//! spent a fifth of its time in the kernel (page faults and the TLB shootdowns of `munmap`).
//! With one arena (the main one, which grows without that limit) and no mmap'd blocks, the
//! same run took 0.96 s with 0.28 M faults, all in the first step, and a lower peak (999
//! against 1085 MiB).

/// Largest block glibc may serve from its heaps (its own ceiling on 64-bit targets).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// Free memory a heap may keep at its top before glibc returns it: above a ResNet-20 batch-128
/// training step's working set, so a step never gives back what the next one needs.
pub const TRIM_THRESHOLD: usize = 1 << 30;

/// Tells glibc's malloc to keep freed activation memory (see the module docs): a fixed mmap
/// threshold of [`MMAP_THRESHOLD`], a trim threshold of [`TRIM_THRESHOLD`], a single arena and
/// no mmap'd blocks at all (so blocks above the threshold come from the heap too). Call it once at
/// the start of a program, before any thread allocates; binaries call it, libraries do not.
/// Returns whether the settings took effect (`false` on other C libraries, where it does
/// nothing). Numerics are unaffected.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes two of malloc's tuning parameters; any value is valid.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
                && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_every_setting() {
        // mallopt refuses an mmap threshold above its ceiling (returns 0)
        assert!(super::keep_freed_memory());
    }
}
