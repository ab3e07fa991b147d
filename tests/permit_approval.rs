//! The permit example's process: three departments review in parallel; one asking for
//! more documents sends the case back to the citizen and a new round starts once they
//! resubmit; a rejection ends it; the permit officer grants; documents are attached in
//! versions, and only roles the policy names may act.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/permit_approval/process.rs"]
#[allow(dead_code)]
mod process;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::notify::{Notification, Notifier};
use cairn::{Actor, Document, Runtime, TaskId, TaskQuery};
use process::{
    permit_approval, Application, Decision, Outcome, Review, Verdict, DEPARTMENTS, SUBMITTED,
};

#[derive(Default)]
struct Heard(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl Notifier for Heard {
    async fn notify(&self, n: &Notification) -> Result<(), String> {
        self.0.lock().unwrap().push(n.topic.name().to_owned());
        Ok(())
    }
}

async fn office() -> (Runtime, Arc<Heard>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let heard = Arc::new(Heard::default());
    let rt = Runtime::builder()
        .workflow(permit_approval)
        .signal(SUBMITTED)
        .notifier(heard.clone())
        .open(dir.path().join("permits.redb"))
        .await
        .unwrap();
    (rt, heard, dir)
}

fn application() -> Application {
    Application {
        applicant: "cem".into(),
        site: "12 Elm St".into(),
        works: "garden studio".into(),
    }
}

async fn submit(rt: &Runtime, id: &str) {
    rt.send(id, SUBMITTED, &"documents complete".to_owned())
        .await
        .unwrap();
}

/// The open task of `role`, once it is there.
async fn task_for(rt: &Runtime, role: &str) -> TaskId {
    let actor = Actor::new(format!("{role}-clerk"), [role]);
    for _ in 0..2000 {
        if let Some(row) = rt
            .tasks(&TaskQuery::for_actor(&actor))
            .await
            .unwrap()
            .rows
            .first()
        {
            return row.id();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no task for {role}");
}

async fn review(rt: &Runtime, role: &str, verdict: Verdict) {
    let task = task_for(rt, role).await;
    let clerk = Actor::new(format!("{role}-clerk"), [role]);
    rt.complete(
        &clerk,
        &task,
        &Review {
            verdict,
            note: format!("{role} says {verdict:?}"),
        },
    )
    .await
    .unwrap();
}

async fn outcome(rt: &Runtime, id: &str) -> Outcome {
    tokio::time::timeout(
        Duration::from_secs(20),
        rt.handle(permit_approval, id).result(),
    )
    .await
    .expect("the case ends")
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_more_documents_loops_back_and_the_second_round_grants() {
    let (rt, heard, _dir) = office().await;
    rt.start(permit_approval, "P-1", application())
        .await
        .unwrap();
    rt.attach(
        "P-1",
        Document::new("site-plan.pdf", "application/pdf", b"v1".to_vec()),
    )
    .await
    .unwrap();
    submit(&rt, "P-1").await;
    // All three departments have a task at once.
    for department in DEPARTMENTS {
        task_for(&rt, department).await;
    }
    review(&rt, "planning", Verdict::Approve).await;
    review(&rt, "fire_safety", Verdict::MoreDocuments).await;
    review(&rt, "environment", Verdict::Approve).await;
    // Back to the citizen: a new version of the plan, resubmitted.
    for _ in 0..2000 {
        if heard
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|t| t == "permit.documents_requested")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let v2 = rt
        .attach(
            "P-1",
            Document::new(
                "site-plan.pdf",
                "application/pdf",
                b"v2 with escape".to_vec(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    submit(&rt, "P-1").await;
    for department in DEPARTMENTS {
        review(&rt, department, Verdict::Approve).await;
    }
    let officer = Actor::new("olga", ["permit_officer"]);
    let decide = task_for(&rt, "permit_officer").await;
    rt.complete(
        &officer,
        &decide,
        &Decision {
            grant: true,
            conditions: "no works on Sundays".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        outcome(&rt, "P-1").await,
        Outcome::Granted {
            conditions: "no works on Sundays".into(),
            rounds: 2
        }
    );
    assert_eq!(rt.documents("P-1").await.unwrap().len(), 2);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_department_rejecting_refuses_the_permit() {
    let (rt, heard, _dir) = office().await;
    rt.start(permit_approval, "P-2", application())
        .await
        .unwrap();
    submit(&rt, "P-2").await;
    review(&rt, "planning", Verdict::Approve).await;
    review(&rt, "environment", Verdict::Reject).await;
    review(&rt, "fire_safety", Verdict::Approve).await;
    assert_eq!(
        outcome(&rt, "P-2").await,
        Outcome::Refused {
            by: "environment".into(),
            reason: "environment says Reject".into()
        }
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(heard
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|t| t == "permit.refused"));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_outside_the_schema_is_refused_and_the_task_stays_open() {
    let (rt, _heard, _dir) = office().await;
    rt.start(permit_approval, "P-3", application())
        .await
        .unwrap();
    submit(&rt, "P-3").await;
    let task = task_for(&rt, "planning").await;
    let clerk = Actor::new("pia", ["planning"]);
    let refused = rt
        .complete_json(
            &clerk,
            &task,
            serde_json::json!({ "verdict": "maybe", "note": "?" }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, cairn::Error::InvalidDecision { .. }),
        "{refused}"
    );
    // A fire-safety clerk is not a candidate of the planning task.
    let other = Actor::new("finn", ["fire_safety"]);
    assert!(rt
        .complete(
            &other,
            &task,
            &Review {
                verdict: Verdict::Approve,
                note: String::new()
            }
        )
        .await
        .is_err());
    assert_eq!(task_for(&rt, "planning").await, task, "still open");
    rt.shutdown().await;
}
