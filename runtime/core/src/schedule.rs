//! Recurring starts: a schedule starts one instance of a workflow per occurrence of an
//! interval or a cron expression. Occurrence `T` of schedule `S` is the instance with id
//! `S@T` (T in ms since the Unix epoch), so a crash between starting an occurrence and
//! recording the next fire time starts nothing twice: starting an id is idempotent.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::Payload;
use crate::error::{Error, Result};

/// Shortest interval accepted between occurrences.
pub const SCHEDULE_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// When a schedule fires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recurrence {
    /// Every `ms` milliseconds from the first fire time.
    EveryMs(u64),
    /// A cron expression in UTC (five fields, or six with seconds; `@daily` aliases),
    /// as understood by the `croner` crate.
    Cron(String),
}

impl Recurrence {
    /// Every `interval`.
    pub fn every(interval: Duration) -> Self {
        Recurrence::EveryMs(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX))
    }

    /// A cron expression in UTC, e.g. `"0 9 * * MON-FRI"`.
    pub fn cron(expression: &str) -> Self {
        Recurrence::Cron(expression.to_owned())
    }

    /// Checks the recurrence can be used.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an interval under [`SCHEDULE_INTERVAL_MIN`] or a
    /// cron expression that does not parse, with the parser's reason.
    pub fn validate(&self) -> Result<()> {
        match self {
            Recurrence::EveryMs(ms) if Duration::from_millis(*ms) < SCHEDULE_INTERVAL_MIN => {
                Err(Error::InvalidArgument(format!(
                    "a schedule interval must be at least {SCHEDULE_INTERVAL_MIN:?}, got {ms} ms"
                )))
            }
            Recurrence::EveryMs(_) => Ok(()),
            Recurrence::Cron(expression) => {
                croner::Cron::from_str(expression).map(drop).map_err(|err| {
                    Error::InvalidArgument(format!("cron expression `{expression}`: {err}"))
                })
            }
        }
    }

    /// The first occurrence strictly after `now_ms`, following the occurrence due at
    /// `fired_ms`. Intervals keep their grid (`fired_ms + k * interval`), so neither a
    /// scheduler running a little late nor occurrences missed while no host ran shift
    /// them; cron expressions are on the wall clock anyway.
    ///
    /// # Errors
    /// As [`Recurrence::next_after`].
    pub fn next_following(&self, fired_ms: u64, now_ms: u64) -> Result<u64> {
        match self {
            Recurrence::EveryMs(ms) => {
                let every = (*ms).max(1);
                let periods = now_ms.saturating_sub(fired_ms) / every + 1;
                Ok(fired_ms.saturating_add(periods.saturating_mul(every)))
            }
            Recurrence::Cron(_) => self.next_after(fired_ms.max(now_ms)),
        }
    }

    /// The first occurrence strictly after `after_ms`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the expression does not parse or has no future
    /// occurrence.
    pub fn next_after(&self, after_ms: u64) -> Result<u64> {
        match self {
            Recurrence::EveryMs(ms) => Ok(after_ms.saturating_add((*ms).max(1))),
            Recurrence::Cron(expression) => {
                let cron = croner::Cron::from_str(expression).map_err(|err| {
                    Error::InvalidArgument(format!("cron expression `{expression}`: {err}"))
                })?;
                let millis = i64::try_from(after_ms).unwrap_or(i64::MAX);
                let after = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(millis)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("time {after_ms} ms is out of range"))
                    })?;
                let next = cron.find_next_occurrence(&after, false).map_err(|err| {
                    Error::InvalidArgument(format!("cron expression `{expression}`: {err}"))
                })?;
                u64::try_from(next.timestamp_millis()).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "cron expression `{expression}` fires before 1970"
                    ))
                })
            }
        }
    }
}

/// A stored schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRow {
    /// Workflow type started at each occurrence.
    pub workflow_type: String,
    /// Input of every started instance.
    pub input: Payload,
    /// When it fires.
    pub recurrence: Recurrence,
    /// The next occurrence not yet started, ms since the Unix epoch.
    pub next_fire_ms: u64,
    /// Set while the schedule is paused: it starts nothing until resumed.
    pub paused: Option<Paused>,
}

/// Who paused a schedule, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The actor's id, when an actor asked (through the API).
    pub by: Option<String>,
    /// Why, as given.
    pub note: String,
}

impl ScheduleRow {
    /// The row as it is once resumed at `now_ms`: not paused, and its next occurrence
    /// the first after `now_ms` when the pause went past the one it had (occurrences
    /// due while it was paused are skipped, not made up).
    ///
    /// # Errors
    /// As [`Recurrence::next_following`].
    pub fn resumed(&self, now_ms: u64) -> Result<Self> {
        let next_fire_ms = if self.next_fire_ms <= now_ms {
            self.recurrence.next_following(self.next_fire_ms, now_ms)?
        } else {
            self.next_fire_ms
        };
        Ok(Self {
            paused: None,
            next_fire_ms,
            ..self.clone()
        })
    }
}

/// A schedule row as storage formats before 9 wrote it (no pause); read by stores to
/// accept their older rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRowV1 {
    /// As [`ScheduleRow::workflow_type`].
    pub workflow_type: String,
    /// As [`ScheduleRow::input`].
    pub input: Payload,
    /// As [`ScheduleRow::recurrence`].
    pub recurrence: Recurrence,
    /// As [`ScheduleRow::next_fire_ms`].
    pub next_fire_ms: u64,
}

impl From<ScheduleRowV1> for ScheduleRow {
    fn from(row: ScheduleRowV1) -> Self {
        Self {
            workflow_type: row.workflow_type,
            input: row.input,
            recurrence: row.recurrence,
            next_fire_ms: row.next_fire_ms,
            paused: None,
        }
    }
}

/// The instance id of occurrence `fire_ms` of schedule `schedule_id`.
pub fn occurrence_id(schedule_id: &str, fire_ms: u64) -> String {
    format!("{schedule_id}@{fire_ms}")
}

#[cfg(all(test, not(cairn_loom)))]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_cron_expressions_give_the_next_occurrence() {
        assert_eq!(
            Recurrence::every(Duration::from_secs(60))
                .next_after(1_000)
                .unwrap(),
            61_000
        );
        // 2026-11-26T08:30:00Z -> next 09:00 UTC the same day.
        let at = 1_795_681_800_000;
        assert_eq!(
            Recurrence::cron("0 9 * * *").next_after(at).unwrap(),
            at + 30 * 60 * 1000
        );
        // An interval keeps its grid whether the scheduler is on time, a little late, or
        // back after missed occurrences.
        let hourly = Recurrence::every(Duration::from_secs(3600));
        let hour = 3_600_000;
        assert_eq!(hourly.next_following(hour, hour).unwrap(), 2 * hour);
        assert_eq!(hourly.next_following(hour, hour + 7).unwrap(), 2 * hour);
        assert_eq!(hourly.next_following(hour, 6 * hour).unwrap(), 7 * hour);
        assert_eq!(hourly.next_following(hour, 6 * hour - 1).unwrap(), 6 * hour);
        assert_eq!(
            Recurrence::cron("0 9 * * *")
                .next_following(at - 1000, at)
                .unwrap(),
            at + 30 * 60 * 1000
        );
        assert!(Recurrence::cron("61 * * * *").validate().is_err());
        assert!(Recurrence::every(Duration::from_millis(10))
            .validate()
            .is_err());
    }
}
