//! The fast slice of the fuzz campaign, in the test suite: every reader gets its valid seeds
//! (which must be accepted) and a few hundred seeded mutations, then every saved regression
//! input (`crates/fuzz/regressions/<target>/*`). Each outcome must be a success or a typed
//! error: no panic, no input slower than `SLOW_SECS`, no allocation above `ALLOC_CAP`.

use hla_fuzz::{all_targets, campaign, check, Outcome, TrackingAlloc};
use std::path::Path;

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Mutants per target in the test suite (long campaigns: the `fuzz` example).
const ITERATIONS: usize = 300;

#[test]
fn every_reader_survives_seeded_mutations() {
    let targets = all_targets(repo()).expect("seeds build from the shipped data");
    let mut report = Vec::new();
    for t in &targets {
        for (i, s) in t.seeds.iter().enumerate() {
            let out = check(t, s);
            // Bad-image seeds are meant to be rejected; every other seed must read.
            if t.name != "image" && t.name != "image-folder" {
                assert_eq!(
                    out,
                    Ok(Outcome::Accepted),
                    "{} seed {i} is not accepted",
                    t.name
                );
            } else {
                assert!(out.is_ok(), "{} seed {i}: {out:?}", t.name);
            }
        }
        let tally = campaign(t, 0x5eed ^ t.name.len() as u64, ITERATIONS, None);
        report.push(format!(
            "{}: {} accepted, {} rejected, {} findings",
            t.name,
            tally.accepted,
            tally.rejected,
            tally.findings.len()
        ));
        if let Some(f) = tally.findings.first() {
            panic!(
                "{}: {} (input of {} bytes; run the fuzz example to save it)",
                f.target,
                f.problem,
                f.input.len()
            );
        }
        // The mutations must reach past the first check: some mutants are still accepted or
        // rejected for different reasons, never all the same way.
        assert!(tally.rejected > 0, "{}: no mutant was rejected", t.name);
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn saved_regressions_are_handled() {
    let targets = all_targets(repo()).expect("seeds build");
    let dir = repo().join("crates/fuzz/regressions");
    let mut n = 0;
    for t in &targets {
        let Ok(rd) = std::fs::read_dir(dir.join(t.name)) else {
            continue;
        };
        let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let input = std::fs::read(&f).unwrap();
            let out = check(t, &input);
            assert!(out.is_ok(), "{}: {}", f.display(), out.unwrap_err());
            n += 1;
        }
    }
    eprintln!("{n} saved regression inputs replayed");
}
