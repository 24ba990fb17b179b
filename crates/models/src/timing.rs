//! The timing protocol of the PyTorch reference scripts (`../shared/bench/torch_models.py`), so
//! a figure of ours and one of theirs measured back to back are taken the same way.
//!
//! The first iterations of a model are not representative (fresh allocations fault their pages
//! in; see [`hla_tensor::alloc`] for why and for the allocator settings the binaries use), so
//! one warm-up and a median of three measures the allocator, not the kernels.

use std::time::{Duration, Instant};

/// How many times to run and when to stop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Protocol {
    /// Untimed runs first.
    pub warmup: usize,
    /// At least this many timed runs.
    pub min_reps: usize,
    /// Keep timing while less than this much time has passed…
    pub min_time: Duration,
    /// …but never more than this many runs.
    pub max_reps: usize,
}

impl Default for Protocol {
    /// `torch_models.py`: 2 warm-ups, then at least 5 runs, continued until 3 s or 50 runs.
    fn default() -> Self {
        Protocol {
            warmup: 2,
            min_reps: 5,
            min_time: Duration::from_secs(3),
            max_reps: 50,
        }
    }
}

impl Protocol {
    /// Median seconds per call of `f` and the number of timed calls; the first error of `f`
    /// stops the measurement and is returned.
    ///
    /// # Errors
    /// Whatever `f` returns.
    pub fn median<E>(&self, mut f: impl FnMut() -> Result<(), E>) -> Result<(f64, usize), E> {
        for _ in 0..self.warmup {
            f()?;
        }
        let start = Instant::now();
        let mut secs = Vec::with_capacity(self.min_reps);
        while secs.len() < self.min_reps
            || (start.elapsed() < self.min_time && secs.len() < self.max_reps.max(self.min_reps))
        {
            let t = Instant::now();
            f()?;
            secs.push(t.elapsed().as_secs_f64());
        }
        secs.sort_by(f64::total_cmp);
        Ok((secs[secs.len() / 2], secs.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_and_stops_on_the_first_error() {
        let p = Protocol {
            warmup: 2,
            min_reps: 3,
            min_time: Duration::ZERO,
            max_reps: 50,
        };
        let mut calls = 0;
        let (_, n) = p
            .median(|| {
                calls += 1;
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!((n, calls), (3, 5));
        let mut calls = 0;
        let r = p.median(|| {
            calls += 1;
            if calls == 4 {
                Err("fourth")
            } else {
                Ok(())
            }
        });
        assert_eq!((r, calls), (Err("fourth"), 4));
    }

    #[test]
    fn min_time_extends_up_to_max_reps_and_the_median_is_the_middle_run() {
        let p = Protocol {
            warmup: 0,
            min_reps: 1,
            min_time: Duration::from_secs(3600),
            max_reps: 7,
        };
        let mut k = 0u64;
        // runs of 70, 10, 60, 20, 50, 30, 40 ms: the median is the 40 ms run (a sleep never ends early)
        let ms = [70u64, 10, 60, 20, 50, 30, 40];
        let (med, n) = p
            .median(|| {
                std::thread::sleep(Duration::from_millis(ms[k as usize]));
                k += 1;
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(n, 7);
        assert!((0.040..0.050).contains(&med), "median {med}");
    }
}
