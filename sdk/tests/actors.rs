//! Actors and permissions: every call made through `rt.acting_as(actor)` is checked
//! against the runtime's policy before anything is read or written (a denial writes
//! nothing), and every event it records names the actor, so the history answers "who did
//! this".

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::Arc;
use std::time::Duration;

use cairn::events::EventKind;
use cairn::policy::{Roles, Verb};
use cairn::{workflow, Actor, Ctx, Error, Runtime, Signal, TaskKind, WorkflowError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const DOCUMENTS: Signal<String> = Signal::new("documents");

#[derive(Serialize, Deserialize, JsonSchema)]
struct Verdict {
    grant: bool,
}

const REVIEW: TaskKind<String, Verdict> = TaskKind::new("review");

#[workflow]
async fn permit(ctx: Ctx, site: String) -> Result<bool, WorkflowError> {
    let documents = ctx.receive(DOCUMENTS).await?;
    let task = REVIEW
        .task(format!("{site}: {documents}"))
        .roles(["planner"]);
    Ok(ctx.human_task(task).await?.decision.grant)
}

fn policy() -> Roles {
    Roles::new()
        .allow(Verb::Start, "permit", ["citizen"])
        .allow(Verb::Signal, "permit", ["citizen"])
        .allow(Verb::Read, "permit", ["citizen", "planner", "auditor"])
        .allow(Verb::Task, "permit", ["planner"])
        .admin("admin")
}

async fn open(dir: &tempfile::TempDir) -> Runtime {
    Runtime::builder()
        .workflow(permit)
        .signal(DOCUMENTS)
        .policy(Arc::new(policy()))
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap()
}

fn actors(history: &[cairn::store::StoredEvent]) -> Vec<(&'static str, Option<String>)> {
    history
        .iter()
        .map(|event| {
            (
                event.record.kind.name(),
                event.record.actor.as_ref().map(|actor| actor.id.clone()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_do_what_is_checked_first_and_recorded_with_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir).await;
    let citizen = Actor::new("cem", ["citizen"]);
    let planner = Actor::new("pia", ["planner"]);
    let auditor = Actor::new("aud", ["auditor"]);

    // A planner may not file an application: refused, and nothing exists.
    let denied = rt
        .acting_as(&planner)
        .start(permit, "P-0", "Elm St".into())
        .await
        .unwrap_err();
    assert!(matches!(denied, Error::Forbidden { .. }), "{denied}");
    assert!(denied.to_string().contains("citizen"), "{denied}");
    assert!(matches!(
        rt.status("P-0").await.unwrap_err(),
        Error::InstanceNotFound(_)
    ));

    let handle = rt
        .acting_as(&citizen)
        .start(permit, "P-1", "Elm St".into())
        .await
        .unwrap();
    let before = rt.history("P-1").await.unwrap().len();
    // An auditor reads but may not signal, cancel or terminate.
    let desk = rt.acting_as(&auditor);
    assert_eq!(desk.status("P-1").await.unwrap().id, "P-1");
    for refused in [
        desk.send("P-1", DOCUMENTS, &"forged".to_owned()).await,
        desk.cancel("P-1", "no").await,
        desk.terminate("P-1", "no").await,
    ] {
        assert!(
            matches!(refused, Err(Error::Forbidden { .. })),
            "{refused:?}"
        );
    }
    assert_eq!(
        rt.history("P-1").await.unwrap().len(),
        before,
        "denials write nothing"
    );
    // Someone with no role at all may not even read it.
    let stranger = rt.acting_as(&Actor::new("eve", Vec::<String>::new()));
    assert!(matches!(
        stranger.history("P-1").await,
        Err(Error::Forbidden { .. })
    ));

    rt.acting_as(&citizen)
        .send_json("P-1", "documents", serde_json::json!("site plan v2"))
        .await
        .unwrap();
    // The task: the policy lets planners act on it, the task its candidates.
    let mut task = None;
    for _ in 0..2000 {
        task = rt
            .acting_as(&planner)
            .tasks(None, 10)
            .await
            .unwrap()
            .rows
            .first()
            .map(|r| r.id());
        if task.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let task = task.unwrap();
    let impostor = Actor::new("cem", ["citizen", "planner_in_training"]);
    assert!(matches!(
        rt.complete(&impostor, &task, &Verdict { grant: true })
            .await,
        Err(Error::Forbidden { .. })
    ));
    rt.acting_as(&planner).claim(&task).await.unwrap();
    rt.acting_as(&planner)
        .complete(&task, &Verdict { grant: true })
        .await
        .unwrap();
    assert!(handle.result().await.unwrap().unwrap());

    let history = rt.acting_as(&auditor).history("P-1").await.unwrap();
    let recorded = actors(&history);
    let by = |name: &str| {
        recorded
            .iter()
            .find(|(kind, _)| *kind == name)
            .and_then(|(_, actor)| actor.clone())
    };
    assert_eq!(by("WorkflowStarted").as_deref(), Some("cem"));
    assert_eq!(by("SignalReceived").as_deref(), Some("cem"));
    assert_eq!(by("TaskChanged").as_deref(), Some("pia"));
    assert_eq!(by("TaskCompleted").as_deref(), Some("pia"));
    // What the run records itself names nobody.
    assert_eq!(by("TaskCreated"), None);
    assert_eq!(by("WorkflowCompleted"), None);
    // The roles are recorded too: the history says as what they acted.
    let started = history[0].record.actor.clone().unwrap();
    assert_eq!(started.roles, ["citizen"]);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_may_cancel_and_terminate_and_is_named_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir).await;
    let citizen = Actor::new("cem", ["citizen"]);
    let admin = Actor::new("root", ["admin"]);
    rt.acting_as(&citizen)
        .start(permit, "P-2", "Oak St".into())
        .await
        .unwrap();
    rt.acting_as(&citizen)
        .start(permit, "P-3", "Ash St".into())
        .await
        .unwrap();
    rt.acting_as(&admin)
        .cancel("P-2", "withdrawn")
        .await
        .unwrap();
    rt.acting_as(&admin)
        .terminate("P-3", "duplicate")
        .await
        .unwrap();
    let cancelled = rt.history("P-2").await.unwrap();
    let request = cancelled
        .iter()
        .find(|event| matches!(event.record.kind, EventKind::CancelRequested { .. }))
        .unwrap();
    assert_eq!(request.record.actor.as_ref().unwrap().id, "root");
    let terminated = rt.history("P-3").await.unwrap();
    let last = terminated.last().unwrap();
    assert!(matches!(
        last.record.kind,
        EventKind::WorkflowTerminated { .. }
    ));
    assert_eq!(last.record.actor.as_ref().unwrap().id, "root");
    // The hosting program's own calls name nobody and are not checked.
    rt.start(permit, "P-4", "Fir St".into()).await.unwrap();
    assert_eq!(rt.history("P-4").await.unwrap()[0].record.actor, None);
    rt.shutdown().await;
}
