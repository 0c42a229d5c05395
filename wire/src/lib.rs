//! Courier's wire protocol, versions 1 and 2, as a sans-IO codec.
//!
//! This crate turns bytes into [`Frame`]s and frames into bytes. It has no sockets, no async
//! runtime, and the codec reads no clock: the gateway, the client SDK, the load generator and the benchmarks all
//! drive the same code, and a decoder never panics on any input. The byte layout of every frame
//! is documented in `docs/PROTOCOL.md`.
//!
//! It is not a transport: framed QUIC stream I/O is `courier-net`, tokens are `courier-auth`, TLS
//! lives in `courier-gateway` and `courier-client`.
//!
//! # Layout
//! - [`header`] — the fixed 8-byte frame header, read by casting with zerocopy.
//! - [`codec`] — the [`Codec`] trait and the encodings of primitive fields.
//! - [`error`] — [`DecodeError`] (local decode failures) and [`ErrorCode`] (codes on the wire).
//! - [`frame`] — the [`Frame`] enum, one module per frame family.
//! - [`decoder`] — [`FrameDecoder`], which cuts frames out of a byte stream with a size limit.
//! - [`text`] — bounded text for messages that echo a peer's input.
//! - [`time`] — the wall clock in the units the protocol carries (the codec reads no clock).

#![forbid(unsafe_code)]

pub mod codec;
pub mod decoder;
pub mod error;
pub mod frame;
pub mod header;
pub mod text;
pub mod time;

pub use codec::Codec;
pub use decoder::FrameDecoder;
pub use error::{DecodeError, ErrorCode};
pub use frame::Frame;
pub use header::{Header, HEADER_LEN};

/// The newest protocol version this crate speaks, sent in `Hello` and `Welcome`. Version 2 is
/// version 1 plus [`frame::RetryLater`] (a refusal that says when to retry).
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version this crate still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The ALPN identifier a Courier connection negotiates in TLS.
pub const ALPN: &[u8] = b"courier/1";

/// The default largest frame (header and body) a peer accepts: 64 KiB.
pub const DEFAULT_MAX_FRAME: u32 = 64 * 1024;

/// Longest user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 64;

/// Whether `id` is a valid user id: 1 to 64 bytes of ASCII letters, digits and `-_.@+`.
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_USER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn user_ids() {
        assert!(super::valid_user_id("alice"));
        assert!(super::valid_user_id("+4915112345678"));
        assert!(!super::valid_user_id(""));
        assert!(!super::valid_user_id("a b"));
        assert!(!super::valid_user_id(&"x".repeat(65)));
    }
}

/// A time-ordered client message id (UUID version 7): 48-bit Unix milliseconds, version and
/// variant bits, and 74 caller-supplied random bits. Clients should use these: the store keeps
/// dedupe records in id order, so time-ordered ids make every send's record an append.
pub fn uuid_v7(unix_ms: u64, random: [u8; 10]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    id[6..].copy_from_slice(&random);
    id[6] = 0x70 | (id[6] & 0x0f);
    id[8] = 0x80 | (id[8] & 0x3f);
    id
}

/// The Unix milliseconds of a version 7 id, or `None` for ids of another form.
pub fn uuid_v7_millis(id: &[u8; 16]) -> Option<u64> {
    if id[6] >> 4 != 7 || id[8] >> 6 != 0b10 {
        return None;
    }
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&id[..6]);
    Some(u64::from_be_bytes(ms))
}

#[cfg(test)]
mod uuid_tests {
    #[test]
    fn v7_round_trip_and_order() {
        let a = super::uuid_v7(1_764_500_000_000, [0xff; 10]);
        let b = super::uuid_v7(1_764_500_000_001, [0; 10]);
        assert_eq!(super::uuid_v7_millis(&a), Some(1_764_500_000_000));
        assert!(a < b, "ids sort by time");
        assert_eq!(super::uuid_v7_millis(&[0; 16]), None);
        assert_eq!(super::uuid_v7_millis(&[7; 16]), None);
    }
}
