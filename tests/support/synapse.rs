//! A real Synapse homeserver for integration tests: each [`Synapse`] is a private server in
//! a temp dir (its own config, signing key, SQLite database and logs) on a free 127.0.0.1
//! port, started from the venv that `scripts/synapse-venv` makes, and killed when dropped
//! (also when the test panics).
//!
//! Include it from a test file with
//!
//! ```ignore
//! #[path = "support/synapse.rs"]
//! mod synapse;
//!
//! #[tokio::test]
//! async fn something_over_matrix() {
//!     let mut server = synapse::Synapse::start().await;
//!     let (user_id, token) = server.register("alice", "secret", false).await;
//!     // … a client on server.base_url() …
//!     server.restart().await; // same port, same database: tokens and rooms survive
//! }
//! ```
//!
//! The venv is `WAVELET_SYNAPSE_VENV` or `~/.cache/wavelet/synapse-venv` (what
//! `scripts/test` sets up; the Synapse version is pinned in `scripts/synapse-venv`). The server is `localhost` (user ids `@name:localhost`), serves
//! the client API and `/_synapse/admin` over plain HTTP, has no federation, no media repo,
//! no presence, and rate limits so high that tests never meet them. Its log (WARNING and
//! up) and its stdout/stderr stay in the temp dir; [`Synapse::log_tail`] shows them, and
//! every panic here includes them.
//!
//! Instances share nothing, so tests can run in parallel (threads or nextest processes).
//! The server runs in the test's process group: if the test process is killed outright
//! (nextest's timeout, Ctrl-C), the signal to the group ends Synapse too.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha1::Sha1;

/// Synapse's `server_name`: user ids are `@name:localhost`.
pub const SERVER_NAME: &str = "localhost";
/// The shared secret that [`Synapse::register`] signs with.
const REGISTRATION_SECRET: &str = "wavelet-test-registration-secret";
/// How long a start may take before the test fails (2–4 s on an idle machine).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM gets before SIGKILL (Synapse needs about 2 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// A rate limit no test reaches. Never `per_second: 0`: Synapse divides by it.
const UNLIMITED: &str = "{per_second: 100000, burst_count: 1000000}";
/// Every rate limiter of Synapse 1.163 (synapse/config/ratelimiting.py), each raised to
/// [`UNLIMITED`]; dotted names are nested. The defaults throttle tests within seconds
/// (the fourth quick login from one address, the eleventh room, the eleventh message).
const RATE_LIMITS: &[&str] = &[
    "rc_message",
    "rc_registration",
    "rc_registration_token_validity",
    "rc_login.address",
    "rc_login.account",
    "rc_login.failed_attempts",
    "rc_admin_redaction",
    "rc_joins.local",
    "rc_joins.remote",
    "rc_joins_per_room",
    "rc_key_requests",
    "rc_3pid_validation",
    "rc_invites.per_room",
    "rc_invites.per_user",
    "rc_invites.per_issuer",
    "rc_third_party_invite",
    "rc_media_create",
    "rc_presence.per_user",
    "rc_delayed_event_mgmt",
    "rc_room_creation",
    "rc_reports",
    "rc_user_directory",
    "rc_profile",
];

/// A running (or, after [`Synapse::stop`], stopped) private Synapse.
pub struct Synapse {
    /// Config, signing key, database, logs; removed after the server is killed.
    dir: tempfile::TempDir,
    python: PathBuf,
    port: u16,
    base_url: String,
    child: Option<Child>,
    http: reqwest::Client,
    startup: Duration,
}

/// Why a start failed.
struct StartError {
    /// Another process had the port (only then does a first start try another port).
    port_taken: bool,
    message: String,
}

impl Synapse {
    /// Writes a config, generates the signing key and starts the server; returns once
    /// `/health` answers. Panics (with the log's end) if that does not happen in 30 s.
    pub async fn start() -> Synapse {
        let python = venv_python();
        let dir = tempfile::Builder::new().prefix("wavelet-synapse.").tempdir().expect("create a temp dir for Synapse");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build the HTTP client");
        let mut server =
            Synapse { dir, python, port: 0, base_url: String::new(), child: None, http, startup: Duration::ZERO };
        server.write_log_config();

        // A free port can be taken by another process before Synapse binds it (tests run
        // in parallel): try a few.
        let mut last = String::new();
        for attempt in 1..=5 {
            server.set_port(free_port());
            if attempt == 1 {
                server.generate_keys().await;
            } else {
                // So the next failure is read from its own output, not the last one's.
                let _ = fs::remove_file(server.path("homeserver.log"));
                let _ = fs::remove_file(server.path("stdout-stderr.log"));
            }
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(StartError { port_taken: true, message }) => last = message,
                Err(e) => panic!("{}", e.message),
            }
        }
        panic!("Synapse found its port taken 5 times; last: {last}");
    }

    /// `http://127.0.0.1:PORT`, for clients (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `localhost`.
    pub fn server_name(&self) -> &str {
        SERVER_NAME
    }

    /// The full user id of a local user: `@name:localhost`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{SERVER_NAME}")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How long the last start took, from spawning the process to `/health` answering.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The temp dir holding `homeserver.yaml`, the database and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An HTTP client for calls of a test's own (no proxy, 30 s timeout).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Creates a user through shared-secret registration (`/_synapse/admin/v1/register`)
    /// and returns `(user_id, access_token)`. The token belongs to a new device. Panics
    /// with Synapse's answer if the registration is refused (e.g. the name is taken).
    pub async fn register(&self, username: &str, password: &str, admin: bool) -> (String, String) {
        let url = format!("{}/_synapse/admin/v1/register", self.base_url);
        let nonce = self.expect_json(self.http.get(&url).send().await, "GET /_synapse/admin/v1/register").await;
        let nonce = nonce["nonce"].as_str().unwrap_or_else(|| panic!("no nonce in {nonce}")).to_owned();
        let mac = registration_mac(&nonce, username, password, admin);
        let body = json!({ "nonce": nonce, "username": username, "password": password, "admin": admin, "mac": mac });
        let what = format!("registering {username}");
        let answer = self.expect_json(self.http.post(&url).json(&body).send().await, &what).await;
        let user_id = answer["user_id"].as_str().unwrap_or_else(|| panic!("{what}: no user_id in {answer}"));
        let token = answer["access_token"].as_str().unwrap_or_else(|| panic!("{what}: no access_token in {answer}"));
        (user_id.to_owned(), token.to_owned())
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the server the way an operator would (SIGTERM; SIGKILL after 15 s) and waits
    /// for it to exit. The database and the port number are kept for [`Synapse::restart`].
    /// Does nothing if it is not running.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet (so
        // the pid cannot have been reused).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let sent = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => {
                    eprintln!("synapse: pid {pid} stopped in {:.1?}", sent.elapsed());
                    return;
                }
                Ok(None) if sent.elapsed() < STOP_TIMEOUT => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => {
                    eprintln!("synapse: pid {pid} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// Stops the server (if it runs) and starts it again on the same port with the same
    /// database and signing key: users, tokens and rooms survive, as after a real restart.
    pub async fn restart(&mut self) {
        self.stop().await;
        if let Err(e) = self.spawn_and_wait().await {
            panic!("{}", e.message);
        }
    }

    /// The last `lines` lines of Synapse's log and of its stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["homeserver.log", "stdout-stderr.log"] {
            let text = match fs::read(self.dir.path().join(name)) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => {
                    let _ = writeln!(out, "--- {name}: {e} ---");
                    continue;
                }
            };
            let all: Vec<&str> = text.lines().collect();
            let _ = writeln!(out, "--- {name} (last {} of {} lines) ---", lines.min(all.len()), all.len());
            for line in &all[all.len().saturating_sub(lines)..] {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn set_port(&mut self, port: u16) {
        self.port = port;
        self.base_url = format!("http://127.0.0.1:{port}");
        self.write_config();
    }

    fn write_config(&self) {
        let q = |name: &str| yaml_string(&self.path(name));
        let mut rate_limits = String::new();
        let mut open_block = "";
        for key in RATE_LIMITS {
            match key.split_once('.') {
                None => {
                    let _ = writeln!(rate_limits, "{key}: {UNLIMITED}");
                    open_block = "";
                }
                Some((block, inner)) => {
                    if block != open_block {
                        let _ = writeln!(rate_limits, "{block}:");
                        open_block = block;
                    }
                    let _ = writeln!(rate_limits, "  {inner}: {UNLIMITED}");
                }
            }
        }
        let config = format!(
            "# Written by tests/support/synapse.rs for one test run.
server_name: \"{SERVER_NAME}\"
public_baseurl: \"{base_url}/\"
report_stats: false
pid_file: {pid_file}
listeners:
  - port: {port}
    bind_addresses: [\"127.0.0.1\"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: {database}
log_config: {log_config}
signing_key_path: {signing_key}
media_store_path: {media_store}
enable_media_repo: false
registration_shared_secret: \"{REGISTRATION_SECRET}\"
enable_registration: false
bcrypt_rounds: 4
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
presence:
  enabled: false
{rate_limits}",
            base_url = self.base_url,
            port = self.port,
            pid_file = q("homeserver.pid"),
            database = q("homeserver.db"),
            log_config = q("log.yaml"),
            signing_key = q("signing.key"),
            media_store = q("media_store"),
        );
        fs::write(self.path("homeserver.yaml"), config).expect("write homeserver.yaml");
    }

    fn write_log_config(&self) {
        let config = format!(
            "version: 1
formatters:
  plain:
    format: '%(asctime)s %(levelname)s %(name)s: %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: plain
    filename: {}
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
",
            yaml_string(&self.path("homeserver.log"))
        );
        fs::write(self.path("log.yaml"), config).expect("write log.yaml");
    }

    fn synapse_command(&self) -> Command {
        let mut command = Command::new(&self.python);
        command.args(["-m", "synapse.app.homeserver", "-c"]).arg(self.path("homeserver.yaml"));
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        command
    }

    async fn generate_keys(&self) {
        let started = Instant::now();
        let mut command = tokio::process::Command::from(self.synapse_command());
        let out = command.arg("--generate-keys").output().await.expect("run synapse --generate-keys");
        eprintln!("synapse: signing key generated in {:.1?}", started.elapsed());
        assert!(
            out.status.success() && self.path("signing.key").exists(),
            "synapse --generate-keys failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let output = File::options()
            .create(true)
            .append(true)
            .open(self.path("stdout-stderr.log"))
            .expect("open stdout-stderr.log");
        let stderr = output.try_clone().expect("clone a file handle");
        let spawned = Instant::now();
        let child = self
            .synapse_command()
            .stdout(output)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.python.display()));
        self.child = Some(child);
        let health = format!("{}/health", self.base_url);
        loop {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                let log = self.log_tail(30);
                return Err(StartError {
                    port_taken: log.contains("Address already in use"),
                    message: format!("Synapse exited during startup ({status}) on port {}:\n{log}", self.port),
                });
            }
            let answer = self.http.get(&health).timeout(Duration::from_secs(2)).send().await;
            // Another process may have taken the port after `free_port` let it go: only an
            // answer from our own child counts (ours then fails to bind, exits, and the
            // caller tries another port).
            let ours = self.pid().is_some_and(|pid| listens_on(pid, self.port));
            if ours && answer.is_ok_and(|a| a.status().is_success()) {
                self.startup = spawned.elapsed();
                eprintln!(
                    "synapse: ready on {} (pid {}) in {:.1?}",
                    self.base_url,
                    self.pid().unwrap_or(0),
                    self.startup
                );
                return Ok(());
            }
            if spawned.elapsed() > READY_TIMEOUT {
                self.kill();
                return Err(StartError {
                    port_taken: false,
                    message: format!(
                        "Synapse did not answer {health} within {READY_TIMEOUT:?}:\n{}",
                        self.log_tail(30)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn expect_json(&self, sent: reqwest::Result<reqwest::Response>, what: &str) -> Value {
        let response = sent.unwrap_or_else(|e| panic!("{what}: {e}\n{}", self.log_tail(20)));
        let status = response.status();
        let text = response.text().await.unwrap_or_else(|e| panic!("{what}: reading the answer: {e}"));
        assert!(status.is_success(), "{what}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Synapse {
    /// SIGKILL: the database is thrown away with the temp dir, so nothing needs a clean
    /// shutdown, and a panicking test should not wait for one.
    fn drop(&mut self) {
        self.kill();
    }
}

/// `bin/python` of the Synapse venv; panics saying how to make it if it is missing.
fn venv_python() -> PathBuf {
    let venv = match std::env::var_os("WAVELET_SYNAPSE_VENV").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is not set (and WAVELET_SYNAPSE_VENV is not either)");
            Path::new(&home).join(".cache/wavelet/synapse-venv")
        }
    };
    let python = venv.join("bin/python");
    assert!(
        python.exists() && venv.join("pyvenv.cfg").exists(),
        "no Synapse venv at {} (WAVELET_SYNAPSE_VENV, default ~/.cache/wavelet/synapse-venv): \
         run scripts/synapse-venv (scripts/test does it for you)",
        venv.display()
    );
    python
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Whether process `pid` holds the socket listening on TCP `port`, from /proc (Linux).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return true; // no /proc: trust the answer
    };
    let local_port = format!(":{port:04X}");
    // Columns: sl local_address rem_address st … inode; st 0A is LISTEN.
    let sockets: Vec<PathBuf> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let listening = columns.get(1).is_some_and(|a| a.ends_with(&local_port)) && columns.get(3) == Some(&"0A");
            listening.then(|| columns.get(9).map(|inode| PathBuf::from(format!("socket:[{inode}]")))).flatten()
        })
        .collect();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|target| sockets.contains(&target)))
}

/// The `mac` of shared-secret registration: hex HMAC-SHA1, keyed by the shared secret, of
/// `nonce \0 username \0 password \0 admin|notadmin`.
fn registration_mac(nonce: &str, username: &str, password: &str, admin: bool) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(REGISTRATION_SECRET.as_bytes()).expect("HMAC takes any key length");
    let role = if admin { "admin" } else { "notadmin" };
    for (i, part) in [nonce, username, password, role].into_iter().enumerate() {
        if i > 0 {
            mac.update(b"\0");
        }
        mac.update(part.as_bytes());
    }
    mac.finalize().into_bytes().iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// A path as a YAML scalar (a JSON string is a valid YAML double-quoted one).
fn yaml_string(path: &Path) -> String {
    serde_json::to_string(path.to_str().expect("temp dir paths are UTF-8")).expect("a string serializes")
}
