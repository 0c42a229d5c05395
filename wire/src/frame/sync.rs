//! Sync and history frames: catching up after being offline, and paging back through a chat.

use crate::codec::{wire_enum, wire_struct};
use crate::frame::message::Message;

wire_struct! {
    /// A position in one chat: everything up to `seq` is held.
    pub struct ChatPosition {
        /// The chat.
        pub chat_id: u64,
        /// Highest sequence number held.
        pub seq: u64,
    }
}

wire_struct! {
    /// Client to server: send what this device missed, from its positions (or the server's record).
    pub struct Sync {
        /// Echoed in [`SyncEnd`].
        pub request_id: u32,
        /// Most messages to send before [`SyncEnd`].
        pub limit: u32,
        /// Positions the client holds; chats not listed resume from the server's record.
        pub positions: Vec<ChatPosition>,
    }
}

wire_struct! {
    /// Server to client: the end of one sync page (the messages came before it as `Deliver`s).
    pub struct SyncEnd {
        /// The Sync's request id.
        pub request_id: u32,
        /// True when more messages wait: send `Sync` again.
        pub more: bool,
        /// Chats where messages after the device's position had already expired.
        pub expired: Vec<u64>,
    }
}

wire_enum! {
    /// Which way [`History`] pages from its anchor.
    pub enum Direction {
        /// Messages with `seq` below the anchor, newest first.
        Before = 0,
        /// Messages with `seq` above the anchor, oldest first.
        After = 1,
    }
}

wire_struct! {
    /// Client to server: a page of a chat's messages around an anchor sequence number.
    pub struct History {
        /// Echoed in [`HistoryPage`].
        pub request_id: u32,
        /// The chat.
        pub chat_id: u64,
        /// Which way to page.
        pub direction: Direction,
        /// The anchor (exclusive); `Before` with `u64::MAX` starts at the newest message.
        pub seq: u64,
        /// Most messages to return (the server may return fewer).
        pub limit: u32,
    }
}

wire_struct! {
    /// Server to client: one page of history.
    pub struct HistoryPage {
        /// The History's request id.
        pub request_id: u32,
        /// The chat.
        pub chat_id: u64,
        /// The messages, in the order the direction gives.
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::arbitrary::any::<Message>(), 0..4)"))]
        pub messages: Vec<Message>,
        /// True when more messages lie beyond this page.
        pub more: bool,
    }
}
