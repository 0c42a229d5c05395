//! Values stored under the keys of [`crate::keys`], encoded with the wire codec's field rules.

use bytes::{Buf, BufMut, Bytes};
use courier_wire::frame::{Attachment, ChatKind, ChatSummary, Message};
use courier_wire::{Codec, DecodeError};

/// A chat as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    /// The chat id.
    pub id: u64,
    /// Direct or group.
    pub kind: ChatKind,
    /// The group's name (empty for direct chats).
    pub name: String,
    /// Members, sorted and unique.
    pub members: Vec<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ts: u64,
    /// Who may remove other members of a group (its creator, then the first remaining member
    /// when the owner leaves); empty for direct chats.
    pub owner: String,
}

impl Chat {
    /// Whether `user` is a member.
    pub fn is_member(&self, user: &str) -> bool {
        self.members
            .binary_search_by(|m| m.as_str().cmp(user))
            .is_ok()
    }

    /// The chat as the wire describes it to a member.
    pub fn summary(&self, last_seq: u64, unread: u64) -> ChatSummary {
        ChatSummary {
            chat_id: self.id,
            kind: self.kind,
            name: self.name.clone(),
            members: self.members.clone(),
            last_seq,
            unread,
            created_ts: self.created_ts,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            1 + self.name.encoded_len() + self.members.encoded_len() + 8 + self.owner.encoded_len(),
        );
        self.kind.encode(&mut out);
        self.name.encode(&mut out);
        self.members.encode(&mut out);
        self.created_ts.encode(&mut out);
        self.owner.encode(&mut out);
        out
    }

    pub(crate) fn decode(id: u64, mut b: &[u8]) -> Result<Self, DecodeError> {
        let chat = Self {
            id,
            kind: ChatKind::decode(&mut b)?,
            name: String::decode(&mut b)?,
            members: Vec::decode(&mut b)?,
            created_ts: u64::decode(&mut b)?,
            owner: String::decode(&mut b)?,
        };
        if b.has_remaining() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(chat)
    }
}

/// What a dedupe record remembers of the original send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DedupeRecord {
    pub(crate) chat_id: u64,
    pub(crate) seq: u64,
    pub(crate) server_ts: u64,
}

impl DedupeRecord {
    pub(crate) fn encode(self) -> [u8; 24] {
        let mut out = [0u8; 24];
        let mut w = &mut out[..];
        w.put_u64(self.chat_id);
        w.put_u64(self.seq);
        w.put_u64(self.server_ts);
        out
    }

    pub(crate) fn decode(mut b: &[u8]) -> Result<Self, DecodeError> {
        let r = Self {
            chat_id: u64::decode(&mut b)?,
            seq: u64::decode(&mut b)?,
            server_ts: u64::decode(&mut b)?,
        };
        if b.has_remaining() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(r)
    }
}

/// A message value is its wire encoding, so history and delivery need no re-encoding.
pub(crate) fn encode_message(m: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.encoded_len());
    m.encode(&mut out);
    out
}

pub(crate) fn decode_message(b: &[u8]) -> Result<Message, DecodeError> {
    let mut bytes = Bytes::copy_from_slice(b);
    let m = Message::decode(&mut bytes)?;
    if bytes.has_remaining() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(m)
}

/// The value under `S chat`: the chat's last seq and, while the chat has an open retention
/// entry (`T hour chat` = [`OPEN`]), that entry's hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LastSeq {
    /// The last assigned seq (0: none yet).
    pub seq: u64,
    /// The hour of the chat's open `T` entry, if it has one.
    pub open_hour: Option<u32>,
}

/// The value of a `T hour chat` entry still open: the chat's messages up to its last seq are
/// all from that hour or before (the entry is closed with an exact seq when the chat next gets
/// a message in a later hour).
pub const OPEN: u64 = u64::MAX;

impl LastSeq {
    /// 8 bytes of seq, then 4 of hour when there is an open entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.seq.to_be_bytes().to_vec();
        if let Some(h) = self.open_hour {
            out.extend_from_slice(&h.to_be_bytes());
        }
        out
    }

    /// Reads both forms (an `S` value without an hour predates open entries, or has none).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        match b.len() {
            8 => Ok(Self {
                seq: decode_u64(b)?,
                open_hour: None,
            }),
            12 => Ok(Self {
                seq: decode_u64(&b[..8])?,
                open_hour: Some(u32::from_be_bytes(b[8..].try_into().expect("4 bytes"))),
            }),
            _ => Err(DecodeError::TrailingBytes),
        }
    }
}

pub(crate) fn decode_u64(b: &[u8]) -> Result<u64, DecodeError> {
    let mut b = b;
    let v = u64::decode(&mut b)?;
    if b.has_remaining() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(v)
}

/// Stored media: an upload, or the thumbnail made from one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// What a message attaches: id, detected type, size, SHA-256, thumbnail id, dimensions.
    pub info: Attachment,
    /// The uploader.
    pub owner: String,
    /// When it was stored, milliseconds since the Unix epoch.
    pub created_ts: u64,
    /// For a thumbnail: the media it was made from (access follows that media).
    pub thumbnail_of: Option<[u8; 16]>,
}

impl Media {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.info.encoded_len()
                + self.owner.encoded_len()
                + 8
                + self.thumbnail_of.encoded_len(),
        );
        self.info.encode(&mut out);
        self.owner.encode(&mut out);
        self.created_ts.encode(&mut out);
        self.thumbnail_of.encode(&mut out);
        out
    }

    pub(crate) fn decode(mut b: &[u8]) -> Result<Self, DecodeError> {
        let media = Self {
            info: Attachment::decode(&mut b)?,
            owner: String::decode(&mut b)?,
            created_ts: u64::decode(&mut b)?,
            thumbnail_of: Option::<[u8; 16]>::decode(&mut b)?,
        };
        if b.has_remaining() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(media)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_seq_reads_both_forms_and_refuses_others() {
        for v in [
            LastSeq {
                seq: 0,
                open_hour: None,
            },
            LastSeq {
                seq: 42,
                open_hour: Some(493_000),
            },
        ] {
            assert_eq!(LastSeq::decode(&v.encode()).unwrap(), v);
        }
        assert_eq!(LastSeq::decode(&7u64.to_be_bytes()).unwrap().seq, 7);
        for bad in [&[][..], &[1; 7], &[1; 9], &[1; 13]] {
            assert!(LastSeq::decode(bad).is_err());
        }
    }

    #[test]
    fn media_round_trip() {
        let m = Media {
            info: Attachment {
                media_id: [7; 16],
                content_type: "image/png".into(),
                size: 1234,
                sha256: [9; 32],
                thumbnail_id: Some([8; 16]),
                width: 10,
                height: 20,
            },
            owner: "alice".into(),
            created_ts: 42,
            thumbnail_of: None,
        };
        assert_eq!(Media::decode(&m.encode()).unwrap(), m);
        assert!(Media::decode(&m.encode()[1..]).is_err());
    }

    #[test]
    fn chat_round_trip() {
        let c = Chat {
            id: 9,
            kind: ChatKind::Group,
            name: "friends".into(),
            members: vec!["alice".into(), "bob".into()],
            created_ts: 123,
            owner: "alice".into(),
        };
        assert_eq!(Chat::decode(9, &c.encode()).unwrap(), c);
        assert!(c.is_member("bob"));
        assert!(!c.is_member("carol"));
        let d = DedupeRecord {
            chat_id: 1,
            seq: 2,
            server_ts: 3,
        };
        assert_eq!(DedupeRecord::decode(&d.encode()).unwrap(), d);
        assert!(Chat::decode(9, &[9]).is_err());
    }
}
