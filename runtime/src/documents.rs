//! Case documents on the host: attach a new version (limits checked and the policy
//! asked before anything is written; the version number decided on the history and
//! appended at its length), list an instance's documents, read one back with its hash
//! checked.

use crate::document::{DocumentVersion, NewDocument};
use crate::engine::{carried_on, Engine};
use crate::error::{Error, Result};
use crate::journal::{verify_history, Expect};
use crate::policy::Action;
use crate::replay::{History, StepKind};
use crate::task::Actor;

/// How often an attach is decided again after losing to concurrent events.
const ATTACH_TRIES_MAX: u32 = 64;

impl Engine {
    /// Attaches `document` to instance `id` (to its task `document.task`, if given) as
    /// the next version of its name, on behalf of `actor` (`None`: the hosting program,
    /// not checked). Returns the version recorded.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a document over a limit (`DOCUMENT_BYTES_MAX`, ...)
    /// or naming a step that is not a task; [`Error::Forbidden`]; [`Error::InstanceNotFound`],
    /// [`Error::InstanceFinished`]. Nothing is written on error.
    ///
    /// # Durability
    /// On `Ok` the version and its bytes are on disk, in one commit.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the version is still checked and recorded (unless
    /// refused), once, by a task of the runtime; dropped before it was polled, nothing
    /// was sent. Attaching again records the next version.
    pub async fn attach_document(
        &self,
        actor: Option<&Actor>,
        id: &str,
        document: NewDocument,
    ) -> Result<DocumentVersion> {
        let (engine, actor, id) = (self.clone(), actor.cloned(), id.to_owned());
        carried_on(async move {
            engine
                .attach_document_now(actor.as_ref(), &id, document)
                .await
        })
        .await
    }

    async fn attach_document_now(
        &self,
        actor: Option<&Actor>,
        id: &str,
        document: NewDocument,
    ) -> Result<DocumentVersion> {
        // Limits first, before the file is touched (version 1 stands in for the number).
        document.version(1).map_err(Error::InvalidArgument)?;
        let (key, row) = self.row_of(id).await?;
        if let Some(actor) = actor {
            self.authorize(
                actor,
                &Action::Attach {
                    instance: id,
                    workflow_type: &row.workflow_type,
                },
            )?;
        }
        for _ in 0..ATTACH_TRIES_MAX {
            let raw = self
                .shared
                .journal
                .history(key)
                .await?
                .ok_or_else(|| Error::InstanceNotFound(id.to_owned()))?;
            let (row, events) = verify_history(raw)?;
            let history = History::from_records(events.iter().map(|event| &event.record))?;
            if let Some(step) = document.task {
                let is_task = history
                    .step(step)
                    .is_some_and(|entry| entry.kind == StepKind::Task);
                if !is_task {
                    return Err(Error::TaskNotFound {
                        instance: id.to_owned(),
                        step,
                    });
                }
            }
            let held = history.documents.get(&document.name).map_or(0, Vec::len);
            let number = u32::try_from(held)
                .ok()
                .and_then(|n| n.checked_add(1))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "document `{}` has too many versions",
                        document.name
                    ))
                })?;
            let version = document.version(number).map_err(Error::InvalidArgument)?;
            match self
                .shared
                .journal
                .attach_document(
                    key,
                    version.clone(),
                    document.bytes.clone(),
                    Expect::Seq(row.next_seq),
                    actor.cloned(),
                )
                .await
            {
                Ok(_) => {
                    self.applied().await;
                    return Ok(version);
                }
                // Another event landed first: number the version again.
                Err(Error::Conflict { .. }) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(Error::Contended {
            instance: id.to_owned(),
            operation: "attaching a document",
            tries: ATTACH_TRIES_MAX,
        })
    }

    /// Every version of every document of instance `id`, by name, oldest first.
    ///
    /// # Errors
    /// [`Error::Forbidden`] when `actor` may not read the instance; as [`Engine::history`].
    pub async fn documents(&self, actor: Option<&Actor>, id: &str) -> Result<Vec<DocumentVersion>> {
        let history = match actor {
            Some(actor) => self.history_as(actor, id).await?,
            None => self.history(id).await?,
        };
        let history = History::from_records(history.iter().map(|event| &event.record))?;
        Ok(history.documents.into_values().flatten().collect())
    }

    /// Version `version` (the latest if `None`) of document `name` of instance `id`,
    /// with its bytes, checked against the SHA-256 the history recorded.
    ///
    /// # Errors
    /// [`Error::Forbidden`] when `actor` may not read the instance;
    /// [`Error::InvalidArgument`] for an unknown name or version; [`Error::Corrupt`] when
    /// the stored bytes are missing or do not match their hash.
    pub async fn document(
        &self,
        actor: Option<&Actor>,
        id: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<(DocumentVersion, Vec<u8>)> {
        let versions: Vec<DocumentVersion> = self
            .documents(actor, id)
            .await?
            .into_iter()
            .filter(|d| d.name == name)
            .collect();
        let found = match version {
            Some(n) => versions.into_iter().find(|d| d.version == n),
            None => versions.into_iter().last(),
        }
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "instance `{id}` has no document `{name}`{}",
                version.map_or(String::new(), |n| format!(" version {n}"))
            ))
        })?;
        let corrupt = |message: &str| Error::Corrupt {
            location: format!(
                "document `{name}` version {} of instance `{id}`",
                found.version
            ),
            message: message.to_owned(),
        };
        let bytes = self
            .shared
            .journal
            .document_bytes(found.sha256)
            .await?
            .ok_or_else(|| corrupt("its content is missing"))?;
        if crate::document::sha256(&bytes) != found.sha256 {
            return Err(corrupt(
                "its content does not match the SHA-256 the history recorded",
            ));
        }
        Ok((found, bytes))
    }
}
