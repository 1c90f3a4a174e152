//! The boundary every chat platform implements, and the outbox delivery that drives it.
//! Nothing reaches a chat platform except through here: the runtime writes messages to
//! the outbox in its transaction; [`deliver_pending`] sends them and records delivery.

use crate::store::{self, Store};
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
}

/// The wait before the n-th retry: 1 s doubling to at most 5 min.
pub fn backoff(attempts: i32) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(0, 8) as u32).min(Duration::from_secs(300))
}

/// Sends every message that is due, oldest first, and records each delivery or failure.
/// Returns how many were delivered.
///
/// One pass at a time per process: a second caller waits for the first to finish, so no
/// message is sent twice by two passes reading the same rows.
pub async fn deliver_pending(store: &Store, adapters: &Adapters, now: Millis) -> store::Result<usize> {
    let _one_pass = store.delivery.lock().await;
    let mut delivered = 0;
    loop {
        let batch = store.pending_outbox(now, 200).await?;
        if batch.is_empty() {
            return Ok(delivered);
        }
        let mut progressed = false;
        for p in batch {
            let Some(adapter) = adapters.get(p.message.room.platform()) else {
                // No adapter for that platform here: try again later, when one may be.
                store
                    .mark_failed(p.id, "no adapter is running for this platform", now.plus(backoff(p.attempts)))
                    .await?;
                continue;
            };
            match adapter.send(&p.message).await {
                Ok(()) => {
                    store.mark_delivered(p.id, now).await?;
                    delivered += 1;
                    progressed = true;
                }
                Err(e) => {
                    tracing::warn!(outbox = p.id, key = %p.message.idempotency_key, attempts = p.attempts + 1, error = %e, "delivery failed");
                    let retry = match e {
                        SendError::Temporary(_) => now.plus(backoff(p.attempts)),
                        // Kept, not dropped: visible in the outbox for coordinators.
                        SendError::Permanent(_) => Millis(i64::MAX),
                    };
                    store.mark_failed(p.id, &e.to_string(), retry).await?;
                }
            }
        }
        if !progressed {
            return Ok(delivered);
        }
    }
}
