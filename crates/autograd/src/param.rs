//! Trainable parameters: a tensor with a stable identity, shared (not copied) with the tape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ndarray::ArrayD;

use crate::Float;

/// Stable identity of a trainable parameter, assigned once at creation.
///
/// Ids only identify; they never decide an order (optimizers keep state per position in the
/// list the caller passes, which is fixed by the model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(u64);

impl ParamId {
    /// The raw id.
    pub fn get(self) -> u64 {
        self.0
    }
}

static NEXT_PARAM_ID: AtomicU64 = AtomicU64::new(0);

/// Source of [`Param::stamp`]s, unique across every parameter of the process.
static NEXT_STAMP: AtomicU64 = AtomicU64::new(0);

fn next_stamp() -> u64 {
    NEXT_STAMP.fetch_add(1, Ordering::Relaxed)
}

/// A trainable tensor owned by a model.
///
/// The value lives behind an `Arc`: [`crate::Tape::param`] shares it with the tape instead of
/// copying it, and [`Param::value_mut`] only copies if a tape holding it is still alive.
/// `Clone` keeps the id (a clone is the *same* parameter, e.g. a model snapshot); use
/// [`Param::new`] for a distinct one.
#[derive(Clone, Debug)]
pub struct Param<F: Float> {
    id: ParamId,
    value: Arc<ArrayD<F>>,
    stamp: u64,
}

impl<F: Float> Param<F> {
    /// A new parameter with a fresh id.
    pub fn new(value: ArrayD<F>) -> Self {
        let id = ParamId(NEXT_PARAM_ID.fetch_add(1, Ordering::Relaxed));
        let value = if value.is_standard_layout() {
            value
        } else {
            value.as_standard_layout().into_owned()
        };
        Param {
            id,
            value: Arc::new(value),
            stamp: next_stamp(),
        }
    }

    /// The parameter's identity.
    pub fn id(&self) -> ParamId {
        self.id
    }

    /// The current value.
    pub fn value(&self) -> &ArrayD<F> {
        &self.value
    }

    /// Mutable access to the value (`Arc::make_mut`: no copy once every tape that recorded this
    /// parameter is dropped). Gives the parameter a new [`Param::stamp`].
    pub fn value_mut(&mut self) -> &mut ArrayD<F> {
        self.stamp = next_stamp();
        Arc::make_mut(&mut self.value)
    }

    /// A number that changes whenever the value may have: set at creation and on every
    /// [`Param::value_mut`], never shared by two values (a clone keeps its original's stamp
    /// only until either is mutated). Lets a layer keep something derived from the weights,
    /// such as a kernel's packing of them, for as long as the stamp stays the same.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// Shape of the value.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// Whether the parameter has no elements.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// The shared storage (what the tape holds).
    pub(crate) fn shared(&self) -> &Arc<ArrayD<F>> {
        &self.value
    }
}
