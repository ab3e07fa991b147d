//! What one event does to a store, decided once for every store.
//!
//! A journal's writer takes a run's head (its [`InstanceRow`] as the batch has left it)
//! and an event, and [`plan_event`] answers with everything the commit must hold for it:
//! the envelope, chained on the head; the head moved on; and what the indexes derive from
//! the event (the run's start or end, its parking, its open tasks, a notification, search
//! attributes) with the effect the host hears of. The redb and PostgreSQL writers apply
//! the same plan to their own tables, so the two can never derive differently.
//!
//! Index rows a store keeps as bytes are written with [`encode_versioned`]: one version
//! byte, then postcard.

use serde::Serialize;

use crate::error::{Error, Result, StorageFailure};
use crate::event::{
    hash_envelope, AttrValue, DecodeError, EventKind, EventRecord, EVENT_BYTES_MAX,
};
use crate::journal::{reported, Committed, InstanceRow, InstanceStatus, ParkedRow, RunEnded};
use crate::notify::{self, Notification, OutboxRow};
use crate::step::StepKind;
use crate::task::{Actor, TaskChange, TaskRow};

/// Version byte in front of every row written by [`encode_versioned`].
pub const ROW_VERSION: u8 = 1;

/// Encodes an index row: [`ROW_VERSION`], then postcard.
///
/// # Errors
/// [`Error::Storage`] if the value does not encode.
pub fn encode_versioned<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<Vec<u8>> {
    // Room for an instance row (about 120 bytes with a short id and type) up front: a
    // writer encodes one per touched run per commit, and growing from one byte cost it
    // several reallocations each.
    let mut out = Vec::with_capacity(160);
    out.push(ROW_VERSION);
    postcard::to_extend(value, out).map_err(|err| {
        Error::Storage(StorageFailure::caused_by(
            format!("{what} does not encode"),
            err,
        ))
    })
}

/// Decodes a row written by [`encode_versioned`]; damage is reported at `location`.
///
/// # Errors
/// [`Error::Corrupt`] for an empty row, another version, or bytes that do not decode.
pub fn decode_versioned<T: serde::de::DeserializeOwned>(
    location: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T> {
    let problem = match bytes.split_first() {
        None => "empty row".to_owned(),
        Some((&version, _)) if version != ROW_VERSION => {
            format!("row version {version} is not {ROW_VERSION}")
        }
        Some((_, body)) => match postcard::from_bytes(body) {
            Ok(value) => return Ok(value),
            Err(err) => err.to_string(),
        },
    };
    Err(Error::Corrupt {
        location: location(),
        message: problem,
    })
}

/// The bytes an attribute value is indexed under (postcard): equal values, equal bytes.
///
/// # Errors
/// [`Error::Storage`] if the value does not encode.
pub fn attribute_bytes(value: &AttrValue) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|err| {
        Error::Storage(StorageFailure::caused_by(
            "attribute value does not encode",
            err,
        ))
    })
}

/// An attribute value from its [`attribute_bytes`]; damage is reported at `location`.
///
/// # Errors
/// [`Error::Corrupt`] for bytes that do not decode.
pub fn decode_attribute(location: impl FnOnce() -> String, bytes: &[u8]) -> Result<AttrValue> {
    postcard::from_bytes(bytes).map_err(|err| Error::Corrupt {
        location: location(),
        message: err.to_string(),
    })
}

/// One change to an open-task index, derived from an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskIndexChange {
    /// A task was created.
    Opened(Box<TaskRow>),
    /// An open task changed hands (or was commented on, which lists nothing new).
    Changed {
        /// Its run.
        key: u128,
        /// Its step.
        step: u32,
        /// Who changed it.
        actor: Actor,
        /// What changed.
        change: TaskChange,
    },
    /// The task of `step` ended (completed, cancelled, abandoned); nothing if it had none.
    Closed {
        /// Its run.
        key: u128,
        /// Its step.
        step: u32,
    },
    /// Run `key` ended: whatever tasks it had open are closed with it.
    RunEnded {
        /// The run.
        key: u128,
    },
}

/// What a step event changes in the open-task index, if anything.
pub fn task_index_change(
    key: u128,
    row: &InstanceRow,
    kind: &EventKind,
    now: u64,
) -> Option<TaskIndexChange> {
    match kind {
        EventKind::TaskCreated { step, task } => Some(TaskIndexChange::Opened(Box::new(
            TaskRow::opened(key, &row.id, &row.workflow_type, *step, task, now),
        ))),
        EventKind::TaskChanged {
            step,
            actor,
            change,
        } => Some(TaskIndexChange::Changed {
            key,
            step: *step,
            actor: actor.clone(),
            change: change.clone(),
        }),
        EventKind::TaskCompleted { step, .. } | EventKind::StepAbandoned { step } => {
            Some(TaskIndexChange::Closed { key, step: *step })
        }
        EventKind::StepCancelled {
            step, step_kind, ..
        } if step_kind == StepKind::Task.label() => {
            Some(TaskIndexChange::Closed { key, step: *step })
        }
        _ => None,
    }
}

/// Everything one accepted event puts in a commit, beside the event itself.
#[derive(Debug)]
pub struct PlannedEvent {
    /// Its sequence number in the run's history.
    pub seq: u64,
    /// Its log position.
    pub lsn: u64,
    /// The envelope to store, chained on the run's previous head.
    pub envelope: Vec<u8>,
    /// The status it ends the run with, for a terminal event.
    pub ended: Option<InstanceStatus>,
    /// Whether it starts the run (`WorkflowStarted`): the run enters the query indexes.
    pub starts: bool,
    /// For `WorkflowParked`, why; every other event of a parked run clears its parking.
    pub parked: Option<ParkedRow>,
    /// Whether the run was suspended (evicted while waiting) until this event.
    pub woke: bool,
    /// What it changes in the open-task index.
    pub task: Option<TaskIndexChange>,
    /// The notification it calls for (its id is the event's LSN).
    pub notification: Option<OutboxRow>,
    /// The search attributes it sets, in the order given (a name given twice: the later
    /// value wins).
    pub attributes: Option<Vec<(String, AttrValue)>>,
    /// What the host hears of it.
    pub effect: Committed,
}

/// Decides event `kind` on run `row` (its head as the batch has left it) at log position
/// `lsn` and time `now`: encodes it chained on the head and, on success only, moves the
/// head on (sequence, hash, LSN, time, status, suspension cleared).
///
/// # Errors
/// [`Error::InstanceFinished`] if the run has ended; [`Error::PayloadTooLarge`] or
/// [`Error::PayloadEncode`] if the event does not encode. `row` is untouched on error.
pub fn plan_event(
    row: &mut InstanceRow,
    kind: EventKind,
    actor: Option<Actor>,
    now: u64,
    lsn: u64,
) -> Result<PlannedEvent> {
    if row.status.is_finished() {
        return Err(Error::InstanceFinished(row.id.clone()));
    }
    let key = row.key;
    let ended = InstanceStatus::ended_by(&kind);
    let report = reported(&kind);
    let reported_actor = report.as_ref().and(actor.clone());
    let run_ended = ended.map(|_| RunEnded {
        workflow_type: row.workflow_type.clone(),
        started_at_ms: row.created_at_ms,
        ended_at_ms: now,
    });
    let parked = match &kind {
        EventKind::WorkflowParked { code, reason } => Some(ParkedRow {
            code: code.clone(),
            reason: reason.clone(),
            at_ms: now,
        }),
        _ => None,
    };
    let starts = matches!(kind, EventKind::WorkflowStarted { .. });
    let attributes = match &kind {
        EventKind::AttributesSet { attributes, .. } => Some(attributes.clone()),
        _ => None,
    };
    let task = task_index_change(key, row, &kind, now);
    let notification = notify::derive(&kind).map(|draft| {
        OutboxRow::new(Notification {
            id: lsn,
            topic: draft.topic,
            instance: row.id.clone(),
            workflow_type: row.workflow_type.clone(),
            step: draft.step,
            seq: row.next_seq,
            at_ms: now,
            body: draft.body,
        })
    });
    let position = kind.name();
    let record = EventRecord {
        instance: key,
        seq: row.next_seq,
        prev_lsn: (row.next_seq > 0).then_some(row.head_lsn),
        prev_hash: row.head_hash,
        recorded_at_ms: now,
        kind,
        actor,
    };
    let envelope = record.encode().map_err(|err| match err {
        DecodeError::TooLarge { len, .. } => Error::PayloadTooLarge {
            instance: row.id.clone(),
            position: position.to_owned(),
            bytes: len,
            max: EVENT_BYTES_MAX,
        },
        other => Error::PayloadEncode {
            instance: row.id.clone(),
            position: position.to_owned(),
            message: other.to_string(),
        },
    })?;
    let seq = row.next_seq;
    let woke = row.suspended.is_some();
    row.head_hash = hash_envelope(&envelope);
    row.head_lsn = lsn;
    row.next_seq += 1;
    row.updated_at_ms = now;
    if let Some(status) = ended {
        row.status = status;
    }
    row.suspended = None;
    Ok(PlannedEvent {
        seq,
        lsn,
        envelope,
        ended,
        starts,
        parked,
        woke,
        task,
        notification,
        attributes,
        effect: Committed::Event {
            key,
            seq,
            parent: row.parent,
            kind: report,
            actor: reported_actor,
            ended: run_ended,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::codec::Payload;
    use crate::event::GENESIS_HASH;

    fn row() -> InstanceRow {
        InstanceRow {
            key: 7,
            id: "order-1".into(),
            workflow_type: "order".into(),
            status: InstanceStatus::Running,
            created_at_ms: 10,
            updated_at_ms: 10,
            head_lsn: 0,
            next_seq: 0,
            head_hash: GENESIS_HASH,
            parent: Some(3),
            suspended: None,
        }
    }

    #[test]
    fn a_planned_event_chains_on_the_head_and_moves_it() {
        let mut head = row();
        let start = EventKind::WorkflowStarted {
            workflow_type: "order".into(),
            id: "order-1".into(),
            input: Payload::new(1, b"1".to_vec()),
        };
        let first = plan_event(&mut head, start, None, 20, 5).unwrap();
        assert_eq!((first.seq, first.lsn, first.starts), (0, 5, true));
        assert_eq!(head.next_seq, 1);
        assert_eq!(head.head_hash, hash_envelope(&first.envelope));
        let done = EventKind::WorkflowCompleted {
            output: Payload::new(1, b"2".to_vec()),
        };
        let second = plan_event(&mut head, done, None, 30, 9).unwrap();
        let record = EventRecord::decode(&second.envelope).unwrap();
        assert_eq!(record.prev_lsn, Some(5));
        assert_eq!(record.prev_hash, hash_envelope(&first.envelope));
        assert_eq!(second.ended, Some(InstanceStatus::Completed));
        assert!(matches!(
            second.effect,
            Committed::Event {
                parent: Some(3),
                ended: Some(_),
                ..
            }
        ));
        assert_eq!(head.status, InstanceStatus::Completed);
    }

    #[test]
    fn an_ended_run_or_an_oversized_event_leaves_the_head_as_it_was() {
        let mut head = row();
        let huge = EventKind::SignalReceived {
            name: "s".into(),
            payload: Payload::new(1, vec![0; EVENT_BYTES_MAX + 1]),
        };
        let err = plan_event(&mut head, huge, None, 20, 5).unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
        assert_eq!(head, row());
        head.status = InstanceStatus::Failed;
        let err = plan_event(
            &mut head,
            EventKind::CancelRequested { reason: "r".into() },
            None,
            20,
            5,
        )
        .unwrap_err();
        assert!(matches!(err, Error::InstanceFinished(_)), "{err}");
    }

    #[test]
    fn a_versioned_row_round_trips_and_another_version_is_corrupt() {
        let bytes = encode_versioned(&row(), "instance row").unwrap();
        let back: InstanceRow = decode_versioned(|| "here".into(), &bytes).unwrap();
        assert_eq!(back, row());
        let mut other = bytes;
        other[0] = 9;
        let err = decode_versioned::<InstanceRow>(|| "here".into(), &other).unwrap_err();
        assert!(err.to_string().contains("row version 9"), "{err}");
    }
}
