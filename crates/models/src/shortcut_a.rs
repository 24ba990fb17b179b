//! Option-A shortcut of the CIFAR ResNets (He et al. 2016, Sec. 4.2; akamaster's `LambdaLayer`):
//! `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))` — keep even rows and columns, then
//! zero-pad the channel dimension by `pad` on both sides. Parameter-free.

use std::sync::Arc;

use hla_autograd::ops::{self, CustomOp};
use hla_autograd::{AutogradError, Float, Tape, Var};
use ndarray::parallel::prelude::*;
use ndarray::{s, ArrayD, ArrayView3, ArrayView4, ArrayViewMutD, Axis, Ix4, IxDyn};

use crate::Result;

/// The option-A shortcut as a custom op: `x` `[n, c, h, w]` → `[n, c + 2·pad, ⌈h/2⌉, ⌈w/2⌉]` with
/// `y[:, pad + i, r, q] = x[:, i, 2r, 2q]` and zeros elsewhere.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShortcutA {
    /// Zero channels added on each side (`planes / 4`).
    pub pad: usize,
}

fn as4<'a, F: Float>(
    x: &'a ArrayD<F>,
    what: &str,
) -> std::result::Result<ndarray::ArrayView4<'a, F>, AutogradError> {
    x.view()
        .into_dimensionality::<Ix4>()
        .map_err(|_| AutogradError::Custom {
            op: "shortcut_a",
            reason: format!("{what} must be [n, c, h, w], got {:?}", x.shape()),
        })
}

/// `copy(dst[s], src[s])` for every sample `s`, samples in parallel: a copy gives the same
/// values on any thread (on one thread, the strided copies of ResNet-20's two shortcuts were
/// 1.5 % of a two-thread training step).
fn per_sample<F: Float>(
    dst: &mut ArrayD<F>,
    src: ArrayView4<'_, F>,
    copy: impl Fn(ArrayViewMutD<'_, F>, ArrayView3<'_, F>) + Sync + Send,
) {
    dst.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(src.axis_iter(Axis(0)))
        .for_each(|(d, s)| copy(d, s));
}

impl<F: Float> CustomOp<F> for ShortcutA {
    fn name(&self) -> &'static str {
        "shortcut_a"
    }

    fn forward(&self, inputs: &[&ArrayD<F>]) -> hla_autograd::Result<ArrayD<F>> {
        let x = as4(inputs[0], "input")?;
        let (n, c, h, w) = x.dim();
        let mut y = ArrayD::zeros(IxDyn(&[n, c + 2 * self.pad, h.div_ceil(2), w.div_ceil(2)]));
        let pad = self.pad;
        per_sample(&mut y, x, |mut ys, xs| {
            ys.slice_mut(s![pad..pad + c, .., ..])
                .assign(&xs.slice(s![.., ..;2, ..;2]))
        });
        Ok(y)
    }

    fn backward(
        &self,
        inputs: &[&ArrayD<F>],
        _output: &ArrayD<F>,
        dy: &ArrayD<F>,
    ) -> hla_autograd::Result<Vec<Option<ArrayD<F>>>> {
        // dx[:, i, 2r, 2q] = dy[:, pad + i, r, q]; odd rows / columns get no gradient.
        let x = as4(inputs[0], "input")?;
        let dy = as4(dy, "dy")?;
        let (n, c, h, w) = x.dim();
        let mut dx = ArrayD::zeros(IxDyn(&[n, c, h, w]));
        let pad = self.pad;
        per_sample(&mut dx, dy, |mut dxs, dys| {
            dxs.slice_mut(s![.., ..;2, ..;2])
                .assign(&dys.slice(s![pad..pad + c, .., ..]))
        });
        Ok(vec![Some(dx)])
    }
}

/// Records the option-A shortcut of `x` on the tape.
pub(crate) fn shortcut_a<F: Float>(tape: &mut Tape<F>, x: Var, pad: usize) -> Result<Var> {
    Ok(ops::custom(tape, &[x], Arc::new(ShortcutA { pad }))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    #[test]
    fn subsamples_even_positions_and_centres_channels() {
        // x[0, i, r, q] = 100 i + 10 r + q, 2 channels, 3x3 → 2x2, pad 1 → 4 channels
        let x = Array::from_shape_fn((1, 2, 3, 3), |(_, i, r, q)| (100 * i + 10 * r + q) as f32)
            .into_dyn();
        let y = ShortcutA { pad: 1 }.forward(&[&x]).unwrap();
        assert_eq!(y.shape(), &[1, 4, 2, 2]);
        let y = y.into_dimensionality::<Ix4>().unwrap();
        assert_eq!(
            y.slice(s![0, 0, .., ..])
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![0.0; 4]
        );
        assert_eq!(
            y.slice(s![0, 1, .., ..])
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![0., 2., 20., 22.]
        );
        assert_eq!(
            y.slice(s![0, 2, .., ..])
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![100., 102., 120., 122.]
        );
        assert_eq!(
            y.slice(s![0, 3, .., ..])
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![0.0; 4]
        );
    }

    #[test]
    fn backward_is_the_transpose_of_forward() {
        // <dy, A x> = <Aᵀ dy, x> for arbitrary x, dy
        let op = ShortcutA { pad: 2 };
        let x = Array::from_shape_fn((2, 3, 5, 4), |(a, b, c, d)| {
            ((a * 7 + b * 5 + c * 3 + d) % 11) as f32 - 5.0
        })
        .into_dyn();
        let y = op.forward(&[&x]).unwrap();
        assert_eq!(y.shape(), &[2, 7, 3, 2]);
        let dy = ArrayD::from_shape_fn(y.raw_dim(), |i| {
            ((i[0] * 13 + i[1] * 7 + i[2] * 3 + i[3]) % 5) as f32 - 2.0
        });
        let dx = op.backward(&[&x], &y, &dy).unwrap().pop().unwrap().unwrap();
        let lhs: f32 = (&dy * &y).sum();
        let rhs: f32 = (&dx * &x).sum();
        assert_eq!(lhs, rhs);
        assert!(lhs != 0.0);
    }
}
