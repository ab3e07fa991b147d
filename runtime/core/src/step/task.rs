//! A human task (`ctx.human_task`): `TaskCreated` records the task (its name and input
//! are the step's identity for replay checks); `TaskChanged` events (claims, delegations,
//! comments, escalations) change who holds it; `TaskCompleted` is the outcome, whoever
//! recorded it. The rules for who may do what live in [`crate::task`].
//!
//! States: open (held or not, escalated so far) -> completed | cancelled | abandoned.

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::event::{EventKind, StepNo};
use crate::task::{TaskSpec, TaskState};

pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    match event {
        EventKind::TaskCreated { step, task } => Some(Route {
            step: *step,
            kind: StepKind::Task,
            name: &task.name,
            opens: true,
        }),
        // Named by the created event, which must come first.
        EventKind::TaskChanged { step, .. } | EventKind::TaskCompleted { step, .. } => {
            Some(Route {
                step: *step,
                kind: StepKind::Task,
                name: "",
                opens: false,
            })
        }
        _ => None,
    }
}

pub(crate) fn apply(
    entry: &mut RecordedStep,
    event: &EventKind,
    recorded_at_ms: u64,
) -> Result<(), String> {
    match event {
        EventKind::TaskCreated { task, .. } => {
            if entry.task.is_some() {
                return Err("a task created twice".into());
            }
            entry.input = Some(task.input.clone());
            entry.deadline_ms = task.escalation.first().map(|tier| tier.at_ms);
            entry.task = Some(Box::new(TaskState::new((**task).clone(), recorded_at_ms)));
            Ok(())
        }
        EventKind::TaskChanged { actor, change, .. } => {
            let state = entry
                .task
                .as_mut()
                .ok_or("a task changed before it was created")?;
            state.apply(actor, change, recorded_at_ms)?;
            entry.deadline_ms = state.next_escalation().map(|(_, tier)| tier.at_ms);
            Ok(())
        }
        EventKind::TaskCompleted {
            actor,
            decision,
            escalation,
            ..
        } => {
            let state = entry
                .task
                .as_ref()
                .ok_or("a task completed before it was created")?;
            if let Some(tier) = escalation {
                if state.next_escalation().map(|(due, _)| due) != Some(*tier) {
                    return Err(format!(
                        "escalation tier {tier} decided, but it is not the task's next tier"
                    ));
                }
            }
            entry.finish(RecordedOutcome::TaskCompleted {
                decision: decision.clone(),
                actor: actor.clone(),
                escalation: *escalation,
            });
            Ok(())
        }
        other => Err(unexpected(entry.kind, other)),
    }
}

/// The event creating the task of step `step`.
pub fn created(step: StepNo, task: TaskSpec) -> EventKind {
    EventKind::TaskCreated {
        step,
        task: Box::new(task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Payload;
    use crate::task::{self, Actor, Candidates, EscalationAction, EscalationTier, TaskOp};

    fn spec() -> TaskSpec {
        TaskSpec {
            name: "review".into(),
            title: "Review".into(),
            description: String::new(),
            input: Payload::new(0, b"1".to_vec()),
            decision_schema: "{}".into(),
            candidates: Candidates {
                users: vec![],
                roles: vec!["l1".into()],
            },
            assignee: None,
            priority: 0,
            due_at_ms: None,
            follow_up_at_ms: None,
            escalation: vec![EscalationTier {
                at_ms: 50,
                action: EscalationAction::Notify,
            }],
        }
    }

    #[test]
    fn history_builds_the_task_and_its_outcome() {
        let mut entry = RecordedStep::new(StepKind::Task, "review");
        let alice = Actor::new("alice", ["l1"]);
        assert!(apply(
            &mut entry,
            &EventKind::TaskCompleted {
                step: 1,
                actor: alice.clone(),
                decision: Payload::new(0, b"true".to_vec()),
                escalation: None,
            },
            0
        )
        .is_err());
        apply(&mut entry, &created(1, spec()), 10).unwrap();
        assert_eq!(entry.deadline_ms, Some(50));
        let state = entry.task.clone().unwrap();
        let claim = task::decide(&state, 1, &alice, TaskOp::Claim)
            .unwrap()
            .unwrap();
        apply(&mut entry, &claim, 20).unwrap();
        let notify = task::escalate(entry.task.as_ref().unwrap(), 1, 0).unwrap();
        apply(&mut entry, &notify, 60).unwrap();
        assert_eq!(entry.deadline_ms, None, "no tier is left");
        assert_eq!(
            entry.task.as_ref().unwrap().assignee.as_deref(),
            Some("alice"),
            "a notifying tier leaves the holder"
        );
        let done = task::decide(
            entry.task.as_ref().unwrap(),
            1,
            &alice,
            TaskOp::Complete {
                decision: Payload::new(0, b"true".to_vec()),
            },
        )
        .unwrap()
        .unwrap();
        apply(&mut entry, &done, 70).unwrap();
        assert!(matches!(
            entry.outcome,
            Some(RecordedOutcome::TaskCompleted { ref actor, escalation: None, .. }) if actor.id == "alice"
        ));
    }

    #[test]
    fn an_escalated_decision_must_be_the_next_tier() {
        let mut entry = RecordedStep::new(StepKind::Task, "review");
        apply(&mut entry, &created(1, spec()), 10).unwrap();
        let early = EventKind::TaskCompleted {
            step: 1,
            actor: Actor::system(),
            decision: Payload::new(0, b"true".to_vec()),
            escalation: Some(3),
        };
        assert!(apply(&mut entry, &early, 20).is_err());
    }
}
