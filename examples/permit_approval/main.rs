//! Building permits from the terminal, on a local redb file: a citizen applies, attaches
//! documents and submits; planning, fire safety and environment review in parallel, each
//! may ask for more documents (the case goes back to the citizen); a permit officer
//! decides. Each command opens the host, acts, lets the case move, prints, and closes.
//!
//! ```sh
//! cargo run --example permit_approval -- apply P-1 --applicant cem --site "12 Elm St" --works "garden studio"
//! cargo run --example permit_approval -- attach P-1 site-plan.pdf --as cem
//! cargo run --example permit_approval -- submit P-1 --as cem
//! cargo run --example permit_approval -- tasks --as pia --role planning
//! cargo run --example permit_approval -- review P-1/4 --as pia --role planning --verdict approve --note "fits the plan"
//! cargo run --example permit_approval -- decide P-1/8 --as olga --role permit_officer --grant --conditions "no works on Sundays"
//! cargo run --example permit_approval -- status P-1
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn::events::AttrValue;
use cairn::notify::{Notification, Notifier};
use cairn::policy::{Roles, Verb};
use cairn::{Actor, Document, Error, Runtime, Status, TaskId, TaskQuery, TaskStatus};
use clap::{Parser, Subcommand, ValueEnum};

mod process;

use process::{permit_approval, Application, Decision, Review, Verdict, SUBMITTED};

#[derive(Parser, Debug)]
#[command(about = "Cairn example: building permits reviewed by several departments")]
struct Args {
    /// The redb database file.
    #[arg(long, default_value = "permits.redb", global = true)]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum VerdictArg {
    Approve,
    Reject,
    More,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Files an application (as the citizen).
    Apply {
        /// The case id.
        id: String,
        /// The citizen.
        #[arg(long)]
        applicant: String,
        /// Where.
        #[arg(long)]
        site: String,
        /// What they want to build.
        #[arg(long)]
        works: String,
    },
    /// Attaches a file to a case (a second attach of a name is its next version).
    Attach {
        /// The case id.
        id: String,
        /// The file.
        file: PathBuf,
        /// The citizen.
        #[arg(long = "as")]
        user: String,
    },
    /// The citizen says the documents are in.
    Submit {
        /// The case id.
        id: String,
        /// The citizen.
        #[arg(long = "as")]
        user: String,
    },
    /// Lists the open tasks a person sees.
    Tasks {
        #[command(flatten)]
        who: Who,
    },
    /// A department's review.
    Review {
        /// The task (`case/step`).
        task: TaskId,
        #[command(flatten)]
        who: Who,
        /// The verdict.
        #[arg(long, value_enum)]
        verdict: VerdictArg,
        /// Why.
        #[arg(long)]
        note: String,
    },
    /// The permit officer's decision.
    Decide {
        /// The task (`case/step`).
        task: TaskId,
        #[command(flatten)]
        who: Who,
        /// Grant the permit.
        #[arg(long)]
        grant: bool,
        /// Conditions, or why not.
        #[arg(long)]
        conditions: String,
    },
    /// Shows a case with its documents and open tasks, or every case.
    Status {
        /// The case id.
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
        println!("  notify {:<27} {} {}", n.topic.name(), n.instance, n.body);
        Ok(())
    }
}

/// Citizens file, attach and submit; departments and the permit office read and act on
/// their tasks.
fn policy() -> Roles {
    let staff = ["planning", "fire_safety", "environment", "permit_officer"];
    Roles::new()
        .allow(Verb::Start, "permit_approval", ["citizen"])
        .allow(Verb::Attach, "permit_approval", ["citizen"])
        .allow(Verb::Signal, "permit_approval", ["citizen"])
        .allow(
            Verb::Read,
            "permit_approval",
            ["citizen"].into_iter().chain(staff),
        )
        .allow(Verb::Task, "permit_approval", staff)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
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
        .workflow(permit_approval)
        .signal(SUBMITTED)
        .policy(Arc::new(policy()))
        .notifier(Arc::new(Printer))
        .open(&args.db)
        .await?;
    let shown = command(&rt, args.command).await;
    // Let the cases move on what was just recorded before the file is closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let result = match shown {
        Ok(Some(id)) => print_case(&rt, &id).await,
        Ok(None) => Ok(()),
        Err(err) => Err(err),
    };
    rt.shutdown().await;
    result
}

fn citizen(user: &str) -> Actor {
    Actor::new(user, ["citizen"])
}

/// Runs one command; returns the case to print afterwards, if any.
async fn command(rt: &Runtime, command: Command) -> Result<Option<String>, Error> {
    Ok(match command {
        Command::Apply {
            id,
            applicant,
            site,
            works,
        } => {
            let actor = citizen(&applicant);
            let application = Application {
                applicant,
                site,
                works,
            };
            rt.acting_as(&actor)
                .start(permit_approval, &id, application)
                .await?;
            Some(id)
        }
        Command::Attach { id, file, user } => {
            let bytes = std::fs::read(&file).map_err(|err| {
                Error::InvalidArgument(format!("cannot read {}: {err}", file.display()))
            })?;
            let name = file
                .file_name()
                .map_or("document".to_owned(), |n| n.to_string_lossy().into_owned());
            let content_type = match file.extension().and_then(|e| e.to_str()) {
                Some("pdf") => "application/pdf",
                Some("png") => "image/png",
                Some("jpg" | "jpeg") => "image/jpeg",
                Some("txt") => "text/plain",
                _ => "application/octet-stream",
            };
            let version = rt
                .acting_as(&citizen(&user))
                .attach(&id, Document::new(name, content_type, bytes))
                .await?;
            println!(
                "{id}: {} version {} attached ({} bytes, sha256 {})",
                version.name,
                version.version,
                version.bytes,
                &version.sha256_hex()[..16]
            );
            Some(id)
        }
        Command::Submit { id, user } => {
            rt.acting_as(&citizen(&user))
                .send(&id, SUBMITTED, &"documents complete".to_owned())
                .await?;
            Some(id)
        }
        Command::Tasks { who } => {
            let page = rt.tasks(&TaskQuery::for_actor(&who.actor())).await?;
            if page.rows.is_empty() {
                println!("no open tasks for {}", who.user);
            }
            for row in page.rows {
                println!("{:<8} {}", row.id().to_string(), row.title);
            }
            None
        }
        Command::Review {
            task,
            who,
            verdict,
            note,
        } => {
            let verdict = match verdict {
                VerdictArg::Approve => Verdict::Approve,
                VerdictArg::Reject => Verdict::Reject,
                VerdictArg::More => Verdict::MoreDocuments,
            };
            rt.complete(&who.actor(), &task, &Review { verdict, note })
                .await?;
            Some(task.instance)
        }
        Command::Decide {
            task,
            who,
            grant,
            conditions,
        } => {
            rt.complete(&who.actor(), &task, &Decision { grant, conditions })
                .await?;
            Some(task.instance)
        }
        Command::Status { id: Some(id) } => Some(id),
        Command::Status { id: None } => {
            for info in rt.list(&cairn::ListFilter::default()).await? {
                print_case(rt, &info.id).await?;
            }
            None
        }
    })
}

async fn print_case(rt: &Runtime, id: &str) -> Result<(), Error> {
    let info = rt.status(id).await?;
    let stage = match info.attributes.get("stage") {
        Some(AttrValue::Text(stage)) => stage.clone(),
        _ => String::new(),
    };
    let status = match info.status {
        Status::Completed => match rt.handle(permit_approval, id).result().await? {
            Ok(outcome) => format!("{outcome:?}"),
            Err(err) => format!("failed: {err}"),
        },
        Status::Running => stage,
        other => format!("{other:?}"),
    };
    println!("{id:<8} {status}");
    for document in rt.documents(id).await? {
        println!(
            "         document {} v{} ({}, {} bytes)",
            document.name, document.version, document.content_type, document.bytes
        );
    }
    // Open tasks of this case (steps are few; the history has them).
    for step in 1..64 {
        match rt.task(&TaskId::new(id, step)).await {
            Ok(task) if task.status == TaskStatus::Open => println!(
                "         task {id}/{step}: {} (for {})",
                task.state.spec.title,
                task.state.candidates.roles.join(", ")
            ),
            Ok(_) | Err(Error::TaskNotFound { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
