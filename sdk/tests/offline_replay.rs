//! Auditing without a host: a `Replayer` built from the registered workflow types replays
//! recorded histories with no engine behind it (no writer thread, no recovery, no write
//! lock), from a file opened read-only; a read-only open is refused, with a clear error,
//! while a host holds the file; and a code change that does not explain the record is
//! reported as a divergence naming the step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn::audit::{open_read_only, ReplayVerdict};
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Error, Runtime, WorkflowError};

#[activity]
async fn quote(_ctx: ActivityCtx, amount: u64) -> Result<u64, ActivityError> {
    Ok(amount * 2)
}

#[activity]
async fn book(_ctx: ActivityCtx, amount: u64) -> Result<String, ActivityError> {
    Ok(format!("booked {amount}"))
}

#[workflow(name = "trip")]
async fn trip_v1(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    let price = ctx.activity(quote, amount).await?;
    Ok(ctx.activity(book, price).await?)
}

/// The same type with its steps changed: it books before it quotes.
#[workflow(name = "trip")]
async fn trip_v2(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    let booked = ctx.activity(book, amount).await?;
    let _ = ctx.activity(quote, amount).await?;
    Ok(booked)
}

/// Waits for ever, so its history stays unfinished.
#[workflow]
async fn waits(ctx: Ctx) -> Result<(), WorkflowError> {
    ctx.sleep(Duration::from_secs(3600)).await?;
    Ok(())
}

async fn record(path: &std::path::Path) {
    let rt = Runtime::builder()
        .workflow(trip_v1)
        .workflow(waits)
        .open(path)
        .await
        .unwrap();
    for n in 0..3u64 {
        let handle = rt.start(trip_v1, &format!("trip-{n}"), n).await.unwrap();
        handle.result().await.unwrap().unwrap();
    }
    rt.start(waits, "waiting", ()).await.unwrap();
    let mut spins = 0u32;
    while rt.history("waiting").await.unwrap().len() < 2 {
        spins += 1;
        assert!(
            spins < 1_000_000,
            "the waiting instance never reached its timer"
        );
        tokio::task::yield_now().await;
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn a_replayer_replays_a_file_opened_read_only_without_a_host() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    record(&path).await;

    let replayer = Runtime::builder()
        .workflow(trip_v1)
        .workflow(waits)
        .replayer()
        .unwrap();
    let store = open_read_only(&path).unwrap();
    let verdicts = replayer.replay_journal(&store).await.unwrap();
    assert_eq!(verdicts.len(), 4);
    for verdict in &verdicts {
        match (&verdict.id[..], verdict.verdict.as_ref().unwrap()) {
            ("waiting", ReplayVerdict::Unfinished { next_step: 1 }) => {}
            (id, ReplayVerdict::Matches(_)) if id.starts_with("trip-") => {}
            (id, other) => panic!("{id}: {other:?}"),
        }
    }
    // Reading wrote nothing: a host opens the file afterwards and finds it as it was.
    drop(store);
    let rt = Runtime::builder()
        .workflow(trip_v1)
        .workflow(waits)
        .open(&path)
        .await
        .unwrap();
    assert_eq!(rt.list(&Default::default()).await.unwrap().len(), 4);
    rt.shutdown().await;
}

#[tokio::test]
async fn changed_code_is_reported_as_a_divergence_at_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    record(&path).await;

    let replayer = Runtime::builder()
        .workflow(trip_v2)
        .workflow(waits)
        .replayer()
        .unwrap();
    let store = open_read_only(&path).unwrap();
    for verdict in replayer.replay_journal(&store).await.unwrap() {
        if verdict.id == "waiting" {
            continue;
        }
        match verdict.verdict {
            Err(Error::NonDeterminism(diff)) => {
                assert_eq!(diff.step, 1);
                assert_eq!(diff.recorded.name, "quote");
                assert_eq!(diff.requested.name, "book");
            }
            other => panic!("{}: expected a divergence, got {other:?}", verdict.id),
        }
    }
}

#[tokio::test]
async fn a_read_only_open_is_refused_while_a_host_holds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = Runtime::builder()
        .workflow(trip_v1)
        .open(&path)
        .await
        .unwrap();
    let err = open_read_only(&path).unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0005", "{err}");
    assert!(
        err.to_string().contains("a host has it open"),
        "the message says why: {err}"
    );
    rt.shutdown().await;
    // Once the host is gone, the file opens read-only.
    open_read_only(&path).unwrap();
}

#[tokio::test]
async fn a_read_only_open_of_a_missing_file_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nothing-here.redb");
    let err = open_read_only(&path).unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0005", "{err}");
    assert!(!path.exists(), "no file was created");
}
