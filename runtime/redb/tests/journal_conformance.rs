//! The store conformance suite (`cairn_testkit::conformance`) on the redb journal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cairn_core::journal::Journal;
use cairn_redb::RedbJournal;
use cairn_testkit::conformance::Subject;

/// A redb journal in a temporary directory; `reopen` opens the same file again.
struct Redb {
    dir: tempfile::TempDir,
}

impl Redb {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn open(&self) -> Arc<dyn Journal> {
        Arc::new(RedbJournal::open(self.dir.path().join("journal.redb")).expect("the file opens"))
    }
}

#[async_trait::async_trait]
impl Subject for Redb {
    async fn create(&self) -> Arc<dyn Journal> {
        self.open()
    }

    async fn reopen(&self, journal: Arc<dyn Journal>) -> Arc<dyn Journal> {
        journal.close();
        drop(journal);
        self.open()
    }
}

cairn_testkit::journal_conformance!(Redb::new());
