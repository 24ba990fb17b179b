//! Reverse-mode automatic differentiation for hla: a tape of recorded ops, `Var` handles, one
//! file per differentiable op with its backward and gradient check, optimizers and learning-rate
//! schedules with PyTorch semantics.
//!
//! - [`Tape`] records a forward pass; [`Tape::backward`] walks it in reverse and returns
//!   [`Gradients`] for leaves and [`Param`]s. [`Tape::no_grad`] evaluates without recording.
//! - [`ops`]: the differentiable ops, one file each; [`OpKind`] names them all (the checklist
//!   that the test `every_op_has_a_gradcheck` walks). [`CustomOp`] plugs in user ops.
//! - [`gradcheck`]: f64 central-difference checks with a random upstream gradient.
//! - [`optim`]: SGD (momentum, Nesterov, weight decay, parameter groups);
//!   [`schedule`]: constant, step, cosine, SGDR, linear warm-up.
//!
//! ```
//! use hla_autograd::{ops, Tape};
//! use ndarray::ArrayD;
//!
//! let mut tape = Tape::<f64>::new();
//! let x = tape.leaf(ArrayD::from_shape_vec(vec![3], vec![1.0, 2.0, 3.0]).unwrap());
//! let y = ops::square(&mut tape, x).unwrap();
//! let loss = ops::sum_all(&mut tape, y).unwrap();
//! let grads = tape.backward(loss).unwrap();
//! assert_eq!(grads.get(x).unwrap().as_slice().unwrap(), &[2.0, 4.0, 6.0]); // d(Σx²)/dx = 2x
//! ```
#![warn(missing_docs)]

mod broadcast;
#[cfg(test)]
mod e2e_tests;
mod error;
pub mod gradcheck;
mod linalg;
mod op;
pub mod ops;
pub mod optim;
mod param;
pub mod schedule;
mod tape;
#[cfg(test)]
mod testutil;
mod views;

pub use error::{AutogradError, Result};
pub use hla_tensor::{Conv2dParams, Float, Par, Pool2dParams};
pub use op::OpKind;
pub use ops::{BatchNormState, CustomOp};
pub use param::{Param, ParamId};
pub use tape::{Gradients, Tape, Var};
