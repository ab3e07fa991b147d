//! Storage: the [`Store`] trait the engine writes through, and [`RedbStore`], the
//! embedded default. This is the only module that names redb.
//!
//! Tables (see `docs/EVENT_FORMAT.md`):
//! - `log`: `u64` LSN -> event envelope. Append-only.
//! - `instances`: `u128` internal key (one per run) -> [`InstanceRow`] (head of the
//!   chain, status, parent, suspension hint).
//! - `ids`: user id -> internal key of its current run: written when it starts and
//!   rewritten only by a continue-as-new hand-over.
//! - `meta`: `"format"` -> storage format version (`u32`, little endian).
//! - `attributes`: internal key -> search attributes (an index of the log).
//! - `open_runs`: (start time, internal key) of every unfinished run -> its suspension
//!   hint (format 10; `running`, by key alone, before).
//! - `schedules`: schedule id -> [`ScheduleRow`].
//! - `counts`: (workflow type, status code) -> runs; `activity`: (bucket start, workflow
//!   type, what) -> runs started (what = 255) or ended with that status in the bucket.
//!   Both kept in the commit that starts or ends a run (format 9), for the overview.

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle,
};

use crate::error::{Error, Result, StorageFailure};
use cairn_core::journal::{
    tally_bucket, ActivityBucket, Cursor, InstancePage, InstanceQuery, PAGE_ROWS_MAX,
};
pub use cairn_core::journal::{
    verify_chain, verify_history, Attributes, InstanceRow, InstanceStatus, ParkedRow, RawEvent,
    RawHistory, StoredEvent, Suspension,
};

use crate::schedule::ScheduleRow;
use crate::sync::{read, write, AtomicBool, RwLock, RwLockReadGuard};
use crate::tables::LEGACY_RUNNING;
pub(crate) use crate::tables::{
    decode_row, decode_versioned, encode_versioned, read_events, storage, DOCUMENTS, INSTANCES,
    LOG, OPEN_RUNS, OPEN_TASKS, OUTBOX, OUTBOX_DUE, TASK_INBOX,
};

const IDS: TableDefinition<&str, u128> = TableDefinition::new("ids");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ATTRIBUTES: TableDefinition<u128, &[u8]> = TableDefinition::new("attributes");
const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
/// Added by storage format 2.
const PARKED: TableDefinition<u128, &[u8]> = TableDefinition::new("parked");
/// Query indexes, added by storage format 3: every run by type; every ended run by its
/// final status; by attribute value (postcard of the `AttrValue`). Each key ends with the
/// run's start time and key, so a range of one is in start order and pages by cursor.
/// The running runs are `open_runs`, keyed the same way; "every run" merges the status
/// ranges. Before format 10 `by_status` also held the running runs (status 0), and
/// `by_start` listed every run: five index writes per run, now two.
const BY_TYPE: TableDefinition<(&str, u64, u128), ()> = TableDefinition::new("by_type");
const BY_STATUS: TableDefinition<(u8, u64, u128), ()> = TableDefinition::new("by_status");
/// Every run by start time (formats 3 to 9; dropped by the migration to format 10).
const LEGACY_BY_START: TableDefinition<(u64, u128), ()> = TableDefinition::new("by_start");
const BY_ATTRIBUTE: TableDefinition<(&str, &[u8], u64, u128), ()> =
    TableDefinition::new("by_attribute");
/// Tallies, added by storage format 9 (see the module's table list).
const COUNTS: TableDefinition<(&str, u8), u64> = TableDefinition::new("counts");
const ACTIVITY: TableDefinition<(u64, &str, u8), u64> = TableDefinition::new("activity");
/// The `what` of an `activity` key that counts starts (the others are status codes).
const STARTED_CODE: u8 = 255;
/// Tables a Cairn file may hold without them all being required (an older format's file
/// lacks them until its first writable open migrates it).
const LATER_TABLES: [&str; 14] = [
    "parked",
    "by_start",
    "running",
    "open_runs",
    "by_type",
    "by_status",
    "by_attribute",
    "open_tasks",
    "task_inbox",
    "outbox",
    "outbox_due",
    "documents",
    "counts",
    "activity",
];
/// Tables every format has. A complete file also has its list of unfinished runs:
/// `running` up to format 9, `open_runs` from format 10.
const CAIRN_TABLES: [&str; 6] = ["log", "instances", "ids", "meta", "attributes", "schedules"];

/// Storage format of the whole file (tables and row encodings). Bumped on any change a
/// previous build could misread. Format 2 added the event kinds `StepAbandoned`,
/// `RunContinued` and `WorkflowParked` and the `parked` table; format 3 the query indexes;
/// format 4 the human-task events (`TaskCreated`, `TaskChanged`, `TaskCompleted`) and the
/// open-task index (`open_tasks`, `task_inbox`); format 5 the notification outbox
/// (`outbox`, `outbox_due`); format 6 envelopes of version 2 (with the actor); format 7
/// the `DocumentAttached` event and the `documents` table; format 8 the events of keyed
/// signals, update answers and published values (`KeyedSignalReceived`, `UpdateAnswered`,
/// `StatePublished`), which only raises the marker so that older builds refuse the file;
/// format 9 the tallies (`counts`, `activity`) and schedule rows that can be paused;
/// format 10 `open_runs` (unfinished runs by start time, replacing `running`), with
/// `by_status` holding ended runs only and `by_start` gone; format 11 the `TaskTaken`
/// event, which only raises the marker so that older builds refuse the file.
/// An older file is migrated by its first writable open (one transaction that builds the
/// indexes from the rows and the logs of running instances, and raises the marker); a
/// read-only open leaves it as it is and answers queries from the indexes it has (by
/// scanning the rows before format 3).
pub const STORAGE_FORMAT: u32 = 11;

/// The first format with the query indexes.
const INDEXED_FORMAT: u32 = 3;
/// The first format with human tasks and their index.
const TASKS_FORMAT: u32 = 4;
/// The first format with the notification outbox.
const OUTBOX_FORMAT: u32 = 5;
/// The first format with documents.
const DOCUMENTS_FORMAT: u32 = 7;
/// The first format with tallies.
const TALLIES_FORMAT: u32 = 9;
/// The first format with `open_runs`, and with `by_status` for ended runs only.
const OPEN_RUNS_FORMAT: u32 = 10;

pub(crate) fn encode_row(row: &InstanceRow) -> Result<Vec<u8>> {
    encode_versioned(row, "instance row")
}

/// Everything one group commit writes, in one transaction.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// New log entries, in LSN order.
    pub events: Vec<(u64, Vec<u8>)>,
    /// Instance rows to insert or overwrite.
    pub rows: Vec<(u128, Vec<u8>)>,
    /// New id mappings.
    pub ids: Vec<(String, u128)>,
    /// Search attributes to insert or overwrite (the whole map of an instance).
    pub attributes: Vec<(u128, Vec<u8>)>,
    /// Entries of `open_runs` to insert or overwrite, by (start time, key) (value:
    /// encoded `Option<Suspension>`).
    pub running: Vec<((u64, u128), Vec<u8>)>,
    /// Instances that finished, by (start time, key): removed from `open_runs`.
    pub finished: Vec<(u64, u128)>,
    /// Schedules to store (`Some(row)`, version byte + postcard `ScheduleRow`) or delete.
    pub schedules: Vec<(String, Option<Vec<u8>>)>,
    /// Parked instances to record (`Some(row)`, version byte + postcard `ParkedRow`) or
    /// clear.
    pub parked: Vec<(u128, Option<Vec<u8>>)>,
    /// Changes to the query indexes, in order.
    pub index: Vec<IndexChange>,
    /// Writes to the notification outbox, in order.
    pub outbox: Vec<crate::outbox::OutboxWrite>,
    /// Document content to store by SHA-256 (kept if already there).
    pub documents: Vec<([u8; 32], Vec<u8>)>,
}

/// One change to the query indexes, derived from an event by the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexChange {
    /// Run `key` started: indexed by type (and counted).
    Started {
        /// The run.
        key: u128,
        /// Its start time.
        created_at_ms: u64,
        /// Its workflow type.
        workflow_type: String,
    },
    /// Run `key` ended with status `to`: indexed by it (and counted).
    Ended {
        /// The run.
        key: u128,
        /// Its workflow type.
        workflow_type: String,
        /// Its start time.
        created_at_ms: u64,
        /// When it ended.
        ended_at_ms: u64,
        /// Its new status.
        to: InstanceStatus,
    },
    /// Run `key`'s attribute `name` changed from `old` (if it had one) to `new` (both
    /// encoded with [`attribute_bytes`]).
    Attribute {
        /// The run.
        key: u128,
        /// Its start time.
        created_at_ms: u64,
        /// The attribute.
        name: String,
        /// Its previous value.
        old: Option<Vec<u8>>,
        /// Its new value.
        new: Vec<u8>,
    },
    /// A change to the open-task index.
    Task(crate::tasks::TaskIndexChange),
}

pub use cairn_core::commit::attribute_bytes;

/// The byte a stored status is indexed under.
pub(crate) fn encode_parked(row: &ParkedRow) -> Result<Vec<u8>> {
    encode_versioned(row, "parked entry")
}

fn decode_parked(key: u128, bytes: &[u8]) -> Result<ParkedRow> {
    decode_versioned(|| format!("parked table, key {key:032x}"), bytes)
}

/// The version byte of a `schedules` value written since format 9 (with the pause); the
/// rows of older formats carry [`ROW_VERSION`](crate::tables) 1 and no pause.
const SCHEDULE_ROW_VERSION: u8 = 2;

pub(crate) fn encode_schedule(row: &ScheduleRow) -> Result<Vec<u8>> {
    postcard::to_extend(row, vec![SCHEDULE_ROW_VERSION])
        .map_err(|err| Error::Storage(StorageFailure::caused_by("schedule does not encode", err)))
}

fn decode_schedule(id: &str, bytes: &[u8]) -> Result<ScheduleRow> {
    let location = || format!("schedules table, schedule `{id}`");
    match bytes.split_first() {
        Some((&SCHEDULE_ROW_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|err| Error::Corrupt {
                location: location(),
                message: err.to_string(),
            })
        }
        // Written before format 9: the same fields but the pause.
        _ => decode_versioned::<crate::schedule::ScheduleRowV1>(location, bytes)
            .map(ScheduleRow::from),
    }
}

pub(crate) fn encode_suspension(suspension: Option<Suspension>) -> Result<Vec<u8>> {
    encode_versioned(&suspension, "running entry")
}

fn decode_suspension(table: &str, key: u128, bytes: &[u8]) -> Result<Option<Suspension>> {
    decode_versioned(|| format!("{table} table, key {key:032x}"), bytes)
}

pub(crate) fn encode_attributes(attributes: &Attributes) -> Result<Vec<u8>> {
    encode_versioned(attributes, "attributes")
}

fn decode_attributes(key: u128, bytes: &[u8]) -> Result<Attributes> {
    decode_versioned(|| format!("attributes table, key {key:032x}"), bytes)
}

impl WriteBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.rows.is_empty()
            && self.ids.is_empty()
            && self.attributes.is_empty()
            && self.running.is_empty()
            && self.finished.is_empty()
            && self.schedules.is_empty()
            && self.parked.is_empty()
            && self.index.is_empty()
            && self.outbox.is_empty()
            && self.documents.is_empty()
    }
}

/// Durable storage behind the engine. Implementations must make [`Store::commit`] atomic
/// and durable when it returns `Ok`.
pub trait Store: Send + Sync + 'static {
    /// Writes `batch` atomically and durably.
    ///
    /// # Errors
    /// [`Error::Storage`] when the transaction could not be made durable; nothing of the
    /// batch may then be assumed written.
    fn commit(&self, batch: &WriteBatch) -> Result<()>;
    /// The LSN the next appended event gets.
    fn next_lsn(&self) -> Result<u64>;
    /// Internal key of a user id.
    fn key_of(&self, id: &str) -> Result<Option<u128>>;
    /// The row of one instance.
    fn instance(&self, key: u128) -> Result<Option<InstanceRow>>;
    /// Calls `visit` with every instance row, in key (start time) order, until it returns `false`.
    fn scan_instances(&self, visit: &mut dyn FnMut(InstanceRow) -> bool) -> Result<()>;
    /// The raw envelope at `lsn`.
    fn envelope(&self, lsn: u64) -> Result<Option<Vec<u8>>>;
    /// Run `key`'s row and its events as stored, oldest first, from one snapshot; the
    /// caller verifies them (`cairn_core::journal::verify_history`).
    fn raw_history(&self, key: u128) -> Result<Option<RawHistory>>;
    /// The search attributes of an instance (empty if it set none).
    fn attributes(&self, key: u128) -> Result<Attributes>;
    /// Calls `visit` with every unfinished instance and its suspension hint, without
    /// reading finished instances: the host's start-up scan.
    fn scan_running(&self, visit: &mut dyn FnMut(u128, Option<Suspension>)) -> Result<()>;
    /// Every stored schedule, by id.
    fn schedules(&self) -> Result<Vec<(String, ScheduleRow)>>;
    /// Runs matching `query`, one page, oldest first.
    fn query(&self, query: &InstanceQuery) -> Result<InstancePage>;
    /// Open tasks matching `query`, from the open-task index.
    fn tasks(
        &self,
        query: &cairn_core::journal::TaskQuery,
    ) -> Result<cairn_core::journal::TaskPage>;
    /// The index row of open task `step` of run `key`.
    fn task(&self, key: u128, step: u32) -> Result<Option<cairn_core::task::TaskRow>>;
    /// The notifications due at `now_ms` (at most `limit`) and when the next is due.
    fn outbox_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<(Vec<cairn_core::notify::OutboxRow>, Option<u64>)>;
    /// The outbox in id order after `after`, at most `limit` rows.
    fn outbox(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<cairn_core::notify::OutboxRow>>;
    /// Whether the outbox holds notification `id`.
    fn outbox_holds(&self, id: u64) -> Result<bool>;
    /// The stored content with SHA-256 `sha256`.
    fn document_bytes(&self, sha256: [u8; 32]) -> Result<Option<Vec<u8>>>;
    /// The parked instances and why, by key (none for a store that keeps none).
    fn parked(&self) -> Result<Vec<(u128, ParkedRow)>> {
        Ok(Vec::new())
    }
    /// The tallies, with activity from the bucket of `activity_from_ms` on; `None` for a
    /// store (or a file of an older format, opened read-only) that keeps none.
    fn tallies(&self, activity_from_ms: u64) -> Result<Option<cairn_core::journal::Tallies>> {
        let _ = activity_from_ms;
        Ok(None)
    }
    /// Releases the storage (closes the file) once the calls in progress have finished;
    /// every later call fails with [`Error::ShutDown`].
    fn close(&self) {}
}

/// The embedded default: one redb file.
#[derive(Debug)]
pub struct RedbStore {
    /// `None` once closed. The lock is uncontended except against `close`, which must
    /// wait for reads in progress before the file is released.
    db: RwLock<Option<Handle>>,
    path: PathBuf,
    /// Set once redb panicked on this file: its in-memory state is then not trusted,
    /// every later call fails fast, and `close` leaks the handle rather than run a
    /// destructor that may wait on state the panic left behind.
    poisoned: AtomicBool,
    /// The storage format the file is at: [`STORAGE_FORMAT`] once opened for writing
    /// (migrated if it was older); an older file opened read-only stays at its own, and
    /// answers what its format can (queries by scanning before format 3, no tasks before
    /// format 4).
    format: std::sync::atomic::AtomicU32,
}

impl RedbStore {
    /// Opens `path`, creating the file if it does not exist.
    ///
    /// # Errors
    /// [`Error::Open`] for a file that is not a redb database, is damaged beyond redb's
    /// repair, or is held by another process; [`Error::UnsupportedFormat`] for a file
    /// written by a newer Cairn.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let existed = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        let file = path.clone();
        Self::open_with(path, existed, move || {
            Database::create(file).map(Handle::Writable)
        })
    }

    /// Opens an existing Cairn database for reading only, for tools (an auditor's
    /// replay, an export) beside no host. Nothing is written: not even the repair redb
    /// makes after a crash, which only a host's open performs.
    ///
    /// # Errors
    /// [`Error::Open`] when the file does not exist (none is created), when a host has it
    /// open (redb allows one process to hold a file for writing, and a reader beside it
    /// could read pages it is rewriting), when it was not closed cleanly and needs the
    /// repair a host's open makes, or when it is not a Cairn database;
    /// [`Error::UnsupportedFormat`] for a newer Cairn's file.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let refused = match std::fs::metadata(&path) {
            Err(_) => Some("no such database file"),
            Ok(found) if found.is_dir() => Some("it is a directory, not a database file"),
            Ok(found) if !found.is_file() => Some("it is not a regular file"),
            Ok(found) if found.len() == 0 => {
                Some("the file is empty (a copy that failed, or not a database)")
            }
            Ok(_) => None,
        };
        if let Some(message) = refused {
            return Err(Error::Open {
                path,
                message: message.into(),
                remedy: "Check the path; a read-only open creates nothing.",
            });
        }
        let file = path.clone();
        Self::open_with(path, true, move || {
            ReadOnlyDatabase::open(file).map(Handle::ReadOnly)
        })
    }

    /// Opens a store on any redb storage backend (tests use `cairn_testkit::fault::FaultDisk`);
    /// `label` stands for the path in messages, `existed` says whether the backend
    /// already holds a database (which is then never written at open).
    ///
    /// # Errors
    /// As [`RedbStore::open`].
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        label: &Path,
        existed: bool,
    ) -> Result<Self> {
        Self::open_with(label.to_path_buf(), existed, move || {
            redb::Builder::new()
                .create_with_backend(backend)
                .map(Handle::Writable)
        })
    }

    /// Opens the database `create` makes and checks its format, with redb panics on a
    /// damaged file contained as an error naming `path`.
    fn open_with(
        path: PathBuf,
        existed: bool,
        create: impl FnOnce() -> std::result::Result<Handle, redb::DatabaseError>,
    ) -> Result<Self> {
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = create().map_err(|err| open_error(&path, err))?;
            let store = Self {
                db: RwLock::new(Some(db)),
                path: path.clone(),
                poisoned: AtomicBool::new(false),
                format: std::sync::atomic::AtomicU32::new(STORAGE_FORMAT),
            };
            store.check_format(existed)?;
            Ok(store)
        }));
        opened.unwrap_or_else(|panic| {
            Err(Error::Open {
                path: path.clone(),
                message: format!(
                    "redb failed on the file's contents ({})",
                    crate::error::panic_message(&panic)
                ),
                remedy: "The file is damaged. Keep a copy, and restore it from a backup.",
            })
        })
    }

    /// Runs one storage operation, turning a panic inside redb into a typed error.
    ///
    /// redb 4.6 indexes into page data it read from disk, and on some damaged files that
    /// panics (measured: about one in a thousand random single-byte flips) instead of
    /// returning `StorageError::Corrupted`. A damaged file must give an error naming it,
    /// never bring the host down.
    fn contain<T>(&self, operation: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.poisoned.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Corrupt {
                location: format!("{} ({operation})", self.path.display()),
                message: "an earlier operation found the file damaged; reopen it after restoring a backup".into(),
            });
        }
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
                self.poisoned
                    .store(true, std::sync::atomic::Ordering::Release);
                Err(Error::Corrupt {
                    location: format!("{} ({operation})", self.path.display()),
                    message: format!(
                        "redb failed on the file's contents: {}",
                        crate::error::panic_message(&panic)
                    ),
                })
            });
        // redb's own errors do not name the file; an operator needs to know which one.
        result.map_err(|err| match err {
            Error::Storage(failure) => Error::Storage(failure.within(self.path.display())),
            other => other,
        })
    }

    /// The file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Result<MappedDb<'_>> {
        let guard = read(&self.db);
        if guard.is_none() {
            return Err(Error::ShutDown);
        }
        Ok(MappedDb(guard))
    }

    /// Whether the file already is a complete Cairn database of a format this build
    /// reads, found with a read transaction only.
    ///
    /// Opening an existing file writes nothing: redb 4.6 can panic on a damaged page
    /// inside a write transaction, and the table guard's destructor then panics again
    /// while unwinding, which aborts the process. A read never reaches that destructor.
    fn is_ready(&self) -> Result<bool> {
        let db = self.db()?;
        let txn = db
            .get()
            .begin_read()
            .map_err(|err| open_error(&self.path, err))?;
        let names: Vec<String> = txn
            .list_tables()
            .map_err(|err| open_error(&self.path, err))?
            .map(|table| table.name().to_owned())
            .collect();
        let mut marker = None;
        if names.iter().any(|n| n == "meta") {
            let meta = txn
                .open_table(META)
                .map_err(|err| open_error(&self.path, err))?;
            if let Some(value) = meta
                .get("format")
                .map_err(|err| open_error(&self.path, err))?
            {
                marker = Some(self.format_marker(value.value())?);
            }
        }
        self.refuse_foreign_tables(&names)?;
        let has = |table: &str| names.iter().any(|n| n == table);
        if !CAIRN_TABLES.iter().all(|t| has(t)) {
            return Ok(false);
        }
        // A complete file without a marker predates it: format 1, migrated like one.
        let found = marker.unwrap_or(1);
        // The list of unfinished runs its format keeps; without it, the file is damaged
        // (or half of something else), never guessed at.
        let runs_table = if found >= OPEN_RUNS_FORMAT {
            "open_runs"
        } else {
            "running"
        };
        if !has(runs_table) {
            return Ok(false);
        }
        self.format
            .store(found, std::sync::atomic::Ordering::Release);
        Ok(true)
    }

    /// The storage format a file's `meta` marker names, refused if it is newer than
    /// this build's or not a marker at all.
    fn format_marker(&self, value: &[u8]) -> Result<u32> {
        let bytes: [u8; 4] = value.try_into().map_err(|_| Error::Corrupt {
            location: format!("meta table of {}", self.path.display()),
            message: "format version is not 4 bytes".into(),
        })?;
        let found = u32::from_le_bytes(bytes);
        if found > STORAGE_FORMAT {
            return Err(Error::UnsupportedFormat {
                path: self.path.clone(),
                found,
                supported: STORAGE_FORMAT,
            });
        }
        Ok(found)
    }

    /// Refuses a file holding tables Cairn does not make: it belongs to another program,
    /// and writing ours into it would damage it.
    fn refuse_foreign_tables(&self, names: &[String]) -> Result<()> {
        let foreign: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|name| !CAIRN_TABLES.contains(name) && !LATER_TABLES.contains(name))
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        Err(Error::Open {
            path: self.path.clone(),
            message: format!(
                "it is a redb database of another program (tables: {})",
                foreign.join(", ")
            ),
            remedy: "Check the path: Cairn only opens files it created. If it is the right file, its table names are damaged: restore it from a backup.",
        })
    }

    fn check_format(&self, existed: bool) -> Result<()> {
        if self.is_ready()? {
            if self.format_found() < STORAGE_FORMAT {
                self.migrate().map_err(|err| Error::Open {
                    path: self.path.clone(),
                    message: format!(
                        "migrating it to storage format {STORAGE_FORMAT} failed ({err})"
                    ),
                    remedy: "Nothing was changed. If the file is damaged, restore it from a backup; `cairn verify` (read-only) shows which histories are intact.",
                })?;
            }
            return Ok(());
        }
        if existed {
            // Writing into a file that is not a complete Cairn database could damage a
            // file of another program or a damaged Cairn file further; refuse instead.
            return Err(Error::Open {
                path: self.path.clone(),
                message: "it is not a complete Cairn database (tables or format marker missing)".into(),
                remedy: "Check the path; if it is a Cairn file, it is damaged: restore it from a backup.",
            });
        }
        let db = self.db()?;
        let txn = db
            .get()
            .writable(&self.path)?
            .begin_write()
            .map_err(|err| open_error(&self.path, err))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|err| open_error(&self.path, err))?;
            // The guard borrows the table: the answer is taken before `insert` below.
            let marked = match meta
                .get("format")
                .map_err(|err| open_error(&self.path, err))?
            {
                Some(value) => self.format_marker(value.value()).map(|_| true)?,
                None => false,
            };
            if !marked {
                // A new file has no tables; a redb file with tables but no format marker
                // belongs to another program.
                let names: Vec<String> = txn
                    .list_tables()
                    .map_err(|err| open_error(&self.path, err))?
                    .map(|table| table.name().to_owned())
                    .collect();
                self.refuse_foreign_tables(&names)?;
                meta.insert("format", STORAGE_FORMAT.to_le_bytes().as_slice())
                    .map_err(|err| open_error(&self.path, err))?;
            }
            // Creating the tables up front lets readers open them without a write.
            txn.open_table(LOG)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(INSTANCES)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(IDS)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(ATTRIBUTES)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(OPEN_RUNS)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(SCHEDULES)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(PARKED)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(BY_TYPE)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(BY_STATUS)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(BY_ATTRIBUTE)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(OPEN_TASKS)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(TASK_INBOX)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(OUTBOX)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(OUTBOX_DUE)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(DOCUMENTS)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(COUNTS)
                .map_err(|err| open_error(&self.path, err))?;
            txn.open_table(ACTIVITY)
                .map_err(|err| open_error(&self.path, err))?;
        }
        txn.commit().map_err(|err| open_error(&self.path, err))
    }

    /// The storage format the file is at (see `format`).
    fn format_found(&self) -> u32 {
        self.format.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Brings a file of an older format to [`STORAGE_FORMAT`] in one transaction: builds
    /// the query indexes from the instance rows and attributes (before format 3), the
    /// open-task index from the logs of running instances (before format 4), creates the
    /// tables the formats added, raises the marker. A read-only handle is left as it is.
    fn migrate(&self) -> Result<()> {
        let db = self.db()?;
        let Handle::Writable(db) = db.get() else {
            return Ok(());
        };
        let found = self.format_found();
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        let mut runs = 0usize;
        if found < INDEXED_FORMAT {
            let instances = txn.open_table(INSTANCES).map_err(storage)?;
            let attributes = txn.open_table(ATTRIBUTES).map_err(storage)?;
            let mut by_type = txn.open_table(BY_TYPE).map_err(storage)?;
            let mut by_status = txn.open_table(BY_STATUS).map_err(storage)?;
            let mut by_attribute = txn.open_table(BY_ATTRIBUTE).map_err(storage)?;
            for entry in instances.iter().map_err(storage)? {
                let (key, bytes) = entry.map_err(storage)?;
                let row = decode_row(key.value(), bytes.value())?;
                let at = (row.created_at_ms, row.key);
                by_type
                    .insert((row.workflow_type.as_str(), at.0, at.1), ())
                    .map_err(storage)?;
                if row.status.is_finished() {
                    by_status
                        .insert((row.status.code(), at.0, at.1), ())
                        .map_err(storage)?;
                }
                if let Some(held) = attributes.get(row.key).map_err(storage)? {
                    for (name, value) in decode_attributes(row.key, held.value())? {
                        let value = attribute_bytes(&value)?;
                        by_attribute
                            .insert((name.as_str(), value.as_slice(), at.0, at.1), ())
                            .map_err(storage)?;
                    }
                }
                runs += 1;
            }
        }
        if found < OPEN_RUNS_FORMAT {
            move_to_open_runs(&txn)?;
        }
        // The task index is rebuilt whatever the older format: it is derived, and a
        // rebuild also repairs one that was dropped.
        let tasks = crate::tasks::rebuild(&txn)?;
        txn.open_table(PARKED).map_err(storage)?;
        // Notifications start with format 5: events recorded before it are not notified.
        txn.open_table(OUTBOX).map_err(storage)?;
        txn.open_table(OUTBOX_DUE).map_err(storage)?;
        txn.open_table(DOCUMENTS).map_err(storage)?;
        if found < TALLIES_FORMAT {
            recount(&txn)?;
        }
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert("format", STORAGE_FORMAT.to_le_bytes().as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        self.format
            .store(STORAGE_FORMAT, std::sync::atomic::Ordering::Release);
        tracing::info!(path = %self.path.display(), from = found, runs, tasks, format = STORAGE_FORMAT, "migrated the file to the current storage format");
        Ok(())
    }

    /// A read transaction that also holds the store open, so `close` waits for it.
    fn read(&self) -> Result<Reading<'_>> {
        let db = self.db()?;
        let txn = db.get().begin_read().map_err(storage)?;
        Ok(Reading { txn, _db: db })
    }
}

/// A read transaction plus the guard that keeps the database open while it lives.
/// Field order matters: the transaction is dropped before the guard.
struct Reading<'a> {
    txn: redb::ReadTransaction,
    _db: MappedDb<'a>,
}

impl std::ops::Deref for Reading<'_> {
    type Target = redb::ReadTransaction;

    fn deref(&self) -> &Self::Target {
        &self.txn
    }
}

/// The redb handle: a host's (read and write) or a tool's (read only, beside no host).
enum Handle {
    Writable(Database),
    ReadOnly(ReadOnlyDatabase),
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handle::Writable(_) => "Writable",
            Handle::ReadOnly(_) => "ReadOnly",
        })
    }
}

impl Handle {
    fn begin_read(&self) -> std::result::Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Handle::Writable(db) => db.begin_read(),
            Handle::ReadOnly(db) => db.begin_read(),
        }
    }

    fn writable(&self, path: &Path) -> Result<&Database> {
        match self {
            Handle::Writable(db) => Ok(db),
            Handle::ReadOnly(_) => Err(Error::Storage(StorageFailure::new(format!(
                "{} is open read-only (RedbStore::open_read_only); open it with a host to write",
                path.display()
            )))),
        }
    }
}

/// A read guard on an open database.
struct MappedDb<'a>(RwLockReadGuard<'a, Option<Handle>>);

impl MappedDb<'_> {
    fn get(&self) -> &Handle {
        // `RedbStore::db` only builds a `MappedDb` after checking the option is `Some`,
        // and the read guard keeps it so.
        match self.0.as_ref() {
            Some(db) => db,
            None => unreachable!("MappedDb is only built over an open database"),
        }
    }
}

fn open_error(path: &Path, err: impl Into<redb::Error>) -> Error {
    let err: redb::Error = err.into();
    let (message, remedy) = match &err {
        redb::Error::DatabaseAlreadyOpen => (
            "a host has it open (one process at a time may hold a Cairn file)".to_owned(),
            "Stop that host first. A read-only open beside a running host is refused too: it could read pages the host is rewriting.",
        ),
        redb::Error::RepairAborted => (
            "it needs the repair made after an unclean stop, which a read-only open does not make; a copy cut short, or taken while a host was writing, looks the same".to_owned(),
            "If it is a copy, copy the file again while its host is stopped and compare the sizes. If it is a host's own file, open it once with a host (that open repairs it, and writes to the file: work on a copy if the file is evidence).",
        ),
        redb::Error::Corrupted(msg) => (
            format!("the file is not a valid redb database or is damaged ({msg})"),
            "Check the path; if it is the right file, restore it from a backup.",
        ),
        redb::Error::UpgradeRequired(version) => (
            format!("the file uses redb file format {version}, which this build cannot read"),
            "Open it with the Cairn release that wrote it, or migrate it with redb's upgrade tools.",
        ),
        redb::Error::TableTypeMismatch { .. } | redb::Error::TableIsMultimap(_) | redb::Error::TableIsNotMultimap(_) => (
            err.to_string(),
            "The file is a redb database of another program, or a damaged Cairn file; check the path, and if it is the right file restore it from a backup.",
        ),
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => (
            "the file ends before the structure it holds says it should (cut short, damaged, or not a database)".to_owned(),
            "If it is a copy, copy it again and compare the sizes; if it is the right file, restore it from a backup.",
        ),
        redb::Error::Io(io) => (
            format!("I/O error: {io}"),
            "Check that the path is a regular file this process may read (and write, for a host).",
        ),
        _ => (err.to_string(), "Check the path and the file's integrity; restore from a backup if it is damaged."),
    };
    Error::Open {
        path: path.to_path_buf(),
        message,
        remedy,
    }
}

impl Store for RedbStore {
    fn commit(&self, batch: &WriteBatch) -> Result<()> {
        self.contain("commit", || {
            let db = self.db()?;
            let mut txn = db
                .get()
                .writable(&self.path)?
                .begin_write()
                .map_err(storage)?;
            txn.set_durability(Durability::Immediate).map_err(storage)?;
            {
                let mut log = txn.open_table(LOG).map_err(storage)?;
                for (lsn, envelope) in &batch.events {
                    log.insert(*lsn, envelope.as_slice()).map_err(storage)?;
                }
                let mut instances = txn.open_table(INSTANCES).map_err(storage)?;
                for (key, row) in &batch.rows {
                    instances.insert(*key, row.as_slice()).map_err(storage)?;
                }
                if !batch.ids.is_empty() {
                    let mut ids = txn.open_table(IDS).map_err(storage)?;
                    for (id, key) in &batch.ids {
                        ids.insert(id.as_str(), *key).map_err(storage)?;
                    }
                }
                if !batch.attributes.is_empty() {
                    let mut attributes = txn.open_table(ATTRIBUTES).map_err(storage)?;
                    for (key, bytes) in &batch.attributes {
                        attributes.insert(*key, bytes.as_slice()).map_err(storage)?;
                    }
                }
                if !batch.schedules.is_empty() {
                    let mut schedules = txn.open_table(SCHEDULES).map_err(storage)?;
                    for (id, row) in &batch.schedules {
                        match row {
                            Some(row) => schedules.insert(id.as_str(), row.as_slice()).map(drop),
                            None => schedules.remove(id.as_str()).map(drop),
                        }
                        .map_err(storage)?;
                    }
                }
                if !batch.running.is_empty() || !batch.finished.is_empty() {
                    let mut open_runs = txn.open_table(OPEN_RUNS).map_err(storage)?;
                    for (at, bytes) in &batch.running {
                        open_runs.insert(*at, bytes.as_slice()).map_err(storage)?;
                    }
                    for at in &batch.finished {
                        open_runs.remove(*at).map_err(storage)?;
                    }
                }
                if !batch.parked.is_empty() {
                    let mut parked = txn.open_table(PARKED).map_err(storage)?;
                    for (key, row) in &batch.parked {
                        match row {
                            Some(row) => parked.insert(*key, row.as_slice()).map(drop),
                            None => parked.remove(*key).map(drop),
                        }
                        .map_err(storage)?;
                    }
                }
                if !batch.index.is_empty() {
                    apply_index(&txn, &batch.index)?;
                }
                if !batch.outbox.is_empty() {
                    crate::outbox::apply(&txn, &batch.outbox)?;
                }
                if !batch.documents.is_empty() {
                    let mut documents = txn.open_table(DOCUMENTS).map_err(storage)?;
                    for (sha256, bytes) in &batch.documents {
                        let stored = documents.get(sha256.as_slice()).map_err(storage)?.is_some();
                        if !stored {
                            documents
                                .insert(sha256.as_slice(), bytes.as_slice())
                                .map_err(storage)?;
                        }
                    }
                }
            }
            txn.commit().map_err(storage)?;
            Ok(())
        })
    }

    fn parked(&self) -> Result<Vec<(u128, ParkedRow)>> {
        self.contain("parked", || {
            let txn = self.read()?;
            let table = match txn.open_table(PARKED) {
                Ok(table) => table,
                // A format-1 file before its first commit: nothing parked is recorded.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(err) => return Err(storage(err)),
            };
            let mut out = Vec::new();
            for entry in table.iter().map_err(storage)? {
                let (key, bytes) = entry.map_err(storage)?;
                let key = key.value();
                out.push((key, decode_parked(key, bytes.value())?));
            }
            Ok(out)
        })
    }

    fn tallies(&self, activity_from_ms: u64) -> Result<Option<cairn_core::journal::Tallies>> {
        if self.format_found() < TALLIES_FORMAT {
            return Ok(None);
        }
        self.contain("tallies", || {
            let txn = self.read()?;
            read_tallies(&txn, activity_from_ms).map(Some)
        })
    }

    fn schedules(&self) -> Result<Vec<(String, ScheduleRow)>> {
        self.contain("schedules", || {
            let txn = self.read()?;
            let table = txn.open_table(SCHEDULES).map_err(storage)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(storage)? {
                let (id, bytes) = entry.map_err(storage)?;
                let id = id.value().to_owned();
                let row = decode_schedule(&id, bytes.value())?;
                out.push((id, row));
            }
            Ok(out)
        })
    }

    fn scan_running(&self, visit: &mut dyn FnMut(u128, Option<Suspension>)) -> Result<()> {
        self.contain("scan_running", || {
            let mut entries = Vec::new();
            {
                let txn = self.read()?;
                if self.format_found() >= OPEN_RUNS_FORMAT {
                    let open_runs = txn.open_table(OPEN_RUNS).map_err(storage)?;
                    for entry in open_runs.iter().map_err(storage)? {
                        let (at, bytes) = entry.map_err(storage)?;
                        let (_, key) = at.value();
                        let suspension = decode_suspension("open_runs", key, bytes.value())?;
                        entries.push((key, suspension));
                    }
                } else {
                    // An older file opened read-only (a writable open has migrated it).
                    let running = txn.open_table(LEGACY_RUNNING).map_err(storage)?;
                    for entry in running.iter().map_err(storage)? {
                        let (key, bytes) = entry.map_err(storage)?;
                        let key = key.value();
                        entries.push((key, decode_suspension("running", key, bytes.value())?));
                    }
                }
            }
            // Visit after the read ends, so the visitor may use the store.
            for (key, suspension) in entries {
                visit(key, suspension);
            }
            Ok(())
        })
    }

    fn attributes(&self, key: u128) -> Result<Attributes> {
        self.contain("attributes", || {
            let txn = self.read()?;
            let table = txn.open_table(ATTRIBUTES).map_err(storage)?;
            match table.get(key).map_err(storage)? {
                Some(bytes) => decode_attributes(key, bytes.value()),
                None => Ok(Attributes::new()),
            }
        })
    }

    fn next_lsn(&self) -> Result<u64> {
        self.contain("next_lsn", || {
            let txn = self.read()?;
            let log = txn.open_table(LOG).map_err(storage)?;
            let last = log.last().map_err(storage)?.map(|(lsn, _)| lsn.value());
            match last {
                None => Ok(1),
                Some(lsn) => lsn.checked_add(1).ok_or_else(|| Error::Corrupt {
                    location: "log table".into(),
                    message: format!("its last LSN is {lsn}, which leaves no next one"),
                }),
            }
        })
    }

    fn key_of(&self, id: &str) -> Result<Option<u128>> {
        self.contain("key_of", || {
            let txn = self.read()?;
            let ids = txn.open_table(IDS).map_err(storage)?;
            Ok(ids.get(id).map_err(storage)?.map(|guard| guard.value()))
        })
    }

    fn instance(&self, key: u128) -> Result<Option<InstanceRow>> {
        self.contain("instance", || {
            let txn = self.read()?;
            let instances = txn.open_table(INSTANCES).map_err(storage)?;
            match instances.get(key).map_err(storage)? {
                Some(bytes) => decode_row(key, bytes.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    fn query(&self, query: &InstanceQuery) -> Result<InstancePage> {
        self.contain("query", || {
            let txn = self.read()?;
            let format = self.format_found();
            if format >= INDEXED_FORMAT {
                // A file of formats 3 to 9 opened read-only keeps its running runs in
                // `by_status` (status 0); a writable open has migrated it.
                query_indexed(&txn, query, format < OPEN_RUNS_FORMAT)
            } else {
                query_by_scan(&txn, query)
            }
        })
    }

    fn tasks(
        &self,
        query: &cairn_core::journal::TaskQuery,
    ) -> Result<cairn_core::journal::TaskPage> {
        self.contain("tasks", || {
            if self.format_found() < TASKS_FORMAT {
                // No task events before format 4: an older file opened read-only has none.
                return Ok(cairn_core::journal::TaskPage::default());
            }
            let txn = self.read()?;
            crate::tasks::query(&txn, query)
        })
    }

    fn outbox_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<(Vec<cairn_core::notify::OutboxRow>, Option<u64>)> {
        self.contain("outbox_due", || {
            if self.format_found() < OUTBOX_FORMAT {
                return Ok((Vec::new(), None));
            }
            let txn = self.read()?;
            crate::outbox::due(&txn, now_ms, limit)
        })
    }

    fn outbox(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<cairn_core::notify::OutboxRow>> {
        self.contain("outbox", || {
            if self.format_found() < OUTBOX_FORMAT {
                return Ok(Vec::new());
            }
            let txn = self.read()?;
            crate::outbox::list(&txn, after, limit)
        })
    }

    fn document_bytes(&self, sha256: [u8; 32]) -> Result<Option<Vec<u8>>> {
        self.contain("document_bytes", || {
            if self.format_found() < DOCUMENTS_FORMAT {
                return Ok(None);
            }
            let txn = self.read()?;
            let table = txn.open_table(DOCUMENTS).map_err(storage)?;
            let found = table.get(sha256.as_slice()).map_err(storage)?;
            Ok(found.map(|bytes| bytes.value().to_vec()))
        })
    }

    fn outbox_holds(&self, id: u64) -> Result<bool> {
        self.contain("outbox_holds", || {
            if self.format_found() < OUTBOX_FORMAT {
                return Ok(false);
            }
            let txn = self.read()?;
            let table = txn.open_table(OUTBOX).map_err(storage)?;
            Ok(table.get(id).map_err(storage)?.is_some())
        })
    }

    fn task(&self, key: u128, step: u32) -> Result<Option<cairn_core::task::TaskRow>> {
        self.contain("task", || {
            if self.format_found() < TASKS_FORMAT {
                return Ok(None);
            }
            let txn = self.read()?;
            let table = txn.open_table(OPEN_TASKS).map_err(storage)?;
            let row = table.get((key, step)).map_err(storage)?;
            row.map(|bytes| crate::tasks::decode_row(key, step, bytes.value()))
                .transpose()
        })
    }

    fn scan_instances(&self, visit: &mut dyn FnMut(InstanceRow) -> bool) -> Result<()> {
        self.contain("scan_instances", || {
            let txn = self.read()?;
            let instances = txn.open_table(INSTANCES).map_err(storage)?;
            for entry in instances.iter().map_err(storage)? {
                let (key, bytes) = entry.map_err(storage)?;
                let row = decode_row(key.value(), bytes.value())?;
                if !visit(row) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn envelope(&self, lsn: u64) -> Result<Option<Vec<u8>>> {
        self.contain("envelope", || {
            let txn = self.read()?;
            let log = txn.open_table(LOG).map_err(storage)?;
            Ok(log
                .get(lsn)
                .map_err(storage)?
                .map(|guard| guard.value().to_vec()))
        })
    }

    fn raw_history(&self, key: u128) -> Result<Option<RawHistory>> {
        self.contain("history", || {
            let txn = self.read()?;
            let instances = txn.open_table(INSTANCES).map_err(storage)?;
            let row = match instances.get(key).map_err(storage)? {
                Some(bytes) => decode_row(key, bytes.value())?,
                None => return Ok(None),
            };
            let log = txn.open_table(LOG).map_err(storage)?;
            let events = read_events(&row, &log)?;
            Ok(Some(RawHistory { row, events }))
        })
    }

    fn close(&self) {
        let db = write(&self.db).take();
        if self.poisoned.load(std::sync::atomic::Ordering::Acquire) {
            // redb's destructor may wait on transaction state the panic left behind; the
            // handle (and its file lock) is released when the process exits instead.
            std::mem::forget(db);
        } else {
            drop(db);
        }
    }
}

/// Applies index changes inside a commit's transaction.
fn apply_index(txn: &redb::WriteTransaction, changes: &[IndexChange]) -> Result<()> {
    let mut by_type = txn.open_table(BY_TYPE).map_err(storage)?;
    let mut by_status = txn.open_table(BY_STATUS).map_err(storage)?;
    let mut by_attribute = txn.open_table(BY_ATTRIBUTE).map_err(storage)?;
    let mut tasks = crate::tasks::TaskTables::open(txn)?;
    let mut tally = Tally::default();
    for change in changes {
        match change {
            IndexChange::Task(change) => tasks.apply(change)?,
            IndexChange::Started {
                key,
                created_at_ms,
                workflow_type,
            } => {
                // Its `open_runs` entry (written with the run's other rows) lists it as
                // running.
                by_type
                    .insert((workflow_type.as_str(), *created_at_ms, *key), ())
                    .map_err(storage)?;
                tally.started(workflow_type, *created_at_ms);
            }
            IndexChange::Ended {
                key,
                workflow_type,
                created_at_ms,
                ended_at_ms,
                to,
            } => {
                tally.ended(workflow_type, *ended_at_ms, *to);
                by_status
                    .insert((to.code(), *created_at_ms, *key), ())
                    .map_err(storage)?;
            }
            IndexChange::Attribute {
                key,
                created_at_ms,
                name,
                old,
                new,
            } => {
                if let Some(old) = old {
                    by_attribute
                        .remove((name.as_str(), old.as_slice(), *created_at_ms, *key))
                        .map_err(storage)?;
                }
                by_attribute
                    .insert((name.as_str(), new.as_slice(), *created_at_ms, *key), ())
                    .map_err(storage)?;
            }
        }
    }
    tally.write(txn)
}

/// The migration to format 10: the unfinished runs move from `running` (by key) to
/// `open_runs` (by start time and key), which also serves the queries for status
/// `Running`; `by_status` drops its running entries and `by_start` goes.
fn move_to_open_runs(txn: &redb::WriteTransaction) -> Result<()> {
    {
        let instances = txn.open_table(INSTANCES).map_err(storage)?;
        let running = txn.open_table(LEGACY_RUNNING).map_err(storage)?;
        let mut open_runs = txn.open_table(OPEN_RUNS).map_err(storage)?;
        for entry in running.iter().map_err(storage)? {
            let (key, bytes) = entry.map_err(storage)?;
            let key = key.value();
            let Some(row) = instances.get(key).map_err(storage)? else {
                // An index entry naming nothing: there is no run to resume, and older
                // builds skipped it too. Said loudly, not carried over; the histories
                // are untouched, and `cairn verify` reads them.
                tracing::error!(
                    key = format_args!("{key:032x}"),
                    "the running table lists a run the instances table does not hold; left out of open_runs"
                );
                continue;
            };
            let row = decode_row(key, row.value())?;
            open_runs
                .insert((row.created_at_ms, key), bytes.value())
                .map_err(storage)?;
        }
        let mut by_status = txn.open_table(BY_STATUS).map_err(storage)?;
        let running = InstanceStatus::Running.code();
        by_status
            .retain_in((running, 0, 0)..=(running, u64::MAX, u128::MAX), |_, ()| {
                false
            })
            .map_err(storage)?;
    }
    txn.delete_table(LEGACY_RUNNING).map_err(storage)?;
    txn.delete_table(LEGACY_BY_START).map_err(storage)?;
    Ok(())
}

/// Changes to the tallies, summed over a whole commit first: a batch of a thousand
/// starts of one type then costs one read and one write of its count.
#[derive(Default)]
struct Tally<'a> {
    counts: std::collections::BTreeMap<(&'a str, u8), i64>,
    activity: std::collections::BTreeMap<(u64, &'a str, u8), u64>,
}

impl<'a> Tally<'a> {
    fn started(&mut self, workflow_type: &'a str, at_ms: u64) {
        *self
            .counts
            .entry((workflow_type, InstanceStatus::Running.code()))
            .or_default() += 1;
        *self
            .activity
            .entry((tally_bucket(at_ms), workflow_type, STARTED_CODE))
            .or_default() += 1;
    }

    fn ended(&mut self, workflow_type: &'a str, at_ms: u64, to: InstanceStatus) {
        *self
            .counts
            .entry((workflow_type, InstanceStatus::Running.code()))
            .or_default() -= 1;
        *self.counts.entry((workflow_type, to.code())).or_default() += 1;
        *self
            .activity
            .entry((tally_bucket(at_ms), workflow_type, to.code()))
            .or_default() += 1;
    }

    fn write(&self, txn: &redb::WriteTransaction) -> Result<()> {
        if self.counts.is_empty() {
            return Ok(());
        }
        let mut counts = txn.open_table(COUNTS).map_err(storage)?;
        for (key, delta) in &self.counts {
            if *delta == 0 {
                continue;
            }
            let held = counts.get(*key).map_err(storage)?.map_or(0, |n| n.value());
            // Never below zero: a count is derived, and one run's events cannot end it
            // twice; saturating keeps a damaged tally from wrapping round.
            let count = if *delta < 0 {
                held.saturating_sub(delta.unsigned_abs())
            } else {
                held.saturating_add(delta.unsigned_abs())
            };
            counts.insert(*key, count).map_err(storage)?;
        }
        let mut activity = txn.open_table(ACTIVITY).map_err(storage)?;
        for (key, added) in &self.activity {
            let held = activity
                .get(*key)
                .map_err(storage)?
                .map_or(0, |n| n.value());
            activity
                .insert(*key, held.saturating_add(*added))
                .map_err(storage)?;
        }
        Ok(())
    }
}

/// Rebuilds the tallies from the instance rows (a run's end time is its row's last
/// update), replacing whatever they held.
fn recount(txn: &redb::WriteTransaction) -> Result<()> {
    txn.delete_table(COUNTS).map_err(storage)?;
    txn.delete_table(ACTIVITY).map_err(storage)?;
    let instances = txn.open_table(INSTANCES).map_err(storage)?;
    let mut rows = Vec::new();
    for entry in instances.iter().map_err(storage)? {
        let (key, bytes) = entry.map_err(storage)?;
        let row = decode_row(key.value(), bytes.value())?;
        rows.push((
            row.workflow_type,
            row.created_at_ms,
            row.updated_at_ms,
            row.status,
        ));
        // Written in slices so a million-run file does not hold every row at once.
        if rows.len() == 10_000 {
            recount_rows(txn, &rows)?;
            rows.clear();
        }
    }
    recount_rows(txn, &rows)
}

fn recount_rows(
    txn: &redb::WriteTransaction,
    rows: &[(String, u64, u64, InstanceStatus)],
) -> Result<()> {
    let mut tally = Tally::default();
    for (workflow_type, created_at_ms, updated_at_ms, status) in rows {
        tally.started(workflow_type, *created_at_ms);
        if status.is_finished() {
            tally.ended(workflow_type, *updated_at_ms, *status);
        }
    }
    // The tables exist even when there is nothing to count.
    txn.open_table(COUNTS).map_err(storage)?;
    txn.open_table(ACTIVITY).map_err(storage)?;
    tally.write(txn)
}

fn read_tallies(
    txn: &redb::ReadTransaction,
    activity_from_ms: u64,
) -> Result<cairn_core::journal::Tallies> {
    let mut tallies = cairn_core::journal::Tallies::default();
    let counts = txn.open_table(COUNTS).map_err(storage)?;
    for entry in counts.iter().map_err(storage)? {
        let (key, count) = entry.map_err(storage)?;
        let (workflow_type, code) = key.value();
        let status = InstanceStatus::from_code(code).ok_or_else(|| Error::Corrupt {
            location: format!("counts table, type `{workflow_type}`"),
            message: format!("unknown status code {code}"),
        })?;
        if count.value() > 0 {
            tallies
                .by_status
                .insert((workflow_type.to_owned(), status), count.value());
        }
    }
    let activity = txn.open_table(ACTIVITY).map_err(storage)?;
    let from = (tally_bucket(activity_from_ms), "", 0u8);
    let mut buckets: std::collections::BTreeMap<(u64, String), ActivityBucket> =
        std::collections::BTreeMap::new();
    for entry in activity.range(from..).map_err(storage)? {
        let (key, count) = entry.map_err(storage)?;
        let (at_ms, workflow_type, code) = key.value();
        let bucket = buckets
            .entry((at_ms, workflow_type.to_owned()))
            .or_insert_with(|| ActivityBucket {
                workflow_type: workflow_type.to_owned(),
                at_ms,
                ..ActivityBucket::default()
            });
        if code == STARTED_CODE {
            bucket.started += count.value();
        } else {
            let status = InstanceStatus::from_code(code).ok_or_else(|| Error::Corrupt {
                location: format!("activity table, bucket {at_ms}, type `{workflow_type}`"),
                message: format!("unknown status code {code}"),
            })?;
            *bucket.ended.entry(status).or_default() += count.value();
        }
    }
    tallies.activity = buckets.into_values().collect();
    Ok(tallies)
}

/// Collects the rows of one page from index entries given in start order.
struct PageCollector<'q> {
    query: &'q InstanceQuery,
    /// The lower bound: start after this (created, key), or at it when inclusive.
    from: (u64, u128),
    from_exclusive: bool,
    limit: usize,
    page: InstancePage,
}

impl<'q> PageCollector<'q> {
    fn new(query: &'q InstanceQuery) -> Self {
        let floor = (query.created_from_ms.unwrap_or(0), 0u128);
        let (from, from_exclusive) = match query.after {
            Some(after) if (after.created_at_ms, after.key) >= floor => {
                ((after.created_at_ms, after.key), true)
            }
            _ => (floor, false),
        };
        Self {
            query,
            from,
            from_exclusive,
            limit: match query.limit {
                0 => PAGE_ROWS_MAX,
                n => n.min(PAGE_ROWS_MAX),
            },
            page: InstancePage::default(),
        }
    }

    /// Looks at the run an index entry names; `false` once the page is complete or the
    /// entries have passed the query's time range.
    fn visit(
        &mut self,
        created_at_ms: u64,
        key: u128,
        instances: &redb::ReadOnlyTable<u128, &[u8]>,
        attributes: &redb::ReadOnlyTable<u128, &[u8]>,
    ) -> Result<bool> {
        if self.from_exclusive && (created_at_ms, key) == self.from {
            return Ok(true);
        }
        if self
            .query
            .created_until_ms
            .is_some_and(|until| created_at_ms >= until)
        {
            return Ok(false);
        }
        let row = match instances.get(key).map_err(storage)? {
            Some(bytes) => decode_row(key, bytes.value())?,
            None => {
                return Err(Error::Corrupt {
                    location: "query indexes".into(),
                    message: format!("an index entry names key {key:032x}, which has no row"),
                })
            }
        };
        if !matches(self.query, &row) {
            return Ok(true);
        }
        if !self.query.attributes.is_empty() {
            let held = match attributes.get(key).map_err(storage)? {
                Some(bytes) => decode_attributes(key, bytes.value())?,
                None => Attributes::new(),
            };
            let all = self
                .query
                .attributes
                .iter()
                .all(|(name, value)| held.get(name) == Some(value));
            if !all {
                return Ok(true);
            }
        }
        if self.page.rows.len() == self.limit {
            self.page.next = self.page.rows.last().map(Cursor::after);
            return Ok(false);
        }
        self.page.rows.push(row);
        Ok(true)
    }
}

/// Whether `row` passes the row-level conditions of `query` (not its attributes).
fn matches(query: &InstanceQuery, row: &InstanceRow) -> bool {
    query
        .workflow_type
        .as_ref()
        .is_none_or(|t| *t == row.workflow_type)
        && (query.statuses.is_empty() || query.statuses.contains(&row.status))
        && query
            .created_from_ms
            .is_none_or(|from| row.created_at_ms >= from)
        && query
            .created_until_ms
            .is_none_or(|until| row.created_at_ms < until)
        && query.after.is_none_or(|after| Cursor::after(row) > after)
}

/// A query answered from the most selective index it names: the first attribute, else the
/// type, else the statuses it names (every status when none): `open_runs` for running
/// runs, a `by_status` range for each final status, merged in start order. Only the
/// entries in the query's start range are read, and reading stops once the page is full.
/// `legacy`: the file is of a format before 10, whose `by_status` also lists the running
/// runs (status 0) and which has no `open_runs`.
fn query_indexed(
    txn: &redb::ReadTransaction,
    query: &InstanceQuery,
    legacy: bool,
) -> Result<InstancePage> {
    let instances = txn.open_table(INSTANCES).map_err(storage)?;
    let attributes = txn.open_table(ATTRIBUTES).map_err(storage)?;
    let mut pages = PageCollector::new(query);
    let (from_ms, from_key) = pages.from;
    let mut visit = |entries: &mut dyn Iterator<Item = Result<(u64, u128)>>| -> Result<()> {
        for entry in entries {
            let (created, key) = entry?;
            if !pages.visit(created, key, &instances, &attributes)? {
                break;
            }
        }
        Ok(())
    };
    if let Some((name, value)) = query.attributes.first() {
        let value = attribute_bytes(value)?;
        let table = txn.open_table(BY_ATTRIBUTE).map_err(storage)?;
        let start = (name.as_str(), value.as_slice(), from_ms, from_key);
        let end = (name.as_str(), value.as_slice(), u64::MAX, u128::MAX);
        let range = table.range(start..=end).map_err(storage)?;
        visit(&mut range.map(|entry| {
            let (_, _, created, key) = entry.map_err(storage)?.0.value();
            Ok((created, key))
        }))?;
    } else if let Some(workflow_type) = &query.workflow_type {
        let table = txn.open_table(BY_TYPE).map_err(storage)?;
        let start = (workflow_type.as_str(), from_ms, from_key);
        let end = (workflow_type.as_str(), u64::MAX, u128::MAX);
        let range = table.range(start..=end).map_err(storage)?;
        visit(&mut range.map(|entry| {
            let (_, created, key) = entry.map_err(storage)?.0.value();
            Ok((created, key))
        }))?;
    } else {
        let open_runs = if legacy {
            None
        } else {
            Some(txn.open_table(OPEN_RUNS).map_err(storage)?)
        };
        let by_status = txn.open_table(BY_STATUS).map_err(storage)?;
        let mut ranges: Vec<StartRange<'_>> = Vec::new();
        for status in InstanceStatus::ALL {
            if !(query.statuses.is_empty() || query.statuses.contains(&status)) {
                continue;
            }
            if let (InstanceStatus::Running, Some(open_runs)) = (status, &open_runs) {
                let range = open_runs
                    .range((from_ms, from_key)..=(u64::MAX, u128::MAX))
                    .map_err(storage)?;
                ranges.push(Box::new(
                    range.map(|entry| Ok(entry.map_err(storage)?.0.value())),
                ));
            } else {
                let code = status.code();
                let range = by_status
                    .range((code, from_ms, from_key)..=(code, u64::MAX, u128::MAX))
                    .map_err(storage)?;
                ranges.push(Box::new(range.map(|entry| {
                    let (_, created, key) = entry.map_err(storage)?.0.value();
                    Ok((created, key))
                })));
            }
        }
        visit(&mut MergedStarts::new(ranges))?;
    }
    Ok(pages.page)
}

/// One index range's (start time, key) entries, in order.
type StartRange<'a> = Box<dyn Iterator<Item = Result<(u64, u128)>> + 'a>;

/// Several start-ordered ranges read as one, in (start time, key) order: a run is in one
/// status at a time, so the ranges are disjoint; an entry found in two (a damaged index)
/// is still listed once.
struct MergedStarts<'a> {
    ranges: Vec<std::iter::Peekable<StartRange<'a>>>,
}

impl<'a> MergedStarts<'a> {
    fn new(ranges: Vec<StartRange<'a>>) -> Self {
        Self {
            ranges: ranges.into_iter().map(Iterator::peekable).collect(),
        }
    }
}

impl Iterator for MergedStarts<'_> {
    type Item = Result<(u64, u128)>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut smallest: Option<(u64, u128)> = None;
        for range in &mut self.ranges {
            match range.peek() {
                Some(Ok(at)) => smallest = Some(smallest.map_or(*at, |s| s.min(*at))),
                Some(Err(_)) => return range.next(),
                None => {}
            }
        }
        let at = smallest?;
        for range in &mut self.ranges {
            if matches!(range.peek(), Some(Ok(head)) if *head == at) {
                range.next();
            }
        }
        Some(Ok(at))
    }
}

/// A query on a file without indexes (an older format opened read-only): every row is
/// read and sorted by start time.
fn query_by_scan(txn: &redb::ReadTransaction, query: &InstanceQuery) -> Result<InstancePage> {
    let instances = txn.open_table(INSTANCES).map_err(storage)?;
    let attributes = txn.open_table(ATTRIBUTES).map_err(storage)?;
    let mut starts = Vec::new();
    for entry in instances.iter().map_err(storage)? {
        let (key, bytes) = entry.map_err(storage)?;
        let row = decode_row(key.value(), bytes.value())?;
        starts.push((row.created_at_ms, row.key));
    }
    starts.sort_unstable();
    let mut pages = PageCollector::new(query);
    for (created, key) in starts {
        if (created, key) < pages.from {
            continue;
        }
        if !pages.visit(created, key, &instances, &attributes)? {
            break;
        }
    }
    Ok(pages.page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_a_database_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(
            &path,
            b"these are my notes, not a database at all; ".repeat(200),
        )
        .unwrap();
        let err = RedbStore::open(&path).unwrap_err();
        assert_eq!(err.code(), "CAIRN-E0005", "{err}");
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }

    /// Rewrites the file at `path`: its list of unfinished runs as the table `to` (its
    /// entries dropped), and its marker as `marker` (none if `None`).
    fn relist(path: &Path, to: &str, marker: Option<u32>) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(OPEN_RUNS).unwrap();
        txn.delete_table(LEGACY_RUNNING).unwrap();
        match to {
            "open_runs" => drop(txn.open_table(OPEN_RUNS).unwrap()),
            _ => drop(txn.open_table(LEGACY_RUNNING).unwrap()),
        }
        {
            let mut meta = txn.open_table(META).unwrap();
            match marker {
                Some(format) => {
                    meta.insert("format", format.to_le_bytes().as_slice())
                        .unwrap();
                }
                None => {
                    meta.remove("format").unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_list_of_runs_that_does_not_match_the_marker_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        for (table, marker) in [("running", STORAGE_FORMAT), ("open_runs", 9)] {
            RedbStore::open(&path).unwrap().close();
            relist(&path, table, Some(marker));
            let err = RedbStore::open(&path).unwrap_err();
            assert_eq!(err.code(), "CAIRN-E0005", "{table}, format {marker}: {err}");
            assert!(
                err.to_string().contains("not a complete Cairn database"),
                "{err}"
            );
            assert_eq!(stored_format(&path), marker, "nothing written");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn a_running_entry_without_a_row_is_left_out_by_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        RedbStore::open(&path).unwrap().close();
        relist(&path, "running", Some(9));
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let entry = encode_suspension(None).unwrap();
            txn.open_table(LEGACY_RUNNING)
                .unwrap()
                .insert(7u128, entry.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let mut listed = Vec::new();
        store.scan_running(&mut |key, _| listed.push(key)).unwrap();
        assert!(listed.is_empty(), "{listed:?}");
        store.close();
        assert_eq!(stored_format(&path), STORAGE_FORMAT);
    }

    #[test]
    fn a_complete_file_without_a_marker_is_migrated_as_format_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        RedbStore::open(&path).unwrap().close();
        relist(&path, "running", None);
        RedbStore::open(&path).unwrap().close();
        assert_eq!(stored_format(&path), STORAGE_FORMAT);
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        txn.open_table(OPEN_RUNS).unwrap();
        assert!(
            txn.open_table(LEGACY_RUNNING).is_err(),
            "moved to open_runs"
        );
    }

    #[test]
    fn another_programs_redb_file_is_left_alone() {
        const OTHER: TableDefinition<&str, u64> = TableDefinition::new("invoices");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(OTHER).unwrap().insert("inv-1", 42).unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&path).unwrap_err();
        assert_eq!(err.code(), "CAIRN-E0005");
        assert!(err.to_string().contains("invoices"), "{err}");
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert!(
            txn.open_table(META).is_err(),
            "nothing was written to the foreign file"
        );
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format", 99u32.to_le_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        match RedbStore::open(&path) {
            Err(Error::UnsupportedFormat { found: 99, .. }) => {}
            other => panic!("expected UnsupportedFormat, got {other:?}"),
        }
    }

    fn stored_format(path: &Path) -> u32 {
        let db = Database::create(path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        let value = meta.get("format").unwrap().unwrap();
        u32::from_le_bytes(value.value().try_into().unwrap())
    }

    /// A file of an older format is left as it is by a read-only open and migrated by
    /// the first writable open (its marker raised, the tables it lacked created).
    #[test]
    fn an_older_format_is_migrated_by_the_first_writable_open_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        RedbStore::open(&path).unwrap().close();
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            for table in [
                "parked",
                "by_type",
                "by_status",
                "by_attribute",
                "open_runs",
            ] {
                txn.delete_table(redb::TableDefinition::<u128, &[u8]>::new(table))
                    .unwrap();
            }
            // Format 1 listed the unfinished runs by key (none here).
            txn.open_table(LEGACY_RUNNING).unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format", 1u32.to_le_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = RedbStore::open_read_only(&path).unwrap();
        assert!(store
            .query(&InstanceQuery::default())
            .unwrap()
            .rows
            .is_empty());
        assert!(store.parked().unwrap().is_empty());
        store.close();
        assert_eq!(stored_format(&path), 1, "a read-only open wrote nothing");

        RedbStore::open(&path).unwrap().close();
        assert_eq!(stored_format(&path), STORAGE_FORMAT);
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        txn.open_table(BY_TYPE).unwrap();
        txn.open_table(OPEN_RUNS).unwrap();
        txn.open_table(PARKED).unwrap();
        assert!(
            txn.open_table(LEGACY_RUNNING).is_err(),
            "moved to open_runs"
        );
    }
}
