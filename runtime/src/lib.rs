//! Cairn's engine: the host (instances, drivers, the commit path, timers, schedules,
//! recovery), the run (the workflow context, behind the `HostPort` port), the offline
//! replayer. It runs on any journal (`cairn_core::journal::Journal`); the embedded redb
//! journal (`cairn-redb`) is the default `open`. The event model and the replay rules are
//! `cairn-core`'s, re-exported here under their old paths. Users
//! depend on the `cairn` crate, which wraps this one in a typed API; this crate knows
//! nothing of macros.
//!
//! See `docs/ARCHITECTURE.md` for the map of modules and the life of a step.

#![deny(unsafe_code)]

pub use cairn_core::{
    activity, calendar, codec, decision, document, error, event, journal, policy, replay, schedule,
    step, task,
};

mod acting;
mod answers;
mod attempts;
pub mod clock;
mod context;
mod documents;
mod drive;
mod engine;
pub mod export;
mod messages;
mod metrics;
pub use metrics::{StepLatency, RECENT_ATTEMPTS};
pub mod notify;
mod port;
mod replayer;
mod sync;
mod tasks;
mod timers;

pub use activity::{
    ActivityContext, ActivityError, ActivityFailure, ActivityOptions, AppState, Cancelled,
    RetryPolicy,
};
pub use cairn_redb::{store, WriterStats, BATCH_REQUESTS_MAX};
pub use codec::{Codec, CodecError, JsonCodec, Payload};
pub use context::{PatchPlan, WorkflowContext};
pub use engine::{
    Engine, EngineBuilder, InstanceInfo, ListFilter, ListPage, Outcome, ReplayVerdict,
    StartOutcome, Status, StatusKind, WorkflowFactory, WorkflowResult, ALWAYS_REPLAY_ENV,
    EVICTION_IDLE_DEFAULT, INSTANCE_ID_BYTES_MAX, LIST_PAGES_PER_CALL, REASON_BYTES_MAX,
    SIGNAL_NAME_BYTES_MAX,
};
pub use error::{Error, NonDeterminism, Result, StepDescriptor, StorageFailure};
pub use messages::{Sent, MESSAGE_KEY_BYTES_MAX};
pub use replayer::{Replayer, StoredVerdict};
pub use tasks::{TaskInfo, TaskStatus, DECISION_BYTES_MAX};

/// The embedded redb journal (crate `cairn-redb`).
pub mod redb_journal {
    pub use cairn_redb::RedbJournal;
}
