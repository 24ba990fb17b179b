//! [`Conv2dParams`]: stride, padding, dilation and groups, and the output size they give.

use crate::{Result, TensorError};

/// Hyper-parameters of a 2-D convolution: `(h, w)` pairs for stride, padding (each side) and
/// dilation, and the number of groups (`groups == c_in` is depthwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Stride `(s_h, s_w)`, each ≥ 1.
    pub stride: (usize, usize),
    /// Zero padding `(p_h, p_w)` on each side.
    pub padding: (usize, usize),
    /// Dilation `(d_h, d_w)`, each ≥ 1.
    pub dilation: (usize, usize),
    /// Number of groups, dividing both `c_in` and `c_out`.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self::new(1, 0)
    }
}

impl Conv2dParams {
    /// Square stride and padding, dilation 1, groups 1.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dParams {
            stride: (stride, stride),
            padding: (padding, padding),
            dilation: (1, 1),
            groups: 1,
        }
    }
    /// Same parameters with `g` groups.
    pub fn with_groups(self, g: usize) -> Self {
        Conv2dParams { groups: g, ..self }
    }
    /// Same parameters with square dilation `d`.
    pub fn with_dilation(self, d: usize) -> Self {
        Conv2dParams {
            dilation: (d, d),
            ..self
        }
    }
    /// Output spatial size `(h_out, w_out)` for input `(h, w)` and kernel `(k_h, k_w)`:
    /// `h_out = (h + 2·p_h − d_h·(k_h − 1) − 1) / s_h + 1`, same for `w_out`.
    /// # Errors
    /// `InvalidParam` for a zero stride, dilation or kernel; `KernelTooLarge` when the dilated
    /// kernel does not fit in the padded input.
    pub fn output_hw(&self, h: usize, w: usize, kh: usize, kw: usize) -> Result<(usize, usize)> {
        let op = "conv2d";
        if self.stride.0 == 0 || self.stride.1 == 0 {
            return Err(TensorError::InvalidParam {
                op,
                msg: format!("stride {:?}", self.stride),
            });
        }
        if self.dilation.0 == 0 || self.dilation.1 == 0 {
            return Err(TensorError::InvalidParam {
                op,
                msg: format!("dilation {:?}", self.dilation),
            });
        }
        if kh == 0 || kw == 0 {
            return Err(TensorError::InvalidParam {
                op,
                msg: format!("kernel ({kh}, {kw})"),
            });
        }
        let eh = self.dilation.0 * (kh - 1) + 1;
        let ew = self.dilation.1 * (kw - 1) + 1;
        let ph = h + 2 * self.padding.0;
        let pw = w + 2 * self.padding.1;
        if eh > ph || ew > pw {
            return Err(TensorError::KernelTooLarge {
                op,
                input: (h, w),
                kernel: (kh, kw),
                padding: self.padding,
                dilation: self.dilation,
            });
        }
        Ok(((ph - eh) / self.stride.0 + 1, (pw - ew) / self.stride.1 + 1))
    }
}
