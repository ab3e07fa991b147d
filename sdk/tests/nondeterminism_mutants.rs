//! Replay catches changed workflow code at the first step where it departs from its
//! history, and stays quiet for changes that do not alter what was recorded.
//!
//! One recorded run of the base workflow is replayed against 20 deliberate mutations
//! (reorder, rename, change kind, change input, insert or delete a step, branch on the
//! wall clock, ...), each of which must fail with CAIRN-E0001 at the expected step, and
//! against 10 benign changes (logging, refactoring, options that are not recorded,
//! a patch marker that answers "old path", code after the last recorded step), which
//! must replay cleanly. The variant is chosen through a static, which is exactly the
//! kind of outside influence the check exists to catch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn::audit::ReplayVerdict;
use cairn::events::EventRecord;
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, AttrValue, Ctx, Error, RetryPolicy, Runtime,
    WorkflowError,
};

static VARIANT: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn fetch(_ctx: ActivityCtx, n: u64) -> Result<u64, ActivityError> {
    Ok(n + 1)
}

#[activity]
async fn fetch_v2(_ctx: ActivityCtx, n: u64) -> Result<u64, ActivityError> {
    Ok(n + 1)
}

#[activity]
async fn price(_ctx: ActivityCtx, n: u64) -> Result<u64, ActivityError> {
    Ok(n * 10)
}

#[activity]
async fn ship(_ctx: ActivityCtx, n: u64) -> Result<String, ActivityError> {
    Ok(format!("shipped {n}"))
}

fn helper_total(a: u64, b: u64) -> u64 {
    a + b
}

/// Base (variant 0): fetch(1), now, price(a), sleep 1 h, attributes, side effect, ship(p).
#[workflow]
async fn base(ctx: Ctx, n: u64) -> Result<String, WorkflowError> {
    let v = VARIANT.load(Ordering::SeqCst);
    if v == 5 {
        ctx.activity(price, n).await?; // inserted before the first step
    }
    let a = match v {
        1 => ctx.activity(fetch_v2, n).await?,  // renamed activity
        2 => ctx.activity(fetch, n + 1).await?, // changed input
        3 => ctx.side_effect("fetch", move || n + 1).await, // changed kind
        4 => ctx.activity(price, n).await?,     // other activity first (reorder)
        6 => n + 1,                             // deleted step
        _ => ctx.activity(fetch, n).await?,
    };
    if v == 7 {
        ctx.activity(price, a).await?; // swapped with now(): activity where a value was recorded
    }
    let now = ctx.now().await;
    let _ = now;
    if v == 8 {
        // Branch on the wall clock: today it is after 2020, so replay takes a new path.
        let after_2020 = std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .is_ok_and(|d| d.as_secs() > 1_577_836_800);
        if after_2020 {
            ctx.activity(fetch, 99).await?;
        }
    }
    let p = match v {
        9 => ctx.activity(price, a + 1).await?, // changed input at step 3
        10 => ctx.activity(ship, a).await.map(|_| 0)?, // changed activity at step 3
        11 => {
            ctx.sleep(Duration::from_secs(3600)).await?; // timer where an activity was
            0
        }
        21 => {
            ctx.activity(price, a)
                .retry(RetryPolicy::default().max_attempts(9))
                .await?
        } // benign
        22 => {
            ctx.activity(price, a)
                .start_to_close(Duration::from_secs(1))
                .await?
        } // benign
        _ => ctx.activity(price, a).await?,
    };
    match v {
        12 => {}                                       // deleted timer
        13 => ctx.activity(fetch, p).await.map(drop)?, // timer became an activity
        _ => ctx.sleep(Duration::from_secs(3600)).await?,
    }
    let customer = if v == 14 { "globex" } else { "acme" }; // changed attribute value
    match v {
        15 => {
            ctx.set_attributes([("client", AttrValue::from(customer))])
                .await
        } // renamed attribute
        _ => {
            ctx.set_attributes([("customer", AttrValue::from(customer))])
                .await
        }
    }
    let tag: String = match v {
        16 => ctx.side_effect("label", || "x".to_owned()).await, // renamed side effect
        17 => ctx.activity(ship, p).await?,                      // side effect became activity
        _ => ctx.side_effect("tag", || "x".to_owned()).await,
    };
    if v == 18 {
        ctx.activity(fetch, 1).await?; // inserted step before the last one
    }
    if v == 23 {
        println!("shipping {p} with tag {tag}"); // benign: logging
    }
    if v == 24 && ctx.patched("new-check").await {
        ctx.activity(fetch, 0).await?; // benign: the recorded run predates the patch
    }
    let shipped = match v {
        19 => return Ok(format!("early {tag}")), // deleted last step
        20 => ctx.activity(ship, p + 1).await?,  // changed input of the last step
        25 => ctx.activity(ship, helper_total(p, 0)).await?, // benign: refactored
        _ => ctx.activity(ship, p).await?,
    };
    let result = if v == 26 {
        shipped.clone()
    } else {
        format!("{shipped} {tag}")
    };
    let _ = result;
    Ok(format!("{shipped} {tag}"))
}

/// Runs the base workflow once (its hour-long timer in virtual time) and returns its history.
async fn record(rt: &Runtime) -> Vec<EventRecord> {
    VARIANT.store(0, Ordering::SeqCst);
    rt.start(base, "m-1", 4).await.unwrap();
    rt.handle(base, "m-1").result().await.unwrap().unwrap();
    rt.history("m-1")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect()
}

#[tokio::test]
async fn twenty_mutants_are_caught_at_their_first_divergent_step_and_ten_benign_changes_pass() {
    let dir = tempfile::tempdir().unwrap();
    let clock = cairn::testing::VirtualClock::new(
        std::time::UNIX_EPOCH + Duration::from_secs(1_764_000_000),
    );
    let rt = Runtime::builder()
        .workflow(base)
        .clock(std::sync::Arc::new(clock.clone()))
        .open_store(dir.path().join("db.redb"))
        .await
        .unwrap();
    let skipper = {
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                clock.skip_to_next_timer().await;
            }
        })
    };
    let records = record(&rt).await;
    skipper.abort();

    // Steps of the base run: 1 fetch, 2 now, 3 price, 4 sleep, 5 attributes, 6 tag, 7 ship.
    let mutants: [(usize, u32); 20] = [
        (1, 1),  // renamed activity
        (2, 1),  // changed input
        (3, 1),  // activity became a side effect
        (4, 1),  // reordered
        (5, 1),  // inserted step
        (6, 1),  // deleted step
        (7, 2),  // activity where a recorded value was
        (8, 3),  // branch on the wall clock adds a step
        (9, 3),  // changed input
        (10, 3), // other activity
        (11, 3), // timer where an activity was
        (12, 4), // deleted timer
        (13, 4), // timer became an activity
        (14, 5), // changed attribute value
        (15, 5), // renamed attribute
        (16, 6), // renamed side effect
        (17, 6), // side effect became an activity
        (18, 7), // inserted step before the last
        (19, 7), // deleted last step (code returns early)
        (20, 7), // changed input of the last step
    ];
    for (variant, step) in mutants {
        VARIANT.store(variant, Ordering::SeqCst);
        match rt.replay(&records).await {
            Err(Error::NonDeterminism(diff)) => {
                assert_eq!(diff.step, step, "mutant {variant}: {diff}");
            }
            other => panic!("mutant {variant} was not caught: {other:?}"),
        }
    }

    // Benign: 0 (itself), 21 retry policy, 22 timeout, 23 logging, 24 patch on the old
    // path, 25 refactor, 26 a local computed differently but unused.
    for variant in [0, 21, 22, 23, 24, 25, 26] {
        VARIANT.store(variant, Ordering::SeqCst);
        let verdict = rt.replay(&records).await;
        assert!(
            matches!(verdict, Ok(ReplayVerdict::Matches(_))),
            "benign change {variant}: {verdict:?}"
        );
    }
    // Benign on an unfinished history: code after the last recorded step (every variant
    // agrees up to step 3, and the history is cut there).
    let cut = &records[..4];
    for variant in [0, 12, 13] {
        VARIANT.store(variant, Ordering::SeqCst);
        let verdict = rt.replay(cut).await;
        assert!(
            matches!(verdict, Ok(ReplayVerdict::Unfinished { .. })),
            "change after the cut {variant}: {verdict:?}"
        );
    }
    rt.shutdown().await;
}
