//! Polling one run of a workflow: the factory that makes its future, and the loop that
//! polls it until it returns or a step stops it. Shared by the engine's drivers and the
//! offline replayer, below both.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use futures::future::BoxFuture;

use crate::codec::Payload;
use crate::context::{EndingGuard, Stop, WorkflowContext};
use crate::error::{Error, Result};
use crate::port::Outcome;
use crate::replay::History;
use crate::sync::AtomicBool;

/// How a workflow function ended, as seen by the engine.
#[derive(Debug)]
pub enum WorkflowResult {
    /// It returned `Ok`; the encoded output.
    Completed(Payload),
    /// It returned `Err`; the encoded error.
    Failed(Payload),
    /// It cannot go on (its input does not decode, its output does not encode).
    Fatal(Error),
}

/// Creates the future of one run of a workflow type from its context and input.
pub type WorkflowFactory =
    Arc<dyn Fn(WorkflowContext, Payload) -> BoxFuture<'static, WorkflowResult> + Send + Sync>;

/// The registered factory of `history`'s workflow type.
pub(crate) fn factory_for(
    workflows: &HashMap<String, WorkflowFactory>,
    history: &History,
) -> Result<WorkflowFactory> {
    workflows
        .get(&history.workflow_type)
        .cloned()
        .ok_or_else(|| Error::UnknownWorkflowType {
            workflow_type: history.workflow_type.clone(),
            instance: Some(history.instance.clone()),
        })
}

/// Polls the workflow until it returns or a step stops it.
pub(crate) async fn drive(
    ctx: &WorkflowContext,
    mut future: BoxFuture<'static, WorkflowResult>,
) -> std::result::Result<WorkflowResult, Stop> {
    // Dropped before `future` (locals drop in reverse order), however this ends: steps
    // dropped with the run are not steps the workflow abandoned.
    let _ending = EndingGuard(ctx);
    // The workflow is polled through this waker, which says whether anything woke it
    // during a poll: one that woke nothing left it stuck, and only then is the next
    // outcome handed over (`WorkflowContext::unstick`), live as in a replay.
    let waker = Arc::new(PollWaker::default());
    // Made once: the workflow's futures keep clones of it, and `will_wake` then spares
    // them a new clone at every poll.
    let watching = futures::task::waker(waker.clone());
    std::future::poll_fn(|cx| {
        // Read before the poll: a signal or cancellation delivered from here on must
        // stop an eviction, because this poll may not have seen it.
        ctx.note_poll(cx.waker());
        waker.watch(cx.waker());
        let mut rounds = 0;
        let polled = loop {
            // Handing back a rebuilt run's recorded outcomes, which needs no wait.
            let replaying = ctx.releasing();
            waker.begin();
            // Unconstrained, live too: a tokio resource out of its task's budget defers
            // its wake-up until after the poll, which would look like a stuck workflow,
            // and an outcome would be handed over where a replay (never out of budget)
            // lets the deferred branch go on first.
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                Pin::new(&mut tokio::task::coop::unconstrained(&mut future))
                    .poll(&mut std::task::Context::from_waker(&watching))
            }));
            let polled = match polled {
                Ok(polled) => polled,
                // The future is not polled again after a panic, so its state does not matter.
                Err(panic) => {
                    // A result the workflow got before it panicked is a step it took.
                    ctx.flush_held(None);
                    return Poll::Ready(Err(Stop::Fatal(Error::WorkflowPanicked {
                        instance: ctx.instance_id().to_owned(),
                        message: crate::error::panic_message(&panic),
                    })));
                }
            };
            // A step that stops the instance does so inside this poll, so checking right
            // after it catches every stop before the workflow can act on anything else.
            if let Some(stop) = ctx.take_stop() {
                // A result held in this poll was taken before whatever stopped the run:
                // it is recorded, as it would have been had the step waited for its
                // commit.
                ctx.flush_held(None);
                return Poll::Ready(Err(stop));
            }
            if polled.is_ready() {
                break polled;
            }
            if waker.woken() {
                // Live, the worker polls again (`finish` wakes it), so its other tasks
                // get their turn. Replaying, it can go further with what it has been
                // handed.
                if !replaying {
                    break polled;
                }
            } else if !ctx.unstick(cx) {
                // Stuck, and nothing to hand over yet.
                break polled;
            }
            rounds += 1;
            if rounds >= ROUNDS_PER_POLL {
                // A long history: let the worker serve other tasks, and come back.
                cx.waker().wake_by_ref();
                break polled;
            }
        };
        waker.finish();
        if polled.is_pending() {
            // An activity result held in this poll goes to the store now (see
            // `WorkflowContext::hold_result`); only a run that returned takes it
            // with its end.
            ctx.flush_held(Some(cx.waker()));
            if ctx.poll_done() {
                cx.waker().wake_by_ref();
            }
        }
        polled.map(Ok)
    })
    .await
}

/// How many times one poll of the driver polls the workflow, handing it one outcome
/// each time, before it yields to the other tasks of its worker.
const ROUNDS_PER_POLL: u32 = 1024;

/// The waker the workflow is polled with: notes whether a wake-up came during a poll,
/// and passes it on to the driver's own waker, except while the driver is polling,
/// which then polls again itself (a hand-over wakes the step it hands to: passed on,
/// every hand-over would make the worker poll the driver once more for nothing).
#[derive(Default)]
struct PollWaker {
    woken: AtomicBool,
    polling: AtomicBool,
    driver: DriverWaker,
}

/// Where the driver's waker is kept: `futures`' `AtomicWaker`, which is made for this;
/// in the loom models, a loom mutex, so that they check the hand-off around it (and
/// trust `futures`, which tests its own).
#[cfg(not(cairn_loom))]
type DriverWaker = futures::task::AtomicWaker;
#[cfg(cairn_loom)]
#[derive(Default)]
struct DriverWaker(crate::sync::Mutex<Option<std::task::Waker>>);

#[cfg(cairn_loom)]
impl DriverWaker {
    fn register(&self, waker: &std::task::Waker) {
        *crate::sync::lock(&self.0) = Some(waker.clone());
    }

    fn wake(&self) {
        let waker = crate::sync::lock(&self.0).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl PollWaker {
    /// Starts a poll of the driver by `driver`: wake-ups are held back until `finish`.
    fn watch(&self, driver: &std::task::Waker) {
        self.driver.register(driver);
        self.polling.store(true, Ordering::SeqCst);
    }

    /// A poll of the workflow begins: forgets earlier wake-ups, which it covers.
    fn begin(&self) {
        self.woken.store(false, Ordering::SeqCst);
    }

    fn woken(&self) -> bool {
        self.woken.load(Ordering::SeqCst)
    }

    /// The driver's poll ends: a wake-up held back since the last poll of the
    /// workflow wakes the driver now, and later ones go straight to it.
    fn finish(&self) {
        self.polling.store(false, Ordering::SeqCst);
        if self.woken() {
            self.wake_driver();
        }
    }

    fn wake_driver(&self) {
        self.driver.wake();
    }
}

impl futures::task::ArcWake for PollWaker {
    fn wake_by_ref(this: &Arc<Self>) {
        // Stored before `polling` is read, and `finish` clears `polling` before it reads
        // this: one of the two sees the other, so no wake-up is lost between them.
        this.woken.store(true, Ordering::SeqCst);
        if !this.polling.load(Ordering::SeqCst) {
            this.wake_driver();
        }
    }
}

pub(crate) fn finished_outcome(ctx: &WorkflowContext, result: WorkflowResult) -> Result<Outcome> {
    ctx.history().check_finished(ctx.last_requested_step())?;
    match result {
        WorkflowResult::Completed(p) => Ok(Outcome::Completed(p)),
        WorkflowResult::Failed(p) => Ok(Outcome::Failed(p)),
        WorkflowResult::Fatal(err) => Err(err),
    }
}

#[cfg(all(test, cairn_loom))]
mod loom_tests {
    use super::*;
    use crate::sync::AtomicU64;

    /// The driver's waker: counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicU64);

    impl futures::task::ArcWake for Count {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wakes the workflow's waker from another thread, `early` while the driver polls
    /// (before its `finish`) or else after it; returns how often the driver was woken.
    fn wake_from_another_thread(early: bool) -> u64 {
        let poll_waker = Arc::new(PollWaker::default());
        let count = Arc::new(Count::default());
        let driver = futures::task::waker(count.clone());
        let workflow = futures::task::waker(poll_waker.clone());
        poll_waker.watch(&driver);
        poll_waker.begin();
        if !early {
            poll_waker.finish();
        }
        let other = loom::thread::spawn(move || workflow.wake_by_ref());
        if early {
            // The poll of the workflow ends here; the driver's poll with it.
            poll_waker.finish();
        }
        other.join().unwrap();
        count.0.load(Ordering::SeqCst)
    }

    /// A wake-up that comes while the driver polls (from an attempt's task, a commit) is
    /// held back from the driver; it must still reach it, whichever side runs first: the
    /// driver's `finish`, or the wake-up's check of `polling`.
    #[test]
    fn a_wake_up_held_back_during_the_drivers_poll_still_reaches_it() {
        loom::model(|| assert!(wake_from_another_thread(true) >= 1));
    }

    /// After the driver's poll, a wake-up goes straight to it.
    #[test]
    fn a_wake_up_after_the_drivers_poll_goes_straight_to_it() {
        loom::model(|| assert_eq!(wake_from_another_thread(false), 1));
    }
}
