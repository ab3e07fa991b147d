//! Who is calling: bearer tokens configured when the server starts, kept only as their
//! SHA-256, each naming an [`Actor`] (an id and roles); and, when configured, JSON Web
//! Tokens verified against keys (`jwt.rs`). What the actor may do is the
//! runtime's policy's to decide; the server only establishes who asks.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use cairn_runtime::task::Actor;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;

/// Shortest token accepted, in bytes: a guessable token is refused when configured.
pub const TOKEN_BYTES_MIN: usize = 16;

/// The bearer tokens a server accepts, each mapped to the actor it authenticates.
///
/// ```
/// use cairn_runtime::task::Actor;
/// use cairn_server::Tokens;
///
/// let mut tokens = Tokens::new();
/// tokens.add("s3cret-operator-token", Actor::new("olga", ["operator"])).unwrap();
/// let auditor = tokens.generate(Actor::new("audrey", ["auditor"]));
/// assert!(auditor.starts_with("cairn_"));
/// ```
#[derive(Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Actor>,
    jwt: Option<crate::jwt::Jwt>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hashes: only who may sign in.
        let mut ids: Vec<&str> = self.by_hash.values().map(|a| a.id.as_str()).collect();
        ids.sort_unstable();
        f.debug_struct("Tokens").field("actors", &ids).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// No tokens: every request but health, readiness and the API document is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` as `actor`. Only its SHA-256 is kept.
    ///
    /// # Errors
    /// A token shorter than [`TOKEN_BYTES_MIN`] bytes, or one already configured.
    pub fn add(&mut self, token: &str, actor: Actor) -> Result<(), String> {
        if token.len() < TOKEN_BYTES_MIN {
            return Err(format!(
                "a token must be at least {TOKEN_BYTES_MIN} bytes, got {}",
                token.len()
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("a token must not contain spaces or control characters".into());
        }
        match self.by_hash.entry(digest(token)) {
            std::collections::hash_map::Entry::Occupied(_) => {
                Err("this token is configured already".into())
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(actor);
                Ok(())
            }
        }
    }

    /// A fresh random token for `actor` (256 bits from the OS, hex, prefixed `cairn_`),
    /// accepted from now on; show it once, it is not kept.
    ///
    /// # Panics
    /// Never in practice: if the OS has no random source, the token falls back to two
    /// random UUIDs, which come from the same source.
    pub fn generate(&mut self, actor: Actor) -> String {
        let mut bytes = [0u8; 32];
        if getrandom::fill(&mut bytes).is_err() {
            let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
            bytes[..16].copy_from_slice(a.as_bytes());
            bytes[16..].copy_from_slice(b.as_bytes());
        }
        let token = format!(
            "cairn_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        self.by_hash.insert(digest(&token), actor);
        token
    }

    /// Also accepts JSON Web Tokens that `jwt` verifies (see [`crate::Jwt`]); a bearer
    /// token that is not one of the configured tokens is tried as a JWT.
    #[must_use]
    pub fn with_jwt(mut self, jwt: crate::jwt::Jwt) -> Self {
        self.jwt = Some(jwt);
        self
    }

    /// The actor `token` authenticates, or why it does not.
    pub(crate) fn actor(&self, token: &str) -> Result<Actor, String> {
        if let Some(actor) = self.by_hash.get(&digest(token)) {
            return Ok(actor.clone());
        }
        match &self.jwt {
            // A JWT has three dot-separated parts; a configured token never has dots.
            Some(jwt) if token.split('.').count() == 3 => jwt.actor(token),
            _ => Err("the token is not known to this server".to_owned()),
        }
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) Actor);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthenticated(
                "send `authorization: Bearer <token>`",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthenticated("the authorization header must be `Bearer <token>`")
            })?;
        state
            .tokens
            .actor(token)
            .map(Caller)
            .map_err(|why| ApiError::unauthenticated(&why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_kept_hashed_and_refused_when_weak_or_repeated() {
        let mut tokens = Tokens::new();
        assert!(tokens.add("short", Actor::new("a", ["admin"])).is_err());
        assert!(tokens
            .add("has a space in it!!", Actor::new("a", ["admin"]))
            .is_err());
        tokens
            .add("0123456789abcdef", Actor::new("a", ["admin"]))
            .unwrap();
        assert!(tokens
            .add("0123456789abcdef", Actor::new("b", ["admin"]))
            .is_err());
        assert_eq!(tokens.actor("0123456789abcdef").unwrap().id, "a");
        assert!(tokens.actor("0123456789abcdeg").is_err());
        let fresh = tokens.generate(Actor::new("c", ["auditor"]));
        assert_eq!(fresh.len(), "cairn_".len() + 64);
        assert_eq!(tokens.actor(&fresh).unwrap().id, "c");
        assert!(!format!("{tokens:?}").contains("0123"));
    }
}
