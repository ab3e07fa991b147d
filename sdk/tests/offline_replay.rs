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

/// A signal or an hour, then (for an unfinished run) one more signal.
#[workflow]
async fn ok_or_hour(ctx: Ctx, more: bool) -> Result<String, WorkflowError> {
    let won = tokio::select! {
        ok = ctx.signal::<()>("ok") => ok.map(|()| "ok"),
        slept = ctx.sleep(Duration::from_secs(3600)) => slept.map(|()| "hour"),
    }?;
    if more {
        let _: () = ctx.signal("more").await?;
    }
    Ok(won.to_owned())
}

fn recorded(seq: u64, kind: cairn::events::EventKind) -> cairn::events::EventRecord {
    cairn::events::EventRecord {
        instance: 7,
        seq,
        prev_lsn: None,
        prev_hash: cairn::events::GENESIS_HASH,
        recorded_at_ms: 0,
        kind,
        actor: None,
    }
}

fn json(text: &str) -> cairn::events::Payload {
    cairn::events::Payload::new(0, text.as_bytes().to_vec())
}

#[tokio::test]
async fn a_select_whose_loser_was_never_polled_replays_to_its_recorded_end() {
    // A run rebuilt from its log (after a crash, an eviction, or in always-replay mode)
    // can resolve a `select!` on its first poll with the recorded winner and never poll
    // the other branch: the loser has no record at all. An audit replay that polled the
    // loser first called that the end of the history, at random.
    use cairn::events::EventKind;
    let replayer = Runtime::builder().workflow(ok_or_hour).replayer().unwrap();
    let history = |more: bool| {
        let mut records = vec![
            recorded(
                0,
                EventKind::WorkflowStarted {
                    workflow_type: "ok_or_hour".into(),
                    id: "race-1".into(),
                    input: json(if more { "true" } else { "false" }),
                },
            ),
            recorded(
                1,
                EventKind::SignalReceived {
                    name: "ok".into(),
                    payload: json("null"),
                },
            ),
            recorded(
                2,
                EventKind::SignalDelivered {
                    step: 1,
                    name: "ok".into(),
                    signal_seq: 1,
                },
            ),
        ];
        if !more {
            records.push(recorded(
                3,
                EventKind::WorkflowCompleted {
                    output: json("\"ok\""),
                },
            ));
        }
        records
    };
    let finished = history(false);
    let unfinished = history(true);
    for _ in 0..32 {
        match replayer.replay(&finished).await {
            Ok(ReplayVerdict::Matches(_)) => {}
            other => panic!("the finished run: {other:?}"),
        }
        // The run went on at step 3 (the "more" wait), not at the loser's step 2.
        match replayer.replay(&unfinished).await {
            Ok(ReplayVerdict::Unfinished { next_step: 3 }) => {}
            other => panic!("the unfinished run: {other:?}"),
        }
    }
    // A finished run the code cannot reach the end of is still a divergence: here the
    // code waits for "more", which the record never gave.
    let mut reached = finished.clone();
    reached[0] = recorded(
        0,
        EventKind::WorkflowStarted {
            workflow_type: "ok_or_hour".into(),
            id: "race-1".into(),
            input: json("true"),
        },
    );
    match replayer.replay(&reached).await {
        Err(Error::NonDeterminism(divergence)) => {
            assert_eq!(divergence.step, 3, "{divergence}");
            assert_eq!(divergence.recorded.kind, "end of history", "{divergence}");
        }
        other => panic!("{other:?}"),
    }
}
