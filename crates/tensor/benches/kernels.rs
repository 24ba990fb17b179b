//! Kernel benchmark (plain binary): `cargo bench -p hla-tensor`.
fn main() {}
