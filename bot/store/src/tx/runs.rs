//! Runs through a transaction: the view of runs it holds (read once, then kept), the
//! batch prefetch, and the lookups of who waits on whom.

use super::{Prefetched, Tx, index_wait};
use crate::rows::{RUN_COLUMNS, RunRow, RunStatus, RunTuple, decode_runs, run_from_tuple};
use crate::{ConnRef, Result};
use std::collections::HashSet;
use std::sync::Arc;
use wavelet_core::RoomRef;

impl Tx {
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

    /// Writes a run (insert or replace) at commit; reads in this transaction see it now.
    pub async fn put_run(&mut self, r: &RunRow) -> Result<()> {
        if self.dirty_set.insert(r.id.clone()) {
            self.dirty_runs.push(r.id.clone());
        }
        self.index_wait(r);
        self.runs.insert(r.id.clone(), Arc::new(r.clone()));
        Ok(())
    }
}
