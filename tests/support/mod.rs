//! What the tests that run the `order_fulfillment` example as host processes share: the
//! example's binary, built if stale, and a comparable summary of a finished history.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn::events::EventKind;
use cairn::store::{InstanceStatus, StoredEvent};

/// The `order_fulfillment` example's binary, (re)built when missing or older than its
/// sources.
pub(crate) fn example_binary() -> PathBuf {
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
pub(crate) fn is_stale(bin: &Path) -> bool {
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
    [
        "examples",
        "sdk/src",
        "sdk/server/src",
        "runtime/src",
        "runtime/core/src",
        "runtime/redb/src",
        "runtime/postgres/src",
        "macros/src",
    ]
    .iter()
    .any(|dir| newest(&root.join(dir)) > built)
}

/// How order `id` must end: every `refuse_every`-th order's carrier refuses the parcel,
/// so it fails after compensating; everything else (parcels included) completes.
pub(crate) fn expected_status(id: &str, refuse_every: u32) -> InstanceStatus {
    let refused = id
        .strip_prefix("order-")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| refuse_every > 0 && n % refuse_every == 0);
    if refused {
        InstanceStatus::Failed
    } else {
        InstanceStatus::Completed
    }
}

/// What one finished instance recorded, in a form two runs can be compared by.
#[derive(Debug, PartialEq)]
pub(crate) struct Summary {
    /// The bytes of its result (output or error).
    pub(crate) result: Vec<u8>,
    /// Each step's outcome event: step number and what it was.
    pub(crate) steps: Vec<(u32, String)>,
    /// Bodies of the signals received.
    pub(crate) signals: Vec<Vec<u8>>,
    /// Steps that ran an activity.
    pub(crate) activity_steps: usize,
}

/// The summary of instance `id`'s verified history, after checking its sequence
/// numbers, that each step's outcome is recorded once, in order, and each signal
/// delivered once.
pub(crate) fn summarize(id: &str, history: &[StoredEvent]) -> Summary {
    let first = history[0].record.seq;
    let mut steps = Vec::new();
    let mut received = HashMap::new();
    let mut delivered = Vec::new();
    let mut result = None;
    for (n, event) in history.iter().enumerate() {
        assert_eq!(event.record.seq, first + n as u64, "{}: seq gap", id);
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
        id
    );
    let mut unique = delivered.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "{}: a signal delivered twice",
        id
    );
    assert!(
        delivered.iter().all(|seq| received.contains_key(seq)),
        "{}: delivered a signal it never received",
        id
    );
    let mut signals: Vec<_> = received.into_iter().collect();
    signals.sort();
    Summary {
        result: result.unwrap(),
        steps,
        signals: signals.into_iter().map(|(_, body)| body).collect(),
        activity_steps,
    }
}

/// Activity executions by (instance, step), from the example's `--counts` files.
pub(crate) fn executions(files: &[&Path]) -> HashMap<(String, u32), u32> {
    let mut out: HashMap<(String, u32), u32> = HashMap::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let instance = parts.next().unwrap().to_owned();
            let step: u32 = parts.next().unwrap().parse().unwrap();
            *out.entry((instance, step)).or_default() += 1;
        }
    }
    out
}
