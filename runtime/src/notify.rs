//! Delivery of the notification outbox: the [`Notifier`] a host registers, the logging
//! one it gets by default, and the delivery task that hands every due notification to
//! the notifier and records each attempt (with the next one's time, backing off) in the
//! journal.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::engine::Shared;
pub use cairn_core::notify::{
    derive, retry_after, Delivery, DeliveryAttempt, Draft, Notification, OutboxRow, Topic,
    ATTEMPTS_MAX,
};

/// Longest a notifier may take with one notification before the attempt counts as
/// failed (and is retried).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this many notifications are delivered at once.
const DELIVERIES_AT_ONCE: usize = 16;

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

/// The delivery task: delivers what is due, records each attempt, sleeps on the runtime
/// clock until the next attempt is due or a commit adds a notification. Holds only a weak
/// reference between rounds.
pub(crate) async fn run_outbox(weak: std::sync::Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let changed = shared.outbox_changed.clone();
        let woken = changed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now_ms = shared.clock.now_ms();
        let (due, next_ms) = match shared.journal.outbox_due(now_ms, DELIVERIES_AT_ONCE).await {
            Ok(found) => found,
            Err(err) => {
                tracing::error!(%err, "reading the notification outbox failed; trying again in a second");
                drop(shared);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !due.is_empty() {
            let notifier = shared.notifier.clone();
            let attempts = due
                .into_iter()
                .map(|row| deliver(&shared, notifier.clone(), row));
            futures::future::join_all(attempts).await;
            // Something may be due already; look again before sleeping.
            continue;
        }
        let sleep = next_ms.map(|at| shared.clock.sleep_until(at));
        drop(shared);
        match sleep {
            Some(sleep) => {
                tokio::select! {
                    () = sleep => {}
                    () = &mut woken => {}
                }
            }
            None => woken.await,
        }
    }
}

/// One attempt at one notification, recorded with where its delivery stands after it.
async fn deliver(shared: &Shared, notifier: Arc<dyn Notifier>, row: OutboxRow) {
    let notification = &row.notification;
    let outcome = match tokio::time::timeout(DELIVERY_TIMEOUT, notifier.notify(notification)).await
    {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(err),
        Err(_) => Some(format!(
            "the notifier took longer than {DELIVERY_TIMEOUT:?}"
        )),
    };
    let at_ms = shared.clock.now_ms();
    let attempts = row.attempts.len() + 1;
    let delivery = match (&outcome, retry_after(attempts)) {
        (None, _) => Delivery::Delivered,
        (Some(_), Some(after_ms)) => Delivery::Pending {
            next_attempt_ms: at_ms.saturating_add(after_ms),
        },
        (Some(_), None) => Delivery::GaveUp,
    };
    if let Some(err) = &outcome {
        tracing::warn!(id = notification.id, topic = notification.topic.name(), attempt = attempts, %err, ?delivery, "delivering a notification failed");
    }
    let attempt = DeliveryAttempt {
        at_ms,
        error: outcome,
    };
    if let Err(err) = shared
        .journal
        .outbox_attempted(notification.id, attempt, delivery)
        .await
    {
        // Not recorded: the notification stays due and is delivered again.
        tracing::error!(id = notification.id, %err, "recording a delivery attempt failed");
    }
}
