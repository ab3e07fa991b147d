//! Property: a workflow that joins several branches, each a sequence of steps (activities
//! and timers) that finish after random delays, replays to the same result from the
//! history it recorded. The branches' later calls are numbered by when their earlier
//! ones finished; the run hands outcomes over in the order they are recorded, live and in
//! replay, so a replay numbers them the same, whatever the join (`join_all`,
//! `tokio::join!`, `FuturesUnordered`).
//!
//! Both ways a run takes an outcome: on redb with runs kept in memory, an activity's
//! result goes to the workflow the moment it is taken (it is held) and a timer's is
//! recorded first; in always-replay mode and on PostgreSQL everything is recorded first
//! (and always-replay rebuilds the run after every step). 24 cases per mode by default; `CAIRN_SHAPE_CASES=<n>` runs
//! more and `CAIRN_SEED=<n>` picks the seed (printed either way).
//!
//! The second property adds people and stops: a branch step may be a human task, which
//! a clerk decides a few milliseconds after it appears (recorded by the host, outside the
//! run's line, and taken by the run where it records `TaskTaken`), and the host is shut
//! down and opened again at random moments while the case runs (about two stops a case).
//! Each case must still finish with the same result, never be parked, and replay to what
//! it did. A stop that falls between a decision and its take while a firing is recorded
//! in between is too narrow to hit this way; `replay_order.rs` builds that history by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{records_of, OpenStore};

use std::time::Duration;

use cairn::audit::ReplayVerdict;
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Actor, Ctx, Runtime, Status, TaskKind,
    TaskQuery, WorkflowError,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};

/// One branch: its steps, called one after another.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Branch(Vec<Step>);

/// One step of a branch, and how long it takes, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum Step {
    /// An activity that sleeps that long.
    Activity(u64),
    /// A durable timer.
    Timer(u64),
    /// A human task, which the test's clerk decides that long after it appears.
    Task(u64),
}

/// A clerk's task. Its title says which step of its branch it is and how long the clerk
/// waits before deciding (`"k:delay"`); the clerk decides `k`, which the branch folds in
/// as it folds any step's number.
const DECIDE: TaskKind<(), u64> = TaskKind::new("decide");

/// How the branches are joined.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum Join {
    /// `futures::future::join_all`: every branch polled in order on every poll.
    All,
    /// `tokio::join!` of the first three (it starts each poll with another branch).
    Rotating,
    /// `FuturesUnordered`: only the branches woken are polled, in the order woken.
    Unordered,
}

#[activity]
async fn mix(_ctx: ActivityCtx, acc: u64, k: u64, delay_ms: u64) -> Result<u64, ActivityError> {
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    Ok(acc.wrapping_mul(31).wrapping_add(k))
}

fn branch(ctx: &Ctx, index: u64, steps: Vec<Step>) -> BoxFuture<'_, Result<u64, WorkflowError>> {
    async move {
        let mut acc = index;
        for (k, step) in steps.into_iter().enumerate() {
            acc = match step {
                Step::Activity(delay) => ctx.activity(mix, (acc, k as u64, delay)).await?,
                Step::Timer(delay) => {
                    ctx.sleep(Duration::from_millis(delay)).await?;
                    acc.wrapping_mul(31).wrapping_add(k as u64)
                }
                Step::Task(delay) => {
                    let task = DECIDE
                        .task(())
                        .title(format!("{k}:{delay}"))
                        .roles(["clerk"]);
                    let decided = ctx.human_task(task).await?;
                    acc.wrapping_mul(31).wrapping_add(decided.decision)
                }
            };
        }
        Ok(acc)
    }
    .boxed()
}

#[workflow]
async fn joined(ctx: Ctx, shape: (Join, Vec<Branch>)) -> Result<Vec<u64>, WorkflowError> {
    let (join, branches) = shape;
    let mut futures: Vec<_> = branches
        .into_iter()
        .enumerate()
        .map(|(i, b)| branch(&ctx, i as u64, b.0))
        .collect();
    let results: Vec<Result<u64, WorkflowError>> = match join {
        Join::All => futures::future::join_all(futures).await,
        Join::Rotating => {
            let c = futures.pop().unwrap();
            let b = futures.pop().unwrap();
            let a = futures.pop().unwrap();
            let (a, b, c) = tokio::join!(a, b, c);
            vec![a, b, c]
        }
        Join::Unordered => {
            use futures::StreamExt;
            let mut pending: futures::stream::FuturesUnordered<_> = futures
                .into_iter()
                .enumerate()
                .map(|(i, f)| f.map(move |r| (i, r)))
                .collect();
            let mut done = Vec::new();
            while let Some(one) = pending.next().await {
                done.push(one);
            }
            done.sort_by_key(|(i, _)| *i);
            done.into_iter().map(|(_, r)| r).collect()
        }
    };
    results.into_iter().collect()
}

/// The expected result: each branch folds its own steps, whatever the order.
fn expected(branches: &[Branch]) -> Vec<u64> {
    branches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (0..b.0.len() as u64).fold(i as u64, |acc, k| acc.wrapping_mul(31).wrapping_add(k))
        })
        .collect()
}

/// xorshift64*: enough to pick shapes, seeded so a failure can be run again.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    }
}

fn shape(rng: &mut Rng, people: bool) -> (Join, Vec<Branch>) {
    let join = match rng.next(3) {
        0 => Join::All,
        1 => Join::Rotating,
        _ => Join::Unordered,
    };
    let count = match join {
        Join::Rotating => 3,
        _ => 2 + rng.next(3) as usize,
    };
    // Delays of 0 to 3 ms, so that branches often finish in the same instant; one step
    // in three a timer (with people: one in four each a timer and a task).
    let kinds = if people { 4 } else { 3 };
    let branches = (0..count)
        .map(|_| {
            let steps = (0..1 + rng.next(4)).map(|_| match (rng.next(kinds), rng.next(4)) {
                (0, delay) => Step::Timer(delay),
                (3, delay) => Step::Task(delay),
                (_, delay) => Step::Activity(delay),
            });
            Branch(steps.collect())
        })
        .collect();
    (join, branches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_sequences_replay_to_what_they_did() {
    let (seed, cases) = seed_and_cases(24);
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    for always_replay in [false, true] {
        let rt = Runtime::builder()
            .workflow(joined)
            .always_replay(always_replay)
            .open_store(dir.path().join(format!("{always_replay}.redb")))
            .await
            .unwrap();
        for case in 0..cases {
            let shape = shape(&mut rng, false);
            let want = expected(&shape.1);
            let id = format!("case-{case}");
            let at = format!("case {case} (seed {seed}, always replay: {always_replay}) {shape:?}");
            let got = rt
                .start(joined, &id, shape.clone())
                .await
                .unwrap()
                .result()
                .await
                .unwrap_or_else(|err| panic!("{at}: {err}"));
            assert_eq!(got.as_ref().ok(), Some(&want), "{at}");
            let records = records_of(&rt, &id).await;
            for _ in 0..3 {
                match rt.replay(&records).await {
                    Ok(ReplayVerdict::Matches(_)) => {}
                    other => panic!("{at}: {other:?}"),
                }
            }
        }
        rt.shutdown().await;
    }
}

fn seed_and_cases(default_cases: usize) -> (u64, usize) {
    let seed = std::env::var("CAIRN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let cases: usize = std::env::var("CAIRN_SHAPE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    println!("CAIRN_SEED={seed} CAIRN_SHAPE_CASES={cases}");
    (seed, cases)
}

async fn open(path: &std::path::Path, always_replay: bool) -> Runtime {
    Runtime::builder()
        .workflow(joined)
        .always_replay(always_replay)
        .open_store(path)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_sequences_with_people_and_stops_replay_to_what_they_did() {
    let (seed, cases) = seed_and_cases(12);
    let mut rng = Rng(seed);
    // The stops and the clerk's pace depend on timing: their own generator, so that a
    // seed gives the same shapes whatever happened in an earlier case.
    let mut timing = Rng(seed.rotate_left(17) | 1);
    let dir = tempfile::tempdir().unwrap();
    let clerk = Actor::new("clerk-1", ["clerk"]);
    // Finished histories must replay in the order recorded, with no task end handed back
    // later than recorded: nothing here stops a run between a decision and its take
    // while a firing is recorded (see the module's comment).
    let strict = Runtime::builder().workflow(joined).replayer().unwrap();
    for always_replay in [false, true] {
        let path = dir.path().join(format!("people-{always_replay}.redb"));
        let mut rt = open(&path, always_replay).await;
        let mut stops = 0u32;
        for case in 0..cases {
            let shape = shape(&mut rng, true);
            let want = expected(&shape.1);
            let id = format!("case-{case}");
            let at = format!("case {case} (seed {seed}, always replay: {always_replay}) {shape:?}");
            rt.start(joined, &id, shape.clone()).await.unwrap();
            // Each task decided once, after the delay its title asks for.
            let mut due: Vec<(std::time::Instant, cairn::TaskId, u64)> = Vec::new();
            let mut decided = std::collections::BTreeSet::new();
            let began = std::time::Instant::now();
            loop {
                match rt.status(&id).await.unwrap().status {
                    Status::Running => {}
                    Status::Completed => break,
                    other => panic!("{at}: {other:?}"),
                }
                assert!(
                    began.elapsed() < Duration::from_secs(60),
                    "{at}: still running after a minute"
                );
                let open_tasks = rt.tasks(&TaskQuery::default()).await.unwrap();
                for row in &open_tasks.rows {
                    let task = row.id();
                    if task.instance != id || !decided.insert(task.step) {
                        continue;
                    }
                    let (k, wait) = row.title.split_once(':').unwrap();
                    due.push((
                        std::time::Instant::now() + Duration::from_millis(wait.parse().unwrap()),
                        task,
                        k.parse().unwrap(),
                    ));
                }
                let now = std::time::Instant::now();
                let (ready, waiting): (Vec<_>, Vec<_>) =
                    due.into_iter().partition(|(when, _, _)| *when <= now);
                due = waiting;
                for (_, task, k) in ready {
                    if let Err(err) = rt.complete(&clerk, &task, &k).await {
                        panic!("{at}: deciding {task:?}: {err}");
                    }
                }
                // A stop now and then (about two a case on average), often right after
                // a decision: the host shuts down and opens the store again.
                if stops < 3 * (case as u32 + 1) && timing.next(4) == 0 {
                    rt.shutdown().await;
                    rt = open(&path, always_replay).await;
                    stops += 1;
                }
                tokio::time::sleep(Duration::from_millis(timing.next(3))).await;
            }
            let got = rt
                .handle(joined, &id)
                .result()
                .await
                .unwrap_or_else(|err| panic!("{at}: {err}"));
            assert_eq!(got.as_ref().ok(), Some(&want), "{at}");
            let records = records_of(&rt, &id).await;
            assert!(
                !records.iter().any(|r| r.kind.name() == "WorkflowParked"),
                "{at}: {records:#?}"
            );
            match strict.replay_as_recorded(&records).await {
                Ok(ReplayVerdict::Matches(_)) => {}
                other => panic!("{at}: {other:?}"),
            }
            for _ in 0..3 {
                match rt.replay(&records).await {
                    Ok(ReplayVerdict::Matches(_)) => {}
                    other => panic!("{at}: {other:?}"),
                }
            }
        }
        println!("always replay {always_replay}: {stops} stops over {cases} cases");
        rt.shutdown().await;
    }
}
