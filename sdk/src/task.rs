//! Human tasks, typed: a [`TaskKind`] declares a task's name, what the person is shown
//! and what they decide; `ctx.human_task(..)` creates one and waits for the decision; the
//! host lists inboxes and acts on tasks for an [`Actor`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cairn_runtime::calendar::{BusinessCalendar, BusinessTime};
use cairn_runtime::codec::{decode, encode};
use cairn_runtime::journal::{TaskPage, TaskQuery};
use cairn_runtime::task::{Candidates, EscalationAction, EscalationTier, TaskId, TaskOp, TaskSpec};
use cairn_runtime::{Cancelled, TaskInfo};

use crate::{Ctx, Error, Payload, Runtime};

pub use cairn_runtime::task::Actor;

/// A kind of human task: its name, the type of what the person is shown (`I`) and of the
/// decision they give (`D`), declared once and used by the workflow and the host alike.
/// The decision's JSON Schema is derived from `D` (with [`schemars`]) and recorded with
/// each task, so a form can be drawn from it and every decision is checked against it
/// before it is recorded.
///
/// ```
/// use cairn::{workflow, Ctx, TaskKind, WorkflowError};
/// use schemars::JsonSchema;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Loan { applicant: String, cents: u64 }
///
/// #[derive(Serialize, Deserialize, JsonSchema)]
/// pub struct Underwriting { approve: bool, note: String }
///
/// pub const UNDERWRITE: TaskKind<Loan, Underwriting> = TaskKind::new("underwrite");
///
/// #[workflow]
/// async fn approve(ctx: Ctx, loan: Loan) -> Result<bool, WorkflowError> {
///     let title = format!("Underwrite {}", loan.applicant);
///     let task = UNDERWRITE.task(loan).title(title).roles(["underwriter"]);
///     let decided = ctx.human_task(task).await?;
///     Ok(decided.decision.approve)
/// }
/// ```
pub struct TaskKind<I, D> {
    name: &'static str,
    types: PhantomData<fn() -> (I, D)>,
}

impl<I, D> Clone for TaskKind<I, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, D> Copy for TaskKind<I, D> {}

impl<I, D> std::fmt::Debug for TaskKind<I, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TaskKind({:?}: {} -> {})",
            self.name,
            std::any::type_name::<I>(),
            std::any::type_name::<D>()
        )
    }
}

impl<I: Payload, D: Payload + schemars::JsonSchema> TaskKind<I, D> {
    /// The task kind called `name`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            types: PhantomData,
        }
    }

    /// Its name, as recorded.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// A task of this kind showing `input`, to be configured and passed to
    /// [`Ctx::human_task`]. Its title defaults to the kind's name.
    pub fn task(&self, input: I) -> HumanTask<I, D> {
        HumanTask {
            kind: *self,
            input,
            title: self.name.to_owned(),
            description: String::new(),
            candidates: Candidates::default(),
            assignee: None,
            priority: 0,
            due: None,
            follow_up: None,
            escalation: Vec::new(),
        }
    }

    /// The JSON Schema decisions are checked against, as recorded with each task.
    pub fn decision_schema(&self) -> serde_json::Value {
        schemars::schema_for!(D).to_value()
    }
}

/// When, counted from the task's creation: in clock time or in business time.
#[derive(Clone, Debug)]
enum After {
    Clock(Duration),
    Business(Arc<BusinessCalendar>, BusinessTime),
}

impl After {
    fn counted_from(&self, created_ms: u64) -> Result<u64, String> {
        match self {
            After::Clock(duration) => {
                Ok(created_ms
                    .saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)))
            }
            After::Business(calendar, amount) => {
                let from = SystemTime::UNIX_EPOCH + Duration::from_millis(created_ms);
                let due = calendar
                    .after(from, *amount)
                    .map_err(|err| err.to_string())?;
                Ok(cairn_runtime::clock::unix_ms(due))
            }
        }
    }
}

/// A deadline for [`HumanTask::due_in`] and the escalation tiers: clock time
/// (`Duration`) or business time on a calendar ([`Deadline::business`]).
#[derive(Clone, Debug)]
pub struct Deadline(After);

impl Deadline {
    /// `amount` of business time on `calendar` (working hours, holidays, its time zone):
    /// "2 business days" from a Friday afternoon is Tuesday afternoon.
    pub fn business(calendar: &Arc<BusinessCalendar>, amount: BusinessTime) -> Self {
        Deadline(After::Business(calendar.clone(), amount))
    }
}

impl From<Duration> for Deadline {
    fn from(duration: Duration) -> Self {
        Deadline(After::Clock(duration))
    }
}

/// What an escalation tier does when it fires.
#[derive(Clone, Debug)]
pub enum Escalate<D> {
    /// Takes the task back and offers it to these roles (L1 -> L2).
    ToRoles(Vec<String>),
    /// Takes the task back and offers it to these users.
    ToUsers(Vec<String>),
    /// Only records (and notifies) that the task is late.
    Notify,
    /// Completes the task with this decision.
    Decide(D),
}

impl<D> Escalate<D> {
    /// Offers the task to `roles` instead.
    pub fn to_roles<R: Into<String>>(roles: impl IntoIterator<Item = R>) -> Self {
        Escalate::ToRoles(roles.into_iter().map(Into::into).collect())
    }

    /// Offers the task to these users instead (a named supervisor, say).
    ///
    /// ```
    /// use cairn::Escalate;
    ///
    /// let tier: Escalate<bool> = Escalate::to_users(["maria"]);
    /// assert!(matches!(tier, Escalate::ToUsers(users) if users == ["maria"]));
    /// ```
    pub fn to_users<U: Into<String>>(users: impl IntoIterator<Item = U>) -> Self {
        Escalate::ToUsers(users.into_iter().map(Into::into).collect())
    }
}

/// One human task to create, built from a [`TaskKind`]; see [`Ctx::human_task`].
#[derive(Debug)]
#[must_use = "a task does nothing until passed to `ctx.human_task`"]
pub struct HumanTask<I, D> {
    kind: TaskKind<I, D>,
    input: I,
    title: String,
    description: String,
    candidates: Candidates,
    assignee: Option<String>,
    priority: i32,
    due: Option<Deadline>,
    follow_up: Option<Deadline>,
    escalation: Vec<(Deadline, Escalate<D>)>,
}

impl<I: Payload, D: Payload + schemars::JsonSchema> HumanTask<I, D> {
    /// The line inboxes show.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// What the person should do.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Holders of these roles may claim it.
    pub fn roles<R: Into<String>>(mut self, roles: impl IntoIterator<Item = R>) -> Self {
        self.candidates
            .roles
            .extend(roles.into_iter().map(Into::into));
        self
    }

    /// These users may claim it.
    pub fn users<U: Into<String>>(mut self, users: impl IntoIterator<Item = U>) -> Self {
        self.candidates
            .users
            .extend(users.into_iter().map(Into::into));
        self
    }

    /// It belongs to `user` from the start.
    pub fn assignee(mut self, user: impl Into<String>) -> Self {
        self.assignee = Some(user.into());
        self
    }

    /// Higher is more urgent (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Due this long after it is created (a `Duration`, or [`Deadline::business`]).
    pub fn due_in(mut self, deadline: impl Into<Deadline>) -> Self {
        self.due = Some(deadline.into());
        self
    }

    /// Someone should look at it again this long after it is created.
    pub fn follow_up_in(mut self, deadline: impl Into<Deadline>) -> Self {
        self.follow_up = Some(deadline.into());
        self
    }

    /// Adds an escalation tier: if the task is still open this long after it was created,
    /// `action`. Tiers fire in the order added, each once, recorded in the history.
    pub fn escalate_after(mut self, deadline: impl Into<Deadline>, action: Escalate<D>) -> Self {
        self.escalation.push((deadline.into(), action));
        self
    }

    /// The recorded spec, with times counted from `created_ms`.
    fn spec(self, ctx: &Ctx, created_ms: u64) -> Result<TaskSpec, Error> {
        let codec = ctx.raw().codec();
        let name = self.kind.name;
        let bad = |what: String| {
            Error::InvalidArgument(format!(
                "task `{name}` of instance `{}`: {what}",
                ctx.instance_id()
            ))
        };
        if self.candidates.is_empty() && self.assignee.is_none() {
            return Err(bad(
                "it names no candidate users or roles and no assignee, so nobody could act on it"
                    .into(),
            ));
        }
        let at = |deadline: &Deadline| deadline.0.counted_from(created_ms).map_err(&bad);
        let mut escalation = Vec::with_capacity(self.escalation.len());
        for (deadline, action) in &self.escalation {
            let action = match action {
                Escalate::ToRoles(roles) => EscalationAction::Reassign(Candidates {
                    users: Vec::new(),
                    roles: roles.clone(),
                }),
                Escalate::ToUsers(users) => EscalationAction::Reassign(Candidates {
                    users: users.clone(),
                    roles: Vec::new(),
                }),
                Escalate::Notify => EscalationAction::Notify,
                Escalate::Decide(decision) => EscalationAction::Decide(
                    encode(codec, decision).map_err(|err| bad(err.to_string()))?,
                ),
            };
            escalation.push(EscalationTier {
                at_ms: at(deadline)?,
                action,
            });
        }
        if escalation.windows(2).any(|w| w[1].at_ms < w[0].at_ms) {
            return Err(bad(
                "its escalation tiers must be added in the order they fire".into(),
            ));
        }
        Ok(TaskSpec {
            name: name.to_owned(),
            title: self.title,
            description: self.description,
            input: encode(codec, &self.input).map_err(|err| bad(err.to_string()))?,
            decision_schema: self.kind.decision_schema().to_string(),
            candidates: self.candidates,
            assignee: self.assignee,
            priority: self.priority,
            due_at_ms: self.due.as_ref().map(at).transpose()?,
            follow_up_at_ms: self.follow_up.as_ref().map(at).transpose()?,
            escalation,
        })
    }
}

/// A task's decision as the workflow receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided<D> {
    /// The decision.
    pub decision: D,
    /// Who decided (`cairn` when an escalation tier decided).
    pub by: Actor,
    /// The escalation tier that decided, if one did.
    pub escalation: Option<u32>,
}

impl Ctx {
    /// Creates human `task` and waits for its decision, durably: the task is recorded
    /// before the wait and survives restarts; people act on it through the host
    /// ([`Runtime::claim`], [`Runtime::complete`], ...); its escalation tiers fire once
    /// each when their time comes, also if the host was down then (at the next start).
    ///
    /// # Errors
    /// [`Cancelled`] if the instance is cancelled while the task is open (the task is
    /// closed with it).
    ///
    /// # Cancel safety
    /// The step number is taken when `human_task` is called. Dropping the future inside a
    /// running workflow (a lost `select!`, say against a timer) withdraws the task: it
    /// leaves every inbox, and completing it is refused.
    pub fn human_task<I: Payload, D: Payload + schemars::JsonSchema>(
        &self,
        task: HumanTask<I, D>,
    ) -> impl std::future::Future<Output = Result<Decided<D>, Cancelled>> + Send + 'static {
        let step = self.raw().next_step();
        let raw = self.raw().clone();
        let spec = task.spec(self, raw.clock_now_ms());
        async move {
            let spec = match spec {
                Ok(spec) => spec,
                Err(err) => return raw.abort(err).await,
            };
            let decided = raw.human_task(step, spec).await?;
            match decode::<D>(raw.codec(), &decided.decision) {
                Ok(decision) => Ok(Decided {
                    decision,
                    by: decided.actor,
                    escalation: decided.escalation,
                }),
                Err(err) => {
                    let err = Error::PayloadDecode {
                        instance: raw.instance_id().to_owned(),
                        position: format!("decision of task {step}"),
                        type_name: std::any::type_name::<D>(),
                        message: err.to_string(),
                    };
                    raw.abort(err).await
                }
            }
        }
    }
}

impl Runtime {
    /// Open tasks matching `query`, from the open-task index (no history is read):
    /// `TaskQuery::for_actor(&actor)` is a person's inbox, what they hold and what they
    /// may claim; `TaskQuery::default()` every open task. Pages continue from
    /// `page.next`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn tasks(&self, query: &TaskQuery) -> Result<TaskPage, Error> {
        self.engine().tasks(query).await
    }

    /// One task as its history tells it: spec, holder, escalations, comments, status.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::TaskNotFound`].
    pub async fn task(&self, task: &TaskId) -> Result<TaskInfo, Error> {
        self.engine().task(&task.instance, task.step).await
    }

    /// `actor` claims `task` (a candidate, by name or role, of a task nobody holds).
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written) when they may not; [`Error::TaskClosed`],
    /// [`Error::TaskNotFound`].
    ///
    /// # Durability
    /// On `Ok` the claim is on disk, with the actor.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the claim is still checked and recorded (unless
    /// refused; never twice) by a task of the runtime. Dropped before it was polled,
    /// nothing was sent. The same holds for [`Runtime::release`], [`Runtime::delegate`]
    /// and [`Runtime::comment`].
    pub async fn claim(&self, actor: &Actor, task: &TaskId) -> Result<(), Error> {
        self.engine()
            .act_on_task(actor, &task.instance, task.step, TaskOp::Claim)
            .await
    }

    /// `actor`, who holds `task`, gives it back to its candidates.
    ///
    /// # Errors
    /// As [`Runtime::claim`].
    pub async fn release(&self, actor: &Actor, task: &TaskId) -> Result<(), Error> {
        self.engine()
            .act_on_task(actor, &task.instance, task.step, TaskOp::Release)
            .await
    }

    /// `actor` (its holder, or a candidate while nobody holds it) hands `task` to user
    /// `to`.
    ///
    /// # Errors
    /// As [`Runtime::claim`].
    pub async fn delegate(&self, actor: &Actor, task: &TaskId, to: &str) -> Result<(), Error> {
        let op = TaskOp::Delegate { to: to.to_owned() };
        self.engine()
            .act_on_task(actor, &task.instance, task.step, op)
            .await
    }

    /// `actor` (its holder or a candidate) comments on `task`; the comment is recorded in
    /// the history.
    ///
    /// # Errors
    /// As [`Runtime::claim`]; [`Error::InvalidArgument`] for an empty or over-long text.
    pub async fn comment(&self, actor: &Actor, task: &TaskId, text: &str) -> Result<(), Error> {
        let op = TaskOp::Comment {
            text: text.to_owned(),
        };
        self.engine()
            .act_on_task(actor, &task.instance, task.step, op)
            .await
    }

    /// `actor` completes `task` with `decision` (its holder, or a candidate while nobody
    /// holds it). The decision is checked against the task's schema first.
    ///
    /// # Errors
    /// [`Error::InvalidDecision`], [`Error::Forbidden`], [`Error::TaskClosed`],
    /// [`Error::TaskNotFound`]: nothing is written and the task stays as it was.
    ///
    /// # Durability
    /// On `Ok` the decision is on disk; the workflow carries on even after a crash.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the decision is still checked and recorded (unless
    /// refused; never twice) by a task of the runtime; once it is, it reaches the
    /// workflow by the commit itself. Dropped before it was polled, nothing was sent.
    pub async fn complete<D: Payload>(
        &self,
        actor: &Actor,
        task: &TaskId,
        decision: &D,
    ) -> Result<(), Error> {
        let json = serde_json::to_value(decision).map_err(|err| {
            Error::InvalidArgument(format!("the decision does not serialize as JSON: {err}"))
        })?;
        self.complete_json(actor, task, json).await
    }

    /// [`Runtime::complete`] with a JSON decision (from a form, an HTTP request).
    ///
    /// # Errors
    /// As [`Runtime::complete`].
    ///
    /// # Cancel safety
    /// As [`Runtime::complete`].
    pub async fn complete_json(
        &self,
        actor: &Actor,
        task: &TaskId,
        decision: serde_json::Value,
    ) -> Result<(), Error> {
        self.engine()
            .complete_task(actor, &task.instance, task.step, decision)
            .await
    }
}
