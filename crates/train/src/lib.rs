//! The training engine of hla, one of each: the run configuration ([`config`]), data loaders
//! ([`data`]), the optimizer step shared by every method ([`step`]), evaluation ([`eval`]),
//! BatchNorm re-estimation ([`bn`]), learning-rate schedules ([`schedule`]), checkpoints
//! ([`checkpoint`]), metric records ([`metrics`]), and whole resumable runs with a progress
//! observer and a stop flag ([`run`]). The `hla` CLI only parses arguments and config files,
//! prepares run directories, prints and writes reports; a user's own program calls the same
//! functions (see `examples/hla_resnet20.rs`).
//!
//! Crate graph, a straight line: `hla-tensor` → `hla-autograd` → `hla-models` → `hla-core`
//! (the method) → `hla-train` (this crate) → `hla` (the CLI), with `hla-data` (readers and
//! loaders, no dependency on the others) joining here. Training lives after the method because
//! it drives the method's state machine, and before the CLI so that the CLI holds no training
//! logic of its own.
#![warn(missing_docs)]

pub mod bn;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod knobs;
pub mod metrics;
pub mod run;
pub mod schedule;
pub mod step;

pub use config::Config;
pub use error::{RangeError, Result, TrainError};
pub use run::{Observer, RunEnd, RunOptions, StopFlag};
pub use step::{Learner, StepStats};
