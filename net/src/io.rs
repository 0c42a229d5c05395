//! Framed I/O on QUIC streams, shared by the SDK and the gateway.
//!
//! [`FrameReader`] pulls bytes from a receive stream into a [`FrameDecoder`]. [`spawn_writer`]
//! owns a send stream and drains a bounded queue of encoded frames into it, taking every frame
//! that is already queued into one vectored write, so a burst of small frames costs one write.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use courier_wire::{DecodeError, Frame, FrameDecoder};
use tokio::sync::{mpsc, Notify};

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

/// Reads whole frames from a QUIC receive stream.
///
/// It takes the transport's own received chunks (no copy when a chunk holds whole frames) and
/// keeps no buffer between frames: an idle connection holds no read memory. Only a frame split
/// across chunks is gathered into a buffer of its own size.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// A reader refusing frames over `max_frame` bytes.
    pub fn new(recv: quinn::RecvStream, max_frame: u32) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(max_frame),
        }
    }

    /// A server's reader: frames of server kinds become [`Frame::Unknown`]
    /// ([`FrameDecoder::client_kinds_only`]).
    pub fn from_clients(recv: quinn::RecvStream, max_frame: u32) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(max_frame).client_kinds_only(),
        }
    }

    /// The stream and whatever bytes after the last frame were already received (the start of
    /// raw data that follows a frame, as on media streams).
    pub fn into_parts(self) -> (quinn::RecvStream, BytesMut) {
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

/// The byte budget of one outbound queue: what is queued now, the most it may hold, and a
/// wake-up for producers waiting for room.
struct Room {
    queued: AtomicUsize,
    max: usize,
    drained: Notify,
}

/// The queue is full (in frames or in bytes): the peer does not read fast enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// No room now.
    Full,
    /// The writer is gone: the connection is closing.
    Closed,
}

/// The writer is gone: the connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A connection's outbound queue of encoded frames, bounded in frames and in bytes: a peer
/// that does not read holds at most the byte limit (plus one frame, and the small answers
/// reserved with [`Outbound::reserve`]), however large the frames. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Bytes>,
    room: Arc<Room>,
}

impl Outbound {
    fn new(depth: usize, max_bytes: usize) -> (Self, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(depth);
        let room = Arc::new(Room {
            queued: AtomicUsize::new(0),
            max: max_bytes,
            drained: Notify::new(),
        });
        (Self { tx, room }, rx)
    }

    /// A queue of `depth` frames read by the caller instead of a writer task (session tests,
    /// in-process peers). Nothing credits bytes back, so it has no byte limit.
    pub fn channel(depth: usize) -> (Self, mpsc::Receiver<Bytes>) {
        Self::new(depth, usize::MAX)
    }

    /// Queues `frame`, waiting while the queue is full (in frames or bytes). A frame larger
    /// than the byte limit goes once the queue is empty.
    pub async fn send(&self, frame: Bytes) -> Result<(), Closed> {
        let len = frame.len();
        loop {
            let drained = self.room.drained.notified();
            let queued = self.room.queued.load(Ordering::Acquire);
            if queued == 0 || queued.saturating_add(len) <= self.room.max {
                break;
            }
            if self.tx.is_closed() {
                return Err(Closed);
            }
            drained.await;
        }
        self.room.queued.fetch_add(len, Ordering::AcqRel);
        if self.tx.send(frame).await.is_err() {
            self.room.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(Closed);
        }
        Ok(())
    }

    /// Queues `frame` now, or says why not.
    pub fn try_send(&self, frame: Bytes) -> Result<(), PushError> {
        let len = frame.len();
        let queued = self.room.queued.load(Ordering::Acquire);
        if queued != 0 && queued.saturating_add(len) > self.room.max {
            return Err(PushError::Full);
        }
        self.room.queued.fetch_add(len, Ordering::AcqRel);
        self.tx.try_send(frame).map_err(|e| {
            self.room.queued.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => PushError::Full,
                mpsc::error::TrySendError::Closed(_) => PushError::Closed,
            }
        })
    }

    /// A place in the queue for one small answer (a `SendOk` or a bounded `Error`) that
    /// another thread fills later without waiting.
    pub async fn reserve(&self) -> Result<Slot, Closed> {
        let permit = self.tx.clone().reserve_owned().await.map_err(|_| Closed)?;
        Ok(Slot {
            permit,
            room: self.room.clone(),
        })
    }
}

/// A reserved place in an [`Outbound`] queue.
pub struct Slot {
    permit: mpsc::OwnedPermit<Bytes>,
    room: Arc<Room>,
}

impl Slot {
    /// Fills the place; never waits.
    pub fn send(self, frame: Bytes) {
        self.room.queued.fetch_add(frame.len(), Ordering::AcqRel);
        self.permit.send(frame);
    }
}

/// Starts a task that writes every queued frame to `send`, coalescing queued frames into one
/// write, and finishes the stream once every sender is dropped, or at the first empty chunk
/// ([`LAST_WORDS_END`]): whatever is queued after it is never written, so the frame before it
/// is the last the peer gets. Returns the queue's sender.
pub fn spawn_writer(send: quinn::SendStream, depth: usize) -> Outbound {
    spawn_writer_with_handle(send, depth, usize::MAX).0
}

/// [`spawn_writer`] with a byte limit too (see [`Outbound`]), also returning the task, which
/// ends once the queue is drained, the stream finished and its data acknowledged by the peer
/// (or the stream failed).
pub fn spawn_writer_with_handle(
    mut send: quinn::SendStream,
    depth: usize,
    max_bytes: usize,
) -> (Outbound, tokio::task::JoinHandle<()>) {
    let (out, mut rx) = Outbound::new(depth, max_bytes);
    let room = out.room.clone();
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
            room.queued.fetch_sub(taken, Ordering::AcqRel);
            room.drained.notify_waiters();
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
