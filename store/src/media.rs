//! Media records and who may read them, engine-neutral.
//!
//! The bytes live in the gateway's blob store; the store keeps, per media id, what a message
//! attaches (type, size, SHA-256, dimensions, thumbnail) and its uploader (`B media`), and per
//! chat that references it one key (`R media chat`), written in the transaction of the message
//! that attaches it. Access: the uploader, and members of any chat with such a message. A
//! thumbnail follows the media it was made from.

use courier_wire::frame::Attachment;

use crate::kv::{KvError, Txn};
use crate::ops::{Attempt, OpResult};
use crate::reads::engine_err;
use crate::record::Media;
use crate::store::Store;
use crate::{keys, StoreError};

/// Most attachments on one message.
pub const MAX_ATTACHMENTS: usize = 16;

/// Most referencing chats an access check reads.
const MAX_REFS_CHECKED: usize = 10_000;

pub(crate) fn read_media(t: &mut dyn Txn, id: &[u8; 16]) -> Result<Option<Media>, KvError> {
    match t.get(&keys::media(id))? {
        None => Ok(None),
        Some(raw) => Media::decode(&raw)
            .map(Some)
            .map_err(|_| KvError::fatal(format!("corrupt media record {id:02x?}"))),
    }
}

impl Attempt<'_> {
    /// Stores media records (an upload and its thumbnail, together).
    pub(crate) fn put_media(&mut self, records: &[Media]) -> OpResult<()> {
        for m in records {
            self.t.set(&keys::media(&m.info.media_id), &m.encode());
        }
        Ok(Ok(()))
    }

    /// Checks the attachments a sender claims and returns the server's own description of each;
    /// records that `chat` references them. Only the uploader may attach its upload.
    pub(crate) fn attach(
        &mut self,
        sender: &str,
        chat: u64,
        seq: u64,
        claimed: &[Attachment],
    ) -> OpResult<Vec<Attachment>> {
        if claimed.len() > MAX_ATTACHMENTS {
            return Ok(Err(StoreError::Invalid(format!(
                "at most {MAX_ATTACHMENTS} attachments per message"
            ))));
        }
        let mut out = Vec::with_capacity(claimed.len());
        for a in claimed {
            let Some(m) = read_media(&mut *self.t, &a.media_id)? else {
                return Ok(Err(StoreError::Forbidden));
            };
            if m.owner != sender {
                return Ok(Err(StoreError::Forbidden));
            }
            if m.thumbnail_of.is_some() {
                return Ok(Err(StoreError::Invalid(
                    "attach the media, not its thumbnail".into(),
                )));
            }
            out.push(m.info);
        }
        // Only once every attachment passed: a refused send leaves no reference behind.
        for a in &out {
            self.t
                .set(&keys::media_ref(&a.media_id, chat), &seq.to_be_bytes());
        }
        Ok(Ok(out))
    }
}

impl Store {
    /// Stores media records durably (an upload and its thumbnail in one transaction).
    pub async fn put_media(&self, records: Vec<Media>) -> Result<(), StoreError> {
        self.call(|reply| crate::writer::Op::PutMedia(records, reply))
            .await
    }

    /// The media record `id`, if `user` may read it: its uploader, or a member of a chat where a
    /// message attaches it (for a thumbnail: the media it was made from). Unknown media and
    /// media the user may not read are both `Forbidden`.
    pub fn media_for(&self, user: &str, id: &[u8; 16]) -> Result<Media, StoreError> {
        let mut t = self.shared.engine.begin().map_err(engine_err)?;
        let Some(media) = read_media(&mut *t, id).map_err(engine_err)? else {
            return Err(StoreError::Forbidden);
        };
        if media.owner == user {
            return Ok(media);
        }
        let source = media.thumbnail_of.unwrap_or(*id);
        let prefix = keys::media_refs(&source);
        let mut end = prefix.clone();
        end.push(0xff);
        let refs = t
            .scan(&prefix, &end, MAX_REFS_CHECKED, false)
            .map_err(engine_err)?;
        for (k, _) in refs {
            let Some(chat) = keys::media_ref_chat(&k) else {
                continue;
            };
            if let Some(c) = self.shared.chat_in(&mut *t, chat).map_err(engine_err)? {
                if c.is_member(user) {
                    return Ok(media);
                }
            }
        }
        Err(StoreError::Forbidden)
    }

    /// The media record `id`, whoever asks (for the gateway's own use).
    pub fn media(&self, id: &[u8; 16]) -> Result<Option<Media>, StoreError> {
        let mut t = self.shared.engine.begin().map_err(engine_err)?;
        read_media(&mut *t, id).map_err(engine_err)
    }
}
