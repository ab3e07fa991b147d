//! The typed workflow context.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_runtime::codec::{decode, encode};
use cairn_runtime::event::{AttrValue, ChildOutcome};
use cairn_runtime::Cancelled;
use cairn_runtime::{
    ActivityFailure, ActivityOptions, Error, Payload as Bytes, RetryPolicy, WorkflowContext,
};
use futures::future::BoxFuture;

use crate::{Activity, ChildFailure, Payload, Workflow};

/// The workflow's handle to everything durable. Every activity, clock read, random
/// number and side effect goes through it, so replay can reproduce it.
///
/// Each call gets its step number when it is *made*, not when it is awaited, so
/// `futures::join!(ctx.activity(a, x), ctx.activity(b, y))` numbers `a` before `b` on
/// every run.
///
/// # Concurrent branches
/// A branch of a `join!` or `select!` may make several calls: the number of a call made
/// after awaiting another depends on when that one finished. The run hands outcomes to
/// the workflow in the order they are recorded, one whenever it can go no further, and
/// replay (a restart, an eviction, an audit) hands them back in that order too, so the
/// numbers come out the same; a human task's decision, which a person records whenever
/// they act, has its place where the run took it (docs/GUARANTEES.md, "Handed over in
/// the order ...").
///
/// # Dropping a step's future
/// A step the workflow drops after polling it (the branch that lost a `select!`, the
/// rest of a `try_join!` after an error) is recorded as abandoned: replay never runs it
/// again, lets it win or returns its value, and a signal it took goes back to the inbox.
/// A run dropped whole (eviction, a stop, shutdown, a crash) abandons nothing: a step
/// not recorded yet is taken again when replay reaches it, and an activity attempt in
/// flight runs again (activities run at least once).
#[derive(Clone, Debug)]
pub struct Ctx {
    raw: WorkflowContext,
}

pub(crate) fn decode_step<T: Payload>(
    raw: &WorkflowContext,
    step: u32,
    payload: &Bytes,
) -> Result<T, Error> {
    decode::<T>(raw.codec(), payload).map_err(|err| Error::PayloadDecode {
        instance: raw.instance_id().to_owned(),
        position: format!("step {step}"),
        type_name: std::any::type_name::<T>(),
        message: err.to_string(),
    })
}

pub(crate) fn encode_step<T: Payload>(
    raw: &WorkflowContext,
    step: u32,
    value: &T,
) -> Result<Bytes, Error> {
    encode(raw.codec(), value).map_err(|err| Error::PayloadEncode {
        instance: raw.instance_id().to_owned(),
        position: format!("step {step}"),
        message: err.to_string(),
    })
}

impl Ctx {
    #[doc(hidden)]
    pub fn __new(raw: WorkflowContext) -> Self {
        Self { raw }
    }

    /// The untyped context under this one.
    pub(crate) fn raw(&self) -> &WorkflowContext {
        &self.raw
    }

    /// The user id of this instance (`"order-1042"`).
    pub fn instance_id(&self) -> &str {
        self.raw.instance_id()
    }

    /// The workflow type's registered name.
    pub fn workflow_type(&self) -> &str {
        self.raw.workflow_type()
    }

    /// Whether the next durable call will be answered from history. Use it to keep logs
    /// quiet during replay; never to change what the workflow does.
    pub fn is_replaying(&self) -> bool {
        self.raw.is_replaying()
    }

    /// Calls activity `activity` with `input`. Await the returned call (after setting
    /// options on it if needed) to get the result. On a store that queues appends (the
    /// embedded one) a completed result may reach the workflow while its commit is on
    /// the way; the next durable call and the workflow's end wait for it, so nothing
    /// outside the workflow ever acts on a result that is not durable.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, RetryPolicy, WorkflowError};
    ///
    /// #[activity]
    /// async fn charge_card(ctx: ActivityCtx, cents: u64) -> Result<String, ActivityError> {
    ///     Ok(format!("charge-{}-{cents}", ctx.idempotency_key()))
    /// }
    ///
    /// #[workflow]
    /// async fn checkout(ctx: Ctx, cents: u64) -> Result<String, WorkflowError> {
    ///     let receipt = ctx
    ///         .activity(charge_card, cents)
    ///         .retry(RetryPolicy::default().max_attempts(3).non_retryable(["declined"]))
    ///         .start_to_close(Duration::from_secs(10))
    ///         .await?;
    ///     Ok(receipt)
    /// }
    /// ```
    pub fn activity<A: Activity>(&self, activity: A, input: A::Input) -> ActivityCall<A> {
        // The value only names the activity; its type carries everything.
        let _ = activity;
        let step = self.raw.next_step();
        let input = encode_step(&self.raw, step, &input);
        ActivityCall {
            ctx: self.clone(),
            step,
            input,
            options: A::options(),
            state: CallState::New,
            activity: PhantomData,
        }
    }

    /// The current time, recorded on first execution and replayed afterwards.
    ///
    /// # Cancel safety
    /// The step number is taken when `now` is called; see [dropping a step's
    /// future](Ctx#dropping-a-steps-future).
    pub fn now(&self) -> impl Future<Output = SystemTime> + Send + 'static {
        let raw = self.raw.clone();
        let value = self.side_effect("now", move || raw.clock_now_ms());
        async move { UNIX_EPOCH + Duration::from_millis(value.await) }
    }

    /// Marks a change to the workflow's code: returns `true` where the run should take
    /// the new path, `false` for instances whose history was recorded by the old code at
    /// this point. Keep the old branch until no instance started before the change is
    /// still running; see `docs/GUARANTEES.md` for the upgrade procedure.
    ///
    /// ```
    /// use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, WorkflowError};
    ///
    /// #[activity]
    /// async fn fraud_check(_ctx: ActivityCtx, amount: u64) -> Result<bool, ActivityError> { Ok(amount < 10_000) }
    /// #[activity]
    /// async fn approve(_ctx: ActivityCtx, amount: u64) -> Result<String, ActivityError> { Ok(format!("ok {amount}")) }
    ///
    /// #[workflow]
    /// async fn loan(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    ///     if ctx.patched("fraud-check-2026-11").await {
    ///         if !ctx.activity(fraud_check, amount).await? {
    ///             return Err(WorkflowError::business("fraud", "flagged"));
    ///         }
    ///     }
    ///     Ok(ctx.activity(approve, amount).await?)
    /// }
    /// ```
    pub fn patched(&self, patch_id: &str) -> impl Future<Output = bool> + Send + 'static {
        let raw = self.raw.clone();
        let plan = raw.decide_patch(patch_id);
        let patch_id = patch_id.to_owned();
        async move {
            match plan {
                Ok(cairn_runtime::PatchPlan::OldPath) => false,
                Ok(cairn_runtime::PatchPlan::Recorded) => true,
                Ok(cairn_runtime::PatchPlan::Record(step)) => {
                    raw.record_patch(step, &patch_id).await;
                    true
                }
                Err(err) => raw.abort(err).await,
            }
        }
    }

    /// Publishes searchable attributes of this instance (`customer`, `amount`, ...).
    /// They are recorded and indexed, so the host can list and filter instances by them
    /// (`ListFilter::attributes`) without replaying anything. Each name keeps its latest
    /// value.
    ///
    /// ```
    /// use cairn::{workflow, AttrValue, Ctx, WorkflowError};
    ///
    /// #[workflow]
    /// async fn claim(ctx: Ctx, customer: String) -> Result<(), WorkflowError> {
    ///     ctx.set_attributes([("customer", AttrValue::from(customer)), ("amount", AttrValue::Int(1200))]).await;
    ///     ctx.set_stage("assessment").await;
    ///     Ok(())
    /// }
    /// ```
    pub fn set_attributes<I, K>(&self, attributes: I) -> impl Future<Output = ()> + Send + 'static
    where
        I: IntoIterator<Item = (K, AttrValue)>,
        K: Into<String>,
    {
        let step = self.raw.next_step();
        let raw = self.raw.clone();
        let attributes: Vec<(String, AttrValue)> =
            attributes.into_iter().map(|(k, v)| (k.into(), v)).collect();
        async move { raw.set_attributes(step, attributes).await }
    }

    /// Publishes the instance's current stage (the attribute `"stage"`), for dashboards
    /// and queries: `"awaiting approval"`, `"shipping"`.
    pub fn set_stage(&self, stage: &str) -> impl Future<Output = ()> + Send + 'static {
        self.set_attributes([("stage", AttrValue::from(stage))])
    }

    /// Runs workflow `W` as a child instance with id `child_id` and waits for its
    /// result. The child is a full instance (own history, listed, queried, resumed after
    /// a crash); the parent records its start and its outcome. A cancellation of the
    /// parent while it waits is passed on to the child.
    ///
    /// ```
    /// use cairn::{workflow, ChildFailure, Ctx, WorkflowError};
    ///
    /// #[workflow]
    /// async fn department_review(ctx: Ctx, department: String) -> Result<bool, WorkflowError> {
    ///     Ok(department != "fire-safety")
    /// }
    ///
    /// #[workflow]
    /// async fn permit(ctx: Ctx, permit_id: String) -> Result<bool, WorkflowError> {
    ///     let zoning = ctx.child(department_review, &format!("{permit_id}/zoning"), "zoning".into());
    ///     let fire = ctx.child(department_review, &format!("{permit_id}/fire"), "fire-safety".into());
    ///     let (zoning, fire) = futures::join!(zoning, fire);
    ///     Ok(zoning? && fire?)
    /// }
    /// ```
    ///
    /// # Cancel safety
    /// The step number is taken when `child` is called; dropping the future stops
    /// waiting, and the child keeps running.
    pub fn child<W: Workflow>(
        &self,
        workflow: W,
        child_id: &str,
        input: W::Input,
    ) -> impl Future<Output = Result<W::Output, ChildFailure<W::Error>>> + Send + 'static {
        let _ = workflow;
        let step = self.raw.next_step();
        let raw = self.raw.clone();
        let child_id = child_id.to_owned();
        let input = encode_step(&raw, step, &input);
        async move {
            let input = match input {
                Ok(input) => input,
                Err(err) => return raw.abort(err).await,
            };
            let outcome = raw.child(step, W::NAME, &child_id, input).await?;
            let decoded = match outcome {
                ChildOutcome::Completed(output) => {
                    decode_step::<W::Output>(&raw, step, &output).map(Ok)
                }
                ChildOutcome::Failed(error) => decode_step::<W::Error>(&raw, step, &error)
                    .map(|e| Err(ChildFailure::Failed(e))),
                ChildOutcome::Terminated(reason) => {
                    Ok(Err(ChildFailure::Terminated { child_id, reason }))
                }
            };
            match decoded {
                Ok(result) => result,
                Err(err) => raw.abort(err).await,
            }
        }
    }

    /// Ends this run and starts the instance again, under the same id, with `input` and
    /// a fresh history: how a workflow that loops for months keeps its history short.
    /// Never returns; `rt.handle(..).result()` waits for the run that finally returns.
    ///
    /// ```
    /// use cairn::{workflow, Ctx, WorkflowError};
    ///
    /// #[workflow]
    /// async fn meter(ctx: Ctx, readings: u64) -> Result<u64, WorkflowError> {
    ///     let reading: u64 = ctx.signal("reading").await?;
    ///     let total = readings + reading;
    ///     if total < 1_000 {
    ///         return ctx.continue_as_new(total).await; // carry the state, drop the history
    ///     }
    ///     Ok(total)
    /// }
    /// ```
    pub fn continue_as_new<I: Payload, T>(
        &self,
        input: I,
    ) -> impl Future<Output = T> + Send + 'static {
        let raw = self.raw.clone();
        let encoded = encode(raw.codec(), &input).map_err(|err| Error::PayloadEncode {
            instance: raw.instance_id().to_owned(),
            position: "continue_as_new input".into(),
            message: err.to_string(),
        });
        async move {
            match encoded {
                Ok(input) => raw.continue_as_new(input).await,
                Err(err) => raw.abort(err).await,
            }
        }
    }

    /// Sleeps for `duration` on a durable timer: the deadline is recorded, so the
    /// workflow wakes at the right time even if the host restarts meanwhile (at once, if
    /// the deadline passed while it was down).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cairn::{workflow, Ctx, WorkflowError};
    ///
    /// #[workflow]
    /// async fn reminder(ctx: Ctx, customer: String) -> Result<String, WorkflowError> {
    ///     ctx.sleep(Duration::from_secs(3 * 24 * 3600)).await?; // three days
    ///     Ok(format!("remind {customer}"))
    /// }
    /// ```
    ///
    /// # Cancel safety
    /// The step number is taken when `sleep` is called. Dropping the future stops waiting.
    pub fn sleep(
        &self,
        duration: Duration,
    ) -> impl Future<Output = Result<(), Cancelled>> + Send + 'static {
        let fire_at = self
            .raw
            .clock_now_ms()
            .saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        self.sleep_until_ms(fire_at)
    }

    /// Sleeps until `deadline` on a durable timer (see [`Ctx::sleep`]).
    pub fn sleep_until(
        &self,
        deadline: SystemTime,
    ) -> impl Future<Output = Result<(), Cancelled>> + Send + 'static {
        self.sleep_until_ms(cairn_runtime::clock::unix_ms(deadline))
    }

    fn sleep_until_ms(
        &self,
        fire_at_ms: u64,
    ) -> impl Future<Output = Result<(), Cancelled>> + Send + 'static {
        let step = self.raw.next_step();
        let raw = self.raw.clone();
        async move { raw.sleep_until(step, fire_at_ms).await }
    }

    /// Waits for the next signal called `name` and returns its body. A signal sent before
    /// the wait is buffered, never lost; several signals of one name arrive in the order
    /// they were sent, each to exactly one wait.
    ///
    /// A wait may be raced against other steps (`select!` over `ctx` calls, say an
    /// approval against a rejection): the branch that wins is recorded, and a signal the
    /// losing wait had already taken goes back to the inbox for the next wait. For a wait
    /// with a deadline, [`Ctx::signal_or_timeout`] says it in one call.
    ///
    /// # Cancel safety
    /// Dropping the future inside a running workflow (a lost `select!`) records the step
    /// as abandoned and puts back a signal it took; replay never lets it win.
    pub fn signal<T: Payload>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<T, Cancelled>> + Send + 'static {
        let wait = self.wait_signal::<T>(name, None);
        async move {
            match wait.await? {
                Some(value) => Ok(value),
                // A wait without a deadline only returns with a signal.
                None => std::future::pending().await,
            }
        }
    }

    /// Waits for the next signal called `name` for at most `timeout`: `Some(body)` if it
    /// came first, `None` if the time ran out. Which one won is recorded, so replay takes
    /// the same branch; the deadline is recorded too and survives restarts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cairn::{workflow, Ctx, WorkflowError};
    ///
    /// #[workflow]
    /// async fn approval(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    ///     let decision: Option<bool> = ctx.signal_or_timeout("approved", Duration::from_secs(48 * 3600)).await?;
    ///     Ok(match decision {
    ///         Some(true) => format!("{amount} approved"),
    ///         Some(false) => format!("{amount} rejected"),
    ///         None => format!("{amount} escalated"),
    ///     })
    /// }
    /// ```
    pub fn signal_or_timeout<T: Payload>(
        &self,
        name: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<T>, Cancelled>> + Send + 'static {
        let deadline = self
            .raw
            .clock_now_ms()
            .saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self.wait_signal::<T>(name, Some(deadline))
    }

    fn wait_signal<T: Payload>(
        &self,
        name: &str,
        deadline_ms: Option<u64>,
    ) -> impl Future<Output = Result<Option<T>, Cancelled>> + Send + 'static {
        let step = self.raw.next_step();
        let raw = self.raw.clone();
        let name = name.to_owned();
        async move {
            let Some(payload) = raw.wait_signal(step, &name, deadline_ms).await? else {
                return Ok(None);
            };
            match decode_step::<T>(&raw, step, &payload) {
                Ok(value) => Ok(Some(value)),
                Err(err) => raw.abort(err).await,
            }
        }
    }

    /// Asks the host to notify whoever listens (its `Notifier`: a log, a webhook) of
    /// `topic` with `body`. Recorded as a step and delivered through the durable outbox,
    /// at least once, with retries; the workflow does not wait for the delivery.
    ///
    /// ```
    /// use cairn::{workflow, Ctx, WorkflowError};
    ///
    /// #[workflow]
    /// async fn reject(ctx: Ctx, applicant: String) -> Result<(), WorkflowError> {
    ///     ctx.notify("loan.rejected", &serde_json::json!({ "applicant": applicant })).await;
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Cancel safety
    /// The step number is taken when `notify` is called; see [dropping a step's
    /// future](Ctx#dropping-a-steps-future).
    pub fn notify<T: Payload>(
        &self,
        topic: &str,
        body: &T,
    ) -> impl Future<Output = ()> + Send + 'static {
        let step = self.raw.next_step();
        let raw = self.raw.clone();
        let topic = topic.to_owned();
        let body = encode_step(&raw, step, body);
        async move {
            match body {
                Ok(body) => raw.notify(step, &topic, body).await,
                Err(err) => raw.abort(err).await,
            }
        }
    }

    /// A random `u64`, recorded on first execution and replayed afterwards.
    pub fn random(&self) -> impl Future<Output = u64> + Send + 'static {
        self.try_side_effect("random", rand_u64)
    }

    /// A random (v4) UUID, recorded on first execution and replayed afterwards.
    pub fn uuid(&self) -> impl Future<Output = uuid::Uuid> + Send + 'static {
        self.try_side_effect("uuid", || {
            let bits = u128::from(rand_u64()?) << 64 | u128::from(rand_u64()?);
            Ok(uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid())
        })
    }

    /// Decides with `table` for `input` and records the decision as a step: the rules that
    /// matched, the table's version hash and the outputs (or why it could not decide), so
    /// the history shows why. Replay returns the recorded decision, also after the table
    /// has changed; a new instance decides with the table as it is.
    ///
    /// ```no_run
    /// # use std::sync::LazyLock;
    /// # use cairn::decision::{ColumnType, DecisionTable, HitPolicy};
    /// # use cairn::{workflow, Ctx, WorkflowError};
    /// static RISK: LazyLock<DecisionTable> = LazyLock::new(|| {
    ///     DecisionTable::from_csv("risk", HitPolicy::First,
    ///         "rule,in:score:number,out:band:text\npoor,< 600,high\ndefault,,low\n")
    ///         .expect("the risk table checks")
    /// });
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Applicant { score: u32 }
    ///
    /// #[workflow]
    /// async fn assess(ctx: Ctx, applicant: Applicant) -> Result<String, WorkflowError> {
    ///     let decision = ctx.decide(&RISK, &applicant).await
    ///         .map_err(|err| WorkflowError::business("no_decision", err.to_string()))?;
    ///     Ok(decision.outputs["band"].as_str().unwrap_or("unknown").to_owned())
    /// }
    /// ```
    ///
    /// # Cancel safety
    /// See [dropping a step's future](Ctx#dropping-a-steps-future): a decision not
    /// recorded when the whole run is dropped is made again on replay.
    pub fn decide<I: serde::Serialize + ?Sized>(
        &self,
        table: &crate::decision::DecisionTable,
        input: &I,
    ) -> impl Future<Output = Result<crate::decision::Decision, crate::decision::DecisionError>>
           + Send
           + 'static {
        let label = format!("decision:{}", table.name());
        let table = table.clone();
        // Serialized now: the closure below runs only if the step is not recorded yet.
        let input =
            serde_json::to_value(input).map_err(|err| crate::decision::DecisionError::Input {
                table: table.name().to_owned(),
                message: err.to_string(),
            });
        self.try_side_effect(&label, move || {
            Ok(input.and_then(|input| table.decide(&input)))
        })
    }

    /// Runs `produce` once, records its value under `name`, and returns the recorded
    /// value on every replay. For small non-deterministic reads (a config flag, a
    /// hostname) that need no retries; use an activity for anything that can fail.
    pub fn side_effect<T, F>(
        &self,
        name: &str,
        produce: F,
    ) -> impl Future<Output = T> + Send + 'static
    where
        T: Payload,
        F: FnOnce() -> T + Send + 'static,
    {
        self.try_side_effect(name, move || Ok(produce()))
    }

    fn try_side_effect<T, F>(
        &self,
        name: &str,
        produce: F,
    ) -> impl Future<Output = T> + Send + 'static
    where
        T: Payload,
        F: FnOnce() -> Result<T, Error> + Send + 'static,
    {
        let step = self.raw.next_step();
        let raw = self.raw.clone();
        let name = name.to_owned();
        async move {
            let producer_raw = raw.clone();
            let payload = raw
                .recorded_value(step, &name, move || {
                    encode_step(&producer_raw, step, &produce()?)
                })
                .await;
            match decode_step::<T>(&raw, step, &payload) {
                Ok(value) => value,
                Err(err) => raw.abort(err).await,
            }
        }
    }
}

/// Randomness for `random`/`uuid`, from the operating system. If the OS source fails
/// (it does not on supported platforms) the workflow is parked rather than given a
/// predictable value.
fn rand_u64() -> Result<u64, Error> {
    getrandom::u64()
        .map_err(|err| Error::Environment(format!("the OS random source failed: {err}")))
}

/// A pending activity call. Set options, then `.await` it.
#[must_use = "an activity call does nothing until awaited"]
pub struct ActivityCall<A: Activity> {
    ctx: Ctx,
    step: u32,
    input: Result<Bytes, Error>,
    options: ActivityOptions,
    state: CallState<A>,
    activity: PhantomData<fn() -> A>,
}

/// Where an [`ActivityCall`] is.
enum CallState<A: Activity> {
    /// Not polled yet.
    New,
    /// The step, as the runtime runs it (it decodes the output too): the boxed future is
    /// the runtime's own and nothing wraps it, since every wrapping layer would add its
    /// captures to an allocation made per step.
    Running(BoxFuture<'static, Result<A::Output, ActivityFailure>>),
    /// Done, or stopped: the run is being parked (the stop is set), and the call stays
    /// pending until the driver drops the workflow.
    Over,
}

impl<A: Activity> ActivityCall<A> {
    /// Replaces all options of this call.
    pub fn options(mut self, options: ActivityOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the retry policy of this call.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = policy;
        self
    }

    /// Bounds each attempt to `timeout`, counted from the attempt's start (once the
    /// previous step is durable). An attempt over it fails with the retryable kind
    /// `timeout`, also if it blocks its thread (then up to 20 ms late).
    pub fn start_to_close(mut self, timeout: Duration) -> Self {
        self.options.start_to_close = timeout;
        self
    }

    /// Adds error kinds that are never retried.
    pub fn non_retryable<I, S>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options.retry = self.options.retry.non_retryable(kinds);
        self
    }
}

/// Polling an `ActivityCall` runs the step: it is a plain `Future`, so several calls
/// can be joined (`futures::join!`) or raced.
///
/// # Cancel safety
/// Dropped by the workflow once it has started (the branch that lost a `select!`, the
/// rest of a `try_join!` after an error), the step is recorded as abandoned: the attempt
/// in flight is given up, and replay never runs it again or lets it win. Dropped with the
/// whole run (eviction, a crash, shutdown), nothing is abandoned: the attempt in flight
/// runs again when the instance is replayed (activities run at least once; use the
/// attempt's idempotency key).
impl<A: Activity> Future for ActivityCall<A> {
    type Output = Result<A::Output, ActivityFailure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if matches!(this.state, CallState::New) {
            this.state = this.start();
        }
        let CallState::Running(running) = &mut this.state else {
            return Poll::Pending;
        };
        let output = std::task::ready!(running.as_mut().poll(cx));
        this.state = CallState::Over;
        Poll::Ready(output)
    }
}

impl<A: Activity> ActivityCall<A> {
    fn start(&mut self) -> CallState<A> {
        let raw = &self.ctx.raw;
        let input = match std::mem::replace(&mut self.input, Err(Error::ShutDown)) {
            Ok(input) => input,
            // The stop is set by this call (this is the step's first poll); the call
            // only parks the step.
            Err(err) => {
                let _parked = raw.abort::<()>(err);
                return CallState::Over;
            }
        };
        let options = std::mem::take(&mut self.options);
        let codec_raw = raw.clone();
        let step = self.step;
        let attempt = move |actx, input: &Bytes| {
            let decoded = decode::<A::Input>(codec_raw.codec(), input);
            let encoder = codec_raw.clone();
            async move {
                let input = decoded.map_err(|err| {
                    cairn_runtime::ActivityError::terminal("input_decode", err.to_string())
                })?;
                let output = A::run(actx, input).await?;
                encode(encoder.codec(), &output).map_err(|err| {
                    cairn_runtime::ActivityError::terminal("output_encode", err.to_string())
                })
            }
        };
        let decode = move |raw: &WorkflowContext, output: &Bytes| {
            decode_step::<A::Output>(raw, step, output)
        };
        CallState::Running(Box::pin(raw.clone().activity(
            step,
            A::NAME,
            input,
            options,
            attempt,
            decode,
        )))
    }
}
