//! Image transforms with torchvision semantics (on PIL images, as torchvision's `ImageFolder`
//! loads them), written so that a given crop box gives the same bytes as Pillow.
//!
//! - [`resize_bilinear`] is Pillow's `Image.resize(..., BILINEAR)`: a separable triangle filter
//!   whose support widens with the down-scaling factor (the "antialias" of torchvision), fixed
//!   point coefficients with 22 fractional bits, horizontal pass first, and the intermediate image
//!   rounded to `u8` between the passes (Pillow `libImaging/Resample.c`).
//! - [`random_resized_crop_box`] is `RandomResizedCrop.get_params` with its 10 attempts and the
//!   central-crop fallback; [`center_crop_offsets`] is `CenterCrop`'s `round((h − ch) / 2)` with
//!   Python's round-half-to-even.
//! - [`Normalize`] is `ToTensor` + `Normalize`: `(v / 255 − mean) / std`, each step in `f32` like
//!   PyTorch, so a value equals torchvision's to the bit.
//!
//! The random draws come from our own ChaCha8 streams, so the *boxes* differ from torchvision's;
//! given the same box, the pixels are the same (checked in the tests against torchvision).

use image::RgbImage;
use ndarray::{ArrayView3, ArrayViewMut3};
use rand::RngCore;

use crate::error::{DataError, Result};
use crate::seed::{below, uniform_f64, unit_f64};

/// ImageNet channel means (R, G, B) used by torchvision's pretrained models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (R, G, B).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A rectangle in pixel coordinates: rows `top..top + height`, columns `left..left + width`
/// (torchvision's `(i, j, h, w)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    /// First row (`i`).
    pub top: usize,
    /// First column (`j`).
    pub left: usize,
    /// Number of rows (`h`).
    pub height: usize,
    /// Number of columns (`w`).
    pub width: usize,
}

impl CropBox {
    /// The whole `width × height` image.
    pub fn full(width: usize, height: usize) -> Self {
        CropBox {
            top: 0,
            left: 0,
            height,
            width,
        }
    }
}

/// `ToTensor` followed by `Normalize(mean, std)`: `x = (v / 255 − mean[c]) / std[c]` in `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    /// Per-channel mean (after scaling to `[0, 1]`).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Normalize {
    /// Per-channel normalisation; `mean` and `std` must have the same, non-zero length and
    /// every `std` must be positive.
    pub fn new(mean: &[f32], std: &[f32]) -> Result<Self> {
        if mean.is_empty() || mean.len() != std.len() || std.iter().any(|&s| s.is_nan() || s <= 0.0)
        {
            return Err(DataError::BadOption {
                op: "Normalize::new",
                reason: format!(
                    "mean {mean:?} / std {std:?}: need equal non-zero lengths and std > 0"
                ),
            });
        }
        Ok(Normalize {
            mean: mean.to_vec(),
            std: std.to_vec(),
        })
    }

    /// ImageNet statistics (also what the pretrained CIFAR ResNet-20 in `shared/golden` uses).
    pub fn imagenet() -> Self {
        Normalize {
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
        }
    }

    /// Only `ToTensor` (`v / 255`) for `channels` channels: mean 0, std 1.
    pub fn identity(channels: usize) -> Self {
        Normalize {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Number of channels this normalisation is for.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Look-up table `lut[c][v]` of the normalised value of byte `v` in channel `c`, computed
    /// with exactly PyTorch's operation order (`v / 255`, `− mean`, `/ std`, all `f32`).
    pub fn lut(&self) -> Vec<[f32; 256]> {
        self.mean
            .iter()
            .zip(&self.std)
            .map(|(&m, &s)| {
                let mut t = [0f32; 256];
                for (v, x) in t.iter_mut().enumerate() {
                    *x = (v as f32 / 255.0 - m) / s;
                }
                t
            })
            .collect()
    }
}

/// Pillow's bilinear filter: a triangle of support 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point resampling coefficients of one axis (Pillow `precompute_coeffs` +
/// `normalize_coeffs_8bpc`): output `o` reads inputs `start[o] .. start[o] + count[o]` with
/// weights `weights[o * ksize ..][.. count[o]]`, which sum to about `2^22`.
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // triangle support 1.0 × filterscale
    let ksize = support.ceil() as usize * 2 + 1;
    let mut start = Vec::with_capacity(out_size);
    let mut count = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut pre = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // Pillow truncates toward zero with a C cast after adding 0.5 ("round the value").
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, p) in pre.iter_mut().enumerate().take(n) {
            let w = triangle((x as f64 + xmin as f64 - center + 0.5) * ss);
            *p = w;
            ww += w;
        }
        for x in 0..n {
            let k = if ww != 0.0 { pre[x] / ww } else { pre[x] };
            let f = k * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if k < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        start.push(xmin);
        count.push(n);
    }
    Coeffs {
        ksize,
        start,
        count,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow-exact bilinear resize of the region `src_box` of `src` to `out_w × out_h`, returning
/// only the output window `win` (a crop of the resized image, as `CenterCrop` after `Resize`).
/// Window pixels outside the resized image are 0, like torchvision's padding in `CenterCrop`.
///
/// # Shapes
/// `src`: `H × W` RGB; `src_box` inside it; result: `win.height × win.width` RGB.
/// # Errors
/// `BadOption` if `src_box` is empty or not inside `src`, or an output size is 0.
pub fn resize_bilinear(
    src: &RgbImage,
    src_box: CropBox,
    out_w: usize,
    out_h: usize,
    win: CropBox,
) -> Result<RgbImage> {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    if src_box.width == 0
        || src_box.height == 0
        || src_box.left + src_box.width > sw
        || src_box.top + src_box.height > sh
        || out_w == 0
        || out_h == 0
    {
        return Err(DataError::BadOption {
            op: "resize_bilinear",
            reason: format!("box {src_box:?} in {sw}×{sh} image to {out_w}×{out_h}"),
        });
    }
    let raw = src.as_raw();
    let mut out = RgbImage::new(win.width as u32, win.height as u32);
    // Window rows/columns that fall inside the resized image.
    let x_lo = win.left.min(out_w);
    let x_hi = (win.left + win.width).min(out_w);
    let y_lo = win.top.min(out_h);
    let y_hi = (win.top + win.height).min(out_h);
    if x_lo >= x_hi || y_lo >= y_hi {
        return Ok(out);
    }
    let need_h = out_w != src_box.width;
    let need_v = out_h != src_box.height;
    let ch = coeffs(src_box.width, out_w);
    let cv = coeffs(src_box.height, out_h);
    // Source rows (relative to the box) needed by the vertical pass for rows y_lo..y_hi.
    let (r0, r1) = if need_v {
        (cv.start[y_lo], cv.start[y_hi - 1] + cv.count[y_hi - 1])
    } else {
        (y_lo, y_hi)
    };
    let tw = x_hi - x_lo;
    // Horizontal pass: tmp[r - r0][x - x_lo] for box rows r0..r1, output columns x_lo..x_hi.
    let mut tmp = vec![0u8; (r1 - r0) * tw * 3];
    for r in r0..r1 {
        let row = &raw[((src_box.top + r) * sw + src_box.left) * 3..][..src_box.width * 3];
        let trow = &mut tmp[(r - r0) * tw * 3..][..tw * 3];
        if !need_h {
            trow.copy_from_slice(&row[x_lo * 3..x_hi * 3]);
            continue;
        }
        for x in x_lo..x_hi {
            let (s, n) = (ch.start[x], ch.count[x]);
            let k = &ch.weights[x * ch.ksize..][..n];
            let half = 1i32 << (PRECISION_BITS - 1);
            let (mut a, mut b, mut c) = (half, half, half);
            for (p, &w) in row[s * 3..(s + n) * 3].chunks_exact(3).zip(k) {
                a += p[0] as i32 * w;
                b += p[1] as i32 * w;
                c += p[2] as i32 * w;
            }
            let t = &mut trow[(x - x_lo) * 3..(x - x_lo) * 3 + 3];
            t[0] = clip8(a);
            t[1] = clip8(b);
            t[2] = clip8(c);
        }
    }
    // Vertical pass into the window.
    let ow = win.width;
    let mut acc = vec![0i32; tw * 3];
    let obuf: &mut [u8] = &mut out;
    for y in y_lo..y_hi {
        let orow = &mut obuf[(y - win.top) * ow * 3..][..ow * 3];
        let dst = &mut orow[(x_lo - win.left) * 3..(x_hi - win.left) * 3];
        if !need_v {
            dst.copy_from_slice(&tmp[(y - r0) * tw * 3..][..tw * 3]);
            continue;
        }
        let (s, n) = (cv.start[y], cv.count[y]);
        let k = &cv.weights[y * cv.ksize..][..n];
        // Row-wise accumulation (same integer sums as Pillow's per-pixel loop; integer
        // addition is exact, so the order does not matter) keeps the inner loop contiguous.
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (i, &w) in k.iter().enumerate() {
            let src_row = &tmp[(s + i - r0) * tw * 3..][..tw * 3];
            for (a, &v) in acc.iter_mut().zip(src_row) {
                *a += v as i32 * w;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    Ok(out)
}

/// torchvision `Resize(size)` output size for an int `size`: the shorter side becomes `size`,
/// the longer one `int(size · long / short)` (truncated, as Python's `int`).
pub fn resize_shorter_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    if width <= height {
        (size, (size as f64 * height as f64 / width as f64) as usize)
    } else {
        ((size as f64 * width as f64 / height as f64) as usize, size)
    }
}

/// Python's `round` for a non-negative half-integer-or-integer `x2 / 2` (round half to even).
fn round_half_even_div2(x2: i64) -> i64 {
    // x2 / 2 exactly; ties (odd x2) go to the even neighbour.
    let q = x2.div_euclid(2);
    if x2.rem_euclid(2) == 0 || q % 2 == 0 {
        q
    } else {
        q + 1
    }
}

/// torchvision `CenterCrop((crop_h, crop_w))` on a `width × height` image: the signed offsets
/// `(top, left)` of the crop window. They are negative when the crop is larger than the image;
/// torchvision then pads with zeros (`[(cw − w) // 2, (ch − h) // 2, (cw − w + 1) // 2,
/// (ch − h + 1) // 2]`) before cropping, and window pixels outside the image are 0.
/// `round((h − ch) / 2)` is Python's round, i.e. half to even.
pub fn center_crop_offsets(
    width: usize,
    height: usize,
    crop_w: usize,
    crop_h: usize,
) -> (i64, i64) {
    let (pl, pr) = if crop_w > width {
        ((crop_w - width) / 2, (crop_w - width).div_ceil(2))
    } else {
        (0, 0)
    };
    let (pt, pb) = if crop_h > height {
        ((crop_h - height) / 2, (crop_h - height).div_ceil(2))
    } else {
        (0, 0)
    };
    let (pw, ph) = (width + pl + pr, height + pt + pb);
    let top = round_half_even_div2(ph as i64 - crop_h as i64) - pt as i64;
    let left = round_half_even_div2(pw as i64 - crop_w as i64) - pl as i64;
    (top, left)
}

/// torchvision `RandomResizedCrop.get_params(img, scale, ratio)`: up to 10 draws of an area
/// fraction in `scale` and a log-uniform aspect ratio in `ratio`; the first box that fits is
/// placed uniformly; otherwise a central crop clamped to the ratio range.
pub fn random_resized_crop_box(
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl RngCore,
) -> CropBox {
    let area = (width * height) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform_f64(rng, scale.0, scale.1);
        let aspect = uniform_f64(rng, lr0, lr1).exp();
        let w = (target_area * aspect).sqrt().round_ties_even() as usize;
        let h = (target_area / aspect).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = below(rng, height - h + 1);
            let left = below(rng, width - w + 1);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0.min(ratio.1) {
        (
            width,
            ((width as f64 / ratio.0.min(ratio.1)).round_ties_even() as usize).max(1),
        )
    } else if in_ratio > ratio.0.max(ratio.1) {
        (
            ((height as f64 * ratio.0.max(ratio.1)).round_ties_even() as usize).max(1),
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h.min(height)) / 2,
        left: (width - w.min(width)) / 2,
        height: h.min(height),
        width: w.min(width),
    }
}

/// Writes an RGB image into `out` (`[3, h, w]`) through `lut` (see [`Normalize::lut`]),
/// mirrored left–right when `flip` (`RandomHorizontalFlip`).
///
/// # Errors
/// `ShapeMismatch` if `out` is not `[3, img.height, img.width]` or `lut` is not 3 channels.
pub fn rgb_to_tensor(
    img: &RgbImage,
    flip: bool,
    lut: &[[f32; 256]],
    mut out: ArrayViewMut3<f32>,
) -> Result<()> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if out.shape() != [3, h, w] || lut.len() != 3 {
        return Err(DataError::ShapeMismatch {
            op: "rgb_to_tensor",
            expected: vec![3, h, w],
            got: out.shape().to_vec(),
        });
    }
    let raw = img.as_raw();
    for c in 0..3 {
        let t = &lut[c];
        let mut plane = out.index_axis_mut(ndarray::Axis(0), c);
        for y in 0..h {
            let row = &raw[y * w * 3..][..w * 3];
            let mut orow = plane.row_mut(y);
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x };
                orow[x] = t[row[sx * 3 + c] as usize];
            }
        }
    }
    Ok(())
}

/// The per-image pipeline for decoded (ImageFolder) images.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageTransform {
    /// `RandomResizedCrop(size, scale, ratio)` + `RandomHorizontalFlip(flip_p)`.
    Train {
        /// Output side length (224 for ImageNet).
        size: usize,
        /// Area fraction range (torchvision default `(0.08, 1.0)`).
        scale: (f64, f64),
        /// Aspect ratio range (torchvision default `(3/4, 4/3)`).
        ratio: (f64, f64),
        /// Flip probability (torchvision default 0.5).
        flip_p: f64,
    },
    /// `Resize(resize)` (shorter side, bilinear antialias) + `CenterCrop(crop)`.
    Eval {
        /// Shorter side after resizing (256 for ImageNet).
        resize: usize,
        /// Output side length (224 for ImageNet).
        crop: usize,
    },
}

impl ImageTransform {
    /// The standard ImageNet training transform at `size` with torchvision's defaults.
    pub fn train(size: usize) -> Self {
        ImageTransform::Train {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_p: 0.5,
        }
    }

    /// The standard evaluation transform: `Resize(resize)` + `CenterCrop(crop)`.
    pub fn eval(resize: usize, crop: usize) -> Self {
        ImageTransform::Eval { resize, crop }
    }

    /// Output `[c, h, w]`.
    pub fn output_shape(&self) -> [usize; 3] {
        match *self {
            ImageTransform::Train { size, .. } => [3, size, size],
            ImageTransform::Eval { crop, .. } => [3, crop, crop],
        }
    }

    /// Checks the options (sizes > 0, ranges ordered and positive).
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(DataError::BadOption {
                op: "ImageTransform",
                reason,
            })
        };
        match *self {
            ImageTransform::Train {
                size,
                scale,
                ratio,
                flip_p,
            } => {
                let ok = size > 0
                    && scale.0 > 0.0
                    && scale.0 <= scale.1
                    && ratio.0 > 0.0
                    && ratio.0 <= ratio.1
                    && (0.0..=1.0).contains(&flip_p);
                if !ok {
                    return bad(format!("{self:?}"));
                }
            }
            ImageTransform::Eval { resize, crop } => {
                if resize == 0 || crop == 0 {
                    return bad(format!("{self:?}"));
                }
            }
        }
        Ok(())
    }

    /// Applies the transform to `img`, drawing crop box then flip from `rng`, and writes the
    /// normalised result into `out` (`[3, size, size]`).
    pub fn apply(
        &self,
        img: &RgbImage,
        rng: &mut impl RngCore,
        lut: &[[f32; 256]],
        out: ArrayViewMut3<f32>,
    ) -> Result<()> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        match *self {
            ImageTransform::Train {
                size,
                scale,
                ratio,
                flip_p,
            } => {
                let b = random_resized_crop_box(w, h, scale, ratio, rng);
                let flip = unit_f64(rng) < flip_p;
                let r = resize_bilinear(img, b, size, size, CropBox::full(size, size))?;
                rgb_to_tensor(&r, flip, lut, out)
            }
            ImageTransform::Eval { resize, crop } => {
                let (rw, rh) = resize_shorter_size(w, h, resize);
                let win = center_window(rw, rh, crop, crop);
                let r = resize_bilinear_window(img, rw, rh, win)?;
                rgb_to_tensor(&r, false, lut, out)
            }
        }
    }
}

/// Centre-crop window `(top, left, crop_h, crop_w)` with signed offsets.
fn center_window(
    width: usize,
    height: usize,
    crop_w: usize,
    crop_h: usize,
) -> (i64, i64, usize, usize) {
    let (top, left) = center_crop_offsets(width, height, crop_w, crop_h);
    (top, left, crop_h, crop_w)
}

/// Resize the whole image to `rw × rh` and cut the (signed) window out of it, zero outside.
fn resize_bilinear_window(
    img: &RgbImage,
    rw: usize,
    rh: usize,
    win: (i64, i64, usize, usize),
) -> Result<RgbImage> {
    let (top, left, ch, cw) = win;
    if top >= 0 && left >= 0 {
        let b = CropBox {
            top: top as usize,
            left: left as usize,
            height: ch,
            width: cw,
        };
        let full = CropBox::full(img.width() as usize, img.height() as usize);
        return resize_bilinear(img, full, rw, rh, b);
    }
    // Rare (crop larger than the resized image): resize fully, then place with padding.
    let full = CropBox::full(img.width() as usize, img.height() as usize);
    let r = resize_bilinear(img, full, rw, rh, CropBox::full(rw, rh))?;
    let mut out = RgbImage::new(cw as u32, ch as u32);
    for y in 0..ch as i64 {
        for x in 0..cw as i64 {
            let (sy, sx) = (y + top, x + left);
            if sy >= 0 && sx >= 0 && (sy as usize) < rh && (sx as usize) < rw {
                out.put_pixel(x as u32, y as u32, *r.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    Ok(out)
}

/// The per-sample pipeline for in-memory `[c, h, w]` byte images (CIFAR-10, MNIST).
#[derive(Clone, Debug, PartialEq)]
pub enum PixelTransform {
    /// `RandomCrop(h, padding=pad)` with zero fill + `RandomHorizontalFlip(0.5)` when `flip`.
    Train {
        /// Zero padding on every side before the random crop (4 for CIFAR).
        pad: usize,
        /// Whether to flip left–right with probability 0.5.
        flip: bool,
    },
    /// No augmentation: only `ToTensor` + `Normalize`.
    Eval,
}

impl PixelTransform {
    /// The CIFAR-10 training augmentation: pad 4, random 32×32 crop, horizontal flip.
    pub fn cifar_train() -> Self {
        PixelTransform::Train { pad: 4, flip: true }
    }

    /// Applies the transform to one `[c, h, w]` byte image, drawing the crop offsets `(i, j)`
    /// then the flip from `rng`, into `out` (`[c, h, w]`).
    ///
    /// # Errors
    /// `ShapeMismatch` if `out` or `lut` disagree with `src`'s shape.
    pub fn apply(
        &self,
        src: ArrayView3<u8>,
        rng: &mut impl RngCore,
        lut: &[[f32; 256]],
        mut out: ArrayViewMut3<f32>,
    ) -> Result<()> {
        let (c, h, w) = src.dim();
        if out.shape() != [c, h, w] || lut.len() != c {
            return Err(DataError::ShapeMismatch {
                op: "PixelTransform::apply",
                expected: vec![c, h, w],
                got: out.shape().to_vec(),
            });
        }
        let (dy, dx, flip) = match *self {
            PixelTransform::Train { pad, flip } => {
                let i = below(rng, 2 * pad + 1) as i64 - pad as i64;
                let j = below(rng, 2 * pad + 1) as i64 - pad as i64;
                let f = flip && unit_f64(rng) < 0.5;
                (i, j, f)
            }
            PixelTransform::Eval => (0, 0, false),
        };
        for ci in 0..c {
            let zero = lut[ci][0];
            for y in 0..h {
                let sy = y as i64 + dy;
                for x in 0..w {
                    let cx = if flip { w - 1 - x } else { x };
                    let sx = cx as i64 + dx;
                    out[[ci, y, x]] =
                        if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                            lut[ci][src[[ci, sy as usize, sx as usize]] as usize]
                        } else {
                            zero
                        };
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    /// Independent float reference of Pillow's bilinear resize (no fixed point), for checking
    /// the fixed-point kernel to within one grey level.
    fn reference_resize(src: &RgbImage, b: CropBox, ow: usize, oh: usize) -> Vec<f64> {
        let axis = |n_in: usize, n_out: usize| -> Vec<Vec<(usize, f64)>> {
            let scale = n_in as f64 / n_out as f64;
            let fs = scale.max(1.0);
            (0..n_out)
                .map(|o| {
                    let c = (o as f64 + 0.5) * scale;
                    let mut v: Vec<(usize, f64)> = (0..n_in)
                        .map(|i| (i, triangle((i as f64 + 0.5 - c) / fs)))
                        .filter(|p| p.1 > 0.0)
                        .collect();
                    let s: f64 = v.iter().map(|p| p.1).sum();
                    v.iter_mut().for_each(|p| p.1 /= s);
                    v
                })
                .collect()
        };
        let (hx, vy) = (axis(b.width, ow), axis(b.height, oh));
        let mut out = vec![0.0; ow * oh * 3];
        for y in 0..oh {
            for x in 0..ow {
                for c in 0..3 {
                    let mut acc = 0.0;
                    for &(iy, wy) in &vy[y] {
                        let mut row = 0.0;
                        for &(ix, wx) in &hx[x] {
                            row += wx
                                * src.get_pixel((b.left + ix) as u32, (b.top + iy) as u32)[c]
                                    as f64;
                        }
                        acc += wy * row.round().clamp(0.0, 255.0);
                    }
                    out[(y * ow + x) * 3 + c] = acc;
                }
            }
        }
        out
    }

    fn test_image(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                ((x * 37 + y * 11) % 256) as u8,
                ((x * x + 3 * y) % 256) as u8,
                ((x ^ y) * 5 % 256) as u8,
            ])
        })
    }

    #[test]
    fn resize_matches_float_reference_within_rounding() {
        let img = test_image(23, 17);
        for &(b, ow, oh) in &[
            (
                CropBox {
                    top: 2,
                    left: 3,
                    height: 13,
                    width: 19,
                },
                7,
                5,
            ), // downscale: wide support
            (
                CropBox {
                    top: 0,
                    left: 0,
                    height: 17,
                    width: 23,
                },
                40,
                31,
            ), // upscale
            (
                CropBox {
                    top: 4,
                    left: 1,
                    height: 9,
                    width: 9,
                },
                9,
                20,
            ), // vertical only
        ] {
            let r = resize_bilinear(&img, b, ow, oh, CropBox::full(ow, oh)).unwrap();
            let f = reference_resize(&img, b, ow, oh);
            for (i, (&a, &e)) in r.as_raw().iter().zip(&f).enumerate() {
                assert!(
                    (a as f64 - e).abs() <= 0.5 + 1e-6,
                    "{b:?}→{ow}×{oh}: px {i}: {a} vs {e}"
                );
            }
        }
    }

    #[test]
    fn resize_window_equals_crop_of_full_resize() {
        let img = test_image(50, 33);
        let full = CropBox::full(50, 33);
        let whole = resize_bilinear(&img, full, 37, 24, CropBox::full(37, 24)).unwrap();
        let win = CropBox {
            top: 5,
            left: 7,
            height: 12,
            width: 20,
        };
        let part = resize_bilinear(&img, full, 37, 24, win).unwrap();
        for y in 0..12 {
            for x in 0..20 {
                assert_eq!(
                    part.get_pixel(x, y),
                    whole.get_pixel(x + 7, y + 5),
                    "({x},{y})"
                );
            }
        }
    }

    #[test]
    fn center_crop_rounds_half_to_even_like_python() {
        // (7 − 4) / 2 = 1.5 → 2;  (5 − 4) / 2 = 0.5 → 0;  (10 − 4) / 2 = 3
        assert_eq!(center_crop_offsets(7, 5, 4, 4), (0, 2));
        assert_eq!(center_crop_offsets(10, 10, 4, 4), (3, 3));
        // Larger crop: pad (10 − 7) // 2 = 1 left, 2 right → padded width 10, offset 0 − 1.
        assert_eq!(center_crop_offsets(7, 12, 10, 4), (4, -1));
        assert_eq!(resize_shorter_size(500, 375, 256), (341, 256));
        assert_eq!(resize_shorter_size(100, 300, 256), (256, 768));
    }

    #[test]
    fn random_resized_crop_falls_back_to_clamped_center() {
        // scale > 1 can never fit, so all 10 attempts fail: extreme wide image → ratio clamp.
        let mut rng = crate::seed::rng_for(0, crate::seed::Purpose::Augment, 0, 0);
        let b = random_resized_crop_box(400, 100, (2.0, 3.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!(
            b,
            CropBox {
                top: 0,
                left: (400 - 133) / 2,
                height: 100,
                width: 133
            }
        );
        let b = random_resized_crop_box(120, 100, (2.0, 3.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!(b, CropBox::full(120, 100));
        for i in 0..200 {
            let mut rng = crate::seed::rng_for(1, crate::seed::Purpose::Augment, 0, i);
            let b = random_resized_crop_box(64, 48, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(
                b.left + b.width <= 64 && b.top + b.height <= 48 && b.width > 0 && b.height > 0
            );
        }
    }

    #[test]
    fn normalize_lut_follows_pytorch_order() {
        let n = Normalize::imagenet();
        let lut = n.lut();
        let v = 200u8;
        assert_eq!(
            lut[1][v as usize].to_bits(),
            ((200f32 / 255f32 - 0.456f32) / 0.224f32).to_bits()
        );
        assert!(Normalize::new(&[0.5], &[0.0]).is_err());
        assert!(Normalize::new(&[0.5, 0.5], &[1.0]).is_err());
    }

    #[test]
    fn cifar_pad_crop_flip_moves_pixels_as_specified() {
        // 1 channel 4×5 image with distinct values; identity LUT (v / 255).
        let src = Array3::from_shape_fn((1, 4, 5), |(_, y, x)| (10 * y + x) as u8);
        let lut = Normalize::identity(1).lut();
        // Find a seed whose draws give a non-trivial shift, then check every pixel against the
        // definition: out[y][x] = padded[y + pad + i][x' + pad + j], x' = flipped x.
        let t = PixelTransform::Train { pad: 2, flip: true };
        let mut saw_flip = false;
        for s in 0..20 {
            let mut rng = crate::seed::rng_for(s, crate::seed::Purpose::Augment, 0, 0);
            let i = below(&mut rng, 5) as i64 - 2;
            let j = below(&mut rng, 5) as i64 - 2;
            let flip = unit_f64(&mut rng) < 0.5;
            saw_flip |= flip;
            let mut out = Array3::<f32>::zeros((1, 4, 5));
            let mut rng = crate::seed::rng_for(s, crate::seed::Purpose::Augment, 0, 0);
            t.apply(src.view(), &mut rng, &lut, out.view_mut()).unwrap();
            for y in 0..4i64 {
                for x in 0..5i64 {
                    let xs = if flip { 4 - x } else { x };
                    let (sy, sx) = (y + i, xs + j);
                    let e = if (0..4).contains(&sy) && (0..5).contains(&sx) {
                        (10 * sy + sx) as f32 / 255.0
                    } else {
                        0.0
                    };
                    assert_eq!(out[[0, y as usize, x as usize]], e, "seed {s} ({y},{x})");
                }
            }
        }
        assert!(saw_flip);
    }
}
