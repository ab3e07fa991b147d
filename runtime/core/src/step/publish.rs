//! A published value (`ctx.publish`): `StatePublished` records the query's name (the
//! step's name) and the value (its input, checked on replay), and is its own outcome. A
//! query reads the latest one from the history without running the workflow.
//!
//! States: recorded.

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::codec::Payload;
use crate::event::{EventKind, StepNo};

pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    match event {
        EventKind::StatePublished { step, name, .. } => Some(Route {
            step: *step,
            kind: StepKind::Publish,
            name,
            opens: true,
        }),
        _ => None,
    }
}

pub(crate) fn apply(entry: &mut RecordedStep, event: &EventKind) -> Result<(), String> {
    match event {
        EventKind::StatePublished { value, .. } => {
            entry.input = Some(value.clone());
            entry.finish(RecordedOutcome::Published);
            Ok(())
        }
        other => Err(unexpected(entry.kind, other)),
    }
}

/// The event publishing `value` under `name` at step `step`.
pub fn published(step: StepNo, name: &str, value: Payload) -> EventKind {
    EventKind::StatePublished {
        step,
        name: name.to_owned(),
        value,
    }
}

/// The latest value published under `name` in a run's events, oldest first: what a
/// query answers, read from the history alone.
pub fn latest<'a>(
    events: impl DoubleEndedIterator<Item = &'a EventKind>,
    name: &str,
) -> Option<&'a Payload> {
    events.rev().find_map(|event| match event {
        EventKind::StatePublished {
            name: published,
            value,
            ..
        } if published == name => Some(value),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_reads_the_latest_value_of_its_name() {
        let value = |text: &str| Payload::new(1, text.as_bytes().to_vec());
        let events = [
            published(1, "state", value("1")),
            published(2, "other", value("x")),
            published(3, "state", value("2")),
        ];
        assert_eq!(latest(events.iter(), "state"), Some(&value("2")));
        assert_eq!(latest(events.iter(), "other"), Some(&value("x")));
        assert_eq!(latest(events.iter(), "none"), None);
        let mut entry = RecordedStep::new(StepKind::Publish, "state");
        apply(&mut entry, &events[0]).unwrap();
        assert_eq!(entry.outcome, Some(RecordedOutcome::Published));
    }
}
