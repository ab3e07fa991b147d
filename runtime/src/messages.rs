//! Messages into a running workflow beyond plain signals: a signal sent with a dedupe
//! key (recorded once however often it is retried), an update (a keyed request the
//! workflow answers; the caller gets the answer once it is durable), and a query (the
//! latest value the workflow published, read from its history without running it).
//!
//! A key is checked against the history of the instance's current run under the same
//! conditional append the task changes use (`Expect::Seq`): two senders of one key race
//! to one event, and a send that loses sees the winner's. The dedupe window is the
//! current run: a continue-as-new starts a new one (keyed signals it carries keep their
//! keys).

use crate::codec::Payload;
use crate::engine::{carried_on, Engine};
use crate::error::{Error, Result};
use crate::event::EventKind;
use crate::policy::Action;
use crate::store::InstanceStatus;
use crate::task::Actor;
use cairn_core::journal::{verify_history, Expect};
use cairn_core::step::publish;

/// Longest dedupe key (or update id) accepted, in bytes.
pub const MESSAGE_KEY_BYTES_MAX: usize = 256;

/// How often a keyed send decides again after another append won the race, before it
/// gives up with [`Error::Contended`].
const KEYED_TRIES_MAX: u32 = 64;

/// What a keyed send did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// `true` if this call recorded the message; `false` if an earlier send with the same
    /// key (and the same name and body) had, and nothing was written.
    pub recorded: bool,
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MESSAGE_KEY_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "a dedupe key must be 1 to {MESSAGE_KEY_BYTES_MAX} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

/// What an actor's keyed message is checked as by the host's policy.
#[derive(Debug, Clone, Copy)]
enum Asked {
    Signal,
    Update,
}

impl Engine {
    /// Sends signal `name` with body `payload` to instance `id` under dedupe key `key`:
    /// recorded once however often it is sent while the instance's current run holds it
    /// (a retried HTTP request, a redelivered queue message). Otherwise as
    /// [`Engine::signal`].
    ///
    /// # Errors
    /// [`Error::KeyReused`] if `key` was sent before with another name or body (nothing
    /// written), [`Error::InvalidArgument`] for an empty or over-long key or name,
    /// [`Error::Contended`] if other appends kept winning, and as [`Engine::signal`].
    ///
    /// # Durability
    /// On return the signal is on disk (this call's or the earlier one's).
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the signal is still recorded (unless refused, and
    /// at most once per key) by a task of the runtime; once it is, it reaches the run by
    /// the commit itself. Dropped before it was polled, nothing was sent. Sending it
    /// again with the same key records it at most once either way.
    pub async fn signal_once(
        &self,
        id: &str,
        name: &str,
        payload: Payload,
        key: &str,
    ) -> Result<Sent> {
        Ok(self.signal_once_by(id, name, payload, key, None).await?.0)
    }

    /// [`Engine::signal_once`] on behalf of `actor`, recorded with the signal.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Engine::signal_once`].
    ///
    /// # Cancel safety
    /// As [`Engine::signal_once`].
    pub async fn signal_once_as(
        &self,
        actor: &Actor,
        id: &str,
        name: &str,
        payload: Payload,
        key: &str,
    ) -> Result<Sent> {
        let asked = Some((actor, Asked::Signal));
        Ok(self.signal_once_by(id, name, payload, key, asked).await?.0)
    }

    /// Run `run` of `id`: its row and verified events.
    async fn run_history(
        &self,
        id: &str,
        run: u128,
    ) -> Result<(crate::store::InstanceRow, Vec<crate::journal::StoredEvent>)> {
        let raw = self
            .shared
            .journal
            .history(run)
            .await?
            .ok_or_else(|| Error::InstanceNotFound(id.to_owned()))?;
        verify_history(raw)
    }

    /// The send and the run that holds the key.
    ///
    /// Carried on by a task of its own once polled, with the policy's check of `asked`
    /// (which reads the instance first): a caller that goes away while a read waits on
    /// the store does not take the message with it.
    async fn signal_once_by(
        &self,
        id: &str,
        name: &str,
        payload: Payload,
        key: &str,
        asked: Option<(&Actor, Asked)>,
    ) -> Result<(Sent, u128)> {
        let (engine, id, name, key) =
            (self.clone(), id.to_owned(), name.to_owned(), key.to_owned());
        let asked = asked.map(|(actor, asked)| (actor.clone(), asked));
        carried_on(async move {
            let actor = match &asked {
                Some((actor, asked)) => {
                    let workflow_type = engine.row_of(&id).await?.1.workflow_type;
                    let action = match asked {
                        Asked::Signal => Action::Signal {
                            instance: &id,
                            workflow_type: &workflow_type,
                            signal: &name,
                        },
                        Asked::Update => Action::Update {
                            instance: &id,
                            workflow_type: &workflow_type,
                            update: &name,
                        },
                    };
                    engine.authorize(actor, &action)?;
                    Some(actor)
                }
                None => None,
            };
            engine
                .signal_once_now(&id, &name, payload, &key, actor)
                .await
        })
        .await
    }

    async fn signal_once_now(
        &self,
        id: &str,
        name: &str,
        payload: Payload,
        key: &str,
        actor: Option<&Actor>,
    ) -> Result<(Sent, u128)> {
        self.check_signal_name(name)?;
        check_key(key)?;
        let kind = EventKind::KeyedSignalReceived {
            name: name.to_owned(),
            payload,
            key: key.to_owned(),
        };
        let mut run = self.row_of(id).await?.0;
        for _ in 0..KEYED_TRIES_MAX {
            let (row, events) = self.run_history(id, run).await?;
            let earlier = events.iter().find_map(|event| match &event.record.kind {
                EventKind::KeyedSignalReceived {
                    name: sent,
                    payload: body,
                    key: held,
                } if held == key => Some((sent, body)),
                _ => None,
            });
            if let Some((sent, body)) = earlier {
                if let EventKind::KeyedSignalReceived { name, payload, .. } = &kind {
                    if sent != name || body != payload {
                        return Err(Error::KeyReused {
                            instance: id.to_owned(),
                            key: key.to_owned(),
                            recorded: sent.clone(),
                        });
                    }
                }
                return Ok((Sent { recorded: false }, run));
            }
            if row.status.is_finished() {
                match self.successor(id, run).await? {
                    Some(next) => {
                        run = next;
                        continue;
                    }
                    None => return Err(Error::InstanceFinished(id.to_owned())),
                }
            }
            match self
                .shared
                .journal
                .append_by(run, kind.clone(), Expect::Seq(row.next_seq), actor.cloned())
                .await
            {
                Ok(_) => {
                    self.applied().await;
                    return Ok((Sent { recorded: true }, run));
                }
                // Something landed meanwhile (perhaps the same key): look again.
                Err(Error::Conflict { .. } | Error::InstanceFinished(_)) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(Error::Contended {
            instance: id.to_owned(),
            operation: "a keyed signal",
            tries: KEYED_TRIES_MAX,
        })
    }

    /// Sends update `name` with `payload` to instance `id` as request `key` (its update
    /// id) and waits for the workflow's answer: `Ok(response)` if it accepted it,
    /// `Err(reason)` if it rejected it. The request is recorded once per key, so asking
    /// again with the same key (after a timeout, a dropped connection) waits for the same
    /// answer, or returns it at once if it is recorded.
    ///
    /// # Errors
    /// [`Error::Unanswered`] if the instance ends without answering,
    /// [`Error::ShutDown`] if the runtime stops first, and as [`Engine::signal_once`].
    ///
    /// # Durability
    /// The request is on disk before the wait begins; the answer returned is on disk.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the request is still recorded (unless refused, and
    /// at most once per key) by a task of the runtime; once it is, the workflow receives
    /// and answers it whether or not anyone waits. Ask again with the same key to get the
    /// answer.
    pub async fn update(
        &self,
        id: &str,
        name: &str,
        payload: Payload,
        key: &str,
    ) -> Result<std::result::Result<Payload, String>> {
        self.update_by(id, name, payload, key, None).await
    }

    /// [`Engine::update`] on behalf of `actor`, recorded with the request.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Engine::update`].
    ///
    /// # Cancel safety
    /// As [`Engine::update`].
    pub async fn update_as(
        &self,
        actor: &Actor,
        id: &str,
        name: &str,
        payload: Payload,
        key: &str,
    ) -> Result<std::result::Result<Payload, String>> {
        self.update_by(id, name, payload, key, Some((actor, Asked::Update)))
            .await
    }

    async fn update_by(
        &self,
        id: &str,
        name: &str,
        payload: Payload,
        key: &str,
        asked: Option<(&Actor, Asked)>,
    ) -> Result<std::result::Result<Payload, String>> {
        // Followed from the run that holds the request: a run that hands over without
        // answering carries it to the next.
        let (_, mut run) = self.signal_once_by(id, name, payload, key, asked).await?;
        let mut wait = self.shared.answers.register(run);
        loop {
            let notify = wait.notify.clone();
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (row, events) = self.run_history(id, run).await?;
            let answer = events.iter().find_map(|event| match &event.record.kind {
                EventKind::UpdateAnswered {
                    key: answered,
                    response,
                    ..
                } if answered == key => Some(response.clone()),
                _ => None,
            });
            if let Some(answer) = answer {
                return Ok(answer);
            }
            if row.status.is_finished() {
                if row.status == InstanceStatus::ContinuedAsNew {
                    if let Some(next) = self.successor(id, run).await? {
                        run = next;
                        wait = self.shared.answers.register(run);
                        continue;
                    }
                }
                let reason = match row.status {
                    InstanceStatus::Completed => "completed",
                    InstanceStatus::Failed => "failed",
                    InstanceStatus::Terminated => "was terminated",
                    _ => "ended",
                };
                return Err(Error::Unanswered {
                    instance: id.to_owned(),
                    update: name.to_owned(),
                    key: key.to_owned(),
                    reason: reason.to_owned(),
                });
            }
            tokio::select! {
                () = &mut woken => {}
                () = self.closing() => return Err(Error::ShutDown),
            }
        }
    }

    /// The latest value instance `id` published under `name` (`ctx.publish`), read from
    /// its current run's history without running the workflow; `None` if that run has
    /// published none yet.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`], storage and corruption errors.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn query(&self, id: &str, name: &str) -> Result<Option<Payload>> {
        let (run, _) = self.row_of(id).await?;
        let (_, events) = self.run_history(id, run).await?;
        Ok(publish::latest(events.iter().map(|event| &event.record.kind), name).cloned())
    }

    /// [`Engine::query`] on behalf of `actor`, who must be allowed to read the instance.
    ///
    /// # Errors
    /// [`Error::Forbidden`], and as [`Engine::query`].
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn query_as(&self, actor: &Actor, id: &str, name: &str) -> Result<Option<Payload>> {
        let workflow_type = self.row_of(id).await?.1.workflow_type;
        self.authorize(
            actor,
            &Action::Read {
                instance: id,
                workflow_type: &workflow_type,
            },
        )?;
        self.query(id, name).await
    }
}
