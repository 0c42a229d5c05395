//! Media records and who may read them, engine-neutral.
//!
//! The bytes live in the gateway's blob store; the store keeps, per media id, what a message
//! attaches (type, size, SHA-256, dimensions, thumbnail) and its uploader (`B media`), and per
//! chat that references it one key (`R media chat`), written in the transaction of the message
//! that attaches it. Access: the uploader, and members of any chat with such a message. A
//! thumbnail follows the media it was made from.
//!
//! Retention: an upload no message attaches within a day (`O hour media`) is deleted by the
//! sweeper, and so is media whose every attaching message expired (the sweeper reads each
//! expiring message anyway, for its dedupe record). A blob is released — reported for deletion
//! from the blob store — when no media record uses it any more (`H sha256 media`).

use courier_wire::frame::Attachment;

use crate::error::Forbid;
use crate::kv::{KvError, Txn};
use crate::ops::{get_u64, Attempt, OpResult, SweepStats};
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

/// The refusal of an upload past the uploader's quota.
pub fn quota_error(used: u64, quota: u64) -> StoreError {
    StoreError::TooLarge(format!(
        "upload quota reached: {} of {} MiB used (media expires with its messages)",
        used >> 20,
        quota >> 20
    ))
}

/// How long an upload may wait for a message to attach it.
pub const UNATTACHED_UPLOAD_TTL_MS: u64 = 24 * 3_600_000;

impl Attempt<'_, '_> {
    /// Stores media records (an upload and its thumbnail, together), who uses each blob, and
    /// (for uploads) when they were made, for expiry unless attached. Their bytes count against
    /// each uploader's usage; with a `quota`, records that would take an uploader past it are
    /// refused (nothing is stored).
    pub(crate) fn put_media(&mut self, records: &[Media], quota: Option<u64>) -> OpResult<()> {
        let mut added: Vec<(&str, u64)> = Vec::new();
        for m in records {
            match added.iter_mut().find(|(u, _)| *u == m.owner) {
                Some((_, n)) => *n += m.info.size,
                None => added.push((&m.owner, m.info.size)),
            }
        }
        let mut usage = Vec::with_capacity(added.len());
        for (owner, n) in added {
            let used = get_u64(&mut *self.t, &keys::media_usage(owner))?.unwrap_or(0);
            if let Some(q) = quota.filter(|&q| used.saturating_add(n) > q) {
                return Ok(Err(quota_error(used, q)));
            }
            usage.push((owner, used.saturating_add(n)));
        }
        for (owner, n) in usage {
            self.t.set(&keys::media_usage(owner), &n.to_be_bytes());
        }
        for m in records {
            let id = &m.info.media_id;
            self.t.set(&keys::media(id), &m.encode());
            self.t.set(&keys::blob_user(&m.info.sha256, id), &[]);
            if m.thumbnail_of.is_none() {
                self.t
                    .set(&keys::upload_time(keys::hour_of(m.created_ts), id), &[]);
            }
        }
        Ok(Ok(()))
    }

    /// A message of `chat` attaching `media` expired, and the chat's messages below `floor` are
    /// gone. When no message of the chat before `floor` was the last to attach it, the chat no
    /// longer references it; when no chat does, the media is deleted.
    pub(crate) fn unreference(
        &mut self,
        media: &[u8; 16],
        chat: u64,
        floor: u64,
        stats: &mut SweepStats,
    ) -> Result<(), KvError> {
        let key = keys::media_ref(media, chat);
        let Some(last) = get_u64(&mut *self.t, &key)? else {
            return Ok(());
        };
        if last >= floor {
            return Ok(()); // a later, unexpired message of the chat still attaches it
        }
        self.t.clear(&key);
        if !self.referenced(media)? {
            if self.shared.engine.partitions() > 1 {
                // The media lives in partition 0: its writer decides (`release_media`).
                self.t
                    .set(&keys::media_release(media), &self.now.to_be_bytes());
            } else {
                self.drop_media(media, stats)?;
            }
        }
        Ok(())
    }

    /// On a store of several partitions, partition 0's writer (with every other writer held
    /// off attaching media, so no reference can appear meanwhile): deletes the media that the
    /// other partitions' sweeps found unreferenced and that no chat references any more, and
    /// the uploads no message attached within a day. The candidates it dealt with are in
    /// `released_candidates`, for their writers to clear.
    pub(crate) fn release_media(&mut self, limit: usize) -> OpResult<SweepStats> {
        let mut stats = SweepStats::default();
        let budget = limit.max(1);
        let start = [keys::tag::MEDIA_RELEASE];
        let candidates = self
            .t
            .scan(&start, &keys::prefix_end(&start), budget, false)?;
        if candidates.len() == budget {
            stats.more = true;
        }
        for (k, v) in candidates {
            let Some(id) = keys::media_release_id(&k) else {
                continue;
            };
            if !self.referenced(&id)? {
                self.drop_media(&id, &mut stats)?;
            }
            // Partition 0's own candidate, if it is one; the others' go back to their writers.
            self.t.clear(&k);
            stats.released_candidates.push((id, v));
        }
        if !stats.more {
            self.expire_unattached_uploads(budget, &mut stats)?;
        }
        Ok(Ok(stats))
    }

    /// Clears the release candidates partition 0's writer dealt with, unless one was written
    /// again since (a later sweep found the media unreferenced anew).
    pub(crate) fn forget_released(&mut self, done: &[([u8; 16], Vec<u8>)]) -> Result<(), KvError> {
        for (id, v) in done {
            let key = keys::media_release(id);
            if self.t.get(&key)?.as_deref() == Some(v.as_slice()) {
                self.t.clear(&key);
            }
        }
        Ok(())
    }

    fn referenced(&mut self, media: &[u8; 16]) -> Result<bool, KvError> {
        let prefix = keys::media_refs(media);
        Ok(!self
            .t
            .scan(&prefix, &keys::prefix_end(&prefix), 1, false)?
            .is_empty())
    }

    /// Deletes a media record and its thumbnail's; blobs nobody uses any more are reported.
    fn drop_media(&mut self, id: &[u8; 16], stats: &mut SweepStats) -> Result<(), KvError> {
        let Some(m) = read_media(&mut *self.t, id)? else {
            return Ok(());
        };
        let mut doomed = vec![m];
        if let Some(t) = doomed[0].info.thumbnail_id {
            if let Some(thumb) = read_media(&mut *self.t, &t)? {
                doomed.push(thumb);
            }
        }
        for m in doomed {
            let usage = keys::media_usage(&m.owner);
            if let Some(used) = get_u64(&mut *self.t, &usage)? {
                self.t
                    .set(&usage, &used.saturating_sub(m.info.size).to_be_bytes());
            }
            let (id, sha) = (m.info.media_id, m.info.sha256);
            self.t.clear(&keys::media(&id));
            self.t.clear(&keys::blob_user(&sha, &id));
            self.t
                .clear(&keys::upload_time(keys::hour_of(m.created_ts), &id));
            stats.media += 1;
            let users = keys::blob_users(&sha);
            let still_used = !self
                .t
                .scan(&users, &keys::prefix_end(&users), 1, false)?
                .is_empty();
            if !still_used && !stats.released_blobs.contains(&sha) {
                stats.released_blobs.push(sha);
            }
        }
        Ok(())
    }

    /// Deletes uploads older than a day that no message attached (at most `budget`).
    pub(crate) fn expire_unattached_uploads(
        &mut self,
        budget: usize,
        stats: &mut SweepStats,
    ) -> Result<(), KvError> {
        let cutoff = keys::hour_of(self.now.saturating_sub(UNATTACHED_UPLOAD_TTL_MS));
        let old = self.t.scan(
            &keys::upload_time_prefix(0),
            &keys::upload_time_prefix(cutoff),
            budget,
            false,
        )?;
        if old.len() == budget {
            stats.more = true;
        }
        for (k, _) in old {
            self.t.clear(&k);
            let Some(id) = keys::upload_time_media(&k) else {
                continue;
            };
            if !self.referenced(&id)? {
                self.drop_media(&id, stats)?;
            }
        }
        Ok(())
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
                return Ok(Err(StoreError::Forbidden(Forbid::NotYourMedia)));
            };
            if m.owner != sender {
                return Ok(Err(StoreError::Forbidden(Forbid::NotYourMedia)));
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
    /// Stores media records durably (an upload and its thumbnail in one transaction), refused
    /// with `TooLarge` if they would take their uploader past `quota` bytes of media.
    pub async fn put_media(
        &self,
        records: Vec<Media>,
        quota: Option<u64>,
    ) -> Result<(), StoreError> {
        self.call(|reply| crate::writer::Op::PutMedia {
            records,
            quota,
            reply,
        })
        .await
    }

    /// Bytes of media `user` uploaded that are still stored (uploads and their thumbnails).
    pub fn media_usage(&self, user: &str) -> Result<u64, StoreError> {
        self.read(|t| {
            Ok(get_u64(t, &keys::media_usage(user))
                .map_err(engine_err)?
                .unwrap_or(0))
        })
    }

    /// The media record `id`, if `user` may read it: its uploader, or a member of a chat where a
    /// message attaches it (for a thumbnail: the media it was made from). Unknown media and
    /// media the user may not read are both `Forbidden`.
    pub fn media_for(&self, user: &str, id: &[u8; 16]) -> Result<Media, StoreError> {
        self.read(|t| {
            let Some(media) = read_media(t, id).map_err(engine_err)? else {
                return Err(StoreError::Forbidden(Forbid::NotShared));
            };
            if media.owner == user {
                return Ok(media);
            }
            let source = media.thumbnail_of.unwrap_or(*id);
            let prefix = keys::media_refs(&source);
            let refs = t
                .scan(&prefix, &keys::prefix_end(&prefix), MAX_REFS_CHECKED, false)
                .map_err(engine_err)?;
            for (k, _) in refs {
                let Some(chat) = keys::media_ref_chat(&k) else {
                    continue;
                };
                if let Some(c) = self.shared.chat_in(t, chat).map_err(engine_err)? {
                    if c.is_member(user) {
                        return Ok(media);
                    }
                }
            }
            Err(StoreError::Forbidden(Forbid::NotShared))
        })
    }

    /// Whether any media record's bytes are this blob.
    pub fn blob_in_use(&self, sha256: &[u8; 32]) -> Result<bool, StoreError> {
        self.read(|t| {
            let users = keys::blob_users(sha256);
            Ok(!t
                .scan(&users, &keys::prefix_end(&users), 1, false)
                .map_err(engine_err)?
                .is_empty())
        })
    }

    /// The media record `id`, whoever asks (for the gateway's own use).
    pub fn media(&self, id: &[u8; 16]) -> Result<Option<Media>, StoreError> {
        self.read(|t| read_media(t, id).map_err(engine_err))
    }
}
