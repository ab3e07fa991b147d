//! Every refusal the API gives: a status, a stable code and a message, as JSON. Runtime
//! errors keep their `CAIRN-E....` code; what the HTTP layer refuses itself (no token, bad
//! JSON, a body over the limit, an unknown route) has a code of its own.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_runtime::Error;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code: a runtime error's `CAIRN-E....`, or one of the HTTP layer's own
    /// (`unauthenticated`, `bad_json`, `body_too_large`, `unsupported_media_type`,
    /// `invalid_body`, `bad_path`, `bad_query`, `not_found`, `method_not_allowed`).
    pub code: String,
    /// What went wrong and what to do, in words.
    pub message: String,
}

/// An error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code: code.to_owned(),
                message: message.into(),
            },
        }
    }

    pub(crate) fn unauthenticated(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} here"),
        )
    }
}

/// The HTTP status of a runtime error: refusals of the request are 4xx, only the
/// store's own failures (damage, I/O) are 5xx.
fn status_of(err: &Error) -> StatusCode {
    match err {
        Error::InstanceNotFound(_) | Error::TaskNotFound { .. } | Error::ScheduleNotFound(_) => {
            StatusCode::NOT_FOUND
        }
        Error::Forbidden { .. } => StatusCode::FORBIDDEN,
        Error::InvalidArgument(_)
        | Error::InvalidDecision { .. }
        | Error::PayloadEncode { .. }
        | Error::PayloadTooLarge { .. }
        | Error::UnknownWorkflowType { .. }
        | Error::WorkflowTypeMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::InstanceFinished(_)
        | Error::TaskClosed { .. }
        | Error::KeyReused { .. }
        | Error::Conflict { .. }
        | Error::Contended { .. }
        | Error::Unanswered { .. }
        | Error::Parked { .. }
        | Error::Terminated { .. }
        | Error::LeaseLost { .. } => StatusCode::CONFLICT,
        Error::ShutDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What a failure of the host is, said without its particulars: a store's message names
/// files, keys and payloads, which are for the operator, not for whoever sent the request.
fn failure_summary(err: &Error) -> &'static str {
    match err {
        Error::Storage(_) => "the host's store failed",
        Error::Corrupt { .. } => "the host found damaged data in its store",
        Error::Open { .. } | Error::UnsupportedFormat { .. } => "the host could not open its store",
        Error::NonDeterminism(_) => "the workflow's code no longer matches the instance's history",
        Error::PayloadDecode { .. } => {
            "a recorded payload no longer decodes as the workflow's type"
        }
        Error::WorkflowPanicked { .. } => "the workflow's code panicked",
        _ => "the host failed to serve this request",
    }
}

/// A short random name for one failure, said to the caller and logged with the error, so
/// that an operator finds the details a 5xx answer leaves out.
fn incident_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Only the log line's correlation is lost: the time of day still tells them apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let status = status_of(&err);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            let incident = incident_id();
            tracing::error!(
                code = err.code(),
                incident = %incident,
                error = %err,
                "request failed in the runtime"
            );
            let message = format!(
                "{}; the host's log has the details under incident {incident}",
                failure_summary(&err)
            );
            return Self::new(status, err.code(), message);
        }
        Self::new(status, err.code(), err.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            _ => "bad_json",
        };
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => format!(
                "the body is over the limit of {} bytes",
                crate::BODY_BYTES_MAX
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                "send the body as JSON with `content-type: application/json`".to_owned()
            }
            _ => rejection.body_text(),
        };
        Self::new(status, code, message)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cairn\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_4xx_and_only_store_failures_5xx() {
        let not_found = ApiError::from(Error::InstanceNotFound("x".into()));
        assert_eq!(not_found.status, StatusCode::NOT_FOUND);
        assert_eq!(not_found.body.code, "CAIRN-E0007");
        let forbidden = ApiError::from(Error::Forbidden {
            actor: "a".into(),
            action: "b".into(),
            reason: "c".into(),
        });
        assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
        let bad = ApiError::from(Error::InvalidArgument("no".into()));
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        let shut = ApiError::from(Error::ShutDown);
        assert_eq!(shut.status, StatusCode::SERVICE_UNAVAILABLE);
        let corrupt = ApiError::from(Error::Corrupt {
            location: "x".into(),
            message: "y".into(),
        });
        assert_eq!(corrupt.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn a_host_failure_keeps_its_code_but_not_its_particulars() {
        let err = Error::Open {
            path: "/srv/cairn/secret-tenant.redb".into(),
            message: "permission denied".into(),
            remedy: "fix the mode",
        };
        let api = ApiError::from(err);
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(api.body.code, "CAIRN-E0005");
        assert!(
            !api.body.message.contains("secret-tenant"),
            "{}",
            api.body.message
        );
        assert!(
            api.body
                .message
                .starts_with("the host could not open its store; "),
            "{}",
            api.body.message
        );
        let incident = api
            .body
            .message
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(incident.len(), 16, "{}", api.body.message);
        assert!(incident.bytes().all(|b| b.is_ascii_hexdigit()));
        let again = ApiError::from(Error::Storage(cairn_runtime::StorageFailure::new(
            "disk full at /srv/cairn",
        )));
        assert!(
            !again.body.message.contains("/srv"),
            "{}",
            again.body.message
        );
        assert_ne!(
            again.body.message.rsplit(' ').next(),
            Some(incident.as_str())
        );
        // A refusal is the caller's to act on, so it keeps its words.
        let refused = ApiError::from(Error::InstanceNotFound("order-7".into()));
        assert!(refused.body.message.contains("order-7"));
    }
}
