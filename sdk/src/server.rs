//! The HTTP API (feature `server`): the runtime's instances, histories, signals,
//! updates, queries and human tasks as JSON over HTTP, with bearer tokens mapped to
//! actors, every call checked by the runtime's policy and recorded with its actor, and
//! an OpenAPI document at [`OPENAPI_PATH`]. JSON bodies are checked against the Rust
//! types declared on the builder (workflows, [`RuntimeBuilder::signal`],
//! [`RuntimeBuilder::update`]) before anything is recorded.
//!
//! ```no_run
//! # async fn run(rt: cairn::Runtime) -> Result<(), Box<dyn std::error::Error>> {
//! use cairn::server::Tokens;
//! use cairn::Actor;
//!
//! let mut tokens = Tokens::new();
//! let token = tokens.generate(Actor::new("olga", ["operator"]));
//! let running = rt.http_server(tokens).bind("127.0.0.1:8080".parse()?).await?;
//! println!("API on http://{}/openapi.json, operator token {token}", running.addr());
//! # Ok(()) }
//! ```
//!
//! [`RuntimeBuilder::signal`]: crate::RuntimeBuilder::signal
//! [`RuntimeBuilder::update`]: crate::RuntimeBuilder::update

use std::sync::Arc;

pub use cairn_server::{
    ApiError, Catalog, ErrorBody, Jwt, Running, Server, Tokens, BATCHES_KEPT,
    BATCHES_RUNNING_PER_CALLER, BATCH_EXAMINED_MAX, BATCH_INSTANCES_MAX, BODY_BYTES_MAX,
    IDEMPOTENCY_KEY, JWT_SECRET_BYTES_MIN, MAP_RUNS_DEFAULT, MAP_RUNS_MAX, OPENAPI_PATH,
    REPORT_RUNS_MAX, TOKEN_BYTES_MIN, UPDATE_WAIT, VIEWS_MAX, VIEWS_PER_OWNER_MAX,
};

use crate::{Error, Runtime};
use cairn_runtime::codec::Payload;

/// The runtime's declarations, as the server checks JSON against them.
struct Declarations(Runtime);

impl Catalog for Declarations {
    fn workflow_input(
        &self,
        workflow_type: &str,
        input: serde_json::Value,
    ) -> Result<Payload, Error> {
        if !self.0.inputs().contains(workflow_type) {
            return Err(Error::UnknownWorkflowType {
                workflow_type: workflow_type.to_owned(),
                instance: None,
            });
        }
        self.0
            .inputs()
            .check(self.0.engine().codec(), "workflow", workflow_type, input)
    }

    fn signal_body(&self, name: &str, body: serde_json::Value) -> Result<Payload, Error> {
        self.0
            .signals()
            .check(self.0.engine().codec(), "signal", name, body)
    }

    fn update_body(&self, name: &str, body: serde_json::Value) -> Result<Payload, Error> {
        self.0
            .updates()
            .check(self.0.engine().codec(), "update", name, body)
    }
}

impl Runtime {
    /// The HTTP API of this runtime, accepting `tokens`; [`Server::bind`] serves it,
    /// [`Server::router`] gives its routes to nest in a host's own router.
    pub fn http_server(&self, tokens: Tokens) -> Server {
        Server::new(
            self.engine().clone(),
            Arc::new(Declarations(self.clone())),
            tokens,
        )
    }
}
