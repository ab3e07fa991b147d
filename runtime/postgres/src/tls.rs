//! How connections reach the server: in the clear, or over TLS with the server's
//! certificate checked (rustls).
//!
//! Chosen by the connection string's `sslmode`, as libpq reads it, with one difference
//! on purpose: every encrypted connection checks the certificate and the host name.
//! `require`, `verify-ca` and `verify-full` all encrypt and verify (libpq's `require`
//! would accept any certificate, which a man in the middle can present); `disable`,
//! `allow` and `prefer` (the default) connect in the clear. The certificate is checked
//! against `sslrootcert` (a PEM file of one or more CA certificates) when the URL names
//! one, otherwise against the public web roots (`sslrootcert=system` says so too).

use std::sync::Arc;

use cairn_core::error::{Error, Result};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a store connects.
#[derive(Clone)]
pub(crate) enum Transport {
    /// In the clear.
    Plain,
    /// Over TLS, the server's certificate checked against these roots.
    Tls(MakeRustlsConnect),
}

impl Transport {
    /// Whether connections are encrypted.
    pub(crate) fn encrypted(&self) -> bool {
        matches!(self, Self::Tls(_))
    }
}

/// Reads connection string `url` into its settings and how to connect. Cairn reads
/// `sslmode` and `sslrootcert` itself (tokio-postgres knows neither `verify-*` nor
/// `sslrootcert`); the rest is tokio-postgres's.
///
/// # Errors
/// [`Error::InvalidArgument`] for a string that is not a connection string, an
/// `sslmode` that is none of libpq's, or an `sslrootcert` that cannot be read or holds
/// no certificate.
pub(crate) fn settings(url: &str) -> Result<(tokio_postgres::Config, Transport)> {
    let (rest, sslmode, rootcert) = split_tls_parameters(url);
    let mut config: tokio_postgres::Config = rest.parse().map_err(|err| {
        Error::InvalidArgument(format!("not a PostgreSQL connection string: {err}"))
    })?;
    let encrypt = match sslmode.as_deref() {
        // A key=value string keeps its sslmode for tokio-postgres to read.
        None => config.get_ssl_mode() == SslMode::Require,
        Some("disable" | "allow" | "prefer") => false,
        Some("require" | "verify-ca" | "verify-full") => true,
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )))
        }
    };
    if !encrypt {
        config.ssl_mode(SslMode::Disable);
        return Ok((config, Transport::Plain));
    }
    config.ssl_mode(SslMode::Require);
    let roots = roots(rootcert.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::InvalidArgument(format!("TLS cannot be set up: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, Transport::Tls(MakeRustlsConnect::new(tls))))
}

/// The CA certificates a server's certificate is checked against.
fn roots(rootcert: Option<&str>) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    match rootcert {
        None | Some("system") => {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let certificates = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|err| {
                    Error::InvalidArgument(format!("sslrootcert `{path}` cannot be read: {err}"))
                })?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|err| {
                    Error::InvalidArgument(format!(
                        "sslrootcert `{path}` is not a PEM file of certificates: {err}"
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(Error::InvalidArgument(format!(
                    "sslrootcert `{path}` holds no CA certificate Cairn can use"
                )));
            }
        }
    }
    Ok(roots)
}

/// Takes `sslmode` and `sslrootcert` out of the query of a URL-form connection string
/// (`postgres://...?sslmode=verify-full&sslrootcert=/etc/ca.pem`); a key=value string is
/// returned whole.
fn split_tls_parameters(url: &str) -> (String, Option<String>, Option<String>) {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return (url.to_owned(), None, None);
    };
    let (mut sslmode, mut rootcert) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => sslmode = Some(unescape(value)),
            Some(("sslrootcert", value)) => rootcert = Some(unescape(value)),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, sslmode, rootcert)
}

/// Percent-decodes a URL query value (`%2F` is `/`); a malformed escape is kept as is.
fn unescape(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let decoded = (bytes[at] == b'%')
            .then(|| value.get(at + 1..at + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                at += 3;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_read_by_cairn_and_the_rest_is_left() {
        let (rest, mode, root) = split_tls_parameters(
            "postgres://a@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://a@h:5/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) = split_tls_parameters("host=h sslmode=require");
        assert_eq!(
            (rest.as_str(), mode, root),
            ("host=h sslmode=require", None, None)
        );
        assert_eq!(unescape("a%2"), "a%2");
    }

    #[test]
    fn only_an_encrypting_sslmode_encrypts_and_bad_ones_are_named() {
        for (url, encrypted) in [
            ("postgres://h/db", false),
            ("postgres://h/db?sslmode=prefer", false),
            ("postgres://h/db?sslmode=disable", false),
            ("postgres://h/db?sslmode=require", true),
            ("postgres://h/db?sslmode=verify-full", true),
            ("host=h dbname=db sslmode=require", true),
        ] {
            let (_, transport) = settings(url).unwrap();
            assert_eq!(transport.encrypted(), encrypted, "{url}");
        }
        let Err(Error::InvalidArgument(message)) = settings("postgres://h/db?sslmode=sometimes")
        else {
            panic!("accepted")
        };
        assert!(message.contains("sometimes"), "{message}");
        let Err(Error::InvalidArgument(message)) =
            settings("postgres://h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem")
        else {
            panic!("accepted")
        };
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
    }
}
