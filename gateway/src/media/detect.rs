//! The content type of media, from its first bytes (magic numbers), never from the client.

/// Bytes of the start of a file that [`content_type`] looks at.
pub const SNIFF_LEN: usize = 16;

/// Image formats we decode (dimensions, thumbnails).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// GIF.
    Gif,
    /// WebP.
    WebP,
}

impl ImageKind {
    /// The `image` crate's format.
    pub fn format(self) -> image::ImageFormat {
        match self {
            Self::Png => image::ImageFormat::Png,
            Self::Jpeg => image::ImageFormat::Jpeg,
            Self::Gif => image::ImageFormat::Gif,
            Self::WebP => image::ImageFormat::WebP,
        }
    }
}

/// The detected MIME type, and the image kind when it is an image we decode.
pub fn content_type(head: &[u8]) -> (&'static str, Option<ImageKind>) {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(b"\x89PNG\r\n\x1a\n") {
        ("image/png", Some(ImageKind::Png))
    } else if starts(b"\xff\xd8\xff") {
        ("image/jpeg", Some(ImageKind::Jpeg))
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        ("image/gif", Some(ImageKind::Gif))
    } else if starts(b"RIFF") && head.get(8..12) == Some(b"WEBP") {
        ("image/webp", Some(ImageKind::WebP))
    } else if starts(b"RIFF") && head.get(8..12) == Some(b"WAVE") {
        ("audio/wav", None)
    } else if head.get(4..8) == Some(b"ftyp") {
        match head.get(8..12) {
            Some(b"qt  ") => ("video/quicktime", None),
            Some(b"M4A ") => ("audio/mp4", None),
            _ => ("video/mp4", None),
        }
    } else if starts(b"OggS") {
        ("audio/ogg", None)
    } else if starts(b"ID3") || starts(b"\xff\xfb") || starts(b"\xff\xf3") {
        ("audio/mpeg", None)
    } else if starts(b"\x1a\x45\xdf\xa3") {
        ("video/webm", None)
    } else if starts(b"%PDF-") {
        ("application/pdf", None)
    } else if starts(b"PK\x03\x04") {
        ("application/zip", None)
    } else {
        ("application/octet-stream", None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers_decide() {
        assert_eq!(
            content_type(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            ("image/png", Some(ImageKind::Png))
        );
        assert_eq!(content_type(b"\xff\xd8\xff\xe0").1, Some(ImageKind::Jpeg));
        assert_eq!(content_type(b"RIFF\0\0\0\0WEBPVP8 ").0, "image/webp");
        assert_eq!(content_type(b"\0\0\0\x18ftypisom").0, "video/mp4");
        assert_eq!(content_type(b"%PDF-1.7").0, "application/pdf");
        assert_eq!(content_type(b"hello").0, "application/octet-stream");
        assert_eq!(content_type(b"").0, "application/octet-stream");
    }
}
