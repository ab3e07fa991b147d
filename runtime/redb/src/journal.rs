//! [`RedbJournal`]: the journal on one redb file, the embedded default. A group-commit
//! writer thread owns every write transaction; reads run on the caller's thread against
//! redb's snapshots.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use cairn_core::codec::Payload;
use cairn_core::error::{Error, Result};
use cairn_core::event::EventKind;
use cairn_core::journal::{
    Actor, AppendTicket, Appended, Attachment, Attributes, Carried, Delivery, DeliveryAttempt,
    Expect, InstancePage, InstanceQuery, InstanceRow, Journal, OutboxRow, Ownership, ParkedRow,
    RawHistory, Started, Suspension, Tallies, TaskPage, TaskQuery, TaskRow, TimeSource,
};
use cairn_core::schedule::ScheduleRow;

use crate::store::{RedbStore, Store};
use crate::writer::{Writer, WriterStats};

/// The journal on one redb file: the embedded default.
///
/// The file is locked by the process that opens it, so this host owns every run in it
/// ([`Ownership::Exclusive`]). Appends from all runs queue to one writer thread, which
/// commits whatever is queued as one transaction (`Durability::Immediate`) and answers
/// each request only after it.
///
/// # Example
/// ```no_run
/// # fn main() -> cairn_core::Result<()> {
/// use cairn_redb::RedbJournal;
/// let journal = RedbJournal::open("orders.redb")?;
/// # Ok(()) }
/// ```
pub struct RedbJournal {
    store: Arc<dyn Store>,
    /// `None` when opened read-only.
    writer: Option<Writer>,
    clock: Arc<OnceLock<TimeSource>>,
}

impl std::fmt::Debug for RedbJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbJournal").finish_non_exhaustive()
    }
}

fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

impl RedbJournal {
    /// Opens (or creates) the redb file at `path` and starts its writer.
    ///
    /// # Errors
    /// As [`RedbStore::open`]; [`Error::Storage`] if the writer thread cannot start.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::on(Arc::new(RedbStore::open(path)?))
    }

    /// The journal on an opened store (a file on a custom backend, for fault injection).
    ///
    /// # Errors
    /// Storage errors reading the stored schedules or the log's end.
    pub fn on(store: Arc<dyn Store>) -> Result<Self> {
        let schedules = store.schedules()?.into_iter().collect();
        let clock: Arc<OnceLock<TimeSource>> = Arc::new(OnceLock::new());
        let slot = clock.clone();
        let now_ms: TimeSource = Arc::new(move || slot.get().map_or_else(system_ms, |now| now()));
        let writer = Writer::spawn(store.clone(), schedules, now_ms)?;
        Ok(Self {
            store,
            writer: Some(writer),
            clock,
        })
    }

    /// Opens the file at `path` for reading only, with no writer thread and no write
    /// lock: for audit tools. Every write is refused with [`Error::InvalidArgument`].
    ///
    /// # Errors
    /// As [`RedbStore::open_read_only`]: a clear [`Error::Open`] while a host holds the
    /// file, for a missing file, or for one that needs repair.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            store: Arc::new(RedbStore::open_read_only(path)?),
            writer: None,
            clock: Arc::new(OnceLock::new()),
        })
    }

    /// Counters of the group-commit writer (none when read-only).
    pub fn writer_stats(&self) -> Option<&Arc<WriterStats>> {
        self.writer.as_ref().map(Writer::stats)
    }

    fn writer(&self) -> Result<&Writer> {
        self.writer.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "this journal was opened read-only (for audit); open it with `RedbJournal::open` to write"
                    .into(),
            )
        })
    }
}

#[async_trait::async_trait]
impl Journal for RedbJournal {
    fn attach(&self, attachment: Attachment) {
        let _ = self.clock.set(attachment.now_ms);
        if let Some(writer) = &self.writer {
            writer.listen(attachment.listener);
        }
    }

    fn ownership(&self) -> Ownership {
        Ownership::Exclusive
    }

    async fn start_by(
        &self,
        id: String,
        workflow_type: String,
        input: Payload,
        parent: Option<u128>,
        actor: Option<Actor>,
    ) -> Result<Started> {
        self.writer()?
            .start(id, workflow_type, input, parent, actor)
            .await
    }

    async fn append_by(
        &self,
        key: u128,
        kind: EventKind,
        expect: Expect,
        actor: Option<Actor>,
    ) -> Result<Appended> {
        self.writer()?.append(key, kind, expect, actor).await
    }

    // The default calls `append_by` through another boxed future; a run's every step
    // comes this way.
    async fn append(&self, key: u128, kind: EventKind, expect: Expect) -> Result<Appended> {
        self.writer()?.append(key, kind, expect, None).await
    }

    fn append_queued(&self, key: u128, kind: EventKind) -> AppendTicket {
        match self.writer() {
            Ok(writer) => writer.append_queued(key, kind),
            Err(err) => Box::pin(std::future::ready(Err(err))),
        }
    }

    fn queues_appends(&self) -> bool {
        self.writer.is_some()
    }

    // One command, so both land in one commit.
    async fn append_after(&self, key: u128, first: EventKind, then: EventKind) -> Result<Appended> {
        self.writer()?.append_after(key, first, then).await
    }

    fn append_detached(&self, key: u128, kind: EventKind) {
        match &self.writer {
            Some(writer) => writer.append_detached(key, kind),
            None => tracing::warn!("a detached append to a read-only journal was dropped"),
        }
    }

    async fn suspend(
        &self,
        key: u128,
        expected_next_seq: u64,
        wake_at_ms: Option<u64>,
    ) -> Result<bool> {
        self.writer()?
            .suspend(key, expected_next_seq, wake_at_ms)
            .await
    }

    async fn continue_as_new(
        &self,
        key: u128,
        input: Payload,
        carried: Carried,
    ) -> Result<Option<u128>> {
        self.writer()?.continue_as_new(key, input, carried).await
    }

    async fn schedule(
        &self,
        id: String,
        row: Option<ScheduleRow>,
        only_if: Option<ScheduleRow>,
    ) -> Result<bool> {
        self.writer()?.schedule(id, row, only_if).await
    }

    fn commits(&self) -> u64 {
        self.writer
            .as_ref()
            .map_or(0, |writer| writer.stats().commits.load(Ordering::SeqCst))
    }

    async fn key_of(&self, id: &str) -> Result<Option<u128>> {
        self.store.key_of(id)
    }

    async fn instance(&self, key: u128) -> Result<Option<InstanceRow>> {
        self.store.instance(key)
    }

    async fn history(&self, key: u128) -> Result<Option<RawHistory>> {
        self.store.raw_history(key)
    }

    async fn envelope(&self, lsn: u64) -> Result<Option<Vec<u8>>> {
        self.store.envelope(lsn)
    }

    async fn attributes(&self, key: u128) -> Result<Attributes> {
        self.store.attributes(key)
    }

    async fn running(&self) -> Result<Vec<(u128, Option<Suspension>)>> {
        let mut out = Vec::new();
        self.store
            .scan_running(&mut |key, suspension| out.push((key, suspension)))?;
        Ok(out)
    }

    async fn query(&self, query: &InstanceQuery) -> Result<InstancePage> {
        self.store.query(query)
    }

    async fn tallies(&self, activity_from_ms: u64) -> Result<Option<Tallies>> {
        self.store.tallies(activity_from_ms)
    }

    async fn schedules(&self) -> Result<Vec<(String, ScheduleRow)>> {
        self.store.schedules()
    }

    async fn parked(&self) -> Result<Vec<(u128, ParkedRow)>> {
        self.store.parked()
    }

    async fn tasks(&self, query: &TaskQuery) -> Result<TaskPage> {
        self.store.tasks(query)
    }

    async fn task(&self, key: u128, step: u32) -> Result<Option<TaskRow>> {
        self.store.task(key, step)
    }

    async fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<(Vec<OutboxRow>, Option<u64>)> {
        self.store.outbox_due(now_ms, limit)
    }

    async fn outbox_attempted(
        &self,
        id: u64,
        attempt: DeliveryAttempt,
        delivery: Delivery,
    ) -> Result<()> {
        self.writer()?.outbox_attempted(id, attempt, delivery).await
    }

    async fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<OutboxRow>> {
        self.store.outbox(after, limit)
    }

    async fn attach_document(
        &self,
        key: u128,
        document: cairn_core::document::DocumentVersion,
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
        self.writer()?
            .attach(key, document, bytes, expect, actor)
            .await
    }

    async fn document_bytes(&self, sha256: [u8; 32]) -> Result<Option<Vec<u8>>> {
        self.store.document_bytes(sha256)
    }

    fn close(&self) {
        if let Some(writer) = &self.writer {
            writer.close();
        }
        self.store.close();
    }
}
