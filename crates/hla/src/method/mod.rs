//! The method plugged into a model: a [`LayerHook`](hla_models::LayerHook) computing every
//! quantisable layer per mode (FP / hyperspherical stage 1 / ternary stage 2 / TWN / TTQ) and
//! collecting L_d terms ([`hook`]), the method-owned parameters (Δ̄ per layer, TTQ W^p/W^n, A18
//! gains) with Algorithm 1's state ([`state`]), and their checkpoint form ([`checkpoint`]).
//!
//! The training step that uses them (forward, J = CE + λ·L_d, backward, SGD, then
//! [`MethodState::step_extras`]) is the training engine's (`hla_train::step`). Driving a run:
//! ```text
//! let mut st = MethodState::new(cfg, model)?;
//! st.algo.set_steps_per_epoch(batches_per_epoch)?;
//! for each batch, until st.algo.is_done():
//!     st.begin_segment(model)?;            // Δ = T(t) / Δ̄ = T(80) when a segment starts
//!     let lr = st.lr()?;                   // per-iteration SGDR of the phase
//!     /* one training step */              // ... then st.step_extras and st.after_step
//!     if st.algo.segment_complete() {      // a sub-stage / stage 2 / the baseline ends
//!         /* evaluate */ st.end_segment(); // checkpoint st.checkpoint() at any step
//!     }
//! ```
//!
//! Guide: [Algorithm 1](crate::guide#alg1).

pub mod checkpoint;
pub mod hook;
pub mod state;

pub use checkpoint::{LayerCheckpoint, MethodCheckpoint};
pub use hook::{HlaHook, HookMode, LayerState, QuantizedLayer};
pub use state::MethodState;
