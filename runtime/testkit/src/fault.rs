//! Storage that fails on purpose, for tests of the durability promises.
//!
//! [`FaultDisk`] is a redb storage backend held in memory that knows which bytes were
//! made durable by a sync. It can lose power at a chosen sync (every write since the
//! previous sync is then gone, or only some of them, or one is torn at a 4 KiB
//! boundary), or fail writes or syncs with an I/O error such as "no space left". After
//! the fault it refuses every operation, like a disk that went away; the test then
//! builds the image a reboot would see and opens a fresh runtime on it.

use std::io;
use std::path::Path;

use std::sync::{Arc, Mutex, MutexGuard};

use cairn_core::error::Result;
use cairn_redb::store::RedbStore;

/// The data behind a poisoned lock is still consistent here: every critical section
/// only assigns plain values.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// When the disk fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Never.
    None,
    /// The `n`-th sync (counting from 1) loses power instead of completing.
    PowerLossAtSync(u64),
    /// Every write after the first `n` fails with `kind` (e.g. `StorageFull`).
    FailWritesAfter(u64, io::ErrorKind),
    /// The `n`-th sync fails with `kind` (the data may or may not be on disk).
    FailSyncAt(u64, io::ErrorKind),
}

/// What a reboot finds of the writes that were not synced when power went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Survivors {
    /// None of them.
    Nothing,
    /// A pseudo-random subset (chosen by the seed), applied in order.
    Subset(u64),
    /// All writes before one chosen by the seed, and that one torn after its first
    /// 4 KiB-aligned part.
    Torn(u64),
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug)]
struct DiskState {
    synced: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Pending>,
    syncs: u64,
    /// Every call to `sync_data`, refused ones included.
    sync_calls: u64,
    writes: u64,
    fault: Fault,
    failed: bool,
}

/// An in-memory redb backend with fault injection; clones share one disk.
#[derive(Clone, Debug)]
pub struct FaultDisk {
    state: Arc<Mutex<DiskState>>,
}

fn refused() -> io::Error {
    io::Error::other("the disk failed earlier (injected fault); reopen on a recovered image")
}

impl FaultDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::from_image(Vec::new())
    }

    /// A disk holding `image` as durable content (a reboot after a power loss).
    pub fn from_image(image: Vec<u8>) -> Self {
        Self {
            state: Arc::new(Mutex::new(DiskState {
                synced: image.clone(),
                current: image,
                pending: Vec::new(),
                syncs: 0,
                sync_calls: 0,
                writes: 0,
                fault: Fault::None,
                failed: false,
            })),
        }
    }

    /// Arms `fault`.
    pub fn set_fault(&self, fault: Fault) {
        lock(&self.state).fault = fault;
    }

    /// Syncs completed so far.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// Calls to sync, completed or refused: a caller that retries a failed sync shows here.
    pub fn sync_calls(&self) -> u64 {
        lock(&self.state).sync_calls
    }

    /// Whether the injected fault has happened.
    pub fn failed(&self) -> bool {
        lock(&self.state).failed
    }

    /// The content a reboot would find: the synced bytes plus `survivors` of the
    /// writes made since the last sync.
    pub fn image_after_power_loss(&self, survivors: Survivors) -> Vec<u8> {
        let state = lock(&self.state);
        let mut image = state.synced.clone();
        let mut rng = match survivors {
            Survivors::Subset(seed) | Survivors::Torn(seed) => seed | 1,
            Survivors::Nothing => 1,
        };
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let torn_at = match survivors {
            Survivors::Torn(_) if !state.pending.is_empty() => {
                Some((next() % state.pending.len() as u64) as usize)
            }
            _ => None,
        };
        for (index, op) in state.pending.iter().enumerate() {
            let keep = match survivors {
                Survivors::Nothing => false,
                Survivors::Subset(_) => next() % 2 == 0,
                Survivors::Torn(_) => torn_at.is_some_and(|t| index <= t),
            };
            if !keep {
                continue;
            }
            match op {
                Pending::SetLen(len) => {
                    image.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0)
                }
                Pending::Write { offset, data } => {
                    let data = if Some(index) == torn_at {
                        let cut = (data.len() / 2) & !0xFFF;
                        &data[..cut]
                    } else {
                        &data[..]
                    };
                    let start = usize::try_from(*offset).unwrap_or(usize::MAX);
                    let end = start.saturating_add(data.len());
                    if image.len() < end {
                        image.resize(end, 0);
                    }
                    image[start..end].copy_from_slice(data);
                }
            }
        }
        image
    }

    /// Opens a [`RedbStore`] on this disk (`label` names it in messages).
    ///
    /// # Errors
    /// As [`RedbStore::open`].
    pub fn open_store(&self, label: &str) -> Result<RedbStore> {
        let existed = !lock(&self.state).current.is_empty();
        RedbStore::open_backend(self.clone(), Path::new(label), existed)
    }
}

impl Default for FaultDisk {
    fn default() -> Self {
        Self::new()
    }
}

impl redb::StorageBackend for FaultDisk {
    fn len(&self) -> io::Result<u64> {
        let state = lock(&self.state);
        if state.failed {
            return Err(refused());
        }
        Ok(state.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = lock(&self.state);
        if state.failed {
            return Err(refused());
        }
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.saturating_add(out.len());
        let data = state.current.get(start..end).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the disk",
            )
        })?;
        out.copy_from_slice(data);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.failed {
            return Err(refused());
        }
        let size = usize::try_from(len).map_err(io::Error::other)?;
        state.current.resize(size, 0);
        state.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.sync_calls += 1;
        if state.failed {
            return Err(refused());
        }
        let number = state.syncs + 1;
        match state.fault {
            Fault::PowerLossAtSync(n) if n == number => {
                state.failed = true;
                return Err(io::Error::other("power lost during sync (injected)"));
            }
            Fault::FailSyncAt(n, kind) if n == number => {
                state.failed = true;
                return Err(io::Error::new(kind, "sync failed (injected)"));
            }
            _ => {}
        }
        state.synced = state.current.clone();
        state.pending.clear();
        state.syncs = number;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.failed {
            return Err(refused());
        }
        if let Fault::FailWritesAfter(n, kind) = state.fault {
            if state.writes >= n {
                state.failed = true;
                return Err(io::Error::new(kind, "write failed (injected)"));
            }
        }
        state.writes += 1;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.saturating_add(data.len());
        if state.current.len() < end {
            state.current.resize(end, 0);
        }
        state.current[start..end].copy_from_slice(data);
        state.pending.push(Pending::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}
