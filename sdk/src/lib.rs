//! # Cairn
//!
//! Durable, event-sourced workflows for Rust, hosted in your own process on one redb file.
//!
//! Write a workflow as a plain `async fn` marked `#[workflow]`, put its side effects in
//! `#[activity]` functions, and call them through [`Ctx`]. Every step is appended to an
//! event log before the workflow sees its result; after a crash each unfinished instance
//! is replayed from its log and carries on without running completed steps again.
//!
//! ```no_run
//! use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, WorkflowError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Order { id: u32, sku: String }
//!
//! #[activity]
//! async fn reserve_stock(_ctx: ActivityCtx, order: Order) -> Result<String, ActivityError> {
//!     Ok(format!("reservation-{}", order.id))
//! }
//!
//! #[workflow]
//! async fn fulfil_order(ctx: Ctx, order: Order) -> Result<String, WorkflowError> {
//!     let reservation = ctx.activity(reserve_stock, order).await?;
//!     Ok(reservation)
//! }
//!
//! # async fn run() -> Result<(), cairn::Error> {
//! let rt = Runtime::builder().workflow(fulfil_order).open("orders.redb").await?;
//! let order = Order { id: 1, sku: "A-1".into() };
//! let handle = rt.start(fulfil_order, "order-1", order).await?;
//! let receipt = handle.result().await?;
//! # Ok(()) }
//! ```

#![deny(unsafe_code)]

mod acting;
mod ctx;
mod documents;
mod gate;
mod messages;
pub mod notify;
mod runtime;
mod saga;
#[cfg(feature = "server")]
pub mod server;
mod signal;
mod task;
#[cfg(feature = "otel")]
pub mod telemetry;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use acting::Acting;
pub use cairn_macros::{activity, workflow};
pub use cairn_runtime::journal::{TaskPage, TaskQuery};
pub use cairn_runtime::task::{TaskId, TaskState};
pub use cairn_runtime::{
    event::AttrValue, ActivityContext as ActivityCtx, ActivityError, ActivityFailure,
    ActivityOptions, Cancelled, Codec, Error, InstanceInfo, JsonCodec, ListFilter, NonDeterminism,
    RetryPolicy, Status, StatusKind, StorageFailure,
};
pub use cairn_runtime::{TaskInfo, TaskStatus};
pub use ctx::{ActivityCall, Ctx};
pub use documents::Document;
pub use messages::{Query, Rejected, Sent, Update, UpdateRequest, MESSAGE_KEY_BYTES_MAX};
pub use runtime::{InstanceHandle, Runtime, RuntimeBuilder};
pub use saga::{CompensationFailed, CompensationFailure, Saga};
/// JSON Schema derivation for task decisions (`#[derive(schemars::JsonSchema)]`).
pub use schemars;
pub use signal::{Received, Signal};
pub use task::{Actor, Deadline, Decided, Escalate, HumanTask, TaskKind};

pub use cairn_runtime::schedule::{Paused, Recurrence, ScheduleRow};

/// The event model: what a history holds, as stored and as auditors read it
/// (`docs/EVENT_FORMAT.md` specifies the bytes).
pub mod events {
    pub use cairn_runtime::codec::Payload;
    pub use cairn_runtime::event::{
        hash_envelope, ActivityErrorRecord, AttrValue, ChildOutcome, EventHash, EventKind,
        EventRecord, StepNo, EVENT_BYTES_MAX, GENESIS_HASH,
    };
    pub use cairn_runtime::task::{
        Actor, Candidates, EscalationAction, EscalationTier, TaskChange, TaskSpec,
    };
}

/// Case documents: what a version records and the limits.
pub mod document {
    pub use cairn_runtime::document::{
        DocumentVersion, DOCUMENT_BYTES_MAX, DOCUMENT_FIELD_BYTES_MAX, DOCUMENT_METADATA_MAX,
        DOCUMENT_NAME_BYTES_MAX,
    };
}

/// Who may do what: the [`policy::Policy`] a runtime checks every call made through
/// [`Runtime::acting_as`] against, and role-based rules ([`policy::Roles`]).
pub mod policy {
    pub use cairn_runtime::policy::{Action, AllowAll, Policy, Roles, Verb, ANYONE};
}

/// Storage: the journal boundary every store implements ([`store::Journal`]), the
/// embedded redb journal ([`store::RedbJournal`]) with the file store under it, and with
/// feature `postgres` the journal on PostgreSQL shared by several hosts.
pub mod store {
    /// The journal on PostgreSQL, shared by several hosts (feature `postgres`).
    #[cfg(feature = "postgres")]
    pub use cairn_postgres::{
        Lease, PostgresJournal, PostgresOptions, PostgresReader, PostgresStore, SCHEMA_VERSION,
        SHARDS,
    };
    pub use cairn_runtime::journal::{
        verify_chain, verify_history, Appended, Attachment, Attributes, Carried, CommitListener,
        Committed, Cursor, Expect, InstancePage, InstanceQuery, InstanceRow, InstanceStatus,
        Journal, Membership, Ownership, ParkedRow, Party, RawEvent, RawHistory, Started,
        StoredEvent, Suspension, TaskCursor, TaskPage, TaskQuery, TaskRow, TimeSource,
        PAGE_ROWS_MAX,
    };
    pub use cairn_runtime::redb_journal::RedbJournal;
    pub use cairn_runtime::store::{RedbStore, Store, WriteBatch, STORAGE_FORMAT};
}

/// The untyped engine under [`Runtime`] ([`Runtime::engine`]), for hosts that need it:
/// monitoring counters, starts by type name, the raw outcome of an instance.
pub mod host {
    pub use cairn_runtime::{
        Engine, EngineBuilder, Outcome, StartOutcome, WorkflowFactory, WorkflowResult, WriterStats,
        ALWAYS_REPLAY_ENV, EVICTION_IDLE_DEFAULT, INSTANCE_ID_BYTES_MAX, SIGNAL_NAME_BYTES_MAX,
    };
}

/// What an auditor needs: open a database file read-only (beside no host), read its
/// verified histories, and replay them against the current code with a [`audit::Replayer`]
/// (`Runtime::builder().workflow(..).replayer()`), which reports the first divergence of
/// each history as a step-by-step diff.
pub mod audit {
    pub use crate::gate::{command, replay_file, ReplayReport, Selection};
    pub use cairn_runtime::event::{EventKind, EventRecord};
    pub use cairn_runtime::export::{actor_json, event_json, hex, payload_json, Anchor};
    pub use cairn_runtime::journal::{Journal, StoredEvent};
    pub use cairn_runtime::redb_journal::RedbJournal;
    pub use cairn_runtime::{Outcome, ReplayVerdict, Replayer, StoredVerdict};

    /// Opens the Cairn database at `path` for reading only, with no writer and no write
    /// lock; see [`RedbJournal::open_read_only`].
    ///
    /// # Errors
    /// `CAIRN-E0005` when the file does not exist, a host has it open, it needs the repair
    /// only a host's open makes, or it is not a Cairn database; `CAIRN-E0009` for a newer
    /// Cairn's file.
    pub fn open_read_only(path: impl AsRef<std::path::Path>) -> Result<RedbJournal, crate::Error> {
        RedbJournal::open_read_only(path)
    }
}

/// Decision tables: typed rules a workflow decides with (`Ctx::decide`), written in Rust
/// or loaded from CSV or JSON that business staff edit; see [`decision::DecisionTable`].
pub mod decision {
    pub use cairn_runtime::decision::{
        Aggregation, Bound, Column, ColumnType, Condition, Decision, DecisionError, DecisionTable,
        HitPolicy, Rule, TableBuilder, TableError, Value,
    };
}

/// Business time: working days and hours, holidays, in a time zone, for deadlines like
/// "2 business days" (`ctx.sleep_until(calendar.after(ctx.now().await, ..)?)`).
pub mod calendar {
    pub use cairn_runtime::calendar::{BusinessCalendar, BusinessTime, CalendarError, Weekday};
}

/// Tools for testing workflows: a virtual clock that skips through long timers.
///
/// ```
/// use std::sync::Arc;
/// use std::time::{Duration, SystemTime};
/// use cairn::testing::VirtualClock;
/// use cairn::Runtime;
///
/// let clock = VirtualClock::new(SystemTime::now());
/// let builder = Runtime::builder().clock(Arc::new(clock.clone()));
/// // ... open, start a workflow that sleeps 30 days, then:
/// // clock.skip_to_next_timer().await;
/// ```
pub mod testing {
    pub use cairn_runtime::clock::{Clock, SystemClock, VirtualClock};
}

/// A value that can cross a durable boundary: a workflow's input, output or error, an
/// activity's argument or result. Any `Serialize + DeserializeOwned + Send` type is one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a Cairn history",
    label = "this type is not serde-serializable",
    note = "workflow and activity inputs, outputs and errors are recorded in the event log: add #[derive(serde::Serialize, serde::Deserialize)] to `{Self}`"
)]
pub trait Payload: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Payload for T {}

/// A workflow type. Implemented by `#[workflow]`; you do not implement it by hand.
pub trait Workflow: Send + Sync + 'static {
    /// The registered name, recorded in every instance's start event. Renaming a
    /// workflow strands its running instances: keep the name (`#[workflow(name = "..")]`).
    const NAME: &'static str;
    /// Input (a tuple when the function takes several arguments after `ctx`).
    type Input: Payload;
    /// `Ok` type of the result.
    type Output: Payload;
    /// `Err` type of the result.
    type Error: Payload;
    /// Runs the workflow body.
    fn run(
        ctx: Ctx,
        input: Self::Input,
    ) -> futures::future::BoxFuture<'static, Result<Self::Output, Self::Error>>;
}

/// An activity type. Implemented by `#[activity]`; you do not implement it by hand.
pub trait Activity: Send + Sync + 'static {
    /// The name recorded in history; replay compares it, so keep it stable.
    const NAME: &'static str;
    /// Input (a tuple when the function takes several arguments after `ctx`).
    type Input: Payload;
    /// Result.
    type Output: Payload;
    /// Default options of calls to this activity; a call may override them.
    fn options() -> ActivityOptions {
        ActivityOptions::default()
    }
    /// Runs one attempt.
    fn run(
        ctx: ActivityCtx,
        input: Self::Input,
    ) -> futures::future::BoxFuture<'static, Result<Self::Output, ActivityError>>;
}

/// Why a child workflow did not return `Ok`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ChildFailure<E> {
    /// The child returned `Err`: its own typed error.
    #[error("child workflow failed: {0}")]
    Failed(E),
    /// The child was terminated.
    #[error("child workflow `{child_id}` was terminated: {reason}")]
    Terminated {
        /// The child's id.
        child_id: String,
        /// The reason given to `terminate`.
        reason: String,
    },
    /// The parent was cancelled while waiting; the cancellation was passed on.
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// A ready-made workflow error: an activity that failed for good, or a business outcome
/// of your own. Any error type that is a [`Payload`] and `From<ActivityFailure>` works too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// An activity step failed after its retries.
    #[error(transparent)]
    Activity(#[from] ActivityFailure),
    /// The instance was cancelled (`Runtime::cancel`) at a durable wait.
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    /// A child workflow did not return `Ok`.
    #[error("child workflow: {0}")]
    Child(String),
    /// Compensating after a failure or a cancellation failed (see [`Saga`]).
    #[error(transparent)]
    Compensation(#[from] CompensationFailed),
    /// The workflow decided to fail.
    #[error("{kind}: {message}")]
    Business {
        /// Machine-readable kind.
        kind: String,
        /// Human-readable message.
        message: String,
    },
}

impl<E: std::fmt::Display> From<ChildFailure<E>> for WorkflowError {
    fn from(failure: ChildFailure<E>) -> Self {
        match failure {
            ChildFailure::Cancelled(cancelled) => WorkflowError::Cancelled(cancelled),
            other => WorkflowError::Child(other.to_string()),
        }
    }
}

impl WorkflowError {
    /// A business failure of kind `kind`.
    pub fn business(kind: impl Into<String>, message: impl Into<String>) -> Self {
        WorkflowError::Business {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

/// The README's code blocks, compiled as doc tests so its program stays buildable.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The guide's code blocks (`docs/GUIDE.md`), compiled as doc tests, the runnable ones
/// run: the guide builds as written. It hosts the HTTP API, hence the feature (on in the
/// workspace's test run, where the CLI package enables it).
#[cfg(all(doctest, feature = "server"))]
#[doc = include_str!("../../docs/GUIDE.md")]
pub struct GuideDoctests;

#[doc(hidden)]
pub mod __private {
    pub use futures::future::BoxFuture;
    pub use std::boxed::Box;

    /// Converts an activity function's error into an [`crate::ActivityError`].
    pub fn into_activity_error<E: Into<crate::ActivityError>>(err: E) -> crate::ActivityError {
        err.into()
    }
}
