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

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

use crate::sync::{lock, Mutex};

/// An attempt, wrapped to send its output back, as a worker task runs it.
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A worker task's queue; dropping it ends the task once its current job is done.
type Worker = mpsc::UnboundedSender<Job>;

/// What an attempt's future returned, or why it has no output: it panicked (the
/// payload), or its task was dropped (the runtime shut down).
pub(crate) type Finished<T> = Result<std::thread::Result<T>, Gone>;

/// The attempt's task ended without an output: the runtime is shutting down.
#[derive(Debug)]
pub(crate) struct Gone;

/// The idle worker task of one run, if it has one.
#[derive(Default)]
pub(crate) struct Attempts {
    idle: Mutex<Option<Worker>>,
}

impl Attempts {
    /// Starts `attempt` on a task of its own: the run's idle one, or a new one.
    ///
    /// Must be called within a tokio runtime.
    pub(crate) fn start<T, F>(&self, attempt: F) -> Running<'_, T>
    where
        F: Future<Output = std::thread::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, output) = oneshot::channel();
        let job: Job = Box::pin(run_job(attempt, reply));
        let idle = lock(&self.idle).take();
        let worker = match idle {
            Some(worker) => match worker.send(job) {
                Ok(()) => worker,
                // The task is gone (it cannot be while its queue is held here, short of
                // a shutdown); a new one takes the job.
                Err(mpsc::error::SendError(job)) => spawn_worker(job),
            },
            None => spawn_worker(job),
        };
        Running {
            attempts: self,
            output,
            worker: Some(worker),
        }
    }
}

/// A new worker task, with `job` already queued: it never waits for its first job.
fn spawn_worker(job: Job) -> Worker {
    let (worker, jobs) = mpsc::unbounded_channel();
    let _ = worker.send(job);
    drop(tokio::spawn(work(jobs)));
    worker
}

/// A worker task: runs its jobs one after another until its queue is dropped.
async fn work(mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = jobs.recv().await {
        job.await;
    }
}

/// Runs `attempt` and sends its output, unless the run stops waiting first: then the
/// attempt is dropped without another poll, as an aborted task's would be. An attempt
/// the run gave up before this task got to it never starts.
async fn run_job<T, F>(attempt: F, mut reply: oneshot::Sender<std::thread::Result<T>>)
where
    F: Future<Output = std::thread::Result<T>>,
{
    let mut attempt = std::pin::pin!(Some(attempt));
    let output = std::future::poll_fn(|cx| {
        // Checked before every poll of the attempt, not after: an abandoned attempt must
        // not take one more step.
        if reply.is_closed() {
            return Poll::Ready(None);
        }
        let Some(running) = attempt.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(output) = running.poll(cx) {
            return Poll::Ready(Some(output));
        }
        reply.poll_closed(cx).map(|()| None)
    })
    .await;
    // Dropped before the output is sent, as a task's future is before its output is
    // published: what the attempt holds is released by the time the run goes on.
    attempt.set(None);
    if let Some(output) = output {
        let _ = reply.send(output);
    }
}

/// An attempt in flight. Dropping it before its output arrives abandons the attempt: it
/// is dropped at its next poll, and its task is never used again.
pub(crate) struct Running<'a, T> {
    attempts: &'a Attempts,
    output: oneshot::Receiver<std::thread::Result<T>>,
    worker: Option<Worker>,
}

impl<T> Future for Running<'_, T> {
    type Output = Finished<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let finished = match Pin::new(&mut this.output).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(output)) => Ok(output),
            Poll::Ready(Err(_)) => Err(Gone),
        };
        // Done with its job, so free for the next: kept unless the run already keeps one
        // (from a sibling attempt), in which case this one ends.
        if let (Ok(_), Some(worker)) = (&finished, this.worker.take()) {
            let mut idle = lock(&this.attempts.idle);
            if idle.is_none() {
                *idle = Some(worker);
            }
        }
        Poll::Ready(finished)
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

    #[tokio::test]
    async fn a_finished_attempt_leaves_its_task_for_the_next() {
        let attempts = Attempts::default();
        let first = attempts.start(async { ok(1) }).await;
        assert!(matches!(first, Ok(Ok(1))));
        let kept = lock(&attempts.idle).clone();
        let second = attempts.start(async { ok(2) }).await;
        assert!(matches!(second, Ok(Ok(2))));
        let again = lock(&attempts.idle).clone();
        let (Some(kept), Some(again)) = (kept, again) else {
            panic!("no task was kept after a finished attempt");
        };
        assert!(
            kept.same_channel(&again),
            "the second attempt used a new task"
        );
    }

    #[tokio::test]
    async fn concurrent_attempts_run_on_tasks_of_their_own() {
        let attempts = Attempts::default();
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        // The first waits for the second: on one task they would never finish.
        let first = attempts.start(async move {
            let _ = gate.await;
            ok("first")
        });
        let second = attempts.start(async move {
            let _ = open.send(());
            ok("second")
        });
        let both = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(first, second)
        })
        .await
        .expect("concurrent attempts were serialised on one task");
        assert!(matches!(both, (Ok(Ok("first")), Ok(Ok("second")))));
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
        let hanging = attempts.start(async move {
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
        let next = attempts.start(async { ok(3) }).await;
        assert!(matches!(next, Ok(Ok(3))));
    }

    #[tokio::test]
    async fn an_attempt_given_up_before_its_task_ran_never_starts() {
        let attempts = Attempts::default();
        let started = Arc::new(AtomicUsize::new(0));
        let seen = started.clone();
        let given_up = attempts.start(async move {
            seen.fetch_add(1, Ordering::SeqCst);
            ok(())
        });
        // Dropped unpolled, before the worker task had a turn (one thread: it has not).
        drop(given_up);
        let next = attempts.start(async { ok(5) }).await;
        assert!(matches!(next, Ok(Ok(5))));
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
        let output = attempts
            .start(Holding {
                _flag: Flag(dropped.clone()),
            })
            .await;
        assert!(matches!(output, Ok(Ok(6))));
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocked_attempt_does_not_hold_up_the_next_one() {
        let attempts = Attempts::default();
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let stuck = attempts.start(async move {
            // Holds its thread, as a blocking activity would.
            let _ = blocked.recv_timeout(Duration::from_secs(10));
            ok(())
        });
        let mut stuck = Box::pin(stuck);
        assert!(futures::poll!(stuck.as_mut()).is_pending());
        drop(stuck);
        let next = tokio::time::timeout(Duration::from_secs(5), attempts.start(async { ok(4) }))
            .await
            .expect("the next attempt waited for a blocked one");
        assert!(matches!(next, Ok(Ok(4))));
        let _ = release.send(());
    }

    #[tokio::test]
    async fn a_panic_reaches_the_run() {
        let attempts = Attempts::default();
        let panicked = attempts
            .start(futures::FutureExt::catch_unwind(
                std::panic::AssertUnwindSafe(async {
                    if true {
                        panic!("boom");
                    }
                    5
                }),
            ))
            .await;
        let Ok(Err(payload)) = panicked else {
            panic!("the panic did not reach the run");
        };
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
    }
}
