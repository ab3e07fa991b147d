//! Helpers shared by the integration tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::path::Path;

use cairn::{Runtime, RuntimeBuilder};

/// How a test opens its store: the redb file at `path`, or, when `CAIRN_TEST_STORE` names a
/// PostgreSQL server (`postgres://user@host:port`, as `throwaway-postgres` prints), a
/// database on it named after `path`, so a test that reopens its store at the same path
/// finds what it wrote. The integration suite runs both ways (`scripts/test.sh`).
///
/// On PostgreSQL the host keeps the test's clock as it is (a `VirtualClock` must not be
/// corrected to the server's), and its leases are short, so a test that drops a runtime
/// without shutting it down (a crash) sees the next host take over within seconds.
pub(crate) trait OpenStore {
    /// Opens the runtime on the test's store (see the trait).
    fn open_store(
        self,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<Runtime, cairn::Error>>;
}

impl OpenStore for RuntimeBuilder {
    async fn open_store(self, path: impl AsRef<Path>) -> Result<Runtime, cairn::Error> {
        match std::env::var("CAIRN_TEST_STORE") {
            Ok(server) if server.starts_with("postgres") => {
                open_on_postgres(self, &server, path.as_ref()).await
            }
            _ => self.open(path).await,
        }
    }
}

/// Whether the tests run on PostgreSQL (`CAIRN_TEST_STORE`).
pub(crate) fn on_postgres() -> bool {
    std::env::var("CAIRN_TEST_STORE").is_ok_and(|server| server.starts_with("postgres"))
}

/// A tool's read-only view of the test's store (no host, no lease, no write lock): the
/// redb file at `path` read-only, or on PostgreSQL a reader of the database named after
/// `path`.
pub(crate) async fn open_tool(path: &Path) -> Box<dyn cairn::store::Journal> {
    match std::env::var("CAIRN_TEST_STORE") {
        Ok(server) if server.starts_with("postgres") => tool_on_postgres(&server, path).await,
        _ => Box::new(cairn::audit::open_read_only(path).unwrap()),
    }
}

#[cfg(feature = "postgres")]
async fn tool_on_postgres(server: &str, path: &Path) -> Box<dyn cairn::store::Journal> {
    let url = cairn_testkit::postgres::database_on(server, &database_name(path))
        .await
        .unwrap();
    Box::new(cairn::store::PostgresReader::open(&url).await.unwrap())
}

#[cfg(not(feature = "postgres"))]
async fn tool_on_postgres(server: &str, _: &Path) -> Box<dyn cairn::store::Journal> {
    panic!("CAIRN_TEST_STORE={server} needs the `postgres` feature")
}

/// The database that stands for the store at `path` (the same for the life of the server).
fn database_name(path: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    format!("cairn_t_{:016x}", hasher.finish())
}

#[cfg(feature = "postgres")]
async fn open_on_postgres(
    builder: RuntimeBuilder,
    server: &str,
    path: &Path,
) -> Result<Runtime, cairn::Error> {
    let name = database_name(path);
    let url = cairn_testkit::postgres::database_on(server, &name)
        .await
        .unwrap_or_else(|err| panic!("CAIRN_TEST_STORE={server}: {err}"));
    let options = cairn::store::PostgresOptions {
        database_time: false,
        lease_ttl: std::time::Duration::from_secs(3),
        heartbeat_every: std::time::Duration::from_secs(1),
        poll_every: std::time::Duration::from_millis(100),
        pool_size: 8,
        ..cairn::store::PostgresOptions::default()
    };
    builder.open_postgres_with(&url, options).await
}

#[cfg(not(feature = "postgres"))]
async fn open_on_postgres(
    _: RuntimeBuilder,
    server: &str,
    _: &Path,
) -> Result<Runtime, cairn::Error> {
    panic!("CAIRN_TEST_STORE={server} needs the `postgres` feature: cargo test -p cairn --features postgres")
}

/// How long the helpers below wait before failing the test: long enough for a loaded
/// machine and a store across a socket, short enough that a broken run fails.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Yields until instance `id` has recorded `events` events (bounded in time, so a broken
/// run fails instead of hanging).
pub(crate) async fn wait_for_events(rt: &Runtime, id: &str, events: usize) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while rt.history(id).await.unwrap().len() < events {
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never reached {events} events"
        );
        tokio::task::yield_now().await;
    }
}

/// Yields until at most `runs` runs are resident (the rest evicted), bounded in time.
pub(crate) async fn until_resident_at_most(rt: &Runtime, runs: usize) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while rt.engine().resident_runs() > runs {
        assert!(
            std::time::Instant::now() < deadline,
            "runs were not evicted"
        );
        tokio::task::yield_now().await;
    }
}

/// Yields until every run is evicted, bounded.
pub(crate) async fn until_evicted(rt: &Runtime) {
    until_resident_at_most(rt, 0).await;
}

/// Instance `id`'s history as the records a replay or an auditor reads.
pub(crate) async fn records_of(rt: &Runtime, id: &str) -> Vec<cairn::events::EventRecord> {
    rt.history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.record)
        .collect()
}
