//! End-to-end tests of the `hla` binary, one module per topic.

#[path = "util.rs"]
#[allow(dead_code)] // helpers used by some topic modules only
mod util;

#[path = "cli.rs"]
mod cli;
#[path = "crash.rs"]
mod crash;
#[path = "errors.rs"]
mod errors;
#[path = "explain.rs"]
mod explain;
#[path = "imagefolder.rs"]
mod imagefolder;
#[cfg(feature = "mpi")]
#[path = "mpi.rs"]
mod mpi;
#[path = "pipeline.rs"]
mod pipeline;
#[path = "resume.rs"]
mod resume;
#[path = "study.rs"]
mod study;
