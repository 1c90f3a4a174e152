//! Group commit: adapters submit inbound events here; one worker takes whatever has
//! queued up (up to a batch) and handles it in one transaction, then tells each submitter
//! its event is committed. When the store goes away the worker keeps the batch and retries
//! with backoff, so nothing is lost, and says so in the log.

use crate::runtime::Runtime;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use wavelet_core::InboundEvent;

type Ack = oneshot::Sender<()>;

/// The handle adapters submit through. Cloning is cheap.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<(InboundEvent, Ack)>,
}

#[derive(Debug, thiserror::Error)]
#[error("Wavelet is shutting down; the event was not taken (the platform will deliver it again)")]
pub struct ShuttingDown;

impl Ingest {
    /// Starts the worker. `max_batch` bounds how many events share one transaction.
    pub fn spawn(rt: Arc<Runtime>, max_batch: usize) -> (Ingest, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(max_batch.max(1) * 4);
        let worker = tokio::spawn(work(rt, rx, max_batch.max(1)));
        (Ingest { queue }, worker)
    }

    /// Queues an event and waits until it is committed (or was a duplicate).
    pub async fn submit(&self, event: InboundEvent) -> Result<(), ShuttingDown> {
        let (ack, done) = oneshot::channel();
        self.queue.send((event, ack)).await.map_err(|_| ShuttingDown)?;
        done.await.map_err(|_| ShuttingDown)
    }
}

/// Handles a batch on this thread, taken out of the async worker pool for the duration
/// (script evaluation is CPU work), when the runtime has a pool to hand its tasks to.
async fn handle_off_the_workers(rt: &Runtime, events: &[InboundEvent]) -> crate::store::Result<()> {
    let handle = tokio::runtime::Handle::current();
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(|| handle.block_on(rt.handle_events(events)))
    } else {
        rt.handle_events(events).await
    }
}

async fn work(rt: Arc<Runtime>, mut rx: mpsc::Receiver<(InboundEvent, Ack)>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let (events, acks): (Vec<InboundEvent>, Vec<Ack>) = std::mem::take(&mut batch).into_iter().unzip();
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match handle_off_the_workers(&rt, &events).await {
                Ok(()) => break,
                Err(e) if e.is_transient() => {
                    if !warned {
                        tracing::warn!(error = %e, events = events.len(), "store unavailable; holding events and retrying");
                        warned = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    // Refused for good (not a connection problem): each event was tried on
                    // its own by handle_events; the rest committed. Log ids only.
                    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
                    tracing::error!(error = %e, ?ids, "events could not be handled");
                    break;
                }
            }
        }
        if warned {
            tracing::info!(events = events.len(), "store is back; held events committed");
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}
