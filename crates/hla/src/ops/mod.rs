//! The method as autograd ops: custom-gradient quantisers (ternary STE with S and Δ̄, TWN, TTQ)
//! and L_d composed from plain tape ops, so the tape delivers every gradient (Δ̄ and the TTQ scales
//! are op inputs, hence their gradients come back through `Gradients` like any parameter's).
//!
//! Guide: [The method in one page](crate::guide#one-page).

pub mod hyperspherical;
pub mod ld_tape;
pub mod ternary_ste;
pub mod ttq_op;
pub mod twn_op;

pub use hyperspherical::{normalized_conv2d, normalized_linear, patch_norm};
pub use ld_tape::{ld_term, ld_total};
pub use ternary_ste::{ternary_ste, TernarySte};
pub use ttq_op::{ttq, TtqOp};
pub use twn_op::{twn, TwnOp};

use crate::error::HlaError;
use hla_autograd::AutogradError;

/// Wraps a method error as the autograd error a `CustomOp` must return.
pub(crate) fn custom_err(op: &'static str, e: HlaError) -> AutogradError {
    AutogradError::Custom {
        op,
        reason: e.to_string(),
    }
}
