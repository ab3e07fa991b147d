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
    std::future::poll_fn(|cx| {
        // Read before the poll: a signal or cancellation delivered from here on must
        // stop an eviction, because this poll may not have seen it.
        ctx.note_poll(cx.waker());
        let polled =
            match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut future).poll(cx))) {
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
            // A result held in this poll was taken before whatever stopped the run: it
            // is recorded, as it would have been had the step waited for its commit.
            ctx.flush_held(None);
            return Poll::Ready(Err(stop));
        }
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

pub(crate) fn finished_outcome(ctx: &WorkflowContext, result: WorkflowResult) -> Result<Outcome> {
    ctx.history().check_finished(ctx.last_requested_step())?;
    match result {
        WorkflowResult::Completed(p) => Ok(Outcome::Completed(p)),
        WorkflowResult::Failed(p) => Ok(Outcome::Failed(p)),
        WorkflowResult::Fatal(err) => Err(err),
    }
}
