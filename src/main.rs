//! `cairn`: the operator and auditor command line.
//!
//! It reads a Cairn database without running any workflow: lists instances, prints an
//! instance's history as JSON lines or as a table, counts what the file holds, and
//! verifies every hash chain. It opens the file
//! read-only and never writes to it (not even redb's repair after a crash), so it is
//! refused while a host holds the file.

use std::path::PathBuf;
use std::process::ExitCode;

use cairn::audit::event_json;
use cairn::store::{verify_history, InstanceQuery, InstanceRow, Journal, RedbJournal, StoredEvent};
use clap::{Parser, Subcommand};

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
    /// One instance's history as a table a person reads: when, what, who, step.
    Show {
        /// The instance id.
        id: String,
    },
    /// Instances by status and workflow type, events, and the file's size.
    Stats,
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

/// The current run's row of instance `id`, checked against the id.
async fn row_of(journal: &dyn Journal, id: &str) -> Result<InstanceRow, cairn::Error> {
    let key = journal
        .key_of(id)
        .await?
        .ok_or_else(|| cairn::Error::InstanceNotFound(id.to_owned()))?;
    let row = journal
        .instance(key)
        .await?
        .ok_or_else(|| cairn::Error::InstanceNotFound(id.to_owned()))?;
    if row.id != id {
        return Err(cairn::Error::Corrupt {
            location: format!("ids table, id `{id}`"),
            message: format!("it points at the instance row of `{}`", row.id),
        });
    }
    Ok(row)
}

/// A commit time as `YYYY-MM-DD HH:MM:SS.mmm` in UTC.
fn utc(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || format!("{ms} ms"),
            |at| at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        )
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
            let row = row_of(&journal, &id).await?;
            for event in history(&journal, &row).await? {
                out!("{}", event_json(&event));
            }
        }
        Command::Show { id } => {
            let row = row_of(&journal, &id).await?;
            out!(
                "{}  {}  {:?}  {} events",
                row.id,
                row.workflow_type,
                row.status,
                row.next_seq
            );
            out!(
                "{:>5}  {:<24}  {:<22}  {:<12}  details",
                "seq",
                "when (UTC)",
                "event",
                "by"
            );
            for event in history(&journal, &row).await? {
                let json = event_json(&event);
                let by = event
                    .record
                    .actor
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |a| a.id.clone());
                let mut details = json["body"].to_string();
                if details.chars().count() > 100 {
                    details = details.chars().take(99).collect::<String>() + "…";
                }
                out!(
                    "{:>5}  {:<24}  {:<22}  {:<12}  {details}",
                    event.record.seq,
                    utc(event.record.recorded_at_ms),
                    event.record.kind.name(),
                    by
                );
            }
        }
        Command::Stats => {
            let parked: std::collections::HashSet<u128> = journal
                .parked()
                .await?
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            let mut by_status: std::collections::BTreeMap<String, usize> = Default::default();
            let mut by_type: std::collections::BTreeMap<String, usize> = Default::default();
            let mut events = 0u64;
            let rows = rows(&journal).await?;
            for row in &rows {
                let status = if parked.contains(&row.key) {
                    "Parked".to_owned()
                } else {
                    format!("{:?}", row.status)
                };
                *by_status.entry(status).or_default() += 1;
                *by_type.entry(row.workflow_type.clone()).or_default() += 1;
                events += row.next_seq;
            }
            let bytes = std::fs::metadata(&cli.db).map(|m| m.len()).unwrap_or(0);
            out!("file        {} ({bytes} bytes)", cli.db.display());
            out!("runs        {}", rows.len());
            out!("events      {events}");
            for (status, n) in by_status {
                out!("status      {status:<16} {n}");
            }
            for (workflow_type, n) in by_type {
                out!("type        {workflow_type:<16} {n}");
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
