//! After a restart, what cannot run is parked with a clear, typed error and everything
//! else runs: an unknown workflow type, workflow code that no longer matches its
//! history, a recorded payload that no longer decodes, and damaged database files (those
//! are redb files on every run: the file is what they damage).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::OpenStore;

use std::time::Duration;

use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, Error, Runtime, Status, WorkflowError,
};

#[activity(name = "record")]
async fn record(_ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    Ok(n)
}

#[activity(name = "record")]
async fn record_as_text(_ctx: ActivityCtx, n: u32) -> Result<String, ActivityError> {
    Ok(n.to_string())
}

#[activity]
async fn record_b(_ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    Ok(n + 1)
}

#[activity]
async fn notify_customer(_ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    Ok(n)
}

/// Tells waiting tests which instance reached its gate.
static AT_GATE: std::sync::OnceLock<tokio::sync::broadcast::Sender<String>> =
    std::sync::OnceLock::new();

fn at_gate() -> &'static tokio::sync::broadcast::Sender<String> {
    AT_GATE.get_or_init(|| tokio::sync::broadcast::channel(256).0)
}

/// Never finishes: holds an instance mid-run so the host can stop with it unfinished.
#[activity]
async fn gate(ctx: ActivityCtx) -> Result<(), ActivityError> {
    let _ = at_gate().send(ctx.instance_id.to_string());
    std::future::pending().await
}

#[workflow(name = "approval")]
async fn approval_v1(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let a = ctx.activity(record, n).await?;
    let b = ctx.activity(record_b, a).await?;
    ctx.activity(gate, ()).await?;
    Ok(b)
}

/// v1 with step 2 replaced: a non-deterministic change for instances past step 2.
#[workflow(name = "approval")]
async fn approval_v2(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let a = ctx.activity(record, n).await?;
    let b = ctx.activity(notify_customer, a).await?;
    Ok(b)
}

/// v1 with step 1's result type changed from `u32` to `String`.
#[workflow(name = "approval")]
async fn approval_v3(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let a = ctx.activity(record_as_text, n).await?;
    Ok(a.len() as u32)
}

#[workflow]
async fn other_work(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    Ok(ctx.activity(record, n).await? * 2)
}

/// Runs `approval_v1` instance `id` up to its gate (3 events recorded), then stops the host.
async fn leave_unfinished(path: &std::path::Path, id: &str) {
    let mut reached = at_gate().subscribe();
    let rt = Runtime::builder()
        .workflow(approval_v1)
        .open_store(path)
        .await
        .unwrap();
    rt.start(approval_v1, id, 5).await.unwrap();
    let wait = async { while reached.recv().await.unwrap() != id {} };
    // A bound against a hang, not a timing assumption: the gate is reached in microseconds.
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("instance reached its gate");
    assert_eq!(rt.status(id).await.unwrap().events, 3);
    rt.shutdown().await;
}

async fn parked_error(rt: &Runtime, id: &str) -> Error {
    let err = rt.handle(approval_v1, id).result().await.unwrap_err();
    assert!(matches!(
        rt.status(id).await.unwrap().status,
        Status::Parked { .. }
    ));
    err
}

#[tokio::test]
async fn unknown_type_at_recovery_parks_that_instance_and_the_rest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    leave_unfinished(&path, "a-1").await;

    let rt = Runtime::builder()
        .workflow(other_work)
        .open_store(&path)
        .await
        .unwrap();
    let Status::Parked { reason, code } = rt.status("a-1").await.unwrap().status else {
        panic!("not parked")
    };
    assert_eq!(code, "CAIRN-E0003");
    assert!(
        reason.contains("approval") && reason.contains("a-1"),
        "{reason}"
    );
    assert_eq!(
        rt.start(other_work, "o-1", 4)
            .await
            .unwrap()
            .result()
            .await
            .unwrap(),
        Ok(8)
    );
    rt.shutdown().await;

    // Registering the type again lets it carry on from where it stopped.
    let rt = Runtime::builder()
        .workflow(approval_v1)
        .open_store(&path)
        .await
        .unwrap();
    assert_eq!(rt.status("a-1").await.unwrap().status, Status::Running);
    rt.shutdown().await;
}

#[tokio::test]
async fn changed_workflow_code_is_reported_as_non_determinism_at_the_first_divergent_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    leave_unfinished(&path, "a-2").await;
    let events_before = {
        let rt = Runtime::builder().open_store(&path).await.unwrap();
        let n = step_events(&rt, "a-2").await;
        rt.shutdown().await;
        n
    };

    let rt = Runtime::builder()
        .workflow(approval_v2)
        .open_store(&path)
        .await
        .unwrap();
    let err = parked_error(&rt, "a-2").await;
    let message = err.to_string();
    assert!(message.contains("CAIRN-E0001"), "{message}");
    assert!(
        message.contains("instance `a-2`") && message.contains("step 2"),
        "{message}"
    );
    assert!(
        message.contains("`record_b`") && message.contains("`notify_customer`"),
        "{message}"
    );
    assert_eq!(
        step_events(&rt, "a-2").await,
        events_before,
        "nothing is appended after a divergence but the note that parks it"
    );
    // The parking and its reason are in the history, for whoever reads it later.
    let mut spins = 0u32;
    while !rt.history("a-2").await.unwrap().iter().any(|e| {
        matches!(&e.record.kind, cairn::events::EventKind::WorkflowParked { code, .. } if code == "CAIRN-E0001")
    }) {
        spins += 1;
        assert!(spins < 1_000_000, "the parking was never recorded");
        tokio::task::yield_now().await;
    }
    rt.shutdown().await;
}

/// Events of `id` other than the host's parking notes.
async fn step_events(rt: &Runtime, id: &str) -> usize {
    rt.history(id)
        .await
        .unwrap()
        .iter()
        .filter(|e| {
            !matches!(
                e.record.kind,
                cairn::events::EventKind::WorkflowParked { .. }
            )
        })
        .count()
}

#[tokio::test]
async fn non_determinism_error_is_a_structured_diff() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    leave_unfinished(&path, "a-3").await;
    let rt = Runtime::builder()
        .workflow(approval_v2)
        .open_store(&path)
        .await
        .unwrap();
    let records: Vec<_> = rt
        .history("a-3")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record)
        .collect();
    let Err(Error::NonDeterminism(diff)) = rt.replay(&records).await else {
        panic!("expected a divergence")
    };
    assert_eq!(
        (
            diff.step,
            diff.instance.as_str(),
            diff.workflow_type.as_str()
        ),
        (2, "a-3", "approval")
    );
    assert_eq!(
        (diff.recorded.kind, diff.recorded.name.as_str()),
        ("activity", "record_b")
    );
    assert_eq!(
        (diff.requested.kind, diff.requested.name.as_str()),
        ("activity", "notify_customer")
    );
    assert_eq!(
        diff.diff(),
        vec!["name: recorded `record_b`, requested `notify_customer`".to_owned()]
    );
    rt.shutdown().await;
}

/// Written as a number, read back only from a string: an activity output that cannot make
/// the round trip through the codec.
#[derive(Debug)]
struct OneWay;

impl serde::Serialize for OneWay {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(7)
    }
}

impl<'de> serde::Deserialize<'de> for OneWay {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(deserializer).map(|_| OneWay)
    }
}

#[activity]
async fn one_way(_ctx: ActivityCtx, _n: u32) -> Result<OneWay, ActivityError> {
    Ok(OneWay)
}

#[workflow]
async fn reads_one_way(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    ctx.activity(one_way, n).await?;
    Ok(n)
}

/// The output is decoded inside the step, after the attempt and before its event is
/// recorded: one that does not decode parks the run with a typed error, and the
/// completed attempt is kept, not run again.
#[tokio::test]
async fn an_activity_output_that_does_not_decode_parks_the_run_and_its_outcome_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let rt = Runtime::builder()
        .workflow(reads_one_way)
        .open_store(&path)
        .await
        .unwrap();
    let handle = rt.start(reads_one_way, "o-1", 3).await.unwrap();
    let err = handle.result().await.unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0008", "{err}");
    let message = err.to_string();
    assert!(
        message.contains("CAIRN-E0002")
            && message.contains("`o-1`")
            && message.contains("step 1")
            && message.contains("OneWay"),
        "{message}"
    );
    assert!(matches!(
        rt.status("o-1").await.unwrap().status,
        Status::Parked { .. }
    ));
    // The parking is recorded without the run waiting for it; the bound is against a
    // hang, not a timing assumption.
    let kinds = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let history = rt.history("o-1").await.unwrap();
            let kinds: Vec<_> = history.iter().map(|e| e.record.kind.name()).collect();
            if kinds.len() >= 3 {
                return kinds;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the parking was recorded");
    assert_eq!(
        kinds,
        ["WorkflowStarted", "ActivityCompleted", "WorkflowParked"]
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_recorded_payload_that_no_longer_decodes_names_instance_step_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    leave_unfinished(&path, "a-4").await;
    let rt = Runtime::builder()
        .workflow(approval_v3)
        .open_store(&path)
        .await
        .unwrap();
    let message = parked_error(&rt, "a-4").await.to_string();
    assert!(message.contains("CAIRN-E0002"), "{message}");
    assert!(
        message.contains("`a-4`") && message.contains("step 1") && message.contains("String"),
        "{message}"
    );
    rt.shutdown().await;
}

fn populated_db(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("db.redb");
    let rt_path = path.clone();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let rt = Runtime::builder()
                    .workflow(other_work)
                    .open(&rt_path)
                    .await
                    .unwrap();
                for i in 0..20 {
                    rt.start(other_work, &format!("w-{i}"), i)
                        .await
                        .unwrap()
                        .result()
                        .await
                        .unwrap()
                        .unwrap();
                }
                rt.shutdown().await;
            })
    })
    .join()
    .unwrap();
    path
}

/// Opens a damaged file: it must end in a typed error or in a runtime whose every
/// history either verifies or reports corruption. Never a panic.
async fn open_damaged(path: &std::path::Path) -> Result<(), Error> {
    let rt = Runtime::builder().workflow(other_work).open(path).await?;
    let ids: Vec<_> = rt
        .list(&Default::default())
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    for id in ids {
        match rt.history(&id).await {
            Ok(_) | Err(Error::Corrupt { .. }) => {}
            Err(other) => panic!("unexpected error for {id}: {other}"),
        }
    }
    rt.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn damaged_files_give_typed_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = populated_db(dir.path());
    let bytes = std::fs::read(&good).unwrap();

    let not_redb = dir.path().join("notes.redb");
    std::fs::write(&not_redb, b"order-1,shipped\norder-2,pending\n".repeat(100)).unwrap();
    let err = open_damaged(&not_redb).await.unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0005", "{err}");
    assert!(err.to_string().contains("notes.redb"), "{err}");

    let zeroed = dir.path().join("zeroed.redb");
    std::fs::write(&zeroed, vec![0u8; bytes.len()]).unwrap();
    let err = open_damaged(&zeroed).await.unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0005", "{err}");

    for cut in [bytes.len() / 2, bytes.len() - 1, 100] {
        let truncated = dir.path().join(format!("truncated-{cut}.redb"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        if let Err(err) = open_damaged(&truncated).await {
            assert!(
                ["CAIRN-E0005", "CAIRN-E0004"].contains(&err.code()),
                "{err}"
            );
        }
    }
}

#[tokio::test]
async fn an_altered_event_is_detected_by_the_hash_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated_db(dir.path());
    // Change one byte inside the payload of instance w-3's first activity result, the
    // way a hand edit of the file would, leaving the envelope well-formed.
    {
        use redb::ReadableTable;
        const LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            let mut target = None;
            for entry in log.iter().unwrap() {
                let (lsn, bytes) = entry.unwrap();
                let event = cairn::events::EventRecord::decode(bytes.value()).unwrap();
                if let cairn::events::EventKind::ActivityCompleted { output, .. } = &event.kind {
                    if output.data == b"3" {
                        let mut altered = event.clone();
                        if let cairn::events::EventKind::ActivityCompleted { output, .. } =
                            &mut altered.kind
                        {
                            output.data = b"4".to_vec();
                        }
                        target = Some((lsn.value(), altered.encode().unwrap()));
                        break;
                    }
                }
            }
            let (lsn, altered) = target.expect("w-3's step is in the log");
            log.insert(lsn, altered.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let rt = Runtime::builder()
        .workflow(other_work)
        .open(&path)
        .await
        .unwrap();
    let err = rt.history("w-3").await.unwrap_err();
    assert_eq!(err.code(), "CAIRN-E0004", "{err}");
    assert!(err.to_string().contains("w-3"), "{err}");
    assert!(
        rt.history("w-4").await.is_ok(),
        "other instances still verify"
    );
    rt.shutdown().await;
}
