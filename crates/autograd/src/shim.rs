//! Temporary stand-ins for the kernels crate's scalar trait and parallelism switch.

/// f32 / f64 scalar.
pub trait Float:
    num_traits::Float
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + Send
    + Sync
    + std::fmt::Debug
    + std::fmt::Display
    + Default
    + std::iter::Sum
    + 'static
{
    /// From f64.
    fn from_f64(v: f64) -> Self;
    /// To f64.
    fn to_f64(self) -> f64;
}
impl Float for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl Float for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}
/// How a kernel may parallelise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Par {
    /// Sequential.
    Seq,
    /// Rayon.
    #[default]
    Rayon,
}
