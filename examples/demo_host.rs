//! The demo host: example processes on a local redb file, the HTTP API and the dashboard
//! on `http://127.0.0.1:<port>`, a stream of sample instances, and a token per role
//! printed at start. Open the address, paste a token, and watch the processes move.
//!
//! ```sh
//! cargo run --example demo_host                 # demo.redb, port 8080
//! cargo run --example demo_host -- --port 0     # any free port (printed)
//! cargo run --example demo_host -- cairn replay demo.redb --all   # the replay gate
//! ```
//!
//! Hosted: `shop_order` (stock, a payment that sometimes needs retries and sometimes is
//! declined, a wait for the warehouse, shipping), `expense` (an approver's task due in
//! two minutes, escalating to a manager, declined by the runtime after five) and the
//! `loan_approval` seed process (its underwriter tasks appear in the inbox); and three
//! schedules of `settlement` (every ten minutes, weekdays at 18:00 UTC, and a paused one).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn::policy::{Roles, Verb};
use cairn::server::Tokens;
use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Actor, Ctx, Escalate, Recurrence, Runtime,
    TaskKind, WorkflowError,
};
use clap::Parser;
use serde::{Deserialize, Serialize};

#[path = "loan_approval/process.rs"]
#[allow(dead_code)]
mod loan;

#[derive(Parser, Debug)]
#[command(about = "Cairn demo host: example processes, the HTTP API and the dashboard")]
struct Args {
    /// The redb database file, or a PostgreSQL connection string (`postgres://...`):
    /// then this host is one of any number sharing it.
    #[arg(long, default_value = "demo.redb")]
    db: PathBuf,
    /// The port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Start no sample instances.
    #[arg(long)]
    quiet: bool,
    /// Also write the tokens, as JSON by role, to this file (for scripts and tests).
    #[arg(long)]
    tokens_out: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Order {
    customer: String,
    region: String,
    items: u32,
    cents: u64,
    /// How long the warehouse takes, in seconds (5 to 25 when not given).
    #[serde(default)]
    warehouse_secs: Option<u64>,
}

/// Deterministic from the order, so a replay and a retry see the same "random" outcome.
fn dice(order: &Order, salt: u64) -> u64 {
    let mut x = order.cents ^ (u64::from(order.items) << 32) ^ salt;
    for b in order.customer.bytes() {
        x = x.rotate_left(5) ^ u64::from(b);
    }
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40
}

#[activity(start_to_close = "10s", max_attempts = 3)]
async fn reserve_stock(_ctx: ActivityCtx, order: Order) -> Result<String, ActivityError> {
    tokio::time::sleep(Duration::from_millis(150 + dice(&order, 1) % 400)).await;
    Ok(format!("{} items reserved", order.items))
}

#[activity(start_to_close = "10s", max_attempts = 4, initial_backoff = "1s")]
async fn charge(ctx: ActivityCtx, order: Order) -> Result<String, ActivityError> {
    tokio::time::sleep(Duration::from_millis(200 + dice(&order, 2) % 500)).await;
    let declined = dice(&order, 3) % 11;
    if declined == 0 {
        return Err(ActivityError::terminal(
            "declined",
            "the card issuer declined the payment",
        ));
    }
    // Every fourth order's payment provider times out once or twice first.
    let flaky = dice(&order, 4) % 4;
    if flaky == 0 && ctx.attempt < 3 {
        return Err(ActivityError::retryable("payment provider timed out"));
    }
    Ok(format!(
        "charged {}.{:02} EUR",
        order.cents / 100,
        order.cents % 100
    ))
}

#[activity(start_to_close = "10s", max_attempts = 3)]
async fn ship(_ctx: ActivityCtx, order: Order) -> Result<String, ActivityError> {
    tokio::time::sleep(Duration::from_millis(300 + dice(&order, 5) % 600)).await;
    Ok(format!("parcel for {} handed to the carrier", order.region))
}

#[workflow]
async fn shop_order(ctx: Ctx, order: Order) -> Result<String, WorkflowError> {
    ctx.set_attributes([
        (
            "customer",
            cairn::events::AttrValue::Text(order.customer.clone()),
        ),
        (
            "region",
            cairn::events::AttrValue::Text(order.region.clone()),
        ),
    ])
    .await;
    ctx.set_stage("stock").await;
    ctx.activity(reserve_stock, order.clone()).await?;
    ctx.set_stage("payment").await;
    let paid = ctx.activity(charge, order.clone()).await?;
    ctx.set_stage("warehouse").await;
    let warehouse = order
        .warehouse_secs
        .unwrap_or_else(|| 5 + dice(&order, 6) % 20);
    ctx.sleep(Duration::from_secs(warehouse)).await?;
    ctx.set_stage("shipping").await;
    let shipped = ctx.activity(ship, order.clone()).await?;
    ctx.set_stage("done").await;
    Ok(format!("{paid}; {shipped}"))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Expense {
    employee: String,
    purpose: String,
    cents: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
struct ExpenseDecision {
    /// Approve the expense?
    approve: bool,
    /// A note for the employee.
    note: String,
}

const APPROVE_EXPENSE: TaskKind<Expense, ExpenseDecision> = TaskKind::new("approve_expense");

#[workflow]
async fn expense(ctx: Ctx, claim: Expense) -> Result<String, WorkflowError> {
    ctx.set_attributes([(
        "employee",
        cairn::events::AttrValue::Text(claim.employee.clone()),
    )])
    .await;
    let title = format!(
        "Expense of {}.{:02} EUR by {}",
        claim.cents / 100,
        claim.cents % 100,
        claim.employee
    );
    let task = APPROVE_EXPENSE
        .task(claim.clone())
        .title(title)
        .description(format!("Purpose: {}", claim.purpose))
        .roles(["approver"])
        .due_in(Duration::from_secs(120))
        .escalate_after(Duration::from_secs(120), Escalate::to_roles(["manager"]))
        .escalate_after(
            Duration::from_secs(300),
            Escalate::Decide(ExpenseDecision {
                approve: false,
                note: "no decision within five minutes".into(),
            }),
        );
    let decided = ctx.human_task(task).await?;
    if !decided.decision.approve {
        ctx.notify("expense.declined", &claim).await;
    }
    Ok(format!(
        "{} by {}: {}",
        if decided.decision.approve {
            "approved"
        } else {
            "declined"
        },
        decided.by.id,
        decided.decision.note
    ))
}

/// A region's settlement, started by the schedules.
#[workflow]
async fn settlement(_ctx: Ctx, region: String) -> Result<String, WorkflowError> {
    Ok(format!("settled the {region} region"))
}

/// The demo's schedules, created once (a restart keeps what operators did to them).
async fn schedules(rt: &Runtime) -> Result<(), cairn::Error> {
    let held = rt.schedules();
    let missing = |id: &str| !held.iter().any(|(held, _)| held == id);
    if missing("settle-north") {
        let every = Recurrence::every(Duration::from_secs(600));
        rt.schedule(settlement, "settle-north", "north".into(), every)
            .await?;
    }
    if missing("settle-south") {
        let weekdays = Recurrence::cron("0 18 * * MON-FRI");
        rt.schedule(settlement, "settle-south", "south".into(), weekdays)
            .await?;
    }
    if missing("settle-archive") {
        let sundays = Recurrence::cron("0 3 * * SUN");
        rt.schedule(settlement, "settle-archive", "archive".into(), sundays)
            .await?;
        rt.pause_schedule("settle-archive", "archive store migration in progress")
            .await?;
    }
    Ok(())
}

fn policy() -> Roles {
    Roles::new()
        .admin("admin")
        .allow_any_type(Verb::Start, ["operator"])
        .allow_any_type(Verb::Signal, ["operator"])
        .allow_any_type(Verb::Update, ["operator"])
        .allow_any_type(Verb::Cancel, ["operator"])
        .allow_any_type(Verb::Terminate, ["operator"])
        .allow_any_type(Verb::Attach, ["operator"])
        .allow_any_type(Verb::Schedule, ["operator"])
        .allow_any_type(Verb::Read, ["operator", "auditor"])
        .allow_anyone(Verb::Task)
}

const CUSTOMERS: [&str; 8] = [
    "Ada Lovelace",
    "Alan Turing",
    "Grace Hopper",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
    "Frances Allen",
    "Ken Thompson",
];
const REGIONS: [&str; 4] = ["north", "south", "east", "west"];

/// Starts sample instances, a few every few seconds, idempotently by id.
async fn stream(rt: Runtime) {
    let mut n: u64 = 0;
    loop {
        n += 1;
        let pick =
            |k: u64, len: usize| (n.wrapping_mul(2654435761).wrapping_add(k) % len as u64) as usize;
        let order_input = Order {
            customer: CUSTOMERS[pick(1, CUSTOMERS.len())].into(),
            region: REGIONS[pick(2, REGIONS.len())].into(),
            items: 1 + (n % 7) as u32,
            cents: 1_999 + (n * 7_919) % 90_000,
            warehouse_secs: None,
        };
        let started = rt
            .start(shop_order, &format!("order-{n:05}"), order_input)
            .await;
        // A host restarted on its file carries on after the instances it made before.
        if started.as_ref().is_ok_and(|handle| !handle.created()) {
            continue;
        }
        let (every_third, every_eighth) = (n % 3, n % 8);
        if every_third == 0 {
            let claim = Expense {
                employee: CUSTOMERS[pick(3, CUSTOMERS.len())].into(),
                purpose: [
                    "train to a customer",
                    "conference ticket",
                    "team lunch",
                    "laptop dock",
                ][pick(4, 4)]
                .into(),
                cents: 2_500 + (n * 1_301) % 60_000,
            };
            let _ = rt.start(expense, &format!("expense-{n:05}"), claim).await;
        }
        if every_eighth == 0 {
            let application = loan::Application {
                applicant: CUSTOMERS[pick(5, CUSTOMERS.len())].into(),
                amount: 20_000 + (n * 13_007) % 200_000,
                income: 40_000 + (n * 7_001) % 120_000,
            };
            let _ = rt
                .start(loan::loan_approval, &format!("loan-{n:05}"), application)
                .await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The workflows this host runs, as the host and its replay gate build them.
fn builder() -> cairn::RuntimeBuilder {
    Runtime::builder()
        .workflow(shop_order)
        .workflow(expense)
        .workflow(loan::loan_approval)
        .workflow(settlement)
        .signal(loan::SIGNED)
        .policy(Arc::new(policy()))
}

fn main() -> std::process::ExitCode {
    // `demo_host cairn replay FILE [ID | --all]`: the pre-deploy replay gate, which
    // replays recorded histories against this build's workflows (it runs its own tokio
    // runtime, so it comes before the host's).
    if let Some(code) = cairn::audit::command(builder(), std::env::args()) {
        return code;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(host()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn host() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let db = args.db.to_string_lossy();
    let postgres = db.starts_with("postgres://") || db.starts_with("postgresql://");
    let rt = if postgres {
        builder().open_postgres(&db).await?
    } else {
        builder().open(&args.db).await?
    };
    schedules(&rt).await?;
    let mut tokens = Tokens::new();
    let people = [
        ("admin", Actor::new("ada", ["admin"])),
        ("operator", Actor::new("olga", ["operator"])),
        ("auditor", Actor::new("audrey", ["auditor"])),
        ("approver", Actor::new("april", ["approver"])),
        ("manager", Actor::new("max", ["manager"])),
        ("underwriter", Actor::new("carol", [loan::UNDERWRITER])),
    ];
    let mut printed = serde_json::Map::new();
    println!("Cairn demo host on {}", args.db.display());
    println!("Tokens (new on every start):");
    for (role, actor) in people {
        let id = actor.id.clone();
        let token = tokens.generate(actor);
        println!("  {role:<12} {id:<7} {token}");
        printed.insert(role.to_owned(), serde_json::Value::String(token));
    }
    if let Some(path) = &args.tokens_out {
        std::fs::write(path, serde_json::to_vec_pretty(&printed)?)?;
    }
    let server = rt.http_server(tokens);
    // The dashboard's saved views: beside a database file; a PostgreSQL database keeps
    // them itself, for every host.
    let server = if postgres {
        server
    } else {
        server.views_file(args.db.with_extension("views.json"))?
    };
    let running = server
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], args.port)))
        .await?;
    println!("Dashboard: http://{}/", running.addr());
    println!("API:       http://{}/openapi.json", running.addr());
    let sampler = (!args.quiet).then(|| tokio::spawn(stream(rt.clone())));
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    running.stop().await;
    rt.shutdown().await;
    Ok(())
}
