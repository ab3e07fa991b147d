//! A recorded value (`ctx.now()`, `random()`, `uuid()`, `side_effect(label, ..)`): one
//! event, `SideEffect`, which is its outcome. Produced live once, replayed ever after.

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::codec::Payload;
use crate::event::{EventKind, StepNo};

pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    match event {
        EventKind::SideEffect { step, label, .. } => Some(Route {
            step: *step,
            kind: StepKind::SideEffect,
            name: label,
            opens: true,
        }),
        _ => None,
    }
}

pub(crate) fn apply(entry: &mut RecordedStep, event: &EventKind) -> Result<(), String> {
    match event {
        EventKind::SideEffect { value, .. } => {
            entry.finish(RecordedOutcome::Value(value.clone()));
            Ok(())
        }
        other => Err(unexpected(entry.kind, other)),
    }
}

/// The event recording value `value` of step `step`, labelled `label`.
pub fn recorded(step: StepNo, label: &str, value: Payload) -> EventKind {
    EventKind::SideEffect {
        step,
        label: label.to_owned(),
        value,
    }
}
