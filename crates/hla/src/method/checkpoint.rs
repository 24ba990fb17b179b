//! Serialisable method state for checkpoints (Algorithm 1, Δ̄, TTQ scales, gains and their
//! momentum buffers), and its snapshot / restore on a [`MethodState`].
//!
//! Guide: [Algorithm 1](crate::guide#alg1).

use super::hook::first;
use super::MethodState;
use crate::algorithm::Algorithm1;
use crate::error::{HlaError, Result};
use hla_autograd::optim::Sgd;
use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

/// Serialisable method state for checkpoints: Algorithm 1 plus the method-owned parameters and
/// their optimiser buffers.
///
/// Guide: [Algorithm 1](crate::guide#alg1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodCheckpoint {
    /// Algorithm 1's state.
    pub algo: Algorithm1,
    /// Per quantised layer (forward order): (layer, Δ, Δ̄, W^p, W^n, gain).
    pub layers: Vec<LayerCheckpoint>,
    /// Momentum buffers of the Δ̄ optimiser (flattened; `None` = not yet created).
    pub delta_momentum: Vec<Option<Vec<f32>>>,
    /// Momentum buffers of the TTQ-scale / gain optimiser.
    pub aux_momentum: Vec<Option<Vec<f32>>>,
}

/// One layer of a [`MethodCheckpoint`].
///
/// Guide: [Algorithm 1](crate::guide#alg1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerCheckpoint {
    /// Layer name.
    pub layer: String,
    /// Stage-1 Δ.
    pub delta: f64,
    /// Δ̄.
    pub delta_bar: f32,
    /// TTQ W^p.
    pub ttq_wp: f32,
    /// TTQ W^n.
    pub ttq_wn: f32,
    /// A18 gain, if any.
    pub gain: Option<Vec<f32>>,
}

impl MethodState {
    /// Serialisable snapshot (take it between epochs).
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    pub fn checkpoint(&self) -> MethodCheckpoint {
        let bufs = |s: &Sgd<f32>| -> Vec<Option<Vec<f32>>> {
            s.state()
                .iter()
                .map(|b| b.as_ref().map(|a| a.iter().copied().collect()))
                .collect()
        };
        MethodCheckpoint {
            algo: self.algo.clone(),
            layers: self
                .hook
                .layers
                .iter()
                .map(|l| LayerCheckpoint {
                    layer: l.info.layer.clone(),
                    delta: l.delta,
                    delta_bar: first(&l.delta_bar) as f32,
                    ttq_wp: first(&l.ttq_wp) as f32,
                    ttq_wn: first(&l.ttq_wn) as f32,
                    gain: l.gain.as_ref().map(|g| g.value().iter().copied().collect()),
                })
                .collect(),
            delta_momentum: bufs(&self.delta_sgd),
            aux_momentum: bufs(&self.aux_sgd),
        }
    }

    /// Restores a snapshot taken by [`checkpoint`](Self::checkpoint) on the same model layout.
    ///
    /// Guide: [Algorithm 1](crate::guide#alg1).
    ///
    /// # Errors
    /// `State` if the layers differ.
    pub fn restore(&mut self, ck: &MethodCheckpoint) -> Result<()> {
        if ck.layers.len() != self.hook.layers.len()
            || ck
                .layers
                .iter()
                .zip(&self.hook.layers)
                .any(|(c, l)| c.layer != l.info.layer)
        {
            return Err(HlaError::State {
                op: "restore",
                reason: "checkpoint layers differ from the model's quantised layers".into(),
            });
        }
        for (c, l) in ck.layers.iter().zip(self.hook.layers.iter_mut()) {
            l.delta = c.delta;
            *l.delta_bar.value_mut() = ArrayD::from_elem(vec![1], c.delta_bar);
            *l.ttq_wp.value_mut() = ArrayD::from_elem(vec![1], c.ttq_wp);
            *l.ttq_wn.value_mut() = ArrayD::from_elem(vec![1], c.ttq_wn);
            match (&mut l.gain, &c.gain) {
                (Some(g), Some(v)) if g.len() == v.len() => {
                    *g.value_mut() =
                        ArrayD::from_shape_vec(vec![v.len()], v.clone()).expect("length checked");
                }
                (None, None) => {}
                _ => {
                    return Err(HlaError::State {
                        op: "restore",
                        reason: format!("gain of {} does not match", c.layer),
                    })
                }
            }
        }
        // momentum buffers are restored with the shapes of the parameters they belong to
        let shapes_d: Vec<Vec<usize>> = self.hook.layers.iter().map(|_| vec![1]).collect();
        let mut shapes_a = Vec::new();
        for l in &self.hook.layers {
            shapes_a.push(vec![1]);
            shapes_a.push(vec![1]);
            if let Some(g) = &l.gain {
                shapes_a.push(g.shape().to_vec());
            }
        }
        let rebuild = |bufs: &[Option<Vec<f32>>],
                       shapes: &[Vec<usize>]|
         -> Result<Vec<Option<ArrayD<f32>>>> {
            if bufs.is_empty() {
                return Ok(Vec::new());
            }
            if bufs.len() != shapes.len() {
                return Err(HlaError::State {
                    op: "restore",
                    reason: format!(
                        "{} momentum buffers for {} parameters",
                        bufs.len(),
                        shapes.len()
                    ),
                });
            }
            bufs.iter()
                .zip(shapes)
                .map(|(b, s)| match b {
                    None => Ok(None),
                    Some(v) => ArrayD::from_shape_vec(s.clone(), v.clone())
                        .map(Some)
                        .map_err(|e| HlaError::State {
                            op: "restore",
                            reason: e.to_string(),
                        }),
                })
                .collect()
        };
        self.delta_sgd
            .load_state(rebuild(&ck.delta_momentum, &shapes_d)?)?;
        self.aux_sgd
            .load_state(rebuild(&ck.aux_momentum, &shapes_a)?)?;
        self.algo = ck.algo.clone();
        if !self.algo.is_done() {
            self.sync_mode();
        }
        Ok(())
    }
}
