//! The one place Cairn's hand-written synchronisation imports its primitives from.
//!
//! Under `--cfg cairn_loom` these are loom's model-checked types; otherwise std's (and
//! tokio's `Notify`). Keeping every import here is what lets the loom models cover the
//! real code.

#[cfg(cairn_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64};
#[cfg(cairn_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

#[cfg(not(cairn_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64};
#[cfg(not(cairn_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

#[cfg(cairn_loom)]
pub(crate) use loom_notify::{Notified, Notify};
#[cfg(not(cairn_loom))]
pub(crate) use tokio::sync::{futures::Notified, Notify};

/// Locks `mutex`, recovering the guard if a panicking thread poisoned it.
///
/// Every structure guarded in Cairn stays consistent between statements (a push or a
/// swap of a `Vec`), so a poisoned lock holds valid data and refusing it would only turn
/// one panic into many.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// tokio's `Notify`, rebuilt on loom's mutex for the models.
///
/// tokio's own `Notify` keeps its state in std atomics that loom cannot see, so loom would
/// neither explore the orders of a notification against the code around it nor know that a
/// waiter depends on it. This one keeps the same contract, for the parts Cairn uses, in a
/// loom `Mutex`: `notify_waiters` completes every `Notified` created before it (polled or
/// not) and stores nothing; `notify_one` completes the oldest enabled or polled `Notified`
/// that has no notification yet, or else leaves one permit for the next `Notified` to be
/// enabled or polled; a `Notified` dropped with an unconsumed `notify_one` passes it on.
/// The models therefore check Cairn's use of the notifications, and trust tokio (which
/// model-checks its own `Notify`) for the implementation.
#[cfg(cairn_loom)]
mod loom_notify {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use super::{lock, Mutex};

    #[derive(Debug, Default)]
    pub(crate) struct Notify {
        state: Mutex<State>,
    }

    #[derive(Debug, Default)]
    struct State {
        /// How many times `notify_waiters` was called.
        waiters_calls: u64,
        /// A `notify_one` that found nobody waiting.
        permit: bool,
        next_id: u64,
        /// Enabled or polled `Notified`s not completed yet, oldest first.
        waiting: Vec<Waiter>,
    }

    #[derive(Debug)]
    struct Waiter {
        id: u64,
        waker: Option<Waker>,
        /// Chosen by a `notify_one`.
        notified: bool,
    }

    impl State {
        /// `notify_one` with the lock held: the waker to wake once it is released.
        fn notify_one(&mut self) -> Option<Waker> {
            match self.waiting.iter_mut().find(|w| !w.notified) {
                Some(waiter) => {
                    waiter.notified = true;
                    waiter.waker.take()
                }
                None => {
                    self.permit = true;
                    None
                }
            }
        }
    }

    impl Notify {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        pub(crate) fn notified(&self) -> Notified<'_> {
            Notified {
                notify: self,
                waiters_calls: lock(&self.state).waiters_calls,
                id: None,
                done: false,
            }
        }

        pub(crate) fn notify_one(&self) {
            let waker = lock(&self.state).notify_one();
            if let Some(waker) = waker {
                waker.wake();
            }
        }

        pub(crate) fn notify_waiters(&self) {
            let wakers: Vec<Waker> = {
                let mut state = lock(&self.state);
                state.waiters_calls += 1;
                state.waiting.drain(..).filter_map(|w| w.waker).collect()
            };
            for waker in wakers {
                waker.wake();
            }
        }
    }

    pub(crate) struct Notified<'a> {
        notify: &'a Notify,
        /// `notify_waiters` calls when this was created.
        waiters_calls: u64,
        /// Set once enabled or polled: its place among the waiters.
        id: Option<u64>,
        done: bool,
    }

    impl Notified<'_> {
        /// Makes this future eligible for `notify_one` without polling it; `true` if it is
        /// already notified.
        pub(crate) fn enable(mut self: Pin<&mut Self>) -> bool {
            self.as_mut().poll_with(None).is_ready()
        }

        fn poll_with(self: Pin<&mut Self>, waker: Option<&Waker>) -> Poll<()> {
            let this = self.get_mut();
            if this.done {
                return Poll::Ready(());
            }
            let mut state = lock(&this.notify.state);
            let position = this
                .id
                .and_then(|id| state.waiting.iter().position(|w| w.id == id));
            let notified_one = position.is_some_and(|i| state.waiting[i].notified);
            if notified_one
                || state.waiters_calls != this.waiters_calls
                || (this.id.is_none() && std::mem::take(&mut state.permit))
            {
                if let Some(i) = position {
                    state.waiting.remove(i);
                }
                this.done = true;
                return Poll::Ready(());
            }
            match position {
                Some(i) => {
                    if let Some(waker) = waker {
                        state.waiting[i].waker = Some(waker.clone());
                    }
                }
                None => {
                    let id = state.next_id;
                    state.next_id += 1;
                    state.waiting.push(Waiter {
                        id,
                        waker: waker.cloned(),
                        notified: false,
                    });
                    this.id = Some(id);
                }
            }
            Poll::Pending
        }
    }

    impl Future for Notified<'_> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.poll_with(Some(cx.waker()))
        }
    }

    impl Drop for Notified<'_> {
        fn drop(&mut self) {
            let (Some(id), false) = (self.id, self.done) else {
                return;
            };
            let waker = {
                let mut state = lock(&self.notify.state);
                let Some(i) = state.waiting.iter().position(|w| w.id == id) else {
                    return;
                };
                // A `notify_one` this future was chosen for and never consumed goes to the
                // next waiter, as tokio's does.
                if state.waiting.remove(i).notified {
                    state.notify_one()
                } else {
                    None
                }
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// The parts of `Notify`'s contract Cairn relies on, checked on whichever `Notify` this
/// build uses: tokio's in the ordinary test run, the loom one (inside a loom model) under
/// `--cfg cairn_loom`. Passing in both is what lets the loom models stand in for tokio's.
#[cfg(test)]
mod notify_loom_tests {
    use std::future::Future;
    use std::task::{Context, Poll};

    use futures::FutureExt;

    use super::Notify;

    #[cfg(cairn_loom)]
    fn model(f: impl Fn() + Sync + Send + 'static) {
        loom::model(f);
    }

    #[cfg(not(cairn_loom))]
    fn model(f: impl Fn()) {
        f();
    }

    fn poll(future: std::pin::Pin<&mut impl Future<Output = ()>>) -> Poll<()> {
        future.poll(&mut Context::from_waker(futures::task::noop_waker_ref()))
    }

    /// `notify_waiters` completes every `Notified` created before it, polled or not, and
    /// nothing created after it: it stores no permit.
    #[test]
    fn notify_waiters_reaches_notified_created_before_it() {
        model(|| {
            let notify = Notify::new();
            let created = notify.notified();
            let mut polled = Box::pin(notify.notified());
            assert!(poll(polled.as_mut()).is_pending());
            notify.notify_waiters();
            let after = notify.notified();
            assert!(created.now_or_never().is_some());
            assert!(poll(polled.as_mut()).is_ready());
            assert!(after.now_or_never().is_none());
        });
    }

    /// `notify_one` with nobody enabled leaves one permit (one, however many calls),
    /// which `enable` consumes.
    #[test]
    fn notify_one_keeps_a_single_permit() {
        model(|| {
            let notify = Notify::new();
            notify.notify_one();
            notify.notify_one();
            let mut first = Box::pin(notify.notified());
            assert!(first.as_mut().enable());
            assert!(poll(first.as_mut()).is_ready());
            assert!(notify.notified().now_or_never().is_none());
        });
    }

    /// `notify_one` completes the `Notified` enabled first; one dropped without
    /// consuming it passes it on to the next.
    #[test]
    fn notify_one_goes_to_the_first_enabled_and_is_passed_on() {
        model(|| {
            let notify = Notify::new();
            let mut second = Box::pin(notify.notified());
            let mut first = Box::pin(notify.notified());
            assert!(!first.as_mut().enable());
            assert!(!second.as_mut().enable());
            notify.notify_one();
            assert!(poll(first.as_mut()).is_ready());
            assert!(poll(second.as_mut()).is_pending());
            notify.notify_one();
            drop(second);
            assert!(notify.notified().now_or_never().is_some());
        });
    }
}
