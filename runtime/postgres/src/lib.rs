//! Cairn's journal on PostgreSQL, for several hosts sharing one database. **In progress**
//! (see `docs/DEPLOYMENT.md`): this crate holds the schema and its migrations, the
//! shards and their leases, and the write path every later piece builds on; the
//! `Journal` implementation the engine uses comes next.
//!
//! What is decided here:
//! - **Ownership per shard.** A run belongs to shard `key % SHARDS`; a host drives the
//!   runs of the shards it holds a lease on. Shards, not instances, because a host then
//!   renews a few hundred leases in one statement whatever the number of instances, and
//!   a takeover moves a whole shard at once (its runs are then found by one index range).
//! - **Fair shares.** Hosts send heartbeats (`cairn_hosts`), claim free or expired
//!   shards up to the shards divided by the live hosts, and give back their surplus, so a
//!   host that joins gets its part and one that stops loses its part to the others.
//! - **Time decides liveness, never safety.** A lease's expiry is judged by the
//!   database's clock (`now()`), so host clocks may be skewed at will. Every append of a
//!   run's owner carries its lease epoch and is checked against the shard's row in the
//!   same transaction (`FOR SHARE`: a takeover, which raises the epoch, waits for appends
//!   in flight and is seen by every later one), so a host that was paused past its lease
//!   cannot write after the takeover: [`Error::LeaseLost`].
//! - **The sequence's arbiter is a constraint.** An event is the row `(run, seq)` of
//!   `cairn_events`, its primary key: two writers can never both record step `seq`.
//!   Appends to one run are also serialised by the run row's lock, which keeps the chain
//!   (`prev_hash`, `prev_lsn`) in step.
//! - **Group commit.** [`PostgresStore::append_batch`] writes the appends of many runs
//!   in one transaction (one multi-row insert of the events, one update of the runs),
//!   deciding each against its run's head as the batch leaves it; a refused append writes
//!   nothing and does not stop the others.
//! - **LSNs** come from one sequence: unique and increasing per run, not gap-free and
//!   not in commit order across runs (nothing needs that: `verify_chain` checks each
//!   run's links).

#![deny(unsafe_code)]

mod schema;

pub use schema::SCHEMA_VERSION;

use cairn_core::codec::Payload;
use cairn_core::error::{Error, Result, StorageFailure};
use cairn_core::event::{hash_envelope, DecodeError, EventKind, EventRecord, EVENT_BYTES_MAX};
use cairn_core::journal::{
    Appended, Expect, InstanceRow, InstanceStatus, RawEvent, RawHistory, Started, Suspension,
};
use cairn_core::task::Actor;
use deadpool_postgres::{Client, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

/// Number of shards runs are spread over (fixed by the schema).
pub const SHARDS: u32 = 256;

/// Connections a store keeps at most, unless told otherwise.
pub const POOL_SIZE_DEFAULT: usize = 16;

/// How long a request waits for a free connection before it fails as a storage error.
pub const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The shard of run `key`. Keys are UUIDv7: their low bits are random, so shards fill
/// evenly.
pub fn shard_of(key: u128) -> u32 {
    u32::try_from(key % u128::from(SHARDS)).unwrap_or(0)
}

/// A lease a host holds on a shard: until it expires (on the database's clock), only
/// this host appends to the shard's runs, and each of its appends is checked against
/// `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The shard.
    pub shard: u32,
    /// The host holding it (a fresh identity per host process).
    pub host: u128,
    /// The epoch it was granted at: raised by every takeover, never lowered.
    pub epoch: u64,
}

/// Leases of `host` from rows of `(shard, epoch)`.
fn leases(host: u128, rows: &[Row]) -> Vec<Lease> {
    let mut out: Vec<Lease> = rows
        .iter()
        .map(|row| Lease {
            shard: u32::try_from(row.get::<_, i32>(0)).unwrap_or(u32::MAX),
            host,
            epoch: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
        })
        .collect();
    out.sort_by_key(|lease| lease.shard);
    out
}

/// One append of a batch ([`PostgresStore::append_batch`]).
#[derive(Clone, Debug)]
pub struct AppendRequest {
    /// The run.
    pub key: u128,
    /// The event.
    pub kind: EventKind,
    /// The condition it is made under.
    pub expect: Expect,
    /// Who caused it from outside, if someone did.
    pub actor: Option<Actor>,
    /// The lease of the run's owner; `None` for a message from outside.
    pub fence: Option<Lease>,
}

/// Whether `request` may land on `head` (its run as the batch has left it so far): on
/// acceptance, its sequence number and the lease epoch to record with it.
fn decide(
    request: &AppendRequest,
    head: Option<&InstanceRow>,
    leases: &std::collections::HashMap<u32, (Option<Uuid>, i64)>,
) -> Result<(u64, i64)> {
    let Some(head) = head else {
        return Err(Error::InstanceNotFound(format!("{:032x}", request.key)));
    };
    if head.status.is_finished() {
        return Err(Error::InstanceFinished(head.id.clone()));
    }
    if let Expect::Seq(expected) = request.expect {
        if expected != head.next_seq {
            return Err(Error::Conflict {
                instance: head.id.clone(),
                expected,
                actual: head.next_seq,
            });
        }
    }
    let epoch = match request.fence {
        None => 0,
        Some(lease) => {
            let (owner, current) = leases.get(&lease.shard).copied().unwrap_or((None, -1));
            let held = i64::try_from(lease.epoch).unwrap_or(i64::MAX);
            // A lease fences only the runs of its own shard.
            let theirs = lease.shard == shard_of(request.key);
            if !theirs || owner != Some(Uuid::from_u128(lease.host)) || current != held {
                return Err(Error::LeaseLost {
                    instance: head.id.clone(),
                    shard: lease.shard,
                    held: lease.epoch,
                    current: u64::try_from(current).unwrap_or(0),
                });
            }
            current
        }
    };
    Ok((head.next_seq, epoch))
}

/// A PostgreSQL database holding Cairn's tables, through a connection pool.
pub struct PostgresStore {
    pool: Pool,
    /// Where it is, for messages: `host:port/database`, never the password.
    place: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL error as a storage failure, kept as its source.
pub(crate) fn pg_error(context: &str, err: &tokio_postgres::Error) -> Error {
    Error::Storage(StorageFailure::new(format!("{context}: {}", describe(err))))
}

/// A failed `COMMIT`: unless the server said why it refused, the connection may have
/// broken after the server committed, so the outcome is unknown and must be resolved
/// (read back) before anything is retried.
fn commit_error(what: &str, err: &tokio_postgres::Error) -> Error {
    if err.as_db_error().is_some() {
        pg_error(&format!("commit {what} (refused, nothing written)"), err)
    } else {
        pg_error(
            &format!("commit {what}: outcome unknown (the server may have committed it; read it back before retrying)"),
            err,
        )
    }
}

/// The server's own message when there is one (tokio-postgres prints only "db error").
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

fn status_code(status: InstanceStatus) -> i16 {
    i16::from(status.code())
}

fn status_of(code: i16) -> Option<InstanceStatus> {
    u8::try_from(code).ok().and_then(InstanceStatus::from_code)
}

fn db_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| Error::InvalidArgument(format!("{what} {value} is out of range")))
}

const RUN_COLUMNS: &str = "key, id, workflow_type, status, created_at_ms, updated_at_ms, next_seq, head_lsn, head_hash, parent, suspended, wake_at_ms";

/// A `cairn_runs` row (selected with [`RUN_COLUMNS`]) as an [`InstanceRow`].
fn run_row(row: &Row) -> Result<InstanceRow> {
    let key: Uuid = row.get(0);
    let corrupt = |message: String| Error::Corrupt {
        location: format!("cairn_runs, key {:032x}", key.as_u128()),
        message,
    };
    let unsigned = |index: usize, what: &str| -> Result<u64> {
        let value: i64 = row.get(index);
        u64::try_from(value).map_err(|_| corrupt(format!("{what} is negative ({value})")))
    };
    let code: i16 = row.get(3);
    let hash: Vec<u8> = row.get(8);
    let parent: Option<Uuid> = row.get(9);
    let suspended: bool = row.get(10);
    let wake_at_ms: Option<i64> = row.get(11);
    Ok(InstanceRow {
        key: key.as_u128(),
        id: row.get(1),
        workflow_type: row.get(2),
        status: status_of(code).ok_or_else(|| corrupt(format!("unknown status {code}")))?,
        created_at_ms: unsigned(4, "created_at_ms")?,
        updated_at_ms: unsigned(5, "updated_at_ms")?,
        next_seq: unsigned(6, "next_seq")?,
        head_lsn: unsigned(7, "head_lsn")?,
        head_hash: hash
            .try_into()
            .map_err(|_| corrupt("head_hash is not 32 bytes".into()))?,
        parent: parent.map(|p| p.as_u128()),
        suspended: suspended.then(|| Suspension {
            wake_at_ms: wake_at_ms.and_then(|ms| u64::try_from(ms).ok()),
        }),
    })
}

impl PostgresStore {
    /// Opens the database at `url` (`postgres://user:password@host:port/database`) with
    /// a pool of [`POOL_SIZE_DEFAULT`] connections, creating Cairn's tables on first open
    /// and migrating older ones.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a string that is not a connection string;
    /// [`Error::Open`] when the server cannot be reached or refuses the login, or when
    /// the database's schema is newer than this build (nothing is changed then).
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, POOL_SIZE_DEFAULT).await
    }

    /// [`PostgresStore::open`] with a pool of `pool_size` connections.
    ///
    /// # Errors
    /// As [`PostgresStore::open`].
    pub async fn open_with(url: &str, pool_size: usize) -> Result<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(|err| {
            Error::InvalidArgument(format!("not a PostgreSQL connection string: {err}"))
        })?;
        let place = place_of(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|err| Error::Open {
                path: place.clone().into(),
                message: format!("cannot make a connection pool: {err}"),
                remedy: "Check the pool size.",
            })?;
        let mut client = pool.get().await.map_err(|err| Error::Open {
            path: place.clone().into(),
            message: format!("cannot connect: {err}"),
            remedy: "Check that the server runs and listens there, and the user, password and database in the connection string.",
        })?;
        schema::migrate(&mut client, &place).await?;
        Ok(Self { pool, place })
    }

    /// Where the database is (`host:port/database`), for messages.
    pub fn place(&self) -> &str {
        &self.place
    }

    async fn client(&self) -> Result<Client> {
        self.pool.get().await.map_err(|err| {
            Error::Storage(StorageFailure::new(format!(
                "no connection to {}: {err}",
                self.place
            )))
        })
    }

    /// Takes shard `shard` for `host` for `ttl_ms` if nobody holds it or its lease has
    /// expired (on the database's clock), raising its epoch; `None` while another host
    /// holds it.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn acquire(&self, shard: u32, host: u128, ttl_ms: u64) -> Result<Option<Lease>> {
        let client = self.client().await?;
        let shard_i = i32::try_from(shard)
            .map_err(|_| Error::InvalidArgument(format!("shard {shard} is out of range")))?;
        let ttl = db_i64(ttl_ms, "lease duration")?;
        let row = client
            .query_opt(
                "UPDATE cairn_shards
                 SET owner = $2, epoch = epoch + 1,
                     expires_at = now() + make_interval(secs => $3::bigint / 1000.0)
                 WHERE shard = $1 AND (owner IS NULL OR expires_at < now())
                 RETURNING epoch",
                &[&shard_i, &Uuid::from_u128(host), &ttl],
            )
            .await
            .map_err(|err| pg_error("acquire a shard", &err))?;
        Ok(row.map(|row| {
            let epoch: i64 = row.get(0);
            Lease {
                shard,
                host,
                epoch: u64::try_from(epoch).unwrap_or(0),
            }
        }))
    }

    /// Extends `lease` by `ttl_ms` from now (the database's clock); `false` if the
    /// shard was taken over meanwhile (the host must then stop driving its runs).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn renew(&self, lease: Lease, ttl_ms: u64) -> Result<bool> {
        let client = self.client().await?;
        let shard = i32::try_from(lease.shard).unwrap_or(i32::MAX);
        let updated = client
            .execute(
                "UPDATE cairn_shards
                 SET expires_at = now() + make_interval(secs => $4::bigint / 1000.0)
                 WHERE shard = $1 AND owner = $2 AND epoch = $3",
                &[
                    &shard,
                    &Uuid::from_u128(lease.host),
                    &db_i64(lease.epoch, "epoch")?,
                    &db_i64(ttl_ms, "lease duration")?,
                ],
            )
            .await
            .map_err(|err| pg_error("renew a lease", &err))?;
        Ok(updated == 1)
    }

    /// Says `host` is alive for `ttl_ms` more (on the database's clock) and renews every
    /// lease it still holds, in one transaction; returns those leases. A shard missing
    /// from the answer was taken over: the host must stop driving its runs.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn heartbeat(&self, host: u128, ttl_ms: u64) -> Result<Vec<Lease>> {
        let mut client = self.client().await?;
        let txn = client
            .transaction()
            .await
            .map_err(|err| pg_error("begin a heartbeat", &err))?;
        let ttl = db_i64(ttl_ms, "lease duration")?;
        let id = Uuid::from_u128(host);
        txn.execute(
            "INSERT INTO cairn_hosts (host, expires_at)
             VALUES ($1, now() + make_interval(secs => $2::bigint / 1000.0))
             ON CONFLICT (host) DO UPDATE SET expires_at = EXCLUDED.expires_at",
            &[&id, &ttl],
        )
        .await
        .map_err(|err| pg_error("record a heartbeat", &err))?;
        let rows = txn
            .query(
                // Locked in shard order, as group commits lock them (`FOR SHARE`), so
                // the two never wait on each other in a circle.
                "UPDATE cairn_shards
                 SET expires_at = now() + make_interval(secs => $2::bigint / 1000.0)
                 WHERE shard IN (
                     SELECT shard FROM cairn_shards WHERE owner = $1
                     ORDER BY shard FOR NO KEY UPDATE
                 )
                 RETURNING shard, epoch",
                &[&id, &ttl],
            )
            .await
            .map_err(|err| pg_error("renew the leases", &err))?;
        txn.commit()
            .await
            .map_err(|err| pg_error("commit a heartbeat", &err))?;
        Ok(leases(host, &rows))
    }

    /// Takes free shards (nobody's, or their lease expired) for `host`, up to its fair
    /// share: the shards divided by the live hosts (those whose heartbeat has not expired,
    /// itself included), rounded up, less what it holds. Concurrent claims skip each
    /// other's rows, so no shard is granted twice. Returns the new leases.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn claim(&self, host: u128, ttl_ms: u64) -> Result<Vec<Lease>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "WITH live AS (
                     SELECT count(*) FILTER (WHERE host <> $1) + 1 AS hosts
                     FROM cairn_hosts WHERE expires_at >= now()
                 ), mine AS (
                     SELECT count(*) AS held FROM cairn_shards
                     WHERE owner = $1 AND expires_at >= now()
                 ), free AS (
                     SELECT shard FROM cairn_shards
                     WHERE owner IS NULL OR expires_at < now()
                     ORDER BY shard
                     LIMIT GREATEST(0, ceil(($3::bigint)::numeric / (SELECT hosts FROM live))::bigint - (SELECT held FROM mine))
                     FOR UPDATE SKIP LOCKED
                 )
                 UPDATE cairn_shards AS s
                 SET owner = $1, epoch = s.epoch + 1,
                     expires_at = now() + make_interval(secs => $2::bigint / 1000.0)
                 FROM free WHERE s.shard = free.shard
                 RETURNING s.shard, s.epoch",
                &[
                    &Uuid::from_u128(host),
                    &db_i64(ttl_ms, "lease duration")?,
                    &i64::from(SHARDS),
                ],
            )
            .await
            .map_err(|err| pg_error("claim shards", &err))?;
        Ok(leases(host, &rows))
    }

    /// The leases `host` holds beyond its fair share (the highest shards first), to give
    /// back with [`PostgresStore::release`] once it has stopped driving their runs, so
    /// that a host that joined gets its share.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn surplus(&self, host: u128) -> Result<Vec<Lease>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "WITH live AS (
                     SELECT count(*) FILTER (WHERE host <> $1) + 1 AS hosts
                     FROM cairn_hosts WHERE expires_at >= now()
                 )
                 SELECT shard, epoch FROM cairn_shards
                 WHERE owner = $1
                 ORDER BY shard DESC
                 OFFSET (SELECT ceil(($2::bigint)::numeric / hosts)::bigint FROM live)",
                &[&Uuid::from_u128(host), &i64::from(SHARDS)],
            )
            .await
            .map_err(|err| pg_error("find surplus shards", &err))?;
        Ok(leases(host, &rows))
    }

    /// Gives `lease` back (its runs may be taken by another host at once); `false` if it
    /// was no longer this host's.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn release(&self, lease: Lease) -> Result<bool> {
        let client = self.client().await?;
        let released = client
            .execute(
                "UPDATE cairn_shards SET owner = NULL, expires_at = NULL
                 WHERE shard = $1 AND owner = $2 AND epoch = $3",
                &[
                    &i32::try_from(lease.shard).unwrap_or(i32::MAX),
                    &Uuid::from_u128(lease.host),
                    &db_i64(lease.epoch, "epoch")?,
                ],
            )
            .await
            .map_err(|err| pg_error("release a shard", &err))?;
        Ok(released == 1)
    }

    /// Starts run `id` of `workflow_type` if no instance has that id (its first event,
    /// `WorkflowStarted`, in the same transaction), or returns the existing one.
    ///
    /// # Errors
    /// Encoding errors of the first event, storage errors.
    ///
    /// # Durability
    /// On return the start is committed.
    pub async fn start(
        &self,
        id: &str,
        workflow_type: &str,
        input: Payload,
        parent: Option<u128>,
        actor: Option<Actor>,
        now_ms: u64,
    ) -> Result<Started> {
        let mut client = self.client().await?;
        let txn = client
            .transaction()
            .await
            .map_err(|err| pg_error("begin a start", &err))?;
        let key = Uuid::now_v7();
        let claimed = txn
            .query_opt(
                "INSERT INTO cairn_ids (id, key) VALUES ($1, $2)
                 ON CONFLICT (id) DO NOTHING RETURNING key",
                &[&id, &key],
            )
            .await
            .map_err(|err| pg_error("claim an id", &err))?;
        if claimed.is_none() {
            // Read in the same transaction, on the same connection: asking the pool for
            // another one while holding this one could wait for ever with the pool full.
            let row = txn
                .query_opt(
                    &format!(
                        "SELECT {RUN_COLUMNS} FROM cairn_runs
                         WHERE key = (SELECT key FROM cairn_ids WHERE id = $1)"
                    ),
                    &[&id],
                )
                .await
                .map_err(|err| pg_error("read an existing run", &err))?
                .ok_or_else(|| Error::InstanceNotFound(id.to_owned()))?;
            let row = run_row(&row)?;
            return Ok(Started {
                key: row.key,
                created: false,
                row,
            });
        }
        let lsn: i64 = txn
            .query_one("SELECT nextval('cairn_lsn')", &[])
            .await
            .map_err(|err| pg_error("take an LSN", &err))?
            .get(0);
        let record = EventRecord {
            instance: key.as_u128(),
            seq: 0,
            prev_lsn: None,
            prev_hash: cairn_core::event::GENESIS_HASH,
            recorded_at_ms: now_ms,
            kind: EventKind::WorkflowStarted {
                workflow_type: workflow_type.to_owned(),
                id: id.to_owned(),
                input,
            },
            actor,
        };
        let envelope = encode(&record, id)?;
        let hash = hash_envelope(&envelope);
        let now = db_i64(now_ms, "time")?;
        let shard = i32::try_from(shard_of(key.as_u128())).unwrap_or(0);
        let parent = parent.map(Uuid::from_u128);
        txn.execute(
            "INSERT INTO cairn_runs (key, id, workflow_type, status, created_at_ms, updated_at_ms, next_seq, head_lsn, head_hash, parent, shard)
             VALUES ($1, $2, $3, 0, $4, $4, 1, $5, $6, $7, $8)",
            &[&key, &id, &workflow_type, &now, &lsn, &hash.as_slice(), &parent, &shard],
        )
        .await
        .map_err(|err| pg_error("insert a run", &err))?;
        txn.execute(
            "INSERT INTO cairn_events (run, seq, lsn, epoch, envelope) VALUES ($1, 0, $2, 0, $3)",
            &[&key, &lsn, &envelope],
        )
        .await
        .map_err(|err| pg_error("insert a start event", &err))?;
        txn.commit()
            .await
            .map_err(|err| commit_error("a start", &err))?;
        let lsn = u64::try_from(lsn).unwrap_or(0);
        Ok(Started {
            key: key.as_u128(),
            created: true,
            row: InstanceRow {
                key: key.as_u128(),
                id: id.to_owned(),
                workflow_type: workflow_type.to_owned(),
                status: InstanceStatus::Running,
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
                head_lsn: lsn,
                next_seq: 1,
                head_hash: hash,
                parent: parent.map(|p| p.as_u128()),
                suspended: None,
            },
        })
    }

    /// Appends `kind` to run `key` under `expect`: [`PostgresStore::append_batch`] of one.
    ///
    /// # Errors
    /// As [`PostgresStore::append_batch`], the refusal of this append included.
    ///
    /// # Durability
    /// On return the event is committed.
    pub async fn append(
        &self,
        key: u128,
        kind: EventKind,
        expect: Expect,
        actor: Option<Actor>,
        fence: Option<Lease>,
        now_ms: u64,
    ) -> Result<Appended> {
        let request = AppendRequest {
            key,
            kind,
            expect,
            actor,
            fence,
        };
        self.append_batch(vec![request], now_ms)
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::InstanceNotFound(format!("{key:032x}"))))
    }

    /// Appends a batch, in order, in **one transaction**: the group commit of a host.
    /// Each append is decided against its run's head as the batch leaves it (two appends
    /// to one run chain), and is refused alone, writing nothing of itself, when its
    /// `expect` does not hold ([`Error::Conflict`]), its `fence` is not the shard's
    /// current lease ([`Error::LeaseLost`]; without a fence it is a message from
    /// outside, ordered by the database), its run has ended
    /// ([`Error::InstanceFinished`]) or is unknown, or its event does not encode. The
    /// runs are locked in key order, so concurrent batches of several hosts cannot
    /// deadlock; the shards' rows are read `FOR SHARE`, so a takeover waits for the batch
    /// and every later batch sees it.
    ///
    /// # Errors
    /// The outer error is a storage failure: nothing of the batch was written, except
    /// when it says the commit's outcome is unknown (the connection broke during
    /// `COMMIT`): then all of it may have been, and the caller reads the runs back
    /// before retrying. The inner results are each append's outcome.
    ///
    /// # Durability
    /// On `Ok` every accepted append is committed.
    pub async fn append_batch(
        &self,
        requests: Vec<AppendRequest>,
        now_ms: u64,
    ) -> Result<Vec<Result<Appended>>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let txn = client
            .transaction()
            .await
            .map_err(|err| pg_error("begin a batch", &err))?;
        let mut keys: Vec<Uuid> = requests.iter().map(|r| Uuid::from_u128(r.key)).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut heads: std::collections::HashMap<u128, InstanceRow> = txn
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM cairn_runs WHERE key = ANY($1) ORDER BY key FOR UPDATE"
                ),
                &[&keys],
            )
            .await
            .map_err(|err| pg_error("lock the runs", &err))?
            .iter()
            .map(|row| run_row(row).map(|row| (row.key, row)))
            .collect::<Result<_>>()?;
        let mut shards: Vec<i32> = requests
            .iter()
            .filter_map(|r| r.fence)
            .map(|lease| i32::try_from(lease.shard).unwrap_or(i32::MAX))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        let leases: std::collections::HashMap<u32, (Option<Uuid>, i64)> = if shards.is_empty() {
            std::collections::HashMap::new()
        } else {
            txn.query(
                "SELECT shard, owner, epoch FROM cairn_shards WHERE shard = ANY($1) ORDER BY shard FOR SHARE",
                &[&shards],
            )
            .await
            .map_err(|err| pg_error("check the leases", &err))?
            .iter()
            .map(|row| {
                let shard: i32 = row.get(0);
                (
                    u32::try_from(shard).unwrap_or(u32::MAX),
                    (row.get(1), row.get(2)),
                )
            })
            .collect()
        };
        // One LSN per request, taken up front (a refused one leaves a gap, which is
        // allowed); then each append is decided, encoded and applied to its run's head in
        // order, so the next append of the same run chains on it, and a refused one
        // leaves the head as it was.
        let mut lsns: Vec<i64> = txn
            .query(
                "SELECT nextval('cairn_lsn') FROM generate_series(1, $1::bigint)",
                &[&i64::try_from(requests.len()).unwrap_or(0)],
            )
            .await
            .map_err(|err| pg_error("take LSNs", &err))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        lsns.sort_unstable();
        let (mut runs, mut seqs, mut event_lsns, mut epochs, mut envelopes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut results = Vec::with_capacity(requests.len());
        for (request, lsn) in requests.into_iter().zip(lsns) {
            let head = heads.get_mut(&request.key);
            let (seq, epoch) = match decide(&request, head.as_deref(), &leases) {
                Ok(decided) => decided,
                Err(err) => {
                    results.push(Err(err));
                    continue;
                }
            };
            let Some(head) = head else {
                results.push(Err(Error::InstanceNotFound(format!(
                    "{:032x}",
                    request.key
                ))));
                continue;
            };
            let terminal = InstanceStatus::ended_by(&request.kind);
            let record = EventRecord {
                instance: request.key,
                seq,
                prev_lsn: Some(head.head_lsn),
                prev_hash: head.head_hash,
                recorded_at_ms: now_ms,
                kind: request.kind,
                actor: request.actor,
            };
            let envelope = match encode(&record, &head.id) {
                Ok(envelope) => envelope,
                Err(err) => {
                    results.push(Err(err));
                    continue;
                }
            };
            head.head_hash = hash_envelope(&envelope);
            head.head_lsn = u64::try_from(lsn).unwrap_or(0);
            head.next_seq = seq + 1;
            head.updated_at_ms = now_ms;
            if let Some(status) = terminal {
                head.status = status;
            }
            runs.push(Uuid::from_u128(request.key));
            seqs.push(db_i64(seq, "sequence number")?);
            event_lsns.push(lsn);
            epochs.push(epoch);
            envelopes.push(envelope);
            results.push(Ok(Appended { seq }));
        }
        if !runs.is_empty() {
            txn.execute(
                "INSERT INTO cairn_events (run, seq, lsn, epoch, envelope)
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bytea[])",
                &[&runs, &seqs, &event_lsns, &epochs, &envelopes],
            )
            .await
            .map_err(|err| pg_error("insert the events", &err))?;
            let touched: Vec<&InstanceRow> = {
                let mut touched: Vec<u128> = runs.iter().map(|r| r.as_u128()).collect();
                touched.sort_unstable();
                touched.dedup();
                touched.iter().filter_map(|key| heads.get(key)).collect()
            };
            let keys: Vec<Uuid> = touched.iter().map(|r| Uuid::from_u128(r.key)).collect();
            let next: Vec<i64> = touched
                .iter()
                .map(|r| db_i64(r.next_seq, "sequence number"))
                .collect::<Result<_>>()?;
            let head_lsns: Vec<i64> = touched
                .iter()
                .map(|r| db_i64(r.head_lsn, "LSN"))
                .collect::<Result<_>>()?;
            let hashes: Vec<&[u8]> = touched.iter().map(|r| r.head_hash.as_slice()).collect();
            let statuses: Vec<i16> = touched.iter().map(|r| status_code(r.status)).collect();
            txn.execute(
                "UPDATE cairn_runs AS r
                 SET next_seq = u.next_seq, head_lsn = u.head_lsn, head_hash = u.head_hash,
                     updated_at_ms = $6, status = u.status, suspended = false, wake_at_ms = NULL
                 FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bytea[], $5::smallint[])
                     AS u(key, next_seq, head_lsn, head_hash, status)
                 WHERE r.key = u.key",
                &[
                    &keys,
                    &next,
                    &head_lsns,
                    &hashes,
                    &statuses,
                    &db_i64(now_ms, "time")?,
                ],
            )
            .await
            .map_err(|err| pg_error("update the runs", &err))?;
        }
        txn.commit()
            .await
            .map_err(|err| commit_error("a batch", &err))?;
        Ok(results)
    }

    /// Internal key of the current run of instance `id`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn key_of(&self, id: &str) -> Result<Option<u128>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT key FROM cairn_ids WHERE id = $1", &[&id])
            .await
            .map_err(|err| pg_error("read an id", &err))?;
        Ok(row.map(|row| row.get::<_, Uuid>(0).as_u128()))
    }

    /// The row of run `key`.
    ///
    /// # Errors
    /// Storage errors; [`Error::Corrupt`] for a row out of range.
    pub async fn instance(&self, key: u128) -> Result<Option<InstanceRow>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {RUN_COLUMNS} FROM cairn_runs WHERE key = $1"),
                &[&Uuid::from_u128(key)],
            )
            .await
            .map_err(|err| pg_error("read a run", &err))?;
        row.as_ref().map(run_row).transpose()
    }

    /// Run `key`'s row and events from one snapshot (a repeatable-read transaction), as
    /// stored: check them with `cairn_core::journal::verify_history`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn history(&self, key: u128) -> Result<Option<RawHistory>> {
        let mut client = self.client().await?;
        let txn = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|err| pg_error("begin a read", &err))?;
        let run = Uuid::from_u128(key);
        let Some(row) = txn
            .query_opt(
                &format!("SELECT {RUN_COLUMNS} FROM cairn_runs WHERE key = $1"),
                &[&run],
            )
            .await
            .map_err(|err| pg_error("read a run", &err))?
        else {
            return Ok(None);
        };
        let row = run_row(&row)?;
        let events = txn
            .query(
                "SELECT lsn, envelope FROM cairn_events WHERE run = $1 ORDER BY seq",
                &[&run],
            )
            .await
            .map_err(|err| pg_error("read a history", &err))?
            .into_iter()
            .map(|event| RawEvent {
                lsn: u64::try_from(event.get::<_, i64>(0)).unwrap_or(0),
                envelope: event.get(1),
            })
            .collect();
        Ok(Some(RawHistory { row, events }))
    }

    /// The lease epochs recorded with run `key`'s events, in sequence order (0 for
    /// events from outside and starts): an auditor's check that they never decrease.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn epochs(&self, key: u128) -> Result<Vec<u64>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT epoch FROM cairn_events WHERE run = $1 ORDER BY seq",
                &[&Uuid::from_u128(key)],
            )
            .await
            .map_err(|err| pg_error("read epochs", &err))?;
        Ok(rows
            .iter()
            .map(|row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
            .collect())
    }
}

fn encode(record: &EventRecord, id: &str) -> Result<Vec<u8>> {
    record.encode().map_err(|err| match err {
        DecodeError::TooLarge { len, .. } => Error::PayloadTooLarge {
            instance: id.to_owned(),
            position: record.kind.name().to_owned(),
            bytes: len,
            max: EVENT_BYTES_MAX,
        },
        other => Error::PayloadEncode {
            instance: id.to_owned(),
            position: record.kind.name().to_owned(),
            message: other.to_string(),
        },
    })
}

/// `host:port/database` of a connection string, without user or password.
fn place_of(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{host}:{port}/{}",
        config.get_dbname().unwrap_or("")
    )
}
