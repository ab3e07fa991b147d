//! `cairn`: the operator and auditor command line.
//!
//! It reads a Cairn database without running any workflow: lists instances, prints an
//! instance's history as JSON lines, and verifies every hash chain. It opens the file
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
