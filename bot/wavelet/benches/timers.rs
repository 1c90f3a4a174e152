//! Durable timers at scale, printed as figures (BENCHMARKS.md records them).
//!
//! `cargo bench -p wavelet --bench timers` runs, on a SQLite file and (when
//! `DATABASE_URL` is set, as `scripts/bench` does) on PostgreSQL:
//! - 10,000 pending timers falling due over ten seconds, fired by the real background
//!   loop (`service.rs`): how late each fired after its due time (p50, p99, max);
//! - the loop's idle cost: passes and CPU time over ten idle seconds, with no timer
//!   pending and with 10,000 pending far in the future (flat: no polling storm).

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wavelet::delivery::ingest::Ingest;
use wavelet::delivery::{Adapters, ChatAdapter, SendFuture};
use wavelet::runtime::{Runtime, SystemClock};
use wavelet_core::{Account, InboundEvent, OutboundMessage, Platform, RoomRef};

const TIMERS: usize = 10_000;

/// Each run sleeps 10 s plus its number's last four digits in milliseconds: due times
/// spread evenly over ten seconds.
const REMIND: &str = r#"
const COMMAND = "remind";
const ALLOWED_ROLES = ["practitioner"];
fn run(ctx) {
    let n = parse_int(ctx.run.sub_string(2));
    sleep(`${10000 + n % 10000}ms`);
    tell(ctx.starter, "time");
}
"#;

/// Sleeps a day: pending, never due during the measurement.
const LATER: &str = r#"
const COMMAND = "later";
const ALLOWED_ROLES = ["practitioner"];
fn run(ctx) {
    sleep("1day");
    tell(ctx.starter, "later");
}
"#;

struct Count(std::sync::atomic::AtomicUsize);

impl ChatAdapter for Count {
    fn platform(&self) -> Platform {
        Platform::Console
    }
    fn send<'a>(&'a self, _: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(async move {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
}

async fn runtime(url: &str, dir: &Path) -> Arc<Runtime> {
    let wf = dir.join("timer-workflows");
    std::fs::create_dir_all(&wf).expect("workflows dir");
    std::fs::write(wf.join("remind.rhai"), REMIND).expect("workflow");
    std::fs::write(wf.join("later.rhai"), LATER).expect("workflow");
    let config = common::config(dir, &wf, TIMERS);
    wavelet::app::build(config, url, Arc::new(SystemClock)).await.expect("runtime").runtime
}

/// Every practitioner starts `command` once, through the ingest.
async fn start_all(rt: &Arc<Runtime>, command: &str) {
    let (ingest, _worker) = Ingest::spawn(rt.clone(), wavelet::delivery::ingest::MAX_BATCH);
    let mut tasks = Vec::new();
    for p in 0..TIMERS {
        let ingest = ingest.clone();
        let command = command.to_string();
        tasks.push(tokio::spawn(async move {
            let who = format!("p{p}");
            let ev = InboundEvent {
                event_id: format!("{command}-{p}"),
                room: RoomRef::Shared { platform: Platform::Console, id: format!("g{}", p / common::GROUP_SIZE) },
                sender: Account { platform: Platform::Console, id: who },
                text: format!("!{command}"),
                received_at: wavelet::runtime::Clock::now(&SystemClock),
                on_message: None,
            };
            ingest.submit(ev).await.expect("submitted")
        }));
    }
    for t in tasks {
        t.await.expect("driver");
    }
}

/// Passes of the background loop and CPU time of this process over `d`, idle.
async fn idle(background: &wavelet::delivery::service::Background, d: Duration) -> (u64, Duration) {
    let (passes, cpu) = (background.passes(), common::cpu_time());
    tokio::time::sleep(d).await;
    (background.passes() - passes, common::cpu_time() - cpu)
}

async fn measure(name: &str, url: &str, dir: &Path) {
    let rt = runtime(url, dir).await;
    let sent = Arc::new(Count(Default::default()));
    let mut adapters = Adapters::default();
    adapters.add(sent.clone());
    let background = wavelet::delivery::service::spawn(rt.clone(), adapters);

    let (passes0, cpu0) = idle(&background, Duration::from_secs(10)).await;

    let start = Instant::now();
    start_all(&rt, "remind").await;
    let created = start.elapsed();
    // Every timer fires and its run tells its starter.
    while sent.0.load(Ordering::Relaxed) < TIMERS {
        assert!(start.elapsed() < Duration::from_secs(120), "timers did not all fire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut late: Vec<i64> = rt
        .store()
        .ledger_page(0, i64::MAX)
        .await
        .expect("ledger")
        .into_iter()
        .filter(|e| e.link.kind == "timer.fired")
        .filter_map(|e| e.content?["late_ms"].as_i64())
        .collect();
    late.sort();
    assert_eq!(late.len(), TIMERS);
    let pct = |p: usize| late[(late.len() * p / 100).min(late.len() - 1)];
    let within = late.iter().filter(|l| **l <= 1_000).count();

    // 10,000 more, pending a day: the loop must not wake more often for them.
    start_all(&rt, "later").await;
    let (passes1, cpu1) = idle(&background, Duration::from_secs(10)).await;
    background.stop().await;

    println!(
        "{name:<8} {TIMERS} timers created in {:.1} s, due over 10 s, fired by the background loop:",
        created.as_secs_f64()
    );
    println!(
        "{name:<8}   late after due: p50 {} ms, p99 {} ms, max {} ms; within 1 s: {within} of {TIMERS}",
        pct(50),
        pct(99),
        late[late.len() - 1]
    );
    println!(
        "{name:<8}   idle 10 s, nothing pending: {passes0} passes, {} ms CPU; with {TIMERS} pending a day ahead: {passes1} passes, {} ms CPU",
        cpu0.as_millis(),
        cpu1.as_millis()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        for backend in ["sqlite", "postgres"] {
            let Some(url) = common::fresh_url(backend, dir.path(), "timers").await else {
                println!("{backend:<8} skipped: set DATABASE_URL (scripts/bench does) to measure PostgreSQL");
                continue;
            };
            measure(backend, &url, dir.path()).await;
        }
    });
}
