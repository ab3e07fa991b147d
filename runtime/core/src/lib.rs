//! Cairn's core: what a history is and what it means, with no I/O.
//!
//! The event model and its on-disk envelope ([`event`]), payloads and codecs
//! ([`codec`]), the errors every layer reports ([`error`]), what an activity call is
//! ([`activity`]), schedules ([`schedule`]), decision tables ([`decision`]), business time ([`calendar`]), human tasks ([`task`]), notifications ([`notify`]), who may do what ([`policy`]), the journal boundary every store
//! implements ([`journal`]) and what one event puts in a commit ([`commit`]), one state machine per step kind ([`step`])
//! and the replay rules that turn a history and the requests of workflow code into
//! decisions ([`replay`]).
//!
//! **Architecture invariant**: this crate depends on neither tokio nor a store. It is
//! compiled and tested on its own, with hand-built histories; the engine, the stores and
//! the audit tools all build on it. See `docs/ARCHITECTURE.md`.

#![deny(unsafe_code)]

pub mod activity;
pub mod calendar;
pub mod codec;
pub mod commit;
pub mod decision;
pub mod document;
pub mod error;
pub mod event;
pub mod journal;
pub mod keymap;
pub mod notify;
pub mod policy;
pub mod replay;
pub mod schedule;
pub mod step;
pub mod task;

pub use activity::{
    ActivityContext, ActivityError, ActivityFailure, ActivityOptions, AppState, Cancelled,
    RetryPolicy,
};
pub use codec::{Codec, CodecError, JsonCodec, Payload};
pub use error::{Error, NonDeterminism, Result, StepDescriptor, StorageFailure};
pub use task::Actor;
