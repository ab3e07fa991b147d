//! Cairn's spans exported to OpenTelemetry (feature `otel`).
//!
//! The runtime opens `tracing` spans with stable names and fields:
//!
//! | span | fields | covers |
//! | --- | --- | --- |
//! | `cairn.instance` | `run` (32 hex digits), `instance`, `workflow_type` | one run driven by this host, from its start or load (replay) to its end or eviction |
//! | `cairn.activity` | `instance`, `workflow_type`, `step`, `activity`, `attempt`, `outcome` (`completed`, `retried`, `failed`) | one attempt of an activity, inside its run's span |
//!
//! Instance ids appear as span fields, never as metric labels. [`layer`] turns these (and
//! any other `tracing` spans) into OpenTelemetry spans; pick an exporter for your
//! collector (OTLP with the `opentelemetry-otlp` crate, for example) when you build the
//! provider. The crates are re-exported so that their versions fit together.

pub use opentelemetry;
pub use opentelemetry_sdk;
pub use tracing_opentelemetry;
pub use tracing_subscriber;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

/// A `tracing` layer that exports spans through `provider`, with the instrumentation
/// scope `cairn`.
///
/// # Example
/// ```
/// use cairn::telemetry::opentelemetry_sdk::trace::SdkTracerProvider;
/// use cairn::telemetry::tracing_subscriber::layer::SubscriberExt as _;
///
/// // Add your exporter here: `.with_batch_exporter(otlp_exporter)`.
/// let provider = SdkTracerProvider::builder().build();
/// let subscriber = cairn::telemetry::tracing_subscriber::registry()
///     .with(cairn::telemetry::layer(&provider));
/// tracing::subscriber::set_global_default(subscriber).unwrap();
/// // ... open the runtime; flush with `provider.force_flush()` before exiting.
/// ```
pub fn layer<S>(provider: &SdkTracerProvider) -> OpenTelemetryLayer<S, Tracer>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("cairn"))
}
