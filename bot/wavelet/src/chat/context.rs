//! What a chat connection may ask of the running Wavelet, and nothing more: hand in what
//! people said (through the group commit), tell the time, look people and rooms up in the
//! directory, record a refused invite and the direct rooms made or found, and the few
//! reads the platforms' catch-up and pacing need. The runtime's store, workflows and clock stay behind it.
//!
//! Architecture invariant: the code in `chat/` reaches the runtime only through a
//! [`ChatContext`]; it never holds a `Runtime`.

use crate::delivery::ingest::{Ingest, Receipt, SubmitError};
use crate::delivery::{Adapters, deliver_pending};
use crate::runtime::Runtime;
use std::sync::Arc;
use std::time::Duration;
use wavelet_core::config::Person;
use wavelet_core::engine::WorkflowMeta;
use wavelet_core::ledger::{Draft, Record};
use wavelet_core::{Account, Directory, InboundEvent, Millis, Platform};

/// A chat connection's handle on the running Wavelet. Cloning is cheap.
#[derive(Clone)]
pub struct ChatContext {
    rt: Arc<Runtime>,
    ingest: Ingest,
}

impl ChatContext {
    /// The context for the connections of `rt`, handing events to `ingest`.
    pub fn new(rt: Arc<Runtime>, ingest: Ingest) -> ChatContext {
        ChatContext { rt, ingest }
    }

    /// Wavelet's clock.
    pub fn now(&self) -> Millis {
        self.rt.now()
    }

    /// The people, groups and rooms of the configuration.
    pub fn directory(&self) -> &Directory {
        self.rt.directory()
    }

    /// The person an account belongs to, if it is in the directory.
    pub fn person_for(&self, account: &Account) -> Option<&Person> {
        self.rt.directory().person_for(account)
    }

    /// Queues an event and waits until it is committed (or was a duplicate). Until this
    /// returns `Ok`, the platform must not be told the event was taken.
    pub async fn submit(&self, event: InboundEvent) -> Result<(), SubmitError> {
        self.ingest.submit(event).await
    }

    /// Queues an event, waiting only for room in the queue; events queued one after
    /// another are handled in that order. The receipt says when it is committed.
    pub async fn queue(&self, event: InboundEvent) -> Result<Receipt, SubmitError> {
        self.ingest.queue(event).await
    }

    /// Records that Wavelet declined an invite to a room outside its configuration.
    pub async fn record_refused_invite(&self, inviter: String, room: String, direct: bool) {
        let draft = Draft::of(self.rt.now(), inviter, Record::RefusedInvite { room, direct });
        if let Err(e) = self.rt.record(draft).await {
            tracing::warn!(error = %e, "declined invite not recorded");
        }
    }

    /// How many commits the store has made: an event submitted after this count is
    /// answered by a delivery pass that begins after `commits() + 1`.
    pub fn commits(&self) -> u64 {
        self.rt.store().commits()
    }

    /// Waits (at most `at_most`) until a delivery pass that began after `commits` commits
    /// has finished; whether one did.
    pub async fn replies_sent_after(&self, commits: u64, at_most: Duration) -> bool {
        self.rt.passes().sent_after(commits, at_most).await
    }

    /// The commands of the workflows on offer now (Discord registers them as slash
    /// commands).
    pub fn workflow_commands(&self) -> Vec<WorkflowMeta> {
        self.rt.workflows().read().map(|w| w.metas()).unwrap_or_default()
    }

    /// When the last event taken from `platform` was said: where a catch-up after a gap
    /// starts reading history.
    pub async fn last_taken_at(&self, platform: Platform) -> wavelet_store::Result<Option<Millis>> {
        self.rt.store().last_inbox_at(platform).await
    }

    /// The direct room recorded for `account` on `platform`, if any.
    pub async fn direct_room(&self, platform: Platform, account: &str) -> wavelet_store::Result<Option<String>> {
        self.rt.store().direct_room(platform, account).await
    }

    /// Records `room` as the direct room for `account` on `platform`: committed when this
    /// returns, so record it before anything is sent there.
    pub async fn record_direct_room(&self, platform: Platform, account: &str, room: &str) -> wavelet_store::Result<()> {
        self.rt.store().record_direct_room(platform, account, room, self.rt.now()).await
    }

    /// Sends what is waiting for `adapters` now, without the lease a serving process holds:
    /// the console room prints a reply before it reads the next line.
    pub async fn deliver_now(&self, adapters: &Adapters) -> wavelet_store::Result<usize> {
        deliver_pending(&self.rt, adapters, self.rt.now()).await
    }
}
