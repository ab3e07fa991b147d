//! A long-lived workflow restarts itself with fresh history and carried state: each run's
//! history stays short, the id keeps answering with the final result, signals sent around
//! the hand-over reach the next run, and the chain survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use cairn::{workflow, Ctx, ListFilter, Runtime, Status, WorkflowError};

/// Adds up readings, one run per reading, until the total reaches `limit`.
#[workflow]
async fn meter(ctx: Ctx, state: (u64, u64)) -> Result<u64, WorkflowError> {
    let (total, limit) = state;
    let reading: u64 = ctx.signal("reading").await?;
    let total = total + reading;
    if total < limit {
        return ctx.continue_as_new((total, limit)).await;
    }
    Ok(total)
}

async fn runs(rt: &Runtime) -> Vec<(Status, u64)> {
    rt.list(&ListFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.id == "m-1")
        .map(|i| (i.status, i.events))
        .collect()
}

#[tokio::test]
async fn each_run_starts_fresh_and_the_id_answers_with_the_final_result() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    {
        let rt = Runtime::builder()
            .workflow(meter)
            .open_store(&path)
            .await
            .unwrap();
        rt.start(meter, "m-1", (0, 100)).await.unwrap();
        // Sent back to back: some land while a run is handing over, and are carried.
        for reading in [10, 20, 30] {
            rt.signal("m-1", "reading", &reading).await.unwrap();
        }
        let mut spins = 0u32;
        while runs(&rt).await.len() < 4 {
            spins += 1;
            assert!(spins < 2_000_000, "the runs did not continue");
            tokio::task::yield_now().await;
        }
        rt.shutdown().await;
    }
    let rt = Runtime::builder()
        .workflow(meter)
        .open_store(&path)
        .await
        .unwrap();
    rt.signal("m-1", "reading", &50u64).await.unwrap();
    assert_eq!(
        rt.handle(meter, "m-1").result().await.unwrap().unwrap(),
        110
    );

    let all = runs(&rt).await;
    assert_eq!(all.len(), 4, "one run per reading: {all:?}");
    assert_eq!(
        all.iter()
            .filter(|(s, _)| *s == Status::ContinuedAsNew)
            .count(),
        3
    );
    assert_eq!(
        rt.status("m-1").await.unwrap().status,
        Status::Completed,
        "the id names the last run"
    );
    // A run holds its start, the signals it received or was handed, one delivery and its
    // end: bounded by the readings in flight, not by the readings so far.
    assert!(all.iter().all(|(_, events)| *events <= 6), "{all:?}");
    rt.shutdown().await;
}
