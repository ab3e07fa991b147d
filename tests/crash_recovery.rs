//! Kill -9 at any moment loses nothing acknowledged and records nothing twice.
//!
//! Runs the real `order_fulfillment` example (activities and a durable timer per order)
//! as a child process with 200 orders, SIGKILLs it at seeded random moments (about one
//! kill in ten during start-up and recovery), restarts it on the same file each time, and
//! then checks against an uninterrupted run that every instance completed with the same
//! result, every history verifies as a hash chain with each step recorded once, and
//! activities ran once per step except steps in flight at a kill (counted by the
//! activities themselves in a side file).
//!
//! 25 kills in the suite; `CAIRN_KILLS=1000 CAIRN_ORDERS=600 CAIRN_SEED=<n> cargo test
//! --release --test crash_recovery` runs the long version (the seed is printed either way).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cairn::engine::event::EventKind;
use cairn::engine::store::{InstanceStatus, RedbStore, Store};

/// Orders per run: 200 in the suite; `CAIRN_ORDERS` raises it so a long run has work
/// left for 1,000 kills.
fn orders() -> u32 {
    std::env::var("CAIRN_ORDERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}
const STEPS_PER_ORDER: u32 = 4;

fn example_binary() -> PathBuf {
    // target/<profile>/deps/crash_recovery-<hash> -> target/<profile>/examples/order_fulfillment
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir
        .join("examples")
        .join(format!("order_fulfillment{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        // `cargo test` builds examples, but `cargo test --test crash_recovery` does not.
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

fn spawn(db: &Path, counts: Option<&Path>, delay_ms: u64) -> Child {
    let mut cmd = Command::new(example_binary());
    cmd.arg("--db")
        .arg(db)
        .arg("--orders")
        .arg(orders().to_string());
    cmd.arg("--step-delay-ms").arg(delay_ms.to_string());
    cmd.arg("--pause-ms").arg("5");
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

/// Result payload of each finished instance, after verifying its chain and its steps.
fn results(db: &Path) -> HashMap<String, Vec<u8>> {
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
            InstanceStatus::Completed,
            "{} did not complete",
            row.id
        );
        let history = store.history(&row).expect("hash chain verifies");
        let mut activities = Vec::new();
        let mut timers_fired = 0;
        let mut result = None;
        for event in &history {
            match &event.record.kind {
                EventKind::ActivityCompleted { step, activity, .. } => {
                    activities.push((*step, activity.clone()))
                }
                EventKind::TimerFired { .. } => timers_fired += 1,
                EventKind::WorkflowCompleted { output } => result = Some(output.data.clone()),
                _ => {}
            }
        }
        // Steps 1, 2: stock and payment; 3: the patch marker; 4: the cooling-off timer;
        // 5, 6: invoice and shipping. Each recorded once.
        let expected: Vec<(u32, String)> = [
            (1, "check_stock"),
            (2, "charge_payment"),
            (5, "create_invoice"),
            (6, "ship"),
        ]
        .iter()
        .map(|(s, a)| (*s, (*a).to_owned()))
        .collect();
        assert_eq!(
            activities, expected,
            "{}: each step recorded once, in order",
            row.id
        );
        assert_eq!(timers_fired, 1, "{}: the timer fired once", row.id);
        out.insert(row.id.clone(), result.unwrap());
    }
    out
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
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let dir = tempfile::tempdir().unwrap();

    let reference_db = dir.path().join("reference.redb");
    assert!(run_until(spawn(&reference_db, None, 0), None));
    let expected = results(&reference_db);
    assert_eq!(expected.len(), orders() as usize);

    let db = dir.path().join("crash.redb");
    let counts = dir.path().join("counts.txt");
    let mut kill_points = Vec::new();
    let mut finished_early = false;
    for kill in 0..kills {
        // One kill in ten lands during start-up and recovery (before any step).
        let point = if kill % 10 == 3 {
            0
        } else {
            1 + (next() % 8) as usize
        };
        kill_points.push(point);
        if run_until(spawn(&db, Some(&counts), 1), Some(point)) {
            // The work ran out before this kill point: it was not a kill.
            kill_points.pop();
            finished_early = true;
            break;
        }
    }
    if !finished_early {
        assert!(
            run_until(spawn(&db, Some(&counts), 1), None),
            "final run completes"
        );
    }

    let actual = results(&db);
    assert_eq!(actual, expected, "results equal an uninterrupted run");

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
        (orders() * STEPS_PER_ORDER) as usize,
        "every step executed"
    );
    let repeated: u32 = executions.values().map(|n| n - 1).sum();
    // Each instance has at most one step in flight, so a kill can repeat at most orders() executions.
    let kills_done = kill_points.len() as u32;
    assert!(
        repeated <= kills_done * orders(),
        "{repeated} repeated executions for {kills_done} kills of {} instances",
        orders()
    );
    for ((instance, step), n) in &executions {
        assert!(*n <= kills_done + 1, "{instance} step {step} ran {n} times");
    }
    let at_start = kill_points.iter().filter(|p| **p == 0).count();
    eprintln!(
        "crash recovery (seed {seed}): {kills_done} kills survived ({at_start} during start-up), zero violations; {repeated} activity executions repeated (steps in flight at a kill)"
    );
}
