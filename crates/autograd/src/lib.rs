//! Reverse-mode automatic differentiation for hla: a tape of recorded ops, `Var` handles, one
//! file per differentiable op with its backward and gradient check, optimizers and learning-rate
//! schedules with PyTorch semantics.
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
mod param;
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
pub mod optim;
pub mod schedule;
