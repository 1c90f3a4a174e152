//! The ledger through a transaction: appending (chained now, written at commit) and
//! reading the committed chain as the transaction sees it.

use super::Tx;
use crate::rows::{EntryTuple, entry_from_tuple};
use crate::{ENTRY_PAGE_SQL, Result};
use wavelet_core::ledger::{Draft, Head, Link, StoredEntry};

impl Tx {
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

    /// Adds an entry to the ledger; it is chained now and written at commit.
    pub fn append(&mut self, draft: Draft) -> Link {
        let (link, encoded) = self.head.append_encoded(&draft);
        self.ledger.push((link.clone(), encoded));
        link
    }
}
