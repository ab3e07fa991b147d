//! Saved views: a name for a filtered instance list (the list's query, as kept in the
//! dashboard's address), kept by the host and shared with roles.
//!
//! A view belongs to whoever saved it and is visible to them and to the roles it is
//! shared with (only roles its owner holds). Views are kept in memory and, when the host
//! names a file (`Server::views_file`), written to it on every change (a new file, then
//! renamed over the old one), so they survive restarts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{Body, PathArgs};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// Views a host keeps at most.
pub const VIEWS_MAX: usize = 500;
/// Longest view name, in characters.
pub const VIEW_NAME_CHARS_MAX: usize = 80;
/// Longest view query, in bytes.
pub const VIEW_QUERY_BYTES_MAX: usize = 1000;

/// The instance list's filters a view may hold.
const VIEW_KEYS: [&str; 5] = ["workflow_type", "status", "attribute", "id", "waiting"];

/// A saved view.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct SavedView {
    /// Its id.
    id: String,
    /// Its name.
    name: String,
    /// The instance list's query (`workflow_type=expense&waiting=overdue`).
    query: String,
    /// Roles it is shared with (empty: its owner only).
    roles: Vec<String>,
    /// Who saved it.
    owner: String,
    /// When (ms since the Unix epoch).
    created_at_ms: u64,
}

/// A view to save.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewView {
    /// Its name (1 to 80 characters).
    name: String,
    /// The instance list's query: `workflow_type`, `status`, `attribute`, `id`, `waiting`.
    query: String,
    /// Roles to share it with, among the caller's own.
    #[serde(default)]
    roles: Vec<String>,
}

/// The views a host keeps, and the file they go to.
#[derive(Default)]
pub(crate) struct Views {
    state: Mutex<(Option<PathBuf>, Vec<SavedView>)>,
}

impl Views {
    /// Keeps views in `path` from now on, starting with the ones it holds.
    pub(crate) fn use_file(&self, path: &Path) -> Result<(), String> {
        let views: Vec<SavedView> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
                format!(
                    "`{}` is not a file of saved views: {err}; move it aside to start afresh",
                    path.display()
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(format!("cannot read `{}`: {err}", path.display())),
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = (Some(path.to_owned()), views);
        Ok(())
    }

    /// Applies `change` and writes the file; a change that cannot be written is undone.
    fn change(
        &self,
        change: impl FnOnce(&mut Vec<SavedView>) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = state.1.clone();
        change(&mut state.1)?;
        if let Some(path) = state.0.clone() {
            if let Err(err) = write_atomically(&path, &state.1) {
                state.1 = before;
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "views_not_saved",
                    format!(
                        "the views file `{}` cannot be written: {err}",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn visible_to(&self, actor: &cairn_runtime::task::Actor) -> Vec<SavedView> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .1
            .iter()
            .filter(|v| v.owner == actor.id || v.roles.iter().any(|r| actor.has_role(r)))
            .cloned()
            .collect()
    }
}

fn write_atomically(path: &Path, views: &[SavedView]) -> std::io::Result<()> {
    use std::io::Write as _;
    let bytes = serde_json::to_vec_pretty(views).map_err(std::io::Error::other)?;
    let fresh = path.with_extension("tmp");
    let mut file = std::fs::File::create(&fresh)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&fresh, path)
}

fn unprocessable(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_view", message)
}

/// Checks a view's query: `key=value` pairs of the list's filters, each key once.
fn check_query(query: &str) -> Result<(), ApiError> {
    if query.len() > VIEW_QUERY_BYTES_MAX {
        return Err(unprocessable(&format!(
            "a view's query is at most {VIEW_QUERY_BYTES_MAX} bytes"
        )));
    }
    let mut seen = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if !VIEW_KEYS.contains(&key) {
            return Err(unprocessable(&format!(
                "`{key}` is not a filter of the instance list: use {}",
                VIEW_KEYS.join(", ")
            )));
        }
        if seen.contains(&key) {
            return Err(unprocessable(&format!("`{key}` is given twice")));
        }
        seen.push(key);
    }
    Ok(())
}

/// The saved views the caller may use: their own and those shared with their roles.
#[utoipa::path(get, path = "/api/v1/views", tag = "views", security(("bearer" = [])),
    responses(
        (status = 200, description = "The views", body = [SavedView]),
        (status = 401, description = "No or unknown token", body = ErrorBody)))]
pub(crate) async fn list_views(
    State(state): Shared,
    Caller(actor): Caller,
) -> Json<Vec<SavedView>> {
    Json(state.views.visible_to(&actor))
}

/// Saves a view of the instance list, shared with some of the caller's roles.
#[utoipa::path(post, path = "/api/v1/views", tag = "views", request_body = NewView,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Saved", body = SavedView),
        (status = 422, description = "A bad name or query, a role the caller does not hold, or too many views", body = ErrorBody)))]
pub(crate) async fn create_view(
    State(state): Shared,
    Caller(actor): Caller,
    Body(new): Body<NewView>,
) -> Result<(StatusCode, Json<SavedView>), ApiError> {
    let name = new.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > VIEW_NAME_CHARS_MAX {
        return Err(unprocessable(&format!(
            "a view's name is 1 to {VIEW_NAME_CHARS_MAX} characters"
        )));
    }
    check_query(&new.query)?;
    if let Some(role) = new.roles.iter().find(|r| !actor.has_role(r)) {
        return Err(unprocessable(&format!(
            "`{role}` is not one of your roles: a view is shared only with roles you hold"
        )));
    }
    let view = SavedView {
        id: uuid::Uuid::now_v7().to_string(),
        name,
        query: new.query.trim_start_matches('?').to_owned(),
        roles: new.roles,
        owner: actor.id.clone(),
        created_at_ms: state.engine.now_ms(),
    };
    let saved = view.clone();
    state.views.change(move |views| {
        if views.len() >= VIEWS_MAX {
            return Err(unprocessable(&format!(
                "this host keeps at most {VIEWS_MAX} views; delete some first"
            )));
        }
        views.push(saved);
        Ok(())
    })?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Deletes a view (its owner only).
#[utoipa::path(delete, path = "/api/v1/views/{id}", tag = "views",
    params(("id" = String, Path, description = "The view's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not the view's owner", body = ErrorBody),
        (status = 404, description = "No such view visible to the caller", body = ErrorBody)))]
pub(crate) async fn delete_view(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<StatusCode, ApiError> {
    state.views.change(|views| {
        let Some(at) = views.iter().position(|v| {
            v.id == id && (v.owner == actor.id || v.roles.iter().any(|r| actor.has_role(r)))
        }) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "view_not_found",
                "no such view visible to you",
            ));
        };
        if views[at].owner != actor.id {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_the_owner",
                "only the view's owner may delete it",
            ));
        }
        views.remove(at);
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
