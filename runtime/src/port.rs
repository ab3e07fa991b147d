//! The port between a run and its host: everything a workflow context needs from outside
//! itself, as one trait. The run never names the engine; the engine implements this.
//!
//! **API boundary**: `context.rs` imports this module, never `engine.rs`; the engine
//! imports the context. That keeps the dependency one way (host -> run), and lets the
//! run be driven by another host (an audit replayer has none: its context holds no port
//! and never runs anything live).

use async_trait::async_trait;

use crate::activity::AppState;
use crate::codec::Payload;
use crate::error::Result;
use crate::event::EventKind;

/// A finished instance's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The workflow returned `Ok`; its encoded output.
    Completed(Payload),
    /// The workflow returned `Err`; its encoded error.
    Failed(Payload),
    /// The instance was terminated from outside, for this reason.
    Terminated(String),
    /// This run handed over to a new run of the same id, with this input. `wait` follows
    /// the chain and never returns this for an id.
    ContinuedAsNew(Payload),
}

/// What the run asks of its own open task.
#[derive(Clone, Debug)]
pub(crate) enum RunTaskChange {
    /// Fire escalation tier `tier`.
    Escalate(u32),
    /// Record that the task passed its due time.
    Overdue,
    /// End the task by the instance's cancellation.
    Cancel(String),
}

/// What became of a run's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunTaskAnswer {
    /// Recorded.
    Applied,
    /// Nothing to do: the tier fired already (the state's escalation count is given).
    Moved {
        /// Escalation tiers fired so far.
        escalations: u32,
    },
    /// The task is no longer open (its decision is in the run's inbox by now).
    Closed,
}

/// Something a run saw that the host counts (its metrics).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Observation<'a> {
    /// An activity attempt ended.
    Attempt {
        /// The run's workflow type.
        workflow_type: &'a str,
        /// The activity.
        activity: &'a str,
        /// `completed`, `retried` or `failed`.
        outcome: &'static str,
        /// How long it ran.
        seconds: f64,
    },
    /// A durable timer fired `late_ms` after its deadline.
    TimerFired {
        /// How late.
        late_ms: u64,
    },
}

/// What [`HostPort::append`] returns.
pub(crate) type AppendFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<cairn_core::journal::Appended>> + Send + 'a>,
>;

/// What a run asks of its host.
#[async_trait]
pub(crate) trait HostPort: Send + Sync {
    /// Counts what a run saw (metrics); never fails, never waits.
    fn observe(&self, observation: Observation<'_>);

    /// Appends `kind` to instance `key`'s history and returns once it is durable (and
    /// its effects are in memory). The journal's own future, not one boxed around it:
    /// every step of every run comes this way.
    fn append(&self, key: u128, kind: EventKind) -> AppendFuture<'_>;

    /// Queues `kind`, one of run `key`'s own events, and returns at once with what
    /// resolves once it is durable (see `Journal::append_queued`); only where
    /// [`HostPort::queues_appends`] says so.
    fn append_queued(&self, key: u128, kind: EventKind) -> cairn_core::journal::AppendTicket;

    /// Whether [`HostPort::append_queued`] queues.
    fn queues_appends(&self) -> bool {
        false
    }

    /// Sends `kind`, one of run `key`'s own events, now, in order with the run's other
    /// appends, and returns what resolves once it is durable (`Journal::append_sent`).
    fn append_sent(&self, key: u128, kind: EventKind) -> cairn_core::journal::AppendTicket;

    /// Whether every run is rebuilt from the log after each durable step.
    fn always_replay(&self) -> bool;

    /// Whether this host is handing run `key` over to another host (its store is shared
    /// by several hosts): the step in flight finishes, and no other starts here.
    fn handing_over(&self, key: u128) -> bool {
        let _ = key;
        false
    }

    /// What the host registered for its activities.
    fn app_state(&self) -> AppState;

    /// Starts child instance `id` of `workflow_type` for run `parent`; finding it
    /// already started is not an error.
    async fn start_child(
        &self,
        workflow_type: &str,
        id: &str,
        input: Payload,
        parent: u128,
    ) -> Result<()>;

    /// Whether instance `id` is a child of run `parent` (its end wakes `parent`).
    async fn is_child_of(&self, id: &str, parent: u128) -> Result<bool>;

    /// Waits for instance `id` to end, following its continue-as-new chain.
    async fn wait(&self, id: &str) -> Result<Outcome>;

    /// Requests cancellation of instance `id`.
    async fn cancel(&self, id: &str, reason: &str) -> Result<()>;

    /// Records the run's own change to its open task `step` (an escalation, a
    /// cancellation) if the task is still open, deciding on its current history.
    async fn task_change(
        &self,
        key: u128,
        step: crate::event::StepNo,
        change: RunTaskChange,
    ) -> Result<RunTaskAnswer>;
}
