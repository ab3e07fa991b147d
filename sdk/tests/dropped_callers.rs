//! Committed effects never depend on the caller. The host API's calls that write are
//! polled once and dropped here (an HTTP handler whose client hung up does exactly that);
//! whatever the call was asked to do must still happen: a start runs, a signal or
//! cancellation reaches the run, a termination ends it, a schedule fires, also when an
//! actor asks and the policy's check reads first. And what is committed reaches a run in
//! commit order, whoever is still listening. The same check for the other writing calls
//! lives with their features: typed sends (`typed_signals`), keyed sends and updates
//! (`messages`), task decisions and claims (`human_tasks`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;
use common::{until_evicted, until_resident_at_most, wait_for_events};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cairn::events::EventKind;
use cairn::testing::VirtualClock;
use cairn::Recurrence;
use cairn::{
    workflow, Actor, Ctx, Error, InstanceHandle, Runtime, Signal, StatusKind, WorkflowError,
};

/// Long enough for any honest run here, short enough that a lost effect fails the test
/// instead of hanging the suite.
const PATIENCE: Duration = Duration::from_secs(20);

#[workflow]
async fn add_one(_ctx: Ctx, x: u32) -> Result<u32, WorkflowError> {
    Ok(x + 1)
}

#[workflow]
async fn await_go(ctx: Ctx) -> Result<String, WorkflowError> {
    let word: String = ctx.signal("go").await?;
    Ok(word)
}

/// Takes `n` signals called "n" and returns their bodies in the order it got them.
#[workflow]
async fn collect(ctx: Ctx, n: u32) -> Result<Vec<u32>, WorkflowError> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(ctx.signal::<u32>("n").await?);
    }
    Ok(got)
}

#[workflow]
async fn parent_of(ctx: Ctx, child: String) -> Result<String, WorkflowError> {
    let said = ctx.child(await_go, &child, ()).await?;
    Ok(format!("child said {said}"))
}

fn clock() -> VirtualClock {
    VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_764_000_000))
}

async fn open(path: &std::path::Path, clock: &VirtualClock, idle: Option<Duration>) -> Runtime {
    Runtime::builder()
        .workflow(add_one)
        .workflow(await_go)
        .workflow(collect)
        .workflow(parent_of)
        .clock(Arc::new(clock.clone()))
        .eviction_idle(idle)
        .open_store(path)
        .await
        .unwrap()
}

/// Polls `future` once and drops it, as a caller that goes away does.
async fn poll_once_and_drop<F: Future>(future: F) {
    let mut future = Box::pin(future);
    let _ = futures::poll!(future.as_mut());
}

async fn patiently<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing happened within {PATIENCE:?}"))
}

/// Yields until `id` exists (its start is committed).
async fn until_started(rt: &Runtime, id: &str) {
    let mut spins = 0u32;
    while rt.status(id).await.is_err() {
        spins += 1;
        assert!(spins < 1_000_000, "{id} was never started");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_start_dropped_after_its_first_poll_still_runs_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), &clock(), None).await;
    poll_once_and_drop(rt.start(add_one, "a-1", 41)).await;
    until_started(&rt, "a-1").await;

    let again = rt.start(add_one, "a-1", 41).await.unwrap();
    assert!(!again.created(), "the dropped start was committed");
    let result = patiently("the dropped start's instance", again.result()).await;
    assert_eq!(result.unwrap().unwrap(), 42);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_signal_dropped_after_its_first_poll_is_still_delivered_to_a_resident_run() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), &clock(), None).await;
    let handle = rt.start(await_go, "s-1", ()).await.unwrap();
    poll_once_and_drop(rt.signal("s-1", "go", &"now".to_owned())).await;

    let result = patiently("the dropped signal", handle.result()).await;
    assert_eq!(result.unwrap().unwrap(), "now");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_signal_dropped_after_its_first_poll_lets_the_run_be_evicted_and_woken_again() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let rt = open(&dir.path().join("db.redb"), &clock, Some(Duration::ZERO)).await;
    let handle = rt.start(collect, "s-2", 2).await.unwrap();
    until_evicted(&rt).await;
    poll_once_and_drop(rt.signal("s-2", "n", &1u32)).await;
    // The first signal was taken (two events more: received, delivered) and the run,
    // waiting for the second, is evicted again instead of being held in memory for ever.
    wait_for_events(&rt, "s-2", 3).await;
    patiently("evicted after the dropped signal", until_evicted(&rt)).await;
    rt.signal("s-2", "n", &2u32).await.unwrap();
    let result = patiently("the second signal", handle.result()).await;
    assert_eq!(result.unwrap().unwrap(), vec![1, 2]);
    rt.shutdown().await;
}

/// A run of `await_go` as `id`, waiting for its signal, on a store of its own.
async fn waiting(id: &str) -> (tempfile::TempDir, Runtime, InstanceHandle<await_go>) {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), &clock(), None).await;
    let handle = rt.start(await_go, id, ()).await.unwrap();
    wait_for_events(&rt, id, 1).await;
    (dir, rt, handle)
}

/// `handle`'s run ends cancelled with `reason`.
async fn ends_cancelled(handle: InstanceHandle<await_go>, reason: &str) {
    let result = patiently("the dropped cancellation", handle.result()).await;
    let err = result.unwrap().unwrap_err();
    assert!(
        format!("{err:?}").contains(reason),
        "the workflow ended by the cancellation: {err:?}"
    );
}

/// `handle`'s run ends terminated with `reason`.
async fn ends_terminated(handle: InstanceHandle<await_go>, reason: &str) {
    let result = patiently("the dropped termination", handle.result()).await;
    match result {
        Err(Error::Terminated { reason: got, .. }) => assert_eq!(got, reason),
        other => panic!("expected a termination, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cancel_dropped_after_its_first_poll_still_cancels_a_resident_run() {
    let (_dir, rt, handle) = waiting("c-1").await;
    poll_once_and_drop(rt.cancel("c-1", "customer left")).await;
    ends_cancelled(handle, "customer left").await;
    rt.shutdown().await;
}

#[tokio::test]
async fn a_terminate_dropped_after_its_first_poll_still_ends_the_instance() {
    let (_dir, rt, handle) = waiting("t-1").await;
    poll_once_and_drop(rt.terminate("t-1", "duplicate order")).await;
    ends_terminated(handle, "duplicate order").await;
    assert_eq!(
        rt.status("t-1").await.unwrap().status.kind(),
        StatusKind::Terminated
    );
    rt.shutdown().await;
}

/// The signal `await_go` waits for, declared for the typed send of an actor.
const GO: Signal<String> = Signal::new("go");

fn clerk() -> Actor {
    Actor::new("clerk", ["support"])
}

// An actor's call first reads the instance's type for the policy's check; a caller that
// goes away while that read waits must not take the request with it.

#[tokio::test]
async fn an_actors_signal_dropped_after_its_first_poll_is_still_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), &clock(), None).await;
    let handle = rt.start(await_go, "as-1", ()).await.unwrap();
    let clerk = clerk();
    poll_once_and_drop(rt.acting_as(&clerk).send("as-1", GO, &"now".to_owned())).await;

    let result = patiently("the actor's dropped signal", handle.result()).await;
    assert_eq!(result.unwrap().unwrap(), "now");
    let history = rt.history("as-1").await.unwrap();
    let sent = history
        .iter()
        .find(|event| matches!(event.record.kind, EventKind::SignalReceived { .. }))
        .expect("the signal is in the history");
    assert_eq!(
        sent.record.actor.as_ref().map(|actor| actor.id.as_str()),
        Some("clerk"),
        "recorded with its actor"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn an_actors_cancel_dropped_after_its_first_poll_still_cancels_the_run() {
    let (_dir, rt, handle) = waiting("ac-1").await;
    let clerk = clerk();
    poll_once_and_drop(rt.acting_as(&clerk).cancel("ac-1", "customer left")).await;
    ends_cancelled(handle, "customer left").await;
    rt.shutdown().await;
}

#[tokio::test]
async fn an_actors_terminate_dropped_after_its_first_poll_still_ends_the_instance() {
    let (_dir, rt, handle) = waiting("at-1").await;
    let clerk = clerk();
    poll_once_and_drop(rt.acting_as(&clerk).terminate("at-1", "duplicate order")).await;
    ends_terminated(handle, "duplicate order").await;
    rt.shutdown().await;
}

#[tokio::test]
async fn a_trigger_dropped_after_its_first_poll_still_starts_the_occurrence() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let rt = open(&dir.path().join("db.redb"), &clock, None).await;
    // A day away: only the trigger starts an occurrence here (virtual time stands still).
    let daily = Recurrence::every(Duration::from_secs(86_400));
    rt.schedule(add_one, "daily", 1, daily).await.unwrap();
    poll_once_and_drop(rt.trigger_schedule("daily")).await;

    let occurrence = patiently("the dropped trigger's occurrence", async {
        loop {
            let listed = rt.list(&Default::default()).await.unwrap();
            if let Some(info) = listed.first() {
                return info.id.clone();
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(occurrence.starts_with("daily@"), "{occurrence}");
    patiently("the triggered occurrence's run", async {
        while rt.status(&occurrence).await.unwrap().status.kind() != StatusKind::Completed {
            tokio::task::yield_now().await;
        }
    })
    .await;
    rt.shutdown().await;
}

#[tokio::test]
async fn a_schedule_dropped_after_its_first_poll_still_fires() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let rt = open(&dir.path().join("db.redb"), &clock, None).await;
    let every_hour = Recurrence::every(Duration::from_secs(3600));
    poll_once_and_drop(rt.schedule(add_one, "hourly", 1, every_hour)).await;
    // Once it is stored, the scheduler must know it without a restart.
    let mut spins = 0u32;
    while rt.engine().schedules().is_empty() {
        spins += 1;
        assert!(
            spins < 1_000_000,
            "the dropped schedule never reached the scheduler"
        );
        tokio::task::yield_now().await;
    }
    clock.advance(Duration::from_secs(3600));
    let mut spins = 0u32;
    while rt.list(&Default::default()).await.unwrap().is_empty() {
        spins += 1;
        assert!(spins < 2_000_000, "the schedule never fired");
        tokio::task::yield_now().await;
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn a_pause_dropped_after_its_first_poll_still_pauses_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let rt = open(&dir.path().join("db.redb"), &clock, None).await;
    let every_hour = Recurrence::every(Duration::from_secs(3600));
    rt.schedule(add_one, "hourly", 1, every_hour).await.unwrap();
    poll_once_and_drop(rt.pause_schedule("hourly", "maintenance")).await;
    let mut spins = 0u32;
    while rt.schedules()[0].1.paused.is_none() {
        spins += 1;
        assert!(
            spins < 1_000_000,
            "the dropped pause never reached the scheduler"
        );
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        clock.advance(Duration::from_secs(3600));
        tokio::task::yield_now().await;
    }
    assert!(rt.list(&Default::default()).await.unwrap().is_empty());
    // A dropped resumption is applied too, and the schedule fires again.
    poll_once_and_drop(rt.resume_schedule("hourly")).await;
    let mut spins = 0u32;
    while rt.schedules()[0].1.paused.is_some() {
        spins += 1;
        assert!(spins < 1_000_000, "the dropped resumption never landed");
        tokio::task::yield_now().await;
    }
    clock.advance(Duration::from_secs(3600));
    let mut spins = 0u32;
    while rt.list(&Default::default()).await.unwrap().is_empty() {
        spins += 1;
        assert!(spins < 2_000_000, "the resumed schedule never fired");
        tokio::task::yield_now().await;
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_dropped_while_the_scheduler_moves_the_schedule_on_still_lands() {
    // The pause stores its row only if the stored one is still the one it read; the
    // scheduler replaces the row at every occurrence. A pause that loses that race is
    // made again on the new row, also when its caller has gone.
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let rt = open(&dir.path().join("db.redb"), &clock, None).await;
    let every_second = Recurrence::every(Duration::from_secs(1));
    rt.schedule(add_one, "tick", 1, every_second).await.unwrap();
    for round in 0..120 {
        clock.advance(Duration::from_secs(1));
        // A few yields, a different number each round, so the pause meets the
        // scheduler's commit at different points.
        for _ in 0..round % 6 {
            tokio::task::yield_now().await;
        }
        poll_once_and_drop(rt.pause_schedule("tick", "maintenance")).await;
        patiently("the dropped pause", async {
            while rt.schedules()[0].1.paused.is_none() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        rt.resume_schedule("tick").await.unwrap();
        assert!(rt.schedules()[0].1.paused.is_none(), "round {round}");
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn an_actors_start_dropped_after_its_first_poll_still_runs_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), &clock(), None).await;
    let clerk = clerk();
    poll_once_and_drop(rt.acting_as(&clerk).start(add_one, "as-s", 41)).await;
    until_started(&rt, "as-s").await;
    let result = patiently(
        "the actor's dropped start",
        rt.handle(add_one, "as-s").result(),
    )
    .await;
    assert_eq!(result.unwrap().unwrap(), 42);
    let history = rt.history("as-s").await.unwrap();
    assert_eq!(
        history[0]
            .record
            .actor
            .as_ref()
            .map(|actor| actor.id.as_str()),
        Some("clerk"),
        "the start is recorded with its actor"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn an_unschedule_dropped_after_its_first_poll_still_stops_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let rt = open(&dir.path().join("db.redb"), &clock, None).await;
    let every_hour = Recurrence::every(Duration::from_secs(3600));
    rt.schedule(add_one, "hourly", 1, every_hour).await.unwrap();
    poll_once_and_drop(rt.unschedule("hourly")).await;
    let mut spins = 0u32;
    while !rt.engine().schedules().is_empty() {
        spins += 1;
        assert!(
            spins < 1_000_000,
            "the dropped deletion never reached the scheduler"
        );
        tokio::task::yield_now().await;
    }
    // Ten hours on, nothing was started.
    for _ in 0..10 {
        clock.advance(Duration::from_secs(3600));
        tokio::task::yield_now().await;
    }
    assert!(rt.list(&Default::default()).await.unwrap().is_empty());
    rt.shutdown().await;
}

#[tokio::test]
async fn a_result_dropped_after_its_first_poll_can_be_awaited_again() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), &clock(), None).await;
    let handle = rt.start(await_go, "r-1", ()).await.unwrap();
    poll_once_and_drop(handle.result()).await;
    rt.signal("r-1", "go", &"later".to_owned()).await.unwrap();
    let result = patiently("the second wait", handle.result()).await;
    assert_eq!(result.unwrap().unwrap(), "later");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_shutdown_dropped_part_way_is_finished_by_calling_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = open(&path, &clock(), None).await;
    rt.start(await_go, "x-1", ()).await.unwrap();
    poll_once_and_drop(rt.shutdown()).await;
    // The runtime already refuses new work ...
    assert!(matches!(
        rt.start(await_go, "x-2", ()).await,
        Err(Error::ShutDown)
    ));
    // ... and a second shutdown releases the file, which opens again.
    patiently("the second shutdown", rt.shutdown()).await;
    let rt = open(&path, &clock(), None).await;
    assert!(rt.status("x-1").await.is_ok());
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_the_workflow_in_the_order_they_were_committed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb"), &clock(), None).await;
    const ROUNDS: u32 = 20;
    const SIGNALS: u32 = 8;
    for round in 0..ROUNDS {
        let id = format!("o-{round}");
        let handle = rt.start(collect, &id, SIGNALS).await.unwrap();
        wait_for_events(&rt, &id, 1).await;
        // Concurrent senders: many land in one commit, and their callers hear back in
        // any order; some are dropped after their first poll.
        let mut sends = Vec::new();
        for n in 0..SIGNALS {
            let (rt, id) = (rt.clone(), id.clone());
            sends.push(tokio::spawn(async move {
                if n % 3 == 0 {
                    poll_once_and_drop(rt.signal(&id, "n", &n)).await;
                } else {
                    rt.signal(&id, "n", &n).await.unwrap();
                }
            }));
        }
        for send in sends {
            send.await.unwrap();
        }
        let got = patiently("all signals", handle.result())
            .await
            .unwrap()
            .unwrap();
        let committed: Vec<u32> = rt
            .history(&id)
            .await
            .unwrap()
            .iter()
            .filter_map(|e| match &e.record.kind {
                EventKind::SignalReceived { payload, .. } => {
                    Some(serde_json::from_slice(&payload.data).unwrap())
                }
                _ => None,
            })
            .collect();
        assert_eq!(got, committed, "round {round}: taken out of commit order");
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn a_parent_waiting_on_a_child_id_that_already_existed_wakes_when_it_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let rt = open(&dir.path().join("db.redb"), &clock, Some(Duration::ZERO)).await;
    // The child exists before any parent asks for it (started by the host, say).
    rt.start(await_go, "shared-child", ()).await.unwrap();
    let parent = rt
        .start(parent_of, "p-1", "shared-child".to_owned())
        .await
        .unwrap();
    wait_for_events(&rt, "p-1", 2).await;
    // The child is evicted; the parent, waiting on a child it did not start, whose end
    // names no parent to wake, is not (or it would never hear of that end).
    until_resident_at_most(&rt, 1).await;

    rt.signal("shared-child", "go", &"hello".to_owned())
        .await
        .unwrap();
    let result = patiently("the parent of an existing child", parent.result()).await;
    assert_eq!(result.unwrap().unwrap(), "child said hello");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_parent_waiting_on_a_child_id_that_already_existed_wakes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = clock();
    let rt = open(&path, &clock, Some(Duration::ZERO)).await;
    rt.start(await_go, "shared-child", ()).await.unwrap();
    rt.start(parent_of, "p-2", "shared-child".to_owned())
        .await
        .unwrap();
    wait_for_events(&rt, "p-2", 2).await;
    until_resident_at_most(&rt, 1).await;
    rt.shutdown().await;

    let rt = open(&path, &clock, Some(Duration::ZERO)).await;
    rt.signal("shared-child", "go", &"again".to_owned())
        .await
        .unwrap();
    let parent = rt.handle(parent_of, "p-2");
    let result = patiently("the parent after a restart", parent.result()).await;
    assert_eq!(result.unwrap().unwrap(), "child said again");
    rt.shutdown().await;
}

#[tokio::test]
async fn terminating_a_child_wakes_its_evicted_parent() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let rt = open(&dir.path().join("db.redb"), &clock, Some(Duration::ZERO)).await;
    for round in 0..10 {
        let parent_id = format!("tp-{round}");
        let child_id = format!("{parent_id}/child");
        let parent = rt
            .start(parent_of, &parent_id, child_id.clone())
            .await
            .unwrap();
        wait_for_events(&rt, &parent_id, 2).await;
        until_evicted(&rt).await;
        // The child's own completion and a termination race; whichever is recorded first
        // ends the child, and the parent hears of it either way.
        let done = "done".to_owned();
        let (signalled, terminated) = tokio::join!(
            rt.signal(&child_id, "go", &done),
            rt.terminate(&child_id, "racing")
        );
        signalled.ok();
        match terminated {
            Ok(()) | Err(Error::InstanceFinished(_)) => {}
            Err(err) => panic!("terminate failed: {err}"),
        }
        let result = patiently("the parent of a terminated child", parent.result()).await;
        let said = result.unwrap();
        assert!(said.is_ok() || said.is_err(), "the parent ended");
    }
    rt.shutdown().await;
}
