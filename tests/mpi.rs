//! Data-parallel runs under `mpirun` (built with `--features mpi`): FP training and HLA
//! quantisation on 2 and 4 ranks of one machine end with the single-process weights, bit for
//! bit, also when stopped after an epoch and resumed (on the ranks or by one process); a batch
//! the ranks cannot split is refused before training.

use crate::pipeline::{result_json, tiny_config};
use crate::util::{run_in, scratch, shipped_cifar};
use std::path::Path;
use std::process::{Command, Output};

/// `hla ARGS` on `n` MPI ranks (one thread each) in `cwd`.
fn mpirun(cwd: &Path, n: usize, args: &[&str]) -> Output {
    Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-n",
            &n.to_string(),
        ])
        .arg(env!("CARGO_BIN_EXE_hla"))
        .args(["--threads", "1"])
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("mpirun runs (install openmpi-bin)")
}

fn hash(out: &Output) -> String {
    result_json(out)["weights_sha256"]
        .as_str()
        .expect("a result line with the weights hash")
        .to_string()
}

/// 128 training images in batches of 32 (4 chunks of 8: 2 + 2 on 2 ranks, 1 each on 4).
#[test]
fn fp_train_and_hla_quantize_on_2_and_4_ranks_match_one_process() {
    let Some(root) = shipped_cifar() else { return };
    let d = scratch("mpi-runs");
    std::fs::write(d.join("c.toml"), tiny_config(&root, "")).unwrap();
    for cmd in ["train", "quantize"] {
        let one = hash(&run_in(
            &d,
            &[
                "--json",
                "--threads",
                "2",
                cmd,
                "--config",
                "c.toml",
                "--out",
                &format!("{cmd}-1"),
            ],
        ));
        for n in [2, 4] {
            let out = format!("{cmd}-{n}");
            let ranks = mpirun(&d, n, &["--json", cmd, "--config", "c.toml", "--out", &out]);
            assert_eq!(hash(&ranks), one, "hla {cmd} on {n} ranks");
            // One process wrote the directory; only rank 0 printed the result.
            let text = String::from_utf8_lossy(&ranks.stdout);
            assert_eq!(text.matches("\"event\":\"result\"").count(), 1, "{text}");
            assert!(d.join(&out).join("checkpoint.safetensors").is_file());
        }
    }
}

/// Stopped on 2 ranks, resumed on 2 ranks or by one process: the single-process weights.
#[test]
fn quantize_stopped_and_resumed_on_2_ranks_matches_one_process() {
    let Some(root) = shipped_cifar() else { return };
    let d = scratch("mpi-resume");
    std::fs::write(d.join("c.toml"), tiny_config(&root, "")).unwrap();
    let one = hash(&run_in(
        &d,
        &["--json", "quantize", "--config", "c.toml", "--out", "one"],
    ));
    let part = mpirun(
        &d,
        2,
        &[
            "quantize",
            "--config",
            "c.toml",
            "--out",
            "two",
            "--stop-after-epochs",
            "1",
        ],
    );
    assert!(
        part.status.success(),
        "{}",
        String::from_utf8_lossy(&part.stderr)
    );
    let jl = std::fs::read_to_string(d.join("two/metrics.jsonl")).unwrap();
    assert!(jl.lines().count() >= 1);
    // The rank count is not part of the result: the same checkpoint resumed by one process.
    std::fs::create_dir_all(d.join("alone")).unwrap();
    for e in std::fs::read_dir(d.join("two")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, d.join("alone").join(p.file_name().unwrap())).unwrap();
    }
    assert_eq!(
        hash(&mpirun(&d, 2, &["--json", "quantize", "--resume", "two"])),
        one
    );
    assert_eq!(
        hash(&run_in(&d, &["--json", "quantize", "--resume", "alone"])),
        one
    );
}

/// 100 images in batches of 32: the last batch of 4 is one chunk, which 2 ranks cannot share.
/// Every rank finds this before training; which ranks get to print depends on how fast
/// `mpirun` stops the others once the first one exits, so only the refusal itself is asserted.
#[test]
fn a_batch_the_ranks_cannot_split_is_refused_before_training() {
    let Some(root) = shipped_cifar() else { return };
    let d = scratch("mpi-refused");
    let cfg =
        tiny_config(&root, "").replace("train_limit = 128", "train_limit = 100\ndrop_last = false");
    std::fs::write(d.join("c.toml"), cfg).unwrap();
    let out = mpirun(&d, 2, &["train", "--config", "c.toml", "--out", "r"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // The ranks' error lines may interleave on the shared stderr; each names the split.
    assert!(err.contains("leaves rank 1 without samples"), "{err}");
    assert!(!d.join("r").join("checkpoint.safetensors").exists());
}
