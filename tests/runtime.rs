//! The runtime end to end on real stores (a SQLite file, and PostgreSQL when the test
//! command provides one): durability across restarts, exactly-once handling, hostile
//! input, failing scripts and pinned versions.
//!
//! Over 800 lines: one case per behaviour, each independent, all through the same `Bot`;
//! split by subject when a new subject joins.

mod common;
use common::*;
#[path = "../bot/wavelet/benches/common.rs"]
mod generated;
use std::sync::{Arc, Mutex};
use wavelet_store::RunStatus;

on_both!(
    a_concern_survives_a_restart_mid_dialog,
    a_redelivered_event_is_handled_once,
    hostile_answers_are_refused_and_lose_nothing,
    a_failing_script_tells_the_starter_and_the_coordinators,
    runs_keep_the_version_they_began_with,
    a_workflow_may_open_a_case_or_sleep_before_asking,
    only_the_starter_can_cancel_and_questions_to_one_person_queue,
    a_message_with_nothing_waiting_gets_a_reply,
    a_message_sent_before_the_question_is_not_taken_as_its_answer,
    sharing_under_a_case_that_does_not_exist_fails_the_run,
    a_decision_not_to_share_is_recorded_like_a_share_and_sends_nothing,
    concurrent_delivery_passes_send_each_message_once,
    a_run_whose_stored_version_replays_differently_is_stopped_and_sends_nothing,
    a_running_wavelet_refuses_a_broken_edit_and_tells_the_coordinators,
    a_starter_can_cancel_a_run_that_waits_on_someone_else,
    each_room_a_share_reaches_is_recorded_in_the_ledger,
    a_batch_ends_as_one_event_at_a_time_does,
    an_answer_in_the_same_batch_as_its_question_resumes_the_run,
    the_background_loop_sleeps_while_what_waits_is_not_for_it,
    a_steps_replies_are_claimed_by_its_commit_and_sent_by_the_next_pass,
    direct_rooms_are_served_before_shared_ones_but_do_not_hold_them_up_for_long,
    a_lapsed_claim_is_sent_while_commits_keep_handing_messages_over,
    a_claim_that_runs_out_while_a_pass_is_busy_is_sent_in_that_pass,
);

/// Serves rooms side by side; a send to a direct room takes `direct_ms`, others 10 ms.
/// Notes when each send starts and ends.
struct Timed {
    direct_ms: u64,
    log: Mutex<Vec<String>>,
}

impl ChatAdapter for Timed {
    fn platform(&self) -> Platform {
        Platform::Console
    }
    fn parallel_rooms(&self) -> usize {
        4
    }
    fn send<'a>(&'a self, m: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(async move {
            let key = &m.idempotency_key;
            self.log.lock().unwrap().push(format!("start {key}"));
            let ms = if m.room.is_direct() { self.direct_ms } else { 10 };
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            self.log.lock().unwrap().push(format!("end {key}"));
            Ok(())
        })
    }
}

/// A pass sends to direct rooms (someone in a dialog is waiting) before shared rooms,
/// whatever order they were queued in; a direct room that takes long holds the shared
/// ones up for at most `DIRECT_FIRST`.
async fn direct_rooms_are_served_before_shared_ones_but_do_not_hold_them_up_for_long(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let b = bot(&fresh(backend, dir.path()).await, None).await;
    let north = || RoomRef::Shared { platform: Platform::Console, id: "north".into() };
    let alice = || RoomRef::Direct { platform: Platform::Console, account: "alice".into() };
    for (direct_ms, keys) in [(30, ["s1", "d1"]), (3_000, ["s2", "d2"])] {
        let now = b.rt.now();
        let mut tx = b.rt.store().begin().await.unwrap();
        tx.enqueue(&text_to(keys[0], north()), None, now).await.unwrap();
        tx.enqueue(&text_to(keys[1], alice()), None, now).await.unwrap();
        tx.commit().await.unwrap();
        let timed = Arc::new(Timed { direct_ms, log: Mutex::default() });
        let mut adapters = Adapters::default();
        adapters.add(timed.clone());
        let started = std::time::Instant::now();
        assert_eq!(deliver_pending(&b.rt, &adapters, now).await.unwrap(), 2);
        let log = timed.log.lock().unwrap().clone();
        let [s, d] = keys;
        if direct_ms < 100 {
            assert_eq!(log, [format!("start {d}"), format!("end {d}"), format!("start {s}"), format!("end {s}")]);
        } else {
            // The shared room went ahead after the head start, while the direct send went on.
            assert_eq!(log, [format!("start {d}"), format!("start {s}"), format!("end {s}"), format!("end {d}")]);
            assert!(started.elapsed() >= wavelet::delivery::DIRECT_FIRST);
        }
    }
    // Direct and shared rooms together: never more rooms at once than the adapter allows.
    let now = b.rt.now();
    let mut tx = b.rt.store().begin().await.unwrap();
    for i in 0..3 {
        let dm = RoomRef::Direct { platform: Platform::Console, account: format!("p{i}") };
        let shared = RoomRef::Shared { platform: Platform::Console, id: format!("group{i}") };
        tx.enqueue(&text_to(&format!("dm{i}"), dm), None, now).await.unwrap();
        tx.enqueue(&text_to(&format!("group{i}"), shared), None, now).await.unwrap();
    }
    tx.commit().await.unwrap();
    let timed = Arc::new(Timed { direct_ms: 2_500, log: Mutex::default() });
    let mut adapters = Adapters::default();
    adapters.add(timed.clone());
    assert_eq!(deliver_pending(&b.rt, &adapters, now).await.unwrap(), 6);
    let (mut at_once, mut most) = (0, 0);
    for line in timed.log.lock().unwrap().iter() {
        at_once += if line.starts_with("start") { 1 } else { -1 };
        most = most.max(at_once);
    }
    assert_eq!(most, 4, "{:?}", timed.log.lock().unwrap());
}

/// Says "slow down" to its first send, then sends.
#[derive(Default)]
struct SlowDown {
    asked: std::sync::atomic::AtomicBool,
    sent: Mutex<Vec<OutboundMessage>>,
}

impl ChatAdapter for SlowDown {
    fn platform(&self) -> Platform {
        Platform::Console
    }
    fn send<'a>(&'a self, m: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(async move {
            if !self.asked.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Err(wavelet::delivery::SendError::RateLimited(std::time::Duration::from_secs(5)));
            }
            self.sent.lock().unwrap().push(m.clone());
            Ok(())
        })
    }
}

fn text_to(key: &str, room: RoomRef) -> OutboundMessage {
    OutboundMessage {
        idempotency_key: key.into(),
        room,
        person: None,
        body: wavelet_core::MessageBody::Text { text: format!("message {key}") },
    }
}

/// Messages this process cannot send now (for a platform it does not run, or one that
/// asked it to slow down) do not keep the background loop awake: it sleeps until the
/// wait ends (at most a second at a time), then sends.
async fn the_background_loop_sleeps_while_what_waits_is_not_for_it(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let b = bot(&fresh(backend, dir.path()).await, None).await;
    let now = b.rt.now();
    let mut tx = b.rt.store().begin().await.unwrap();
    let matrix = RoomRef::Direct { platform: Platform::Matrix, account: "@bea:example.org".into() };
    tx.enqueue(&text_to("m1", matrix), None, now).await.unwrap();
    for key in ["c1", "c2", "c3"] {
        tx.enqueue(&text_to(key, RoomRef::Shared { platform: Platform::Console, id: "north".into() }), None, now)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let slow = Arc::new(SlowDown::default());
    let mut adapters = Adapters::default();
    adapters.add(slow.clone());
    let background = wavelet::delivery::service::spawn(b.rt.clone(), adapters);
    // The clock stands still: the console asked for 5 s, so nothing is sent, and the loop
    // wakes about once a second. (Before, it went round without sleeping.)
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let passes = background.passes();
    assert!(slow.asked.load(std::sync::atomic::Ordering::SeqCst), "the first send was tried");
    assert!(slow.sent.lock().unwrap().is_empty());
    assert!((2..=6).contains(&passes), "{passes} passes in 2.5 s with nothing it may send");
    // The wait ends: the three go out, in order; the Matrix one waits for a process that runs Matrix.
    b.clock.advance(std::time::Duration::from_secs(6));
    for _ in 0..50 {
        if slow.sent.lock().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    background.stop().await;
    let keys: Vec<String> = slow.sent.lock().unwrap().iter().map(|m| m.idempotency_key.clone()).collect();
    assert_eq!(keys, ["c1", "c2", "c3"]);
    let waiting = b.rt.store().undelivered_by_platform().await.unwrap();
    assert_eq!(waiting, [("matrix".to_string(), 1)]);
}

/// While this process delivers to a platform, a step's replies are claimed by the step's
/// own commit: nobody else can take them, and the next delivery pass sends them without
/// claiming, in order and once each.
async fn a_steps_replies_are_claimed_by_its_commit_and_sent_by_the_next_pass(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bot(&fresh(backend, dir.path()).await, None).await;
    b.rt.store().claim_at_commit(Some(wavelet_store::Claimer {
        owner: b.rt.instance().to_string(),
        platforms: vec![Platform::Console],
        clock: b.rt.clock().clone(),
        lease: wavelet::delivery::CLAIM,
    }));
    let north = RoomRef::Shared { platform: Platform::Console, id: "north".into() };
    let ev = InboundEvent {
        event_id: "e1".into(),
        room: north,
        sender: Account { platform: Platform::Console, id: "alice".into() },
        text: "!concern".into(),
        received_at: b.rt.now(),
        on_message: None,
    };
    b.rt.handle_events(&[ev]).await.unwrap();
    let now = b.rt.now();
    let others = b.rt.store().claim_outbox("another process", &[Platform::Console], now, wavelet::delivery::CLAIM, 10);
    assert!(others.await.unwrap().is_empty(), "claimed by the step's commit");
    assert_eq!(deliver_pending(&b.rt, &b.adapters, now).await.unwrap(), 1);
    let sent: Vec<String> = b.sent.0.lock().unwrap().drain(..).map(|m| m.body.plain()).collect();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].contains("Child's initials"), "{sent:?}");
    assert_eq!(deliver_pending(&b.rt, &b.adapters, now).await.unwrap(), 0, "sent once");
    assert!(b.rt.store().pending_outbox(Millis(i64::MAX), 10).await.unwrap().is_empty(), "recorded as delivered");
    // The rest of the dialog, the same way: each reply once, the share recorded.
    assert!(b.say("alice", "dm", "AB 2015").await[0].contains("What kind of concern"));
    assert!(b.say("alice", "dm", "1").await[0].contains("immediate risk"));
    b.say("alice", "dm", "no").await;
    let last = b.say("alice", "dm", "Seen at drop-off.").await;
    assert_eq!(last.len(), 2, "{last:?}");
    assert!(last[0].contains("New neglect concern") && last[1].starts_with("Thank you."), "{last:?}");
    assert!(b.rt.store().take_handed().await.is_empty());
    b.verify().await;
}

/// A claim of this process that ran out (a pass that stopped mid-queue) is left alone by
/// commits; a pass claims it once it has sent what commits handed over, or, if it claimed
/// more than `CLAIM_EVERY` ago, at once (then it goes before the newer messages of its
/// room), so commits that keep handing messages over cannot hold it back for long.
async fn a_lapsed_claim_is_sent_while_commits_keep_handing_messages_over(backend: &str) {
    use wavelet::delivery::{CLAIM, CLAIM_EVERY};
    let dir = tempfile::tempdir().unwrap();
    let b = bot(&fresh(backend, dir.path()).await, None).await;
    let store = b.rt.store();
    let now = b.rt.now();
    let queue = |key: &'static str, at: Millis| async move {
        let room = RoomRef::Shared { platform: Platform::Console, id: "north".into() };
        let m = OutboundMessage {
            idempotency_key: key.into(),
            room,
            person: None,
            body: wavelet_core::MessageBody::Text { text: key.into() },
        };
        let mut tx = store.begin().await.unwrap();
        tx.enqueue(&m, None, at).await.unwrap();
        tx.commit().await.unwrap();
    };
    let sent = || -> Vec<String> { b.sent.0.lock().unwrap().drain(..).map(|m| m.idempotency_key).collect() };
    // A pass with nothing to send has just claimed from the outbox.
    assert_eq!(deliver_pending(&b.rt, &b.adapters, now).await.unwrap(), 0);
    // This process claimed two messages and never sent them: one long ago (that claim
    // has run out), one just now (it runs out a minute later).
    let long_ago = Millis(now.0 - 2 * CLAIM.as_millis() as i64);
    let me = b.rt.instance();
    let strand = |key: &'static str, claimed_at: Millis| async move {
        queue(key, long_ago).await;
        let claimed = store.claim_outbox(me, &[Platform::Console], claimed_at, CLAIM, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
    };
    strand("stranded 2", now).await;
    strand("stranded", long_ago).await;

    b.rt.store().claim_at_commit(Some(wavelet_store::Claimer {
        owner: b.rt.instance().to_string(),
        platforms: vec![Platform::Console],
        clock: b.rt.clock().clone(),
        lease: CLAIM,
    }));
    queue("first", now).await;
    assert_eq!(deliver_pending(&b.rt, &b.adapters, now).await.unwrap(), 2);
    assert_eq!(sent(), ["first", "stranded"], "handed over at commit; then the pass claims, having none left");
    // A pass claims at least every CLAIM_EVERY while it has handed-over messages to send.
    queue("second", now).await;
    let later = now.plus(CLAIM).plus(CLAIM_EVERY);
    assert_eq!(deliver_pending(&b.rt, &b.adapters, later).await.unwrap(), 2);
    assert_eq!(sent(), ["stranded 2", "second"], "claimed by the pass at once, oldest first");
    assert!(store.pending_outbox(Millis(i64::MAX), 10).await.unwrap().is_empty());
}

/// While sending `first`, the clock moves past a claim's end and a step queues `second`:
/// the pass keeps going with what that commit hands over.
struct BusyPass {
    clock: Arc<ManualClock>,
    store: wavelet_store::Store,
    sent: Mutex<Vec<String>>,
}

impl ChatAdapter for BusyPass {
    fn platform(&self) -> Platform {
        Platform::Console
    }
    fn send<'a>(&'a self, m: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(async move {
            self.sent.lock().unwrap().push(m.idempotency_key.clone());
            if m.idempotency_key == "first" {
                self.clock.advance(wavelet::delivery::CLAIM + std::time::Duration::from_millis(1));
                let second = text_to("second", RoomRef::Shared { platform: Platform::Console, id: "north".into() });
                let mut tx = self.store.begin().await.unwrap();
                tx.enqueue(&second, None, self.clock.now_millis()).await.unwrap();
                tx.commit().await.unwrap();
            }
            Ok(())
        })
    }
}

/// A pass that commits keep busy goes by the clock, not by when it began: a claim of this
/// process that runs out meanwhile is claimed and sent in that pass, before the newer
/// message of its room.
async fn a_claim_that_runs_out_while_a_pass_is_busy_is_sent_in_that_pass(backend: &str) {
    use wavelet::delivery::CLAIM;
    let dir = tempfile::tempdir().unwrap();
    let b = bot(&fresh(backend, dir.path()).await, None).await;
    let store = b.rt.store();
    let now = b.rt.now();
    let north = || RoomRef::Shared { platform: Platform::Console, id: "north".into() };
    // Claimed by this process just now, never sent: the claim runs out a minute later.
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&text_to("stranded", north()), None, now).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.claim_outbox(b.rt.instance(), &[Platform::Console], now, CLAIM, 10).await.unwrap().len(), 1);

    store.claim_at_commit(Some(wavelet_store::Claimer {
        owner: b.rt.instance().to_string(),
        platforms: vec![Platform::Console],
        clock: b.rt.clock().clone(),
        lease: CLAIM,
    }));
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&text_to("first", north()), None, now).await.unwrap();
    tx.commit().await.unwrap();
    let busy = Arc::new(BusyPass { clock: b.clock.clone(), store: store.clone(), sent: Mutex::default() });
    let mut adapters = Adapters::default();
    adapters.add(busy.clone());
    assert_eq!(deliver_pending(&b.rt, &adapters, now).await.unwrap(), 3);
    assert_eq!(*busy.sent.lock().unwrap(), ["first", "stranded", "second"]);
    assert!(store.pending_outbox(Millis(i64::MAX), 10).await.unwrap().is_empty());
}

/// A run started in a batch asks someone else; their answer, later in the same batch, is
/// found waiting (the transaction's view of waits includes runs it wrote itself).
async fn an_answer_in_the_same_batch_as_its_question_resumes_the_run(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(dir.path(), &[("asklead", ASK_LEAD)]);
    let b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    let at = b.rt.now();
    let event = |id: &str, who: &str, room: RoomRef, text: &str| InboundEvent {
        event_id: id.into(),
        room,
        sender: Account { platform: Platform::Console, id: who.into() },
        text: text.into(),
        received_at: at,
        on_message: None,
    };
    let batch = [
        event("a1", "alice", RoomRef::Shared { platform: Platform::Console, id: "north".into() }, "!asklead"),
        event("b1", "bea", RoomRef::Direct { platform: Platform::Console, account: "bea".into() }, "yes"),
    ];
    for r in b.rt.handle_batch(&batch).await {
        r.unwrap();
    }
    assert_eq!(b.rt.store().run("R-1").await.unwrap().unwrap().status, RunStatus::Finished);
    deliver_pending(&b.rt, &b.adapters, b.rt.now()).await.unwrap();
    let sent: Vec<String> = b.sent.0.lock().unwrap().iter().map(|m| m.body.plain()).collect();
    assert_eq!(sent, ["Can you take this on?", "bea said: yes"]);
    b.verify().await;
}

/// A batch handled in one transaction (group commit: the transaction's reads see its own
/// buffered rows) ends exactly where the same events handled one at a time do: the same
/// ledger (hash for hash), runs and outbox. So does a stream of batches through the
/// ingest's pipeline, where each batch is handled in a transaction carried on from the
/// one before while that one commits, whether the view it carries holds everything or
/// is narrowed at every batch to what the next one needs; and none of its batches has
/// to be handled again. With 60 people a person's next answer comes seven batches after
/// the last; with 6, in the same batch or the next (its run read from the view the batch
/// before left). Events are delivered twice, and no commit fails.
async fn a_batch_ends_as_one_event_at_a_time_does(backend: &str) {
    for people in [60, 6] {
        batches_end_as_one_event_at_a_time_does(backend, people).await;
    }
}

async fn batches_end_as_one_event_at_a_time_does(backend: &str, people: usize) {
    let answers = ["!concern", "AB 2015", "1", "2", "Came in hungry again; says there is no food at home."];
    let mut outcomes = Vec::new();
    for mode in ["batched", "pipelined", "pipelined, narrowed", "one by one"] {
        let dir = tempfile::tempdir().unwrap();
        let config = generated::config(dir.path(), &root().join("workflows"), people);
        let clock = Arc::new(ManualClock::new(Millis(1_764_000_000_000)));
        let rt = wavelet::app::build(config, &fresh(backend, dir.path()).await, clock).await.unwrap().runtime;
        if mode == "pipelined, narrowed" {
            rt.store().set_max_carried(0);
        }
        let (ingest, worker) = wavelet::delivery::ingest::Ingest::spawn(rt.clone(), 8);
        let mut receipts = Vec::new();
        for (step, text) in answers.iter().enumerate() {
            let mut events: Vec<InboundEvent> =
                (0..people).map(|p| generated::event(p, step, text, Millis(1_764_000_000_000))).collect();
            // A redelivery: the platform sends the step's first event again, and, first of
            // all, the step before's last (which is then still committing, or just was).
            events.push(events[0].clone());
            if step > 0 {
                events.insert(0, generated::event(people - 1, step - 1, answers[step - 1], Millis(1_764_000_000_000)));
            }
            match mode {
                "batched" => {
                    for r in rt.handle_batch(&events).await {
                        r.unwrap();
                    }
                }
                // Queued in order, every step's, all before any is awaited: the worker takes
                // what is queued, up to eight at a time.
                "pipelined" | "pipelined, narrowed" => {
                    for e in events {
                        receipts.push(ingest.queue(e).await.unwrap());
                    }
                }
                _ => {
                    for e in &events {
                        rt.handle_events(std::slice::from_ref(e)).await.unwrap();
                    }
                }
            }
        }
        for r in receipts {
            r.committed().await.unwrap();
        }
        drop(ingest);
        worker.await.unwrap();
        if mode.starts_with("pipelined") {
            assert!(rt.store().carried_on() > 0, "{mode}: some batches were handled while the one before committed");
            assert_eq!(rt.store().superseded(), 0, "{mode}: no batch handled on top of a failed one");
        }
        // Nothing had to be handled again: a redelivery recognised in the view, not by the
        // inbox's key failing a commit.
        assert_eq!(rt.store().failed_commits(), 0, "{mode}: no commit failed");
        let ledger = rt.store().ledger_page(0, i64::MAX).await.unwrap();
        let outbox: Vec<OutboundMessage> =
            rt.store().pending_outbox(Millis(i64::MAX), 10_000).await.unwrap().into_iter().map(|p| p.message).collect();
        let runs = rt.store().run_counts().await.unwrap();
        assert_eq!(runs, [("finished".to_string(), people as i64)], "{mode}");
        rt.store().verify(&[]).await.unwrap().expect("ledger verifies");
        outcomes.push((mode, ledger, outbox));
    }
    let (_, expected_ledger, expected_outbox) = outcomes.pop().unwrap();
    assert!(expected_ledger.len() > people * 5, "each concern's entries: {}", expected_ledger.len());
    for (mode, ledger, outbox) in outcomes {
        // Where they part, rather than both ledgers whole.
        let parted = (0..ledger.len().max(expected_ledger.len())).find(|&i| ledger.get(i) != expected_ledger.get(i));
        if let Some(i) = parted {
            panic!(
                "{people} people, {mode}: the ledger parts from one event at a time at entry {i} ({} vs {} entries):\n{:?}\n{:?}",
                ledger.len(),
                expected_ledger.len(),
                ledger.get(i).map(|e| &e.link),
                expected_ledger.get(i).map(|e| &e.link)
            );
        }
        assert_eq!(outbox, expected_outbox, "{people} people, {mode}: the same messages queued");
    }
}

/// A share to a group with two rooms: one `share.delivered` entry per room, on the case,
/// after the share itself; the case's timeline holds them.
async fn each_room_a_share_reaches_is_recorded_in_the_ledger(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh(backend, dir.path()).await;
    let mut b = bot_with(&url, None, |c| {
        let north = c.groups.iter_mut().find(|g| g.id == "north").unwrap();
        north.rooms.push(RoomRef::Shared { platform: Platform::Console, id: "north-annex".into() });
    })
    .await;
    b.say("alice", "north", "!concern").await;
    for answer in ["AB 2015", "neglect", "no"] {
        b.say("alice", "dm", answer).await;
    }
    let r = b.say("alice", "dm", "Seen today.").await;
    assert_eq!(r.iter().filter(|t| t.starts_with("New neglect concern C-1")).count(), 2, "{r:?}");
    let entries = b.rt.store().ledger_page(0, i64::MAX).await.unwrap();
    let share = entries.iter().find(|e| e.link.kind == "share").expect("the share is recorded");
    let delivered: Vec<_> = entries.iter().filter(|e| e.link.kind == "share.delivered").collect();
    let rooms: Vec<&str> = delivered.iter().map(|e| e.content.as_ref().unwrap()["room"].as_str().unwrap()).collect();
    assert_eq!(rooms, ["console:north", "console:north-annex"]);
    for d in &delivered {
        assert_eq!(d.link.case_id.as_deref(), Some("C-1"));
        assert_eq!(d.link.run_id, share.link.run_id);
        assert!(d.link.seq > share.link.seq);
    }
    let timeline = b.rt.store().ledger_for_case("C-1").await.unwrap();
    assert_eq!(timeline.iter().filter(|e| e.link.kind == "share.delivered").count(), 2);
    b.verify().await;
}

async fn a_starter_can_cancel_a_run_that_waits_on_someone_else(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(dir.path(), &[("asklead", ASK_LEAD)]);
    let mut b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    assert_eq!(b.say("alice", "north", "!asklead").await, ["Can you take this on?"]);
    let r = b.say("alice", "dm", "!cancel R-99").await;
    assert!(r[0].contains("can't cancel R-99"), "{r:?}");
    let r = b.say("alice", "dm", "cancel").await;
    assert!(r[0].starts_with("Cancelled."), "{r:?}");
    assert_eq!(b.rt.store().run("R-1").await.unwrap().unwrap().status, RunStatus::Cancelled);
    // bea's answer now has nothing to answer, and she is told so.
    let r = b.say("bea", "dm", "yes").await;
    assert!(r[0].contains("not recorded"), "{r:?}");
    // Two runs of alice's own waiting: she is asked which.
    b.say("alice", "north", "!asklead").await;
    b.say("alice", "north", "!asklead").await;
    let r = b.say("alice", "dm", "cancel").await;
    assert!(r[0].contains("R-2 (asklead), R-3 (asklead)"), "{r:?}");
    let r = b.say("alice", "dm", "!cancel R-3").await;
    assert!(r[0].starts_with("Cancelled."), "{r:?}");
    assert_eq!(b.rt.store().run("R-2").await.unwrap().unwrap().status, RunStatus::Waiting);
    b.verify().await;
}

async fn a_running_wavelet_refuses_a_broken_edit_and_tells_the_coordinators(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(dir.path(), &[("asklead", ASK_LEAD)]);
    let mut config = wavelet::app::load_config(&root().join("examples/wavelet.toml"), &|_| None).unwrap();
    config.workflows.dir = wf.clone();
    config.workflows.reload_interval = std::time::Duration::from_millis(100);
    let clock = Arc::new(ManualClock::new(Millis(1_764_000_000_000)));
    let url = fresh(backend, dir.path()).await;
    let rt = wavelet::app::build(config, &url, clock).await.unwrap().runtime;
    let sent = Arc::new(Outbox::default());
    let mut adapters = Adapters::default();
    adapters.add(sent.clone());
    let reloader = wavelet::ops::reload::spawn(rt.clone());
    let background = wavelet::delivery::service::spawn(rt.clone(), adapters.clone());
    std::fs::write(wf.join("asklead.rhai"), "const ALLOWED_ROLES = [\"lead\"];\nfn run(ctx) {\n  let = 1;\n}\n")
        .unwrap();
    let mut told = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        told.extend(sent.0.lock().unwrap().drain(..));
        if !told.is_empty() {
            break;
        }
    }
    reloader.abort();
    background.stop().await;
    assert_eq!(told.len(), 1, "one coordinator (cora) is told: {told:?}");
    assert_eq!(told[0].person.as_deref(), Some("cora"));
    let text = told[0].body.plain();
    assert!(text.contains("asklead.rhai:3:") && text.contains("previous version keeps serving"), "{text}");
    // The old version still serves.
    assert!(rt.workflows().read().unwrap().by_command("asklead").is_some());
    let entries = rt.store().ledger_page(0, 100).await.unwrap();
    assert!(entries.iter().any(|e| e.link.kind == "workflow.refused"));
}

async fn a_run_whose_stored_version_replays_differently_is_stopped_and_sends_nothing(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(dir.path(), &[]);
    let url = fresh(backend, dir.path()).await;
    let mut b = bot(&url, Some(&wf)).await;
    b.say("alice", "north", "!concern").await;
    b.say("alice", "dm", "AB 2015").await;
    let run = b.rt.store().run("R-1").await.unwrap().unwrap();
    // The stored source of the pinned version is changed behind Wavelet's back (the
    // only way a pinned, deterministic script can replay differently).
    let changed =
        std::fs::read_to_string(wf.join("raise_concern.rhai")).unwrap().replace("Child's initials", "Initials");
    let sql = sqlx::AssertSqlSafe(format!(
        "UPDATE scripts SET source = '{}' WHERE hash = '{}'",
        changed.replace('\'', "''"),
        run.script_hash
    ));
    if let Some(p) = b.rt.store().sqlite_pool() {
        sqlx::query(sql).execute(p).await.unwrap();
    } else {
        sqlx::query(sql).execute(b.rt.store().postgres_pool().unwrap()).await.unwrap();
    }
    // A new process (nothing cached) with the file itself edited too.
    std::fs::write(wf.join("raise_concern.rhai"), &changed).unwrap();
    b.rt.store().close().await;
    drop(b);
    let mut b = bot(&url, Some(&wf)).await;
    b.n = 100;
    let r = b.say("alice", "dm", "neglect").await;
    assert_eq!(r.len(), 2, "the starter and the coordinator are told, nothing else: {r:?}");
    assert!(r[0].contains("something went wrong") && r[0].contains("R-1"), "{r:?}");
    assert!(r[1].contains("replaying it asked for a different step 0"), "{r:?}");
    let run = b.rt.store().run("R-1").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Diverged);
    assert_eq!(run.history.len(), 2, "the history is kept as it was");
    b.verify().await;
}

/// A folder with the shipped concern workflow and `extra` workflows (name, source).
async fn a_workflow_may_open_a_case_or_sleep_before_asking(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(
        dir.path(),
        &[(
            "early",
            "const COMMAND = \"early\";\nconst ALLOWED_ROLES = [\"practitioner\"];\nfn run(ctx) {\n    let c = open_case(#{ subject: \"XY 2014\", category: \"other\", risk: \"no\" });\n    sleep(\"1m\");\n    let a = ask(ctx.starter, \"Anything to add?\");\n    note(c, a);\n    tell(ctx.starter, `Noted on ${c.id}`);\n}\n",
        )],
    );
    let mut b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    assert!(b.say("alice", "north", "!early").await.is_empty(), "nothing to say until the timer fires");
    assert!(b.rt.store().case("C-1").await.unwrap().is_some(), "the case is stored with its run");
    b.clock.advance(std::time::Duration::from_secs(61));
    assert_eq!(b.rt.fire_due_timers().await.unwrap(), 1);
    deliver_pending(&b.rt, &b.adapters, b.rt.now()).await.unwrap();
    let asked: Vec<String> = b.sent.0.lock().unwrap().drain(..).map(|m| m.body.plain()).collect();
    assert_eq!(asked, ["Anything to add?"]);
    assert_eq!(b.say("alice", "dm", "nothing").await, ["Noted on C-1"]);
    b.verify().await;
}

const ASK_LEAD: &str = "const COMMAND = \"asklead\";\nconst ALLOWED_ROLES = [\"practitioner\"];\nfn run(ctx) {\n    let a = ask(\"bea\", \"Can you take this on?\");\n    tell(ctx.starter, `bea said: ${a}`);\n}\n";

async fn only_the_starter_can_cancel_and_questions_to_one_person_queue(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(dir.path(), &[("asklead", ASK_LEAD)]);
    let mut b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    assert_eq!(b.say("alice", "north", "!asklead").await, ["Can you take this on?"]);
    // bea was asked by alice's workflow: not hers to cancel.
    let r = b.say("bea", "dm", "cancel").await;
    assert!(r[0].contains("only they can cancel it"), "{r:?}");
    assert_eq!(b.rt.store().run("R-1").await.unwrap().unwrap().status, RunStatus::Waiting);
    // bea may still start her own concern; its first question waits behind alice's.
    let r = b.say("bea", "north", "!concern").await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].contains("another question for you waiting"), "{r:?}");
    // Her next message answers the older question, then the queued one is asked.
    let r = b.say("bea", "dm", "yes").await;
    assert_eq!(r, ["bea said: yes", "Child's initials and year of birth (no full names), e.g. AB 2015?"]);
    let r = b.say("bea", "dm", "CD 2016").await;
    assert_eq!(
        r,
        ["What kind of concern is it?\n1. neglect\n2. physical\n3. emotional\n4. sexual\n5. online\n6. other"]
    );
    // Her own dialog she can cancel.
    let r = b.say("bea", "dm", "cancel").await;
    assert!(r[0].starts_with("Cancelled."), "{r:?}");
    b.verify().await;
}

async fn a_message_with_nothing_waiting_gets_a_reply(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bot(&fresh(backend, dir.path()).await, None).await;
    for a in ["!concern", "AB 2015", "1", "1", "Hungry."] {
        b.say("alice", if a == "!concern" { "north" } else { "dm" }, a).await;
    }
    let r = b.say("alice", "dm", "Also: there were bruises.").await;
    assert_eq!(r.len(), 1);
    assert!(r[0].contains("not recorded"), "{r:?}");
}

async fn a_message_sent_before_the_question_is_not_taken_as_its_answer(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bot(&fresh(backend, dir.path()).await, None).await;
    b.say("alice", "north", "!concern").await;
    let asked_at = b.rt.now();
    b.clock.advance(std::time::Duration::from_secs(5));
    b.say("alice", "dm", "AB 2015").await;
    // Typed before the second question existed (e.g. a burst of two messages).
    let r = b.say_at("alice", "dm", "Hungry every morning", "burst-2", asked_at).await;
    assert!(r[0].contains("before my question did"), "{r:?}");
    let run = b.rt.store().run("R-1").await.unwrap().unwrap();
    assert_eq!(run.history.len(), 2, "the burst was not recorded as the category");
}

async fn sharing_under_a_case_that_does_not_exist_fails_the_run(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(
        dir.path(),
        &[(
            "stray",
            "const COMMAND = \"stray\";\nconst ALLOWED_ROLES = [\"practitioner\"];\nfn run(ctx) {\n    share(ctx.group, \"C-999\", \"about nobody\", #{ purpose: \"p\", basis: \"b\" });\n}\n",
        )],
    );
    let mut b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    let r = b.say("alice", "north", "!stray").await;
    assert!(r.iter().all(|m| !m.contains("about nobody")), "nothing shared: {r:?}");
    let run = b.rt.store().run("R-1").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("no case `C-999`"));
    let entries = b.rt.store().ledger_page(0, 100).await.unwrap();
    assert!(!entries.iter().any(|e| e.link.kind == "share"));
}

async fn a_decision_not_to_share_is_recorded_like_a_share_and_sends_nothing(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflows(
        dir.path(),
        &[
            (
                "noshare",
                "const COMMAND = \"noshare\";\nconst ALLOWED_ROLES = [\"practitioner\"];\nfn run(ctx) {\n    let c = open_case(#{ subject: \"AB 2015\", category: \"other\", risk: \"no\" });\n    decline_share(ctx.group, c, #{ reason: \"no risk of harm; the school supports the family\", consent: \"not sought\" });\n    tell(ctx.starter, `Recorded ${c.id}`);\n}\n",
            ),
            (
                "strayno",
                "const COMMAND = \"strayno\";\nconst ALLOWED_ROLES = [\"practitioner\"];\nfn run(ctx) {\n    decline_share(ctx.group, \"C-999\", #{ reason: \"r\" });\n}\n",
            ),
        ],
    );
    let mut b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    let said = b.say("alice", "north", "!noshare").await;
    assert_eq!(said, ["Recorded C-1"], "only the starter hears back; nothing reaches the group");
    let entries = b.rt.store().ledger_page(0, 100).await.unwrap();
    let declined: Vec<_> = entries.iter().filter(|e| e.link.kind == "share.declined").collect();
    assert_eq!(declined.len(), 1);
    assert_eq!(declined[0].link.case_id.as_deref(), Some("C-1"));
    let c = declined[0].content.as_ref().unwrap();
    assert_eq!(c["group"], "north");
    assert_eq!(c["reason"], "no risk of harm; the school supports the family");
    assert_eq!((c["consent"].as_str(), c["decided_by"].as_str()), (Some("not sought"), Some("alice")));
    let recipients: Vec<&str> =
        c["recipients"].as_array().unwrap().iter().map(|r| r["person"].as_str().unwrap()).collect();
    assert_eq!(recipients, ["alice", "bea", "carl", "dana", "eve"], "with whom it would have gone");
    assert!(!entries.iter().any(|e| e.link.kind == "share"));
    let mut shown = Vec::new();
    wavelet::ops::audit::show_case(&b.rt, "rey", "C-1", &mut shown).await.unwrap();
    let shown = String::from_utf8(shown).unwrap();
    assert!(
        shown.contains(
            "decided not to share with north: no risk of harm; the school supports the family (consent: not sought)"
        ),
        "{shown}"
    );

    // Like a share, it needs a case that exists.
    b.say("alice", "north", "!strayno").await;
    let run = b.rt.store().run("R-2").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("no case `C-999`"));
    let entries = b.rt.store().ledger_page(0, 100).await.unwrap();
    assert_eq!(entries.iter().filter(|e| e.link.kind == "share.declined").count(), 1, "nothing recorded for it");
    b.verify().await;
}

/// Sends slowly, so passes overlap.
struct Slow(Mutex<Vec<String>>);

impl ChatAdapter for Slow {
    fn platform(&self) -> Platform {
        Platform::Console
    }
    fn send<'a>(&'a self, m: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            self.0.lock().unwrap().push(m.idempotency_key.clone());
            Ok(())
        })
    }
}

async fn concurrent_delivery_passes_send_each_message_once(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh(backend, dir.path()).await;
    let b = bot(&url, None).await;
    // A second process on the same store: its passes claim rows too.
    let other = bot(&url, None).await;
    let mut tx = b.rt.store().begin().await.unwrap();
    for i in 0..30 {
        let m = OutboundMessage {
            idempotency_key: format!("k{i}"),
            room: RoomRef::Shared { platform: Platform::Console, id: "north".into() },
            person: None,
            body: wavelet_core::MessageBody::Text { text: format!("m{i}") },
        };
        tx.enqueue(&m, None, Millis(0)).await.unwrap();
    }
    tx.commit().await.unwrap();
    let slow = Arc::new(Slow(Mutex::default()));
    let mut adapters = Adapters::default();
    adapters.add(slow.clone());
    let now = b.rt.now();
    let passes = (0..4).map(|i| {
        let (rt, adapters) = (if i % 2 == 0 { b.rt.clone() } else { other.rt.clone() }, adapters.clone());
        tokio::spawn(async move { deliver_pending(&rt, &adapters, now).await.unwrap() })
    });
    let mut delivered = 0;
    for p in passes {
        delivered += p.await.unwrap();
    }
    let mut keys = slow.0.lock().unwrap().clone();
    assert_eq!(keys.len(), 30, "each message once: {keys:?}");
    keys.sort();
    keys.dedup();
    assert_eq!((keys.len(), delivered), (30, 30));
}

async fn a_concern_survives_a_restart_mid_dialog(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh(backend, dir.path()).await;
    let mut b = bot(&url, None).await;
    assert_eq!(b.say("alice", "north", "!concern").await.len(), 1);
    b.say("alice", "dm", "AB 2015").await;
    b.rt.store().close().await;
    drop(b);

    // A new process on the same store carries on where the run was.
    let mut b = bot(&url, None).await;
    b.n = 100;
    let r = b.say("alice", "dm", "neglect").await;
    assert_eq!(r, ["Is the child at immediate risk?\n1. no\n2. possibly\n3. yes"]);
    b.say("alice", "dm", "no").await;
    let r = b.say("alice", "dm", "Hungry every morning.").await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r[0].starts_with("New neglect concern C-1, risk: no"), "{r:?}");
    let run = b.rt.store().run("R-1").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Finished);
    assert!(b.verify().await >= 12);
}

async fn a_redelivered_event_is_handled_once(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bot(&fresh(backend, dir.path()).await, None).await;
    assert_eq!(b.say_with_id("alice", "north", "!concern", "evt-1").await.len(), 1);
    assert!(b.say_with_id("alice", "north", "!concern", "evt-1").await.is_empty());
    b.say_with_id("alice", "dm", "AB 2015", "evt-2").await;
    assert!(b.say_with_id("alice", "dm", "AB 2015", "evt-2").await.is_empty());
    let run = b.rt.store().run("R-1").await.unwrap().unwrap();
    assert_eq!(run.history.len(), 2, "one answer recorded, one question pending");
    assert!(b.rt.store().run("R-2").await.unwrap().is_none(), "no second run");
}

async fn hostile_answers_are_refused_and_lose_nothing(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bot(&fresh(backend, dir.path()).await, None).await;
    b.say("alice", "north", "!concern").await;
    b.say("alice", "dm", "AB 2015").await;
    b.say("alice", "dm", "1").await;
    b.say("alice", "dm", "1").await;
    // Free text: a megabyte, NUL bytes, direction overrides, zero-width characters.
    let r = b.say("alice", "dm", &"x".repeat(1_000_000)).await;
    assert_eq!(r.len(), 1);
    assert!(r[0].contains("longer than 4000 characters"), "{r:?}");
    let r = b.say("alice", "dm", &"\0".repeat(1_000_000)).await;
    assert!(r[0].contains("longer than 4000 characters"), "{r:?}");
    let odd = "Said \u{202E}olleh\u{202C} and\u{200B} \0left.";
    let r = b.say("alice", "dm", odd).await;
    assert!(r[0].starts_with("New neglect concern C-1"), "{r:?}");
    let run = b.rt.store().run("R-1").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Finished);
    b.verify().await;
}

async fn a_failing_script_tells_the_starter_and_the_coordinators(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("workflows");
    std::fs::create_dir(&wf).unwrap();
    std::fs::write(
        wf.join("broken.rhai"),
        "const COMMAND = \"broken\";\nconst ALLOWED_ROLES = [\"practitioner\"];\nfn run(ctx) {\n    let a = ask(ctx.starter, \"Q?\");\n    let n = 0;\n    loop { n += 1; }\n}\n",
    )
    .unwrap();
    let mut b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    assert_eq!(b.say("alice", "north", "!broken").await, ["Q?"]);
    let r = b.say("alice", "dm", "answer").await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r[0].contains("something went wrong") && r[0].contains("R-1"), "{r:?}");
    // Coordinators get where; the ledger keeps what (it may quote what someone typed).
    assert!(r[1].contains("broken.rhai") && r[1].contains("R-1"), "{r:?}");
    assert!(!r[1].contains("answer"), "{r:?}");
    let run = b.rt.store().run("R-1").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    // The answer given before the failure is still in the ledger.
    let entries = b.rt.store().ledger_page(0, 1000).await.unwrap();
    assert!(entries.iter().any(|e| e.link.kind == "question.answered"));
    let failed = entries.iter().find(|e| e.link.kind == "run.failed").expect("run.failed recorded");
    assert!(failed.content.as_ref().unwrap()["error"].as_str().unwrap().contains("endless loop"), "{failed:?}");
}

async fn runs_keep_the_version_they_began_with(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("workflows");
    std::fs::create_dir(&wf).unwrap();
    let v = |q: &str| {
        format!(
            "const COMMAND = \"ask\";\nconst ALLOWED_ROLES = [\"practitioner\"];\nfn run(ctx) {{\n    let a = ask(ctx.starter, \"First?\");\n    tell(ctx.starter, \"{q}\");\n}}\n"
        )
    };
    std::fs::write(wf.join("ask.rhai"), v("version one")).unwrap();
    let mut b = bot(&fresh(backend, dir.path()).await, Some(&wf)).await;
    b.say("alice", "north", "!ask").await;
    // The coordinator edits the workflow while alice's run waits.
    std::fs::write(wf.join("ask.rhai"), v("version two")).unwrap();
    let report = b.rt.workflows().write().unwrap().reload(b.rt.engine(), &wf);
    assert_eq!(report.loaded.len(), 1);
    assert_eq!(b.say("alice", "dm", "x").await, ["version one"]);
    b.say("bea", "north", "!ask").await;
    assert_eq!(b.say("bea", "dm", "y").await, ["version two"]);
    // An edit that does not compile is refused; the last good version keeps serving.
    std::fs::write(wf.join("ask.rhai"), "fn run(ctx) { let = ; }").unwrap();
    let report = b.rt.workflows().write().unwrap().reload(b.rt.engine(), &wf);
    assert_eq!(report.refused.len(), 1);
    assert!(report.refused[0].to_string().contains("ask.rhai:1:"), "{}", report.refused[0]);
    b.say("dana", "north", "!ask").await;
    assert_eq!(b.say("dana", "dm", "z").await, ["version two"]);
}

/// `url` (PostgreSQL, trust authentication as in the tests) as another database user.
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

/// Runs `sql` as whoever `url` connects as; the error's text if it is refused.
async fn exec_as(url: &str, sql: &str) -> Result<u64, String> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.map_err(|e| e.to_string())?;
    let r = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut c).await;
    let _ = c.close().await;
    r.map(|r| r.rows_affected()).map_err(|e| e.to_string())
}

/// PostgreSQL: a role granted by `wavelet store grant` runs everything (a concern, its
/// escalation and acknowledgement, delivery, an erasure, a witness, the audit) on a store
/// its owner migrated, and can neither change nor remove the chain, nor switch off the
/// triggers that guard it. Without the grant, opening says what to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_application_role_runs_wavelet_but_cannot_rewrite_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let owner_url = fresh("postgres", dir.path()).await;
    // As on PostgreSQL 15 and later whatever the version: only the owner creates tables.
    exec_as(&owner_url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC").await.unwrap();
    let role = format!("wavelet_app_{}_{}", std::process::id(), rand_suffix());
    exec_as(&owner_url, &format!("CREATE ROLE {role} LOGIN")).await.unwrap();
    let app_url = as_user(&owner_url, &role);

    // Before the owner has migrated, the role cannot, and is told what to do.
    let refused = wavelet_store::Store::open(&app_url).await.expect_err("the role may not create the schema");
    assert!(refused.to_string().contains("wavelet store grant ROLE"), "{refused}");

    let owner = wavelet_store::Store::open(&owner_url).await.unwrap();
    // Roles no grant could hold are refused, each saying why.
    let refusal = |e: wavelet_store::Error| e.to_string();
    assert!(refusal(owner.grant("Robert'); DROP TABLE ledger;--").await.unwrap_err()).contains("not a role name"));
    assert!(refusal(owner.grant("nobody_here").await.unwrap_err()).contains("no database role"));
    let me = owner_url.split("://").nth(1).unwrap().split('@').next().unwrap().split(':').next().unwrap();
    assert!(refusal(owner.grant(me).await.unwrap_err()).contains("cannot be held"), "the owner itself");
    exec_as(&owner_url, &format!("GRANT CREATE ON SCHEMA public TO {role}")).await.unwrap();
    assert!(refusal(owner.grant(&role).await.unwrap_err()).contains("may create tables"));
    exec_as(&owner_url, &format!("REVOKE CREATE ON SCHEMA public FROM {role}")).await.unwrap();
    exec_as(&owner_url, &format!("ALTER ROLE {role} CREATEROLE")).await.unwrap();
    assert!(refusal(owner.grant(&role).await.unwrap_err()).contains("may create roles"));
    exec_as(&owner_url, &format!("ALTER ROLE {role} NOCREATEROLE")).await.unwrap();
    let granted = owner.grant(&role).await.unwrap();
    assert!(
        granted.iter().any(
            |s| s == &format!("GRANT SELECT, INSERT ON \"public\".ledger, \"public\".ledger_content TO \"{role}\"")
        )
    );
    // Granting again (after an upgrade) is harmless: the rest runs as the role after it.
    owner.grant(&role).await.unwrap();
    owner.close().await;
    // Only the role's own grantor can grant: the role cannot grant itself more.
    let by_role = wavelet_store::Store::open(&app_url).await.unwrap();
    assert!(refusal(by_role.grant(&role).await.unwrap_err()).contains("run `wavelet store grant"));
    by_role.close().await;
    // Every table Wavelet has is granted to it (a table a later migration adds must be).
    let ungranted: Vec<String> = {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&owner_url).await.unwrap();
        let tables = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
             AND NOT has_table_privilege($1, format('%I.%I', schemaname, tablename), 'SELECT')",
        )
        .bind(&role)
        .fetch_all(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
        tables
    };
    assert!(ungranted.is_empty(), "tables the role cannot read: {ungranted:?}");

    let mut b = bot(&app_url, None).await;
    b.say("alice", "north", "!concern").await;
    for answer in ["AB 2015", "neglect", "yes", "Seen today."] {
        b.say("alice", "dm", answer).await;
    }
    b.clock.advance(std::time::Duration::from_secs(15 * 60 + 1));
    b.rt.fire_due_timers().await.unwrap();
    let acked = b.say("bea", "north", "ack C-1").await;
    assert!(acked.iter().any(|t| t.contains("you have acknowledged C-1")), "{acked:?}");
    b.clock.advance(std::time::Duration::from_secs(24 * 3600));
    b.rt.fire_due_timers().await.unwrap();
    deliver_pending(&b.rt, &b.adapters, b.rt.now()).await.unwrap();
    let entries = b.rt.store().ledger_page(0, i64::MAX).await.unwrap();
    assert!(entries.iter().any(|e| e.link.kind == "ledger.witnessed"), "the witness fired as the role");
    let note = entries.iter().find(|e| e.link.kind == "case.note").unwrap().link.seq;
    assert!(wavelet::ops::audit::erase(&b.rt, "rey", note, "retention period ended").await.unwrap());
    let entries_now = b.verify().await;
    assert_eq!(entries_now, entries.len() as i64 + 1, "the erasure is chained");

    // What the role may not do to the chain, even knowing how.
    let denied = "permission denied";
    for (sql, why) in [
        ("UPDATE ledger SET actor = 'mallory' WHERE seq = 1", denied),
        ("DELETE FROM ledger WHERE seq = 1", denied),
        ("TRUNCATE ledger", denied),
        ("DELETE FROM ledger_content WHERE seq = 1", denied),
        ("UPDATE ledger_content SET seq = 999 WHERE seq = 1", denied),
        ("INSERT INTO ledger_head (id, seq, hash) VALUES (2, 0, 'x')", denied),
        ("ALTER TABLE ledger DISABLE TRIGGER ALL", "must be owner"),
        ("ALTER TABLE ledger_content DISABLE TRIGGER ALL", "must be owner"),
        ("DROP TABLE ledger", "must be owner"),
        ("DELETE FROM _sqlx_migrations", denied),
        // The columns an erasure writes are granted; the trigger allows only an erasure.
        ("UPDATE ledger_content SET content = '{\"answer\":\"all fine\"}' WHERE seq = 3", "can only be erased"),
    ] {
        let e = exec_as(&app_url, sql).await.expect_err(sql);
        assert!(e.contains(why), "`{sql}` was refused, but not for `{why}`: {e}");
    }
    assert_eq!(b.verify().await, entries_now, "nothing changed");
    b.rt.store().close().await;

    // A database a newer Wavelet migrated further is not opened by this one, owner or not
    // (the two must not run side by side).
    exec_as(
        &owner_url,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from a newer wavelet', true, '\\x00', 0)",
    )
    .await
    .unwrap();
    for url in [&owner_url, &app_url] {
        let e = wavelet_store::Store::open(url).await.expect_err("an older Wavelet refuses a newer schema");
        assert!(e.to_string().contains("holds migration 99990101000000, which this Wavelet does not know"), "{e}");
    }

    // Tidy the cluster: a role is not dropped with the test's database.
    let _ = exec_as(&owner_url, &format!("DROP OWNED BY {role}")).await;
    let _ = exec_as(&owner_url, &format!("DROP ROLE {role}")).await;
}
