//! A tiny conv net implementing `hla_models::Model` for tests of the paths ResNets do not
//! exercise: a quantised linear layer with no BatchNorm after it (A18 gain, bias kept) and the
//! hyperspherical linear forward.
//!
//! `x [n, 3, h, w]` → conv0 (3→4, 3×3, pad 1; not quantised) → bn0 → relu → c1 (4→6, 3×3, pad 1,
//! stride 2; quantised, BN after) → bn1 → relu → global average pool → fc (6→3 with bias;
//! quantised, no BN after).
//!
//! Guide: [Conventions](crate::guide#conventions).

use hla_autograd::ops::{self, BatchNormState};
use hla_autograd::{Conv2dParams, Param, Tape, Var};
use hla_models::{
    BufferMut, BufferRef, LayerHook, LayerKind, Mode, Model, QuantLayerInfo, StateMut, StateRef,
};
use ndarray::ArrayD;
use rand::{Rng, SeedableRng};

/// The tiny network (see the module docs).
///
/// Guide: [Conventions](crate::guide#conventions).
pub struct TinyNet {
    c0: Param<f32>,
    bn0: (Param<f32>, Param<f32>, BatchNormState<f32>),
    c1: Param<f32>,
    bn1: (Param<f32>, Param<f32>, BatchNormState<f32>),
    fc_w: Param<f32>,
    fc_b: Param<f32>,
}

fn bn(c: usize) -> (Param<f32>, Param<f32>, BatchNormState<f32>) {
    (
        Param::new(ArrayD::from_elem(vec![c], 1.0)),
        Param::new(ArrayD::zeros(vec![c])),
        BatchNormState::new(c),
    )
}

impl TinyNet {
    /// Draws the weights from `seed`.
    ///
    /// Guide: [Conventions](crate::guide#conventions).
    pub fn new(seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut r = |shape: &[usize], a: f32| {
            ArrayD::from_shape_fn(shape.to_vec(), |_| rng.random_range(-a..a))
        };
        Self {
            c0: Param::new(r(&[4, 3, 3, 3], 0.3)),
            bn0: bn(4),
            c1: Param::new(r(&[6, 4, 3, 3], 0.2)),
            bn1: bn(6),
            fc_w: Param::new(r(&[3, 6], 0.4)),
            fc_b: Param::new(r(&[3], 0.1)),
        }
    }
}

fn bn_state<'a>(
    pre: &str,
    b: &'a (Param<f32>, Param<f32>, BatchNormState<f32>),
) -> Vec<(String, StateRef<'a>)> {
    vec![
        (format!("{pre}.weight"), StateRef::Param(&b.0)),
        (format!("{pre}.bias"), StateRef::Param(&b.1)),
        (
            format!("{pre}.running_mean"),
            StateRef::Buffer(BufferRef::F32(&b.2.running_mean)),
        ),
        (
            format!("{pre}.running_var"),
            StateRef::Buffer(BufferRef::F32(&b.2.running_var)),
        ),
        (
            format!("{pre}.num_batches_tracked"),
            StateRef::Buffer(BufferRef::Count(b.2.num_batches_tracked)),
        ),
    ]
}

fn bn_state_mut<'a>(
    pre: &str,
    b: &'a mut (Param<f32>, Param<f32>, BatchNormState<f32>),
) -> Vec<(String, StateMut<'a>)> {
    let (g, be, s) = b;
    vec![
        (format!("{pre}.weight"), StateMut::Param(g)),
        (format!("{pre}.bias"), StateMut::Param(be)),
        (
            format!("{pre}.running_mean"),
            StateMut::Buffer(BufferMut::F32(&mut s.running_mean)),
        ),
        (
            format!("{pre}.running_var"),
            StateMut::Buffer(BufferMut::F32(&mut s.running_var)),
        ),
        (
            format!("{pre}.num_batches_tracked"),
            StateMut::Buffer(BufferMut::Count(&mut s.num_batches_tracked)),
        ),
    ]
}

impl Model for TinyNet {
    fn arch(&self) -> &str {
        "tinynet"
    }
    fn batch_norm_momenta(&self) -> Vec<(String, f32)> {
        vec![
            ("bn0".into(), self.bn0.2.momentum),
            ("bn1".into(), self.bn1.2.momentum),
        ]
    }
    fn num_classes(&self) -> usize {
        3
    }
    fn forward(
        &mut self,
        tape: &mut Tape<f32>,
        x: Var,
        mode: Mode,
        mut hook: Option<&mut dyn LayerHook>,
    ) -> hla_models::Result<Var> {
        let train = mode == Mode::Train;
        let p0 = Conv2dParams::new(1, 1);
        let w0 = tape.param(&self.c0);
        let y = ops::conv2d(tape, x, w0, None, &p0)?;
        let (g, b) = (tape.param(&self.bn0.0), tape.param(&self.bn0.1));
        let y = ops::batch_norm2d(tape, y, g, b, &mut self.bn0.2, train)?;
        let y = ops::relu(tape, y)?;
        let p1 = Conv2dParams::new(2, 1);
        let w1 = tape.param(&self.c1);
        let y = match hook.as_deref_mut() {
            Some(h) => h.conv2d(tape, "c1", y, w1, &p1, mode)?,
            None => ops::conv2d(tape, y, w1, None, &p1)?,
        };
        let (g, b) = (tape.param(&self.bn1.0), tape.param(&self.bn1.1));
        let y = ops::batch_norm2d(tape, y, g, b, &mut self.bn1.2, train)?;
        let y = ops::relu(tape, y)?;
        let y = ops::global_avg_pool(tape, y)?;
        let (w, b) = (tape.param(&self.fc_w), tape.param(&self.fc_b));
        Ok(match hook {
            Some(h) => h.linear(tape, "fc", y, w, Some(b), mode)?,
            None => ops::linear(tape, y, w, Some(b))?,
        })
    }
    fn state(&self) -> Vec<(String, StateRef<'_>)> {
        let mut v = vec![("c0.weight".to_string(), StateRef::Param(&self.c0))];
        v.extend(bn_state("bn0", &self.bn0));
        v.push(("c1.weight".into(), StateRef::Param(&self.c1)));
        v.extend(bn_state("bn1", &self.bn1));
        v.push(("fc.weight".into(), StateRef::Param(&self.fc_w)));
        v.push(("fc.bias".into(), StateRef::Param(&self.fc_b)));
        v
    }
    fn state_mut(&mut self) -> Vec<(String, StateMut<'_>)> {
        let mut v = vec![("c0.weight".to_string(), StateMut::Param(&mut self.c0))];
        v.extend(bn_state_mut("bn0", &mut self.bn0));
        v.push(("c1.weight".into(), StateMut::Param(&mut self.c1)));
        v.extend(bn_state_mut("bn1", &mut self.bn1));
        v.push(("fc.weight".into(), StateMut::Param(&mut self.fc_w)));
        v.push(("fc.bias".into(), StateMut::Param(&mut self.fc_b)));
        v
    }
    fn quantisable(&self) -> Vec<QuantLayerInfo> {
        vec![
            QuantLayerInfo {
                layer: "c1".into(),
                weight: "c1.weight".into(),
                kind: LayerKind::Conv,
                followed_by_bn: true,
            },
            QuantLayerInfo {
                layer: "fc".into(),
                weight: "fc.weight".into(),
                kind: LayerKind::Linear,
                followed_by_bn: false,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HlaConfig;
    use crate::method::MethodState;

    /// Δ̄ update through the method's optimiser (spec 8.5 / A15): momentum 0.9, lr × delta_lr_mult,
    /// no weight decay, clamp at 0. With ∂J/∂Δ̄ = 0.5, lr = 0.1, mult = 2, Δ̄₀ = 0.3:
    /// buffers 0.5, 0.95, 1.355 → Δ̄ = 0.2, 0.01, max(0.01 − 0.271, 0) = 0.
    #[test]
    fn delta_bar_sgd_momentum_and_clamp() {
        use crate::method::HookMode;
        let m = TinyNet::new(4);
        let cfg = HlaConfig {
            delta_lr_mult: 2.0,
            weight_decay: 0.5, // must not reach Δ̄
            ..Default::default()
        };
        let mut st = MethodState::new(cfg, &m).unwrap();
        st.hook.set_mode(HookMode::Ternary, 1.0);
        *st.hook.layers[0].delta_bar.value_mut() = ArrayD::from_elem(vec![1], 0.3);
        for want in [0.2f32, 0.01, 0.0] {
            let mut tape = Tape::<f32>::new();
            let d = tape.param(&st.hook.layers[0].delta_bar);
            let l = ops::mul_scalar(&mut tape, d, 0.5).unwrap();
            let l = ops::sum_all(&mut tape, l).unwrap();
            let mut g = tape.backward(l).unwrap();
            drop(tape);
            st.step_extras(&mut g, 0.1).unwrap();
            let got = st.hook.layers[0].delta_bar.value()[[0]];
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // layer 1's Δ̄ had no gradient and did not move
        assert_eq!(st.hook.layers[1].delta_bar.value()[[0]], 0.0);
    }
}
