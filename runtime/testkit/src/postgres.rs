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

    /// A cluster of its own (not shared) that accepts only TLS connections, with the
    /// server certificate `certificates` holds (see [`test_certificates`]).
    ///
    /// # Errors
    /// As [`Cluster::shared`], and the certificate files cannot be written.
    pub fn start_tls(certificates: &TestCertificates) -> Result<Self, String> {
        Self::start_with(Some(certificates))
    }

    fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    fn start_with(tls: Option<&TestCertificates>) -> Result<Self, String> {
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
        // hosts, never this server. A benchmark sets `CAIRN_PG_DURABLE` to keep fsync on.
        let fsync = if std::env::var_os("CAIRN_PG_DURABLE").is_some() {
            ""
        } else {
            "-c fsync=off "
        };
        let mut options = format!(
            "-h 127.0.0.1 -p {} -k {} {fsync}-c max_connections=200",
            cluster.port,
            cluster.dir.display()
        );
        if let Some(tls) = tls {
            // Encrypted connections only: a plain one is refused by pg_hba.conf.
            let (cert, key) = (
                cluster.dir.join("server.crt"),
                cluster.dir.join("server.key"),
            );
            let write = |path: &Path, text: &str| {
                std::fs::write(path, text).map_err(|err| format!("{}: {err}", path.display()))
            };
            write(&cert, &tls.cert_pem)?;
            write(&key, &tls.key_pem)?;
            write(
                &data.join("pg_hba.conf"),
                "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\nlocal all all trust\n",
            )?;
            run(Command::new("chmod").arg("600").arg(&key), "chmod")?;
            if let Some(user) = &cluster.run_as {
                run(
                    Command::new("chown")
                        .arg(user)
                        .arg(&cert)
                        .arg(&key)
                        .arg(data.join("pg_hba.conf")),
                    "chown",
                )?;
            }
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
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

/// A test certificate authority and a server certificate it signed, in PEM.
#[derive(Clone, Debug)]
pub struct TestCertificates {
    /// The authority's certificate: what a client trusts (`sslrootcert`).
    pub ca_pem: String,
    /// The server's certificate, for `localhost` and 127.0.0.1.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
}

/// A fresh certificate authority named `authority` and a server certificate it signed
/// for `localhost` and 127.0.0.1.
///
/// # Errors
/// Key generation or signing failed.
pub fn test_certificates(authority: &str) -> Result<TestCertificates, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let failed = |err: rcgen::Error| format!("test certificates: {err}");
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, authority);
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(failed)?;
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).map_err(failed)?;
    server
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = server.signed_by(&key, &issuer).map_err(failed)?;
    Ok(TestCertificates {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
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

/// The connection string of database `name` on the server at `server` (a URL without a
/// database: `postgres://user@host:port`), created if absent. For a test suite run
/// against a server started for the whole run (`throwaway-postgres`); the same name gives
/// the same database again, so a test that reopens its store finds what it wrote.
///
/// # Errors
/// The server cannot be reached, or the database cannot be created.
pub async fn database_on(server: &str, name: &str) -> Result<String, String> {
    let server = server.trim_end_matches('/');
    let (client, connection) =
        tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
            .await
            .map_err(|err| format!("connecting to {server}: {err}"))?;
    let driver = tokio::spawn(connection);
    let created = client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await;
    drop(client);
    let _ = driver.await;
    match created {
        Ok(()) => {}
        // Made by an earlier open of the same store (or by a racing one).
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
        Err(err) => return Err(format!("creating {name}: {err}")),
    }
    Ok(format!("{server}/{name}"))
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

/// A TCP proxy on 127.0.0.1 in front of a test cluster that breaks connections on
/// request, the way a network or a server restart does: in the middle of a transaction,
/// or right after a `COMMIT` was passed on and before its answer comes back (the server
/// commits; the client never hears).
#[derive(Debug)]
pub struct CuttingProxy {
    port: u16,
    target: u16,
    control: Arc<CutControl>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`CuttingProxy`] is asked to break, and what it broke.
#[derive(Debug, Default)]
struct CutControl {
    after_commit: std::sync::atomic::AtomicU32,
    mid_transaction: std::sync::atomic::AtomicU32,
    commits_cut: std::sync::atomic::AtomicU32,
    transactions_cut: std::sync::atomic::AtomicU32,
}

impl CuttingProxy {
    /// Starts a proxy to the cluster of `db`.
    ///
    /// # Errors
    /// The listening socket cannot be bound.
    pub async fn start(db: &TestDb) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|err| err.to_string())?;
        let port = listener.local_addr().map_err(|err| err.to_string())?.port();
        let target = db.cluster().port();
        let control = Arc::new(CutControl::default());
        let shared = control.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let control = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        relay(client, server, control).await;
                    }
                });
            }
        });
        Ok(Self {
            port,
            target,
            control,
            task,
        })
    }

    /// The connection string of `db` through this proxy.
    pub fn url(&self, db: &TestDb) -> String {
        db.url()
            .replace(&format!(":{}/", self.target), &format!(":{}/", self.port))
    }

    /// Breaks the connection of each of the next `n` `COMMIT`s after passing it on,
    /// before its answer comes back.
    pub fn cut_after_commit(&self, n: u32) {
        use std::sync::atomic::Ordering;
        self.control.after_commit.fetch_add(n, Ordering::SeqCst);
    }

    /// Breaks the connection of each of the next `n` transactions after a few of their
    /// statements.
    pub fn cut_mid_transaction(&self, n: u32) {
        use std::sync::atomic::Ordering;
        self.control.mid_transaction.fetch_add(n, Ordering::SeqCst);
    }

    /// The `COMMIT`s and the transactions broken so far.
    pub fn cuts(&self) -> (u32, u32) {
        use std::sync::atomic::Ordering;
        (
            self.control.commits_cut.load(Ordering::SeqCst),
            self.control.transactions_cut.load(Ordering::SeqCst),
        )
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Takes one pending cut from `counter`, if there is one.
fn take(counter: &std::sync::atomic::AtomicU32) -> bool {
    use std::sync::atomic::Ordering;
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Relays one client connection, reading the client's messages (the protocol's framing:
/// an untyped start-up message, then a type byte and a length) to know where
/// transactions begin and commit.
async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    control: Arc<CutControl>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Each message goes on as it comes: no waiting to fill a segment.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set before a doomed COMMIT goes on: its answer is never relayed.
    let mute = Arc::new(AtomicBool::new(false));
    let muted = mute.clone();
    let back = tokio::spawn(async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let Ok(read) = server_read.read(&mut buffer).await else {
                return;
            };
            if read == 0 || muted.load(Ordering::SeqCst) {
                return;
            }
            if client_write.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    });
    let mut started = false;
    let mut in_transaction = false;
    let mut statements = 0u32;
    let mut doomed = false;
    loop {
        // One message: untyped until the start-up message (a TLS request is answered by
        // the server and followed by the start-up message), typed after.
        let mut head = [0u8; 5];
        let typed = started;
        let head_len = if typed { 5 } else { 4 };
        if client_read.read_exact(&mut head[..head_len]).await.is_err() {
            break;
        }
        let length_at = usize::from(typed);
        let length = u32::from_be_bytes([
            head[length_at],
            head[length_at + 1],
            head[length_at + 2],
            head[length_at + 3],
        ]) as usize;
        let mut body = vec![0u8; length.saturating_sub(4)];
        if client_read.read_exact(&mut body).await.is_err() {
            break;
        }
        if !typed {
            // 80877103: a TLS request; anything else starts the session.
            started = !(length == 8 && body.starts_with(&80_877_103u32.to_be_bytes()));
        }
        let text = String::from_utf8_lossy(&body).to_ascii_uppercase();
        let simple_query = typed && head[0] == b'Q';
        if simple_query && (text.starts_with("BEGIN") || text.starts_with("START TRANSACTION")) {
            in_transaction = true;
            statements = 0;
            doomed = take(&control.mid_transaction);
        } else if in_transaction && typed {
            statements += 1;
            if doomed && statements == 4 {
                control.transactions_cut.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        let commit = simple_query && text.starts_with("COMMIT");
        let cut = commit && take(&control.after_commit);
        if cut {
            mute.store(true, Ordering::SeqCst);
        }
        let mut message = head[..head_len].to_vec();
        message.extend_from_slice(&body);
        if server_write.write_all(&message).await.is_err() {
            break;
        }
        if commit {
            in_transaction = false;
        }
        if cut {
            // Let the server commit, then break the connection before the answer.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            control.commits_cut.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    back.abort();
}
