//! `cairn`: the operator and auditor command line.
//!
//! It reads a Cairn database without running any workflow: lists instances, prints an
//! instance's history as JSON lines or as a table, exports histories, counts what the
//! file holds, verifies every hash chain (and, with anchors kept elsewhere, that no chain
//! was rewritten whole). It opens the file read-only and never writes to it (not even
//! redb's repair after a crash), so it is refused while a host holds the file; with
//! `--server URL --token TOKEN` the same commands read a running host through its HTTP
//! API instead (`remote.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{BufRead as _, BufWriter, IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cairn::audit::{event_json, Anchor};
use cairn::store::{
    verify_history, InstanceQuery, InstanceRow, InstanceStatus, Journal, RedbJournal, StoredEvent,
};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

mod remote;
use remote::{check_links, Remote};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Inspect, export and verify Cairn workflow databases"
)]
struct Cli {
    /// The database: a redb file (a stopped host's file or a copy of it) or a PostgreSQL
    /// connection string (`postgres://user@host/db`), read beside the running hosts.
    #[arg(long, global = true, default_value = "cairn.redb")]
    db: PathBuf,
    /// Read a running host through its HTTP API instead of a file (`http://127.0.0.1:8080`).
    #[arg(long, global = true, env = "CAIRN_SERVER", value_name = "URL")]
    server: Option<String>,
    /// The bearer token for `--server` (a read-only auditor's token is enough).
    #[arg(
        long,
        global = true,
        env = "CAIRN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
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
        /// Write to this file instead of standard output (a new file: see --force).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace the --out file if it exists (never the database being read).
        #[arg(long, requires = "out")]
        force: bool,
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
    /// Schedules: list them (from a file or a host); pause, resume or start one now
    /// (a running host only, with `--server`).
    Schedules {
        #[command(subcommand)]
        command: Option<SchedulesCommand>,
    },
}

#[derive(Subcommand)]
enum SchedulesCommand {
    /// One line per schedule: id, workflow type, when it fires, next occurrence, state.
    List,
    /// Pauses a schedule: it starts nothing until resumed (needs `--server`).
    Pause {
        /// The schedule.
        id: String,
        /// Why, kept with the pause.
        #[arg(long)]
        reason: String,
    },
    /// Resumes a paused schedule; occurrences due while paused are skipped (needs
    /// `--server`).
    Resume {
        /// The schedule.
        id: String,
    },
    /// Starts one occurrence now, paused or not (needs `--server`).
    Trigger {
        /// The schedule.
        id: String,
    },
}

/// One schedule as `cairn schedules` prints it, from a file or from a host.
struct ScheduleLine {
    id: String,
    workflow_type: String,
    every_ms: Option<u64>,
    cron: Option<String>,
    next_fire_ms: u64,
    /// Who (if an actor), when, why.
    paused: Option<(Option<String>, u64, String)>,
}

impl ScheduleLine {
    fn from_row(id: String, row: cairn::ScheduleRow) -> Self {
        let (every_ms, cron) = match row.recurrence {
            cairn::Recurrence::EveryMs(ms) => (Some(ms), None),
            cairn::Recurrence::Cron(expression) => (None, Some(expression)),
        };
        Self {
            id,
            workflow_type: row.workflow_type,
            every_ms,
            cron,
            next_fire_ms: row.next_fire_ms,
            paused: row.paused.map(|p| (p.by, p.at_ms, p.note)),
        }
    }

    fn from_json(view: &Value) -> Self {
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        let paused = &view["paused"];
        Self {
            id: text(&view["id"]),
            workflow_type: text(&view["workflow_type"]),
            every_ms: view["every_ms"].as_u64(),
            cron: view["cron"].as_str().map(str::to_owned),
            next_fire_ms: view["next_fire_ms"].as_u64().unwrap_or(0),
            paused: paused.is_object().then(|| {
                (
                    paused["by"].as_str().map(str::to_owned),
                    paused["at_ms"].as_u64().unwrap_or(0),
                    text(&paused["note"]),
                )
            }),
        }
    }

    fn print(&self, out: &mut Out) -> Result<(), Stop> {
        let when = match (&self.every_ms, &self.cron) {
            (Some(ms), _) => format!("every {}", every(*ms)),
            (None, Some(cron)) => format!("cron `{cron}` UTC"),
            (None, None) => String::new(),
        };
        let state = match &self.paused {
            None => format!("next {} UTC", utc(self.next_fire_ms)),
            Some((by, at, note)) => format!(
                "paused by {} at {} UTC: {note}",
                by.as_deref().unwrap_or("the host"),
                utc(*at)
            ),
        };
        out.line(format_args!(
            "{}\t{}\t{when}\t{state}",
            self.id, self.workflow_type
        ))
    }
}

/// `3600000` -> `1h`, `90000` -> `90s`.
fn every(ms: u64) -> String {
    for (size, unit) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "min"),
        (1000, "s"),
    ] {
        if ms >= size && (ms / size) * size == ms {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[derive(Subcommand)]
enum AnchorsCommand {
    /// Writes one JSON line per run: id, run key, last sequence number and its hash.
    Export {
        /// Write to this file instead of standard output (a new file: see --force).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace the --out file if it exists (never the database being read).
        #[arg(long, requires = "out")]
        force: bool,
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
    /// A server refused, or could not be reached: what it said.
    Remote(String),
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
    /// Standard output, or a new file at `path` (an existing one only with `force`).
    fn new(path: Option<&Path>, force: bool) -> Result<Self, cairn::Error> {
        let (writer, terminal): (Box<dyn Write>, bool) = match path {
            Some(path) => {
                let mut options = std::fs::OpenOptions::new();
                options.write(true);
                if force {
                    options.create(true).truncate(true);
                } else {
                    options.create_new(true);
                }
                let file = options.open(path).map_err(|err| {
                    cairn::Error::InvalidArgument(
                        if err.kind() == std::io::ErrorKind::AlreadyExists {
                            format!(
                                "`{}` exists: give a new file, or --force to replace it",
                                path.display()
                            )
                        } else {
                            format!("cannot create `{}`: {err}", path.display())
                        },
                    )
                })?;
                (Box::new(file), false)
            }
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

/// What `verify` found so far, and its per-run lines.
#[derive(Default)]
struct Tally {
    intact: usize,
    damaged: usize,
    anchored: usize,
}

impl Tally {
    /// Counts one run's verdict and prints its line (`ok` lines only when not quiet).
    fn record(
        &mut self,
        out: &mut Out,
        bar: &ProgressBar,
        id: &str,
        verdict: Result<String, String>,
        anchored: bool,
        quiet: bool,
    ) -> Result<(), Stop> {
        self.anchored += usize::from(anchored);
        match verdict {
            Ok(what) => {
                self.intact += 1;
                if !quiet {
                    bar.suspend(|| out.line(format_args!("ok    {id}  {what}")))?;
                }
            }
            Err(why) => {
                self.damaged += 1;
                bar.suspend(|| out.line(format_args!("FAIL  {id}  {why}")))?;
            }
        }
        Ok(())
    }
}

impl Tally {
    /// The last line: `N runs: I intact, D damaged[; A checked against anchors, M
    /// anchored runs missing]` (`noun` is `runs` for a file, `instances` for a server).
    fn summary(&self, noun: &str, total: usize, anchors: Option<usize>) -> String {
        // `noun` is a plural ending in `s`: one run, one instance.
        let counted = |n: usize| {
            if n == 1 {
                noun.trim_end_matches('s')
            } else {
                noun
            }
        };
        let mut summary = format!(
            "{total} {}: {} intact, {} damaged",
            counted(total),
            self.intact,
            self.damaged
        );
        if let Some(missing) = anchors {
            summary += &format!(
                "; {} checked against anchors, {missing} anchored {} missing",
                self.anchored,
                counted(missing)
            );
        }
        summary
    }
}

macro_rules! out {
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))?
    };
}

fn main() -> ExitCode {
    // On some damaged files redb panics; the store contains that and reports it as an
    // error naming the file, which is printed below. redb's own panic message (and a
    // backtrace) before it would read as a crash of this tool.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info
            .location()
            .is_some_and(|at| at.file().replace('\\', "/").contains("/redb-"))
        {
            return;
        }
        report(info);
    }));
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    // A file named on the command line is what the user asked to read: a server taken
    // from the environment (CAIRN_SERVER) does not override it, and an empty variable
    // counts as unset.
    let db_given = matches.value_source("db") == Some(ValueSource::CommandLine);
    let server_from_env = matches.value_source("server") == Some(ValueSource::EnvVariable);
    if cli.server.as_deref().is_some_and(|s| s.trim().is_empty()) || (db_given && server_from_env) {
        cli.server = None;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
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
        Err(Stop::Remote(message)) => {
            eprintln!("error: {message}");
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

/// Whether `db` names a PostgreSQL database rather than a file.
fn is_postgres(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// The file a command writes with `--out`, if it writes one.
fn out_file(command: &Command) -> Option<&Path> {
    match command {
        Command::Export { out, .. }
        | Command::Anchors {
            command: AnchorsCommand::Export { out, .. },
        } => out.as_deref(),
        _ => None,
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Stop> {
    // Even with --force: the tool never writes to the database it reads.
    if let Some(out) = out_file(&cli.command) {
        let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if same(out, &cli.db) {
            return Err(cairn::Error::InvalidArgument(format!(
                "`{}` is the database being read: give --out another file",
                out.display()
            ))
            .into());
        }
    }
    if let Some(server) = &cli.server {
        let Some(token) = cli.token.clone() else {
            return Err(Stop::Remote(
                "--server needs --token (or CAIRN_TOKEN): the API answers no one without one"
                    .to_owned(),
            ));
        };
        let remote = Remote::new(server, token).map_err(Stop::Remote)?;
        return run_remote(&remote, cli.command).await;
    }
    let place = cli.db.to_string_lossy().into_owned();
    let journal: Box<dyn Journal> = if is_postgres(&place) {
        // Read beside the running hosts: no shard taken, every write refused.
        Box::new(cairn::store::PostgresReader::open(&place).await?)
    } else {
        if !cli.db.exists() {
            return Err(cairn::Error::InvalidArgument(format!(
                "`{}` does not exist",
                cli.db.display()
            ))
            .into());
        }
        Box::new(RedbJournal::open_read_only(&cli.db)?)
    };
    let journal = journal.as_ref();
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
            let mut out = Out::new(None, false)?;
            for row in rows(journal, query).await? {
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
            let row = row_of(journal, &id).await?;
            let mut out = Out::new(None, false)?;
            for event in history(journal, &row).await? {
                out!(out, "{}", event_json(&event));
            }
            out.finish()?;
        }
        Command::Show { id } => show(journal, &id).await?,
        Command::Export {
            since,
            until,
            workflow_type,
            out,
            force,
        } => return export(journal, since, until, workflow_type, out.as_deref(), force).await,
        Command::Stats => stats(journal, &cli.db).await?,
        Command::Verify { anchors, quiet } => {
            return verify(journal, anchors.as_deref(), quiet).await;
        }
        Command::Anchors {
            command: AnchorsCommand::Export { out, force },
        } => return export_anchors(journal, out.as_deref(), force).await,
        Command::Schedules { command } => match command {
            None | Some(SchedulesCommand::List) => {
                let mut out = Out::new(None, false)?;
                let schedules = journal.schedules().await?;
                if schedules.is_empty() {
                    // On standard error: a script reading the list still reads nothing.
                    eprintln!("no schedules");
                }
                for (id, row) in schedules {
                    ScheduleLine::from_row(id, row).print(&mut out)?;
                }
                out.finish()?;
            }
            Some(_) => {
                return Err(Stop::Remote(
                    "pause, resume and trigger change a running host's schedules: give --server URL and --token (this tool opens a file read-only)"
                        .to_owned(),
                ))
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(journal: &dyn Journal, id: &str) -> Result<(), Stop> {
    let row = row_of(journal, id).await?;
    let events: Vec<Value> = history(journal, &row)
        .await?
        .iter()
        .map(event_json)
        .collect();
    let status = format!("{:?}", row.status);
    show_table(&row.id, &row.workflow_type, &status, &events)
}

/// A history as a table a person reads, from the events' JSON (the same offline and
/// over HTTP).
fn show_table(id: &str, workflow_type: &str, status: &str, events: &[Value]) -> Result<(), Stop> {
    let mut out = Out::new(None, false)?;
    out!(
        out,
        "{id}  {workflow_type}  {status}  {} events",
        events.len()
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
        let by = event["actor"]["id"].as_str().unwrap_or("-");
        let mut details = event["body"].to_string();
        if details.chars().count() > 100 {
            details = details.chars().take(99).collect::<String>() + "…";
        }
        out!(
            out,
            "{:>5}  {:<24}  {:<22}  {:<12}  {details}",
            event["seq"].as_u64().unwrap_or(0),
            utc(event["recorded_at_ms"].as_u64().unwrap_or(0)),
            event["event"].as_str().unwrap_or("?"),
            by
        );
    }
    out.finish()
}

/// An exported event: its JSON with the instance, its workflow type and its run.
fn export_line(mut event: Value, id: &str, workflow_type: &str, run: &str) -> Value {
    if let Some(fields) = event.as_object_mut() {
        fields.insert("instance".into(), id.into());
        fields.insert("workflow_type".into(), workflow_type.into());
        fields.insert("run".into(), run.into());
    }
    event
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
    let mut out = Out::new(None, false)?;
    let place = path.to_string_lossy();
    if is_postgres(&place) {
        // The connection string without its password.
        let shown = match (place.find("://"), place.rfind('@')) {
            (Some(scheme), Some(at)) => format!("{}{}", &place[..scheme + 3], &place[at + 1..]),
            _ => place.into_owned(),
        };
        out!(out, "database    {shown}");
    } else {
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        out!(out, "file        {} ({bytes} bytes)", path.display());
    }
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
    force: bool,
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
    let mut out = Out::new(path, force)?;
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
            let line = export_line(event_json(event), &row.id, &row.workflow_type, &run);
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

/// What `verify` says of a run it could not read: the damage itself, without the
/// advice to run `cairn verify` that the error carries for a host's log.
fn damage(err: &cairn::Error) -> String {
    match err {
        cairn::Error::Corrupt { location, message } => {
            format!("[{}] corrupt data in {location}: {message}", err.code())
        }
        other => other.to_string(),
    }
}

/// Reads an anchors file: one JSON anchor per line, blank lines skipped; a file that
/// holds none is refused (checked against it, nothing would be checked).
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
    if anchors.is_empty() {
        return Err(refused(
            "it holds no anchors, so nothing could be checked against it: give the file \
             `cairn anchors export` wrote"
                .to_owned(),
        ));
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
    let mut out = Out::new(None, false)?;
    let bar = out.progress(rows.len() as u64, "runs");
    let mut tally = Tally::default();
    for row in &rows {
        bar.inc(1);
        let anchor = anchors.as_mut().and_then(|all| all.remove(&row.key));
        let verdict = match history(journal, row).await {
            Err(err) => Err(damage(&err)),
            Ok(events) => match &anchor {
                Some(anchor) => anchor
                    .check(&events)
                    .map(|()| format!("{} events, anchor #{} matches", events.len(), anchor.seq))
                    .map_err(|why| {
                        format!("[CAIRN-E0004] history of instance `{}`: {why}", row.id)
                    }),
                None => Ok(format!("{} events", events.len())),
            },
        };
        tally.record(&mut out, &bar, &row.id, verdict, anchor.is_some(), quiet)?;
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
    let summary = tally.summary("runs", rows.len(), anchors_given.then_some(missing.len()));
    out!(out, "{summary}");
    out.finish()?;
    Ok(if tally.damaged + missing.len() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn export_anchors(
    journal: &dyn Journal,
    path: Option<&Path>,
    force: bool,
) -> Result<ExitCode, Stop> {
    let rows = rows(journal, InstanceQuery::default()).await?;
    let mut out = Out::new(path, force)?;
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

/// The time range of `--since`/`--until` as the API's query.
fn created_range(since: Option<u64>, until: Option<u64>) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(since) = since {
        query.push(("created_from_ms", since.to_string()));
    }
    if let Some(until) = until {
        query.push(("created_until_ms", until.to_string()));
    }
    query
}

/// The commands against a running host.
async fn run_remote(remote: &Remote, command: Command) -> Result<ExitCode, Stop> {
    match command {
        Command::List {
            workflow_type,
            status,
            id_contains,
            since,
            until,
        } => {
            let mut filters = created_range(since, until);
            filters.push(("workflow_type", workflow_type.unwrap_or_default()));
            filters.push(("id_contains", id_contains.unwrap_or_default()));
            if let Some(status) = status {
                let name = status
                    .to_possible_value()
                    .map(|v| v.get_name().replace('-', "_"))
                    .unwrap_or_default();
                filters.push(("status", name));
            }
            let rows = remote.list(&filters).await.map_err(Stop::Remote)?;
            let mut out = Out::new(None, false)?;
            for row in rows {
                out!(
                    out,
                    "{}\t{}\t{}\t{} events",
                    row.id,
                    row.workflow_type,
                    row.status,
                    row.events
                );
            }
            out.finish()?;
        }
        Command::History { id } => {
            let events = remote.history(&id).await.map_err(Stop::Remote)?;
            let mut out = Out::new(None, false)?;
            for event in events {
                out!(out, "{event}");
            }
            out.finish()?;
        }
        Command::Show { id } => {
            let view = remote.instance(&id).await.map_err(Stop::Remote)?;
            let events = remote.history(&id).await.map_err(Stop::Remote)?;
            let status = remote::status_word(view["status"].as_str().unwrap_or(""));
            show_table(
                &id,
                view["workflow_type"].as_str().unwrap_or(""),
                &status,
                &events,
            )?;
        }
        Command::Export {
            since,
            until,
            workflow_type,
            out,
            force,
        } => {
            let mut filters = created_range(None, until);
            filters.push(("workflow_type", workflow_type.unwrap_or_default()));
            let rows: Vec<remote::Listed> = remote
                .list(&filters)
                .await
                .map_err(Stop::Remote)?
                .into_iter()
                .filter(|row| since.is_none_or(|since| row.updated_at_ms >= since))
                .collect();
            let mut out = Out::new(out.as_deref(), force)?;
            let bar = out.progress(rows.len() as u64, "instances");
            let (mut exported, mut damaged) = (0u64, 0usize);
            for row in &rows {
                bar.inc(1);
                let events = match remote.history(&row.id).await {
                    Ok(events) => events,
                    Err(err) => {
                        damaged += 1;
                        bar.suspend(|| eprintln!("error: `{}` not exported: {err}", row.id));
                        continue;
                    }
                };
                for event in events {
                    let at = event["recorded_at_ms"].as_u64().unwrap_or(0);
                    if since.is_some_and(|since| at < since)
                        || until.is_some_and(|until| at >= until)
                    {
                        continue;
                    }
                    let line = export_line(event, &row.id, &row.workflow_type, &row.run);
                    out!(out, "{line}");
                    exported += 1;
                }
                bar.set_message(format!("{exported} events"));
            }
            bar.finish_and_clear();
            out.finish()?;
            eprintln!(
                "exported {exported} events of {} instances from {}",
                rows.len() - damaged,
                remote.base()
            );
            if damaged > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Stats => {
            let (by_status, by_type) = remote.counts().await.map_err(Stop::Remote)?;
            let mut out = Out::new(None, false)?;
            out!(out, "server      {}", remote.base());
            out!(out, "instances   {}", by_status.values().sum::<u64>());
            for (status, n) in by_status {
                out!(out, "status      {status:<16} {n}");
            }
            for (workflow_type, n) in by_type {
                out!(out, "type        {workflow_type:<16} {n}");
            }
            out.finish()?;
        }
        Command::Verify { anchors, quiet } => {
            let anchors_given = anchors.is_some();
            let mut anchors = match anchors.as_deref() {
                Some(path) => Some(read_anchors(path)?),
                None => None,
            };
            let rows = remote.list(&[]).await.map_err(Stop::Remote)?;
            let mut out = Out::new(None, false)?;
            let bar = out.progress(rows.len() as u64, "instances");
            let mut tally = Tally::default();
            for row in &rows {
                bar.inc(1);
                let anchor = u128::from_str_radix(&row.run, 16)
                    .ok()
                    .and_then(|key| anchors.as_mut().and_then(|all| all.remove(&key)));
                let verdict = match remote.history(&row.id).await {
                    Err(err) => Err(err),
                    Ok(events) => check_links(&events)
                        .map_err(|why| format!("history of instance `{}`: {why}", row.id))
                        .and_then(|()| match &anchor {
                            Some(anchor) => {
                                let found = usize::try_from(anchor.seq)
                                    .ok()
                                    .and_then(|i| events.get(i))
                                    .map(|e| (e["hash"].as_str().unwrap_or("").to_owned(), None));
                                anchor
                                    .check_hash(found, events.len())
                                    .map(|()| {
                                        format!(
                                            "{} events, anchor #{} matches",
                                            events.len(),
                                            anchor.seq
                                        )
                                    })
                                    .map_err(|why| {
                                        format!("history of instance `{}`: {why}", row.id)
                                    })
                            }
                            None => Ok(format!("{} events", events.len())),
                        }),
                };
                tally.record(&mut out, &bar, &row.id, verdict, anchor.is_some(), quiet)?;
            }
            bar.finish_and_clear();
            // Anchors of earlier runs (before a continue-as-new) cannot be checked here:
            // the API serves current runs. Only an anchored instance that is gone fails.
            let listed: std::collections::HashSet<&str> =
                rows.iter().map(|r| r.id.as_str()).collect();
            let left: Vec<Anchor> = anchors
                .map(|a| a.into_values().collect())
                .unwrap_or_default();
            let (mut missing, mut earlier) = (Vec::new(), 0usize);
            for anchor in left {
                if listed.contains(anchor.instance.as_str()) {
                    earlier += 1;
                } else {
                    missing.push(anchor);
                }
            }
            missing.sort_by(|a, b| (&a.instance, &a.run).cmp(&(&b.instance, &b.run)));
            for anchor in &missing {
                out!(
                    out,
                    "FAIL  {}  the anchored instance is missing from the server (run {}, event #{})",
                    anchor.instance,
                    anchor.run,
                    anchor.seq
                );
            }
            let mut summary = tally.summary(
                "instances",
                rows.len(),
                anchors_given.then_some(missing.len()),
            );
            if anchors_given && earlier > 0 {
                summary += &format!(
                    ", {earlier} anchors of earlier runs not checked (verify a copy of the file for those)"
                );
            }
            out!(out, "{summary}");
            out.finish()?;
            if tally.damaged + missing.len() > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Anchors {
            command: AnchorsCommand::Export { out, force },
        } => {
            let rows = remote.list(&[]).await.map_err(Stop::Remote)?;
            let mut out = Out::new(out.as_deref(), force)?;
            let bar = out.progress(rows.len() as u64, "instances");
            let mut damaged = 0usize;
            for row in &rows {
                bar.inc(1);
                let events = match remote.history(&row.id).await.and_then(|events| {
                    check_links(&events)
                        .map(|()| events)
                        .map_err(|why| format!("history of instance `{}`: {why}", row.id))
                }) {
                    Ok(events) => events,
                    Err(err) => {
                        damaged += 1;
                        bar.suspend(|| eprintln!("error: `{}` not anchored: {err}", row.id));
                        continue;
                    }
                };
                if let Some(last) = events.last() {
                    let anchor = Anchor {
                        instance: row.id.clone(),
                        run: row.run.clone(),
                        seq: last["seq"].as_u64().unwrap_or(0),
                        hash: last["hash"].as_str().unwrap_or("").to_owned(),
                        recorded_at_ms: last["recorded_at_ms"].as_u64().unwrap_or(0),
                    };
                    let line = serde_json::to_string(&anchor).map_err(|err| {
                        cairn::Error::Environment(format!("an anchor does not encode: {err}"))
                    })?;
                    out!(out, "{line}");
                }
            }
            bar.finish_and_clear();
            out.finish()?;
            if damaged > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Schedules { command } => {
            let mut out = Out::new(None, false)?;
            let done = |view: Value| ScheduleLine::from_json(&view);
            match command {
                None | Some(SchedulesCommand::List) => {
                    let list = remote
                        .get("/api/v1/schedules")
                        .await
                        .map_err(Stop::Remote)?;
                    let Some(schedules) = list["schedules"].as_array() else {
                        return Err(Stop::Remote(
                            "the answer is not a list of schedules: check the server address"
                                .to_owned(),
                        ));
                    };
                    if schedules.is_empty() {
                        eprintln!("no schedules");
                    }
                    for view in schedules {
                        ScheduleLine::from_json(view).print(&mut out)?;
                    }
                }
                Some(SchedulesCommand::Pause { id, reason }) => {
                    let body = serde_json::json!({ "reason": reason });
                    let path = format!("/api/v1/schedules/{}/pause", remote::path_segment(&id));
                    let view = remote.post(&path, Some(body)).await.map_err(Stop::Remote)?;
                    done(view).print(&mut out)?;
                }
                Some(SchedulesCommand::Resume { id }) => {
                    let path = format!("/api/v1/schedules/{}/resume", remote::path_segment(&id));
                    let view = remote.post(&path, None).await.map_err(Stop::Remote)?;
                    done(view).print(&mut out)?;
                }
                Some(SchedulesCommand::Trigger { id }) => {
                    let path = format!("/api/v1/schedules/{}/trigger", remote::path_segment(&id));
                    let started = remote.post(&path, None).await.map_err(Stop::Remote)?;
                    out!(out, "started {}", started["id"].as_str().unwrap_or(""));
                }
            }
            out.finish()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
