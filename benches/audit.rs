//! Auditor figures: `cargo bench --bench audit`.
//!
//! Records finished orders (a start, three activities, a durable timer, the result)
//! through the runtime into a file, then measures on it, as an auditor runs
//! them: `cairn export` (JSON Lines with decoded payloads, to a file), `cairn verify`
//! (every hash chain) and the replay gate (`cairn::audit::replay_file` with `--all`'s
//! selection: every history replayed against the code, no activity run). Figures are
//! events per second. `CAIRN_BENCH_ORDERS=n` sets the count (default 20,000);
//! `CAIRN_BENCH_QUICK=1` records 2,000.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use cairn::audit::{replay_file, Selection};
use cairn::testing::VirtualClock;
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, WorkflowError};

#[activity]
async fn reserve(_ctx: ActivityCtx, items: u32) -> Result<u32, ActivityError> {
    Ok(items)
}

#[activity]
async fn charge(_ctx: ActivityCtx, cents: u64) -> Result<String, ActivityError> {
    Ok(format!("receipt for {cents} cents"))
}

#[activity]
async fn ship(_ctx: ActivityCtx, items: u32) -> Result<String, ActivityError> {
    Ok(format!("{items} parcels"))
}

#[workflow]
async fn order(ctx: Ctx, cents: u64) -> Result<String, WorkflowError> {
    let items = ctx.activity(reserve, (cents % 7) as u32 + 1).await?;
    let receipt = ctx.activity(charge, cents).await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    let parcels = ctx.activity(ship, items).await?;
    Ok(format!("{receipt}, {parcels}"))
}

fn orders() -> usize {
    if std::env::var("CAIRN_BENCH_QUICK").is_ok_and(|v| v == "1") {
        return 2_000;
    }
    std::env::var("CAIRN_BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

async fn record(path: &Path, count: usize) -> u64 {
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_767_600_000));
    let rt = Runtime::builder()
        .workflow(order)
        .clock(Arc::new(clock.clone()))
        .always_replay(false)
        .open(path)
        .await
        .unwrap();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(count);
    for n in 0..count {
        handles.push(
            rt.start(order, &format!("order-{n:06}"), 1_000 + n as u64)
                .await
                .unwrap(),
        );
    }
    // The orders wait for their hour: time skips from timer to timer until all are done.
    let skipper = tokio::spawn({
        let clock = clock.clone();
        async move {
            loop {
                clock.skip_to_next_timer().await;
            }
        }
    });
    for handle in handles {
        handle.result().await.unwrap().unwrap();
    }
    skipper.abort();
    rt.shutdown().await;
    let took = started.elapsed();
    // The events the file holds, as `cairn stats` counts them.
    let stats = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--db")
        .arg(path)
        .arg("stats")
        .output()
        .unwrap();
    let events: u64 = String::from_utf8_lossy(&stats.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("events")?.trim().parse().ok())
        .unwrap();
    println!(
        "recorded {count} orders ({events} events) in {:.1} s",
        took.as_secs_f64()
    );
    events
}

fn rate(label: &str, events: u64, took: Duration) {
    println!(
        "{label:<28} {events} events in {:.2} s: {:.0} events/s",
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.redb");
    let events = record(&path, orders()).await;
    let bytes = std::fs::metadata(&path).unwrap().len();
    println!("file: {:.1} MB", bytes as f64 / 1e6);

    let out = dir.path().join("export.jsonl");
    let began = Instant::now();
    let export = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--db")
        .arg(&path)
        .arg("export")
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    rate("cairn export", events, began.elapsed());
    println!(
        "  {:.1} MB of JSON Lines",
        std::fs::metadata(&out).unwrap().len() as f64 / 1e6
    );

    let began = Instant::now();
    let verify = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--db")
        .arg(&path)
        .args(["verify", "--quiet"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    rate("cairn verify", events, began.elapsed());

    let began = Instant::now();
    let report = replay_file(
        Runtime::builder().workflow(order),
        &path,
        &Selection::All,
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.passed() && report.matched == orders(), "{report:?}");
    rate("replay --all (the gate)", events, began.elapsed());
}
