//! Waiting is durable: timers keep their recorded deadline across restarts, signals sent
//! before a wait are buffered and delivered in order exactly once, and a signal-or-timeout
//! race replays the branch that won. Time is virtual: a 30-day timer takes microseconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cairn::audit::ReplayVerdict;
use cairn::events::EventKind;
use cairn::testing::{Clock, VirtualClock};
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Error, Runtime, WorkflowError};

const DAY: Duration = Duration::from_secs(24 * 3600);
const START_MS: u64 = 1_764_000_000_000;

#[activity]
async fn stamp(_ctx: ActivityCtx, label: String) -> Result<String, ActivityError> {
    Ok(format!("done:{label}"))
}

#[workflow]
async fn wait_days(ctx: Ctx, days: u64) -> Result<(u64, String), WorkflowError> {
    ctx.sleep(DAY * days as u32).await?;
    let woke = ctx.now().await;
    let label = ctx.activity(stamp, "woke".to_owned()).await?;
    Ok((
        woke.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64,
        label,
    ))
}

#[workflow]
async fn collect(ctx: Ctx, count: u32) -> Result<Vec<String>, WorkflowError> {
    let mut items = Vec::new();
    for _ in 0..count {
        items.push(ctx.signal::<String>("item").await?);
    }
    Ok(items)
}

#[workflow]
async fn approval(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    let decision: Option<bool> = ctx
        .signal_or_timeout("decision", Duration::from_secs(48 * 3600))
        .await?;
    Ok(match decision {
        Some(true) => format!("approved {amount}"),
        Some(false) => format!("rejected {amount}"),
        None => format!("escalated {amount}"),
    })
}

fn clock() -> VirtualClock {
    VirtualClock::new(UNIX_EPOCH + Duration::from_millis(START_MS))
}

async fn open(path: &std::path::Path, clock: &VirtualClock) -> Runtime {
    Runtime::builder()
        .workflow(wait_days)
        .workflow(collect)
        .workflow(approval)
        .clock(Arc::new(clock.clone()))
        .open_store(path)
        .await
        .unwrap()
}

async fn kinds(rt: &Runtime, id: &str) -> Vec<&'static str> {
    rt.history(id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.record.kind.name())
        .collect()
}

#[tokio::test]
async fn a_thirty_day_timer_runs_in_virtual_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let rt = open(&dir.path().join("db.redb"), &clock).await;
    let handle = rt.start(wait_days, "t-30", 30).await.unwrap();
    assert_eq!(
        clock.skip_to_next_timer().await,
        START_MS + 30 * DAY.as_millis() as u64
    );
    let (woke, label) = handle.result().await.unwrap().unwrap();
    assert_eq!(woke, START_MS + 30 * DAY.as_millis() as u64);
    assert_eq!(label, "done:woke");
    assert_eq!(
        kinds(&rt, "t-30").await,
        [
            "WorkflowStarted",
            "TimerStarted",
            "TimerFired",
            "SideEffect",
            "ActivityCompleted",
            "WorkflowCompleted"
        ]
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_timer_keeps_its_deadline_across_a_restart_and_fires_at_once_if_it_passed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = clock();
    let deadline = START_MS + 3 * DAY.as_millis() as u64;
    {
        let rt = open(&path, &clock).await;
        rt.start(wait_days, "keeps", 3).await.unwrap();
        rt.start(wait_days, "passed", 3).await.unwrap();
        assert_eq!(clock.next_timer().await, deadline);
        // Both timers recorded (start event + TimerStarted) before the host stops.
        for id in ["keeps", "passed"] {
            let mut spins = 0u32;
            while rt.history(id).await.unwrap().len() < 2 {
                spins += 1;
                assert!(spins < 1_000_000, "{id} never set its timer");
                tokio::task::yield_now().await;
            }
        }
        rt.shutdown().await;
    }
    // One day passes while the host is down: the timer still fires at its recorded
    // deadline, not three days after the restart.
    clock.advance(DAY);
    let rt = open(&path, &clock).await;
    assert_eq!(clock.next_timer().await, deadline);
    rt.shutdown().await;

    // Three more days pass while it is down: both timers are overdue and fire on start.
    clock.advance(3 * DAY);
    let rt = open(&path, &clock).await;
    for id in ["keeps", "passed"] {
        let (woke, _) = rt.handle(wait_days, id).result().await.unwrap().unwrap();
        assert_eq!(
            woke,
            START_MS + 4 * DAY.as_millis() as u64,
            "{id} fired on start, at the current time"
        );
        assert_eq!(
            kinds(&rt, id)
                .await
                .iter()
                .filter(|k| **k == "TimerStarted")
                .count(),
            1
        );
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn signals_sent_before_the_wait_are_buffered_and_delivered_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let rt = open(&dir.path().join("db.redb"), &clock).await;
    let handle = rt.start(collect, "c-1", 3).await.unwrap();
    for item in ["first", "second", "third", "extra"] {
        rt.signal("c-1", "item", &item.to_owned()).await.unwrap();
    }
    assert_eq!(
        handle.result().await.unwrap().unwrap(),
        ["first", "second", "third"]
    );
    let delivered: Vec<u64> = rt
        .history("c-1")
        .await
        .unwrap()
        .iter()
        .filter_map(|e| match e.record.kind {
            EventKind::SignalDelivered { signal_seq, .. } => Some(signal_seq),
            _ => None,
        })
        .collect();
    let mut unique = delivered.clone();
    unique.dedup();
    assert_eq!(delivered.len(), 3);
    assert_eq!(unique, delivered, "each signal delivered once");

    assert!(matches!(
        rt.signal("c-1", "item", &"late".to_owned()).await,
        Err(Error::InstanceFinished(_))
    ));
    assert!(matches!(
        rt.signal("nobody", "item", &1).await,
        Err(Error::InstanceNotFound(_))
    ));
    assert!(matches!(
        rt.signal("c-1", "", &1).await,
        Err(Error::InvalidArgument(_))
    ));
    rt.shutdown().await;
}

#[tokio::test]
async fn a_signal_sent_while_the_host_is_down_is_delivered_after_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = clock();
    {
        let rt = open(&path, &clock).await;
        rt.start(collect, "c-2", 2).await.unwrap();
        rt.signal("c-2", "item", &"before".to_owned())
            .await
            .unwrap();
        rt.shutdown().await;
    }
    // The service is down; an operator tool opens the file without the workflow code and
    // records a signal.
    {
        let tool = Runtime::builder().open_store(&path).await.unwrap();
        tool.signal("c-2", "item", &"while down".to_owned())
            .await
            .unwrap();
        tool.shutdown().await;
    }
    let rt = open(&path, &clock).await;
    let items = rt.handle(collect, "c-2").result().await.unwrap().unwrap();
    assert_eq!(items, ["before", "while down"]);
    rt.shutdown().await;
}

#[tokio::test]
async fn signal_or_timeout_records_the_winner_and_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = clock();
    let rt = open(&path, &clock).await;

    let signalled = rt.start(approval, "a-1", 100).await.unwrap();
    rt.signal("a-1", "decision", &true).await.unwrap();
    assert_eq!(signalled.result().await.unwrap().unwrap(), "approved 100");

    let timed_out = rt.start(approval, "a-2", 200).await.unwrap();
    assert_eq!(clock.skip_to_next_timer().await, clock.now_ms());
    assert_eq!(timed_out.result().await.unwrap().unwrap(), "escalated 200");
    // A signal after the timeout stays unconsumed: the instance has finished.
    assert!(rt.signal("a-2", "decision", &true).await.is_err());

    for id in ["a-1", "a-2"] {
        let records: Vec<_> = rt
            .history(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.record)
            .collect();
        assert!(
            matches!(
                rt.replay(&records).await.unwrap(),
                ReplayVerdict::Matches(_)
            ),
            "{id}"
        );
    }
    assert_eq!(
        kinds(&rt, "a-2").await,
        [
            "WorkflowStarted",
            "SignalWaitStarted",
            "SignalWaitTimedOut",
            "WorkflowCompleted"
        ]
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_signal_wait_deadline_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = clock();
    let deadline = START_MS + 48 * 3600 * 1000;
    {
        let rt = open(&path, &clock).await;
        rt.start(approval, "a-3", 300).await.unwrap();
        assert_eq!(clock.next_timer().await, deadline);
        rt.shutdown().await;
    }
    clock.advance(DAY);
    let rt = open(&path, &clock).await;
    assert_eq!(
        clock.next_timer().await,
        deadline,
        "the recorded deadline, not 48 h after restart"
    );
    clock.advance(DAY);
    assert_eq!(
        rt.handle(approval, "a-3").result().await.unwrap().unwrap(),
        "escalated 300"
    );
    rt.shutdown().await;
}
