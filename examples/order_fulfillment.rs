//! Order fulfilment: check stock, take payment, issue the invoice, ship.
//!
//! ```sh
//! cargo run --release --example order_fulfillment            # 3 orders, ~1 s per step
//! cargo run --release --example order_fulfillment -- --orders 50 --step-delay-ms 20
//! ```
//! Kill it (Ctrl-C or `kill -9`) half-way and run it again with the same `--db`: the
//! orders resume where they stopped, and finished steps are not run again.
//!
//! With `--counts FILE` every activity execution appends `instance step activity` to
//! FILE; the crash test uses it to count executions per step.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use cairn::{
    activity, workflow, ActivityCtx, ActivityError, Ctx, RetryPolicy, Runtime, WorkflowError,
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
    /// Append one line per activity execution to this file.
    #[arg(long)]
    counts: Option<PathBuf>,
    /// Print nothing but the final results.
    #[arg(long)]
    quiet: bool,
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
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    }
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
    Ok(format!("TRK-{}-{}", reservation.warehouse, order.id))
}

/// Reserve stock, charge, invoice, ship: four durable steps.
#[workflow]
pub async fn fulfil_order(ctx: Ctx, order: Order) -> Result<Receipt, WorkflowError> {
    let reservation = ctx.activity(check_stock, order.clone()).await?;
    let total_cents = order.unit_price_cents * u64::from(order.qty);
    let payment = ctx
        .activity(charge_payment, (order.clone(), total_cents))
        .retry(
            RetryPolicy::default()
                .max_attempts(3)
                .non_retryable(["card_declined"]),
        )
        .await?;
    // A durable timer added in a later version, behind a patch marker, so histories
    // recorded before it (tests/histories) keep replaying.
    if order.pause_ms > 0 && ctx.patched("cooling-off-after-payment").await {
        ctx.sleep(Duration::from_millis(order.pause_ms)).await?;
    }
    let invoice = ctx
        .activity(create_invoice, (order.clone(), payment.clone()))
        .await?;
    let tracking = ctx
        .activity(ship, (order.clone(), reservation.clone()))
        .await?;
    Ok(Receipt {
        order: order.id,
        reservation: reservation.reservation_id,
        payment,
        invoice,
        tracking,
        total_cents,
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
    let rt = Runtime::builder()
        .workflow(fulfil_order)
        .open(&args.db)
        .await?;
    let mut handles = Vec::new();
    for n in 1..=args.orders {
        let order = Order {
            pause_ms: args.pause_ms,
            ..sample_order(n)
        };
        let handle = rt.start(fulfil_order, &order.id.clone(), order).await?;
        if !args.quiet && !handle.created() {
            println!("[{}] already started, resuming", handle.id());
        }
        handles.push(handle);
    }
    for handle in handles {
        match handle.result().await? {
            Ok(receipt) => println!(
                "done {}: {} / {} / {} / {} / {} cents",
                receipt.order,
                receipt.reservation,
                receipt.payment,
                receipt.invoice,
                receipt.tracking,
                receipt.total_cents
            ),
            Err(err) => println!("failed {}: {err}", handle.id()),
        }
    }
    rt.shutdown().await;
    Ok(())
}
