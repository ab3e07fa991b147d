//! Cairn on PostgreSQL with several host processes, next to redb, in one run:
//! `cargo bench --bench postgres`.
//!
//! On a throwaway PostgreSQL cluster on 127.0.0.1 **with fsync on** (unlike the tests'),
//! with 1, 2 and 3 host processes (`examples/bench_host.rs`):
//! - durable steps per second at 1,000 concurrent instances of ten no-op activity steps
//!   (the hosts start a slice each; timed until the tallies count 1,000 completed);
//! - 3-step workflow latency, p50 and p99, one workflow at a time per host, from the
//!   start and end times the database recorded;
//!
//! the same two figures for redb in this process; and the takeover time: two hosts with
//! 10,000 instances in flight (each inside an activity that never ends), one killed
//! with SIGKILL, timed from its leases' expiry (read from the database) until the other
//! has begun every instance's attempt again.
//!
//! `CAIRN_BENCH_QUICK=1` runs it small (a smoke test of the bench).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn::store::{InstanceQuery, InstanceStatus, PostgresStore};
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, WorkflowError};
use cairn_testkit::postgres::TestDb;

#[activity]
async fn noop(_ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    Ok(n)
}

#[workflow]
async fn ten_steps(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let mut acc = n;
    for _ in 0..10 {
        acc = ctx.activity(noop, acc).await?;
    }
    Ok(acc)
}

#[workflow]
async fn three_steps(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let a = ctx.activity(noop, n).await?;
    let b = ctx.activity(noop, a).await?;
    ctx.activity(noop, b).await.map_err(Into::into)
}

fn host_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--example", "bench_host"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "cannot build the bench host");
    profile_dir.join("examples").join("bench_host")
}

/// One host process: its stdin (to say `go`, and closed to stop it) and its stdout
/// lines, each with the time it was read.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Host {
    fn spawn(binary: &Path, url: &str, args: &[String]) -> Self {
        let mut child = Command::new(binary)
            .arg("--db")
            .arg(url)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// Waits for a line satisfying `wanted`; returns when it was read.
    fn expect(&self, wanted: impl Fn(&str) -> bool, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = self
                .lines
                .recv_timeout(left)
                .expect("the host said what was expected in time");
            if wanted(&line) {
                return at;
            }
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn stop(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "host exited with {status}");
    }
}

/// Waits until `hosts` hosts hold every shard between them, in fair shares (a host that
/// joined gets its part at the others' next heartbeats).
async fn settled(url: &str, hosts: u32) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let share = (256 + i64::from(hosts) - 1) / i64::from(hosts);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows = client
            .query(
                "SELECT count(*) FROM cairn_shards
                 WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner",
                &[],
            )
            .await
            .unwrap();
        let counts: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        if counts.len() == hosts as usize
            && counts.iter().sum::<i64>() == 256
            && counts.iter().all(|n| *n <= share)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shares never settled: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Completed runs of `workflow_type`, from the tallies.
async fn completed(store: &PostgresStore, workflow_type: &str) -> u64 {
    let tallies = store.tallies(0).await.unwrap();
    tallies
        .by_status
        .get(&(workflow_type.to_owned(), InstanceStatus::Completed))
        .copied()
        .unwrap_or(0)
}

async fn postgres_throughput(binary: &Path, hosts: u32, instances: u32) -> f64 {
    let db = TestDb::new().await.unwrap();
    let url = db.url();
    let mut running: Vec<Host> = (0..hosts)
        .map(|i| {
            Host::spawn(
                binary,
                &url,
                &[
                    "--workload".into(),
                    "ten".into(),
                    "--instances".into(),
                    instances.to_string(),
                    "--first".into(),
                    i.to_string(),
                    "--stride".into(),
                    hosts.to_string(),
                ],
            )
        })
        .collect();
    for host in &running {
        host.expect(|line| line == "ready", Duration::from_secs(60));
    }
    settled(&url, hosts).await;
    let store = PostgresStore::open_with(&url, 2).await.unwrap();
    let began = Instant::now();
    for host in &mut running {
        host.say("go");
    }
    while completed(&store, "ten_steps").await < u64::from(instances) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = began.elapsed();
    for host in running {
        host.stop();
    }
    f64::from(instances * 10) / took.as_secs_f64()
}

async fn postgres_latency(binary: &Path, hosts: u32, per_host: u32) -> (u64, u64) {
    let db = TestDb::new().await.unwrap();
    let url = db.url();
    let mut running: Vec<Host> = (0..hosts)
        .map(|i| {
            Host::spawn(
                binary,
                &url,
                &[
                    "--workload".into(),
                    "three".into(),
                    "--instances".into(),
                    per_host.to_string(),
                    "--first".into(),
                    i.to_string(),
                ],
            )
        })
        .collect();
    for host in &running {
        host.expect(|line| line == "ready", Duration::from_secs(60));
    }
    settled(&url, hosts).await;
    for host in &mut running {
        host.say("go");
    }
    for host in &running {
        host.expect(|line| line == "done", Duration::from_secs(600));
    }
    for host in running {
        host.stop();
    }
    let store = PostgresStore::open_with(&url, 2).await.unwrap();
    let mut query = InstanceQuery {
        workflow_type: Some("three_steps".into()),
        ..InstanceQuery::default()
    };
    let mut millis = Vec::new();
    loop {
        let page = store.query(&query).await.unwrap();
        millis.extend(
            page.rows
                .iter()
                .map(|row| row.updated_at_ms.saturating_sub(row.created_at_ms)),
        );
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    millis.sort_unstable();
    (percentile(&millis, 0.5), percentile(&millis, 0.99))
}

/// Two hosts, `instances` in flight; one killed. Returns (seconds from the kill until
/// the other has begun every attempt again, seconds from the dead host's lease expiry
/// until then, runs the dead host held).
async fn postgres_takeover(binary: &Path, instances: u32, lease_ms: u64) -> (f64, f64, usize) {
    let db = TestDb::new().await.unwrap();
    let url = db.url();
    let args = |first: u32| -> Vec<String> {
        vec![
            "--workload".into(),
            "blocked".into(),
            "--instances".into(),
            instances.to_string(),
            "--first".into(),
            first.to_string(),
            "--stride".into(),
            "2".into(),
            "--lease-ms".into(),
            lease_ms.to_string(),
        ]
    };
    let mut survivor = Host::spawn(binary, &url, &args(0));
    let mut victim = Host::spawn(binary, &url, &args(1));
    survivor.expect(|line| line == "ready", Duration::from_secs(60));
    victim.expect(|line| line == "ready", Duration::from_secs(60));
    settled(&url, 2).await;
    survivor.say("go");
    victim.say("go");
    // Every instance inside its attempt, on one host or the other.
    let attempts = |line: &str| -> Option<usize> { line.strip_prefix("attempts ")?.parse().ok() };
    let (mut mine, mut theirs) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(600);
    while mine + theirs < instances as usize {
        assert!(Instant::now() < deadline, "{mine} + {theirs} attempts");
        while let Ok((_, line)) = survivor.lines.try_recv() {
            mine = attempts(&line).unwrap_or(mine);
        }
        while let Ok((_, line)) = victim.lines.try_recv() {
            theirs = attempts(&line).unwrap_or(theirs);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Instant::now();
    let killed_wall = std::time::SystemTime::now();
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    // The dead host's leases are the ones that stop moving: read them once the
    // survivor has renewed its own since.
    tokio::time::sleep(Duration::from_millis(lease_ms / 2)).await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT (extract(epoch FROM max(expires_at)) * 1000)::bigint, count(*)
             FROM cairn_shards WHERE owner IS NOT NULL GROUP BY owner ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let expiry_ms: i64 = rows[0].get(0);
    let expiry = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(expiry_ms).unwrap());
    let all_again = survivor.expect(
        |line| attempts(line).is_some_and(|n| n >= instances as usize),
        Duration::from_secs(600),
    );
    let since_kill = all_again.duration_since(killed);
    let expired_after_kill = expiry.duration_since(killed_wall).unwrap_or(Duration::ZERO);
    drop(survivor.stdin.take());
    survivor.child.kill().unwrap();
    survivor.child.wait().unwrap();
    (
        since_kill.as_secs_f64(),
        since_kill.saturating_sub(expired_after_kill).as_secs_f64(),
        theirs,
    )
}

async fn redb_figures(instances: u32, latency_runs: u32) -> (f64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(ten_steps)
        .workflow(three_steps)
        .open(dir.path().join("bench.redb"))
        .await
        .unwrap();
    let began = Instant::now();
    let starts = (0..instances).map(|n| {
        let rt = rt.clone();
        async move { rt.start(ten_steps, &format!("ten-{n}"), n).await.unwrap() }
    });
    for handle in futures::future::join_all(starts).await {
        handle.result().await.unwrap().unwrap();
    }
    let throughput = f64::from(instances * 10) / began.elapsed().as_secs_f64();
    let mut millis = Vec::new();
    for n in 0..latency_runs {
        let began = Instant::now();
        rt.start(three_steps, &format!("three-{n}"), n)
            .await
            .unwrap()
            .result()
            .await
            .unwrap()
            .unwrap();
        millis.push(u64::try_from(began.elapsed().as_micros()).unwrap());
    }
    millis.sort_unstable();
    rt.shutdown().await;
    (
        throughput,
        percentile(&millis, 0.5),
        percentile(&millis, 0.99),
    )
}

fn main() {
    // The bench's cluster keeps fsync on: commits are durable as in production.
    std::env::set_var("CAIRN_PG_DURABLE", "1");
    let quick = std::env::var_os("CAIRN_BENCH_QUICK").is_some();
    let (instances, per_host, in_flight) = if quick {
        (100, 20, 1_000)
    } else {
        (1_000, 200, 10_000)
    };
    let binary = host_binary();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("cairn on PostgreSQL (fsync on, 127.0.0.1), {} cores", num_cpus());
        let (throughput, p50, p99) = redb_figures(instances, per_host).await;
        println!(
            "redb, in process: {throughput:.0} steps/s at {instances} instances; 3-step p50 {:.2} ms, p99 {:.2} ms",
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0
        );
        for hosts in 1..=3 {
            let throughput = postgres_throughput(&binary, hosts, instances).await;
            let (p50, p99) = postgres_latency(&binary, hosts, per_host).await;
            println!(
                "postgres, {hosts} host process(es): {throughput:.0} steps/s at {instances} instances; 3-step p50 {p50} ms, p99 {p99} ms (one at a time per host, recorded times)"
            );
        }
        let lease_ms = 5_000;
        let (since_kill, since_expiry, held) =
            postgres_takeover(&binary, in_flight, lease_ms).await;
        println!(
            "takeover, {in_flight} instances in flight on 2 hosts, lease {} s: the dead host's {held} runs all running again {since_kill:.2} s after the kill, {since_expiry:.2} s after its leases expired",
            lease_ms / 1000
        );
    });
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
