//! `cairn`: the operator and auditor command line.
//!
//! It reads a Cairn database without running any workflow: lists instances, prints an
//! instance's history as JSON lines, and verifies every hash chain. It opens the file
//! read-only and never writes to it (not even redb's repair after a crash), so it is
//! refused while a host holds the file.

use std::path::PathBuf;
use std::process::ExitCode;

use cairn::events::Payload;
use cairn::events::{Actor, EscalationAction, EventKind, TaskChange};
use cairn::store::{verify_history, InstanceQuery, InstanceRow, Journal, RedbJournal, StoredEvent};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Inspect and verify Cairn workflow databases"
)]
struct Cli {
    /// The database file.
    #[arg(long, global = true, default_value = "cairn.redb")]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One line per instance: id, type, status, events.
    List,
    /// The history of one instance as JSON lines, payloads decoded when they are JSON.
    History {
        /// The instance id.
        id: String,
    },
    /// Verifies the hash chain of every instance; exits 1 if any fails.
    Verify,
}

/// Prints a line to stdout; a closed pipe (`cairn history x | head`) ends the command
/// quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(cairn::Error::Environment(format!("cannot write to stdout: {err}")));
        }
    }};
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

/// Every run in the journal, oldest first, a page at a time.
async fn rows(journal: &dyn Journal) -> Result<Vec<InstanceRow>, cairn::Error> {
    let mut rows = Vec::new();
    let mut query = InstanceQuery::default();
    loop {
        let page = journal.query(&query).await?;
        rows.extend(page.rows);
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(rows),
        }
    }
}

/// The verified history of run `row`.
async fn history(
    journal: &dyn Journal,
    row: &InstanceRow,
) -> Result<Vec<StoredEvent>, cairn::Error> {
    let raw = journal
        .history(row.key)
        .await?
        .ok_or_else(|| cairn::Error::InstanceNotFound(row.id.clone()))?;
    verify_history(raw).map(|(_, events)| events)
}

async fn run(cli: Cli) -> Result<ExitCode, cairn::Error> {
    if !cli.db.exists() {
        return Err(cairn::Error::InvalidArgument(format!(
            "`{}` does not exist",
            cli.db.display()
        )));
    }
    let journal = RedbJournal::open_read_only(&cli.db)?;
    match cli.command {
        Command::List => {
            let parked: std::collections::HashMap<u128, _> =
                journal.parked().await?.into_iter().collect();
            for row in rows(&journal).await? {
                let status = match parked.get(&row.key) {
                    Some(why) => format!("Parked ({}: {})", why.code, why.reason),
                    None => format!("{:?}", row.status),
                };
                out!(
                    "{}\t{}\t{status}\t{} events",
                    row.id,
                    row.workflow_type,
                    row.next_seq
                );
            }
        }
        Command::History { id } => {
            let key = journal
                .key_of(&id)
                .await?
                .ok_or_else(|| cairn::Error::InstanceNotFound(id.clone()))?;
            let row = journal
                .instance(key)
                .await?
                .ok_or_else(|| cairn::Error::InstanceNotFound(id.clone()))?;
            if row.id != id {
                return Err(cairn::Error::Corrupt {
                    location: format!("ids table, id `{id}`"),
                    message: format!("it points at the instance row of `{}`", row.id),
                });
            }
            for event in history(&journal, &row).await? {
                out!("{}", event_json(&event));
            }
        }
        Command::Verify => {
            let mut failed = 0usize;
            let rows = rows(&journal).await?;
            for row in &rows {
                if let Err(err) = history(&journal, row).await {
                    failed += 1;
                    out!("FAIL {}: {err}", row.id);
                }
            }
            out!(
                "{} instances, {} chains verified, {failed} failed",
                rows.len(),
                rows.len() - failed
            );
            if failed > 0 {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn payload(p: &Payload) -> Value {
    if p.codec == 0 {
        if let Ok(value) = serde_json::from_slice::<Value>(&p.data) {
            return value;
        }
    }
    json!({ "codec": p.codec, "bytes": p.data.len() })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn actor_json(actor: &Actor) -> Value {
    json!({ "id": actor.id, "roles": actor.roles })
}

fn event_json(event: &StoredEvent) -> Value {
    let r = &event.record;
    let body = match &r.kind {
        EventKind::WorkflowStarted {
            workflow_type,
            id,
            input,
        } => {
            json!({ "workflow_type": workflow_type, "id": id, "input": payload(input) })
        }
        EventKind::ActivityCompleted {
            step,
            activity,
            input,
            attempt,
            output,
        } => json!({
            "step": step, "activity": activity, "input": payload(input), "attempt": attempt, "output": payload(output)
        }),
        EventKind::ActivityAttemptFailed {
            step,
            activity,
            attempt,
            error,
            retry_in_ms,
        } => json!({
            "step": step, "activity": activity, "attempt": attempt, "error": error.message,
            "error_kind": error.kind, "retry_in_ms": retry_in_ms
        }),
        EventKind::ActivityFailed {
            step,
            activity,
            input,
            attempt,
            error,
        } => json!({
            "step": step, "activity": activity, "input": payload(input), "attempt": attempt,
            "error": error.message, "error_kind": error.kind, "retryable": error.retryable
        }),
        EventKind::SideEffect { step, label, value } => {
            json!({ "step": step, "label": label, "value": payload(value) })
        }
        EventKind::WorkflowCompleted { output } => json!({ "output": payload(output) }),
        EventKind::WorkflowFailed { error } => json!({ "error": payload(error) }),
        EventKind::TimerStarted { step, fire_at_ms } => {
            json!({ "step": step, "fire_at_ms": fire_at_ms })
        }
        EventKind::TimerFired { step } => json!({ "step": step }),
        EventKind::SignalReceived {
            name,
            payload: body,
        } => json!({ "name": name, "payload": payload(body) }),
        EventKind::SignalWaitStarted {
            step,
            name,
            deadline_ms,
        } => {
            json!({ "step": step, "name": name, "deadline_ms": deadline_ms })
        }
        EventKind::SignalDelivered {
            step,
            name,
            signal_seq,
        } => {
            json!({ "step": step, "name": name, "signal_seq": signal_seq })
        }
        EventKind::SignalWaitTimedOut { step, name } => json!({ "step": step, "name": name }),
        EventKind::PatchMarker { step, patch_id } => json!({ "step": step, "patch_id": patch_id }),
        EventKind::WorkflowTerminated { reason } => json!({ "reason": reason }),
        EventKind::CancelRequested { reason } => json!({ "reason": reason }),
        EventKind::WorkflowContinuedAsNew { input, next_run } => {
            json!({ "input": payload(input), "next_run": format!("{next_run:032x}") })
        }
        EventKind::StepAbandoned { step } => json!({ "step": step }),
        EventKind::TaskCreated { step, task } => json!({
            "step": step,
            "name": task.name,
            "title": task.title,
            "description": task.description,
            "input": payload(&task.input),
            "decision_schema": serde_json::from_str::<Value>(&task.decision_schema)
                .unwrap_or_else(|_| Value::String(task.decision_schema.clone())),
            "candidate_users": task.candidates.users,
            "candidate_roles": task.candidates.roles,
            "assignee": task.assignee,
            "priority": task.priority,
            "due_at_ms": task.due_at_ms,
            "follow_up_at_ms": task.follow_up_at_ms,
            "escalation": task.escalation.iter().map(|tier| json!({
                "at_ms": tier.at_ms,
                "action": match &tier.action {
                    EscalationAction::Reassign(to) => json!({ "reassign": { "users": to.users, "roles": to.roles } }),
                    EscalationAction::Notify => json!("notify"),
                    EscalationAction::Decide(decision) => json!({ "decide": payload(decision) }),
                },
            })).collect::<Vec<_>>(),
        }),
        EventKind::TaskChanged {
            step,
            actor,
            change,
        } => {
            let change = match change {
                TaskChange::Claimed => json!("claimed"),
                TaskChange::Released => json!("released"),
                TaskChange::Delegated { to } => json!({ "delegated": { "to": to } }),
                TaskChange::Commented { text } => json!({ "commented": { "text": text } }),
                TaskChange::Overdue => json!("overdue"),
                TaskChange::Escalated { tier, reassigned } => json!({ "escalated": {
                    "tier": tier,
                    "reassigned": reassigned.as_ref().map(|to| json!({ "users": to.users, "roles": to.roles })),
                } }),
            };
            json!({ "step": step, "actor": actor_json(actor), "change": change })
        }
        EventKind::TaskCompleted {
            step,
            actor,
            decision,
            escalation,
        } => json!({
            "step": step, "actor": actor_json(actor), "decision": payload(decision),
            "escalation": escalation
        }),
        EventKind::DocumentAttached { document } => json!({
            "name": document.name,
            "version": document.version,
            "content_type": document.content_type,
            "metadata": document.metadata,
            "sha256": hex(&document.sha256),
            "bytes": document.bytes,
            "task": document.task,
        }),
        EventKind::Notified { step, topic, body } => {
            json!({ "step": step, "topic": topic, "body": payload(body) })
        }
        EventKind::KeyedSignalReceived {
            name,
            payload: body,
            key,
        } => json!({ "name": name, "payload": payload(body), "key": key }),
        EventKind::UpdateAnswered {
            step,
            name,
            key,
            response,
        } => match response {
            Ok(body) => {
                json!({ "step": step, "name": name, "key": key, "response": payload(body) })
            }
            Err(reason) => {
                json!({ "step": step, "name": name, "key": key, "rejected": reason })
            }
        },
        EventKind::StatePublished { step, name, value } => {
            json!({ "step": step, "name": name, "value": payload(value) })
        }
        EventKind::WorkflowParked { code, reason } => json!({ "code": code, "reason": reason }),
        EventKind::RunContinued { previous_run, run } => {
            json!({ "previous_run": format!("{previous_run:032x}"), "run": run })
        }
        EventKind::ChildStarted {
            step,
            workflow_type,
            child_id,
            input,
        } => json!({
            "step": step, "workflow_type": workflow_type, "child_id": child_id, "input": payload(input)
        }),
        EventKind::ChildCompleted {
            step,
            child_id,
            outcome,
        } => {
            let outcome = match outcome {
                cairn::events::ChildOutcome::Completed(p) => {
                    json!({ "completed": payload(p) })
                }
                cairn::events::ChildOutcome::Failed(p) => json!({ "failed": payload(p) }),
                cairn::events::ChildOutcome::Terminated(reason) => {
                    json!({ "terminated": reason })
                }
            };
            json!({ "step": step, "child_id": child_id, "outcome": outcome })
        }
        EventKind::StepCancelled {
            step,
            step_kind,
            name,
            reason,
        } => {
            json!({ "step": step, "step_kind": step_kind, "name": name, "reason": reason })
        }
        EventKind::AttributesSet { step, attributes } => {
            let attributes: serde_json::Map<String, Value> = attributes
                .iter()
                .map(|(name, value)| (name.clone(), json!(value.to_string())))
                .collect();
            json!({ "step": step, "attributes": attributes })
        }
    };
    json!({
        "lsn": event.lsn,
        "seq": r.seq,
        "event": r.kind.name(),
        "recorded_at_ms": r.recorded_at_ms,
        "hash": hex(&event.hash),
        "prev_hash": hex(&r.prev_hash),
        "actor": r.actor.as_ref().map(actor_json),
        "body": body,
    })
}
