//! The auditor's CLI on a database committed to the repository (`tests/golden/audit.redb`):
//! every read command's output is compared with a committed expectation, and copies of
//! the file tampered three ways are caught by `verify`, which names the altered event.
//!
//! `CAIRN_BLESS=1 cargo test --test cli_golden` rewrites the expectations from the
//! committed file (review the diff); `CAIRN_BLESS=db` also records the file again (its
//! run keys and hashes then change, and so do the expectations).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cairn::audit::EventRecord;
use cairn::store::InstanceRow;
use cairn::testing::VirtualClock;
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Actor, Ctx, Runtime, TaskKind, TaskQuery,
    WorkflowError,
};
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const INSTANCES: TableDefinition<u128, &[u8]> = TableDefinition::new("instances");

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Claim {
    employee: String,
    cents: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
struct Verdict {
    approve: bool,
    note: String,
}

const APPROVE: TaskKind<Claim, Verdict> = TaskKind::new("approve_claim");

#[activity(max_attempts = 3, initial_backoff = "1s")]
async fn book(ctx: ActivityCtx, claim: Claim) -> Result<String, ActivityError> {
    if ctx.attempt == 1 {
        return Err(ActivityError::retryable("the bank did not answer"));
    }
    Ok(format!(
        "booked {} cents for {}",
        claim.cents, claim.employee
    ))
}

#[workflow]
async fn expense_claim(ctx: Ctx, claim: Claim) -> Result<String, WorkflowError> {
    let task = APPROVE
        .task(claim.clone())
        .title(format!(
            "Claim of {} cents by {}",
            claim.cents, claim.employee
        ))
        .roles(["approver"]);
    let decided = ctx.human_task(task).await?;
    if !decided.decision.approve {
        return Err(WorkflowError::business("declined", decided.decision.note));
    }
    // A cooling-off hour before the money moves.
    ctx.sleep(Duration::from_secs(3600)).await?;
    Ok(ctx.activity(book, claim).await?)
}

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Records the committed database: three claims on virtual time from 2026-01-05 09:00
/// UTC, one approved (with a retried booking), one declined, one still waiting.
async fn record(path: &Path) {
    let _ = std::fs::remove_file(path);
    let clock = VirtualClock::new(UNIX_EPOCH + Duration::from_secs(1_767_603_600));
    let rt = Runtime::builder()
        .workflow(expense_claim)
        .clock(Arc::new(clock.clone()))
        .open(path)
        .await
        .unwrap();
    let april = Actor::new("april", ["approver"]);
    let claims = [("claim-1", "grace", 45_000), ("claim-2", "linus", 990_000)];
    let mut handles = Vec::new();
    for (id, employee, cents) in claims {
        let claim = Claim {
            employee: employee.into(),
            cents,
        };
        handles.push(rt.start(expense_claim, id, claim).await.unwrap());
    }
    rt.start(
        expense_claim,
        "claim-3",
        Claim {
            employee: "ada".into(),
            cents: 1_200,
        },
    )
    .await
    .unwrap();
    // Wait until the three tasks are open, then decide the first two.
    let open = loop {
        let page = rt.tasks(&TaskQuery::for_actor(&april)).await.unwrap();
        if page.rows.len() == 3 {
            break page.rows;
        }
        tokio::task::yield_now().await;
    };
    for row in open.iter().filter(|row| row.instance != "claim-3") {
        rt.claim(&april, &row.id()).await.unwrap();
        let verdict = Verdict {
            approve: row.instance == "claim-1",
            note: if row.instance == "claim-1" {
                "receipts in order".into()
            } else {
                "over the travel limit".into()
            },
        };
        rt.complete(&april, &row.id(), &verdict).await.unwrap();
    }
    // The cooling-off hour, then the booking's retry a second later.
    clock.skip_to_next_timer().await;
    clock.skip_to_next_timer().await;
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.result().await.unwrap());
    }
    assert!(results[0].is_ok(), "{results:?}");
    assert!(results[1].is_err(), "{results:?}");
    rt.shutdown().await;
}

fn cairn(path: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--db")
        .arg(path)
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The commands whose output is pinned, and the file each is compared with.
const PINNED: &[(&[&str], &str)] = &[
    (&["list"], "list.txt"),
    (&["list", "--status", "failed"], "list_failed.txt"),
    (&["show", "claim-1"], "show_claim-1.txt"),
    (&["history", "claim-1"], "history_claim-1.jsonl"),
    (&["verify"], "verify.txt"),
    (&["anchors", "export"], "anchors.jsonl"),
    // The hour of 2026-01-05 09:00 UTC: the starts and the decisions, not the bookings.
    (
        &[
            "export",
            "--since",
            "2026-01-05T09:00:00Z",
            "--until",
            "2026-01-05T09:30:00Z",
        ],
        "export_first_half_hour.jsonl",
    ),
];

#[tokio::test]
async fn the_committed_database_reads_as_recorded() {
    let dir = golden();
    let db = dir.join("audit.redb");
    let bless = std::env::var("CAIRN_BLESS").ok();
    if bless.as_deref() == Some("db") {
        record(&db).await;
    }
    // The tool reads a copy: the committed file is never opened by anything that writes.
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("audit.redb");
    std::fs::copy(&db, &copy).unwrap();
    for (args, file) in PINNED {
        let output = cairn(&copy, args);
        assert!(
            output.status.success(),
            "cairn {args:?}: {}",
            text(&output.stderr)
        );
        let got = text(&output.stdout);
        let expected_path = dir.join(file);
        if bless.is_some() {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap();
        assert_eq!(
            got,
            expected,
            "`cairn {}` differs from {file} (CAIRN_BLESS=1 rewrites it after a deliberate change)",
            args.join(" ")
        );
    }
    // Stats names the file it read; everything else is pinned.
    let stats = text(&cairn(&copy, &["stats"]).stdout);
    let stats: String = stats.lines().skip(1).map(|l| format!("{l}\n")).collect();
    if bless.is_some() {
        std::fs::write(dir.join("stats.txt"), &stats).unwrap();
    } else {
        assert_eq!(
            stats,
            std::fs::read_to_string(dir.join("stats.txt")).unwrap()
        );
    }
}

/// The key of `id`'s run and its events' LSNs in order, read straight from the file.
fn events_of(path: &Path, id: &str) -> (u128, Vec<(u64, EventRecord)>) {
    let db = redb::Database::open(path).unwrap();
    let read = db.begin_read().unwrap();
    let log = read.open_table(LOG).unwrap();
    let mut events: Vec<(u64, EventRecord)> = log
        .iter()
        .unwrap()
        .map(|entry| {
            let (lsn, bytes) = entry.unwrap();
            (lsn.value(), EventRecord::decode(bytes.value()).unwrap())
        })
        .collect();
    let key = events
        .iter()
        .find_map(|(_, record)| match &record.kind {
            cairn::audit::EventKind::WorkflowStarted { id: started, .. } if started == id => {
                Some(record.instance)
            }
            _ => None,
        })
        .unwrap();
    events.retain(|(_, record)| record.instance == key);
    events.sort_by_key(|(_, record)| record.seq);
    (key, events)
}

/// Overwrites the log entry at `lsn`.
fn write_event(path: &Path, lsn: u64, record: &EventRecord) -> Vec<u8> {
    let bytes = record.encode().unwrap();
    let db = redb::Database::open(path).unwrap();
    let write = db.begin_write().unwrap();
    {
        let mut log = write.open_table(LOG).unwrap();
        log.insert(lsn, bytes.as_slice()).unwrap();
    }
    write.commit().unwrap();
    bytes
}

/// The copy of the golden file a tamper test edits, and the untouched anchors.
fn tamper_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("audit.redb");
    std::fs::copy(golden().join("audit.redb"), &copy).unwrap();
    copy
}

fn lines(output: &Output) -> Vec<String> {
    text(&output.stdout).lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn an_edited_event_is_named_and_the_other_runs_are_reported_intact() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tamper_copy(dir.path());
    // Someone raises the approved amount in the start event of claim-1.
    let (_, events) = events_of(&copy, "claim-1");
    let (lsn, mut start) = events[0].clone();
    if let cairn::audit::EventKind::WorkflowStarted { input, .. } = &mut start.kind {
        let edited = String::from_utf8(input.data.clone())
            .unwrap()
            .replace("45000", "95000");
        input.data = edited.into_bytes();
    }
    write_event(&copy, lsn, &start);

    let verify = cairn(&copy, &["verify"]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify.stderr));
    let lines = lines(&verify);
    let fail = lines
        .iter()
        .find(|l| l.starts_with("FAIL  claim-1"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        fail.contains(&format!("event #0 (LSN {lsn})"))
            && fail.contains(
                "event #0 was altered: its hash no longer matches the one event #1 recorded"
            ),
        "{fail}"
    );
    // It went on: the other runs are checked and reported intact.
    for other in ["claim-2", "claim-3"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("ok    {other}"))),
            "{lines:#?}"
        );
    }
    assert_eq!(lines.last().unwrap(), "3 runs: 2 intact, 1 damaged");
    assert!(!text(&verify.stderr).contains("panicked"));

    // The damaged run is neither exported nor anchored as if it were evidence.
    let export = cairn(&copy, &["export"]);
    assert_eq!(export.status.code(), Some(1));
    assert!(text(&export.stderr).contains("run of `claim-1` not exported"));
    assert!(!text(&export.stdout).contains("\"claim-1\""));
    let anchors = cairn(&copy, &["anchors", "export"]);
    assert_eq!(anchors.status.code(), Some(1));
    assert!(text(&anchors.stderr).contains("run of `claim-1` not anchored"));
}

#[tokio::test]
async fn a_rewritten_chain_passes_alone_and_is_caught_by_the_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tamper_copy(dir.path());
    // The careful forger: edits the last event of claim-1 (its result) and rewrites the
    // row's head hash to match, so the chain alone is consistent again.
    let (key, events) = events_of(&copy, "claim-1");
    let (lsn, mut last) = events.last().unwrap().clone();
    if let cairn::audit::EventKind::WorkflowCompleted { output } = &mut last.kind {
        output.data = serde_json::to_vec("booked 95000 cents for grace").unwrap();
    } else {
        panic!("claim-1 ends with {:?}", last.kind);
    }
    let bytes = write_event(&copy, lsn, &last);
    {
        let db = redb::Database::open(&copy).unwrap();
        let write = db.begin_write().unwrap();
        {
            let mut instances = write.open_table(INSTANCES).unwrap();
            let stored = instances.get(key).unwrap().unwrap().value().to_vec();
            let mut row: InstanceRow = postcard::from_bytes(&stored[1..]).unwrap();
            row.head_hash = sha2::Sha256::digest(&bytes).into();
            let mut encoded = vec![stored[0]];
            encoded.extend(postcard::to_allocvec(&row).unwrap());
            instances.insert(key, encoded.as_slice()).unwrap();
        }
        write.commit().unwrap();
    }

    let plain = cairn(&copy, &["verify"]);
    assert!(plain.status.success(), "{}", text(&plain.stdout));

    let anchored = cairn(
        &copy,
        &[
            "verify",
            "--anchors",
            golden().join("anchors.jsonl").to_str().unwrap(),
        ],
    );
    assert_eq!(anchored.status.code(), Some(1));
    let lines = lines(&anchored);
    let seq = events.len() - 1;
    let fail = lines
        .iter()
        .find(|l| l.starts_with("FAIL  claim-1"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        fail.contains(&format!("event #{seq} (LSN {lsn}) differs from its anchor")),
        "{fail}"
    );
    assert_eq!(
        lines.last().unwrap(),
        "3 runs: 2 intact, 1 damaged; 3 checked against anchors, 0 anchored runs missing"
    );
}

#[tokio::test]
async fn a_removed_event_and_a_bad_anchors_file_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tamper_copy(dir.path());
    let (_, events) = events_of(&copy, "claim-2");
    let (lsn, _) = events[2];
    {
        let db = redb::Database::open(&copy).unwrap();
        let write = db.begin_write().unwrap();
        {
            let mut log = write.open_table(LOG).unwrap();
            log.remove(lsn).unwrap();
        }
        write.commit().unwrap();
    }
    let verify = cairn(&copy, &["verify", "--quiet"]);
    assert_eq!(verify.status.code(), Some(1));
    let lines = lines(&verify);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with("FAIL  claim-2")
            && lines[0].contains(&format!("LSN {lsn}"))
            && lines[0].contains("missing"),
        "{lines:#?}"
    );
    assert_eq!(lines[1], "3 runs: 2 intact, 1 damaged");

    let bad = dir.path().join("anchors.jsonl");
    std::fs::write(&bad, "{\"instance\":\"x\"}\n").unwrap();
    let refused = cairn(&copy, &["verify", "--anchors", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("line 1 is not an anchor"),
        "{}",
        text(&refused.stderr)
    );
    let time = cairn(&copy, &["export", "--since", "yesterday"]);
    assert_eq!(time.status.code(), Some(2));
    assert!(text(&time.stderr).contains("is not a time"));
}
