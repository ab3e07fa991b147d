//! Compensation: registered undo steps run in reverse when a process cannot finish, each
//! once, durably (a restart in the middle of compensating resumes the rest), and a
//! failed compensation is reported as the workflow's error, never swallowed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cairn::events::EventKind;
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, RetryPolicy, Runtime, Status,
    WorkflowError,
};

/// What ran, in order (completed attempts only).
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// `refund` waits here on its first attempt until the test lets it go (or never).
static REFUND_GATE: AtomicBool = AtomicBool::new(true);
static REFUND_ATTEMPTS: AtomicUsize = AtomicUsize::new(0);
static RELEASE_FAILS: AtomicBool = AtomicBool::new(false);

fn ran(what: String) {
    LOG.lock().unwrap().push(what);
}

fn log() -> Vec<String> {
    LOG.lock().unwrap().clone()
}

#[activity]
async fn reserve(_ctx: ActivityCtx, order: String) -> Result<String, ActivityError> {
    ran(format!("reserve {order}"));
    Ok(format!("rsv-{order}"))
}

#[activity]
async fn release(_ctx: ActivityCtx, reservation: String) -> Result<(), ActivityError> {
    if RELEASE_FAILS.load(Ordering::SeqCst) {
        return Err(ActivityError::terminal(
            "gone",
            "the warehouse lost the reservation",
        ));
    }
    ran(format!("release {reservation}"));
    Ok(())
}

#[activity]
async fn charge(_ctx: ActivityCtx, order: String) -> Result<String, ActivityError> {
    ran(format!("charge {order}"));
    Ok(format!("pay-{order}"))
}

#[activity]
async fn refund(_ctx: ActivityCtx, payment: String) -> Result<(), ActivityError> {
    let attempt = REFUND_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    if attempt == 0 {
        while REFUND_GATE.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    ran(format!("refund {payment}"));
    Ok(())
}

#[activity]
async fn ship(_ctx: ActivityCtx, order: String) -> Result<(), ActivityError> {
    Err(ActivityError::terminal(
        "no_carrier",
        format!("no carrier for {order}"),
    ))
}

#[workflow]
async fn fulfil(ctx: Ctx, order: String) -> Result<(), WorkflowError> {
    let mut saga = ctx.saga();
    let reservation = ctx.activity(reserve, order.clone()).await?;
    saga.on_failure(release, reservation);
    let payment = ctx.activity(charge, order.clone()).await?;
    saga.on_failure_with(
        refund,
        payment,
        cairn::ActivityOptions {
            retry: RetryPolicy::default().max_attempts(5),
            ..cairn::ActivityOptions::default()
        },
    );
    if let Err(failed) = ctx.activity(ship, order).await {
        saga.compensate().await?;
        return Err(failed.into());
    }
    Ok(())
}

#[workflow]
async fn hold(ctx: Ctx, order: String) -> Result<(), WorkflowError> {
    let mut saga = ctx.saga();
    let reservation = ctx.activity(reserve, order).await?;
    saga.on_failure(release, reservation);
    match ctx.signal::<bool>("go").await {
        Ok(_) => Ok(()),
        Err(cancelled) => {
            saga.compensate().await?;
            Err(cancelled.into())
        }
    }
}

/// The tests share the activities' statics: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn reset() {
    LOG.lock().unwrap().clear();
    REFUND_GATE.store(false, Ordering::SeqCst);
    REFUND_ATTEMPTS.store(0, Ordering::SeqCst);
    RELEASE_FAILS.store(false, Ordering::SeqCst);
}

async fn open(path: &std::path::Path) -> Runtime {
    Runtime::builder()
        .workflow(fulfil)
        .workflow(hold)
        .open_store(path)
        .await
        .unwrap()
}

fn completed_activities(history: &[cairn::store::StoredEvent]) -> Vec<String> {
    history
        .iter()
        .filter_map(|e| match &e.record.kind {
            EventKind::ActivityCompleted { activity, .. } => Some(activity.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_runs_the_compensations_in_reverse_and_fails_with_its_own_error() {
    let _serial = SERIAL.lock().await;
    reset();
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let result = rt
        .start(fulfil, "o-1", "o-1".to_owned())
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    match result {
        Err(WorkflowError::Activity(failure)) => assert_eq!(failure.kind, "no_carrier"),
        other => panic!("expected the shipping failure, got {other:?}"),
    }
    assert_eq!(
        log(),
        [
            "reserve o-1",
            "charge o-1",
            "refund pay-o-1",
            "release rsv-o-1"
        ],
        "compensations run last-registered first"
    );
    assert_eq!(
        completed_activities(&rt.history("o-1").await.unwrap()),
        ["reserve", "charge", "refund", "release"]
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_compensation_is_reported_and_the_others_still_run() {
    let _serial = SERIAL.lock().await;
    reset();
    RELEASE_FAILS.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let result = rt
        .start(fulfil, "o-2", "o-2".to_owned())
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    match result {
        Err(WorkflowError::Compensation(failed)) => {
            assert_eq!(failed.total, 2);
            assert_eq!(failed.failed.len(), 1);
            assert_eq!(failed.failed[0].activity, "release");
            assert_eq!(failed.failed[0].failure.kind, "gone");
            assert!(
                failed.to_string().contains("1 of 2 compensation(s) failed"),
                "{failed}"
            );
        }
        other => panic!("expected a compensation failure, got {other:?}"),
    }
    assert_eq!(log(), ["reserve o-2", "charge o-2", "refund pay-o-2"]);
    assert_eq!(rt.status("o-2").await.unwrap().status, Status::Failed);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_compensating_runs_each_remaining_compensation_once() {
    let _serial = SERIAL.lock().await;
    reset();
    REFUND_GATE.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = open(&path).await;
    rt.start(fulfil, "o-3", "o-3".to_owned()).await.unwrap();
    // The refund (the first compensation) is in flight and never finishes on this host.
    let mut spins = 0;
    while REFUND_ATTEMPTS.load(Ordering::SeqCst) == 0 {
        spins += 1;
        assert!(spins < 10_000, "the compensation did not start");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    rt.shutdown().await;
    assert_eq!(log(), ["reserve o-3", "charge o-3"]);

    let rt = open(&path).await;
    let result = rt.handle(fulfil, "o-3").result().await.unwrap();
    assert!(
        matches!(result, Err(WorkflowError::Activity(_))),
        "{result:?}"
    );
    assert_eq!(
        log(),
        [
            "reserve o-3",
            "charge o-3",
            "refund pay-o-3",
            "release rsv-o-3"
        ],
        "the steps before the restart ran once, the compensations once each"
    );
    assert_eq!(
        REFUND_ATTEMPTS.load(Ordering::SeqCst),
        2,
        "the attempt in flight ran again"
    );
    assert_eq!(
        completed_activities(&rt.history("o-3").await.unwrap()),
        ["reserve", "charge", "refund", "release"]
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_instance_compensates_and_ends_cancelled() {
    let _serial = SERIAL.lock().await;
    reset();
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let handle = rt.start(hold, "h-1", "h-1".to_owned()).await.unwrap();
    let mut spins = 0;
    while log().is_empty() {
        spins += 1;
        assert!(spins < 10_000, "the reservation did not run");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    rt.cancel("h-1", "customer withdrew").await.unwrap();
    let result = handle.result().await.unwrap();
    assert!(
        matches!(result, Err(WorkflowError::Cancelled(_))),
        "{result:?}"
    );
    assert_eq!(log(), ["reserve h-1", "release rsv-h-1"]);
    rt.shutdown().await;
}
