//! Process maps over HTTP: mined from the recorded histories of one workflow type, as
//! JSON, BPMN 2.0 XML (with its diagram) and SVG.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_insight::{bpmn, svg, ProcessMap};
use cairn_runtime::journal::StoredEvent;
use cairn_runtime::{Error, ListFilter};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::{PathArgs, QueryArgs};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// Runs a map reads when the request does not say.
pub const MAP_RUNS_DEFAULT: usize = 2_000;
/// Runs a map reads at most (each is one history read).
pub const MAP_RUNS_MAX: usize = 20_000;

/// Which runs a map is mined from.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct MapParams {
    /// Only runs started at or after this time (ms since the Unix epoch).
    created_from_ms: Option<u64>,
    /// Only runs started before this time.
    created_until_ms: Option<u64>,
    /// At most this many runs, the first started in the range (default 2,000, at most
    /// 20,000).
    limit: Option<usize>,
}

/// Reads the histories the caller may read and mines them.
async fn mine(
    state: &AppState,
    actor: &cairn_runtime::task::Actor,
    workflow_type: String,
    params: MapParams,
) -> Result<ProcessMap, ApiError> {
    let limit = params
        .limit
        .unwrap_or(MAP_RUNS_DEFAULT)
        .clamp(1, MAP_RUNS_MAX);
    let filter = ListFilter {
        workflow_type: Some(workflow_type.clone()),
        created_from_ms: params.created_from_ms,
        created_until_ms: params.created_until_ms,
        limit: Some(1000),
        ..ListFilter::default()
    };
    let mut histories: Vec<Vec<StoredEvent>> = Vec::new();
    let mut after = None;
    'pages: loop {
        let (rows, next) = state.engine.list_page_as(actor, &filter, after).await?;
        for info in rows {
            if histories.len() >= limit {
                break 'pages;
            }
            match state.engine.history_as(actor, &info.id).await {
                Ok(events) => histories.push(events),
                // Listed, then gone or unreadable to this caller: not part of the map.
                Err(Error::InstanceNotFound(_) | Error::Forbidden { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        match next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    Ok(ProcessMap::mine(
        &workflow_type,
        histories.iter().map(Vec::as_slice),
    ))
}

/// The process map of a workflow type, mined from its recorded histories: steps with
/// counts and durations, observed transitions with counts, shares and elapsed times,
/// bottlenecks, and the most frequent paths.
#[utoipa::path(get, path = "/api/v1/types/{workflow_type}/map", tag = "maps",
    params(("workflow_type" = String, Path, description = "The workflow type"), MapParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The map (empty when no run was recorded or readable)", body = ProcessMap),
        (status = 401, description = "No or unknown token", body = ErrorBody)))]
pub(crate) async fn get_map(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(workflow_type): PathArgs<String>,
    QueryArgs(params): QueryArgs<MapParams>,
) -> Result<Json<ProcessMap>, ApiError> {
    Ok(Json(mine(&state, &actor, workflow_type, params).await?))
}

/// A file name made of a workflow type: letters, digits, `_`, `-`; others become `_`.
fn file_name(workflow_type: &str, extension: &str) -> String {
    let stem: String = workflow_type
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{stem}.{extension}")
}

/// The process map as BPMN 2.0 XML with its diagram (a computed layout): modelling tools
/// open the process as it really runs.
#[utoipa::path(get, path = "/api/v1/types/{workflow_type}/map.bpmn", tag = "maps",
    params(("workflow_type" = String, Path, description = "The workflow type"), MapParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "BPMN 2.0 XML", content_type = "application/xml", body = String),
        (status = 401, description = "No or unknown token", body = ErrorBody)))]
pub(crate) async fn get_map_bpmn(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(workflow_type): PathArgs<String>,
    QueryArgs(params): QueryArgs<MapParams>,
) -> Result<Response, ApiError> {
    let name = file_name(&workflow_type, "bpmn");
    let map = mine(&state, &actor, workflow_type, params).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/xml; charset=utf-8".to_owned(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bpmn::to_xml(&map),
    )
        .into_response())
}

/// The process map drawn as SVG (steps, transitions sized by share, bottlenecks in red).
#[utoipa::path(get, path = "/api/v1/types/{workflow_type}/map.svg", tag = "maps",
    params(("workflow_type" = String, Path, description = "The workflow type"), MapParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An SVG document", content_type = "image/svg+xml", body = String),
        (status = 401, description = "No or unknown token", body = ErrorBody)))]
pub(crate) async fn get_map_svg(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(workflow_type): PathArgs<String>,
    QueryArgs(params): QueryArgs<MapParams>,
) -> Result<Response, ApiError> {
    let name = file_name(&workflow_type, "svg");
    let map = mine(&state, &actor, workflow_type, params).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "image/svg+xml; charset=utf-8".to_owned(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{name}\""),
            ),
        ],
        svg::to_svg(&map),
    )
        .into_response())
}
