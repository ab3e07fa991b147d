//! The tables of a Cairn redb file and the helpers every part of the store shares to
//! read and write them: the row encoding (a version byte, then postcard), storage errors,
//! walking a history through the log. A leaf: the store, the task index and the outbox
//! build on it, and it imports none of them.

use redb::{ReadableTable, TableDefinition};

use cairn_core::event::EventRecord;
use cairn_core::journal::{InstanceRow, RawEvent};

use crate::error::{Error, Result, StorageFailure};

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

pub(crate) const INSTANCES: TableDefinition<u128, &[u8]> = TableDefinition::new("instances");

/// Every unfinished run by (start time in ms, internal key) -> its suspension hint:
/// recovery's list of what to resume, and the query index of status `Running` (storage
/// format 10; keyed by start time, a page of running runs is one range read).
pub(crate) const OPEN_RUNS: TableDefinition<(u64, u128), &[u8]> = TableDefinition::new("open_runs");

/// What `open_runs` replaced: the unfinished runs by internal key alone (storage formats
/// 1 to 9). Read only from an older file opened read-only, and by its migration.
pub(crate) const LEGACY_RUNNING: TableDefinition<u128, &[u8]> = TableDefinition::new("running");

/// Open human tasks by (run, step): version byte + postcard [`TaskRow`].
pub(crate) const OPEN_TASKS: TableDefinition<(u128, u32), &[u8]> =
    TableDefinition::new("open_tasks");
/// The inboxes open tasks are listed in: (party key, created, run, step). See
/// [`cairn_core::task::Party`].
pub(crate) const TASK_INBOX: TableDefinition<(&str, u64, u128, u32), ()> =
    TableDefinition::new("task_inbox");
/// The notification outbox: id (the LSN of the event it derives from) -> version byte +
/// postcard `OutboxRow`.
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Pending notifications by (next attempt due, id).
pub(crate) const OUTBOX_DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("outbox_due");
/// Document content by SHA-256, stored once however many versions or instances name it.
pub(crate) const DOCUMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("documents");

pub(crate) fn decode_row(key: u128, bytes: &[u8]) -> Result<InstanceRow> {
    {
        let location = || format!("instances table, key {key:032x}");
        let row: InstanceRow = decode_versioned(location, bytes)?;
        if row.key != key {
            return Err(Error::Corrupt {
                location: location(),
                message: format!("row names key {:032x}", row.key),
            });
        }
        Ok(row)
    }
}

pub(crate) use cairn_core::commit::{decode_versioned, encode_versioned};

/// A redb error as a storage failure, kept as its source (an I/O error as itself, so a
/// host can read its kind); `contain` names the file.
pub(crate) fn storage(err: impl Into<redb::Error>) -> Error {
    match err.into() {
        redb::Error::Io(io) => Error::Storage(StorageFailure::caused_by("I/O error", io)),
        other => Error::Storage(StorageFailure::caused_by("", other)),
    }
}

/// The events of run `row`, oldest first, walked back from its head through each
/// event's link to the previous one (in a read or a write transaction).
pub(crate) fn read_events(
    row: &InstanceRow,
    log: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Vec<RawEvent>> {
    let len = usize::try_from(row.next_seq).map_err(|_| {
        chain_error(
            row,
            row.head_lsn,
            "the row counts more events than can be read",
        )
    })?;
    // `len` comes from disk: a damaged row must give a Corrupt error below, not a huge
    // allocation here.
    let mut events = Vec::with_capacity(len.min(4096));
    let mut next = Some(row.head_lsn);
    while let Some(lsn) = next {
        if events.len() >= len {
            return Err(chain_error(
                row,
                lsn,
                "history is longer than the instance row says",
            ));
        }
        let guard = log
            .get(lsn)
            .map_err(storage)?
            .ok_or_else(|| chain_error(row, lsn, "event is missing from the log"))?;
        let envelope = guard.value().to_vec();
        let (_, _, prev) = EventRecord::peek_link(&envelope)
            .map_err(|err| chain_error(row, lsn, &err.to_string()))?;
        next = prev;
        events.push(RawEvent { lsn, envelope });
    }
    events.reverse();
    Ok(events)
}

pub(crate) fn chain_error(row: &InstanceRow, lsn: u64, message: &str) -> Error {
    Error::Corrupt {
        location: format!("history of instance `{}` at LSN {lsn}", row.id),
        message: message.to_owned(),
    }
}
