//! Waiting is cheap: a run that only waits durably is evicted from memory, an evicted
//! instance costs no replay at start-up, and a timer, signal, cancellation or finished
//! child brings it back by replay, with the same results as a run that stayed resident.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::until_evicted;
use common::OpenStore;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cairn::testing::VirtualClock;
use cairn::{workflow, Ctx, Runtime, WorkflowError};

const DAY: Duration = Duration::from_secs(24 * 3600);

#[workflow]
async fn nap(ctx: Ctx, days: u32) -> Result<u32, WorkflowError> {
    ctx.sleep(DAY * days).await?;
    Ok(days)
}

#[workflow]
async fn await_go(ctx: Ctx) -> Result<String, WorkflowError> {
    let word: String = ctx.signal("go").await?;
    Ok(word)
}

#[workflow]
async fn parent_of(ctx: Ctx, child: String) -> Result<String, WorkflowError> {
    let said = ctx.child(await_go, &child, ()).await?;
    Ok(format!("child said {said}"))
}

fn clock() -> VirtualClock {
    VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_764_000_000))
}

async fn open(path: &std::path::Path, clock: &VirtualClock) -> Runtime {
    Runtime::builder()
        .workflow(nap)
        .workflow(await_go)
        .workflow(parent_of)
        .clock(Arc::new(clock.clone()))
        .eviction_idle(Some(Duration::ZERO))
        // These tests count the replays eviction causes; always-replay mode adds one per
        // step by design, so this file pins it off.
        .always_replay(false)
        .open_store(path)
        .await
        .unwrap()
}

/// Starts `parent_of` as `parent` with child `{parent}/child`, and waits until the child
/// exists and every run (parent, child and any other) is evicted.
async fn start_parent_until_evicted(rt: &Runtime, parent: &str) {
    let child = format!("{parent}/child");
    rt.start(parent_of, parent, child.clone()).await.unwrap();
    let mut spins = 0u32;
    while rt.status(&child).await.is_err() || rt.engine().resident_runs() > 0 {
        spins += 1;
        assert!(spins < 2_000_000, "runs were not evicted");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_sleeping_instance_is_evicted_and_its_timer_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let rt = open(&dir.path().join("db.redb"), &clock).await;
    let handle = rt.start(nap, "n-1", 3).await.unwrap();
    until_evicted(&rt).await;
    assert_eq!(
        rt.status("n-1").await.unwrap().status,
        cairn::Status::Running
    );
    assert_eq!(rt.engine().replays(), 0);
    clock.skip_to_next_timer().await;
    assert_eq!(handle.result().await.unwrap().unwrap(), 3);
    assert_eq!(rt.engine().replays(), 1, "woken by replay");
    rt.shutdown().await;
}

#[tokio::test]
async fn evicted_instances_are_not_replayed_at_start_and_wake_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = clock();
    {
        let rt = open(&path, &clock).await;
        for i in 0..50 {
            rt.start(nap, &format!("n-{i}"), 1 + i % 3).await.unwrap();
        }
        until_evicted(&rt).await;
        rt.shutdown().await;
    }
    let rt = open(&path, &clock).await;
    assert_eq!(
        rt.engine().replays(),
        0,
        "dormant instances are not replayed at start"
    );
    assert_eq!(rt.engine().resident_runs(), 0);
    clock.advance(DAY);
    // Only the one-day sleepers wake.
    for i in (0..50).filter(|i| i % 3 == 0) {
        assert_eq!(
            rt.handle(nap, &format!("n-{i}"))
                .result()
                .await
                .unwrap()
                .unwrap(),
            1
        );
    }
    clock.advance(2 * DAY);
    for i in 0..50 {
        assert_eq!(
            rt.handle(nap, &format!("n-{i}"))
                .result()
                .await
                .unwrap()
                .unwrap(),
            1 + i % 3
        );
    }
    assert_eq!(rt.engine().replays(), 50);
    rt.shutdown().await;
}

#[tokio::test]
async fn signals_cancellations_and_finished_children_wake_evicted_instances() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = clock();
    {
        let rt = open(&path, &clock).await;
        rt.start(await_go, "s-1", ()).await.unwrap();
        rt.start(await_go, "s-2", ()).await.unwrap();
        start_parent_until_evicted(&rt, "p-1").await;
        rt.shutdown().await;
    }
    let rt = open(&path, &clock).await;
    assert_eq!(rt.engine().resident_runs(), 0);

    rt.signal("s-1", "go", &"now".to_owned()).await.unwrap();
    assert_eq!(
        rt.handle(await_go, "s-1").result().await.unwrap().unwrap(),
        "now"
    );

    rt.cancel("s-2", "no longer needed").await.unwrap();
    assert!(matches!(
        rt.handle(await_go, "s-2").result().await.unwrap(),
        Err(WorkflowError::Cancelled(_))
    ));

    // The child wakes on its signal; when it finishes it wakes its evicted parent.
    rt.signal("p-1/child", "go", &"ready".to_owned())
        .await
        .unwrap();
    assert_eq!(
        rt.handle(parent_of, "p-1").result().await.unwrap().unwrap(),
        "child said ready"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_child_ending_just_before_a_stop_still_wakes_its_evicted_parent_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = clock();
    {
        let rt = open(&path, &clock).await;
        start_parent_until_evicted(&rt, "p-2").await;
        rt.signal("p-2/child", "go", &"late".to_owned())
            .await
            .unwrap();
        rt.handle(await_go, "p-2/child")
            .result()
            .await
            .unwrap()
            .unwrap();
        // Stop at once: the parent may not have recorded the child's end yet.
        rt.shutdown().await;
    }
    let rt = open(&path, &clock).await;
    assert_eq!(
        rt.handle(parent_of, "p-2").result().await.unwrap().unwrap(),
        "child said late"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_replayed_parent_reaches_the_child_it_started_earlier() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = clock();
    {
        let rt = open(&path, &clock).await;
        start_parent_until_evicted(&rt, "p-3").await;
        rt.shutdown().await;
    }
    let rt = open(&path, &clock).await;
    rt.cancel("p-3", "withdrawn").await.unwrap();
    assert!(matches!(
        rt.handle(parent_of, "p-3").result().await.unwrap(),
        Err(WorkflowError::Cancelled(_))
    ));
    assert!(
        matches!(
            rt.handle(await_go, "p-3/child").result().await.unwrap(),
            Err(WorkflowError::Cancelled(_))
        ),
        "the cancellation reached the child"
    );
    rt.shutdown().await;
}
