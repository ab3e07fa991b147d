//! Human-task figures: `cargo bench --bench tasks`.
//!
//! - tasks created and completed per second: 2,000 instances each waiting on one task,
//!   the tasks listed, then completed 64 at a time through the host API;
//! - the first page (50) of a role's inbox with 100,000 open tasks in the file, next to
//!   a role holding 1% of them and an actor with three roles (journal written directly);
//! - escalation lateness: 10,000 open tasks whose escalation tiers fall due within one
//!   minute on the system clock, runs evicted while they wait; how long after its time
//!   each tier was recorded (p50, p99, max).
//!
//! `CAIRN_BENCH_QUICK=1` makes every figure smaller; `CAIRN_BENCH_ONLY=throughput|inbox|
//! escalation` runs one.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::events::{Candidates, EscalationAction, EscalationTier, EventKind, Payload, TaskSpec};
use cairn::store::{Expect, Journal, RedbJournal};
use cairn::{workflow, Actor, Ctx, Escalate, Runtime, TaskKind, TaskQuery, WorkflowError};
use futures::StreamExt;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Approval {
    approve: bool,
}

const REVIEW: TaskKind<u32, Approval> = TaskKind::new("review");

#[workflow]
async fn reviewed(ctx: Ctx, n: u32) -> Result<bool, WorkflowError> {
    let task = REVIEW.task(n).roles(["clerk"]);
    Ok(ctx.human_task(task).await?.decision.approve)
}

/// A task whose one tier (a notice) falls due `delay_ms` after it is created; the run
/// then waits for a decision that never comes.
#[workflow]
async fn escalated(ctx: Ctx, delay_ms: u64) -> Result<bool, WorkflowError> {
    let task = REVIEW
        .task(0)
        .roles(["clerk"])
        .escalate_after(Duration::from_millis(delay_ms), Escalate::Notify);
    Ok(ctx.human_task(task).await?.decision.approve)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

async fn throughput(dir: &tempfile::TempDir, n: u32) {
    let rt = Runtime::builder()
        .workflow(reviewed)
        .open(dir.path().join("throughput.redb"))
        .await
        .unwrap();
    let started = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let rt = rt.clone();
            async move {
                rt.start(reviewed, &format!("r-{i}"), i).await.unwrap();
            }
        })
        .await;
    let all = TaskQuery {
        limit: 1000,
        ..TaskQuery::default()
    };
    let mut ids = Vec::new();
    loop {
        ids.clear();
        let mut query = all.clone();
        loop {
            let page = rt.tasks(&query).await.unwrap();
            ids.extend(page.rows.iter().map(|row| row.id()));
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        if ids.len() == n as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let created = started.elapsed();
    let clerk = Actor::new("cleo", ["clerk"]);
    let started = Instant::now();
    futures::stream::iter(ids)
        .for_each_concurrent(64, |id| {
            let (rt, clerk) = (rt.clone(), clerk.clone());
            async move {
                rt.complete(&clerk, &id, &Approval { approve: true })
                    .await
                    .unwrap();
            }
        })
        .await;
    let completed = started.elapsed();
    for i in 0..n {
        rt.handle(reviewed, &format!("r-{i}"))
            .result()
            .await
            .unwrap()
            .unwrap();
    }
    let finished = started.elapsed();
    println!(
        "tasks       {n} created and listed: {:.0}/s; completed (decision durable): {:.0}/s; all workflows done after {:.2} s",
        f64::from(n) / created.as_secs_f64(),
        f64::from(n) / completed.as_secs_f64(),
        finished.as_secs_f64()
    );
    rt.shutdown().await;
}

fn spec(roles: Vec<String>) -> TaskSpec {
    TaskSpec {
        name: "review".into(),
        title: "Review".into(),
        description: String::new(),
        input: Payload::new(0, b"0".to_vec()),
        decision_schema: "{}".into(),
        candidates: Candidates {
            users: vec![],
            roles,
        },
        assignee: None,
        priority: 0,
        due_at_ms: None,
        follow_up_at_ms: None,
        escalation: vec![EscalationTier {
            at_ms: u64::MAX,
            action: EscalationAction::Notify,
        }],
    }
}

async fn inbox(dir: &tempfile::TempDir, n: u32) {
    let journal = Arc::new(RedbJournal::open(dir.path().join("inbox.redb")).unwrap());
    let started = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(256, |i| {
            let journal = journal.clone();
            async move {
                let run = journal
                    .start(
                        format!("case-{i}"),
                        "case".into(),
                        Payload::new(0, vec![]),
                        None,
                    )
                    .await
                    .unwrap();
                // Every task for "clerk"; one in a hundred also for "auditor".
                let mut roles = vec!["clerk".to_owned()];
                if i % 100 == 0 {
                    roles.push("auditor".to_owned());
                }
                let created = EventKind::TaskCreated {
                    step: 1,
                    task: Box::new(spec(roles)),
                };
                journal.append(run.key, created, Expect::End).await.unwrap();
            }
        })
        .await;
    println!(
        "inbox       {n} open tasks written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let cases = [
        (
            "role with every task",
            TaskQuery::for_actor(&Actor::new("x", ["clerk"])),
        ),
        (
            "role with 1% of them",
            TaskQuery::for_actor(&Actor::new("x", ["auditor"])),
        ),
        (
            "actor with three roles",
            TaskQuery::for_actor(&Actor::new("x", ["clerk", "auditor", "nobody"])),
        ),
    ];
    for (label, query) in cases {
        let query = TaskQuery { limit: 50, ..query };
        let mut times = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let started = Instant::now();
            let page = journal.tasks(&query).await.unwrap();
            times.push(started.elapsed());
            assert_eq!(page.rows.len(), 50);
        }
        times.sort();
        println!(
            "inbox       first page of 50, {label}: p50 {}, p99 {}",
            us(percentile(&times, 0.5)),
            us(percentile(&times, 0.99))
        );
    }
    journal.close();
}

async fn escalation(dir: &tempfile::TempDir, n: u32, window: Duration) {
    let rt = Runtime::builder()
        .workflow(escalated)
        .open(dir.path().join("escalation.redb"))
        .await
        .unwrap();
    let window_ms = window.as_millis() as u64;
    // Spread evenly over the window, counted from each task's creation; creating them
    // takes a moment, which only moves some tiers later.
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let rt = rt.clone();
            let delay = 5_000 + u64::from(i) * window_ms / u64::from(n);
            async move {
                rt.start(escalated, &format!("e-{i}"), delay).await.unwrap();
            }
        })
        .await;
    // Wait until every tier is recorded (or give up after the window and a minute more).
    let give_up = Instant::now() + window + Duration::from_secs(65);
    let mut lateness = Vec::with_capacity(n as usize);
    for i in 0..n {
        loop {
            let history = rt.history(&format!("e-{i}")).await.unwrap();
            let created = history.iter().find_map(|event| match &event.record.kind {
                EventKind::TaskCreated { task, .. } => Some(task.escalation[0].at_ms),
                _ => None,
            });
            let fired = history.iter().find_map(|event| match &event.record.kind {
                EventKind::TaskChanged { .. } => Some(event.record.recorded_at_ms),
                _ => None,
            });
            if let (Some(due), Some(at)) = (created, fired) {
                lateness.push(Duration::from_millis(at.saturating_sub(due)));
                break;
            }
            assert!(Instant::now() < give_up, "tier of e-{i} never fired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    lateness.sort();
    println!(
        "escalation  {n} tiers due within {} s (runs evicted while waiting): lateness p50 {} ms, p99 {} ms, max {} ms; resident runs at the end: {}",
        window.as_secs(),
        percentile(&lateness, 0.5).as_millis(),
        percentile(&lateness, 0.99).as_millis(),
        lateness.last().unwrap().as_millis(),
        rt.engine().resident_runs()
    );
    rt.shutdown().await;
}

fn main() {
    let quick = std::env::var_os("CAIRN_BENCH_QUICK").is_some();
    let only = std::env::var("CAIRN_BENCH_ONLY").ok();
    let run = |section: &str| only.as_deref().is_none_or(|o| o == section);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "cairn tasks bench ({} worker threads, {})",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if quick { "quick" } else { "full" }
    );
    rt.block_on(async {
        if run("throughput") {
            throughput(&dir, if quick { 200 } else { 2_000 }).await;
        }
        if run("inbox") {
            inbox(&dir, if quick { 5_000 } else { 100_000 }).await;
        }
        if run("escalation") {
            let (n, window) = if quick {
                (500, Duration::from_secs(5))
            } else {
                (10_000, Duration::from_secs(60))
            };
            escalation(&dir, n, window).await;
        }
    });
}
