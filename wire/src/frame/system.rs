//! The body of `System` messages: membership changes and renames, written by the server into the
//! chat's own sequence so every member sees them in the same order as the text around them.

use bytes::Bytes;

use crate::codec::{wire_enum, wire_struct, Codec};
use crate::DecodeError;

wire_enum! {
    /// What happened to the chat.
    pub enum SystemEventKind {
        /// The group was created (`name` and `added` hold its initial name and members).
        Created = 0,
        /// The group was renamed and/or members were added or removed.
        Changed = 1,
    }
}

wire_struct! {
    /// A change to a chat, as the body of a `MessageKind::System` message.
    pub struct SystemEvent {
        /// What happened.
        pub kind: SystemEventKind,
        /// Who did it.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub actor: String,
        /// The new name, if it changed.
        #[cfg_attr(test, proptest(strategy = "proptest::option::of(crate::codec::strategy::text())"))]
        pub name: Option<String>,
        /// Members added.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::texts()"))]
        pub added: Vec<String>,
        /// Members removed (a member who removed itself left).
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::texts()"))]
        pub removed: Vec<String>,
    }
}

impl SystemEvent {
    /// The event encoded as a message body.
    pub fn to_body(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out.into()
    }

    /// Decodes a system message body.
    pub fn from_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut b = body;
        let e = Self::decode(&mut b)?;
        if !b.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(e in any::<SystemEvent>()) {
            prop_assert_eq!(SystemEvent::from_body(&e.to_body()).unwrap(), e);
        }
    }
}
