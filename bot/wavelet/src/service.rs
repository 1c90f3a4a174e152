//! The background work of a running Wavelet: firing what is due (run timers, escalation
//! stages), delivering the outbox, and holding each chat platform's lease, so that with
//! several processes on one PostgreSQL exactly one delivers to each platform and another
//! takes over within about a second of the holder dying.
//!
//! The loop sleeps until the next thing is due, at most [`POLL`]: one indexed query per
//! wake, however many timers are pending (no polling storm). Work this process queues
//! wakes it at once ([`Runtime::wake`]).

use crate::adapter::{Adapters, deliver_pending};
use crate::runtime::Runtime;
use crate::store::Lease;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use wavelet_core::Platform;

/// The longest the loop sleeps: how soon it sees work another process queued, and how
/// soon it takes over a lease whose holder died.
pub const POLL: Duration = Duration::from_secs(1);

/// The running loop; [`Background::stop`] ends it between passes, never in the middle of
/// one (a message sent but not yet marked delivered would be sent again).
pub struct Background {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub fn spawn(rt: Arc<Runtime>, adapters: Adapters) -> Background {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(work(rt, adapters, stopped));
    Background { stop, task }
}

/// The lease that lets one process hold a platform's chat connection.
pub fn lease_name(p: Platform) -> String {
    format!("chat:{p}")
}

/// Passes the background loops of this process have made (for the idle-cost benchmark).
pub static PASSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn work(rt: Arc<Runtime>, adapters: Adapters, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut leases: HashMap<Platform, Lease> = HashMap::new();
    let mut unavailable = false;
    loop {
        PASSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let held = hold_leases(&rt, &adapters, &mut leases).await;
        let pass = async {
            // Delivery first: a reply a step just queued goes out before anything else is
            // looked at. What the timers queue wakes the loop again at once.
            deliver_pending(&rt, &held, rt.clock.now()).await?;
            rt.fire_due_timers().await?;
            crate::faults::point("due.after_pass");
            let next = [rt.store.next_due().await?, rt.store.next_outbox_due().await?].into_iter().flatten().min();
            Ok::<_, crate::store::Error>(next)
        };
        let wait = match pass.await {
            Ok(next) => {
                if unavailable {
                    tracing::info!("store is back; timers and delivery running again");
                    unavailable = false;
                }
                let now = rt.clock.now();
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
            _ = rt.wake.notified() => {}
            _ = stopped.changed() => return,
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
            match rt.store.try_lease(&lease_name(p)).await {
                Ok(Some(l)) => {
                    tracing::info!(platform = %p, instance = %rt.instance, "holding the lease on this chat connection");
                    match rt.store.release_claims_of_others(p, &rt.instance).await {
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
