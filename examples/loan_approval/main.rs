//! Loan approval from the terminal, on a local redb file. Each command opens the host,
//! which resumes every open application, does one thing, lets the process move, prints
//! what happened, and closes the file.
//!
//! ```sh
//! cargo run --example loan_approval -- apply L-1 --applicant "Edsger Dijkstra" --amount 180000 --income 150000
//! cargo run --example loan_approval -- tasks --as carol --role underwriter
//! cargo run --example loan_approval -- claim L-1/5 --as carol --role underwriter
//! cargo run --example loan_approval -- decide L-1/5 --as carol --role underwriter --approve --note "income verified"
//! cargo run --example loan_approval -- sign L-1 --by "Edsger Dijkstra"
//! cargo run --example loan_approval -- status
//! ```
//!
//! Deadlines are business days on the bank's calendar: an underwriter who has not
//! decided within two hands the review to `senior_underwriter`; after five it is
//! declined. Notifications (`loan.declined`, `loan.offered`, `task.created`, ...) are
//! printed as they are delivered.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn::events::{AttrValue, EventKind, TaskChange};
use cairn::notify::{Notification, Notifier};
use cairn::{Actor, Error, Runtime, Status, TaskId, TaskQuery, TaskStatus};
use clap::{Parser, Subcommand};

mod process;

use process::{loan_approval, Application, Signature, Underwriting, SIGNED};

#[derive(Parser, Debug)]
#[command(about = "Cairn example: loan approval with an underwriter, deadlines and a signature")]
struct Args {
    /// The redb database file.
    #[arg(long, default_value = "loans.redb", global = true)]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Files an application.
    Apply {
        /// The application's id.
        id: String,
        /// Who applies.
        #[arg(long)]
        applicant: String,
        /// The amount, in whole euros.
        #[arg(long)]
        amount: u64,
        /// Yearly income, in whole euros.
        #[arg(long)]
        income: u64,
    },
    /// Lists the open tasks a person sees: theirs and those their roles may claim.
    Tasks {
        #[command(flatten)]
        who: Who,
    },
    /// Takes a task.
    Claim {
        /// The task (`application/step`, as `tasks` prints it).
        task: TaskId,
        #[command(flatten)]
        who: Who,
    },
    /// Decides a task.
    Decide {
        /// The task (`application/step`).
        task: TaskId,
        #[command(flatten)]
        who: Who,
        /// Lend.
        #[arg(long, conflicts_with = "decline")]
        approve: bool,
        /// Do not lend.
        #[arg(long)]
        decline: bool,
        /// Why; the applicant reads it.
        #[arg(long)]
        note: String,
    },
    /// The applicant signs the offer.
    Sign {
        /// The application's id.
        id: String,
        /// Who signs.
        #[arg(long)]
        by: String,
    },
    /// Shows every application, or one with its history.
    Status {
        /// The application's id.
        id: Option<String>,
    },
}

/// Who acts, and with which roles.
#[derive(clap::Args, Debug)]
struct Who {
    /// User id.
    #[arg(long = "as")]
    user: String,
    /// A role (repeat for several).
    #[arg(long = "role")]
    roles: Vec<String>,
}

impl Who {
    fn actor(&self) -> Actor {
        Actor::new(self.user.clone(), self.roles.clone())
    }
}

/// Prints each notification as it is delivered.
struct Printer;

#[async_trait::async_trait]
impl Notifier for Printer {
    async fn notify(&self, n: &Notification) -> Result<(), String> {
        println!("  notify {:<16} {} {}", n.topic.name(), n.instance, n.body);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    process::check_tables();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let rt = Runtime::builder()
        .workflow(loan_approval)
        .signal(SIGNED)
        .notifier(Arc::new(Printer))
        .open(&args.db)
        .await?;
    let result = command(&rt, args.command).await;
    // Let the applications move on what was just recorded before the file is closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt.shutdown().await;
    result
}

async fn command(rt: &Runtime, command: Command) -> Result<(), Error> {
    match command {
        Command::Apply {
            id,
            applicant,
            amount,
            income,
        } => {
            let application = Application {
                applicant,
                amount,
                income,
            };
            let handle = rt.start(loan_approval, &id, application).await?;
            if !handle.created() {
                println!("{id} was filed before; nothing new was started");
            }
            settle().await;
            print_application(rt, &id).await
        }
        Command::Tasks { who } => {
            let actor = who.actor();
            let page = rt.tasks(&TaskQuery::for_actor(&actor)).await?;
            if page.rows.is_empty() {
                println!("no open tasks for {}", actor.id);
            }
            for row in page.rows {
                let held = row
                    .assignee
                    .as_deref()
                    .map_or("claimable".to_owned(), |who| format!("held by {who}"));
                let due = row
                    .due_at_ms
                    .map_or(String::new(), |ms| format!(", due {}", when(ms)));
                println!(
                    "{:<10} {}  [{held}{due}, priority {}]",
                    row.id().to_string(),
                    row.title,
                    row.priority
                );
            }
            Ok(())
        }
        Command::Claim { task, who } => {
            rt.claim(&who.actor(), &task).await?;
            println!("{task} is now held by {}", who.user);
            Ok(())
        }
        Command::Decide {
            task,
            who,
            approve,
            decline,
            note,
        } => {
            if approve == decline {
                return Err(Error::InvalidArgument("say --approve or --decline".into()));
            }
            let decision = Underwriting { approve, note };
            rt.complete(&who.actor(), &task, &decision).await?;
            println!("{task} decided by {}", who.user);
            settle().await;
            print_application(rt, &task.instance).await
        }
        Command::Sign { id, by } => {
            rt.send(&id, SIGNED, &Signature { signed_by: by }).await?;
            settle().await;
            print_application(rt, &id).await
        }
        Command::Status { id: Some(id) } => {
            print_application(rt, &id).await?;
            for event in rt.history(&id).await? {
                println!(
                    "  {:>3} {} {:<22} {}",
                    event.record.seq,
                    when(event.record.recorded_at_ms),
                    event.record.kind.name(),
                    describe(&event.record.kind)
                );
            }
            Ok(())
        }
        Command::Status { id: None } => {
            let all = rt.list(&cairn::ListFilter::default()).await?;
            if all.is_empty() {
                println!("no applications yet; file one with `apply`");
            }
            for info in all {
                print_application(rt, &info.id).await?;
            }
            Ok(())
        }
    }
}

/// Gives the process a moment to reach its next wait.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn print_application(rt: &Runtime, id: &str) -> Result<(), Error> {
    let info = rt.status(id).await?;
    let stage = match info.attributes.get("stage") {
        Some(AttrValue::Text(stage)) => stage.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let status = match &info.status {
        Status::Running => "running".to_owned(),
        Status::Completed => {
            let outcome = rt.handle(loan_approval, id).result().await?;
            match outcome {
                Ok(outcome) => format!("done: {outcome:?}"),
                Err(err) => format!("failed: {err}"),
            }
        }
        other => format!("{other:?}"),
    };
    println!("{id:<10} {status:<60} stage {stage}");
    // The open review, if any.
    for step in 1..16 {
        match rt.task(&TaskId::new(id, step)).await {
            Ok(task) if task.status == TaskStatus::Open => {
                let holder = task
                    .state
                    .assignee
                    .as_deref()
                    .map_or("nobody yet".to_owned(), |who| who.to_owned());
                println!(
                    "           task {id}/{step}: {} (held by {holder}; for {})",
                    task.state.spec.title,
                    task.state.candidates.roles.join(", ")
                );
            }
            Ok(_) | Err(Error::TaskNotFound { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// What an event says, in a few words.
fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::ActivityCompleted { activity, .. } => activity.clone(),
        EventKind::SideEffect { label, .. } => label.clone(),
        EventKind::AttributesSet { attributes, .. } => attributes
            .iter()
            .map(|(name, value)| format!("{name} = {value}"))
            .collect::<Vec<_>>()
            .join(", "),
        EventKind::TaskCreated { task, .. } => {
            format!("{} for {}", task.title, task.candidates.roles.join(", "))
        }
        EventKind::TaskChanged { actor, change, .. } => {
            let what = match change {
                TaskChange::Claimed => "claimed".to_owned(),
                TaskChange::Released => "released".to_owned(),
                TaskChange::Delegated { to } => format!("delegated to {to}"),
                TaskChange::Commented { text } => format!("commented: {text}"),
                TaskChange::Escalated { tier, .. } => format!("escalation tier {tier}"),
                TaskChange::Overdue => "overdue".to_owned(),
            };
            format!("{what} by {}", actor.id)
        }
        EventKind::TaskCompleted {
            actor, decision, ..
        } => format!(
            "by {}: {}",
            actor.id,
            String::from_utf8_lossy(&decision.data)
        ),
        EventKind::Notified { topic, .. } => topic.clone(),
        EventKind::SignalReceived { name, .. } => name.clone(),
        EventKind::SignalWaitStarted { name, .. } => format!("waiting for {name}"),
        EventKind::SignalDelivered {
            name, signal_seq, ..
        } => format!("{name} (event {signal_seq}) handed to the workflow"),
        EventKind::TaskTaken { step } => format!("the decision on task {step} taken"),
        _ => String::new(),
    }
}

/// A commit time as `YYYY-MM-DD HH:MM` UTC.
fn when(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}")
}
