//! Recorded histories keep replaying: every file in `tests/histories/` is a history
//! written by an earlier build, replayed here against today's code without running any
//! activity. A change to a workflow, the event format or the codec that breaks an old
//! history fails this test.
//!
//! File format: for each event, its envelope length as a little-endian `u32`, then the
//! envelope (docs/EVENT_FORMAT.md). `CAIRN_RECORD_HISTORIES=1 cargo test --test
//! recorded_histories` rewrites the fixtures: only do that for a new fixture file (and
//! restore the others), since a fixture's value is that an older build wrote it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    unreachable_pub,
    missing_docs
)]

#[path = "../examples/order_fulfillment.rs"]
mod order_fulfillment;

use std::path::Path;

use cairn::audit::{Outcome, ReplayVerdict};
use cairn::events::{hash_envelope, EventRecord, GENESIS_HASH};
use cairn::Runtime;

const FIXTURE: &str = "tests/histories/order_fulfillment_v1.events";

fn read_fixture(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut envelopes = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        let (envelope, tail) = tail.split_at(len);
        envelopes.push(envelope.to_vec());
        rest = tail;
    }
    envelopes
}

/// Writes instance `id`'s history in the fixture format (see the module doc).
async fn write_fixture(path: &Path, rt: &Runtime, id: &str) {
    let mut out = Vec::new();
    for event in rt.history(id).await.unwrap() {
        let envelope = event.record.encode().unwrap();
        out.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
        out.extend_from_slice(&envelope);
    }
    std::fs::write(path, out).unwrap();
}

async fn record_fixture(path: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(order_fulfillment::fulfil_order)
        .open(dir.path().join("db.redb"))
        .await
        .unwrap();
    order_fulfillment::init_settings(std::time::Duration::ZERO, None, true);
    let order = order_fulfillment::sample_order(7);
    rt.start(order_fulfillment::fulfil_order, "order-7", order)
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    write_fixture(path, &rt, "order-7").await;
    rt.shutdown().await;
}

#[tokio::test]
async fn recorded_order_fulfillment_history_replays_to_its_recorded_result() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    if std::env::var_os("CAIRN_RECORD_HISTORIES").is_some() {
        record_fixture(&path).await;
    }
    let envelopes = read_fixture(&path);
    assert_eq!(envelopes.len(), 6, "started, four steps, completed");

    // The chain still verifies with today's hashing, and today's decoder reads every
    // envelope back to the same bytes.
    let mut prev = GENESIS_HASH;
    let mut records = Vec::new();
    for envelope in &envelopes {
        let record = EventRecord::decode(envelope).unwrap();
        assert_eq!(record.prev_hash, prev);
        assert_eq!(
            &record.encode_as(envelope[0]).unwrap(),
            envelope,
            "re-encoding in the envelope's own version is byte-identical"
        );
        prev = hash_envelope(envelope);
        records.push(record);
    }

    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(order_fulfillment::fulfil_order)
        .open(dir.path().join("replay.redb"))
        .await
        .unwrap();
    // Replay runs nothing live: an activity the history lacks would end the replay
    // (Unfinished or a divergence), never execute.
    let verdict = rt.replay(&records).await.unwrap();
    let ReplayVerdict::Matches(Outcome::Completed(payload)) = verdict else {
        panic!("{verdict:?}")
    };
    let receipt: serde_json::Value = serde_json::from_slice(&payload.data).unwrap();
    assert_eq!(receipt["order"], "order-7");
    assert_eq!(receipt["tracking"], "TRK-north-order-7");

    // The same history cut after step 2 replays as unfinished, ready to run step 3.
    let cut = &records[..3];
    assert_eq!(
        rt.replay(cut).await.unwrap(),
        ReplayVerdict::Unfinished { next_step: 3 }
    );
    rt.shutdown().await;
}

mod kitchen_sink {
    //! A workflow that records almost every kind of event, so the committed history
    //! guards the encoding of all of them.
    use std::time::Duration;

    use cairn::{
        activity, workflow, ActivityCtx, ActivityError, AttrValue, Ctx, RetryPolicy, WorkflowError,
    };

    #[activity]
    pub async fn flaky_once(ctx: ActivityCtx, n: u64) -> Result<u64, ActivityError> {
        if ctx.attempt == 1 {
            return Err(ActivityError::retryable("first attempt fails").with_kind("unavailable"));
        }
        Ok(n + 1)
    }

    #[workflow]
    pub async fn reviewer(_ctx: Ctx, topic: String) -> Result<String, WorkflowError> {
        Ok(format!("reviewed {topic}"))
    }

    #[workflow]
    pub async fn sink(ctx: Ctx, n: u64) -> Result<String, WorkflowError> {
        let retry = RetryPolicy::default().initial_backoff(Duration::ZERO);
        let a = ctx.activity(flaky_once, n).retry(retry).await?;
        let _now = ctx.now().await;
        ctx.sleep(Duration::from_secs(3600)).await?;
        let approved: Option<bool> = ctx
            .signal_or_timeout("approve", Duration::from_secs(7200))
            .await?;
        ctx.set_attributes([("amount", AttrValue::Int(a as i64))])
            .await;
        let checked = ctx.patched("extra-review").await;
        let review = ctx
            .child(
                reviewer,
                &format!("{}/review", ctx.instance_id()),
                "loan".to_owned(),
            )
            .await?;
        let tag = ctx.side_effect("tag", || "t".to_owned()).await;
        let cancelled = ctx.signal::<String>("never").await.is_err();
        Ok(format!(
            "{a} {approved:?} {checked} {review} {tag} cancelled={cancelled}"
        ))
    }
}

const SINK_FIXTURE: &str = "tests/histories/kitchen_sink_v1.events";

async fn until_events(rt: &Runtime, id: &str, n: usize) {
    let mut spins = 0u32;
    while rt.history(id).await.unwrap().len() < n {
        spins += 1;
        assert!(spins < 200_000, "{id} never reached {n} events");
        tokio::task::yield_now().await;
    }
}

async fn record_sink(path: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let clock = cairn::testing::VirtualClock::new(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000),
    );
    let rt = Runtime::builder()
        .workflow(kitchen_sink::sink)
        .workflow(kitchen_sink::reviewer)
        .clock(std::sync::Arc::new(clock.clone()))
        .open(dir.path().join("db.redb"))
        .await
        .unwrap();
    rt.start(kitchen_sink::sink, "k-1", 5).await.unwrap();
    clock.skip_to_next_timer().await; // the one-hour sleep
    until_events(&rt, "k-1", 7).await; // ... up to SignalWaitStarted
    rt.signal("k-1", "approve", &true).await.unwrap();
    until_events(&rt, "k-1", 14).await; // ... up to the wait for "never"
    rt.cancel("k-1", "stop waiting").await.unwrap();
    rt.handle(kitchen_sink::sink, "k-1")
        .result()
        .await
        .unwrap()
        .unwrap();
    write_fixture(path, &rt, "k-1").await;
    rt.shutdown().await;
}

#[tokio::test]
async fn recorded_history_with_timers_signals_children_and_cancellation_replays() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SINK_FIXTURE);
    if std::env::var_os("CAIRN_RECORD_HISTORIES").is_some() {
        record_sink(&path).await;
    }
    let records: Vec<EventRecord> = read_fixture(&path)
        .iter()
        .map(|e| EventRecord::decode(e).unwrap())
        .collect();
    let kinds: std::collections::BTreeSet<&str> = records.iter().map(|r| r.kind.name()).collect();
    for kind in [
        "ActivityAttemptFailed",
        "ActivityCompleted",
        "SideEffect",
        "TimerStarted",
        "TimerFired",
        "SignalReceived",
        "SignalWaitStarted",
        "SignalDelivered",
        "AttributesSet",
        "PatchMarker",
        "ChildStarted",
        "ChildCompleted",
        "CancelRequested",
        "StepCancelled",
        "WorkflowCompleted",
    ] {
        assert!(kinds.contains(kind), "the fixture lacks {kind}: {kinds:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(kitchen_sink::sink)
        .workflow(kitchen_sink::reviewer)
        .open(dir.path().join("replay.redb"))
        .await
        .unwrap();
    let verdict = rt.replay(&records).await.unwrap();
    let ReplayVerdict::Matches(Outcome::Completed(payload)) = verdict else {
        panic!("{verdict:?}")
    };
    let text: String = serde_json::from_slice(&payload.data).unwrap();
    assert_eq!(text, "6 Some(true) true reviewed loan t cancelled=true");
    rt.shutdown().await;
}
