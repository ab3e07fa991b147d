//! Case documents: each version is recorded with its SHA-256 and its bytes stored once;
//! limits are checked before anything is written; reading is governed by the policy and
//! checks the hash; versions survive a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::sync::Arc;

use cairn::document::DOCUMENT_BYTES_MAX;
use cairn::events::EventKind;
use cairn::policy::{Roles, Verb};
use cairn::{workflow, Actor, Ctx, Document, Error, Runtime, Signal, WorkflowError};

const DONE: Signal<bool> = Signal::new("done");

#[workflow]
async fn case(ctx: Ctx, _title: String) -> Result<bool, WorkflowError> {
    Ok(ctx.receive(DONE).await?)
}

async fn open(path: &std::path::Path) -> Runtime {
    Runtime::builder()
        .workflow(case)
        .policy(Arc::new(
            Roles::new()
                .allow(Verb::Start, "case", ["citizen"])
                .allow(Verb::Attach, "case", ["citizen"])
                .allow(Verb::Read, "case", ["citizen", "clerk"]),
        ))
        .open_store(path)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_recorded_with_their_hash_and_read_back_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = open(&path).await;
    let citizen = Actor::new("cem", ["citizen"]);
    let clerk = Actor::new("cleo", ["clerk"]);
    rt.acting_as(&citizen)
        .start(case, "C-1", "extension".into())
        .await
        .unwrap();
    let v1 = rt
        .acting_as(&citizen)
        .attach(
            "C-1",
            Document::new("plan.pdf", "application/pdf", b"plan v1".to_vec())
                .metadata("source", "portal"),
        )
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let v2 = rt
        .acting_as(&citizen)
        .attach(
            "C-1",
            Document::new("plan.pdf", "application/pdf", b"plan v2".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_ne!(v1.sha256, v2.sha256);

    // A clerk reads, but may not attach.
    let denied = rt
        .acting_as(&clerk)
        .attach(
            "C-1",
            Document::new("note.txt", "text/plain", b"x".to_vec()),
        )
        .await
        .unwrap_err();
    assert!(matches!(denied, Error::Forbidden { .. }), "{denied}");
    let (latest, bytes) = rt
        .acting_as(&clerk)
        .document("C-1", "plan.pdf", None)
        .await
        .unwrap();
    assert_eq!((latest.version, bytes.as_slice()), (2, &b"plan v2"[..]));
    let (first, bytes) = rt.document("C-1", "plan.pdf", Some(1)).await.unwrap();
    assert_eq!(bytes, b"plan v1");
    assert_eq!(first.metadata["source"], "portal");
    // Someone without a role reads nothing.
    let stranger = Actor::new("eve", Vec::<String>::new());
    assert!(matches!(
        rt.acting_as(&stranger).documents("C-1").await,
        Err(Error::Forbidden { .. })
    ));

    // The history names each version, its hash and who attached it.
    let attached: Vec<(u32, String)> = rt
        .history("C-1")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|event| match event.record.kind {
            EventKind::DocumentAttached { document } => {
                Some((document.version, event.record.actor.unwrap().id))
            }
            _ => None,
        })
        .collect();
    assert_eq!(attached, [(1, "cem".to_owned()), (2, "cem".to_owned())]);

    rt.shutdown().await;
    let rt = open(&path).await;
    assert_eq!(rt.documents("C-1").await.unwrap().len(), 2);
    assert_eq!(
        rt.document("C-1", "plan.pdf", Some(2)).await.unwrap().1,
        b"plan v2"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_over_a_limit_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    rt.start(case, "C-2", "x".into()).await.unwrap();
    let before = rt.history("C-2").await.unwrap().len();
    let too_big = Document::new("scan.tiff", "image/tiff", vec![0; DOCUMENT_BYTES_MAX + 1]);
    let refused = rt.attach("C-2", too_big).await.unwrap_err();
    assert!(matches!(refused, Error::InvalidArgument(_)), "{refused}");
    assert!(
        refused.to_string().contains("DOCUMENT_BYTES_MAX"),
        "{refused}"
    );
    for bad in [
        Document::new("", "text/plain", b"x".to_vec()),
        Document::new("a.txt", "plain", b"x".to_vec()),
        Document::new("a.txt", "text/plain", b"x".to_vec()).for_task(1),
    ] {
        assert!(rt.attach("C-2", bad).await.is_err());
    }
    assert!(matches!(
        rt.attach("missing", Document::new("a.txt", "text/plain", vec![]))
            .await,
        Err(Error::InstanceNotFound(_))
    ));
    assert_eq!(
        rt.history("C-2").await.unwrap().len(),
        before,
        "nothing written"
    );
    assert!(matches!(
        rt.document("C-2", "scan.tiff", None).await,
        Err(Error::InvalidArgument(_))
    ));
    rt.shutdown().await;
}

#[tokio::test]
async fn an_attach_dropped_after_its_first_poll_is_still_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = open(&dir.path().join("db.redb")).await;
    let citizen = Actor::new("cem", ["citizen"]);
    rt.acting_as(&citizen)
        .start(case, "C-9", "extension".into())
        .await
        .unwrap();
    {
        let desk = rt.acting_as(&citizen);
        let plan = Document::new("plan.pdf", "application/pdf", b"plan v1".to_vec());
        let call = desk.attach("C-9", plan);
        let mut call = Box::pin(call);
        let _ = futures::poll!(call.as_mut());
    }
    // Recorded with nobody attaching again (an upload whose client hung up).
    let listed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let listed = rt.documents("C-9").await.unwrap();
            if !listed.is_empty() {
                return listed;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the dropped attach was never recorded");
    assert_eq!(listed.len(), 1);
    let (version, bytes) = rt.document("C-9", "plan.pdf", None).await.unwrap();
    assert_eq!(bytes, b"plan v1".to_vec());
    let history = rt.history("C-9").await.unwrap();
    let attached = history
        .iter()
        .find(|event| matches!(event.record.kind, EventKind::DocumentAttached { .. }))
        .expect("the attach is in the history");
    assert_eq!(
        attached
            .record
            .actor
            .as_ref()
            .map(|actor| actor.id.as_str()),
        Some("cem"),
        "recorded with its actor"
    );
    assert_eq!(version.version, 1);
    rt.shutdown().await;
}
