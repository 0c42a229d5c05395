//! Message frames: sending, acknowledging and delivering chat messages.

use bytes::Bytes;

use crate::codec::{wire_enum, wire_struct};

wire_enum! {
    /// What a message's body holds.
    pub enum MessageKind {
        /// UTF-8 text.
        Text = 0,
        /// Media described by the attachments; the body is an optional caption.
        Media = 1,
        /// A server-written event in the chat's sequence (member added, chat renamed, ...).
        System = 2,
    }
}

wire_struct! {
    /// Media attached to a message (uploads are specified in `docs/PROTOCOL.md`, Media streams).
    pub struct Attachment {
        /// Server-assigned media id.
        pub media_id: [u8; 16],
        /// MIME type, as detected by the server.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub content_type: String,
        /// Size in bytes.
        pub size: u64,
        /// SHA-256 of the content.
        pub sha256: [u8; 32],
        /// The thumbnail's media id, for images.
        pub thumbnail_id: Option<[u8; 16]>,
        /// Width in pixels (0 when not an image).
        pub width: u32,
        /// Height in pixels (0 when not an image).
        pub height: u32,
    }
}

wire_struct! {
    /// Client to server: append a message to a chat. Idempotent by `(sender, client_msg_id)`.
    pub struct Send {
        /// Echoed in [`SendOk`] or in an error.
        pub request_id: u32,
        /// Chosen by the client, unique per sender; a retry reuses it.
        pub client_msg_id: [u8; 16],
        /// The chat to append to.
        pub chat_id: u64,
        /// What the body holds.
        pub kind: MessageKind,
        /// The message body, at most `Welcome::max_body` bytes.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::bytes()"))]
        pub body: Bytes,
        /// Media attachments.
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::arbitrary::any::<Attachment>(), 0..3)"))]
        pub attachments: Vec<Attachment>,
    }
}

wire_struct! {
    /// Server to client: the message is durable, with its place in the chat.
    pub struct SendOk {
        /// The Send's request id.
        pub request_id: u32,
        /// The Send's client message id.
        pub client_msg_id: [u8; 16],
        /// The chat.
        pub chat_id: u64,
        /// The message's sequence number in the chat (1, 2, 3, ... without gaps).
        pub seq: u64,
        /// Server commit time, milliseconds since the Unix epoch.
        pub server_ts: u64,
        /// True when this answers a retry of a message stored earlier.
        pub duplicate: bool,
    }
}

wire_struct! {
    /// A stored message, as delivered live and in history and sync pages.
    pub struct Message {
        /// The chat.
        pub chat_id: u64,
        /// Sequence number in the chat.
        pub seq: u64,
        /// The sending user.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub sender_user: String,
        /// The sending device.
        pub sender_device: u32,
        /// Server commit time, milliseconds since the Unix epoch.
        pub server_ts: u64,
        /// The sender's client message id.
        pub client_msg_id: [u8; 16],
        /// What the body holds.
        pub kind: MessageKind,
        /// The body.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::bytes()"))]
        pub body: Bytes,
        /// Media attachments, with server-verified metadata.
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::arbitrary::any::<Attachment>(), 0..3)"))]
        pub attachments: Vec<Attachment>,
    }
}

wire_struct! {
    /// Server to client: a message for this device.
    pub struct Deliver {
        /// The message.
        pub message: Message,
    }
}

wire_struct! {
    /// Client to server: this device holds every message of `chat_id` up to `seq` (cumulative).
    pub struct Ack {
        /// Answered only on error.
        pub request_id: u32,
        /// The chat.
        pub chat_id: u64,
        /// Highest sequence number held, with everything before it.
        pub seq: u64,
    }
}
