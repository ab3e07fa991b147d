//! Reports: per workflow type and period, how many runs started and how they ended, how
//! long they took, what broke service levels (overdue tasks, escalations) and why runs
//! failed; by hour or by day, and as CSV for spreadsheets.

use std::collections::HashMap;

use cairn_core::codec::Payload;
use cairn_core::event::EventKind;
use cairn_core::journal::StoredEvent;
use cairn_core::task::TaskChange;
use serde::Serialize;

use crate::mine::Spread;

/// Buckets a report holds at most.
pub const BUCKETS_MAX: u64 = 1_000;

/// Failure reasons a report lists (the most frequent first).
pub const REASONS_SHOWN: usize = 20;

/// What happened to the runs started in one period.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Period {
    /// Start of the period (ms since the Unix epoch).
    pub at_ms: u64,
    /// Runs started in it.
    pub started: u64,
    /// Of which completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Terminated.
    pub terminated: u64,
    /// Continued as a new run.
    pub continued: u64,
    /// Not finished.
    pub open: u64,
    /// From start to end, of those that finished.
    pub duration: Option<Spread>,
    /// Human tasks created.
    pub tasks: u64,
    /// Tasks that passed their due time while open.
    pub overdue_tasks: u64,
    /// Escalation tiers that fired.
    pub escalations: u64,
    /// Activity attempts that failed and were retried.
    pub retries: u64,
}

/// Why runs failed, and how often.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailureReason {
    /// The reason: the failing activity and its error kind, or the workflow's error.
    pub reason: String,
    /// Runs that failed with it.
    pub count: u64,
    /// One of them (its instance id).
    pub example: String,
}

/// A report of one workflow type over a period.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Report {
    /// The workflow type.
    pub workflow_type: String,
    /// Start of the period (ms since the Unix epoch).
    pub from_ms: u64,
    /// End of the period (exclusive).
    pub until_ms: u64,
    /// Length of each bucket.
    pub bucket_ms: u64,
    /// The whole period (its `at_ms` is `from_ms`).
    pub totals: Period,
    /// Period by period, oldest first (empty ones included).
    pub buckets: Vec<Period>,
    /// Why runs failed, most frequent first (at most [`REASONS_SHOWN`]).
    pub failure_reasons: Vec<FailureReason>,
    /// Set by the caller when it read fewer runs than the period holds.
    pub truncated: bool,
}

/// A short text of a workflow's error payload: an enum variant with its `kind`
/// (`Business: declined`), a string, or the JSON itself, cut at 120 characters.
fn error_text(error: &Payload) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(&error.data) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(map)) if map.len() == 1 => {
            let (variant, inner) = map.into_iter().next().unwrap_or_default();
            match inner.get("kind").and_then(|k| k.as_str()) {
                Some(kind) => format!("{variant}: {kind}"),
                None => match inner.as_str() {
                    Some(s) => format!("{variant}: {s}"),
                    None => variant,
                },
            }
        }
        Ok(other) => other.to_string(),
        Err(_) => format!("{} bytes (codec {})", error.data.len(), error.codec),
    };
    if text.chars().count() > 120 {
        text.chars().take(119).collect::<String>() + "…"
    } else {
        text
    }
}

#[derive(Default)]
struct Acc {
    bucket: Period,
    durations: Vec<u64>,
}

impl Acc {
    fn add(&mut self, run: &RunFacts) {
        let b = &mut self.bucket;
        b.started += 1;
        match run.end {
            Some((EndKind::Completed, _)) => b.completed += 1,
            Some((EndKind::Failed, _)) => b.failed += 1,
            Some((EndKind::Terminated, _)) => b.terminated += 1,
            Some((EndKind::Continued, _)) => b.continued += 1,
            None => b.open += 1,
        }
        if let Some((_, took)) = run.end {
            self.durations.push(took);
        }
        b.tasks += run.tasks;
        b.overdue_tasks += run.overdue;
        b.escalations += run.escalations;
        b.retries += run.retries;
    }

    fn finish(mut self) -> Period {
        self.bucket.duration = Spread::of(&mut self.durations);
        self.bucket
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EndKind {
    Completed,
    Failed,
    Terminated,
    Continued,
}

/// What a report needs of one run.
struct RunFacts {
    started_ms: u64,
    /// How it ended and how long it took.
    end: Option<(EndKind, u64)>,
    tasks: u64,
    overdue: u64,
    escalations: u64,
    retries: u64,
    reason: Option<String>,
}

fn facts(events: &[StoredEvent]) -> RunFacts {
    let started_ms = events.first().map_or(0, |e| e.record.recorded_at_ms);
    let mut run = RunFacts {
        started_ms,
        end: None,
        tasks: 0,
        overdue: 0,
        escalations: 0,
        retries: 0,
        reason: None,
    };
    let mut failed_activity: Option<String> = None;
    for event in events {
        let took = event.record.recorded_at_ms.saturating_sub(started_ms);
        match &event.record.kind {
            EventKind::TaskCreated { .. } => run.tasks += 1,
            EventKind::TaskChanged { change, .. } => match change {
                TaskChange::Overdue => run.overdue += 1,
                TaskChange::Escalated { .. } => run.escalations += 1,
                _ => {}
            },
            EventKind::ActivityAttemptFailed { .. } => run.retries += 1,
            EventKind::ActivityFailed {
                activity, error, ..
            } => {
                failed_activity = Some(format!("activity {activity}: {}", error.kind));
            }
            EventKind::WorkflowCompleted { .. } => run.end = Some((EndKind::Completed, took)),
            EventKind::WorkflowFailed { error } => {
                run.end = Some((EndKind::Failed, took));
                // A workflow that fails because an activity did names the activity; one
                // that decides to fail names its own error.
                let own = error_text(error);
                run.reason = Some(match failed_activity.take() {
                    Some(activity) if own.starts_with("Activity") => activity,
                    _ => own,
                });
            }
            EventKind::WorkflowTerminated { .. } => {
                run.end = Some((EndKind::Terminated, took));
            }
            EventKind::WorkflowContinuedAsNew { .. } => {
                run.end = Some((EndKind::Continued, took));
            }
            _ => {}
        }
    }
    run
}

impl Report {
    /// The report of `workflow_type` over `[from_ms, until_ms)` in buckets of
    /// `bucket_ms`, from the runs' verified histories (a run counts in the bucket it
    /// started in; other types and runs started outside the period are skipped).
    /// `bucket_ms` is raised so that there are at most [`BUCKETS_MAX`] buckets.
    ///
    /// # Example
    /// ```
    /// # use cairn_insight::report::Report;
    /// let day = 86_400_000;
    /// let report = Report::build("loan", 0, 7 * day, day, std::iter::empty::<&[cairn_core::journal::StoredEvent]>());
    /// assert_eq!(report.buckets.len(), 7);
    /// assert_eq!(report.totals.started, 0);
    /// ```
    pub fn build<'a>(
        workflow_type: &str,
        from_ms: u64,
        until_ms: u64,
        bucket_ms: u64,
        histories: impl IntoIterator<Item = &'a [StoredEvent]>,
    ) -> Self {
        let until_ms = until_ms.max(from_ms);
        let span = until_ms - from_ms;
        let bucket_ms = bucket_ms.max(1).max(span.div_ceil(BUCKETS_MAX));
        let count = span.div_ceil(bucket_ms).max(1);
        let mut buckets: Vec<Acc> = (0..count)
            .map(|n| Acc {
                bucket: Period {
                    at_ms: from_ms + n * bucket_ms,
                    ..Period::default()
                },
                durations: Vec::new(),
            })
            .collect();
        let mut totals = Acc {
            bucket: Period {
                at_ms: from_ms,
                ..Period::default()
            },
            durations: Vec::new(),
        };
        let mut reasons: HashMap<String, (u64, String)> = HashMap::new();
        for events in histories {
            let Some(EventKind::WorkflowStarted {
                workflow_type: t,
                id,
                ..
            }) = events.first().map(|e| &e.record.kind)
            else {
                continue;
            };
            if t != workflow_type {
                continue;
            }
            let run = facts(events);
            if run.started_ms < from_ms || run.started_ms >= until_ms {
                continue;
            }
            let n = usize::try_from((run.started_ms - from_ms) / bucket_ms).unwrap_or(0);
            if let Some(bucket) = buckets.get_mut(n) {
                bucket.add(&run);
            }
            totals.add(&run);
            if let Some(reason) = run.reason {
                let entry = reasons.entry(reason).or_insert_with(|| (0, id.clone()));
                entry.0 += 1;
            }
        }
        let mut failure_reasons: Vec<FailureReason> = reasons
            .into_iter()
            .map(|(reason, (count, example))| FailureReason {
                reason,
                count,
                example,
            })
            .collect();
        failure_reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
        failure_reasons.truncate(REASONS_SHOWN);
        Report {
            workflow_type: workflow_type.to_owned(),
            from_ms,
            until_ms,
            bucket_ms,
            totals: totals.finish(),
            buckets: buckets.into_iter().map(Acc::finish).collect(),
            failure_reasons,
            truncated: false,
        }
    }

    /// The buckets as CSV: one row per period, times in UTC (RFC 3339), durations in
    /// seconds; a header row first.
    pub fn buckets_csv(&self) -> String {
        let mut out = csv::Writer::from_writer(Vec::new());
        let _ = out.write_record([
            "period_start_utc",
            "started",
            "completed",
            "failed",
            "terminated",
            "continued_as_new",
            "open",
            "duration_median_s",
            "duration_p95_s",
            "human_tasks",
            "overdue_tasks",
            "escalations",
            "retried_attempts",
        ]);
        let seconds = |ms: Option<u64>| {
            ms.map_or_else(String::new, |ms| format!("{:.3}", ms as f64 / 1000.0))
        };
        for b in &self.buckets {
            let _ = out.write_record([
                utc(b.at_ms),
                b.started.to_string(),
                b.completed.to_string(),
                b.failed.to_string(),
                b.terminated.to_string(),
                b.continued.to_string(),
                b.open.to_string(),
                seconds(b.duration.map(|d| d.median_ms)),
                seconds(b.duration.map(|d| d.p95_ms)),
                b.tasks.to_string(),
                b.overdue_tasks.to_string(),
                b.escalations.to_string(),
                b.retries.to_string(),
            ]);
        }
        String::from_utf8(out.into_inner().unwrap_or_default()).unwrap_or_default()
    }

    /// The failure reasons as CSV: reason, runs, an example instance.
    pub fn reasons_csv(&self) -> String {
        let mut out = csv::Writer::from_writer(Vec::new());
        let _ = out.write_record(["reason", "failed_runs", "example_instance"]);
        for r in &self.failure_reasons {
            let _ = out.write_record([r.reason.as_str(), &r.count.to_string(), r.example.as_str()]);
        }
        String::from_utf8(out.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}

/// `2026-01-05T09:00:00Z`.
fn utc(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || ms.to_string(),
            |at| at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
}
