//! Plays transcripts (core `transcript`) against the real runtime, on an in-memory SQLite
//! store with the real migrations and a simulated clock. `wavelet test` and the Rust test
//! suite both use this.

use crate::app;
use crate::delivery::{Adapters, ChatAdapter, SendFuture, deliver_pending};
use crate::runtime::{ManualClock, Runtime};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wavelet_core::transcript::{Action, Checker, Failure, Observed, Target, Transcript};
use wavelet_core::{Account, Directory, OutboundMessage, Platform, RoomRef};

/// Why a transcript did not pass.
#[derive(Debug, thiserror::Error)]
pub enum TranscriptError {
    #[error("{0}")]
    Parse(#[from] wavelet_core::transcript::ParseError),
    #[error("{path}: {message}")]
    Setup { path: PathBuf, message: String },
    #[error("{path}:{failure}")]
    Failed { path: PathBuf, failure: Failure },
}

struct Capture {
    seen: Mutex<Vec<Observed>>,
    dir: Arc<Directory>,
}

impl ChatAdapter for Capture {
    fn platform(&self) -> Platform {
        Platform::Console
    }

    fn send<'a>(&'a self, m: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(async move {
            let to = match &m.room {
                RoomRef::Direct { platform, account } => Target::Person(
                    self.dir
                        .person_for(&Account { platform: *platform, id: account.clone() })
                        .map_or_else(|| account.clone(), |p| p.id.clone()),
                ),
                RoomRef::Shared { id, .. } => Target::Room(id.clone()),
            };
            self.seen.lock().unwrap_or_else(|e| e.into_inner()).push(Observed::Message { to, text: m.body.plain() });
            Ok(())
        })
    }
}

/// Plays one transcript. `default_config` is used when the transcript names none.
/// Returns the number of steps played.
pub async fn run(path: &Path, default_config: Option<&Path>) -> Result<usize, TranscriptError> {
    Ok(play(path, default_config).await?.steps)
}

/// What a transcript that passed left behind.
#[derive(Debug)]
pub struct Played {
    /// The number of steps played.
    pub steps: usize,
    /// Every ledger entry the transcript's run wrote, in chain order (it verified).
    pub ledger: Vec<wavelet_core::ledger::StoredEntry>,
}

/// As [`run`], also returning the ledger the transcript left.
pub async fn play(path: &Path, default_config: Option<&Path>) -> Result<Played, TranscriptError> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| TranscriptError::Setup { path: path.into(), message: format!("cannot be read: {e}") })?;
    let t = Transcript::parse(path, &source)?;
    let setup = |message: String| TranscriptError::Setup { path: path.into(), message };
    let config_path = match (&t.config, default_config) {
        (Some(c), _) => path.parent().unwrap_or(Path::new(".")).join(c),
        (None, Some(d)) => d.to_path_buf(),
        (None, None) => return Err(setup("name a configuration with `config: PATH` or pass --config".into())),
    };
    // Transcripts never read the environment: they always run on a fresh in-memory store.
    let mut config = app::load_config(&config_path, &|_| None).map_err(|e| setup(format!("{e:#}")))?;
    // A transcript tests workflows. The ledger witness is not one: its daily post names a
    // hash that changes with every edit of a script, which no transcript could expect.
    config.witness = None;
    let clock = Arc::new(ManualClock::new(t.start));
    let parts = app::build(config, "sqlite::memory:", clock.clone()).await.map_err(|e| setup(format!("{e:#}")))?;
    if let Some(e) = parts.load.refused.first() {
        return Err(setup(format!("a workflow does not load: {e}")));
    }
    let rt = parts.runtime;
    let capture = Arc::new(Capture { seen: Mutex::default(), dir: rt.directory().clone() });
    let mut adapters = Adapters::default();
    adapters.add(capture.clone());
    let mut checker = Checker::default();
    let mut ledger_seen = 0;
    let mut n = 0;
    let fail = |failure: Failure| TranscriptError::Failed { path: path.into(), failure };
    for step in &t.steps {
        match &step.action {
            Action::Say { person, room, text } => {
                checker.settle(step.line).map_err(fail)?;
                n += 1;
                let account = rt
                    .directory()
                    .person(person)
                    .and_then(|p| p.accounts.iter().find(|a| a.platform == Platform::Console))
                    .map_or_else(|| person.clone(), |a| a.id.clone());
                let room = match room {
                    Some(r) => RoomRef::Shared { platform: Platform::Console, id: r.clone() },
                    None => RoomRef::Direct { platform: Platform::Console, account: account.clone() },
                };
                let event = wavelet_core::InboundEvent {
                    event_id: format!("transcript-{n}"),
                    room,
                    sender: Account { platform: Platform::Console, id: account },
                    text: text.clone(),
                    received_at: clock.now_millis(),
                    on_message: None,
                };
                rt.handle_events(&[event]).await.map_err(|e| setup(format!("line {}: {e}", step.line)))?;
            }
            Action::After(d) => {
                checker.settle(step.line).map_err(fail)?;
                clock.advance(*d);
                while rt.fire_due_timers().await.map_err(|e| setup(e.to_string()))? > 0 {}
            }
            Action::Expect(e) => {
                checker.expect(e, step.line).map_err(fail)?;
                continue;
            }
        }
        deliver_pending(&rt, &adapters, clock.now_millis()).await.map_err(|e| setup(e.to_string()))?;
        for o in capture.seen.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            checker.observe(o);
        }
        ledger_seen = observe_shares(&rt, &mut checker, ledger_seen).await.map_err(|e| setup(e.to_string()))?;
    }
    let end = t.steps.last().map_or(1, |s| s.line + 1);
    checker.settle(end).map_err(fail)?;
    // Whatever the transcript did, the ledger it left must verify.
    let head = rt.store().ledger_head().await.map_err(|e| setup(e.to_string()))?;
    let entries = rt.store().ledger_page(0, i64::MAX).await.map_err(|e| setup(e.to_string()))?;
    wavelet_core::ledger::verify(entries.clone(), &head)
        .map_err(|e| setup(format!("the ledger does not verify: {e}")))?;
    Ok(Played { steps: t.steps.len(), ledger: entries })
}

async fn observe_shares(rt: &Runtime, checker: &mut Checker, after: i64) -> wavelet_store::Result<i64> {
    let mut last = after;
    for e in rt.store().ledger_page(after, i64::MAX).await? {
        last = e.link.seq;
        let Some(c) = &e.content else { continue };
        let group = c["group"].as_str().unwrap_or_default().to_string();
        match e.link.kind.as_str() {
            "share" => checker.observe(Observed::Share { group, text: c["what"].as_str().unwrap_or_default().into() }),
            "share.declined" => {
                checker.observe(Observed::NotShared { group, reason: c["reason"].as_str().unwrap_or_default().into() })
            }
            _ => {}
        }
    }
    Ok(last)
}

/// Every `*.transcript` file under `dir`, sorted.
pub fn find(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "transcript") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
