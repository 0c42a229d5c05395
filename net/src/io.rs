//! Framed I/O on QUIC streams, shared by the SDK and the gateway.
//!
//! [`FrameReader`] pulls bytes from a receive stream into a [`FrameDecoder`]. [`spawn_writer`]
//! owns a send stream and drains a bounded queue of encoded frames into it ([`Outbound`],
//! see [`crate::outbound`]), taking every frame that is already queued into one vectored
//! write, so a burst of small frames costs one write.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use courier_wire::{DecodeError, Frame, FrameDecoder};
use quinn::{Chunk, ClosedStream, StoppedError, VarInt, WriteError};

pub use crate::outbound::{Closed, Home, Outbound, PushError, Receiver, Slot};

/// Why reading a frame stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer sent bytes that are not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The stream or connection failed (quinn's reason, for callers that tell who ended it).
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadError),
}

/// The receiving half of a QUIC stream: quinn's, or one of the gateway's endpoint loop
/// ([`crate::quic`]).
pub trait ChunkRecv: Send + 'static {
    /// The next chunk of at most `max` bytes, or `None` at the stream's end.
    fn read_chunk(
        &mut self,
        max: usize,
        ordered: bool,
    ) -> impl Future<Output = Result<Option<Chunk>, quinn::ReadError>> + Send;
}

/// The sending half of a QUIC stream: quinn's, or one of [`crate::quic`].
pub trait ChunkSend: Send + 'static {
    /// Writes every chunk, waiting for flow control.
    fn write_all_chunks(
        &mut self,
        chunks: &mut [Bytes],
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// No more data.
    fn finish(&mut self) -> Result<(), ClosedStream>;
    /// Until the peer has it all (`None`) or stopped the stream (its code).
    fn stopped(&mut self) -> impl Future<Output = Result<Option<VarInt>, StoppedError>> + Send;
}

/// Both traits for a pair of stream types whose inherent methods have the traits' names.
macro_rules! chunk_streams {
    ($recv:ty, $send:ty) => {
        impl ChunkRecv for $recv {
            fn read_chunk(
                &mut self,
                max: usize,
                ordered: bool,
            ) -> impl Future<Output = Result<Option<Chunk>, quinn::ReadError>> + Send {
                Self::read_chunk(self, max, ordered)
            }
        }

        impl ChunkSend for $send {
            fn write_all_chunks(
                &mut self,
                chunks: &mut [Bytes],
            ) -> impl Future<Output = Result<(), WriteError>> + Send {
                Self::write_all_chunks(self, chunks)
            }
            fn finish(&mut self) -> Result<(), ClosedStream> {
                Self::finish(self)
            }
            fn stopped(
                &mut self,
            ) -> impl Future<Output = Result<Option<VarInt>, StoppedError>> + Send {
                Self::stopped(self)
            }
        }
    };
}

chunk_streams!(quinn::RecvStream, quinn::SendStream);
chunk_streams!(crate::quic::RecvStream, crate::quic::SendStream);

/// Reads whole frames from a QUIC receive stream.
///
/// It takes the transport's own received chunks (no copy when a chunk holds whole frames) and
/// keeps no buffer between frames: an idle connection holds no read memory. Only a frame split
/// across chunks is gathered into a buffer of its own size.
pub struct FrameReader<R = quinn::RecvStream> {
    recv: R,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl<R: ChunkRecv> FrameReader<R> {
    /// A reader refusing frames over `max_frame` bytes.
    pub fn new(recv: R, max_frame: u32) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(max_frame),
        }
    }

    /// A server's reader: frames of server kinds become [`Frame::Unknown`]
    /// ([`FrameDecoder::client_kinds_only`]).
    pub fn from_clients(recv: R, max_frame: u32) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(max_frame).client_kinds_only(),
        }
    }

    /// The stream and whatever bytes after the last frame were already received (the start of
    /// raw data that follows a frame, as on media streams).
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.recv, self.buf)
    }

    /// The next frame, or `Ok(None)` when the peer finished the stream cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.is_empty() {
                // Let go of the consumed chunk (and any capacity) before waiting.
                self.buf = BytesMut::new();
            }
            match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) if self.buf.is_empty() => self.buf = BytesMut::from(chunk.bytes),
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => return Err(ReadError::Decode(DecodeError::Truncated)),
                Err(e) => return Err(ReadError::Stream(e)),
            }
        }
    }
}

/// Queued after a connection's last frame: the writer finishes the stream there.
pub const LAST_WORDS_END: Bytes = Bytes::new();

/// Most frames taken into one vectored write.
const WRITE_BATCH: usize = 64;

/// Starts a task that writes every queued frame to `send`, coalescing queued frames into one
/// write, and finishes the stream once every sender is dropped, or at the first empty chunk
/// ([`LAST_WORDS_END`]): whatever is queued after it is never written, so the frame before it
/// is the last the peer gets. Returns the queue's sender.
pub fn spawn_writer(send: impl ChunkSend, depth: usize) -> Outbound {
    spawn_writer_with_handle(send, depth, usize::MAX).0
}

/// [`spawn_writer`] with a byte limit too (see [`Outbound`]), also returning the task, which
/// ends once the queue is drained, the stream finished and its data acknowledged by the peer
/// (or the stream failed).
pub fn spawn_writer_with_handle(
    mut send: impl ChunkSend,
    depth: usize,
    max_bytes: usize,
) -> (Outbound, tokio::task::JoinHandle<()>) {
    let (out, mut rx) = Outbound::new(depth, max_bytes, Home::current());
    let task = tokio::spawn(async move {
        let mut chunks: Vec<Bytes> = Vec::new();
        while rx.recv_many(&mut chunks, WRITE_BATCH).await > 0 {
            let taken: usize = chunks.iter().map(Bytes::len).sum();
            let end = chunks.iter().position(Bytes::is_empty);
            if let Some(at) = end {
                chunks.truncate(at);
            }
            let written = send.write_all_chunks(&mut chunks).await;
            let stop = written.is_err() || end.is_some();
            if stop {
                // Before the wake-up: a producer woken now must see the queue closed.
                rx.close();
            }
            rx.written(taken);
            if written.is_err() {
                return;
            }
            chunks.clear();
            if stop {
                break;
            }
        }
        if send.finish().is_ok() {
            let _ = send.stopped().await;
        }
    });
    (out, task)
}
