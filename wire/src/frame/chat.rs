//! Chat frames: creating, changing, listing and describing chats.

use bytes::{Buf, BufMut};

use crate::codec::{wire_enum, wire_struct, Codec};
use crate::DecodeError;

wire_enum! {
    /// The two kinds of chat.
    pub enum ChatKind {
        /// Two users; one per pair.
        Direct = 0,
        /// A named group of up to the server's group limit.
        Group = 1,
    }
}

/// What [`CreateChat`] creates. Tag byte 0 = direct (peer), 1 = group (name, members).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ChatSpec {
    /// A 1:1 chat with `peer`; answers the existing one when the pair already has one.
    Direct {
        /// The other user.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        peer: String,
    },
    /// A group chat; the creator is always a member.
    Group {
        /// The group's name.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        name: String,
        /// The other initial members.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::texts()"))]
        members: Vec<String>,
    },
}

impl Codec for ChatSpec {
    fn encode<B: BufMut>(&self, buf: &mut B) {
        match self {
            Self::Direct { peer } => {
                buf.put_u8(0);
                peer.encode(buf);
            }
            Self::Group { name, members } => {
                buf.put_u8(1);
                name.encode(buf);
                members.encode(buf);
            }
        }
    }
    fn decode<B: Buf>(buf: &mut B) -> Result<Self, DecodeError> {
        match u8::decode(buf)? {
            0 => Ok(Self::Direct {
                peer: String::decode(buf)?,
            }),
            1 => Ok(Self::Group {
                name: String::decode(buf)?,
                members: Vec::decode(buf)?,
            }),
            _ => Err(DecodeError::InvalidValue),
        }
    }
    fn encoded_len(&self) -> usize {
        1 + match self {
            Self::Direct { peer } => peer.encoded_len(),
            Self::Group { name, members } => name.encoded_len() + members.encoded_len(),
        }
    }
}

wire_struct! {
    /// Client to server: create a chat; answered with [`ChatInfo`].
    pub struct CreateChat {
        /// Echoed in the answer.
        pub request_id: u32,
        /// What to create.
        pub spec: ChatSpec,
    }
}

wire_struct! {
    /// Client to server: rename a group and/or change its members; answered with [`ChatInfo`].
    pub struct UpdateChat {
        /// Echoed in the answer.
        pub request_id: u32,
        /// The group.
        pub chat_id: u64,
        /// A new name.
        #[cfg_attr(test, proptest(strategy = "proptest::option::of(crate::codec::strategy::text())"))]
        pub rename: Option<String>,
        /// Users to add.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::texts()"))]
        pub add: Vec<String>,
        /// Users to remove (a member may remove itself: leaving).
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::texts()"))]
        pub remove: Vec<String>,
    }
}

wire_struct! {
    /// Client to server: a page of the user's chats, ordered by chat id; answered with [`ChatList`].
    pub struct ListChats {
        /// Echoed in the answer.
        pub request_id: u32,
        /// Start after this chat id (0 for the first page).
        pub after_chat: u64,
        /// Most chats to return.
        pub limit: u32,
    }
}

wire_struct! {
    /// Client to server: describe one chat; answered with [`ChatInfo`].
    pub struct GetChat {
        /// Echoed in the answer.
        pub request_id: u32,
        /// The chat.
        pub chat_id: u64,
    }
}

wire_struct! {
    /// A chat as one member sees it.
    pub struct ChatSummary {
        /// The chat.
        pub chat_id: u64,
        /// Direct or group.
        pub kind: ChatKind,
        /// The group's name (empty for direct chats).
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub name: String,
        /// The members.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::texts()"))]
        pub members: Vec<String>,
        /// Sequence number of the newest message.
        pub last_seq: u64,
        /// Messages after the asking user's read position.
        pub unread: u64,
        /// Creation time, milliseconds since the Unix epoch.
        pub created_ts: u64,
    }
}

wire_struct! {
    /// Server to client: one chat.
    pub struct ChatInfo {
        /// The request's id.
        pub request_id: u32,
        /// The chat.
        pub chat: ChatSummary,
    }
}

wire_struct! {
    /// Server to client: one page of chats.
    pub struct ChatList {
        /// The request's id.
        pub request_id: u32,
        /// The chats, by ascending id.
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::arbitrary::any::<ChatSummary>(), 0..4)"))]
        pub chats: Vec<ChatSummary>,
        /// Pass as `after_chat` for the next page; absent on the last page.
        pub next_after: Option<u64>,
    }
}
