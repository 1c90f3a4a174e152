//! The runtime: turns inbound events and due timers into durable steps. For each it routes
//! (core `router`), advances the run (core `engine`), and writes everything the step did —
//! inbox row, run, case, ledger entries, timers, outbox messages — in one transaction.
//! Several events share one transaction when they arrive together (group commit).

use crate::store::{self, CaseRow, Due, DueTimer, EscalationRow, EscalationStatus, RunRow, RunStatus, Store, Tx};
use crate::workflows::Workflows;
use serde_json::json;
use std::sync::{Arc, Mutex, RwLock};
use wavelet_core::config::WITNESS_SCHEDULE;
use wavelet_core::engine::{
    ACK_TIMED_OUT, Advance, Effect, History, Host, Outcome, RunContext, Wait, Workflow, WorkflowEngine,
};
use wavelet_core::escalation::{self, CaseSummary};
use wavelet_core::ledger::{ChainCheck, Draft, EntryKind, Head, Witness};
use wavelet_core::router::{self, Route, WaitingRun};
use wavelet_core::{
    Directory, InboundEvent, MessageBody, Millis, OutboundMessage, Platform, RoomRef, message_tag, render, roles, text,
};

/// Where time comes from: the system clock, or a simulated one for transcripts.
pub trait Clock: Send + Sync {
    fn now(&self) -> Millis;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<Millis>);

impl ManualClock {
    pub fn new(start: Millis) -> ManualClock {
        ManualClock(Mutex::new(start))
    }

    pub fn advance(&self, d: std::time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t = t.plus(d);
    }
}

impl ManualClock {
    pub fn now_millis(&self) -> Millis {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Runtime {
    pub store: Store,
    pub dir: Arc<Directory>,
    pub workflows: Arc<RwLock<Workflows>>,
    pub engine: Arc<WorkflowEngine>,
    pub clock: Arc<dyn Clock>,
    /// Told after each commit that queued messages or set timers: the background loop wakes.
    pub wake: Arc<tokio::sync::Notify>,
    /// This process, as it claims outbox rows: host, pid and a random part.
    pub instance: String,
    /// Platforms that asked this process to slow down, and until when.
    pub slow_until: Mutex<std::collections::HashMap<Platform, Millis>>,
    /// The delivery passes this process has made: a chat connection can wait for the one
    /// that sends what it just queued.
    pub passes: crate::adapter::DeliveryPasses,
    max_answer_chars: usize,
}

/// The actor recorded for what Wavelet does on its own.
const WAVELET: &str = "wavelet";

struct StepHost<'a> {
    now: Millis,
    next_case: &'a mut i64,
    next_escalation: &'a mut i64,
    dir: &'a Directory,
}

impl Host for StepHost<'_> {
    fn now(&mut self) -> Millis {
        self.now
    }
    fn new_case_id(&mut self) -> String {
        *self.next_case += 1;
        format!("C-{}", self.next_case)
    }
    fn person_exists(&self, id: &str) -> bool {
        self.dir.person(id).is_some()
    }
    fn group_exists(&self, id: &str) -> bool {
        self.dir.group(id).is_some()
    }
    fn policy_exists(&self, id: &str) -> bool {
        self.dir.config().policy(id).is_some()
    }
    fn role_exists(&self, id: &str) -> bool {
        self.dir.config().roles.iter().any(|r| r.id == id)
    }
    fn new_escalation_id(&mut self) -> String {
        *self.next_escalation += 1;
        format!("E-{}", self.next_escalation)
    }
    fn members(&self, group: &str, role: &str) -> Vec<String> {
        let Some(g) = self.dir.group(group) else { return Vec::new() };
        self.dir
            .members(g)
            .filter(|p| role.is_empty() || p.roles.iter().any(|r| r == role))
            .map(|p| p.id.clone())
            .collect()
    }
}

/// How many due timers and escalation stages one transaction fires.
const DUE_BATCH: i64 = 200;

impl Runtime {
    /// The platforms still inside a wait they asked this process for at `now`, and until
    /// when (the waits that have ended are forgotten).
    pub fn slowed_until(&self, now: Millis) -> std::collections::HashMap<Platform, Millis> {
        let mut slow = self.slow_until.lock().unwrap_or_else(|e| e.into_inner());
        slow.retain(|_, until| *until > now);
        slow.clone()
    }

    pub fn new(
        store: Store,
        dir: Arc<Directory>,
        workflows: Arc<RwLock<Workflows>>,
        engine: Arc<WorkflowEngine>,
        clock: Arc<dyn Clock>,
    ) -> Runtime {
        let max_answer_chars = dir.config().limits.max_answer_chars;
        let instance = format!("{}-{}-{:08x}", hostname(), std::process::id(), rand_u32());
        Runtime {
            store,
            dir,
            workflows,
            engine,
            clock,
            wake: Arc::default(),
            instance,
            slow_until: Mutex::default(),
            passes: crate::adapter::DeliveryPasses::default(),
            max_answer_chars,
        }
    }

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
    async fn put_back(&self, d: &Due, now: Millis, error: &store::Error) -> store::Result<()> {
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

    async fn fire(&self, tx: &mut Tx, due: &Due, now: Millis) -> store::Result<bool> {
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

    /// The ledger witness (`[audit]`): posts the chain's head, as this transaction sees it,
    /// into the witness group's rooms, and records that it did (an entry after the one
    /// posted). The message goes out only if this transaction commits, so what it names is
    /// in the chain. It first checks the chain since the last witness; if that does not
    /// verify, it posts an alarm to the group and the coordinators instead, and records it
    /// (`ledger.witness_withheld`), each time it falls due until the chain is mended.
    async fn post_witness(&self, tx: &mut Tx, s: &crate::store::DueSchedule, now: Millis) -> store::Result<()> {
        let head = tx.head().clone();
        if head.seq == 0 {
            // Nothing to witness yet (a running Wavelet records its workflows first, so
            // only a store used by nothing else).
            return Ok(());
        }
        let rooms = self.group_rooms(&s.group_id);
        let platform = self.group_platform(&s.group_id);
        if rooms.is_empty() {
            // The schedule came from another process's configuration, which names a group
            // this one does not know: post nothing, and record nothing as posted.
            tracing::error!(group = %s.group_id, "ledger witness not posted: its group is not in this directory; coordinators told");
            let text = format!(
                "The ledger witness was not posted: its group `{}` is not in this Wavelet's configuration. Check \
                 [audit] witness_group in every Wavelet's configuration.",
                s.group_id
            );
            let key = format!("schedule:{}:{}", s.id, s.due_at.0);
            return self.queue_for_coordinators(tx, &key, &text, |c| self.dm_room(&c.id, platform), None, now).await;
        }
        // A witness vouches for the chain it names: what came since the last one must
        // verify, or it posts an alarm instead (each time it falls due, until mended).
        let since = tx.last_witness().await?.unwrap_or_else(Head::genesis);
        if let Err(fault) = self.check_chain_since(tx, &since).await? {
            tracing::error!(
                seq = fault.seq,
                since = since.seq,
                "ledger does not verify since the last witness; witness withheld, coordinators told"
            );
            let text = format!(
                "Ledger witness WITHHELD, {}: the ledger does not verify since entry {} (the last witnessed): {fault}.\n\
                 Nothing is witnessed until it is mended. Reviewers: run `wavelet audit verify` with the witnesses you \
                 kept.",
                now.rfc3339(),
                since.seq,
            );
            self.queue_witness(tx, s, &rooms, &text, now).await?;
            let key = format!("witness:{}:withheld", s.due_at.0);
            self.queue_for_coordinators(tx, &key, &text, |c| self.dm_room(&c.id, platform), None, now).await?;
            tx.append(Draft {
                at: now,
                kind: EntryKind::LedgerWitnessWithheld,
                case_id: None,
                run_id: None,
                actor: WAVELET.to_string(),
                script_hash: None,
                content: json!({ "since": since.seq, "fault_seq": fault.seq, "problem": fault.problem, "group": s.group_id }),
            });
            return Ok(());
        }
        let witness = Witness { seq: head.seq, hash: head.hash.clone() };
        let text = format!(
            "Ledger witness, {}: entry {} has hash {}.\nKeep this message. Reviewers can check the ledger \
            still holds what it held now with `wavelet audit verify --witness {witness}`.",
            now.rfc3339(),
            head.seq,
            head.hash,
        );
        self.queue_witness(tx, s, &rooms, &text, now).await?;
        tx.append(Draft {
            at: now,
            kind: EntryKind::LedgerWitnessed,
            case_id: None,
            run_id: None,
            actor: WAVELET.to_string(),
            script_hash: None,
            content: json!({
                "seq": head.seq,
                "hash": head.hash,
                "group": s.group_id,
                "rooms": rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            }),
        });
        tracing::info!(seq = head.seq, group = %s.group_id, "ledger witness posted");
        Ok(())
    }

    /// Checks the committed chain from `since` to where it ended when `tx` began, a page at
    /// a time (the first witness checks the whole chain, while holding the chain's lock),
    /// and that no content is stored past that end.
    async fn check_chain_since(
        &self,
        tx: &mut Tx,
        since: &Head,
    ) -> store::Result<Result<wavelet_core::ledger::VerifyReport, wavelet_core::ledger::ChainFault>> {
        const PAGE: i64 = 10_000;
        let end = tx.begun_at().clone();
        let erasures = tx.erasures_since(since.seq).await?;
        let mut check = ChainCheck::new(since.clone(), erasures, &[]);
        let mut after = since.seq;
        loop {
            let page = tx.ledger_page(after, PAGE).await?;
            let Some(last) = page.last() else {
                let report = check.finish(Some(&end));
                // Content planted past the head would stop the append that reaches it.
                if report.is_ok()
                    && let Some(seq) = tx.content_after(end.seq).await?
                {
                    return Ok(Err(crate::audit::content_ahead(seq)));
                }
                return Ok(report);
            };
            after = last.link.seq;
            if let Err(fault) = page.iter().try_for_each(|e| check.next(e)) {
                return Ok(Err(fault));
            }
        }
    }

    /// Queues the witness's `text` to each of its group's rooms.
    async fn queue_witness(
        &self,
        tx: &mut Tx,
        s: &crate::store::DueSchedule,
        rooms: &[RoomRef],
        text: &str,
        now: Millis,
    ) -> store::Result<()> {
        for room in rooms {
            let m = OutboundMessage {
                idempotency_key: format!("witness:{}:{room}", s.due_at.0),
                room: room.clone(),
                person: None,
                body: MessageBody::Text { text: text.to_string() },
            };
            tx.enqueue(&m, None, now).await?;
        }
        Ok(())
    }

    /// Starts a scheduled workflow, once (its next time is set by [`Runtime::fire`]).
    async fn start_scheduled(&self, tx: &mut Tx, s: &crate::store::DueSchedule, now: Millis) -> store::Result<()> {
        let late_ms = (now.0 - s.due_at.0).max(0);
        let wf = self.workflows.read().ok().and_then(|w| w.by_command(&s.workflow));
        let room = self.dir.group(&s.group_id).and_then(|g| g.rooms.first().cloned());
        let (Some(wf), Some(room)) = (wf, room) else {
            tracing::error!(schedule = %s.id, "scheduled workflow is not loaded; coordinators told");
            let text = format!(
                "Schedule `{}` could not start workflow `{}`: no loaded workflow has that command. `wavelet check` lists them.",
                s.id, s.workflow
            );
            let platform = self.group_platform(&s.group_id);
            let key = format!("schedule:{}:{}", s.id, s.due_at.0);
            self.queue_for_coordinators(tx, &key, &text, |c| self.dm_room(&c.id, platform), None, now).await?;
            return Ok(());
        };
        let origin = json!({ "schedule": s.id, "due": s.due_at.rfc3339(), "late_ms": late_ms });
        self.start_run(tx, &wf, WAVELET, &s.group_id, room, &s.workflow, origin, now).await
    }

    /// Starts a run of `wf` for `starter` (a person, or Wavelet itself for schedules) on
    /// behalf of `group`, and advances it to its first wait.
    #[allow(clippy::too_many_arguments)]
    async fn start_run(
        &self,
        tx: &mut Tx,
        wf: &Workflow,
        starter: &str,
        group: &str,
        room: RoomRef,
        command: &str,
        origin: serde_json::Value,
        now: Millis,
    ) -> store::Result<()> {
        tx.save_script(&wf.hash, &wf.name, &wf.source, now).await?;
        let id = format!("R-{}", tx.next_number("run").await?);
        tracing::info!(run = %id, workflow = %wf.name, version = %&wf.hash[..12], "run started");
        let run = RunRow {
            id: id.clone(),
            workflow: wf.name.clone(),
            script_hash: wf.hash.clone(),
            status: RunStatus::Waiting,
            starter: starter.to_string(),
            group_id: group.to_string(),
            room: room.clone(),
            history: History::new(),
            wait: None,
            wait_person: None,
            wait_room: None,
            wait_seq: None,
            wait_since: None,
            error: None,
            created_at: now,
            updated_at: now,
        };
        let mut content = json!({ "workflow": wf.name, "command": command, "group": group, "room": room.to_string() });
        if let (Some(c), Some(o)) = (content.as_object_mut(), origin.as_object()) {
            c.extend(o.clone());
        }
        tx.append(Draft {
            at: now,
            kind: EntryKind::RunStarted,
            case_id: None,
            run_id: Some(id),
            actor: starter.to_string(),
            script_hash: Some(wf.hash.clone()),
            content,
        });
        self.advance(tx, run, wf, now).await
    }

    async fn handle_event(&self, tx: &mut Tx, ev: &InboundEvent) -> store::Result<()> {
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
        let reply_key = format!("re:{platform}:{}", ev.event_id);
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
                tx.append(Draft {
                    at: now,
                    kind: EntryKind::RefusedUnknownPerson,
                    case_id: None,
                    run_id: None,
                    actor: ev.sender.to_string(),
                    script_hash: None,
                    content: json!({ "account": ev.sender.to_string(), "room": ev.room.to_string(), "event_id": ev.event_id }),
                });
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
                tx.append(Draft {
                    at: now,
                    kind: EntryKind::RefusedNotAllowed,
                    case_id: None,
                    run_id: None,
                    actor: person,
                    script_hash: None,
                    content: json!({ "command": command, "room": ev.room.to_string() }),
                });
                tx.enqueue(&reply(render::not_allowed(&command)), None, now).await?;
            }
            Route::Ack { person, case_id } => match case_id {
                Some(id) => self.acknowledge(tx, ev, &person, &id, now).await?,
                None => tx.enqueue(&reply(render::ack_which()), None, now).await?,
            },
            Route::Cancel { person, run_id } => {
                // `!cancel R-3` names a run; plain `cancel` means the person's own dialog
                // here, else their one waiting run anywhere.
                let named = ev.text.split_whitespace().nth(1).filter(|w| w.starts_with("R-")).map(str::to_string);
                let target = if let Some(id) = named {
                    match tx.run(&id).await? {
                        Some(r) if r.starter == person && r.status == RunStatus::Waiting => Some(r),
                        _ => {
                            tx.enqueue(&reply(render::cannot_cancel(&text::one_line(&id))), None, now).await?;
                            return Ok(());
                        }
                    }
                } else if let Some(own) = tx.open_dialog_of(&person, &ev.room).await? {
                    Some(own)
                } else if let Some(other) = run_id {
                    // A question from someone else's workflow: not theirs to end.
                    let starter = tx.run(&other).await?.map(|r| r.starter).unwrap_or_default();
                    tx.enqueue(&reply(render::not_your_dialog(&starter)), None, now).await?;
                    return Ok(());
                } else {
                    let mut mine = tx.waiting_runs_started_by(&person).await?;
                    match mine.len() {
                        0 => None,
                        1 => mine.pop(),
                        _ => {
                            let ids: Vec<String> = mine.iter().map(|r| format!("{} ({})", r.id, r.workflow)).collect();
                            tx.enqueue(&reply(render::which_to_cancel(&ids)), None, now).await?;
                            return Ok(());
                        }
                    }
                };
                let Some(mut run) = target else {
                    tx.enqueue(&reply(render::nothing_to_cancel()), None, now).await?;
                    return Ok(());
                };
                let waited_on = run.clear_wait();
                run.status = RunStatus::Cancelled;
                run.updated_at = now;
                tx.put_run(&run).await?;
                // Only the starter cancels, so the run's own draft names the right actor.
                tx.append(self.draft(&run, EntryKind::RunCancelled, None, now, json!({ "room": ev.room.to_string() })));
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
                self.start_run(tx, &wf, &person, &group, ev.room.clone(), &command, json!({}), now).await?;
            }
            Route::Resume { run_id, person } => {
                let Some(mut run) = waiting.filter(|r| r.id == run_id) else { return Ok(()) };
                let Some(Wait::Answer { step, spec, prompt, .. }) = run.wait.clone() else { return Ok(()) };
                // Typed before the question reached them, or a button on another question
                // (an earlier one): not an answer to this one.
                let other_question =
                    ev.on_message.as_ref().is_some_and(|tag| *tag != message_tag(&question_key(&run.id, step)));
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
                tx.append(Draft {
                    at: now,
                    kind: EntryKind::QuestionAnswered,
                    case_id: None,
                    run_id: Some(run.id.clone()),
                    actor: person.clone(),
                    script_hash: Some(run.script_hash.clone()),
                    content: json!({ "step": step, "answer": answer, "room": ev.room.to_string() }),
                });
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

    /// Fires one claimed timer: records it, gives the run its result and advances it.
    /// `false` if the run no longer waits for it.
    async fn fire_timer(&self, tx: &mut Tx, t: &DueTimer, now: Millis) -> store::Result<bool> {
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
        tx.append(Draft {
            at: now,
            kind: EntryKind::TimerFired,
            case_id: None,
            run_id: Some(run.id.clone()),
            actor: WAVELET.into(),
            script_hash: Some(run.script_hash.clone()),
            content: json!({ "step": t.step, "due": t.due_at.rfc3339(), "late_ms": late_ms }),
        });
        if late_ms > escalation::LATE_NOTICE_MS {
            tracing::warn!(run = %run.id, late_ms, "timer fired late");
        }
        if let Some(entry) = run.history.get_mut(step) {
            entry.result = Some(result);
        }
        run.clear_wait();
        let note = (late_ms >= escalation::LATE_NOTICE_MS).then(|| render::late_note(t.due_at, late_ms));
        match self.workflow_for(tx, &run).await? {
            Some(wf) => self.advance_late(tx, run, &wf, now, note.as_deref()).await?,
            None => self.fail_unloadable(tx, run, now).await?,
        }
        Ok(true)
    }

    /// The platform an escalation reaches people on: its group's first room's.
    fn group_platform(&self, group: &str) -> Platform {
        self.dir.group(group).and_then(|g| g.rooms.first()).map_or(Platform::Console, |r| r.platform())
    }

    async fn case_summary(&self, tx: &mut Tx, case_id: &str) -> store::Result<CaseSummary> {
        let c = tx.case(case_id).await?;
        Ok(CaseSummary {
            id: case_id.to_string(),
            category: c.as_ref().map_or_else(|| "unknown".into(), |c| c.category.clone()),
            risk: c.map_or_else(|| "unknown".into(), |c| c.risk),
        })
    }

    /// Notifies the escalation's current stage and sets when the next one is due.
    /// `due` is when this stage was due: a late stage says how late it is.
    async fn notify_stage(&self, tx: &mut Tx, e: &mut EscalationRow, due: Millis, now: Millis) -> store::Result<()> {
        let Some(stage) = e.plan.get(e.stage).cloned() else { return Ok(()) };
        let case = self.case_summary(tx, &e.case_id).await?;
        let to = escalation::recipients(&self.dir, &stage, &e.group_id);
        let late_ms = (now.0 - due.0).max(0);
        let text = escalation::notice(&e.id, &e.policy, &stage, &case, late_ms, due);
        let platform = self.group_platform(&e.group_id);
        for p in &to.people {
            if let Some(room) = self.dm_room(p, platform) {
                let m = OutboundMessage {
                    idempotency_key: format!("esc:{}:{}:{p}", e.id, e.stage),
                    room,
                    person: Some(p.clone()),
                    body: MessageBody::Escalation { text: text.clone(), case_id: e.case_id.clone() },
                };
                tx.enqueue(&m, Some(&e.run_id), now).await?;
            }
            if !e.notified.contains(p) {
                e.notified.push(p.clone());
            }
        }
        for (i, room) in to.rooms.iter().enumerate() {
            let m = OutboundMessage {
                idempotency_key: format!("esc:{}:{}:room:{i}", e.id, e.stage),
                room: room.clone(),
                person: None,
                body: MessageBody::Escalation { text: text.clone(), case_id: e.case_id.clone() },
            };
            tx.enqueue(&m, Some(&e.run_id), now).await?;
        }
        tracing::info!(escalation = %e.id, case = %e.case_id, stage = e.stage + 1, late_ms, "escalation notified");
        tx.append(Draft {
            at: now,
            kind: EntryKind::EscalationNotified,
            case_id: Some(e.case_id.clone()),
            run_id: Some(e.run_id.clone()),
            actor: WAVELET.into(),
            script_hash: None,
            content: json!({
                "escalation": e.id,
                "policy": e.policy,
                "stage": e.stage + 1,
                "level": stage.level,
                "round": stage.round,
                "final": stage.is_final,
                "people": to.people,
                "rooms": to.rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                "text": text,
                "due": due.rfc3339(),
                "late_ms": late_ms,
            }),
        });
        if to.people.is_empty() && to.rooms.is_empty() {
            // Nobody to tell is itself something to tell: the coordinators fix the policy.
            tracing::warn!(escalation = %e.id, stage = e.stage + 1, "escalation stage reached nobody");
            let note = format!(
                "Escalation {} of {} (policy `{}`) reached nobody at level {}: nobody in group `{}` matches its notify list. Please acknowledge or act on {} directly, and check the policy.",
                e.id, e.case_id, e.policy, stage.level, e.group_id, e.case_id
            );
            let key = format!("esc:{}:{}:nobody", e.id, e.stage);
            self.queue_for_coordinators(tx, &key, &note, |c| self.dm_room(&c.id, platform), Some(&e.run_id), now)
                .await?;
        }
        e.next_at = stage.wait_ms.map(|w| now.plus(std::time::Duration::from_millis(w)));
        Ok(())
    }

    /// Moves a claimed escalation on to its next stage.
    async fn next_stage(&self, tx: &mut Tx, claimed: EscalationRow, now: Millis) -> store::Result<()> {
        // As it is now: something earlier in this batch may have closed its case or
        // acknowledged it since it was claimed.
        let Some(mut e) = tx.escalation(&claimed.id).await? else { return Ok(()) };
        if e.status != EscalationStatus::Active || e.next_at.is_none_or(|at| at > now) {
            return Ok(());
        }
        let due = e.next_at.unwrap_or(now);
        if e.stage + 1 >= e.plan.len() {
            e.next_at = None;
            return tx.update_escalation(&e).await;
        }
        e.stage += 1;
        self.notify_stage(tx, &mut e, due, now).await?;
        tx.update_escalation(&e).await
    }

    /// `ack C-42`: stops the case's escalations, resumes runs waiting for it, and tells
    /// the person who raised it. Late, repeated and refused acknowledgements are recorded.
    async fn acknowledge(
        &self,
        tx: &mut Tx,
        ev: &InboundEvent,
        person: &str,
        case_id: &str,
        now: Millis,
    ) -> store::Result<()> {
        let platform = ev.room.platform();
        let reply_key = format!("re:{platform}:{}", ev.event_id);
        let say = |to: &str, key: String, text: String| {
            self.dm_room(to, platform).map(|room| OutboundMessage {
                idempotency_key: key,
                room,
                person: Some(to.to_string()),
                body: MessageBody::Text { text },
            })
        };
        let reply = |text: String| OutboundMessage {
            idempotency_key: reply_key.clone(),
            room: ev.room.clone(),
            person: Some(person.to_string()),
            body: MessageBody::Text { text },
        };
        let Some(case) = tx.case(case_id).await? else {
            let shown: String = text::one_line(case_id).chars().take(40).collect();
            tx.enqueue(&reply(render::ack_no_case(&shown)), None, now).await?;
            return Ok(());
        };
        let mut escalations = tx.escalations_of(case_id).await?;
        let is_lead = self
            .dir
            .group(&case.group_id)
            .is_some_and(|g| self.dir.members_with_role(g, roles::LEAD).any(|p| p.id == person));
        let was_notified = escalations.iter().any(|e| e.notified.iter().any(|p| p == person));
        let draft = |kind: EntryKind, content: serde_json::Value| Draft {
            at: now,
            kind,
            case_id: Some(case_id.to_string()),
            run_id: None,
            actor: person.to_string(),
            script_hash: None,
            content,
        };
        if !is_lead && !was_notified {
            tracing::info!(case = %case_id, "acknowledgement refused");
            tx.append(draft(EntryKind::AcknowledgementRefused, json!({ "room": ev.room.to_string() })));
            tx.enqueue(&reply(render::ack_not_allowed(case_id)), None, now).await?;
            return Ok(());
        }
        // Runs waiting for this acknowledgement (stale waits of ended runs are dropped).
        let mut resumed = Vec::new();
        for (run_id, step) in tx.take_ack_waits(case_id).await? {
            if let Some(run) = tx.run(&run_id).await?
                && run.status == RunStatus::Waiting
                && matches!(&run.wait, Some(Wait::Ack { step: s, .. }) if *s as i64 == step)
            {
                resumed.push((run, step));
            }
        }
        let active: Vec<&mut EscalationRow> =
            escalations.iter_mut().filter(|e| e.status == EscalationStatus::Active).collect();
        let label = self.label(person);
        if active.is_empty() && resumed.is_empty() {
            let last = last_ack(&escalations);
            tx.append(draft(
                EntryKind::AcknowledgementLate,
                json!({ "room": ev.room.to_string(), "already_by": last.map(|l| l.0.clone()), "already_at": last.map(|l| l.1.rfc3339()) }),
            ));
            let text = match last {
                Some((by, at)) => render::ack_late(case_id, &self.label(by), at),
                None => render::ack_nothing_pending(case_id),
            };
            tx.enqueue(&reply(text), None, now).await?;
            return Ok(());
        }
        let mut stopped = Vec::new();
        let mut others: Vec<String> = Vec::new();
        let mut since: Option<Millis> = None;
        for e in active {
            e.status = EscalationStatus::Acknowledged;
            e.acked_by = Some(person.to_string());
            e.acked_at = Some(now);
            e.next_at = None;
            since = Some(since.map_or(e.started_at, |s: Millis| s.min(e.started_at)));
            stopped.push(json!({ "escalation": e.id, "stage": e.stage + 1, "after_ms": now.0 - e.started_at.0 }));
            for p in &e.notified {
                if !others.contains(p) {
                    others.push(p.clone());
                }
            }
            tx.update_escalation(e).await?;
        }
        tracing::info!(case = %case_id, escalations = stopped.len(), runs = resumed.len(), "case acknowledged");
        tx.append(draft(
            EntryKind::CaseAcknowledged,
            json!({
                "room": ev.room.to_string(),
                "escalations": stopped,
                "runs": resumed.iter().map(|(r, _)| r.id.clone()).collect::<Vec<_>>(),
            }),
        ));
        tx.enqueue(&reply(render::ack_thanks(case_id)), None, now).await?;
        let raiser = tx.run(&case.run_id).await?.map(|r| r.starter);
        if let Some(raiser) = raiser.as_deref().filter(|r| *r != person) {
            let text = render::ack_for_raiser(case_id, &label, now, since.map(|s| now.0 - s.0));
            if let Some(m) = say(raiser, format!("ack:{platform}:{}:{raiser}", ev.event_id), text) {
                tx.enqueue(&m, Some(&case.run_id), now).await?;
            }
        }
        for p in others.iter().filter(|p| p.as_str() != person && Some(p.as_str()) != raiser.as_deref()) {
            if let Some(m) =
                say(p, format!("ack:{platform}:{}:{p}", ev.event_id), render::ack_for_others(case_id, &label))
            {
                tx.enqueue(&m, Some(&case.run_id), now).await?;
            }
        }
        for (mut run, step) in resumed {
            tx.take_timer(&run.id, step).await?;
            if let Some(entry) = run.history.get_mut(step as usize) {
                entry.result = Some(json!({ "by": person, "at": now.0 }));
            }
            run.clear_wait();
            match self.workflow_for(tx, &run).await? {
                Some(wf) => self.advance(tx, run, &wf, now).await?,
                None => self.fail_unloadable(tx, run, now).await?,
            }
        }
        Ok(())
    }

    /// A person as others read them in a message: name and agency.
    fn label(&self, person: &str) -> String {
        match self.dir.person(person) {
            Some(p) => {
                let agency = self.dir.config().agencies.iter().find(|a| a.id == p.agency);
                render::person_label(p, agency)
            }
            None => person.to_string(),
        }
    }

    /// The version a run is pinned to: from memory, or compiled from the store.
    async fn workflow_for(&self, tx: &mut Tx, run: &RunRow) -> store::Result<Option<Arc<Workflow>>> {
        if let Some(wf) = self.workflows.read().ok().and_then(|w| w.by_hash(&run.script_hash)) {
            return Ok(Some(wf));
        }
        let Some((name, source)) = tx.script_source(&run.script_hash).await? else { return Ok(None) };
        let path = self.dir.config().workflows.dir.join(format!("{name}.rhai"));
        match self.engine.compile(&name, &path, &source) {
            Ok(wf) => {
                let wf = Arc::new(wf);
                if let Ok(mut w) = self.workflows.write() {
                    w.remember(wf.clone());
                }
                Ok(Some(wf))
            }
            Err(e) => {
                tracing::error!(run = %run.id, error = %e, "pinned workflow version no longer compiles");
                Ok(None)
            }
        }
    }

    async fn fail_unloadable(&self, tx: &mut Tx, mut run: RunRow, now: Millis) -> store::Result<()> {
        let platform = run.room.platform();
        let to_starter = render::run_failed_for_person(&run.id);
        self.tell_person(tx, &run, &run.starter, platform, "failed", to_starter, now).await?;
        let note = render::run_failed_for_coordinator(&run.id, &run.workflow, "its pinned version could not be loaded");
        self.tell_coordinators(tx, &run, platform, note, now).await?;
        run.status = RunStatus::Failed;
        run.error = Some("the workflow version this run is pinned to could not be loaded".into());
        run.updated_at = now;
        tx.put_run(&run).await?;
        tx.append(Draft {
            at: now,
            kind: EntryKind::RunFailed,
            case_id: None,
            run_id: Some(run.id.clone()),
            actor: WAVELET.into(),
            script_hash: Some(run.script_hash.clone()),
            content: json!({ "error": run.error }),
        });
        Ok(())
    }

    /// Replays a run with its history, performs what it asked for and stores the result.
    async fn advance(&self, tx: &mut Tx, run: RunRow, wf: &Workflow, now: Millis) -> store::Result<()> {
        self.advance_late(tx, run, wf, now, None).await
    }

    /// [`Runtime::advance`] for a run woken by a timer that fired late: `late` is added to
    /// what the run says to people in this step, so they know it comes late and why.
    async fn advance_late(
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
                    let queued = match &room {
                        Some(r) => tx.waiting_run_other(person, r, &run.id).await?.is_some(),
                        None => false,
                    };
                    run.wait_since = if queued { None } else { Some(now) };
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
                tx.append(self.draft(&run, EntryKind::RunFinished, None, now, json!({})));
            }
            Outcome::Failed(err) => {
                run.status = RunStatus::Failed;
                run.clear_wait();
                // Log where, never what: the message may quote what someone typed.
                tracing::warn!(run = %run.id, file = %err.file, line = err.line, column = err.column, "run failed");
                run.error = Some(err.to_string());
                tx.append(self.draft(&run, EntryKind::RunFailed, None, now, json!({ "error": err.to_string() })));
                let to_starter = render::run_failed_for_person(&run.id);
                self.tell_person(tx, &run, &run.starter, platform, "failed", to_starter, now).await?;
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
                    EntryKind::RunDiverged,
                    None,
                    now,
                    json!({ "step": step, "recorded": recorded, "requested": requested }),
                ));
                let to_starter = render::run_failed_for_person(&run.id);
                self.tell_person(tx, &run, &run.starter, platform, "failed", to_starter, now).await?;
                let note = render::run_diverged_for_coordinator(&run.id, &run.workflow, step);
                self.tell_coordinators(tx, &run, platform, note, now).await?;
            }
        }
        tx.put_run(&run).await
    }

    fn draft(
        &self,
        run: &RunRow,
        kind: EntryKind,
        case_id: Option<String>,
        at: Millis,
        content: serde_json::Value,
    ) -> Draft {
        Draft {
            at,
            kind,
            case_id,
            run_id: Some(run.id.clone()),
            actor: run.starter.clone(),
            script_hash: Some(run.script_hash.clone()),
            content,
        }
    }

    fn dm_room(&self, person: &str, platform: Platform) -> Option<RoomRef> {
        self.dir.person(person).and_then(|p| self.dir.direct_room(p, platform))
    }

    async fn perform(
        &self,
        tx: &mut Tx,
        run: &RunRow,
        platform: Platform,
        effect: &Effect,
        now: Millis,
        late: Option<&str>,
    ) -> store::Result<()> {
        // What people read; the ledger keeps what the script said.
        let said = |text: &str| match late {
            Some(note) => format!("{text}{note}"),
            None => text.to_string(),
        };
        match effect {
            Effect::Ask { step, person, prompt, spec } => {
                let room = self.dm_room(person, platform);
                tx.append(self.draft(
                    run,
                    EntryKind::QuestionAsked,
                    None,
                    now,
                    json!({ "step": step, "to": person, "room": room.as_ref().map(|r| r.to_string()), "prompt": prompt, "choices": spec.choices }),
                ));
                let Some(room) = room else { return Ok(()) };
                // Questions to one person in one room are asked one at a time.
                if tx.waiting_run_other(person, &room, &run.id).await?.is_none() {
                    tx.enqueue(
                        &question(run, *step, person, room, &said(prompt), spec.choices.clone()),
                        Some(&run.id),
                        now,
                    )
                    .await?;
                } else {
                    let notice = OutboundMessage {
                        idempotency_key: format!("run:{}:{step}:queued", run.id),
                        room,
                        person: Some(person.clone()),
                        body: MessageBody::Text { text: render::question_queued() },
                    };
                    tx.enqueue(&notice, Some(&run.id), now).await?;
                }
            }
            Effect::Tell { step, person, text } => {
                tx.append(self.draft(
                    run,
                    EntryKind::MessageTold,
                    None,
                    now,
                    json!({ "step": step, "to": person, "text": text }),
                ));
                if let Some(room) = self.dm_room(person, platform) {
                    let m = OutboundMessage {
                        idempotency_key: format!("run:{}:{step}", run.id),
                        room,
                        person: Some(person.clone()),
                        body: MessageBody::Text { text: said(text) },
                    };
                    tx.enqueue(&m, Some(&run.id), now).await?;
                }
            }
            Effect::Send { step, group, text } => {
                let rooms = self.group_rooms(group);
                tx.append(self.draft(
                    run,
                    EntryKind::MessageSent,
                    None,
                    now,
                    json!({ "step": step, "group": group, "rooms": rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>(), "text": text }),
                ));
                self.post_to_rooms(tx, run, *step, &rooms, &said(text), None, now).await?;
            }
            Effect::Share { step, group, case_id, text, purpose, basis, consent } => {
                let rooms = self.group_rooms(group);
                let recipients = self.recipients(group);
                tx.append(self.draft(
                    run,
                    EntryKind::Share,
                    Some(case_id.clone()),
                    now,
                    json!({
                        "step": step,
                        "group": group,
                        "what": text,
                        "recipients": recipients,
                        "rooms": rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                        "purpose": purpose,
                        "lawful_basis": basis,
                        "consent": consent,
                        "decided_by": run.starter,
                        "workflow": run.workflow,
                    }),
                ));
                self.post_to_rooms(tx, run, *step, &rooms, text, Some(case_id), now).await?;
            }
            Effect::DeclineShare { step, group, case_id, reason, consent } => {
                // Recorded as a share would be (with whom it would have gone), and nothing
                // is sent: a decision not to share is accountable too.
                let recipients = self.recipients(group);
                let rooms = self.group_rooms(group);
                tx.append(self.draft(
                    run,
                    EntryKind::ShareDeclined,
                    Some(case_id.clone()),
                    now,
                    json!({
                        "step": step,
                        "group": group,
                        "recipients": recipients,
                        "rooms": rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                        "reason": reason,
                        "consent": consent,
                        "decided_by": run.starter,
                        "workflow": run.workflow,
                    }),
                ));
            }
            Effect::OpenCase { step, case } => {
                tx.insert_case(&CaseRow {
                    id: case.id.clone(),
                    run_id: run.id.clone(),
                    group_id: run.group_id.clone(),
                    subject: case.subject.clone(),
                    category: case.category.clone(),
                    risk: case.risk.clone(),
                    status: "open".into(),
                    opened_at: now,
                    closed_at: None,
                })
                .await?;
                tracing::info!(run = %run.id, case = %case.id, "case opened");
                tx.append(self.draft(
                    run,
                    EntryKind::CaseOpened,
                    Some(case.id.clone()),
                    now,
                    json!({ "step": step, "subject": case.subject, "category": case.category, "risk": case.risk, "group": run.group_id }),
                ));
            }
            Effect::CloseCase { step, case_id, reason } => {
                tx.close_case(case_id, now).await?;
                // A closed case needs no more acknowledging.
                let mut stopped = Vec::new();
                for mut e in tx.escalations_of(case_id).await? {
                    if e.status == EscalationStatus::Active {
                        e.status = EscalationStatus::Stopped;
                        e.next_at = None;
                        tx.update_escalation(&e).await?;
                        stopped.push(e.id);
                    }
                }
                tx.append(self.draft(
                    run,
                    EntryKind::CaseClosed,
                    Some(case_id.clone()),
                    now,
                    json!({ "step": step, "reason": reason, "stopped_escalations": stopped }),
                ));
            }
            Effect::Escalate { step, case_id, policy, escalation_id } => {
                let Some(p) = self.dir.config().policy(policy) else {
                    // The engine checked it when the script asked; the configuration is fixed
                    // for the life of the process.
                    tracing::error!(run = %run.id, "escalation policy vanished");
                    return Ok(());
                };
                let group_id = tx.case(case_id).await?.map_or_else(|| run.group_id.clone(), |c| c.group_id);
                let mut e = EscalationRow {
                    id: escalation_id.clone(),
                    case_id: case_id.clone(),
                    policy: policy.clone(),
                    run_id: run.id.clone(),
                    group_id,
                    plan: escalation::plan(p),
                    stage: 0,
                    status: EscalationStatus::Active,
                    next_at: None,
                    notified: Vec::new(),
                    started_at: now,
                    acked_by: None,
                    acked_at: None,
                };
                tracing::info!(run = %run.id, escalation = %e.id, case = %case_id, "escalation started");
                tx.append(self.draft(
                    run,
                    EntryKind::EscalationStarted,
                    Some(case_id.clone()),
                    now,
                    json!({ "step": step, "escalation": e.id, "policy": policy, "stages": e.plan }),
                ));
                self.notify_stage(tx, &mut e, now, now).await?;
                tx.insert_escalation(&e).await?;
            }
            Effect::WaitForAck { step, case_id, until } => {
                tx.set_timer(&run.id, *step as i64, *until).await?;
                tx.add_ack_wait(case_id, &run.id, *step as i64).await?;
                tx.append(self.draft(
                    run,
                    EntryKind::TimerSet,
                    Some(case_id.clone()),
                    now,
                    json!({ "step": step, "until": until.rfc3339(), "waits_for": "acknowledgement" }),
                ));
            }
            Effect::Note { step, case_id, text } => {
                tx.append(self.draft(
                    run,
                    EntryKind::CaseNote,
                    Some(case_id.clone()),
                    now,
                    json!({ "step": step, "text": text }),
                ));
            }
            Effect::Sleep { step, until } => {
                // A time already past (`sleep_until` an hour ago) is due now, not late.
                tx.set_timer(&run.id, *step as i64, (*until).max(now)).await?;
                tx.append(self.draft(
                    run,
                    EntryKind::TimerSet,
                    None,
                    now,
                    json!({ "step": step, "until": until.rfc3339() }),
                ));
            }
        }
        Ok(())
    }

    /// Who a share with `group` reaches (or would have): each member and their agency.
    fn recipients(&self, group: &str) -> Vec<serde_json::Value> {
        self.dir
            .group(group)
            .map(|g| self.dir.members(g).map(|p| json!({ "person": p.id, "agency": p.agency })).collect())
            .unwrap_or_default()
    }

    fn group_rooms(&self, group: &str) -> Vec<RoomRef> {
        self.dir.group(group).map(|g| g.rooms.clone()).unwrap_or_default()
    }

    /// Queues `text` to each room; for a share, `share_case` makes each room's delivery a
    /// ledger entry of its own.
    #[allow(clippy::too_many_arguments)]
    async fn post_to_rooms(
        &self,
        tx: &mut Tx,
        run: &RunRow,
        step: usize,
        rooms: &[RoomRef],
        text: &str,
        share_case: Option<&str>,
        now: Millis,
    ) -> store::Result<()> {
        for (i, room) in rooms.iter().enumerate() {
            let m = OutboundMessage {
                idempotency_key: format!("run:{}:{step}:{i}", run.id),
                room: room.clone(),
                person: None,
                body: MessageBody::Text { text: text.to_string() },
            };
            tx.enqueue_share(&m, Some(&run.id), share_case, now).await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn tell_person(
        &self,
        tx: &mut Tx,
        run: &RunRow,
        person: &str,
        platform: Platform,
        why: &str,
        text: String,
        now: Millis,
    ) -> store::Result<()> {
        if let Some(room) = self.dm_room(person, platform) {
            let m = OutboundMessage {
                idempotency_key: format!("run:{}:{why}:{person}", run.id),
                room,
                person: Some(person.to_string()),
                body: MessageBody::Text { text },
            };
            tx.enqueue(&m, Some(&run.id), now).await?;
        }
        Ok(())
    }

    async fn tell_coordinators(
        &self,
        tx: &mut Tx,
        run: &RunRow,
        platform: Platform,
        text: String,
        now: Millis,
    ) -> store::Result<()> {
        let coordinators: Vec<String> = self.dir.people_with_role(roles::COORDINATOR).map(|p| p.id.clone()).collect();
        for c in coordinators {
            self.tell_person(tx, run, &c, platform, "coordinators", text.clone(), now).await?;
        }
        Ok(())
    }

    /// Tells every coordinator something that concerns no run (e.g. a refused edit).
    pub async fn notify_coordinators(&self, key: &str, text: &str) -> store::Result<()> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        for p in self.dir.people_with_role(roles::COORDINATOR) {
            let Some(room) = self.dir.direct_room(p, self.dir.live_platforms()[0]) else { continue };
            let m = OutboundMessage {
                idempotency_key: format!("{key}:{}", p.id),
                room,
                person: Some(p.id.clone()),
                body: MessageBody::Text { text: text.to_string() },
            };
            tx.enqueue(&m, None, now).await?;
        }
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// After a wait on (person, room) ends, asks the next queued question there.
    async fn activate_next_wait(&self, tx: &mut Tx, person: &str, room: &RoomRef, now: Millis) -> store::Result<()> {
        if let Some(mut next) = tx.waiting_run(person, room).await?
            && let Some(Wait::Answer { step, prompt, spec, .. }) = next.wait.clone()
        {
            let m = question(&next, step, person, room.clone(), &prompt, spec.choices.clone());
            tx.enqueue(&m, Some(&next.id), now).await?;
            if next.wait_since.is_none() {
                next.wait_since = Some(now);
                tx.put_run(&next).await?;
            }
        }
        Ok(())
    }

    /// A message that will not be delivered: parked (kept, never retried), recorded in the
    /// ledger, and every coordinator told, on another platform than the failing one where
    /// they have an account there, all in one transaction.
    /// A note about a failed note is recorded only (it would fail the same way).
    /// Records that a claimed message was delivered. One room's copy of a share is also
    /// recorded in the ledger (`share.delivered`), in the same transaction: never one
    /// without the other, and once however often the message was sent.
    pub async fn record_delivery(&self, c: &crate::store::ClaimedMessage, at: Millis) -> store::Result<()> {
        let Some(case) = &c.share_case else {
            return self.store.mark_delivered(c.id, at).await;
        };
        let mut tx = self.store.begin().await?;
        if tx.mark_delivered(c.id, at).await? {
            tx.append(Draft {
                at,
                kind: EntryKind::ShareDelivered,
                case_id: Some(case.clone()),
                run_id: c.run_id.clone(),
                actor: WAVELET.into(),
                script_hash: None,
                content: crate::adapter::describe(c),
            });
        }
        tx.commit().await
    }

    pub async fn park_and_surface(
        &self,
        c: &crate::store::ClaimedMessage,
        attempts: i32,
        error: &str,
    ) -> store::Result<()> {
        let now = self.clock.now();
        let failing = c.message.room.platform();
        let mut tx = self.store.begin().await?;
        tx.park(c.id, error, now).await?;
        let mut content = crate::adapter::describe(c);
        content["attempts"] = json!(attempts);
        content["error"] = json!(error);
        tx.append(Draft {
            at: now,
            kind: EntryKind::DeliveryFailed,
            case_id: None,
            run_id: c.run_id.clone(),
            actor: WAVELET.into(),
            script_hash: None,
            content,
        });
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
            let key = format!("failed:{}", c.id);
            self.queue_for_coordinators(&mut tx, &key, &text, elsewhere, c.run_id.as_deref(), now).await?;
        }
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Queues `text` privately to every coordinator, in the room `room_of` picks for each,
    /// keyed `KEY:PERSON`.
    async fn queue_for_coordinators(
        &self,
        tx: &mut Tx,
        key: &str,
        text: &str,
        room_of: impl Fn(&wavelet_core::config::Person) -> Option<RoomRef>,
        run_id: Option<&str>,
        now: Millis,
    ) -> store::Result<()> {
        for c in self.dir.people_with_role(roles::COORDINATOR) {
            let Some(room) = room_of(c) else { continue };
            let m = OutboundMessage {
                idempotency_key: format!("{key}:{}", c.id),
                room,
                person: Some(c.id.clone()),
                body: MessageBody::Text { text: text.to_string() },
            };
            tx.enqueue(&m, run_id, now).await?;
        }
        Ok(())
    }

    /// Records something in the ledger on its own (workflow loads, audit reads).
    pub async fn record(&self, draft: Draft) -> store::Result<()> {
        let mut tx = self.store.begin().await?;
        tx.append(draft);
        tx.commit().await
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into())
}

/// A little randomness for the instance id (two processes with one pid in two containers).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish() as u32
}

/// The last acknowledgement of any of these escalations: who and when.
fn last_ack(escalations: &[EscalationRow]) -> Option<(&String, Millis)> {
    escalations.iter().filter_map(|e| Some((e.acked_by.as_ref()?, e.acked_at?))).max_by_key(|(_, at)| *at)
}

fn question(
    run: &RunRow,
    step: usize,
    person: &str,
    room: RoomRef,
    prompt: &str,
    choices: Option<Vec<String>>,
) -> OutboundMessage {
    OutboundMessage {
        idempotency_key: question_key(&run.id, step),
        room,
        person: Some(person.to_string()),
        body: match choices {
            Some(options) => MessageBody::Choice { prompt: prompt.to_string(), options },
            None => MessageBody::Text { text: prompt.to_string() },
        },
    }
}

/// The idempotency key of the question a run asks at `step`.
fn question_key(run_id: &str, step: usize) -> String {
    format!("run:{run_id}:{step}")
}
