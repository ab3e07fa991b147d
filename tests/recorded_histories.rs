//! Recorded histories keep replaying: every file in `tests/histories/` is a history
//! written by an earlier build, replayed here against today's code without running any
//! activity. A change to a workflow, the event format or the codec that breaks an old
//! history fails this test.
//!
//! File format: for each event, its envelope length as a little-endian `u32`, then the
//! envelope (docs/EVENT_FORMAT.md). Record a new fixture with
//! `CAIRN_RECORD_HISTORIES=1 cargo test --test recorded_histories`.

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

use cairn::engine::event::{hash_envelope, EventRecord, GENESIS_HASH};
use cairn::engine::{Outcome, ReplayVerdict};
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
    let mut out = Vec::new();
    for event in rt.history("order-7").unwrap() {
        let envelope = event.record.encode().unwrap();
        out.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
        out.extend_from_slice(&envelope);
    }
    std::fs::write(path, out).unwrap();
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
            &record.encode().unwrap(),
            envelope,
            "re-encoding is byte-identical"
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
