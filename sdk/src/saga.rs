//! Compensation (sagas): undo steps registered as a process goes forward, run in reverse
//! when it cannot finish.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::{Activity, ActivityFailure, ActivityOptions, Ctx};

type Undo = Box<dyn FnOnce(&Ctx) -> BoxFuture<'static, Result<(), ActivityFailure>> + Send>;

/// The compensations of a business process, registered as its steps complete and run
/// in reverse order when it cannot finish (a step failed, the instance was cancelled).
///
/// Each compensation is an ordinary activity step: durable, retried by its own policy,
/// recorded once it is done. A host that stops in the middle of compensating resumes the
/// remaining compensations from the history; those already recorded are not run again.
/// A compensation that fails after its retries does not stop the others, and is
/// reported, never swallowed: [`Saga::compensate`] returns [`CompensationFailed`], which
/// becomes the workflow's error ([`WorkflowError::Compensation`](crate::WorkflowError)).
///
/// ```
/// use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, WorkflowError};
///
/// #[activity]
/// async fn reserve_stock(_ctx: ActivityCtx, order: String) -> Result<String, ActivityError> {
///     Ok(format!("rsv-{order}"))
/// }
/// #[activity]
/// async fn release_stock(_ctx: ActivityCtx, reservation: String) -> Result<(), ActivityError> {
///     Ok(())
/// }
/// #[activity]
/// async fn ship(_ctx: ActivityCtx, order: String) -> Result<(), ActivityError> {
///     Err(ActivityError::terminal("no_carrier", "no carrier serves the address"))
/// }
///
/// #[workflow]
/// async fn fulfil(ctx: Ctx, order: String) -> Result<(), WorkflowError> {
///     let mut saga = ctx.saga();
///     let reservation = ctx.activity(reserve_stock, order.clone()).await?;
///     saga.on_failure(release_stock, reservation);
///     if let Err(failed) = ctx.activity(ship, order).await {
///         saga.compensate().await?;
///         return Err(failed.into());
///     }
///     Ok(())
/// }
/// ```
#[must_use = "a saga does nothing unless `compensate` is called on failure"]
pub struct Saga {
    ctx: Ctx,
    undo: Vec<(&'static str, Undo)>,
}

impl std::fmt::Debug for Saga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saga")
            .field(
                "compensations",
                &self.undo.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// One compensation that failed after its retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationFailure {
    /// The compensating activity.
    pub activity: String,
    /// How it failed.
    pub failure: ActivityFailure,
}

/// Compensations that failed after their retries; the others ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{} of {total} compensation(s) failed: {}", failed.len(), failed.iter().map(|f| format!("{} ({})", f.activity, f.failure)).collect::<Vec<_>>().join("; "))]
pub struct CompensationFailed {
    /// How many compensations were run.
    pub total: usize,
    /// The ones that failed, in the order they ran.
    pub failed: Vec<CompensationFailure>,
}

impl Ctx {
    /// A new, empty [`Saga`] for this run.
    pub fn saga(&self) -> Saga {
        Saga {
            ctx: self.clone(),
            undo: Vec::new(),
        }
    }
}

impl Saga {
    /// Registers `activity(input)` as the compensation of the step just completed, with
    /// the activity's default options.
    pub fn on_failure<A: Activity>(&mut self, activity: A, input: A::Input) {
        self.on_failure_with(activity, input, A::options());
    }

    /// As [`Saga::on_failure`], with `options` (retries, start-to-close) for the
    /// compensation.
    pub fn on_failure_with<A: Activity>(
        &mut self,
        activity: A,
        input: A::Input,
        options: ActivityOptions,
    ) {
        // The call is made when it runs: a step number is taken then, not now, so
        // registering is not a step and replay numbers the same steps.
        let undo: Undo = Box::new(move |ctx: &Ctx| {
            let call = ctx.activity(activity, input).options(options);
            Box::pin(async move { call.await.map(drop) })
        });
        self.undo.push((A::NAME, undo));
    }

    /// How many compensations are registered.
    pub fn len(&self) -> usize {
        self.undo.len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.undo.is_empty()
    }

    /// Runs the registered compensations, last registered first, one after the other,
    /// each a durable activity step with its own retries. All run, whatever fails.
    ///
    /// # Errors
    /// [`CompensationFailed`] naming every compensation that failed after its retries.
    ///
    /// # Cancel safety
    /// Dropping the future stops compensating; the compensations recorded so far are in
    /// the history, and a replay runs the rest.
    pub async fn compensate(self) -> Result<(), CompensationFailed> {
        let Saga { ctx, undo } = self;
        let total = undo.len();
        let mut failed = Vec::new();
        for (activity, run) in undo.into_iter().rev() {
            if let Err(failure) = run(&ctx).await {
                failed.push(CompensationFailure {
                    activity: activity.to_owned(),
                    failure,
                });
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(CompensationFailed { total, failed })
        }
    }
}
