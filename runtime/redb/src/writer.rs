//! The group-commit writer: one thread owns every write transaction. Appends from all
//! instances queue to it; it turns whatever is queued into one transaction, commits it
//! with `Durability::Immediate`, and only then answers each request. Many instances thus
//! share one fsync, and a step is never acknowledged before it is durable.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::codec::Payload;
use crate::error::{Error, Result, StorageFailure};
use crate::event::AttrValue;
use crate::event::{EventKind, EVENT_BYTES_MAX, GENESIS_HASH};
use crate::queue::{Closed, CommitQueue};
use crate::schedule::ScheduleRow;
use crate::store::{
    attribute_bytes, encode_attributes, encode_parked, encode_row, encode_schedule,
    encode_suspension, Attributes, IndexChange, InstanceRow, InstanceStatus, Store, Suspension,
    WriteBatch,
};
use crate::sync::{lock, Arc, AtomicU64, Mutex};
use cairn_core::commit::{plan_event, TaskIndexChange};
use cairn_core::journal::{
    AppendTicket, Appended, Carried, CommitListener, Committed, Expect, Started, TimeSource,
};
use cairn_core::keymap::{KeyHash, KeyMap, KeySet};
use cairn_core::task::Actor;

use crate::outbox::OutboxWrite;
use cairn_core::notify::{Delivery, DeliveryAttempt};

/// Room an event needs beyond its payloads and names (header, hashes, varints).
const STEP_HEADROOM_BYTES: usize = 1024;

/// Most requests one commit takes. At the limit the rest wait for the next commit, which
/// bounds a transaction's size and the latency of the requests in it.
pub const BATCH_REQUESTS_MAX: usize = 4096;

enum Command {
    Start {
        id: String,
        workflow_type: String,
        input: Payload,
        parent: Option<u128>,
        actor: Option<Actor>,
        reply: oneshot::Sender<Result<Started>>,
    },
    /// Ends run `key` with `WorkflowContinuedAsNew` and starts the next run of the same
    /// id in the same commit; answers with the new run's key.
    ContinueAsNew {
        key: u128,
        input: Payload,
        carried: Carried,
        reply: oneshot::Sender<Result<Option<u128>>>,
    },
    /// Stores (`Some`) or deletes (`None`) a schedule; with `only_if`, only while the
    /// stored row is that one. Answers whether anything changed.
    Schedule {
        id: String,
        row: Option<ScheduleRow>,
        only_if: Option<ScheduleRow>,
        reply: oneshot::Sender<Result<bool>>,
    },
    /// Marks an instance evicted while waiting, if nothing was appended to it since the
    /// driver last looked (its history still has `expected_next_seq` events).
    Suspend {
        key: u128,
        expected_next_seq: u64,
        wake_at_ms: Option<u64>,
        reply: oneshot::Sender<Result<bool>>,
    },
    Append {
        key: u128,
        kind: EventKind,
        expect: Expect,
        actor: Option<Actor>,
        /// Queued by a run that goes on before it is durable (`append_queued`): if it is
        /// refused, so is every later event of the run (see `refused`).
        queued: bool,
        /// An event of the run's own to append first, in the same commit; `kind` is
        /// refused if it is (`append_after`).
        before: Option<EventKind>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    /// Appends `DocumentAttached` and stores the document's bytes, in one commit.
    Attach {
        key: u128,
        document: cairn_core::document::DocumentVersion,
        bytes: Vec<u8>,
        expect: Expect,
        actor: Option<Actor>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    /// Records a delivery attempt of notification `id`.
    OutboxAttempt {
        id: u64,
        attempt: DeliveryAttempt,
        delivery: Delivery,
        reply: oneshot::Sender<Result<bool>>,
    },
}

/// An answer held until the batch it belongs to is committed and its effects are in
/// memory. Refusals wait too: a refusal caused by an event earlier in the same batch
/// (a signal the run has not seen) must not reach the run before that event does.
enum Reply {
    Start(oneshot::Sender<Result<Started>>, Box<Started>),
    Append(oneshot::Sender<Result<Appended>>, Appended),
    /// An append refused (the instance had finished, the event does not encode): the
    /// caller then finds the commit that finished it already readable.
    AppendRefused(oneshot::Sender<Result<Appended>>, Error),
    Flag(oneshot::Sender<Result<bool>>, bool),
    ContinueAsNew(oneshot::Sender<Result<Option<u128>>>, Option<u128>),
}

/// Counters of the writer, for benchmarks and monitoring.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Events written.
    pub events: AtomicU64,
}

type ListenerSlot = std::sync::Arc<OnceLock<std::sync::Arc<dyn CommitListener>>>;

/// Handle to the writer thread.
pub(crate) struct Writer {
    queue: Arc<CommitQueue<Command>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: std::sync::Arc<WriterStats>,
    listener: ListenerSlot,
}

impl Writer {
    /// Starts the writer thread on `store`, whose stored schedules are `schedules`.
    pub(crate) fn spawn(
        store: std::sync::Arc<dyn Store>,
        schedules: HashMap<String, ScheduleRow>,
        now_ms: TimeSource,
    ) -> Result<Self> {
        let next_lsn = store.next_lsn()?;
        let parked = store.parked()?.into_iter().map(|(key, _)| key).collect();
        let queue = Arc::new(CommitQueue::new());
        let stats = std::sync::Arc::new(WriterStats::default());
        let listener: ListenerSlot = std::sync::Arc::new(OnceLock::new());
        let state = WriterLoop {
            store,
            queue: queue.clone(),
            stats: stats.clone(),
            listener: listener.clone(),
            now_ms,
            effects: Vec::new(),
            schedules,
            parked,
            heads: KeyMap::default(),
            attributes: KeyMap::default(),
            attributes_touched: KeySet::default(),
            suspended_in_batch: Vec::new(),
            children_ended: KeySet::default(),
            refused: KeyMap::default(),
            next_lsn,
            failed: None,
        };
        let thread = std::thread::Builder::new()
            .name("cairn-writer".into())
            .spawn(move || state.run())
            .map_err(|err| {
                Error::Storage(StorageFailure::caused_by(
                    "cannot start the writer thread",
                    err,
                ))
            })?;
        Ok(Self {
            queue,
            thread: Mutex::new(Some(thread)),
            stats,
            listener,
        })
    }

    /// Sets the listener that receives every commit's effects; the first one set stays.
    /// Set it before any request is queued: effects of earlier commits are not replayed.
    pub(crate) fn listen(&self, listener: std::sync::Arc<dyn CommitListener>) {
        let _ = self.listener.set(listener);
    }

    pub(crate) fn stats(&self) -> &std::sync::Arc<WriterStats> {
        &self.stats
    }

    /// Starts an instance, or finds the existing one with this id.
    pub(crate) async fn start(
        &self,
        id: String,
        workflow_type: String,
        input: Payload,
        parent: Option<u128>,
        actor: Option<Actor>,
    ) -> Result<Started> {
        self.request(|reply| Command::Start {
            id,
            workflow_type,
            input,
            parent,
            actor,
            reply,
        })
        .await
    }

    /// Stores (`Some`) or deletes (`None`) schedule `id`, durably; with `only_if`, only
    /// while the stored row is that one. Returns whether anything changed (for a
    /// deletion: whether the schedule existed).
    pub(crate) async fn schedule(
        &self,
        id: String,
        row: Option<ScheduleRow>,
        only_if: Option<ScheduleRow>,
    ) -> Result<bool> {
        self.request(|reply| Command::Schedule {
            id,
            row,
            only_if,
            reply,
        })
        .await
    }

    /// Appends `DocumentAttached { document }` to run `key` and stores `bytes`.
    pub(crate) async fn attach(
        &self,
        key: u128,
        document: cairn_core::document::DocumentVersion,
        bytes: Vec<u8>,
        expect: Expect,
        actor: Option<Actor>,
    ) -> Result<Appended> {
        self.request(|reply| Command::Attach {
            key,
            document,
            bytes,
            expect,
            actor,
            reply,
        })
        .await
    }

    /// Records a delivery attempt of notification `id` and where its delivery stands.
    pub(crate) async fn outbox_attempted(
        &self,
        id: u64,
        attempt: DeliveryAttempt,
        delivery: Delivery,
    ) -> Result<()> {
        self.request(|reply| Command::OutboxAttempt {
            id,
            attempt,
            delivery,
            reply,
        })
        .await
        .map(drop)
    }

    /// Ends run `key` and starts the next run of its id with `input` and the carried
    /// signals and cancellation, atomically; `None` if the history grew past what the
    /// run knew (look at the inbox again and retry).
    pub(crate) async fn continue_as_new(
        &self,
        key: u128,
        input: Payload,
        carried: Carried,
    ) -> Result<Option<u128>> {
        self.request(|reply| Command::ContinueAsNew {
            key,
            input,
            carried,
            reply,
        })
        .await
    }

    /// Marks `key` evicted while waiting, unless anything was appended to it since its
    /// history had `expected_next_seq` events. Returns whether it was marked.
    pub(crate) async fn suspend(
        &self,
        key: u128,
        expected_next_seq: u64,
        wake_at_ms: Option<u64>,
    ) -> Result<bool> {
        self.request(|reply| Command::Suspend {
            key,
            expected_next_seq,
            wake_at_ms,
            reply,
        })
        .await
    }

    /// Appends one event under `expect` and waits until it is durable.
    pub(crate) async fn append(
        &self,
        key: u128,
        kind: EventKind,
        expect: Expect,
        actor: Option<Actor>,
    ) -> Result<Appended> {
        self.request(|reply| Command::Append {
            key,
            kind,
            expect,
            actor,
            queued: false,
            before: None,
            reply,
        })
        .await
    }

    /// Appends `first` and then `then` (run `key`'s own events) in one command, so they
    /// share a commit; answers for `then`.
    pub(crate) async fn append_after(
        &self,
        key: u128,
        first: EventKind,
        then: EventKind,
    ) -> Result<Appended> {
        self.request(|reply| own_append(key, then, false, Some(first), reply))
            .await
    }

    /// Queues one of a run's own events and returns at once with the answer's future
    /// (see `Journal::append_queued`): the queue orders it before anything the run
    /// queues after it.
    pub(crate) fn append_queued(&self, key: u128, kind: EventKind) -> AppendTicket {
        let (reply, answer) = oneshot::channel();
        let submitted = self.submit(own_append(key, kind, true, None, reply));
        Box::pin(async move {
            submitted?;
            answer.await.map_err(|_| Error::ShutDown)?
        })
    }

    /// Queues one event without waiting for it: for code that cannot wait (a `Drop`).
    /// It is committed in queue order like any other; a refusal or failure is logged.
    pub(crate) fn append_detached(&self, key: u128, kind: EventKind) {
        let (reply, _answer) = oneshot::channel();
        if self
            .submit(own_append(key, kind, false, None, reply))
            .is_err()
        {
            tracing::debug!("writer closed; a detached append was dropped");
        }
    }

    /// Queues the command `make` builds around a reply channel, and waits for the answer
    /// (sent after the commit that holds it, or with the error that refused it).
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.submit(make(reply))?;
        answer.await.map_err(|_| Error::ShutDown)?
    }

    fn submit(&self, command: Command) -> Result<()> {
        self.queue
            .push(command)
            .map_err(|Closed(_)| Error::ShutDown)
    }

    /// Stops accepting requests, lets the writer commit what is queued, and waits for it.
    pub(crate) fn close(&self) {
        self.queue.close();
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // Closed from the writer thread itself (the last handle to a host dropped by
            // its commit listener): the loop ends once the queue is empty; joining would
            // wait for ever.
            if thread.thread().id() == std::thread::current().id() {
                return;
            }
            if thread.join().is_err() {
                tracing::error!("the cairn writer thread panicked");
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

struct WriterLoop {
    store: std::sync::Arc<dyn Store>,
    queue: Arc<CommitQueue<Command>>,
    stats: std::sync::Arc<WriterStats>,
    listener: ListenerSlot,
    /// The clock whose time each commit records (`recorded_at_ms`).
    now_ms: TimeSource,
    /// What the current batch makes durable, for the listener, in commit order.
    effects: Vec<Committed>,
    /// The stored schedules, as of the last commit and the current batch.
    schedules: HashMap<String, ScheduleRow>,
    /// Instances the `parked` index holds: their next event clears their entry.
    parked: KeySet,
    /// Rows of the instances this writer has touched. The writer is the only one that
    /// writes rows, so its copy is the truth; finished instances are dropped from it.
    heads: KeyMap<InstanceRow>,
    /// Search attributes of running instances that set some, for the same reason.
    attributes: KeyMap<Attributes>,
    /// Instances whose attributes the current batch changed.
    attributes_touched: KeySet,
    /// Instances evicted in the current batch: their rows leave `heads` after the commit,
    /// so a host with many sleeping instances does not keep all their rows in memory.
    suspended_in_batch: Vec<u128>,
    /// Parents with a child that ended since the parent's own last event. A parent's
    /// eviction is refused while it is here: its `Suspend` may have been decided before
    /// the child ended and committed after the child's terminal commit cleared the
    /// parent's hint, which would set the hint again with nothing left to wake it after a
    /// restart. The parent's next event (its `ChildCompleted`) takes it out.
    children_ended: KeySet,
    /// Runs whose queued event was refused, with why. The run went on as if it were
    /// durable, so nothing it appends later may commit (its end would claim a result
    /// the log cannot explain); the run stops at its next append. Only a refusal that
    /// does not last (an event over the size limit, which the run checks beforehand)
    /// makes this matter; kept until the store is reopened.
    refused: KeyMap<Error>,
    next_lsn: u64,
    /// Set after a failed commit: the writer then refuses everything until the runtime is
    /// reopened, because after a failed fsync the file's state is unknown and retrying
    /// the fsync could report success for lost writes.
    failed: Option<Error>,
}

impl WriterLoop {
    fn run(mut self) {
        let mut commands = Vec::new();
        let mut replies = Vec::new();
        while self.queue.take(&mut commands, BATCH_REQUESTS_MAX) {
            let mut batch = WriteBatch::default();
            // Most commands append one event: sized once instead of grown by doubling
            // (the effects are large, and move to the listener with every commit).
            batch.events.reserve(commands.len());
            self.effects.reserve(commands.len());
            // Sized for the batch: growing it one rehash at a time was a visible part of
            // the writer's time at a thousand instances per commit.
            let mut touched = KeySet::with_capacity_and_hasher(commands.len(), KeyHash);
            let mut new_ids: HashMap<String, u128> = HashMap::new();
            let now = (self.now_ms)();
            for command in commands.drain(..) {
                if let Some(err) = &self.failed {
                    reject(command, err.clone());
                    continue;
                }
                self.apply(
                    command,
                    now,
                    &mut batch,
                    &mut touched,
                    &mut new_ids,
                    &mut replies,
                );
            }
            if batch.is_empty() {
                // Only refusals and idempotent answers: nothing to commit or report.
                self.effects.clear();
                send_replies(&mut replies);
                continue;
            }
            if let Err(err) = self.finish_batch(&mut batch, &touched) {
                self.fail(err, &mut replies);
                continue;
            }
            let began = std::time::Instant::now();
            match self.store.commit(&batch) {
                Ok(()) => {
                    let took = began.elapsed();
                    // Memory first, answers second: a caller that hears back (or one
                    // that went away) finds the effect already applied.
                    // Counted first: a caller that hears back reads a number at least its
                    // commit's, and can wait until the effects of that many commits are
                    // applied.
                    let number = self.stats.commits.fetch_add(1, Ordering::SeqCst) + 1;
                    let effects = std::mem::take(&mut self.effects);
                    if let Some(listener) = self.listener.get() {
                        listener.commit_took(took);
                        listener.committed(number, effects);
                    }
                    self.stats
                        .events
                        .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                    for key in &touched {
                        if self
                            .heads
                            .get(key)
                            .is_some_and(|row| row.status.is_finished())
                        {
                            self.heads.remove(key);
                            self.attributes.remove(key);
                        }
                    }
                    for key in self.suspended_in_batch.drain(..) {
                        // Reloaded from the store at the instance's next event.
                        if self
                            .heads
                            .get(&key)
                            .is_some_and(|row| row.suspended.is_some())
                        {
                            self.heads.remove(&key);
                            self.attributes.remove(&key);
                        }
                    }
                    send_replies(&mut replies);
                }
                Err(err) => self.fail(err, &mut replies),
            }
        }
    }

    fn fail(&mut self, err: Error, replies: &mut Vec<Reply>) {
        tracing::error!(%err, "group commit failed; the writer refuses further appends until reopened");
        if self.failed.is_none() {
            if let Some(listener) = self.listener.get() {
                listener.failed(&err);
            }
        }
        for reply in replies.drain(..) {
            match reply {
                Reply::Start(tx, _) => drop(tx.send(Err(err.clone()))),
                Reply::Append(tx, _) | Reply::AppendRefused(tx, _) => {
                    drop(tx.send(Err(err.clone())))
                }
                Reply::Flag(tx, _) => drop(tx.send(Err(err.clone()))),
                Reply::ContinueAsNew(tx, _) => drop(tx.send(Err(err.clone()))),
            }
        }
        self.effects.clear();
        self.heads.clear();
        self.attributes.clear();
        self.attributes_touched.clear();
        self.suspended_in_batch.clear();
        self.failed = Some(err);
    }

    fn finish_batch(&mut self, batch: &mut WriteBatch, touched: &KeySet) -> Result<()> {
        batch.rows.reserve(touched.len());
        for key in touched {
            if let Some(row) = self.heads.get(key) {
                batch.rows.push((*key, encode_row(row)?));
            }
        }
        for key in self.attributes_touched.drain() {
            if let Some(attributes) = self.attributes.get(&key) {
                batch.attributes.push((key, encode_attributes(attributes)?));
            }
        }
        Ok(())
    }

    /// A child that ends must wake its parent after a restart too: the parent's
    /// suspension hint is cleared in the same commit, so a host that stops before the
    /// parent records the outcome replays the parent at start.
    fn wake_parent_hint(&mut self, child: u128, batch: &mut WriteBatch, touched: &mut KeySet) {
        let Some(parent) = self.heads.get(&child).and_then(|row| row.parent) else {
            return;
        };
        let Ok(row) = self.head(parent) else {
            return;
        };
        let parent_finished = row.status.is_finished();
        let at = (row.created_at_ms, parent);
        if row.suspended.take().is_some() {
            if let Ok(entry) = encode_suspension(None) {
                batch.running.push((at, entry));
                touched.insert(parent);
            }
        }
        if !parent_finished {
            self.children_ended.insert(parent);
        }
    }

    fn suspend(
        &mut self,
        key: u128,
        expected_next_seq: u64,
        wake_at_ms: Option<u64>,
        batch: &mut WriteBatch,
        touched: &mut KeySet,
    ) -> Result<bool> {
        if self.children_ended.contains(&key) {
            return Ok(false);
        }
        let row = self.head(key)?;
        if row.status.is_finished() || row.next_seq != expected_next_seq {
            return Ok(false);
        }
        let suspension = Some(Suspension { wake_at_ms });
        row.suspended = suspension;
        let at = (row.created_at_ms, key);
        batch.running.push((at, encode_suspension(suspension)?));
        touched.insert(key);
        Ok(true)
    }

    fn continue_as_new(
        &mut self,
        key: u128,
        input: Payload,
        carried: Carried,
        now: u64,
        batch: &mut WriteBatch,
        touched: &mut KeySet,
    ) -> Result<Option<u128>> {
        let row = self.head(key)?.clone();
        if row.status.is_finished() {
            return Err(Error::InstanceFinished(row.id));
        }
        if row.next_seq != carried.expected_next_seq {
            // A signal or cancellation arrived that the run has not seen: it must be
            // carried over too, so the run looks again.
            return Ok(None);
        }
        let next = uuid::Uuid::now_v7().as_u128();
        let running_entry = encode_suspension(None)?;
        // Both events carry the input; the start event also the id and type. Check the
        // larger one fits before writing either, so no run ends without its successor.
        let start_bytes =
            input.data.len() + row.id.len() + row.workflow_type.len() + STEP_HEADROOM_BYTES;
        if start_bytes > EVENT_BYTES_MAX {
            return Err(Error::PayloadTooLarge {
                instance: row.id,
                position: "continue_as_new input".into(),
                bytes: start_bytes,
                max: EVENT_BYTES_MAX,
            });
        }
        let ended = EventKind::WorkflowContinuedAsNew {
            input: input.clone(),
            next_run: next,
        };
        self.push_event(key, ended, now, batch, None)?;
        touched.insert(key);
        self.heads.insert(
            next,
            InstanceRow {
                key: next,
                id: row.id.clone(),
                workflow_type: row.workflow_type.clone(),
                status: InstanceStatus::Running,
                created_at_ms: now,
                updated_at_ms: now,
                head_lsn: 0,
                next_seq: 0,
                head_hash: GENESIS_HASH,
                parent: row.parent,
                suspended: None,
            },
        );
        let started = EventKind::WorkflowStarted {
            workflow_type: row.workflow_type,
            id: row.id.clone(),
            input,
        };
        self.push_event(next, started, now, batch, None)?;
        let continued = EventKind::RunContinued {
            previous_run: key,
            run: carried.run.saturating_add(1),
        };
        self.push_event(next, continued, now, batch, None)?;
        for signal in carried.signals {
            let kind = match signal.key {
                Some(key) => EventKind::KeyedSignalReceived {
                    name: signal.name,
                    payload: signal.payload,
                    key,
                },
                None => EventKind::SignalReceived {
                    name: signal.name,
                    payload: signal.payload,
                },
            };
            self.push_event(next, kind, now, batch, signal.actor)?;
        }
        if let Some(reason) = carried.cancel {
            self.push_event(
                next,
                EventKind::CancelRequested { reason },
                now,
                batch,
                None,
            )?;
        }
        touched.insert(next);
        batch.ids.push((row.id, next));
        batch.running.push(((now, next), running_entry));
        Ok(Some(next))
    }

    fn schedule(
        &mut self,
        id: String,
        row: Option<ScheduleRow>,
        only_if: Option<ScheduleRow>,
        batch: &mut WriteBatch,
    ) -> Result<bool> {
        let current = self.schedules.get(&id);
        if let Some(expected) = &only_if {
            // The scheduler moves a schedule on only if nobody replaced or removed it
            // while its occurrence was being started.
            if current != Some(expected) {
                return Ok(false);
            }
        }
        let changed = match &row {
            Some(_) => true,
            None => current.is_some(),
        };
        let bytes = row.as_ref().map(encode_schedule).transpose()?;
        batch.schedules.push((id.clone(), bytes));
        match &row {
            Some(row) => self.schedules.insert(id.clone(), row.clone()),
            None => self.schedules.remove(&id),
        };
        self.effects.push(Committed::Schedule { id, row });
        Ok(changed)
    }

    /// Loads an instance's stored attributes before its first change in this writer,
    /// so a failed read refuses the event instead of leaving it half-applied.
    fn load_attributes(&mut self, key: u128) -> Result<()> {
        if !self.attributes.contains_key(&key) {
            let stored = self.store.attributes(key)?;
            self.attributes.insert(key, stored);
        }
        Ok(())
    }

    fn merge_attributes(&mut self, key: u128, set: Vec<(String, AttrValue)>) {
        self.attributes.entry(key).or_default().extend(set);
        self.attributes_touched.insert(key);
    }

    fn head(&mut self, key: u128) -> Result<&mut InstanceRow> {
        if !self.heads.contains_key(&key) {
            let row = self
                .store
                .instance(key)?
                .ok_or_else(|| Error::InstanceNotFound(format!("internal key {key:032x}")))?;
            self.heads.insert(key, row);
        }
        self.heads
            .get_mut(&key)
            .ok_or_else(|| Error::InstanceNotFound(format!("internal key {key:032x}")))
    }

    fn apply(
        &mut self,
        command: Command,
        now: u64,
        batch: &mut WriteBatch,
        touched: &mut KeySet,
        new_ids: &mut HashMap<String, u128>,
        replies: &mut Vec<Reply>,
    ) {
        match command {
            Command::Attach {
                key,
                document,
                bytes,
                expect,
                actor,
                reply,
            } => {
                let sha256 = document.sha256;
                let kind = EventKind::DocumentAttached { document };
                let appended = self
                    .expect(key, expect)
                    .and_then(|()| self.push_event(key, kind, now, batch, actor));
                match appended {
                    Ok(appended) => {
                        touched.insert(key);
                        batch.documents.push((sha256, bytes));
                        replies.push(Reply::Append(reply, appended));
                    }
                    Err(err) => replies.push(Reply::AppendRefused(reply, err)),
                }
            }
            Command::OutboxAttempt {
                id,
                attempt,
                delivery,
                reply,
            } => match self.store.outbox_holds(id) {
                Ok(true) => {
                    batch.outbox.push(OutboxWrite::Attempted {
                        id,
                        attempt,
                        delivery,
                    });
                    replies.push(Reply::Flag(reply, true));
                }
                // Refused alone: the rest of the batch is not held up by it.
                Ok(false) => drop(reply.send(Err(Error::InvalidArgument(format!(
                    "the outbox holds no notification {id}"
                ))))),
                Err(err) => drop(reply.send(Err(err))),
            },
            Command::Schedule {
                id,
                row,
                only_if,
                reply,
            } => match self.schedule(id, row, only_if, batch) {
                Ok(changed) => replies.push(Reply::Flag(reply, changed)),
                Err(err) => drop(reply.send(Err(err))),
            },
            Command::ContinueAsNew {
                key,
                input,
                carried,
                reply,
            } => match self.continue_as_new(key, input, carried, now, batch, touched) {
                Ok(next) => replies.push(Reply::ContinueAsNew(reply, next)),
                Err(err) => drop(reply.send(Err(err))),
            },
            Command::Suspend {
                key,
                expected_next_seq,
                wake_at_ms,
                reply,
            } if self.refused.contains_key(&key) => {
                // Not evicted: the run went on with a result that was refused, and must
                // stop (and be parked) rather than sleep on it.
                let _ = (expected_next_seq, wake_at_ms);
                replies.push(Reply::Flag(reply, false));
            }
            Command::Suspend {
                key,
                expected_next_seq,
                wake_at_ms,
                reply,
            } => match self.suspend(key, expected_next_seq, wake_at_ms, batch, touched) {
                Ok(marked) => {
                    if marked {
                        self.suspended_in_batch.push(key);
                    }
                    replies.push(Reply::Flag(reply, marked));
                }
                Err(err) => drop(reply.send(Err(err))),
            },
            Command::Start {
                id,
                workflow_type,
                input,
                parent,
                actor,
                reply,
            } => {
                let existing = match new_ids.get(&id) {
                    Some(key) => Ok(Some(*key)),
                    None => self.store.key_of(&id),
                };
                match existing {
                    Err(err) => drop(reply.send(Err(err))),
                    Ok(Some(key)) => {
                        // Idempotent start: the same id never makes a second instance.
                        let row = match self.heads.get(&key) {
                            Some(row) => Ok(Some(row.clone())),
                            None => self.store.instance(key),
                        };
                        match row {
                            Ok(Some(row)) => {
                                let started = Started {
                                    key,
                                    created: false,
                                    row,
                                };
                                if new_ids.contains_key(&id) {
                                    // Created in this very batch: answer after the commit.
                                    replies.push(Reply::Start(reply, Box::new(started)));
                                } else {
                                    drop(reply.send(Ok(started)));
                                }
                            }
                            Ok(None) => drop(reply.send(Err(Error::Corrupt {
                                location: "ids table".into(),
                                message: format!(
                                    "id `{id}` maps to key {key:032x}, which has no instance row"
                                ),
                            }))),
                            Err(err) => drop(reply.send(Err(err))),
                        }
                    }
                    Ok(None) => {
                        let key = uuid::Uuid::now_v7().as_u128();
                        let row = InstanceRow {
                            key,
                            id: id.clone(),
                            workflow_type: workflow_type.clone(),
                            status: InstanceStatus::Running,
                            created_at_ms: now,
                            updated_at_ms: now,
                            head_lsn: 0,
                            next_seq: 0,
                            head_hash: GENESIS_HASH,
                            parent,
                            suspended: None,
                        };
                        self.heads.insert(key, row);
                        let kind = EventKind::WorkflowStarted {
                            workflow_type,
                            id: id.clone(),
                            input,
                        };
                        // Its `open_runs` entry, encoded first: a run left out of it would
                        // be neither resumed after a restart nor listed as running.
                        let planned = encode_suspension(None).and_then(|entry| {
                            self.push_event(key, kind, now, batch, actor).map(|_| entry)
                        });
                        match planned {
                            Ok(entry) => {
                                batch.running.push(((now, key), entry));
                                touched.insert(key);
                                new_ids.insert(id.clone(), key);
                                batch.ids.push((id, key));
                                let row = self.heads.get(&key).cloned();
                                if let Some(row) = row {
                                    replies.push(Reply::Start(
                                        reply,
                                        Box::new(Started {
                                            key,
                                            created: true,
                                            row,
                                        }),
                                    ));
                                }
                            }
                            Err(err) => {
                                self.heads.remove(&key);
                                drop(reply.send(Err(err)));
                            }
                        }
                    }
                }
            }
            Command::Append {
                key,
                kind,
                expect,
                actor,
                queued,
                before,
                reply,
            } => {
                let ends = kind.is_terminal();
                let appended = self.expect(key, expect).and_then(|()| {
                    if let Some(first) = before {
                        self.push_event(key, first, now, batch, None)?;
                        touched.insert(key);
                    }
                    self.push_event(key, kind, now, batch, actor)
                });
                match appended {
                    Ok(appended) => {
                        touched.insert(key);
                        if ends {
                            self.wake_parent_hint(key, batch, touched);
                        }
                        replies.push(Reply::Append(reply, appended));
                    }
                    Err(err) => {
                        // A run that has ended refuses everything anyway (a dropped step's
                        // abandonment sent after the end, say): nothing to remember.
                        if queued && !matches!(err, Error::InstanceFinished(_)) {
                            self.refused.insert(key, err.clone());
                        }
                        replies.push(Reply::AppendRefused(reply, err));
                    }
                }
            }
        }
    }

    /// Checks an append's condition against the head the batch has built so far.
    fn expect(&mut self, key: u128, expect: Expect) -> Result<()> {
        let Expect::Seq(expected) = expect else {
            return Ok(());
        };
        let row = self.head(key)?;
        if row.next_seq == expected {
            Ok(())
        } else {
            Err(Error::Conflict {
                instance: row.id.clone(),
                expected,
                actual: row.next_seq,
            })
        }
    }

    fn push_event(
        &mut self,
        key: u128,
        kind: EventKind,
        now: u64,
        batch: &mut WriteBatch,
        actor: Option<Actor>,
    ) -> Result<Appended> {
        if let Some(err) = self.refused.get(&key) {
            if !outside_the_runs_steps(&kind) {
                return Err(err.clone());
            }
        }
        if matches!(kind, EventKind::AttributesSet { .. }) {
            self.load_attributes(key)?;
        }
        let lsn = self.next_lsn;
        let next_lsn = lsn.checked_add(1).ok_or_else(|| {
            Error::Storage(StorageFailure::new(format!(
                "the log has used every sequence number up to {lsn}; it cannot take another event"
            )))
        })?;
        // Only the events that enter or leave the query indexes need the type: a clone
        // per step was an allocation on the writer's thread for nothing.
        let indexed = matches!(kind, EventKind::WorkflowStarted { .. })
            || InstanceStatus::ended_by(&kind).is_some();
        let row = self.head(key)?;
        let created_at_ms = row.created_at_ms;
        let workflow_type = if indexed {
            row.workflow_type.clone()
        } else {
            String::new()
        };
        // Encoded before anything changes, so a failure leaves row and batch untouched.
        let cleared_suspension = match row.suspended {
            Some(_) => Some(encode_suspension(None)?),
            None => None,
        };
        let plan = plan_event(row, kind, actor, now, lsn)?;
        batch.events.push((lsn, plan.envelope));
        if let Some(to) = plan.ended {
            batch.finished.push((created_at_ms, key));
            batch.index.push(IndexChange::Ended {
                key,
                workflow_type: workflow_type.clone(),
                created_at_ms,
                ended_at_ms: now,
                to,
            });
            batch
                .index
                .push(IndexChange::Task(TaskIndexChange::RunEnded { key }));
        } else if let Some(entry) = cleared_suspension {
            // Something happened to an evicted instance: it must be replayed at start.
            batch.running.push(((created_at_ms, key), entry));
        }
        self.children_ended.remove(&key);
        self.next_lsn = next_lsn;
        match plan.parked {
            Some(parked) => {
                self.parked.insert(key);
                batch.parked.push((key, Some(encode_parked(&parked)?)));
            }
            // Anything else the instance records (its next step, its end) means it runs
            // again, or is over.
            None => {
                if self.parked.remove(&key) {
                    batch.parked.push((key, None));
                }
            }
        }
        if plan.starts {
            batch.index.push(IndexChange::Started {
                key,
                created_at_ms,
                workflow_type,
            });
        }
        if let Some(task) = plan.task {
            batch.index.push(IndexChange::Task(task));
        }
        if let Some(notification) = plan.notification {
            batch.outbox.push(OutboxWrite::New(Box::new(notification)));
            self.effects.push(Committed::Outbox);
        }
        if let Some(attributes) = plan.attributes {
            // One at a time: a name given twice replaces its own earlier value.
            for (name, value) in attributes {
                let held = self.attributes.get(&key);
                let old = held.and_then(|held| held.get(&name));
                if old != Some(&value) {
                    // Both encode (postcard of a plain enum); a failure leaves the index
                    // without this entry, never the commit without the event.
                    match (
                        attribute_bytes(&value),
                        old.map(attribute_bytes).transpose(),
                    ) {
                        (Ok(new), Ok(old)) => batch.index.push(IndexChange::Attribute {
                            key,
                            created_at_ms,
                            name: name.clone(),
                            old,
                            new,
                        }),
                        _ => {
                            tracing::error!(attribute = %name, "attribute value does not encode for the index");
                        }
                    }
                }
                self.merge_attributes(key, vec![(name, value)]);
            }
        }
        let seq = plan.seq;
        self.effects.push(plan.effect);
        Ok(Appended { seq })
    }
}

/// An append of a run's own event (at the end of its history, no actor), as the run
/// makes them: `queued` and `before` as in `Command::Append`.
fn own_append(
    key: u128,
    kind: EventKind,
    queued: bool,
    before: Option<EventKind>,
    reply: oneshot::Sender<Result<Appended>>,
) -> Command {
    Command::Append {
        key,
        kind,
        expect: Expect::End,
        actor: None,
        queued,
        before,
        reply,
    }
}

fn send_replies(replies: &mut Vec<Reply>) {
    for reply in replies.drain(..) {
        // A requester that went away (its task was dropped) needs no answer.
        match reply {
            Reply::Start(tx, started) => drop(tx.send(Ok(*started))),
            Reply::Append(tx, appended) => drop(tx.send(Ok(appended))),
            Reply::AppendRefused(tx, err) => drop(tx.send(Err(err))),
            Reply::Flag(tx, flag) => drop(tx.send(Ok(flag))),
            Reply::ContinueAsNew(tx, next) => drop(tx.send(Ok(next))),
        }
    }
}

fn reject(command: Command, err: Error) {
    match command {
        Command::Start { reply, .. } => drop(reply.send(Err(err))),
        Command::Append { reply, .. } => drop(reply.send(Err(err))),
        Command::Suspend { reply, .. } => drop(reply.send(Err(err))),
        Command::ContinueAsNew { reply, .. } => drop(reply.send(Err(err))),
        Command::Schedule { reply, .. } => drop(reply.send(Err(err))),
        Command::OutboxAttempt { reply, .. } => drop(reply.send(Err(err))),
        Command::Attach { reply, .. } => drop(reply.send(Err(err))),
    }
}

#[cfg(all(test, not(cairn_loom)))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::event::ChildOutcome;
    use crate::store::RedbStore;

    fn payload() -> Payload {
        Payload::new(1, b"0".to_vec())
    }

    /// The narrow case of a parent's eviction decided before its child ended and committed
    /// after the child's terminal commit: it must be refused, or the parent's hint would
    /// be set with nothing left to wake it after a restart.
    #[tokio::test]
    async fn a_parent_is_not_evicted_between_its_childs_end_and_its_own_next_event() {
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(RedbStore::open(dir.path().join("writer-test.redb")).unwrap());
        let now_ms: TimeSource = std::sync::Arc::new(|| 1_764_000_000_000);
        let writer = Writer::spawn(store, HashMap::new(), now_ms).unwrap();
        let parent = writer
            .start("p".into(), "parent".into(), payload(), None, None)
            .await
            .unwrap();
        let child = writer
            .start(
                "p/c".into(),
                "child".into(),
                payload(),
                Some(parent.key),
                None,
            )
            .await
            .unwrap();
        let started = EventKind::ChildStarted {
            step: 1,
            workflow_type: "child".into(),
            child_id: "p/c".into(),
            input: payload(),
        };
        let seen = writer
            .append(parent.key, started, Expect::End, None)
            .await
            .unwrap()
            .seq
            + 1;

        let done = EventKind::WorkflowCompleted { output: payload() };
        writer
            .append(child.key, done, Expect::End, None)
            .await
            .unwrap();
        // The parent decided to evict itself when its history had `seen` events, before
        // it heard of the child; its request reaches the writer only now.
        assert!(!writer.suspend(parent.key, seen, None).await.unwrap());

        let completed = EventKind::ChildCompleted {
            step: 1,
            child_id: "p/c".into(),
            outcome: ChildOutcome::Completed(payload()),
        };
        let seen = writer
            .append(parent.key, completed, Expect::End, None)
            .await
            .unwrap()
            .seq
            + 1;
        // Once the parent has recorded the outcome, it may be evicted again.
        assert!(writer.suspend(parent.key, seen, None).await.unwrap());
        writer.close();
    }

    fn writer_on(path: &std::path::Path) -> Writer {
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(RedbStore::open(path).unwrap());
        let schedules = store.schedules().unwrap().into_iter().collect();
        let now_ms: TimeSource = std::sync::Arc::new(|| 1_764_000_000_000);
        Writer::spawn(store, schedules, now_ms).unwrap()
    }

    fn schedule_row(next_fire_ms: u64) -> ScheduleRow {
        ScheduleRow {
            workflow_type: "report".into(),
            input: payload(),
            recurrence: crate::schedule::Recurrence::every(std::time::Duration::from_secs(60)),
            next_fire_ms,
            paused: None,
        }
    }

    /// The scheduler moves a schedule on only if it is still the version it fired: one
    /// replaced meanwhile keeps the new version, on disk too, across a restart.
    #[tokio::test]
    async fn a_schedule_replaced_while_it_fires_keeps_the_new_version_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer-test.redb");
        let writer = writer_on(&path);
        let fired = schedule_row(1_000);
        assert!(writer
            .schedule("s".into(), Some(fired.clone()), None)
            .await
            .unwrap());
        // The user replaces it while its occurrence is being started ...
        let replaced = schedule_row(9_000);
        assert!(writer
            .schedule("s".into(), Some(replaced.clone()), None)
            .await
            .unwrap());
        // ... and the scheduler's move to the next occurrence of the old version is
        // refused.
        let moved_on = schedule_row(61_000);
        assert!(!writer
            .schedule("s".into(), Some(moved_on), Some(fired))
            .await
            .unwrap());
        writer.close();
        drop(writer);
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.schedules().unwrap(), vec![("s".into(), replaced)]);
        store.close();
    }

    /// An append that would need an LSN past `u64::MAX` is refused with a storage error,
    /// and one whose log already ends at `u64::MAX` is refused at open: never a wrap.
    #[tokio::test]
    async fn the_log_sequence_number_never_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer-test.redb");
        RedbStore::open(&path).unwrap().close();
        let put_last = |lsn: u64| {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut log = txn
                    .open_table(redb::TableDefinition::<u64, &[u8]>::new("log"))
                    .unwrap();
                log.insert(lsn, b"x".as_slice()).unwrap();
            }
            txn.commit().unwrap();
        };
        put_last(u64::MAX - 1);
        let writer = writer_on(&path);
        let err = writer
            .start("a".into(), "t".into(), payload(), None, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "CAIRN-E0006", "{err}");
        writer.close();
        drop(writer);

        put_last(u64::MAX);
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(RedbStore::open(&path).unwrap());
        let now_ms: TimeSource = std::sync::Arc::new(|| 0);
        let err = Writer::spawn(store, HashMap::new(), now_ms)
            .err()
            .expect("no writer on a full log");
        assert_eq!(err.code(), "CAIRN-E0004", "{err}");
    }
}

/// Events a refused queued result does not hold back (see `WriterLoop::refused`): what
/// comes from outside the run (messages, documents, a person's decision), and what stops
/// or parks it. None of them claims a step the run took after the refused result.
fn outside_the_runs_steps(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::SignalReceived { .. }
            | EventKind::KeyedSignalReceived { .. }
            | EventKind::CancelRequested { .. }
            | EventKind::WorkflowTerminated { .. }
            | EventKind::WorkflowParked { .. }
            | EventKind::DocumentAttached { .. }
            | EventKind::TaskCompleted { .. }
    )
}
