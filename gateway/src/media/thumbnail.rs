//! Image dimensions and thumbnails, decoded with bounds: the header's dimensions are checked
//! against a pixel budget before any pixel is decoded, and the decoder's allocations are capped,
//! so a decompression bomb is an error, not an out-of-memory kill.
//!
//! [`thumbnail_file`] runs a decode on a thread of its own that ends with it, and then calls the
//! allocator's release hook there. mimalloc keeps a thread's freed pages for that thread's later
//! use, and gives pages back to the system only from a later allocator call a second after the
//! free: on tokio's blocking pool (up to 512 threads, kept alive by any file I/O) each thread that
//! once decoded a 50-megapixel image could hold its hundreds of MiB, and an idle node kept the
//! peak of its last decodes for good (docs/PERFORMANCE.md, "Memory after large image decodes").

use std::io::Cursor;
use std::path::PathBuf;

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
    /// The file could not be read, or the decoding thread could not run.
    #[error("image file: {0}")]
    Io(#[from] std::io::Error),
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

/// A decode that used at least this much (file bytes plus RGBA pixels) is followed by the
/// release hook; smaller ones leave their memory to the allocator, for the next to reuse.
const RELEASE_ABOVE: u64 = 16 << 20;

/// Reads the image at `path` and makes its thumbnail ([`thumbnail`]) on a new thread that
/// ends when it is done; there, after a large decode ([`RELEASE_ABOVE`]), once the file's bytes
/// and the decoded pixels are freed, it calls `release` (the allocator's hook that gives freed
/// memory back to the system). Call it under a bound on concurrent decodes (the media service's
/// `thumbnail_workers` slots).
pub async fn thumbnail_file(
    path: PathBuf,
    kind: ImageKind,
    max_pixels: u64,
    release: Option<fn()>,
) -> Result<Thumbnailed, ImageError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("courier-thumbnail".into())
        .spawn(move || {
            let mut used = 0;
            let made = std::fs::read(&path)
                .map_err(ImageError::from)
                .and_then(|bytes| {
                    used = bytes.len() as u64;
                    thumbnail(&bytes, kind, max_pixels)
                });
            if let Ok(t) = &made {
                used += u64::from(t.width) * u64::from(t.height) * 4;
            }
            if let Some(release) = release.filter(|_| used >= RELEASE_ABOVE) {
                release();
            }
            let _ = tx.send(made);
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(ImageError::Decode(
            "the decoding thread ended without an answer".into(),
        ))
    })
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

    /// The threads the release hook ran on.
    static RELEASED_ON: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    fn record_release() {
        let name = std::thread::current().name().unwrap_or_default().to_owned();
        RELEASED_ON.lock().unwrap().push(name);
    }

    #[tokio::test]
    async fn files_are_decoded_on_a_thread_of_their_own_that_releases_large_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.png");
        std::fs::write(&small, png(640, 480)).unwrap();
        let large = dir.path().join("large.png");
        std::fs::write(&large, png(2100, 2100)).unwrap(); // 17.6 MB of RGBA
        let t = thumbnail_file(small, ImageKind::Png, 50_000_000, Some(record_release))
            .await
            .unwrap();
        assert_eq!((t.width, t.height), (640, 480));
        assert!(
            RELEASED_ON.lock().unwrap().is_empty(),
            "small decodes keep their memory"
        );
        let t = thumbnail_file(large, ImageKind::Png, 50_000_000, Some(record_release))
            .await
            .unwrap();
        assert_eq!((t.width, t.height), (2100, 2100));
        assert_eq!(
            *RELEASED_ON.lock().unwrap(),
            ["courier-thumbnail"],
            "the hook runs once, on the decoding thread"
        );
        let gone = thumbnail_file(dir.path().join("none.png"), ImageKind::Png, 1 << 20, None).await;
        assert!(matches!(gone, Err(ImageError::Io(_))), "{gone:?}");
    }
}
