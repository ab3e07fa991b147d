//! Bodies of the fuzz targets in `fuzz/`, kept here so that the same code runs under
//! libFuzzer (nightly, `cargo fuzz run`) and over the committed corpus as a plain test on
//! stable (`runtime/tests/fuzz_corpus.rs`). Not part of the API: nothing outside the fuzz
//! targets and that test calls it.
//!
//! Each body returns normally for every input and panics only when a property fails (or
//! when the code under test panics): a panic is what libFuzzer reports as a crash.
//!
//! **`history_replay` input format.** The bytes are read front to back; wherever they run
//! out, the rest counts as absent (a zero byte, an empty frame), so every input is valid:
//!
//! | part | bytes | meaning |
//! | --- | --- | --- |
//! | flags | 1 | bit 0: repair the chain (see below); bits 1-7: unused |
//! | tamper | 1 | index (modulo the history length) of the event the chain checks damage |
//! | frame count | 1 | number of frames that follow, at most [`HISTORY_EVENTS_MAX`] |
//! | frames | ... | each a tag byte, then: even tag: an envelope, `u16` little-endian length and that many bytes; odd tag: a made-up event, 4 bytes (kind, step, name, extra; see [`synthetic_event`]) |
//! | script | rest | requests, each an op byte then its argument bytes (see [`history_replay`]) |
//!
//! Envelope frames that do not decode are left out of the history (decoding is
//! `event_decode`'s target; the store stops at such an event before replay sees it).
//! With the repair flag, the harness rewrites every record's `instance`, `seq`,
//! `prev_lsn` and `prev_hash` the way the writer assigns them, so the chain checks get
//! inputs that pass them and damage of a known kind.

use cairn_core::codec::Payload;
use cairn_core::event::{
    hash_envelope, ActivityErrorRecord, AttrValue, ChildOutcome, EventKind, EventRecord, StepNo,
    FORMAT_VERSION, GENESIS_HASH,
};
use cairn_core::journal::{verify_chain, InstanceRow, InstanceStatus, StoredEvent};
use cairn_core::replay::{Decision, History, PatchDecision, StepKind, StepRequest};
use cairn_core::task::{Actor, Candidates, EscalationAction, EscalationTier, TaskChange, TaskSpec};
use cairn_core::NonDeterminism;

/// Most events one `history_replay` input describes (its frame count is one byte).
pub const HISTORY_EVENTS_MAX: usize = u8::MAX as usize;

/// Most steps the harness walks in order, from step 0, asking for each the step that
/// history recorded. Steps above it are asked for only when they are the last step, so
/// a history whose step numbers reach `u32::MAX` costs no more than a short one.
pub const WALK_STEPS_MAX: StepNo = 512;

/// Number of event kinds [`synthetic_event`] builds, one per [`EventKind`] variant.
pub const SYNTHETIC_KINDS: u8 = 33;

/// Names made-up events and requests draw from: a few that real workflows use (so
/// recorded steps and requests meet) and the empty string.
const NAMES: [&str; 8] = [
    "sleep",
    "attributes",
    "charge",
    "ship",
    "go",
    "patch-1",
    "",
    "é",
];

/// Step kinds a request draws from.
const STEP_KINDS: [StepKind; 7] = [
    StepKind::Activity,
    StepKind::SideEffect,
    StepKind::Timer,
    StepKind::Signal,
    StepKind::Patch,
    StepKind::Attributes,
    StepKind::Child,
];

/// Decodes `data` as an event envelope. Properties: decoding never panics; a record
/// that decodes re-encodes, the re-encoding decodes to the same record and re-encodes to
/// the same bytes, and it is no longer than `data` (the writer's varints are minimal, the
/// reader's may be longer).
pub fn event_decode(data: &[u8]) {
    let record = match EventRecord::decode(data) {
        Ok(record) => record,
        Err(err) => {
            // The message is part of the contract (it reaches operators): build it too.
            let _ = err.to_string();
            return;
        }
    };
    // In the envelope's own version: a version-1 record re-encodes as version 1.
    let version = data.first().copied().unwrap_or(FORMAT_VERSION);
    let bytes = match record.encode_as(version) {
        Ok(bytes) => bytes,
        Err(err) => panic!("a decoded record does not re-encode: {err}; record {record:?}"),
    };
    assert!(
        bytes.len() <= data.len(),
        "re-encoding grew from {} to {} bytes",
        data.len(),
        bytes.len()
    );
    let again = match EventRecord::decode(&bytes) {
        Ok(again) => again,
        Err(err) => panic!("a re-encoded record does not decode: {err}; record {record:?}"),
    };
    assert_eq!(again, record, "decode(encode(record)) differs from record");
    match again.encode_as(version) {
        Ok(bytes_again) => assert_eq!(bytes_again, bytes, "encoding is not deterministic"),
        Err(err) => panic!("a record encoded once does not encode again: {err}"),
    }
}

/// Builds a history from `data` (format in the module doc), checks it as the store does
/// (`verify_chain`), indexes it as replay does (`History::from_records`) and asks it for
/// steps as the engine does (`check`, `patch`, `check_finished`).
///
/// Properties: nothing panics; a repaired chain that starts with `WorkflowStarted`
/// verifies, and editing any one of its events, or dropping any but the last one, is
/// detected; a step asked for exactly as history recorded it replays (or runs, when it
/// has no outcome); every non-determinism error names at least one differing field.
///
/// Script ops (op byte modulo 3; a step argument is one byte, where 251-255 mean
/// `u32::MAX - 4` to `u32::MAX`):
/// - 0: `check(step, request)`, then kind, name and input bytes (input 0: none);
/// - 1: `patch(step, name)`, then a name byte;
/// - 2: `check_finished(step)`.
pub fn history_replay(data: &[u8]) {
    let mut input = Cursor { data };
    let flags = input.byte();
    let tamper = input.byte();
    let repair = flags & 1 == 1;
    let frame_count = input.byte();

    let mut records = Vec::with_capacity(usize::from(frame_count));
    let mut envelopes = Vec::with_capacity(usize::from(frame_count));
    for index in 0..u64::from(frame_count) {
        let tag = input.byte();
        if tag & 1 == 0 {
            let len = u16::from_le_bytes([input.byte(), input.byte()]);
            let envelope = input.take(usize::from(len));
            if let Ok(record) = EventRecord::decode(envelope) {
                records.push(record);
                envelopes.push(envelope.to_vec());
            }
        } else {
            let (kind, step, name, extra) =
                (input.byte(), input.byte(), input.byte(), input.byte());
            let record = EventRecord {
                instance: 1,
                seq: index,
                prev_lsn: None,
                prev_hash: GENESIS_HASH,
                recorded_at_ms: 0,
                kind: synthetic_event(kind, step_number(step), name_at(name), extra),
                // Some events from outside name their actor (envelope format 2).
                actor: (extra & 1 == 1)
                    .then(|| cairn_core::task::Actor::new(name_at(name), [name_at(extra)])),
            };
            if let Ok(envelope) = record.encode() {
                records.push(record);
                envelopes.push(envelope);
            }
        }
    }

    let events = if repair {
        match repaired_chain(records) {
            Some(events) => events,
            // Only an envelope over EVENT_BYTES_MAX fails to encode; fuzz inputs are far
            // smaller, but the harness must not assume it.
            None => return,
        }
    } else {
        records
            .into_iter()
            .zip(&envelopes)
            .zip(1..)
            .map(|((record, envelope), lsn)| StoredEvent {
                lsn,
                hash: hash_envelope(envelope),
                record,
            })
            .collect()
    };
    check_chain(&events, repair, tamper);

    let history = match History::from_records(events.iter().map(|event| &event.record)) {
        Ok(history) => history,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    walk_recorded_steps(&history);
    while !input.is_empty() {
        let op = input.byte();
        let step = step_number(input.byte());
        match op % 3 {
            0 => {
                let kind = STEP_KINDS[usize::from(input.byte()) % STEP_KINDS.len()];
                let name = name_at(input.byte());
                let step_input = match input.byte() {
                    0 => None,
                    byte => Some(payload(byte)),
                };
                let request = StepRequest {
                    kind,
                    name,
                    input: step_input.as_ref(),
                };
                if let Err(divergence) = history.check(step, request) {
                    assert_is_a_diff(&divergence);
                }
            }
            1 => {
                if let Err(divergence) = history.patch(step, name_at(input.byte())) {
                    assert_is_a_diff(&divergence);
                }
            }
            _ => {
                if let Err(divergence) = history.check_finished(step) {
                    assert_is_a_diff(&divergence);
                }
            }
        }
    }
}

/// Builds a made-up event of kind `kind` (modulo [`SYNTHETIC_KINDS`], in `EventKind`'s
/// declaration order) for `step`, with `name` wherever the kind has a name and `extra`
/// choosing payloads, attempts, deadlines, signal sequence numbers and outcomes.
pub fn synthetic_event(kind: u8, step: StepNo, name: &str, extra: u8) -> EventKind {
    let name = name.to_owned();
    let value = payload(extra);
    let small = u32::from(extra);
    let error = ActivityErrorRecord {
        kind: name.clone(),
        message: "made up".to_owned(),
        retryable: extra % 2 == 1,
    };
    match kind % SYNTHETIC_KINDS {
        0 => EventKind::WorkflowStarted {
            workflow_type: name.clone(),
            id: name,
            input: value,
        },
        1 => EventKind::ActivityCompleted {
            step,
            activity: name,
            input: value.clone(),
            attempt: small,
            output: value,
        },
        2 => EventKind::ActivityAttemptFailed {
            step,
            activity: name,
            attempt: small,
            error,
            retry_in_ms: u64::from(extra),
        },
        3 => EventKind::ActivityFailed {
            step,
            activity: name,
            input: value,
            attempt: small,
            error,
        },
        4 => EventKind::SideEffect {
            step,
            label: name,
            value,
        },
        5 => EventKind::WorkflowCompleted { output: value },
        6 => EventKind::WorkflowFailed { error: value },
        7 => EventKind::TimerStarted {
            step,
            fire_at_ms: u64::from(extra),
        },
        8 => EventKind::TimerFired { step },
        9 => EventKind::SignalReceived {
            name,
            payload: value,
        },
        10 => EventKind::SignalWaitStarted {
            step,
            name,
            deadline_ms: u64::from(extra),
        },
        11 => EventKind::SignalDelivered {
            step,
            name,
            signal_seq: u64::from(extra),
        },
        12 => EventKind::SignalWaitTimedOut { step, name },
        13 => EventKind::PatchMarker {
            step,
            patch_id: name,
        },
        14 => EventKind::WorkflowTerminated { reason: name },
        15 => EventKind::AttributesSet {
            step,
            attributes: vec![(name, AttrValue::Int(i64::from(extra)))],
        },
        16 => EventKind::CancelRequested { reason: name },
        17 => EventKind::StepCancelled {
            step,
            // Includes kinds a step cannot be cancelled in, which history must refuse.
            step_kind: ["activity", "timer", "signal", "child", "task", "patch"]
                [usize::from(extra % 6)]
            .to_owned(),
            name,
            reason: "made up".to_owned(),
        },
        18 => EventKind::ChildStarted {
            step,
            workflow_type: name.clone(),
            child_id: name,
            input: value,
        },
        19 => EventKind::ChildCompleted {
            step,
            child_id: name.clone(),
            outcome: match extra % 3 {
                0 => ChildOutcome::Completed(value),
                1 => ChildOutcome::Failed(value),
                _ => ChildOutcome::Terminated(name),
            },
        },
        20 => EventKind::WorkflowContinuedAsNew {
            input: value,
            next_run: u128::from(extra),
        },
        21 => EventKind::StepAbandoned { step },
        22 => EventKind::RunContinued {
            previous_run: u128::from(extra),
            run: small,
        },
        23 => EventKind::WorkflowParked {
            code: "CAIRN-E0001".to_owned(),
            reason: name,
        },
        24 => EventKind::TaskCreated {
            step,
            task: Box::new(synthetic_task(&name, extra)),
        },
        25 => EventKind::TaskChanged {
            step,
            actor: Actor::new(name.clone(), [name.clone()]),
            change: match extra % 6 {
                0 => TaskChange::Claimed,
                1 => TaskChange::Released,
                2 => TaskChange::Delegated { to: name },
                3 => TaskChange::Commented { text: name },
                4 => TaskChange::Overdue,
                _ => TaskChange::Escalated {
                    tier: u32::from(extra % 3),
                    reassigned: (extra & 1 == 0).then(|| Candidates {
                        users: vec![],
                        roles: vec![name],
                    }),
                },
            },
        },
        26 => EventKind::TaskCompleted {
            step,
            actor: Actor::new(name.clone(), [name]),
            decision: value,
            escalation: (extra & 1 == 0).then_some(u32::from(extra % 3)),
        },
        27 => EventKind::Notified {
            step,
            topic: name,
            body: value,
        },
        28 => EventKind::DocumentAttached {
            document: cairn_core::document::DocumentVersion {
                name,
                version: u32::from(extra % 3),
                content_type: "application/pdf".to_owned(),
                metadata: std::collections::BTreeMap::new(),
                sha256: [extra; 32],
                bytes: u64::from(extra),
                task: (extra & 1 == 1).then_some(step),
            },
        },
        29 => EventKind::KeyedSignalReceived {
            name: name.clone(),
            payload: value,
            key: format!("{name}-{}", extra % 3),
        },
        30 => EventKind::UpdateAnswered {
            step,
            name: name.clone(),
            key: format!("{name}-{}", extra % 3),
            response: if extra & 1 == 0 {
                Ok(value)
            } else {
                Err("refused".to_owned())
            },
        },
        31 => EventKind::StatePublished { step, name, value },
        _ => EventKind::TaskTaken { step },
    }
}

/// The [`synthetic_event`] kind number of `kind`. The match has no wildcard, so a new
/// `EventKind` variant stops the build here until the fuzzer can make it too.
pub fn synthetic_kind(kind: &EventKind) -> u8 {
    match kind {
        EventKind::WorkflowStarted { .. } => 0,
        EventKind::ActivityCompleted { .. } => 1,
        EventKind::ActivityAttemptFailed { .. } => 2,
        EventKind::ActivityFailed { .. } => 3,
        EventKind::SideEffect { .. } => 4,
        EventKind::WorkflowCompleted { .. } => 5,
        EventKind::WorkflowFailed { .. } => 6,
        EventKind::TimerStarted { .. } => 7,
        EventKind::TimerFired { .. } => 8,
        EventKind::SignalReceived { .. } => 9,
        EventKind::SignalWaitStarted { .. } => 10,
        EventKind::SignalDelivered { .. } => 11,
        EventKind::SignalWaitTimedOut { .. } => 12,
        EventKind::PatchMarker { .. } => 13,
        EventKind::WorkflowTerminated { .. } => 14,
        EventKind::AttributesSet { .. } => 15,
        EventKind::CancelRequested { .. } => 16,
        EventKind::StepCancelled { .. } => 17,
        EventKind::ChildStarted { .. } => 18,
        EventKind::ChildCompleted { .. } => 19,
        EventKind::WorkflowContinuedAsNew { .. } => 20,
        EventKind::StepAbandoned { .. } => 21,
        EventKind::RunContinued { .. } => 22,
        EventKind::WorkflowParked { .. } => 23,
        EventKind::TaskCreated { .. } => 24,
        EventKind::TaskChanged { .. } => 25,
        EventKind::TaskCompleted { .. } => 26,
        EventKind::Notified { .. } => 27,
        EventKind::DocumentAttached { .. } => 28,
        EventKind::KeyedSignalReceived { .. } => 29,
        EventKind::UpdateAnswered { .. } => 30,
        EventKind::StatePublished { .. } => 31,
        EventKind::TaskTaken { .. } => 32,
    }
}

/// A made-up task named `name`, open to role `name`, with up to two escalation tiers.
fn synthetic_task(name: &str, extra: u8) -> TaskSpec {
    let tiers = [
        EscalationAction::Reassign(Candidates {
            users: vec![],
            roles: vec![name.to_owned()],
        }),
        EscalationAction::Notify,
        EscalationAction::Decide(payload(extra)),
    ];
    TaskSpec {
        name: name.to_owned(),
        title: name.to_owned(),
        description: String::new(),
        input: payload(extra),
        decision_schema: "{}".to_owned(),
        candidates: Candidates {
            users: vec![],
            roles: vec![name.to_owned()],
        },
        assignee: None,
        priority: i32::from(extra),
        due_at_ms: Some(u64::from(extra)),
        follow_up_at_ms: None,
        escalation: tiers
            .into_iter()
            .take(usize::from(extra % 3))
            .enumerate()
            .map(|(i, action)| EscalationTier {
                at_ms: u64::from(extra) + i as u64,
                action,
            })
            .collect(),
    }
}

/// A `history_replay` input holding `envelopes` as envelope frames (at most
/// [`HISTORY_EVENTS_MAX`] of them, each at most `u16::MAX` bytes; longer ones are cut
/// and will not decode), followed by `script`. How the seed corpus is made from recorded
/// histories.
pub fn history_input(flags: u8, tamper: u8, envelopes: &[Vec<u8>], script: &[u8]) -> Vec<u8> {
    let envelopes = &envelopes[..envelopes.len().min(HISTORY_EVENTS_MAX)];
    let mut out = vec![flags, tamper, envelopes.len() as u8];
    for envelope in envelopes {
        let len = envelope.len().min(usize::from(u16::MAX));
        out.push(0);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&envelope[..len]);
    }
    out.extend_from_slice(script);
    out
}

/// The records as the writer would have chained them: one instance, `seq` 0.., LSN 1..,
/// each `prev_hash` the hash of the envelope before. `None` if one does not encode.
fn repaired_chain(records: Vec<EventRecord>) -> Option<Vec<StoredEvent>> {
    let instance = records.first().map_or(1, |record| record.instance);
    let mut prev_hash = GENESIS_HASH;
    let mut events: Vec<StoredEvent> = Vec::with_capacity(records.len());
    for (mut record, seq) in records.into_iter().zip(0u64..) {
        record.instance = instance;
        record.seq = seq;
        record.prev_lsn = events.last().map(|event| event.lsn);
        record.prev_hash = prev_hash;
        let envelope = record.encode().ok()?;
        prev_hash = hash_envelope(&envelope);
        events.push(StoredEvent {
            lsn: seq + 1,
            hash: prev_hash,
            record,
        });
    }
    Some(events)
}

/// The instance row the writer keeps for `events`: an index of them.
fn row_for(events: &[StoredEvent]) -> InstanceRow {
    let (id, workflow_type) = match events.first().map(|event| &event.record.kind) {
        Some(EventKind::WorkflowStarted {
            workflow_type, id, ..
        }) => (id.clone(), workflow_type.clone()),
        _ => (String::new(), String::new()),
    };
    InstanceRow {
        key: events.first().map_or(0, |event| event.record.instance),
        id,
        workflow_type,
        status: InstanceStatus::Running,
        created_at_ms: 0,
        updated_at_ms: 0,
        head_lsn: events.last().map_or(0, |event| event.lsn),
        next_seq: events.len() as u64,
        head_hash: events.last().map_or(GENESIS_HASH, |event| event.hash),
        parent: None,
        suspended: None,
    }
}

/// Runs `verify_chain` on `events`; on a repaired chain, also checks that it passes and
/// that damage to event `tamper` (modulo the length) is caught.
fn check_chain(events: &[StoredEvent], repair: bool, tamper: u8) {
    let row = row_for(events);
    let verdict = verify_chain(&row, events);
    if let Err(err) = &verdict {
        let _ = err.to_string();
    }
    let starts_right = matches!(
        events.first().map(|event| &event.record.kind),
        None | Some(EventKind::WorkflowStarted { .. })
    );
    if !repair || !starts_right {
        return;
    }
    if let Err(err) = verdict {
        panic!("a chain built as the writer builds it fails verification: {err}");
    }
    if events.is_empty() {
        return;
    }
    let victim = usize::from(tamper) % events.len();

    // An edited event gets a new hash; the event after it (or, for the last, the row)
    // still names the old one.
    let mut edited = events.to_vec();
    let record = &mut edited[victim].record;
    record.recorded_at_ms = record.recorded_at_ms.wrapping_add(1);
    match record.encode() {
        Ok(envelope) => edited[victim].hash = hash_envelope(&envelope),
        Err(_) => return,
    }
    assert!(
        verify_chain(&row, &edited).is_err(),
        "editing event {victim} of {} went unnoticed",
        events.len()
    );

    // Dropping an event, even with the row rewritten to match, breaks the sequence and
    // the links, except at the end: a history cut after its last event is consistent.
    let mut shortened = events.to_vec();
    shortened.remove(victim);
    let verdict = verify_chain(&row_for(&shortened), &shortened);
    if victim + 1 < events.len() {
        assert!(
            verdict.is_err(),
            "dropping event {victim} of {} went unnoticed",
            events.len()
        );
    }
}

/// Asks `history` for each recorded step exactly as recorded, as code that matches its
/// history does, and checks the answers.
fn walk_recorded_steps(history: &History) {
    let last = history.last_step();
    for step in (0..=last.min(WALK_STEPS_MAX)).chain(std::iter::once(last)) {
        let Some(recorded) = history.step(step) else {
            assert_eq!(
                history.check(
                    step,
                    StepRequest {
                        kind: StepKind::Activity,
                        name: "unrecorded",
                        input: None,
                    },
                ),
                Ok(Decision::Run {
                    failed_attempts: 0,
                    deadline_ms: None
                }),
                "step {step} is not recorded, so it runs"
            );
            // An abandoned step had another call there, which the recorded run dropped.
            let expected = if history.is_abandoned(step) {
                PatchDecision::OldPath
            } else {
                PatchDecision::Live
            };
            assert_eq!(
                history.patch(step, "unrecorded"),
                Ok(expected),
                "step {step} is not recorded, so a patch there is live unless it was abandoned"
            );
            continue;
        };
        let request = StepRequest {
            kind: recorded.kind,
            name: &recorded.name,
            input: recorded.input.as_ref(),
        };
        let expected = match &recorded.outcome {
            Some(outcome) => Decision::Replay(outcome),
            None => Decision::Run {
                failed_attempts: recorded.failed_attempts,
                deadline_ms: recorded.deadline_ms,
            },
        };
        assert_eq!(
            history.check(step, request),
            Ok(expected),
            "step {step} asked for as recorded"
        );
        let patch = history.patch(step, &recorded.name);
        if recorded.kind == StepKind::Patch {
            assert_eq!(patch, Ok(PatchDecision::Recorded), "patch marker at {step}");
        } else {
            assert_eq!(patch, Ok(PatchDecision::OldPath), "other step at {step}");
        }
        if let Some(before) = step.checked_sub(1) {
            match history.check_finished(before) {
                Err(divergence) => {
                    assert_eq!(divergence.step, step, "first step the code skipped");
                    assert_is_a_diff(&divergence);
                }
                Ok(()) => panic!("code that returned before step {step} was not caught"),
            }
        }
    }
    assert_eq!(
        history.check_finished(last),
        Ok(()),
        "code that asked for every step up to the last one ({last})"
    );
}

fn assert_is_a_diff(divergence: &NonDeterminism) {
    assert!(
        !divergence.diff().is_empty(),
        "a divergence with no differing field: {divergence:?}"
    );
    let _ = divergence.to_string();
}

/// A step number from one byte: mostly small, and the five highest at the top of the
/// range, where `+ 1` overflows.
fn step_number(byte: u8) -> StepNo {
    match byte {
        0..=250 => StepNo::from(byte),
        _ => StepNo::MAX - StepNo::from(u8::MAX - byte),
    }
}

fn name_at(byte: u8) -> &'static str {
    NAMES[usize::from(byte) % NAMES.len()]
}

/// A small JSON payload that differs with `byte`.
fn payload(byte: u8) -> Payload {
    Payload::new(0, byte.to_string().into_bytes())
}

/// Reads an input front to back; past its end, bytes are zero and slices empty.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&byte, rest)) => {
                self.data = rest;
                byte
            }
            None => 0,
        }
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        taken
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_can_be_made_up() {
        for kind in 0..SYNTHETIC_KINDS {
            assert_eq!(synthetic_kind(&synthetic_event(kind, 1, "a", 0)), kind);
        }
    }

    #[test]
    fn inputs_that_end_early_are_read_as_zeros() {
        for len in 0..8 {
            history_replay(&[0xff; 8][..len]);
            history_replay(&[1, 0, 3, 1][..len.min(4)]);
        }
        event_decode(&[]);
    }
}
