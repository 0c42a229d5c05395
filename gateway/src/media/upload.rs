//! Receiving an upload: bytes into a part file (size limit enforced as they arrive, hashed as
//! they arrive, progress confirmed every MiB after an fsync so an interrupted upload resumes
//! from there), then type detection, thumbnail, blob and record.
//!
//! A part file lives in `uploads/` as `<id>.part` beside `<id>.meta` (uploader, declared size,
//! expected hash, start time), and is deleted once the media is stored or refused. An upload not
//! resumed within the resume window is refused as expired (and its files are removed).

use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use courier_store::Media;
use courier_wire::frame::{Attachment, MediaInfo, Upload, UploadProgress};
use courier_wire::{ErrorCode, Frame};
use ring::digest::{Context, SHA256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::detect::{self, SNIFF_LEN};
use super::thumbnail::{self as img, ImageError};
use super::{error, MediaService};
use courier_wire::time::now_ms;

use crate::util::hex;

/// Bytes between two confirmed offsets.
const CONFIRM_EVERY: u64 = 1 << 20;

/// Why an upload did not complete.
enum Failure {
    /// Refused: told to the client with this code.
    Refused(ErrorCode, String),
    /// Refused for now (disk nearly full, store unavailable): the client may try again after
    /// the wait.
    Later(ErrorCode, Duration, String),
    /// The stream or connection went away: the part file stays for a resume.
    Cut,
    /// Our own failure (disk, store).
    Internal(String),
}

/// How long an upload refused while another node deletes the same bytes is told to wait.
const MARK_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long an upload refused for lack of disk space is told to wait.
const NO_ROOM_RETRY_AFTER: Duration = Duration::from_secs(10);

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
        {
            return Self::Later(
                ErrorCode::UNAVAILABLE,
                NO_ROOM_RETRY_AFTER,
                "the server's disk is full; upload again later".into(),
            );
        }
        Self::Internal(e.to_string())
    }
}

impl From<courier_store::StoreError> for Failure {
    fn from(e: courier_store::StoreError) -> Self {
        match e.retry_after() {
            Some(wait) => Self::Later(e.code(), wait, e.to_string()),
            None if e.is_server_fault() => Self::Internal(e.to_string()),
            None => Self::Refused(e.code(), e.to_string()),
        }
    }
}

/// An upload in progress, counted against its user's quota and the free space until dropped.
struct Receiving<'a> {
    svc: &'a MediaService,
    user: String,
    bytes: u64,
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        let mut r = self.svc.receiving.lock().expect("receiving lock");
        if let Some(n) = r.get_mut(&self.user) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                r.remove(&self.user);
            }
        }
    }
}

/// Admits an upload of `size` bytes of which `remaining` are still to come: within the user's
/// quota (`stored`, the media the user has stored, plus uploads in progress) and leaving the
/// disk its free-space floor.
fn admit<'a>(
    svc: &'a MediaService,
    user: &str,
    stored: u64,
    size: u64,
    remaining: u64,
) -> Result<Receiving<'a>, Failure> {
    let floor = svc.config.min_free;
    if floor > 0 {
        let free = courier_store::engine::embedded::free_bytes(&svc.uploads);
        if let Some(free) = free.filter(|&f| f < floor.saturating_add(remaining)) {
            return Err(Failure::Later(
                ErrorCode::UNAVAILABLE,
                NO_ROOM_RETRY_AFTER,
                format!(
                    "the server's disk is nearly full ({} MiB free); upload again later",
                    free >> 20
                ),
            ));
        }
    }
    let mut r = svc.receiving.lock().expect("receiving lock");
    let in_progress = r.get(user).copied().unwrap_or(0);
    if let Some(quota) = svc.config.user_quota {
        let used = stored.saturating_add(in_progress);
        if used.saturating_add(size) > quota {
            let e = courier_store::quota_error(used, quota);
            return Err(refused(e.code(), e.to_string()));
        }
    }
    *r.entry(user.to_owned()).or_default() += size;
    Ok(Receiving {
        svc,
        user: user.to_owned(),
        bytes: size,
    })
}

fn refused(code: ErrorCode, msg: impl Into<String>) -> Failure {
    Failure::Refused(code, msg.into())
}

/// What `<id>.meta` records.
struct Meta {
    user: String,
    size: u64,
    sha256: Option<[u8; 32]>,
    started_ms: u64,
}

impl Meta {
    fn encode(&self) -> String {
        let hash = self
            .sha256
            .as_ref()
            .map_or_else(|| "-".to_owned(), |h| hex(h));
        format!(
            "{}\n{}\n{hash}\n{}\n",
            self.user, self.size, self.started_ms
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let user = lines.next()?.to_owned();
        let size = lines.next()?.parse().ok()?;
        let hash = lines.next()?;
        let sha256 = if hash == "-" {
            None
        } else {
            let mut out = [0u8; 32];
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(hash.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(out)
        };
        let started_ms = lines.next()?.parse().ok()?;
        Some(Self {
            user,
            size,
            sha256,
            started_ms,
        })
    }
}

/// Runs one upload stream of `user` (on a session of protocol `version`) and answers on it.
pub(crate) async fn serve(
    req: Upload,
    leftover: BytesMut,
    mut recv: courier_net::quic::RecvStream,
    mut send: courier_net::quic::SendStream,
    (user, version): (&str, u16),
    svc: &MediaService,
) {
    let request_id = req.request_id;
    match receive(&req, leftover, &mut recv, &mut send, user, svc).await {
        Ok(media) => {
            let frame = Frame::MediaInfo(MediaInfo { request_id, media });
            let _ = send.write_all(&frame.to_bytes()).await;
            let _ = send.finish();
        }
        Err(Failure::Refused(code, msg)) => {
            // Tell the client to stop sending, then why.
            let _ = recv.stop(code.0.into());
            let _ = send.write_all(&error(request_id, code, msg)).await;
            let _ = send.finish();
        }
        Err(Failure::Later(code, wait, msg)) => {
            let _ = recv.stop(code.0.into());
            let frame = crate::session::retry_frame(version, request_id, code, wait, msg);
            let _ = send.write_all(&frame).await;
            let _ = send.finish();
        }
        Err(Failure::Internal(msg)) => {
            tracing::error!("upload by {user} failed: {msg}");
            let _ = recv.stop(ErrorCode::INTERNAL.0.into());
            let _ = send
                .write_all(&error(request_id, ErrorCode::INTERNAL, "upload failed"))
                .await;
            let _ = send.finish();
        }
        Err(Failure::Cut) => {}
    }
}

fn paths(svc: &MediaService, id: u64) -> (PathBuf, PathBuf) {
    (
        svc.uploads.join(format!("{id:016x}.part")),
        svc.uploads.join(format!("{id:016x}.meta")),
    )
}

async fn remove(svc: &MediaService, id: u64) {
    let (part, meta) = paths(svc, id);
    let _ = tokio::fs::remove_file(part).await;
    let _ = tokio::fs::remove_file(meta).await;
}

fn random_id() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("system randomness");
    u64::from_be_bytes(b).max(1)
}

async fn progress(
    send: &mut courier_net::quic::SendStream,
    request_id: u32,
    upload: u64,
    offset: u64,
) -> Result<(), Failure> {
    let frame = Frame::UploadProgress(UploadProgress {
        request_id,
        upload,
        offset,
    });
    send.write_all(&frame.to_bytes())
        .await
        .map_err(|_| Failure::Cut)
}

/// Opens the part file of a new or resumed upload, positioned at `req.offset`, with the hash of
/// the bytes before it.
async fn open_part(
    req: &Upload,
    user: &str,
    svc: &MediaService,
) -> Result<(u64, tokio::fs::File, Context), Failure> {
    if req.resume == 0 {
        if req.offset != 0 {
            return Err(refused(
                ErrorCode::INVALID,
                "a new upload starts at offset 0",
            ));
        }
        let id = random_id();
        let (part, meta) = paths(svc, id);
        let m = Meta {
            user: user.to_owned(),
            size: req.size,
            sha256: req.sha256,
            started_ms: now_ms(),
        };
        tokio::fs::write(&meta, m.encode()).await?;
        let file = tokio::fs::File::create(&part).await?;
        return Ok((id, file, Context::new(&SHA256)));
    }
    let id = req.resume;
    let (part, meta) = paths(svc, id);
    let Some(m) = tokio::fs::read_to_string(&meta)
        .await
        .ok()
        .and_then(|t| Meta::decode(&t))
    else {
        return Err(refused(ErrorCode::NOT_FOUND, "no such upload to resume"));
    };
    if m.user != user {
        return Err(refused(ErrorCode::FORBIDDEN, "not your upload"));
    }
    let window = svc.config.resume_window.as_millis() as u64;
    if now_ms().saturating_sub(m.started_ms) > window {
        remove(svc, id).await;
        return Err(refused(ErrorCode::NOT_FOUND, "the upload expired"));
    }
    if m.size != req.size || m.sha256 != req.sha256 {
        return Err(refused(
            ErrorCode::INVALID,
            "a resumed upload must declare the same size and hash",
        ));
    }
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&part)
        .await?;
    let have = file.metadata().await?.len();
    if req.offset > have {
        return Err(refused(
            ErrorCode::INVALID,
            format!("offset {} is beyond the {have} bytes stored", req.offset),
        ));
    }
    file.set_len(req.offset).await?;
    // Hash what is already there.
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 16];
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let mut left = req.offset;
    while left > 0 {
        let n = file.read(&mut buf[..left.min(1 << 16) as usize]).await?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    file.seek(std::io::SeekFrom::Start(req.offset)).await?;
    Ok((id, file, ctx))
}

async fn receive(
    req: &Upload,
    leftover: BytesMut,
    recv: &mut courier_net::quic::RecvStream,
    send: &mut courier_net::quic::SendStream,
    user: &str,
    svc: &MediaService,
) -> Result<Attachment, Failure> {
    let max = svc.config.max_upload;
    if req.size > max {
        return Err(refused(
            ErrorCode::TOO_LARGE,
            format!("{} bytes exceed the upload limit of {max}", req.size),
        ));
    }
    if req.offset > req.size {
        return Err(refused(
            ErrorCode::INVALID,
            "offset beyond the declared size",
        ));
    }
    let stored = match svc.config.user_quota {
        Some(_) => {
            let who = user.to_owned();
            svc.store.reading(move |s| s.media_usage(&who)).await?
        }
        None => 0,
    };
    let _receiving = admit(svc, user, stored, req.size, req.size - req.offset)?;
    let (id, mut file, mut ctx) = open_part(req, user, svc).await?;
    progress(send, req.request_id, id, req.offset).await?;

    let mut written = req.offset;
    let mut confirmed = req.offset;
    let mut pending = Some(leftover.freeze()).filter(|b| !b.is_empty());
    loop {
        let chunk = match pending.take() {
            Some(b) => b,
            None => match tokio::time::timeout(
                svc.config.stall_timeout,
                recv.read_chunk(usize::MAX, true),
            )
            .await
            {
                Ok(Ok(Some(c))) => c.bytes,
                Ok(Ok(None)) => break,
                Ok(Err(_)) => {
                    // Keep what arrived for a resume.
                    let _ = file.sync_data().await;
                    return Err(Failure::Cut);
                }
                Err(_) => {
                    let _ = file.sync_data().await;
                    let secs = svc.config.stall_timeout.as_secs_f64();
                    return Err(refused(
                        ErrorCode::INVALID,
                        format!(
                            "no bytes for {secs} s: upload stopped (resume upload {id} from {written})"
                        ),
                    ));
                }
            },
        };
        if written + chunk.len() as u64 > req.size {
            remove(svc, id).await;
            return Err(refused(
                ErrorCode::TOO_LARGE,
                format!("more bytes than the declared {}", req.size),
            ));
        }
        if let Err(e) = file.write_all(&chunk).await {
            // Most likely a full disk: what arrived goes, to give the space back.
            remove(svc, id).await;
            return Err(e.into());
        }
        ctx.update(&chunk);
        written += chunk.len() as u64;
        if written - confirmed >= CONFIRM_EVERY {
            if let Err(e) = file.sync_data().await {
                remove(svc, id).await;
                return Err(e.into());
            }
            confirmed = written;
            progress(send, req.request_id, id, confirmed).await?;
        }
    }
    if written != req.size {
        return Err(refused(
            ErrorCode::INVALID,
            format!(
                "the stream ended after {written} of {} bytes (resume upload {id} from {confirmed})",
                req.size
            ),
        ));
    }
    file.sync_all().await?;
    if confirmed < written {
        progress(send, req.request_id, id, written).await?;
    }
    let sha256: [u8; 32] = ctx
        .finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes");
    if req.sha256.is_some_and(|want| want != sha256) {
        remove(svc, id).await;
        return Err(refused(
            ErrorCode::INVALID,
            "the bytes do not have the declared SHA-256",
        ));
    }
    let marked = svc.storing(sha256).await;
    let mut blobs = vec![sha256];
    let result = match marked {
        Ok(()) => store(svc, id, user, req.size, sha256, &mut blobs).await,
        Err(e) => Err(Failure::Later(ErrorCode::UNAVAILABLE, MARK_RETRY_AFTER, e)),
    };
    svc.stored(&[sha256]).await;
    remove(svc, id).await;
    if result.is_err() {
        // No record uses what this upload stored: delete those blobs (unless another upload
        // or record uses the same bytes), so a failed upload leaves nothing behind.
        for b in blobs {
            svc.release(b).await;
        }
    }
    result
}

/// Detects the type, makes the thumbnail, stores blobs and records; adds the blobs it stored
/// (beyond the upload's own) to `blobs`.
async fn store(
    svc: &MediaService,
    id: u64,
    user: &str,
    size: u64,
    sha256: [u8; 32],
    blobs: &mut Vec<[u8; 32]>,
) -> Result<Attachment, Failure> {
    let mut storing = Vec::new();
    let result = store_marked(svc, id, user, size, sha256, &mut storing).await;
    svc.stored(&storing).await;
    blobs.extend(storing);
    result
}

/// [`store`], noting in `storing` the blobs it marked as being stored.
async fn store_marked(
    svc: &MediaService,
    id: u64,
    user: &str,
    size: u64,
    sha256: [u8; 32],
    storing: &mut Vec<[u8; 32]>,
) -> Result<Attachment, Failure> {
    let (part, _) = paths(svc, id);
    let mut head = [0u8; SNIFF_LEN];
    let n = {
        let mut f = tokio::fs::File::open(&part).await?;
        let mut n = 0;
        while n < SNIFF_LEN {
            let got = f.read(&mut head[n..]).await?;
            if got == 0 {
                break;
            }
            n += got;
        }
        n
    };
    let (content_type, image_kind) = detect::content_type(&head[..n]);
    let now = svc.store.now_ms();
    let media_id = courier_wire::uuid_v7(now, random_tail());
    let mut info = Attachment {
        media_id,
        content_type: content_type.to_owned(),
        size,
        sha256,
        thumbnail_id: None,
        width: 0,
        height: 0,
    };
    let mut records = Vec::with_capacity(2);
    if let Some(kind) = image_kind {
        // A worker slot first: at most `thumbnail_workers` images are in memory at once.
        let _worker = svc.thumbnails.acquire().await.map_err(|_| Failure::Cut)?;
        let config = &svc.config;
        let made = img::thumbnail_file(
            part.to_path_buf(),
            kind,
            config.max_pixels,
            config.release_memory,
        )
        .await;
        let t = match made {
            Ok(t) => t,
            Err(e @ ImageError::TooManyPixels { .. }) => {
                return Err(refused(ErrorCode::TOO_LARGE, e.to_string()))
            }
            Err(e @ ImageError::Decode(_)) => {
                return Err(refused(ErrorCode::INVALID, e.to_string()))
            }
            Err(ImageError::Io(e)) => return Err(e.into()),
        };
        let thumb_sha: [u8; 32] = ring::digest::digest(&SHA256, &t.thumbnail)
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        let thumb_id = courier_wire::uuid_v7(now, random_tail());
        let thumb_size = t.thumbnail.len() as u64;
        let thumb_dims = image_dims(&t.thumbnail).unwrap_or((0, 0));
        let marked = svc.storing(thumb_sha).await;
        storing.push(thumb_sha);
        marked.map_err(|e| Failure::Later(ErrorCode::UNAVAILABLE, MARK_RETRY_AFTER, e))?;
        svc.blobs
            .put_bytes(&thumb_sha, t.thumbnail.into())
            .await
            .map_err(|e| Failure::Internal(e.to_string()))?;
        info.width = t.width;
        info.height = t.height;
        info.thumbnail_id = Some(thumb_id);
        records.push(Media {
            info: Attachment {
                media_id: thumb_id,
                content_type: t.thumbnail_type.to_owned(),
                size: thumb_size,
                sha256: thumb_sha,
                thumbnail_id: None,
                width: thumb_dims.0,
                height: thumb_dims.1,
            },
            owner: user.to_owned(),
            created_ts: now,
            thumbnail_of: Some(media_id),
        });
    }
    svc.blobs
        .put_file(&sha256, &part)
        .await
        .map_err(|e| Failure::Internal(e.to_string()))?;
    records.insert(
        0,
        Media {
            info: info.clone(),
            owner: user.to_owned(),
            created_ts: now,
            thumbnail_of: None,
        },
    );
    svc.store.put_media(records, svc.config.user_quota).await?;
    Ok(info)
}

fn random_tail() -> [u8; 10] {
    let mut b = [0u8; 10];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("system randomness");
    b
}

/// Dimensions of an encoded thumbnail we just made.
fn image_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// Unused-upload housekeeping: part files older than the resume window are removed.
pub async fn expire_parts(svc: &MediaService) -> usize {
    let window = svc.config.resume_window;
    let mut removed = 0;
    let Ok(mut dir) = tokio::fs::read_dir(&svc.uploads).await else {
        return 0;
    };
    while let Ok(Some(entry)) = dir.next_entry().await {
        let old = entry
            .metadata()
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > window + Duration::from_secs(60));
        if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        for sha256 in [None, Some([0xab; 32])] {
            let m = Meta {
                user: "alice".into(),
                size: 123,
                sha256,
                started_ms: 99,
            };
            let back = Meta::decode(&m.encode()).unwrap();
            assert_eq!(
                (back.user, back.size, back.sha256, back.started_ms),
                ("alice".into(), 123, sha256, 99)
            );
        }
        assert!(Meta::decode("alice\nnot a number\n-\n1\n").is_none());
    }
}
