//! A file written before the query index (storage format 2) answers queries when opened
//! read-only (by scanning, nothing written) and is migrated by its first writable open:
//! the indexes built from its rows give the same answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use redb::ReadableDatabase;

use cairn_core::codec::Payload;
use cairn_core::event::{AttrValue, EventKind};
use cairn_core::journal::{Expect, InstanceQuery, InstanceStatus, Journal};
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

/// Makes a current file look like one written by format 2: no index tables, marker 2.
fn make_format_2(path: &Path) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    for table in ["by_start", "by_type", "by_status", "by_attribute"] {
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
