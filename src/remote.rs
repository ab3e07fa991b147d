//! The same commands against a running host, through its HTTP API (`--server URL
//! --token TOKEN`): a host holds its file, so this is how an operator reads it live.
//!
//! What differs from a file: the server verifies each history's hash chain as it reads
//! it (a damaged one comes back as its `CAIRN-E0004` error), and this side checks the
//! links it receives (sequence numbers, each `prev_hash` the previous event's `hash`); an
//! instance's earlier runs (before a `continue_as_new`) are not served; `stats` counts
//! what the overview reports (no event count or file size).

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_core::error::error_chain;
use serde_json::Value;

/// A host's API, with the caller's token.
pub(crate) struct Remote {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// One instance as the API lists it.
pub(crate) struct Listed {
    pub(crate) id: String,
    pub(crate) workflow_type: String,
    /// As the offline listing prints it: `Completed`, `Parked (code: reason)`.
    pub(crate) status: String,
    pub(crate) events: u64,
    pub(crate) updated_at_ms: u64,
    /// The current run's key, 32 hexadecimal digits.
    pub(crate) run: String,
}

/// `completed` -> `Completed`, `continued_as_new` -> `ContinuedAsNew`.
pub(crate) fn status_word(status: &str) -> String {
    status
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        })
        .collect()
}

impl Remote {
    pub(crate) fn new(base: &str, token: String) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "`{base}` is not a server address: give http://HOST:PORT"
            ));
        }
        // Refused here rather than sent: an empty token is refused by every host, and
        // one with a control character cannot go in a header at all.
        if token.trim().is_empty() {
            return Err("the token is empty: give the one the host issued to you".to_owned());
        }
        if token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(
                "the token holds a space or a control character (a stray newline?): give it \
                 as the host issued it"
                    .to_owned(),
            );
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|err| format!("cannot make an HTTP client: {err}"))?;
        Ok(Self { http, base, token })
    }

    /// GETs `path` and decodes the JSON answer; a refusal becomes its `code: message`.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, String> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// POSTs `body` (JSON, or nothing) to `path` and decodes the JSON answer.
    pub(crate) async fn post(&self, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.send(reqwest::Method::POST, path, body).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|err| format!("cannot reach {}: {}", self.base, error_chain(&err)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| format!("{url}: the answer broke off: {}", error_chain(&err)))?;
        let parsed = serde_json::from_slice::<Value>(&bytes);
        if status.is_success() {
            // Something else answered (a proxy's page, another service): reading on
            // would print nothing and let `verify` pass having checked nothing.
            return parsed.map_err(|err| {
                format!(
                    "{url}: the answer is not JSON from a Cairn host ({err}): check the \
                     server address"
                )
            });
        }
        let body = parsed.unwrap_or(Value::Null);
        let code = body["code"].as_str().unwrap_or("");
        let message = body["message"].as_str().unwrap_or("");
        Err(match status.as_u16() {
            401 => format!("the server refused the token ({code}: {message})"),
            _ if code.is_empty() => format!("{url}: HTTP {status}"),
            _ => format!("{code}: {message}"),
        })
    }

    /// Every instance the filters select that the token may read, oldest first.
    pub(crate) async fn list(&self, filters: &[(&str, String)]) -> Result<Vec<Listed>, String> {
        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = url_query(filters);
            query.push(("limit", "1000".to_owned()));
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor.clone()));
            }
            let page = self
                .get(&format!("/api/v1/instances?{}", encode(&query)))
                .await?;
            let Some(instances) = page["instances"].as_array() else {
                return Err(format!(
                    "{}: the answer is not a page of instances: check the server address",
                    self.base
                ));
            };
            for row in instances {
                let status = row["status"].as_str().unwrap_or("");
                let status = match (&row["parked"], status) {
                    (Value::Object(why), "parked") => format!(
                        "Parked ({}: {})",
                        why.get("code").and_then(Value::as_str).unwrap_or(""),
                        why.get("message").and_then(Value::as_str).unwrap_or("")
                    ),
                    _ => status_word(status),
                };
                rows.push(Listed {
                    id: row["id"].as_str().unwrap_or("").to_owned(),
                    workflow_type: row["workflow_type"].as_str().unwrap_or("").to_owned(),
                    status,
                    events: row["events"].as_u64().unwrap_or(0),
                    updated_at_ms: row["updated_at_ms"].as_u64().unwrap_or(0),
                    run: row["run"].as_str().unwrap_or("").to_owned(),
                });
            }
            match page["next"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(rows),
            }
        }
    }

    /// One instance's current run as the API shows it.
    pub(crate) async fn instance(&self, id: &str) -> Result<Value, String> {
        self.get(&format!("/api/v1/instances/{}", path_segment(id)))
            .await
    }

    /// One instance's history (its current run), as the API decodes it.
    pub(crate) async fn history(&self, id: &str) -> Result<Vec<Value>, String> {
        let events = self
            .get(&format!("/api/v1/instances/{}/history", path_segment(id)))
            .await?;
        match events {
            Value::Array(events) => Ok(events),
            other => Err(format!(
                "the server sent a history that is not a list: {other}"
            )),
        }
    }

    /// Instances by status and by type, from the overview.
    pub(crate) async fn counts(
        &self,
    ) -> Result<(BTreeMap<String, u64>, BTreeMap<String, u64>), String> {
        let overview = self.get("/api/v1/overview").await?;
        let mut by_status = BTreeMap::new();
        for (status, n) in overview["totals"].as_object().into_iter().flatten() {
            let n = n.as_u64().unwrap_or(0);
            if n > 0 {
                by_status.insert(status_word(status), n);
            }
        }
        let mut by_type = BTreeMap::new();
        for row in overview["by_type"].as_array().into_iter().flatten() {
            let total: u64 = row
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, n)| n.as_u64())
                .sum();
            by_type.insert(
                row["workflow_type"].as_str().unwrap_or("").to_owned(),
                total,
            );
        }
        Ok((by_status, by_type))
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }
}

/// Checks the links of a history received from a server: sequence numbers from 0 and
/// each `prev_hash` the `hash` of the event before (the server checked each hash against
/// the stored bytes). `Err` names the first event that does not link.
pub(crate) fn check_links(events: &[Value]) -> Result<(), String> {
    let genesis = "0".repeat(64);
    let mut previous = genesis.as_str();
    for (index, event) in events.iter().enumerate() {
        if event["seq"].as_u64() != Some(index as u64) {
            return Err(format!(
                "event #{index} is missing: the event in its place has sequence number {}",
                event["seq"]
            ));
        }
        if event["prev_hash"].as_str() != Some(previous) {
            return Err(format!(
                "event #{index} does not link to the event before it (prev_hash differs)"
            ));
        }
        previous = event["hash"].as_str().unwrap_or("");
    }
    Ok(())
}

fn url_query(filters: &[(&str, String)]) -> Vec<(&'static str, String)> {
    filters
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let key: &'static str = match *k {
                "workflow_type" => "workflow_type",
                "status" => "status",
                "id_contains" => "id_contains",
                "created_from_ms" => "created_from_ms",
                _ => "created_until_ms",
            };
            (key, v.clone())
        })
        .collect()
}

/// `a=b&c=d`, each value percent-encoded.
fn encode(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", path_segment(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub(crate) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
