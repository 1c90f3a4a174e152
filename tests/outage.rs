//! The database goes away under load and comes back: a real `wavelet console` process
//! talks to a private PostgreSQL of this test's own (initdb and pg_ctl in a temp dir, so
//! the server other tests share is never touched). Mid-dialog the server is stopped for
//! 30 s while people go on typing; then it is started again. The process must ride it out
//! on its own and say so in its log; every line typed is recorded in the inbox and
//! handled once; every message reaches the room once; the ledger verifies.
//!
//! The console takes the next line only once the one before is committed, so while the
//! server is down one line is held (and retried) by the ingest and the rest wait in the
//! pipe, as a chat platform keeps what a bot has not acknowledged.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wavelet_store::Store;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// How long the server stays down.
const OUTAGE: Duration = Duration::from_secs(30);

/// Before the outage: alice raises a concern and answers all but the last question.
const BEFORE: &[&str] = &[":as alice", ":in north", "!concern", ":dm", "AB 2015", "neglect", "no"];

/// Typed while the server is down: alice's last answer, then dana raises a concern of
/// her own and answers every question.
const DURING: &[&str] = &[
    "Came to school hungry three days running; says there is no food at home.",
    ":as dana",
    ":in north",
    "!concern",
    ":dm",
    "CD 2016",
    "physical",
    "no",
    "Bruise on the left forearm, seen at the 9am visit; the child said a door did it.",
];

/// After the server is back: eve raises a third concern.
const AFTER: &[&str] = &[
    ":as eve",
    ":in north",
    "!concern",
    ":dm",
    "EF 2017",
    "online",
    "no",
    "Told the school nurse an adult she met in a game asked for photos.",
];

/// What must never appear in the log: concern text (the project's logging rule).
const SECRETS: &[&str] = &["AB 2015", "CD 2016", "EF 2017", "no food at home", "left forearm", "asked for photos"];

/// The messages each run sends, by idempotency key: four questions (effects 0-3), the
/// summary shared with north (effect 6, the group's first room) and the thank-you (7).
fn keys_of_run(run: &str) -> Vec<String> {
    ["0", "1", "2", "3", "6:0", "7"].iter().map(|s| format!("run:{run}:{s}")).collect()
}

#[test]
fn postgres_stopped_for_30_seconds_loses_no_inbound_event() {
    let began = Instant::now();
    let async_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut pg = PrivatePostgres::start_new();
    let url = async_rt.block_on(pg.create_database("wavelet_outage"));
    let scratch = tempfile::tempdir().unwrap();
    let config = config(scratch.path());

    let mut wavelet = Wavelet::start(&config, &url);
    let mut line_number = 0;
    let mut typed = Vec::new();
    let mut say = |wavelet: &mut Wavelet, lines: &[&str]| {
        for l in lines {
            line_number += 1;
            if !l.starts_with(':') {
                typed.push(format!("outage-{line_number}"));
            }
            wavelet.say(l);
        }
    };

    say(&mut wavelet, BEFORE);
    wavelet.wait_for_stdout("run:R-1:3", "alice's last question is asked before the outage");
    // Everything sent so far is marked delivered, so nothing is in flight when it stops.
    async_rt.block_on(wait_until_all_delivered(&url));

    pg.stop();
    let down_at = Instant::now();
    for l in DURING {
        say(&mut wavelet, &[*l]);
        std::thread::sleep(OUTAGE / (DURING.len() as u32 + 1));
    }
    std::thread::sleep(OUTAGE.saturating_sub(down_at.elapsed()));
    assert!(wavelet.child.try_wait().unwrap().is_none(), "wavelet kept running while the store was away");
    let log = wavelet.stderr();
    for noticed in
        ["store unavailable; holding events and retrying", "store unavailable; timers and delivery will retry"]
    {
        assert!(log.contains(noticed), "the log says `{noticed}` during the outage:\n{log}");
    }
    let outage = down_at.elapsed();
    pg.start();
    let up_at = Instant::now();

    say(&mut wavelet, AFTER);
    // Nobody steps in: the process recovers by itself.
    for back in ["store is back; held events handled", "store is back; timers and delivery running again"] {
        wavelet.wait_for_stderr(back, "the log says the store is back");
    }
    let recovered_in = up_at.elapsed();
    wavelet.wait_for_stdout("run:R-3:7", "eve's concern goes through after the outage");
    let (status, stdout, stderr) = wavelet.finish();
    let everything = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(status.success(), "wavelet exits cleanly ({status}):\n{everything}");

    // Every message once: a repeat would be a resend the store should have prevented.
    let mut printed: Vec<String> =
        stdout.lines().filter_map(|l| Some(l.strip_prefix('{')?.split_once('}')?.0.to_string())).collect();
    printed.sort();
    let mut expected: Vec<String> = ["R-1", "R-2", "R-3"].iter().flat_map(|r| keys_of_run(r)).collect();
    expected.sort();
    assert_eq!(printed, expected, "every message is printed exactly once:\n{everything}");
    assert!(!stdout.contains("reached me before my question"), "no answer is refused as early:\n{everything}");
    assert!(!stdout.contains("not taken"), "the console takes every line:\n{everything}");
    for secret in SECRETS {
        assert!(!stderr.contains(secret), "concern text `{secret}` must not reach the log:\n{stderr}");
    }

    async_rt.block_on(async {
        // Every line typed is recorded once in the inbox, before, during and after.
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut inbox: Vec<String> = sqlx::query_scalar("SELECT event_id FROM inbox WHERE platform = 'console'")
            .fetch_all(&mut c)
            .await
            .unwrap();
        inbox.sort();
        typed.sort();
        assert_eq!(inbox, typed, "the inbox holds every line typed, once");
        c.close().await.unwrap();

        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.run_counts().await.unwrap(), vec![("finished".to_string(), 3)], "all three runs finish");
        let entries = store.ledger_page(0, i64::MAX).await.unwrap();
        let answered = entries.iter().filter(|e| e.link.kind == "question.answered").count();
        assert_eq!(answered, 12, "each of the 12 answers is taken once");
        let head = store.ledger_head().await.unwrap();
        wavelet_core::ledger::verify(entries, &head).unwrap_or_else(|e| panic!("the ledger verifies: {e}"));
        assert_eq!(
            store.pending_outbox(wavelet_core::Millis(i64::MAX), 10).await.unwrap(),
            vec![],
            "nothing is left undelivered"
        );
        store.close().await;
    });
    eprintln!(
        "outage of {:.1} s ridden out, recovered {:.1} s after the server was back; {} lines typed, {} messages; \
         {:.1} s in all",
        outage.as_secs_f64(),
        recovered_in.as_secs_f64(),
        typed.len(),
        printed.len(),
        began.elapsed().as_secs_f64()
    );
}

/// The example configuration, with its workflows found from anywhere and without its
/// weekly schedule. The store is the private server (`WAVELET_DATABASE_URL`).
fn config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("examples/wavelet.toml")).unwrap();
    let text = text.split("[[schedule]]").next().unwrap();
    let text = text.replace("dir = \"../workflows\"", &format!("dir = \"{}\"", root().join("workflows").display()));
    let path = dir.join("wavelet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn wait_until_all_delivered(url: &str) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
            .fetch_one(&mut c)
            .await
            .unwrap();
        if waiting == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{waiting} messages still undelivered before the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.close().await.unwrap();
}

/// A `wavelet console` process fed line by line, and what it printed so far.
struct Wavelet {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Wavelet {
    fn start(config: &Path, url: &str) -> Wavelet {
        let mut child = Command::new(wavelet_tests::wavelet_bin())
            .arg("--config")
            .arg(config)
            .args(["console", "--input-id", "outage", "--show-keys"])
            .env("WAVELET_DATABASE_URL", url)
            .env("WAVELET_LOG", "info")
            .env_remove("WAVELET_TEST_CRASH_AT")
            .env_remove("WAVELET_TEST_CRASH_TRACE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |r: Box<dyn std::io::Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let t = text.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                    let mut t = t.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
            });
            text
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Wavelet { child, stdout, stderr }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin is open until finish");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            panic!("wavelet stopped reading its input ({e}); its log:\n{}", self.stderr());
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_for(&self, which: &Mutex<String>, text: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !which.lock().unwrap().contains(text) {
            if Instant::now() > deadline {
                panic!(
                    "{what}: `{text}` did not appear within 30 s\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout.lock().unwrap(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for_stdout(&self, text: &str, what: &str) {
        self.wait_for(&self.stdout, text, what)
    }

    fn wait_for_stderr(&self, text: &str, what: &str) {
        self.wait_for(&self.stderr, text, what)
    }

    /// Closes the input (the console ends when it does, after delivering) and waits.
    fn finish(&mut self) -> (std::process::ExitStatus, String, String) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                panic!(
                    "wavelet did not exit within 60 s of its input ending\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout.lock().unwrap(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader threads end with the pipes; give them a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(200));
        (status, self.stdout.lock().unwrap().clone(), self.stderr())
    }
}

impl Drop for Wavelet {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A PostgreSQL cluster of this test's own: initdb'd in a temp dir, on a free 127.0.0.1
/// port, trust auth. Run as an unprivileged user when the test runs as root (PostgreSQL
/// refuses root). Stopped when dropped, also when the test panics.
struct PrivatePostgres {
    bin: PathBuf,
    /// Who the server runs as; `None`: ourselves.
    user: Option<String>,
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
}

impl PrivatePostgres {
    fn start_new() -> PrivatePostgres {
        let bin = pg_bin();
        let user = pg_user();
        let dir = pg_dir(user.as_deref());
        let mut pg = PrivatePostgres { bin, user, dir, port: 0, running: false };
        let initdb = pg.run("initdb", &["-D", "data", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"]);
        assert!(initdb.status.success(), "initdb failed:\n{}", String::from_utf8_lossy(&initdb.stderr));
        // The free port can be taken before the server binds it: try a few.
        for _ in 0..5 {
            pg.port = free_port();
            if pg.try_start() {
                return pg;
            }
            if !pg.log().contains("could not bind") && !pg.log().contains("could not create any TCP/IP sockets") {
                break;
            }
        }
        panic!("the private PostgreSQL did not start; its log:\n{}", pg.log());
    }

    /// Runs one of the server binaries in the temp dir, as the server's user.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        cmd.args(args).current_dir(self.dir.path()).stdin(Stdio::null());
        cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    fn try_start(&mut self) -> bool {
        let _ = std::fs::remove_file(self.dir.path().join("log"));
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let started = self.run("pg_ctl", &["-D", "data", "-l", "log", "-w", "-t", "60", "-o", &options, "start"]);
        self.running = started.status.success();
        if !self.running {
            // A half-started server must be gone before another try.
            self.run("pg_ctl", &["-D", "data", "-m", "immediate", "stop"]);
        }
        self.running
    }

    /// Starts the server again after [`PrivatePostgres::stop`], on the same port.
    fn start(&mut self) {
        assert!(self.try_start(), "the private PostgreSQL did not start again; its log:\n{}", self.log());
    }

    /// Stops the server the way an operator would (`-m fast`: sessions are ended).
    fn stop(&mut self) {
        let stopped = self.run("pg_ctl", &["-D", "data", "-m", "fast", "-w", "-t", "30", "stop"]);
        assert!(stopped.status.success(), "pg_ctl stop failed:\n{}", String::from_utf8_lossy(&stopped.stderr));
        self.running = false;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    async fn create_database(&self, name: &str) -> String {
        use sqlx::Connection;
        let base = format!("postgres://postgres@127.0.0.1:{}", self.port);
        let mut c = sqlx::PgConnection::connect(&format!("{base}/postgres")).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await.unwrap();
        c.close().await.unwrap();
        format!("{base}/{name}")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let stopped = self.run("pg_ctl", &["-D", "data", "-m", "fast", "-t", "30", "stop"]);
            if !stopped.status.success() {
                self.run("pg_ctl", &["-D", "data", "-m", "immediate", "-t", "10", "stop"]);
            }
        }
    }
}

/// The directory holding initdb and pg_ctl: `WAVELET_TEST_PG_BIN` (set by scripts/test),
/// else PATH, else the newest /usr/lib/postgresql/*/bin.
fn pg_bin() -> PathBuf {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("WAVELET_TEST_PG_BIN").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        assert!(has_both(&d), "WAVELET_TEST_PG_BIN={} holds no initdb and pg_ctl", d.display());
        return d;
    }
    let on_path = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).find(|d| has_both(d)));
    let installed = || {
        let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
        versions
            .filter_map(|v| v.ok())
            .filter_map(|v| {
                let version: u32 = v.file_name().to_str()?.split('.').next()?.parse().ok()?;
                Some((version, v.path().join("bin")))
            })
            .filter(|(_, d)| has_both(d))
            .max()
            .map(|(_, d)| d)
    };
    on_path.or_else(installed).unwrap_or_else(|| {
        panic!(
            "this test runs a PostgreSQL server of its own and needs the server binaries (initdb, pg_ctl), \
             found in neither WAVELET_TEST_PG_BIN, PATH nor /usr/lib/postgresql/*/bin. \
             On Debian/Ubuntu: apt-get install postgresql"
        )
    })
}

/// Who runs the server: `WAVELET_TEST_PG_USER` (set by scripts/test; empty: ourselves),
/// else, as root, `postgres` (or `wavelet-test`, which scripts/test creates).
fn pg_user() -> Option<String> {
    if let Ok(u) = std::env::var("WAVELET_TEST_PG_USER") {
        return (!u.is_empty()).then_some(u);
    }
    let uid = Command::new("id").arg("-u").output().expect("cannot run `id -u`");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    let exists = |u: &str| Command::new("id").args(["-u", u]).output().is_ok_and(|o| o.status.success());
    let user = ["postgres", "wavelet-test"].into_iter().find(|u| exists(u)).unwrap_or_else(|| {
        panic!(
            "running as root, and PostgreSQL refuses to run as root: there is no `postgres` user to run it as. \
             Run the tests with scripts/test (it creates a `wavelet-test` user), or install postgresql"
        )
    });
    Some(user.to_string())
}

/// A temp dir the server's user owns; the unix socket lives there too, so its path must
/// be short (else /tmp is used).
fn pg_dir(user: Option<&str>) -> tempfile::TempDir {
    let make = |dir: tempfile::TempDir| -> Option<tempfile::TempDir> {
        if dir.path().as_os_str().len() > 80 {
            return None;
        }
        if let Some(u) = user {
            let owned = Command::new("chown").arg(u).arg(dir.path()).status().is_ok_and(|s| s.success());
            let writable = Command::new("runuser")
                .args(["-u", u, "--", "test", "-w"])
                .arg(dir.path())
                .current_dir("/")
                .status()
                .is_ok_and(|s| s.success());
            if !owned || !writable {
                return None;
            }
        }
        Some(dir)
    };
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("wavelet-pg.");
        b
    };
    make(builder().tempdir().unwrap())
        .or_else(|| make(builder().tempdir_in("/tmp").unwrap()))
        .unwrap_or_else(|| panic!("no temp dir the PostgreSQL user {user:?} can write to"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
