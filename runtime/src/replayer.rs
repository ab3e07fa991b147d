//! Offline replay: the auditor's check that today's code explains recorded histories,
//! with no engine behind it (no writer thread, no recovery of other instances, no write
//! lock on the file).
//!
//! **API boundary**: a [`Replayer`] holds only the registered workflow types, the codec
//! and a clock; its runs have no host port, so nothing they do can run live or append.

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::Clock;
use crate::codec::Codec;
use crate::context::{Inbox, Stop, WorkflowContext};
use crate::drive::{drive, factory_for, finished_outcome, WorkflowFactory, WorkflowResult};
use crate::error::{Error, Result, StepDescriptor, StorageFailure};
use crate::event::{EventRecord, StepNo};
use crate::port::Outcome;
use crate::replay::{History, RecordedResult};
use cairn_core::journal::{verify_history, InstanceQuery, Journal};

/// Replays recorded histories against registered workflow code, offline.
///
/// Built from the same registrations as the host (`EngineBuilder::replayer`, or the
/// typed `RuntimeBuilder::replayer` of the `cairn` crate). Replaying runs the workflow
/// functions from the start against each history: every recorded step returns its
/// recorded outcome, nothing runs live and nothing is written, and the first place where
/// the code asks for something else is reported as a divergence.
///
/// ```
/// # use cairn_runtime::{EngineBuilder, ReplayVerdict};
/// # tokio_test::block_on(async {
/// let replayer = EngineBuilder::default().replayer();
/// // No workflow type is registered, so any history is refused with its type named.
/// let verdict = replayer.replay(&[]).await;
/// assert!(verdict.is_err());
/// # });
/// ```
#[derive(Clone)]
pub struct Replayer {
    workflows: Arc<HashMap<String, WorkflowFactory>>,
    codec: Arc<dyn Codec>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.workflows.keys().collect();
        names.sort();
        f.debug_struct("Replayer")
            .field("workflows", &names)
            .finish_non_exhaustive()
    }
}

/// What replaying a history found ([`Replayer::replay`], `Engine::replay`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// The code reproduced the recorded run up to its result, which matches.
    Matches(Outcome),
    /// The history is unfinished; the code agrees with it up to `next_step`, the first
    /// step the history does not hold (one past the last step when the code returned but
    /// its result was not recorded yet).
    Unfinished {
        /// The first step that would run live.
        next_step: u32,
    },
}

/// One history's verdict in [`Replayer::replay_journal`].
#[derive(Debug)]
pub struct StoredVerdict {
    /// The instance's id.
    pub id: String,
    /// Its internal key (each run of a continue-as-new chain has its own).
    pub key: u128,
    /// What replaying it found.
    pub verdict: Result<ReplayVerdict>,
}

impl Replayer {
    pub(crate) fn new(
        workflows: Arc<HashMap<String, WorkflowFactory>>,
        codec: Arc<dyn Codec>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            workflows,
            codec,
            clock,
        }
    }

    /// The workflow types this replayer knows, sorted.
    pub fn workflow_types(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.workflows.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Replays one recorded history (all its events, oldest first).
    ///
    /// A history whose recorded order parts from the code while its outcomes are being
    /// handed back, and that holds a human task's end the run never took (no
    /// `TaskTaken`) before outcomes the run recorded, is tried again with the latest
    /// such ends handed back last, the fewest that replay, as the host does when it
    /// resumes the run: the run stopped between a person's decision and its take, and
    /// never saw the decision where it was recorded. [`Replayer::replay_as_recorded`]
    /// does not try that.
    ///
    /// # Errors
    /// [`Error::NonDeterminism`] at the first step where code and record part (including
    /// a different result; with the recorded order, if the other orders fail too),
    /// [`Error::UnknownWorkflowType`], [`Error::Corrupt`] for a malformed history,
    /// [`Error::PayloadDecode`] for an undecodable payload.
    ///
    /// # Cancel safety
    /// Cancel safe: it reads and writes nothing outside itself.
    pub async fn replay(&self, records: &[EventRecord]) -> Result<ReplayVerdict> {
        let history = History::from_records(records)?;
        let (first, releasing) = match self.replay_history(records, history).await {
            (Ok(verdict), _) => return Ok(verdict),
            (Err(err), releasing) => (err, releasing),
        };
        if !matches!(first, Error::NonDeterminism(_)) || !releasing {
            return Err(first);
        }
        match self.first_deferral_that_replays(records).await {
            Some((_, verdict)) => Ok(verdict),
            // The recorded order is what the history says: its failure is the one
            // reported.
            None => Err(first),
        }
    }

    /// The fewest latest task ends never taken that, handed back last, let `records`
    /// replay (`History::defer_latest_untaken_ends`), with that replay's verdict; `None`
    /// if no such order replays. Each try is a replay of its own, offline.
    pub(crate) async fn first_deferral_that_replays(
        &self,
        records: &[EventRecord],
    ) -> Option<(usize, ReplayVerdict)> {
        let out_of_place = History::from_records(records)
            .map(|history| history.untaken_ends_out_of_place())
            .unwrap_or(0);
        for latest in 1..=out_of_place {
            if let Ok(verdict) = self.replay_deferring(records, latest).await {
                return Some((latest, verdict));
            }
        }
        None
    }

    /// Replays one recorded history in its recorded order only (see
    /// [`Replayer::replay`]): for an auditor who wants to know that a history replays
    /// without handing any task's end back later than it was recorded.
    ///
    /// # Errors
    /// As [`Replayer::replay`].
    ///
    /// # Cancel safety
    /// Cancel safe: it reads and writes nothing outside itself.
    pub async fn replay_as_recorded(&self, records: &[EventRecord]) -> Result<ReplayVerdict> {
        let history = History::from_records(records)?;
        self.replay_history(records, history).await.0
    }

    /// Replays `records` with the `latest` task ends never taken handed back last
    /// (`History::defer_latest_untaken_ends`).
    async fn replay_deferring(
        &self,
        records: &[EventRecord],
        latest: usize,
    ) -> Result<ReplayVerdict> {
        let mut history = History::from_records(records)?;
        history.defer_latest_untaken_ends(latest);
        self.replay_history(records, history).await.0
    }

    /// The verdict, and whether recorded outcomes were still being handed back when the
    /// replay stopped.
    async fn replay_history(
        &self,
        records: &[EventRecord],
        history: History,
    ) -> (Result<ReplayVerdict>, bool) {
        let mut releasing = false;
        let verdict = self.replay_in(records, history, &mut releasing).await;
        (verdict, releasing)
    }

    async fn replay_in(
        &self,
        records: &[EventRecord],
        history: History,
        releasing: &mut bool,
    ) -> Result<ReplayVerdict> {
        let factory = factory_for(&self.workflows, &history)?;
        let key = records.first().map(|r| r.instance).unwrap_or(0);
        let ctx = WorkflowContext::new(
            key,
            None,
            self.codec.clone(),
            self.clock.clone(),
            Arc::new(Inbox::default()),
            history,
            records.len() as u64,
        );
        let input = ctx.history().input.clone();
        // Unconstrained: a wake tokio defers (its cooperative budget spent) would look
        // like a workflow that can go no further.
        let driving = tokio::task::unconstrained(drive(&ctx, factory(ctx.clone(), input)));
        let driven = until_stuck(&ctx, driving).await;
        *releasing = ctx.releasing();
        let driven = match driven {
            Ok(driven) => driven,
            Err(waiting) => return stuck(&ctx, &waiting),
        };
        let outcome = match driven {
            Err(Stop::Fatal(err)) => return Err(err),
            Err(Stop::ContinueAsNew(input)) => Outcome::ContinuedAsNew(input),
            // Only a run with a host asks for these; a replay has none.
            Err(Stop::Replay | Stop::HandedOver) => {
                return Err(Error::Storage(StorageFailure::new(
                    "a replay asked its host for something only a live host does",
                )))
            }
            Ok(WorkflowResult::Fatal(err)) => return Err(err),
            Ok(result) => finished_outcome(&ctx, result)?,
        };
        let recorded = match &ctx.history().result {
            Some(RecordedResult::Completed(p)) => Outcome::Completed(p.clone()),
            Some(RecordedResult::Failed(p)) => Outcome::Failed(p.clone()),
            Some(RecordedResult::ContinuedAsNew(p)) => Outcome::ContinuedAsNew(p.clone()),
            // The run stopped after its last step and before its result was recorded
            // (or was terminated there): the code agrees with everything there is.
            Some(RecordedResult::Terminated(_)) | None => {
                return Ok(ReplayVerdict::Unfinished {
                    next_step: ctx.last_requested_step() + 1,
                })
            }
        };
        if recorded != outcome {
            let err = ctx.history().divergence(
                ctx.last_requested_step() + 1,
                result_descriptor(&recorded),
                result_descriptor(&outcome),
            );
            return Err(err.into());
        }
        Ok(ReplayVerdict::Matches(outcome))
    }

    /// Replays every history in `journal` (each run of a chain on its own), oldest
    /// first, one page of the instance index and one history at a time. Open the file
    /// read-only (`RedbJournal::open_read_only`) to audit it; a history that does not
    /// verify as a hash chain gets its `Error::Corrupt` as its verdict, and the others
    /// are still replayed.
    ///
    /// # Errors
    /// A storage error reading the instance index; each history's own problems are in
    /// its [`StoredVerdict`].
    pub async fn replay_journal(&self, journal: &dyn Journal) -> Result<Vec<StoredVerdict>> {
        let mut verdicts = Vec::new();
        let mut query = InstanceQuery::default();
        loop {
            let page = journal.query(&query).await?;
            for row in page.rows {
                let verdict = match journal.history(row.key).await {
                    Ok(Some(raw)) => match verify_history(raw) {
                        Ok((_, events)) => {
                            let records: Vec<EventRecord> =
                                events.into_iter().map(|e| e.record).collect();
                            self.replay(&records).await
                        }
                        Err(err) => Err(err),
                    },
                    Ok(None) => Err(Error::Corrupt {
                        location: format!("instance `{}`", row.id),
                        message: "its row vanished while the index was read".into(),
                    }),
                    Err(err) => Err(err),
                };
                verdicts.push(StoredVerdict {
                    id: row.id,
                    key: row.key,
                    verdict,
                });
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(verdicts),
            }
        }
    }
}

pub(crate) fn result_descriptor(outcome: &Outcome) -> StepDescriptor {
    let (name, input) = match outcome {
        Outcome::Completed(p) => ("Ok", p.preview(200)),
        Outcome::Failed(p) => ("Err", p.preview(200)),
        Outcome::Terminated(reason) => ("terminated", reason.clone()),
        Outcome::ContinuedAsNew(p) => ("continue as new", p.preview(200)),
    };
    StepDescriptor {
        kind: "workflow result",
        name: name.into(),
        input: Some(input),
    }
}

/// Polls `future` until it is ready, or until a poll leaves it pending with nothing
/// woken: then the steps beyond the history the workflow waits for (read while it is
/// still alive). Offline, every recorded step resolves within the poll that asks for
/// it, so a workflow that pends without waking itself can go no further.
async fn until_stuck<F: std::future::Future>(
    ctx: &WorkflowContext,
    future: F,
) -> std::result::Result<F::Output, Vec<(StepNo, StepDescriptor)>> {
    struct Woken(std::sync::atomic::AtomicBool);
    impl futures::task::ArcWake for Woken {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let woken = Arc::new(Woken(std::sync::atomic::AtomicBool::new(false)));
    let waker = futures::task::waker(woken.clone());
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |_| loop {
        woken.0.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut here = std::task::Context::from_waker(&waker);
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut here) {
            return std::task::Poll::Ready(Ok(out));
        }
        if !woken.0.load(std::sync::atomic::Ordering::Relaxed) {
            return std::task::Poll::Ready(Err(ctx.beyond_history()));
        }
    })
    .await
}

/// The verdict on a workflow that went as far as its history takes it and then waited
/// for steps the history does not hold: an unfinished (or terminated) run agrees with
/// everything recorded; a finished one should have reached its result.
fn stuck(ctx: &WorkflowContext, waiting: &[(StepNo, StepDescriptor)]) -> Result<ReplayVerdict> {
    // The first step the code waits for that the history does not hold.
    let next = waiting.first().cloned();
    match &ctx.history().result {
        Some(RecordedResult::Completed(_) | RecordedResult::Failed(_)) => {
            let (step, asked) = next.unwrap_or_else(|| {
                (
                    ctx.last_requested_step() + 1,
                    StepDescriptor {
                        kind: "wait",
                        name: "(the code waits on something that is not a durable step)".into(),
                        input: None,
                    },
                )
            });
            let recorded = StepDescriptor {
                kind: "end of history",
                name: "(the recorded run ended here)".into(),
                input: None,
            };
            Err(ctx.history().divergence(step, recorded, asked).into())
        }
        _ => Ok(ReplayVerdict::Unfinished {
            next_step: next.map_or(ctx.last_requested_step() + 1, |(step, _)| step),
        }),
    }
}
