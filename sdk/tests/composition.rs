//! Workflows compose: child workflows with typed failures and cancellation passed down,
//! fan-out over activities and children with a concurrency limit, all deterministic
//! under replay and resumed after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::atomic::{AtomicU32, Ordering};

use cairn::audit::ReplayVerdict;
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, ChildFailure, Ctx, Runtime, WorkflowError,
};
use futures::StreamExt;

#[workflow]
async fn review(ctx: Ctx, department: String) -> Result<String, WorkflowError> {
    if department == "fire" {
        return Err(WorkflowError::business("rejected", "no emergency exit"));
    }
    if department == "archive" {
        // Waits until told; a cancellation of the parent reaches it here.
        let note: String = ctx.signal("filed").await?;
        return Ok(note);
    }
    Ok(format!("{department}: approved"))
}

#[workflow]
async fn permit(ctx: Ctx, departments: Vec<String>) -> Result<Vec<String>, WorkflowError> {
    let mut verdicts = Vec::new();
    for department in departments {
        let id = format!("{}/{department}", ctx.instance_id());
        match ctx.child(review, &id, department.clone()).await {
            Ok(verdict) => verdicts.push(verdict),
            Err(ChildFailure::Failed(WorkflowError::Business { kind, message })) => {
                verdicts.push(format!("{department}: {kind} ({message})"));
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok(verdicts)
}

static IN_FLIGHT: AtomicU32 = AtomicU32::new(0);
static MAX_IN_FLIGHT: AtomicU32 = AtomicU32::new(0);

#[activity]
async fn score(_ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
    for _ in 0..(20 - n % 7) {
        tokio::task::yield_now().await;
    }
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    Ok(n * n)
}

#[workflow]
async fn fan_out(ctx: Ctx, count: u32) -> Result<Vec<u32>, WorkflowError> {
    // Step numbers are taken when the calls are made, all up front, in order; the
    // stream then runs at most 3 at a time and yields results in call order.
    let calls: Vec<_> = (0..count).map(|n| ctx.activity(score, n)).collect();
    let results: Vec<_> = futures::stream::iter(calls).buffered(3).collect().await;
    results
        .into_iter()
        .map(|r| r.map_err(WorkflowError::from))
        .collect()
}

async fn records(rt: &Runtime, id: &str) -> Vec<cairn::events::EventRecord> {
    rt.history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect()
}

#[tokio::test]
async fn children_run_as_instances_and_their_typed_failures_reach_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(permit)
        .workflow(review)
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let departments = vec!["zoning".to_owned(), "fire".to_owned()];
    let verdicts = rt
        .start(permit, "p-1", departments)
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        verdicts,
        ["zoning: approved", "fire: rejected (no emergency exit)"]
    );
    // Each child is an instance of its own, with its own history.
    assert_eq!(
        rt.status("p-1/zoning").await.unwrap().status,
        cairn::Status::Completed
    );
    assert_eq!(
        rt.status("p-1/fire").await.unwrap().status,
        cairn::Status::Failed
    );
    let kinds: Vec<_> = records(&rt, "p-1")
        .await
        .iter()
        .map(|r| r.kind.name())
        .collect();
    assert_eq!(
        kinds,
        [
            "WorkflowStarted",
            "ChildStarted",
            "ChildCompleted",
            "ChildStarted",
            "ChildCompleted",
            "WorkflowCompleted"
        ]
    );
    assert!(matches!(
        rt.replay(&records(&rt, "p-1").await).await.unwrap(),
        ReplayVerdict::Matches(_)
    ));
    rt.shutdown().await;
}

#[tokio::test]
async fn a_parent_waiting_on_a_child_resumes_after_restart_and_cancellation_reaches_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    {
        let rt = Runtime::builder()
            .workflow(permit)
            .workflow(review)
            .open_store(&path)
            .await
            .unwrap();
        rt.start(permit, "p-2", vec!["archive".to_owned()])
            .await
            .unwrap();
        let mut spins = 0u32;
        while rt.status("p-2/archive").await.is_err() || rt.history("p-2").await.unwrap().len() < 2
        {
            spins += 1;
            assert!(spins < 1_000_000, "child never started");
            tokio::task::yield_now().await;
        }
        rt.shutdown().await;
    }
    let rt = Runtime::builder()
        .workflow(permit)
        .workflow(review)
        .open_store(&path)
        .await
        .unwrap();
    rt.signal("p-2/archive", "filed", &"archived in box 7".to_owned())
        .await
        .unwrap();
    assert_eq!(
        rt.handle(permit, "p-2").result().await.unwrap().unwrap(),
        ["archived in box 7"]
    );

    rt.start(permit, "p-3", vec!["archive".to_owned()])
        .await
        .unwrap();
    let mut spins = 0u32;
    while rt.history("p-3").await.unwrap().len() < 2 {
        spins += 1;
        assert!(spins < 1_000_000, "child never started");
        tokio::task::yield_now().await;
    }
    rt.cancel("p-3", "applicant withdrew").await.unwrap();
    let Err(WorkflowError::Cancelled(cancelled)) = rt.handle(permit, "p-3").result().await.unwrap()
    else {
        panic!("parent should end cancelled")
    };
    assert_eq!(cancelled.reason, "applicant withdrew");
    let Err(WorkflowError::Cancelled(child)) =
        rt.handle(review, "p-3/archive").result().await.unwrap()
    else {
        panic!("child should end cancelled")
    };
    assert_eq!(child.reason, "applicant withdrew");
    rt.shutdown().await;
}

#[tokio::test]
async fn fan_out_respects_its_limit_and_replays_in_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(fan_out)
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let results = rt
        .start(fan_out, "f-1", 12)
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(results, (0..12).map(|n| n * n).collect::<Vec<_>>());
    assert!(
        MAX_IN_FLIGHT.load(Ordering::SeqCst) <= 3,
        "at most 3 at once"
    );
    assert!(matches!(
        rt.replay(&records(&rt, "f-1").await).await.unwrap(),
        ReplayVerdict::Matches(_)
    ));
    rt.shutdown().await;
}
