//! Schedules over HTTP: list them, pause, resume, start an occurrence now. Schedules are
//! created by the host's code (`Runtime::schedule`); the API operates them.
//!
//! A caller sees the schedules whose workflow type it may read whole (the policy's
//! `Read` of instance `*`) or may manage (`Schedule`); only the latter may act.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use cairn_runtime::export::payload_json;
use cairn_runtime::policy::Action;
use cairn_runtime::schedule::{Recurrence, ScheduleRow};
use cairn_runtime::task::Actor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::{Body, PathArgs};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// A schedule as the caller may see it.
#[derive(Serialize, ToSchema)]
pub(crate) struct ScheduleView {
    /// Its id; occurrence `T` is the instance `{id}@{T}`.
    id: String,
    /// The workflow type each occurrence starts.
    workflow_type: String,
    /// The input of every occurrence, decoded.
    input: Value,
    /// The interval in ms, for an interval schedule.
    every_ms: Option<u64>,
    /// The cron expression (UTC), for a cron schedule.
    cron: Option<String>,
    /// When it fires next, ms since the Unix epoch (while paused: when it would have).
    next_fire_ms: u64,
    /// Set while it is paused.
    paused: Option<PausedView>,
    /// What the caller may do: `pause`, `resume`, `trigger`.
    allowed_actions: Vec<String>,
}

/// Who paused a schedule, when and why.
#[derive(Serialize, ToSchema)]
pub(crate) struct PausedView {
    /// When, ms since the Unix epoch.
    at_ms: u64,
    /// Who (absent when the host's code paused it).
    by: Option<String>,
    /// Why.
    note: String,
}

/// The schedules the caller may see.
#[derive(Serialize, ToSchema)]
pub(crate) struct ScheduleList {
    /// By id.
    schedules: Vec<ScheduleView>,
}

/// Why a schedule is paused.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PauseRequest {
    /// The reason, kept with the pause and shown beside the schedule.
    reason: String,
}

/// An occurrence started now.
#[derive(Serialize, ToSchema)]
pub(crate) struct Triggered {
    /// The instance started.
    id: String,
    /// `false` when an occurrence of that millisecond existed already.
    created: bool,
}

/// Longest pause reason, in bytes.
pub const PAUSE_REASON_BYTES_MAX: usize = 1000;

fn may_manage(state: &AppState, actor: &Actor, id: &str, row: &ScheduleRow) -> bool {
    state
        .engine
        .authorize(
            actor,
            &Action::Schedule {
                schedule: id,
                workflow_type: &row.workflow_type,
            },
        )
        .is_ok()
}

fn may_see(state: &AppState, actor: &Actor, id: &str, row: &ScheduleRow) -> bool {
    may_manage(state, actor, id, row)
        || state
            .engine
            .authorize(
                actor,
                &Action::Read {
                    instance: "*",
                    workflow_type: &row.workflow_type,
                },
            )
            .is_ok()
}

fn view(state: &AppState, actor: &Actor, id: String, row: ScheduleRow) -> ScheduleView {
    let allowed_actions = if may_manage(state, actor, &id, &row) {
        let toggle = if row.paused.is_some() {
            "resume"
        } else {
            "pause"
        };
        vec![toggle.to_owned(), "trigger".to_owned()]
    } else {
        Vec::new()
    };
    let (every_ms, cron) = match &row.recurrence {
        Recurrence::EveryMs(ms) => (Some(*ms), None),
        Recurrence::Cron(expression) => (None, Some(expression.clone())),
    };
    ScheduleView {
        input: payload_json(&row.input),
        workflow_type: row.workflow_type,
        every_ms,
        cron,
        next_fire_ms: row.next_fire_ms,
        paused: row.paused.map(|p| PausedView {
            at_ms: p.at_ms,
            by: p.by,
            note: p.note,
        }),
        allowed_actions,
        id,
    }
}

/// The schedule `id` if the caller may see it.
fn visible(state: &AppState, actor: &Actor, id: &str) -> Result<ScheduleRow, ApiError> {
    let row = state.engine.schedule_row(id)?;
    if may_see(state, actor, id, &row) {
        Ok(row)
    } else {
        // Said as the runtime says it, naming the verb that would let them.
        Err(state
            .engine
            .authorize(
                actor,
                &Action::Schedule {
                    schedule: id,
                    workflow_type: &row.workflow_type,
                },
            )
            .err()
            .map_or_else(
                || ApiError::new(StatusCode::FORBIDDEN, "forbidden", "not visible to you"),
                ApiError::from,
            ))
    }
}

/// Lists the schedules the caller may see, by id.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The schedules", body = ScheduleList),
        (status = 401, description = "No or unknown token", body = ErrorBody)))]
pub(crate) async fn list_schedules(
    State(state): Shared,
    Caller(actor): Caller,
) -> Json<ScheduleList> {
    let schedules = state
        .engine
        .schedules()
        .into_iter()
        .filter(|(id, row)| may_see(&state, &actor, id, row))
        .map(|(id, row)| view(&state, &actor, id, row))
        .collect();
    Json(ScheduleList { schedules })
}

/// Reads one schedule.
#[utoipa::path(get, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 403, description = "Not visible to the caller", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody)))]
pub(crate) async fn get_schedule(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let row = visible(&state, &actor, &id)?;
    Ok(Json(view(&state, &actor, id, row)))
}

/// Pauses a schedule: it starts nothing until resumed. Pausing a paused schedule keeps
/// its first pause.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/pause", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    request_body = PauseRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "Paused; the schedule as it is now", body = ScheduleView),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 422, description = "An empty or over-long reason", body = ErrorBody)))]
pub(crate) async fn pause_schedule(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
    Body(request): Body<PauseRequest>,
) -> Result<Json<ScheduleView>, ApiError> {
    let reason = request.reason.trim();
    if reason.is_empty() || reason.len() > PAUSE_REASON_BYTES_MAX {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_reason",
            format!(
                "a pause needs a reason of 1 to {PAUSE_REASON_BYTES_MAX} bytes, got {}",
                reason.len()
            ),
        ));
    }
    let row = state.engine.pause_schedule_as(&actor, &id, reason).await?;
    Ok(Json(view(&state, &actor, id, row)))
}

/// Resumes a paused schedule; occurrences due while it was paused are skipped.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/resume", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Running; the schedule as it is now", body = ScheduleView),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody)))]
pub(crate) async fn resume_schedule(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let row = state.engine.resume_schedule_as(&actor, &id).await?;
    Ok(Json(view(&state, &actor, id, row)))
}

/// Starts one occurrence now (paused or not) without moving the next one.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/trigger", tag = "schedules",
    params(("id" = String, Path, description = "The schedule's id")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Started", body = Triggered),
        (status = 200, description = "An occurrence of this millisecond existed", body = Triggered),
        (status = 403, description = "The policy refuses", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody)))]
pub(crate) async fn trigger_schedule(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<(StatusCode, Json<Triggered>), ApiError> {
    let (instance, outcome) = state.engine.trigger_schedule_as(&actor, &id).await?;
    tracing::info!(target: "cairn::audit", actor = %actor.id, schedule = %id, %instance, "schedule triggered");
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Triggered {
            id: instance,
            created: outcome.created,
        }),
    ))
}
