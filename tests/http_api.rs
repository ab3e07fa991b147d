//! The HTTP API, over real HTTP on 127.0.0.1:
//! - every operation of the served OpenAPI document is called, and answers with a status
//!   the document lists and a body that validates against the schema it gives;
//! - the authentication matrix of every write: no token 401, a role the policy refuses
//!   403, the right role 2xx, and a refused write changes no history;
//! - hostile input (malformed JSON, a body over the limit, deep nesting, bad UTF-8,
//!   unknown fields, the wrong content type, path traversal in ids, unknown routes and
//!   methods, bad cursors) gets a 4xx with a JSON error code, never a 5xx;
//! - a whole case through the API: start, signal once under a key, update, query, a
//!   task claimed and completed through its schema, a history naming who did what.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cairn::policy::{Action, Policy, Roles, Verb};
use cairn::server::{Running, Tokens};
use cairn::{
    workflow, Actor, Ctx, Query, Recurrence, Runtime, Signal, TaskKind, Update, WorkflowError,
};
use futures::future::Either;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
struct Claim {
    customer: String,
    amount: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
struct Verdict {
    approve: bool,
    note: String,
}

const REVIEW: TaskKind<Claim, Verdict> = TaskKind::new("review");
const NOTE: Signal<String> = Signal::new("note");
const AMOUNT: Update<u64, u64> = Update::new("change_amount");
const STATE: Query<String> = Query::new("state");

/// A claims desk: takes notes and amount changes until told to review or close.
#[workflow]
async fn desk(ctx: Ctx, claim: Claim) -> Result<String, WorkflowError> {
    let mut claim = claim;
    ctx.publish(STATE, &format!("open for {}", claim.customer))
        .await;
    loop {
        let change = Box::pin(ctx.update(AMOUNT));
        let note = Box::pin(ctx.receive(NOTE));
        match futures::future::select(change, note).await {
            Either::Left((request, _)) => {
                let request = request?;
                let amount = *request.input();
                if amount == 0 {
                    request.reject(&ctx, "an amount must be positive").await;
                } else {
                    claim.amount = amount;
                    request.accept(&ctx, &amount).await;
                }
            }
            Either::Right((note, _)) => match note?.as_str() {
                "review" => {
                    let task = REVIEW
                        .task(claim.clone())
                        .title(format!("Review the claim of {}", claim.customer))
                        .roles(["l1"]);
                    let decided = ctx.human_task(task).await?;
                    let state = format!(
                        "{} by {}: {}",
                        if decided.decision.approve {
                            "approved"
                        } else {
                            "refused"
                        },
                        decided.by.id,
                        decided.decision.note
                    );
                    ctx.publish(STATE, &state).await;
                    return Ok(state);
                }
                "close" => return Ok("closed".into()),
                other => ctx.publish(STATE, &other.to_owned()).await,
            },
        }
    }
}

struct Host {
    rt: Runtime,
    running: Option<Running>,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    /// The database, when the host runs on PostgreSQL.
    _db: Option<cairn_testkit::postgres::TestDb>,
}

const ADMIN: &str = "admin-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const AUDITOR: &str = "auditor-token-0123456789";
const CLERK: &str = "clerk-token-0123456789";
const OUTSIDER: &str = "outsider-token-0123456789";
/// Reads the instances whose id starts with `live-1` and no others (so never the whole
/// type: the overview counts for them from the instances themselves).
const VIEWER: &str = "viewer-token-0123456789";

/// The roles, plus a rule that decides per instance.
struct PerCase(Roles);

impl Policy for PerCase {
    fn check(&self, actor: &Actor, action: &Action<'_>) -> Result<(), String> {
        match action {
            Action::Read { instance, .. } if actor.has_role("viewer") => {
                if instance.starts_with("live-1") {
                    Ok(())
                } else {
                    Err(format!("a viewer reads the live-1 cases, not `{instance}`"))
                }
            }
            _ => self.0.check(actor, action),
        }
    }
}

async fn host() -> Host {
    host_on(false).await
}

/// A host on redb, or on a fresh PostgreSQL database.
async fn host_on(postgres: bool) -> Host {
    host_with(postgres, None).await
}

/// As `host_on`, with the server's update wait set when `update_wait` is.
async fn host_with(postgres: bool, update_wait: Option<Duration>) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let policy = Roles::new()
        .admin("admin")
        .allow_any_type(Verb::Start, ["operator"])
        .allow_any_type(Verb::Signal, ["operator"])
        .allow_any_type(Verb::Update, ["operator"])
        .allow_any_type(Verb::Cancel, ["operator"])
        .allow_any_type(Verb::Terminate, ["operator"])
        .allow_any_type(Verb::Read, ["operator", "auditor"])
        .allow_any_type(Verb::Attach, ["operator"])
        .allow_any_type(Verb::Schedule, ["operator"])
        .allow_anyone(Verb::Task);
    let builder = Runtime::builder()
        .workflow(desk)
        .signal(NOTE)
        .update(AMOUNT)
        .policy(Arc::new(PerCase(policy)));
    let (rt, db) = if postgres {
        let db = cairn_testkit::postgres::TestDb::new().await.unwrap();
        let rt = builder.open_postgres(&db.url()).await.unwrap();
        (rt, Some(db))
    } else {
        let rt = builder.open(dir.path().join("api.redb")).await.unwrap();
        (rt, None)
    };
    let mut tokens = Tokens::new();
    tokens.add(ADMIN, Actor::new("ada", ["admin"])).unwrap();
    tokens
        .add(OPERATOR, Actor::new("olga", ["operator"]))
        .unwrap();
    tokens
        .add(AUDITOR, Actor::new("audrey", ["auditor"]))
        .unwrap();
    tokens.add(CLERK, Actor::new("cleo", ["l1"])).unwrap();
    tokens
        .add(OUTSIDER, Actor::new("mallory", ["visitor"]))
        .unwrap();
    tokens.add(VIEWER, Actor::new("vic", ["viewer"])).unwrap();
    let mut server = rt.http_server(tokens);
    if let Some(wait) = update_wait {
        server = server.update_wait(wait);
    }
    let running = server.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", running.addr());
    Host {
        rt,
        running: Some(running),
        base,
        http: reqwest::Client::new(),
        _dir: dir,
        _db: db,
    }
}

impl Host {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{path}: not JSON ({status}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, value)
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn start(&self, id: &str) {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/instances",
                Some(OPERATOR),
                Some(json!({
                    "workflow_type": "desk",
                    "id": id,
                    "input": { "customer": "Ada", "amount": 120 }
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Waits until `id`'s published state is `state`.
    async fn wait_state(&self, id: &str, state: &str) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.rt.query(id, STATE).await.unwrap().as_deref() != Some(state) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{id} never reached {state:?}"));
    }

    /// The open task of `id`, as `instance/step`.
    async fn task_of(&self, id: &str) -> String {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let (_, page) = self
                    .call(Method::GET, "/api/v1/tasks", Some(CLERK), None)
                    .await;
                if let Some(task) = page["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["instance"] == id)
                {
                    return task["id"].as_str().unwrap().to_owned();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap()
    }

    /// A daily schedule `nightly` of the desk, first due in a day.
    async fn nightly(&self) {
        let claim = Claim {
            customer: "Night".into(),
            amount: 1,
        };
        self.rt
            .schedule(
                desk,
                "nightly",
                claim,
                Recurrence::every(Duration::from_secs(86_400)),
            )
            .await
            .unwrap();
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
        self.rt.shutdown().await;
    }
}

/// Resolves `#/components/schemas/..` references against the document.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    if let Value::Object(map) = &mut root {
        map.insert("components".into(), doc["components"].clone());
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .unwrap_or_else(|err| panic!("schema {schema} does not compile: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_the_document_says() {
    every_operation(host().await).await;
}

/// The same on a host whose store is PostgreSQL: the API and its answers do not depend
/// on the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_the_same_on_postgres() {
    every_operation(host_on(true).await).await;
}

async fn every_operation(host: Host) {
    // The document is public.
    let (status, doc) = host.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"].as_str().unwrap().get(..2), Some("3."));

    host.start("doc-1").await;
    host.wait_state("doc-1", "open for Ada").await;
    host.nightly().await;
    host.start("doc-2").await;
    host.wait_state("doc-2", "open for Ada").await;
    host.call(
        Method::POST,
        "/api/v1/instances/doc-2/signals/note",
        Some(OPERATOR),
        Some(json!("review")),
    )
    .await;
    let task = host.task_of("doc-2").await;
    let (instance, step) = task.split_once('/').unwrap();

    // What the test sends to each operation: its path and body. An operation the
    // document lists and the test does not know fails the test.
    let mut seen = BTreeSet::new();
    let paths = doc["paths"].as_object().unwrap();
    let mut calls = 0;
    for (template, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap().to_owned();
            let (path, body, token): (String, Option<Value>, Option<&str>) = match id.as_str() {
                "health" | "ready" => (template.clone(), None, None),
                "me" | "list_instances" | "inbox" => (template.clone(), None, Some(CLERK)),
                "overview" => (template.clone(), None, Some(AUDITOR)),
                "metrics" => {
                    // Text, not JSON: its status and a metric it must hold.
                    seen.insert(id.clone());
                    let response = host
                        .http
                        .get(format!("{}{template}", host.base))
                        .bearer_auth(AUDITOR)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    let text = response.text().await.unwrap();
                    assert!(text.contains("cairn_instances_started_total"), "{text}");
                    calls += 1;
                    continue;
                }
                "stream" => {
                    // An endless event stream: its status and type, then hang up.
                    seen.insert(id.clone());
                    let response = host
                        .http
                        .get(format!("{}{template}", host.base))
                        .bearer_auth(AUDITOR)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    let kind = response.headers()["content-type"].to_str().unwrap();
                    assert!(kind.starts_with("text/event-stream"), "{kind}");
                    calls += 1;
                    continue;
                }
                "get_map_bpmn" | "get_map_svg" => {
                    // XML documents: their status, type and root element.
                    seen.insert(id.clone());
                    let response = host
                        .http
                        .get(format!(
                            "{}{}",
                            host.base,
                            template.replace("{workflow_type}", "desk")
                        ))
                        .bearer_auth(AUDITOR)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    let kind = response.headers()["content-type"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    let text = response.text().await.unwrap();
                    if id == "get_map_bpmn" {
                        assert!(kind.starts_with("application/xml"), "{kind}");
                        assert!(text.contains("<bpmn:definitions"), "{text}");
                        assert!(text.contains("<bpmn:userTask"), "the review task: {text}");
                        assert!(text.contains("<bpmndi:BPMNDiagram"), "{text}");
                    } else {
                        assert!(kind.starts_with("image/svg+xml"), "{kind}");
                        assert!(text.starts_with("<svg"), "{text}");
                    }
                    calls += 1;
                    continue;
                }
                "get_report_csv" => {
                    seen.insert(id.clone());
                    let response = host
                        .http
                        .get(format!(
                            "{}{}",
                            host.base,
                            template.replace("{workflow_type}", "desk")
                        ))
                        .bearer_auth(AUDITOR)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    let kind = response.headers()["content-type"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    assert!(kind.starts_with("text/csv"), "{kind}");
                    let text = response.text().await.unwrap();
                    assert!(text.starts_with("period_start_utc,started,"), "{text}");
                    calls += 1;
                    continue;
                }
                "get_report" => (
                    template.replace("{workflow_type}", "desk"),
                    None,
                    Some(AUDITOR),
                ),
                "start_batch" => (
                    template.clone(),
                    Some(json!({
                        "action": "cancel",
                        "filter": { "workflow_type": "desk" },
                        "reason": "documented",
                        "dry_run": true
                    })),
                    Some(OPERATOR),
                ),
                "list_batches" => (template.clone(), None, Some(AUDITOR)),
                "list_documents" => (template.replace("{id}", "doc-1"), None, Some(AUDITOR)),
                "get_document" => (
                    template
                        .replace("{id}", "doc-1")
                        .replace("{name}", "none.pdf"),
                    None,
                    Some(AUDITOR),
                ),
                "attach_document" => {
                    // Bytes, not JSON: its status and the version recorded.
                    seen.insert(id.clone());
                    let response = host
                        .http
                        .post(format!(
                            "{}{}",
                            host.base,
                            template
                                .replace("{id}", "doc-1")
                                .replace("{name}", "scan.pdf")
                        ))
                        .bearer_auth(OPERATOR)
                        .header("content-type", "application/pdf")
                        .body(b"%PDF-1.7 documented".to_vec())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::CREATED);
                    calls += 1;
                    continue;
                }
                "list_views" | "list_schedules" => (template.clone(), None, Some(AUDITOR)),
                "get_schedule" => (template.replace("{id}", "nightly"), None, Some(AUDITOR)),
                "pause_schedule" => (
                    template.replace("{id}", "nightly"),
                    Some(json!({ "reason": "documented" })),
                    Some(OPERATOR),
                ),
                "resume_schedule" | "trigger_schedule" => {
                    (template.replace("{id}", "nightly"), None, Some(OPERATOR))
                }
                "create_view" => (
                    template.clone(),
                    Some(json!({ "name": "Documented", "query": "workflow_type=desk" })),
                    Some(OPERATOR),
                ),
                "delete_view" => (
                    template.replace("{id}", "no-such-view"),
                    None,
                    Some(OPERATOR),
                ),
                "get_batch" => (
                    template.replace("{id}", "no-such-batch"),
                    None,
                    Some(AUDITOR),
                ),
                "get_map" => (
                    template.replace("{workflow_type}", "desk"),
                    None,
                    Some(AUDITOR),
                ),
                "start_instance" => (
                    template.clone(),
                    Some(
                        json!({ "workflow_type": "desk", "id": "doc-3", "input": { "customer": "Bo", "amount": 5 } }),
                    ),
                    Some(OPERATOR),
                ),
                "get_instance" | "get_history" => {
                    (template.replace("{id}", "doc-1"), None, Some(AUDITOR))
                }
                "send_signal" => (
                    template.replace("{id}", "doc-1").replace("{name}", "note"),
                    Some(json!("a note")),
                    Some(OPERATOR),
                ),
                "send_update" => (
                    template
                        .replace("{id}", "doc-1")
                        .replace("{name}", "change_amount"),
                    Some(json!(300)),
                    Some(OPERATOR),
                ),
                "read_query" => (
                    template.replace("{id}", "doc-1").replace("{name}", "state"),
                    None,
                    Some(AUDITOR),
                ),
                "cancel_instance" | "terminate_instance" => (
                    template.replace("{id}", "doc-3"),
                    Some(json!({ "reason": "documented" })),
                    Some(OPERATOR),
                ),
                "get_task" | "claim_task" | "release_task" | "comment_task" => (
                    template
                        .replace("{instance}", instance)
                        .replace("{step}", step),
                    (id == "comment_task").then(|| json!({ "text": "looking" })),
                    Some(CLERK),
                ),
                "delegate_task" => (
                    template
                        .replace("{instance}", instance)
                        .replace("{step}", step),
                    Some(json!({ "to": "cleo" })),
                    Some(CLERK),
                ),
                "complete_task" => (
                    template
                        .replace("{instance}", instance)
                        .replace("{step}", step),
                    Some(json!({ "decision": { "approve": true, "note": "fine" } })),
                    Some(CLERK),
                ),
                other => panic!("the document lists `{other}`, which this test does not call"),
            };
            seen.insert(id.clone());
            let public = matches!(id.as_str(), "health" | "ready");
            assert_eq!(
                operation["security"][0]["bearer"].is_array(),
                !public,
                "{id}: bearer security is documented exactly on the non-public routes"
            );
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, answer) = host.call(method, &path, token, body).await;
            calls += 1;
            let documented = &operation["responses"][status.as_str()];
            assert!(
                documented.is_object(),
                "{id}: status {status} is not documented: {answer}"
            );
            if let Some(schema) = documented.pointer("/content/application~1json/schema") {
                let validator = validator(&doc, schema);
                let problems: Vec<String> = validator
                    .iter_errors(&answer)
                    .map(|e| e.to_string())
                    .collect();
                assert!(
                    problems.is_empty(),
                    "{id}: the {status} body does not match the document: {problems:?}\n{answer}"
                );
            }
        }
    }
    assert!(calls >= 20, "only {calls} operations documented");
    // The map of the desks: both runs, the review task among their steps.
    let (_, map) = host
        .call(Method::GET, "/api/v1/types/desk/map", Some(AUDITOR), None)
        .await;
    assert!(map["runs"].as_u64().unwrap() >= 2, "{map}");
    assert!(
        map["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["kind"] == "task" && n["name"] == "review"),
        "{map}"
    );
    let (status, refused) = host
        .call(
            Method::GET,
            "/api/v1/types/desk/map?limit=many",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (status, _) = host
        .call(Method::GET, "/api/v1/types/desk/map", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(seen.contains("complete_task") && seen.contains("list_instances"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_needs_a_token_and_the_right_role_and_a_refusal_writes_nothing() {
    let host = host().await;
    host.start("auth-1").await;
    host.wait_state("auth-1", "open for Ada").await;
    let writes: Vec<(&str, String, Value)> = vec![
        (
            "start",
            "/api/v1/instances".into(),
            json!({ "workflow_type": "desk", "id": "auth-2", "input": { "customer": "x", "amount": 1 } }),
        ),
        (
            "signal",
            "/api/v1/instances/auth-1/signals/note".into(),
            json!("hello"),
        ),
        (
            "cancel",
            "/api/v1/instances/auth-1/cancel".into(),
            json!({ "reason": "r" }),
        ),
        (
            "terminate",
            "/api/v1/instances/auth-1/terminate".into(),
            json!({ "reason": "r" }),
        ),
        (
            "update",
            "/api/v1/instances/auth-1/updates/change_amount".into(),
            json!(0),
        ),
        // A body the declared type refuses: a refused caller hears 403 first, and
        // nothing of the declared types.
        (
            "signal with a bad body",
            "/api/v1/instances/auth-1/signals/note".into(),
            json!(42),
        ),
        (
            "update with a bad body",
            "/api/v1/instances/auth-1/updates/change_amount".into(),
            json!("many"),
        ),
    ];
    let before = host.rt.history("auth-1").await.unwrap().len();
    for (what, path, body) in &writes {
        let (status, answer) = host
            .call(Method::POST, path, None, Some(body.clone()))
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{what} without a token: {answer}"
        );
        assert_eq!(answer["code"], "unauthenticated");
        let (status, answer) = host
            .call(
                Method::POST,
                path,
                Some("not-a-token-at-all-000"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{what} with an unknown token: {answer}"
        );
        for token in [OUTSIDER, AUDITOR, CLERK] {
            let (status, answer) = host
                .call(Method::POST, path, Some(token), Some(body.clone()))
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{what} as {token}: {answer}");
            assert_eq!(answer["code"], "CAIRN-E0023");
        }
    }
    assert_eq!(host.rt.history("auth-1").await.unwrap().len(), before);
    assert!(matches!(
        host.rt.status("auth-2").await.unwrap_err().code(),
        "CAIRN-E0007"
    ));
    // Reads: the outsider reads nothing, the auditor reads all.
    let (status, _) = host
        .call(
            Method::GET,
            "/api/v1/instances/auth-1",
            Some(OUTSIDER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, page) = host
        .call(Method::GET, "/api/v1/instances", Some(OUTSIDER), None)
        .await;
    assert_eq!(page["instances"], json!([]));
    let (_, page) = host
        .call(Method::GET, "/api/v1/instances", Some(AUDITOR), None)
        .await;
    assert_eq!(page["instances"][0]["id"], "auth-1");
    // The right roles: each write goes through (in an order the workflow allows).
    let (status, answer) = host
        .call(Method::POST, &writes[4].1, Some(OPERATOR), Some(json!(0)))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["accepted"], false);
    assert_eq!(answer["reason"], "an amount must be positive");
    // A cancelled desk ends at its wait; the termination goes to a second instance.
    host.start("auth-3").await;
    for (what, path, body) in &writes[..4] {
        let (token, path) = if *what == "terminate" {
            (ADMIN, path.replace("auth-1", "auth-3"))
        } else {
            (OPERATOR, path.clone())
        };
        let (status, answer) = host
            .call(Method::POST, &path, Some(token), Some(body.clone()))
            .await;
        assert!(status.is_success(), "{what}: {status} {answer}");
    }
    let mut history = host.rt.history("auth-1").await.unwrap();
    history.extend(host.rt.history("auth-3").await.unwrap());
    let actors: BTreeSet<String> = history
        .iter()
        .filter_map(|e| e.record.actor.as_ref().map(|a| a.id.clone()))
        .collect();
    assert!(
        actors.contains("olga") && actors.contains("ada"),
        "{actors:?}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_a_4xx_with_a_code_and_never_a_5xx() {
    let host = host().await;
    host.start("h-1").await;
    host.wait_state("h-1", "open for Ada").await;
    let signal = "/api/v1/instances/h-1/signals/note";
    let json = Some("application/json");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // What, method, path, content type, body, expected status and code.
    type Case<'a> = (
        &'a str,
        Method,
        String,
        Option<&'a str>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            Method::POST,
            signal.into(),
            json,
            b"{\"a\":".to_vec(),
            400,
            "bad_json",
        ),
        (
            "a body over the limit",
            Method::POST,
            signal.into(),
            json,
            vec![b' '; 2 * 1024 * 1024],
            413,
            "body_too_large",
        ),
        (
            "deep nesting",
            Method::POST,
            signal.into(),
            json,
            deep.into_bytes(),
            400,
            "bad_json",
        ),
        (
            "bad UTF-8",
            Method::POST,
            signal.into(),
            json,
            b"\"\xff\xfe\"".to_vec(),
            400,
            "bad_json",
        ),
        (
            "no content type",
            Method::POST,
            signal.into(),
            None,
            b"\"x\"".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "a text content type",
            Method::POST,
            signal.into(),
            Some("text/plain"),
            b"\"x\"".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "a body of the wrong type",
            Method::POST,
            signal.into(),
            json,
            b"42".to_vec(),
            422,
            "CAIRN-E0014",
        ),
        (
            "an undeclared signal",
            Method::POST,
            "/api/v1/instances/h-1/signals/nope".into(),
            json,
            b"\"x\"".to_vec(),
            422,
            "CAIRN-E0014",
        ),
        (
            "unknown fields",
            Method::POST,
            "/api/v1/instances/h-1/cancel".into(),
            json,
            br#"{"reason":"r","extra":1}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            "a missing field",
            Method::POST,
            "/api/v1/instances".into(),
            json,
            br#"{"id":"x"}"#.to_vec(),
            422,
            "invalid_body",
        ),
        (
            "an unknown workflow type",
            Method::POST,
            "/api/v1/instances".into(),
            json,
            br#"{"workflow_type":"nope","id":"x","input":1}"#.to_vec(),
            422,
            "CAIRN-E0003",
        ),
        (
            "an input of the wrong type",
            Method::POST,
            "/api/v1/instances".into(),
            json,
            br#"{"workflow_type":"desk","id":"x","input":{"customer":1}}"#.to_vec(),
            422,
            "CAIRN-E0014",
        ),
        (
            "path traversal in an id",
            Method::GET,
            "/api/v1/instances/..%2F..%2Fetc%2Fpasswd".into(),
            None,
            vec![],
            404,
            "CAIRN-E0007",
        ),
        (
            "dot segments (the client resolves them)",
            Method::GET,
            "/api/v1/instances/%2E%2E".into(),
            None,
            vec![],
            404,
            "not_found",
        ),
        (
            "a step that is not a number",
            Method::GET,
            "/api/v1/tasks/h-1/two".into(),
            None,
            vec![],
            400,
            "bad_path",
        ),
        (
            "a step out of range",
            Method::GET,
            "/api/v1/tasks/h-1/99999999999".into(),
            None,
            vec![],
            400,
            "bad_path",
        ),
        (
            "an unknown task",
            Method::GET,
            "/api/v1/tasks/h-1/77".into(),
            None,
            vec![],
            404,
            "CAIRN-E0021",
        ),
        (
            "an unknown route",
            Method::GET,
            "/api/v1/nothing".into(),
            None,
            vec![],
            404,
            "not_found",
        ),
        (
            "a wrong method",
            Method::DELETE,
            "/api/v1/instances".into(),
            None,
            vec![],
            405,
            "method_not_allowed",
        ),
        (
            "a bad cursor",
            Method::GET,
            "/api/v1/instances?cursor=zzz".into(),
            None,
            vec![],
            400,
            "bad_query",
        ),
        (
            "a bad status filter",
            Method::GET,
            "/api/v1/instances?status=sleeping".into(),
            None,
            vec![],
            400,
            "bad_query",
        ),
        (
            "an unknown query parameter",
            Method::GET,
            "/api/v1/instances?colour=red".into(),
            None,
            vec![],
            400,
            "bad_query",
        ),
        (
            "a bad attribute filter",
            Method::GET,
            "/api/v1/instances?attribute=stage".into(),
            None,
            vec![],
            400,
            "bad_query",
        ),
        (
            "a bad task cursor",
            Method::GET,
            "/api/v1/tasks?cursor=1-2".into(),
            None,
            vec![],
            400,
            "bad_query",
        ),
        (
            "a huge limit",
            Method::GET,
            "/api/v1/instances?limit=99999999999999999999999".into(),
            None,
            vec![],
            400,
            "bad_query",
        ),
        (
            "an over-long signal name",
            Method::POST,
            format!("/api/v1/instances/h-1/signals/{}", "n".repeat(300)),
            json,
            b"\"x\"".to_vec(),
            422,
            "CAIRN-E0014",
        ),
        (
            "an over-long cancellation reason",
            Method::POST,
            "/api/v1/instances/h-1/cancel".into(),
            json,
            json!({ "reason": "r".repeat(5000) })
                .to_string()
                .into_bytes(),
            422,
            "CAIRN-E0014",
        ),
        (
            "an over-long termination reason",
            Method::POST,
            "/api/v1/instances/h-1/terminate".into(),
            json,
            json!({ "reason": "r".repeat(5000) })
                .to_string()
                .into_bytes(),
            422,
            "CAIRN-E0014",
        ),
        (
            "a batch reason it would write into every history, over-long",
            Method::POST,
            "/api/v1/batches".into(),
            json,
            json!({ "action": "terminate", "reason": "r".repeat(5000) })
                .to_string()
                .into_bytes(),
            422,
            "CAIRN-E0014",
        ),
        (
            "a decision of the wrong shape",
            Method::POST,
            "/api/v1/tasks/h-1/1/complete".into(),
            json,
            br#"{"decision":[]}"#.to_vec(),
            404,
            "CAIRN-E0021",
        ),
    ];
    for (what, method, path, content_type, body, expected, code) in cases {
        let (status, answer) = host.raw(method, &path, content_type, body).await;
        assert_eq!(status.as_u16(), expected, "{what}: {answer}");
        assert_eq!(answer["code"], code, "{what}: {answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {answer}"
        );
    }
    // Nothing of it reached the history, and the host still serves.
    let history = host.rt.history("h-1").await.unwrap();
    assert!(history.iter().all(|e| !matches!(
        e.record.kind.name(),
        "SignalReceived" | "CancelRequested" | "WorkflowTerminated"
    )));
    let (status, _) = host.call(Method::GET, "/api/v1/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_case_through_the_api() {
    whole_case(host().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_case_through_the_api_on_postgres() {
    whole_case(host_on(true).await).await;
}

async fn whole_case(host: Host) {
    host.start("case-1").await;
    // Starting again is idempotent: 200, not created.
    let (status, answer) = host
        .call(
            Method::POST,
            "/api/v1/instances",
            Some(OPERATOR),
            Some(json!({ "workflow_type": "desk", "id": "case-1", "input": { "customer": "Ada", "amount": 1 } })),
        )
        .await;
    assert_eq!(
        (status, answer["created"].clone()),
        (StatusCode::OK, json!(false))
    );
    host.wait_state("case-1", "open for Ada").await;

    // A signal sent twice under one key is recorded once.
    let signal = |key: &'static str| {
        host.http
            .post(format!(
                "{}/api/v1/instances/case-1/signals/note",
                host.base
            ))
            .bearer_auth(OPERATOR)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body("\"called the customer\"")
            .send()
    };
    let first: Value =
        serde_json::from_slice(&signal("n-1").await.unwrap().bytes().await.unwrap()).unwrap();
    let again: Value =
        serde_json::from_slice(&signal("n-1").await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(
        (first["recorded"].clone(), again["recorded"].clone()),
        (json!(true), json!(false))
    );
    host.wait_state("case-1", "called the customer").await;

    // An update is answered with the workflow's response.
    let (status, answer) = host
        .call(
            Method::POST,
            "/api/v1/instances/case-1/updates/change_amount",
            Some(OPERATOR),
            Some(json!(250)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["accepted"].clone(), answer["response"].clone()),
        (json!(true), json!(250))
    );
    let (_, value) = host
        .call(
            Method::GET,
            "/api/v1/instances/case-1/queries/state",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(value["value"], "called the customer");

    // To review: the clerk's inbox has the task; a bad decision is refused with its
    // problems, a good one decides it.
    host.call(
        Method::POST,
        "/api/v1/instances/case-1/signals/note",
        Some(OPERATOR),
        Some(json!("review")),
    )
    .await;
    let task = host.task_of("case-1").await;
    let (status, view) = host
        .call(
            Method::GET,
            &format!("/api/v1/tasks/{task}"),
            Some(CLERK),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["input"]["amount"], 250);
    assert_eq!(view["decision_schema"]["type"], "object");
    let (status, _) = host
        .call(
            Method::GET,
            &format!("/api/v1/tasks/{task}"),
            Some(OUTSIDER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, claimed) = host
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{task}/claim"),
            Some(CLERK),
            None,
        )
        .await;
    assert_eq!(
        (status, claimed["assignee"].clone()),
        (StatusCode::OK, json!("cleo"))
    );
    let (status, refused) = host
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{task}/complete"),
            Some(CLERK),
            Some(json!({ "decision": { "approve": "yes" } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["code"], "CAIRN-E0024");
    assert!(
        refused["message"].as_str().unwrap().contains("approve"),
        "{refused}"
    );
    let (status, done) = host
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{task}/complete"),
            Some(CLERK),
            Some(json!({ "decision": { "approve": true, "note": "in order" } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        (done["status"].clone(), done["decided_by"].clone()),
        (json!("completed"), json!("cleo"))
    );
    let (status, again) = host
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{task}/complete"),
            Some(CLERK),
            Some(json!({ "decision": { "approve": false, "note": "again" } })),
        )
        .await;
    assert_eq!(
        (status, again["code"].clone()),
        (StatusCode::CONFLICT, json!("CAIRN-E0022"))
    );

    // The instance completes; its history over HTTP names who did what.
    host.wait_state("case-1", "approved by cleo: in order")
        .await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while host.rt.status("case-1").await.unwrap().status != cairn::Status::Completed {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let (_, listed) = host
        .call(
            Method::GET,
            "/api/v1/instances?status=completed&workflow_type=desk",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(listed["instances"][0]["id"], "case-1");
    let (_, history) = host
        .call(
            Method::GET,
            "/api/v1/instances/case-1/history",
            Some(AUDITOR),
            None,
        )
        .await;
    let events = history.as_array().unwrap();
    let by = |event: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["event"] == event)
            .map(|e| e["actor"]["id"].clone())
            .collect()
    };
    assert_eq!(by("WorkflowStarted"), [json!("olga")]);
    assert_eq!(by("KeyedSignalReceived")[0], json!("olga"));
    assert_eq!(by("TaskCompleted"), [json!("cleo")]);
    assert_eq!(events.last().unwrap()["event"], "WorkflowCompleted");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_dropped_after_its_first_poll_still_stops_the_server() {
    let mut host = host().await;
    let (status, _) = host.call(Method::GET, "/api/v1/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let running = host.running.take().unwrap();
    let addr = running.addr();
    {
        let stop = running.stop();
        let mut stop = Box::pin(stop);
        let _ = futures::poll!(stop.as_mut());
    }
    // The listener closes once the server has stopped: new connections are refused.
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server still accepts connections after its stop was dropped");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_page_with_a_cursor_and_no_row_cap() {
    let host = host().await;
    for n in 0..25 {
        host.start(&format!("page-{n:02}")).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/instances?limit=10&cursor={c}"),
            None => "/api/v1/instances?limit=10".into(),
        };
        let (status, page) = host.call(Method::GET, &path, Some(AUDITOR), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for row in page["instances"].as_array().unwrap() {
            seen.push(row["id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|n| format!("page-{n:02}")).collect();
    assert_eq!(seen, expected);
    host.stop().await;
}

/// Puts `id` in review: the desk then takes no update until the task is decided.
async fn in_review(host: &Host, id: &str) {
    host.start(id).await;
    host.call(
        Method::POST,
        &format!("/api/v1/instances/{id}/signals/note"),
        Some(OPERATOR),
        Some(json!("review")),
    )
    .await;
    host.task_of(id).await;
}

/// Whether `id`'s history holds the update request sent with `key`.
async fn update_recorded(host: &Host, id: &str, key: &str) -> bool {
    let (_, events) = host
        .call(
            Method::GET,
            &format!("/api/v1/instances/{id}/history"),
            Some(AUDITOR),
            None,
        )
        .await;
    events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "KeyedSignalReceived" && e.to_string().contains(key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_nobody_answers_gets_202_with_its_id_and_never_holds_the_server_open() {
    // The desk in review takes no update. The request used to wait until the workflow
    // answered or ended, however long, and kept `Running::stop` waiting with it.
    let host = host_with(false, Some(Duration::from_millis(300))).await;
    in_review(&host, "slow-1").await;
    let asked = |key: &'static str| {
        let request = host
            .http
            .post(format!(
                "{}/api/v1/instances/slow-1/updates/change_amount",
                host.base
            ))
            .bearer_auth(OPERATOR)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body("99");
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body = response.bytes().await.unwrap();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let (status, pending) = asked("u-1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pending}");
    assert_eq!(pending["id"], "u-1");
    assert!(
        pending["message"].as_str().unwrap().contains("u-1"),
        "{pending}"
    );
    assert!(update_recorded(&host, "slow-1", "u-1").await);
    // Asked again with its key: the same update, still pending, recorded once.
    let (status, _) = asked("u-1").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    host.stop().await;

    // With the default wait (30 s), stopping the server answers the waiting request at
    // once instead of waiting for it.
    let host = host_on(false).await;
    in_review(&host, "slow-2").await;
    let request = host
        .http
        .post(format!(
            "{}/api/v1/instances/slow-2/updates/change_amount",
            host.base
        ))
        .bearer_auth(OPERATOR)
        .header("idempotency-key", "u-2")
        .header("content-type", "application/json")
        .body("99");
    let waiting = tokio::spawn(async move {
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.bytes().await.unwrap();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while !update_recorded(&host, "slow-2", "u-2").await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the update is recorded");
    tokio::time::timeout(Duration::from_secs(10), host.stop())
        .await
        .expect("the server stops while an update waits");
    let (status, pending) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{pending}");
    assert_eq!(pending["id"], "u-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_who_hands_a_task_on_gets_the_task_back_not_a_refusal() {
    // Vic may read only the live-1 cases and is no candidate of this task (role l1);
    // he holds it by delegation. Handing it on was recorded, then answered 403 "nothing
    // was written" because the reply re-read the task as Vic.
    let host = host().await;
    host.start("case-d").await;
    host.call(
        Method::POST,
        "/api/v1/instances/case-d/signals/note",
        Some(OPERATOR),
        Some(json!("review")),
    )
    .await;
    let task = host.task_of("case-d").await;
    let act = |token: &'static str, verb: &'static str, body: Option<Value>| {
        let path = format!("/api/v1/tasks/{task}/{verb}");
        let host = &host;
        async move { host.call(Method::POST, &path, Some(token), body).await }
    };
    let (status, claimed) = act(CLERK, "claim", None).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let (status, to_vic) = act(CLERK, "delegate", Some(json!({ "to": "vic" }))).await;
    assert_eq!(status, StatusCode::OK, "{to_vic}");
    let (status, to_dan) = act(VIEWER, "delegate", Some(json!({ "to": "dan" }))).await;
    assert_eq!(status, StatusCode::OK, "{to_dan}");
    assert_eq!(to_dan["assignee"], "dan", "{to_dan}");
    // What the reply says is what the history holds, once.
    let (_, events) = host
        .call(
            Method::GET,
            "/api/v1/instances/case-d/history",
            Some(AUDITOR),
            None,
        )
        .await;
    let delegated = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "TaskChanged" && e.to_string().contains("elegat"))
        .count();
    assert_eq!(delegated, 2, "{events}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_may_read_little_makes_each_page_examine_a_bounded_number_of_rows() {
    // The viewer may read `live-1...` only. Before, a page went on examining the whole
    // index until it held `limit` rows: one readable row made one request read them all.
    let host = host().await;
    host.start("live-1-first").await;
    for n in 0..20 {
        host.start(&format!("other-{n:02}")).await;
    }
    let (status, page) = host
        .call(Method::GET, "/api/v1/instances?limit=2", Some(VIEWER), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["live-1-first"], "{page}");
    assert!(
        page["next"].is_string(),
        "a page stops after a few index pages of 2 rows, with a cursor: {page}"
    );
    // Following the cursors finds nothing more, and ends.
    let mut cursor = page["next"].as_str().map(str::to_owned);
    let mut pages = 1;
    while let Some(c) = cursor {
        let (_, page) = host
            .call(
                Method::GET,
                &format!("/api/v1/instances?limit=2&cursor={c}"),
                Some(VIEWER),
                None,
            )
            .await;
        assert_eq!(page["instances"], json!([]), "{page}");
        cursor = page["next"].as_str().map(str::to_owned);
        pages += 1;
        assert!(pages < 10, "the cursors never end");
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_its_live_feed_and_the_overview_are_served() {
    let host = host().await;
    // The page and its assets, with a policy that keeps them from being framed.
    let page = host
        .http
        .get(format!("{}/", host.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(page.text().await.unwrap().contains("<title>Cairn</title>"));
    for (asset, kind) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
        let response = host
            .http
            .get(format!("{}/assets/{asset}", host.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
    // The feed says when commits land.
    let mut feed = host
        .http
        .get(format!("{}/api/v1/stream", host.base))
        .bearer_auth(AUDITOR)
        .send()
        .await
        .unwrap();
    host.start("live-1").await;
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        while let Some(chunk) = feed.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("event: commit") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(heard, "no commit event");
    host.wait_state("live-1", "open for Ada").await;
    host.start("live-2").await;
    // The overview counts what the caller may read.
    let (_, overview) = host
        .call(Method::GET, "/api/v1/overview", Some(AUDITOR), None)
        .await;
    assert_eq!(overview["totals"]["running"], 2, "{overview}");
    assert_eq!(overview["by_type"][0]["workflow_type"], "desk");
    assert_eq!(overview["truncated"], false);
    assert_eq!(
        overview["scanned"], 0,
        "a reader of the whole type is answered from the tallies"
    );
    let (_, partial) = host
        .call(Method::GET, "/api/v1/overview", Some(VIEWER), None)
        .await;
    assert_eq!(partial["totals"]["running"], 1, "{partial}");
    // Counted from the readable instance; both rows were examined to find it.
    assert_eq!(partial["scanned"], 2, "{partial}");
    assert_eq!(
        partial["throughput"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["started"].as_u64().unwrap())
            .sum::<u64>(),
        1
    );
    let started: u64 = overview["throughput"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["started"].as_u64().unwrap())
        .sum();
    assert_eq!(started, 2);
    let (_, nothing) = host
        .call(Method::GET, "/api/v1/overview", Some(OUTSIDER), None)
        .await;
    assert_eq!(nothing["totals"]["running"], 0);
    // What each role may do to an instance, as the dashboard offers it.
    let allowed = |token| {
        let host = &host;
        async move {
            let (_, view) = host
                .call(Method::GET, "/api/v1/instances/live-1", Some(token), None)
                .await;
            view["allowed_actions"].clone()
        }
    };
    assert_eq!(allowed(AUDITOR).await, json!([]));
    assert_eq!(
        allowed(OPERATOR).await,
        json!(["signal", "update", "cancel", "terminate"])
    );
    // Text search on ids.
    let (_, found) = host
        .call(
            Method::GET,
            "/api/v1/instances?id_contains=e-2",
            Some(AUDITOR),
            None,
        )
        .await;
    let ids: Vec<&str> = found["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["live-2"]);
    drop(feed);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_counts_first_then_acts_on_what_the_filter_selects_and_says_so_in_each_history() {
    let host = host().await;
    for n in 0..3 {
        let id = format!("sweep-{n}");
        host.start(&id).await;
        host.wait_state(&id, "open for Ada").await;
    }
    host.start("keep-1").await;
    let request = |dry_run: bool| {
        json!({
            "action": "cancel",
            "filter": { "workflow_type": "desk", "id_contains": "sweep-" },
            "reason": "closing the quarter",
            "dry_run": dry_run
        })
    };
    // The dry run counts what the caller may act on, and changes nothing.
    let (status, counted) = host
        .call(
            Method::POST,
            "/api/v1/batches",
            Some(OPERATOR),
            Some(request(true)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{counted}");
    assert_eq!(counted["matched"], 3, "{counted}");
    assert!(counted["id"].is_null());
    let (_, clerk) = host
        .call(
            Method::POST,
            "/api/v1/batches",
            Some(CLERK),
            Some(request(true)),
        )
        .await;
    assert_eq!(clerk["matched"], 0, "the clerk may cancel nothing: {clerk}");
    // The list's `waiting` filter narrows a batch too: none of these waits on a person.
    let (_, waiting) = host
        .call(
            Method::POST,
            "/api/v1/batches",
            Some(OPERATOR),
            Some(json!({
                "action": "cancel",
                "filter": { "workflow_type": "desk", "id_contains": "sweep-", "waiting": "person" },
                "reason": "closing the quarter",
                "dry_run": true
            })),
        )
        .await;
    assert_eq!(waiting["matched"], 0, "{waiting}");
    let history = |id: &str| {
        let id = id.to_owned();
        let host = &host;
        async move {
            host.call(
                Method::GET,
                &format!("/api/v1/instances/{id}/history"),
                Some(AUDITOR),
                None,
            )
            .await
            .1
        }
    };
    let before = history("sweep-0").await;
    assert!(!before.to_string().contains("CancelRequested"));

    let (status, started) = host
        .call(
            Method::POST,
            "/api/v1/batches",
            Some(OPERATOR),
            Some(request(false)),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let batch = started["id"].as_str().unwrap().to_owned();
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, view) = host
                .call(
                    Method::GET,
                    &format!("/api/v1/batches/{batch}"),
                    Some(AUDITOR),
                    None,
                )
                .await;
            if view["finished"] == true {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (
            &done["matched"],
            &done["done"],
            &done["failed"],
            &done["actor"]
        ),
        (&json!(3), &json!(3), &json!(0), &json!("olga")),
        "{done}"
    );
    // Each history records the cancellation, by its caller, naming the batch.
    for n in 0..3 {
        let events = history(&format!("sweep-{n}")).await;
        let cancel = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == "CancelRequested")
            .unwrap_or_else(|| panic!("sweep-{n}: {events}"));
        assert_eq!(cancel["actor"]["id"], "olga");
        assert_eq!(
            cancel["body"]["reason"],
            format!("batch {batch}: closing the quarter")
        );
    }
    assert!(!history("keep-1")
        .await
        .to_string()
        .contains("CancelRequested"));
    let (_, all) = host
        .call(Method::GET, "/api/v1/batches", Some(AUDITOR), None)
        .await;
    assert_eq!(all[0]["id"], batch.as_str());
    // A caller who did not run it and may not read the type sees no trace of it: its
    // filter, reason and errors name instances they may not read.
    let (status, hidden) = host
        .call(
            Method::GET,
            &format!("/api/v1/batches/{batch}"),
            Some(CLERK),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{hidden}");
    let (_, theirs) = host
        .call(Method::GET, "/api/v1/batches", Some(CLERK), None)
        .await;
    assert_eq!(theirs, json!([]));

    // Refused before anything is written: no reason, a signal batch without a signal.
    for bad in [
        json!({ "action": "terminate", "reason": " " }),
        json!({ "action": "signal", "reason": "x" }),
        json!({ "action": "cancel", "reason": "x", "signal": "note" }),
    ] {
        let (status, refused) = host
            .call(Method::POST, "/api/v1/batches", Some(OPERATOR), Some(bad))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    }
    let (status, _) = host
        .call(Method::POST, "/api/v1/batches", None, Some(request(true)))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_counts_the_period_and_refuses_one_that_ends_before_it_starts() {
    let host = host().await;
    host.start("r-1").await;
    host.wait_state("r-1", "open for Ada").await;
    let (status, report) = host
        .call(
            Method::GET,
            "/api/v1/types/desk/report?bucket=hour",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["totals"]["started"], 1, "{report}");
    assert_eq!(report["totals"]["open"], 1, "{report}");
    assert_eq!(report["bucket_ms"], 3_600_000);
    assert_eq!(report["buckets"].as_array().unwrap().len(), 7 * 24 + 1);
    let (status, refused) = host
        .call(
            Method::GET,
            "/api/v1/types/desk/report?created_from_ms=10&created_until_ms=5",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let (status, _) = host
        .call(
            Method::GET,
            "/api/v1/types/desk/report?bucket=week",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    host.stop().await;
}

/// A test-only P-256 key pair (generated for this test with openssl; signs nothing else).
const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3j+N1CdHKSiSEwcH
HMSKdHXnilYwXYyCyVL2r6etLryhRANCAAQGfDk6Rjz7U4ll4gnfF2rx8ctZSUe4
Nb4ubLrqY88WWiJmWBCxO4B2VWDKl+MUb7J/rENc4bUTw3NmGrRSJBeH
-----END PRIVATE KEY-----
";
const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEBnw5OkY8+1OJZeIJ3xdq8fHLWUlH
uDW+Lmy66mPPFloiZlgQsTuAdlVgypfjFG+yf6xDXOG1E8NzZhq0UiQXhw==
-----END PUBLIC KEY-----
";
const SECRET: &[u8] = b"the-shared-secret-of-the-identity-provider";

fn signed(claims: Value, key: &jsonwebtoken::EncodingKey, alg: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).unwrap()
}

fn in_an_hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_web_tokens_are_verified_against_the_configured_keys() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Roles::new()
        .allow_any_type(Verb::Start, ["operator"])
        .allow_any_type(Verb::Read, ["operator", "auditor"]);
    let rt = Runtime::builder()
        .workflow(desk)
        .signal(NOTE)
        .update(AMOUNT)
        .policy(Arc::new(policy))
        .open(dir.path().join("jwt.redb"))
        .await
        .unwrap();
    let jwt = cairn::server::Jwt::hs256(SECRET)
        .unwrap()
        .issuer("https://login.example.com")
        .audience("cairn")
        .or(cairn::server::Jwt::es256_pem(EC_PUBLIC.as_bytes()).unwrap());
    let mut tokens = Tokens::new();
    tokens
        .add(AUDITOR, Actor::new("audrey", ["auditor"]))
        .unwrap();
    let running = rt
        .http_server(tokens.with_jwt(jwt))
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", running.addr());
    let http = reqwest::Client::new();
    let me = |token: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let response = http
                .get(format!("{base}/api/v1/me"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            (status, body)
        }
    };
    let hs = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let good = json!({ "sub": "judy", "roles": ["operator"], "exp": in_an_hour(),
                       "iss": "https://login.example.com", "aud": "cairn" });
    let (status, who) = me(signed(good.clone(), &hs, jsonwebtoken::Algorithm::HS256)).await;
    assert_eq!(status, StatusCode::OK, "{who}");
    assert_eq!(
        (&who["id"], &who["roles"]),
        (&json!("judy"), &json!(["operator"]))
    );
    // The static tokens still work beside JWTs.
    assert_eq!(me(AUDITOR.to_owned()).await.0, StatusCode::OK);

    // A write by a JWT's actor records that actor.
    let response = http
        .post(format!("{base}/api/v1/instances"))
        .bearer_auth(signed(good.clone(), &hs, jsonwebtoken::Algorithm::HS256))
        .header("content-type", "application/json")
        .body(
            json!({ "workflow_type": "desk", "id": "jwt-1", "input": { "customer": "Jo", "amount": 1 } })
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let history = rt.engine().history("jwt-1").await.unwrap();
    assert_eq!(history[0].record.actor.as_ref().unwrap().id, "judy");

    // ES256 from the other configured key; roles as one space-separated string.
    let es = jsonwebtoken::EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let (status, who) = me(signed(
        json!({ "sub": "erin", "roles": "auditor operator", "exp": in_an_hour() }),
        &es,
        jsonwebtoken::Algorithm::ES256,
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{who}");
    assert_eq!(who["roles"], json!(["auditor", "operator"]));

    // Refused, each with a reason: expired, wrong secret, wrong issuer, wrong audience,
    // no expiry, no subject, unsigned, garbage.
    let mut expired = good.clone();
    expired["exp"] = json!(1_000_000_000u64);
    let mut other_issuer = good.clone();
    other_issuer["iss"] = json!("https://evil.example.com");
    let mut other_audience = good.clone();
    other_audience["aud"] = json!("billing");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    let wrong_key = jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-xx");
    let unsigned = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(good.to_string())
        )
    };
    for (what, token) in [
        (
            "expired",
            signed(expired, &hs, jsonwebtoken::Algorithm::HS256),
        ),
        (
            "wrong key",
            signed(good.clone(), &wrong_key, jsonwebtoken::Algorithm::HS256),
        ),
        (
            "issuer",
            signed(other_issuer, &hs, jsonwebtoken::Algorithm::HS256),
        ),
        (
            "audience",
            signed(other_audience, &hs, jsonwebtoken::Algorithm::HS256),
        ),
        (
            "no exp",
            signed(no_exp, &hs, jsonwebtoken::Algorithm::HS256),
        ),
        (
            "no sub",
            signed(no_sub, &hs, jsonwebtoken::Algorithm::HS256),
        ),
        ("unsigned", unsigned),
        ("garbage", "a.b.c".to_owned()),
    ] {
        let (status, refused) = me(token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {refused}");
        assert_eq!(refused["code"], "unauthenticated", "{what}");
        assert!(!refused["message"].as_str().unwrap().is_empty(), "{what}");
    }
    running.stop().await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_waiting_on_a_person_are_listed_from_their_open_steps() {
    let host = host().await;
    for n in 0..3 {
        let id = format!("w-{n}");
        host.start(&id).await;
        host.wait_state(&id, "open for Ada").await;
    }
    // w-1 goes to review: a task opens for it.
    host.call(
        Method::POST,
        "/api/v1/instances/w-1/signals/note",
        Some(OPERATOR),
        Some(json!("review")),
    )
    .await;
    host.task_of("w-1").await;
    let ids = |page: &Value| -> Vec<String> {
        page["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, person) = host
        .call(
            Method::GET,
            "/api/v1/instances?waiting=person",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{person}");
    assert_eq!(ids(&person), ["w-1"]);
    let (_, either) = host
        .call(
            Method::GET,
            "/api/v1/instances?waiting=timer,person&id_contains=w-",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(ids(&either), ["w-1"]);
    let (_, none) = host
        .call(
            Method::GET,
            "/api/v1/instances?waiting=timer",
            Some(AUDITOR),
            None,
        )
        .await;
    assert!(ids(&none).is_empty());
    // The others wait in `select!` on a note or an amount change: a signal wait without
    // a deadline, which the history does not show; the host knows.
    let (_, messages) = host
        .call(
            Method::GET,
            "/api/v1/instances?waiting=signal&id_contains=w-",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(ids(&messages), ["w-0", "w-2"]);
    // Finished instances wait for nothing.
    let (_, finished) = host
        .call(
            Method::GET,
            "/api/v1/instances?waiting=person&status=completed",
            Some(AUDITOR),
            None,
        )
        .await;
    assert!(ids(&finished).is_empty() && finished["next"].is_null());
    // A page of one continues after the instance it stopped at.
    let (_, first) = host
        .call(
            Method::GET,
            "/api/v1/instances?waiting=person&limit=1",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(ids(&first), ["w-1"]);
    let next = first["next"].as_str().unwrap();
    let (_, rest) = host
        .call(
            Method::GET,
            &format!("/api/v1/instances?waiting=person&limit=1&cursor={next}"),
            Some(AUDITOR),
            None,
        )
        .await;
    assert!(ids(&rest).is_empty(), "{rest}");
    let (status, refused) = host
        .call(
            Method::GET,
            "/api/v1/instances?waiting=lunch",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused["message"].as_str().unwrap().contains("not a wait"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_views_are_shared_with_roles_and_kept_in_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("views.json");
    let rt = Runtime::builder()
        .workflow(desk)
        .open(dir.path().join("views.redb"))
        .await
        .unwrap();
    let serve = |rt: &Runtime| {
        let mut tokens = Tokens::new();
        tokens
            .add(OPERATOR, Actor::new("olga", ["operator", "l1"]))
            .unwrap();
        tokens
            .add(AUDITOR, Actor::new("audrey", ["auditor"]))
            .unwrap();
        tokens.add(CLERK, Actor::new("cleo", ["l1"])).unwrap();
        rt.http_server(tokens).views_file(&file).unwrap()
    };
    let running = serve(&rt)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", running.addr());
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, token: &str, body: Option<Value>| {
        let request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(body.to_string()),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let bytes = response.bytes().await.unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (status, view) = call(
        Method::POST,
        "/api/v1/views",
        OPERATOR,
        Some(json!({ "name": "Overdue reviews", "query": "workflow_type=desk&waiting=overdue", "roles": ["l1"] })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    let (_, private) = call(
        Method::POST,
        "/api/v1/views",
        OPERATOR,
        Some(json!({ "name": "Mine", "query": "status=running" })),
    )
    .await;
    let names = |views: &Value| -> Vec<String> {
        views
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // The owner sees both; the clerk (l1) the shared one; the auditor none.
    assert_eq!(
        names(&call(Method::GET, "/api/v1/views", OPERATOR, None).await.1),
        ["Overdue reviews", "Mine"]
    );
    assert_eq!(
        names(&call(Method::GET, "/api/v1/views", CLERK, None).await.1),
        ["Overdue reviews"]
    );
    assert!(names(&call(Method::GET, "/api/v1/views", AUDITOR, None).await.1).is_empty());

    // Refused: a role the owner lacks, a key the list does not have, no name.
    for (bad, why) in [
        (
            json!({ "name": "x", "query": "status=running", "roles": ["admin"] }),
            "not one of your roles",
        ),
        (
            json!({ "name": "x", "query": "owner=olga" }),
            "not a filter of the instance list",
        ),
        (
            json!({ "name": " ", "query": "status=running" }),
            "1 to 80 characters",
        ),
    ] {
        let (status, refused) = call(Method::POST, "/api/v1/views", OPERATOR, Some(bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        assert!(
            refused["message"].as_str().unwrap().contains(why),
            "{refused}"
        );
    }
    // Only the owner deletes; someone it is shared with is refused.
    let shared_id = view["id"].as_str().unwrap();
    let (status, _) = call(
        Method::DELETE,
        &format!("/api/v1/views/{shared_id}"),
        CLERK,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let private_id = private["id"].as_str().unwrap();
    let (status, _) = call(
        Method::DELETE,
        &format!("/api/v1/views/{private_id}"),
        CLERK,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not visible to the clerk");
    let (status, _) = call(
        Method::DELETE,
        &format!("/api/v1/views/{private_id}"),
        OPERATOR,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    running.stop().await;

    // A new server on the same file has the views that were kept.
    let again = serve(&rt)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let response = reqwest::Client::new()
        .get(format!("http://{}/api/v1/views", again.addr()))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    let kept: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(names(&kept), ["Overdue reviews"]);
    again.stop().await;
    // A damaged file is refused with a message, not silently emptied.
    std::fs::write(&file, b"{ not views").unwrap();
    let refused = Runtime::http_server(&rt, Tokens::new())
        .views_file(&file)
        .unwrap_err();
    assert!(
        refused.contains("is not a file of saved views"),
        "{refused}"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_attached_listed_and_downloaded_with_their_type() {
    let host = host().await;
    host.start("doc-case").await;
    host.wait_state("doc-case", "open for Ada").await;
    let attach = |body: &'static str, token: &'static str| {
        let request = host
            .http
            .post(format!(
                "{}/api/v1/instances/doc-case/documents/notes.txt",
                host.base
            ))
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let bytes = response.bytes().await.unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (status, first) = attach("first notes", OPERATOR).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(
        (&first["version"], &first["bytes"]),
        (&json!(1), &json!(11))
    );
    let (_, second) = attach("second notes", OPERATOR).await;
    assert_eq!(second["version"], 2);
    // Attaching needs the `attach` verb: the auditor reads, and is refused here.
    let (status, refused) = attach("sneaky", AUDITOR).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");

    let (_, listed) = host
        .call(
            Method::GET,
            "/api/v1/instances/doc-case/documents",
            Some(AUDITOR),
            None,
        )
        .await;
    let versions: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(listed[0]["content_type"], "text/plain");
    assert_eq!(listed[0]["sha256"].as_str().unwrap().len(), 64);

    let download = |query: &str| {
        let request = host
            .http
            .get(format!(
                "{}/api/v1/instances/doc-case/documents/notes.txt{query}",
                host.base
            ))
            .bearer_auth(AUDITOR);
        async move { request.send().await.unwrap() }
    };
    let latest = download("").await;
    assert_eq!(latest.status(), StatusCode::OK);
    assert_eq!(latest.headers()["content-type"], "text/plain");
    assert_eq!(latest.headers()["x-content-type-options"], "nosniff");
    assert_eq!(latest.headers()["content-security-policy"], "sandbox");
    assert_eq!(latest.text().await.unwrap(), "second notes");
    assert_eq!(
        download("?version=1").await.text().await.unwrap(),
        "first notes"
    );
    assert_eq!(download("?version=9").await.status(), StatusCode::NOT_FOUND);
    let (status, missing) = host
        .call(
            Method::GET,
            "/api/v1/instances/doc-case/documents/other.pdf",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    assert_eq!(missing["code"], "document_not_found");

    // The history names who attached each version.
    let (_, events) = host
        .call(
            Method::GET,
            "/api/v1/instances/doc-case/history",
            Some(AUDITOR),
            None,
        )
        .await;
    let attached: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "DocumentAttached")
        .collect();
    assert_eq!(attached.len(), 2);
    assert!(attached.iter().all(|e| e["actor"]["id"] == "olga"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_listed_paused_resumed_and_triggered_by_the_roles_that_may() {
    let host = host().await;
    host.nightly().await;
    // Who sees what.
    let (_, none) = host
        .call(Method::GET, "/api/v1/schedules", Some(OUTSIDER), None)
        .await;
    assert_eq!(none["schedules"], json!([]));
    let (status, refused) = host
        .call(
            Method::GET,
            "/api/v1/schedules/nightly",
            Some(OUTSIDER),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let (_, listed) = host
        .call(Method::GET, "/api/v1/schedules", Some(AUDITOR), None)
        .await;
    let nightly = &listed["schedules"][0];
    assert_eq!(nightly["id"], "nightly");
    assert_eq!(nightly["workflow_type"], "desk");
    assert_eq!(nightly["every_ms"], 86_400_000);
    assert_eq!(nightly["input"]["customer"], "Night");
    assert_eq!(nightly["paused"], Value::Null);
    assert_eq!(
        nightly["allowed_actions"],
        json!([]),
        "an auditor only reads"
    );
    // An auditor may not act; nothing changes.
    let (status, _) = host
        .call(
            Method::POST,
            "/api/v1/schedules/nightly/pause",
            Some(AUDITOR),
            Some(json!({ "reason": "curious" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(host.rt.schedules()[0].1.paused.is_none());
    // Bad requests.
    let (status, unknown) = host
        .call(
            Method::POST,
            "/api/v1/schedules/weekly/pause",
            Some(OPERATOR),
            Some(json!({ "reason": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(unknown["code"], "CAIRN-E0027", "{unknown}");
    let (status, _) = host
        .call(
            Method::POST,
            "/api/v1/schedules/nightly/pause",
            Some(OPERATOR),
            Some(json!({ "reason": "  " })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = host
        .call(
            Method::POST,
            "/api/v1/schedules/nightly/pause",
            Some(OPERATOR),
            Some(json!({ "reason": "x", "until": "never" })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields are refused"
    );
    // An operator pauses it; the pause names them.
    let (status, paused) = host
        .call(
            Method::POST,
            "/api/v1/schedules/nightly/pause",
            Some(OPERATOR),
            Some(json!({ "reason": "ledger migration" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"]["by"], "olga");
    assert_eq!(paused["paused"]["note"], "ledger migration");
    assert_eq!(paused["allowed_actions"], json!(["resume", "trigger"]));
    // Started now while paused, by the operator, recorded as theirs.
    let (status, triggered) = host
        .call(
            Method::POST,
            "/api/v1/schedules/nightly/trigger",
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{triggered}");
    let instance = triggered["id"].as_str().unwrap();
    assert!(instance.starts_with("nightly@"), "{instance}");
    let (_, history) = host
        .call(
            Method::GET,
            &format!("/api/v1/instances/{instance}/history"),
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(history[0]["actor"]["id"], "olga", "{history}");
    // Resumed.
    let (status, resumed) = host
        .call(
            Method::POST,
            "/api/v1/schedules/nightly/resume",
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resumed["paused"], Value::Null);
    assert_eq!(resumed["allowed_actions"], json!(["pause", "trigger"]));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_over_the_limit_is_refused_as_json() {
    // Sent without a length, a body over the limit is only found too large while it is
    // read: that refusal came as axum's plain text, not `{code, message}`.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let host = host().await;
    host.start("doc-big").await;
    let addr = host.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/instances/doc-big/documents/scan.pdf HTTP/1.1\r\nhost: {addr}\r\n\
         authorization: Bearer {OPERATOR}\r\ncontent-type: application/pdf\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..20 {
        // The server may answer and close before it has read it all.
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|_| panic!("not a JSON refusal: {answer}"));
    assert_eq!(body["code"], "body_too_large", "{body}");
    // Nothing was attached.
    let (_, listed) = host
        .call(
            Method::GET,
            "/api/v1/instances/doc-big/documents",
            Some(AUDITOR),
            None,
        )
        .await;
    assert_eq!(listed, json!([]), "{listed}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_take_every_saved_view_and_roles_are_kept_once() {
    let host = host().await;
    let save = |token: &'static str, name: String, roles: Value| {
        let host = &host;
        async move {
            host.call(
                Method::POST,
                "/api/v1/views",
                Some(token),
                Some(json!({ "name": name, "query": "", "roles": roles })),
            )
            .await
        }
    };
    let (status, first) = save(CLERK, "v-0".into(), json!(["l1", "l1", "l1"])).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["roles"], json!(["l1"]), "{first}");
    for n in 1..cairn::server::VIEWS_PER_OWNER_MAX {
        let (status, saved) = save(CLERK, format!("v-{n}"), json!([])).await;
        assert_eq!(status, StatusCode::CREATED, "{saved}");
    }
    let (status, refused) = save(CLERK, "one too many".into(), json!([])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("per owner"),
        "{refused}"
    );
    // Someone else still has room.
    let (status, theirs) = save(OPERATOR, "mine".into(), json!([])).await;
    assert_eq!(status, StatusCode::CREATED, "{theirs}");
    host.stop().await;
}
