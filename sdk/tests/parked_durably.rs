//! What cannot run is parked, and the parking is recorded: a `WorkflowParked` event in
//! the instance's history (once per reason, however often the host restarts) and an
//! entry in the `parked` index that tools read without a host. The instance's next
//! event, once the code is fixed, clears it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::atomic::{AtomicBool, Ordering};

use cairn::audit::EventKind;
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, Status, WorkflowError};

/// Until a fix is deployed, the workflow panics after its first step.
static FIXED: AtomicBool = AtomicBool::new(false);

#[activity]
async fn reserve(_ctx: ActivityCtx, sku: String) -> Result<String, ActivityError> {
    Ok(format!("rsv-{sku}"))
}

#[workflow]
async fn fragile(ctx: Ctx, sku: String) -> Result<String, WorkflowError> {
    let reservation = ctx.activity(reserve, sku).await?;
    assert!(FIXED.load(Ordering::SeqCst), "bug in the pricing code");
    Ok(reservation)
}

async fn open(path: &std::path::Path) -> Runtime {
    Runtime::builder()
        .workflow(fragile)
        .open_store(path)
        .await
        .unwrap()
}

async fn parking_notes(rt: &Runtime, id: &str) -> Vec<(String, String)> {
    rt.history(id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.record.kind {
            EventKind::WorkflowParked { code, reason } => Some((code, reason)),
            _ => None,
        })
        .collect()
}

async fn until_parked(rt: &Runtime, id: &str) {
    let mut spins = 0u32;
    while parking_notes(rt, id).await.is_empty()
        || !matches!(rt.status(id).await.unwrap().status, Status::Parked { .. })
    {
        spins += 1;
        assert!(spins < 1_000_000, "{id} was never parked");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_parked_instance_is_recorded_once_per_reason_and_cleared_when_it_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = open(&path).await;
    rt.start(fragile, "f-1", "sku-9".to_owned()).await.unwrap();
    until_parked(&rt, "f-1").await;
    let Status::Parked { code, reason } = rt.status("f-1").await.unwrap().status else {
        unreachable!("until_parked saw it parked");
    };
    assert_eq!(code, "CAIRN-E0015");
    assert!(reason.contains("bug in the pricing code"), "{reason}");
    rt.shutdown().await;

    // A tool, with no host, sees why it is parked.
    {
        let store = common::open_tool(&path).await;
        let parked = store.parked().await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].1.code, "CAIRN-E0015");
        assert!(parked[0].1.reason.contains("bug in the pricing code"));
    }

    // Two more restarts on the same build: parked again, recorded once.
    for _ in 0..2 {
        let rt = open(&path).await;
        let mut spins = 0u32;
        while !matches!(
            rt.status("f-1").await.unwrap().status,
            Status::Parked { .. }
        ) {
            spins += 1;
            assert!(spins < 1_000_000, "f-1 was not parked again");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            parking_notes(&rt, "f-1").await.len(),
            1,
            "one note per reason"
        );
        rt.shutdown().await;
    }

    // The fix is deployed: the instance runs on from its history and the parking clears.
    FIXED.store(true, Ordering::SeqCst);
    let rt = open(&path).await;
    let done = rt.handle(fragile, "f-1").result().await.unwrap().unwrap();
    assert_eq!(done, "rsv-sku-9");
    assert_eq!(rt.status("f-1").await.unwrap().status, Status::Completed);
    rt.shutdown().await;
    let store = common::open_tool(&path).await;
    assert!(
        store.parked().await.unwrap().is_empty(),
        "its end cleared the parking"
    );
}
