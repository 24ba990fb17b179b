//! Integer GEMM of ternary weights and 8-bit activations (W2A8), exact: codes {−1, 0, +1} as
//! `i8` rows `[n, k]`, activations as `u8` rows `[m, k]` (e.g. im2col patches of a post-ReLU
//! input, one patch per row so both operands are contiguous along `k`), `i32` results
//! `out[i·m + j] = Σ_t codes[i·k + t] · act[j·k + t]`. Integer sums are exact, so every path
//! (scalar, AVX2) and every thread count gives the same result.
//!
//! AVX2: `vpmaddubsw` multiplies 32 unsigned by 32 signed bytes and adds adjacent pairs into
//! i16 (|pair| ≤ 2·255 = 510: no saturation with ternary codes), `vpmaddwd` against ones widens
//! to i32. The instruction set is chosen at run time through [`Avx2`], a token only detection
//! can create, so the `unsafe` kernel cannot be reached on a CPU without AVX2.

use crate::{Par, Result, TensorError};
use std::mem::MaybeUninit;

/// Proof that the CPU has AVX2: created only by [`Avx2::detect`].
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

impl Avx2 {
    /// `Some` when this CPU supports AVX2 (checked at run time) and the process's ceiling
    /// ([`crate::isa`]) allows it.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if crate::isa::allows(crate::isa::MaxIsa::Avx2)
            && std::arch::is_x86_feature_detected!("avx2")
        {
            return Some(Avx2(()));
        }
        None
    }
}

/// `Σ_t w[t]·x[t]` on the scalar path.
fn dot_scalar(w: &[i8], x: &[u8]) -> i32 {
    w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(w: &[i8], x: &[u8]) -> i32 {
    use std::arch::x86_64::*;
    let k = w.len().min(x.len());
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let mut t = 0;
    while t + 32 <= k {
        // SAFETY: t + 32 <= k bounds both 32-byte loads (unaligned loads are allowed).
        let xv = unsafe { _mm256_loadu_si256(x.as_ptr().add(t) as *const __m256i) };
        let wv = unsafe { _mm256_loadu_si256(w.as_ptr().add(t) as *const __m256i) };
        let pairs = _mm256_maddubs_epi16(xv, wv); // u8 × i8, adjacent pairs summed: i16
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
        t += 32;
    }
    let s = _mm_add_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256(acc, 1),
    );
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s) + dot_scalar(&w[t..k], &x[t..k])
}

/// One row of codes against every activation row, into `out_row` `[m]`.
fn row(isa: Option<Avx2>, w: &[i8], act: &[u8], k: usize, out_row: &mut [i32]) {
    for (j, o) in out_row.iter_mut().enumerate() {
        let x = &act[j * k..(j + 1) * k];
        *o = match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Avx2` token exists only after run-time detection of AVX2.
            Some(_) => unsafe { dot_avx2(w, x) },
            _ => dot_scalar(w, x),
        };
    }
}

/// `out = codes · actᵀ` in i32 (see the module doc), rows of `codes` split over the rayon pool
/// with `Par::Rayon`. `isa = None` forces the scalar path (tests compare both).
///
/// # Shapes
/// `codes`: `[n, k]` i8 in {−1, 0, 1}, `act`: `[m, k]` u8 → `out`: `[n, m]` i32.
/// # Errors
/// `ShapeMismatch` when a slice length disagrees with `n`, `m`, `k`, or `k` is so large that a
/// sum could overflow i32 (k > 2^23).
pub fn ternary_gemm_u8(
    codes: &[i8],
    act: &[u8],
    (n, m, k): (usize, usize, usize),
    out: &mut [i32],
    isa: Option<Avx2>,
    par: Par,
) -> Result<()> {
    let op = "ternary_gemm_u8";
    let fits = n.checked_mul(k) == Some(codes.len())
        && m.checked_mul(k) == Some(act.len())
        && n.checked_mul(m) == Some(out.len())
        && k <= 1 << 23; // 255 · 2^23 < 2^31
    if !fits {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: vec![codes.len(), act.len(), out.len()],
            rhs: vec![n, m, k],
        });
    }
    if n == 0 || m == 0 {
        return Ok(());
    }
    if k == 0 {
        out.fill(0);
        return Ok(());
    }
    crate::for_each_chunk(
        par,
        out,
        m,
        || (),
        |_, i, o| row(isa, &codes[i * k..(i + 1) * k], act, k, o),
    );
    Ok(())
}

/// Quantises activations to `u8` with step `scale` and zero point `zero` (x ≈ scale·(q − zero);
/// `zero = 0` for post-ReLU inputs): `q = ⌊x / scale + zero + ½⌋` clamped to 0..=255 (round half
/// up; NaN gives `zero`). AVX2 where the CPU has it (the same bits as the portable loop: one
/// multiply and one add, no FMA), split over the rayon pool in blocks with `Par::Rayon` (each
/// element is independent, so the bits do not depend on the split).
pub fn quantize_u8(x: &[f32], scale: f32, zero: u8, out: &mut [u8], par: Par) {
    quantize_u8_with(Avx2::detect(), x, scale, zero, as_uninit(out), par);
}

/// `out` as write-only slots (the quantiser writes every one it is given).
fn as_uninit(out: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: same layout; only initialised bytes are ever written through the result.
    unsafe { &mut *(out as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

/// [`quantize_u8`] into a fresh vector of `x.len()` codes (not zero-filled first).
pub fn quantize_u8_vec(x: &[f32], scale: f32, zero: u8, par: Par) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len());
    quantize_u8_with(
        Avx2::detect(),
        x,
        scale,
        zero,
        &mut out.spare_capacity_mut()[..x.len()],
        par,
    );
    // SAFETY: `quantize_u8_with` wrote all `x.len()` slots (its chunks cover them exactly); a
    // panic inside propagates before this line and the vector stays empty.
    unsafe { out.set_len(x.len()) };
    out
}

/// [`quantize_u8`] on the kernel `isa` (`None`: the portable loop; tests compare both).
fn quantize_u8_with(
    isa: Option<Avx2>,
    x: &[f32],
    scale: f32,
    zero: u8,
    out: &mut [MaybeUninit<u8>],
    par: Par,
) {
    let inv = 1.0 / scale;
    let z = zero as f32 + 0.5;
    let n = out.len().min(x.len());
    crate::for_each_chunk(
        par,
        &mut out[..n],
        1 << 14,
        || (),
        |_, i, o| {
            let src = &x[i << 14..][..o.len()];
            let done = match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: an `Avx2` token exists only after run-time detection of AVX2.
                Some(_) => unsafe { quantize_avx2(src, inv, z, o) },
                _ => 0,
            };
            for (o, &v) in o[done..].iter_mut().zip(&src[done..]) {
                o.write(quantize_one(v, inv, z));
            }
        },
    );
}

/// One code: `⌊x·inv + z⌋` clamped to 0..=255 with `inv = 1/scale`, `z = zero + ½` (NaN as
/// 0.0; truncation of a value >= 0 is ⌊·⌋). `f32::max` takes 0 when the sum is NaN (0·∞), as
/// `NaN as u8` would; the clamped value then always converts exactly, so the unchecked
/// conversion (which vectorises, unlike the saturating `as`) is sound.
#[inline(always)]
pub(crate) fn quantize_one(v: f32, inv: f32, z: f32) -> u8 {
    let v = if v.is_nan() { 0.0 } else { v };
    #[allow(clippy::manual_clamp)] // clamp would keep a NaN; max(NaN, 0) is 0
    let t = (v * inv + z).max(0.0).min(255.5);
    // SAFETY: `t` is in 0.0..=255.5 (never NaN: `max` returns the non-NaN operand), so it
    // truncates to an i32 in 0..=255.
    unsafe { t.to_int_unchecked::<i32>() as u8 }
}

/// The quantiser's whole 32-element blocks of `x` into `out` (same lengths); returns how many
/// were written. Bit for bit the portable loop: NaN lanes are zeroed before the multiply, and
/// `max(t, 0)` takes 0 when `t` is NaN (0·∞), as the scalar `NaN as u8` does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(x: &[f32], inv: f32, z: f32, out: &mut [MaybeUninit<u8>]) -> usize {
    use std::arch::x86_64::*;
    let n = x.len().min(out.len()) / 32 * 32;
    let (vi, vz) = (_mm256_set1_ps(inv), _mm256_set1_ps(z));
    let (lo, hi) = (_mm256_setzero_ps(), _mm256_set1_ps(255.5));
    // packs work within 128-bit lanes: this puts the four 8-byte groups back in order
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let code = |p: *const f32| {
        // SAFETY: the caller's loop bounds the 8 floats read at `p`.
        let v = unsafe { _mm256_loadu_ps(p) };
        let v = _mm256_andnot_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q), v);
        let t = _mm256_add_ps(_mm256_mul_ps(v, vi), vz);
        _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(t, lo), hi))
    };
    let mut i = 0;
    while i < n {
        let p = x.as_ptr().add(i);
        let a = _mm256_packs_epi32(code(p), code(p.add(8)));
        let b = _mm256_packs_epi32(code(p.add(16)), code(p.add(24)));
        let q = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(a, b), order);
        // SAFETY: i + 32 <= n <= out.len() bounds the 32-byte store.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, q) };
        i += 32;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The plain triple loop, in i64 (no overflow possible).
    fn reference(codes: &[i8], act: &[u8], n: usize, m: usize, k: usize) -> Vec<i32> {
        let mut out = vec![0i32; n * m];
        for i in 0..n {
            for j in 0..m {
                let s: i64 = (0..k)
                    .map(|t| codes[i * k + t] as i64 * act[j * k + t] as i64)
                    .sum();
                out[i * m + j] = s as i32;
            }
        }
        out
    }

    /// Exact against the reference on random shapes (every k from 0 to 70 for the vector
    /// tails, then larger), for the scalar path, the detected path and both `Par` modes,
    /// including the extremes (all codes −1 against 255).
    #[test]
    fn exact_against_the_scalar_reference() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut shapes: Vec<(usize, usize, usize)> = (0..=70).map(|k| (3, 5, k)).collect();
        shapes.extend([(16, 64, 144), (32, 7, 288), (1, 1, 4096), (9, 33, 577)]);
        for (n, m, k) in shapes {
            let codes: Vec<i8> = (0..n * k).map(|_| rng.random_range(-1i8..=1)).collect();
            let act: Vec<u8> = (0..m * k).map(|_| rng.random()).collect();
            let want = reference(&codes, &act, n, m, k);
            for isa in [None, Avx2::detect()] {
                for par in [Par::Seq, Par::Rayon] {
                    let mut out = vec![7i32; n * m];
                    ternary_gemm_u8(&codes, &act, (n, m, k), &mut out, isa, par).unwrap();
                    assert_eq!(out, want, "n {n} m {m} k {k} isa {isa:?} {par:?}");
                }
            }
        }
        let (n, m, k) = (2, 3, 1000);
        let codes = vec![-1i8; n * k];
        let act = vec![255u8; m * k];
        let mut out = vec![0; n * m];
        ternary_gemm_u8(
            &codes,
            &act,
            (n, m, k),
            &mut out,
            Avx2::detect(),
            Par::Rayon,
        )
        .unwrap();
        assert!(out.iter().all(|&v| v == -255_000));
    }

    #[test]
    fn quantize_rounds_and_clamps() {
        let mut q = [9u8; 4];
        quantize_u8(&[-1.0, f32::NAN, 0.5, 1e9], 0.25, 0, &mut q, Par::Seq);
        assert_eq!(q, [0, 0, 2, 255]);
        quantize_u8(&[-1.0, f32::NAN, 0.5, -1e9], 0.25, 10, &mut q, Par::Seq);
        assert_eq!(q, [6, 10, 12, 0]);
        // halves round up; 254.6 rounds to 255, not past it
        let mut q = [0u8; 4];
        quantize_u8(&[0.125, -0.125, 63.65, 63.9], 0.25, 1, &mut q, Par::Seq);
        assert_eq!(q, [2, 1, 255, 255]);
        // the rayon split gives the same bytes
        let x: Vec<f32> = (0..100_000)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect();
        let (mut a, mut b) = (vec![0u8; x.len()], vec![0u8; x.len()]);
        quantize_u8(&x, 0.03, 100, &mut a, Par::Seq);
        quantize_u8(&x, 0.03, 100, &mut b, Par::Rayon);
        assert_eq!(a, b);
        assert_eq!(quantize_u8_vec(&x, 0.03, 100, Par::Rayon), a);
    }

    /// The AVX2 quantiser gives the portable loop's bytes on every kind of value: halves,
    /// both clamps, NaN, ±∞, subnormals, −0.0, and a step so small that 0·(1/step) is NaN.
    #[test]
    fn quantize_avx2_is_the_portable_loop() {
        let Some(t) = Avx2::detect() else { return };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            1e-40,
            -1e-40,
            f32::MAX,
            f32::MIN,
        ];
        // lengths around the 32-element blocks and the 2^14 rayon chunks
        for len in [0, 1, 31, 32, 33, 95, 1 << 14, (1 << 14) + 77] {
            let x: Vec<f32> = (0..len)
                .map(|i| match i % 7 {
                    0 => special[rng.random_range(0..special.len())],
                    1 => (rng.random_range(-600i32..600) as f32 + 0.5) * 0.25, // exact halves
                    _ => rng.random_range(-80.0f32..80.0),
                })
                .collect();
            for (scale, zero) in [(0.25, 0), (0.3, 131), (1e-3, 255), (1e-45, 7)] {
                let (mut a, mut b) = (vec![1u8; len], vec![2u8; len]);
                quantize_u8_with(None, &x, scale, zero, as_uninit(&mut a), Par::Seq);
                quantize_u8_with(Some(t), &x, scale, zero, as_uninit(&mut b), Par::Rayon);
                assert_eq!(a, b, "len {len} scale {scale} zero {zero}");
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut out = vec![0; 6];
        let e = ternary_gemm_u8(&[0; 5], &[0; 9], (2, 3, 3), &mut out, None, Par::Seq);
        assert!(matches!(e, Err(TensorError::ShapeMismatch { .. })));
    }
}
