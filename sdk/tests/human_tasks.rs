//! Human tasks: created by a workflow, listed in the inboxes of the people who may act
//! on them, claimed and completed with a decision checked against its schema; refused
//! requests write nothing; escalation tiers fire once, on business time, across restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::{Arc, LazyLock};
use std::time::{Duration, UNIX_EPOCH};

use cairn::calendar::{BusinessCalendar, BusinessTime};
use cairn::events::{EventKind, TaskChange};
use cairn::testing::VirtualClock;
use cairn::{
    workflow, Actor, Ctx, Deadline, Error, Escalate, Runtime, TaskId, TaskKind, TaskQuery,
    TaskStatus, WorkflowError,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Application {
    applicant: String,
    cents: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Verdict {
    approve: bool,
    /// Why; shown to the applicant.
    note: String,
}

const UNDERWRITE: TaskKind<Application, Verdict> = TaskKind::new("underwrite");

static OFFICE: LazyLock<Arc<BusinessCalendar>> =
    LazyLock::new(|| Arc::new(BusinessCalendar::new("Europe/Berlin").unwrap()));

#[workflow]
async fn loan(ctx: Ctx, application: Application) -> Result<String, WorkflowError> {
    let title = format!("Underwrite {}", application.applicant);
    let task = UNDERWRITE
        .task(application)
        .title(title)
        .roles(["underwriter"])
        .users(["carol"])
        .priority(2);
    let decided = ctx.human_task(task).await?;
    Ok(format!(
        "{} by {}: {}",
        if decided.decision.approve {
            "approved"
        } else {
            "rejected"
        },
        decided.by.id,
        decided.decision.note
    ))
}

/// L1 for two business days, then L2 for two more, then rejected by the runtime.
#[workflow]
async fn ticket(ctx: Ctx, application: Application) -> Result<String, WorkflowError> {
    let task = UNDERWRITE
        .task(application)
        .roles(["l1"])
        .due_in(Deadline::business(&OFFICE, BusinessTime::days(2)))
        .escalate_after(
            Deadline::business(&OFFICE, BusinessTime::days(2)),
            Escalate::to_roles(["l2"]),
        )
        .escalate_after(
            Deadline::business(&OFFICE, BusinessTime::days(4)),
            Escalate::Decide(Verdict {
                approve: false,
                note: "no answer in time".into(),
            }),
        );
    let decided = ctx.human_task(task).await?;
    Ok(format!(
        "{} by {} (tier {:?})",
        decided.decision.note, decided.by.id, decided.escalation
    ))
}

/// Tells whoever listens that the application was received.
#[workflow]
async fn announced(ctx: Ctx, application: Application) -> Result<(), WorkflowError> {
    ctx.notify("loan.received", &application).await;
    Ok(())
}

/// A task raced against a timer: the timer wins and the task is withdrawn.
#[workflow]
async fn hurried(ctx: Ctx, application: Application) -> Result<String, WorkflowError> {
    let task = ctx.human_task(UNDERWRITE.task(application).roles(["underwriter"]));
    let timer = ctx.sleep(Duration::from_secs(60));
    futures::pin_mut!(task, timer);
    Ok(match futures::future::select(task, timer).await {
        futures::future::Either::Left((decided, _)) => decided?.decision.note,
        futures::future::Either::Right((slept, _)) => {
            slept?;
            "too slow".into()
        }
    })
}

fn application() -> Application {
    Application {
        applicant: "Ada".into(),
        cents: 25_000_000,
    }
}

fn alice() -> Actor {
    Actor::new("alice", ["underwriter"])
}

fn verdict(approve: bool) -> Verdict {
    Verdict {
        approve,
        note: "fine".into(),
    }
}

async fn open(path: &std::path::Path, clock: Option<&VirtualClock>) -> Runtime {
    let mut builder = Runtime::builder()
        .workflow(loan)
        .workflow(ticket)
        .workflow(hurried)
        .workflow(announced);
    if let Some(clock) = clock {
        builder = builder.clock(Arc::new(clock.clone()));
    }
    builder.open_store(path).await.unwrap()
}

/// Waits until `actor`'s inbox lists `n` tasks, and returns their ids.
async fn inbox(rt: &Runtime, query: &TaskQuery, n: usize) -> Vec<TaskId> {
    for _ in 0..2000 {
        let page = rt.tasks(query).await.unwrap();
        if page.rows.len() == n {
            return page.rows.iter().map(|row| row.id()).collect();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the inbox never listed {n} tasks");
}

async fn events(rt: &Runtime, id: &str) -> Vec<EventKind> {
    rt.history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.record.kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_claims_and_completes_and_strangers_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), None).await;
    let handle = rt.start(loan, "loan-1", application()).await.unwrap();

    let tasks = inbox(&rt, &TaskQuery::for_actor(&alice()), 1).await;
    let id = tasks[0].clone();
    assert_eq!(id.instance, "loan-1");
    let by_name = rt
        .tasks(&TaskQuery::for_actor(&Actor::new(
            "carol",
            Vec::<String>::new(),
        )))
        .await
        .unwrap();
    assert_eq!(
        by_name.rows.len(),
        1,
        "a named candidate sees it without the role"
    );
    let stranger = Actor::new("mallory", ["clerk"]);
    assert!(rt
        .tasks(&TaskQuery::for_actor(&stranger))
        .await
        .unwrap()
        .rows
        .is_empty());
    let row = &rt.tasks(&TaskQuery::default()).await.unwrap().rows[0];
    assert_eq!(row.title, "Underwrite Ada");
    assert_eq!(row.priority, 2);

    let before = events(&rt, "loan-1").await.len();
    let refused = rt
        .complete(&stranger, &id, &verdict(true))
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Forbidden { .. }), "{refused}");
    assert_eq!(refused.code(), "CAIRN-E0023");
    let refused = rt.claim(&stranger, &id).await.unwrap_err();
    assert!(matches!(refused, Error::Forbidden { .. }), "{refused}");
    let invalid = rt
        .complete_json(&alice(), &id, serde_json::json!({ "approve": "yes" }))
        .await
        .unwrap_err();
    match &invalid {
        Error::InvalidDecision { problems, .. } => {
            assert!(
                problems.iter().any(|p| p.contains("approve")),
                "{problems:?}"
            );
            assert!(problems.iter().any(|p| p.contains("note")), "{problems:?}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        events(&rt, "loan-1").await.len(),
        before,
        "refused requests write nothing"
    );

    rt.claim(&alice(), &id).await.unwrap();
    rt.claim(&alice(), &id).await.unwrap();
    let bob = Actor::new("bob", ["underwriter"]);
    assert!(matches!(
        rt.complete(&bob, &id, &verdict(true)).await.unwrap_err(),
        Error::Forbidden { .. }
    ));
    let held = rt.tasks(&TaskQuery::for_actor(&bob)).await.unwrap();
    assert!(
        held.rows.is_empty(),
        "a held task leaves the others' inboxes"
    );
    rt.comment(&alice(), &id, "checked the payslips")
        .await
        .unwrap();
    rt.complete(&alice(), &id, &verdict(true)).await.unwrap();

    let result = handle.result().await.unwrap().unwrap();
    assert_eq!(result, "approved by alice: fine");
    assert!(rt
        .tasks(&TaskQuery::default())
        .await
        .unwrap()
        .rows
        .is_empty());
    let info = rt.task(&id).await.unwrap();
    assert!(matches!(info.status, TaskStatus::Completed { ref actor, .. } if actor.id == "alice"));
    assert_eq!(info.state.comments.len(), 1);
    let closed = rt
        .complete(&alice(), &id, &verdict(false))
        .await
        .unwrap_err();
    assert!(matches!(closed, Error::TaskClosed { .. }), "{closed}");

    // The history says who did what.
    let kinds = events(&rt, "loan-1").await;
    let actors: Vec<(&str, &str)> = kinds
        .iter()
        .filter_map(|kind| match kind {
            EventKind::TaskChanged { actor, change, .. } => Some((
                actor.id.as_str(),
                match change {
                    TaskChange::Claimed => "claimed",
                    TaskChange::Commented { .. } => "commented",
                    _ => "other",
                },
            )),
            EventKind::TaskCompleted { actor, .. } => Some((actor.id.as_str(), "completed")),
            _ => None,
        })
        .collect();
    assert_eq!(
        actors,
        [
            ("alice", "claimed"),
            ("alice", "commented"),
            ("alice", "completed")
        ]
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_completing_at_once_record_one_decision() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), None).await;
    let handle = rt.start(loan, "loan-2", application()).await.unwrap();
    let id = inbox(&rt, &TaskQuery::for_actor(&alice()), 1)
        .await
        .remove(0);
    let bob = Actor::new("bob", ["underwriter"]);
    let (alice, yes, no) = (alice(), verdict(true), verdict(false));
    let (a, b) = tokio::join!(rt.complete(&alice, &id, &yes), rt.complete(&bob, &id, &no));
    assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
    let loser = a.err().or(b.err()).unwrap();
    assert!(matches!(loser, Error::TaskClosed { .. }), "{loser}");
    handle.result().await.unwrap().unwrap();
    let completions = events(&rt, "loan-2")
        .await
        .iter()
        .filter(|kind| matches!(kind, EventKind::TaskCompleted { .. }))
        .count();
    assert_eq!(completions, 1);
    rt.shutdown().await;
}

#[tokio::test]
async fn escalation_tiers_fire_on_business_time_and_decide_last() {
    // Friday 2026-11-27 15:00 in Berlin.
    let friday_ms = 1_795_788_000 * 1000;
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_millis(friday_ms));
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), Some(&clock)).await;
    let handle = rt.start(ticket, "t-1", application()).await.unwrap();
    let l1 = Actor::new("lena", ["l1"]);
    let l2 = Actor::new("lars", ["l2"]);
    inbox(&rt, &TaskQuery::for_actor(&l1), 1).await;
    let row = rt
        .tasks(&TaskQuery::default())
        .await
        .unwrap()
        .rows
        .remove(0);
    // Two business days from Friday 15:00 is Tuesday 15:00 (14:00 UTC).
    assert_eq!(row.due_at_ms, Some(friday_ms + 4 * 86_400_000));
    assert_eq!(
        row.escalation_at_ms,
        [friday_ms + 4 * 86_400_000, friday_ms + 6 * 86_400_000]
    );

    let fired = tokio::time::timeout(Duration::from_secs(20), clock.skip_to_next_timer())
        .await
        .unwrap();
    assert_eq!(fired, friday_ms + 4 * 86_400_000);
    inbox(&rt, &TaskQuery::for_actor(&l2), 1).await;
    assert!(rt
        .tasks(&TaskQuery::for_actor(&l1))
        .await
        .unwrap()
        .rows
        .is_empty());

    tokio::time::timeout(Duration::from_secs(20), clock.skip_to_next_timer())
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), handle.result())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(result, "no answer in time by cairn (tier Some(1))");
    let changes: Vec<&'static str> = events(&rt, "t-1")
        .await
        .iter()
        .filter_map(|kind| match kind {
            EventKind::TaskChanged {
                change: TaskChange::Overdue,
                actor,
                ..
            } => {
                assert_eq!(actor.id, "cairn");
                Some("overdue")
            }
            EventKind::TaskChanged {
                change: TaskChange::Escalated { .. },
                ..
            } => Some("escalated"),
            EventKind::TaskCompleted { .. } => Some("decided"),
            _ => None,
        })
        .collect();
    // Due and the first tier at the same time: overdue first, each once.
    assert_eq!(changes, ["overdue", "escalated", "decided"]);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_escalation_due_while_the_host_was_down_fires_once_at_start() {
    let friday_ms = 1_795_788_000 * 1000;
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_millis(friday_ms));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = open(&path, Some(&clock)).await;
    rt.start(ticket, "t-2", application()).await.unwrap();
    inbox(&rt, &TaskQuery::for_actor(&Actor::new("lena", ["l1"])), 1).await;
    rt.shutdown().await;

    // Down over the first tier (Tuesday), back on Wednesday.
    clock.advance(Duration::from_secs(5 * 86_400));
    let rt = open(&path, Some(&clock)).await;
    let l2 = Actor::new("lars", ["l2"]);
    let id = inbox(&rt, &TaskQuery::for_actor(&l2), 1).await.remove(0);
    // Opened again: the tier is recorded, so it does not fire twice.
    rt.shutdown().await;
    let rt = open(&path, Some(&clock)).await;
    rt.claim(&l2, &id).await.unwrap();
    rt.complete(&l2, &id, &verdict(true)).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), rt.handle(ticket, "t-2").result())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(result, "fine by lars (tier None)");
    let escalations = events(&rt, "t-2")
        .await
        .iter()
        .filter(|kind| {
            matches!(
                kind,
                EventKind::TaskChanged {
                    change: TaskChange::Escalated { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(escalations, 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_instance_closes_its_open_task() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), None).await;
    let handle = rt.start(loan, "loan-3", application()).await.unwrap();
    let id = inbox(&rt, &TaskQuery::for_actor(&alice()), 1)
        .await
        .remove(0);
    rt.cancel("loan-3", "applicant withdrew").await.unwrap();
    let failed = handle.result().await.unwrap().unwrap_err();
    assert!(
        format!("{failed:?}").contains("applicant withdrew"),
        "{failed:?}"
    );
    assert!(rt
        .tasks(&TaskQuery::default())
        .await
        .unwrap()
        .rows
        .is_empty());
    assert!(matches!(
        rt.task(&id).await.unwrap().status,
        TaskStatus::Cancelled { .. }
    ));
    let closed = rt
        .complete(&alice(), &id, &verdict(true))
        .await
        .unwrap_err();
    assert!(matches!(closed, Error::TaskClosed { .. }), "{closed}");
    // The host recorded the cancellation while checking that the task was open, outside
    // the run's line of outcomes; the run then recorded where it took it, once, and a
    // replay of the history hands it back there. (Always-replay mode rebuilds the run
    // right after the cancellation, before the workflow sees it: the rebuilt run hands it
    // back from the history with nothing recorded after it, and records the take there.)
    let records = common::records_of(&rt, "loan-3").await;
    let cancelled = records
        .iter()
        .position(|r| matches!(r.kind, EventKind::StepCancelled { step: 1, .. }))
        .expect("the task's cancellation is recorded");
    let taken: Vec<_> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.kind, EventKind::TaskTaken { step: 1 }))
        .map(|(at, _)| at)
        .collect();
    assert_eq!(taken.len(), 1, "{records:#?}");
    assert!(taken.iter().all(|at| *at > cancelled), "{records:#?}");
    assert!(matches!(
        rt.replay(&records).await.unwrap(),
        cairn::audit::ReplayVerdict::Matches(_)
    ));
    rt.shutdown().await;
}

#[tokio::test]
async fn a_task_that_loses_a_race_is_withdrawn() {
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_795_788_000));
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), Some(&clock)).await;
    let handle = rt.start(hurried, "h-1", application()).await.unwrap();
    let id = inbox(&rt, &TaskQuery::for_actor(&alice()), 1)
        .await
        .remove(0);
    tokio::time::timeout(Duration::from_secs(20), clock.skip_to_next_timer())
        .await
        .unwrap();
    assert_eq!(handle.result().await.unwrap().unwrap(), "too slow");
    assert!(rt
        .tasks(&TaskQuery::default())
        .await
        .unwrap()
        .rows
        .is_empty());
    assert_eq!(rt.task(&id).await.unwrap().status, TaskStatus::Withdrawn);
    let closed = rt
        .complete(&alice(), &id, &verdict(true))
        .await
        .unwrap_err();
    assert!(matches!(closed, Error::TaskClosed { .. }), "{closed}");
    rt.shutdown().await;
}

/// Polls `future` once and drops it, as an HTTP handler whose client hung up does.
async fn poll_once_and_drop<F: std::future::Future>(future: F) {
    let mut future = std::pin::pin!(future);
    let _ = futures::poll!(future.as_mut());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_dropped_after_its_first_poll_still_reaches_the_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), None).await;
    let handle = rt.start(loan, "loan-4", application()).await.unwrap();
    let id = inbox(&rt, &TaskQuery::for_actor(&alice()), 1)
        .await
        .remove(0);
    poll_once_and_drop(rt.complete(&alice(), &id, &verdict(false))).await;
    let result = tokio::time::timeout(Duration::from_secs(20), handle.result())
        .await
        .expect("the committed decision reaches the workflow")
        .unwrap()
        .unwrap();
    assert_eq!(result, "rejected by alice: fine");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_delegation_and_a_release_dropped_after_their_first_poll_are_still_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), None).await;
    rt.start(loan, "loan-6", application()).await.unwrap();
    let id = inbox(&rt, &TaskQuery::for_actor(&alice()), 1)
        .await
        .remove(0);
    rt.claim(&alice(), &id).await.unwrap();
    poll_once_and_drop(rt.delegate(&alice(), &id, "carol")).await;
    let until = |holder: Option<&'static str>| {
        let (rt, id) = (&rt, &id);
        async move {
            tokio::time::timeout(Duration::from_secs(20), async {
                while rt.task(id).await.unwrap().state.assignee.as_deref() != holder {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the task never came to be held by {holder:?}"));
        }
    };
    until(Some("carol")).await;
    let carol = Actor::new("carol", ["underwriter"]);
    poll_once_and_drop(rt.release(&carol, &id)).await;
    until(None).await;
    let changes: Vec<_> = events(&rt, "loan-6")
        .await
        .into_iter()
        .filter_map(|kind| match kind {
            EventKind::TaskChanged { change, .. } => Some(change),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes.len(),
        3,
        "claim, delegation, release once each: {changes:?}"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_claim_and_a_comment_dropped_after_their_first_poll_are_still_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), None).await;
    rt.start(loan, "loan-5", application()).await.unwrap();
    let id = inbox(&rt, &TaskQuery::for_actor(&alice()), 1)
        .await
        .remove(0);
    poll_once_and_drop(rt.claim(&alice(), &id)).await;
    poll_once_and_drop(rt.comment(&alice(), &id, "looking at it")).await;
    let state = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let state = rt.task(&id).await.unwrap().state;
            if state.assignee.is_some() && !state.comments.is_empty() {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the dropped claim and comment are recorded");
    assert_eq!(state.assignee.as_deref(), Some("alice"));
    assert_eq!(
        state.comments.len(),
        1,
        "recorded once: {:?}",
        state.comments
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inboxes_page_in_creation_order_without_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), None).await;
    for n in 0..120 {
        rt.start(loan, &format!("loan-p{n:03}"), application())
            .await
            .unwrap();
    }
    let all = TaskQuery::default();
    for _ in 0..2000 {
        if rt
            .tasks(&TaskQuery {
                limit: 200,
                ..all.clone()
            })
            .await
            .unwrap()
            .rows
            .len()
            == 120
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Carol is a candidate by name and alice by role: each sees every task once.
    for actor in [alice(), Actor::new("carol", ["underwriter"])] {
        let mut query = TaskQuery {
            limit: 50,
            ..TaskQuery::for_actor(&actor)
        };
        let mut seen = Vec::new();
        loop {
            let page = rt.tasks(&query).await.unwrap();
            seen.extend(page.rows.iter().map(|row| row.instance.clone()));
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen.len(), 120, "{}", actor.id);
        assert_eq!(sorted.len(), 120, "{}", actor.id);
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_notification_is_recorded_as_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), None).await;
    rt.start(announced, "n-1", application())
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    let notified: Vec<(String, String)> = events(&rt, "n-1")
        .await
        .into_iter()
        .filter_map(|kind| match kind {
            EventKind::Notified { topic, body, .. } => {
                Some((topic, String::from_utf8(body.data).unwrap()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        notified,
        [(
            "loan.received".to_owned(),
            r#"{"applicant":"Ada","cents":25000000}"#.to_owned()
        )]
    );
    rt.shutdown().await;
}
