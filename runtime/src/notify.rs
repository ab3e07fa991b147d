//! The [`Notifier`] a host registers for the notification outbox, and the logging one
//! it gets by default. The delivery task (`engine::run_outbox`) hands every due
//! notification to it and records each attempt, with the next one's time, in the
//! journal.

use std::time::Duration;

use async_trait::async_trait;

pub use cairn_core::notify::{
    derive, retry_after, Delivery, DeliveryAttempt, Draft, Notification, OutboxRow, Topic,
    ATTEMPTS_MAX,
};

/// Longest a notifier may take with one notification before the attempt counts as
/// failed (and is retried).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Receives every notification: a task created, overdue or escalated; an instance failed
/// or parked; a workflow's `ctx.notify`. Called at least once per notification (again
/// after an error, a timeout or a crash before the delivery was recorded), so a receiver
/// deduplicates by [`Notification::id`].
///
/// ```
/// use cairn_runtime::notify::{Notification, Notifier};
///
/// struct Pager;
///
/// #[async_trait::async_trait]
/// impl Notifier for Pager {
///     async fn notify(&self, notification: &Notification) -> Result<(), String> {
///         if notification.topic.name() == "instance.parked" {
///             // page whoever is on call ...
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Delivers `notification`.
    ///
    /// # Errors
    /// Why it could not be delivered now; the attempt is recorded and retried with
    /// backoff ([`retry_after`]).
    async fn notify(&self, notification: &Notification) -> Result<(), String>;
}

/// Writes every notification to the log (`tracing`, target `cairn::notify`): the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoggingNotifier;

#[async_trait]
impl Notifier for LoggingNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), String> {
        tracing::info!(
            target: "cairn::notify",
            id = n.id,
            topic = n.topic.name(),
            instance = %n.instance,
            workflow_type = %n.workflow_type,
            step = ?n.step,
            body = %n.body,
            "notification"
        );
        Ok(())
    }
}
