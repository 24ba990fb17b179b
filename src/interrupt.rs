//! Ctrl-C: the first press asks the running loop to stop at the next step boundary and write a
//! checkpoint; a second press exits at once (an atomic checkpoint write in progress leaves the
//! previous checkpoint intact).

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once; later calls are ignored).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("\nerror: interrupted twice; exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after this step and writing a checkpoint (Ctrl-C again to quit now)");
    });
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Error returned by a loop that stopped on request (after checkpointing); `main` maps it to
/// exit code 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted: checkpoint written to {dir}; continue with `--resume {dir}`")]
pub struct Interrupted {
    /// The run directory holding the checkpoint.
    pub dir: String,
}

/// Error returned when `--stop-after-epochs` ends a run early (after checkpointing): exit code 0,
/// used by the resume tests and by schedulers that run jobs in slices.
#[derive(Debug, thiserror::Error)]
#[error("stopped after {epochs} epoch(s) as requested; checkpoint in {dir}; continue with `--resume {dir}`")]
pub struct StoppedEarly {
    /// Epochs run in this invocation.
    pub epochs: usize,
    /// The run directory.
    pub dir: String,
}
