//! Process groups for data-parallel training: every rank holds a contiguous slice of the global
//! batch, and each reduction over the batch is finished across ranks **in the order the
//! single-process kernel would have used**, so R ranks give the bits of one process.
//!
//! The kernels' batch reductions are left folds in sample order (weight-gradient chunk partials
//! summed in chunk order, [`Lanes`] per-channel sums over the planes of
//! samples in order). A left fold splits across ranks as a *chain*: rank 0 folds its samples,
//! sends the running state to rank 1, which folds its own samples onto it, and so on; the last
//! rank sends the finished state back to every rank. No step depends on timing or on the MPI
//! implementation's reduction order (`MPI_Allreduce` promises neither), which is what makes the
//! result bit-identical for any rank count. Small operands (a classifier's rows, the logits) are
//! instead gathered whole onto every rank, which then computes exactly what one process would.
//!
//! A [`Transport`] moves bytes between ranks; [`local_groups`] is one over in-process channels
//! (tests, one machine), the CLI's MPI build supplies one over MPI point-to-point messages.

use crate::lanes::{Lanes, LANES};
use crate::{Float, Par, Result, TensorError, DW_CHUNK};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Ordered, reliable point-to-point byte messages between the ranks of a group. Messages from
/// one rank to another arrive in the order they were sent (as MPI guarantees for one
/// communicator and tag).
pub trait Transport: Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Sends one message to rank `to`.
    ///
    /// # Errors
    /// A description of the failure (peer gone, transport error).
    fn send(&self, to: usize, bytes: &[u8]) -> std::result::Result<(), String>;
    /// Receives the next message from rank `from` (blocking).
    ///
    /// # Errors
    /// A description of the failure (peer gone, transport error).
    fn recv(&self, from: usize) -> std::result::Result<Vec<u8>, String>;
}

/// A rank's view of its group, shared by every op of a training step (cheap to clone).
#[derive(Clone)]
pub struct Group {
    t: Arc<dyn Transport>,
    /// Bytes this rank has sent (shared by the clones).
    sent: Arc<AtomicU64>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group(rank {} of {})", self.rank(), self.size())
    }
}

fn comm_err(op: &'static str, what: String) -> TensorError {
    TensorError::Comm { op, reason: what }
}

fn to_bytes<F: Float>(v: &[F]) -> Vec<u8> {
    let mut b = Vec::with_capacity(v.len() * F::BYTES);
    for &x in v {
        x.write_le(&mut b);
    }
    b
}

fn from_bytes<F: Float>(op: &'static str, b: &[u8], out: &mut Vec<F>) -> Result<()> {
    if !b.len().is_multiple_of(F::BYTES) {
        return Err(comm_err(
            op,
            format!("message of {} bytes is not whole values", b.len()),
        ));
    }
    out.clear();
    out.extend(b.chunks_exact(F::BYTES).map(F::read_le));
    Ok(())
}

impl Group {
    /// A group over `transport`.
    pub fn new(transport: Arc<dyn Transport>) -> Group {
        Group {
            t: transport,
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bytes this rank has sent so far (to measure what a step costs on the wire).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// This rank, `0..size()`.
    pub fn rank(&self) -> usize {
        self.t.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.t.size()
    }

    /// The rows of a global batch of `n` samples this rank holds: the batch is cut into
    /// chunks of [`DW_CHUNK`] samples (the weight-gradient chunks, whose fold the ranks
    /// continue), and the chunks are dealt out contiguously in rank order, the first
    /// `chunks % size` ranks taking one more. Ranks past the chunk count hold none.
    pub fn rows(&self, n: usize) -> Range<usize> {
        shard_rows(n, self.rank(), self.size())
    }

    fn send(&self, op: &'static str, to: usize, bytes: &[u8]) -> Result<()> {
        self.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.t
            .send(to, bytes)
            .map_err(|e| comm_err(op, format!("send to rank {to}: {e}")))
    }

    fn recv(&self, op: &'static str, from: usize) -> Result<Vec<u8>> {
        self.t
            .recv(from)
            .map_err(|e| comm_err(op, format!("receive from rank {from}: {e}")))
    }

    /// Continues a left fold across the ranks in rank order: rank 0 calls `local(state, true)`
    /// on `state` as given, every other rank receives the running state from its predecessor
    /// and calls `local(state, false)`; the last rank's result ends in `state` on every rank.
    /// `local` folds this rank's samples into the state (the `bool` says the fold starts here,
    /// for kernels that initialise from their first term).
    ///
    /// # Errors
    /// `Comm` naming `op` for a transport failure or a state of another length.
    pub fn chain<F: Float>(
        &self,
        op: &'static str,
        state: &mut [F],
        local: impl FnOnce(&mut [F], bool),
    ) -> Result<()> {
        let (r, size) = (self.rank(), self.size());
        if r > 0 {
            let mut got = Vec::new();
            from_bytes(op, &self.recv(op, r - 1)?, &mut got)?;
            check_len(op, state.len(), got.len())?;
            state.copy_from_slice(&got);
        }
        local(state, r == 0);
        if size == 1 {
            return Ok(());
        }
        let last = size - 1;
        if r < last {
            self.send(op, r + 1, &to_bytes(state))?;
            let mut got = Vec::new();
            from_bytes(op, &self.recv(op, last)?, &mut got)?;
            check_len(op, state.len(), got.len())?;
            state.copy_from_slice(&got);
        } else {
            let b = to_bytes(state);
            for to in 0..last {
                self.send(op, to, &b)?;
            }
        }
        Ok(())
    }

    /// The concatenation, in rank order, of every rank's `local` values, on every rank.
    ///
    /// # Errors
    /// `Comm` naming `op` for a transport failure.
    pub fn gather<F: Float>(&self, op: &'static str, local: &[F]) -> Result<Vec<F>> {
        let (r, size) = (self.rank(), self.size());
        if size == 1 {
            return Ok(local.to_vec());
        }
        let all = if r == 0 {
            let mut all = local.to_vec();
            let mut got = Vec::new();
            for from in 1..size {
                from_bytes(op, &self.recv(op, from)?, &mut got)?;
                all.extend_from_slice(&got);
            }
            let b = to_bytes(&all);
            for to in 1..size {
                self.send(op, to, &b)?;
            }
            all
        } else {
            self.send(op, 0, &to_bytes(local))?;
            let mut all = Vec::new();
            from_bytes(op, &self.recv(op, 0)?, &mut all)?;
            all
        };
        Ok(all)
    }

    /// The sum over ranks of an integer count (exact), on every rank.
    ///
    /// # Errors
    /// `Comm` naming `op` for a transport failure.
    pub fn sum_count(&self, op: &'static str, n: usize) -> Result<usize> {
        // Counts below 2⁵³ are exact in f64.
        let all = self.gather(op, &[n as f64])?;
        Ok(all.iter().map(|&v| v as usize).sum())
    }

    /// Waits until every rank has reached this point.
    ///
    /// # Errors
    /// `Comm` naming `op` for a transport failure.
    pub fn barrier(&self, op: &'static str) -> Result<()> {
        self.gather::<f32>(op, &[]).map(|_| ())
    }
}

/// Per-channel [`Lanes`] sums, `K` per channel, over this rank's samples and, with a group,
/// continued across its ranks in rank order ([`Group::chain`]): `f(ch, sums)` folds channel
/// `ch`'s planes of this rank into `sums`. Without a group (or with one rank) this is the
/// single-process fold; channels run in parallel when `par` allows, the same bits either way.
///
/// # Errors
/// `Comm` naming `op` for a failed transfer.
pub fn channel_lanes<F: Float, const K: usize>(
    group: Option<&Group>,
    op: &'static str,
    c: usize,
    par: Par,
    f: impl Fn(usize, &mut [Lanes<F>; K]) + Sync + Send,
) -> Result<Vec<[Lanes<F>; K]>> {
    let Some(g) = group.filter(|g| g.size() > 1) else {
        return Ok(crate::map_range(par, c, |ch| {
            let mut l = [Lanes::new(); K];
            f(ch, &mut l);
            l
        }));
    };
    let per = K * LANES;
    let mut state = vec![F::zero(); c * per];
    g.chain(op, &mut state, |st, _| {
        let one = |(ch, st): (usize, &mut [F])| {
            let mut l: [Lanes<F>; K] = std::array::from_fn(|k| {
                Lanes::from_array(st[k * LANES..(k + 1) * LANES].try_into().expect("LANES"))
            });
            f(ch, &mut l);
            for (k, lk) in l.iter().enumerate() {
                st[k * LANES..(k + 1) * LANES].copy_from_slice(&lk.to_array());
            }
        };
        match par {
            Par::Seq => st.chunks_mut(per).enumerate().for_each(one),
            Par::Rayon => st.par_chunks_mut(per).enumerate().for_each(one),
        }
    })?;
    Ok(state
        .chunks_exact(per)
        .map(|st| {
            std::array::from_fn(|k| {
                Lanes::from_array(st[k * LANES..(k + 1) * LANES].try_into().expect("LANES"))
            })
        })
        .collect())
}

/// [`Group::rows`] for rank `rank` of `size` (for code that knows the rank but holds no group,
/// such as a data loader).
pub fn shard_rows(n: usize, rank: usize, size: usize) -> Range<usize> {
    let size = size.max(1);
    let chunks = n.div_ceil(DW_CHUNK);
    let (q, extra) = (chunks / size, chunks % size);
    let first = rank * q + rank.min(extra);
    let mine = q + usize::from(rank < extra);
    (first * DW_CHUNK).min(n)..((first + mine) * DW_CHUNK).min(n)
}

fn check_len(op: &'static str, want: usize, got: usize) -> Result<()> {
    if want != got {
        return Err(comm_err(
            op,
            format!("received {got} values where this rank holds {want} (ranks out of step)"),
        ));
    }
    Ok(())
}

/// A [`Transport`] over in-process channels: the ranks are threads of one process.
struct LocalTransport {
    rank: usize,
    size: usize,
    /// `to[j]`: sender to rank `j`.
    to: Vec<Sender<Vec<u8>>>,
    /// `from[j]`: receiver of messages from rank `j`.
    from: Vec<Mutex<Receiver<Vec<u8>>>>,
}

impl Transport for LocalTransport {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn send(&self, to: usize, bytes: &[u8]) -> std::result::Result<(), String> {
        let s = self.to.get(to).ok_or_else(|| format!("no rank {to}"))?;
        s.send(bytes.to_vec())
            .map_err(|_| "the receiving rank has stopped".to_string())
    }
    fn recv(&self, from: usize) -> std::result::Result<Vec<u8>, String> {
        let r = self
            .from
            .get(from)
            .ok_or_else(|| format!("no rank {from}"))?;
        let r = r.lock().map_err(|_| "receiver poisoned".to_string())?;
        r.recv()
            .map_err(|_| "the sending rank has stopped".to_string())
    }
}

/// `size` groups over in-process channels, one per rank (give each to its own thread). A rank
/// that stops makes its peers' transfers fail with `Comm` instead of blocking forever.
pub fn local_groups(size: usize) -> Vec<Group> {
    // chans[i][j]: messages from rank i to rank j.
    let mut senders: Vec<Vec<Option<Sender<Vec<u8>>>>> = (0..size).map(|_| Vec::new()).collect();
    let mut receivers: Vec<Vec<Option<Receiver<Vec<u8>>>>> = (0..size)
        .map(|_| (0..size).map(|_| None).collect())
        .collect();
    for (i, row) in senders.iter_mut().enumerate() {
        for rx_row in receivers.iter_mut() {
            let (tx, rx) = channel();
            row.push(Some(tx));
            rx_row[i] = Some(rx);
        }
    }
    senders
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(rank, (tx, rx))| {
            Group::new(Arc::new(LocalTransport {
                rank,
                size,
                to: tx.into_iter().map(|s| s.expect("every pair")).collect(),
                from: rx
                    .into_iter()
                    .map(|r| Mutex::new(r.expect("every pair")))
                    .collect(),
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on every rank of an in-process group of `size`, returning the results in rank
    /// order.
    fn on_ranks<T: Send + 'static>(
        size: usize,
        f: impl Fn(Group) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let hs: Vec<_> = local_groups(size)
            .into_iter()
            .map(|g| {
                let f = f.clone();
                std::thread::spawn(move || f(g))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// A left fold of awkward f32 terms (no two orders agree) split over 1, 2, 3 and 4 ranks
    /// by `rows` gives the single-process bits on every rank.
    #[test]
    fn chain_reproduces_a_left_fold_for_any_rank_count() {
        let terms: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 113) as f32 * 1e-3 + (i as f32).powi(3) * 1e3)
            .collect();
        let mut want = 0.5f32;
        for &t in &terms {
            want += t;
        }
        for size in 1..=4 {
            let terms = terms.clone();
            let got = on_ranks(size, move |g| {
                let mut s = [0.5f32];
                let rows = g.rows(terms.len());
                g.chain("test", &mut s, |s, _| {
                    for &t in &terms[rows] {
                        s[0] += t;
                    }
                })
                .unwrap();
                s[0]
            });
            for v in got {
                assert_eq!(v.to_bits(), want.to_bits(), "{size} ranks");
            }
        }
    }

    #[test]
    fn gather_concatenates_in_rank_order_and_counts_sum() {
        let got = on_ranks(3, |g| {
            let local: Vec<f64> = (0..g.rank() + 1)
                .map(|i| (10 * g.rank() + i) as f64)
                .collect();
            let all = g.gather("test", &local).unwrap();
            let before = g.bytes_sent();
            let n = g.sum_count("test", g.rank() + 1).unwrap();
            // One f64 to rank 0 (ranks 1, 2), or the three counts to each of two ranks (rank 0).
            let sent = g.bytes_sent() - before;
            assert_eq!(sent, if g.rank() == 0 { 2 * 3 * 8 } else { 8 });
            g.barrier("test").unwrap();
            (all, n)
        });
        for (all, n) in got {
            assert_eq!(all, vec![0.0, 10.0, 11.0, 20.0, 21.0, 22.0]);
            assert_eq!(n, 6);
        }
    }

    #[test]
    fn rows_split_contiguously_and_cover_the_batch() {
        let gs = local_groups(4);
        let r: Vec<_> = gs.iter().map(|g| g.rows(128)).collect();
        assert_eq!(r, vec![0..32, 32..64, 64..96, 96..128]);
        // 80 = 10 chunks of 8: 3, 3, 2, 2 chunks.
        let r: Vec<_> = gs.iter().map(|g| g.rows(80)).collect();
        assert_eq!(r, vec![0..24, 24..48, 48..64, 64..80]);
        // 2 chunks (the second partial) for 4 ranks: the last two hold nothing.
        let r: Vec<_> = gs.iter().map(|g| g.rows(12)).collect();
        assert_eq!(r, vec![0..8, 8..12, 12..12, 12..12]);
        for n in 0..100 {
            let all: Vec<usize> = gs.iter().flat_map(|g| g.rows(n)).collect();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
            let starts = gs.iter().map(|g| g.rows(n)).filter(|r| !r.is_empty());
            assert!(starts.clone().all(|r| r.start % DW_CHUNK == 0));
        }
        assert_eq!(DW_CHUNK, 8);
    }

    /// A rank out of step (another state length) is an error, not silent corruption; a
    /// stopped peer is an error, not a hang.
    #[test]
    fn mismatched_states_and_stopped_peers_are_errors() {
        let got = on_ranks(2, |g| {
            let mut s = vec![0f32; 1 + g.rank()];
            g.chain("test", &mut s, |_, _| {})
        });
        assert!(matches!(got[1], Err(TensorError::Comm { op: "test", .. })));
        let mut gs = local_groups(2);
        drop(gs.pop());
        let mut s = [0f32];
        assert!(matches!(
            gs[0].chain("test", &mut s, |_, _| {}),
            Err(TensorError::Comm { .. })
        ));
    }
}
