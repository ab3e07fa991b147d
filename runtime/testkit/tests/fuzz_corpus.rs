//! The fuzz corpus replays as a plain test: every input in `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` runs through the same target body that libFuzzer runs
//! (`cairn_testkit::fuzzing`), on stable, on every test run. So a decoder or replay change
//! that panics on an input the fuzzer once found, or breaks a property the bodies assert
//! (round trip, chain verification, replay of recorded steps), fails here without nightly.
//!
//! `CAIRN_WRITE_FUZZ_SEEDS=1 cargo test -p cairn-testkit --test fuzz_corpus` (re)writes the
//! seed inputs, made from the recorded histories in `tests/histories/`, into
//! `fuzz/corpus/<target>/seed-*` before the corpus runs (see `fuzz/README.md`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use cairn_core::event::{EventRecord, GENESIS_HASH};
use cairn_testkit::fuzzing::{
    event_decode, history_input, history_replay, synthetic_event, SYNTHETIC_KINDS,
};

/// Fewer corpus inputs than this means the corpus is missing or was emptied by mistake,
/// and the test would prove nothing.
const CORPUS_INPUTS_MIN: usize = 20;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs `body` on every file of `fuzz/<kind>/<target>/`; returns how many ran. Failing
/// inputs are collected so one run names all of them.
fn run_dir(kind: &str, target: &str, body: fn(&[u8]), failures: &mut Vec<String>) -> usize {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut paths: Vec<PathBuf> = entries.map(|entry| entry.unwrap().path()).collect();
    paths.sort();
    let mut ran = 0;
    for path in paths {
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failures.push(path.display().to_string());
        }
        ran += 1;
    }
    ran
}

fn run_target(target: &str, body: fn(&[u8])) {
    let mut failures = Vec::new();
    let corpus = run_dir("corpus", target, body, &mut failures);
    let regressions = run_dir("regressions", target, body, &mut failures);
    println!("{target}: {corpus} corpus inputs, {regressions} regression inputs");
    assert!(
        failures.is_empty(),
        "{target} failed on {} input(s) (reproduce with `cargo +nightly fuzz run {target} <file>`):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        corpus >= CORPUS_INPUTS_MIN,
        "fuzz/corpus/{target}/ holds {corpus} inputs, fewer than {CORPUS_INPUTS_MIN}: \
         restore it from git or rebuild it (fuzz/README.md)"
    );
}

#[test]
fn event_decode_corpus_passes() {
    write_seeds_if_asked();
    run_target("event_decode", event_decode);
}

#[test]
fn history_replay_corpus_passes() {
    write_seeds_if_asked();
    run_target("history_replay", history_replay);
}

/// The envelopes of a fixture of `tests/histories/` (format in `tests/recorded_histories.rs`).
fn fixture_envelopes(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut envelopes = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        let (envelope, tail) = tail.split_at(len);
        envelopes.push(envelope.to_vec());
        rest = tail;
    }
    envelopes
}

/// A script that asks for steps 1..=`last` as a matching run would, then a patch and a
/// finish check at each (ops in `cairn_testkit::fuzzing::history_replay`).
fn walk_script(last: u8) -> Vec<u8> {
    let mut script = Vec::new();
    for step in 1..=last {
        script.extend_from_slice(&[0, step, 0, 2, 1]);
        script.extend_from_slice(&[1, step, 5]);
        script.extend_from_slice(&[2, step]);
    }
    script
}

/// Both tests may ask; the seeds are deterministic, so writing them twice is harmless.
fn write_seeds_if_asked() {
    if std::env::var_os("CAIRN_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    let histories = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/histories");
    let decode_dir = fuzz_dir().join("corpus/event_decode");
    let replay_dir = fuzz_dir().join("corpus/history_replay");
    std::fs::create_dir_all(&decode_dir).unwrap();
    std::fs::create_dir_all(&replay_dir).unwrap();

    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&histories)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "events"))
        .collect();
    fixtures.sort();
    for fixture in fixtures {
        let name = fixture.file_stem().unwrap().to_string_lossy().into_owned();
        let envelopes = fixture_envelopes(&fixture);
        for (index, envelope) in envelopes.iter().enumerate() {
            std::fs::write(decode_dir.join(format!("seed-{name}-{index}")), envelope).unwrap();
        }
        let last_step = envelopes
            .iter()
            .filter_map(|envelope| EventRecord::decode(envelope).unwrap().kind.step())
            .max()
            .unwrap_or(0);
        let script = walk_script(u8::try_from(last_step).unwrap());
        // The whole history as recorded, as the writer would chain it, and every prefix
        // (an instance that crashed or is waiting after each event).
        for (flags, label) in [(0, "raw"), (1, "repaired")] {
            std::fs::write(
                replay_dir.join(format!("seed-{name}-{label}")),
                history_input(flags, 1, &envelopes, &script),
            )
            .unwrap();
        }
        for cut in 1..envelopes.len() {
            std::fs::write(
                replay_dir.join(format!("seed-{name}-prefix-{cut}")),
                history_input(1, cut as u8, &envelopes[..cut], &script),
            )
            .unwrap();
        }
    }

    // A made-up history (frames in `cairn_testkit::fuzzing`) with the kinds the fixtures
    // lack or hold once: a signal delivered to a wait, a patch, a child, a cancelled
    // activity and a failed end. Frame: tag 1, kind, step, name index, extra.
    let frames: [[u8; 5]; 12] = [
        [1, 0, 0, 2, 0],  // WorkflowStarted "charge"
        [1, 9, 0, 4, 1],  // SignalReceived "go" (seq 1)
        [1, 7, 1, 0, 9],  // TimerStarted step 1
        [1, 8, 1, 0, 0],  // TimerFired step 1
        [1, 10, 2, 4, 9], // SignalWaitStarted step 2 "go"
        [1, 11, 2, 4, 1], // SignalDelivered step 2 "go", signal seq 1
        [1, 13, 3, 5, 0], // PatchMarker step 3 "patch-1"
        [1, 18, 4, 3, 0], // ChildStarted step 4 "ship"
        [1, 19, 4, 3, 0], // ChildCompleted step 4
        [1, 16, 0, 6, 0], // CancelRequested
        [1, 17, 5, 2, 0], // StepCancelled step 5, activity "charge"
        [1, 6, 0, 0, 3],  // WorkflowFailed
    ];
    for (flags, label) in [(0, "raw"), (1, "repaired")] {
        let mut input = vec![flags, 3, frames.len() as u8];
        input.extend(frames.iter().flatten());
        input.extend(walk_script(5));
        std::fs::write(replay_dir.join(format!("seed-made-up-{label}")), input).unwrap();
    }

    // One envelope of every event kind, including those no fixture records (a failed
    // workflow, a timed-out wait, a continue-as-new, ...).
    for kind in 0..SYNTHETIC_KINDS {
        let record = EventRecord {
            instance: 0x0192_0000_0000_7000_8000_0000_0000_0001,
            seq: u64::from(kind.min(1)),
            prev_lsn: (kind > 0).then_some(41),
            prev_hash: if kind == 0 { GENESIS_HASH } else { [7; 32] },
            recorded_at_ms: 1_764_000_000_000,
            kind: synthetic_event(kind, 2, "charge", 1),
            actor: (kind % 2 == 1).then(|| cairn_core::task::Actor::new("ops", ["admin"])),
        };
        std::fs::write(
            decode_dir.join(format!("seed-kind-{kind:02}")),
            record.encode().unwrap(),
        )
        .unwrap();
    }
}
