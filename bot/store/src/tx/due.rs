//! The outbox, timers and schedules through a transaction: messages queued for delivery
//! at commit, deliveries recorded, and due work claimed and moved on.

use super::{Queued, Tx};
use crate::rows::{Due, DueSchedule, DueTimer, ESCALATION_COLUMNS, EscalationTuple, escalation_from_tuple};
use crate::{Pool, Result};
use wavelet_core::{Millis, OutboundMessage};

impl Tx {
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
}
