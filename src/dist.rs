//! Data-parallel runs under `mpirun`: the process group of this invocation.
//!
//! Built with `--features mpi`, `hla` started by `mpirun -n R` (R > 1) joins MPI's world
//! communicator and `hla train` / `hla quantize` run as rank `r` of R: each rank reads its slice
//! of every global batch and the reductions run across the ranks in the single-process order
//! (`hla_tensor::group`), so the result is bit-identical to one process. Only rank 0 writes the
//! run directory and prints; the others stay quiet unless they fail. Messages are MPI
//! point-to-point sends of bytes; no MPI reduction is used (their summation order is the
//! implementation's).

use hla_tensor::group::Group;

/// The process group of this invocation and what keeps it alive.
pub struct Dist {
    /// `None` for a single process (no MPI, or `mpirun -n 1`).
    pub group: Option<Group>,
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

impl Dist {
    /// A single process.
    pub fn single() -> Dist {
        Dist {
            group: None,
            #[cfg(feature = "mpi")]
            _universe: None,
        }
    }

    /// This process's rank (0 for a single process).
    pub fn rank(&self) -> usize {
        self.group.as_ref().map_or(0, |g| g.rank())
    }

    /// Joins MPI when built with the `mpi` feature and started by a launcher with more than
    /// one rank; a single process otherwise.
    ///
    /// # Errors
    /// MPI cannot be initialised with the thread support the engine needs.
    pub fn init() -> anyhow::Result<Dist> {
        #[cfg(feature = "mpi")]
        {
            mpi_group::init()
        }
        #[cfg(not(feature = "mpi"))]
        {
            Ok(Dist::single())
        }
    }
}

#[cfg(feature = "mpi")]
mod mpi_group {
    use super::Dist;
    use hla_tensor::group::{Group, Transport};
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::{Destination, Source};
    use mpi::Threading;
    use std::sync::{Arc, Mutex};

    /// MPI's world communicator behind a mutex: every call is made by one thread at a time,
    /// which is what `MPI_THREAD_SERIALIZED` allows.
    struct MpiTransport {
        world: Mutex<SimpleCommunicator>,
        rank: usize,
        size: usize,
    }

    // SAFETY: MPI was initialised with at least `Threading::Serialized` (checked in `init`),
    // so MPI calls may come from any thread as long as no two run at once; every use of the
    // communicator holds the mutex.
    unsafe impl Send for MpiTransport {}
    // SAFETY: as above.
    unsafe impl Sync for MpiTransport {}

    impl Transport for MpiTransport {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn send(&self, to: usize, bytes: &[u8]) -> Result<(), String> {
            let w = self
                .world
                .lock()
                .map_err(|_| "MPI lock poisoned".to_string())?;
            let to = i32::try_from(to).map_err(|_| format!("rank {to} out of range"))?;
            w.process_at_rank(to).send(bytes);
            Ok(())
        }
        fn recv(&self, from: usize) -> Result<Vec<u8>, String> {
            let w = self
                .world
                .lock()
                .map_err(|_| "MPI lock poisoned".to_string())?;
            let from = i32::try_from(from).map_err(|_| format!("rank {from} out of range"))?;
            let (msg, _status) = w.process_at_rank(from).receive_vec::<u8>();
            Ok(msg)
        }
    }

    pub(super) fn init() -> anyhow::Result<Dist> {
        // Launched by hand (no launcher variables): a plain single process, no MPI at all.
        let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        if !launched {
            return Ok(Dist::single());
        }
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
        if threading < Threading::Serialized {
            anyhow::bail!("this MPI provides thread support {threading:?}; hla needs Serialized");
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let group = (size > 1).then(|| {
            Group::new(Arc::new(MpiTransport {
                world: Mutex::new(world),
                rank,
                size,
            }))
        });
        Ok(Dist {
            group,
            _universe: Some(universe),
        })
    }
}
