//! Steps are recorded once, replayed without re-running, retried as their policy says,
//! and started instances are unique per id. Each test opens a fresh database file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};

use cairn::engine::event::EventKind;
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, ListFilter, RetryPolicy, Runtime, Status,
    WorkflowError,
};
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
        .open(&path)
        .await
        .unwrap();
    let handle = rt
        .start(order_flow, "o-1", Order { id: 1, qty: 3 })
        .await
        .unwrap();
    assert!(handle.created());
    let result = handle.result().await.unwrap().unwrap();
    assert_eq!(result, ("R1".to_owned(), 15, "o-1/3".to_owned()));

    let history = rt.history("o-1").unwrap();
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
    assert_eq!(rt.status("o-1").unwrap().status, Status::Completed);
    rt.shutdown().await;
}

#[tokio::test]
async fn starting_an_existing_id_returns_it_and_starts_nothing() {
    let (_dir, path) = db();
    let rt = Runtime::builder()
        .workflow(order_flow)
        .open(&path)
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
    assert_eq!(rt.list(&ListFilter::default()).unwrap().len(), 1);
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
        .open(&path)
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
    assert_eq!(rt.status("r-1").unwrap().status, Status::Failed);

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
        .open(&path)
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
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect();
    let verdict = rt.replay(&records).await.unwrap();
    let cairn::engine::ReplayVerdict::Matches(cairn::engine::Outcome::Completed(payload)) = verdict
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
        .open(&path)
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
        .open(&path)
        .await
        .unwrap();
    assert_eq!(
        rt.handle(order_flow, "keep").result().await.unwrap(),
        expected
    );
    assert!(matches!(
        rt.status("missing"),
        Err(cairn::Error::InstanceNotFound(_))
    ));
    rt.shutdown().await;
}
