//! Case documents over HTTP: list an instance's documents, download a version, attach a
//! new one (its bytes as the request body, its media type as the request's).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_runtime::document::{DocumentVersion, NewDocument};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::{PathArgs, QueryArgs};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

/// A document's bytes; a body over the limit (also one sent without a length) or cut
/// short is refused as JSON `{code, message}` like every other refusal.
pub(crate) struct RawBody(Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(request, state)
            .await
            .map(Self)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!(
                            "the body is over the limit of {} bytes",
                            crate::BODY_BYTES_MAX
                        ),
                    )
                } else {
                    ApiError::new(rejection.status(), "bad_body", rejection.body_text())
                }
            })
    }
}

type Shared = State<Arc<AppState>>;

/// One version of a document.
#[derive(Serialize, ToSchema)]
pub(crate) struct DocumentView {
    /// Its name within the instance.
    name: String,
    /// Its version (1 for the first).
    version: u32,
    /// Its media type.
    content_type: String,
    /// Free-form metadata.
    metadata: BTreeMap<String, String>,
    /// SHA-256 of its bytes, hexadecimal.
    sha256: String,
    /// Its size in bytes.
    bytes: u64,
    /// The task step it belongs to, if any.
    task: Option<u32>,
}

impl From<DocumentVersion> for DocumentView {
    fn from(d: DocumentVersion) -> Self {
        Self {
            sha256: d.sha256_hex(),
            name: d.name,
            version: d.version,
            content_type: d.content_type,
            metadata: d.metadata,
            bytes: d.bytes,
            task: d.task,
        }
    }
}

/// Every version of every document of an instance, by name, oldest first.
#[utoipa::path(get, path = "/api/v1/instances/{id}/documents", tag = "documents",
    params(("id" = String, Path, description = "The instance's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The documents", body = [DocumentView]),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub(crate) async fn list_documents(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<Json<Vec<DocumentView>>, ApiError> {
    let versions = state.engine.documents(Some(&actor), &id).await?;
    Ok(Json(versions.into_iter().map(DocumentView::from).collect()))
}

/// Which version to download.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct VersionParams {
    /// The version (default: the latest).
    version: Option<u32>,
}

/// A document's bytes (the latest version unless `version` says), checked against the
/// SHA-256 its history recorded, with its media type. Served as an attachment that the
/// browser does not run (`content-security-policy: sandbox`, `nosniff`).
#[utoipa::path(get, path = "/api/v1/instances/{id}/documents/{name}", tag = "documents",
    params(
        ("id" = String, Path, description = "The instance's id"),
        ("name" = String, Path, description = "The document's name"),
        VersionParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The bytes, with the document's media type", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such instance, document or version", body = ErrorBody)))]
pub(crate) async fn get_document(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs((id, name)): PathArgs<(String, String)>,
    QueryArgs(params): QueryArgs<VersionParams>,
) -> Result<Response, ApiError> {
    let versions = state.engine.documents(Some(&actor), &id).await?;
    let exists = versions
        .iter()
        .any(|d| d.name == name && params.version.is_none_or(|v| d.version == v));
    if !exists {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "document_not_found",
            format!(
                "instance `{id}` has no document `{name}`{}",
                params
                    .version
                    .map(|v| format!(" version {v}"))
                    .unwrap_or_default()
            ),
        ));
    }
    let (version, bytes) = state
        .engine
        .document(Some(&actor), &id, &name, params.version)
        .await?;
    let content_type = HeaderValue::from_str(&version.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{file}\""))
        .unwrap_or(HeaderValue::from_static("attachment"));
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_DISPOSITION, disposition);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    Ok(response)
}

/// Where an attached document belongs.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AttachParams {
    /// The step of the human task it belongs to, if any.
    task: Option<u32>,
}

/// Attaches a document (or its next version, if the name exists): the request body is
/// its bytes and the request's `content-type` its media type. Recorded in the history
/// with the caller as its actor; the bytes are stored once per content.
#[utoipa::path(post, path = "/api/v1/instances/{id}/documents/{name}", tag = "documents",
    params(
        ("id" = String, Path, description = "The instance's id"),
        ("name" = String, Path, description = "The document's name"),
        AttachParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The document's bytes (at most the API's body limit)"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Attached: the version recorded", body = DocumentView),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "The instance has ended", body = ErrorBody)))]
pub(crate) async fn attach_document(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs((id, name)): PathArgs<(String, String)>,
    QueryArgs(params): QueryArgs<AttachParams>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<DocumentView>), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let document = NewDocument {
        name,
        content_type,
        metadata: BTreeMap::new(),
        bytes: body.to_vec(),
        task: params.task,
    };
    let version = state
        .engine
        .attach_document(Some(&actor), &id, document)
        .await?;
    Ok((StatusCode::CREATED, Json(DocumentView::from(version))))
}
