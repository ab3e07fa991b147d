//! Notifications: the [`Notifier`] a runtime delivers its outbox to
//! ([`RuntimeBuilder::notifier`](crate::RuntimeBuilder::notifier)), the default
//! [`LoggingNotifier`], and a [`Webhook`] that POSTs each notification as signed JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Error;

pub use cairn_runtime::notify::{
    retry_after, Delivery, DeliveryAttempt, LoggingNotifier, Notification, Notifier, OutboxRow,
    Topic, ATTEMPTS_MAX, DELIVERY_TIMEOUT,
};

/// The header carrying a webhook's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>" under the shared secret>`.
pub const SIGNATURE_HEADER: &str = "cairn-signature";

/// The header carrying the notification's id (the same on every redelivery).
pub const ID_HEADER: &str = "cairn-notification-id";

/// How far a signature's time may be from the receiver's clock, by default.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);

/// POSTs every notification to a URL as JSON (`{"id", "topic", "instance",
/// "workflow_type", "step", "seq", "at_ms", "body"}`), signed with a shared secret
/// ([`SIGNATURE_HEADER`]). Any 2xx answer counts as delivered; anything else, or no
/// answer within [`DELIVERY_TIMEOUT`], is retried with backoff. A receiver verifies the
/// signature with [`verify`] and deduplicates by [`ID_HEADER`]: a notification is sent
/// again if the host stopped before it recorded the answer.
///
/// ```no_run
/// # async fn run() -> Result<(), cairn::Error> {
/// use std::sync::Arc;
/// use cairn::notify::Webhook;
///
/// let hook = Webhook::new("https://ops.example.com/cairn", "a shared secret")?;
/// let rt = cairn::Runtime::builder().notifier(Arc::new(hook)).open("app.redb").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// A webhook to `url` (http or https) signing with `secret`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a URL that does not parse or is not http(s), or an
    /// empty secret.
    pub fn new(url: &str, secret: impl Into<Vec<u8>>) -> Result<Self, Error> {
        let url = reqwest::Url::parse(url)
            .map_err(|err| Error::InvalidArgument(format!("webhook URL `{url}`: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::InvalidArgument(format!(
                "webhook URL `{url}` is not http or https"
            )));
        }
        let secret = secret.into();
        if secret.is_empty() {
            return Err(Error::InvalidArgument(
                "a webhook needs a non-empty secret to sign with".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .build()
            .map_err(|err| Error::Environment(format!("cannot build the HTTP client: {err}")))?;
        Ok(Self {
            client,
            url,
            secret,
        })
    }
}

/// The JSON a webhook posts for `notification`.
pub fn webhook_body(notification: &Notification) -> serde_json::Value {
    let body = serde_json::from_str::<serde_json::Value>(&notification.body)
        .unwrap_or_else(|_| serde_json::Value::String(notification.body.clone()));
    serde_json::json!({
        "id": notification.id,
        "topic": notification.topic.name(),
        "instance": notification.instance,
        "workflow_type": notification.workflow_type,
        "step": notification.step,
        "seq": notification.seq,
        "at_ms": notification.at_ms,
        "body": body,
    })
}

#[async_trait::async_trait]
impl Notifier for Webhook {
    async fn notify(&self, notification: &Notification) -> Result<(), String> {
        let body = webhook_body(notification).to_string();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = sign(&self.secret, now, body.as_bytes()).map_err(|err| err.to_string())?;
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, notification.id.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|err| format!("POST {}: {err}", self.url))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("POST {} answered {status}", self.url))
        }
    }
}

/// The signature header for `body` sent at `unix_seconds`.
///
/// # Errors
/// [`SignatureError::Key`] if the HMAC cannot take `secret` (it takes keys of any
/// length, so in practice never).
pub fn sign(secret: &[u8], unix_seconds: u64, body: &[u8]) -> Result<String, SignatureError> {
    let mut mac = mac(secret)?;
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("t={unix_seconds},v1={tag}"))
}

fn mac(secret: &[u8]) -> Result<Hmac<Sha256>, SignatureError> {
    Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Key)
}

/// Why a webhook's signature was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `t=<seconds>,v1=<hex>`.
    #[error("the signature header is malformed")]
    Malformed,
    /// The signature's time is too far from now (a replayed request, or a clock off).
    #[error("the signature is {0} s away from now, more than the tolerance")]
    Stale(u64),
    /// The body was not signed with this secret.
    #[error("the signature does not match the body")]
    Mismatch,
    /// The secret is not a usable HMAC key.
    #[error("the secret is not a usable HMAC key")]
    Key,
}

/// Checks a webhook's signature header against its raw `body`, the shared secret and the
/// receiver's clock (`now` in Unix seconds; at most `tolerance` apart).
///
/// ```
/// use std::time::Duration;
/// use cairn::notify::{sign, verify};
/// let header = sign(b"s3cret", 1_800_000_000, b"{}").unwrap();
/// assert!(verify(b"s3cret", &header, b"{}", 1_800_000_010, Duration::from_secs(300)).is_ok());
/// assert!(verify(b"other", &header, b"{}", 1_800_000_010, Duration::from_secs(300)).is_err());
/// ```
///
/// # Errors
/// A [`SignatureError`] saying what is wrong.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut time = None;
    let mut tag = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => time = value.parse::<u64>().ok(),
            Some(("v1", value)) => tag = decode_hex(value),
            _ => {}
        }
    }
    let (Some(time), Some(tag)) = (time, tag) else {
        return Err(SignatureError::Malformed);
    };
    let skew = now.abs_diff(time);
    if skew > tolerance.as_secs() {
        return Err(SignatureError::Stale(skew));
    }
    let mut mac = mac(secret)?;
    mac.update(time.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&tag).map_err(|_| SignatureError::Mismatch)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() & 1 == 1 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
