//! A version marker (`ctx.patched(id)`): one event, `PatchMarker`, recorded the first
//! time a run takes the new code path. A history recorded before the patch holds another
//! step there, and the marker is then neither asked for nor recorded.

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::event::{EventKind, StepNo};

pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    match event {
        EventKind::PatchMarker { step, patch_id } => Some(Route {
            step: *step,
            kind: StepKind::Patch,
            name: patch_id,
            opens: true,
        }),
        _ => None,
    }
}

pub(crate) fn apply(entry: &mut RecordedStep, event: &EventKind) -> Result<(), String> {
    match event {
        EventKind::PatchMarker { .. } => {
            entry.finish(RecordedOutcome::Patched);
            Ok(())
        }
        other => Err(unexpected(entry.kind, other)),
    }
}

/// The marker of patch `patch_id` at step `step`.
pub fn marker(step: StepNo, patch_id: &str) -> EventKind {
    EventKind::PatchMarker {
        step,
        patch_id: patch_id.to_owned(),
    }
}
