//! The [`Frame`] enum: every v1 frame, one module per family.
//!
//! Kinds 0x01..=0x7f travel client to server, 0x80..=0xff server to client. Every client frame's
//! body begins with a u32 request id, so a server can name the request even in its answer to a
//! frame kind it does not know (`UNSUPPORTED`).

use bytes::{Buf, BufMut, Bytes};

use crate::codec::Codec;
use crate::{DecodeError, Header, HEADER_LEN};

pub mod chat;
pub mod media;
pub mod message;
pub mod session;
pub mod signal;
pub mod sync;
pub mod system;

pub use chat::{
    ChatInfo, ChatKind, ChatList, ChatSpec, ChatSummary, CreateChat, GetChat, ListChats, UpdateChat,
};
pub use media::{Download, DownloadStart, MediaInfo, Upload, UploadProgress};
pub use message::{Ack, Attachment, Deliver, Message, MessageKind, Send, SendOk};
pub use session::{Done, ErrorFrame, GoAway, Hello, Ping, Pong, RetryLater, Welcome};
pub use signal::{
    PresenceEvent, PresenceSetting, PresenceSubscribe, PushProvider, Receipt, ReceiptEvent,
    ReceiptKind, RegisterPush, Typing, TypingEvent,
};
pub use sync::{ChatPosition, Direction, History, HistoryPage, Sync, SyncEnd};
pub use system::{SystemEvent, SystemEventKind};

macro_rules! frames {
    ($( $(#[$m:meta])* $variant:ident = $kind:literal, )*) => {
        /// Frame kind numbers, named after their frames.
        #[allow(non_upper_case_globals)]
        pub mod kind {
            $( #[doc = concat!("Kind of [`", stringify!($variant), "`](super::", stringify!($variant), ").")]
               pub const $variant: u8 = $kind; )*
        }

        /// One protocol frame.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub enum Frame {
            $( $(#[$m])* $variant($variant), )*
            /// A frame kind this version does not know; its body is kept undecoded.
            #[cfg_attr(test, proptest(skip))]
            Unknown {
                /// The unknown kind.
                kind: u8,
                /// The raw body.
                body: Bytes,
            },
        }

        impl Frame {
            /// The frame's kind number.
            pub fn kind(&self) -> u8 {
                match self {
                    $( Self::$variant(_) => $kind, )*
                    Self::Unknown { kind, .. } => *kind,
                }
            }

            /// Length of the body (without the header).
            pub fn body_len(&self) -> usize {
                match self {
                    $( Self::$variant(f) => f.encoded_len(), )*
                    Self::Unknown { body, .. } => body.len(),
                }
            }

            fn encode_body<B: BufMut>(&self, buf: &mut B) {
                match self {
                    $( Self::$variant(f) => f.encode(buf), )*
                    Self::Unknown { body, .. } => buf.put_slice(body),
                }
            }

            /// Decodes a body of the given kind. The body must be consumed exactly; unknown kinds
            /// become [`Frame::Unknown`].
            pub fn decode_body(kind: u8, mut body: Bytes) -> Result<Self, DecodeError> {
                let frame = match kind {
                    $( $kind => Self::$variant($variant::decode(&mut body)?), )*
                    _ => return Ok(Self::Unknown { kind, body }),
                };
                if body.has_remaining() {
                    return Err(DecodeError::TrailingBytes);
                }
                Ok(frame)
            }
        }

        $(
            impl From<$variant> for Frame {
                fn from(f: $variant) -> Self {
                    Self::$variant(f)
                }
            }
        )*
    };
}

frames! {
    /// Client: open the session.
    Hello = 0x01,
    /// Client: append a message.
    Send = 0x02,
    /// Client: cumulative position in a chat.
    Ack = 0x03,
    /// Client: fetch what was missed.
    Sync = 0x04,
    /// Client: page through a chat.
    History = 0x05,
    /// Client: create a chat.
    CreateChat = 0x06,
    /// Client: rename a group, change members.
    UpdateChat = 0x07,
    /// Client: list my chats.
    ListChats = 0x08,
    /// Client: describe a chat.
    GetChat = 0x09,
    /// Client: delivered/read receipt.
    Receipt = 0x0a,
    /// Client: typing indicator.
    Typing = 0x0b,
    /// Client: subscribe to presence.
    PresenceSubscribe = 0x0c,
    /// Client: register a push token.
    RegisterPush = 0x0d,
    /// Client: liveness probe.
    Ping = 0x0e,
    /// Client: an upload, first frame of its own stream.
    Upload = 0x0f,
    /// Client: a download, first frame of its own stream.
    Download = 0x10,
    /// Client: show or hide this user's presence.
    PresenceSetting = 0x11,
    /// Server: session open.
    Welcome = 0x81,
    /// Server: message durable.
    SendOk = 0x82,
    /// Server: a message for this device.
    Deliver = 0x83,
    /// Server: end of a sync page.
    SyncEnd = 0x84,
    /// Server: a page of history.
    HistoryPage = 0x85,
    /// Server: one chat.
    ChatInfo = 0x86,
    /// Server: a page of chats.
    ChatList = 0x87,
    /// Server: a receipt from a member.
    ReceiptEvent = 0x88,
    /// Server: a member is typing.
    TypingEvent = 0x89,
    /// Server: a request failed.
    ErrorFrame = 0x8a,
    /// Server: answer to Ping.
    Pong = 0x8b,
    /// Server: going away.
    GoAway = 0x8c,
    /// Server: presence change.
    PresenceEvent = 0x8d,
    /// Server: generic success.
    Done = 0x8e,
    /// Server: bytes of an upload stored so far.
    UploadProgress = 0x8f,
    /// Server: an upload is complete.
    MediaInfo = 0x90,
    /// Server: a download's bytes follow.
    DownloadStart = 0x91,
    /// Server (version 2): a request refused for now, with when to retry.
    RetryLater = 0x92,
}

impl Frame {
    /// Header plus body length.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Appends header and body to `buf`. Never panics: a body over 4 GiB (which no peer's
    /// frame limit admits) gets a saturated length and is refused by the receiver's size check.
    pub fn encode<B: BufMut>(&self, buf: &mut B) {
        let len = u32::try_from(self.body_len()).unwrap_or(u32::MAX);
        buf.put_slice(&Header::new(self.kind(), len).to_bytes());
        self.encode_body(buf);
    }

    /// The frame encoded into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf.into()
    }

    /// The request id of a client frame (also of an unknown one, read from its first 4 bytes).
    pub fn request_id(&self) -> Option<u32> {
        Some(match self {
            Self::Hello(f) => f.request_id,
            Self::Send(f) => f.request_id,
            Self::Ack(f) => f.request_id,
            Self::Sync(f) => f.request_id,
            Self::History(f) => f.request_id,
            Self::CreateChat(f) => f.request_id,
            Self::UpdateChat(f) => f.request_id,
            Self::ListChats(f) => f.request_id,
            Self::GetChat(f) => f.request_id,
            Self::Receipt(f) => f.request_id,
            Self::Typing(f) => f.request_id,
            Self::PresenceSubscribe(f) => f.request_id,
            Self::RegisterPush(f) => f.request_id,
            Self::Ping(f) => f.request_id,
            Self::Upload(f) => f.request_id,
            Self::Download(f) => f.request_id,
            Self::PresenceSetting(f) => f.request_id,
            Self::Unknown { body, .. } if body.len() >= 4 => {
                u32::from_be_bytes([body[0], body[1], body[2], body[3]])
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_frame_round_trips(frame in any::<Frame>()) {
            let bytes = frame.to_bytes();
            prop_assert_eq!(bytes.len(), frame.encoded_len());
            let header = Header::peek(&bytes).unwrap();
            prop_assert_eq!(header.kind, frame.kind());
            prop_assert_eq!(header.body_len() as usize, frame.body_len());
            let decoded = Frame::decode_body(header.kind, bytes.slice(HEADER_LEN..)).unwrap();
            prop_assert_eq!(decoded, frame);
        }

        /// What a server builds from a peer's input (error messages and GoAway reasons that
        /// quote it) encodes within the default frame limit, whatever the input, and decodes.
        #[test]
        fn frames_built_from_any_input_fit_the_limits(
            request_id in any::<u32>(),
            code in any::<u16>(),
            input in proptest::collection::vec(any::<char>(), 0..40_000),
            repeat in 1usize..4,
        ) {
            let input: String = input.into_iter().collect::<String>().repeat(repeat);
            let message = format!("bad user id {}", crate::text::quote(&input));
            for frame in [
                Frame::ErrorFrame(ErrorFrame::new(request_id, crate::ErrorCode(code), &input)),
                Frame::ErrorFrame(ErrorFrame::new(request_id, crate::ErrorCode(code), &message)),
                Frame::GoAway(GoAway::new(crate::ErrorCode(code), &input)),
                Frame::RetryLater(RetryLater::new(
                    request_id,
                    crate::ErrorCode(code),
                    std::time::Duration::from_millis(u64::from(code) << 30),
                    &message,
                )),
            ] {
                let bytes = frame.to_bytes();
                prop_assert_eq!(bytes.len(), frame.encoded_len());
                prop_assert!(bytes.len() <= crate::DEFAULT_MAX_FRAME as usize);
                let decoded = Frame::decode_body(frame.kind(), bytes.slice(HEADER_LEN..)).unwrap();
                prop_assert_eq!(decoded, frame);
            }
        }

        #[test]
        fn arbitrary_bodies_never_panic(kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::decode_body(kind, Bytes::from(body));
        }

        #[test]
        fn truncated_or_extended_bodies_are_rejected(frame in any::<Frame>(), extra in 1u8..=255) {
            let bytes = frame.to_bytes();
            let body = bytes.slice(HEADER_LEN..);
            let mut longer = body.to_vec();
            longer.push(extra);
            prop_assert_eq!(Frame::decode_body(frame.kind(), longer.into()), Err(DecodeError::TrailingBytes));
            if !body.is_empty() {
                let cut = body.slice(..body.len() - 1);
                prop_assert!(Frame::decode_body(frame.kind(), cut).is_err());
            }
        }
    }

    #[test]
    fn unknown_kind_keeps_body_and_request_id() {
        let f = Frame::decode_body(0x7f, Bytes::from_static(&[0, 0, 1, 2, 9])).unwrap();
        assert_eq!(f.kind(), 0x7f);
        assert_eq!(f.request_id(), Some(258));
        assert_eq!(
            Frame::decode_body(0x7f, Bytes::new()).unwrap().request_id(),
            None
        );
    }

    #[test]
    fn send_ok_bytes_are_stable() {
        let f = Frame::SendOk(SendOk {
            request_id: 7,
            client_msg_id: [0xab; 16],
            chat_id: 3,
            seq: 42,
            server_ts: 1_700_000_000_000,
            duplicate: true,
        });
        let b = f.to_bytes();
        assert_eq!(&b[..8], &[0x82, 0, 0, 0, 0, 0, 0, 45]);
        assert_eq!(&b[8..12], &[0, 0, 0, 7]);
        assert_eq!(b[b.len() - 1], 1);
    }
}
