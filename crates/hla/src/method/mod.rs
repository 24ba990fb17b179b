//! The method plugged into a model: a [`LayerHook`](hla_models::LayerHook) computing every
//! quantisable layer per mode (FP / hyperspherical stage 1 / ternary stage 2 / TWN / TTQ) and
//! collecting L_d terms ([`hook`]), the method-owned parameters (Δ̄ per layer, TTQ W^p/W^n, A18
//! gains) with Algorithm 1's state ([`state`]), and their checkpoint form ([`checkpoint`]).
//!
//! The training step that uses them (forward, J = CE + λ·L_d, backward, SGD, then
//! [`MethodState::step_extras`]) is the training engine's (`hla_train::step`). Driving a run:
//! ```text
//! let mut st = MethodState::new(cfg, model)?;
//! while !st.algo.is_done() {
//!     st.begin_epoch(model)?;                       // Δ = T(t) / Δ̄ = T(80) when due
//!     for (x, y) in batches { let lr = st.lr(steps_per_epoch)?;  /* one training step */ }
//!     st.end_epoch();                               // checkpoint st.checkpoint() here
//! }
//! ```

pub mod checkpoint;
pub mod hook;
pub mod state;

pub use checkpoint::{LayerCheckpoint, MethodCheckpoint};
pub use hook::{HlaHook, HookMode, LayerState, QuantizedLayer};
pub use state::MethodState;
