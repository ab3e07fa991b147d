//! The host API on behalf of an actor: each call is checked against the host's
//! [`Policy`](crate::policy::Policy) before anything is read or written, and what it
//! records carries the actor, so the history answers "who did this".

use std::sync::atomic::Ordering;

use crate::codec::Payload;
use crate::engine::{carried_on, Engine, InstanceInfo, ListFilter, ListPage, StartOutcome};
use crate::error::{Error, Result};
use crate::event::EventKind;
use crate::journal::Cursor;
use crate::journal::StoredEvent;
use crate::policy::Action;
use crate::task::Actor;

impl Engine {
    /// Whether the host's policy allows `actor` to do `action`.
    ///
    /// # Errors
    /// [`Error::Forbidden`] saying why not.
    pub fn authorize(&self, actor: &Actor, action: &Action<'_>) -> Result<()> {
        self.shared
            .policy
            .check(actor, action)
            .map_err(|reason| Error::Forbidden {
                actor: actor.id.clone(),
                action: action.describe(),
                reason,
            })
    }

    /// The workflow type of instance `id`, for a policy's check.
    async fn type_of(&self, id: &str) -> Result<String> {
        let (_, row) = self.row_of(id).await?;
        Ok(row.workflow_type)
    }

    /// [`Engine::start`] on behalf of `actor`, recorded with the start event.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Engine::start`].
    ///
    /// # Cancel safety
    /// As [`Engine::start`].
    pub async fn start_as(
        &self,
        actor: &Actor,
        workflow_type: &str,
        id: &str,
        input: Payload,
    ) -> Result<StartOutcome> {
        self.authorize(actor, &Action::Start { workflow_type })?;
        self.start_with_parent(workflow_type, id, input, None, Some(actor))
            .await
    }

    /// [`Engine::signal`] on behalf of `actor`, recorded with the signal.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Engine::signal`].
    ///
    /// # Cancel safety
    /// As [`Engine::signal`].
    pub async fn signal_as(
        &self,
        actor: &Actor,
        id: &str,
        name: &str,
        payload: Payload,
    ) -> Result<()> {
        let (engine, actor, id, name) =
            (self.clone(), actor.clone(), id.to_owned(), name.to_owned());
        // Carried on from the first poll, the policy's read included (see `carried_on`).
        carried_on(async move {
            let (key, row) = engine.row_of(&id).await?;
            engine.authorize(
                &actor,
                &Action::Signal {
                    instance: &id,
                    workflow_type: &row.workflow_type,
                    signal: &name,
                },
            )?;
            let kind = engine.signal_event(&name, payload)?;
            engine.append_to_run_now(&id, key, kind, Some(&actor)).await
        })
        .await
    }

    /// [`Engine::cancel`] on behalf of `actor`, recorded with the request.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Engine::cancel`].
    ///
    /// # Cancel safety
    /// As [`Engine::cancel`].
    pub async fn cancel_as(&self, actor: &Actor, id: &str, reason: &str) -> Result<()> {
        crate::engine::check_reason(reason)?;
        let kind = EventKind::CancelRequested {
            reason: reason.to_owned(),
        };
        self.end_request_as(actor, id, kind).await
    }

    /// [`Engine::terminate`] on behalf of `actor`, recorded with the termination.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Engine::terminate`].
    ///
    /// # Cancel safety
    /// As [`Engine::terminate`].
    pub async fn terminate_as(&self, actor: &Actor, id: &str, reason: &str) -> Result<()> {
        crate::engine::check_reason(reason)?;
        let kind = EventKind::WorkflowTerminated {
            reason: reason.to_owned(),
        };
        self.end_request_as(actor, id, kind).await
    }

    /// A cancellation or termination on behalf of `actor`, carried on from the first
    /// poll, the policy's read included (see `carried_on`).
    async fn end_request_as(&self, actor: &Actor, id: &str, kind: EventKind) -> Result<()> {
        let (engine, actor, id) = (self.clone(), actor.clone(), id.to_owned());
        carried_on(async move {
            let (key, row) = engine.row_of(&id).await?;
            let workflow_type = row.workflow_type;
            let action = match &kind {
                EventKind::WorkflowTerminated { .. } => Action::Terminate {
                    instance: &id,
                    workflow_type: &workflow_type,
                },
                _ => Action::Cancel {
                    instance: &id,
                    workflow_type: &workflow_type,
                },
            };
            engine.authorize(&actor, &action)?;
            if engine.shared.closed.load(Ordering::Acquire) {
                return Err(Error::ShutDown);
            }
            engine.append_to_run_now(&id, key, kind, Some(&actor)).await
        })
        .await
    }

    /// [`Engine::status`] if `actor` may read instance `id`.
    ///
    /// # Errors
    /// [`Error::Forbidden`], and as [`Engine::status`].
    pub async fn status_as(&self, actor: &Actor, id: &str) -> Result<InstanceInfo> {
        self.authorize_read(actor, id).await?;
        self.status(id).await
    }

    /// [`Engine::history`] if `actor` may read instance `id`.
    ///
    /// # Errors
    /// [`Error::Forbidden`], and as [`Engine::history`].
    pub async fn history_as(&self, actor: &Actor, id: &str) -> Result<Vec<StoredEvent>> {
        self.authorize_read(actor, id).await?;
        self.history(id).await
    }

    async fn authorize_read(&self, actor: &Actor, id: &str) -> Result<()> {
        let workflow_type = self.type_of(id).await?;
        self.authorize(
            actor,
            &Action::Read {
                instance: id,
                workflow_type: &workflow_type,
            },
        )
    }

    /// [`Engine::list_page`] for `actor`: only the instances the policy lets them read
    /// (a page may hold fewer rows than asked, even none; continue from the cursor). The
    /// rows the policy refuses count as examined, so a scan bounded by
    /// [`ListPage::examined`] stays bounded for a caller who may read nothing.
    ///
    /// # Errors
    /// As [`Engine::list_page`].
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn list_page_as(
        &self,
        actor: &Actor,
        filter: &ListFilter,
        after: Option<Cursor>,
    ) -> Result<ListPage> {
        self.list_page_where(filter, after, |info| {
            let read = Action::Read {
                instance: &info.id,
                workflow_type: &info.workflow_type,
            };
            self.authorize(actor, &read).is_ok()
        })
        .await
    }

    /// Whether `actor` may manage schedule `schedule_id` (the policy's
    /// [`Action::Schedule`] on the type it starts).
    ///
    /// # Errors
    /// [`Error::ScheduleNotFound`], [`Error::Forbidden`].
    pub fn authorize_schedule(&self, actor: &Actor, schedule_id: &str) -> Result<()> {
        let row = self.schedule_row(schedule_id)?;
        self.authorize(
            actor,
            &Action::Schedule {
                schedule: schedule_id,
                workflow_type: &row.workflow_type,
            },
        )
    }

    /// [`Engine::pause_schedule`] on behalf of `actor`, who is recorded in the pause.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Engine::pause_schedule`].
    ///
    /// # Cancel safety
    /// As [`Engine::pause_schedule`].
    pub async fn pause_schedule_as(
        &self,
        actor: &Actor,
        schedule_id: &str,
        note: &str,
    ) -> Result<crate::schedule::ScheduleRow> {
        self.authorize_schedule(actor, schedule_id)?;
        let row = self
            .pause_schedule_by(schedule_id, note, Some(actor))
            .await?;
        tracing::info!(target: "cairn::audit", actor = %actor.id, schedule = %schedule_id, note, "schedule paused");
        Ok(row)
    }

    /// [`Engine::resume_schedule`] on behalf of `actor`.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Engine::resume_schedule`].
    ///
    /// # Cancel safety
    /// As [`Engine::resume_schedule`].
    pub async fn resume_schedule_as(
        &self,
        actor: &Actor,
        schedule_id: &str,
    ) -> Result<crate::schedule::ScheduleRow> {
        self.authorize_schedule(actor, schedule_id)?;
        let row = self.resume_schedule(schedule_id).await?;
        tracing::info!(target: "cairn::audit", actor = %actor.id, schedule = %schedule_id, "schedule resumed");
        Ok(row)
    }

    /// [`Engine::trigger_schedule`] on behalf of `actor`, recorded with the start event.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Engine::trigger_schedule`].
    ///
    /// # Cancel safety
    /// As [`Engine::start`].
    pub async fn trigger_schedule_as(
        &self,
        actor: &Actor,
        schedule_id: &str,
    ) -> Result<(String, StartOutcome)> {
        self.authorize_schedule(actor, schedule_id)?;
        self.trigger_schedule_by(schedule_id, Some(actor)).await
    }
}
