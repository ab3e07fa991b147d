//! Signals declared once with a name and a type: sender and workflow share the
//! declaration, and a JSON body that does not decode as the declared type is refused
//! before anything is recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn::events::EventKind;
use cairn::{workflow, Ctx, Runtime, Signal, WorkflowError};
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
        .open(path)
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
        .open(dir.path().join("db.redb"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0014");
    assert!(err.to_string().contains("declared twice"), "{err}");
}
