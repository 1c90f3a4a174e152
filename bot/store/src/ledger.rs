//! The ledger as the store keeps it: reads of the chain, lawful erasure, and the whole
//! chain's verification a page at a time.

use crate::rows::{EntryTuple, entry_from_tuple};
use crate::{ENTRY_PAGE_SQL, Error, Result, Store};
use wavelet_core::Millis;
use wavelet_core::ledger::{
    ChainFault, Draft, Head, Record, StoredEntry, VerifyReport, Witness, content_ahead, verify_witnessed,
};

impl Store {
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
        tx.append(Draft::of(at, actor, Record::ContentErased { seq, reason: reason.to_string() }));
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
}

impl Store {
    /// Walks the whole chain, a page at a time, and checks it against ledger witnesses
    /// (what was posted; none to check the chain alone). The outer error is the store's;
    /// the inner one names the first bad entry.
    pub async fn verify(&self, witnesses: &[Witness]) -> Result<Result<VerifyReport, ChainFault>> {
        // The chain up to the head read now: entries appended meanwhile (a running Wavelet)
        // belong to the next verification, not to this one's "beyond the head".
        let head = self.ledger_head().await?;
        let mut all = Vec::new();
        let mut after = 0;
        while after < head.seq {
            let page = self.ledger_page(after, (head.seq - after).min(10_000)).await?;
            let Some(last) = page.last() else { break };
            after = last.link.seq;
            all.extend(page);
        }
        let report = verify_witnessed(all, &head, witnesses);
        // Only once the chain verifies: entries 1 to the head are then all there.
        if report.is_ok()
            && let Some(seq) = self.content_without_entry(head.seq).await?
        {
            return Ok(Err(if seq > head.seq {
                content_ahead(seq)
            } else {
                ChainFault {
                    seq,
                    problem: "content is stored for this entry, which is not in the chain (written around Wavelet)"
                        .into(),
                }
            }));
        }
        Ok(report)
    }
}
