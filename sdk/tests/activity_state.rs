//! Activities reach the host's resources through state registered on the runtime (no
//! globals), and declare their calls' default options where they are defined.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use cairn::events::EventKind;
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, WorkflowError};

/// The host's inventory service, shared by its activities.
#[derive(Default)]
struct Inventory {
    stock: Mutex<HashMap<String, u32>>,
}

#[activity]
async fn reserve(ctx: ActivityCtx, (sku, units): (String, u32)) -> Result<u32, ActivityError> {
    let inventory = ctx.state::<Inventory>()?;
    let mut stock = inventory.stock.lock().unwrap();
    let left = stock.entry(sku).or_insert(10);
    if *left < units {
        return Err(ActivityError::terminal("out_of_stock", "not enough units"));
    }
    *left -= units;
    Ok(*left)
}

static FLAKY_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// Declared with its own defaults: two attempts, retry after 1 ms, "fraud" never retried.
#[activity(max_attempts = 2, initial_backoff = "1ms", non_retryable = ["fraud"])]
async fn flaky(_ctx: ActivityCtx, kind: String) -> Result<(), ActivityError> {
    FLAKY_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    Err(ActivityError::retryable(format!("{kind} again")).with_kind(kind))
}

#[activity(start_to_close = "20ms", max_attempts = 1)]
async fn slow(_ctx: ActivityCtx) -> Result<(), ActivityError> {
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    Ok(())
}

#[workflow]
async fn order(ctx: Ctx, units: u32) -> Result<u32, WorkflowError> {
    Ok(ctx.activity(reserve, ("sku-1".to_owned(), units)).await?)
}

#[workflow]
async fn attempts(ctx: Ctx, kind: String) -> Result<String, WorkflowError> {
    let flaked = ctx.activity(flaky, kind).await.unwrap_err();
    let timed_out = ctx.activity(slow, ()).await.unwrap_err();
    Ok(format!(
        "{}/{} {}/{}",
        flaked.kind, flaked.attempts, timed_out.kind, timed_out.attempts
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_use_the_state_the_host_registered() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(order)
        .state(Inventory::default())
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let first = rt
        .start(order, "o-1", 3)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    let second = rt
        .start(order, "o-2", 4)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(
        (first.unwrap(), second.unwrap()),
        (7, 3),
        "one inventory, shared"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn missing_state_is_a_terminal_error_naming_the_type() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(order)
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let result = rt
        .start(order, "o-1", 1)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    match result {
        Err(WorkflowError::Activity(failure)) => {
            assert_eq!(
                (failure.kind.as_str(), failure.attempts),
                ("missing_state", 1)
            );
            assert!(failure.message.contains("Inventory"), "{}", failure.message);
            assert!(failure.message.contains(".state("), "{}", failure.message);
        }
        other => panic!("expected missing_state, got {other:?}"),
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_declared_on_the_activity_apply_to_its_calls() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(attempts)
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    FLAKY_ATTEMPTS.store(0, Ordering::SeqCst);
    let retried = rt
        .start(attempts, "a-1", "network".to_owned())
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        retried, "network/2 timeout/1",
        "max_attempts = 2; start_to_close = 20ms"
    );
    assert_eq!(FLAKY_ATTEMPTS.load(Ordering::SeqCst), 2);
    let not_retried = rt
        .start(attempts, "a-2", "fraud".to_owned())
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        not_retried, "fraud/1 timeout/1",
        "non_retryable = [\"fraud\"]"
    );
    let failures = rt
        .history("a-1")
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.record.kind, EventKind::ActivityAttemptFailed { .. }))
        .count();
    assert_eq!(
        failures, 1,
        "one retried failure recorded before the final one"
    );
    rt.shutdown().await;
}
