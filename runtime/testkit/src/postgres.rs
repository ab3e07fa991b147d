//! Throwaway PostgreSQL for tests: a cluster made with `initdb` in a temporary directory,
//! listening on 127.0.0.1 only, on a free port, with a fresh database per test.
//!
//! One cluster serves a test binary while any of its databases is in use; the last one
//! dropped stops it (`pg_ctl stop -m immediate`) and removes its directory. The tests
//! never touch another server: the cluster is always this binary's own.
//!
//! Needs the PostgreSQL server binaries (`initdb`, `pg_ctl`): found on `PATH`, under
//! `/usr/lib/postgresql/<version>/bin` (Debian), or in `CAIRN_PG_BIN`. The test
//! command installs them (`scripts/test.sh`). Run as root (a container), the cluster
//! belongs to the `postgres` user, as `initdb` refuses root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The user the server runs as, when not the caller (root).
    run_as: Option<String>,
}

static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());

fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("CAIRN_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let on_path = Command::new("initdb").arg("--version").output();
    if on_path.is_ok_and(|out| out.status.success()) {
        return Ok(PathBuf::new());
    }
    Err("no PostgreSQL server binaries (initdb, pg_ctl): install the Debian package `postgresql` (scripts/test.sh does) or set CAIRN_PG_BIN".into())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|err| err.to_string())?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|err| err.to_string())
}

impl Cluster {
    /// The cluster of this test binary, started if none runs.
    ///
    /// # Errors
    /// The binaries are missing, or `initdb` or `pg_ctl` failed (with their output).
    pub fn shared() -> Result<Arc<Cluster>, String> {
        let mut slot = SHARED.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(cluster) = slot.upgrade() {
            return Ok(cluster);
        }
        let cluster = Arc::new(Self::start()?);
        *slot = Arc::downgrade(&cluster);
        Ok(cluster)
    }

    fn start() -> Result<Self, String> {
        let bin = bin_dir()?;
        let dir = std::env::temp_dir().join(format!("cairn-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            run(Command::new("chown").arg(user).arg(&dir), "chown")?;
        }
        let cluster = Self {
            dir,
            bin,
            port: free_port()?,
            run_as,
        };
        let data = cluster.dir.join("data");
        cluster.pg(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "cairn".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        // 127.0.0.1 only, a socket directory of its own, and no fsync: the tests kill
        // hosts, never this server.
        let options = format!(
            "-h 127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=200",
            cluster.port,
            cluster.dir.display()
        );
        let log = cluster.dir.join("server.log");
        cluster.pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        )?;
        Ok(cluster)
    }

    fn pg(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        command.args(args).current_dir(&self.dir);
        run(&mut command, tool)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection string of database `name` on it.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://cairn@127.0.0.1:{}/{name}", self.port)
    }

    /// The directory holding the cluster (its data and `server.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|err| format!("{what} did not start: {err}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh, empty database on this binary's cluster, for one test. The cluster runs while
/// any `TestDb` lives.
#[derive(Debug)]
pub struct TestDb {
    cluster: Arc<Cluster>,
    name: String,
}

impl TestDb {
    /// Creates the database (starting the cluster if needed).
    ///
    /// # Errors
    /// The cluster cannot start, or the database cannot be created.
    pub async fn new() -> Result<Self, String> {
        let cluster = tokio::task::spawn_blocking(Cluster::shared)
            .await
            .map_err(|err| err.to_string())??;
        let name = format!("cairn_{}", uuid::Uuid::new_v4().simple());
        let (client, connection) =
            tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
                .await
                .map_err(|err| format!("connecting to the test cluster: {err}"))?;
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|err| format!("creating {name}: {err}"))?;
        drop(client);
        let _ = driver.await;
        Ok(Self { cluster, name })
    }

    /// Its connection string.
    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    /// The cluster it is on.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }
}
