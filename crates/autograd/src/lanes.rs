//! Fixed-order, vectorisable per-channel sums: element `j` of a slice goes to lane `j % 16`,
//! the 16 partial sums are combined in a fixed tree. The order depends only on the slice
//! lengths, never on the thread count (the same scheme as `hla-tensor`'s batch-norm kernels,
//! so results agree bit for bit with them).

use crate::Float;

const LANES: usize = 16;

/// 16 running partial sums.
#[derive(Clone, Copy)]
pub(crate) struct Lanes<F: Float>([F; LANES]);

impl<F: Float> Lanes<F> {
    /// All lanes zero.
    #[inline]
    pub(crate) fn new() -> Self {
        Lanes([F::zero(); LANES])
    }

    /// Adds `f(s[j])` into lane `j % 16`.
    #[inline(always)]
    pub(crate) fn add_map(&mut self, s: &[F], f: impl Fn(F) -> F) {
        let a = &mut self.0;
        let mut it = s.chunks_exact(LANES);
        for c in &mut it {
            for l in 0..LANES {
                a[l] = a[l] + f(c[l]);
            }
        }
        for (l, &v) in it.remainder().iter().enumerate() {
            a[l] = a[l] + f(v);
        }
    }

    /// Adds `u[j]·f(v[j])` into lane `j % 16` (`u`, `v` of one length).
    #[inline(always)]
    pub(crate) fn add_dot_map(&mut self, u: &[F], v: &[F], f: impl Fn(F) -> F) {
        debug_assert_eq!(u.len(), v.len());
        let a = &mut self.0;
        let mut iu = u.chunks_exact(LANES);
        let mut iv = v.chunks_exact(LANES);
        for (cu, cv) in (&mut iu).zip(&mut iv) {
            for l in 0..LANES {
                a[l] = a[l] + cu[l] * f(cv[l]);
            }
        }
        for (l, (&x, &y)) in iu.remainder().iter().zip(iv.remainder()).enumerate() {
            a[l] = a[l] + x * f(y);
        }
    }

    /// The lanes combined pairwise in a fixed tree.
    #[inline]
    pub(crate) fn total(self) -> F {
        let mut a = self.0;
        let mut w = LANES / 2;
        while w > 0 {
            for l in 0..w {
                a[l] = a[l] + a[l + w];
            }
            w /= 2;
        }
        a[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_match_exact_integer_sums_for_every_remainder() {
        for len in [0usize, 1, 15, 16, 17, 49, 100] {
            let u: Vec<f64> = (0..len).map(|i| (i % 7) as f64 - 3.0).collect();
            let v: Vec<f64> = (0..len).map(|i| (i % 5) as f64).collect();
            let mut s = Lanes::new();
            s.add_map(&u, |x| 2.0 * x);
            let mut d = Lanes::new();
            d.add_dot_map(&u, &v, |x| x + 1.0);
            let want_s: f64 = u.iter().map(|x| 2.0 * x).sum();
            let want_d: f64 = u.iter().zip(&v).map(|(x, y)| x * (y + 1.0)).sum();
            assert_eq!((s.total(), d.total()), (want_s, want_d), "len {len}");
        }
    }
}
