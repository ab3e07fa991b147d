//! Typed messages into a running workflow beyond plain signals: a signal sent under a
//! dedupe key is recorded once however often it is retried, an update is answered to
//! its caller once the answer is durable (once per update id, whoever still waits), and
//! a query reads the latest published value from the history without running the
//! workflow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::time::Duration;

use cairn::events::EventKind;
use cairn::{workflow, Ctx, Query, Rejected, Runtime, Signal, Update, WorkflowError};
use futures::future::Either;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Address {
    street: String,
    city: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Parcel {
    address: Address,
    changes: u32,
    status: String,
}

const CHANGE_ADDRESS: Update<Address, u32> = Update::new("change_address");
const SHIPPED: Signal<String> = Signal::new("shipped");
const PARCEL: Query<Parcel> = Query::new("parcel");
const PAYMENT: Signal<u64> = Signal::new("payment");
const FINISH: Signal<bool> = Signal::new("finish");

/// Takes address changes until the parcel ships, publishing the parcel after each.
#[workflow]
async fn delivery(ctx: Ctx, address: Address) -> Result<Parcel, WorkflowError> {
    let mut parcel = Parcel {
        address,
        changes: 0,
        status: "packing".into(),
    };
    ctx.publish(PARCEL, &parcel).await;
    loop {
        let change = Box::pin(ctx.update(CHANGE_ADDRESS));
        let shipped = Box::pin(ctx.receive(SHIPPED));
        match futures::future::select(change, shipped).await {
            Either::Left((request, _)) => {
                let request = request?;
                if request.input().city.is_empty() {
                    request.reject(&ctx, "a city is required").await;
                    continue;
                }
                parcel.address = request.input().clone();
                parcel.changes += 1;
                // Published before the answer: a caller that has the answer reads it.
                ctx.publish(PARCEL, &parcel).await;
                request.accept(&ctx, &parcel.changes).await;
            }
            Either::Right((carrier, _)) => {
                parcel.status = format!("shipped by {}", carrier?);
                ctx.publish(PARCEL, &parcel).await;
                return Ok(parcel);
            }
        }
    }
}

/// Sums two payments.
#[workflow]
async fn invoice(ctx: Ctx, _order: String) -> Result<u64, WorkflowError> {
    let first = ctx.receive(PAYMENT).await?;
    let second = ctx.receive(PAYMENT).await?;
    Ok(first + second)
}

/// Never takes an update: it waits for `finish` and ends.
#[workflow]
async fn deaf(ctx: Ctx, _x: u32) -> Result<bool, WorkflowError> {
    Ok(ctx.receive(FINISH).await?)
}

fn home() -> Address {
    Address {
        street: "1 Quay St".into(),
        city: "Leith".into(),
    }
}

fn office() -> Address {
    Address {
        street: "9 Dock Rd".into(),
        city: "Dundee".into(),
    }
}

async fn open(path: &std::path::Path) -> Runtime {
    Runtime::builder()
        .workflow(delivery)
        .workflow(invoice)
        .workflow(deaf)
        .open_store(path)
        .await
        .unwrap()
}

/// Waits (ten seconds at most) until instance `id` has recorded `what` under `key`,
/// with nobody asking again.
async fn until_keyed(rt: &Runtime, id: &str, what: &str, key: &str) {
    let found = |history: &[cairn::store::StoredEvent]| {
        history.iter().any(|e| match &e.record.kind {
            EventKind::KeyedSignalReceived { key: held, .. } => {
                what == "KeyedSignalReceived" && held == key
            }
            EventKind::UpdateAnswered { key: held, .. } => what == "UpdateAnswered" && held == key,
            _ => false,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while !found(&rt.history(id).await.unwrap()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id}: no {what} for {key} within 10 s"));
}

fn count(history: &[cairn::store::StoredEvent], what: &str) -> usize {
    history
        .iter()
        .filter(|e| e.record.kind.name() == what)
        .count()
}

#[tokio::test]
async fn a_signal_sent_again_with_its_key_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let handle = rt.start(invoice, "inv-1", "o-1".into()).await.unwrap();
    let first = rt.send_once("inv-1", PAYMENT, &40, "pay-1").await.unwrap();
    assert!(first.recorded);
    // A retry of the same payment (same key, same body) records nothing.
    let retry = rt.send_once("inv-1", PAYMENT, &40, "pay-1").await.unwrap();
    assert!(!retry.recorded);
    rt.send_once("inv-1", PAYMENT, &2, "pay-2").await.unwrap();
    assert_eq!(handle.result().await.unwrap().unwrap(), 42);
    let history = rt.history("inv-1").await.unwrap();
    assert_eq!(count(&history, "KeyedSignalReceived"), 2);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_key_sent_again_with_another_body_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    rt.start(invoice, "inv-2", "o-2".into()).await.unwrap();
    rt.send_once("inv-2", PAYMENT, &40, "pay-1").await.unwrap();
    let err = rt
        .send_once("inv-2", PAYMENT, &41, "pay-1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0026", "{err}");
    assert!(err.to_string().contains("pay-1"), "{err}");
    let err = rt.send_once("inv-2", PAYMENT, &1, "").await.unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0014", "{err}");
    // The run records its wait's delivery meanwhile; no second signal is recorded.
    let history = rt.history("inv-2").await.unwrap();
    assert_eq!(count(&history, "KeyedSignalReceived"), 1);
    rt.shutdown().await;
}

#[tokio::test]
async fn simultaneous_sends_of_one_key_record_one_signal() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let handle = rt.start(invoice, "inv-3", "o-3".into()).await.unwrap();
    let sends = (0..8).map(|_| rt.send_once("inv-3", PAYMENT, &40, "pay-1"));
    let sent = futures::future::join_all(sends).await;
    let recorded = sent.iter().filter(|s| s.as_ref().unwrap().recorded).count();
    assert_eq!(recorded, 1);
    let history = rt.history("inv-3").await.unwrap();
    assert_eq!(count(&history, "KeyedSignalReceived"), 1);
    rt.send_once("inv-3", PAYMENT, &2, "pay-2").await.unwrap();
    assert_eq!(handle.result().await.unwrap().unwrap(), 42);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_update_is_answered_once_its_answer_is_durable_and_a_query_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let handle = rt.start(delivery, "d-1", home()).await.unwrap();
    let changes = rt.update("d-1", CHANGE_ADDRESS, &office()).await.unwrap();
    assert_eq!(changes, Ok(1));
    // The answer is on disk when the caller has it.
    let history = rt.history("d-1").await.unwrap();
    assert_eq!(count(&history, "UpdateAnswered"), 1);
    let parcel = rt.query("d-1", PARCEL).await.unwrap().unwrap();
    assert_eq!((parcel.address, parcel.changes), (office(), 1));
    // A request the workflow refuses comes back as its rejection.
    let empty = Address {
        street: "nowhere".into(),
        city: String::new(),
    };
    let refused = rt.update("d-1", CHANGE_ADDRESS, &empty).await.unwrap();
    assert_eq!(refused, Err(Rejected("a city is required".into())));
    rt.send("d-1", SHIPPED, &"DHL".to_owned()).await.unwrap();
    let parcel = handle.result().await.unwrap().unwrap();
    assert_eq!(parcel.status, "shipped by DHL");
    assert_eq!(rt.query("d-1", PARCEL).await.unwrap().unwrap(), parcel);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_update_asked_again_with_its_key_gets_the_same_answer_and_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    rt.start(delivery, "d-2", home()).await.unwrap();
    let first = rt
        .update_with_key("d-2", CHANGE_ADDRESS, &office(), "u-1")
        .await
        .unwrap();
    let again = rt
        .update_with_key("d-2", CHANGE_ADDRESS, &office(), "u-1")
        .await
        .unwrap();
    assert_eq!((first, again), (Ok(1), Ok(1)));
    let history = rt.history("d-2").await.unwrap();
    assert_eq!(count(&history, "KeyedSignalReceived"), 1);
    assert_eq!(count(&history, "UpdateAnswered"), 1);
    assert_eq!(rt.query("d-2", PARCEL).await.unwrap().unwrap().changes, 1);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_update_whose_caller_went_away_is_still_answered() {
    let dir = tempfile::tempdir().unwrap();
    let rt = std::sync::Arc::new(open(&dir.path().join("db.redb")).await);
    rt.start(delivery, "d-3", home()).await.unwrap();
    // Polled once and dropped: whatever it committed still takes effect.
    {
        let to = office();
        let call = rt.update_with_key("d-3", CHANGE_ADDRESS, &to, "u-dropped");
        let mut call = Box::pin(call);
        let _ = futures::poll!(call.as_mut());
    }
    // Recorded and answered with nobody asking again.
    until_keyed(&rt, "d-3", "UpdateAnswered", "u-dropped").await;
    // Dropped while waiting for the answer, its request recorded.
    let caller = {
        let rt = rt.clone();
        tokio::spawn(async move {
            rt.update_with_key("d-3", CHANGE_ADDRESS, &office(), "u-waiting")
                .await
        })
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let history = rt.history("d-3").await.unwrap();
            let requested = history.iter().any(|e| {
                matches!(&e.record.kind, EventKind::KeyedSignalReceived { key, .. } if key == "u-waiting")
            });
            if requested {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    caller.abort();
    // Asking again with either key returns the one answer recorded for it.
    let waiting = rt
        .update_with_key("d-3", CHANGE_ADDRESS, &office(), "u-waiting")
        .await
        .unwrap()
        .unwrap();
    let dropped = rt
        .update_with_key("d-3", CHANGE_ADDRESS, &office(), "u-dropped")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(waiting, dropped);
    let history = rt.history("d-3").await.unwrap();
    assert_eq!(count(&history, "KeyedSignalReceived"), 2);
    assert_eq!(count(&history, "UpdateAnswered"), 2);
    assert_eq!(rt.query("d-3", PARCEL).await.unwrap().unwrap().changes, 2);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_update_dropped_after_its_first_poll_is_still_recorded_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    rt.start(delivery, "d-5", home()).await.unwrap();
    {
        let to = office();
        let call = rt.update("d-5", CHANGE_ADDRESS, &to);
        let mut call = Box::pin(call);
        let _ = futures::poll!(call.as_mut());
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while count(&rt.history("d-5").await.unwrap(), "UpdateAnswered") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the dropped update was never recorded and answered");
    let history = rt.history("d-5").await.unwrap();
    assert_eq!(count(&history, "KeyedSignalReceived"), 1);
    assert_eq!(rt.query("d-5", PARCEL).await.unwrap().unwrap().changes, 1);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_update_the_instance_never_answers_fails_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let rt = std::sync::Arc::new(open(&dir.path().join("db.redb")).await);
    let handle = rt.start(deaf, "deaf-1", 1).await.unwrap();
    let caller = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.update("deaf-1", CHANGE_ADDRESS, &office()).await })
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while count(&rt.history("deaf-1").await.unwrap(), "KeyedSignalReceived") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    rt.send("deaf-1", FINISH, &true).await.unwrap();
    assert!(handle.result().await.unwrap().unwrap());
    let err = caller.await.unwrap().unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0025", "{err}");
    assert!(err.to_string().contains("change_address"), "{err}");
    rt.shutdown().await;
}

#[tokio::test]
async fn updates_and_queries_reach_an_instance_across_a_restart_and_queries_never_run_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    {
        let rt = open(&path).await;
        rt.start(delivery, "d-4", home()).await.unwrap();
        assert_eq!(
            rt.update("d-4", CHANGE_ADDRESS, &office()).await.unwrap(),
            Ok(1)
        );
        rt.shutdown().await;
    }
    let rt = Runtime::builder()
        .workflow(delivery)
        .eviction_idle(Some(Duration::from_millis(20)))
        .open_store(&path)
        .await
        .unwrap();
    assert_eq!(
        rt.update("d-4", CHANGE_ADDRESS, &home()).await.unwrap(),
        Ok(2)
    );
    // Let the run be evicted, then query it: read from the log, nothing replayed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replays = rt.engine().replays();
    for _ in 0..5 {
        let parcel = rt.query("d-4", PARCEL).await.unwrap().unwrap();
        assert_eq!((parcel.address.clone(), parcel.changes), (home(), 2));
    }
    assert_eq!(rt.engine().replays(), replays);
    assert_eq!(
        rt.query("d-4", Query::<u32>::new("nothing")).await.unwrap(),
        None
    );
    let err = rt.query("nobody", PARCEL).await.unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0007", "{err}");
    rt.shutdown().await;
}

/// A host whose policy lets customers update and read deliveries.
async fn open_for_customers(path: &std::path::Path) -> Runtime {
    use cairn::policy::{Roles, Verb};
    let policy = Roles::new()
        .allow(Verb::Update, "delivery", ["customer"])
        .allow(Verb::Read, "delivery", ["customer"])
        .admin("admin");
    Runtime::builder()
        .workflow(delivery)
        .policy(std::sync::Arc::new(policy))
        .open_store(path)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_update_from_an_actor_without_the_role_is_refused_and_the_request_names_its_sender() {
    use cairn::Actor;
    let dir = tempfile::tempdir().unwrap();
    let rt = open_for_customers(&dir.path().join("db.redb")).await;
    rt.start(delivery, "d-5", home()).await.unwrap();
    // The run publishes first and then only waits: the history stands still.
    while rt.query("d-5", PARCEL).await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = rt.history("d-5").await.unwrap().len();
    let mallory = Actor::new("mallory", ["courier"]);
    let err = rt
        .acting_as(&mallory)
        .update_with_key("d-5", CHANGE_ADDRESS, &office(), "u-1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0023", "{err}");
    let err = rt
        .acting_as(&mallory)
        .query("d-5", PARCEL)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0023", "{err}");
    assert_eq!(rt.history("d-5").await.unwrap().len(), before);
    let carol = Actor::new("carol", ["customer"]);
    let desk = rt.acting_as(&carol);
    assert_eq!(
        desk.update_with_key("d-5", CHANGE_ADDRESS, &office(), "u-1")
            .await
            .unwrap(),
        Ok(1)
    );
    assert_eq!(desk.query("d-5", PARCEL).await.unwrap().unwrap().changes, 1);
    let history = rt.history("d-5").await.unwrap();
    let request = history
        .iter()
        .find(|e| e.record.kind.name() == "KeyedSignalReceived")
        .unwrap();
    assert_eq!(request.record.actor.as_ref().unwrap().id, "carol");
    rt.shutdown().await;
}

#[tokio::test]
async fn an_actors_update_dropped_after_its_first_poll_is_still_recorded_once_and_answered() {
    use cairn::Actor;
    let dir = tempfile::tempdir().unwrap();
    let rt = open_for_customers(&dir.path().join("db.redb")).await;
    rt.start(delivery, "d-6", home()).await.unwrap();
    let carol = Actor::new("carol", ["customer"]);
    // The policy's check reads the instance first; the caller goes away meanwhile.
    {
        let desk = rt.acting_as(&carol);
        let to = office();
        let call = desk.update_with_key("d-6", CHANGE_ADDRESS, &to, "u-gone");
        let mut call = Box::pin(call);
        let _ = futures::poll!(call.as_mut());
    }
    until_keyed(&rt, "d-6", "UpdateAnswered", "u-gone").await;
    // Asking again with the key returns the one answer recorded, and records nothing.
    let again = rt
        .acting_as(&carol)
        .update_with_key("d-6", CHANGE_ADDRESS, &office(), "u-gone")
        .await
        .unwrap();
    assert_eq!(again, Ok(1));
    let history = rt.history("d-6").await.unwrap();
    assert_eq!(count(&history, "KeyedSignalReceived"), 1);
    assert_eq!(count(&history, "UpdateAnswered"), 1);
    let request = history
        .iter()
        .find(|e| e.record.kind.name() == "KeyedSignalReceived")
        .unwrap();
    assert_eq!(request.record.actor.as_ref().unwrap().id, "carol");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_keyed_send_dropped_after_its_first_poll_is_still_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let handle = rt.start(invoice, "inv-4", "o-4".into()).await.unwrap();
    {
        let call = rt.send_once("inv-4", PAYMENT, &40, "pay-1");
        let mut call = Box::pin(call);
        let _ = futures::poll!(call.as_mut());
    }
    // Recorded with nobody sending it again; a retry then records nothing more.
    until_keyed(&rt, "inv-4", "KeyedSignalReceived", "pay-1").await;
    let again = rt.send_once("inv-4", PAYMENT, &40, "pay-1").await.unwrap();
    assert!(
        !again.recorded,
        "the dropped send was recorded, not the retry"
    );
    rt.send_once("inv-4", PAYMENT, &2, "pay-2").await.unwrap();
    assert_eq!(handle.result().await.unwrap().unwrap(), 42);
    let history = rt.history("inv-4").await.unwrap();
    assert_eq!(count(&history, "KeyedSignalReceived"), 2);
    rt.shutdown().await;
}
