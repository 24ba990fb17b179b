//! Seed derivation and the few random draws the data pipeline makes.
//!
//! Every random stream is derived from `(run seed, purpose, epoch, item)` with splitmix64, so the
//! numbers do not depend on which thread asks first (see `docs/style.md` §9). The draws below are
//! written out by hand on top of `next_u64` instead of using `rand`'s distribution code, so the
//! data order and augmentations stay the same if `rand` changes its sampling algorithms.

use rand::RngCore;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a derived random stream is used for; different purposes never share a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// The per-epoch permutation of the data set.
    Shuffle = 1,
    /// One sample's augmentation (crop box, flip).
    Augment = 2,
}

/// splitmix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mix.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed for one (purpose, epoch, item): independent of thread count and scheduling.
pub fn derive_seed(run_seed: u64, purpose: Purpose, epoch: u64, index: u64) -> u64 {
    [purpose as u64, epoch, index]
        .iter()
        .fold(splitmix64(run_seed), |s, &v| splitmix64(s ^ v))
}

/// A ChaCha8 stream for one (purpose, epoch, item).
pub fn rng_for(run_seed: u64, purpose: Purpose, epoch: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(run_seed, purpose, epoch, index))
}

/// Uniform `f64` in `[0, 1)` from the top 53 bits of one `u64`.
pub fn unit_f64(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform `f64` in `[lo, hi)`.
pub fn uniform_f64(rng: &mut impl RngCore, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * unit_f64(rng)
}

/// Integer in `0..n` (`n ≥ 1`) by Lemire's multiply-shift; the bias is below 2⁻³² for the sizes
/// used here and the result is fully determined by one `next_u64`.
pub fn below(rng: &mut impl RngCore, n: usize) -> usize {
    debug_assert!(n >= 1, "below: n must be ≥ 1");
    ((rng.next_u64() as u128 * n as u128) >> 64) as usize
}

/// Fisher–Yates shuffle of `v` driven by [`below`].
pub fn shuffle<T>(rng: &mut impl RngCore, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = below(rng, i + 1);
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_reference_sequence() {
        // Reference: the first outputs of the splitmix64 generator seeded with 0 (Vigna's
        // splitmix64.c: state += golden; mix(state)), i.e. splitmix64(k·golden) for k = 0, 1.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn derived_seeds_differ_by_purpose_epoch_and_index() {
        let a = derive_seed(7, Purpose::Augment, 0, 0);
        assert_ne!(a, derive_seed(7, Purpose::Shuffle, 0, 0));
        assert_ne!(a, derive_seed(7, Purpose::Augment, 1, 0));
        assert_ne!(a, derive_seed(7, Purpose::Augment, 0, 1));
        assert_ne!(a, derive_seed(8, Purpose::Augment, 0, 0));
        assert_eq!(a, derive_seed(7, Purpose::Augment, 0, 0));
    }

    #[test]
    fn shuffle_is_a_permutation_and_below_is_in_range() {
        let mut rng = rng_for(3, Purpose::Shuffle, 0, 0);
        let mut v: Vec<usize> = (0..1000).collect();
        shuffle(&mut rng, &mut v);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[below(&mut rng, 3)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        for _ in 0..1000 {
            let u = uniform_f64(&mut rng, 0.08, 1.0);
            assert!((0.08..1.0).contains(&u));
        }
    }
}
