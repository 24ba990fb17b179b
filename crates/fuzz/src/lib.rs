//! Mutation fuzzing of every reader of user files, on stable Rust: checkpoints, packed ternary
//! models, weight files, CIFAR-10 batches, IDX files, JPEG/PNG images (alone and inside an
//! ImageFolder tree) and TOML configs.
//!
//! Each [`Target`] has valid seed inputs and a function that reads one input the way the
//! tool does. A campaign mutates seeds with a seeded generator ([`mutate()`]) and checks every
//! outcome: a typed error or success is fine; a panic, an input that takes longer than
//! [`SLOW_SECS`], or a single allocation larger than [`ALLOC_CAP`] is a [`Finding`].
//! Allocation sizes are seen through [`TrackingAlloc`], which a test or example binary
//! installs as its global allocator.
//!
//! A fast slice runs in the test suite (`tests/readers.rs`); long campaigns run with
//! `cargo run --release -p hla-fuzz --example fuzz -- --minutes 10`, which writes each finding
//! to `crates/fuzz/regressions/<target>/`, where the test suite replays it from then on.

#![warn(missing_docs)]

pub mod mutate;
pub mod targets;

pub use mutate::{mutate, Kind};
pub use targets::{all_targets, Target};

use rand::SeedableRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An input that takes longer than this to read is a finding (a hang or a blow-up).
pub const SLOW_SECS: f64 = 10.0;
/// A single allocation larger than this while reading an input is a finding: a size taken
/// from a header without a cap. (The readers' own caps are far lower.)
pub const ALLOC_CAP: usize = 1 << 30;
/// Larger requests are refused outright (the process then aborts, loudly), so a crafted
/// size cannot take the machine's memory before it is reported.
const ALLOC_REFUSE: usize = 16 << 30;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, recording the largest single request since [`reset_largest`].
pub struct TrackingAlloc;

// SAFETY: forwards every call to `System` unchanged; only records sizes.
unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_REFUSE {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_REFUSE {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_REFUSE {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

/// Forgets the largest allocation seen so far.
pub fn reset_largest() {
    LARGEST.store(0, Ordering::Relaxed);
}

/// The largest single allocation since [`reset_largest`] (0 without [`TrackingAlloc`]).
pub fn largest() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

/// What reading one input did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Read successfully.
    Accepted,
    /// Rejected with a typed error (its message).
    Rejected(String),
}

/// An input whose reading panicked, was too slow or allocated too much.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Target name.
    pub target: &'static str,
    /// The input.
    pub input: Vec<u8>,
    /// What went wrong.
    pub problem: String,
}

static PANIC_MSG: Mutex<Option<String>> = Mutex::new(None);

/// Replaces the panic hook by one that records the message instead of printing it (findings
/// are reported once, with their input). Idempotent.
pub fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let msg = format!("{info}");
            if let Ok(mut m) = PANIC_MSG.lock() {
                *m = Some(msg);
            }
        }));
    });
}

/// Reads `input` with `target`, checking for panics, slowness and oversized allocations.
///
/// # Errors
/// The problem, when the input is a finding.
pub fn check(target: &Target, input: &[u8]) -> Result<Outcome, String> {
    reset_largest();
    let t0 = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.read)(input)));
    let secs = t0.elapsed().as_secs_f64();
    let big = largest();
    let out = match r {
        Ok(Ok(())) => Outcome::Accepted,
        Ok(Err(e)) => Outcome::Rejected(e),
        Err(_) => {
            let msg = PANIC_MSG
                .lock()
                .ok()
                .and_then(|mut m| m.take())
                .unwrap_or_else(|| "panic".into());
            return Err(format!("panicked: {msg}"));
        }
    };
    if secs > SLOW_SECS {
        return Err(format!("took {secs:.1} s (limit {SLOW_SECS} s)"));
    }
    if big > ALLOC_CAP {
        return Err(format!(
            "allocated {big} bytes at once for a {}-byte input (cap {ALLOC_CAP})",
            input.len()
        ));
    }
    Ok(out)
}

/// Counts of one target's campaign.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Inputs read successfully.
    pub accepted: usize,
    /// Inputs rejected with a typed error.
    pub rejected: usize,
    /// Findings.
    pub findings: Vec<Finding>,
}

/// Runs `target` on its seeds unchanged, then on mutated seeds, seeded by `seed`, until
/// `iterations` mutants have been read or `deadline` has passed.
pub fn campaign(target: &Target, seed: u64, iterations: usize, deadline: Option<Instant>) -> Tally {
    quiet_panics();
    let mut t = Tally::default();
    let record = |t: &mut Tally, input: &[u8]| match check(target, input) {
        Ok(Outcome::Accepted) => t.accepted += 1,
        Ok(Outcome::Rejected(_)) => t.rejected += 1,
        Err(problem) => t.findings.push(Finding {
            target: target.name,
            input: input.to_vec(),
            problem,
        }),
    };
    for s in &target.seeds {
        record(&mut t, s);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for i in 0..iterations {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let base = &target.seeds[i % target.seeds.len()];
        // Stack a few rounds now and then: structure first, then framing.
        let mut m = mutate(base, target.kind, &mut rng);
        if i % 5 == 4 {
            m = mutate(&m, target.kind, &mut rng);
        }
        record(&mut t, &m);
    }
    t
}

/// The time budget of a campaign of `minutes`.
pub fn deadline_in(minutes: f64) -> Instant {
    Instant::now() + Duration::from_secs_f64(minutes * 60.0)
}
