//! Human tasks: what a task is as recorded, who may act on it, and how each of its events
//! changes it. Pure: the workflow context, the engine's task operations and every store's
//! open-task index apply these same rules, so they cannot disagree.
//!
//! A task is one step of its workflow. The run records `TaskCreated` and then waits; the
//! people it names act on it from outside (claim, release, delegate, comment: a
//! `TaskChanged` each; complete: `TaskCompleted`, the step's outcome), and the run itself
//! records the escalations its policy schedules. Every change is decided against the
//! state the history builds ([`decide`](crate::step::task::decide),
//! [`escalate`](crate::step::task::escalate)) and appended only if the history has not
//! moved meanwhile, so two people cannot both complete a task.

use serde::{Deserialize, Serialize};

use crate::codec::Payload;

/// Who asks: a user id and the roles the host's authentication gave them. Recorded with
/// every task event, so the history answers "who did this, and as what".
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The user's id (`"alice"`), or `"cairn"` for what the runtime does by itself.
    pub id: String,
    /// The roles the user acts with.
    pub roles: Vec<String>,
}

/// The id the runtime records for what it does by itself (an escalation).
pub const SYSTEM_ACTOR: &str = "cairn";

impl Actor {
    /// User `id` with `roles`.
    ///
    /// ```
    /// use cairn_core::task::Actor;
    /// let alice = Actor::new("alice", ["underwriter"]);
    /// assert!(alice.has_role("underwriter"));
    /// ```
    pub fn new<R: Into<String>>(id: impl Into<String>, roles: impl IntoIterator<Item = R>) -> Self {
        Self {
            id: id.into(),
            roles: roles.into_iter().map(Into::into).collect(),
        }
    }

    /// The runtime itself (escalations).
    pub fn system() -> Self {
        Self {
            id: SYSTEM_ACTOR.to_owned(),
            roles: Vec::new(),
        }
    }

    /// Whether the actor holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Who may claim a task: named users and holders of named roles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidates {
    /// User ids.
    pub users: Vec<String>,
    /// Roles.
    pub roles: Vec<String>,
}

impl Candidates {
    /// Whether `actor` is one of them, by id or by a role.
    pub fn include(&self, actor: &Actor) -> bool {
        self.users.contains(&actor.id) || self.roles.iter().any(|role| actor.has_role(role))
    }

    /// Whether nobody is named.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.roles.is_empty()
    }
}

/// A task as its workflow created it (the `TaskCreated` event). Times are absolute, ms
/// since the Unix epoch on the runtime clock, computed when the task was created (from
/// business time too), so a replay or another host sees the same deadlines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task's kind (`"underwrite"`): its step's name, checked on replay.
    pub name: String,
    /// One line for inboxes.
    pub title: String,
    /// What the person should do.
    pub description: String,
    /// What the person is shown (encoded by the runtime's codec).
    pub input: Payload,
    /// JSON Schema of the decision the task expects, derived from its Rust type; a
    /// decision that does not validate against it is refused before anything is written.
    pub decision_schema: String,
    /// Who may claim it.
    pub candidates: Candidates,
    /// Who holds it from the start, if anyone.
    pub assignee: Option<String>,
    /// Higher is more urgent.
    pub priority: i32,
    /// When it is due.
    pub due_at_ms: Option<u64>,
    /// When someone should look at it again.
    pub follow_up_at_ms: Option<u64>,
    /// What happens when, in order of their times.
    pub escalation: Vec<EscalationTier>,
}

/// One tier of an escalation policy: at `at_ms`, if the task is still open, `action`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationTier {
    /// When the tier fires.
    pub at_ms: u64,
    /// What it does.
    pub action: EscalationAction,
}

/// What an escalation tier does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EscalationAction {
    /// Takes the task from whoever holds it and offers it to other candidates (L1 -> L2).
    Reassign(Candidates),
    /// Only records (and notifies) that the task is late.
    Notify,
    /// Completes the task with this decision on the candidates' behalf.
    Decide(Payload),
}

/// A change to an open task, recorded with its actor (`TaskChanged`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskChange {
    /// The actor took the task.
    Claimed,
    /// The actor gave the task back to its candidates.
    Released,
    /// The task now belongs to user `to`.
    Delegated {
        /// The new assignee.
        to: String,
    },
    /// The actor commented.
    Commented {
        /// The comment.
        text: String,
    },
    /// Escalation tier `tier` (from 0) fired; `reassigned` are the new candidates when it
    /// reassigns (the assignee is then cleared).
    Escalated {
        /// The tier.
        tier: u32,
        /// The tier's new candidates, if it reassigns.
        reassigned: Option<Candidates>,
    },
    /// The task passed its due time while open (recorded by the run, once).
    Overdue,
}

/// A comment on a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskComment {
    /// Who wrote it.
    pub actor: String,
    /// What they wrote.
    pub text: String,
    /// When it was recorded.
    pub at_ms: u64,
}

/// An open task's state, as its events built it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskState {
    /// As created.
    pub spec: TaskSpec,
    /// When it was created (commit time).
    pub created_at_ms: u64,
    /// Who holds it now.
    pub assignee: Option<String>,
    /// Who may claim it now (changed by a reassigning escalation).
    pub candidates: Candidates,
    /// Escalation tiers fired so far.
    pub escalations: u32,
    /// Whether it was recorded as overdue.
    pub overdue: bool,
    /// Comments, oldest first.
    pub comments: Vec<TaskComment>,
}

impl TaskState {
    /// A task just created at `at_ms`.
    pub fn new(spec: TaskSpec, at_ms: u64) -> Self {
        Self {
            assignee: spec.assignee.clone(),
            candidates: spec.candidates.clone(),
            spec,
            created_at_ms: at_ms,
            escalations: 0,
            overdue: false,
            comments: Vec::new(),
        }
    }

    /// The next escalation tier due, with its number.
    pub fn next_escalation(&self) -> Option<(u32, &EscalationTier)> {
        let tier = usize::try_from(self.escalations).ok()?;
        self.spec
            .escalation
            .get(tier)
            .map(|t| (self.escalations, t))
    }

    /// Whether `actor` may act on the task as its holder: they hold it, or nobody does
    /// and they are a candidate.
    pub fn may_act(&self, actor: &Actor) -> bool {
        match &self.assignee {
            Some(holder) => *holder == actor.id,
            None => self.candidates.include(actor),
        }
    }

    /// Applies a recorded change by `actor` at `at_ms`.
    ///
    /// # Errors
    /// Why the change cannot follow the task's state (a malformed history).
    pub fn apply(&mut self, actor: &Actor, change: &TaskChange, at_ms: u64) -> Result<(), String> {
        match change {
            TaskChange::Claimed => self.assignee = Some(actor.id.clone()),
            TaskChange::Released => self.assignee = None,
            TaskChange::Delegated { to } => self.assignee = Some(to.clone()),
            TaskChange::Commented { text } => self.comments.push(TaskComment {
                actor: actor.id.clone(),
                text: text.clone(),
                at_ms,
            }),
            TaskChange::Escalated { tier, reassigned } => {
                let Some((due, planned)) = self.next_escalation() else {
                    return Err(format!("escalation tier {tier} fired, but none is left"));
                };
                if *tier != due {
                    return Err(format!(
                        "escalation tier {tier} fired, but tier {due} is next"
                    ));
                }
                match (&planned.action, reassigned) {
                    (EscalationAction::Reassign(to), Some(recorded)) if to == recorded => {
                        self.candidates = recorded.clone();
                        self.assignee = None;
                    }
                    (EscalationAction::Notify, None) => {}
                    _ => {
                        return Err(format!(
                            "escalation tier {tier} recorded another action than the task's policy names"
                        ))
                    }
                }
                self.escalations += 1;
            }
            TaskChange::Overdue => {
                if self.overdue || self.spec.due_at_ms.is_none() {
                    return Err(
                        "a task without a due time, or already overdue, became overdue".into(),
                    );
                }
                self.overdue = true;
            }
        }
        Ok(())
    }
}

/// What someone outside asks of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskOp {
    /// Take it (claiming a task one holds already is a no-op).
    Claim,
    /// Give it back to its candidates.
    Release,
    /// Hand it to another user.
    Delegate {
        /// The new holder.
        to: String,
    },
    /// Comment on it.
    Comment {
        /// The comment.
        text: String,
    },
    /// Complete it with a decision, already validated against the task's schema and
    /// encoded.
    Complete {
        /// The decision.
        decision: Payload,
    },
}

impl TaskOp {
    /// The operation's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            TaskOp::Claim => "claim",
            TaskOp::Release => "release",
            TaskOp::Delegate { .. } => "delegate",
            TaskOp::Comment { .. } => "comment on",
            TaskOp::Complete { .. } => "complete",
        }
    }
}

/// Why an operation on an open task is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The actor is neither a candidate nor the holder.
    NotCandidate,
    /// Someone else holds the task.
    HeldBy(String),
    /// Only the holder may do this, and the actor does not hold it.
    NotHolder,
    /// The request itself is malformed (an empty delegate, an over-long comment).
    Invalid(String),
}

/// Longest comment a task takes, in bytes.
pub const COMMENT_BYTES_MAX: usize = 16 * 1024;

/// Longest user id a task is delegated to, in bytes.
pub const USER_ID_BYTES_MAX: usize = 256;

/// Why `actor` may not act on `state` as its holder ([`TaskState::may_act`] is false).
pub fn refusal_for(state: &TaskState, actor: &Actor) -> Refusal {
    match &state.assignee {
        Some(holder) if *holder != actor.id => Refusal::HeldBy(holder.clone()),
        _ => Refusal::NotCandidate,
    }
}

/// An open task as a store indexes it: enough to list and filter inboxes without
/// reading histories. Derived from the task's events ([`TaskRow::opened`],
/// [`TaskRow::apply`]); a store can rebuild it from the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    /// The run the task belongs to.
    pub key: u128,
    /// Its step in that run.
    pub step: u32,
    /// The instance's user id.
    pub instance: String,
    /// The instance's workflow type.
    pub workflow_type: String,
    /// The task's kind.
    pub name: String,
    /// Its title.
    pub title: String,
    /// Its priority.
    pub priority: i32,
    /// When it was created.
    pub created_at_ms: u64,
    /// When it is due.
    pub due_at_ms: Option<u64>,
    /// When to look at it again.
    pub follow_up_at_ms: Option<u64>,
    /// Who holds it.
    pub assignee: Option<String>,
    /// Who may claim it.
    pub candidates: Candidates,
    /// Escalation tiers fired so far.
    pub escalations: u32,
    /// When each escalation tier fires, in order.
    pub escalation_at_ms: Vec<u64>,
    /// Whether it was recorded as overdue.
    pub overdue: bool,
}

impl TaskRow {
    /// The row of task `step` of run `key` (instance `instance` of `workflow_type`),
    /// created at `at_ms` as `spec` says.
    pub fn opened(
        key: u128,
        instance: &str,
        workflow_type: &str,
        step: u32,
        spec: &TaskSpec,
        at_ms: u64,
    ) -> Self {
        Self {
            key,
            step,
            instance: instance.to_owned(),
            workflow_type: workflow_type.to_owned(),
            name: spec.name.clone(),
            title: spec.title.clone(),
            priority: spec.priority,
            created_at_ms: at_ms,
            due_at_ms: spec.due_at_ms,
            follow_up_at_ms: spec.follow_up_at_ms,
            assignee: spec.assignee.clone(),
            candidates: spec.candidates.clone(),
            escalations: 0,
            escalation_at_ms: spec.escalation.iter().map(|t| t.at_ms).collect(),
            overdue: false,
        }
    }

    /// The row of an open task whose events built `state`.
    pub fn of_state(
        key: u128,
        instance: &str,
        workflow_type: &str,
        step: u32,
        state: &TaskState,
    ) -> Self {
        let mut row = Self::opened(
            key,
            instance,
            workflow_type,
            step,
            &state.spec,
            state.created_at_ms,
        );
        row.assignee = state.assignee.clone();
        row.candidates = state.candidates.clone();
        row.escalations = state.escalations;
        row.overdue = state.overdue;
        row
    }

    /// Applies a recorded change by `actor` (comments change nothing listed).
    pub fn apply(&mut self, actor: &Actor, change: &TaskChange) {
        match change {
            TaskChange::Claimed => self.assignee = Some(actor.id.clone()),
            TaskChange::Released => self.assignee = None,
            TaskChange::Delegated { to } => self.assignee = Some(to.clone()),
            TaskChange::Commented { .. } => {}
            TaskChange::Escalated { reassigned, .. } => {
                if let Some(to) = reassigned {
                    self.candidates = to.clone();
                    self.assignee = None;
                }
                self.escalations += 1;
            }
            TaskChange::Overdue => self.overdue = true,
        }
    }

    /// When its next escalation fires, if one is left.
    pub fn next_escalation_ms(&self) -> Option<u64> {
        usize::try_from(self.escalations)
            .ok()
            .and_then(|tier| self.escalation_at_ms.get(tier).copied())
    }

    /// The inbox entries the row is listed under (see [`Party`]): everyone's, and then
    /// its holder's or, while nobody holds it, each candidate's.
    pub fn parties(&self) -> Vec<Party> {
        let mut parties = vec![Party::All];
        match &self.assignee {
            Some(holder) => parties.push(Party::Holder(holder.clone())),
            None => {
                parties.extend(self.candidates.users.iter().cloned().map(Party::User));
                parties.extend(self.candidates.roles.iter().cloned().map(Party::Role));
            }
        }
        parties.sort();
        parties.dedup();
        parties
    }
}

/// Names one task: its instance's id and its step there, written `instance/step`
/// (`loan-7/4`). The step is the part after the last `/`, so instance ids may hold `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// The instance's user id.
    pub instance: String,
    /// The task's step.
    pub step: u32,
}

impl TaskId {
    /// Task `step` of instance `instance`.
    pub fn new(instance: impl Into<String>, step: u32) -> Self {
        Self {
            instance: instance.into(),
            step,
        }
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.instance, self.step)
    }
}

impl std::str::FromStr for TaskId {
    type Err = String;

    /// ```
    /// use cairn_core::task::TaskId;
    /// let id: TaskId = "orders/2026/7/3".parse().unwrap();
    /// assert_eq!((id.instance.as_str(), id.step), ("orders/2026/7", 3));
    /// assert!("no-step".parse::<TaskId>().is_err());
    /// ```
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (instance, step) = text
            .rsplit_once('/')
            .ok_or_else(|| format!("`{text}` is not a task id (`instance/step`)"))?;
        let step = step
            .parse()
            .map_err(|_| format!("`{text}` is not a task id: `{step}` is not a step number"))?;
        if instance.is_empty() {
            return Err(format!("`{text}` is not a task id: the instance is empty"));
        }
        Ok(Self::new(instance, step))
    }
}

impl TaskRow {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        TaskId::new(self.instance.clone(), self.step)
    }
}

/// An inbox an open task is listed in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Party {
    /// Every open task.
    All,
    /// Tasks held by this user.
    Holder(String),
    /// Unheld tasks this user may claim by name.
    User(String),
    /// Unheld tasks holders of this role may claim.
    Role(String),
}

impl Party {
    /// The key a store files the party under: `*`, `a:<user>`, `u:<user>`, `r:<role>`.
    pub fn key(&self) -> String {
        match self {
            Party::All => "*".to_owned(),
            Party::Holder(user) => format!("a:{user}"),
            Party::User(user) => format!("u:{user}"),
            Party::Role(role) => format!("r:{role}"),
        }
    }

    /// The inboxes `actor` sees: what they hold, and what they may claim by name or role.
    pub fn of(actor: &Actor) -> Vec<Party> {
        let mut parties = vec![
            Party::Holder(actor.id.clone()),
            Party::User(actor.id.clone()),
        ];
        parties.extend(actor.roles.iter().cloned().map(Party::Role));
        parties.sort();
        parties.dedup();
        parties
    }
}
