//! Ctrl-C: the first press asks the running loop to stop at the next step boundary and write a
//! checkpoint; a second press exits at once (an atomic checkpoint write in progress leaves the
//! previous checkpoint intact).

use hla_train::StopFlag;
use std::sync::OnceLock;

static STOP: OnceLock<StopFlag> = OnceLock::new();

/// The process-wide stop flag, with the Ctrl-C handler that sets it installed on first use.
pub fn flag() -> StopFlag {
    STOP.get_or_init(|| {
        let flag = StopFlag::default();
        let f = flag.clone();
        let installed = ctrlc::set_handler(move || {
            if f.request() {
                eprintln!("\nerror: interrupted twice; exiting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: stopping after this step and writing a checkpoint (Ctrl-C again to quit now)");
        });
        if let Err(e) = installed {
            eprintln!("warning: Ctrl-C will stop at once, without a checkpoint ({e})");
        }
        flag
    })
    .clone()
}

/// A run stopped by Ctrl-C (exit status 130).
#[derive(Debug, thiserror::Error)]
#[error("interrupted: checkpoint written to {dir}; continue with `--resume {dir}`")]
pub struct Interrupted {
    /// The run directory.
    pub dir: String,
}

/// A run stopped by `--stop-after-epochs` (exit status 0).
#[derive(Debug, thiserror::Error)]
#[error("stopped after {epochs} epoch(s) as requested; checkpoint in {dir}; continue with `--resume {dir}`")]
pub struct StoppedEarly {
    /// Epochs run.
    pub epochs: usize,
    /// The run directory.
    pub dir: String,
}
