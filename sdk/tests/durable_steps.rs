//! Steps are recorded once, replayed without re-running, retried as their policy says,
//! and started instances are unique per id. Each test opens a fresh database file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use cairn::events::EventKind;
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, ListFilter, RetryPolicy, Runtime, Status,
    WorkflowError,
};
use common::OpenStore;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    qty: u32,
}

static RESERVE_CALLS: AtomicU32 = AtomicU32::new(0);

#[activity]
async fn reserve(_ctx: ActivityCtx, order: Order) -> Result<String, ActivityError> {
    RESERVE_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("R{}", order.id))
}

#[activity]
async fn price(_ctx: ActivityCtx, qty: u32, unit: u32) -> Result<u32, ActivityError> {
    Ok(qty * unit)
}

#[activity]
async fn idem_key(ctx: ActivityCtx) -> Result<String, ActivityError> {
    Ok(ctx.idempotency_key())
}

#[workflow]
async fn order_flow(ctx: Ctx, order: Order) -> Result<(String, u32, String), WorkflowError> {
    let reservation = ctx.activity(reserve, order.clone()).await?;
    let total = ctx.activity(price, (order.qty, 5)).await?;
    let key = ctx.activity(idem_key, ()).await?;
    Ok((reservation, total, key))
}

fn db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.redb");
    (dir, path)
}

#[tokio::test]
async fn steps_run_in_order_and_history_is_a_verified_chain() {
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(order_flow)
        .open_store(&path)
        .await
        .unwrap();
    let handle = rt
        .start(order_flow, "o-1", Order { id: 1, qty: 3 })
        .await
        .unwrap();
    assert!(handle.created());
    let result = handle.result().await.unwrap().unwrap();
    assert_eq!(result, ("R1".to_owned(), 15, "o-1/3".to_owned()));

    let history = rt.history("o-1").await.unwrap();
    let kinds: Vec<_> = history.iter().map(|e| e.record.kind.name()).collect();
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
    let seqs: Vec<_> = history.iter().map(|e| e.record.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    match &history[2].record.kind {
        EventKind::ActivityCompleted {
            step,
            activity,
            input,
            output,
            attempt,
        } => {
            assert_eq!((*step, activity.as_str(), *attempt), (2, "price", 1));
            assert_eq!(input.data, b"[3,5]");
            assert_eq!(output.data, b"15");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(rt.status("o-1").await.unwrap().status, Status::Completed);
    rt.shutdown().await;
}

#[tokio::test]
async fn starting_an_existing_id_returns_it_and_starts_nothing() {
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(order_flow)
        .open_store(&path)
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        rt.start(order_flow, "same", Order { id: 7, qty: 1 }),
        rt.start(order_flow, "same", Order { id: 8, qty: 1 })
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        u8::from(a.created()) + u8::from(b.created()),
        1,
        "exactly one start creates"
    );
    let first = a.result().await.unwrap().unwrap();
    assert_eq!(b.result().await.unwrap().unwrap(), first);
    let again = rt
        .start(order_flow, "same", Order { id: 9, qty: 1 })
        .await
        .unwrap();
    assert!(!again.created());
    assert_eq!(rt.list(&ListFilter::default()).await.unwrap().len(), 1);
    rt.shutdown().await;
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[activity]
async fn flaky(ctx: ActivityCtx, fail_times: u32) -> Result<u32, ActivityError> {
    FLAKY_CALLS.fetch_add(1, Ordering::SeqCst);
    if ctx.attempt <= fail_times {
        return Err(
            ActivityError::retryable(format!("attempt {} fails", ctx.attempt))
                .with_kind("unavailable"),
        );
    }
    Ok(ctx.attempt)
}

#[activity]
async fn declined(_ctx: ActivityCtx) -> Result<(), ActivityError> {
    Err(ActivityError::terminal(
        "card_declined",
        "insufficient funds",
    ))
}

#[workflow]
async fn retrying(ctx: Ctx, fail_times: u32) -> Result<u32, WorkflowError> {
    let fast = RetryPolicy::default()
        .max_attempts(4)
        .initial_backoff(std::time::Duration::ZERO);
    let attempt = ctx.activity(flaky, fail_times).retry(fast).await?;
    if attempt > 1 {
        ctx.activity(declined, ()).await?;
    }
    Ok(attempt)
}

#[tokio::test]
async fn failed_attempts_are_recorded_and_terminal_errors_are_not_retried() {
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(retrying)
        .open_store(&path)
        .await
        .unwrap();
    let outcome = rt
        .start(retrying, "r-1", 2)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    let Err(WorkflowError::Activity(failure)) = outcome else {
        panic!("expected the declined step to fail the workflow, got {outcome:?}");
    };
    assert_eq!(
        (
            failure.activity.as_str(),
            failure.kind.as_str(),
            failure.attempts,
            failure.step
        ),
        ("declined", "card_declined", 1, 2)
    );
    assert!(!failure.retryable);
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 3);
    let kinds: Vec<_> = rt
        .history("r-1")
        .await
        .unwrap()
        .iter()
        .map(|e| e.record.kind.name())
        .collect();
    assert_eq!(
        kinds,
        [
            "WorkflowStarted",
            "ActivityAttemptFailed",
            "ActivityAttemptFailed",
            "ActivityCompleted",
            "ActivityFailed",
            "WorkflowFailed"
        ]
    );
    assert_eq!(rt.status("r-1").await.unwrap().status, Status::Failed);

    // Attempts run out: the failure is retryable but the policy allows 4.
    let outcome = rt
        .start(retrying, "r-2", 10)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    let Err(WorkflowError::Activity(failure)) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (failure.attempts, failure.retryable, failure.kind.as_str()),
        (4, true, "unavailable")
    );
    rt.shutdown().await;
}

#[workflow]
async fn recorded_values(ctx: Ctx) -> Result<(u64, u64, String, u32), WorkflowError> {
    let now = ctx.now().await;
    let random = ctx.random().await;
    let uuid = ctx.uuid().await;
    let side = ctx.side_effect("answer", || 42u32).await;
    let micros = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    Ok((micros, random, uuid.to_string(), side))
}

#[tokio::test]
async fn recorded_values_replay_identically() {
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(recorded_values)
        .open_store(&path)
        .await
        .unwrap();
    let first = rt
        .start(recorded_values, "v-1", ())
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    assert!(first.0 > 1_600_000_000_000_000);
    assert_eq!(first.3, 42);
    let records: Vec<_> = rt
        .history("v-1")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect();
    let verdict = rt.replay(&records).await.unwrap();
    let cairn::audit::ReplayVerdict::Matches(cairn::audit::Outcome::Completed(payload)) = verdict
    else {
        panic!("{verdict:?}")
    };
    let replayed: (u64, u64, String, u32) = serde_json::from_slice(&payload.data).unwrap();
    assert_eq!(replayed, first);
    rt.shutdown().await;
}

#[tokio::test]
async fn results_survive_a_restart() {
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(order_flow)
        .open_store(&path)
        .await
        .unwrap();
    let expected = rt
        .start(order_flow, "keep", Order { id: 4, qty: 2 })
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    rt.shutdown().await;
    drop(rt);
    let rt = Runtime::builder()
        .workflow(order_flow)
        .open_store(&path)
        .await
        .unwrap();
    assert_eq!(
        rt.handle(order_flow, "keep").result().await.unwrap(),
        expected
    );
    assert!(matches!(
        rt.status("missing").await,
        Err(cairn::Error::InstanceNotFound(_))
    ));
    rt.shutdown().await;
}

#[activity]
async fn slow_label(_ctx: ActivityCtx, label: String) -> Result<String, ActivityError> {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    Ok(label)
}

#[activity]
async fn fast_label(_ctx: ActivityCtx, label: String) -> Result<String, ActivityError> {
    Ok(label)
}

#[workflow]
async fn fan_out(ctx: Ctx) -> Result<(String, String), WorkflowError> {
    // Step numbers are taken when the calls are made: slow is step 1, fast step 2,
    // whichever finishes first.
    let (a, b) = futures::join!(
        ctx.activity(slow_label, "slow".into()),
        ctx.activity(fast_label, "fast".into())
    );
    Ok((a?, b?))
}

#[tokio::test]
async fn concurrent_steps_are_numbered_in_call_order_and_replay_identically() {
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(fan_out)
        .open_store(&path)
        .await
        .unwrap();
    let result = rt
        .start(fan_out, "j-1", ())
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, ("slow".to_owned(), "fast".to_owned()));
    let history = rt.history("j-1").await.unwrap();
    let mut steps: Vec<(u32, String)> = history
        .iter()
        .filter_map(|e| match &e.record.kind {
            EventKind::ActivityCompleted { step, activity, .. } => Some((*step, activity.clone())),
            _ => None,
        })
        .collect();
    steps.sort();
    assert_eq!(
        steps,
        [(1, "slow_label".to_owned()), (2, "fast_label".to_owned())]
    );
    let records: Vec<_> = history.into_iter().map(|e| e.record).collect();
    assert!(matches!(
        rt.replay(&records).await.unwrap(),
        cairn::audit::ReplayVerdict::Matches(_)
    ));
    rt.shutdown().await;
}

#[activity]
async fn never_returns(_ctx: ActivityCtx) -> Result<(), ActivityError> {
    std::future::pending().await
}

#[activity]
async fn panics(_ctx: ActivityCtx) -> Result<(), ActivityError> {
    panic!("inventory index out of range")
}

#[activity]
async fn key_pair(ctx: ActivityCtx) -> Result<(String, String), ActivityError> {
    if ctx.attempt == 1 {
        return Err(ActivityError::retryable("first attempt fails"));
    }
    Ok((ctx.idempotency_key(), ctx.attempt_key()))
}

#[workflow]
async fn failure_paths(ctx: Ctx, which: String) -> Result<(String, String), WorkflowError> {
    let once = RetryPolicy::no_retry();
    match which.as_str() {
        "timeout" => {
            let twice = RetryPolicy::default()
                .max_attempts(2)
                .initial_backoff(std::time::Duration::ZERO);
            ctx.activity(never_returns, ())
                .retry(twice)
                .start_to_close(std::time::Duration::from_secs(30))
                .await?;
        }
        "panic" => ctx.activity(panics, ()).retry(once).await?,
        _ => {
            let fast = RetryPolicy::default().initial_backoff(std::time::Duration::ZERO);
            return Ok(ctx.activity(key_pair, ()).retry(fast).await?);
        }
    }
    Ok(Default::default())
}

// Virtual time: the 30 s start-to-close timeouts fire as soon as the runtime is idle.
#[tokio::test(start_paused = true)]
async fn timeouts_and_panics_are_recorded_failures_with_their_kind() {
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(failure_paths)
        .open_store(&path)
        .await
        .unwrap();
    let Err(WorkflowError::Activity(timeout)) = rt
        .start(failure_paths, "timeout", "timeout".into())
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
    else {
        panic!("timeout did not fail the step")
    };
    assert_eq!(
        (timeout.kind.as_str(), timeout.attempts, timeout.retryable),
        ("timeout", 2, true)
    );

    let Err(WorkflowError::Activity(panicked)) = rt
        .start(failure_paths, "panic", "panic".into())
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
    else {
        panic!("panic did not fail the step")
    };
    assert_eq!((panicked.kind.as_str(), panicked.attempts), ("panic", 1));
    assert!(
        panicked.message.contains("inventory index out of range"),
        "{}",
        panicked.message
    );

    let keys = rt
        .start(failure_paths, "keys", "keys".into())
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keys, ("keys/1".to_owned(), "keys/1/2".to_owned()));
    rt.shutdown().await;
}

#[workflow]
async fn buggy(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let a = ctx.activity(price, (n, 2)).await?;
    let items: Vec<u32> = Vec::new();
    Ok(a + items[a as usize])
}

#[tokio::test]
async fn a_panicking_workflow_is_parked_with_its_message() {
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(buggy)
        .workflow(order_flow)
        .open_store(&path)
        .await
        .unwrap();
    let err = rt
        .start(buggy, "b-1", 3)
        .await
        .unwrap()
        .result()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("CAIRN-E0015") && err.to_string().contains("index out of bounds"),
        "{err}"
    );
    let Status::Parked { code, .. } = rt.status("b-1").await.unwrap().status else {
        panic!("not parked")
    };
    assert_eq!(code, "CAIRN-E0015");
    // The park itself is noted in the history by a detached append, which may land
    // before or after this read: the steps are what must not change.
    let steps: Vec<EventKind> = rt
        .history("b-1")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record.kind)
        .filter(|kind| !matches!(kind, EventKind::WorkflowParked { .. }))
        .collect();
    assert_eq!(
        steps.len(),
        2,
        "the step before the panic stays recorded: {steps:?}"
    );
    // The host carries on.
    assert!(rt
        .start(order_flow, "after", Order { id: 2, qty: 1 })
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .is_ok());
    rt.shutdown().await;
}

/// System-clock ms at which each attempt of `flaky_once` began.
static PATIENT_ATTEMPTS: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[activity]
async fn flaky_once(ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    PATIENT_ATTEMPTS.lock().unwrap().push(system_ms());
    if ctx.attempt == 1 {
        return Err(ActivityError::retryable("rate limited, try later"));
    }
    Ok(n)
}

#[workflow]
async fn patient(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let policy = RetryPolicy::default()
        .initial_backoff(std::time::Duration::from_millis(800))
        .max_attempts(3);
    Ok(ctx.activity(flaky_once, n).retry(policy).await?)
}

#[tokio::test]
async fn a_retry_backoff_is_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let open = || Runtime::builder().workflow(patient).open_store(&path);
    let rt = open().await.unwrap();
    rt.start(patient, "p-1", 7).await.unwrap();
    common::wait_for_events(&rt, "p-1", 2).await;
    rt.shutdown().await;

    // The failure is recorded with the time the next attempt is due.
    let rt = open().await.unwrap();
    let history = rt.history("p-1").await.unwrap();
    let failed = &history[1].record;
    let EventKind::ActivityAttemptFailed { retry_in_ms, .. } = failed.kind else {
        panic!("expected the failed attempt, got {:?}", failed.kind)
    };
    assert_eq!(retry_in_ms, 800);
    let due = failed.recorded_at_ms + retry_in_ms;
    assert_eq!(
        rt.handle(patient, "p-1").result().await.unwrap().unwrap(),
        7
    );
    let attempts = PATIENT_ATTEMPTS.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        attempts[1] >= due,
        "the second attempt ran {} ms before its backoff ended",
        due - attempts[1]
    );
    rt.shutdown().await;
}
