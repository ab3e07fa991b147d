//! Cairn's spans through OpenTelemetry (feature `otel`; `cargo test -p cairn --features
//! otel --test otel`): a run's span with its id and type, and one span per activity
//! attempt inside it, each with its step, attempt and outcome.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn::telemetry::opentelemetry::Value;
use cairn::telemetry::opentelemetry_sdk::error::OTelSdkResult;
use cairn::telemetry::opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use cairn::telemetry::tracing_subscriber::layer::SubscriberExt as _;
use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, WorkflowError};

/// Keeps every exported span.
#[derive(Clone, Debug, Default)]
struct Kept(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Kept {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

#[activity(initial_backoff = "10ms")]
async fn flaky(ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    if ctx.attempt == 1 {
        return Err(ActivityError::retryable("not yet"));
    }
    Ok(n * 2)
}

#[workflow]
async fn doubled(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    Ok(ctx.activity(flaky, n).await?)
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// A field's value as text, whichever OpenTelemetry type the bridge chose for it.
fn text(span: &SpanData, key: &str) -> String {
    attribute(span, key).map_or_else(String::new, |v| v.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_and_its_attempts_are_exported_as_nested_spans() {
    let kept = Kept::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(kept.clone())
        .build();
    let subscriber =
        cairn::telemetry::tracing_subscriber::registry().with(cairn::telemetry::layer(&provider));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .workflow(doubled)
        .always_replay(false)
        .open(dir.path().join("otel.redb"))
        .await
        .unwrap();
    let handle = rt.start(doubled, "otel-1", 21).await.unwrap();
    assert_eq!(handle.result().await.unwrap().unwrap(), 42);

    // The run's span closes when its driver ends, just after the result is published.
    let spans = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let _ = provider.force_flush();
            let spans = kept.0.lock().unwrap().clone();
            if spans.iter().any(|s| s.name == "cairn.instance") {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let run = spans.iter().find(|s| s.name == "cairn.instance").unwrap();
    assert_eq!(text(run, "instance"), "otel-1");
    assert_eq!(text(run, "workflow_type"), "doubled");
    assert_eq!(text(run, "run").len(), 32, "{run:?}");
    let mut attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "cairn.activity")
        .collect();
    attempts.sort_by_key(|s| text(s, "attempt"));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for (span, (attempt, outcome)) in attempts.iter().zip([("1", "retried"), ("2", "completed")]) {
        assert_eq!(text(span, "attempt"), attempt);
        assert_eq!(text(span, "outcome"), outcome);
        assert_eq!(text(span, "activity"), "flaky");
        assert_eq!(text(span, "instance"), "otel-1");
        assert_eq!(text(span, "workflow_type"), "doubled");
        assert_eq!(text(span, "step"), "1", "the first step");
        // Inside the run's span, in the same trace.
        assert_eq!(span.parent_span_id, run.span_context.span_id());
        assert_eq!(span.span_context.trace_id(), run.span_context.trace_id());
    }
    rt.shutdown().await;
    provider.shutdown().unwrap();
}
