//! Saved views: a name for a filtered instance list (the list's query, as kept in the
//! dashboard's address), kept by the host and shared with roles.
//!
//! A view belongs to whoever saved it and is visible to them and to the roles it is
//! shared with (only roles its owner holds). On a store shared by several hosts
//! (PostgreSQL) views are kept in the store, so every host shows the same ones: each
//! change is written at the version it read, and made again on what another host wrote
//! meanwhile. On a store of one host (redb) they are kept in memory and, when the host
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
use cairn_runtime::journal::Journal;

type Shared = State<Arc<AppState>>;

/// Views a host keeps at most.
pub const VIEWS_MAX: usize = 500;
/// Views one owner keeps at most, so that one caller cannot take the others' room.
pub const VIEWS_PER_OWNER_MAX: usize = 50;
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

/// The views a host keeps, and the file they go to (a store of one host).
#[derive(Default)]
pub(crate) struct Views {
    state: Mutex<(Option<PathBuf>, Vec<SavedView>)>,
    /// Held through a change to views kept in the store: this host's changes wait for
    /// each other instead of racing, so only other hosts' changes make one try again.
    writing: tokio::sync::Mutex<()>,
}

/// Name of the shared value the views are kept in on a shared store.
const SHARED_VIEWS: &str = "dashboard.views";

/// Times a change is tried when other hosts keep changing the views under it.
const SHARED_TRIES: usize = 16;

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

    /// The views as the store keeps them, with their version; `None` when the store
    /// keeps none (this host does).
    async fn shared(journal: &dyn Journal) -> Result<Option<(u64, Vec<SavedView>)>, ApiError> {
        let Some((version, bytes)) = journal.shared_value(SHARED_VIEWS).await? else {
            return Ok(None);
        };
        if bytes.is_empty() {
            return Ok(Some((version, Vec::new())));
        }
        let views = serde_json::from_slice(&bytes).map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "views_unreadable",
                format!("the saved views in the store cannot be read: {err}"),
            )
        })?;
        Ok(Some((version, views)))
    }

    /// Applies `change`: in the store when it keeps the views (again on what another
    /// host wrote meanwhile), otherwise here and in the file; a change that cannot be
    /// written is undone.
    async fn change(
        &self,
        journal: &dyn Journal,
        change: impl Fn(&mut Vec<SavedView>) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let _writing = self.writing.lock().await;
        for tried in 0..SHARED_TRIES {
            if tried > 0 {
                // Another host changed them meanwhile: let it finish, at a jittered pace
                // so that hosts retrying together do not collide again.
                let jitter = uuid::Uuid::new_v4().as_u128() % 20;
                let pause = 5 * tried as u128 + jitter;
                tokio::time::sleep(std::time::Duration::from_millis(
                    u64::try_from(pause).unwrap_or(u64::MAX),
                ))
                .await;
            }
            let Some((version, mut views)) = Self::shared(journal).await? else {
                return self.change_here(change);
            };
            change(&mut views)?;
            let bytes = serde_json::to_vec(&views).map_err(|err| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "views_not_saved",
                    err.to_string(),
                )
            })?;
            if journal
                .put_shared_value(SHARED_VIEWS, bytes, version)
                .await?
            {
                return Ok(());
            }
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "views_busy",
            "other hosts kept changing the saved views; try again",
        ))
    }

    fn change_here(
        &self,
        change: impl Fn(&mut Vec<SavedView>) -> Result<(), ApiError>,
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

    async fn visible_to(
        &self,
        journal: &dyn Journal,
        actor: &cairn_runtime::task::Actor,
    ) -> Result<Vec<SavedView>, ApiError> {
        let views = match Self::shared(journal).await? {
            Some((_, views)) => views,
            None => self
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .1
                .clone(),
        };
        Ok(views
            .into_iter()
            .filter(|v| v.owner == actor.id || v.roles.iter().any(|r| actor.has_role(r)))
            .collect())
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
) -> Result<Json<Vec<SavedView>>, ApiError> {
    let journal = state.engine.journal().clone();
    Ok(Json(
        state.views.visible_to(journal.as_ref(), &actor).await?,
    ))
}

/// Saves a view of the instance list, shared with some of the caller's roles.
#[utoipa::path(post, path = "/api/v1/views", tag = "views", request_body = NewView,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Saved", body = SavedView),
        (status = 409, description = "Other hosts kept changing the views meanwhile: try again", body = ErrorBody),
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
    // Each role once: the roles are the caller's own, so the list stays short.
    let mut roles = new.roles;
    roles.sort_unstable();
    roles.dedup();
    let view = SavedView {
        id: uuid::Uuid::now_v7().to_string(),
        name,
        query: new.query.trim_start_matches('?').to_owned(),
        roles,
        owner: actor.id.clone(),
        created_at_ms: state.engine.now_ms(),
    };
    let journal = state.engine.journal().clone();
    state
        .views
        .change(journal.as_ref(), |views| {
            if views.iter().filter(|v| v.owner == view.owner).count() >= VIEWS_PER_OWNER_MAX {
                return Err(unprocessable(&format!(
                    "at most {VIEWS_PER_OWNER_MAX} views are kept per owner; delete some of \
                     yours first"
                )));
            }
            if views.len() >= VIEWS_MAX {
                return Err(unprocessable(&format!(
                    "at most {VIEWS_MAX} views are kept; delete some first"
                )));
            }
            views.push(view.clone());
            Ok(())
        })
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Deletes a view (its owner only).
#[utoipa::path(delete, path = "/api/v1/views/{id}", tag = "views",
    params(("id" = String, Path, description = "The view's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not the view's owner", body = ErrorBody),
        (status = 404, description = "No such view visible to the caller", body = ErrorBody),
        (status = 409, description = "Other hosts kept changing the views meanwhile: try again", body = ErrorBody)))]
pub(crate) async fn delete_view(
    State(state): Shared,
    Caller(actor): Caller,
    PathArgs(id): PathArgs<String>,
) -> Result<StatusCode, ApiError> {
    let journal = state.engine.journal().clone();
    state
        .views
        .change(journal.as_ref(), |views| {
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
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
