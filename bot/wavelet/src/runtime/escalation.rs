//! Escalations: notifying a stage, moving to the next, and acknowledgements (who may,
//! first, late, refused).

use super::{Runtime, WAVELET, names};
use serde_json::json;
use wavelet_core::engine::Wait;
use wavelet_core::escalation::{self as esc, CaseSummary};
use wavelet_core::ledger::{Draft, Record};
use wavelet_core::{InboundEvent, MessageBody, Millis, OutboundMessage, decide, keys, render, roles, text};
use wavelet_store::{self as store, EscalationRow, EscalationStatus, RunStatus, Tx};

impl Runtime {
    pub(super) async fn case_summary(&self, tx: &mut Tx, case_id: &str) -> store::Result<CaseSummary> {
        let c = tx.case(case_id).await?;
        Ok(CaseSummary {
            id: case_id.to_string(),
            category: c.as_ref().map_or_else(|| "unknown".into(), |c| c.category.clone()),
            risk: c.map_or_else(|| "unknown".into(), |c| c.risk),
        })
    }

    /// Notifies the escalation's current stage and sets when the next one is due.
    /// `due` is when this stage was due: a late stage says how late it is.
    pub(super) async fn notify_stage(
        &self,
        tx: &mut Tx,
        e: &mut EscalationRow,
        due: Millis,
        now: Millis,
    ) -> store::Result<()> {
        let Some(stage) = e.plan.get(e.stage).cloned() else { return Ok(()) };
        let case = self.case_summary(tx, &e.case_id).await?;
        let to = esc::recipients(&self.dir, &stage, &e.group_id);
        let late_ms = (now.0 - due.0).max(0);
        let text = esc::notice(&e.id, &e.policy, &stage, &case, late_ms, due);
        let platform = self.group_platform(&e.group_id);
        for p in &to.people {
            if let Some(room) = self.dm_room(p, platform) {
                let m = OutboundMessage {
                    idempotency_key: keys::escalation_person(&e.id, e.stage, p),
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
                idempotency_key: keys::escalation_room(&e.id, e.stage, i),
                room: room.clone(),
                person: None,
                body: MessageBody::Escalation { text: text.clone(), case_id: e.case_id.clone() },
            };
            tx.enqueue(&m, Some(&e.run_id), now).await?;
        }
        tracing::info!(escalation = %e.id, case = %e.case_id, stage = e.stage + 1, late_ms, "escalation notified");
        let notified = Record::EscalationNotified {
            escalation: e.id.clone(),
            policy: e.policy.clone(),
            stage: e.stage + 1,
            level: stage.level,
            round: stage.round,
            is_final: stage.is_final,
            people: to.people.clone(),
            rooms: names(&to.rooms),
            text: text.clone(),
            due: due.rfc3339(),
            late_ms,
        };
        tx.append(
            Draft::of(now, WAVELET, notified).about(Some(e.case_id.clone())).in_run(Some(e.run_id.clone()), None),
        );
        if to.people.is_empty() && to.rooms.is_empty() {
            // Nobody to tell is itself something to tell: the coordinators fix the policy.
            tracing::warn!(escalation = %e.id, stage = e.stage + 1, "escalation stage reached nobody");
            let note = format!(
                "Escalation {} of {} (policy `{}`) reached nobody at level {}: nobody in group `{}` matches its notify list. Please acknowledge or act on {} directly, and check the policy.",
                e.id, e.case_id, e.policy, stage.level, e.group_id, e.case_id
            );
            let key = keys::escalation_nobody(&e.id, e.stage);
            self.queue_for_coordinators(tx, &key, &note, |c| self.dm_room(&c.id, platform), Some(&e.run_id), now)
                .await?;
        }
        e.next_at = stage.wait_ms.map(|w| now.plus(std::time::Duration::from_millis(w)));
        Ok(())
    }

    /// Moves a claimed escalation on to its next stage.
    pub(super) async fn next_stage(&self, tx: &mut Tx, claimed: EscalationRow, now: Millis) -> store::Result<()> {
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
    pub(super) async fn acknowledge(
        &self,
        tx: &mut Tx,
        ev: &InboundEvent,
        person: &str,
        case_id: &str,
        now: Millis,
    ) -> store::Result<()> {
        let platform = ev.room.platform();
        let reply_key = keys::reply(platform, &ev.event_id);
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
        let draft = |record: Record| Draft::of(now, person, record).about(Some(case_id.to_string()));
        if !decide::may_acknowledge(person, is_lead, &views(&escalations)) {
            tracing::info!(case = %case_id, "acknowledgement refused");
            tx.append(draft(Record::AcknowledgementRefused { room: ev.room.to_string() }));
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
        let label = self.label(person);
        let (stop, stopped, others, since) = match decide::acknowledgement(&views(&escalations), resumed.len(), now) {
            decide::Acknowledgement::Late { last } => {
                tx.append(draft(Record::AcknowledgementLate {
                    room: ev.room.to_string(),
                    already_by: last.as_ref().map(|l| l.0.clone()),
                    already_at: last.as_ref().map(|l| l.1.rfc3339()),
                }));
                let text = match last {
                    Some((by, at)) => render::ack_late(case_id, &self.label(&by), at),
                    None => render::ack_nothing_pending(case_id),
                };
                tx.enqueue(&reply(text), None, now).await?;
                return Ok(());
            }
            decide::Acknowledgement::Taken { stop, stopped, others, since } => (stop, stopped, others, since),
        };
        for i in stop {
            let e = &mut escalations[i];
            e.status = EscalationStatus::Acknowledged;
            e.acked_by = Some(person.to_string());
            e.acked_at = Some(now);
            e.next_at = None;
            tx.update_escalation(e).await?;
        }
        tracing::info!(case = %case_id, escalations = stopped.len(), runs = resumed.len(), "case acknowledged");
        tx.append(draft(Record::CaseAcknowledged {
            room: ev.room.to_string(),
            escalations: stopped,
            runs: resumed.iter().map(|(r, _)| r.id.clone()).collect(),
        }));
        tx.enqueue(&reply(render::ack_thanks(case_id)), None, now).await?;
        let raiser = tx.run(&case.run_id).await?.map(|r| r.starter);
        if let Some(raiser) = raiser.as_deref().filter(|r| *r != person) {
            let text = render::ack_for_raiser(case_id, &label, now, since.map(|s| now.0 - s.0));
            if let Some(m) = say(raiser, keys::acknowledged(platform, &ev.event_id, raiser), text) {
                tx.enqueue(&m, Some(&case.run_id), now).await?;
            }
        }
        for p in others.iter().filter(|p| p.as_str() != person && Some(p.as_str()) != raiser.as_deref()) {
            if let Some(m) =
                say(p, keys::acknowledged(platform, &ev.event_id, p), render::ack_for_others(case_id, &label))
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
}

/// The case's escalations as the acknowledgement rules see them.
fn views(escalations: &[EscalationRow]) -> Vec<decide::EscalationView<'_>> {
    escalations
        .iter()
        .map(|e| decide::EscalationView {
            id: &e.id,
            active: e.status == EscalationStatus::Active,
            stage: e.stage,
            started_at: e.started_at,
            notified: &e.notified,
            acked: e.acked_by.as_deref().zip(e.acked_at),
        })
        .collect()
}
