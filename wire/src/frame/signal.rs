//! Signal frames: receipts, typing, presence and push registration.

use bytes::Bytes;

use crate::codec::{wire_enum, wire_struct};

wire_enum! {
    /// Which receipt.
    pub enum ReceiptKind {
        /// The device received the messages.
        Delivered = 0,
        /// The user read the messages.
        Read = 1,
    }
}

wire_struct! {
    /// Client to server: this device delivered/read every message of `chat_id` up to `seq`.
    pub struct Receipt {
        /// Answered only on error.
        pub request_id: u32,
        /// The chat.
        pub chat_id: u64,
        /// Delivered or read.
        pub kind: ReceiptKind,
        /// Up to this sequence number.
        pub seq: u64,
    }
}

wire_struct! {
    /// Server to client: a member delivered/read a chat up to `seq`.
    pub struct ReceiptEvent {
        /// The chat.
        pub chat_id: u64,
        /// The member.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub user: String,
        /// The member's device.
        pub device: u32,
        /// Delivered or read.
        pub kind: ReceiptKind,
        /// Up to this sequence number.
        pub seq: u64,
        /// For groups: how many members have reached `seq` for this kind.
        pub count: u32,
    }
}

wire_struct! {
    /// Client to server: the user started or stopped typing in a chat.
    pub struct Typing {
        /// Answered only on error.
        pub request_id: u32,
        /// The chat.
        pub chat_id: u64,
        /// Started (true) or stopped (false).
        pub typing: bool,
    }
}

wire_struct! {
    /// Server to client: a member started or stopped typing.
    pub struct TypingEvent {
        /// The chat.
        pub chat_id: u64,
        /// The member.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub user: String,
        /// The member's device.
        pub device: u32,
        /// Started or stopped.
        pub typing: bool,
    }
}

wire_struct! {
    /// Client to server: send me presence changes of these users; answered with `Done`.
    pub struct PresenceSubscribe {
        /// Echoed in the answer.
        pub request_id: u32,
        /// The users (each must share a chat with the caller).
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::texts()"))]
        pub users: Vec<String>,
    }
}

wire_struct! {
    /// Server to client: a user came online or went offline.
    pub struct PresenceEvent {
        /// The user.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub user: String,
        /// Online now.
        pub online: bool,
        /// When last seen online, milliseconds since the Unix epoch.
        pub last_seen_ms: u64,
    }
}

wire_enum! {
    /// Push notification providers.
    pub enum PushProvider {
        /// A signed HTTP POST to an operator-configured URL.
        Webhook = 0,
        /// Apple Push Notification service.
        Apns = 1,
        /// Firebase Cloud Messaging.
        Fcm = 2,
    }
}

wire_struct! {
    /// Client to server: deliver push notifications for this device through `provider`.
    pub struct RegisterPush {
        /// Echoed in the answer (`Done`).
        pub request_id: u32,
        /// The provider.
        pub provider: PushProvider,
        /// The provider's device token.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::bytes()"))]
        pub token: Bytes,
    }
}

wire_struct! {
    /// Client to server: whether this user's presence (online, last seen) is shown to the users
    /// who share a chat with it. Stored; answered with `Done`. Visible by default.
    pub struct PresenceSetting {
        /// Echoed in the answer.
        pub request_id: u32,
        /// Show presence (true) or hide it (false).
        pub visible: bool,
    }
}
