//! The Discord adapter against the local Discord-protocol server (`bot/discord-server`, one per
//! test), with a real serenity client inside Wavelet and the server's users as the
//! practitioner, the lead and a stranger. Needs `--features discord` (`scripts/test` turns it
//! on).
#![cfg(feature = "discord")]

#[path = "support/discord_world.rs"]
mod discord_world;

use discord_world::{
    Bot, GUILD, NORTH, Options, WAIT, alice, bea, button, config, count, dm_of, eventually, expect, expect_dm,
    log_to_test_output, mallory, slash_command_names,
};
use std::sync::Arc;
use std::time::Duration;
use wavelet::chat::discord::DiscordAdapter;
use wavelet::delivery::{ChatAdapter, SendError};
use wavelet::runtime::SystemClock;
use wavelet_core::{MessageBody, OutboundMessage, Platform, RoomRef};
use wavelet_discord_server::{
    Failure, IncomingInteraction, IncomingMessage, Place, Server, ServerOptions, StoredMessage, TestUser,
};

const IN_NORTH: Place = Place::Guild { guild_id: GUILD, channel_id: NORTH };

async fn server() -> Server {
    discord_world::start_server(ServerOptions::default()).await
}

/// A click on the button labelled `label` of `message`, by `user`, in their DM; answered
/// within Discord's deadline with the callback type `expected`.
async fn click(server: &Server, user: &TestUser, message: &StoredMessage, label: &str, expected: u64) {
    let custom_id = button(message, label);
    let place = if message.guild_id.is_some() { IN_NORTH } else { Place::Dm };
    let dispatched =
        server.dispatch_interaction(IncomingInteraction::button(user.clone(), place, message.id, custom_id)).unwrap();
    let callback = server.wait_for_callback(dispatched.id, WAIT).await.unwrap();
    assert!(callback.accepted(), "{callback:?}");
    assert_eq!(callback.callback_type, Some(expected));
    assert!(callback.elapsed < Duration::from_secs(3), "{:?}", callback.elapsed);
}

/// Everything the bot posted (messages, interaction answers, followups) pings nobody, and
/// its messages carry a nonce Discord accepts.
fn assert_sent_safely(server: &Server) {
    use wavelet_discord_server::MessageOrigin;
    for m in server.messages_from_bot().iter().filter(|m| m.origin != MessageOrigin::Person) {
        if m.origin == MessageOrigin::Bot {
            let nonce = m.nonce.as_ref().and_then(|n| n.as_str()).expect("every message has a nonce");
            assert!(nonce.len() <= 25, "{nonce}");
        }
        assert_eq!(m.allowed_mentions.as_ref().map(|a| a["parse"].clone()), Some(serde_json::json!([])), "{m:?}");
        assert!(!m.mention_everyone && m.mentions.is_empty(), "{m:?}");
        assert!(m.content.chars().count() <= 2000);
    }
}

/// The answers the ledger records, in order.
async fn answers_in_ledger(bot: &Bot) -> Vec<String> {
    let entries = bot.rt.store().ledger_page(0, i64::MAX).await.unwrap();
    entries
        .iter()
        .filter(|e| e.link.kind == "question.answered")
        .map(|e| e.content.as_ref().unwrap()["answer"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concern_goes_end_to_end_with_questions_in_dms_and_choices_as_buttons() {
    log_to_test_output();
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let bot = Bot::start(&config(dir.path(), &server, Options::default()), &server).await;
    let mut names = slash_command_names(&server);
    names.sort();
    assert_eq!(names, ["ack", "cancel", "concern", "digest", "followup", "help"]);

    // alice raises a concern with the slash command in the group's channel; Discord gets its
    // answer, only for her, within the deadline.
    let slash = server.dispatch_interaction(IncomingInteraction::slash_command(alice(), IN_NORTH, "concern")).unwrap();
    let callback = server.wait_for_callback(slash.id, WAIT).await.unwrap();
    assert!(callback.accepted() && callback.elapsed < Duration::from_secs(3), "{callback:?}");
    assert_eq!((callback.callback_type, callback.data["flags"].as_u64()), (Some(4), Some(64)));

    // The questions come in her DM; choices are buttons (and a numbered list).
    expect_dm(&server, &alice(), "Child's initials").await;
    server.dispatch_message(IncomingMessage::dm(alice(), "AB 2015"));
    let kind = expect_dm(&server, &alice(), "What kind of concern").await;
    assert!(kind.content.contains("\n1. neglect\n2. physical"), "{}", kind.content);
    assert_eq!(kind.button_custom_ids().len(), 6);
    assert_eq!(kind.components.len(), 2, "five buttons to a row");
    click(&server, &alice(), &kind, "neglect", 7).await;
    let risk = expect_dm(&server, &alice(), "Is the child at immediate risk").await;
    // The answered question's buttons are gone, so a stray click cannot answer another one.
    let dm = dm_of(&server, &alice()).await;
    let answered = server.messages_in(dm).into_iter().find(|m| m.id == kind.id).unwrap();
    assert!(answered.button_custom_ids().is_empty());
    click(&server, &alice(), &risk, "possibly", 7).await;
    expect_dm(&server, &alice(), "What did you see or hear").await;
    server.dispatch_message(IncomingMessage::dm(alice(), "Came in hungry again today"));

    // The group's channel gets the summary; bea, a lead, is asked privately to acknowledge,
    // with a button, and takes it with one click.
    expect(&server, NORTH, "New neglect concern C-1, risk: possibly").await;
    expect_dm(&server, &alice(), "Thank you. C-1 is with the group").await;
    let notice = expect_dm(&server, &bea(), "Escalation E-1 (prompt, level 1)").await;
    click(&server, &bea(), &notice, "Acknowledge C-1", 6).await;
    expect_dm(&server, &bea(), "Thank you: you have acknowledged C-1").await;
    expect_dm(&server, &alice(), "Bea Lindqvist (St Mary's Primary School) acknowledged C-1").await;

    // Each question was asked once; the ledger has the answers as clicked, and verifies.
    for q in ["Child's initials", "What kind of concern", "Is the child at immediate risk", "What did you see"] {
        assert_eq!(count(&server, dm, q), 1, "{q}");
    }
    let entries = bot.rt.store().ledger_page(0, i64::MAX).await.unwrap();
    let kinds: Vec<&str> = entries.iter().map(|e| e.link.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "question.answered").count(), 4, "{kinds:?}");
    assert!(kinds.contains(&"share") && kinds.contains(&"case.acknowledged"), "{kinds:?}");
    let answers = serde_json::to_string(&entries.iter().map(|e| &e.content).collect::<Vec<_>>()).unwrap();
    assert!(answers.contains("\"neglect\"") && answers.contains("\"possibly\""));
    let head = bot.rt.store().ledger_head().await.unwrap();
    wavelet_core::ledger::verify(entries, &head).unwrap();
    assert_sent_safely(&server);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefix_commands_work_and_strangers_are_refused_and_recorded() {
    log_to_test_output();
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let bot = Bot::start(&config(dir.path(), &server, Options::default()), &server).await;

    // Typed commands work where message content is available.
    server.dispatch_message(IncomingMessage::guild(alice(), GUILD, NORTH, "!help"));
    expect(&server, NORTH, "You can start").await;
    // A stranger is refused, typing or with a slash command, and each refusal is recorded.
    server.dispatch_message(IncomingMessage::guild(mallory(), GUILD, NORTH, "!concern"));
    let slash =
        server.dispatch_interaction(IncomingInteraction::slash_command(mallory(), IN_NORTH, "concern")).unwrap();
    assert!(server.wait_for_callback(slash.id, WAIT).await.unwrap().accepted());
    server.dispatch_message(IncomingMessage::dm(mallory(), "hello"));
    eventually("two refusals in the channel", || count(&server, NORTH, "Sorry, I don't know you") == 2).await;
    expect_dm(&server, &mallory(), "Sorry, I don't know you").await;
    // Chatter is nobody's business, and a channel no group owns is not served.
    server.dispatch_message(IncomingMessage::guild(mallory(), GUILD, NORTH, "lunch?"));
    let elsewhere = Place::Guild { guild_id: GUILD, channel_id: NORTH + 1 };
    let slash = server.dispatch_interaction(IncomingInteraction::slash_command(alice(), elsewhere, "concern")).unwrap();
    let callback = server.wait_for_callback(slash.id, WAIT).await.unwrap();
    assert!(callback.data["content"].as_str().unwrap().starts_with("Wavelet does not work in this channel"));

    let entries = bot.rt.store().ledger_page(0, i64::MAX).await.unwrap();
    let refusals: Vec<_> = entries.iter().filter(|e| e.link.kind == "refused.unknown_person").collect();
    assert_eq!(refusals.len(), 3);
    let stranger = format!("discord:{}", mallory().id);
    assert!(refusals.iter().all(|e| e.link.actor == stranger));
    assert_eq!(count(&server, NORTH, "Sorry"), 2, "chatter got no answer");
    assert_sent_safely(&server);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_mid_dialog_takes_the_answer_said_while_down_once() {
    log_to_test_output();
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &server, Options::default());
    let bot = Bot::start(&config, &server).await;
    server.dispatch_message(IncomingMessage::guild(alice(), GUILD, NORTH, "!concern"));
    expect_dm(&server, &alice(), "Child's initials").await;
    server.dispatch_message(IncomingMessage::dm(alice(), "AB 2015"));
    expect_dm(&server, &alice(), "What kind of concern").await;
    bot.stop().await;

    // Said while Wavelet is down: no connection receives it; it is in the channels' history,
    // and the new session (a fresh IDENTIFY, not a RESUME) does not replay it. Chatter in the
    // group's channel first (read back, it comes without a guild id: it must still count as
    // the group's, not as alice's DM), more of it than one page of history, then a command
    // there, then her answer in the DM, and an answer to a question she has not been asked yet.
    server.dispatch_message(IncomingMessage::guild(alice(), GUILD, NORTH, "one moment"));
    for i in 0..120 {
        server.dispatch_message(IncomingMessage::guild(bea(), GUILD, NORTH, format!("chatter {i}")));
    }
    server.dispatch_message(IncomingMessage::guild(bea(), GUILD, NORTH, "!help"));
    server.dispatch_message(IncomingMessage::dm(alice(), "2"));
    server.dispatch_message(IncomingMessage::dm(alice(), "no"));
    let bot = Bot::start(&config, &server).await;
    expect(&server, NORTH, "You can start").await;
    expect_dm(&server, &alice(), "Is the child at immediate risk").await;
    // "no" was typed before that question reached her: not taken as its answer.
    expect_dm(&server, &alice(), "Your message reached me before my question did").await;
    server.dispatch_message(IncomingMessage::dm(alice(), "no"));
    expect_dm(&server, &alice(), "What did you see or hear").await;
    server.dispatch_message(IncomingMessage::dm(alice(), "Bruises on the arm"));
    expect(&server, NORTH, "New physical concern C-1, risk: no").await;
    expect_dm(&server, &alice(), "Thank you. C-1 is with the group").await;

    let dm = dm_of(&server, &alice()).await;
    for q in ["Child's initials", "What kind of concern", "Is the child at immediate risk", "What did you see"] {
        assert_eq!(count(&server, dm, q), 1, "{q}");
    }
    // Nothing meant for alice went to the group's channel.
    assert_eq!(count(&server, NORTH, "Is the child") + count(&server, NORTH, "Your message"), 0);
    let stats = server.gateway_stats();
    assert_eq!((stats.identifies, stats.resumes), (2, 0), "a new session after the restart: {stats:?}");
    let answers = answers_in_ledger(&bot).await;
    assert_eq!(answers, ["AB 2015", "physical", "no", "Bruises on the arm"]);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_button_on_an_earlier_question_does_not_answer_the_next_one() {
    log_to_test_output();
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let bot = Bot::start(&config(dir.path(), &server, Options::default()), &server).await;
    server.dispatch_message(IncomingMessage::guild(alice(), GUILD, NORTH, "!concern"));
    expect_dm(&server, &alice(), "Child's initials").await;
    server.dispatch_message(IncomingMessage::dm(alice(), "AB 2015"));
    let kind = expect_dm(&server, &alice(), "What kind of concern").await;
    // Typed, so the question keeps its buttons; one of them is clicked after the next
    // question came.
    server.dispatch_message(IncomingMessage::dm(alice(), "1"));
    let risk = expect_dm(&server, &alice(), "Is the child at immediate risk").await;
    click(&server, &alice(), &kind, "physical", 7).await;
    expect_dm(&server, &alice(), "That button belongs to an earlier question").await;
    click(&server, &alice(), &risk, "no", 7).await;
    expect_dm(&server, &alice(), "What did you see or hear").await;
    let answers = answers_in_ledger(&bot).await;
    assert_eq!(answers, ["AB 2015", "neglect", "no"]);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_and_a_dropped_connection_mid_dialog_resume_and_process_nothing_twice() {
    log_to_test_output();
    let options = ServerOptions { heartbeat_interval: Duration::from_millis(500), ..ServerOptions::default() };
    let server = discord_world::start_server(options).await;
    let dir = tempfile::tempdir().unwrap();
    let bot = Bot::start(&config(dir.path(), &server, Options::default()), &server).await;
    server.dispatch_message(IncomingMessage::guild(alice(), GUILD, NORTH, "!concern"));
    expect_dm(&server, &alice(), "Child's initials").await;

    // RECONNECT: the answer said meanwhile is replayed on RESUME, and taken once.
    server.send_reconnect().unwrap();
    server.dispatch_message(IncomingMessage::dm(alice(), "AB 2015"));
    server.wait_for_stats(|s| s.resumes == 1, WAIT).await.unwrap();
    expect_dm(&server, &alice(), "What kind of concern").await;

    // A dropped connection: the same.
    server.drop_connection().unwrap();
    server.dispatch_message(IncomingMessage::dm(alice(), "online"));
    server.wait_for_stats(|s| s.resumes == 2, WAIT).await.unwrap();
    expect_dm(&server, &alice(), "Is the child at immediate risk").await;

    // A click after the reconnects goes through as usual.
    let risk = expect_dm(&server, &alice(), "Is the child at immediate risk").await;
    click(&server, &alice(), &risk, "no", 7).await;
    expect_dm(&server, &alice(), "What did you see or hear").await;
    server.dispatch_message(IncomingMessage::dm(alice(), "Worrying messages"));
    expect(&server, NORTH, "New online concern C-1, risk: no").await;

    let dm = dm_of(&server, &alice()).await;
    for q in ["Child's initials", "What kind of concern", "Is the child at immediate risk", "What did you see"] {
        assert_eq!(count(&server, dm, q), 1, "{q}");
    }
    let stats = server.gateway_stats();
    assert_eq!((stats.identifies, stats.resumes, stats.invalid_sessions), (1, 2, 0), "{stats:?}");
    let entries = bot.rt.store().ledger_page(0, i64::MAX).await.unwrap();
    assert_eq!(entries.iter().filter(|e| e.link.kind == "question.answered").count(), 4);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_missing_token_is_a_clear_error_before_any_gateway_connection() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = wavelet::app::load_config(&config(dir.path(), &server, Options::default()), &|_| None).unwrap();
    let url = cfg.store.url.clone();
    let rt = wavelet::app::build(cfg.clone(), &url, Arc::new(SystemClock)).await.unwrap().runtime;
    let discord = cfg.discord.as_ref().unwrap();
    let (ingest, _worker) = wavelet::delivery::ingest::Ingest::spawn(rt.clone(), 1);
    let ctx = wavelet::chat::ChatContext::new(rt.clone(), ingest);

    let started = std::time::Instant::now();
    let wrong = DiscordAdapter::connect(discord, Some("not-the-token"), ctx.clone()).await.err().expect("refused");
    let text = format!("{wrong:#}");
    assert!(text.contains("Discord refused the bot token in WAVELET_DISCORD_TOKEN (401 Unauthorized)"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let missing = DiscordAdapter::connect(discord, None, ctx).await.err().expect("refused");
    assert!(format!("{missing:#}").contains("WAVELET_DISCORD_TOKEN is not set"), "{missing:#}");
    assert_eq!(server.gateway_stats().connections, 0, "no gateway connection was tried");
    rt.store().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_code_4004_ends_the_gateway_with_a_clear_error_not_a_retry_loop() {
    log_to_test_output();
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bot = Bot::start(&config(dir.path(), &server, Options::default()), &server).await;
    server.close_connection(4004, "Authentication failed.").unwrap();
    let gateway = bot.gateway.take().unwrap();
    let ended = tokio::time::timeout(WAIT, gateway).await.expect("the gateway task ended").unwrap();
    let text = format!("{:#}", ended.expect_err("an error"));
    assert!(text.contains("4004") && text.contains("WAVELET_DISCORD_TOKEN"), "{text}");
    let connections = server.gateway_stats().connections;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.gateway_stats().connections, connections, "no reconnecting");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_concern_text_arrives_neutralised_and_split() {
    log_to_test_output();
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    // A workflow that shares what the practitioner wrote, as is.
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    std::fs::write(
        workflows.join("verbatim.rhai"),
        r#"
const COMMAND = "verbatim";
const DESCRIPTION = "Share a concern as written";
const ALLOWED_ROLES = ["practitioner"];
fn run(ctx) {
    let who = ctx.starter;
    let details = ask(who, "What did you see or hear?");
    let concern = open_case(#{ subject: "AB 2015", category: "other", risk: "no" });
    share(ctx.group, concern, `Concern ${concern.id}: ${details}`, #{ purpose: "test", basis: "public task" });
    tell(who, "Shared.");
}
"#,
    )
    .unwrap();
    let options = Options { workflows: Some(workflows), max_answer_chars: Some(20_000) };
    let bot = Bot::start(&config(dir.path(), &server, options), &server).await;

    let slash = server.dispatch_interaction(IncomingInteraction::slash_command(alice(), IN_NORTH, "verbatim")).unwrap();
    assert!(server.wait_for_callback(slash.id, WAIT).await.unwrap().accepted());
    expect_dm(&server, &alice(), "What did you see or hear").await;
    let ping = format!("@everyone @here <@&{GUILD}> <@{}> ", bea().id);
    let mut hostile = ping.clone();
    while hostile.chars().count() < 10_000 {
        hostile.push_str(&ping);
        hostile.push_str("He said he is hungry. ");
    }
    server.dispatch_message(IncomingMessage::dm(alice(), hostile.clone()));
    expect_dm(&server, &alice(), "Shared.").await;

    let joiner = "\u{2060}";
    let expected = format!("Concern C-1: {hostile}")
        .replace("@everyone", &format!("@{joiner}everyone"))
        .replace("@here", &format!("@{joiner}here"))
        .replace("<@", &format!("<@{joiner}"));
    let shared = || -> Vec<StoredMessage> {
        server
            .messages_in(NORTH)
            .into_iter()
            .filter(|m| m.author.id == server.bot().id && m.origin == wavelet_discord_server::MessageOrigin::Bot)
            .collect()
    };
    let joined = || shared().iter().map(|m| m.content.clone()).collect::<String>();
    // The room's parts go out in order, beside the DM ("Shared.") rather than after it.
    eventually("every part of the share", || joined().trim_end() == expected.trim_end()).await;
    let shared = shared();
    let lengths: Vec<usize> = shared.iter().map(|m| m.content.chars().count()).collect();
    assert!(shared.len() >= 6, "over 10,000 characters are 6 messages or more: {lengths:?}");
    let nonces: std::collections::HashSet<_> = shared.iter().map(|m| m.nonce.clone()).collect();
    assert_eq!(nonces.len(), shared.len(), "each part has its own nonce");
    assert_sent_safely(&server);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_are_idempotent_and_failures_map_to_what_delivery_does_next() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let bot = Bot::start(&config(dir.path(), &server, Options::default()), &server).await;
    let message = |key: &str, room: RoomRef| OutboundMessage {
        idempotency_key: key.into(),
        room,
        person: None,
        body: MessageBody::Text { text: "Case C-3 opened.".into() },
    };
    let north = RoomRef::Shared { platform: Platform::Discord, id: NORTH.to_string() };
    let adapter = &bot.adapter;

    // A response lost after Discord stored the message: the resend gets the first one back.
    server.fail_next_sends(1, Failure::StatusAfterWrite(500));
    let key = "run:R-1:7:0";
    assert!(matches!(adapter.send(&message(key, north.clone())).await, Err(SendError::Temporary(_))));
    adapter.send(&message(key, north.clone())).await.unwrap();
    adapter.send(&message(key, north.clone())).await.unwrap();
    assert_eq!(count(&server, NORTH, "Case C-3 opened."), 1);

    server.fail_next_sends(1, Failure::RateLimited { retry_after: Duration::from_millis(1500), global: false });
    assert!(matches!(adapter.send(&message("k2", north.clone())).await, Err(SendError::RateLimited(_))));
    server.fail_next_sends(1, Failure::Status(502));
    assert!(matches!(adapter.send(&message("k3", north.clone())).await, Err(SendError::Temporary(_))));
    let unknown = RoomRef::Shared { platform: Platform::Discord, id: "123456".into() };
    assert!(matches!(adapter.send(&message("k4", unknown)).await, Err(SendError::Permanent(_))));
    let not_discord = RoomRef::Shared { platform: Platform::Matrix, id: "!a:b".into() };
    assert!(matches!(adapter.send(&message("k5", not_discord)).await, Err(SendError::Permanent(_))));

    // A DM channel is opened once per person.
    let to_bea = RoomRef::Direct { platform: Platform::Discord, account: bea().id.to_string() };
    adapter.send(&message("k6", to_bea.clone())).await.unwrap();
    adapter.send(&message("k7", to_bea)).await.unwrap();
    let opened =
        server.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/users/@me/channels")).count();
    // Once, for the first message (a fresh store has no history to catch up on, so READY
    // opened none), and never again.
    assert_eq!(opened, 1);
    bot.stop().await;
}
