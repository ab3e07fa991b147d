//! The hand-off between the many tasks that append and the one writer thread that
//! commits: a mutex-guarded `Vec` the writer swaps out whole, so one lock acquisition
//! moves a whole batch. Model-checked with loom (`RUSTFLAGS="--cfg cairn_loom"`).

use crate::sync::{lock, Condvar, Mutex};

/// How long the writer polls for new appends before it sleeps on the condvar.
pub(crate) const WRITER_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// The queue was closed; the rejected item is handed back.
#[derive(Debug)]
pub(crate) struct Closed<T>(pub(crate) T);

#[derive(Debug)]
struct State<T> {
    items: Vec<T>,
    closed: bool,
}

/// Multi-producer, single-consumer batch queue.
#[derive(Debug)]
pub(crate) struct CommitQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> CommitQueue<T> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                items: Vec::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    /// Enqueues `item`. Never blocks beyond the short critical section.
    pub(crate) fn push(&self, item: T) -> Result<(), Closed<T>> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(Closed(item));
        }
        let was_empty = state.items.is_empty();
        state.items.push(item);
        drop(state);
        // Only the empty -> non-empty edge can find the writer asleep; later pushes land
        // in a batch it has not taken yet.
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Blocks until items are queued, then moves up to `max` of them (oldest first) into
    /// `out`. Returns `false` once the queue is closed and drained: the writer's signal to stop.
    pub(crate) fn take(&self, out: &mut Vec<T>, max: usize) -> bool {
        let mut spin_deadline: Option<std::time::Instant> = None;
        let mut state = lock(&self.state);
        loop {
            if !state.items.is_empty() {
                if state.items.len() <= max {
                    if out.is_empty() {
                        std::mem::swap(out, &mut state.items);
                    } else {
                        out.append(&mut state.items);
                    }
                } else {
                    out.extend(state.items.drain(..max));
                }
                return true;
            }
            if state.closed {
                return false;
            }
            // Right after a commit the woken workflows usually append again within tens
            // of microseconds; polling briefly saves the condvar wake-up (a futex call and,
            // in a VM, an inter-processor interrupt) on every step's critical path.
            // The loom models check the condvar path, which is what correctness rests on.
            if cfg!(not(cairn_loom)) {
                let now = std::time::Instant::now();
                let deadline = *spin_deadline.get_or_insert(now + WRITER_SPIN);
                if now < deadline {
                    drop(state);
                    std::thread::yield_now();
                    state = lock(&self.state);
                    continue;
                }
            }
            state = match self.ready.wait(state) {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }

    /// Refuses further pushes; items already queued are still taken.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_all();
    }
}

#[cfg(all(test, cairn_loom))]
mod loom_tests {
    use super::*;
    use crate::sync::Arc;

    /// Explores every interleaving (no preemption bound): the models are small enough.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        loom::model(f);
    }

    /// Two producers and the writer: each pushed item is taken exactly once, and the
    /// writer never sleeps through a push (a lost wake-up would hang the model).
    #[test]
    fn every_push_is_taken_once() {
        model(|| {
            let queue = Arc::new(CommitQueue::new());
            let producers: Vec<_> = (0..2u32)
                .map(|p| {
                    let queue = queue.clone();
                    loom::thread::spawn(move || queue.push(p).unwrap())
                })
                .collect();
            let mut seen = Vec::new();
            let mut batch = Vec::new();
            while seen.len() < 2 {
                assert!(queue.take(&mut batch, 8));
                seen.append(&mut batch);
            }
            for producer in producers {
                producer.join().unwrap();
            }
            seen.sort_unstable();
            assert_eq!(seen, [0, 1]);
            queue.close();
            assert!(!queue.take(&mut batch, 8));
        });
    }

    /// A push racing with close is either taken by the writer or handed back to its
    /// sender, never lost; the writer stops only after close and a full drain.
    #[test]
    fn push_racing_close_is_never_lost() {
        model(|| {
            let queue = Arc::new(CommitQueue::new());
            let pusher = {
                let queue = queue.clone();
                loom::thread::spawn(move || queue.push(7u8).is_ok())
            };
            let closer = {
                let queue = queue.clone();
                loom::thread::spawn(move || queue.close())
            };
            let mut taken = Vec::new();
            while queue.take(&mut taken, 8) {}
            let accepted = pusher.join().unwrap();
            closer.join().unwrap();
            assert_eq!(accepted, taken == [7]);
        });
    }
}

#[cfg(all(test, not(cairn_loom)))]
mod tests {
    use super::*;

    #[test]
    fn take_respects_max_and_order() {
        let queue = CommitQueue::new();
        for i in 0..5 {
            queue.push(i).unwrap();
        }
        let mut out = Vec::new();
        assert!(queue.take(&mut out, 2));
        assert_eq!(out, [0, 1]);
        out.clear();
        assert!(queue.take(&mut out, 10));
        assert_eq!(out, [2, 3, 4]);
        queue.close();
        out.clear();
        assert!(!queue.take(&mut out, 10));
        assert!(queue.push(9).is_err());
    }
}
