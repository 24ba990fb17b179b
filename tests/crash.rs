//! Crash safety: runs killed with SIGKILL at 20 or more random moments (during steps, evaluations,
//! checkpoint and metrics writes) and resumed each time ends bit-identical to an
//! uninterrupted run; an export killed at random moments never leaves a file that is taken as
//! good.

use crate::pipeline::tiny_config;
use crate::util::{hla, run_in, scratch, shipped_cifar};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A small deterministic generator for the kill times (xorshift64*).
struct Times(u64);

impl Times {
    fn next_ms(&mut self, max_ms: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) % max_ms.max(1)
    }
}

/// Kills `child` with SIGKILL after `ms`, unless it exits first. True if it was killed
/// mid-run.
fn kill_after(mut child: Child, ms: u64) -> bool {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ok = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    let status = child.wait().unwrap();
    ok && !status.success()
}

/// Every tensor of a run's checkpoint (model, optimizer, method state), hashed.
fn checkpoint_hash(dir: &Path) -> String {
    let ck = hla_train::checkpoint::Checkpoint::load(&dir.join("checkpoint.safetensors"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(ck.state.finished, "{}: run not finished", dir.display());
    hla_train::checkpoint::weights_hash(&ck.tensors, "")
}

/// Starts the run in `dir/k`: fresh while no resolved config exists there, else `--resume`.
fn start(dir: &Path) -> Child {
    let fresh = !dir.join("k/config.resolved.toml").exists();
    let mut c = hla();
    c.current_dir(dir)
        .arg("--quiet")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if fresh {
        std::fs::remove_dir_all(dir.join("k")).ok();
        c.args([
            "quantize", "--config", "c.toml", "--method", "hla", "--out", "k",
        ]);
    } else {
        c.args(["quantize", "--resume", "k"]);
    }
    c.spawn().unwrap()
}

#[cfg(unix)]
#[test]
fn sigkill_at_random_points_then_resume_is_bit_identical() {
    let Some(root) = shipped_cifar() else { return };
    let d = scratch("crash-kill");
    let cfg = tiny_config(&root, "").replace("arch = \"resnet20\"", "arch = \"resnet8\"");
    std::fs::write(d.join("c.toml"), cfg).unwrap();
    let t0 = Instant::now();
    let reference = run_in(
        &d,
        &[
            "--quiet", "quantize", "--config", "c.toml", "--method", "hla", "--out", "ref",
        ],
    );
    assert!(reference.status.success());
    let full_ms = t0.elapsed().as_millis() as u64;
    let want = checkpoint_hash(&d.join("ref"));
    let mut times = Times(0x9E37_79B9_7F4A_7C15);
    let mut kills = 0;
    let mut campaigns = 0;
    // Whole runs, each killed at random moments until one of its lives finishes; new runs
    // until at least 20 kills have landed mid-run.
    while kills < 20 {
        campaigns += 1;
        assert!(
            campaigns <= 20,
            "only {kills} kills in 20 runs (a run takes {full_ms} ms)"
        );
        std::fs::remove_dir_all(d.join("k")).ok();
        let mut lives = 0;
        loop {
            lives += 1;
            // Anywhere within half a run's length (each life resumes from the last
            // checkpoint, so every life that outlives one makes progress).
            let child = start(&d);
            if lives > 30 {
                assert!(
                    child.wait_with_output().unwrap().status.success(),
                    "final resume failed"
                );
                break;
            }
            if kill_after(child, 20 + times.next_ms(full_ms / 2)) {
                kills += 1;
                continue;
            }
            // The life ended by itself: finished, or refused because a kill had landed just
            // after the final checkpoint (then the run is finished too).
            break;
        }
        assert_eq!(
            checkpoint_hash(&d.join("k")),
            want,
            "run {campaigns} (killed {kills} times so far) ends differently from the uninterrupted run"
        );
        // Only the sealed checkpoint is ever read back; stray temporaries of killed writes
        // carry their own names.
        for e in std::fs::read_dir(d.join("k")).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(
                !name.ends_with(".safetensors") || name == "checkpoint.safetensors",
                "unexpected file {name}"
            );
        }
    }
}

/// `hla export` killed at random moments: the output file either does not exist or is a
/// complete model that evaluates; a later export then completes.
#[cfg(unix)]
#[test]
fn export_killed_at_random_points_never_leaves_a_bad_file() {
    let Some(root) = shipped_cifar() else { return };
    let d = scratch("crash-export");
    std::fs::write(d.join("c.toml"), tiny_config(&root, "")).unwrap();
    let q = run_in(
        &d,
        &[
            "--quiet", "quantize", "--config", "c.toml", "--method", "twn", "--out", "r",
        ],
    );
    assert!(q.status.success());
    let t0 = Instant::now();
    assert!(run_in(
        &d,
        &["--quiet", "export", "r", "-o", "probe.ternary.safetensors"]
    )
    .status
    .success());
    let full_ms = t0.elapsed().as_millis() as u64;
    let out = d.join("r/model.ternary.safetensors");
    let mut times = Times(0xD1B5_4A32_D192_ED03);
    for _ in 0..8 {
        if out.exists() {
            break;
        }
        let child = hla()
            .current_dir(&d)
            .args(["--quiet", "export", "r"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        kill_after(child, times.next_ms(full_ms + 20));
        if out.exists() {
            let e = run_in(&d, &["--quiet", "eval", "r/model.ternary.safetensors"]);
            assert!(
                e.status.success(),
                "a killed export left a file that does not evaluate"
            );
        }
    }
    if !out.exists() {
        assert!(run_in(&d, &["--quiet", "export", "r"]).status.success());
    }
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(d.join("probe.ternary.safetensors")).unwrap(),
        "the export differs from an uninterrupted one"
    );
}
