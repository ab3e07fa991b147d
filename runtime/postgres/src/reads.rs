//! Reads of the journal's rows and indexes, and the open-task index's writes. Every
//! query here is answered from an index (`docs/DEPLOYMENT.md` lists them); none reads a
//! history or scans unrelated runs.

use std::collections::BTreeMap;

use cairn_core::commit::{
    attribute_bytes, decode_attribute, decode_versioned, encode_versioned, TaskIndexChange,
};
use cairn_core::error::{Error, Result};
use cairn_core::journal::{
    ActivityBucket, Attributes, Cursor, InstancePage, InstanceQuery, ParkedRow, Suspension,
    Tallies, TaskCursor, TaskPage, TaskQuery, PAGE_ROWS_MAX,
};
use cairn_core::notify::OutboxRow;
use cairn_core::schedule::ScheduleRow;
use cairn_core::task::{Party, TaskRow};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::{db_i64, pg_error, run_row, status_of, PostgresStore, RUN_COLUMNS};

/// The `what` of a `cairn_activity` row that counts starts (the others are status codes).
pub(crate) const STARTED_CODE: i16 = 255;

/// A page of tasks when the query names none.
const TASK_PAGE_DEFAULT: usize = 50;

pub(crate) fn encode_schedule(row: &ScheduleRow) -> Result<Vec<u8>> {
    encode_versioned(row, "schedule")
}

pub(crate) fn decode_schedule(id: &str, bytes: &[u8]) -> Result<ScheduleRow> {
    decode_versioned(|| format!("cairn_schedules, schedule `{id}`"), bytes)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn decode_task(run: Uuid, step: i32, bytes: &[u8]) -> Result<TaskRow> {
    decode_versioned(
        || format!("cairn_tasks, run {:032x} step {step}", run.as_u128()),
        bytes,
    )
}

/// Applies one change to the open-task index inside a batch's transaction.
pub(crate) async fn apply_task(
    txn: &deadpool_postgres::Transaction<'_>,
    change: &TaskIndexChange,
) -> Result<()> {
    match change {
        TaskIndexChange::Opened(row) => put_task(txn, row).await,
        TaskIndexChange::Changed {
            key,
            step,
            actor,
            change,
        } => {
            let run = Uuid::from_u128(*key);
            let step = i32::try_from(*step).unwrap_or(i32::MAX);
            let Some(found) = txn
                .query_opt(
                    "SELECT row FROM cairn_tasks WHERE run = $1 AND step = $2 FOR UPDATE",
                    &[&run, &step],
                )
                .await
                .map_err(|err| pg_error("read an open task", &err))?
            else {
                // The events were checked by the run's history; an index without the
                // row was damaged, and the change cannot be placed.
                return Err(Error::Corrupt {
                    location: format!("cairn_tasks, run {key:032x} step {step}"),
                    message: "a change was recorded for a task the index does not hold".into(),
                });
            };
            let bytes: Vec<u8> = found.get(0);
            let mut row = decode_task(run, step, &bytes)?;
            row.apply(actor, change);
            remove_task(txn, run, step).await?;
            put_task(txn, &row).await
        }
        TaskIndexChange::Closed { key, step } => {
            remove_task(
                txn,
                Uuid::from_u128(*key),
                i32::try_from(*step).unwrap_or(i32::MAX),
            )
            .await
        }
        TaskIndexChange::RunEnded { key } => {
            let run = Uuid::from_u128(*key);
            txn.execute("DELETE FROM cairn_task_inbox WHERE run = $1", &[&run])
                .await
                .map_err(|err| pg_error("close a run's tasks", &err))?;
            txn.execute("DELETE FROM cairn_tasks WHERE run = $1", &[&run])
                .await
                .map_err(|err| pg_error("close a run's tasks", &err))?;
            Ok(())
        }
    }
}

async fn put_task(txn: &deadpool_postgres::Transaction<'_>, row: &TaskRow) -> Result<()> {
    let run = Uuid::from_u128(row.key);
    let step = i32::try_from(row.step).unwrap_or(i32::MAX);
    let created = db_i64(row.created_at_ms, "time")?;
    let due = row.due_at_ms.and_then(|ms| i64::try_from(ms).ok());
    txn.execute(
        "INSERT INTO cairn_tasks (run, step, created_at_ms, workflow_type, name, due_at_ms, row)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &run,
            &step,
            &created,
            &row.workflow_type,
            &row.name,
            &due,
            &encode_versioned(row, "task row")?,
        ],
    )
    .await
    .map_err(|err| pg_error("open a task", &err))?;
    let parties: Vec<String> = row.parties().iter().map(Party::key).collect();
    txn.execute(
        "INSERT INTO cairn_task_inbox (party, created_at_ms, run, step)
         SELECT p, $2, $3, $4 FROM unnest($1::text[]) AS p ON CONFLICT DO NOTHING",
        &[&parties, &created, &run, &step],
    )
    .await
    .map_err(|err| pg_error("list a task", &err))?;
    Ok(())
}

async fn remove_task(txn: &deadpool_postgres::Transaction<'_>, run: Uuid, step: i32) -> Result<()> {
    txn.execute(
        "DELETE FROM cairn_task_inbox WHERE run = $1 AND step = $2",
        &[&run, &step],
    )
    .await
    .map_err(|err| pg_error("unlist a task", &err))?;
    txn.execute(
        "DELETE FROM cairn_tasks WHERE run = $1 AND step = $2",
        &[&run, &step],
    )
    .await
    .map_err(|err| pg_error("close a task", &err))?;
    Ok(())
}

impl PostgresStore {
    /// The envelope stored at log position `lsn`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn envelope(&self, lsn: u64) -> Result<Option<Vec<u8>>> {
        let client = self.client().await?;
        let Ok(lsn) = i64::try_from(lsn) else {
            return Ok(None);
        };
        Ok(client
            .query_opt("SELECT envelope FROM cairn_events WHERE lsn = $1", &[&lsn])
            .await
            .map_err(|err| pg_error("read an event", &err))?
            .map(|row| row.get(0)))
    }

    /// The search attributes of run `key`.
    ///
    /// # Errors
    /// Storage errors; [`Error::Corrupt`] for a value that does not decode.
    pub async fn attributes(&self, key: u128) -> Result<Attributes> {
        let client = self.client().await?;
        let mut out = Attributes::new();
        for row in client
            .query(
                "SELECT name, value FROM cairn_attributes WHERE run = $1",
                &[&Uuid::from_u128(key)],
            )
            .await
            .map_err(|err| pg_error("read attributes", &err))?
        {
            let name: String = row.get(0);
            let bytes: Vec<u8> = row.get(1);
            let value = decode_attribute(
                || format!("cairn_attributes, run {key:032x}, `{name}`"),
                &bytes,
            )?;
            out.insert(name, value);
        }
        Ok(out)
    }

    /// The unfinished runs of `shards` (all of them when `None`) with their suspension
    /// hints, from the index of running runs by shard.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn running(&self, shards: Option<&[u32]>) -> Result<Vec<(u128, Option<Suspension>)>> {
        let client = self.client().await?;
        let rows = match shards {
            None => client
                .query(
                    "SELECT key, suspended, wake_at_ms FROM cairn_runs WHERE status = 0 ORDER BY shard, key",
                    &[],
                )
                .await,
            Some(shards) => {
                let shards: Vec<i32> = shards
                    .iter()
                    .map(|shard| i32::try_from(*shard).unwrap_or(i32::MAX))
                    .collect();
                client
                    .query(
                        "SELECT key, suspended, wake_at_ms FROM cairn_runs
                         WHERE status = 0 AND shard = ANY($1) ORDER BY shard, key",
                        &[&shards],
                    )
                    .await
            }
        }
        .map_err(|err| pg_error("list running runs", &err))?;
        Ok(rows
            .iter()
            .map(|row| {
                let key: Uuid = row.get(0);
                let suspended: bool = row.get(1);
                let wake: Option<i64> = row.get(2);
                (
                    key.as_u128(),
                    suspended.then(|| Suspension {
                        wake_at_ms: wake.map(unsigned),
                    }),
                )
            })
            .collect())
    }

    /// Runs matching `query`, oldest first, one page, from the indexes on
    /// `cairn_runs` and `cairn_attributes`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn query(&self, query: &InstanceQuery) -> Result<InstancePage> {
        let limit = match query.limit {
            0 => PAGE_ROWS_MAX,
            n => n.min(PAGE_ROWS_MAX),
        };
        let mut conditions: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let param = |value: Box<dyn ToSql + Sync + Send>, params: &mut Vec<_>| {
            params.push(value);
            params.len()
        };
        if let Some(workflow_type) = &query.workflow_type {
            let n = param(Box::new(workflow_type.clone()), &mut params);
            conditions.push(format!("workflow_type = ${n}"));
        }
        if !query.statuses.is_empty() {
            let codes: Vec<i16> = query
                .statuses
                .iter()
                .map(|status| crate::status_code(*status))
                .collect();
            let n = param(Box::new(codes), &mut params);
            conditions.push(format!("status = ANY(${n})"));
        }
        if let Some(from) = query.created_from_ms {
            let n = param(Box::new(db_i64(from, "time")?), &mut params);
            conditions.push(format!("created_at_ms >= ${n}"));
        }
        if let Some(until) = query.created_until_ms {
            let until = i64::try_from(until).unwrap_or(i64::MAX);
            let n = param(Box::new(until), &mut params);
            conditions.push(format!("created_at_ms < ${n}"));
        }
        if let Some(after) = query.after {
            let at = param(Box::new(db_i64(after.created_at_ms, "time")?), &mut params);
            let key = param(Box::new(Uuid::from_u128(after.key)), &mut params);
            conditions.push(format!("(created_at_ms, key) > (${at}, ${key})"));
        }
        for (name, value) in &query.attributes {
            let bytes = attribute_bytes(value)?;
            let n = param(Box::new(name.clone()), &mut params);
            let v = param(Box::new(bytes), &mut params);
            conditions.push(format!(
                "EXISTS (SELECT 1 FROM cairn_attributes a WHERE a.run = r.key AND a.name = ${n} AND a.value = ${v})"
            ));
        }
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let n = param(Box::new(fetch), &mut params);
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM cairn_runs r {filter} ORDER BY created_at_ms, key LIMIT ${n}"
        );
        let client = self.client().await?;
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client
            .query(&sql, &refs)
            .await
            .map_err(|err| pg_error("query runs", &err))?;
        let mut page = InstancePage::default();
        for row in rows.iter().take(limit) {
            page.rows.push(run_row(row)?);
        }
        if rows.len() > limit {
            page.next = page.rows.last().map(Cursor::after);
        }
        Ok(page)
    }

    /// Every stored schedule, by id.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn schedules(&self) -> Result<Vec<(String, ScheduleRow)>> {
        let client = self.client().await?;
        client
            .query("SELECT id, row FROM cairn_schedules ORDER BY id", &[])
            .await
            .map_err(|err| pg_error("read schedules", &err))?
            .iter()
            .map(|row| {
                let id: String = row.get(0);
                let bytes: Vec<u8> = row.get(1);
                decode_schedule(&id, &bytes).map(|decoded| (id, decoded))
            })
            .collect()
    }

    /// The parked runs and why.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn parked(&self) -> Result<Vec<(u128, ParkedRow)>> {
        let client = self.client().await?;
        client
            .query("SELECT run, row FROM cairn_parked ORDER BY run", &[])
            .await
            .map_err(|err| pg_error("read parked runs", &err))?
            .iter()
            .map(|row| {
                let run: Uuid = row.get(0);
                let bytes: Vec<u8> = row.get(1);
                decode_versioned(
                    || format!("cairn_parked, run {:032x}", run.as_u128()),
                    &bytes,
                )
                .map(|parked| (run.as_u128(), parked))
            })
            .collect()
    }

    /// The tallies, summed over shards and stripes, with activity from the bucket of
    /// `activity_from_ms` on.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn tallies(&self, activity_from_ms: u64) -> Result<Tallies> {
        let client = self.client().await?;
        let mut tallies = Tallies::default();
        for row in client
            .query(
                "SELECT workflow_type, status, sum(runs)::bigint FROM cairn_counts
                 GROUP BY workflow_type, status HAVING sum(runs) <> 0",
                &[],
            )
            .await
            .map_err(|err| pg_error("read counts", &err))?
        {
            let code: i16 = row.get(1);
            let Some(status) = status_of(code) else {
                continue;
            };
            tallies
                .by_status
                .insert((row.get(0), status), unsigned(row.get(2)));
        }
        let from =
            i64::try_from(cairn_core::journal::tally_bucket(activity_from_ms)).unwrap_or(i64::MAX);
        let mut buckets: BTreeMap<(i64, String), ActivityBucket> = BTreeMap::new();
        for row in client
            .query(
                "SELECT bucket_ms, workflow_type, what, sum(runs)::bigint FROM cairn_activity
                 WHERE bucket_ms >= $1 GROUP BY bucket_ms, workflow_type, what
                 ORDER BY bucket_ms, workflow_type",
                &[&from],
            )
            .await
            .map_err(|err| pg_error("read activity", &err))?
        {
            let at: i64 = row.get(0);
            let workflow_type: String = row.get(1);
            let what: i16 = row.get(2);
            let runs = unsigned(row.get(3));
            let bucket = buckets
                .entry((at, workflow_type.clone()))
                .or_insert_with(|| ActivityBucket {
                    workflow_type,
                    at_ms: unsigned(at),
                    ..ActivityBucket::default()
                });
            if what == STARTED_CODE {
                bucket.started += runs;
            } else if let Some(status) = status_of(what) {
                *bucket.ended.entry(status).or_default() += runs;
            }
        }
        tallies.activity = buckets.into_values().collect();
        Ok(tallies)
    }

    /// Open tasks in the inboxes of `query`, oldest first, one page.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn tasks(&self, query: &TaskQuery) -> Result<TaskPage> {
        let limit = match query.limit {
            0 => TASK_PAGE_DEFAULT,
            n => n.min(PAGE_ROWS_MAX),
        };
        let parties: Vec<String> = if query.parties.is_empty() {
            vec![Party::All.key()]
        } else {
            query.parties.iter().map(Party::key).collect()
        };
        let after = query.after.unwrap_or(TaskCursor {
            created_at_ms: 0,
            key: 0,
            step: 0,
        });
        let inclusive = query.after.is_none();
        let due = query
            .due_before_ms
            .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT t.run, t.step, t.row FROM cairn_tasks t
                 WHERE (t.run, t.step) IN (
                     SELECT DISTINCT i.run, i.step FROM cairn_task_inbox i
                     WHERE i.party = ANY($1)
                       AND ((i.created_at_ms, i.run, i.step) > ($2, $3, $4) OR ($5 AND (i.created_at_ms, i.run, i.step) = ($2, $3, $4)))
                 )
                   AND ($6::text IS NULL OR t.workflow_type = $6)
                   AND ($7::text IS NULL OR t.name = $7)
                   AND ($8::bigint IS NULL OR t.due_at_ms <= $8)
                 ORDER BY t.created_at_ms, t.run, t.step
                 LIMIT $9",
                &[
                    &parties,
                    &db_i64(after.created_at_ms, "time")?,
                    &Uuid::from_u128(after.key),
                    &i32::try_from(after.step).unwrap_or(i32::MAX),
                    &inclusive,
                    &query.workflow_type,
                    &query.name,
                    &due,
                    &fetch,
                ],
            )
            .await
            .map_err(|err| pg_error("list open tasks", &err))?;
        let mut page = TaskPage::default();
        for row in rows.iter().take(limit) {
            let bytes: Vec<u8> = row.get(2);
            page.rows.push(decode_task(row.get(0), row.get(1), &bytes)?);
        }
        if rows.len() > limit {
            page.next = page.rows.last().map(TaskCursor::after);
        }
        Ok(page)
    }

    /// Open task `step` of run `key`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn task(&self, key: u128, step: u32) -> Result<Option<TaskRow>> {
        let client = self.client().await?;
        let run = Uuid::from_u128(key);
        let step = i32::try_from(step).unwrap_or(i32::MAX);
        client
            .query_opt(
                "SELECT row FROM cairn_tasks WHERE run = $1 AND step = $2",
                &[&run, &step],
            )
            .await
            .map_err(|err| pg_error("read an open task", &err))?
            .map(|row| decode_task(run, step, &row.get::<_, Vec<u8>>(0)))
            .transpose()
    }

    /// The notifications due at `now_ms` (most overdue first, at most `limit`) and when
    /// the next one after them is due; with `shards`, only those of runs of these shards
    /// (and those written before schema 5, which name none).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn outbox_due(
        &self,
        shards: Option<&[u32]>,
        now_ms: u64,
        limit: usize,
    ) -> Result<(Vec<OutboxRow>, Option<u64>)> {
        let client = self.client().await?;
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = match shards {
            None => {
                client
                    .query(
                        "SELECT id, row, due_ms FROM cairn_outbox WHERE due_ms IS NOT NULL
                         ORDER BY due_ms, id LIMIT $1",
                        &[&fetch],
                    )
                    .await
            }
            Some(shards) => {
                let shards: Vec<i32> = shards
                    .iter()
                    .map(|shard| i32::try_from(*shard).unwrap_or(i32::MAX))
                    .collect();
                client
                    .query(
                        "SELECT id, row, due_ms FROM cairn_outbox
                         WHERE due_ms IS NOT NULL AND (shard = ANY($2) OR shard IS NULL)
                         ORDER BY due_ms, id LIMIT $1",
                        &[&fetch, &shards],
                    )
                    .await
            }
        }
        .map_err(|err| pg_error("read due notifications", &err))?;
        let mut out = Vec::new();
        let mut next = None;
        for row in &rows {
            let due = unsigned(row.get(2));
            if due > now_ms || out.len() == limit {
                next = Some(due);
                break;
            }
            out.push(decode_outbox(row.get(0), &row.get::<_, Vec<u8>>(1))?);
        }
        Ok((out, next))
    }

    /// The notifications of runs of `shards` due at `now_ms` (the oldest first, at most
    /// `limit`), each held for the caller until `now_ms + hold_ms` in the same statement
    /// (its due time moves there; recording the attempt sets it anew), and when the next
    /// one is due. Rows another host is claiming or recording at that moment are
    /// skipped, not waited for: two hosts never get the same notification from one due
    /// time.
    ///
    /// # Errors
    /// Storage errors.
    ///
    /// # Cancel safety
    /// Dropped, the rows may have been claimed without the caller seeing them: they are
    /// due again when the hold lapses, so nothing is lost, only delayed.
    pub async fn outbox_claim(
        &self,
        shards: &[u32],
        now_ms: u64,
        limit: usize,
        hold_ms: u64,
    ) -> Result<(Vec<OutboxRow>, Option<u64>)> {
        let client = self.client().await?;
        let shards: Vec<i32> = shards
            .iter()
            .map(|shard| i32::try_from(*shard).unwrap_or(i32::MAX))
            .collect();
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let until = i64::try_from(now_ms.saturating_add(hold_ms)).unwrap_or(i64::MAX);
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX);
        let claimed = client
            .query(
                "WITH due AS (
                     SELECT id FROM cairn_outbox
                     WHERE due_ms IS NOT NULL AND due_ms <= $1
                       AND (shard = ANY($2) OR shard IS NULL)
                     ORDER BY due_ms, id LIMIT $3
                     FOR UPDATE SKIP LOCKED
                 )
                 UPDATE cairn_outbox SET due_ms = $4 FROM due WHERE cairn_outbox.id = due.id
                 RETURNING cairn_outbox.id, cairn_outbox.row",
                &[&now, &shards, &fetch, &until],
            )
            .await
            .map_err(|err| pg_error("claim due notifications", &err))?;
        let next: Option<i64> = client
            .query_one(
                "SELECT min(due_ms) FROM cairn_outbox
                 WHERE due_ms IS NOT NULL AND (shard = ANY($1) OR shard IS NULL)",
                &[&shards],
            )
            .await
            .map_err(|err| pg_error("read when the next notification is due", &err))?
            .get(0);
        let mut out = claimed
            .iter()
            .map(|row| decode_outbox(row.get(0), &row.get::<_, Vec<u8>>(1)))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|row| row.notification.id);
        Ok((out, next.map(unsigned)))
    }

    /// The outbox in id order after `after`, at most `limit` rows.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<OutboxRow>> {
        let client = self.client().await?;
        let after = after.map_or(-1, |id| i64::try_from(id).unwrap_or(i64::MAX));
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX);
        client
            .query(
                "SELECT id, row FROM cairn_outbox WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &fetch],
            )
            .await
            .map_err(|err| pg_error("read the outbox", &err))?
            .iter()
            .map(|row| decode_outbox(row.get(0), &row.get::<_, Vec<u8>>(1)))
            .collect()
    }

    /// The stored document with SHA-256 `sha256`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn document_bytes(&self, sha256: [u8; 32]) -> Result<Option<Vec<u8>>> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT bytes FROM cairn_documents WHERE sha256 = $1",
                &[&sha256.as_slice()],
            )
            .await
            .map_err(|err| pg_error("read a document", &err))?
            .map(|row| row.get(0)))
    }
}

impl PostgresStore {
    /// Checks the whole database as an auditor would, and returns what is wrong, in
    /// words (nothing when all holds): every run's events are numbered `0..next_seq`,
    /// each written once; no event belongs to no run; every id names a run of that id;
    /// along each history the lease epochs of fenced appends never decrease. (Each
    /// history's hash chain is checked by `verify_history` on its raw events.)
    ///
    /// # Errors
    /// Storage errors.
    pub async fn invariants(&self) -> Result<Vec<String>> {
        let client = self.client().await?;
        let mut found = Vec::new();
        for row in client
            .query(
                "SELECT r.id, r.next_seq, count(e.seq), coalesce(max(e.seq), -1)
                 FROM cairn_runs r LEFT JOIN cairn_events e ON e.run = r.key
                 GROUP BY r.key, r.id, r.next_seq
                 HAVING count(e.seq) <> r.next_seq OR coalesce(max(e.seq), -1) <> r.next_seq - 1
                 LIMIT 20",
                &[],
            )
            .await
            .map_err(|err| pg_error("check sequence numbers", &err))?
        {
            let id: String = row.get(0);
            let next: i64 = row.get(1);
            let count: i64 = row.get(2);
            let max: i64 = row.get(3);
            found.push(format!(
                "run of `{id}`: its row counts {next} events, the log holds {count} numbered up to {max}"
            ));
        }
        for row in client
            .query(
                "SELECT DISTINCT e.run FROM cairn_events e LEFT JOIN cairn_runs r ON r.key = e.run
                 WHERE r.key IS NULL LIMIT 20",
                &[],
            )
            .await
            .map_err(|err| pg_error("check orphan events", &err))?
        {
            let run: Uuid = row.get(0);
            found.push(format!(
                "events of run {:032x}, which has no row",
                run.as_u128()
            ));
        }
        for row in client
            .query(
                "SELECT i.id FROM cairn_ids i LEFT JOIN cairn_runs r ON r.key = i.key
                 WHERE r.key IS NULL OR r.id <> i.id LIMIT 20",
                &[],
            )
            .await
            .map_err(|err| pg_error("check ids", &err))?
        {
            let id: String = row.get(0);
            found.push(format!("id `{id}` names no run of that id"));
        }
        for row in client
            .query(
                "SELECT run, seq, epoch, before FROM (
                     SELECT run, seq, epoch, max(epoch) OVER (
                         PARTITION BY run ORDER BY seq
                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
                     ) AS before
                     FROM cairn_events WHERE epoch > 0
                 ) AS fenced WHERE epoch < before LIMIT 20",
                &[],
            )
            .await
            .map_err(|err| pg_error("check lease epochs", &err))?
        {
            let run: Uuid = row.get(0);
            let seq: i64 = row.get(1);
            let epoch: i64 = row.get(2);
            let before: i64 = row.get(3);
            found.push(format!(
                "run {:032x}, event #{seq}: lease epoch {epoch} after epoch {before}",
                run.as_u128()
            ));
        }
        Ok(found)
    }
}

fn decode_outbox(id: i64, bytes: &[u8]) -> Result<OutboxRow> {
    decode_versioned(|| format!("cairn_outbox, notification {id}"), bytes)
}
