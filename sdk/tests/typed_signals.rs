//! Signals declared once with a name and a type: sender and workflow share the
//! declaration, and a JSON body that does not decode as the declared type is refused
//! before anything is recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use cairn::events::EventKind;
use cairn::{workflow, Ctx, Received, Runtime, Signal, WorkflowError};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Address {
    street: String,
    city: String,
}

const NEW_ADDRESS: Signal<Address> = Signal::new("new_address");
const APPROVED: Signal<bool> = Signal::new("approved");

#[workflow]
async fn deliver(ctx: Ctx, order: String) -> Result<String, WorkflowError> {
    let address = ctx.receive(NEW_ADDRESS).await?;
    let approved = ctx
        .receive_or_timeout(APPROVED, std::time::Duration::from_secs(3600))
        .await?;
    Ok(format!(
        "{order} to {}, {} ({approved:?})",
        address.street, address.city
    ))
}

async fn open(path: &std::path::Path) -> Runtime {
    Runtime::builder()
        .workflow(deliver)
        .signal(NEW_ADDRESS)
        .signal(APPROVED)
        .open_store(path)
        .await
        .unwrap()
}

fn signals(history: &[cairn::store::StoredEvent]) -> usize {
    history
        .iter()
        .filter(|e| matches!(e.record.kind, EventKind::SignalReceived { .. }))
        .count()
}

#[tokio::test]
async fn typed_and_json_sends_reach_the_typed_wait() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let handle = rt.start(deliver, "o-1", "o-1".to_owned()).await.unwrap();
    rt.send_json(
        "o-1",
        "new_address",
        serde_json::json!({ "street": "1 Quay St", "city": "Leith" }),
    )
    .await
    .unwrap();
    rt.send("o-1", APPROVED, &true).await.unwrap();
    assert_eq!(
        handle.result().await.unwrap().unwrap(),
        "o-1 to 1 Quay St, Leith (Some(true))"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_body_that_does_not_decode_is_refused_and_nothing_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    rt.start(deliver, "o-2", "o-2".to_owned()).await.unwrap();
    let before = rt.history("o-2").await.unwrap().len();
    let err = rt
        .send_json("o-2", "new_address", serde_json::json!({ "street": 12 }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0014", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("new_address") && text.contains("Address"),
        "{text}"
    );
    assert!(text.contains("nothing was recorded"), "{text}");
    let err = rt
        .send_json("o-2", "cancel_order", serde_json::json!(true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0014");
    assert!(
        err.to_string()
            .contains("no signal `cancel_order` is declared"),
        "{err}"
    );
    let history = rt.history("o-2").await.unwrap();
    assert_eq!(history.len(), before, "nothing was written");
    assert_eq!(signals(&history), 0);
    rt.shutdown().await;
}

#[tokio::test]
async fn one_name_declared_with_two_types_is_refused_at_build() {
    const APPROVED_TEXT: Signal<String> = Signal::new("approved");
    let dir = tempfile::tempdir().unwrap();
    let err = Runtime::builder()
        .workflow(deliver)
        .signal(APPROVED)
        .signal(APPROVED_TEXT)
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0014");
    assert!(err.to_string().contains("declared twice"), "{err}");
}

const REJECTED: Signal<String> = Signal::new("rejected");

#[workflow]
async fn review(ctx: Ctx, claim: String) -> Result<Vec<String>, WorkflowError> {
    let mut seen = Vec::new();
    match ctx.receive_either(APPROVED, REJECTED).await? {
        Received::First(approved) => seen.push(format!("approved {approved}")),
        Received::Second(why) => seen.push(format!("rejected: {why}")),
    }
    // The signal that lost the race is not consumed: a later wait receives it.
    let approved = ctx.receive(APPROVED).await?;
    seen.push(format!("later approved {approved} for {claim}"));
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_on_either_signal_takes_the_first_and_leaves_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = Runtime::builder()
        .workflow(review)
        .open_store(&path)
        .await
        .unwrap();
    rt.start(review, "c-1", "c-1".to_owned()).await.unwrap();
    rt.send("c-1", REJECTED, &"missing receipt".to_owned())
        .await
        .unwrap();
    // Wait until the rejection is taken, then restart: the replay takes it again.
    let mut spins = 0;
    while !rt
        .history("c-1")
        .await
        .unwrap()
        .iter()
        .any(|e| matches!(e.record.kind, EventKind::SignalDelivered { .. }))
    {
        spins += 1;
        assert!(spins < 100_000, "the rejection was not delivered");
        tokio::task::yield_now().await;
    }
    rt.shutdown().await;
    let rt = Runtime::builder()
        .workflow(review)
        .open_store(&path)
        .await
        .unwrap();
    rt.send("c-1", APPROVED, &true).await.unwrap();
    let seen = rt.handle(review, "c-1").result().await.unwrap().unwrap();
    assert_eq!(
        seen,
        ["rejected: missing receipt", "later approved true for c-1"]
    );
    rt.shutdown().await;
}

/// Polls `future` once and drops it, as an HTTP handler whose client hung up does.
async fn poll_once_and_drop<F: std::future::Future>(future: F) {
    let mut future = std::pin::pin!(future);
    let _ = futures::poll!(future.as_mut());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_and_json_sends_dropped_after_their_first_poll_are_still_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let handle = rt.start(deliver, "o-3", "o-3".to_owned()).await.unwrap();
    poll_once_and_drop(rt.send_json(
        "o-3",
        "new_address",
        serde_json::json!({ "street": "2 Dock Rd", "city": "Hull" }),
    ))
    .await;
    poll_once_and_drop(rt.send("o-3", APPROVED, &false)).await;
    let result = tokio::time::timeout(std::time::Duration::from_secs(20), handle.result())
        .await
        .expect("both committed signals reach the workflow")
        .unwrap()
        .unwrap();
    assert_eq!(result, "o-3 to 2 Dock Rd, Hull (Some(false))");
    rt.shutdown().await;
}
