//! The one place Cairn's hand-written synchronisation imports its primitives from.
//!
//! Under `--cfg cairn_loom` these are loom's model-checked types; otherwise std's.
//! Keeping every import here is what lets the loom models cover the real code.

#[cfg(cairn_loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(not(cairn_loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Locks `mutex`, recovering the guard if a panicking thread poisoned it.
///
/// Every structure guarded in Cairn stays consistent between statements (a push or a
/// swap of a `Vec`), so a poisoned lock holds valid data and refusing it would only turn
/// one panic into many.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
