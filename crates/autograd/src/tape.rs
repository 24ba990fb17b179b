//! The tape: an append-only record of a forward pass, walked in reverse by `backward`.
//!
//! Every value computed while recording is a node; a node produced by a differentiable op keeps
//! the op (its inputs and whatever its backward needs, see [`crate::op::Op`]). Backward visits
//! nodes from the output down to index 0, the reverse of recording order, so every sum it
//! performs has a fixed order. Gradients of a node used several times are summed into its slot
//! (`+=`), never overwritten.

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::{ArrayD, Dimension, IxDyn};

use crate::broadcast::add_in_place;
use crate::op::Op;
use crate::{AutogradError, Float, Par, Param, ParamId, Result};
use hla_tensor::group::Group;

/// Handle to a value recorded on a [`Tape`]: an index into it, cheap to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(pub(crate) usize);

impl Var {
    /// Position of the value on its tape (recording order).
    pub fn index(self) -> usize {
        self.0
    }
}

/// One recorded value and, for a differentiable op's output, how to differentiate it.
pub(crate) struct Node<F: Float> {
    /// The value; shared with a [`Param`] for parameters. Always in standard (C) layout.
    pub(crate) value: Arc<ArrayD<F>>,
    /// Whether a gradient flows to this node (a leaf or parameter, or an op output with such an
    /// input).
    pub(crate) requires_grad: bool,
    /// The op that produced the value; `None` for leaves, parameters and constants.
    pub(crate) op: Option<Op<F>>,
    /// Whether axis 0 of the value is the batch (the input batch and everything computed from
    /// it): with a data-parallel group, reductions over that axis run across the ranks.
    pub(crate) batched: bool,
    /// The value's shape, kept when [`Tape::release`] drops the value (backward sums
    /// gradients to operands' shapes).
    pub(crate) shape: IxDyn,
    /// Whether some recorded op's backward reads the value ([`Op::reads`]): such a value is
    /// never released.
    pub(crate) read_by_backward: bool,
    /// Whether [`Tape::release`] dropped the value.
    pub(crate) released: bool,
}

/// Append-only record of a forward pass.
///
/// [`Tape::new`] records for backward; [`Tape::no_grad`] only computes values (evaluation):
/// nothing is kept for backward and every result is a constant. Drop the tape after each
/// training step: backward frees what the ops saved as it goes, and dropping the tape frees
/// the forward values.
pub struct Tape<F: Float> {
    pub(crate) nodes: Vec<Node<F>>,
    params: HashMap<ParamId, Var>,
    retained: Vec<Var>,
    grad_enabled: bool,
    differentiated: bool,
    par: Par,
    group: Option<Group>,
    local_bn: bool,
}

impl<F: Float> Default for Tape<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Float> Tape<F> {
    /// A tape that records ops for backward.
    pub fn new() -> Self {
        Tape {
            nodes: Vec::new(),
            params: HashMap::new(),
            retained: Vec::new(),
            grad_enabled: true,
            differentiated: false,
            par: Par::default(),
            group: None,
            local_bn: false,
        }
    }

    /// A tape that only evaluates: no op is recorded and no gradient can be taken.
    pub fn no_grad() -> Self {
        Tape {
            grad_enabled: false,
            ..Self::new()
        }
    }

    /// Whether this tape records ops for backward (false for [`Tape::no_grad`]).
    pub fn is_recording(&self) -> bool {
        self.grad_enabled
    }

    /// Sets how the kernels called by ops may parallelise (default `Par::Rayon`); results are
    /// bit-identical either way.
    pub fn set_par(&mut self, par: Par) {
        self.par = par;
    }

    /// The parallelism passed to kernels.
    pub fn par(&self) -> Par {
        self.par
    }

    /// Makes this tape one rank's part of a data-parallel step: it holds rows
    /// [`Group::rows`] of the global batch, and every reduction over the batch (batch-norm
    /// statistics, weight and bias gradients, the loss) runs across the group in the
    /// single-process order, so every rank computes the bits of the whole batch.
    pub fn set_group(&mut self, group: Option<Group>) {
        self.group = group;
    }

    /// With a group: normalise batch-norm layers with this rank's own statistics (`true`,
    /// PyTorch DDP's default; the affine parameters' gradients are still summed across the
    /// ranks) instead of the global batch's (`false`, the default: bit-identical to one
    /// process).
    pub fn set_local_batch_norm(&mut self, local: bool) {
        self.local_bn = local;
    }

    /// The group batch-norm statistics are reduced over (`None` for per-rank statistics).
    pub fn batch_norm_group(&self) -> Option<&Group> {
        self.group().filter(|_| !self.local_bn)
    }

    /// The data-parallel group (`None`: one process, or one rank).
    pub fn group(&self) -> Option<&Group> {
        self.group.as_ref().filter(|g| g.size() > 1)
    }

    /// Where this rank's `n` rows sit in the global batch: `(first row, global rows)`;
    /// `(0, n)` without a group. A collective: every rank of the group must call it.
    ///
    /// # Errors
    /// `Tensor(Comm)` for a failed transfer.
    pub fn global_rows(&self, n: usize) -> Result<(usize, usize)> {
        let Some(g) = self.group() else {
            return Ok((0, n));
        };
        let counts = g.gather("global_rows", &[n as f64])?;
        let start = counts[..g.rank()].iter().map(|&c| c as usize).sum();
        Ok((start, counts.iter().map(|&c| c as usize).sum()))
    }

    /// A constant whose axis 0 is the batch (the input images): values computed from it are
    /// batched too, which is what data-parallel reductions go by ([`Tape::set_group`]).
    pub fn batch_input(&mut self, value: ArrayD<F>) -> Var {
        let v = self.constant(value);
        self.nodes[v.0].batched = true;
        v
    }

    /// Whether axis 0 of `v` is the batch (see [`Tape::batch_input`]).
    pub fn is_batched(&self, v: Var) -> bool {
        self.nodes.get(v.0).is_some_and(|n| n.batched)
    }

    /// Refuses, with a data-parallel group, an op on the batched `v` that does not keep the
    /// batch on axis 0 sample by sample (`keeps` false): such an op has no cross-rank form.
    ///
    /// # Errors
    /// `DataParallel` naming `op`.
    pub(crate) fn check_batch_axis(&self, op: &'static str, v: Var, keeps: bool) -> Result<()> {
        if self.group().is_some() && self.is_batched(v) && !keeps {
            return Err(AutogradError::DataParallel {
                op,
                reason: "it would mix or reduce the batch axis (axis 0) of a batched value".into(),
            });
        }
        Ok(())
    }

    /// Marks an op's output as not batched (a reduction over the batch, e.g. the loss).
    pub(crate) fn unbatch(&mut self, v: Var) {
        self.nodes[v.0].batched = false;
    }

    /// Number of values recorded so far.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A leaf for a trainable parameter (requires grad on a recording tape). The tape shares the
    /// parameter's storage. Calling it again with the same parameter returns the same `Var`, so
    /// all uses of a parameter sum into one gradient ([`Gradients::of_param`]).
    pub fn param(&mut self, p: &Param<F>) -> Var {
        if let Some(&v) = self.params.get(&p.id()) {
            return v;
        }
        let value = if p.value().is_standard_layout() {
            Arc::clone(p.shared())
        } else {
            Arc::new(p.value().as_standard_layout().into_owned())
        };
        let v = self.push_node(value, self.grad_enabled, None);
        self.params.insert(p.id(), v);
        v
    }

    /// A leaf that requires grad on a recording tape (e.g. the input of a gradient check).
    pub fn leaf(&mut self, value: ArrayD<F>) -> Var {
        let value = standard(value);
        self.push_node(Arc::new(value), self.grad_enabled, None)
    }

    /// A value that never receives a gradient (data, labels, masks).
    pub fn constant(&mut self, value: ArrayD<F>) -> Var {
        let value = standard(value);
        self.push_node(Arc::new(value), false, None)
    }

    /// The value of `v` (an empty array once [released](Tape::release)).
    ///
    /// # Panics
    /// If `v` was not recorded on this tape (ops return [`AutogradError::UnknownVar`] instead).
    pub fn value(&self, v: Var) -> &ArrayD<F> {
        &self.nodes[v.0].value
    }

    /// The shape of `v` (panics like [`Tape::value`]).
    pub fn shape(&self, v: Var) -> &[usize] {
        self.nodes[v.0].shape.slice()
    }

    /// Whether a gradient will flow to `v` (false for constants and on a no-grad tape).
    pub fn requires_grad(&self, v: Var) -> bool {
        self.nodes.get(v.0).is_some_and(|n| n.requires_grad)
    }

    /// Keeps the gradient of an intermediate value in the [`Gradients`] returned by backward
    /// (by default only leaves and parameters keep theirs, so memory stays bounded).
    pub fn retain_grad(&mut self, v: Var) {
        self.retained.push(v);
    }

    /// The value of `v`, or an error naming `op` if `v` is not on this tape.
    pub(crate) fn checked(&self, v: Var, op: &'static str) -> Result<&ArrayD<F>> {
        match self.nodes.get(v.0) {
            Some(n) if n.released => Err(AutogradError::Released { op, index: v.0 }),
            Some(n) => Ok(&*n.value),
            None => Err(AutogradError::UnknownVar {
                op,
                index: v.0,
                len: self.nodes.len(),
            }),
        }
    }

    /// Whether any of `inputs` needs a gradient (always false on a no-grad tape).
    pub(crate) fn any_requires_grad(&self, inputs: &[Var]) -> bool {
        self.grad_enabled && inputs.iter().any(|&v| self.requires_grad(v))
    }

    /// Records an op's output. The op (with what its backward needs) is built and kept only if
    /// one of `inputs` needs a gradient; otherwise the output is a constant and nothing is saved.
    pub(crate) fn push_op(
        &mut self,
        value: ArrayD<F>,
        inputs: &[Var],
        op: impl FnOnce() -> Op<F>,
    ) -> Var {
        let value = standard(value);
        let batched = inputs.iter().any(|v| self.is_batched(*v));
        let v = if self.any_requires_grad(inputs) {
            let op = op();
            let out = Var(self.nodes.len());
            let mut out_read = false;
            op.reads(out, |r| match self.nodes.get_mut(r.0) {
                Some(n) => n.read_by_backward = true,
                None => out_read = true, // `out`, pushed just below
            });
            let v = self.push_node(Arc::new(value), true, Some(op));
            self.nodes[v.0].read_by_backward = out_read;
            v
        } else {
            self.push_node(Arc::new(value), false, None)
        };
        self.nodes[v.0].batched = batched;
        v
    }

    /// A constant sharing the storage of `v` (no copy): what [`crate::ops::detach`] returns.
    pub(crate) fn constant_shared(&mut self, v: Var) -> Var {
        let value = Arc::clone(&self.nodes[v.0].value);
        self.push_node(value, false, None)
    }

    fn push_node(&mut self, value: Arc<ArrayD<F>>, requires_grad: bool, op: Option<Op<F>>) -> Var {
        self.nodes.push(Node {
            shape: value.raw_dim(),
            value,
            requires_grad,
            op,
            batched: false,
            read_by_backward: false,
            released: false,
        });
        Var(self.nodes.len() - 1)
    }

    /// Drops the value of `v`, whose last forward use has passed, so that a forward keeps only
    /// what is still needed (a model releases each block's intermediates once the block's output
    /// exists). In evaluation every released value goes; while recording, only an activation
    /// (a value computed from the batch, [`Tape::is_batched`]) that no recorded op's backward
    /// reads: a BatchNorm output feeding a ReLU, which differentiates from its own output, or
    /// the sum of a residual add. Values computed from the weights alone stay, small as they
    /// are, since a training step may collect some for later (HLA's L_d terms). Parameters are
    /// never dropped. The shape stays; reading a released value is an
    /// [`AutogradError::Released`] error.
    pub fn release(&mut self, v: Var) {
        if self.params.values().any(|&p| p == v) {
            return;
        }
        if let Some(n) = self.nodes.get_mut(v.0) {
            if self.grad_enabled && (n.read_by_backward || !n.batched) {
                return;
            }
            n.value = Arc::new(ArrayD::zeros(ndarray::IxDyn(&[0])));
            n.released = true;
        }
    }

    /// Number of scalars the tape holds besides the parameters (which the model owns): what a
    /// forward keeps alive.
    pub fn held_elements(&self) -> usize {
        let params: std::collections::HashSet<usize> = self.params.values().map(|v| v.0).collect();
        (0..self.nodes.len())
            .filter(|i| !params.contains(i))
            .map(|i| self.nodes[i].value.len())
            .sum()
    }

    /// Number of scalars of every value recorded besides the parameters, released or not: what
    /// the tape would hold without [`Tape::release`].
    pub fn recorded_elements(&self) -> usize {
        let params: std::collections::HashSet<usize> = self.params.values().map(|v| v.0).collect();
        (0..self.nodes.len())
            .filter(|i| !params.contains(i))
            .map(|i| self.nodes[i].shape.size())
            .sum()
    }

    /// [`Tape::release`] of every value recorded from index `start` on (see [`Tape::len`])
    /// except `keep`: the intermediates of a block whose output is `keep`.
    pub fn release_since(&mut self, start: usize, keep: Var) {
        for i in start..self.nodes.len() {
            if i != keep.0 {
                self.release(Var(i));
            }
        }
    }

    /// Gradients of the scalar `loss` (any shape with exactly one element) with respect to every
    /// leaf and parameter. If `loss` depends on none (a constant, or any value of a
    /// [`Tape::no_grad`] tape), the result holds no gradient: check [`Tape::requires_grad`]
    /// when that would be a mistake.
    ///
    /// # Errors
    /// [`AutogradError::NonScalarOutput`] if `loss` has more than one element;
    /// [`AutogradError::BackwardTwice`] on a second call.
    pub fn backward(&mut self, loss: Var) -> Result<Gradients<F>> {
        let value = self.checked(loss, "backward")?;
        if value.len() != 1 {
            return Err(AutogradError::NonScalarOutput {
                shape: value.shape().to_vec(),
            });
        }
        let seed = ArrayD::from_elem(value.raw_dim(), F::one());
        self.backward_with(loss, seed)
    }

    /// Gradients of `Σ seed ⊙ out` with respect to every leaf and parameter (a vector-Jacobian
    /// product).
    ///
    /// Walks the tape from `out` down to the first node. Each op's saved state is taken out
    /// (freed) when its backward runs, and each intermediate gradient is freed once passed on.
    ///
    /// # Errors
    /// [`AutogradError::ShapeMismatch`] if `seed` does not have the shape of `out`;
    /// [`AutogradError::BackwardTwice`] on a second call; errors of custom ops.
    pub fn backward_with(&mut self, out: Var, seed: ArrayD<F>) -> Result<Gradients<F>> {
        let value = self.checked(out, "backward")?;
        if value.shape() != seed.shape() {
            return Err(AutogradError::ShapeMismatch {
                op: "backward (seed)",
                lhs: value.shape().to_vec(),
                rhs: seed.shape().to_vec(),
            });
        }
        if self.differentiated {
            return Err(AutogradError::BackwardTwice);
        }
        self.differentiated = true;
        let mut keep = vec![false; self.nodes.len()];
        for &v in &self.retained {
            if let Some(k) = keep.get_mut(v.0) {
                *k = true;
            }
        }
        let mut grads: Vec<Option<ArrayD<F>>> = (0..self.nodes.len()).map(|_| None).collect();
        if self.nodes[out.0].requires_grad {
            grads[out.0] = Some(standard(seed));
        }
        let par = self.par;
        let group = self.group().cloned();
        for id in (0..=out.0).rev() {
            let Some(dy) = grads[id].take() else {
                continue; // not on a path from `out`
            };
            let Some(op) = self.nodes[id].op.take() else {
                grads[id] = Some(dy); // a leaf or parameter: its gradient is a result
                continue;
            };
            if keep[id] {
                grads[id] = Some(dy.clone());
            }
            let mut bw = Backprop {
                nodes: &self.nodes,
                grads: &mut grads,
                out: Var(id),
                par,
                group: group.as_ref(),
            };
            op.backward(&mut bw, dy)?;
        }
        Ok(Gradients {
            grads,
            params: self.params.clone(),
        })
    }
}

/// Returns `a` in standard (C-contiguous) layout, copying only if it is not.
pub(crate) fn standard<F: Float>(a: ArrayD<F>) -> ArrayD<F> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

/// What an op's backward sees: the recorded values, its own output, and the gradient slots it
/// adds into.
pub(crate) struct Backprop<'a, F: Float> {
    nodes: &'a [Node<F>],
    grads: &'a mut [Option<ArrayD<F>>],
    /// The node being differentiated (its value is the op's output).
    pub(crate) out: Var,
    /// Parallelism for kernels.
    pub(crate) par: Par,
    /// The data-parallel group of the tape (`None` for one process).
    pub(crate) group: Option<&'a Group>,
}

impl<F: Float> Backprop<'_, F> {
    /// Recorded value of `v`, which the op must list in [`Op::reads`] (the tape keeps only
    /// those).
    pub(crate) fn value(&self, v: Var) -> &ArrayD<F> {
        let n = &self.nodes[v.0];
        assert!(
            !n.released,
            "hla-autograd internal error: a backward read value {} that its op does not list in Op::reads",
            v.0
        );
        &n.value
    }

    /// The op's own output value (listed in [`Op::reads`] like any other).
    pub(crate) fn output(&self) -> &ArrayD<F> {
        self.value(self.out)
    }

    /// Shape of `v` (kept for released values too).
    pub(crate) fn shape(&self, v: Var) -> &[usize] {
        self.nodes[v.0].shape.slice()
    }

    /// Whether `v` takes a gradient (backward skips computing gradients nobody needs).
    pub(crate) fn needs(&self, v: Var) -> bool {
        self.nodes[v.0].requires_grad
    }

    /// Moves out the gradient accumulated so far for `v` (its other uses' contributions), for
    /// an op that adds its own contribution into that buffer and hands it back with
    /// [`Self::add`] (which then moves it in): one pass over the gradient less than adding two
    /// separate arrays.
    pub(crate) fn take_grad(&mut self, v: Var) -> Option<ArrayD<F>> {
        self.grads[v.0].take()
    }

    /// Whether axis 0 of `v` is the batch.
    pub(crate) fn batched(&self, v: Var) -> bool {
        self.nodes[v.0].batched
    }

    /// The gradient `g` of this op's output summed down to the shape of operand `v`
    /// ([`sum_to_shape`](crate::broadcast::sum_to_shape)). When the output is batched, `v` is
    /// not (a parameter broadcast over the batch) and a data-parallel group is set, the fold
    /// over samples runs across the ranks in rank order and the rest locally: the
    /// single-process bits on every rank.
    ///
    /// # Errors
    /// `Tensor(Comm)` for a failed transfer.
    pub(crate) fn reduce_to(&self, g: ArrayD<F>, v: Var) -> Result<ArrayD<F>> {
        let shape = self.shape(v);
        let over_batch = g.ndim() > 0
            && g.shape() != shape
            && (shape.len() < g.ndim() || shape[0] == 1)
            && self.batched(self.out)
            && !self.batched(v);
        match self.group {
            Some(group) if over_batch => crate::broadcast::sum_to_shape_in(g, shape, group),
            _ => Ok(crate::broadcast::sum_to_shape(g, shape)),
        }
    }

    /// Adds `g` into the gradient slot of `v` (in place when the slot is already filled, so a
    /// value used several times gets the sum, in reverse recording order).
    pub(crate) fn add(&mut self, v: Var, g: ArrayD<F>) {
        if !self.nodes[v.0].requires_grad {
            return;
        }
        assert_eq!(
            g.shape(),
            self.nodes[v.0].shape.slice(),
            "hla-autograd internal error: gradient shape differs from value shape"
        );
        match &mut self.grads[v.0] {
            Some(acc) => add_in_place(acc, &g, self.par),
            slot @ None => *slot = Some(g), // moved, not copied
        }
    }
}

/// Gradients returned by [`Tape::backward`]: one per leaf and parameter reached from the output
/// (plus values marked with [`Tape::retain_grad`]).
pub struct Gradients<F: Float> {
    grads: Vec<Option<ArrayD<F>>>,
    params: HashMap<ParamId, Var>,
}

impl<F: Float> Gradients<F> {
    /// The gradient of `v`, or `None` if `v` is not a leaf/parameter, does not require grad, or
    /// is not reached from the output.
    pub fn get(&self, v: Var) -> Option<&ArrayD<F>> {
        self.grads.get(v.0).and_then(|g| g.as_ref())
    }

    /// Moves the gradient of `v` out (e.g. to hand it to an optimizer without a copy).
    pub fn take(&mut self, v: Var) -> Option<ArrayD<F>> {
        self.grads.get_mut(v.0).and_then(|g| g.take())
    }

    /// The gradient of a parameter: the sum over every use of it on the tape, or `None` if the
    /// parameter was not recorded or not reached.
    pub fn of_param(&self, p: &Param<F>) -> Option<&ArrayD<F>> {
        self.params.get(&p.id()).and_then(|&v| self.get(v))
    }

    /// Moves the gradient of a parameter out.
    pub fn take_param(&mut self, p: &Param<F>) -> Option<ArrayD<F>> {
        let v = *self.params.get(&p.id())?;
        self.take(v)
    }
}

/// A zero-dimensional array holding `v` (the shape of a loss).
pub(crate) fn scalar<F: Float>(v: F) -> ArrayD<F> {
    ArrayD::from_elem(IxDyn(&[]), v)
}
