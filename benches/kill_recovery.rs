//! Recovery after `kill -9` with 10,000 instances in flight: `cargo bench --bench
//! kill_recovery`.
//!
//! The bench runs itself as a child host process that starts 10,000 instances; each
//! records 10 activity steps and then sits in an 11th activity that does not return. Once
//! every instance is there, the child is SIGKILLed. The bench then opens the same file
//! in-process and reports how long the open took and how long until every instance was
//! replayed and had its in-flight activity running again (the moment the host is back
//! to where it was killed). `CAIRN_BENCH_INSTANCES` changes the count.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, WorkflowError};

const CHILD_ENV: &str = "CAIRN_BENCH_KILL_CHILD";
const STEPS_BEFORE: u32 = 10;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn step(_ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    Ok(n + 1)
}

#[activity]
async fn never_returns(_ctx: ActivityCtx, _n: u32) -> Result<u32, ActivityError> {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    std::future::pending().await
}

#[workflow]
async fn long_job(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let mut acc = n;
    for _ in 0..STEPS_BEFORE {
        acc = ctx.activity(step, acc).await?;
    }
    ctx.activity(never_returns, acc).await.map_err(Into::into)
}

fn instances() -> usize {
    std::env::var("CAIRN_BENCH_INSTANCES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

async fn wait_in_flight(count: usize) {
    while IN_FLIGHT.load(Ordering::SeqCst) < count {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// The host that gets killed: starts every instance and says when all are in flight.
async fn child(path: &str) {
    let rt = Runtime::builder()
        .workflow(long_job)
        .open(path)
        .await
        .unwrap();
    let count = instances();
    let starts: Vec<_> = (0..count)
        .map(|i| {
            let rt = rt.clone();
            tokio::spawn(async move { rt.start(long_job, &format!("job-{i}"), 0).await })
        })
        .collect();
    for start in starts {
        start.await.unwrap().unwrap();
    }
    wait_in_flight(count).await;
    println!("in-flight");
    std::future::pending::<()>().await;
}

#[tokio::main]
async fn main() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(&path).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.redb");
    let count = instances();
    let started = Instant::now();
    let mut host = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(host.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "in-flight",
        "the host died before its work was in flight"
    );
    let loaded = started.elapsed();
    host.kill().unwrap(); // SIGKILL
    host.wait().unwrap();
    let size = std::fs::metadata(&path).unwrap().len();

    let t0 = Instant::now();
    let rt = Runtime::builder()
        .workflow(long_job)
        .open(&path)
        .await
        .unwrap();
    let opened = t0.elapsed();
    wait_in_flight(count).await;
    let resumed = t0.elapsed();
    let replays = rt.engine().replays();
    println!(
        "kill -9 with {count} instances in flight ({} events each, {:.1} MiB file, loaded in {:.1} s):",
        STEPS_BEFORE + 1,
        size as f64 / (1 << 20) as f64,
        loaded.as_secs_f64()
    );
    println!(
        "  reopen {:.0} ms; every instance replayed and its activity running again after {:.0} ms ({replays} replays)",
        opened.as_secs_f64() * 1e3,
        resumed.as_secs_f64() * 1e3
    );
    assert_eq!(
        replays as usize, count,
        "each instance replayed exactly once"
    );
    // The in-flight activities never return; exiting ends them.
    std::process::exit(0);
}
