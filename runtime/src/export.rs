//! Events as JSON, for people and tools that read histories without the code: the CLI's
//! `history`, the HTTP API's history endpoint and exports print the same shape.

use serde_json::{json, Value};

use crate::codec::Payload;
use crate::event::{ChildOutcome, EventKind};
use crate::journal::StoredEvent;
use crate::task::{Actor, EscalationAction, TaskChange};

/// A payload as JSON: the value itself for the JSON codec, else its codec and size.
pub fn payload_json(p: &Payload) -> Value {
    if p.codec == 0 {
        if let Ok(value) = serde_json::from_slice::<Value>(&p.data) {
            return value;
        }
    }
    json!({ "codec": p.codec, "bytes": p.data.len() })
}

/// Lowercase hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An actor as JSON.
pub fn actor_json(actor: &Actor) -> Value {
    json!({ "id": actor.id, "roles": actor.roles })
}

/// One stored event as JSON: its position, hashes, actor, the variant's name and its
/// fields with payloads decoded (what `cairn history` prints and the HTTP API returns).
pub fn event_json(event: &StoredEvent) -> Value {
    let r = &event.record;
    let body = match &r.kind {
        EventKind::WorkflowStarted {
            workflow_type,
            id,
            input,
        } => {
            json!({ "workflow_type": workflow_type, "id": id, "input": payload_json(input) })
        }
        EventKind::ActivityCompleted {
            step,
            activity,
            input,
            attempt,
            output,
        } => json!({
            "step": step, "activity": activity, "input": payload_json(input), "attempt": attempt, "output": payload_json(output)
        }),
        EventKind::ActivityAttemptFailed {
            step,
            activity,
            attempt,
            error,
            retry_in_ms,
        } => json!({
            "step": step, "activity": activity, "attempt": attempt, "error": error.message,
            "error_kind": error.kind, "retry_in_ms": retry_in_ms
        }),
        EventKind::ActivityFailed {
            step,
            activity,
            input,
            attempt,
            error,
        } => json!({
            "step": step, "activity": activity, "input": payload_json(input), "attempt": attempt,
            "error": error.message, "error_kind": error.kind, "retryable": error.retryable
        }),
        EventKind::SideEffect { step, label, value } => {
            json!({ "step": step, "label": label, "value": payload_json(value) })
        }
        EventKind::WorkflowCompleted { output } => json!({ "output": payload_json(output) }),
        EventKind::WorkflowFailed { error } => json!({ "error": payload_json(error) }),
        EventKind::TimerStarted { step, fire_at_ms } => {
            json!({ "step": step, "fire_at_ms": fire_at_ms })
        }
        EventKind::TimerFired { step } => json!({ "step": step }),
        EventKind::SignalReceived {
            name,
            payload: body,
        } => json!({ "name": name, "payload": payload_json(body) }),
        EventKind::SignalWaitStarted {
            step,
            name,
            deadline_ms,
        } => {
            json!({ "step": step, "name": name, "deadline_ms": deadline_ms })
        }
        EventKind::SignalDelivered {
            step,
            name,
            signal_seq,
        } => {
            json!({ "step": step, "name": name, "signal_seq": signal_seq })
        }
        EventKind::SignalWaitTimedOut { step, name } => json!({ "step": step, "name": name }),
        EventKind::PatchMarker { step, patch_id } => json!({ "step": step, "patch_id": patch_id }),
        EventKind::WorkflowTerminated { reason } => json!({ "reason": reason }),
        EventKind::CancelRequested { reason } => json!({ "reason": reason }),
        EventKind::WorkflowContinuedAsNew { input, next_run } => {
            json!({ "input": payload_json(input), "next_run": format!("{next_run:032x}") })
        }
        EventKind::StepAbandoned { step } => json!({ "step": step }),
        EventKind::TaskCreated { step, task } => json!({
            "step": step,
            "name": task.name,
            "title": task.title,
            "description": task.description,
            "input": payload_json(&task.input),
            "decision_schema": serde_json::from_str::<Value>(&task.decision_schema)
                .unwrap_or_else(|_| Value::String(task.decision_schema.clone())),
            "candidate_users": task.candidates.users,
            "candidate_roles": task.candidates.roles,
            "assignee": task.assignee,
            "priority": task.priority,
            "due_at_ms": task.due_at_ms,
            "follow_up_at_ms": task.follow_up_at_ms,
            "escalation": task.escalation.iter().map(|tier| json!({
                "at_ms": tier.at_ms,
                "action": match &tier.action {
                    EscalationAction::Reassign(to) => json!({ "reassign": { "users": to.users, "roles": to.roles } }),
                    EscalationAction::Notify => json!("notify"),
                    EscalationAction::Decide(decision) => json!({ "decide": payload_json(decision) }),
                },
            })).collect::<Vec<_>>(),
        }),
        EventKind::TaskChanged {
            step,
            actor,
            change,
        } => {
            let change = match change {
                TaskChange::Claimed => json!("claimed"),
                TaskChange::Released => json!("released"),
                TaskChange::Delegated { to } => json!({ "delegated": { "to": to } }),
                TaskChange::Commented { text } => json!({ "commented": { "text": text } }),
                TaskChange::Overdue => json!("overdue"),
                TaskChange::Escalated { tier, reassigned } => json!({ "escalated": {
                    "tier": tier,
                    "reassigned": reassigned.as_ref().map(|to| json!({ "users": to.users, "roles": to.roles })),
                } }),
            };
            json!({ "step": step, "actor": actor_json(actor), "change": change })
        }
        EventKind::TaskCompleted {
            step,
            actor,
            decision,
            escalation,
        } => json!({
            "step": step, "actor": actor_json(actor), "decision": payload_json(decision),
            "escalation": escalation
        }),
        EventKind::DocumentAttached { document } => json!({
            "name": document.name,
            "version": document.version,
            "content_type": document.content_type,
            "metadata": document.metadata,
            "sha256": hex(&document.sha256),
            "bytes": document.bytes,
            "task": document.task,
        }),
        EventKind::Notified { step, topic, body } => {
            json!({ "step": step, "topic": topic, "body": payload_json(body) })
        }
        EventKind::KeyedSignalReceived {
            name,
            payload: body,
            key,
        } => json!({ "name": name, "payload": payload_json(body), "key": key }),
        EventKind::UpdateAnswered {
            step,
            name,
            key,
            response,
        } => match response {
            Ok(body) => {
                json!({ "step": step, "name": name, "key": key, "response": payload_json(body) })
            }
            Err(reason) => {
                json!({ "step": step, "name": name, "key": key, "rejected": reason })
            }
        },
        EventKind::StatePublished { step, name, value } => {
            json!({ "step": step, "name": name, "value": payload_json(value) })
        }
        EventKind::TaskTaken { step } => json!({ "step": step }),
        EventKind::WorkflowParked { code, reason } => json!({ "code": code, "reason": reason }),
        EventKind::RunContinued { previous_run, run } => {
            json!({ "previous_run": format!("{previous_run:032x}"), "run": run })
        }
        EventKind::ChildStarted {
            step,
            workflow_type,
            child_id,
            input,
        } => json!({
            "step": step, "workflow_type": workflow_type, "child_id": child_id, "input": payload_json(input)
        }),
        EventKind::ChildCompleted {
            step,
            child_id,
            outcome,
        } => {
            let outcome = match outcome {
                ChildOutcome::Completed(p) => {
                    json!({ "completed": payload_json(p) })
                }
                ChildOutcome::Failed(p) => json!({ "failed": payload_json(p) }),
                ChildOutcome::Terminated(reason) => {
                    json!({ "terminated": reason })
                }
            };
            json!({ "step": step, "child_id": child_id, "outcome": outcome })
        }
        EventKind::StepCancelled {
            step,
            step_kind,
            name,
            reason,
        } => {
            json!({ "step": step, "step_kind": step_kind, "name": name, "reason": reason })
        }
        EventKind::AttributesSet { step, attributes } => {
            let attributes: serde_json::Map<String, Value> = attributes
                .iter()
                .map(|(name, value)| (name.clone(), json!(value.to_string())))
                .collect();
            json!({ "step": step, "attributes": attributes })
        }
    };
    json!({
        "lsn": event.lsn,
        "seq": r.seq,
        "event": r.kind.name(),
        "recorded_at_ms": r.recorded_at_ms,
        "hash": hex(&event.hash),
        "prev_hash": hex(&r.prev_hash),
        "actor": r.actor.as_ref().map(actor_json),
        "body": body,
    })
}

/// One run's head, recorded outside the database (`cairn anchors export`) so that a
/// later check can prove the history up to that event is unchanged, even after an edit
/// that rewrote the whole chain and the row's head hash, which the chain alone cannot
/// reveal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Anchor {
    /// The instance id.
    pub instance: String,
    /// The run's internal key, 32 hexadecimal digits.
    pub run: String,
    /// The sequence number of the anchored event (the run's last at export time).
    pub seq: u64,
    /// That event's hash, 64 hexadecimal digits.
    pub hash: String,
    /// That event's commit time (ms since the Unix epoch), for people reading the file.
    pub recorded_at_ms: u64,
}

impl Anchor {
    /// The anchor of a verified history: its last event. `None` for an empty one.
    pub fn of(id: &str, key: u128, events: &[StoredEvent]) -> Option<Self> {
        let last = events.last()?;
        Some(Self {
            instance: id.to_owned(),
            run: format!("{key:032x}"),
            seq: last.record.seq,
            hash: hex(&last.hash),
            recorded_at_ms: last.record.recorded_at_ms,
        })
    }

    /// The run key this anchor names, if its `run` field is well-formed.
    pub fn key(&self) -> Option<u128> {
        u128::from_str_radix(&self.run, 16).ok()
    }

    /// Checks a verified history of the anchored run against the anchor: the event at
    /// the anchored sequence number must still exist and have the anchored hash (events
    /// recorded after it are fine). `Err` says what differs.
    ///
    /// # Errors
    /// A sentence naming the anchored event and what is wrong with it.
    pub fn check(&self, events: &[StoredEvent]) -> Result<(), String> {
        let event = usize::try_from(self.seq).ok().and_then(|i| events.get(i));
        self.check_hash(event.map(|e| (hex(&e.hash), Some(e.lsn))), events.len())
    }

    /// [`Anchor::check`] on what a reader has of the history: the hash of the event at
    /// the anchored sequence number (and its LSN, if known), if the history holds it, and
    /// how many events it holds.
    ///
    /// # Errors
    /// A sentence naming the anchored event and what is wrong with it.
    pub fn check_hash(
        &self,
        found: Option<(String, Option<u64>)>,
        held: usize,
    ) -> Result<(), String> {
        let Some((hash, lsn)) = found else {
            return Err(format!(
                "event #{} is anchored but the history holds only {held} events: events were removed",
                self.seq
            ));
        };
        if hash != self.hash {
            let at = lsn.map(|lsn| format!(" (LSN {lsn})")).unwrap_or_default();
            return Err(format!(
                "event #{}{at} differs from its anchor: hash {hash} where {} was anchored; the history up to it was rewritten",
                self.seq, self.hash
            ));
        }
        Ok(())
    }
}
