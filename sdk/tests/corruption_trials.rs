//! Damaged files never produce a panic, a hang or a silently different answer: for a
//! thousand seeded single-byte flips across a database file (and truncations), opening
//! it and reading every history and result either gives exactly what was written or a
//! typed error.
//!
//! The suite damages a committed file (`tests/fixtures/thirty_doublings.redb`) with a
//! fixed seed, so every run checks the same thousand files. Explore further with
//! `CAIRN_SEED=<n> CAIRN_CORRUPTION_TRIALS=<count> cargo test -p cairn --release --test corruption_trials`;
//! `CAIRN_RECORD_FIXTURE=1` rewrites the fixture.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Error, Runtime, WorkflowError};

#[activity]
async fn double(_ctx: ActivityCtx, n: u64) -> Result<u64, ActivityError> {
    Ok(n * 2)
}

#[workflow]
async fn doubler(ctx: Ctx, n: u64) -> Result<u64, WorkflowError> {
    let a = ctx.activity(double, n).await?;
    ctx.set_stage("doubled").await;
    Ok(ctx.activity(double, a).await?)
}

/// xorshift64*: enough for choosing positions; the seed is printed and can be given back.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

type Snapshot = BTreeMap<String, (Vec<Vec<u8>>, Vec<u8>)>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const FIXTURE: &str = "tests/fixtures/thirty_doublings.redb";
const DEFAULT_SEED: u64 = 0x5EED_CA1B;

fn populate(path: &Path) {
    runtime().block_on(async {
        let rt = Runtime::builder()
            .workflow(doubler)
            .open(path)
            .await
            .unwrap();
        for i in 0..30u64 {
            rt.start(doubler, &format!("d-{i}"), i)
                .await
                .unwrap()
                .result()
                .await
                .unwrap()
                .unwrap();
        }
        rt.shutdown().await;
    })
}

fn snapshot(path: &Path) -> Snapshot {
    runtime().block_on(async {
        let rt = Runtime::builder()
            .workflow(doubler)
            .open(path)
            .await
            .unwrap();
        let snapshot = read_all(&rt, 30)
            .await
            .into_iter()
            .map(|(id, r)| (id, r.unwrap()))
            .collect();
        rt.shutdown().await;
        snapshot
    })
}

/// Every history (as envelopes) and result payload, per instance.
async fn read_all(
    rt: &Runtime,
    count: u64,
) -> Vec<(String, Result<(Vec<Vec<u8>>, Vec<u8>), Error>)> {
    let mut out = Vec::new();
    for i in 0..count {
        let id = format!("d-{i}");
        let read = async {
            let history = rt.history(&id).await?;
            let envelopes = history.iter().map(|e| e.record.encode().unwrap()).collect();
            let outcome = rt.engine().wait(&id).await?;
            let result = match outcome {
                cairn::audit::Outcome::Completed(p) => p.data,
                other => panic!("unexpected outcome {other:?}"),
            };
            Ok((envelopes, result))
        };
        let answer = read.await;
        out.push((id, answer));
    }
    out
}

/// Opens a damaged copy and checks every answer; returns how the trial ended.
fn trial(path: PathBuf, expected: Snapshot) -> &'static str {
    runtime().block_on(async move {
        let rt = match Runtime::builder().workflow(doubler).open(&path).await {
            Ok(rt) => rt,
            Err(err) => {
                // A typed error that names the damaged file (damage in the format marker
                // reads as a newer format, E0009).
                let text = err.to_string();
                assert!(
                    err.code().starts_with("CAIRN-E") && text.contains(".redb"),
                    "{text}"
                );
                return "refused";
            }
        };
        let mut damaged = false;
        for (id, read) in read_all(&rt, 30).await {
            match read {
                Ok(answer) => assert_eq!(Some(&answer), expected.get(&id), "{id} silently differs"),
                Err(err) => {
                    // Typed, with a code; never a wrong answer.
                    assert!(err.code().starts_with("CAIRN-E"), "{err}");
                    damaged = true;
                }
            }
        }
        rt.shutdown().await;
        if damaged {
            "detected"
        } else {
            "unaffected"
        }
    })
}

fn run_trial(path: PathBuf, expected: Snapshot) -> &'static str {
    let (tx, rx) = mpsc::channel();
    let label = path.display().to_string();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(|| trial(path, expected)));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("trial on {label} hung"),
    }
}

#[test]
fn single_byte_flips_and_truncations_end_in_the_truth_or_a_typed_error() {
    let seed: u64 = std::env::var("CAIRN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let trials: usize = std::env::var("CAIRN_CORRUPTION_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    eprintln!("corruption trials: CAIRN_SEED={seed} CAIRN_CORRUPTION_TRIALS={trials}");
    let mut rng = Rng(seed.max(1));

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    if std::env::var_os("CAIRN_RECORD_FIXTURE").is_some() {
        let _ = std::fs::remove_file(&fixture);
        populate(&fixture);
    }
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.redb");
    std::fs::copy(&fixture, &original).unwrap();
    let bytes = std::fs::read(&original).unwrap();
    let expected = snapshot(&original);

    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for trial_no in 0..trials {
        let mut damaged = bytes.clone();
        let pos = (rng.next() % damaged.len() as u64) as usize;
        let flip = 1u8 << (rng.next() % 8);
        damaged[pos] ^= flip;
        let path = dir.path().join(format!("trial-{trial_no}.redb"));
        std::fs::write(&path, &damaged).unwrap();
        let outcome = run_trial(path.clone(), expected.clone());
        *tally.entry(outcome).or_default() += 1;
        std::fs::remove_file(&path).unwrap();
    }
    for cut in [
        0,
        512,
        4096,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        let path = dir.path().join(format!("cut-{cut}.redb"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let outcome = run_trial(path, expected.clone());
        *tally.entry(outcome).or_default() += 1;
    }
    eprintln!("corruption trials (seed {seed}): {tally:?}");
    assert_eq!(tally.values().sum::<usize>(), trials + 6);
}
