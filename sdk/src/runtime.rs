//! The typed host API.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use cairn_runtime::codec::{decode, encode};
use cairn_runtime::event::EventRecord;
use cairn_runtime::journal::{Journal, StoredEvent};
use cairn_runtime::schedule::ScheduleRow;
use cairn_runtime::{
    Codec, Engine, EngineBuilder, Error, InstanceInfo, ListFilter, Outcome, ReplayVerdict,
    Replayer, WorkflowContext, WorkflowFactory, WorkflowResult,
};

use crate::signal::Declared;
use crate::{Ctx, Workflow};

/// Configures a [`Runtime`]: the workflow types it hosts and the payload codec.
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until opened"]
pub struct RuntimeBuilder {
    inner: EngineBuilder,
    error: Option<Error>,
    signals: Declared,
    updates: Declared,
    inputs: Declared,
}

fn factory<W: Workflow>() -> WorkflowFactory {
    Arc::new(|raw: WorkflowContext, input| {
        Box::pin(async move {
            let input: W::Input = match decode(raw.codec(), &input) {
                Ok(input) => input,
                Err(err) => {
                    return WorkflowResult::Fatal(Error::PayloadDecode {
                        instance: raw.instance_id().to_owned(),
                        position: "input".into(),
                        type_name: std::any::type_name::<W::Input>(),
                        message: err.to_string(),
                    })
                }
            };
            let result = W::run(Ctx::__new(raw.clone()), input).await;
            let encoded = match &result {
                Ok(output) => encode(raw.codec(), output).map(WorkflowResult::Completed),
                Err(error) => encode(raw.codec(), error).map(WorkflowResult::Failed),
            };
            encoded.unwrap_or_else(|err| {
                WorkflowResult::Fatal(Error::PayloadEncode {
                    instance: raw.instance_id().to_owned(),
                    position: "result".into(),
                    message: err.to_string(),
                })
            })
        })
    })
}

impl RuntimeBuilder {
    /// Declares `signal`, so that [`Runtime::send_json`] accepts it, checking a JSON body
    /// against its type before anything is recorded. Typed sends ([`Runtime::send`]) need
    /// no declaration.
    pub fn signal<T: crate::Payload>(mut self, signal: crate::Signal<T>) -> Self {
        let declared = if self.updates.contains(signal.name()) {
            Err(Error::InvalidArgument(format!(
                "`{}` is declared as an update and as a signal; give the signal its own name",
                signal.name()
            )))
        } else {
            self.signals.add(signal)
        };
        if let Err(err) = declared {
            self.error.get_or_insert(err);
        }
        self
    }

    /// Hosts workflow type `W` (pass the function marked `#[workflow]`).
    pub fn workflow<W: Workflow>(mut self, _workflow: W) -> Self {
        let registered = self
            .inner
            .register(W::NAME, factory::<W>())
            .map(|_| ())
            .and_then(|()| self.inputs.add_named::<W::Input>("workflow", W::NAME));
        if let Err(err) = registered {
            self.error.get_or_insert(err);
        }
        self
    }

    /// Declares `update`, so that it is accepted as JSON (over HTTP), its input checked
    /// against its type before anything is recorded. Typed calls ([`Runtime::update`])
    /// need no declaration. An update's name is a signal name: declaring a signal of the
    /// same name is refused when the runtime opens.
    pub fn update<I: crate::Payload, O: crate::Payload>(
        mut self,
        update: crate::Update<I, O>,
    ) -> Self {
        let declared = if self.signals.contains(update.name()) {
            Err(Error::InvalidArgument(format!(
                "`{}` is declared as a signal and as an update; give the update its own name",
                update.name()
            )))
        } else {
            self.updates.add_named::<I>("update", update.name())
        };
        if let Err(err) = declared {
            self.error.get_or_insert(err);
        }
        self
    }

    /// Uses `codec` for payloads instead of JSON.
    pub fn codec(mut self, codec: Arc<dyn Codec>) -> Self {
        self.inner.codec(codec);
        self
    }

    /// Evicts a run from memory once it has only waited durably for `idle` (`None`:
    /// never). Evicted instances cost a few hundred bytes each and are replayed when a
    /// timer, signal, cancellation or child wakes them. Default 2 s.
    pub fn eviction_idle(mut self, idle: Option<std::time::Duration>) -> Self {
        self.inner.eviction_idle(idle);
        self
    }

    /// Always-replay mode: every run is dropped after each durable step and rebuilt by
    /// replaying its history from the log, as if the host restarted between any two
    /// steps. Slow; use it in tests to prove a workflow gives the same result and the
    /// same history either way. Default off, unless `CAIRN_ALWAYS_REPLAY=1` is set in the
    /// environment (how Cairn's own suite runs a second time).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cairn::Error> {
    /// let rt = cairn::Runtime::builder()
    ///     .always_replay(true)
    ///     .open("orders-test.redb")
    ///     .await?;
    /// # let _ = rt; Ok(()) }
    /// ```
    pub fn always_replay(mut self, on: bool) -> Self {
        self.inner.always_replay(on);
        self
    }

    /// Uses `clock` for `ctx.now()` and durable timers; in tests, a
    /// [`crate::testing::VirtualClock`] skips through long waits.
    pub fn clock(mut self, clock: Arc<dyn cairn_runtime::clock::Clock>) -> Self {
        self.inner.clock(clock);
        self
    }

    /// Registers `value` for activities: `ctx.state::<T>()` returns it (a database pool,
    /// an HTTP client), one value per type. Activities reach the host's resources this
    /// way instead of through globals.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cairn::{activity, ActivityCtx, ActivityError, Runtime};
    ///
    /// struct Prices { per_unit: u64 }
    ///
    /// #[activity]
    /// async fn quote(ctx: ActivityCtx, units: u64) -> Result<u64, ActivityError> {
    ///     let prices = ctx.state::<Prices>()?;
    ///     Ok(prices.per_unit * units)
    /// }
    ///
    /// let builder = Runtime::builder().state(Prices { per_unit: 250 });
    /// ```
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.inner.state(std::sync::Arc::new(value));
        self
    }

    /// Decides what actors may do through [`Runtime::acting_as`]: start which workflow
    /// types, signal, cancel, terminate or read which instances, act on which tasks
    /// (`cairn::policy::Roles` for role-based rules). Default: everything is allowed.
    /// Calls made on the runtime itself are the hosting program's and are not checked.
    pub fn policy(mut self, policy: std::sync::Arc<dyn cairn_runtime::policy::Policy>) -> Self {
        self.inner.policy(policy);
        self
    }

    /// Delivers notifications (tasks created, overdue or escalated; instances failed or
    /// parked; `ctx.notify`) to `notifier`, at least once each, with retries and backoff,
    /// through a durable outbox. Default: [`LoggingNotifier`](crate::notify::LoggingNotifier),
    /// which writes them to the log. See [`Webhook`](crate::notify::Webhook).
    pub fn notifier(mut self, notifier: std::sync::Arc<dyn crate::notify::Notifier>) -> Self {
        self.inner.notifier(notifier);
        self
    }

    /// Opens (or creates) the database file at `path` and resumes every unfinished
    /// instance. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// A workflow type registered twice ([`Error::InvalidArgument`]); a file that is not a
    /// Cairn database, is damaged, is held by another process ([`Error::Open`]) or comes
    /// from a newer Cairn ([`Error::UnsupportedFormat`]).
    pub async fn open(self, path: impl AsRef<Path>) -> Result<Runtime, Error> {
        if let Some(err) = self.error {
            return Err(err);
        }
        Ok(Runtime {
            engine: self.inner.open(path).await?,
            signals: self.signals,
            updates: self.updates,
            inputs: self.inputs,
        })
    }

    /// A [`Replayer`] of the registered workflow types, for auditing recorded histories
    /// offline: no file is opened, no writer thread started, nothing recovered. Pair it
    /// with [`crate::audit::open_read_only`] to replay a file no host holds.
    ///
    /// ```no_run
    /// # use cairn::{workflow, Ctx, WorkflowError};
    /// # #[workflow] async fn fulfil_order(_ctx: Ctx, n: u32) -> Result<u32, WorkflowError> { Ok(n) }
    /// # async fn audit() -> Result<(), cairn::Error> {
    /// let replayer = cairn::Runtime::builder().workflow(fulfil_order).replayer()?;
    /// let store = cairn::audit::open_read_only("orders.redb")?;
    /// for checked in replayer.replay_journal(&store).await? {
    ///     println!("{} {:?}", checked.id, checked.verdict);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A workflow type registered twice ([`Error::InvalidArgument`]).
    pub fn replayer(self) -> Result<Replayer, Error> {
        if let Some(err) = self.error {
            return Err(err);
        }
        Ok(self.inner.replayer())
    }

    /// Opens the runtime on the PostgreSQL database at `url`
    /// (`postgres://user:password@host:port/database`) as one host among any number
    /// sharing it, with [`PostgresOptions::default`](crate::store::PostgresOptions)
    /// (feature `postgres`). Cairn's tables are created on first open and migrated when
    /// older; this host claims its share of the instances and resumes those unfinished.
    /// `?sslmode=verify-full&sslrootcert=/path/ca.pem` encrypts the connections and checks
    /// the server's certificate (`docs/DEPLOYMENT.md`).
    ///
    /// ```no_run
    /// # use cairn::{workflow, Ctx, WorkflowError};
    /// # #[workflow] async fn fulfil_order(_ctx: Ctx, n: u32) -> Result<u32, WorkflowError> { Ok(n) }
    /// # async fn host() -> Result<(), cairn::Error> {
    /// let rt = cairn::Runtime::builder()
    ///     .workflow(fulfil_order)
    ///     .open_postgres("postgres://cairn:secret@10.0.0.5/orders")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`RuntimeBuilder::open`]; [`Error::InvalidArgument`] for a string that is not a
    /// connection string or TLS settings that cannot be used (an unknown `sslmode`, an
    /// unreadable `sslrootcert`); [`Error::Open`] when the server cannot be reached,
    /// refuses the login or the connection's encryption, presents a certificate that does
    /// not check out, or holds a newer Cairn schema (nothing is changed then).
    #[cfg(feature = "postgres")]
    pub async fn open_postgres(self, url: &str) -> Result<Runtime, Error> {
        self.open_postgres_with(url, crate::store::PostgresOptions::default())
            .await
    }

    /// [`RuntimeBuilder::open_postgres`] with a pool size and lease timings of its own
    /// (`docs/DEPLOYMENT.md` says what they trade).
    ///
    /// On PostgreSQL the runtime keeps the database's time: its clock (the system clock,
    /// or [`RuntimeBuilder::clock`]) gives the ticks, corrected by the offset to the
    /// database's clock measured at each heartbeat, so a timer one host sets fires on
    /// time on any other, whatever their clocks say. A test on virtual time turns this
    /// off (`PostgresOptions { database_time: false, .. }`).
    ///
    /// # Errors
    /// As [`RuntimeBuilder::open_postgres`].
    #[cfg(feature = "postgres")]
    pub async fn open_postgres_with(
        mut self,
        url: &str,
        options: crate::store::PostgresOptions,
    ) -> Result<Runtime, Error> {
        if let Some(err) = self.error {
            return Err(err);
        }
        // Every host keeps the database's time: the configured clock gives the ticks,
        // the journal measures how far the database's clock is from it.
        let local = self.inner.configured_clock();
        let ticks = local.clone();
        let options = crate::store::PostgresOptions {
            local_time: options
                .local_time
                .or_else(|| Some(Arc::new(move || ticks.now_ms()))),
            ..options
        };
        let database_time = options.database_time;
        let journal = crate::store::PostgresJournal::open_with(url, options).await?;
        if database_time {
            let corrected =
                cairn_runtime::clock::CorrectedClock::new(local, journal.clock_offset());
            self.inner.clock(Arc::new(corrected));
        }
        self.open_journal(Arc::new(journal)).await
    }

    /// Opens the runtime on any [`Journal`] (another store, or the redb journal on a
    /// custom backend) and resumes every unfinished instance.
    ///
    /// # Errors
    /// As [`RuntimeBuilder::open`]; storage errors reading the journal's indexes.
    pub async fn open_journal(self, journal: Arc<dyn Journal>) -> Result<Runtime, Error> {
        if let Some(err) = self.error {
            return Err(err);
        }
        Ok(Runtime {
            engine: self.inner.open_journal(journal).await?,
            signals: self.signals,
            updates: self.updates,
            inputs: self.inputs,
        })
    }
}

/// The in-process host: starts instances, reports on them, and resumes them after a
/// restart. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Runtime {
    engine: Engine,
    signals: Declared,
    // Read by the HTTP API's JSON checks (feature `server`).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    updates: Declared,
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    inputs: Declared,
}

impl Runtime {
    /// A builder.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The untyped engine underneath.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn signals(&self) -> &Declared {
        &self.signals
    }

    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn updates(&self) -> &Declared {
        &self.updates
    }

    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn inputs(&self) -> &Declared {
        &self.inputs
    }

    /// Starts instance `id` of workflow `W`. If `id` already exists, returns a handle to
    /// it and starts nothing ([`InstanceHandle::created`] is `false`); the input given
    /// now is then ignored.
    ///
    /// # Errors
    /// [`Error::UnknownWorkflowType`] if `W` was not registered,
    /// [`Error::WorkflowTypeMismatch`] if `id` is another workflow type's, storage errors.
    ///
    /// # Durability
    /// On return the start is on disk: the instance runs to its end across crashes.
    ///
    /// # Cancel safety
    /// If dropped, the start may or may not have happened; calling again with the same id
    /// is safe.
    pub async fn start<W: Workflow>(
        &self,
        _workflow: W,
        id: &str,
        input: W::Input,
    ) -> Result<InstanceHandle<W>, Error> {
        let payload = encode(self.engine.codec(), &input).map_err(|err| Error::PayloadEncode {
            instance: id.to_owned(),
            position: "input".into(),
            message: err.to_string(),
        })?;
        let started = self.engine.start(W::NAME, id, payload).await?;
        Ok(InstanceHandle {
            engine: self.engine.clone(),
            id: id.to_owned(),
            created: started.created,
            workflow: PhantomData,
        })
    }

    /// The notification outbox in the order its events were recorded, after notification
    /// `after`, at most `limit`: each notification with every delivery attempt made and
    /// where its delivery stands.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn notifications(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<crate::notify::OutboxRow>, Error> {
        self.engine().notifications(after, limit).await
    }

    /// Sends signal `name` with body `payload` to instance `id`; a `ctx.signal(name)`
    /// wait in the workflow receives it (now, or whenever it next waits).
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::InstanceFinished`], [`Error::InvalidArgument`]
    /// for a bad name, [`Error::PayloadEncode`], storage errors.
    ///
    /// # Durability
    /// On return the signal is on disk and will be delivered, crash or not.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the signal is still recorded (unless refused) and
    /// reaches the run; dropped before it was polled, nothing was sent.
    pub async fn signal<T: crate::Payload>(
        &self,
        id: &str,
        name: &str,
        payload: &T,
    ) -> Result<(), Error> {
        let payload = encode(self.engine.codec(), payload).map_err(|err| Error::PayloadEncode {
            instance: id.to_owned(),
            position: format!("signal `{name}`"),
            message: err.to_string(),
        })?;
        self.engine.signal(id, name, payload).await
    }

    /// Starts workflow `W` with `input` on every occurrence of `recurrence`, as instance
    /// `"{schedule_id}@{fire_ms}"`, across restarts, never twice for one occurrence
    /// (starts are idempotent by id). Replaces an existing schedule of that id; a paused one
    /// stays paused, so a host may declare its schedules at every start.
    ///
    /// ```no_run
    /// # use cairn::{workflow, Ctx, Runtime, WorkflowError};
    /// use cairn::Recurrence;
    /// # #[workflow] async fn nightly_report(ctx: Ctx, region: String) -> Result<(), WorkflowError> { Ok(()) }
    /// # async fn run(rt: Runtime) -> Result<(), cairn::Error> {
    /// rt.schedule(nightly_report, "report-emea", "emea".to_owned(), Recurrence::cron("0 2 * * *")).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad id or recurrence, [`Error::UnknownWorkflowType`]
    /// if `W` is not registered, storage errors.
    ///
    /// # Durability
    /// On return the schedule is on disk.
    ///
    /// # Cancel safety
    /// If dropped, the schedule may or may not have been stored; once it is, the
    /// scheduler fires it, whether or not this future is still polled.
    pub async fn schedule<W: Workflow>(
        &self,
        _workflow: W,
        schedule_id: &str,
        input: W::Input,
        recurrence: cairn_runtime::schedule::Recurrence,
    ) -> Result<(), Error> {
        let payload = encode(self.engine.codec(), &input).map_err(|err| Error::PayloadEncode {
            instance: schedule_id.to_owned(),
            position: "schedule input".into(),
            message: err.to_string(),
        })?;
        self.engine
            .schedule(schedule_id, W::NAME, payload, recurrence, None)
            .await
    }

    /// Deletes a schedule; instances it started keep running. Returns whether it existed.
    ///
    /// # Errors
    /// Storage errors.
    ///
    /// # Cancel safety
    /// If dropped, the deletion may or may not have been recorded; once it is, the
    /// scheduler no longer fires it, whether or not this future is still polled.
    pub async fn unschedule(&self, schedule_id: &str) -> Result<bool, Error> {
        self.engine.unschedule(schedule_id).await
    }

    /// The schedules, by id: what each starts, when it fires next, and whether it is
    /// paused (by whom, when, why).
    pub fn schedules(&self) -> Vec<(String, ScheduleRow)> {
        self.engine.schedules()
    }

    /// Pauses a schedule: it starts nothing until [`Runtime::resume_schedule`] (an
    /// occurrence already being started when the pause lands still starts). Pausing a
    /// paused schedule keeps its first pause. Returns the schedule as stored.
    ///
    /// ```no_run
    /// # async fn run(rt: cairn::Runtime) -> Result<(), cairn::Error> {
    /// rt.pause_schedule("report-emea", "ledger migration tonight").await?;
    /// // ... later
    /// rt.resume_schedule("report-emea").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::ScheduleNotFound`], storage errors.
    ///
    /// # Durability
    /// On return the pause is on disk: the schedule stays paused across restarts.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the pause is still stored by a task of the runtime,
    /// also when the scheduler moved the schedule on meanwhile. Dropped before it was
    /// polled, nothing was sent.
    pub async fn pause_schedule(
        &self,
        schedule_id: &str,
        note: &str,
    ) -> Result<ScheduleRow, Error> {
        self.engine.pause_schedule(schedule_id, note).await
    }

    /// Resumes a paused schedule. Occurrences that fell due while it was paused are
    /// skipped; it next fires at its first occurrence after now. Returns the schedule as
    /// stored.
    ///
    /// # Errors
    /// [`Error::ScheduleNotFound`], storage errors.
    ///
    /// # Durability
    /// On return the schedule is stored as running again.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the resumption is still stored by a task of the
    /// runtime, and the scheduler fires it. Dropped before it was polled, nothing was
    /// sent.
    pub async fn resume_schedule(&self, schedule_id: &str) -> Result<ScheduleRow, Error> {
        self.engine.resume_schedule(schedule_id).await
    }

    /// Starts one occurrence of a schedule now (paused or not) without moving its next
    /// occurrence. Returns the started instance's id (`"{schedule_id}@{now_ms}"`).
    ///
    /// # Errors
    /// [`Error::ScheduleNotFound`], and as [`Runtime::start`].
    ///
    /// # Durability
    /// On return the instance's start is on disk.
    ///
    /// # Cancel safety
    /// If dropped, the start may or may not have been recorded; once it is, the instance
    /// runs, whether or not this future is still polled.
    pub async fn trigger_schedule(&self, schedule_id: &str) -> Result<String, Error> {
        let (id, _) = self.engine.trigger_schedule(schedule_id).await?;
        Ok(id)
    }

    /// Requests cooperative cancellation of instance `id`: its next durable wait ends
    /// with [`crate::Cancelled`] (an activity step with an `ActivityFailure` of kind
    /// `"cancelled"`), and the workflow runs its own cleanup. See
    /// [`cairn_runtime::Engine::cancel`].
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::InstanceFinished`], storage errors.
    ///
    /// # Durability
    /// On return the request is on disk.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the request is still recorded (unless refused) by a
    /// task of the runtime; once it is, it reaches the run by the commit itself. Dropped
    /// before it was polled, nothing was sent.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<(), Error> {
        self.engine.cancel(id, reason).await
    }

    /// Terminates instance `id` at once, recording `reason`; no more workflow code runs.
    /// See [`cairn_runtime::Engine::terminate`].
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::InstanceFinished`], storage errors.
    ///
    /// # Durability
    /// On return the termination is on disk.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the termination is still recorded (unless refused)
    /// by a task of the runtime; once it is, the run is stopped and its waiters answered
    /// by the commit itself. Dropped before it was polled, nothing was sent.
    pub async fn terminate(&self, id: &str, reason: &str) -> Result<(), Error> {
        self.engine.terminate(id, reason).await
    }

    /// A handle to existing instance `id` of workflow `W`, to await its result.
    pub fn handle<W: Workflow>(&self, _workflow: W, id: &str) -> InstanceHandle<W> {
        InstanceHandle {
            engine: self.engine.clone(),
            id: id.to_owned(),
            created: false,
            workflow: PhantomData,
        }
    }

    /// Status of instance `id`.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], storage errors.
    pub async fn status(&self, id: &str) -> Result<InstanceInfo, Error> {
        self.engine.status(id).await
    }

    /// Instances matching `filter`, oldest first.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<InstanceInfo>, Error> {
        self.engine.list(filter).await
    }

    /// The verified event history of instance `id`.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], [`Error::Corrupt`] when the hash chain fails.
    pub async fn history(&self, id: &str) -> Result<Vec<StoredEvent>, Error> {
        self.engine.history(id).await
    }

    /// Replays recorded events against the registered code without running anything.
    ///
    /// # Errors
    /// See [`Engine::replay`].
    ///
    /// # Cancel safety
    /// Cancel safe: it reads and writes nothing.
    pub async fn replay(&self, records: &[EventRecord]) -> Result<ReplayVerdict, Error> {
        self.engine.replay(records).await
    }

    /// Stops the runtime; see [`Engine::shutdown`].
    ///
    /// # Durability
    /// Everything acknowledged is on disk, and queued commits finish, before it returns.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped part-way, the runtime already refuses new work
    /// (`CAIRN-E0013`) but may still hold the file; call `shutdown` again to finish.
    pub async fn shutdown(&self) {
        self.engine.shutdown().await;
    }
}

/// A typed handle to one instance.
#[derive(Debug)]
pub struct InstanceHandle<W: Workflow> {
    engine: Engine,
    id: String,
    created: bool,
    workflow: PhantomData<fn() -> W>,
}

impl<W: Workflow> InstanceHandle<W> {
    pub(crate) fn new(engine: Engine, id: &str, created: bool) -> Self {
        Self {
            engine,
            id: id.to_owned(),
            created,
            workflow: PhantomData,
        }
    }
}

impl<W: Workflow> Clone for InstanceHandle<W> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            id: self.id.clone(),
            created: self.created,
            workflow: PhantomData,
        }
    }
}

impl<W: Workflow> InstanceHandle<W> {
    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this call started it (`false`: it already existed).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Waits for the workflow's own result: `Ok(Ok(output))` or `Ok(Err(error))`. The
    /// outer `Err` is the runtime's (parked, shut down, corrupt, undecodable).
    ///
    /// # Errors
    /// [`Error::Parked`], [`Error::ShutDown`], [`Error::InstanceNotFound`],
    /// [`Error::PayloadDecode`] when the recorded result is not a `W::Output`/`W::Error`.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn result(&self) -> Result<Result<W::Output, W::Error>, Error> {
        let decode_err =
            |type_name: &'static str, err: cairn_runtime::CodecError| Error::PayloadDecode {
                instance: self.id.clone(),
                position: "result".into(),
                type_name,
                message: err.to_string(),
            };
        match self.engine.wait(&self.id).await? {
            Outcome::Completed(payload) => decode::<W::Output>(self.engine.codec(), &payload)
                .map(Ok)
                .map_err(|err| decode_err(std::any::type_name::<W::Output>(), err)),
            Outcome::Failed(payload) => decode::<W::Error>(self.engine.codec(), &payload)
                .map(Err)
                .map_err(|err| decode_err(std::any::type_name::<W::Error>(), err)),
            Outcome::Terminated(reason) => Err(Error::Terminated {
                instance: self.id.clone(),
                reason,
            }),
            // `Engine::wait` follows continued runs; it never ends on a hand-over.
            Outcome::ContinuedAsNew(_) => Err(Error::Corrupt {
                location: format!("instance `{}`", self.id),
                message: "its wait ended on a hand-over instead of a result".into(),
            }),
        }
    }

    /// Its current status.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], storage errors.
    pub async fn status(&self) -> Result<InstanceInfo, Error> {
        self.engine.status(&self.id).await
    }
}
