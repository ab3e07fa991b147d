//! [`PostgresReader`]: a database read as an auditor reads it: every read of the journal
//! boundary, no host identity, no lease taken, every write refused.

use std::sync::Arc;

use cairn_core::codec::Payload;
use cairn_core::document::DocumentVersion;
use cairn_core::error::{Error, Result};
use cairn_core::event::EventKind;
use cairn_core::journal::{
    Actor, Appended, Attachment, Attributes, Carried, Delivery, DeliveryAttempt, Expect,
    InstancePage, InstanceQuery, InstanceRow, Journal, OutboxRow, Ownership, ParkedRow, RawHistory,
    Started, Suspension, Tallies, TaskPage, TaskQuery, TaskRow,
};
use cairn_core::schedule::ScheduleRow;

use crate::PostgresStore;

/// A PostgreSQL database opened for reading only: for the audit tools (`cairn verify`,
/// `export`, `list`), beside any number of running hosts. It takes no shard and sends no
/// heartbeat; every write is refused with [`Error::InvalidArgument`].
///
/// # Example
/// ```no_run
/// # async fn demo() -> cairn_core::Result<()> {
/// use cairn_core::journal::Journal;
/// use cairn_postgres::PostgresReader;
/// let reader = PostgresReader::open("postgres://auditor@db.internal/orders").await?;
/// let page = reader.query(&Default::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PostgresReader {
    store: Arc<PostgresStore>,
}

impl PostgresReader {
    /// Opens the database at `url` with a small pool (migrating an older schema, as any
    /// open does; a newer one is refused).
    ///
    /// # Errors
    /// As [`PostgresStore::open`].
    pub async fn open(url: &str) -> Result<Self> {
        Ok(Self {
            store: Arc::new(PostgresStore::open_with(url, 4).await?),
        })
    }

    /// The store underneath (the invariant check, lease epochs).
    pub fn store(&self) -> &Arc<PostgresStore> {
        &self.store
    }
}

fn read_only<T>() -> Result<T> {
    Err(Error::InvalidArgument(
        "this database was opened read-only (for audit); a host writes through `open_postgres`"
            .into(),
    ))
}

#[async_trait::async_trait]
impl Journal for PostgresReader {
    fn attach(&self, _attachment: Attachment) {}

    fn ownership(&self) -> Ownership {
        Ownership::Leased { ttl_ms: 0 }
    }

    fn owns(&self, _key: u128) -> bool {
        false
    }

    async fn start_by(
        &self,
        _id: String,
        _workflow_type: String,
        _input: Payload,
        _parent: Option<u128>,
        _actor: Option<Actor>,
    ) -> Result<Started> {
        read_only()
    }

    async fn append_by(
        &self,
        _key: u128,
        _kind: EventKind,
        _expect: Expect,
        _actor: Option<Actor>,
    ) -> Result<Appended> {
        read_only()
    }

    fn append_detached(&self, _key: u128, _kind: EventKind) {
        tracing::warn!("a detached append to a read-only journal was dropped");
    }

    async fn suspend(&self, _key: u128, _next: u64, _wake_at_ms: Option<u64>) -> Result<bool> {
        read_only()
    }

    async fn continue_as_new(
        &self,
        _key: u128,
        _input: Payload,
        _carried: Carried,
    ) -> Result<Option<u128>> {
        read_only()
    }

    async fn schedule(
        &self,
        _id: String,
        _row: Option<ScheduleRow>,
        _only_if: Option<ScheduleRow>,
    ) -> Result<bool> {
        read_only()
    }

    fn commits(&self) -> u64 {
        0
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

    async fn running(&self) -> Result<Vec<(u128, Option<Suspension>)>> {
        self.store.running(None).await
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

    async fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<(Vec<OutboxRow>, Option<u64>)> {
        self.store.outbox_due(None, now_ms, limit).await
    }

    async fn outbox_attempted(
        &self,
        _id: u64,
        _attempt: DeliveryAttempt,
        _delivery: Delivery,
    ) -> Result<()> {
        read_only()
    }

    async fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<OutboxRow>> {
        self.store.outbox(after, limit).await
    }

    async fn attach_document(
        &self,
        _key: u128,
        _document: DocumentVersion,
        _bytes: Vec<u8>,
        _expect: Expect,
        _actor: Option<Actor>,
    ) -> Result<Appended> {
        read_only()
    }

    async fn document_bytes(&self, sha256: [u8; 32]) -> Result<Option<Vec<u8>>> {
        self.store.document_bytes(sha256).await
    }

    fn close(&self) {}
}
