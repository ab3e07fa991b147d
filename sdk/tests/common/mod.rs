//! Helpers shared by the integration tests.

#![allow(dead_code, clippy::unwrap_used)]

use cairn::Runtime;

/// Yields until instance `id` has recorded `events` events (bounded, so a broken run
/// fails instead of hanging).
pub(crate) async fn wait_for_events(rt: &Runtime, id: &str, events: usize) {
    let mut spins = 0u32;
    while rt.history(id).await.unwrap().len() < events {
        spins += 1;
        assert!(spins < 1_000_000, "{id} never reached {events} events");
        tokio::task::yield_now().await;
    }
}

/// Yields until at most `runs` runs are resident (the rest evicted), bounded.
pub(crate) async fn until_resident_at_most(rt: &Runtime, runs: usize) {
    let mut spins = 0u32;
    while rt.engine().resident_runs() > runs {
        spins += 1;
        assert!(spins < 2_000_000, "runs were not evicted");
        tokio::task::yield_now().await;
    }
}

/// Yields until every run is evicted, bounded.
pub(crate) async fn until_evicted(rt: &Runtime) {
    until_resident_at_most(rt, 0).await;
}
