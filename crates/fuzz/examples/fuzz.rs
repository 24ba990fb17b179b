//! Long fuzz campaigns over every reader:
//!
//!     cargo run --release -p hla-fuzz --example fuzz -- --minutes 10 [--seed N] [--only NAME]
//!
//! The time is shared evenly between the targets. Each finding (panic, slow input, oversized
//! allocation) is printed and saved to `crates/fuzz/regressions/<target>/<hash>.bin`, which the
//! test suite then replays; fix the reader and keep the file as a regression test.

use hla_fuzz::{all_targets, campaign, deadline_in, TrackingAlloc};
use std::path::Path;

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

fn main() -> Result<(), String> {
    let mut minutes = 1.0;
    let mut seed = 1u64;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--minutes" => minutes = val()?.parse().map_err(|e| format!("--minutes: {e}"))?,
            "--seed" => seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--only" => only = Some(val()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let targets: Vec<_> = all_targets(repo)?
        .into_iter()
        .filter(|t| only.as_deref().map_or(true, |o| o == t.name))
        .collect();
    if targets.is_empty() {
        return Err("no such target".into());
    }
    let share = minutes / targets.len() as f64;
    let mut total = 0;
    for t in &targets {
        let tally = campaign(t, seed, usize::MAX, Some(deadline_in(share)));
        println!(
            "{:<13} {:>8} accepted {:>8} rejected {:>3} findings",
            t.name,
            tally.accepted,
            tally.rejected,
            tally.findings.len()
        );
        for f in &tally.findings {
            let hash = f.input.iter().fold(0xcbf29ce484222325u64, |h, &b| {
                (h ^ b as u64).wrapping_mul(0x100000001b3)
            });
            let dir = repo.join("crates/fuzz/regressions").join(f.target);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let p = dir.join(format!("{hash:016x}.bin"));
            std::fs::write(&p, &f.input).map_err(|e| e.to_string())?;
            println!("  finding: {} -> {}", f.problem, p.display());
        }
        total += tally.findings.len();
    }
    if total > 0 {
        return Err(format!("{total} findings"));
    }
    Ok(())
}
