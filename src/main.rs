//! `hla`: train, quantise, export and evaluate ternary networks with the method of
//! *Hyperspherical Loss-Aware Ternary Quantization* (arXiv 2212.12649) and its baselines.
//!
//! Every error is printed as one line `error: …` on stderr with a non-zero exit status; nothing
//! already written is modified before the inputs (config, data path, checkpoint) are validated.

mod bench;
mod cli;
mod commands;
mod compare;
mod config;
mod demo;
mod dist;
mod explain;
mod infer;
mod interrupt;
mod plots;
mod progress;
mod report;
mod rundir;
mod study;

use clap::Parser;
use cli::{Cli, Command};
use progress::{OutputMode, Ui};
use std::process::ExitCode;

/// Shared context of one invocation.
pub struct Ctx {
    /// Global options.
    pub global: cli::GlobalOpts,
    /// Output mode.
    pub ui: Ui,
    /// Data-parallel group under `mpirun` (`None`: one process).
    pub group: Option<hla_tensor::group::Group>,
}

impl Ctx {
    /// Worker threads in use (`--threads`, or all cores).
    pub fn threads(&self) -> usize {
        self.global
            .threads
            .unwrap_or_else(rayon::current_num_threads)
            .max(1)
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(isa) = cli.global.isa {
        // nothing has run a kernel yet, so the ceiling is still free to set
        hla_tensor::isa::set_max_isa(isa.max_isa()).map_err(|fixed| {
            anyhow::anyhow!(
                "--isa {}: the kernels already use {}",
                isa.max_isa().name(),
                fixed.name()
            )
        })?;
    }
    if let Some(t) = cli.global.threads {
        if t == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot start {t} threads: {e}"))?;
    }
    let dist = dist::Dist::init()?;
    RANK.store(dist.rank(), std::sync::atomic::Ordering::Relaxed);
    if dist.group.is_some() && !matches!(cli.command, Command::Train(_) | Command::Quantize(_)) {
        anyhow::bail!("only `hla train` and `hla quantize` run on several MPI ranks");
    }
    let mode = if dist.rank() > 0 {
        OutputMode::Quiet
    } else if cli.global.json {
        OutputMode::Json
    } else if cli.global.quiet {
        OutputMode::Quiet
    } else {
        OutputMode::Human
    };
    let ctx = Ctx {
        global: cli.global,
        ui: Ui { mode },
        group: dist.group.clone(),
    };
    // The command runs on a thread of the kernels' rayon pool: every kernel is a parallel
    // loop, and one issued from a pool thread goes on that thread's own queue, where the pool's
    // other threads take its pieces; issued from the main thread, each loop would be handed to
    // the pool and waited for, a futex round trip per call (most of a batch-1 inference).
    let command = cli.command;
    rayon::scope(|_| match command {
        Command::Train(a) => commands::train(&ctx, &a.run),
        Command::Quantize(a) => commands::quantize(&ctx, &a),
        Command::Eval(a) => commands::eval(&ctx, &a),
        Command::Export(a) => commands::export(&ctx, &a),
        Command::Calibrate(a) => infer::calibrate_cmd(&ctx, &a),
        Command::Infer(a) => infer::infer(&ctx, &a),
        Command::Demo(a) => demo::demo(&ctx, &a),
        Command::Bench(a) => bench::bench(&ctx, &a),
        Command::Study(a) => study::study(&ctx, &a),
        Command::Explain(a) => explain::explain(&ctx, &a),
    })
}

/// This process's MPI rank (0 without MPI), for error lines.
static RANK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn main() -> ExitCode {
    // before any thread allocates: glibc's settings are process-wide
    hla_tensor::alloc::keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(s) = e.downcast_ref::<interrupt::StoppedEarly>() {
                eprintln!("{s}");
                return ExitCode::SUCCESS;
            }
            // `{:#}` joins the context chain on one line: "outer: inner: root cause".
            let msg = format!("{e:#}").replace('\n', " ");
            match RANK.load(std::sync::atomic::Ordering::Relaxed) {
                0 => eprintln!("error: {msg}"),
                r => eprintln!("error (rank {r}): {msg}"),
            }
            if e.downcast_ref::<interrupt::Interrupted>().is_some() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
