//! The method of *Hyperspherical Loss-Aware Ternary Quantization* (arXiv 2212.12649) as plain
//! ops: hyperspherical layers, the threshold T(t), the ternary straight-through estimator with
//! re-scaling S, the regulariser L_d, Algorithm 1, and the TWN / TTQ baselines.
//!
//! `docs/method.md` maps the paper to this code equation by equation; every ambiguity of the
//! specification (A1–A27) is a field of [`config::HlaConfig`] with the documented default, and
//! its hand-worked numbers (T1–T12) are tests next to the code they pin.
//!
//! Layout: weights are viewed as rows `[n, m]` (n = output units, m = fan-in; see [`real`]).
//! - [`threshold`]: T(t) (Eq. 8), global / per layer, integer percent arithmetic.
//! - [`ternary`]: Ternary(W, Δ) with α_j = 1/√nnz_j (Eqs. 4–5), S = 1 − W⊙W (Eq. 12).
//! - [`ld`]: L_d (Eq. 7) and its analytic gradient; row normalisation (Eq. 3 / spec 3.1).
//! - [`delta_grad`]: the Δ̄ gradient of Eq. 13 with the A14 variants.
//! - [`twn`], [`ttq`]: the baselines (spec section 11).
//! - [`metrics`]: sparsity, Sim, mean S, histograms.
//! - [`export`]: the 2-bit packed safetensors format.
//! - [`ops`]: the same pieces as autograd ops (ternary STE with Δ̄, TWN, TTQ, L_d on the tape).
//! - [`algorithm`]: Algorithm 1 as a resumable state machine counted in optimizer steps.
//! - [`method`]: the layer hook, the method state driving Algorithm 1, its checkpoint form.
//! - [`packed`]: inference from the packed file; [`tinynet`]: a tiny network for tests.
//!
//! The training step, evaluation and whole runs that drive these are `hla-train`'s.
//!
//! [`guide`] is `docs/method.md` rendered here: every public item of this crate links to the
//! section of the guide that explains it ("Guide: …"); start at
//! [The method in one page](crate::guide#one-page).
#![warn(missing_docs)]

/// The method, equation by equation, with the code and the test of each piece
/// (`docs/method.md`, included verbatim; its code links are relative to the repository).
#[doc = include_str!("../../../docs/method.md")]
pub mod guide {}

pub mod a8;
pub mod algorithm;
pub mod config;
pub mod delta_grad;
pub mod error;
pub mod export;
pub mod ld;
pub mod method;
pub mod metrics;
pub mod ops;
pub mod packed;
pub mod real;
pub mod ternary;
pub mod threshold;
pub mod ttq;
pub mod twn;
pub mod walkthrough;

#[cfg(test)]
pub(crate) mod testutil;
pub mod tinynet;

pub use config::{HlaConfig, Method};
pub use error::{HlaError, Result};
