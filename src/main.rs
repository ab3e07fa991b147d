//! `cairn`: the operator and auditor command line.
//!
//! It reads a Cairn database without running any workflow: lists instances, prints an
//! instance's history as JSON lines or as a table, exports histories, counts what the
//! file holds, verifies every hash chain (and, with anchors kept elsewhere, that no chain
//! was rewritten whole). It opens the file read-only and never writes to it (not even
//! redb's repair after a crash), so it is refused while a host holds the file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{BufRead as _, BufWriter, IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cairn::audit::{event_json, Anchor};
use cairn::store::{
    verify_history, InstanceQuery, InstanceRow, InstanceStatus, Journal, RedbJournal, StoredEvent,
};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Inspect, export and verify Cairn workflow databases"
)]
struct Cli {
    /// The database file (a stopped host's file or a copy of it).
    #[arg(long, global = true, default_value = "cairn.redb")]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One line per run: id, type, status, events.
    List {
        /// Only this workflow type.
        #[arg(long = "type", value_name = "TYPE")]
        workflow_type: Option<String>,
        /// Only runs with this status.
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// Only ids that contain this text.
        #[arg(long, value_name = "TEXT")]
        id_contains: Option<String>,
        /// Only runs started at or after this time (RFC 3339, a date, or ms since the epoch).
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        since: Option<u64>,
        /// Only runs started before this time.
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        until: Option<u64>,
    },
    /// The history of one instance as JSON lines, payloads decoded when they are JSON.
    History {
        /// The instance id.
        id: String,
    },
    /// One instance's history as a table a person reads: when, what, who, details.
    Show {
        /// The instance id.
        id: String,
    },
    /// Every event (or those committed in a time range) as JSON lines, each naming its
    /// instance, workflow type and run; payloads decoded. Run by run, each in order.
    Export {
        /// Only events committed at or after this time (RFC 3339, a date, or ms since the epoch).
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        since: Option<u64>,
        /// Only events committed before this time.
        #[arg(long, value_parser = parse_time, value_name = "TIME")]
        until: Option<u64>,
        /// Only this workflow type.
        #[arg(long = "type", value_name = "TYPE")]
        workflow_type: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Runs by status and workflow type, events, and the file's size.
    Stats,
    /// Verifies every run's hash chain, naming the first altered or missing event of each
    /// damaged run and going on with the others; exits 1 if any run is damaged.
    Verify {
        /// Also check each run against anchors exported earlier (`cairn anchors export`):
        /// catches a history rewritten whole, head row included.
        #[arg(long, value_name = "FILE")]
        anchors: Option<PathBuf>,
        /// Print only damaged runs and the summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Anchors: each run's last event hash, to keep somewhere the database's writers
    /// cannot reach, and check later with `verify --anchors`.
    Anchors {
        #[command(subcommand)]
        command: AnchorsCommand,
    },
}

#[derive(Subcommand)]
enum AnchorsCommand {
    /// Writes one JSON line per run: id, run key, last sequence number and its hash.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Status {
    Running,
    Completed,
    Failed,
    Terminated,
    ContinuedAsNew,
    /// Running, but set aside by its host (see `show`).
    Parked,
}

impl Status {
    fn stored(self) -> Option<InstanceStatus> {
        match self {
            Status::Running | Status::Parked => Some(InstanceStatus::Running),
            Status::Completed => Some(InstanceStatus::Completed),
            Status::Failed => Some(InstanceStatus::Failed),
            Status::Terminated => Some(InstanceStatus::Terminated),
            Status::ContinuedAsNew => Some(InstanceStatus::ContinuedAsNew),
        }
    }
}

/// Why a command stopped early.
enum Stop {
    /// The reader closed the pipe (`cairn list | head`): a quiet success.
    Closed,
    Failed(cairn::Error),
}

impl From<cairn::Error> for Stop {
    fn from(err: cairn::Error) -> Self {
        Stop::Failed(err)
    }
}

/// Where a command's lines go: standard output or a file, buffered.
struct Out {
    writer: BufWriter<Box<dyn Write>>,
    /// Whether the lines go to a terminal (then no progress bar is drawn over them).
    terminal: bool,
}

impl Out {
    fn new(path: Option<&Path>) -> Result<Self, cairn::Error> {
        let (writer, terminal): (Box<dyn Write>, bool) = match path {
            Some(path) => (
                Box::new(std::fs::File::create(path).map_err(|err| {
                    cairn::Error::InvalidArgument(format!(
                        "cannot create `{}`: {err}",
                        path.display()
                    ))
                })?),
                false,
            ),
            None => (Box::new(std::io::stdout()), std::io::stdout().is_terminal()),
        };
        Ok(Self {
            writer: BufWriter::new(writer),
            terminal,
        })
    }

    fn line(&mut self, args: fmt::Arguments<'_>) -> Result<(), Stop> {
        writeln!(self.writer, "{args}").map_err(write_failed)?;
        // A person watching a terminal sees each line as it comes.
        if self.terminal {
            self.writer.flush().map_err(write_failed)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), Stop> {
        self.writer.flush().map_err(write_failed)
    }

    /// A bar on standard error for long work, drawn only when a person watches the
    /// terminal and the lines go elsewhere.
    fn progress(&self, len: u64, unit: &str) -> ProgressBar {
        if self.terminal || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        let template = format!(
            "{{bar:40}} {{pos}}/{{len}} {unit} · {{msg}} · {{elapsed_precise}} (eta {{eta}})"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        bar
    }
}

fn write_failed(err: std::io::Error) -> Stop {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        Stop::Closed
    } else {
        Stop::Failed(cairn::Error::Environment(format!("cannot write: {err}")))
    }
}

macro_rules! out {
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))?
    };
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
        Err(Stop::Closed) => ExitCode::SUCCESS,
        Err(Stop::Failed(err)) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

/// A time given on the command line: RFC 3339, a date (midnight UTC), or ms since the
/// Unix epoch.
fn parse_time(text: &str) -> Result<u64, String> {
    let refused = || {
        format!(
            "`{text}` is not a time: give RFC 3339 (2026-12-03T09:30:00Z), a date \
             (2026-12-03, midnight UTC) or milliseconds since the Unix epoch"
        )
    };
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let ms = if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        at.timestamp_millis()
    } else if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        day.and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis()
    } else {
        return Err(refused());
    };
    u64::try_from(ms).map_err(|_| refused())
}

/// Every run the query selects, oldest first, a page at a time.
async fn rows(
    journal: &dyn Journal,
    mut query: InstanceQuery,
) -> Result<Vec<InstanceRow>, cairn::Error> {
    let mut rows = Vec::new();
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

async fn run(cli: Cli) -> Result<ExitCode, Stop> {
    if !cli.db.exists() {
        return Err(cairn::Error::InvalidArgument(format!(
            "`{}` does not exist",
            cli.db.display()
        ))
        .into());
    }
    let journal = RedbJournal::open_read_only(&cli.db)?;
    match cli.command {
        Command::List {
            workflow_type,
            status,
            id_contains,
            since,
            until,
        } => {
            let parked: HashMap<u128, _> = journal.parked().await?.into_iter().collect();
            let query = InstanceQuery {
                workflow_type,
                statuses: status.and_then(Status::stored).into_iter().collect(),
                created_from_ms: since,
                created_until_ms: until,
                ..InstanceQuery::default()
            };
            let mut out = Out::new(None)?;
            for row in rows(&journal, query).await? {
                if id_contains
                    .as_deref()
                    .is_some_and(|text| !row.id.contains(text))
                {
                    continue;
                }
                let why = parked.get(&row.key);
                match status {
                    Some(Status::Parked) if why.is_none() => continue,
                    Some(Status::Running) if why.is_some() => continue,
                    _ => {}
                }
                let status = match why {
                    Some(why) => format!("Parked ({}: {})", why.code, why.reason),
                    None => format!("{:?}", row.status),
                };
                out!(
                    out,
                    "{}\t{}\t{status}\t{} events",
                    row.id,
                    row.workflow_type,
                    row.next_seq
                );
            }
            out.finish()?;
        }
        Command::History { id } => {
            let row = row_of(&journal, &id).await?;
            let mut out = Out::new(None)?;
            for event in history(&journal, &row).await? {
                out!(out, "{}", event_json(&event));
            }
            out.finish()?;
        }
        Command::Show { id } => show(&journal, &id).await?,
        Command::Export {
            since,
            until,
            workflow_type,
            out,
        } => return export(&journal, since, until, workflow_type, out.as_deref()).await,
        Command::Stats => stats(&journal, &cli.db).await?,
        Command::Verify { anchors, quiet } => {
            return verify(&journal, anchors.as_deref(), quiet).await;
        }
        Command::Anchors {
            command: AnchorsCommand::Export { out },
        } => return export_anchors(&journal, out.as_deref()).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(journal: &dyn Journal, id: &str) -> Result<(), Stop> {
    let row = row_of(journal, id).await?;
    let events = history(journal, &row).await?;
    let mut out = Out::new(None)?;
    out!(
        out,
        "{}  {}  {:?}  {} events",
        row.id,
        row.workflow_type,
        row.status,
        row.next_seq
    );
    out!(
        out,
        "{:>5}  {:<24}  {:<22}  {:<12}  details",
        "seq",
        "when (UTC)",
        "event",
        "by"
    );
    for event in events {
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
            out,
            "{:>5}  {:<24}  {:<22}  {:<12}  {details}",
            event.record.seq,
            utc(event.record.recorded_at_ms),
            event.record.kind.name(),
            by
        );
    }
    out.finish()
}

async fn stats(journal: &dyn Journal, path: &Path) -> Result<(), Stop> {
    let parked: HashSet<u128> = journal
        .parked()
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    let mut events = 0u64;
    let rows = rows(journal, InstanceQuery::default()).await?;
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
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut out = Out::new(None)?;
    out!(out, "file        {} ({bytes} bytes)", path.display());
    out!(out, "runs        {}", rows.len());
    out!(out, "events      {events}");
    for (status, n) in by_status {
        out!(out, "status      {status:<16} {n}");
    }
    for (workflow_type, n) in by_type {
        out!(out, "type        {workflow_type:<16} {n}");
    }
    out.finish()
}

async fn export(
    journal: &dyn Journal,
    since: Option<u64>,
    until: Option<u64>,
    workflow_type: Option<String>,
    path: Option<&Path>,
) -> Result<ExitCode, Stop> {
    // A run started at or after `until` has no event before it; one last touched before
    // `since` has none after it.
    let query = InstanceQuery {
        workflow_type,
        created_until_ms: until,
        ..InstanceQuery::default()
    };
    let rows: Vec<InstanceRow> = rows(journal, query)
        .await?
        .into_iter()
        .filter(|row| since.is_none_or(|since| row.updated_at_ms >= since))
        .collect();
    let mut out = Out::new(path)?;
    let bar = out.progress(rows.len() as u64, "runs");
    let mut exported = 0u64;
    let mut damaged = 0usize;
    for row in &rows {
        bar.inc(1);
        let events = match history(journal, row).await {
            Ok(events) => events,
            Err(err) => {
                // An export is evidence: a damaged run is named, not silently skipped.
                damaged += 1;
                bar.suspend(|| eprintln!("error: run of `{}` not exported: {err}", row.id));
                continue;
            }
        };
        let run = format!("{:032x}", row.key);
        for event in &events {
            let at = event.record.recorded_at_ms;
            if since.is_some_and(|since| at < since) || until.is_some_and(|until| at >= until) {
                continue;
            }
            let mut line = event_json(event);
            if let Some(fields) = line.as_object_mut() {
                fields.insert("instance".into(), row.id.clone().into());
                fields.insert("workflow_type".into(), row.workflow_type.clone().into());
                fields.insert("run".into(), run.clone().into());
            }
            out!(out, "{line}");
            exported += 1;
        }
        bar.set_message(format!("{exported} events"));
    }
    bar.finish_and_clear();
    out.finish()?;
    eprintln!(
        "exported {exported} events of {} runs{}",
        rows.len() - damaged,
        if damaged > 0 {
            format!("; {damaged} damaged runs not exported")
        } else {
            String::new()
        }
    );
    Ok(if damaged > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads an anchors file: one JSON anchor per line, blank lines skipped.
fn read_anchors(path: &Path) -> Result<HashMap<u128, Anchor>, cairn::Error> {
    let refused = |what: String| {
        cairn::Error::InvalidArgument(format!("anchors file `{}`: {what}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(|err| refused(format!("cannot open: {err}")))?;
    let mut anchors = HashMap::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|err| refused(format!("cannot read: {err}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let anchor: Anchor = serde_json::from_str(&line)
            .map_err(|err| refused(format!("line {} is not an anchor: {err}", number + 1)))?;
        let key = anchor.key().ok_or_else(|| {
            refused(format!(
                "line {}: run `{}` is not 32 hexadecimal digits",
                number + 1,
                anchor.run
            ))
        })?;
        anchors.insert(key, anchor);
    }
    Ok(anchors)
}

async fn verify(
    journal: &dyn Journal,
    anchors: Option<&Path>,
    quiet: bool,
) -> Result<ExitCode, Stop> {
    let anchors_given = anchors.is_some();
    let mut anchors = match anchors {
        Some(path) => Some(read_anchors(path)?),
        None => None,
    };
    let rows = rows(journal, InstanceQuery::default()).await?;
    let mut out = Out::new(None)?;
    let bar = out.progress(rows.len() as u64, "runs");
    let (mut intact, mut damaged, mut anchored) = (0usize, 0usize, 0usize);
    for row in &rows {
        bar.inc(1);
        let anchor = anchors.as_mut().and_then(|all| all.remove(&row.key));
        let verdict = match history(journal, row).await {
            Err(err) => Err(err.to_string()),
            Ok(events) => match &anchor {
                Some(anchor) => anchor
                    .check(&events)
                    .map(|()| format!("{} events, anchor #{} matches", events.len(), anchor.seq))
                    .map_err(|why| format!("CAIRN-E0004 history of instance `{}`: {why}", row.id)),
                None => Ok(format!("{} events", events.len())),
            },
        };
        if anchor.is_some() {
            anchored += 1;
        }
        match verdict {
            Ok(what) => {
                intact += 1;
                if !quiet {
                    bar.suspend(|| out.line(format_args!("ok    {}  {what}", row.id)))?;
                }
            }
            Err(why) => {
                damaged += 1;
                bar.suspend(|| out.line(format_args!("FAIL  {}  {why}", row.id)))?;
            }
        }
    }
    bar.finish_and_clear();
    // Anchored runs the file no longer holds were removed (or their rows were).
    let mut missing: Vec<Anchor> = anchors
        .map(|a| a.into_values().collect())
        .unwrap_or_default();
    missing.sort_by(|a, b| (&a.instance, &a.run).cmp(&(&b.instance, &b.run)));
    for anchor in &missing {
        out!(
            out,
            "FAIL  {}  the anchored run {} (event #{}) is missing from the file",
            anchor.instance,
            anchor.run,
            anchor.seq
        );
    }
    let mut summary = format!("{} runs: {intact} intact, {damaged} damaged", rows.len());
    if anchors_given {
        summary += &format!(
            "; {anchored} checked against anchors, {} anchored runs missing",
            missing.len()
        );
    }
    out!(out, "{summary}");
    out.finish()?;
    Ok(if damaged + missing.len() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn export_anchors(journal: &dyn Journal, path: Option<&Path>) -> Result<ExitCode, Stop> {
    let rows = rows(journal, InstanceQuery::default()).await?;
    let mut out = Out::new(path)?;
    let bar = out.progress(rows.len() as u64, "runs");
    let mut damaged = 0usize;
    for row in &rows {
        bar.inc(1);
        match history(journal, row).await {
            Ok(events) => {
                if let Some(anchor) = Anchor::of(&row.id, row.key, &events) {
                    let line = serde_json::to_string(&anchor).map_err(|err| {
                        cairn::Error::Environment(format!("an anchor does not encode: {err}"))
                    })?;
                    out!(out, "{line}");
                }
            }
            Err(err) => {
                // Anchoring a damaged chain would bless the damage.
                damaged += 1;
                bar.suspend(|| eprintln!("error: run of `{}` not anchored: {err}", row.id));
            }
        }
    }
    bar.finish_and_clear();
    out.finish()?;
    Ok(if damaged > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
