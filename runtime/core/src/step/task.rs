//! A human task (`ctx.human_task`): `TaskCreated` records the task (its name and input
//! are the step's identity for replay checks); `TaskChanged` events (claims, delegations,
//! comments, escalations) change who holds it; `TaskCompleted` is the outcome, whoever
//! recorded it; `TaskTaken`, written by the run, places the end (decision or cancellation)
//! where the workflow took it (the history reads it). The rules for who may do what live
//! in [`crate::task`].
//!
//! States: open (held or not, escalated so far) -> completed | cancelled | abandoned.

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::event::{EventKind, StepNo};
use crate::task::{
    refusal_for, Actor, EscalationAction, Refusal, TaskChange, TaskOp, TaskSpec, TaskState,
    COMMENT_BYTES_MAX, USER_ID_BYTES_MAX,
};

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

/// The event recording that the workflow took the end (decision or cancellation) of the
/// task of step `step`.
pub fn taken(step: StepNo) -> EventKind {
    EventKind::TaskTaken { step }
}

/// The event creating the task of step `step`.
pub fn created(step: StepNo, task: TaskSpec) -> EventKind {
    EventKind::TaskCreated {
        step,
        task: Box::new(task),
    }
}

/// Decides what `actor` asking `op` of open task `step` records: `Ok(None)` when the
/// request is already satisfied (claiming a task one holds) and nothing is written.
///
/// # Errors
/// The [`Refusal`]; nothing may be written.
pub fn decide(
    state: &TaskState,
    step: StepNo,
    actor: &Actor,
    op: TaskOp,
) -> Result<Option<EventKind>, Refusal> {
    let changed = |change| {
        Ok(Some(EventKind::TaskChanged {
            step,
            actor: actor.clone(),
            change,
        }))
    };
    match op {
        TaskOp::Claim => match &state.assignee {
            Some(holder) if *holder == actor.id => Ok(None),
            Some(holder) => Err(Refusal::HeldBy(holder.clone())),
            None if state.candidates.include(actor) => changed(TaskChange::Claimed),
            None => Err(Refusal::NotCandidate),
        },
        TaskOp::Release => match &state.assignee {
            Some(holder) if *holder == actor.id => changed(TaskChange::Released),
            _ => Err(Refusal::NotHolder),
        },
        TaskOp::Delegate { to } => {
            if to.trim().is_empty() || to.len() > USER_ID_BYTES_MAX {
                return Err(Refusal::Invalid(format!(
                    "the user to delegate to must be 1 to {USER_ID_BYTES_MAX} bytes, got {}",
                    to.len()
                )));
            }
            if !state.may_act(actor) {
                return Err(refusal_for(state, actor));
            }
            if state.assignee.as_deref() == Some(to.as_str()) {
                return Ok(None);
            }
            changed(TaskChange::Delegated { to })
        }
        TaskOp::Comment { text } => {
            if text.trim().is_empty() || text.len() > COMMENT_BYTES_MAX {
                return Err(Refusal::Invalid(format!(
                    "a comment must be 1 to {COMMENT_BYTES_MAX} bytes of text, got {}",
                    text.len()
                )));
            }
            if !state.may_act(actor) && !state.candidates.include(actor) {
                return Err(Refusal::NotCandidate);
            }
            changed(TaskChange::Commented { text })
        }
        TaskOp::Complete { decision } => {
            if !state.may_act(actor) {
                return Err(refusal_for(state, actor));
            }
            Ok(Some(EventKind::TaskCompleted {
                step,
                actor: actor.clone(),
                decision,
                escalation: None,
            }))
        }
    }
}

/// The event that fires escalation tier `tier` of open task `step`, or `None` when that
/// tier is not the next one (it fired already: a replay or another host got there).
pub fn escalate(state: &TaskState, step: StepNo, tier: u32) -> Option<EventKind> {
    let (due, planned) = state.next_escalation()?;
    if due != tier {
        return None;
    }
    let actor = Actor::system();
    Some(match &planned.action {
        EscalationAction::Reassign(to) => EventKind::TaskChanged {
            step,
            actor,
            change: TaskChange::Escalated {
                tier,
                reassigned: Some(to.clone()),
            },
        },
        EscalationAction::Notify => EventKind::TaskChanged {
            step,
            actor,
            change: TaskChange::Escalated {
                tier,
                reassigned: None,
            },
        },
        EscalationAction::Decide(decision) => EventKind::TaskCompleted {
            step,
            actor,
            decision: decision.clone(),
            escalation: Some(tier),
        },
    })
}

/// The event recording that open task `step` passed its due time, or `None` when it has
/// no due time or was recorded overdue already.
pub fn overdue(state: &TaskState, step: StepNo) -> Option<EventKind> {
    if state.overdue || state.spec.due_at_ms.is_none() {
        return None;
    }
    Some(EventKind::TaskChanged {
        step,
        actor: Actor::system(),
        change: TaskChange::Overdue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Payload;
    use crate::task::{Actor, Candidates, EscalationAction, EscalationTier, TaskOp};

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
        let claim = decide(&state, 1, &alice, TaskOp::Claim).unwrap().unwrap();
        apply(&mut entry, &claim, 20).unwrap();
        let notify = escalate(entry.task.as_ref().unwrap(), 1, 0).unwrap();
        apply(&mut entry, &notify, 60).unwrap();
        assert_eq!(entry.deadline_ms, None, "no tier is left");
        assert_eq!(
            entry.task.as_ref().unwrap().assignee.as_deref(),
            Some("alice"),
            "a notifying tier leaves the holder"
        );
        let done = decide(
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

#[cfg(test)]
mod rules {
    use super::*;
    use crate::codec::Payload;
    use crate::task::{Candidates, EscalationTier, Party, TaskRow};

    fn spec() -> TaskSpec {
        TaskSpec {
            name: "underwrite".into(),
            title: "Underwrite loan L-1".into(),
            description: String::new(),
            input: Payload::new(0, b"{}".to_vec()),
            decision_schema: "{}".into(),
            candidates: Candidates {
                users: vec!["carol".into()],
                roles: vec!["underwriter".into()],
            },
            assignee: None,
            priority: 1,
            due_at_ms: Some(100),
            follow_up_at_ms: None,
            escalation: vec![
                EscalationTier {
                    at_ms: 100,
                    action: EscalationAction::Reassign(Candidates {
                        users: vec![],
                        roles: vec!["senior".into()],
                    }),
                },
                EscalationTier {
                    at_ms: 200,
                    action: EscalationAction::Decide(Payload::new(0, b"false".to_vec())),
                },
            ],
        }
    }

    fn record(state: &mut TaskState, event: Option<EventKind>) {
        match event {
            Some(EventKind::TaskChanged { actor, change, .. }) => {
                state.apply(&actor, &change, 0).unwrap()
            }
            other => panic!("not a change: {other:?}"),
        }
    }

    #[test]
    fn a_candidate_claims_and_only_the_holder_completes() {
        let mut state = TaskState::new(spec(), 0);
        let alice = Actor::new("alice", ["underwriter"]);
        let bob = Actor::new("bob", ["underwriter"]);
        let mallory = Actor::new("mallory", ["clerk"]);
        assert_eq!(
            decide(&state, 1, &mallory, TaskOp::Claim),
            Err(Refusal::NotCandidate)
        );
        let event = decide(&state, 1, &alice, TaskOp::Claim).unwrap();
        record(&mut state, event);
        assert_eq!(state.assignee.as_deref(), Some("alice"));
        assert_eq!(decide(&state, 1, &alice, TaskOp::Claim), Ok(None));
        assert_eq!(
            decide(&state, 1, &bob, TaskOp::Claim),
            Err(Refusal::HeldBy("alice".into()))
        );
        let decision = Payload::new(0, b"true".to_vec());
        assert_eq!(
            decide(
                &state,
                1,
                &bob,
                TaskOp::Complete {
                    decision: decision.clone()
                }
            ),
            Err(Refusal::HeldBy("alice".into()))
        );
        assert!(matches!(
            decide(&state, 1, &alice, TaskOp::Complete { decision }),
            Ok(Some(EventKind::TaskCompleted {
                escalation: None,
                ..
            }))
        ));
        assert_eq!(
            decide(&state, 1, &bob, TaskOp::Release),
            Err(Refusal::NotHolder)
        );
        let event = decide(&state, 1, &alice, TaskOp::Release).unwrap();
        record(&mut state, event);
        assert_eq!(state.assignee, None);
    }

    #[test]
    fn a_named_user_is_a_candidate_without_the_role() {
        let state = TaskState::new(spec(), 0);
        let carol = Actor::new("carol", Vec::<String>::new());
        assert!(matches!(
            decide(&state, 1, &carol, TaskOp::Claim),
            Ok(Some(_))
        ));
    }

    #[test]
    fn escalation_tiers_fire_in_order_once() {
        let mut state = TaskState::new(spec(), 0);
        let alice = Actor::new("alice", ["underwriter"]);
        let event = decide(&state, 1, &alice, TaskOp::Claim).unwrap();
        record(&mut state, event);
        assert_eq!(escalate(&state, 1, 1), None);
        let event = escalate(&state, 1, 0);
        record(&mut state, event);
        assert_eq!(state.assignee, None, "a reassignment takes the task back");
        assert!(!state.candidates.include(&alice));
        assert!(state.candidates.include(&Actor::new("sam", ["senior"])));
        assert_eq!(escalate(&state, 1, 0), None, "a tier fires once");
        assert!(matches!(
            escalate(&state, 1, 1),
            Some(EventKind::TaskCompleted {
                escalation: Some(1),
                ..
            })
        ));
    }

    #[test]
    fn a_recorded_escalation_must_match_the_policy() {
        let mut state = TaskState::new(spec(), 0);
        let wrong = TaskChange::Escalated {
            tier: 0,
            reassigned: None,
        };
        assert!(state.apply(&Actor::system(), &wrong, 0).is_err());
        let skipped = TaskChange::Escalated {
            tier: 1,
            reassigned: None,
        };
        assert!(state.apply(&Actor::system(), &skipped, 0).is_err());
    }

    #[test]
    fn rows_are_listed_under_the_holder_or_the_candidates() {
        let mut row = TaskRow::opened(7, "loan-1", "loan", 3, &spec(), 5);
        assert_eq!(
            row.parties(),
            vec![
                Party::All,
                Party::User("carol".into()),
                Party::Role("underwriter".into())
            ]
        );
        row.apply(&Actor::new("alice", ["underwriter"]), &TaskChange::Claimed);
        assert_eq!(
            row.parties(),
            vec![Party::All, Party::Holder("alice".into())]
        );
        assert_eq!(row.next_escalation_ms(), Some(100));
        row.apply(
            &Actor::system(),
            &TaskChange::Escalated {
                tier: 0,
                reassigned: Some(Candidates {
                    users: vec![],
                    roles: vec!["senior".into()],
                }),
            },
        );
        assert_eq!(
            row.parties(),
            vec![Party::All, Party::Role("senior".into())]
        );
        assert_eq!(row.next_escalation_ms(), Some(200));
    }

    #[test]
    fn bad_requests_are_refused() {
        let state = TaskState::new(spec(), 0);
        let alice = Actor::new("alice", ["underwriter"]);
        assert!(matches!(
            decide(&state, 1, &alice, TaskOp::Delegate { to: " ".into() }),
            Err(Refusal::Invalid(_))
        ));
        let long = "u".repeat(USER_ID_BYTES_MAX + 1);
        assert!(matches!(
            decide(&state, 1, &alice, TaskOp::Delegate { to: long }),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(
            decide(
                &state,
                1,
                &alice,
                TaskOp::Comment {
                    text: String::new()
                }
            ),
            Err(Refusal::Invalid(_))
        ));
    }
}
