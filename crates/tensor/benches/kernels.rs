//! Kernel benchmark, a plain binary: `cargo bench -p hla-tensor [-- --torch FILE.json]`.
//!
//! Prints GFLOP/s for SGEMM 256/512/1024 (`matrixmultiply` through `gemm`/`gemm_par`, and the
//! `gemm` crate with its AVX-512 kernels for comparison) and forward / forward+backward time of
//! the CIFAR ResNet-20 convolutions at batch 128 and a MobileNetV2 depthwise 3×3, at 1 and 2
//! threads. Forward+backward = conv2d + input gradient + weight gradient (what
//! `../shared/bench/torch_conv_layers.py` times); its GFLOP/s count 3× the forward FLOPs.
//! With `--torch FILE` (the `--json` output of that script, same thread count) a ratio column
//! `torch ms / ours ms` is added (> 1 means faster than PyTorch).
//! `-- --other-only` times only the non-convolution kernels (batch norm, bias gradient, pooling)
//! on the activation shapes of a ResNet-20 step at batch 128. `-- --isa avx2` caps the kernels
//! at AVX2 (the kernels of an AVX2-only machine; see `hla_tensor::isa`).

use hla_tensor::isa::{max_isa, set_max_isa, MaxIsa};
use hla_tensor::{
    channel_mean_var, conv2d, conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight,
    gemm_par, global_avg_pool, global_avg_pool_backward, max_pool2d, max_pool2d_backward,
    Conv2dParams, Par, Pool2dParams,
};
use ndarray::{Array2, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::Instant;

/// On-CPU time (s) of the calling thread (Linux `/proc/thread-self/schedstat`), if readable.
fn thread_cpu() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9)
}

/// Median time (s) of `f` after 2 warm-up calls, at least 5 runs or 0.7 s: wall time, or with
/// `HLA_BENCH_CPU=1` the calling thread's on-CPU time (meaningful for 1-thread runs on a busy
/// machine).
fn median_time(mut f: impl FnMut()) -> f64 {
    f();
    f();
    let cpu = std::env::var_os("HLA_BENCH_CPU").is_some() && thread_cpu().is_some();
    let now = || {
        if cpu {
            thread_cpu().unwrap_or(0.0)
        } else {
            0.0
        }
    };
    let mut ts = Vec::new();
    let t0 = Instant::now();
    while ts.len() < 5 || (t0.elapsed().as_secs_f64() < 0.7 && ts.len() < 200) {
        let t = Instant::now();
        let c = now();
        f();
        ts.push(if cpu {
            now() - c
        } else {
            t.elapsed().as_secs_f64()
        });
    }
    if cpu {
        // The kernel's CPU accounting is tick-granular: average instead of taking a median.
        return ts.iter().sum::<f64>() / ts.len() as f64;
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    ts[ts.len() / 2]
}

fn rand4(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

fn rand2(shape: (usize, usize), seed: u64) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// (name, batch, c_in, c_out, hw, stride, groups): the same list as torch_conv_layers.py.
const LAYERS: [(&str, usize, usize, usize, usize, usize, usize); 7] = [
    ("r20_conv1_3to16", 128, 3, 16, 32, 1, 1),
    ("r20_16to16", 128, 16, 16, 32, 1, 1),
    ("r20_16to32_s2", 128, 16, 32, 32, 2, 1),
    ("r20_32to32", 128, 32, 32, 16, 1, 1),
    ("r20_32to64_s2", 128, 32, 64, 16, 2, 1),
    ("r20_64to64", 128, 64, 64, 8, 1, 1),
    ("mbv2_dw96_56", 8, 96, 96, 56, 1, 96),
];

/// How often each shape occurs among the 19 convolutions of CIFAR ResNet-20 (option-A
/// shortcuts: no 1×1 convolutions).
const RESNET20_COUNT: [(&str, f64); 6] = [
    ("r20_conv1_3to16", 1.0),
    ("r20_16to16", 6.0),
    ("r20_16to32_s2", 1.0),
    ("r20_32to32", 5.0),
    ("r20_32to64_s2", 1.0),
    ("r20_64to64", 5.0),
];

/// PyTorch `ms_fwd_bwd` per (layer, threads) from the script's `--json` file.
fn load_torch(path: &str) -> Vec<(String, usize, f64, f64)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {path}: {e}; no ratio column");
            return Vec::new();
        }
    };
    // Minimal parse of the rows: {"layer": "...", "threads": N, ..., "ms_fwd": x, "ms_fwd_bwd": y, ...}
    let mut rows = Vec::new();
    for chunk in text.split('{').skip(1) {
        let field = |key: &str| -> Option<&str> {
            let i = chunk.find(&format!("\"{key}\""))?;
            let rest = chunk[i + key.len() + 2..]
                .trim_start()
                .strip_prefix(':')?
                .trim_start();
            let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
            Some(rest[..end].trim().trim_matches('"'))
        };
        if let (Some(l), Some(t), Some(f), Some(fb)) = (
            field("layer"),
            field("threads"),
            field("ms_fwd"),
            field("ms_fwd_bwd"),
        ) {
            if let (Ok(t), Ok(f), Ok(fb)) = (t.parse(), f.parse(), fb.parse()) {
                rows.push((l.to_string(), t, f, fb));
            }
        }
    }
    rows
}

/// Batch-norm statistics + forward + backward, conv bias gradient, max-pool backward and global
/// average pooling (+ backward) on the ResNet-20 activation shapes (batch 128), ms per call.
fn other_kernels(threads: &[usize]) {
    println!("## Non-convolution kernels (f32, batch 128), ms");
    println!("| kernel | shape | threads | ms |");
    println!("|---|---|---|---|");
    for &t in threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        pool.install(|| {
            for (c, hw) in [(16usize, 32usize), (32, 16), (64, 8)] {
                let shape = (128, c, hw, hw);
                let x = rand4(shape, 11);
                let dy = rand4(shape, 12);
                let bn = median_time(|| {
                    black_box(channel_mean_var(x.view(), Par::Rayon));
                });
                let bias = median_time(|| {
                    black_box(conv2d_backward_bias(dy.view(), Par::Rayon));
                });
                let name = format!("128×{c}×{hw}×{hw}");
                println!("| batch norm statistics | {name} | {t} | {:.2} |", bn * 1e3);
                println!("| conv bias gradient | {name} | {t} | {:.2} |", bias * 1e3);
            }
            let x = rand4((128, 64, 8, 8), 13);
            let gap = median_time(|| {
                let y = global_avg_pool(x.view(), Par::Rayon);
                black_box(global_avg_pool_backward(y.view(), (8, 8), Par::Rayon));
            });
            println!(
                "| global avg pool + bwd | 128×64×8×8 | {t} | {:.2} |",
                gap * 1e3
            );
            let x = rand4((128, 16, 32, 32), 14);
            let p = Pool2dParams::new(2, 2, 0);
            let (y, am) = max_pool2d(x.view(), &p, Par::Rayon).unwrap();
            let g = y.mapv(|v| v * 0.5);
            let mp = median_time(|| {
                black_box(max_pool2d_backward(g.view(), am.view(), (32, 32), Par::Rayon).unwrap());
            });
            println!(
                "| max pool 2×2 backward | 128×16×32×32 | {t} | {:.2} |",
                mp * 1e3
            );
        });
    }
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let torch = args
        .iter()
        .position(|a| a == "--torch")
        .and_then(|i| args.get(i + 1))
        .map(|p| load_torch(p))
        .unwrap_or_default();
    let only_conv = args.iter().any(|a| a == "--conv-only");
    if let Some(name) = args
        .iter()
        .position(|a| a == "--isa")
        .and_then(|i| args.get(i + 1))
    {
        let max = [MaxIsa::Portable, MaxIsa::Avx2, MaxIsa::Avx512]
            .into_iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("--isa {name}: expected portable, avx2 or avx512"));
        set_max_isa(max).expect("the ceiling is set before any kernel runs");
    }
    println!(
        "kernels: {} (ceiling {})",
        hla_tensor::simd_name(),
        max_isa().name()
    );
    let threads: Vec<usize> = if std::env::var_os("HLA_BENCH_CPU").is_some() {
        vec![1]
    } else {
        vec![1, 2]
    };

    if args.iter().any(|a| a == "--other-only") {
        other_kernels(&threads);
        return;
    }
    if !only_conv {
        other_kernels(&threads);
        println!("## SGEMM C = A·B (f32, row-major), GFLOP/s");
        println!("| n | threads | matrixmultiply (hla gemm_par) | gemm crate 0.19 | ratio |");
        println!("|---|---|---|---|---|");
        for &t in &threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap();
            for n in [256usize, 512, 1024] {
                let a = rand2((n, n), 1);
                let b = rand2((n, n), 2);
                let mut c = Array2::<f32>::zeros((n, n));
                let flops = 2.0 * (n * n * n) as f64;
                let par = if t == 1 { Par::Seq } else { Par::Rayon };
                let ours = pool.install(|| {
                    median_time(|| {
                        gemm_par(1.0, a.view(), b.view(), 0.0, c.view_mut(), par).unwrap();
                        black_box(&c);
                    })
                });
                let gp = if t == 1 {
                    gemm::Parallelism::None
                } else {
                    gemm::Parallelism::Rayon(t)
                };
                let theirs = pool.install(|| {
                    median_time(|| {
                        // dst[m, n] = 0·dst + 1·lhs[m, k]·rhs[k, n] (gemm-crate argument order: m, n, k)
                        // SAFETY: pointers and strides of live, correctly shaped arrays.
                        unsafe {
                            gemm::gemm(
                                n,
                                n,
                                n,
                                c.as_mut_ptr(),
                                1,
                                n as isize,
                                false,
                                a.as_ptr(),
                                1,
                                n as isize,
                                b.as_ptr(),
                                1,
                                n as isize,
                                0.0f32,
                                1.0f32,
                                false,
                                false,
                                false,
                                gp,
                            );
                        }
                        black_box(&c);
                    })
                });
                let (g1, g2) = (flops / ours / 1e9, flops / theirs / 1e9);
                println!("| {n} | {t} | {g1:.1} | {g2:.1} | {:.2} |", g1 / g2);
            }
        }
        println!();
    }

    println!("## Convolutions (f32, 3×3, pad 1), forward and forward+backward (dx and dw)");
    println!("| layer | threads | fwd ms | fwd GFLOP/s | bwd dx ms | bwd dw ms | fwd+bwd ms | fwd+bwd GFLOP/s | torch fwd ms | torch fwd+bwd ms | torch/ours fwd+bwd |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        // (ours fwd+bwd, torch fwd+bwd, ours fwd, torch fwd), each layer times its count in
        // the network.
        let mut tot = (0.0, 0.0, 0.0, 0.0);
        for (name, n, cin, cout, hw, s, g) in LAYERS {
            let p = Conv2dParams::new(s, 1).with_groups(g);
            let x = rand4((n, cin, hw, hw), 3);
            let w = rand4((cout, cin / g, 3, 3), 4);
            let (ho, wo) = p.output_hw(hw, hw, 3, 3).unwrap();
            let dy = rand4((n, cout, ho, wo), 5);
            let flops = 2.0 * (n * cout * ho * wo * (cin / g) * 9) as f64;
            let par = if t == 1 { Par::Seq } else { Par::Rayon };
            let tf = pool.install(|| {
                median_time(|| {
                    black_box(conv2d(x.view(), w.view(), None, &p, par).unwrap());
                })
            });
            let tfb = pool.install(|| {
                median_time(|| {
                    black_box(conv2d(x.view(), w.view(), None, &p, par).unwrap());
                    black_box(
                        conv2d_backward_input(dy.view(), w.view(), (hw, hw), &p, par).unwrap(),
                    );
                    black_box(
                        conv2d_backward_weight(x.view(), dy.view(), (3, 3), &p, par).unwrap(),
                    );
                })
            });
            let tbi = pool.install(|| {
                median_time(|| {
                    black_box(
                        conv2d_backward_input(dy.view(), w.view(), (hw, hw), &p, par).unwrap(),
                    );
                })
            });
            let tbw = pool.install(|| {
                median_time(|| {
                    black_box(
                        conv2d_backward_weight(x.view(), dy.view(), (3, 3), &p, par).unwrap(),
                    );
                })
            });
            let tr = torch.iter().find(|r| r.0 == name && r.1 == t);
            let (tcol_f, tcol_fb, ratio) = match tr {
                Some(r) => (
                    format!("{:.2}", r.2),
                    format!("{:.2}", r.3),
                    format!("{:.2}", r.3 / (tfb * 1e3)),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let count = RESNET20_COUNT
                .iter()
                .find(|c| c.0 == name)
                .map_or(0.0, |c| c.1);
            tot.0 += count * tfb * 1e3;
            tot.2 += count * tf * 1e3;
            if let Some(r) = tr {
                tot.1 += count * r.3;
                tot.3 += count * r.2;
            }
            println!(
                "| {name} | {t} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {tcol_f} | {tcol_fb} | {ratio} |",
                tf * 1e3,
                flops / tf / 1e9,
                tbi * 1e3,
                tbw * 1e3,
                tfb * 1e3,
                3.0 * flops / tfb / 1e9
            );
        }
        let ratio = if tot.1 > 0.0 {
            format!("{:.2}", tot.1 / tot.0)
        } else {
            "-".into()
        };
        println!(
            "| ResNet-20, all 19 convs | {t} | {:.1} | | | | {:.1} | | {:.1} | {:.1} | {ratio} |",
            tot.2, tot.0, tot.3, tot.1
        );
    }
}
