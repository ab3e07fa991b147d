//! Cairn's durability figures, in one run: `cargo bench --bench durability`.
//!
//! Prints durable steps per second at 1, 100 and 1,000 concurrent instances (10 no-op
//! activity steps each) with events per commit; start-to-result latency of a 3-step
//! workflow run one at a time; the latency of one durable step of a lone instance next to
//! the raw redb `Durability::Immediate` single-insert commit latency (the floor); and
//! recovery of 10,000 unfinished instances of 20 events each; and the query indexes: one
//! page of 50 among 100,000 runs by type, by status and by attribute, next to reading
//! every row.
//!
//! Set `CAIRN_BENCH_QUICK=1` for a smaller, faster run (used to smoke-test the bench).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::store::RedbJournal;
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, WorkflowError};

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

static STEP_STARTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[activity]
async fn timed_noop(_ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    STEP_STARTS.lock().unwrap().push(Instant::now());
    Ok(n)
}

#[workflow]
async fn lone_steps(ctx: Ctx, steps: u32) -> Result<u32, WorkflowError> {
    for i in 0..steps {
        ctx.activity(timed_noop, i).await?;
    }
    Ok(steps)
}

static AT_GATE: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn gate(_ctx: ActivityCtx) -> Result<(), ActivityError> {
    AT_GATE.fetch_add(1, Ordering::SeqCst);
    std::future::pending().await
}

#[workflow]
async fn nineteen_then_wait(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let mut acc = n;
    for _ in 0..19 {
        acc = ctx.activity(noop, acc).await?;
    }
    ctx.activity(gate, ()).await?;
    Ok(acc)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

async fn open(dir: &tempfile::TempDir, name: &str) -> Runtime {
    Runtime::builder()
        .workflow(ten_steps)
        .workflow(three_steps)
        .workflow(lone_steps)
        .workflow(nineteen_then_wait)
        .open(dir.path().join(name))
        .await
        .unwrap()
}

async fn throughput(dir: &tempfile::TempDir, instances: u32) {
    // Opened on a journal the bench keeps a handle to, for the writer's counters.
    let journal = Arc::new(
        RedbJournal::open(dir.path().join(format!("throughput-{instances}.redb"))).unwrap(),
    );
    let stats = journal.writer_stats().unwrap().clone();
    let rt = Runtime::builder()
        .workflow(ten_steps)
        .workflow(three_steps)
        .workflow(lone_steps)
        .workflow(nineteen_then_wait)
        .open_journal(journal)
        .await
        .unwrap();
    let (commits0, events0) = (
        stats.commits.load(Ordering::Relaxed),
        stats.events.load(Ordering::Relaxed),
    );
    // Enough rounds for a second or so of work at each level, so one slow fsync does not
    // decide the figure.
    let rounds = match instances {
        1 => 100,
        100 => 50,
        _ => 10,
    };
    let started = Instant::now();
    for round in 0..rounds {
        // All instances start at once, as under real load, so their steps share commits.
        let runs = (0..instances).map(|i| {
            let rt = rt.clone();
            async move {
                let handle = rt
                    .start(ten_steps, &format!("t-{round}-{i}"), i)
                    .await
                    .unwrap();
                handle.result().await.unwrap().unwrap();
            }
        });
        futures::future::join_all(runs).await;
    }
    let elapsed = started.elapsed();
    let steps = f64::from(instances * rounds * 10);
    let commits = stats.commits.load(Ordering::Relaxed) - commits0;
    let events = stats.events.load(Ordering::Relaxed) - events0;
    println!(
        "throughput  {instances:>5} concurrent instances x 10 steps: {:>9.0} durable steps/s  ({:.1} events/commit, {} instances in {:.2} s)",
        steps / elapsed.as_secs_f64(),
        events as f64 / commits.max(1) as f64,
        instances * rounds,
        elapsed.as_secs_f64()
    );
    rt.shutdown().await;
}

async fn three_step_latency(dir: &tempfile::TempDir, runs: u32) {
    let rt = open(dir, "latency.redb").await;
    let mut samples = Vec::new();
    for i in 0..runs {
        let started = Instant::now();
        rt.start(three_steps, &format!("l-{i}"), i)
            .await
            .unwrap()
            .result()
            .await
            .unwrap()
            .unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "latency     3-step workflow, start to result, one at a time ({runs} runs): p50 {}  p99 {}",
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99))
    );
    rt.shutdown().await;
}

async fn lone_step_latency(dir: &tempfile::TempDir, steps: u32) -> Duration {
    let rt = open(dir, "lone.redb").await;
    STEP_STARTS.lock().unwrap().clear();
    rt.start(lone_steps, "lone", steps)
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    let starts = STEP_STARTS.lock().unwrap().clone();
    let mut samples: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    samples.sort();
    let p50 = percentile(&samples, 0.5);
    println!(
        "step        one durable step of a lone instance ({} steps): p50 {}  p99 {}",
        samples.len(),
        us(p50),
        us(percentile(&samples, 0.99))
    );
    rt.shutdown().await;
    p50
}

/// The floor: redb `Immediate` commits of one small insert, and of the shape a step
/// commit has (one log insert plus one instance-row overwrite, two tables).
fn raw_redb_commit(dir: &tempfile::TempDir, commits: u64) -> Duration {
    const LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
    const ROWS: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("rows");
    let db = redb::Database::create(dir.path().join("raw.redb")).unwrap();
    let value = [7u8; 120];
    let row = [9u8; 90];
    let mut single = Vec::new();
    let mut shaped = Vec::new();
    for i in 0..commits {
        let started = Instant::now();
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(redb::Durability::Immediate).unwrap();
        txn.open_table(LOG)
            .unwrap()
            .insert(i, value.as_slice())
            .unwrap();
        txn.commit().unwrap();
        single.push(started.elapsed());

        let started = Instant::now();
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(redb::Durability::Immediate).unwrap();
        txn.open_table(LOG)
            .unwrap()
            .insert(commits + i, value.as_slice())
            .unwrap();
        txn.open_table(ROWS)
            .unwrap()
            .insert(7u128, row.as_slice())
            .unwrap();
        txn.commit().unwrap();
        shaped.push(started.elapsed());
    }
    single.sort();
    shaped.sort();
    let p50 = percentile(&single, 0.5);
    println!(
        "floor       raw redb Immediate commit of one 120-byte insert ({commits} commits): p50 {}  p99 {}",
        us(p50),
        us(percentile(&single, 0.99))
    );
    println!(
        "floor       raw redb Immediate commit of one insert + one row overwrite (2 tables): p50 {}  p99 {}",
        us(percentile(&shaped, 0.5)),
        us(percentile(&shaped, 0.99))
    );
    p50
}

async fn recovery(dir: &tempfile::TempDir, instances: u32) {
    let path = dir.path().join("recovery.redb");
    {
        let rt = open(dir, "recovery.redb").await;
        AT_GATE.store(0, Ordering::SeqCst);
        let starts = (0..instances).map(|i| {
            let rt = rt.clone();
            async move {
                rt.start(nineteen_then_wait, &format!("r-{i}"), i)
                    .await
                    .unwrap()
            }
        });
        futures::future::join_all(starts).await;
        while AT_GATE.load(Ordering::SeqCst) < instances as usize {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rt.shutdown().await;
    }
    AT_GATE.store(0, Ordering::SeqCst);
    let started = Instant::now();
    let rt = Runtime::builder()
        .workflow(nineteen_then_wait)
        .open(&path)
        .await
        .unwrap();
    let accepting = started.elapsed();
    while AT_GATE.load(Ordering::SeqCst) < instances as usize {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let running = started.elapsed();
    let events = f64::from(instances) * 20.0;
    println!(
        "recovery    {instances} unfinished instances x 20 events: all running again after {:.0} ms ({:.0} replayed events/s; open returned after {:.0} ms)",
        running.as_secs_f64() * 1e3,
        events / running.as_secs_f64(),
        accepting.as_secs_f64() * 1e3
    );
    rt.shutdown().await;
}

/// Query pages from the indexes among `runs` runs of 20 types, against reading them all.
async fn queries(dir: &tempfile::TempDir, runs: u32) {
    use cairn::events::{AttrValue, EventKind, Payload};
    use cairn::store::{Expect, InstanceQuery, InstanceStatus, Journal};
    let journal = Arc::new(RedbJournal::open(dir.path().join("queries.redb")).unwrap());
    let starts = (0..runs).map(|n| {
        let journal = journal.clone();
        async move {
            let started = journal
                .start(
                    format!("q-{n}"),
                    format!("type-{}", n % 20),
                    Payload::new(0, Vec::new()),
                    None,
                )
                .await
                .unwrap();
            if n % 100 == 0 {
                let branch = EventKind::AttributesSet {
                    step: 1,
                    attributes: vec![("branch".into(), AttrValue::from("leeds"))],
                };
                journal
                    .append(started.key, branch, Expect::End)
                    .await
                    .unwrap();
            }
            if n % 2 == 0 {
                let done = EventKind::WorkflowCompleted {
                    output: Payload::new(0, Vec::new()),
                };
                journal
                    .append(started.key, done, Expect::End)
                    .await
                    .unwrap();
            }
        }
    });
    futures::future::join_all(starts).await;
    let time = |query: InstanceQuery| {
        let journal = journal.clone();
        async move {
            let mut best = Duration::MAX;
            let mut rows = 0;
            for _ in 0..20 {
                let started = Instant::now();
                let page = journal.query(&query).await.unwrap();
                best = best.min(started.elapsed());
                rows = page.rows.len();
            }
            (best, rows)
        }
    };
    let page = |query: InstanceQuery| InstanceQuery { limit: 50, ..query };
    let (by_type, n1) = time(page(InstanceQuery {
        workflow_type: Some("type-7".into()),
        statuses: vec![InstanceStatus::Running],
        ..InstanceQuery::default()
    }))
    .await;
    let (by_status, n2) = time(page(InstanceQuery {
        statuses: vec![InstanceStatus::Completed],
        ..InstanceQuery::default()
    }))
    .await;
    let (by_attribute, n3) = time(page(InstanceQuery {
        attributes: vec![("branch".into(), AttrValue::from("leeds"))],
        ..InstanceQuery::default()
    }))
    .await;
    let started = Instant::now();
    let mut query = InstanceQuery::default();
    let mut all = 0usize;
    loop {
        let page = journal.query(&query).await.unwrap();
        all += page.rows.len();
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    let everything = started.elapsed();
    println!(
        "queries     {runs} runs: a page of {n1} by type+status {}, {n2} by status {}, {n3} by attribute {} (best of 20); all {all} rows page by page {:.0} ms",
        us(by_type),
        us(by_status),
        us(by_attribute),
        everything.as_secs_f64() * 1e3
    );
    journal.close();
}

fn main() {
    let quick = std::env::var_os("CAIRN_BENCH_QUICK").is_some();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "cairn durability bench ({} worker threads, {})",
        num_cpus(),
        if quick { "quick" } else { "full" }
    );
    let only = std::env::var("CAIRN_BENCH_ONLY").ok();
    let run = |section: &str| only.as_deref().is_none_or(|o| o == section);
    rt.block_on(async {
        if run("throughput") {
            for instances in [1, 100, 1000] {
                throughput(&dir, if quick { instances.min(100) } else { instances }).await;
            }
        }
        if run("latency") {
            three_step_latency(&dir, if quick { 50 } else { 1000 }).await;
            let step = lone_step_latency(&dir, if quick { 100 } else { 2000 }).await;
            let floor = raw_redb_commit(&dir, if quick { 100 } else { 2000 });
            println!(
                "ratio       lone step p50 / raw commit p50: {:.2}x",
                step.as_secs_f64() / floor.as_secs_f64()
            );
        }
        if run("recovery") {
            recovery(&dir, if quick { 500 } else { 10_000 }).await;
        }
        if run("queries") {
            queries(&dir, if quick { 2_000 } else { 100_000 }).await;
        }
    });
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
