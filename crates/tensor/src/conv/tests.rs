use super::direct::{detect, Direct, Kernel};
use super::geom::{dims4, Geom, FORCE_AVX2, FORCE_KERNEL, NO_DIRECT};
use super::*;
use crate::activation::Activation;
use crate::testutil::{
    bits, check_fd, hw_swapped, inner, max_rel_err, naive_conv2d, naive_conv2d_backward,
    rand_array, to_f64,
};
use crate::{Par, TensorError};
use ndarray::Array1;
use ndarray::{Array4, ArrayView4};

/// One convolution case: shapes and parameters.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c_in: usize,
    c_out: usize,
    hw: (usize, usize),
    k: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
    groups: usize,
}

impl Case {
    fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: self.stride,
            padding: self.pad,
            dilation: self.dil,
            groups: self.groups,
        }
    }
    fn x_shape(&self) -> (usize, usize, usize, usize) {
        (self.n, self.c_in, self.hw.0, self.hw.1)
    }
    fn w_shape(&self) -> (usize, usize, usize, usize) {
        (self.c_out, self.c_in / self.groups, self.k.0, self.k.1)
    }
    fn y_shape(&self) -> (usize, usize, usize, usize) {
        let (ho, wo) = self
            .params()
            .output_hw(self.hw.0, self.hw.1, self.k.0, self.k.1)
            .unwrap();
        (self.n, self.c_out, ho, wo)
    }
}

#[allow(clippy::too_many_arguments)]
fn case(
    n: usize,
    c_in: usize,
    c_out: usize,
    hw: (usize, usize),
    k: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
    groups: usize,
) -> Case {
    Case {
        n,
        c_in,
        c_out,
        hw,
        k,
        stride,
        pad,
        dil,
        groups,
    }
}

/// A rayon pool of `k` threads.
pub(super) fn pool(k: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(k)
        .build()
        .unwrap()
}

/// Odd sizes, stride 1/2/3, padding, dilation, groups 1/2/3/C (and a channel multiplier),
/// batch 1 and 3, non-square kernels, 1×1 kernels, a kernel as large as the padded input.
fn cases() -> Vec<Case> {
    vec![
        case(1, 3, 5, (7, 9), (3, 3), (1, 1), (1, 1), (1, 1), 1),
        case(3, 4, 6, (8, 7), (3, 2), (2, 2), (1, 0), (1, 1), 2),
        case(3, 6, 6, (9, 11), (3, 3), (2, 1), (1, 1), (1, 1), 6),
        case(1, 6, 12, (7, 7), (3, 3), (1, 1), (2, 2), (2, 2), 6),
        case(3, 4, 8, (5, 7), (1, 1), (1, 1), (0, 0), (1, 1), 1),
        case(3, 4, 6, (5, 7), (1, 1), (1, 1), (0, 0), (1, 1), 2),
        case(3, 4, 6, (7, 7), (1, 1), (2, 2), (0, 0), (1, 1), 1),
        case(1, 2, 3, (6, 5), (1, 3), (2, 1), (0, 1), (2, 2), 1),
        case(3, 5, 4, (10, 9), (5, 3), (3, 3), (2, 1), (1, 1), 1),
        case(1, 1, 4, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1),
        case(3, 6, 6, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1), 3),
        case(1, 2, 2, (3, 4), (5, 6), (1, 1), (1, 1), (1, 1), 1),
        case(3, 5, 5, (6, 7), (2, 3), (2, 2), (1, 1), (2, 1), 5),
    ]
}

#[test]
fn conv2d_forward_matches_naive_f64_and_f32() {
    for (i, c) in cases().into_iter().enumerate() {
        let p = c.params();
        let seed = 100 * i as u64;
        let x = rand_array::<f64, _, _>(c.x_shape(), seed);
        let w = rand_array::<f64, _, _>(c.w_shape(), seed + 1);
        let b: Array1<f64> = rand_array(c.c_out, seed + 2);
        let r = naive_conv2d(&x, &w, Some(&b), &p);
        let y = conv2d(x.view(), w.view(), Some(b.view()), &p, Par::Rayon).unwrap();
        assert_eq!(y.dim(), c.y_shape(), "{c:?}");
        let e = max_rel_err(&y, &r);
        assert!(e < 1e-13, "f64 {c:?}: max err {e}");

        let xf = rand_array::<f32, _, _>(c.x_shape(), seed);
        let wf = rand_array::<f32, _, _>(c.w_shape(), seed + 1);
        let rf = naive_conv2d(&to_f64(&xf), &to_f64(&wf), None, &p);
        let yf = conv2d(xf.view(), wf.view(), None, &p, Par::Rayon).unwrap();
        let e = max_rel_err(&to_f64(&yf), &rf);
        assert!(e < 1e-5, "f32 {c:?}: max err {e}");
    }
}

#[test]
fn conv2d_backward_matches_naive_f64_and_f32() {
    for (i, c) in cases().into_iter().enumerate() {
        let p = c.params();
        let seed = 100 * i as u64 + 7;
        let x = rand_array::<f64, _, _>(c.x_shape(), seed);
        let w = rand_array::<f64, _, _>(c.w_shape(), seed + 1);
        let dy = rand_array::<f64, _, _>(c.y_shape(), seed + 2);
        let (rdx, rdw) = naive_conv2d_backward(&x, &w, &dy, &p);
        let dx = conv2d_backward_input(dy.view(), w.view(), c.hw, &p, Par::Rayon).unwrap();
        let dw = conv2d_backward_weight(x.view(), dy.view(), c.k, &p, Par::Rayon).unwrap();
        assert!(max_rel_err(&dx, &rdx) < 1e-13, "f64 dx {c:?}");
        assert!(max_rel_err(&dw, &rdw) < 1e-13, "f64 dw {c:?}");

        let (xf, wf, dyf) = (
            x.mapv(|v| v as f32),
            w.mapv(|v| v as f32),
            dy.mapv(|v| v as f32),
        );
        let (rdx, rdw) = naive_conv2d_backward(&to_f64(&xf), &to_f64(&wf), &to_f64(&dyf), &p);
        let dx = conv2d_backward_input(dyf.view(), wf.view(), c.hw, &p, Par::Rayon).unwrap();
        let dw = conv2d_backward_weight(xf.view(), dyf.view(), c.k, &p, Par::Rayon).unwrap();
        assert!(max_rel_err(&to_f64(&dx), &rdx) < 1e-5, "f32 dx {c:?}");
        assert!(max_rel_err(&to_f64(&dw), &rdw) < 1e-5, "f32 dw {c:?}");
    }
}

/// ⟨conv(x, w), g⟩ = ⟨x, conv_backward_input(g, w)⟩ = ⟨w, conv_backward_weight(x, g)⟩.
#[test]
fn conv2d_adjoint_identities() {
    for (i, c) in cases().into_iter().enumerate() {
        let p = c.params();
        let seed = 100 * i as u64 + 11;
        let x = rand_array::<f64, _, _>(c.x_shape(), seed);
        let w = rand_array::<f64, _, _>(c.w_shape(), seed + 1);
        let g = rand_array::<f64, _, _>(c.y_shape(), seed + 2);
        let y = conv2d(x.view(), w.view(), None, &p, Par::Seq).unwrap();
        let dx = conv2d_backward_input(g.view(), w.view(), c.hw, &p, Par::Seq).unwrap();
        let dw = conv2d_backward_weight(x.view(), g.view(), c.k, &p, Par::Seq).unwrap();
        let lhs = inner(&y, &g);
        assert!(
            (lhs - inner(&x, &dx)).abs() <= 1e-12 * (1.0 + lhs.abs()),
            "dx {c:?}"
        );
        assert!(
            (lhs - inner(&w, &dw)).abs() <= 1e-12 * (1.0 + lhs.abs()),
            "dw {c:?}"
        );
    }
}

/// L = Σ g ⊙ conv(x, w, b): analytic dL/dx, dL/dw, dL/db vs central differences.
#[test]
fn conv2d_gradients_match_finite_differences() {
    for (i, c) in cases().into_iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let p = c.params();
        let seed = 100 * i as u64 + 13;
        let x = rand_array::<f64, _, _>(c.x_shape(), seed);
        let w = rand_array::<f64, _, _>(c.w_shape(), seed + 1);
        let b: Array1<f64> = rand_array(c.c_out, seed + 2);
        let g = rand_array::<f64, _, _>(c.y_shape(), seed + 3);
        let loss = |x: &Array4<f64>, w: &Array4<f64>, b: &Array1<f64>| {
            inner(
                &conv2d(x.view(), w.view(), Some(b.view()), &p, Par::Seq).unwrap(),
                &g,
            )
        };
        let dx = conv2d_backward_input(g.view(), w.view(), c.hw, &p, Par::Seq).unwrap();
        let dw = conv2d_backward_weight(x.view(), g.view(), c.k, &p, Par::Seq).unwrap();
        let db = conv2d_backward_bias(g.view(), Par::Rayon);
        check_fd("conv2d dx", &x, &dx, |xp| loss(xp, &w, &b));
        check_fd("conv2d dw", &w, &dw, |wp| loss(&x, wp, &b));
        check_fd("conv2d db", &b, &db, |bp| loss(&x, &w, bp));
    }
}

fn all_outputs(c: &Case, par: Par) -> [Vec<u64>; 3] {
    let p = c.params();
    let x = rand_array::<f32, _, _>(c.x_shape(), 5);
    let w = rand_array::<f32, _, _>(c.w_shape(), 6);
    let dy = rand_array::<f32, _, _>(c.y_shape(), 7);
    let b: Array1<f32> = rand_array(c.c_out, 8);
    [
        bits(&conv2d(x.view(), w.view(), Some(b.view()), &p, par).unwrap()),
        bits(&conv2d_backward_input(dy.view(), w.view(), c.hw, &p, par).unwrap()),
        bits(&conv2d_backward_weight(x.view(), dy.view(), c.k, &p, par).unwrap()),
    ]
}

#[test]
fn conv2d_is_bit_identical_seq_vs_rayon() {
    for c in cases() {
        assert_eq!(
            all_outputs(&c, Par::Seq),
            all_outputs(&c, Par::Rayon),
            "{c:?}"
        );
    }
}

/// f32: the direct stride-1 kernels (when this CPU has them) and the im2col + GEMM path both
/// match the f64 naive reference, on the case matrix plus wider channel counts that fill
/// whole SIMD channel blocks.
#[test]
fn conv2d_f32_direct_and_im2col_paths_match_naive() {
    let mut cs = cases();
    cs.push(case(3, 16, 24, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1));
    cs.push(case(1, 32, 20, (5, 11), (3, 2), (1, 1), (2, 1), (2, 1), 2));
    cs.push(case(3, 16, 12, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1), 1));
    cs.push(case(2, 24, 10, (11, 13), (3, 2), (2, 3), (1, 2), (2, 1), 2));
    cs.push(case(2, 16, 8, (7, 7), (1, 1), (2, 2), (0, 0), (1, 1), 1));
    cs.push(case(1, 8, 8, (6, 6), (3, 3), (3, 3), (2, 2), (1, 1), 1));
    cs.push(case(3, 8, 40, (7, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1));
    cs.push(case(2, 12, 64, (9, 9), (3, 2), (2, 2), (1, 1), (1, 1), 2));
    // the channel-vectorised weight gradient (AVX-512, >= 32 channels) over more than one
    // chunk of 256 positions (323), with a partial channel block (40)
    cs.push(case(2, 6, 40, (19, 17), (3, 3), (1, 1), (1, 1), (1, 1), 1));
    for (i, c) in cs.into_iter().enumerate() {
        let p = c.params();
        let seed = 1000 + 10 * i as u64;
        let x = rand_array::<f32, _, _>(c.x_shape(), seed);
        let w = rand_array::<f32, _, _>(c.w_shape(), seed + 1);
        let dy = rand_array::<f32, _, _>(c.y_shape(), seed + 2);
        let (xd, wd, dyd) = (to_f64(&x), to_f64(&w), to_f64(&dy));
        let ry = naive_conv2d(&xd, &wd, None, &p);
        let (rdx, rdw) = naive_conv2d_backward(&xd, &wd, &dyd, &p);
        for (no_direct, avx2) in [(false, false), (false, true), (true, false)] {
            NO_DIRECT.with(|f| f.set(no_direct));
            FORCE_AVX2.with(|f| f.set(avx2));
            let y = conv2d(x.view(), w.view(), None, &p, Par::Rayon).unwrap();
            let dx = conv2d_backward_input(dy.view(), w.view(), c.hw, &p, Par::Rayon).unwrap();
            let dw = conv2d_backward_weight(x.view(), dy.view(), c.k, &p, Par::Rayon).unwrap();
            NO_DIRECT.with(|f| f.set(false));
            FORCE_AVX2.with(|f| f.set(false));
            assert!(
                max_rel_err(&to_f64(&y), &ry) < 1e-5,
                "y {c:?} no_direct={no_direct} avx2={avx2}"
            );
            assert!(
                max_rel_err(&to_f64(&dx), &rdx) < 1e-5,
                "dx {c:?} no_direct={no_direct} avx2={avx2}"
            );
            assert!(
                max_rel_err(&to_f64(&dw), &rdw) < 1e-5,
                "dw {c:?} no_direct={no_direct} avx2={avx2}"
            );
        }
    }
}

/// Convs with a few output channels (HLA's patch norms: one) take the narrow direct kernel;
/// each output is the same ordered sum of the same products as in the wide kernel, so the
/// first channels of a wide conv carry exactly the bits of the narrow conv of those channels,
/// on both instruction sets, at stride 1 and 2, with groups.
#[test]
fn narrow_direct_kernel_gives_the_wide_kernels_bits() {
    // the one-channel convs below really take the narrow kernel on this CPU
    for isa in [detect(), crate::conv::direct::detect_avx2()]
        .into_iter()
        .flatten()
    {
        let d = Direct {
            cin: 16,
            h: 9,
            w: 7,
            ph: 1,
            pw: 1,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            cout: 1,
            ho: 9,
            wo: 7,
        };
        assert_eq!(d.plan(isa).kernel, Kernel::Narrow, "{isa:?}");
    }
    for (c, narrow) in [
        (
            case(2, 16, 24, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1),
            1,
        ),
        (
            case(2, 32, 32, (8, 8), (3, 3), (2, 2), (1, 1), (1, 1), 1),
            2,
        ),
        (
            case(1, 16, 32, (11, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1),
            4,
        ),
        (
            case(2, 16, 32, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 2),
            1,
        ),
    ] {
        let p = c.params();
        let x = rand_array::<f32, _, _>(c.x_shape(), 41).mapv(|v| v * v);
        let w = rand_array::<f32, _, _>(c.w_shape(), 42);
        // the narrow conv: the first `narrow` output channels of every group
        let per = c.c_out / c.groups;
        let rows: Vec<usize> = (0..c.groups)
            .flat_map(|gi| (0..narrow).map(move |j| gi * per + j))
            .collect();
        let wn = w.select(ndarray::Axis(0), &rows);
        for avx2 in [false, true] {
            FORCE_AVX2.with(|f| f.set(avx2));
            let wide = conv2d(x.view(), w.view(), None, &p, Par::Rayon).unwrap();
            let thin = conv2d(x.view(), wn.view(), None, &p, Par::Rayon).unwrap();
            FORCE_AVX2.with(|f| f.set(false));
            let want = wide.select(ndarray::Axis(1), &rows);
            assert_eq!(
                bits(&thin),
                bits(&want),
                "{c:?} narrow={narrow} avx2={avx2}"
            );
        }
    }
}

/// Small planes take the row kernel (blocks within one output row) where the grid kernel
/// would compute many junk columns; both sum every output over the taps in the same order, so
/// forward and input gradient carry the same bits with either kernel, on both instruction
/// sets: whole rows, a row's rounded-up last block, rows wider than one block and than one
/// gathered store, stride 2, dilation, groups, a split batch-1 forward, several tap chunks and
/// several groups of parked blocks.
#[test]
fn row_kernel_gives_the_grid_kernels_bits() {
    // ResNet's last stage (7×7) and CIFAR ResNet-20's (8×8) take the row kernel unforced
    for hw in [7, 8] {
        let g = Geom::new(
            "t",
            [2, 64, hw, hw],
            [64, 64, 3, 3],
            &Conv2dParams::new(1, 1),
        )
        .unwrap();
        for isa in [detect(), crate::conv::direct::detect_avx2()]
            .into_iter()
            .flatten()
        {
            let (d, _) = g.direct_forward::<f32>().unwrap();
            assert_eq!(d.plan(isa).kernel, Kernel::Rows, "{hw}² {isa:?}");
        }
    }
    let cases = [
        case(2, 64, 64, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1),
        case(2, 32, 64, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), 1),
        case(1, 32, 32, (5, 13), (3, 3), (1, 1), (1, 1), (1, 1), 1),
        case(1, 32, 32, (4, 14), (3, 3), (1, 1), (1, 1), (1, 1), 1),
        case(2, 32, 32, (3, 27), (3, 3), (1, 1), (1, 1), (1, 1), 1),
        case(1, 32, 32, (3, 70), (3, 3), (1, 1), (1, 1), (1, 1), 1), // rows over `ROW_GATHER`
        case(2, 32, 64, (15, 15), (3, 3), (2, 2), (1, 1), (1, 1), 1),
        case(2, 32, 32, (9, 9), (3, 3), (1, 1), (2, 2), (2, 2), 1),
        case(2, 64, 64, (6, 7), (3, 3), (1, 1), (1, 1), (1, 1), 2),
        case(1, 256, 128, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1), // split over channels
    ];
    for c in cases {
        let p = c.params();
        let x = rand_array::<f32, _, _>(c.x_shape(), 51);
        let w = rand_array::<f32, _, _>(c.w_shape(), 52);
        let dy = rand_array::<f32, _, _>(c.y_shape(), 53);
        for avx2 in [false, true] {
            let run = |k| {
                FORCE_AVX2.with(|f| f.set(avx2));
                FORCE_KERNEL.with(|f| f.set(Some(k)));
                let y = conv2d(x.view(), w.view(), None, &p, Par::Rayon).unwrap();
                let dx = conv2d_backward_input(dy.view(), w.view(), c.hw, &p, Par::Rayon);
                FORCE_KERNEL.with(|f| f.set(None));
                FORCE_AVX2.with(|f| f.set(false));
                (bits(&y), bits(&dx.unwrap()))
            };
            let (grid, rows) = (run(Kernel::Grid), run(Kernel::Rows));
            assert_eq!(grid.0, rows.0, "forward {c:?} avx2={avx2}");
            assert_eq!(grid.1, rows.1, "input gradient {c:?} avx2={avx2}");
        }
    }
}

/// The channel-vectorised weight gradient blocks 64 channels × 6 taps where 64 divides the
/// channels and 32 × 8 otherwise; each channel's sum runs over the same samples and positions
/// in the same order either way, so the first 64 channels of a 96-channel weight gradient carry
/// exactly the bits of the 64-channel one (several position chunks, stride 1 and 2).
#[test]
fn weight_gradient_blocks_give_the_same_bits() {
    for c in [
        case(3, 8, 96, (23, 21), (3, 3), (1, 1), (1, 1), (1, 1), 1),
        case(2, 16, 96, (15, 16), (3, 3), (2, 2), (1, 1), (1, 1), 1),
    ] {
        let p = c.params();
        let x = rand_array::<f32, _, _>(c.x_shape(), 61);
        let dy = rand_array::<f32, _, _>(c.y_shape(), 62);
        let dy64 = dy.slice(ndarray::s![.., ..64, .., ..]);
        for avx2 in [false, true] {
            FORCE_AVX2.with(|f| f.set(avx2));
            let all = conv2d_backward_weight(x.view(), dy.view(), c.k, &p, Par::Rayon).unwrap();
            let first = conv2d_backward_weight(x.view(), dy64, c.k, &p, Par::Rayon).unwrap();
            FORCE_AVX2.with(|f| f.set(false));
            let want = all.slice(ndarray::s![..64, .., .., ..]).to_owned();
            assert_eq!(bits(&first), bits(&want), "{c:?} avx2={avx2}");
        }
    }
}

/// The fused epilogue gives exactly the bits of the conv followed by the activation, with
/// and without a bias, on every path (direct AVX-512 / AVX2, im2col, depthwise, 1×1).
#[test]
fn conv2d_act_is_conv2d_then_activation_bit_for_bit() {
    let mut cs = cases();
    cs.push(case(2, 16, 24, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1));
    cs.push(case(2, 16, 12, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1), 1));
    for (i, c) in cs.into_iter().enumerate() {
        let p = c.params();
        let seed = 3000 + 10 * i as u64;
        // Inputs in (-4, 4) so that ReLU6 clips at both ends.
        let x = rand_array::<f32, _, _>(c.x_shape(), seed).mapv(|v| 4.0 * v);
        let w = rand_array::<f32, _, _>(c.w_shape(), seed + 1);
        let b: Array1<f32> = rand_array(c.c_out, seed + 2);
        for (no_direct, avx2) in [(false, false), (false, true), (true, false)] {
            NO_DIRECT.with(|f| f.set(no_direct));
            FORCE_AVX2.with(|f| f.set(avx2));
            for bias in [None, Some(b.view())] {
                let y = conv2d(x.view(), w.view(), bias, &p, Par::Rayon).unwrap();
                for (act, r) in [
                    (Activation::None, y.clone().into_dyn()),
                    (Activation::Relu, crate::relu(y.view().into_dyn(), Par::Seq)),
                    (
                        Activation::Relu6,
                        crate::relu6(y.view().into_dyn(), Par::Seq),
                    ),
                ] {
                    let f = conv2d_act(x.view(), w.view(), bias, act, &p, Par::Rayon).unwrap();
                    assert_eq!(
                        bits(&f),
                        bits(&r),
                        "{c:?} {act:?} bias={} no_direct={no_direct} avx2={avx2}",
                        bias.is_some()
                    );
                }
            }
            NO_DIRECT.with(|f| f.set(false));
            FORCE_AVX2.with(|f| f.set(false));
        }
    }
}

/// The residual epilogue gives exactly the bits of the conv, then the bias, then the residual
/// added as a separate op, then the activation, on every path (direct AVX-512 / AVX2, im2col,
/// depthwise, 1×1, and a batch of one split over channel blocks or position ranges), with 1 and
/// 3 threads; a residual of another shape is refused, naming both shapes.
#[test]
fn conv2d_add_act_is_conv2d_then_sum_then_activation_bit_for_bit() {
    let mut cs = cases();
    cs.push(case(1, 32, 64, (32, 32), (3, 3), (1, 1), (1, 1), (1, 1), 1)); // channel blocks
    cs.push(case(1, 64, 96, (32, 32), (1, 1), (1, 1), (0, 0), (1, 1), 1)); // position ranges
    for (i, c) in cs.into_iter().enumerate() {
        let p = c.params();
        let seed = 4000 + 10 * i as u64;
        let x = rand_array::<f32, _, _>(c.x_shape(), seed).mapv(|v| 4.0 * v);
        let w = rand_array::<f32, _, _>(c.w_shape(), seed + 1);
        let b: Array1<f32> = rand_array(c.c_out, seed + 2);
        let y0 = conv2d(x.view(), w.view(), None, &p, Par::Seq).unwrap();
        let r = rand_array::<f32, _, _>(y0.raw_dim(), seed + 3).mapv(|v| 4.0 * v);
        for (no_direct, avx2) in [(false, false), (false, true), (true, false)] {
            for bias in [None, Some(b.view())] {
                let run = |threads: usize, act: Activation| {
                    pool(threads).install(|| {
                        NO_DIRECT.with(|f| f.set(no_direct));
                        FORCE_AVX2.with(|f| f.set(avx2));
                        let y = conv2d(x.view(), w.view(), bias, &p, Par::Rayon).unwrap();
                        let want = (&y + &r).mapv(|v| act.apply(v));
                        let mut cache = PackedWeights::default();
                        let (xv, wv, rv) = (x.view(), w.view(), r.view());
                        let got = conv2d_add_act_packed(
                            xv,
                            wv,
                            bias,
                            rv,
                            act,
                            &p,
                            Par::Rayon,
                            &mut cache,
                        );
                        (bits(&got.unwrap()), bits(&want))
                    })
                };
                for act in [Activation::None, Activation::Relu, Activation::Relu6] {
                    let (got, want) = run(1, act);
                    let msg = format!(
                        "{c:?} {act:?} bias={} no_direct={no_direct} avx2={avx2}",
                        bias.is_some()
                    );
                    assert_eq!(got, want, "{msg}");
                    assert_eq!(run(3, act).0, got, "3 threads: {msg}");
                }
            }
        }
    }
    let c = case(2, 16, 24, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1);
    let x = rand_array::<f32, _, _>(c.x_shape(), 1);
    let w = rand_array::<f32, _, _>(c.w_shape(), 2);
    let r = Array4::<f32>::zeros((2, 24, 9, 8));
    let mut cache = PackedWeights::default();
    let e = conv2d_add_act_packed(
        x.view(),
        w.view(),
        None,
        r.view(),
        Activation::Relu,
        &c.params(),
        Par::Seq,
        &mut cache,
    )
    .unwrap_err();
    assert!(
        matches!(&e, TensorError::ShapeMismatch { op: "conv2d", lhs, rhs }
            if lhs == &[2, 24, 9, 7] && rhs == &[2, 24, 9, 8]),
        "{e}"
    );
}

/// A kept packing gives `conv2d_act`'s bits on every call, and packs again for another weight
/// buffer, another input size or another instruction set (each step below would reuse a stale
/// packing otherwise); a weight view not in standard layout is packed from a copy, never kept.
#[test]
fn kept_packing_gives_conv2d_act_bits() {
    let c = case(1, 16, 24, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1);
    let p = c.params();
    let x = rand_array::<f32, _, _>(c.x_shape(), 1);
    let x2 = rand_array::<f32, _, _>((2, 16, 12, 10), 2);
    let w = rand_array::<f32, _, _>(c.w_shape(), 3);
    let w2 = rand_array::<f32, _, _>(c.w_shape(), 4);
    let b: Array1<f32> = rand_array(c.c_out, 5);
    // views of w and w2 not in standard layout: each call packs from a fresh copy, and the
    // second copy likely lands where the first was freed, so keeping a copy's packing would show
    let t = hw_swapped(&w);
    let w_t = t.view().permuted_axes([0, 1, 3, 2]);
    let t2 = hw_swapped(&w2);
    let w2_t = t2.view().permuted_axes([0, 1, 3, 2]);
    assert!(!w_t.is_standard_layout());
    let mut cache = PackedWeights::default();
    let steps = [
        (x.view(), w.view(), false),
        (x.view(), w.view(), false),
        (x.view(), w2.view(), false),
        (x2.view(), w2.view(), false),
        (x2.view(), w2.view(), true),
        (x2.view(), w2.view(), false),
        (x.view(), w_t, false),
        (x.view(), w2_t, false),
        (x.view(), w.view(), false),
    ];
    for (i, (xv, wv, avx2)) in steps.into_iter().enumerate() {
        FORCE_AVX2.with(|f| f.set(avx2));
        let act = Activation::Relu;
        let want = conv2d_act(xv, wv, Some(b.view()), act, &p, Par::Rayon).unwrap();
        let got =
            conv2d_act_packed(xv, wv, Some(b.view()), act, &p, Par::Rayon, &mut cache).unwrap();
        assert_eq!(bits(&got), bits(&want), "step {i}");
    }
    FORCE_AVX2.with(|f| f.set(false));
}

/// Batch 10 > DW_CHUNK, so the weight gradient really is split into several chunks.
/// Bias gradient: matches an f64 sum within f32 rounding, the same bits on 1 and 2 threads
/// and for a non-standard-layout `dy`.
#[test]
fn conv2d_backward_bias_matches_reference_and_thread_counts() {
    let dy = rand_array::<f32, _, _>((9, 5, 7, 6), 31);
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| conv2d_backward_bias(dy.view(), Par::Rayon))
    };
    let db = run(1);
    assert_eq!(bits(&db), bits(&run(2)));
    for (c, &v) in db.iter().enumerate() {
        let r: f64 = dy
            .index_axis(ndarray::Axis(1), c)
            .iter()
            .map(|&u| u as f64)
            .sum();
        assert!((v as f64 - r).abs() < 1e-5, "db[{c}] {v} vs {r}");
    }
    let t = dy
        .view()
        .permuted_axes([0, 1, 3, 2])
        .as_standard_layout()
        .into_owned();
    let t = t.view().permuted_axes([0, 1, 3, 2]);
    assert!(!t.is_standard_layout());
    assert_eq!(bits(&conv2d_backward_bias(t, Par::Rayon)), bits(&db));
}

/// A batch smaller than four splits each sample's output channels over several tasks
/// (`Geom::forward_split`), or a 1×1 conv's positions (`Geom::pointwise_columns`); every path
/// then gives each sample exactly the bits it gets in a batch of four (no split), with 1 and
/// 4 threads, on both instruction sets.
#[test]
fn split_forward_gives_each_sample_its_batch_bits() {
    // a CIFAR ResNet-20 conv at batch 1 (2.4 M multiply-adds) is not worth splitting
    let g = Geom::new(
        "t",
        [1, 32, 16, 16],
        [32, 32, 3, 3],
        &Conv2dParams::new(1, 1),
    );
    assert_eq!(g.unwrap().forward_split(8), 1);
    for c in [
        // large enough to split (SPLIT_MIN_WORK)
        case(4, 32, 64, (32, 32), (3, 3), (1, 1), (1, 1), (1, 1), 1), // direct
        case(4, 32, 64, (33, 31), (3, 3), (2, 2), (1, 1), (1, 1), 1), // direct stride 2
        case(4, 256, 128, (4, 4), (3, 3), (1, 1), (1, 1), (1, 1), 1), // small planes
        case(4, 64, 96, (32, 32), (1, 1), (1, 1), (0, 0), (1, 1), 1), // pointwise: positions
        case(4, 48, 64, (37, 45), (1, 1), (1, 1), (0, 0), (1, 1), 1), // ragged position ranges
        case(4, 256, 512, (8, 8), (1, 1), (1, 1), (0, 0), (1, 1), 1), // pointwise: channels
        case(4, 128, 64, (48, 48), (1, 1), (2, 2), (0, 0), (1, 1), 1), // 1×1 stride 2
        case(4, 64, 64, (96, 96), (3, 3), (1, 1), (1, 1), (1, 1), 64), // depthwise
        case(4, 32, 64, (96, 96), (3, 3), (1, 1), (1, 1), (1, 1), 32), // multiplier 2
        case(4, 32, 64, (32, 32), (3, 3), (1, 1), (1, 1), (1, 1), 2), // grouped: no split
    ] {
        let p = c.params();
        let x = rand_array::<f32, _, _>(c.x_shape(), 21);
        let w = rand_array::<f32, _, _>(c.w_shape(), 22);
        let b: Array1<f32> = rand_array(c.c_out, 23);
        for (no_direct, avx2) in [(false, false), (false, true), (true, false)] {
            NO_DIRECT.with(|f| f.set(no_direct));
            FORCE_AVX2.with(|f| f.set(avx2));
            let run = |x: ArrayView4<f32>, threads| {
                let y = pool(threads).install(|| {
                    NO_DIRECT.with(|f| f.set(no_direct));
                    FORCE_AVX2.with(|f| f.set(avx2));
                    let act = Activation::Relu;
                    conv2d_act(x, w.view(), Some(b.view()), act, &p, Par::Rayon).unwrap()
                });
                bits(&y)
            };
            let whole = run(x.view(), 1);
            let per = whole.len() / c.n;
            for n in 1..c.n {
                let g = Geom::new("t", [n, c.c_in, c.hw.0, c.hw.1], dims4(&w.view()), &p);
                let g = g.unwrap();
                let align = g
                    .direct_forward::<f32>()
                    .map_or(1, |(d, isa)| d.plan(isa).cob);
                let (split, cols) = (g.forward_split(align), g.pointwise_columns());
                // 1×1 stride 1 splits only a single sample (`POINTWISE_SPLIT_TASKS`), by
                // positions when the plane has more of them than the conv has channels
                let splits = (c.groups == 1 && (n == 1 || !g.pointwise())) || g.depthwise();
                assert_eq!(split.max(cols) > 1, splits, "{c:?} n={n}");
                let by_cols = splits && g.pointwise() && g.npix() > c.c_out;
                assert_eq!(cols > 1, by_cols, "{c:?} n={n}");
                assert!(
                    split == 1 || !by_cols,
                    "{c:?} n={n}: one split or the other"
                );
                let xn = x.slice(ndarray::s![..n, .., .., ..]);
                for threads in [1, 4] {
                    assert_eq!(
                        run(xn, threads),
                        whole[..n * per],
                        "{c:?} n={n} threads={threads} no_direct={no_direct} avx2={avx2}"
                    );
                }
            }
            NO_DIRECT.with(|f| f.set(false));
            FORCE_AVX2.with(|f| f.set(false));
        }
    }
}

/// `conv2d_backward_input_add` gives `acc + dx` with the bits of computing `dx` and then adding
/// it, on every path (direct stride 1 adds as it stores; the others add afterwards), both
/// instruction sets, 1, 2 and 4 threads, and an `acc` not in standard layout.
#[test]
fn backward_input_add_is_dx_then_sum_bit_for_bit() {
    let mut cs = cases();
    cs.push(case(3, 16, 24, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1));
    cs.push(case(2, 16, 12, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1), 1));
    for (i, c) in cs.into_iter().enumerate() {
        let p = c.params();
        let seed = 4000 + 10 * i as u64;
        let w = rand_array::<f32, _, _>(c.w_shape(), seed);
        let dy = rand_array::<f32, _, _>(c.y_shape(), seed + 1);
        let acc = rand_array::<f32, _, _>(c.x_shape(), seed + 2);
        // the same values in column-major order
        let mut acc_f = Array4::<f32>::zeros(ndarray::ShapeBuilder::f(c.x_shape()));
        acc_f.assign(&acc);
        for (no_direct, avx2) in [(false, false), (false, true), (true, false)] {
            let run = |threads: usize, f: &(dyn Fn() -> Array4<f32> + Sync)| {
                pool(threads).install(|| {
                    NO_DIRECT.with(|f| f.set(no_direct));
                    FORCE_AVX2.with(|f| f.set(avx2));
                    let out = f();
                    NO_DIRECT.with(|f| f.set(false));
                    FORCE_AVX2.with(|f| f.set(false));
                    out
                })
            };
            let dx = run(1, &|| {
                conv2d_backward_input(dy.view(), w.view(), c.hw, &p, Par::Seq).unwrap()
            });
            let want = bits(&(&acc + &dx));
            for threads in [1, 2, 4] {
                for a in [&acc, &acc_f] {
                    let got = run(threads, &|| {
                        let a = a.clone();
                        conv2d_backward_input_add(dy.view(), w.view(), c.hw, &p, Par::Rayon, a)
                            .unwrap()
                    });
                    assert_eq!(
                        bits(&got),
                        want,
                        "{c:?} threads={threads} no_direct={no_direct} avx2={avx2}"
                    );
                }
            }
        }
        // an accumulator of another shape is refused
        let (n, ci, h, wd) = c.x_shape();
        let bad = Array4::<f32>::zeros((n, ci + 1, h, wd));
        let err = conv2d_backward_input_add(dy.view(), w.view(), c.hw, &p, Par::Seq, bad);
        assert!(
            matches!(err, Err(TensorError::ShapeMismatch { .. })),
            "{c:?}: {err:?}"
        );
    }
}

#[test]
fn conv2d_is_bit_identical_with_1_and_2_threads() {
    for c in [
        case(10, 4, 6, (9, 7), (3, 3), (2, 1), (1, 1), (1, 1), 2),
        case(10, 6, 6, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 6),
        case(10, 4, 8, (5, 7), (1, 1), (1, 1), (0, 0), (1, 1), 1),
        case(10, 16, 24, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1),
        case(10, 16, 24, (9, 7), (3, 3), (2, 2), (1, 1), (1, 1), 1),
        case(10, 8, 40, (7, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    ] {
        let one = pool(1).install(|| all_outputs(&c, Par::Rayon));
        let two = pool(2).install(|| all_outputs(&c, Par::Rayon));
        assert_eq!(one, two, "{c:?}");
    }
}

#[test]
fn conv2d_rejects_bad_input_with_typed_errors() {
    let x = Array4::<f32>::zeros((2, 4, 5, 5));
    let p = Conv2dParams::new(1, 0);
    // Mismatched channels: w expects 3 input channels.
    let w = Array4::<f32>::zeros((6, 3, 3, 3));
    let e = conv2d(x.view(), w.view(), None, &p, Par::Seq).unwrap_err();
    assert_eq!(
        e,
        TensorError::ShapeMismatch {
            op: "conv2d",
            lhs: vec![2, 4, 5, 5],
            rhs: vec![6, 3, 3, 3]
        }
    );
    assert!(e.to_string().contains("conv2d") && e.to_string().contains("[6, 3, 3, 3]"));
    // Kernel larger than the padded input.
    let w = Array4::<f32>::zeros((6, 4, 7, 3));
    let e = conv2d(x.view(), w.view(), None, &Conv2dParams::new(1, 0), Par::Seq).unwrap_err();
    assert!(
        matches!(
            e,
            TensorError::KernelTooLarge {
                op: "conv2d",
                input: (5, 5),
                kernel: (7, 3),
                ..
            }
        ),
        "{e}"
    );
    // ... but fits once padded.
    assert!(conv2d(x.view(), w.view(), None, &Conv2dParams::new(1, 1), Par::Seq).is_ok());
    // Zero-sized dims.
    let x0 = Array4::<f32>::zeros((0, 4, 5, 5));
    let w = Array4::<f32>::zeros((6, 4, 3, 3));
    let e = conv2d(x0.view(), w.view(), None, &p, Par::Seq).unwrap_err();
    assert_eq!(
        e,
        TensorError::EmptyDim {
            op: "conv2d",
            shape: vec![0, 4, 5, 5]
        }
    );
    // Groups not dividing the channels.
    let w = Array4::<f32>::zeros((6, 2, 3, 3));
    let e = conv2d(x.view(), w.view(), None, &p.with_groups(3), Par::Seq).unwrap_err();
    assert_eq!(
        e,
        TensorError::BadGroups {
            op: "conv2d",
            c_in: 4,
            c_out: 6,
            groups: 3
        }
    );
    let e = conv2d_backward_weight(
        x.view(),
        Array4::<f32>::zeros((2, 6, 3, 3)).view(),
        (3, 3),
        &p.with_groups(3),
        Par::Seq,
    )
    .unwrap_err();
    assert_eq!(
        e,
        TensorError::BadGroups {
            op: "conv2d_backward_weight",
            c_in: 4,
            c_out: 6,
            groups: 3
        }
    );
    // Zero stride; bias of the wrong length; dy of the wrong shape.
    let w = Array4::<f32>::zeros((6, 4, 3, 3));
    assert!(matches!(
        conv2d(x.view(), w.view(), None, &Conv2dParams::new(0, 0), Par::Seq),
        Err(TensorError::InvalidParam { op: "conv2d", .. })
    ));
    let b = Array1::<f32>::zeros(5);
    assert!(matches!(
        conv2d(x.view(), w.view(), Some(b.view()), &p, Par::Seq),
        Err(TensorError::ShapeMismatch { op: "conv2d", .. })
    ));
    let dy = Array4::<f32>::zeros((2, 6, 4, 3));
    let e = conv2d_backward_input(dy.view(), w.view(), (5, 5), &p, Par::Seq).unwrap_err();
    assert_eq!(
        e,
        TensorError::ShapeMismatch {
            op: "conv2d_backward_input",
            lhs: vec![2, 6, 4, 3],
            rhs: vec![2, 6, 3, 3]
        }
    );
    let e = conv2d_backward_weight(x.view(), dy.view(), (3, 3), &p, Par::Seq).unwrap_err();
    assert!(
        matches!(
            e,
            TensorError::ShapeMismatch {
                op: "conv2d_backward_weight",
                ..
            }
        ),
        "{e}"
    );
}

/// Non-contiguous (transposed-then-permuted) inputs give the same result as contiguous ones.
#[test]
fn conv2d_accepts_non_contiguous_views() {
    let c = case(3, 4, 6, (7, 5), (3, 3), (1, 2), (1, 1), (1, 1), 2);
    let p = c.params();
    let x = rand_array::<f64, _, _>((3, 4, 5, 7), 1);
    let xt = x.view().permuted_axes([0, 1, 3, 2]);
    let w = rand_array::<f64, _, _>(c.w_shape(), 2);
    let y = conv2d(xt, w.view(), None, &p, Par::Seq).unwrap();
    let r = naive_conv2d(&xt.to_owned(), &w, None, &p);
    assert!(max_rel_err(&y, &r) < 1e-13);
}

#[test]
fn output_hw_follows_pytorch_formula() {
    let p = Conv2dParams::new(2, 1).with_dilation(2);
    // (h + 2·1 − 2·(3 − 1) − 1) / 2 + 1 with h = 9: (9 + 2 − 4 − 1) / 2 + 1 = 4; w = 8: 3 + 1
    assert_eq!(p.output_hw(9, 8, 3, 3).unwrap(), (4, 3));
}
