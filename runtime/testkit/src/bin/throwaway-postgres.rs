//! Starts a throwaway PostgreSQL cluster (as the tests do: a temporary directory,
//! 127.0.0.1 only, a free port), prints its server URL on one line of stdout, and stops
//! it and removes its directory when stdin closes, or on SIGTERM, SIGINT or SIGHUP (a
//! script killed or interrupted leaves no cluster behind). For a test run that shares one
//! server among many test binaries (`scripts/test.sh`, the integration suite on
//! PostgreSQL):
//!
//! ```text
//! coproc PG { cargo run -p cairn-testkit --bin throwaway-postgres; }
//! read -r server <&"${PG[0]}"     # postgres://cairn@127.0.0.1:<port>
//! ...
//! exec {PG[1]}>&-                 # stops the cluster
//! ```

use std::io::{BufRead, Write};

use cairn_testkit::postgres::Cluster;

fn main() -> std::process::ExitCode {
    let cluster = match Cluster::shared() {
        Ok(cluster) => cluster,
        Err(err) => {
            eprintln!("throwaway-postgres: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let server = cluster.url("");
    let mut out = std::io::stdout();
    if writeln!(out, "{}", server.trim_end_matches('/'))
        .and_then(|()| out.flush())
        .is_err()
    {
        return std::process::ExitCode::FAILURE;
    }
    // Whatever arrives, the cluster lives until stdin closes (or cannot be read), or a
    // signal asks this process to stop.
    let (closed, stop) = std::sync::mpsc::channel::<()>();
    let reading = closed.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
        }
        let _ = reading.send(());
    });
    match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => {
            std::thread::spawn(move || {
                runtime.block_on(stopped_by_signal());
                let _ = closed.send(());
            });
        }
        Err(err) => eprintln!("throwaway-postgres: signals not watched: {err}"),
    }
    let _ = stop.recv();
    drop(cluster);
    std::process::ExitCode::SUCCESS
}

/// Resolves on SIGTERM, SIGINT or SIGHUP (never, where none can be watched).
async fn stopped_by_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let watch = |kind| {
        signal(kind)
            .map_err(|err| eprintln!("throwaway-postgres: a signal is not watched: {err}"))
            .ok()
    };
    let (mut term, mut int, mut hup) = (
        watch(SignalKind::terminate()),
        watch(SignalKind::interrupt()),
        watch(SignalKind::hangup()),
    );
    tokio::select! {
        Some(()) = async { term.as_mut()?.recv().await } => {}
        Some(()) = async { int.as_mut()?.recv().await } => {}
        Some(()) = async { hup.as_mut()?.recv().await } => {}
        else => std::future::pending().await,
    }
}
