//! Cancellation is cooperative and recorded: the workflow's next durable wait (or the
//! one in progress) ends with a cancellation error, the workflow runs its compensation
//! with ordinary steps, and replay sees the same thing at the same step. A request made
//! while the host is down is delivered after it starts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::wait_for_events;
use common::OpenStore;

use std::sync::atomic::{AtomicU32, Ordering};

use cairn::audit::ReplayVerdict;
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, Status, WorkflowError};

static RELEASED: AtomicU32 = AtomicU32::new(0);

#[activity]
async fn reserve(_ctx: ActivityCtx, sku: String) -> Result<String, ActivityError> {
    Ok(format!("rsv-{sku}"))
}

#[activity]
async fn release(_ctx: ActivityCtx, reservation: String) -> Result<String, ActivityError> {
    RELEASED.fetch_add(1, Ordering::SeqCst);
    Ok(format!("released {reservation}"))
}

/// Stands for a slow external call that is still running when the cancel arrives.
#[activity]
async fn slow_charge(_ctx: ActivityCtx, reservation: String) -> Result<String, ActivityError> {
    let _ = reservation;
    std::future::pending().await
}

/// Reserve, then wait for payment; on cancellation release the stock (a saga step).
#[workflow]
async fn checkout(ctx: Ctx, sku: String) -> Result<String, WorkflowError> {
    let reservation = ctx.activity(reserve, sku).await?;
    match ctx.signal::<String>("paid").await {
        Ok(payment) => Ok(format!("{reservation} paid by {payment}")),
        Err(cancelled) => {
            ctx.activity(release, reservation).await?;
            Err(cancelled.into())
        }
    }
}

#[workflow]
async fn checkout_charging(ctx: Ctx, sku: String) -> Result<String, WorkflowError> {
    let reservation = ctx.activity(reserve, sku).await?;
    match ctx.activity(slow_charge, reservation.clone()).await {
        Ok(receipt) => Ok(receipt),
        Err(failure) if failure.is_cancellation() => {
            let released = ctx.activity(release, reservation).await?;
            Err(WorkflowError::business("cancelled", released))
        }
        Err(failure) => Err(failure.into()),
    }
}

async fn kinds(rt: &Runtime, id: &str) -> Vec<&'static str> {
    rt.history(id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.record.kind.name())
        .collect()
}

#[tokio::test]
async fn a_waiting_workflow_sees_the_cancellation_and_compensates() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(checkout)
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let handle = rt.start(checkout, "k-1", "sku-9".into()).await.unwrap();
    wait_for_events(&rt, "k-1", 2).await;
    let before = RELEASED.load(Ordering::SeqCst);
    rt.cancel("k-1", "customer abandoned the cart")
        .await
        .unwrap();

    let Err(WorkflowError::Cancelled(cancelled)) = handle.result().await.unwrap() else {
        panic!("expected a cancelled workflow")
    };
    assert_eq!(
        (cancelled.step, cancelled.reason.as_str()),
        (2, "customer abandoned the cart")
    );
    assert!(RELEASED.load(Ordering::SeqCst) > before, "compensation ran");
    assert_eq!(
        kinds(&rt, "k-1").await,
        [
            "WorkflowStarted",
            "ActivityCompleted",
            "CancelRequested",
            "StepCancelled",
            "ActivityCompleted",
            "WorkflowFailed"
        ]
    );
    assert_eq!(rt.status("k-1").await.unwrap().status, Status::Failed);
    let records: Vec<_> = rt
        .history("k-1")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect();
    assert!(matches!(
        rt.replay(&records).await.unwrap(),
        ReplayVerdict::Matches(_)
    ));
    rt.shutdown().await;
}

#[tokio::test]
async fn an_activity_in_flight_is_abandoned_and_reports_cancellation() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(checkout_charging)
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let handle = rt
        .start(checkout_charging, "k-2", "sku-3".into())
        .await
        .unwrap();
    wait_for_events(&rt, "k-2", 2).await;
    rt.cancel("k-2", "fraud alert").await.unwrap();
    let outcome = handle.result().await.unwrap();
    assert_eq!(
        outcome,
        Err(WorkflowError::business("cancelled", "released rsv-sku-3"))
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_cancellation_requested_while_the_host_is_down_is_delivered_after_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    {
        let rt = Runtime::builder()
            .workflow(checkout)
            .open_store(&path)
            .await
            .unwrap();
        rt.start(checkout, "k-3", "sku-1".into()).await.unwrap();
        wait_for_events(&rt, "k-3", 2).await;
        rt.shutdown().await;
    }
    {
        let tool = Runtime::builder().open_store(&path).await.unwrap();
        tool.cancel("k-3", "order expired").await.unwrap();
        tool.shutdown().await;
    }
    let rt = Runtime::builder()
        .workflow(checkout)
        .open_store(&path)
        .await
        .unwrap();
    let Err(WorkflowError::Cancelled(cancelled)) =
        rt.handle(checkout, "k-3").result().await.unwrap()
    else {
        panic!("expected a cancelled workflow")
    };
    assert_eq!(cancelled.reason, "order expired");
    // A finished instance cannot be cancelled again.
    assert!(matches!(
        rt.cancel("k-3", "again").await,
        Err(cairn::Error::InstanceFinished(_))
    ));
    rt.shutdown().await;
}

/// Waits for "ok" or an hour, whichever comes first, then an hour more.
#[workflow]
async fn ok_or_hour(ctx: Ctx) -> Result<String, WorkflowError> {
    let hour = std::time::Duration::from_secs(3600);
    let first = tokio::select! {
        ok = ctx.signal::<()>("ok") => ok.map(|()| "ok"),
        slept = ctx.sleep(hour) => slept.map(|()| "hour"),
    };
    if first.is_err() {
        return Ok("cancelled at the race".into());
    }
    match ctx.sleep(hour).await {
        Ok(()) => Ok("an hour later".into()),
        Err(_) => Ok("cancelled after the race".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_taken_by_a_step_that_lost_the_race_ends_the_next_wait() {
    // "ok" and the cancellation arrive together: the timer branch may take the
    // cancellation while the signal branch wins. The cancellation was then delivered
    // to a step the workflow never saw, and the next wait slept its hour.
    const INSTANCES: u32 = 30;
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(ok_or_hour)
        .open_store(&dir.path().join("db.redb"))
        .await
        .unwrap();
    for n in 0..INSTANCES {
        rt.start(ok_or_hour, &format!("race-{n}"), ())
            .await
            .unwrap();
    }
    for n in 0..INSTANCES {
        let id = format!("race-{n}");
        rt.signal(&id, "ok", &()).await.unwrap();
        rt.cancel(&id, "no longer needed").await.unwrap();
    }
    for n in 0..INSTANCES {
        let id = format!("race-{n}");
        let said = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            rt.handle(ok_or_hour, &id).result(),
        )
        .await;
        if said.is_err() {
            let kinds: Vec<String> = rt
                .history(&id)
                .await
                .unwrap()
                .iter()
                .map(|e| format!("{:?}", e.record.kind))
                .collect();
            panic!("{id}: the cancellation was swallowed: {kinds:#?}");
        }
        let said = said.unwrap().unwrap().unwrap();
        assert!(said.starts_with("cancelled"), "{id}: {said}");
        let records: Vec<_> = rt
            .history(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.record)
            .collect();
        let verdict = rt.replay(&records).await;
        assert!(
            matches!(verdict, Ok(ReplayVerdict::Matches(_))),
            "{id}: {verdict:?}: {:#?}",
            records
                .iter()
                .map(|r| format!("{:?}", r.kind))
                .collect::<Vec<_>>()
        );
    }
    rt.shutdown().await;
}
