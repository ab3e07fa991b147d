//! The one place Cairn's hand-written synchronisation imports its primitives from.
//!
//! Under `--cfg cairn_loom` these are loom's model-checked types; otherwise std's.
//! Keeping every import here is what lets the loom models cover the real code.

#[cfg(cairn_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64};
#[cfg(cairn_loom)]
pub(crate) use loom::sync::{
    Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

#[cfg(not(cairn_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64};
#[cfg(not(cairn_loom))]
pub(crate) use std::sync::{
    Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

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

/// Read-locks `lock`, recovering from poisoning for the same reason as [`lock`].
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    match lock.read() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Write-locks `lock`, recovering from poisoning for the same reason as [`lock`].
pub(crate) fn write<T>(lock: &RwLock<T>) -> crate::sync::RwLockWriteGuard<'_, T> {
    match lock.write() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
