//! What delivery reports back: a share's arrival recorded in the ledger, and a message
//! that cannot be delivered parked and surfaced.

use super::{Runtime, WAVELET};
use wavelet_core::ledger::OutboxMessage;
use wavelet_core::ledger::{Draft, Record};
use wavelet_core::{Millis, keys, render};
use wavelet_store as store;

impl Runtime {
    /// Records that a claimed message was delivered. One room's copy of a share is also
    /// recorded in the ledger (`share.delivered`), in the same transaction: never one
    /// without the other, and once however often the message was sent.
    pub async fn record_delivery(&self, c: &wavelet_store::ClaimedMessage, at: Millis) -> store::Result<()> {
        let Some(case) = &c.share_case else {
            return self.store.mark_delivered(c.id, at).await;
        };
        let mut tx = self.store.begin().await?;
        if tx.mark_delivered(c.id, at).await? {
            let delivered = Record::ShareDelivered(outbox_message(c));
            tx.append(Draft::of(at, WAVELET, delivered).about(Some(case.clone())).in_run(c.run_id.clone(), None));
        }
        tx.commit().await
    }

    /// A message that will not be delivered: parked (kept, never retried), recorded in the
    /// ledger, and every coordinator told, on another platform than the failing one where
    /// they have an account there, all in one transaction.
    /// A notice about a failed notice is recorded only (it would fail the same way).
    pub async fn park_and_surface(
        &self,
        c: &wavelet_store::ClaimedMessage,
        attempts: i32,
        error: &str,
    ) -> store::Result<()> {
        let now = self.clock.now();
        let failing = c.message.room.platform();
        let mut tx = self.store.begin().await?;
        tx.park(c.id, error, now).await?;
        let failed = Record::DeliveryFailed { message: outbox_message(c), attempts, error: error.to_string() };
        tx.append(Draft::of(now, WAVELET, failed).in_run(c.run_id.clone(), None));
        tracing::error!(outbox = c.id, platform = %failing, attempts, "message parked: it could not be delivered");
        if !c.message.idempotency_key.starts_with("failed:") {
            let text = render::delivery_failed_for_coordinator(
                &c.message.idempotency_key,
                &c.message.room.to_string(),
                attempts,
                c.run_id.as_deref(),
            );
            // Where they can, on another platform than the failing one.
            let elsewhere = |p: &wavelet_core::config::Person| {
                let other = p.accounts.iter().find(|a| a.platform != failing).map_or(failing, |a| a.platform);
                self.dir.direct_room(p, other)
            };
            let key = keys::parked(c.id);
            self.queue_for_coordinators(&mut tx, &key, &text, elsewhere, c.run_id.as_deref(), now).await?;
        }
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }
}

/// Which outbox message this was, for the ledger.
fn outbox_message(c: &wavelet_store::ClaimedMessage) -> OutboxMessage {
    OutboxMessage {
        outbox: c.id,
        key: c.message.idempotency_key.clone(),
        room: c.message.room.to_string(),
        run: c.run_id.clone(),
    }
}
