//! Batch actions by query: cancel, terminate or signal every running instance a filter
//! selects, with a dry run that counts first, progress while it runs, and a record of
//! who did what.
//!
//! The record is the histories themselves: each action is an ordinary cancel, terminate
//! or signal of the caller, checked by the policy instance by instance and recorded with
//! the caller as its actor, and its reason names the batch (`batch <id>: <reason>`); the
//! batch's summary is logged (`tracing`, target `cairn::audit`) when it starts and ends
//! and kept in memory for `GET /api/v1/batches/{id}` until the host stops.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use cairn_runtime::policy::Action;
use cairn_runtime::{Error, ListFilter, StatusKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::{parse_attribute, parse_waiting, Body, PathArgs, WaitingOn};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// Instances one batch acts on at most.
pub const BATCH_INSTANCES_MAX: u64 = 100_000;
/// Batches the host remembers (the oldest finished ones are forgotten first).
pub const BATCHES_KEPT: usize = 100;
/// Batches one caller may have running at once; more are refused (429) until one ends.
pub const BATCHES_RUNNING_PER_CALLER: usize = 4;
/// Instance rows one batch (or dry run) examines at most, whether the caller may act on
/// them or not; a batch that reaches it stops and says so in its errors.
pub const BATCH_EXAMINED_MAX: usize = 1_000_000;

/// What a batch does to each instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BatchAction {
    /// Request cancellation (the workflow sees it at its next wait).
    Cancel,
    /// Terminate at once.
    Terminate,
    /// Send a signal.
    Signal,
}

/// Which instances: the running ones (parked included) that match every given filter.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchFilter {
    /// Only this workflow type.
    #[serde(default)]
    workflow_type: Option<String>,
    /// Only instances started at or after this time (ms since the Unix epoch).
    #[serde(default)]
    created_from_ms: Option<u64>,
    /// Only instances started before this time.
    #[serde(default)]
    created_until_ms: Option<u64>,
    /// Only instances with this attribute value: `name:json` (`stage:"review"`).
    #[serde(default)]
    attribute: Option<String>,
    /// Only instances whose id contains this text.
    #[serde(default)]
    id_contains: Option<String>,
    /// Only parked instances.
    #[serde(default)]
    parked_only: bool,
    /// Only instances waiting on one of these, comma-separated, as the instance list's
    /// `waiting` filter (`person`, `overdue`, `timer`, `signal`, `child`, `retrying`).
    #[serde(default)]
    waiting: Option<String>,
}

/// A batch to count or run.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    /// What to do.
    action: BatchAction,
    /// To which instances.
    #[serde(default)]
    filter: BatchFilter,
    /// Why (recorded in each history, after the batch's id).
    reason: String,
    /// The signal's name (`signal` only).
    #[serde(default)]
    signal: Option<String>,
    /// The signal's body (`signal` only; checked against its declared type).
    #[serde(default)]
    body: Option<Value>,
    /// Only count the instances it would act on; change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// A batch: what it does, to how many, and how far it got.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub(crate) struct BatchView {
    /// Its id (named in every reason it recorded); none for a dry run.
    id: Option<String>,
    /// What it does.
    action: BatchAction,
    /// To which instances.
    filter: BatchFilter,
    /// Why.
    reason: String,
    /// The signal's name, for a signal batch.
    signal: Option<String>,
    /// Who ran it.
    actor: String,
    /// Whether it only counted.
    dry_run: bool,
    /// Running instances the filter selected that the caller may act on (for a batch
    /// still running: so far).
    matched: u64,
    /// Acted on.
    done: u64,
    /// Ended before the batch reached them, or refused by the policy.
    skipped: u64,
    /// Failed for another reason (see `errors`).
    failed: u64,
    /// Up to ten failures: instance and error.
    errors: Vec<String>,
    /// Whether it has finished.
    finished: bool,
    /// When it started (ms since the Unix epoch).
    started_at_ms: u64,
    /// When it finished.
    finished_at_ms: Option<u64>,
}

/// The batches a host remembers.
#[derive(Default)]
pub(crate) struct Batches {
    kept: Mutex<VecDeque<Arc<Mutex<BatchView>>>>,
}

impl Batches {
    /// Keeps `batch`, unless its caller already runs [`BATCHES_RUNNING_PER_CALLER`]
    /// batches or the host keeps [`BATCHES_KEPT`] running ones.
    fn remember(&self, batch: Arc<Mutex<BatchView>>, actor: &str) -> Result<(), ApiError> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let running: Vec<String> = kept
            .iter()
            .filter_map(|b| {
                let b = b.lock().unwrap_or_else(|e| e.into_inner());
                (!b.finished).then(|| b.actor.clone())
            })
            .collect();
        let mine = running.iter().filter(|by| by.as_str() == actor).count();
        if mine >= BATCHES_RUNNING_PER_CALLER || running.len() >= BATCHES_KEPT {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "batches_running",
                format!(
                    "{} batches are running ({mine} of them yours; at most \
                     {BATCHES_RUNNING_PER_CALLER} per caller): start this one when one has finished",
                    running.len()
                ),
            ));
        }
        if kept.len() >= BATCHES_KEPT {
            // Forget the oldest finished one; a running one is never forgotten.
            if let Some(at) = kept
                .iter()
                .position(|b| b.lock().map(|b| b.finished).unwrap_or(true))
            {
                kept.remove(at);
            }
        }
        kept.push_back(batch);
        Ok(())
    }

    fn find(&self, id: &str, seen: impl Fn(&BatchView) -> bool) -> Option<BatchView> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().find_map(|b| {
            let b = b.lock().unwrap_or_else(|e| e.into_inner());
            (b.id.as_deref() == Some(id) && seen(&b)).then(|| b.clone())
        })
    }

    fn all(&self, seen: impl Fn(&BatchView) -> bool) -> Vec<BatchView> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .rev()
            .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .filter(|b| seen(b))
            .collect()
    }
}

/// Whether `actor` may see `batch`: they ran it, or it names a workflow type they may
/// read whole (its filter, reason and errors name instances of that type).
fn seen_by(
    engine: &cairn_runtime::Engine,
    actor: &cairn_runtime::task::Actor,
    batch: &BatchView,
) -> bool {
    batch.actor == actor.id
        || batch.filter.workflow_type.as_deref().is_some_and(|t| {
            !t.is_empty()
                && engine
                    .authorize(
                        actor,
                        &Action::Read {
                            instance: "*",
                            workflow_type: t,
                        },
                    )
                    .is_ok()
        })
}

impl BatchFilter {
    fn list_filter(&self) -> Result<ListFilter, ApiError> {
        Ok(ListFilter {
            workflow_type: self.workflow_type.clone().filter(|t| !t.is_empty()),
            statuses: if self.parked_only {
                vec![StatusKind::Parked]
            } else {
                vec![StatusKind::Running, StatusKind::Parked]
            },
            created_from_ms: self.created_from_ms,
            created_until_ms: self.created_until_ms,
            attributes: self
                .attribute
                .as_deref()
                .filter(|a| !a.is_empty())
                .map(parse_attribute)
                .transpose()?
                .into_iter()
                .collect(),
            id_contains: self.id_contains.clone().filter(|part| !part.is_empty()),
            limit: Some(1000),
        })
    }
}

/// Why a batch stopped before the end of what its filter selects.
fn examined_too_many(examined: usize) -> String {
    format!(
        "stopped after examining {examined} instances (at most {BATCH_EXAMINED_MAX} per \
         batch): narrow the filter by type or start time, and run it again for the rest"
    )
}

/// Whether instance `id` waits on one of `wanted` (always, when nothing is wanted).
async fn waits_on(
    engine: &cairn_runtime::Engine,
    actor: &cairn_runtime::task::Actor,
    id: &str,
    wanted: &[WaitingOn],
) -> bool {
    if wanted.is_empty() {
        return true;
    }
    match engine.history_as(actor, id).await {
        Ok(events) => {
            let waits = cairn_insight::waits::waits(&events, engine.now_ms());
            wanted.iter().any(|w| w.holds(&waits))
        }
        Err(_) => false,
    }
}

/// The policy's question for acting on one instance.
fn action_on<'a>(
    action: BatchAction,
    signal: &'a str,
    instance: &'a str,
    workflow_type: &'a str,
) -> Action<'a> {
    match action {
        BatchAction::Cancel => Action::Cancel {
            instance,
            workflow_type,
        },
        BatchAction::Terminate => Action::Terminate {
            instance,
            workflow_type,
        },
        BatchAction::Signal => Action::Signal {
            instance,
            workflow_type,
            signal,
        },
    }
}

fn now_ms(state: &AppState) -> u64 {
    state.engine.now_ms()
}

/// Counts (dry run) or starts a batch action over the running instances a filter
/// selects. A started batch runs in the host, whether or not the caller waits; follow
/// it with `GET /api/v1/batches/{id}`. Each instance's action is checked by the policy
/// and recorded with the caller as its actor and `batch <id>: <reason>` as its reason.
#[utoipa::path(post, path = "/api/v1/batches", tag = "batches",
    request_body = BatchRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "Dry run: how many instances it would act on", body = BatchView),
        (status = 202, description = "Started", body = BatchView),
        (status = 422, description = "No reason, a signal batch without a signal, or a body its type refuses", body = ErrorBody),
        (status = 429, description = "The caller already runs the most batches one caller may run at once", body = ErrorBody)))]
pub(crate) async fn start_batch(
    State(state): Shared,
    Caller(actor): Caller,
    Body(request): Body<BatchRequest>,
) -> Result<(StatusCode, Json<BatchView>), ApiError> {
    let invalid = |message: &str| ApiError::from(Error::InvalidArgument(message.to_owned()));
    if request.reason.trim().is_empty() {
        return Err(invalid(
            "a batch needs a reason: it is recorded in every history it changes",
        ));
    }
    // Recorded after `batch <id>: ` (a UUID) in each history.
    let reason_max = cairn_runtime::REASON_BYTES_MAX - 64;
    if request.reason.len() > reason_max {
        return Err(invalid(&format!(
            "a batch's reason must be at most {reason_max} bytes, got {}",
            request.reason.len()
        )));
    }
    let filter = request.filter.list_filter()?;
    let wanted = match request.filter.waiting.as_deref().filter(|w| !w.is_empty()) {
        Some(waiting) => parse_waiting(waiting)?,
        None => Vec::new(),
    };
    let (signal, payload) = match (request.action, &request.signal) {
        (BatchAction::Signal, Some(name)) => {
            state.engine.check_signal_name(name)?;
            let body = request.body.clone().unwrap_or(Value::Null);
            (name.clone(), Some(state.catalog.signal_body(name, body)?))
        }
        (BatchAction::Signal, None) => {
            return Err(invalid("a signal batch needs `signal`, the signal's name"))
        }
        (_, Some(_)) => return Err(invalid("`signal` is for signal batches only")),
        (_, None) => (String::new(), None),
    };
    let mut view = BatchView {
        id: None,
        action: request.action,
        filter: request.filter.clone(),
        reason: request.reason.clone(),
        signal: (request.action == BatchAction::Signal).then(|| signal.clone()),
        actor: actor.id.clone(),
        dry_run: request.dry_run,
        matched: 0,
        done: 0,
        skipped: 0,
        failed: 0,
        errors: Vec::new(),
        finished: false,
        started_at_ms: now_ms(&state),
        finished_at_ms: None,
    };
    if request.dry_run {
        let mut after = None;
        let mut examined = 0usize;
        'pages: loop {
            let page = state.engine.list_page(&filter, after).await?;
            examined += page.examined;
            for info in page.rows {
                let asked = action_on(request.action, &signal, &info.id, &info.workflow_type);
                if state.engine.authorize(&actor, &asked).is_ok()
                    && waits_on(&state.engine, &actor, &info.id, &wanted).await
                {
                    view.matched += 1;
                    if view.matched >= BATCH_INSTANCES_MAX {
                        break 'pages;
                    }
                }
            }
            match page.next {
                Some(_) if examined >= BATCH_EXAMINED_MAX => {
                    view.errors.push(examined_too_many(examined));
                    break;
                }
                Some(cursor) => after = Some(cursor),
                None => break,
            }
        }
        view.finished = true;
        view.finished_at_ms = Some(now_ms(&state));
        return Ok((StatusCode::OK, Json(view)));
    }

    let id = uuid::Uuid::now_v7().to_string();
    view.id = Some(id.clone());
    tracing::info!(
        target: "cairn::audit",
        batch = %id,
        actor = %actor.id,
        action = ?request.action,
        filter = %serde_json::to_string(&request.filter).unwrap_or_default(),
        reason = %request.reason,
        "batch started"
    );
    let shared = Arc::new(Mutex::new(view.clone()));
    state.batches.remember(shared.clone(), &actor.id)?;
    let engine = state.engine.clone();
    let reason = format!("batch {id}: {}", request.reason);
    let action = request.action;
    tokio::spawn(async move {
        let record = |f: &dyn Fn(&mut BatchView)| {
            let mut view = shared.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut view);
        };
        let mut after = None;
        let mut acted = 0u64;
        let mut examined = 0usize;
        'pages: loop {
            let page = match engine.list_page(&filter, after).await {
                Ok(page) => page,
                Err(err) => {
                    record(&|v| {
                        v.failed += 1;
                        v.errors.push(format!("listing: {err}"));
                    });
                    break;
                }
            };
            examined += page.examined;
            for info in page.rows {
                let asked = action_on(action, &signal, &info.id, &info.workflow_type);
                if engine.authorize(&actor, &asked).is_err()
                    || !waits_on(&engine, &actor, &info.id, &wanted).await
                {
                    continue;
                }
                acted += 1;
                if acted > BATCH_INSTANCES_MAX {
                    break 'pages;
                }
                let outcome = match (action, &payload) {
                    (BatchAction::Cancel, _) => engine.cancel_as(&actor, &info.id, &reason).await,
                    (BatchAction::Terminate, _) => {
                        engine.terminate_as(&actor, &info.id, &reason).await
                    }
                    (BatchAction::Signal, Some(payload)) => {
                        engine
                            .signal_as(&actor, &info.id, &signal, payload.clone())
                            .await
                    }
                    (BatchAction::Signal, None) => Ok(()),
                };
                record(&|v| {
                    v.matched += 1;
                    match &outcome {
                        Ok(()) => v.done += 1,
                        // Ended or gone since it was listed, or no longer the caller's.
                        Err(
                            Error::InstanceFinished(_)
                            | Error::Terminated { .. }
                            | Error::InstanceNotFound(_)
                            | Error::Forbidden { .. },
                        ) => v.skipped += 1,
                        Err(err) => {
                            v.failed += 1;
                            if v.errors.len() < 10 {
                                v.errors.push(format!("{}: {err}", info.id));
                            }
                        }
                    }
                });
                if matches!(outcome, Err(Error::ShutDown)) {
                    break 'pages;
                }
            }
            match page.next {
                Some(_) if examined >= BATCH_EXAMINED_MAX => {
                    record(&|v| v.errors.push(examined_too_many(examined)));
                    break;
                }
                Some(cursor) => after = Some(cursor),
                None => break,
            }
        }
        let finished_at = engine.now_ms();
        record(&|v| {
            v.finished = true;
            v.finished_at_ms = Some(finished_at);
        });
        let view = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
        tracing::info!(
            target: "cairn::audit",
            batch = %id,
            actor = %view.actor,
            matched = view.matched,
            done = view.done,
            skipped = view.skipped,
            failed = view.failed,
            "batch finished"
        );
    });
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// One batch and how far it got (as the list, only a batch the caller ran or may read
/// whole).
#[utoipa::path(get, path = "/api/v1/batches/{id}", tag = "batches",
    params(("id" = String, Path, description = "The batch's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The batch", body = BatchView),
        (status = 404, description = "No such batch on this host (batches are kept until the host stops)", body = ErrorBody)))]
pub(crate) async fn get_batch(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<Json<BatchView>, ApiError> {
    let seen = |b: &BatchView| seen_by(&state.engine, &actor, b);
    // Another caller's batch is as absent as one never run: its id tells nothing.
    state.batches.find(&id, seen).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "batch_not_found",
            "no such batch on this host (batches are kept until the host stops)",
        )
    })
}

/// The batches this host ran since it started that the caller ran, or that name a
/// workflow type the caller may read whole, newest first.
#[utoipa::path(get, path = "/api/v1/batches", tag = "batches",
    security(("bearer" = [])),
    responses((status = 200, description = "The batches", body = [BatchView])))]
pub(crate) async fn list_batches(
    State(state): Shared,
    Caller(actor): Caller,
) -> Json<Vec<BatchView>> {
    Json(state.batches.all(|b| seen_by(&state.engine, &actor, b)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn running(actor: &str) -> Arc<Mutex<BatchView>> {
        Arc::new(Mutex::new(BatchView {
            id: Some(format!("{actor}-batch")),
            action: BatchAction::Cancel,
            filter: BatchFilter::default(),
            reason: "x".into(),
            signal: None,
            actor: actor.into(),
            dry_run: false,
            matched: 0,
            done: 0,
            skipped: 0,
            failed: 0,
            errors: Vec::new(),
            finished: false,
            started_at_ms: 0,
            finished_at_ms: None,
        }))
    }

    #[test]
    fn a_caller_runs_a_bounded_number_of_batches_at_once() {
        let batches = Batches::default();
        for _ in 0..BATCHES_RUNNING_PER_CALLER {
            batches.remember(running("olga"), "olga").unwrap();
        }
        let refused = batches.remember(running("olga"), "olga").unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.body.code, "batches_running");
        // Another caller is not held up by olga's, and once one of hers ends she may
        // start another.
        batches.remember(running("ada"), "ada").unwrap();
        let first = batches.kept.lock().unwrap()[0].clone();
        first.lock().unwrap().finished = true;
        batches.remember(running("olga"), "olga").unwrap();
    }
}
