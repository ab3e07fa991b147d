//! Process insight over HTTP, from the recorded histories of one workflow type: process
//! maps (JSON, BPMN 2.0 XML with its diagram, SVG) and reports (JSON, CSV).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_insight::report::Report;
use cairn_insight::{bpmn, svg, ProcessMap};
use cairn_runtime::journal::StoredEvent;
use cairn_runtime::{Error, ListFilter};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

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

/// Instance rows a map or report examines at most per run it may return.
const INSIGHT_EXAMINED_PER_RUN: usize = 4;

/// Events a map or report holds in memory at most: the runs it reads are capped by
/// number, and this caps them by size (a type of long histories stops sooner).
pub const INSIGHT_EVENTS_MAX: usize = 2_000_000;

/// The histories of the runs of `workflow_type` started in the range that the caller
/// may read, the first `limit` of them (examining at most four rows per run it may
/// return, holding at most [`INSIGHT_EVENTS_MAX`] events); and whether more were left
/// unread.
async fn histories(
    state: &AppState,
    actor: &cairn_runtime::task::Actor,
    workflow_type: &str,
    created_from_ms: Option<u64>,
    created_until_ms: Option<u64>,
    limit: usize,
) -> Result<(Vec<Vec<StoredEvent>>, bool), ApiError> {
    let filter = ListFilter {
        workflow_type: Some(workflow_type.to_owned()),
        created_from_ms,
        created_until_ms,
        limit: Some(1000),
        ..ListFilter::default()
    };
    let mut histories: Vec<Vec<StoredEvent>> = Vec::new();
    let mut after = None;
    // The rows the caller may not read count too: a caller who may read few runs of a
    // large type must not make one request examine them all.
    let examined_max = limit.saturating_mul(INSIGHT_EXAMINED_PER_RUN);
    let mut examined = 0usize;
    let mut events = 0usize;
    loop {
        let page = state.engine.list_page_as(actor, &filter, after).await?;
        examined += page.examined;
        for info in page.rows {
            if histories.len() >= limit || events >= INSIGHT_EVENTS_MAX {
                return Ok((histories, true));
            }
            match state.engine.history_as(actor, &info.id).await {
                Ok(history) => {
                    events += history.len();
                    histories.push(history);
                }
                // Listed, then gone or unreadable to this caller: not part of the result.
                Err(Error::InstanceNotFound(_) | Error::Forbidden { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        match page.next {
            Some(_) if examined >= examined_max => return Ok((histories, true)),
            Some(cursor) => after = Some(cursor),
            None => return Ok((histories, false)),
        }
    }
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
    let (read, _) = histories(
        state,
        actor,
        &workflow_type,
        params.created_from_ms,
        params.created_until_ms,
        limit,
    )
    .await?;
    Ok(ProcessMap::mine(
        &workflow_type,
        read.iter().map(Vec::as_slice),
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

/// Runs a report reads at most (each is one history read); a period with more is
/// reported on its first runs and marked `truncated`.
pub const REPORT_RUNS_MAX: usize = 50_000;

/// How long a report's periods are.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BucketSize {
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

/// Which CSV table to download.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CsvTable {
    /// One row per period.
    #[default]
    Periods,
    /// One row per failure reason.
    Failures,
}

/// Which runs a report covers, and how it cuts the period.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReportParams {
    /// Start of the period (ms since the Unix epoch; default: seven days before its end).
    created_from_ms: Option<u64>,
    /// End of the period, exclusive (default: now).
    created_until_ms: Option<u64>,
    /// `hour` or `day` (default: `day` for periods over two days, else `hour`).
    #[param(inline)]
    bucket: Option<BucketSize>,
    /// CSV only: `periods` (default) or `failures`.
    #[param(inline)]
    table: Option<CsvTable>,
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

async fn report(
    state: &AppState,
    actor: &cairn_runtime::task::Actor,
    workflow_type: String,
    params: &ReportParams,
) -> Result<Report, ApiError> {
    let until = params
        .created_until_ms
        .unwrap_or_else(|| state.engine.now_ms());
    let from = params
        .created_from_ms
        .unwrap_or_else(|| until.saturating_sub(7 * DAY_MS));
    if from >= until {
        return Err(Error::InvalidArgument(
            "a report's period must end after it starts (created_from_ms < created_until_ms)"
                .to_owned(),
        )
        .into());
    }
    let bucket = match params.bucket {
        Some(BucketSize::Hour) => HOUR_MS,
        Some(BucketSize::Day) => DAY_MS,
        None if until - from > 2 * DAY_MS => DAY_MS,
        None => HOUR_MS,
    };
    // Whole periods: a day report starts at midnight UTC, an hour report on the hour.
    let from = from - from % bucket;
    let (read, truncated) = histories(
        state,
        actor,
        &workflow_type,
        Some(from),
        Some(until),
        REPORT_RUNS_MAX,
    )
    .await?;
    let mut report = Report::build(
        &workflow_type,
        from,
        until,
        bucket,
        read.iter().map(Vec::as_slice),
    );
    report.truncated = truncated;
    Ok(report)
}

/// A report of a workflow type over a period: per hour or day, runs started and how
/// they ended, durations (median, p95), human tasks, overdue tasks, escalations and
/// retried attempts; and why runs failed.
#[utoipa::path(get, path = "/api/v1/types/{workflow_type}/report", tag = "maps",
    params(("workflow_type" = String, Path, description = "The workflow type"), ReportParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The report", body = Report),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 422, description = "The period ends before it starts", body = ErrorBody)))]
pub(crate) async fn get_report(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(workflow_type): PathArgs<String>,
    QueryArgs(params): QueryArgs<ReportParams>,
) -> Result<Json<Report>, ApiError> {
    Ok(Json(report(&state, &actor, workflow_type, &params).await?))
}

/// The report as CSV for spreadsheets: one row per period (`table=periods`, times in
/// UTC, durations in seconds) or per failure reason (`table=failures`).
#[utoipa::path(get, path = "/api/v1/types/{workflow_type}/report.csv", tag = "maps",
    params(("workflow_type" = String, Path, description = "The workflow type"), ReportParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "CSV with a header row", content_type = "text/csv", body = String),
        (status = 401, description = "No or unknown token", body = ErrorBody),
        (status = 422, description = "The period ends before it starts", body = ErrorBody)))]
pub(crate) async fn get_report_csv(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(workflow_type): PathArgs<String>,
    QueryArgs(params): QueryArgs<ReportParams>,
) -> Result<Response, ApiError> {
    let table = params.table.unwrap_or_default();
    let name = file_name(
        &format!(
            "{workflow_type}-{}",
            match table {
                CsvTable::Periods => "report",
                CsvTable::Failures => "failures",
            }
        ),
        "csv",
    );
    let report = report(&state, &actor, workflow_type, &params).await?;
    let text = match table {
        CsvTable::Periods => report.buckets_csv(),
        CsvTable::Failures => report.reasons_csv(),
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        text,
    )
        .into_response())
}
