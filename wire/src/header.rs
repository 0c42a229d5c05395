//! The fixed frame header.
//!
//! Every frame starts with 8 bytes: kind, flags, a reserved 16-bit field and the body length, all
//! network byte order. The header is read by casting the first 8 bytes, so a malformed header
//! cannot make the decoder allocate: the length is checked against the limit before anything else.

use zerocopy::byteorder::network_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of [`Header`] on the wire.
pub const HEADER_LEN: usize = 8;

/// The header in front of every frame body.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Header {
    /// Frame kind (see `frame::kind`).
    pub kind: u8,
    /// Flags; sent as 0 in v1 and ignored by receivers.
    pub flags: u8,
    /// Reserved; sent as 0 in v1 and ignored by receivers.
    pub reserved: U16,
    /// Length of the body that follows, in bytes.
    pub len: U32,
}

impl Header {
    /// A header for a body of `len` bytes.
    pub fn new(kind: u8, len: u32) -> Self {
        Self {
            kind,
            flags: 0,
            reserved: U16::ZERO,
            len: U32::new(len),
        }
    }

    /// Reads a header from the front of `bytes`, if there are at least [`HEADER_LEN`] of them.
    pub fn peek(bytes: &[u8]) -> Option<Self> {
        Self::read_from_prefix(bytes).ok().map(|(h, _)| h)
    }

    /// Body length in bytes.
    pub fn body_len(&self) -> u32 {
        self.len.get()
    }

    /// The header's 8 bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(self.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_network_order() {
        let h = Header::new(0x82, 0x0102_0304);
        assert_eq!(h.to_bytes(), [0x82, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(Header::peek(&h.to_bytes()), Some(h));
        assert_eq!(Header::peek(&[1, 2, 3]), None);
    }
}
