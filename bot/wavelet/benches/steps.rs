//! Throughput and size of the core, printed as figures (BENCHMARKS.md records them).
//!
//! `cargo bench -p wavelet --bench steps` runs, on a SQLite file and (when
//! `DATABASE_URL` is set, as `scripts/bench` does) on PostgreSQL:
//! - steps per second: the shipped concern workflow driven in-process by many
//!   practitioners at once through the group-commit ingest, beside the storage floor
//!   (the same number of commits, each doing three bare inserts) measured in the same run;
//! - 10,000 runs waiting for an answer: resident memory, and the cost of resuming one of
//!   them against resuming one of ten.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wavelet::delivery::ingest::Ingest;
use wavelet::runtime::{Runtime, SystemClock};
use wavelet_core::{Config, InboundEvent, Millis};

const ANSWERS: [&str; 4] = ["AB 2015", "1", "2", "Came in hungry again; says there is no food at home."];

#[path = "common.rs"]
mod common;
use common::{fresh_url, root};

/// A directory of `n` practitioners in groups of [`GROUP_SIZE`], with the shipped workflows.
fn config(dir: &Path, n: usize) -> Config {
    common::config(dir, &root().join("workflows"), n)
}

async fn runtime(url: &str, dir: &Path, people: usize) -> Arc<Runtime> {
    wavelet::app::build(config(dir, people), url, Arc::new(SystemClock)).await.expect("runtime").runtime
}

fn event(person: usize, step: usize, text: &str) -> InboundEvent {
    common::event(person, step, text, wavelet::runtime::Clock::now(&SystemClock))
}

async fn steps_per_second(name: &str, url: &str, dir: &Path, practitioners: usize) {
    let rt = runtime(url, dir, practitioners).await;
    if let Some(n) = std::env::var("BENCH_MAX_CARRIED").ok().and_then(|v| v.parse().ok()) {
        rt.store().set_max_carried(n);
    }
    let (ingest, _worker) = Ingest::spawn(rt.clone(), wavelet::delivery::ingest::MAX_BATCH);
    let commits_before = rt.store().commits();
    let carried_before = rt.store().carried_on();
    let superseded_before = rt.store().superseded();
    let commit_time_before = rt.store().commit_time();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..practitioners {
        let ingest = ingest.clone();
        tasks.push(tokio::spawn(async move {
            ingest.submit(event(p, 0, "!concern")).await.expect("submitted");
            for (i, a) in ANSWERS.iter().enumerate() {
                ingest.submit(event(p, i + 1, a)).await.expect("submitted");
            }
        }));
    }
    for t in tasks {
        t.await.expect("driver");
    }
    let took = start.elapsed();
    let commits = rt.store().commits() - commits_before;
    let commit_time = rt.store().commit_time() - commit_time_before;
    let carried = rt.store().carried_on() - carried_before;
    let superseded = rt.store().superseded() - superseded_before;
    let steps = practitioners * (1 + ANSWERS.len());
    let finished = rt.store().run_counts().await.expect("counts");
    assert!(
        finished.iter().any(|(s, n)| s == "finished" && *n as usize == practitioners),
        "all runs finish: {finished:?}"
    );
    // Commits overlap the next batch's handling, so their time can add up to more than
    // their share of the wall-clock time.
    println!(
        "{name:<8} writing and committing: {:.2} s over {commits} commits, {carried} of them while the next batch was handled ({superseded} handled again)",
        commit_time.as_secs_f64(),
    );
    if std::env::var("BENCH_NO_FLOOR").is_ok() {
        println!(
            "{name:<8} workflow: {steps} steps in {:.2} s = {:.0} steps/s",
            took.as_secs_f64(),
            steps as f64 / took.as_secs_f64()
        );
        return;
    }
    let floor = storage_floor(&rt, commits).await;
    let per_step_floor = storage_floor(&rt, steps as u64).await;
    println!(
        "{name:<8} workflow: {steps} steps in {:.2} s = {:.0} steps/s ({commits} commits, {:.1} steps/commit)",
        took.as_secs_f64(),
        steps as f64 / took.as_secs_f64(),
        steps as f64 / commits as f64
    );
    println!(
        "{name:<8} floor, same commits:   {commits} commits of 3 bare inserts in {:.3} s; workflow takes {:.1}x that",
        floor.as_secs_f64(),
        took.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "{name:<8} floor, commit a step:  {steps} commits of 3 bare inserts in {:.2} s = {:.0} commits/s; workflow takes {:.2}x that",
        per_step_floor.as_secs_f64(),
        steps as f64 / per_step_floor.as_secs_f64(),
        took.as_secs_f64() / per_step_floor.as_secs_f64()
    );
    rt.store().verify(&[]).await.expect("read").expect("ledger verifies");
}

/// `commits` transactions of three small inserts each, one after another.
async fn storage_floor(rt: &Runtime, commits: u64) -> Duration {
    rt.store().bare_insert_setup().await.expect("floor table");
    let start = Instant::now();
    for i in 0..commits {
        rt.store().bare_insert_commit(i as i64).await.expect("floor insert");
    }
    start.elapsed()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Starts `waiting` runs that wait for an answer, then times resuming some of them. Runs
/// in a child process of its own, so its resident memory is its own.
async fn waiting_runs(name: &str, url: &str, dir: &Path, waiting: usize) {
    let rt = runtime(url, dir, waiting).await;
    let (ingest, _worker) = Ingest::spawn(rt.clone(), wavelet::delivery::ingest::MAX_BATCH);
    let rss_before = rss_kib();
    let mut tasks = Vec::new();
    for p in 0..waiting {
        let ingest = ingest.clone();
        tasks.push(tokio::spawn(async move { ingest.submit(event(p, 0, "!concern")).await.expect("submitted") }));
    }
    for t in tasks {
        t.await.expect("driver");
    }
    let rss_after = rss_kib();
    let waiting_now = rt.store().run_counts().await.expect("counts");
    assert!(waiting_now.iter().any(|(s, n)| s == "waiting" && *n as usize == waiting), "{waiting_now:?}");
    // Resume ten of them, one at a time, timed (each a different person: a real resume).
    let mut took = Vec::new();
    for p in (0..waiting).step_by((waiting / 10).max(1)).take(10) {
        let s = Instant::now();
        ingest.submit(event(p, 1, ANSWERS[0])).await.expect("submitted");
        took.push(s.elapsed());
    }
    took.sort();
    println!(
        "{name:<8} {waiting:>6} runs waiting: resident memory {:.1} MiB ({:+.1} MiB for the runs); resuming one: median {:.2} ms, max {:.2} ms",
        rss_after as f64 / 1024.0,
        (rss_after as f64 - rss_before as f64) / 1024.0,
        took[took.len() / 2].as_secs_f64() * 1000.0,
        took[took.len() - 1].as_secs_f64() * 1000.0
    );
}

/// The engine alone: replays of the concern workflow per second, no store.
fn replay_only() {
    use wavelet_core::engine::{Host, Outcome, RunContext, SandboxLimits, Wait, WorkflowEngine};
    struct H;
    impl Host for H {
        fn now(&mut self) -> Millis {
            Millis(0)
        }
        fn new_case_id(&mut self) -> String {
            "C-1".into()
        }
        fn person_exists(&self, _: &str) -> bool {
            true
        }
        fn group_exists(&self, _: &str) -> bool {
            true
        }
        fn role_exists(&self, _: &str) -> bool {
            true
        }
        fn policy_exists(&self, _: &str) -> bool {
            true
        }
        fn new_escalation_id(&mut self) -> String {
            "E-1".into()
        }
        fn members(&self, _: &str, _: &str) -> Vec<String> {
            Vec::new()
        }
    }
    let engine = WorkflowEngine::new(SandboxLimits::default());
    let path = root().join("workflows/raise_concern.rhai");
    let source = std::fs::read_to_string(&path).expect("workflow");
    let wf = engine.compile("raise_concern", &path, &source).expect("compiles");
    let ctx = RunContext {
        run_id: "R-1".into(),
        workflow: "raise_concern".into(),
        starter: "p0".into(),
        group: "g0".into(),
        room: "console:g0".into(),
    };
    let n = 2_000;
    let start = Instant::now();
    for _ in 0..n {
        let mut history = Vec::new();
        for a in ["!", "AB 2015", "neglect", "possibly", "details"] {
            let adv = engine.advance(&wf, &ctx, history, &mut H);
            history = adv.history;
            if let Outcome::Waiting(Wait::Answer { step, .. }) = adv.outcome {
                history[step].result = Some(serde_json::json!(a));
            }
        }
    }
    let took = start.elapsed();
    println!(
        "engine   replay only: {} advances in {:.2} s = {:.0} advances/s",
        n * 5,
        took.as_secs_f64(),
        (n * 5) as f64 / took.as_secs_f64()
    );
}

fn main() {
    if let Ok(child) = std::env::var("BENCH_CHILD") {
        let parts: Vec<&str> = child.splitn(4, ' ').collect();
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
        let n: usize = parts[1].parse().expect("count");
        rt.block_on(waiting_runs(parts[0], parts[2], Path::new(parts[3]), n));
        return;
    }
    replay_only();
    if std::env::var("BENCH_ENGINE_ONLY").is_ok() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    let practitioners: usize = std::env::var("BENCH_PRACTITIONERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let waiting: usize = std::env::var("BENCH_WAITING").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        for backend in ["sqlite", "postgres"] {
            let Some(url) = fresh_url(backend, dir.path(), "steps").await else {
                println!("{backend:<8} skipped: set DATABASE_URL (scripts/bench does) to measure PostgreSQL");
                continue;
            };
            steps_per_second(backend, &url, dir.path(), practitioners).await;
            for n in [10, waiting] {
                let Some(url) = fresh_url(backend, dir.path(), &format!("wait{n}")).await else { continue };
                let status = std::process::Command::new(std::env::current_exe().expect("own path"))
                    .env("BENCH_CHILD", format!("{backend} {n} {url} {}", dir.path().display()))
                    .status()
                    .expect("child");
                assert!(status.success(), "the waiting-runs measurement failed");
            }
        }
    });
}
