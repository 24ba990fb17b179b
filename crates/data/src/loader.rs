//! The batch iterator: per-epoch shuffling from `(seed, epoch)`, per-sample augmentation
//! streams from `(seed, epoch, sample index)`, rayon-parallel decoding on a pool of its own,
//! and an ordered, bounded prefetch queue.
//!
//! Determinism: a batch is a pure function of `(dataset, seed, epoch, position)`. Each sample
//! is decoded into its own slot with its own RNG, so the thread count and the scheduling change
//! nothing, and results are assembled in index order (tested bit-for-bit with 1 and 2 threads).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use ndarray::{Array4, Axis};
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::folder::ErrorPolicy;
use crate::seed::{rng_for, shuffle, Purpose};

/// Which part of each global batch this process reads in data-parallel training: `rank` of
/// `world`. The batch size, the sample order and every augmentation are those of the
/// single-process run; each batch is cut into contiguous slices in rank order
/// ([`Shard::rows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This process's index, `0..world`.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
}

/// Slices of a batch start on multiples of this many samples (the weight-gradient chunk of
/// the convolution kernels, `hla_tensor::DW_CHUNK`, whose fold the ranks continue).
pub const SHARD_ALIGN: usize = 8;

impl Shard {
    /// The rows of a global batch of `n` samples this shard reads: the batch is cut into
    /// chunks of [`SHARD_ALIGN`] samples, dealt out contiguously in rank order, the first
    /// `chunks % world` shards taking one more (shards past the chunk count read none).
    pub fn rows(&self, n: usize) -> std::ops::Range<usize> {
        let world = self.world.max(1);
        let chunks = n.div_ceil(SHARD_ALIGN);
        let (q, extra) = (chunks / world, chunks % world);
        let first = self.rank * q + self.rank.min(extra);
        let mine = q + usize::from(self.rank < extra);
        (first * SHARD_ALIGN).min(n)..((first + mine) * SHARD_ALIGN).min(n)
    }
}

impl Default for Shard {
    fn default() -> Self {
        Shard { rank: 0, world: 1 }
    }
}

/// Loader options. Defaults: batch 128, seed 0, shuffle, keep the last partial batch,
/// 1 decode thread, 2 batches prefetched, whole data set, stop on the first bad file.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Samples per batch (≥ 1).
    pub batch_size: usize,
    /// Run seed: the epoch permutation and every augmentation derive from it.
    pub seed: u64,
    /// Permute the samples every epoch (`false`: index order, for evaluation).
    pub shuffle: bool,
    /// Drop the last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Decode threads (≥ 1); the result does not depend on it.
    pub threads: usize,
    /// Batches decoded ahead on a background thread (0: decode in `next()`).
    pub prefetch: usize,
    /// Data-parallel shard.
    pub shard: Shard,
    /// What to do with a sample that fails to load.
    pub on_error: ErrorPolicy,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 128,
            seed: 0,
            shuffle: true,
            drop_last: false,
            threads: 1,
            prefetch: 2,
            shard: Shard::default(),
            on_error: ErrorPolicy::Error,
        }
    }
}

/// One batch.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Inputs, `[n, c, h, w]` (`n` < `batch_size` for a last partial batch or skipped files).
    pub images: Array4<f32>,
    /// Labels, `[n]`.
    pub labels: Vec<usize>,
    /// Data-set indices of the samples, `[n]`.
    pub indices: Vec<usize>,
    /// Epoch this batch belongs to.
    pub epoch: u64,
    /// Position of the batch in the epoch (resume with `epoch_from(epoch, position + 1)`).
    pub position: usize,
    /// Samples left out of this batch under [`ErrorPolicy::Skip`].
    pub skipped: usize,
    /// Why each of them was left out (`sample <index>: <error>`), for the caller to report: a
    /// library does not write to stderr (it would garble progress bars and JSON output).
    pub skip_reasons: Vec<String>,
}

struct Inner {
    dataset: Arc<dyn Dataset>,
    cfg: LoaderConfig,
    pool: rayon::ThreadPool,
    skipped: AtomicUsize,
}

/// Deterministic parallel batch loader over a [`Dataset`]; cheap to clone (shared state).
#[derive(Clone)]
pub struct Loader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("len", &self.inner.dataset.len())
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

impl Loader {
    /// A loader over `dataset`.
    ///
    /// # Errors
    /// `BadOption` for `batch_size` 0, `threads` 0, `world` 0 or `rank ≥ world`.
    pub fn new(dataset: Arc<dyn Dataset>, cfg: LoaderConfig) -> Result<Loader> {
        let bad = |reason: String| {
            Err(DataError::BadOption {
                op: "Loader::new",
                reason,
            })
        };
        if cfg.batch_size == 0 {
            return bad("batch_size must be ≥ 1".into());
        }
        if cfg.threads == 0 {
            return bad("threads must be ≥ 1".into());
        }
        if cfg.shard.world == 0 || cfg.shard.rank >= cfg.shard.world {
            return bad(format!(
                "shard rank {} of world {}",
                cfg.shard.rank, cfg.shard.world
            ));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .thread_name(|i| format!("hla-data-{i}"))
            .build()
            .map_err(|e| DataError::BadOption {
                op: "Loader::new",
                reason: format!("cannot start {} decode threads: {e}", cfg.threads),
            })?;
        Ok(Loader {
            inner: Arc::new(Inner {
                dataset,
                cfg,
                pool,
                skipped: AtomicUsize::new(0),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.inner.cfg
    }

    /// The data set.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.inner.dataset
    }

    /// Total samples skipped so far under [`ErrorPolicy::Skip`].
    pub fn skipped(&self) -> usize {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    /// The sample order of `epoch` (the same for every shard): the permutation drawn from
    /// `(seed, Purpose::Shuffle, epoch)`, or index order.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let cfg = &self.inner.cfg;
        let n = self.inner.dataset.len();
        let mut all: Vec<usize> = (0..n).collect();
        if cfg.shuffle {
            shuffle(&mut rng_for(cfg.seed, Purpose::Shuffle, epoch, 0), &mut all);
        }
        all
    }

    /// Samples per epoch (of all shards together).
    pub fn samples_per_epoch(&self) -> usize {
        self.inner.dataset.len()
    }

    /// Batches per epoch (global batches: every shard reads its slice of each).
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.samples_per_epoch(), self.inner.cfg.batch_size);
        if self.inner.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The data-set indices of global batch `pos` of `epoch` that this shard reads.
    pub fn shard_indices(&self, order: &[usize], pos: usize) -> Vec<usize> {
        let b = self.inner.cfg.batch_size;
        let idx = &order[(pos * b).min(order.len())..((pos + 1) * b).min(order.len())];
        idx[self.inner.cfg.shard.rows(idx.len())].to_vec()
    }

    /// Iterates over all batches of `epoch`.
    pub fn epoch(&self, epoch: u64) -> Batches {
        self.epoch_from(epoch, 0)
            .expect("loader: position 0 is always valid")
    }

    /// Iterates over the batches of `epoch` from position `batch` on: resuming a run after
    /// a checkpoint taken after batch `batch − 1` gives exactly the batches it would have seen.
    ///
    /// # Errors
    /// `BadPosition` if `batch > batches_per_epoch()`.
    pub fn epoch_from(&self, epoch: u64, batch: usize) -> Result<Batches> {
        let batches = self.batches_per_epoch();
        if batch > batches {
            return Err(DataError::BadPosition { batch, batches });
        }
        let order = Arc::new(self.order(epoch));
        let state = if self.inner.cfg.prefetch == 0 {
            State::Sync
        } else {
            let (tx, rx) = sync_channel(self.inner.cfg.prefetch);
            let stop = Arc::new(AtomicBool::new(false));
            let (me, ord, st) = (self.clone(), order.clone(), stop.clone());
            let handle = std::thread::Builder::new()
                .name("hla-data-prefetch".into())
                .spawn(move || {
                    for pos in batch..batches {
                        if st.load(Ordering::Relaxed) {
                            break;
                        }
                        let r = me.batch_at(epoch, &ord, pos);
                        let failed = r.is_err();
                        if tx.send(r).is_err() || failed {
                            break;
                        }
                    }
                })
                .map_err(|e| DataError::BadOption {
                    op: "Loader::epoch_from",
                    reason: format!("cannot start the prefetch thread: {e}"),
                })?;
            State::Prefetch {
                rx: Some(rx),
                handle: Some(handle),
                stop,
            }
        };
        Ok(Batches {
            loader: self.clone(),
            epoch,
            order,
            next: batch,
            end: batches,
            done: false,
            state,
        })
    }

    fn batch_at(&self, epoch: u64, order: &[usize], pos: usize) -> Result<Batch> {
        let idx = self.shard_indices(order, pos);
        let mut batch = self.load_batch(epoch, &idx)?;
        batch.position = pos;
        Ok(batch)
    }

    /// Loads the samples `indices` (data-set indices) as one batch with the augmentation
    /// streams of `epoch`, in parallel on the loader's pool. `position` is left 0.
    ///
    /// # Errors
    /// `BadOption` for an index ≥ `len`; the first failing sample's error in batch order under
    /// [`ErrorPolicy::Error`].
    pub fn load_batch(&self, epoch: u64, indices: &[usize]) -> Result<Batch> {
        let inner = &*self.inner;
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.dataset.len()) {
            return Err(DataError::BadOption {
                op: "Loader::load_batch",
                reason: format!(
                    "sample index {bad} out of range for {} samples",
                    inner.dataset.len()
                ),
            });
        }
        let [c, h, w] = inner.dataset.sample_shape();
        let mut images = Array4::<f32>::zeros((indices.len(), c, h, w));
        let seed = inner.cfg.seed;
        let ds = &inner.dataset;
        let results: Vec<Result<()>> = inner.pool.install(|| {
            images
                .axis_iter_mut(Axis(0))
                .into_par_iter()
                .zip(indices.par_iter())
                .map(|(slot, &i)| {
                    let mut rng = rng_for(seed, Purpose::Augment, epoch, i as u64);
                    ds.load(i, &mut rng, slot)
                })
                .collect()
        });
        let n_bad = results.iter().filter(|r| r.is_err()).count();
        if n_bad == 0 {
            return Ok(Batch {
                images,
                labels: indices.iter().map(|&i| ds.label(i)).collect(),
                indices: indices.to_vec(),
                epoch,
                position: 0,
                skipped: 0,
                skip_reasons: Vec::new(),
            });
        }
        if inner.cfg.on_error == ErrorPolicy::Error {
            let first = results.into_iter().find_map(|r| r.err());
            return Err(first.expect("loader: n_bad > 0 implies an error"));
        }
        let mut keep = Vec::with_capacity(indices.len() - n_bad);
        let mut skip_reasons = Vec::with_capacity(n_bad);
        for (k, (r, &i)) in results.iter().zip(indices).enumerate() {
            match r {
                Ok(()) => keep.push((k, i)),
                Err(e) => {
                    inner.skipped.fetch_add(1, Ordering::Relaxed);
                    skip_reasons.push(format!("sample {i}: {e}"));
                }
            }
        }
        let mut kept = Array4::<f32>::zeros((keep.len(), c, h, w));
        for (dst, &(k, _)) in keep.iter().enumerate() {
            kept.index_axis_mut(Axis(0), dst)
                .assign(&images.index_axis(Axis(0), k));
        }
        Ok(Batch {
            images: kept,
            labels: keep.iter().map(|&(_, i)| ds.label(i)).collect(),
            indices: keep.iter().map(|&(_, i)| i).collect(),
            epoch,
            position: 0,
            skipped: n_bad,
            skip_reasons,
        })
    }
}

enum State {
    Sync,
    Prefetch {
        rx: Option<Receiver<Result<Batch>>>,
        handle: Option<JoinHandle<()>>,
        stop: Arc<AtomicBool>,
    },
}

/// Iterator over the batches of one epoch (see [`Loader::epoch_from`]). After an error it
/// ends. Dropping it stops the prefetch thread.
pub struct Batches {
    loader: Loader,
    epoch: u64,
    order: Arc<Vec<usize>>,
    next: usize,
    end: usize,
    done: bool,
    state: State,
}

impl Batches {
    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Position of the next batch to be returned.
    pub fn position(&self) -> usize {
        self.next
    }

    /// Batches still to come (if no error occurs).
    pub fn remaining(&self) -> usize {
        if self.done {
            0
        } else {
            self.end - self.next
        }
    }
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.done || self.next >= self.end {
            return None;
        }
        let r = match &self.state {
            State::Sync => self.loader.batch_at(self.epoch, &self.order, self.next),
            State::Prefetch { rx, .. } => match rx.as_ref().and_then(|rx| rx.recv().ok()) {
                Some(r) => r,
                None => {
                    self.done = true;
                    return None;
                }
            },
        };
        if r.is_err() {
            self.done = true;
        }
        self.next += 1;
        Some(r)
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        if let State::Prefetch { rx, handle, stop } = &mut self.state {
            stop.store(true, Ordering::Relaxed);
            drop(rx.take()); // unblocks a producer waiting on a full queue
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}
