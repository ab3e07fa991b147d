//! The host's metrics in the Prometheus text format (`Engine::metrics_text`, served at
//! `/metrics` by the HTTP API). Names are stable and documented in
//! `docs/OPERATIONS.md`; durations are in seconds; labels are bounded: workflow type,
//! activity name, status or outcome, never an instance id.
//!
//! Counters and histograms are fed where things happen (the commit path for starts and
//! ends, the run for activity attempts and timers); the gauges are read from the store
//! and the engine when scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a workflow type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TypeLabels {
    pub(crate) workflow_type: String,
}

/// Labels of the stored count of instances.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabels {
    pub(crate) workflow_type: String,
    /// `running`, `completed`, `failed`, `terminated` or `continued_as_new`.
    pub(crate) status: String,
}

/// Labels of an instance's end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndLabels {
    pub(crate) workflow_type: String,
    /// `completed`, `failed`, `terminated` or `continued_as_new`.
    pub(crate) status: String,
}

/// Labels of an activity attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AttemptLabels {
    pub(crate) workflow_type: String,
    pub(crate) activity: String,
    /// `completed`, `retried` (failed, another attempt follows) or `failed` (for good).
    pub(crate) outcome: String,
}

/// How a shard was claimed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClaimLabels {
    /// `free` (nobody held it) or `takeover` (another host's lease had expired).
    pub(crate) how: String,
}

/// Labels of an activity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ActivityLabels {
    pub(crate) workflow_type: String,
    pub(crate) activity: String,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 9 hours.
    Histogram::new(exponential_buckets(0.001, 4.0, 13))
}

/// Every metric the host keeps.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) started: Family<TypeLabels, Counter>,
    pub(crate) ended: Family<EndLabels, Counter>,
    pub(crate) workflow_seconds: Family<TypeLabels, Histogram, fn() -> Histogram>,
    pub(crate) attempts: Family<AttemptLabels, Counter>,
    pub(crate) activity_seconds: Family<ActivityLabels, Histogram, fn() -> Histogram>,
    pub(crate) commits: Counter,
    pub(crate) commit_events: Histogram,
    pub(crate) commit_seconds: Histogram,
    pub(crate) instances: Family<StatusLabels, Gauge>,
    pub(crate) parked: Gauge,
    pub(crate) timers_pending: Gauge,
    pub(crate) timers_fired: Counter,
    pub(crate) timer_lateness_seconds: Histogram,
    pub(crate) replays: Counter,
    pub(crate) resident_runs: Gauge,
    pub(crate) open_tasks: Gauge,
    pub(crate) overdue_tasks: Gauge,
    pub(crate) outbox_pending: Gauge,
    /// Recent attempt durations per activity, for the overview.
    pub(crate) recent: Recent,
    /// Each workflow type's start and end series, looked up once (see [`TypeSeries`]).
    types: std::sync::Mutex<std::collections::BTreeMap<String, TypeSeries>>,
    /// Held while a scrape refills the gauges it clears and encodes them.
    pub(crate) scrape: std::sync::Mutex<()>,
    /// This host among the hosts sharing its store; `None` on a store of its own.
    pub(crate) host: Option<HostMetrics>,
}

/// How a host sharing its store stands: its leases, read from the journal when scraped.
pub(crate) struct HostMetrics {
    shards_held: Gauge,
    shards_draining: Gauge,
    clock_offset: Gauge<f64, std::sync::atomic::AtomicU64>,
    claims: Family<ClaimLabels, Counter>,
    released: Counter,
    lost: Counter,
    heartbeat_failures: Counter,
    /// The journal's counts at the last scrape: counters move by the difference.
    last: std::sync::Mutex<crate::journal::Membership>,
}

impl HostMetrics {
    fn new(registry: &mut Registry) -> Self {
        let host = Self {
            shards_held: Gauge::default(),
            shards_draining: Gauge::default(),
            clock_offset: Gauge::default(),
            claims: Family::default(),
            released: Counter::default(),
            lost: Counter::default(),
            heartbeat_failures: Counter::default(),
            last: std::sync::Mutex::default(),
        };
        registry.register(
            "host_shards_held",
            "Shards this host holds a lease on (the store's runs are spread over a fixed number of shards)",
            host.shards_held.clone(),
        );
        registry.register(
            "host_shards_draining",
            "Shards this host is handing over to a host that joined",
            host.shards_draining.clone(),
        );
        registry.register(
            "host_clock_offset_seconds",
            "How far the database's clock is ahead of this host's (negative: behind), at the last heartbeat",
            host.clock_offset.clone(),
        );
        registry.register(
            "host_shard_claims",
            "Shards this host claimed, by how (free: nobody held it; takeover: another host's lease had expired)",
            host.claims.clone(),
        );
        registry.register(
            "host_shards_released",
            "Shards this host gave back to make room for a host that joined",
            host.released.clone(),
        );
        registry.register(
            "host_shards_lost",
            "Shards taken from this host while it counted them as its own (its lease lapsed)",
            host.lost.clone(),
        );
        registry.register(
            "host_heartbeat_failures",
            "Heartbeats of this host that failed (lease renewals that did not happen)",
            host.heartbeat_failures.clone(),
        );
        host
    }

    /// Brings the metrics up to `now`, the journal's membership.
    pub(crate) fn update(&self, now: &crate::journal::Membership) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        self.shards_held.set(i64::from(now.held));
        self.shards_draining.set(i64::from(now.draining));
        self.clock_offset.set(now.clock_offset_ms as f64 / 1000.0);
        let moved = |now: u64, then: u64| now.saturating_sub(then);
        self.claims
            .get_or_create(&ClaimLabels {
                how: "free".to_owned(),
            })
            .inc_by(moved(now.claimed_free, last.claimed_free));
        self.claims
            .get_or_create(&ClaimLabels {
                how: "takeover".to_owned(),
            })
            .inc_by(moved(now.taken_over, last.taken_over));
        self.released.inc_by(moved(now.released, last.released));
        self.lost.inc_by(moved(now.lost, last.lost));
        self.heartbeat_failures
            .inc_by(moved(now.heartbeat_failures, last.heartbeat_failures));
        *last = *now;
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// `shared`: the store is shared by several hosts (the host's lease metrics are
    /// kept too).
    pub(crate) fn new(shared: bool) -> Self {
        let mut registry = Registry::with_prefix("cairn");
        let metrics = Self {
            started: Family::default(),
            ended: Family::default(),
            workflow_seconds: Family::new_with_constructor(seconds_histogram),
            attempts: Family::default(),
            activity_seconds: Family::new_with_constructor(seconds_histogram),
            commits: Counter::default(),
            commit_events: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            timers_fired: Counter::default(),
            timer_lateness_seconds: seconds_histogram(),
            replays: Counter::default(),
            resident_runs: Gauge::default(),
            open_tasks: Gauge::default(),
            overdue_tasks: Gauge::default(),
            outbox_pending: Gauge::default(),
            // 0.1 ms to about 18 s: an fsync on a fast disk to a stalled one.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 3.0, 12)),
            instances: Family::default(),
            parked: Gauge::default(),
            timers_pending: Gauge::default(),
            recent: Recent::default(),
            types: std::sync::Mutex::default(),
            scrape: std::sync::Mutex::new(()),
            registry: Registry::default(),
            host: None,
        };
        let host = shared.then(|| HostMetrics::new(&mut registry));
        registry.register(
            "instances_started",
            "Instances started, by workflow type",
            metrics.started.clone(),
        );
        registry.register(
            "instances_ended",
            "Instances ended, by workflow type and how (completed, failed, terminated, continued_as_new)",
            metrics.ended.clone(),
        );
        registry.register(
            "workflow_duration_seconds",
            "From an instance's start to its end, by workflow type",
            metrics.workflow_seconds.clone(),
        );
        registry.register(
            "activity_attempts",
            "Activity attempts, by workflow type, activity and outcome (completed, retried, failed)",
            metrics.attempts.clone(),
        );
        registry.register(
            "activity_duration_seconds",
            "How long one activity attempt ran, by workflow type and activity",
            metrics.activity_seconds.clone(),
        );
        registry.register(
            "commits",
            "Commits applied by the host",
            metrics.commits.clone(),
        );
        registry.register(
            "commit_events",
            "Events per commit (group commit batch size)",
            metrics.commit_events.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "How long the store took to make one commit durable",
            metrics.commit_seconds.clone(),
        );
        registry.register(
            "instances",
            "Instances stored, by workflow type and stored status (parked ones count as running; see cairn_parked_instances)",
            metrics.instances.clone(),
        );
        registry.register(
            "parked_instances",
            "Instances parked (running, but set aside until their reason is fixed)",
            metrics.parked.clone(),
        );
        registry.register(
            "timers_pending",
            "Durable timers this host waits on",
            metrics.timers_pending.clone(),
        );
        registry.register(
            "timers_fired",
            "Durable timers that fired",
            metrics.timers_fired.clone(),
        );
        registry.register(
            "timer_lateness_seconds",
            "How late a durable timer fired after its deadline",
            metrics.timer_lateness_seconds.clone(),
        );
        registry.register(
            "replays",
            "Runs rebuilt from their history (recovery, wake-ups of evicted instances)",
            metrics.replays.clone(),
        );
        registry.register(
            "resident_runs",
            "Instances with a run in memory",
            metrics.resident_runs.clone(),
        );
        registry.register("open_tasks", "Open human tasks", metrics.open_tasks.clone());
        registry.register(
            "overdue_tasks",
            "Open human tasks past their due time",
            metrics.overdue_tasks.clone(),
        );
        registry.register(
            "outbox_pending",
            "Notifications not yet delivered (due now or waiting for a retry)",
            metrics.outbox_pending.clone(),
        );
        Self {
            registry,
            host,
            ..metrics
        }
    }

    /// Counts one activity attempt: its outcome, its duration, and the recent
    /// durations the overview's percentiles come from.
    pub(crate) fn attempt(&self, workflow_type: &str, activity: &str, outcome: &str, seconds: f64) {
        let families = AttemptFamilies {
            attempts: &self.attempts,
            seconds: &self.activity_seconds,
        };
        self.recent
            .count(&families, workflow_type, activity, outcome, seconds);
    }

    /// Counts what one commit started and ended, through `count`, which gets each
    /// workflow type's series; the types' lock is taken at most once per commit, and
    /// only by a commit that starts or ends a run.
    pub(crate) fn starts_and_ends(&self) -> TypeCounter<'_> {
        TypeCounter {
            metrics: self,
            types: None,
        }
    }

    /// The metrics in the Prometheus text exposition format.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// One workflow type's start and end series. Looked up by `&str` once per start or end:
/// a label set cloned and hashed for each (two strings and two family lookups per run)
/// was most of the commit path's metrics work in the durability bench.
pub(crate) struct TypeSeries {
    pub(crate) started: Counter,
    pub(crate) completed: Counter,
    pub(crate) failed: Counter,
    pub(crate) terminated: Counter,
    pub(crate) continued_as_new: Counter,
    pub(crate) seconds: Histogram,
}

impl TypeSeries {
    fn new(metrics: &Metrics, workflow_type: &str) -> Self {
        let ended = |status: &str| {
            metrics
                .ended
                .get_or_create(&EndLabels {
                    workflow_type: workflow_type.to_owned(),
                    status: status.to_owned(),
                })
                .clone()
        };
        let labels = TypeLabels {
            workflow_type: workflow_type.to_owned(),
        };
        Self {
            started: metrics.started.get_or_create(&labels).clone(),
            completed: ended("completed"),
            failed: ended("failed"),
            terminated: ended("terminated"),
            continued_as_new: ended("continued_as_new"),
            seconds: metrics.workflow_seconds.get_or_create(&labels).clone(),
        }
    }
}

/// Counts one commit's starts and ends ([`Metrics::starts_and_ends`]).
pub(crate) struct TypeCounter<'a> {
    metrics: &'a Metrics,
    types: Option<std::sync::MutexGuard<'a, std::collections::BTreeMap<String, TypeSeries>>>,
}

impl TypeCounter<'_> {
    /// Calls `f` with `workflow_type`'s series.
    pub(crate) fn count(&mut self, workflow_type: &str, f: impl FnOnce(&TypeSeries)) {
        let metrics = self.metrics;
        let types = self.types.get_or_insert_with(|| {
            metrics
                .types
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        });
        if let Some(series) = types.get(workflow_type) {
            f(series);
            return;
        }
        let series = TypeSeries::new(metrics, workflow_type);
        f(&series);
        types.insert(workflow_type.to_owned(), series);
    }
}

/// Attempts kept per activity for the overview's step latency percentiles.
pub const RECENT_ATTEMPTS: usize = 512;

/// The latest attempt durations of each activity on this host (the last
/// [`RECENT_ATTEMPTS`] per workflow type and activity), for the overview's step latency
/// percentiles; the Prometheus histograms keep the long view.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    /// By workflow type, then activity: looked up by `&str`, so an attempt of a known
    /// activity allocates nothing.
    steps: std::sync::Mutex<
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, Ring>>,
    >,
}

#[derive(Debug)]
struct Ring {
    seconds: std::collections::VecDeque<f64>,
    attempts: u64,
    failed: u64,
    /// This activity's Prometheus series, looked up once: an attempt then counts with
    /// no label allocation and no hashing (a family lookup per attempt was about 5% of
    /// the host's instructions per step in the durability bench).
    completed: Counter,
    retried: Counter,
    failed_for_good: Counter,
    duration: Histogram,
}

impl Ring {
    fn count(
        &mut self,
        families: &AttemptFamilies<'_>,
        workflow_type: &str,
        activity: &str,
        outcome: &str,
        seconds: f64,
    ) {
        if self.seconds.len() >= RECENT_ATTEMPTS {
            self.seconds.pop_front();
        }
        self.seconds.push_back(seconds);
        self.attempts += 1;
        if outcome != "completed" {
            self.failed += 1;
        }
        self.duration.observe(seconds);
        match outcome {
            "completed" => self.completed.inc(),
            "retried" => self.retried.inc(),
            "failed" => self.failed_for_good.inc(),
            other => families
                .attempts
                .get_or_create(&AttemptLabels {
                    workflow_type: workflow_type.to_owned(),
                    activity: activity.to_owned(),
                    outcome: other.to_owned(),
                })
                .inc(),
        };
    }

    fn new(families: &AttemptFamilies<'_>, workflow_type: &str, activity: &str) -> Self {
        let counter = |outcome: &str| {
            families
                .attempts
                .get_or_create(&AttemptLabels {
                    workflow_type: workflow_type.to_owned(),
                    activity: activity.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .clone()
        };
        Self {
            seconds: std::collections::VecDeque::new(),
            attempts: 0,
            failed: 0,
            completed: counter("completed"),
            retried: counter("retried"),
            failed_for_good: counter("failed"),
            duration: families
                .seconds
                .get_or_create(&ActivityLabels {
                    workflow_type: workflow_type.to_owned(),
                    activity: activity.to_owned(),
                })
                .clone(),
        }
    }
}

/// The families an attempt is counted in.
struct AttemptFamilies<'a> {
    attempts: &'a Family<AttemptLabels, Counter>,
    seconds: &'a Family<ActivityLabels, Histogram, fn() -> Histogram>,
}

/// Step latency of one activity, from its recent attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLatency {
    /// The workflow type.
    pub workflow_type: String,
    /// The activity.
    pub activity: String,
    /// Attempts since the host started.
    pub attempts: u64,
    /// Of which failed (retried or failed for good).
    pub failed: u64,
    /// How many recent attempts the percentiles cover.
    pub samples: u64,
    /// Median attempt duration, in milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

impl Recent {
    fn count(
        &self,
        families: &AttemptFamilies<'_>,
        workflow_type: &str,
        activity: &str,
        outcome: &str,
        seconds: f64,
    ) {
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        // A known activity (the usual case) takes one lookup per level.
        if let Some(ring) = steps
            .get_mut(workflow_type)
            .and_then(|activities| activities.get_mut(activity))
        {
            ring.count(families, workflow_type, activity, outcome, seconds);
            return;
        }
        steps
            .entry(workflow_type.to_owned())
            .or_default()
            .entry(activity.to_owned())
            .or_insert_with(|| Ring::new(families, workflow_type, activity))
            .count(families, workflow_type, activity, outcome, seconds);
    }

    pub(crate) fn latencies(&self) -> Vec<StepLatency> {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps
            .iter()
            .flat_map(|(workflow_type, activities)| {
                activities
                    .iter()
                    .map(move |(activity, ring)| (workflow_type, activity, ring))
            })
            .map(|(workflow_type, activity, ring)| {
                let mut sorted: Vec<f64> = ring.seconds.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                // Nearest rank.
                let rank = |q: f64| {
                    let n = sorted.len();
                    let at = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
                    sorted.get(at - 1).copied().unwrap_or(0.0) * 1000.0
                };
                StepLatency {
                    workflow_type: workflow_type.clone(),
                    activity: activity.clone(),
                    attempts: ring.attempts,
                    failed: ring.failed,
                    samples: sorted.len() as u64,
                    p50_ms: rank(0.5),
                    p95_ms: rank(0.95),
                    p99_ms: rank(0.99),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    #[test]
    fn percentiles_cover_the_latest_attempts_and_failures_count_all() {
        let metrics = Metrics::new(false);
        for n in 1..=100 {
            let outcome = if n % 10 == 0 { "retried" } else { "completed" };
            metrics.attempt("order", "charge", outcome, f64::from(n) / 1000.0);
        }
        let got = metrics.recent.latencies();
        assert_eq!(got.len(), 1);
        let charge = &got[0];
        assert_eq!(
            (charge.attempts, charge.failed, charge.samples),
            (100, 10, 100)
        );
        assert!((charge.p50_ms - 50.0).abs() < 1e-9, "{charge:?}");
        assert!((charge.p95_ms - 95.0).abs() < 1e-9, "{charge:?}");
        assert!((charge.p99_ms - 99.0).abs() < 1e-9, "{charge:?}");
        // Only the last RECENT_ATTEMPTS count for the percentiles.
        for _ in 0..RECENT_ATTEMPTS {
            metrics.attempt("order", "charge", "completed", 2.0);
        }
        let charge = &metrics.recent.latencies()[0];
        assert_eq!(charge.samples, RECENT_ATTEMPTS as u64);
        assert!((charge.p50_ms - 2000.0).abs() < 1e-9);
    }
}
