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

/// Takes at most one "cmd" per run, racing it against a short timer whose branch hands
/// over itself: while that branch stops the run, the signal's branch is still polled in
/// the same `select!`. Commands only all arrive if none is lost at a hand-over.
#[workflow]
async fn commands(ctx: Ctx, state: (u32, u32)) -> Result<u32, WorkflowError> {
    let (counted, wanted) = state;
    if counted >= wanted {
        return Ok(counted);
    }
    tokio::select! {
        cmd = ctx.signal::<u32>("cmd") => {
            cmd?;
            ctx.continue_as_new((counted + 1, wanted)).await
        }
        handed = async {
            ctx.sleep(std::time::Duration::from_millis(1)).await?;
            ctx.continue_as_new((counted, wanted)).await
        } => handed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_that_meets_a_hand_over_from_a_sibling_branch_is_never_lost() {
    // A wait could take a signal in the poll where its sibling branch continued as new
    // (or have its delivery in flight then): the run ended, the signal was marked taken
    // in memory, and the hand-over did not carry it. The chain then never counted it.
    const COMMANDS: u32 = 60;
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(commands)
        .open_store(&dir.path().join("db.redb"))
        .await
        .unwrap();
    let handle = rt.start(commands, "c-1", (0, COMMANDS)).await.unwrap();
    for n in 0..COMMANDS {
        rt.signal("c-1", "cmd", &n).await.unwrap();
        if n % 3 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    let counted = tokio::time::timeout(std::time::Duration::from_secs(30), handle.result())
        .await
        .expect("every command was counted (a lost one leaves the chain waiting)");
    assert_eq!(counted.unwrap().unwrap(), COMMANDS);
    rt.shutdown().await;
}
