//! A durable timer (`ctx.sleep`): `TimerStarted { fire_at_ms }` is recorded before the run
//! waits, so the deadline survives restarts; `TimerFired` is its outcome.
//!
//! States: not started -> started (deadline recorded) -> fired, or cancelled from either.

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::event::{EventKind, StepNo};

/// The name every timer step has.
pub const NAME: &str = "sleep";

pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    match event {
        EventKind::TimerStarted { step, .. } | EventKind::TimerFired { step } => Some(Route {
            step: *step,
            kind: StepKind::Timer,
            name: NAME,
            opens: true,
        }),
        _ => None,
    }
}

pub(crate) fn apply(entry: &mut RecordedStep, event: &EventKind) -> Result<(), String> {
    match event {
        EventKind::TimerStarted { fire_at_ms, .. } => {
            if entry.deadline_ms.is_some() {
                return Err("a timer started twice".into());
            }
            entry.deadline_ms = Some(*fire_at_ms);
            Ok(())
        }
        EventKind::TimerFired { .. } => {
            entry.finish(RecordedOutcome::TimerFired);
            Ok(())
        }
        other => Err(unexpected(entry.kind, other)),
    }
}

/// What a timer step waits for: its recorded deadline, or, the first time, `requested`
/// together with the event that records it.
pub fn deadline(recorded: Option<u64>, step: StepNo, requested: u64) -> (u64, Option<EventKind>) {
    match recorded {
        Some(at) => (at, None),
        None => (
            requested,
            Some(EventKind::TimerStarted {
                step,
                fire_at_ms: requested,
            }),
        ),
    }
}

/// The outcome event once the clock reached the deadline.
pub fn fired(step: StepNo) -> EventKind {
    EventKind::TimerFired { step }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_deadline_wins_over_the_requested_one() {
        assert_eq!(deadline(Some(5), 3, 9), (5, None));
        assert_eq!(
            deadline(None, 3, 9),
            (
                9,
                Some(EventKind::TimerStarted {
                    step: 3,
                    fire_at_ms: 9
                })
            )
        );
    }

    #[test]
    fn a_timer_starts_once_and_fires_once() {
        let mut entry = RecordedStep::new(StepKind::Timer, NAME);
        let started = EventKind::TimerStarted {
            step: 1,
            fire_at_ms: 7,
        };
        apply(&mut entry, &started).unwrap();
        assert_eq!(entry.deadline_ms, Some(7));
        assert!(apply(&mut entry, &started).is_err());
        apply(&mut entry, &fired(1)).unwrap();
        assert_eq!(entry.outcome, Some(RecordedOutcome::TimerFired));
    }
}
