//! Image decoding: sniff the container from the first bytes (not the file name), decode with
//! the `image` crate and convert to 8-bit RGB like Pillow's `Image.convert("RGB")`, which is
//! what torchvision's `ImageFolder` loader does: grayscale is replicated to three channels,
//! alpha is dropped, CMYK is converted to RGB. EXIF orientation is ignored (as in torchvision).

use std::path::Path;

use image::{ImageFormat, RgbImage};

use crate::error::{DataError, Result};

/// The container a file's first bytes announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// `FF D8 FF`.
    Jpeg,
    /// `89 50 4E 47 0D 0A 1A 0A`.
    Png,
}

/// Sniffs the container from the magic bytes; `None` for anything else (including empty data).
pub fn sniff(bytes: &[u8]) -> Option<Container> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Container::Jpeg)
    } else if bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
        Some(Container::Png)
    } else {
        None
    }
}

/// Whether JPEG data contains its end-of-image marker `FF D9` near the end. Inside
/// entropy-coded data every `FF` is followed by `00` or a restart marker, so `FF D9` there is
/// impossible; a file cut short in its scan data has none. Trailing bytes after the marker
/// (common in camera files) are allowed up to 64 KiB.
fn jpeg_has_eoi(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64 * 1024)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Decodes JPEG or PNG `bytes` (read from `path`, used for error messages) to RGB.
///
/// # Errors
/// `NotAnImage` for empty or non-JPEG/PNG data, `Truncated` for a JPEG without end-of-image
/// marker, `Decode` when the decoder fails.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let format = match sniff(bytes) {
        Some(Container::Jpeg) => {
            if !jpeg_has_eoi(bytes) {
                return Err(DataError::Truncated {
                    path: path.to_path_buf(),
                    len: bytes.len(),
                });
            }
            ImageFormat::Jpeg
        }
        Some(Container::Png) => ImageFormat::Png,
        None => {
            return Err(DataError::NotAnImage {
                path: path.to_path_buf(),
                len: bytes.len(),
            })
        }
    };
    let img =
        image::load_from_memory_with_format(bytes, format).map_err(|source| DataError::Decode {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(match img {
        image::DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Reads and decodes the image file at `path` to RGB (see [`decode_rgb`]).
///
/// # Errors
/// `Io` if the file cannot be read, otherwise as [`decode_rgb`].
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_rgb(&bytes, path)
}
