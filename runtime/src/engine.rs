//! The engine: registry of workflow types, instance drivers, recovery and the host API.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::activity::AppState;
use crate::clock::{Clock, SystemClock};
use crate::codec::{Codec, JsonCodec, Payload};
use crate::context::{Inbox, InboxMark, Stop, TaskDecision, WorkflowContext};
use crate::drive::{drive, factory_for, finished_outcome};
pub use crate::drive::{WorkflowFactory, WorkflowResult};
use crate::error::{Error, Result, StorageFailure};
use crate::event::AttrValue;
use crate::event::{EventKind, EventRecord};
use crate::notify::{
    retry_after, Delivery, DeliveryAttempt, LoggingNotifier, Notifier, OutboxRow, DELIVERY_TIMEOUT,
};
use crate::policy::{AllowAll, Policy};
use crate::port::HostPort;
pub use crate::port::Outcome;
use crate::redb_journal::RedbJournal;
use crate::replay::History;
pub use crate::replayer::ReplayVerdict;
use crate::replayer::Replayer;
use crate::schedule::{occurrence_id, Paused, Recurrence, ScheduleRow};
use crate::store::{Attributes, InstanceRow, InstanceStatus, StoredEvent};
use crate::sync::{lock, AtomicBool, AtomicU64, Mutex, Notify};
use crate::task::Actor;
use crate::timers::TimerIndex;
use cairn_core::journal::{
    verify_history, Attachment, Carried, CarriedSignal, CommitListener, Committed, Cursor, Expect,
    Handover, InstanceQuery, Journal, Suspension, Tallies,
};
use cairn_core::keymap::KeyMap;

/// Longest user id accepted, in bytes.
pub const INSTANCE_ID_BYTES_MAX: usize = 256;

/// How often a run that continues as new looks again at its inbox when signals keep
/// arriving during the hand-over, before it gives up until the next start.
const CONTINUE_AS_NEW_TRIES_MAX: u32 = 10_000;

/// How long `wait` gives a just-started instance to get its driver before it reports
/// the instance's indexes as inconsistent.
const DRIVER_REGISTRATION_WAIT: Duration = Duration::from_secs(5);

/// Pages of the task index a metrics scrape reads at most (the gauges count up to this
/// many thousand tasks).
const METRICS_PAGES_MAX: usize = 100;

/// Longest signal name accepted, in bytes.
pub const SIGNAL_NAME_BYTES_MAX: usize = 128;

/// Longest reason a cancellation or termination records, in bytes.
pub const REASON_BYTES_MAX: usize = 4096;

/// Refuses a cancellation's or termination's reason longer than [`REASON_BYTES_MAX`]:
/// it is recorded in the history, and a batch records it in every history it changes.
pub(crate) fn check_reason(reason: &str) -> Result<()> {
    if reason.len() > REASON_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "a reason must be at most {REASON_BYTES_MAX} bytes, got {}",
            reason.len()
        )));
    }
    Ok(())
}

/// Status of an instance as the host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Running or waiting.
    Running,
    /// Returned `Ok`.
    Completed,
    /// Returned `Err`.
    Failed,
    /// Stopped from outside by [`Engine::terminate`].
    Terminated,
    /// An earlier run of an id that continued as new (listed runs only).
    ContinuedAsNew,
    /// Cannot run on this build; the reason says why and what to do.
    Parked {
        /// The error that parked it.
        reason: String,
        /// Its stable code.
        code: String,
    },
}

/// One instance in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceInfo {
    /// User id.
    pub id: String,
    /// The run's internal key (a continue-as-new chain has one per run): what anchors
    /// and exports name.
    pub run: u128,
    /// Workflow type.
    pub workflow_type: String,
    /// Status.
    pub status: Status,
    /// Start commit time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Latest commit time.
    pub updated_at_ms: u64,
    /// Number of events in its history.
    pub events: u64,
    /// Search attributes it published (`ctx.set_attributes`, `ctx.set_stage`).
    pub attributes: Attributes,
}

/// How many pages of the instance index one [`Engine::list_page`] examines at most.
pub const LIST_PAGES_PER_CALL: usize = 4;

/// One page of a listing ([`Engine::list_page`], [`Engine::list_page_as`]).
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    /// The instances, oldest first.
    pub rows: Vec<InstanceInfo>,
    /// Where to continue; `None` at the end.
    pub next: Option<Cursor>,
    /// How many instance rows this page examined, kept or not: what a caller that
    /// scans page after page bounds its work by.
    pub examined: usize,
}

/// Filter of [`Engine::list`]. Empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this workflow type.
    pub workflow_type: Option<String>,
    /// Only instances whose status is one of these (compared by variant).
    pub statuses: Vec<StatusKind>,
    /// Only instances started at or after this time (ms since the Unix epoch).
    pub created_from_ms: Option<u64>,
    /// Only instances started before this time (ms since the Unix epoch).
    pub created_until_ms: Option<u64>,
    /// Only instances whose attributes hold all of these values.
    pub attributes: Vec<(String, AttrValue)>,
    /// Only instances whose id contains this text (checked on the rows the other
    /// filters select; no index).
    pub id_contains: Option<String>,
    /// At most this many (oldest first).
    pub limit: Option<usize>,
}

impl ListFilter {
    /// What the journal's indexes cannot check: derived statuses (parked) and the id.
    fn matches(&self, info: &InstanceInfo) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&info.status.kind()))
            && self
                .id_contains
                .as_deref()
                .is_none_or(|part| info.id.contains(part))
    }
}

/// Status without its details, for filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKind {
    /// [`Status::Running`].
    Running,
    /// [`Status::Completed`].
    Completed,
    /// [`Status::Failed`].
    Failed,
    /// [`Status::Terminated`].
    Terminated,
    /// [`Status::ContinuedAsNew`].
    ContinuedAsNew,
    /// [`Status::Parked`].
    Parked,
}

impl Status {
    /// The variant.
    pub fn kind(&self) -> StatusKind {
        match self {
            Status::Running => StatusKind::Running,
            Status::Completed => StatusKind::Completed,
            Status::Failed => StatusKind::Failed,
            Status::Terminated => StatusKind::Terminated,
            Status::ContinuedAsNew => StatusKind::ContinuedAsNew,
            Status::Parked { .. } => StatusKind::Parked,
        }
    }
}

impl From<InstanceStatus> for StatusKind {
    /// The kind of a stored status (never `Parked`, which is derived).
    fn from(status: InstanceStatus) -> Self {
        match status {
            InstanceStatus::Running => StatusKind::Running,
            InstanceStatus::Completed => StatusKind::Completed,
            InstanceStatus::Failed => StatusKind::Failed,
            InstanceStatus::Terminated => StatusKind::Terminated,
            InstanceStatus::ContinuedAsNew => StatusKind::ContinuedAsNew,
        }
    }
}

/// Answer of [`Engine::start`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartOutcome {
    /// `false` when an instance with this id already existed (nothing was started).
    pub created: bool,
}

type OutcomeSlot = Option<Result<Outcome>>;

/// An unfinished instance the host knows of: driven by a task, or dormant (evicted
/// while waiting, replayed when something wakes it). A dormant entry is all that stays
/// in memory of a waiting instance: its result channel and its inbox.
struct Active {
    outcome: Arc<watch::Sender<OutcomeSlot>>,
    inbox: Arc<Inbox>,
    driver: Driver,
}

enum Driver {
    Running(JoinHandle<()>),
    Dormant,
}

/// Default idle time after which a run that only waits is evicted from memory.
pub const EVICTION_IDLE_DEFAULT: Duration = Duration::from_secs(2);

pub(crate) struct Shared {
    pub(crate) journal: Arc<dyn Journal>,
    /// What the host registered for its activities.
    app: AppState,
    /// The tokio runtime the engine was opened in: drivers are spawned on it from the
    /// writer thread too, when a commit starts or wakes an instance.
    runtime: tokio::runtime::Handle,
    pub(crate) codec: Arc<dyn Codec>,
    pub(crate) clock: Arc<dyn Clock>,
    workflows: Arc<HashMap<String, WorkflowFactory>>,
    active: Mutex<KeyMap<Active>>,
    parked: Mutex<HashMap<u128, Error>>,
    /// What the `parked` index holds (code and reason by key), kept by the commit path:
    /// parking is recorded once per reason, and an instance parked by an earlier host
    /// shows as parked until something runs it.
    recorded_parked: Mutex<HashMap<u128, (String, String)>>,
    pub(crate) closed: AtomicBool,
    /// `None`: never evict.
    eviction_idle: Option<Duration>,
    /// Rebuild every run from the log after each step (see `EngineBuilder::always_replay`).
    pub(crate) always_replay: bool,
    /// Wake-up times of dormant instances: the timer index, shared with the timer
    /// service, which waits on it without holding the engine.
    timers: Arc<TimerIndex>,
    timer_task: Mutex<Option<JoinHandle<()>>>,
    replays: AtomicU64,
    /// Schedules by id, as stored; the scheduler task fires them.
    schedules: Mutex<HashMap<String, ScheduleRow>>,
    schedules_changed: Arc<Notify>,
    scheduler_task: Mutex<Option<JoinHandle<()>>>,
    /// Receives the notification outbox.
    pub(crate) notifier: Arc<dyn Notifier>,
    /// Decides what actors may do.
    pub(crate) policy: Arc<dyn Policy>,
    /// Notified when a commit adds a notification.
    pub(crate) outbox_changed: Arc<Notify>,
    outbox_task: Mutex<Option<JoinHandle<()>>>,
    /// How many commits the dispatcher has applied (see `run_dispatch`).
    applied: watch::Sender<u64>,
    dispatch_task: Mutex<Option<JoinHandle<()>>>,
    /// Notified whenever a driver is registered or an instance parked, and at shutdown.
    pub(crate) registered: Notify,
    /// Callers waiting for update answers, woken by the commit path.
    pub(crate) answers: Arc<crate::answers::AnswerWaiters>,
    /// What the host counts (`Engine::metrics_text`).
    pub(crate) metrics: crate::metrics::Metrics,
    /// The first storage failure a run stopped on: the writer refuses everything after
    /// it, so waits for unfinished instances end with it instead of waiting for runs
    /// that will not come until the runtime is reopened.
    storage_failed: Mutex<Option<Error>>,
    /// Notified when the store fails for good (`CommitListener::failed`): only then, so
    /// the waits for results it ends are not woken by every start.
    store_failed: Notify,
}

/// Configures and opens an [`Engine`].
pub struct EngineBuilder {
    workflows: HashMap<String, WorkflowFactory>,
    codec: Arc<dyn Codec>,
    clock: Arc<dyn Clock>,
    eviction_idle: Option<Duration>,
    always_replay: bool,
    app: AppState,
    notifier: Arc<dyn Notifier>,
    policy: Arc<dyn Policy>,
}

/// Environment variable that turns [`EngineBuilder::always_replay`] on by default when
/// set to `1` or `true`: how the test suite runs a second time with every step replayed.
pub const ALWAYS_REPLAY_ENV: &str = "CAIRN_ALWAYS_REPLAY";

impl Default for EngineBuilder {
    fn default() -> Self {
        let always_replay = std::env::var(ALWAYS_REPLAY_ENV)
            .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        Self {
            workflows: HashMap::new(),
            codec: Arc::new(JsonCodec),
            clock: Arc::new(SystemClock),
            eviction_idle: Some(EVICTION_IDLE_DEFAULT),
            always_replay,
            app: AppState::default(),
            notifier: Arc::new(LoggingNotifier),
            policy: Arc::new(AllowAll),
        }
    }
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.workflows.keys().collect();
        names.sort();
        f.debug_struct("EngineBuilder")
            .field("workflows", &names)
            .field("codec", &self.codec.name())
            .field("always_replay", &self.always_replay)
            .finish()
    }
}

impl EngineBuilder {
    /// Registers a workflow type under `name`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `name` is already registered.
    pub fn register(&mut self, name: &str, factory: WorkflowFactory) -> Result<&mut Self> {
        if self.workflows.insert(name.to_owned(), factory).is_some() {
            return Err(Error::InvalidArgument(format!(
                "workflow type `{name}` is registered twice"
            )));
        }
        Ok(self)
    }

    /// Uses `codec` for payloads instead of JSON.
    pub fn codec(&mut self, codec: Arc<dyn Codec>) -> &mut Self {
        self.codec = codec;
        self
    }

    /// Evicts a run from memory once it has only waited durably (timers, signals,
    /// children) for `idle`; `None` keeps every run in memory. Default
    /// [`EVICTION_IDLE_DEFAULT`]. An evicted instance costs a few hundred bytes and is
    /// replayed when a timer, signal, cancellation or child wakes it.
    pub fn eviction_idle(&mut self, idle: Option<Duration>) -> &mut Self {
        self.eviction_idle = idle;
        self
    }

    /// Always-replay mode: after every step becomes durable, the run is dropped and
    /// rebuilt by replaying its history from the log before the workflow sees the
    /// result, as if the host had restarted between any two steps. Much slower; it exists
    /// to prove that workflows and the engine give the same results and the same
    /// histories either way (the test suite runs twice, once in this mode). When branches
    /// of a `join!` are busy at the same moment, the replay waits for the last of them,
    /// so no work in flight is abandoned. Default: off, unless the environment variable
    /// [`ALWAYS_REPLAY_ENV`] is `1` or `true`.
    pub fn always_replay(&mut self, on: bool) -> &mut Self {
        self.always_replay = on;
        self
    }

    /// Uses `clock` for `ctx.now()` and durable timers instead of the system clock
    /// (tests: a [`crate::clock::VirtualClock`]).
    pub fn clock(&mut self, clock: Arc<dyn Clock>) -> &mut Self {
        self.clock = clock;
        self
    }

    /// The clock set so far (the system clock unless [`EngineBuilder::clock`] set one).
    pub fn configured_clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Decides what actors may do through the `*_as` calls (default [`AllowAll`]). Calls
    /// without an actor are the hosting program's own and are not checked.
    pub fn policy(&mut self, policy: Arc<dyn Policy>) -> &mut Self {
        self.policy = policy;
        self
    }

    /// Delivers the notification outbox to `notifier` instead of the log
    /// ([`LoggingNotifier`]).
    pub fn notifier(&mut self, notifier: Arc<dyn Notifier>) -> &mut Self {
        self.notifier = notifier;
        self
    }

    /// Registers `value` for activities to reach with `ctx.state::<T>()` (one per type;
    /// a second of the same type replaces the first).
    pub fn state<T: Send + Sync + 'static>(&mut self, value: Arc<T>) -> &mut Self {
        self.app = std::mem::take(&mut self.app).with(value);
        self
    }

    /// A [`Replayer`] of the registered workflow types: replays recorded histories with
    /// no engine behind it (no store opened, no writer thread, no recovery).
    pub fn replayer(self) -> Replayer {
        Replayer::new(Arc::new(self.workflows), self.codec, self.clock)
    }

    /// Opens (or creates) the redb file at `path` and resumes every unfinished instance.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// See [`cairn_redb::store::RedbStore::open`].
    pub async fn open(self, path: impl AsRef<Path>) -> Result<Engine> {
        let path = path.as_ref().to_path_buf();
        let journal = tokio::task::spawn_blocking(move || RedbJournal::open(path))
            .await
            .map_err(|err| {
                Error::Storage(StorageFailure::caused_by("the task opening the file", err))
            })??;
        self.open_journal(Arc::new(journal)).await
    }

    /// Opens the engine on any [`Journal`] and resumes every unfinished instance.
    ///
    /// # Errors
    /// [`Error::Storage`] or [`Error::Corrupt`] when the instance index cannot be read.
    pub async fn open_journal(self, journal: Arc<dyn Journal>) -> Result<Engine> {
        let shared_store = journal.membership().is_some();
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Environment(
                "the engine must be opened inside a tokio runtime (it spawns its tasks there)"
                    .into(),
            )
        })?;
        let store_schedules: HashMap<String, ScheduleRow> =
            journal.schedules().await?.into_iter().collect();
        let recorded_parked = journal
            .parked()
            .await?
            .into_iter()
            .map(|(key, row)| (key, (row.code, row.reason)))
            .collect();
        // Commit times come from the runtime's clock too: a retry's due time (its
        // failure's commit time plus its backoff) is then on the clock it waits on.
        let clock = self.clock.clone();
        let now_ms = Arc::new(move || clock.now_ms());
        let shared = Arc::new(Shared {
            journal,
            app: self.app,
            runtime,
            codec: self.codec,
            clock: self.clock,
            workflows: Arc::new(self.workflows),
            active: Mutex::new(KeyMap::default()),
            parked: Mutex::new(HashMap::new()),
            recorded_parked: Mutex::new(recorded_parked),
            applied: watch::channel(0).0,
            dispatch_task: Mutex::new(None),
            closed: AtomicBool::new(false),
            eviction_idle: self.eviction_idle,
            always_replay: self.always_replay,
            timers: Arc::new(TimerIndex::new()),
            timer_task: Mutex::new(None),
            replays: AtomicU64::new(0),
            schedules: Mutex::new(store_schedules),
            schedules_changed: Arc::new(Notify::new()),
            scheduler_task: Mutex::new(None),
            notifier: self.notifier,
            policy: self.policy,
            outbox_changed: Arc::new(Notify::new()),
            outbox_task: Mutex::new(None),
            registered: Notify::new(),
            answers: Arc::default(),
            metrics: crate::metrics::Metrics::new(shared_store),
            storage_failed: Mutex::new(None),
            store_failed: Notify::new(),
        });
        // Before anything is queued: every commit from now on reaches memory through it.
        // Unbounded: the writer never waits for the dispatcher, which applies a batch in
        // far less time than the writer takes to commit the next one.
        let (batches, received) = tokio::sync::mpsc::unbounded_channel();
        shared.journal.attach(Attachment {
            listener: Arc::new(Dispatch {
                batches,
                commit_seconds: shared.metrics.commit_seconds.clone(),
            }),
            now_ms,
        });
        let dispatch_task = shared
            .runtime
            .spawn(run_dispatch(Arc::downgrade(&shared), received));
        *lock(&shared.dispatch_task) = Some(dispatch_task);
        let engine = Engine { shared };
        engine.recover().await?;
        let runtime = &engine.shared.runtime;
        let timer_task = runtime.spawn(run_timers(Arc::downgrade(&engine.shared)));
        *lock(&engine.shared.timer_task) = Some(timer_task);
        let scheduler_task = runtime.spawn(run_schedules(Arc::downgrade(&engine.shared)));
        *lock(&engine.shared.scheduler_task) = Some(scheduler_task);
        let outbox_task = runtime.spawn(run_outbox(Arc::downgrade(&engine.shared)));
        *lock(&engine.shared.outbox_task) = Some(outbox_task);
        Ok(engine)
    }
}

/// The running engine. Cheap to clone; all clones share one database and writer.
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("active", &lock(&self.shared.active).len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// A builder with the JSON codec and no workflow types.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The payload codec.
    pub fn codec(&self) -> &dyn Codec {
        self.shared.codec.as_ref()
    }

    /// Number of commits the journal has made since it opened (each holds the writes of
    /// many instances), for monitoring and benchmarks.
    pub fn commits(&self) -> u64 {
        self.shared.journal.commits()
    }

    /// The number of commits whose effects are in memory, changing after each: what a
    /// live view waits on to refresh. Ends (`u64::MAX`) at shutdown.
    pub fn watch_commits(&self) -> watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// Step latency of each activity run on this host: median, 95th and 99th percentile
    /// of its last [`RECENT_ATTEMPTS`](crate::RECENT_ATTEMPTS) attempts, and its attempts
    /// and failures since the host started. For dashboards; the Prometheus histograms at
    /// `/metrics` keep the long view.
    pub fn step_latencies(&self) -> Vec<crate::StepLatency> {
        self.shared.metrics.recent.latencies()
    }

    /// The host's metrics in the Prometheus text exposition format: instances started
    /// and ended by type and status, workflow and activity durations, activity attempts
    /// by outcome, commits and their sizes, timers and their lateness, replays, runs in
    /// memory, open and overdue tasks, undelivered notifications. Names and labels are
    /// listed in `docs/OPERATIONS.md`.
    ///
    /// # Errors
    /// Storage errors reading the task index or the outbox.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn metrics_text(&self) -> Result<String> {
        let metrics = &self.shared.metrics;
        metrics
            .resident_runs
            .set(i64::try_from(self.resident_runs()).unwrap_or(i64::MAX));
        let now = self.now_ms();
        let (mut open, mut overdue) = (0i64, 0i64);
        let mut query = crate::journal::TaskQuery {
            limit: crate::journal::PAGE_ROWS_MAX,
            ..crate::journal::TaskQuery::default()
        };
        // Bounded: a gauge need not read a huge index on every scrape.
        for _ in 0..METRICS_PAGES_MAX {
            let page = self.shared.journal.tasks(&query).await?;
            for row in &page.rows {
                open += 1;
                if row.overdue || row.due_at_ms.is_some_and(|due| due <= now) {
                    overdue += 1;
                }
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        metrics.open_tasks.set(open);
        metrics.overdue_tasks.set(overdue);
        let (pending, _) = self
            .shared
            .journal
            .outbox_due(u64::MAX, crate::journal::PAGE_ROWS_MAX * METRICS_PAGES_MAX)
            .await?;
        metrics
            .outbox_pending
            .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
        metrics
            .timers_pending
            .set(i64::try_from(self.shared.timers.len()).unwrap_or(i64::MAX));
        metrics
            .parked
            .set(i64::try_from(self.parked_instances().await?.len()).unwrap_or(i64::MAX));
        if let (Some(host), Some(membership)) = (&metrics.host, self.membership()) {
            host.update(&membership);
        }
        let tallies = self.tallies(self.now_ms()).await?;
        // Refilled and encoded under one lock: a second scrape must not clear the counts
        // between this one's refill and its encoding.
        let _scrape = metrics.scrape.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tallies) = tallies {
            // A count that fell to zero is left out of the tallies: start afresh.
            metrics.instances.clear();
            for ((workflow_type, status), count) in tallies.by_status {
                let status = match status {
                    InstanceStatus::Running => "running",
                    InstanceStatus::Completed => "completed",
                    InstanceStatus::Failed => "failed",
                    InstanceStatus::Terminated => "terminated",
                    InstanceStatus::ContinuedAsNew => "continued_as_new",
                };
                metrics
                    .instances
                    .get_or_create(&crate::metrics::StatusLabels {
                        workflow_type,
                        status: status.to_owned(),
                    })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
        Ok(metrics.encode())
    }

    /// How this host stands among the hosts sharing its store (its leases, what happened
    /// to them since it opened, the database's clock against its own); `None` on a
    /// store of its own (redb).
    pub fn membership(&self) -> Option<crate::journal::Membership> {
        self.shared.journal.membership()
    }

    /// The runtime clock's time, ms since the Unix epoch (virtual under a virtual clock).
    pub fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    /// Whether [`Engine::shutdown`] has begun: nothing more is accepted.
    pub fn is_shut_down(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Number of runs replayed from a stored history since the engine opened (start-up
    /// recovery and wake-ups of evicted instances), for monitoring and benchmarks.
    pub fn replays(&self) -> u64 {
        self.shared.replays.load(Ordering::Relaxed)
    }

    /// The journal this engine writes through (to read it as the engine does, or to ask
    /// a shared store which runs this host drives: [`Journal::owns`]).
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.shared.journal
    }

    /// Number of instances with a run in memory (not evicted).
    pub fn resident_runs(&self) -> usize {
        lock(&self.shared.active)
            .values()
            .filter(|a| matches!(a.driver, Driver::Running(_)))
            .count()
    }

    /// Resumes unfinished instances from the running index only: evicted ones become
    /// dormant entries (with their wake-up time in the timer index) without reading or
    /// replaying their history; the others are replayed.
    async fn recover(&self) -> Result<()> {
        let running = self.shared.journal.running().await?;
        resume_runs(&self.shared, running).await
    }

    /// Starts instance `id` of `workflow_type` with `input`; if `id` exists, returns it
    /// without starting anything (`created == false`).
    ///
    /// # Errors
    /// [`Error::UnknownWorkflowType`], [`Error::WorkflowTypeMismatch`] when `id` runs
    /// another type, [`Error::InvalidArgument`] for an empty or over-long id, storage errors.
    ///
    /// # Durability
    /// When it returns, the start event is on disk: the instance runs after any crash.
    ///
    /// # Cancel safety
    /// If dropped, the start may or may not have been committed; call again with the same
    /// id to find out (starting is idempotent). A start that was committed runs whether or
    /// not this future is still polled: its run is registered by the commit itself.
    pub async fn start(
        &self,
        workflow_type: &str,
        id: &str,
        input: Payload,
    ) -> Result<StartOutcome> {
        self.start_with_parent(workflow_type, id, input, None, None)
            .await
    }

    /// Starts a child instance of `parent` (see [`Engine::start`]); the parent is woken
    /// when the child finishes, even if it was evicted meanwhile.
    pub(crate) async fn start_child(
        &self,
        workflow_type: &str,
        id: &str,
        input: Payload,
        parent: u128,
    ) -> Result<StartOutcome> {
        self.start_with_parent(workflow_type, id, input, Some(parent), None)
            .await
    }

    pub(crate) async fn start_with_parent(
        &self,
        workflow_type: &str,
        id: &str,
        input: Payload,
        parent: Option<u128>,
        actor: Option<&Actor>,
    ) -> Result<StartOutcome> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if id.is_empty() || id.len() > INSTANCE_ID_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "instance id must be 1 to {INSTANCE_ID_BYTES_MAX} bytes, got {}",
                id.len()
            )));
        }
        if !self.shared.workflows.contains_key(workflow_type) {
            return Err(Error::UnknownWorkflowType {
                workflow_type: workflow_type.to_owned(),
                instance: Some(id.to_owned()),
            });
        }
        let started = self
            .shared
            .journal
            .start_by(
                id.to_owned(),
                workflow_type.to_owned(),
                input.clone(),
                parent,
                actor.cloned(),
            )
            .await?;
        if !started.created && started.row.workflow_type != workflow_type {
            return Err(Error::WorkflowTypeMismatch {
                id: id.to_owned(),
                existing: started.row.workflow_type,
                requested: workflow_type.to_owned(),
            });
        }
        // A new instance's driver is registered by its commit (`Dispatch`).
        self.applied().await;
        if started.created {
            tracing::debug!(instance = %id, key = %format_args!("{:032x}", started.key), %workflow_type, "instance started");
        }
        Ok(StartOutcome {
            created: started.created,
        })
    }

    /// Waits until the effects of every commit acknowledged so far are in memory, so a
    /// caller reads its own write (a started instance has its driver, a signal is in the
    /// inbox, a schedule is with the scheduler). The effects do not depend on this wait:
    /// a caller that goes away leaves them to the dispatcher all the same.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits. It returns at shutdown too.
    pub(crate) async fn applied(&self) {
        let target = self.shared.journal.commits();
        let mut applied = self.shared.applied.subscribe();
        // An error: the dispatcher stopped (shutdown); nothing more will be applied.
        let _ = applied.wait_for(|done| *done >= target).await;
    }

    /// Whether instance `child_id` is a child of run `parent` (its row names it), so the
    /// child's end wakes the parent even when the parent was evicted.
    pub(crate) async fn is_child_of(&self, child_id: &str, parent: u128) -> Result<bool> {
        let (_, row) = self.row_of(child_id).await?;
        Ok(row.parent == Some(parent))
    }

    /// Terminates instance `id` at once: `WorkflowTerminated { reason }` is recorded, and
    /// its run is stopped without running any more workflow code (no cleanup runs).
    /// Waiters get [`Outcome::Terminated`]; a parent waiting for it is woken.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::InstanceFinished`] if it had already ended,
    /// [`Error::InvalidArgument`] for a reason over [`REASON_BYTES_MAX`], storage errors.
    ///
    /// # Durability
    /// On return the termination is on disk; the instance never runs again.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the termination is still recorded (unless refused)
    /// by a task of the runtime; once it is, the run is stopped and its waiters answered
    /// by the commit itself. Dropped before it was polled, nothing was sent.
    pub async fn terminate(&self, id: &str, reason: &str) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        check_reason(reason)?;
        // The writer refuses anything the run appends after this, so nothing follows the
        // termination in its history; the commit stops the run (`Dispatch`).
        let kind = EventKind::WorkflowTerminated {
            reason: reason.to_owned(),
        };
        self.append_to_current_run(id, kind, None).await
    }

    /// Creates or replaces schedule `schedule_id`: from `first_fire_ms` (default: the
    /// recurrence's next occurrence from now) it starts one instance of `workflow_type`
    /// with `input` per occurrence, with id `"{schedule_id}@{fire_ms}"`. Occurrences
    /// missed while the host was down collapse into one start when it comes back. A
    /// paused schedule stays paused when replaced (resume it with
    /// [`Engine::resume_schedule`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad id or recurrence, [`Error::UnknownWorkflowType`],
    /// storage errors.
    ///
    /// # Durability
    /// On return the schedule is on disk and fires across restarts.
    ///
    /// # Cancel safety
    /// If dropped, the schedule may or may not have been stored; once it is, the
    /// scheduler fires it, whether or not this future is still polled.
    pub async fn schedule(
        &self,
        schedule_id: &str,
        workflow_type: &str,
        input: Payload,
        recurrence: Recurrence,
        first_fire_ms: Option<u64>,
    ) -> Result<()> {
        if schedule_id.is_empty() || schedule_id.len() + 21 > INSTANCE_ID_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "schedule id must be 1 to {} bytes, got {}",
                INSTANCE_ID_BYTES_MAX - 21,
                schedule_id.len()
            )));
        }
        if !self.shared.workflows.contains_key(workflow_type) {
            return Err(Error::UnknownWorkflowType {
                workflow_type: workflow_type.to_owned(),
                instance: None,
            });
        }
        recurrence.validate()?;
        let next_fire_ms = match first_fire_ms {
            Some(at) => at,
            None => recurrence.next_after(self.shared.clock.now_ms())?,
        };
        let row = ScheduleRow {
            workflow_type: workflow_type.to_owned(),
            input,
            recurrence,
            next_fire_ms,
            // A host that declares its schedules at every start must not undo an
            // operator's pause: a replaced schedule stays paused.
            paused: lock(&self.shared.schedules)
                .get(schedule_id)
                .and_then(|held| held.paused.clone()),
        };
        // The commit hands the row to the scheduler (`Dispatch`).
        self.shared
            .journal
            .schedule(schedule_id.to_owned(), Some(row), None)
            .await?;
        self.applied().await;
        Ok(())
    }

    /// Deletes schedule `schedule_id`; instances it started are not affected. Returns
    /// whether it existed.
    ///
    /// # Errors
    /// Storage errors.
    ///
    /// # Cancel safety
    /// If dropped, the deletion may or may not have been recorded; once it is, the
    /// scheduler no longer fires it, whether or not this future is still polled.
    pub async fn unschedule(&self, schedule_id: &str) -> Result<bool> {
        let existed = self
            .shared
            .journal
            .schedule(schedule_id.to_owned(), None, None)
            .await?;
        self.applied().await;
        Ok(existed)
    }

    /// The schedules, by id.
    pub fn schedules(&self) -> Vec<(String, ScheduleRow)> {
        let mut all: Vec<_> = lock(&self.shared.schedules)
            .iter()
            .map(|(id, row)| (id.clone(), row.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Schedule `schedule_id` as stored now.
    ///
    /// # Errors
    /// [`Error::ScheduleNotFound`].
    pub fn schedule_row(&self, schedule_id: &str) -> Result<ScheduleRow> {
        lock(&self.shared.schedules)
            .get(schedule_id)
            .cloned()
            .ok_or_else(|| Error::ScheduleNotFound(schedule_id.to_owned()))
    }

    /// Replaces schedule `schedule_id` by `change(row)` if nobody replaced it meanwhile
    /// (the scheduler moves it on at every occurrence): read, change, store only if the
    /// stored row is still the one read. A lost race means another change committed, and
    /// changes are few (the scheduler's one per occurrence, at least a second apart), so
    /// the loop ends. Carried on by a task of the runtime from the first poll: a caller
    /// that goes away after a lost race would otherwise leave the change unmade.
    async fn change_schedule(
        &self,
        schedule_id: &str,
        change: impl Fn(&ScheduleRow) -> Result<Option<ScheduleRow>> + Send + 'static,
    ) -> Result<ScheduleRow> {
        let (engine, schedule_id) = (self.clone(), schedule_id.to_owned());
        carried_on(async move {
            loop {
                let held = engine.schedule_row(&schedule_id)?;
                let Some(changed) = change(&held)? else {
                    return Ok(held);
                };
                let stored = engine
                    .shared
                    .journal
                    .schedule(schedule_id.clone(), Some(changed.clone()), Some(held))
                    .await?;
                // The map read above is the dispatcher's: wait for it to show this commit.
                engine.applied().await;
                if stored {
                    return Ok(changed);
                }
            }
        })
        .await
    }

    /// Pauses schedule `schedule_id`: it starts nothing until [`Engine::resume_schedule`].
    /// Pausing a paused schedule keeps its first pause (who, when, why).
    ///
    /// # Errors
    /// [`Error::ScheduleNotFound`], storage errors.
    ///
    /// # Durability
    /// On return the pause is on disk: the schedule stays paused across restarts.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the pause is still stored by a task of the runtime,
    /// also when the scheduler moved the schedule on meanwhile (the change is made again
    /// on the row it left). Dropped before it was polled, nothing was sent.
    pub async fn pause_schedule(&self, schedule_id: &str, note: &str) -> Result<ScheduleRow> {
        self.pause_schedule_by(schedule_id, note, None).await
    }

    pub(crate) async fn pause_schedule_by(
        &self,
        schedule_id: &str,
        note: &str,
        actor: Option<&Actor>,
    ) -> Result<ScheduleRow> {
        let at_ms = self.shared.clock.now_ms();
        let (by, note) = (actor.map(|a| a.id.clone()), note.to_owned());
        self.change_schedule(schedule_id, move |row| {
            Ok(row.paused.is_none().then(|| ScheduleRow {
                paused: Some(Paused {
                    at_ms,
                    by: by.clone(),
                    note: note.clone(),
                }),
                ..row.clone()
            }))
        })
        .await
    }

    /// Resumes schedule `schedule_id`. Occurrences that fell due while it was paused are
    /// skipped: it next fires at its first occurrence after now (an interval keeps its
    /// grid). Resuming a running schedule changes nothing.
    ///
    /// # Errors
    /// [`Error::ScheduleNotFound`], storage errors.
    ///
    /// # Durability
    /// On return the schedule is stored as running again.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the resumption is still stored by a task of the
    /// runtime, and the scheduler fires it. Dropped before it was polled, nothing was
    /// sent.
    pub async fn resume_schedule(&self, schedule_id: &str) -> Result<ScheduleRow> {
        let now = self.shared.clock.now_ms();
        self.change_schedule(schedule_id, move |row| match row.paused {
            Some(_) => row.resumed(now).map(Some),
            None => Ok(None),
        })
        .await
    }

    /// Starts one occurrence of schedule `schedule_id` now, paused or not, without moving
    /// its next occurrence: the instance `"{schedule_id}@{now_ms}"`, as the scheduler
    /// would name it. Returns its id and whether it was created (an occurrence of that
    /// millisecond may exist already).
    ///
    /// # Errors
    /// [`Error::ScheduleNotFound`], and as [`Engine::start`].
    ///
    /// # Cancel safety
    /// As [`Engine::start`].
    pub async fn trigger_schedule(&self, schedule_id: &str) -> Result<(String, StartOutcome)> {
        self.trigger_schedule_by(schedule_id, None).await
    }

    pub(crate) async fn trigger_schedule_by(
        &self,
        schedule_id: &str,
        actor: Option<&Actor>,
    ) -> Result<(String, StartOutcome)> {
        let row = self.schedule_row(schedule_id)?;
        let id = occurrence_id(schedule_id, self.shared.clock.now_ms());
        let outcome = self
            .start_with_parent(&row.workflow_type, &id, row.input, None, actor)
            .await?;
        Ok((id, outcome))
    }

    /// Requests cooperative cancellation of instance `id`: `CancelRequested { reason }` is
    /// recorded, and the workflow's next durable wait (activity, timer, signal; or the
    /// one in progress) ends with a cancellation error. The workflow then runs its own
    /// cleanup or compensation, which may use further steps, and returns.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::InstanceFinished`], [`Error::InvalidArgument`]
    /// for a reason over [`REASON_BYTES_MAX`], storage errors.
    ///
    /// # Durability
    /// On return the request is on disk; it is delivered after a restart too.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the request is still recorded (unless refused) by a
    /// task of the runtime; once it is, it reaches the run by the commit itself. Dropped
    /// before it was polled, nothing was sent.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        check_reason(reason)?;
        let kind = EventKind::CancelRequested {
            reason: reason.to_owned(),
        };
        self.append_to_current_run(id, kind, None).await
    }

    /// Sends signal `name` with body `payload` to instance `id`. It is buffered in the
    /// instance's history until a `ctx.signal(name)` wait takes it; signals of one name
    /// are delivered in the order they were sent, each to exactly one wait.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::InstanceFinished`], [`Error::InvalidArgument`]
    /// for an empty or over-long name, storage errors.
    ///
    /// # Durability
    /// On return the signal is on disk: it is delivered even if the host crashes next.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the signal is still recorded (unless refused) by a
    /// task of the runtime; once it is, it reaches the run (in commit order) by the
    /// commit itself. Dropped before it was polled, nothing was sent.
    pub async fn signal(&self, id: &str, name: &str, payload: Payload) -> Result<()> {
        let kind = self.signal_event(name, payload)?;
        self.append_to_current_run(id, kind, None).await
    }

    /// The event that records signal `name`, once the name is checked.
    pub(crate) fn signal_event(&self, name: &str, payload: Payload) -> Result<EventKind> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        self.check_signal_name(name)?;
        Ok(EventKind::SignalReceived {
            name: name.to_owned(),
            payload,
        })
    }

    /// Checks that `name` may name a signal (not empty, at most
    /// [`SIGNAL_NAME_BYTES_MAX`] bytes), as every send does before it records anything.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] saying what is wrong with the name.
    pub fn check_signal_name(&self, name: &str) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if name.is_empty() || name.len() > SIGNAL_NAME_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "signal name must be 1 to {SIGNAL_NAME_BYTES_MAX} bytes, got {}",
                name.len()
            )));
        }
        Ok(())
    }

    /// Returns once the runtime is shutting down.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub(crate) async fn closing(&self) {
        loop {
            let notified = self.shared.registered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.closed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Appends `kind` to the current run of `id`. A run that continued as new in the
    /// meantime refuses it as finished; the id then names a newer run, which gets it.
    ///
    /// Carried on by a task of its own once called: a caller that stops waiting after
    /// the first poll (an HTTP client that hung up) does not stop the message between
    /// finding the run (a read that waits on a shared store) and recording it, so a
    /// message sent is recorded unless refused, on every store.
    pub(crate) async fn append_to_current_run(
        &self,
        id: &str,
        kind: EventKind,
        actor: Option<&Actor>,
    ) -> Result<()> {
        let engine = self.clone();
        let (id, actor) = (id.to_owned(), actor.cloned());
        carried_on(async move {
            engine
                .append_to_current_run_now(&id, kind, actor.as_ref())
                .await
        })
        .await
    }

    pub(crate) async fn append_to_current_run_now(
        &self,
        id: &str,
        kind: EventKind,
        actor: Option<&Actor>,
    ) -> Result<()> {
        let key = self.key_of(id).await?;
        self.append_to_run_now(id, key, kind, actor).await
    }

    /// As `append_to_current_run_now`, for a caller that has already read the id's
    /// current run `key` (a policy's check reads the row first); a run that has since
    /// ended is followed to its successor as there.
    pub(crate) async fn append_to_run_now(
        &self,
        id: &str,
        mut key: u128,
        kind: EventKind,
        actor: Option<&Actor>,
    ) -> Result<()> {
        let what = kind.name();
        loop {
            match self
                .shared
                .journal
                .append_by(key, kind.clone(), Expect::End, actor.cloned())
                .await
            {
                Ok(appended) => {
                    tracing::debug!(instance = %id, seq = appended.seq, event = what, "recorded");
                    self.applied().await;
                    return Ok(());
                }
                Err(Error::InstanceFinished(finished)) => match self.successor(id, key).await? {
                    Some(next) => key = next,
                    None => return Err(Error::InstanceFinished(finished)),
                },
                Err(err) => return Err(err),
            }
        }
    }

    /// After the writer refused run `key` of `id` as finished: the id's newer run if
    /// `key` handed over to one, `None` if it ended for good. The refusal is answered
    /// after the commit that ended `key`, which moved the id in the same transaction.
    pub(crate) async fn successor(&self, id: &str, key: u128) -> Result<Option<u128>> {
        let current = self.key_of(id).await?;
        Ok((current != key).then_some(current))
    }

    async fn key_of(&self, id: &str) -> Result<u128> {
        self.shared
            .journal
            .key_of(id)
            .await?
            .ok_or_else(|| Error::InstanceNotFound(id.to_owned()))
    }

    /// The current run's key and row of `id`, checked against each other: the id index
    /// and the rows are separate tables, and a damaged mapping must not answer for
    /// another instance.
    pub(crate) async fn row_of(&self, id: &str) -> Result<(u128, InstanceRow)> {
        let key = self.key_of(id).await?;
        let row = self
            .shared
            .journal
            .instance(key)
            .await?
            .ok_or_else(|| Error::InstanceNotFound(id.to_owned()))?;
        if row.id != id {
            return Err(Error::Corrupt {
                location: format!("ids table, id `{id}`"),
                message: format!("it points at the instance row of `{}`", row.id),
            });
        }
        Ok((key, row))
    }

    /// Waits for instance `id` to finish and returns its outcome.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::Parked`] if it cannot run on this build,
    /// [`Error::ShutDown`] if the runtime stops first, [`Error::Corrupt`] if its result
    /// cannot be read.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping it only stops waiting.
    pub async fn wait(&self, id: &str) -> Result<Outcome> {
        // Follow a chain of runs that continued as new to the one that ends the id.
        let mut previous = None;
        loop {
            let key = self.key_of(id).await?;
            if previous == Some(key) {
                return Err(Error::Corrupt {
                    location: format!("instance `{id}`"),
                    message: "its run continued as new, but the id still names that run".into(),
                });
            }
            previous = Some(key);
            match self.wait_run(id, key).await? {
                Outcome::ContinuedAsNew(_) => continue,
                outcome => return Ok(outcome),
            }
        }
    }

    /// Waits for run `key` of `id` to end.
    async fn wait_run(&self, id: &str, key: u128) -> Result<Outcome> {
        if !self.shared.journal.owns(key) {
            return self.wait_elsewhere(key).await;
        }
        // One bound for the whole wait, not one per wake-up: other instances' drivers
        // register all the time and must not keep a damaged one waiting for ever.
        let give_up = tokio::time::Instant::now() + DRIVER_REGISTRATION_WAIT;
        let receiver = loop {
            // A start is committed before its driver is registered: an unfinished
            // instance without an entry gets one in a moment (or is parked).
            let registered = self.shared.registered.notified();
            tokio::pin!(registered);
            registered.as_mut().enable();
            if let Some(active) = lock(&self.shared.active).get(&key) {
                break Some(active.outcome.subscribe());
            }
            if self.shared.closed.load(Ordering::Acquire)
                || lock(&self.shared.parked).contains_key(&key)
            {
                break None;
            }
            if let Some(err) = lock(&self.shared.storage_failed).clone() {
                return Err(err);
            }
            let row = self.shared.journal.instance(key).await?;
            if row.as_ref().is_none_or(|row| row.status.is_finished()) {
                break None;
            }
            // Registration is part of the start's commit; an unfinished instance
            // without a driver means the indexes disagree (damage), and waiting for it
            // would wait forever.
            if tokio::time::timeout_at(give_up, registered).await.is_err() {
                // On a shared store a run may be without a driver here for a while and
                // be fine: stopped on a store failure until the safety net names it
                // again, or given to another host meanwhile. Its row tells when it ends.
                if !matches!(
                    self.shared.journal.ownership(),
                    cairn_core::journal::Ownership::Exclusive
                ) {
                    return self.wait_elsewhere(key).await;
                }
                return Err(Error::Corrupt {
                    location: format!("instance `{id}`"),
                    message: "its row says unfinished but no run of it exists; the running index may be damaged".into(),
                });
            }
        };
        if let Some(mut receiver) = receiver {
            // An error means the driver went away without a result: shut down, or
            // terminated (then the stored row below has the answer).
            loop {
                // A store that failed for good (any commit, not only this run's) ends
                // the wait: the run cannot record anything more until the runtime is
                // reopened, and a caller waiting for its result would wait for ever.
                let failed = self.shared.store_failed.notified();
                tokio::pin!(failed);
                failed.as_mut().enable();
                if let Some(result) = receiver.borrow().as_ref() {
                    return result.clone();
                }
                if let Some(err) = lock(&self.shared.storage_failed).clone() {
                    return Err(err);
                }
                tokio::select! {
                    changed = receiver.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    () = &mut failed => {}
                }
            }
            if let Some(result) = receiver.borrow().as_ref() {
                return result.clone();
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(Error::ShutDown);
            }
            if !self.shared.journal.owns(key) {
                // Taken over by another host while this one drove it.
                return self.wait_elsewhere(key).await;
            }
        }
        if let Some(err) = lock(&self.shared.parked).get(&key) {
            return Err(Error::Parked {
                instance: id.to_owned(),
                reason: err.to_string(),
            });
        }
        let (_, row) = self.row_of(id).await?;
        if !row.status.is_finished() {
            return Err(Error::ShutDown);
        }
        self.recorded_outcome(&row).await
    }

    /// Waits for run `key`, driven by another host, to end: its row is read again and
    /// again (every 20 ms at first, backing off to a second), since this host hears
    /// nothing of a run it does not own.
    async fn wait_elsewhere(&self, key: u128) -> Result<Outcome> {
        let mut pause = std::time::Duration::from_millis(20);
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(Error::ShutDown);
            }
            let row = self
                .shared
                .journal
                .instance(key)
                .await?
                .ok_or_else(|| Error::InstanceNotFound(format!("{key:032x}")))?;
            if row.status.is_finished() {
                return self.recorded_outcome(&row).await;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(1));
        }
    }

    async fn recorded_outcome(&self, row: &InstanceRow) -> Result<Outcome> {
        let corrupt = |message: String| Error::Corrupt {
            location: format!("result of instance `{}` at LSN {}", row.id, row.head_lsn),
            message,
        };
        let envelope = self
            .shared
            .journal
            .envelope(row.head_lsn)
            .await?
            .ok_or_else(|| corrupt("the last event is missing".into()))?;
        if crate::event::hash_envelope(&envelope) != row.head_hash {
            return Err(corrupt(
                "the last event's hash differs from the instance row".into(),
            ));
        }
        let record = EventRecord::decode(&envelope).map_err(|err| corrupt(err.to_string()))?;
        match record.kind {
            EventKind::WorkflowCompleted { output } => Ok(Outcome::Completed(output)),
            EventKind::WorkflowFailed { error } => Ok(Outcome::Failed(error)),
            EventKind::WorkflowTerminated { reason } => Ok(Outcome::Terminated(reason)),
            EventKind::WorkflowContinuedAsNew { input, .. } => Ok(Outcome::ContinuedAsNew(input)),
            other => Err(corrupt(format!(
                "the instance is finished but its last event is {}",
                other.name()
            ))),
        }
    }

    async fn info(&self, row: InstanceRow) -> Result<InstanceInfo> {
        let attributes = self.shared.journal.attributes(row.key).await?;
        let status = match row.status {
            InstanceStatus::Completed => Status::Completed,
            InstanceStatus::Failed => Status::Failed,
            InstanceStatus::Terminated => Status::Terminated,
            InstanceStatus::ContinuedAsNew => Status::ContinuedAsNew,
            InstanceStatus::Running => self.running_status(row.key),
        };
        Ok(InstanceInfo {
            run: row.key,
            id: row.id,
            workflow_type: row.workflow_type,
            status,
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
            events: row.next_seq,
            attributes,
        })
    }

    /// Running, or parked: by this host, or by an earlier one (recorded) if nothing here
    /// runs it.
    fn running_status(&self, key: u128) -> Status {
        if let Some(err) = lock(&self.shared.parked).get(&key) {
            return Status::Parked {
                reason: err.to_string(),
                code: err.code().to_owned(),
            };
        }
        if lock(&self.shared.active).contains_key(&key) {
            return Status::Running;
        }
        match lock(&self.shared.recorded_parked).get(&key) {
            Some((code, reason)) => Status::Parked {
                reason: reason.clone(),
                code: code.clone(),
            },
            None => Status::Running,
        }
    }

    /// The counts the journal keeps as it commits (runs by type and stored status, runs
    /// started and ended per five-minute bucket from the one holding `activity_from_ms`),
    /// or `None` when it keeps none: an overview then counts from [`Engine::list_page`].
    /// Cheap whatever the number of runs.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn tallies(&self, activity_from_ms: u64) -> Result<Option<Tallies>> {
        self.shared.journal.tallies(activity_from_ms).await
    }

    /// Whether run `run` (an [`InstanceInfo::run`]) waits on a signal or an update now,
    /// which its history does not show until the message comes: `Some` for a run in
    /// memory on this host, `None` for one that is not (evicted while waiting, parked,
    /// or not yet loaded).
    pub fn waits_on_message(&self, run: u128) -> Option<bool> {
        match lock(&self.shared.active).get(&run) {
            Some(Active {
                driver: Driver::Running(_),
                inbox,
                ..
            }) => Some(inbox.awaits_message()),
            _ => None,
        }
    }

    /// The parked instances (by this host, or recorded by an earlier one and not running
    /// here), oldest first. Reads one row per parked run.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn parked_instances(&self) -> Result<Vec<InstanceInfo>> {
        let mut keys: Vec<u128> = lock(&self.shared.parked).keys().copied().collect();
        keys.extend(lock(&self.shared.recorded_parked).keys().copied());
        keys.sort_unstable();
        keys.dedup();
        let mut out = Vec::new();
        for key in keys {
            let Some(row) = self.shared.journal.instance(key).await? else {
                continue;
            };
            if row.status.is_finished() {
                continue;
            }
            let info = self.info(row).await?;
            if matches!(info.status, Status::Parked { .. }) {
                out.push(info);
            }
        }
        out.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(out)
    }

    /// The current status of instance `id`.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`] or storage errors.
    pub async fn status(&self, id: &str) -> Result<InstanceInfo> {
        let (_, row) = self.row_of(id).await?;
        self.info(row).await
    }

    /// One page of the instances matching `filter`, oldest first, after `after` (a
    /// cursor from the previous page), at most `filter.limit` of them (100 if unset, at
    /// most [`crate::journal::PAGE_ROWS_MAX`]), with the cursor to continue from (`None`
    /// at the end) and how many instance rows it examined.
    ///
    /// A call examines at most [`LIST_PAGES_PER_CALL`] pages of `limit` rows of the
    /// instance index: where a filter the index cannot serve (a derived status such as
    /// `Parked`) keeps few rows, a page may hold fewer rows than asked, even none, with
    /// a cursor; continue from it.
    ///
    /// # Errors
    /// Storage errors or a corrupt index row.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    ///
    /// Reads the instance index and the attribute index; no history is read or replayed.
    pub async fn list_page(&self, filter: &ListFilter, after: Option<Cursor>) -> Result<ListPage> {
        self.list_page_where(filter, after, |_| true).await
    }

    /// [`Engine::list_page`], keeping only the instances `keep` accepts (a page may then
    /// hold fewer rows; the cursor still moves past what was examined).
    pub(crate) async fn list_page_where(
        &self,
        filter: &ListFilter,
        after: Option<Cursor>,
        mut keep: impl FnMut(&InstanceInfo) -> bool,
    ) -> Result<ListPage> {
        let limit = filter
            .limit
            .unwrap_or(100)
            .clamp(1, crate::journal::PAGE_ROWS_MAX);
        let mut query = self.instance_query(filter);
        query.after = after;
        query.limit = limit;
        let mut page_out = ListPage {
            rows: Vec::new(),
            next: None,
            examined: 0,
        };
        // Bounded work per call, whatever the filter keeps: a caller the policy lets read
        // little must not make one request read the whole index.
        for _ in 0..LIST_PAGES_PER_CALL {
            let page = self.shared.journal.query(&query).await?;
            for row in page.rows {
                let cursor = Cursor::after(&row);
                page_out.examined += 1;
                let info = self.info(row).await?;
                if filter.matches(&info) && keep(&info) {
                    page_out.rows.push(info);
                }
                if page_out.rows.len() >= limit {
                    // More may follow: the caller asks again from here.
                    page_out.next = Some(cursor);
                    return Ok(page_out);
                }
            }
            match page.next {
                Some(next) => {
                    page_out.next = Some(next);
                    query.after = Some(next);
                }
                None => {
                    page_out.next = None;
                    return Ok(page_out);
                }
            }
        }
        Ok(page_out)
    }

    fn instance_query(&self, filter: &ListFilter) -> InstanceQuery {
        // Parked is derived (a running row with a recorded reason): the journal is asked
        // for running rows and the status is checked here.
        let statuses = filter
            .statuses
            .iter()
            .map(|kind| match kind {
                StatusKind::Running | StatusKind::Parked => InstanceStatus::Running,
                StatusKind::Completed => InstanceStatus::Completed,
                StatusKind::Failed => InstanceStatus::Failed,
                StatusKind::Terminated => InstanceStatus::Terminated,
                StatusKind::ContinuedAsNew => InstanceStatus::ContinuedAsNew,
            })
            .fold(Vec::new(), |mut all, status| {
                if !all.contains(&status) {
                    all.push(status);
                }
                all
            });
        InstanceQuery {
            workflow_type: filter.workflow_type.clone(),
            statuses,
            created_from_ms: filter.created_from_ms,
            created_until_ms: filter.created_until_ms,
            attributes: filter.attributes.clone(),
            after: None,
            limit: 0,
        }
    }

    /// Instances matching `filter`, oldest first.
    ///
    /// # Errors
    /// Storage errors or a corrupt index row.
    ///
    /// Reads the instance index and the attribute index; no history is read or replayed.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<InstanceInfo>> {
        let mut query = self.instance_query(filter);
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        loop {
            let page = self.shared.journal.query(&query).await?;
            for row in page.rows {
                if out.len() >= limit {
                    return Ok(out);
                }
                let info = self.info(row).await?;
                if filter.matches(&info) {
                    out.push(info);
                }
            }
            match page.next {
                Some(next) if out.len() < limit => query.after = Some(next),
                _ => return Ok(out),
            }
        }
    }

    /// The notification outbox in the order its events were recorded, after notification
    /// `after`, at most `limit` rows: each notification with every delivery attempt and
    /// where its delivery stands.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn notifications(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<crate::notify::OutboxRow>> {
        self.shared.journal.outbox(after, limit).await
    }

    /// The verified history of instance `id`, oldest event first.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::Corrupt`] if the hash chain does not verify.
    pub async fn history(&self, id: &str) -> Result<Vec<StoredEvent>> {
        let (key, _) = self.row_of(id).await?;
        let raw = self
            .shared
            .journal
            .history(key)
            .await?
            .ok_or_else(|| Error::InstanceNotFound(id.to_owned()))?;
        verify_history(raw).map(|(_, events)| events)
    }

    /// Replays a recorded history against the registered code without running anything
    /// live or writing anything: the auditor's check that the code explains the record.
    ///
    /// # Errors
    /// [`Error::NonDeterminism`] at the first step where code and record part (including
    /// a different result), [`Error::UnknownWorkflowType`], [`Error::Corrupt`] for a
    /// malformed history, [`Error::PayloadDecode`] for an undecodable payload.
    pub async fn replay(&self, records: &[EventRecord]) -> Result<ReplayVerdict> {
        self.replayer().replay(records).await
    }

    /// A [`Replayer`] for this engine's workflow types, codec and clock, for replaying
    /// recorded histories offline.
    pub fn replayer(&self) -> Replayer {
        Replayer::new(
            self.shared.workflows.clone(),
            self.shared.codec.clone(),
            self.shared.clock.clone(),
        )
    }

    /// Stops the runtime: refuses new starts, stops every instance driver (each resumes
    /// from its history when the file is opened again), lets the writer commit what is
    /// queued, and closes the file, which another runtime may then open. Every later call
    /// on this runtime or its clones fails with [`Error::ShutDown`].
    ///
    /// # Durability
    /// Every step acknowledged before the call is on disk; requests queued at the call
    /// are committed before it returns.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped part-way, the runtime already refuses new work
    /// ([`Error::ShutDown`]) but its drivers or the file may still be open; call
    /// `shutdown` again, which finishes the job.
    pub async fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.registered.notify_waiters();
        for task in [
            &self.shared.timer_task,
            &self.shared.scheduler_task,
            &self.shared.outbox_task,
            &self.shared.dispatch_task,
        ] {
            let task = lock(task).take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
        }
        // Nothing more will be applied: release every call waiting for its commit's
        // effects (`applied`), which then returns (its write is durable all the same).
        self.shared.applied.send_replace(u64::MAX);
        let drivers: Vec<JoinHandle<()>> = lock(&self.shared.active)
            .drain()
            .filter_map(|(_, a)| match a.driver {
                Driver::Running(task) => Some(task),
                Driver::Dormant => None,
            })
            .collect();
        for driver in &drivers {
            driver.abort();
        }
        for driver in drivers {
            // A driver that finished on its own in the meantime reports its result; one
            // aborted reports cancellation. Either way it no longer touches the store.
            let _ = driver.await;
        }
        let shared = self.shared.clone();
        let closed = tokio::task::spawn_blocking(move || shared.journal.close()).await;
        if closed.is_err() {
            tracing::error!("closing the writer or the store panicked");
        }
        self.shared.journal.closed().await;
    }
}

/// The engine is the host of the runs it drives (see [`HostPort`]).
#[async_trait::async_trait]
impl HostPort for Engine {
    fn observe(&self, observation: crate::port::Observation<'_>) {
        let metrics = &self.shared.metrics;
        match observation {
            crate::port::Observation::Attempt {
                workflow_type,
                activity,
                outcome,
                seconds,
            } => {
                metrics.attempt(workflow_type, activity, outcome, seconds);
            }
            crate::port::Observation::TimerFired { late_ms } => {
                metrics.timers_fired.inc();
                metrics
                    .timer_lateness_seconds
                    .observe(late_ms as f64 / 1000.0);
            }
        }
    }

    fn append(&self, key: u128, kind: EventKind) -> crate::port::AppendFuture<'_> {
        self.shared.journal.append(key, kind, Expect::End)
    }

    fn append_queued(&self, key: u128, kind: EventKind) -> cairn_core::journal::AppendTicket {
        self.shared.journal.append_queued(key, kind)
    }

    fn queues_appends(&self) -> bool {
        self.shared.journal.queues_appends()
    }

    fn append_sent(&self, key: u128, kind: EventKind) -> cairn_core::journal::AppendTicket {
        self.shared.journal.append_sent(key, kind)
    }

    fn always_replay(&self) -> bool {
        self.shared.always_replay
    }

    fn handing_over(&self, key: u128) -> bool {
        self.shared.journal.handing_over(key)
    }

    fn app_state(&self) -> AppState {
        self.shared.app.clone()
    }

    async fn start_child(
        &self,
        workflow_type: &str,
        id: &str,
        input: Payload,
        parent: u128,
    ) -> Result<()> {
        Engine::start_child(self, workflow_type, id, input, parent)
            .await
            .map(drop)
    }

    async fn is_child_of(&self, id: &str, parent: u128) -> Result<bool> {
        Engine::is_child_of(self, id, parent).await
    }

    async fn wait(&self, id: &str) -> Result<Outcome> {
        Engine::wait(self, id).await
    }

    async fn cancel(&self, id: &str, reason: &str) -> Result<()> {
        Engine::cancel(self, id, reason).await
    }

    async fn task_change(
        &self,
        key: u128,
        step: crate::event::StepNo,
        change: crate::port::RunTaskChange,
    ) -> Result<crate::port::RunTaskAnswer> {
        self.run_task_change(key, step, change).await
    }
}

enum Resume {
    Fresh(Box<History>),
    /// Read the row and the history from the store and replay.
    Load,
    /// The same, with the `latest` task ends the run never took handed back after its
    /// other outcomes (`History::defer_latest_untaken_ends`): the recorded order failed
    /// with `first`, the error to report if this replay parts from the record too.
    LoadDeferring {
        first: Box<Error>,
        latest: usize,
    },
}

impl Active {
    fn dormant() -> Self {
        Active {
            outcome: Arc::new(watch::channel(None).0),
            inbox: Arc::new(Inbox::default()),
            driver: Driver::Dormant,
        }
    }
}

/// Resumes unfinished runs from the running index only: evicted ones become dormant
/// entries (with their wake-up time in the timer index) without reading or replaying
/// their history; the others are replayed. A run already resident is left as it is (a
/// shared store names its runs again when this host takes them over, and as a safety
/// net).
async fn resume_runs(shared: &Arc<Shared>, running: Vec<(u128, Option<Suspension>)>) -> Result<()> {
    let mut resume = Vec::new();
    let mut dormant = 0usize;
    {
        let mut active = lock(&shared.active);
        let parked = lock(&shared.parked);
        for (key, suspension) in running {
            if active.contains_key(&key) || parked.contains_key(&key) {
                continue;
            }
            match suspension {
                Some(suspension) => {
                    active.insert(key, Active::dormant());
                    if let Some(at) = suspension.wake_at_ms {
                        shared.timers.insert(at, key);
                    }
                    dormant += 1;
                }
                None => resume.push(key),
            }
        }
    }
    if resume.is_empty() && dormant == 0 {
        return Ok(());
    }
    tracing::info!(
        replayed = resume.len(),
        dormant,
        "resuming unfinished instances"
    );
    for key in resume {
        // Parking for an unknown type is decided here, before `open` returns, so the
        // host sees it at once; the rest replay in their own tasks.
        if let Some(row) = shared.journal.instance(key).await? {
            if !shared.workflows.contains_key(&row.workflow_type) {
                let err = Error::UnknownWorkflowType {
                    workflow_type: row.workflow_type.clone(),
                    instance: Some(row.id.clone()),
                };
                park(shared, key, err);
                continue;
            }
        }
        spawn_driver(shared, key, Resume::Load);
    }
    Ok(())
}

/// Stops every resident run this host no longer owns (another host took it over): its
/// driver is aborted and its entry dropped, so its waiters look for the result in the
/// store.
fn drop_lost_runs(shared: &Shared) {
    let mut active = lock(&shared.active);
    let lost: Vec<u128> = active
        .keys()
        .copied()
        .filter(|key| !shared.journal.owns(*key))
        .collect();
    for key in &lost {
        if let Some(entry) = active.remove(key) {
            if let Driver::Running(task) = entry.driver {
                task.abort();
            }
        }
    }
    if !lost.is_empty() {
        tracing::warn!(
            runs = lost.len(),
            "stopped driving runs another host took over"
        );
        shared.registered.notify_waiters();
    }
}

/// Starts a driver for `key`: for a new instance, or to wake a dormant one.
fn spawn_driver(shared: &Arc<Shared>, key: u128, resume: Resume) {
    let mut active = lock(&shared.active);
    spawn_locked(shared, &mut active, key, resume);
}

/// The engine's side of the commit path: the writer hands it every commit's effects,
/// before any reply, and the dispatcher task (`run_dispatch`) applies them in commit
/// order: registering new runs, delivering signals and cancellations, publishing results,
/// stopping terminated runs and waking parents. None of it depends on the task that
/// asked for the write still being there. The writer thread only queues the batch: the
/// work, and the wake-ups it causes, happen on the runtime's own threads.
struct Dispatch {
    batches: tokio::sync::mpsc::UnboundedSender<Dispatched>,
    /// The metrics' commit latency (a handle on the histogram, not on the engine, which
    /// owns the journal that owns this).
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// What the commit path hands the dispatcher, in order.
enum Dispatched {
    /// A commit's number and effects.
    Commit(u64, Vec<Committed>),
    /// A change in which runs this host drives.
    Handover(Handover),
    /// The store failed for good: it refuses every write until the runtime is reopened.
    Failed(Error),
}

impl CommitListener for Dispatch {
    fn committed(&self, batch: u64, effects: Vec<Committed>) {
        // Closed only when the engine is gone: nothing is left to apply them to.
        let _ = self.batches.send(Dispatched::Commit(batch, effects));
    }

    fn handover(&self, change: Handover) {
        let _ = self.batches.send(Dispatched::Handover(change));
    }

    fn commit_took(&self, took: std::time::Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    fn failed(&self, err: &Error) {
        let _ = self.batches.send(Dispatched::Failed(err.clone()));
    }
}

/// The dispatcher task: applies each commit's effects in order, then publishes how many
/// commits are applied (`Shared::applied`), which the host API waits for so that its
/// callers read their own writes.
async fn run_dispatch(
    weak: std::sync::Weak<Shared>,
    mut batches: tokio::sync::mpsc::UnboundedReceiver<Dispatched>,
) {
    while let Some(dispatched) = batches.recv().await {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let (batch, effects) = match dispatched {
            Dispatched::Commit(batch, effects) => (batch, effects),
            Dispatched::Handover(Handover::Lost) => {
                drop_lost_runs(&shared);
                continue;
            }
            Dispatched::Failed(err) => {
                lock(&shared.storage_failed).get_or_insert(err);
                shared.store_failed.notify_waiters();
                shared.registered.notify_waiters();
                continue;
            }
            Dispatched::Handover(Handover::Adopted(runs)) => {
                if !shared.closed.load(Ordering::Acquire) {
                    let resuming = shared.clone();
                    shared.runtime.spawn(async move {
                        if let Err(err) = resume_runs(&resuming, runs).await {
                            tracing::warn!(%err, "could not resume runs taken over; the next hand-over tries again");
                        }
                    });
                }
                continue;
            }
        };
        // A bug here must not stop every later commit from reaching memory, nor leave
        // the callers waiting for `applied` hanging.
        let applied =
            std::panic::catch_unwind(AssertUnwindSafe(|| apply_effects(&shared, &effects)));
        if let Err(panic) = applied {
            tracing::error!(
                batch,
                panic = %crate::error::panic_message(&panic),
                "applying a commit's effects panicked; they may be missing from memory until the next open"
            );
        }
        shared.applied.send_replace(batch);
    }
}

fn apply_effects(shared: &Arc<Shared>, effects: &[Committed]) {
    track_parking(shared, effects);
    count(shared, effects);
    let mut schedules_changed = false;
    let mut outbox_changed = false;
    // A continued run's number follows its start in the same commit; its run needs it
    // from the start (activity keys).
    let runs: KeyMap<u32> = effects
        .iter()
        .filter_map(|effect| match effect {
            Committed::Event {
                key,
                kind: Some(EventKind::RunContinued { run, .. }),
                ..
            } => Some((*key, *run)),
            _ => None,
        })
        .collect();
    {
        let mut active = lock(&shared.active);
        for effect in effects {
            match effect {
                Committed::Event {
                    key,
                    seq,
                    parent,
                    kind,
                    actor,
                    ..
                } => {
                    if matches!(kind, Some(EventKind::UpdateAnswered { .. }))
                        || kind.as_ref().is_some_and(EventKind::is_terminal)
                    {
                        shared.answers.wake(*key);
                    }
                    let run = runs.get(key).copied().unwrap_or(1);
                    let event = CommittedEvent {
                        key: *key,
                        seq: *seq,
                        parent: *parent,
                        run,
                    };
                    apply_event(shared, &mut active, event, kind.as_ref(), actor.as_ref());
                }
                Committed::Outbox => outbox_changed = true,
                Committed::Schedule { id, row } => {
                    let mut schedules = lock(&shared.schedules);
                    match row {
                        Some(row) => schedules.insert(id.clone(), row.clone()),
                        None => schedules.remove(id),
                    };
                    schedules_changed = true;
                }
            }
        }
    }
    if schedules_changed {
        shared.schedules_changed.notify_one();
    }
    if outbox_changed {
        shared.outbox_changed.notify_one();
    }
}

/// Feeds the metrics that commits decide: commits and their size, starts, ends.
fn count(shared: &Shared, effects: &[Committed]) {
    let metrics = &shared.metrics;
    metrics.commits.inc();
    let mut types = metrics.starts_and_ends();
    let mut events = 0u32;
    for effect in effects {
        let Committed::Event { kind, ended, .. } = effect else {
            continue;
        };
        events += 1;
        if let Some(EventKind::WorkflowStarted { workflow_type, .. }) = kind {
            types.count(workflow_type, |series| {
                series.started.inc();
            });
        }
        if let (Some(end), Some(kind)) = (ended, kind) {
            let seconds = end.ended_at_ms.saturating_sub(end.started_at_ms) as f64 / 1000.0;
            types.count(&end.workflow_type, |series| {
                let status = match kind {
                    EventKind::WorkflowCompleted { .. } => &series.completed,
                    EventKind::WorkflowFailed { .. } => &series.failed,
                    EventKind::WorkflowTerminated { .. } => &series.terminated,
                    _ => &series.continued_as_new,
                };
                status.inc();
                series.seconds.observe(seconds);
            });
        }
    }
    if events > 0 {
        metrics.commit_events.observe(f64::from(events));
    }
}

/// Keeps `recorded_parked` as the `parked` index is: a `WorkflowParked` records the
/// instance, anything else it records clears it. One lock per batch, and no lookups at
/// all while nothing is parked (the usual case).
fn track_parking(shared: &Shared, effects: &[Committed]) {
    let mut recorded = lock(&shared.recorded_parked);
    for effect in effects {
        let Committed::Event { key, kind, .. } = effect else {
            continue;
        };
        match kind {
            Some(EventKind::WorkflowParked { code, reason }) => {
                recorded.insert(*key, (code.clone(), reason.clone()));
            }
            _ if !recorded.is_empty() => {
                recorded.remove(key);
            }
            _ => {}
        }
    }
}

/// Where a committed event landed: its instance, its `seq`, the instance's parent and
/// its run's position in its continue-as-new chain.
struct CommittedEvent {
    key: u128,
    seq: u64,
    parent: Option<u128>,
    run: u32,
}

/// Brings one committed event into memory. Called with the active map locked, so an
/// eviction in progress either sees the change or is woken by it.
fn apply_event(
    shared: &Arc<Shared>,
    active: &mut KeyMap<Active>,
    event: CommittedEvent,
    kind: Option<&EventKind>,
    actor: Option<&Actor>,
) {
    let CommittedEvent {
        key,
        seq,
        parent,
        run,
    } = event;
    match kind {
        None | Some(EventKind::RunContinued { .. } | EventKind::WorkflowParked { .. }) => {
            if let Some(entry) = active.get(&key) {
                entry.inbox.committed(seq);
            }
        }
        Some(EventKind::WorkflowStarted {
            workflow_type,
            id,
            input,
        }) => {
            // Shutting down: the instance starts at the next open, from its history.
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            // Driven by the host that owns it; and a run already resident (taken over
            // and replayed before its start was heard of) carries on from its history.
            if !shared.journal.owns(key) || active.contains_key(&key) {
                return;
            }
            if !shared.workflows.contains_key(workflow_type) {
                let err = Error::UnknownWorkflowType {
                    workflow_type: workflow_type.clone(),
                    instance: Some(id.clone()),
                };
                park(shared, key, err);
                return;
            }
            let mut history = History::fresh(id.clone(), workflow_type.clone(), input.clone());
            history.run = run;
            spawn_locked(shared, active, key, Resume::Fresh(Box::new(history)));
            if let Some(entry) = active.get(&key) {
                entry.inbox.committed(seq);
            }
        }
        Some(
            signal @ (EventKind::SignalReceived { .. } | EventKind::KeyedSignalReceived { .. }),
        ) => {
            if let Some((name, payload, dedupe)) = signal.received_signal() {
                let arrived = CarriedSignal {
                    name: name.to_owned(),
                    payload: payload.clone(),
                    key: dedupe.map(str::to_owned),
                    actor: actor.cloned(),
                };
                deliver_locked(shared, active, key, |inbox| inbox.add(seq, arrived, false));
            }
        }
        Some(EventKind::CancelRequested { reason }) => {
            deliver_locked(shared, active, key, |inbox| {
                inbox.request_cancel(seq, reason.clone())
            });
        }
        Some(EventKind::TaskCompleted {
            step,
            actor,
            decision,
            escalation,
        }) => {
            let done = TaskDecision {
                decision: decision.clone(),
                actor: actor.clone(),
                escalation: *escalation,
            };
            deliver_locked(shared, active, key, |inbox| {
                inbox.task_decided(seq, *step, done)
            });
        }
        Some(end) => {
            let outcome = match end {
                EventKind::WorkflowCompleted { output } => Outcome::Completed(output.clone()),
                EventKind::WorkflowFailed { error } => Outcome::Failed(error.clone()),
                EventKind::WorkflowTerminated { reason } => Outcome::Terminated(reason.clone()),
                EventKind::WorkflowContinuedAsNew { input, .. } => {
                    Outcome::ContinuedAsNew(input.clone())
                }
                // The writer reports no other kind.
                _ => return,
            };
            if let Some(entry) = active.remove(&key) {
                if let (EventKind::WorkflowTerminated { .. }, Driver::Running(task)) =
                    (end, &entry.driver)
                {
                    // Its code must not run another step; the writer already refuses
                    // whatever it would append.
                    task.abort();
                }
                entry.outcome.send_replace(Some(Ok(outcome)));
            }
            lock(&shared.parked).remove(&key);
            // A continued run's chain goes on; its parent waits for the chain's end.
            let chain_ended = !matches!(end, EventKind::WorkflowContinuedAsNew { .. });
            if let (true, Some(parent)) = (chain_ended, parent) {
                // A parent evicted while it waited for this child carries on now; one
                // being evicted at this instant sees its inbox change and stays.
                deliver_locked(shared, active, parent, Inbox::touch);
            }
        }
    }
}

/// Parks instance `key` on `err`: this host stops trying it until the next open, and the
/// parking is recorded (a `WorkflowParked` event, indexed) unless the same reason already
/// is, so an instance that keeps failing the same way at every open records it once.
fn park(shared: &Shared, key: u128, err: Error) {
    tracing::error!(key = %format_args!("{key:032x}"), %err, "instance parked");
    let code = err.code().to_owned();
    let reason = err.to_string();
    let recorded = lock(&shared.recorded_parked).get(&key) == Some(&(code.clone(), reason.clone()));
    lock(&shared.parked).insert(key, err);
    if !recorded {
        shared
            .journal
            .append_detached(key, EventKind::WorkflowParked { code, reason });
    }
}

/// Holding the map's lock across the spawn makes the entry exist before anyone can look
/// for it, and makes "dormant -> running" one step for signals and evictions alike.
fn spawn_locked(shared: &Arc<Shared>, active: &mut KeyMap<Active>, key: u128, resume: Resume) {
    let entry = active.entry(key).or_insert_with(Active::dormant);
    if matches!(entry.driver, Driver::Running(_)) {
        return;
    }
    if !shared.journal.owns(key) {
        // This host's hold on the run may have lapsed (it was paused, or its store was
        // unreachable): it does not drive it until the hold is renewed. Looked at again
        // in a second; if another host took it over, the hand-over drops it first.
        shared
            .timers
            .insert(shared.clock.now_ms().saturating_add(1000), key);
        return;
    }
    // One span per driven run; its id and type are filled in once the history is read.
    // Activity attempts open their spans inside it (see `docs/OPERATIONS.md`, Traces).
    let span = tracing::info_span!(
        parent: None,
        "cairn.instance",
        run = %format_args!("{key:032x}"),
        instance = tracing::field::Empty,
        workflow_type = tracing::field::Empty,
    );
    let task = shared.runtime.spawn(
        run_instance(
            shared.clone(),
            key,
            resume,
            entry.inbox.clone(),
            entry.outcome.clone(),
        )
        .instrument(span),
    );
    entry.driver = Driver::Running(task);
    shared.registered.notify_waiters();
}

/// Replays a dormant instance; does nothing for one that runs or is unknown.
fn wake(shared: &Arc<Shared>, key: u128) {
    let mut active = lock(&shared.active);
    if active
        .get(&key)
        .is_some_and(|a| matches!(a.driver, Driver::Dormant))
    {
        spawn_locked(shared, &mut active, key, Resume::Load);
    }
}

/// Hands a recorded signal or cancellation (or a child's end) to the instance's inbox,
/// waking it if it is dormant. Both happen under the map's lock (held by the caller), so
/// a concurrent eviction either sees the inbox change (and stays) or has already made
/// the entry dormant (and is woken here).
fn deliver_locked(
    shared: &Arc<Shared>,
    active: &mut KeyMap<Active>,
    key: u128,
    put: impl FnOnce(&Inbox),
) {
    let Some(entry) = active.get(&key) else {
        return;
    };
    put(&entry.inbox);
    if matches!(entry.driver, Driver::Dormant) {
        spawn_locked(shared, active, key, Resume::Load);
    }
}

/// Makes the running entry of `key` dormant, unless its inbox moved since `seen` (the
/// mark of the workflow's last poll): a signal, a cancellation or a child's end.
fn mark_dormant(shared: &Shared, key: u128, seen: InboxMark, wake_at_ms: Option<u64>) -> bool {
    let mut active = lock(&shared.active);
    let Some(entry) = active.get_mut(&key) else {
        return false;
    };
    if entry.inbox.mark() != seen {
        return false;
    }
    // Dropping the handle detaches this very task, which ends right after.
    entry.driver = Driver::Dormant;
    // Only now, and under the map's lock: the timer service's `wake` takes this lock, so
    // when it finds the entry it finds it dormant (`timers::loom_tests`).
    if let Some(at) = wake_at_ms {
        shared.timers.insert(at, key);
    }
    true
}

/// The timer service: sleeps on the runtime clock until the earliest wake-up of a
/// dormant instance (or until one is inserted) and wakes every instance due. Holds only a weak reference between
/// rounds, so a runtime dropped without `shutdown` is not kept alive by it.
async fn run_timers(weak: std::sync::Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let timers = shared.timers.clone();
        let round = timers.round(shared.clock.now_ms(), |key| wake(&shared, key));
        let sleep = round.next_ms.map(|at| shared.clock.sleep_until(at));
        drop(shared);
        let mut inserted = round.inserted;
        match sleep {
            Some(sleep) => {
                tokio::select! {
                    () = sleep => {}
                    () = &mut inserted => {}
                }
            }
            None => inserted.await,
        }
    }
}

/// The scheduler: sleeps on the runtime clock until the earliest schedule is due, starts
/// its occurrence (idempotently, by occurrence id), then records the next fire time.
async fn run_schedules(weak: std::sync::Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let changed = shared.schedules_changed.clone();
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = shared.clock.now_ms();
        let due: Vec<(String, ScheduleRow)> = lock(&shared.schedules)
            .iter()
            .filter(|(_, row)| row.paused.is_none() && row.next_fire_ms <= now)
            .map(|(id, row)| (id.clone(), row.clone()))
            .collect();
        for (id, row) in due {
            let engine = Engine::from_shared(shared.clone());
            let occurrence = occurrence_id(&id, row.next_fire_ms);
            match engine
                .start(&row.workflow_type, &occurrence, row.input.clone())
                .await
            {
                Ok(_) => {}
                Err(Error::ShutDown) => return,
                Err(err) => tracing::error!(schedule = %id, %err, "scheduled start failed"),
            }
            // Occurrences missed while the host was down collapse into the one just started;
            // an interval stays on its grid.
            let updated = match row.recurrence.next_following(row.next_fire_ms, now) {
                Ok(next) => Some(ScheduleRow {
                    next_fire_ms: next,
                    ..row.clone()
                }),
                Err(err) => {
                    tracing::error!(schedule = %id, %err, "schedule has no next occurrence; removing it");
                    None
                }
            };
            // Only if nobody replaced or removed it meanwhile: the newer version rules, on
            // disk as in memory (the commit updates the scheduler's map).
            if shared
                .journal
                .schedule(id, updated, Some(row))
                .await
                .is_err()
            {
                return;
            }
            // The map this loop reads is the dispatcher's: wait for it to show the move.
            Engine::from_shared(shared.clone()).applied().await;
        }
        let next = lock(&shared.schedules)
            .values()
            .filter(|row| row.paused.is_none())
            .map(|row| row.next_fire_ms)
            .min();
        let sleep = next.map(|at| shared.clock.sleep_until(at));
        drop(shared);
        match sleep {
            Some(sleep) => {
                tokio::select! {
                    () = sleep => {}
                    () = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
}

/// How a driver ended without a result.
enum DriveEnd {
    Finished(WorkflowResult),
    Evicted,
}

/// Drives the workflow like [`drive`], and evicts the run once it has only waited
/// durably for the configured idle time.
async fn drive_evictable(
    shared: &Arc<Shared>,
    key: u128,
    ctx: &WorkflowContext,
    future: BoxFuture<'static, WorkflowResult>,
) -> std::result::Result<DriveEnd, Stop> {
    let Some(idle) = shared.eviction_idle else {
        return drive(ctx, future).await.map(DriveEnd::Finished);
    };
    // Idle time is host bookkeeping (memory), measured on tokio's time, not the runtime
    // clock: a test skipping virtual time to a workflow's timer must not meet it first.
    let run = drive(ctx, future);
    tokio::pin!(run);
    loop {
        let changed = ctx.state_changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // Biased: the order does not matter here (the run is polled either way), and an
        // unbiased select draws a random number at every poll of every run.
        if ctx.blocked().is_none() {
            tokio::select! {
                biased;
                result = &mut run => return result.map(DriveEnd::Finished),
                () = &mut changed => continue,
            }
        }
        tokio::select! {
            biased;
            result = &mut run => return result.map(DriveEnd::Finished),
            () = &mut changed => continue,
            () = tokio::time::sleep(idle) => {
                let Some(wake_at) = ctx.blocked() else { continue };
                // The inbox as the workflow last saw it: anything delivered since (even
                // while this branch runs and the workflow is not polled) keeps it here,
                // and the hint covers only the events that poll had seen.
                let seen = ctx.poll_mark();
                match shared.journal.suspend(key, seen.next_seq, wake_at).await {
                    Ok(true) => {
                        if mark_dormant(shared, key, seen, wake_at) {
                            return Ok(DriveEnd::Evicted);
                        }
                    }
                    // Something was appended meanwhile: stay and look again later.
                    Ok(false) => {}
                    Err(err) => return Err(Stop::Fatal(err)),
                }
            }
        }
    }
}

async fn run_instance(
    shared: Arc<Shared>,
    key: u128,
    resume: Resume,
    inbox: Arc<Inbox>,
    outcome: Arc<watch::Sender<OutcomeSlot>>,
) {
    let result = match run_instance_inner(&shared, key, resume, inbox).await {
        Ok(RunEnd::Evicted) => return,
        // Not evicted: this host keeps no entry, the run is the next owner's.
        Ok(RunEnd::HandedOver) => {
            tracing::info!("handed a run over to the host taking its shard");
            lock(&shared.active).remove(&key);
            shared.registered.notify_waiters();
            return;
        }
        Ok(RunEnd::Finished(finished)) => Ok(finished),
        // Someone else ended this run while its driver ran (a termination committed
        // before the commit path could stop this task). The record wins; it is not a
        // reason to park (and its commit has already told the parent).
        Err(err @ Error::InstanceFinished(_)) => match shared.journal.instance(key).await {
            Ok(Some(row)) if row.status.is_finished() => {
                let engine = Engine::from_shared(shared.clone());
                engine.recorded_outcome(&row).await
            }
            _ => Err(err),
        },
        Err(err) => Err(err),
    };
    match &result {
        // Another host took the run over (this one lapsed): it drives it from here on.
        // Nothing is published: this host's waiters look for the result in the store.
        Err(err @ Error::LeaseLost { .. }) => {
            tracing::warn!(%err, "stopped driving a run another host took over");
            lock(&shared.active).remove(&key);
            shared.registered.notify_waiters();
            return;
        }
        // A shared store that failed for a while: the run resumes when the store names
        // it again (its owner's safety net), not at the next open only.
        Err(Error::Storage(failure)) if failure.is_transient() => {
            tracing::warn!(%failure, "instance stopped; it resumes when its store is back");
            lock(&shared.active).remove(&key);
            shared.registered.notify_waiters();
            return;
        }
        // Not the instance's fault: it resumes when the runtime is reopened.
        Err(err @ (Error::Storage(_) | Error::ShutDown)) => {
            tracing::warn!(%err, "instance stopped");
            if matches!(err, Error::Storage(_)) {
                lock(&shared.storage_failed).get_or_insert_with(|| err.clone());
                shared.registered.notify_waiters();
            }
        }
        Err(err) => park(&shared, key, err.clone()),
        Ok(_) => {}
    }
    let result = match result {
        Err(err @ (Error::Storage(_) | Error::ShutDown)) => Err(err),
        Err(other) => Err(Error::Parked {
            instance: other_instance(&shared, key).await,
            reason: other.to_string(),
        }),
        Ok(outcome) => Ok(outcome),
    };
    // A result committed here was already published by its commit (`Dispatch`), which
    // also woke the parent; this covers the rest (parked, a result found on disk).
    outcome.send_replace(Some(result));
    lock(&shared.active).remove(&key);
}

enum RunEnd {
    Finished(Outcome),
    Evicted,
    /// Given to another host sharing the store: it replays the run from the log.
    HandedOver,
}

async fn other_instance(shared: &Shared, key: u128) -> String {
    match shared.journal.instance(key).await {
        Ok(Some(row)) => row.id,
        _ => format!("{key:032x}"),
    }
}

async fn run_instance_inner(
    shared: &Arc<Shared>,
    key: u128,
    mut resume: Resume,
    inbox: Arc<Inbox>,
) -> Result<RunEnd> {
    loop {
        match run_once(shared, key, resume, inbox.clone()).await? {
            // Always-replay mode: the same driver rebuilds the run from the log, so the
            // instance keeps its entry, inbox and waiters throughout.
            Once::Replay => resume = Resume::Load,
            Once::ReplayDeferring { first, latest } => {
                resume = Resume::LoadDeferring { first, latest }
            }
            Once::End(end) => return Ok(end),
        }
    }
}

/// How one incarnation of a run ended.
enum Once {
    End(RunEnd),
    /// Rebuild from the log.
    Replay,
    /// Rebuild from the log, deferring task ends never taken (`Resume::LoadDeferring`).
    ReplayDeferring {
        first: Box<Error>,
        latest: usize,
    },
}

async fn run_once(
    shared: &Arc<Shared>,
    key: u128,
    resume: Resume,
    inbox: Arc<Inbox>,
) -> Result<Once> {
    let (mut deferral, latest) = match resume {
        Resume::LoadDeferring { ref first, latest } => (Deferral::Retried(first.clone()), latest),
        _ => (Deferral::No, 0),
    };
    let (mut history, known_next_seq) = match resume {
        Resume::Fresh(history) => (*history, 1),
        Resume::Load | Resume::LoadDeferring { .. } => {
            let raw = shared
                .journal
                .history(key)
                .await?
                .ok_or_else(|| Error::Corrupt {
                    location: format!("running index, key {key:032x}"),
                    message: "an unfinished instance has no instance row".into(),
                })?;
            if raw.row.status.is_finished() {
                let engine = Engine::from_shared(shared.clone());
                let outcome = engine.recorded_outcome(&raw.row).await?;
                return Ok(Once::End(RunEnd::Finished(outcome)));
            }
            let (row, events) = verify_history(raw)?;
            shared.replays.fetch_add(1, Ordering::Relaxed);
            shared.metrics.replays.inc();
            let history = History::from_records(events.iter().map(|e| &e.record))?;
            (history, row.next_seq)
        }
    };
    let span = tracing::Span::current();
    span.record("instance", history.instance.as_str());
    span.record("workflow_type", history.workflow_type.as_str());
    let factory = factory_for(&shared.workflows, &history)?;
    if history.result.is_some() {
        return Err(Error::Corrupt {
            location: format!("instance `{}`", history.instance),
            message: "its row says running but its history holds a result".into(),
        });
    }
    // Whether a replay that parts from the record may be tried once more with the task
    // ends the run never took handed back last (a stop between a decision and its take).
    if matches!(deferral, Deferral::Retried(_)) {
        history.defer_latest_untaken_ends(latest);
    } else if history.untaken_ends_out_of_place() > 0 {
        deferral = Deferral::May;
    }
    let host: Arc<dyn HostPort> = Arc::new(Engine::from_shared(shared.clone()));
    let ctx = WorkflowContext::new(
        key,
        Some(host),
        shared.codec.clone(),
        shared.clock.clone(),
        inbox,
        history,
        known_next_seq,
    );
    let input = ctx.history().input.clone();
    let result = match drive_evictable(shared, key, &ctx, factory(ctx.clone(), input)).await {
        Ok(DriveEnd::Finished(result)) => result,
        Ok(DriveEnd::Evicted) => return Ok(Once::End(RunEnd::Evicted)),
        // What the run sent without waiting (a loser's abandonment) is durable before
        // the log is read again or another host takes the run over.
        Err(Stop::Replay) => {
            ctx.queued_durable().await?;
            return Ok(Once::Replay);
        }
        Err(Stop::HandedOver) => {
            // Refused once this host lost the run: the next owner replays without it.
            let _ = ctx.queued_durable().await;
            return Ok(Once::End(RunEnd::HandedOver));
        }
        Err(Stop::Fatal(err)) => {
            // A result the workflow got before it failed is a step it took: durable
            // before the failure is reported (its own error, if any, is secondary).
            let _ = ctx.queued_durable().await;
            return defer_or_fail(shared, key, &ctx, err, deferral).await;
        }
        Err(Stop::ContinueAsNew(input)) => {
            // The hand-over counts the run's events from memory, which a queued result
            // or an outcome still in the run's line reaches only once it is durable.
            ctx.queued_durable().await?;
            ctx.sent_durable().await?;
            let mut tries = 0u32;
            loop {
                let hand_over = ctx.hand_over();
                let carried = Carried {
                    expected_next_seq: hand_over.expected_next_seq,
                    signals: hand_over.signals,
                    cancel: hand_over.cancel,
                    run: hand_over.run,
                };
                if shared
                    .journal
                    .continue_as_new(key, input.clone(), carried)
                    .await?
                    .is_some()
                {
                    break;
                }
                // A signal or cancellation was committed after the inbox was read; look
                // again once the dispatcher has put it there.
                Engine::from_shared(shared.clone()).applied().await;
                tries += 1;
                if tries > CONTINUE_AS_NEW_TRIES_MAX {
                    return Err(Error::Contended {
                        instance: ctx.instance_id().to_owned(),
                        operation: "continue-as-new",
                        tries,
                    });
                }
            }
            // The commit started the next run's driver (with the parent link) and
            // published the hand-over to waiters (`Dispatch`).
            return Ok(Once::End(RunEnd::Finished(Outcome::ContinuedAsNew(input))));
        }
    };
    let outcome = match finished_outcome(&ctx, result) {
        Ok(outcome) => outcome,
        Err(err) => {
            // The workflow cannot end (its result does not encode, or its history says
            // more): a result it got before is still a step it took, recorded first.
            let _ = ctx.queued_durable().await;
            return defer_or_fail(shared, key, &ctx, err, deferral).await;
        }
    };
    let kind = match &outcome {
        Outcome::Completed(output) => EventKind::WorkflowCompleted {
            output: output.clone(),
        },
        Outcome::Failed(error) => EventKind::WorkflowFailed {
            error: error.clone(),
        },
        // `finished_outcome` only builds Completed or Failed from a workflow's return.
        Outcome::Terminated(reason) => EventKind::WorkflowTerminated {
            reason: reason.clone(),
        },
        Outcome::ContinuedAsNew(input) => EventKind::WorkflowContinuedAsNew {
            input: input.clone(),
            next_run: 0,
        },
    };
    // What the run sent without waiting (a patch marker, an abandonment) lands before the
    // end, which claims a result computed after it. A store that queues refuses the end
    // once it refused one of them; another may commit a later batch after refusing one.
    if !shared.journal.queues_appends() {
        ctx.sent_ahead_durable().await?;
    }
    // The last activity's result, if the workflow returned in the poll that got it,
    // goes with the end: one commit instead of two.
    match ctx.take_held() {
        Some(held) => shared.journal.append_after(key, held, kind).await?,
        None => shared.journal.append(key, kind, Expect::End).await?,
    };
    Ok(Once::End(RunEnd::Finished(outcome)))
}

/// Whether a run's replay may be tried again with task ends it never took handed back
/// last (`History::defer_latest_untaken_ends`).
enum Deferral {
    /// Nothing would move.
    No,
    /// Something would, if the recorded order fails.
    May,
    /// This is the second try; the recorded order failed with this error.
    Retried(Box<Error>),
}

/// A replay that parted from the record (`CAIRN-E0001`) while it was still handing back
/// recorded outcomes, in a history holding task ends the run never took, recorded
/// before outcomes the run recorded after them: the run may have stopped (or lost its
/// lease) between a person's decision and its take, and never seen the decision there.
///
/// The history, as it stands once what the failed try sent is durable, is replayed
/// offline (no host, nothing written) with the latest such end handed back last, then
/// the latest two, and so on; the first order that agrees with every recorded step is
/// the one the run is rebuilt with. If none does, the run is parked with the recorded
/// order's error. A rebuilt run that parts from the record again while handing back
/// recorded outcomes is parked with that first error too; a failure later, live, is its
/// own.
async fn defer_or_fail(
    shared: &Arc<Shared>,
    key: u128,
    ctx: &WorkflowContext,
    err: Error,
    deferral: Deferral,
) -> Result<Once> {
    match deferral {
        Deferral::May
            if matches!(err, Error::NonDeterminism(_))
                && ctx.releasing()
                && shared.journal.owns(key) =>
        {
            let _ = ctx.sent_durable().await;
            let _ = ctx.sent_ahead_durable().await;
            let records = match recorded(shared, key).await {
                Ok(Some(records)) => records,
                Ok(None) => return Err(err),
                // The other orders cannot be tried: the store's failure is what to act
                // on, not a divergence that a readable history might not show.
                Err(unread) => {
                    tracing::warn!(instance = ctx.instance_id(), %err, "the recorded order did not replay and the history could not be read again to try another");
                    return Err(unread);
                }
            };
            let replayer = Engine::from_shared(shared.clone()).replayer();
            let Some((latest, _)) = replayer.first_deferral_that_replays(&records).await else {
                return Err(err);
            };
            tracing::info!(
                instance = ctx.instance_id(),
                %err,
                latest,
                "the recorded order did not replay; the run goes on with its latest task ends never taken handed back last"
            );
            Ok(Once::ReplayDeferring {
                first: Box::new(err),
                latest,
            })
        }
        Deferral::Retried(first)
            if ctx.releasing()
                && !matches!(
                    err,
                    Error::Storage(_)
                        | Error::ShutDown
                        | Error::LeaseLost { .. }
                        | Error::InstanceFinished(_)
                ) =>
        {
            Err(*first)
        }
        _ => Err(err),
    }
}

/// The records of unfinished run `key` as stored now, verified; `None` once it ended.
async fn recorded(shared: &Shared, key: u128) -> Result<Option<Vec<EventRecord>>> {
    let Some(raw) = shared.journal.history(key).await? else {
        return Ok(None);
    };
    if raw.row.status.is_finished() {
        return Ok(None);
    }
    let (_, events) = verify_history(raw)?;
    Ok(Some(events.into_iter().map(|event| event.record).collect()))
}

/// Runs `work` (a request from outside that reads before it writes: a message, a task
/// decision, an actor's call and its policy check) in a task of its own and waits for
/// it: once the caller's future has been polled, dropping it does not stop the request
/// half-way, so what was sent is recorded unless refused, whatever the store's reads
/// wait on. To a caller that waits, it is as if `work` ran in its own task: a panic
/// (a host's policy that panicked, say) unwinds into the caller, and the caller's span
/// is the work's.
pub(crate) async fn carried_on<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    match tokio::spawn(work.in_current_span()).await {
        Ok(done) => done,
        Err(err) => match err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only the runtime itself cancels the task: it is shutting down.
            Err(_) => Err(Error::ShutDown),
        },
    }
}

/// At most this many notifications are delivered at once.
const DELIVERIES_AT_ONCE: usize = 16;

/// How long a shared store holds a notification for the host delivering it: twice the
/// longest attempt, so the attempt is recorded well before another host may try.
const DELIVERY_HOLD_MS: u64 = DELIVERY_TIMEOUT.as_secs() * 2_000;

/// The delivery task: delivers what is due, records each attempt, sleeps on the runtime
/// clock until the next attempt is due or a commit adds a notification. Holds only a weak
/// reference between rounds.
pub(crate) async fn run_outbox(weak: std::sync::Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let changed = shared.outbox_changed.clone();
        let woken = changed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now_ms = shared.clock.now_ms();
        let claimed = shared
            .journal
            .outbox_claim(now_ms, DELIVERIES_AT_ONCE, DELIVERY_HOLD_MS)
            .await;
        let (due, next_ms) = match claimed {
            Ok(found) => found,
            Err(err) => {
                tracing::error!(%err, "reading the notification outbox failed; trying again in a second");
                drop(shared);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !due.is_empty() {
            let notifier = shared.notifier.clone();
            let attempts = due
                .into_iter()
                .map(|row| deliver(&shared, notifier.clone(), row));
            futures::future::join_all(attempts).await;
            // Something may be due already; look again before sleeping.
            continue;
        }
        let sleep = next_ms.map(|at| shared.clock.sleep_until(at));
        drop(shared);
        match sleep {
            Some(sleep) => {
                tokio::select! {
                    () = sleep => {}
                    () = &mut woken => {}
                }
            }
            None => woken.await,
        }
    }
}

/// One attempt at one notification, recorded with where its delivery stands after it.
async fn deliver(shared: &Shared, notifier: Arc<dyn Notifier>, row: OutboxRow) {
    let notification = &row.notification;
    let outcome = match tokio::time::timeout(DELIVERY_TIMEOUT, notifier.notify(notification)).await
    {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(err),
        Err(_) => Some(format!(
            "the notifier took longer than {DELIVERY_TIMEOUT:?}"
        )),
    };
    let at_ms = shared.clock.now_ms();
    let attempts = row.attempts.len() + 1;
    let delivery = match (&outcome, retry_after(attempts)) {
        (None, _) => Delivery::Delivered,
        (Some(_), Some(after_ms)) => Delivery::Pending {
            next_attempt_ms: at_ms.saturating_add(after_ms),
        },
        (Some(_), None) => Delivery::GaveUp,
    };
    if let Some(err) = &outcome {
        tracing::warn!(id = notification.id, topic = notification.topic.name(), attempt = attempts, %err, ?delivery, "delivering a notification failed");
    }
    let attempt = DeliveryAttempt {
        at_ms,
        error: outcome,
    };
    if let Err(err) = shared
        .journal
        .outbox_attempted(notification.id, attempt, delivery)
        .await
    {
        // Not recorded: the notification stays due and is delivered again.
        tracing::error!(id = notification.id, %err, "recording a delivery attempt failed");
    }
}

#[cfg(all(test, not(cairn_loom)))]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    #[tokio::test]
    async fn a_carried_request_answers_its_caller_and_unwinds_its_panic_into_it() {
        assert_eq!(carried_on(async { Ok(7) }).await.unwrap(), 7);
        assert!(matches!(
            carried_on(async { Err::<(), _>(Error::ShutDown) }).await,
            Err(Error::ShutDown)
        ));
        let panicked = AssertUnwindSafe(carried_on(async {
            if std::hint::black_box(true) {
                panic!("the policy panicked");
            }
            Ok(())
        }))
        .catch_unwind()
        .await;
        let payload = panicked.expect_err("the panic reaches the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"the policy panicked"));
    }
}
