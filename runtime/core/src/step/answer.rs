//! The answer to an update (`ctx.update` took the request, the workflow answers it):
//! `UpdateAnswered` records the update's name (the step's name), the request's key and
//! the response or the rejection (the step's input, checked on replay), and is its own
//! outcome. The caller waiting on the host gets the answer once it is durable.
//!
//! States: recorded.

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::codec::Payload;
use crate::event::{EventKind, StepNo};

pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    match event {
        EventKind::UpdateAnswered { step, name, .. } => Some(Route {
            step: *step,
            kind: StepKind::Answer,
            name,
            opens: true,
        }),
        _ => None,
    }
}

pub(crate) fn apply(entry: &mut RecordedStep, event: &EventKind) -> Result<(), String> {
    match event {
        EventKind::UpdateAnswered { key, response, .. } => {
            entry.input = Some(compared(key, response));
            entry.finish(RecordedOutcome::Answered);
            Ok(())
        }
        other => Err(unexpected(entry.kind, other)),
    }
}

/// What replay compares for an answer step: the request's key and the answer, so a
/// changed answer (or an answer to another request) is caught as non-determinism.
pub fn compared(key: &str, response: &Result<Payload, String>) -> Payload {
    let (verdict, codec, body): (&[u8], u8, &[u8]) = match response {
        Ok(payload) => (b"ok", payload.codec, &payload.data),
        Err(reason) => (b"rejected", 0, reason.as_bytes()),
    };
    let mut bytes = Vec::with_capacity(key.len() + body.len() + 16);
    for part in [key.as_bytes(), verdict, &[codec], body] {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part);
    }
    Payload::new(0, bytes)
}

/// The event answering the update `name` whose request carried `key`, at step `step`.
pub fn answered(
    step: StepNo,
    name: &str,
    key: &str,
    response: Result<Payload, String>,
) -> EventKind {
    EventKind::UpdateAnswered {
        step,
        name: name.to_owned(),
        key: key.to_owned(),
        response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_its_own_outcome_and_replay_compares_key_and_verdict() {
        let mut entry = RecordedStep::new(StepKind::Answer, "change_address");
        let ok = Ok(Payload::new(1, b"\"ok\"".to_vec()));
        apply(
            &mut entry,
            &answered(3, "change_address", "u-1", ok.clone()),
        )
        .unwrap();
        assert_eq!(entry.outcome, Some(RecordedOutcome::Answered));
        assert_eq!(entry.input, Some(compared("u-1", &ok)));
        assert_ne!(compared("u-1", &ok), compared("u-2", &ok));
        assert_ne!(
            compared("u-1", &Err("ok".into())),
            compared("u-1", &Ok(Payload::new(0, b"ok".to_vec())))
        );
    }
}
