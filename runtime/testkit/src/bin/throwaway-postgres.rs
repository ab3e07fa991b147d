//! Starts a throwaway PostgreSQL cluster (as the tests do: a temporary directory,
//! 127.0.0.1 only, a free port), prints its server URL on one line of stdout, and stops
//! it and removes its directory when stdin closes. For a test run that shares one
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
    // Whatever arrives, the cluster lives until stdin closes (or cannot be read).
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    drop(cluster);
    std::process::ExitCode::SUCCESS
}
