//! Cairn's journal on PostgreSQL, for several hosts sharing one database
//! ([`PostgresJournal`], passing the store conformance suite), with the schema and its
//! migrations, the shards and their leases ([`PostgresStore`]). See
//! `docs/DEPLOYMENT.md`.
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
//! - **Group commit.** A host's writer task writes whatever its runs queued meanwhile in
//!   one transaction (one multi-row insert of the events, one update of the runs, one
//!   upsert per index), deciding each operation against its run's head as the batch
//!   leaves it with the same `cairn_core::commit::plan_event` as the redb store; a
//!   refused operation writes nothing and does not stop the others.
//! - **Unknown outcomes are resolved, never guessed.** A batch reads its transaction id
//!   first; when `COMMIT` goes unanswered, the host asks the server (`txid_status`) on a
//!   new connection until it says committed or aborted, and only then answers or decides
//!   the batch again. A deadlock or serialization conflict the server broke, or a
//!   connection lost before `COMMIT`, is retried as a whole batch (nothing was written).
//! - **TLS when asked, always verified.** `sslmode=require`, `verify-ca` or
//!   `verify-full` encrypt every connection with rustls and check the server's
//!   certificate and host name (against `sslrootcert`, or the public roots); the other
//!   modes connect in the clear (`tls.rs`).
//! - **LSNs** come from one sequence: unique and increasing per run, not gap-free and
//!   not in commit order across runs (nothing needs that: `verify_chain` checks each
//!   run's links).

#![deny(unsafe_code)]

mod batch;
mod journal;
mod reader;
mod reads;
mod schema;
mod tls;
mod wakes;

pub use journal::{PostgresJournal, PostgresOptions, BATCH_OPS_MAX};
pub use reader::PostgresReader;

use batch::{Answer, Op, Outcome};

pub use schema::SCHEMA_VERSION;

use cairn_core::codec::Payload;
use cairn_core::error::{error_chain, Error, Result, StorageFailure};
use cairn_core::event::EventKind;
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

/// What [`PostgresStore::claim_counted`] granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// The new leases.
    pub leases: Vec<Lease>,
    /// How many of them were another host's, whose lease had expired.
    pub taken_over: u32,
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

/// A PostgreSQL database holding Cairn's tables, through a connection pool.
pub struct PostgresStore {
    pool: Pool,
    /// Where it is, for messages: `host:port/database`, never the password.
    place: String,
    /// The connection settings, for connections outside the pool (`LISTEN`).
    config: tokio_postgres::Config,
    /// In the clear or over TLS.
    transport: tls::Transport,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL error as a storage failure. Failures worth trying again (a broken
/// connection, a deadlock or serialization conflict the server broke, the server
/// shutting down) are marked retryable.
pub(crate) fn pg_error(context: &str, err: &tokio_postgres::Error) -> Error {
    let failure = StorageFailure::new(format!("{context}: {}", describe(err)));
    let retry = match err.as_db_error() {
        None => true,
        Some(db) => matches!(
            db.code().code(),
            "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006"
        ),
    };
    Error::Storage(if retry { failure.transient() } else { failure })
}

/// A batch that was not committed, or whose outcome could not be learnt (`unknown`:
/// the caller must assume neither).
#[derive(Debug)]
pub(crate) struct CommitFailure {
    pub(crate) error: Error,
    pub(crate) unknown: bool,
}

/// How a batch failed.
enum Failed {
    /// Before `COMMIT` (or refused by it): nothing written; whether to try again.
    Before(Error, bool),
    /// `COMMIT` sent and unanswered: transaction `xid` may have committed `outcome`.
    Unknown {
        xid: i64,
        outcome: Box<Outcome>,
        err: Error,
    },
}

impl Failed {
    fn before(context: &str, err: &tokio_postgres::Error) -> Self {
        let err = pg_error(context, err);
        let retry = matches!(&err, Error::Storage(failure) if failure.is_transient());
        Failed::Before(err, retry)
    }
}

/// Attempts a batch gets before its error is returned.
pub const RETRIES: u32 = 5;

/// How long the outcome of an unanswered `COMMIT` is asked for before giving up.
pub const RESOLVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// 20 ms, doubling, at most 1 s.
fn backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis((20u64 << attempt.min(6)).min(1_000))
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

pub(crate) fn status_code(status: InstanceStatus) -> i16 {
    i16::from(status.code())
}

pub(crate) fn status_of(code: i16) -> Option<InstanceStatus> {
    u8::try_from(code).ok().and_then(InstanceStatus::from_code)
}

pub(crate) fn db_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| Error::InvalidArgument(format!("{what} {value} is out of range")))
}

pub(crate) const RUN_COLUMNS: &str = "key, id, workflow_type, status, created_at_ms, updated_at_ms, next_seq, head_lsn, head_hash, parent, suspended, wake_at_ms";

/// A `cairn_runs` row (selected with [`RUN_COLUMNS`]) as an [`InstanceRow`].
pub(crate) fn run_row(row: &Row) -> Result<InstanceRow> {
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
        let (config, transport) = tls::settings(url)?;
        let place = place_of(&config);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &transport {
            tls::Transport::Plain => Manager::from_config(config.clone(), NoTls, manager_config),
            tls::Transport::Tls(tls) => {
                Manager::from_config(config.clone(), tls.clone(), manager_config)
            }
        };
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
            message: format!("cannot connect: {}", error_chain(&err)),
            remedy: if transport.encrypted() {
                "Check that the server runs and listens there, that it offers TLS with a certificate for that host name signed by a CA of `sslrootcert` (or a public one), and the user, password and database in the connection string."
            } else {
                "Check that the server runs and listens there, and the user, password and database in the connection string (a server that accepts only encrypted connections needs `sslmode=verify-full`)."
            },
        })?;
        schema::migrate(&mut client, &place).await?;
        Ok(Self {
            pool,
            place,
            config,
            transport,
        })
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
        self.claim_counted(host, ttl_ms)
            .await
            .map(|claimed| claimed.leases)
    }

    /// [`PostgresStore::claim`], saying how many of the new leases were taken over from
    /// a host whose lease expired (the others nobody held).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn claim_counted(&self, host: u128, ttl_ms: u64) -> Result<Claimed> {
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
                     -- Its own lapsed shards are the heartbeat's to renew at the same
                     -- epoch (nobody else wrote meanwhile): claiming them again would
                     -- raise the epoch and fence its own appends in flight.
                     SELECT shard, owner FROM cairn_shards
                     WHERE (owner IS NULL OR expires_at < now()) AND owner IS DISTINCT FROM $1
                     ORDER BY shard
                     LIMIT GREATEST(0, ceil(($3::bigint)::numeric / (SELECT hosts FROM live))::bigint - (SELECT held FROM mine))
                     FOR UPDATE SKIP LOCKED
                 )
                 UPDATE cairn_shards AS s
                 SET owner = $1, epoch = s.epoch + 1,
                     expires_at = now() + make_interval(secs => $2::bigint / 1000.0)
                 FROM free WHERE s.shard = free.shard
                 RETURNING s.shard, s.epoch, free.owner IS NOT NULL",
                &[
                    &Uuid::from_u128(host),
                    &db_i64(ttl_ms, "lease duration")?,
                    &i64::from(SHARDS),
                ],
            )
            .await
            .map_err(|err| pg_error("claim shards", &err))?;
        let taken_over = rows.iter().filter(|row| row.get::<_, bool>(2)).count();
        Ok(Claimed {
            leases: leases(host, &rows),
            taken_over: u32::try_from(taken_over).unwrap_or(u32::MAX),
        })
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

    /// Shared value `name` and its version (`None`: never set).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn shared_value(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT version, value FROM cairn_shared_values WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(|err| pg_error("read a shared value", &err))?;
        Ok(row.map(|row| {
            (
                u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                row.get::<_, Vec<u8>>(1),
            )
        }))
    }

    /// Sets shared value `name` to `value` if it is still at `version` (0: never set);
    /// `false`, with nothing written, if another host changed it meanwhile.
    ///
    /// # Errors
    /// Storage errors.
    ///
    /// # Durability
    /// On `Ok(true)` the value is committed.
    ///
    /// # Cancel safety
    /// One statement: dropped before it resolves, the value was written whole or not at
    /// all; [`PostgresStore::shared_value`] says which.
    pub async fn put_shared_value(&self, name: &str, value: &[u8], version: u64) -> Result<bool> {
        let client = self.client().await?;
        let written = if version == 0 {
            client
                .execute(
                    "INSERT INTO cairn_shared_values (name, version, value) VALUES ($1, 1, $2)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &value],
                )
                .await
        } else {
            client
                .execute(
                    "UPDATE cairn_shared_values SET version = version + 1, value = $2
                     WHERE name = $1 AND version = $3",
                    &[&name, &value, &db_i64(version, "version")?],
                )
                .await
        }
        .map_err(|err| pg_error("write a shared value", &err))?;
        Ok(written == 1)
    }

    /// The database's clock, ms since the Unix epoch.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn now_ms(&self) -> Result<i64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )
            .await
            .map_err(|err| pg_error("read the database's clock", &err))?;
        Ok(row.get(0))
    }

    /// Removes `host`'s heartbeat row (it stopped): the others' fair shares grow at once.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn leave(&self, host: u128) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM cairn_hosts WHERE host = $1",
                &[&Uuid::from_u128(host)],
            )
            .await
            .map_err(|err| pg_error("remove a host", &err))?;
        Ok(())
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
        let op = Op::Start {
            id: id.to_owned(),
            workflow_type: workflow_type.to_owned(),
            input,
            parent,
            actor,
        };
        match self
            .commit(&[op], now_ms, None)
            .await
            .map_err(|f| f.error)?
            .answers
            .pop()
        {
            Some(Ok(Answer::Started(started))) => Ok(*started),
            Some(Err(err)) => Err(err),
            _ => Err(Error::InstanceNotFound(id.to_owned())),
        }
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
    /// ([`Error::InstanceFinished`]) or is unknown, or its event does not encode.
    ///
    /// # Errors
    /// The outer error is a storage failure: nothing of the batch was written (a commit
    /// whose outcome was unknown is resolved first; see the store's `commit`). The
    /// inner results are each append's outcome.
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
        let ops: Vec<Op> = requests
            .into_iter()
            .map(|request| Op::Append {
                key: request.key,
                kind: request.kind,
                expect: request.expect,
                actor: request.actor,
                fence: request.fence,
                document: None,
            })
            .collect();
        let outcome = self.commit(&ops, now_ms, None).await.map_err(|f| f.error)?;
        Ok(outcome
            .answers
            .into_iter()
            .map(|answer| match answer {
                Ok(Answer::Appended(appended)) => Ok(appended),
                Ok(_) => Err(Error::ShutDown),
                Err(err) => Err(err),
            })
            .collect())
    }

    /// Decides and commits `ops` in one transaction, retrying the whole batch when the
    /// server broke a deadlock or a serialization conflict, or the connection failed
    /// before `COMMIT` (nothing was written then).
    ///
    /// A `COMMIT` whose answer never came (the connection broke after it was sent) is
    /// **resolved, never guessed**: the transaction's id was read at its start, and its
    /// status is asked on a new connection until the server says committed or aborted;
    /// committed, the batch's answers stand; aborted, the batch is decided again.
    ///
    /// # Errors
    /// A storage error when the batch cannot be written after [`RETRIES`] attempts, or
    /// its outcome cannot be learnt within [`RESOLVE_WITHIN`] (the error says so: the
    /// caller must not assume either).
    pub(crate) async fn commit(
        &self,
        ops: &[Op],
        now_ms: u64,
        owned: Option<&std::collections::HashSet<u32>>,
    ) -> std::result::Result<Outcome, CommitFailure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.try_commit(ops, now_ms, owned).await {
                Ok(outcome) => return Ok(outcome),
                Err(failure) => failure,
            };
            let err = match failure {
                Failed::Before(err, retry) => {
                    if retry && attempt < RETRIES {
                        tracing::debug!(%err, attempt, "batch not written; trying again");
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                    err
                }
                Failed::Unknown { xid, outcome, err } => {
                    tracing::warn!(%err, xid, "a COMMIT went unanswered; asking the server how it ended");
                    match self.resolve(xid).await {
                        Ok(true) => return Ok(*outcome),
                        Ok(false) => {}
                        Err(error) => {
                            return Err(CommitFailure {
                                error,
                                unknown: true,
                            })
                        }
                    }
                    if attempt < RETRIES {
                        continue;
                    }
                    err
                }
            };
            return Err(CommitFailure {
                error: err,
                unknown: false,
            });
        }
    }

    async fn try_commit(
        &self,
        ops: &[Op],
        now_ms: u64,
        owned: Option<&std::collections::HashSet<u32>>,
    ) -> std::result::Result<Outcome, Failed> {
        let mut client = self
            .client()
            .await
            .map_err(|err| Failed::Before(err, true))?;
        let txn = client
            .transaction()
            .await
            .map_err(|err| Failed::before("begin a batch", &err))?;
        let xid: i64 = txn
            .query_one("SELECT txid_current()", &[])
            .await
            .map_err(|err| Failed::before("begin a batch", &err))?
            .get(0);
        let outcome = match batch::write(&txn, ops, now_ms, owned).await {
            Ok(outcome) => outcome,
            Err(err) => {
                // A statement failed: the transaction is aborted with nothing written.
                let retry = matches!(&err, Error::Storage(failure) if failure.is_transient());
                return Err(Failed::Before(err, retry));
            }
        };
        match txn.commit().await {
            Ok(()) => Ok(outcome),
            Err(err) if err.as_db_error().is_some() => Err(Failed::before("commit a batch", &err)),
            Err(err) => Err(Failed::Unknown {
                xid,
                outcome: Box::new(outcome),
                err: commit_error("a batch", &err),
            }),
        }
    }

    /// Whether transaction `xid` committed, asked on fresh connections until the server
    /// knows (a transaction whose connection broke is aborted once its backend notices).
    async fn resolve(&self, xid: i64) -> Result<bool> {
        let began = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let asked = async {
                let client = self.client().await?;
                let row = client
                    .query_one("SELECT txid_status($1)", &[&xid])
                    .await
                    .map_err(|err| pg_error("ask how a transaction ended", &err))?;
                Ok::<Option<String>, Error>(row.get(0))
            }
            .await;
            match asked {
                Ok(Some(status)) if status == "committed" => return Ok(true),
                Ok(Some(status)) if status == "aborted" => return Ok(false),
                Ok(status) => {
                    tracing::debug!(xid, ?status, "transaction still in progress");
                }
                Err(err) => tracing::warn!(%err, xid, "cannot ask yet how a transaction ended"),
            }
            if began.elapsed() > RESOLVE_WITHIN {
                return Err(Error::Storage(StorageFailure::new(format!(
                    "the outcome of transaction {xid} on {} is still unknown after {} s: it may or may not have committed; read the runs back before retrying",
                    self.place,
                    RESOLVE_WITHIN.as_secs()
                ))));
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
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
