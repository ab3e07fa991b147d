//! Steps raced against each other (`select!`, the rest of a `try_join!` after an error)
//! are recorded deterministically: the branch that won is the one replay takes, a losing
//! step is recorded as abandoned and never resolves or runs again, even when its outcome
//! was committed while it was being dropped, and such a run can still continue as new;
//! a child whose wait lost keeps running.
//! Also here: activity idempotency keys are unique across the runs of a chain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cairn::audit::ReplayVerdict;
use cairn::events::EventKind;
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, WorkflowError};

const PATIENCE: Duration = Duration::from_secs(20);

#[activity]
async fn left(_ctx: ActivityCtx, _x: ()) -> Result<String, ActivityError> {
    Ok("left".into())
}

#[activity]
async fn right(_ctx: ActivityCtx, _x: ()) -> Result<String, ActivityError> {
    Ok("right".into())
}

static SLOW_STARTS: AtomicU32 = AtomicU32::new(0);

/// Stands for a long external call that loses the race.
#[activity]
async fn slow(_ctx: ActivityCtx, _x: ()) -> Result<String, ActivityError> {
    SLOW_STARTS.fetch_add(1, Ordering::SeqCst);
    std::future::pending().await
}

/// Two activities that both finish at once: both outcomes are committed, one wins.
#[workflow]
async fn race(ctx: Ctx, again: bool) -> Result<String, WorkflowError> {
    let won = tokio::select! {
        l = ctx.activity(left, ()) => l?,
        r = ctx.activity(right, ()) => r?,
    };
    if again {
        // A run with a committed loser hands over like any other.
        return ctx.continue_as_new(false).await;
    }
    Ok(won)
}

/// A signal against an activity that never finishes; then one more signal, so the
/// instance is still running when the host restarts.
#[workflow]
async fn signal_or_slow(ctx: Ctx) -> Result<String, WorkflowError> {
    let first = tokio::select! {
        s = ctx.signal::<String>("go") => s?,
        a = ctx.activity(slow, ()) => a?,
    };
    let second: String = ctx.signal("again").await?;
    Ok(format!("{first} {second}"))
}

/// Two signal waits raced while both signals are already there: each takes its
/// signal in the same poll, one wins, and the loser's signal goes back for a later wait.
#[workflow]
async fn either_then_other(ctx: Ctx) -> Result<String, WorkflowError> {
    ctx.signal::<()>("go").await?;
    let (first, other) = tokio::select! {
        a = ctx.signal::<String>("a") => (format!("a:{}", a?), "b"),
        b = ctx.signal::<String>("b") => (format!("b:{}", b?), "a"),
    };
    let second: String = ctx.signal(other).await?;
    Ok(format!("{first} then {other}:{second}"))
}

/// The same with waits that have a deadline (`signal_or_timeout`), which record it
/// before they wait: a signal the losing one took goes back too.
#[workflow]
async fn either_then_other_timed(ctx: Ctx) -> Result<String, WorkflowError> {
    ctx.signal::<()>("go").await?;
    let hour = Duration::from_secs(3600);
    let (first, other) = tokio::select! {
        a = ctx.signal_or_timeout::<String>("a", hour) => (format!("a:{:?}", a?), "b"),
        b = ctx.signal_or_timeout::<String>("b", hour) => (format!("b:{:?}", b?), "a"),
    };
    let second = ctx.signal_or_timeout::<String>(other, hour).await?;
    Ok(format!("{first} then {other}:{second:?}"))
}

static KEYS: Mutex<Vec<(u32, String, String)>> = Mutex::new(Vec::new());

/// Fails its first attempt in every run, so each run shows two attempts of one step.
#[activity]
async fn keyed(ctx: ActivityCtx, run: u32) -> Result<u32, ActivityError> {
    KEYS.lock()
        .unwrap()
        .push((run, ctx.idempotency_key(), ctx.attempt_key()));
    if ctx.attempt == 1 {
        return Err(ActivityError::retryable("first attempt fails"));
    }
    Ok(run)
}

#[workflow]
async fn chain(ctx: Ctx, run: u32) -> Result<u32, WorkflowError> {
    let quick = cairn::RetryPolicy::default().initial_backoff(Duration::from_millis(1));
    let done = ctx.activity(keyed, run).retry(quick).await?;
    if done < 3 {
        return ctx.continue_as_new(done + 1).await;
    }
    Ok(done)
}

/// A child that waits for its own signal.
#[workflow]
async fn kid(ctx: Ctx) -> Result<String, WorkflowError> {
    let word: String = ctx.signal("go").await?;
    Ok(format!("kid said {word}"))
}

/// Waits for its child or for "stop", whichever comes first.
#[workflow]
async fn child_or_stop(ctx: Ctx, child: String) -> Result<String, WorkflowError> {
    Ok(tokio::select! {
        said = ctx.child(kid, &child, ()) => said?,
        () = async { ctx.signal::<()>("stop").await.unwrap_or(()) } => "stopped".to_owned(),
    })
}

/// A notification raced against an activity, after an activity whose result the run
/// holds: the notification's step waits for that result to be durable before it starts,
/// and the second activity can win (its own result held) while it still waits. Then the
/// run waits for "end", so the next host replays it.
#[workflow]
async fn activity_or_notice(ctx: Ctx) -> Result<String, WorkflowError> {
    let first = ctx.activity(left, ()).await?;
    let won = tokio::select! {
        r = ctx.activity(right, ()) => r?,
        () = ctx.notify("raced.notice", &()) => "notice".to_owned(),
    };
    let tail: String = ctx.signal("end").await?;
    Ok(format!("{first} {won} {tail}"))
}

/// Each run's id, and whether its history held the loser's abandonment when the step
/// after the race started.
static SEEN_ABANDONED: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());
/// The runtime, for the activity below to read histories with.
static RUNTIME: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();

/// Records whether the run's history already holds a `StepAbandoned` as it starts.
#[activity]
async fn after_race(ctx: ActivityCtx, id: String) -> Result<(), ActivityError> {
    let _ = ctx;
    let Some(rt) = RUNTIME.get() else {
        return Err(ActivityError::terminal("setup", "no runtime to read with"));
    };
    let history = rt
        .history(&id)
        .await
        .map_err(|err| ActivityError::terminal("read", err.to_string()))?;
    let abandoned = history
        .iter()
        .any(|e| matches!(e.record.kind, EventKind::StepAbandoned { .. }));
    SEEN_ABANDONED.lock().unwrap().push((id, abandoned));
    Ok(())
}

/// A signal against an hour; whichever wins, an activity follows.
#[workflow]
async fn ok_then_act(ctx: Ctx, id: String) -> Result<(), WorkflowError> {
    tokio::select! {
        ok = ctx.signal::<()>("ok") => ok?,
        slept = ctx.sleep(Duration::from_secs(3600)) => slept?,
    }
    ctx.activity(after_race, id).await?;
    Ok(())
}

async fn open(path: &std::path::Path) -> Runtime {
    Runtime::builder()
        .workflow(kid)
        .workflow(child_or_stop)
        .workflow(race)
        .workflow(signal_or_slow)
        .workflow(chain)
        .workflow(either_then_other)
        .workflow(either_then_other_timed)
        .workflow(activity_or_notice)
        .workflow(ok_then_act)
        .eviction_idle(None)
        .open_store(path)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_taken_by_a_losing_wait_with_a_deadline_goes_back_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = open(&path).await;
    for n in 0..8 {
        let id = format!("timed-{n}");
        let handle = rt.start(either_then_other_timed, &id, ()).await.unwrap();
        rt.signal(&id, "a", &"yes".to_owned()).await.unwrap();
        rt.signal(&id, "b", &"no".to_owned()).await.unwrap();
        rt.signal(&id, "go", &()).await.unwrap();
        let said = tokio::time::timeout(PATIENCE, handle.result())
            .await
            .expect("no signal was lost: the second wait did not sit out its hour")
            .unwrap()
            .unwrap();
        assert!(
            said == r#"a:Some("yes") then b:Some("no")"#
                || said == r#"b:Some("no") then a:Some("yes")"#,
            "{id}: {said}"
        );
        let records: Vec<_> = rt
            .history(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.record)
            .collect();
        for _ in 0..8 {
            assert!(matches!(
                rt.replay(&records).await.unwrap(),
                ReplayVerdict::Matches(_)
            ));
        }
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_select_between_two_finished_activities_replays_to_the_branch_that_won() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    for n in 0..8 {
        let id = format!("race-{n}");
        let handle = rt.start(race, &id, false).await.unwrap();
        let won = tokio::time::timeout(PATIENCE, handle.result())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let records: Vec<_> = rt
            .history(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.record)
            .collect();
        let outcomes = records
            .iter()
            .filter(|r| matches!(r.kind, EventKind::ActivityCompleted { .. }))
            .count();
        let abandoned: Vec<_> = records
            .iter()
            .filter_map(|r| match r.kind {
                EventKind::StepAbandoned { step } => Some(step),
                _ => None,
            })
            .collect();
        assert_eq!(
            abandoned.len(),
            1,
            "{id}: the loser is recorded as abandoned"
        );
        assert!(outcomes >= 1, "{id}: the winner's outcome is recorded");
        // `select!` polls its branches in a random order: without the record of which
        // step lost, a replay would pick either branch when both outcomes are recorded.
        for _ in 0..32 {
            match rt.replay(&records).await.unwrap() {
                ReplayVerdict::Matches(_) => {}
                other => panic!("{id} (won by {won}): replay gave {other:?}"),
            }
        }
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn a_losing_activity_is_not_started_again_when_the_run_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    const INSTANCES: u32 = 8;
    let rt = open(&path).await;
    for n in 0..INSTANCES {
        let id = format!("slow-{n}");
        rt.start(signal_or_slow, &id, ()).await.unwrap();
    }
    // Every slow activity has started before its signal arrives.
    let mut spins = 0u32;
    while SLOW_STARTS.load(Ordering::SeqCst) < INSTANCES {
        spins += 1;
        assert!(spins < 1_000_000, "the slow activities never started");
        tokio::task::yield_now().await;
    }
    for n in 0..INSTANCES {
        rt.signal(&format!("slow-{n}"), "go", &"went".to_owned())
            .await
            .unwrap();
    }
    for n in 0..INSTANCES {
        let id = format!("slow-{n}");
        let mut spins = 0u32;
        while !rt
            .history(&id)
            .await
            .unwrap()
            .iter()
            .any(|e| matches!(e.record.kind, EventKind::StepAbandoned { .. }))
        {
            spins += 1;
            assert!(
                spins < 1_000_000,
                "{id}: the losing activity was never abandoned"
            );
            tokio::task::yield_now().await;
        }
    }
    rt.shutdown().await;

    // Every instance replays on open; none may start its losing activity again.
    let rt = open(&path).await;
    for n in 0..INSTANCES {
        let id = format!("slow-{n}");
        rt.signal(&id, "again", &"and again".to_owned())
            .await
            .unwrap();
        let result = tokio::time::timeout(PATIENCE, rt.handle(signal_or_slow, &id).result())
            .await
            .unwrap();
        assert_eq!(result.unwrap().unwrap(), "went and again");
    }
    assert_eq!(
        SLOW_STARTS.load(Ordering::SeqCst),
        INSTANCES,
        "a losing activity ran again on replay"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_a_committed_loser_can_continue_as_new() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let handle = rt.start(race, "race-on", true).await.unwrap();
    let result = tokio::time::timeout(PATIENCE, handle.result())
        .await
        .expect("the hand-over happened");
    let won = result.unwrap().unwrap();
    assert!(won == "left" || won == "right", "{won}");
    rt.shutdown().await;
}

#[tokio::test]
async fn the_idempotency_key_is_stable_across_attempts_and_unique_across_the_runs_of_a_chain() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let handle = rt.start(chain, "k", 1).await.unwrap();
    let result = tokio::time::timeout(PATIENCE, handle.result())
        .await
        .unwrap();
    assert_eq!(result.unwrap().unwrap(), 3);
    let keys = KEYS.lock().unwrap().clone();
    let expected = [
        (1, "k/1", "k/1/1"),
        (1, "k/1", "k/1/2"),
        (2, "k/run-2/1", "k/run-2/1/1"),
        (2, "k/run-2/1", "k/run-2/1/2"),
        (3, "k/run-3/1", "k/run-3/1/1"),
        (3, "k/run-3/1", "k/run-3/1/2"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(run, key, attempt)| (*run, (*key).to_owned(), (*attempt).to_owned()))
        .collect();
    assert_eq!(keys, expected);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_taken_by_a_losing_wait_goes_back_to_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = open(&path).await;
    let mut given_back = 0;
    for n in 0..8 {
        let id = format!("either-{n}");
        let handle = rt.start(either_then_other, &id, ()).await.unwrap();
        rt.signal(&id, "a", &"yes".to_owned()).await.unwrap();
        rt.signal(&id, "b", &"no".to_owned()).await.unwrap();
        rt.signal(&id, "go", &()).await.unwrap();
        let said = tokio::time::timeout(PATIENCE, handle.result())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            said == "a:yes then b:no" || said == "b:no then a:yes",
            "{id}: {said}"
        );
        let records: Vec<_> = rt
            .history(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.record)
            .collect();
        let abandoned = records.iter().find_map(|r| match r.kind {
            EventKind::StepAbandoned { step } => Some(step),
            _ => None,
        });
        let loser_took_one = records.iter().any(|r| {
            matches!(r.kind, EventKind::SignalDelivered { step, .. } if Some(step) == abandoned)
        });
        if loser_took_one {
            given_back += 1;
        }
        for _ in 0..16 {
            assert!(matches!(
                rt.replay(&records).await.unwrap(),
                ReplayVerdict::Matches(_)
            ));
        }
    }
    // Both waits see their signal in the same poll, so the loser has always taken one.
    assert_eq!(
        given_back, 8,
        "the losing wait took its signal in every round"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_child_whose_wait_lost_a_race_keeps_running_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = open(&path).await;
    let parent = rt
        .start(child_or_stop, "parent-1", "kid-1".to_owned())
        .await
        .unwrap();
    // The child is started (its start is the parent's step) before the parent stops.
    let mut spins = 0u32;
    while rt.status("kid-1").await.is_err() {
        spins += 1;
        assert!(spins < 1_000_000, "the child was never started");
        tokio::task::yield_now().await;
    }
    rt.signal("parent-1", "stop", &()).await.unwrap();
    let stopped = tokio::time::timeout(PATIENCE, parent.result())
        .await
        .expect("the parent ends once its other branch wins");
    assert_eq!(stopped.unwrap().unwrap(), "stopped");
    rt.shutdown().await;

    // The parent's abandoned wait did not take its child with it, across a restart too.
    let rt = open(&path).await;
    rt.signal("kid-1", "go", &"hello".to_owned()).await.unwrap();
    let child = rt.start(kid, "kid-1", ()).await.unwrap();
    assert!(!child.created(), "the same child, not a new one");
    let said = tokio::time::timeout(PATIENCE, child.result())
        .await
        .expect("the child finishes");
    assert_eq!(said.unwrap().unwrap(), "kid said hello");
    rt.shutdown().await;
}

/// Which branch of `activity_or_notice` the history says won: the select's step that
/// holds an outcome and is not recorded as abandoned (`None` while undecided).
fn recorded_winner(records: &[cairn::events::EventRecord]) -> Option<&'static str> {
    let abandoned: Vec<u32> = records
        .iter()
        .filter_map(|r| match r.kind {
            EventKind::StepAbandoned { step } => Some(step),
            _ => None,
        })
        .collect();
    let activity = records.iter().any(|r| {
        matches!(&r.kind, EventKind::ActivityCompleted { step, .. }
            if *step > 1 && !abandoned.contains(step))
    });
    let notice = records
        .iter()
        .any(|r| matches!(&r.kind, EventKind::Notified { step, .. } if !abandoned.contains(step)));
    match (activity, notice) {
        (true, false) => Some("activity"),
        (false, true) => Some("notice"),
        // Undecided, or the loser's abandonment not committed yet.
        _ => None,
    }
}

async fn records_of(rt: &Runtime, id: &str) -> Vec<cairn::events::EventRecord> {
    rt.history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect()
}

fn notices(records: &[cairn::events::EventRecord]) -> usize {
    records
        .iter()
        .filter(|r| matches!(r.kind, EventKind::Notified { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_lost_before_it_started_does_nothing_when_the_run_is_replayed() {
    // `select!` polls its branches in a random order. A branch can lose while it still
    // waits to start (here, for the result before it to be durable), before it recorded
    // anything. The next host, replaying the run, must not let it start then: no
    // notification the run never asked for, no other branch.
    const INSTANCES: u32 = 24;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = open(&path).await;
    for n in 0..INSTANCES {
        rt.start(activity_or_notice, &format!("notice-{n}"), ())
            .await
            .unwrap();
    }
    for n in 0..INSTANCES {
        let id = format!("notice-{n}");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while recorded_winner(&records_of(&rt, &id).await).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id}: no branch won"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // What a losing branch records goes with the next commit; let it land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut before = Vec::new();
    for n in 0..INSTANCES {
        before.push(records_of(&rt, &format!("notice-{n}")).await);
    }
    rt.shutdown().await;

    let rt = open(&path).await;
    for n in 0..INSTANCES {
        let id = format!("notice-{n}");
        let recorded = &before[n as usize];
        let won = recorded_winner(recorded).unwrap();
        rt.signal(&id, "end", &"end".to_owned()).await.unwrap();
        let said = tokio::time::timeout(PATIENCE, rt.handle(activity_or_notice, &id).result())
            .await
            .expect("the run finishes")
            .unwrap()
            .unwrap();
        let expected = match won {
            "activity" => "left right end",
            _ => "left notice end",
        };
        assert_eq!(said, expected, "{id}: the replay took another branch");
        assert_eq!(
            notices(&records_of(&rt, &id).await),
            notices(recorded),
            "{id} (won by the {won}): the replay recorded a notification the run never asked for"
        );
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_after_a_race_starts_only_once_the_losers_abandonment_is_durable() {
    // The loser's abandonment was queued without anyone waiting for it, and the next
    // activity could start (and do its work) before it was committed: a crash then left
    // two outcomes and no abandonment, and a replay could take the other branch after
    // the activity had already run.
    const INSTANCES: u32 = 16;
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    assert!(RUNTIME.set(rt.clone()).is_ok());
    for n in 0..INSTANCES {
        let id = format!("act-{n}");
        rt.start(ok_then_act, &id, id.clone()).await.unwrap();
    }
    for n in 0..INSTANCES {
        rt.signal(&format!("act-{n}"), "ok", &()).await.unwrap();
    }
    for n in 0..INSTANCES {
        let id = format!("act-{n}");
        tokio::time::timeout(PATIENCE, rt.handle(ok_then_act, &id).result())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    // Where the history records the loser's abandonment before the next step's outcome,
    // that step saw it durable when it started. (A run rebuilt from its log, as in
    // always-replay mode, can take the recorded winner without polling the loser, which
    // a later rebuild then records as abandoned, after the next step.)
    let seen = SEEN_ABANDONED.lock().unwrap().clone();
    assert_eq!(seen.len(), INSTANCES as usize);
    let mut abandoned = 0;
    for (id, held) in &seen {
        let records = records_of(&rt, id).await;
        let at = |wanted: fn(&EventKind) -> bool| records.iter().position(|r| wanted(&r.kind));
        let loser = at(|k| matches!(k, EventKind::StepAbandoned { step: 2 }));
        let next = at(|k| matches!(k, EventKind::ActivityCompleted { step: 3, .. }));
        if let (Some(loser), Some(next)) = (loser, next) {
            if loser > next {
                continue;
            }
            abandoned += 1;
            assert!(held, "{id}: started before the abandonment was durable");
        }
    }
    assert!(
        abandoned > 0,
        "no run recorded an abandonment: nothing was checked"
    );
    rt.shutdown().await;
}
