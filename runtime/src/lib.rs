//! Cairn's engine: the host (instances, drivers, the commit path, timers, schedules,
//! recovery), the run (the workflow context, behind the `HostPort` port), the offline
//! replayer, and for now the redb store with its group-commit writer. The event model and
//! the replay rules are `cairn-core`'s, re-exported here under their old paths. Users
//! depend on the `cairn` crate, which wraps this one in a typed API; this crate knows
//! nothing of macros.
//!
//! See `docs/ARCHITECTURE.md` for the map of modules and the life of a step.

#![deny(unsafe_code)]

pub use cairn_core::{activity, codec, error, event, journal, replay, schedule, step};

pub mod clock;
mod context;
mod drive;
mod engine;
mod port;
mod queue;
pub mod redb_journal;
mod replayer;
pub mod store;
mod sync;
mod timers;
mod writer;

pub use activity::{
    ActivityContext, ActivityError, ActivityFailure, ActivityOptions, Cancelled, RetryPolicy,
};
pub use codec::{Codec, CodecError, JsonCodec, Payload};
pub use context::{PatchPlan, WorkflowContext};
pub use engine::{
    Engine, EngineBuilder, InstanceInfo, ListFilter, Outcome, ReplayVerdict, StartOutcome, Status,
    StatusKind, WorkflowFactory, WorkflowResult, ALWAYS_REPLAY_ENV, EVICTION_IDLE_DEFAULT,
    INSTANCE_ID_BYTES_MAX, SIGNAL_NAME_BYTES_MAX,
};
pub use error::{Error, NonDeterminism, Result, StepDescriptor};
pub use replayer::{Replayer, StoredVerdict};
pub use writer::{WriterStats, BATCH_REQUESTS_MAX};
