//! Group commit: adapters submit inbound events here; one worker takes whatever has
//! queued up (up to a batch) and handles it in one transaction, then tells each submitter
//! its event is committed. When the store goes away the worker keeps the batch and retries
//! with backoff, so nothing is lost, and says so in the log.

use crate::runtime::Runtime;
use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use wavelet_core::InboundEvent;
use wavelet_store::Tx;

type Ack = oneshot::Sender<Result<(), String>>;

/// How many queued events share one transaction at most: what Wavelet and its console
/// run with, and what the steps benchmark measures. Under load a batch this size is
/// handled and committed in tens of milliseconds (BENCHMARKS.md); when little is queued,
/// a batch is what is queued.
pub const MAX_BATCH: usize = 256;

/// The handle adapters submit through. Cloning is cheap.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<(InboundEvent, Ack)>,
    /// Tells the worker to stop taking events ([`Ingest::close`]).
    closing: Arc<tokio::sync::watch::Sender<bool>>,
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
        let (closing, closed) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(work(rt, rx, max_batch.max(1), closed));
        (Ingest { queue, closing: Arc::new(closing) }, worker)
    }

    /// Stops taking events, whoever still holds a handle: what is queued already is
    /// handled and committed, and the worker then ends; a submit from now on gets
    /// [`SubmitError::ShuttingDown`] (the platform is not told it was taken, so it is
    /// delivered again after a restart).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Queues an event and waits until it is committed (or was a duplicate).
    pub async fn submit(&self, event: InboundEvent) -> Result<(), SubmitError> {
        self.queue(event).await?.committed().await
    }

    /// Queues an event (waiting only for room in the queue) and returns its receipt:
    /// events queued one after another are handled in that order.
    pub async fn queue(&self, event: InboundEvent) -> Result<Receipt, SubmitError> {
        let (ack, done) = oneshot::channel();
        self.queue.send((event, ack)).await.map_err(|_| SubmitError::ShuttingDown)?;
        Ok(Receipt(done))
    }
}

/// A queued event's receipt.
pub struct Receipt(oneshot::Receiver<Result<(), String>>);

impl Receipt {
    /// Waits until the event is committed (or was a duplicate).
    pub async fn committed(self) -> Result<(), SubmitError> {
        self.0.await.map_err(|_| SubmitError::ShuttingDown)?.map_err(SubmitError::Refused)
    }
}

/// Runs `work` on this thread, taken out of the async worker pool for the duration
/// (handling is CPU work: script evaluation), when the runtime has a pool to hand its other
/// tasks to.
async fn off_the_workers<F: std::future::Future>(work: F) -> F::Output {
    let handle = tokio::runtime::Handle::current();
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(|| handle.block_on(work))
    } else {
        work.await
    }
}

/// Events taken from the queue, each with the submitter waiting for it.
type Batch = Vec<(InboundEvent, Ack)>;

/// The worker: a pipeline of batches. While one batch's transaction commits (in the
/// background: writing its rows is mostly the database's work), the next batch is handled
/// in a transaction that carries on from it (`Tx::commit_and_continue`), so handling and
/// writing overlap. Each event is acknowledged once its batch has committed. Whatever
/// fails (a commit, a handling, or something else committing in between, which voids what
/// was handled on top) goes back through [`one_batch`], in arrival order: the sequential
/// path, which retries while the store is away and isolates an event that is refused.
async fn work(
    rt: Arc<Runtime>,
    mut rx: mpsc::Receiver<(InboundEvent, Ack)>,
    max_batch: usize,
    mut closed: tokio::sync::watch::Receiver<bool>,
) {
    // A batch handled in its transaction, not yet committed.
    let mut handled: Option<(Tx, Batch)> = None;
    // The batch before it, committing in the background; `None` once it has committed and
    // its events are acknowledged, or its events if it did not commit.
    let mut committing: Option<tokio::task::JoinHandle<Option<Batch>>> = None;
    let mut open = true;
    loop {
        let mut next = Vec::with_capacity(max_batch);
        if handled.is_some() {
            // Work in hand: take only what is queued now.
            while next.len() < max_batch {
                match rx.try_recv() {
                    Ok(item) => next.push(item),
                    Err(_) => break,
                }
            }
        } else {
            let taken = tokio::select! {
                taken = rx.recv_many(&mut next, max_batch) => taken,
                // Closing: no more sends; what is queued is still taken, then `recv_many`
                // returns 0 and the loop ends.
                _ = closed.wait_for(|c| *c), if open => {
                    open = false;
                    rx.close();
                    continue;
                }
            };
            if taken == 0 {
                break;
            }
        }
        let Some((mut tx, batch)) = handled.take() else {
            handled = start(&rt, next).await;
            continue;
        };
        // `tx` carries on from the committing batch: that one must have committed first.
        if let Some(c) = committing.take()
            && !settle(&rt, c).await
        {
            redo(&rt, tx, batch, next).await;
            continue;
        }
        if next.is_empty() {
            crate::faults::point("step.before_commit");
            let committed = tx.commit().await;
            finish(&rt, batch, committed).await;
            if !next.is_empty() {
                handled = start(&rt, next).await;
            }
            continue;
        }
        // What `next` will look up is read through `tx`, before it commits: its view keeps
        // what `batch` wrote over what the database still holds, and the carried-on
        // transaction starts from that view. (Even for one event: it then needs no database
        // until `batch` has committed.)
        let events = events_of(&next);
        if off_the_workers(rt.prefetch(&mut tx, &events)).await.is_err() {
            redo(&rt, tx, batch, next).await;
            continue;
        }
        crate::faults::point("step.before_commit");
        let (commit, mut successor) = tx.commit_and_continue();
        let acks = rt.clone();
        committing = Some(tokio::spawn(async move {
            // A panic while committing must not take the batch's events with it.
            let committed = std::panic::AssertUnwindSafe(commit).catch_unwind().await.unwrap_or_else(|_| {
                tracing::error!(events = batch.len(), "a batch's commit panicked");
                Err(wavelet_store::Error::Unavailable("the commit panicked".into()))
            });
            acknowledge_or_return(&acks, batch, committed)
        }));
        match off_the_workers(rt.handle_in(&mut successor, &events)).await {
            Ok(()) => handled = Some((successor, next)),
            Err(e) => {
                // Whatever it was (the batch before failed, something committed in
                // between, an event refused), the sequential path sorts it out.
                tracing::debug!(error = %e, events = next.len(), "a batch handled ahead is handled again");
                drop(successor);
                if let Some(c) = committing.take() {
                    settle(&rt, c).await;
                }
                one_batch(&rt, next).await;
            }
        }
    }
    if let Some(c) = committing.take() {
        settle(&rt, c).await;
    }
}

/// Begins a transaction and handles `batch` in it (a pipeline's first batch); on failure
/// the batch goes the sequential way.
async fn start(rt: &Runtime, batch: Batch) -> Option<(Tx, Batch)> {
    let events = events_of(&batch);
    let handled = off_the_workers(async {
        let mut tx = rt.store().begin().await?;
        if events.len() > 1 {
            rt.prefetch(&mut tx, &events).await?;
        }
        rt.handle_in(&mut tx, &events).await?;
        Ok::<_, wavelet_store::Error>(tx)
    })
    .await;
    match handled {
        Ok(tx) => Some((tx, batch)),
        Err(_) => {
            one_batch(rt, batch).await;
            None
        }
    }
}

/// The events of a batch.
fn events_of(batch: &Batch) -> Vec<InboundEvent> {
    batch.iter().map(|(e, _)| e.clone()).collect()
}

/// Handles two batches again, in order, the sequential way, after dropping `tx` (which
/// releases any lock it holds).
async fn redo(rt: &Runtime, tx: Tx, earlier: Batch, later: Batch) {
    drop(tx);
    one_batch(rt, earlier).await;
    one_batch(rt, later).await;
}

/// After a batch's commit: tells each submitter it is committed, or, if the commit
/// failed, gives the batch back to be handled again.
fn acknowledge_or_return(rt: &Runtime, batch: Batch, committed: wavelet_store::Result<()>) -> Option<Batch> {
    if let Err(e) = committed {
        tracing::warn!(error = %e, events = batch.len(), "a batch did not commit; its events are handled again");
        return Some(batch);
    }
    crate::faults::point("step.after_commit");
    rt.committed();
    for (_, ack) in batch {
        let _ = ack.send(Ok(()));
    }
    None
}

/// Waits for a background commit; `false` if it failed (its events have then been
/// handled again, the sequential way) or was cancelled.
async fn settle(rt: &Runtime, committing: tokio::task::JoinHandle<Option<Batch>>) -> bool {
    match committing.await {
        Ok(None) => true,
        Ok(Some(batch)) => {
            one_batch(rt, batch).await;
            false
        }
        Err(e) => {
            // Cancelled: the runtime is shutting down. Its submitters see the worker gone
            // and do not acknowledge their events to the platform, which delivers them
            // again.
            tracing::warn!(error = %e, "a batch's commit was cancelled");
            false
        }
    }
}

/// After a commit made in the worker: acknowledge, or handle the batch again.
async fn finish(rt: &Runtime, batch: Batch, committed: wavelet_store::Result<()>) {
    if let Some(batch) = acknowledge_or_return(rt, batch, committed) {
        one_batch(rt, batch).await;
    }
}

/// The sequential path: handles a batch in one transaction (each event on its own if
/// that fails), holding it and retrying with backoff while the store is away, and
/// answers each submitter.
async fn one_batch(rt: &Runtime, mut pending: Batch) {
    if pending.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(100);
    let mut warned = false;
    loop {
        let events = events_of(&pending);
        let results = off_the_workers(rt.handle_batch(&events)).await;
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
