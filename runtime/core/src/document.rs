//! Case documents: files attached to an instance (or to one of its tasks), each version
//! recorded in the history by its SHA-256 (`DocumentAttached`) while the bytes are kept
//! once per content beside the log. Limits are checked before anything is written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest document accepted, in bytes.
pub const DOCUMENT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Longest document name, in bytes.
pub const DOCUMENT_NAME_BYTES_MAX: usize = 128;

/// Most metadata entries per document version.
pub const DOCUMENT_METADATA_MAX: usize = 32;

/// Longest metadata key or value, and the content type, in bytes.
pub const DOCUMENT_FIELD_BYTES_MAX: usize = 1024;

/// SHA-256 of `bytes`: the key a document's content is stored and checked under.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// One version of a document, as the history records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentVersion {
    /// The document's name within its instance (`"site-plan.pdf"`).
    pub name: String,
    /// 1 for the first version, then 2, 3, ...
    pub version: u32,
    /// Its media type (`"application/pdf"`).
    pub content_type: String,
    /// What the uploader said about it.
    pub metadata: BTreeMap<String, String>,
    /// SHA-256 of the bytes: the key they are stored under, checked on every read.
    pub sha256: [u8; 32],
    /// Their length.
    pub bytes: u64,
    /// The task it belongs to, if it was attached to one.
    pub task: Option<u32>,
}

impl DocumentVersion {
    /// The SHA-256 as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What someone attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDocument {
    /// Its name within the instance; a second attach of the same name is its next version.
    pub name: String,
    /// Its media type.
    pub content_type: String,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// The content.
    pub bytes: Vec<u8>,
    /// The task it belongs to, if any.
    pub task: Option<u32>,
}

impl NewDocument {
    /// Checks the limits, and returns the version record for version `version`.
    ///
    /// # Errors
    /// What is over a limit or malformed, in words.
    pub fn version(&self, version: u32) -> Result<DocumentVersion, String> {
        if self.name.trim().is_empty() || self.name.len() > DOCUMENT_NAME_BYTES_MAX {
            return Err(format!(
                "a document name must be 1 to {DOCUMENT_NAME_BYTES_MAX} bytes, got {}",
                self.name.len()
            ));
        }
        if self.bytes.len() > DOCUMENT_BYTES_MAX {
            return Err(format!(
                "document `{}` is {} bytes; the limit is {DOCUMENT_BYTES_MAX} (DOCUMENT_BYTES_MAX)",
                self.name,
                self.bytes.len()
            ));
        }
        if self.content_type.is_empty()
            || self.content_type.len() > DOCUMENT_FIELD_BYTES_MAX
            || !self.content_type.contains('/')
        {
            return Err(format!(
                "document `{}` needs a media type like `application/pdf`, got `{}`",
                self.name, self.content_type
            ));
        }
        if self.metadata.len() > DOCUMENT_METADATA_MAX {
            return Err(format!(
                "document `{}` has {} metadata entries; the limit is {DOCUMENT_METADATA_MAX}",
                self.name,
                self.metadata.len()
            ));
        }
        if let Some((key, _)) = self.metadata.iter().find(|(k, v)| {
            k.is_empty() || k.len() > DOCUMENT_FIELD_BYTES_MAX || v.len() > DOCUMENT_FIELD_BYTES_MAX
        }) {
            return Err(format!(
                "metadata `{key}` of document `{}` must have a key and a value of at most {DOCUMENT_FIELD_BYTES_MAX} bytes",
                self.name
            ));
        }
        Ok(DocumentVersion {
            name: self.name.clone(),
            version,
            content_type: self.content_type.clone(),
            metadata: self.metadata.clone(),
            sha256: sha256(&self.bytes),
            bytes: self.bytes.len() as u64,
            task: self.task,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(bytes: Vec<u8>) -> NewDocument {
        NewDocument {
            name: "site-plan.pdf".into(),
            content_type: "application/pdf".into(),
            metadata: BTreeMap::from([("uploaded_by".into(), "citizen".into())]),
            bytes,
            task: None,
        }
    }

    #[test]
    fn a_version_names_its_content_by_hash() {
        let version = plan(b"%PDF-1.7".to_vec()).version(2).unwrap();
        assert_eq!(version.version, 2);
        assert_eq!(version.bytes, 8);
        assert_eq!(version.sha256_hex().len(), 64);
    }

    #[test]
    fn limits_are_named() {
        let too_big = plan(vec![0; DOCUMENT_BYTES_MAX + 1])
            .version(1)
            .unwrap_err();
        assert!(too_big.contains("DOCUMENT_BYTES_MAX"), "{too_big}");
        let mut no_type = plan(vec![1]);
        no_type.content_type = "pdf".into();
        assert!(no_type.version(1).is_err());
        let mut unnamed = plan(vec![1]);
        unnamed.name = " ".into();
        assert!(unnamed.version(1).is_err());
    }
}
