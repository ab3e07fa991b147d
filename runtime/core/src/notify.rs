//! Notifications: what happened that someone should hear about (a task created, overdue
//! or escalated; an instance failed or parked; a workflow's own `ctx.notify`), derived
//! from the events that record it, kept in a durable outbox written in the same commit,
//! and delivered at least once by the host with retries and backoff. Pure: the stores
//! derive entries with [`derive()`], the host schedules attempts with [`retry_after`].

use serde::{Deserialize, Serialize};

use crate::codec::Payload;
use crate::event::{EventKind, StepNo};
use crate::task::TaskChange;

/// What a notification is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Topic {
    /// A human task was created.
    TaskCreated,
    /// A human task passed its due time while open.
    TaskOverdue,
    /// An escalation tier of a human task fired.
    TaskEscalated,
    /// An instance ended with its workflow's error.
    InstanceFailed,
    /// An instance was parked: it cannot run on this build.
    InstanceParked,
    /// The workflow asked (`ctx.notify(topic, ..)`), under its own topic.
    Custom(String),
}

impl Topic {
    /// The topic's name: `task.created`, `task.overdue`, `task.escalated`,
    /// `instance.failed`, `instance.parked`, or the workflow's own.
    pub fn name(&self) -> &str {
        match self {
            Topic::TaskCreated => "task.created",
            Topic::TaskOverdue => "task.overdue",
            Topic::TaskEscalated => "task.escalated",
            Topic::InstanceFailed => "instance.failed",
            Topic::InstanceParked => "instance.parked",
            Topic::Custom(topic) => topic,
        }
    }
}

/// One notification, as delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique and stable across redeliveries: receivers deduplicate by it.
    pub id: u64,
    /// What it is about.
    pub topic: Topic,
    /// The instance's user id.
    pub instance: String,
    /// The instance's workflow type.
    pub workflow_type: String,
    /// The step it concerns (a task's), if any.
    pub step: Option<StepNo>,
    /// `seq` of the event it derives from in the instance's history.
    pub seq: u64,
    /// When that event was recorded (ms since the Unix epoch).
    pub at_ms: u64,
    /// Details, as JSON text (a task's title and candidates, an error, the workflow's
    /// body).
    pub body: String,
}

/// One delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// When it was made (ms since the Unix epoch).
    pub at_ms: u64,
    /// `None` if the notifier accepted it, else why not.
    pub error: Option<String>,
}

/// Where a notification's delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// Not delivered yet; the next attempt is due at this time.
    Pending {
        /// When (ms since the Unix epoch).
        next_attempt_ms: u64,
    },
    /// The notifier accepted it.
    Delivered,
    /// Every attempt failed ([`ATTEMPTS_MAX`]); kept for operators to see.
    GaveUp,
}

/// A notification in the outbox, with every attempt made to deliver it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRow {
    /// The notification.
    pub notification: Notification,
    /// Attempts so far, oldest first.
    pub attempts: Vec<DeliveryAttempt>,
    /// Where it stands.
    pub delivery: Delivery,
}

/// Attempts made before a notification is given up.
pub const ATTEMPTS_MAX: usize = 12;

/// How long after its `attempts`-th failed attempt the next one is due: 1 s, doubling,
/// at most 10 minutes; `None` once [`ATTEMPTS_MAX`] attempts failed.
pub fn retry_after(attempts: usize) -> Option<u64> {
    if attempts >= ATTEMPTS_MAX {
        return None;
    }
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(20);
    Some((1_000u64 << exponent).min(600_000))
}

impl OutboxRow {
    /// A new notification, due for its first attempt at once.
    pub fn new(notification: Notification) -> Self {
        let next_attempt_ms = notification.at_ms;
        Self {
            notification,
            attempts: Vec::new(),
            delivery: Delivery::Pending { next_attempt_ms },
        }
    }
}

/// What a notification to be derived from one event holds, before the outbox numbers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    /// Its topic.
    pub topic: Topic,
    /// The step it concerns.
    pub step: Option<StepNo>,
    /// Its body, JSON text.
    pub body: String,
}

/// The notification an event calls for, if any: a task created, escalated or overdue, an
/// instance failed or parked, a workflow's `ctx.notify`.
pub fn derive(kind: &EventKind) -> Option<Draft> {
    let draft = |topic, step, body: serde_json::Value| {
        Some(Draft {
            topic,
            step,
            body: body.to_string(),
        })
    };
    match kind {
        EventKind::TaskCreated { step, task } => draft(
            Topic::TaskCreated,
            Some(*step),
            serde_json::json!({
                "name": task.name,
                "title": task.title,
                "users": task.candidates.users,
                "roles": task.candidates.roles,
                "assignee": task.assignee,
                "priority": task.priority,
                "due_at_ms": task.due_at_ms,
            }),
        ),
        EventKind::TaskChanged {
            step,
            change: TaskChange::Escalated { tier, reassigned },
            ..
        } => draft(
            Topic::TaskEscalated,
            Some(*step),
            serde_json::json!({
                "tier": tier,
                "reassigned_to": reassigned.as_ref().map(|to| serde_json::json!({
                    "users": to.users,
                    "roles": to.roles,
                })),
            }),
        ),
        EventKind::TaskChanged {
            step,
            change: TaskChange::Overdue,
            ..
        } => draft(Topic::TaskOverdue, Some(*step), serde_json::json!({})),
        EventKind::TaskCompleted {
            step,
            escalation: Some(tier),
            decision,
            ..
        } => draft(
            Topic::TaskEscalated,
            Some(*step),
            serde_json::json!({ "tier": tier, "decided": body_json(decision) }),
        ),
        EventKind::WorkflowFailed { error } => draft(
            Topic::InstanceFailed,
            None,
            serde_json::json!({ "error": body_json(error) }),
        ),
        EventKind::WorkflowParked { code, reason } => draft(
            Topic::InstanceParked,
            None,
            serde_json::json!({ "code": code, "reason": reason }),
        ),
        EventKind::Notified { step, topic, body } => {
            draft(Topic::Custom(topic.clone()), Some(*step), body_json(body))
        }
        _ => None,
    }
}

/// A payload as JSON: itself when it is JSON (the default codec), else its size.
fn body_json(payload: &Payload) -> serde_json::Value {
    serde_json::from_slice(&payload.data).unwrap_or_else(
        |_| serde_json::json!({ "codec": payload.codec, "bytes": payload.data.len() }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_give_up() {
        assert_eq!(retry_after(1), Some(1_000));
        assert_eq!(retry_after(2), Some(2_000));
        assert_eq!(retry_after(5), Some(16_000));
        assert_eq!(retry_after(11), Some(600_000));
        assert_eq!(retry_after(ATTEMPTS_MAX), None);
    }

    #[test]
    fn failures_and_parkings_call_for_a_notification_and_steps_do_not() {
        let failed = EventKind::WorkflowFailed {
            error: Payload::new(0, br#"{"reason":"declined"}"#.to_vec()),
        };
        let draft = derive(&failed).unwrap();
        assert_eq!(draft.topic, Topic::InstanceFailed);
        assert_eq!(draft.body, r#"{"error":{"reason":"declined"}}"#);
        assert!(derive(&EventKind::TimerFired { step: 1 }).is_none());
    }
}
