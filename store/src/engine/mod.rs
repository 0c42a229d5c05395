//! Engines: thin adapters of [`crate::kv`] to real stores.
//!
//! - [`embedded`]: fjall in a local directory (default).
//! - [`partitioned`]: several embedded databases, one per partition of a store.
//! - `fdb`: FoundationDB, behind the cargo feature `fdb`.
//! - [`sim`]: an in-memory cluster with FoundationDB's semantics and seeded faults, for tests.

pub mod embedded;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod partitioned;
pub mod sim;
