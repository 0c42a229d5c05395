//! Uploads and downloads, each on a QUIC stream of its own so that chat traffic on the control
//! stream never waits behind them (docs/PROTOCOL.md, Media).

use bytes::{Bytes, BytesMut};
use courier_wire::frame::{Attachment, Download, Upload};
use courier_wire::{ErrorCode, Frame};

use crate::error::Closer;
use crate::{Client, ClientError};
use courier_net::io::{FrameReader, ReadError};

/// Largest frame a media stream carries.
const MAX_MEDIA_FRAME: u32 = 64 * 1024;

/// Bytes written to an upload stream at a time.
const WRITE_PIECE: usize = 256 * 1024;

/// What to upload besides the bytes.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// The content type the app believes (the server detects its own).
    pub content_type: String,
    /// The SHA-256 the server must verify, if known.
    pub sha256: Option<[u8; 32]>,
    /// Resume this upload (id and the offset the server last confirmed) instead of starting one.
    pub resume: Option<(u64, u64)>,
}

/// An upload in progress, as the server confirmed it: resume from here after an interruption.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadState {
    /// The upload's id.
    pub upload: u64,
    /// Bytes the server has safely stored.
    pub confirmed: u64,
}

fn read_err(e: ReadError) -> ClientError {
    match e {
        ReadError::Decode(d) => ClientError::Decode(d),
        ReadError::Stream(s) => ClientError::stream(&s),
    }
}

impl Client {
    /// Uploads `data` on a stream of its own and returns the stored media (what a message
    /// attaches). `state` is kept up to date with what the server confirmed, so that after an
    /// interruption the upload can be resumed with [`UploadOptions::resume`]. A resume the
    /// server does not know (`NOT_FOUND`: the resume window passed, or the device reconnected
    /// to another node of a cluster, where the partial upload is not) starts the upload over.
    pub async fn upload(
        &self,
        data: Bytes,
        options: UploadOptions,
        state: &mut UploadState,
    ) -> Result<Attachment, ClientError> {
        let fresh = UploadOptions {
            resume: None,
            ..options.clone()
        };
        match self.upload_once(data.clone(), options.clone(), state).await {
            Err(ClientError::Server { code, .. })
                if code == ErrorCode::NOT_FOUND && options.resume.is_some() =>
            {
                *state = UploadState::default();
                self.upload_once(data, fresh, state).await
            }
            r => r,
        }
    }

    async fn upload_once(
        &self,
        data: Bytes,
        options: UploadOptions,
        state: &mut UploadState,
    ) -> Result<Attachment, ClientError> {
        let (resume, offset) = options.resume.unwrap_or((0, 0));
        let offset_len = usize::try_from(offset).unwrap_or(usize::MAX);
        if offset_len > data.len() {
            return Err(ClientError::TooLarge(
                "resume offset beyond the data".into(),
            ));
        }
        let (mut send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| ClientError::connection(&e))?;
        let request_id = 1;
        let first = Frame::Upload(Upload {
            request_id,
            size: data.len() as u64,
            content_type: options.content_type,
            sha256: options.sha256,
            resume,
            offset,
        });
        send.write_all(&first.to_bytes())
            .await
            .map_err(|e| ClientError::write(&e))?;
        let body = data.slice(offset_len..);
        let writing = async move {
            for piece in body.chunks(WRITE_PIECE) {
                // The server stopping the stream (a refusal) ends the writing; its answer says why.
                if send.write_all(piece).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
            let _ = send.stopped().await;
        };
        let mut reader = FrameReader::new(recv, MAX_MEDIA_FRAME);
        let reading = async {
            loop {
                match reader.next().await.map_err(read_err)? {
                    Some(Frame::UploadProgress(p)) => {
                        *state = UploadState {
                            upload: p.upload,
                            confirmed: p.offset,
                        };
                    }
                    Some(Frame::MediaInfo(m)) => return Ok(m.media),
                    Some(f @ (Frame::ErrorFrame(_) | Frame::RetryLater(_))) => {
                        return Err(ClientError::from_refusal(&f).expect("a refusal"))
                    }
                    Some(other) => return Err(ClientError::Unexpected(other.kind())),
                    None => return Err(ClientError::closed(Closer::Server, "upload stream ended")),
                }
            }
        };
        tokio::pin!(writing);
        tokio::pin!(reading);
        let mut written = false;
        loop {
            tokio::select! {
                () = &mut writing, if !written => written = true,
                answer = &mut reading => return answer,
            }
        }
    }

    /// Downloads `length` bytes (0: to the end) of media `media_id` from `offset`, on a stream of
    /// its own. Returns the media's description and the bytes.
    pub async fn download(
        &self,
        media_id: [u8; 16],
        offset: u64,
        length: u64,
    ) -> Result<(Attachment, Bytes), ClientError> {
        let (mut send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| ClientError::connection(&e))?;
        let first = Frame::Download(Download {
            request_id: 1,
            media_id,
            offset,
            length,
        });
        send.write_all(&first.to_bytes())
            .await
            .map_err(|e| ClientError::write(&e))?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv, MAX_MEDIA_FRAME);
        let start = match reader.next().await.map_err(read_err)? {
            Some(Frame::DownloadStart(s)) => s,
            Some(f @ (Frame::ErrorFrame(_) | Frame::RetryLater(_))) => {
                return Err(ClientError::from_refusal(&f).expect("a refusal"))
            }
            Some(other) => return Err(ClientError::Unexpected(other.kind())),
            None => return Err(ClientError::closed(Closer::Server, "download stream ended")),
        };
        let (mut recv, first_bytes) = reader.into_parts();
        let want = usize::try_from(start.length)
            .map_err(|_| ClientError::TooLarge("download larger than memory".into()))?;
        let mut out = BytesMut::with_capacity(want);
        out.extend_from_slice(&first_bytes);
        while out.len() < want {
            match recv.read_chunk(want - out.len(), true).await {
                Ok(Some(c)) => out.extend_from_slice(&c.bytes),
                Ok(None) => break,
                Err(e) => return Err(ClientError::stream(&e)),
            }
        }
        if out.len() != want {
            return Err(ClientError::closed(
                Closer::Server,
                format!("download ended after {} of {want} bytes", out.len()),
            ));
        }
        Ok((start.media, out.freeze()))
    }
}
