//! Cairn's HTTP API, served in-process by the host that owns the database: JSON over
//! HTTP (axum), bearer tokens mapped to actors, every call checked by the runtime's
//! policy and recorded with its actor, and an OpenAPI document generated from the same
//! route list the router is built from (served at [`OPENAPI_PATH`]).
//!
//! Users reach it through `cairn` (feature `server`): `Runtime::http_server(tokens)`.
//! This crate works on the untyped [`Engine`]; the typed SDK hands it a [`Catalog`] that
//! checks JSON bodies against the declared Rust types before anything is recorded.
//!
//! Refusals are JSON `{ "code", "message" }` with a 4xx status: no token (401), the
//! policy's denial (403), unknown ids (404), a closed task or ended instance (409), bad
//! JSON (400), a body over [`BODY_BYTES_MAX`] (413), a body that is not JSON (415), a
//! body that does not fit the type (422). Only a store failure is a 5xx.

#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use cairn_runtime::codec::Payload;
use cairn_runtime::{Engine, Error};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod api;
mod auth;
mod batches;
mod dashboard;
mod documents;
mod error;
mod insight;
mod jwt;
mod schedules;
mod views;
pub use batches::{
    BATCHES_KEPT, BATCHES_RUNNING_PER_CALLER, BATCH_EXAMINED_MAX, BATCH_INSTANCES_MAX,
};
pub use insight::{INSIGHT_EVENTS_MAX, MAP_RUNS_DEFAULT, MAP_RUNS_MAX, REPORT_RUNS_MAX};
pub use jwt::{Jwt, JWT_SECRET_BYTES_MIN};
pub use schedules::PAUSE_REASON_BYTES_MAX;
pub use views::{VIEWS_MAX, VIEWS_PER_OWNER_MAX, VIEW_NAME_CHARS_MAX, VIEW_QUERY_BYTES_MAX};

pub use api::{IDEMPOTENCY_KEY, OVERVIEW_SCAN_MAX, WAITING_SCAN_MAX};
pub use auth::{Tokens, TOKEN_BYTES_MIN};
pub use error::{ApiError, ErrorBody};

/// Largest request body accepted, in bytes; a larger one is refused with 413 before it
/// is read to the end.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// What the typed side of a host declares, for JSON arriving over HTTP: each check turns
/// a JSON body into the payload the workflow will decode, or says why it cannot,
/// **before** anything is recorded.
pub trait Catalog: Send + Sync + 'static {
    /// The recorded input of a start of `workflow_type` from JSON `input`.
    ///
    /// # Errors
    /// [`Error::UnknownWorkflowType`], or [`Error::InvalidArgument`] naming the problem.
    fn workflow_input(
        &self,
        workflow_type: &str,
        input: serde_json::Value,
    ) -> Result<Payload, Error>;

    /// The recorded body of signal `name` from JSON `body`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an undeclared signal or a body that does not decode.
    fn signal_body(&self, name: &str, body: serde_json::Value) -> Result<Payload, Error>;

    /// The recorded input of update `name` from JSON `body`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an undeclared update or an input that does not decode.
    fn update_body(&self, name: &str, body: serde_json::Value) -> Result<Payload, Error>;
}

pub(crate) struct AppState {
    pub(crate) engine: Engine,
    pub(crate) catalog: Arc<dyn Catalog>,
    pub(crate) tokens: Tokens,
    /// Set when the server stops: ends the event streams, which would otherwise hold
    /// the graceful shutdown open.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    /// The batch actions started since the server was built.
    pub(crate) batches: batches::Batches,
    /// Saved views of the instance list.
    pub(crate) views: views::Views,
    /// How long an update request waits for the workflow's answer, in milliseconds.
    pub(crate) update_wait_ms: std::sync::atomic::AtomicU64,
}

/// How long an update request waits for the workflow's answer before the server
/// answers 202 (the update is recorded; ask again with its key), unless
/// [`Server::update_wait`] says otherwise.
pub const UPDATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cairn HTTP API",
        description = "Durable workflows: instances, their histories, signals, updates, queries, human tasks and process maps. Every route but health, readiness and this document needs `authorization: Bearer <token>`; errors are `{code, message}`.",
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness, readiness, the caller"),
        (name = "instances", description = "Workflow instances"),
        (name = "tasks", description = "Human tasks"),
        (name = "documents", description = "Case documents of an instance"),
        (name = "schedules", description = "Recurring starts: list, pause, resume, start one now"),
        (name = "views", description = "Saved views of the instance list, shared with roles"),
        (name = "batches", description = "Batch actions over the instances a filter selects"),
        (name = "maps", description = "Process maps (JSON, BPMN 2.0, SVG) and reports (JSON, CSV) from recorded histories"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The refusals every route may give, documented once here rather than on each
/// handler: a request that does not parse (400), no token (401, routes that need one),
/// a body over the limit, of the wrong type or shape (413, 415, 422, routes that take
/// one), and a runtime shutting down (503).
struct CommonRefusals;

fn refusal(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

impl utoipa::Modify for CommonRefusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let public = operation.security.is_none();
                let has_body = operation.request_body.is_some();
                let mut add = |status: &str, description: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| refusal(description));
                };
                add(
                    "400",
                    "A path segment, query parameter or body that does not parse",
                );
                if !public {
                    add("401", "No token, or one this server does not know");
                    add("503", "The runtime is shutting down");
                }
                if has_body {
                    add("413", "A body over the size limit");
                    add("415", "A body that is not `application/json`");
                    add("422", "A body of the wrong shape or type");
                }
            }
        }
    }
}

/// The HTTP API of one runtime.
///
/// ```no_run
/// # async fn run(engine: cairn_runtime::Engine, catalog: std::sync::Arc<dyn cairn_server::Catalog>) -> std::io::Result<()> {
/// use cairn_runtime::task::Actor;
/// use cairn_server::{Server, Tokens};
///
/// let mut tokens = Tokens::new();
/// let token = tokens.generate(Actor::new("olga", ["operator"]));
/// let running = Server::new(engine, catalog, tokens)
///     .bind("127.0.0.1:0".parse().unwrap())
///     .await?;
/// println!("http://{} (token {token})", running.addr());
/// running.stop().await;
/// # Ok(()) }
/// ```
pub struct Server {
    state: Arc<AppState>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("tokens", &self.state.tokens)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// The API of `engine`, checking JSON bodies with `catalog` and accepting `tokens`.
    pub fn new(engine: Engine, catalog: Arc<dyn Catalog>, tokens: Tokens) -> Self {
        Self {
            state: Arc::new(AppState {
                engine,
                catalog,
                tokens,
                closing: tokio::sync::watch::channel(false).0,
                batches: batches::Batches::default(),
                views: views::Views::default(),
                update_wait_ms: std::sync::atomic::AtomicU64::new(
                    u64::try_from(UPDATE_WAIT.as_millis()).unwrap_or(u64::MAX),
                ),
            }),
        }
    }

    /// How long `POST /api/v1/instances/{id}/updates/{name}` waits for the workflow's
    /// answer ([`UPDATE_WAIT`] unless set): past it, or when the server stops, the
    /// request is answered 202 with the update's id. The update stays recorded and is
    /// answered when the workflow takes it; asking again with the same
    /// `idempotency-key` returns that answer. Keep it under the timeout of the clients
    /// and proxies in front of the server.
    #[must_use]
    pub fn update_wait(self, wait: std::time::Duration) -> Self {
        self.state.update_wait_ms.store(
            u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        self
    }

    /// Keeps the dashboard's saved views in `path` (JSON, written on every change, a
    /// fresh file renamed over the old one), starting with the views it holds; without
    /// it, views last until the server stops. A host usually puts it beside its
    /// database. On a store shared by several hosts (PostgreSQL) views are kept in the
    /// store for all of them and the file is not used.
    ///
    /// # Errors
    /// The file exists and cannot be read or is not a file of views (nothing is changed).
    pub fn views_file(self, path: impl AsRef<std::path::Path>) -> Result<Self, String> {
        self.state.views.use_file(path.as_ref())?;
        Ok(self)
    }

    fn parts(&self) -> (axum::Router, utoipa::openapi::OpenApi) {
        let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
            .routes(routes!(api::health))
            .routes(routes!(api::ready))
            .routes(routes!(api::me))
            .routes(routes!(api::overview))
            .routes(routes!(api::stream))
            .routes(routes!(api::metrics))
            .routes(routes!(api::list_instances, api::start_instance))
            .routes(routes!(api::get_instance))
            .routes(routes!(api::get_history))
            .routes(routes!(api::send_signal))
            .routes(routes!(api::send_update))
            .routes(routes!(api::read_query))
            .routes(routes!(api::cancel_instance))
            .routes(routes!(api::terminate_instance))
            .routes(routes!(documents::list_documents))
            .routes(routes!(documents::get_document, documents::attach_document))
            .routes(routes!(api::inbox))
            .routes(routes!(api::get_task))
            .routes(routes!(api::claim_task))
            .routes(routes!(api::release_task))
            .routes(routes!(api::delegate_task))
            .routes(routes!(api::comment_task))
            .routes(routes!(api::complete_task))
            .routes(routes!(insight::get_map))
            .routes(routes!(insight::get_map_bpmn))
            .routes(routes!(insight::get_map_svg))
            .routes(routes!(insight::get_report))
            .routes(routes!(insight::get_report_csv))
            .routes(routes!(batches::start_batch, batches::list_batches))
            .routes(routes!(batches::get_batch))
            .routes(routes!(views::list_views, views::create_view))
            .routes(routes!(views::delete_view))
            .routes(routes!(schedules::list_schedules))
            .routes(routes!(schedules::get_schedule))
            .routes(routes!(schedules::pause_schedule))
            .routes(routes!(schedules::resume_schedule))
            .routes(routes!(schedules::trigger_schedule))
            .with_state(self.state.clone())
            .split_for_parts();
        let mut doc = doc;
        utoipa::Modify::modify(&CommonRefusals, &mut doc);
        (router, doc)
    }

    /// The OpenAPI document of this API (OpenAPI 3.1), as served at [`OPENAPI_PATH`].
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        self.parts().1
    }

    /// The routes, to serve or to nest in a host's own router.
    pub fn router(&self) -> axum::Router {
        let (router, doc) = self.parts();
        let doc = Arc::new(doc);
        router
            .route("/", axum::routing::get(dashboard::index))
            .route("/assets/app.js", axum::routing::get(dashboard::script))
            .route("/assets/app.css", axum::routing::get(dashboard::style))
            .route(
                OPENAPI_PATH,
                axum::routing::get(move || {
                    let doc = doc.clone();
                    async move { axum::Json(doc.as_ref().clone()) }
                }),
            )
            .fallback(api::no_route)
            .method_not_allowed_fallback(api::no_method)
            .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
            .layer(axum::middleware::from_fn(refuse_oversized))
    }

    /// Serves the API and the dashboard (at `/`) on `addr` until [`Running::stop`]. Bind to `127.0.0.1` unless the
    /// host sits behind a proxy that terminates TLS.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(self, addr: SocketAddr) -> std::io::Result<Running> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let router = self.router();
        let state = self.state.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                    state.closing.send_replace(true);
                })
                .await
        });
        tracing::info!(%addr, "HTTP API listening");
        Ok(Running {
            addr,
            stop: Some(stop),
            task,
        })
    }
}

/// Most of an oversized body read (and thrown away) before it is refused.
const DRAIN_BYTES_MAX: usize = 16 * BODY_BYTES_MAX;

/// Refuses a body declared over [`BODY_BYTES_MAX`] with `413 body_too_large`, after
/// reading and discarding it when it is not huge: a client still sending when the
/// connection closes sees a reset instead of the answer.
async fn refuse_oversized(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > BODY_BYTES_MAX as u64 => {
            if length <= DRAIN_BYTES_MAX as u64 {
                let _ = axum::body::to_bytes(request.into_body(), DRAIN_BYTES_MAX).await;
            }
            ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is over the limit of {BODY_BYTES_MAX} bytes"),
            )
            .into_response()
        }
        _ => next.run(request).await,
    }
}

/// A server that is listening.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Where it listens (the port the OS chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for the requests in progress.
    ///
    /// # Cancel safety
    /// Dropping it stops the server all the same; only the wait is given up.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "the HTTP server stopped with an error"),
            Err(err) => tracing::error!(error = %err, "the HTTP server task failed"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_but_the_public_ones_asks_for_a_bearer_token() {
        let (_, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
            .routes(routes!(api::health))
            .routes(routes!(api::me))
            .split_for_parts();
        let doc = serde_json::to_value(&doc).unwrap_or_default();
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["paths"]["/api/v1/health"]["get"]["security"].is_null());
        assert_eq!(
            doc["paths"]["/api/v1/me"]["get"]["security"][0]["bearer"],
            serde_json::json!([])
        );
    }
}
