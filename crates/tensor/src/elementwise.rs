//! Element-wise maps over plain slices into fresh vectors (and one in-place sum), written once (no zero fill) and split
//! into fixed blocks on the rayon pool: each element is computed alone, so the results do not
//! depend on the thread count.

use crate::{collect_chunks, Float, Par};

/// Elements per parallel block.
const CHUNK: usize = 1 << 14;
/// Below this many elements a map runs on the calling thread.
pub(crate) const PAR_MIN: usize = 1 << 15;

fn par_for(n: usize, par: Par) -> Par {
    if n >= PAR_MIN {
        par
    } else {
        Par::Seq
    }
}

/// `f(x_i)` for every element.
pub fn map<F: Float>(x: &[F], par: Par, f: impl Fn(F) -> F + Sync + Send) -> Vec<F> {
    collect_chunks(x.len(), CHUNK, par_for(x.len(), par), |i, o| {
        for (o, &v) in o.iter_mut().zip(&x[i * CHUNK..]) {
            o.write(f(v));
        }
    })
}

/// `f(a_i, b_i)` for every pair of elements of two slices of the same length.
pub(crate) fn map_pair<F: Float>(
    a: &[F],
    b: &[F],
    par: Par,
    f: impl Fn(F, F) -> F + Sync + Send,
) -> Vec<F> {
    assert_eq!(a.len(), b.len(), "map_pair: operands of different lengths");
    collect_chunks(a.len(), CHUNK, par_for(a.len(), par), |i, o| {
        let (a, b) = (&a[i * CHUNK..], &b[i * CHUNK..]);
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            o.write(f(a, b));
        }
    })
}

/// `acc_i ← acc_i + g_i` in place (gradient accumulation), in the blocks of the maps above.
///
/// # Panics
/// If the slices differ in length.
pub fn add_assign<F: Float>(acc: &mut [F], g: &[F], par: Par) {
    assert_eq!(
        acc.len(),
        g.len(),
        "add_assign: operands of different lengths"
    );
    let par = par_for(acc.len(), par);
    crate::for_each_chunk(
        par,
        acc,
        CHUNK,
        || (),
        |_, i, a| {
            for (a, &v) in a.iter_mut().zip(&g[i * CHUNK..]) {
                *a = *a + v;
            }
        },
    );
}

/// `f(v, s)` for every element `v` of `full`, rows of `pix` elements, with the element at the
/// same position of row `r / per` of `small` (rows of `pix` too): a `[n, g·per, pix]` tensor
/// against a `[n, g, pix]` one, e.g. conv outputs against the patch norms of their group.
///
/// # Panics
/// If `pix` does not divide `full.len()` or `small` has fewer than `full.len() / per` elements.
pub fn map_group_rows<F: Float>(
    full: &[F],
    small: &[F],
    (per, pix): (usize, usize),
    par: Par,
    f: impl Fn(F, F) -> F + Sync + Send,
) -> Vec<F> {
    if full.is_empty() {
        return Vec::new();
    }
    // `%` rather than `is_multiple_of`: the workspace's rust-version is 1.80
    #[allow(clippy::manual_is_multiple_of)]
    let fits = pix > 0 && per > 0 && full.len() % pix == 0 && small.len() * per >= full.len();
    assert!(
        fits,
        "map_group_rows: {} elements in rows of {pix} against {} ({per} rows each)",
        full.len(),
        small.len()
    );
    // blocks of whole rows, about `CHUNK` elements each
    let rows = (CHUNK / pix).max(1);
    // (the HLA layers' division by the patch norms: compiled for the CPU's vectors, whose
    // quotients are the same)
    collect_chunks(full.len(), rows * pix, par_for(full.len(), par), |i, o| {
        crate::isa::vectorised(
            #[inline(always)]
            || {
                for (j, o) in o.chunks_mut(pix).enumerate() {
                    let r = i * rows + j;
                    let (vs, ss) = (&full[r * pix..][..pix], &small[(r / per) * pix..][..pix]);
                    for ((o, &v), &s) in o.iter_mut().zip(vs).zip(ss) {
                        o.write(f(v, s));
                    }
                }
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both maps and the in-place sum equal the obvious loops, sequentially and on 1, 2 and 3
    /// threads, above the parallel threshold and with rows that do not fill the last block.
    #[test]
    fn maps_equal_plain_loops_for_any_thread_count() {
        let (per, pix, n) = (3, 77, 300);
        let full: Vec<f32> = (0..n * per * pix).map(|i| (i % 97) as f32 - 40.0).collect();
        let small: Vec<f32> = (0..n * pix).map(|i| 1.0 + (i % 13) as f32).collect();
        let want_map: Vec<f32> = full.iter().map(|&v| v * v - 1.0).collect();
        let want_rows: Vec<f32> = (0..full.len())
            .map(|i| full[i] / small[(i / pix / per) * pix + i % pix])
            .collect();
        #[allow(clippy::manual_is_multiple_of)]
        let ragged = full.len() % CHUNK != 0;
        assert!(full.len() > PAR_MIN && ragged);
        let want_sum: Vec<f32> = full.iter().zip(&want_map).map(|(&a, &b)| a + b).collect();
        let run = |par| {
            let mut sum = full.clone();
            add_assign(&mut sum, &want_map, par);
            (
                map(&full, par, |v| v * v - 1.0),
                map_group_rows(&full, &small, (per, pix), par, |v, s| v / s),
                sum,
            )
        };
        let want = (want_map.clone(), want_rows.clone(), want_sum.clone());
        assert_eq!(run(Par::Seq), want);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(|| run(Par::Rayon));
            assert_eq!(got, want, "{threads} threads");
        }
        assert!(map_group_rows::<f32>(&[], &[], (1, 0), Par::Rayon, |a, _| a).is_empty());
    }

    #[test]
    #[should_panic(expected = "map_group_rows")]
    fn short_rows_operand_panics() {
        map_group_rows(&[1.0f32; 8], &[1.0f32; 2], (2, 2), Par::Seq, |a, b| a * b);
    }
}
