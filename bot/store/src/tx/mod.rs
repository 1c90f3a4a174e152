//! The write-behind transaction: everything one step (or one batch of steps) of Wavelet
//! writes goes through one [`Tx`], which buffers its writes, lets its reads see them, and
//! writes them all at commit (`commit.rs`). Reads and writes of runs are in `runs.rs`;
//! of cases, escalations and acknowledgement waits in `cases.rs`; of the outbox, timers
//! and schedules in `due.rs`; of the ledger in `ledger.rs`.

mod cases;
mod commit;
mod due;
mod ledger;
mod runs;

pub use commit::MAX_CARRIED;

use crate::rows::{CaseRow, EscalationRow, RunRow};
use crate::{ConnRef, Error, Result, Store};
use sqlx::{Postgres, Sqlite, Transaction};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wavelet_core::ledger::{Head, Link};
use wavelet_core::{Millis, OutboundMessage};

/// An open write transaction. Dropping it without [`Tx::commit`] rolls everything back.
///
/// Writes are buffered and go to the database at [`Tx::commit`] in multi-row statements
/// (write-behind); reads through the `Tx` see them. That is sound because a `Tx` holds
/// the store's write lock for its whole life (SQLite's `BEGIN IMMEDIATE`; the chain head
/// row on PostgreSQL), so nothing else changes these rows meanwhile. A `Tx` carried on from
/// another ([`Tx::commit_and_continue`]) holds no lock until it first needs the database;
/// what it holds in view until then is what the other left, and it checks, when it takes
/// the lock, that nothing else committed in between.
pub struct Tx {
    conn: TxConn,
    head: Head,
    /// The chain's head when this transaction began (after the one it carries on from).
    begun: Head,
    /// The chain-head row's commit count when this transaction took the lock; its commit
    /// writes one more.
    commits: i64,
    /// Told whether this transaction committed, when one carries on from it.
    done: Option<tokio::sync::watch::Sender<Option<bool>>>,
    /// Chained entries and their content's canonical encoding, written at commit.
    ledger: Vec<(Link, String)>,
    /// Counters (`run`, `case`, `wait`): read once, written back at commit when changed.
    counters: HashMap<String, (i64, bool)>,
    /// Runs read or written in this transaction: the newest state of each. Shared, not
    /// copied, with a transaction carried on from this one (see [`Tx::commit_and_continue`]).
    runs: HashMap<String, Arc<RunRow>>,
    /// Run ids by the person they wait on, for every run put in `runs` with a wait: a
    /// superset (a run's wait may have moved on since), checked against the run itself.
    waits_by_person: HashMap<String, Vec<String>>,
    /// Runs to write at commit, in the order first written, and the same as a set.
    dirty_runs: Vec<String>,
    dirty_set: HashSet<String>,
    /// (person, room) pairs whose waiting runs have been read into `runs`.
    waits_loaded: HashSet<(String, String)>,
    /// People all of whose waiting runs have been read into `runs`.
    persons_loaded: HashSet<String>,
    /// What the last [`Tx::prefetch`] was for.
    prefetched: Option<Prefetched>,
    /// Inbound events known to be recorded before this transaction, from a prefetch.
    inbox_known: Option<HashSet<(String, String)>>,
    inbox_prefetched: HashSet<(String, String)>,
    inbox: Vec<(String, String, Millis)>,
    inbox_seen: HashSet<(String, String)>,
    outbox: Vec<Queued>,
    outbox_keys: HashSet<String>,
    cases: Vec<CaseRow>,
    /// Where each case of `cases` is in it, by id.
    case_at: HashMap<String, usize>,
    /// Escalations started in this transaction, as they are now; written at commit.
    escalations: Vec<EscalationRow>,
    timers: Vec<(String, i64, Millis)>,
    scripts: Vec<(String, String, String, Millis)>,
    store: Store,
}

/// Notes in `index` (run ids by the person they wait on) that `r` waits on its person.
fn index_wait(index: &mut HashMap<String, Vec<String>>, r: &RunRow) {
    if let Some(p) = &r.wait_person {
        let ids = index.entry(p.clone()).or_default();
        if !ids.contains(&r.id) {
            ids.push(r.id.clone());
        }
    }
}

/// The inbound events (platform, event id) and people a prefetch read for.
struct Prefetched {
    events: HashSet<(String, String)>,
    people: HashSet<String>,
}

/// A message queued in a transaction, written to the outbox at commit.
struct Queued {
    message: OutboundMessage,
    run_id: Option<String>,
    /// The case a share discloses about: its delivery is recorded in the ledger.
    share_case: Option<String>,
    at: Millis,
}

pub(crate) enum TxConn {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
    /// Carried on from a transaction still committing: begun when first needed.
    Pending(Pending),
}

/// What a transaction carried on from another waits for before it begins.
pub(crate) struct Pending {
    /// Whether the other committed; `None` while it is committing.
    done: tokio::sync::watch::Receiver<Option<bool>>,
    /// The chain head the other leaves: what the lock must show, with the commit count
    /// the carried-on transaction started from.
    head: Head,
}

/// Begins the transaction a carried-on one waits for: once the one it carries on from has
/// committed, and only if the chain head and commit count are as that one left them
/// (`commits`: the count the carried-on transaction started from). `None` if not: what it
/// holds in view may be out of date.
async fn take_over(store: &Store, p: &mut Pending, commits: i64) -> Result<Option<TxConn>> {
    let committed = match p.done.wait_for(Option::is_some).await {
        Ok(outcome) => *outcome == Some(true),
        Err(_) => false,
    };
    if !committed {
        return Ok(None);
    }
    let (conn, head, now) = store.lock_head().await?;
    // Dropping the connection rolls its transaction back.
    Ok((head == p.head && now == commits).then_some(conn))
}

impl Tx {
    pub(crate) fn new(store: Store, conn: TxConn, head: Head, commits: i64) -> Tx {
        Tx {
            conn,
            begun: head.clone(),
            head,
            commits,
            done: None,
            ledger: Vec::new(),
            counters: HashMap::new(),
            runs: HashMap::new(),
            waits_by_person: HashMap::new(),
            dirty_runs: Vec::new(),
            dirty_set: HashSet::new(),
            waits_loaded: HashSet::new(),
            persons_loaded: HashSet::new(),
            prefetched: None,
            inbox_known: None,
            inbox_prefetched: HashSet::new(),
            inbox: Vec::new(),
            inbox_seen: HashSet::new(),
            outbox: Vec::new(),
            outbox_keys: HashSet::new(),
            cases: Vec::new(),
            case_at: HashMap::new(),
            escalations: Vec::new(),
            timers: Vec::new(),
            scripts: Vec::new(),
            store,
        }
    }

    /// This transaction's connection. A transaction carried on from another begins here,
    /// the first time it needs the database: once the other has committed, and only if
    /// nothing else committed in between (else [`Error::Superseded`]).
    pub(crate) async fn conn(&mut self) -> Result<ConnRef<'_>> {
        if let TxConn::Pending(p) = &mut self.conn {
            let Some(conn) = take_over(&self.store, p, self.commits).await? else {
                self.store.superseded.fetch_add(1, Ordering::Relaxed);
                return Err(Error::Superseded);
            };
            self.conn = conn;
            self.store.carried.fetch_add(1, Ordering::Relaxed);
        }
        match &mut self.conn {
            TxConn::Sqlite(t) => Ok(ConnRef::Sqlite(t)),
            TxConn::Postgres(t) => Ok(ConnRef::Postgres(t)),
            TxConn::Pending(_) => Err(Error::Superseded),
        }
    }

    /// The chain's head when this transaction began: where the committed chain ends.
    pub fn begun_at(&self) -> &Head {
        &self.begun
    }

    /// The chain's head as this transaction sees it: the last entry committed before it
    /// began, or the last it appended.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// How much this transaction holds in view: runs, and inbound events seen. What a
    /// transaction carried on from it starts with, unless that is narrowed (see
    /// [`Tx::commit_and_continue`]); the prefetch's sets and the queued keys grow with it.
    pub fn view_size(&self) -> usize {
        self.runs.len() + self.inbox_seen.len()
    }

    /// Records an inbound event. `false` if it was recorded before (a redelivery). If
    /// another process records the same event meanwhile, this transaction's commit fails
    /// on the inbox's key, and the retry sees the event as recorded.
    pub async fn record_inbox(&mut self, platform: &str, event_id: &str, at: Millis) -> Result<bool> {
        let key = (platform.to_string(), event_id.to_string());
        if self.inbox_seen.contains(&key) {
            return Ok(false);
        }
        let known = match &self.inbox_known {
            Some(prefetched) if self.inbox_prefetched.contains(&key) => prefetched.contains(&key),
            _ => {
                let known: Option<i64> = on_tx!(self, c => sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM inbox WHERE platform = $1 AND event_id = $2")
                    .bind(platform).bind(event_id).fetch_optional(c).await)?;
                known.is_some()
            }
        };
        self.inbox_seen.insert(key.clone());
        if known {
            return Ok(false);
        }
        self.inbox.push((key.0, key.1, at));
        Ok(true)
    }

    /// Takes the next number of a counter (`run`, `case`, `wait`).
    pub async fn next_number(&mut self, counter: &str) -> Result<i64> {
        let v = self.counter(counter).await? + 1;
        self.counters.insert(counter.to_string(), (v, true));
        Ok(v)
    }

    /// A counter's value (`run`, `case`, `wait`, `escalation`).
    pub async fn counter(&mut self, name: &str) -> Result<i64> {
        if let Some((v, _)) = self.counters.get(name) {
            return Ok(*v);
        }
        let v: i64 = on_tx!(self, c => sqlx::query_scalar("SELECT value FROM counters WHERE name = $1").bind(name).fetch_one(c).await)?;
        self.counters.insert(name.to_string(), (v, false));
        Ok(v)
    }

    /// Sets a counter read before with [`Tx::counter`]; written at commit if it changed.
    pub fn set_counter(&mut self, name: &str, v: i64) {
        if let Some((old, dirty)) = self.counters.get(name).copied() {
            self.counters.insert(name.into(), (v, dirty || v != old));
        }
    }

    /// Keeps a script version (first write wins).
    pub async fn save_script(&mut self, hash: &str, name: &str, source: &str, at: Millis) -> Result<()> {
        let known = self.store.saved_scripts.lock().map(|s| s.contains(hash)).unwrap_or(false);
        if !known && !self.scripts.iter().any(|s| s.0 == hash) {
            self.scripts.push((hash.to_string(), name.to_string(), source.to_string(), at));
        }
        Ok(())
    }

    pub async fn script_source(&mut self, hash: &str) -> Result<Option<(String, String)>> {
        if let Some((_, name, source, _)) = self.scripts.iter().find(|s| s.0 == hash) {
            return Ok(Some((name.clone(), source.clone())));
        }
        Ok(
            on_tx!(self, c => sqlx::query_as("SELECT name, source FROM scripts WHERE hash = $1").bind(hash).fetch_optional(c).await)?,
        )
    }
}
