//! Escalation end to end on real stores: acknowledgements, waits with deadlines, overdue
//! stages after downtime, two processes sharing the due work, and delivery that keeps
//! failing or is asked to slow down.

mod common;
use common::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wavelet::delivery::SendError;
use wavelet_store::{EscalationStatus, RunStatus};

on_both!(
    two_processes_fire_each_due_stage_once,
    a_schedule_fires_once_across_processes_and_once_after_downtime,
    the_ledger_witness_posts_the_head_once_a_day_and_verify_checks_the_chain_against_it,
    a_witness_for_a_group_this_process_does_not_know_is_not_posted_and_coordinators_are_told,
    a_witness_is_withheld_and_an_alarm_raised_when_the_chain_since_the_last_one_does_not_verify,
    a_witness_is_withheld_when_the_newest_entries_are_gone,
    a_witness_is_withheld_when_content_is_planted_ahead_of_the_chain,
    overdue_stages_fire_at_once_in_due_order_and_say_how_late,
    a_run_waits_for_an_acknowledgement_until_its_deadline,
    closing_a_case_stops_its_escalation,
    a_case_closed_while_wavelet_was_down_is_not_escalated_further,
    open_cases_sees_a_case_opened_in_the_same_step,
    a_policy_renamed_after_a_run_escalated_does_not_break_it,
    a_message_that_fails_for_good_is_parked_and_surfaced,
    a_message_that_keeps_failing_is_retried_then_parked,
    a_platform_that_asks_to_slow_down_gets_nothing_more_in_that_pass,
);

/// Raises a concern at immediate risk as `who`; returns what the bot said.
async fn raise(b: &mut Bot, who: &str) -> Vec<String> {
    b.say(who, "north", "!concern").await;
    b.say(who, "dm", "AB 2015").await;
    b.say(who, "dm", "neglect").await;
    b.say(who, "dm", "yes").await;
    b.say(who, "dm", "Seen today.").await
}

async fn ledger_kinds(b: &Bot, kind: &str) -> Vec<serde_json::Value> {
    let entries = b.rt.store().ledger_page(0, i64::MAX).await.unwrap();
    entries.into_iter().filter(|e| e.link.kind == kind).filter_map(|e| e.content).collect()
}

async fn fire(b: &mut Bot) -> Vec<OutboundMessage> {
    b.rt.fire_due_timers().await.unwrap();
    deliver_pending(&b.rt, &b.adapters, b.rt.now()).await.unwrap();
    b.sent.0.lock().unwrap().drain(..).collect()
}

async fn two_processes_fire_each_due_stage_once(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh(backend, dir.path()).await;
    let mut a = bot(&url, None).await;
    let b = bot(&url, None).await;
    for who in ["alice", "dana", "eve", "alice", "dana", "eve"] {
        raise(&mut a, who).await;
    }
    assert_eq!(ledger_kinds(&a, "escalation.started").await.len(), 6);
    a.clock.advance(Duration::from_secs(15 * 60));
    b.clock.advance(Duration::from_secs(15 * 60));
    let (fa, fb) = tokio::join!(a.rt.fire_due_timers(), b.rt.fire_due_timers());
    let (fa, fb) = (fa.unwrap(), fb.unwrap());
    assert_eq!(fa + fb, 6, "each escalation moved on once between the two ({fa} + {fb})");
    let notified = ledger_kinds(&a, "escalation.notified").await;
    let mut second: Vec<String> =
        notified.iter().filter(|c| c["stage"] == 2).map(|c| c["escalation"].as_str().unwrap().to_string()).collect();
    second.sort();
    assert_eq!(second, ["E-1", "E-2", "E-3", "E-4", "E-5", "E-6"], "level 2 of each, once");
    // Nothing more is due until level 2's wait is over.
    assert_eq!(b.rt.fire_due_timers().await.unwrap() + a.rt.fire_due_timers().await.unwrap(), 0);
    a.verify().await;
}

async fn overdue_stages_fire_at_once_in_due_order_and_say_how_late(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bot(&fresh(backend, dir.path()).await, None).await;
    raise(&mut b, "alice").await;
    b.clock.advance(Duration::from_secs(5 * 60));
    raise(&mut b, "dana").await;
    // Wavelet was down for two hours.
    b.clock.advance(Duration::from_secs(2 * 3600));
    let sent = fire(&mut b).await;
    let to_bea: Vec<String> =
        sent.iter().filter(|m| m.person.as_deref() == Some("bea")).map(|m| m.body.plain()).collect();
    assert_eq!(to_bea.len(), 2, "{to_bea:?}");
    // Notices say which case, so a platform can offer a one-tap acknowledgement.
    let cases: Vec<&str> = sent
        .iter()
        .filter_map(|m| match &m.body {
            wavelet_core::MessageBody::Escalation { case_id, .. } if m.person.as_deref() == Some("bea") => {
                Some(case_id.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(cases, ["C-1", "C-2"]);
    assert!(to_bea[0].starts_with("Escalation E-1 (immediate, level 2)"), "{}", to_bea[0]);
    assert!(to_bea[0].contains("comes 1 h 50 min late"), "{}", to_bea[0]);
    assert!(to_bea[1].starts_with("Escalation E-2 (immediate, level 2)"), "{}", to_bea[1]);
    assert!(to_bea[1].contains("comes 1 h 45 min late"), "{}", to_bea[1]);
    // Each level still gets its own wait: the final level is not fired in the same breath.
    assert!(fire(&mut b).await.is_empty());
    b.clock.advance(Duration::from_secs(15 * 60));
    let sent = fire(&mut b).await;
    let finals: Vec<String> =
        sent.iter().filter(|m| m.person.as_deref() == Some("cora")).map(|m| m.body.plain()).collect();
    assert_eq!(finals.len(), 2);
    assert!(finals.iter().all(|t| t.starts_with("FINAL escalation") && !t.contains("late")), "{finals:?}");
    let late: Vec<i64> = ledger_kinds(&b, "escalation.notified")
        .await
        .iter()
        .filter(|c| c["stage"] == 2)
        .map(|c| c["late_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(late, [110 * 60_000, 105 * 60_000]);
    b.verify().await;
}

const URGENT: &str = r#"
const COMMAND = "urgent";
const ALLOWED_ROLES = ["practitioner"];
fn run(ctx) {
    let c = open_case(#{ subject: "AB 2015", category: "neglect", risk: "yes" });
    send(ctx.group, `${c.id} needs a lead: reply ack ${c.id}`);
    let a = wait_for_ack(c, "10m");
    if a == () {
        tell(ctx.starter, `no ack for ${c.id}`);
        escalate(c, "immediate");
    } else {
        tell(ctx.starter, `${a.by} took ${c.id} at ${a.at}`);
    }
}
"#;

async fn a_run_waits_for_an_acknowledgement_until_its_deadline(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(dir.path(), &[("urgent", URGENT)]);
    let mut b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    assert_eq!(b.say("alice", "north", "!urgent").await, ["C-1 needs a lead: reply ack C-1"]);
    // eve is neither a lead nor notified by an escalation: refused, and recorded.
    let r = b.say("eve", "north", "ack C-1").await;
    assert!(r[0].starts_with("Sorry, only the people"), "{r:?}");
    assert_eq!(ledger_kinds(&b, "acknowledgement.refused").await.len(), 1);
    b.clock.advance(Duration::from_secs(120));
    let r = b.say("bea", "north", "ack C-1").await;
    assert!(r[0].starts_with("Thank you: you have acknowledged C-1"), "{r:?}");
    assert!(r.iter().any(|t| t.starts_with("Bea Lindqvist (St Mary's Primary School) acknowledged C-1")), "{r:?}");
    assert!(r.iter().any(|t| t.starts_with("bea took C-1 at ")), "the run resumed with who: {r:?}");
    assert_eq!(b.rt.store().run("R-1").await.unwrap().unwrap().status, RunStatus::Finished);
    // The deadline's timer went with the wait: nothing fires later.
    b.clock.advance(Duration::from_secs(3600));
    assert!(fire(&mut b).await.is_empty());

    // Nobody acknowledges the next one: the deadline resumes the run with ().
    b.say("alice", "north", "!urgent").await;
    b.clock.advance(Duration::from_secs(600));
    let sent: Vec<String> = fire(&mut b).await.iter().map(|m| m.body.plain()).collect();
    assert_eq!(sent[0], "no ack for C-2", "{sent:?}");
    assert!(sent[1].starts_with("Escalation E-1 (immediate, level 1): case C-2"), "{sent:?}");
    // A late acknowledgement of C-1 is recorded, never an error.
    let r = b.say("carl", "dm", "ack C-1").await;
    assert!(r[0].starts_with("Nothing is waiting for an acknowledgement on C-1"), "{r:?}");
    assert_eq!(ledger_kinds(&b, "acknowledgement.late").await.len(), 1);
    assert_eq!(ledger_kinds(&b, "case.acknowledged").await.len(), 1);
    b.verify().await;
}

const CLOSES: &str = r#"
const COMMAND = "brief";
const ALLOWED_ROLES = ["practitioner"];
fn run(ctx) {
    let c = open_case(#{ subject: "AB 2015", category: "neglect", risk: "yes" });
    escalate(c, "immediate");
    sleep("5m");
    close_case(c, "resolved by phone");
}
"#;

async fn closing_a_case_stops_its_escalation(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(dir.path(), &[("brief", CLOSES)]);
    let mut b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    let r = b.say("alice", "north", "!brief").await;
    assert_eq!(r.len(), 2, "level 1 to both leads: {r:?}");
    b.clock.advance(Duration::from_secs(300));
    assert!(fire(&mut b).await.is_empty(), "the case closes; nothing is sent");
    b.clock.advance(Duration::from_secs(3600));
    assert!(fire(&mut b).await.is_empty(), "no more levels for a closed case");
    let closed = ledger_kinds(&b, "case.closed").await;
    assert_eq!(closed[0]["stopped_escalations"], serde_json::json!(["E-1"]));
    let mut tx = b.rt.store().begin().await.unwrap();
    assert_eq!(tx.escalations_of("C-1").await.unwrap()[0].status, EscalationStatus::Stopped);
    drop(tx);
    b.verify().await;
}

/// Fails every send to one room, the way the test says; delivers the rest.
struct Flaky {
    room: RoomRef,
    fail: fn() -> SendError,
    tried: Mutex<usize>,
    sent: Mutex<Vec<OutboundMessage>>,
}

impl ChatAdapter for Flaky {
    fn platform(&self) -> Platform {
        Platform::Console
    }
    fn send<'a>(&'a self, m: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(async move {
            *self.tried.lock().unwrap() += 1;
            if m.room == self.room {
                return Err((self.fail)());
            }
            self.sent.lock().unwrap().push(m.clone());
            Ok(())
        })
    }
}

fn flaky(b: &mut Bot, room: &str, fail: fn() -> SendError) -> Arc<Flaky> {
    let f =
        Arc::new(Flaky { room: RoomRef::parse(room).unwrap(), fail, tried: Mutex::default(), sent: Mutex::default() });
    b.adapters = Adapters::default();
    b.adapters.add(f.clone());
    f
}

async fn a_message_that_fails_for_good_is_parked_and_surfaced(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bot(&fresh(backend, dir.path()).await, None).await;
    let f = flaky(&mut b, "console:north", || SendError::Permanent("no such room".into()));
    raise(&mut b, "alice").await;
    let parked = b.rt.store().parked_outbox().await.unwrap();
    assert_eq!(parked.len(), 1, "the summary to the group's room: {parked:?}");
    assert_eq!(parked[0].2, "console:north");
    let failed = ledger_kinds(&b, "delivery.failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["room"], "console:north");
    assert!(failed[0]["error"].as_str().unwrap().contains("no such room"));
    let to_cora: Vec<String> =
        f.sent.lock().unwrap().iter().filter(|m| m.person.as_deref() == Some("cora")).map(|m| m.body.plain()).collect();
    assert_eq!(to_cora.len(), 1, "the coordinator is told");
    assert!(to_cora[0].starts_with("Wavelet could not deliver a message for run R-1 to console:north"), "{to_cora:?}");
    // Parked means kept, not retried.
    let tried = *f.tried.lock().unwrap();
    b.clock.advance(Duration::from_secs(3600));
    deliver_pending(&b.rt, &b.adapters, b.rt.now()).await.unwrap();
    assert_eq!(*f.tried.lock().unwrap(), tried);
    b.verify().await;
}

async fn a_message_that_keeps_failing_is_retried_then_parked(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bot(&fresh(backend, dir.path()).await, None).await;
    let f = flaky(&mut b, "console:north", || SendError::Temporary("502 Bad Gateway".into()));
    raise(&mut b, "alice").await;
    let mut attempts = 1;
    while b.rt.store().parked_outbox().await.unwrap().is_empty() {
        assert!(attempts < 100, "never parked");
        b.clock.advance(Duration::from_secs(300));
        deliver_pending(&b.rt, &b.adapters, b.rt.now()).await.unwrap();
        attempts += 1;
    }
    assert_eq!(attempts, wavelet::delivery::MAX_ATTEMPTS);
    let failed = ledger_kinds(&b, "delivery.failed").await;
    assert_eq!(failed[0]["attempts"], wavelet::delivery::MAX_ATTEMPTS);
    assert!(f.sent.lock().unwrap().iter().any(|m| m.person.as_deref() == Some("cora")));
}

async fn a_platform_that_asks_to_slow_down_gets_nothing_more_in_that_pass(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bot(&fresh(backend, dir.path()).await, None).await;
    b.say("alice", "north", "!concern").await;
    b.say("alice", "dm", "AB 2015").await;
    b.say("alice", "dm", "neglect").await;
    b.say("alice", "dm", "yes").await;
    let f = flaky(&mut b, "console:north", || SendError::RateLimited(Duration::from_secs(30)));
    b.say("alice", "dm", "Seen today.").await;
    // The summary to the room came first and was refused: nothing else went in that pass.
    assert_eq!(*f.tried.lock().unwrap(), 1);
    assert!(f.sent.lock().unwrap().is_empty());
    assert!(b.rt.store().parked_outbox().await.unwrap().is_empty(), "slowing down is not failing");
    // Once the platform is ready again, everything goes, in order.
    b.adapters = Adapters::default();
    b.adapters.add(b.sent.clone());
    deliver_pending(&b.rt, &b.adapters, b.rt.now()).await.unwrap();
    assert!(b.sent.0.lock().unwrap().is_empty(), "not before the wait it asked for");
    b.clock.advance(Duration::from_secs(30));
    deliver_pending(&b.rt, &b.adapters, b.rt.now()).await.unwrap();
    let sent: Vec<String> = b.sent.0.lock().unwrap().iter().map(|m| m.body.plain()).collect();
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(sent[0].starts_with("New neglect concern C-1"), "{sent:?}");
}

async fn a_schedule_fires_once_across_processes_and_once_after_downtime(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh(backend, dir.path()).await;
    // The clock starts on Monday 2025-11-24 16:00 UTC; the digest is due Mondays 09:00.
    let mut a = bot(&url, None).await;
    let mut b = bot(&url, None).await;
    raise(&mut a, "alice").await;
    let skip = Duration::from_secs(7 * 86_400 - 7 * 3600 + 60);
    a.clock.advance(skip);
    b.clock.advance(skip);
    let (fa, fb) = tokio::join!(a.rt.fire_due_timers(), b.rt.fire_due_timers());
    fa.unwrap();
    fb.unwrap();
    let started = ledger_kinds(&a, "run.started").await;
    let scheduled: Vec<_> = started.iter().filter(|c| c["schedule"] == "monday-digest").collect();
    assert_eq!(scheduled.len(), 1, "once between two processes: {started:?}");
    let digests = |sent: Vec<OutboundMessage>| -> Vec<String> {
        sent.iter()
            .filter(|m| m.body.plain().starts_with("Cases still open in your group: 1."))
            .map(|m| m.person.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(digests(fire(&mut a).await), ["bea", "carl"], "each lead gets the digest");
    // Down for three weeks: one digest when back, late, not three.
    for bot in [&a, &b] {
        bot.clock.advance(Duration::from_secs(21 * 86_400));
    }
    a.rt.fire_due_timers().await.unwrap();
    b.rt.fire_due_timers().await.unwrap();
    let started = ledger_kinds(&a, "run.started").await;
    let scheduled: Vec<_> = started.iter().filter(|c| c["schedule"] == "monday-digest").collect();
    assert_eq!(scheduled.len(), 2, "{scheduled:?}");
    assert!(scheduled[1]["late_ms"].as_i64().unwrap() > 14 * 86_400_000, "{:?}", scheduled[1]);
    assert_eq!(digests(fire(&mut b).await), ["bea", "carl"]);
    a.verify().await;
}

async fn the_ledger_witness_posts_the_head_once_a_day_and_verify_checks_the_chain_against_it(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh(backend, dir.path()).await;
    // The example posts at 07:00 UTC to the reviewers' room; the clock starts at 16:00.
    let mut a = bot(&url, None).await;
    let mut b = bot(&url, None).await;
    raise(&mut a, "alice").await;
    let witnessed = |sent: &[OutboundMessage]| -> Vec<String> {
        sent.iter()
            .filter(|m| m.room == RoomRef::Shared { platform: Platform::Console, id: "reviewers".into() })
            .map(|m| m.body.plain())
            .collect()
    };
    for bot in [&a, &b] {
        bot.clock.advance(Duration::from_secs(14 * 3600));
    }
    assert!(witnessed(&fire(&mut a).await).is_empty(), "not before 07:00");
    let head_before = a.rt.store().ledger_head().await.unwrap();
    for bot in [&a, &b] {
        bot.clock.advance(Duration::from_secs(3600 + 60));
    }
    let (fa, fb) = tokio::join!(fire(&mut a), fire(&mut b));
    let posted = witnessed(&[fa, fb].concat());
    assert_eq!(posted.len(), 1, "once between two processes: {posted:?}");
    // It names the head as it was, and says how to check against it.
    let text = &posted[0];
    assert!(text.starts_with("Ledger witness, 2025-11-25T07:01:00.000Z: entry "), "{text}");
    let arg = text.split("--witness ").nth(1).unwrap().trim_end_matches("`.");
    let w: wavelet_core::ledger::Witness = arg.parse().unwrap();
    assert!(text.contains(&format!("entry {} has hash {}", w.seq, w.hash)), "{text}");
    // The head when it fired: the stored entry it names, at or after the head before the
    // day's due work, and the ledger records the witness as the entry after it.
    let entries = a.rt.store().ledger_page(0, i64::MAX).await.unwrap();
    assert!(w.seq >= head_before.seq, "{w:?} before {head_before:?}");
    assert_eq!(entries[w.seq as usize - 1].link.hash, w.hash);
    let recorded: Vec<_> = entries.iter().filter(|e| e.link.kind == "ledger.witnessed").collect();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].link.seq, w.seq + 1);
    let c = recorded[0].content.as_ref().unwrap();
    assert_eq!((c["seq"].as_i64(), c["hash"].as_str()), (Some(w.seq), Some(w.hash.as_str())));
    assert_eq!(c["rooms"], serde_json::json!(["console:reviewers"]));
    let report = a.rt.store().verify(std::slice::from_ref(&w)).await.unwrap().unwrap();
    assert_eq!(report.witnessed, 1);

    // The next day, once more, naming the new head; a lawful erasure meanwhile is no alarm.
    raise(&mut a, "dana").await;
    let note =
        a.rt.store().ledger_page(w.seq, i64::MAX).await.unwrap().into_iter().find(|e| e.link.kind == "case.note");
    let now = a.rt.now();
    assert!(a.rt.store().erase(note.unwrap().link.seq, "retention period ended", "rey", now).await.unwrap());
    for bot in [&a, &b] {
        bot.clock.advance(Duration::from_secs(86_400));
    }
    let posted = witnessed(&fire(&mut b).await);
    assert_eq!(posted.len(), 1, "{posted:?}");
    let next: wavelet_core::ledger::Witness =
        posted[0].split("--witness ").nth(1).unwrap().trim_end_matches("`.").parse().unwrap();
    assert!(next.seq > w.seq + 1, "{next:?} after {w:?}");
    a.rt.store().verify(&[w, next]).await.unwrap().expect("both witnesses match");
}

async fn a_witness_for_a_group_this_process_does_not_know_is_not_posted_and_coordinators_are_told(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh(backend, dir.path()).await;
    let mut a = bot(&url, None).await;
    // Another process, configured later with its own witness group, moves the schedule.
    let _b = bot_with(&url, None, |c| {
        let g = c.groups.iter_mut().find(|g| g.id == "reviewers").unwrap();
        g.id = "auditors".into();
        c.witness.as_mut().unwrap().group = "auditors".into();
    })
    .await;
    // Something in the ledger to witness (an empty ledger has nothing to post).
    a.say("mallory", "north", "!concern").await;
    assert_eq!(ledger_kinds(&a, "refused.unknown_person").await.len(), 1);
    a.clock.advance(Duration::from_secs(15 * 3600 + 60));
    let sent = fire(&mut a).await;
    let to_cora: Vec<String> =
        sent.iter().filter(|m| m.person.as_deref() == Some("cora")).map(|m| m.body.plain()).collect();
    assert_eq!(to_cora.len(), 1, "{sent:?}");
    assert!(to_cora[0].contains("witness was not posted: its group `auditors`"), "{to_cora:?}");
    assert!(ledger_kinds(&a, "ledger.witnessed").await.is_empty(), "nothing recorded as posted");
    assert!(sent.iter().all(|m| !m.body.plain().starts_with("Ledger witness")), "{sent:?}");
}

async fn a_witness_is_withheld_and_an_alarm_raised_when_the_chain_since_the_last_one_does_not_verify(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh(backend, dir.path()).await;
    let mut a = bot(&url, None).await;
    raise(&mut a, "alice").await;
    a.clock.advance(Duration::from_secs(15 * 3600 + 60));
    let first: Vec<String> = fire(&mut a).await.iter().map(|m| m.body.plain()).collect();
    assert!(first.iter().any(|t| t.starts_with("Ledger witness, ")), "the untouched chain is witnessed: {first:?}");
    let witnessed = ledger_kinds(&a, "ledger.witnessed").await[0]["seq"].as_i64().unwrap();

    // After it, an answer is changed behind the guards' back.
    raise(&mut a, "dana").await;
    let answer =
        a.rt.store()
            .ledger_page(witnessed, i64::MAX)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.link.kind == "question.answered")
            .unwrap()
            .link
            .seq;
    tamper_ledger(
        &a,
        &[format!("UPDATE ledger_content SET content = '{{\"answer\":\"nothing\"}}' WHERE seq = {answer}")],
    )
    .await;

    a.clock.advance(Duration::from_secs(86_400));
    let sent = fire(&mut a).await;
    let alarm =
        format!("the ledger does not verify since entry {witnessed} (the last witnessed): ledger entry {answer}:");
    let to_reviewers: Vec<String> = sent
        .iter()
        .filter(|m| m.room == RoomRef::Shared { platform: Platform::Console, id: "reviewers".into() })
        .map(|m| m.body.plain())
        .collect();
    assert_eq!(to_reviewers.len(), 1, "{sent:?}");
    assert!(
        to_reviewers[0].starts_with("Ledger witness WITHHELD") && to_reviewers[0].contains(&alarm),
        "{to_reviewers:?}"
    );
    assert!(
        sent.iter().any(|m| m.person.as_deref() == Some("cora") && m.body.plain().contains(&alarm)),
        "the coordinators are told: {sent:?}"
    );
    assert_eq!(ledger_kinds(&a, "ledger.witnessed").await.len(), 1, "nothing more witnessed");
    let withheld = ledger_kinds(&a, "ledger.witness_withheld").await;
    assert_eq!(withheld.len(), 1);
    assert_eq!((withheld[0]["since"].as_i64(), withheld[0]["fault_seq"].as_i64()), (Some(witnessed), Some(answer)));
    // And again the next day, until it is mended.
    a.clock.advance(Duration::from_secs(86_400));
    let sent = fire(&mut a).await;
    assert!(sent.iter().any(|m| m.body.plain().starts_with("Ledger witness WITHHELD")), "{sent:?}");
    assert_eq!(ledger_kinds(&a, "ledger.witness_withheld").await.len(), 2);
    assert_eq!(ledger_kinds(&a, "ledger.witnessed").await.len(), 1);
}

/// Gets past the ledger's guards, as someone with the database's keys would, and runs
/// `statements`.
async fn tamper_ledger(b: &Bot, statements: &[String]) {
    let run = |sql: String| sqlx::raw_sql(sqlx::AssertSqlSafe(sql));
    if let Some(p) = b.rt.store().sqlite_pool() {
        for t in ["ledger_no_delete", "ledger_content_erase_only", "ledger_content_no_delete"] {
            run(format!("DROP TRIGGER {t}")).execute(p).await.unwrap();
        }
        for sql in statements {
            run(sql.clone()).execute(p).await.unwrap();
        }
    } else {
        let p = b.rt.store().postgres_pool().unwrap();
        for t in ["ledger", "ledger_content"] {
            run(format!("ALTER TABLE {t} DISABLE TRIGGER ALL")).execute(p).await.unwrap();
        }
        for sql in statements {
            run(sql.clone()).execute(p).await.unwrap();
        }
    }
}

/// The newest entries removed and the stored head left as it was: the stretch since the
/// last witness ends short of the head, so nothing is witnessed.
async fn a_witness_is_withheld_when_the_newest_entries_are_gone(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh(backend, dir.path()).await;
    let mut a = bot(&url, None).await;
    raise(&mut a, "alice").await;
    let head = a.rt.store().ledger_head().await.unwrap();
    tamper_ledger(
        &a,
        &[
            format!("DELETE FROM ledger_content WHERE seq = {}", head.seq),
            format!("DELETE FROM ledger WHERE seq = {}", head.seq),
        ],
    )
    .await;
    a.clock.advance(Duration::from_secs(15 * 3600 + 60));
    let sent: Vec<String> = fire(&mut a).await.iter().map(|m| m.body.plain()).collect();
    let alarm = format!("the chain ends at entry {} but its head says {}", head.seq - 1, head.seq);
    assert!(sent.iter().any(|t| t.starts_with("Ledger witness WITHHELD") && t.contains(&alarm)), "{sent:?}");
    assert!(ledger_kinds(&a, "ledger.witnessed").await.is_empty());
}

/// Content written around Wavelet for an entry the chain has not reached: the chain
/// verifies, but the append that reaches it would fail, so nothing is witnessed and the
/// alarm names the entry.
async fn a_witness_is_withheld_when_content_is_planted_ahead_of_the_chain(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh(backend, dir.path()).await;
    let mut a = bot(&url, None).await;
    raise(&mut a, "alice").await;
    let planted = a.rt.store().ledger_head().await.unwrap().seq + 50;
    let sql = format!("INSERT INTO ledger_content (seq, content) VALUES ({planted}, '{{\"answer\":\"planted\"}}')");
    tamper_ledger(&a, &[sql]).await;
    a.clock.advance(Duration::from_secs(15 * 3600 + 60));
    let sent: Vec<String> = fire(&mut a).await.iter().map(|m| m.body.plain()).collect();
    let alarm = format!("ledger entry {planted}: content is stored for this entry, ahead of the chain");
    assert!(sent.iter().any(|t| t.starts_with("Ledger witness WITHHELD") && t.contains(&alarm)), "{sent:?}");
    assert!(ledger_kinds(&a, "ledger.witnessed").await.is_empty());
}

async fn a_case_closed_while_wavelet_was_down_is_not_escalated_further(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(dir.path(), &[("brief", CLOSES)]);
    let mut b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    b.say("alice", "north", "!brief").await;
    // Down for 20 minutes: the close (due at 5 min) and level 2 (due at 15) are both
    // overdue and fire in one batch, in due order. The close wins.
    b.clock.advance(Duration::from_secs(20 * 60));
    assert!(fire(&mut b).await.is_empty(), "level 2 of a closed case is not sent");
    b.clock.advance(Duration::from_secs(3600));
    assert!(fire(&mut b).await.is_empty(), "nor the final level");
    let stages: Vec<i64> =
        ledger_kinds(&b, "escalation.notified").await.iter().map(|c| c["stage"].as_i64().unwrap()).collect();
    assert_eq!(stages, [1]);
    let mut tx = b.rt.store().begin().await.unwrap();
    assert_eq!(tx.escalations_of("C-1").await.unwrap()[0].status, EscalationStatus::Stopped);
}

const OPEN_THEN_LIST: &str = r#"
const COMMAND = "count";
const ALLOWED_ROLES = ["practitioner"];
fn run(ctx) {
    open_case(#{ subject: "AB 2015", category: "neglect", risk: "no" });
    let open = open_cases(ctx.group);
    tell(ctx.starter, `${open.len()} open: ${open[open.len() - 1].id}, ${open[open.len() - 1].escalation}`);
}
"#;

async fn open_cases_sees_a_case_opened_in_the_same_step(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(dir.path(), &[("count", OPEN_THEN_LIST)]);
    let mut b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    assert_eq!(b.say("alice", "north", "!count").await, ["1 open: C-1, none"]);
    assert_eq!(b.say("alice", "north", "!count").await, ["2 open: C-2, none"]);
}

async fn a_policy_renamed_after_a_run_escalated_does_not_break_it(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(dir.path(), &[("urgent", URGENT)]);
    let url = fresh(backend, dir.path()).await;
    let mut b = bot(&url, Some(&wf)).await;
    b.say("alice", "north", "!urgent").await;
    b.clock.advance(Duration::from_secs(600));
    let sent = fire(&mut b).await;
    assert!(sent.iter().any(|m| m.body.plain().starts_with("Escalation E-1")), "{sent:?}");
    // The run now waits on nothing more; restart with the policy renamed, and let the
    // run replay (a late acknowledgement of C-1 resumes nothing, but another run's
    // replay of `escalate` must not fail): start a second run and acknowledge both.
    drop(b);
    let mut config = wavelet::app::load_config(&root().join("examples/wavelet.toml"), &|_| None).unwrap();
    config.workflows.dir = wf.clone();
    for p in &mut config.policies {
        if p.id == "immediate" {
            p.id = "urgent-now".into();
        }
    }
    let clock = Arc::new(ManualClock::new(Millis(1_764_000_000_000 + 700_000)));
    let parts = wavelet::app::build(config, &url, clock).await.unwrap();
    let rt = parts.runtime;
    let run = rt.store().run("R-1").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Finished, "R-1 escalated and finished under the old name");
    // A replay of R-1's history under the new configuration still passes `escalate`.
    let wf_now = rt.workflows().read().unwrap().by_command("urgent").unwrap();
    let adv = rt.engine().advance(
        &wf_now,
        &wavelet_core::engine::RunContext {
            run_id: run.id.clone(),
            workflow: run.workflow.clone(),
            starter: run.starter.clone(),
            group: run.group_id.clone(),
            room: run.room.to_string(),
        },
        run.history.clone(),
        &mut NoHost,
    );
    assert_eq!(adv.outcome, wavelet_core::engine::Outcome::Finished, "{:?}", adv.outcome);
    assert!(adv.effects.is_empty(), "nothing performed again");
}

/// A host that knows nothing: a replay of recorded effects must not need it.
struct NoHost;

impl wavelet_core::engine::Host for NoHost {
    fn now(&mut self) -> Millis {
        Millis(0)
    }
    fn new_case_id(&mut self) -> String {
        unreachable!("replay only")
    }
    fn person_exists(&self, _: &str) -> bool {
        true
    }
    fn group_exists(&self, _: &str) -> bool {
        true
    }
    fn policy_exists(&self, _: &str) -> bool {
        false
    }
    fn role_exists(&self, _: &str) -> bool {
        true
    }
    fn new_escalation_id(&mut self) -> String {
        unreachable!("replay only")
    }
    fn members(&self, _: &str, _: &str) -> Vec<String> {
        Vec::new()
    }
}
