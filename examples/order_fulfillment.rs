//! Order fulfilment: check stock, pick each line, take payment, wait for the warehouse
//! to approve dispatch (a signal), invoice, hand the parcel to a carrier (a child
//! workflow), ship. If the carrier refuses the parcel (`--refuse-every N`), the order is
//! compensated, last step first (refund, then the stock released), a notification goes
//! to customer service (`order.cancelled`), and the order ends failed.
//!
//! ```sh
//! cargo run --release --example order_fulfillment            # 3 orders, ~1 s per step
//! cargo run --release --example order_fulfillment -- --orders 50 --step-delay-ms 20
//! ```
//! Kill it (Ctrl-C or `kill -9`) half-way and run it again with the same `--db`: the
//! orders resume where they stopped, and finished steps are not run again.
//!
//! The host itself plays the warehouse: it sends each order's dispatch approval, unless
//! the order's history shows it was sent before a restart. With `--acks FILE` it appends
//! `order token` to FILE once the signal is durable, and with `--counts FILE` every
//! activity execution appends `instance step activity`; the crash test checks both.
//!
//! With `--db postgres://user:password@host/database` it runs on PostgreSQL as one host
//! among any number started on the same database: each starts every order (starts are
//! idempotent by id), drives its share, and prints every order's result. Give
//! `--no-approvals` to all hosts but one, so each approval is sent once.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, RetryPolicy, Runtime, Status,
    WorkflowError,
};
use clap::Parser;
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
#[command(about = "Cairn example: durable order fulfilment")]
struct Args {
    /// The redb database file.
    #[arg(long, default_value = "orders.redb")]
    db: PathBuf,
    /// Number of orders to fulfil (ids order-1 .. order-N).
    #[arg(long, default_value_t = 3)]
    orders: u32,
    /// Simulated work per activity, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    step_delay_ms: u64,
    /// Durable cooling-off timer between payment and invoice, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Line items per order, picked one activity each; with any, the order also waits
    /// for a dispatch approval and ships through a child workflow (0: the first
    /// release's four-step process).
    #[arg(long, default_value_t = 2)]
    lines: u32,
    /// Every N-th order's carrier refuses the parcel (orders with lines): the order is
    /// compensated (refund, then stock released) and ends failed (0: never).
    #[arg(long, default_value_t = 0)]
    refuse_every: u32,
    /// Append one line per activity execution to this file.
    #[arg(long)]
    counts: Option<PathBuf>,
    /// Append `order token` to this file for each dispatch approval once it is durable.
    #[arg(long)]
    acks: Option<PathBuf>,
    /// Print nothing but the final results.
    #[arg(long)]
    quiet: bool,
    /// Do not play the warehouse (another host sends the approvals).
    #[arg(long)]
    no_approvals: bool,
    /// On PostgreSQL: how long this host's leases last without a heartbeat, in ms.
    #[arg(long, default_value_t = 15_000)]
    lease_ms: u64,
}

/// A customer order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Order {
    id: String,
    sku: String,
    qty: u32,
    unit_price_cents: u64,
    /// Cooling-off time between payment and invoicing, in ms (0: none). Added after
    /// the first release: orders recorded before it decode with 0, and a 0 is not
    /// written, so the order still encodes to the bytes recorded in old histories
    /// (replay compares activity inputs byte for byte).
    #[serde(default, skip_serializing_if = "is_zero")]
    pause_ms: u64,
    /// Line items to pick (0: none, and no dispatch approval or parcel either; added
    /// later, skipped when 0 for the same reason as `pause_ms`).
    #[serde(default, skip_serializing_if = "is_zero")]
    lines: u32,
    /// The carrier refuses the parcel at the last step (a demo of compensation; added
    /// later, skipped when false for the same reason as `pause_ms`).
    #[serde(default, skip_serializing_if = "is_zero")]
    carrier_refuses: bool,
}

fn is_zero<N: Default + PartialEq>(n: &N) -> bool {
    *n == N::default()
}

/// Stock held for an order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reservation {
    reservation_id: String,
    warehouse: String,
}

/// What the customer gets in the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    order: String,
    reservation: String,
    payment: String,
    invoice: String,
    tracking: String,
    total_cents: u64,
    /// The warehouse's dispatch approval (orders with lines only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dispatch: Option<String>,
    /// The carrier's hand-over receipt from the parcel child workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parcel: Option<String>,
}

/// What the parcel child workflow ships.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Parcel {
    order: String,
    warehouse: String,
    lines: u32,
}

struct Settings {
    delay: Duration,
    counts: Option<PathBuf>,
    quiet: bool,
}

static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();

/// Sets how activities behave (once per process; later calls are ignored).
pub fn init_settings(delay: Duration, counts: Option<PathBuf>, quiet: bool) {
    let _ = SETTINGS.set(Settings {
        delay,
        counts,
        quiet,
    });
}

/// Order number `n` of the demo data set.
pub fn sample_order(n: u32) -> Order {
    Order {
        id: format!("order-{n}"),
        sku: format!("SKU-{}", n % 7),
        qty: 1 + n % 9,
        unit_price_cents: 250 + u64::from(n) * 10,
        pause_ms: 0,
        lines: 0,
        carrier_refuses: false,
    }
}

/// The signal that approves an order's dispatch, and the body the host sends.
pub const DISPATCH_SIGNAL: &str = "dispatch";

fn dispatch_token(order: &str) -> String {
    format!("approved:{order}")
}

/// Simulates the activity's work and records that it ran.
async fn work(ctx: &ActivityCtx, what: &str) -> Result<(), ActivityError> {
    let settings = SETTINGS
        .get()
        .ok_or_else(|| ActivityError::terminal("config", "settings not initialised"))?;
    if let Some(path) = &settings.counts {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        file.write_all(format!("{} {} {}\n", ctx.instance_id, ctx.step, ctx.activity).as_bytes())?;
    }
    if !settings.quiet {
        println!(
            "[{}] step {} {what} (attempt {})",
            ctx.instance_id, ctx.step, ctx.attempt
        );
    }
    tokio::time::sleep(settings.delay).await;
    Ok(())
}

#[activity]
async fn check_stock(ctx: ActivityCtx, order: Order) -> Result<Reservation, ActivityError> {
    work(&ctx, &format!("reserving {} x {}", order.qty, order.sku)).await?;
    Ok(Reservation {
        reservation_id: format!("RSV-{}", order.id),
        warehouse: if order.qty > 5 {
            "north".into()
        } else {
            "south".into()
        },
    })
}

#[activity]
async fn charge_payment(
    ctx: ActivityCtx,
    order: Order,
    amount_cents: u64,
) -> Result<String, ActivityError> {
    work(
        &ctx,
        &format!("charging {amount_cents} cents for {}", order.id),
    )
    .await?;
    // The idempotency key lets a payment provider drop a repeated charge after a crash.
    Ok(format!("PAY-{}", ctx.idempotency_key()))
}

#[activity]
async fn create_invoice(
    ctx: ActivityCtx,
    order: Order,
    payment: String,
) -> Result<String, ActivityError> {
    work(&ctx, &format!("invoicing {payment}")).await?;
    Ok(format!("INV-{}", order.id))
}

#[activity]
async fn ship(
    ctx: ActivityCtx,
    order: Order,
    reservation: Reservation,
) -> Result<String, ActivityError> {
    work(&ctx, &format!("shipping from {}", reservation.warehouse)).await?;
    if order.carrier_refuses {
        return Err(ActivityError::terminal(
            "carrier_refused",
            format!("the carrier refused {}", order.id),
        ));
    }
    Ok(format!("TRK-{}-{}", reservation.warehouse, order.id))
}

/// Compensation of `check_stock`: puts the reserved stock back.
#[activity]
async fn release_stock(ctx: ActivityCtx, reservation: Reservation) -> Result<(), ActivityError> {
    work(&ctx, &format!("releasing {}", reservation.reservation_id)).await
}

/// Compensation of `charge_payment`: refunds the charge (the payment id makes a repeated
/// refund one refund at the provider).
#[activity]
async fn refund_payment(ctx: ActivityCtx, payment: String) -> Result<String, ActivityError> {
    work(&ctx, &format!("refunding {payment}")).await?;
    Ok(format!("REF-{payment}"))
}

#[activity]
async fn pick_line(ctx: ActivityCtx, order: String, line: u32) -> Result<String, ActivityError> {
    work(&ctx, &format!("picking line {line}")).await?;
    Ok(format!("{order}#{line}"))
}

#[activity]
async fn print_label(ctx: ActivityCtx, parcel: Parcel) -> Result<String, ActivityError> {
    work(&ctx, &format!("labelling {} lines", parcel.lines)).await?;
    Ok(format!("LBL-{}-{}", parcel.warehouse, parcel.order))
}

#[activity]
async fn hand_to_carrier(ctx: ActivityCtx, label: String) -> Result<String, ActivityError> {
    work(&ctx, &format!("handing over {label}")).await?;
    Ok(format!("CARRIER-{label}"))
}

/// A child workflow per order: label the parcel and hand it to the carrier.
#[workflow]
pub async fn ship_parcel(ctx: Ctx, parcel: Parcel) -> Result<String, WorkflowError> {
    let label = ctx.activity(print_label, parcel).await?;
    let receipt = ctx.activity(hand_to_carrier, label).await?;
    Ok(receipt)
}

/// Reserve stock, pick, charge, (cool off), await dispatch approval, invoice, hand over
/// the parcel, ship. The first release had four steps; every later addition is taken
/// only by orders that ask for it, so recorded histories keep replaying.
#[workflow]
pub async fn fulfil_order(ctx: Ctx, order: Order) -> Result<Receipt, WorkflowError> {
    // Registering a compensation takes no step, so recorded histories replay unchanged;
    // compensations run only when the shipment fails (orders with lines).
    let mut saga = ctx.saga();
    let reservation = ctx.activity(check_stock, order.clone()).await?;
    saga.on_failure(release_stock, reservation.clone());
    for line in 1..=order.lines {
        ctx.activity(pick_line, (order.id.clone(), line)).await?;
    }
    let total_cents = order.unit_price_cents * u64::from(order.qty);
    let payment = ctx
        .activity(charge_payment, (order.clone(), total_cents))
        .retry(
            RetryPolicy::default()
                .max_attempts(3)
                .non_retryable(["card_declined"]),
        )
        .await?;
    saga.on_failure(refund_payment, payment.clone());
    // A durable timer added in a later version, behind a patch marker, so histories
    // recorded before it (tests/histories) keep replaying.
    if order.pause_ms > 0 && ctx.patched("cooling-off-after-payment").await {
        ctx.sleep(Duration::from_millis(order.pause_ms)).await?;
    }
    let dispatch = if order.lines > 0 {
        let approval: Option<String> = ctx
            .signal_or_timeout(DISPATCH_SIGNAL, Duration::from_secs(3600))
            .await?;
        Some(approval.unwrap_or_else(|| "no answer in an hour: dispatched anyway".into()))
    } else {
        None
    };
    let invoice = ctx
        .activity(create_invoice, (order.clone(), payment.clone()))
        .await?;
    let parcel = if order.lines > 0 {
        let parcel = Parcel {
            order: order.id.clone(),
            warehouse: reservation.warehouse.clone(),
            lines: order.lines,
        };
        let child_id = format!("{}/parcel", order.id);
        Some(ctx.child(ship_parcel, &child_id, parcel).await?)
    } else {
        None
    };
    let tracking = match ctx
        .activity(ship, (order.clone(), reservation.clone()))
        .await
    {
        Ok(tracking) => tracking,
        Err(failure) if order.lines > 0 => {
            // Undo what was done, last first (refund, then release the stock), and tell
            // the customer service; a failed compensation is the workflow's error.
            saga.compensate().await?;
            ctx.notify(
                "order.cancelled",
                &serde_json::json!({ "order": order.id, "reason": failure.to_string() }),
            )
            .await;
            return Err(failure.into());
        }
        Err(failure) => return Err(failure.into()),
    };
    Ok(Receipt {
        order: order.id,
        reservation: reservation.reservation_id,
        payment,
        invoice,
        tracking,
        total_cents,
        dispatch,
        parcel,
    })
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

async fn run(args: Args) -> Result<(), cairn::Error> {
    init_settings(
        Duration::from_millis(args.step_delay_ms),
        args.counts.clone(),
        args.quiet,
    );
    let builder = Runtime::builder()
        .workflow(fulfil_order)
        .workflow(ship_parcel);
    let db = args.db.to_string_lossy();
    let rt = if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        let lease_ttl = Duration::from_millis(args.lease_ms);
        let options = cairn::store::PostgresOptions {
            lease_ttl,
            heartbeat_every: lease_ttl / 3,
            poll_every: Duration::from_millis(100),
            ..cairn::store::PostgresOptions::default()
        };
        builder.open_postgres_with(&db, options).await?
    } else {
        builder.open(&args.db).await?
    };
    // The warehouse approves dispatches while orders are still being started and run, so
    // some approvals wait in an order's history and others reach an order already
    // waiting for them.
    let warehouse = (args.lines > 0 && !args.no_approvals).then(|| {
        let ids = (1..=args.orders).map(|n| sample_order(n).id).collect();
        tokio::spawn(approve_dispatches(rt.clone(), ids, args.acks.clone()))
    });
    let mut handles = Vec::new();
    for n in 1..=args.orders {
        let order = Order {
            pause_ms: args.pause_ms,
            lines: args.lines,
            carrier_refuses: args.lines > 0 && args.refuse_every > 0 && n % args.refuse_every == 0,
            ..sample_order(n)
        };
        let handle = rt.start(fulfil_order, &order.id.clone(), order).await?;
        if !args.quiet && !handle.created() {
            // Said as it is: a finished order is only read back, an unfinished one is
            // carried on by the host from where its history stops.
            match handle.status().await?.status {
                Status::Running => println!("[{}] already started, resuming", handle.id()),
                status => println!("[{}] already started earlier: {status:?}", handle.id()),
            }
        }
        handles.push(handle);
    }
    if let Some(warehouse) = warehouse {
        warehouse
            .await
            .map_err(|err| cairn::Error::Environment(format!("warehouse task failed: {err}")))??;
    }
    for handle in handles {
        match handle.result().await? {
            Ok(receipt) => println!(
                "done {}: {} / {} / {} / {} / {} cents{}{}",
                receipt.order,
                receipt.reservation,
                receipt.payment,
                receipt.invoice,
                receipt.tracking,
                receipt.total_cents,
                receipt
                    .dispatch
                    .map(|d| format!(" / {d}"))
                    .unwrap_or_default(),
                receipt
                    .parcel
                    .map(|p| format!(" / {p}"))
                    .unwrap_or_default(),
            ),
            Err(err) => println!("failed {}: {err}", handle.id()),
        }
    }
    rt.shutdown().await;
    Ok(())
}

/// Sends each order its dispatch approval, once: an approval sent before a crash is in
/// the order's history (a signal is durable when `signal` returns), so a restarted host
/// looks there first. Each approval is then acknowledged in `acks`.
async fn approve_dispatches(
    rt: Runtime,
    ids: Vec<String>,
    acks: Option<PathBuf>,
) -> Result<(), cairn::Error> {
    for id in ids {
        let token = dispatch_token(&id);
        let history = loop {
            match rt.history(&id).await {
                Ok(history) => break history,
                // Not started yet: the host starts orders while this task runs.
                Err(cairn::Error::InstanceNotFound(_)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Err(err) => return Err(err),
            }
        };
        let sent = history.iter().any(|event| {
            matches!(&event.record.kind,
                cairn::events::EventKind::SignalReceived { name, .. } if name == DISPATCH_SIGNAL)
        });
        if !sent {
            match rt.signal(&id, DISPATCH_SIGNAL, &token).await {
                Ok(()) => {}
                // Finished without it (its hour ran out): nothing left to approve.
                Err(cairn::Error::InstanceFinished(_)) => continue,
                Err(err) => return Err(err),
            }
        }
        if let Some(path) = &acks {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|err| cairn::Error::Environment(format!("{}: {err}", path.display())))?;
            file.write_all(format!("{id} {token}\n").as_bytes())
                .map_err(|err| cairn::Error::Environment(format!("{}: {err}", path.display())))?;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}
