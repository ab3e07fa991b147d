//! Wake-ups across hosts: the events one host records that another host, the owner of
//! the run (or of its parent), must apply. The recording host leaves `(shard, run, seq)`
//! in `cairn_wakes` inside its batch's transaction and, after the commit, nudges the
//! others with one `NOTIFY` outside any append transaction (coalesced: at most one in
//! flight per host). Each host listens, and also polls its shards' rows at a fixed
//! period, so a lost notification delays a wake-up by one period at most.

use cairn_core::error::{Error, Result};
use cairn_core::event::EventRecord;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use crate::{pg_error, PostgresStore};

/// The channel hosts nudge each other on.
const CHANNEL: &str = "cairn_wakes";

/// An event recorded by another host that this host must apply.
#[derive(Debug)]
pub(crate) struct Foreign {
    /// The run's parent, if it has one.
    pub(crate) parent: Option<u128>,
    /// The event, decoded (its run and sequence number inside).
    pub(crate) record: EventRecord,
}

impl PostgresStore {
    /// Takes the wake-ups left for `shards` and reads the events they name, in log order,
    /// in one transaction (a host that stops before applying them loses nothing: whoever
    /// takes its shards over replays their runs).
    pub(crate) async fn take_wakes(&self, shards: &[u32]) -> Result<Vec<Foreign>> {
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let shards: Vec<i32> = shards
            .iter()
            .map(|shard| i32::try_from(*shard).unwrap_or(i32::MAX))
            .collect();
        let mut client = self.client().await?;
        let txn = client
            .transaction()
            .await
            .map_err(|err| pg_error("begin taking wake-ups", &err))?;
        let rows = txn
            .query(
                "WITH taken AS (
                     DELETE FROM cairn_wakes WHERE shard = ANY($1) RETURNING run, seq
                 )
                 SELECT e.envelope, r.parent
                 FROM (SELECT DISTINCT run, seq FROM taken) AS w
                 JOIN cairn_events e ON e.run = w.run AND e.seq = w.seq
                 JOIN cairn_runs r ON r.key = e.run
                 ORDER BY e.lsn",
                &[&shards],
            )
            .await
            .map_err(|err| pg_error("take wake-ups", &err))?;
        txn.commit()
            .await
            .map_err(|err| pg_error("commit taking wake-ups", &err))?;
        rows.iter()
            .map(|row| {
                let envelope: Vec<u8> = row.get(0);
                let parent: Option<Uuid> = row.get(1);
                let record = EventRecord::decode(&envelope).map_err(|err| Error::Corrupt {
                    location: "cairn_events, an event named by a wake-up".into(),
                    message: err.to_string(),
                })?;
                Ok(Foreign {
                    parent: parent.map(|p| p.as_u128()),
                    record,
                })
            })
            .collect()
    }

    /// Nudges the other hosts to take their wake-ups now.
    pub(crate) async fn nudge(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .batch_execute(&format!("NOTIFY {CHANNEL}"))
            .await
            .map_err(|err| pg_error("nudge the other hosts", &err))
    }

    /// Listens for nudges on a connection of its own (outside the pool), sending one
    /// `()` to `nudges` per notification; returns when the connection ends or `nudges`
    /// is closed.
    pub(crate) async fn listen(&self, nudges: mpsc::UnboundedSender<()>) -> Result<()> {
        let (client, mut connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|err| pg_error("open the listening connection", &err))?;
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        if nudges.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::debug!(%err, "the listening connection ended");
                        return;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|err| pg_error("listen for nudges", &err))?;
        // The client keeps the connection open while the driver reads from it.
        let _ = driver.await;
        drop(client);
        Ok(())
    }
}
