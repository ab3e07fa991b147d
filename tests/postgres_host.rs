//! The runtime on PostgreSQL, as a host program uses it: a mixed workload (activities,
//! timers, children, signals, human tasks) gives the same results as on redb; a host that
//! shuts down mid-way hands its instances to the next, which finishes them without running
//! a completed step again; every history verifies and the database's invariants hold.
//! Each test runs on a fresh database of this binary's throwaway cluster on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::store::{verify_history, Journal, PostgresJournal, PostgresOptions};
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Actor, Ctx, Runtime, TaskKind, TaskQuery,
    WorkflowError,
};
use cairn_testkit::postgres::TestDb;

/// Executions of `price` by input (the tests of this binary use inputs of their own).
static PRICED: Mutex<Option<HashMap<u32, u32>>> = Mutex::new(None);

#[activity]
async fn price(_ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    *PRICED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(n)
        .or_default() += 1;
    Ok(n * 3)
}

/// Executions of `price` with an input in `range`, by input.
fn priced(range: std::ops::Range<u32>) -> HashMap<u32, u32> {
    PRICED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .iter()
        .filter(|(n, _)| range.contains(n))
        .map(|(n, count)| (*n, *count))
        .collect()
}

#[workflow]
async fn part(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let priced = ctx.activity(price, n + 100).await?;
    Ok(priced + 1)
}

const REVIEW: TaskKind<u32, String> = TaskKind::new("review");

#[workflow]
async fn case(ctx: Ctx, n: u32) -> Result<String, WorkflowError> {
    let priced = ctx.activity(price, n).await?;
    ctx.sleep(Duration::from_millis(30)).await?;
    let child_id = format!("{}/part", ctx.instance_id());
    let child = ctx.child(part, &child_id, n).await?;
    let note: String = ctx.signal("go").await?;
    let decided = ctx.human_task(REVIEW.task(n).roles(["clerk"])).await?;
    Ok(format!(
        "{priced}/{child}/{note}/{} by {}",
        decided.decision, decided.by.id
    ))
}

fn clerk() -> Actor {
    Actor::new("cleo", ["clerk"])
}

fn builder() -> cairn::RuntimeBuilder {
    Runtime::builder().workflow(case).workflow(part)
}

/// Sends `go` to every case and decides every task until `n` cases are done; returns
/// their results in id order.
async fn drive(rt: &Runtime, ids: &[String]) -> Vec<String> {
    for id in ids {
        rt.signal(id, "go", &format!("go-{id}")).await.unwrap();
    }
    let mut decided = 0;
    for _ in 0..4000 {
        let page = rt.tasks(&TaskQuery::for_actor(&clerk())).await.unwrap();
        for row in &page.rows {
            let task = row.id();
            rt.claim(&clerk(), &task).await.unwrap();
            rt.complete(&clerk(), &task, &format!("ok-{}", task.instance))
                .await
                .unwrap();
            decided += 1;
        }
        if decided == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(decided, ids.len(), "every case reached its task");
    let mut results = Vec::new();
    for id in ids {
        let outcome = rt.handle(case, id).result().await.unwrap().unwrap();
        results.push(outcome);
    }
    results
}

fn ids(prefix: &str, n: u32) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

async fn start_all(rt: &Runtime, ids: &[String], base: u32) {
    for (n, id) in ids.iter().enumerate() {
        let created = rt
            .start(case, id, base + u32::try_from(n).unwrap())
            .await
            .unwrap()
            .created();
        assert!(created, "{id} is new");
    }
}

/// Every history on the database verifies, and the invariants hold.
async fn audit(url: &str) -> usize {
    let journal = PostgresJournal::open_with(
        url,
        PostgresOptions {
            pool_size: 2,
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap();
    let violations = journal.store().invariants().await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    let mut checked = 0;
    let mut page = journal
        .query(&cairn::store::InstanceQuery::default())
        .await
        .unwrap();
    loop {
        for row in &page.rows {
            let raw = journal.history(row.key).await.unwrap().unwrap();
            verify_history(raw).unwrap();
            checked += 1;
        }
        let Some(next) = page.next else { break };
        page = journal
            .query(&cairn::store::InstanceQuery {
                after: Some(next),
                ..cairn::store::InstanceQuery::default()
            })
            .await
            .unwrap();
    }
    journal.shutdown().await;
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_workload_gives_on_postgres_what_it_gives_on_redb() {
    let ids = ids("order", 12);

    let dir = tempfile::tempdir().unwrap();
    let on_redb = builder().open(dir.path().join("db.redb")).await.unwrap();
    start_all(&on_redb, &ids, 0).await;
    let expected = drive(&on_redb, &ids).await;
    on_redb.shutdown().await;

    let db = TestDb::new().await.unwrap();
    let on_postgres = builder().open_postgres(&db.url()).await.unwrap();
    start_all(&on_postgres, &ids, 0).await;
    let got = drive(&on_postgres, &ids).await;
    assert_eq!(got, expected);
    assert!(
        got[3].starts_with("9/310/go-order-03/ok-order-03 by cleo"),
        "{}",
        got[3]
    );
    // Starting an id again finds it, on PostgreSQL as on redb.
    let again = on_postgres.start(case, &ids[0], 0).await.unwrap();
    assert!(!again.created());
    on_postgres.shutdown().await;

    // Each case and its child: 24 runs, each history verified.
    assert_eq!(audit(&db.url()).await, 24);

    // The auditor's CLI reads the database as it reads a file.
    let cairn = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("--db")
            .arg(db.url())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = cairn(&["verify"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("24 runs: 24 intact, 0 damaged"), "{stdout}");
    let (code, stdout, stderr) = cairn(&["list", "--type", "case"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.matches("order-").count(), 12, "{stdout}");
    let (code, stdout, stderr) = cairn(&["export"]);
    assert_eq!(code, Some(0), "{stderr}");
    let events: usize = stdout.lines().count();
    assert!(events > 24 * 3, "{events} events exported");
    let (code, stdout, _) = cairn(&["stats"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("database    postgres://") && !stdout.contains('@'),
        "{stdout}"
    );
    // And the replay gate replays every recorded history against the current code.
    let report =
        cairn::audit::replay_file(builder(), db.url(), &cairn::audit::Selection::All, |_| {})
            .await
            .unwrap();
    assert_eq!((report.matched, report.diverged.len()), (24, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_mid_way_hands_its_instances_to_the_next() {
    const BASE: u32 = 1000;
    let db = TestDb::new().await.unwrap();
    let ids = ids("ticket", 10);
    let first = builder().open_postgres(&db.url()).await.unwrap();
    start_all(&first, &ids, BASE).await;
    // Let them reach their signal wait: activity, timer and child done.
    for id in &ids {
        let mut spins = 0;
        while !first
            .history(id)
            .await
            .unwrap()
            .iter()
            .any(|event| event.record.kind.name() == "ChildCompleted")
        {
            spins += 1;
            assert!(spins < 2000, "{id} did not reach its signal wait");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    first.shutdown().await;

    // A new host process on the same database: a fresh identity, the shards given back
    // by the first, its instances resumed by replay.
    let second = builder().open_postgres(&db.url()).await.unwrap();
    let results = drive(&second, &ids).await;
    for (n, result) in results.iter().enumerate() {
        let input = BASE + u32::try_from(n).unwrap();
        assert_eq!(
            result,
            &format!(
                "{}/{}/go-{}/ok-{} by cleo",
                input * 3,
                (input + 100) * 3 + 1,
                ids[n],
                ids[n]
            )
        );
    }
    // Each step ran once: the case's and its child's, none again after the hand-over.
    let runs = priced(BASE..BASE + 200);
    assert_eq!(runs.len(), 20, "{runs:?}");
    assert!(runs.values().all(|count| *count == 1), "{runs:?}");
    second.shutdown().await;
    assert_eq!(audit(&db.url()).await, 20);
}

/// Deliveries by notification id, across every host that shares it.
#[derive(Default)]
struct Deliveries(Mutex<HashMap<u64, u32>>);

#[async_trait::async_trait]
impl cairn::notify::Notifier for Deliveries {
    async fn notify(&self, notification: &cairn::notify::Notification) -> Result<(), String> {
        *self.0.lock().unwrap().entry(notification.id).or_default() += 1;
        Ok(())
    }
}

fn quick() -> PostgresOptions {
    PostgresOptions {
        pool_size: 4,
        lease_ttl: Duration::from_millis(1500),
        heartbeat_every: Duration::from_millis(200),
        poll_every: Duration::from_millis(50),
        ..PostgresOptions::default()
    }
}

/// Two hosts on one database split the shards; signals sent through one host reach runs
/// the other drives, tasks decided through either reach their run, children's ends reach
/// parents across hosts, and results are read through either. When one host stops, the
/// other takes its shards and finishes its runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_the_runs_and_one_takes_over_when_the_other_stops() {
    const BASE: u32 = 2000;
    let db = TestDb::new().await.unwrap();
    let ids = ids("shared", 24);
    let deliveries = Arc::new(Deliveries::default());
    let a = builder()
        .notifier(deliveries.clone())
        .open_postgres_with(&db.url(), quick())
        .await
        .unwrap();
    start_all(&a, &ids, BASE).await;
    let b = builder()
        .notifier(deliveries.clone())
        .open_postgres_with(&db.url(), quick())
        .await
        .unwrap();
    // Within a few heartbeats the first gives the second its half.
    let journal_a = a.engine().journal();
    let mut spins = 0;
    while journal_a
        .query(&cairn::store::InstanceQuery::default())
        .await
        .unwrap()
        .rows
        .iter()
        .all(|row| journal_a.owns(row.key))
    {
        spins += 1;
        assert!(spins < 200, "the second host never got a share");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The hand-over shows in both hosts' membership and metrics (first claims, then
    // the surplus given back).
    let mut spins = 0;
    let (ma, mb) = loop {
        let (ma, mb) = (
            a.engine().membership().unwrap(),
            b.engine().membership().unwrap(),
        );
        if ma.held + mb.held == cairn::store::SHARDS && ma.draining == 0 && ma.released > 0 {
            break (ma, mb);
        }
        spins += 1;
        assert!(spins < 200, "no settled split: {ma:?} {mb:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(ma.host, mb.host);
    assert_eq!(
        (ma.claimed_free, ma.taken_over, ma.lost),
        (u64::from(cairn::store::SHARDS), 0, 0),
        "{ma:?}"
    );
    assert_eq!(u64::from(mb.held), mb.claimed_free, "{mb:?}");
    assert_eq!(ma.released, mb.claimed_free, "{ma:?} {mb:?}");
    let text = a.engine().metrics_text().await.unwrap();
    for line in [
        format!("cairn_host_shards_held {}", ma.held),
        "cairn_host_shards_draining 0".to_owned(),
        format!(
            "cairn_host_shard_claims_total{{how=\"free\"}} {}",
            cairn::store::SHARDS
        ),
        "cairn_host_shard_claims_total{how=\"takeover\"} 0".to_owned(),
        format!("cairn_host_shards_released_total {}", ma.released),
        "cairn_host_shards_lost_total 0".to_owned(),
    ] {
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
    assert!(text.contains("cairn_host_clock_offset_seconds "), "{text}");
    // Half the messages go through the host that does not drive the run.
    for (n, id) in ids.iter().enumerate() {
        let via = if n % 2 == 0 { &a } else { &b };
        via.signal(id, "go", &format!("go-{id}")).await.unwrap();
    }
    let mut decided = 0;
    for round in 0..4000 {
        let via = if round % 2 == 0 { &a } else { &b };
        let page = via.tasks(&TaskQuery::for_actor(&clerk())).await.unwrap();
        for row in &page.rows {
            let task = row.id();
            via.claim(&clerk(), &task).await.unwrap();
            via.complete(&clerk(), &task, &format!("ok-{}", task.instance))
                .await
                .unwrap();
            decided += 1;
        }
        if decided >= ids.len() / 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Half decided; the first host stops (its shards are given back) and the second
    // finishes everything.
    a.shutdown().await;
    for _ in 0..4000 {
        let page = b.tasks(&TaskQuery::for_actor(&clerk())).await.unwrap();
        for row in &page.rows {
            let task = row.id();
            b.claim(&clerk(), &task).await.unwrap();
            b.complete(&clerk(), &task, &format!("ok-{}", task.instance))
                .await
                .unwrap();
            decided += 1;
        }
        if decided == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(decided, ids.len());
    for (n, id) in ids.iter().enumerate() {
        let input = BASE + u32::try_from(n).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(30), b.handle(case, id).result())
            .await
            .unwrap_or_else(|_| {
                // Say where the run stands: its history, its row, whether this host
                // drives it and holds it in memory.
                let key = futures::executor::block_on(b.status(id)).unwrap().run;
                let history: Vec<String> = futures::executor::block_on(b.history(id))
                    .unwrap()
                    .iter()
                    .map(|event| format!("{}:{}", event.record.seq, event.record.kind.name()))
                    .collect();
                let row = futures::executor::block_on(b.engine().journal().instance(key));
                panic!(
                    "{id} did not finish in time: owned here {}, in memory {}, row {row:?}, history {history:?}",
                    b.engine().journal().owns(key),
                    b.engine().waits_on_message(key).is_some()
                )
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            result,
            format!(
                "{}/{}/go-{id}/ok-{id} by cleo",
                input * 3,
                (input + 100) * 3 + 1
            )
        );
    }
    let runs = priced(BASE..BASE + 200);
    assert_eq!(runs.len(), 48, "{runs:?}");
    assert!(runs.values().all(|count| *count == 1), "{runs:?}");
    // Each task's notification went out once, by the host that drives its run.
    let mut spins = 0;
    while deliveries.0.lock().unwrap().len() < ids.len() {
        spins += 1;
        assert!(spins < 500, "not every notification went out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = deliveries.0.lock().unwrap().clone();
    assert_eq!(delivered.len(), ids.len(), "{delivered:?}");
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
    b.shutdown().await;
    assert_eq!(audit(&db.url()).await, 48);
}

/// The host's connections break in the middle of transactions and right after `COMMIT`
/// was sent (the server commits, the host never hears): each unanswered `COMMIT` is
/// resolved by asking the server, each broken batch is written again whole, and nothing
/// acknowledged is lost or recorded twice; no activity runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connections_lose_nothing_and_record_nothing_twice() {
    const BASE: u32 = 3000;
    let db = TestDb::new().await.unwrap();
    let proxy = cairn_testkit::postgres::CuttingProxy::start(&db)
        .await
        .unwrap();
    let rt = builder()
        .open_postgres_with(&proxy.url(&db), quick())
        .await
        .unwrap();
    let ids = ids("flaky", 16);
    proxy.cut_after_commit(4);
    proxy.cut_mid_transaction(4);
    start_all(&rt, &ids, BASE).await;
    let results = drive(&rt, &ids).await;
    for (n, result) in results.iter().enumerate() {
        let input = BASE + u32::try_from(n).unwrap();
        let id = &ids[n];
        assert_eq!(
            result,
            &format!(
                "{}/{}/go-{id}/ok-{id} by cleo",
                input * 3,
                (input + 100) * 3 + 1
            )
        );
    }
    assert_eq!(proxy.cuts(), (4, 4), "every break asked for happened");
    let runs = priced(BASE..BASE + 200);
    assert_eq!(runs.len(), 32, "{runs:?}");
    assert!(runs.values().all(|count| *count == 1), "{runs:?}");
    rt.shutdown().await;
    assert_eq!(audit(&db.url()).await, 32);
}

/// A host whose clock is `skew_ms` off (ahead when positive).
struct SkewedClock {
    skew_ms: i64,
}

impl cairn::testing::Clock for SkewedClock {
    fn now_ms(&self) -> u64 {
        let system = cairn::testing::SystemClock.now_ms();
        if self.skew_ms >= 0 {
            system + self.skew_ms.unsigned_abs()
        } else {
            system - self.skew_ms.unsigned_abs()
        }
    }

    fn sleep_until(&self, at_ms: u64) -> futures::future::BoxFuture<'static, ()> {
        let wait = Duration::from_millis(at_ms.saturating_sub(self.now_ms()));
        Box::pin(tokio::time::sleep(wait))
    }
}

#[workflow]
async fn nap(ctx: Ctx, ms: u64) -> Result<u64, WorkflowError> {
    ctx.sleep(Duration::from_millis(ms)).await?;
    Ok(ms)
}

/// Host clocks minutes apart from the database's: a timer set on a host five minutes
/// behind and fired by one five minutes ahead, after a takeover, fires when it is due,
/// not at once; and neither host ever drives the other's runs (the leases are judged by
/// the database's clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_on_time_across_hosts_whose_clocks_are_minutes_apart() {
    const NAP_MS: u64 = 3000;
    let db = TestDb::new().await.unwrap();
    let behind = Runtime::builder()
        .workflow(nap)
        .clock(Arc::new(SkewedClock {
            skew_ms: -5 * 60_000,
        }))
        .open_postgres_with(&db.url(), quick())
        .await
        .unwrap();
    let set = std::time::Instant::now();
    let naps: Vec<String> = (0..6).map(|n| format!("nap-{n}")).collect();
    for id in &naps {
        behind.start(nap, id, NAP_MS).await.unwrap();
    }
    for id in &naps {
        let mut spins = 0;
        while !behind
            .history(id)
            .await
            .unwrap()
            .iter()
            .any(|event| event.record.kind.name() == "TimerStarted")
        {
            spins += 1;
            assert!(spins < 500, "{id} set no timer");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    behind.shutdown().await;
    let ahead = Runtime::builder()
        .workflow(nap)
        .clock(Arc::new(SkewedClock {
            skew_ms: 5 * 60_000,
        }))
        .open_postgres_with(&db.url(), quick())
        .await
        .unwrap();
    for id in &naps {
        let slept = ahead.handle(nap, id).result().await.unwrap().unwrap();
        assert_eq!(slept, NAP_MS);
    }
    let elapsed = set.elapsed();
    assert!(
        elapsed >= Duration::from_millis(NAP_MS - 100),
        "fired {elapsed:?} after being set for {NAP_MS} ms"
    );
    assert!(
        elapsed < Duration::from_millis(NAP_MS + 5000),
        "{elapsed:?}"
    );
    ahead.shutdown().await;
    assert_eq!(audit(&db.url()).await, 6);
}

/// On virtual time, with the database's time turned off: a day-long timer on PostgreSQL
/// is skipped through like on redb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_on_virtual_time_skips_a_long_timer_on_postgres() {
    let db = TestDb::new().await.unwrap();
    let clock = cairn::testing::VirtualClock::new(std::time::SystemTime::now());
    let rt = Runtime::builder()
        .workflow(nap)
        .clock(Arc::new(clock.clone()))
        .open_postgres_with(
            &db.url(),
            PostgresOptions {
                database_time: false,
                ..quick()
            },
        )
        .await
        .unwrap();
    let day = 24 * 3600 * 1000;
    let handle = rt.start(nap, "long-nap", day).await.unwrap();
    let mut skips = 0;
    let slept = loop {
        clock.skip_to_next_timer().await;
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(50), handle.result()).await {
            break done.unwrap().unwrap();
        }
        skips += 1;
        assert!(skips < 200, "the timer never fired");
    };
    assert_eq!(slept, day);
    rt.shutdown().await;
}

/// The dashboard's saved views on PostgreSQL are kept in the database, so every host
/// shows the same ones: views saved at once through two hosts all land (each change is
/// made at the version it read, and again on what the other host wrote), and one deleted
/// through one host is gone on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_views_are_kept_in_the_database_for_every_host() {
    const OPERATOR: &str = "operator-token-0123456789abcdef";
    let db = TestDb::new().await.unwrap();
    let mut bases = Vec::new();
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let rt = builder()
            .open_postgres_with(&db.url(), quick())
            .await
            .unwrap();
        let mut tokens = cairn::server::Tokens::new();
        tokens
            .add(OPERATOR, Actor::new("olga", ["operator"]))
            .unwrap();
        let running = rt
            .http_server(tokens)
            .bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        bases.push(format!("http://{}/api/v1/views", running.addr()));
        hosts.push((rt, running));
    }
    let http = reqwest::Client::new();
    let save = |base: String, n: usize| {
        let request = http
            .post(base)
            .bearer_auth(OPERATOR)
            .header("content-type", "application/json")
            .body(
                serde_json::json!({ "name": format!("view {n}"), "query": "status=running" })
                    .to_string(),
            );
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 201, "{:?}", response.text().await);
        }
    };
    futures::future::join_all((0..20).map(|n| save(bases[n % 2].clone(), n))).await;
    let list = |base: &str| {
        let request = http.get(base).bearer_auth(OPERATOR);
        async move {
            let bytes = request.send().await.unwrap().bytes().await.unwrap();
            let views: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
            let mut names: Vec<String> = views
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            (views, names)
        }
    };
    let (on_a, names_a) = list(&bases[0]).await;
    let (_, names_b) = list(&bases[1]).await;
    assert_eq!(names_a.len(), 20, "{names_a:?}");
    assert_eq!(names_a, names_b);
    let gone = on_a[0]["id"].as_str().unwrap().to_owned();
    let deleted = http
        .delete(format!("{}/{gone}", bases[1]))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let (after, _) = list(&bases[0]).await;
    assert_eq!(after.len(), 19);
    assert!(after.iter().all(|v| v["id"] != gone.as_str()));
    for (rt, running) in hosts {
        running.stop().await;
        rt.shutdown().await;
    }
}
