//! [`PostgresJournal`]: the journal boundary on PostgreSQL for one host process among
//! several. A writer task gathers the host's operations into group commits; a lease task
//! sends heartbeats, keeps the host's shard leases and claims its fair share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use cairn_core::codec::Payload;
use cairn_core::document::DocumentVersion;
use cairn_core::error::{Error, Result};
use cairn_core::event::EventKind;
use cairn_core::journal::{
    Actor, AppendTicket, Appended, Attachment, Attributes, Carried, CommitListener, Committed,
    Delivery, DeliveryAttempt, Expect, Handover, InstancePage, InstanceQuery, InstanceRow, Journal,
    Membership, OutboxRow, Ownership, ParkedRow, RawHistory, RunEnded, Started, Suspension,
    Tallies, TaskPage, TaskQuery, TaskRow, TimeSource,
};
use cairn_core::schedule::ScheduleRow;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use crate::batch::{Answer, Op};
use crate::{shard_of, CommitFailure, Lease, PostgresStore, POOL_SIZE_DEFAULT};

/// Most operations one group commit takes; the rest wait for the next.
pub const BATCH_OPS_MAX: usize = 2048;

/// How a host process uses a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresOptions {
    /// Connections the host keeps at most.
    pub pool_size: usize,
    /// How long a shard lease lasts without a heartbeat. A host that dies holds its
    /// shards this long before another takes them; a host paused longer (a long GC
    /// pause, `SIGSTOP`) loses them, and its late appends are refused.
    pub lease_ttl: Duration,
    /// How often the host renews its leases and claims its share (a third of the lease
    /// by default, so two heartbeats may fail before a lease lapses).
    pub heartbeat_every: Duration,
    /// How often the host looks for wake-ups other hosts left for its runs, besides
    /// being nudged (`NOTIFY`) when they leave some: the longest a lost nudge delays a
    /// signal, a start or a child's end recorded by another host.
    pub poll_every: Duration,
    /// The host's own clock, which the journal measures against the database's at each
    /// heartbeat ([`PostgresJournal::clock_offset`]); `None`: the system clock.
    pub local_time: Option<TimeSource>,
    /// Whether a runtime on this journal keeps the database's time (the default): its
    /// clock corrected by the measured offset, so that hosts agree on when timers are due
    /// whatever their own clocks say. Off, the runtime keeps its configured clock as is:
    /// for tests on virtual time (a `VirtualClock` corrected to the database's clock
    /// would no longer skip), never for hosts whose clocks may differ.
    pub database_time: bool,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("pool_size", &self.pool_size)
            .field("lease_ttl", &self.lease_ttl)
            .field("heartbeat_every", &self.heartbeat_every)
            .field("poll_every", &self.poll_every)
            .field("database_time", &self.database_time)
            .finish_non_exhaustive()
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        let lease_ttl = Duration::from_secs(15);
        Self {
            pool_size: POOL_SIZE_DEFAULT,
            lease_ttl,
            heartbeat_every: lease_ttl / 3,
            poll_every: Duration::from_millis(500),
            local_time: None,
            database_time: true,
        }
    }
}

/// What the writer task is asked, in order.
enum Request {
    /// An operation to commit, and where its answer goes.
    Op {
        op: Box<Op>,
        reply: Option<oneshot::Sender<Result<Answer>>>,
    },
    /// Events other hosts recorded that this host must apply, and runs it now drives:
    /// handed to the listener in order with this host's own commits.
    Deliver {
        effects: Vec<Committed>,
        adopted: Vec<(u128, Option<Suspension>)>,
    },
    /// This host stopped driving some runs.
    Lost,
}

/// Most wake-ups applied in one round.
const WAKES_MAX: usize = 4096;

/// Heartbeats between two full reports of the runs this host drives (the safety net
/// that resumes a run whose driver stopped on a store failure).
const SAFETY_NET_EVERY: u32 = 6;

/// What the writer and lease tasks share with the handle.
struct Inner {
    /// This host process's identity: fresh per open.
    host: u128,
    ttl_ms: u64,
    /// The leases this host holds, by shard.
    leases: RwLock<HashMap<u32, Lease>>,
    /// Leases being handed over to a host that joined: still held (appends in flight
    /// land), but this host starts nothing on their runs; given back at the next
    /// heartbeat.
    draining: Mutex<HashMap<u32, Lease>>,
    /// The host's clock, and how far the database's is ahead of it (ms; negative when
    /// behind), measured at each heartbeat.
    local: TimeSource,
    offset_ms: Arc<std::sync::atomic::AtomicI64>,
    /// Until when they surely hold, on this process's monotonic clock: the start of the
    /// last heartbeat that renewed them plus their length. Past it (a long pause, a store
    /// out of reach) the host drives nothing until a heartbeat renews them; the database
    /// still decides (every append is fenced), this only spares work it would refuse.
    valid_until: Mutex<std::time::Instant>,
    listener: OnceLock<Arc<dyn CommitListener>>,
    now_ms: OnceLock<TimeSource>,
    commits: AtomicU64,
    /// Set when a commit's outcome could not be learnt: the host's memory may then
    /// disagree with the database, so every later write is refused until it reopens.
    failed: Mutex<Option<Error>>,
    closed: AtomicBool,
    /// Woken when the writer has drained its queue and the leases are given back.
    done: Notify,
    finished: AtomicBool,
    /// Set while a nudge to the other hosts is on its way (at most one at a time).
    nudging: AtomicBool,
    /// What happened to this host's leases since it opened ([`Membership`]).
    counts: LeaseCounts,
}

/// Counts behind [`Journal::membership`].
#[derive(Default)]
struct LeaseCounts {
    claimed_free: AtomicU64,
    taken_over: AtomicU64,
    released: AtomicU64,
    lost: AtomicU64,
    heartbeat_failures: AtomicU64,
}

impl Inner {
    fn now(&self) -> u64 {
        self.now_ms.get().map_or_else(system_ms, |now| now())
    }

    fn lease(&self, key: u128) -> Option<Lease> {
        self.leases
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&shard_of(key))
            .copied()
    }

    /// Whether the leases surely still hold ([`Inner::valid_until`]).
    fn current(&self) -> bool {
        std::time::Instant::now()
            < *self
                .valid_until
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
    }

    fn owned(&self) -> std::collections::HashSet<u32> {
        self.leases
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// The shards held and not being handed over: a commit leaves no wake-up for their
    /// runs (this host drives them), and only their wake-ups are this host's to apply.
    /// Those being handed over are the next owner's: their wake-ups wait for it.
    fn driving(&self) -> std::collections::HashSet<u32> {
        let draining = self
            .draining
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .keys()
            .copied()
            .collect::<std::collections::HashSet<u32>>();
        let mut held = self.owned();
        held.retain(|shard| !draining.contains(shard));
        held
    }

    fn shards(&self) -> Vec<u32> {
        let mut shards: Vec<u32> = self
            .leases
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .keys()
            .copied()
            .collect();
        shards.sort_unstable();
        shards
    }
}

fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The journal on a PostgreSQL database shared by several host processes.
///
/// Runs are owned per shard ([`crate::SHARDS`] of them): this host drives the runs of the
/// shards it holds a lease on, and every operation of a run's owner (its steps through
/// [`Journal::append`] and [`Journal::append_detached`], its eviction, its hand-over) is
/// fenced by the lease's epoch in the same transaction. Messages from outside
/// ([`Journal::append_by`]: signals, cancellations, task decisions, documents) and starts
/// are taken from any host and ordered by the database.
///
/// # Example
/// ```no_run
/// # async fn demo() -> cairn_core::Result<()> {
/// use cairn_postgres::PostgresJournal;
/// let journal = PostgresJournal::open("postgres://cairn:secret@10.0.0.5/orders").await?;
/// # Ok(()) }
/// ```
pub struct PostgresJournal {
    store: Arc<PostgresStore>,
    inner: Arc<Inner>,
    queue: Mutex<Option<mpsc::UnboundedSender<Request>>>,
    /// The lease and wake-up tasks, aborted at close.
    lease_task: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for PostgresJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJournal")
            .field("place", &self.store.place())
            .field("host", &Uuid::from_u128(self.inner.host))
            .finish_non_exhaustive()
    }
}

impl PostgresJournal {
    /// Opens the database at `url` with [`PostgresOptions::default`].
    ///
    /// # Errors
    /// As [`PostgresJournal::open_with`].
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, PostgresOptions::default()).await
    }

    /// Opens the database at `url` (migrating its schema), starts this host's writer and
    /// lease tasks under a fresh host identity, and claims the host's share of the shards
    /// before returning.
    ///
    /// # Errors
    /// As [`PostgresStore::open`]; storage errors of the first heartbeat.
    pub async fn open_with(url: &str, options: PostgresOptions) -> Result<Self> {
        let store = Arc::new(PostgresStore::open_with(url, options.pool_size).await?);
        let ttl_ms = u64::try_from(options.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let inner = Arc::new(Inner {
            host: Uuid::now_v7().as_u128(),
            ttl_ms,
            leases: RwLock::new(HashMap::new()),
            draining: Mutex::new(HashMap::new()),
            valid_until: Mutex::new(std::time::Instant::now()),
            local: options
                .local_time
                .clone()
                .unwrap_or_else(|| Arc::new(system_ms)),
            offset_ms: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            listener: OnceLock::new(),
            now_ms: OnceLock::new(),
            commits: AtomicU64::new(0),
            failed: Mutex::new(None),
            closed: AtomicBool::new(false),
            done: Notify::new(),
            finished: AtomicBool::new(false),
            nudging: AtomicBool::new(false),
            counts: LeaseCounts::default(),
        });
        refresh_leases(&store, &inner).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(store.clone(), inner.clone(), rx));
        let lease_task = tokio::spawn(lease_loop(
            store.clone(),
            inner.clone(),
            options.heartbeat_every.max(Duration::from_millis(10)),
            tx.downgrade(),
        ));
        let wake_task = tokio::spawn(wake_loop(
            store.clone(),
            inner.clone(),
            options.poll_every.max(Duration::from_millis(10)),
            tx.downgrade(),
        ));
        Ok(Self {
            store,
            inner,
            queue: Mutex::new(Some(tx)),
            lease_task: Mutex::new(vec![lease_task, wake_task]),
        })
    }

    /// The store underneath (leases, audit reads).
    pub fn store(&self) -> &Arc<PostgresStore> {
        &self.store
    }

    /// This host process's identity (fresh per open).
    pub fn host(&self) -> u128 {
        self.inner.host
    }

    /// How far the database's clock is ahead of this host's (ms; negative when behind),
    /// measured at each heartbeat: a runtime on this journal keeps its time with
    /// `cairn_runtime::clock::CorrectedClock`, so every host records and waits on the
    /// database's time (a timer set by one host fires on time on another, whatever their
    /// clocks say).
    pub fn clock_offset(&self) -> Arc<std::sync::atomic::AtomicI64> {
        self.inner.offset_ms.clone()
    }

    /// The shards this host holds a lease on, in order.
    pub fn shards(&self) -> Vec<u32> {
        self.inner.shards()
    }

    /// Closes the journal ([`Journal::close`]) and waits until what was queued is
    /// committed and the host's leases are given back, so another host (or this process
    /// reopening) can take its shards at once.
    pub async fn shutdown(&self) {
        self.close();
        self.closed().await;
    }

    async fn finished(&self) {
        loop {
            let notified = self.inner.done.notified();
            if self.inner.finished.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    async fn request(&self, op: Op) -> Result<Answer> {
        let (reply, answer) = oneshot::channel();
        self.submit(op, Some(reply))?;
        answer.await.map_err(|_| Error::ShutDown)?
    }

    /// An append of one of run `key`'s own events, fenced by this host's lease on it.
    fn owner_append(&self, key: u128, kind: EventKind, expect: Expect) -> Result<Op> {
        Ok(Op::Append {
            key,
            kind,
            expect,
            actor: None,
            fence: Some(self.owner_fence(key)?),
            document: None,
        })
    }

    fn submit(&self, op: Op, reply: Option<oneshot::Sender<Result<Answer>>>) -> Result<()> {
        if let Some(err) = self
            .inner
            .failed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
        {
            return Err(err);
        }
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match queue.as_ref() {
            Some(tx) => tx
                .send(Request::Op {
                    op: Box::new(op),
                    reply,
                })
                .map_err(|_| Error::ShutDown),
            None => Err(Error::ShutDown),
        }
    }

    /// The lease that fences an operation of run `key`'s owner: this host must hold
    /// the run's shard.
    fn owner_fence(&self, key: u128) -> Result<Lease> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::ShutDown);
        }
        self.inner.lease(key).ok_or_else(|| Error::LeaseLost {
            instance: format!("{key:032x}"),
            shard: shard_of(key),
            held: 0,
            current: 0,
        })
    }
}

fn unexpected(answer: Answer) -> Error {
    Error::Storage(cairn_core::error::StorageFailure::new(format!(
        "the writer answered {answer:?} to another kind of request (a bug: please report it)"
    )))
}

/// The group-commit loop: whatever is queued when a commit ends is the next batch. A
/// delivery or a hand-over ends the batch before it, so the listener hears everything in
/// queue order.
async fn write_loop(
    store: Arc<PostgresStore>,
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Request>,
) {
    let mut ops: Vec<Op> = Vec::new();
    let mut replies: Vec<Option<oneshot::Sender<Result<Answer>>>> = Vec::new();
    let mut pending: Option<Request> = None;
    loop {
        let first = match pending.take() {
            Some(request) => request,
            None => match rx.recv().await {
                Some(request) => request,
                None => break,
            },
        };
        match first {
            Request::Deliver { effects, adopted } => {
                deliver(&inner, effects, adopted);
                continue;
            }
            Request::Lost => {
                if let Some(listener) = inner.listener.get() {
                    listener.handover(Handover::Lost);
                }
                continue;
            }
            Request::Op { op, reply } => {
                ops.push(*op);
                replies.push(reply);
            }
        }
        while ops.len() < BATCH_OPS_MAX {
            match rx.try_recv() {
                Ok(Request::Op { op, reply }) => {
                    ops.push(*op);
                    replies.push(reply);
                }
                Ok(other) => {
                    pending = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(
            &store,
            &inner,
            std::mem::take(&mut ops),
            std::mem::take(&mut replies),
        )
        .await;
    }
    // The queue is closed and drained: give the shards back for the next host.
    let leases: Vec<Lease> = inner
        .leases
        .write()
        .unwrap_or_else(|poison| poison.into_inner())
        .drain()
        .map(|(_, lease)| lease)
        .collect();
    for lease in leases {
        if let Err(err) = store.release(lease).await {
            tracing::warn!(%err, shard = lease.shard, "could not give a shard back; it frees itself when its lease expires");
        }
    }
    if let Err(err) = store.leave(inner.host).await {
        tracing::debug!(%err, "could not remove the host's heartbeat row");
    }
    inner.finished.store(true, Ordering::SeqCst);
    inner.done.notify_waiters();
}

/// Hands events recorded by other hosts, and runs taken over, to the listener.
fn deliver(inner: &Inner, effects: Vec<Committed>, adopted: Vec<(u128, Option<Suspension>)>) {
    let Some(listener) = inner.listener.get() else {
        return;
    };
    if !adopted.is_empty() {
        listener.handover(Handover::Adopted(adopted));
    }
    if !effects.is_empty() {
        let number = inner.commits.fetch_add(1, Ordering::SeqCst) + 1;
        listener.committed(number, effects);
    }
}

async fn commit_batch(
    store: &Arc<PostgresStore>,
    inner: &Arc<Inner>,
    ops: Vec<Op>,
    replies: Vec<Option<oneshot::Sender<Result<Answer>>>>,
) {
    let failed = inner
        .failed
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone();
    if let Some(err) = failed {
        for reply in replies.into_iter().flatten() {
            drop(reply.send(Err(err.clone())));
        }
        return;
    }
    let began = std::time::Instant::now();
    let owned = inner.driving();
    match store.commit(&ops, inner.now(), Some(&owned)).await {
        Ok(outcome) => {
            if outcome.wrote {
                // Memory first, answers second: a caller that hears back (or one that
                // went away) finds the effects already applied.
                let number = inner.commits.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(listener) = inner.listener.get() {
                    listener.commit_took(began.elapsed());
                    listener.committed(number, outcome.effects);
                }
            }
            if outcome.woke_others && !inner.nudging.swap(true, Ordering::SeqCst) {
                let (store, inner) = (store.clone(), inner.clone());
                tokio::spawn(async move {
                    if let Err(err) = store.nudge().await {
                        tracing::debug!(%err, "could not nudge the other hosts; they poll");
                    }
                    inner.nudging.store(false, Ordering::SeqCst);
                });
            }
            for (reply, answer) in replies.into_iter().zip(outcome.answers) {
                if let Some(reply) = reply {
                    drop(reply.send(answer));
                } else if let Err(err) = answer {
                    tracing::warn!(%err, "a detached append was refused");
                }
            }
        }
        Err(CommitFailure { error, unknown }) => {
            if unknown {
                tracing::error!(%error, "a commit's outcome is unknown; this journal refuses further writes until reopened");
                *inner
                    .failed
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = Some(error.clone());
            } else {
                tracing::warn!(%error, "a batch was not written");
            }
            for reply in replies.into_iter().flatten() {
                drop(reply.send(Err(error.clone())));
            }
        }
    }
}

/// Renews this host's leases, gives back its surplus and claims its share; records
/// what it holds and returns the shards it gained and whether it lost any.
async fn refresh_leases(store: &PostgresStore, inner: &Inner) -> Result<(Vec<u32>, bool)> {
    let sent = std::time::Instant::now();
    let before = (inner.local)();
    let database = store.now_ms().await?;
    let after = (inner.local)();
    // The database read its clock about half-way through the round trip.
    let midpoint = i64::try_from(before / 2 + after / 2).unwrap_or(i64::MAX);
    inner.offset_ms.store(
        database.saturating_sub(midpoint),
        std::sync::atomic::Ordering::Relaxed,
    );
    let held = store.heartbeat(inner.host, inner.ttl_ms).await?;
    let before: std::collections::HashSet<u32> = inner.owned();
    let mut now: HashMap<u32, Lease> = held.into_iter().map(|lease| (lease.shard, lease)).collect();
    // A host that joined gets its share, handed over in two heartbeats: the surplus is
    // first drained (still leased, so the steps in flight on its runs are recorded, but
    // no new step starts: `owns` says no), and given back at the next heartbeat.
    let drained: Vec<Lease> = std::mem::take(
        &mut *inner
            .draining
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()),
    )
    .into_values()
    .collect();
    if !drained.is_empty() {
        // Not this host's from here on, before the database hears it: a commit that
        // still counted one of them as held would leave no wake-up for the next owner,
        // which may claim it the moment it is given back.
        let mut leases = inner
            .leases
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        for lease in &drained {
            leases.remove(&lease.shard);
        }
    }
    for lease in &drained {
        now.remove(&lease.shard);
        match store.release(*lease).await {
            Ok(true) => {
                inner.counts.released.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(%err, shard = lease.shard, "could not give a surplus shard back");
            }
        }
    }
    // Held before, not renewed now and not given back: another host took it.
    let taken = before
        .iter()
        .filter(|shard| !now.contains_key(shard) && !drained.iter().any(|d| d.shard == **shard))
        .count();
    inner.counts.lost.fetch_add(taken as u64, Ordering::Relaxed);
    let surplus = store.surplus(inner.host).await?;
    let claimed = store.claim_counted(inner.host, inner.ttl_ms).await?;
    let granted = claimed.leases.len() as u64;
    let taken_over = u64::from(claimed.taken_over);
    inner
        .counts
        .taken_over
        .fetch_add(taken_over, Ordering::Relaxed);
    inner
        .counts
        .claimed_free
        .fetch_add(granted.saturating_sub(taken_over), Ordering::Relaxed);
    now.extend(claimed.leases.into_iter().map(|lease| (lease.shard, lease)));
    let lost = !drained.is_empty() || taken > 0;
    let gained: Vec<u32> = now
        .keys()
        .copied()
        .filter(|shard| !before.contains(shard))
        .collect();
    *inner
        .draining
        .lock()
        .unwrap_or_else(|poison| poison.into_inner()) = surplus
        .into_iter()
        .filter(|lease| now.contains_key(&lease.shard))
        .map(|lease| (lease.shard, lease))
        .collect();
    *inner
        .leases
        .write()
        .unwrap_or_else(|poison| poison.into_inner()) = now;
    *inner
        .valid_until
        .lock()
        .unwrap_or_else(|poison| poison.into_inner()) = sent + Duration::from_millis(inner.ttl_ms);
    if lost {
        tracing::info!(
            held = inner.owned().len(),
            "this host gave up or lost shards"
        );
    }
    Ok((gained, lost))
}

async fn lease_loop(
    store: Arc<PostgresStore>,
    inner: Arc<Inner>,
    every: Duration,
    queue: mpsc::WeakUnboundedSender<Request>,
) {
    let mut beats = 0u32;
    loop {
        tokio::time::sleep(every).await;
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        beats = beats.wrapping_add(1);
        let (gained, lost) = match refresh_leases(&store, &inner).await {
            Ok(changed) => changed,
            Err(err) => {
                inner
                    .counts
                    .heartbeat_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%err, "heartbeat failed; the leases lapse unless a later one succeeds");
                continue;
            }
        };
        let Some(queue) = queue.upgrade() else {
            return;
        };
        if lost {
            let _ = queue.send(Request::Lost);
        }
        // The runs of shards taken over, and now and then all of this host's (the safety
        // net for a run whose driver stopped on a store failure).
        let fresh: std::collections::HashSet<u32> = gained.iter().copied().collect();
        let shards = if (beats / SAFETY_NET_EVERY) * SAFETY_NET_EVERY == beats {
            inner.shards()
        } else {
            gained
        };
        if shards.is_empty() {
            continue;
        }
        match store.running(Some(&shards)).await {
            Ok(adopted) if !adopted.is_empty() => {
                // The runs of shards just taken over are replayed, not trusted to be
                // asleep until their hint: an event recorded for one between this
                // listing and its adoption here finds no run to wake (the previous
                // owner had it, or its wake-up came first), and the replay reads the
                // history as it is by then.
                let adopted = adopted
                    .into_iter()
                    .map(|(key, hint)| {
                        let hint = if fresh.contains(&shard_of(key)) {
                            None
                        } else {
                            hint
                        };
                        (key, hint)
                    })
                    .collect();
                let _ = queue.send(Request::Deliver {
                    effects: Vec::new(),
                    adopted,
                });
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "could not list the runs of shards taken over"),
        }
    }
}

/// Applies the wake-ups other hosts leave for this host's runs: when nudged, and every
/// `every` in any case.
async fn wake_loop(
    store: Arc<PostgresStore>,
    inner: Arc<Inner>,
    every: Duration,
    queue: mpsc::WeakUnboundedSender<Request>,
) {
    let (nudges, mut nudged) = mpsc::unbounded_channel();
    let listening = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                if let Err(err) = store.listen(nudges.clone()).await {
                    tracing::debug!(%err, "not listening for nudges; polling only");
                }
                if nudges.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = nudged.recv() => {}
        }
        if inner.closed.load(Ordering::SeqCst) {
            break;
        }
        let mut driving: Vec<u32> = inner.driving().into_iter().collect();
        driving.sort_unstable();
        let (foreign, taken) = match store.wakes(&driving, WAKES_MAX).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(%err, "could not read wake-ups; trying again");
                continue;
            }
        };
        if foreign.is_empty() {
            continue;
        }
        let mut effects = Vec::new();
        let mut adopted = Vec::new();
        for event in foreign {
            let record = event.record;
            if matches!(record.kind, EventKind::WorkflowStarted { .. }) {
                // Started by another host: replayed from its history like a run taken over.
                adopted.push((record.instance, None));
                continue;
            }
            let report = cairn_core::journal::reported(&record.kind);
            let actor = report.as_ref().and(record.actor.clone());
            effects.push(Committed::Event {
                key: record.instance,
                seq: record.seq,
                parent: event.parent,
                kind: report,
                actor,
                // Counted in the metrics of the host that recorded it.
                ended: None::<RunEnded>,
            });
        }
        let Some(queue) = queue.upgrade() else {
            break;
        };
        let _ = queue.send(Request::Deliver { effects, adopted });
        drop(queue);
        if let Err(err) = store.clear_wakes(&taken).await {
            tracing::warn!(%err, "could not clear applied wake-ups; they are applied again");
        }
    }
    listening.abort();
}

#[async_trait::async_trait]
impl Journal for PostgresJournal {
    fn attach(&self, attachment: Attachment) {
        let _ = self.inner.now_ms.set(attachment.now_ms);
        let _ = self.inner.listener.set(attachment.listener);
    }

    fn ownership(&self) -> Ownership {
        Ownership::Leased {
            ttl_ms: self.inner.ttl_ms,
        }
    }

    fn membership(&self) -> Option<Membership> {
        let inner = &self.inner;
        let held = inner
            .leases
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .len();
        let draining = inner
            .draining
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .len();
        let counts = &inner.counts;
        Some(Membership {
            host: inner.host,
            shards: crate::SHARDS,
            held: u32::try_from(held).unwrap_or(u32::MAX),
            draining: u32::try_from(draining).unwrap_or(u32::MAX),
            claimed_free: counts.claimed_free.load(Ordering::Relaxed),
            taken_over: counts.taken_over.load(Ordering::Relaxed),
            released: counts.released.load(Ordering::Relaxed),
            lost: counts.lost.load(Ordering::Relaxed),
            heartbeat_failures: counts.heartbeat_failures.load(Ordering::Relaxed),
            clock_offset_ms: inner.offset_ms.load(Ordering::Relaxed),
        })
    }

    /// Held, not in doubt, and not being handed over: a run of a draining shard is the
    /// next owner's to wait on and to start.
    fn owns(&self, key: u128) -> bool {
        self.inner.lease(key).is_some() && self.inner.current() && !self.handing_over(key)
    }

    fn handing_over(&self, key: u128) -> bool {
        self.inner
            .draining
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains_key(&shard_of(key))
    }

    async fn start_by(
        &self,
        id: String,
        workflow_type: String,
        input: Payload,
        parent: Option<u128>,
        actor: Option<Actor>,
    ) -> Result<Started> {
        let op = Op::Start {
            id,
            workflow_type,
            input,
            parent,
            actor,
        };
        match self.request(op).await? {
            Answer::Started(started) => Ok(*started),
            other => Err(unexpected(other)),
        }
    }

    async fn append_by(
        &self,
        key: u128,
        kind: EventKind,
        expect: Expect,
        actor: Option<Actor>,
    ) -> Result<Appended> {
        let op = Op::Append {
            key,
            kind,
            expect,
            actor,
            fence: None,
            document: None,
        };
        match self.request(op).await? {
            Answer::Appended(appended) => Ok(appended),
            other => Err(unexpected(other)),
        }
    }

    /// The run's owner's append: fenced by this host's lease on the run's shard.
    async fn append(&self, key: u128, kind: EventKind, expect: Expect) -> Result<Appended> {
        let op = self.owner_append(key, kind, expect)?;
        match self.request(op).await? {
            Answer::Appended(appended) => Ok(appended),
            other => Err(unexpected(other)),
        }
    }

    fn append_sent(&self, key: u128, kind: EventKind) -> AppendTicket {
        let op = match self.owner_append(key, kind, Expect::End) {
            Ok(op) => op,
            Err(err) => return Box::pin(std::future::ready(Err(err))),
        };
        // Sent now, in order with the run's other appends; the ticket only waits.
        let (reply, answer) = oneshot::channel();
        if let Err(err) = self.submit(op, Some(reply)) {
            return Box::pin(std::future::ready(Err(err)));
        }
        Box::pin(async move {
            match answer.await.map_err(|_| Error::ShutDown)?? {
                Answer::Appended(appended) => Ok(appended),
                other => Err(unexpected(other)),
            }
        })
    }

    fn append_detached(&self, key: u128, kind: EventKind) {
        let op = match self.owner_append(key, kind, Expect::End) {
            Ok(op) => op,
            Err(err) => {
                tracing::warn!(%err, "a detached append of a run this host does not own was dropped");
                return;
            }
        };
        if self.submit(op, None).is_err() {
            tracing::debug!("journal closed; a detached append was dropped");
        }
    }

    async fn suspend(
        &self,
        key: u128,
        expected_next_seq: u64,
        wake_at_ms: Option<u64>,
    ) -> Result<bool> {
        let op = Op::Suspend {
            key,
            expected_next_seq,
            wake_at_ms,
            fence: Some(self.owner_fence(key)?),
        };
        match self.request(op).await? {
            Answer::Flag(marked) => Ok(marked),
            other => Err(unexpected(other)),
        }
    }

    async fn continue_as_new(
        &self,
        key: u128,
        input: Payload,
        carried: Carried,
    ) -> Result<Option<u128>> {
        let op = Op::ContinueAsNew {
            key,
            input,
            carried,
            fence: Some(self.owner_fence(key)?),
        };
        match self.request(op).await? {
            Answer::Next(next) => Ok(next),
            other => Err(unexpected(other)),
        }
    }

    async fn schedule(
        &self,
        id: String,
        row: Option<ScheduleRow>,
        only_if: Option<ScheduleRow>,
    ) -> Result<bool> {
        match self.request(Op::Schedule { id, row, only_if }).await? {
            Answer::Flag(changed) => Ok(changed),
            other => Err(unexpected(other)),
        }
    }

    fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::SeqCst)
    }

    async fn shared_value(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>> {
        // Kept: a value never set reads as version 0.
        Ok(Some(
            self.store.shared_value(name).await?.unwrap_or_default(),
        ))
    }

    async fn put_shared_value(&self, name: &str, value: Vec<u8>, version: u64) -> Result<bool> {
        self.store.put_shared_value(name, &value, version).await
    }

    async fn key_of(&self, id: &str) -> Result<Option<u128>> {
        self.store.key_of(id).await
    }

    async fn instance(&self, key: u128) -> Result<Option<InstanceRow>> {
        self.store.instance(key).await
    }

    async fn history(&self, key: u128) -> Result<Option<RawHistory>> {
        self.store.history(key).await
    }

    async fn envelope(&self, lsn: u64) -> Result<Option<Vec<u8>>> {
        self.store.envelope(lsn).await
    }

    async fn attributes(&self, key: u128) -> Result<Attributes> {
        self.store.attributes(key).await
    }

    /// The unfinished runs of the shards this host holds.
    async fn running(&self) -> Result<Vec<(u128, Option<Suspension>)>> {
        let shards = self.inner.shards();
        self.store.running(Some(&shards)).await
    }

    async fn query(&self, query: &InstanceQuery) -> Result<InstancePage> {
        self.store.query(query).await
    }

    async fn schedules(&self) -> Result<Vec<(String, ScheduleRow)>> {
        self.store.schedules().await
    }

    async fn parked(&self) -> Result<Vec<(u128, ParkedRow)>> {
        self.store.parked().await
    }

    async fn tallies(&self, activity_from_ms: u64) -> Result<Option<Tallies>> {
        self.store.tallies(activity_from_ms).await.map(Some)
    }

    async fn tasks(&self, query: &TaskQuery) -> Result<TaskPage> {
        self.store.tasks(query).await
    }

    async fn task(&self, key: u128, step: u32) -> Result<Option<TaskRow>> {
        self.store.task(key, step).await
    }

    /// The due notifications of the runs this host drives.
    async fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<(Vec<OutboxRow>, Option<u64>)> {
        let shards = self.inner.shards();
        self.store.outbox_due(Some(&shards), now_ms, limit).await
    }

    /// The due notifications of the runs this host drives, each held for this host for
    /// `hold_ms`: a shard changing hands while one is delivered does not let the next
    /// owner deliver it again before this host records the attempt.
    async fn outbox_claim(
        &self,
        now_ms: u64,
        limit: usize,
        hold_ms: u64,
    ) -> Result<(Vec<OutboxRow>, Option<u64>)> {
        let shards = self.inner.shards();
        self.store
            .outbox_claim(&shards, now_ms, limit, hold_ms)
            .await
    }

    async fn outbox_attempted(
        &self,
        id: u64,
        attempt: DeliveryAttempt,
        delivery: Delivery,
    ) -> Result<()> {
        let op = Op::OutboxAttempt {
            id,
            attempt,
            delivery,
        };
        self.request(op).await.map(drop)
    }

    async fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<OutboxRow>> {
        self.store.outbox(after, limit).await
    }

    async fn attach_document(
        &self,
        key: u128,
        document: DocumentVersion,
        bytes: Vec<u8>,
        expect: Expect,
        actor: Option<Actor>,
    ) -> Result<Appended> {
        if cairn_core::document::sha256(&bytes) != document.sha256 {
            return Err(Error::InvalidArgument(format!(
                "the bytes of document `{}` do not hash to the SHA-256 it names",
                document.name
            )));
        }
        let sha256 = document.sha256;
        let op = Op::Append {
            key,
            kind: EventKind::DocumentAttached { document },
            expect,
            actor,
            fence: None,
            document: Some((sha256, bytes)),
        };
        match self.request(op).await? {
            Answer::Appended(appended) => Ok(appended),
            other => Err(unexpected(other)),
        }
    }

    async fn document_bytes(&self, sha256: [u8; 32]) -> Result<Option<Vec<u8>>> {
        self.store.document_bytes(sha256).await
    }

    async fn closed(&self) {
        self.finished().await;
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        // Dropping the sender lets the writer commit what is queued and stop.
        self.queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        for task in self
            .lease_task
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Drop for PostgresJournal {
    fn drop(&mut self) {
        self.close();
    }
}
