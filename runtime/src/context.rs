//! The untyped workflow context: the engine's side of every durable call. The `cairn`
//! crate wraps it in the typed `Ctx` users see.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;
use tracing::Instrument as _;

use futures::FutureExt;

use crate::activity::{
    ActivityContext, ActivityError, ActivityFailure, ActivityOptions, Cancelled,
};
use crate::attempts::Attempted;
use crate::clock::{millis, Clock, ClockHold};
use crate::codec::{Codec, Payload};
use crate::error::{Error, StepDescriptor};
use crate::event::{AttrValue, ChildOutcome, EventKind, StepNo};
use crate::port::{HostPort, Observation, Outcome};

use crate::port::{RunTaskAnswer, RunTaskChange};
use crate::replay::{
    requested, Decision, History, PatchDecision, RecordedOutcome, StepKind, StepRequest,
};
use crate::step::activity::{self, AfterAttempt};
use crate::step::{answer, attributes, child, notice, patch, publish, signal, task, timer, value};
use crate::sync::{lock, Mutex, Notified, Notify};
use crate::task::{Actor, TaskSpec};
use cairn_core::journal::CarriedSignal;

/// What `ctx.patched` answers, decided when it is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchPlan {
    /// The old code path; no step consumed.
    OldPath,
    /// The new path; the marker is already recorded.
    Recorded,
    /// The new path; record the marker at this step first.
    Record(StepNo),
}

/// Why the driver must stop polling the workflow.
#[derive(Debug)]
pub(crate) enum Stop {
    /// An error that parks the instance (non-determinism, undecodable payload, storage).
    Fatal(Error),
    /// The workflow asked to continue as a new run with this input.
    ContinueAsNew(Payload),
    /// Always-replay mode: a step just became durable; rebuild the run from the log.
    Replay,
    /// The host is handing the run to another host (its store is shared): what was in
    /// flight is recorded, nothing new starts here; the next owner replays the run.
    HandedOver,
}

struct CtxState {
    next_step: StepNo,
    /// Offline replay (no host): the steps the code asked for that the history does not
    /// hold and that it still waits for (a dropped one leaves). They never resolve; the
    /// replayer reads them once the workflow is stuck.
    beyond: std::collections::BTreeMap<StepNo, StepDescriptor>,
    stop: Option<Stop>,
    /// A stop was set, also once the driver has taken it (`take_stop`): an attempt
    /// whose task waited for a commit meanwhile must not start (`Before::settle`).
    stopped: bool,
    /// A step already ended because of the cancellation request (recorded or replayed);
    /// later steps run normally, so cleanup can use activities.
    cancel_delivered: bool,
    /// The step that took the cancellation and has not returned it to the workflow yet:
    /// dropped unfinished, it gives the cancellation back (`LiveGuard`).
    cancel_holder: Option<StepNo>,
    /// Operations that are doing work (an activity attempt, an append in flight); while
    /// any is, the run is not idle and must stay in memory.
    busy: u32,
    /// Waits whose wake-up the engine cannot deliver to an evicted run (a child wait on
    /// an instance this run did not start); while any is, the run stays in memory.
    pinned: u32,
    /// Durable waits in progress, by step, with their deadline (timers, signal waits,
    /// child waits).
    waits: std::collections::BTreeMap<StepNo, Option<u64>>,
    /// Last value of `blocked()`, to wake the driver only when it changes.
    was_blocked: bool,
    /// The inbox's mark when the workflow was last polled (see `drive`).
    poll_mark: InboxMark,
    /// The waker of the driver's last poll of the workflow.
    driver: Option<Waker>,
    /// The driver is dropping the workflow's future: steps dropped now are not abandoned
    /// by the workflow.
    ending: bool,
    /// Signal waits that took a signal the workflow has not received yet (its delivery
    /// being recorded, or recorded): step -> the signal's `seq`.
    reserved: std::collections::BTreeMap<StepNo, u64>,
    /// An activity result not sent to the store yet, with the hold that keeps virtual
    /// time still until it is durable (see `hold_result`).
    held: Option<(EventKind, ClockHold)>,
    /// The latest activity result queued but maybe not durable yet: the next step
    /// waits for it before it starts.
    queued: Option<Queued>,
    /// Steps waiting for a held result they sent (`held_durable`): a sibling step waits
    /// until none is.
    flushing: u32,
    /// How many of the history's outcomes have been handed back, in the order the
    /// recorded run took them (see `History::outcome_rank` and `drive`).
    released: usize,
    /// Steps waiting for an outcome's turn, by the turn: each hand-over wakes only the
    /// steps waiting for it (a join of many would otherwise poll every branch again at
    /// every hand-over).
    release_waiters: std::collections::BTreeMap<Turn, Vec<Waker>>,
    /// Outcomes this run sent to the store live and has not handed over yet, in the
    /// order it sent them, which is the order the history holds them in (see
    /// `record_outcome`).
    sent: std::collections::VecDeque<cairn_core::journal::AppendTicket>,
    /// How many outcomes of this run were handed over live (sent, or taken from an
    /// attempt that finished): live, outcomes are handed over in the order they are
    /// recorded too, as replay will hand them back. The next one sent takes the place
    /// after those handed over and those still in `sent`.
    live_released: u64,
    /// An outcome was handed over since the workflow was last found stuck (see
    /// `WorkflowContext::unstick`).
    fresh: bool,
    /// Steps with an attempt's output to take that wait until nothing is before it.
    take_waiters: Vec<Waker>,
}

/// A place in the order outcomes are handed over in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Turn {
    /// The recorded outcome of this rank in a rebuilt run's history
    /// (`History::outcome_rank`).
    Recorded(usize),
    /// The outcome this run sent live as its n-th (`record_outcome`).
    Live(u64),
}

/// An event a run queued and went on without waiting for: resolves once it is durable.
/// Shared, because every branch of the run that starts a step must wait for it.
type Queued = futures::future::Shared<cairn_core::journal::AppendTicket>;

impl CtxState {
    fn blocked(&self) -> Option<Option<u64>> {
        if self.busy > 0 || self.pinned > 0 || self.waits.is_empty() || self.stop.is_some() {
            return None;
        }
        Some(self.waits.values().flatten().min().copied())
    }
}

/// One signal in an instance's in-memory inbox.
#[derive(Debug)]
struct InboxEntry {
    signal: CarriedSignal,
    /// Delivered to a wait (recorded) or reserved by one whose delivery is being recorded.
    taken: bool,
}

/// How a human task was decided, as the workflow receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDecision {
    /// The decision, as recorded.
    pub decision: Payload,
    /// Who decided (`cairn` for an escalation's default decision).
    pub actor: Actor,
    /// The escalation tier that decided, if one did.
    pub escalation: Option<u32>,
}

/// What the next run of a continue-as-new inherits from this one.
#[derive(Debug)]
pub(crate) struct HandOver {
    /// Events in the history when the inbox was read: the hand-over is refused if the
    /// history has grown since (a signal this run did not see).
    pub(crate) expected_next_seq: u64,
    /// Signals received and not delivered, oldest first.
    pub(crate) signals: Vec<CarriedSignal>,
    /// A cancellation requested and not yet delivered.
    pub(crate) cancel: Option<String>,
    /// This run's position in its chain (1 for an instance's first run).
    pub(crate) run: u32,
}

/// Where an instance's inbox stands: compared before and after an eviction, so a run is
/// only evicted with nothing arrived that its last poll did not see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct InboxMark {
    /// Bumped by every signal, cancellation and child's end that reaches the inbox.
    pub(crate) generation: u64,
    /// Events in the instance's history, as far as commits have reported them.
    pub(crate) next_seq: u64,
}

#[derive(Debug, Default)]
struct InboxState {
    mark: InboxMark,
    /// Decisions recorded for this run's human tasks, by step.
    tasks: std::collections::BTreeMap<StepNo, TaskDecision>,
    /// Signals by the `seq` of their `SignalReceived` event.
    entries: std::collections::BTreeMap<u64, InboxEntry>,
    /// The reason of a cancellation request, once one is recorded.
    cancel: Option<String>,
    /// Signal waits (`receive`, updates) in progress: what the run waits on that its
    /// history does not show until the message comes.
    message_waits: u32,
    /// Polls of the workflow so far, and the one in which a signal wait last stayed
    /// pending: it waits on a message now if that was the latest poll.
    polls: u64,
    message_polled: Option<u64>,
    /// Steps begun or finished so far, and the count when the current poll began: a
    /// poll in which the workflow moved on may have left a signal wait behind after
    /// polling it (see `WorkflowContext::poll_done`).
    progress: u64,
    progress_at_poll: u64,
}

/// What one instance has received and how long its history is, kept in memory across
/// its runs (a dormant entry keeps it). Filled by the commit path (`engine::Dispatch`)
/// in commit order, and from the history when a run is loaded; the same signal may
/// arrive by both, so entries are keyed by `seq`, never appended.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    /// Woken on every new signal, on a cancellation request and on a child's end.
    arrived: Notify,
}

/// A signal wait in progress, counted in its inbox until dropped.
pub(crate) struct MessageWait<'a>(&'a Inbox);

impl Drop for MessageWait<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.message_waits = state.message_waits.saturating_sub(1);
    }
}

impl Inbox {
    /// Counts a signal wait until the guard is dropped.
    pub(crate) fn awaiting_message(&self) -> MessageWait<'_> {
        lock(&self.state).message_waits += 1;
        MessageWait(self)
    }

    /// Whether the run waits on a signal or an update now: one is in progress and
    /// stayed pending in the workflow's latest poll.
    pub(crate) fn awaits_message(&self) -> bool {
        let state = lock(&self.state);
        state.message_waits > 0 && state.message_polled == Some(state.polls)
    }

    /// A poll of the workflow begins: counts it and returns the mark it may see, under
    /// one lock (this runs on every poll of every run).
    fn begin_poll(&self) -> InboxMark {
        let mut state = lock(&self.state);
        state.polls += 1;
        state.progress_at_poll = state.progress;
        state.mark
    }

    /// A signal wait stayed pending in the current poll.
    fn message_polled(&self) {
        let mut state = lock(&self.state);
        state.message_polled = Some(state.polls);
    }

    /// A step began or finished in the current poll.
    fn progressed(&self) {
        lock(&self.state).progress += 1;
    }

    /// Whether a poll that stayed pending must be confirmed by one more: a signal wait
    /// was polled in it and the workflow also moved on. A `select!` may have polled the
    /// wait and then gone on with another branch that finished in the same poll (an
    /// append acknowledged before its future was first polled does), leaving the wait
    /// behind; only a poll that no longer reaches it shows that. A poll in which nothing
    /// moved leaves the workflow where it was, so confirming stops there.
    fn confirm_poll(&self) -> bool {
        let state = lock(&self.state);
        state.message_polled == Some(state.polls) && state.progress != state.progress_at_poll
    }

    /// Marks a change the run must look at (a child it waits for has ended).
    pub(crate) fn touch(&self) {
        lock(&self.state).mark.generation += 1;
        self.arrived.notify_waiters();
    }

    pub(crate) fn mark(&self) -> InboxMark {
        lock(&self.state).mark
    }

    #[cfg(all(test, cairn_loom))]
    pub(crate) fn generation(&self) -> u64 {
        self.mark().generation
    }

    /// The event at `seq` is committed: the history has at least `seq + 1` events.
    pub(crate) fn committed(&self, seq: u64) {
        self.known(seq.saturating_add(1));
    }

    /// The history has at least `next_seq` events.
    pub(crate) fn known(&self, next_seq: u64) {
        let mut state = lock(&self.state);
        state.mark.next_seq = state.mark.next_seq.max(next_seq);
    }

    pub(crate) fn add(&self, seq: u64, signal: CarriedSignal, taken: bool) {
        self.put(seq, signal, taken, false);
    }

    /// A signal as a run's history holds it, at the start of an incarnation of the run:
    /// the history says whether it was delivered, whatever memory says. A wait of the
    /// run before (always-replay's rebuild, an eviction) may have taken it without its
    /// delivery being recorded: the run stopped in between, and nothing gave it back.
    pub(crate) fn load(&self, seq: u64, signal: CarriedSignal, delivered: bool) {
        self.put(seq, signal, delivered, true);
    }

    fn put(&self, seq: u64, signal: CarriedSignal, taken: bool, from_history: bool) {
        {
            let mut state = lock(&self.state);
            let entry = state
                .entries
                .entry(seq)
                .or_insert(InboxEntry { signal, taken });
            if from_history {
                entry.taken = taken;
            }
            // One lock for the entry and the mark: a reader that sees the new mark also
            // finds the signal (the loom model below found the reverse order losing it).
            state.mark.next_seq = state.mark.next_seq.max(seq.saturating_add(1));
            state.mark.generation += 1;
        }
        self.arrived.notify_waiters();
    }

    /// Records the decision of the human task of `step`, recorded at `seq`.
    pub(crate) fn task_decided(&self, seq: u64, step: StepNo, decision: TaskDecision) {
        {
            let mut state = lock(&self.state);
            state.tasks.entry(step).or_insert(decision);
            state.mark.next_seq = state.mark.next_seq.max(seq.saturating_add(1));
            state.mark.generation += 1;
        }
        self.arrived.notify_waiters();
    }

    /// The decision recorded for the task of `step`, if one is.
    fn task_decision(&self, step: StepNo) -> Option<TaskDecision> {
        lock(&self.state).tasks.get(&step).cloned()
    }

    /// Records that cancellation was requested (the first reason is kept).
    pub(crate) fn request_cancel(&self, seq: u64, reason: String) {
        {
            let mut state = lock(&self.state);
            state.cancel.get_or_insert(reason);
            state.mark.next_seq = state.mark.next_seq.max(seq.saturating_add(1));
            state.mark.generation += 1;
        }
        self.arrived.notify_waiters();
    }

    /// The reason of the cancellation request, if one was recorded.
    fn cancel_reason(&self) -> Option<String> {
        lock(&self.state).cancel.clone()
    }

    /// Signals not delivered to any wait, oldest first.
    #[cfg(all(test, cairn_loom))]
    pub(crate) fn undelivered(&self) -> Vec<CarriedSignal> {
        undelivered(&lock(&self.state))
    }

    /// What a run that continues as new hands over, read at one instant: the history's
    /// length and the signals and cancellation it holds that no step took.
    fn hand_over(&self, cancel_delivered: bool, run: u32) -> HandOver {
        let state = lock(&self.state);
        HandOver {
            run,
            expected_next_seq: state.mark.next_seq,
            signals: undelivered(&state),
            cancel: if cancel_delivered {
                None
            } else {
                state.cancel.clone()
            },
        }
    }

    /// Reserves the oldest untaken signal called `name`: its `seq`, body and key.
    fn take(&self, name: &str) -> Option<(u64, Payload, Option<String>)> {
        let mut state = lock(&self.state);
        let (seq, entry) = state
            .entries
            .iter_mut()
            .find(|(_, e)| !e.taken && e.signal.name == name)?;
        entry.taken = true;
        Some((*seq, entry.signal.payload.clone(), entry.signal.key.clone()))
    }

    fn untake(&self, seq: u64) {
        if let Some(entry) = lock(&self.state).entries.get_mut(&seq) {
            entry.taken = false;
        }
        self.arrived.notify_waiters();
    }
}

fn undelivered(state: &InboxState) -> Vec<CarriedSignal> {
    state
        .entries
        .values()
        .filter(|e| !e.taken)
        .map(|e| e.signal.clone())
        .collect()
}

struct Inner {
    /// Notified when the run becomes idle (blocked) or stops being so.
    state_changed: Notify,
    /// Notified when a step's wait for a held result ends (see `held_durable`).
    flushed: Notify,
    key: u128,
    clock: Arc<dyn Clock>,
    inbox: Arc<Inbox>,
    /// `None` in replay-only mode (auditing): nothing runs live, nothing is appended.
    host: Option<Arc<dyn HostPort>>,
    codec: Arc<dyn Codec>,
    history: History,
    state: Mutex<CtxState>,
    /// Where this run's activity attempts execute.
    attempts: crate::attempts::Attempts,
    /// The instance's id and workflow type, shared with every attempt's context.
    names: (Arc<str>, Arc<str>),
    /// The activities this run called, shared the same way (see `activity_name`).
    activities: Mutex<Vec<Arc<str>>>,
}

/// Activity names a run keeps for its attempts' contexts; a workflow that calls more
/// distinct ones (names made at run time) gets a fresh copy for the rest.
const SHARED_ACTIVITY_NAMES_MAX: usize = 64;

/// The engine's handle for one run of one instance. Cheap to clone.
#[derive(Clone)]
pub struct WorkflowContext {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WorkflowContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowContext")
            .field("instance", &self.inner.history.instance)
            .field("workflow_type", &self.inner.history.workflow_type)
            .finish_non_exhaustive()
    }
}

impl WorkflowContext {
    pub(crate) fn new(
        key: u128,
        host: Option<Arc<dyn HostPort>>,
        codec: Arc<dyn Codec>,
        clock: Arc<dyn Clock>,
        inbox: Arc<Inbox>,
        history: History,
        known_next_seq: u64,
    ) -> Self {
        for (seq, signal) in history.signals() {
            let arrived = CarriedSignal {
                name: signal.name.clone(),
                payload: signal.payload.clone(),
                key: signal.key.clone(),
                actor: signal.actor.clone(),
            };
            inbox.load(*seq, arrived, signal.delivered);
        }
        if let Some((seq, reason)) = &history.cancel_requested {
            inbox.request_cancel(*seq, reason.clone());
        }
        let names = (
            Arc::from(history.instance.as_str()),
            Arc::from(history.workflow_type.as_str()),
        );
        inbox.known(known_next_seq);
        let cancel_delivered = history.cancel_delivered;
        Self {
            inner: Arc::new(Inner {
                key,
                clock,
                inbox,
                host,
                codec,
                history,
                state: Mutex::new(CtxState {
                    next_step: 1,
                    beyond: std::collections::BTreeMap::new(),
                    stop: None,
                    stopped: false,
                    cancel_delivered,
                    cancel_holder: None,
                    busy: 0,
                    pinned: 0,
                    waits: std::collections::BTreeMap::new(),
                    was_blocked: false,
                    poll_mark: InboxMark::default(),
                    driver: None,
                    ending: false,
                    reserved: std::collections::BTreeMap::new(),
                    held: None,
                    queued: None,
                    flushing: 0,
                    released: 0,
                    release_waiters: std::collections::BTreeMap::new(),
                    sent: std::collections::VecDeque::new(),
                    live_released: 0,
                    fresh: false,
                    take_waiters: Vec::new(),
                }),
                state_changed: Notify::new(),
                flushed: Notify::new(),
                attempts: crate::attempts::Attempts::default(),
                names,
                activities: Mutex::new(Vec::new()),
            }),
        }
    }

    /// User id of the instance.
    pub fn instance_id(&self) -> &str {
        &self.inner.history.instance
    }

    /// Tells the host what this run saw, for its metrics (nothing in replay-only mode).
    fn observe(&self, observation: Observation<'_>) {
        if let Some(host) = &self.inner.host {
            host.observe(observation);
        }
    }

    /// `name` shared: an attempt's context then takes no allocation of its own.
    fn activity_name(&self, name: &str) -> Arc<str> {
        let mut names = lock(&self.inner.activities);
        if let Some(known) = names.iter().find(|known| ***known == *name) {
            return known.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        if names.len() < SHARED_ACTIVITY_NAMES_MAX {
            names.push(shared.clone());
        }
        shared
    }

    /// Workflow type of the instance.
    pub fn workflow_type(&self) -> &str {
        &self.inner.history.workflow_type
    }

    /// The runtime's payload codec.
    pub fn codec(&self) -> &dyn Codec {
        self.inner.codec.as_ref()
    }

    /// The runtime clock's current time, ms since the Unix epoch. Not recorded by itself:
    /// record it with [`WorkflowContext::recorded_value`].
    pub fn clock_now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Assigns the next step number. Call it when the workflow *calls* a durable
    /// operation (not when its future is first polled) so concurrent calls are numbered
    /// in program order.
    pub fn next_step(&self) -> StepNo {
        let mut state = lock(&self.inner.state);
        let step = state.next_step;
        state.next_step += 1;
        step
    }

    /// Whether the next step is still covered by recorded history.
    pub fn is_replaying(&self) -> bool {
        lock(&self.inner.state).next_step <= self.inner.history.last_step()
    }

    /// Offline replay: the steps the code asked for that the history does not hold and
    /// still waits for, by step number (see `decide_then`).
    pub(crate) fn beyond_history(&self) -> Vec<(StepNo, StepDescriptor)> {
        lock(&self.inner.state)
            .beyond
            .iter()
            .map(|(step, asked)| (*step, asked.clone()))
            .collect()
    }

    pub(crate) fn last_requested_step(&self) -> StepNo {
        lock(&self.inner.state).next_step - 1
    }

    pub(crate) fn take_stop(&self) -> Option<Stop> {
        lock(&self.inner.state).stop.take()
    }

    pub(crate) fn history(&self) -> &History {
        &self.inner.history
    }

    /// Ends this run and continues the instance as a new run with `input` and a fresh
    /// history. Never resolves: the engine records the hand-over and starts the new run.
    pub async fn continue_as_new<T>(&self, input: Payload) -> T {
        self.set_stop(Stop::ContinueAsNew(input));
        std::future::pending().await
    }

    /// Stops the instance with `err` (it is parked and nothing more is appended) and
    /// never resolves: the engine drops the workflow future at its next poll check. The
    /// stop is set when this is called; the future only parks the caller (an empty one:
    /// every step's future has several of these await points, and an error held in
    /// each would make it larger for a path it rarely takes).
    pub fn abort<T>(&self, err: Error) -> std::future::Pending<T> {
        self.set_stop(Stop::Fatal(err));
        std::future::pending()
    }

    /// The store refused something this run went on without waiting for (an
    /// abandonment): stops the run and wakes what waits on it, the driver included.
    fn refused(&self, err: Error) {
        self.set_stop(Stop::Fatal(err));
        self.inner.state_changed.notify_waiters();
        let driver = lock(&self.inner.state).driver.clone();
        if let Some(driver) = driver {
            driver.wake();
        }
    }

    fn set_stop(&self, stop: Stop) {
        let mut state = lock(&self.inner.state);
        // The first reason wins: it is the one at the earliest step.
        if state.stop.is_none() {
            state.stop = Some(stop);
        }
        state.stopped = true;
    }

    fn append(&self, kind: EventKind) -> impl Future<Output = Result<(), Error>> + '_ {
        // Another branch of this run (a `join!` sibling polled in the same poll) may have
        // stopped the instance; nothing may be appended after that.
        let stopped = lock(&self.inner.state).stop.is_some();
        // An activity result held in this poll goes first: the history keeps the order
        // in which the workflow took its steps (a patch marker or search attributes set
        // right after an activity need no `decide`), and this append's success then
        // means the result is durable too.
        if !stopped {
            self.flush_held(None);
        }
        // The host's future is made here, so the event moves into it once instead of
        // being carried in this future's state too (a step's future is boxed per step).
        let sent = match (&self.inner.host, stopped) {
            (Some(host), false) => Some((self.busy(), host.append(self.inner.key, kind))),
            _ => None,
        };
        async move {
            if stopped {
                return std::future::pending().await;
            }
            let Some((_busy, sent)) = sent else {
                return Ok(());
            };
            // The commit itself moves the inbox's count of events (`engine::Dispatch`):
            // a branch dropped while its append is in flight leaves nothing behind in
            // memory.
            sent.await.map(drop)
        }
    }

    /// Always-replay mode: stops the run right after a step became durable and before
    /// the workflow sees its result, so the driver rebuilds the workflow from the log and
    /// every step is reached by replay. Only at a quiet moment (no activity attempt or
    /// append in flight in a sibling branch), so no work in flight is abandoned; otherwise
    /// the run carries on and the last busy sibling to finish triggers the replay.
    async fn settle(&self) {
        let Some(host) = &self.inner.host else {
            return;
        };
        if !host.always_replay() {
            return;
        }
        {
            let mut state = lock(&self.inner.state);
            if state.busy > 0 || state.stop.is_some() {
                return;
            }
            state.stop = Some(Stop::Replay);
            state.stopped = true;
        }
        std::future::pending().await
    }

    /// Records a step's event (an outcome or the start of a wait), parking the run if
    /// that fails, then lets always-replay mode rebuild the run (see `settle`).
    fn record(&self, kind: EventKind) -> impl Future<Output = ()> + '_ {
        let appended = self.append(kind);
        async move {
            // The result is consumed in a statement of its own: a `Result` matched in an
            // `if let` around an await would be kept in this future (every step's) for
            // the whole await.
            let parked = match appended.await {
                Ok(()) => None,
                Err(err) => Some(self.abort(err)),
            };
            if let Some(parked) = parked {
                return parked.await;
            }
            self.settle().await;
        }
    }

    /// Records a step's outcome and returns once it is handed over: durable, and its
    /// turn come. Never returns if the store refuses it or the run stops meanwhile (the
    /// driver parks the run); then lets always-replay mode rebuild the run (`settle`).
    ///
    /// Why not as soon as it is durable: the history holds outcomes in the order the run
    /// sent them, and replay hands them back in that order, one whenever the workflow
    /// can go no further (see `drive`). Two outcomes durable by the same poll would
    /// otherwise reach the workflow in the order its `join!` polls their branches, and a
    /// branch that went on first would number its next call otherwise than a replay.
    /// The driver hands the oldest over once the workflow is stuck (`unstick`), so the
    /// live run and every replay of it see the same order.
    fn record_outcome(&self, kind: EventKind) -> impl Future<Output = ()> + '_ {
        // As in `append`: nothing after a sibling stopped the run, and a result held in
        // this poll goes first.
        let stopped = lock(&self.inner.state).stop.is_some();
        if !stopped {
            self.flush_held(None);
        }
        let rank = match (&self.inner.host, stopped) {
            (Some(host), false) => {
                // Sent now, so the store orders it with the run's other appends in the
                // order the run made them; the driver keeps the ticket, because the step
                // may never be polled again (the rest of a `select` kept for later) and
                // the outcomes after it must not wait for it for ever.
                let ticket = host.append_sent(self.inner.key, kind);
                let mut state = lock(&self.inner.state);
                let rank = state.live_released + state.sent.len() as u64;
                state.sent.push_back(ticket);
                // In flight: the run is not idle until the driver hands it over.
                state.busy += 1;
                self.changed(&mut state);
                Some(rank)
            }
            _ => None,
        };
        async move {
            if stopped {
                return std::future::pending().await;
            }
            // Offline, nothing is recorded.
            let Some(rank) = rank else {
                return;
            };
            self.turn(Turn::Live(rank)).await;
            // Refused (the driver stopped the run with the store's error), or a sibling
            // stopped it: the workflow sees nothing more.
            if lock(&self.inner.state).stop.is_some() {
                return std::future::pending().await;
            }
            self.settle().await;
        }
    }

    /// The workflow is stuck (a poll left it pending with nothing woken): hands over the
    /// next outcome, if one can go. Returns whether one did, or whether a step waiting to
    /// take an attempt's output may now (`take_turn`); the driver then polls again.
    ///
    /// The order is the history's: the recorded outcomes of a rebuilt run first, in the
    /// order the recorded run took them (`History::outcome_rank`), then the oldest
    /// outcome the run sent, once it is durable. Its ticket is polled here with the
    /// driver's waker, so its commit wakes the driver.
    ///
    /// Why one at a time: a recorded step would otherwise resolve the moment it is
    /// asked for, and a branch whose first step finished later in the recorded run
    /// could go on first and number its next call differently, or a deadline awaited
    /// across a loop could win before the signals that came before it.
    pub(crate) fn unstick(&self, cx: &mut std::task::Context<'_>) -> bool {
        let total = self.inner.history.outcomes();
        let mut state = lock(&self.inner.state);
        state.fresh = false;
        let waiters = if state.released < total {
            let turn = Turn::Recorded(state.released);
            state.released += 1;
            state.fresh = true;
            state.release_waiters.remove(&turn).unwrap_or_default()
        } else if let Some(ticket) = state.sent.front_mut() {
            let Poll::Ready(appended) = ticket.as_mut().poll(cx) else {
                return false;
            };
            state.sent.pop_front();
            let turn = Turn::Live(state.live_released);
            state.live_released += 1;
            state.busy = state.busy.saturating_sub(1);
            state.fresh = true;
            if let Err(err) = appended {
                // The step it belongs to sees the stop and goes no further.
                if state.stop.is_none() {
                    state.stop = Some(Stop::Fatal(err));
                }
                state.stopped = true;
            }
            self.changed(&mut state);
            state.release_waiters.remove(&turn).unwrap_or_default()
        } else if !state.take_waiters.is_empty() {
            std::mem::take(&mut state.take_waiters)
        } else {
            return false;
        };
        drop(state);
        for waker in waiters {
            waker.wake();
        }
        true
    }

    /// Whether a step may take its attempt's output now, where results are held: only
    /// when no outcome is before it (none sent and not handed over, none of a rebuilt
    /// run's left to hand back), and none was handed over since the workflow was last
    /// stuck. So a take is where a replay hands the output back: when the workflow is
    /// stuck, after everything recorded before it. Otherwise registers `cx` to be woken
    /// when it may (`unstick`).
    fn take_turn(&self, cx: &mut std::task::Context<'_>) -> bool {
        let total = self.inner.history.outcomes();
        let mut state = lock(&self.inner.state);
        if state.sent.is_empty() && !state.fresh && state.released >= total {
            return true;
        }
        if !state
            .take_waiters
            .iter()
            .any(|waker| waker.will_wake(cx.waker()))
        {
            state.take_waiters.push(cx.waker().clone());
        }
        false
    }

    /// Holds an activity's result without waiting for it to be durable, where the
    /// store can queue it: the result is held, and the workflow goes on at once. The
    /// driver sends it when this poll of the workflow ends (`flush_held`), or with the
    /// run's end in one commit when the workflow returned in it (`take_held`), which
    /// saves a commit per workflow.
    ///
    /// Safe because what runs before the next step starts is the workflow's own
    /// deterministic code, which nobody outside sees: every step first waits for the
    /// held result to be durable (in `decide`; an activity step's attempt waits on its
    /// task, see `take_prior`), so no activity runs, no timer or wait starts and no
    /// message leaves on a result that is not (an activity step records only after its
    /// attempt, or a cancellation, which the store commits after the result); the run's end and a
    /// continue-as-new are ordered after it, and the store refuses them if it refused
    /// the result. Virtual time does not skip until it is durable (`hold`), or, when it
    /// goes with the end, until it is sent. Where the store does not queue, or every
    /// step must be replayed, it is the plain `record`.
    ///
    /// Only where [`Self::holds_results`] says the host can; `false` when the run has
    /// stopped meanwhile: then nothing may be recorded, and the step must not return.
    #[must_use = "a step whose result is not held must not return"]
    fn hold_result(&self, kind: EventKind, hold: ClockHold) -> bool {
        let mut state = lock(&self.inner.state);
        if state.stop.is_some() {
            return false;
        }
        // Taken now (`take_turn` let it): its place among the outcomes, handed over.
        state.live_released += 1;
        state.fresh = true;
        // Two results in one poll (a `join!`): the older one goes first.
        let older = state.held.replace((kind, hold));
        drop(state);
        if let Some((older, hold)) = older {
            self.send_queued(older, hold, Some(Waker::noop().clone()));
        }
        true
    }

    /// A completed step where results are held: reads the workflow's value, then holds
    /// the outcome. `None` when the step must park instead: the run stopped, or the
    /// output does not decode (the stop is set here).
    fn complete_held<T, D>(
        &self,
        done: activity::Completed,
        hold: ClockHold,
        decode: D,
    ) -> Option<T>
    where
        D: FnOnce(&WorkflowContext, &Payload) -> Result<T, Error>,
    {
        // Read before the event takes the output, which is never copied.
        let decoded = decode(self, done.output());
        match (self.hold_result(done.into_record(), hold), decoded) {
            (true, Ok(value)) => Some(value),
            (true, Err(err)) => {
                drop(self.abort::<()>(err));
                None
            }
            // Stopped meanwhile: nothing may be recorded.
            (false, _) => None,
        }
    }

    /// Whether results are held (`hold_result`) rather than recorded and waited for.
    fn holds_results(&self) -> bool {
        match &self.inner.host {
            Some(host) => host.queues_appends() && !host.always_replay(),
            None => false,
        }
    }

    /// Queues `kind` in the store and keeps its ticket where every step of the run waits
    /// for it (`queued_durable`). With `driven`, nobody is about to wait: a task drives
    /// the ticket to its end, ends the hold on virtual time then, and on a refusal stops
    /// the run and wakes it with `driven`'s waker (else a run that only waits would
    /// never learn that the result it went on with was refused).
    fn send_queued(&self, kind: EventKind, hold: ClockHold, driven: Option<Waker>) {
        let Some(host) = &self.inner.host else {
            return;
        };
        let queued = host.append_queued(self.inner.key, kind).shared();
        lock(&self.inner.state).queued = Some(queued.clone());
        let Some(waker) = driven else {
            // The caller waits for it at once and then ends the hold.
            drop(hold);
            return;
        };
        let ctx = self.clone();
        drop(tokio::spawn(async move {
            let appended = queued.await;
            drop(hold);
            if let Err(err) = appended {
                ctx.set_stop(Stop::Fatal(err));
                ctx.inner.state_changed.notify_waiters();
                waker.wake();
            }
        }));
    }

    /// Sends the abandonment of step `step` from inside the poll that dropped it, where
    /// every later step of the run waits for it (`queued`): nothing the workflow does
    /// next, not even an activity attempt that records nothing before it runs, starts
    /// before the history says which branch lost (a crash in between would let a replay
    /// take the other one). A task drives it; a refusal stops the run.
    fn queue_abandoned(&self, host: &Arc<dyn HostPort>, step: StepNo) {
        self.send_ahead(host, EventKind::StepAbandoned { step });
    }

    /// Sends `kind`, one of the run's own events, without waiting for it: every later
    /// step of the run waits for it (`queued`), and so does the run's end. A task drives
    /// it; a refusal stops the run.
    fn send_ahead(&self, host: &Arc<dyn HostPort>, kind: EventKind) {
        let queued = host.append_sent(self.inner.key, kind).shared();
        lock(&self.inner.state).queued = Some(queued.clone());
        let ctx = self.clone();
        drop(tokio::spawn(async move {
            if let Err(err) = queued.await {
                ctx.refused(err);
            }
        }));
    }

    /// Sends the held activity result, if any, to the store (see `hold_result`), to be
    /// waited for by the run's next step; `waker` (the driver's, at the end of a poll)
    /// is woken if the store refuses it.
    pub(crate) fn flush_held(&self, waker: Option<&Waker>) {
        let waker = waker.map_or_else(|| Waker::noop().clone(), Waker::clone);
        self.send_held(Some(waker));
    }

    /// Sends the held result, if any (see `send_queued` for `driven`).
    fn send_held(&self, driven: Option<Waker>) {
        let held = lock(&self.inner.state).held.take();
        if let Some((kind, hold)) = held {
            self.send_queued(kind, hold, driven);
        }
    }

    /// Takes the held activity result, to be committed with the run's end.
    pub(crate) fn take_held(&self) -> Option<EventKind> {
        lock(&self.inner.state)
            .held
            .take()
            .map(|(kind, _hold)| kind)
    }

    /// Makes the held result durable, and waits for what this run queued before it:
    /// what a step does before it starts. The step that finds the result held sends
    /// it and waits for its own ticket; a sibling that starts meanwhile waits for that
    /// step (`flushing`), then for anything queued.
    ///
    /// # Errors
    /// The error that refused it (the run must stop).
    async fn held_durable(&self) -> Result<(), Error> {
        let held = {
            let mut state = lock(&self.inner.state);
            let held = state.held.take();
            if held.is_some() {
                state.flushing += 1;
            }
            held
        };
        if let Some((kind, hold)) = held {
            let _flushing = Flushing(self.clone());
            // Queued (a refusal lasts, so nothing the run appends after it can land
            // without it), and waited for here without a shared ticket: the usual case,
            // one activity after another, pays for no more. A sibling step that starts
            // meanwhile waits for `flushing` to fall back to 0.
            // Only a run with a host holds results.
            let appended = match &self.inner.host {
                Some(host) => host.append_queued(self.inner.key, kind).await.map(drop),
                None => Ok(()),
            };
            drop(hold);
            if let Err(err) = appended {
                // Set while `flushing` is still up, so a waiting sibling sees it.
                self.set_stop(Stop::Fatal(err.clone()));
                return Err(err);
            }
        } else {
            // Boxed, as below: rare, and this future is part of every step's.
            Box::pin(self.wait_flushed()).await;
        }
        let more = {
            let state = lock(&self.inner.state);
            state.held.is_some() || state.queued.is_some()
        };
        if more {
            Box::pin(self.queued_durable()).await
        } else {
            Ok(())
        }
    }

    /// What an activity attempt about to start must wait for: the run's held result,
    /// sent to the store now, or a sibling's wait for one (`wait_flushed`). The attempt's
    /// task waits for it (`Before::settle`), not the run: the commit then wakes that
    /// task, which starts the attempt, and the run is polled once per step, when the
    /// output is in.
    ///
    /// The held result's commit covers everything the run queued before it (the store
    /// commits a run's appends in order, and a refusal lasts). `Err(())` in the one case
    /// left to the step itself (`held_durable`): a result queued without a wait of its
    /// own (`flush_held`), and nothing held.
    fn take_prior(&self) -> Result<Option<Before>, ()> {
        let Some(host) = &self.inner.host else {
            return Ok(None);
        };
        let (kind, hold) = {
            let mut state = lock(&self.inner.state);
            let Some(held) = state.held.take() else {
                return match (state.queued.is_some(), state.flushing > 0) {
                    (true, _) => Err(()),
                    (false, true) => Ok(Some(Before::Sibling(self.clone()))),
                    (false, false) => Ok(None),
                };
            };
            state.flushing += 1;
            held
        };
        // Counted before it is queued: a sibling that starts now waits for it.
        let flushing = Flushing(self.clone());
        Ok(Some(Before::Held {
            ticket: host.append_queued(self.inner.key, kind),
            hold,
            flushing,
        }))
    }

    /// Waits until no step of the run waits for a held result it sent.
    async fn wait_flushed(&self) {
        loop {
            let flushed = self.inner.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            if lock(&self.inner.state).flushing == 0 {
                return;
            }
            flushed.await;
        }
    }

    /// Sends the held result and waits until what this run queued last is durable.
    ///
    /// # Errors
    /// The error that refused it (the run must stop).
    pub(crate) async fn queued_durable(&self) -> Result<(), Error> {
        // A result an attempt's task waits for (`take_prior`) is not in `queued`: waited
        // for here too, so that what follows (the end, a continue-as-new) comes after it.
        if lock(&self.inner.state).flushing > 0 {
            Box::pin(self.wait_flushed()).await;
        }
        self.send_held(None);
        let Some(queued) = lock(&self.inner.state).queued.clone() else {
            return Ok(());
        };
        let appended = queued.clone().await;
        let mut state = lock(&self.inner.state);
        if state
            .queued
            .as_ref()
            .is_some_and(|latest| latest.ptr_eq(&queued))
        {
            state.queued = None;
        }
        appended.map(drop)
    }

    /// Once the run has stopped: waits until the outcomes it sent and never handed over
    /// (`record_outcome`) are durable, so that what follows (a continue-as-new, which
    /// counts the run's events) comes after them.
    ///
    /// # Errors
    /// The error that refused one of them.
    pub(crate) async fn sent_durable(&self) -> Result<(), Error> {
        let sent = std::mem::take(&mut lock(&self.inner.state).sent);
        for ticket in sent {
            ticket.await?;
        }
        Ok(())
    }

    /// Waits until what the run sent without waiting for it (`send_ahead`) is durable,
    /// without sending the held result, which may go with the run's end.
    ///
    /// # Errors
    /// The error that refused it (the run must not end).
    pub(crate) async fn sent_ahead_durable(&self) -> Result<(), Error> {
        let queued = lock(&self.inner.state).queued.clone();
        match queued {
            Some(queued) => queued.await.map(drop),
            None => Ok(()),
        }
    }

    fn changed(&self, state: &mut CtxState) {
        let blocked = state.blocked().is_some();
        if blocked != state.was_blocked {
            state.was_blocked = blocked;
            self.inner.state_changed.notify_waiters();
        }
    }

    /// Marks the run busy until the guard is dropped.
    fn busy(&self) -> BusyGuard<'_> {
        let mut state = lock(&self.inner.state);
        state.busy += 1;
        self.changed(&mut state);
        BusyGuard(self)
    }

    /// Runs the live part of step `step`. If the workflow drops the step's future before
    /// it finishes (a `select!` it lost, the rest of a `try_join!` after an error), the
    /// step is recorded as abandoned, so replay never lets it win or run again. Dropping
    /// the whole run (eviction, a stop, shutdown) abandons nothing.
    fn live<'a, T: 'a>(
        &'a self,
        step: StepNo,
        work: impl Future<Output = T> + 'a,
    ) -> impl Future<Output = T> + 'a {
        use futures::FutureExt as _;
        let guard = LiveGuard {
            ctx: self,
            step,
            armed: true,
        };
        // A combinator polls `work` in place: an `async fn` kept it twice, as its
        // argument and as the future it awaited (the step's whole state, boxed per step).
        work.then(move |out| {
            // A sibling branch stopped the run meanwhile (a continue-as-new, a failure):
            // the workflow sees nothing more. The step stays unfinished, so its guard,
            // dropped with the run, gives back a signal it took (a hand-over then
            // carries it) instead of the workflow taking it on a path that cannot go on.
            if lock(&guard.ctx.inner.state).stop.is_some() {
                return futures::future::Either::Right(async move {
                    let _unfinished = guard;
                    std::future::pending().await
                });
            }
            guard.finish();
            futures::future::Either::Left(std::future::ready(out))
        })
    }

    /// Keeps the run in memory until the guard is dropped.
    fn pinned(&self) -> PinGuard<'_> {
        let mut state = lock(&self.inner.state);
        state.pinned += 1;
        self.changed(&mut state);
        PinGuard(self)
    }

    /// Registers a durable wait of `step` until the guard is dropped.
    fn waiting(&self, step: StepNo, deadline_ms: Option<u64>) -> WaitGuard<'_> {
        let mut state = lock(&self.inner.state);
        state.waits.insert(step, deadline_ms);
        self.changed(&mut state);
        WaitGuard(self, step)
    }

    /// `Some(earliest deadline)` when the run does nothing but wait durably (no activity
    /// running, no append in flight): it may then be evicted from memory.
    pub(crate) fn blocked(&self) -> Option<Option<u64>> {
        lock(&self.inner.state).blocked()
    }

    /// Resolves when `blocked()` may have changed.
    pub(crate) fn state_changed(&self) -> Notified<'_> {
        self.inner.state_changed.notified()
    }

    #[cfg(all(test, cairn_loom))]
    pub(crate) fn inbox(&self) -> &Arc<Inbox> {
        &self.inner.inbox
    }

    /// Remembers the inbox's mark at the start of a poll of the workflow.
    pub(crate) fn note_poll(&self, waker: &Waker) {
        let mark = self.inner.inbox.begin_poll();
        let mut state = lock(&self.inner.state);
        state.poll_mark = mark;
        // Kept for `refused`: a refusal that comes from a task must reach the driver.
        if !state
            .driver
            .as_ref()
            .is_some_and(|held| held.will_wake(waker))
        {
            state.driver = Some(waker.clone());
        }
    }

    /// A poll of the workflow stayed pending: whether the driver must poll once more to
    /// learn if a signal wait polled in it is still awaited (see `Inbox::confirm_poll`).
    pub(crate) fn poll_done(&self) -> bool {
        self.inner.inbox.confirm_poll()
    }

    /// The inbox's mark the workflow was last polled with: the events and arrivals that
    /// poll could have seen.
    pub(crate) fn poll_mark(&self) -> InboxMark {
        lock(&self.inner.state).poll_mark
    }

    /// What the next run of a continue-as-new inherits: the history's length now, and
    /// the signals and cancellation no step took, read together.
    pub(crate) fn hand_over(&self) -> HandOver {
        let cancel_delivered = lock(&self.inner.state).cancel_delivered;
        self.inner
            .inbox
            .hand_over(cancel_delivered, self.inner.history.run)
    }

    /// Whether recorded outcomes are still to be handed back (see `unstick`).
    pub(crate) fn releasing(&self) -> bool {
        let total = self.inner.history.outcomes();
        total > 0 && lock(&self.inner.state).released < total
    }

    /// The place among the recorded outcomes that must be handed back for `rank` to be:
    /// its own, or with `None` the last one.
    fn due(&self, rank: Option<usize>) -> usize {
        rank.unwrap_or_else(|| self.inner.history.outcomes().saturating_sub(1))
    }

    /// Whether the outcome of `rank` (every outcome, with `None`) is handed back.
    fn is_released(&self, rank: Option<usize>) -> bool {
        lock(&self.inner.state).released > self.due(rank)
    }

    /// Resolves once the outcome of `rank` (or every outcome, with `None`) is handed back.
    fn released(&self, rank: Option<usize>) -> impl Future<Output = ()> + '_ {
        self.turn(Turn::Recorded(self.due(rank)))
    }

    /// Resolves once the outcome at `turn` is handed over.
    fn turn(&self, turn: Turn) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut state = lock(&self.inner.state);
            let come = match turn {
                Turn::Recorded(due) => state.released > due,
                Turn::Live(rank) => state.live_released > rank,
            };
            if come {
                return Poll::Ready(());
            }
            let waiting = state.release_waiters.entry(turn).or_default();
            if !waiting.iter().any(|waker| waker.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }

    /// Waits, as step `step`, until the outcome of `rank` (every recorded outcome, with
    /// `None`) is handed back. Dropped meanwhile by the workflow, the step lost a race (a
    /// sibling's outcome came first) and is recorded as abandoned, as it would be live;
    /// never returns once a sibling stopped the run, which then drops it as its own.
    async fn await_turn(&self, step: StepNo, rank: Option<usize>) {
        let guard = LiveGuard {
            ctx: self,
            step,
            armed: true,
        };
        self.released(rank).await;
        if lock(&self.inner.state).stop.is_some() {
            return std::future::pending().await;
        }
        guard.finish();
    }

    /// Decides a step against history; parks the instance on divergence.
    fn decide<'a>(
        &'a self,
        step: StepNo,
        request: StepRequest<'a>,
    ) -> impl Future<Output = Decision<'a>> + 'a {
        self.decide_then(step, request, false)
    }

    /// As `decide`; with `attempt`, for a step that starts an attempt: what the run has
    /// in flight is not waited for here, but by the attempt before it starts
    /// (`take_prior`).
    async fn decide_then(
        &self,
        step: StepNo,
        request: StepRequest<'_>,
        attempt: bool,
    ) -> Decision<'_> {
        // A branch polled after a sibling stopped the run (a divergence, a hand-over, an
        // always-replay rebuild) in the same poll must not start anything: its work
        // would be abandoned, or worse, done by code that no longer matches the record.
        let (stopped, queued) = {
            let state = lock(&self.inner.state);
            (
                state.stop.is_some(),
                !attempt && (state.held.is_some() || state.queued.is_some() || state.flushing > 0),
            )
        };
        if stopped {
            return std::future::pending().await;
        }
        // Nothing starts on a result that is not durable yet (see `hold_result`).
        if queued {
            // A step dropped while it waits here has lost a race (a sibling won with a
            // result held meanwhile): recorded as abandoned like one dropped later, or a
            // replay, which does not wait, could start it before its sibling resolves
            // and do what the recorded run never did (a notification, a child, a task).
            // Not a step the recorded run finished or dropped: it starts nothing.
            let open = !self.inner.history.is_abandoned(step)
                && matches!(
                    self.inner.history.check(step, request),
                    Ok(Decision::Run { .. })
                );
            // Made only for an open step: a guard made and dropped at once records an
            // abandonment (so not `then_some`, which builds its argument either way).
            let guard = open.then(|| LiveGuard {
                ctx: self,
                step,
                armed: true,
            });
            let waited = self.held_durable().await;
            if let Some(guard) = guard {
                guard.finish();
            }
            if let Err(err) = waited {
                return self.abort(err).await;
            }
            // A sibling may have stopped the run while this step waited.
            if lock(&self.inner.state).stop.is_some() {
                return std::future::pending().await;
            }
        }
        self.inner.inbox.progressed();
        let decision = self.inner.history.check(step, request);
        if decision.is_ok() && self.inner.history.is_abandoned(step) {
            // The recorded run dropped this step unfinished (it lost a race): it must not
            // win now, so it never resolves, whatever it recorded.
            return std::future::pending().await;
        }
        match decision {
            Ok(Decision::Run {
                failed_attempts,
                deadline_ms,
            }) => {
                if self.inner.host.is_none() {
                    // Offline, a step the history does not hold never resolves. It is not
                    // a divergence yet: it may be the branch of a `select!` that lost
                    // before it was ever polled (the recorded run took the other branch
                    // on its first poll), and the winner resolves now. The replayer
                    // judges once the workflow can go no further (`beyond_history`).
                    lock(&self.inner.state)
                        .beyond
                        .entry(step)
                        .or_insert_with(|| requested(request));
                    // Dropped (a `select!` went on with its other branch), the step is
                    // not where the code waits.
                    let _waiting = BeyondGuard { ctx: self, step };
                    return std::future::pending().await;
                }
                // Nothing new starts before the recorded run is caught up with: the
                // step's own outcome, live, comes after every recorded one.
                if self.releasing() {
                    self.await_turn(step, None).await;
                }
                Decision::Run {
                    failed_attempts,
                    deadline_ms,
                }
            }
            Ok(replay) => {
                let rank = self.inner.history.outcome_rank(step);
                if self.releasing() && !self.is_released(rank) {
                    // Until it is handed back, the outcome is not the workflow's: a
                    // signal or cancellation it took goes back if the step is dropped
                    // (with its abandonment if the workflow dropped it, in memory if
                    // the run ended, so a hand-over carries it).
                    {
                        let mut state = lock(&self.inner.state);
                        match replay {
                            Decision::Replay(RecordedOutcome::Signal { signal_seq, .. }) => {
                                state.reserved.insert(step, *signal_seq);
                            }
                            Decision::Replay(RecordedOutcome::Cancelled { .. }) => {
                                state.cancel_holder = Some(step);
                            }
                            _ => {}
                        }
                    }
                    self.await_turn(step, rank).await;
                }
                replay
            }
            Err(divergence) => self.abort(divergence.into()).await,
        }
    }

    /// Runs (or replays) activity step `step`.
    ///
    /// `attempt` is called once per attempt with the recorded input and must start a
    /// fresh execution of the activity. The step is acknowledged only after its outcome
    /// is durable; failed attempts are recorded too, and retries follow `options.retry`.
    /// `decode` turns the output (recorded or just made) into the workflow's value; if it
    /// fails, the run is parked with its error (the outcome stays recorded).
    ///
    /// # Errors
    /// The step's failure: its last attempt's error once retries are spent or the error
    /// is terminal, or its cancellation.
    ///
    /// # Cancel safety
    /// Dropped by the workflow once started (a `select!` it lost), the step is recorded
    /// as abandoned (`live`): replay never runs it again or lets it win. Dropped with the
    /// whole run (eviction, a stop, shutdown, a crash), the attempt in flight runs again
    /// when the instance is next replayed (activities are at-least-once).
    // Not an `async fn` on purpose: see the comment in the body.
    #[allow(clippy::manual_async_fn)]
    pub fn activity<F, Fut, D, T>(
        self,
        step: StepNo,
        name: &'static str,
        mut input: Payload,
        options: ActivityOptions,
        mut attempt: F,
        decode: D,
    ) -> impl Future<Output = Result<T, ActivityFailure>>
    where
        F: FnMut(ActivityContext, &Payload) -> Fut,
        Fut: Future<Output = Result<Payload, ActivityError>> + Send + 'static,
        D: FnOnce(&WorkflowContext, &Payload) -> Result<T, Error>,
    {
        // Owned, so that the step's future is the whole step, with nothing wrapped
        // around it to hold the context and options (the SDK boxes it per step). Not an
        // `async fn`: its arguments would be kept twice, as captures and as locals.
        async move {
            let this = &self;
            let options = &options;
            let request = StepRequest {
                kind: StepKind::Activity,
                name,
                input: Some(&input),
            };
            let (failed_attempts, next_attempt_due_ms) =
                match this.decide_then(step, request, true).await {
                    Decision::Replay(RecordedOutcome::ActivityCompleted { output, .. }) => {
                        // No await while the value or its error is held: either would take room
                        // in every step's future (as would a `match` awaiting in an arm).
                        match decode(this, output) {
                            Ok(value) => return Ok(value),
                            Err(err) => drop(this.abort::<()>(err)),
                        }
                        return std::future::pending().await;
                    }
                    Decision::Replay(RecordedOutcome::ActivityFailed { error, attempt }) => {
                        return Err(ActivityFailure::from_record(name, step, *attempt, error))
                    }
                    Decision::Replay(RecordedOutcome::Cancelled { reason }) => {
                        return Err(ActivityFailure::cancelled(name, step, 0, reason))
                    }
                    Decision::Replay(_) => {
                        let err = this.mismatched_outcome(step, "an activity");
                        return this.abort(err).await;
                    }
                    Decision::Run {
                        failed_attempts,
                        deadline_ms,
                    } => (failed_attempts, deadline_ms),
                };
            this.live(step, async move {
                if let Some(reason) = this.take_cancel(step, StepKind::Activity, name).await {
                    return Err(ActivityFailure::cancelled(
                        name,
                        step,
                        failed_attempts,
                        &reason,
                    ));
                }
                // Attempts and backoff keep the run in memory: an evicted run would lose the
                // backoff and could not run the attempt.
                let busy = this.busy();
                if let (true, Some(due_ms)) = (failed_attempts > 0, next_attempt_due_ms) {
                    // A restart (or always-replay) between a recorded failure and the next attempt
                    // waits out what is left of the recorded backoff, on the runtime clock that
                    // stamped the failure, and never longer than the policy's backoff now.
                    let now_ms = this.inner.clock.now_ms();
                    let left = activity::remaining_backoff(
                        due_ms,
                        now_ms,
                        failed_attempts,
                        &options.retry,
                    );
                    if !left.is_zero() {
                        // Boxed: a rare path whose timer and select would otherwise sit in every
                        // step's future.
                        Box::pin(this.backoff(left, step, name, failed_attempts, None)).await?;
                    }
                }
                let mut number = failed_attempts + 1;
                loop {
                    // Being handed over to another host: the step in flight (if any) was
                    // recorded, and no new attempt starts here; the next owner runs it.
                    if let Some(host) = &this.inner.host {
                        if host.handing_over(this.inner.key) {
                            this.set_stop(Stop::HandedOver);
                            return std::future::pending().await;
                        }
                    }
                    // Virtual time does not skip while an attempt runs or its outcome is being
                    // recorded (see `Clock::hold`); a retry releases it once its backoff is set.
                    let held = this.inner.clock.hold();
                    // In a block: what only the attempt needs (its context, its span, the
                    // deadline, the join result) is gone before the outcome is recorded, so it
                    // takes no room in the step's future at the record's await. The step's
                    // future is boxed per step, and every byte over glibc's 1 KiB fast size
                    // makes that allocation a slow one.
                    let (record, then) = {
                        let next = {
                            let (span, mut running) = {
                                // What the attempt waits for before it starts: the previous step's
                                // result, if it is still held (the usual case: `decide_then` left
                                // it).
                                let prior = match this.take_prior() {
                                    Ok(prior) => prior,
                                    Err(()) => {
                                        // Waited for here, as every other step kind does. Boxed:
                                        // rare.
                                        if let Err(err) = Box::pin(this.held_durable()).await {
                                            return this.abort(err).await;
                                        }
                                        // A sibling may have stopped the run meanwhile.
                                        if lock(&this.inner.state).stop.is_some() {
                                            return std::future::pending().await;
                                        }
                                        None
                                    }
                                };
                                let ctx = ActivityContext {
                                    instance_id: this.inner.names.0.clone(),
                                    workflow_type: this.inner.names.1.clone(),
                                    activity: this.activity_name(name),
                                    step,
                                    attempt: number,
                                    run: this.inner.history.run,
                                    app: this
                                        .inner
                                        .host
                                        .as_ref()
                                        .map(|host| host.app_state())
                                        .unwrap_or_default(),
                                };
                                let span = tracing::info_span!(
                                    "cairn.activity",
                                    instance = %ctx.instance_id,
                                    workflow_type = %ctx.workflow_type,
                                    step,
                                    activity = name,
                                    attempt = number,
                                    outcome = tracing::field::Empty,
                                );
                                // Its own task: an activity that blocks its thread cannot keep this
                                // run from seeing its deadline or a cancellation, and one that
                                // outlives them is dropped. The task waits for the previous
                                // result's commit, if it is not durable yet, before it starts it.
                                let running = this.inner.attempts.start(
                                    &this.inner.clock,
                                    prior.map(Before::settle),
                                    AssertUnwindSafe(attempt(ctx, &input))
                                        .catch_unwind()
                                        .instrument(span.clone()),
                                    options.start_to_close,
                                );
                                (span, running)
                            };
                            // A cancellation abandons the attempt in flight (the activity may have had
                            // part of its effect; its idempotency key lets compensation find it).
                            let attempted = loop {
                                // In a block: neither the notice nor what the wait returned is
                                // kept in the step's future while the cancellation is taken.
                                {
                                    let cancelled = this.cancel_requested();
                                    let mut cancelled = std::pin::pin!(cancelled);
                                    // The attempt first: an output that is in counts even if a
                                    // cancellation came in the same instant. The cancellation's
                                    // notice is only registered once the attempt is found not done.
                                    let mut early = None;
                                    if let Some(attempted) = std::future::poll_fn(|cx| {
                                        if early.is_none() {
                                            if let Poll::Ready(attempted) =
                                                Pin::new(&mut running).poll(cx)
                                            {
                                                early = Some(attempted);
                                            }
                                        }
                                        if early.is_some() {
                                            // A held output is taken where a replay hands
                                            // it back: nothing recorded before it is
                                            // pending. Asked only once it is in, so the
                                            // usual step costs no poll of the workflow
                                            // more; kept here meanwhile.
                                            if this.holds_results() && !this.take_turn(cx) {
                                                return Poll::Pending;
                                            }
                                            return Poll::Ready(early.take());
                                        }
                                        cancelled.as_mut().poll(cx).map(|()| None)
                                    })
                                    .await
                                    {
                                        break attempted;
                                    }
                                }
                                if let Some(reason) =
                                    this.take_cancel(step, StepKind::Activity, name).await
                                {
                                    return Err(ActivityFailure::cancelled(
                                        name, step, number, &reason,
                                    ));
                                }
                            };
                            drop(running);
                            // `None`: the previous step's result was refused; the run stops
                            // (`settle` set it), and this step records nothing.
                            let Some((result, seconds)) = attempt_outcome(attempted, options)
                            else {
                                break;
                            };
                            let call = activity::Call {
                                step,
                                name,
                                retry: &options.retry,
                            };
                            let after = activity::after_attempt(call, input, number, result);
                            let outcome = match &after {
                                AfterAttempt::Completed { .. } => "completed",
                                AfterAttempt::Retry { .. } => "retried",
                                AfterAttempt::Failed { .. } => "failed",
                            };
                            span.record("outcome", outcome);
                            this.observe(Observation::Attempt {
                                workflow_type: this.workflow_type(),
                                activity: name,
                                outcome,
                                seconds,
                            });
                            match after {
                                AfterAttempt::Completed(done) => Next::Completed(done),
                                AfterAttempt::Failed { record, failure } => {
                                    Next::Failed(record, Box::new(failure))
                                }
                                AfterAttempt::Retry {
                                    record,
                                    backoff,
                                    input,
                                } => Next::Retry(record, backoff, input),
                            }
                        };
                        // No await from here to the end of this block, and `next` ends with it: a
                        // local kept across more than one await gets room of its own in the step's
                        // future, and so does one borrowed (or partly moved) before an await.
                        match next {
                            Next::Completed(done) => {
                                if this.holds_results() {
                                    drop(busy);
                                    match this.complete_held(done, held, decode) {
                                        Some(value) => return Ok(value),
                                        None => break,
                                    }
                                }
                                let output = done.output().clone();
                                (done.into_record(), Then::Decode(output))
                            }
                            Next::Failed(record, failure) => (record, Then::Fail(failure)),
                            Next::Retry(record, backoff, handed_back) => {
                                (record, Then::Retry(backoff, handed_back))
                            }
                        }
                    };
                    match then {
                        Then::Decode(output) => {
                            // Rare (see `hold_result`): recorded and waited for, then decoded from a
                            // copy. Boxed, so that every step's future has no room for it.
                            drop(busy);
                            Box::pin(this.record_outcome(record)).await;
                            drop(held);
                            match decode(this, &output) {
                                Ok(value) => return Ok(value),
                                Err(err) => drop(this.abort::<()>(err)),
                            }
                            break;
                        }
                        Then::Fail(failure) => {
                            drop(busy);
                            // Boxed, as above: a failed step is the rare path.
                            Box::pin(this.record_outcome(record)).await;
                            drop(held);
                            return Err(*failure);
                        }
                        Then::Retry(backoff, handed_back) => {
                            input = handed_back;
                            if let Err(err) = this.append(record).await {
                                return this.abort(err).await;
                            }
                            Box::pin(this.backoff(backoff, step, name, number, Some(held))).await?;
                            number += 1;
                        }
                    }
                }
                // The step parks: the run stopped, or its output did not decode (the stop is set).
                std::future::pending().await
            })
            .await
        }
    }

    /// Records (or replays) a value produced outside the workflow's determinism: the
    /// clock, randomness, a uuid, or a user side effect. `produce` runs only when the step
    /// is not recorded yet, and the value is returned only once it is durable.
    ///
    /// # Cancel safety
    /// Dropped by the workflow after its first poll, the step is recorded as abandoned and
    /// never resolves on replay: a value sent before the drop stays recorded, unused.
    /// Dropped with the whole run before the value is durable, it is produced again when
    /// the run is next replayed.
    pub async fn recorded_value<F>(&self, step: StepNo, label: &str, produce: F) -> Payload
    where
        F: FnOnce() -> Result<Payload, Error>,
    {
        let request = StepRequest {
            kind: StepKind::SideEffect,
            name: label,
            input: None,
        };
        match self.decide(step, request).await {
            Decision::Replay(RecordedOutcome::Value(value)) => value.clone(),
            Decision::Replay(_) => {
                let err = self.mismatched_outcome(step, "a side effect");
                self.abort(err).await
            }
            Decision::Run { .. } => {
                self.live(step, async move {
                    let value = match produce() {
                        Ok(value) => value,
                        Err(err) => return self.abort(err).await,
                    };
                    self.record_outcome(value::recorded(step, label, value.clone()))
                        .await;
                    value
                })
                .await
            }
        }
    }
}

impl WorkflowContext {
    /// The reason of a cancellation that was requested and no step has taken yet.
    fn pending_cancel(&self) -> Option<String> {
        if lock(&self.inner.state).cancel_delivered {
            return None;
        }
        self.inner.inbox.cancel_reason()
    }

    /// Resolves once a cancellation is pending (requested and not yet taken by a step).
    async fn cancel_requested(&self) {
        loop {
            let arrived = self.inner.inbox.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.pending_cancel().is_some() {
                return;
            }
            arrived.await;
        }
    }

    /// Ends step `step` by the pending cancellation, if there is one and no other step
    /// took it: records `StepCancelled` and returns the reason.
    async fn take_cancel(&self, step: StepNo, kind: StepKind, name: &str) -> Option<String> {
        let reason = {
            let mut state = lock(&self.inner.state);
            if state.cancel_delivered {
                return None;
            }
            let reason = self.inner.inbox.cancel_reason()?;
            state.cancel_delivered = true;
            state.cancel_holder = Some(step);
            reason
        };
        let cancelled = EventKind::StepCancelled {
            step,
            step_kind: kind.label().to_owned(),
            name: name.to_owned(),
            reason: reason.clone(),
        };
        // Boxed: every step checks for a cancellation, few record one, and the record's
        // state would otherwise sit inline in every step's future.
        Box::pin(self.record_outcome(cancelled)).await;
        Some(reason)
    }

    /// Waits `delay` before attempt `attempt + 1` of activity step `step`; a cancellation
    /// ends the wait and the step. `held` (an attempt's clock hold) is released once the
    /// backoff's timer is set.
    async fn backoff(
        &self,
        delay: Duration,
        step: StepNo,
        name: &str,
        attempt: u32,
        held: Option<ClockHold>,
    ) -> Result<(), ActivityFailure> {
        let until_ms = self.inner.clock.now_ms().saturating_add(millis(delay));
        let sleep = self.inner.clock.sleep_until(until_ms);
        // The backoff is a timer now: time may skip to it.
        drop(held);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return Ok(()),
                () = self.cancel_requested() => {
                    if let Some(reason) = self.take_cancel(step, StepKind::Activity, name).await {
                        return Err(ActivityFailure::cancelled(name, step, attempt, &reason));
                    }
                }
            }
        }
    }

    fn mismatched_outcome(&self, step: StepNo, what: &str) -> Error {
        Error::Corrupt {
            location: format!("history of instance `{}`", self.instance_id()),
            message: format!("step {step} is {what} but holds the outcome of another kind of step"),
        }
    }

    /// Decides a version marker, at the moment `ctx.patched` is *called* (so concurrent
    /// calls are numbered in program order): `true` when this run takes the code path
    /// added by patch `patch_id` (new instances, and old ones that reach it past their
    /// recorded history), `false` when history was recorded before the patch existed at
    /// this point, or when an audit replay finds no marker. The step number is consumed
    /// only for `true`; the returned step then needs [`WorkflowContext::record_patch`].
    pub fn decide_patch(&self, patch_id: &str) -> Result<PatchPlan, Error> {
        let mut state = lock(&self.inner.state);
        let step = state.next_step;
        let decision = self
            .inner
            .history
            .patch(step, patch_id)
            .map_err(Error::from)?;
        Ok(match decision {
            PatchDecision::OldPath => PatchPlan::OldPath,
            // An audit replay runs nothing new: where the record has no marker, the
            // recorded run took the old path.
            PatchDecision::Live if self.inner.host.is_none() => PatchPlan::OldPath,
            PatchDecision::Recorded => {
                state.next_step += 1;
                PatchPlan::Recorded
            }
            PatchDecision::Live => {
                state.next_step += 1;
                PatchPlan::Record(step)
            }
        })
    }

    /// Records the marker of patch `patch_id` at `step` before the new path runs.
    ///
    /// The workflow goes on at once, as a replay does once the marker is recorded: a
    /// wait for its commit would let outcomes of sibling branches be handed over first.
    /// Every later step waits for it instead, as for a held result (`queued`).
    ///
    /// # Cancel safety
    /// The marker is sent at the first poll that finds the recorded run caught up with;
    /// dropped before that, it is recorded on replay.
    pub async fn record_patch(&self, step: StepNo, patch_id: &str) {
        // A marker is new work like any step the history lacks: not before the recorded
        // run is caught up with.
        if self.releasing() {
            self.released(None).await;
        }
        let Some(host) = &self.inner.host else {
            return;
        };
        // As in `append`: nothing after a sibling stopped the run, and a result held in
        // this poll goes first.
        if lock(&self.inner.state).stop.is_some() {
            return std::future::pending().await;
        }
        self.flush_held(None);
        self.send_ahead(host, patch::marker(step, patch_id));
    }

    /// Publishes search attributes at step `step` (recorded, then indexed so hosts can
    /// list instances by them without replaying). Replay compares the values like an
    /// activity's input.
    ///
    /// # Cancel safety
    /// Dropped by the workflow after its first poll, the step is recorded as abandoned:
    /// attributes sent before the drop stay recorded and indexed. Dropped with the whole
    /// run before they are durable, they are recorded when the run is next replayed.
    pub async fn set_attributes(&self, step: StepNo, attributes: Vec<(String, AttrValue)>) {
        let input = attributes::identity(&attributes);
        let request = StepRequest {
            kind: StepKind::Attributes,
            name: "attributes",
            input: Some(&input),
        };
        match self.decide(step, request).await {
            Decision::Replay(RecordedOutcome::AttributesSet) => {}
            Decision::Replay(_) => {
                let err = self.mismatched_outcome(step, "an attribute update");
                self.abort(err).await
            }
            Decision::Run { .. } => {
                self.live(step, self.record_outcome(attributes::set(step, attributes)))
                    .await;
            }
        }
    }

    /// Runs child workflow `child_id` of type `workflow_type` as step `step` and waits for
    /// its outcome. The child is an ordinary instance (its own history, listed, queried);
    /// starting is idempotent, so a restart between starting it and recording that finds
    /// the same child. A cancellation of the parent during the wait is passed on to the
    /// child and ends the step with [`Cancelled`].
    ///
    /// # Cancel safety
    /// Dropping the future stops waiting; the child keeps running.
    pub async fn child(
        &self,
        step: StepNo,
        workflow_type: &str,
        child_id: &str,
        input: Payload,
    ) -> Result<ChildOutcome, Cancelled> {
        let identity = child::identity(child_id, &input);
        let request = StepRequest {
            kind: StepKind::Child,
            name: workflow_type,
            input: Some(&identity),
        };
        match self.decide(step, request).await {
            Decision::Replay(RecordedOutcome::Child(outcome)) => return Ok(outcome.clone()),
            Decision::Replay(RecordedOutcome::Cancelled { reason }) => {
                return Err(Cancelled {
                    step,
                    reason: reason.clone(),
                })
            }
            Decision::Replay(_) => {
                let err = self.mismatched_outcome(step, "a child workflow");
                return self.abort(err).await;
            }
            Decision::Run { .. } => {}
        }
        self.live(step, async move {
        let Some(host) = self.inner.host.clone() else {
            // `decide` never answers Run in replay-only mode.
            return std::future::pending().await;
        };
        let already_started = self.inner.history.step(step).is_some();
        if already_started {
            // Started in an earlier run: the child must hear of it too, and before the
            // step records the cancellation as taken (see the wait below).
            if let Some(reason) = self.pending_cancel() {
                let _ = host.cancel(child_id, &reason).await;
            }
        }
        if let Some(reason) = self.take_cancel(step, StepKind::Child, workflow_type).await {
            return Err(Cancelled { step, reason });
        }
        if !already_started {
            // Busy while the child is being started, so the run is not evicted meanwhile.
            let busy = self.busy();
            let started = host
                .start_child(workflow_type, child_id, input.clone(), self.inner.key)
                .await;
            if let Err(err) = started {
                return self.abort(err).await;
            }
            drop(busy);
            self.record(child::started(step, workflow_type, child_id, input))
                .await;
        }
        // A child this run did not start (the id existed already) names another parent,
        // or none: its end wakes only runs in memory, so this one stays resident.
        let ours = match host.is_child_of(child_id, self.inner.key).await {
            Ok(ours) => ours,
            Err(err) => return self.abort(err).await,
        };
        let _pin = (!ours).then(|| self.pinned());
        let waiting = self.waiting(step, None);
        let wait = host.wait(child_id);
        tokio::pin!(wait);
        let finished = loop {
            tokio::select! {
                finished = &mut wait => break finished,
                () = self.cancel_requested() => {
                    // Passed on before this step records it as taken: a crash in between
                    // replays into this wait again and the child hears it twice, which is
                    // harmless; the other order could record a cancellation the child never
                    // heard of. A child that already finished has nothing to cancel.
                    if let Some(reason) = self.pending_cancel() {
                        let _ = host.cancel(child_id, &reason).await;
                    }
                    if let Some(reason) = self.take_cancel(step, StepKind::Child, workflow_type).await {
                        return Err(Cancelled { step, reason });
                    }
                }
            }
        };
        drop(waiting);
        let outcome = match finished {
            Ok(Outcome::Completed(output)) => ChildOutcome::Completed(output),
            Ok(Outcome::Failed(error)) => ChildOutcome::Failed(error),
            Ok(Outcome::Terminated(reason)) => ChildOutcome::Terminated(reason),
            // `Engine::wait` follows continued runs to the end of the chain.
            Ok(Outcome::ContinuedAsNew(_)) => {
                let err = Error::Corrupt {
                    location: format!("child `{child_id}`"),
                    message: "waiting for it returned a hand-over instead of a result".into(),
                };
                return self.abort(err).await;
            }
            Err(err) => return self.abort(err).await,
        };
        self.record_outcome(child::completed(step, child_id, outcome.clone()))
            .await;
        Ok(outcome)
        })
        .await
    }

    /// A durable timer: step `step` resolves once the runtime clock reaches `fire_at_ms`.
    /// The deadline is recorded before waiting, so after a restart the timer keeps its
    /// original deadline (and fires at once if it passed while the host was down);
    /// `fire_at_ms` is only used the first time.
    ///
    /// # Cancel safety
    /// Dropping the future stops waiting. A firing already sent (the drop came while it
    /// waited for its turn) stays recorded, and the step's abandonment after it keeps
    /// replay from ever resolving it.
    pub async fn sleep_until(&self, step: StepNo, fire_at_ms: u64) -> Result<(), Cancelled> {
        let request = StepRequest {
            kind: StepKind::Timer,
            name: "sleep",
            input: None,
        };
        let recorded_deadline = match self.decide(step, request).await {
            Decision::Replay(RecordedOutcome::TimerFired) => return Ok(()),
            Decision::Replay(RecordedOutcome::Cancelled { reason }) => {
                return Err(Cancelled {
                    step,
                    reason: reason.clone(),
                })
            }
            Decision::Replay(_) => {
                let err = self.mismatched_outcome(step, "a timer");
                return self.abort(err).await;
            }
            Decision::Run { deadline_ms, .. } => deadline_ms,
        };
        self.live(step, async move {
        let (fire_at_ms, start) = timer::deadline(recorded_deadline, step, fire_at_ms);
        if let Some(start) = start {
            self.record(start).await;
        }
        if let Some(reason) = self.take_cancel(step, StepKind::Timer, "sleep").await {
            return Err(Cancelled { step, reason });
        }
        let waiting = self.waiting(step, Some(fire_at_ms));
        let timer = self.inner.clock.sleep_until(fire_at_ms);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                () = &mut timer => break,
                () = self.cancel_requested() => {
                    if let Some(reason) = self.take_cancel(step, StepKind::Timer, "sleep").await {
                        return Err(Cancelled { step, reason });
                    }
                }
            }
        }
        drop(waiting);
        self.observe(Observation::TimerFired {
            late_ms: self.inner.clock.now_ms().saturating_sub(fire_at_ms),
        });
        self.record_outcome(timer::fired(step)).await;
        Ok(())
        })
        .await
    }

    /// Waits at step `step` for the oldest undelivered signal called `name`, or until the
    /// runtime clock reaches `deadline_ms` (`None`: no deadline). Returns the signal's
    /// body, or `None` on timeout. Which of the two happened is recorded, so replay takes
    /// the same branch; a signal is delivered to exactly one wait.
    ///
    /// # Cancel safety
    /// Dropping the future before it resolves leaves the signal for the next wait: a
    /// delivery already recorded is given back by the step's abandonment, or, when the
    /// whole run is dropped, in memory (a hand-over then carries it).
    pub async fn wait_signal(
        &self,
        step: StepNo,
        name: &str,
        deadline_ms: Option<u64>,
    ) -> Result<Option<Payload>, Cancelled> {
        let taken = self.wait_keyed_signal(step, name, deadline_ms).await?;
        Ok(taken.map(|(payload, _)| payload))
    }

    /// As [`WorkflowContext::wait_signal`], and also returns the dedupe key the signal was
    /// sent with (an update's request carries its update id there).
    ///
    /// # Cancel safety
    /// As [`WorkflowContext::wait_signal`].
    pub async fn wait_keyed_signal(
        &self,
        step: StepNo,
        name: &str,
        deadline_ms: Option<u64>,
    ) -> Result<Option<(Payload, Option<String>)>, Cancelled> {
        let request = StepRequest {
            kind: StepKind::Signal,
            name,
            input: None,
        };
        let recorded_deadline = match self.decide(step, request).await {
            Decision::Replay(RecordedOutcome::Signal {
                payload,
                signal_seq,
            }) => {
                let key = self
                    .inner
                    .history
                    .signals()
                    .get(signal_seq)
                    .and_then(|signal| signal.key.clone());
                return Ok(Some((payload.clone(), key)));
            }
            Decision::Replay(RecordedOutcome::TimedOut) => return Ok(None),
            Decision::Replay(RecordedOutcome::Cancelled { reason }) => {
                return Err(Cancelled {
                    step,
                    reason: reason.clone(),
                })
            }
            Decision::Replay(_) => {
                let err = self.mismatched_outcome(step, "a signal wait");
                return self.abort(err).await;
            }
            Decision::Run { deadline_ms, .. } => deadline_ms,
        };
        let inbox = &self.inner.inbox;
        let wait = std::pin::pin!(self.live(step, async move {
            let (deadline_ms, start) = signal::deadline(recorded_deadline, step, name, deadline_ms);
            if let Some(start) = start {
                self.record(start).await;
            }
            if let Some(reason) = self.take_cancel(step, StepKind::Signal, name).await {
                return Err(Cancelled { step, reason });
            }
            let inbox = &self.inner.inbox;
            let _waiting = self.waiting(step, deadline_ms);
            let _message = inbox.awaiting_message();
            let mut deadline = deadline_ms.map(|at| self.inner.clock.sleep_until(at));
            loop {
                let arrived = inbox.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                // A sibling branch stopped the run in this poll (a continue-as-new, say):
                // a signal taken now could never be recorded, and the hand-over, which
                // carries only what is not taken, would lose it.
                if lock(&self.inner.state).stop.is_some() {
                    return std::future::pending().await;
                }
                if let Some((signal_seq, payload, key)) = inbox.take(name) {
                    let delivered = signal::delivered(step, name, signal_seq);
                    // Should the workflow drop this wait now (it lost a `select!`), the
                    // signal goes back to the inbox with the step's abandonment.
                    // Kept until the workflow has the body (`LiveGuard::finish`).
                    lock(&self.inner.state).reserved.insert(step, signal_seq);
                    // Refused, the run stops, and the step's guard, dropped with it,
                    // gives the signal back in memory.
                    self.record_outcome(delivered).await;
                    return Ok(Some((payload, key)));
                }
                // Signals win over a cancellation that arrives in the same instant: a signal
                // taken is recorded as delivered and must be seen.
                if self.pending_cancel().is_some() {
                    if let Some(reason) = self.take_cancel(step, StepKind::Signal, name).await {
                        return Err(Cancelled { step, reason });
                    }
                }
                match deadline.as_mut() {
                    Some(timer) => {
                        tokio::select! {
                            () = &mut arrived => {}
                            () = timer => {
                                self.record_outcome(signal::timed_out(step, name)).await;
                                return Ok(None);
                            }
                        }
                    }
                    None => arrived.await,
                }
            }
        }));
        // Only a wait the workflow still polls counts as waiting: one left behind by a
        // `select!` that went on with the other branch exists, but nobody awaits it
        // (the driver confirms with one more poll, see `poll_done`).
        let mut wait = wait;
        std::future::poll_fn(|cx| {
            let polled = wait.as_mut().poll(cx);
            if polled.is_pending() {
                inbox.message_polled();
            }
            polled
        })
        .await
    }
}

impl WorkflowContext {
    /// Creates human task `spec` as step `step` and waits for its decision. The task is
    /// recorded before the wait, so it survives restarts; people act on it through the
    /// host (claim, complete, ...), and each escalation tier of `spec` fires once when
    /// the runtime clock reaches it, recorded by this run whether it was in memory, asleep
    /// or down at the time. A cancellation of the instance ends the task (unless its
    /// decision was recorded first) with [`Cancelled`].
    ///
    /// # Cancel safety
    /// Dropping the future withdraws the task (it is recorded as abandoned and leaves the
    /// inboxes); a decision recorded meanwhile is not used.
    pub async fn human_task(
        &self,
        step: StepNo,
        spec: TaskSpec,
    ) -> Result<TaskDecision, Cancelled> {
        let request = StepRequest {
            kind: StepKind::Task,
            name: &spec.name,
            input: Some(&spec.input),
        };
        match self.decide(step, request).await {
            Decision::Replay(RecordedOutcome::TaskCompleted {
                decision,
                actor,
                escalation,
            }) => {
                self.take_replayed_end(step, false).await;
                return Ok(TaskDecision {
                    decision: decision.clone(),
                    actor: actor.clone(),
                    escalation: *escalation,
                });
            }
            Decision::Replay(RecordedOutcome::Cancelled { reason }) => {
                self.take_replayed_end(step, true).await;
                return Err(Cancelled {
                    step,
                    reason: reason.clone(),
                });
            }
            Decision::Replay(_) => {
                let err = self.mismatched_outcome(step, "a human task");
                return self.abort(err).await;
            }
            Decision::Run { .. } => {}
        }
        self.live(step, async move {
            let Some(host) = self.inner.host.clone() else {
                // `decide` never answers Run in replay-only mode.
                return std::future::pending().await;
            };
            let recorded = self
                .inner
                .history
                .step(step)
                .and_then(|entry| entry.task.as_deref());
            let (tiers, mut escalations, due, mut overdue) = match recorded {
                Some(state) => (
                    state
                        .spec
                        .escalation
                        .iter()
                        .map(|t| t.at_ms)
                        .collect::<Vec<u64>>(),
                    state.escalations,
                    state.spec.due_at_ms,
                    state.overdue,
                ),
                None => {
                    // Cancelled before the task exists: nobody ever sees it.
                    if let Some(reason) = self.take_cancel(step, StepKind::Task, &spec.name).await {
                        return Err(Cancelled { step, reason });
                    }
                    let tiers = spec.escalation.iter().map(|t| t.at_ms).collect();
                    let due = spec.due_at_ms;
                    self.record(task::created(step, spec.clone())).await;
                    (tiers, 0, due, false)
                }
            };
            let inbox = &self.inner.inbox;
            // A cancellation the task refused (its decision came first) is not tried again.
            let mut cancel_refused = false;
            loop {
                let arrived = inbox.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if let Some(decided) = inbox.task_decision(step) {
                    // Recorded by a person whenever they acted: taken here, in the
                    // order of the run's outcomes, and that place recorded.
                    self.record_outcome(task::taken(step)).await;
                    return Ok(decided);
                }
                if !cancel_refused && self.pending_cancel().is_some() {
                    match self.cancel_task(&host, step).await {
                        Some(reason) => {
                            // Recorded by the host's check that the task is still
                            // open, outside the line: taken here, like a decision.
                            self.record_outcome(task::taken(step)).await;
                            return Err(Cancelled { step, reason });
                        }
                        None => {
                            cancel_refused = true;
                            continue;
                        }
                    }
                }
                // The next thing due: the due time (once), then each escalation tier.
                let tier_at = usize::try_from(escalations)
                    .ok()
                    .and_then(|tier| tiers.get(tier).copied());
                let due_at = due.filter(|_| !overdue);
                let (next_at, change) = match (due_at, tier_at) {
                    (Some(due), Some(tier)) if tier < due => {
                        (Some(tier), RunTaskChange::Escalate(escalations))
                    }
                    (Some(due), _) => (Some(due), RunTaskChange::Overdue),
                    (None, Some(tier)) => (Some(tier), RunTaskChange::Escalate(escalations)),
                    (None, None) => (None, RunTaskChange::Overdue),
                };
                let _waiting = self.waiting(step, next_at);
                let timer = next_at.map(|at| self.inner.clock.sleep_until(at));
                let fired = match timer {
                    Some(timer) => tokio::select! {
                        () = &mut arrived => false,
                        () = self.cancel_requested(), if !cancel_refused => false,
                        () = timer => true,
                    },
                    None => tokio::select! {
                        () = &mut arrived => false,
                        () = self.cancel_requested(), if !cancel_refused => false,
                    },
                };
                if !fired {
                    continue;
                }
                let busy = self.busy();
                let is_overdue = matches!(change, RunTaskChange::Overdue);
                // The task's event is the run's own: after a result held in this poll.
                self.flush_held(None);
                let answer = host.task_change(self.inner.key, step, change).await;
                drop(busy);
                match answer {
                    Ok(RunTaskAnswer::Applied) => {
                        if is_overdue {
                            overdue = true;
                        } else {
                            escalations += 1;
                        }
                        self.settle().await;
                    }
                    // Recorded by an earlier life of this run: the count moved on. A count
                    // that did not move means the policy has no such tier.
                    Ok(RunTaskAnswer::Moved { escalations: now }) => {
                        if is_overdue {
                            overdue = true;
                        } else {
                            escalations = if now > escalations { now } else { u32::MAX };
                        }
                    }
                    // Decided meanwhile: the decision is in the inbox by now.
                    Ok(RunTaskAnswer::Closed) => {}
                    Err(err) => return self.abort(err).await,
                }
            }
        })
        .await
    }

    /// A task's end this replay hands back with nothing the run recorded after it: a
    /// decision made while the run was asleep or down, or one a stopped run never took
    /// (`History::defer_latest_untaken_ends`). The workflow takes it here, and that place
    /// is recorded (`TaskTaken`) as a live take is, so that a later stop before the next
    /// outcome cannot make it look like an end never taken. Dropped before its turn, the
    /// step is abandoned, and a cancellation it ended with goes back, as in a live take.
    async fn take_replayed_end(&self, step: StepNo, cancelled: bool) {
        if !self.inner.history.takes_when_handed_back(step) {
            return;
        }
        if cancelled {
            lock(&self.inner.state).cancel_holder = Some(step);
        }
        self.live(step, self.record_outcome(task::taken(step)))
            .await;
    }

    /// Records notification `topic` with `body` at step `step`, for the host to deliver
    /// through its outbox (at least once, retried); the run does not wait for delivery.
    /// Replay compares topic and body like an activity's name and input.
    ///
    /// # Cancel safety
    /// Dropped by the workflow after its first poll, the step is recorded as abandoned: a
    /// notification sent before the drop is still delivered. Dropped with the whole run
    /// before it is durable, it is recorded when the run is next replayed.
    pub async fn notify(&self, step: StepNo, topic: &str, body: Payload) {
        let request = StepRequest {
            kind: StepKind::Notice,
            name: topic,
            input: Some(&body),
        };
        match self.decide(step, request).await {
            Decision::Replay(RecordedOutcome::Noticed) => {}
            Decision::Replay(_) => {
                let err = self.mismatched_outcome(step, "a notification");
                self.abort(err).await
            }
            Decision::Run { .. } => {
                self.live(
                    step,
                    self.record_outcome(notice::notified(step, topic, body)),
                )
                .await;
            }
        }
    }

    /// Records at step `step` the answer to update `name` whose request carried `key`:
    /// `Ok(response)` accepts it, `Err(reason)` rejects it. The caller waiting on the
    /// host gets it once it is durable. Replay compares name, key and answer.
    ///
    /// # Cancel safety
    /// Dropped by the workflow after its first poll, the step is recorded as abandoned: an
    /// answer sent before the drop still reaches its caller. Dropped with the whole run
    /// before it is durable, it is recorded when the run is next replayed.
    pub async fn answer(
        &self,
        step: StepNo,
        name: &str,
        key: &str,
        response: Result<Payload, String>,
    ) {
        let compared = answer::compared(key, &response);
        let request = StepRequest {
            kind: StepKind::Answer,
            name,
            input: Some(&compared),
        };
        match self.decide(step, request).await {
            Decision::Replay(RecordedOutcome::Answered) => {}
            Decision::Replay(_) => {
                let err = self.mismatched_outcome(step, "an update's answer");
                self.abort(err).await
            }
            Decision::Run { .. } => {
                self.live(
                    step,
                    self.record_outcome(answer::answered(step, name, key, response)),
                )
                .await;
            }
        }
    }

    /// Records at step `step` that the workflow publishes `value` under `name`: what a
    /// query of `name` reads from the history. Replay compares name and value.
    ///
    /// # Cancel safety
    /// Dropped by the workflow after its first poll, the step is recorded as abandoned: a
    /// value sent before the drop can still be read. Dropped with the whole run before it
    /// is durable, it is recorded when the run is next replayed.
    pub async fn publish(&self, step: StepNo, name: &str, value: Payload) {
        let request = StepRequest {
            kind: StepKind::Publish,
            name,
            input: Some(&value),
        };
        match self.decide(step, request).await {
            Decision::Replay(RecordedOutcome::Published) => {}
            Decision::Replay(_) => {
                let err = self.mismatched_outcome(step, "a published value");
                self.abort(err).await
            }
            Decision::Run { .. } => {
                self.live(
                    step,
                    self.record_outcome(publish::published(step, name, value)),
                )
                .await;
            }
        }
    }

    /// Ends open task `step` by the pending cancellation, unless its decision was
    /// recorded first (`None`: the cancellation stays for another step to take).
    async fn cancel_task(&self, host: &Arc<dyn HostPort>, step: StepNo) -> Option<String> {
        let reason = {
            let mut state = lock(&self.inner.state);
            if state.cancel_delivered {
                return None;
            }
            let reason = self.inner.inbox.cancel_reason()?;
            state.cancel_delivered = true;
            state.cancel_holder = Some(step);
            reason
        };
        let busy = self.busy();
        self.flush_held(None);
        let answer = host
            .task_change(self.inner.key, step, RunTaskChange::Cancel(reason.clone()))
            .await;
        drop(busy);
        match answer {
            Ok(RunTaskAnswer::Applied) => {
                self.settle().await;
                Some(reason)
            }
            Ok(_) => {
                let mut state = lock(&self.inner.state);
                state.cancel_delivered = false;
                state.cancel_holder = None;
                None
            }
            Err(err) => self.abort(err).await,
        }
    }
}

/// What an activity step does once its outcome is recorded (the held path aside).
enum Then {
    /// Decodes this output and returns it to the workflow.
    Decode(Payload),
    /// Returns the failure to the workflow.
    Fail(Box<ActivityFailure>),
    /// Waits this long, then makes the next attempt with this input.
    Retry(Duration, Payload),
}

/// An attempt's result as the step records it, and how long it took (for the metrics),
/// from how it ended; `None` if it never started because the previous step's result was
/// refused.
fn attempt_outcome(
    attempted: Attempted<Result<Payload, ActivityError>, ()>,
    options: &ActivityOptions,
) -> Option<(Result<Payload, ActivityError>, f64)> {
    Some(match attempted {
        Attempted::Done(Ok(result), took) => (result, took.as_secs_f64()),
        Attempted::Done(Err(panic), took) => (
            Err(ActivityError::retryable(format!(
                "activity panicked: {}",
                crate::error::panic_message(&panic)
            ))
            .with_kind("panic")),
            took.as_secs_f64(),
        ),
        Attempted::TimedOut => (
            Err(ActivityError::retryable(format!(
                "attempt exceeded its start-to-close timeout of {:?}",
                options.start_to_close
            ))
            .with_kind("timeout")),
            options.start_to_close.as_secs_f64(),
        ),
        // Panics are caught inside the attempt; this is its task's end at shutdown (or a
        // failure outside the activity's own code).
        Attempted::Gone => (
            Err(ActivityError::retryable(
                "the attempt's task ended without a result (the runtime is shutting down, or the task failed outside the activity)",
            )
            .with_kind("aborted")),
            0.0,
        ),
        Attempted::Refused(()) => return None,
    })
}

/// What an activity step records and does once an attempt is over.
enum Next {
    /// Records the outcome and returns the output to the workflow.
    Completed(activity::Completed),
    /// Records the outcome and returns the failure to the workflow (boxed: a rare path,
    /// and kept small in every step's future).
    Failed(EventKind, Box<ActivityFailure>),
    /// Records the failed attempt, waits this long, then makes the next attempt with
    /// this input.
    Retry(EventKind, Duration, Payload),
}

/// Keeps the run busy while alive.
struct BusyGuard<'a>(&'a WorkflowContext);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.inner.state);
        state.busy = state.busy.saturating_sub(1);
        self.0.changed(&mut state);
    }
}

/// Offline replay: takes its step off the steps the code waits for beyond the history
/// when the workflow drops it.
struct BeyondGuard<'a> {
    ctx: &'a WorkflowContext,
    step: StepNo,
}

impl Drop for BeyondGuard<'_> {
    fn drop(&mut self) {
        lock(&self.ctx.inner.state).beyond.remove(&self.step);
    }
}

/// Records its step as abandoned if dropped before `finish`.
struct LiveGuard<'a> {
    ctx: &'a WorkflowContext,
    step: StepNo,
    armed: bool,
}

impl LiveGuard<'_> {
    fn finish(mut self) {
        self.armed = false;
        // A signal or the cancellation the step took is the workflow's now.
        {
            let mut state = lock(&self.ctx.inner.state);
            state.reserved.remove(&self.step);
            if state.cancel_holder == Some(self.step) {
                state.cancel_holder = None;
            }
        }
        self.ctx.inner.inbox.progressed();
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let inner = &self.ctx.inner;
        let Some(host) = &inner.host else {
            return;
        };
        let (released, ending) = {
            let mut state = lock(&inner.state);
            let released = state.reserved.remove(&self.step);
            // A cancellation the step took and the workflow never saw ends the next wait
            // instead (a hand-over carries it); the abandonment gives it back in the
            // history too (`History::apply`).
            if state.cancel_holder == Some(self.step) {
                state.cancel_holder = None;
                state.cancel_delivered = false;
                inner.inbox.arrived.notify_waiters();
            }
            // The run itself is ending (evicted, stopped, shut down, handed over): not a
            // lost race, so nothing is recorded.
            (released, state.stop.is_some() || state.ending)
        };
        if ending {
            // A signal this wait took and had not returned yet goes back in memory, so
            // that a hand-over carries it to the next run (its delivery, if it still
            // commits, is to a step this run never finished). After an eviction or a
            // rebuild the history sets it again (`Inbox::load`).
            if let Some(signal_seq) = released {
                inner.inbox.untake(signal_seq);
            }
            return;
        }
        // A signal this wait took goes back to the inbox: the abandonment that follows
        // its delivery gives it back in the history too (`History::apply`).
        if let Some(signal_seq) = released {
            inner.inbox.untake(signal_seq);
        }
        // After an activity result held in this poll (the race's winner, often): the
        // history keeps the order the workflow saw.
        self.ctx.flush_held(None);
        self.ctx.queue_abandoned(host, self.step);
    }
}

/// What an activity attempt waits for before it starts (see
/// `WorkflowContext::take_prior`).
enum Before {
    /// The previous step's result, queued in the store and not durable yet.
    Held {
        ticket: cairn_core::journal::AppendTicket,
        hold: ClockHold,
        flushing: Flushing,
    },
    /// A sibling step's wait for it (a `join!` of activities): both attempts start once
    /// it is durable, neither waits for the other's outcome.
    Sibling(WorkflowContext),
}

impl Before {
    /// Waits until it is durable; for a held result, then lets virtual time move and the
    /// run's siblings go on (also if dropped first).
    ///
    /// # Errors
    /// `Err(())` if the store refused it: the run is stopped (with the store's error, set
    /// here for a held result before the siblings are let go, as in `held_durable`), and
    /// the attempt must not start.
    async fn settle(self) -> Result<(), ()> {
        // The run may have stopped while the commit was waited for (a sibling diverged,
        // the instance is handed over), and the driver may have taken the stop already:
        // hence `stopped`, not `stop`.
        let stopped = match self {
            Before::Held {
                ticket,
                hold,
                flushing,
            } => {
                let appended = ticket.await;
                drop(hold);
                if let Err(err) = appended {
                    flushing.0.refused(err);
                    return Err(());
                }
                lock(&flushing.0.inner.state).stopped
            }
            Before::Sibling(ctx) => {
                ctx.wait_flushed().await;
                lock(&ctx.inner.state).stopped
            }
        };
        if stopped {
            return Err(());
        }
        Ok(())
    }
}

/// A step's wait for a held result it sent (see `WorkflowContext::held_durable`): ends,
/// and wakes the siblings waiting for it, however the wait ends.
struct Flushing(WorkflowContext);

impl Drop for Flushing {
    fn drop(&mut self) {
        let inner = &self.0.inner;
        {
            let mut state = lock(&inner.state);
            state.flushing = state.flushing.saturating_sub(1);
        }
        inner.flushed.notify_waiters();
    }
}

/// Marks the run as ending while the driver drops its future (see `LiveGuard`).
pub(crate) struct EndingGuard<'a>(pub(crate) &'a WorkflowContext);

impl Drop for EndingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.inner.state).ending = true;
    }
}

/// Keeps the run in memory while alive.
struct PinGuard<'a>(&'a WorkflowContext);

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.inner.state);
        state.pinned = state.pinned.saturating_sub(1);
        self.0.changed(&mut state);
    }
}

/// Registers a durable wait while alive.
struct WaitGuard<'a>(&'a WorkflowContext, StepNo);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.inner.state);
        state.waits.remove(&self.1);
        self.0.changed(&mut state);
    }
}

/// A resident run with a fresh history, no store and nothing cancelled yet (tests).
#[cfg(test)]
fn resident_run(inbox: &std::sync::Arc<Inbox>) -> WorkflowContext {
    let history = History::fresh(
        "order-1".into(),
        "fulfil".into(),
        Payload::new(0, b"null".to_vec()),
    );
    WorkflowContext::new(
        1,
        None,
        std::sync::Arc::new(crate::codec::JsonCodec),
        std::sync::Arc::new(crate::clock::VirtualClock::new(std::time::UNIX_EPOCH)),
        inbox.clone(),
        history,
        1,
    )
}

/// A signal named `name` with a small body (tests).
#[cfg(test)]
fn test_signal(name: &str) -> CarriedSignal {
    CarriedSignal {
        name: name.into(),
        payload: Payload::new(0, b"1".to_vec()),
        key: None,
        actor: None,
    }
}

#[cfg(all(test, cairn_loom))]
mod loom_tests {
    //! The eviction/delivery hand-off (`engine::mark_dormant` against `engine::deliver`)
    //! with the real [`Inbox`]: both sides take the instance map's lock, the deliverer
    //! bumps the inbox inside it and wakes a dormant run, the evicting run compares the
    //! generation it was last polled with. Whatever the interleaving, a delivered signal
    //! is seen by the run, or the run stays in memory, or it is woken.
    use super::*;
    use crate::sync::{Arc, AtomicBool};
    use std::sync::atomic::Ordering;

    fn go() -> CarriedSignal {
        test_signal("go")
    }

    #[test]
    fn a_delivery_never_leaves_an_evicted_run_asleep() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::default());
            // The map entry's driver state: `true` once dormant.
            let dormant = Arc::new(Mutex::new(false));
            let woken = Arc::new(AtomicBool::new(false));

            let run = {
                let (inbox, dormant) = (inbox.clone(), dormant.clone());
                loom::thread::spawn(move || {
                    // `drive`: the generation is noted before the poll ...
                    let seen = inbox.generation();
                    // ... and the poll looks at the inbox (a waiting workflow takes what is there).
                    if !inbox.undelivered().is_empty() {
                        return true;
                    }
                    // `mark_dormant`, under the map lock.
                    let mut entry = lock(&dormant);
                    if inbox.generation() == seen {
                        *entry = true;
                    }
                    false
                })
            };
            // `deliver`, under the map lock.
            {
                let entry = lock(&dormant);
                inbox.add(7, go(), false);
                if *entry {
                    woken.store(true, Ordering::SeqCst);
                }
            }
            let saw_it = run.join().unwrap();
            let asleep = *lock(&dormant);
            assert!(
                saw_it || !asleep || woken.load(Ordering::SeqCst),
                "a delivered signal was left with the run evicted and not woken"
            );
        });
    }

    /// The whole eviction against the commit path, with the durable hint: the writer
    /// commits a signal (its event clears the hint) and then the dispatcher delivers it
    /// (`Inbox::add` under the map lock, waking a dormant run); the run notes the inbox's
    /// mark before its poll, asks the writer to set the hint only if the history still
    /// has the count of that mark (`Suspend`), and goes dormant only if the mark has not
    /// moved (`mark_dormant`). Whatever the interleaving: a stored hint never covers a
    /// signal the run did not see (else a restart would leave it asleep with the signal
    /// in its history), and in memory the run sees the signal, stays, or is woken.
    #[test]
    fn an_eviction_never_hides_a_signal_committed_meanwhile() {
        loom::model(|| {
            /// What the writer thread owns: the history's length and the stored hint.
            struct Durable {
                next_seq: u64,
                hint: bool,
            }
            const SEEN_EVENTS: u64 = 3;
            let inbox = Arc::new(Inbox::default());
            inbox.known(SEEN_EVENTS);
            let durable = Arc::new(Mutex::new(Durable {
                next_seq: SEEN_EVENTS,
                hint: false,
            }));
            // The map entry's driver state: `true` once dormant.
            let dormant = Arc::new(Mutex::new(false));
            let woken = Arc::new(AtomicBool::new(false));

            let run = {
                let (inbox, durable, dormant) = (inbox.clone(), durable.clone(), dormant.clone());
                loom::thread::spawn(move || {
                    // `drive`: the mark is noted before the poll ...
                    let seen = inbox.mark();
                    // ... and the poll takes what is there.
                    if !inbox.undelivered().is_empty() {
                        return true;
                    }
                    // `Suspend`, in the writer: only if nothing was appended since.
                    {
                        let mut durable = lock(&durable);
                        if durable.next_seq != seen.next_seq {
                            return false;
                        }
                        durable.hint = true;
                    }
                    // `mark_dormant`, under the map lock.
                    let mut entry = lock(&dormant);
                    if inbox.mark() == seen {
                        *entry = true;
                    }
                    false
                })
            };
            // The signal's commit: its event takes the next seq and clears the hint ...
            let seq = {
                let mut durable = lock(&durable);
                let seq = durable.next_seq;
                durable.next_seq += 1;
                durable.hint = false;
                seq
            };
            // ... then the dispatcher delivers it, under the map lock.
            {
                let entry = lock(&dormant);
                inbox.add(seq, go(), false);
                if *entry {
                    woken.store(true, Ordering::SeqCst);
                }
            }
            let saw_it = run.join().unwrap();
            let asleep = *lock(&dormant);
            let hint = lock(&durable).hint;
            assert!(
                saw_it || !hint,
                "the stored hint covers a signal the run never saw"
            );
            assert!(
                saw_it || !asleep || woken.load(Ordering::SeqCst),
                "a committed signal was left with the run evicted and not woken"
            );
        });
    }
}

#[cfg(all(test, cairn_loom))]
mod sibling_loom_tests {
    //! A sibling attempt's wait (`Before::Sibling`, on the attempt's task) for the held
    //! result another step of the run sent: that step's `Flushing` ends when the commit
    //! is in, after a refusal has stopped the run. Whatever the interleaving, the sibling
    //! starts once the result is durable, and never after a refusal.
    //!
    //! Real code: `Before::settle`, `wait_flushed`, `Flushing`'s drop and `set_stop`, on
    //! loom's mutex and the shim's `Notify`. A wait that misses the end of the flush
    //! blocks with no thread left to wake it, and loom reports a deadlock.
    use super::*;

    /// What `take_prior` counts before it sends the held result.
    fn sending(ctx: &WorkflowContext) -> Flushing {
        lock(&ctx.inner.state).flushing += 1;
        Flushing(ctx.clone())
    }

    /// The sibling's wait: how it ended, and whether the flush had ended by then.
    type Waiting = loom::thread::JoinHandle<(Result<(), ()>, bool)>;

    fn sibling(ctx: &WorkflowContext) -> Waiting {
        let ctx = ctx.clone();
        loom::thread::spawn(move || {
            let settled = loom::future::block_on(Before::Sibling(ctx.clone()).settle());
            (settled, lock(&ctx.inner.state).flushing == 0)
        })
    }

    /// A run with a held result being committed, and a sibling attempt waiting for it.
    fn a_flush_and_a_sibling() -> (WorkflowContext, Flushing, Waiting) {
        let inbox = std::sync::Arc::new(Inbox::default());
        let ctx = resident_run(&inbox);
        let flushing = sending(&ctx);
        let waiting = sibling(&ctx);
        (ctx, flushing, waiting)
    }

    #[test]
    fn a_sibling_attempt_starts_once_the_held_result_is_durable() {
        loom::model(|| {
            let (_ctx, flushing, waiting) = a_flush_and_a_sibling();
            // The commit is in.
            drop(flushing);
            let (settled, flushed) = waiting.join().unwrap();
            assert_eq!(settled, Ok(()));
            assert!(flushed, "the sibling went on before the flush ended");
        });
    }

    #[test]
    fn a_sibling_attempt_never_starts_after_the_held_result_was_refused() {
        loom::model(|| {
            let (ctx, flushing, waiting) = a_flush_and_a_sibling();
            // As `Before::settle` on a refusal: the stop first, then the flush ends; and
            // the driver, woken by the refusal, takes the stop before the sibling looks.
            flushing.0.refused(Error::ShutDown);
            drop(flushing);
            assert!(ctx.take_stop().is_some());
            assert_eq!(waiting.join().unwrap().0, Err(()));
        });
    }
}

#[cfg(all(test, cairn_loom))]
mod cancel_loom_tests {
    //! Cancellation delivery: `Engine::cancel`, after committing `CancelRequested`, puts
    //! it into the inbox with `deliver` (`Inbox::request_cancel` under the active map's
    //! lock, waking a dormant run), while the run's waits look for it.
    //!
    //! Real code: [`Inbox::request_cancel`] (reason, generation, notice) and the context's
    //! own `take_cancel` (the claim: `cancel_delivered` set once, under the state lock),
    //! `cancel_requested` (notice created and enabled, then the check) and
    //! `pending_cancel`, on a [`WorkflowContext`] without a store, whose appends return at
    //! once; the inbox's notice is the shim's loom-visible `Notify`, and a waiting run is
    //! driven by `loom::future::block_on`. Mirrored: the order in which a durable wait
    //! calls them (`wait_until_cancelled`, the calls `sleep_until` makes), the active map
    //! (a mutex over a dormant flag) and `mark_dormant`'s generation check, as in the
    //! eviction model above.
    //!
    //! A wait that misses the notice of a cancellation it did not see blocks with no
    //! thread left to wake it, and loom reports a deadlock.
    use super::*;
    use crate::sync::{Arc, AtomicBool};
    use std::sync::atomic::Ordering;
    use std::task::{Context, Poll};

    const REASON: &str = "stop";

    /// `Engine::cancel` once `CancelRequested` (history seq 3) is committed.
    fn cancel(inbox: &Inbox) {
        inbox.request_cancel(3, REASON.into());
    }

    /// What a durable wait does about cancellation, in `sleep_until`'s order: take one
    /// already requested; otherwise wait (its own work never finishes in these models)
    /// until one is pending, and take it then.
    async fn wait_until_cancelled(ctx: &WorkflowContext, step: StepNo) -> String {
        if let Some(reason) = ctx.take_cancel(step, StepKind::Timer, "sleep").await {
            return reason;
        }
        loop {
            ctx.cancel_requested().await;
            if let Some(reason) = ctx.take_cancel(step, StepKind::Timer, "sleep").await {
                return reason;
            }
        }
    }

    /// A cancellation requested while a wait starts is seen by it: before the wait looks
    /// (it takes it at once), or after (the notice wakes it).
    #[test]
    fn a_cancellation_racing_a_wait_that_starts_is_never_missed() {
        loom::model(|| {
            let inbox = std::sync::Arc::new(Inbox::default());
            let ctx = resident_run(&inbox);
            let waiting = loom::thread::spawn(move || {
                let reason = loom::future::block_on(wait_until_cancelled(&ctx, 1));
                (reason, ctx.pending_cancel())
            });
            cancel(&inbox);
            let (reason, still_pending) = waiting.join().unwrap();
            assert_eq!(reason, REASON);
            assert_eq!(
                still_pending, None,
                "a taken cancellation is no longer pending"
            );
        });
    }

    /// Two waits of one run (branches of a `join!`, polled in turn by the run's task)
    /// race one cancellation: exactly one takes it, and the other keeps waiting.
    #[test]
    fn two_waiting_branches_take_one_cancellation_exactly_once() {
        loom::model(|| {
            let inbox = std::sync::Arc::new(Inbox::default());
            let ctx = resident_run(&inbox);
            let run = loom::thread::spawn(move || {
                let mut branches = [
                    Box::pin(wait_until_cancelled(&ctx, 1)),
                    Box::pin(wait_until_cancelled(&ctx, 2)),
                ];
                let mut taken: [Option<String>; 2] = [None, None];
                // As `join!` polls: every branch in turn, until one has finished.
                loom::future::block_on(std::future::poll_fn(|cx| {
                    for (branch, taken) in branches.iter_mut().zip(taken.iter_mut()) {
                        if let Poll::Ready(reason) = branch.as_mut().poll(cx) {
                            *taken = Some(reason);
                        }
                    }
                    if taken.iter().any(Option::is_some) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                }));
                // Polled again later, the other branch must not take it too.
                let mut cx = Context::from_waker(futures::task::noop_waker_ref());
                for (branch, taken) in branches.iter_mut().zip(taken.iter()) {
                    if taken.is_none() {
                        assert!(branch.as_mut().poll(&mut cx).is_pending());
                    }
                }
                drop(branches);
                (taken, ctx.pending_cancel())
            });
            cancel(&inbox);
            let (taken, still_pending) = run.join().unwrap();
            let takers: Vec<_> = taken.iter().flatten().collect();
            assert_eq!(takers, [REASON], "taken by {taken:?}");
            assert_eq!(still_pending, None);
        });
    }

    /// A cancellation delivered while the run is being evicted is seen by the run's last
    /// poll, or keeps it resident, or wakes it: never left with the run asleep.
    #[test]
    fn a_cancellation_never_leaves_an_evicted_run_asleep() {
        loom::model(|| {
            let inbox = std::sync::Arc::new(Inbox::default());
            let ctx = resident_run(&inbox);
            // The map entry's driver state: `true` once dormant.
            let dormant = Arc::new(Mutex::new(false));
            let woken = Arc::new(AtomicBool::new(false));
            let run = {
                let dormant = dormant.clone();
                loom::thread::spawn(move || {
                    // `drive`: the mark is noted, then the workflow is polled once.
                    ctx.note_poll(Waker::noop());
                    if wait_until_cancelled(&ctx, 1).now_or_never().is_some() {
                        return true;
                    }
                    // Blocked: `drive_evictable` evicts with the generation of that poll;
                    // `mark_dormant`, under the map lock.
                    let seen = ctx.poll_mark();
                    let mut entry = lock(&dormant);
                    if ctx.inbox().mark() == seen {
                        *entry = true;
                    }
                    false
                })
            };
            // `deliver`, under the map lock.
            {
                let entry = lock(&dormant);
                cancel(&inbox);
                if *entry {
                    woken.store(true, Ordering::SeqCst);
                }
            }
            let saw_it = run.join().unwrap();
            let asleep = *lock(&dormant);
            assert!(
                saw_it || !asleep || woken.load(Ordering::SeqCst),
                "a requested cancellation was left with the run evicted and not woken"
            );
        });
    }
}

#[cfg(all(test, not(cairn_loom)))]
mod tests {
    use super::*;

    fn stop_signal() -> CarriedSignal {
        test_signal("stop")
    }

    /// Always-replay's rebuild keeps the instance's inbox: a signal a wait took just
    /// before the run stopped, its delivery unrecorded, must be there for the rebuilt
    /// run (it waited for ever: `raced_steps`, 6 runs in 80 in always-replay mode).
    #[test]
    fn a_signal_taken_but_not_delivered_is_back_for_the_next_incarnation() {
        let inbox = Inbox::default();
        inbox.add(1, stop_signal(), false);
        assert!(
            inbox.take("stop").is_some(),
            "the first run's wait takes it"
        );
        // The run stops before recording the delivery; the next one loads its history.
        inbox.load(1, stop_signal(), false);
        assert!(
            inbox.take("stop").is_some(),
            "the rebuilt run's wait finds it"
        );
        // A delivery the history holds stays taken, whatever memory says.
        inbox.add(2, stop_signal(), false);
        inbox.load(2, stop_signal(), true);
        assert!(
            inbox.take("stop").is_none(),
            "a delivered signal is never taken again"
        );
        // The commit path never gives back what a live run took.
        inbox.add(3, stop_signal(), false);
        assert!(inbox.take("stop").is_some());
        inbox.add(3, stop_signal(), false);
        assert!(inbox.take("stop").is_none());
    }

    /// The size of an activity step's future whose workflow value is a `T`, with an
    /// attempt closure holding what the SDK's holds (the context, for the codec).
    fn step_future_size<T: Default>() -> usize {
        let ctx = resident_run(&Arc::new(Inbox::default()));
        let codec = ctx.clone();
        let attempt = move |_: ActivityContext, input: &Payload| {
            let output = input.clone();
            let _ = codec.codec();
            async move { Ok(output) }
        };
        let decode = |_: &WorkflowContext, _: &Payload| Ok::<T, Error>(T::default());
        let step = ctx.clone().activity(
            1,
            "reserve_stock",
            Payload::new(0, b"1".to_vec()),
            ActivityOptions::default(),
            attempt,
            decode,
        );
        std::mem::size_of_val(&step)
    }

    /// The SDK boxes one of these per step. glibc serves a request of up to 1,032
    /// bytes from its per-thread cache and a larger one from its shared bins, several
    /// times slower: over that size, every step of every run pays for it (it did, at
    /// 1,168 bytes, before this was pinned). The margin leaves room for what a change
    /// adds; the workflow's value must not count, however large.
    #[test]
    fn an_activity_steps_future_stays_within_the_allocators_fast_size() {
        let small = step_future_size::<u32>();
        assert!(
            small <= 960,
            "an activity step's future takes {small} bytes; keep it at 960 or less"
        );
        let large = step_future_size::<[[u64; 32]; 2]>();
        assert!(
            large <= small + 16,
            "a 512-byte workflow value grows the step's future from {small} to {large} bytes"
        );
    }
}
