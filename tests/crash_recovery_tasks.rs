//! Kill -9 with people in the loop: human tasks, their escalations and the people acting
//! on them survive SIGKILL at any moment, and each task is decided once.
//!
//! The test binary is its own host: run with `--host DB COUNTS`, it opens the runtime on
//! `DB`, starts (idempotently, by id) `CAIRN_TASK_REVIEWS` (120) review instances in waves and plays the people,
//! polling their inboxes: first-line reviewers (`l1`) decide the tickets numbered 0 mod
//! 3, second-line (`l2`) those numbered 1 mod 3 once escalated to them, and nobody takes
//! the rest, which the runtime decides at the last tier. Each review is a task open to
//! `l1`, escalating to `l2` after 250 ms, to `l3` after 500 ms, and decided by the
//! runtime after 900 ms; the decision is then filed by an activity that counts its runs
//! in `COUNTS`. The host prints `done` and exits once every review ended.
//!
//! The test SIGKILLs the host at seeded random moments (`CAIRN_SEED` to repeat one,
//! printed either way), restarts it on the same file each time, lets a last host
//! finish, and then checks every history:
//! - the hash chain verifies, sequence numbers are contiguous;
//! - one task was created and decided exactly once, nothing recorded for it after;
//! - escalation tiers were recorded at most once each, in tier order, before the
//!   decision, including tiers that fell due while no host was running;
//! - a person's decision came from someone the task was offered to at that moment (by
//!   role, after the escalations recorded before it); a runtime decision came from the
//!   last tier, after the two before it;
//! - the workflow's result is what its recorded decision says;
//! - the filing activity ran once per review, except runs in flight at a kill;
//! - the open-task index is empty (it agrees with the logs).
//!
//! `CAIRN_TASK_KILLS=200 CAIRN_TASK_REVIEWS=2000 cargo test --release --test
//! crash_recovery_tasks` runs a long version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cairn::events::EventKind;
use cairn::events::TaskChange;
use cairn::store::{verify_history, InstanceStatus, RedbStore, Store};
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Actor, Ctx, Error, Escalate, Runtime, TaskId,
    TaskKind, TaskQuery, WorkflowError,
};
use serde::{Deserialize, Serialize};

/// Reviews per run: 120 in the suite; `CAIRN_TASK_REVIEWS` raises it so a long run has
/// work left for many kills (the host inherits it).
fn reviews() -> u32 {
    std::env::var("CAIRN_TASK_REVIEWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
}
/// Reviews are started in waves, so tasks are created, escalated and decided all the
/// time the host runs, not only at its start.
const WAVE: u32 = 8;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Verdict {
    approve: bool,
    by_line: String,
}

const REVIEW: TaskKind<u32, Verdict> = TaskKind::new("review");

/// Where the filing activity counts its runs.
struct Counts(PathBuf);

#[activity]
async fn file_verdict(ctx: ActivityCtx, verdict: String) -> Result<String, ActivityError> {
    let counts = ctx.state::<Counts>()?;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&counts.0)
        .map_err(|err| ActivityError::retryable(err.to_string()))?;
    writeln!(out, "{}", ctx.instance_id)
        .map_err(|err| ActivityError::retryable(err.to_string()))?;
    Ok(verdict)
}

#[workflow]
async fn review(ctx: Ctx, ticket: u32) -> Result<String, WorkflowError> {
    let task = REVIEW
        .task(ticket)
        .title(format!("Review ticket {ticket}"))
        .roles(["l1"])
        .escalate_after(Duration::from_millis(250), Escalate::to_roles(["l2"]))
        .escalate_after(Duration::from_millis(500), Escalate::to_roles(["l3"]))
        .escalate_after(
            Duration::from_millis(900),
            Escalate::Decide(Verdict {
                approve: false,
                by_line: "runtime".into(),
            }),
        );
    let decided = ctx.human_task(task).await?;
    let summary = format!(
        "{} by {} ({})",
        if decided.decision.approve {
            "approved"
        } else {
            "refused"
        },
        decided.by.id,
        decided.decision.by_line
    );
    let filed = ctx.activity(file_verdict, summary).await?;
    Ok(filed)
}

fn person(line: &str) -> Actor {
    Actor::new(format!("{line}-person"), [line])
}

/// Which line decides ticket `n` (`None`: nobody, the runtime decides).
fn decider(n: u32) -> Option<&'static str> {
    match n % 3 {
        0 => Some("l1"),
        1 => Some("l2"),
        _ => None,
    }
}

/// The host: starts the reviews, plays the people, exits once all ended.
async fn host(db: &Path, counts: &Path) {
    let rt = Runtime::builder()
        .workflow(review)
        .state(Counts(counts.to_owned()))
        .eviction_idle(Some(Duration::from_millis(100)))
        .open(db)
        .await
        .unwrap();
    let rt = Arc::new(rt);
    let mut next = 0;
    loop {
        // Idempotent by id: a restarted host starts again from the first wave, and the
        // reviews it had started are only found.
        for n in next..(next + WAVE).min(reviews()) {
            rt.start(review, &format!("review-{n}"), n).await.unwrap();
        }
        next = (next + WAVE).min(reviews());
        for line in ["l1", "l2"] {
            let actor = person(line);
            let page = rt.tasks(&TaskQuery::for_actor(&actor)).await.unwrap();
            for row in page.rows {
                let n: u32 = row.instance.trim_start_matches("review-").parse().unwrap();
                if decider(n) != Some(line) {
                    continue;
                }
                let task = TaskId::new(row.instance.clone(), row.step);
                let verdict = Verdict {
                    approve: true,
                    by_line: line.to_owned(),
                };
                // The runtime's escalations race the people: a task that moved on meanwhile
                // is refused with nothing written, and that is all right.
                let done = match rt.claim(&actor, &task).await {
                    Ok(()) => rt.complete(&actor, &task, &verdict).await,
                    Err(err) => Err(err),
                };
                match done {
                    Ok(()) => println!("decided {task}"),
                    Err(
                        Error::TaskClosed { .. }
                        | Error::Forbidden { .. }
                        | Error::TaskNotFound { .. },
                    ) => {}
                    Err(err) => panic!("{task}: {err}"),
                }
            }
        }
        let running = rt
            .list(&cairn::ListFilter {
                statuses: vec![cairn::StatusKind::Running],
                ..Default::default()
            })
            .await
            .unwrap();
        if running.is_empty() && next == reviews() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    println!("done");
    rt.shutdown().await;
}

/// A small seeded generator: the kill schedule is reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn spawn(db: &Path, counts: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .arg("--host")
        .arg(db)
        .arg(counts)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// What the offered-to roles of a task were after each recorded escalation.
fn check_history(id: &str, history: &[cairn::store::StoredEvent]) -> (String, String) {
    let first = history[0].record.seq;
    let mut created = 0;
    let mut tiers = Vec::new();
    let mut decided = None;
    let mut roles = vec!["l1".to_owned()];
    let mut result = None;
    for (n, event) in history.iter().enumerate() {
        assert_eq!(event.record.seq, first + n as u64, "{id}: seq gap");
        match &event.record.kind {
            EventKind::TaskCreated { .. } => created += 1,
            EventKind::TaskChanged { change, .. } => {
                assert!(decided.is_none(), "{id}: a change after the decision");
                if let TaskChange::Escalated { tier, reassigned } = change {
                    tiers.push(*tier);
                    if let Some(to) = reassigned {
                        roles = to.roles.clone();
                    }
                }
            }
            EventKind::TaskCompleted {
                actor,
                decision,
                escalation,
                ..
            } => {
                assert!(decided.is_none(), "{id}: decided twice");
                let verdict: Verdict = serde_json::from_slice(&decision.data).unwrap();
                match escalation {
                    Some(tier) => {
                        assert_eq!(*tier, 2, "{id}: decided by tier {tier}");
                        assert_eq!(tiers, [0, 1], "{id}: tiers before the runtime's decision");
                        assert_eq!(verdict.by_line, "runtime");
                    }
                    None => {
                        assert!(
                            roles.iter().any(|role| actor.has_role(role)),
                            "{id}: decided by {actor:?} while offered to {roles:?}"
                        );
                        assert_eq!(
                            Some(verdict.by_line.as_str()),
                            actor.roles.first().map(String::as_str)
                        );
                    }
                }
                decided = Some(format!(
                    "{} by {} ({})",
                    if verdict.approve {
                        "approved"
                    } else {
                        "refused"
                    },
                    actor.id,
                    verdict.by_line
                ));
            }
            EventKind::WorkflowCompleted { output } => {
                result = Some(serde_json::from_slice::<String>(&output.data).unwrap());
            }
            _ => {}
        }
    }
    assert_eq!(created, 1, "{id}: tasks created");
    let mut sorted = tiers.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted, tiers,
        "{id}: escalation tiers out of order or twice"
    );
    let decided = decided.unwrap_or_else(|| panic!("{id}: never decided"));
    let result = result.unwrap_or_else(|| panic!("{id}: no result"));
    assert_eq!(
        result, decided,
        "{id}: result differs from the recorded decision"
    );
    (decided, format!("{tiers:?}"))
}

fn kill_loop() {
    let kills: u32 = std::env::var("CAIRN_TASK_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("CAIRN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash_recovery_tasks: seed {seed} (CAIRN_SEED={seed} repeats it), {kills} kills");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tasks.redb");
    let counts = dir.path().join("counts");
    let mut killed = 0;
    let mut done = false;
    while killed < kills {
        let mut child = spawn(&db, &counts);
        // From at once (start-up, recovery) to well past the last tier's deadline.
        let after = Duration::from_millis(rng.next() % 900);
        std::thread::sleep(after);
        if child.try_wait().unwrap().is_some() {
            // It finished everything before the kill: nothing left to interrupt.
            done = true;
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        killed += 1;
    }
    if !done {
        let mut child = spawn(&db, &counts);
        let stdout = child.stdout.take().unwrap();
        let finished = BufReader::new(stdout)
            .lines()
            .any(|line| line.unwrap() == "done");
        assert!(finished, "the last host did not finish");
        assert!(child.wait().unwrap().success());
    }

    let store = RedbStore::open(&db).unwrap();
    let mut rows = Vec::new();
    store
        .scan_instances(&mut |row| {
            rows.push(row);
            true
        })
        .unwrap();
    assert_eq!(rows.len(), reviews() as usize);
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for row in &rows {
        assert_eq!(
            row.status,
            InstanceStatus::Completed,
            "{} ended {:?}",
            row.id,
            row.status
        );
        let raw = store.raw_history(row.key).unwrap().expect("its row exists");
        let (_, history) = verify_history(raw).expect("hash chain verifies");
        let (decided, tiers) = check_history(&row.id, &history);
        let by = decided.split(" by ").nth(1).unwrap_or_default().to_owned();
        *outcomes
            .entry(format!("{by} after tiers {tiers}"))
            .or_default() += 1;
    }
    let ran = std::fs::read_to_string(&counts).unwrap_or_default();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in ran.lines() {
        *runs.entry(line).or_default() += 1;
    }
    let extra: usize = runs.values().map(|n| n - 1).sum();
    assert_eq!(
        runs.len(),
        reviews() as usize,
        "every review filed its verdict"
    );
    assert!(
        extra <= killed as usize,
        "{extra} extra filings for {killed} kills: more than the steps in flight"
    );
    let open = store.tasks(&TaskQuery::default()).unwrap();
    assert!(
        open.rows.is_empty(),
        "the open-task index still lists {:?}",
        open.rows
    );
    let mut outcomes: Vec<_> = outcomes.into_iter().collect();
    outcomes.sort();
    println!(
        "crash_recovery_tasks: {killed} kills, {} reviews, filings re-run at a kill: {extra}; outcomes {outcomes:?}",
        rows.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--host") {
        let db = PathBuf::from(&args[at + 1]);
        let counts = PathBuf::from(&args[at + 2]);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(host(&db, &counts));
        return;
    }
    // `cargo test -- --list` and filters: this binary is one test.
    if args.iter().any(|a| a == "--list") {
        println!("kill_loop: test");
        return;
    }
    kill_loop();
    println!("test result: ok. 1 passed");
}
