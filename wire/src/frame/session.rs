//! Session frames: the handshake, liveness, errors and shutdown.

use bytes::Bytes;

use crate::codec::wire_struct;
use crate::ErrorCode;

wire_struct! {
    /// Client to server, first frame on the control stream: protocol version and bearer token.
    pub struct Hello {
        /// Echoed in the answer.
        pub request_id: u32,
        /// The protocol version the client speaks.
        pub version: u16,
        /// The bearer token (see `docs/PROTOCOL.md`, Authentication).
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::bytes()"))]
        pub token: Bytes,
    }
}

wire_struct! {
    /// Server to client: the session is open; who the client is and the limits it must respect.
    pub struct Welcome {
        /// The Hello's request id.
        pub request_id: u32,
        /// The protocol version the server will speak on this connection.
        pub version: u16,
        /// The authenticated user.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub user: String,
        /// The authenticated device.
        pub device: u32,
        /// The server's clock, milliseconds since the Unix epoch.
        pub server_time_ms: u64,
        /// Largest frame (header and body) the server accepts.
        pub max_frame: u32,
        /// Largest message body the server accepts.
        pub max_body: u32,
        /// Most `Send`s the client may have unanswered at once.
        pub max_inflight: u32,
    }
}

wire_struct! {
    /// Client to server: liveness probe.
    pub struct Ping {
        /// Echoed in the answer.
        pub request_id: u32,
        /// Echoed in the answer.
        pub nonce: u64,
    }
}

wire_struct! {
    /// Server to client: answer to [`Ping`].
    pub struct Pong {
        /// The Ping's request id.
        pub request_id: u32,
        /// The Ping's nonce.
        pub nonce: u64,
    }
}

wire_struct! {
    /// Server to client: a request failed. The connection goes on unless the code says otherwise.
    pub struct ErrorFrame {
        /// The failed request's id (0 when the failure belongs to no request).
        pub request_id: u32,
        /// What went wrong.
        pub code: ErrorCode,
        /// Human-readable detail.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub message: String,
    }
}

wire_struct! {
    /// Server to client (protocol version 2 and later): a request was refused for now, and may
    /// be sent again after `retry_after_ms`. Sent instead of [`ErrorFrame`] for refusals that a
    /// wait cures (`RATE_LIMITED`, `OVERLOADED`, `UNAVAILABLE`); version 1 sessions get an
    /// `ErrorFrame` whose message says the wait in words.
    pub struct RetryLater {
        /// The refused request's id (0 when the refusal belongs to no request).
        pub request_id: u32,
        /// Why.
        pub code: ErrorCode,
        /// Milliseconds to wait before sending the request again.
        pub retry_after_ms: u32,
        /// Human-readable detail.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub message: String,
    }
}

wire_struct! {
    /// Server to client: a generic success answer for requests that return nothing else.
    pub struct Done {
        /// The request's id.
        pub request_id: u32,
    }
}

wire_struct! {
    /// Server to client: the server is going away; reconnect (possibly elsewhere) after a pause.
    pub struct GoAway {
        /// Why (usually `SHUTTING_DOWN`).
        pub code: ErrorCode,
        /// Human-readable detail.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub reason: String,
    }
}

impl ErrorFrame {
    /// An error answer whose message is cut to [`crate::text::MAX_MESSAGE`] bytes, so the frame
    /// always fits a peer's frame limit whatever the message echoes.
    pub fn new(request_id: u32, code: ErrorCode, message: &str) -> Self {
        Self {
            request_id,
            code,
            message: crate::text::truncate(message, crate::text::MAX_MESSAGE).to_owned(),
        }
    }
}

impl RetryLater {
    /// A refusal whose message is cut to [`crate::text::MAX_MESSAGE`] bytes; waits longer than
    /// `u32::MAX` milliseconds are sent as `u32::MAX`.
    pub fn new(
        request_id: u32,
        code: ErrorCode,
        retry_after: std::time::Duration,
        message: &str,
    ) -> Self {
        Self {
            request_id,
            code,
            retry_after_ms: u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX),
            message: crate::text::truncate(message, crate::text::MAX_MESSAGE).to_owned(),
        }
    }

    /// How long to wait.
    pub fn retry_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.retry_after_ms.into())
    }
}

impl GoAway {
    /// A GoAway whose reason is cut to [`crate::text::MAX_MESSAGE`] bytes.
    pub fn new(code: ErrorCode, reason: &str) -> Self {
        Self {
            code,
            reason: crate::text::truncate(reason, crate::text::MAX_MESSAGE).to_owned(),
        }
    }
}

impl crate::Codec for ErrorCode {
    fn encode<B: bytes::BufMut>(&self, buf: &mut B) {
        self.0.encode(buf);
    }
    fn decode<B: bytes::Buf>(buf: &mut B) -> Result<Self, crate::DecodeError> {
        u16::decode(buf).map(Self)
    }
    fn encoded_len(&self) -> usize {
        2
    }
}

#[cfg(test)]
impl proptest::arbitrary::Arbitrary for ErrorCode {
    type Parameters = ();
    type Strategy = proptest::strategy::Map<proptest::num::u16::Any, fn(u16) -> Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        use proptest::strategy::Strategy;
        proptest::num::u16::ANY.prop_map(Self)
    }
}
