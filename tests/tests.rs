//! End-to-end tests of the `hla` binary, one module per topic.

#[path = "cli.rs"]
mod cli;
