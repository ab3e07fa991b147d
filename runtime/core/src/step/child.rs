//! A child workflow (`ctx.child`): `ChildStarted` records the child's type, id and input
//! (its identity for replay checks) once the child exists; `ChildCompleted` is the
//! outcome and cannot come first.
//!
//! States: started -> completed | cancelled.

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::codec::Payload;
use crate::event::{ChildOutcome, EventKind, StepNo};

pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    match event {
        EventKind::ChildStarted {
            step,
            workflow_type,
            ..
        } => Some(Route {
            step: *step,
            kind: StepKind::Child,
            name: workflow_type,
            opens: true,
        }),
        // Named by the started event, which must come first.
        EventKind::ChildCompleted { step, .. } => Some(Route {
            step: *step,
            kind: StepKind::Child,
            name: "",
            opens: false,
        }),
        _ => None,
    }
}

pub(crate) fn apply(entry: &mut RecordedStep, event: &EventKind) -> Result<(), String> {
    match event {
        EventKind::ChildStarted {
            child_id, input, ..
        } => {
            if entry.input.is_some() {
                return Err("a child started twice".into());
            }
            entry.input = Some(identity(child_id, input));
            Ok(())
        }
        EventKind::ChildCompleted { outcome, .. } => {
            if entry.input.is_none() {
                return Err("a child completed without being started".into());
            }
            entry.finish(RecordedOutcome::Child(outcome.clone()));
            Ok(())
        }
        other => Err(unexpected(entry.kind, other)),
    }
}

/// A child step's identity for replay checks: its id and input, as one payload.
pub fn identity(child_id: &str, input: &Payload) -> Payload {
    let mut data = format!("{child_id:?}:").into_bytes();
    data.extend_from_slice(&input.data);
    Payload::new(input.codec, data)
}

/// The event recording that child `child_id` of `workflow_type` exists for step `step`.
pub fn started(step: StepNo, workflow_type: &str, child_id: &str, input: Payload) -> EventKind {
    EventKind::ChildStarted {
        step,
        workflow_type: workflow_type.to_owned(),
        child_id: child_id.to_owned(),
        input,
    }
}

/// The outcome event once child `child_id` ended with `outcome`.
pub fn completed(step: StepNo, child_id: &str, outcome: ChildOutcome) -> EventKind {
    EventKind::ChildCompleted {
        step,
        child_id: child_id.to_owned(),
        outcome,
    }
}
