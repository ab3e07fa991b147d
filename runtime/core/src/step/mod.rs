//! One state machine per step kind, with no I/O: how a kind's events build up its
//! recorded state (history in), and which events a run records as the step goes on
//! (commands out). [`crate::replay::History`] routes each step event here; the engine's
//! workflow context asks the same machines what to record.
//!
//! **Adding a step kind** (a human task, say) touches: its events in
//! [`crate::event::EventKind`] (appended at the end), a [`StepKind`] variant, one module
//! here (its `apply` and its event constructors), its arm in this module's `route` and
//! `apply`, the context method that runs it live, and the SDK method users call. Nothing
//! else in the replay core changes.
//!
//! **Architecture invariant**: a machine sees only its own step's events, in history
//! order, and the facts the history passes it (a delivered signal's body); it never
//! reads a clock, a store or a task.

pub mod activity;
pub mod answer;
pub mod attributes;
pub mod child;
pub mod notice;
pub mod patch;
pub mod publish;
pub mod signal;
pub mod task;
pub mod timer;
pub mod value;

use crate::codec::Payload;
use crate::error::StepDescriptor;
use crate::event::{EventKind, StepNo};

/// What kind of durable call a step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// An activity.
    Activity,
    /// A recorded value (`now`, `random`, `uuid`, named side effect).
    SideEffect,
    /// A durable timer (`ctx.sleep`), named `"sleep"`.
    Timer,
    /// A wait for a signal, named by the signal.
    Signal,
    /// A version marker (`ctx.patched`), named by the patch id.
    Patch,
    /// Published search attributes, named `"attributes"`; the values are its input.
    Attributes,
    /// A child workflow, named by its workflow type; its id and input are its input.
    Child,
    /// A human task, named by its kind; its input is what the person is shown.
    Task,
    /// A notification the workflow asked for, named by its topic; its body is its input.
    Notice,
    /// The answer to an update, named by the update; its key and answer are its input.
    Answer,
    /// A value published for queries, named by the query; the value is its input.
    Publish,
}

impl StepKind {
    /// The kind's name in events and messages.
    pub fn label(self) -> &'static str {
        match self {
            StepKind::Activity => "activity",
            StepKind::SideEffect => "side_effect",
            StepKind::Timer => "timer",
            StepKind::Signal => "signal",
            StepKind::Patch => "patch",
            StepKind::Attributes => "attributes",
            StepKind::Child => "child",
            StepKind::Task => "task",
            StepKind::Notice => "notice",
            StepKind::Answer => "answer",
            StepKind::Publish => "publish",
        }
    }

    /// The kind a `StepCancelled` event names by its label; `None` for a kind that has
    /// nothing to cancel (it never waits).
    pub fn cancellable(label: &str) -> Option<StepKind> {
        match label {
            "activity" => Some(StepKind::Activity),
            "timer" => Some(StepKind::Timer),
            "signal" => Some(StepKind::Signal),
            "child" => Some(StepKind::Child),
            "task" => Some(StepKind::Task),
            _ => None,
        }
    }
}

/// A step as the workflow code asks for it.
#[derive(Clone, Copy, Debug)]
pub struct StepRequest<'a> {
    /// Kind.
    pub kind: StepKind,
    /// Activity or side-effect name.
    pub name: &'a str,
    /// Input, for activities.
    pub input: Option<&'a Payload>,
}

/// How a recorded step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordedOutcome {
    /// The activity succeeded.
    ActivityCompleted {
        /// Result.
        output: Payload,
        /// Attempt that succeeded.
        attempt: u32,
    },
    /// The activity failed for good.
    ActivityFailed {
        /// Last error.
        error: crate::event::ActivityErrorRecord,
        /// Attempts made.
        attempt: u32,
    },
    /// The recorded value.
    Value(Payload),
    /// The timer fired.
    TimerFired,
    /// The wait took the signal recorded at `signal_seq`.
    Signal {
        /// `seq` of its `SignalReceived` event.
        signal_seq: u64,
        /// Its body.
        payload: Payload,
    },
    /// The wait reached its deadline.
    TimedOut,
    /// The patch marker was recorded: the run took the new path.
    Patched,
    /// The attributes were recorded.
    AttributesSet,
    /// The child workflow ended.
    Child(crate::event::ChildOutcome),
    /// The human task was completed.
    TaskCompleted {
        /// The decision.
        decision: Payload,
        /// Who completed it.
        actor: crate::task::Actor,
        /// The escalation tier that decided, if one did.
        escalation: Option<u32>,
    },
    /// The notification was recorded for delivery.
    Noticed,
    /// The update's answer was recorded.
    Answered,
    /// The value was published.
    Published,
    /// The step ended because cancellation was requested.
    Cancelled {
        /// The cancellation's reason.
        reason: String,
    },
}

/// One step as history holds it: what every machine keeps, whatever its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedStep {
    /// Kind.
    pub kind: StepKind,
    /// Name.
    pub name: String,
    /// Input (activities whose outcome is recorded, attributes, children).
    pub input: Option<Payload>,
    /// Failed attempts recorded before the outcome (or before a crash).
    pub failed_attempts: u32,
    /// Deadline recorded for a timer or a signal wait; for an activity with failed
    /// attempts, when its next attempt is due (the last failure's `recorded_at_ms` plus
    /// its `retry_in_ms`). Ms since the Unix epoch.
    pub deadline_ms: Option<u64>,
    /// The outcome, if the step finished.
    pub outcome: Option<RecordedOutcome>,
    /// A human task's state (its spec, holder, escalations, comments).
    pub task: Option<Box<crate::task::TaskState>>,
}

impl RecordedStep {
    pub(crate) fn new(kind: StepKind, name: &str) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            input: None,
            failed_attempts: 0,
            deadline_ms: None,
            outcome: None,
            task: None,
        }
    }

    pub(crate) fn descriptor(&self) -> StepDescriptor {
        StepDescriptor {
            kind: self.kind.label(),
            name: self.name.clone(),
            input: self.input.as_ref().map(|p| p.preview(200)),
        }
    }

    /// Records the step's outcome; the caller has checked there was none.
    pub(crate) fn finish(&mut self, outcome: RecordedOutcome) {
        self.outcome = Some(outcome);
    }
}

/// Where a step event goes: its step, the kind of machine that reads it, the step's name
/// as the event records it, and whether the event may be the step's first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route<'a> {
    pub(crate) step: StepNo,
    pub(crate) kind: StepKind,
    pub(crate) name: &'a str,
    pub(crate) opens: bool,
}

/// The routing table from step events to machines. `None` for events without a step and
/// for the two step events the history handles itself (`StepCancelled`, which any
/// cancellable kind takes, and `StepAbandoned`).
pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    activity::route(event)
        .or_else(|| value::route(event))
        .or_else(|| timer::route(event))
        .or_else(|| signal::route(event))
        .or_else(|| patch::route(event))
        .or_else(|| attributes::route(event))
        .or_else(|| child::route(event))
        .or_else(|| task::route(event))
        .or_else(|| notice::route(event))
        .or_else(|| answer::route(event))
        .or_else(|| publish::route(event))
}

/// Applies one routed event to its step by the step kind's machine. `delivered` is the
/// body of the signal a `SignalDelivered` takes (the history looks it up).
///
/// # Errors
/// Why the event cannot follow what the step recorded so far.
pub(crate) fn apply(
    entry: &mut RecordedStep,
    event: &EventKind,
    recorded_at_ms: u64,
    delivered: Option<Payload>,
) -> Result<(), String> {
    match entry.kind {
        StepKind::Activity => activity::apply(entry, event, recorded_at_ms),
        StepKind::SideEffect => value::apply(entry, event),
        StepKind::Timer => timer::apply(entry, event),
        StepKind::Signal => signal::apply(entry, event, delivered),
        StepKind::Patch => patch::apply(entry, event),
        StepKind::Attributes => attributes::apply(entry, event),
        StepKind::Child => child::apply(entry, event),
        StepKind::Task => task::apply(entry, event, recorded_at_ms),
        StepKind::Notice => notice::apply(entry, event),
        StepKind::Answer => answer::apply(entry, event),
        StepKind::Publish => publish::apply(entry, event),
    }
}

/// The outcome a step event of the wrong shape for its machine gets: the routing table
/// and the machines disagree, which only a malformed history can cause.
pub(crate) fn unexpected(kind: StepKind, event: &EventKind) -> String {
    format!(
        "a {} step cannot take a {} event",
        kind.label(),
        event.name()
    )
}
