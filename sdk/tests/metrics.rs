//! The host's metrics: starts and ends by type and status, activity attempts by
//! outcome, timers, commits and open tasks, in the Prometheus text format, with bounded
//! labels (never an instance id).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Actor, Ctx, Runtime, TaskKind, WorkflowError,
};
use serde::{Deserialize, Serialize};

static CALLS: AtomicU32 = AtomicU32::new(0);

#[activity(max_attempts = 3, initial_backoff = "10ms")]
async fn flaky(_ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    if CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(ActivityError::retryable("first call fails"));
    }
    Ok(n * 2)
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
struct Ok_ {
    ok: bool,
}

const CHECK: TaskKind<u32, Ok_> = TaskKind::new("check");

#[workflow]
async fn counted(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let doubled = ctx.activity(flaky, n).await?;
    ctx.sleep(Duration::from_millis(20)).await?;
    Ok(doubled)
}

#[workflow]
async fn asks(ctx: Ctx, n: u32) -> Result<bool, WorkflowError> {
    Ok(ctx
        .human_task(CHECK.task(n).roles(["checker"]))
        .await?
        .decision
        .ok)
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_what_happened_with_bounded_labels() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(counted)
        .workflow(asks)
        .open_store(dir.path().join("m.redb"))
        .await
        .unwrap();
    let done = rt.start(counted, "secret-instance-id-1", 21).await.unwrap();
    assert_eq!(done.result().await.unwrap().unwrap(), 42);
    let asking = rt.start(asks, "secret-instance-id-2", 1).await.unwrap();
    let checker = Actor::new("chris", ["checker"]);
    let task = loop {
        let page = rt
            .tasks(&cairn::TaskQuery::for_actor(&checker))
            .await
            .unwrap();
        if let Some(row) = page.rows.first() {
            break cairn::TaskId::new(row.instance.clone(), row.step);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let text = rt.engine().metrics_text().await.unwrap();
    assert_eq!(
        value(
            &text,
            r#"cairn_instances_started_total{workflow_type="counted"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"cairn_instances_ended_total{workflow_type="counted",status="completed"}"#
        ),
        Some(1.0),
        "{text}"
    );
    // The other end statuses are there at 0 (docs/OPERATIONS.md, Metrics).
    assert_eq!(
        value(
            &text,
            r#"cairn_instances_ended_total{workflow_type="counted",status="failed"}"#
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"cairn_activity_attempts_total{workflow_type="counted",activity="flaky",outcome="retried"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"cairn_activity_attempts_total{workflow_type="counted",activity="flaky",outcome="completed"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "cairn_timers_fired_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "cairn_open_tasks"), Some(1.0), "{text}");
    // From the store's tallies: one run of each type, one ended and one waiting.
    assert_eq!(
        value(
            &text,
            r#"cairn_instances{workflow_type="counted",status="completed"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"cairn_instances{workflow_type="asks",status="running"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "cairn_parked_instances"), Some(0.0), "{text}");
    assert_eq!(value(&text, "cairn_timers_pending"), Some(0.0), "{text}");
    assert!(
        value(&text, "cairn_commit_duration_seconds_count").unwrap() >= 4.0,
        "{text}"
    );
    assert!(
        value(&text, "cairn_commits_total").unwrap() >= 4.0,
        "{text}"
    );
    assert!(
        text.contains("cairn_workflow_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("# HELP cairn_activity_duration_seconds"),
        "{text}"
    );
    assert!(
        !text.contains("secret-instance-id"),
        "an instance id leaked into a label"
    );
    // A host's lease metrics exist where it shares its store, and only there.
    assert_eq!(
        rt.engine().membership().is_some(),
        common::on_postgres(),
        "{text}"
    );
    assert_eq!(
        text.contains("# HELP cairn_host_shards_held"),
        common::on_postgres(),
        "{text}"
    );
    rt.complete(&checker, &task, &Ok_ { ok: true })
        .await
        .unwrap();
    assert!(asking.result().await.unwrap().unwrap());
    let text = rt.engine().metrics_text().await.unwrap();
    assert_eq!(value(&text, "cairn_open_tasks"), Some(0.0), "{text}");
    assert_eq!(
        value(
            &text,
            r#"cairn_instances{workflow_type="asks",status="running"}"#
        ),
        None,
        "a count that fell to zero is not kept at its old value: {text}"
    );
    assert_eq!(
        value(
            &text,
            r#"cairn_instances{workflow_type="asks",status="completed"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"cairn_instances_ended_total{workflow_type="asks",status="completed"}"#
        ),
        Some(1.0),
        "{text}"
    );
    rt.shutdown().await;
}
