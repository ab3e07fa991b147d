//! One group commit: the operations of many runs, decided in order against the runs'
//! heads as the batch leaves them, written in **one transaction**.
//!
//! Every event is decided by `cairn_core::commit::plan_event`, as in the redb store, so
//! both stores derive the same indexes from the same events. What is PostgreSQL's own:
//! - Runs are locked (`FOR UPDATE`) in key order, and the shards of fenced operations
//!   read `FOR SHARE` in shard order, so the batches of several hosts cannot wait on each
//!   other in a circle (the one exception, the parents of runs that end, are locked
//!   after; a deadlock the server breaks is retried by the caller as a whole batch).
//! - A fenced operation (the run's owner: its steps, its eviction, its hand-over) lands
//!   only if its lease is the shard's current one, checked in this transaction; an
//!   unfenced one (a message from outside: a signal, a cancellation, a task's decision)
//!   is ordered by the run's lock.
//! - Ids are claimed with `INSERT .. ON CONFLICT DO NOTHING`, so of two hosts starting
//!   the same id at once exactly one creates it.
//! - The tallies are kept per shard (`cairn_counts`) and per stripe of shards
//!   (`cairn_activity`), so hosts that own different shards do not queue on one row.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use cairn_core::codec::Payload;
use cairn_core::commit::{
    attribute_bytes, decode_attribute, encode_versioned, plan_event, PlannedEvent, TaskIndexChange,
};
use cairn_core::error::{Error, Result};
use cairn_core::event::{AttrValue, EventKind, EVENT_BYTES_MAX, GENESIS_HASH};
use cairn_core::journal::{
    tally_bucket, Appended, Carried, Committed, Expect, InstanceRow, InstanceStatus, Started,
};
use cairn_core::notify::{Delivery, DeliveryAttempt, OutboxRow};
use cairn_core::schedule::ScheduleRow;
use cairn_core::task::Actor;
use deadpool_postgres::Transaction;
use uuid::Uuid;

use crate::reads::STARTED_CODE;
use crate::{db_i64, pg_error, run_row, shard_of, status_code, Lease, RUN_COLUMNS};

/// Room an event needs beyond its payloads and names (header, hashes, varints).
const STEP_HEADROOM_BYTES: usize = 1024;

/// Shards per stripe of `cairn_activity`.
pub(crate) const STRIPE_SHARDS: u32 = 16;

/// Runs `sql` with a statement prepared once per connection (a batch then costs one round
/// trip per statement, and statements sent together share one).
async fn rows(
    txn: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<Vec<tokio_postgres::Row>> {
    let statement = txn
        .prepare_cached(sql)
        .await
        .map_err(|err| pg_error(what, &err))?;
    txn.query(&statement, params)
        .await
        .map_err(|err| pg_error(what, &err))
}

/// [`rows`] for a statement whose rows are not needed.
async fn exec(
    txn: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<u64> {
    let statement = txn
        .prepare_cached(sql)
        .await
        .map_err(|err| pg_error(what, &err))?;
    txn.execute(&statement, params)
        .await
        .map_err(|err| pg_error(what, &err))
}

/// One operation of a batch.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Start instance `id`, or find it.
    Start {
        id: String,
        workflow_type: String,
        input: Payload,
        parent: Option<u128>,
        actor: Option<Actor>,
    },
    /// Append `kind` to run `key` (with a document's bytes for `DocumentAttached`).
    Append {
        key: u128,
        kind: EventKind,
        expect: Expect,
        actor: Option<Actor>,
        fence: Option<Lease>,
        document: Option<([u8; 32], Vec<u8>)>,
    },
    /// Mark run `key` evicted while waiting.
    Suspend {
        key: u128,
        expected_next_seq: u64,
        wake_at_ms: Option<u64>,
        fence: Option<Lease>,
    },
    /// Hand run `key` over to a new run.
    ContinueAsNew {
        key: u128,
        input: Payload,
        carried: Carried,
        fence: Option<Lease>,
    },
    /// Store or delete a schedule, compare-and-set.
    Schedule {
        id: String,
        row: Option<ScheduleRow>,
        only_if: Option<ScheduleRow>,
    },
    /// Record a delivery attempt of a notification.
    OutboxAttempt {
        id: u64,
        attempt: DeliveryAttempt,
        delivery: Delivery,
    },
}

impl Op {
    /// Most events it can write (LSNs are taken for this many up front).
    fn events_at_most(&self) -> usize {
        match self {
            Op::Start { .. } | Op::Append { .. } => 1,
            Op::ContinueAsNew { carried, .. } => 4 + carried.signals.len(),
            Op::Suspend { .. } | Op::Schedule { .. } | Op::OutboxAttempt { .. } => 0,
        }
    }

    /// The existing run it works on, if any.
    fn run(&self) -> Option<u128> {
        match self {
            Op::Append { key, .. } | Op::Suspend { key, .. } | Op::ContinueAsNew { key, .. } => {
                Some(*key)
            }
            _ => None,
        }
    }

    fn fence(&self) -> Option<Lease> {
        match self {
            Op::Append { fence, .. }
            | Op::Suspend { fence, .. }
            | Op::ContinueAsNew { fence, .. } => *fence,
            _ => None,
        }
    }
}

/// What one operation got.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    Started(Box<Started>),
    Appended(Appended),
    Flag(bool),
    Next(Option<u128>),
}

/// What a committed batch answers: one result per operation, in order, and what the
/// commit made durable for the host to hear, in commit order.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) answers: Vec<Result<Answer>>,
    pub(crate) effects: Vec<Committed>,
    /// The LSN of one event the batch wrote, to tell afterwards whether it committed.
    pub(crate) witness: Option<i64>,
    /// Whether anything at all was written.
    pub(crate) wrote: bool,
    /// Whether it left wake-ups for other hosts (their owners are then nudged).
    pub(crate) woke_others: bool,
}

/// A run as the batch holds it: its row, whether a child of it ended since its own last
/// event, whether it existed before the batch.
struct Head {
    row: InstanceRow,
    child_ended: bool,
    existed: bool,
}

/// Everything the batch writes, gathered while deciding.
#[derive(Default)]
struct Writes {
    events: Vec<(Uuid, i64, i64, i64, Vec<u8>)>,
    touched: BTreeSet<u128>,
    moved_ids: Vec<(String, Uuid)>,
    unclaimed: Vec<String>,
    attributes: BTreeMap<(u128, String), (Vec<u8>, i64)>,
    parked: BTreeMap<u128, Option<Vec<u8>>>,
    tasks: Vec<TaskIndexChange>,
    /// New notifications, with the shard of their run.
    outbox: Vec<(i32, OutboxRow)>,
    attempts: Vec<(u64, DeliveryAttempt, Delivery)>,
    documents: BTreeMap<[u8; 32], Vec<u8>>,
    schedules: Vec<(String, Option<Vec<u8>>)>,
    counts: BTreeMap<(String, i16, i32), i64>,
    activity: BTreeMap<(i64, String, i16, i32), i64>,
    /// Wake-ups for other hosts: (shard, run, seq).
    wakes: BTreeSet<(i32, u128, i64)>,
}

/// Decides and writes `ops` in the open transaction `txn` (the caller commits).
///
/// `owned` is the set of shards this host holds, when it is one host among several: an
/// event on a run of another shard (a message, a start), or the end of a child whose
/// parent is of another shard, leaves a wake-up for that shard's owner (`cairn_wakes`).
pub(crate) async fn write(
    txn: &Transaction<'_>,
    ops: &[Op],
    now_ms: u64,
    owned: Option<&HashSet<u32>>,
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut answers: Vec<Option<Result<Answer>>> = vec![None; ops.len()];

    // Ids first: of two batches starting one id, the second waits here for the first
    // and then finds it taken.
    let mut claims: BTreeMap<&str, Uuid> = BTreeMap::new();
    for op in ops {
        if let Op::Start { id, .. } = op {
            claims.entry(id.as_str()).or_insert_with(Uuid::now_v7);
        }
    }
    let mut created: HashMap<String, u128> = HashMap::new();
    if !claims.is_empty() {
        let ids: Vec<&str> = claims.keys().copied().collect();
        let keys: Vec<Uuid> = claims.values().copied().collect();
        for row in rows(
            txn,
            "INSERT INTO cairn_ids (id, key) SELECT * FROM unnest($1::text[], $2::uuid[])
                 ON CONFLICT (id) DO NOTHING RETURNING id, key",
            &[&ids, &keys],
            "claim ids",
        )
        .await?
        {
            created.insert(row.get(0), row.get::<_, Uuid>(1).as_u128());
        }
    }
    let existing_ids: Vec<&str> = claims
        .keys()
        .copied()
        .filter(|id| !created.contains_key(*id))
        .collect();
    let mut found: HashMap<String, u128> = HashMap::new();
    if !existing_ids.is_empty() {
        for row in rows(
            txn,
            "SELECT id, key FROM cairn_ids WHERE id = ANY($1)",
            &[&existing_ids],
            "read ids",
        )
        .await?
        {
            found.insert(row.get(0), row.get::<_, Uuid>(1).as_u128());
        }
    }

    // The runs the operations name and the existing instances of started ids, locked in
    // key order; then the parents of runs that may end.
    let mut keys: BTreeSet<u128> = ops.iter().filter_map(Op::run).collect();
    keys.extend(found.values().copied());
    // The runs first (their locks in key order), then the shards of fenced operations,
    // the LSNs and the parked runs: sent together, answered in order.
    let run_keys: Vec<Uuid> = keys.iter().map(|key| Uuid::from_u128(*key)).collect();
    let shards: Vec<i32> = ops
        .iter()
        .filter_map(Op::fence)
        .map(|lease| i32::try_from(lease.shard).unwrap_or(i32::MAX))
        .collect::<BTreeSet<i32>>()
        .into_iter()
        .collect();
    let wanted =
        i64::try_from(ops.iter().map(Op::events_at_most).sum::<usize>()).unwrap_or(i64::MAX);
    let lock_sql = format!(
        "SELECT {RUN_COLUMNS}, child_ended FROM cairn_runs WHERE key = ANY($1) ORDER BY key FOR UPDATE"
    );
    let (locked, lease_rows, lsn_rows, parked_rows) = futures::try_join!(
        async {
            if run_keys.is_empty() {
                return Ok(Vec::new());
            }
            rows(txn, &lock_sql, &[&run_keys], "lock the runs").await
        },
        async {
            if shards.is_empty() {
                return Ok(Vec::new());
            }
            rows(
                txn,
                "SELECT shard, owner, epoch FROM cairn_shards WHERE shard = ANY($1) ORDER BY shard FOR SHARE",
                &[&shards],
                "check the leases",
            )
            .await
        },
        async {
            if wanted == 0 {
                return Ok(Vec::new());
            }
            rows(
                txn,
                "SELECT nextval('cairn_lsn') FROM generate_series(1, $1::bigint)",
                &[&wanted],
                "take LSNs",
            )
            .await
        },
        async {
            if run_keys.is_empty() {
                return Ok(Vec::new());
            }
            rows(
                txn,
                "SELECT run FROM cairn_parked WHERE run = ANY($1)",
                &[&run_keys],
                "read parked runs",
            )
            .await
        },
    )?;
    let mut heads: HashMap<u128, Head> = HashMap::new();
    put_heads(&locked, &mut heads)?;
    let parents: BTreeSet<u128> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Append { key, kind, .. } if kind.is_terminal() => {
                heads.get(key).and_then(|head| head.row.parent)
            }
            _ => None,
        })
        .filter(|parent| !heads.contains_key(parent))
        .collect();
    lock_runs(txn, &parents, &mut heads).await?;
    let forward = follow_ids(txn, ops, &mut heads).await?;
    let mut leases: HashMap<u32, (Option<Uuid>, i64)> = HashMap::new();
    for row in &lease_rows {
        let shard: i32 = row.get(0);
        leases.insert(
            u32::try_from(shard).unwrap_or(u32::MAX),
            (row.get(1), row.get(2)),
        );
    }
    let mut lsns: Vec<i64> = lsn_rows.iter().map(|row| row.get(0)).collect();
    lsns.sort_unstable_by(|a, b| b.cmp(a));
    let parked_before: HashSet<u128> = parked_rows
        .iter()
        .map(|row| row.get::<_, Uuid>(0).as_u128())
        .collect();

    let schedule_ids: Vec<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Schedule { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let mut schedules: HashMap<String, Option<ScheduleRow>> = HashMap::new();
    if !schedule_ids.is_empty() {
        let mut sorted = schedule_ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        for id in &sorted {
            schedules.insert((*id).to_owned(), None);
        }
        for row in rows(
            txn,
            "SELECT id, row FROM cairn_schedules WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&sorted],
            "read schedules",
        )
        .await?
        {
            let id: String = row.get(0);
            let bytes: Vec<u8> = row.get(1);
            let decoded = crate::reads::decode_schedule(&id, &bytes)?;
            schedules.insert(id, Some(decoded));
        }
    }

    let mut attributes_held: HashMap<u128, HashMap<String, AttrValue>> = HashMap::new();
    let attribute_runs: Vec<Uuid> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Append {
                key,
                kind: EventKind::AttributesSet { .. },
                ..
            } => Some(Uuid::from_u128(*key)),
            _ => None,
        })
        .collect();
    if !attribute_runs.is_empty() {
        for row in rows(
            txn,
            "SELECT run, name, value FROM cairn_attributes WHERE run = ANY($1)",
            &[&attribute_runs],
            "read attributes",
        )
        .await?
        {
            let run: Uuid = row.get(0);
            let bytes: Vec<u8> = row.get(2);
            let value = decode_attribute(
                || format!("cairn_attributes, run {:032x}", run.as_u128()),
                &bytes,
            )?;
            attributes_held
                .entry(run.as_u128())
                .or_default()
                .insert(row.get(1), value);
        }
    }

    let mut writes = Writes::default();
    let mut parked_before = parked_before;
    let mut decider = Decider {
        heads: &mut heads,
        writes: &mut writes,
        effects: &mut outcome.effects,
        lsns: &mut lsns,
        leases: &leases,
        attributes: &mut attributes_held,
        parked: &mut parked_before,
        now_ms,
        successors: forward,
    };
    let mut started_here: HashMap<String, u128> = HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        let answer = match op {
            Op::Start {
                id,
                workflow_type,
                input,
                parent,
                actor,
            } => {
                let known = started_here.get(id).or_else(|| found.get(id)).copied();
                match (known, created.get(id).copied()) {
                    // The id existed, or an earlier operation of this batch started it.
                    (Some(key), _) => match decider.heads.get(&key) {
                        Some(head) => Ok(Answer::Started(Box::new(Started {
                            key,
                            created: false,
                            row: head.row.clone(),
                        }))),
                        None => Err(Error::Corrupt {
                            location: "cairn_ids".into(),
                            message: format!(
                                "id `{id}` maps to key {key:032x}, which has no run row"
                            ),
                        }),
                    },
                    (None, Some(key)) => {
                        match decider.start(key, id, workflow_type, input, *parent, actor.clone()) {
                            Ok(started) => {
                                decider.writes.unclaimed.retain(|taken| taken != id);
                                started_here.insert(id.clone(), key);
                                Ok(Answer::Started(Box::new(started)))
                            }
                            Err(err) => {
                                // The id claimed for it is given back in this commit.
                                decider.writes.unclaimed.push(id.clone());
                                Err(err)
                            }
                        }
                    }
                    (None, None) => Err(Error::Corrupt {
                        location: "cairn_ids".into(),
                        message: format!("id `{id}` was neither claimed nor found"),
                    }),
                }
            }
            Op::Append {
                key,
                kind,
                expect,
                actor,
                fence,
                document,
            } => decider
                .append(*key, kind, *expect, actor.clone(), *fence)
                .map(|appended| {
                    if let Some((sha256, bytes)) = document {
                        decider.writes.documents.insert(*sha256, bytes.clone());
                    }
                    Answer::Appended(appended)
                }),
            Op::Suspend {
                key,
                expected_next_seq,
                wake_at_ms,
                fence,
            } => decider
                .suspend(*key, *expected_next_seq, *wake_at_ms, *fence)
                .map(Answer::Flag),
            Op::ContinueAsNew {
                key,
                input,
                carried,
                fence,
            } => decider
                .continue_as_new(*key, input, carried, *fence)
                .map(Answer::Next),
            Op::Schedule { id, row, only_if } => {
                let current = schedules.get(id).cloned().flatten();
                if only_if
                    .as_ref()
                    .is_some_and(|expected| current.as_ref() != Some(expected))
                {
                    // Moved on only if nobody replaced or removed it meanwhile.
                    Ok(Answer::Flag(false))
                } else {
                    let changed = row.is_some() || current.is_some();
                    match row.as_ref().map(crate::reads::encode_schedule).transpose() {
                        Ok(bytes) => {
                            decider.writes.schedules.push((id.clone(), bytes));
                            schedules.insert(id.clone(), row.clone());
                            decider.effects.push(Committed::Schedule {
                                id: id.clone(),
                                row: row.clone(),
                            });
                            Ok(Answer::Flag(changed))
                        }
                        Err(err) => Err(err),
                    }
                }
            }
            Op::OutboxAttempt {
                id,
                attempt,
                delivery,
            } => {
                decider
                    .writes
                    .attempts
                    .push((*id, attempt.clone(), *delivery));
                Ok(Answer::Flag(true))
            }
        };
        if let Some(slot) = answers.get_mut(index) {
            *slot = Some(answer);
        }
    }

    outcome.witness = writes.events.first().map(|event| event.2);
    outcome.wrote = !writes.events.is_empty()
        || !writes.touched.is_empty()
        || !writes.schedules.is_empty()
        || !writes.attempts.is_empty();
    if let Some(owned) = owned {
        gather_wakes(&mut writes, &heads, owned);
    }
    outcome.woke_others = !writes.wakes.is_empty();
    let refused_attempts = apply(txn, &writes, &heads).await?;
    // An attempt at a notification the outbox does not hold is refused alone.
    let mut attempt_index = 0;
    for (op, answer) in ops.iter().zip(answers.iter_mut()) {
        if let Op::OutboxAttempt { id, .. } = op {
            if refused_attempts.contains(&attempt_index) {
                *answer = Some(Err(Error::InvalidArgument(format!(
                    "the outbox holds no notification {id}"
                ))));
            }
            attempt_index += 1;
        }
    }
    outcome.answers = answers
        .into_iter()
        .map(|answer| answer.unwrap_or(Err(Error::ShutDown)))
        .collect();
    Ok(outcome)
}

/// Messages from outside (`append_by` under `Expect::End`) for runs that continued as
/// new before this batch go to the run their id names now, locked here: the sender
/// looked the id up before the hand-over, and sending it back to look again lets a chain
/// that hands over at every commit win that race each time. Returns each such run's
/// current run.
async fn follow_ids(
    txn: &Transaction<'_>,
    ops: &[Op],
    heads: &mut HashMap<u128, Head>,
) -> Result<HashMap<u128, u128>> {
    let mut moved: HashMap<String, u128> = HashMap::new();
    for op in ops {
        if let Op::Append {
            key,
            expect: Expect::End,
            fence: None,
            ..
        } = op
        {
            if let Some(head) = heads.get(key) {
                if head.row.status == InstanceStatus::ContinuedAsNew {
                    moved.insert(head.row.id.clone(), *key);
                }
            }
        }
    }
    let mut forward = HashMap::new();
    if moved.is_empty() {
        return Ok(forward);
    }
    let ids: Vec<&str> = moved.keys().map(String::as_str).collect();
    let mut current = BTreeSet::new();
    for row in rows(
        txn,
        "SELECT id, key FROM cairn_ids WHERE id = ANY($1)",
        &[&ids],
        "read the current runs of ids",
    )
    .await?
    {
        let id: String = row.get(0);
        let now = row.get::<_, Uuid>(1).as_u128();
        if let Some(old) = moved.get(&id) {
            if *old != now {
                forward.insert(*old, now);
                if !heads.contains_key(&now) {
                    current.insert(now);
                }
            }
        }
    }
    lock_runs(txn, &current, heads).await?;
    Ok(forward)
}

async fn lock_runs(
    txn: &Transaction<'_>,
    keys: &BTreeSet<u128>,
    heads: &mut HashMap<u128, Head>,
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let keys: Vec<Uuid> = keys.iter().map(|key| Uuid::from_u128(*key)).collect();
    let locked = rows(
        txn,
        &format!(
            "SELECT {RUN_COLUMNS}, child_ended FROM cairn_runs WHERE key = ANY($1) ORDER BY key FOR UPDATE"
        ),
        &[&keys],
        "lock the runs",
    )
    .await?;
    put_heads(&locked, heads)
}

/// The heads of locked runs' rows.
fn put_heads(locked: &[tokio_postgres::Row], heads: &mut HashMap<u128, Head>) -> Result<()> {
    for row in locked {
        let child_ended: bool = row.get(12);
        let run = run_row(row)?;
        heads.insert(
            run.key,
            Head {
                row: run,
                child_ended,
                existed: true,
            },
        );
    }
    Ok(())
}

/// Decides the operations of a batch, in order, against the heads it holds.
struct Decider<'b> {
    heads: &'b mut HashMap<u128, Head>,
    writes: &'b mut Writes,
    effects: &'b mut Vec<Committed>,
    /// Unused LSNs, the smallest last.
    lsns: &'b mut Vec<i64>,
    leases: &'b HashMap<u32, (Option<Uuid>, i64)>,
    attributes: &'b mut HashMap<u128, HashMap<String, AttrValue>>,
    parked: &'b mut HashSet<u128>,
    now_ms: u64,
    /// The runs that continued as new in this batch, and their successors.
    successors: HashMap<u128, u128>,
}

impl Decider<'_> {
    fn head(&mut self, key: u128) -> Result<&mut Head> {
        self.heads
            .get_mut(&key)
            .ok_or_else(|| Error::InstanceNotFound(format!("internal key {key:032x}")))
    }

    /// The epoch to record for an operation under `fence`; refused unless `fence` is the
    /// current lease of the run's own shard.
    fn fenced(&self, key: u128, id: &str, fence: Option<Lease>) -> Result<i64> {
        let Some(lease) = fence else {
            return Ok(0);
        };
        let (owner, current) = self.leases.get(&lease.shard).copied().unwrap_or((None, -1));
        let held = i64::try_from(lease.epoch).unwrap_or(i64::MAX);
        if lease.shard != shard_of(key)
            || owner != Some(Uuid::from_u128(lease.host))
            || current != held
        {
            return Err(Error::LeaseLost {
                instance: id.to_owned(),
                shard: lease.shard,
                held: lease.epoch,
                current: u64::try_from(current).unwrap_or(0),
            });
        }
        Ok(current)
    }

    fn start(
        &mut self,
        key: u128,
        id: &str,
        workflow_type: &str,
        input: &Payload,
        parent: Option<u128>,
        actor: Option<Actor>,
    ) -> Result<Started> {
        let row = InstanceRow {
            key,
            id: id.to_owned(),
            workflow_type: workflow_type.to_owned(),
            status: InstanceStatus::Running,
            created_at_ms: self.now_ms,
            updated_at_ms: self.now_ms,
            head_lsn: 0,
            next_seq: 0,
            head_hash: GENESIS_HASH,
            parent,
            suspended: None,
        };
        self.heads.insert(
            key,
            Head {
                row,
                child_ended: false,
                existed: false,
            },
        );
        let kind = EventKind::WorkflowStarted {
            workflow_type: workflow_type.to_owned(),
            id: id.to_owned(),
            input: input.clone(),
        };
        match self.push(key, kind, actor, 0) {
            Ok(_) => {
                let row = self.head(key)?.row.clone();
                Ok(Started {
                    key,
                    created: true,
                    row,
                })
            }
            Err(err) => {
                self.heads.remove(&key);
                Err(err)
            }
        }
    }

    fn append(
        &mut self,
        key: u128,
        kind: &EventKind,
        expect: Expect,
        actor: Option<Actor>,
        fence: Option<Lease>,
    ) -> Result<Appended> {
        // A message from outside for a run that continued as new earlier in this batch
        // goes to its successor, the run its id names once the batch commits. Refusing
        // it instead would send the sender back to look the id up again, and a chain
        // that hands over at every commit would win that race each time.
        let key = match (fence, expect) {
            (None, Expect::End) => self.current(key),
            _ => key,
        };
        let head = self.head(key)?;
        if head.row.status.is_finished() {
            return Err(Error::InstanceFinished(head.row.id.clone()));
        }
        if let Expect::Seq(expected) = expect {
            if expected != head.row.next_seq {
                return Err(Error::Conflict {
                    instance: head.row.id.clone(),
                    expected,
                    actual: head.row.next_seq,
                });
            }
        }
        let id = head.row.id.clone();
        let epoch = self.fenced(key, &id, fence)?;
        let ends = kind.is_terminal();
        let appended = self.push(key, kind.clone(), actor, epoch)?;
        if ends {
            self.wake_parent(key);
        }
        Ok(appended)
    }

    /// The run that `key`'s id names after this batch's continue-as-news.
    fn current(&self, key: u128) -> u128 {
        let mut key = key;
        while let Some(next) = self.successors.get(&key) {
            key = *next;
        }
        key
    }

    /// A child that ends must wake its parent after a restart too: the parent's
    /// suspension hint is cleared in the same commit, and its eviction refused until its
    /// own next event (it may have decided to sleep before it heard of the child).
    fn wake_parent(&mut self, child: u128) {
        let Some(parent) = self.heads.get(&child).and_then(|head| head.row.parent) else {
            return;
        };
        let Some(head) = self.heads.get_mut(&parent) else {
            return;
        };
        head.row.suspended = None;
        if !head.row.status.is_finished() {
            head.child_ended = true;
        }
        self.writes.touched.insert(parent);
    }

    fn suspend(
        &mut self,
        key: u128,
        expected_next_seq: u64,
        wake_at_ms: Option<u64>,
        fence: Option<Lease>,
    ) -> Result<bool> {
        let head = self.head(key)?;
        let id = head.row.id.clone();
        if head.child_ended
            || head.row.status.is_finished()
            || head.row.next_seq != expected_next_seq
        {
            return Ok(false);
        }
        self.fenced(key, &id, fence)?;
        let head = self.head(key)?;
        head.row.suspended = Some(cairn_core::journal::Suspension { wake_at_ms });
        self.writes.touched.insert(key);
        Ok(true)
    }

    fn continue_as_new(
        &mut self,
        key: u128,
        input: &Payload,
        carried: &Carried,
        fence: Option<Lease>,
    ) -> Result<Option<u128>> {
        let row = self.head(key)?.row.clone();
        if row.status.is_finished() {
            return Err(Error::InstanceFinished(row.id));
        }
        if row.next_seq != carried.expected_next_seq {
            // A message arrived that the run has not seen: it must be carried too.
            return Ok(None);
        }
        let epoch = self.fenced(key, &row.id, fence)?;
        // Both events carry the input; check the larger fits before writing either, so
        // no run ends without its successor.
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
        let next = Uuid::now_v7().as_u128();
        let ended = EventKind::WorkflowContinuedAsNew {
            input: input.clone(),
            next_run: next,
        };
        self.push(key, ended, None, epoch)?;
        self.heads.insert(
            next,
            Head {
                row: InstanceRow {
                    key: next,
                    id: row.id.clone(),
                    workflow_type: row.workflow_type.clone(),
                    status: InstanceStatus::Running,
                    created_at_ms: self.now_ms,
                    updated_at_ms: self.now_ms,
                    head_lsn: 0,
                    next_seq: 0,
                    head_hash: GENESIS_HASH,
                    parent: row.parent,
                    suspended: None,
                },
                child_ended: false,
                existed: false,
            },
        );
        let mut kinds = vec![
            EventKind::WorkflowStarted {
                workflow_type: row.workflow_type.clone(),
                id: row.id.clone(),
                input: input.clone(),
            },
            EventKind::RunContinued {
                previous_run: key,
                run: carried.run.saturating_add(1),
            },
        ];
        let mut actors = vec![None, None];
        for signal in &carried.signals {
            kinds.push(match &signal.key {
                Some(key) => EventKind::KeyedSignalReceived {
                    name: signal.name.clone(),
                    payload: signal.payload.clone(),
                    key: key.clone(),
                },
                None => EventKind::SignalReceived {
                    name: signal.name.clone(),
                    payload: signal.payload.clone(),
                },
            });
            actors.push(signal.actor.clone());
        }
        if let Some(reason) = &carried.cancel {
            kinds.push(EventKind::CancelRequested {
                reason: reason.clone(),
            });
            actors.push(None);
        }
        // The new run's events are fenced by the same lease only when it falls in the
        // same shard; otherwise they are the hand-over's, recorded under no lease.
        let next_epoch = if fence.is_some_and(|lease| lease.shard == shard_of(next)) {
            epoch
        } else {
            0
        };
        for (kind, actor) in kinds.into_iter().zip(actors) {
            self.push(next, kind, actor, next_epoch)?;
        }
        self.writes.moved_ids.push((row.id, Uuid::from_u128(next)));
        self.successors.insert(key, next);
        Ok(Some(next))
    }

    /// Plans one event on `key`'s head and gathers what it writes.
    fn push(
        &mut self,
        key: u128,
        kind: EventKind,
        actor: Option<Actor>,
        epoch: i64,
    ) -> Result<Appended> {
        let lsn = self.lsns.last().copied().ok_or_else(|| {
            Error::Storage(cairn_core::error::StorageFailure::new(
                "a batch ran out of the LSNs it took (a bug: please report it)",
            ))
        })?;
        let now_ms = self.now_ms;
        let head = self.head(key)?;
        let created_at_ms = head.row.created_at_ms;
        let workflow_type = head.row.workflow_type.clone();
        let plan: PlannedEvent = plan_event(
            &mut head.row,
            kind,
            actor,
            now_ms,
            u64::try_from(lsn).unwrap_or(0),
        )?;
        head.child_ended = false;
        self.lsns.pop();
        let shard = i32::try_from(shard_of(key)).unwrap_or(0);
        let stripe = i32::try_from(shard_of(key) / STRIPE_SHARDS).unwrap_or(0);
        let bucket = i64::try_from(tally_bucket(now_ms)).unwrap_or(i64::MAX);
        let writes = &mut *self.writes;
        writes.events.push((
            Uuid::from_u128(key),
            i64::try_from(plan.seq).unwrap_or(i64::MAX),
            lsn,
            epoch,
            plan.envelope,
        ));
        writes.touched.insert(key);
        if plan.starts {
            *writes
                .counts
                .entry((
                    workflow_type.clone(),
                    status_code(InstanceStatus::Running),
                    shard,
                ))
                .or_default() += 1;
            *writes
                .activity
                .entry((bucket, workflow_type.clone(), STARTED_CODE, stripe))
                .or_default() += 1;
        }
        if let Some(to) = plan.ended {
            *writes
                .counts
                .entry((
                    workflow_type.clone(),
                    status_code(InstanceStatus::Running),
                    shard,
                ))
                .or_default() -= 1;
            *writes
                .counts
                .entry((workflow_type.clone(), status_code(to), shard))
                .or_default() += 1;
            *writes
                .activity
                .entry((bucket, workflow_type, status_code(to), stripe))
                .or_default() += 1;
            writes.tasks.push(TaskIndexChange::RunEnded { key });
        }
        match plan.parked {
            Some(parked) => {
                self.parked.insert(key);
                writes
                    .parked
                    .insert(key, Some(encode_versioned(&parked, "parked entry")?));
            }
            None => {
                if self.parked.remove(&key) {
                    writes.parked.insert(key, None);
                }
            }
        }
        if let Some(task) = plan.task {
            writes.tasks.push(task);
        }
        if let Some(notification) = plan.notification {
            writes.outbox.push((shard, notification));
            self.effects.push(Committed::Outbox);
        }
        if let Some(set) = plan.attributes {
            let held = self.attributes.entry(key).or_default();
            let created = i64::try_from(created_at_ms).unwrap_or(i64::MAX);
            for (name, value) in set {
                match attribute_bytes(&value) {
                    Ok(bytes) => {
                        writes
                            .attributes
                            .insert((key, name.clone()), (bytes, created));
                    }
                    Err(_) => {
                        tracing::error!(attribute = %name, "attribute value does not encode for the index");
                    }
                }
                held.insert(name, value);
            }
        }
        self.effects.push(plan.effect);
        Ok(Appended { seq: plan.seq })
    }
}

/// The wake-ups the batch's events call for: each event on a run of a shard not in
/// `owned`, and each end of a run whose parent is of a shard not in `owned`.
fn gather_wakes(writes: &mut Writes, heads: &HashMap<u128, Head>, owned: &HashSet<u32>) {
    for (run, seq, _, _, _) in &writes.events {
        let key = run.as_u128();
        let shard = shard_of(key);
        if !owned.contains(&shard) {
            writes
                .wakes
                .insert((i32::try_from(shard).unwrap_or(0), key, *seq));
        }
        let ended = heads.get(&key).is_some_and(|head| {
            head.row.status.is_finished()
                && head.row.next_seq == u64::try_from(*seq).unwrap_or(0) + 1
        });
        if let Some(parent) = heads.get(&key).and_then(|head| head.row.parent) {
            let parent_shard = shard_of(parent);
            if ended && !owned.contains(&parent_shard) {
                writes
                    .wakes
                    .insert((i32::try_from(parent_shard).unwrap_or(0), key, *seq));
            }
        }
    }
}

/// Writes what the batch decided; returns the indexes (among the batch's outbox
/// attempts) of attempts at notifications the outbox does not hold.
async fn apply(
    txn: &Transaction<'_>,
    writes: &Writes,
    heads: &HashMap<u128, Head>,
) -> Result<HashSet<usize>> {
    let (mut new_runs, mut old_runs): (Vec<&Head>, Vec<&Head>) = (Vec::new(), Vec::new());
    for key in &writes.touched {
        if let Some(head) = heads.get(key) {
            if head.existed {
                old_runs.push(head);
            } else {
                new_runs.push(head);
            }
        }
    }
    // The statements below touch different rows and tables: sent together, one round
    // trip for all of them.
    let new_columns = RunColumns::of(&new_runs)?;
    let old_columns = RunColumns::of(&old_runs)?;
    let event_runs: Vec<Uuid> = writes.events.iter().map(|e| e.0).collect();
    let event_seqs: Vec<i64> = writes.events.iter().map(|e| e.1).collect();
    let event_lsns: Vec<i64> = writes.events.iter().map(|e| e.2).collect();
    let event_epochs: Vec<i64> = writes.events.iter().map(|e| e.3).collect();
    let envelopes: Vec<&[u8]> = writes.events.iter().map(|e| e.4.as_slice()).collect();
    let counts: Vec<_> = writes
        .counts
        .iter()
        .filter(|(_, delta)| **delta != 0)
        .collect();
    let count_types: Vec<&str> = counts.iter().map(|((t, _, _), _)| t.as_str()).collect();
    let count_statuses: Vec<i16> = counts.iter().map(|((_, s, _), _)| *s).collect();
    let count_shards: Vec<i32> = counts.iter().map(|((_, _, shard), _)| *shard).collect();
    let count_deltas: Vec<i64> = counts.iter().map(|(_, delta)| **delta).collect();
    let activity_buckets: Vec<i64> = writes.activity.keys().map(|(b, _, _, _)| *b).collect();
    let activity_types: Vec<&str> = writes
        .activity
        .keys()
        .map(|(_, t, _, _)| t.as_str())
        .collect();
    let activity_whats: Vec<i16> = writes.activity.keys().map(|(_, _, w, _)| *w).collect();
    let activity_stripes: Vec<i32> = writes.activity.keys().map(|(_, _, _, s)| *s).collect();
    let activity_deltas: Vec<i64> = writes.activity.values().copied().collect();
    let wake_shards: Vec<i32> = writes.wakes.iter().map(|w| w.0).collect();
    let wake_runs: Vec<Uuid> = writes.wakes.iter().map(|w| Uuid::from_u128(w.1)).collect();
    let wake_seqs: Vec<i64> = writes.wakes.iter().map(|w| w.2).collect();
    let attribute_runs: Vec<Uuid> = writes
        .attributes
        .keys()
        .map(|(run, _)| Uuid::from_u128(*run))
        .collect();
    let attribute_names: Vec<&str> = writes
        .attributes
        .keys()
        .map(|(_, name)| name.as_str())
        .collect();
    let attribute_values: Vec<&[u8]> = writes
        .attributes
        .values()
        .map(|(value, _)| value.as_slice())
        .collect();
    let attribute_created: Vec<i64> = writes.attributes.values().map(|(_, at)| *at).collect();
    let parked_cleared: Vec<Uuid> = writes
        .parked
        .iter()
        .filter(|(_, row)| row.is_none())
        .map(|(key, _)| Uuid::from_u128(*key))
        .collect();
    let parked_set: Vec<Uuid> = writes
        .parked
        .iter()
        .filter(|(_, row)| row.is_some())
        .map(|(key, _)| Uuid::from_u128(*key))
        .collect();
    let parked_rows: Vec<&[u8]> = writes
        .parked
        .values()
        .filter_map(|row| row.as_deref())
        .collect();
    type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
    let new_params: [Param<'_>; 14] = [
        &new_columns.keys,
        &new_columns.ids,
        &new_columns.types,
        &new_columns.statuses,
        &new_columns.created,
        &new_columns.updated,
        &new_columns.next_seq,
        &new_columns.head_lsn,
        &new_columns.hashes,
        &new_columns.parents,
        &new_columns.suspended,
        &new_columns.wake_at,
        &new_columns.child_ended,
        &new_columns.shards,
    ];
    let old_params: [Param<'_>; 9] = [
        &old_columns.keys,
        &old_columns.statuses,
        &old_columns.updated,
        &old_columns.next_seq,
        &old_columns.head_lsn,
        &old_columns.hashes,
        &old_columns.suspended,
        &old_columns.wake_at,
        &old_columns.child_ended,
    ];
    let event_params: [Param<'_>; 5] = [
        &event_runs,
        &event_seqs,
        &event_lsns,
        &event_epochs,
        &envelopes,
    ];
    let count_params: [Param<'_>; 4] =
        [&count_types, &count_statuses, &count_shards, &count_deltas];
    let activity_params: [Param<'_>; 5] = [
        &activity_buckets,
        &activity_types,
        &activity_whats,
        &activity_stripes,
        &activity_deltas,
    ];
    let wake_params: [Param<'_>; 3] = [&wake_shards, &wake_runs, &wake_seqs];
    let attribute_params: [Param<'_>; 4] = [
        &attribute_runs,
        &attribute_names,
        &attribute_values,
        &attribute_created,
    ];
    let cleared_params: [Param<'_>; 1] = [&parked_cleared];
    let set_params: [Param<'_>; 2] = [&parked_set, &parked_rows];
    let unclaimed_params: [Param<'_>; 1] = [&writes.unclaimed];
    let statements: [(bool, &str, &[Param<'_>], &str); 10] = [
        (
            !new_runs.is_empty(),
            "INSERT INTO cairn_runs (key, id, workflow_type, status, created_at_ms, updated_at_ms, next_seq, head_lsn, head_hash, parent, suspended, wake_at_ms, child_ended, shard)
             SELECT key, id, workflow_type, status, created_at_ms, updated_at_ms, next_seq, head_lsn, head_hash, parent, suspended, wake_at_ms, child_ended, shard
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bytea[], $10::uuid[], $11::boolean[], $12::bigint[], $13::boolean[], $14::integer[])
                 AS u(key, id, workflow_type, status, created_at_ms, updated_at_ms, next_seq, head_lsn, head_hash, parent, suspended, wake_at_ms, child_ended, shard)",
            &new_params,
            "insert runs",
        ),
        (
            !writes.events.is_empty(),
            "INSERT INTO cairn_events (run, seq, lsn, epoch, envelope)
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bytea[])",
            &event_params,
            "insert the events",
        ),
        (
            !old_runs.is_empty(),
            "UPDATE cairn_runs AS r
             SET status = u.status, updated_at_ms = u.updated_at_ms, next_seq = u.next_seq,
                 head_lsn = u.head_lsn, head_hash = u.head_hash, suspended = u.suspended,
                 wake_at_ms = u.wake_at_ms, child_ended = u.child_ended
             FROM unnest($1::uuid[], $2::smallint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bytea[], $7::boolean[], $8::bigint[], $9::boolean[])
                 AS u(key, status, updated_at_ms, next_seq, head_lsn, head_hash, suspended, wake_at_ms, child_ended)
             WHERE r.key = u.key",
            &old_params,
            "update the runs",
        ),
        (
            !writes.unclaimed.is_empty(),
            "DELETE FROM cairn_ids WHERE id = ANY($1)",
            &unclaimed_params,
            "give back unused ids",
        ),
        (
            !attribute_runs.is_empty(),
            "INSERT INTO cairn_attributes (run, name, value, created_at_ms)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bigint[])
             ON CONFLICT (run, name) DO UPDATE SET value = EXCLUDED.value",
            &attribute_params,
            "write attributes",
        ),
        (
            !parked_cleared.is_empty(),
            "DELETE FROM cairn_parked WHERE run = ANY($1)",
            &cleared_params,
            "clear parked runs",
        ),
        (
            !parked_set.is_empty(),
            "INSERT INTO cairn_parked (run, row) SELECT * FROM unnest($1::uuid[], $2::bytea[])
             ON CONFLICT (run) DO UPDATE SET row = EXCLUDED.row",
            &set_params,
            "record parked runs",
        ),
        (
            !counts.is_empty(),
            "INSERT INTO cairn_counts (workflow_type, status, shard, runs)
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::integer[], $4::bigint[])
             ON CONFLICT (workflow_type, status, shard) DO UPDATE SET runs = cairn_counts.runs + EXCLUDED.runs",
            &count_params,
            "count runs",
        ),
        (
            !activity_buckets.is_empty(),
            "INSERT INTO cairn_activity (bucket_ms, workflow_type, what, stripe, runs)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::smallint[], $4::integer[], $5::bigint[])
             ON CONFLICT (bucket_ms, workflow_type, what, stripe) DO UPDATE SET runs = cairn_activity.runs + EXCLUDED.runs",
            &activity_params,
            "count activity",
        ),
        (
            !wake_shards.is_empty(),
            "INSERT INTO cairn_wakes (shard, run, seq)
             SELECT * FROM unnest($1::integer[], $2::uuid[], $3::bigint[]) ON CONFLICT DO NOTHING",
            &wake_params,
            "leave wake-ups",
        ),
    ];
    futures::future::try_join_all(
        statements
            .iter()
            .filter(|(wanted, ..)| *wanted)
            .map(|(_, sql, params, what)| exec(txn, sql, params, what)),
    )
    .await?;
    for (id, key) in &writes.moved_ids {
        txn.execute("UPDATE cairn_ids SET key = $2 WHERE id = $1", &[id, key])
            .await
            .map_err(|err| pg_error("move an id to its next run", &err))?;
    }
    for change in &writes.tasks {
        crate::reads::apply_task(txn, change).await?;
    }
    if !writes.outbox.is_empty() {
        let ids: Vec<i64> = writes
            .outbox
            .iter()
            .map(|(_, row)| db_i64(row.notification.id, "notification id"))
            .collect::<Result<_>>()?;
        let rows: Vec<Vec<u8>> = writes
            .outbox
            .iter()
            .map(|(_, row)| encode_versioned(row, "outbox row"))
            .collect::<Result<_>>()?;
        let due: Vec<Option<i64>> = writes
            .outbox
            .iter()
            .map(|(_, row)| due_of(row.delivery))
            .collect();
        let shards: Vec<i32> = writes.outbox.iter().map(|(shard, _)| *shard).collect();
        txn.execute(
            "INSERT INTO cairn_outbox (id, row, due_ms, shard)
             SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bigint[], $4::integer[])",
            &[&ids, &rows, &due, &shards],
        )
        .await
        .map_err(|err| pg_error("add notifications", &err))?;
    }
    let mut refused = HashSet::new();
    for (index, (id, attempt, delivery)) in writes.attempts.iter().enumerate() {
        let id_db = db_i64(*id, "notification id")?;
        let Some(row) = txn
            .query_opt(
                "SELECT row FROM cairn_outbox WHERE id = $1 FOR UPDATE",
                &[&id_db],
            )
            .await
            .map_err(|err| pg_error("read a notification", &err))?
        else {
            refused.insert(index);
            continue;
        };
        let bytes: Vec<u8> = row.get(0);
        let mut row: OutboxRow = cairn_core::commit::decode_versioned(
            || format!("cairn_outbox, notification {id}"),
            &bytes,
        )?;
        row.attempts.push(attempt.clone());
        row.delivery = *delivery;
        txn.execute(
            "UPDATE cairn_outbox SET row = $2, due_ms = $3 WHERE id = $1",
            &[
                &id_db,
                &encode_versioned(&row, "outbox row")?,
                &due_of(row.delivery),
            ],
        )
        .await
        .map_err(|err| pg_error("record a delivery attempt", &err))?;
    }
    for (sha256, bytes) in &writes.documents {
        txn.execute(
            "INSERT INTO cairn_documents (sha256, bytes) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING",
            &[&sha256.as_slice(), bytes],
        )
        .await
        .map_err(|err| pg_error("store a document", &err))?;
    }
    for (id, row) in &writes.schedules {
        match row {
            Some(bytes) => txn
                .execute(
                    "INSERT INTO cairn_schedules (id, row) VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET row = EXCLUDED.row",
                    &[id, bytes],
                )
                .await
                .map_err(|err| pg_error("store a schedule", &err))?,
            None => txn
                .execute("DELETE FROM cairn_schedules WHERE id = $1", &[id])
                .await
                .map_err(|err| pg_error("delete a schedule", &err))?,
        };
    }
    Ok(refused)
}

fn due_of(delivery: Delivery) -> Option<i64> {
    match delivery {
        Delivery::Pending { next_attempt_ms } => i64::try_from(next_attempt_ms).ok(),
        _ => None,
    }
}

/// The columns of some runs, for one multi-row statement.
struct RunColumns {
    keys: Vec<Uuid>,
    ids: Vec<String>,
    types: Vec<String>,
    statuses: Vec<i16>,
    created: Vec<i64>,
    updated: Vec<i64>,
    next_seq: Vec<i64>,
    head_lsn: Vec<i64>,
    hashes: Vec<Vec<u8>>,
    parents: Vec<Option<Uuid>>,
    suspended: Vec<bool>,
    wake_at: Vec<Option<i64>>,
    child_ended: Vec<bool>,
    shards: Vec<i32>,
}

impl RunColumns {
    fn of(heads: &[&Head]) -> Result<Self> {
        let mut out = Self {
            keys: Vec::new(),
            ids: Vec::new(),
            types: Vec::new(),
            statuses: Vec::new(),
            created: Vec::new(),
            updated: Vec::new(),
            next_seq: Vec::new(),
            head_lsn: Vec::new(),
            hashes: Vec::new(),
            parents: Vec::new(),
            suspended: Vec::new(),
            wake_at: Vec::new(),
            child_ended: Vec::new(),
            shards: Vec::new(),
        };
        for head in heads {
            let row = &head.row;
            out.keys.push(Uuid::from_u128(row.key));
            out.ids.push(row.id.clone());
            out.types.push(row.workflow_type.clone());
            out.statuses.push(status_code(row.status));
            out.created.push(db_i64(row.created_at_ms, "time")?);
            out.updated.push(db_i64(row.updated_at_ms, "time")?);
            out.next_seq.push(db_i64(row.next_seq, "sequence number")?);
            out.head_lsn.push(db_i64(row.head_lsn, "LSN")?);
            out.hashes.push(row.head_hash.to_vec());
            out.parents.push(row.parent.map(Uuid::from_u128));
            out.suspended.push(row.suspended.is_some());
            out.wake_at.push(
                row.suspended
                    .and_then(|s| s.wake_at_ms)
                    .and_then(|ms| i64::try_from(ms).ok()),
            );
            out.child_ended.push(head.child_ended);
            out.shards
                .push(i32::try_from(shard_of(row.key)).unwrap_or(0));
        }
        Ok(out)
    }
}
