//! The runtime on behalf of a person or a service: every call is checked against the
//! runtime's policy ([`RuntimeBuilder::policy`](crate::RuntimeBuilder::policy)) before
//! anything is read or written, and what it records carries the actor.

use cairn_runtime::codec::encode;
use cairn_runtime::journal::{StoredEvent, TaskCursor, TaskPage, TaskQuery};
use cairn_runtime::task::TaskId;

use crate::runtime::InstanceHandle;
use crate::{Actor, Error, InstanceInfo, Payload, Runtime, Signal, Workflow};

/// The runtime acting for one [`Actor`]; see [`Runtime::acting_as`].
///
/// ```
/// # async fn run(rt: cairn::Runtime) -> Result<(), cairn::Error> {
/// use cairn::Actor;
/// let clerk = Actor::new("cleo", ["clerk"]);
/// let desk = rt.acting_as(&clerk);
/// // desk.start(loan_approval, "L-7", application).await?;   // checked, recorded as cleo's
/// let inbox = desk.tasks(None, 50).await?;                  // what cleo holds or may claim
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Acting<'r> {
    rt: &'r Runtime,
    actor: Actor,
}

fn encoded<T: Payload>(
    rt: &Runtime,
    id: &str,
    what: String,
    value: &T,
) -> Result<crate::events::Payload, Error> {
    encode(rt.engine().codec(), value).map_err(|err| Error::PayloadEncode {
        instance: id.to_owned(),
        position: what,
        message: err.to_string(),
    })
}

impl Runtime {
    /// This runtime acting for `actor`: each call is allowed by the runtime's policy or
    /// refused with [`Error::Forbidden`] with nothing written, and what it records names
    /// the actor. Calls made on the runtime itself are the hosting program's own.
    pub fn acting_as(&self, actor: &Actor) -> Acting<'_> {
        Acting {
            rt: self,
            actor: actor.clone(),
        }
    }
}

impl Acting<'_> {
    /// Who acts.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The runtime it acts on.
    pub(crate) fn runtime(&self) -> &Runtime {
        self.rt
    }

    /// Starts instance `id` of `W` (see [`Runtime::start`]); the start event records the
    /// actor.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Runtime::start`].
    ///
    /// # Cancel safety
    /// As [`Runtime::start`].
    pub async fn start<W: Workflow>(
        &self,
        _workflow: W,
        id: &str,
        input: W::Input,
    ) -> Result<InstanceHandle<W>, Error> {
        let payload = encoded(self.rt, id, "input".into(), &input)?;
        let started = self
            .rt
            .engine()
            .start_as(&self.actor, W::NAME, id, payload)
            .await?;
        Ok(InstanceHandle::new(
            self.rt.engine().clone(),
            id,
            started.created,
        ))
    }

    /// Sends `signal` with `body` to instance `id`, recorded with the actor.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Runtime::signal`].
    ///
    /// # Cancel safety
    /// As [`Runtime::signal`].
    pub async fn send<T: Payload>(
        &self,
        id: &str,
        signal: Signal<T>,
        body: &T,
    ) -> Result<(), Error> {
        let payload = encoded(self.rt, id, format!("signal `{}`", signal.name()), body)?;
        self.rt
            .engine()
            .signal_as(&self.actor, id, signal.name(), payload)
            .await
    }

    /// Sends the declared signal `name` with a JSON body, checked against its type
    /// before anything is recorded (see [`Runtime::send_json`]).
    ///
    /// # Errors
    /// [`Error::Forbidden`], and as [`Runtime::send_json`]; nothing is written.
    ///
    /// # Cancel safety
    /// As [`Runtime::signal`], once the body is checked (before the first await).
    pub async fn send_json(
        &self,
        id: &str,
        name: &str,
        body: serde_json::Value,
    ) -> Result<(), Error> {
        let payload = self.rt.check_signal_json(name, body)?;
        self.rt
            .engine()
            .signal_as(&self.actor, id, name, payload)
            .await
    }

    /// Requests cancellation of instance `id` (see [`Runtime::cancel`]).
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Runtime::cancel`].
    ///
    /// # Cancel safety
    /// As [`Runtime::cancel`]: dropped after its first poll, the request is still checked
    /// and recorded (unless refused) by a task of the runtime.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<(), Error> {
        self.rt.engine().cancel_as(&self.actor, id, reason).await
    }

    /// Terminates instance `id` (see [`Runtime::terminate`]).
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Runtime::terminate`].
    ///
    /// # Cancel safety
    /// As [`Runtime::terminate`]: dropped after its first poll, the termination is still
    /// checked and recorded (unless refused) by a task of the runtime.
    pub async fn terminate(&self, id: &str, reason: &str) -> Result<(), Error> {
        self.rt.engine().terminate_as(&self.actor, id, reason).await
    }

    /// Instance `id`'s status, if the actor may read it.
    ///
    /// # Errors
    /// [`Error::Forbidden`], and as [`Runtime::status`].
    pub async fn status(&self, id: &str) -> Result<InstanceInfo, Error> {
        self.rt.engine().status_as(&self.actor, id).await
    }

    /// Instance `id`'s history, if the actor may read it.
    ///
    /// # Errors
    /// [`Error::Forbidden`], and as [`Runtime::history`].
    pub async fn history(&self, id: &str) -> Result<Vec<StoredEvent>, Error> {
        self.rt.engine().history_as(&self.actor, id).await
    }

    /// The actor's inbox: the open tasks they hold and those they may claim, oldest
    /// first, `limit` at a time after `after`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn tasks(&self, after: Option<TaskCursor>, limit: usize) -> Result<TaskPage, Error> {
        let query = TaskQuery {
            after,
            limit,
            ..TaskQuery::for_actor(&self.actor)
        };
        self.rt.tasks(&query).await
    }

    /// Claims `task` (see [`Runtime::claim`]).
    ///
    /// # Errors
    /// As [`Runtime::claim`].
    ///
    /// # Cancel safety
    /// As [`Runtime::claim`].
    pub async fn claim(&self, task: &TaskId) -> Result<(), Error> {
        self.rt.claim(&self.actor, task).await
    }

    /// Completes `task` with `decision` (see [`Runtime::complete`]).
    ///
    /// # Errors
    /// As [`Runtime::complete`].
    ///
    /// # Cancel safety
    /// As [`Runtime::complete`].
    pub async fn complete<D: Payload>(&self, task: &TaskId, decision: &D) -> Result<(), Error> {
        self.rt.complete(&self.actor, task, decision).await
    }
}
