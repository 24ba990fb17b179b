//! Ternary inference kernel: a convolution computed from the 2-bit codes with additions only in
//! its inner loop (the stretch goal of the export format).
//!
//! For output channel j with positive index set P_j and negative set N_j (over the fan-in
//! k = (c, k_h, k_w) of its group), and the im2col matrix `cols[k, p]` of one sample:
//! `y[j, p] = α_j · Σ_{k∈P_j} cols[k, p] − β_j · Σ_{k∈N_j} cols[k, p]` (β_j = α_neg_j, = α_j for
//! HLA/TWN). The two sums are whole-row additions of `cols` (vectorisable, no multiplies); the two
//! scales are applied once per output element. Summation order differs from the f32 GEMM, so
//! results agree with the fake-quantised conv within f32 rounding (tested), not bit for bit.
//!
//! Speed (measured with `bench_ternary_conv`, 128→128 3×3 conv, 16×16, batch 8, 80 % zeros, one
//! thread, on a shared 2-core machine): 0.5–0.8× the throughput of the f32 im2col + GEMM conv,
//! i.e. *not* faster. The GEMM's SIMD FMAs over contiguous panels beat the gather of 20 % of the
//! im2col rows; a faster kernel would need bit-sliced codes or a transposed (position-major)
//! layout. The packed inference path therefore uses the dequantised f32 weights.

use crate::error::{HlaError, Result};
use crate::export::PackedLayer;
use hla_autograd::Conv2dParams;
use ndarray::{Array4, ArrayView3, ArrayView4};

/// A packed conv weight decoded into index lists, ready for [`ternary_conv2d`].
#[derive(Clone, Debug)]
pub struct TernaryConvWeight {
    /// `[c_out, c_in/groups, k_h, k_w]`.
    pub shape: [usize; 4],
    pos: Vec<Vec<u32>>,
    neg: Vec<Vec<u32>>,
    alpha: Vec<f32>,
    beta: Vec<f32>,
}

impl TernaryConvWeight {
    /// Decodes a packed 4-D weight.
    ///
    /// # Errors
    /// `BadRank` for a non-4-D weight; `Format` for malformed codes.
    pub fn from_packed(l: &PackedLayer) -> Result<Self> {
        let shape: [usize; 4] = l.shape.clone().try_into().map_err(|_| HlaError::BadRank {
            op: "ternary_conv2d",
            min_rank: 4,
            shape: l.shape.clone(),
        })?;
        let codes = l.codes_i8()?;
        let m = shape[1] * shape[2] * shape[3];
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for j in 0..shape[0] {
            let row = &codes[j * m..(j + 1) * m];
            pos.push((0..m as u32).filter(|&k| row[k as usize] == 1).collect());
            neg.push((0..m as u32).filter(|&k| row[k as usize] == -1).collect());
        }
        Ok(Self {
            shape,
            pos,
            neg,
            alpha: l.alpha.clone(),
            beta: l.alpha_neg.clone().unwrap_or_else(|| l.alpha.clone()),
        })
    }
}

/// im2col of one group of one sample: `cols[k, p]`, k over (c, k_h, k_w), p over (h_out, w_out).
fn im2col(
    x: ArrayView3<'_, f32>,
    k: (usize, usize),
    p: &Conv2dParams,
    out_hw: (usize, usize),
    cols: &mut [f32],
) {
    let (cg, h, w) = x.dim();
    let (ho, wo) = out_hw;
    let npos = ho * wo;
    for c in 0..cg {
        let plane_v = x.slice(ndarray::s![c, .., ..]);
        let plane_owned;
        let plane: &[f32] = match plane_v.as_slice() {
            Some(sl) => sl,
            None => {
                plane_owned = plane_v.to_owned().into_raw_vec_and_offset().0;
                &plane_owned
            }
        };
        for ki in 0..k.0 {
            for kj in 0..k.1 {
                let row = (c * k.0 + ki) * k.1 + kj;
                let dst = &mut cols[row * npos..(row + 1) * npos];
                for oy in 0..ho {
                    let iy = (oy * p.stride.0 + ki * p.dilation.0) as isize - p.padding.0 as isize;
                    for ox in 0..wo {
                        let ix =
                            (ox * p.stride.1 + kj * p.dilation.1) as isize - p.padding.1 as isize;
                        dst[oy * wo + ox] =
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                plane[iy as usize * w + ix as usize]
                            } else {
                                0.0
                            };
                    }
                }
            }
        }
    }
}

/// `acc += Σ_{k ∈ rows} cols[k, p0 .. p0 + CHUNK]` (additions only).
#[inline]
fn add_rows(acc: &mut [f32; CHUNK], cols: &[f32], rows: &[u32], npos: usize, p0: usize) {
    for &k in rows {
        let start = k as usize * npos + p0;
        let row: &[f32; CHUNK] = cols[start..start + CHUNK]
            .try_into()
            .expect("CHUNK-long slice");
        for i in 0..CHUNK {
            acc[i] += row[i];
        }
    }
}

/// Positions per accumulator block.
const CHUNK: usize = 64;

/// Convolution with a ternary weight, additions only in the inner loop.
///
/// # Shapes
/// `x`: `[n, c_in, h, w]`, weight `[c_out, c_in/groups, k_h, k_w]` → `[n, c_out, h_out, w_out]`.
/// # Errors
/// `ShapeMismatch` if `c_in` does not match the weight and groups.
pub fn ternary_conv2d(
    x: ArrayView4<'_, f32>,
    w: &TernaryConvWeight,
    p: &Conv2dParams,
) -> Result<Array4<f32>> {
    let [c_out, cg, kh, kw] = w.shape;
    let (n, c_in, h, wd) = x.dim();
    let g = p.groups.max(1);
    if cg * g != c_in || c_out % g != 0 {
        return Err(HlaError::ShapeMismatch {
            op: "ternary_conv2d",
            lhs: x.shape().to_vec(),
            rhs: w.shape.to_vec(),
        });
    }
    let out_hw = p.output_hw(h, wd, kh, kw).map_err(|e| HlaError::State {
        op: "ternary_conv2d",
        reason: e.to_string(),
    })?;
    let npos = out_hw.0 * out_hw.1;
    let per_group = c_out / g;
    let mut y = Array4::<f32>::zeros((n, c_out, out_hw.0, out_hw.1));
    let mut cols = vec![0f32; cg * kh * kw * npos];
    for s in 0..n {
        for gi in 0..g {
            let xg = x.slice(ndarray::s![s, gi * cg..(gi + 1) * cg, .., ..]);
            im2col(xg, (kh, kw), p, out_hw, &mut cols);
            for j in gi * per_group..(gi + 1) * per_group {
                let (a, b) = (w.alpha[j], w.beta[j]);
                let mut out = y.slice_mut(ndarray::s![s, j, .., ..]);
                let out = out.as_slice_mut().expect("fresh array is contiguous");
                // blocks of CHUNK positions keep both accumulators in registers while the
                // selected rows of `cols` stream past: pure additions in the inner loop
                let mut p0 = 0;
                while p0 < npos {
                    let len = CHUNK.min(npos - p0);
                    let mut acc_p = [0f32; CHUNK];
                    let mut acc_n = [0f32; CHUNK];
                    if len == CHUNK {
                        // fixed-length blocks: the compiler unrolls and vectorises the adds
                        add_rows(&mut acc_p, &cols, &w.pos[j], npos, p0);
                        add_rows(&mut acc_n, &cols, &w.neg[j], npos, p0);
                    } else {
                        for &k in &w.pos[j] {
                            let row = &cols[k as usize * npos + p0..k as usize * npos + p0 + len];
                            for (a, &v) in acc_p[..len].iter_mut().zip(row) {
                                *a += v;
                            }
                        }
                        for &k in &w.neg[j] {
                            let row = &cols[k as usize * npos + p0..k as usize * npos + p0 + len];
                            for (a, &v) in acc_n[..len].iter_mut().zip(row) {
                                *a += v;
                            }
                        }
                    }
                    for (i, o) in out[p0..p0 + len].iter_mut().enumerate() {
                        *o = a * acc_p[i] - b * acc_n[i];
                    }
                    p0 += len;
                }
            }
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EmptyRow;
    use crate::ternary::ternarize_rows;
    use hla_autograd::Par;
    use ndarray::{Array2, ArrayD};
    use rand::{Rng, SeedableRng};

    fn case(
        seed: u64,
        x_shape: [usize; 4],
        w_shape: [usize; 4],
        sym: bool,
    ) -> (Array4<f32>, PackedLayer) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let x = Array4::from_shape_fn(x_shape, |_| rng.random_range(-1.0f32..1.0));
        let m = w_shape[1] * w_shape[2] * w_shape[3];
        let w = Array2::from_shape_fn((w_shape[0], m), |_| rng.random_range(-1.0f32..1.0));
        let t = ternarize_rows(w.view(), 0.6, EmptyRow::Zero);
        let mut l = PackedLayer::from_ternary("w", &w_shape, &t).unwrap();
        if !sym {
            l.alpha_neg = Some(l.alpha.iter().map(|a| a * 0.5).collect());
        }
        (x, l)
    }

    /// Agrees with the f32 im2col/GEMM conv of the dequantised weight (groups 1, 2, depthwise;
    /// stride 2, padding 1, dilation 2; asymmetric scales).
    #[test]
    fn matches_dense_conv_of_dequantised_weight() {
        for (g, xs, ws, p, sym) in [
            (1, [2, 3, 7, 6], [5, 3, 3, 3], Conv2dParams::new(1, 1), true),
            (
                2,
                [2, 4, 6, 5],
                [6, 2, 3, 3],
                Conv2dParams::new(2, 1).with_groups(2),
                false,
            ),
            (
                4,
                [1, 4, 5, 5],
                [4, 1, 3, 3],
                Conv2dParams::new(1, 2).with_groups(4).with_dilation(2),
                true,
            ),
        ] {
            let (x, l) = case(g as u64, xs, ws, sym);
            let tw = TernaryConvWeight::from_packed(&l).unwrap();
            let got = ternary_conv2d(x.view(), &tw, &p).unwrap();
            let wd: ArrayD<f32> = l.dequantize().unwrap();
            let wd = wd.into_dimensionality::<ndarray::Ix4>().unwrap();
            let want = hla_tensor::conv2d(x.view(), wd.view(), None, &p, Par::Seq).unwrap();
            assert_eq!(got.dim(), want.dim());
            for (a, b) in got.iter().zip(want.iter()) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "groups {g}: {a} vs {b}"
                );
            }
        }
    }

    /// Throughput of the ternary kernel vs the f32 conv on a ResNet-18 layer2-like 3×3 conv
    /// (128→128 channels, 16×16, batch 8) at 80 % sparsity; prints the speed ratio.
    /// Run: `cargo test -p hla-core --release -- --ignored --nocapture bench_ternary_conv`
    /// (ignored: a timing, not a check, and slow in debug builds).
    #[test]
    #[ignore]
    fn bench_ternary_conv() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let x = Array4::from_shape_fn([8, 128, 16, 16], |_| rng.random_range(-1.0f32..1.0));
        let w = Array2::from_shape_fn((128, 128 * 9), |_| rng.random_range(-1.0f32..1.0));
        let t = ternarize_rows(w.view(), 0.8, EmptyRow::Zero);
        let l = PackedLayer::from_ternary("w", &[128, 128, 3, 3], &t).unwrap();
        let tw = TernaryConvWeight::from_packed(&l).unwrap();
        let wd = l
            .dequantize()
            .unwrap()
            .into_dimensionality::<ndarray::Ix4>()
            .unwrap();
        let p = Conv2dParams::new(1, 1);
        let time = |f: &dyn Fn()| {
            f();
            let t0 = std::time::Instant::now();
            for _ in 0..5 {
                f();
            }
            t0.elapsed().as_secs_f64() / 5.0
        };
        let tt = time(&|| {
            ternary_conv2d(x.view(), &tw, &p).unwrap();
        });
        let tf = time(&|| {
            hla_tensor::conv2d(x.view(), wd.view(), None, &p, Par::Seq).unwrap();
        });
        println!(
            "ternary {:.2} ms, f32 (Par::Seq) {:.2} ms, f32/ternary = {:.2}x",
            tt * 1e3,
            tf * 1e3,
            tf / tt
        );
    }
}
