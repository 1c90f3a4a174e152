//! Cases, escalations and waits on acknowledgements through a transaction.

use super::Tx;
use crate::Result;
use crate::rows::{
    CASE_SQL, CaseRow, CaseTuple, ESCALATION_COLUMNS, EscalationRow, EscalationTuple, case_from_tuple, case_number,
    escalation_from_tuple, escalation_status, json,
};
use wavelet_core::Millis;

impl Tx {
    /// Whether a case exists (opened in this transaction or before).
    pub async fn case_exists(&mut self, id: &str) -> Result<bool> {
        if self.case_at.contains_key(id) {
            return Ok(true);
        }
        let n: Option<i64> = on_tx!(self, c => sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM cases WHERE id = $1").bind(id).fetch_optional(c).await)?;
        Ok(n.is_some())
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
}
