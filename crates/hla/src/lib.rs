//! The method of *Hyperspherical Loss-Aware Ternary Quantization* (arXiv 2212.12649) as plain
//! ops: hyperspherical layers, the threshold T(t), the ternary straight-through estimator with
//! re-scaling S, the regulariser L_d, Algorithm 1, and the TWN / TTQ baselines.
