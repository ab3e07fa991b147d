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
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cairn::events::EventKind;
use cairn::store::{verify_history, InstanceStatus, RedbStore, Store};

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

fn example_binary() -> PathBuf {
    // target/<profile>/deps/crash_recovery-<hash> -> target/<profile>/examples/order_fulfillment
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir
        .join("examples")
        .join(format!("order_fulfillment{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() || is_stale(&bin) {
        // `cargo test` builds examples, but `cargo test --test crash_recovery` does not,
        // and a binary left from an older build would test old code.
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--example", "order_fulfillment"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(
            status.success() && bin.exists(),
            "cannot build {}",
            bin.display()
        );
    }
    bin
}

/// Whether any source the example is built from changed after `bin` was built.
fn is_stale(bin: &Path) -> bool {
    fn newest(dir: &Path) -> std::time::SystemTime {
        let mut latest = std::time::SystemTime::UNIX_EPOCH;
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let modified = if meta.is_dir() {
                newest(&entry.path())
            } else {
                meta.modified().unwrap()
            };
            latest = latest.max(modified);
        }
        latest
    }
    let built = std::fs::metadata(bin).unwrap().modified().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["examples", "sdk/src", "runtime/src", "macros/src"]
        .iter()
        .any(|dir| newest(&root.join(dir)) > built)
}

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

/// What one finished instance recorded, in a form two runs can be compared by.
#[derive(Debug, PartialEq)]
struct Summary {
    result: Vec<u8>,
    /// Each step's outcome event: step number and what it was.
    steps: Vec<(u32, String)>,
    /// Bodies of the signals received.
    signals: Vec<Vec<u8>>,
    /// Steps that ran an activity.
    activity_steps: usize,
}

/// Every finished instance's summary, after checking its chain, its sequence numbers,
/// that each step's outcome is recorded once and each signal delivered once.
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
        // Refused orders end failed after compensating; everything else completes.
        let refused = row
            .id
            .strip_prefix("order-")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n % REFUSE_EVERY == 0);
        let expected = if refused {
            InstanceStatus::Failed
        } else {
            InstanceStatus::Completed
        };
        assert_eq!(row.status, expected, "{} ended {:?}", row.id, row.status);
        let raw = store.raw_history(row.key).unwrap().expect("its row exists");
        let (_, history) = verify_history(raw).expect("hash chain verifies");
        let first = history[0].record.seq;
        let mut steps = Vec::new();
        let mut received = HashMap::new();
        let mut delivered = Vec::new();
        let mut result = None;
        for (n, event) in history.iter().enumerate() {
            assert_eq!(event.record.seq, first + n as u64, "{}: seq gap", row.id);
            let kind = &event.record.kind;
            match kind {
                EventKind::SignalReceived { payload, .. } => {
                    received.insert(event.record.seq, payload.data.clone());
                }
                EventKind::SignalDelivered { signal_seq, .. } => delivered.push(*signal_seq),
                EventKind::WorkflowCompleted { output } => result = Some(output.data.clone()),
                EventKind::WorkflowFailed { error } => result = Some(error.data.clone()),
                _ => {}
            }
            let outcome = matches!(
                kind,
                EventKind::ActivityCompleted { .. }
                    | EventKind::ActivityFailed { .. }
                    | EventKind::SideEffect { .. }
                    | EventKind::TimerFired { .. }
                    | EventKind::SignalDelivered { .. }
                    | EventKind::SignalWaitTimedOut { .. }
                    | EventKind::PatchMarker { .. }
                    | EventKind::AttributesSet { .. }
                    | EventKind::StepCancelled { .. }
                    | EventKind::ChildCompleted { .. }
                    | EventKind::Notified { .. }
            );
            if outcome {
                let step = kind.step().unwrap();
                let what = match kind {
                    EventKind::ActivityCompleted { activity, .. } => activity.clone(),
                    other => other.name().to_owned(),
                };
                steps.push((step, what));
            }
        }
        // Steps that ran an activity to its outcome, a refused shipment included.
        let activity_steps = history
            .iter()
            .filter(|e| {
                matches!(
                    e.record.kind,
                    EventKind::ActivityCompleted { .. } | EventKind::ActivityFailed { .. }
                )
            })
            .count();
        let numbers: Vec<u32> = steps.iter().map(|(s, _)| *s).collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{}: each step's outcome recorded once, in order: {numbers:?}",
            row.id
        );
        let mut unique = delivered.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            delivered.len(),
            "{}: a signal delivered twice",
            row.id
        );
        assert!(
            delivered.iter().all(|seq| received.contains_key(seq)),
            "{}: delivered a signal it never received",
            row.id
        );
        let mut signals: Vec<_> = received.into_iter().collect();
        signals.sort();
        out.insert(
            row.id.clone(),
            Summary {
                result: result.unwrap(),
                steps,
                signals: signals.into_iter().map(|(_, body)| body).collect(),
                activity_steps,
            },
        );
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

    let mut executions: HashMap<(String, u32), u32> = HashMap::new();
    for line in std::fs::read_to_string(&counts).unwrap().lines() {
        let mut parts = line.split(' ');
        let (instance, step) = (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().parse().unwrap(),
        );
        *executions.entry((instance, step)).or_default() += 1;
    }
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
