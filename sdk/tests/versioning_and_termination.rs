//! Code can change under running instances with `ctx.patched` markers (old histories
//! replay their old path, new runs take the new one), and `terminate` stops an instance
//! for good with its reason recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::wait_for_events;
use common::OpenStore;

use cairn::audit::ReplayVerdict;
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, Error, Runtime, Status, WorkflowError,
};

#[activity]
async fn score(_ctx: ActivityCtx, amount: u64) -> Result<u64, ActivityError> {
    Ok(amount / 100)
}

#[activity]
async fn book(_ctx: ActivityCtx, amount: u64) -> Result<String, ActivityError> {
    Ok(format!("booked {amount}"))
}

#[activity]
async fn fraud_check(_ctx: ActivityCtx, amount: u64) -> Result<bool, ActivityError> {
    Ok(amount < 1_000_000)
}

#[workflow(name = "loan")]
async fn loan_v1(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    let s = ctx.activity(score, amount).await?;
    let booked = ctx.activity(book, amount).await?;
    let signer: String = ctx.signal("signed").await?;
    Ok(format!("{booked} score {s} signed by {signer}"))
}

/// v1 plus a fraud check between scoring and booking, behind a patch marker.
#[workflow(name = "loan")]
async fn loan_v2(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    let s = ctx.activity(score, amount).await?;
    let mut note = String::new();
    if ctx.patched("fraud-check").await {
        let clean = ctx.activity(fraud_check, amount).await?;
        note = format!(" fraud-checked {clean}");
    }
    let booked = ctx.activity(book, amount).await?;
    let signer: String = ctx.signal("signed").await?;
    Ok(format!("{booked} score {s} signed by {signer}{note}"))
}

#[tokio::test]
async fn patched_keeps_old_histories_on_the_old_path_and_new_runs_on_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    {
        let rt = Runtime::builder()
            .workflow(loan_v1)
            .open_store(&path)
            .await
            .unwrap();
        rt.start(loan_v1, "old", 5_000).await.unwrap();
        wait_for_events(&rt, "old", 3).await; // started, score, book; now waits to be signed
        rt.shutdown().await;
    }
    let rt = Runtime::builder()
        .workflow(loan_v2)
        .open_store(&path)
        .await
        .unwrap();
    rt.start(loan_v2, "new", 7_000).await.unwrap();
    rt.signal("old", "signed", &"ana".to_owned()).await.unwrap();
    rt.signal("new", "signed", &"bo".to_owned()).await.unwrap();
    assert_eq!(
        rt.handle(loan_v2, "old").result().await.unwrap().unwrap(),
        "booked 5000 score 50 signed by ana",
        "recorded before the patch: old path, same step numbers"
    );
    assert_eq!(
        rt.handle(loan_v2, "new").result().await.unwrap().unwrap(),
        "booked 7000 score 70 signed by bo fraud-checked true"
    );
    let kinds: Vec<_> = rt
        .history("new")
        .await
        .unwrap()
        .iter()
        .map(|e| e.record.kind.name())
        .collect();
    assert!(kinds.contains(&"PatchMarker"), "{kinds:?}");
    for id in ["old", "new"] {
        let records: Vec<_> = rt
            .history(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.record)
            .collect();
        assert!(
            matches!(
                rt.replay(&records).await.unwrap(),
                ReplayVerdict::Matches(_)
            ),
            "{id}"
        );
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn removing_a_patch_branch_too_early_is_caught_as_non_determinism() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = Runtime::builder()
        .workflow(loan_v2)
        .open_store(&path)
        .await
        .unwrap();
    rt.start(loan_v2, "patched", 100).await.unwrap();
    rt.signal("patched", "signed", &"cy".to_owned())
        .await
        .unwrap();
    rt.handle(loan_v2, "patched")
        .result()
        .await
        .unwrap()
        .unwrap();
    let records: Vec<_> = rt
        .history("patched")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect();
    rt.shutdown().await;

    // v1 does not know the marker its history holds at step 2.
    let rt = Runtime::builder()
        .workflow(loan_v1)
        .open_store(&path)
        .await
        .unwrap();
    let Err(Error::NonDeterminism(diff)) = rt.replay(&records).await else {
        panic!("expected a divergence")
    };
    assert_eq!(
        (diff.step, diff.recorded.kind, diff.recorded.name.as_str()),
        (2, "patch", "fraud-check")
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn terminate_stops_an_instance_for_good_and_records_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = Runtime::builder()
        .workflow(loan_v2)
        .open_store(&path)
        .await
        .unwrap();
    let handle = rt.start(loan_v2, "t-1", 900).await.unwrap();
    wait_for_events(&rt, "t-1", 5).await; // waiting for the signature
    rt.terminate("t-1", "customer withdrew the application")
        .await
        .unwrap();

    match handle.result().await {
        Err(Error::Terminated { instance, reason }) => {
            assert_eq!(
                (instance.as_str(), reason.as_str()),
                ("t-1", "customer withdrew the application")
            );
        }
        other => panic!("expected Terminated, got {other:?}"),
    }
    assert_eq!(rt.status("t-1").await.unwrap().status, Status::Terminated);
    let last = rt.history("t-1").await.unwrap().pop().unwrap();
    assert_eq!(last.record.kind.name(), "WorkflowTerminated");
    assert!(matches!(
        rt.signal("t-1", "signed", &"late".to_owned()).await,
        Err(Error::InstanceFinished(_))
    ));
    assert!(matches!(
        rt.terminate("t-1", "again").await,
        Err(Error::InstanceFinished(_))
    ));
    rt.shutdown().await;

    let rt = Runtime::builder()
        .workflow(loan_v2)
        .open_store(&path)
        .await
        .unwrap();
    assert_eq!(
        rt.status("t-1").await.unwrap().status,
        Status::Terminated,
        "not resumed after a restart"
    );
    assert!(matches!(
        rt.handle(loan_v2, "t-1").result().await,
        Err(Error::Terminated { .. })
    ));
    rt.shutdown().await;
}

#[tokio::test]
async fn an_audit_replay_of_a_history_recorded_before_the_patch_takes_the_old_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let records = {
        let rt = Runtime::builder()
            .workflow(loan_v1)
            .open_store(&path)
            .await
            .unwrap();
        rt.start(loan_v1, "before", 300).await.unwrap();
        rt.signal("before", "signed", &"di".to_owned())
            .await
            .unwrap();
        rt.handle(loan_v1, "before")
            .result()
            .await
            .unwrap()
            .unwrap();
        let records: Vec<_> = rt
            .history("before")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.record)
            .collect();
        rt.shutdown().await;
        records
    };
    let rt = Runtime::builder()
        .workflow(loan_v2)
        .open_store(&path)
        .await
        .unwrap();
    assert!(matches!(
        rt.replay(&records).await.unwrap(),
        ReplayVerdict::Matches(_)
    ));
    rt.shutdown().await;
}

/// Hands over to a new run forever, as fast as commits allow.
#[workflow]
async fn relay(ctx: Ctx, n: u64) -> Result<u64, WorkflowError> {
    ctx.continue_as_new(n + 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_racing_a_hand_over_terminates_the_current_run() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(relay)
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    // Each instance hands over every commit or so; `terminate` lands at a different point
    // of the hand-over each time, sometimes between its commit and the new run's driver.
    for i in 0..40u64 {
        let id = format!("relay-{i}");
        rt.start(relay, &id, 0).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_micros(100 + 37 * i)).await;
        rt.terminate(&id, "enough").await.unwrap();
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            rt.handle(relay, &id).result(),
        )
        .await
        .expect("the chain ends at once, with no run left without a driver");
        assert!(
            matches!(result, Err(Error::Terminated { .. })),
            "{id}: {result:?}"
        );
        let runs = rt.list(&cairn::ListFilter::default()).await.unwrap();
        let of_id: Vec<_> = runs.iter().filter(|r| r.id == id).collect();
        assert_eq!(
            of_id
                .iter()
                .filter(|r| r.status == Status::Terminated)
                .count(),
            1,
            "{id}: one terminated run"
        );
        assert!(
            of_id
                .iter()
                .all(|r| matches!(r.status, Status::Terminated | Status::ContinuedAsNew)),
            "{id}: every other run handed over"
        );
    }
    rt.shutdown().await;
}
