//! Image dimensions and thumbnails, decoded with bounds: the header's dimensions are checked
//! against a pixel budget before any pixel is decoded, and the decoder's allocations are capped,
//! so a decompression bomb is an error, not an out-of-memory kill.

use std::io::Cursor;

use image::{ImageReader, Limits};

use super::detect::ImageKind;

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 320;

/// Why an image was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// More pixels than the budget.
    #[error("image of {width}x{height} pixels exceeds the limit of {max} pixels")]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The budget.
        max: u64,
    },
    /// The bytes do not decode as the detected format.
    #[error("image does not decode: {0}")]
    Decode(String),
}

/// An image's dimensions and its thumbnail (JPEG, or PNG when the image has transparency).
#[derive(Debug)]
pub struct Thumbnailed {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The thumbnail's bytes.
    pub thumbnail: Vec<u8>,
    /// The thumbnail's MIME type.
    pub thumbnail_type: &'static str,
}

/// Reads the dimensions, checks the pixel budget, decodes and scales to a thumbnail whose longest
/// side is [`THUMBNAIL_SIDE`] (images already smaller keep their size). CPU-heavy: run it on a
/// blocking thread.
pub fn thumbnail(
    bytes: &[u8],
    kind: ImageKind,
    max_pixels: u64,
) -> Result<Thumbnailed, ImageError> {
    let reader = || {
        let mut r = ImageReader::with_format(Cursor::new(bytes), kind.format());
        let mut limits = Limits::default();
        // Decoded RGBA8 of the largest allowed image, plus the decoder's own working memory.
        limits.max_alloc = Some(max_pixels.saturating_mul(4).saturating_add(64 << 20));
        r.limits(limits);
        r
    };
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            max: max_pixels,
        });
    }
    let img = reader()
        .decode()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    let thumb = if width.max(height) > THUMBNAIL_SIDE {
        img.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    } else {
        img
    };
    let mut out = Cursor::new(Vec::new());
    let (format, thumbnail_type) = if thumb.color().has_alpha() {
        (image::ImageFormat::Png, "image/png")
    } else {
        (image::ImageFormat::Jpeg, "image/jpeg")
    };
    let thumb = if format == image::ImageFormat::Jpeg {
        image::DynamicImage::ImageRgb8(thumb.to_rgb8())
    } else {
        thumb
    };
    thumb
        .write_to(&mut out, format)
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok(Thumbnailed {
        width,
        height,
        thumbnail: out.into_inner(),
        thumbnail_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn thumbnails_keep_the_aspect_ratio() {
        let t = thumbnail(&png(1000, 500), ImageKind::Png, 50_000_000).unwrap();
        assert_eq!((t.width, t.height), (1000, 500));
        assert_eq!(t.thumbnail_type, "image/jpeg");
        let back = image::load_from_memory(&t.thumbnail).unwrap();
        assert_eq!((back.width(), back.height()), (320, 160));
    }

    #[test]
    fn jpeg_gif_and_webp_are_thumbnailed_too() {
        let img = image::RgbaImage::from_fn(640, 400, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 9, 255])
        });
        for (format, kind) in [
            (image::ImageFormat::Jpeg, ImageKind::Jpeg),
            (image::ImageFormat::Gif, ImageKind::Gif),
            (image::ImageFormat::WebP, ImageKind::WebP),
        ] {
            let mut out = Cursor::new(Vec::new());
            let pixels = image::DynamicImage::ImageRgba8(img.clone());
            let pixels = if format == image::ImageFormat::Jpeg {
                image::DynamicImage::ImageRgb8(pixels.to_rgb8())
            } else {
                pixels
            };
            pixels.write_to(&mut out, format).unwrap();
            let bytes = out.into_inner();
            assert_eq!(super::super::detect::content_type(&bytes).1, Some(kind));
            let t = thumbnail(&bytes, kind, 50_000_000).unwrap();
            assert_eq!((t.width, t.height), (640, 400), "{format:?}");
            let back = image::load_from_memory(&t.thumbnail).unwrap();
            assert_eq!((back.width(), back.height()), (320, 200), "{format:?}");
        }
    }

    #[test]
    fn the_pixel_budget_is_checked_before_decoding() {
        let err = thumbnail(&png(300, 300), ImageKind::Png, 10_000).unwrap_err();
        assert!(
            matches!(err, ImageError::TooManyPixels { width: 300, .. }),
            "{err}"
        );
        assert!(thumbnail(b"\x89PNG\r\n\x1a\nnot really", ImageKind::Png, 1 << 20).is_err());
    }
}
