//! `Par` is honoured everywhere: every kernel that takes it gives the same bits under `Seq`
//! and `Rayon` (for any pool size), and no parallel iterator in the kernel or autograd sources
//! runs without a `Par` choice next to it (a scan of the sources: a kernel that always used
//! rayon would ignore `Par::Seq`, e.g. nested inside a caller's own parallel loop).

use hla_tensor::*;
use ndarray::{Array2, Array4};
use rand::{Rng, SeedableRng};

fn rand4(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_fn(shape, |_| r.random_range(-1.0f32..1.0))
}

fn bits<'a>(a: impl IntoIterator<Item = &'a f32>) -> Vec<u32> {
    a.into_iter().map(|v| v.to_bits()).collect()
}

#[test]
fn seq_and_rayon_give_the_same_bits() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let x = rand4((4, 6, 17, 19), 1); // large enough for every parallel path
    let dy = rand4((4, 6, 17, 19), 2);
    let both = |f: &(dyn Fn(Par) -> Vec<u32> + Sync)| {
        let seq = f(Par::Seq);
        assert_eq!(seq, pool.install(|| f(Par::Rayon)));
        seq
    };
    both(&|p| bits(&relu(x.view().into_dyn(), p)));
    both(&|p| bits(&relu6((&x * 8.0).view().into_dyn(), p)));
    both(&|p| bits(&relu_backward(x.view().into_dyn(), dy.view().into_dyn(), p)));
    both(&|p| {
        bits(&relu6_backward(
            (&x * 8.0).view().into_dyn(),
            dy.view().into_dyn(),
            p,
        ))
    });
    both(&|p| {
        let (m, v) = channel_mean_var(x.view(), p);
        bits(m.iter().chain(v.iter()))
    });
    both(&|p| bits(&conv2d_backward_bias(dy.view(), p)));
    both(&|p| bits(&global_avg_pool(x.view(), p)));
    let g: Array2<f32> = Array2::from_shape_fn((4, 6), |(i, j)| (i * 6 + j) as f32 * 0.1);
    both(&|p| bits(&global_avg_pool_backward(g.view(), (17, 19), p)));
    let pp = Pool2dParams::new(3, 2, 1);
    both(&|p| {
        let (y, am) = max_pool2d(x.view(), &pp, p).unwrap();
        let d = max_pool2d_backward(y.view(), am.view(), (17, 19), p).unwrap();
        bits(y.iter().chain(d.iter()))
    });
    both(&|p| bits(&avg_pool2d(x.view(), &pp, p).unwrap()));
}

#[test]
fn no_parallel_iterator_ignores_par() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let calls = [
        ".par_iter(",
        ".par_iter_mut(",
        ".par_chunks(",
        ".par_chunks_mut(",
        ".into_par_iter(",
        ".par_map_collect(",
        ".par_for_each(",
        "par_azip!",
        "rayon::join(",
        "rayon::scope(",
    ];
    let mut bad = Vec::new();
    let mut seen = 0;
    for krate in ["tensor", "autograd"] {
        let mut dirs = vec![root.join(krate).join("src")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                let src = std::fs::read_to_string(&p).unwrap();
                let lines: Vec<&str> = src.lines().collect();
                // Library code only: stop at the test module.
                let end = lines
                    .iter()
                    .position(|l| l.starts_with("#[cfg(test)]"))
                    .unwrap_or(lines.len());
                for (i, l) in lines[..end].iter().enumerate() {
                    if l.trim_start().starts_with("//") || !calls.iter().any(|c| l.contains(c)) {
                        continue;
                    }
                    seen += 1;
                    // The choice must be made right there: a `Par::Rayon` arm or test, or an
                    // early `Par::Seq` return, within the 15 lines above.
                    let window = lines[i.saturating_sub(15)..=i].join("\n");
                    if !window.contains("Par::Rayon") && !window.contains("Par::Seq") {
                        bad.push(format!("{}:{}: {}", p.display(), i + 1, l.trim()));
                    }
                }
            }
        }
    }
    assert!(
        seen > 10,
        "only {seen} parallel calls found: is the scan looking in the right place?"
    );
    assert!(
        bad.is_empty(),
        "parallel code that ignores Par:\n{}",
        bad.join("\n")
    );
}
