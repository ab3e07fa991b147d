//! An activity step (`ctx.activity`): zero or more `ActivityAttemptFailed` (each with the
//! backoff before the next attempt), then one outcome, `ActivityCompleted` or
//! `ActivityFailed`.
//!
//! States: scheduled (n failed attempts, next one due at t) -> completed | failed |
//! cancelled. What the run records after each attempt is decided here
//! ([`after_attempt`]), from the attempt's result and the retry policy alone.

use std::time::Duration;

use super::{unexpected, RecordedOutcome, RecordedStep, Route, StepKind};
use crate::activity::{ActivityError, ActivityFailure, RetryPolicy};
use crate::codec::Payload;
use crate::event::{EventKind, StepNo, EVENT_BYTES_MAX};

/// Room left in an activity event for everything but its input and result.
pub const STEP_EVENT_HEADROOM_BYTES: usize = 4096;

pub(crate) fn route(event: &EventKind) -> Option<Route<'_>> {
    match event {
        EventKind::ActivityAttemptFailed { step, activity, .. }
        | EventKind::ActivityCompleted { step, activity, .. }
        | EventKind::ActivityFailed { step, activity, .. } => Some(Route {
            step: *step,
            kind: StepKind::Activity,
            name: activity,
            opens: true,
        }),
        _ => None,
    }
}

pub(crate) fn apply(
    entry: &mut RecordedStep,
    event: &EventKind,
    recorded_at_ms: u64,
) -> Result<(), String> {
    match event {
        EventKind::ActivityAttemptFailed { retry_in_ms, .. } => {
            entry.failed_attempts += 1;
            entry.deadline_ms = Some(recorded_at_ms.saturating_add(*retry_in_ms));
            Ok(())
        }
        EventKind::ActivityCompleted {
            input,
            attempt,
            output,
            ..
        } => {
            entry.input = Some(input.clone());
            entry.finish(RecordedOutcome::ActivityCompleted {
                output: output.clone(),
                attempt: *attempt,
            });
            Ok(())
        }
        EventKind::ActivityFailed {
            input,
            attempt,
            error,
            ..
        } => {
            entry.input = Some(input.clone());
            entry.finish(RecordedOutcome::ActivityFailed {
                error: error.clone(),
                attempt: *attempt,
            });
            Ok(())
        }
        other => Err(unexpected(entry.kind, other)),
    }
}

/// One activity call as the run executes it.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// The step.
    pub step: StepNo,
    /// The activity's name.
    pub name: &'a str,
    /// Its retry policy.
    pub retry: &'a RetryPolicy,
}

/// What the run records after an attempt, and what it does next.
#[derive(Debug)]
pub enum AfterAttempt {
    /// Record the outcome and return the output.
    Completed(Completed),
    /// Record the failed attempt, wait `backoff`, then make attempt `attempt + 1`.
    Retry {
        /// The failed attempt's event.
        record: EventKind,
        /// The wait before the next attempt.
        backoff: Duration,
        /// The input, handed back for the next attempt.
        input: Payload,
    },
    /// Record the step's failure and return it.
    Failed {
        /// The outcome event.
        record: EventKind,
        /// The failure the workflow gets.
        failure: ActivityFailure,
    },
}

/// A completed attempt: the workflow reads its output ([`Completed::output`]) before the
/// outcome's event takes it ([`Completed::into_record`]), so the output is never copied.
#[derive(Debug)]
pub struct Completed {
    step: StepNo,
    activity: String,
    input: Payload,
    attempt: u32,
    output: Payload,
}

impl Completed {
    /// The output the workflow gets.
    pub fn output(&self) -> &Payload {
        &self.output
    }

    /// The outcome event (`ActivityCompleted`).
    pub fn into_record(self) -> EventKind {
        EventKind::ActivityCompleted {
            step: self.step,
            activity: self.activity,
            input: self.input,
            attempt: self.attempt,
            output: self.output,
        }
    }
}

/// Decides, from attempt `attempt`'s result, what the run records and does next. An
/// output too large for one event becomes a terminal failure (`payload_too_large`):
/// parking would re-run the activity at every start and fail the same way, while a
/// recorded failure lets the workflow handle it once.
///
/// The outcome's event takes `input` (no copy per step); a retry hands it back.
pub fn after_attempt(
    call: Call<'_>,
    input: Payload,
    attempt: u32,
    result: Result<Payload, ActivityError>,
) -> AfterAttempt {
    let result = result.and_then(|output| {
        let bytes = output.data.len() + input.data.len() + call.name.len();
        if bytes + STEP_EVENT_HEADROOM_BYTES > EVENT_BYTES_MAX {
            return Err(ActivityError::terminal(
                "payload_too_large",
                format!("the step's input and result take {bytes} bytes, over the {EVENT_BYTES_MAX} byte event limit; store large data outside and return a reference"),
            ));
        }
        Ok(output)
    });
    match result {
        Ok(output) => AfterAttempt::Completed(Completed {
            step: call.step,
            activity: call.name.to_owned(),
            input,
            attempt,
            output,
        }),
        Err(error) if call.retry.should_retry(&error, attempt) => {
            let backoff = call.retry.backoff(attempt);
            AfterAttempt::Retry {
                record: EventKind::ActivityAttemptFailed {
                    step: call.step,
                    activity: call.name.to_owned(),
                    attempt,
                    error: error.record(),
                    retry_in_ms: u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                },
                backoff,
                input,
            }
        }
        Err(error) => {
            let record = error.record();
            AfterAttempt::Failed {
                failure: ActivityFailure::from_record(call.name, call.step, attempt, &record),
                record: EventKind::ActivityFailed {
                    step: call.step,
                    activity: call.name.to_owned(),
                    input,
                    attempt,
                    error: record,
                },
            }
        }
    }
}

/// How long a run resumed between a recorded failure and the next attempt still waits:
/// what is left of the recorded backoff at `now_ms` (the failure's commit time plus its
/// `retry_in_ms`, `due_ms`), never longer than the policy's backoff now.
pub fn remaining_backoff(
    due_ms: u64,
    now_ms: u64,
    failed_attempts: u32,
    retry: &RetryPolicy,
) -> Duration {
    Duration::from_millis(due_ms.saturating_sub(now_ms)).min(retry.backoff(failed_attempts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(retry: &RetryPolicy) -> Call<'_> {
        Call {
            step: 4,
            name: "charge",
            retry,
        }
    }

    #[test]
    fn retryable_failures_retry_with_the_policys_backoff_until_attempts_run_out() {
        let input = Payload::new(0, b"1".to_vec());
        let retry = RetryPolicy::default()
            .max_attempts(2)
            .initial_backoff(Duration::from_secs(3));
        let busy = || Err(ActivityError::retryable("busy"));
        let input = match after_attempt(call(&retry), input.clone(), 1, busy()) {
            AfterAttempt::Retry {
                backoff,
                record: EventKind::ActivityAttemptFailed { retry_in_ms, .. },
                input: handed_back,
            } => {
                assert_eq!(backoff, Duration::from_secs(3));
                assert_eq!(retry_in_ms, 3000);
                assert_eq!(handed_back, input, "the next attempt gets the same input");
                handed_back
            }
            other => panic!("{other:?}"),
        };
        match after_attempt(call(&retry), input.clone(), 2, busy()) {
            AfterAttempt::Failed {
                record:
                    EventKind::ActivityFailed {
                        input: recorded, ..
                    },
                ..
            } => assert_eq!(recorded, input),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_completed_attempt_records_the_output_the_workflow_reads() {
        let input = Payload::new(0, b"1".to_vec());
        let output = Payload::new(0, b"2".to_vec());
        let retry = RetryPolicy::default();
        let AfterAttempt::Completed(done) =
            after_attempt(call(&retry), input.clone(), 3, Ok(output.clone()))
        else {
            panic!("a successful attempt did not complete the step");
        };
        assert_eq!(done.output(), &output);
        match done.into_record() {
            EventKind::ActivityCompleted {
                step,
                activity,
                input: recorded_input,
                attempt,
                output: recorded,
            } => {
                assert_eq!((step, activity.as_str(), attempt), (4, "charge", 3));
                assert_eq!(recorded_input, input);
                assert_eq!(recorded, output);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_output_too_large_for_an_event_is_a_terminal_failure() {
        let input = Payload::new(0, b"1".to_vec());
        let retry = RetryPolicy::default();
        let huge = Payload::new(0, vec![b'x'; EVENT_BYTES_MAX]);
        match after_attempt(call(&retry), input, 1, Ok(huge)) {
            AfterAttempt::Failed { failure, .. } => assert_eq!(failure.kind, "payload_too_large"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_resumed_backoff_waits_out_what_is_left_and_no_more_than_the_policy() {
        let retry = RetryPolicy::default().initial_backoff(Duration::from_secs(10));
        assert_eq!(
            remaining_backoff(1_000 + 4_000, 1_000, 1, &retry),
            Duration::from_secs(4)
        );
        assert_eq!(remaining_backoff(500, 1_000, 1, &retry), Duration::ZERO);
        assert_eq!(
            remaining_backoff(u64::MAX, 0, 1, &retry),
            Duration::from_secs(10)
        );
    }
}
