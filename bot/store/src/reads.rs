//! Reads outside a transaction: a case, a run, counts, what is due next.

use crate::rows::{
    CASE_SQL, CaseRow, CaseTuple, DueTimer, RUN_COLUMNS, RunRow, RunTuple, case_from_tuple, run_from_tuple,
};
use crate::{Result, Store};
use wavelet_core::{Millis, Platform};

impl Store {
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

    pub async fn next_timer_due(&self) -> Result<Option<Millis>> {
        let v: Option<i64> =
            on_pool!(self, p => sqlx::query_scalar("SELECT MIN(due_at) FROM timers").fetch_one(p).await)?;
        Ok(v.map(Millis))
    }
}
