//! The scalar trait: `f32` and `f64`, with GEMM dispatch to `matrixmultiply`.

use std::fmt::{Debug, Display};
use std::iter::Sum;

/// An `f32` or `f64` scalar: everything the kernels need, plus conversion from/to `f64` and the
/// dispatch to `matrixmultiply`'s `sgemm` / `dgemm`.
///
/// Note: `num_traits::ToPrimitive` also has a `to_f64(&self) -> Option<f64>`; calling
/// `v.to_f64()` on a value `v: F` picks this trait's method, on a reference `&F` it picks
/// `ToPrimitive`'s, so dereference first (`(*v).to_f64()`) or write `Float::to_f64(v)`.
pub trait Float:
    num_traits::Float
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + Send
    + Sync
    + Debug
    + Display
    + Default
    + Sum
    + 'static
{
    /// Converts from `f64` (rounding to nearest for `f32`).
    fn from_f64(v: f64) -> Self;
    /// Converts to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Size of one value in bytes.
    const BYTES: usize;
    /// Appends the little-endian bytes of `self` (for transfers between ranks).
    fn write_le(self, out: &mut Vec<u8>);
    /// The value of `BYTES` little-endian bytes.
    ///
    /// # Panics
    /// If `b` is not `BYTES` long (a caller bug).
    fn read_le(b: &[u8]) -> Self;
    /// Raw `C ← α·A·B + β·C` with element strides, `A: [m, k]`, `B: [k, n]`, `C: [m, n]`.
    /// When `beta == 0`, `C` is not read.
    ///
    /// # Safety
    /// The pointers with their strides must address valid memory for the given dimensions, and
    /// `c` must not alias `a` or `b` (see `matrixmultiply::sgemm`).
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

impl Float for f32 {
    const BYTES: usize = std::mem::size_of::<f32>();
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read_le(b: &[u8]) -> Self {
        f32::from_le_bytes(b.try_into().expect("read_le: BYTES bytes"))
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}

impl Float for f64 {
    const BYTES: usize = std::mem::size_of::<f64>();
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read_le(b: &[u8]) -> Self {
        f64::from_le_bytes(b.try_into().expect("read_le: BYTES bytes"))
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}
