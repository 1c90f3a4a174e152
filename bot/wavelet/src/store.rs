//! The store: SQLite (the embedded default) and PostgreSQL through sqlx, with the
//! migrations in `migrations/`. Both backends run the same SQL (sqlx binds `$1` on
//! both) except where they differ on purpose, each place saying why: the chain head's
//! lock ([`Store::begin`]), row locks when claiming messages and timers (`FOR UPDATE`,
//! `SKIP LOCKED`), batch reads ([`Tx::prefetch`]) and batch writes (`Tx::insert_all`).
//! Everything one step of Wavelet writes goes through one [`Tx`], and ledger appends
//! lock the chain head row inside it.

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wavelet_core::engine::{History, Wait};
use wavelet_core::escalation::Stage;
use wavelet_core::ledger::{Draft, Head, Link, StoredEntry};
use wavelet_core::{Millis, OutboundMessage, Platform, RoomRef};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is in the message, not a `source`, so chains print it once.
    #[error("the database could not be reached or refused a statement: {0}")]
    Database(sqlx::Error),
    #[error("the database schema could not be brought up to date: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("`{0}` is not a store URL: use sqlite://PATH or postgres://HOST/DATABASE")]
    BadUrl(String),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// A fault in Wavelet itself; the transaction it happened in does not commit.
    #[error("a fault in Wavelet (please report it): {0}")]
    Internal(String),
    /// Refused for a reason a person can act on.
    #[error("{0}")]
    Refused(String),
    /// Held back because the store was unavailable for an event before it.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A transaction carried on from another ([`Tx::commit_and_continue`]) found, when it
    /// took the lock, that the other did not commit or that something else committed in
    /// between: what it read may be out of date, so its work must be done again.
    #[error("the store changed under a batch handled ahead of its turn; it must be handled again")]
    Superseded,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Migrate(e)
    }
}

impl Error {
    /// Whether retrying later may succeed (the database went away), as opposed to a
    /// statement the database will always refuse.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                ) || e.as_database_error().is_some_and(|d| {
                    // SQLITE_BUSY / locked; PostgreSQL serialization, deadlock, shutdown, connection.
                    matches!(d.code().as_deref(), Some("5" | "6" | "40001" | "40P01" | "57P01" | "57P02" | "57P03"))
                        || d.code().is_some_and(|c| c.starts_with("08"))
                })
            }
            Error::Unavailable(_) => true,
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    commits: Arc<AtomicU64>,
    /// Microseconds spent in [`Tx::commit`] (writing the buffered rows and committing).
    commit_micros: Arc<AtomicU64>,
    /// Transactions carried on from another ([`Tx::commit_and_continue`]) that took the
    /// lock with nothing committed in between.
    carried: Arc<AtomicU64>,
    /// Transactions carried on from another that were refused ([`Error::Superseded`]).
    superseded: Arc<AtomicU64>,
    /// Transactions whose commit failed (their work was rolled back).
    failed_commits: Arc<AtomicU64>,
    /// How much a carried-on transaction holds in view before it is narrowed
    /// ([`MAX_CARRIED`] unless set).
    max_carried: Arc<AtomicUsize>,
    /// Script versions known to be saved, so a run start does not write the source again.
    saved_scripts: Arc<Mutex<HashSet<String>>>,
    /// Held by the one delivery pass this process runs at a time.
    pub(crate) delivery: Arc<tokio::sync::Mutex<()>>,
    /// Messages claimed by the commit that queued them, for this process's delivery pass.
    handoff: Arc<Handoff>,
}

/// Claiming at commit. While this process holds a platform's lease, its delivery loop
/// names a [`Claimer`]; a transaction that queues messages for one of those platforms then
/// also claims, in its own commit, the due messages for them that nobody holds a claim on
/// (its own and older ones, oldest first, up to [`CLAIM_BATCH`]; never one this process
/// claimed before, even if that claim has run out), and hands them to the delivery pass,
/// which sends them without a transaction of its own first. A claim handed over is like any
/// other: if this process dies before sending, it runs out (or the next holder of the lease
/// frees it) and the message is sent then.
///
/// A room's messages go out oldest first, so a pass must not send a message while a commit
/// that claimed an older one in the same room has yet to hand it over. Commits run one at
/// a time (each transaction locks the ledger head when it begins), and each claiming
/// commit holds a numbered ticket from before its claim until it has handed over (or
/// failed). A pass waits until every ticket issued before it looked is settled, and then
/// takes only what commits older than any still claiming handed over
/// ([`Store::take_handed`]).
#[derive(Default)]
struct Handoff {
    claimer: Mutex<Option<Claimer>>,
    state: Mutex<Handed>,
    /// Bumped whenever a ticket is settled.
    settled: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Handed {
    /// Messages handed over, with the number of the ticket they came with.
    ready: Vec<(u64, ClaimedMessage)>,
    /// The next ticket's number.
    issued: u64,
    /// Tickets of commits that are claiming and have not handed over yet.
    open: std::collections::BTreeSet<u64>,
}

impl Handoff {
    fn state(&self) -> std::sync::MutexGuard<'_, Handed> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ticket(self: &Arc<Self>) -> Ticket {
        let mut s = self.state();
        let number = s.issued;
        s.issued += 1;
        s.open.insert(number);
        Ticket { handoff: self.clone(), number }
    }

    /// Waits until every ticket issued so far is settled, or `at_most` has passed, then
    /// takes what commits older than any still claiming have handed over, oldest first and
    /// each message once. What a newer commit handed over stays for a later take.
    async fn take(&self, at_most: Duration) -> Vec<ClaimedMessage> {
        let mut settled = self.settled.subscribe();
        let before = self.state().issued;
        let deadline = tokio::time::Instant::now() + at_most;
        let mut waited_enough = false;
        loop {
            {
                let mut s = self.state();
                let oldest_open = s.open.first().copied();
                if waited_enough || oldest_open.is_none_or(|oldest| oldest >= before) {
                    let (mut ready, later): (Vec<_>, Vec<_>) =
                        std::mem::take(&mut s.ready).into_iter().partition(|(t, _)| oldest_open.is_none_or(|o| *t < o));
                    s.ready = later;
                    ready.sort_by_key(|(_, c)| c.id);
                    ready.dedup_by_key(|(_, c)| c.id);
                    return ready.into_iter().map(|(_, c)| c).collect();
                }
            }
            // A ticket is settled even when its commit fails (the ticket is dropped). A
            // commit that hangs holds back only what was claimed after it.
            match tokio::time::timeout_at(deadline, settled.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => waited_enough = true,
            }
        }
    }
}

/// A claiming commit's place in line: settled when it hands its messages over, or when
/// it is dropped (the commit failed, and hands nothing).
struct Ticket {
    handoff: Arc<Handoff>,
    number: u64,
}

impl Ticket {
    fn hand_over(self, messages: Vec<ClaimedMessage>) {
        self.handoff.state().ready.extend(messages.into_iter().map(|m| (self.number, m)));
        // Dropped here: settled after its messages are in.
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.handoff.state().open.remove(&self.number);
        self.handoff.settled.send_modify(|n| *n += 1);
    }
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        f.debug_struct("Handoff").field("ready", &s.ready.len()).field("open", &s.open.len()).finish_non_exhaustive()
    }
}

/// Who claims at commit, for which platforms, and for how long.
#[derive(Clone)]
pub struct Claimer {
    pub owner: String,
    pub platforms: Vec<wavelet_core::Platform>,
    pub clock: Arc<dyn crate::runtime::Clock>,
    pub lease: Duration,
}

/// How long a delivery pass waits for commits that are claiming to hand over what they
/// claimed; past it, it takes what older commits handed over and leaves the rest.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(5);

/// How many messages one claim takes, at commit or in a delivery pass.
pub const CLAIM_BATCH: i64 = 200;

/// Who runs a claim, which decides what it may take.
#[derive(Clone, Copy)]
enum ClaimBy {
    /// A delivery pass: every due message nobody holds a live claim on, its own lapsed
    /// claims included (a pass runs when the previous one is over, so nothing it claimed
    /// before is still being sent). On PostgreSQL it waits for rows a commit is claiming
    /// rather than skip them, so it takes the oldest due messages and no commit takes an
    /// older one from under it.
    Pass,
    /// A commit: due messages nobody has claimed, and lapsed claims of other processes,
    /// never this process's own (a pass may still be sending them). On PostgreSQL rows
    /// being claimed elsewhere are skipped, so a commit never waits on a pass.
    Commit,
}

/// The statement that claims due messages for `platforms` (binds: owner, claimed until,
/// now, limit), returning them.
fn claim_sql(platforms: &[wavelet_core::Platform], postgres: bool, by: ClaimBy) -> String {
    let lock = match (postgres, by) {
        (false, _) => "",
        (true, ClaimBy::Pass) => " FOR UPDATE",
        (true, ClaimBy::Commit) => " FOR UPDATE SKIP LOCKED",
    };
    let free = match by {
        ClaimBy::Pass => "(claimed_until IS NULL OR claimed_until < $3)",
        ClaimBy::Commit => "(claimed_until IS NULL OR (claimed_until < $3 AND claimed_by <> $1))",
    };
    format!(
        "UPDATE outbox SET claimed_by = $1, claimed_until = $2 WHERE id IN (\
         SELECT id FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $3 \
         AND {free} AND ({}) ORDER BY id LIMIT $4{lock}) \
         RETURNING id, idempotency_key, room, person, body, attempts, run_id, share_case",
        rooms_of(platforms)
    )
}

/// The outbox rows of `platforms`' rooms, as a condition (platform names are fixed words).
fn rooms_of(platforms: &[wavelet_core::Platform]) -> String {
    let rooms: Vec<String> =
        platforms.iter().flat_map(|p| [format!("room LIKE '{p}:%'"), format!("room LIKE 'dm:{p}:%'")]).collect();
    rooms.join(" OR ")
}

type ClaimTuple = (i64, String, String, Option<String>, String, i32, Option<String>, Option<String>);

/// Claimed rows as messages, oldest first.
fn claimed(mut rows: Vec<ClaimTuple>) -> Result<Vec<ClaimedMessage>> {
    rows.sort_by_key(|r| r.0);
    rows.into_iter()
        .map(|(id, key, room, person, body, attempts, run_id, share_case)| {
            Ok(ClaimedMessage { id, attempts, run_id, share_case, message: outbox_message(key, &room, person, &body)? })
        })
        .collect()
}

/// A lease on something only one process may do at a time, such as holding a chat
/// connection. On PostgreSQL it is a session advisory lock on a connection of its own: when
/// the holder dies, its connection ends and the lock is free for another process at once.
/// SQLite stores serve one process, which always holds every lease.
pub struct Lease {
    name: String,
    conn: Option<sqlx::PgConnection>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("name", &self.name).finish()
    }
}

impl Lease {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the lease is still held (its connection is alive).
    pub async fn check(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(c) => sqlx::query("SELECT 1").execute(&mut *c).await.is_ok(),
        }
    }
}

/// The advisory lock key for a lease name: stable across processes and versions.
fn lease_key(name: &str) -> i64 {
    let hex = wavelet_core::engine::source_hash(&format!("wavelet:lease:{name}"));
    u64::from_str_radix(&hex[..16], 16).unwrap_or(0) as i64
}

#[derive(Clone, Debug)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

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

/// How much a transaction carried on from another holds in view (runs and inbound
/// events) before it is narrowed to what it needs (see [`Tx::commit_and_continue`]).
/// Bounds the memory a long pipeline takes; carrying more saves reading runs again.
pub const MAX_CARRIED: usize = 1_024;

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

/// Rows per `INSERT … VALUES` statement on SQLite: at most 16 columns × 1,000 binds,
/// under its limit of 32,766.
const ROWS_PER_STATEMENT: usize = 1_000;

/// The page size of a SQLite file Wavelet creates. A group commit changes rows all over a
/// few tables (each run, and the indexes keyed by run, event and message), and writes every
/// page it changed to the write-ahead log once per commit: with larger pages it changes
/// fewer of them, and makes fewer writes. 16 KiB measured +3.5 to +9 % steps/s over 4 KiB
/// (32 KiB the same as 16, 64 KiB no better than 4; BENCHMARKS.md, 2026-12-06, third
/// section). A file made before keeps its page size (see README.md to change it).
const SQLITE_PAGE_SIZE: u32 = 16_384;

/// The size, in bytes, the SQLite write-ahead log is cut back to after it has grown past it
/// (`journal_size_limit`).
pub const SQLITE_LOG_LIMIT: u64 = 64 * 1024 * 1024;

/// A value of a row written at commit (see [`Tx::insert_all`]).
enum Cell {
    Text(Option<String>),
    Int(Option<i64>),
}

impl From<String> for Cell {
    fn from(v: String) -> Cell {
        Cell::Text(Some(v))
    }
}

impl From<Option<String>> for Cell {
    fn from(v: Option<String>) -> Cell {
        Cell::Text(v)
    }
}

impl From<i64> for Cell {
    fn from(v: i64) -> Cell {
        Cell::Int(Some(v))
    }
}

impl From<Option<i64>> for Cell {
    fn from(v: Option<i64>) -> Cell {
        Cell::Int(v)
    }
}

/// One table's rows, written at commit by [`Tx::insert_all`]: made only when their turn
/// comes, so that on SQLite they are made while the table before is written.
struct Insert {
    table: &'static str,
    columns: &'static str,
    /// An `ON CONFLICT` clause, or nothing.
    tail: &'static str,
    /// The rows: a value for each of `columns`, in order, in the order to insert them.
    rows: Box<dyn FnOnce() -> Vec<Vec<Cell>> + Send>,
}

impl Insert {
    fn new(
        table: &'static str,
        columns: &'static str,
        tail: &'static str,
        rows: impl FnOnce() -> Vec<Vec<Cell>> + Send + 'static,
    ) -> Insert {
        Insert { table, columns, tail, rows: Box::new(rows) }
    }
}

/// SQLite's statements for one table's rows: `VALUES` lists of at most
/// [`ROWS_PER_STATEMENT`] rows, each with its arguments.
fn sqlite_statements(insert: Insert) -> Result<Vec<(String, sqlx::sqlite::SqliteArguments)>> {
    use sqlx::Arguments;
    let Insert { table, columns, tail, rows } = insert;
    let mut rows = rows().into_iter().peekable();
    let mut statements = Vec::new();
    while rows.peek().is_some() {
        let mut sql = format!("INSERT INTO {table} ({columns}) VALUES ");
        let mut args = sqlx::sqlite::SqliteArguments::default();
        for (i, row) in rows.by_ref().take(ROWS_PER_STATEMENT).enumerate() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            for (j, cell) in row.into_iter().enumerate() {
                sql.push_str(if j == 0 { "?" } else { ", ?" });
                match cell {
                    Cell::Text(v) => args.add(v),
                    Cell::Int(v) => args.add(v),
                }
                .map_err(|e| Error::Internal(format!("a value for {table} could not be bound: {e}")))?;
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(tail);
        statements.push((sql, args));
    }
    Ok(statements)
}

/// A run's row, in the order of [`RUN_COLUMNS`].
fn run_cells(r: &RunRow) -> Vec<Cell> {
    vec![
        r.id.clone().into(),
        r.workflow.clone().into(),
        r.script_hash.clone().into(),
        r.status.as_str().to_string().into(),
        r.starter.clone().into(),
        r.group_id.clone().into(),
        r.room.to_string().into(),
        json(&r.history).into(),
        r.wait.as_ref().map(json).into(),
        r.wait_person.clone().into(),
        r.wait_room.as_ref().map(|w| w.to_string()).into(),
        r.wait_seq.into(),
        r.error.clone().into(),
        r.created_at.0.into(),
        r.updated_at.0.into(),
        r.wait_since.map(|m| m.0).into(),
    ]
}

/// One column of rows written at commit, as the array PostgreSQL takes it.
enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
}

impl Column {
    /// The columns of `rows`, each typed by its values.
    fn transpose(table: &str, rows: Vec<Vec<Cell>>) -> Result<Vec<Column>> {
        let mut rows = rows.into_iter();
        let Some(first) = rows.next() else { return Ok(Vec::new()) };
        let mut columns: Vec<Column> = first
            .into_iter()
            .map(|cell| match cell {
                Cell::Text(v) => Column::Text(vec![v]),
                Cell::Int(v) => Column::Int(vec![v]),
            })
            .collect();
        for (i, row) in rows.enumerate().map(|(i, row)| (i + 1, row)) {
            if row.len() != columns.len() {
                return Err(Error::Internal(format!(
                    "row {i} for {table} has {} values, not {}",
                    row.len(),
                    columns.len()
                )));
            }
            for (j, (column, cell)) in columns.iter_mut().zip(row).enumerate() {
                match (column, cell) {
                    (Column::Text(c), Cell::Text(v)) => c.push(v),
                    (Column::Int(c), Cell::Int(v)) => c.push(v),
                    // The rows of one table are built by one function: a mismatch is a
                    // fault in Wavelet.
                    _ => {
                        return Err(Error::Internal(format!(
                            "row {i} for {table} differs from the first in column {j}"
                        )));
                    }
                }
            }
        }
        Ok(columns)
    }

    fn sql_type(&self) -> &'static str {
        match self {
            Column::Text(_) => "text",
            Column::Int(_) => "bigint",
        }
    }
}

/// A message queued in a transaction, written to the outbox at commit.
struct Queued {
    message: OutboundMessage,
    run_id: Option<String>,
    /// The case a share discloses about: its delivery is recorded in the ledger.
    share_case: Option<String>,
    at: Millis,
}

enum TxConn {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
    /// Carried on from a transaction still committing: begun when first needed.
    Pending(Pending),
}

/// What a transaction carried on from another waits for before it begins.
struct Pending {
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

/// A transaction's connection, whichever backend it is on.
enum ConnRef<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

/// Runs the same expression against whichever backend a transaction is on (beginning a
/// transaction carried on from another first, see [`Tx::commit_and_continue`]).
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx.conn().await? {
            ConnRef::Sqlite($c) => $body,
            ConnRef::Postgres($c) => $body,
        }
    };
}

/// Ledger entries with their content (see [`EntryTuple`]), then `$rest` (a WHERE and
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
/// Entries with `seq > $1`, in order, at most `$2`.
const ENTRY_PAGE_SQL: &str = entries_sql!("WHERE l.seq > $1 ORDER BY l.seq LIMIT $2");

/// Runs the same expression against whichever pool the store has.
macro_rules! on_pool {
    ($store:expr, $c:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($c) => $body,
            Pool::Postgres($c) => $body,
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Waiting,
    Finished,
    Failed,
    Diverged,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Waiting => "waiting",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Diverged => "diverged",
            RunStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<RunStatus> {
        Ok(match s {
            "waiting" => RunStatus::Waiting,
            "finished" => RunStatus::Finished,
            "failed" => RunStatus::Failed,
            "diverged" => RunStatus::Diverged,
            "cancelled" => RunStatus::Cancelled,
            other => return Err(Error::Corrupt(format!("unknown run status {other}"))),
        })
    }
}

/// One run as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub workflow: String,
    pub script_hash: String,
    pub status: RunStatus,
    pub starter: String,
    pub group_id: String,
    /// The room the run was started from.
    pub room: RoomRef,
    pub history: History,
    pub wait: Option<Wait>,
    /// For answer waits: who, where, and the order waits on that pair were made in.
    pub wait_person: Option<String>,
    pub wait_room: Option<RoomRef>,
    pub wait_seq: Option<i64>,
    /// When the current question was put to the person (queued questions: when asked).
    pub wait_since: Option<Millis>,
    pub error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl RunRow {
    /// Stops waiting (answered, cancelled, fired, ended). Returns whom and where the run
    /// was waiting on, so the next queued question there can be asked.
    pub fn clear_wait(&mut self) -> Option<(String, RoomRef)> {
        self.wait = None;
        self.wait_seq = None;
        self.wait_since = None;
        let room = self.wait_room.take();
        self.wait_person.take().zip(room)
    }
}

const RUN_COLUMNS: &str = "id, workflow, script_hash, status, starter, group_id, room, history, wait, wait_person, wait_room, wait_seq, error, created_at, updated_at, wait_since";

type RunTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    i64,
    i64,
    Option<i64>,
);

/// The runs of `rows`, each decoded as it arrives, while the database reads the next.
async fn decode_runs(rows: impl futures_util::Stream<Item = sqlx::Result<RunTuple>>) -> Result<Vec<RunRow>> {
    rows.map_err(Error::from).and_then(|r| async { run_from_tuple(r) }).try_collect().await
}

fn run_from_tuple(r: RunTuple) -> Result<RunRow> {
    Ok(RunRow {
        id: r.0,
        workflow: r.1,
        script_hash: r.2,
        status: RunStatus::parse(&r.3)?,
        starter: r.4,
        group_id: r.5,
        room: parse_room(&r.6)?,
        history: serde_json::from_str(&r.7).map_err(|e| Error::Corrupt(format!("run history: {e}")))?,
        wait: r
            .8
            .map(|w| serde_json::from_str(&w))
            .transpose()
            .map_err(|e| Error::Corrupt(format!("run wait: {e}")))?,
        wait_person: r.9,
        wait_room: r.10.as_deref().map(parse_room).transpose()?,
        wait_seq: r.11,
        error: r.12,
        created_at: Millis(r.13),
        updated_at: Millis(r.14),
        wait_since: r.15.map(Millis),
    })
}

const CASE_SQL: &str =
    "SELECT id, run_id, group_id, subject, category, risk, status, opened_at, closed_at FROM cases WHERE id = $1";
type CaseTuple = (String, String, String, String, String, String, String, i64, Option<i64>);

fn case_from_tuple(r: CaseTuple) -> CaseRow {
    CaseRow {
        id: r.0,
        run_id: r.1,
        group_id: r.2,
        subject: r.3,
        category: r.4,
        risk: r.5,
        status: r.6,
        opened_at: Millis(r.7),
        closed_at: r.8.map(Millis),
    }
}

/// `C-12` → 12, for ordering cases opened in the same millisecond.
fn case_number(id: &str) -> i64 {
    id.trim_start_matches("C-").parse().unwrap_or(i64::MAX)
}

fn escalation_status(s: EscalationStatus) -> &'static str {
    match s {
        EscalationStatus::Active => "active",
        EscalationStatus::Acknowledged => "acknowledged",
        EscalationStatus::Stopped => "stopped",
    }
}

/// An outbox row's message, from its stored columns.
fn outbox_message(key: String, room: &str, person: Option<String>, body: &str) -> Result<OutboundMessage> {
    Ok(OutboundMessage {
        idempotency_key: key,
        room: parse_room(room)?,
        person,
        body: serde_json::from_str(body).map_err(|e| Error::Corrupt(format!("outbox body: {e}")))?,
    })
}

fn parse_room(s: &str) -> Result<RoomRef> {
    RoomRef::parse(s).ok_or_else(|| Error::Corrupt(format!("bad room {s}")))
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// A case as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CaseRow {
    pub id: String,
    pub run_id: String,
    pub group_id: String,
    pub subject: String,
    pub category: String,
    pub risk: String,
    pub status: String,
    pub opened_at: Millis,
    pub closed_at: Option<Millis>,
}

/// An outbox row waiting for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMessage {
    pub id: i64,
    pub message: OutboundMessage,
    pub attempts: i32,
}

/// A timer that is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueTimer {
    pub run_id: String,
    pub step: i64,
    pub due_at: Millis,
}

/// Something due, claimed by one process: a run's timer, an escalation's next stage, or
/// a scheduled workflow.
#[derive(Clone, Debug, PartialEq)]
pub enum Due {
    Timer(DueTimer),
    Escalation(Box<EscalationRow>),
    Schedule(DueSchedule),
}

impl Due {
    pub fn due_at(&self) -> Millis {
        match self {
            Due::Timer(t) => t.due_at,
            Due::Escalation(e) => e.next_at.unwrap_or(Millis(0)),
            Due::Schedule(s) => s.due_at,
        }
    }
}

/// A scheduled workflow that is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueSchedule {
    pub id: String,
    pub cron: String,
    pub workflow: String,
    pub group_id: String,
    pub due_at: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EscalationStatus {
    Active,
    Acknowledged,
    /// Its case was closed first.
    Stopped,
}

/// One escalation as stored: its plan (the policy when it began) and where it has got to.
#[derive(Clone, Debug, PartialEq)]
pub struct EscalationRow {
    pub id: String,
    pub case_id: String,
    pub policy: String,
    pub run_id: String,
    pub group_id: String,
    pub plan: Vec<Stage>,
    /// The stage notified last (index into `plan`).
    pub stage: usize,
    pub status: EscalationStatus,
    /// When the next stage is due; `None` after the final level, or once acknowledged.
    pub next_at: Option<Millis>,
    /// Everyone notified so far: they may acknowledge.
    pub notified: Vec<String>,
    pub started_at: Millis,
    pub acked_by: Option<String>,
    pub acked_at: Option<Millis>,
}

const ESCALATION_COLUMNS: &str =
    "id, case_id, policy, run_id, group_id, plan, stage, status, next_at, notified, started_at, acked_by, acked_at";

type EscalationTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    Option<i64>,
    String,
    i64,
    Option<String>,
    Option<i64>,
);

fn escalation_from_tuple(r: EscalationTuple) -> Result<EscalationRow> {
    Ok(EscalationRow {
        id: r.0,
        case_id: r.1,
        policy: r.2,
        run_id: r.3,
        group_id: r.4,
        plan: serde_json::from_str(&r.5).map_err(|e| Error::Corrupt(format!("escalation plan: {e}")))?,
        stage: usize::try_from(r.6).map_err(|_| Error::Corrupt("escalation stage".into()))?,
        status: match r.7.as_str() {
            "active" => EscalationStatus::Active,
            "acknowledged" => EscalationStatus::Acknowledged,
            "stopped" => EscalationStatus::Stopped,
            other => return Err(Error::Corrupt(format!("unknown escalation status {other}"))),
        },
        next_at: r.8.map(Millis),
        notified: serde_json::from_str(&r.9).map_err(|e| Error::Corrupt(format!("escalation notified: {e}")))?,
        started_at: Millis(r.10),
        acked_by: r.11,
        acked_at: r.12.map(Millis),
    })
}

/// A message claimed for delivery by this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedMessage {
    pub id: i64,
    pub message: OutboundMessage,
    pub attempts: i32,
    pub run_id: Option<String>,
    /// The case, when this is one room's copy of a share.
    pub share_case: Option<String>,
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

    /// Opens (creating a SQLite file if needed) and migrates the store at `url`.
    pub async fn open(url: &str) -> Result<Store> {
        let store = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|_| Error::BadUrl(url.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // A commit is on disk before it returns (the WAL is synced), so what a
                // platform was told is taken survives a power cut as well as a crash.
                // NORMAL would not sync at commit, and a power cut could lose the last
                // commits. Group commit makes the cost small (BENCHMARKS.md).
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
                // 64 MiB of page cache: group commits touch many pages of a few tables.
                .pragma("cache_size", "-65536")
                // After the write-ahead log has grown large (a migration's transaction, or
                // readers holding checkpoints back), the first commit that starts it again
                // once it has been checkpointed cuts it back to this, instead of it keeping
                // its largest size until Wavelet stops. Above what it reaches in normal
                // running: 1,000 pages between automatic checkpoints (16 MiB at 16 KiB
                // pages), plus the last commit's pages.
                .pragma("journal_size_limit", SQLITE_LOG_LIMIT.to_string())
                .page_size(SQLITE_PAGE_SIZE);
            // One connection for an in-memory database (each would be its own database);
            // a few for a file, of which one writes at a time (BEGIN IMMEDIATE).
            let max = if url.contains(":memory:") || url.contains("mode=memory") { 1 } else { 4 };
            let file = opts.get_filename().to_path_buf();
            let pool = SqlitePoolOptions::new().max_connections(max).connect_with(opts).await?;
            sqlx::migrate!("../../migrations/sqlite").run(&pool).await?;
            // What is in it is about children: readable by its owner only.
            #[cfg(unix)]
            for suffix in ["", "-wal", "-shm"] {
                use std::os::unix::fs::PermissionsExt;
                let mut f = file.clone().into_os_string();
                f.push(suffix);
                if std::path::Path::new(&f).exists() {
                    let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600));
                }
            }
            Store::on(Pool::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url).map_err(|_| Error::BadUrl(redact(url)))?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            // Migrating needs the right to change the schema, which an application role
            // should not have (see [`Store::grant`]): skipped when there is nothing to do.
            let migrator = sqlx::migrate!("../../migrations/postgres");
            match pg_schema(&pool, &migrator).await {
                Schema::UpToDate => {}
                // Old and new must not run side by side (README, upgrading).
                Schema::Newer(v) => {
                    return Err(Error::Refused(format!(
                        "the database holds migration {v}, which this Wavelet does not know (a newer Wavelet \
                         migrated it?); run that version, or a later one"
                    )));
                }
                Schema::Other => migrator.run(&pool).await.map_err(|e| match &e {
                    sqlx::migrate::MigrateError::Execute(d) | sqlx::migrate::MigrateError::ExecuteMigration(d, _)
                        if insufficient_privilege(d) =>
                    {
                        Error::Refused(
                            "the database's schema is not (yet) the one this Wavelet needs, and this database role \
                             may not change it: run `wavelet store grant ROLE` once as the database's owner, which \
                             brings the schema up to date (README, \"PostgreSQL roles\")"
                                .into(),
                        )
                    }
                    _ => Error::Migrate(e),
                })?,
            }
            Store::on(Pool::Postgres(pool))
        } else {
            return Err(Error::BadUrl(redact(url)));
        };
        Ok(store)
    }

    /// PostgreSQL: lets `role` run Wavelet on this store without the rights to change what
    /// the ledger holds. Run as the database's owner (who has already migrated it, in
    /// [`Store::open`]). The role may read and write the working tables (runs, outbox,
    /// timers…); on the chain it may only read and append (`ledger`), read, append and
    /// erase content (`ledger_content`: the erasure's three columns only, and the trigger
    /// still allows nothing but an erasure) and move the head (`ledger_head`). It may not
    /// UPDATE, DELETE or TRUNCATE the chain, nor disable its triggers (only an owner can).
    /// Returns the statements run.
    pub async fn grant(&self, role: &str) -> Result<Vec<String>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Err(Error::Refused(
                "grants are for PostgreSQL; a SQLite store is a file, readable and writable by its owner only".into(),
            ));
        };
        if role.is_empty() || !role.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(Error::Refused(format!(
                "`{role}` is not a role name Wavelet grants to; use lowercase letters, digits and `_` (e.g. wavelet_app)"
            )));
        }
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1").bind(role).fetch_optional(pool).await?;
        if exists.is_none() {
            return Err(Error::Refused(format!(
                "there is no database role `{role}`; create it first (CREATE ROLE {role} LOGIN PASSWORD '…')"
            )));
        }
        // Wavelet's tables are where this connection finds its ledger; their owner, and
        // what the role could do beyond any grant.
        type Facts = (String, String, bool, bool, bool, bool, bool, bool);
        let facts: Option<Facts> = sqlx::query_as(
            "SELECT n.nspname::text, pg_get_userbyid(c.relowner)::text, \
                    pg_has_role(current_user, c.relowner, 'USAGE'), $1 = current_user::text, \
                    r.rolsuper, r.rolcreaterole, pg_has_role($1, c.relowner, 'MEMBER'), \
                    has_schema_privilege($1, n.oid, 'CREATE') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, pg_roles r \
             WHERE c.oid = to_regclass('ledger') AND r.rolname = $1",
        )
        .bind(role)
        .fetch_optional(pool)
        .await?;
        let Some((schema, owner, granter_owns, is_owner, superuser, creates_roles, member, creates)) = facts else {
            return Err(Error::Refused(
                "no Wavelet ledger on this connection's search path; connect to Wavelet's database (as its owner) \
                 with the search path it was migrated with"
                    .into(),
            ));
        };
        if !granter_owns {
            return Err(Error::Refused(format!(
                "Wavelet's tables belong to `{owner}`; run `wavelet store grant {role}` connected as `{owner}`"
            )));
        }
        let too_strong = if is_owner {
            Some("it is the role running this command, which owns the tables")
        } else if superuser {
            Some("it is a superuser, which no grant limits")
        } else if member {
            Some("it is a member of the role that owns the tables")
        } else if creates_roles {
            Some("it may create roles, and so make itself a member of the owner's")
        } else if creates {
            Some(
                "it may create tables in the schema (on PostgreSQL 14 and older everyone may: REVOKE CREATE ON SCHEMA public FROM PUBLIC)",
            )
        } else {
            None
        };
        if let Some(why) = too_strong {
            return Err(Error::Refused(format!(
                "`{role}` cannot be held to what the grants allow: {why}; grant to a role of its own (CREATE ROLE \
                 wavelet_app LOGIN PASSWORD '…')"
            )));
        }
        let statements = grant_sql(&format!("\"{role}\""), &format!("\"{}\"", schema.replace('"', "\"\"")));
        let mut tx = pool.begin().await?;
        for sql in &statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut *tx).await.map_err(|e| {
                if insufficient_privilege(&e) {
                    Error::Refused(format!(
                        "this database role may not grant on Wavelet's tables; run `wavelet store grant {role}` as \
                         the role that owns them (the one that created the schema)"
                    ))
                } else {
                    Error::Database(e)
                }
            })?;
        }
        tx.commit().await?;
        Ok(statements)
    }

    /// Brings the schedules table in line with the configuration: new schedules (and ones
    /// whose expression, workflow or group changed) are next due at their first time after
    /// `now`; unchanged ones keep their due time, so a restart neither skips nor repeats
    /// one; schedules no longer configured are removed.
    pub async fn sync_schedules(&self, schedules: &[wavelet_core::config::Schedule], now: Millis) -> Result<()> {
        let ids: Vec<String> = schedules.iter().map(|s| s.id.clone()).collect();
        let existing: Vec<String> =
            on_pool!(self, p => sqlx::query_scalar("SELECT id FROM schedules").fetch_all(p).await)?;
        for gone in existing.iter().filter(|id| !ids.contains(id)) {
            on_pool!(self, p => sqlx::query("DELETE FROM schedules WHERE id = $1").bind(gone).execute(p).await.map(|r| r.rows_affected()))?;
        }
        for s in schedules {
            let next = s.cron.next_after(now).map(|m| m.0);
            on_pool!(self, p => sqlx::query(
                "INSERT INTO schedules (id, cron, workflow, group_id, next_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET cron = excluded.cron, workflow = excluded.workflow, \
                 group_id = excluded.group_id, next_at = excluded.next_at \
                 WHERE schedules.cron <> excluded.cron OR schedules.workflow <> excluded.workflow \
                 OR schedules.group_id <> excluded.group_id")
                .bind(&s.id).bind(s.cron.to_string()).bind(&s.workflow).bind(&s.group).bind(next)
                .execute(p).await.map(|r| r.rows_affected()))?;
        }
        Ok(())
    }

    /// Takes the lease `name` if no other process holds it.
    pub async fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(Some(Lease { name: name.to_string(), conn: None }));
        };
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(lease_key(name)).fetch_one(&mut conn).await?;
        if got {
            Ok(Some(Lease { name: name.to_string(), conn: Some(conn) }))
        } else {
            let _ = conn.close().await;
            Ok(None)
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

    /// Creates the scratch table [`Store::bare_insert_commit`] writes to.
    pub async fn bare_insert_setup(&self) -> Result<()> {
        on_pool!(self, p => sqlx::query("CREATE TABLE IF NOT EXISTS bench_floor (k BIGINT NOT NULL, v TEXT NOT NULL)").execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The underlying SQLite pool, for tests that must reach past the store (tampering).
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.pool {
            Pool::Sqlite(p) => Some(p),
            Pool::Postgres(_) => None,
        }
    }

    /// The underlying PostgreSQL pool, for tests that must reach past the store.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(p) => Some(p),
            Pool::Sqlite(_) => None,
        }
    }

    /// The storage floor for benchmarks: one transaction of three small inserts into a
    /// scratch table, committed.
    pub async fn bare_insert_commit(&self, i: i64) -> Result<()> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for j in 0..3 {
                sqlx::query("INSERT INTO bench_floor (k, v) VALUES ($1, $2)").bind(i * 3 + j).bind("floor").execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Lawfully erases an entry's content (retention, a court order): the content goes,
    /// its hash stays, and a chained `content.erased` entry records who, when and why.
    /// `false` if there is no such entry or it is erased already.
    pub async fn erase(&self, seq: i64, reason: &str, actor: &str, at: Millis) -> Result<bool> {
        let mut tx = self.begin().await?;
        // The record of an erasure is never itself erased: it is what makes the gap lawful.
        let kind: Option<String> = on_tx!(tx, c => sqlx::query_scalar("SELECT kind FROM ledger WHERE seq = $1").bind(seq).fetch_optional(c).await)?;
        match kind.as_deref() {
            None => return Ok(false),
            Some(k) if k == wavelet_core::ledger::EntryKind::ContentErased.as_str() => {
                return Err(Error::Refused("the record of an erasure cannot itself be erased".into()));
            }
            Some(_) => {}
        }
        let n = on_tx!(tx, c => sqlx::query("UPDATE ledger_content SET content = NULL, erased_at = $1, erasure_reason = $2 WHERE seq = $3 AND content IS NOT NULL")
            .bind(at.0).bind(reason).bind(seq).execute(c).await.map(|r| r.rows_affected()))?;
        if n != 1 {
            return Ok(false);
        }
        tx.append(Draft {
            at,
            kind: wavelet_core::ledger::EntryKind::ContentErased,
            case_id: None,
            run_id: None,
            actor: actor.to_string(),
            script_hash: None,
            content: serde_json::json!({ "seq": seq, "reason": reason }),
        });
        tx.commit().await?;
        Ok(true)
    }

    /// The recorded chain head.
    pub async fn ledger_head(&self) -> Result<Head> {
        let (seq, hash): (i64, String) =
            on_pool!(self, p => sqlx::query_as("SELECT seq, hash FROM ledger_head WHERE id = 1").fetch_one(p).await)?;
        Ok(Head { seq, hash })
    }

    /// The first content row outside entries 1 to `head` that is stored for an entry the
    /// chain does not hold, if any: written around Wavelet. (Nothing in the schema refuses
    /// one: see each backend's migration 0008.) Inside 1 to `head` every entry is there
    /// once the chain up to `head` verifies, so only the rows outside are read: content
    /// appended meanwhile has its entry, and is not taken.
    pub async fn content_without_entry(&self, head: i64) -> Result<Option<i64>> {
        const SQL: &str = "SELECT MIN(c.seq) FROM ledger_content c WHERE (c.seq > $1 OR c.seq < 1) \
                           AND NOT EXISTS (SELECT 1 FROM ledger l WHERE l.seq = c.seq)";
        Ok(on_pool!(self, p => sqlx::query_scalar(SQL).bind(head).fetch_one(p).await)?)
    }

    /// Ledger entries with `seq > after`, in order, at most `limit`.
    pub async fn ledger_page(&self, after: i64, limit: i64) -> Result<Vec<StoredEntry>> {
        let rows: Vec<EntryTuple> =
            on_pool!(self, p => sqlx::query_as(ENTRY_PAGE_SQL).bind(after).bind(limit).fetch_all(p).await)?;
        rows.into_iter().map(entry_from_tuple).collect()
    }

    /// Ledger entries about one case, in order.
    pub async fn ledger_for_case(&self, case_id: &str) -> Result<Vec<StoredEntry>> {
        const SQL: &str =
            entries_sql!("WHERE l.case_id = $1 OR l.run_id IN (SELECT run_id FROM cases WHERE id = $1) ORDER BY l.seq");
        let rows: Vec<EntryTuple> = on_pool!(self, p => sqlx::query_as(SQL).bind(case_id).fetch_all(p).await)?;
        rows.into_iter().map(entry_from_tuple).collect()
    }

    pub async fn case(&self, id: &str) -> Result<Option<CaseRow>> {
        let row: Option<CaseTuple> = on_pool!(self, p => sqlx::query_as(CASE_SQL).bind(id).fetch_optional(p).await)?;
        Ok(row.map(case_from_tuple))
    }

    pub async fn run(&self, id: &str) -> Result<Option<RunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        let row: Option<RunTuple> =
            on_pool!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(p).await)?;
        row.map(run_from_tuple).transpose()
    }

    /// How many runs are in each status.
    pub async fn run_counts(&self) -> Result<Vec<(String, i64)>> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status").fetch_all(p).await)?,
        )
    }

    /// When the latest event taken from `platform` was said, if any was.
    pub async fn last_inbox_at(&self, platform: Platform) -> Result<Option<Millis>> {
        let at: Option<i64> = on_pool!(self, p => sqlx::query_scalar("SELECT MAX(received_at) FROM inbox WHERE platform = $1")
            .bind(platform.as_str())
            .fetch_one(p)
            .await)?;
        Ok(at.map(Millis))
    }

    /// Undelivered outbox messages due by `now`, oldest first.
    pub async fn pending_outbox(&self, now: Millis, limit: i64) -> Result<Vec<PendingMessage>> {
        const SQL: &str = "SELECT id, idempotency_key, room, person, body, attempts FROM outbox \
                           WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1 ORDER BY id LIMIT $2";
        let rows: Vec<(i64, String, String, Option<String>, String, i32)> =
            on_pool!(self, p => sqlx::query_as(SQL).bind(now.0).bind(limit).fetch_all(p).await)?;
        rows.into_iter()
            .map(|(id, key, room, person, body, attempts)| {
                Ok(PendingMessage { id, attempts, message: outbox_message(key, &room, person, &body)? })
            })
            .collect()
    }

    /// The earliest time an undelivered message is due, if any.
    /// When the next message for `platforms` may be sent: its next attempt, or when the
    /// claim someone holds on it runs out if that is later. `None` when none is waiting.
    pub async fn next_outbox_due(&self, platforms: &[wavelet_core::Platform]) -> Result<Option<Millis>> {
        if platforms.is_empty() {
            return Ok(None);
        }
        let sql = format!(
            "SELECT MIN(CASE WHEN claimed_until > next_attempt_at THEN claimed_until ELSE next_attempt_at END) \
             FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL AND ({})",
            rooms_of(platforms)
        );
        let v: Option<i64> = on_pool!(self, p => sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(p).await)?;
        Ok(v.map(Millis))
    }

    pub async fn mark_delivered(&self, id: i64, at: Millis) -> Result<()> {
        on_pool!(self, p => sqlx::query("UPDATE outbox SET delivered_at = $1, attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL WHERE id = $2 AND delivered_at IS NULL").bind(at.0).bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn mark_failed(&self, id: i64, error: &str, retry_at: Millis) -> Result<()> {
        on_pool!(self, p => sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2, claimed_by = NULL, claimed_until = NULL WHERE id = $3 AND delivered_at IS NULL")
            .bind(error).bind(retry_at.0).bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Timers due by `now`, earliest first.
    pub async fn due_timers(&self, now: Millis, limit: i64) -> Result<Vec<DueTimer>> {
        let rows: Vec<(String, i64, i64)> = on_pool!(self, p => sqlx::query_as("SELECT run_id, step, due_at FROM timers WHERE due_at <= $1 ORDER BY due_at, run_id LIMIT $2")
            .bind(now.0).bind(limit).fetch_all(p).await)?;
        Ok(rows.into_iter().map(|(run_id, step, due)| DueTimer { run_id, step, due_at: Millis(due) }).collect())
    }

    /// The earliest time a timer or an escalation's next stage is due, if any.
    pub async fn next_due(&self) -> Result<Option<Millis>> {
        const SQL: &str = "SELECT MIN(t) FROM (SELECT MIN(due_at) AS t FROM timers \
                           UNION ALL SELECT MIN(next_at) AS t FROM escalations WHERE status = 'active' AND next_at IS NOT NULL \
                           UNION ALL SELECT MIN(next_at) AS t FROM schedules WHERE next_at IS NOT NULL) AS due";
        let v: Option<i64> = on_pool!(self, p => sqlx::query_scalar(SQL).fetch_one(p).await)?;
        Ok(v.map(Millis))
    }

    /// Claims up to `limit` undelivered messages due by `now` for `platforms`, oldest
    /// first, for `owner`: no other process claims them until `lease` runs out. On
    /// PostgreSQL it waits for rows a commit is claiming (`FOR UPDATE`; see [`ClaimBy`]).
    pub async fn claim_outbox(
        &self,
        owner: &str,
        platforms: &[wavelet_core::Platform],
        now: Millis,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedMessage>> {
        if platforms.is_empty() {
            return Ok(Vec::new());
        }
        let sql = claim_sql(platforms, matches!(self.pool, Pool::Postgres(_)), ClaimBy::Pass);
        let rows: Vec<ClaimTuple> = on_pool!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(owner).bind(now.plus(lease).0).bind(now.0).bind(limit).fetch_all(p).await)?;
        claimed(rows)
    }

    /// Names who claims messages at commit, and for which platforms (see [`Handoff`]);
    /// `None`, or no platforms, stops it. Messages already handed over stay handed.
    pub fn claim_at_commit(&self, claimer: Option<Claimer>) {
        let claimer = claimer.filter(|c| !c.platforms.is_empty());
        *self.handoff.claimer.lock().unwrap_or_else(|e| e.into_inner()) = claimer;
    }

    /// The messages commits have claimed and handed over since the last call, oldest first.
    /// Waits for commits that are claiming as it is called to hand theirs over (or fail),
    /// so an older message of a room is never left behind a newer one.
    pub async fn take_handed(&self) -> Vec<ClaimedMessage> {
        self.handoff.take(HANDOVER_WAIT).await
    }

    /// Stops claiming at commit for `platform` (it asked us to slow down) until the
    /// delivery loop names its claimer again.
    pub fn stop_claiming_for(&self, platform: wavelet_core::Platform) {
        if let Some(c) = self.handoff.claimer.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            c.platforms.retain(|p| *p != platform);
        }
    }

    /// Frees the claims other processes hold on a platform's messages. Called by the
    /// process that has just taken the platform's lease: whoever claimed them lost the
    /// lease (it died, or lost its database connection), so it no longer delivers there. A
    /// message it was sending at that moment may be sent again, with the same idempotency
    /// key, which the platform dedupes. Returns how many were freed.
    pub async fn release_claims_of_others(&self, platform: wavelet_core::Platform, me: &str) -> Result<u64> {
        let sql = format!(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE delivered_at IS NULL \
             AND claimed_by IS NOT NULL AND claimed_by <> $1 AND ({})",
            rooms_of(&[platform])
        );
        Ok(
            on_pool!(self, p => sqlx::query(sqlx::AssertSqlSafe(sql)).bind(me).execute(p).await.map(|r| r.rows_affected()))?,
        )
    }

    /// Hands a claimed message back without counting an attempt.
    pub async fn release_claim(&self, id: i64) -> Result<()> {
        on_pool!(self, p => sqlx::query("UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE id = $1")
            .bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Due again at `at`, without counting an attempt (the platform asked us to wait).
    pub async fn retry_later(&self, id: i64, at: Millis) -> Result<()> {
        on_pool!(self, p => sqlx::query("UPDATE outbox SET next_attempt_at = $1, claimed_by = NULL, claimed_until = NULL WHERE id = $2 AND delivered_at IS NULL")
            .bind(at.0).bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Undelivered, unparked messages by platform (`console`, `matrix`, …).
    pub async fn undelivered_by_platform(&self) -> Result<Vec<(String, i64)>> {
        let rooms: Vec<String> = on_pool!(self, p => sqlx::query_scalar("SELECT room FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL").fetch_all(p).await)?;
        let mut counts: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for room in rooms {
            if let Ok(r) = parse_room(&room) {
                *counts.entry(r.platform().as_str().to_string()).or_default() += 1;
            }
        }
        Ok(counts.into_iter().collect())
    }

    /// Messages parked as undeliverable, oldest first: (id, key, room, attempts, error).
    pub async fn parked_outbox(&self) -> Result<Vec<(i64, String, String, i32, Option<String>)>> {
        Ok(
            on_pool!(self, p => sqlx::query_as("SELECT id, idempotency_key, room, attempts, last_error FROM outbox WHERE failed_at IS NOT NULL AND delivered_at IS NULL ORDER BY id").fetch_all(p).await)?,
        )
    }

    pub async fn next_timer_due(&self) -> Result<Option<Millis>> {
        let v: Option<i64> =
            on_pool!(self, p => sqlx::query_scalar("SELECT MIN(due_at) FROM timers").fetch_one(p).await)?;
        Ok(v.map(Millis))
    }
}

/// A ledger row joined with its content: seq, at, kind, case, run, actor, script hash,
/// content hash, previous hash, hash, content, erased at.
type EntryTuple = (
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
);

fn entry_from_tuple(r: EntryTuple) -> Result<StoredEntry> {
    // Unreadable or missing content (without a recorded erasure) is reported by verify as
    // changed content: not a crash, and not an erasure.
    let content = match (r.10, r.11) {
        (Some(c), _) => {
            Some(serde_json::from_str(&c).unwrap_or_else(|_| serde_json::Value::String("<unreadable>".into())))
        }
        (None, Some(_erased_at)) => None,
        (None, None) => Some(serde_json::Value::String("<content row missing>".into())),
    };
    Ok(StoredEntry {
        link: Link {
            seq: r.0,
            at: Millis(r.1),
            kind: r.2,
            case_id: r.3,
            run_id: r.4,
            actor: r.5,
            script_hash: r.6,
            content_hash: r.7,
            prev_hash: r.8,
            hash: r.9,
        },
        content,
    })
}

/// A store URL fit for a log or an error: the password, if any, replaced.
pub fn redact(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let base = redact_credentials(url);
    match query {
        None => base,
        Some(q) => {
            let kept: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{base}?{}", kept.join("&"))
        }
    }
}

/// What the database's migrations table says of its schema, against this build's.
enum Schema {
    /// Exactly this build's migrations, each applied whole and unchanged: opening the
    /// store needs no right to change the schema.
    UpToDate,
    /// A migration this build does not know: a newer Wavelet migrated it.
    Newer(i64),
    /// Behind, a failed or edited migration, or nothing readable: for the migrator, which
    /// applies what is missing or says what is wrong.
    Other,
}

async fn pg_schema(pool: &PgPool, migrator: &sqlx::migrate::Migrator) -> Schema {
    let Ok(applied) =
        sqlx::query_as::<_, (i64, Vec<u8>, bool)>("SELECT version, checksum, success FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
    else {
        return Schema::Other;
    };
    let known: Vec<&sqlx::migrate::Migration> =
        migrator.iter().filter(|m| !m.migration_type.is_down_migration()).collect();
    if let Some((v, _, _)) = applied.iter().find(|(v, _, _)| !known.iter().any(|m| m.version == *v)) {
        return Schema::Newer(*v);
    }
    let whole = applied.len() == known.len()
        && known.iter().all(|m| applied.iter().any(|(v, c, ok)| *ok && *v == m.version && c[..] == m.checksum[..]));
    if whole { Schema::UpToDate } else { Schema::Other }
}

/// PostgreSQL's "insufficient privilege" (42501).
fn insufficient_privilege(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42501")
}

/// The working tables: the application reads and writes them freely.
const WORKING_TABLES: &[&str] =
    &["inbox", "scripts", "runs", "cases", "timers", "outbox", "counters", "escalations", "schedules", "ack_waits"];

/// What [`Store::grant`] runs for `role` and on the tables in `schema` (both quoted
/// identifiers). Revokes first, so granting again after an upgrade leaves exactly
/// this.
fn grant_sql(role: &str, schema: &str) -> Vec<String> {
    let q = |tables: &[&str]| tables.iter().map(|t| format!("{schema}.{t}")).collect::<Vec<_>>().join(", ");
    let working = q(WORKING_TABLES);
    let (ledger, content, head, migrations) =
        (q(&["ledger"]), q(&["ledger_content"]), q(&["ledger_head"]), q(&["_sqlx_migrations"]));
    vec![
        format!("REVOKE ALL ON {working}, {ledger}, {content}, {head}, {migrations} FROM {role}"),
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {working} TO {role}"),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"),
        format!("GRANT SELECT, INSERT ON {ledger}, {content} TO {role}"),
        format!("GRANT UPDATE (content, erased_at, erasure_reason) ON {content} TO {role}"),
        format!("GRANT SELECT, UPDATE ON {head} TO {role}"),
        format!("GRANT SELECT ON {migrations} TO {role}"),
    ]
}

fn redact_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***@{}", &url[..s], &url[at + 1..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Tx {
    fn new(store: Store, conn: TxConn, head: Head, commits: i64) -> Tx {
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
    async fn conn(&mut self) -> Result<ConnRef<'_>> {
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

    /// Where the last ledger witness stands in the chain: the entry before its
    /// `ledger.witnessed` record (the one it named), read from the record's own link, which
    /// an erasure of its content cannot touch.
    pub async fn last_witness(&mut self) -> Result<Option<Head>> {
        const SQL: &str = "SELECT seq, prev_hash FROM ledger WHERE kind = 'ledger.witnessed' ORDER BY seq DESC LIMIT 1";
        let row: Option<(i64, String)> = on_tx!(self, c => sqlx::query_as(SQL).fetch_optional(c).await)?;
        Ok(row.map(|(seq, prev_hash)| Head { seq: seq - 1, hash: prev_hash }))
    }

    /// The entries whose erasure is recorded after `after` (see
    /// [`wavelet_core::ledger::ChainCheck`]).
    pub async fn erasures_since(&mut self, after: i64) -> Result<std::collections::HashSet<i64>> {
        const SQL: &str = entries_sql!("WHERE l.kind = 'content.erased' AND l.seq > $1 ORDER BY l.seq");
        let rows: Vec<EntryTuple> = on_tx!(self, c => sqlx::query_as(SQL).bind(after).fetch_all(c).await)?;
        let records = rows.into_iter().map(entry_from_tuple).collect::<Result<Vec<_>>>()?;
        Ok(wavelet_core::ledger::recorded_erasures(&records))
    }

    /// Committed ledger entries with `seq > after`, in order, at most `limit`, as this
    /// transaction reads them.
    pub async fn ledger_page(&mut self, after: i64, limit: i64) -> Result<Vec<StoredEntry>> {
        let rows: Vec<EntryTuple> =
            on_tx!(self, c => sqlx::query_as(ENTRY_PAGE_SQL).bind(after).bind(limit).fetch_all(c).await)?;
        rows.into_iter().map(entry_from_tuple).collect()
    }

    /// The first content row after entry `seq`, if any. Content is written with its
    /// entry, so past the chain's head there is none unless it was written around Wavelet.
    pub async fn content_after(&mut self, seq: i64) -> Result<Option<i64>> {
        Ok(
            on_tx!(self, c => sqlx::query_scalar("SELECT MIN(seq) FROM ledger_content WHERE seq > $1").bind(seq).fetch_one(c).await)?,
        )
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

    /// Commits this transaction and, without waiting for that, returns one that carries
    /// on from it: it sees what this one wrote (runs, counters, inbound events, queued
    /// messages, the chain head), so work can go on in it while this one commits. It takes
    /// the lock when it first needs the database, after this one has committed; if this
    /// one failed, or any other transaction committed in between, it fails with
    /// [`Error::Superseded`] and nothing it did is kept.
    ///
    /// It also carries what this one read. Past [`MAX_CARRIED`] runs and events (see
    /// [`Store::set_max_carried`]), if this one made a [`Tx::prefetch`] (for the batch to
    /// be handled next), the view is narrowed: to what this one wrote, the runs waiting on
    /// the people that prefetch read for, and the events it looked up. The rest is
    /// committed (the prefetch began this transaction, so the one it carried on from had
    /// committed), and is read from the database when needed. The ingest prefetches every
    /// batch, so along its pipeline the view stays bounded; without a prefetch everything
    /// is carried.
    ///
    /// Rows this one wrote that the other does not carry (cases, escalations, timers) are
    /// read from the database, once it has begun. The returned future must be driven
    /// (spawned, or awaited before the other needs the database), or the other waits for
    /// ever.
    pub fn commit_and_continue(mut self) -> (impl std::future::Future<Output = Result<()>> + Send + 'static, Tx) {
        let (done, outcome) = tokio::sync::watch::channel(None);
        let pending = Pending { done: outcome, head: self.head.clone() };
        let mut next = Tx::new(self.store.clone(), TxConn::Pending(pending), self.head.clone(), self.commits + 1);
        // The runs this one writes stay with it; the view goes on.
        let runs = std::mem::take(&mut self.runs);
        self.runs = self.dirty_runs.iter().filter_map(|id| runs.get(id).map(|r| (id.clone(), Arc::clone(r)))).collect();
        next.runs = runs;
        next.counters = self.counters.iter().map(|(k, (v, _))| (k.clone(), (*v, false))).collect();
        next.waits_by_person = std::mem::take(&mut self.waits_by_person);
        next.waits_loaded = std::mem::take(&mut self.waits_loaded);
        next.persons_loaded = std::mem::take(&mut self.persons_loaded);
        next.inbox_known = self.inbox_known.take();
        next.inbox_prefetched = std::mem::take(&mut self.inbox_prefetched);
        next.inbox_seen = std::mem::take(&mut self.inbox_seen);
        next.outbox_keys = std::mem::take(&mut self.outbox_keys);
        if let Some(read) = self.prefetched.take()
            && next.view_size() > self.store.max_carried.load(Ordering::Relaxed)
        {
            self.narrow(&mut next, &read);
        }
        self.done = Some(done);
        (self.commit(), next)
    }

    /// Leaves in `next`'s view only what this transaction writes and what `read` (its last
    /// prefetch) read; see [`Tx::commit_and_continue`].
    fn narrow(&self, next: &mut Tx, read: &Prefetched) {
        let waits_on_read = |r: &RunRow| r.wait_person.as_ref().is_some_and(|p| read.people.contains(p));
        next.runs.retain(|id, r| self.dirty_set.contains(id) || waits_on_read(r));
        next.waits_by_person.clear();
        for r in next.runs.values() {
            index_wait(&mut next.waits_by_person, r);
        }
        // In a fixed order, whatever the map's.
        for ids in next.waits_by_person.values_mut() {
            ids.sort_unstable();
        }
        next.persons_loaded.retain(|p| read.people.contains(p));
        next.waits_loaded.retain(|(p, _)| read.people.contains(p));
        next.inbox_seen = self.inbox.iter().map(|(platform, id, _)| (platform.clone(), id.clone())).collect();
        next.inbox_prefetched.retain(|e| read.events.contains(e));
        if let Some(known) = &mut next.inbox_known {
            known.retain(|e| read.events.contains(e));
        }
        next.outbox_keys = self.outbox.iter().map(|q| q.message.idempotency_key.clone()).collect();
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

    pub async fn run(&mut self, id: &str) -> Result<Option<RunRow>> {
        if let Some(r) = self.runs.get(id) {
            return Ok(Some(RunRow::clone(r)));
        }
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        let row: Option<RunTuple> =
            on_tx!(self, c => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(c).await)?;
        let run = row.map(run_from_tuple).transpose()?;
        if let Some(r) = &run {
            self.remember_read(r.clone());
        }
        Ok(run)
    }

    /// Reads, in two queries, what handling these events will look up one by one: which
    /// were recorded before (only these events are then looked up), and every run waiting
    /// on these people.
    pub async fn prefetch(&mut self, events: &[(String, String)], people: &[String]) -> Result<()> {
        // Begins this transaction (a carried-on one once the one before has committed):
        // what it carried from that one is then committed, which `narrow` relies on.
        self.conn().await?;
        self.prefetched =
            Some(Prefetched { events: events.iter().cloned().collect(), people: people.iter().cloned().collect() });
        if !events.is_empty() {
            // By platform, so each lookup is a search of the inbox's key (platform,
            // event_id), not a scan of the whole inbox. On PostgreSQL the ids are one array
            // the query is driven from: with a list of parameters (or `= ANY`), a prepared
            // statement's generic plan could search by platform alone and compare every row
            // of it with every id (BENCHMARKS.md, 2026-12-05).
            let mut platforms: Vec<&str> = events.iter().map(|(p, _)| p.as_str()).collect();
            platforms.sort_unstable();
            platforms.dedup();
            let mut rows: HashSet<(String, String)> = HashSet::new();
            for platform in platforms {
                let ids: Vec<String> = events.iter().filter(|(p, _)| p == platform).map(|(_, id)| id.clone()).collect();
                let found: Vec<(String, String)> = match self.conn().await? {
                    ConnRef::Sqlite(c) => {
                        let mut q = sqlx::QueryBuilder::new("SELECT platform, event_id FROM inbox WHERE platform = ");
                        q.push_bind(platform).push(" AND event_id IN (");
                        let mut list = q.separated(", ");
                        for id in ids {
                            list.push_bind(id);
                        }
                        q.push(")");
                        q.build_query_as().fetch_all(&mut *c).await?
                    }
                    ConnRef::Postgres(c) => {
                        sqlx::query_as(
                            "SELECT i.platform, i.event_id FROM unnest($2::text[]) AS e(id) \
                             JOIN inbox i ON i.platform = $1 AND i.event_id = e.id",
                        )
                        .bind(platform)
                        .bind(ids)
                        .fetch_all(&mut *c)
                        .await?
                    }
                };
                rows.extend(found);
            }
            let mut known = self.inbox_known.take().unwrap_or_default();
            known.extend(events.iter().filter(|e| rows.contains(e)).cloned());
            // Events not in this prefetch are looked up on their own.
            self.inbox_known = Some(known);
            self.inbox_prefetched.extend(events.iter().cloned());
        }
        let people: Vec<&String> = people.iter().filter(|p| !self.persons_loaded.contains(*p)).collect();
        if !people.is_empty() {
            let runs: Vec<RunRow> = match self.conn().await? {
                ConnRef::Sqlite(c) => {
                    let mut q = sqlx::QueryBuilder::new(format!(
                        "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'waiting' AND wait_person IN ("
                    ));
                    let mut list = q.separated(", ");
                    for p in &people {
                        list.push_bind((*p).clone());
                    }
                    q.push(")");
                    decode_runs(q.build_query_as().fetch(&mut *c)).await?
                }
                // One array. `= ANY` searches the index here: the wait's person leads the
                // index `runs_waiting`, where the inbox's key is led by the platform.
                ConnRef::Postgres(c) => {
                    let sql =
                        format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = 'waiting' AND wait_person = ANY($1)");
                    let people: Vec<String> = people.iter().map(|p| (*p).clone()).collect();
                    decode_runs(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(people).fetch(&mut *c)).await?
                }
            };
            for run in runs {
                self.remember_read(run);
            }
            self.persons_loaded.extend(people.into_iter().cloned());
        }
        Ok(())
    }

    /// Reads the runs waiting on (person, room) into this transaction's view, once.
    async fn load_waits(&mut self, person: &str, room: &str) -> Result<()> {
        let key = (person.to_string(), room.to_string());
        if self.persons_loaded.contains(person) || self.waits_loaded.contains(&key) {
            return Ok(());
        }
        let sql =
            format!("SELECT {RUN_COLUMNS} FROM runs WHERE wait_person = $1 AND wait_room = $2 AND status = 'waiting'");
        let rows: Vec<RunTuple> =
            on_tx!(self, c => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(person).bind(room).fetch_all(c).await)?;
        for row in rows {
            self.remember_read(run_from_tuple(row)?);
        }
        self.waits_loaded.insert(key);
        Ok(())
    }

    /// A run read from the database, unless this transaction already has it (the copy in
    /// view is then newer than the database's).
    fn remember_read(&mut self, r: RunRow) {
        if !self.runs.contains_key(&r.id) {
            self.index_wait(&r);
            self.runs.insert(r.id.clone(), Arc::new(r));
        }
    }

    fn index_wait(&mut self, r: &RunRow) {
        index_wait(&mut self.waits_by_person, r);
    }

    /// The runs in view waiting on `person` in `room` (looked up by person, not by a scan
    /// of every run in the transaction: a batch holds hundreds).
    fn waits_on<'a>(&'a self, person: &'a str, room: &'a RoomRef) -> impl Iterator<Item = &'a RunRow> + 'a {
        self.waits_by_person.get(person).into_iter().flatten().filter_map(|id| self.runs.get(id).map(|r| &**r)).filter(
            move |r| {
                r.status == RunStatus::Waiting
                    && r.wait_person.as_deref() == Some(person)
                    && r.wait_room.as_ref() == Some(room)
            },
        )
    }

    /// The run whose question to `person` in `room` is answered next: the oldest wait.
    pub async fn waiting_run(&mut self, person: &str, room: &RoomRef) -> Result<Option<RunRow>> {
        self.load_waits(person, &room.to_string()).await?;
        Ok(self.waits_on(person, room).min_by_key(|r| r.wait_seq.unwrap_or(i64::MAX)).cloned())
    }

    /// Another run's wait on the same person and room, if any.
    pub async fn waiting_run_other(&mut self, person: &str, room: &RoomRef, run_id: &str) -> Result<Option<String>> {
        self.load_waits(person, &room.to_string()).await?;
        Ok(self.waits_on(person, room).find(|r| r.id != run_id).map(|r| r.id.clone()))
    }

    /// The run of this person's own that waits on them in this room, if any.
    pub async fn open_dialog_of(&mut self, person: &str, room: &RoomRef) -> Result<Option<RunRow>> {
        self.load_waits(person, &room.to_string()).await?;
        Ok(self
            .waits_on(person, room)
            .filter(|r| r.starter == person)
            .min_by_key(|r| r.wait_seq.unwrap_or(i64::MAX))
            .cloned())
    }

    /// Every waiting run this person started, oldest first.
    pub async fn waiting_runs_started_by(&mut self, person: &str) -> Result<Vec<RunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE starter = $1 AND status = 'waiting'");
        let rows: Vec<RunTuple> =
            on_tx!(self, c => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(person).fetch_all(c).await)?;
        for row in rows {
            self.remember_read(run_from_tuple(row)?);
        }
        let mut mine: Vec<RunRow> = self
            .runs
            .values()
            .filter(|r| r.starter == person && r.status == RunStatus::Waiting)
            .map(|r| RunRow::clone(r))
            .collect();
        // Started order: time, then run number (runs started in the same millisecond).
        mine.sort_by_key(|r| (r.created_at, r.id.trim_start_matches("R-").parse::<i64>().unwrap_or(i64::MAX)));
        Ok(mine)
    }

    /// Whether a case exists (opened in this transaction or before).
    pub async fn case_exists(&mut self, id: &str) -> Result<bool> {
        if self.case_at.contains_key(id) {
            return Ok(true);
        }
        let n: Option<i64> = on_tx!(self, c => sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM cases WHERE id = $1").bind(id).fetch_optional(c).await)?;
        Ok(n.is_some())
    }

    /// Writes a run (insert or replace) at commit; reads in this transaction see it now.
    pub async fn put_run(&mut self, r: &RunRow) -> Result<()> {
        if self.dirty_set.insert(r.id.clone()) {
            self.dirty_runs.push(r.id.clone());
        }
        self.index_wait(r);
        self.runs.insert(r.id.clone(), Arc::new(r.clone()));
        Ok(())
    }

    pub async fn insert_case(&mut self, c: &CaseRow) -> Result<()> {
        // A second case with the same id stays in the buffer, and fails the commit.
        self.case_at.entry(c.id.clone()).or_insert(self.cases.len());
        self.cases.push(c.clone());
        Ok(())
    }

    /// Closes a case. `false` if there is no such open case.
    pub async fn close_case(&mut self, id: &str, at: Millis) -> Result<bool> {
        if let Some(c) = self.case_at.get(id).map(|&i| &mut self.cases[i]) {
            let open = c.status != "closed";
            if open {
                c.status = "closed".into();
                c.closed_at = Some(at);
            }
            return Ok(open);
        }
        let r = on_tx!(self, c => sqlx::query("UPDATE cases SET status = 'closed', closed_at = $1 WHERE id = $2 AND status <> 'closed'")
            .bind(at.0).bind(id).execute(c).await.map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    /// Queues a message for delivery at commit. A key queued before (in this transaction
    /// or any earlier one) is not queued again: the first message with a key is kept.
    pub async fn enqueue(&mut self, m: &OutboundMessage, run_id: Option<&str>, at: Millis) -> Result<()> {
        self.enqueue_share(m, run_id, None, at).await
    }

    /// As [`Tx::enqueue`], for one room's copy of a share about `share_case` (when some):
    /// its delivery will be recorded in the ledger.
    pub async fn enqueue_share(
        &mut self,
        m: &OutboundMessage,
        run_id: Option<&str>,
        share_case: Option<&str>,
        at: Millis,
    ) -> Result<()> {
        if self.outbox_keys.insert(m.idempotency_key.clone()) {
            self.outbox.push(Queued {
                message: m.clone(),
                run_id: run_id.map(str::to_string),
                share_case: share_case.map(str::to_string),
                at,
            });
        }
        Ok(())
    }

    /// Marks a message delivered; false when it already was (by another process).
    pub async fn mark_delivered(&mut self, id: i64, at: Millis) -> Result<bool> {
        let n = on_tx!(self, c => sqlx::query("UPDATE outbox SET delivered_at = $1, attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL WHERE id = $2 AND delivered_at IS NULL")
            .bind(at.0).bind(id).execute(c).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    pub async fn set_timer(&mut self, run_id: &str, step: i64, due: Millis) -> Result<()> {
        self.timers.push((run_id.to_string(), step, due));
        Ok(())
    }

    /// Removes a timer; `false` if it was already gone (fired by someone else).
    pub async fn take_timer(&mut self, run_id: &str, step: i64) -> Result<bool> {
        if let Some(i) = self.timers.iter().position(|t| t.0 == run_id && t.1 == step) {
            self.timers.remove(i);
            return Ok(true);
        }
        let r = on_tx!(self, c => sqlx::query("DELETE FROM timers WHERE run_id = $1 AND step = $2").bind(run_id).bind(step).execute(c).await.map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    /// Claims what is due by `now` (run timers and escalation stages), earliest first, at
    /// most `limit` of each. Timers are deleted as they are claimed; escalation rows are
    /// locked until commit. On PostgreSQL, rows another process holds are skipped
    /// (`FOR UPDATE SKIP LOCKED`), so two processes never take the same one.
    pub async fn claim_due(&mut self, now: Millis, limit: i64) -> Result<Vec<Due>> {
        let postgres = matches!(self.store.pool, Pool::Postgres(_));
        let lock = if postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let timers_sql = format!(
            "DELETE FROM timers WHERE (run_id, step) IN (SELECT run_id, step FROM timers WHERE due_at <= $1 \
             ORDER BY due_at, run_id, step LIMIT $2{lock}) RETURNING run_id, step, due_at"
        );
        let timers: Vec<(String, i64, i64)> = on_tx!(self, c => sqlx::query_as(sqlx::AssertSqlSafe(timers_sql)).bind(now.0).bind(limit).fetch_all(c).await)?;
        let esc_sql = format!(
            "SELECT {ESCALATION_COLUMNS} FROM escalations WHERE status = 'active' AND next_at IS NOT NULL \
             AND next_at <= $1 ORDER BY next_at, id LIMIT $2{lock}"
        );
        let escalations: Vec<EscalationTuple> =
            on_tx!(self, c => sqlx::query_as(sqlx::AssertSqlSafe(esc_sql)).bind(now.0).bind(limit).fetch_all(c).await)?;
        let sched_sql = format!(
            "SELECT id, cron, workflow, group_id, next_at FROM schedules WHERE next_at IS NOT NULL AND next_at <= $1 \
             ORDER BY next_at, id LIMIT $2{lock}"
        );
        let schedules: Vec<(String, String, String, String, i64)> = on_tx!(self, c => sqlx::query_as(sqlx::AssertSqlSafe(sched_sql)).bind(now.0).bind(limit).fetch_all(c).await)?;
        let mut due: Vec<Due> = timers
            .into_iter()
            .map(|(run_id, step, at)| Due::Timer(DueTimer { run_id, step, due_at: Millis(at) }))
            .collect();
        for e in escalations {
            due.push(Due::Escalation(Box::new(escalation_from_tuple(e)?)));
        }
        for (id, cron, workflow, group_id, at) in schedules {
            due.push(Due::Schedule(DueSchedule { id, cron, workflow, group_id, due_at: Millis(at) }));
        }
        due.sort_by_key(|d| d.due_at());
        Ok(due)
    }

    /// Puts something that could not be handled back, due again at `at`, so it does not
    /// hold up what is due after it.
    pub async fn postpone(&mut self, due: &Due, at: Millis) -> Result<()> {
        match due {
            Due::Timer(t) => {
                on_tx!(self, c => sqlx::query("INSERT INTO timers (run_id, step, due_at) VALUES ($1, $2, $3) ON CONFLICT (run_id, step) DO UPDATE SET due_at = excluded.due_at")
                .bind(&t.run_id).bind(t.step).bind(at.0).execute(c).await.map(|r| r.rows_affected()))?
            }
            Due::Escalation(e) => on_tx!(self, c => sqlx::query("UPDATE escalations SET next_at = $1 WHERE id = $2")
                .bind(at.0).bind(&e.id).execute(c).await.map(|r| r.rows_affected()))?,
            Due::Schedule(s) => on_tx!(self, c => sqlx::query("UPDATE schedules SET next_at = $1 WHERE id = $2")
                .bind(at.0).bind(&s.id).execute(c).await.map(|r| r.rows_affected()))?,
        };
        Ok(())
    }

    /// Parks an undeliverable message, in the same transaction as what surfaces it.
    pub async fn park(&mut self, outbox_id: i64, error: &str, at: Millis) -> Result<()> {
        on_tx!(self, c => sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $1, failed_at = $2, claimed_by = NULL, claimed_until = NULL WHERE id = $3 AND delivered_at IS NULL")
            .bind(error).bind(at.0).bind(outbox_id).execute(c).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Records that a schedule fired and when it is next due.
    pub async fn schedule_fired(&mut self, id: &str, at: Millis, next: Option<Millis>) -> Result<()> {
        on_tx!(self, c => sqlx::query("UPDATE schedules SET next_at = $1, last_fired_at = $2 WHERE id = $3")
            .bind(next.map(|m| m.0)).bind(at.0).bind(id).execute(c).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// A group's open cases, oldest first, each with its latest escalation's state: what
    /// `open_cases` gives a script.
    pub async fn open_cases(&mut self, group: &str) -> Result<Vec<serde_json::Value>> {
        const SQL: &str = "SELECT id, category, risk, opened_at FROM cases WHERE group_id = $1 AND status = 'open' ORDER BY opened_at, id";
        let mut rows: Vec<(String, String, String, i64)> =
            on_tx!(self, c => sqlx::query_as(SQL).bind(group).fetch_all(c).await)?;
        // Cases opened (or closed) in this transaction are still in the buffer.
        rows.retain(|r| !self.case_at.contains_key(&r.0));
        rows.extend(
            self.cases
                .iter()
                .filter(|c| c.group_id == group && c.status == "open")
                .map(|c| (c.id.clone(), c.category.clone(), c.risk.clone(), c.opened_at.0)),
        );
        rows.sort_by_key(|a| (a.3, case_number(&a.0)));
        let mut out = Vec::with_capacity(rows.len());
        for (id, category, risk, opened) in rows {
            let latest = self.escalations_of(&id).await?.pop();
            let (escalation, acknowledged_by) = match &latest {
                None => ("none", None),
                Some(e) => (escalation_status(e.status), e.acked_by.clone()),
            };
            out.push(serde_json::json!({
                "id": id,
                "category": category,
                "risk": risk,
                "opened": Millis(opened).rfc3339(),
                "escalation": escalation,
                "acknowledged_by": acknowledged_by,
            }));
        }
        Ok(out)
    }

    /// A new escalation (written at commit, with the rest of the step's rows).
    pub async fn insert_escalation(&mut self, e: &EscalationRow) -> Result<()> {
        self.escalations.push(e.clone());
        Ok(())
    }

    /// Writes an escalation's progress (stage, status, next due time, who was notified, ack).
    pub async fn update_escalation(&mut self, e: &EscalationRow) -> Result<()> {
        if let Some(new) = self.escalations.iter_mut().find(|n| n.id == e.id) {
            *new = e.clone();
            return Ok(());
        }
        on_tx!(self, c => sqlx::query("UPDATE escalations SET stage = $1, status = $2, next_at = $3, notified = $4, acked_by = $5, acked_at = $6 WHERE id = $7")
            .bind(e.stage as i64).bind(escalation_status(e.status)).bind(e.next_at.map(|m| m.0)).bind(json(&e.notified))
            .bind(&e.acked_by).bind(e.acked_at.map(|m| m.0)).bind(&e.id)
            .execute(c).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// One escalation as it is now in this transaction.
    pub async fn escalation(&mut self, id: &str) -> Result<Option<EscalationRow>> {
        if let Some(new) = self.escalations.iter().find(|n| n.id == id) {
            return Ok(Some(new.clone()));
        }
        let sql = format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE id = $1");
        let row: Option<EscalationTuple> =
            on_tx!(self, c => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(c).await)?;
        row.map(escalation_from_tuple).transpose()
    }

    /// Every escalation of a case, oldest first.
    pub async fn escalations_of(&mut self, case_id: &str) -> Result<Vec<EscalationRow>> {
        let sql = format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE case_id = $1 ORDER BY started_at, id");
        let rows: Vec<EscalationTuple> =
            on_tx!(self, c => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(case_id).fetch_all(c).await)?;
        let mut all = rows.into_iter().map(escalation_from_tuple).collect::<Result<Vec<_>>>()?;
        if self.escalations.iter().any(|n| n.case_id == case_id) {
            all.extend(self.escalations.iter().filter(|n| n.case_id == case_id).cloned());
            all.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        }
        Ok(all)
    }

    /// Records that a run waits for a case's next acknowledgement.
    pub async fn add_ack_wait(&mut self, case_id: &str, run_id: &str, step: i64) -> Result<()> {
        on_tx!(self, c => sqlx::query("INSERT INTO ack_waits (case_id, run_id, step) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(case_id).bind(run_id).bind(step).execute(c).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Takes every wait on a case's acknowledgement: (run, step), in the order they began.
    pub async fn take_ack_waits(&mut self, case_id: &str) -> Result<Vec<(String, i64)>> {
        let rows: Vec<(String, i64)> = on_tx!(self, c => sqlx::query_as("DELETE FROM ack_waits WHERE case_id = $1 RETURNING run_id, step")
            .bind(case_id).fetch_all(c).await)?;
        let mut rows = rows;
        rows.sort();
        Ok(rows)
    }

    /// Removes one run's wait on an acknowledgement (its deadline came first).
    pub async fn remove_ack_wait(&mut self, run_id: &str, step: i64) -> Result<()> {
        on_tx!(self, c => sqlx::query("DELETE FROM ack_waits WHERE run_id = $1 AND step = $2")
            .bind(run_id).bind(step).execute(c).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// A case opened in this transaction or before.
    pub async fn case(&mut self, id: &str) -> Result<Option<CaseRow>> {
        if let Some(&i) = self.case_at.get(id) {
            return Ok(Some(self.cases[i].clone()));
        }
        let row: Option<CaseTuple> = on_tx!(self, c => sqlx::query_as(CASE_SQL).bind(id).fetch_optional(c).await)?;
        Ok(row.map(case_from_tuple))
    }

    /// Adds an entry to the ledger; it is chained now and written at commit.
    pub fn append(&mut self, draft: Draft) -> Link {
        let (link, encoded) = self.head.append_encoded(&draft);
        self.ledger.push((link.clone(), encoded));
        link
    }

    /// Writes each table's rows, in the order given.
    ///
    /// On SQLite, `VALUES` lists of at most [`ROWS_PER_STATEMENT`] rows, and one table's
    /// statements are made while the database runs the first statement of the table
    /// before (for most tables, its only one): the database's thread then does not wait
    /// for them (on two cores the commit is the pipeline's longer side, BENCHMARKS.md).
    ///
    /// On PostgreSQL, one statement a table whatever the number of rows, each column bound
    /// as one array (`unnest`): its text is the same every time, so it is parsed once per
    /// connection and its plan kept. A `VALUES` list is a new statement for every number of
    /// rows, and PostgreSQL spent more time planning those lists than inserting the rows
    /// (BENCHMARKS.md, 2026-12-06).
    async fn insert_all(&mut self, inserts: Vec<Insert>) -> Result<()> {
        match self.conn().await? {
            ConnRef::Sqlite(c) => {
                let mut inserts = inserts.into_iter();
                let mut next = inserts.next();
                let mut ready = Vec::new();
                while !ready.is_empty() || next.is_some() {
                    let write = async {
                        for (sql, args) in std::mem::take(&mut ready) {
                            sqlx::query_with(sqlx::AssertSqlSafe(sql), args).execute(&mut *c).await?;
                        }
                        Ok::<_, sqlx::Error>(())
                    };
                    // Polled after `write` has handed its first statement over.
                    let make = async { next.take().map(sqlite_statements).transpose() };
                    let (written, made) = futures_util::future::join(write, make).await;
                    written?;
                    ready = made?.unwrap_or_default();
                    next = inserts.next();
                }
            }
            ConnRef::Postgres(c) => {
                for insert in inserts {
                    let Insert { table, columns, tail, rows } = insert;
                    let rows = rows();
                    if rows.is_empty() {
                        continue;
                    }
                    let arrays = Column::transpose(table, rows)?;
                    let types: Vec<String> =
                        arrays.iter().enumerate().map(|(i, a)| format!("${}::{}[]", i + 1, a.sql_type())).collect();
                    let sql = format!(
                        "INSERT INTO {table} ({columns}) SELECT {columns} FROM unnest({}) WITH ORDINALITY \
                         AS u({columns}, wavelet_row) ORDER BY wavelet_row {tail}",
                        types.join(", ")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for a in arrays {
                        q = match a {
                            Column::Text(v) => q.bind(v),
                            Column::Int(v) => q.bind(v),
                        };
                    }
                    q.execute(&mut *c).await?;
                }
            }
        }
        Ok(())
    }

    /// Writes everything buffered, the ledger entries and the new chain head, then commits.
    pub async fn commit(mut self) -> Result<()> {
        let done = self.done.take();
        let failed = self.store.failed_commits.clone();
        let result = self.write_and_commit().await;
        if result.is_err() {
            failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(done) = done {
            done.send_replace(Some(result.is_ok()));
        }
        result
    }

    async fn write_and_commit(mut self) -> Result<()> {
        let started = std::time::Instant::now();
        let scripts = std::mem::take(&mut self.scripts);
        let saved: Vec<String> = scripts.iter().map(|s| s.0.clone()).collect();
        let outbox = std::mem::take(&mut self.outbox);
        let queued_for: HashSet<Platform> = outbox.iter().map(|q| q.message.room.platform()).collect();
        let dirty = std::mem::take(&mut self.dirty_runs);
        let runs: Vec<Arc<RunRow>> = dirty.iter().filter_map(|id| self.runs.get(id).cloned()).collect();
        let inbox = std::mem::take(&mut self.inbox);
        let cases = std::mem::take(&mut self.cases);
        let escalations = std::mem::take(&mut self.escalations);
        let timers = std::mem::take(&mut self.timers);
        let ledger = std::mem::take(&mut self.ledger);
        let mut links = Vec::with_capacity(ledger.len());
        let mut contents = Vec::with_capacity(ledger.len());
        for (l, content) in ledger {
            contents.push((l.seq, content));
            links.push(l);
        }
        let inserts = vec![
            Insert::new("scripts", "hash, name, source, first_seen", "ON CONFLICT DO NOTHING", move || {
                scripts
                    .into_iter()
                    .map(|(hash, name, source, at)| vec![hash.into(), name.into(), source.into(), at.0.into()])
                    .collect()
            }),
            // No ON CONFLICT: a concurrent recording of the same event must fail this
            // transaction, so the event is not handled twice.
            Insert::new("inbox", "platform, event_id, received_at", "", move || {
                inbox.into_iter().map(|(platform, id, at)| vec![platform.into(), id.into(), at.0.into()]).collect()
            }),
            Insert::new(
                "runs",
                RUN_COLUMNS,
                "ON CONFLICT (id) DO UPDATE SET status = excluded.status, history = excluded.history, wait = excluded.wait, \
                 wait_person = excluded.wait_person, wait_room = excluded.wait_room, wait_seq = excluded.wait_seq, \
                 error = excluded.error, updated_at = excluded.updated_at, wait_since = excluded.wait_since",
                move || runs.iter().map(|r| run_cells(r)).collect(),
            ),
            Insert::new(
                "cases",
                "id, run_id, group_id, subject, category, risk, status, opened_at, closed_at",
                "",
                move || {
                    cases
                        .into_iter()
                        .map(|k| {
                            vec![
                                k.id.into(),
                                k.run_id.into(),
                                k.group_id.into(),
                                k.subject.into(),
                                k.category.into(),
                                k.risk.into(),
                                k.status.into(),
                                k.opened_at.0.into(),
                                k.closed_at.map(|m| m.0).into(),
                            ]
                        })
                        .collect()
                },
            ),
            Insert::new("escalations", ESCALATION_COLUMNS, "", move || {
                escalations
                    .into_iter()
                    .map(|e| {
                        vec![
                            e.id.into(),
                            e.case_id.into(),
                            e.policy.into(),
                            e.run_id.into(),
                            e.group_id.into(),
                            json(&e.plan).into(),
                            (e.stage as i64).into(),
                            escalation_status(e.status).to_string().into(),
                            e.next_at.map(|m| m.0).into(),
                            json(&e.notified).into(),
                            e.started_at.0.into(),
                            e.acked_by.into(),
                            e.acked_at.map(|m| m.0).into(),
                        ]
                    })
                    .collect()
            }),
            Insert::new("timers", "run_id, step, due_at", "ON CONFLICT DO NOTHING", move || {
                timers.into_iter().map(|(run, step, due)| vec![run.into(), step.into(), due.0.into()]).collect()
            }),
            // A key queued in an earlier transaction keeps its first message.
            Insert::new(
                "outbox",
                "idempotency_key, run_id, room, person, body, created_at, next_attempt_at, share_case",
                "ON CONFLICT (idempotency_key) DO NOTHING",
                move || {
                    outbox
                        .into_iter()
                        .map(|Queued { message: m, run_id, share_case, at }| {
                            vec![
                                m.idempotency_key.into(),
                                run_id.into(),
                                m.room.to_string().into(),
                                m.person.into(),
                                json(&m.body).into(),
                                at.0.into(),
                                at.0.into(),
                                share_case.into(),
                            ]
                        })
                        .collect()
                },
            ),
            Insert::new(
                "ledger",
                "seq, at, kind, case_id, run_id, actor, script_hash, content_hash, prev_hash, hash",
                "",
                move || {
                    links
                        .into_iter()
                        .map(|l| {
                            vec![
                                l.seq.into(),
                                l.at.0.into(),
                                l.kind.into(),
                                l.case_id.into(),
                                l.run_id.into(),
                                l.actor.into(),
                                l.script_hash.into(),
                                l.content_hash.into(),
                                l.prev_hash.into(),
                                l.hash.into(),
                            ]
                        })
                        .collect()
                },
            ),
            Insert::new("ledger_content", "seq, content", "", move || {
                contents.into_iter().map(|(seq, content)| vec![seq.into(), content.into()]).collect()
            }),
        ];
        self.insert_all(inserts).await?;
        let counters: Vec<(String, i64)> =
            self.counters.iter().filter(|(_, (_, dirty))| *dirty).map(|(k, (v, _))| (k.clone(), *v)).collect();
        for (name, v) in counters {
            on_tx!(self, c => sqlx::query("UPDATE counters SET value = $1 WHERE name = $2").bind(v).bind(&name).execute(c).await.map(|r| r.rows_affected()))?;
        }
        // Every commit counts itself on the head row, so a transaction carried on from
        // this one can tell whether anything else committed in between.
        let (seq, hash, commits) = (self.head.seq, self.head.hash.clone(), self.commits + 1);
        on_tx!(self, c => sqlx::query("UPDATE ledger_head SET seq = $1, hash = $2, commits = $3 WHERE id = 1").bind(seq).bind(hash).bind(commits).execute(c).await.map(|r| r.rows_affected()))?;
        // The ticket is taken before the claim and settled after the commit (see [`Handoff`]).
        let mut handed = None;
        if let Some(by) = self.claimer_for(&queued_for) {
            let ticket = self.store.handoff.ticket();
            let now = by.clock.now();
            let sql = claim_sql(&by.platforms, matches!(self.store.pool, Pool::Postgres(_)), ClaimBy::Commit);
            let rows: Vec<ClaimTuple> = on_tx!(self, c => sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&by.owner).bind(now.plus(by.lease).0).bind(now.0).bind(CLAIM_BATCH).fetch_all(&mut *c).await)?;
            handed = Some((ticket, claimed(rows)?));
        }
        match self.conn {
            TxConn::Sqlite(t) => t.commit().await?,
            TxConn::Postgres(t) => t.commit().await?,
            TxConn::Pending(_) => return Err(Error::Superseded),
        }
        if let Ok(mut known) = self.store.saved_scripts.lock() {
            known.extend(saved);
        }
        if let Some((ticket, messages)) = handed {
            ticket.hand_over(messages);
        }
        self.store.commits.fetch_add(1, Ordering::Relaxed);
        self.store.commit_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Who claims at commit what this transaction queues: only when it queued something
    /// for a platform this process delivers to now.
    fn claimer_for(&self, queued_for: &HashSet<Platform>) -> Option<Claimer> {
        if queued_for.is_empty() {
            return None;
        }
        let claimer = self.store.handoff.claimer.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        queued_for.iter().any(|p| claimer.platforms.contains(p)).then_some(claimer)
    }
}

#[cfg(test)]
mod tests {
    use super::{Arc, ClaimedMessage, Handoff, redact};
    use std::time::Duration;

    fn claimed(id: i64) -> ClaimedMessage {
        crate::adapter::tests::claimed(id, "north")
    }

    fn ids(taken: &[ClaimedMessage]) -> Vec<i64> {
        taken.iter().map(|c| c.id).collect()
    }

    #[tokio::test]
    async fn a_pass_takes_what_commits_handed_over_once_every_claim_before_it_is_settled() {
        let handoff = Arc::new(Handoff::default());
        let older = handoff.ticket();
        let newer = handoff.ticket();
        newer.hand_over(vec![claimed(3)]);
        let take = tokio::spawn({
            let h = handoff.clone();
            async move { h.take(Duration::from_secs(60)).await }
        });
        let mut take = Box::pin(take);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut take).await.is_err(),
            "a newer message is not taken while an older claim is open"
        );
        // Claims that begin after the pass looked do not hold it up, and what they hand
        // over is not taken while an older one is open.
        let middle = handoff.ticket();
        let newest = handoff.ticket();
        newest.hand_over(vec![claimed(9)]);
        older.hand_over(vec![claimed(1), claimed(3), claimed(2)]);
        let taken = tokio::time::timeout(Duration::from_secs(5), take).await.expect("taken").unwrap();
        assert_eq!(ids(&taken), vec![1, 2, 3], "oldest first, each once, nothing after an open claim");
        middle.hand_over(vec![claimed(5)]);
        assert_eq!(ids(&handoff.take(Duration::from_secs(60)).await), vec![5, 9]);
        // A commit that fails settles its ticket and hands nothing over.
        let failed = handoff.ticket();
        handoff.ticket().hand_over(vec![claimed(12)]);
        drop(failed);
        assert_eq!(ids(&handoff.take(Duration::from_secs(60)).await), vec![12]);
        assert!(handoff.state().open.is_empty());
    }

    #[tokio::test]
    async fn a_commit_that_hangs_holds_back_only_what_was_claimed_after_it() {
        let handoff = Arc::new(Handoff::default());
        handoff.ticket().hand_over(vec![claimed(1)]);
        let _hung = handoff.ticket();
        handoff.ticket().hand_over(vec![claimed(3)]);
        let started = std::time::Instant::now();
        assert_eq!(ids(&handoff.take(Duration::from_millis(200)).await), vec![1]);
        assert!(started.elapsed() >= Duration::from_millis(200), "waited for it, then went on");
        assert_eq!(handoff.state().ready.len(), 1, "the newer message stays for later");
    }

    #[test]
    fn redact_hides_passwords_wherever_they_are() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("postgres://u@h/db?password=hunter2&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert_eq!(redact("postgres://h/db?sslpassword=x"), "postgres://h/db?sslpassword=***");
        assert_eq!(redact("sqlite://wavelet.db"), "sqlite://wavelet.db");
    }
}
