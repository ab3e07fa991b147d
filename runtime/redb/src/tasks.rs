//! The open-task index: one row per open human task (`open_tasks`) and one entry per inbox
//! it is listed in (`task_inbox`), both kept in the same transaction as the task's events
//! and both rebuildable from the logs of the running instances ([`rebuild`]).
//!
//! Listing an inbox merges the ranges of its parties (a user's own, their name, each of
//! their roles) in creation order and stops at a full page, so the cost of a page does not
//! grow with the number of open tasks.

use redb::{ReadableTable, ReadableTableMetadata};

use cairn_core::journal::PAGE_ROWS_MAX;
use cairn_core::journal::{verify_history, RawHistory, TaskCursor, TaskPage, TaskQuery};
use cairn_core::replay::History;
use cairn_core::task::{Party, TaskRow};

use crate::error::{Error, Result};
use crate::tables::{
    decode_row as decode_instance, decode_versioned, encode_versioned, read_events, storage,
    INSTANCES, LOG, OPEN_RUNS, OPEN_TASKS, TASK_INBOX,
};

/// One party's range of the inbox table, with a look at its next entry.
type InboxRange<'t> = std::iter::Peekable<redb::Range<'t, (&'static str, u64, u128, u32), ()>>;

/// A page when the query names none.
const PAGE_ROWS_DEFAULT: usize = 50;

pub(crate) use cairn_core::commit::TaskIndexChange;

pub(crate) fn decode_row(key: u128, step: u32, bytes: &[u8]) -> Result<TaskRow> {
    decode_versioned(
        || format!("open_tasks table, run {key:032x} step {step}"),
        bytes,
    )
}

/// The two tables, open in one write transaction.
pub(crate) struct TaskTables<'t> {
    rows: redb::Table<'t, (u128, u32), &'static [u8]>,
    inbox: redb::Table<'t, (&'static str, u64, u128, u32), ()>,
}

impl<'t> TaskTables<'t> {
    pub(crate) fn open(txn: &'t redb::WriteTransaction) -> Result<Self> {
        Ok(Self {
            rows: txn.open_table(OPEN_TASKS).map_err(storage)?,
            inbox: txn.open_table(TASK_INBOX).map_err(storage)?,
        })
    }

    pub(crate) fn apply(&mut self, change: &TaskIndexChange) -> Result<()> {
        match change {
            TaskIndexChange::Opened(row) => self.put(row),
            TaskIndexChange::Changed {
                key,
                step,
                actor,
                change,
            } => {
                let Some(mut row) = self.remove(*key, *step)? else {
                    // The events were checked by the run's history; an index without the
                    // row was damaged, and the change cannot be placed.
                    return Err(Error::Corrupt {
                        location: format!("open_tasks table, run {key:032x} step {step}"),
                        message: "a change was recorded for a task the index does not hold".into(),
                    });
                };
                row.apply(actor, change);
                self.put(&row)
            }
            TaskIndexChange::Closed { key, step } => self.remove(*key, *step).map(drop),
            TaskIndexChange::RunEnded { key } => {
                let steps: Vec<u32> = self
                    .rows
                    .range((*key, 0)..=(*key, u32::MAX))
                    .map_err(storage)?
                    .map(|entry| entry.map(|(k, _)| k.value().1).map_err(storage))
                    .collect::<Result<_>>()?;
                for step in steps {
                    self.remove(*key, step)?;
                }
                Ok(())
            }
        }
    }

    fn put(&mut self, row: &TaskRow) -> Result<()> {
        let bytes = encode_versioned(row, "task row")?;
        self.rows
            .insert((row.key, row.step), bytes.as_slice())
            .map_err(storage)?;
        for party in row.parties() {
            let party = party.key();
            self.inbox
                .insert((party.as_str(), row.created_at_ms, row.key, row.step), ())
                .map_err(storage)?;
        }
        Ok(())
    }

    fn remove(&mut self, key: u128, step: u32) -> Result<Option<TaskRow>> {
        let Some(bytes) = self.rows.remove((key, step)).map_err(storage)? else {
            return Ok(None);
        };
        let row = decode_row(key, step, bytes.value())?;
        drop(bytes);
        for party in row.parties() {
            let party = party.key();
            self.inbox
                .remove((party.as_str(), row.created_at_ms, row.key, row.step))
                .map_err(storage)?;
        }
        Ok(Some(row))
    }
}

/// Builds the open-task index afresh from the logs of the running instances: what a
/// migration does, and what repairs an index that disagrees with the log. Returns how
/// many open tasks it found.
pub(crate) fn rebuild(txn: &redb::WriteTransaction) -> Result<usize> {
    // Emptied by deletion: the tables are recreated just below.
    txn.delete_table(OPEN_TASKS).map_err(storage)?;
    txn.delete_table(TASK_INBOX).map_err(storage)?;
    let mut tables = TaskTables::open(txn)?;
    let open_runs = txn.open_table(OPEN_RUNS).map_err(storage)?;
    let instances = txn.open_table(INSTANCES).map_err(storage)?;
    let log = txn.open_table(LOG).map_err(storage)?;
    if open_runs.len().map_err(storage)? == 0 {
        return Ok(0);
    }
    let mut found = 0;
    for entry in open_runs.iter().map_err(storage)? {
        let (at, _) = entry.map_err(storage)?;
        let (_, key) = at.value();
        let Some(bytes) = instances.get(key).map_err(storage)? else {
            continue;
        };
        let row = decode_instance(key, bytes.value())?;
        let events = read_events(&row, &log)?;
        let (row, events) = verify_history(RawHistory { row, events })?;
        let history = History::from_records(events.iter().map(|event| &event.record))?;
        for (step, state) in history.open_tasks() {
            let task = TaskRow::of_state(key, &row.id, &row.workflow_type, step, state);
            tables.put(&task)?;
            found += 1;
        }
    }
    Ok(found)
}

/// One page of open tasks: the parties' inbox ranges merged in creation order, each task
/// once, filtered, up to the page size.
pub(crate) fn query(txn: &redb::ReadTransaction, query: &TaskQuery) -> Result<TaskPage> {
    let rows = txn.open_table(OPEN_TASKS).map_err(storage)?;
    let inbox = txn.open_table(TASK_INBOX).map_err(storage)?;
    let limit = match query.limit {
        0 => PAGE_ROWS_DEFAULT,
        n => n.min(PAGE_ROWS_MAX),
    };
    let parties: Vec<String> = if query.parties.is_empty() {
        vec![Party::All.key()]
    } else {
        let mut keys: Vec<String> = query.parties.iter().map(Party::key).collect();
        keys.sort();
        keys.dedup();
        keys
    };
    let from = query
        .after
        .map_or((0, 0, 0), |c| (c.created_at_ms, c.key, c.step));
    let mut ranges = Vec::with_capacity(parties.len());
    for party in &parties {
        let range = inbox
            .range(
                (party.as_str(), from.0, from.1, from.2)
                    ..=(party.as_str(), u64::MAX, u128::MAX, u32::MAX),
            )
            .map_err(storage)?;
        ranges.push(range.peekable());
    }
    let head = |range: &mut InboxRange<'_>| -> Result<Option<(u64, u128, u32)>> {
        match range.peek() {
            None => Ok(None),
            Some(Ok((key, _))) => {
                let (_, created, run, step) = key.value();
                Ok(Some((created, run, step)))
            }
            Some(Err(_)) => match range.next() {
                Some(Err(err)) => Err(storage(err)),
                _ => Ok(None),
            },
        }
    };
    let mut page = TaskPage::default();
    loop {
        // The smallest head across the parties; every range at it moves on (a task listed
        // in several of the actor's inboxes is one task).
        let mut smallest: Option<(u64, u128, u32)> = None;
        for range in &mut ranges {
            if let Some(at) = head(range)? {
                smallest = Some(smallest.map_or(at, |s| s.min(at)));
            }
        }
        let Some(at) = smallest else {
            break;
        };
        for range in &mut ranges {
            if head(range)? == Some(at) {
                range.next();
            }
        }
        if query.after.is_some() && at == from {
            continue;
        }
        if page.rows.len() == limit {
            // Something is left after a full page.
            page.next = page.rows.last().map(TaskCursor::after);
            break;
        }
        let (_, key, step) = at;
        let Some(bytes) = rows.get((key, step)).map_err(storage)? else {
            return Err(Error::Corrupt {
                location: format!("task_inbox table, run {key:032x} step {step}"),
                message: "an inbox lists a task the open_tasks table does not hold".into(),
            });
        };
        let row = decode_row(key, step, bytes.value())?;
        if matches(&row, query) {
            page.rows.push(row);
        }
    }
    Ok(page)
}

fn matches(row: &TaskRow, query: &TaskQuery) -> bool {
    query
        .workflow_type
        .as_ref()
        .is_none_or(|t| *t == row.workflow_type)
        && query.name.as_ref().is_none_or(|n| *n == row.name)
        && query
            .due_before_ms
            .is_none_or(|before| row.due_at_ms.is_some_and(|due| due <= before))
}
