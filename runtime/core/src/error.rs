//! Errors of the runtime. Each variant that reaches a user carries a stable code
//! (`CAIRN-Exxxx`), explained with cause and remedy in `docs/ERRORS.md`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::event::StepNo;

/// One durable call as the workflow code asked for it or as history recorded it; the two
/// halves of a [`NonDeterminism`] diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepDescriptor {
    /// `"activity"` or `"side_effect"`; `"workflow result"` when the code returned where
    /// history has more steps (or, in an audit replay, a different result);
    /// `"end of history"` when an audit replay of a finished history asks for more.
    pub kind: &'static str,
    /// Activity or side-effect name.
    pub name: String,
    /// The encoded input, when the step has one (activities).
    pub input: Option<String>,
}

impl fmt::Display for StepDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.kind, self.name)?;
        if let Some(input) = &self.input {
            write!(f, " with input {input}")?;
        }
        Ok(())
    }
}

/// Workflow code asked for a different step than its history recorded at the same
/// position. Code `CAIRN-E0001`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonDeterminism {
    /// User id of the instance.
    pub instance: String,
    /// Workflow type.
    pub workflow_type: String,
    /// The step number where code and history part.
    pub step: StepNo,
    /// What history holds at `step`.
    pub recorded: StepDescriptor,
    /// What the code asked for at `step`.
    pub requested: StepDescriptor,
    /// The full encoded inputs differ (their shortened previews in `recorded` and
    /// `requested` may still be equal when they differ only further on).
    pub inputs_differ: bool,
    /// A later step of the history records exactly the call the code requested (kind,
    /// name and input): the code made the same calls, numbered in another order, as
    /// concurrent branches can when they went on in the same poll in an order other than
    /// the one their outcomes were recorded in.
    pub recorded_at: Option<StepNo>,
}

impl NonDeterminism {
    /// The fields that differ, one line each.
    pub fn diff(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.recorded.kind != self.requested.kind {
            lines.push(format!(
                "kind: recorded {}, requested {}",
                self.recorded.kind, self.requested.kind
            ));
        }
        if self.recorded.name != self.requested.name {
            lines.push(format!(
                "name: recorded `{}`, requested `{}`",
                self.recorded.name, self.requested.name
            ));
        }
        if self.recorded.input != self.requested.input || self.inputs_differ {
            let suffix = if self.recorded.input == self.requested.input {
                " (the inputs differ after the part shown)"
            } else {
                ""
            };
            lines.push(format!(
                "input: recorded {}, requested {}{suffix}",
                self.recorded.input.as_deref().unwrap_or("(none)"),
                self.requested.input.as_deref().unwrap_or("(none)")
            ));
        }
        lines
    }
}

impl fmt::Display for NonDeterminism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[CAIRN-E0001] non-deterministic workflow code: instance `{}` ({}) at step {}: history recorded {}, code requested {}",
            self.instance, self.workflow_type, self.step, self.recorded, self.requested
        )?;
        for line in self.diff() {
            write!(f, "; {line}")?;
        }
        if let Some(other) = self.recorded_at {
            return write!(
                f,
                ". The requested call is recorded as step {other}: the code made the same calls \
                 in another order. Steps are numbered when called, and the run and its \
                 replays hand outcomes over in the order they were recorded: a history \
                 written by an earlier build may hold concurrent branches (`join!`) that went \
                 on out of order, and a run stopped between a task's decision and taking it \
                 replays the decision earlier; let such an instance finish on the build that \
                 started it, or terminate it. If the code changed instead, restore the \
                 previous code path for instances started before the change"
            );
        }
        write!(f, ". Restore the previous code path for instances started before the change, or let them finish on the build that started them")
    }
}

impl std::error::Error for NonDeterminism {}

/// Everything that can go wrong in the runtime.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// See [`NonDeterminism`].
    #[error("{0}")]
    NonDeterminism(Box<NonDeterminism>),

    /// A recorded or supplied payload does not decode into the type the code expects.
    #[error("[CAIRN-E0002] payload of instance `{instance}` at {position} does not decode as `{type_name}`: {message}. A type changed incompatibly since the history was written; add #[serde(default)] or keep the old shape")]
    PayloadDecode {
        /// User id of the instance.
        instance: String,
        /// Where: `"input"`, `"step 3"`, `"result"`.
        position: String,
        /// The Rust type asked for.
        type_name: &'static str,
        /// The codec's message.
        message: String,
    },

    /// A value could not be encoded.
    #[error("[CAIRN-E0010] cannot encode {position} of instance `{instance}`: {message}")]
    PayloadEncode {
        /// User id of the instance.
        instance: String,
        /// Where.
        position: String,
        /// The codec's message.
        message: String,
    },

    /// An event would exceed [`crate::event::EVENT_BYTES_MAX`].
    #[error("[CAIRN-E0011] {position} of instance `{instance}` is {bytes} bytes, over the {max} byte event limit; store large data outside and pass a reference")]
    PayloadTooLarge {
        /// User id of the instance.
        instance: String,
        /// Where.
        position: String,
        /// Encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },

    /// The workflow type is not registered with this runtime.
    #[error("[CAIRN-E0003] unknown workflow type `{workflow_type}`{}: register it with the runtime builder before opening", instance.as_ref().map(|id| format!(" (instance `{id}`)")).unwrap_or_default())]
    UnknownWorkflowType {
        /// The type name.
        workflow_type: String,
        /// The instance that needs it, if any.
        instance: Option<String>,
    },

    /// An id was started again with another workflow type.
    #[error("[CAIRN-E0012] instance `{id}` already exists as a `{existing}` workflow, not `{requested}`; use another id")]
    WorkflowTypeMismatch {
        /// The id.
        id: String,
        /// Its recorded type.
        existing: String,
        /// The type asked for.
        requested: String,
    },

    /// No instance has this id.
    #[error("[CAIRN-E0007] no instance with id `{0}`")]
    InstanceNotFound(String),

    /// The instance was parked: it cannot run on this build until the reason is fixed.
    #[error("[CAIRN-E0008] instance `{instance}` is parked: {reason}")]
    Parked {
        /// User id of the instance.
        instance: String,
        /// Why (the error that parked it).
        reason: String,
    },

    /// The database file could not be opened.
    #[error("[CAIRN-E0005] cannot open `{path}` as a Cairn database: {message}. {remedy}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb or Cairn reported.
        message: String,
        /// What to do.
        remedy: &'static str,
    },

    /// Stored bytes are damaged: an event or index row does not decode, or a hash chain
    /// does not verify.
    #[error("[CAIRN-E0004] corrupt data in {location}: {message}. Stop the host, keep a copy of the file, check it with `cairn verify --db <file>`, and restore it from a backup")]
    Corrupt {
        /// Where (table, key, instance).
        location: String,
        /// What is wrong.
        message: String,
    },

    /// Reading or writing the database failed. Nothing unacknowledged is assumed written.
    #[error("[CAIRN-E0006] storage failure: {0}. If a commit failed, the writer refuses further appends: shut the runtime down and open it again once the cause (disk full, I/O error) is fixed")]
    Storage(#[source] StorageFailure),

    /// The file was written by a newer Cairn format.
    #[error("[CAIRN-E0009] `{path}` uses Cairn storage format {found}; this build reads format {supported}. Upgrade Cairn to open it")]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Found version.
        found: u32,
        /// Supported version.
        supported: u32,
    },

    /// The runtime is shutting down or was shut down.
    #[error("[CAIRN-E0013] the runtime is shut down; no new work is accepted")]
    ShutDown,

    /// An input given to the API is invalid.
    #[error("[CAIRN-E0014] invalid argument: {0}")]
    InvalidArgument(String),

    /// Workflow code panicked. The instance is parked; nothing after the panic was recorded.
    #[error("[CAIRN-E0015] workflow code of instance `{instance}` panicked: {message}. Fix the bug and restart the host; the instance resumes from its last recorded step")]
    WorkflowPanicked {
        /// User id of the instance.
        instance: String,
        /// The panic message.
        message: String,
    },

    /// The instance was terminated from outside before it produced a result.
    #[error("[CAIRN-E0018] instance `{instance}` was terminated: {reason}")]
    Terminated {
        /// User id of the instance.
        instance: String,
        /// The reason given to `terminate`.
        reason: String,
    },

    /// The instance has finished; it takes no more signals or events.
    #[error("[CAIRN-E0017] instance `{0}` has already finished; it accepts no more signals, cancellations or events")]
    InstanceFinished(String),

    /// A journal operation kept losing to concurrent events and gave up; the instance is
    /// parked and tried again at the next open.
    #[error("[CAIRN-E0019] {operation} of instance `{instance}` lost to concurrent events {tries} times in a row; it is parked and tried again when the host restarts. Slow down whatever keeps signalling it")]
    Contended {
        /// User id of the instance.
        instance: String,
        /// The operation (`"continue-as-new"`).
        operation: &'static str,
        /// How often it was tried.
        tries: u32,
    },

    /// A conditional append found the history at another length: another writer got
    /// there first. Nothing was written; read the history again before deciding.
    #[error("[CAIRN-E0020] append to instance `{instance}` expected its history to hold {expected} events, but it holds {actual}: another writer recorded first. Nothing was written; read the history again")]
    Conflict {
        /// User id of the instance.
        instance: String,
        /// The length the append was conditioned on.
        expected: u64,
        /// The length found.
        actual: u64,
    },

    /// No human task at that step of that instance.
    #[error("[CAIRN-E0021] instance `{instance}` has no task at step {step}; list the open tasks to find its id")]
    TaskNotFound {
        /// User id of the instance.
        instance: String,
        /// The step asked for.
        step: u32,
    },

    /// The task is no longer open (completed, cancelled, or its instance ended); nothing
    /// was written.
    #[error("[CAIRN-E0022] task {step} of instance `{instance}` is {state}; nothing was written")]
    TaskClosed {
        /// User id of the instance.
        instance: String,
        /// The task's step.
        step: u32,
        /// How it ended (`"completed by alice"`, `"cancelled"`, ...).
        state: String,
    },

    /// The actor may not do this; nothing was written.
    #[error("[CAIRN-E0023] `{actor}` may not {action}: {reason}. Nothing was written")]
    Forbidden {
        /// Who asked.
        actor: String,
        /// What they asked (`"complete task 3 of instance `loan-7`"`).
        action: String,
        /// Why not.
        reason: String,
    },

    /// A task's decision does not match the schema the task was created with; the task
    /// stays open and nothing was written.
    #[error("[CAIRN-E0024] the decision for task {step} of instance `{instance}` does not match its schema: {}. The task stays open", problems.join("; "))]
    InvalidDecision {
        /// User id of the instance.
        instance: String,
        /// The task's step.
        step: u32,
        /// Each problem, with where in the decision it is.
        problems: Vec<String>,
    },

    /// The instance ended (or was handed over and ended) without answering an update it
    /// had received; the request stays in its history.
    #[error("[CAIRN-E0025] instance `{instance}` {reason} without answering update `{update}` (key `{key}`); answer updates before the workflow returns")]
    Unanswered {
        /// User id of the instance.
        instance: String,
        /// The update's name.
        update: String,
        /// The request's key.
        key: String,
        /// How it ended (`"completed"`, `"was terminated"`, ...).
        reason: String,
    },

    /// A dedupe key was sent again with another name or body: the first send stands and
    /// nothing was written.
    #[error("[CAIRN-E0026] key `{key}` of instance `{instance}` was already used for `{recorded}` with another body; a retry must send the same name and body, a new message needs a new key. Nothing was written")]
    KeyReused {
        /// User id of the instance.
        instance: String,
        /// The dedupe key.
        key: String,
        /// The name the key was first sent with.
        recorded: String,
    },

    /// No schedule has this id.
    #[error("[CAIRN-E0027] no schedule with id `{0}`; list the schedules to find its id")]
    ScheduleNotFound(String),

    /// This host no longer holds the lease of the instance's shard: another host took it
    /// over (its lease expired, judged by the database's clock). Nothing was written; the
    /// host must stop driving the instance.
    #[error("[CAIRN-E0028] this host no longer holds the lease of instance `{instance}` (shard {shard}: it held epoch {held}, the store is at epoch {current}); nothing was written. Another host drives it now")]
    LeaseLost {
        /// User id of the instance.
        instance: String,
        /// Its shard.
        shard: u32,
        /// The lease epoch this host held.
        held: u64,
        /// The shard's epoch in the store.
        current: u64,
    },

    /// The host environment failed a request Cairn cannot do without (the OS random source).
    #[error("[CAIRN-E0016] the host environment failed: {0}")]
    Environment(String),
}

impl Error {
    /// The stable code of this error (`"CAIRN-E0001"`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::NonDeterminism(_) => "CAIRN-E0001",
            Error::PayloadDecode { .. } => "CAIRN-E0002",
            Error::UnknownWorkflowType { .. } => "CAIRN-E0003",
            Error::Corrupt { .. } => "CAIRN-E0004",
            Error::Open { .. } => "CAIRN-E0005",
            Error::Storage(_) => "CAIRN-E0006",
            Error::InstanceNotFound(_) => "CAIRN-E0007",
            Error::Parked { .. } => "CAIRN-E0008",
            Error::UnsupportedFormat { .. } => "CAIRN-E0009",
            Error::PayloadEncode { .. } => "CAIRN-E0010",
            Error::PayloadTooLarge { .. } => "CAIRN-E0011",
            Error::WorkflowTypeMismatch { .. } => "CAIRN-E0012",
            Error::ShutDown => "CAIRN-E0013",
            Error::InvalidArgument(_) => "CAIRN-E0014",
            Error::WorkflowPanicked { .. } => "CAIRN-E0015",
            Error::Environment(_) => "CAIRN-E0016",
            Error::InstanceFinished(_) => "CAIRN-E0017",
            Error::Terminated { .. } => "CAIRN-E0018",
            Error::Contended { .. } => "CAIRN-E0019",
            Error::Conflict { .. } => "CAIRN-E0020",
            Error::TaskNotFound { .. } => "CAIRN-E0021",
            Error::TaskClosed { .. } => "CAIRN-E0022",
            Error::Forbidden { .. } => "CAIRN-E0023",
            Error::InvalidDecision { .. } => "CAIRN-E0024",
            Error::Unanswered { .. } => "CAIRN-E0025",
            Error::KeyReused { .. } => "CAIRN-E0026",
            Error::ScheduleNotFound(_) => "CAIRN-E0027",
            Error::LeaseLost { .. } => "CAIRN-E0028",
        }
    }
}

impl From<NonDeterminism> for Error {
    fn from(value: NonDeterminism) -> Self {
        Error::NonDeterminism(Box::new(value))
    }
}

impl From<Box<NonDeterminism>> for Error {
    fn from(value: Box<NonDeterminism>) -> Self {
        Error::NonDeterminism(value)
    }
}

/// What failed in a store, with the store's own error (redb's, an I/O error) as its
/// [`source`](std::error::Error::source), so the whole chain can be walked.
///
/// Its message includes the source's, so a single-line report (`{err}`) still says what
/// the store said.
#[derive(Clone, Debug)]
pub struct StorageFailure {
    context: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    /// Whether the same request may succeed if made again (a dropped connection, a
    /// conflict the store broke); nothing was written.
    transient: bool,
}

impl StorageFailure {
    /// A failure `message` describes on its own.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            context: message.into(),
            source: None,
            transient: false,
        }
    }

    /// A failure of `context` ("commit", "the writer thread") caused by `source`.
    pub fn caused_by(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            context: context.into(),
            source: Some(Arc::new(source)),
            transient: false,
        }
    }

    /// The same failure, marked transient: nothing was written, and the same request may
    /// succeed if made again (a server store's dropped connection or broken deadlock).
    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }

    /// Whether it is transient ([`StorageFailure::transient`]).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The same failure, placed: `prefix` (a file, an operation) goes in front of its
    /// context.
    pub fn within(mut self, prefix: impl fmt::Display) -> Self {
        self.context = if self.context.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}: {}", self.context)
        };
        self
    }

    /// What failed, without the source's message.
    pub fn context(&self) -> &str {
        &self.context
    }
}

impl fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.source, self.context.is_empty()) {
            (Some(source), true) => write!(f, "{source}"),
            (Some(source), false) => write!(f, "{}: {source}", self.context),
            (None, _) => f.write_str(&self.context),
        }
    }
}

impl std::error::Error for StorageFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

/// Result alias of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources, outermost first, each said once: a client's error often
/// says only "error sending request" or "db error" and keeps the reason (connection
/// refused, the server's message, a TLS failure) in its source.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// The message a panic carried, if it was a string.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}
