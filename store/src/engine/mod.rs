//! Engines: thin adapters of [`crate::kv`] to real stores.
//!
//! - [`embedded`]: fjall in a local directory (default).
//! - `fdb`: FoundationDB, behind the cargo feature `fdb`.

pub mod embedded;
#[cfg(feature = "fdb")]
pub mod fdb;
