//! Routing inbound events: each batch in one transaction (group commit), each event
//! recorded once by its platform id, then routed (core `router`) to the run that waits
//! for it, a new run, a cancellation, an acknowledgement, or a polite refusal.

use super::Runtime;
use serde_json::json;
use wavelet_core::decide::{self, Cancel, CancelAsked, RunView};
use wavelet_core::engine::Wait;
use wavelet_core::ledger::{Draft, Record};
use wavelet_core::router::{self, Route, WaitingRun};
use wavelet_core::{InboundEvent, MessageBody, OutboundMessage, keys, message_tag, render, text};
use wavelet_store::{self as store, RunRow, RunStatus, Tx};

/// A run as the cancel decider sees it.
fn view(r: &RunRow) -> RunView<'_> {
    RunView { id: &r.id, workflow: &r.workflow, starter: &r.starter, waiting: r.status == RunStatus::Waiting }
}

impl Runtime {
    /// Handles inbound events in one transaction; if that fails, each on its own, so one
    /// bad event cannot hold back the others. Returns the first error that remains.
    pub async fn handle_events(&self, events: &[InboundEvent]) -> store::Result<()> {
        self.handle_batch(events).await.into_iter().collect()
    }

    /// Handles events in one transaction; if that fails, each on its own, so one bad
    /// event cannot hold back the others. One result per event: `Ok` once it is committed
    /// (or was a redelivery).
    pub async fn handle_batch(&self, events: &[InboundEvent]) -> Vec<store::Result<()>> {
        if events.is_empty() {
            return Vec::new();
        }
        let together = async {
            let mut tx = self.store.begin().await?;
            // One event looks its rows up as cheaply without.
            if events.len() > 1 {
                self.prefetch(&mut tx, events).await?;
            }
            for e in events {
                self.handle_event(&mut tx, e).await?;
            }
            crate::faults::point("step.before_commit");
            tx.commit().await
        };
        let results = match together.await {
            Ok(()) => {
                crate::faults::point("step.after_commit");
                events.iter().map(|_| Ok(())).collect()
            }
            Err(e) if events.len() == 1 => vec![Err(e)],
            // The store went away: every event waits, so they are retried in their order
            // (a later message must never be handled before an earlier one).
            Err(e) if e.is_transient() => {
                let message = e.to_string();
                events.iter().map(|_| Err(store::Error::Unavailable(message.clone()))).collect()
            }
            Err(_) => {
                // One event is refused for good: handle each on its own, in order, so the
                // others go through. Once one hits a passing fault, the rest wait too.
                let mut results = Vec::with_capacity(events.len());
                let mut held: Option<String> = None;
                for e in events {
                    if let Some(m) = &held {
                        results.push(Err(store::Error::Unavailable(m.clone())));
                        continue;
                    }
                    let one = async {
                        let mut tx = self.store.begin().await?;
                        self.handle_event(&mut tx, e).await?;
                        tx.commit().await
                    };
                    let r = one.await;
                    if let Err(err) = &r {
                        if err.is_transient() {
                            held = Some(err.to_string());
                        } else {
                            tracing::error!(event_id = %e.event_id, error = %err, "event not handled");
                        }
                    }
                    results.push(r);
                }
                results
            }
        };
        self.wake.notify_one();
        results
    }

    /// Handles events in `tx` and leaves it open: the ingest's pipeline commits it while
    /// it handles the next batch (see `ingest.rs`). The caller has prefetched.
    pub(crate) async fn handle_in(&self, tx: &mut Tx, events: &[InboundEvent]) -> store::Result<()> {
        for e in events {
            self.handle_event(tx, e).await?;
        }
        Ok(())
    }

    /// Tells the background loop that a commit made outside [`Runtime::handle_batch`]
    /// may have queued messages or set timers.
    pub(crate) fn committed(&self) {
        self.wake.notify_one();
    }

    /// Reads up front, for a whole batch, what handling it will look up event by event.
    pub(crate) async fn prefetch(&self, tx: &mut Tx, events: &[InboundEvent]) -> store::Result<()> {
        let ids: Vec<(String, String)> =
            events.iter().map(|e| (e.room.platform().as_str().to_string(), e.event_id.clone())).collect();
        let mut people: Vec<String> =
            events.iter().filter_map(|e| self.dir.person_for(&e.sender)).map(|p| p.id.clone()).collect();
        people.sort();
        people.dedup();
        tx.prefetch(&ids, &people).await
    }

    pub(super) async fn handle_event(&self, tx: &mut Tx, ev: &InboundEvent) -> store::Result<()> {
        let platform = ev.room.platform().as_str();
        if !tx.record_inbox(platform, &ev.event_id, ev.received_at).await? {
            tracing::debug!(event_id = %ev.event_id, "event seen before; skipped");
            return Ok(());
        }
        let now = self.clock.now();
        let person = self.dir.person_for(&ev.sender);
        let waiting = match person {
            Some(p) => tx.waiting_run(&p.id, &ev.room).await?,
            None => None,
        };
        let metas = self.workflows.read().map(|w| w.metas()).unwrap_or_default();
        let waiting_ref = waiting.as_ref().map(|r| WaitingRun { run_id: r.id.clone() });
        let route = router::route(&self.dir, ev, waiting_ref.as_ref(), metas.iter());
        let reply_key = keys::reply(ev.room.platform(), &ev.event_id);
        let reply = |text: String| OutboundMessage {
            idempotency_key: reply_key.clone(),
            room: ev.room.clone(),
            person: person.map(|p| p.id.clone()),
            body: MessageBody::Text { text },
        };
        match route {
            // Said privately to the bot but nothing to take it as: say so, lose nothing silently.
            Route::Ignore if ev.room.is_direct() => {
                tx.enqueue(&reply(render::nothing_waiting()), None, now).await?;
            }
            Route::Ignore => {}
            Route::RefuseUnknown => {
                tracing::info!(platform = %ev.sender.platform, direct = ev.room.is_direct(), event_id = %ev.event_id, "refused a person not in the directory");
                let refused = Record::RefusedUnknownPerson {
                    account: ev.sender.to_string(),
                    room: ev.room.to_string(),
                    event_id: ev.event_id.clone(),
                };
                tx.append(Draft::of(now, ev.sender.to_string(), refused));
                tx.enqueue(&reply(render::unknown_person()), None, now).await?;
            }
            Route::Help { person } => {
                let p = self.dir.person(&person);
                let offered: Vec<_> = metas
                    .iter()
                    .filter(|m| p.is_some_and(|p| m.allowed_roles.iter().any(|r| p.roles.contains(r))))
                    .collect();
                tx.enqueue(&reply(render::help(offered)), None, now).await?;
            }
            Route::UnknownCommand { command, .. } => {
                let shown: String = text::one_line(&command).chars().take(40).collect();
                tx.enqueue(&reply(render::unknown_command(&shown)), None, now).await?;
            }
            Route::NoGroup { .. } => {
                tx.enqueue(&reply(render::no_group()), None, now).await?;
            }
            Route::NotAllowed { person, command } => {
                let refused = Record::RefusedNotAllowed { command: command.clone(), room: ev.room.to_string() };
                tx.append(Draft::of(now, person, refused));
                tx.enqueue(&reply(render::not_allowed(&command)), None, now).await?;
            }
            Route::Ack { person, case_id } => match case_id {
                Some(id) => self.acknowledge(tx, ev, &person, &id, now).await?,
                None => tx.enqueue(&reply(render::ack_which()), None, now).await?,
            },
            Route::Cancel { person, run_id } => {
                // What the cancel could mean is read first (a run named, or what waits
                // here and elsewhere); core `decide::cancel` says which it means.
                let mut read: Vec<RunRow> = Vec::new();
                let named = decide::named_run(&ev.text);
                let (own, someone_elses) = match named {
                    Some(id) => {
                        read.extend(tx.run(id).await?);
                        (None, None)
                    }
                    None => {
                        let own = tx.open_dialog_of(&person, &ev.room).await?;
                        let someone_elses = match (&own, &run_id) {
                            (None, Some(other)) => Some(tx.run(other).await?.map(|r| r.starter).unwrap_or_default()),
                            _ => None,
                        };
                        if own.is_none() && someone_elses.is_none() {
                            read.extend(tx.waiting_runs_started_by(&person).await?);
                        }
                        (own, someone_elses)
                    }
                };
                let asked = match named {
                    Some(id) => CancelAsked::Named { id, run: read.first().map(view) },
                    None => CancelAsked::Here {
                        own_dialog: own.as_ref().map(view),
                        someone_elses: someone_elses.as_deref(),
                        mine: read.iter().map(view).collect(),
                    },
                };
                let target = match decide::cancel(&person, asked) {
                    Cancel::Run(id) => id.to_string(),
                    Cancel::CannotCancel(id) => {
                        tx.enqueue(&reply(render::cannot_cancel(&text::one_line(id))), None, now).await?;
                        return Ok(());
                    }
                    Cancel::NotYourDialog(starter) => {
                        tx.enqueue(&reply(render::not_your_dialog(starter)), None, now).await?;
                        return Ok(());
                    }
                    Cancel::WhichOne(ids) => {
                        tx.enqueue(&reply(render::which_to_cancel(&ids)), None, now).await?;
                        return Ok(());
                    }
                    Cancel::Nothing => {
                        tx.enqueue(&reply(render::nothing_to_cancel()), None, now).await?;
                        return Ok(());
                    }
                };
                let Some(mut run) = own.into_iter().chain(read).find(|r| r.id == target) else { return Ok(()) };
                let waited_on = run.clear_wait();
                run.status = RunStatus::Cancelled;
                run.updated_at = now;
                tx.put_run(&run).await?;
                // Only the starter cancels, so the run's own draft names the right actor.
                tx.append(self.draft(&run, None, now, Record::RunCancelled { room: ev.room.to_string() }));
                tx.enqueue(&reply(render::cancelled()), Some(&run.id), now).await?;
                if let Some((p, r)) = waited_on {
                    self.activate_next_wait(tx, &p, &r, now).await?;
                }
            }
            Route::Start { person, command, group } => {
                let Some(wf) = self.workflows.read().ok().and_then(|w| w.by_command(&command)) else {
                    tx.enqueue(&reply(render::unknown_command(&command)), None, now).await?;
                    return Ok(());
                };
                // The roles are checked again on the version actually started (a reload
                // may have changed them since routing).
                if !self.dir.person(&person).is_some_and(|p| wf.may_start(&p.roles)) {
                    tx.enqueue(&reply(render::not_allowed(&command)), None, now).await?;
                    return Ok(());
                }
                // One open dialog of their own per person per private room.
                if let Some(p) = self.dir.person(&person)
                    && let Some(dm) = self.dir.direct_room(p, ev.room.platform())
                    && tx.open_dialog_of(&person, &dm).await?.is_some()
                {
                    tx.enqueue(&reply(render::busy(&command)), None, now).await?;
                    return Ok(());
                }
                self.start_run(tx, &wf, &person, &group, ev.room.clone(), &command, None, now).await?;
            }
            Route::Resume { run_id, person } => {
                let Some(mut run) = waiting.filter(|r| r.id == run_id) else { return Ok(()) };
                let Some(Wait::Answer { step, spec, prompt, .. }) = run.wait.clone() else { return Ok(()) };
                // Typed before the question reached them, or a button on another question
                // (an earlier one): not an answer to this one.
                let other_question =
                    ev.on_message.as_ref().is_some_and(|tag| *tag != message_tag(&keys::question(&run.id, step)));
                if other_question {
                    tx.enqueue(&reply(render::on_another_question(&prompt)), Some(&run.id), now).await?;
                    return Ok(());
                }
                if run.wait_since.is_some_and(|since| ev.received_at < since) {
                    tx.enqueue(&reply(render::before_the_question(&prompt)), Some(&run.id), now).await?;
                    return Ok(());
                }
                let answer = match text::validate_answer(&ev.text, &spec, self.max_answer_chars) {
                    Ok(a) => a,
                    Err(refusal) => {
                        tx.enqueue(&reply(refusal.0), Some(&run.id), now).await?;
                        return Ok(());
                    }
                };
                let wf = self.workflow_for(tx, &run).await?;
                let answered = Record::QuestionAnswered { step, answer: answer.clone(), room: ev.room.to_string() };
                tx.append(
                    Draft::of(now, &person, answered).in_run(Some(run.id.clone()), Some(run.script_hash.clone())),
                );
                if let Some(entry) = run.history.get_mut(step) {
                    entry.result = Some(json!(answer));
                }
                let waited_on = run.clear_wait();
                match wf {
                    Some(wf) => self.advance(tx, run, &wf, now).await?,
                    None => self.fail_unloadable(tx, run, now).await?,
                }
                if let Some((p, r)) = waited_on {
                    self.activate_next_wait(tx, &p, &r, now).await?;
                }
            }
        }
        Ok(())
    }
}
