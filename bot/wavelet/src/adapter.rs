//! The boundary every chat platform implements, and the outbox delivery that drives it.
//! Nothing reaches a chat platform except through here: the runtime writes messages to
//! the outbox in its transaction; [`deliver_pending`] sends them and records delivery.

use crate::runtime::Runtime;
use crate::store::{self, ClaimedMessage};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use wavelet_core::{Millis, OutboundMessage, Platform};

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

/// How long a claim on a message lasts: if the process dies mid-send, another sends it
/// after this (with the same idempotency key, so the platform drops a duplicate).
pub const CLAIM: Duration = Duration::from_secs(60);

/// Sends every message that is due on the platforms this process has adapters for,
/// oldest first, and records each delivery or failure. Returns how many were delivered.
///
/// Messages are claimed before they are sent, so two processes never send one at once;
/// within a process one pass runs at a time. A platform that asks us to slow down gets
/// nothing more in this pass. A message that keeps failing, or fails for good, is parked
/// (kept, not dropped) and surfaced: a ledger entry and a note to every coordinator.
pub async fn deliver_pending(rt: &Runtime, adapters: &Adapters, now: Millis) -> store::Result<usize> {
    let store = &rt.store;
    let _one_pass = store.delivery.lock().await;
    let platforms = adapters.platforms();
    let mut delivered = 0;
    // Platforms still inside a wait they asked for (in this pass or an earlier one).
    let mut slowed: Vec<Platform> = {
        let mut slow = rt.slow_until.lock().unwrap_or_else(|e| e.into_inner());
        slow.retain(|_, until| *until > now);
        slow.keys().copied().collect()
    };
    loop {
        let open: Vec<Platform> = platforms.iter().copied().filter(|p| !slowed.contains(p)).collect();
        let batch = store.claim_outbox(&rt.instance, &open, now, CLAIM, 200).await?;
        if batch.is_empty() {
            return Ok(delivered);
        }
        let mut progressed = false;
        for c in batch {
            let platform = c.message.room.platform();
            let Some(adapter) = adapters.get(platform).filter(|_| !slowed.contains(&platform)) else {
                // Slowed down in this pass: hand it back for the next.
                store.release_claim(c.id).await?;
                continue;
            };
            match adapter.send(&c.message).await {
                Ok(()) => {
                    crate::faults::point("deliver.after_send");
                    store.mark_delivered(c.id, now).await?;
                    crate::faults::point("deliver.after_mark");
                    delivered += 1;
                    progressed = true;
                }
                Err(SendError::RateLimited(wait)) => {
                    tracing::info!(platform = %platform, wait_ms = wait.as_millis() as u64, "platform asked us to slow down");
                    store.retry_later(c.id, now.plus(wait)).await?;
                    rt.slow_until.lock().unwrap_or_else(|e| e.into_inner()).insert(platform, now.plus(wait));
                    slowed.push(platform);
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
                            progressed = true;
                        }
                    }
                }
            }
        }
        if !progressed {
            return Ok(delivered);
        }
    }
}

/// What a parked message was, for the ledger.
pub fn describe(c: &ClaimedMessage) -> serde_json::Value {
    serde_json::json!({
        "outbox": c.id,
        "key": c.message.idempotency_key,
        "room": c.message.room.to_string(),
        "run": c.run_id,
    })
}
