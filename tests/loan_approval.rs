//! The loan approval example's process, on virtual time: an automatic approval, a
//! decline by the risk table, an underwriter's review escalated to a senior after two
//! business days, a review nobody decides declined after five, an offer that expires.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/loan_approval/process.rs"]
#[allow(dead_code)]
mod process;

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use cairn::events::{EventKind, TaskChange};
use cairn::notify::{Notification, Notifier};
use cairn::testing::VirtualClock;
use cairn::{Actor, Runtime, TaskQuery};
use process::{
    loan_approval, Application, Outcome, Signature, Underwriting, SENIOR_UNDERWRITER, SIGNED,
    UNDERWRITER,
};

#[derive(Default)]
struct Heard(Mutex<Vec<(String, String, String)>>);

#[async_trait::async_trait]
impl Notifier for Heard {
    async fn notify(&self, n: &Notification) -> Result<(), String> {
        self.0.lock().unwrap().push((
            n.instance.clone(),
            n.topic.name().to_owned(),
            n.body.clone(),
        ));
        Ok(())
    }
}

impl Heard {
    fn topics(&self, instance: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _, _)| i == instance)
            .map(|(_, topic, _)| topic.clone())
            .collect()
    }
}

/// Monday 2026-11-30, 10:00 in Frankfurt.
const MONDAY_MS: u64 = 1_796_029_200_000;

async fn host() -> (Runtime, VirtualClock, Arc<Heard>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_millis(MONDAY_MS));
    let heard = Arc::new(Heard::default());
    let rt = Runtime::builder()
        .workflow(loan_approval)
        .signal(SIGNED)
        .clock(Arc::new(clock.clone()))
        .notifier(heard.clone())
        .open(dir.path().join("loans.redb"))
        .await
        .unwrap();
    (rt, clock, heard, dir)
}

fn application(applicant: &str, amount: u64, income: u64) -> Application {
    Application {
        applicant: applicant.into(),
        amount,
        income,
    }
}

/// Waits (real time) until `actor` sees `n` tasks.
async fn inbox(rt: &Runtime, actor: &Actor, n: usize) -> Vec<cairn::TaskId> {
    for _ in 0..2000 {
        let rows = rt.tasks(&TaskQuery::for_actor(actor)).await.unwrap().rows;
        if rows.len() == n {
            return rows.iter().map(|row| row.id()).collect();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{} never saw {n} tasks", actor.id);
}

/// Waits until the next timer is set, then skips the clock to it.
async fn skip(clock: &VirtualClock) -> u64 {
    tokio::time::timeout(Duration::from_secs(20), clock.skip_to_next_timer())
        .await
        .expect("a timer is set")
}

async fn outcome(rt: &Runtime, id: &str) -> Outcome {
    tokio::time::timeout(
        Duration::from_secs(20),
        rt.handle(loan_approval, id).result(),
    )
    .await
    .expect("the application ends")
    .unwrap()
    .unwrap()
}

async fn sign(rt: &Runtime, id: &str, by: &str) {
    rt.send(
        id,
        SIGNED,
        &Signature {
            signed_by: by.into(),
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_prime_applicant_signs_and_is_paid_out_without_a_review() {
    let (rt, _clock, heard, _dir) = host().await;
    rt.start(
        loan_approval,
        "L-1",
        application("Tony Hoare", 40_000, 60_000),
    )
    .await
    .unwrap();
    // It waits for the signature; nobody is asked to review.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rt
        .tasks(&TaskQuery::default())
        .await
        .unwrap()
        .rows
        .is_empty());
    sign(&rt, "L-1", "Tony Hoare").await;
    match outcome(&rt, "L-1").await {
        Outcome::PaidOut { rate, reference } => {
            assert_eq!(rate, 5.9);
            assert!(reference.starts_with("transfer-40000-"), "{reference}");
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(heard.topics("L-1"), ["loan.offered"]);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_thin_credit_file_is_declined_by_the_table_and_the_applicant_told() {
    let (rt, _clock, heard, _dir) = host().await;
    rt.start(
        loan_approval,
        "L-2",
        application("Alan Turing", 10_000, 60_000),
    )
    .await
    .unwrap();
    assert_eq!(
        outcome(&rt, "L-2").await,
        Outcome::Declined {
            reason: "the risk assessment does not allow this loan".into()
        }
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(heard.topics("L-2"), ["loan.declined"]);
    // The decision is in the history with the rule that made it.
    let decided = rt
        .history("L-2")
        .await
        .unwrap()
        .into_iter()
        .find_map(|event| match event.record.kind {
            EventKind::SideEffect { label, value, .. } if label == "decision:risk" => {
                Some(String::from_utf8(value.data).unwrap())
            }
            _ => None,
        })
        .unwrap();
    assert!(decided.contains("thin file"), "{decided}");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_large_loan_is_escalated_to_a_senior_after_two_business_days() {
    let (rt, clock, heard, _dir) = host().await;
    rt.start(
        loan_approval,
        "L-3",
        application("Edsger Dijkstra", 180_000, 150_000),
    )
    .await
    .unwrap();
    let carol = Actor::new("carol", [UNDERWRITER]);
    let task = inbox(&rt, &carol, 1).await.remove(0);
    let row = rt
        .tasks(&TaskQuery::default())
        .await
        .unwrap()
        .rows
        .remove(0);
    assert_eq!(row.title, "Underwrite Edsger Dijkstra (180000 EUR)");
    assert_eq!(row.priority, 2);
    // Due Wednesday 10:00 in Frankfurt: two business days.
    assert_eq!(row.due_at_ms, Some(MONDAY_MS + 2 * 86_400_000));
    rt.claim(&carol, &task).await.unwrap();

    // Carol does not decide: at the deadline the review goes to the seniors.
    assert_eq!(skip(&clock).await, MONDAY_MS + 2 * 86_400_000);
    let sam = Actor::new("sam", [SENIOR_UNDERWRITER]);
    inbox(&rt, &sam, 1).await;
    assert!(rt
        .tasks(&TaskQuery::for_actor(&carol))
        .await
        .unwrap()
        .rows
        .is_empty());
    let late = rt
        .complete(
            &carol,
            &task,
            &Underwriting {
                approve: true,
                note: "ok".into(),
            },
        )
        .await;
    assert!(late.is_err(), "carol no longer holds it");
    rt.complete(
        &sam,
        &task,
        &Underwriting {
            approve: true,
            note: "income verified".into(),
        },
    )
    .await
    .unwrap();
    sign(&rt, "L-3", "Edsger Dijkstra").await;
    assert!(matches!(outcome(&rt, "L-3").await, Outcome::PaidOut { .. }));

    let changes: Vec<String> = rt
        .history("L-3")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|event| match event.record.kind {
            EventKind::TaskChanged { actor, change, .. } => Some(format!(
                "{} {}",
                actor.id,
                match change {
                    TaskChange::Claimed => "claimed",
                    TaskChange::Overdue => "overdue",
                    TaskChange::Escalated { .. } => "escalated",
                    _ => "other",
                }
            )),
            EventKind::TaskCompleted { actor, .. } => Some(format!("{} completed", actor.id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        [
            "carol claimed",
            "cairn overdue",
            "cairn escalated",
            "sam completed"
        ]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        heard.topics("L-3"),
        [
            "task.created",
            "task.overdue",
            "task.escalated",
            "loan.offered"
        ]
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_review_nobody_decides_is_declined_after_five_business_days() {
    let (rt, clock, _heard, _dir) = host().await;
    rt.start(
        loan_approval,
        "L-4",
        application("Ada Lovelace", 20_000, 60_000),
    )
    .await
    .unwrap();
    inbox(&rt, &Actor::new("carol", [UNDERWRITER]), 1).await;
    // Wednesday: overdue and escalated; the next Monday: declined by the last tier.
    assert_eq!(skip(&clock).await, MONDAY_MS + 2 * 86_400_000);
    assert_eq!(
        skip(&clock).await,
        MONDAY_MS + 7 * 86_400_000,
        "five business days: the next Monday"
    );
    assert_eq!(
        outcome(&rt, "L-4").await,
        Outcome::Declined {
            reason: "no underwriter decided within five business days".into()
        }
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn an_offer_not_signed_within_fourteen_days_expires() {
    let (rt, clock, _heard, _dir) = host().await;
    rt.start(
        loan_approval,
        "L-5",
        application("Niklaus Wirth", 30_000, 90_000),
    )
    .await
    .unwrap();
    assert_eq!(skip(&clock).await, MONDAY_MS + 14 * 86_400_000);
    assert_eq!(outcome(&rt, "L-5").await, Outcome::OfferExpired);
    rt.shutdown().await;
}
