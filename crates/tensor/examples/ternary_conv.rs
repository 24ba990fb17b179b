//! Times the W2A8 convolution against the f32 convolution on ResNet-20's layer shapes
//! (same process, same threads):
//!
//!     cargo run --release -p hla-tensor --example ternary_conv -- [batch]
//!
//! Prints, per shape, ms per call of both and their ratio, and the integer kernel in use.

use hla_tensor::ternary_conv::{ternary_conv2d_u8, Int8Isa, PackedCodes, QuantInput, TernaryConv};
use hla_tensor::{conv2d, Conv2dParams, Par};
use ndarray::{Array1, Array4};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e3
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    println!(
        "batch {n}; W2A8 with every integer kernel this CPU has (the first is the scalar one)"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for (c, c_out, hw, stride) in [
        (16, 16, 32, 1),
        (16, 32, 32, 2),
        (32, 32, 16, 1),
        (64, 64, 8, 1),
    ] {
        let p = Conv2dParams::new(stride, 1);
        let k = c * 9;
        let codes: Vec<i8> = (0..c_out * k).map(|_| rng.random_range(-1i8..=1)).collect();
        let alpha = vec![0.1f32; c_out];
        let q = Array4::from_shape_fn((n, c, hw, hw), |_| rng.random::<u8>());
        let xf = q.mapv(|v| v as f32 * 0.01);
        let wf = Array4::from_shape_fn((c_out, c, 3, 3), |(j, ci, a, b)| {
            codes[((j * c + ci) * 3 + a) * 3 + b] as f32 * 0.1
        });
        let bias = Array1::<f32>::zeros(c_out);
        let pc = PackedCodes::for_conv(&codes, [c_out, c, 3, 3], 1).unwrap();
        let w = TernaryConv {
            codes: &pc,
            magnitudes: None,
            kernel: (3, 3),
            alpha: &alpha,
            alpha_neg: None,
            bias: None,
            norms: None,
            residual: None,
            act: hla_tensor::ternary_conv::Activation::None,
        };
        let x = QuantInput {
            q: q.view(),
            scale: 0.01,
            zero: 0,
        };
        let tf = time(|| {
            conv2d(xf.view(), wf.view(), Some(bias.view()), &p, Par::Rayon).unwrap();
        });
        let mut line =
            format!("{c:>3} -> {c_out:>3}, {hw:>2}x{hw:<2} stride {stride}: f32 {tf:7.2} ms");
        for isa in Int8Isa::available().into_iter().skip(1) {
            let ti = time(|| {
                ternary_conv2d_u8(&x, &w, &p, isa, Par::Rayon).unwrap();
            });
            line += &format!("  {} {ti:6.2} ms ({:.2}x)", isa.name(), tf / ti);
        }
        println!("{line}");
    }
}
