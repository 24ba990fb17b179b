//! `hla`: train, quantise, export and evaluate ternary networks with the method of
//! *Hyperspherical Loss-Aware Ternary Quantization* (arXiv 2212.12649) and its baselines.

use clap::{Parser, Subcommand};

/// Hyperspherical Loss-Aware Ternary Quantization: training, quantisation, export and evaluation.
#[derive(Debug, Parser)]
#[command(name = "hla", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the versions of the hla crates this binary was built from.
    Version,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Version) | None => {
            println!("hla {}", env!("CARGO_PKG_VERSION"));
        }
    }
}
