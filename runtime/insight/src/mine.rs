//! Mining a process map from recorded histories.
//!
//! Each run becomes a trace: its start, then its steps in the order the code asked for
//! them (the step number, which replay makes deterministic), then how it ended. A node
//! is a step *as the code names it* (the activity, the task kind, the signal, the child
//! workflow type, the notification topic); an arrow is one step directly followed by
//! another in some run. Parallel steps (`join!`) are therefore drawn in the order the
//! code asked for them, which keeps one arrow between them instead of one per
//! interleaving.
//!
//! Times come from commit times. Timers, signal waits with a deadline, human tasks and
//! children record their start; an activity, a signal wait without a deadline and an
//! update answer do not, and are timed from the event the run last reacted to, which is
//! when the code asked for them (the run goes on right after each commit).

use std::collections::{BTreeMap, HashMap};

use cairn_core::event::{ChildOutcome, EventKind};
use cairn_core::journal::StoredEvent;
use cairn_core::task::TaskChange;
use serde::Serialize;

/// What a node of the map stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Where every run begins.
    Start,
    /// An activity (`ctx.activity`), named by the activity.
    Activity,
    /// A human task (`ctx.human_task`), named by its task kind.
    Task,
    /// A durable timer (`ctx.sleep`), named by the step it follows.
    Timer,
    /// A wait for a signal, named by the signal.
    Signal,
    /// A child workflow, named by its workflow type.
    Child,
    /// A notification (`ctx.notify`), named by its topic.
    Notification,
    /// An update the run answered, named by the update.
    Update,
    /// The run returned `Ok`.
    Completed,
    /// The run returned `Err`.
    Failed,
    /// The run was terminated from outside.
    Terminated,
    /// The run handed over to a new run (`continue_as_new`).
    ContinuedAsNew,
}

impl NodeKind {
    /// Whether runs end here.
    pub fn is_end(self) -> bool {
        matches!(
            self,
            NodeKind::Completed
                | NodeKind::Failed
                | NodeKind::Terminated
                | NodeKind::ContinuedAsNew
        )
    }
}

/// Median and 95th percentile of a set of durations (nearest rank), in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Spread {
    /// How many durations.
    pub samples: u64,
    /// The median.
    pub median_ms: u64,
    /// The 95th percentile.
    pub p95_ms: u64,
    /// The longest.
    pub max_ms: u64,
}

impl Spread {
    /// The spread of `values` (sorted in place); `None` when there are none.
    pub fn of(values: &mut [u64]) -> Option<Self> {
        values.sort_unstable();
        let last = *values.last()?;
        let rank = |q: f64| {
            let n = values.len();
            let at = ((q * n as f64).ceil() as usize).clamp(1, n);
            values[at - 1]
        };
        Some(Self {
            samples: values.len() as u64,
            median_ms: rank(0.5),
            p95_ms: rank(0.95),
            max_ms: last,
        })
    }
}

/// A step (or the start, or an end) as observed across runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Node {
    /// A stable id within the map (`node3`), valid as an XML id.
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// Its name (activity, task kind, signal, ...); for a timer, the step it follows.
    pub name: String,
    /// How people read it: `"Task: approve_claim"`, `"Completed"`.
    pub label: String,
    /// How often it was reached (a step in a loop counts each time).
    pub count: u64,
    /// In how many runs.
    pub runs: u64,
    /// From its start to its end, for those that ended.
    pub duration: Option<Spread>,
    /// Human tasks: from creation to the first claim (waiting for a person).
    pub waiting: Option<Spread>,
    /// Activities: attempts that failed and were retried.
    pub failed_attempts: u64,
    /// Steps that ended in failure (an activity out of attempts, a failed child).
    pub failures: u64,
    /// Human tasks: escalation tiers that fired.
    pub escalations: u64,
    /// Reached but not ended yet (runs waiting here now).
    pub open: u64,
}

/// One step directly followed by another in some run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Edge {
    /// Index of the node it leaves.
    pub from: usize,
    /// Index of the node it enters.
    pub to: usize,
    /// How often.
    pub count: u64,
    /// Its share of the arrows leaving `from` (0 to 1).
    pub share: f64,
    /// From the end of `from` to the end of `to`: how long the process took to get
    /// there, waiting included.
    pub elapsed: Option<Spread>,
    /// Among the slowest arrows of the map (by median elapsed time, at most
    /// [`BOTTLENECKS_MAX`]), and more than twice as slow as the typical arrow.
    pub bottleneck: bool,
}

/// One path through the process, start to end, and how many finished runs took it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Variant {
    /// The nodes in order.
    pub path: Vec<usize>,
    /// How many finished runs.
    pub count: u64,
    /// Their share of the finished runs (0 to 1).
    pub share: f64,
}

/// A process map of one workflow type, mined from its histories.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessMap {
    /// The workflow type.
    pub workflow_type: String,
    /// Runs mined.
    pub runs: u64,
    /// Of which finished.
    pub finished: u64,
    /// Start first, then steps in the order first seen, ends last.
    pub nodes: Vec<Node>,
    /// Arrows, most frequent first.
    pub edges: Vec<Edge>,
    /// The most frequent paths of finished runs (at most [`VARIANTS_SHOWN`]).
    pub variants: Vec<Variant>,
    /// How many distinct paths finished runs took in all.
    pub distinct_variants: u64,
}

/// How many paths a map lists.
pub const VARIANTS_SHOWN: usize = 10;

/// How many arrows at most are marked as bottlenecks.
pub const BOTTLENECKS_MAX: usize = 3;

/// One step of one run, while its history is read.
#[derive(Debug)]
struct Occurrence {
    kind: NodeKind,
    name: String,
    start_ms: u64,
    end_ms: Option<u64>,
    claimed_ms: Option<u64>,
    failed_attempts: u64,
    failed: bool,
    escalations: u64,
    abandoned: bool,
}

impl Occurrence {
    fn new(kind: NodeKind, name: &str, start_ms: u64) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            start_ms,
            end_ms: None,
            claimed_ms: None,
            failed_attempts: 0,
            failed: false,
            escalations: 0,
            abandoned: false,
        }
    }
}

/// One run as a trace: (node key, end time) in order, and when it started.
struct Trace {
    started_ms: u64,
    steps: Vec<Occurrence>,
    end: Option<(NodeKind, u64)>,
}

fn trace_of(events: &[StoredEvent]) -> Trace {
    let mut steps: BTreeMap<u32, Occurrence> = BTreeMap::new();
    let mut started_ms = 0;
    let mut end = None;
    // The commit time of the last event the run reacted to: when the code asked for a
    // step that records no start of its own.
    let mut ready_ms = 0;
    for event in events {
        let at = event.record.recorded_at_ms;
        let mut reacted = true;
        match &event.record.kind {
            EventKind::WorkflowStarted { .. } => started_ms = at,
            EventKind::ActivityAttemptFailed { step, activity, .. } => {
                steps
                    .entry(*step)
                    .or_insert_with(|| Occurrence::new(NodeKind::Activity, activity, ready_ms))
                    .failed_attempts += 1;
            }
            EventKind::ActivityCompleted { step, activity, .. }
            | EventKind::ActivityFailed { step, activity, .. } => {
                let occ = steps
                    .entry(*step)
                    .or_insert_with(|| Occurrence::new(NodeKind::Activity, activity, ready_ms));
                occ.end_ms = Some(at);
                occ.failed = matches!(event.record.kind, EventKind::ActivityFailed { .. });
            }
            EventKind::TimerStarted { step, .. } => {
                steps.insert(*step, Occurrence::new(NodeKind::Timer, "", at));
            }
            EventKind::SignalWaitStarted { step, name, .. } => {
                steps.insert(*step, Occurrence::new(NodeKind::Signal, name, at));
            }
            EventKind::SignalDelivered { step, name, .. }
            | EventKind::SignalWaitTimedOut { step, name } => {
                steps
                    .entry(*step)
                    .or_insert_with(|| Occurrence::new(NodeKind::Signal, name, ready_ms))
                    .end_ms = Some(at);
            }
            EventKind::TaskCreated { step, task } => {
                steps.insert(*step, Occurrence::new(NodeKind::Task, &task.name, at));
            }
            EventKind::TaskChanged { step, change, .. } => {
                // A person acting on a task does not move the run on.
                reacted = matches!(change, TaskChange::Escalated { .. });
                if let Some(occ) = steps.get_mut(step) {
                    match change {
                        TaskChange::Claimed => {
                            occ.claimed_ms.get_or_insert(at);
                        }
                        TaskChange::Escalated { .. } => occ.escalations += 1,
                        _ => {}
                    }
                }
            }
            EventKind::ChildStarted {
                step,
                workflow_type,
                ..
            } => {
                steps.insert(*step, Occurrence::new(NodeKind::Child, workflow_type, at));
            }
            EventKind::ChildCompleted { step, outcome, .. } => {
                if let Some(occ) = steps.get_mut(step) {
                    occ.end_ms = Some(at);
                    occ.failed = !matches!(outcome, ChildOutcome::Completed(_));
                }
            }
            EventKind::Notified { step, topic, .. } => {
                let mut occ = Occurrence::new(NodeKind::Notification, topic, at);
                occ.end_ms = Some(at);
                steps.insert(*step, occ);
            }
            EventKind::UpdateAnswered { step, name, .. } => {
                let mut occ = Occurrence::new(NodeKind::Update, name, ready_ms);
                occ.end_ms = Some(at);
                steps.insert(*step, occ);
            }
            EventKind::TimerFired { step } => {
                if let Some(occ) = steps.get_mut(step) {
                    occ.end_ms = Some(at);
                }
            }
            EventKind::TaskCompleted { step, .. } | EventKind::StepCancelled { step, .. } => {
                if let Some(occ) = steps.get_mut(step) {
                    occ.end_ms = Some(at);
                }
            }
            EventKind::StepAbandoned { step } => {
                if let Some(occ) = steps.get_mut(step) {
                    occ.abandoned = true;
                }
            }
            EventKind::WorkflowCompleted { .. } => end = Some((NodeKind::Completed, at)),
            EventKind::WorkflowFailed { .. } => end = Some((NodeKind::Failed, at)),
            EventKind::WorkflowTerminated { .. } => end = Some((NodeKind::Terminated, at)),
            EventKind::WorkflowContinuedAsNew { .. } => {
                end = Some((NodeKind::ContinuedAsNew, at));
            }
            // Arrivals from outside and notes for operators: the run has not reacted yet.
            EventKind::SignalReceived { .. }
            | EventKind::KeyedSignalReceived { .. }
            | EventKind::CancelRequested { .. }
            | EventKind::DocumentAttached { .. }
            | EventKind::WorkflowParked { .. } => reacted = false,
            EventKind::SideEffect { .. }
            | EventKind::PatchMarker { .. }
            | EventKind::AttributesSet { .. }
            | EventKind::RunContinued { .. }
            | EventKind::StatePublished { .. }
            | EventKind::TaskTaken { .. } => {}
        }
        if reacted {
            ready_ms = at;
        }
    }
    let mut ordered: Vec<Occurrence> = steps.into_values().filter(|o| !o.abandoned).collect();
    // A timer is named by what it follows, so a polling loop (check, wait, check, ...)
    // folds into one loop instead of one node per round.
    let mut before = "start".to_owned();
    for occ in &mut ordered {
        if occ.kind == NodeKind::Timer {
            occ.name = format!("wait after {before}");
        }
        before.clone_from(&occ.name);
    }
    Trace {
        started_ms,
        steps: ordered,
        end,
    }
}

#[derive(Default)]
struct NodeAcc {
    count: u64,
    runs: u64,
    last_run: Option<u64>,
    durations: Vec<u64>,
    waiting: Vec<u64>,
    failed_attempts: u64,
    failures: u64,
    escalations: u64,
    open: u64,
}

#[derive(Default)]
struct EdgeAcc {
    count: u64,
    elapsed: Vec<u64>,
}

impl ProcessMap {
    /// Mines the map of `workflow_type` from its runs' verified histories (each oldest
    /// event first). Histories of other types are skipped.
    ///
    /// # Example
    /// ```
    /// # use cairn_insight::ProcessMap;
    /// let map = ProcessMap::mine("loan", std::iter::empty::<&[cairn_core::journal::StoredEvent]>());
    /// assert_eq!(map.runs, 0);
    /// assert_eq!(map.nodes.len(), 1); // the start
    /// ```
    pub fn mine<'a>(
        workflow_type: &str,
        histories: impl IntoIterator<Item = &'a [StoredEvent]>,
    ) -> Self {
        let mut index: HashMap<(NodeKind, String), usize> = HashMap::new();
        let mut keys: Vec<(NodeKind, String)> = vec![(NodeKind::Start, "start".to_owned())];
        index.insert(keys[0].clone(), 0);
        let mut nodes: Vec<NodeAcc> = vec![NodeAcc::default()];
        let mut edges: HashMap<(usize, usize), EdgeAcc> = HashMap::new();
        let mut variants: HashMap<Vec<usize>, u64> = HashMap::new();
        let (mut runs, mut finished) = (0u64, 0u64);

        for events in histories {
            let is_type = matches!(
                events.first().map(|e| &e.record.kind),
                Some(EventKind::WorkflowStarted { workflow_type: t, .. }) if t == workflow_type
            );
            if !is_type {
                continue;
            }
            let run = runs;
            runs += 1;
            let trace = trace_of(events);
            // (node, end time) along the run.
            let mut path: Vec<(usize, Option<u64>)> = vec![(0, Some(trace.started_ms))];
            let mut visit = |key: (NodeKind, String), nodes: &mut Vec<NodeAcc>| {
                let at = *index.entry(key.clone()).or_insert_with(|| {
                    keys.push(key);
                    nodes.push(NodeAcc::default());
                    nodes.len() - 1
                });
                let acc = &mut nodes[at];
                acc.count += 1;
                if acc.last_run != Some(run) {
                    acc.last_run = Some(run);
                    acc.runs += 1;
                }
                at
            };
            visit((NodeKind::Start, "start".to_owned()), &mut nodes);
            for occ in &trace.steps {
                let at = visit((occ.kind, occ.name.clone()), &mut nodes);
                let acc = &mut nodes[at];
                match occ.end_ms {
                    Some(end) => acc.durations.push(end.saturating_sub(occ.start_ms)),
                    None => acc.open += 1,
                }
                if let Some(claimed) = occ.claimed_ms {
                    acc.waiting.push(claimed.saturating_sub(occ.start_ms));
                }
                acc.failed_attempts += occ.failed_attempts;
                acc.failures += u64::from(occ.failed);
                acc.escalations += occ.escalations;
                path.push((at, occ.end_ms));
            }
            if let Some((kind, at_ms)) = trace.end {
                let label = match kind {
                    NodeKind::Completed => "completed",
                    NodeKind::Failed => "failed",
                    NodeKind::Terminated => "terminated",
                    _ => "continued as new",
                };
                let at = visit((kind, label.to_owned()), &mut nodes);
                path.push((at, Some(at_ms)));
                finished += 1;
            }
            for pair in path.windows(2) {
                let [(from, from_end), (to, to_end)] = [pair[0], pair[1]];
                let acc = edges.entry((from, to)).or_default();
                acc.count += 1;
                if let (Some(a), Some(b)) = (from_end, to_end) {
                    acc.elapsed.push(b.saturating_sub(a));
                }
            }
            if trace.end.is_some() {
                *variants
                    .entry(path.iter().map(|(n, _)| *n).collect())
                    .or_default() += 1;
            }
        }

        // Ends go last, in a fixed order, so the map reads left to right.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&i| {
            (
                keys[i].0.is_end(),
                keys[i].0.is_end().then_some(keys[i].0),
                i,
            )
        });
        let mut renumber = vec![0; keys.len()];
        for (new, &old) in order.iter().enumerate() {
            renumber[old] = new;
        }

        let mut out_of: HashMap<usize, u64> = HashMap::new();
        for ((from, _), acc) in &edges {
            *out_of.entry(*from).or_default() += acc.count;
        }
        let mut edge_list: Vec<Edge> = edges
            .into_iter()
            .map(|((from, to), mut acc)| Edge {
                from: renumber[from],
                to: renumber[to],
                count: acc.count,
                share: acc.count as f64 / out_of.get(&from).copied().unwrap_or(1).max(1) as f64,
                elapsed: Spread::of(&mut acc.elapsed),
                bottleneck: false,
            })
            .collect();
        edge_list.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.from.cmp(&b.from))
                .then(a.to.cmp(&b.to))
        });
        // A bottleneck stands out: among the slowest arrows, and at least twice as slow
        // as the typical one. A map with fewer than three timed arrows has none.
        let mut medians: Vec<u64> = edge_list
            .iter()
            .filter_map(|e| e.elapsed.map(|s| s.median_ms))
            .collect();
        if medians.len() >= 3 {
            let typical = Spread::of(&mut medians).map_or(0, |s| s.median_ms);
            let mut slowest: Vec<usize> = (0..edge_list.len())
                .filter(|&i| {
                    edge_list[i]
                        .elapsed
                        .is_some_and(|s| s.median_ms > typical.saturating_mul(2).max(1))
                })
                .collect();
            slowest.sort_by_key(|&i| {
                std::cmp::Reverse(edge_list[i].elapsed.map_or(0, |s| s.median_ms))
            });
            for &i in slowest.iter().take(BOTTLENECKS_MAX) {
                edge_list[i].bottleneck = true;
            }
        }

        let mut node_list: Vec<Node> = Vec::with_capacity(keys.len());
        for &old in &order {
            let (kind, name) = keys[old].clone();
            let acc = &mut nodes[old];
            node_list.push(Node {
                id: format!("node{}", node_list.len()),
                kind,
                label: label(kind, &name),
                name,
                count: acc.count,
                runs: acc.runs,
                duration: Spread::of(&mut acc.durations),
                waiting: Spread::of(&mut acc.waiting),
                failed_attempts: acc.failed_attempts,
                failures: acc.failures,
                escalations: acc.escalations,
                open: acc.open,
            });
        }

        let distinct_variants = variants.len() as u64;
        let mut variant_list: Vec<Variant> = variants
            .into_iter()
            .map(|(path, count)| Variant {
                path: path.into_iter().map(|n| renumber[n]).collect(),
                count,
                share: count as f64 / finished.max(1) as f64,
            })
            .collect();
        variant_list.sort_by(|a, b| b.count.cmp(&a.count).then(a.path.cmp(&b.path)));
        variant_list.truncate(VARIANTS_SHOWN);

        ProcessMap {
            workflow_type: workflow_type.to_owned(),
            runs,
            finished,
            nodes: node_list,
            edges: edge_list,
            variants: variant_list,
            distinct_variants,
        }
    }
}

/// A node's label as people read it.
fn label(kind: NodeKind, name: &str) -> String {
    match kind {
        NodeKind::Start => "Start".to_owned(),
        NodeKind::Activity => name.to_owned(),
        NodeKind::Task => format!("Task: {name}"),
        NodeKind::Timer => {
            // "wait after charge" -> "Wait after charge"
            let mut chars = name.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        }
        NodeKind::Signal => format!("Signal: {name}"),
        NodeKind::Child => format!("Child: {name}"),
        NodeKind::Notification => format!("Notify: {name}"),
        NodeKind::Update => format!("Update: {name}"),
        NodeKind::Completed => "Completed".to_owned(),
        NodeKind::Failed => "Failed".to_owned(),
        NodeKind::Terminated => "Terminated".to_owned(),
        NodeKind::ContinuedAsNew => "Continued as new".to_owned(),
    }
}

/// A duration as people read it: `850 ms`, `12.5 s`, `4 min`, `3.2 h`, `2.1 d`.
pub fn human_ms(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    if ms < 1000 {
        format!("{ms} ms")
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 86_400.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86_400.0)
    }
}
