//! HTTP API figures: `cargo bench --bench api`.
//!
//! - the first page of 100 instances (no filter, and filtered by type and status) with
//!   1,000,000 finished instances in the file (written to the journal directly);
//! - signals over HTTP to 1,000 waiting instances (each a durable commit);
//! - the dashboard's overview on the same file (answered from the journal's tallies).
//!
//! With `CAIRN_BENCH_SERVE=1` the host keeps serving the file after the figures (it
//! prints `serving <url> <token>`) until its standard input closes, so that
//! `scripts/bench_dashboard.sh` can time the dashboard in headless Chromium against it.
//!
//! Requests come from 16 concurrent clients on 127.0.0.1 for 10 s each; the figures are
//! requests per second and the latency p50 and p99. `CAIRN_BENCH_QUICK=1` stores 50,000
//! instances and runs 3 s per figure; `CAIRN_BENCH_INSTANCES=n` sets the count.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::events::{EventKind, Payload};
use cairn::server::Tokens;
use cairn::store::{Expect, Journal, RedbJournal};
use cairn::{workflow, Actor, Ctx, Runtime, Signal, WorkflowError};
use futures::StreamExt;

const PING: Signal<u32> = Signal::new("ping");
const TOKEN: &str = "bench-token-0123456789";
const CLIENTS: usize = 16;
const WAITERS: usize = 1000;

/// Takes pings for ever.
#[workflow]
async fn waiter(ctx: Ctx, _n: u32) -> Result<(), WorkflowError> {
    loop {
        ctx.receive(PING).await?;
    }
}

fn quick() -> bool {
    std::env::var("CAIRN_BENCH_QUICK").is_ok_and(|v| v == "1")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Runs `request` from `CLIENTS` clients for `period`; prints the rate and latencies.
async fn load<F, Fut>(label: &str, period: Duration, request: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = reqwest::StatusCode> + Send,
{
    let request = Arc::new(request);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut times = Vec::new();
                let mut n = client;
                while started.elapsed() < period {
                    let at = Instant::now();
                    let status = request(n).await;
                    assert!(status.is_success(), "{status}");
                    times.push(at.elapsed());
                    n += CLIENTS;
                }
                times
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    times.sort();
    println!(
        "api   {label}: {:.0} requests/s, p50 {}, p99 {} ({} requests, {CLIENTS} clients)",
        times.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        times.len()
    );
}

#[tokio::main]
async fn main() {
    let instances: u32 = std::env::var("CAIRN_BENCH_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 50_000 } else { 1_000_000 });
    let period = Duration::from_secs(if quick() { 3 } else { 10 });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.redb");
    {
        let journal = Arc::new(RedbJournal::open(&path).unwrap());
        let started = Instant::now();
        futures::stream::iter(0..instances)
            .for_each_concurrent(256, |i| {
                let journal = journal.clone();
                async move {
                    let run = journal
                        .start(
                            format!("case-{i:07}"),
                            "case".into(),
                            Payload::new(0, b"1".to_vec()),
                            None,
                        )
                        .await
                        .unwrap();
                    let end = EventKind::WorkflowCompleted {
                        output: Payload::new(0, b"true".to_vec()),
                    };
                    journal.append(run.key, end, Expect::End).await.unwrap();
                }
            })
            .await;
        println!(
            "api   {instances} finished instances written in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        journal.close();
    }
    let rt = Runtime::builder()
        .workflow(waiter)
        .signal(PING)
        .open(&path)
        .await
        .unwrap();
    for n in 0..WAITERS {
        rt.start(waiter, &format!("waiter-{n:04}"), 0)
            .await
            .unwrap();
    }
    let mut tokens = Tokens::new();
    tokens.add(TOKEN, Actor::new("bench", ["admin"])).unwrap();
    let running = rt
        .http_server(tokens)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = Arc::new(format!("http://{}", running.addr()));
    let http = reqwest::Client::new();

    let (b, h) = (base.clone(), http.clone());
    load("first page of 100 instances", period, move |_| {
        let (b, h) = (b.clone(), h.clone());
        async move {
            h.get(format!("{b}/api/v1/instances?limit=100"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .status()
        }
    })
    .await;
    let (b, h) = (base.clone(), http.clone());
    load("first page of 100, by type and status", period, move |_| {
        let (b, h) = (b.clone(), h.clone());
        async move {
            h.get(format!(
                "{b}/api/v1/instances?limit=100&workflow_type=case&status=completed"
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status()
        }
    })
    .await;
    let (b, h) = (base.clone(), http.clone());
    load("signal (durable)", period, move |n| {
        let (b, h) = (b.clone(), h.clone());
        async move {
            h.post(format!(
                "{b}/api/v1/instances/waiter-{:04}/signals/ping",
                n % WAITERS
            ))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("1")
            .send()
            .await
            .unwrap()
            .status()
        }
    })
    .await;
    let mut times = Vec::new();
    for _ in 0..5 {
        let at = Instant::now();
        let status = http
            .get(format!("{base}/api/v1/overview"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success());
        times.push(at.elapsed());
    }
    times.sort();
    println!(
        "api   overview with {instances} instances stored: p50 {}, max {}",
        ms(percentile(&times, 0.5)),
        ms(times[times.len() - 1])
    );
    if std::env::var("CAIRN_BENCH_SERVE").is_ok_and(|v| v == "1") {
        println!("serving {base} {TOKEN}");
        // Until the script that measures closes our standard input.
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        })
        .await
        .unwrap();
    }
    running.stop().await;
    rt.shutdown().await;
}
