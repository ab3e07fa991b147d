//! Published search attributes (`ctx.set_attributes`, `ctx.set_stage`): one event,
//! `AttributesSet`, whose values are compared on replay like an activity's input.

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::codec::Payload;
use crate::event::{AttrValue, EventKind, StepNo};

pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    match event {
        EventKind::AttributesSet { step, .. } => Some(Route {
            step: *step,
            kind: StepKind::Attributes,
            name: "attributes",
            opens: true,
        }),
        _ => None,
    }
}

pub(crate) fn apply(entry: &mut RecordedStep, event: &EventKind) -> Result<(), String> {
    match event {
        EventKind::AttributesSet { attributes, .. } => {
            entry.input = Some(identity(attributes));
            entry.finish(RecordedOutcome::AttributesSet);
            Ok(())
        }
        other => Err(unexpected(entry.kind, other)),
    }
}

/// The attributes of an `AttributesSet` step as a comparable, readable payload (JSON-like
/// text; codec id 0), so replay checks them like an activity's input.
pub fn identity(attributes: &[(String, AttrValue)]) -> Payload {
    let text: Vec<String> = attributes
        .iter()
        .map(|(k, v)| format!("{k:?}:{v}"))
        .collect();
    Payload::new(0, format!("{{{}}}", text.join(",")).into_bytes())
}

/// The event publishing `attributes` at step `step`.
pub fn set(step: StepNo, attributes: Vec<(String, AttrValue)>) -> EventKind {
    EventKind::AttributesSet { step, attributes }
}
