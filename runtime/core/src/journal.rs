//! The journal boundary: what the engine asks of durable storage, at the height of
//! journal operations (start an instance, append to its history, suspend it, hand it
//! over to a new run, end it, read and query it), and the rows a journal keeps beside the
//! log.
//!
//! A journal owns everything below that height: how appends are batched into
//! transactions, log positions, where the hash chain's head is kept, indexes. The engine
//! holds an `Arc<dyn Journal>` and nothing else of its store; the embedded redb journal
//! and a server-backed one implement the same trait and pass the same conformance suite
//! (`cairn-testkit`).
//!
//! Histories come back raw (envelope bytes as stored); [`verify_history`] decodes them
//! and checks the hash chain here, in the core, so no store can vouch for its own data.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::Payload;
use crate::error::{Error, Result, StorageFailure};
use crate::event::{hash_envelope, AttrValue, EventHash, EventKind, EventRecord, GENESIS_HASH};
pub use crate::notify::{Delivery, DeliveryAttempt, OutboxRow};
use crate::schedule::ScheduleRow;
pub use crate::task::{Actor, Party, TaskRow};

/// Lifecycle state of an instance as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum InstanceStatus {
    /// Started and not finished.
    Running,
    /// The workflow returned `Ok`.
    Completed,
    /// The workflow returned `Err`.
    Failed,
    /// Stopped from outside (`terminate`).
    Terminated,
    /// This run handed over to a new run of the same id (`continue_as_new`).
    ContinuedAsNew,
}

impl InstanceStatus {
    /// The status's number in stores and indexes: 0 running, 1 completed, 2 failed, 3
    /// terminated, 4 continued as new (`docs/EVENT_FORMAT.md`).
    pub fn code(self) -> u8 {
        match self {
            InstanceStatus::Running => 0,
            InstanceStatus::Completed => 1,
            InstanceStatus::Failed => 2,
            InstanceStatus::Terminated => 3,
            InstanceStatus::ContinuedAsNew => 4,
        }
    }

    /// Every status, in the order of their codes.
    pub const ALL: [InstanceStatus; 5] = [
        InstanceStatus::Running,
        InstanceStatus::Completed,
        InstanceStatus::Failed,
        InstanceStatus::Terminated,
        InstanceStatus::ContinuedAsNew,
    ];

    /// The status numbered `code` ([`InstanceStatus::code`]).
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.code() == code)
    }

    /// Whether the instance has finished.
    pub fn is_finished(self) -> bool {
        !matches!(self, InstanceStatus::Running)
    }

    /// The status an event ends a run with, if it is a terminal event.
    pub fn ended_by(kind: &EventKind) -> Option<Self> {
        match kind {
            EventKind::WorkflowCompleted { .. } => Some(Self::Completed),
            EventKind::WorkflowFailed { .. } => Some(Self::Failed),
            EventKind::WorkflowTerminated { .. } => Some(Self::Terminated),
            EventKind::WorkflowContinuedAsNew { .. } => Some(Self::ContinuedAsNew),
            _ => None,
        }
    }
}

/// The small per-run row a journal keeps beside the log: head of the chain, status,
/// parent, suspension hint. It is an index: everything in it can be rebuilt from the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRow {
    /// Internal key (UUIDv7 as `u128`).
    pub key: u128,
    /// User-chosen id.
    pub id: String,
    /// Registered workflow type.
    pub workflow_type: String,
    /// Current status.
    pub status: InstanceStatus,
    /// Commit time of the start event (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Commit time of the latest event.
    pub updated_at_ms: u64,
    /// Log position of the latest event.
    pub head_lsn: u64,
    /// Sequence number the next event gets (= number of events).
    pub next_seq: u64,
    /// Hash of the latest event.
    pub head_hash: EventHash,
    /// The instance that started this one as a child, if any.
    pub parent: Option<u128>,
    /// Set while the instance is evicted waiting; cleared by its next event.
    pub suspended: Option<Suspension>,
}

/// Why a running instance needs no replay when the host starts: it was evicted while
/// waiting, and nothing has happened to it since. A hint only: an instance with no
/// hint is simply replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// When its earliest timer or wait deadline is due (ms since the Unix epoch); `None`
    /// if it waits only for a signal, a cancellation or a child.
    pub wake_at_ms: Option<u64>,
}

/// Why an instance was parked, as a journal keeps it (derived from its last
/// `WorkflowParked` event; cleared by its next event or its end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedRow {
    /// The error's stable code.
    pub code: String,
    /// The error's message.
    pub reason: String,
    /// When it was parked (the commit time of its `WorkflowParked` event).
    pub at_ms: u64,
}

/// The search attributes of one instance, by name.
pub type Attributes = BTreeMap<String, AttrValue>;

/// One event as a journal stores it: its log position and its envelope bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// Its position in the journal's log (an LSN for redb).
    pub lsn: u64,
    /// The envelope, byte for byte as stored ([`EventRecord::encode`]).
    pub envelope: Vec<u8>,
}

/// A run's row and its events, read from one snapshot, not yet verified.
#[derive(Clone, Debug)]
pub struct RawHistory {
    /// The run's row as of the snapshot.
    pub row: InstanceRow,
    /// Its events, oldest first.
    pub events: Vec<RawEvent>,
}

/// One event read back, with its position and verified hash.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    /// Its LSN.
    pub lsn: u64,
    /// SHA-256 of its envelope.
    pub hash: EventHash,
    /// The decoded record.
    pub record: EventRecord,
}

/// Answer to [`Journal::start`].
#[derive(Clone, Debug)]
pub struct Started {
    /// Internal key of the instance.
    pub key: u128,
    /// `false` when the id already existed and nothing was written.
    pub created: bool,
    /// The instance's row after the commit.
    pub row: InstanceRow,
}

/// What [`Journal::append_queued`] returns: resolves once the queued event is durable.
pub type AppendTicket =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Appended>> + Send + 'static>>;

/// Answer to an append: where the event landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence number in the instance's history.
    pub seq: u64,
}

/// The condition an append is made under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Wherever the history ends when the append commits: for the run's owner, whose
    /// ownership the journal checks, and for messages from outside (signals,
    /// cancellations), which are ordered by the journal.
    End,
    /// Only if the history then has exactly this many events; otherwise
    /// [`Error::Conflict`] and nothing is written.
    Seq(u64),
}

/// What a run that continues as new hands to the next run.
#[derive(Clone, Debug)]
pub struct Carried {
    /// Events the run's history had when it decided; the hand-over is refused if more
    /// landed since (see [`Journal::continue_as_new`]).
    pub expected_next_seq: u64,
    /// Signals received and not delivered, oldest first.
    pub signals: Vec<CarriedSignal>,
    /// A cancellation requested and not yet delivered.
    pub cancel: Option<String>,
    /// The handing-over run's position in its chain (1 for an instance's first run).
    pub run: u32,
}

/// What a commit tells the host about a run it ended (for its metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEnded {
    /// The run's workflow type.
    pub workflow_type: String,
    /// When the run started (its start commit), ms since the Unix epoch.
    pub started_at_ms: u64,
    /// When it ended (this commit).
    pub ended_at_ms: u64,
}

/// A signal no step of a run took, carried to its next run with what the sender gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CarriedSignal {
    /// Its name.
    pub name: String,
    /// Its body.
    pub payload: Payload,
    /// Its dedupe key, if it was sent with one (an update's request always is).
    pub key: Option<String>,
    /// Who sent it, if the sender named an actor.
    pub actor: Option<Actor>,
}

/// What one commit made durable and the host must reflect in memory, in commit order.
///
/// A journal hands the list to its [`CommitListener`] after the commit returns and before
/// it answers any request, so what is durable reaches memory whether or not the caller
/// that asked for it is still waiting (its future may have been dropped).
#[derive(Clone, Debug)]
pub enum Committed {
    /// An event landed in `key`'s history at `seq`. `kind` is given for the events a host
    /// acts on (see [`reported`]) and `None` for the steps a run records itself. `parent`
    /// is the instance's parent.
    Event {
        /// The run the event belongs to.
        key: u128,
        /// Its sequence number.
        seq: u64,
        /// The run's parent.
        parent: Option<u128>,
        /// The event, when the host acts on it.
        kind: Option<EventKind>,
        /// Who caused it, for the events the host acts on.
        actor: Option<Actor>,
        /// For an event that ends the run: its type and when it started and ended.
        ended: Option<RunEnded>,
    },
    /// A notification was added to the outbox (derived from an event of the commit).
    Outbox,
    /// Schedule `id` was stored (`Some`) or deleted (`None`).
    Schedule {
        /// The schedule's id.
        id: String,
        /// Its new row.
        row: Option<ScheduleRow>,
    },
}

/// The events a host acts on when they commit (a start, a hand-over, a parking, a signal,
/// a cancellation request, a task's decision, an end); the others only move the history's length.
pub fn reported(kind: &EventKind) -> Option<EventKind> {
    match kind {
        EventKind::WorkflowStarted { .. }
        | EventKind::RunContinued { .. }
        | EventKind::WorkflowParked { .. }
        | EventKind::SignalReceived { .. }
        | EventKind::KeyedSignalReceived { .. }
        | EventKind::CancelRequested { .. }
        | EventKind::TaskCompleted { .. }
        | EventKind::UpdateAnswered { .. } => Some(kind.clone()),
        // Ends carry the result, which the host publishes to waiters.
        _ if kind.is_terminal() => Some(kind.clone()),
        _ => None,
    }
}

/// A change in which runs this host drives, told by a store shared by several hosts
/// ([`Ownership::Leased`]) to its listener, in order with its commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handover {
    /// This host now drives these unfinished runs, with their suspension hints: it took
    /// their part of the store over (from a host that stopped or lapsed), or the store
    /// names them again as a safety net. Resume those not already resident, as at start.
    Adopted(Vec<(u128, Option<Suspension>)>),
    /// This host no longer drives some runs (another host took them over): stop every
    /// resident run for which [`Journal::owns`] is now `false`; its appends would be
    /// refused.
    Lost,
}

/// Receives every commit's effects before the replies go out: `batch` is the commit's
/// number ([`Journal::commits`] once it is counted). It must not call back into the
/// journal and should only hand the effects on: the next commit waits for it.
pub trait CommitListener: Send + Sync {
    /// Called once per commit, in commit order.
    fn committed(&self, batch: u64, effects: Vec<Committed>);

    /// Called once per commit, before [`CommitListener::committed`], with the time the
    /// store took to make it durable (for the host's metrics).
    fn commit_took(&self, took: std::time::Duration) {
        let _ = took;
    }

    /// Called when this host starts or stops driving some runs (see [`Handover`]). The
    /// default ignores it, for a host that owns every run.
    fn handover(&self, change: Handover) {
        let _ = change;
    }

    /// Called once when the store fails for good: a commit failed, and it refuses every
    /// write until it is reopened. The host answers whoever waits on a run with `err`,
    /// since no run can record anything more. The default ignores it, for a store whose
    /// failures pass.
    fn failed(&self, err: &Error) {
        let _ = err;
    }
}

/// Milliseconds since the Unix epoch on the host's clock: the time a journal records in
/// each event (`recorded_at_ms`) and row.
pub type TimeSource = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What the host gives a journal once, before its first request.
#[derive(Clone)]
pub struct Attachment {
    /// Receives every commit's effects.
    pub listener: Arc<dyn CommitListener>,
    /// The host's clock.
    pub now_ms: TimeSource,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment").finish_non_exhaustive()
    }
}

/// How a journal decides which host may write a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// This host holds the whole store exclusively (a file lock): every run is its own
    /// for as long as the journal is open. The embedded redb journal.
    Exclusive,
    /// Runs are leased to hosts for a while and every append is fenced by the lease's
    /// epoch (a store shared by several hosts).
    Leased {
        /// How long a lease lasts without renewal, in ms.
        ttl_ms: u64,
    },
}

/// How this host stands among the hosts sharing a store ([`Journal::membership`]), for
/// monitoring: what it holds now and what happened to its leases since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// This host process's identity (fresh per open).
    pub host: u128,
    /// Shards the store's runs are spread over.
    pub shards: u32,
    /// Shards this host holds a lease on now (draining ones included).
    pub held: u32,
    /// Of those, shards being handed over to a host that joined.
    pub draining: u32,
    /// Shards claimed that nobody held (a fresh store, or given back by another host).
    pub claimed_free: u64,
    /// Shards taken over from a host whose lease expired (it died, or was cut off).
    pub taken_over: u64,
    /// Shards given back to make room for a host that joined.
    pub released: u64,
    /// Shards lost: taken by another host while this one counted them as its own (its
    /// lease lapsed: a long pause, the store out of reach).
    pub lost: u64,
    /// Heartbeats that failed (each one a lease renewal that did not happen).
    pub heartbeat_failures: u64,
    /// How far the database's clock is ahead of this host's, in ms (negative: behind),
    /// as measured at the last heartbeat.
    pub clock_offset_ms: i64,
}

/// Instances matching all of the given conditions, oldest first (by start time, then
/// key), one page at a time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceQuery {
    /// Only this workflow type.
    pub workflow_type: Option<String>,
    /// Only runs whose stored status is one of these (any if empty).
    pub statuses: Vec<InstanceStatus>,
    /// Only runs started at or after this time (ms since the Unix epoch).
    pub created_from_ms: Option<u64>,
    /// Only runs started before this time (ms since the Unix epoch).
    pub created_until_ms: Option<u64>,
    /// Only runs whose attributes hold all of these values.
    pub attributes: Vec<(String, AttrValue)>,
    /// Continue after this cursor (from [`InstancePage::next`]).
    pub after: Option<Cursor>,
    /// At most this many rows (a journal may return fewer; 0 means its default page).
    pub limit: usize,
}

/// Where a page ended: the start time and key of its last row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// Start time of the last row returned.
    pub created_at_ms: u64,
    /// Its key.
    pub key: u128,
}

impl Cursor {
    /// The cursor just after `row`.
    pub fn after(row: &InstanceRow) -> Self {
        Self {
            created_at_ms: row.created_at_ms,
            key: row.key,
        }
    }
}

/// One page of an [`InstanceQuery`].
#[derive(Clone, Debug, Default)]
pub struct InstancePage {
    /// Matching rows, oldest first.
    pub rows: Vec<InstanceRow>,
    /// Where to continue, or `None` when there is nothing more.
    pub next: Option<Cursor>,
}

/// The largest page a query returns, whatever it asks for.
pub const PAGE_ROWS_MAX: usize = 1000;

/// Width of the buckets of [`Tallies::activity`].
pub const TALLY_BUCKET_MS: u64 = 5 * 60 * 1000;

/// Counts a journal keeps up to date in the commits that change them, so that an
/// overview of a large store reads a few rows instead of every run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tallies {
    /// Runs by workflow type and stored status (a parked run counts as running here).
    pub by_status: BTreeMap<(String, InstanceStatus), u64>,
    /// Runs started and ended per workflow type and [`TALLY_BUCKET_MS`] bucket, from the
    /// bucket asked for on; buckets where nothing happened are left out.
    pub activity: Vec<ActivityBucket>,
}

/// What happened to runs of one workflow type in one bucket of [`TALLY_BUCKET_MS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActivityBucket {
    /// The workflow type.
    pub workflow_type: String,
    /// Start of the bucket, ms since the Unix epoch (a multiple of [`TALLY_BUCKET_MS`]).
    pub at_ms: u64,
    /// Runs started in it.
    pub started: u64,
    /// Runs that ended in it, by how they ended.
    pub ended: BTreeMap<InstanceStatus, u64>,
}

/// The start of the [`TALLY_BUCKET_MS`] bucket holding `at_ms`.
pub fn tally_bucket(at_ms: u64) -> u64 {
    at_ms - at_ms % TALLY_BUCKET_MS
}

/// Open human tasks in some inboxes, oldest first (by creation time, run, step), one page
/// at a time. Answered from the open-task index, never by reading histories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskQuery {
    /// The inboxes to merge (a task in several is listed once); empty means every open
    /// task ([`Party::All`]). An actor's inbox is [`Party::of`].
    pub parties: Vec<Party>,
    /// Only tasks of this workflow type.
    pub workflow_type: Option<String>,
    /// Only tasks of this kind (`"underwrite"`).
    pub name: Option<String>,
    /// Only tasks due at or before this time (overdue ones, given now).
    pub due_before_ms: Option<u64>,
    /// Continue after this cursor (from [`TaskPage::next`]).
    pub after: Option<TaskCursor>,
    /// At most this many rows (0 means the journal's default page).
    pub limit: usize,
}

impl TaskQuery {
    /// The inbox of `actor`: the tasks they hold and those they may claim, by name or role.
    pub fn for_actor(actor: &crate::task::Actor) -> Self {
        Self {
            parties: Party::of(actor),
            ..Self::default()
        }
    }
}

/// Where a page of tasks ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskCursor {
    /// Creation time of the last task returned.
    pub created_at_ms: u64,
    /// Its run.
    pub key: u128,
    /// Its step.
    pub step: u32,
}

impl TaskCursor {
    /// The cursor just after `row`.
    pub fn after(row: &TaskRow) -> Self {
        Self {
            created_at_ms: row.created_at_ms,
            key: row.key,
            step: row.step,
        }
    }
}

/// One page of a [`TaskQuery`].
#[derive(Clone, Debug, Default)]
pub struct TaskPage {
    /// Matching tasks, oldest first.
    pub rows: Vec<TaskRow>,
    /// Where to continue, or `None` when there is nothing more.
    pub next: Option<TaskCursor>,
}

/// Durable storage of histories, at the height of journal operations.
///
/// Every write is atomic and durable when its future returns `Ok`; its effects reach the
/// [`CommitListener`] before that, in commit order. Reads see every write whose future
/// has returned.
///
/// # Cancel safety
/// Dropping a write's future never undoes the write: once queued it commits or fails as
/// a whole, and its effects reach the listener either way.
#[async_trait::async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Gives the journal its listener and clock. Called once, before any write.
    fn attach(&self, attachment: Attachment);

    /// How runs are owned (see [`Ownership`]).
    fn ownership(&self) -> Ownership;

    /// Whether this host drives run `key` now: always for [`Ownership::Exclusive`]; for a
    /// shared store, while it holds the run's lease. A run this host does not own is
    /// driven elsewhere: its effects here only reach waiters, and the owner hears of them
    /// through the store.
    fn owns(&self, key: u128) -> bool {
        let _ = key;
        true
    }

    /// Whether this host is handing run `key` over to another host now (a shared store
    /// giving a newcomer its share): the step in flight may finish, and the run stops
    /// before it starts an activity attempt, which the next owner runs. Not the same as
    /// `!owns`: a host unsure of its lease for a moment (a late heartbeat) goes on, as
    /// the fence refuses its appends if the lease was really lost.
    fn handing_over(&self, key: u128) -> bool {
        let _ = key;
        false
    }

    /// How this host stands among the hosts sharing the store: `None` for an
    /// [`Ownership::Exclusive`] journal, which shares nothing.
    fn membership(&self) -> Option<Membership> {
        None
    }

    /// Shared value `name` and its version (0: never set), kept in the store for every
    /// host sharing it (the dashboard's saved views); `Ok(None)` from a journal that keeps
    /// no such values (the store of one host, which keeps them itself).
    ///
    /// # Errors
    /// Storage errors.
    async fn shared_value(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>> {
        let _ = name;
        Ok(None)
    }

    /// Sets shared value `name` to `value` if it is still at `version` (as
    /// [`Journal::shared_value`] read it); `false`, with nothing written, if another host
    /// changed it meanwhile.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] from a journal that keeps no shared values; storage
    /// errors.
    ///
    /// # Durability
    /// On `Ok(true)` the value is committed.
    ///
    /// # Cancel safety
    /// Dropped before it resolves, the value was written whole or not at all;
    /// [`Journal::shared_value`] says which.
    async fn put_shared_value(&self, name: &str, value: Vec<u8>, version: u64) -> Result<bool> {
        let _ = (value, version);
        Err(Error::InvalidArgument(format!(
            "this journal keeps no shared values (`{name}`): its host keeps them itself"
        )))
    }

    /// Starts instance `id` with a `WorkflowStarted` event recording `actor`, or finds the
    /// existing one (`created == false`, nothing written): atomic and idempotent by id.
    ///
    /// # Errors
    /// Storage errors; [`Error::PayloadTooLarge`] for an input over the event limit.
    async fn start_by(
        &self,
        id: String,
        workflow_type: String,
        input: Payload,
        parent: Option<u128>,
        actor: Option<Actor>,
    ) -> Result<Started>;

    /// [`Journal::start_by`] with no actor (the hosting program, or a parent run).
    ///
    /// # Errors
    /// As [`Journal::start_by`].
    async fn start(
        &self,
        id: String,
        workflow_type: String,
        input: Payload,
        parent: Option<u128>,
    ) -> Result<Started> {
        self.start_by(id, workflow_type, input, parent, None).await
    }

    /// Appends one event to run `key` under `expect`, recording `actor` as its cause: a
    /// **message from outside** the run (a signal, a cancellation, a task's decision, a
    /// document). A store shared by several hosts takes it from any host and orders it
    /// with the run's own events; it needs no ownership of the run. Under
    /// [`Expect::End`], a store may give the event to the run's successor when the run
    /// continued as new in the same commit (as a caller would on the refusal: the
    /// successor is the run the id names by then); the event's effect names the run
    /// that got it.
    ///
    /// # Errors
    /// [`Error::InstanceFinished`] if the run has ended; [`Error::Conflict`] if `expect`
    /// does not hold; encoding and storage errors. Nothing is written on error.
    async fn append_by(
        &self,
        key: u128,
        kind: EventKind,
        expect: Expect,
        actor: Option<Actor>,
    ) -> Result<Appended>;

    /// Appends one of the run's **own** events, by the host that drives it. A store
    /// shared by several hosts ([`Ownership::Leased`]) fences it with this host's
    /// ownership of the run, checked in the same commit. The default is
    /// [`Journal::append_by`] with no actor, for a store whose host owns every run.
    ///
    /// # Errors
    /// As [`Journal::append_by`]; [`Error::LeaseLost`] when another host has taken the
    /// run over (the caller must stop driving it).
    async fn append(&self, key: u128, kind: EventKind, expect: Expect) -> Result<Appended> {
        self.append_by(key, kind, expect, None).await
    }

    /// Queues one of the run's own events at the end of run `key` and returns at once
    /// with a ticket that resolves as [`Journal::append`] would: once the event is
    /// durable, or with the error that refused it. The event is ordered before anything
    /// the run appends after this returns, so a later append that succeeds means this
    /// one is durable; and once such an event is refused, the store refuses every later
    /// event of the run until it is reopened. A run uses it for an activity's result
    /// when it goes on before the result is durable. Only a store whose
    /// [`Journal::queues_appends`] is true queues; the default ticket refuses at once
    /// and writes nothing.
    ///
    /// # Durability
    /// Nothing is durable until the ticket resolves `Ok`. Dropping the ticket does not
    /// withdraw the event.
    fn append_queued(&self, key: u128, kind: EventKind) -> AppendTicket {
        let _ = (key, kind);
        Box::pin(std::future::ready(Err(Error::Storage(
            StorageFailure::new("this store does not queue appends"),
        ))))
    }

    /// Whether [`Journal::append_queued`] queues (the default: no).
    fn queues_appends(&self) -> bool {
        false
    }

    /// Appends `first` and then `then`, both the run's own events, as
    /// [`Journal::append`] would one after the other: `then` is refused if `first` is.
    /// A store may commit both at once (a run's last activity result and its end).
    /// Returns where `then` landed.
    ///
    /// # Errors
    /// As [`Journal::append`], for either event. Nothing of `then` is written on error;
    /// `first` may be, if only `then` was refused.
    async fn append_after(&self, key: u128, first: EventKind, then: EventKind) -> Result<Appended> {
        self.append(key, first, Expect::End).await?;
        self.append(key, then, Expect::End).await
    }

    /// Queues one of the run's own events at the end of run `key` without waiting: for
    /// code that cannot wait (a `Drop`). Committed in order with the run's other appends
    /// and fenced like [`Journal::append`]; a refusal is logged.
    fn append_detached(&self, key: u128, kind: EventKind);

    /// As [`Journal::append_detached`], sent before this returns, with a ticket that
    /// resolves once the event is durable (or with the error that refused it), so that
    /// what the run does next can wait for it. A run uses it for a step it drops (its
    /// abandonment). The default is [`Journal::append_queued`] where the store queues;
    /// a store that does not must provide it.
    ///
    /// # Durability
    /// Nothing is durable until the ticket resolves `Ok`. Dropping the ticket does not
    /// withdraw the event.
    fn append_sent(&self, key: u128, kind: EventKind) -> AppendTicket {
        if self.queues_appends() {
            return self.append_queued(key, kind);
        }
        let _ = (key, kind);
        Box::pin(std::future::ready(Err(Error::Storage(
            StorageFailure::new("this store cannot send an append it does not wait for"),
        ))))
    }

    /// Marks run `key` evicted while waiting (the hint of [`Suspension`]) unless its
    /// history no longer has `expected_next_seq` events, or a child of it ended since its
    /// own last event. Returns whether it was marked.
    ///
    /// # Errors
    /// Storage errors.
    async fn suspend(
        &self,
        key: u128,
        expected_next_seq: u64,
        wake_at_ms: Option<u64>,
    ) -> Result<bool>;

    /// Ends run `key` with `WorkflowContinuedAsNew` and starts the next run of its id
    /// (`RunContinued`, the carried signals and cancellation) in the same commit, unless
    /// the history grew past `carried.expected_next_seq`: then `None` and nothing written.
    ///
    /// # Errors
    /// [`Error::InstanceFinished`], encoding and storage errors.
    async fn continue_as_new(
        &self,
        key: u128,
        input: Payload,
        carried: Carried,
    ) -> Result<Option<u128>>;

    /// Stores (`Some`) or deletes (`None`) schedule `id`; with `only_if`, only while the
    /// stored row is that one. Returns whether anything changed.
    ///
    /// # Errors
    /// Storage errors.
    async fn schedule(
        &self,
        id: String,
        row: Option<ScheduleRow>,
        only_if: Option<ScheduleRow>,
    ) -> Result<bool>;

    /// Number of commits so far (the `batch` numbers given to the listener).
    fn commits(&self) -> u64;

    /// Internal key of the current run of user id `id`.
    ///
    /// # Errors
    /// Storage errors.
    async fn key_of(&self, id: &str) -> Result<Option<u128>>;

    /// The row of run `key`.
    ///
    /// # Errors
    /// Storage errors; [`Error::Corrupt`] for a damaged row.
    async fn instance(&self, key: u128) -> Result<Option<InstanceRow>>;

    /// Run `key`'s row and raw events from one snapshot; check them with
    /// [`verify_history`].
    ///
    /// # Errors
    /// Storage errors; [`Error::Corrupt`] when the events cannot be found.
    async fn history(&self, key: u128) -> Result<Option<RawHistory>>;

    /// The envelope stored at log position `lsn` (a run's head, to read its result
    /// without its whole history); the caller checks it against the row's head hash.
    ///
    /// # Errors
    /// Storage errors.
    async fn envelope(&self, lsn: u64) -> Result<Option<Vec<u8>>>;

    /// The search attributes of run `key` (empty if it set none).
    ///
    /// # Errors
    /// Storage errors.
    async fn attributes(&self, key: u128) -> Result<Attributes>;

    /// Every unfinished run with its suspension hint, without reading finished ones: the
    /// host's start-up scan.
    ///
    /// # Errors
    /// Storage errors.
    async fn running(&self) -> Result<Vec<(u128, Option<Suspension>)>>;

    /// Runs matching `query`, from indexes (no scan of unrelated runs).
    ///
    /// # Errors
    /// Storage errors.
    async fn query(&self, query: &InstanceQuery) -> Result<InstancePage>;

    /// Every stored schedule, by id.
    ///
    /// # Errors
    /// Storage errors.
    async fn schedules(&self) -> Result<Vec<(String, ScheduleRow)>>;

    /// The parked runs and why, by key.
    ///
    /// # Errors
    /// Storage errors.
    async fn parked(&self) -> Result<Vec<(u128, ParkedRow)>>;

    /// The counts this journal keeps as it commits ([`Tallies`]), with activity from the
    /// bucket holding `activity_from_ms` on; `None` when it keeps none (the caller then
    /// counts from [`Journal::query`]).
    ///
    /// # Errors
    /// Storage errors.
    async fn tallies(&self, activity_from_ms: u64) -> Result<Option<Tallies>> {
        let _ = activity_from_ms;
        Ok(None)
    }

    /// Open tasks matching `query`, from the open-task index (kept in the same commit as
    /// the task's events; no history is read).
    ///
    /// # Errors
    /// Storage errors.
    async fn tasks(&self, query: &TaskQuery) -> Result<TaskPage>;

    /// The index row of open task `step` of run `key`, if it is open.
    ///
    /// # Errors
    /// Storage errors.
    async fn task(&self, key: u128, step: u32) -> Result<Option<TaskRow>>;

    /// The notifications whose next delivery attempt is due at `now_ms` (the most
    /// overdue first, at most `limit`), and when the next one after them is due.
    ///
    /// # Errors
    /// Storage errors.
    async fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<(Vec<OutboxRow>, Option<u64>)>;

    /// As [`Journal::outbox_due`], for the host about to deliver what it returns: a store
    /// shared by several hosts holds each returned notification for this host for
    /// `hold_ms` (another host's claim skips it until the attempt is recorded or the
    /// hold lapses), so a notification is not delivered twice because the run it belongs
    /// to changed hands meanwhile. A store with one host returns the due rows.
    ///
    /// # Errors
    /// Storage errors.
    ///
    /// # Cancel safety
    /// Dropped, what it claimed is due again when the hold lapses: delayed, never lost.
    async fn outbox_claim(
        &self,
        now_ms: u64,
        limit: usize,
        hold_ms: u64,
    ) -> Result<(Vec<OutboxRow>, Option<u64>)> {
        let _ = hold_ms;
        self.outbox_due(now_ms, limit).await
    }

    /// Records a delivery attempt of notification `id` and where its delivery stands
    /// after it, durably.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an id the outbox does not hold; storage errors.
    async fn outbox_attempted(
        &self,
        id: u64,
        attempt: DeliveryAttempt,
        delivery: Delivery,
    ) -> Result<()>;

    /// The outbox in id order (the order the events were recorded), after `after`, at
    /// most `limit` rows: every notification with every attempt made to deliver it.
    ///
    /// # Errors
    /// Storage errors.
    async fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<OutboxRow>>;

    /// Appends `DocumentAttached { document }` to run `key` under `expect`, recording
    /// `actor`, and stores `bytes` (whose SHA-256 `document` names) in the same commit;
    /// content already stored is kept once.
    ///
    /// # Errors
    /// As [`Journal::append_by`]; [`Error::InvalidArgument`] if `bytes` do not hash to
    /// `document.sha256`. Nothing is written on error.
    async fn attach_document(
        &self,
        key: u128,
        document: crate::document::DocumentVersion,
        bytes: Vec<u8>,
        expect: Expect,
        actor: Option<Actor>,
    ) -> Result<Appended>;

    /// The stored content with SHA-256 `sha256`, as stored (the caller checks the hash).
    ///
    /// # Errors
    /// Storage errors.
    async fn document_bytes(&self, sha256: [u8; 32]) -> Result<Option<Vec<u8>>>;

    /// Commits what is queued, then refuses every later call with [`Error::ShutDown`] and
    /// releases the storage. May block while the last commit finishes.
    fn close(&self);

    /// After [`Journal::close`], waits until the journal has finished: what was queued is
    /// committed and what it held for this host (a shared store's leases) is given back,
    /// so another host can take over at once. The default returns at once, for a journal
    /// whose `close` does all of it.
    async fn closed(&self) {}
}

fn chain_error(row: &InstanceRow, event: Option<(u64, u64)>, message: &str) -> Error {
    let location = match event {
        Some((seq, lsn)) => format!("history of instance `{}`, event #{seq} (LSN {lsn})", row.id),
        None => format!("history of instance `{}`", row.id),
    };
    Error::Corrupt {
        location,
        message: message.to_owned(),
    }
}

/// Decodes a raw history and checks it is exactly the chain its row points at.
///
/// # Errors
/// [`Error::Corrupt`] naming the first event that does not decode or does not chain.
pub fn verify_history(raw: RawHistory) -> Result<(InstanceRow, Vec<StoredEvent>)> {
    let RawHistory { row, events } = raw;
    let mut out = Vec::with_capacity(events.len());
    for (index, RawEvent { lsn, envelope }) in events.into_iter().enumerate() {
        let record = EventRecord::decode(&envelope).map_err(|err| {
            chain_error(
                &row,
                Some((index as u64, lsn)),
                &format!("the event was altered: it does not decode ({err})"),
            )
        })?;
        out.push(StoredEvent {
            lsn,
            hash: hash_envelope(&envelope),
            record,
        });
    }
    verify_chain(&row, &out)?;
    Ok((row, out))
}

/// Checks that `events` are exactly the chain `row` points at: same instance, sequence
/// numbers 0..n, each `prev_hash` the hash of the event before, the last hash the row's.
///
/// Each event's hash covers its bytes, and the next event records that hash, so an edit
/// of event #k shows as a broken link at #k+1 and is reported as an alteration of #k
/// (the one thing it cannot tell apart: an edit of #k+1's own link field). An edit that
/// also rewrites every later link and the row's head hash is consistent again; only an
/// anchor kept elsewhere (`cairn anchors export`) catches that.
///
/// # Errors
/// [`Error::Corrupt`] naming the first event that is altered, missing or out of place.
pub fn verify_chain(row: &InstanceRow, events: &[StoredEvent]) -> Result<()> {
    // The row is an index; its identity must agree with the start event it points at.
    if let Some(first) = events.first() {
        let at = Some((0, first.lsn));
        match &first.record.kind {
            EventKind::WorkflowStarted {
                workflow_type, id, ..
            } => {
                if *id != row.id || *workflow_type != row.workflow_type {
                    return Err(chain_error(
                        row,
                        at,
                        &format!("the start event names `{id}` ({workflow_type}), the instance row `{}` ({})", row.id, row.workflow_type),
                    ));
                }
            }
            other => {
                return Err(chain_error(
                    row,
                    at,
                    &format!("the first event is {}, not WorkflowStarted", other.name()),
                ))
            }
        }
    }
    let mut prev_hash = GENESIS_HASH;
    let mut prev_lsn = None;
    for (index, event) in events.iter().enumerate() {
        let record = &event.record;
        let at = Some((index as u64, event.lsn));
        if record.instance != row.key {
            return Err(chain_error(
                row,
                at,
                "the event belongs to another instance",
            ));
        }
        if record.seq != index as u64 {
            let message = if record.seq > index as u64 {
                format!(
                    "event #{index} is missing: the event found in its place has sequence number {}",
                    record.seq
                )
            } else {
                format!(
                    "the event found here repeats sequence number {}",
                    record.seq
                )
            };
            return Err(chain_error(row, at, &message));
        }
        if record.prev_lsn != prev_lsn {
            return Err(chain_error(
                row,
                at,
                "the event's link to its predecessor (prev_lsn) does not name the event before it",
            ));
        }
        if record.prev_hash != prev_hash {
            let message = match index.checked_sub(1) {
                Some(before) => format!(
                    "event #{before} was altered: its hash no longer matches the one event #{index} recorded"
                ),
                None => "the first event was altered: it does not start from the genesis hash".to_owned(),
            };
            let at = match index.checked_sub(1).and_then(|before| events.get(before)) {
                Some(altered) => Some((altered.record.seq, altered.lsn)),
                None => at,
            };
            return Err(chain_error(row, at, &message));
        }
        prev_hash = event.hash;
        prev_lsn = Some(event.lsn);
    }
    if events.len() as u64 != row.next_seq {
        let message = if (events.len() as u64) < row.next_seq {
            format!(
                "events #{}..#{} are missing: {} found, the instance row counts {}",
                events.len(),
                row.next_seq.saturating_sub(1),
                events.len(),
                row.next_seq
            )
        } else {
            format!(
                "{} events found, the instance row counts {}",
                events.len(),
                row.next_seq
            )
        };
        return Err(chain_error(row, None, &message));
    }
    if prev_hash != row.head_hash {
        let at = events.last().map(|last| (last.record.seq, last.lsn));
        return Err(chain_error(
            row,
            at,
            "the last event was altered: its hash differs from the head hash in the instance row",
        ));
    }
    Ok(())
}
