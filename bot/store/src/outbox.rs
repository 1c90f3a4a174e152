//! The outbox seen from delivery: claims (by a delivery pass, or by the commit that
//! queued the messages, handed over to the pass), retries, parking, and what is waiting.

use crate::rows::{ClaimedMessage, PendingMessage, outbox_message, parse_room};
use crate::{Pool, Result, Store};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wavelet_core::Millis;
use wavelet_core::clock::Clock;

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
pub(crate) struct Handoff {
    pub(crate) claimer: Mutex<Option<Claimer>>,
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

    pub(crate) fn ticket(self: &Arc<Self>) -> Ticket {
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
pub(crate) struct Ticket {
    handoff: Arc<Handoff>,
    number: u64,
}

impl Ticket {
    pub(crate) fn hand_over(self, messages: Vec<ClaimedMessage>) {
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
    pub clock: Arc<dyn Clock>,
    pub lease: Duration,
}

/// How long a delivery pass waits for commits that are claiming to hand over what they
/// claimed; past it, it takes what older commits handed over and leaves the rest.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(5);

/// How many messages one claim takes, at commit or in a delivery pass.
pub const CLAIM_BATCH: i64 = 200;

/// Who runs a claim, which decides what it may take.
#[derive(Clone, Copy)]
pub(crate) enum ClaimBy {
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
pub(crate) fn claim_sql(platforms: &[wavelet_core::Platform], postgres: bool, by: ClaimBy) -> String {
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
pub(crate) fn rooms_of(platforms: &[wavelet_core::Platform]) -> String {
    let rooms: Vec<String> =
        platforms.iter().flat_map(|p| [format!("room LIKE '{p}:%'"), format!("room LIKE 'dm:{p}:%'")]).collect();
    rooms.join(" OR ")
}

pub(crate) type ClaimTuple = (i64, String, String, Option<String>, String, i32, Option<String>, Option<String>);

/// Claimed rows as messages, oldest first.
pub(crate) fn claimed(mut rows: Vec<ClaimTuple>) -> Result<Vec<ClaimedMessage>> {
    rows.sort_by_key(|r| r.0);
    rows.into_iter()
        .map(|(id, key, room, person, body, attempts, run_id, share_case)| {
            Ok(ClaimedMessage { id, attempts, run_id, share_case, message: outbox_message(key, &room, person, &body)? })
        })
        .collect()
}

impl Store {
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
}

impl Store {
    /// Waits for this process's one delivery pass at a time, and holds it while the guard
    /// lives.
    pub async fn delivery_pass(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.delivery.lock().await
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::{Arc, ClaimedMessage, Handoff};
    use std::time::Duration;
    use wavelet_core::{MessageBody, OutboundMessage, Platform, RoomRef};

    fn claimed(id: i64) -> ClaimedMessage {
        ClaimedMessage {
            id,
            message: OutboundMessage {
                idempotency_key: format!("k{id}"),
                room: RoomRef::Shared { platform: Platform::Matrix, id: "north".into() },
                person: None,
                body: MessageBody::Text { text: String::new() },
            },
            attempts: 0,
            run_id: None,
            share_case: None,
        }
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
}
