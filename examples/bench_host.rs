//! A host process for the multi-host PostgreSQL benchmark (`cargo bench --bench
//! postgres`): opens the runtime on `--db`, prints `ready`, waits for `go` on stdin, then
//! does its part of one workload and keeps hosting (driving its share of every host's
//! instances) until stdin closes.
//!
//! - `--workload ten`: starts its slice (`--first`, `--stride`) of `--instances`
//!   workflows of ten no-op activity steps each;
//! - `--workload three`: runs `--instances` 3-step workflows one after another;
//! - `--workload blocked`: starts its slice of workflows whose one activity never ends,
//!   and prints `attempts N` whenever the number of attempts it has begun changes (a
//!   run taken over from another host begins its attempt again here).

use std::io::BufRead;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn::{activity, workflow, ActivityCtx, ActivityError, Ctx, Runtime, WorkflowError};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Cairn benchmark host")]
struct Args {
    /// The database (`postgres://...`).
    #[arg(long)]
    db: String,
    /// `ten`, `three` or `blocked`.
    #[arg(long)]
    workload: String,
    /// Instances of the whole workload (all hosts together), or of this host for `three`.
    #[arg(long, default_value_t = 1000)]
    instances: u32,
    /// This host's first instance number.
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// Instance numbers between two of this host's.
    #[arg(long, default_value_t = 1)]
    stride: u32,
    /// Lease length, ms.
    #[arg(long, default_value_t = 15_000)]
    lease_ms: u64,
    /// Connections.
    #[arg(long, default_value_t = 16)]
    pool: usize,
}

#[activity]
async fn noop(_ctx: ActivityCtx, n: u32) -> Result<u32, ActivityError> {
    Ok(n)
}

#[workflow]
async fn ten_steps(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let mut acc = n;
    for _ in 0..10 {
        acc = ctx.activity(noop, acc).await?;
    }
    Ok(acc)
}

#[workflow]
async fn three_steps(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let a = ctx.activity(noop, n).await?;
    let b = ctx.activity(noop, a).await?;
    ctx.activity(noop, b).await.map_err(Into::into)
}

static ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn forever(_ctx: ActivityCtx) -> Result<(), ActivityError> {
    ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    std::future::pending().await
}

#[workflow]
async fn blocked(ctx: Ctx, _n: u32) -> Result<(), WorkflowError> {
    ctx.activity(forever, ())
        .start_to_close(Duration::from_secs(24 * 3600))
        .await
        .map_err(Into::into)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), cairn::Error> {
    let lease_ttl = Duration::from_millis(args.lease_ms);
    let options = cairn::store::PostgresOptions {
        pool_size: args.pool,
        lease_ttl,
        heartbeat_every: lease_ttl / 3,
        ..cairn::store::PostgresOptions::default()
    };
    let rt = Runtime::builder()
        .workflow(ten_steps)
        .workflow(three_steps)
        .workflow(blocked)
        .open_postgres_with(&args.db, options)
        .await?;
    println!("ready");
    // `go`, then (for the coordinator to stop the host) the end of stdin.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    if lines.recv().await.as_deref() != Some("go") {
        rt.shutdown().await;
        return Ok(());
    }
    let mine = (args.first..args.instances).step_by(args.stride.max(1) as usize);
    match args.workload.as_str() {
        "ten" => {
            // Started together, as a busy service's requests arrive: one group commit
            // takes many starts.
            let starts = mine.map(|n| {
                let rt = rt.clone();
                async move { rt.start(ten_steps, &format!("ten-{n}"), n).await }
            });
            for started in futures::future::join_all(starts).await {
                started?;
            }
            println!("started");
        }
        "three" => {
            for n in 0..args.instances {
                let id = format!("three-{}-{n}", args.first);
                rt.start(three_steps, &id, n)
                    .await?
                    .result()
                    .await?
                    .map_err(|err| cairn::Error::InvalidArgument(err.to_string()))?;
            }
            println!("done");
        }
        "blocked" => {
            let starts = mine.map(|n| {
                let rt = rt.clone();
                async move { rt.start(blocked, &format!("blocked-{n}"), n).await }
            });
            for started in futures::future::join_all(starts).await {
                started?;
            }
            let mut told = usize::MAX;
            loop {
                let now = ATTEMPTS.load(Ordering::SeqCst);
                if now != told {
                    println!("attempts {now}");
                    told = now;
                }
                tokio::select! {
                    line = lines.recv() => if line.is_none() { break },
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
        other => {
            return Err(cairn::Error::InvalidArgument(format!(
                "unknown workload `{other}`"
            )))
        }
    }
    while lines.recv().await.is_some() {}
    rt.shutdown().await;
    Ok(())
}
