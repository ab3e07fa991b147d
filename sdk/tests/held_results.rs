//! An activity's result reaches the workflow before it is durable (on a store that
//! queues appends, the embedded one), so that a workflow's last result and its end share
//! one commit. Nothing that acts outside the workflow may start on a result that is not
//! durable: the next step waits for it, a result held while another branch still runs
//! is sent when the poll ends, and virtual time is not held up by it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use cairn::events::EventKind;
use cairn::testing::{Clock, VirtualClock};
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, WorkflowError};
use common::OpenStore;

fn db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.redb");
    (dir, path)
}

/// The activity results already in the durable log of the calling instance.
async fn durable_results(rt: &Runtime, id: &str) -> usize {
    rt.history(id)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.record.kind, EventKind::ActivityCompleted { .. }))
        .count()
}

static COUNTING: OnceLock<Runtime> = OnceLock::new();

#[activity]
async fn count_results(ctx: ActivityCtx) -> Result<usize, ActivityError> {
    let rt = COUNTING.get().expect("set before the start");
    Ok(durable_results(rt, &ctx.instance_id).await)
}

#[workflow]
async fn three_counts(ctx: Ctx) -> Result<(usize, usize, usize), WorkflowError> {
    let a = ctx.activity(count_results, ()).await?;
    let b = ctx.activity(count_results, ()).await?;
    let c = ctx.activity(count_results, ()).await?;
    Ok((a, b, c))
}

#[tokio::test]
async fn the_next_activity_starts_only_once_the_previous_result_is_durable() {
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(three_counts)
        .open_store(&path)
        .await
        .unwrap();
    COUNTING.set(rt.clone()).unwrap();
    let before = rt.engine().commits();
    let handle = rt.start(three_counts, "counts-1", ()).await.unwrap();
    // Each attempt sees every earlier step's result in the log.
    assert_eq!(handle.result().await.unwrap().unwrap(), (0, 1, 2));
    // On the embedded store: the start, the first two results, and the last result
    // with the end. When every step is replayed, the result waits for its own commit
    // and the end takes one more (as on PostgreSQL, which does not queue appends).
    if !common::on_postgres() {
        let replayed = std::env::var_os("CAIRN_ALWAYS_REPLAY").is_some();
        assert_eq!(rt.engine().commits() - before, if replayed { 5 } else { 4 });
    }
    let history = rt.history("counts-1").await.unwrap();
    let kinds: Vec<&str> = history.iter().map(|e| e.record.kind.name()).collect();
    assert_eq!(
        kinds,
        [
            "WorkflowStarted",
            "ActivityCompleted",
            "ActivityCompleted",
            "ActivityCompleted",
            "WorkflowCompleted"
        ]
    );
    rt.shutdown().await;
}

static SIBLINGS: OnceLock<Runtime> = OnceLock::new();

#[activity]
async fn count_sibling_results(ctx: ActivityCtx) -> Result<usize, ActivityError> {
    let rt = SIBLINGS.get().expect("set before the start");
    Ok(durable_results(rt, &ctx.instance_id).await)
}

#[workflow]
async fn one_then_two_together(ctx: Ctx) -> Result<(usize, usize, usize), WorkflowError> {
    let a = ctx.activity(count_sibling_results, ()).await?;
    // Both siblings start in the poll that got `a`: neither may run before it is durable.
    let (b, c) = futures::join!(
        ctx.activity(count_sibling_results, ()),
        ctx.activity(count_sibling_results, ())
    );
    Ok((a, b?, c?))
}

#[tokio::test]
async fn sibling_steps_both_wait_for_the_held_result() {
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(one_then_two_together)
        .open_store(&path)
        .await
        .unwrap();
    SIBLINGS.set(rt.clone()).unwrap();
    let handle = rt
        .start(one_then_two_together, "siblings-1", ())
        .await
        .unwrap();
    let (a, b, c) = handle.result().await.unwrap().unwrap();
    assert_eq!(a, 0);
    // Each sibling saw `a` durable. One may also see the other's result (2) when its own
    // task runs only after that commit: their order is the scheduler's, not the run's.
    // Never both: the one that starts first sees `a` alone.
    assert!(
        (1..=2).contains(&b) && (1..=2).contains(&c) && b.min(c) == 1,
        "a sibling ran before the held result was durable: {:?}",
        (a, b, c)
    );
    rt.shutdown().await;
}

static RELEASE_SLOW: Mutex<Option<tokio::sync::oneshot::Receiver<()>>> = Mutex::new(None);

#[activity]
async fn slow(_ctx: ActivityCtx) -> Result<u32, ActivityError> {
    let release = RELEASE_SLOW.lock().unwrap().take();
    if let Some(release) = release {
        let _ = release.await;
    }
    Ok(2)
}

#[activity]
async fn fast(_ctx: ActivityCtx) -> Result<u32, ActivityError> {
    Ok(1)
}

#[workflow]
async fn fast_and_slow(ctx: Ctx) -> Result<u32, WorkflowError> {
    let (a, b) = futures::join!(ctx.activity(fast, ()), ctx.activity(slow, ()));
    Ok(a? + b?)
}

#[tokio::test]
async fn a_result_held_while_a_sibling_runs_is_made_durable_without_waiting_for_it() {
    let (release, released) = tokio::sync::oneshot::channel();
    *RELEASE_SLOW.lock().unwrap() = Some(released);
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(fast_and_slow)
        .open_store(&path)
        .await
        .unwrap();
    let handle = rt.start(fast_and_slow, "pair-1", ()).await.unwrap();
    // The fast result is durable while the slow activity still runs: no later step and
    // no end came to send it.
    tokio::time::timeout(Duration::from_secs(20), async {
        while durable_results(&rt, "pair-1").await == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the fast result became durable while its sibling ran");
    release.send(()).unwrap();
    assert_eq!(handle.result().await.unwrap().unwrap(), 3);
    assert_eq!(durable_results(&rt, "pair-1").await, 2);
    rt.shutdown().await;

    // The held result replays like any other: reopened, nothing runs again.
    let rt = Runtime::builder()
        .workflow(fast_and_slow)
        .open_store(&path)
        .await
        .unwrap();
    let handle = rt.handle(fast_and_slow, "pair-1");
    assert_eq!(handle.result().await.unwrap().unwrap(), 3);
    rt.shutdown().await;
}

#[workflow]
async fn fast_then_an_hour(ctx: Ctx) -> Result<u32, WorkflowError> {
    let (a, slept) = futures::join!(ctx.activity(fast, ()), ctx.sleep(Duration::from_secs(3600)));
    if slept.is_err() {
        return Err(WorkflowError::business(
            "cancelled",
            "the hour was cancelled",
        ));
    }
    Ok(a?)
}

#[tokio::test]
async fn virtual_time_skips_once_a_held_result_is_durable() {
    let (_dir, path) = db();
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_764_000_000));
    let start_ms = clock.now_ms();
    let rt = Runtime::builder()
        .workflow(fast_then_an_hour)
        .clock(Arc::new(clock.clone()))
        // Never evicted while it waits: dropping the run would end the hold too, and
        // hide a hold that only the run's own ticket task ends.
        .eviction_idle(None)
        .open_store(&path)
        .await
        .unwrap();
    let handle = rt.start(fast_then_an_hour, "hour-1", ()).await.unwrap();
    // The attempt's hold on virtual time lasts until its result is durable, and no
    // longer: the hour is skipped although no step waits for the result.
    let fired_at = tokio::time::timeout(Duration::from_secs(30), clock.skip_to_next_timer())
        .await
        .expect("the hour was skipped");
    assert_eq!(fired_at, start_ms + 3_600_000);
    assert_eq!(handle.result().await.unwrap().unwrap(), 1);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_run_that_waits_after_a_held_result_is_still_evicted() {
    let (_dir, path) = db();
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_764_000_000));
    let rt = Runtime::builder()
        .workflow(fast_then_an_hour)
        .clock(Arc::new(clock.clone()))
        .eviction_idle(Some(Duration::ZERO))
        .open_store(&path)
        .await
        .unwrap();
    let handle = rt.start(fast_then_an_hour, "hour-2", ()).await.unwrap();
    // The result was queued after the poll that got it, so that poll did not count it;
    // its commit must still let the run be evicted while it waits out the hour.
    tokio::time::timeout(Duration::from_secs(20), common::until_evicted(&rt))
        .await
        .expect("the waiting run was evicted");
    assert_eq!(durable_results(&rt, "hour-2").await, 1);
    clock.skip_to_next_timer().await;
    assert_eq!(handle.result().await.unwrap().unwrap(), 1);
    rt.shutdown().await;
}
