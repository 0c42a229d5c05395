//! Serving a download: access checked in the store (the uploader, or a member of a chat where a
//! message attaches the media), then the requested byte range streamed from the blob store in
//! pieces, so a large download never sits in memory whole.

use courier_store::StoreError;
use courier_wire::frame::{Download, DownloadStart};
use courier_wire::{ErrorCode, Frame};

use super::{error, MediaService};

/// Bytes read from the blob store at a time.
const PIECE: u64 = 1 << 20;

/// Runs one download stream.
pub(crate) async fn serve(
    req: Download,
    mut send: courier_net::quic::SendStream,
    user: &str,
    svc: &MediaService,
) {
    let id = req.request_id;
    let (who, media_id) = (user.to_owned(), req.media_id);
    let media = match svc
        .store
        .reading(move |s| s.media_for(&who, &media_id))
        .await
    {
        Ok(m) => m,
        Err(StoreError::Forbidden(_)) => {
            let msg = "no such media, or not shared with you";
            let _ = send.write_all(&error(id, ErrorCode::FORBIDDEN, msg)).await;
            let _ = send.finish();
            return;
        }
        Err(e) => {
            let _ = send.write_all(&error(id, e.code(), e.to_string())).await;
            let _ = send.finish();
            return;
        }
    };
    let size = media.info.size;
    if req.offset > size {
        let msg = format!("offset {} is beyond the media's {size} bytes", req.offset);
        let _ = send.write_all(&error(id, ErrorCode::INVALID, msg)).await;
        let _ = send.finish();
        return;
    }
    let rest = size - req.offset;
    let length = if req.length == 0 {
        rest
    } else {
        req.length.min(rest)
    };
    let sha256 = media.info.sha256;
    let start = Frame::DownloadStart(DownloadStart {
        request_id: id,
        media: media.info,
        offset: req.offset,
        length,
    });
    if send.write_all(&start.to_bytes()).await.is_err() {
        return;
    }
    let end = req.offset + length;
    let mut at = req.offset;
    while at < end {
        let to = (at + PIECE).min(end);
        let bytes = match svc.blobs.get_range(&sha256, at..to).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("blob read for a download failed: {e}");
                let _ = send.reset(ErrorCode::INTERNAL.0.into());
                return;
            }
        };
        if send.write_chunk(bytes).await.is_err() {
            return;
        }
        at = to;
    }
    let _ = send.finish();
}
