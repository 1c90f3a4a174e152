//! Group commit: adapters submit inbound events here; one worker takes whatever has
//! queued up (up to a batch) and handles it in one transaction, then tells each submitter
//! its event is committed. When the store goes away the worker keeps the batch and retries
//! with backoff, so nothing is lost, and says so in the log.

use crate::runtime::Runtime;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use wavelet_core::InboundEvent;

type Ack = oneshot::Sender<Result<(), String>>;

/// The handle adapters submit through. Cloning is cheap.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<(InboundEvent, Ack)>,
}

/// Why an event was not taken. The adapter must not acknowledge it to its platform, so
/// the platform delivers it again.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("Wavelet is shutting down; the event was not taken")]
    ShuttingDown,
    #[error("the event could not be handled: {0}")]
    Refused(String),
}

impl Ingest {
    /// Starts the worker. `max_batch` bounds how many events share one transaction.
    pub fn spawn(rt: Arc<Runtime>, max_batch: usize) -> (Ingest, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(max_batch.max(1) * 4);
        let worker = tokio::spawn(work(rt, rx, max_batch.max(1)));
        (Ingest { queue }, worker)
    }

    /// Queues an event and waits until it is committed (or was a duplicate).
    pub async fn submit(&self, event: InboundEvent) -> Result<(), SubmitError> {
        let (ack, done) = oneshot::channel();
        self.queue.send((event, ack)).await.map_err(|_| SubmitError::ShuttingDown)?;
        done.await.map_err(|_| SubmitError::ShuttingDown)?.map_err(SubmitError::Refused)
    }
}

/// Handles a batch on this thread, taken out of the async worker pool for the duration
/// (script evaluation is CPU work), when the runtime has a pool to hand its tasks to.
async fn handle_off_the_workers(rt: &Runtime, events: &[InboundEvent]) -> Vec<crate::store::Result<()>> {
    let handle = tokio::runtime::Handle::current();
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(|| handle.block_on(rt.handle_batch(events)))
    } else {
        rt.handle_batch(events).await
    }
}

async fn work(rt: Arc<Runtime>, mut rx: mpsc::Receiver<(InboundEvent, Ack)>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let mut pending = std::mem::take(&mut batch);
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let events: Vec<InboundEvent> = pending.iter().map(|(e, _)| e.clone()).collect();
            let results = handle_off_the_workers(&rt, &events).await;
            let mut retry = Vec::new();
            for ((event, ack), result) in pending.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        let _ = ack.send(Ok(()));
                    }
                    // The store went away: hold the event and try again; nothing is lost.
                    Err(e) if e.is_transient() => {
                        if !warned {
                            tracing::warn!(error = %e, "store unavailable; holding events and retrying");
                            warned = true;
                        }
                        retry.push((event, ack));
                    }
                    Err(e) => {
                        tracing::error!(event_id = %event.event_id, error = %e, "event could not be handled");
                        let _ = ack.send(Err(e.to_string()));
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            pending = retry;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        if warned {
            tracing::info!("store is back; held events handled");
        }
    }
}
