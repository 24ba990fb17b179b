//! Image decoding: sniff the container from the first bytes (not the file name), decode with
//! the `image` crate and convert to 8-bit RGB like Pillow's `Image.convert("RGB")`, which is
//! what torchvision's `ImageFolder` loader does: grayscale is replicated to three channels,
//! alpha is dropped, CMYK is converted to RGB. EXIF orientation is ignored (as in torchvision).

use std::path::Path;

use image::{ImageFormat, RgbImage};

use crate::error::{DataError, Result};

/// Largest width or height [`decode_rgb`] accepts, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Most memory the decoder may allocate for one image (the decoded pixels included).
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

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

/// Whether JPEG data reaches its end-of-image marker `FF D9`. The marker segments before the
/// first start-of-scan are walked by their lengths (so an EXIF thumbnail's own `FF D9` inside
/// APP1 does not count); after it, `FF D9` is searched for: inside entropy-coded data every
/// `FF` is followed by `00` or a restart marker, so only a real end marker matches. A file cut
/// short anywhere before its end marker is reported as truncated.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    let n = b.len();
    let mut i = 2; // after SOI
    loop {
        while i < n && b[i] != 0xFF {
            i += 1; // tolerate stray bytes between segments, as decoders do
        }
        while i < n && b[i] == 0xFF {
            i += 1; // fill bytes
        }
        if i >= n {
            return false;
        }
        let m = b[i];
        i += 1;
        match m {
            0xD9 => return true,
            0x01 | 0xD0..=0xD8 => {}
            0xDA => return b[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
            _ => {
                if i + 2 > n {
                    return false;
                }
                i += u16::from_be_bytes([b[i], b[i + 1]]) as usize;
            }
        }
    }
}

/// Decodes JPEG or PNG `bytes` (read from `path`, used for error messages) to RGB.
///
/// # Errors
/// `NotAnImage` for empty or non-JPEG/PNG data, `Truncated` for a JPEG without end-of-image
/// marker, `Decode` when the decoder fails or the image exceeds [`MAX_IMAGE_SIDE`] or
/// [`MAX_DECODE_BYTES`].
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let format = match sniff(bytes) {
        Some(Container::Jpeg) => {
            if !jpeg_is_complete(bytes) {
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
    // Caps, so a crafted header cannot size an allocation: no real photo data set comes near
    // them (ImageNet's largest images are about 5000 pixels a side).
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    reader.limits(limits);
    let img = reader.decode().map_err(|source| DataError::Decode {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn truncation_is_found_even_with_an_end_marker_in_a_thumbnail() {
        let jpg = std::fs::read(crate::shipped_data_dir().join("cifar10-jpeg/val/ship/0000.jpg"))
            .unwrap();
        assert!(jpeg_is_complete(&jpg));
        // An APP1 segment whose payload holds FF D8 … FF D9, like an EXIF thumbnail.
        let app1 = [0xFF, 0xE1, 0x00, 0x08, 0xFF, 0xD8, 0x00, 0x00, 0xFF, 0xD9];
        let mut with_thumb = jpg[..2].to_vec();
        with_thumb.extend_from_slice(&app1);
        with_thumb.extend_from_slice(&jpg[2..]);
        assert!(jpeg_is_complete(&with_thumb));
        assert!(decode_rgb(&with_thumb, Path::new("thumb.jpg")).is_ok());
        for cut in [with_thumb.len() - 2, with_thumb.len() / 2, 14, 3] {
            let e = decode_rgb(&with_thumb[..cut], Path::new("cut.jpg")).unwrap_err();
            assert!(
                matches!(e, DataError::Truncated { .. }),
                "cut at {cut}: {e}"
            );
        }
        let e = decode_rgb(b"", Path::new("empty.jpg")).unwrap_err();
        assert!(
            matches!(e, DataError::NotAnImage { len: 0, .. })
                && e.to_string().contains("empty.jpg")
        );
    }

    /// Corrupted bytes anywhere in a JPEG or PNG give an image or a typed error, never a panic.
    #[test]
    fn corrupted_files_never_panic() {
        let d = crate::shipped_data_dir();
        let jpg = std::fs::read(d.join("imagenette/val/n03445777/n03445777_0.JPEG")).unwrap();
        let mut png = Vec::new();
        image::RgbImage::from_fn(23, 17, |x, y| image::Rgb([x as u8 * 9, y as u8 * 13, 77]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let mut rng = crate::seed::rng_for(11, crate::seed::Purpose::Augment, 0, 0);
        let (mut ok, mut err) = (0, 0);
        for (name, src) in [("fuzz.jpg", &jpg), ("fuzz.png", &png)] {
            for _ in 0..60 {
                let mut b = src.clone();
                for _ in 0..1 + crate::seed::below(&mut rng, 8) {
                    let at = crate::seed::below(&mut rng, b.len());
                    b[at] = rng.next_u64() as u8;
                }
                match decode_rgb(&b, Path::new(name)) {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert!(e.to_string().contains(name), "{e}");
                        err += 1;
                    }
                }
            }
        }
        assert_eq!(ok + err, 120);
        eprintln!("corrupted files: {ok} decoded, {err} typed errors");
    }

    #[test]
    fn empty_is_not_an_image() {
        let e = decode_rgb(b"", Path::new("empty.jpg")).unwrap_err();
        assert!(
            matches!(e, DataError::NotAnImage { len: 0, .. })
                && e.to_string().contains("empty.jpg")
        );
    }
}
