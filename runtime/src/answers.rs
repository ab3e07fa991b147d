//! Who waits for an update's answer: one entry per run, counted, woken by the commit
//! path (`engine::count` and the dispatcher) when the run records an answer or ends. A
//! leaf: the engine holds it, the update call registers in it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::sync::{lock, Mutex, Notify};

/// The callers waiting for update answers, by run: woken by the commit path when a run
/// records an answer or ends.
#[derive(Debug, Default)]
pub(crate) struct AnswerWaiters {
    by_run: Mutex<HashMap<u128, (Arc<Notify>, usize)>>,
}

impl AnswerWaiters {
    pub(crate) fn register(self: &Arc<Self>, run: u128) -> AnswerWait {
        let notify = {
            let mut map = lock(&self.by_run);
            let entry = map
                .entry(run)
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        AnswerWait {
            waiters: self.clone(),
            run,
            notify,
        }
    }

    /// Run `run` recorded an answer or ended: its waiters look at its history again.
    pub(crate) fn wake(&self, run: u128) {
        if let Some((notify, _)) = lock(&self.by_run).get(&run) {
            notify.notify_waiters();
        }
    }
}

/// One caller's registration; removes the run's entry when its last waiter leaves.
pub(crate) struct AnswerWait {
    waiters: Arc<AnswerWaiters>,
    run: u128,
    pub(crate) notify: Arc<Notify>,
}

impl Drop for AnswerWait {
    fn drop(&mut self) {
        let mut map = lock(&self.waiters.by_run);
        if let Some(entry) = map.get_mut(&self.run) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                map.remove(&self.run);
            }
        }
    }
}
