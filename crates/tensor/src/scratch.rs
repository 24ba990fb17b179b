//! Scratch buffers kept per thread between kernel calls.
//!
//! The convolutions' tasks each need a scratch buffer (the padded input, `dy` on the grid pitch,
//! im2col columns), which they overwrite before reading. A fresh `vec![0; n]` per rayon task was
//! an allocation and a zero fill per task: for the weight gradient, eight samples' padded input
//! and `dy` per task, and the fills were about 1 % of a ResNet-20 training step. [`Scratch::take`]
//! hands out a buffer the thread kept from an earlier call instead, zero-filling only what it
//! has to grow. The contents are whatever the previous user left, so callers must write every
//! value before reading it; the crate's own tests fill every buffer with NaN when it is taken,
//! so that a read before a write shows in their results.
//!
//! Memory: each thread keeps at most [`KEPT`] buffers, the largest it has used, until it exits
//! (the rayon pool's threads live as long as the pool).

use crate::Float;
use std::any::Any;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers one thread keeps (of any element type): the convolutions use at most two at a time.
pub const KEPT: usize = 4;

thread_local! {
    /// This thread's kept buffers, each a `Vec<F>` for some `F`.
    static POOL: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` values with unspecified contents, returned to its thread's pool when
/// dropped (see the module docs).
pub struct Scratch<F: Float> {
    /// Never shortened, so that its values past `len` need no fill when a later user wants more.
    v: Vec<F>,
    len: usize,
}

impl<F: Float> Scratch<F> {
    /// A buffer of `len` values: the smallest kept `Vec<F>` of this thread that holds `len`
    /// values without growing, else the largest one grown (new values zero), else a new one.
    pub fn take(len: usize) -> Self {
        let kept = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                let held = |b: &Box<dyn Any>| b.downcast_ref::<Vec<F>>().map(|v| v.len());
                let fits = (0..p.len())
                    .filter(|&i| held(&p[i]).is_some_and(|c| c >= len))
                    .min_by_key(|&i| held(&p[i]));
                let pick = fits.or_else(|| {
                    (0..p.len())
                        .filter(|&i| held(&p[i]).is_some())
                        .max_by_key(|&i| held(&p[i]))
                });
                pick.map(|i| *p.swap_remove(i).downcast::<Vec<F>>().expect("checked type"))
            })
            .ok()
            .flatten();
        let mut v = kept.unwrap_or_default();
        if v.len() < len {
            v.resize(len, F::zero());
        }
        #[cfg(test)]
        v[..len].fill(F::nan());
        Scratch { v, len }
    }
}

impl<F: Float> Deref for Scratch<F> {
    type Target = [F];
    fn deref(&self) -> &[F] {
        &self.v[..self.len]
    }
}

impl<F: Float> DerefMut for Scratch<F> {
    fn deref_mut(&mut self) -> &mut [F] {
        &mut self.v[..self.len]
    }
}

impl<F: Float> Drop for Scratch<F> {
    /// Back to this thread's pool; when it is full, the smallest buffer is
    /// freed (this one or a kept one).
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.v);
        if v.is_empty() {
            return;
        }
        // a thread being torn down has no pool: the buffer is just freed
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            p.push(Box::new(v));
            if p.len() > KEPT {
                let bytes = |b: &Box<dyn Any>| {
                    b.downcast_ref::<Vec<f32>>()
                        .map(|v| 4 * v.len())
                        .or_else(|| b.downcast_ref::<Vec<f64>>().map(|v| 8 * v.len()))
                        .unwrap_or(0)
                };
                let smallest = (0..p.len())
                    .min_by_key(|&i| bytes(&p[i]))
                    .expect("non-empty");
                p.swap_remove(smallest);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_buffers_are_reused_and_bounded() {
        // a fresh thread, so that no other test's buffers are in its pool
        std::thread::spawn(|| {
            let a = Scratch::<f32>::take(1000);
            let pa = a.as_ptr();
            drop(a);
            // a smaller request reuses the kept buffer
            let b = Scratch::<f32>::take(10);
            assert_eq!((b.len(), b.as_ptr()), (10, pa));
            // another type does not see it
            let c = Scratch::<f64>::take(10);
            assert_ne!(c.as_ptr() as usize, pa as usize);
            drop((b, c));
            // more buffers than kept: the smallest are freed
            let many: Vec<Scratch<f32>> = (1..=6).map(|i| Scratch::take(100 * i)).collect();
            drop(many);
            // the largest four were kept: the f64 buffer and the two smallest f32 ones freed
            let mut caps: Vec<usize> = POOL.with(|p| {
                p.borrow()
                    .iter()
                    .map(|b| b.downcast_ref::<Vec<f32>>().map_or(0, |v| v.len()))
                    .collect()
            });
            caps.sort_unstable();
            assert_eq!(caps, [400, 500, 600, 1000]);
            let big = Scratch::<f32>::take(1000);
            assert!(big.iter().all(|v| v.is_nan()), "tests poison taken buffers");
        })
        .join()
        .expect("test thread");
    }
}
