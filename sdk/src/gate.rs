//! The replay gate: recorded histories replayed against the host's current workflow
//! code, with no activity run, from the host's own binary (`myapp cairn replay FILE
//! [ID | --all]`). Run before a deploy, it exits non-zero when the new code would not
//! reproduce a recorded history.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use cairn_runtime::{ReplayVerdict, StoredVerdict};

use crate::{Error, RuntimeBuilder};

/// What replaying a file found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Histories whose code reproduced the recorded result.
    pub matched: usize,
    /// Unfinished histories the code agrees with so far.
    pub unfinished: usize,
    /// Histories the code does not reproduce, with why (the first divergent step,
    /// recorded against requested), or a history that could not be read.
    pub diverged: Vec<(String, Error)>,
}

impl ReplayReport {
    /// Whether every history replayed as recorded.
    pub fn passed(&self) -> bool {
        self.diverged.is_empty()
    }
}

/// Which histories to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every run in the file.
    All,
    /// The runs of one instance id.
    Id(String),
}

/// Replays the histories of the file at `path` (read-only; no host may hold it), or with
/// feature `postgres` of the PostgreSQL database a `postgres://` string names, against
/// the workflow types registered on `builder`, calling `each` with every verdict as it
/// comes.
///
/// # Errors
/// A builder with a type registered twice, a file that cannot be opened
/// (`CAIRN-E0005`, `CAIRN-E0009`), storage errors reading its index. A history that
/// cannot be read or diverges is reported in the result, not as an error.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn replay_file(
    builder: RuntimeBuilder,
    path: impl AsRef<Path>,
    selection: &Selection,
    mut each: impl FnMut(&StoredVerdict),
) -> Result<ReplayReport, Error> {
    let replayer = builder.replayer()?;
    let journal: Box<dyn cairn_runtime::journal::Journal> = open_for_replay(path.as_ref()).await?;
    let mut report = ReplayReport::default();
    for verdict in replayer.replay_journal(journal.as_ref()).await? {
        if let Selection::Id(id) = selection {
            if &verdict.id != id {
                continue;
            }
        }
        each(&verdict);
        match verdict.verdict {
            Ok(ReplayVerdict::Matches(_)) => report.matched += 1,
            Ok(ReplayVerdict::Unfinished { .. }) => report.unfinished += 1,
            Err(err) => report.diverged.push((verdict.id, err)),
        }
    }
    if let Selection::Id(id) = selection {
        if report.matched + report.unfinished + report.diverged.len() == 0 {
            return Err(Error::InstanceNotFound(id.clone()));
        }
    }
    Ok(report)
}

/// The file at `path`, read-only; with feature `postgres`, a `postgres://` connection
/// string opens that database read-only instead (beside its running hosts).
async fn open_for_replay(path: &Path) -> Result<Box<dyn cairn_runtime::journal::Journal>, Error> {
    #[cfg(feature = "postgres")]
    {
        let text = path.to_string_lossy();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Box::new(crate::store::PostgresReader::open(&text).await?));
        }
    }
    Ok(Box::new(crate::audit::open_read_only(path)?))
}

const USAGE: &str = "usage: <program> cairn replay FILE [ID | --all]";

/// The `cairn` subcommands of a host's own binary, in one line at the top of `main`:
/// `None` when the program was not called as `<program> cairn ...` (go on as usual),
/// otherwise the command's exit code. Today: `cairn replay FILE [ID | --all]`, which
/// prints one line per history (`ok`, `unfinished`, or `DIVERGED` with the first
/// divergent step, recorded against requested) and a summary, and exits 1 if any history
/// diverged or could not be read, 2 on a usage or file error, 0 otherwise.
///
/// ```no_run
/// use std::process::ExitCode;
/// use cairn::{workflow, Ctx, Runtime, WorkflowError};
/// # #[workflow] async fn fulfil_order(_ctx: Ctx, n: u32) -> Result<u32, WorkflowError> { Ok(n) }
///
/// fn main() -> ExitCode {
///     if let Some(code) = cairn::audit::command(Runtime::builder().workflow(fulfil_order), std::env::args()) {
///         return code;
///     }
///     // ... the host as usual
///     ExitCode::SUCCESS
/// }
/// ```
///
/// In CI, before a deploy: `myapp cairn replay prod-copy.redb --all`.
///
/// It starts its own single-threaded tokio runtime: call it before the host starts one.
pub fn command(
    builder: RuntimeBuilder,
    args: impl IntoIterator<Item = String>,
) -> Option<ExitCode> {
    let args: Vec<String> = args.into_iter().skip(1).collect();
    if args.first().map(String::as_str) != Some("cairn") {
        return None;
    }
    let mut out = std::io::stdout().lock();
    Some(run(builder, &args[1..], &mut out))
}

fn run(builder: RuntimeBuilder, args: &[String], out: &mut dyn Write) -> ExitCode {
    let (path, selection) = match args {
        [verb, path] if verb == "replay" => (path, Selection::All),
        [verb, path, all] if verb == "replay" && all == "--all" => (path, Selection::All),
        [verb, path, id] if verb == "replay" && !id.starts_with("--") => {
            (path, Selection::Id(id.clone()))
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    // A spinner with the count and the rate on stderr, when a person watches it and the
    // verdicts go elsewhere (a file, a pipe).
    let bar = if std::io::stderr().is_terminal() && !std::io::stdout().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {pos} histories replayed ({per_sec}), {elapsed}",
        ) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut closed = false;
    let report = runtime.block_on(replay_file(builder, path, &selection, |verdict| {
        bar.inc(1);
        let line = match &verdict.verdict {
            Ok(ReplayVerdict::Matches(outcome)) => {
                format!("ok          {}  {}", verdict.id, outcome_name(outcome))
            }
            Ok(ReplayVerdict::Unfinished { next_step }) => {
                format!("unfinished  {}  agrees up to step {next_step}", verdict.id)
            }
            Err(err) => format!("DIVERGED    {}  {err}", verdict.id),
        };
        // A closed pipe (`| head`) ends the listing quietly; the replay goes on.
        if !closed && writeln!(out, "{line}").is_err() {
            closed = true;
        }
    }));
    bar.finish_and_clear();
    match report {
        Ok(report) => {
            let _ = writeln!(
                out,
                "{} histories replayed: {} match, {} unfinished and agreeing, {} diverged",
                report.matched + report.unfinished + report.diverged.len(),
                report.matched,
                report.unfinished,
                report.diverged.len()
            );
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

fn outcome_name(outcome: &cairn_runtime::Outcome) -> &'static str {
    match outcome {
        cairn_runtime::Outcome::Completed(_) => "completed",
        cairn_runtime::Outcome::Failed(_) => "failed",
        cairn_runtime::Outcome::Terminated(_) => "terminated",
        cairn_runtime::Outcome::ContinuedAsNew(_) => "continued as new",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_programs_arguments_are_left_alone_and_bad_ones_refused() {
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(command(crate::Runtime::builder(), args(&["app", "serve"])).is_none());
        assert!(command(crate::Runtime::builder(), args(&["app"])).is_none());
        let mut out = Vec::new();
        let code = run(crate::Runtime::builder(), &args(&["replay"]), &mut out);
        assert_eq!(code, ExitCode::from(2));
        let code = run(
            crate::Runtime::builder(),
            &args(&["replay", "/nonexistent/file.redb", "--all"]),
            &mut out,
        );
        assert_eq!(code, ExitCode::from(2));
    }
}
