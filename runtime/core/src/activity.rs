//! Activity options, errors and the context an activity runs with.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::{ActivityErrorRecord, StepNo};

/// How often and how fast a failed activity is tried again.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use cairn_core::RetryPolicy;
/// let policy = RetryPolicy::default()
///     .max_attempts(5)
///     .initial_backoff(Duration::from_millis(200))
///     .non_retryable(["card_declined"]);
/// assert_eq!(policy.backoff(1), Duration::from_millis(200));
/// assert_eq!(policy.backoff(2), Duration::from_millis(400));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. `1` means no retry.
    pub max_attempts: u32,
    /// Delay after the first failure.
    pub initial_backoff: Duration,
    /// Upper bound of the delay.
    pub max_backoff: Duration,
    /// Factor applied to the delay after each failure.
    pub multiplier: f64,
    /// Error kinds ([`ActivityError::kind`]) that are never retried.
    pub non_retryable_kinds: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            non_retryable_kinds: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// A policy that makes exactly one attempt.
    pub fn no_retry() -> Self {
        Self::default().max_attempts(1)
    }

    /// Sets [`RetryPolicy::max_attempts`] (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets [`RetryPolicy::initial_backoff`].
    pub fn initial_backoff(mut self, delay: Duration) -> Self {
        self.initial_backoff = delay;
        self
    }

    /// Sets [`RetryPolicy::max_backoff`].
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// Sets [`RetryPolicy::multiplier`] (at least 1.0).
    pub fn multiplier(mut self, factor: f64) -> Self {
        self.multiplier = if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Adds error kinds that end the step at once.
    pub fn non_retryable<I, S>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.non_retryable_kinds
            .extend(kinds.into_iter().map(Into::into));
        self
    }

    /// Delay before the attempt after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = secs.min(self.max_backoff.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_backoff)
    }

    /// Whether `error` after attempt `attempt` gets another attempt.
    pub fn should_retry(&self, error: &ActivityError, attempt: u32) -> bool {
        error.retryable
            && attempt < self.max_attempts
            && !self.non_retryable_kinds.contains(&error.kind)
    }
}

/// Options of one activity call.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivityOptions {
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// Longest one attempt may run; an attempt over it fails with kind `"timeout"` (retryable).
    pub start_to_close: Duration,
}

/// Default bound of one activity attempt.
pub const ACTIVITY_START_TO_CLOSE_DEFAULT: Duration = Duration::from_secs(300);

impl Default for ActivityOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            start_to_close: ACTIVITY_START_TO_CLOSE_DEFAULT,
        }
    }
}

/// An activity's failure. Its type says whether another attempt may succeed.
///
/// Any `std::error::Error` converts into a *retryable* `ActivityError` with `?`; say
/// [`ActivityError::terminal`] for failures that retrying cannot fix (a declined card).
///
/// # Example
/// ```
/// use cairn_core::ActivityError;
/// fn parse(qty: &str) -> Result<u32, ActivityError> {
///     let qty: u32 = qty.parse()?; // retryable by default
///     if qty == 0 {
///         return Err(ActivityError::terminal("empty_order", "an order needs at least one item"));
///     }
///     Ok(qty)
/// }
/// assert!(parse("x").unwrap_err().retryable);
/// assert!(!parse("0").unwrap_err().retryable);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityError {
    /// Machine-readable kind, matched by [`RetryPolicy::non_retryable_kinds`].
    pub kind: String,
    /// Human-readable message.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl ActivityError {
    /// A failure another attempt may fix (a timeout, a 503).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: "error".into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry fixes; the step fails at once.
    pub fn terminal(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retryable: false,
        }
    }

    /// Sets the kind.
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// The error as history records it (`ActivityAttemptFailed`, `ActivityFailed`).
    pub fn record(&self) -> ActivityErrorRecord {
        ActivityErrorRecord {
            kind: self.kind.clone(),
            message: self.message.clone(),
            retryable: self.retryable,
        }
    }
}

impl fmt::Display for ActivityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nature = if self.retryable {
            "retryable"
        } else {
            "terminal"
        };
        write!(f, "{nature} {} error: {}", self.kind, self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ActivityError {
    fn from(err: E) -> Self {
        ActivityError::retryable(err.to_string())
    }
}

/// What a workflow sees when an activity step failed for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "activity `{activity}` (step {step}) failed after {attempts} attempt(s): {kind}: {message}"
)]
pub struct ActivityFailure {
    /// Activity name.
    pub activity: String,
    /// The step.
    pub step: StepNo,
    /// Attempts made.
    pub attempts: u32,
    /// Last error kind.
    pub kind: String,
    /// Last error message.
    pub message: String,
    /// Whether the last error was retryable (attempts ran out) or terminal.
    pub retryable: bool,
}

impl ActivityFailure {
    /// The failure an activity step reports when cancellation ended it.
    pub fn cancelled(activity: &str, step: StepNo, attempts: u32, reason: &str) -> Self {
        Self {
            activity: activity.to_owned(),
            step,
            attempts,
            kind: "cancelled".to_owned(),
            message: reason.to_owned(),
            retryable: false,
        }
    }

    /// Whether the step ended because the instance was cancelled.
    pub fn is_cancellation(&self) -> bool {
        self.kind == "cancelled"
    }

    /// The failure the workflow sees for activity step `step` that history records as
    /// failed after `attempts` attempts with `error`.
    pub fn from_record(
        activity: &str,
        step: StepNo,
        attempts: u32,
        error: &ActivityErrorRecord,
    ) -> Self {
        Self {
            activity: activity.to_owned(),
            step,
            attempts,
            kind: error.kind.clone(),
            message: error.message.clone(),
            retryable: error.retryable,
        }
    }
}

/// A durable wait ended because the instance's cancellation was requested
/// (`Runtime::cancel`). The workflow decides what to do: clean up, compensate, and
/// return an error (or a result).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("cancelled at step {step}: {reason}")]
pub struct Cancelled {
    /// The step that observed it.
    pub step: StepNo,
    /// The reason given to `cancel`.
    pub reason: String,
}

/// Values a host registered for its activities (a database pool, an HTTP client, a
/// configuration), one per type: `RuntimeBuilder::state(pool)` on the host,
/// `ctx.state::<Pool>()` in an activity. Cheap to clone; shared, never copied.
#[derive(Clone, Default)]
pub struct AppState(Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>);

impl AppState {
    /// `self` with `value` registered for its type (replacing one of the same type).
    pub fn with<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        Arc::make_mut(&mut self.0).insert(TypeId::of::<T>(), value);
        self
    }

    /// The value registered for `T`, if any.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|value| Arc::clone(value).downcast::<T>().ok())
    }

    /// How many values are registered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Two states are equal when they are the same registry (a host's, shared by its
/// activities); values are not compared.
impl PartialEq for AppState {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for AppState {}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("values", &self.0.len())
            .finish()
    }
}

/// What an activity knows about the call it serves.
///
/// The names are shared with the calling run (`Arc<str>`: cloning one is a reference
/// count, and making a context per attempt allocates nothing); they read as `&str`
/// (`&*ctx.instance_id`, or `ctx.instance_id.to_string()` for an owned copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityContext {
    /// User id of the calling instance.
    pub instance_id: Arc<str>,
    /// Workflow type of the caller.
    pub workflow_type: Arc<str>,
    /// Activity name.
    pub activity: Arc<str>,
    /// The step of the call in the workflow.
    pub step: StepNo,
    /// This attempt (1 for the first). Continues after a crash: recorded failures count.
    pub attempt: u32,
    /// The calling run's position in its continue-as-new chain: 1 for an instance's
    /// first run, 2 for the run it continued as, and so on.
    pub run: u32,
    /// What the host registered for its activities (see [`ActivityContext::state`]).
    pub app: AppState,
}

impl ActivityContext {
    /// The value of type `T` the host registered (`RuntimeBuilder::state`): a database
    /// pool, an HTTP client. No globals needed.
    ///
    /// # Errors
    /// A terminal [`ActivityError`] of kind `missing_state` naming the type, when the
    /// host registered none: a deployment mistake that retrying cannot fix.
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, ActivityError> {
        self.app.get::<T>().ok_or_else(|| {
            ActivityError::terminal(
                "missing_state",
                format!(
                    "activity `{}` needs a `{}`, and the host registered none; add `.state(..)` with one to the runtime builder",
                    self.activity,
                    std::any::type_name::<T>()
                ),
            )
        })
    }

    /// A key that is the same for every execution of this step (every attempt, every
    /// re-run after a crash) and differs for every other step, including the steps of the
    /// later runs of a continue-as-new chain, which start numbering from 1 again:
    /// `"{instance}/{step}"` in an instance's first run, `"{instance}/run-{run}/{step}"`
    /// in its later runs. Pass it to external systems that de-duplicate, so an activity
    /// that ran twice has its effect once.
    ///
    /// ```
    /// # use cairn_core::ActivityContext;
    /// let mut ctx = ActivityContext {
    ///     instance_id: "meter-7".into(),
    ///     workflow_type: "read_meter".into(),
    ///     activity: "bill".into(),
    ///     step: 3,
    ///     attempt: 2,
    ///     run: 1,
    ///     app: Default::default(),
    /// };
    /// assert_eq!(ctx.idempotency_key(), "meter-7/3");
    /// ctx.run = 4;
    /// assert_eq!(ctx.idempotency_key(), "meter-7/run-4/3");
    /// ```
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.step_prefix(), self.step)
    }

    /// A key unique to this attempt: the idempotency key followed by `/{attempt}`, the
    /// same when an attempt is re-run after a crash. For systems that must tell attempts
    /// apart.
    pub fn attempt_key(&self) -> String {
        format!("{}/{}/{}", self.step_prefix(), self.step, self.attempt)
    }

    /// The first run keeps the keys it had before runs were numbered, so a step in
    /// flight across an upgrade keeps its key.
    fn step_prefix(&self) -> String {
        if self.run <= 1 {
            self.instance_id.to_string()
        } else {
            format!("{}/run-{}", self.instance_id, self.run)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default()
            .initial_backoff(Duration::from_secs(1))
            .max_backoff(Duration::from_secs(5));
        assert_eq!(p.backoff(1), Duration::from_secs(1));
        assert_eq!(p.backoff(3), Duration::from_secs(4));
        assert_eq!(p.backoff(10), Duration::from_secs(5));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn retry_decision_honours_kind_type_and_attempts() {
        let p = RetryPolicy::default()
            .max_attempts(3)
            .non_retryable(["declined"]);
        assert!(p.should_retry(&ActivityError::retryable("x"), 1));
        assert!(!p.should_retry(&ActivityError::retryable("x"), 3));
        assert!(!p.should_retry(&ActivityError::retryable("x").with_kind("declined"), 1));
        assert!(!p.should_retry(&ActivityError::terminal("bad", "x"), 1));
    }
}
