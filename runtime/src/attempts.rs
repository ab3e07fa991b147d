//! Where a run's activity attempts execute: on a task of their own, so that an activity
//! that blocks its thread or never returns cannot keep the run from seeing its
//! start-to-close deadline or a cancellation.
//!
//! A task per attempt was the most expensive part of a no-op step (tokio's task cell is
//! cache-line aligned, which takes glibc's slow aligned-allocation path, and every task
//! is registered in and removed from the runtime's task list). So a run keeps the task of
//! its last finished attempt and hands it the next one. The task is only ever reused
//! once the run has its attempt's output: a task whose attempt was given up (a deadline,
//! a cancellation, a dropped step) is never handed another, since that attempt may still
//! hold its thread. Concurrent attempts of one run (`join!`) each get a task; the run
//! keeps one of them afterwards.
//!
//! An attempt may be handed over before the previous step's result is durable: its
//! task waits for that commit (`before`), then starts it. The commit wakes the attempt's
//! task, not the run, and the run is woken once per step, by the output.
//!
//! The start-to-close deadline is kept where it costs nothing on a step that is done at
//! once:
//! - an attempt that waits (its poll returns pending) gets a timer on its own task;
//! - an attempt that never returns from a poll, holding its thread, is seen by one
//!   watcher thread for the process, which looks every [`WATCH_TICK`] at the attempts
//!   being polled and wakes the run of one polled past its deadline. Such a timeout
//!   comes up to a tick late.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::clock::{millis, Clock};
use crate::sync::{lock, AtomicU64, Mutex};

/// How often the watcher looks at the attempts being polled.
pub(crate) const WATCH_TICK: Duration = Duration::from_millis(20);

/// An attempt, wrapped to send its output back, as a worker task runs it.
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How an attempt handed to [`Attempts::start`] ended, as its run sees it.
#[derive(Debug)]
pub(crate) enum Attempted<T, E> {
    /// It returned (or panicked: the payload), after this long.
    Done(std::thread::Result<T>, Duration),
    /// It passed its deadline: waiting on its own task, or polled past it (the watcher
    /// saw it; it may still hold its thread).
    TimedOut,
    /// What it waited for first failed (`before`'s error); it never started.
    Refused(E),
    /// Its task ended without an output: the runtime is shutting down.
    Gone,
}

/// The run's handle on a worker task. Dropping it ends the task once its current job
/// (and one handed to it, if any) is done.
struct Worker {
    watched: std::sync::Arc<Watched>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let parked = {
            let mut queue = lock(&self.watched.queue);
            queue.closed = true;
            queue.parked.take()
        };
        if let Some(parked) = parked {
            parked.wake();
        }
    }
}

/// A worker task's one-job queue. Not a channel: a channel wakes the task when it is
/// handed a job, and a job that first waits for a commit would then be polled once for
/// nothing. The run polls what the job waits for with the task's waker instead
/// (`Worker::hand`), so the commit is what wakes the task.
#[derive(Default)]
struct Queue {
    job: Option<Job>,
    /// The task's waker, from the last time it found nothing to do.
    parked: Option<Waker>,
    /// The run dropped its handle: the task ends once the queue is empty.
    closed: bool,
    /// The task is gone (the runtime is shutting down): nothing is handed to it.
    gone: bool,
}

impl Worker {
    /// Hands the task its next job, or gives it back if the task is gone.
    ///
    /// Under the queue's lock, so that the task cannot look at the queue in between:
    /// the job goes in, and what it waits for first is polled with the task's waker.
    /// If that is not ready, whatever it waits for (a commit) wakes the task; if it is,
    /// the task is woken here. A task that never parked is still running, and looks at
    /// the queue before it parks.
    fn hand<B, F, T, E>(&self, mut work: Pin<Box<RunJob<B, F, T, E>>>) -> Result<(), Job>
    where
        B: Future<Output = Result<(), E>> + Send + 'static,
        F: Future<Output = std::thread::Result<T>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let wake = {
            let mut queue = lock(&self.watched.queue);
            if queue.gone {
                return Err(work);
            }
            let wake = match &queue.parked {
                Some(parked) => {
                    let waited = work.as_mut().poll_before(&mut Context::from_waker(parked));
                    waited.is_ready().then(|| parked.clone())
                }
                None => None,
            };
            queue.job = Some(work);
            wake
        };
        if let Some(parked) = wake {
            parked.wake();
        }
        Ok(())
    }
}

/// What the watcher reads of one worker task, and how it reaches the run.
pub(crate) struct Watched {
    clock: std::sync::Arc<dyn Clock>,
    /// The task's queue (not the watcher's business: kept here to share one allocation).
    queue: Mutex<Queue>,
    /// `job << DEADLINE_BITS | deadline_ms` while an attempt is being polled, else 0:
    /// packed into one word so that the watcher never pairs one job's number with
    /// another's deadline.
    polled: AtomicU64,
    /// The run's side.
    run: Mutex<RunSide>,
}

/// Bits of [`Watched::polled`] that hold the deadline (in ms on the run's clock; enough
/// until the year 2109), below the job's number.
const DEADLINE_BITS: u32 = 42;
const DEADLINE_MASK: u64 = (1 << DEADLINE_BITS) - 1;
/// Job numbers wrap at this: they only need to tell a job from the one before it.
const JOB_MASK: u64 = (1 << (64 - DEADLINE_BITS)) - 1;

#[derive(Default)]
struct RunSide {
    /// The job the run waits for (its number in `polled`).
    job: u64,
    /// The watcher found `job` polled past its deadline.
    expired: bool,
    /// The run waiting for `job`.
    waker: Option<Waker>,
}

impl Watched {
    fn new(clock: std::sync::Arc<dyn Clock>) -> Self {
        Watched {
            clock,
            queue: Mutex::new(Queue::default()),
            polled: AtomicU64::new(0),
            run: Mutex::new(RunSide::default()),
        }
    }

    /// Hands the task the next job: a new number, not expired. Returns the number.
    fn next_job(&self) -> u64 {
        let mut run = lock(&self.run);
        run.job = (run.job + 1) & JOB_MASK;
        run.expired = false;
        run.waker = None;
        run.job
    }

    /// The job's attempt is being polled until `polled` is called.
    fn polling(&self, job: u64, deadline_ms: u64) {
        let word = (job << DEADLINE_BITS) | deadline_ms.clamp(1, DEADLINE_MASK);
        self.polled.store(word, Ordering::Release);
    }

    fn polled(&self) {
        self.polled.store(0, Ordering::Release);
    }

    /// The watcher's look: if an attempt is being polled past its deadline on the
    /// clock, marks its job expired and wakes its run. Returns whether it did.
    fn expire_if_due(&self) -> bool {
        let word = self.polled.load(Ordering::Acquire);
        if word == 0 || self.clock.now_ms() < word & DEADLINE_MASK {
            return false;
        }
        let job = word >> DEADLINE_BITS;
        let waker = {
            let mut run = lock(&self.run);
            // A later job than the one read: the run already has that attempt's output.
            if run.job != job || run.expired {
                return false;
            }
            run.expired = true;
            run.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// The run's look while it waits for `job`: whether the watcher expired it; if not,
    /// it wakes `waker` when it does.
    fn expired_or_register(&self, job: u64, waker: &Waker) -> bool {
        let mut run = lock(&self.run);
        if run.job == job && run.expired {
            return true;
        }
        match &mut run.waker {
            Some(known) if known.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        false
    }
}

/// The worker tasks the watcher looks at, and whether its thread runs. Process-wide:
/// one thread serves every runtime, and ends when no run has a worker task left.
struct Registry {
    tasks: Vec<std::sync::Arc<Watched>>,
    watching: bool,
}

static REGISTRY: std::sync::Mutex<Registry> = std::sync::Mutex::new(Registry {
    tasks: Vec::new(),
    watching: false,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // As `sync::lock`: a panic elsewhere leaves the list valid.
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Puts a new worker task under watch, starting the watcher if it is not running.
fn watch(watched: &std::sync::Arc<Watched>) {
    let mut registry = registry();
    registry.tasks.push(watched.clone());
    if registry.watching {
        return;
    }
    match std::thread::Builder::new()
        .name("cairn-attempt-watch".into())
        .spawn(watcher)
    {
        Ok(_) => registry.watching = true,
        // Only an attempt that holds its thread depends on the watcher; the next worker
        // task tries again.
        Err(err) => tracing::warn!(
            error = %err,
            "could not start the thread that times out activity attempts blocking their thread"
        ),
    }
}

/// The watcher thread: every tick, expires the attempts polled past their deadline,
/// and forgets the tasks that ended; ends when none is left.
fn watcher() {
    loop {
        std::thread::sleep(WATCH_TICK);
        let mut registry = registry();
        // A task that ended dropped its handle: only this list still holds it.
        registry
            .tasks
            .retain(|watched| std::sync::Arc::strong_count(watched) > 1);
        if registry.tasks.is_empty() {
            registry.watching = false;
            return;
        }
        for watched in &registry.tasks {
            watched.expire_if_due();
        }
    }
}

/// The idle worker task of one run, if it has one.
#[derive(Default)]
pub(crate) struct Attempts {
    idle: Mutex<Option<Worker>>,
}

impl Attempts {
    /// Starts `attempt` on a task of its own (the run's idle one, or a new one), once
    /// `before` (if any) resolved `Ok`; `budget` is its start-to-close time on `clock`,
    /// counted from its start.
    ///
    /// Must be called within a tokio runtime.
    pub(crate) fn start<T, E, B, F>(
        &self,
        clock: &std::sync::Arc<dyn Clock>,
        before: Option<B>,
        attempt: F,
        budget: Duration,
    ) -> Running<'_, T, E>
    where
        B: Future<Output = Result<(), E>> + Send + 'static,
        F: Future<Output = std::thread::Result<T>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let (reply, output) = oneshot::channel();
        let idle = lock(&self.idle).take();
        let watched = match &idle {
            Some(worker) => worker.watched.clone(),
            None => {
                let watched = std::sync::Arc::new(Watched::new(clock.clone()));
                watch(&watched);
                watched
            }
        };
        let job = watched.next_job();
        let work = Box::pin(RunJob {
            before,
            attempt: Some(attempt),
            reply: Some(reply),
            watched: watched.clone(),
            job,
            budget,
            started: None,
            timer: None,
        });
        let worker = match idle {
            Some(worker) => match worker.hand(work) {
                Ok(()) => worker,
                // The task is gone (it cannot be while its handle is held here, short of
                // a shutdown); a new one takes the job, under the same watch.
                Err(work) => {
                    drop(worker);
                    spawn_worker(watched, work)
                }
            },
            None => spawn_worker(watched, work),
        };
        Running {
            attempts: self,
            output,
            worker: Some(worker),
            job,
        }
    }
}

/// A new worker task, with `work` already queued: it never waits for its first job.
fn spawn_worker(watched: std::sync::Arc<Watched>, work: Job) -> Worker {
    {
        let mut queue = lock(&watched.queue);
        *queue = Queue {
            job: Some(work),
            ..Queue::default()
        };
    }
    drop(tokio::spawn(serve(Serving(watched.clone()))));
    Worker { watched }
}

/// A worker task's hold on its queue; marks the task gone when it is dropped (the task
/// ended, or the runtime dropped it), and drops the job it was handed, if any, so that
/// its run learns it is gone.
struct Serving(std::sync::Arc<Watched>);

impl Drop for Serving {
    fn drop(&mut self) {
        let job = {
            let mut queue = lock(&self.0.queue);
            queue.gone = true;
            queue.parked = None;
            queue.job.take()
        };
        drop(job);
    }
}

/// A worker task: runs the jobs it is handed one after another until its run drops its
/// handle.
async fn serve(serving: Serving) {
    let mut current: Option<Job> = None;
    std::future::poll_fn(|cx| loop {
        if let Some(work) = current.as_mut() {
            if work.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            current = None;
        }
        let mut queue = lock(&serving.0.queue);
        if let Some(work) = queue.job.take() {
            current = Some(work);
            continue;
        }
        if queue.closed {
            return Poll::Ready(());
        }
        match &queue.parked {
            Some(parked) if parked.will_wake(cx.waker()) => {}
            _ => queue.parked = Some(cx.waker().clone()),
        }
        return Poll::Pending;
    })
    .await;
}

pin_project_lite::pin_project! {
    /// A job on a worker task: waits for `before`, then runs `attempt` and sends how it
    /// ended, unless the run stops waiting first: then the attempt is dropped without
    /// another poll, as an aborted task's would be. An attempt the run gave up before it
    /// started never starts; `before` is waited for all the same, since the run's next
    /// step waits for it in turn.
    ///
    /// Written out rather than an `async fn`: its arguments would be kept twice (as
    /// captures and as the locals polled), and the attempt is most of the job's size. The
    /// job is boxed per step, and over glibc's 1 KiB fast size that box is a slow one.
    struct RunJob<B, F, T, E> {
        #[pin]
        before: Option<B>,
        #[pin]
        attempt: Option<F>,
        reply: Option<oneshot::Sender<Attempted<T, E>>>,
        watched: std::sync::Arc<Watched>,
        job: u64,
        budget: Duration,
        // When the attempt started, and its deadline on the clock.
        started: Option<(Instant, u64)>,
        // Armed only once the attempt waits: most attempts are done in their first poll.
        timer: Option<BoxFuture<'static, ()>>,
    }
}

impl<B, F, T, E> RunJob<B, F, T, E>
where
    B: Future<Output = Result<(), E>>,
{
    /// Waits for `before`; ready once it is done (on a refusal, the refusal is sent and
    /// the attempt dropped unstarted).
    fn poll_before(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(before) = this.before.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        let waited = match before.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(waited) => waited,
        };
        this.before.set(None);
        if let Err(err) = waited {
            this.attempt.set(None);
            if let Some(reply) = this.reply.take() {
                let _ = reply.send(Attempted::Refused(err));
            }
            // The run learns of it even if its step stopped waiting (a `select!` it
            // lost): the refusal stopped the run, which its driver sees when polled.
            let waiting = lock(&this.watched.run).waker.take();
            if let Some(waiting) = waiting {
                waiting.wake();
            }
        }
        Poll::Ready(())
    }
}

impl<B, F, T, E> Future for RunJob<B, F, T, E>
where
    B: Future<Output = Result<(), E>>,
    F: Future<Output = std::thread::Result<T>>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.as_mut().poll_before(cx).is_pending() {
            return Poll::Pending;
        }
        let mut this = self.project();
        let Some(reply) = this.reply.as_mut() else {
            return Poll::Ready(());
        };
        // Checked before every poll of the attempt, not after: an abandoned attempt must
        // not take one more step.
        let abandoned = reply.is_closed();
        let attempt = match this.attempt.as_mut().as_pin_mut() {
            Some(attempt) if !abandoned => attempt,
            _ => {
                this.attempt.set(None);
                return Poll::Ready(());
            }
        };
        let watched = &**this.watched;
        let budget = *this.budget;
        let (began, deadline_ms) = *this.started.get_or_insert_with(|| {
            (
                Instant::now(),
                watched.clock.now_ms().saturating_add(millis(budget)),
            )
        });
        watched.polling(*this.job, deadline_ms);
        let polled = attempt.poll(cx);
        watched.polled();
        let ended = match polled {
            Poll::Ready(output) => Attempted::Done(output, began.elapsed()),
            Poll::Pending => {
                let timer = this
                    .timer
                    .get_or_insert_with(|| watched.clock.sleep_until(deadline_ms));
                // A result that is in counts even if the deadline passed in the same
                // instant: the attempt was polled first.
                if timer.as_mut().poll(cx).is_pending() {
                    if reply.poll_closed(cx).is_ready() {
                        this.attempt.set(None);
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
                Attempted::TimedOut
            }
        };
        // Dropped before the output is sent, as a task's future is before its output is
        // published: what the attempt holds is released by the time the run goes on.
        *this.timer = None;
        this.attempt.set(None);
        if let Some(reply) = this.reply.take() {
            let _ = reply.send(ended);
        }
        Poll::Ready(())
    }
}

/// An attempt in flight. Dropping it before its output arrives abandons the attempt: it
/// is dropped at its next poll, and its task is never used again.
pub(crate) struct Running<'a, T, E> {
    attempts: &'a Attempts,
    output: oneshot::Receiver<Attempted<T, E>>,
    worker: Option<Worker>,
    job: u64,
}

impl<T, E> Future for Running<'_, T, E> {
    type Output = Attempted<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let attempted = match Pin::new(&mut this.output).poll(cx) {
            Poll::Ready(Ok(attempted)) => attempted,
            Poll::Ready(Err(_)) => Attempted::Gone,
            Poll::Pending => {
                let expired = this
                    .worker
                    .as_ref()
                    .is_some_and(|worker| worker.watched.expired_or_register(this.job, cx.waker()));
                if !expired {
                    return Poll::Pending;
                }
                // Polled past its deadline, and maybe still holding its thread: its task
                // is never handed another attempt, and the attempt is dropped at its next
                // poll, even if this is polled no more.
                this.output.close();
                this.worker = None;
                return Poll::Ready(Attempted::TimedOut);
            }
        };
        // Done with its job, so free for the next: kept unless the run already keeps one
        // (from a sibling attempt), in which case this one ends.
        if let (false, Some(worker)) = (matches!(attempted, Attempted::Gone), this.worker.take()) {
            let mut idle = lock(&this.attempts.idle);
            if idle.is_none() {
                *idle = Some(worker);
            }
        }
        Poll::Ready(attempted)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn ok<T>(value: T) -> std::thread::Result<T> {
        Ok(value)
    }

    fn clock() -> std::sync::Arc<dyn Clock> {
        std::sync::Arc::new(crate::clock::SystemClock)
    }

    /// Starts `attempt` with nothing to wait for first and a minute's budget.
    fn go<T, F>(attempts: &Attempts, attempt: F) -> Running<'_, T, ()>
    where
        F: Future<Output = std::thread::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let before = None::<std::future::Ready<Result<(), ()>>>;
        attempts.start(&clock(), before, attempt, Duration::from_secs(60))
    }

    /// The task the run keeps for its next attempt, if any.
    fn idle_queue(attempts: &Attempts) -> Option<std::sync::Arc<Watched>> {
        lock(&attempts.idle)
            .as_ref()
            .map(|worker| worker.watched.clone())
    }

    #[tokio::test]
    async fn a_finished_attempt_leaves_its_task_for_the_next() {
        let attempts = Attempts::default();
        let first = go(&attempts, async { ok(1) }).await;
        assert!(matches!(first, Attempted::Done(Ok(1), _)));
        let kept = idle_queue(&attempts);
        let second = go(&attempts, async { ok(2) }).await;
        assert!(matches!(second, Attempted::Done(Ok(2), _)));
        let again = idle_queue(&attempts);
        let (Some(kept), Some(again)) = (kept, again) else {
            panic!("no task was kept after a finished attempt");
        };
        assert!(
            std::sync::Arc::ptr_eq(&kept, &again),
            "the second attempt used a new task"
        );
    }

    #[tokio::test]
    async fn concurrent_attempts_run_on_tasks_of_their_own() {
        let attempts = Attempts::default();
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        // The first waits for the second: on one task they would never finish.
        let first = go(&attempts, async move {
            let _ = gate.await;
            ok("first")
        });
        let second = go(&attempts, async move {
            let _ = open.send(());
            ok("second")
        });
        let both = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(first, second)
        })
        .await
        .expect("concurrent attempts were serialised on one task");
        assert!(matches!(
            both,
            (
                Attempted::Done(Ok("first"), _),
                Attempted::Done(Ok("second"), _)
            )
        ));
    }

    #[tokio::test]
    async fn an_abandoned_attempt_is_dropped_and_its_task_not_reused() {
        struct Flag(Arc<AtomicUsize>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let attempts = Attempts::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        let flag = Flag(dropped.clone());
        let hanging = go(&attempts, async move {
            let _flag = flag;
            std::future::pending::<std::thread::Result<()>>().await
        });
        let mut hanging = Box::pin(hanging);
        assert!(futures::poll!(hanging.as_mut()).is_pending());
        drop(hanging);
        tokio::time::timeout(Duration::from_secs(5), async {
            while dropped.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the abandoned attempt was never dropped");
        assert!(lock(&attempts.idle).is_none(), "an abandoned task was kept");
        let next = go(&attempts, async { ok(3) }).await;
        assert!(matches!(next, Attempted::Done(Ok(3), _)));
    }

    #[tokio::test]
    async fn an_attempt_given_up_before_its_task_ran_never_starts() {
        let attempts = Attempts::default();
        let started = Arc::new(AtomicUsize::new(0));
        let seen = started.clone();
        let given_up = go(&attempts, async move {
            seen.fetch_add(1, Ordering::SeqCst);
            ok(())
        });
        // Dropped unpolled, before the worker task had a turn (one thread: it has not).
        drop(given_up);
        let next = go(&attempts, async { ok(5) }).await;
        assert!(matches!(next, Attempted::Done(Ok(5), _)));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            started.load(Ordering::SeqCst),
            0,
            "an abandoned attempt ran"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_attempt_is_dropped_before_the_run_gets_its_output() {
        // Slow to drop, on the worker's thread: sent first, the output would reach this
        // (other) thread while the drop is still under way.
        struct Flag(Arc<AtomicUsize>);
        impl Drop for Flag {
            fn drop(&mut self) {
                std::thread::sleep(Duration::from_millis(50));
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        // Keeps what it holds after it is done, as a span or a combinator does, until it
        // is dropped.
        struct Holding {
            _flag: Flag,
        }
        impl Future for Holding {
            type Output = std::thread::Result<u32>;
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
                Poll::Ready(Ok(6))
            }
        }
        let attempts = Attempts::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        let output = go(
            &attempts,
            Holding {
                _flag: Flag(dropped.clone()),
            },
        )
        .await;
        assert!(matches!(output, Attempted::Done(Ok(6), _)));
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocked_attempt_does_not_hold_up_the_next_one() {
        let attempts = Attempts::default();
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let stuck = go(&attempts, async move {
            // Holds its thread, as a blocking activity would.
            let _ = blocked.recv_timeout(Duration::from_secs(10));
            ok(())
        });
        let mut stuck = Box::pin(stuck);
        assert!(futures::poll!(stuck.as_mut()).is_pending());
        drop(stuck);
        let next = tokio::time::timeout(Duration::from_secs(5), go(&attempts, async { ok(4) }))
            .await
            .expect("the next attempt waited for a blocked one");
        assert!(matches!(next, Attempted::Done(Ok(4), _)));
        let _ = release.send(());
    }

    #[tokio::test]
    async fn a_panic_reaches_the_run() {
        let attempts = Attempts::default();
        let panicked = go(
            &attempts,
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
                if true {
                    panic!("boom");
                }
                5
            })),
        )
        .await;
        let Attempted::Done(Err(payload), _) = panicked else {
            panic!("the panic did not reach the run");
        };
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
    }

    #[tokio::test]
    async fn the_attempt_starts_only_once_what_it_waits_for_is_done() {
        let attempts = Attempts::default();
        let started = Arc::new(AtomicUsize::new(0));
        let seen = started.clone();
        let (commit, committed) = tokio::sync::oneshot::channel::<()>();
        let before = async move { committed.await.map_err(drop) };
        let mut running = Box::pin(attempts.start(
            &clock(),
            Some(before),
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                ok(7)
            },
            Duration::from_secs(60),
        ));
        for _ in 0..10 {
            assert!(futures::poll!(running.as_mut()).is_pending());
            tokio::task::yield_now().await;
        }
        assert_eq!(
            started.load(Ordering::SeqCst),
            0,
            "started before its commit"
        );
        commit.send(()).unwrap();
        assert!(matches!(running.await, Attempted::Done(Ok(7), _)));
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }

    /// As above, on the run's kept task: the job is handed over with its commit still
    /// out (`Worker::hand`), and the commit is what gets the attempt going. On one
    /// thread, so that "not started yet" is a fact, not a race: every yield below lets
    /// each task that is ready (the kept one, had anything woken it) run first.
    #[tokio::test]
    async fn a_kept_task_starts_its_next_attempt_once_the_commit_is_in() {
        let attempts = Attempts::default();
        assert!(matches!(
            go(&attempts, async { ok(1) }).await,
            Attempted::Done(Ok(1), _)
        ));
        let kept = idle_queue(&attempts).expect("the first attempt's task was kept");
        // Until the task parks, a job handed to it is found, not woken for.
        while lock(&kept.queue).parked.is_none() {
            tokio::task::yield_now().await;
        }
        let started = Arc::new(AtomicUsize::new(0));
        let seen = started.clone();
        let (commit, committed) = tokio::sync::oneshot::channel::<()>();
        let running = attempts.start(
            &clock(),
            Some(async move { committed.await.map_err(drop) }),
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                ok(2)
            },
            Duration::from_secs(60),
        );
        let again = idle_queue(&attempts);
        assert!(
            again.is_none(),
            "the kept task is handed the job, not kept idle"
        );
        for _ in 0..10 {
            tokio::task::yield_now().await;
            assert_eq!(
                started.load(Ordering::SeqCst),
                0,
                "started before its commit"
            );
        }
        commit.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the commit did not wake the kept task");
        assert!(matches!(ended, Attempted::Done(Ok(2), _)));
        let reused = idle_queue(&attempts).expect("the task was kept again");
        assert!(
            std::sync::Arc::ptr_eq(&kept, &reused),
            "a new task ran the job"
        );
    }

    #[tokio::test]
    async fn a_refused_commit_is_the_runs_and_the_attempt_never_starts() {
        let attempts = Attempts::default();
        let started = Arc::new(AtomicUsize::new(0));
        let seen = started.clone();
        let before = async { Err::<(), _>("refused") };
        let ended = attempts
            .start(
                &clock(),
                Some(before),
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    ok(8)
                },
                Duration::from_secs(60),
            )
            .await;
        assert!(matches!(ended, Attempted::Refused("refused")));
        assert_eq!(started.load(Ordering::SeqCst), 0);
        // Its task never ran the attempt, so it takes the next.
        assert!(idle_queue(&attempts).is_some());
    }

    #[tokio::test]
    async fn an_attempt_given_up_while_it_waits_for_its_commit_never_starts() {
        let attempts = Attempts::default();
        let started = Arc::new(AtomicUsize::new(0));
        let seen = started.clone();
        let waited = Arc::new(AtomicUsize::new(0));
        let done = waited.clone();
        let (commit, committed) = tokio::sync::oneshot::channel::<()>();
        let before = async move {
            let waited = committed.await.map_err(drop);
            done.fetch_add(1, Ordering::SeqCst);
            waited
        };
        let mut running = Box::pin(attempts.start(
            &clock(),
            Some(before),
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                ok(9)
            },
            Duration::from_secs(60),
        ));
        assert!(futures::poll!(running.as_mut()).is_pending());
        drop(running);
        commit.send(()).unwrap();
        // The commit is still waited for (the run's next step waits for it in turn).
        tokio::time::timeout(Duration::from_secs(5), async {
            while waited.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the commit was not waited for");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(started.load(Ordering::SeqCst), 0, "a given-up attempt ran");
    }

    #[tokio::test]
    async fn an_attempt_that_waits_times_out_on_its_task() {
        let attempts = Attempts::default();
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            attempts.start(
                &clock(),
                None::<std::future::Ready<Result<(), ()>>>,
                std::future::pending::<std::thread::Result<()>>(),
                Duration::from_millis(30),
            ),
        )
        .await
        .expect("the deadline of an attempt that waits never came");
        assert!(matches!(ended, Attempted::TimedOut));
        // Its task dropped the attempt itself, so it is free for the next.
        assert!(idle_queue(&attempts).is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_attempt_that_holds_its_thread_past_its_deadline_is_given_up() {
        let attempts = Attempts::default();
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            attempts.start(
                &clock(),
                None::<std::future::Ready<Result<(), ()>>>,
                async move {
                    let _ = blocked.recv_timeout(Duration::from_secs(10));
                    ok(())
                },
                Duration::from_millis(50),
            ),
        )
        .await
        .expect("the watcher never gave up an attempt holding its thread");
        assert!(matches!(ended, Attempted::TimedOut));
        assert!(idle_queue(&attempts).is_none(), "a blocked task was kept");
        let _ = release.send(());
    }

    #[test]
    fn the_watcher_never_expires_the_job_after_the_one_it_saw() {
        let watched = Watched::new(clock());
        let first = watched.next_job();
        // Polled past a deadline long gone...
        watched.polling(first, 1);
        // ...but done meanwhile: the run hands the task its next job, and the watcher's
        // look still reads the first job's word.
        let second = watched.next_job();
        assert!(!watched.expire_if_due(), "expired a later job");
        // The second job polled past its own deadline is expired, once.
        watched.polling(second, 1);
        assert!(watched.expire_if_due());
        assert!(!watched.expire_if_due());
        assert!(watched.expired_or_register(second, Waker::noop()));
        assert!(!watched.expired_or_register(first, Waker::noop()));
    }
}

#[cfg(all(test, cairn_loom))]
mod loom_tests {
    //! The watcher's hand-off (`Watched`): the watcher thread expires a job polled past
    //! its deadline while the run registers its waker for that job, and the run may hand
    //! the task its next job at the same time. Real code: `next_job`, `polling`,
    //! `expire_if_due`, `expired_or_register`, on loom's mutex and atomics.
    use super::*;
    use crate::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(std::sync::Arc<AtomicUsize>);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A worker task's watch, on a virtual clock that reads 1 s.
    fn watched_at_one_second() -> Watched {
        Watched::new(std::sync::Arc::new(crate::clock::VirtualClock::new(
            std::time::UNIX_EPOCH + Duration::from_secs(1),
        )))
    }

    #[test]
    fn an_expiry_is_seen_by_the_run_or_wakes_it() {
        loom::model(|| {
            let watched = Arc::new(watched_at_one_second());
            let job = watched.next_job();
            // Polled with a deadline already passed on the clock (it reads 1 s).
            watched.polling(job, 1);
            let watcher = {
                let watched = watched.clone();
                loom::thread::spawn(move || watched.expire_if_due())
            };
            let woken = std::sync::Arc::new(AtomicUsize::new(0));
            let waker = Waker::from(std::sync::Arc::new(Count(woken.clone())));
            let seen = watched.expired_or_register(job, &waker);
            assert!(
                watcher.join().unwrap(),
                "the watcher missed a job past its deadline"
            );
            // Either the run saw the expiry in its look, or the watcher woke it after.
            assert!(seen || woken.load(Ordering::SeqCst) == 1);
        });
    }

    #[test]
    fn a_next_job_is_never_expired_for_the_one_before() {
        loom::model(|| {
            let watched = Arc::new(watched_at_one_second());
            let first = watched.next_job();
            watched.polling(first, 1);
            let watcher = {
                let watched = watched.clone();
                loom::thread::spawn(move || {
                    watched.expire_if_due();
                })
            };
            // The first attempt returned; the run hands the task its next job, which is
            // not being polled yet.
            watched.polled();
            let second = watched.next_job();
            watcher.join().unwrap();
            assert!(!watched.expired_or_register(second, Waker::noop()));
        });
    }
}

#[cfg(all(test, cairn_loom))]
mod queue_loom_tests {
    //! The hand-off of a job to a parked worker task (`Worker::hand` against `serve`),
    //! with the commit the job waits for landing at any point: the run polls what the job
    //! waits for with the task's waker and puts the job in the queue under its lock, so
    //! that the commit, not the hand-off, wakes the task. Whatever the interleaving, the
    //! task runs the job, then ends once the run dropped its handle.
    //!
    //! Real code: `hand`, `serve` (driven by `loom::future::block_on`, which reports a
    //! deadlock if nothing wakes it), `RunJob`, `Worker`'s drop; the commit is a
    //! loom-visible flag with a waker.
    use super::*;
    use crate::sync::{AtomicBool, Mutex};

    const PREEMPTIONS_MAX: usize = 3;

    /// A commit the job waits for: done once `land` is called.
    #[derive(Default)]
    struct Commit {
        landed: AtomicBool,
        waker: Mutex<Option<Waker>>,
    }

    impl Commit {
        fn land(&self) {
            self.landed.store(true, Ordering::SeqCst);
            let waker = lock(&self.waker).take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }

        fn wait(self: std::sync::Arc<Self>) -> impl Future<Output = Result<(), ()>> {
            std::future::poll_fn(move |cx| {
                *lock(&self.waker) = Some(cx.waker().clone());
                if self.landed.load(Ordering::SeqCst) {
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            })
        }
    }

    /// Three threads: bounded to `PREEMPTIONS_MAX` preemptions (`LOOM_MAX_PREEMPTIONS`
    /// overrides it), as the timer model is. The mutations it was checked against are
    /// caught within the bound: the job put in the queue after the lock is let go, and
    /// no wake when what it waits for is already done.
    #[test]
    fn a_job_handed_to_a_parked_task_runs_once_its_commit_lands() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound.get_or_insert(PREEMPTIONS_MAX);
        builder.check(|| {
            let watched = std::sync::Arc::new(Watched::new(std::sync::Arc::new(
                crate::clock::VirtualClock::new(std::time::UNIX_EPOCH + Duration::from_secs(1)),
            )));
            let commit = std::sync::Arc::new(Commit::default());
            let worker = Worker {
                watched: watched.clone(),
            };
            // The task, parked on its empty queue until a job or its end wakes it.
            let task = {
                let serving = Serving(watched.clone());
                loom::thread::spawn(move || loom::future::block_on(serve(serving)))
            };
            let landing = {
                let commit = commit.clone();
                loom::thread::spawn(move || commit.land())
            };
            let (reply, output) = oneshot::channel::<Attempted<(), ()>>();
            let job = watched.next_job();
            worker
                .hand(Box::pin(RunJob {
                    before: Some(commit.clone().wait()),
                    attempt: Some({
                        let commit = commit.clone();
                        async move {
                            assert!(
                                commit.landed.load(Ordering::SeqCst),
                                "the attempt started before its commit"
                            );
                            Ok(())
                        }
                    }),
                    reply: Some(reply),
                    watched: watched.clone(),
                    job,
                    budget: Duration::from_secs(60),
                    started: None,
                    timer: None,
                }))
                .map_err(drop)
                .unwrap();
            // The run waits for the output with its handle held: only the commit (or the
            // hand-off itself, if the commit came first) can wake the task.
            let ended = loom::future::block_on(output);
            assert!(
                matches!(ended, Ok(Attempted::Done(Ok(()), _))),
                "the handed job did not run"
            );
            drop(worker);
            landing.join().unwrap();
            task.join().unwrap();
        });
    }
}
