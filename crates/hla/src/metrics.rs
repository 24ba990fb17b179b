//! Metrics of the method (spec 12.5): per-layer and overall sparsity, cosine similarity between
//! W and Ŵ (Table 4's Sim), mean S, empty rows, the ternary value histogram, Δ / Δ̄ values, and a
//! fixed-bin histogram of normalised weights (Figure 1).
//!
//! Guide: [Metrics](crate::guide#metrics).

use crate::config::{EmptyRow, QuantileIndex, SimAverage, ThresholdScope};
use crate::error::Result;
use crate::ld::normalize_rows;
use crate::real::{to_f64, with_rows, Real};
use crate::ternary::ternarize_rows;
use crate::threshold::thresholds;
use ndarray::{ArrayView2, ArrayViewD};
use serde::{Deserialize, Serialize};

/// Metrics of one quantised layer.
///
/// Guide: [Metrics](crate::guide#metrics).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerMetrics {
    /// Layer (module) name, e.g. "layer1.0.conv1".
    pub layer: String,
    /// n (rows = output units).
    pub rows: usize,
    /// m (fan-in).
    pub fan_in: usize,
    /// Zeros of Ŵ.
    pub zeros: usize,
    /// zeros / (n·m).
    pub sparsity: f64,
    /// Rows of Ŵ that are entirely zero.
    pub empty_rows: usize,
    /// Mean over rows of cos(w_j, ŵ_j) (0 for a zero row).
    pub mean_cos: f64,
    /// Mean of S = 1 − w² over the row-normalised weights.
    pub mean_s: f64,
    /// Threshold in use (Δ in stage 1, Δ̄ in stage 2, TWN/TTQ Δ), if any.
    pub threshold: Option<f64>,
    /// Counts of (Ŵ < 0, Ŵ = 0, Ŵ > 0).
    pub histogram: [usize; 3],
}

/// Metrics of a whole model.
///
/// Guide: [Metrics](crate::guide#metrics).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    /// Per-layer metrics, in the model's layer order.
    pub layers: Vec<LayerMetrics>,
    /// Σ zeros / Σ numel over quantised layers.
    pub sparsity: f64,
    /// Sim (A22) under the configured averaging.
    pub sim: f64,
    /// Element-weighted mean of S.
    pub mean_s: f64,
    /// Σ empty rows.
    pub empty_rows: usize,
}

/// Metrics of one layer. `w`: the full-precision weights the quantiser saw (`[n, m]`), `what`: Ŵ
/// (`[n, m]`). Cosines are the general `w·ŵ/(‖w‖‖ŵ‖)`, which equals c_j = w_j·ŵ_j for unit rows.
///
/// Guide: [Metrics](crate::guide#metrics).
pub fn layer_metrics<F: Real>(
    layer: &str,
    w: ArrayView2<'_, F>,
    what: ArrayView2<'_, F>,
    threshold: Option<f64>,
) -> LayerMetrics {
    let (n, m) = w.dim();
    let mut zeros = 0;
    let mut hist = [0usize; 3];
    let mut empty = 0;
    let mut cos_sum = 0.0f64;
    let mut s_sum = 0.0f64;
    for j in 0..n {
        let (mut dot, mut nw, mut nq, mut nz) = (0.0f64, 0.0f64, 0.0f64, 0usize);
        for (&a, &b) in w.row(j).iter().zip(what.row(j).iter()) {
            let (a, b) = (to_f64(a), to_f64(b));
            dot += a * b;
            nw += a * a;
            nq += b * b;
            if b == 0.0 {
                zeros += 1;
                hist[1] += 1;
            } else {
                nz += 1;
                hist[if b > 0.0 { 2 } else { 0 }] += 1;
            }
        }
        if nz == 0 {
            empty += 1;
        }
        if nw > 0.0 && nq > 0.0 {
            cos_sum += dot / (nw.sqrt() * nq.sqrt());
        }
        if nw > 0.0 {
            for &a in w.row(j).iter() {
                let u = to_f64(a);
                s_sum += 1.0 - u * u / nw;
            }
        } else {
            s_sum += m as f64;
        }
    }
    let numel = (n * m).max(1);
    LayerMetrics {
        layer: layer.to_string(),
        rows: n,
        fan_in: m,
        zeros,
        sparsity: zeros as f64 / numel as f64,
        empty_rows: empty,
        mean_cos: if n == 0 { 0.0 } else { cos_sum / n as f64 },
        mean_s: s_sum / numel as f64,
        threshold,
        histogram: hist,
    }
}

/// Aggregates per-layer metrics (sums in layer order).
///
/// Guide: [Metrics](crate::guide#metrics).
pub fn summarize(layers: Vec<LayerMetrics>, sim_average: SimAverage) -> ModelMetrics {
    let (mut zeros, mut numel, mut rows, mut empty) = (0usize, 0usize, 0usize, 0usize);
    let (mut cos_rows, mut cos_layers, mut s) = (0.0f64, 0.0f64, 0.0f64);
    for l in &layers {
        let ne = l.rows * l.fan_in;
        zeros += l.zeros;
        numel += ne;
        rows += l.rows;
        empty += l.empty_rows;
        cos_rows += l.mean_cos * l.rows as f64;
        cos_layers += l.mean_cos;
        s += l.mean_s * ne as f64;
    }
    let sim = match sim_average {
        SimAverage::Rows => cos_rows / rows.max(1) as f64,
        SimAverage::Layers => cos_layers / layers.len().max(1) as f64,
    };
    ModelMetrics {
        sparsity: zeros as f64 / numel.max(1) as f64,
        sim,
        mean_s: s / numel.max(1) as f64,
        empty_rows: empty,
        layers,
    }
}

/// Table 4's Sim of raw (latent) weights: normalise rows (eps_w), Ŵ = Ternary(W, T(t_pct)) under
/// `scope`, then average cos(w_j, ŵ_j). Used for the Baseline/Hypersphere rows at t = 0.7.
///
/// Guide: [Metrics](crate::guide#metrics).
///
/// # Errors
/// Propagates threshold / rank errors.
pub fn sim_at<F: Real>(
    latent: &[ArrayViewD<'_, F>],
    t_pct: u32,
    scope: ThresholdScope,
    conv: QuantileIndex,
    eps_w: F,
    average: SimAverage,
) -> Result<f64> {
    let mut normed = Vec::with_capacity(latent.len());
    for l in latent {
        normed.push(with_rows("sim_at", l.view(), |v| {
            normalize_rows(v, eps_w).0
        })?);
    }
    let views: Vec<_> = normed.iter().map(|a| a.view().into_dyn()).collect();
    let ts = thresholds(&views, t_pct, scope, conv)?;
    let mut ls = Vec::new();
    for (w, t) in normed.iter().zip(ts) {
        let q = ternarize_rows(w.view(), t, EmptyRow::Zero).dequantize();
        ls.push(layer_metrics("", w.view(), q.view(), Some(to_f64(t))));
    }
    Ok(summarize(ls, average).sim)
}

/// Histogram of `values` over `bins` equal bins on [lo, hi] (values outside are clamped into the
/// end bins): Figure 1's weight distribution of one layer.
///
/// Guide: [Metrics](crate::guide#metrics).
pub fn value_histogram<'a, F: Real>(
    values: impl IntoIterator<Item = &'a F>,
    bins: usize,
    lo: f64,
    hi: f64,
) -> Vec<usize> {
    let mut h = vec![0usize; bins.max(1)];
    let width = (hi - lo) / h.len() as f64;
    for &v in values {
        let x = to_f64(v);
        let b = if width > 0.0 {
            ((x - lo) / width).floor()
        } else {
            0.0
        };
        let b = if b.is_nan() {
            0
        } else {
            b.clamp(0.0, (h.len() - 1) as f64) as usize
        };
        h[b] += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{t1_v, t1_w};
    use ndarray::Array2;

    #[test]
    fn metrics_of_t2() {
        let w: Array2<f64> = t1_w().into_dimensionality().unwrap();
        let q = ternarize_rows(w.view(), 4.0 / 11.0, EmptyRow::Zero).dequantize();
        let m = layer_metrics("a", w.view(), q.view(), Some(4.0 / 11.0));
        assert_eq!(m.zeros, 5);
        assert_eq!(m.sparsity, 5.0 / 8.0);
        assert_eq!(m.histogram, [1, 5, 2]);
        assert_eq!(m.empty_rows, 0);
        let want_cos = (10.0 / 11.0 + 9.0 * 2f64.sqrt() / 13.0) / 2.0;
        assert!((m.mean_cos - want_cos).abs() < 1e-15);
        // T1/T7: mean S of unit rows = 1 − 1/m
        assert!((m.mean_s - 0.75).abs() < 1e-15);
        let s = summarize(vec![m.clone(), m], SimAverage::Rows);
        assert!((s.sim - want_cos).abs() < 1e-15);
        assert_eq!(s.sparsity, 5.0 / 8.0);
        // Sim of the latent V at t = 0.5 equals the same value (normalisation first)
        let v = t1_v::<f64>();
        let sim = sim_at(
            &[v.view()],
            50,
            ThresholdScope::Global,
            QuantileIndex::ZeroBased,
            0.0,
            SimAverage::Rows,
        )
        .unwrap();
        assert!((sim - want_cos).abs() < 1e-15);
    }

    /// T7: mean S = 1 − 1/m for unit rows of several fan-ins.
    #[test]
    fn t7_mean_s() {
        for (m, want) in [
            (9usize, 0.88888889),
            (64, 0.984375),
            (576, 0.99826389),
            (4608, 0.99978299),
        ] {
            let w = Array2::from_shape_fn((1, m), |(_, i)| ((i * 7 + 3) % 11) as f64 - 5.0);
            let (wn, _) = normalize_rows(w.view(), 0.0);
            let q = Array2::zeros((1, m));
            let lm = layer_metrics("x", wn.view(), q.view(), None);
            assert!((lm.mean_s - want).abs() < 1e-8, "m={m}: {}", lm.mean_s);
            assert!((lm.mean_s - (1.0 - 1.0 / m as f64)).abs() < 1e-12);
        }
    }

    #[test]
    fn histogram_bins() {
        let v = [-1.0f64, -0.5, 0.0, 0.49, 0.5, 1.0, 7.0];
        assert_eq!(value_histogram(v.iter(), 4, -1.0, 1.0), vec![1, 1, 2, 3]);
    }
}
