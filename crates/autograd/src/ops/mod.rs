//! Differentiable ops, one file each with its forward, backward and tests. Every op takes the
//! tape first and returns the output's [`crate::Var`]; when no input needs a gradient nothing is
//! saved for backward.

pub(crate) mod abs;
pub(crate) mod add;
pub(crate) mod add_relu;
pub(crate) mod add_scalar;
pub(crate) mod avg_pool2d;
pub(crate) mod batch_norm;
pub(crate) mod clamp;
pub(crate) mod conv2d;
pub(crate) mod cross_entropy;
pub(crate) mod custom;
pub(crate) mod detach;
pub(crate) mod div;
pub(crate) mod exp;
pub(crate) mod global_avg_pool;
pub(crate) mod linear;
pub(crate) mod log;
pub(crate) mod log_softmax;
pub(crate) mod matmul;
pub(crate) mod max_pool2d;
pub(crate) mod mean;
pub(crate) mod mul;
pub(crate) mod mul_scalar;
pub(crate) mod neg;
pub(crate) mod normalize_rows;
pub(crate) mod patch_normalize;
pub(crate) mod permute;
pub(crate) mod pow;
pub(crate) mod relu;
pub(crate) mod relu6;
pub(crate) mod reshape;
pub(crate) mod sqrt;
pub(crate) mod square;
pub(crate) mod sub;
pub(crate) mod sum;

pub use abs::abs;
pub use add::add;
pub use add_relu::add_relu;
pub use add_scalar::add_scalar;
pub use avg_pool2d::avg_pool2d;
pub use batch_norm::{
    batch_norm2d, batch_norm2d_eval_act, batch_norm2d_eval_add_act, batch_norm2d_train_act,
    BatchNormState,
};
pub use clamp::clamp;
pub use conv2d::{conv2d, conv2d_packed};
pub use cross_entropy::cross_entropy;
pub use custom::{custom, CustomOp};
pub use detach::detach;
pub use div::div;
pub use exp::exp;
pub use global_avg_pool::global_avg_pool;
pub use linear::linear;
pub use log::log;
pub use log_softmax::log_softmax;
pub use matmul::matmul;
pub use max_pool2d::max_pool2d;
pub use mean::{mean, mean_all};
pub use mul::mul;
pub use mul_scalar::mul_scalar;
pub use neg::neg;
pub use normalize_rows::{normalize_rows, row_norms};
pub use patch_normalize::patch_normalize;
pub use permute::{permute, transpose};
pub use pow::pow;
pub use relu::relu;
pub use relu6::relu6;
pub use reshape::{flatten, reshape};
pub use sqrt::sqrt;
pub use square::square;
pub use sub::sub;
pub use sum::{sum, sum_all};
