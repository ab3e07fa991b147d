//! A failed commit reports a typed storage error whose source chain reaches the I/O error
//! the disk gave, and names the file; nothing of the refused batch is readable after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::Arc;

use cairn_core::codec::Payload;
use cairn_core::error::Error;
use cairn_core::journal::Journal;
use cairn_redb::RedbJournal;
use cairn_testkit::fault::{Fault, FaultDisk};

#[tokio::test]
async fn a_failed_commit_keeps_the_io_error_as_its_source() {
    let disk = FaultDisk::new();
    let journal = RedbJournal::on(Arc::new(disk.open_store("chains-disk").unwrap())).unwrap();
    journal
        .start("a".into(), "t".into(), Payload::new(0, vec![]), None)
        .await
        .unwrap();
    disk.set_fault(Fault::FailSyncAt(
        disk.sync_calls() + 1,
        io::ErrorKind::StorageFull,
    ));
    let err = journal
        .start("b".into(), "t".into(), Payload::new(0, vec![]), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0006", "{err}");
    assert!(
        err.to_string().contains("chains-disk"),
        "names the file: {err}"
    );
    let Error::Storage(failure) = &err else {
        panic!("expected a storage error, got {err:?}");
    };
    let mut chain: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(failure);
    let mut io_kind = None;
    while let Some(cause) = next {
        chain.push(cause.to_string());
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            io_kind = Some(io.kind());
        }
        next = cause.source();
    }
    assert!(
        chain.len() >= 2,
        "the store's error is kept as a source: {chain:?}"
    );
    assert_eq!(
        io_kind,
        Some(io::ErrorKind::StorageFull),
        "the chain reaches the disk's error: {chain:?}"
    );
    assert_eq!(journal.key_of("b").await.ok().flatten(), None);
    journal.close();
}
