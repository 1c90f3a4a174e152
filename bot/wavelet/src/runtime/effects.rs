//! Performing what a step of a script asked for (questions, messages, shares, cases,
//! timers, escalations), each through the step's transaction and the outbox.

use super::{Runtime, names, question};
use wavelet_core::decide::{self, Asking};
use wavelet_core::engine::Effect;
use wavelet_core::escalation::{self as esc};
use wavelet_core::ledger::{Recipient, Record};
use wavelet_core::{MessageBody, Millis, OutboundMessage, Platform, RoomRef, keys, render, roles};
use wavelet_store::{self as store, CaseRow, EscalationRow, EscalationStatus, RunRow, Tx};

impl Runtime {
    pub(super) async fn perform(
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
                    None,
                    now,
                    Record::QuestionAsked {
                        step: *step,
                        to: person.clone(),
                        room: room.as_ref().map(|r| r.to_string()),
                        prompt: prompt.clone(),
                        choices: spec.choices.clone(),
                    },
                ));
                let Some(room) = room else { return Ok(()) };
                // Questions to one person in one room are asked one at a time.
                let other = tx.waiting_run_other(person, &room, &run.id).await?;
                if decide::ask(other.as_deref()) == Asking::Now {
                    tx.enqueue(
                        &question(run, *step, person, room, &said(prompt), spec.choices.clone()),
                        Some(&run.id),
                        now,
                    )
                    .await?;
                } else {
                    let notice = OutboundMessage {
                        idempotency_key: keys::question_queued(&run.id, *step),
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
                    None,
                    now,
                    Record::MessageTold { step: *step, to: person.clone(), text: text.clone() },
                ));
                if let Some(room) = self.dm_room(person, platform) {
                    let m = OutboundMessage {
                        idempotency_key: keys::question(&run.id, *step),
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
                    None,
                    now,
                    Record::MessageSent { step: *step, group: group.clone(), rooms: names(&rooms), text: text.clone() },
                ));
                self.post_to_rooms(tx, run, *step, &rooms, &said(text), None, now).await?;
            }
            Effect::Share { step, group, case_id, text, purpose, basis, consent } => {
                let rooms = self.group_rooms(group);
                let recipients = self.recipients(group);
                tx.append(self.draft(
                    run,
                    Some(case_id.clone()),
                    now,
                    Record::Share {
                        step: *step,
                        group: group.clone(),
                        what: text.clone(),
                        recipients,
                        rooms: names(&rooms),
                        purpose: purpose.clone(),
                        lawful_basis: basis.clone(),
                        consent: consent.clone(),
                        decided_by: run.starter.clone(),
                        workflow: run.workflow.clone(),
                    },
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
                    Some(case_id.clone()),
                    now,
                    Record::ShareDeclined {
                        step: *step,
                        group: group.clone(),
                        recipients,
                        rooms: names(&rooms),
                        reason: reason.clone(),
                        consent: consent.clone(),
                        decided_by: run.starter.clone(),
                        workflow: run.workflow.clone(),
                    },
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
                    Some(case.id.clone()),
                    now,
                    Record::CaseOpened {
                        step: *step,
                        subject: case.subject.clone(),
                        category: case.category.clone(),
                        risk: case.risk.clone(),
                        group: run.group_id.clone(),
                    },
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
                    Some(case_id.clone()),
                    now,
                    Record::CaseClosed { step: *step, reason: reason.clone(), stopped_escalations: stopped },
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
                    plan: esc::plan(p),
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
                    Some(case_id.clone()),
                    now,
                    Record::EscalationStarted {
                        step: *step,
                        escalation: e.id.clone(),
                        policy: policy.clone(),
                        stages: e.plan.clone(),
                    },
                ));
                self.notify_stage(tx, &mut e, now, now).await?;
                tx.insert_escalation(&e).await?;
            }
            Effect::WaitForAck { step, case_id, until } => {
                tx.set_timer(&run.id, *step as i64, *until).await?;
                tx.add_ack_wait(case_id, &run.id, *step as i64).await?;
                tx.append(self.draft(
                    run,
                    Some(case_id.clone()),
                    now,
                    Record::TimerSet { step: *step, until: until.rfc3339(), waits_for: Some("acknowledgement") },
                ));
            }
            Effect::Note { step, case_id, text } => {
                tx.append(self.draft(
                    run,
                    Some(case_id.clone()),
                    now,
                    Record::CaseNote { step: *step, text: text.clone() },
                ));
            }
            Effect::Sleep { step, until } => {
                // A time already past (`sleep_until` an hour ago) is due now, not late.
                tx.set_timer(&run.id, *step as i64, (*until).max(now)).await?;
                tx.append(self.draft(
                    run,
                    None,
                    now,
                    Record::TimerSet { step: *step, until: until.rfc3339(), waits_for: None },
                ));
            }
        }
        Ok(())
    }

    /// Who a share with `group` reaches (or would have): each member and their agency.
    pub(super) fn recipients(&self, group: &str) -> Vec<Recipient> {
        self.dir
            .group(group)
            .map(|g| {
                self.dir.members(g).map(|p| Recipient { person: p.id.clone(), agency: p.agency.clone() }).collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn group_rooms(&self, group: &str) -> Vec<RoomRef> {
        self.dir.group(group).map(|g| g.rooms.clone()).unwrap_or_default()
    }

    /// Queues `text` to each room; for a share, `share_case` makes each room's delivery a
    /// ledger entry of its own.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn post_to_rooms(
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
                idempotency_key: keys::run_room(&run.id, step, i),
                room: room.clone(),
                person: None,
                body: MessageBody::Text { text: text.to_string() },
            };
            tx.enqueue_share(&m, Some(&run.id), share_case, now).await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn tell_person(
        &self,
        tx: &mut Tx,
        run: &RunRow,
        person: &str,
        platform: Platform,
        why: keys::RunNotice,
        text: String,
        now: Millis,
    ) -> store::Result<()> {
        if let Some(room) = self.dm_room(person, platform) {
            let m = OutboundMessage {
                idempotency_key: keys::run_notice(&run.id, why, person),
                room,
                person: Some(person.to_string()),
                body: MessageBody::Text { text },
            };
            tx.enqueue(&m, Some(&run.id), now).await?;
        }
        Ok(())
    }

    pub(super) async fn tell_coordinators(
        &self,
        tx: &mut Tx,
        run: &RunRow,
        platform: Platform,
        text: String,
        now: Millis,
    ) -> store::Result<()> {
        let coordinators: Vec<String> = self.dir.people_with_role(roles::COORDINATOR).map(|p| p.id.clone()).collect();
        for c in coordinators {
            self.tell_person(tx, run, &c, platform, keys::RunNotice::Coordinators, text.clone(), now).await?;
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
                idempotency_key: keys::for_person(key, &p.id),
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

    /// Queues `text` privately to every coordinator, in the room `room_of` picks for each,
    /// keyed `KEY:PERSON`.
    pub(super) async fn queue_for_coordinators(
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
                idempotency_key: keys::for_person(key, &c.id),
                room,
                person: Some(c.id.clone()),
                body: MessageBody::Text { text: text.to_string() },
            };
            tx.enqueue(&m, run_id, now).await?;
        }
        Ok(())
    }
}
