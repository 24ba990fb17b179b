//! The list of every differentiable op: [`Op`] (what the tape keeps) and [`OpKind`] (its
//! names, the audit checklist).
//!
//! `Op::backward` is an exhaustive `match` with no `_ =>` arm: a new op does not compile until
//! its backward exists. The test `every_op_has_a_gradcheck` iterates [`OpKind`] the same way,
//! so a new op does not pass the suite until it has a gradient check.

use std::sync::Arc;

use ndarray::{Array1, Array2, Array4, ArrayD};
use strum::EnumIter;

use crate::ops;
use crate::ops::CustomOp;
use crate::tape::Backprop;
use crate::{Conv2dParams, Float, Pool2dParams, Result, Var};
use hla_tensor::Activation;

/// A recorded op: its inputs (in argument order), hyper-parameters, and only the state its
/// backward needs beyond the recorded values (which it reads from the tape, without copies).
/// `backward` takes the op by value, so saved state is freed as soon as it has been used.
#[rustfmt::skip] // one line per op: the checklist reads top to bottom
pub(crate) enum Op<F: Float> {
    Add { a: Var, b: Var },
    Sub { a: Var, b: Var },
    Mul { a: Var, b: Var },
    Div { a: Var, b: Var },
    Neg { x: Var },
    AddScalar { x: Var },
    MulScalar { x: Var, s: F },
    Sum { x: Var, axes: Vec<usize>, keepdim: bool },
    Mean { x: Var, axes: Vec<usize>, keepdim: bool },
    Reshape { x: Var },
    Permute { x: Var, axes: Vec<usize> },
    MatMul { a: Var, b: Var },
    Linear { x: Var, w: Var, b: Option<Var> },
    Sqrt { x: Var },
    Square { x: Var },
    Abs { x: Var },
    Pow { x: Var, p: F },
    Exp { x: Var },
    Log { x: Var },
    Clamp { x: Var, lo: F, hi: F },
    NormalizeRows { v: Var, inv_norm: Array1<F> },
    Custom { inputs: Vec<Var>, op: Arc<dyn CustomOp<F>> },
    Conv2d { x: Var, w: Var, b: Option<Var>, p: Conv2dParams },
    PatchNormalize { y: Var, x: Var, xn: Array4<F>, k_hw: (usize, usize), p: Conv2dParams },
    BatchNorm2dTrain { x: Var, gamma: Var, beta: Var, mean: Array1<F>, inv_std: Array1<F>, count: usize, synced: bool, act: Activation },
    BatchNorm2dEval { x: Var, gamma: Var, beta: Var, mean: Array1<F>, inv_std: Array1<F> },
    Relu { x: Var },
    AddRelu { a: Var, b: Var },
    Relu6 { x: Var },
    MaxPool2d { x: Var, argmax: Array4<u32> },
    AvgPool2d { x: Var, p: Pool2dParams },
    GlobalAvgPool { x: Var },
    LogSoftmax { x: Var },
    CrossEntropy { logits: Var, dlogits: Array2<F> },
}

/// Names of every differentiable op (one per variant of the tape's internal `Op`); iterate with
/// `strum::IntoEnumIterator` to audit that each has a gradient check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, EnumIter)]
pub enum OpKind {
    /// [`ops::add`]
    Add,
    /// [`ops::sub`]
    Sub,
    /// [`ops::mul`]
    Mul,
    /// [`ops::div`]
    Div,
    /// [`ops::neg`]
    Neg,
    /// [`ops::add_scalar`]
    AddScalar,
    /// [`ops::mul_scalar`]
    MulScalar,
    /// [`ops::sum`], [`ops::sum_all`]
    Sum,
    /// [`ops::mean`], [`ops::mean_all`]
    Mean,
    /// [`ops::reshape`], [`ops::flatten`]
    Reshape,
    /// [`ops::permute`], [`ops::transpose`]
    Permute,
    /// [`ops::matmul`]
    MatMul,
    /// [`ops::linear`]
    Linear,
    /// [`ops::sqrt`]
    Sqrt,
    /// [`ops::square`]
    Square,
    /// [`ops::abs`]
    Abs,
    /// [`ops::pow`]
    Pow,
    /// [`ops::exp`]
    Exp,
    /// [`ops::log`]
    Log,
    /// [`ops::clamp`]
    Clamp,
    /// [`ops::normalize_rows`]
    NormalizeRows,
    /// [`ops::custom`]
    Custom,
    /// [`ops::conv2d`]
    Conv2d,
    /// [`ops::patch_normalize`]
    PatchNormalize,
    /// [`ops::batch_norm2d`] with `train = true`
    BatchNorm2dTrain,
    /// [`ops::batch_norm2d`] with `train = false`
    BatchNorm2dEval,
    /// [`ops::relu`]
    Relu,
    /// [`ops::relu6`]
    Relu6,
    /// [`ops::add_relu`]
    AddRelu,
    /// [`ops::max_pool2d`]
    MaxPool2d,
    /// [`ops::avg_pool2d`]
    AvgPool2d,
    /// [`ops::global_avg_pool`]
    GlobalAvgPool,
    /// [`ops::log_softmax`]
    LogSoftmax,
    /// [`ops::cross_entropy`]
    CrossEntropy,
}

impl<F: Float> Op<F> {
    /// The op's name in the checklist.
    #[allow(dead_code)]
    pub(crate) fn kind(&self) -> OpKind {
        match self {
            Op::Add { .. } => OpKind::Add,
            Op::Sub { .. } => OpKind::Sub,
            Op::Mul { .. } => OpKind::Mul,
            Op::Div { .. } => OpKind::Div,
            Op::Neg { .. } => OpKind::Neg,
            Op::AddScalar { .. } => OpKind::AddScalar,
            Op::MulScalar { .. } => OpKind::MulScalar,
            Op::Sum { .. } => OpKind::Sum,
            Op::Mean { .. } => OpKind::Mean,
            Op::Reshape { .. } => OpKind::Reshape,
            Op::Permute { .. } => OpKind::Permute,
            Op::MatMul { .. } => OpKind::MatMul,
            Op::Linear { .. } => OpKind::Linear,
            Op::Sqrt { .. } => OpKind::Sqrt,
            Op::Square { .. } => OpKind::Square,
            Op::Abs { .. } => OpKind::Abs,
            Op::Pow { .. } => OpKind::Pow,
            Op::Exp { .. } => OpKind::Exp,
            Op::Log { .. } => OpKind::Log,
            Op::Clamp { .. } => OpKind::Clamp,
            Op::NormalizeRows { .. } => OpKind::NormalizeRows,
            Op::Custom { .. } => OpKind::Custom,
            Op::Conv2d { .. } => OpKind::Conv2d,
            Op::PatchNormalize { .. } => OpKind::PatchNormalize,
            Op::BatchNorm2dTrain { .. } => OpKind::BatchNorm2dTrain,
            Op::BatchNorm2dEval { .. } => OpKind::BatchNorm2dEval,
            Op::Relu { .. } => OpKind::Relu,
            Op::Relu6 { .. } => OpKind::Relu6,
            Op::AddRelu { .. } => OpKind::AddRelu,
            Op::MaxPool2d { .. } => OpKind::MaxPool2d,
            Op::AvgPool2d { .. } => OpKind::AvgPool2d,
            Op::GlobalAvgPool { .. } => OpKind::GlobalAvgPool,
            Op::LogSoftmax { .. } => OpKind::LogSoftmax,
            Op::CrossEntropy { .. } => OpKind::CrossEntropy,
        }
    }

    /// Adds this op's input gradients into `bw` given `dy = dL/d(output)`; each arm calls the
    /// `*_backward` in the op's own file.
    /// Calls `f` for every recorded value this op's backward reads (`out` is the op's own
    /// output): the tape keeps those and may free the others of a finished block while
    /// recording ([`crate::Tape::release`]). Shapes are kept for every value, so an op that
    /// needs only an operand's shape reads nothing. Exhaustive, like `backward`: each arm is the
    /// list of `bw.value` / `bw.output` calls of that op's backward, and the gradient checks
    /// run every op with everything else freed (`gradcheck::check`).
    pub(crate) fn reads(&self, out: Var, mut f: impl FnMut(Var)) {
        match self {
            Op::Add { .. } | Op::Sub { .. } | Op::Neg { .. } => {}
            Op::AddScalar { .. } | Op::MulScalar { .. } => {}
            Op::Sum { .. } | Op::Mean { .. } | Op::Reshape { .. } | Op::Permute { .. } => {}
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } | Op::GlobalAvgPool { .. } => {}
            Op::CrossEntropy { .. } => {}
            Op::Mul { a, b } | Op::Div { a, b } | Op::MatMul { a, b } => {
                f(*a);
                f(*b);
            }
            Op::Linear { x, w, .. } | Op::Conv2d { x, w, .. } => {
                f(*x);
                f(*w);
            }
            Op::PatchNormalize { y, x, .. } => {
                f(*y);
                f(*x);
            }
            Op::Square { x } | Op::Abs { x } | Op::Pow { x, .. } | Op::Log { x } => f(*x),
            Op::Clamp { x, .. } => f(*x),
            Op::Sqrt { .. } | Op::Exp { .. } | Op::NormalizeRows { .. } => f(out),
            Op::Relu { .. } | Op::Relu6 { .. } | Op::LogSoftmax { .. } => f(out),
            Op::AddRelu { .. } => f(out),
            Op::Custom { inputs, .. } => {
                inputs.iter().for_each(|&v| f(v));
                f(out);
            }
            Op::BatchNorm2dTrain {
                x,
                gamma,
                beta,
                act,
                ..
            } => {
                f(*x);
                f(*gamma);
                // a fused activation's mask recomputes the pre-activation, which needs β
                if *act != Activation::None {
                    f(*beta);
                }
            }
            Op::BatchNorm2dEval { x, gamma, .. } => {
                f(*x);
                f(*gamma);
            }
        }
    }

    pub(crate) fn backward(self, bw: &mut Backprop<'_, F>, dy: ArrayD<F>) -> Result<()> {
        match self {
            Op::Add { a, b } => return ops::add::add_backward(bw, a, b, dy),
            Op::Sub { a, b } => return ops::sub::sub_backward(bw, a, b, dy),
            Op::Mul { a, b } => return ops::mul::mul_backward(bw, a, b, dy),
            Op::Div { a, b } => return ops::div::div_backward(bw, a, b, dy),
            Op::Neg { x } => ops::neg::neg_backward(bw, x, dy),
            Op::AddScalar { x } => ops::add_scalar::add_scalar_backward(bw, x, dy),
            Op::MulScalar { x, s } => ops::mul_scalar::mul_scalar_backward(bw, x, s, dy),
            Op::Sum { x, axes, keepdim } => ops::sum::sum_backward(bw, x, &axes, keepdim, dy),
            Op::Mean { x, axes, keepdim } => ops::mean::mean_backward(bw, x, &axes, keepdim, dy),
            Op::Reshape { x } => ops::reshape::reshape_backward(bw, x, dy),
            Op::Permute { x, axes } => ops::permute::permute_backward(bw, x, &axes, dy),
            Op::MatMul { a, b } => return ops::matmul::matmul_backward(bw, a, b, dy),
            Op::Linear { x, w, b } => return ops::linear::linear_backward(bw, x, w, b, dy),
            Op::Sqrt { x } => ops::sqrt::sqrt_backward(bw, x, dy),
            Op::Square { x } => ops::square::square_backward(bw, x, dy),
            Op::Abs { x } => ops::abs::abs_backward(bw, x, dy),
            Op::Pow { x, p } => ops::pow::pow_backward(bw, x, p, dy),
            Op::Exp { x } => ops::exp::exp_backward(bw, x, dy),
            Op::Log { x } => ops::log::log_backward(bw, x, dy),
            Op::Clamp { x, lo, hi } => ops::clamp::clamp_backward(bw, x, lo, hi, dy),
            Op::NormalizeRows { v, inv_norm } => {
                ops::normalize_rows::normalize_rows_backward(bw, v, &inv_norm, dy)
            }
            Op::Custom { inputs, op } => {
                return ops::custom::custom_backward(bw, &inputs, op.as_ref(), dy)
            }
            Op::Conv2d { x, w, b, p } => return ops::conv2d::conv2d_backward(bw, x, w, b, &p, dy),
            Op::PatchNormalize { y, x, xn, k_hw, p } => {
                let inputs = (y, x);
                return ops::patch_normalize::patch_normalize_backward(
                    bw, inputs, xn, k_hw, &p, dy,
                );
            }
            Op::BatchNorm2dTrain {
                x,
                gamma,
                beta,
                mean,
                inv_std,
                count,
                synced,
                act,
            } => {
                let inputs = (x, gamma, beta);
                let stats = (mean, inv_std, count, synced);
                return ops::batch_norm::batch_norm_train_backward(bw, inputs, stats, act, dy);
            }
            Op::BatchNorm2dEval {
                x,
                gamma,
                beta,
                mean,
                inv_std,
            } => {
                let inputs = (x, gamma, beta);
                return ops::batch_norm::batch_norm_eval_backward(bw, inputs, mean, inv_std, dy);
            }
            Op::Relu { x } => ops::relu::relu_backward(bw, x, dy),
            Op::Relu6 { x } => ops::relu6::relu6_backward(bw, x, dy),
            Op::AddRelu { a, b } => ops::add_relu::add_relu_backward(bw, a, b, dy),
            Op::MaxPool2d { x, argmax } => {
                return ops::max_pool2d::max_pool2d_backward(bw, x, argmax, dy)
            }
            Op::AvgPool2d { x, p } => return ops::avg_pool2d::avg_pool2d_backward(bw, x, &p, dy),
            Op::GlobalAvgPool { x } => ops::global_avg_pool::global_avg_pool_backward(bw, x, dy),
            Op::LogSoftmax { x } => return ops::log_softmax::log_softmax_backward(bw, x, dy),
            Op::CrossEntropy { logits, dlogits } => {
                ops::cross_entropy::cross_entropy_backward(bw, logits, dlogits, dy)
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use ndarray::ArrayD;
    use strum::IntoEnumIterator;

    use super::OpKind;
    use crate::gradcheck::{check, GradcheckReport};
    use crate::ops::{self, BatchNormState, CustomOp};
    use crate::testutil::{distinct, positive, uniform};
    use crate::{Conv2dParams, Pool2dParams, Result, Tape, Var};

    /// `y = sin(x)` as a user-defined op.
    struct Sin;
    impl CustomOp<f64> for Sin {
        fn name(&self) -> &'static str {
            "sin"
        }
        fn forward(&self, x: &[&ArrayD<f64>]) -> Result<ArrayD<f64>> {
            Ok(x[0].mapv(f64::sin))
        }
        fn backward(
            &self,
            x: &[&ArrayD<f64>],
            _: &ArrayD<f64>,
            dy: &ArrayD<f64>,
        ) -> Result<Vec<Option<ArrayD<f64>>>> {
            Ok(vec![Some(dy * &x[0].mapv(f64::cos))])
        }
    }

    fn run(
        f: impl Fn(&mut Tape<f64>, &[Var]) -> Result<Var>,
        xs: &[ArrayD<f64>],
    ) -> Result<GradcheckReport> {
        check(f, xs, 99)
    }

    /// One gradient check per op kind; the `match` has no `_ =>` arm, so a new `OpKind`
    /// variant does not compile until it has a case here. Inputs are odd-shaped and kept away
    /// from kinks (ReLU at 0, max-pool ties, clamp bounds).
    fn case(kind: OpKind) -> Result<GradcheckReport> {
        let (a23, b3, c23) = (uniform(&[2, 3], 1), uniform(&[3], 2), positive(&[2, 3], 3));
        match kind {
            OpKind::Add => run(|t, v| ops::add(t, v[0], v[1]), &[a23, b3]),
            OpKind::Sub => run(|t, v| ops::sub(t, v[0], v[1]), &[b3, a23]),
            OpKind::Mul => run(|t, v| ops::mul(t, v[0], v[1]), &[a23, uniform(&[2, 1], 4)]),
            OpKind::Div => run(|t, v| ops::div(t, v[0], v[1]), &[b3, c23]),
            OpKind::Neg => run(|t, v| ops::neg(t, v[0]), &[a23]),
            OpKind::AddScalar => run(|t, v| ops::add_scalar(t, v[0], 2.5), &[a23]),
            OpKind::MulScalar => run(|t, v| ops::mul_scalar(t, v[0], -0.7), &[a23]),
            OpKind::Sum => run(
                |t, v| ops::sum(t, v[0], &[0, 2], true),
                &[uniform(&[2, 3, 4], 5)],
            ),
            OpKind::Mean => run(
                |t, v| ops::mean(t, v[0], &[1], false),
                &[uniform(&[2, 3, 4], 6)],
            ),
            OpKind::Reshape => run(|t, v| ops::flatten(t, v[0], 1), &[uniform(&[2, 3, 2], 7)]),
            OpKind::Permute => run(
                |t, v| ops::permute(t, v[0], &[2, 0, 1]),
                &[uniform(&[2, 3, 4], 8)],
            ),
            OpKind::MatMul => run(
                |t, v| ops::matmul(t, v[0], v[1]),
                &[uniform(&[3, 4], 9), uniform(&[4, 2], 10)],
            ),
            OpKind::Linear => run(
                |t, v| ops::linear(t, v[0], v[1], Some(v[2])),
                &[
                    uniform(&[3, 4], 11),
                    uniform(&[5, 4], 12),
                    uniform(&[5], 13),
                ],
            ),
            OpKind::Sqrt => run(|t, v| ops::sqrt(t, v[0]), &[c23]),
            OpKind::Square => run(|t, v| ops::square(t, v[0]), &[a23]),
            OpKind::Abs => run(|t, v| ops::abs(t, v[0]), &[c23.mapv(|v| v - 1.25)]),
            OpKind::Pow => run(|t, v| ops::pow(t, v[0], 1.5), &[c23]),
            OpKind::Exp => run(|t, v| ops::exp(t, v[0]), &[a23]),
            OpKind::Log => run(|t, v| ops::log(t, v[0]), &[c23]),
            OpKind::Clamp => run(
                |t, v| ops::clamp(t, v[0], -0.5, 0.5),
                &[distinct(&[2, 3], 0.3, 14)],
            ),
            OpKind::NormalizeRows => run(
                |t, v| ops::normalize_rows(t, v[0], 1e-6),
                &[uniform(&[4, 2, 3, 3], 15)],
            ),
            OpKind::Custom => run(|t, v| ops::custom(t, v, Arc::new(Sin)), &[a23]),
            OpKind::Conv2d => {
                let p = Conv2dParams::new(2, 1).with_groups(2);
                let xs = [
                    uniform(&[2, 4, 5, 7], 16),
                    uniform(&[6, 2, 3, 3], 17),
                    uniform(&[6], 18),
                ];
                run(|t, v| ops::conv2d(t, v[0], v[1], Some(v[2]), &p), &xs)
            }
            OpKind::PatchNormalize => {
                let p = Conv2dParams::new(2, 1).with_groups(2);
                let xs = [uniform(&[2, 4, 3, 2], 29), uniform(&[2, 4, 5, 4], 30)];
                run(
                    |t, v| ops::patch_normalize(t, v[0], v[1], (3, 3), &p, 1e-3),
                    &xs,
                )
            }
            OpKind::BatchNorm2dTrain | OpKind::BatchNorm2dEval => {
                let train = kind == OpKind::BatchNorm2dTrain;
                let mut s = BatchNormState::new(3);
                s.running_mean = ndarray::arr1(&[0.1, -0.2, 0.3]);
                s.running_var = ndarray::arr1(&[0.5, 1.5, 2.0]);
                let s = Mutex::new(s);
                let xs = [
                    uniform(&[2, 3, 3, 2], 19),
                    positive(&[3], 20),
                    uniform(&[3], 21),
                ];
                run(
                    |t, v| ops::batch_norm2d(t, v[0], v[1], v[2], &mut s.lock().unwrap(), train),
                    &xs,
                )
            }
            OpKind::Relu => run(|t, v| ops::relu(t, v[0]), &[distinct(&[2, 3, 2], 0.0, 22)]),
            OpKind::Relu6 => run(
                |t, v| ops::relu6(t, v[0]),
                &[distinct(&[2, 3, 2], 0.0, 23).mapv(|v| 12.0 * v + 3.3)],
            ),
            OpKind::AddRelu => run(
                |t, v| ops::add_relu(t, v[0], v[1]),
                &[
                    distinct(&[2, 3, 2], 0.0, 40),
                    distinct(&[2, 3, 2], 0.03, 41),
                ],
            ),
            OpKind::MaxPool2d => {
                let p = Pool2dParams::new(3, 2, 1);
                run(
                    |t, v| ops::max_pool2d(t, v[0], &p),
                    &[distinct(&[2, 2, 5, 7], 0.0, 24)],
                )
            }
            OpKind::AvgPool2d => {
                let p = Pool2dParams::new(2, 2, 1);
                run(
                    |t, v| ops::avg_pool2d(t, v[0], &p),
                    &[uniform(&[2, 2, 5, 7], 25)],
                )
            }
            OpKind::GlobalAvgPool => run(
                |t, v| ops::global_avg_pool(t, v[0]),
                &[uniform(&[2, 3, 3, 5], 26)],
            ),
            OpKind::LogSoftmax => run(|t, v| ops::log_softmax(t, v[0]), &[uniform(&[3, 5], 27)]),
            OpKind::CrossEntropy => run(
                |t, v| ops::cross_entropy(t, v[0], &[4, 0, 2], 0.1),
                &[uniform(&[3, 5], 28)],
            ),
        }
    }

    #[test]
    fn every_op_has_a_gradcheck() {
        let mut count = 0;
        for kind in OpKind::iter() {
            let report = case(kind).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert!(report.elements > 0, "{kind:?} checked nothing");
            count += 1;
        }
        // Written to the stderr handle directly so the count shows even for a passing test.
        writeln!(
            std::io::stderr(),
            "every_op_has_a_gradcheck: {count} of {} differentiable ops gradient-checked in f64",
            OpKind::iter().count()
        )
        .unwrap();
        assert_eq!(count, OpKind::iter().count());
    }
}
