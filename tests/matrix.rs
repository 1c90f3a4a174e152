//! The Matrix adapter against a real Synapse (started per test by `support/synapse.rs`),
//! with real Matrix clients (matrix-sdk, each with its own crypto store) as the
//! practitioner and the lead. Needs `--features matrix` and the venv from
//! `scripts/synapse-venv` (`scripts/test` provides both).
#![cfg(feature = "matrix")]
#![recursion_limit = "256"]

#[path = "support/synapse.rs"]
mod synapse;

#[path = "support/matrix_world.rs"]
mod world;

use matrix_sdk::RoomMemberships;
use matrix_sdk::ruma::events::reaction::ReactionEventContent;
use matrix_sdk::ruma::events::relation::Annotation;
use matrix_sdk::ruma::events::room::message::{MessageType, RoomMessageEventContent};
use std::time::{Duration, Instant};
use synapse::Synapse;
use wavelet::chat::matrix::{MatrixAdapter, Secrets};
use world::{Bot, Person, config, context, log_to_test_output, logged_in, runtime, secrets};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concern_raised_in_a_group_room_is_asked_in_an_encrypted_direct_room() {
    concern_end_to_end(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concern_raised_in_an_encrypted_group_room_goes_the_same_way() {
    concern_end_to_end(true).await
}

/// A person in the directory who is in a configured room gets their direct room before
/// they need it: their first question goes out without a room to make first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_persons_direct_room_is_opened_before_their_first_question_needs_it() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let server = Synapse::start().await;
    server.register("wavelet", "wavelet-password", false).await;
    let alice = Person::new(&server, dir.path(), "alice").await;
    let north = alice.create_room(vec![server.user_id("wavelet").try_into().unwrap()], false, false).await;
    let bot = Bot::start(&config(dir.path(), &server, &north)).await;
    alice.wait_for_members(&north, 2).await;
    // alice has said nothing: the bot's invite to a room of two comes all the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    let opened = loop {
        let others: Vec<_> = alice.client.rooms().into_iter().filter(|r| r.room_id() != north).collect();
        if let Some(room) = others.first() {
            break room.room_id().to_owned();
        }
        assert!(Instant::now() < deadline, "no direct room opened ahead for alice");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    alice.say(&north, "!concern").await;
    let dm = alice.expect("Child's initials", None, Some(&north)).await;
    assert_eq!(dm, opened, "the first question comes in the room opened ahead");
    assert_eq!(alice.client.rooms().len(), 2, "the group room and one direct room");
    bot.stop().await;
}

/// The concern workflow end to end: raised in the group's room (encrypted or not), asked
/// in an encrypted direct room, shared with the group, escalated to the lead, who
/// acknowledges with a reaction; the practitioner is told.
async fn concern_end_to_end(encrypted_group: bool) {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let server = Synapse::start().await;
    server.register("wavelet", "wavelet-password", false).await;
    let alice = Person::new(&server, dir.path(), "alice").await;
    let bea = Person::new(&server, dir.path(), "bea").await;
    // The group's room, made by alice, with the bot and bea invited.
    let wavelet = server.user_id("wavelet").try_into().unwrap();
    let north = alice.create_room(vec![wavelet, bea.user_id()], encrypted_group, false).await;
    let bot = Bot::start(&config(dir.path(), &server, &north)).await;

    // Once the bot has joined, alice raises a concern in the room.
    alice.wait_for_members(&north, 3).await;
    let group_room = alice.client.get_room(&north).unwrap();
    assert_eq!(group_room.latest_encryption_state().await.unwrap().is_encrypted(), encrypted_group);
    alice.say(&north, "!concern").await;
    let dm = alice.expect("Child's initials", None, Some(&north)).await;
    let room = alice.client.get_room(&dm).unwrap();
    assert!(room.latest_encryption_state().await.unwrap().is_encrypted(), "the direct room is encrypted");
    alice.say(&dm, "AB 2015").await;
    alice.expect("What kind of concern", Some(&dm), None).await;
    alice.say(&dm, "1").await;
    alice.expect("Is the child at immediate risk", Some(&dm), None).await;
    alice.say(&dm, "possibly").await;
    alice.expect("What did you see or hear", Some(&dm), None).await;
    alice.say(&dm, "Came in hungry again <b>today</b> @room").await;
    // The group sees the minimal summary; the lead is asked to acknowledge, privately.
    bea.expect("New neglect concern C-1, risk: possibly", Some(&north), None).await;
    let (bea_dm, notice) = bea.expect_event("Escalation E-1 (prompt, level 1)", None, Some(&north)).await;
    alice.expect("Thank you. C-1 is with the group", Some(&dm), None).await;
    // One tap: a reaction on the notice acknowledges it.
    let reaction = ReactionEventContent::new(Annotation::new(notice, "👍".into()));
    bea.client.get_room(&bea_dm).unwrap().send(reaction).await.unwrap();
    bea.expect("Thank you: you have acknowledged C-1", Some(&bea_dm), None).await;
    alice.expect("Bea Lindqvist (St Mary's Primary School) acknowledged C-1", Some(&dm), None).await;

    // The ledger holds the share and the acknowledgement; it verifies.
    let entries = bot.rt.store().ledger_page(0, i64::MAX).await.unwrap();
    assert!(entries.iter().any(|e| e.link.kind == "share"));
    let reached: Vec<_> = entries
        .iter()
        .filter(|e| e.link.kind == "share.delivered")
        .map(|e| e.content.as_ref().unwrap()["room"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reached, [format!("matrix:{north}")], "the share's arrival in the room is recorded");
    assert!(entries.iter().any(|e| e.link.kind == "case.acknowledged"));
    let head = bot.rt.store().ledger_head().await.unwrap();
    wavelet_core::ledger::verify(entries, &head).unwrap();
    bot.stop().await;
}

/// Waits until the ledger holds an entry of `kind`.
async fn ledger_has(bot: &Bot, kind: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entries = bot.rt.store().ledger_page(0, i64::MAX).await.unwrap();
        if entries.iter().any(|e| e.link.kind == kind) {
            return;
        }
        assert!(Instant::now() < deadline, "no {kind} in the ledger");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_are_refused_and_invites_to_other_rooms_declined() {
    let dir = tempfile::tempdir().unwrap();
    let server = Synapse::start().await;
    server.register("wavelet", "wavelet-password", false).await;
    let alice = Person::new(&server, dir.path(), "alice").await;
    // mallory has a Matrix account but is not in the directory.
    let mallory = Person::new(&server, dir.path(), "mallory").await;
    let north =
        alice.create_room(vec![server.user_id("wavelet").try_into().unwrap(), mallory.user_id()], false, false).await;
    let bot = Bot::start(&config(dir.path(), &server, &north)).await;
    alice.wait_for_members(&north, 3).await;
    // A password login bootstraps cross-signing for the bot's account.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bot.adapter.cross_signed().await {
        assert!(Instant::now() < deadline, "cross-signing was never bootstrapped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A command from someone the directory does not know: refused politely, recorded.
    mallory.say(&north, "!concern").await;
    mallory.expect("Sorry, I don't know you", Some(&north), None).await;
    ledger_has(&bot, "refused.unknown_person").await;
    // Chatter from them is left alone: nothing comes back.
    mallory.say(&north, "just saying hello").await;

    // An invite to a room that is not in the configuration: declined, recorded.
    let side = mallory.create_room(vec![server.user_id("wavelet").try_into().unwrap()], false, false).await;
    ledger_has(&bot, "refused.invite").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let room = mallory.client.get_room(&side).unwrap();
        let invited = room.members(RoomMemberships::INVITE | RoomMemberships::JOIN).await.unwrap();
        if !invited.iter().any(|m| m.user_id().as_str() == "@wavelet:localhost") {
            break;
        }
        assert!(Instant::now() < deadline, "the bot never declined");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // By now a reply to the chatter would have come; there is none.
    assert_eq!(mallory.count_seen("Sorry, I don't know you"), 0, "chatter from a stranger gets no reply");
    bot.stop().await;
}

/// A practitioner's words, echoed by a workflow into the group's room and back to them,
/// arrive as text: their HTML escaped, and `@room` pinging nobody. The control: the same
/// `@room` typed by a person into the room does ping (a highlight for bea), so the
/// check on the bot's message could fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_practitioners_html_and_room_mention_are_echoed_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = Synapse::start().await;
    server.register("wavelet", "wavelet-password", false).await;
    let alice = Person::new(&server, dir.path(), "alice").await;
    let bea = Person::new(&server, dir.path(), "bea").await;
    let north =
        alice.create_room(vec![server.user_id("wavelet").try_into().unwrap(), bea.user_id()], false, false).await;
    // A scratch workflow that says back what it is told, in the group and to the starter.
    let flows = dir.path().join("workflows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(
        flows.join("echo.rhai"),
        r#"
const COMMAND = "echo";
const DESCRIPTION = "Say back what you are told";
const ALLOWED_ROLES = ["practitioner"];
fn run(ctx) {
    let said = ask(ctx.starter, "Say something");
    send(ctx.group, `Heard: ${said}`);
    tell(ctx.starter, `Heard: ${said}`);
}
"#,
    )
    .unwrap();
    let config = config(dir.path(), &server, &north);
    let shipped = format!("dir = \"{}\"", world::root().join("workflows").display());
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(&shipped));
    std::fs::write(&config, text.replace(&shipped, &format!("dir = \"{}\"", flows.display()))).unwrap();
    let bot = Bot::start(&config).await;
    alice.wait_for_members(&north, 3).await;

    // The control: alice's own `@room`, with no `m.mentions`, highlights the room for bea.
    alice.say(&north, "@room heads up").await;
    bea.expect("@room heads up", Some(&north), None).await;
    let highlights = || bea.client.get_room(&north).unwrap().unread_notification_counts().highlight_count;
    let deadline = Instant::now() + Duration::from_secs(30);
    while highlights() != 1 {
        assert!(Instant::now() < deadline, "a person's @room never highlighted the room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let words = "Came in <b>hungry</b> & <a href=\"https://x.example\">said</a> @room";
    alice.say(&north, "!echo").await;
    let dm = alice.expect("Say something", None, Some(&north)).await;
    alice.say(&dm, words).await;
    for (person, room) in [(&bea, &north), (&alice, &dm)] {
        let seen = person.expect_seen("Heard: ", Some(room), None).await;
        let MessageType::Text(text) = &seen.content.msgtype else { panic!("not text: {:?}", seen.content) };
        // The plain body keeps the words, with `@room` broken by a word joiner.
        assert_eq!(text.body, "Heard: Came in <b>hungry</b> & <a href=\"https://x.example\">said</a> @\u{2060}room");
        let html = &text.formatted.as_ref().expect("an HTML body").body;
        assert_eq!(
            html,
            "Heard: Came in &lt;b&gt;hungry&lt;/b&gt; &amp; &lt;a href=&quot;https://x.example&quot;&gt;said&lt;/a&gt; \
             @\u{2060}room"
        );
        let mentions = seen.content.mentions.as_ref().expect("m.mentions is sent");
        assert!(mentions.user_ids.is_empty() && !mentions.room, "{mentions:?}");
    }
    // bea's client has had a sync after the bot's message; no new highlight came with it.
    alice.say(&north, "that is all").await;
    bea.expect("that is all", Some(&north), None).await;
    assert_eq!(highlights(), 1, "the bot's message highlighted the room");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_bot_is_the_same_device_and_picks_up_what_came_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let server = Synapse::start().await;
    server.register("wavelet", "wavelet-password", false).await;
    let alice = Person::new(&server, dir.path(), "alice").await;
    let north = alice.create_room(vec![server.user_id("wavelet").try_into().unwrap()], false, false).await;
    let config = config(dir.path(), &server, &north);
    let bot = Bot::start(&config).await;
    // A second process on the same state folder (the same device) is refused.
    let cfg = wavelet::app::load_config(&config, &|_| None).unwrap();
    let (ctx, _worker) = context(&bot.rt);
    let err = MatrixAdapter::connect(cfg.matrix.as_ref().unwrap(), &secrets(), ctx).await.err().expect("refused");
    assert!(err.to_string().contains("is in use by another Wavelet process"), "{err:#}");
    alice.wait_for_members(&north, 2).await;
    alice.say(&north, "!concern").await;
    let dm = alice.expect("Child's initials", None, Some(&north)).await;
    alice.say(&dm, "AB 2015").await;
    alice.expect("What kind of concern", Some(&dm), None).await;
    let device = std::fs::read_to_string(dir.path().join("matrix-state/session.json")).unwrap();
    bot.stop().await;

    // While the bot is down alice answers; it must be taken when the bot is back, once.
    alice.say(&dm, "1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bot = Bot::start(&config).await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("matrix-state/session.json")).unwrap(),
        device,
        "the same session and device"
    );
    alice.expect("Is the child at immediate risk", Some(&dm), None).await;
    alice.say(&dm, "no").await;
    alice.expect("What did you see or hear", Some(&dm), None).await;
    alice.say(&dm, "Seen today.").await;
    alice.expect("Thank you. C-1 is with the group", Some(&dm), None).await;
    // Nothing asked twice, nothing lost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = alice.count_seen("What kind") + alice.count_seen("Is the child");
    assert_eq!(again, 0, "asked again: {:?}", alice.seen.lock().unwrap());
    let runs = bot.rt.store().run_counts().await.unwrap();
    assert_eq!(runs, vec![("finished".to_string(), 1)]);
    bot.stop().await;

    // A session whose stores are gone is refused, not limped through.
    std::fs::remove_dir_all(dir.path().join("matrix-state/store")).unwrap();
    let (cfg, rt) = runtime(&config).await;
    let (ctx, _worker) = context(&rt);
    let err = MatrixAdapter::connect(cfg.matrix.as_ref().unwrap(), &secrets(), ctx).await.err().expect("refused");
    assert!(err.to_string().contains("would break encryption for this device"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dialog_goes_on_after_the_homeserver_restarts() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Synapse::start().await;
    server.register("wavelet", "wavelet-password", false).await;
    let alice = Person::new(&server, dir.path(), "alice").await;
    let north = alice.create_room(vec![server.user_id("wavelet").try_into().unwrap()], false, false).await;
    let bot = Bot::start(&config(dir.path(), &server, &north)).await;
    alice.wait_for_members(&north, 2).await;
    alice.say(&north, "!concern").await;
    let dm = alice.expect("Child's initials", None, Some(&north)).await;
    // The homeserver goes away mid-dialog and comes back on the same port and database.
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = alice.client.get_room(&dm).unwrap().send(RoomMessageEventContent::text_plain("AB 2015")).await;
        if sent.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "alice could not send after the restart: {sent:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    alice.expect("What kind of concern", Some(&dm), None).await;
    alice.say(&dm, "1").await;
    alice.expect("Is the child at immediate risk", Some(&dm), None).await;
    assert_eq!(bot.rt.store().run_counts().await.unwrap(), vec![("waiting".to_string(), 1)]);
    bot.stop().await;
}

/// The bot's account already has cross-signing, set up with recovery by another of its
/// devices (an operator's client): Wavelet, logging in as a new device, takes the keys
/// with the recovery key from the environment. A wrong key is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recovery_key_brings_the_accounts_cross_signing_keys() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let server = Synapse::start().await;
    server.register("wavelet", "wavelet-password", false).await;
    let operator = logged_in(&server, &dir.path().join("operator"), "wavelet", "wavelet-password").await;
    operator.encryption().bootstrap_cross_signing_if_needed(None).await.unwrap();
    let key = operator.encryption().recovery().enable().await.unwrap();

    let config = config(dir.path(), &server, &"!unused:localhost".try_into().unwrap());
    let (cfg, rt) = runtime(&config).await;
    let (ctx, _worker) = context(&rt);
    let mut secrets = Secrets { recovery_key: Some("EsTc not the key".into()), ..secrets() };
    let err = MatrixAdapter::connect(cfg.matrix.as_ref().unwrap(), &secrets, ctx.clone()).await.err().expect("refused");
    assert!(err.to_string().contains("WAVELET_MATRIX_RECOVERY_KEY was not accepted"), "{err:#}");
    // With the right key (on the session the first attempt saved), the keys come.
    secrets.recovery_key = Some(key);
    let adapter = MatrixAdapter::connect(cfg.matrix.as_ref().unwrap(), &secrets, ctx).await.unwrap();
    assert!(adapter.cross_signed().await, "the cross-signing keys came with the recovery key");
}
