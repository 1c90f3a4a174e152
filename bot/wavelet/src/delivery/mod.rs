//! The boundary every chat platform implements, and the outbox delivery that drives it.
//! Nothing reaches a chat platform except through here: the runtime writes messages to
//! the outbox in its transaction; [`deliver_pending`] sends them and records delivery.
//!
//! `pass` is one delivery pass (claim, send room by room, record); `service` the loop
//! that runs passes and fires due work while Wavelet runs; `ingest` the group commit that
//! takes inbound events from the chat connections into the runtime.

pub mod ingest;
mod pass;
pub mod service;

pub use crate::runtime::{CLAIM_EVERY, DeliveryPasses};
pub use pass::{CLAIM, DIRECT_FIRST, MAX_ATTEMPTS, SEND_TIMEOUT, backoff, deliver_pending};

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use wavelet_core::{OutboundMessage, Platform};

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
