//! Courier's wire protocol, version 1, as a sans-IO codec.
//!
//! This crate turns bytes into [`Frame`]s and frames into bytes. It has no sockets, no async
//! runtime and no clocks: the gateway, the client SDK, the load generator and the benchmarks all
//! drive the same code, and a decoder never panics on any input. The byte layout of every frame
//! is documented in `docs/PROTOCOL.md`.
//!
//! It is not a transport: QUIC streams, TLS and authentication live in `courier-gateway` and
//! `courier-client`.
//!
//! # Layout
//! - [`header`] — the fixed 8-byte frame header, read by casting with zerocopy.
//! - [`codec`] — the [`Codec`] trait and the encodings of primitive fields.
//! - [`error`] — [`DecodeError`] (local decode failures) and [`ErrorCode`] (codes on the wire).
//! - [`frame`] — the [`Frame`] enum, one module per frame family.
//! - [`decoder`] — [`FrameDecoder`], which cuts frames out of a byte stream with a size limit.

#![forbid(unsafe_code)]

pub mod codec;
pub mod decoder;
pub mod error;
pub mod frame;
pub mod header;

pub use codec::Codec;
pub use decoder::FrameDecoder;
pub use error::{DecodeError, ErrorCode};
pub use frame::Frame;
pub use header::{Header, HEADER_LEN};

/// The protocol version this crate speaks, sent in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u16 = 1;

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
