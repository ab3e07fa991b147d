//! The IT ticket example's process, on virtual time and the desk's business hours: first
//! line answers; an urgent ticket nobody answers in two business hours goes to second
//! line; one ignored by both lines reaches third line; the survey closes without a score
//! after five days.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/it_ticket/process.rs"]
#[allow(dead_code)]
mod process;

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use cairn::notify::{Notification, Notifier};
use cairn::testing::VirtualClock;
use cairn::{Actor, Runtime, TaskQuery};
use process::{it_ticket, Closed, Resolution, Survey, Ticket, SURVEY};

/// Monday 2026-11-30, 09:00 in London.
const MONDAY_MS: u64 = 1_796_029_200_000;
const HOUR_MS: u64 = 3_600_000;

#[derive(Default)]
struct Heard(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl Notifier for Heard {
    async fn notify(&self, n: &Notification) -> Result<(), String> {
        self.0.lock().unwrap().push(n.topic.name().to_owned());
        Ok(())
    }
}

async fn desk() -> (Runtime, VirtualClock, Arc<Heard>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_millis(MONDAY_MS));
    let heard = Arc::new(Heard::default());
    let rt = Runtime::builder()
        .workflow(it_ticket)
        .signal(SURVEY)
        .clock(Arc::new(clock.clone()))
        .notifier(heard.clone())
        .open(dir.path().join("tickets.redb"))
        .await
        .unwrap();
    (rt, clock, heard, dir)
}

fn ticket(summary: &str, urgent: bool) -> Ticket {
    Ticket {
        reporter: "dana".into(),
        summary: summary.into(),
        urgent,
    }
}

async fn inbox(rt: &Runtime, actor: &Actor) -> cairn::TaskId {
    for _ in 0..2000 {
        if let Some(row) = rt
            .tasks(&TaskQuery::for_actor(actor))
            .await
            .unwrap()
            .rows
            .first()
        {
            return row.id();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{} never saw a ticket", actor.id);
}

async fn skip(clock: &VirtualClock) -> u64 {
    tokio::time::timeout(Duration::from_secs(20), clock.skip_to_next_timer())
        .await
        .expect("a timer is set")
}

async fn closed(rt: &Runtime, id: &str) -> Closed {
    tokio::time::timeout(Duration::from_secs(20), rt.handle(it_ticket, id).result())
        .await
        .expect("the ticket closes")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn first_line_answers_and_the_reporter_scores_it() {
    let (rt, _clock, heard, _dir) = desk().await;
    rt.start(it_ticket, "T-1", ticket("Password expired", false))
        .await
        .unwrap();
    let lee = Actor::new("lee", ["l1_support"]);
    let task = inbox(&rt, &lee).await;
    let row = rt
        .tasks(&TaskQuery::default())
        .await
        .unwrap()
        .rows
        .remove(0);
    assert_eq!(row.title, "[identity] Password expired");
    // Eight business hours from Monday 09:00: Monday 17:00.
    assert_eq!(row.due_at_ms, Some(MONDAY_MS + 8 * HOUR_MS));
    rt.claim(&lee, &task).await.unwrap();
    rt.complete(
        &lee,
        &task,
        &Resolution {
            answer: "reset".into(),
        },
    )
    .await
    .unwrap();
    for _ in 0..200 {
        if heard
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|t| t == "ticket.resolved")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.send("T-1", SURVEY, &Survey { score: 4 }).await.unwrap();
    let done = closed(&rt, "T-1").await;
    assert_eq!(
        done,
        Closed {
            resolved_by: "lee".into(),
            line: 1,
            answer: "reset".into(),
            satisfaction: Some(4),
        }
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn an_urgent_ticket_nobody_answers_goes_to_second_line_and_the_survey_lapses() {
    let (rt, clock, heard, _dir) = desk().await;
    rt.start(it_ticket, "T-2", ticket("VPN drops every hour", true))
        .await
        .unwrap();
    inbox(&rt, &Actor::new("lee", ["l1_support"])).await;
    // Two business hours: Monday 11:00.
    assert_eq!(skip(&clock).await, MONDAY_MS + 2 * HOUR_MS);
    let kim = Actor::new("kim", ["l2_support"]);
    let task = inbox(&rt, &kim).await;
    rt.complete(
        &kim,
        &task,
        &Resolution {
            answer: "new VPN profile".into(),
        },
    )
    .await
    .unwrap();
    // The survey waits five days, then the ticket closes without a score.
    assert_eq!(
        skip(&clock).await,
        MONDAY_MS + 2 * HOUR_MS + 5 * 24 * HOUR_MS
    );
    let done = closed(&rt, "T-2").await;
    assert_eq!((done.line, done.satisfaction), (2, None));
    assert_eq!(done.resolved_by, "kim");
    let topics = heard.0.lock().unwrap().clone();
    for topic in [
        "task.created",
        "task.overdue",
        "task.escalated",
        "ticket.resolved",
    ] {
        assert!(topics.iter().any(|t| t == topic), "{topic} in {topics:?}");
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn a_ticket_ignored_by_two_lines_reaches_third_line_on_business_hours() {
    let (rt, clock, _heard, _dir) = desk().await;
    rt.start(it_ticket, "T-3", ticket("Laptop will not boot", false))
        .await
        .unwrap();
    inbox(&rt, &Actor::new("lee", ["l1_support"])).await;
    assert_eq!(skip(&clock).await, MONDAY_MS + 8 * HOUR_MS, "Monday 17:00");
    inbox(&rt, &Actor::new("kim", ["l2_support"])).await;
    // 32 business hours from Monday 09:00 on a 10-hour day: Thursday 11:00.
    assert_eq!(
        skip(&clock).await,
        MONDAY_MS + 3 * 24 * HOUR_MS + 2 * HOUR_MS,
        "Thursday 11:00"
    );
    let ada = Actor::new("ada", ["l3_support"]);
    let task = inbox(&rt, &ada).await;
    assert!(rt
        .tasks(&TaskQuery::for_actor(&Actor::new("kim", ["l2_support"])))
        .await
        .unwrap()
        .rows
        .is_empty());
    rt.complete(
        &ada,
        &task,
        &Resolution {
            answer: "mainboard replaced".into(),
        },
    )
    .await
    .unwrap();
    rt.send("T-3", SURVEY, &Survey { score: 9 }).await.unwrap();
    let done = closed(&rt, "T-3").await;
    assert_eq!(
        (done.line, done.satisfaction),
        (3, Some(5)),
        "scores are clamped to 5"
    );
    rt.shutdown().await;
}
