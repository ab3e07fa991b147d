//! The replay core: history in, decisions out. It does no I/O and knows nothing of
//! storage or tasks, so it is tested with hand-built histories.
//!
//! **Architecture invariant**: for a given history and a given sequence of step requests,
//! [`History::check`] always gives the same answers. The engine asks it before running any
//! step live; a mismatch stops the instance before anything is appended.

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::Payload;
use crate::error::{Error, NonDeterminism, StepDescriptor};
use crate::event::{EventKind, EventRecord, StepNo};
use crate::step;

pub use crate::step::{RecordedOutcome, RecordedStep, StepKind, StepRequest};

/// What the engine should do with a requested step.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'h> {
    /// Return this recorded outcome; run nothing.
    Replay(&'h RecordedOutcome),
    /// Run it live, continuing after `failed_attempts` recorded failures.
    Run {
        /// Attempts already recorded as failed.
        failed_attempts: u32,
        /// The deadline recorded when the step began (timers, signal waits), or when an
        /// activity's next attempt is due after a recorded failure.
        deadline_ms: Option<u64>,
    },
}

/// How the workflow finished, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordedResult {
    /// `Ok(output)`.
    Completed(Payload),
    /// `Err(error)`.
    Failed(Payload),
    /// Stopped from outside, with the reason given.
    Terminated(String),
    /// Continued as a new run with this input.
    ContinuedAsNew(Payload),
}

/// What `ctx.patched(id)` should answer at a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchDecision {
    /// The marker is recorded at this step: new path, consume the step.
    Recorded,
    /// History holds another step here: recorded before the patch; old path, and the
    /// step number is *not* consumed.
    OldPath,
    /// History ends before this step: record the marker and take the new path.
    Live,
}

/// An instance's history, indexed by step for replay.
#[derive(Clone, Debug)]
pub struct History {
    /// User id.
    pub instance: String,
    /// Workflow type.
    pub workflow_type: String,
    /// The workflow's input.
    pub input: Payload,
    steps: BTreeMap<StepNo, RecordedStep>,
    /// Steps the workflow dropped before they finished (`StepAbandoned`): replay never
    /// resolves them.
    abandoned: BTreeSet<StepNo>,
    /// Each step that has an outcome, by its place in the order the outcomes were
    /// recorded (see [`History::outcome_rank`]).
    outcome_ranks: BTreeMap<StepNo, usize>,
    /// Task steps whose end the run recorded taking (`TaskTaken`).
    taken: BTreeSet<StepNo>,
    /// This run's position in its continue-as-new chain, from 1 (`RunContinued`).
    pub run: u32,
    /// Signals received, by the `seq` of their event: name, body, and whether a wait
    /// took them.
    signals: BTreeMap<u64, ReceivedSignal>,
    /// The recorded result, if the instance finished.
    pub result: Option<RecordedResult>,
    /// The `seq` and reason of a recorded cancellation request, if any.
    pub cancel_requested: Option<(u64, String)>,
    /// Whether a step already ended because of it.
    pub cancel_delivered: bool,
    /// Documents attached, by name, each with its versions in order.
    pub documents: BTreeMap<String, Vec<crate::document::DocumentVersion>>,
}

/// A signal in an instance's inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedSignal {
    /// Signal name.
    pub name: String,
    /// Its body.
    pub payload: Payload,
    /// Whether a recorded wait took it.
    pub delivered: bool,
    /// Its dedupe key, if it was sent with one (an update's request always is).
    pub key: Option<String>,
    /// Who sent it, if the sender named an actor.
    pub actor: Option<crate::task::Actor>,
}

fn corrupt(instance: &str, seq: u64, message: impl Into<String>) -> Error {
    Error::Corrupt {
        location: format!("history of instance `{instance}` at sequence {seq}"),
        message: message.into(),
    }
}

impl History {
    /// The history of a just-started instance.
    pub fn fresh(instance: String, workflow_type: String, input: Payload) -> Self {
        Self {
            instance,
            workflow_type,
            input,
            steps: BTreeMap::new(),
            abandoned: BTreeSet::new(),
            outcome_ranks: BTreeMap::new(),
            taken: BTreeSet::new(),
            run: 1,
            signals: BTreeMap::new(),
            result: None,
            cancel_requested: None,
            cancel_delivered: false,
            documents: BTreeMap::new(),
        }
    }

    /// Signals received, oldest first, by the `seq` of their event.
    pub fn signals(&self) -> &BTreeMap<u64, ReceivedSignal> {
        &self.signals
    }

    /// Indexes recorded events (oldest first).
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the events do not form a valid history (no start event,
    /// a step event for another kind of step, events after the end).
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = &'a EventRecord>,
    ) -> Result<Self, Error> {
        let mut records = records.into_iter();
        let first = records
            .next()
            .ok_or_else(|| corrupt("?", 0, "history is empty"))?;
        let EventKind::WorkflowStarted {
            workflow_type,
            id,
            input,
        } = &first.kind
        else {
            return Err(corrupt(
                "?",
                first.seq,
                format!("first event is {}, not WorkflowStarted", first.kind.name()),
            ));
        };
        let mut history = History::fresh(id.clone(), workflow_type.clone(), input.clone());
        for record in records {
            history.apply(record)?;
        }
        Ok(history)
    }

    fn apply(&mut self, record: &EventRecord) -> Result<(), Error> {
        let id = self.instance.clone();
        if self.result.is_some() {
            return Err(corrupt(
                &id,
                record.seq,
                "event after the workflow's result",
            ));
        }
        let seq = record.seq;
        match &record.kind {
            EventKind::WorkflowStarted { .. } => {
                return Err(corrupt(&id, seq, "second WorkflowStarted"))
            }
            EventKind::WorkflowCompleted { output } => {
                self.result = Some(RecordedResult::Completed(output.clone()))
            }
            EventKind::WorkflowFailed { error } => {
                self.result = Some(RecordedResult::Failed(error.clone()))
            }
            EventKind::WorkflowTerminated { reason } => {
                self.result = Some(RecordedResult::Terminated(reason.clone()))
            }
            EventKind::WorkflowContinuedAsNew { input, .. } => {
                self.result = Some(RecordedResult::ContinuedAsNew(input.clone()))
            }
            EventKind::CancelRequested { reason } => {
                // A second request changes nothing: the first one is the one delivered.
                if self.cancel_requested.is_none() {
                    self.cancel_requested = Some((seq, reason.clone()));
                }
            }
            EventKind::StepCancelled {
                step,
                step_kind,
                name,
                reason,
            } => {
                if self.cancel_requested.is_none() {
                    return Err(corrupt(
                        &id,
                        seq,
                        "a step was cancelled without a cancellation request",
                    ));
                }
                let Some(kind) = StepKind::cancellable(step_kind) else {
                    return Err(corrupt(
                        &id,
                        seq,
                        format!("unknown cancelled step kind `{step_kind}`"),
                    ));
                };
                let entry = self.open_step(*step, kind, Some(name), seq)?;
                entry.finish(RecordedOutcome::Cancelled {
                    reason: reason.clone(),
                });
                self.cancel_delivered = true;
                self.ranked(*step, kind);
            }
            EventKind::SignalReceived { .. } | EventKind::KeyedSignalReceived { .. } => {
                if let Some((name, payload, key)) = record.kind.received_signal() {
                    self.signals.insert(
                        seq,
                        ReceivedSignal {
                            name: name.to_owned(),
                            payload: payload.clone(),
                            delivered: false,
                            key: key.map(str::to_owned),
                            actor: record.actor.clone(),
                        },
                    );
                }
            }
            EventKind::StepAbandoned { step } => {
                if !self.abandoned.insert(*step) {
                    return Err(corrupt(&id, seq, format!("step {step} abandoned twice")));
                }
                // A signal the dropped wait took is given back: a later wait may take it.
                let taken = self.steps.get(step).and_then(|entry| match &entry.outcome {
                    Some(RecordedOutcome::Signal { signal_seq, .. }) => Some(*signal_seq),
                    _ => None,
                });
                if let Some(signal) = taken.and_then(|seq| self.signals.get_mut(&seq)) {
                    signal.delivered = false;
                }
                // So is a cancellation it took: the workflow never saw it, and the next
                // wait takes it.
                let cancelled = self.steps.get(step).is_some_and(|entry| {
                    matches!(entry.outcome, Some(RecordedOutcome::Cancelled { .. }))
                });
                if cancelled {
                    self.cancel_delivered = false;
                }
            }
            EventKind::RunContinued { run, .. } => {
                // Only right after the start, once, and never as the chain's first run.
                if seq != 1 || *run < 2 {
                    return Err(corrupt(
                        &id,
                        seq,
                        format!(
                            "RunContinued (run {run}) is not the second event of a continued run"
                        ),
                    ));
                }
                self.run = *run;
            }
            // A host's note; the run it stopped continues from the same history.
            EventKind::WorkflowParked { .. } => {}
            EventKind::TaskTaken { step } => {
                let ended = self.steps.get(step).is_some_and(|entry| {
                    entry.kind == StepKind::Task
                        && matches!(
                            entry.outcome,
                            Some(
                                RecordedOutcome::TaskCompleted { .. }
                                    | RecordedOutcome::Cancelled { .. }
                            )
                        )
                });
                if !ended {
                    return Err(corrupt(
                        &id,
                        seq,
                        format!("step {step} took the end of a task that has not ended"),
                    ));
                }
                if !self.taken.insert(*step) {
                    return Err(corrupt(
                        &id,
                        seq,
                        format!("step {step} took its task's end twice"),
                    ));
                }
                // Placed again, last so far: the outcomes after its own place and before
                // this one each move up one.
                if let Some(was) = self.outcome_ranks.remove(step) {
                    for rank in self.outcome_ranks.values_mut() {
                        if *rank > was {
                            *rank -= 1;
                        }
                    }
                }
                let rank = self.outcome_ranks.len();
                self.outcome_ranks.insert(*step, rank);
            }
            EventKind::DocumentAttached { document } => {
                let versions = self.documents.entry(document.name.clone()).or_default();
                let expected = u32::try_from(versions.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                if document.version != expected {
                    return Err(corrupt(
                        &id,
                        seq,
                        format!(
                            "document `{}` version {} follows {} versions",
                            document.name,
                            document.version,
                            versions.len()
                        ),
                    ));
                }
                versions.push(document.clone());
            }
            kind => {
                let Some(route) = step::route(kind) else {
                    return Err(corrupt(
                        &id,
                        seq,
                        format!("{} has no place in a history", kind.name()),
                    ));
                };
                let delivered = match kind {
                    EventKind::SignalDelivered {
                        name, signal_seq, ..
                    } => Some(self.take_signal(seq, name, *signal_seq)?),
                    _ => None,
                };
                let name = route.opens.then_some(route.name);
                let entry = self.open_step(route.step, route.kind, name, seq)?;
                step::apply(entry, kind, record.recorded_at_ms, delivered).map_err(|problem| {
                    corrupt(&id, seq, format!("step {}: {problem}", route.step))
                })?;
                // `open_step` refuses an event after an outcome, so this is the event that
                // gave it one. (A task's decision is placed again where the run took it,
                // `TaskTaken`.)
                if entry.outcome.is_some() {
                    self.ranked(route.step, route.kind);
                }
            }
        }
        Ok(())
    }

    /// Gives `step`, whose outcome was just recorded, the next place in the order of
    /// outcomes. Not a patch marker: `ctx.patched` answers at once, with nothing to wait
    /// for.
    fn ranked(&mut self, step: StepNo, kind: StepKind) {
        if kind != StepKind::Patch {
            let rank = self.outcome_ranks.len();
            self.outcome_ranks.insert(step, rank);
        }
    }

    /// Where `step`'s outcome stands in the order the recorded run took its outcomes, from
    /// 0; `None` for a step without one (or a patch marker).
    ///
    /// Every outcome is recorded by the run itself, and the run hands its outcomes to the
    /// workflow in the order it records them (a held activity result is recorded right
    /// after it is taken, with nothing recorded in between), so this is the order in which
    /// the recorded run saw them. A human task's end (a person's decision, a cancellation
    /// the host recorded) comes from outside the run's line: it is placed again where the
    /// run recorded taking it (`TaskTaken`). One the run had not taken when the history
    /// was read, and every task's end in a history written before `TaskTaken` existed,
    /// keeps the place where it was recorded, as before, unless that order does not
    /// replay ([`History::defer_latest_untaken_ends`]). Replay hands
    /// them back in this order, one at a time, each once the workflow can go no further
    /// without it, as the live run did: so a branch of `join!` that awaits one step and
    /// then calls another numbers its calls as the recorded run did, and a deadline
    /// awaited across a loop does not win before the signals that came before it.
    pub fn outcome_rank(&self, step: StepNo) -> Option<usize> {
        self.outcome_ranks.get(&step).copied()
    }

    /// Moves the `latest` most recently recorded human-task ends that a person or the
    /// host recorded, that the run did not take (no `TaskTaken`) and that outcomes the
    /// run recorded follow, behind all the other outcomes, together with the untaken
    /// ends already last, keeping their recorded order among themselves. Returns whether
    /// any outcome moved.
    ///
    /// A host uses it once the recorded order has failed to replay (`CAIRN-E0001`). This
    /// build hands a task's end to the workflow live only once its `TaskTaken` is
    /// durable, and records one when a replay hands back an end with nothing recorded
    /// after it ([`History::takes_when_handed_back`]). So the latest such ends are most
    /// likely ones the run never saw: it stopped, or lost its lease, between a decision
    /// and its take. Older ones may have been handed back where they were recorded by an
    /// earlier replay (which recorded no take there), as every end of a history written
    /// before `TaskTaken` existed was: the host tries the fewest latest ends that replay,
    /// and the recorded place first of all.
    pub fn defer_latest_untaken_ends(&mut self, latest: usize) -> bool {
        let out_of_place = self.untaken_out_of_place();
        if latest == 0 || out_of_place.is_empty() {
            return false;
        }
        let mut moved: Vec<(usize, StepNo)> =
            out_of_place[out_of_place.len().saturating_sub(latest)..].to_vec();
        moved.extend(self.untaken_tail());
        moved.sort_unstable();
        for (_, step) in &moved {
            self.outcome_ranks.remove(step);
        }
        // The others close up in their order, then the moved ends follow.
        let mut rest: Vec<(usize, StepNo)> = self
            .outcome_ranks
            .iter()
            .map(|(step, rank)| (*rank, *step))
            .collect();
        rest.sort_unstable();
        for (rank, (_, step)) in rest.iter().chain(moved.iter()).enumerate() {
            self.outcome_ranks.insert(*step, rank);
        }
        true
    }

    /// How many untaken task ends outcomes the run recorded follow: how far
    /// [`History::defer_latest_untaken_ends`] can go (0: it would move nothing).
    pub fn untaken_ends_out_of_place(&self) -> usize {
        self.untaken_out_of_place().len()
    }

    /// Whether handing back `step`'s outcome is where the run takes a task's end: it is
    /// an end the run has not recorded taking, and nothing the run recorded comes after
    /// it (every outcome ranked after it is such an end too). The run then records
    /// `TaskTaken`, which leaves its rank where it is; the end no longer counts as one
    /// never taken if a later stop makes the next replay part from the record.
    pub fn takes_when_handed_back(&self, step: StepNo) -> bool {
        let Some(rank) = self.outcome_rank(step) else {
            return false;
        };
        self.is_untaken_end(step)
            && self
                .outcome_ranks
                .iter()
                .all(|(other, at)| *at <= rank || self.is_untaken_end(*other))
    }

    /// A human task's end (decision or cancellation) recorded and not taken
    /// (`TaskTaken`), of a task that was created (a cancellation before that is the
    /// run's own outcome) and not withdrawn.
    fn is_untaken_end(&self, step: StepNo) -> bool {
        !self.taken.contains(&step)
            && !self.abandoned.contains(&step)
            && self.steps.get(&step).is_some_and(|entry| {
                entry.kind == StepKind::Task
                    && entry.task.is_some()
                    && matches!(
                        entry.outcome,
                        Some(
                            RecordedOutcome::TaskCompleted { .. }
                                | RecordedOutcome::Cancelled { .. }
                        )
                    )
            })
    }

    /// The untaken task ends, by rank.
    fn untaken(&self) -> Vec<(usize, StepNo)> {
        let mut untaken: Vec<(usize, StepNo)> = self
            .outcome_ranks
            .iter()
            .filter(|(step, _)| self.is_untaken_end(**step))
            .map(|(step, rank)| (*rank, *step))
            .collect();
        untaken.sort_unstable();
        untaken
    }

    /// The untaken task ends that only untaken ends follow (the last outcomes), by rank.
    fn untaken_tail(&self) -> Vec<(usize, StepNo)> {
        let untaken = self.untaken();
        let total = self.outcome_ranks.len();
        let tail = untaken
            .iter()
            .rev()
            .enumerate()
            .take_while(|(i, (rank, _))| *rank + i + 1 == total)
            .count();
        untaken[untaken.len() - tail..].to_vec()
    }

    /// The untaken task ends that outcomes the run recorded follow, by rank.
    fn untaken_out_of_place(&self) -> Vec<(usize, StepNo)> {
        let mut untaken = self.untaken();
        let tail = self.untaken_tail().len();
        untaken.truncate(untaken.len() - tail);
        untaken
    }

    /// How many steps have an outcome to hand back (see [`History::outcome_rank`]).
    pub fn outcomes(&self) -> usize {
        self.outcome_ranks.len()
    }

    /// Marks the signal a `SignalDelivered` at `seq` takes as delivered and returns its
    /// body: it must be a received signal of that name that no wait took yet.
    fn take_signal(&mut self, seq: u64, name: &str, signal_seq: u64) -> Result<Payload, Error> {
        match self.signals.get_mut(&signal_seq) {
            Some(signal) if signal.name == name && !signal.delivered => {
                signal.delivered = true;
                Ok(signal.payload.clone())
            }
            Some(signal) if signal.delivered => Err(corrupt(
                &self.instance,
                seq,
                format!("signal at sequence {signal_seq} delivered twice"),
            )),
            _ => Err(corrupt(
                &self.instance,
                seq,
                format!("delivers signal `{name}` at sequence {signal_seq}, which is not one"),
            )),
        }
    }

    /// The entry of `step` for an event of a `kind` step: created by an event that may
    /// begin a step (`name` given), found by one that follows (`name` `None`: the step's
    /// name is whatever began it). Refuses an event that mixes two steps, follows the
    /// step's outcome or its abandonment, or follows nothing.
    fn open_step(
        &mut self,
        step: StepNo,
        kind: StepKind,
        name: Option<&str>,
        seq: u64,
    ) -> Result<&mut RecordedStep, Error> {
        let instance = self.instance.clone();
        if self.abandoned.contains(&step) {
            return Err(corrupt(
                &instance,
                seq,
                format!("step {step} has an event after it was abandoned"),
            ));
        }
        let entry = match (self.steps.entry(step), name) {
            (std::collections::btree_map::Entry::Occupied(entry), _) => entry.into_mut(),
            (std::collections::btree_map::Entry::Vacant(entry), Some(name)) => {
                entry.insert(RecordedStep::new(kind, name))
            }
            (std::collections::btree_map::Entry::Vacant(_), None) => {
                return Err(corrupt(
                    &instance,
                    seq,
                    format!("step {step} has an event before the one that begins it"),
                ))
            }
        };
        if entry.kind != kind || name.is_some_and(|name| entry.name != name) {
            return Err(corrupt(
                &instance,
                seq,
                format!("step {step} holds events of two different steps"),
            ));
        }
        if entry.outcome.is_some() {
            return Err(corrupt(
                &instance,
                seq,
                format!("step {step} has an event after its outcome"),
            ));
        }
        Ok(entry)
    }

    /// The recorded step `step`, if any.
    pub fn step(&self, step: StepNo) -> Option<&RecordedStep> {
        self.steps.get(&step)
    }

    /// The human tasks still open: created, and not completed, cancelled or abandoned.
    pub fn open_tasks(&self) -> impl Iterator<Item = (StepNo, &crate::task::TaskState)> {
        self.steps
            .iter()
            .filter_map(|(step, entry)| match &entry.task {
                Some(task) if entry.outcome.is_none() && !self.abandoned.contains(step) => {
                    Some((*step, task.as_ref()))
                }
                _ => None,
            })
    }

    /// Whether the workflow dropped `step` before it finished, in the recorded run: replay
    /// must never resolve it, whatever it recorded.
    pub fn is_abandoned(&self, step: StepNo) -> bool {
        self.abandoned.contains(&step)
    }

    /// Highest step number recorded (0 when none).
    pub fn last_step(&self) -> StepNo {
        let recorded = self.steps.keys().next_back().copied().unwrap_or(0);
        let abandoned = self.abandoned.iter().next_back().copied().unwrap_or(0);
        recorded.max(abandoned)
    }

    /// Decides what to do with the code's request for `step`.
    ///
    /// # Errors
    /// [`NonDeterminism`] when history recorded another step at `step`.
    pub fn check(
        &self,
        step: StepNo,
        request: StepRequest<'_>,
    ) -> Result<Decision<'_>, Box<NonDeterminism>> {
        let Some(recorded) = self.steps.get(&step) else {
            return Ok(Decision::Run {
                failed_attempts: 0,
                deadline_ms: None,
            });
        };
        let input_differs = match (&recorded.input, request.input) {
            (Some(recorded), Some(requested)) => recorded != requested,
            _ => false,
        };
        if recorded.kind != request.kind || recorded.name != request.name || input_differs {
            let mut divergence = self.divergence(step, recorded.descriptor(), requested(request));
            divergence.inputs_differ = input_differs;
            divergence.recorded_at = self.recorded_elsewhere(step, request);
            return Err(divergence);
        }
        Ok(match &recorded.outcome {
            Some(outcome) => Decision::Replay(outcome),
            None => Decision::Run {
                failed_attempts: recorded.failed_attempts,
                deadline_ms: recorded.deadline_ms,
            },
        })
    }

    /// Decides `ctx.patched(patch_id)` at `step` (see [`PatchDecision`]).
    ///
    /// # Errors
    /// [`NonDeterminism`] when the step holds the marker of another patch.
    pub fn patch(
        &self,
        step: StepNo,
        patch_id: &str,
    ) -> Result<PatchDecision, Box<NonDeterminism>> {
        match self.steps.get(&step) {
            // The recorded run had another step here, which it dropped unfinished.
            None if self.is_abandoned(step) => Ok(PatchDecision::OldPath),
            None if step > self.last_step() => Ok(PatchDecision::Live),
            // A gap: an earlier step is still running and this one was not recorded.
            None => Ok(PatchDecision::Live),
            Some(recorded) if recorded.kind == StepKind::Patch && recorded.name == patch_id => {
                Ok(PatchDecision::Recorded)
            }
            Some(recorded) if recorded.kind == StepKind::Patch => Err(self.divergence(
                step,
                recorded.descriptor(),
                StepDescriptor {
                    kind: "patch",
                    name: patch_id.to_owned(),
                    input: None,
                },
            )),
            Some(_) => Ok(PatchDecision::OldPath),
        }
    }

    /// Checks, when the code returned after asking for `last_requested` steps, that history
    /// holds nothing the code skipped.
    ///
    /// # Errors
    /// [`NonDeterminism`] naming the first recorded step the code never asked for.
    pub fn check_finished(&self, last_requested: StepNo) -> Result<(), Box<NonDeterminism>> {
        // Step numbers come from disk, so `StepNo::MAX` can be recorded; no step follows it
        // (a plain `+ 1` panicked there, or wrapped to 0 and blamed every step).
        let Some(first_skipped) = last_requested.checked_add(1) else {
            return Ok(());
        };
        match self.steps.range(first_skipped..).next() {
            Some((&step, recorded)) => Err(self.divergence(
                step,
                recorded.descriptor(),
                StepDescriptor {
                    kind: "workflow result",
                    name: "(the code returned)".into(),
                    input: None,
                },
            )),
            None => Ok(()),
        }
    }

    /// A later step that records exactly `request` (kind, name and the full input), if
    /// one does: the code then made the same calls in another order.
    fn recorded_elsewhere(&self, step: StepNo, request: StepRequest<'_>) -> Option<StepNo> {
        let input = request.input?;
        self.steps
            .iter()
            .find(|(other, entry)| {
                // Calls made in another order leave the requested one recorded later;
                // one recorded earlier is a call the code repeats, a plain change.
                **other > step
                    && entry.kind == request.kind
                    && entry.name == request.name
                    && entry.input.as_ref() == Some(input)
            })
            .map(|(other, _)| *other)
    }

    /// Builds the divergence error for `step`.
    pub fn divergence(
        &self,
        step: StepNo,
        recorded: StepDescriptor,
        requested: StepDescriptor,
    ) -> Box<NonDeterminism> {
        Box::new(NonDeterminism {
            instance: self.instance.clone(),
            workflow_type: self.workflow_type.clone(),
            step,
            recorded,
            requested,
            inputs_differ: false,
            recorded_at: None,
        })
    }
}

/// See [`step::attributes::identity`].
pub fn attributes_payload(attributes: &[(String, crate::event::AttrValue)]) -> Payload {
    step::attributes::identity(attributes)
}

/// See [`step::child::identity`].
pub fn child_payload(child_id: &str, input: &Payload) -> Payload {
    step::child::identity(child_id, input)
}

/// The descriptor of a request, for divergence errors.
pub fn requested(request: StepRequest<'_>) -> StepDescriptor {
    StepDescriptor {
        kind: request.kind.label(),
        name: request.name.to_owned(),
        input: request.input.map(|p| p.preview(200)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ActivityErrorRecord, GENESIS_HASH};

    fn json(text: &str) -> Payload {
        Payload::new(0, text.as_bytes().to_vec())
    }

    fn record(seq: u64, kind: EventKind) -> EventRecord {
        EventRecord {
            instance: 1,
            seq,
            prev_lsn: None,
            prev_hash: GENESIS_HASH,
            recorded_at_ms: 0,
            kind,
            actor: None,
        }
    }

    fn history() -> History {
        let records = vec![
            record(
                0,
                EventKind::WorkflowStarted {
                    workflow_type: "order".into(),
                    id: "o-1".into(),
                    input: json("1"),
                },
            ),
            record(
                1,
                EventKind::ActivityCompleted {
                    step: 1,
                    activity: "reserve".into(),
                    input: json("1"),
                    attempt: 1,
                    output: json("true"),
                },
            ),
            record(
                2,
                EventKind::ActivityAttemptFailed {
                    step: 2,
                    activity: "charge".into(),
                    attempt: 1,
                    error: ActivityErrorRecord {
                        kind: "io".into(),
                        message: "down".into(),
                        retryable: true,
                    },
                    retry_in_ms: 1000,
                },
            ),
        ];
        History::from_records(&records).unwrap()
    }

    fn activity<'a>(name: &'a str, input: &'a Payload) -> StepRequest<'a> {
        StepRequest {
            kind: StepKind::Activity,
            name,
            input: Some(input),
        }
    }

    #[test]
    fn recorded_step_replays_and_unrecorded_runs() {
        let h = history();
        let one = json("1");
        assert!(matches!(
            h.check(1, activity("reserve", &one)),
            Ok(Decision::Replay(RecordedOutcome::ActivityCompleted { .. }))
        ));
        assert_eq!(
            h.check(2, activity("charge", &one)),
            Ok(Decision::Run {
                failed_attempts: 1,
                // The failure was recorded at 0 ms with a retry in 1,000 ms.
                deadline_ms: Some(1000)
            })
        );
        assert_eq!(
            h.check(3, activity("ship", &one)),
            Ok(Decision::Run {
                failed_attempts: 0,
                deadline_ms: None
            })
        );
    }

    #[test]
    fn renamed_step_is_a_divergence_naming_both_sides() {
        let h = history();
        let one = json("1");
        let err = h.check(1, activity("reserve_stock", &one)).unwrap_err();
        assert_eq!(err.step, 1);
        assert_eq!(err.recorded.name, "reserve");
        assert_eq!(err.requested.name, "reserve_stock");
        assert_eq!(err.instance, "o-1");
        assert_eq!(
            err.diff(),
            vec!["name: recorded `reserve`, requested `reserve_stock`".to_owned()]
        );
    }

    #[test]
    fn changed_input_and_kind_are_divergences() {
        let h = history();
        let two = json("2");
        let err = h.check(1, activity("reserve", &two)).unwrap_err();
        assert!(
            err.diff()[0].starts_with("input: recorded 1, requested 2"),
            "{:?}",
            err.diff()
        );
        let err = h
            .check(
                1,
                StepRequest {
                    kind: StepKind::SideEffect,
                    name: "reserve",
                    input: None,
                },
            )
            .unwrap_err();
        assert_eq!(
            err.diff()[0],
            "kind: recorded activity, requested side_effect"
        );
    }

    #[test]
    fn code_that_returns_early_is_caught() {
        let h = history();
        assert_eq!(h.check_finished(1).unwrap_err().step, 2);
        assert!(h.check_finished(2).is_ok());
    }

    #[test]
    fn the_highest_step_number_can_be_finished() {
        // Found by the history_replay fuzz target (fuzz/regressions/history_replay/).
        let start = record(
            0,
            EventKind::WorkflowStarted {
                workflow_type: "w".into(),
                id: "i".into(),
                input: json("1"),
            },
        );
        let last = record(1, EventKind::TimerFired { step: StepNo::MAX });
        let h = History::from_records(&[start, last]).unwrap();
        assert_eq!(h.last_step(), StepNo::MAX);
        assert!(h.check_finished(StepNo::MAX).is_ok());
        assert_eq!(
            h.check_finished(StepNo::MAX - 1).unwrap_err().step,
            StepNo::MAX
        );
    }

    #[test]
    fn malformed_histories_are_corrupt_not_panics() {
        assert!(History::from_records(&[]).is_err());
        let not_started = [record(
            0,
            EventKind::WorkflowCompleted { output: json("1") },
        )];
        assert!(History::from_records(&not_started).is_err());
        let twice = [
            record(
                0,
                EventKind::WorkflowStarted {
                    workflow_type: "w".into(),
                    id: "i".into(),
                    input: json("1"),
                },
            ),
            record(
                1,
                EventKind::SideEffect {
                    step: 1,
                    label: "now".into(),
                    value: json("1"),
                },
            ),
            record(
                2,
                EventKind::SideEffect {
                    step: 1,
                    label: "now".into(),
                    value: json("2"),
                },
            ),
        ];
        assert!(History::from_records(&twice).is_err());
    }

    #[test]
    fn signal_deliveries_must_name_a_received_undelivered_signal() {
        let start = record(
            0,
            EventKind::WorkflowStarted {
                workflow_type: "w".into(),
                id: "i".into(),
                input: json("1"),
            },
        );
        let received = record(
            1,
            EventKind::SignalReceived {
                name: "go".into(),
                payload: json("true"),
            },
        );
        let deliver = |seq, signal_seq| {
            record(
                seq,
                EventKind::SignalDelivered {
                    step: seq as u32,
                    name: "go".into(),
                    signal_seq,
                },
            )
        };
        let ok = History::from_records(&[start.clone(), received.clone(), deliver(2, 1)]).unwrap();
        assert!(ok.signals()[&1].delivered);
        assert!(matches!(
            ok.check(
                2,
                StepRequest {
                    kind: StepKind::Signal,
                    name: "go",
                    input: None
                }
            ),
            Ok(Decision::Replay(RecordedOutcome::Signal {
                signal_seq: 1,
                ..
            }))
        ));
        assert!(
            History::from_records(&[
                start.clone(),
                received.clone(),
                deliver(2, 1),
                deliver(3, 1)
            ])
            .is_err(),
            "twice"
        );
        assert!(
            History::from_records(&[start.clone(), deliver(1, 0)]).is_err(),
            "not a signal"
        );
        let timer = record(
            2,
            EventKind::TimerStarted {
                step: 1,
                fire_at_ms: 99,
            },
        );
        let h = History::from_records(&[start, timer]).unwrap();
        assert_eq!(
            h.check(
                1,
                StepRequest {
                    kind: StepKind::Timer,
                    name: "sleep",
                    input: None
                }
            ),
            Ok(Decision::Run {
                failed_attempts: 0,
                deadline_ms: Some(99)
            })
        );
    }

    #[test]
    fn a_cancellation_taken_by_an_abandoned_step_is_delivered_again() {
        let start = record(
            0,
            EventKind::WorkflowStarted {
                workflow_type: "order".into(),
                id: "o-1".into(),
                input: json("1"),
            },
        );
        let requested = record(
            1,
            EventKind::CancelRequested {
                reason: "stop".into(),
            },
        );
        let cancelled = record(
            2,
            EventKind::StepCancelled {
                step: 2,
                step_kind: "timer".into(),
                name: "sleep".into(),
                reason: "stop".into(),
            },
        );
        let taken =
            History::from_records(&[start.clone(), requested.clone(), cancelled.clone()]).unwrap();
        assert!(taken.cancel_delivered);
        // The workflow dropped that step (a `select!` it lost): it never saw the
        // cancellation, which is the next wait's.
        let abandoned = record(3, EventKind::StepAbandoned { step: 2 });
        let given_back =
            History::from_records(&[start.clone(), requested.clone(), cancelled, abandoned])
                .unwrap();
        assert!(!given_back.cancel_delivered);
        // A step abandoned with another outcome leaves the cancellation where it was.
        let fired = record(2, EventKind::TimerFired { step: 2 });
        let other = History::from_records(&[
            start,
            requested,
            fired,
            record(3, EventKind::StepAbandoned { step: 2 }),
        ])
        .unwrap();
        assert!(!other.cancel_delivered);
    }

    #[test]
    fn a_divergence_names_a_later_step_holding_the_requested_call_and_only_that() {
        let done = |seq: u64, step: u32, activity: &str| {
            record(
                seq,
                EventKind::ActivityCompleted {
                    step,
                    activity: activity.into(),
                    input: json("10"),
                    attempt: 1,
                    output: json("true"),
                },
            )
        };
        let start = record(
            0,
            EventKind::WorkflowStarted {
                workflow_type: "order".into(),
                id: "o-1".into(),
                input: json("1"),
            },
        );
        let h = History::from_records(&[start, done(1, 1, "charge"), done(2, 2, "email")]).unwrap();
        let ten = json("10");
        // Asked at step 1 for what step 2 holds: the same calls in another order.
        let swapped = h.check(1, activity("email", &ten)).unwrap_err();
        assert_eq!(swapped.recorded_at, Some(2));
        assert!(
            swapped.to_string().contains("recorded as step 2"),
            "{swapped}"
        );
        // Asked at step 2 for what step 1 already did: a repeated call, a plain change.
        let repeated = h.check(2, activity("charge", &ten)).unwrap_err();
        assert_eq!(repeated.recorded_at, None);
        assert!(repeated
            .to_string()
            .contains("Restore the previous code path"));
    }

    #[test]
    fn outcomes_are_ranked_in_the_order_they_were_recorded_not_by_step() {
        // A deadline (step 1) awaited across a loop: the signal it raced (step 2) and
        // the activity after it (step 3) were taken before it fired.
        let h = History::from_records(&[
            record(
                0,
                EventKind::WorkflowStarted {
                    workflow_type: "collect".into(),
                    id: "c-1".into(),
                    input: json("1"),
                },
            ),
            record(
                1,
                EventKind::TimerStarted {
                    step: 1,
                    fire_at_ms: 10,
                },
            ),
            record(
                2,
                EventKind::SignalReceived {
                    name: "item".into(),
                    payload: json("1"),
                },
            ),
            record(
                3,
                EventKind::SignalDelivered {
                    step: 2,
                    name: "item".into(),
                    signal_seq: 2,
                },
            ),
            record(
                4,
                EventKind::PatchMarker {
                    step: 3,
                    patch_id: "p".into(),
                },
            ),
            record(
                5,
                EventKind::ActivityAttemptFailed {
                    step: 4,
                    activity: "note".into(),
                    attempt: 1,
                    error: ActivityErrorRecord {
                        kind: "busy".into(),
                        message: "busy".into(),
                        retryable: true,
                    },
                    retry_in_ms: 1,
                },
            ),
            record(
                6,
                EventKind::ActivityCompleted {
                    step: 4,
                    activity: "note".into(),
                    input: json("1"),
                    attempt: 2,
                    output: json("10"),
                },
            ),
            record(7, EventKind::TimerFired { step: 1 }),
        ])
        .unwrap();
        assert_eq!(h.outcome_rank(2), Some(0));
        // A patch marker answers at once: nothing to hand back in order.
        assert_eq!(h.outcome_rank(3), None);
        // Ranked by its outcome, not by its failed attempt.
        assert_eq!(h.outcome_rank(4), Some(1));
        assert_eq!(h.outcome_rank(1), Some(2));
        assert_eq!(h.outcomes(), 3);
        assert_eq!(h.outcome_rank(5), None);
    }

    fn review(step: StepNo) -> EventKind {
        crate::step::task::created(
            step,
            crate::task::TaskSpec {
                name: "review".into(),
                title: "Review".into(),
                description: String::new(),
                input: json("1"),
                decision_schema: "{}".into(),
                candidates: crate::task::Candidates {
                    users: vec![],
                    roles: vec!["l1".into()],
                },
                assignee: None,
                priority: 0,
                due_at_ms: None,
                follow_up_at_ms: None,
                escalation: vec![],
            },
        )
    }

    fn decided(step: StepNo) -> EventKind {
        EventKind::TaskCompleted {
            step,
            actor: crate::task::Actor::new("ann", ["l1"]),
            decision: json("true"),
            escalation: None,
        }
    }

    fn started() -> EventKind {
        EventKind::WorkflowStarted {
            workflow_type: "reviews".into(),
            id: "r-1".into(),
            input: json("1"),
        }
    }

    #[test]
    fn a_tasks_end_is_ranked_where_the_run_took_it_not_where_it_was_recorded() {
        // Two reviews (steps 1 and 2) decided back to back; the run took the second one
        // first, and a timer (step 3) fired in between.
        let h = History::from_records(&[
            record(0, started()),
            record(1, review(1)),
            record(2, review(2)),
            record(
                3,
                EventKind::TimerStarted {
                    step: 3,
                    fire_at_ms: 10,
                },
            ),
            record(4, decided(1)),
            record(5, decided(2)),
            record(6, EventKind::TaskTaken { step: 2 }),
            record(7, EventKind::TimerFired { step: 3 }),
            record(8, EventKind::TaskTaken { step: 1 }),
        ])
        .unwrap();
        assert_eq!(h.outcome_rank(2), Some(0));
        assert_eq!(h.outcome_rank(3), Some(1));
        assert_eq!(h.outcome_rank(1), Some(2));
        assert!(matches!(
            h.step(1).and_then(|entry| entry.outcome.clone()),
            Some(RecordedOutcome::TaskCompleted { .. })
        ));
    }

    /// A review (step 1) beside a timer (step 2), decided, then the timer's firing.
    fn decided_then_fired() -> Vec<EventRecord> {
        vec![
            record(0, started()),
            record(1, review(1)),
            record(
                2,
                EventKind::TimerStarted {
                    step: 2,
                    fire_at_ms: 10,
                },
            ),
            record(3, decided(1)),
            record(4, EventKind::TimerFired { step: 2 }),
        ]
    }

    #[test]
    fn a_tasks_end_not_taken_keeps_its_place_and_taking_it_is_checked() {
        // Decided, not taken: a history written before `TaskTaken` (whose run took the
        // decision soon after it was recorded, as a rule), or a run stopped before it
        // took it. It keeps the place where it was recorded, before the timer.
        let h = History::from_records(&decided_then_fired()).unwrap();
        assert_eq!(h.outcome_rank(1), Some(0));
        assert_eq!(h.outcome_rank(2), Some(1));
        // Taken before it ended, or twice: the history is corrupt.
        let early = History::from_records(&[
            record(0, started()),
            record(1, review(1)),
            record(2, EventKind::TaskTaken { step: 1 }),
        ])
        .unwrap_err();
        assert!(early.to_string().contains("has not ended"), "{early}");
        let twice = History::from_records(&[
            record(0, started()),
            record(1, review(1)),
            record(2, decided(1)),
            record(3, EventKind::TaskTaken { step: 1 }),
            record(4, EventKind::TaskTaken { step: 1 }),
        ])
        .unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
    }

    #[test]
    fn an_end_never_taken_can_be_handed_back_after_every_other_outcome() {
        // Decided while the timer ran, the timer's firing recorded next, and the run
        // stopped before it took the decision: the run saw the firing, never the decision.
        let mut records = decided_then_fired();
        records.extend([
            record(5, review(3)),
            record(6, decided(3)),
            record(7, EventKind::TaskTaken { step: 3 }),
        ]);
        let mut h = History::from_records(&records).unwrap();
        assert_eq!(h.outcome_rank(1), Some(0));
        // Outcomes the run recorded follow it: handing it back is not where it was taken.
        assert!(!h.takes_when_handed_back(1));
        assert_eq!(h.untaken_ends_out_of_place(), 1);
        assert!(!h.defer_latest_untaken_ends(0));
        assert!(h.defer_latest_untaken_ends(1));
        // The taken one keeps its order; the untaken one goes last.
        assert_eq!(h.outcome_rank(2), Some(0));
        assert_eq!(h.outcome_rank(3), Some(1));
        assert_eq!(h.outcome_rank(1), Some(2));
        assert!(h.takes_when_handed_back(1));
        assert!(!h.takes_when_handed_back(3) && !h.takes_when_handed_back(2));
        assert_eq!(h.outcomes(), 3);
        // Already last: nothing moves the second time.
        assert_eq!(h.untaken_ends_out_of_place(), 0);
        assert!(!h.defer_latest_untaken_ends(1));
    }

    #[test]
    fn the_latest_ends_never_taken_move_first_and_the_last_ones_go_with_them() {
        // Review 1 decided and handed back in place by an earlier replay (no take), the
        // timer fired after it; later review 4 decided, timer 5 fired, the run stopped
        // before taking 4; and review 6 decided last of all, nothing after it.
        let mut records = decided_then_fired();
        records.extend([
            record(5, review(4)),
            record(
                6,
                EventKind::TimerStarted {
                    step: 5,
                    fire_at_ms: 20,
                },
            ),
            record(7, decided(4)),
            record(8, EventKind::TimerFired { step: 5 }),
            record(9, review(6)),
            record(10, decided(6)),
        ]);
        let recorded = History::from_records(&records).unwrap();
        // Ranks as recorded: 1, 2, 4, 5, 6.
        assert_eq!(recorded.untaken_ends_out_of_place(), 2);
        assert!(recorded.takes_when_handed_back(6));
        let mut latest = recorded.clone();
        assert!(latest.defer_latest_untaken_ends(1));
        let order = |h: &History| {
            let mut steps: Vec<(usize, StepNo)> = [1, 2, 4, 5, 6]
                .iter()
                .map(|step| (h.outcome_rank(*step).unwrap(), *step))
                .collect();
            steps.sort_unstable();
            steps.into_iter().map(|(_, step)| step).collect::<Vec<_>>()
        };
        // Only the latest moves, behind the firing; the one last already stays after it.
        assert_eq!(order(&latest), [1, 2, 5, 4, 6]);
        assert!(latest.takes_when_handed_back(4) && latest.takes_when_handed_back(6));
        assert!(!latest.takes_when_handed_back(1));
        let mut both = recorded.clone();
        assert!(both.defer_latest_untaken_ends(2));
        assert_eq!(order(&both), [2, 5, 1, 4, 6]);
        // Asking for more than there are moves the same.
        let mut all = recorded;
        assert!(all.defer_latest_untaken_ends(9));
        assert_eq!(order(&all), [2, 5, 1, 4, 6]);
    }

    #[test]
    fn deferring_leaves_a_history_without_untaken_ends_as_it_is() {
        let mut records = decided_then_fired();
        records.push(record(5, EventKind::TaskTaken { step: 1 }));
        let mut h = History::from_records(&records).unwrap();
        assert_eq!(h.untaken_ends_out_of_place(), 0);
        assert!(!h.defer_latest_untaken_ends(1));
        assert_eq!(h.outcome_rank(2), Some(0));
        assert_eq!(h.outcome_rank(1), Some(1));
        // A decision recorded last is where deferring would put it.
        let mut last = History::from_records(&[
            record(0, started()),
            record(1, review(1)),
            record(2, decided(1)),
        ])
        .unwrap();
        assert!(!last.defer_latest_untaken_ends(1));
        // Handed back with nothing after it (the run was asleep when it was decided, or
        // stopped before it took it): where the replaying run takes it.
        assert!(last.takes_when_handed_back(1));
    }
}
