//! The store conformance suite (`cairn_testkit::conformance`) on the PostgreSQL journal,
//! each check on a fresh database of this binary's throwaway cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use cairn_core::journal::Journal;
use cairn_postgres::PostgresJournal;
use cairn_testkit::conformance::Subject;
use cairn_testkit::postgres::TestDb;

/// A database made on first use; `reopen` shuts the journal down (its leases given
/// back) and opens the same database again as a new host.
struct Postgres {
    db: tokio::sync::OnceCell<TestDb>,
    open: Mutex<Option<Arc<PostgresJournal>>>,
}

impl Postgres {
    fn new() -> Self {
        Self {
            db: tokio::sync::OnceCell::new(),
            open: Mutex::new(None),
        }
    }

    async fn open(&self) -> Arc<dyn Journal> {
        let db = self
            .db
            .get_or_init(|| async { TestDb::new().await.expect("a test database") })
            .await;
        let journal = Arc::new(
            PostgresJournal::open(&db.url())
                .await
                .expect("the database opens"),
        );
        assert_eq!(journal.shards().len(), cairn_postgres::SHARDS as usize);
        *self.open.lock().unwrap() = Some(journal.clone());
        journal
    }
}

#[async_trait::async_trait]
impl Subject for Postgres {
    async fn create(&self) -> Arc<dyn Journal> {
        self.open().await
    }

    async fn reopen(&self, journal: Arc<dyn Journal>) -> Arc<dyn Journal> {
        let concrete = self.open.lock().unwrap().take();
        if let Some(concrete) = concrete {
            concrete.shutdown().await;
        }
        drop(journal);
        self.open().await
    }
}

cairn_testkit::journal_conformance!(Postgres::new());
