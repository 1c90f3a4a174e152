//! The background work of a running Wavelet: firing what is due (run timers, escalation
//! stages), delivering the outbox, and holding each chat platform's lease, so that with
//! several processes on one PostgreSQL exactly one delivers to each platform and another
//! takes over within about a second of the holder dying.
//!
//! The loop sleeps until the next thing it can do is due, at most [`POLL`]: one indexed
//! query per wake, however many timers are pending (no polling storm). Messages it cannot
//! send now (another process holds their platform, or the platform asked us to slow
//! down) do not count as due. Work this process queues wakes it at once
//! ([`Runtime::wake`]).

use crate::delivery::{Adapters, CLAIM, deliver_pending};
use crate::runtime::Runtime;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wavelet_core::Platform;
use wavelet_store::{Claimer, Lease};

/// The longest the loop sleeps: how soon it sees work another process queued, and how
/// soon it takes over a lease whose holder died.
pub const POLL: Duration = Duration::from_secs(1);

/// The running loop; [`Background::stop`] ends it between passes, never in the middle of
/// one (a message sent but not yet marked delivered would be sent again).
pub struct Background {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    passes: Arc<AtomicU64>,
}

impl Background {
    /// Passes the loop has made so far (for the idle-cost benchmark and the tests).
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Stops the loop between passes, giving the pass in flight (its sends) at most
    /// `within` to finish; then drops it. A message sent but not yet recorded as delivered
    /// is sent again by the next start, under the same key, which the platform drops.
    /// Whether the loop ended in time.
    pub async fn stop_within(mut self, within: Duration) -> bool {
        let _ = self.stop.send(true);
        match tokio::time::timeout(within, &mut self.task).await {
            Ok(_) => true,
            Err(_) => {
                self.task.abort();
                false
            }
        }
    }
}

pub fn spawn(rt: Arc<Runtime>, adapters: Adapters) -> Background {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let passes = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(work(rt, adapters, stopped, passes.clone()));
    Background { stop, task, passes }
}

/// The lease that lets one process hold a platform's chat connection.
pub fn lease_name(p: Platform) -> String {
    format!("chat:{p}")
}

async fn work(
    rt: Arc<Runtime>,
    adapters: Adapters,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    passes: Arc<AtomicU64>,
) {
    let mut leases: HashMap<Platform, Lease> = HashMap::new();
    let mut unavailable = false;
    loop {
        passes.fetch_add(1, Ordering::Relaxed);
        let held = hold_leases(&rt, &adapters, &mut leases).await;
        // The steps' commits claim what they queue for these platforms, for this loop: not
        // for one that asked us to slow down (a pass that is told so stops it at once).
        let slowed = rt.slowed_until(rt.now());
        rt.store().claim_at_commit(Some(Claimer {
            owner: rt.instance().to_string(),
            platforms: held.platforms().into_iter().filter(|p| !slowed.contains_key(p)).collect(),
            clock: rt.clock().clone(),
            lease: CLAIM,
        }));
        let pass = async {
            // Delivery first: a reply a step just queued goes out before anything else is
            // looked at. What the timers queue wakes the loop again at once.
            deliver_pending(&rt, &held, rt.now()).await?;
            rt.fire_due_timers().await?;
            crate::faults::point("due.after_pass");
            // The next message due is one this loop may send: on a platform whose lease it
            // holds, not claimed by anyone, and not on a platform that asked us to slow
            // down (that one is due when the wait it asked for ends). Counting the others
            // would wake it for nothing, again and again, while they wait.
            let now = rt.now();
            let slowed = rt.slowed_until(now);
            let open: Vec<Platform> = held.platforms().into_iter().filter(|p| !slowed.contains_key(p)).collect();
            let next = [
                rt.store().next_due().await?,
                rt.store().next_outbox_due(&open).await?,
                slowed.values().min().copied(),
            ]
            .into_iter()
            .flatten()
            .min();
            Ok::<_, wavelet_store::Error>(next)
        };
        let wait = match pass.await {
            Ok(next) => {
                if unavailable {
                    tracing::info!("store is back; timers and delivery running again");
                    unavailable = false;
                }
                let now = rt.now();
                next.map_or(POLL, |at| Duration::from_millis((at.0 - now.0).clamp(0, POLL.as_millis() as i64) as u64))
            }
            Err(e) => {
                if !unavailable {
                    tracing::warn!(error = %e, "store unavailable; timers and delivery will retry");
                    unavailable = true;
                }
                POLL
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = rt.wake().notified() => {}
            _ = stopped.changed() => {
                rt.store().claim_at_commit(None);
                return;
            }
        }
    }
}

/// Takes the leases of the platforms this process has adapters for, keeps checking the
/// ones it holds, and returns the adapters it may deliver through now.
async fn hold_leases(rt: &Runtime, adapters: &Adapters, leases: &mut HashMap<Platform, Lease>) -> Adapters {
    let mut held = Adapters::default();
    for p in adapters.platforms() {
        if let Some(l) = leases.get_mut(&p)
            && !l.check().await
        {
            tracing::warn!(platform = %p, "lost the lease on this chat connection; another process may take it");
            leases.remove(&p);
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = leases.entry(p) {
            match rt.store().try_lease(&lease_name(p)).await {
                Ok(Some(l)) => {
                    tracing::info!(platform = %p, instance = %rt.instance(), "holding the lease on this chat connection");
                    match rt.store().release_claims_of_others(p, rt.instance()).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(platform = %p, messages = n, "took over messages a previous holder had claimed")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "claims of a previous holder not released; they expire on their own")
                        }
                    }
                    slot.insert(l);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(platform = %p, error = %e, "lease not taken"),
            }
        }
        if leases.contains_key(&p)
            && let Some(a) = adapters.get(p)
        {
            held.add(a.clone());
        }
    }
    held
}
