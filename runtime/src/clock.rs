//! Time as the runtime sees it: what `ctx.now()` records and what durable timers wait
//! for. Production uses [`SystemClock`]; tests use [`VirtualClock`] to skip through a
//! 30-day timer in microseconds.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::sync::{lock, Arc, Mutex, Notify};

/// A source of wall-clock time and of waits on it. Everything that waits in a workflow
/// waits on it: durable timers, signal deadlines, retry backoff and activity
/// start-to-close timeouts (eviction idle time is host bookkeeping and uses tokio's).
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Resolves once `now_ms() >= at_ms`.
    fn sleep_until(&self, at_ms: u64) -> BoxFuture<'static, ()>;
    /// Marks work in progress that skipping time must wait for (an activity attempt),
    /// until the returned guard is dropped. A real clock ignores it; a virtual one does
    /// not skip to its next timer while any hold is alive, so a test that skips time
    /// never times out an attempt that is merely still running.
    fn hold(&self) -> ClockHold {
        ClockHold(None)
    }
}

/// Work in progress on a [`Clock`] (see [`Clock::hold`]); released when dropped.
#[must_use = "the hold ends when this is dropped"]
pub struct ClockHold(Option<Box<dyn FnOnce() + Send>>);

impl std::fmt::Debug for ClockHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClockHold").field(&self.0.is_some()).finish()
    }
}

impl Drop for ClockHold {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

/// The operating system's clock, waited on with tokio timers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// Milliseconds since the Unix epoch of `time` (0 before the epoch).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

/// Whole milliseconds of `duration`, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        unix_ms(SystemTime::now())
    }

    fn sleep_until(&self, at_ms: u64) -> BoxFuture<'static, ()> {
        let wait = Duration::from_millis(at_ms.saturating_sub(self.now_ms()));
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that follows another's time source: `local`'s ticks plus an offset someone
/// keeps measuring (a store shared by several hosts measures its own clock against the
/// host's at each heartbeat), so that every host records and waits on one time whatever
/// its own clock says.
pub struct CorrectedClock {
    local: std::sync::Arc<dyn Clock>,
    offset_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl std::fmt::Debug for CorrectedClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorrectedClock")
            .field("offset_ms", &self.offset())
            .finish_non_exhaustive()
    }
}

impl CorrectedClock {
    /// `local`'s time plus `offset_ms` (read at every use).
    pub fn new(
        local: std::sync::Arc<dyn Clock>,
        offset_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
    ) -> Self {
        Self { local, offset_ms }
    }

    fn offset(&self) -> i64 {
        self.offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn shift(at_ms: u64, by: i64) -> u64 {
        if by >= 0 {
            at_ms.saturating_add(by.unsigned_abs())
        } else {
            at_ms.saturating_sub(by.unsigned_abs())
        }
    }
}

impl Clock for CorrectedClock {
    fn now_ms(&self) -> u64 {
        Self::shift(self.local.now_ms(), self.offset())
    }

    fn sleep_until(&self, at_ms: u64) -> BoxFuture<'static, ()> {
        // The deadline in the local clock's time, as the offset stands now; a later
        // change of the offset moves deadlines set after it.
        self.local
            .sleep_until(Self::shift(at_ms, self.offset().saturating_neg()))
    }

    fn hold(&self) -> ClockHold {
        self.local.hold()
    }
}

#[derive(Debug)]
struct VirtualState {
    now_ms: u64,
    next_id: u64,
    /// Work in progress (see [`Clock::hold`]): no skipping while above 0.
    holds: u64,
    sleepers: BTreeMap<(u64, u64), oneshot::Sender<()>>,
}

#[derive(Debug)]
struct VirtualInner {
    state: Mutex<VirtualState>,
    /// Signalled whenever a sleeper registers, so a test can wait for the workflow to
    /// reach its timer instead of guessing with a real sleep.
    registered: Notify,
}

/// A clock that moves only when told to: time skipping for tests of long waits.
///
/// # Example
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use cairn_runtime::clock::{Clock, VirtualClock};
/// # tokio_test::block_on(async {
/// let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// let start = clock.now_ms();
/// let wake = clock.sleep_until(start + 30 * 24 * 3600 * 1000); // 30 days
/// assert_eq!(clock.skip_to_next_timer().await, start + 30 * 24 * 3600 * 1000);
/// wake.await; // fires at once: virtual time moved
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct VirtualClock {
    inner: Arc<VirtualInner>,
}

impl VirtualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            inner: Arc::new(VirtualInner {
                state: Mutex::new(VirtualState {
                    now_ms: unix_ms(start),
                    next_id: 0,
                    holds: 0,
                    sleepers: BTreeMap::new(),
                }),
                registered: Notify::new(),
            }),
        }
    }

    /// Moves time forward by `by`, waking every timer now due.
    pub fn advance(&self, by: Duration) {
        let to = {
            let state = lock(&self.inner.state);
            state.now_ms.saturating_add(millis(by))
        };
        self.advance_to_ms(to);
    }

    fn advance_to_ms(&self, to_ms: u64) {
        let due = {
            let mut state = lock(&self.inner.state);
            state.now_ms = state.now_ms.max(to_ms);
            let first_not_due = (state.now_ms.saturating_add(1), 0);
            let later = state.sleepers.split_off(&first_not_due);
            std::mem::replace(&mut state.sleepers, later)
        };
        for (_, sleeper) in due {
            // A sleeper whose future was dropped needs no wake-up.
            let _ = sleeper.send(());
        }
    }

    /// Deadline of the earliest pending timer, if any (ms since the Unix epoch).
    pub fn next_timer_ms(&self) -> Option<u64> {
        let mut state = lock(&self.inner.state);
        state.sleepers.retain(|_, sleeper| !sleeper.is_closed());
        state.sleepers.keys().next().map(|(at, _)| *at)
    }

    /// Waits until some timer is pending and no work holds the clock (no activity attempt
    /// is running, see [`Clock::hold`]), and returns the earliest deadline, without moving
    /// time. Lets a test wait for a workflow to reach its timer instead of guessing.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next_timer(&self) -> u64 {
        loop {
            let registered = self.inner.registered.notified();
            tokio::pin!(registered);
            registered.as_mut().enable();
            let held = lock(&self.inner.state).holds > 0;
            if let (false, Some(at)) = (held, self.next_timer_ms()) {
                return at;
            }
            registered.await;
        }
    }

    /// Waits until some timer is pending, then moves time to its deadline and fires it.
    /// Returns the new time (ms since the Unix epoch).
    ///
    /// # Cancel safety
    /// Cancel safe: time moves only when a timer is found.
    pub async fn skip_to_next_timer(&self) -> u64 {
        let at = self.next_timer().await;
        self.advance_to_ms(at);
        at
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> u64 {
        lock(&self.inner.state).now_ms
    }

    fn hold(&self) -> ClockHold {
        lock(&self.inner.state).holds += 1;
        let inner = self.inner.clone();
        ClockHold(Some(Box::new(move || {
            {
                let mut state = lock(&inner.state);
                state.holds = state.holds.saturating_sub(1);
            }
            // A test waiting to skip may go on now.
            inner.registered.notify_waiters();
        })))
    }

    fn sleep_until(&self, at_ms: u64) -> BoxFuture<'static, ()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = lock(&self.inner.state);
            if at_ms <= state.now_ms {
                return Box::pin(std::future::ready(()));
            }
            let id = state.next_id;
            state.next_id += 1;
            state.sleepers.insert((at_ms, id), tx);
        }
        self.inner.registered.notify_waiters();
        Box::pin(async move {
            // The sender is only dropped unsent if the clock itself is dropped; waking
            // then is as good as any other answer.
            let _ = rx.await;
        })
    }
}

#[cfg(all(test, not(cairn_loom)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timers_fire_in_deadline_order_only_when_time_reaches_them() {
        let clock = VirtualClock::new(UNIX_EPOCH);
        let late = clock.sleep_until(2_000);
        let early = clock.sleep_until(1_000);
        assert_eq!(clock.next_timer_ms(), Some(1_000));
        clock.advance(Duration::from_millis(999));
        assert_eq!(clock.next_timer_ms(), Some(1_000));
        assert_eq!(clock.skip_to_next_timer().await, 1_000);
        early.await;
        assert_eq!(clock.now_ms(), 1_000);
        drop(late);
        assert_eq!(
            clock.next_timer_ms(),
            None,
            "dropped sleepers are forgotten"
        );
        clock.sleep_until(500).await; // already due
    }
}
