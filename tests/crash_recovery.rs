//! Kill -9 at any moment loses nothing acknowledged and records nothing twice.
//!
//! Runs the real `order_fulfillment` example as a child process with 200 orders of 20
//! steps each: 14 activities, a patch marker, a durable timer, a dispatch approval (a
//! signal sent by the host while orders run) and a parcel child workflow with two
//! activities of its own. Every tenth order's carrier refuses the parcel: that order
//! runs its two compensations (refund, then release the stock), notifies, and fails, so
//! some kills land in the middle of compensating. It SIGKILLs the host at seeded random moments (about one kill
//! in ten during start-up and recovery), restarts it on the same file each time, and
//! then checks against an uninterrupted run:
//! - every instance (orders and their children) ended as in an uninterrupted run
//!   (completed, or failed after compensating), with the same result and the same steps,
//!   each step's outcome (compensations included) recorded once, in order;
//! - every history verifies as a hash chain, with contiguous sequence numbers;
//! - every approval the host acknowledged (logged once `signal` returned) is in its
//!   order's history exactly once and was delivered exactly once;
//! - activities ran once per step except steps in flight at a kill (counted by the
//!   activities themselves in a side file), reported as a count.
//!
//! 25 kills in the suite; `CAIRN_KILLS=1000 CAIRN_ORDERS=600 CAIRN_SEED=<n> cargo test
//! --release --test crash_recovery` runs the long version (the seed is printed either way).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use cairn::store::{verify_history, RedbStore, Store};

mod support;
use support::{example_binary, Summary};

/// Orders per run: 200 in the suite; `CAIRN_ORDERS` raises it so a long run has work
/// left for 1,000 kills.
fn orders() -> u32 {
    std::env::var("CAIRN_ORDERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}
/// Line items per order: with the patch marker, timer, approval, child and the four
/// original activities, 20 steps per order.
const LINES: u32 = 12;
const STEPS_PER_ORDER: usize = 20;
/// Every tenth order's carrier refuses the parcel: the order is compensated (two
/// compensation activities, last first), notifies, and ends failed.
const REFUSE_EVERY: u32 = 10;

fn spawn(db: &Path, counts: Option<&Path>, acks: &Path, delay_ms: u64) -> Child {
    let mut cmd = Command::new(example_binary());
    cmd.arg("--db")
        .arg(db)
        .arg("--orders")
        .arg(orders().to_string());
    cmd.arg("--step-delay-ms").arg(delay_ms.to_string());
    cmd.arg("--pause-ms").arg("5");
    cmd.arg("--lines").arg(LINES.to_string());
    cmd.arg("--refuse-every").arg(REFUSE_EVERY.to_string());
    cmd.arg("--acks").arg(acks);
    if let Some(counts) = counts {
        cmd.arg("--counts").arg(counts);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Reads the child's progress lines; SIGKILLs it after `kill_after` of them (`Some(0)`:
/// at once, during start-up and recovery). Returns whether it exited on its own.
fn run_until(mut child: Child, kill_after: Option<usize>) -> bool {
    if kill_after == Some(0) {
        child.kill().unwrap();
        child.wait().unwrap();
        return false;
    }
    let stdout = child.stdout.take().unwrap();
    let mut seen = 0usize;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.contains(" step ") {
            seen += 1;
        }
        if kill_after.is_some_and(|limit| seen >= limit) {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            return false;
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "host exited with {status}");
    true
}

/// Every finished instance's summary (see `support::summarize`), after checking that
/// it ended as expected: refused orders failed after compensating, the rest completed.
fn summaries(db: &Path) -> HashMap<String, Summary> {
    let store = RedbStore::open(db).unwrap();
    let mut rows = Vec::new();
    store
        .scan_instances(&mut |row| {
            rows.push(row);
            true
        })
        .unwrap();
    let mut out = HashMap::new();
    for row in rows {
        assert_eq!(
            row.status,
            support::expected_status(&row.id, REFUSE_EVERY),
            "{} ended {:?}",
            row.id,
            row.status
        );
        let raw = store.raw_history(row.key).unwrap().expect("its row exists");
        let (_, history) = verify_history(raw).expect("hash chain verifies");
        out.insert(row.id.clone(), support::summarize(&row.id, &history));
    }
    out
}

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut rng = seed | 1;
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

#[test]
fn kill_nine_mid_workflow_resumes_without_loss_or_duplicate_records() {
    let seed: u64 = std::env::var("CAIRN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xC0FFEE);
    let kills: usize = std::env::var("CAIRN_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    eprintln!("crash recovery: CAIRN_SEED={seed} CAIRN_KILLS={kills}");
    let mut next = xorshift(seed);
    let dir = tempfile::tempdir().unwrap();

    let reference_db = dir.path().join("reference.redb");
    let reference_acks = dir.path().join("reference-acks.txt");
    assert!(run_until(
        spawn(&reference_db, None, &reference_acks, 0),
        None
    ));
    let expected = summaries(&reference_db);
    let orders = orders() as usize;
    assert_eq!(
        expected.len(),
        2 * orders,
        "each order and its parcel child"
    );
    let order_steps = expected["order-1"].steps.len();
    assert_eq!(
        order_steps, STEPS_PER_ORDER,
        "{:?}",
        expected["order-1"].steps
    );
    let activity_steps: usize = expected.values().map(|s| s.activity_steps).sum();

    let db = dir.path().join("crash.redb");
    let counts = dir.path().join("counts.txt");
    let acks = dir.path().join("acks.txt");
    // Kill points spread over the whole workload: about twice the mean share of
    // activity executions per kill.
    let spread = (2 * activity_steps / kills.max(1)).max(8) as u64;
    let mut kill_points = Vec::new();
    let mut finished_early = false;
    for kill in 0..kills {
        // One kill in ten lands during start-up and recovery (before any step).
        let point = if kill % 10 == 3 {
            0
        } else {
            1 + (next() % spread) as usize
        };
        kill_points.push(point);
        if run_until(spawn(&db, Some(&counts), &acks, 1), Some(point)) {
            // The work ran out before this kill point: it was not a kill.
            kill_points.pop();
            finished_early = true;
            break;
        }
    }
    if !finished_early {
        assert!(
            run_until(spawn(&db, Some(&counts), &acks, 1), None),
            "final run completes"
        );
    }

    let actual = summaries(&db);
    assert_eq!(actual.len(), expected.len());
    for (id, summary) in &expected {
        assert_eq!(
            actual.get(id),
            Some(summary),
            "{id} differs from an uninterrupted run"
        );
    }

    // Every approval acknowledged to the host is in its order's history exactly once.
    let acked = std::fs::read_to_string(&acks).unwrap();
    let mut acked_orders = std::collections::HashSet::new();
    for line in acked.lines() {
        let (order, token) = line.split_once(' ').unwrap();
        let body = serde_json::to_vec(token).unwrap();
        let copies = actual[order].signals.iter().filter(|s| **s == body).count();
        assert_eq!(
            copies, 1,
            "{order}: acknowledged approval recorded {copies} times"
        );
        acked_orders.insert(order.to_owned());
    }
    assert_eq!(acked_orders.len(), orders, "every approval acknowledged");

    let executions = support::executions(&[&counts]);
    assert_eq!(
        executions.len(),
        activity_steps,
        "every activity step executed"
    );
    let repeated: u32 = executions.values().map(|n| n - 1).sum();
    // Each instance has at most one step in flight, so a kill can repeat at most one
    // execution per instance (orders and children).
    let kills_done = kill_points.len() as u32;
    let instances = expected.len() as u32;
    assert!(
        repeated <= kills_done * instances,
        "{repeated} repeated executions for {kills_done} kills of {instances} instances"
    );
    for ((instance, step), n) in &executions {
        assert!(*n <= kills_done + 1, "{instance} step {step} ran {n} times");
    }
    let at_start = kill_points.iter().filter(|p| **p == 0).count();
    eprintln!(
        "crash recovery (seed {seed}): {orders} orders x {order_steps} steps + children, {activity_steps} activity steps; {kills_done} kills survived ({at_start} during start-up), zero violations; {} approvals acknowledged ({} acknowledgements with re-checks after restarts), none lost or doubled; {repeated} activity executions repeated (steps in flight at a kill)",
        acked_orders.len(),
        acked.lines().count()
    );
}
