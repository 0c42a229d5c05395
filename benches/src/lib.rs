//! Criterion benchmarks for Courier; the benchmarks themselves are in `benches/`.
//!
//! This library only holds shared fixtures.

#![forbid(unsafe_code)]

use bytes::Bytes;
use courier_wire::frame::{Deliver, Message, MessageKind, Send};
use courier_wire::Frame;

/// A `Send` frame with a body of `body` bytes.
pub fn send_frame(body: usize) -> Frame {
    Frame::Send(Send {
        request_id: 42,
        client_msg_id: [7; 16],
        chat_id: 123_456,
        kind: MessageKind::Text,
        body: Bytes::from(vec![b'x'; body]),
        attachments: vec![],
    })
}

/// A `Deliver` frame with a body of `body` bytes.
pub fn deliver_frame(body: usize) -> Frame {
    Frame::Deliver(Deliver {
        message: Message {
            chat_id: 123_456,
            seq: 99_999,
            sender_user: "+4915112345678".into(),
            sender_device: 2,
            server_ts: 1_764_500_000_000,
            client_msg_id: [7; 16],
            kind: MessageKind::Text,
            body: Bytes::from(vec![b'x'; body]),
            attachments: vec![],
        },
    })
}
