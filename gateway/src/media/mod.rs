//! Media: uploads and downloads, each on a QUIC stream of its own (docs/PROTOCOL.md, Media).
//!
//! - [`upload`] receives the bytes into a resumable part file, enforcing the size limit as they
//!   arrive and hashing them, then detects the type ([`detect`]), makes a thumbnail of images off
//!   the async threads ([`thumbnail`]), stores the blob content-addressed ([`blob`]) and the record
//!   in the store (`courier_store::Media`).
//! - [`download`] checks access in the store and streams a byte range of the blob.

pub mod blob;
pub mod detect;
pub mod download;
pub mod thumbnail;
pub mod upload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use courier_net::io::FrameReader;
use courier_store::Store;
use courier_wire::{ErrorCode, Frame};
use tokio::sync::Semaphore;

use blob::Blobs;

/// Largest frame accepted on a media stream (its first frame).
const MAX_MEDIA_FRAME: u32 = 4096;

/// How long a new stream may take to send its first frame.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Media settings.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Local directory for blobs (`blobs/`) and partial uploads (`uploads/`); None: a `media`
    /// directory beside the store's.
    pub dir: Option<PathBuf>,
    /// Largest upload, in bytes.
    pub max_upload: u64,
    /// Largest image (width x height) that is decoded for dimensions and a thumbnail.
    pub max_pixels: u64,
    /// How long an interrupted upload can be resumed.
    pub resume_window: Duration,
    /// Thumbnails made at once (each on a thread of its own that ends with the decode).
    pub thumbnail_workers: usize,
    /// Called on the decoding thread after each image decode, when its memory has been freed,
    /// to hand that memory back to the system: the binary, which chooses the allocator, passes
    /// mimalloc's `mi_collect`. None: the allocator returns it in its own time (mimalloc: on a
    /// later allocation a second or more after the free, so never while the node is idle).
    pub release_memory: Option<fn()>,
    /// Media streams one connection may have open at once.
    pub max_streams: u32,
    /// An upload stream that brings no bytes for this long is answered `Error(INVALID)` and
    /// stopped; what arrived is kept, so the client can resume it.
    pub stall_timeout: Duration,
    /// Where blobs live.
    pub blobs: BlobStoreConfig,
    /// Most bytes of media one user may have stored (uploads and thumbnails, until they
    /// expire with their messages), and uploading at once; None: no quota.
    pub user_quota: Option<u64>,
    /// Uploads are refused with `UNAVAILABLE` while the uploads directory's disk would have
    /// less free space than this after them; set above the store's floor, so uploads are
    /// refused before messages are. 0: no floor.
    pub min_free: u64,
}

/// Where media blobs live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BlobStoreConfig {
    /// `blobs/` in the media directory.
    #[default]
    Local,
    /// Another directory (`file:/path`): one that every node of a cluster mounts.
    Dir(PathBuf),
    /// An S3 bucket, or a bucket of an S3-compatible service at `endpoint`. Credentials and
    /// region come from the `AWS_*` environment variables. Needs the `s3` cargo feature.
    S3 {
        /// The bucket.
        bucket: String,
        /// The service's URL, for S3-compatible services (http allowed).
        endpoint: Option<String>,
    },
}

impl BlobStoreConfig {
    /// `local` or `s3://BUCKET` (with an optional endpoint for S3-compatible services).
    pub fn parse(text: &str, endpoint: Option<String>) -> Result<Self, String> {
        if text == "local" {
            if endpoint.is_some() {
                return Err("an S3 endpoint needs an s3:// blob store".into());
            }
            return Ok(Self::Local);
        }
        if let Some(dir) = text.strip_prefix("file:") {
            if endpoint.is_some() {
                return Err("an S3 endpoint needs an s3:// blob store".into());
            }
            if dir.is_empty() {
                return Err(
                    "blob store \"file:\": name a directory, e.g. file:/mnt/courier-blobs".into(),
                );
            }
            return Ok(Self::Dir(PathBuf::from(dir)));
        }
        match text.strip_prefix("s3://") {
            Some(bucket) if !bucket.is_empty() && !bucket.contains('/') => Ok(Self::S3 {
                bucket: bucket.to_owned(),
                endpoint,
            }),
            _ => Err(format!(
                "blob store {text:?}: expected `local`, `file:/DIR` or `s3://BUCKET`"
            )),
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_upload: 100 << 20,
            max_pixels: 50_000_000,
            resume_window: Duration::from_secs(3600),
            thumbnail_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            release_memory: None,
            max_streams: 8,
            stall_timeout: Duration::from_secs(30),
            blobs: BlobStoreConfig::Local,
            user_quota: Some(4 << 30),
            min_free: 1 << 30,
        }
    }
}

/// What the media streams share.
pub struct MediaService {
    pub(crate) store: Store,
    pub(crate) blobs: Blobs,
    pub(crate) uploads: PathBuf,
    pub(crate) config: MediaConfig,
    pub(crate) thumbnails: Semaphore,
    /// Blobs an upload is storing right now (it may have found the blob present and skipped
    /// writing it): the janitor must not delete these. Held across the janitor's check and
    /// delete, so an upload either registers first or finds the blob gone.
    pub(crate) storing: tokio::sync::Mutex<HashMap<[u8; 32], usize>>,
    /// In a cluster, the store's marks of the blobs this node's uploads are storing (so that
    /// no other node deletes them meanwhile), by blob.
    marks: std::sync::Mutex<HashMap<[u8; 32], Vec<u64>>>,
    /// Declared bytes of each user's uploads in progress (they count against the quota and the
    /// free-space floor before any record exists).
    pub(crate) receiving: std::sync::Mutex<HashMap<String, u64>>,
}

impl MediaService {
    /// Media in `dir` (blobs and partial uploads) for `store`.
    pub fn open(store: Store, dir: PathBuf, config: MediaConfig) -> anyhow::Result<Self> {
        let uploads = dir.join("uploads");
        std::fs::create_dir_all(&uploads)?;
        let blobs = match &config.blobs {
            BlobStoreConfig::Local => Blobs::local(&dir.join("blobs"))?,
            BlobStoreConfig::Dir(at) => Blobs::local(at)?,
            BlobStoreConfig::S3 { bucket, endpoint } => Blobs::s3(bucket, endpoint.as_deref())?,
        };
        Ok(Self {
            store,
            blobs,
            uploads,
            thumbnails: Semaphore::new(config.thumbnail_workers.max(1)),
            config,
            storing: tokio::sync::Mutex::default(),
            marks: std::sync::Mutex::default(),
            receiving: std::sync::Mutex::default(),
        })
    }

    /// Marks a blob as being stored by an upload until [`MediaService::stored`]: in this
    /// process, and in a cluster in the store too (waiting, up to [`MARK_WAIT`], for a deletion
    /// of the same bytes on another node to end). An error: it could not be marked, the
    /// upload must not go on (a call to `stored` still balances this one).
    pub(crate) async fn storing(&self, sha256: [u8; 32]) -> Result<(), String> {
        *self.storing.lock().await.entry(sha256).or_default() += 1;
        let deadline = tokio::time::Instant::now() + MARK_WAIT;
        loop {
            match self.store.reading(move |s| s.blob_storing(&sha256)).await {
                Ok(Some(0)) => return Ok(()), // not in a cluster: nothing recorded
                Ok(Some(token)) => {
                    let mut marks = self.marks.lock().expect("marks lock");
                    marks.entry(sha256).or_default().push(token);
                    return Ok(());
                }
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(None) => return Err("the same bytes are being deleted; try again".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The upload that called [`MediaService::storing`] finished (its records are committed,
    /// or it failed).
    pub(crate) async fn stored(&self, blobs: &[[u8; 32]]) {
        for b in blobs {
            let token = self
                .marks
                .lock()
                .expect("marks lock")
                .get_mut(b)
                .and_then(Vec::pop);
            if let Some(token) = token {
                let sha = *b;
                if let Err(e) = self
                    .store
                    .reading(move |s| s.blob_stored(&sha, token))
                    .await
                {
                    // The mark expires by itself; until then the blob is only kept longer.
                    tracing::warn!("clearing a blob's mark failed: {e}");
                }
            }
        }
        let mut s = self.storing.lock().await;
        for b in blobs {
            if let Some(n) = s.get_mut(b) {
                *n -= 1;
                if *n == 0 {
                    s.remove(b);
                }
            }
        }
    }

    /// Deletes a released blob unless an upload is storing it or a record uses it again (in a
    /// cluster: an upload on any node, checked and recorded in one transaction).
    pub(crate) async fn release(&self, sha256: [u8; 32]) {
        let storing = self.storing.lock().await;
        if storing.contains_key(&sha256) {
            return;
        }
        match self.store.reading(move |s| s.blob_deleting(&sha256)).await {
            Ok(Some(token)) => {
                if let Err(e) = self.blobs.delete(&sha256).await {
                    tracing::warn!("deleting blob {} failed: {e}", crate::util::hex(&sha256));
                }
                if let Err(e) = self
                    .store
                    .reading(move |s| s.blob_deleted(&sha256, token))
                    .await
                {
                    tracing::warn!("clearing a deletion's mark failed: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("blob check failed: {e}"),
        }
        drop(storing);
    }
}

/// Longest wait of an upload for a deletion of the same bytes on another node to end.
const MARK_WAIT: Duration = Duration::from_secs(5);

/// How often expired partial uploads are looked for.
const PART_SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Deletes blobs the retention sweep released, and partial uploads past the resume window,
/// until the gateway shuts down.
pub(crate) async fn janitor(
    svc: Arc<MediaService>,
    mut released: tokio::sync::mpsc::UnboundedReceiver<[u8; 32]>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut parts = tokio::time::interval(PART_SWEEP_EVERY);
    loop {
        tokio::select! {
            sha = released.recv() => match sha {
                Some(sha) => svc.release(sha).await,
                None => return,
            },
            _ = parts.tick() => {
                let n = upload::expire_parts(&svc).await;
                if n > 0 {
                    tracing::info!("removed {n} expired partial upload files");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The error frame for a request on a media stream (bounded like every error answer).
pub(crate) use crate::session::error_frame as error;

/// Serves one media stream opened by `user` on a session of protocol `version`: reads its first frame and runs the upload or the
/// download it asks for. Anything else is refused with `UNSUPPORTED` on the stream.
pub async fn serve_stream(
    mut send: courier_net::quic::SendStream,
    recv: courier_net::quic::RecvStream,
    (user, version): (String, u16),
    svc: Arc<MediaService>,
) {
    let mut reader = FrameReader::from_clients(recv, MAX_MEDIA_FRAME);
    let first = match tokio::time::timeout(FIRST_FRAME_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(f))) => f,
        Ok(Err(courier_net::io::ReadError::Decode(e))) => {
            let _ = send.write_all(&error(0, e.code(), e.to_string())).await;
            let _ = send.finish();
            return;
        }
        _ => {
            let _ = send.reset(ErrorCode::INVALID.0.into());
            return;
        }
    };
    match first {
        Frame::Upload(u) => {
            let (recv, leftover) = reader.into_parts();
            upload::serve(u, leftover, recv, send, (&user, version), &svc).await;
        }
        Frame::Download(d) => download::serve(d, send, &user, &svc).await,
        other => {
            let id = other.request_id().unwrap_or(0);
            let msg = format!(
                "frame kind {:#04x} cannot open a media stream",
                other.kind()
            );
            let _ = send
                .write_all(&error(id, ErrorCode::UNSUPPORTED, msg))
                .await;
            let _ = send.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_store_settings_parse() {
        assert_eq!(
            BlobStoreConfig::parse("local", None),
            Ok(BlobStoreConfig::Local)
        );
        assert_eq!(
            BlobStoreConfig::parse("s3://media", Some("http://127.0.0.1:9000".into())),
            Ok(BlobStoreConfig::S3 {
                bucket: "media".into(),
                endpoint: Some("http://127.0.0.1:9000".into())
            })
        );
        assert_eq!(
            BlobStoreConfig::parse("file:/mnt/blobs", None),
            Ok(BlobStoreConfig::Dir("/mnt/blobs".into()))
        );
        assert!(BlobStoreConfig::parse("file:/mnt/blobs", Some("http://x".into())).is_err());
        for bad in ["s3://", "s3://a/b", "gs://x", "", "file:"] {
            assert!(BlobStoreConfig::parse(bad, None).is_err(), "{bad}");
        }
        assert!(BlobStoreConfig::parse("local", Some("http://x".into())).is_err());
    }
}
