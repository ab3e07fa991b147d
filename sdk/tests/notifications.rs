//! Notifications go through a durable outbox: derived from the events that call for
//! them in the same commit, delivered at least once with retries and backoff, every
//! attempt visible, surviving a restart; and a webhook that signs what it posts, tested
//! against a real HTTP server on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use cairn::notify::{
    verify, Delivery, Notification, Notifier, Topic, Webhook, ID_HEADER, SIGNATURE_HEADER,
    SIGNATURE_TOLERANCE,
};
use cairn::testing::VirtualClock;
use cairn::{workflow, Ctx, Runtime, TaskKind, WorkflowError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
struct Ok_ {
    ok: bool,
}

const CHECK: TaskKind<String, Ok_> = TaskKind::new("check");

/// Announces itself, opens a task, and fails when the task says no.
#[workflow]
async fn claim(ctx: Ctx, who: String) -> Result<String, WorkflowError> {
    ctx.notify("claim.received", &serde_json::json!({ "who": who }))
        .await;
    let decided = ctx
        .human_task(CHECK.task(who.clone()).roles(["clerk"]))
        .await?;
    if decided.decision.ok {
        Ok(who)
    } else {
        Err(WorkflowError::business("declined", "the clerk said no"))
    }
}

/// Refuses the first `failures` attempts of every notification, then accepts; counts
/// what it accepted by notification id.
#[derive(Default)]
struct Flaky {
    failures: usize,
    attempts: Mutex<HashMap<u64, usize>>,
    accepted: Mutex<Vec<Notification>>,
}

#[async_trait::async_trait]
impl Notifier for Flaky {
    async fn notify(&self, notification: &Notification) -> Result<(), String> {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry(notification.id).or_default();
            *n += 1;
            *n
        };
        if attempt <= self.failures {
            return Err(format!("receiver down (attempt {attempt})"));
        }
        self.accepted.lock().unwrap().push(notification.clone());
        Ok(())
    }
}

async fn open(
    path: &std::path::Path,
    clock: &VirtualClock,
    notifier: Arc<dyn Notifier>,
) -> Runtime {
    Runtime::builder()
        .workflow(claim)
        .clock(Arc::new(clock.clone()))
        .notifier(notifier)
        .open_store(path)
        .await
        .unwrap()
}

fn clock() -> VirtualClock {
    VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_795_788_000))
}

/// Skips time to each retry until `done` holds.
async fn until<F, Fut>(clock: &VirtualClock, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        if clock.next_timer_ms().is_some() {
            clock.skip_to_next_timer().await;
        }
    }
    panic!("never done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_notification_is_accepted_once_after_two_refusals_and_every_attempt_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let flaky = Arc::new(Flaky {
        failures: 2,
        ..Flaky::default()
    });
    let rt = open(&dir.path().join("db.redb"), &clock, flaky.clone()).await;
    let handle = rt.start(claim, "c-1", "ann".to_owned()).await.unwrap();
    let clerk = cairn::Actor::new("cleo", ["clerk"]);
    let query = cairn::TaskQuery::for_actor(&clerk);
    until(&clock, || async {
        !rt.tasks(&query).await.unwrap().rows.is_empty()
    })
    .await;
    let task = rt.tasks(&query).await.unwrap().rows[0].id();
    rt.complete(&clerk, &task, &Ok_ { ok: false })
        .await
        .unwrap();
    assert!(handle.result().await.unwrap().is_err());
    until(&clock, || async {
        flaky.accepted.lock().unwrap().len() == 3
    })
    .await;
    // Nothing more comes: each was accepted once.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if clock.next_timer_ms().is_some() {
            clock.skip_to_next_timer().await;
        }
    }
    let accepted = flaky.accepted.lock().unwrap().clone();
    let topics: Vec<&str> = accepted.iter().map(|n| n.topic.name()).collect();
    assert_eq!(
        topics,
        ["claim.received", "task.created", "instance.failed"]
    );
    assert!(accepted
        .iter()
        .all(|n| n.instance == "c-1" && n.workflow_type == "claim"));
    assert_eq!(accepted[0].body, r#"{"who":"ann"}"#);
    assert_eq!(accepted[1].topic, Topic::TaskCreated);

    let outbox = rt.notifications(None, 100).await.unwrap();
    assert_eq!(outbox.len(), 3);
    for row in &outbox {
        assert_eq!(row.delivery, Delivery::Delivered);
        let errors: Vec<bool> = row.attempts.iter().map(|a| a.error.is_some()).collect();
        assert_eq!(errors, [true, true, false], "two refusals, then accepted");
        // Backoff: the second attempt a second after the first, the third two after that.
        assert_eq!(row.attempts[1].at_ms - row.attempts[0].at_ms, 1_000);
        assert_eq!(row.attempts[2].at_ms - row.attempts[1].at_ms, 2_000);
    }
    rt.shutdown().await;
}

/// Refuses everything.
struct Down;

#[async_trait::async_trait]
impl Notifier for Down {
    async fn notify(&self, _: &Notification) -> Result<(), String> {
        Err("receiver down".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_pending_at_shutdown_is_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = clock();
    let rt = open(&path, &clock, Arc::new(Down)).await;
    rt.start(claim, "c-2", "bo".to_owned()).await.unwrap();
    until(&clock, || async {
        rt.notifications(None, 10)
            .await
            .unwrap()
            .iter()
            .filter(|row| !row.attempts.is_empty())
            .count()
            == 2
    })
    .await;
    rt.shutdown().await;

    let flaky = Arc::new(Flaky::default());
    let rt = open(&path, &clock, flaky.clone()).await;
    until(&clock, || async {
        flaky.accepted.lock().unwrap().len() == 2
    })
    .await;
    // An accepted attempt is recorded right after the notifier returns.
    until(&clock, || async {
        rt.notifications(None, 10)
            .await
            .unwrap()
            .iter()
            .all(|row| row.delivery == Delivery::Delivered)
    })
    .await;
    let outbox = rt.notifications(None, 10).await.unwrap();
    assert!(outbox.iter().all(|row| row.attempts.len() >= 2));
    let accepted: Vec<u64> = flaky
        .accepted
        .lock()
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    let mut unique = accepted.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(accepted.len(), unique.len(), "each accepted once");
    rt.shutdown().await;
}

/// What the test's HTTP receiver saw.
#[derive(Default)]
struct Received {
    requests: usize,
    accepted: HashMap<u64, serde_json::Value>,
    duplicates: usize,
    bad_signatures: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_that_fails_twice_gets_one_signed_delivery_per_notification() {
    use axum::http::{HeaderMap, StatusCode};

    let secret = b"test secret".to_vec();
    let received = Arc::new(Mutex::new(Received::default()));
    let app = {
        let (received, secret) = (received.clone(), secret.clone());
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (received, secret) = (received.clone(), secret.clone());
                async move {
                    let mut seen = received.lock().unwrap();
                    seen.requests += 1;
                    // The first two requests fail, as a receiver being deployed does.
                    if seen.requests <= 2 {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let signature = headers
                        .get(SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let now = std::time::SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    if verify(&secret, signature, &body, now, SIGNATURE_TOLERANCE).is_err() {
                        seen.bad_signatures += 1;
                        return StatusCode::UNAUTHORIZED;
                    }
                    let id: u64 = headers
                        .get(ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap();
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    if seen.accepted.insert(id, json).is_some() {
                        seen.duplicates += 1;
                    }
                    StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let hook = Webhook::new(&format!("http://{address}/hook"), secret).unwrap();
    let rt = open(&dir.path().join("db.redb"), &clock, Arc::new(hook)).await;
    rt.start(claim, "c-3", "cy".to_owned()).await.unwrap();
    until(&clock, || async {
        received.lock().unwrap().accepted.len() == 2
    })
    .await;
    // Nothing more comes once both were accepted.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if clock.next_timer_ms().is_some() {
            clock.skip_to_next_timer().await;
        }
    }
    {
        let seen = received.lock().unwrap();
        assert_eq!(seen.bad_signatures, 0);
        assert_eq!(seen.duplicates, 0, "one accepted delivery per notification");
        assert_eq!(seen.requests, 4, "two refused, then one per notification");
        let mut topics: Vec<&str> = seen
            .accepted
            .values()
            .map(|json| json["topic"].as_str().unwrap())
            .collect();
        topics.sort_unstable();
        assert_eq!(topics, ["claim.received", "task.created"]);
        let received = seen
            .accepted
            .values()
            .find(|json| json["topic"] == "claim.received")
            .unwrap();
        assert_eq!(received["body"], serde_json::json!({ "who": "cy" }));
        assert_eq!(received["instance"], "c-3");
    }
    until(&clock, || async {
        rt.notifications(None, 10)
            .await
            .unwrap()
            .iter()
            .all(|row| row.delivery == Delivery::Delivered)
    })
    .await;
    rt.shutdown().await;
    server.abort();
}

#[test]
fn a_webhook_refuses_a_url_it_cannot_post_to() {
    assert!(Webhook::new("ftp://example.com/x", "s").is_err());
    assert!(Webhook::new("not a url", "s").is_err());
    assert!(Webhook::new("http://127.0.0.1/x", "").is_err());
}
