//! Fixed-lane float sums: `LANES` independent accumulators so the compiler vectorises long
//! reductions (per-channel sums of batch-norm and the bias gradient, plane sums of pooling).
//!
//! Element `j` of every slice added goes to lane `j % LANES` (a slice's tail goes to lanes
//! `0..tail`), and [`Lanes::total`] combines the lanes in a fixed pairwise tree. The order
//! depends only on the slice lengths, never on the thread count.

use crate::Float;

/// Number of independent partial sums (16 `f32` = one 512-bit vector, or four 128-bit ones).
pub const LANES: usize = 16;

/// `LANES` partial sums, combined in a fixed order by [`Lanes::total`].
#[derive(Clone, Copy)]
pub struct Lanes<F: Float>([F; LANES]);

impl<F: Float> Default for Lanes<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Float> Lanes<F> {
    /// All lanes zero.
    #[inline]
    pub fn new() -> Self {
        Lanes([F::zero(); LANES])
    }

    /// The partial sums, lane by lane (to pass a running sum to another rank).
    #[inline]
    pub fn to_array(self) -> [F; LANES] {
        self.0
    }

    /// Partial sums taken up again from [`Lanes::to_array`].
    #[inline]
    pub fn from_array(a: [F; LANES]) -> Self {
        Lanes(a)
    }

    /// Adds `f(v)` for every `v` of `s`, element `j` to lane `j % LANES`.
    #[inline(always)]
    pub fn add_map(&mut self, s: &[F], f: impl Fn(F) -> F) {
        // The lanes in a local array and the tail elsewhere: the compiler then keeps the 16
        // sums in vector registers (one 512-bit or two 256-bit); with the tail's single-lane
        // updates in the same loop nest it falls back to scalar adds and shuffles.
        let mut it = s.chunks_exact(LANES);
        let mut a = self.0;
        for c in &mut it {
            for l in 0..LANES {
                a[l] = a[l] + f(c[l]);
            }
        }
        self.0 = a;
        let r = it.remainder();
        if !r.is_empty() {
            tail(&mut self.0, r, r, |_, v| f(v));
        }
    }

    /// Adds every element of `s` (see [`Lanes::add_map`]).
    #[inline(always)]
    pub fn add(&mut self, s: &[F]) {
        self.add_map(s, |v| v);
    }

    /// Adds `u[j]·f(v[j])` for every `j`, element `j` to lane `j % LANES` (e.g. `dy · x̂` with
    /// `x̂` computed on the fly from `x`).
    ///
    /// # Panics
    /// If the lengths differ (a caller bug).
    #[inline(always)]
    pub fn add_dot_map(&mut self, u: &[F], v: &[F], f: impl Fn(F) -> F) {
        assert_eq!(u.len(), v.len(), "Lanes::add_dot_map: length mismatch");
        let mut iu = u.chunks_exact(LANES);
        let mut iv = v.chunks_exact(LANES);
        let mut a = self.0;
        for (cu, cv) in (&mut iu).zip(&mut iv) {
            for l in 0..LANES {
                a[l] = a[l] + cu[l] * f(cv[l]);
            }
        }
        self.0 = a;
        if !iu.remainder().is_empty() {
            tail(&mut self.0, iu.remainder(), iv.remainder(), |x, y| x * f(y));
        }
    }

    /// Adds `u[j]·v[j]` for every `j`, element `j` to lane `j % LANES`.
    ///
    /// # Panics
    /// If the lengths differ (a caller bug).
    #[inline(always)]
    pub fn add_dot(&mut self, u: &[F], v: &[F]) {
        self.add_dot_map(u, v, |y| y);
    }

    /// The sum of all lanes: `LANES / 2` pairs `(l, l + LANES/2)` first, then halving again.
    #[inline]
    pub fn total(self) -> F {
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

/// A slice's tail (fewer than `LANES` elements): `a[l] += g(u[l], v[l])`. Out of line, so that
/// the main loops keep their lanes in vector registers.
#[cold]
#[inline(never)]
fn tail<F: Float>(a: &mut [F; LANES], u: &[F], v: &[F], g: impl Fn(F, F) -> F) {
    for (l, (&x, &y)) in u.iter().zip(v).enumerate() {
        a[l] = a[l] + g(x, y);
    }
}

/// Sum of a slice with [`Lanes`].
#[inline]
pub(crate) fn lane_sum<F: Float>(s: &[F]) -> F {
    let mut acc = Lanes::new();
    acc.add(s);
    acc.total()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rand_array;

    #[test]
    fn lane_sums_match_f64_reference_and_fixed_order() {
        for len in [0, 1, 15, 16, 17, 49, 64, 1000] {
            let x = rand_array::<f32, _, _>(len, 3 + len as u64);
            let y = rand_array::<f32, _, _>(len, 4 + len as u64);
            let xs = x.as_slice().unwrap();
            let ys = y.as_slice().unwrap();
            let r: f64 = xs.iter().map(|&v| v as f64).sum();
            let rd: f64 = xs.iter().zip(ys).map(|(&u, &v)| u as f64 * v as f64).sum();
            let bound = 1e-6 * (len as f64 + 1.0);
            assert!((lane_sum(xs) as f64 - r).abs() < bound, "len {len}");
            let mut d = Lanes::new();
            d.add_dot(xs, ys);
            assert!((d.total() as f64 - rd).abs() < bound, "len {len}");
            // Lane assignment is positional: element j lands in lane j % LANES.
            let mut by_lane = [0f32; LANES];
            for (j, &v) in xs.iter().enumerate() {
                by_lane[j % LANES] += v;
            }
            let mut acc = Lanes::new();
            acc.add(xs);
            assert_eq!(acc.0.map(f32::to_bits), by_lane.map(f32::to_bits));
        }
    }

    /// Compiled for the CPU's vectors ([`crate::isa::vectorised`]) the lanes hold the bits of
    /// the element-by-element definition: the mapped sum and the mapped dot, over several
    /// slices with tails (which must land in lanes `0..tail` of the running sums).
    #[test]
    fn vectorised_lanes_are_the_positional_sums() {
        let x = rand_array::<f32, _, _>(3 * 37, 5);
        let y = rand_array::<f32, _, _>(3 * 37, 6);
        let (xs, ys) = (x.as_slice().unwrap(), y.as_slice().unwrap());
        let (mu, s) = (0.3f32, 1.7f32);
        let (mut sq, mut dot) = ([0f32; LANES], [0f32; LANES]);
        for (xc, yc) in xs.chunks(37).zip(ys.chunks(37)) {
            for (j, (&u, &v)) in xc.iter().zip(yc).enumerate() {
                sq[j % LANES] += (v - mu) * (v - mu);
                dot[j % LANES] += u * ((v - mu) * s);
            }
        }
        let (a, b) = crate::isa::vectorised(
            #[inline(always)]
            || {
                let (mut a, mut b) = (Lanes::new(), Lanes::new());
                for (xc, yc) in xs.chunks(37).zip(ys.chunks(37)) {
                    a.add_map(yc, |v| (v - mu) * (v - mu));
                    b.add_dot_map(xc, yc, |v| (v - mu) * s);
                }
                (a, b)
            },
        );
        assert_eq!(a.0.map(f32::to_bits), sq.map(f32::to_bits));
        assert_eq!(b.0.map(f32::to_bits), dot.map(f32::to_bits));
    }
}
