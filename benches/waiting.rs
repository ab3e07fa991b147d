//! Figures for waiting instances, in one run: `cargo bench --bench waiting`.
//!
//! - resident memory per waiting instance with 100,000 instances asleep and evicted;
//! - time to open a host holding 100,000 sleeping instances until it accepts new work
//!   (they must not be replayed at start);
//! - timer lateness (p50/p99/max) with 10,000 timers due within the same second.
//!
//! `CAIRN_BENCH_QUICK=1` runs 10,000 sleepers and 1,000 timers instead.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn::{workflow, Ctx, Runtime, WorkflowError};

#[workflow]
async fn sleeper(ctx: Ctx, days: u32) -> Result<u32, WorkflowError> {
    ctx.sleep(Duration::from_secs(24 * 3600) * days).await?;
    Ok(days)
}

/// Sleeps until `deadline_ms` and returns how late it woke, in ms.
#[workflow]
async fn punctual(ctx: Ctx, deadline_ms: u64) -> Result<u64, WorkflowError> {
    ctx.sleep_until(UNIX_EPOCH + Duration::from_millis(deadline_ms))
        .await?;
    let now = ctx.now().await;
    let now_ms = now.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    Ok(now_ms.saturating_sub(deadline_ms))
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn open(path: &std::path::Path) -> Runtime {
    Runtime::builder()
        .workflow(sleeper)
        .workflow(punctual)
        .eviction_idle(Some(Duration::ZERO))
        .open(path)
        .await
        .unwrap()
}

async fn start_all<F>(rt: &Runtime, count: u32, start: F)
where
    F: Fn(Runtime, u32) -> futures::future::BoxFuture<'static, ()>,
{
    let chunk = 5_000;
    let mut next = 0;
    while next < count {
        let end = (next + chunk).min(count);
        futures::future::join_all((next..end).map(|i| start(rt.clone(), i))).await;
        next = end;
    }
}

async fn sleepers(dir: &tempfile::TempDir, count: u32) {
    let path = dir.path().join("sleepers.redb");
    let started = Instant::now();
    {
        let rt = open(&path).await;
        start_all(&rt, count, |rt, i| {
            Box::pin(async move {
                rt.start(sleeper, &format!("s-{i}"), 30).await.unwrap();
            })
        })
        .await;
        while rt.engine().resident_runs() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rt.shutdown().await;
    }
    println!(
        "setup       {count} instances started, asleep for 30 days and evicted in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Each measurement runs in a fresh process, so memory freed by the setup above
    // (which the allocator keeps) does not hide or inflate the figure.
    let empty = dir.path().join("empty.redb");
    let baseline = measure_in_child(&empty);
    let loaded = measure_in_child(&path);
    println!(
        "start       host with {count} sleeping instances: open {:.0} ms, first new start accepted after {:.0} ms, {} replays (empty file: {:.0} ms)",
        loaded.open_ms, loaded.accept_ms, loaded.replays, baseline.open_ms
    );
    let growth = loaded.rss.saturating_sub(baseline.rss);
    println!(
        "memory      resident set of a host with {count} evicted instances minus an empty host: {:.1} MiB, {:.0} bytes per instance (redb's cached index pages included)",
        growth as f64 / (1024.0 * 1024.0),
        growth as f64 / f64::from(count)
    );
}

struct OpenFigures {
    open_ms: f64,
    accept_ms: f64,
    replays: u64,
    rss: u64,
}

fn measure_in_child(path: &std::path::Path) -> OpenFigures {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("CAIRN_BENCH_CHILD_OPEN", path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("child "))
        .unwrap_or_else(|| panic!("child said: {text}"));
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    OpenFigures {
        open_ms: f[0],
        accept_ms: f[1],
        replays: f[2] as u64,
        rss: f[3] as u64,
    }
}

async fn child_open(path: std::path::PathBuf) {
    let opening = Instant::now();
    let rt = open(&path).await;
    let opened = opening.elapsed();
    rt.start(sleeper, "new-work", 1).await.unwrap();
    let accepting = opening.elapsed();
    println!(
        "child {} {} {} {}",
        opened.as_secs_f64() * 1e3,
        accepting.as_secs_f64() * 1e3,
        rt.engine().replays(),
        rss_bytes()
    );
    rt.shutdown().await;
}

async fn timer_lateness(dir: &tempfile::TempDir, count: u32) {
    let rt = open(&dir.path().join("timers.redb")).await;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // All due within one second, starting 3 s from now (time to start and evict them).
    let base = now_ms + 3_000;
    start_all(&rt, count, move |rt, i| {
        Box::pin(async move {
            let deadline = base + u64::from(i) * 1_000 / u64::from(count);
            rt.start(punctual, &format!("t-{i}"), deadline)
                .await
                .unwrap();
        })
    })
    .await;
    let first_due = UNIX_EPOCH + Duration::from_millis(base);
    if let Ok(wait) = first_due.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait.saturating_sub(Duration::from_millis(100))).await;
    }
    let resident_before = rt.engine().resident_runs();
    let results = futures::future::join_all((0..count).map(|i| {
        let rt = rt.clone();
        async move {
            rt.handle(punctual, &format!("t-{i}"))
                .result()
                .await
                .unwrap()
                .unwrap()
        }
    }))
    .await;
    let mut late = results;
    late.sort_unstable();
    let pct = |p: f64| late[((late.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "timers      {count} timers due within one second ({} of {count} runs still resident 100 ms before the first, the rest evicted): lateness p50 {} ms, p99 {} ms, max {} ms",
        resident_before,
        pct(0.5),
        pct(0.99),
        late.last().copied().unwrap_or(0)
    );
    rt.shutdown().await;
}

fn main() {
    let quick = std::env::var_os("CAIRN_BENCH_QUICK").is_some();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(path) = std::env::var_os("CAIRN_BENCH_CHILD_OPEN") {
        rt.block_on(child_open(path.into()));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    println!(
        "cairn waiting bench ({})",
        if quick { "quick" } else { "full" }
    );
    rt.block_on(async {
        sleepers(&dir, if quick { 10_000 } else { 100_000 }).await;
        timer_lateness(&dir, if quick { 1_000 } else { 10_000 }).await;
    });
}
