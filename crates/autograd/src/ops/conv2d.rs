//! 2-D convolution (stride, padding, dilation, groups; `groups == c_in` is depthwise) over the
//! im2col kernels of `hla-tensor`.

use hla_tensor::{Activation, PackedWeights};
use ndarray::ArrayD;

use crate::op::Op;
use crate::tape::Backprop;
use crate::views::{as1, as4, grad4};
use crate::{Conv2dParams, Float, Result, Tape, Var};

const OP: &str = "conv2d";

/// `y[n, o] = Σ_{c ∈ group(o)} w[o, c] ⋆ x[n, c] + b[o]` (cross-correlation, like PyTorch).
///
/// # Shapes
/// - `x`: `[n, c_in, h, w]`, `w`: `[c_out, c_in / groups, k_h, k_w]`, `bias`: `[c_out]`
///   → `[n, c_out, h_out, w_out]`
/// - `h_out = (h + 2·pad − dil·(k_h − 1) − 1) / stride + 1`, same for `w_out`
/// # Errors
/// `BadShape` for operands of the wrong rank; the kernel's `ShapeMismatch` / `BadGroups` /
/// `KernelTooLarge` otherwise.
pub fn conv2d<F: Float>(
    tape: &mut Tape<F>,
    x: Var,
    w: Var,
    bias: Option<Var>,
    p: &Conv2dParams,
) -> Result<Var> {
    conv2d_packed(tape, x, w, bias, p, &mut PackedWeights::default())
}

/// [`conv2d`] that keeps the direct kernel's packing of `w` in `packed` for later calls with
/// the same weight buffer and values (`hla_tensor::PackedWeights`): a model evaluated batch
/// after batch then packs each layer's weights once, not on every forward. The caller must
/// drop the packing when the weights' values change (`Param::stamp`). Same values as
/// [`conv2d`].
///
/// # Shapes
/// As [`conv2d`].
/// # Errors
/// As [`conv2d`].
pub fn conv2d_packed<F: Float>(
    tape: &mut Tape<F>,
    x: Var,
    w: Var,
    bias: Option<Var>,
    p: &Conv2dParams,
    packed: &mut PackedWeights<F>,
) -> Result<Var> {
    let xv = as4(OP, tape.checked(x, OP)?)?;
    let wv = as4(OP, tape.checked(w, OP)?)?;
    let bv = match bias {
        Some(b) => Some(as1(OP, tape.checked(b, OP)?)?),
        None => None,
    };
    let y = hla_tensor::conv2d_act_packed(xv, wv, bv, Activation::None, p, tape.par(), packed)?;
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    let p = *p;
    Ok(tape.push_op(y.into_dyn(), &inputs, || Op::Conv2d { x, w, b: bias, p }))
}

/// `dx = conv2d_backward_input(dy, w)` (col2im), `dw = conv2d_backward_weight(x, dy)` (per-sample
/// partials summed in sample order), `db = Σ_{n,h,w} dy`; each only if needed. With a
/// data-parallel group, `dw` and `db` are summed over the whole batch across the ranks. `x` and `w` are
/// read from the tape, nothing was copied at record time.
pub(crate) fn conv2d_backward<F: Float>(
    bw: &mut Backprop<'_, F>,
    x: Var,
    w: Var,
    b: Option<Var>,
    p: &Conv2dParams,
    dy: ArrayD<F>,
) -> Result<()> {
    let dy = grad4(dy);
    // another use's gradient of `x` (a residual shortcut's) takes this one's in place
    let acc = if bw.needs(x) { bw.take_grad(x) } else { None };
    let (xv, wv) = (as4(OP, bw.value(x))?, as4(OP, bw.value(w))?);
    let (_, _, h, wd) = xv.dim();
    let (_, _, kh, kw) = wv.dim();
    let dx = match (bw.needs(x), acc) {
        (true, Some(acc)) => Some(hla_tensor::conv2d_backward_input_add(
            dy.view(),
            wv,
            (h, wd),
            p,
            bw.par,
            grad4(acc),
        )?),
        (true, None) => Some(hla_tensor::conv2d_backward_input(
            dy.view(),
            wv,
            (h, wd),
            p,
            bw.par,
        )?),
        (false, _) => None,
    };
    let dw = if bw.needs(w) {
        Some(hla_tensor::conv2d_backward_weight_in(
            xv,
            dy.view(),
            (kh, kw),
            p,
            bw.par,
            bw.group,
        )?)
    } else {
        None
    };
    let db = match b.filter(|&b| bw.needs(b)) {
        Some(_) => Some(hla_tensor::conv2d_backward_bias_in(
            dy.view(),
            bw.par,
            bw.group,
        )?),
        None => None,
    };
    if let Some(dx) = dx {
        bw.add(x, dx.into_dyn());
    }
    if let Some(dw) = dw {
        bw.add(w, dw.into_dyn());
    }
    if let (Some(b), Some(db)) = (b, db) {
        bw.add(b, db.into_dyn());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check;
    use crate::testutil::uniform;
    use crate::AutogradError;

    /// Odd, non-square shapes: n = 2, c_in = 6, h = 5, w = 7, groups 1 / 2 / 6 (depthwise),
    /// stride 2, pad 1, and a dilated case.
    pub(crate) fn conv_cases() -> Vec<(Vec<usize>, Vec<usize>, Conv2dParams, bool)> {
        vec![
            (
                vec![2, 6, 5, 7],
                vec![4, 6, 3, 3],
                Conv2dParams::new(2, 1),
                true,
            ),
            (
                vec![2, 6, 5, 7],
                vec![4, 3, 3, 2],
                Conv2dParams::new(1, 1).with_groups(2),
                false,
            ),
            (
                vec![2, 6, 5, 7],
                vec![6, 1, 3, 3],
                Conv2dParams::new(2, 1).with_groups(6),
                true,
            ),
            (
                vec![1, 2, 6, 5],
                vec![3, 2, 2, 2],
                Conv2dParams::new(1, 2).with_dilation(2),
                true,
            ),
        ]
    }

    #[test]
    fn gradcheck_conv2d_strided_grouped_depthwise_dilated() {
        for (i, (sx, sw, p, bias)) in conv_cases().into_iter().enumerate() {
            let mut xs = vec![uniform(&sx, 10 + i as u64), uniform(&sw, 20 + i as u64)];
            if bias {
                xs.push(uniform(&[sw[0]], 30 + i as u64));
            }
            check(
                |t, v| conv2d(t, v[0], v[1], v.get(2).copied(), &p),
                &xs,
                40 + i as u64,
            )
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        }
    }

    /// When `x` also feeds another op (a residual shortcut), the conv's backward adds its
    /// input gradient into the one already accumulated for `x`, if the other op's backward ran
    /// first. Recording the two uses in either order must give `x` the same gradient, bit for
    /// bit: on the direct stride-1 path (which adds as it stores) and on the others.
    #[test]
    fn gradient_added_into_another_uses_keeps_the_bits() {
        let mut cases = conv_cases();
        cases.push((
            vec![2, 16, 9, 7],
            vec![8, 16, 3, 3],
            Conv2dParams::new(1, 1),
            false,
        ));
        for (i, (sx, sw, p, _)) in cases.into_iter().enumerate() {
            let seed = 50 + 10 * i as u64;
            let f32s = |a: ArrayD<f64>| a.mapv(|v| v as f32);
            let (xv, wv) = (f32s(uniform(&sx, seed)), f32s(uniform(&sw, seed + 1)));
            let grad_x = |conv_first: bool| {
                let mut t = Tape::<f32>::new();
                let x = t.leaf(xv.clone());
                let w = t.leaf(wv.clone());
                let r = t.constant(f32s(uniform(&sx, seed + 2)));
                let uses = |t: &mut Tape<f32>, first: bool| {
                    if first {
                        conv2d(t, x, w, None, &p)
                    } else {
                        crate::ops::mul(t, x, r)
                    }
                };
                let a = uses(&mut t, conv_first).unwrap();
                let b = uses(&mut t, !conv_first).unwrap();
                let (a, b) = (
                    crate::ops::sum_all(&mut t, a).unwrap(),
                    crate::ops::sum_all(&mut t, b).unwrap(),
                );
                let loss = crate::ops::add(&mut t, a, b).unwrap();
                let g = t.backward(loss).unwrap();
                g.get(x)
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<u32>>()
            };
            assert_eq!(grad_x(true), grad_x(false), "case {i}");
        }
    }

    #[test]
    fn conv2d_reports_kernel_shape_errors() {
        let mut t = Tape::<f32>::new();
        let x = t.leaf(ArrayD::zeros(vec![1, 3, 5, 5]));
        let w = t.leaf(ArrayD::zeros(vec![4, 2, 3, 3]));
        let e = conv2d(&mut t, x, w, None, &Conv2dParams::new(1, 0)).unwrap_err();
        assert!(matches!(e, AutogradError::Tensor(_)), "{e}");
        let flat = t.leaf(ArrayD::zeros(vec![3, 5]));
        let e = conv2d(&mut t, flat, w, None, &Conv2dParams::new(1, 0)).unwrap_err();
        assert!(
            matches!(e, AutogradError::BadShape { op: "conv2d", .. }),
            "{e}"
        );
    }
}
