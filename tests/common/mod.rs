//! Helpers the runtime and escalation tests share: a bot on a real store with a manual
//! clock and a collecting adapter, fresh stores on both backends, and scratch workflows.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
pub use wavelet::delivery::{Adapters, ChatAdapter, SendFuture, deliver_pending};
pub use wavelet::runtime::{ManualClock, Runtime};
pub use wavelet_core::{Account, InboundEvent, Millis, OutboundMessage, Platform, RoomRef};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Collects what the bot sends.
#[derive(Default)]
pub struct Outbox(pub Mutex<Vec<OutboundMessage>>);

impl ChatAdapter for Outbox {
    fn platform(&self) -> Platform {
        Platform::Console
    }
    fn send<'a>(&'a self, m: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(async move {
            self.0.lock().unwrap().push(m.clone());
            Ok(())
        })
    }
}

pub struct Bot {
    pub rt: Arc<Runtime>,
    pub clock: Arc<ManualClock>,
    pub sent: Arc<Outbox>,
    pub adapters: Adapters,
    pub n: usize,
}

pub async fn bot(url: &str, workflows: Option<&Path>) -> Bot {
    bot_with(url, workflows, |_| {}).await
}

/// As [`bot`], with the example configuration changed by `edit` first.
pub async fn bot_with(url: &str, workflows: Option<&Path>, edit: impl FnOnce(&mut wavelet_core::Config)) -> Bot {
    let mut config = wavelet::app::load_config(&root().join("examples/wavelet.toml"), &|_| None).unwrap();
    edit(&mut config);
    if let Some(w) = workflows {
        config.workflows.dir = w.to_path_buf();
    }
    let clock = Arc::new(ManualClock::new(Millis(1_764_000_000_000)));
    let parts = wavelet::app::build(config, url, clock.clone()).await.unwrap();
    let sent = Arc::new(Outbox::default());
    let mut adapters = Adapters::default();
    adapters.add(sent.clone());
    Bot { rt: parts.runtime, clock, sent, adapters, n: 0 }
}

impl Bot {
    /// `room` "dm" means privately to the bot. Returns the texts sent in reply.
    pub async fn say(&mut self, who: &str, room: &str, text: &str) -> Vec<String> {
        self.n += 1;
        let id = format!("{who}-{}", self.n);
        self.say_with_id(who, room, text, &id).await
    }

    pub async fn say_with_id(&mut self, who: &str, room: &str, text: &str, id: &str) -> Vec<String> {
        let at = self.rt.now();
        self.say_at(who, room, text, id, at).await
    }

    pub async fn say_at(&mut self, who: &str, room: &str, text: &str, id: &str, received_at: Millis) -> Vec<String> {
        let room = if room == "dm" {
            RoomRef::Direct { platform: Platform::Console, account: who.into() }
        } else {
            RoomRef::Shared { platform: Platform::Console, id: room.into() }
        };
        let ev = InboundEvent {
            event_id: id.into(),
            room,
            sender: Account { platform: Platform::Console, id: who.into() },
            text: text.into(),
            received_at,
            on_message: None,
        };
        self.rt.handle_events(&[ev]).await.unwrap();
        deliver_pending(&self.rt, &self.adapters, self.rt.now()).await.unwrap();
        self.sent.0.lock().unwrap().drain(..).map(|m| m.body.plain()).collect()
    }

    pub async fn verify(&self) -> i64 {
        self.rt.store().verify(&[]).await.unwrap().expect("ledger verifies").entries
    }
}

/// A fresh store URL per test: a SQLite file, or a new PostgreSQL database.
pub async fn fresh(backend: &str, dir: &Path) -> String {
    match backend {
        "sqlite" => format!("sqlite://{}", dir.join("w.db").display()),
        _ => {
            let base = std::env::var("WAVELET_TEST_DATABASE_URL")
                .or_else(|_| std::env::var("DATABASE_URL"))
                .expect("PostgreSQL tests need a server: run them with scripts/test, or set DATABASE_URL");
            let name = format!("wavelet_rt_{}_{}", std::process::id(), rand_suffix());
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&base).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await.unwrap();
            let (head, _) = base.rsplit_once('/').unwrap();
            format!("{head}/{name}")
        }
    }
}

pub fn rand_suffix() -> u64 {
    // Unique within this test binary; the process id in the name separates binaries.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name("sqlite").await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name("postgres").await } )* }
    };
}

pub fn workflows(dir: &Path, extra: &[(&str, &str)]) -> PathBuf {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::copy(root().join("workflows/raise_concern.rhai"), wf.join("raise_concern.rhai")).unwrap();
    for (name, source) in extra {
        std::fs::write(wf.join(format!("{name}.rhai")), source).unwrap();
    }
    wf
}
