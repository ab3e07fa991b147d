//! Who may do what: an [`Actor`] asks for an [`Action`], and the host's [`Policy`]
//! allows it or says why not. Checked before anything is written, so a denial writes
//! nothing. Tasks have their own rules on top (only a candidate claims, only the holder
//! completes; see [`crate::task`]).

use std::collections::BTreeMap;

use crate::task::Actor;

/// What an actor asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Start an instance of `workflow_type`.
    Start {
        /// The type.
        workflow_type: &'a str,
    },
    /// Send signal `signal` to instance `instance` of `workflow_type`.
    Signal {
        /// The instance.
        instance: &'a str,
        /// Its type.
        workflow_type: &'a str,
        /// The signal's name.
        signal: &'a str,
    },
    /// Send update `update` to instance `instance` of `workflow_type` and wait for its
    /// answer.
    Update {
        /// The instance.
        instance: &'a str,
        /// Its type.
        workflow_type: &'a str,
        /// The update's name.
        update: &'a str,
    },
    /// Request cancellation of an instance.
    Cancel {
        /// The instance.
        instance: &'a str,
        /// Its type.
        workflow_type: &'a str,
    },
    /// Terminate an instance.
    Terminate {
        /// The instance.
        instance: &'a str,
        /// Its type.
        workflow_type: &'a str,
    },
    /// Read an instance: its status, history, attributes and tasks.
    Read {
        /// The instance, or `*` for every instance of the type: a caller allowed that
        /// sees counts kept for the whole type (the overview) instead of counts made
        /// from the instances it may read one by one. A policy that decides per instance
        /// should refuse `*`.
        instance: &'a str,
        /// Its type.
        workflow_type: &'a str,
    },
    /// Manage a schedule: pause it, resume it, or start an occurrence now.
    Schedule {
        /// The schedule.
        schedule: &'a str,
        /// The workflow type it starts.
        workflow_type: &'a str,
    },
    /// Attach a document to an instance (or to one of its tasks).
    Attach {
        /// The instance.
        instance: &'a str,
        /// Its type.
        workflow_type: &'a str,
    },
    /// Act on a task of an instance (claim, complete, ...); the task's own rules apply
    /// after this.
    Task {
        /// The instance.
        instance: &'a str,
        /// Its type.
        workflow_type: &'a str,
        /// The task's kind.
        task: &'a str,
    },
}

impl Action<'_> {
    /// The verb, for rules and messages.
    pub fn verb(&self) -> Verb {
        match self {
            Action::Start { .. } => Verb::Start,
            Action::Signal { .. } => Verb::Signal,
            Action::Update { .. } => Verb::Update,
            Action::Cancel { .. } => Verb::Cancel,
            Action::Terminate { .. } => Verb::Terminate,
            Action::Read { .. } => Verb::Read,
            Action::Attach { .. } => Verb::Attach,
            Action::Schedule { .. } => Verb::Schedule,
            Action::Task { .. } => Verb::Task,
        }
    }

    /// The workflow type the action concerns.
    pub fn workflow_type(&self) -> &str {
        match self {
            Action::Start { workflow_type }
            | Action::Signal { workflow_type, .. }
            | Action::Update { workflow_type, .. }
            | Action::Cancel { workflow_type, .. }
            | Action::Terminate { workflow_type, .. }
            | Action::Read { workflow_type, .. }
            | Action::Attach { workflow_type, .. }
            | Action::Schedule { workflow_type, .. }
            | Action::Task { workflow_type, .. } => workflow_type,
        }
    }

    /// What it is, in words: `start an instance of `loan``, `signal `L-7``.
    pub fn describe(&self) -> String {
        match self {
            Action::Start { workflow_type } => format!("start an instance of `{workflow_type}`"),
            Action::Signal {
                instance, signal, ..
            } => format!("send signal `{signal}` to instance `{instance}`"),
            Action::Update {
                instance, update, ..
            } => format!("send update `{update}` to instance `{instance}`"),
            Action::Cancel { instance, .. } => format!("cancel instance `{instance}`"),
            Action::Terminate { instance, .. } => format!("terminate instance `{instance}`"),
            Action::Read { instance, .. } => format!("read instance `{instance}`"),
            Action::Attach { instance, .. } => {
                format!("attach a document to instance `{instance}`")
            }
            Action::Schedule { schedule, .. } => format!("manage schedule `{schedule}`"),
            Action::Task { instance, task, .. } => {
                format!("act on task `{task}` of instance `{instance}`")
            }
        }
    }
}

/// The kinds of [`Action`], for rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// [`Action::Start`].
    Start,
    /// [`Action::Signal`].
    Signal,
    /// [`Action::Update`].
    Update,
    /// [`Action::Cancel`].
    Cancel,
    /// [`Action::Terminate`].
    Terminate,
    /// [`Action::Read`].
    Read,
    /// [`Action::Attach`].
    Attach,
    /// [`Action::Task`].
    Task,
    /// [`Action::Schedule`].
    Schedule,
}

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 9] = [
        Verb::Start,
        Verb::Signal,
        Verb::Update,
        Verb::Cancel,
        Verb::Terminate,
        Verb::Read,
        Verb::Attach,
        Verb::Task,
        Verb::Schedule,
    ];
}

/// The role every actor holds in [`Roles`] rules ([`Roles::allow_anyone`]).
pub const ANYONE: &str = "*";

/// Decides what actors may do.
pub trait Policy: Send + Sync + 'static {
    /// Allows `action` for `actor`, or says why not.
    ///
    /// # Errors
    /// Why the action is denied, in words the actor may read.
    fn check(&self, actor: &Actor, action: &Action<'_>) -> Result<(), String>;
}

/// Allows everything (a host whose callers are all trusted, or that checks elsewhere).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Policy for AllowAll {
    fn check(&self, _actor: &Actor, _action: &Action<'_>) -> Result<(), String> {
        Ok(())
    }
}

/// Role-based rules: a verb on a workflow type (or on every type) is allowed to the
/// holders of some roles; anything not allowed is denied.
///
/// ```
/// use cairn_core::policy::{Action, Policy, Roles, Verb};
/// use cairn_core::task::Actor;
///
/// let policy = Roles::new()
///     .allow(Verb::Start, "loan_approval", ["clerk"])
///     .allow(Verb::Read, "loan_approval", ["clerk", "underwriter", "auditor"])
///     .allow_any_type(Verb::Task, ["underwriter", "senior_underwriter"])
///     .admin("admin");
/// let clerk = Actor::new("cleo", ["clerk"]);
/// assert!(policy.check(&clerk, &Action::Start { workflow_type: "loan_approval" }).is_ok());
/// let cancel = Action::Cancel { instance: "L-1", workflow_type: "loan_approval" };
/// assert!(policy.check(&clerk, &cancel).is_err());
/// assert!(policy.check(&Actor::new("root", ["admin"]), &cancel).is_ok());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Roles {
    /// (verb, workflow type or `None` for any) -> roles allowed.
    rules: BTreeMap<(Verb, Option<String>), Vec<String>>,
    /// Roles allowed everything.
    admins: Vec<String>,
}

impl Roles {
    /// No rules: everything is denied.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows `verb` on instances of `workflow_type` to holders of `roles`.
    pub fn allow<R: Into<String>>(
        mut self,
        verb: Verb,
        workflow_type: &str,
        roles: impl IntoIterator<Item = R>,
    ) -> Self {
        self.rules
            .entry((verb, Some(workflow_type.to_owned())))
            .or_default()
            .extend(roles.into_iter().map(Into::into));
        self
    }

    /// Allows `verb` on instances of every type to holders of `roles`.
    pub fn allow_any_type<R: Into<String>>(
        mut self,
        verb: Verb,
        roles: impl IntoIterator<Item = R>,
    ) -> Self {
        self.rules
            .entry((verb, None))
            .or_default()
            .extend(roles.into_iter().map(Into::into));
        self
    }

    /// Allows `verb` on instances of every type to every actor (the role `*`): for task
    /// actions, whose own rules then decide (only a candidate claims, only the holder
    /// completes).
    pub fn allow_anyone(self, verb: Verb) -> Self {
        self.allow_any_type(verb, [ANYONE])
    }

    /// Allows holders of `role` everything.
    pub fn admin(mut self, role: impl Into<String>) -> Self {
        self.admins.push(role.into());
        self
    }

    fn roles_for(&self, verb: Verb, workflow_type: &str) -> impl Iterator<Item = &String> {
        let typed = self.rules.get(&(verb, Some(workflow_type.to_owned())));
        let any = self.rules.get(&(verb, None));
        typed
            .into_iter()
            .chain(any)
            .flatten()
            .chain(self.admins.iter())
    }
}

impl Policy for Roles {
    fn check(&self, actor: &Actor, action: &Action<'_>) -> Result<(), String> {
        let mut allowed = self
            .roles_for(action.verb(), action.workflow_type())
            .peekable();
        if allowed.peek().is_none() {
            return Err(format!("nobody may {}", action.describe()));
        }
        let allowed: Vec<&String> = allowed.collect();
        if allowed
            .iter()
            .any(|role| role.as_str() == ANYONE || actor.has_role(role))
        {
            return Ok(());
        }
        let mut names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        Err(format!(
            "it needs one of the roles {}, and they have {}",
            names.join(", "),
            if actor.roles.is_empty() {
                "none".to_owned()
            } else {
                actor.roles.join(", ")
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_the_roles_an_action_needs() {
        let policy = Roles::new().allow(Verb::Signal, "permit", ["clerk"]);
        let signal = Action::Signal {
            instance: "P-1",
            workflow_type: "permit",
            signal: "documents",
        };
        let denied = policy
            .check(&Actor::new("ann", ["citizen"]), &signal)
            .unwrap_err();
        assert_eq!(
            denied,
            "it needs one of the roles clerk, and they have citizen"
        );
        let other_type = Action::Signal {
            instance: "L-1",
            workflow_type: "loan",
            signal: "documents",
        };
        assert!(policy
            .check(&Actor::new("cleo", ["clerk"]), &other_type)
            .unwrap_err()
            .starts_with("nobody may"));
        assert!(policy
            .check(&Actor::new("cleo", ["clerk"]), &signal)
            .is_ok());
    }
}
