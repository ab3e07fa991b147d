//! Property: a workflow that joins several branches, each a sequence of activities that
//! finish after random delays, replays to the same result from the history it recorded.
//! The branches' later calls are numbered by when their earlier ones finished; replay
//! hands the recorded results back in the order the run took them, so it numbers them
//! the same, whatever the join (`join_all`, `tokio::join!`, `FuturesUnordered`).
//!
//! On redb with runs kept in memory, where an activity's result goes to the workflow the
//! moment it is taken and is recorded in that order. Where a result is first recorded
//! and then handed over (PostgreSQL; always-replay mode; timers, signals and children
//! everywhere), two branches can go on in another order than their results were
//! recorded in, which this does not hold yet (docs/GUARANTEES.md, "Replayed in the
//! order ..."). 24 cases by default; `CAIRN_SHAPE_CASES=<n>` runs more and
//! `CAIRN_SEED=<n>` picks the seed (printed either way).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn::audit::ReplayVerdict;
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, WorkflowError};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};

/// One branch: the delays, in milliseconds, of its activities, called one after another.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Branch(Vec<u64>);

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

fn branch(ctx: &Ctx, index: u64, delays: Vec<u64>) -> BoxFuture<'_, Result<u64, WorkflowError>> {
    async move {
        let mut acc = index;
        for (k, delay) in delays.into_iter().enumerate() {
            acc = ctx.activity(mix, (acc, k as u64, delay)).await?;
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

fn shape(rng: &mut Rng) -> (Join, Vec<Branch>) {
    let join = match rng.next(3) {
        0 => Join::All,
        1 => Join::Rotating,
        _ => Join::Unordered,
    };
    let count = match join {
        Join::Rotating => 3,
        _ => 2 + rng.next(3) as usize,
    };
    // Delays of 0 to 3 ms, so that branches often finish in the same instant.
    let branches = (0..count)
        .map(|_| Branch((0..1 + rng.next(4)).map(|_| rng.next(4)).collect()))
        .collect();
    (join, branches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_sequences_replay_to_what_they_did() {
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
        .unwrap_or(24);
    println!("CAIRN_SEED={seed} CAIRN_SHAPE_CASES={cases}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let live = Runtime::builder()
        .workflow(joined)
        .always_replay(false)
        .open(dir.path().join("live.redb"))
        .await
        .unwrap();
    for case in 0..cases {
        let shape = shape(&mut rng);
        let want = expected(&shape.1);
        let id = format!("case-{case}");
        let got = live
            .start(joined, &id, shape.clone())
            .await
            .unwrap()
            .result()
            .await
            .unwrap();
        assert_eq!(got.as_ref().ok(), Some(&want), "{shape:?}");
        let records: Vec<_> = live
            .history(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.record)
            .collect();
        for _ in 0..3 {
            match live.replay(&records).await {
                Ok(ReplayVerdict::Matches(_)) => {}
                other => panic!("case {case} (seed {seed}) {shape:?}: {other:?}"),
            }
        }
    }
    live.shutdown().await;
}
