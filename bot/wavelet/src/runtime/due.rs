//! Due work: run timers, escalation stages and schedules, claimed and fired in batches,
//! once across processes; what cannot be fired is put back a minute later.

use super::{DUE_BATCH, Runtime, WAVELET};
use serde_json::json;
use wavelet_core::config::WITNESS_SCHEDULE;
use wavelet_core::engine::{ACK_TIMED_OUT, Wait};
use wavelet_core::escalation::{self as esc};
use wavelet_core::ledger::{Draft, Record};
use wavelet_core::{Millis, render};
use wavelet_store::{self as store, Due, DueTimer, RunStatus, Tx};

impl Runtime {
    /// Fires what is due (run timers, escalation stages, scheduled workflows), earliest
    /// first, in batches of one transaction each. Returns how many fired. Something that
    /// cannot be fired is put back a minute later and logged, so it never holds up what
    /// is due after it.
    pub async fn fire_due_timers(&self) -> store::Result<usize> {
        let mut fired = 0;
        loop {
            let now = self.clock.now();
            // A read first: when nothing is due, no write transaction (and no lock on the
            // ledger's head) is taken.
            if self.store.next_due().await?.is_none_or(|at| at > now) {
                break;
            }
            // On failure: the error, and the item it came from when it came from one.
            let batch = async {
                let mut tx = self.store.begin().await.map_err(|e| (e, None))?;
                let due = tx.claim_due(now, DUE_BATCH).await.map_err(|e| (e, None))?;
                let mut n = 0;
                for d in &due {
                    match self.fire(&mut tx, d, now).await {
                        Ok(true) => n += 1,
                        Ok(false) => {}
                        Err(e) => return Err((e, Some(d.clone()))),
                    }
                }
                if !due.is_empty() {
                    crate::faults::point("due.before_commit");
                    tx.commit().await.map_err(|e| (e, None))?;
                    crate::faults::point("due.after_commit");
                }
                Ok::<_, (store::Error, Option<Due>)>((due.len(), n))
            };
            match batch.await {
                Ok((claimed, n)) => {
                    fired += n;
                    if claimed == 0 {
                        break;
                    }
                }
                Err((e, Some(d))) if !e.is_transient() => self.put_back(&d, now, &e).await?,
                Err((e, _)) => return Err(e),
            }
        }
        if fired > 0 {
            self.wake.notify_one();
        }
        Ok(fired)
    }

    /// Puts back, due a minute from now, something that cannot be fired (its batch was
    /// rolled back, so it is still there as it was).
    pub(super) async fn put_back(&self, d: &Due, now: Millis, error: &store::Error) -> store::Result<()> {
        match d {
            Due::Timer(t) => {
                tracing::error!(run = %t.run_id, step = t.step, error = %error, "timer could not fire; retrying in a minute")
            }
            Due::Escalation(e) => {
                tracing::error!(escalation = %e.id, error = %error, "escalation could not go on; retrying in a minute")
            }
            Due::Schedule(s) if s.id == WITNESS_SCHEDULE => {
                tracing::error!(error = %error, "ledger witness could not be posted; retrying in a minute")
            }
            Due::Schedule(s) => {
                tracing::error!(schedule = %s.id, error = %error, "scheduled workflow could not start; retrying in a minute")
            }
        }
        let mut tx = self.store.begin().await?;
        tx.postpone(d, now.plus(std::time::Duration::from_secs(60))).await?;
        tx.commit().await
    }

    pub(super) async fn fire(&self, tx: &mut Tx, due: &Due, now: Millis) -> store::Result<bool> {
        match due {
            Due::Timer(t) => self.fire_timer(tx, t, now).await,
            Due::Escalation(e) => self.next_stage(tx, (**e).clone(), now).await.map(|()| true),
            Due::Schedule(s) => {
                // Its next time (after now: a schedule missed while Wavelet was down fires
                // once, late, not once per missed time), whatever it starts.
                let next = wavelet_core::schedule::Cron::parse(&s.cron).ok().and_then(|c| c.next_after(now));
                tx.schedule_fired(&s.id, now, next).await?;
                if s.id == WITNESS_SCHEDULE {
                    self.post_witness(tx, s, now).await?;
                } else {
                    self.start_scheduled(tx, s, now).await?;
                }
                Ok(true)
            }
        }
    }

    /// Fires one claimed timer: records it, gives the run its result and advances it.
    /// `false` if the run no longer waits for it.
    pub(super) async fn fire_timer(&self, tx: &mut Tx, t: &DueTimer, now: Millis) -> store::Result<bool> {
        let Some(mut run) = tx.run(&t.run_id).await? else { return Ok(false) };
        let step = usize::try_from(t.step).unwrap_or(usize::MAX);
        let result = match &run.wait {
            _ if run.status != RunStatus::Waiting => return Ok(false),
            Some(Wait::Timer { step: s, .. }) if *s == step => json!(now.0),
            // The deadline of a wait for an acknowledgement came first.
            Some(Wait::Ack { step: s, .. }) if *s == step => {
                tx.remove_ack_wait(&run.id, t.step).await?;
                ACK_TIMED_OUT
            }
            _ => return Ok(false),
        };
        let late_ms = (now.0 - t.due_at.0).max(0);
        let fired = Record::TimerFired { step: t.step, due: t.due_at.rfc3339(), late_ms };
        tx.append(Draft::of(now, WAVELET, fired).in_run(Some(run.id.clone()), Some(run.script_hash.clone())));
        if late_ms > esc::LATE_NOTICE_MS {
            tracing::warn!(run = %run.id, late_ms, "timer fired late");
        }
        if let Some(entry) = run.history.get_mut(step) {
            entry.result = Some(result);
        }
        run.clear_wait();
        let note = (late_ms >= esc::LATE_NOTICE_MS).then(|| render::late_note(t.due_at, late_ms));
        match self.workflow_for(tx, &run).await? {
            Some(wf) => self.advance_late(tx, run, &wf, now, note.as_deref()).await?,
            None => self.fail_unloadable(tx, run, now).await?,
        }
        Ok(true)
    }
}
