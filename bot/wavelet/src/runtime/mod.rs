//! The runtime: turns inbound events and due timers into durable steps. For each it routes
//! (core `router`), advances the run (core `engine`), and writes everything the step did —
//! inbox row, run, case, ledger entries, timers, outbox messages — in one transaction.
//! Several events share one transaction when they arrive together (group commit).
//!
//! The runtime is split by what happens: `route` (inbound events), `start`, `advance`
//! (replay and resume), `effects`, `due` (timers, stages, schedules), `escalation`,
//! `witness` and `delivery` (what the delivery loop reports back). Adapters and the
//! operations reach it through the methods here; its fields are its own.

mod advance;
mod delivery;
mod due;
mod effects;
mod escalation;
mod passes;
mod route;
mod start;
mod witness;
mod workflows;

pub use passes::{CLAIM_EVERY, DeliveryPasses};
pub use workflows::{LoadReport, Workflows};

use std::sync::{Arc, Mutex, RwLock};
use wavelet_core::engine::{Host, WorkflowEngine};
use wavelet_core::keys;
use wavelet_core::ledger::{Draft, Record};
use wavelet_core::{Directory, MessageBody, Millis, OutboundMessage, Platform, RoomRef, render};
use wavelet_store::{self as store, RunRow, Store};

pub use wavelet_core::clock::{Clock, ManualClock};

/// The system's clock: what Wavelet runs on (transcripts and tests use a [`ManualClock`]).
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The runtime of one process: the store, the directory, the workflows on offer, the
/// clock; what a step needs, and what the adapters and the delivery loop reach it by.
pub struct Runtime {
    store: Store,
    dir: Arc<Directory>,
    workflows: Arc<RwLock<Workflows>>,
    engine: Arc<WorkflowEngine>,
    clock: Arc<dyn Clock>,
    /// Told after each commit that queued messages or set timers: the background loop wakes.
    wake: Arc<tokio::sync::Notify>,
    /// This process, as it claims outbox rows: host, pid and a random part.
    instance: String,
    /// Platforms that asked this process to slow down, and until when.
    slow_until: Mutex<std::collections::HashMap<Platform, Millis>>,
    /// The delivery passes this process has made: a chat connection can wait for the one
    /// that sends what it just queued.
    passes: DeliveryPasses,
    max_answer_chars: usize,
}

/// The actor recorded for what Wavelet does on its own.
const WAVELET: &str = "wavelet";

struct StepHost<'a> {
    now: Millis,
    next_case: &'a mut i64,
    next_escalation: &'a mut i64,
    dir: &'a Directory,
}

impl Host for StepHost<'_> {
    fn now(&mut self) -> Millis {
        self.now
    }
    fn new_case_id(&mut self) -> String {
        *self.next_case += 1;
        format!("C-{}", self.next_case)
    }
    fn person_exists(&self, id: &str) -> bool {
        self.dir.person(id).is_some()
    }
    fn group_exists(&self, id: &str) -> bool {
        self.dir.group(id).is_some()
    }
    fn policy_exists(&self, id: &str) -> bool {
        self.dir.config().policy(id).is_some()
    }
    fn role_exists(&self, id: &str) -> bool {
        self.dir.config().roles.iter().any(|r| r.id == id)
    }
    fn new_escalation_id(&mut self) -> String {
        *self.next_escalation += 1;
        format!("E-{}", self.next_escalation)
    }
    fn members(&self, group: &str, role: &str) -> Vec<String> {
        let Some(g) = self.dir.group(group) else { return Vec::new() };
        self.dir
            .members(g)
            .filter(|p| role.is_empty() || p.roles.iter().any(|r| r == role))
            .map(|p| p.id.clone())
            .collect()
    }
}

/// How many due timers and escalation stages one transaction fires.
const DUE_BATCH: i64 = 200;
impl Runtime {
    /// The platforms still inside a wait they asked this process for at `now`, and until
    /// when (the waits that have ended are forgotten).
    pub fn slowed_until(&self, now: Millis) -> std::collections::HashMap<Platform, Millis> {
        let mut slow = self.slow_until.lock().unwrap_or_else(|e| e.into_inner());
        slow.retain(|_, until| *until > now);
        slow.clone()
    }

    /// The store every step writes through.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Who is who: the directory and the configuration it was read from.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.dir
    }

    /// The workflows on offer (reloading replaces versions in place).
    pub fn workflows(&self) -> &RwLock<Workflows> {
        &self.workflows
    }

    /// The sandboxed script engine workflows compile and run on.
    pub fn engine(&self) -> &WorkflowEngine {
        &self.engine
    }

    /// Where this process's time comes from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Now, by [`Runtime::clock`].
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Told after each commit that queued messages or set timers: the background loop
    /// waits on it.
    pub fn wake(&self) -> &tokio::sync::Notify {
        &self.wake
    }

    /// This process, as it claims outbox rows: host, pid and a random part.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The delivery passes this process has made.
    pub fn passes(&self) -> &DeliveryPasses {
        &self.passes
    }

    /// Notes that `platform` asked this process to send it nothing before `until`.
    pub fn slow_down(&self, platform: Platform, until: Millis) {
        self.slow_until.lock().unwrap_or_else(|e| e.into_inner()).insert(platform, until);
    }

    pub fn new(
        store: Store,
        dir: Arc<Directory>,
        workflows: Arc<RwLock<Workflows>>,
        engine: Arc<WorkflowEngine>,
        clock: Arc<dyn Clock>,
    ) -> Runtime {
        let max_answer_chars = dir.config().limits.max_answer_chars;
        let instance = format!("{}-{}-{:08x}", hostname(), std::process::id(), rand_u32());
        Runtime {
            store,
            dir,
            workflows,
            engine,
            clock,
            wake: Arc::default(),
            instance,
            slow_until: Mutex::default(),
            passes: DeliveryPasses::default(),
            max_answer_chars,
        }
    }

    /// A person as others read them in a message: name and agency.
    fn label(&self, person: &str) -> String {
        match self.dir.person(person) {
            Some(p) => {
                let agency = self.dir.config().agencies.iter().find(|a| a.id == p.agency);
                render::person_label(p, agency)
            }
            None => person.to_string(),
        }
    }

    /// The platform an escalation reaches people on: its group's first room's.
    fn group_platform(&self, group: &str) -> Platform {
        self.dir.group(group).and_then(|g| g.rooms.first()).map_or(Platform::Console, |r| r.platform())
    }

    fn draft(&self, run: &RunRow, case_id: Option<String>, at: Millis, record: Record) -> Draft {
        Draft::of(at, &run.starter, record).about(case_id).in_run(Some(run.id.clone()), Some(run.script_hash.clone()))
    }

    fn dm_room(&self, person: &str, platform: Platform) -> Option<RoomRef> {
        self.dir.person(person).and_then(|p| self.dir.direct_room(p, platform))
    }

    /// Records something in the ledger on its own (workflow loads, audit reads).
    pub async fn record(&self, draft: Draft) -> store::Result<()> {
        let mut tx = self.store.begin().await?;
        tx.append(draft);
        tx.commit().await
    }
}

/// Rooms as the ledger names them (`platform:id`, `dm:platform:account`).
fn names(rooms: &[RoomRef]) -> Vec<String> {
    rooms.iter().map(RoomRef::to_string).collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into())
}

/// A little randomness for the instance id (two processes with one pid in two containers).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish() as u32
}

fn question(
    run: &RunRow,
    step: usize,
    person: &str,
    room: RoomRef,
    prompt: &str,
    choices: Option<Vec<String>>,
) -> OutboundMessage {
    OutboundMessage {
        idempotency_key: keys::question(&run.id, step),
        room,
        person: Some(person.to_string()),
        body: match choices {
            Some(options) => MessageBody::Choice { prompt: prompt.to_string(), options },
            None => MessageBody::Text { text: prompt.to_string() },
        },
    }
}
