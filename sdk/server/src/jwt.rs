//! JSON Web Tokens verified against configured keys, beside the static bearer tokens:
//! for hosts behind a company's identity provider. A token's `sub` is the actor's id,
//! a roles claim (`roles` by default) its roles; the signature, `exp` (required) and
//! `nbf`, and when configured `iss` and `aud`, are checked before anything else is read.

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use cairn_runtime::task::Actor;

/// Keys and rules for the JWTs a server accepts.
///
/// ```
/// use cairn_server::Jwt;
///
/// let jwt = Jwt::hs256(b"a shared secret of at least 32 bytes!!")
///     .unwrap()
///     .issuer("https://login.example.com")
///     .audience("cairn");
/// # let _ = jwt;
/// ```
#[derive(Clone)]
pub struct Jwt {
    keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
    issuer: Option<String>,
    audience: Option<String>,
    roles_claim: String,
    leeway_s: u64,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Jwt")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("roles_claim", &self.roles_claim)
            .finish()
    }
}

/// Shortest HS256 secret accepted, in bytes (RFC 7518 asks for at least the hash size).
pub const JWT_SECRET_BYTES_MIN: usize = 32;

impl Jwt {
    fn with(key: DecodingKey, algorithm: Algorithm, kid: Option<String>) -> Self {
        Self {
            keys: vec![(kid, key, algorithm)],
            issuer: None,
            audience: None,
            roles_claim: "roles".to_owned(),
            leeway_s: 30,
        }
    }

    /// Tokens signed with HMAC-SHA256 and `secret`.
    ///
    /// # Errors
    /// A secret shorter than [`JWT_SECRET_BYTES_MIN`] bytes.
    pub fn hs256(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < JWT_SECRET_BYTES_MIN {
            return Err(format!(
                "an HS256 secret must be at least {JWT_SECRET_BYTES_MIN} bytes, got {}",
                secret.len()
            ));
        }
        Ok(Self::with(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
            None,
        ))
    }

    /// Tokens signed with RS256 by the key whose public half is `pem` (PEM, SPKI or
    /// PKCS#1).
    ///
    /// # Errors
    /// `pem` is not an RSA public key.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, String> {
        DecodingKey::from_rsa_pem(pem)
            .map(|key| Self::with(key, Algorithm::RS256, None))
            .map_err(|err| format!("not an RSA public key in PEM: {err}"))
    }

    /// Tokens signed with ES256 (P-256) by the key whose public half is `pem` (SPKI PEM).
    ///
    /// # Errors
    /// `pem` is not an EC public key.
    pub fn es256_pem(pem: &[u8]) -> Result<Self, String> {
        DecodingKey::from_ec_pem(pem)
            .map(|key| Self::with(key, Algorithm::ES256, None))
            .map_err(|err| format!("not an EC public key in PEM: {err}"))
    }

    /// Also accept tokens verified by `other`'s keys (a key rotation: old and new), each
    /// picked by the token's `kid` when both name one.
    #[must_use]
    pub fn or(mut self, other: Jwt) -> Self {
        self.keys.extend(other.keys);
        self
    }

    /// Names this configuration's keys `kid`, for tokens whose header names theirs.
    #[must_use]
    pub fn kid(mut self, kid: &str) -> Self {
        for key in &mut self.keys {
            key.0 = Some(kid.to_owned());
        }
        self
    }

    /// Accept only tokens whose `iss` is `issuer`.
    #[must_use]
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.issuer = Some(issuer.to_owned());
        self
    }

    /// Accept only tokens whose `aud` names `audience`.
    #[must_use]
    pub fn audience(mut self, audience: &str) -> Self {
        self.audience = Some(audience.to_owned());
        self
    }

    /// The claim that lists the actor's roles (default `roles`): an array of strings, or
    /// one string of space-separated roles.
    #[must_use]
    pub fn roles_claim(mut self, claim: &str) -> Self {
        claim.clone_into(&mut self.roles_claim);
        self
    }

    /// The actor a token names, once its signature and claims check out.
    pub(crate) fn actor(&self, token: &str) -> Result<Actor, String> {
        let header =
            decode_header(token).map_err(|err| format!("the token is not a JWT: {err}"))?;
        let candidates = self.keys.iter().filter(|(kid, _, algorithm)| {
            *algorithm == header.alg
                && match (&header.kid, kid) {
                    (Some(wanted), Some(have)) => wanted == have,
                    _ => true,
                }
        });
        let mut last = format!(
            "no configured key verifies {:?} tokens{}",
            header.alg,
            header
                .kid
                .as_deref()
                .map(|kid| format!(" with kid `{kid}`"))
                .unwrap_or_default()
        );
        for (_, key, algorithm) in candidates {
            let mut validation = Validation::new(*algorithm);
            validation.leeway = self.leeway_s;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "sub"]);
            match &self.issuer {
                Some(issuer) => validation.set_issuer(&[issuer]),
                None => validation.iss = None,
            }
            match &self.audience {
                Some(audience) => validation.set_audience(&[audience]),
                None => validation.validate_aud = false,
            }
            match decode::<serde_json::Map<String, serde_json::Value>>(token, key, &validation) {
                Ok(data) => return self.actor_of(&data.claims),
                Err(err) => last = format!("the token does not verify: {err}"),
            }
        }
        Err(last)
    }

    fn actor_of(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Actor, String> {
        let id = claims
            .get("sub")
            .and_then(|sub| sub.as_str())
            .filter(|sub| !sub.is_empty())
            .ok_or("the token's `sub` must be a non-empty string")?;
        let roles: Vec<String> = match claims.get(&self.roles_claim) {
            None => Vec::new(),
            Some(serde_json::Value::String(text)) => {
                text.split_whitespace().map(str::to_owned).collect()
            }
            Some(value) => Vec::<String>::deserialize(value).map_err(|_| {
                format!(
                    "the token's `{}` must be a list of strings or one string",
                    self.roles_claim
                )
            })?,
        };
        Ok(Actor::new(id, roles))
    }
}
