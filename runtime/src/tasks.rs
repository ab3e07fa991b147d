//! The host's side of human tasks: listing inboxes (from the journal's open-task index),
//! reading one task (from its history), and acting on it (claim, release, delegate,
//! comment, complete; and, for the run that owns it, escalate and cancel).
//!
//! Every change is decided by `cairn_core::task` against the task's state as its
//! history builds it, then appended only if the history still has the length it was
//! read at (`Expect::Seq`): a concurrent change makes the append fail with a conflict,
//! and the decision is taken again on the new history. So a refused request writes
//! nothing, and two people can never both complete one task.

use std::sync::atomic::Ordering;

use cairn_core::journal::{verify_history, Expect, TaskPage, TaskQuery};
use cairn_core::policy::Action;
use cairn_core::step::task as step_rules;
use cairn_core::task::{self, Actor, Refusal, TaskOp, TaskState};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::{EventKind, StepNo};
use crate::port::{RunTaskAnswer, RunTaskChange};
use crate::replay::{History, RecordedOutcome, StepKind};

/// How often a task change is decided again after losing to concurrent events before
/// it gives up ([`Error::Contended`]).
const TASK_TRIES_MAX: u32 = 64;

/// Longest decision accepted, in bytes of JSON.
pub const DECISION_BYTES_MAX: usize = 1024 * 1024;

/// One task as its history tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// The instance's user id.
    pub instance: String,
    /// The instance's workflow type.
    pub workflow_type: String,
    /// The task's step.
    pub step: StepNo,
    /// The task: its spec, holder, candidates, escalations and comments.
    pub state: TaskState,
    /// Where it stands.
    pub status: TaskStatus,
}

/// Where a task stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskStatus {
    /// Waiting for a decision.
    Open,
    /// Decided by `actor` (escalation tier `escalation` if the runtime decided).
    Completed {
        /// Who decided.
        actor: Actor,
        /// The decision, as recorded.
        decision: crate::codec::Payload,
        /// The escalation tier that decided, if one did.
        escalation: Option<u32>,
    },
    /// Ended by the workflow's cancellation.
    Cancelled {
        /// The cancellation's reason.
        reason: String,
    },
    /// The workflow stopped waiting for it, or ended without it.
    Withdrawn,
}

/// One attempt at a task change, decided on the history as read.
enum Turn {
    /// Append this event at the history's length.
    Append(EventKind),
    /// Nothing to write.
    Done,
}

impl Engine {
    /// Open tasks matching `query`, from the open-task index (no history is read). For a
    /// person's inbox, set `query.parties` to `Party::of(&actor)`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn tasks(&self, query: &TaskQuery) -> Result<TaskPage> {
        self.shared.journal.tasks(query).await
    }

    /// Task `step` of instance `instance`, as its history tells it (open or not).
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::TaskNotFound`], [`Error::Corrupt`].
    pub async fn task(&self, instance: &str, step: StepNo) -> Result<TaskInfo> {
        let (history, _, workflow_type) = self.task_history(instance).await?;
        let entry = history
            .step(step)
            .filter(|entry| entry.kind == StepKind::Task)
            .ok_or_else(|| Error::TaskNotFound {
                instance: instance.to_owned(),
                step,
            })?;
        let state = entry
            .task
            .as_deref()
            .cloned()
            .ok_or_else(|| Error::TaskNotFound {
                instance: instance.to_owned(),
                step,
            })?;
        let status = match &entry.outcome {
            Some(RecordedOutcome::TaskCompleted {
                decision,
                actor,
                escalation,
            }) => TaskStatus::Completed {
                actor: actor.clone(),
                decision: decision.clone(),
                escalation: *escalation,
            },
            Some(RecordedOutcome::Cancelled { reason }) => TaskStatus::Cancelled {
                reason: reason.clone(),
            },
            Some(_) => TaskStatus::Withdrawn,
            None if history.is_abandoned(step) || history.result.is_some() => TaskStatus::Withdrawn,
            None => TaskStatus::Open,
        };
        Ok(TaskInfo {
            instance: instance.to_owned(),
            workflow_type,
            step,
            state,
            status,
        })
    }

    /// `actor` claims, releases, delegates or comments on open task `step` of instance
    /// `instance`. Claiming a task one holds, or delegating it to its holder, writes
    /// nothing and succeeds.
    ///
    /// # Errors
    /// [`Error::Forbidden`] when the actor may not (not a candidate, not the holder);
    /// [`Error::TaskClosed`], [`Error::TaskNotFound`], [`Error::InstanceNotFound`],
    /// [`Error::InvalidArgument`] for an empty delegate or comment; nothing is written.
    ///
    /// # Durability
    /// On `Ok` the change is on disk, with the actor.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the change is still decided and recorded (unless
    /// refused; never twice) by a task of the runtime; once it is, it is listed like any
    /// other. Dropped before it was polled, nothing was sent.
    pub async fn act_on_task(
        &self,
        actor: &Actor,
        instance: &str,
        step: StepNo,
        op: TaskOp,
    ) -> Result<()> {
        let (engine, actor, instance) = (self.clone(), actor.clone(), instance.to_owned());
        crate::engine::carried_on(async move {
            engine.act_on_task_now(&actor, &instance, step, op).await
        })
        .await
    }

    async fn act_on_task_now(
        &self,
        actor: &Actor,
        instance: &str,
        step: StepNo,
        op: TaskOp,
    ) -> Result<()> {
        if matches!(op, TaskOp::Complete { .. }) {
            return Err(Error::InvalidArgument(
                "complete a task with `complete_task`, which checks the decision against its schema"
                    .into(),
            ));
        }
        self.change_task(instance, step, actor, |_, state| {
            decide(instance, step, state, actor, op.clone())
        })
        .await
    }

    /// `actor` completes open task `step` of instance `instance` with `decision`, checked
    /// against the JSON Schema the task was created with and recorded with the runtime's
    /// codec. The workflow's `human_task` wait returns it.
    ///
    /// # Errors
    /// [`Error::InvalidDecision`] naming each problem, [`Error::Forbidden`],
    /// [`Error::TaskClosed`], [`Error::TaskNotFound`], [`Error::InstanceNotFound`];
    /// nothing is written and the task stays open.
    ///
    /// # Durability
    /// On `Ok` the decision is on disk; the workflow carries on even if the host crashes
    /// next.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the decision is still checked and recorded (unless
    /// refused; never twice) by a task of the runtime; once it is, it reaches the run by
    /// the commit itself. Dropped before it was polled, nothing was sent.
    pub async fn complete_task(
        &self,
        actor: &Actor,
        instance: &str,
        step: StepNo,
        decision: serde_json::Value,
    ) -> Result<()> {
        let (engine, actor, instance) = (self.clone(), actor.clone(), instance.to_owned());
        crate::engine::carried_on(async move {
            engine
                .complete_task_now(&actor, &instance, step, decision)
                .await
        })
        .await
    }

    async fn complete_task_now(
        &self,
        actor: &Actor,
        instance: &str,
        step: StepNo,
        decision: serde_json::Value,
    ) -> Result<()> {
        let size = serde_json::to_vec(&decision).map_or(usize::MAX, |bytes| bytes.len());
        if size > DECISION_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "a decision must be at most {DECISION_BYTES_MAX} bytes of JSON, got {size}"
            )));
        }
        self.change_task(instance, step, actor, |_, state| {
            // Who may act is checked first: a stranger learns nothing about the form.
            if !state.may_act(actor) {
                let refusal = task::refusal_for(state, actor);
                return Err(forbidden(instance, step, actor, "complete", &refusal));
            }
            validate(instance, step, &state.spec.decision_schema, &decision)?;
            let encoded =
                crate::codec::encode(self.shared.codec.as_ref(), &decision).map_err(|err| {
                    Error::PayloadEncode {
                        instance: instance.to_owned(),
                        position: format!("decision of task {step}"),
                        message: err.to_string(),
                    }
                })?;
            decide(
                instance,
                step,
                state,
                actor,
                TaskOp::Complete { decision: encoded },
            )
        })
        .await
    }

    /// The run's own change to its open task `step` (run `key`): an escalation or a
    /// cancellation, recorded only while the task is open.
    pub(crate) async fn run_task_change(
        &self,
        key: u128,
        step: StepNo,
        change: RunTaskChange,
    ) -> Result<RunTaskAnswer> {
        let mut answer = RunTaskAnswer::Applied;
        let changed = self
            .change_task_of(key, step, None, |_, state| match &change {
                RunTaskChange::Escalate(tier) => match step_rules::escalate(state, step, *tier) {
                    Some(event) => Ok(Turn::Append(event)),
                    None => {
                        answer = RunTaskAnswer::Moved {
                            escalations: state.escalations,
                        };
                        Ok(Turn::Done)
                    }
                },
                RunTaskChange::Overdue => Ok(match step_rules::overdue(state, step) {
                    Some(event) => Turn::Append(event),
                    None => {
                        answer = RunTaskAnswer::Moved {
                            escalations: state.escalations,
                        };
                        Turn::Done
                    }
                }),
                RunTaskChange::Cancel(reason) => Ok(Turn::Append(EventKind::StepCancelled {
                    step,
                    step_kind: StepKind::Task.label().to_owned(),
                    name: state.spec.name.clone(),
                    reason: reason.clone(),
                })),
            })
            .await;
        match changed {
            Ok(()) => Ok(answer),
            Err(Error::TaskClosed { .. }) => {
                // The decision that closed it reaches the run's inbox before this answer.
                self.applied().await;
                Ok(RunTaskAnswer::Closed)
            }
            Err(err) => Err(err),
        }
    }

    async fn task_history(&self, instance: &str) -> Result<(History, u64, String)> {
        let (key, _) = self.row_of(instance).await?;
        self.task_history_of(key, instance).await
    }

    /// The verified history of run `key`, its length, and its workflow type.
    async fn task_history_of(&self, key: u128, instance: &str) -> Result<(History, u64, String)> {
        let raw = self
            .shared
            .journal
            .history(key)
            .await?
            .ok_or_else(|| Error::InstanceNotFound(instance.to_owned()))?;
        let (row, events) = verify_history(raw)?;
        let history = History::from_records(events.iter().map(|event| &event.record))?;
        Ok((history, row.next_seq, row.workflow_type))
    }

    /// A person's change to open task `step` of `instance`: allowed by the host's policy
    /// for the task's kind, then decided by `decide`, recorded with the actor.
    async fn change_task<F>(
        &self,
        instance: &str,
        step: StepNo,
        actor: &Actor,
        mut decide: F,
    ) -> Result<()>
    where
        F: FnMut(&History, &TaskState) -> Result<Option<EventKind>>,
    {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let (key, row) = self.row_of(instance).await?;
        let workflow_type = row.workflow_type;
        let policy = |state: &TaskState| {
            self.authorize(
                actor,
                &Action::Task {
                    instance,
                    workflow_type: &workflow_type,
                    task: &state.spec.name,
                },
            )
        };
        self.change_task_of(key, step, Some(actor), |history, state| {
            policy(state)?;
            Ok(match decide(history, state)? {
                Some(event) => Turn::Append(event),
                None => Turn::Done,
            })
        })
        .await
    }

    /// Decides a change to open task `step` of run `key` on its current history and
    /// appends it at that history's length, again on a conflict.
    async fn change_task_of<F>(
        &self,
        key: u128,
        step: StepNo,
        actor: Option<&Actor>,
        mut decide: F,
    ) -> Result<()>
    where
        F: FnMut(&History, &TaskState) -> Result<Turn>,
    {
        for _ in 0..TASK_TRIES_MAX {
            let raw = self
                .shared
                .journal
                .history(key)
                .await?
                .ok_or_else(|| Error::InstanceNotFound(format!("{key:032x}")))?;
            let (row, events) = verify_history(raw)?;
            let instance = row.id.clone();
            let history = History::from_records(events.iter().map(|event| &event.record))?;
            let state = open_task(&history, &instance, step)?;
            let event = match decide(&history, state)? {
                Turn::Append(event) => event,
                Turn::Done => return Ok(()),
            };
            match self
                .shared
                .journal
                .append_by(key, event, Expect::Seq(row.next_seq), actor.cloned())
                .await
            {
                Ok(_) => {
                    self.applied().await;
                    return Ok(());
                }
                // Someone recorded first: decide again on what they recorded.
                Err(Error::Conflict { .. }) => continue,
                Err(Error::InstanceFinished(_)) => {
                    // Its decision (or the end) reached memory before the refusal did.
                    self.applied().await;
                    return Err(Error::TaskClosed {
                        instance,
                        step,
                        state: "closed: its instance has ended".into(),
                    });
                }
                Err(err) => return Err(err),
            }
        }
        Err(Error::Contended {
            instance: format!("{key:032x}"),
            operation: "a task change",
            tries: TASK_TRIES_MAX,
        })
    }
}

/// The open task at `step`, or why there is none.
fn open_task<'h>(history: &'h History, instance: &str, step: StepNo) -> Result<&'h TaskState> {
    let entry = history
        .step(step)
        .filter(|entry| entry.kind == StepKind::Task);
    let Some(state) = entry.and_then(|entry| entry.task.as_deref()) else {
        return Err(Error::TaskNotFound {
            instance: instance.to_owned(),
            step,
        });
    };
    let closed = |state: &str| {
        Err(Error::TaskClosed {
            instance: instance.to_owned(),
            step,
            state: state.to_owned(),
        })
    };
    match entry.and_then(|entry| entry.outcome.as_ref()) {
        Some(RecordedOutcome::TaskCompleted { actor, .. }) => {
            return closed(&format!("already completed by `{}`", actor.id))
        }
        Some(RecordedOutcome::Cancelled { .. }) => return closed("cancelled"),
        Some(_) => return closed("closed"),
        None => {}
    }
    if history.is_abandoned(step) {
        return closed("withdrawn: the workflow stopped waiting for it");
    }
    if history.result.is_some() {
        return closed("closed: its instance has ended");
    }
    Ok(state)
}

/// The core's decision, with refusals as typed errors.
fn decide(
    instance: &str,
    step: StepNo,
    state: &TaskState,
    actor: &Actor,
    op: TaskOp,
) -> Result<Option<EventKind>> {
    let name = op.name();
    step_rules::decide(state, step, actor, op).map_err(|refusal| match refusal {
        Refusal::Invalid(message) => Error::InvalidArgument(message),
        other => forbidden(instance, step, actor, name, &other),
    })
}

fn forbidden(instance: &str, step: StepNo, actor: &Actor, what: &str, refusal: &Refusal) -> Error {
    let reason = match refusal {
        Refusal::NotCandidate => {
            "they are not one of its candidates (by name or role) and do not hold it".to_owned()
        }
        Refusal::HeldBy(holder) => format!("`{holder}` holds it"),
        Refusal::NotHolder => "only its holder may, and they do not hold it".to_owned(),
        Refusal::Invalid(message) => message.clone(),
    };
    Error::Forbidden {
        actor: actor.id.clone(),
        action: format!("{what} task {step} of instance `{instance}`"),
        reason,
    }
}

/// Checks `decision` against the task's recorded JSON Schema.
fn validate(
    instance: &str,
    step: StepNo,
    schema: &str,
    decision: &serde_json::Value,
) -> Result<()> {
    let invalid = |problems: Vec<String>| Error::InvalidDecision {
        instance: instance.to_owned(),
        step,
        problems,
    };
    let schema: serde_json::Value = serde_json::from_str(schema).map_err(|err| Error::Corrupt {
        location: format!("task {step} of instance `{instance}`"),
        message: format!("its recorded decision schema is not JSON: {err}"),
    })?;
    let validator = jsonschema::validator_for(&schema).map_err(|err| Error::Corrupt {
        location: format!("task {step} of instance `{instance}`"),
        message: format!("its recorded decision schema is not a valid JSON Schema: {err}"),
    })?;
    let problems: Vec<String> = validator
        .iter_errors(decision)
        .map(|err| {
            let at = err.instance_path().to_string();
            if at.is_empty() {
                err.to_string()
            } else {
                format!("at `{at}`: {err}")
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(invalid(problems))
    }
}
