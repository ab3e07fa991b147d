//! Always-replay mode: every run is rebuilt from the log after each durable step. A
//! workflow that uses every kind of step must give the same result and the same history
//! (event by event, payloads included) as with runs kept in memory, must run each
//! activity attempt exactly as often, and must really have been replayed at each step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use cairn::testing::VirtualClock;
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, RetryPolicy, Runtime, WorkflowError,
};
use common::wait_for_events;

/// Attempts per (instance, activity, step): instances of the two modes have different
/// ids, so the counts of one run cannot leak into the other.
static ATTEMPTS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn count_attempt(ctx: &ActivityCtx) -> u32 {
    let key = format!("{}/{}/{}", ctx.instance_id, ctx.activity, ctx.step);
    let mut attempts = ATTEMPTS.lock().unwrap();
    let n = attempts
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_insert(0);
    *n += 1;
    *n
}

fn attempts_of(instance: &str) -> Vec<(String, u32)> {
    let attempts = ATTEMPTS.lock().unwrap();
    let mut of: Vec<_> = attempts
        .as_ref()
        .map(|a| {
            a.iter()
                .filter_map(|(k, n)| k.strip_prefix(instance).map(|rest| (rest.to_owned(), *n)))
                .collect()
        })
        .unwrap_or_default();
    of.sort();
    of
}

#[activity]
async fn assess(ctx: ActivityCtx, amount: u64) -> Result<u64, ActivityError> {
    // Fails its first attempt, so a retry is recorded.
    if count_attempt(&ctx) == 1 {
        return Err(ActivityError::retryable("assessor busy"));
    }
    Ok(amount * 9 / 10)
}

#[activity]
async fn notify(ctx: ActivityCtx, who: String) -> Result<String, ActivityError> {
    count_attempt(&ctx);
    Ok(format!("told {who}"))
}

#[activity]
async fn reject_fraud(ctx: ActivityCtx, amount: u64) -> Result<u64, ActivityError> {
    count_attempt(&ctx);
    Err(ActivityError::terminal(
        "fraud",
        format!("{amount} looks forged"),
    ))
}

#[workflow]
async fn payout(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    let sent = ctx.activity(notify, format!("bank: pay {amount}")).await?;
    Ok(sent)
}

#[workflow]
async fn claim(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    ctx.set_stage("received").await;
    let assessed = ctx
        .activity(assess, amount)
        .retry(
            RetryPolicy::default()
                .initial_backoff(Duration::from_millis(5))
                .max_attempts(3),
        )
        .await?;
    let reference: u64 = ctx.side_effect("reference", || 4242).await;
    let fraud = match ctx.activity(reject_fraud, amount).await {
        Ok(_) => "clean".to_owned(),
        Err(failure) => format!("checked: {}", failure.kind),
    };
    if ctx.patched("second-opinion").await {
        ctx.sleep(Duration::from_secs(3600)).await?;
    }
    let adjuster: Option<String> = ctx
        .signal_or_timeout("adjuster", Duration::from_secs(24 * 3600))
        .await?;
    let silence: Option<String> = ctx
        .signal_or_timeout("never-sent", Duration::from_secs(60))
        .await?;
    let child_id = format!("{}/payout", ctx.instance_id());
    let paid = ctx
        .child(payout, &child_id, assessed)
        .await
        .map_err(|e| WorkflowError::business("payout", format!("{e:?}")))?;
    let (a, b) = futures::join!(
        ctx.activity(notify, "customer".to_owned()),
        ctx.activity(notify, "broker".to_owned())
    );
    ctx.set_stage("closed").await;
    Ok(format!(
        "{reference} {assessed} {fraud} {adjuster:?} {silence:?} {paid} {} {}",
        a?, b?
    ))
}

struct Run {
    result: String,
    /// Each event's kind and payload, without its time and hash (which name the instance).
    events: Vec<String>,
    replays: u64,
    attempts: Vec<(String, u32)>,
}

async fn run(always_replay: bool, id: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let rt = Runtime::builder()
        .workflow(claim)
        .workflow(payout)
        .clock(Arc::new(clock.clone()))
        .always_replay(always_replay)
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let handle = rt.start(claim, id, 1_000).await.unwrap();
    // The retry's backoff (on the runtime clock too), the hour's timer, then the
    // adjuster's signal, then the minute's timeout.
    clock.skip_to_next_timer().await;
    clock.skip_to_next_timer().await;
    wait_for_events(&rt, id, 10).await;
    rt.signal(id, "adjuster", &"dana".to_owned()).await.unwrap();
    wait_for_events(&rt, id, 13).await;
    clock.skip_to_next_timer().await;
    let result = handle.result().await.unwrap().unwrap();
    let events = rt
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            let text = format!("{:?}", e.record.kind);
            // Child ids carry the parent's id, which differs between the two modes.
            text.replace(id, "<id>")
        })
        .collect();
    let replays = rt.engine().replays();
    rt.shutdown().await;
    Run {
        result: result.replace(id, "<id>"),
        events,
        replays,
        attempts: attempts_of(id),
    }
}

#[tokio::test]
async fn always_replay_gives_the_same_result_history_and_attempts() {
    let live = run(false, "claim-live").await;
    let replayed = run(true, "claim-replayed").await;
    assert_eq!(
        live.result,
        "4242 900 checked: fraud Some(\"dana\") None told bank: pay 900 told customer told broker"
    );
    assert_eq!(replayed.result, live.result);
    assert_eq!(replayed.events.len(), live.events.len());
    for (n, (r, l)) in replayed.events.iter().zip(&live.events).enumerate() {
        assert_eq!(r, l, "event {} differs", n + 1);
    }
    assert_eq!(replayed.attempts, live.attempts, "activity attempts differ");
    assert_eq!(
        live.attempts.iter().map(|(_, n)| n).sum::<u32>(),
        6,
        "{:?}",
        live.attempts
    );
    eprintln!(
        "{} events; replays: {} kept in memory, {} in always-replay mode",
        live.events.len(),
        live.replays,
        replayed.replays
    );
    assert_eq!(
        live.replays, 0,
        "nothing should replay with runs kept in memory"
    );

    // Parent: one replay per step outcome and wait start (the join's two notifies may
    // share one); child: one per step. Far more than zero is the point.
    assert!(
        replayed.replays >= 14,
        "only {} replays in always-replay mode",
        replayed.replays
    );
}
