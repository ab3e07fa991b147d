//! A file written before the query index (storage format 2) answers queries when opened
//! read-only (by scanning, nothing written) and is migrated by its first writable open:
//! the indexes built from its rows give the same answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable};

use cairn_core::codec::Payload;
use cairn_core::event::{AttrValue, EventKind};
use cairn_core::journal::{Expect, InstanceQuery, InstanceStatus, Journal, TaskQuery};
use cairn_core::step::task;
use cairn_core::task::{Actor, Candidates, TaskChange, TaskSpec};
use cairn_redb::store::STORAGE_FORMAT;
use cairn_redb::RedbJournal;

fn format_of(path: &Path) -> u32 {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn
        .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
        .unwrap();
    let value = meta.get("format").unwrap().unwrap();
    u32::from_le_bytes(value.value().try_into().unwrap())
}

const OPEN_RUNS: redb::TableDefinition<(u64, u128), &[u8]> =
    redb::TableDefinition::new("open_runs");
const RUNNING: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("running");
const BY_START: redb::TableDefinition<(u64, u128), ()> = redb::TableDefinition::new("by_start");
const BY_TYPE: redb::TableDefinition<(&str, u64, u128), ()> = redb::TableDefinition::new("by_type");
const BY_STATUS: redb::TableDefinition<(u8, u64, u128), ()> =
    redb::TableDefinition::new("by_status");

/// Makes a current file look like one written by format 9: the unfinished runs in
/// `running` by key (not `open_runs`), every run in `by_start`, the running ones in
/// `by_status` under status 0; marker 9.
fn make_format_9(path: &Path) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let open_runs = txn.open_table(OPEN_RUNS).unwrap();
        let mut running = txn.open_table(RUNNING).unwrap();
        let mut by_status = txn.open_table(BY_STATUS).unwrap();
        for entry in open_runs.iter().unwrap() {
            let (at, hint) = entry.unwrap();
            let (created, key) = at.value();
            running.insert(key, hint.value()).unwrap();
            by_status.insert((0, created, key), ()).unwrap();
        }
        let by_type = txn.open_table(BY_TYPE).unwrap();
        let mut by_start = txn.open_table(BY_START).unwrap();
        for entry in by_type.iter().unwrap() {
            let (_, created, key) = entry.unwrap().0.value();
            by_start.insert((created, key), ()).unwrap();
        }
    }
    assert!(txn.delete_table(OPEN_RUNS).unwrap());
    txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
        .unwrap()
        .insert("format", 9u32.to_le_bytes().as_slice())
        .unwrap();
    txn.commit().unwrap();
}

/// Makes a current file look like one written by format 2: no index tables, marker 2.
fn make_format_2(path: &Path) {
    make_format_9(path);
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    for table in ["by_start", "by_type", "by_status", "by_attribute"] {
        assert!(txn
            .delete_table(redb::TableDefinition::<u128, &[u8]>::new(table))
            .unwrap());
    }
    for table in ["open_tasks", "task_inbox", "outbox", "outbox_due"] {
        assert!(txn
            .delete_table(redb::TableDefinition::<u128, &[u8]>::new(table))
            .unwrap());
    }
    txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
        .unwrap()
        .insert("format", 2u32.to_le_bytes().as_slice())
        .unwrap();
    txn.commit().unwrap();
}

async fn ids(journal: &dyn Journal, query: InstanceQuery) -> Vec<String> {
    let mut query = query;
    let mut out = Vec::new();
    loop {
        let page = journal.query(&query).await.unwrap();
        out.extend(page.rows.into_iter().map(|row| row.id));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return out,
        }
    }
}

async fn answers(journal: &dyn Journal) -> Vec<Vec<String>> {
    vec![
        ids(journal, InstanceQuery::default()).await,
        ids(
            journal,
            InstanceQuery {
                workflow_type: Some("loan".into()),
                limit: 2,
                ..InstanceQuery::default()
            },
        )
        .await,
        ids(
            journal,
            InstanceQuery {
                statuses: vec![InstanceStatus::Completed],
                ..InstanceQuery::default()
            },
        )
        .await,
        ids(
            journal,
            InstanceQuery {
                attributes: vec![("branch".into(), AttrValue::from("leeds"))],
                ..InstanceQuery::default()
            },
        )
        .await,
    ]
}

#[tokio::test]
async fn a_format_2_file_is_read_by_scanning_and_migrated_by_a_writable_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let journal = RedbJournal::open(&path).unwrap();
    for n in 0..7u32 {
        let kind = if n % 2 == 0 { "loan" } else { "permit" };
        let started = journal
            .start(
                format!("{kind}-{n}"),
                kind.into(),
                Payload::new(0, vec![]),
                None,
            )
            .await
            .unwrap();
        if n % 3 == 0 {
            let branch = if n == 3 { "york" } else { "leeds" };
            journal
                .append(
                    started.key,
                    EventKind::AttributesSet {
                        step: 1,
                        attributes: vec![("branch".into(), branch.into())],
                    },
                    Expect::End,
                )
                .await
                .unwrap();
        }
        if n % 2 == 1 {
            journal
                .append(
                    started.key,
                    EventKind::WorkflowCompleted {
                        output: Payload::new(0, vec![]),
                    },
                    Expect::End,
                )
                .await
                .unwrap();
        }
    }
    let expected = answers(&journal).await;
    assert_eq!(
        expected,
        [
            vec!["loan-0", "permit-1", "loan-2", "permit-3", "loan-4", "permit-5", "loan-6"],
            vec!["loan-0", "loan-2", "loan-4", "loan-6"],
            vec!["permit-1", "permit-3", "permit-5"],
            vec!["loan-0", "loan-6"],
        ]
    );
    journal.close();
    drop(journal);

    make_format_2(&path);
    let read_only = RedbJournal::open_read_only(&path).unwrap();
    assert_eq!(answers(&read_only).await, expected, "answered by scanning");
    read_only.close();
    drop(read_only);
    assert_eq!(format_of(&path), 2, "a read-only open wrote nothing");

    let migrated = RedbJournal::open(&path).unwrap();
    assert_eq!(
        answers(&migrated).await,
        expected,
        "answered from the new indexes"
    );
    migrated.close();
    drop(migrated);
    assert_eq!(format_of(&path), STORAGE_FORMAT);
}

fn spec(name: &str) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        title: name.into(),
        description: String::new(),
        input: Payload::new(0, b"{}".to_vec()),
        decision_schema: "{}".into(),
        candidates: Candidates {
            users: vec![],
            roles: vec!["clerk".into()],
        },
        assignee: None,
        priority: 0,
        due_at_ms: None,
        follow_up_at_ms: None,
        escalation: vec![],
    }
}

/// Marks a current file as format 3 and drops its open-task index, as the index would be
/// missing from a file the migration has not reached (or damaged and dropped).
fn drop_task_index(path: &Path) {
    make_format_9(path);
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    for table in ["open_tasks", "task_inbox"] {
        assert!(txn
            .delete_table(redb::TableDefinition::<u128, &[u8]>::new(table))
            .unwrap());
    }
    txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
        .unwrap()
        .insert("format", 3u32.to_le_bytes().as_slice())
        .unwrap();
    txn.commit().unwrap();
}

#[tokio::test]
async fn the_open_task_index_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.redb");
    let journal = RedbJournal::open(&path).unwrap();
    let mut keys = Vec::new();
    for n in 0..3u32 {
        let started = journal
            .start(
                format!("case-{n}"),
                "permit".into(),
                Payload::new(0, vec![]),
                None,
            )
            .await
            .unwrap();
        keys.push(started.key);
        journal
            .append(started.key, task::created(1, spec("review")), Expect::End)
            .await
            .unwrap();
    }
    // case-0: claimed; case-1: completed; case-2: open, and its run ended.
    journal
        .append(
            keys[0],
            EventKind::TaskChanged {
                step: 1,
                actor: Actor::new("ann", ["clerk"]),
                change: TaskChange::Claimed,
            },
            Expect::End,
        )
        .await
        .unwrap();
    journal
        .append(
            keys[1],
            EventKind::TaskCompleted {
                step: 1,
                actor: Actor::new("ann", ["clerk"]),
                decision: Payload::new(0, b"true".to_vec()),
                escalation: None,
            },
            Expect::End,
        )
        .await
        .unwrap();
    journal
        .append(
            keys[2],
            EventKind::WorkflowTerminated { reason: "x".into() },
            Expect::End,
        )
        .await
        .unwrap();
    let before = journal.tasks(&TaskQuery::default()).await.unwrap().rows;
    assert_eq!(before.len(), 1);
    journal.close();
    drop(journal);

    drop_task_index(&path);
    let read_only = RedbJournal::open_read_only(&path).unwrap();
    assert!(
        read_only
            .tasks(&TaskQuery::default())
            .await
            .unwrap()
            .rows
            .is_empty(),
        "a format-3 file opened read-only has no task index"
    );
    read_only.close();
    drop(read_only);

    let rebuilt = RedbJournal::open(&path).unwrap();
    let after = rebuilt.tasks(&TaskQuery::default()).await.unwrap().rows;
    assert_eq!(after, before, "the same rows, rebuilt from the log");
    let ann = Actor::new("ann", Vec::<String>::new());
    let held = rebuilt
        .tasks(&TaskQuery::for_actor(&ann))
        .await
        .unwrap()
        .rows;
    assert_eq!(held.len(), 1, "listed under its holder again");
    rebuilt.close();
    drop(rebuilt);
    assert_eq!(format_of(&path), STORAGE_FORMAT);
}

/// Makes a current file look like one written by format 8: no tallies, marker 8.
fn make_format_8(path: &Path) {
    make_format_9(path);
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    assert!(txn
        .delete_table(redb::TableDefinition::<(&str, u8), u64>::new("counts"))
        .unwrap());
    assert!(txn
        .delete_table(redb::TableDefinition::<(u64, &str, u8), u64>::new(
            "activity"
        ))
        .unwrap());
    txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
        .unwrap()
        .insert("format", 8u32.to_le_bytes().as_slice())
        .unwrap();
    txn.commit().unwrap();
}

#[tokio::test]
async fn the_tallies_of_an_older_file_are_counted_by_its_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let journal = RedbJournal::open(&path).unwrap();
    for n in 0..9u32 {
        let kind = if n % 3 == 0 { "loan" } else { "permit" };
        let started = journal
            .start(
                format!("{kind}-{n}"),
                kind.into(),
                Payload::new(0, vec![]),
                None,
            )
            .await
            .unwrap();
        let end = match n % 4 {
            0 => Some(EventKind::WorkflowCompleted {
                output: Payload::new(0, vec![]),
            }),
            1 => Some(EventKind::WorkflowTerminated {
                reason: "duplicate".into(),
            }),
            _ => None,
        };
        if let Some(end) = end {
            journal.append(started.key, end, Expect::End).await.unwrap();
        }
    }
    let kept = journal
        .tallies(0)
        .await
        .unwrap()
        .expect("format 9 keeps tallies");
    let running: u64 = kept
        .by_status
        .iter()
        .filter(|((_, status), _)| *status == InstanceStatus::Running)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(running, 4, "n = 2, 3, 6, 7 still run");
    journal.close();
    drop(journal);

    make_format_8(&path);
    // A schedule as format 8 wrote it: no pause.
    let old_row = cairn_core::schedule::ScheduleRowV1 {
        workflow_type: "loan".into(),
        input: Payload::new(0, vec![]),
        recurrence: cairn_core::schedule::Recurrence::EveryMs(60_000),
        next_fire_ms: 42,
    };
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("schedules"))
            .unwrap()
            .insert(
                "old",
                postcard::to_extend(&old_row, vec![1u8]).unwrap().as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
    }
    let read_only = RedbJournal::open_read_only(&path).unwrap();
    assert_eq!(
        read_only.schedules().await.unwrap(),
        vec![("old".to_owned(), old_row.clone().into())],
        "an older schedule row reads as not paused"
    );
    assert_eq!(
        read_only.tallies(0).await.unwrap(),
        None,
        "an older file opened read-only keeps no tallies: the caller counts"
    );
    read_only.close();
    drop(read_only);
    assert_eq!(format_of(&path), 8, "a read-only open wrote nothing");

    let migrated = RedbJournal::open(&path).unwrap();
    assert_eq!(
        migrated.tallies(0).await.unwrap(),
        Some(kept),
        "recounted from the rows: the same counts and buckets"
    );
    migrated.close();
    drop(migrated);
    assert_eq!(format_of(&path), STORAGE_FORMAT);
}

/// The status index of a file.
#[derive(Debug, PartialEq)]
struct StatusIndex {
    /// The keys of `open_runs`.
    open: Vec<(u64, u128)>,
    /// The keys of `by_status`.
    ended: Vec<(u8, u64, u128)>,
    /// Whether it still has a table of format 9 (`running`, `by_start`).
    old_tables: bool,
}

fn status_index(path: &Path) -> StatusIndex {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_read().unwrap();
    let open_runs = txn.open_table(OPEN_RUNS).unwrap();
    let open = open_runs
        .iter()
        .unwrap()
        .map(|entry| entry.unwrap().0.value())
        .collect();
    let by_status = txn.open_table(BY_STATUS).unwrap();
    let ended = by_status
        .iter()
        .unwrap()
        .map(|entry| entry.unwrap().0.value())
        .collect();
    let old_tables = txn.open_table(RUNNING).is_ok() || txn.open_table(BY_START).is_ok();
    StatusIndex {
        open,
        ended,
        old_tables,
    }
}

#[tokio::test]
async fn a_format_9_file_moves_its_running_runs_to_open_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nine.redb");
    let journal = RedbJournal::open(&path).unwrap();
    let mut keys = Vec::new();
    for n in 0..6u32 {
        let started = journal
            .start(
                format!("case-{n}"),
                if n < 3 { "loan" } else { "permit" }.into(),
                Payload::new(0, vec![]),
                None,
            )
            .await
            .unwrap();
        keys.push(started.key);
        let end = match n {
            1 => Some(EventKind::WorkflowCompleted {
                output: Payload::new(0, vec![]),
            }),
            4 => Some(EventKind::WorkflowTerminated { reason: "x".into() }),
            _ => None,
        };
        if let Some(end) = end {
            journal.append(started.key, end, Expect::End).await.unwrap();
        }
    }
    // case-2 is evicted, waiting for a timer: its hint must survive the move.
    assert!(journal.suspend(keys[2], 1, Some(99)).await.unwrap());
    let running = sorted(journal.running().await.unwrap());
    let expected = answers_by_status(&journal).await;
    assert_eq!(
        expected,
        [
            vec!["case-0", "case-1", "case-2", "case-3", "case-4", "case-5"],
            vec!["case-0", "case-2", "case-3", "case-5"],
            vec!["case-1"],
            vec!["case-1", "case-4"],
        ]
    );
    journal.close();
    drop(journal);
    let index = status_index(&path);
    assert_eq!(index.open.len(), 4);
    assert_eq!(index.ended.len(), 2, "only ended runs are in by_status");
    assert!(!index.old_tables);

    make_format_9(&path);
    let read_only = RedbJournal::open_read_only(&path).unwrap();
    assert_eq!(
        sorted(read_only.running().await.unwrap()),
        running,
        "read from `running`"
    );
    assert_eq!(
        answers_by_status(&read_only).await,
        expected,
        "from the format-9 indexes (running runs under status 0)"
    );
    read_only.close();
    drop(read_only);
    assert_eq!(format_of(&path), 9, "a read-only open wrote nothing");

    let migrated = RedbJournal::open(&path).unwrap();
    assert_eq!(
        sorted(migrated.running().await.unwrap()),
        running,
        "hints kept"
    );
    assert_eq!(answers_by_status(&migrated).await, expected);
    migrated.close();
    drop(migrated);
    assert_eq!(format_of(&path), STORAGE_FORMAT);
    assert_eq!(status_index(&path), index);
}

/// The unfinished runs by key: `running` listed them by key, `open_runs` by start time.
fn sorted(
    mut runs: Vec<(u128, Option<cairn_core::journal::Suspension>)>,
) -> Vec<(u128, Option<cairn_core::journal::Suspension>)> {
    runs.sort_by_key(|(key, _)| *key);
    runs
}

/// Every run, the running ones, the completed ones, and the ended ones (two statuses
/// merged), each paged two at a time.
async fn answers_by_status(journal: &dyn Journal) -> Vec<Vec<String>> {
    let by = |statuses: Vec<InstanceStatus>| InstanceQuery {
        statuses,
        limit: 2,
        ..InstanceQuery::default()
    };
    vec![
        ids(journal, by(vec![])).await,
        ids(journal, by(vec![InstanceStatus::Running])).await,
        ids(journal, by(vec![InstanceStatus::Completed])).await,
        ids(
            journal,
            by(vec![InstanceStatus::Terminated, InstanceStatus::Completed]),
        )
        .await,
    ]
}
