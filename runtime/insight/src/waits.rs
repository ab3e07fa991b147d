//! What an unfinished run is waiting for, read from its history: a person (an open
//! human task, and whether it is overdue), a timer, a signal with a deadline, a child
//! workflow, or a retry of a failed activity attempt.

use std::collections::BTreeMap;

use cairn_core::event::EventKind;
use cairn_core::journal::StoredEvent;
use cairn_core::task::TaskChange;

/// The open waits of a run (several at once when it waits in parallel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waits {
    /// An open human task.
    pub person: bool,
    /// An open human task past its due time.
    pub overdue: bool,
    /// A durable timer not fired yet.
    pub timer: bool,
    /// A signal wait with a deadline (`signal_or_timeout`) not answered yet. A wait
    /// without a deadline records nothing until its signal comes, so it does not show
    /// here; the host knows it (`Engine::waits_on_message`).
    pub signal: bool,
    /// A child workflow not finished yet.
    pub child: bool,
    /// An activity whose last attempt failed and that will be tried again.
    pub retrying: bool,
}

impl Waits {
    /// Whether nothing is open.
    pub fn none(&self) -> bool {
        *self == Waits::default()
    }
}

#[derive(Clone, Copy)]
enum Open {
    Task {
        due_at_ms: Option<u64>,
        overdue: bool,
    },
    Timer,
    Signal,
    Child,
    Retry,
}

/// The open waits of the run whose history is `events`, at time `now_ms`. A finished
/// run waits for nothing.
///
/// # Example
/// ```
/// # use cairn_insight::waits::waits;
/// assert!(waits(&[], 0).none());
/// ```
pub fn waits(events: &[StoredEvent], now_ms: u64) -> Waits {
    let mut open: BTreeMap<u32, Open> = BTreeMap::new();
    for event in events {
        match &event.record.kind {
            EventKind::TaskCreated { step, task } => {
                open.insert(
                    *step,
                    Open::Task {
                        due_at_ms: task.due_at_ms,
                        overdue: false,
                    },
                );
            }
            EventKind::TaskChanged {
                step,
                change: TaskChange::Overdue,
                ..
            } => {
                if let Some(Open::Task { overdue, .. }) = open.get_mut(step) {
                    *overdue = true;
                }
            }
            EventKind::TimerStarted { step, .. } => {
                open.insert(*step, Open::Timer);
            }
            EventKind::SignalWaitStarted { step, .. } => {
                open.insert(*step, Open::Signal);
            }
            EventKind::ChildStarted { step, .. } => {
                open.insert(*step, Open::Child);
            }
            EventKind::ActivityAttemptFailed { step, .. } => {
                open.insert(*step, Open::Retry);
            }
            EventKind::TaskCompleted { step, .. }
            | EventKind::TimerFired { step }
            | EventKind::SignalDelivered { step, .. }
            | EventKind::SignalWaitTimedOut { step, .. }
            | EventKind::ChildCompleted { step, .. }
            | EventKind::ActivityCompleted { step, .. }
            | EventKind::ActivityFailed { step, .. }
            | EventKind::StepCancelled { step, .. }
            | EventKind::StepAbandoned { step } => {
                open.remove(step);
            }
            EventKind::WorkflowCompleted { .. }
            | EventKind::WorkflowFailed { .. }
            | EventKind::WorkflowTerminated { .. }
            | EventKind::WorkflowContinuedAsNew { .. } => return Waits::default(),
            _ => {}
        }
    }
    let mut waits = Waits::default();
    for wait in open.values() {
        match *wait {
            Open::Task { due_at_ms, overdue } => {
                waits.person = true;
                waits.overdue |= overdue || due_at_ms.is_some_and(|due| due <= now_ms);
            }
            Open::Timer => waits.timer = true,
            Open::Signal => waits.signal = true,
            Open::Child => waits.child = true,
            Open::Retry => waits.retrying = true,
        }
    }
    waits
}
