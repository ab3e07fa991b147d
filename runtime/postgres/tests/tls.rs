//! Connections over TLS: a server that accepts only encrypted connections is reached with
//! `sslmode=verify-full` (or `require`) and the CA that signed its certificate, and
//! refused, with the reason, in the clear or when its certificate does not check out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_postgres::{PostgresJournal, PostgresOptions, PostgresStore};

use cairn_testkit::postgres::{test_certificates, Cluster};

#[tokio::test]
async fn tls_connections_check_the_server_certificate_and_plain_ones_are_refused() {
    let certificates = test_certificates("Cairn test CA").unwrap();
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start_tls(&certificates).map(|c| (c, certificates))
    })
    .await
    .unwrap()
    .unwrap();
    let (cluster, certificates) = cluster;
    let ca = cluster.dir().join("ca.pem");
    std::fs::write(&ca, &certificates.ca_pem).unwrap();
    let stranger = cluster.dir().join("stranger.pem");
    std::fs::write(&stranger, test_certificates("Another CA").unwrap().ca_pem).unwrap();
    let base = format!("postgres://cairn@127.0.0.1:{}/postgres", cluster.port());

    // In the clear: the server refuses, and the error says how to ask for TLS.
    let refused = PostgresStore::open(&base).await.unwrap_err().to_string();
    assert!(refused.contains("no encryption"), "{refused}");
    assert!(refused.contains("sslmode=verify-full"), "{refused}");

    // Verified against the CA that signed it: the store works, the journal too (its
    // listening connection is encrypted as well).
    for mode in ["verify-full", "require"] {
        let url = format!("{base}?sslmode={mode}&sslrootcert={}", ca.display());
        let store = PostgresStore::open(&url).await.unwrap();
        let started = store
            .start(
                &format!("over-tls-{mode}"),
                "kept",
                payload(),
                None,
                None,
                1,
            )
            .await
            .unwrap();
        assert!(started.created);
    }
    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    let journal = PostgresJournal::open_with(&url, PostgresOptions::default())
        .await
        .unwrap();
    drop(journal);

    // A certificate no trusted CA signed: refused, and the error names the certificate.
    for url in [
        format!(
            "{base}?sslmode=verify-full&sslrootcert={}",
            stranger.display()
        ),
        format!("{base}?sslmode=verify-full"),
    ] {
        let refused = PostgresStore::open(&url).await.unwrap_err().to_string();
        assert!(
            refused.to_lowercase().contains("certificate"),
            "{url}: {refused}"
        );
        assert!(refused.contains("sslrootcert"), "{url}: {refused}");
    }
}

fn payload() -> cairn_core::codec::Payload {
    cairn_core::codec::Payload::new(0, b"{}".to_vec())
}
