//! The delivery passes this process has made, counted so that a chat connection can wait
//! for the one that sends what it has just queued.

use std::sync::Mutex;
use std::time::Duration;
use wavelet_core::Millis;

/// How often a delivery pass claims from the outbox itself while commits keep handing it
/// messages (see [`deliver_pending`]).
pub const CLAIM_EVERY: Duration = Duration::from_secs(1);

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
    pub(crate) fn claim_now(&self, handed: usize, now: Millis) -> bool {
        let mut at = self.claimed_at.lock().unwrap_or_else(|e| e.into_inner());
        let due = handed == 0 || at.is_none_or(|t| now >= t.plus(CLAIM_EVERY) || now < t);
        if due {
            *at = Some(now);
        }
        due
    }

    pub(crate) fn begin(&self, commits: u64) -> PassCounted<'_> {
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
pub(crate) struct PassCounted<'a> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
