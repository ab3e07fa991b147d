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

/// A wake-up row, to clear once applied.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wake {
    shard: i32,
    run: Uuid,
    seq: i64,
}

/// An event recorded by another host that this host must apply.
#[derive(Debug)]
pub(crate) struct Foreign {
    /// The run's parent, if it has one.
    pub(crate) parent: Option<u128>,
    /// The event, decoded (its run and sequence number inside).
    pub(crate) record: EventRecord,
}

impl PostgresStore {
    /// The wake-ups left for `shards` (at most `limit`), with the events they name in log
    /// order. They stay until [`PostgresStore::clear_wakes`]: a host applies them first,
    /// so one whose connection breaks in between applies them again (applying an event
    /// twice changes nothing: a run's inbox is keyed by sequence number), and one that
    /// stops loses nothing (whoever takes its shards over replays their runs).
    pub(crate) async fn wakes(
        &self,
        shards: &[u32],
        limit: usize,
    ) -> Result<(Vec<Foreign>, Vec<Wake>)> {
        if shards.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let shards: Vec<i32> = shards
            .iter()
            .map(|shard| i32::try_from(*shard).unwrap_or(i32::MAX))
            .collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "WITH w AS (
                     SELECT shard, run, seq FROM cairn_wakes WHERE shard = ANY($1)
                     ORDER BY shard, run, seq LIMIT $2
                 )
                 SELECT w.shard, w.run, w.seq, e.envelope, r.parent
                 FROM w
                 JOIN cairn_events e ON e.run = w.run AND e.seq = w.seq
                 JOIN cairn_runs r ON r.key = e.run
                 ORDER BY e.lsn",
                &[&shards, &i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .await
            .map_err(|err| pg_error("read wake-ups", &err))?;
        let mut foreign = Vec::with_capacity(rows.len());
        let mut taken = Vec::with_capacity(rows.len());
        for row in &rows {
            let run: Uuid = row.get(1);
            taken.push(Wake {
                shard: row.get(0),
                run,
                seq: row.get(2),
            });
            let envelope: Vec<u8> = row.get(3);
            let parent: Option<Uuid> = row.get(4);
            let record = EventRecord::decode(&envelope).map_err(|err| Error::Corrupt {
                location: format!("cairn_events, run {:032x}", run.as_u128()),
                message: err.to_string(),
            })?;
            foreign.push(Foreign {
                parent: parent.map(|p| p.as_u128()),
                record,
            });
        }
        Ok((foreign, taken))
    }

    /// Removes wake-ups once applied.
    pub(crate) async fn clear_wakes(&self, wakes: &[Wake]) -> Result<()> {
        if wakes.is_empty() {
            return Ok(());
        }
        let shards: Vec<i32> = wakes.iter().map(|w| w.shard).collect();
        let runs: Vec<Uuid> = wakes.iter().map(|w| w.run).collect();
        let seqs: Vec<i64> = wakes.iter().map(|w| w.seq).collect();
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM cairn_wakes w USING unnest($1::integer[], $2::uuid[], $3::bigint[]) AS d(shard, run, seq)
                 WHERE w.shard = d.shard AND w.run = d.run AND w.seq = d.seq",
                &[&shards, &runs, &seqs],
            )
            .await
            .map_err(|err| pg_error("clear wake-ups", &err))?;
        Ok(())
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
        match &self.transport {
            crate::tls::Transport::Plain => {
                let (client, connection) = self
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(|err| pg_error("open the listening connection", &err))?;
                listen_on(client, connection, nudges).await
            }
            crate::tls::Transport::Tls(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(|err| pg_error("open the listening connection", &err))?;
                listen_on(client, connection, nudges).await
            }
        }
    }
}

/// Sends `LISTEN` on `client` and forwards each notification of `connection` as a `()`
/// to `nudges`, until the connection ends or `nudges` is closed.
async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    nudges: mpsc::UnboundedSender<()>,
) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
