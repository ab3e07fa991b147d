//! Polling one run of a workflow: the factory that makes its future, and the loop that
//! polls it until it returns or a step stops it. Shared by the engine's drivers and the
//! offline replayer, below both.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures::future::BoxFuture;

use crate::codec::Payload;
use crate::context::{EndingGuard, Stop, WorkflowContext};
use crate::error::{Error, Result};
use crate::port::Outcome;
use crate::replay::History;

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
    // While recorded outcomes are handed back (a run rebuilt from its log), the workflow
    // is polled through this waker, which says whether anything woke it during a poll.
    let replay_waker = ctx.releasing().then(|| Arc::new(ReplayWaker::default()));
    std::future::poll_fn(|cx| {
        // Read before the poll: a signal or cancellation delivered from here on must
        // stop an eviction, because this poll may not have seen it.
        ctx.note_poll(cx.waker());
        let mut rounds = 0;
        let polled = loop {
            let replaying = replay_waker.as_ref().filter(|_| ctx.releasing());
            let watched = replaying.map(|waker| waker.watch(cx.waker()));
            let polled = match &watched {
                // Unconstrained: a tokio resource out of its task's budget defers its
                // wake-up until after the poll, which would look like a stuck workflow.
                Some(waker) => std::panic::catch_unwind(AssertUnwindSafe(|| {
                    Pin::new(&mut tokio::task::coop::unconstrained(&mut future))
                        .poll(&mut std::task::Context::from_waker(waker))
                })),
                None => {
                    std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut future).poll(cx)))
                }
            };
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
            let Some(replaying) = replaying else {
                break polled;
            };
            if polled.is_ready() {
                break polled;
            }
            rounds += 1;
            if rounds >= RELEASE_ROUNDS_PER_POLL {
                // A long history: let the worker serve other tasks, and come back.
                cx.waker().wake_by_ref();
                break polled;
            }
            // Woken during the poll: it can go further with what it has; else it is
            // stuck without the next recorded outcome, which is handed back now.
            if !replaying.woken() && !ctx.release_next() {
                break polled;
            }
        };
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

/// How many times one poll of the driver polls a run that is handed its recorded
/// outcomes back before it yields to the other tasks of its worker.
const RELEASE_ROUNDS_PER_POLL: u32 = 1024;

/// The waker a replaying run is polled with: it passes every wake-up on to the driver's
/// own, and notes whether one came during the poll.
#[derive(Default)]
struct ReplayWaker {
    woken: std::sync::atomic::AtomicBool,
    driver: std::sync::Mutex<Option<std::task::Waker>>,
}

impl ReplayWaker {
    /// Starts a poll for `driver`: forgets earlier wake-ups and returns the waker to
    /// poll with.
    fn watch(self: &Arc<Self>, driver: &std::task::Waker) -> std::task::Waker {
        {
            let mut slot = self.driver.lock().unwrap_or_else(|e| e.into_inner());
            if !slot.as_ref().is_some_and(|w| w.will_wake(driver)) {
                *slot = Some(driver.clone());
            }
        }
        self.woken.store(false, std::sync::atomic::Ordering::SeqCst);
        futures::task::waker(self.clone())
    }

    fn woken(&self) -> bool {
        self.woken.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl futures::task::ArcWake for ReplayWaker {
    fn wake_by_ref(this: &Arc<Self>) {
        this.woken.store(true, std::sync::atomic::Ordering::SeqCst);
        let driver = this
            .driver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(driver) = driver {
            driver.wake();
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
