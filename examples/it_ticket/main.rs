//! IT tickets from the terminal, on a local redb file: first-line support answers, or
//! the ticket escalates to second and third line on the service desk's business hours;
//! the reporter then gets a satisfaction survey. Each command opens the host, which
//! resumes every open ticket, does one thing, lets the tickets move, prints, and closes.
//!
//! ```sh
//! cargo run --example it_ticket -- report T-1 --by dana --summary "VPN drops every hour" --urgent
//! cargo run --example it_ticket -- tasks --as lee --role l1_support
//! cargo run --example it_ticket -- claim T-1/5 --as lee --role l1_support
//! cargo run --example it_ticket -- resolve T-1/5 --as lee --role l1_support --answer "new VPN profile pushed"
//! cargo run --example it_ticket -- survey T-1 --score 5
//! cargo run --example it_ticket -- status
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn::events::AttrValue;
use cairn::notify::{Notification, Notifier};
use cairn::{Actor, Error, Runtime, Status, TaskId, TaskQuery};
use clap::{Parser, Subcommand};

mod process;

use process::{it_ticket, Resolution, Survey, Ticket, SURVEY};

#[derive(Parser, Debug)]
#[command(about = "Cairn example: IT tickets escalating through support lines")]
struct Args {
    /// The redb database file.
    #[arg(long, default_value = "tickets.redb", global = true)]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Files a ticket.
    Report {
        /// The ticket's id.
        id: String,
        /// Who reports it.
        #[arg(long)]
        by: String,
        /// What is wrong.
        #[arg(long)]
        summary: String,
        /// Work is stopped by it (shorter deadlines).
        #[arg(long)]
        urgent: bool,
    },
    /// Lists the open tickets a person sees.
    Tasks {
        #[command(flatten)]
        who: Who,
    },
    /// Takes a ticket.
    Claim {
        /// The task (`ticket/step`, as `tasks` prints it).
        task: TaskId,
        #[command(flatten)]
        who: Who,
    },
    /// Answers a ticket.
    Resolve {
        /// The task (`ticket/step`).
        task: TaskId,
        #[command(flatten)]
        who: Who,
        /// What was done, for the reporter.
        #[arg(long)]
        answer: String,
    },
    /// The reporter's satisfaction score (1-5).
    Survey {
        /// The ticket's id.
        id: String,
        /// 1 (poor) to 5 (excellent).
        #[arg(long)]
        score: u8,
    },
    /// Shows every ticket.
    Status,
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
        .workflow(it_ticket)
        .signal(SURVEY)
        .notifier(Arc::new(Printer))
        .open(&args.db)
        .await?;
    let result = command(&rt, args.command).await;
    // Let the tickets move on what was just recorded before the file is closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if result.is_ok() {
        print_all(&rt).await?;
    }
    rt.shutdown().await;
    result
}

async fn command(rt: &Runtime, command: Command) -> Result<(), Error> {
    match command {
        Command::Report {
            id,
            by,
            summary,
            urgent,
        } => {
            let ticket = Ticket {
                reporter: by,
                summary,
                urgent,
            };
            if !rt.start(it_ticket, &id, ticket).await?.created() {
                println!("{id} was reported before; nothing new was started");
            }
        }
        Command::Tasks { who } => {
            let actor = who.actor();
            let page = rt.tasks(&TaskQuery::for_actor(&actor)).await?;
            if page.rows.is_empty() {
                println!("no open tickets for {}", actor.id);
            }
            for row in page.rows {
                let held = row
                    .assignee
                    .as_deref()
                    .map_or("claimable".to_owned(), |who| format!("held by {who}"));
                let lines = row.candidates.roles.join(", ");
                println!(
                    "{:<8} {}  [{held}; {lines}; escalated {} times]",
                    row.id().to_string(),
                    row.title,
                    row.escalations
                );
            }
        }
        Command::Claim { task, who } => {
            rt.claim(&who.actor(), &task).await?;
            println!("{task} is now held by {}", who.user);
        }
        Command::Resolve { task, who, answer } => {
            rt.complete(&who.actor(), &task, &Resolution { answer })
                .await?;
            println!("{task} answered by {}", who.user);
        }
        Command::Survey { id, score } => {
            if !(1..=5).contains(&score) {
                return Err(Error::InvalidArgument("a score is 1 to 5".into()));
            }
            rt.send(&id, SURVEY, &Survey { score }).await?;
        }
        Command::Status => {}
    }
    Ok(())
}

async fn print_all(rt: &Runtime) -> Result<(), Error> {
    for info in rt.list(&cairn::ListFilter::default()).await? {
        let text = |name: &str| match info.attributes.get(name) {
            Some(AttrValue::Text(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let status = match info.status {
            Status::Completed => match rt.handle(it_ticket, &info.id).result().await? {
                Ok(closed) => format!(
                    "closed: line {} ({}) answered \"{}\", satisfaction {}",
                    closed.line,
                    closed.resolved_by,
                    closed.answer,
                    closed
                        .satisfaction
                        .map_or("not given".to_owned(), |s| format!("{s}/5"))
                ),
                Err(err) => format!("failed: {err}"),
            },
            Status::Running => format!("{} (queue {})", text("stage"), text("queue")),
            other => format!("{other:?}"),
        };
        println!("{:<8} {status}", info.id);
    }
    Ok(())
}
