//! Case documents: attach versions to an instance (or to one of its tasks), list them,
//! read one back with its hash checked.

use std::collections::BTreeMap;

use cairn_runtime::document::{DocumentVersion, NewDocument};

use crate::{Acting, Error, Runtime};

/// A document to attach: its name within the instance, media type, bytes, and optional
/// metadata and task.
///
/// ```
/// use cairn::Document;
/// let plan = Document::new("site-plan.pdf", "application/pdf", b"%PDF-1.7 ...".to_vec())
///     .metadata("uploaded_by", "citizen portal");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document(NewDocument);

impl Document {
    /// Document `name` (a second attach of the same name is its next version) of media
    /// type `content_type` holding `bytes`.
    pub fn new(name: impl Into<String>, content_type: impl Into<String>, bytes: Vec<u8>) -> Self {
        Document(NewDocument {
            name: name.into(),
            content_type: content_type.into(),
            metadata: BTreeMap::new(),
            bytes,
            task: None,
        })
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.metadata.insert(key.into(), value.into());
        self
    }

    /// Attaches it to the instance's task at `step` rather than to the instance alone.
    pub fn for_task(mut self, step: u32) -> Self {
        self.0.task = Some(step);
        self
    }
}

impl Runtime {
    /// Attaches `document` to instance `id` as the next version of its name: its SHA-256
    /// is recorded in the history (`DocumentAttached`) and its bytes stored once per
    /// content, in one commit. Limits (`cairn::document::DOCUMENT_BYTES_MAX`, ...) are
    /// checked before anything is written.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the limit or field; [`Error::InstanceNotFound`],
    /// [`Error::InstanceFinished`], [`Error::TaskNotFound`] for a step that is not a task.
    ///
    /// # Durability
    /// On `Ok` the version and its bytes are on disk.
    ///
    /// # Cancel safety
    /// Dropped after its first poll, the version is still recorded (unless refused),
    /// once; dropped before it was polled, nothing was sent. Attaching again records the
    /// next version.
    pub async fn attach(&self, id: &str, document: Document) -> Result<DocumentVersion, Error> {
        self.engine().attach_document(None, id, document.0).await
    }

    /// Every version of every document of instance `id`.
    ///
    /// # Errors
    /// As [`Runtime::history`].
    pub async fn documents(&self, id: &str) -> Result<Vec<DocumentVersion>, Error> {
        self.engine().documents(None, id).await
    }

    /// Version `version` (the latest if `None`) of document `name` of instance `id`, with
    /// its bytes, checked against the recorded SHA-256.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown name or version, [`Error::Corrupt`] for
    /// content that is missing or does not match its hash.
    pub async fn document(
        &self,
        id: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<(DocumentVersion, Vec<u8>), Error> {
        self.engine().document(None, id, name, version).await
    }
}

impl Acting<'_> {
    /// [`Runtime::attach`] if the policy lets the actor attach to the instance; the
    /// version records the actor.
    ///
    /// # Errors
    /// [`Error::Forbidden`] (nothing written), and as [`Runtime::attach`].
    ///
    /// # Cancel safety
    /// As [`Runtime::attach`], the policy's check included.
    pub async fn attach(&self, id: &str, document: Document) -> Result<DocumentVersion, Error> {
        self.runtime()
            .engine()
            .attach_document(Some(self.actor()), id, document.0)
            .await
    }

    /// [`Runtime::documents`] if the actor may read the instance.
    ///
    /// # Errors
    /// [`Error::Forbidden`], and as [`Runtime::documents`].
    pub async fn documents(&self, id: &str) -> Result<Vec<DocumentVersion>, Error> {
        self.runtime()
            .engine()
            .documents(Some(self.actor()), id)
            .await
    }

    /// [`Runtime::document`] if the actor may read the instance.
    ///
    /// # Errors
    /// [`Error::Forbidden`], and as [`Runtime::document`].
    pub async fn document(
        &self,
        id: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<(DocumentVersion, Vec<u8>), Error> {
        self.runtime()
            .engine()
            .document(Some(self.actor()), id, name, version)
            .await
    }
}
