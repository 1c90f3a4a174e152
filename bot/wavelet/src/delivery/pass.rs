//! One delivery pass: claim what is due (or take what commits handed over), send it room
//! by room with the idempotency key each message carries, and record what happened
//! (delivered, retried later, or parked and surfaced).

use super::{Adapters, SendError};
use crate::runtime::Runtime;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use wavelet_core::{Millis, Platform};
use wavelet_store::{self as store, CLAIM_BATCH, ClaimedMessage};

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use wavelet_core::{MessageBody, OutboundMessage, RoomRef};

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
    fn rooms_keep_their_order_and_serial_adapters_keep_the_claim_order() {
        let batch = || vec![claimed(1, "!a"), claimed(2, "!b"), claimed(3, "!a"), claimed(4, "!c"), claimed(5, "!b")];
        assert_eq!(ids(&by_room(batch(), 8)), vec![vec![1, 3], vec![2, 5], vec![4]]);
        assert_eq!(ids(&by_room(batch(), 1)), vec![vec![1, 2, 3, 4, 5]]);
    }
}
