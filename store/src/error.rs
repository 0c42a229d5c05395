//! Errors returned by the store.

use std::time::Duration;

use courier_wire::ErrorCode;

use crate::kv::{KvError, KvErrorKind};

/// How long a caller refused with [`StoreError::Unavailable`] is told to wait: about the time
/// between two of the writer's attempts to heal the engine.
pub const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a caller refused with [`StoreError::Busy`] is told to wait.
pub const BUSY_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The caller may not do this. For chats, a missing chat and one the caller is not a
    /// member of are the same [`Forbid::NotMember`] (indistinguishable on purpose).
    #[error("{0}")]
    Forbidden(Forbid),
    /// A field was well-formed but not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A group would exceed the member limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The store is shut down.
    #[error("store is closed")]
    Closed,
    /// The engine failed; the operation may not have been applied.
    #[error("storage engine: {0}")]
    Engine(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt record under key {0}")]
    Corrupt(String),
    /// The engine asked for a retry (a conflict with another writer, a read version too old,
    /// a storage server behind) and the store's own retries ran out: nothing was applied, or
    /// a commit that may have been applied was not confirmed. Try again after a short wait.
    #[error("storage busy: {0}")]
    Busy(String),
    /// The store cannot take writes for now (its disk is full, or its engine is recovering
    /// from a failed write); nothing of the operation was applied. Try again after
    /// `retry_after`.
    #[error("storage unavailable: {reason}")]
    Unavailable {
        /// What is wrong.
        reason: String,
        /// When to try again.
        retry_after: Duration,
    },
}

/// Why a request is forbidden: the class of reason, named in the error's text so a client (and
/// its user) knows what to fix, never revealing whether a chat exists to a non-member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Forbid {
    /// The chat does not exist, or the caller is not a member.
    #[error("no such chat, or you are not a member")]
    NotMember,
    /// Only the group's owner may do this (remove other members).
    #[error("only the group's owner may remove other members")]
    NotOwner,
    /// The media does not exist, or it is not the caller's to attach.
    #[error("no such media, or it is not yours to attach (upload it yourself)")]
    NotYourMedia,
    /// The media does not exist, or it is not shared with the caller.
    #[error("no such media, or it is not shared with you")]
    NotShared,
}

impl From<KvError> for StoreError {
    fn from(e: KvError) -> Self {
        match e.kind {
            KvErrorKind::Unavailable => Self::Unavailable {
                reason: e.message,
                retry_after: UNAVAILABLE_RETRY_AFTER,
            },
            KvErrorKind::Retryable | KvErrorKind::MaybeCommitted => Self::Busy(e.to_string()),
            KvErrorKind::Fatal => Self::Engine(e.to_string()),
        }
    }
}

impl StoreError {
    /// The wire error code a client is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Forbidden(_) => ErrorCode::FORBIDDEN,
            Self::Invalid(_) => ErrorCode::INVALID,
            Self::TooLarge(_) => ErrorCode::TOO_LARGE,
            Self::Closed => ErrorCode::SHUTTING_DOWN,
            Self::Engine(_) | Self::Corrupt(_) => ErrorCode::INTERNAL,
            Self::Unavailable { .. } | Self::Busy(_) => ErrorCode::UNAVAILABLE,
        }
    }

    /// How long to wait before trying again, for failures that a wait cures.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => Some(*retry_after),
            Self::Busy(_) => Some(BUSY_RETRY_AFTER),
            _ => None,
        }
    }

    /// Whether this is the server's own failure (worth an operator's attention), not the
    /// caller's or a passing condition.
    pub fn is_server_fault(&self) -> bool {
        matches!(self, Self::Engine(_) | Self::Corrupt(_))
    }
}
