//! Schedules start one instance per occurrence, keep firing across restarts, never start
//! an occurrence twice, and collapse occurrences missed while the host was down into one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cairn::testing::{Clock, VirtualClock};
use cairn::Recurrence;
use cairn::{workflow, Ctx, ListFilter, Runtime, WorkflowError};

const HOUR: Duration = Duration::from_secs(3600);
/// 2026-11-26T08:30:00Z.
const START_MS: u64 = 1_795_681_800_000;

#[workflow]
async fn report(ctx: Ctx, region: String) -> Result<String, WorkflowError> {
    Ok(format!("{region} report by {}", ctx.instance_id()))
}

async fn open(path: &std::path::Path, clock: &VirtualClock) -> Runtime {
    Runtime::builder()
        .workflow(report)
        .clock(Arc::new(clock.clone()))
        .open_store(path)
        .await
        .unwrap()
}

async fn started(rt: &Runtime) -> Vec<String> {
    let mut ids: Vec<_> = rt
        .list(&ListFilter {
            workflow_type: Some("report".into()),
            ..ListFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    ids.sort();
    ids
}

async fn until_started(rt: &Runtime, count: usize) {
    let mut spins = 0u32;
    while started(rt).await.len() < count {
        spins += 1;
        assert!(spins < 2_000_000, "only {:?} started", started(rt).await);
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn an_hourly_schedule_fires_once_per_occurrence_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_millis(START_MS));
    let first = START_MS + HOUR.as_millis() as u64;
    {
        let rt = open(&path, &clock).await;
        rt.schedule(report, "emea", "emea".to_owned(), Recurrence::every(HOUR))
            .await
            .unwrap();
        assert_eq!(clock.skip_to_next_timer().await, first);
        until_started(&rt, 1).await;
        assert_eq!(started(&rt).await, [format!("emea@{first}")]);
        let result = rt
            .handle(report, &format!("emea@{first}"))
            .result()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result, format!("emea report by emea@{first}"));
        rt.shutdown().await;
    }
    // Restart before the next occurrence: nothing fires again.
    let rt = open(&path, &clock).await;
    assert_eq!(clock.next_timer().await, first + HOUR.as_millis() as u64);
    assert_eq!(started(&rt).await.len(), 1, "no occurrence started twice");
    rt.shutdown().await;

    // Five hours pass while the host is down: one start for the missed occurrences,
    // then back on the hourly rhythm.
    clock.advance(5 * HOUR);
    let rt = open(&path, &clock).await;
    until_started(&rt, 2).await;
    assert_eq!(started(&rt).await.len(), 2);
    let now = clock.now_ms();
    // The next fire time is recorded right after the start.
    let mut spins = 0u32;
    while rt.engine().schedules()[0].1.next_fire_ms <= now {
        spins += 1;
        assert!(spins < 2_000_000, "next fire time not recorded");
        tokio::task::yield_now().await;
    }
    let next = rt.engine().schedules()[0].1.next_fire_ms;
    // Back on the hourly grid of the first occurrence, not an hour after the late start.
    assert_eq!(next, first + 6 * HOUR.as_millis() as u64, "now {now}");
    assert!(next > now);
    assert!(rt.unschedule("emea").await.unwrap());
    rt.shutdown().await;
}

#[tokio::test]
async fn cron_schedules_fire_at_their_wall_clock_times_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_millis(START_MS));
    let rt = open(&dir.path().join("db.redb"), &clock).await;
    rt.schedule(
        report,
        "daily",
        "apac".to_owned(),
        Recurrence::cron("0 9 * * *"),
    )
    .await
    .unwrap();
    // 08:30 -> 09:00 the same day.
    assert_eq!(clock.skip_to_next_timer().await, START_MS + 30 * 60 * 1000);
    until_started(&rt, 1).await;
    assert_eq!(
        clock.next_timer().await,
        START_MS + 30 * 60 * 1000 + 24 * HOUR.as_millis() as u64
    );

    let err = rt
        .schedule(
            report,
            "bad",
            "x".to_owned(),
            Recurrence::cron("99 * * * *"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0014", "{err}");
    let err = rt
        .schedule(
            report,
            "fast",
            "x".to_owned(),
            Recurrence::every(Duration::from_millis(5)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0014", "{err}");
    rt.shutdown().await;
}

/// Lets the scheduler run: a paused schedule must start nothing however long it is given.
async fn settle() {
    for _ in 0..2_000 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_paused_schedule_starts_nothing_even_after_a_restart_and_resumes_on_its_grid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_millis(START_MS));
    let hour = HOUR.as_millis() as u64;
    {
        let rt = open(&path, &clock).await;
        rt.schedule(report, "emea", "emea".to_owned(), Recurrence::every(HOUR))
            .await
            .unwrap();
        let paused = rt.pause_schedule("emea", "ledger migration").await.unwrap();
        let pause = paused.paused.clone().unwrap();
        assert_eq!(pause.note, "ledger migration");
        assert_eq!(pause.at_ms, START_MS);
        assert_eq!(pause.by, None, "paused by the host's code");
        let again = rt.pause_schedule("emea", "another reason").await.unwrap();
        assert_eq!(again, paused, "a second pause keeps the first");
        clock.advance(3 * HOUR);
        settle().await;
        assert!(started(&rt).await.is_empty(), "paused: nothing fired");
        rt.shutdown().await;
    }
    // Still paused after a restart, with occurrences long due, and when the host
    // declares its schedules again as it starts.
    let rt = open(&path, &clock).await;
    assert!(rt.schedules()[0].1.paused.is_some());
    rt.schedule(report, "emea", "emea".to_owned(), Recurrence::every(HOUR))
        .await
        .unwrap();
    assert!(
        rt.schedules()[0].1.paused.is_some(),
        "a re-declaration keeps the pause"
    );
    clock.advance(HOUR);
    settle().await;
    assert!(started(&rt).await.is_empty(), "paused across the restart");
    // Started by hand while paused: one instance now, the schedule unmoved.
    let now = clock.now_ms();
    let before = rt.schedules()[0].1.next_fire_ms;
    let id = rt.trigger_schedule("emea").await.unwrap();
    assert_eq!(id, format!("emea@{now}"));
    until_started(&rt, 1).await;
    assert_eq!(
        rt.schedules()[0].1.next_fire_ms,
        before,
        "trigger moves nothing"
    );
    // Resumed at START + 4 h: what fell due is skipped, the next is START + 5 h.
    let resumed = rt.resume_schedule("emea").await.unwrap();
    assert_eq!(resumed.paused, None);
    assert_eq!(resumed.next_fire_ms, START_MS + 5 * hour);
    assert_eq!(clock.skip_to_next_timer().await, START_MS + 5 * hour);
    until_started(&rt, 2).await;
    assert_eq!(
        started(&rt).await,
        [
            format!("emea@{now}"),
            format!("emea@{}", START_MS + 5 * hour)
        ]
    );
    // Resuming a running schedule changes nothing; an unknown one is named.
    let running = rt.schedules()[0].1.clone();
    assert_eq!(rt.resume_schedule("emea").await.unwrap(), running);
    let unknown = rt.pause_schedule("apac", "x").await.unwrap_err();
    assert_eq!(unknown.code(), "CAIRN-E0027", "{unknown}");
    assert_eq!(
        rt.trigger_schedule("apac").await.unwrap_err().code(),
        "CAIRN-E0027"
    );
    rt.shutdown().await;
}
