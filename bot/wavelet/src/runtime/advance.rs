//! Advancing a run: replaying its script against its history up to the next thing it
//! waits for, performing what the replay asked for, and handing a person's next
//! question in a room to the run whose turn it is.

use super::{Runtime, StepHost, question};
use serde_json::json;
use wavelet_core::decide::{self, NextQuestion, Waiting};
use wavelet_core::engine::{Advance, Effect, Outcome, RunContext, Wait, Workflow};
use wavelet_core::ledger::Record;
use wavelet_core::{Millis, RoomRef, keys, render, text};
use wavelet_store::{self as store, RunRow, RunStatus, Tx};

impl Runtime {
    /// Replays a run with its history, performs what it asked for and stores the result.
    pub(super) async fn advance(&self, tx: &mut Tx, run: RunRow, wf: &Workflow, now: Millis) -> store::Result<()> {
        self.advance_late(tx, run, wf, now, None).await
    }

    /// [`Runtime::advance`] for a run woken by a timer that fired late: `late` is added to
    /// what the run says to people in this step, so they know it comes late and why.
    pub(super) async fn advance_late(
        &self,
        tx: &mut Tx,
        mut run: RunRow,
        wf: &Workflow,
        now: Millis,
        late: Option<&str>,
    ) -> store::Result<()> {
        let ctx = RunContext {
            run_id: run.id.clone(),
            workflow: run.workflow.clone(),
            starter: run.starter.clone(),
            group: run.group_id.clone(),
            room: run.room.to_string(),
        };
        let mut next_case = tx.counter("case").await?;
        let mut next_escalation = tx.counter("escalation").await?;
        let history = std::mem::take(&mut run.history);
        let adv: Advance = {
            let mut host =
                StepHost { now, next_case: &mut next_case, next_escalation: &mut next_escalation, dir: &self.dir };
            // CPU work, run inline: the ingest worker runs whole batches off the async
            // workers (see `ingest.rs`), which costs one hand-off per batch, not per step.
            self.engine.advance(wf, &ctx, history, &mut host)
        };
        tx.set_counter("case", next_case);
        tx.set_counter("escalation", next_escalation);
        run.history = adv.history;
        run.updated_at = now;
        let platform = run.room.platform();
        let mut outcome = adv.outcome;
        let mut opened: Vec<&str> = Vec::new();
        for effect in &adv.effects {
            // A script may only file things under cases that exist.
            let case_ref = match effect {
                Effect::OpenCase { case, .. } => {
                    opened.push(&case.id);
                    None
                }
                Effect::Share { case_id, .. }
                | Effect::DeclineShare { case_id, .. }
                | Effect::Note { case_id, .. }
                | Effect::CloseCase { case_id, .. }
                | Effect::Escalate { case_id, .. }
                | Effect::WaitForAck { case_id, .. } => Some(case_id),
                _ => None,
            };
            if let Some(id) = case_ref
                && !opened.contains(&id.as_str())
                && !tx.case_exists(id).await?
            {
                outcome = Outcome::Failed(wavelet_core::engine::ScriptError {
                    file: wf.file.display().to_string(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "there is no case `{}`: share, decline_share, note, close_case, escalate and wait_for_ack need a case that was opened",
                        text::one_line(id)
                    ),
                });
                break;
            }
            self.perform(tx, &run, platform, effect, now, late).await?;
        }
        match outcome {
            // The store answers at once; the run goes on in the same step.
            Outcome::Waiting(Wait::Query { step, query }) => {
                let result = match &query {
                    wavelet_core::engine::Query::OpenCases { group } => json!(tx.open_cases(group).await?),
                };
                if let Some(entry) = run.history.get_mut(step) {
                    entry.result = Some(result);
                }
                return Box::pin(self.advance_late(tx, run, wf, now, late)).await;
            }
            Outcome::Waiting(w) => {
                run.status = RunStatus::Waiting;
                if let Wait::Answer { person, .. } = &w {
                    let room = self.dm_room(person, platform);
                    // Asked now, unless it queues behind another run's question there.
                    let other = match &room {
                        Some(r) => tx.waiting_run_other(person, r, &run.id).await?,
                        None => None,
                    };
                    run.wait_since = decide::ask(other.as_deref()).since(now);
                    run.wait_person = Some(person.clone());
                    run.wait_room = room;
                    run.wait_seq = Some(tx.next_number("wait").await?);
                } else {
                    run.clear_wait();
                }
                run.wait = Some(w);
            }
            Outcome::Finished => {
                run.status = RunStatus::Finished;
                run.clear_wait();
                tracing::info!(run = %run.id, "run finished");
                tx.append(self.draft(&run, None, now, Record::RunFinished {}));
            }
            Outcome::Failed(err) => {
                run.status = RunStatus::Failed;
                run.clear_wait();
                // Log where, never what: the message may quote what someone typed.
                tracing::warn!(run = %run.id, file = %err.file, line = err.line, column = err.column, "run failed");
                run.error = Some(err.to_string());
                tx.append(self.draft(&run, None, now, Record::RunFailed { error: Some(err.to_string()) }));
                let to_starter = render::run_failed_for_person(&run.id);
                self.tell_person(tx, &run, &run.starter, platform, keys::RunNotice::Failed, to_starter, now).await?;
                // Where, not what: the message may quote what someone typed. The ledger
                // entry holds the whole error.
                let place =
                    if err.line == 0 { err.file.clone() } else { format!("{}:{}:{}", err.file, err.line, err.column) };
                let note = render::run_failed_for_coordinator(&run.id, &run.workflow, &place);
                self.tell_coordinators(tx, &run, platform, note, now).await?;
            }
            Outcome::Diverged { step, recorded, requested } => {
                run.status = RunStatus::Diverged;
                run.clear_wait();
                tracing::error!(run = %run.id, step, "run diverged on replay");
                tx.append(self.draft(
                    &run,
                    None,
                    now,
                    Record::RunDiverged { step, recorded: recorded.clone(), requested: requested.clone() },
                ));
                let to_starter = render::run_failed_for_person(&run.id);
                self.tell_person(tx, &run, &run.starter, platform, keys::RunNotice::Failed, to_starter, now).await?;
                let note = render::run_diverged_for_coordinator(&run.id, &run.workflow, step);
                self.tell_coordinators(tx, &run, platform, note, now).await?;
            }
        }
        tx.put_run(&run).await
    }

    /// After a wait on (person, room) ends, asks the next queued question there.
    pub(super) async fn activate_next_wait(
        &self,
        tx: &mut Tx,
        person: &str,
        room: &RoomRef,
        now: Millis,
    ) -> store::Result<()> {
        let Some(mut next) = tx.waiting_run(person, room).await? else { return Ok(()) };
        let Some(Wait::Answer { step, prompt, spec, .. }) = next.wait.clone() else { return Ok(()) };
        let waiting = Waiting { run: &next.id, since: next.wait_since };
        let Some(NextQuestion { starts, .. }) = decide::next_in_line(Some(&waiting), now) else { return Ok(()) };
        let m = question(&next, step, person, room.clone(), &prompt, spec.choices.clone());
        tx.enqueue(&m, Some(&next.id), now).await?;
        if starts.is_some() {
            next.wait_since = starts;
            tx.put_run(&next).await?;
        }
        Ok(())
    }
}
