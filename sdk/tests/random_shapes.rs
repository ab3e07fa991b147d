//! Property: a workflow of any shape, with the power lost at any sync, ends with the same
//! result and the same recorded steps as an uninterrupted run.
//!
//! Shapes are random sequences of activities (plain, flaky with retries, failing), timers,
//! side effects, signal waits, parallel fan-outs and child workflows with shapes of their
//! own. Each case runs the shape once on a clean in-memory disk (the reference), then
//! again on a disk that loses power at a random sync (keeping none, a random subset or a
//! torn prefix of the unsynced writes), reboots from the durable image, re-sends only the
//! signals that were not acknowledged, and compares results and every instance's steps.
//!
//! 100 cases in the suite; `CAIRN_SHAPE_CASES=1000` runs more and `CAIRN_SEED=<n>` picks
//! the generator's seed (printed either way). A failing case is shrunk to a minimal shape.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn::events::EventKind;
use cairn::store::RedbJournal;
use cairn::ListFilter;
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, RetryPolicy, Runtime, WorkflowError,
};
use cairn_testkit::fault::{Fault, FaultDisk, Survivors};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde::{Deserialize, Serialize};

/// One step of a shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Op {
    Activity(u64),
    /// Fails its first attempt; the retry succeeds.
    Flaky(u64),
    /// Fails for good; the workflow goes on with the failure's attempt count.
    Failing(u64),
    Timer(u64),
    SideEffect(u64),
    /// Waits for the next `go` signal (top level only: the harness signals the parent).
    Signal,
    Parallel(Vec<u64>),
    Child(Vec<Op>),
}

fn mixed(acc: u64, k: u64) -> u64 {
    acc.wrapping_mul(31).wrapping_add(k)
}

#[activity]
async fn mix(_ctx: ActivityCtx, acc: u64, k: u64) -> Result<u64, ActivityError> {
    Ok(mixed(acc, k))
}

#[activity]
async fn flaky(ctx: ActivityCtx, acc: u64, k: u64) -> Result<u64, ActivityError> {
    if ctx.attempt == 1 {
        return Err(ActivityError::retryable("first attempts always fail"));
    }
    Ok(mixed(acc, k + u64::from(ctx.attempt)))
}

#[activity]
async fn refuse(_ctx: ActivityCtx, k: u64) -> Result<u64, ActivityError> {
    Err(ActivityError::terminal("refused", format!("never {k}")))
}

#[workflow]
async fn shape(ctx: Ctx, ops: Vec<Op>) -> Result<u64, WorkflowError> {
    let mut acc: u64 = 7;
    for (i, op) in ops.into_iter().enumerate() {
        acc = match op {
            Op::Activity(k) => ctx.activity(mix, (acc, k)).await?,
            Op::Flaky(k) => {
                ctx.activity(flaky, (acc, k))
                    .retry(
                        RetryPolicy::default()
                            .initial_backoff(Duration::from_millis(1))
                            .max_attempts(3),
                    )
                    .await?
            }
            Op::Failing(k) => match ctx.activity(refuse, k).await {
                Ok(v) => v,
                Err(failure) => mixed(acc, u64::from(failure.attempts)),
            },
            Op::Timer(ms) => {
                ctx.sleep(Duration::from_millis(ms)).await?;
                mixed(acc, 1)
            }
            Op::SideEffect(k) => acc ^ ctx.side_effect("k", move || k).await,
            Op::Signal => {
                let v: u64 = ctx.signal("go").await?;
                mixed(acc, v)
            }
            Op::Parallel(ks) => {
                let calls: Vec<_> = ks.iter().map(|k| ctx.activity(mix, (acc, *k))).collect();
                let mut folded = acc;
                for result in futures::future::join_all(calls).await {
                    folded ^= result?;
                }
                folded
            }
            Op::Child(ops) => {
                let id = format!("{}/{i}", ctx.instance_id());
                acc ^ ctx.child(shape, &id, ops).await?
            }
        };
    }
    Ok(acc)
}

fn leaf() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..100).prop_map(Op::Activity),
        1 => (0u64..100).prop_map(Op::Flaky),
        1 => (0u64..100).prop_map(Op::Failing),
        1 => (0u64..3).prop_map(Op::Timer),
        1 => (0u64..100).prop_map(Op::SideEffect),
        1 => proptest::collection::vec(0u64..100, 1..4).prop_map(Op::Parallel),
    ]
}

fn top_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => leaf(),
        1 => Just(Op::Signal),
        1 => proptest::collection::vec(leaf(), 1..4).prop_map(Op::Child),
    ]
}

/// A shape, the sync the power goes at (1-based, scaled to the run), and how much of
/// the unsynced writes survives.
fn case() -> impl Strategy<Value = (Vec<Op>, u64, u8, u64)> {
    (
        proptest::collection::vec(top_op(), 1..10),
        1u64..1_000,
        0u8..3,
        any::<u64>(),
    )
}

const ID: &str = "shape";

async fn open(disk: &FaultDisk) -> Result<Runtime, cairn::Error> {
    let store = disk.open_store("shape-disk")?;
    let journal = RedbJournal::on(Arc::new(store))?;
    Runtime::builder()
        .workflow(shape)
        .open_journal(Arc::new(journal))
        .await
}

fn signals_needed(ops: &[Op]) -> u64 {
    ops.iter().filter(|op| matches!(op, Op::Signal)).count() as u64
}

/// Every instance's recorded step outcomes (kind and payload), by id, in step order:
/// parallel steps (attempts run in tasks of their own) may be recorded in either order.
async fn steps(rt: &Runtime) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for info in rt.list(&ListFilter::default()).await.unwrap() {
        {
            let mut events = rt.history(&info.id).await.unwrap();
            // Stable: the events of one step keep their order.
            events.sort_by_key(|e| e.record.kind.step());
            let outcomes = events
                .into_iter()
                .filter(|e| {
                    e.record.kind.step().is_some()
                        && !matches!(
                            e.record.kind,
                            EventKind::TimerStarted { .. }
                                | EventKind::SignalWaitStarted { .. }
                                | EventKind::ChildStarted { .. }
                        )
                })
                .map(|e| match e.record.kind {
                    // Which seq the signal got depends on when it was (re)sent.
                    EventKind::SignalDelivered { step, name, .. } => {
                        format!("SignalDelivered {step} {name}")
                    }
                    kind => format!("{kind:?}"),
                })
                .collect();
            out.insert(info.id, outcomes);
        }
    }
    out
}

async fn finish(rt: &Runtime, ops: &[Op]) -> u64 {
    let handle = rt.start(shape, ID, ops.to_vec()).await.unwrap();
    let received = rt
        .history(ID)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.record.kind, EventKind::SignalReceived { .. }))
        .count() as u64;
    for n in received..signals_needed(ops) {
        rt.signal(ID, "go", &n).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .expect("the run ends")
        .unwrap()
        .unwrap()
}

/// The uninterrupted run: result, steps, and the number of syncs it took.
async fn reference(ops: &[Op]) -> (u64, BTreeMap<String, Vec<String>>, u64) {
    let disk = FaultDisk::new();
    let rt = open(&disk).await.unwrap();
    let result = finish(&rt, ops).await;
    let steps = steps(&rt).await;
    rt.shutdown().await;
    (result, steps, disk.syncs())
}

async fn crashed(
    ops: &[Op],
    crash_at: u64,
    survivors: Survivors,
) -> Result<(u64, BTreeMap<String, Vec<String>>), TestCaseError> {
    let disk = FaultDisk::new();
    disk.set_fault(Fault::PowerLossAtSync(crash_at));
    let mut acked_signals = 0u64;
    let created = match open(&disk).await {
        Ok(rt) => {
            if rt.start(shape, ID, ops.to_vec()).await.is_ok() {
                for n in 0..signals_needed(ops) {
                    if rt.signal(ID, "go", &n).await.is_err() {
                        break;
                    }
                    acked_signals += 1;
                }
                let _ =
                    tokio::time::timeout(Duration::from_secs(30), rt.handle(shape, ID).result())
                        .await;
            }
            rt.shutdown().await;
            true
        }
        Err(_) => false,
    };
    let rebooted = FaultDisk::from_image(disk.image_after_power_loss(survivors));
    let rt = match open(&rebooted).await {
        Ok(rt) => rt,
        // The power went while the file was being created.
        Err(_) if !created => open(&FaultDisk::new()).await.unwrap(),
        Err(err) => return Err(TestCaseError::fail(format!("reboot failed: {err}"))),
    };
    if let Ok(history) = rt.history(ID).await {
        let received = history
            .iter()
            .filter(|e| matches!(e.record.kind, EventKind::SignalReceived { .. }))
            .count() as u64;
        prop_assert!(
            received >= acked_signals,
            "{acked_signals} signals acknowledged, {received} survived"
        );
    }
    let result = finish(&rt, ops).await;
    let steps = steps(&rt).await;
    rt.shutdown().await;
    Ok((result, steps))
}

#[test]
fn any_shape_survives_power_loss_at_any_sync_with_the_same_result_and_steps() {
    let seed: u64 = std::env::var("CAIRN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5A4E_5EED);
    let cases: u32 = std::env::var("CAIRN_SHAPE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    eprintln!("random shapes: CAIRN_SEED={seed} CAIRN_SHAPE_CASES={cases}");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mid_run = std::cell::Cell::new(0u32);
    let outcome = runner.run(&case(), |(ops, crash_pick, survivors, survivor_seed)| {
        tokio.block_on(async {
            let (result, reference_steps, syncs) = reference(&ops).await;
            // Power goes at one of the syncs the uninterrupted run made (or just after).
            let crash_at = 1 + crash_pick % (syncs + 1);
            if crash_at <= syncs {
                mid_run.set(mid_run.get() + 1);
            }
            let survivors = match survivors {
                0 => Survivors::Nothing,
                1 => Survivors::Subset(survivor_seed),
                _ => Survivors::Torn(survivor_seed),
            };
            let (after, after_steps) = crashed(&ops, crash_at, survivors).await?;
            prop_assert_eq!(
                after,
                result,
                "result after power loss at sync {}",
                crash_at
            );
            prop_assert_eq!(
                after_steps,
                reference_steps,
                "steps after power loss at sync {}",
                crash_at
            );
            Ok(())
        })
    });
    if let Err(err) = outcome {
        panic!("random shapes (CAIRN_SEED={seed}): {err}");
    }
    let mid_run = mid_run.get();
    eprintln!(
        "random shapes (seed {seed}): {cases} shapes, {mid_run} with power lost mid-run, all equal to the uninterrupted run"
    );
    assert!(mid_run * 2 > cases, "most cases must lose power mid-run");
}
