//! Media frames. Each upload and each download has a bidirectional QUIC stream of its own, so a
//! large transfer never waits behind chat frames or holds them up; these frames open such a
//! stream and report on it. The bytes of the media travel raw on the stream after the frame.

use crate::codec::wire_struct;
use crate::frame::Attachment;

wire_struct! {
    /// Client to server, first frame of a new stream: the media's bytes follow, up to `size`,
    /// then the client finishes the stream. Answered on the same stream with [`UploadProgress`]
    /// as bytes are safely stored, then [`MediaInfo`] (or an `ErrorFrame`).
    pub struct Upload {
        /// Echoed in the answers.
        pub request_id: u32,
        /// The media's whole size in bytes.
        pub size: u64,
        /// The content type the client claims; the server detects its own from the bytes.
        #[cfg_attr(test, proptest(strategy = "crate::codec::strategy::text()"))]
        pub content_type: String,
        /// The SHA-256 the bytes must have, when the client knows it.
        pub sha256: Option<[u8; 32]>,
        /// 0 to start an upload; else the upload id (from [`UploadProgress`]) to resume.
        pub resume: u64,
        /// Where the bytes after this frame begin: 0 for a new upload, the last confirmed offset
        /// when resuming.
        pub offset: u64,
    }
}

wire_struct! {
    /// Server to client on an upload stream: the upload's id (for resuming) and how many bytes
    /// from the start are safely stored. Sent when the upload starts and every MiB after.
    pub struct UploadProgress {
        /// The Upload's request id.
        pub request_id: u32,
        /// The upload's id.
        pub upload: u64,
        /// Bytes stored; a resumed upload continues from here.
        pub offset: u64,
    }
}

wire_struct! {
    /// Server to client: the upload is complete and stored. `media` is what a message attaches.
    pub struct MediaInfo {
        /// The Upload's request id.
        pub request_id: u32,
        /// The stored media, as the server saw it (type, size, hash, dimensions, thumbnail).
        pub media: Attachment,
    }
}

wire_struct! {
    /// Client to server, first frame of a new stream: send me (a range of) this media.
    /// Answered with [`DownloadStart`] and the bytes, or an `ErrorFrame`.
    pub struct Download {
        /// Echoed in the answer.
        pub request_id: u32,
        /// The media (or thumbnail) id.
        pub media_id: [u8; 16],
        /// First byte wanted.
        pub offset: u64,
        /// Bytes wanted; 0 means to the end.
        pub length: u64,
    }
}

wire_struct! {
    /// Server to client on a download stream: the media and the range whose `length` raw bytes
    /// follow on the stream, which then finishes.
    pub struct DownloadStart {
        /// The Download's request id.
        pub request_id: u32,
        /// The media.
        pub media: Attachment,
        /// First byte that follows.
        pub offset: u64,
        /// Bytes that follow.
        pub length: u64,
    }
}
