//! Committing a transaction: the buffered rows written table by table (one statement of
//! arrays a table on PostgreSQL, `VALUES` lists on SQLite), the chain head moved, the
//! messages of held platforms claimed and handed to delivery; and carrying a
//! transaction's view on to the next one while it commits (the ingest's pipeline).

use super::{Pending, Prefetched, Queued, Tx, TxConn, index_wait};
use crate::outbox::{CLAIM_BATCH, ClaimBy, ClaimTuple, Claimer, claim_sql, claimed};
use crate::rows::{ESCALATION_COLUMNS, RUN_COLUMNS, RunRow, escalation_status, json};
use crate::{ConnRef, Error, Pool, Result};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use wavelet_core::Platform;

/// How much a transaction carried on from another holds in view (runs and inbound
/// events) before it is narrowed to what it needs (see [`Tx::commit_and_continue`]).
/// Bounds the memory a long pipeline takes; carrying more saves reading runs again.
pub const MAX_CARRIED: usize = 1_024;

/// Rows per `INSERT … VALUES` statement on SQLite: at most 16 columns × 1,000 binds,
/// under its limit of 32,766.
const ROWS_PER_STATEMENT: usize = 1_000;

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

impl Tx {
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
