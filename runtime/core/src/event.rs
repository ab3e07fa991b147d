//! The event model and its on-disk envelope (specified byte by byte in
//! `docs/EVENT_FORMAT.md`).
//!
//! An envelope is one format-version byte followed by the postcard encoding of an
//! [`EventRecord`]. The SHA-256 of the whole envelope is the event's hash; the next event
//! of the same instance carries it as `prev_hash`, which makes each history a hash chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::Payload;
use crate::task::{Actor, TaskChange, TaskSpec};

/// The envelope format this build writes. Readers accept exactly the versions they know:
/// 1 (no actor) and 2 (an actor after the kind).
pub const FORMAT_VERSION: u8 = 2;

/// The first envelope format, read as an [`EventRecord`] with no actor.
pub const FORMAT_VERSION_1: u8 = 1;

/// Largest envelope Cairn writes or accepts, in bytes. A step whose payloads exceed it is
/// refused before anything is appended (see [`crate::Error::PayloadTooLarge`]).
pub const EVENT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// SHA-256 of an envelope.
pub type EventHash = [u8; 32];

/// The hash a first event points back to.
pub const GENESIS_HASH: EventHash = [0; 32];

/// Index of a durable call within one run of a workflow: the n-th call on `Ctx` gets step n
/// (starting at 1), assigned when the call is made, so it is the same on every replay.
pub type StepNo = u32;

/// One entry of the log, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Internal key of the instance (a UUIDv7 as a big-endian `u128`).
    pub instance: u128,
    /// Position in the instance's history: 0, 1, 2, ... without gaps.
    pub seq: u64,
    /// LSN of the instance's previous event (`None` for `seq == 0`).
    pub prev_lsn: Option<u64>,
    /// Hash of the instance's previous event ([`GENESIS_HASH`] for `seq == 0`).
    pub prev_hash: EventHash,
    /// Wall-clock time of the commit that wrote this event, milliseconds since the Unix epoch.
    /// Informational (audit); replay never reads it.
    pub recorded_at_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// Who caused it from outside, if someone did (a start, a signal, a cancellation, a
    /// termination, a task's change through the host API); `None` for what the run
    /// records itself and for calls of the hosting program that name no actor. Envelope
    /// format 2; format-1 events read as `None`.
    pub actor: Option<Actor>,
}

/// An event as envelope format 1 stored it: the same fields, no actor.
#[derive(Deserialize)]
struct RecordV1 {
    instance: u128,
    seq: u64,
    prev_lsn: Option<u64>,
    prev_hash: EventHash,
    recorded_at_ms: u64,
    kind: EventKind,
}

/// What one event records.
///
/// Variants are only ever appended to this enum (postcard numbers them by position), and
/// each change is listed in `docs/EVENT_FORMAT.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// An instance was started. Always `seq == 0`.
    WorkflowStarted {
        /// Registered name of the workflow type.
        workflow_type: String,
        /// The user-chosen instance id.
        id: String,
        /// The workflow's input.
        input: Payload,
    },
    /// An activity step finished successfully.
    ActivityCompleted {
        /// The step.
        step: StepNo,
        /// Activity name.
        activity: String,
        /// The activity's input.
        input: Payload,
        /// The attempt that succeeded (1 for the first).
        attempt: u32,
        /// The result.
        output: Payload,
    },
    /// One attempt of an activity failed and another will be made.
    ActivityAttemptFailed {
        /// The step.
        step: StepNo,
        /// Activity name.
        activity: String,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: ActivityErrorRecord,
        /// Delay before the next attempt, in milliseconds.
        retry_in_ms: u64,
    },
    /// An activity step failed for good (terminal error or attempts exhausted).
    ActivityFailed {
        /// The step.
        step: StepNo,
        /// Activity name.
        activity: String,
        /// The activity's input.
        input: Payload,
        /// The last attempt made.
        attempt: u32,
        /// The last error.
        error: ActivityErrorRecord,
    },
    /// A recorded non-deterministic value: `now`, `random`, `uuid` or a named side effect.
    SideEffect {
        /// The step.
        step: StepNo,
        /// `"now"`, `"random"`, `"uuid"` or the user's side-effect name.
        label: String,
        /// The value.
        value: Payload,
    },
    /// The workflow returned `Ok`.
    WorkflowCompleted {
        /// Its output.
        output: Payload,
    },
    /// The workflow returned `Err`.
    WorkflowFailed {
        /// Its error value.
        error: Payload,
    },
    /// A durable timer was set (`ctx.sleep`). Recorded before the workflow waits, so a
    /// restart keeps the original deadline.
    TimerStarted {
        /// The step.
        step: StepNo,
        /// When it fires, ms since the Unix epoch (runtime clock).
        fire_at_ms: u64,
    },
    /// The timer of `step` fired.
    TimerFired {
        /// The step.
        step: StepNo,
    },
    /// A signal arrived from outside (`Runtime::signal`). It waits in the instance's
    /// inbox until a signal wait takes it.
    SignalReceived {
        /// Signal name.
        name: String,
        /// Its body.
        payload: Payload,
    },
    /// A signal wait with a deadline began (`ctx.signal_or_timeout`). Waits without a
    /// deadline record no start.
    SignalWaitStarted {
        /// The step.
        step: StepNo,
        /// Signal name.
        name: String,
        /// When the wait gives up, ms since the Unix epoch.
        deadline_ms: u64,
    },
    /// The wait of `step` took the signal recorded at sequence `signal_seq`.
    SignalDelivered {
        /// The step.
        step: StepNo,
        /// Signal name.
        name: String,
        /// `seq` of the [`EventKind::SignalReceived`] event delivered.
        signal_seq: u64,
    },
    /// The wait of `step` reached its deadline without a signal.
    SignalWaitTimedOut {
        /// The step.
        step: StepNo,
        /// Signal name.
        name: String,
    },
    /// The run took the new code path of patch `patch_id` (`ctx.patched`). Histories
    /// recorded before the patch lack this marker and keep the old path on replay.
    PatchMarker {
        /// The step.
        step: StepNo,
        /// The patch's id.
        patch_id: String,
    },
    /// The instance was stopped from outside (`Runtime::terminate`) without running any
    /// more workflow code. Ends the instance.
    WorkflowTerminated {
        /// Why, as given by the caller.
        reason: String,
    },
    /// The workflow published searchable attributes (`ctx.set_attributes`,
    /// `ctx.set_stage`); each overwrites the attribute of the same name.
    AttributesSet {
        /// The step.
        step: StepNo,
        /// Names and values, in the order given.
        attributes: Vec<(String, AttrValue)>,
    },
    /// Cancellation was requested from outside (`Runtime::cancel`). The workflow sees it
    /// at its next durable wait, which ends with [`EventKind::StepCancelled`].
    CancelRequested {
        /// Why, as given by the caller.
        reason: String,
    },
    /// Step `step` ended because of the requested cancellation.
    StepCancelled {
        /// The step.
        step: StepNo,
        /// What kind of step it was: `"activity"`, `"timer"` or `"signal"`.
        step_kind: String,
        /// Its name (activity name, `"sleep"`, signal name).
        name: String,
        /// The cancellation's reason.
        reason: String,
    },
    /// A child workflow was started (or found already started) for step `step`.
    ChildStarted {
        /// The step.
        step: StepNo,
        /// The child's workflow type.
        workflow_type: String,
        /// The child's instance id.
        child_id: String,
        /// The child's input.
        input: Payload,
    },
    /// The child workflow of step `step` finished.
    ChildCompleted {
        /// The step.
        step: StepNo,
        /// The child's instance id.
        child_id: String,
        /// How it ended.
        outcome: ChildOutcome,
    },
    /// The run ended by continuing as a new run of the same instance id with `input`
    /// and a fresh history (`ctx.continue_as_new`). Ends this run.
    WorkflowContinuedAsNew {
        /// The new run's input.
        input: Payload,
        /// Internal key of the new run.
        next_run: u128,
    },
    /// The workflow dropped step `step` before it finished (the losing branch of a
    /// `select!`, the rest of a `try_join!` after an error). Replay never resolves that
    /// step again, so the branch that won before wins again; whatever the step recorded
    /// (even an outcome committed while it was being dropped) is never used.
    StepAbandoned {
        /// The step.
        step: StepNo,
    },
    /// This run continues run `previous_run` of the same id (`ctx.continue_as_new`); it
    /// is run number `run` of the chain (the first run is 1 and records no such event).
    /// Written right after the run's `WorkflowStarted`, in the same commit.
    RunContinued {
        /// Internal key of the run that handed over.
        previous_run: u128,
        /// This run's position in the chain, from 2.
        run: u32,
    },
    /// The host stopped driving the instance because it cannot run on that build (a
    /// divergence, an unknown type, a payload that does not decode, a panic). A note for
    /// operators and auditors, not a step: replay skips it, and the instance is tried
    /// again at the next open, where its next event (or its end) clears the parking.
    WorkflowParked {
        /// The stable code of the error (`"CAIRN-E0001"`).
        code: String,
        /// The error's message.
        reason: String,
    },
    /// A human task was created for step `step` (`ctx.human_task`); the run waits for its
    /// [`EventKind::TaskCompleted`].
    TaskCreated {
        /// The step.
        step: StepNo,
        /// The task as created.
        task: Box<TaskSpec>,
    },
    /// The open task of step `step` changed: claimed, released, delegated, commented on
    /// (by a person, from outside), or escalated (by the run, actor `cairn`).
    TaskChanged {
        /// The step.
        step: StepNo,
        /// Who changed it.
        actor: Actor,
        /// What changed.
        change: TaskChange,
    },
    /// The task of step `step` was completed with `decision`: by a person, or by
    /// escalation tier `escalation` taking its default decision. The step's outcome.
    TaskCompleted {
        /// The step.
        step: StepNo,
        /// Who completed it (`cairn` for an escalation).
        actor: Actor,
        /// The decision, validated against the task's schema before it was recorded.
        decision: Payload,
        /// The escalation tier that decided, if one did.
        escalation: Option<u32>,
    },
    /// The workflow asked for a notification (`ctx.notify`): `topic` and `body` go to
    /// the host's notifier through the durable outbox.
    Notified {
        /// The step.
        step: StepNo,
        /// The workflow's topic (`"loan.rejected"`).
        topic: String,
        /// What to tell.
        body: Payload,
    },
    /// A document (a new version of it) was attached to the instance from outside; its
    /// bytes are stored once per content, by SHA-256, beside the log.
    DocumentAttached {
        /// The version.
        document: crate::document::DocumentVersion,
    },
    /// A signal (or an update's request) sent with a dedupe key: while this run holds an
    /// event with the same key, another send with it records nothing. Otherwise as
    /// [`EventKind::SignalReceived`]: it waits in the inbox until a wait takes it.
    KeyedSignalReceived {
        /// Signal (or update) name.
        name: String,
        /// Its body.
        payload: Payload,
        /// The sender's dedupe key (an update's id).
        key: String,
    },
    /// The workflow answered the update whose request carried `key` (`Ok`: accepted,
    /// with its response; `Err`: rejected, with the reason). The caller waiting for the
    /// answer gets it once this is durable.
    UpdateAnswered {
        /// The step.
        step: StepNo,
        /// The update's name.
        name: String,
        /// The request's key (its update id).
        key: String,
        /// The answer.
        response: Result<Payload, String>,
    },
    /// The workflow published `value` under `name` (`ctx.publish`): what a query of that
    /// name reads, from the history, without running the workflow.
    StatePublished {
        /// The step.
        step: StepNo,
        /// The query's name.
        name: String,
        /// The value.
        value: Payload,
    },
    /// The workflow took the end of the human task of step `step`: its decision
    /// ([`EventKind::TaskCompleted`]) or its cancellation ([`EventKind::StepCancelled`]),
    /// both recorded before. Written by the run, where the end reached the workflow in
    /// the order of its outcomes; replay hands the end back at this place, not at the
    /// decision's, which a person recorded whenever they acted.
    TaskTaken {
        /// The step.
        step: StepNo,
    },
}

/// How a child workflow ended, as its parent recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildOutcome {
    /// It returned `Ok`; its output.
    Completed(Payload),
    /// It returned `Err`; its error value.
    Failed(Payload),
    /// It was terminated, with this reason.
    Terminated(String),
}

/// The value of a searchable attribute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AttrValue {
    /// Text (a customer, a stage, a department).
    Text(String),
    /// A whole number (an amount in cents, a priority).
    Int(i64),
    /// A flag.
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(value: &str) -> Self {
        AttrValue::Text(value.to_owned())
    }
}

impl From<String> for AttrValue {
    fn from(value: String) -> Self {
        AttrValue::Text(value)
    }
}

impl From<i64> for AttrValue {
    fn from(value: i64) -> Self {
        AttrValue::Int(value)
    }
}

impl From<bool> for AttrValue {
    fn from(value: bool) -> Self {
        AttrValue::Bool(value)
    }
}

impl std::fmt::Display for AttrValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrValue::Text(text) => write!(f, "{text:?}"),
            AttrValue::Int(n) => write!(f, "{n}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl EventKind {
    /// The step this event belongs to, for step events.
    pub fn step(&self) -> Option<StepNo> {
        match self {
            EventKind::ActivityCompleted { step, .. }
            | EventKind::ActivityAttemptFailed { step, .. }
            | EventKind::ActivityFailed { step, .. }
            | EventKind::SideEffect { step, .. }
            | EventKind::TimerStarted { step, .. }
            | EventKind::TimerFired { step }
            | EventKind::SignalWaitStarted { step, .. }
            | EventKind::SignalDelivered { step, .. }
            | EventKind::SignalWaitTimedOut { step, .. }
            | EventKind::PatchMarker { step, .. }
            | EventKind::AttributesSet { step, .. }
            | EventKind::StepCancelled { step, .. }
            | EventKind::ChildStarted { step, .. }
            | EventKind::ChildCompleted { step, .. }
            | EventKind::StepAbandoned { step }
            | EventKind::TaskCreated { step, .. }
            | EventKind::TaskChanged { step, .. }
            | EventKind::TaskCompleted { step, .. }
            | EventKind::Notified { step, .. }
            | EventKind::UpdateAnswered { step, .. }
            | EventKind::StatePublished { step, .. }
            | EventKind::TaskTaken { step } => Some(*step),
            EventKind::WorkflowStarted { .. }
            | EventKind::WorkflowCompleted { .. }
            | EventKind::WorkflowFailed { .. }
            | EventKind::SignalReceived { .. }
            | EventKind::WorkflowTerminated { .. }
            | EventKind::CancelRequested { .. }
            | EventKind::WorkflowContinuedAsNew { .. }
            | EventKind::RunContinued { .. }
            | EventKind::WorkflowParked { .. }
            | EventKind::DocumentAttached { .. }
            | EventKind::KeyedSignalReceived { .. } => None,
        }
    }

    /// Whether this event ends the instance.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::WorkflowCompleted { .. }
                | EventKind::WorkflowFailed { .. }
                | EventKind::WorkflowTerminated { .. }
                | EventKind::WorkflowContinuedAsNew { .. }
        )
    }

    /// Short name of the variant, for messages and exports.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::WorkflowStarted { .. } => "WorkflowStarted",
            EventKind::ActivityCompleted { .. } => "ActivityCompleted",
            EventKind::ActivityAttemptFailed { .. } => "ActivityAttemptFailed",
            EventKind::ActivityFailed { .. } => "ActivityFailed",
            EventKind::SideEffect { .. } => "SideEffect",
            EventKind::WorkflowCompleted { .. } => "WorkflowCompleted",
            EventKind::WorkflowFailed { .. } => "WorkflowFailed",
            EventKind::TimerStarted { .. } => "TimerStarted",
            EventKind::TimerFired { .. } => "TimerFired",
            EventKind::SignalReceived { .. } => "SignalReceived",
            EventKind::SignalWaitStarted { .. } => "SignalWaitStarted",
            EventKind::SignalDelivered { .. } => "SignalDelivered",
            EventKind::SignalWaitTimedOut { .. } => "SignalWaitTimedOut",
            EventKind::PatchMarker { .. } => "PatchMarker",
            EventKind::WorkflowTerminated { .. } => "WorkflowTerminated",
            EventKind::AttributesSet { .. } => "AttributesSet",
            EventKind::CancelRequested { .. } => "CancelRequested",
            EventKind::StepCancelled { .. } => "StepCancelled",
            EventKind::ChildStarted { .. } => "ChildStarted",
            EventKind::ChildCompleted { .. } => "ChildCompleted",
            EventKind::WorkflowContinuedAsNew { .. } => "WorkflowContinuedAsNew",
            EventKind::StepAbandoned { .. } => "StepAbandoned",
            EventKind::RunContinued { .. } => "RunContinued",
            EventKind::WorkflowParked { .. } => "WorkflowParked",
            EventKind::TaskCreated { .. } => "TaskCreated",
            EventKind::TaskChanged { .. } => "TaskChanged",
            EventKind::TaskCompleted { .. } => "TaskCompleted",
            EventKind::Notified { .. } => "Notified",
            EventKind::DocumentAttached { .. } => "DocumentAttached",
            EventKind::KeyedSignalReceived { .. } => "KeyedSignalReceived",
            EventKind::UpdateAnswered { .. } => "UpdateAnswered",
            EventKind::StatePublished { .. } => "StatePublished",
            EventKind::TaskTaken { .. } => "TaskTaken",
        }
    }

    /// A signal that arrived from outside: its name, body and dedupe key, for
    /// [`EventKind::SignalReceived`] and [`EventKind::KeyedSignalReceived`].
    pub fn received_signal(&self) -> Option<(&str, &Payload, Option<&str>)> {
        match self {
            EventKind::SignalReceived { name, payload } => Some((name, payload, None)),
            EventKind::KeyedSignalReceived { name, payload, key } => {
                Some((name, payload, Some(key)))
            }
            _ => None,
        }
    }
}

/// An activity error as recorded in history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityErrorRecord {
    /// Machine-readable kind (`"timeout"`, `"panic"`, or the activity's own).
    pub kind: String,
    /// Human-readable message.
    pub message: String,
    /// Whether the activity said another attempt could succeed.
    pub retryable: bool,
}

/// Why an envelope could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Zero bytes.
    #[error("empty event envelope")]
    Empty,
    /// Larger than [`EVENT_BYTES_MAX`].
    #[error("event envelope of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Written by a format this build does not know (a newer Cairn).
    #[error("event format version {found} is not supported (this build reads versions 1 to {supported}); open the file with the Cairn release that wrote it or a newer one")]
    UnsupportedVersion {
        /// Version byte found.
        found: u8,
        /// Version this build reads.
        supported: u8,
    },
    /// The body is not a valid record.
    #[error("event body does not decode: {0}")]
    Body(String),
    /// Bytes follow the record.
    #[error("{0} unexpected trailing bytes after the event record")]
    Trailing(usize),
}

impl EventRecord {
    /// Writes the envelope: version byte, then the postcard record.
    ///
    /// # Errors
    /// Only if postcard fails to serialize (it does not for these types) or the envelope
    /// would exceed [`EVENT_BYTES_MAX`].
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(128);
        out.push(FORMAT_VERSION);
        let out =
            postcard::to_extend(self, out).map_err(|err| DecodeError::Body(err.to_string()))?;
        if out.len() > EVENT_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                len: out.len(),
                max: EVENT_BYTES_MAX,
            });
        }
        Ok(out)
    }

    /// Writes the envelope in format `version`: [`FORMAT_VERSION`], or
    /// [`FORMAT_VERSION_1`] for a record with no actor, byte for byte as builds before
    /// envelope version 2 wrote it (what an auditor re-encoding an old history compares).
    ///
    /// # Errors
    /// [`DecodeError::UnsupportedVersion`] for another version, or version 1 with an
    /// actor (it has no field for one); otherwise as [`EventRecord::encode`].
    pub fn encode_as(&self, version: u8) -> Result<Vec<u8>, DecodeError> {
        match (version, &self.actor) {
            (FORMAT_VERSION, _) => self.encode(),
            (FORMAT_VERSION_1, None) => {
                let mut out = self.encode()?;
                // Version 2 is version 1 with a trailing `actor`, here `None` (one byte).
                out.pop();
                out[0] = FORMAT_VERSION_1;
                Ok(out)
            }
            (found, _) => Err(DecodeError::UnsupportedVersion {
                found,
                supported: FORMAT_VERSION,
            }),
        }
    }

    /// Reads an envelope. Never panics, whatever the bytes.
    ///
    /// # Errors
    /// A [`DecodeError`] saying which part is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if bytes.len() > EVENT_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: EVENT_BYTES_MAX,
            });
        }
        let (record, rest) = match version {
            FORMAT_VERSION => postcard::take_from_bytes::<EventRecord>(body)
                .map_err(|err| DecodeError::Body(err.to_string()))?,
            FORMAT_VERSION_1 => {
                let (old, rest) = postcard::take_from_bytes::<RecordV1>(body)
                    .map_err(|err| DecodeError::Body(err.to_string()))?;
                let record = EventRecord {
                    instance: old.instance,
                    seq: old.seq,
                    prev_lsn: old.prev_lsn,
                    prev_hash: old.prev_hash,
                    recorded_at_ms: old.recorded_at_ms,
                    kind: old.kind,
                    actor: None,
                };
                (record, rest)
            }
            found => {
                return Err(DecodeError::UnsupportedVersion {
                    found,
                    supported: FORMAT_VERSION,
                })
            }
        };
        if !rest.is_empty() {
            return Err(DecodeError::Trailing(rest.len()));
        }
        Ok(record)
    }
}

impl EventRecord {
    /// Reads only the head of an envelope (instance, sequence number, previous LSN): what
    /// a store needs to walk a history backwards without decoding every payload twice.
    ///
    /// # Errors
    /// A [`DecodeError`] if the head does not decode; the rest is not checked.
    pub fn peek_link(bytes: &[u8]) -> Result<(u128, u64, Option<u64>), DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        // postcard writes a struct's fields in order, so the first three are a tuple.
        postcard::take_from_bytes::<(u128, u64, Option<u64>)>(body)
            .map(|(head, _)| head)
            .map_err(|err| DecodeError::Body(err.to_string()))
    }
}

/// The hash of an envelope: SHA-256 over all its bytes, version byte included.
pub fn hash_envelope(envelope: &[u8]) -> EventHash {
    Sha256::digest(envelope).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> EventRecord {
        EventRecord {
            instance: 0x0192_0000_0000_7000_8000_0000_0000_0001,
            seq: 3,
            prev_lsn: Some(41),
            prev_hash: [7; 32],
            recorded_at_ms: 1_764_000_000_000,
            kind: EventKind::ActivityCompleted {
                step: 2,
                activity: "reserve_stock".into(),
                input: Payload::new(0, br#"{"sku":"A"}"#.to_vec()),
                attempt: 1,
                output: Payload::new(0, b"true".to_vec()),
            },
            actor: None,
        }
    }

    #[test]
    fn a_format_1_envelope_reads_with_no_actor_and_format_2_keeps_it() {
        let mut record = sample();
        // Format 1 is format 2 without the trailing actor: the same bytes but the last
        // (an empty option) and the version.
        let mut v1 = record.encode().unwrap();
        assert_eq!(v1.pop(), Some(0));
        v1[0] = FORMAT_VERSION_1;
        assert_eq!(EventRecord::decode(&v1).unwrap(), record);
        assert_eq!(
            EventRecord::peek_link(&v1).unwrap(),
            (record.instance, 3, Some(41))
        );
        record.actor = Some(Actor::new("alice", ["clerk"]));
        let v2 = record.encode().unwrap();
        assert_eq!(EventRecord::decode(&v2).unwrap(), record);
    }

    #[test]
    fn round_trip() {
        let record = sample();
        let bytes = record.encode().unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(EventRecord::decode(&bytes).unwrap(), record);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(
                EventRecord::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn newer_version_is_named() {
        let mut bytes = sample().encode().unwrap();
        bytes[0] = 9;
        assert_eq!(
            EventRecord::decode(&bytes),
            Err(DecodeError::UnsupportedVersion {
                found: 9,
                supported: FORMAT_VERSION
            })
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sample().encode().unwrap();
        bytes.push(0);
        assert_eq!(EventRecord::decode(&bytes), Err(DecodeError::Trailing(1)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = EventRecord::decode(&bytes);
            let mut versioned = bytes.clone();
            versioned.insert(0, FORMAT_VERSION);
            let _ = EventRecord::decode(&versioned);
        }

        #[test]
        fn mutated_envelopes_never_panic(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
            let mut bytes = sample().encode().unwrap();
            let pos = pos % bytes.len();
            bytes[pos] = byte;
            bytes.truncate(cut.max(1));
            let _ = EventRecord::decode(&bytes);
        }
    }
}
