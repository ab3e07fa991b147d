//! A notification the workflow asks for (`ctx.notify`): `Notified` records its topic
//! (the step's name) and body (its input, checked on replay) and is its own outcome. The
//! host delivers it through the outbox; the run does not wait for the delivery.
//!
//! States: recorded.

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::codec::Payload;
use crate::event::{EventKind, StepNo};

pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    match event {
        EventKind::Notified { step, topic, .. } => Some(Route {
            step: *step,
            kind: StepKind::Notice,
            name: topic,
            opens: true,
        }),
        _ => None,
    }
}

pub(crate) fn apply(entry: &mut RecordedStep, event: &EventKind) -> Result<(), String> {
    match event {
        EventKind::Notified { body, .. } => {
            entry.input = Some(body.clone());
            entry.finish(RecordedOutcome::Noticed);
            Ok(())
        }
        other => Err(unexpected(entry.kind, other)),
    }
}

/// The event recording notification `topic` with `body` at step `step`.
pub fn notified(step: StepNo, topic: &str, body: Payload) -> EventKind {
    EventKind::Notified {
        step,
        topic: topic.to_owned(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_is_its_own_outcome() {
        let mut entry = RecordedStep::new(StepKind::Notice, "loan.rejected");
        let event = notified(4, "loan.rejected", Payload::new(0, b"{}".to_vec()));
        apply(&mut entry, &event).unwrap();
        assert_eq!(entry.outcome, Some(RecordedOutcome::Noticed));
        assert_eq!(entry.input, Some(Payload::new(0, b"{}".to_vec())));
    }
}
