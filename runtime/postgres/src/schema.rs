//! The schema and its migrations. `cairn_meta['schema']` holds the version; opening a
//! database applies the missing migrations in one transaction under an advisory lock (so
//! hosts starting together migrate once) and refuses a database whose schema is newer
//! than this build.

use deadpool_postgres::Client;

use cairn_core::error::{Error, Result};

use crate::{pg_error, SHARDS};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: i64 = 7;

/// Key of the advisory lock taken while migrating (any fixed number of Cairn's).
const MIGRATION_LOCK: i64 = 0x6361_6972_6e00_0001;

/// Version 1: runs (one row per run; the columns the queries filter on), the ids, the
/// log (the primary key `(run, seq)` is the arbiter of who records step `seq`), the LSN
/// sequence, and the shards with their lease (owner, epoch, expiry on the database's
/// clock).
const V1: &str = "
CREATE SEQUENCE cairn_lsn;
CREATE TABLE cairn_runs (
    key uuid PRIMARY KEY,
    id text NOT NULL,
    workflow_type text NOT NULL,
    status smallint NOT NULL,
    created_at_ms bigint NOT NULL,
    updated_at_ms bigint NOT NULL,
    next_seq bigint NOT NULL,
    head_lsn bigint NOT NULL,
    head_hash bytea NOT NULL,
    parent uuid,
    suspended boolean NOT NULL DEFAULT false,
    wake_at_ms bigint,
    shard integer NOT NULL
);
CREATE INDEX cairn_runs_by_start ON cairn_runs (created_at_ms, key);
CREATE INDEX cairn_runs_by_type ON cairn_runs (workflow_type, created_at_ms, key);
CREATE INDEX cairn_runs_by_status ON cairn_runs (status, created_at_ms, key);
CREATE INDEX cairn_runs_running ON cairn_runs (shard, key) WHERE status = 0;
CREATE TABLE cairn_ids (
    id text PRIMARY KEY,
    key uuid NOT NULL
);
CREATE TABLE cairn_events (
    run uuid NOT NULL,
    seq bigint NOT NULL,
    lsn bigint NOT NULL UNIQUE,
    epoch bigint NOT NULL,
    envelope bytea NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE TABLE cairn_shards (
    shard integer PRIMARY KEY,
    owner uuid,
    epoch bigint NOT NULL,
    expires_at timestamptz
);
";

/// Version 2: the live hosts, each with the expiry of its last heartbeat (on the
/// database's clock), so that a host that holds no shard yet counts in the fair share.
const V2: &str = "
CREATE TABLE cairn_hosts (
    host uuid PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
";

/// Version 3: what a journal keeps beside the log, each row written in the commit of the
/// event it derives from: search attributes (indexed by value), parked runs, schedules,
/// open tasks and their inboxes, the notification outbox (indexed by when it is due),
/// documents by SHA-256, and the tallies (runs by type and status per shard; starts and
/// ends per five-minute bucket per stripe of 16 shards), so hosts owning different
/// shards never update one row. A run also says whether a child of it ended since its
/// own last event (`child_ended`: its eviction is refused until then).
const V3: &str = "
ALTER TABLE cairn_runs ADD COLUMN child_ended boolean NOT NULL DEFAULT false;
CREATE TABLE cairn_attributes (
    run uuid NOT NULL,
    name text NOT NULL,
    value bytea NOT NULL,
    created_at_ms bigint NOT NULL,
    PRIMARY KEY (run, name)
);
CREATE INDEX cairn_attributes_by_value ON cairn_attributes (name, value, created_at_ms, run);
CREATE TABLE cairn_parked (
    run uuid PRIMARY KEY,
    row bytea NOT NULL
);
CREATE TABLE cairn_schedules (
    id text PRIMARY KEY,
    row bytea NOT NULL
);
CREATE TABLE cairn_tasks (
    run uuid NOT NULL,
    step integer NOT NULL,
    created_at_ms bigint NOT NULL,
    workflow_type text NOT NULL,
    name text NOT NULL,
    due_at_ms bigint,
    row bytea NOT NULL,
    PRIMARY KEY (run, step)
);
CREATE INDEX cairn_tasks_by_start ON cairn_tasks (created_at_ms, run, step);
CREATE TABLE cairn_task_inbox (
    party text NOT NULL,
    created_at_ms bigint NOT NULL,
    run uuid NOT NULL,
    step integer NOT NULL,
    PRIMARY KEY (party, created_at_ms, run, step)
);
CREATE INDEX cairn_task_inbox_by_task ON cairn_task_inbox (run, step);
CREATE TABLE cairn_outbox (
    id bigint PRIMARY KEY,
    row bytea NOT NULL,
    due_ms bigint
);
CREATE INDEX cairn_outbox_due ON cairn_outbox (due_ms, id) WHERE due_ms IS NOT NULL;
CREATE TABLE cairn_documents (
    sha256 bytea PRIMARY KEY,
    bytes bytea NOT NULL
);
CREATE TABLE cairn_counts (
    workflow_type text NOT NULL,
    status smallint NOT NULL,
    shard integer NOT NULL,
    runs bigint NOT NULL,
    PRIMARY KEY (workflow_type, status, shard)
);
CREATE TABLE cairn_activity (
    bucket_ms bigint NOT NULL,
    workflow_type text NOT NULL,
    what smallint NOT NULL,
    stripe integer NOT NULL,
    runs bigint NOT NULL,
    PRIMARY KEY (bucket_ms, workflow_type, what, stripe)
);
INSERT INTO cairn_counts (workflow_type, status, shard, runs)
    SELECT workflow_type, status, shard, count(*) FROM cairn_runs GROUP BY 1, 2, 3;
";

/// Version 4: wake-ups across hosts. A host that records an event its owner must hear of
/// (a message to, or the start of, a run of a shard it does not hold; the end of a child
/// whose parent it does not hold) leaves `(shard, run, seq)` here in the same
/// transaction; the owner of `shard` takes the rows and applies the events. Not a
/// `NOTIFY` in the append transaction: that would serialise every commit of every host on
/// the server's notification lock.
const V4: &str = "
CREATE TABLE cairn_wakes (
    shard integer NOT NULL,
    run uuid NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (shard, run, seq)
);
";

/// Version 5: each notification names the shard of its run, so only the shard's owner
/// delivers it (hosts no longer each deliver every notification). Rows written before
/// name none and are delivered by any host, as before.
const V5: &str = "
ALTER TABLE cairn_outbox ADD COLUMN shard integer;
CREATE INDEX cairn_outbox_due_by_shard ON cairn_outbox (shard, due_ms, id) WHERE due_ms IS NOT NULL;
";

/// Version 6: values the hosts keep for all of them (the dashboard's saved views), each
/// with a version that every change raises (a change is made only at the version its
/// writer read).
const V6: &str = "
CREATE TABLE cairn_shared_values (
    name text PRIMARY KEY,
    version bigint NOT NULL,
    value bytea NOT NULL
);
";

/// Version 7: the event kind `TaskTaken`. No table changes: the version only rises so
/// that older builds, which cannot read the event, refuse the database.
const V7: &str = "SELECT 1";

/// The migrations, version `n` at index `n - 1`.
const MIGRATIONS: [&str; 7] = [V1, V2, V3, V4, V5, V6, V7];

/// Brings the database to [`SCHEMA_VERSION`]; returns the version it found (0 for an
/// empty database).
pub(crate) async fn migrate(client: &mut Client, place: &str) -> Result<i64> {
    let txn = client
        .transaction()
        .await
        .map_err(|err| pg_error("begin the migration", &err))?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|err| pg_error("lock the schema", &err))?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS cairn_meta (key text PRIMARY KEY, value bigint NOT NULL)",
    )
    .await
    .map_err(|err| pg_error("create cairn_meta", &err))?;
    let found: i64 = txn
        .query_opt("SELECT value FROM cairn_meta WHERE key = 'schema'", &[])
        .await
        .map_err(|err| pg_error("read the schema version", &err))?
        .map_or(0, |row| row.get(0));
    if found > SCHEMA_VERSION {
        return Err(Error::Open {
            path: place.into(),
            message: format!(
                "its Cairn schema is version {found}, newer than this build's {SCHEMA_VERSION}"
            ),
            remedy: "Run a build of Cairn at least as new as the one that migrated the database; nothing was changed.",
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = i64::try_from(index).unwrap_or(i64::MAX) + 1;
        if version <= found {
            continue;
        }
        txn.batch_execute(sql)
            .await
            .map_err(|err| pg_error(&format!("apply schema version {version}"), &err))?;
        if version == 1 {
            let shards = i32::try_from(SHARDS).unwrap_or(i32::MAX);
            txn.execute(
                "INSERT INTO cairn_shards (shard, owner, epoch, expires_at)
                 SELECT s, NULL, 0, NULL FROM generate_series(0, $1 - 1) AS s",
                &[&shards],
            )
            .await
            .map_err(|err| pg_error("create the shards", &err))?;
        }
    }
    txn.execute(
        "INSERT INTO cairn_meta (key, value) VALUES ('schema', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&SCHEMA_VERSION],
    )
    .await
    .map_err(|err| pg_error("record the schema version", &err))?;
    txn.commit()
        .await
        .map_err(|err| pg_error("commit the migration", &err))?;
    if found < SCHEMA_VERSION {
        tracing::info!(from = found, to = SCHEMA_VERSION, %place, "migrated the PostgreSQL schema");
    }
    Ok(found)
}
