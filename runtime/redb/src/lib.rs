//! Cairn's embedded journal on one redb file: [`RedbJournal`] implements the journal
//! boundary (`cairn_core::journal::Journal`) with a group-commit writer thread
//! (`writer`), the log, the instance rows and the indexes ([`store`]).
//!
//! **Architecture invariant**: this is the only production crate that depends on redb.
//! Log positions (LSNs), the head of each hash chain and the indexes are this crate's
//! business; the engine sees journal operations only.

#![deny(unsafe_code)]

pub(crate) use cairn_core::{codec, error, event, schedule};

mod journal;
mod outbox;
mod queue;
pub mod store;
mod sync;
mod tables;
mod tasks;
mod writer;

pub use journal::RedbJournal;
pub use outbox::OutboxWrite;
pub use writer::{WriterStats, BATCH_REQUESTS_MAX};
