//! The two halves of a bidirectional stream on a [`super::Connection`].

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::{ClosedStream, ReadError, StoppedError, VarInt, WriteError};
use quinn_proto::{self as proto, Chunk, ConnectionHandle, FinishError, StreamId};

use super::Shared;

/// The sending half. Dropped unfinished, it is finished (or reset, if the peer stopped it).
pub struct SendStream {
    shared: Arc<Shared>,
    ch: ConnectionHandle,
    id: StreamId,
}

impl SendStream {
    pub(super) fn new(shared: Arc<Shared>, ch: ConnectionHandle, id: StreamId) -> Self {
        Self { shared, ch, id }
    }

    /// Runs a write on the stream: `Pending` (with the waker kept) while flow control blocks it.
    fn poll_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut proto::SendStream<'_>) -> Result<R, proto::WriteError>,
    ) -> Poll<Result<R, WriteError>> {
        let mut state = self.shared.lock();
        let conn = state.conn(self.ch);
        if let Some(e) = &conn.error {
            return Poll::Ready(Err(WriteError::ConnectionLost(e.clone())));
        }
        let result = match write(&mut conn.inner.send_stream(self.id)) {
            Ok(r) => r,
            Err(proto::WriteError::Blocked) => {
                conn.writers.insert(self.id, cx);
                return Poll::Pending;
            }
            Err(proto::WriteError::Stopped(code)) => {
                return Poll::Ready(Err(WriteError::Stopped(code)))
            }
            Err(proto::WriteError::ClosedStream) => {
                return Poll::Ready(Err(WriteError::ClosedStream))
            }
        };
        state.touch(self.ch);
        Poll::Ready(Ok(result))
    }

    /// Writes all of `buf`, waiting for flow control as needed.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), WriteError> {
        while !buf.is_empty() {
            let n = poll_fn(|cx| self.poll_write(cx, |s| s.write(buf))).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Writes all of `chunks` without copying them, waiting for flow control as needed.
    /// Written chunks are left empty.
    pub async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), WriteError> {
        let mut first = 0;
        while first < chunks.len() {
            if chunks[first].is_empty() {
                first += 1;
                continue;
            }
            let rest = &mut chunks[first..];
            let written = poll_fn(|cx| self.poll_write(cx, |s| s.write_chunks(rest))).await?;
            first += written.chunks;
        }
        Ok(())
    }

    /// Writes `chunk` without copying it.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), WriteError> {
        self.write_all_chunks(&mut [chunk]).await
    }

    /// No more data: the peer reads to the end of what was written.
    pub fn finish(&mut self) -> Result<(), ClosedStream> {
        let mut state = self.shared.lock();
        match state.conn(self.ch).inner.send_stream(self.id).finish() {
            Ok(()) => {
                state.touch(self.ch);
                Ok(())
            }
            Err(FinishError::ClosedStream) => Err(ClosedStream::default()),
            // The peer does not want it any more; `stopped` says so to whoever asks.
            Err(FinishError::Stopped(_)) => Ok(()),
        }
    }

    /// Abandons the stream with `code`; what was written may not be delivered.
    pub fn reset(&mut self, code: VarInt) -> Result<(), ClosedStream> {
        let mut state = self.shared.lock();
        state.conn(self.ch).inner.send_stream(self.id).reset(code)?;
        state.touch(self.ch);
        Ok(())
    }

    /// Waits until the peer has everything (after [`Self::finish`]: `Ok(None)`) or stopped the
    /// stream (`Ok(Some(code))`).
    pub async fn stopped(&mut self) -> Result<Option<VarInt>, StoppedError> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            let conn = state.conn(self.ch);
            match conn.inner.send_stream(self.id).stopped() {
                // Finished and acknowledged: quinn-proto forgot the stream.
                Err(ClosedStream { .. }) => Poll::Ready(Ok(None)),
                Ok(Some(code)) => Poll::Ready(Ok(Some(code))),
                Ok(None) => {
                    if let Some(e) = &conn.error {
                        return Poll::Ready(Err(StoppedError::ConnectionLost(e.clone())));
                    }
                    conn.stopped.insert(self.id, cx);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let conn = state.conn(self.ch);
        conn.writers.remove(self.id);
        conn.stopped.remove(self.id);
        if conn.error.is_none() {
            let mut stream = conn.inner.send_stream(self.id);
            match stream.finish() {
                Ok(()) => state.touch(self.ch),
                Err(FinishError::Stopped(code)) => {
                    if stream.reset(code).is_ok() {
                        state.touch(self.ch);
                    }
                }
                Err(FinishError::ClosedStream) => {}
            }
        }
        state.unref(self.ch);
    }
}

/// The receiving half. Dropped before its end, it is stopped with code 0.
pub struct RecvStream {
    shared: Arc<Shared>,
    ch: ConnectionHandle,
    id: StreamId,
    /// The end was read, or the stream was stopped or reset.
    done: bool,
    reset: Option<VarInt>,
}

impl RecvStream {
    pub(super) fn new(shared: Arc<Shared>, ch: ConnectionHandle, id: StreamId) -> Self {
        Self {
            shared,
            ch,
            id,
            done: false,
            reset: None,
        }
    }

    /// The next chunk of at most `max` bytes (in order if `ordered`), or `None` at the end.
    pub async fn read_chunk(
        &mut self,
        max: usize,
        ordered: bool,
    ) -> Result<Option<Chunk>, ReadError> {
        poll_fn(|cx| self.poll_read_chunk(cx, max, ordered)).await
    }

    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        ordered: bool,
    ) -> Poll<Result<Option<Chunk>, ReadError>> {
        if let Some(code) = self.reset {
            return Poll::Ready(Err(ReadError::Reset(code)));
        }
        if self.done {
            return Poll::Ready(Ok(None));
        }
        let mut state = self.shared.lock();
        let conn = state.conn(self.ch);
        let mut recv = conn.inner.recv_stream(self.id);
        let mut chunks = match recv.read(ordered) {
            Ok(c) => c,
            Err(proto::ReadableError::ClosedStream) => {
                return Poll::Ready(Err(ReadError::ClosedStream))
            }
            Err(proto::ReadableError::IllegalOrderedRead) => {
                return Poll::Ready(Err(ReadError::IllegalOrderedRead))
            }
        };
        let result = chunks.next(max);
        let transmit = chunks.finalize().should_transmit();
        let poll = match result {
            Ok(Some(chunk)) => Poll::Ready(Ok(Some(chunk))),
            Ok(None) => {
                self.done = true;
                Poll::Ready(Ok(None))
            }
            Err(proto::ReadError::Reset(code)) => {
                self.done = true;
                self.reset = Some(code);
                Poll::Ready(Err(ReadError::Reset(code)))
            }
            Err(proto::ReadError::Blocked) => {
                if let Some(e) = &conn.error {
                    Poll::Ready(Err(ReadError::ConnectionLost(e.clone())))
                } else {
                    conn.readers.insert(self.id, cx);
                    Poll::Pending
                }
            }
        };
        if transmit {
            // Flow-control credit for the peer.
            state.touch(self.ch);
        }
        poll
    }

    /// Tells the peer to stop sending, with `code`.
    pub fn stop(&mut self, code: VarInt) -> Result<(), ClosedStream> {
        let mut state = self.shared.lock();
        state.conn(self.ch).inner.recv_stream(self.id).stop(code)?;
        state.touch(self.ch);
        self.done = true;
        Ok(())
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let conn = state.conn(self.ch);
        conn.readers.remove(self.id);
        if !self.done && conn.error.is_none() {
            // Already closed streams are fine.
            if conn.inner.recv_stream(self.id).stop(0u32.into()).is_ok() {
                state.touch(self.ch);
            }
        }
        state.unref(self.ch);
    }
}

impl std::fmt::Debug for SendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendStream").field("id", &self.id).finish()
    }
}

impl std::fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvStream").field("id", &self.id).finish()
    }
}
