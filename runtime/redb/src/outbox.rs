//! The notification outbox: one row per notification (`outbox`, keyed by the LSN of the
//! event it derives from, which makes its id unique and stable), written in the commit of
//! that event; and the pending ones by when their next attempt is due (`outbox_due`).
//! Each delivery attempt rewrites the row with the attempt added, in a commit of its own.

use redb::ReadableTable;

use cairn_core::notify::{Delivery, DeliveryAttempt, OutboxRow};

use crate::error::{Error, Result};
use crate::tables::{decode_versioned, encode_versioned, storage, OUTBOX, OUTBOX_DUE};

/// One write to the outbox, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxWrite {
    /// A notification derived from an event of the same commit.
    New(Box<OutboxRow>),
    /// A delivery attempt of notification `id` was made; it now stands at `delivery`.
    Attempted {
        /// The notification.
        id: u64,
        /// The attempt.
        attempt: DeliveryAttempt,
        /// Where its delivery stands after it.
        delivery: Delivery,
    },
}

fn decode(id: u64, bytes: &[u8]) -> Result<OutboxRow> {
    decode_versioned(|| format!("outbox table, notification {id}"), bytes)
}

/// Applies outbox writes inside a commit's transaction.
pub(crate) fn apply(txn: &redb::WriteTransaction, writes: &[OutboxWrite]) -> Result<()> {
    let mut rows = txn.open_table(OUTBOX).map_err(storage)?;
    let mut due = txn.open_table(OUTBOX_DUE).map_err(storage)?;
    for write in writes {
        match write {
            OutboxWrite::New(row) => {
                let id = row.notification.id;
                let bytes = encode_versioned(row.as_ref(), "outbox row")?;
                rows.insert(id, bytes.as_slice()).map_err(storage)?;
                if let Delivery::Pending { next_attempt_ms } = row.delivery {
                    due.insert((next_attempt_ms, id), ()).map_err(storage)?;
                }
            }
            OutboxWrite::Attempted {
                id,
                attempt,
                delivery,
            } => {
                let mut row = match rows.get(*id).map_err(storage)? {
                    Some(bytes) => decode(*id, bytes.value())?,
                    None => {
                        return Err(Error::InvalidArgument(format!(
                            "the outbox holds no notification {id}"
                        )))
                    }
                };
                if let Delivery::Pending { next_attempt_ms } = row.delivery {
                    due.remove((next_attempt_ms, *id)).map_err(storage)?;
                }
                row.attempts.push(attempt.clone());
                row.delivery = *delivery;
                let bytes = encode_versioned(&row, "outbox row")?;
                rows.insert(*id, bytes.as_slice()).map_err(storage)?;
                if let Delivery::Pending { next_attempt_ms } = row.delivery {
                    due.insert((next_attempt_ms, *id), ()).map_err(storage)?;
                }
            }
        }
    }
    Ok(())
}

/// The notifications due at `now_ms` (oldest due first, at most `limit`), and when the
/// next one after them is due.
pub(crate) fn due(
    txn: &redb::ReadTransaction,
    now_ms: u64,
    limit: usize,
) -> Result<(Vec<OutboxRow>, Option<u64>)> {
    let rows = txn.open_table(OUTBOX).map_err(storage)?;
    let due = txn.open_table(OUTBOX_DUE).map_err(storage)?;
    let mut out = Vec::new();
    let mut next = None;
    for entry in due.range((0, 0)..=(u64::MAX, u64::MAX)).map_err(storage)? {
        let (key, ()) = entry.map(|(k, _)| (k, ())).map_err(storage)?;
        let (at_ms, id) = key.value();
        if at_ms > now_ms || out.len() == limit {
            next = Some(at_ms);
            break;
        }
        match rows.get(id).map_err(storage)? {
            Some(bytes) => out.push(decode(id, bytes.value())?),
            None => {
                return Err(Error::Corrupt {
                    location: format!("outbox_due table, notification {id}"),
                    message: "it lists a notification the outbox does not hold".into(),
                })
            }
        }
    }
    Ok((out, next))
}

/// The outbox in id order, after `after`, at most `limit` rows.
pub(crate) fn list(
    txn: &redb::ReadTransaction,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<OutboxRow>> {
    let rows = txn.open_table(OUTBOX).map_err(storage)?;
    let start = after.map_or(0, |id| id.saturating_add(1));
    let mut out = Vec::new();
    if after == Some(u64::MAX) {
        return Ok(out);
    }
    for entry in rows.range(start..).map_err(storage)? {
        if out.len() == limit {
            break;
        }
        let (id, bytes) = entry.map_err(storage)?;
        out.push(decode(id.value(), bytes.value())?);
    }
    Ok(out)
}
