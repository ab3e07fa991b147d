//! A signal wait (`ctx.signal`, `ctx.signal_or_timeout`): `SignalWaitStarted` records the
//! deadline of a wait that has one; the outcome is `SignalDelivered` (naming the
//! `SignalReceived` it took, whose body the history looks up) or `SignalWaitTimedOut`.
//!
//! States: waiting (deadline recorded or none) -> delivered | timed out | cancelled.

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::codec::Payload;
use crate::event::{EventKind, StepNo};

pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    match event {
        EventKind::SignalWaitStarted { step, name, .. }
        | EventKind::SignalDelivered { step, name, .. }
        | EventKind::SignalWaitTimedOut { step, name } => Some(Route {
            step: *step,
            kind: StepKind::Signal,
            name,
            opens: true,
        }),
        _ => None,
    }
}

pub(crate) fn apply(
    entry: &mut RecordedStep,
    event: &EventKind,
    delivered: Option<Payload>,
) -> Result<(), String> {
    match (event, delivered) {
        (EventKind::SignalWaitStarted { deadline_ms, .. }, _) => {
            if entry.deadline_ms.is_some() {
                return Err("a signal wait started twice".into());
            }
            entry.deadline_ms = Some(*deadline_ms);
            Ok(())
        }
        (EventKind::SignalDelivered { signal_seq, .. }, Some(payload)) => {
            entry.finish(RecordedOutcome::Signal {
                signal_seq: *signal_seq,
                payload,
            });
            Ok(())
        }
        (EventKind::SignalDelivered { .. }, None) => {
            Err("a delivery without the signal it takes".into())
        }
        (EventKind::SignalWaitTimedOut { .. }, _) => {
            if entry.deadline_ms.is_none() {
                return Err("a wait without a deadline timed out".into());
            }
            entry.finish(RecordedOutcome::TimedOut);
            Ok(())
        }
        (other, _) => Err(unexpected(entry.kind, other)),
    }
}

/// What a wait at step `step` for signal `name` waits until: its recorded deadline, or,
/// the first time, `requested` (`None`: no deadline) with the event that records it.
pub fn deadline(
    recorded: Option<u64>,
    step: StepNo,
    name: &str,
    requested: Option<u64>,
) -> (Option<u64>, Option<EventKind>) {
    match (recorded, requested) {
        (Some(at), _) => (Some(at), None),
        (None, Some(at)) => (
            Some(at),
            Some(EventKind::SignalWaitStarted {
                step,
                name: name.to_owned(),
                deadline_ms: at,
            }),
        ),
        (None, None) => (None, None),
    }
}

/// The outcome event of a wait that took the signal recorded at `signal_seq`.
pub fn delivered(step: StepNo, name: &str, signal_seq: u64) -> EventKind {
    EventKind::SignalDelivered {
        step,
        name: name.to_owned(),
        signal_seq,
    }
}

/// The outcome event of a wait that reached its deadline first.
pub fn timed_out(step: StepNo, name: &str) -> EventKind {
    EventKind::SignalWaitTimedOut {
        step,
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_wait_with_a_deadline_times_out() {
        let mut entry = RecordedStep::new(StepKind::Signal, "approve");
        assert!(apply(&mut entry, &timed_out(2, "approve"), None).is_err());
        let (at, started) = deadline(None, 2, "approve", Some(40));
        assert_eq!(at, Some(40));
        apply(&mut entry, &started.unwrap(), None).unwrap();
        apply(&mut entry, &timed_out(2, "approve"), None).unwrap();
        assert_eq!(entry.outcome, Some(RecordedOutcome::TimedOut));
    }
}
