//! The PostgreSQL store against a real server (a throwaway cluster of this test binary,
//! on 127.0.0.1): the schema is made once and a newer one refused; starts are idempotent
//! by id; appends chain and verify; the `(run, seq)` constraint lets exactly one of two
//! racing writers record a step; a host whose lease was taken over cannot append.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;

use cairn_core::codec::Payload;
use cairn_core::event::EventKind;
use cairn_core::journal::{verify_history, Expect, InstanceStatus};
use cairn_postgres::{shard_of, PostgresStore, SCHEMA_VERSION, SHARDS};
use cairn_testkit::postgres::TestDb;

const NOW: u64 = 1_764_000_000_000;

fn payload(text: &str) -> Payload {
    Payload::new(0, format!("\"{text}\"").into_bytes())
}

fn step(n: u32) -> EventKind {
    EventKind::SideEffect {
        step: n,
        label: "random".into(),
        value: payload("x"),
    }
}

async fn raw(db: &TestDb, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.query(sql, &[]).await.unwrap()
}

#[tokio::test]
async fn the_schema_is_made_once_and_a_newer_one_is_refused_unchanged() {
    let db = TestDb::new().await.unwrap();
    let store = PostgresStore::open(&db.url()).await.unwrap();
    assert!(
        store.place().starts_with("postgres://127.0.0.1:"),
        "{}",
        store.place()
    );
    assert!(!store.place().contains("cairn@"), "no user in messages");
    drop(store);
    // Again: nothing to do.
    PostgresStore::open(&db.url()).await.unwrap();
    let version: i64 =
        raw(&db, "SELECT value FROM cairn_meta WHERE key = 'schema'").await[0].get(0);
    assert_eq!(version, SCHEMA_VERSION);
    let shards: i64 = raw(&db, "SELECT count(*) FROM cairn_shards").await[0].get(0);
    assert_eq!(shards, i64::from(SHARDS));

    raw(&db, "UPDATE cairn_meta SET value = 99 WHERE key = 'schema'").await;
    let err = PostgresStore::open(&db.url()).await.unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0005", "{err}");
    assert!(
        err.to_string()
            .contains("schema is version 99, newer than this build's"),
        "{err}"
    );
    let version: i64 =
        raw(&db, "SELECT value FROM cairn_meta WHERE key = 'schema'").await[0].get(0);
    assert_eq!(version, 99, "nothing was changed");
}

#[tokio::test]
async fn bad_connection_strings_and_unreachable_servers_are_named() {
    let err = PostgresStore::open("not a url at all").await.unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0014", "{err}");
    // A port nobody listens on (the cluster's own port plus nothing: bind one and drop it).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PostgresStore::open(&format!(
        "postgres://cairn:secret@127.0.0.1:{port}/nothing?connect_timeout=2"
    ))
    .await
    .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0005", "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{port}/nothing")),
        "{text}"
    );
    assert!(!text.contains("secret"), "the password never shows: {text}");
}

#[tokio::test]
async fn starts_are_idempotent_by_id_and_appends_make_a_verified_chain() {
    let db = TestDb::new().await.unwrap();
    let store = PostgresStore::open(&db.url()).await.unwrap();
    let started = store
        .start("order-1", "order", payload("in"), None, None, NOW)
        .await
        .unwrap();
    assert!(started.created);
    let again = store
        .start("order-1", "order", payload("other"), None, None, NOW + 5)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.key, started.key);
    for n in 1..=3u32 {
        let appended = store
            .append(
                started.key,
                step(n),
                Expect::Seq(u64::from(n)),
                None,
                None,
                NOW + u64::from(n),
            )
            .await
            .unwrap();
        assert_eq!(appended.seq, u64::from(n));
    }
    store
        .append(
            started.key,
            EventKind::WorkflowCompleted {
                output: payload("done"),
            },
            Expect::End,
            None,
            None,
            NOW + 9,
        )
        .await
        .unwrap();
    let raw = store.history(started.key).await.unwrap().unwrap();
    let (row, events) = verify_history(raw).unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(row.status, InstanceStatus::Completed);
    assert_eq!(row.next_seq, 5);
    assert_eq!(row.updated_at_ms, NOW + 9);
    assert_eq!(store.key_of("order-1").await.unwrap(), Some(started.key));
    // An ended run takes nothing more.
    let err = store
        .append(started.key, step(9), Expect::End, None, None, NOW + 10)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0017", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_writers_at_the_same_step_exactly_one_records_it() {
    let db = TestDb::new().await.unwrap();
    let store = Arc::new(PostgresStore::open(&db.url()).await.unwrap());
    for round in 0..20 {
        let id = format!("race-{round}");
        let key = store
            .start(&id, "race", payload("in"), None, None, NOW)
            .await
            .unwrap()
            .key;
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .append(key, step(1), Expect::Seq(1), None, None, NOW + 1)
                        .await
                })
            })
            .collect();
        let mut won = 0;
        for writer in writers {
            match writer.await.unwrap() {
                Ok(appended) => {
                    assert_eq!(appended.seq, 1);
                    won += 1;
                }
                Err(err) => assert_eq!(err.code(), "CAIRN-E0020", "{err}"),
            }
        }
        assert_eq!(won, 1, "round {round}");
        let (_, events) = verify_history(store.history(key).await.unwrap().unwrap()).unwrap();
        assert_eq!(events.len(), 2, "step 1 recorded once");
    }
}

#[tokio::test]
async fn a_host_whose_lease_was_taken_over_cannot_append() {
    let db = TestDb::new().await.unwrap();
    let store = PostgresStore::open(&db.url()).await.unwrap();
    let key = store
        .start("case-1", "case", payload("in"), None, None, NOW)
        .await
        .unwrap()
        .key;
    let shard = shard_of(key);
    let (old_host, new_host) = (
        uuid::Uuid::new_v4().as_u128(),
        uuid::Uuid::new_v4().as_u128(),
    );
    // A short lease, not renewed: the old host "pauses" past it.
    let old = store.acquire(shard, old_host, 200).await.unwrap().unwrap();
    assert!(
        store
            .acquire(shard, new_host, 60_000)
            .await
            .unwrap()
            .is_none(),
        "held: not taken"
    );
    store
        .append(key, step(1), Expect::Seq(1), None, Some(old), NOW + 1)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let new = store
        .acquire(shard, new_host, 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(new.epoch > old.epoch);
    assert!(
        !store.renew(old, 60_000).await.unwrap(),
        "the old lease is gone"
    );
    // The old host wakes up and tries to record its next step.
    let err = store
        .append(key, step(2), Expect::Seq(2), None, Some(old), NOW + 2)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0028", "{err}");
    assert!(
        err.to_string()
            .contains(&format!("it held epoch {}", old.epoch)),
        "{err}"
    );
    // The new owner records it; the epochs along the history never decrease.
    store
        .append(key, step(2), Expect::Seq(2), None, Some(new), NOW + 3)
        .await
        .unwrap();
    assert!(store.renew(new, 60_000).await.unwrap());
    let epochs = store.epochs(key).await.unwrap();
    assert_eq!(epochs, [0, old.epoch, new.epoch]);
    let (_, events) = verify_history(store.history(key).await.unwrap().unwrap()).unwrap();
    assert_eq!(events.len(), 3, "nothing of the stale host landed");
}

#[tokio::test]
async fn a_batch_from_many_runs_is_one_transaction_and_its_refusals_write_nothing() {
    use cairn_postgres::AppendRequest;
    let db = TestDb::new().await.unwrap();
    let store = PostgresStore::open(&db.url()).await.unwrap();
    let mut keys = Vec::new();
    for n in 0..40 {
        let started = store
            .start(&format!("b-{n}"), "batch", payload("in"), None, None, NOW)
            .await
            .unwrap();
        keys.push(started.key);
    }
    let host = uuid::Uuid::new_v4().as_u128();
    let lease = store
        .acquire(shard_of(keys[0]), host, 60_000)
        .await
        .unwrap()
        .unwrap();
    let stale = cairn_postgres::Lease {
        epoch: lease.epoch + 5,
        ..lease
    };
    let request = |key: u128, kind: EventKind, expect: Expect| AppendRequest {
        key,
        kind,
        expect,
        actor: None,
        fence: None,
    };
    let mut batch = Vec::new();
    // Two chained steps on each run.
    for key in &keys {
        batch.push(request(*key, step(1), Expect::Seq(1)));
        batch.push(request(*key, step(2), Expect::Seq(2)));
    }
    // Refusals, each alone: a wrong expectation, an unknown run, a stale lease, and a step
    // after the run's end in the same batch.
    batch.push(request(keys[1], step(9), Expect::Seq(7)));
    batch.push(request(u128::MAX, step(1), Expect::End));
    batch.push(AppendRequest {
        fence: Some(stale),
        ..request(keys[0], step(3), Expect::Seq(3))
    });
    batch.push(AppendRequest {
        fence: Some(lease),
        ..request(keys[0], step(3), Expect::Seq(3))
    });
    batch.push(request(
        keys[2],
        EventKind::WorkflowCompleted {
            output: payload("done"),
        },
        Expect::End,
    ));
    batch.push(request(keys[2], step(4), Expect::End));
    let results = store.append_batch(batch, NOW + 1).await.unwrap();
    assert_eq!(results.len(), 86);
    let codes: Vec<&str> = results[80..]
        .iter()
        .map(|r| r.as_ref().map_or_else(|e| e.code(), |_| "ok"))
        .collect();
    assert_eq!(
        codes,
        [
            "CAIRN-E0020",
            "CAIRN-E0007",
            "CAIRN-E0028",
            "ok",
            "ok",
            "CAIRN-E0017"
        ]
    );
    assert!(results[..80].iter().all(Result::is_ok));
    // One transaction wrote every accepted event.
    let writers = raw(
        &db,
        "SELECT count(DISTINCT xmin::text) FROM cairn_events WHERE seq > 0",
    )
    .await;
    assert_eq!(writers[0].get::<_, i64>(0), 1, "one transaction");
    // Every history chains; the refused appends left nothing.
    for (n, key) in keys.iter().enumerate() {
        let (row, events) = verify_history(store.history(*key).await.unwrap().unwrap()).unwrap();
        let expected = match n {
            0 | 2 => 4,
            _ => 3,
        };
        assert_eq!(events.len(), expected, "run {n}");
        assert_eq!(row.next_seq, expected as u64);
    }
    assert_eq!(
        store.instance(keys[2]).await.unwrap().unwrap().status,
        InstanceStatus::Completed
    );
    assert_eq!(store.epochs(keys[0]).await.unwrap(), [0, 0, 0, lease.epoch]);
}

#[tokio::test]
async fn hosts_share_the_shards_and_take_over_those_of_a_host_that_stops() {
    let db = TestDb::new().await.unwrap();
    let store = PostgresStore::open(&db.url()).await.unwrap();
    let (a, b) = (
        uuid::Uuid::new_v4().as_u128(),
        uuid::Uuid::new_v4().as_u128(),
    );
    // Alone, A takes every shard.
    assert!(store.heartbeat(a, 60_000).await.unwrap().is_empty());
    let first = store.claim(a, 60_000).await.unwrap();
    assert_eq!(first.len(), SHARDS as usize);
    assert!(
        store.claim(a, 60_000).await.unwrap().is_empty(),
        "nothing more"
    );
    // B joins: nothing is free until A gives back its surplus.
    store.heartbeat(b, 60_000).await.unwrap();
    assert!(store.claim(b, 60_000).await.unwrap().is_empty());
    let surplus = store.surplus(a).await.unwrap();
    assert_eq!(surplus.len(), SHARDS as usize / 2);
    for lease in &surplus {
        assert!(store.release(*lease).await.unwrap());
    }
    let given_back = store.claim_counted(b, 60_000).await.unwrap();
    assert_eq!(given_back.taken_over, 0, "given back, not taken over");
    let taken = given_back.leases;
    assert_eq!(taken.len(), SHARDS as usize / 2);
    let mine: std::collections::BTreeSet<u32> = taken.iter().map(|l| l.shard).collect();
    let given: std::collections::BTreeSet<u32> = surplus.iter().map(|l| l.shard).collect();
    assert_eq!(mine, given, "B holds what A gave back");
    assert!(
        taken.iter().all(|l| l.epoch == 2),
        "each takeover raises the epoch"
    );
    assert!(store.surplus(a).await.unwrap().is_empty(), "shared evenly");
    assert_eq!(store.heartbeat(a, 60_000).await.unwrap().len(), 128);
    // A stops (a pause, a crash): its heartbeat and leases lapse; B takes everything.
    store.heartbeat(a, 100).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(store.heartbeat(b, 60_000).await.unwrap().len(), 128);
    let rest = store.claim_counted(b, 60_000).await.unwrap();
    assert_eq!(rest.taken_over, 128, "each one taken over from A");
    let rest = rest.leases;
    assert_eq!(rest.len(), 128, "A's shards, expired");
    assert!(rest.iter().all(|l| l.epoch == 2));
    // A wakes up: it holds nothing any more, and learns it from its next heartbeat.
    assert!(store.heartbeat(a, 60_000).await.unwrap().is_empty());
    let stale = first[0];
    assert!(!store.release(stale).await.unwrap(), "not A's to give back");
}

#[tokio::test]
async fn a_version_1_database_is_migrated_to_the_current_schema() {
    let db = TestDb::new().await.unwrap();
    let store = PostgresStore::open(&db.url()).await.unwrap();
    store
        .start("kept-1", "kept", payload("in"), None, None, NOW)
        .await
        .unwrap();
    drop(store);
    // As a build of schema 1 left it: without what versions 2 to 7 added.
    raw(
        &db,
        "DROP TABLE cairn_hosts, cairn_attributes, cairn_parked, cairn_schedules, cairn_tasks,
             cairn_task_inbox, cairn_outbox, cairn_documents, cairn_counts, cairn_activity,
             cairn_wakes, cairn_shared_values",
    )
    .await;
    raw(&db, "ALTER TABLE cairn_runs DROP COLUMN child_ended").await;
    raw(&db, "UPDATE cairn_meta SET value = 1 WHERE key = 'schema'").await;
    let store = PostgresStore::open(&db.url()).await.unwrap();
    let version: i64 =
        raw(&db, "SELECT value FROM cairn_meta WHERE key = 'schema'").await[0].get(0);
    assert_eq!(version, SCHEMA_VERSION);
    assert!(store.key_of("kept-1").await.unwrap().is_some(), "data kept");
    store.heartbeat(1, 1_000).await.unwrap();
    assert!(store.put_shared_value("views", b"[]", 0).await.unwrap());
    // The runs already there are counted by the migration.
    let tallies = store.tallies(0).await.unwrap();
    assert_eq!(
        tallies
            .by_status
            .get(&("kept".to_owned(), InstanceStatus::Running)),
        Some(&1)
    );
}

#[tokio::test]
async fn a_lease_fences_only_its_own_shard_and_a_repeated_start_needs_no_second_connection() {
    let db = TestDb::new().await.unwrap();
    // One connection: a repeated start must answer on it.
    let store = PostgresStore::open_with(&db.url(), 1).await.unwrap();
    let first = store
        .start("one-1", "one", payload("in"), None, None, NOW)
        .await
        .unwrap();
    let again = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        store.start("one-1", "one", payload("in"), None, None, NOW),
    )
    .await
    .expect("a repeated start must not wait for a second connection")
    .unwrap();
    assert!(!again.created);
    assert_eq!(again.row, first.row);
    // A lease on another shard than the run's does not let a host append to it.
    let host = uuid::Uuid::new_v4().as_u128();
    let other = (shard_of(first.key) + 1) % SHARDS;
    let lease = store.acquire(other, host, 60_000).await.unwrap().unwrap();
    let err = store
        .append(
            first.key,
            step(1),
            Expect::Seq(1),
            None,
            Some(lease),
            NOW + 1,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0028", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_notification_is_claimed_by_one_host_until_its_hold_lapses() {
    let db = TestDb::new().await.unwrap();
    let store = Arc::new(PostgresStore::open(&db.url()).await.unwrap());
    let key = store
        .start("case-1", "case", payload("in"), None, None, NOW)
        .await
        .unwrap()
        .key;
    let notified = EventKind::Notified {
        step: 1,
        topic: "case.noticed".into(),
        body: payload("hello"),
    };
    store
        .append(key, notified, Expect::Seq(1), None, None, NOW)
        .await
        .unwrap();
    let shards = [shard_of(key)];
    // Two hosts look at the same moment: one gets it.
    let at = NOW + 1;
    let (first, second) = tokio::join!(
        store.outbox_claim(&shards, at, 16, 60_000),
        store.outbox_claim(&shards, at, 16, 60_000)
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(
        first.0.len() + second.0.len(),
        1,
        "claimed once: {first:?} {second:?}"
    );
    let claimed = first.0.iter().chain(&second.0).next().unwrap();
    assert_eq!(claimed.notification.topic.name(), "case.noticed");
    // Held: not due for anyone until the hold lapses, and the next due time says when.
    let (again, next) = store
        .outbox_claim(&shards, at + 1, 16, 60_000)
        .await
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(next, Some(at + 60_000));
    // The holder died without recording an attempt: due again once the hold lapses.
    let (retried, _) = store
        .outbox_claim(&shards, at + 60_000, 16, 60_000)
        .await
        .unwrap();
    assert_eq!(retried.len(), 1);
    // Reading what is due (the metrics do) claims nothing.
    for _ in 0..2 {
        let (due, _) = store.outbox_due(None, u64::MAX, 16).await.unwrap();
        assert_eq!(due.len(), 1);
    }
    // A host that drives none of the run's shard claims nothing of it.
    let other = [(shard_of(key) + 1) % SHARDS];
    let (none, _) = store
        .outbox_claim(&other, u64::MAX / 2, 16, 60_000)
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn a_shared_value_changes_only_at_the_version_its_writer_read() {
    let db = TestDb::new().await.unwrap();
    let store = PostgresStore::open(&db.url()).await.unwrap();
    assert_eq!(store.shared_value("views").await.unwrap(), None);
    assert!(store.put_shared_value("views", b"one", 0).await.unwrap());
    // A second first write, and a write at a version already passed, change nothing.
    assert!(!store.put_shared_value("views", b"other", 0).await.unwrap());
    assert_eq!(
        store.shared_value("views").await.unwrap(),
        Some((1, b"one".to_vec()))
    );
    assert!(store.put_shared_value("views", b"two", 1).await.unwrap());
    assert!(!store.put_shared_value("views", b"stale", 1).await.unwrap());
    assert_eq!(
        store.shared_value("views").await.unwrap(),
        Some((2, b"two".to_vec()))
    );
    assert_eq!(store.shared_value("other").await.unwrap(), None);
    // A write dropped after its first poll lands whole or not at all, and the next
    // write at the version read then lands.
    {
        let mut dropped = Box::pin(store.put_shared_value("views", b"three", 2));
        let waker = futures::task::noop_waker();
        let _ = dropped
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
    }
    let (version, value) = store.shared_value("views").await.unwrap().unwrap();
    match version {
        2 => assert_eq!(value, b"two"),
        3 => assert_eq!(value, b"three"),
        other => panic!("version {other}"),
    }
    assert!(store
        .put_shared_value("views", b"four", version)
        .await
        .unwrap());
    assert_eq!(
        store.shared_value("views").await.unwrap(),
        Some((version + 1, b"four".to_vec()))
    );
}

/// Full scans of the tables that grow with the instances (`pg_stat_user_tables`) made by
/// `read`, run on a store of its own whose connection is closed before the counters are
/// read (a server process reports its counts when it ends).
async fn full_scans_of<F, Fut>(db: &TestDb, read: F) -> Vec<(String, i64)>
where
    F: FnOnce(PostgresStore) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    const GROWING: &str =
        "('cairn_runs', 'cairn_attributes', 'cairn_tasks', 'cairn_task_inbox', 'cairn_events')";
    let counts = || async {
        // Only once no other connection to the database is left (its counts are in).
        for _ in 0..200 {
            let others: i64 = raw(
                db,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .await[0]
                .get(0);
            if others == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        raw(
            db,
            &format!(
                "SELECT relname::text, coalesce(seq_scan, 0) FROM pg_stat_user_tables
                 WHERE relname IN {GROWING} ORDER BY relname"
            ),
        )
        .await
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
        .collect::<Vec<_>>()
    };
    let before = counts().await;
    let store = PostgresStore::open_with(&db.url(), 1).await.unwrap();
    read(store).await;
    let after = counts().await;
    after
        .into_iter()
        .zip(before)
        .filter(|((_, now), (_, then))| now > then)
        .map(|((table, now), (_, then))| (table, now - then))
        .collect()
}

/// The queries of the instance list, the task inbox and a takeover read indexes, never a
/// whole table, on a database of 20,000 runs (with an attribute each) and 5,000 open
/// tasks: the planner, given the tables' statistics, picks an index for every one.
#[tokio::test]
async fn the_queries_read_indexes_not_whole_tables() {
    use cairn_core::event::AttrValue;
    use cairn_core::journal::{InstanceQuery, TaskQuery};
    use cairn_core::task::Party;
    let db = TestDb::new().await.unwrap();
    drop(PostgresStore::open(&db.url()).await.unwrap());
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    client
        .batch_execute(
            "INSERT INTO cairn_runs (key, id, workflow_type, status, created_at_ms, updated_at_ms,
             next_seq, head_lsn, head_hash, shard)
         SELECT gen_random_uuid(), 'run-' || n, 'type-' || (n % 4), (n % 10 = 0)::int,
             1700000000000 + n * 1000, 1700000000000 + n * 1000, 1, n,
             decode(repeat('00', 32), 'hex'), n % 256
         FROM generate_series(1, 20000) AS n;
         INSERT INTO cairn_attributes (run, name, value, created_at_ms)
         SELECT key, 'customer', convert_to('c-' || (head_lsn % 1000), 'UTF8'), created_at_ms
         FROM cairn_runs;
         INSERT INTO cairn_tasks (run, step, created_at_ms, workflow_type, name, row)
         SELECT key, 1, created_at_ms, workflow_type, 'review', '\\x00'
         FROM cairn_runs WHERE head_lsn <= 5000;
         INSERT INTO cairn_task_inbox (party, created_at_ms, run, step)
         SELECT 'role:clerk-' || (head_lsn % 50), created_at_ms, key, 1
         FROM cairn_runs WHERE head_lsn <= 5000;
         ANALYZE",
        )
        .await
        .unwrap();
    drop(client);
    driver.await.unwrap().unwrap();
    let page = |query: InstanceQuery| InstanceQuery { limit: 50, ..query };
    let checks: Vec<(&str, InstanceQuery)> = vec![
        ("all, newest page", page(InstanceQuery::default())),
        (
            "by type",
            page(InstanceQuery {
                workflow_type: Some("absent-type".into()),
                ..InstanceQuery::default()
            }),
        ),
        (
            "by status",
            page(InstanceQuery {
                statuses: vec![InstanceStatus::Terminated],
                ..InstanceQuery::default()
            }),
        ),
        (
            "by time",
            page(InstanceQuery {
                created_from_ms: Some(1_800_000_000_000),
                ..InstanceQuery::default()
            }),
        ),
        (
            "by attribute",
            page(InstanceQuery {
                attributes: vec![("customer".into(), AttrValue::Text("nobody".into()))],
                ..InstanceQuery::default()
            }),
        ),
    ];
    for (what, query) in checks {
        let scans = full_scans_of(&db, |store| async move {
            store.query(&query).await.unwrap();
        })
        .await;
        assert!(scans.is_empty(), "{what}: full scans {scans:?}");
    }
    let scans = full_scans_of(&db, |store| async move {
        let query = TaskQuery {
            parties: vec![Party::Role("nobody".into())],
            limit: 50,
            ..TaskQuery::default()
        };
        store.tasks(&query).await.unwrap();
    })
    .await;
    assert!(scans.is_empty(), "open tasks by role: full scans {scans:?}");
    let scans = full_scans_of(&db, |store| async move {
        let running = store.running(Some(&[3])).await.unwrap();
        assert!(!running.is_empty());
    })
    .await;
    assert!(
        scans.is_empty(),
        "running runs of a shard: full scans {scans:?}"
    );
    // And the counters do see a full scan where one is made.
    let scans = full_scans_of(&db, |store| async move {
        store.invariants().await.unwrap();
    })
    .await;
    assert!(!scans.is_empty(), "the check reads everything: {scans:?}");
}
