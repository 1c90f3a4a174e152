//! The real `wavelet run` process, as an operator runs it: no terminal, its log on stderr;
//! what it prints and logs is collected line by line; it is stopped with a signal or
//! killed, and how it ended is read back.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `wavelet --config CONFIG run` with `env` added to its environment.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Process {
        let mut child = Command::new(wavelet_tests::wavelet_bin())
            .arg("--config")
            .arg(config)
            .arg("run")
            // The log an operator gets: the default filter.
            .env_remove("WAVELET_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the wavelet binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Process { child, log }
    }

    /// The log so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The lines logged at WARN or ERROR.
    pub fn warnings(&self) -> Vec<String> {
        let level = |l: &String| l.split_whitespace().nth(1).map(str::to_string);
        self.log().into_iter().filter(|l| matches!(level(l).as_deref(), Some("WARN" | "ERROR"))).collect()
    }

    pub fn logged(&self, what: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(what))
    }

    /// Waits until the log has a line containing `what`; panics with the log after
    /// `timeout`, or if the process ends first.
    pub async fn wait_logged(&mut self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logged(what) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("wavelet ended ({status}) before logging {what:?}; its log:\n{}", self.log().join("\n"));
            }
            assert!(Instant::now() < deadline, "no {what:?} in the log after {timeout:?}:\n{}", self.log().join("\n"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits at most `timeout` for the process to end on its own (a crash point), and
    /// says how it ended.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {timeout:?}; its log:\n{}", self.log().join("\n"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) and waits at most `timeout` for the process to
    /// end: how it ended and how long it took, or `None` (it is then killed).
    pub async fn stop_with(&mut self, signal: i32, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a pid this test started and has not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "the signal was sent");
        let sent = Instant::now();
        while sent.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, sent.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
