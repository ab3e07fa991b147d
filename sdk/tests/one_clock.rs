//! One clock for all time: retry backoff and start-to-close timeouts wait on the runtime's
//! clock, like durable timers, and commits are stamped with it; so a test on a
//! `VirtualClock` skips a six-hour backoff at once. And an activity that blocks its thread
//! cannot keep its own start-to-close timeout from firing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use cairn::events::EventKind;
use cairn::testing::{Clock, VirtualClock};
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, RetryPolicy, Runtime, WorkflowError,
};

const SIX_HOURS: Duration = Duration::from_secs(6 * 3600);

static FLAKY_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

#[activity]
async fn flaky(_ctx: ActivityCtx, _x: ()) -> Result<u32, ActivityError> {
    if FLAKY_ATTEMPTS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(ActivityError::retryable("the bank is closed until morning"));
    }
    Ok(7)
}

#[workflow]
async fn patient(ctx: Ctx) -> Result<u32, WorkflowError> {
    let policy = RetryPolicy::default()
        .initial_backoff(SIX_HOURS)
        .max_backoff(SIX_HOURS);
    Ok(ctx.activity(flaky, ()).retry(policy).await?)
}

/// Blocks its thread (as careless code calling a blocking API does) until released.
static RELEASE: Mutex<Option<std::sync::mpsc::Receiver<()>>> = Mutex::new(None);

#[activity]
async fn blocks_its_thread(_ctx: ActivityCtx, _x: ()) -> Result<u32, ActivityError> {
    let release = RELEASE.lock().unwrap().take();
    if let Some(release) = release {
        let _ = release.recv();
    }
    Ok(1)
}

#[workflow]
async fn bounded(ctx: Ctx) -> Result<String, WorkflowError> {
    let outcome = ctx
        .activity(blocks_its_thread, ())
        .retry(RetryPolicy::no_retry())
        .start_to_close(Duration::from_millis(200))
        .await;
    Ok(match outcome {
        Ok(n) => format!("finished {n}"),
        Err(failure) => format!("failed: {}", failure.kind),
    })
}

#[tokio::test]
async fn a_six_hour_retry_backoff_is_skipped_on_the_virtual_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_764_000_000));
    let start_ms = clock.now_ms();
    let rt = Runtime::builder()
        .workflow(patient)
        .clock(Arc::new(clock.clone()))
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let handle = rt.start(patient, "p-1", ()).await.unwrap();
    let fired_at = tokio::time::timeout(Duration::from_secs(20), clock.skip_to_next_timer())
        .await
        .expect("the backoff is a timer on the runtime clock");
    assert_eq!(fired_at, start_ms + 6 * 3600 * 1000);
    assert_eq!(handle.result().await.unwrap().unwrap(), 7);
    assert_eq!(FLAKY_ATTEMPTS.load(Ordering::SeqCst), 2);
    // Commits are stamped on the same clock: the retry's due time in the history is the
    // time the clock skipped to.
    let history = rt.history("p-1").await.unwrap();
    let failed = history
        .iter()
        .find(|e| matches!(e.record.kind, EventKind::ActivityAttemptFailed { .. }))
        .unwrap();
    assert_eq!(failed.record.recorded_at_ms, start_ms);
    let done = history
        .iter()
        .find(|e| matches!(e.record.kind, EventKind::ActivityCompleted { .. }))
        .unwrap();
    assert_eq!(done.record.recorded_at_ms, fired_at);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_that_blocks_its_thread_still_times_out() {
    let (release, blocked) = std::sync::mpsc::channel();
    *RELEASE.lock().unwrap() = Some(blocked);
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(bounded)
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let handle = rt.start(bounded, "b-1", ()).await.unwrap();
    // The step ends with its timeout while the activity's thread is still blocked.
    let said = tokio::time::timeout(Duration::from_secs(20), handle.result())
        .await
        .expect("the start-to-close timeout fired while the activity blocked")
        .unwrap()
        .unwrap();
    assert_eq!(said, "failed: timeout");
    release.send(()).unwrap();
    rt.shutdown().await;
}

/// Blocks its thread on its first attempt only, until released.
static BLOCK_ONCE: Mutex<Option<std::sync::mpsc::Receiver<()>>> = Mutex::new(None);

#[activity]
async fn blocks_once(ctx: ActivityCtx, _x: ()) -> Result<u32, ActivityError> {
    let release = BLOCK_ONCE.lock().unwrap().take();
    if let Some(release) = release {
        let _ = release.recv();
    }
    Ok(ctx.attempt)
}

#[workflow]
async fn retried_after_a_block(ctx: Ctx) -> Result<u32, WorkflowError> {
    Ok(ctx
        .activity(blocks_once, ())
        .retry(
            RetryPolicy::default()
                .max_attempts(2)
                .initial_backoff(Duration::from_millis(10)),
        )
        .start_to_close(Duration::from_millis(200))
        .await?)
}

/// The run reuses its last attempt's task for the next attempt, but never one whose
/// attempt it gave up: a retry queued behind the blocked attempt would wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_runs_while_the_attempt_that_timed_out_still_blocks_its_thread() {
    let (release, blocked) = std::sync::mpsc::channel();
    *BLOCK_ONCE.lock().unwrap() = Some(blocked);
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(retried_after_a_block)
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let handle = rt.start(retried_after_a_block, "r-1", ()).await.unwrap();
    let attempt = tokio::time::timeout(Duration::from_secs(20), handle.result())
        .await
        .expect("the retry waited for the blocked attempt")
        .unwrap()
        .unwrap();
    assert_eq!(attempt, 2, "the second attempt gave the result");
    release.send(()).unwrap();
    rt.shutdown().await;
}
