//! The routes: every handler is declared with its OpenAPI operation next to it, and the
//! router and the served document are built from the same list, so they cannot disagree.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use axum::Json;
use cairn_runtime::event::AttrValue;
use cairn_runtime::export::{event_json, payload_json};
use cairn_runtime::journal::{Cursor, InstanceStatus, TaskCursor, TaskQuery};
use cairn_runtime::policy::Action;
use cairn_runtime::task::{Actor, TaskOp};
use cairn_runtime::{InstanceInfo, ListFilter, Status, StatusKind};
use cairn_runtime::{TaskInfo, TaskStatus};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

type Shared = State<Arc<AppState>>;
type ApiResult<T> = Result<T, ApiError>;

/// Header naming a signal's dedupe key or an update's id.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A JSON body; what does not parse is refused with our error shape.
pub(crate) struct Body<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Body(value))
    }
}

/// Path parameters; a segment that does not parse is a 400 with our error shape.
pub(crate) struct PathArgs<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(PathArgs(value))
    }
}

/// Query parameters; what does not parse is a 400 with our error shape.
pub(crate) struct QueryArgs<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(QueryArgs(value))
    }
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => value.to_str().map(|v| Some(v.to_owned())).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_header",
                "the idempotency-key header must be visible ASCII",
            )
        }),
    }
}

// ---------------------------------------------------------------- health

/// Liveness and readiness.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`, or `shutting_down`.
    status: String,
}

/// Whether the process answers (always `ok` while it does).
#[utoipa::path(get, path = "/api/v1/health", tag = "health",
    responses((status = 200, description = "The server answers", body = Health)))]
pub(crate) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Whether the runtime takes requests: 503 once it is shutting down.
#[utoipa::path(get, path = "/api/v1/ready", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Shutting down", body = Health)))]
pub(crate) async fn ready(State(state): Shared) -> (StatusCode, Json<Health>) {
    if state.engine.is_shut_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "shutting_down".into(),
            }),
        )
    } else {
        (
            StatusCode::OK,
            Json(Health {
                status: "ok".into(),
            }),
        )
    }
}

/// The caller as the server knows them.
#[derive(Serialize, ToSchema)]
pub(crate) struct Me {
    /// Their id.
    id: String,
    /// Their roles.
    roles: Vec<String>,
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/api/v1/me", tag = "health", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = Me),
        (status = 401, description = "No or unknown token", body = ErrorBody)))]
pub(crate) async fn me(Caller(actor): Caller) -> Json<Me> {
    Json(Me {
        id: actor.id,
        roles: actor.roles,
    })
}

// ---------------------------------------------------------------- instances

/// One instance.
#[derive(Serialize, ToSchema)]
pub(crate) struct InstanceView {
    /// Its id.
    id: String,
    /// The run listed or shown (an instance that continued as new has one per run), 32
    /// hexadecimal digits: what `cairn anchors export` and exports name.
    run: String,
    /// Its workflow type.
    workflow_type: String,
    /// `running`, `completed`, `failed`, `terminated`, `continued_as_new` or `parked`.
    status: String,
    /// Why it is parked, and the error's code.
    parked: Option<ErrorBody>,
    /// Start commit time, ms since the Unix epoch.
    created_at_ms: u64,
    /// Latest commit time.
    updated_at_ms: u64,
    /// Events in its history.
    events: u64,
    /// Search attributes (`ctx.set_attributes`), as JSON values.
    attributes: BTreeMap<String, Value>,
    /// What the caller may do to it (`signal`, `update`, `cancel`, `terminate`), by the
    /// policy; empty in listings.
    allowed_actions: Vec<String>,
}

fn status_name(kind: StatusKind) -> &'static str {
    match kind {
        StatusKind::Running => "running",
        StatusKind::Completed => "completed",
        StatusKind::Failed => "failed",
        StatusKind::Terminated => "terminated",
        StatusKind::ContinuedAsNew => "continued_as_new",
        StatusKind::Parked => "parked",
    }
}

fn attr_json(value: &AttrValue) -> Value {
    match value {
        AttrValue::Text(text) => Value::String(text.clone()),
        AttrValue::Int(n) => Value::from(*n),
        AttrValue::Bool(b) => Value::Bool(*b),
    }
}

impl From<InstanceInfo> for InstanceView {
    fn from(info: InstanceInfo) -> Self {
        let parked = match &info.status {
            Status::Parked { reason, code } => Some(ErrorBody {
                code: code.clone(),
                message: reason.clone(),
            }),
            _ => None,
        };
        Self {
            status: status_name(info.status.kind()).to_owned(),
            parked,
            attributes: info
                .attributes
                .iter()
                .map(|(name, value)| (name.clone(), attr_json(value)))
                .collect(),
            run: format!("{:032x}", info.run),
            id: info.id,
            workflow_type: info.workflow_type,
            created_at_ms: info.created_at_ms,
            updated_at_ms: info.updated_at_ms,
            events: info.events,
            allowed_actions: Vec::new(),
        }
    }
}

/// A filter of instances. Every field is optional.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only this workflow type.
    workflow_type: Option<String>,
    /// Only these statuses, comma-separated (`running,parked`).
    status: Option<String>,
    /// Only instances started at or after this time (ms since the Unix epoch).
    created_from_ms: Option<u64>,
    /// Only instances started before this time.
    created_until_ms: Option<u64>,
    /// Only instances with this attribute value: `name:json` (`stage:"review"`,
    /// `amount:250`, `urgent:true`).
    attribute: Option<String>,
    /// Only instances whose id contains this text.
    id_contains: Option<String>,
    /// Only unfinished instances waiting on one of these, comma-separated: `person` (an
    /// open task), `overdue` (an open task past due), `timer`, `signal` (a wait with a
    /// deadline), `child`, `retrying` (an activity between attempts). Read from each
    /// candidate's history, at most 5,000 per request; follow `next` for more.
    waiting: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
    /// Continue after this cursor (from the previous page's `next`).
    cursor: Option<String>,
}

/// A page of instances.
#[derive(Serialize, ToSchema)]
pub(crate) struct InstancePage {
    /// The instances, oldest first.
    instances: Vec<InstanceView>,
    /// Pass as `cursor` for the next page; absent at the end.
    next: Option<String>,
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message)
}

fn parse_statuses(text: &str) -> ApiResult<Vec<StatusKind>> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part.trim() {
            "running" => Ok(StatusKind::Running),
            "completed" => Ok(StatusKind::Completed),
            "failed" => Ok(StatusKind::Failed),
            "terminated" => Ok(StatusKind::Terminated),
            "continued_as_new" => Ok(StatusKind::ContinuedAsNew),
            "parked" => Ok(StatusKind::Parked),
            other => Err(bad_query(format!(
                "unknown status `{other}`; use running, completed, failed, terminated, continued_as_new or parked"
            ))),
        })
        .collect()
}

pub(crate) fn parse_attribute(text: &str) -> ApiResult<(String, AttrValue)> {
    let (name, json) = text
        .split_once(':')
        .ok_or_else(|| bad_query("an attribute filter is `name:json`, like `stage:\"review\"`"))?;
    let value = match serde_json::from_str::<Value>(json) {
        Ok(Value::String(text)) => AttrValue::Text(text),
        Ok(Value::Bool(b)) => AttrValue::Bool(b),
        Ok(Value::Number(n)) if n.is_i64() => AttrValue::Int(n.as_i64().unwrap_or_default()),
        _ => {
            return Err(bad_query(format!(
                "the value of attribute `{name}` must be a JSON string, integer or boolean"
            )))
        }
    };
    Ok((name.to_owned(), value))
}

fn parse_cursor(text: &str) -> ApiResult<Cursor> {
    let (at, key) = text
        .split_once('-')
        .ok_or_else(|| bad_query("not a cursor this server issued"))?;
    match (at.parse(), u128::from_str_radix(key, 16)) {
        (Ok(created_at_ms), Ok(key)) => Ok(Cursor { created_at_ms, key }),
        _ => Err(bad_query("not a cursor this server issued")),
    }
}

fn cursor_text(cursor: Cursor) -> String {
    format!("{}-{:032x}", cursor.created_at_ms, cursor.key)
}

/// Lists the instances the caller may read, filtered and paged.
#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page", body = InstancePage),
        (status = 400, description = "A filter that does not parse", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody)))]
pub(crate) async fn list_instances(
    State(state): Shared,
    Caller(actor): Caller,
    QueryArgs(params): QueryArgs<ListParams>,
) -> ApiResult<Json<InstancePage>> {
    let filter = ListFilter {
        workflow_type: params.workflow_type,
        statuses: params
            .status
            .as_deref()
            .map(parse_statuses)
            .transpose()?
            .unwrap_or_default(),
        created_from_ms: params.created_from_ms,
        created_until_ms: params.created_until_ms,
        attributes: params
            .attribute
            .as_deref()
            .map(parse_attribute)
            .transpose()?
            .into_iter()
            .collect(),
        id_contains: params.id_contains.filter(|part| !part.is_empty()),
        limit: params.limit,
    };
    let after = params.cursor.as_deref().map(parse_cursor).transpose()?;
    if let Some(waiting) = params.waiting.as_deref().filter(|w| !w.is_empty()) {
        let wanted = parse_waiting(waiting)?;
        return list_waiting(&state, &actor, filter, after, &wanted).await;
    }
    let page = state.engine.list_page_as(&actor, &filter, after).await?;
    Ok(Json(InstancePage {
        instances: page.rows.into_iter().map(InstanceView::from).collect(),
        next: page.next.map(cursor_text),
    }))
}

/// Instance rows a `waiting` listing examines at most per request (counted whether the
/// caller may read them or not; the histories it reads are among them).
pub const WAITING_SCAN_MAX: usize = 5_000;

/// What an instance may be waiting on, for the `waiting` filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitingOn {
    Person,
    Overdue,
    Timer,
    Signal,
    Child,
    Retrying,
}

impl WaitingOn {
    pub(crate) fn holds(self, waits: &cairn_insight::waits::Waits) -> bool {
        match self {
            WaitingOn::Person => waits.person,
            WaitingOn::Overdue => waits.overdue,
            WaitingOn::Timer => waits.timer,
            WaitingOn::Signal => waits.signal,
            WaitingOn::Child => waits.child,
            WaitingOn::Retrying => waits.retrying,
        }
    }
}

pub(crate) fn parse_waiting(text: &str) -> ApiResult<Vec<WaitingOn>> {
    text.split(',')
        .map(|part| match part.trim() {
            "person" => Ok(WaitingOn::Person),
            "overdue" => Ok(WaitingOn::Overdue),
            "timer" => Ok(WaitingOn::Timer),
            "signal" => Ok(WaitingOn::Signal),
            "child" => Ok(WaitingOn::Child),
            "retrying" => Ok(WaitingOn::Retrying),
            other => Err(bad_query(format!(
                "`{other}` is not a wait: use person, overdue, timer, signal, child or retrying"
            ))),
        })
        .collect()
}

/// A page of the unfinished instances the filter selects that wait on one of `wanted`,
/// read from their histories: up to the page's limit, or until [`WAITING_SCAN_MAX`]
/// instance rows were examined, whichever comes first; `next` continues after the last
/// one read.
async fn list_waiting(
    state: &AppState,
    actor: &Actor,
    mut filter: ListFilter,
    mut after: Option<Cursor>,
    wanted: &[WaitingOn],
) -> ApiResult<Json<InstancePage>> {
    let unfinished = [StatusKind::Running, StatusKind::Parked];
    filter.statuses = if filter.statuses.is_empty() {
        unfinished.to_vec()
    } else {
        filter
            .statuses
            .iter()
            .copied()
            .filter(|s| unfinished.contains(s))
            .collect()
    };
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    let mut instances = Vec::new();
    if filter.statuses.is_empty() {
        // Only finished statuses asked for: nothing finished waits.
        return Ok(Json(InstancePage {
            instances,
            next: None,
        }));
    }
    filter.limit = Some(200);
    let now = state.engine.now_ms();
    let mut examined = 0usize;
    loop {
        let page = state.engine.list_page_as(actor, &filter, after).await?;
        examined += page.examined;
        for info in page.rows {
            let here = Cursor {
                created_at_ms: info.created_at_ms,
                key: info.run,
            };
            match state.engine.history_as(actor, &info.id).await {
                Ok(events) => {
                    let mut waits = cairn_insight::waits::waits(&events, now);
                    // A signal wait without a deadline records nothing until its
                    // signal comes: ask the host's memory, and for a run evicted while
                    // waiting, infer it (it waits durably on something, and nothing
                    // else goes unrecorded).
                    waits.signal |= match state.engine.waits_on_message(info.run) {
                        Some(waiting) => waiting,
                        None => matches!(info.status, Status::Running) && waits.none(),
                    };
                    if wanted.iter().any(|w| w.holds(&waits)) {
                        instances.push(InstanceView::from(info));
                    }
                }
                // Ended and gone, or not the caller's since it was listed.
                Err(
                    cairn_runtime::Error::InstanceNotFound(_)
                    | cairn_runtime::Error::Forbidden { .. },
                ) => {}
                Err(err) => return Err(err.into()),
            }
            if instances.len() >= limit {
                return Ok(Json(InstancePage {
                    instances,
                    next: Some(cursor_text(here)),
                }));
            }
        }
        match page.next {
            Some(cursor) if examined >= WAITING_SCAN_MAX => {
                return Ok(Json(InstancePage {
                    instances,
                    next: Some(cursor_text(cursor)),
                }))
            }
            Some(cursor) => after = Some(cursor),
            None => {
                return Ok(Json(InstancePage {
                    instances,
                    next: None,
                }))
            }
        }
    }
}

/// Starts an instance.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRequest {
    /// The workflow type.
    workflow_type: String,
    /// The instance's id (starting is idempotent by id).
    id: String,
    /// The workflow's input, checked against its type before anything is written.
    input: Value,
}

/// What a start did.
#[derive(Serialize, ToSchema)]
pub(crate) struct Started {
    /// The instance's id.
    id: String,
    /// `false` if an instance of that id existed already (nothing was started).
    created: bool,
}

/// Starts an instance of a workflow type, idempotently by id.
#[utoipa::path(post, path = "/api/v1/instances", tag = "instances", request_body = StartRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Started", body = Started),
        (status = 200, description = "An instance of that id existed", body = Started),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 422, description = "Unknown type, or an input that does not decode", body = ErrorBody)))]
pub(crate) async fn start_instance(
    State(state): Shared,
    Caller(actor): Caller,
    Body(request): Body<StartRequest>,
) -> ApiResult<(StatusCode, Json<Started>)> {
    // Policy first: a refused caller learns nothing about the types or their inputs.
    state.engine.authorize(
        &actor,
        &Action::Start {
            workflow_type: &request.workflow_type,
        },
    )?;
    let input = state
        .catalog
        .workflow_input(&request.workflow_type, request.input)?;
    let outcome = state
        .engine
        .start_as(&actor, &request.workflow_type, &request.id, input)
        .await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Started {
            id: request.id,
            created: outcome.created,
        }),
    ))
}

/// Reads one instance.
#[utoipa::path(get, path = "/api/v1/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "The instance's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The instance", body = InstanceView),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub(crate) async fn get_instance(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Json<InstanceView>> {
    let info = state.engine.status_as(&actor, &id).await?;
    let workflow_type = info.workflow_type.clone();
    let mut view = InstanceView::from(info);
    let instance = id.as_str();
    let workflow_type = workflow_type.as_str();
    // A signal or update of any name: the dashboard offers the action, the call names it.
    let actions = [
        (
            "signal",
            Action::Signal {
                instance,
                workflow_type,
                signal: "*",
            },
        ),
        (
            "update",
            Action::Update {
                instance,
                workflow_type,
                update: "*",
            },
        ),
        (
            "cancel",
            Action::Cancel {
                instance,
                workflow_type,
            },
        ),
        (
            "terminate",
            Action::Terminate {
                instance,
                workflow_type,
            },
        ),
    ];
    view.allowed_actions = actions
        .iter()
        .filter(|(_, action)| state.engine.authorize(&actor, action).is_ok())
        .map(|(name, _)| (*name).to_owned())
        .collect();
    Ok(Json(view))
}

/// Reads an instance's history, payloads decoded.
#[utoipa::path(get, path = "/api/v1/instances/{id}/history", tag = "instances",
    params(("id" = String, Path, description = "The instance's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Its events, oldest first", body = [serde_json::Value]),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub(crate) async fn get_history(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Json<Vec<Value>>> {
    let events = state.engine.history_as(&actor, &id).await?;
    Ok(Json(events.iter().map(event_json).collect()))
}

/// What a signal did.
#[derive(Serialize, ToSchema)]
pub(crate) struct SignalSent {
    /// `false` when a signal with the same `idempotency-key` was recorded before.
    recorded: bool,
}

/// Sends a signal; the body is its JSON body, checked against the declared type first.
#[utoipa::path(post, path = "/api/v1/instances/{id}/signals/{name}", tag = "instances",
    params(
        ("id" = String, Path, description = "The instance's id"),
        ("name" = String, Path, description = "The signal's name"),
        ("idempotency-key" = Option<String>, Header, description = "Records the signal once per key")),
    request_body(content = serde_json::Value, description = "The signal's body (any JSON the declared type decodes)"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Recorded (or recorded before, under the same key)", body = SignalSent),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "The instance has ended, or the key was used with another body", body = ErrorBody),
        (status = 422, description = "Undeclared signal, or a body that does not decode", body = ErrorBody)))]
pub(crate) async fn send_signal(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs((id, name)): PathArgs<(String, String)>,
    headers: HeaderMap,
    Body(body): Body<Value>,
) -> ApiResult<(StatusCode, Json<SignalSent>)> {
    let key = idempotency_key(&headers)?;
    // The policy first: a refused caller learns nothing of the declared types.
    let workflow_type = state.engine.status(&id).await?.workflow_type;
    state.engine.authorize(
        &actor,
        &Action::Signal {
            instance: &id,
            workflow_type: &workflow_type,
            signal: &name,
        },
    )?;
    let payload = state.catalog.signal_body(&name, body)?;
    let recorded = match key {
        Some(key) => {
            state
                .engine
                .signal_once_as(&actor, &id, &name, payload, &key)
                .await?
                .recorded
        }
        None => {
            state.engine.signal_as(&actor, &id, &name, payload).await?;
            true
        }
    };
    Ok((StatusCode::ACCEPTED, Json(SignalSent { recorded })))
}

/// The workflow's answer to an update.
#[derive(Serialize, ToSchema)]
pub(crate) struct UpdateAnswer {
    /// The update's id (the `idempotency-key` sent, or a fresh one).
    id: String,
    /// Whether the workflow accepted it.
    accepted: bool,
    /// Its response, if accepted.
    response: Option<Value>,
    /// Its reason, if rejected.
    reason: Option<String>,
}

/// An update recorded but not answered yet.
#[derive(Serialize, ToSchema)]
pub(crate) struct UpdatePending {
    /// The update's id (the `idempotency-key` sent, or a fresh one): ask again with it
    /// for the answer.
    id: String,
    /// Why the answer is not here.
    message: String,
}

/// Sends an update and waits for the workflow's answer, durable before it is returned;
/// a workflow that does not answer within the server's wait (30 s unless the host
/// set another), or a server that stops meanwhile, gets 202: the update is recorded,
/// and asking again with its `idempotency-key` returns its answer once there is one.
#[utoipa::path(post, path = "/api/v1/instances/{id}/updates/{name}", tag = "instances",
    params(
        ("id" = String, Path, description = "The instance's id"),
        ("name" = String, Path, description = "The update's name"),
        ("idempotency-key" = Option<String>, Header, description = "The update's id: asking again with it returns the same answer")),
    request_body(content = serde_json::Value, description = "The update's input (any JSON the declared type decodes)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Answered", body = UpdateAnswer),
        (status = 202, description = "Recorded, not answered yet: ask again with the same idempotency-key", body = UpdatePending),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "The instance ended without answering", body = ErrorBody),
        (status = 422, description = "Undeclared update, or an input that does not decode", body = ErrorBody)))]
pub(crate) async fn send_update(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs((id, name)): PathArgs<(String, String)>,
    headers: HeaderMap,
    Body(body): Body<Value>,
) -> ApiResult<axum::response::Response> {
    let key = idempotency_key(&headers)?.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // The policy first: a refused caller learns nothing of the declared types.
    let workflow_type = state.engine.status(&id).await?.workflow_type;
    state.engine.authorize(
        &actor,
        &Action::Update {
            instance: &id,
            workflow_type: &workflow_type,
            update: &name,
        },
    )?;
    let payload = state.catalog.update_body(&name, body)?;
    let wait = Duration::from_millis(state.update_wait_ms.load(Ordering::Relaxed));
    let mut closing = state.closing.subscribe();
    // Dropping the wait leaves the update recorded (it is carried on from the first
    // poll, see `Engine::update_as`); only the answer is not waited for here.
    let asked = state.engine.update_as(&actor, &id, &name, payload, &key);
    let pending = |message: String| {
        (
            StatusCode::ACCEPTED,
            Json(UpdatePending {
                id: key.clone(),
                message,
            }),
        )
            .into_response()
    };
    let answer = tokio::select! {
        answer = asked => answer?,
        () = tokio::time::sleep(wait) => {
            return Ok(pending(format!(
                "recorded; the workflow has not answered within {} ms: ask again with \
                 idempotency-key `{key}` for its answer",
                wait.as_millis()
            )));
        }
        _ = closing.wait_for(|closing| *closing) => {
            return Ok(pending(format!(
                "recorded; the server is stopping: ask again with idempotency-key `{key}` \
                 for its answer"
            )));
        }
    };
    Ok(Json(match answer {
        Ok(response) => UpdateAnswer {
            id: key,
            accepted: true,
            response: Some(payload_json(&response)),
            reason: None,
        },
        Err(reason) => UpdateAnswer {
            id: key,
            accepted: false,
            response: None,
            reason: Some(reason),
        },
    })
    .into_response())
}

/// A query's value.
#[derive(Serialize, ToSchema)]
pub(crate) struct QueryValue {
    /// The latest value published under the name; absent if none was.
    value: Option<Value>,
}

/// Reads the latest value the workflow published under a name, without running it.
#[utoipa::path(get, path = "/api/v1/instances/{id}/queries/{name}", tag = "instances",
    params(
        ("id" = String, Path, description = "The instance's id"),
        ("name" = String, Path, description = "The query's name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The value", body = QueryValue),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody)))]
pub(crate) async fn read_query(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs((id, name)): PathArgs<(String, String)>,
) -> ApiResult<Json<QueryValue>> {
    let value = state.engine.query_as(&actor, &id, &name).await?;
    Ok(Json(QueryValue {
        value: value.as_ref().map(payload_json),
    }))
}

/// Why an instance is cancelled or terminated.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reason {
    /// The reason, recorded in the history.
    reason: String,
}

/// A request the runtime recorded.
#[derive(Serialize, ToSchema)]
pub(crate) struct Recorded {
    /// The instance.
    id: String,
}

/// Requests cancellation: the workflow sees it at its next wait and may clean up.
#[utoipa::path(post, path = "/api/v1/instances/{id}/cancel", tag = "instances",
    params(("id" = String, Path, description = "The instance's id")),
    request_body = Reason, security(("bearer" = [])),
    responses(
        (status = 202, description = "Recorded", body = Recorded),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "It has ended", body = ErrorBody)))]
pub(crate) async fn cancel_instance(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
    Body(request): Body<Reason>,
) -> ApiResult<(StatusCode, Json<Recorded>)> {
    state.engine.cancel_as(&actor, &id, &request.reason).await?;
    Ok((StatusCode::ACCEPTED, Json(Recorded { id })))
}

/// Terminates at once: no more workflow code runs.
#[utoipa::path(post, path = "/api/v1/instances/{id}/terminate", tag = "instances",
    params(("id" = String, Path, description = "The instance's id")),
    request_body = Reason, security(("bearer" = [])),
    responses(
        (status = 202, description = "Recorded", body = Recorded),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "It has ended", body = ErrorBody)))]
pub(crate) async fn terminate_instance(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
    Body(request): Body<Reason>,
) -> ApiResult<(StatusCode, Json<Recorded>)> {
    state
        .engine
        .terminate_as(&actor, &id, &request.reason)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Recorded { id })))
}

// ---------------------------------------------------------------- overview

/// Instances by status.
#[derive(Default, Serialize, ToSchema)]
pub(crate) struct Counts {
    running: u64,
    completed: u64,
    failed: u64,
    terminated: u64,
    continued_as_new: u64,
    parked: u64,
}

impl Counts {
    fn slot(&mut self, kind: StatusKind) -> &mut u64 {
        match kind {
            StatusKind::Running => &mut self.running,
            StatusKind::Completed => &mut self.completed,
            StatusKind::Failed => &mut self.failed,
            StatusKind::Terminated => &mut self.terminated,
            StatusKind::ContinuedAsNew => &mut self.continued_as_new,
            StatusKind::Parked => &mut self.parked,
        }
    }

    fn add(&mut self, kind: StatusKind) {
        self.add_n(kind, 1);
    }

    fn add_n(&mut self, kind: StatusKind, n: u64) {
        let slot = self.slot(kind);
        *slot = slot.saturating_add(n);
    }
}

/// Instances of one workflow type by status.
#[derive(Serialize, ToSchema)]
pub(crate) struct TypeCounts {
    workflow_type: String,
    running: u64,
    completed: u64,
    failed: u64,
    terminated: u64,
    continued_as_new: u64,
    parked: u64,
}

/// Five minutes of activity.
#[derive(Serialize, ToSchema)]
pub(crate) struct Bucket {
    /// Start of the bucket, ms since the Unix epoch.
    at_ms: u64,
    /// Instances started in it.
    started: u64,
    /// Instances that completed in it.
    completed: u64,
    /// Instances that failed in it.
    failed: u64,
}

/// A parked instance and why.
#[derive(Serialize, ToSchema)]
pub(crate) struct ParkedView {
    id: String,
    workflow_type: String,
    code: String,
    message: String,
}

/// Parked instances an overview lists at most.
const PARKED_LISTED: usize = 100;

impl ParkedView {
    fn of(info: &InstanceInfo) -> Option<Self> {
        match &info.status {
            Status::Parked { reason, code } => Some(Self {
                id: info.id.clone(),
                workflow_type: info.workflow_type.clone(),
                code: code.clone(),
                message: reason.clone(),
            }),
            _ => None,
        }
    }
}

/// What is running, stuck or late, among the instances the caller may read.
#[derive(Serialize, ToSchema)]
pub(crate) struct Overview {
    /// By status.
    totals: Counts,
    /// By workflow type and status.
    by_type: Vec<TypeCounts>,
    /// Open human tasks.
    open_tasks: u64,
    /// Open tasks past their due time.
    overdue_tasks: u64,
    /// Parked instances, with their reasons (at most 100).
    parked: Vec<ParkedView>,
    /// Started, completed and failed per five minutes over the last hour.
    throughput: Vec<Bucket>,
    /// Step latency per activity on this host, slowest (p95) first: its recent attempts'
    /// percentiles, attempts and failures since the host started.
    step_latency: Vec<StepLatencyView>,
    /// Instance rows examined one by one to compute this: none when the caller may read
    /// every type whole and the journal keeps tallies (then the counts cost a few rows
    /// whatever is stored); otherwise the rows of the other types, readable or not.
    scanned: u64,
    /// Whether the rows to examine one by one were more than [`OVERVIEW_SCAN_MAX`] (the
    /// counts then cover the oldest).
    truncated: bool,
}

/// One activity's latency, from its recent attempts on this host.
#[derive(Serialize, ToSchema)]
pub(crate) struct StepLatencyView {
    /// The workflow type.
    workflow_type: String,
    /// The activity.
    activity: String,
    /// Attempts since the host started.
    attempts: u64,
    /// Of which failed (retried, or failed for good).
    failed: u64,
    /// Recent attempts the percentiles cover (at most 512).
    samples: u64,
    /// Median attempt duration, ms.
    p50_ms: f64,
    /// 95th percentile, ms.
    p95_ms: f64,
    /// 99th percentile, ms.
    p99_ms: f64,
}

/// Most instances (and tasks) an overview reads.
pub const OVERVIEW_SCAN_MAX: u64 = 200_000;
const BUCKET_MS: u64 = 5 * 60 * 1000;
const BUCKETS: u64 = 12;

/// Counts by type and status, open and overdue tasks, parked instances, and the last
/// hour's throughput.
#[utoipa::path(get, path = "/api/v1/overview", tag = "instances", security(("bearer" = [])),
    responses(
        (status = 200, description = "The overview", body = Overview),
        (status = 401, description = "No or unknown token", body = ErrorBody)))]
pub(crate) async fn overview(
    State(state): Shared,
    Caller(actor): Caller,
) -> ApiResult<Json<Overview>> {
    let now = state.engine.now_ms();
    let first_bucket = (now / BUCKET_MS).saturating_sub(BUCKETS - 1) * BUCKET_MS;
    let mut buckets: Vec<Bucket> = (0..BUCKETS)
        .map(|n| Bucket {
            at_ms: first_bucket + n * BUCKET_MS,
            started: 0,
            completed: 0,
            failed: 0,
        })
        .collect();
    let bucket = |at: u64| {
        at.checked_sub(first_bucket)
            .map(|since| since / BUCKET_MS)
            .filter(|n| *n < BUCKETS)
            .and_then(|n| usize::try_from(n).ok())
    };
    let mut totals = Counts::default();
    let mut by_type: BTreeMap<String, Counts> = BTreeMap::new();
    let mut parked = Vec::new();
    let mut scanned = 0u64;
    // Types the caller may read whole are answered from the journal's tallies (a few
    // rows whatever the number of runs); the others, or all of them on a journal that
    // keeps none, by listing the runs the caller may read.
    let tallies = state.engine.tallies(first_bucket).await?;
    let whole = |workflow_type: &str| {
        state
            .engine
            .authorize(
                &actor,
                &Action::Read {
                    instance: "*",
                    workflow_type,
                },
            )
            .is_ok()
    };
    let mut scan: Vec<Option<String>> = vec![None];
    if let Some(tallies) = &tallies {
        let types: std::collections::BTreeSet<&str> = tallies
            .by_status
            .keys()
            .map(|(workflow_type, _)| workflow_type.as_str())
            .chain(tallies.activity.iter().map(|b| b.workflow_type.as_str()))
            .collect();
        let (read_whole, partly): (Vec<&str>, Vec<&str>) =
            types.into_iter().partition(|t| whole(t));
        scan = partly.into_iter().map(|t| Some(t.to_owned())).collect();
        for ((workflow_type, status), n) in &tallies.by_status {
            if read_whole.contains(&workflow_type.as_str()) {
                let kind = StatusKind::from(*status);
                totals.add_n(kind, *n);
                by_type
                    .entry(workflow_type.clone())
                    .or_default()
                    .add_n(kind, *n);
            }
        }
        for activity in &tallies.activity {
            if !read_whole.contains(&activity.workflow_type.as_str()) {
                continue;
            }
            if let Some(n) = bucket(activity.at_ms) {
                buckets[n].started += activity.started;
                buckets[n].completed += activity
                    .ended
                    .get(&InstanceStatus::Completed)
                    .copied()
                    .unwrap_or(0);
                buckets[n].failed += activity
                    .ended
                    .get(&InstanceStatus::Failed)
                    .copied()
                    .unwrap_or(0);
            }
        }
        // Parked is derived (a running run whose last attempt was parked), so the tallies
        // count it as running: move it across.
        for info in state.engine.parked_instances().await? {
            if !read_whole.contains(&info.workflow_type.as_str()) {
                continue;
            }
            for counts in [
                &mut totals,
                by_type.entry(info.workflow_type.clone()).or_default(),
            ] {
                counts.running = counts.running.saturating_sub(1);
                counts.parked += 1;
            }
            if parked.len() < PARKED_LISTED {
                parked.extend(ParkedView::of(&info));
            }
        }
    }
    let mut truncated = false;
    for workflow_type in scan {
        let mut after = None;
        let filter = ListFilter {
            workflow_type,
            limit: Some(1000),
            ..ListFilter::default()
        };
        truncated = loop {
            let page = state.engine.list_page_as(&actor, &filter, after).await?;
            scanned += page.examined as u64;
            for info in page.rows {
                let kind = info.status.kind();
                totals.add(kind);
                by_type
                    .entry(info.workflow_type.clone())
                    .or_default()
                    .add(kind);
                if let Some(n) = bucket(info.created_at_ms) {
                    buckets[n].started += 1;
                }
                match (&info.status, bucket(info.updated_at_ms)) {
                    (Status::Completed, Some(n)) => buckets[n].completed += 1,
                    (Status::Failed, Some(n)) => buckets[n].failed += 1,
                    _ => {}
                }
                if parked.len() < PARKED_LISTED {
                    parked.extend(ParkedView::of(&info));
                }
            }
            match page.next {
                Some(cursor) if scanned < OVERVIEW_SCAN_MAX => after = Some(cursor),
                Some(_) => break true,
                None => break false,
            }
        };
        if truncated {
            break;
        }
    }
    let (mut open_tasks, mut overdue_tasks) = (0u64, 0u64);
    let mut query = TaskQuery {
        limit: 1000,
        ..TaskQuery::default()
    };
    let mut read = 0u64;
    loop {
        let page = state.engine.tasks(&query).await?;
        for row in &page.rows {
            read += 1;
            let readable = state
                .engine
                .authorize(
                    &actor,
                    &Action::Read {
                        instance: &row.instance,
                        workflow_type: &row.workflow_type,
                    },
                )
                .is_ok();
            if readable
                || row.candidates.include(&actor)
                || row.assignee.as_deref() == Some(actor.id.as_str())
            {
                open_tasks += 1;
                if row.overdue || row.due_at_ms.is_some_and(|due| due <= now) {
                    overdue_tasks += 1;
                }
            }
        }
        match page.next {
            Some(next) if read < OVERVIEW_SCAN_MAX => query.after = Some(next),
            _ => break,
        }
    }
    Ok(Json(Overview {
        totals,
        by_type: by_type
            .into_iter()
            .map(|(workflow_type, c)| TypeCounts {
                workflow_type,
                running: c.running,
                completed: c.completed,
                failed: c.failed,
                terminated: c.terminated,
                continued_as_new: c.continued_as_new,
                parked: c.parked,
            })
            .collect(),
        open_tasks,
        overdue_tasks,
        step_latency: {
            let mut steps: Vec<StepLatencyView> = state
                .engine
                .step_latencies()
                .into_iter()
                .map(|s| StepLatencyView {
                    workflow_type: s.workflow_type,
                    activity: s.activity,
                    attempts: s.attempts,
                    failed: s.failed,
                    samples: s.samples,
                    p50_ms: s.p50_ms,
                    p95_ms: s.p95_ms,
                    p99_ms: s.p99_ms,
                })
                .collect();
            steps.sort_by(|a, b| b.p95_ms.total_cmp(&a.p95_ms));
            steps
        },
        parked,
        throughput: buckets,
        scanned,
        truncated,
    }))
}

/// Server-sent events: `commit` (data: the number of commits applied) whenever commits
/// land, at most four times a second, so a view can refresh; a comment every 15 s keeps
/// the connection open. Ends when the server stops.
#[utoipa::path(get, path = "/api/v1/stream", tag = "instances", security(("bearer" = [])),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 401, description = "No or unknown token", body = ErrorBody)))]
pub(crate) async fn stream(
    State(state): Shared,
    Caller(_actor): Caller,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let commits = state.engine.watch_commits();
    let closing = state.closing.subscribe();
    let events = futures::stream::unfold(
        (commits, closing),
        |(mut commits, mut closing)| async move {
            if *closing.borrow() {
                return None;
            }
            tokio::select! {
                changed = commits.changed() => changed.ok()?,
                _ = closing.changed() => return None,
            }
            // Coalesce a burst of commits into one event.
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let applied = *commits.borrow_and_update();
            if applied == u64::MAX {
                return None;
            }
            let event = Event::default().event("commit").data(applied.to_string());
            Some((Ok(event), (commits, closing)))
        },
    );
    Sse::new(events).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
}

/// The host's metrics in the Prometheus text format (any valid token; point the
/// scraper's `authorization` at one). Names and labels: `docs/OPERATIONS.md`.
#[utoipa::path(get, path = "/metrics", tag = "health", security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "No or unknown token", body = ErrorBody)))]
pub(crate) async fn metrics(
    State(state): Shared,
    Caller(_actor): Caller,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let text = state.engine.metrics_text().await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

// ---------------------------------------------------------------- tasks

/// Who a task is offered to.
#[derive(Serialize, ToSchema)]
pub(crate) struct Offered {
    /// By name.
    users: Vec<String>,
    /// By role.
    roles: Vec<String>,
}

/// One task in an inbox.
#[derive(Serialize, ToSchema)]
pub(crate) struct TaskRowView {
    /// `instance/step`, the task's id in the other task routes.
    id: String,
    /// Its instance.
    instance: String,
    /// Its step.
    step: u32,
    /// Its instance's workflow type.
    workflow_type: String,
    /// Its kind.
    kind: String,
    /// Its title.
    title: String,
    /// Its priority (higher first).
    priority: i32,
    /// Created, ms since the Unix epoch.
    created_at_ms: u64,
    /// Due, if it has a due time.
    due_at_ms: Option<u64>,
    /// Who holds it.
    assignee: Option<String>,
    /// Who may claim it.
    candidates: Offered,
    /// Escalation tiers fired so far.
    escalations: u32,
    /// Whether it is overdue.
    overdue: bool,
}

/// A page of tasks.
#[derive(Serialize, ToSchema)]
pub(crate) struct TaskPageView {
    /// The tasks, oldest first.
    tasks: Vec<TaskRowView>,
    /// Pass as `cursor` for the next page; absent at the end.
    next: Option<String>,
}

/// Paging of an inbox.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TaskParams {
    /// Only tasks of this kind.
    kind: Option<String>,
    /// Only tasks of instances of this workflow type.
    workflow_type: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
    /// Continue after this cursor.
    cursor: Option<String>,
}

fn task_cursor(text: &str) -> ApiResult<TaskCursor> {
    let mut parts = text.split('-');
    match (
        parts.next().map(str::parse::<u64>),
        parts.next().map(|k| u128::from_str_radix(k, 16)),
        parts.next().map(str::parse::<u32>),
        parts.next(),
    ) {
        (Some(Ok(created_at_ms)), Some(Ok(key)), Some(Ok(step)), None) => Ok(TaskCursor {
            created_at_ms,
            key,
            step,
        }),
        _ => Err(bad_query("not a cursor this server issued")),
    }
}

/// The caller's inbox: the tasks they hold and those they may claim, by name or role.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(TaskParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page", body = TaskPageView),
        (status = 400, description = "A parameter that does not parse", body = ErrorBody),
        (status = 401, description = "No or unknown token", body = ErrorBody)))]
pub(crate) async fn inbox(
    State(state): Shared,
    Caller(actor): Caller,
    QueryArgs(params): QueryArgs<TaskParams>,
) -> ApiResult<Json<TaskPageView>> {
    let mut query = TaskQuery::for_actor(&actor);
    query.name = params.kind;
    query.workflow_type = params.workflow_type;
    query.limit = params.limit.unwrap_or(100).clamp(1, 1000);
    query.after = params.cursor.as_deref().map(task_cursor).transpose()?;
    let page = state.engine.tasks(&query).await?;
    Ok(Json(TaskPageView {
        tasks: page
            .rows
            .into_iter()
            .map(|row| TaskRowView {
                id: format!("{}/{}", row.instance, row.step),
                instance: row.instance,
                step: row.step,
                workflow_type: row.workflow_type,
                kind: row.name,
                title: row.title,
                priority: row.priority,
                created_at_ms: row.created_at_ms,
                due_at_ms: row.due_at_ms,
                assignee: row.assignee,
                candidates: Offered {
                    users: row.candidates.users,
                    roles: row.candidates.roles,
                },
                escalations: row.escalations,
                overdue: row.overdue,
            })
            .collect(),
        next: page
            .next
            .map(|c| format!("{}-{:x}-{}", c.created_at_ms, c.key, c.step)),
    }))
}

/// A comment on a task.
#[derive(Serialize, ToSchema)]
pub(crate) struct CommentView {
    /// Who wrote it.
    by: String,
    /// What they wrote.
    text: String,
    /// When, ms since the Unix epoch.
    at_ms: u64,
}

/// One task, with what a form needs to decide it.
#[derive(Serialize, ToSchema)]
pub(crate) struct TaskView {
    /// `instance/step`.
    id: String,
    /// Its instance.
    instance: String,
    /// Its step.
    step: u32,
    /// Its instance's workflow type.
    workflow_type: String,
    /// Its kind.
    kind: String,
    /// Its title.
    title: String,
    /// Its description.
    description: String,
    /// What the person is shown.
    input: Value,
    /// The JSON Schema a decision must match.
    decision_schema: Value,
    /// `open`, `completed`, `cancelled` or `withdrawn`.
    status: String,
    /// Who decided, once completed.
    decided_by: Option<String>,
    /// The decision, once completed.
    decision: Option<Value>,
    /// Who holds it.
    assignee: Option<String>,
    /// Who may claim it.
    candidates: Offered,
    /// Its priority.
    priority: i32,
    /// Created, ms since the Unix epoch.
    created_at_ms: u64,
    /// Due, if it has a due time.
    due_at_ms: Option<u64>,
    /// When to look at it again.
    follow_up_at_ms: Option<u64>,
    /// Escalation tiers fired so far.
    escalations: u32,
    /// Whether it was recorded as overdue.
    overdue: bool,
    /// Comments, oldest first.
    comments: Vec<CommentView>,
}

impl From<TaskInfo> for TaskView {
    fn from(info: TaskInfo) -> Self {
        let state = info.state;
        let (status, decided_by, decision) = match &info.status {
            TaskStatus::Open => ("open", None, None),
            TaskStatus::Completed {
                actor, decision, ..
            } => (
                "completed",
                Some(actor.id.clone()),
                Some(payload_json(decision)),
            ),
            TaskStatus::Cancelled { .. } => ("cancelled", None, None),
            _ => ("withdrawn", None, None),
        };
        Self {
            id: format!("{}/{}", info.instance, info.step),
            instance: info.instance,
            step: info.step,
            workflow_type: info.workflow_type,
            kind: state.spec.name.clone(),
            title: state.spec.title.clone(),
            description: state.spec.description.clone(),
            input: payload_json(&state.spec.input),
            decision_schema: serde_json::from_str(&state.spec.decision_schema)
                .unwrap_or(Value::Null),
            status: status.to_owned(),
            decided_by,
            decision,
            assignee: state.assignee.clone(),
            candidates: Offered {
                users: state.candidates.users.clone(),
                roles: state.candidates.roles.clone(),
            },
            priority: state.spec.priority,
            created_at_ms: state.created_at_ms,
            due_at_ms: state.spec.due_at_ms,
            follow_up_at_ms: state.spec.follow_up_at_ms,
            escalations: state.escalations,
            overdue: state.overdue,
            comments: state
                .comments
                .iter()
                .map(|c| CommentView {
                    by: c.actor.clone(),
                    text: c.text.clone(),
                    at_ms: c.at_ms,
                })
                .collect(),
        }
    }
}

/// Reads task `step` of `instance` for `actor`: one who may read the instance, or whom
/// the task concerns (it is offered to them, they hold it, or they decided it).
async fn task_for(
    state: &AppState,
    actor: &Actor,
    instance: &str,
    step: u32,
) -> ApiResult<TaskInfo> {
    let info = state.engine.task(instance, step).await?;
    let reader = state.engine.authorize(
        actor,
        &Action::Read {
            instance,
            workflow_type: &info.workflow_type,
        },
    );
    let concerned = info.state.candidates.include(actor)
        || info.state.assignee.as_deref() == Some(actor.id.as_str())
        || matches!(&info.status, TaskStatus::Completed { actor: by, .. } if by.id == actor.id);
    match reader {
        Ok(()) => Ok(info),
        Err(_) if concerned => Ok(info),
        Err(err) => Err(err.into()),
    }
}

/// Reads one task.
#[utoipa::path(get, path = "/api/v1/tasks/{instance}/{step}", tag = "tasks",
    params(
        ("instance" = String, Path, description = "The task's instance"),
        ("step" = u32, Path, description = "The task's step")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 403, description = "Neither offered to the caller nor readable by them", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody)))]
pub(crate) async fn get_task(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs((instance, step)): PathArgs<(String, u32)>,
) -> ApiResult<Json<TaskView>> {
    Ok(Json(
        task_for(&state, &actor, &instance, step).await?.into(),
    ))
}

async fn act(
    state: &AppState,
    actor: &Actor,
    instance: &str,
    step: u32,
    op: TaskOp,
) -> ApiResult<Json<TaskView>> {
    state.engine.act_on_task(actor, instance, step, op).await?;
    // The task as the change left it, without asking again whether the caller may see
    // it: they just acted on it, and one who handed it on (a delegate who is neither a
    // candidate nor a reader) would otherwise get a refusal for a change that was made.
    Ok(Json(state.engine.task(instance, step).await?.into()))
}

/// Claims a task (the caller must be a candidate).
#[utoipa::path(post, path = "/api/v1/tasks/{instance}/{step}/claim", tag = "tasks",
    params(
        ("instance" = String, Path, description = "The task's instance"),
        ("step" = u32, Path, description = "The task's step")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Claimed; the task as it is now", body = TaskView),
        (status = 403, description = "Not offered to the caller", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Closed, or held by someone else", body = ErrorBody)))]
pub(crate) async fn claim_task(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs((instance, step)): PathArgs<(String, u32)>,
) -> ApiResult<Json<TaskView>> {
    act(&state, &actor, &instance, step, TaskOp::Claim).await
}

/// Gives a held task back to its candidates.
#[utoipa::path(post, path = "/api/v1/tasks/{instance}/{step}/release", tag = "tasks",
    params(
        ("instance" = String, Path, description = "The task's instance"),
        ("step" = u32, Path, description = "The task's step")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Released", body = TaskView),
        (status = 403, description = "The caller does not hold it", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Closed", body = ErrorBody)))]
pub(crate) async fn release_task(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs((instance, step)): PathArgs<(String, u32)>,
) -> ApiResult<Json<TaskView>> {
    act(&state, &actor, &instance, step, TaskOp::Release).await
}

/// Whom to hand a task to.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Delegate {
    /// The user id of the new holder.
    to: String,
}

/// Hands a task to another user.
#[utoipa::path(post, path = "/api/v1/tasks/{instance}/{step}/delegate", tag = "tasks",
    params(
        ("instance" = String, Path, description = "The task's instance"),
        ("step" = u32, Path, description = "The task's step")),
    request_body = Delegate, security(("bearer" = [])),
    responses(
        (status = 200, description = "Delegated", body = TaskView),
        (status = 403, description = "The caller may not", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Closed", body = ErrorBody)))]
pub(crate) async fn delegate_task(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs((instance, step)): PathArgs<(String, u32)>,
    Body(request): Body<Delegate>,
) -> ApiResult<Json<TaskView>> {
    act(
        &state,
        &actor,
        &instance,
        step,
        TaskOp::Delegate { to: request.to },
    )
    .await
}

/// A comment to add.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Comment {
    /// What to say.
    text: String,
}

/// Comments on a task.
#[utoipa::path(post, path = "/api/v1/tasks/{instance}/{step}/comment", tag = "tasks",
    params(
        ("instance" = String, Path, description = "The task's instance"),
        ("step" = u32, Path, description = "The task's step")),
    request_body = Comment, security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded", body = TaskView),
        (status = 403, description = "The caller may not", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Closed", body = ErrorBody)))]
pub(crate) async fn comment_task(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs((instance, step)): PathArgs<(String, u32)>,
    Body(request): Body<Comment>,
) -> ApiResult<Json<TaskView>> {
    act(
        &state,
        &actor,
        &instance,
        step,
        TaskOp::Comment { text: request.text },
    )
    .await
}

/// A decision.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Complete {
    /// The decision, checked against the task's `decision_schema`.
    decision: Value,
}

/// Completes a held task with a decision.
#[utoipa::path(post, path = "/api/v1/tasks/{instance}/{step}/complete", tag = "tasks",
    params(
        ("instance" = String, Path, description = "The task's instance"),
        ("step" = u32, Path, description = "The task's step")),
    request_body = Complete, security(("bearer" = [])),
    responses(
        (status = 200, description = "Decided; the workflow goes on", body = TaskView),
        (status = 403, description = "The caller does not hold it", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Closed", body = ErrorBody),
        (status = 422, description = "The decision does not match the schema; nothing written", body = ErrorBody)))]
pub(crate) async fn complete_task(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs((instance, step)): PathArgs<(String, u32)>,
    Body(request): Body<Complete>,
) -> ApiResult<Json<TaskView>> {
    state
        .engine
        .complete_task(&actor, &instance, step, request.decision)
        .await?;
    Ok(Json(
        task_for(&state, &actor, &instance, step).await?.into(),
    ))
}

/// The refusal of an unknown route.
pub(crate) async fn no_route() -> ApiError {
    ApiError::not_found("route")
}

/// The refusal of a method a route does not take.
pub(crate) async fn no_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.json",
    )
}
