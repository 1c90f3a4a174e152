//! Wavelet's store: SQLite (the embedded default) and PostgreSQL through sqlx, with the
//! migrations in `migrations/`. This is the only crate that names sqlx.
//!
//! Both backends run the same SQL (sqlx binds `$1` on both) except where they differ on
//! purpose, each place saying why: the chain head's lock ([`Store::begin`]), row locks
//! when claiming messages and timers (`FOR UPDATE`, `SKIP LOCKED`), batch reads
//! ([`Tx::prefetch`]) and batch writes (the commit's inserts, `tx/commit.rs`). Everything
//! one step of Wavelet writes goes through one [`Tx`], and ledger appends lock the chain
//! head row inside it.
//!
//! | module | what it holds |
//! | --- | --- |
//! | `error` | [`Error`], and whether trying again may help |
//! | `rows` | the rows as Wavelet reads them, and their mappers |
//! | `schema` | opening, migrating, grants, schedules kept in line with the configuration |
//! | `tx` | the write-behind transaction, its reads and writes, the pipelined commit |
//! | `outbox` | delivery's side of the outbox: claims, the hand-off from commits, retries, parking |
//! | `lease` | one process at a time holds a chat connection |
//! | `ledger`, `reads` | reads outside a transaction; lawful erasure; verifying the whole chain |
//! | `testing` | hooks for tests and benchmarks (feature `testing`) |

/// Runs the same expression against whichever backend a transaction is on (beginning a
/// transaction carried on from another first, see [`Tx::commit_and_continue`]).
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx.conn().await? {
            $crate::ConnRef::Sqlite($c) => $body,
            $crate::ConnRef::Postgres($c) => $body,
        }
    };
}

/// Runs the same expression against whichever pool the store has.
macro_rules! on_pool {
    ($store:expr, $c:ident => $body:expr) => {
        match &$store.pool {
            $crate::Pool::Sqlite($c) => $body,
            $crate::Pool::Postgres($c) => $body,
        }
    };
}

/// Ledger entries with their content (see `rows::EntryTuple`), then `$rest` (a WHERE and
/// ORDER BY).
macro_rules! entries_sql {
    ($rest:literal) => {
        concat!(
            "SELECT l.seq, l.at, l.kind, l.case_id, l.run_id, l.actor, l.script_hash, l.content_hash, l.prev_hash, \
             l.hash, c.content, c.erased_at FROM ledger l LEFT JOIN ledger_content c ON c.seq = l.seq ",
            $rest
        )
    };
}

mod direct;
mod error;
mod lease;
mod ledger;
mod outbox;
mod reads;
mod rows;
mod schema;
#[cfg(feature = "testing")]
mod testing;
mod tx;

pub use error::{Error, Result};
pub use lease::Lease;
pub use outbox::{CLAIM_BATCH, Claimer, HANDOVER_WAIT};
pub use rows::{
    CaseRow, ClaimedMessage, Due, DueSchedule, DueTimer, EscalationRow, EscalationStatus, PendingMessage, RunRow,
    RunStatus,
};
pub use schema::{SQLITE_LOG_LIMIT, redact};
pub use tx::{MAX_CARRIED, Tx};

use outbox::Handoff;
use sqlx::{PgPool, SqlitePool};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tx::TxConn;
use wavelet_core::ledger::Head;

/// Entries with `seq > $1`, in order, at most `$2`.
const ENTRY_PAGE_SQL: &str = entries_sql!("WHERE l.seq > $1 ORDER BY l.seq LIMIT $2");

#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: Pool,
    pub(crate) commits: Arc<AtomicU64>,
    /// Microseconds spent in [`Tx::commit`] (writing the buffered rows and committing).
    pub(crate) commit_micros: Arc<AtomicU64>,
    /// Transactions carried on from another ([`Tx::commit_and_continue`]) that took the
    /// lock with nothing committed in between.
    pub(crate) carried: Arc<AtomicU64>,
    /// Transactions carried on from another that were refused ([`Error::Superseded`]).
    pub(crate) superseded: Arc<AtomicU64>,
    /// Transactions whose commit failed (their work was rolled back).
    pub(crate) failed_commits: Arc<AtomicU64>,
    /// How much a carried-on transaction holds in view before it is narrowed
    /// ([`MAX_CARRIED`] unless set).
    pub(crate) max_carried: Arc<AtomicUsize>,
    /// Script versions known to be saved, so a run start does not write the source again.
    pub(crate) saved_scripts: Arc<Mutex<HashSet<String>>>,
    /// Held by the one delivery pass this process runs at a time.
    pub(crate) delivery: Arc<tokio::sync::Mutex<()>>,
    /// Messages claimed by the commit that queued them, for this process's delivery pass.
    pub(crate) handoff: Arc<Handoff>,
}

#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A transaction's connection, whichever backend it is on.
pub(crate) enum ConnRef<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

impl Store {
    /// A store on `pool`, its counters at zero.
    fn on(pool: Pool) -> Store {
        Store {
            pool,
            commits: Arc::default(),
            commit_micros: Arc::default(),
            carried: Arc::default(),
            superseded: Arc::default(),
            failed_commits: Arc::default(),
            max_carried: Arc::new(AtomicUsize::new(MAX_CARRIED)),
            saved_scripts: Arc::default(),
            delivery: Arc::default(),
            handoff: Arc::default(),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }

    /// Begins a write transaction and locks the ledger's chain head.
    pub async fn begin(&self) -> Result<Tx> {
        let (conn, head, commits) = self.lock_head().await?;
        Ok(Tx::new(self.clone(), conn, head, commits))
    }

    /// Begins a transaction and locks the chain head: the head and its commit count.
    async fn lock_head(&self) -> Result<(TxConn, Head, i64)> {
        const SQL: &str = "SELECT seq, hash, commits FROM ledger_head WHERE id = 1";
        const SQL_LOCKING: &str = "SELECT seq, hash, commits FROM ledger_head WHERE id = 1 FOR UPDATE";
        let (conn, row): (TxConn, (i64, String, i64)) = match &self.pool {
            // IMMEDIATE takes the write lock now, so two writers never deadlock upgrading.
            Pool::Sqlite(p) => {
                let mut t = p.begin_with("BEGIN IMMEDIATE").await?;
                let row = sqlx::query_as(SQL).fetch_one(&mut *t).await?;
                (TxConn::Sqlite(t), row)
            }
            Pool::Postgres(p) => {
                let mut t = p.begin().await?;
                let row = sqlx::query_as(SQL_LOCKING).fetch_one(&mut *t).await?;
                (TxConn::Postgres(t), row)
            }
        };
        Ok((conn, Head { seq: row.0, hash: row.1 }, row.2))
    }

    /// Sets how much a transaction carried on from another may hold in view before it is
    /// narrowed to what the next batch needs ([`Tx::commit_and_continue`]); the default is
    /// [`MAX_CARRIED`]. Less saves memory, more saves reading runs again.
    pub fn set_max_carried(&self, runs_and_events: usize) {
        self.max_carried.store(runs_and_events, Ordering::Relaxed);
    }

    /// Transactions committed through this handle (for benchmarks and metrics).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Transactions carried on from another that went on to take the lock (for the
    /// benchmark: how many of its commits overlapped the handling of the next batch).
    pub fn carried_on(&self) -> u64 {
        self.carried.load(Ordering::Relaxed)
    }

    /// Transactions carried on from another that were refused because something else
    /// committed in between, or the other failed (their work was done again).
    pub fn superseded(&self) -> u64 {
        self.superseded.load(Ordering::Relaxed)
    }

    /// Transactions whose commit failed through this handle (for tests and metrics).
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }

    /// Time spent in commits so far (writing the buffered rows and committing), for the
    /// benchmark's split of a step's cost.
    pub fn commit_time(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.commit_micros.load(Ordering::Relaxed))
    }
}
