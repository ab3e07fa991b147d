//! The store conformance suite: what every [`Journal`] must do, checked through the
//! trait alone. A store passes it before the engine runs on it.
//!
//! A store's tests implement [`Subject`] (make an empty journal, reopen the same storage)
//! and expand [`journal_conformance!`](crate::journal_conformance) once, which makes one
//! `#[tokio::test]` per check so a failure names the promise it broke.
//!
//! The checks run with the listener and clock attached ([`attach`]), as the engine does.

// A check fails the way a test does: by panicking with what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use cairn_core::codec::Payload;
use cairn_core::error::Error;
use cairn_core::event::{AttrValue, EventKind, EVENT_BYTES_MAX};
use cairn_core::journal::{
    verify_history, Attachment, Carried, CommitListener, Committed, Cursor, Expect, InstanceQuery,
    InstanceRow, InstanceStatus, Journal, StoredEvent,
};
use cairn_core::journal::{CarriedSignal, Delivery, DeliveryAttempt, TaskQuery, TALLY_BUCKET_MS};
use cairn_core::schedule::{Recurrence, ScheduleRow};
use cairn_core::step::task;
use cairn_core::task::{Actor, Candidates, EscalationAction, EscalationTier, TaskChange, TaskSpec};

/// A store under test.
#[async_trait::async_trait]
pub trait Subject: Send + Sync {
    /// A new journal on empty storage.
    async fn create(&self) -> Arc<dyn Journal>;
    /// Closes `journal` and opens the same storage again: what a host sees after a
    /// restart.
    async fn reopen(&self, journal: Arc<dyn Journal>) -> Arc<dyn Journal>;
}

/// What the listener of a journal under test received: `(batch, effects)` in call order.
#[derive(Clone, Default)]
pub struct Heard(Arc<Mutex<Vec<Batch>>>);

/// One commit as the listener heard it: its number and its effects.
pub type Batch = (u64, Vec<Committed>);

impl Heard {
    /// Everything heard so far.
    pub fn batches(&self) -> Vec<Batch> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// The events heard for run `key`, as `(seq, kind name if reported)`.
    pub fn events_of(&self, key: u128) -> Vec<(u64, Option<&'static str>)> {
        self.batches()
            .into_iter()
            .flat_map(|(_, effects)| effects)
            .filter_map(|effect| match effect {
                Committed::Event {
                    key: k, seq, kind, ..
                } if k == key => Some((seq, kind.map(|kind| kind.name()))),
                _ => None,
            })
            .collect()
    }
}

impl CommitListener for Heard {
    fn committed(&self, batch: u64, effects: Vec<Committed>) {
        if let Ok(mut heard) = self.0.lock() {
            heard.push((batch, effects));
        }
    }
}

/// The fixed time the checks' journals record (ms since the Unix epoch).
pub const NOW_MS: u64 = 1_764_000_000_000;

/// Attaches a recording listener and a fixed clock to `journal`.
pub fn attach(journal: &dyn Journal) -> Heard {
    let heard = Heard::default();
    journal.attach(Attachment {
        listener: Arc::new(heard.clone()),
        now_ms: Arc::new(|| NOW_MS),
    });
    heard
}

/// An event over the size limit: every store refuses it whole.
fn oversized() -> EventKind {
    EventKind::SignalReceived {
        name: "document".into(),
        payload: Payload::new(0, vec![7; EVENT_BYTES_MAX + 1]),
    }
}

fn payload(text: &str) -> Payload {
    Payload::new(0, text.as_bytes().to_vec())
}

fn step_done(step: u32, output: &str) -> EventKind {
    EventKind::ActivityCompleted {
        step,
        activity: "reserve".into(),
        input: payload("in"),
        attempt: 1,
        output: payload(output),
    }
}

async fn start(journal: &dyn Journal, id: &str, workflow_type: &str) -> InstanceRow {
    let started = journal
        .start(id.into(), workflow_type.into(), payload("input"), None)
        .await
        .unwrap_or_else(|err| panic!("start `{id}`: {err}"));
    assert!(started.created, "`{id}` is new");
    started.row
}

async fn history(journal: &dyn Journal, key: u128) -> (InstanceRow, Vec<StoredEvent>) {
    let raw = journal
        .history(key)
        .await
        .unwrap_or_else(|err| panic!("history: {err}"))
        .unwrap_or_else(|| panic!("run {key:032x} has a history"));
    verify_history(raw).unwrap_or_else(|err| panic!("the history verifies: {err}"))
}

fn kinds(events: &[StoredEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.record.kind.name()).collect()
}

/// Starting is atomic and idempotent by id: the second start of an id finds the first
/// run and writes nothing; the row, the id index and the history agree.
pub async fn start_is_idempotent_by_id(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let first = start(journal.as_ref(), "order-1", "fulfil").await;
    assert_eq!(first.status, InstanceStatus::Running);
    assert_eq!(first.next_seq, 1);
    assert_eq!(
        first.created_at_ms, NOW_MS,
        "times come from the attached clock"
    );
    let commits = journal.commits();
    let again = journal
        .start("order-1".into(), "fulfil".into(), payload("other"), None)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.key, first.key);
    assert_eq!(journal.commits(), commits, "a found start writes nothing");
    assert_eq!(journal.key_of("order-1").await.unwrap(), Some(first.key));
    assert_eq!(journal.key_of("order-2").await.unwrap(), None);
    let (row, events) = history(journal.as_ref(), first.key).await;
    assert_eq!(row, first);
    assert_eq!(kinds(&events), ["WorkflowStarted"]);
    assert!(journal.history(u128::MAX).await.unwrap().is_none());
    assert!(journal.instance(u128::MAX).await.unwrap().is_none());
    journal.close();
}

/// Concurrent starts of one id make exactly one run.
pub async fn concurrent_starts_make_one_run(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let starts = (0..16).map(|n| {
        journal.start(
            "ticket-7".into(),
            "escalate".into(),
            payload(&n.to_string()),
            None,
        )
    });
    let all = futures::future::join_all(starts).await;
    let keys: BTreeSet<u128> = all.iter().map(|s| s.as_ref().unwrap().key).collect();
    let created = all.iter().filter(|s| s.as_ref().unwrap().created).count();
    assert_eq!(keys.len(), 1, "one run");
    assert_eq!(created, 1, "one of the starts created it");
    journal.close();
}

/// Appends land in order with gapless sequence numbers, the chain verifies, and the row
/// follows the head.
pub async fn appends_chain_in_order(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "loan-1", "approve").await;
    for step in 1..=5u32 {
        let appended = journal
            .append(row.key, step_done(step, "ok"), Expect::End)
            .await
            .unwrap();
        assert_eq!(appended.seq, u64::from(step));
    }
    let (head, events) = history(journal.as_ref(), row.key).await;
    assert_eq!(head.next_seq, 6);
    assert_eq!(events.len(), 6);
    assert_eq!(head.head_hash, events[5].hash);
    assert_eq!(head.head_lsn, events[5].lsn);
    assert_eq!(journal.instance(row.key).await.unwrap(), Some(head));
    journal.close();
}

/// An event sent without waiting (`append_sent`, a dropped step's abandonment) is
/// ordered before what the run appends next, and its ticket resolves once it is
/// durable, with where it landed; a dropped ticket withdraws nothing; an ended run
/// refuses it.
pub async fn sent_appends_keep_order_and_resolve_once_durable(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "loan-1", "approve").await;
    let sent = journal.append_sent(row.key, EventKind::StepAbandoned { step: 1 });
    drop(journal.append_sent(row.key, EventKind::StepAbandoned { step: 2 }));
    let next = journal
        .append(row.key, step_done(3, "after"), Expect::End)
        .await
        .unwrap();
    assert_eq!(next.seq, 3, "both sent events landed before it");
    let landed = sent.await.unwrap();
    assert_eq!(landed.seq, 1);
    let (_, events) = history(journal.as_ref(), row.key).await;
    assert_eq!(
        kinds(&events),
        [
            "WorkflowStarted",
            "StepAbandoned",
            "StepAbandoned",
            "ActivityCompleted"
        ]
    );
    journal
        .append(
            row.key,
            EventKind::WorkflowCompleted {
                output: payload("done"),
            },
            Expect::End,
        )
        .await
        .unwrap();
    let refused = journal
        .append_sent(row.key, EventKind::StepAbandoned { step: 4 })
        .await;
    assert!(refused.is_err(), "an ended run takes no more events");
    journal.close();
}

/// An append conditioned on the history's length lands only at that length; otherwise it
/// is refused with a typed conflict and nothing is written.
pub async fn a_conditional_append_conflicts_when_another_writer_was_first(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "permit-3", "review").await;
    let appended = journal
        .append(row.key, step_done(1, "a"), Expect::Seq(1))
        .await
        .unwrap();
    assert_eq!(appended.seq, 1);
    match journal
        .append(row.key, step_done(2, "stale"), Expect::Seq(1))
        .await
    {
        Err(Error::Conflict {
            instance,
            expected: 1,
            actual: 2,
        }) => assert_eq!(instance, "permit-3"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let (_, events) = history(journal.as_ref(), row.key).await;
    assert_eq!(events.len(), 2, "the refused append wrote nothing");

    // Racing writers on the same length: exactly one wins.
    let racers = (0..8)
        .map(|n| journal.append(row.key, step_done(2, &format!("racer-{n}")), Expect::Seq(2)));
    let results = futures::future::join_all(racers).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|err| matches!(err, Error::Conflict { .. })));
    let (_, events) = history(journal.as_ref(), row.key).await;
    assert_eq!(events.len(), 3);
    journal.close();
}

/// A run's end sets its status, takes it out of the running index, and makes its head
/// readable on its own; nothing more is appended to it.
pub async fn an_ended_run_takes_no_more_events(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "order-9", "fulfil").await;
    let other = start(journal.as_ref(), "order-10", "fulfil").await;
    journal
        .append(
            row.key,
            EventKind::WorkflowCompleted {
                output: payload("shipped"),
            },
            Expect::End,
        )
        .await
        .unwrap();
    let ended = journal.instance(row.key).await.unwrap().unwrap();
    assert_eq!(ended.status, InstanceStatus::Completed);
    let running: Vec<u128> = journal
        .running()
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(running, [other.key]);
    let head = journal.envelope(ended.head_lsn).await.unwrap().unwrap();
    assert_eq!(cairn_core::event::hash_envelope(&head), ended.head_hash);
    match journal
        .append(row.key, step_done(1, "late"), Expect::End)
        .await
    {
        Err(Error::InstanceFinished(id)) => assert_eq!(id, "order-9"),
        other => panic!("expected InstanceFinished, got {other:?}"),
    }
    assert_eq!(journal.instance(row.key).await.unwrap(), Some(ended));
    journal.close();
}

/// `append_after` writes both events in order and answers for the second; when the
/// first is refused, nothing is written (the engine commits a run's last activity
/// result and its end this way: an end must never be recorded without its result).
pub async fn append_after_writes_both_or_neither(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "quote-1", "price").await;
    let done = |text: &str| EventKind::WorkflowCompleted {
        output: payload(text),
    };
    let appended = journal
        .append_after(row.key, step_done(1, "priced"), done("quoted"))
        .await
        .unwrap();
    assert_eq!(appended.seq, 2);
    let (head, events) = history(journal.as_ref(), row.key).await;
    assert_eq!(events.len(), 3);
    assert_eq!(head.status, InstanceStatus::Completed);
    match journal
        .append_after(row.key, step_done(2, "late"), done("again"))
        .await
    {
        Err(Error::InstanceFinished(id)) => assert_eq!(id, "quote-1"),
        other => panic!("expected InstanceFinished, got {other:?}"),
    }
    let other = start(journal.as_ref(), "quote-2", "price").await;
    let huge = oversized();
    match journal.append_after(other.key, huge, done("cheap")).await {
        Err(Error::PayloadTooLarge { instance, .. }) => assert_eq!(instance, "quote-2"),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(journal.instance(other.key).await.unwrap(), Some(other));
    journal.close();
}

/// A store that queues appends orders a queued event before the run's later events,
/// answers it once durable, and after refusing one refuses the run's later events (a
/// run goes on before its queued result is durable, so nothing it appends later may
/// land without it). A store that does not queue refuses at once and writes nothing.
pub async fn queued_appends_keep_order_and_a_refusal_lasts(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "batch-1", "ship").await;
    if !journal.queues_appends() {
        assert!(journal
            .append_queued(row.key, step_done(1, "one"))
            .await
            .is_err());
        assert_eq!(journal.instance(row.key).await.unwrap(), Some(row));
        journal.close();
        return;
    }
    let first = journal.append_queued(row.key, step_done(1, "one"));
    let second = journal
        .append(row.key, step_done(2, "two"), Expect::End)
        .await
        .unwrap();
    assert_eq!(second.seq, 2);
    assert_eq!(first.await.unwrap().seq, 1);
    // A ticket dropped unpolled, and an `append_after` dropped after its first poll,
    // withdraw nothing: the queue has them, and the next append lands after them.
    drop(journal.append_queued(row.key, step_done(3, "dropped ticket")));
    {
        let after = journal.append_after(
            row.key,
            step_done(4, "dropped pair"),
            step_done(5, "dropped pair"),
        );
        futures::pin_mut!(after);
        assert!(futures::poll!(after.as_mut()).is_pending());
    }
    let sixth = journal
        .append(row.key, step_done(6, "six"), Expect::End)
        .await
        .unwrap();
    assert_eq!(sixth.seq, 6);
    let (_, events) = history(journal.as_ref(), row.key).await;
    assert_eq!(events.len(), 7);

    let huge = oversized();
    let refused = journal.append_queued(row.key, huge);
    let later = journal
        .append(row.key, step_done(7, "seven"), Expect::End)
        .await;
    assert!(
        matches!(refused.await, Err(Error::PayloadTooLarge { .. })),
        "the oversized event is refused"
    );
    assert!(
        matches!(later, Err(Error::PayloadTooLarge { .. })),
        "so is the run's next event: {later:?}"
    );
    let (_, events) = history(journal.as_ref(), row.key).await;
    assert_eq!(events.len(), 7);
    // Nor may the run be put to sleep on it: it must stop and be parked.
    assert!(!journal.suspend(row.key, 7, None).await.unwrap());
    // What comes from outside, or stops the run, is still taken.
    journal
        .append(
            row.key,
            EventKind::SignalReceived {
                name: "nudge".into(),
                payload: payload("now"),
            },
            Expect::End,
        )
        .await
        .unwrap();
    journal
        .append(
            row.key,
            EventKind::WorkflowTerminated {
                reason: "refused result".into(),
            },
            Expect::End,
        )
        .await
        .unwrap();
    // Other runs are not affected.
    let other = start(journal.as_ref(), "batch-2", "ship").await;
    journal
        .append(other.key, step_done(1, "fine"), Expect::End)
        .await
        .unwrap();
    journal.close();
}

/// A payload over the event limit is refused with a typed error and nothing is written.
pub async fn an_oversized_event_is_refused_whole(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "doc-1", "archive").await;
    let huge = oversized();
    match journal.append(row.key, huge, Expect::End).await {
        Err(Error::PayloadTooLarge { instance, .. }) => assert_eq!(instance, "doc-1"),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    match journal
        .start(
            "doc-2".into(),
            "archive".into(),
            Payload::new(0, vec![7; EVENT_BYTES_MAX + 1]),
            None,
        )
        .await
    {
        Err(Error::PayloadTooLarge { .. }) => {}
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(journal.key_of("doc-2").await.unwrap(), None);
    assert_eq!(journal.instance(row.key).await.unwrap(), Some(row));
    journal.close();
}

/// The suspension hint is set only at the expected length and cleared by the run's next
/// event; the running index reports it.
pub async fn suspension_is_conditional_and_cleared_by_the_next_event(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "sleepy", "remind").await;
    assert!(
        !journal
            .suspend(row.key, 5, Some(NOW_MS + 60_000))
            .await
            .unwrap(),
        "refused at the wrong length"
    );
    assert!(journal
        .suspend(row.key, 1, Some(NOW_MS + 60_000))
        .await
        .unwrap());
    let hint = |running: Vec<(u128, Option<cairn_core::journal::Suspension>)>| {
        running
            .into_iter()
            .find(|(key, _)| *key == row.key)
            .and_then(|(_, hint)| hint)
    };
    assert_eq!(
        hint(journal.running().await.unwrap()).map(|h| h.wake_at_ms),
        Some(Some(NOW_MS + 60_000))
    );
    journal
        .append(
            row.key,
            EventKind::SignalReceived {
                name: "nudge".into(),
                payload: payload("now"),
            },
            Expect::End,
        )
        .await
        .unwrap();
    assert_eq!(hint(journal.running().await.unwrap()), None);
    assert_eq!(
        journal.instance(row.key).await.unwrap().unwrap().suspended,
        None
    );
    journal.close();
}

/// Continue-as-new ends the run and starts the next with the carried messages in one
/// commit, moves the id, and is refused (nothing written) when the history grew.
pub async fn continue_as_new_hands_over_atomically(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "meter", "count").await;
    let stale = Carried {
        expected_next_seq: 0,
        signals: Vec::new(),
        cancel: None,
        run: 1,
    };
    assert_eq!(
        journal
            .continue_as_new(row.key, payload("next"), stale)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        journal.instance(row.key).await.unwrap().unwrap().next_seq,
        1
    );
    let carried = Carried {
        expected_next_seq: 1,
        signals: vec![
            CarriedSignal {
                name: "reading".into(),
                payload: payload("42"),
                key: None,
                actor: None,
            },
            CarriedSignal {
                name: "correction".into(),
                payload: payload("41"),
                key: Some("c-1".into()),
                actor: Some(Actor::new("meter-reader", ["field"])),
            },
        ],
        cancel: Some("stop".into()),
        run: 1,
    };
    let next = journal
        .continue_as_new(row.key, payload("next"), carried)
        .await
        .unwrap()
        .expect("handed over");
    let old = journal.instance(row.key).await.unwrap().unwrap();
    assert_eq!(old.status, InstanceStatus::ContinuedAsNew);
    assert_eq!(journal.key_of("meter").await.unwrap(), Some(next));
    let (new_row, events) = history(journal.as_ref(), next).await;
    assert_eq!(new_row.id, "meter");
    assert_eq!(
        kinds(&events),
        [
            "WorkflowStarted",
            "RunContinued",
            "SignalReceived",
            "KeyedSignalReceived",
            "CancelRequested"
        ]
    );
    // A carried signal keeps its key and its sender.
    assert_eq!(
        events[3].record.actor,
        Some(Actor::new("meter-reader", ["field"]))
    );
    assert!(matches!(
        &events[3].record.kind,
        EventKind::KeyedSignalReceived { key, .. } if key == "c-1"
    ));
    match &events[1].record.kind {
        EventKind::RunContinued { previous_run, run } => {
            assert_eq!((*previous_run, *run), (row.key, 2));
        }
        other => panic!("{other:?}"),
    }
    let (_, old_events) = history(journal.as_ref(), row.key).await;
    match &old_events.last().unwrap().record.kind {
        EventKind::WorkflowContinuedAsNew { next_run, .. } => assert_eq!(*next_run, next),
        other => panic!("{other:?}"),
    }
    journal.close();
}

/// Schedules are stored, replaced only while unchanged (compare-and-set), and deleted.
pub async fn schedules_compare_and_set(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = |next_fire_ms| ScheduleRow {
        workflow_type: "report".into(),
        input: payload("daily"),
        recurrence: Recurrence::EveryMs(86_400_000),
        next_fire_ms,
        paused: None,
    };
    assert!(journal
        .schedule("nightly".into(), Some(row(1)), None)
        .await
        .unwrap());
    assert!(
        !journal
            .schedule("nightly".into(), Some(row(3)), Some(row(2)))
            .await
            .unwrap(),
        "changed meanwhile: refused"
    );
    assert!(journal
        .schedule("nightly".into(), Some(row(2)), Some(row(1)))
        .await
        .unwrap());
    assert_eq!(
        journal.schedules().await.unwrap(),
        [("nightly".to_owned(), row(2))]
    );
    assert!(journal
        .schedule("nightly".into(), None, None)
        .await
        .unwrap());
    assert!(!journal
        .schedule("nightly".into(), None, None)
        .await
        .unwrap());
    assert!(journal.schedules().await.unwrap().is_empty());
    journal.close();
}

/// A parking note is indexed until the run's next event.
pub async fn parking_is_indexed_until_the_next_event(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "stuck", "price").await;
    journal
        .append(
            row.key,
            EventKind::WorkflowParked {
                code: "CAIRN-E0015".into(),
                reason: "panicked".into(),
            },
            Expect::End,
        )
        .await
        .unwrap();
    let parked = journal.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].0, row.key);
    assert_eq!(parked[0].1.code, "CAIRN-E0015");
    assert_eq!(parked[0].1.at_ms, NOW_MS);
    journal
        .append(row.key, step_done(1, "fixed"), Expect::End)
        .await
        .unwrap();
    assert!(journal.parked().await.unwrap().is_empty());
    journal.close();
}

/// Search attributes merge by name, and queries find runs by them.
pub async fn attributes_merge_and_are_queried(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let a = start(journal.as_ref(), "a", "claim").await;
    let b = start(journal.as_ref(), "b", "claim").await;
    let set = |step, attributes: Vec<(&str, AttrValue)>| EventKind::AttributesSet {
        step,
        attributes: attributes
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    };
    journal
        .append(
            a.key,
            set(
                1,
                vec![("region", "north".into()), ("tier", AttrValue::Int(1))],
            ),
            Expect::End,
        )
        .await
        .unwrap();
    journal
        .append(
            a.key,
            set(2, vec![("tier", AttrValue::Int(2))]),
            Expect::End,
        )
        .await
        .unwrap();
    journal
        .append(b.key, set(1, vec![("region", "south".into())]), Expect::End)
        .await
        .unwrap();
    let held = journal.attributes(a.key).await.unwrap();
    assert_eq!(held.get("region"), Some(&AttrValue::from("north")));
    assert_eq!(held.get("tier"), Some(&AttrValue::Int(2)));
    let found = |attributes: Vec<(&str, AttrValue)>| {
        let journal = journal.clone();
        let query = InstanceQuery {
            attributes: attributes
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v))
                .collect(),
            ..InstanceQuery::default()
        };
        async move {
            let page = journal.query(&query).await.unwrap();
            page.rows.into_iter().map(|r| r.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(found(vec![("region", "north".into())]).await, ["a"]);
    assert_eq!(
        found(vec![("tier", AttrValue::Int(1))]).await,
        Vec::<String>::new()
    );
    assert_eq!(
        found(vec![
            ("tier", AttrValue::Int(2)),
            ("region", "north".into())
        ])
        .await,
        ["a"]
    );
    assert_eq!(found(vec![("region", "south".into())]).await, ["b"]);
    assert_eq!(journal.attributes(u128::MAX).await.unwrap().len(), 0);
    journal.close();
}

/// Queries filter by type, status and start time, oldest first, and their pages cover
/// every match exactly once.
pub async fn queries_filter_and_page(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let mut expected_orders = Vec::new();
    for n in 0..25 {
        let kind = if n % 5 == 0 { "audit" } else { "order" };
        let row = start(journal.as_ref(), &format!("{kind}-{n:02}"), kind).await;
        if n % 3 == 0 {
            journal
                .append(
                    row.key,
                    EventKind::WorkflowFailed {
                        error: payload("no stock"),
                    },
                    Expect::End,
                )
                .await
                .unwrap();
        } else if kind == "order" {
            expected_orders.push(row.id);
        }
    }
    let query = InstanceQuery {
        workflow_type: Some("order".into()),
        statuses: vec![InstanceStatus::Running],
        limit: 3,
        ..InstanceQuery::default()
    };
    let mut seen = Vec::new();
    let mut query = query;
    let mut pages = 0;
    loop {
        let page = journal.query(&query).await.unwrap();
        assert!(page.rows.len() <= 3, "a page respects its limit");
        pages += 1;
        seen.extend(page.rows.iter().map(|r| r.id.clone()));
        match page.next {
            Some(next) => {
                assert_eq!(
                    Some(next),
                    page.rows.last().map(Cursor::after),
                    "the cursor is the page's last row"
                );
                query.after = Some(next);
            }
            None => break,
        }
        assert!(pages < 100, "paging ends");
    }
    assert_eq!(seen, expected_orders, "every match once, oldest first");

    let failed = journal
        .query(&InstanceQuery {
            statuses: vec![InstanceStatus::Failed],
            ..InstanceQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.rows.len(), 9);
    assert!(failed.next.is_none());
    let none_yet = journal
        .query(&InstanceQuery {
            created_until_ms: Some(NOW_MS),
            ..InstanceQuery::default()
        })
        .await
        .unwrap();
    assert!(none_yet.rows.is_empty(), "all started at NOW_MS");
    let all_now = journal
        .query(&InstanceQuery {
            created_from_ms: Some(NOW_MS),
            created_until_ms: Some(NOW_MS + 1),
            ..InstanceQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all_now.rows.len(), 25);

    // Several statuses, and none (every status), read as one list in start order, paged.
    let every = every_page(
        journal.as_ref(),
        InstanceQuery {
            limit: 4,
            ..InstanceQuery::default()
        },
    )
    .await;
    assert_eq!(every.len(), 25);
    assert!(
        every
            .windows(2)
            .all(|pair| Cursor::after(&pair[0]) < Cursor::after(&pair[1])),
        "oldest first, each run once"
    );
    let either = every_page(
        journal.as_ref(),
        InstanceQuery {
            statuses: vec![InstanceStatus::Failed, InstanceStatus::Running],
            limit: 4,
            ..InstanceQuery::default()
        },
    )
    .await;
    assert_eq!(either, every, "running or failed: every run here");
    let ended = every_page(
        journal.as_ref(),
        InstanceQuery {
            statuses: vec![InstanceStatus::Completed, InstanceStatus::Failed],
            limit: 2,
            ..InstanceQuery::default()
        },
    )
    .await;
    let failed: Vec<_> = every
        .iter()
        .filter(|row| row.status == InstanceStatus::Failed)
        .cloned()
        .collect();
    assert_eq!(ended, failed, "none completed");
    journal.close();
}

/// Every row `query` matches, page after page.
async fn every_page(journal: &dyn Journal, mut query: InstanceQuery) -> Vec<InstanceRow> {
    let mut rows = Vec::new();
    for _ in 0..100 {
        let page = journal.query(&query).await.unwrap();
        rows.extend(page.rows);
        match page.next {
            Some(next) => query.after = Some(next),
            None => return rows,
        }
    }
    panic!("paging did not end");
}

/// A journal that keeps tallies ([`Journal::tallies`]) keeps them equal to what its
/// queries count, in the commits that start and end runs; one that keeps none says so.
pub async fn tallies_agree_with_the_runs(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    for n in 0..12 {
        let kind = if n % 4 == 0 { "audit" } else { "order" };
        let row = start(journal.as_ref(), &format!("{kind}-{n:02}"), kind).await;
        let end = match n % 3 {
            0 => Some(EventKind::WorkflowFailed {
                error: payload("no stock"),
            }),
            1 => Some(EventKind::WorkflowCompleted {
                output: payload("shipped"),
            }),
            _ => None,
        };
        if let Some(end) = end {
            journal.append(row.key, end, Expect::End).await.unwrap();
        }
    }
    let Some(tallies) = journal.tallies(0).await.unwrap() else {
        journal.close();
        return;
    };
    let mut counted = std::collections::BTreeMap::new();
    let mut query = InstanceQuery::default();
    loop {
        let page = journal.query(&query).await.unwrap();
        for row in &page.rows {
            *counted
                .entry((row.workflow_type.clone(), row.status))
                .or_insert(0u64) += 1;
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(tallies.by_status, counted, "counts by type and status");
    let bucket = cairn_core::journal::tally_bucket(NOW_MS);
    let bucket_of = |workflow_type: &str, started: u64, completed: u64, failed: u64| {
        cairn_core::journal::ActivityBucket {
            workflow_type: workflow_type.to_owned(),
            at_ms: bucket,
            started,
            ended: [
                (InstanceStatus::Completed, completed),
                (InstanceStatus::Failed, failed),
            ]
            .into_iter()
            .collect(),
        }
    };
    assert_eq!(
        tallies.activity,
        vec![bucket_of("audit", 3, 1, 1), bucket_of("order", 9, 3, 3)],
        "runs started and ended in the one bucket of NOW_MS"
    );
    let later = journal
        .tallies(NOW_MS + TALLY_BUCKET_MS)
        .await
        .unwrap()
        .unwrap();
    assert!(
        later.activity.is_empty(),
        "no activity asked before the bucket"
    );
    assert_eq!(
        later.by_status, counted,
        "counts do not depend on the bucket"
    );
    journal.close();
}

/// The listener hears every commit's effects in commit order, numbered like
/// [`Journal::commits`], before the write's future returns.
pub async fn the_listener_hears_every_commit_in_order(subject: &dyn Subject) {
    let journal = subject.create().await;
    let heard = attach(journal.as_ref());
    let row = start(journal.as_ref(), "order-5", "fulfil").await;
    let before_reply = heard.batches().len();
    assert!(
        before_reply >= 1,
        "the start was heard before start returned"
    );
    journal
        .append(
            row.key,
            EventKind::SignalReceived {
                name: "paid".into(),
                payload: payload("12.00"),
            },
            Expect::End,
        )
        .await
        .unwrap();
    journal
        .append(row.key, step_done(1, "ok"), Expect::End)
        .await
        .unwrap();
    assert_eq!(
        heard.events_of(row.key),
        [
            (0, Some("WorkflowStarted")),
            (1, Some("SignalReceived")),
            (2, None)
        ]
    );
    let numbers: Vec<u64> = heard.batches().iter().map(|(n, _)| *n).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert_eq!(numbers.last().copied(), Some(journal.commits()));
    journal.close();
}

/// Everything acknowledged is there after a reopen, byte for byte.
pub async fn acknowledged_writes_survive_a_reopen(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "order-1", "fulfil").await;
    journal
        .append(row.key, step_done(1, "reserved"), Expect::End)
        .await
        .unwrap();
    assert!(journal.suspend(row.key, 2, None).await.unwrap());
    let schedule = ScheduleRow {
        workflow_type: "report".into(),
        input: payload("x"),
        recurrence: Recurrence::EveryMs(1_000),
        next_fire_ms: 5,
        paused: None,
    };
    journal
        .schedule("s".into(), Some(schedule.clone()), None)
        .await
        .unwrap();
    let (before_row, before) = history(journal.as_ref(), row.key).await;
    let journal = subject.reopen(journal).await;
    attach(journal.as_ref());
    let (after_row, after) = history(journal.as_ref(), row.key).await;
    assert_eq!(after_row, before_row);
    let envelopes = |events: &[StoredEvent]| {
        events
            .iter()
            .map(|e| (e.lsn, e.hash, e.record.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(envelopes(&after), envelopes(&before));
    assert_eq!(
        journal.running().await.unwrap(),
        [(
            row.key,
            Some(cairn_core::journal::Suspension { wake_at_ms: None })
        )]
    );
    assert_eq!(journal.schedules().await.unwrap(), [("s".into(), schedule)]);
    // The reopened journal carries on the chain.
    let appended = journal
        .append(row.key, step_done(2, "invoiced"), Expect::Seq(2))
        .await
        .unwrap();
    assert_eq!(appended.seq, 2);
    history(journal.as_ref(), row.key).await;
    journal.close();
}

/// After `close`, writes are refused with `ShutDown`.
pub async fn a_closed_journal_refuses_writes(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "x", "y").await;
    journal.close();
    match journal
        .append(row.key, step_done(1, "late"), Expect::End)
        .await
    {
        Err(Error::ShutDown) => {}
        other => panic!("expected ShutDown, got {other:?}"),
    }
}

fn task_spec(name: &str, roles: &[&str]) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        title: format!("{name} title"),
        description: String::new(),
        input: payload("{}"),
        decision_schema: "{}".into(),
        candidates: Candidates {
            users: vec![],
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        },
        assignee: None,
        priority: 1,
        due_at_ms: Some(NOW_MS + 10),
        follow_up_at_ms: None,
        escalation: vec![EscalationTier {
            at_ms: NOW_MS + 10,
            action: EscalationAction::Reassign(Candidates {
                users: vec![],
                roles: vec!["senior".into()],
            }),
        }],
    }
}

async fn listed(journal: &dyn Journal, query: TaskQuery) -> Vec<(String, u32)> {
    let mut query = query;
    let mut out = Vec::new();
    loop {
        let page = journal.tasks(&query).await.unwrap();
        out.extend(page.rows.iter().map(|row| (row.instance.clone(), row.step)));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return out,
        }
    }
}

/// Open tasks are indexed from their events in the same commit: listed for their
/// candidates' roles and names, then only for their holder once claimed, moved by a
/// reassigning escalation, and gone when completed, cancelled, abandoned or when their
/// run ends; each is listed once in an inbox that reaches it several ways; the index
/// survives a reopen.
pub async fn open_tasks_are_indexed_from_their_events(subject: &dyn Subject) {
    let journal = subject.create().await;
    attach(journal.as_ref());
    let a = start(journal.as_ref(), "case-a", "permit").await;
    let b = start(journal.as_ref(), "case-b", "loan").await;
    let append = |key: u128, kind: EventKind| {
        let journal = journal.clone();
        async move { journal.append(key, kind, Expect::End).await.unwrap() }
    };
    append(a.key, task::created(1, task_spec("review", &["planning"]))).await;
    append(
        a.key,
        task::created(2, task_spec("fire", &["fire", "planning"])),
    )
    .await;
    append(
        b.key,
        task::created(1, task_spec("underwrite", &["credit"])),
    )
    .await;
    append(b.key, task::created(2, task_spec("sign", &["credit"]))).await;

    let planner = Actor::new("pia", ["planning", "fire"]);
    assert_eq!(
        listed(journal.as_ref(), TaskQuery::for_actor(&planner)).await,
        [("case-a".to_owned(), 1), ("case-a".to_owned(), 2)],
        "a task reachable by two roles is listed once"
    );
    assert_eq!(
        listed(journal.as_ref(), TaskQuery::default()).await.len(),
        4
    );
    let loans = TaskQuery {
        workflow_type: Some("loan".into()),
        limit: 1,
        ..TaskQuery::default()
    };
    assert_eq!(
        listed(journal.as_ref(), loans).await,
        [("case-b".to_owned(), 1), ("case-b".to_owned(), 2)],
        "filters and one-row pages"
    );

    let pia = Actor::new("pia", ["planning"]);
    append(
        a.key,
        EventKind::TaskChanged {
            step: 1,
            actor: pia.clone(),
            change: TaskChange::Claimed,
        },
    )
    .await;
    let held = journal.task(a.key, 1).await.unwrap().unwrap();
    assert_eq!(held.assignee.as_deref(), Some("pia"));
    let other = Actor::new("otto", ["planning"]);
    assert_eq!(
        listed(journal.as_ref(), TaskQuery::for_actor(&other)).await,
        [("case-a".to_owned(), 2)],
        "a held task leaves the candidates' inboxes"
    );
    assert_eq!(
        listed(journal.as_ref(), TaskQuery::for_actor(&pia)).await,
        [("case-a".to_owned(), 1), ("case-a".to_owned(), 2)]
    );

    append(
        a.key,
        EventKind::TaskChanged {
            step: 1,
            actor: Actor::new("cairn", Vec::<String>::new()),
            change: TaskChange::Escalated {
                tier: 0,
                reassigned: Some(Candidates {
                    users: vec![],
                    roles: vec!["senior".into()],
                }),
            },
        },
    )
    .await;
    let escalated = journal.task(a.key, 1).await.unwrap().unwrap();
    assert_eq!(
        (escalated.assignee.clone(), escalated.escalations),
        (None, 1)
    );
    let senior = Actor::new("sam", ["senior"]);
    assert_eq!(
        listed(journal.as_ref(), TaskQuery::for_actor(&senior)).await,
        [("case-a".to_owned(), 1)]
    );

    append(
        a.key,
        EventKind::TaskCompleted {
            step: 1,
            actor: senior.clone(),
            decision: payload("true"),
            escalation: None,
        },
    )
    .await;
    append(a.key, EventKind::StepAbandoned { step: 2 }).await;
    assert!(journal.task(a.key, 1).await.unwrap().is_none());
    assert!(listed(journal.as_ref(), TaskQuery::for_actor(&planner))
        .await
        .is_empty());

    append(b.key, EventKind::CancelRequested { reason: "x".into() }).await;
    append(
        b.key,
        EventKind::StepCancelled {
            step: 1,
            step_kind: "task".into(),
            name: "underwrite".into(),
            reason: "x".into(),
        },
    )
    .await;
    let journal = subject.reopen(journal).await;
    attach(journal.as_ref());
    assert_eq!(
        listed(journal.as_ref(), TaskQuery::default()).await,
        [("case-b".to_owned(), 2)],
        "the index survives a reopen"
    );
    journal
        .append(
            b.key,
            EventKind::WorkflowTerminated {
                reason: "done".into(),
            },
            Expect::End,
        )
        .await
        .unwrap();
    assert!(listed(journal.as_ref(), TaskQuery::default())
        .await
        .is_empty());
    journal.close();
}

/// Events that call for a notification (a task created, a failure, a workflow's own)
/// put it in the outbox in their commit, numbered uniquely; an attempt is recorded with
/// where the delivery stands, and only pending notifications are due, by their time; the
/// outbox survives a reopen.
pub async fn notifications_are_kept_in_an_outbox(subject: &dyn Subject) {
    let journal = subject.create().await;
    let heard = attach(journal.as_ref());
    let a = start(journal.as_ref(), "claim-a", "claim").await;
    let b = start(journal.as_ref(), "claim-b", "claim").await;
    journal
        .append(
            a.key,
            task::created(1, task_spec("check", &["clerk"])),
            Expect::End,
        )
        .await
        .unwrap();
    journal
        .append(a.key, step_done(2, "no notification"), Expect::End)
        .await
        .unwrap();
    journal
        .append(
            b.key,
            EventKind::Notified {
                step: 1,
                topic: "claim.received".into(),
                body: payload(r#"{"who":"ann"}"#),
            },
            Expect::End,
        )
        .await
        .unwrap();
    journal
        .append(
            b.key,
            EventKind::WorkflowFailed {
                error: payload(r#""declined""#),
            },
            Expect::End,
        )
        .await
        .unwrap();
    let heard_outbox = heard
        .batches()
        .iter()
        .flat_map(|(_, effects)| effects)
        .filter(|effect| matches!(effect, Committed::Outbox))
        .count();
    assert_eq!(
        heard_outbox, 3,
        "each notification's commit tells the listener"
    );

    let all = journal.outbox(None, 100).await.unwrap();
    let topics: Vec<(&str, &str)> = all
        .iter()
        .map(|row| {
            (
                row.notification.instance.as_str(),
                row.notification.topic.name(),
            )
        })
        .collect();
    assert_eq!(
        topics,
        [
            ("claim-a", "task.created"),
            ("claim-b", "claim.received"),
            ("claim-b", "instance.failed")
        ]
    );
    assert_eq!(all[1].notification.body, r#"{"who":"ann"}"#);
    assert_eq!(all[1].notification.step, Some(1));
    assert!(all.iter().all(|row| row.attempts.is_empty()
        && row.delivery
            == Delivery::Pending {
                next_attempt_ms: NOW_MS
            }));
    let ids: BTreeSet<u64> = all.iter().map(|row| row.notification.id).collect();
    assert_eq!(ids.len(), 3, "ids are unique");
    let page = journal
        .outbox(Some(all[0].notification.id), 1)
        .await
        .unwrap();
    assert_eq!(page, all[1..2], "paged by id");

    let (due, next) = journal.outbox_due(NOW_MS, 10).await.unwrap();
    assert_eq!((due.len(), next), (3, None));
    let (first, _) = journal.outbox_due(NOW_MS, 1).await.unwrap();
    assert_eq!(first.len(), 1, "at most the limit");

    let failed = DeliveryAttempt {
        at_ms: NOW_MS,
        error: Some("receiver down".into()),
    };
    let retry_at = NOW_MS + 1_000;
    journal
        .outbox_attempted(
            all[0].notification.id,
            failed.clone(),
            Delivery::Pending {
                next_attempt_ms: retry_at,
            },
        )
        .await
        .unwrap();
    let delivered = DeliveryAttempt {
        at_ms: NOW_MS,
        error: None,
    };
    journal
        .outbox_attempted(
            all[1].notification.id,
            delivered.clone(),
            Delivery::Delivered,
        )
        .await
        .unwrap();
    journal
        .outbox_attempted(all[2].notification.id, failed.clone(), Delivery::GaveUp)
        .await
        .unwrap();
    let (due, next) = journal.outbox_due(NOW_MS, 10).await.unwrap();
    assert!(due.is_empty(), "the retry is not due yet: {due:?}");
    assert_eq!(next, Some(retry_at));
    let (due, _) = journal.outbox_due(retry_at, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, std::slice::from_ref(&failed));
    assert!(
        journal
            .outbox_attempted(u64::MAX - 1, delivered.clone(), Delivery::Delivered)
            .await
            .is_err(),
        "an unknown notification is refused"
    );

    let journal = subject.reopen(journal).await;
    attach(journal.as_ref());
    let after = journal.outbox(None, 100).await.unwrap();
    assert_eq!(
        after[0].delivery,
        Delivery::Pending {
            next_attempt_ms: retry_at
        }
    );
    assert_eq!(after[1].delivery, Delivery::Delivered);
    assert_eq!(after[1].attempts, [delivered]);
    assert_eq!(after[2].delivery, Delivery::GaveUp);
    journal.close();
}

/// A document's version and its bytes are written in one commit; content is read back
/// by its SHA-256, kept once for two versions with the same bytes, refused if it does not
/// hash to what the version names, and survives a reopen.
pub async fn documents_are_stored_with_their_event(subject: &dyn Subject) {
    use cairn_core::document::{sha256, NewDocument};
    let journal = subject.create().await;
    attach(journal.as_ref());
    let row = start(journal.as_ref(), "case-d", "case").await;
    let new = NewDocument {
        name: "plan.pdf".into(),
        content_type: "application/pdf".into(),
        metadata: Default::default(),
        bytes: b"plan".to_vec(),
        task: None,
    };
    let v1 = new.version(1).unwrap();
    journal
        .attach_document(row.key, v1.clone(), new.bytes.clone(), Expect::End, None)
        .await
        .unwrap();
    let v2 = new.version(2).unwrap();
    journal
        .attach_document(row.key, v2, new.bytes.clone(), Expect::Seq(2), None)
        .await
        .unwrap();
    let mut forged = new.version(3).unwrap();
    forged.sha256 = sha256(b"something else");
    assert!(journal
        .attach_document(row.key, forged, new.bytes.clone(), Expect::End, None)
        .await
        .is_err());
    let (_, events) = history(journal.as_ref(), row.key).await;
    assert_eq!(
        kinds(&events),
        ["WorkflowStarted", "DocumentAttached", "DocumentAttached"]
    );
    assert_eq!(
        journal.document_bytes(v1.sha256).await.unwrap().as_deref(),
        Some(&b"plan"[..])
    );
    assert_eq!(journal.document_bytes(sha256(b"nope")).await.unwrap(), None);
    let journal = subject.reopen(journal).await;
    attach(journal.as_ref());
    assert_eq!(
        journal.document_bytes(v1.sha256).await.unwrap().as_deref(),
        Some(&b"plan"[..])
    );
    journal.close();
}

/// Expands to one `#[tokio::test]` per conformance check, each on a fresh journal from
/// `$subject` (an expression building a [`Subject`]).
#[macro_export]
macro_rules! journal_conformance {
    ($subject:expr) => {
        $crate::journal_conformance!(@tests $subject;
            start_is_idempotent_by_id,
            concurrent_starts_make_one_run,
            appends_chain_in_order,
            a_conditional_append_conflicts_when_another_writer_was_first,
            an_ended_run_takes_no_more_events,
            an_oversized_event_is_refused_whole,
            append_after_writes_both_or_neither,
            queued_appends_keep_order_and_a_refusal_lasts,
            sent_appends_keep_order_and_resolve_once_durable,
            suspension_is_conditional_and_cleared_by_the_next_event,
            continue_as_new_hands_over_atomically,
            schedules_compare_and_set,
            parking_is_indexed_until_the_next_event,
            attributes_merge_and_are_queried,
            queries_filter_and_page,
            tallies_agree_with_the_runs,
            the_listener_hears_every_commit_in_order,
            acknowledged_writes_survive_a_reopen,
            a_closed_journal_refuses_writes,
            open_tasks_are_indexed_from_their_events,
            notifications_are_kept_in_an_outbox,
            documents_are_stored_with_their_event,
        );
    };
    (@tests $subject:expr; $($check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let subject = $subject;
                $crate::conformance::$check(&subject).await;
            }
        )*
    };
}
