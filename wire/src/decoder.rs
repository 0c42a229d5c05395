//! Cutting frames out of a byte stream.
//!
//! [`FrameDecoder`] is fed whatever bytes arrived and yields whole frames. It checks each header's
//! declared length against its limit *before* waiting for (and buffering) the body, so a peer that
//! declares a 1 GiB frame is refused after 8 bytes and costs no memory.

use bytes::{Buf, BytesMut};

use crate::{DecodeError, Frame, Header, HEADER_LEN};

/// A streaming frame decoder with a size limit.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame: u32,
    client_kinds_only: bool,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame` bytes (header included).
    pub fn new(max_frame: u32) -> Self {
        Self {
            max_frame,
            client_kinds_only: false,
        }
    }

    /// A server's decoder: server-to-client kinds (0x80 and up) arriving from a client are
    /// kinds a server does not take, so they become [`Frame::Unknown`] (answered
    /// `UNSUPPORTED`, the connection goes on) instead of being decoded.
    pub fn client_kinds_only(mut self) -> Self {
        self.client_kinds_only = true;
        self
    }

    /// The limit, header included.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Takes the next whole frame off the front of `buf`, or `Ok(None)` when more bytes are needed.
    ///
    /// After an error the stream is unusable (the frame boundary is lost); close the connection.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let Some(header) = Header::peek(buf) else {
            return Ok(None);
        };
        let total = HEADER_LEN as u64 + u64::from(header.body_len());
        if total > u64::from(self.max_frame) {
            return Err(DecodeError::TooLarge {
                len: total,
                max: self.max_frame,
            });
        }
        let total = total as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total).freeze();
        frame.advance(HEADER_LEN);
        if self.client_kinds_only && header.kind >= 0x80 {
            return Ok(Some(Frame::Unknown {
                kind: header.kind,
                body: frame,
            }));
        }
        Frame::decode_body(header.kind, frame).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Ping, Pong};
    use proptest::prelude::*;

    #[test]
    fn frames_split_across_reads() {
        let d = FrameDecoder::new(1024);
        let a = Frame::Ping(Ping {
            request_id: 1,
            nonce: 9,
        })
        .to_bytes();
        let b = Frame::Pong(Pong {
            request_id: 2,
            nonce: 8,
        })
        .to_bytes();
        let all: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in all {
            buf.extend_from_slice(&[byte]);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].kind(), crate::frame::kind::Ping);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_server_takes_server_kinds_as_unknown() {
        let mut buf = BytesMut::from(&Header::new(0x81, 4).to_bytes()[..]);
        buf.extend_from_slice(&[0, 0, 0, 7]);
        let mut copy = buf.clone();
        let f = FrameDecoder::new(1024)
            .client_kinds_only()
            .decode(&mut buf)
            .unwrap();
        assert_eq!(f.as_ref().and_then(Frame::request_id), Some(7));
        assert!(matches!(f, Some(Frame::Unknown { kind: 0x81, .. })));
        // A client's decoder still decodes them (and this body is no Welcome).
        assert!(FrameDecoder::new(1024).decode(&mut copy).is_err());
    }

    #[test]
    fn huge_declared_length_is_refused_from_the_header() {
        let d = FrameDecoder::new(64 * 1024);
        let mut buf = BytesMut::from(&Header::new(0x02, 1 << 30).to_bytes()[..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(DecodeError::TooLarge {
                len: (1 << 30) + 8,
                max: 64 * 1024
            })
        );
        assert!(buf.capacity() < 1024, "no allocation for the declared body");
    }

    proptest! {
        #[test]
        fn arbitrary_streams_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let d = FrameDecoder::new(4096);
            let mut buf = BytesMut::new();
            for c in chunks {
                buf.extend_from_slice(&c);
                while let Ok(Some(_)) = d.decode(&mut buf) {}
            }
        }
    }
}
