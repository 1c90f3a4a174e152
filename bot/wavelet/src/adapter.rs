//! The boundary every chat platform implements, and the outbox delivery that drives it.
//! Nothing reaches a chat platform except through here: the runtime writes messages to
//! the outbox in its transaction; [`deliver_pending`] sends them and records delivery.

use crate::runtime::Runtime;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wavelet_core::ledger::OutboxMessage;
use wavelet_core::{Millis, OutboundMessage, Platform};
use wavelet_store::{self as store, CLAIM_BATCH, ClaimedMessage};

/// Why a send did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again later (network, rate limit, server error).
    #[error("temporary: {0}")]
    Temporary(String),
    /// Will never work as it is (unknown room, refused content); surfaced to coordinators.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The platform asked us to slow down: nothing more goes to it until then.
    #[error("rate limited for {0:?}")]
    RateLimited(Duration),
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

/// A chat platform, as the runtime sees it. Implementations convert platform types to
/// and from the core's at this border and nowhere else.
pub trait ChatAdapter: Send + Sync {
    fn platform(&self) -> Platform;
    /// Sends one message. `message.idempotency_key` must become the platform's own
    /// dedup key (Matrix transaction id, Discord nonce) so a resend is not a second post.
    fn send<'a>(&'a self, message: &'a OutboundMessage) -> SendFuture<'a>;
    /// How many rooms may be sent to side by side (each room still gets its messages one
    /// at a time, in order). 1, the default, sends everything in claim order.
    fn parallel_rooms(&self) -> usize {
        1
    }
}

/// Adapters by platform.
#[derive(Clone, Default)]
pub struct Adapters(HashMap<Platform, Arc<dyn ChatAdapter>>);

impl Adapters {
    pub fn add(&mut self, a: Arc<dyn ChatAdapter>) {
        self.0.insert(a.platform(), a);
    }

    pub fn get(&self, p: Platform) -> Option<&Arc<dyn ChatAdapter>> {
        self.0.get(&p)
    }

    /// How many rooms a delivery pass serves side by side: what the most careful adapter
    /// allows.
    pub fn parallel_rooms(&self) -> usize {
        self.0.values().map(|a| a.parallel_rooms()).min().unwrap_or(1).max(1)
    }

    /// The platforms there are adapters for.
    pub fn platforms(&self) -> Vec<Platform> {
        let mut p: Vec<Platform> = self.0.keys().copied().collect();
        p.sort();
        p
    }
}

/// The wait before the n-th retry: 1 s doubling to at most 5 min.
pub fn backoff(attempts: i32) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(0, 9) as u32).min(Duration::from_secs(300))
}

/// Attempts before a message that keeps failing is parked and surfaced to coordinators
/// (with [`backoff`], about 20 minutes of trying).
pub const MAX_ATTEMPTS: i32 = 12;

/// How long one send may take before it counts as failed for now (and is retried later):
/// a request a platform never answers must not hold up delivery to every other room, or
/// the timers fired in the same pass.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the shared rooms of a delivery pass wait for its direct rooms to be served
/// before they are served side by side with them.
pub const DIRECT_FIRST: Duration = Duration::from_secs(2);

/// How often a delivery pass claims from the outbox itself while commits keep handing it
/// messages (see [`deliver_pending`]).
pub const CLAIM_EVERY: Duration = Duration::from_secs(1);

/// How long a claim on a message lasts: if the process dies mid-send, another sends it
/// after this (with the same idempotency key, so the platform drops a duplicate).
pub const CLAIM: Duration = Duration::from_secs(60);

/// Sends every message that is due on the platforms this process has adapters for,
/// oldest first, and records each delivery or failure. Returns how many were delivered.
///
/// Messages are claimed before they are sent, so two processes never send one at once;
/// within a process one pass runs at a time. Within a room messages go one after another
/// in order; different rooms are served side by side, as many as the adapters allow
/// ([`ChatAdapter::parallel_rooms`]), so a slow send to one room does not hold up the
/// answer in another, with direct rooms (dialogs) served before shared ones (for at most
/// [`DIRECT_FIRST`]). A platform that asks us to slow down gets nothing more in this
/// pass. A message that keeps failing, or fails for good, is parked (kept, not dropped)
/// and surfaced: a ledger entry and a note to every coordinator.
pub async fn deliver_pending(rt: &Runtime, adapters: &Adapters, now: Millis) -> store::Result<usize> {
    let store = rt.store();
    let _one_pass = store.delivery_pass().await;
    let _counted = rt.passes().begin(store.commits());
    let platforms = adapters.platforms();
    let parallel = adapters.parallel_rooms();
    let mut delivered = 0;
    // Platforms still inside a wait they asked for (in this pass or an earlier one).
    let slowed: Mutex<Vec<Platform>> = Mutex::new(rt.slowed_until(now).into_keys().collect());
    let start = now;
    loop {
        // A pass goes on while there is work: its time moves with the clock (claims that
        // ran out meanwhile are claimed, waits are counted from when they are asked for).
        let now = start.max(rt.now());
        // What a commit claimed as it queued it is sent without claiming anything here:
        // that commit claimed the due messages nobody had claimed (oldest first, up to
        // 200). Else, and at least once every [`CLAIM_EVERY`] while commits keep handing
        // messages over, the due messages are claimed here too (what others queued, and
        // claims of this process that ran out, which commits leave alone), with any a
        // commit handed over meanwhile, so a room's messages go oldest first.
        let mut batch = store.take_handed().await;
        if rt.passes().claim_now(batch.len(), now) {
            let open: Vec<Platform> = platforms.iter().copied().filter(|p| !is_slowed(&slowed, *p)).collect();
            batch.extend(store.claim_outbox(rt.instance(), &open, now, CLAIM, CLAIM_BATCH).await?);
            batch.extend(store.take_handed().await);
            batch.sort_by_key(|c| c.id);
            batch.dedup_by_key(|c| c.id);
        }
        if batch.is_empty() {
            return Ok(delivered);
        }
        let (direct, shared): (Vec<_>, Vec<_>) =
            by_room(batch, parallel).into_iter().partition(|q| parallel > 1 && q[0].message.room.is_direct());
        // At most `parallel` rooms are sent to at once, direct and shared together.
        let sending = tokio::sync::Semaphore::new(parallel);
        let send = |queues: Vec<Vec<ClaimedMessage>>| {
            let (sending, slowed) = (&sending, &slowed);
            futures_util::stream::iter(queues.into_iter().map(move |q| async move {
                // Never closed, so a permit always comes.
                let _room = sending.acquire().await.ok();
                deliver_queue(rt, adapters, q, now, slowed).await
            }))
            .buffer_unordered(parallel)
            .collect::<Vec<_>>()
        };
        // Direct rooms first: someone in a dialog is waiting for the answer, and a
        // homeserver serving the group's copies at the same time answers more slowly.
        // The shared rooms follow once the direct rooms are served, or after
        // [`DIRECT_FIRST`], so a slow direct room does not hold them up for long.
        let direct_sends = send(direct);
        tokio::pin!(direct_sends);
        let served = tokio::select! {
            done = &mut direct_sends => Some(done),
            _ = tokio::time::sleep(DIRECT_FIRST) => None,
        };
        let outcomes = match served {
            Some(mut done) => {
                done.extend(send(shared).await);
                done
            }
            None => {
                let (d, s) = futures_util::future::join(direct_sends, send(shared)).await;
                d.into_iter().chain(s).collect()
            }
        };
        let (mut progressed, mut failed) = (false, None);
        for r in outcomes {
            match r {
                Ok(QueueOutcome { delivered: d, progressed: p }) => {
                    delivered += d;
                    progressed |= p;
                }
                // The other rooms' sends are finished and recorded first.
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if !progressed {
            return Ok(delivered);
        }
    }
}

fn is_slowed(slowed: &Mutex<Vec<Platform>>, p: Platform) -> bool {
    slowed.lock().unwrap_or_else(|e| e.into_inner()).contains(&p)
}

/// A batch as queues of messages to send one after another: one queue per room (in the
/// order each room first appears) when rooms may be served side by side, else one queue
/// in claim order.
fn by_room(batch: Vec<ClaimedMessage>, parallel: usize) -> Vec<Vec<ClaimedMessage>> {
    if parallel <= 1 {
        return vec![batch];
    }
    let mut queues: Vec<Vec<ClaimedMessage>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for c in batch {
        let i = *index.entry(c.message.room.to_string()).or_insert_with(|| {
            queues.push(Vec::new());
            queues.len() - 1
        });
        queues[i].push(c);
    }
    queues
}

struct QueueOutcome {
    delivered: usize,
    /// Something changed that may make new work due (a delivery, a parked message's note).
    progressed: bool,
}

/// Sends one queue's messages in order, recording each outcome.
async fn deliver_queue(
    rt: &Runtime,
    adapters: &Adapters,
    queue: Vec<ClaimedMessage>,
    now: Millis,
    slowed: &Mutex<Vec<Platform>>,
) -> store::Result<QueueOutcome> {
    let store = rt.store();
    let mut out = QueueOutcome { delivered: 0, progressed: false };
    for c in queue {
        // Sends take time: what is recorded, and how long to wait, counts from now.
        let now = now.max(rt.now());
        let platform = c.message.room.platform();
        let Some(adapter) = adapters.get(platform).filter(|_| !is_slowed(slowed, platform)) else {
            // Slowed down in this pass: hand it back for the next.
            store.release_claim(c.id).await?;
            continue;
        };
        let sent = tokio::time::timeout(SEND_TIMEOUT, adapter.send(&c.message)).await.unwrap_or_else(|_| {
            Err(SendError::Temporary(format!("{platform} did not answer within {} s", SEND_TIMEOUT.as_secs())))
        });
        match sent {
            Ok(()) => {
                crate::faults::point("deliver.after_send");
                rt.record_delivery(&c, now).await?;
                crate::faults::point("deliver.after_mark");
                out.delivered += 1;
                out.progressed = true;
            }
            Err(SendError::RateLimited(wait)) => {
                tracing::info!(platform = %platform, wait_ms = wait.as_millis() as u64, "platform asked us to slow down");
                store.retry_later(c.id, now.plus(wait)).await?;
                rt.slow_down(platform, now.plus(wait));
                store.stop_claiming_for(platform);
                slowed.lock().unwrap_or_else(|e| e.into_inner()).push(platform);
            }
            Err(e) => {
                let attempts = c.attempts + 1;
                tracing::warn!(outbox = c.id, key = %c.message.idempotency_key, attempts, error = %e, "delivery failed");
                match e {
                    SendError::Temporary(_) if attempts < MAX_ATTEMPTS => {
                        store.mark_failed(c.id, &e.to_string(), now.plus(backoff(c.attempts))).await?;
                    }
                    _ => {
                        // Parked and surfaced in one transaction: never one without the other.
                        rt.park_and_surface(&c, attempts, &e.to_string()).await?;
                        // The coordinators' note is new work for this pass.
                        out.progressed = true;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Tracks this process's delivery passes (one runs at a time), so that a chat connection
/// can wait for the pass that sends what it has just queued: the Matrix adapter holds its
/// next `/sync` until then, as a bot that answers inside its handler would, rather than
/// have the homeserver serve both at once. A pass is known by the store's commit count
/// when it began: it sees every row committed by then.
pub struct DeliveryPasses {
    /// The commit count the latest finished pass began after.
    finished: tokio::sync::watch::Sender<u64>,
    /// When a pass last claimed from the outbox itself (by the runtime's clock).
    claimed_at: Mutex<Option<Millis>>,
}

impl Default for DeliveryPasses {
    fn default() -> Self {
        DeliveryPasses { finished: tokio::sync::watch::Sender::new(0), claimed_at: Mutex::new(None) }
    }
}

impl DeliveryPasses {
    /// Whether a pass with `handed` messages to send should also claim from the outbox:
    /// always when it has none, else once every [`CLAIM_EVERY`] (and at once if the clock
    /// went back since the last claim). Records the claim.
    fn claim_now(&self, handed: usize, now: Millis) -> bool {
        let mut at = self.claimed_at.lock().unwrap_or_else(|e| e.into_inner());
        let due = handed == 0 || at.is_none_or(|t| now >= t.plus(CLAIM_EVERY) || now < t);
        if due {
            *at = Some(now);
        }
        due
    }

    fn begin(&self, commits: u64) -> PassCounted<'_> {
        PassCounted { passes: self, commits }
    }

    /// Waits until a pass that began after `commits` commits has finished, or `at_most`
    /// has passed; `true` if one finished.
    pub async fn sent_after(&self, commits: u64, at_most: Duration) -> bool {
        let mut done = self.finished.subscribe();
        tokio::time::timeout(at_most, done.wait_for(|f| *f >= commits)).await.is_ok_and(|r| r.is_ok())
    }
}

/// A pass being made; counted as finished when dropped, however it ends.
struct PassCounted<'a> {
    passes: &'a DeliveryPasses,
    commits: u64,
}

impl Drop for PassCounted<'_> {
    fn drop(&mut self) {
        let commits = self.commits;
        self.passes.finished.send_if_modified(|f| {
            let later = commits > *f;
            *f = (*f).max(commits);
            later
        });
    }
}

/// Which outbox message this was, for the ledger.
pub fn describe(c: &ClaimedMessage) -> OutboxMessage {
    OutboxMessage {
        outbox: c.id,
        key: c.message.idempotency_key.clone(),
        room: c.message.room.to_string(),
        run: c.run_id.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use wavelet_core::{MessageBody, RoomRef};

    /// A claimed message with id `id` to the Matrix room `room`.
    pub(crate) fn claimed(id: i64, room: &str) -> ClaimedMessage {
        let message = OutboundMessage {
            idempotency_key: format!("k{id}"),
            room: RoomRef::Shared { platform: Platform::Matrix, id: room.into() },
            person: None,
            body: MessageBody::Text { text: String::new() },
        };
        ClaimedMessage { id, message, attempts: 0, run_id: None, share_case: None }
    }

    fn ids(queues: &[Vec<ClaimedMessage>]) -> Vec<Vec<i64>> {
        queues.iter().map(|q| q.iter().map(|c| c.id).collect()).collect()
    }

    #[test]
    fn a_pass_with_handed_over_messages_claims_once_a_second() {
        let passes = DeliveryPasses::default();
        let second = CLAIM_EVERY.as_millis() as i64;
        // (handed-over messages, now, claims?) in order, each after the one before.
        let cases = [
            (3, 10_000, true),               // the first pass claims
            (3, 10_000 + second - 1, false), // not yet a second since
            (0, 10_000 + second - 1, true),  // nothing handed over: it claims
            (3, 10_000 + second, false),     // a second since the first, not the last
            (3, 10_000 + 2 * second, true),  // a second since the last
            (3, 5_000, true),                // the clock went back
            (3, 5_001, false),
        ];
        for (i, (handed, now, claims)) in cases.into_iter().enumerate() {
            assert_eq!(passes.claim_now(handed, Millis(now)), claims, "case {i}");
        }
    }

    #[tokio::test]
    async fn a_wait_for_delivery_ends_with_a_pass_that_began_after_the_commit() {
        let passes = std::sync::Arc::new(DeliveryPasses::default());
        assert!(!passes.sent_after(1, Duration::from_millis(20)).await, "no pass has run");
        // A pass that began before commit 3 does not send what commit 3 queued.
        drop(passes.begin(2));
        assert!(passes.sent_after(2, Duration::from_millis(20)).await);
        assert!(!passes.sent_after(3, Duration::from_millis(20)).await);
        // A waiter is woken when a pass that began after its commit ends.
        let waiting = passes.clone();
        let waiter = tokio::spawn(async move { waiting.sent_after(3, Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        drop(passes.begin(5));
        assert!(waiter.await.unwrap());
        // An older pass ending late does not move it back.
        drop(passes.begin(4));
        assert!(passes.sent_after(5, Duration::from_millis(20)).await);
    }

    #[test]
    fn rooms_keep_their_order_and_serial_adapters_keep_the_claim_order() {
        let batch = || vec![claimed(1, "!a"), claimed(2, "!b"), claimed(3, "!a"), claimed(4, "!c"), claimed(5, "!b")];
        assert_eq!(ids(&by_room(batch(), 8)), vec![vec![1, 3], vec![2, 5], vec![4]]);
        assert_eq!(ids(&by_room(batch(), 1)), vec![vec![1, 2, 3, 4, 5]]);
    }
}
