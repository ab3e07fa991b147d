//! What a run waits on that its history does not show: a signal wait without a deadline
//! (`ctx.signal`, an update) records nothing until the message comes. The host knows it
//! for a run in memory (`Engine::waits_on_message`), and only while the workflow still
//! awaits it: a wait left behind by a `select!` that went on with another branch does not
//! count. An evicted run is not in memory: `None`, and callers infer from its history.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cairn::testing::VirtualClock;
use cairn::{workflow, Ctx, Runtime, WorkflowError};
use common::{until_evicted, wait_for_events};
use futures::future::{select, Either};

#[workflow]
async fn receiver(ctx: Ctx) -> Result<String, WorkflowError> {
    let word: String = ctx.signal("go").await?;
    Ok(word)
}

/// Races a signal against an hour's timer; when the timer wins it sleeps ten hours more
/// with the signal's wait still alive but no longer awaited.
#[workflow]
async fn napper(ctx: Ctx) -> Result<String, WorkflowError> {
    let go = Box::pin(ctx.signal::<String>("go"));
    let nap = Box::pin(ctx.sleep(Duration::from_secs(3600)));
    match select(go, nap).await {
        Either::Left((word, _)) => Ok(word?),
        Either::Right((slept, go)) => {
            slept?;
            ctx.sleep(Duration::from_secs(36_000)).await?;
            drop(go);
            Ok("slept".into())
        }
    }
}

async fn open(path: &std::path::Path, clock: &VirtualClock, idle: Option<Duration>) -> Runtime {
    Runtime::builder()
        .workflow(receiver)
        .workflow(napper)
        .clock(Arc::new(clock.clone()))
        .eviction_idle(idle)
        .open_store(path)
        .await
        .unwrap()
}

async fn run_of(rt: &Runtime, id: &str) -> u128 {
    rt.status(id).await.unwrap().run
}

/// What the host says of run `run` once the run has settled: the commit that the test
/// saw in the history reaches the run from the writer's thread, and the run's next poll
/// comes after it, so the answer is awaited (for up to 10 s), not sampled once.
async fn settled_wait(rt: &Runtime, run: u128, expected: bool) -> Option<bool> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = rt.engine().waits_on_message(run);
        if now == Some(expected) || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_resident_run_waits_on_a_message_only_while_it_awaits_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_764_000_000));
    let rt = open(&dir.path().join("db.redb"), &clock, None).await;
    let receiving = rt.start(receiver, "r-1", ()).await.unwrap();
    let napping = rt.start(napper, "n-1", ()).await.unwrap();
    // n-1 records its timer (start, timer started): two events.
    wait_for_events(&rt, "n-1", 2).await;
    let (r, n) = (run_of(&rt, "r-1").await, run_of(&rt, "n-1").await);
    assert_eq!(settled_wait(&rt, r, true).await, Some(true));
    assert_eq!(
        settled_wait(&rt, n, true).await,
        Some(true),
        "racing the signal against the timer"
    );
    // The hour passes: the timer wins, the run sleeps on with the signal's wait unawaited.
    clock.skip_to_next_timer().await;
    wait_for_events(&rt, "n-1", 4).await;
    assert_eq!(
        settled_wait(&rt, n, false).await,
        Some(false),
        "a wait nobody awaits any more"
    );
    rt.signal("r-1", "go", &"now".to_owned()).await.unwrap();
    assert_eq!(receiving.result().await.unwrap().unwrap(), "now");
    clock.skip_to_next_timer().await;
    assert_eq!(napping.result().await.unwrap().unwrap(), "slept");
    rt.shutdown().await;
}

#[tokio::test]
async fn an_evicted_run_is_not_known_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_764_000_000));
    let rt = open(&dir.path().join("db.redb"), &clock, Some(Duration::ZERO)).await;
    rt.start(receiver, "r-2", ()).await.unwrap();
    until_evicted(&rt).await;
    let run = run_of(&rt, "r-2").await;
    assert_eq!(rt.engine().waits_on_message(run), None);
    rt.shutdown().await;
}
