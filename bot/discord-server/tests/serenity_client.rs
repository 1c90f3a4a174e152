//! A real serenity 0.12 client against the local server, over loopback: what works here is what
//! the Discord adapter can rely on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::json;
use serenity::all::{
    ChannelId, Client, ClientBuilder, Command, CommandDataOptionValue, CommandOptionType, Context, CreateButton,
    CreateCommand, CreateCommandOption, CreateInteractionResponse, CreateInteractionResponseMessage, CreateMessage,
    EditInteractionResponse, EventHandler, GatewayError, GatewayIntents, GuildId, Http, HttpBuilder, HttpError,
    Interaction, Message, Nonce, Ready, ResumedEvent, ShardManager, UserId,
};
use serenity::async_trait;
use tokio::sync::mpsc;
use wavelet_discord_server::{
    CommandScope, Failure, IncomingInteraction, IncomingMessage, OptionValue, Place, Server, ServerOptions, TestUser,
};

const WAIT: Duration = Duration::from_secs(10);
const GUILD: u64 = 700_000_000_000_000_001;
const CHANNEL: u64 = 700_000_000_000_000_002;

fn alex() -> TestUser {
    TestUser::human(800_000_000_000_000_001, "alex")
}

/// What the bot's event handler saw.
#[derive(Debug)]
enum Seen {
    Ready { session_id: String },
    Resumed,
    Message(Box<Message>),
    Interaction(Box<Interaction>),
}

struct Recorder(mpsc::UnboundedSender<Seen>);

#[async_trait]
impl EventHandler for Recorder {
    async fn ready(&self, _: Context, ready: Ready) {
        let _ = self.0.send(Seen::Ready { session_id: ready.session_id });
    }

    async fn resume(&self, _: Context, _: ResumedEvent) {
        let _ = self.0.send(Seen::Resumed);
    }

    async fn message(&self, _: Context, message: Message) {
        let _ = self.0.send(Seen::Message(Box::new(message)));
    }

    async fn interaction_create(&self, _: Context, interaction: Interaction) {
        let _ = self.0.send(Seen::Interaction(Box::new(interaction)));
    }
}

/// A running serenity client and everything its handler has seen.
struct Bot {
    http: Arc<Http>,
    events: mpsc::UnboundedReceiver<Seen>,
    seen: Vec<Seen>,
    shard_manager: Arc<ShardManager>,
    run: tokio::task::JoinHandle<serenity::Result<()>>,
}

/// The HTTP client the notes prescribe: requests go to the proxy only with the rate limiter off.
fn http_for(server: &Server, token: &str) -> Http {
    HttpBuilder::new(token).proxy(server.http_url()).ratelimiter_disabled(true).build()
}

async fn start_bot(server: &Server, token: &str) -> Result<Bot> {
    let intents = GatewayIntents::GUILD_MESSAGES | GatewayIntents::DIRECT_MESSAGES | GatewayIntents::MESSAGE_CONTENT;
    let (tx, events) = mpsc::unbounded_channel();
    let mut client: Client =
        ClientBuilder::new_with_http(http_for(server, token), intents).event_handler(Recorder(tx)).await?;
    let http = client.http.clone();
    let shard_manager = client.shard_manager.clone();
    let run = tokio::spawn(async move { client.start().await });
    Ok(Bot { http, events, seen: Vec::new(), shard_manager, run })
}

impl Bot {
    /// Waits for an event matching `want`, keeping every event seen on the way.
    async fn expect(&mut self, what: &str, want: impl Fn(&Seen) -> bool) -> Result<&Seen> {
        let deadline = tokio::time::Instant::now() + WAIT;
        if let Some(found) = self.seen.iter().position(&want) {
            return Ok(&self.seen[found]);
        }
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| anyhow!("the bot did not see {what} within {WAIT:?}; it saw {:#?}", self.seen))?
                .context("the event handler is gone")?;
            let matched = want(&event);
            self.seen.push(event);
            if matched {
                return Ok(self.seen.last().expect("just pushed"));
            }
        }
    }

    async fn expect_message(&mut self, what: &str, want: impl Fn(&Message) -> bool) -> Result<Message> {
        match self.expect(what, |e| matches!(e, Seen::Message(m) if want(m))).await? {
            Seen::Message(message) => Ok((**message).clone()),
            _ => unreachable!(),
        }
    }

    async fn expect_interaction(&mut self, id: u64) -> Result<Interaction> {
        let is_it = |i: &Interaction| match i {
            Interaction::Command(c) => c.id.get() == id,
            Interaction::Component(c) => c.id.get() == id,
            _ => false,
        };
        match self.expect("the interaction", |e| matches!(e, Seen::Interaction(i) if is_it(i))).await? {
            Seen::Interaction(interaction) => Ok((**interaction).clone()),
            _ => unreachable!(),
        }
    }

    fn times_seen(&self, message_id: u64) -> usize {
        self.seen.iter().filter(|e| matches!(e, Seen::Message(m) if m.id.get() == message_id)).count()
    }

    /// Makes sure every dispatch sent so far has reached the handler: dispatches arrive in order,
    /// so once a fresh marker message arrives, nothing sent before it is still on its way.
    async fn drain(&mut self, server: &Server) -> Result<()> {
        let marker = server.dispatch_message(IncomingMessage::guild(alex(), GUILD, CHANNEL, "marker"));
        self.expect_message("the marker", |m| m.id.get() == marker.message_id).await?;
        Ok(())
    }

    async fn stop(self) {
        self.shard_manager.shutdown_all().await;
        self.run.abort();
    }
}

/// Starts a server and a bot, and waits until the bot has READY.
async fn connected(options: ServerOptions) -> Result<(Server, Bot)> {
    let server = Server::start(options).await?;
    let mut bot = start_bot(&server, server.token()).await?;
    let session = server.wait_identified(WAIT).await?;
    let seen = bot.expect("READY", |e| matches!(e, Seen::Ready { .. })).await?;
    let Seen::Ready { session_id } = seen else { unreachable!() };
    assert_eq!(*session_id, session.session_id);
    Ok((server, bot))
}

fn discord_error(error: &serenity::Error) -> Option<(u16, isize, &str)> {
    match error {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => {
            Some((response.status_code.as_u16(), response.error.code, response.error.message.as_str()))
        }
        _ => None,
    }
}

#[tokio::test]
async fn serenity_gets_ready_and_receives_guild_messages_and_dms() -> Result<()> {
    let (server, mut bot) = connected(ServerOptions::default()).await?;
    assert_eq!(
        bot.http.application_id().map(|a| a.get()),
        Some(server.application_id()),
        "READY sets the application id"
    );

    let in_guild = server.dispatch_message(IncomingMessage::guild(alex(), GUILD, CHANNEL, "hello everyone"));
    let message = bot.expect_message("the guild message", |m| m.id.get() == in_guild.message_id).await?;
    assert_eq!(message.guild_id, Some(GuildId::new(GUILD)));
    assert_eq!(message.channel_id, ChannelId::new(CHANNEL));
    assert_eq!(message.author.id.get(), alex().id);
    assert!(!message.author.bot);
    assert_eq!(message.content, "hello everyone");
    assert!(message.member.is_some());

    let direct = server.dispatch_message(IncomingMessage::dm(alex(), "I need to report something"));
    let message = bot.expect_message("the DM", |m| m.id.get() == direct.message_id).await?;
    assert_eq!(message.guild_id, None, "a DM has no guild");
    assert_eq!(Some(message.channel_id.get()), server.dm_channel_of(alex().id));
    assert_eq!(message.channel_id.get(), direct.channel_id);
    assert_eq!(message.content, "I need to report something");

    assert!(in_guild.seq.is_some() && in_guild.seq < direct.seq, "{in_guild:?} then {direct:?}");
    bot.stop().await;
    Ok(())
}

#[tokio::test]
async fn serenity_sends_with_nonces_opens_dms_reacts_and_meets_discords_refusals() -> Result<()> {
    let (server, mut bot) = connected(ServerOptions::default()).await?;
    let http = bot.http.clone();
    server.add_user(alex());

    // DM channel: created once, then the same channel again.
    let channel = UserId::new(alex().id).create_dm_channel(&http).await?;
    assert_eq!(Some(channel.id.get()), server.dm_channel_of(alex().id));
    assert_eq!(channel.recipient.id.get(), alex().id);
    assert_eq!(UserId::new(alex().id).create_dm_channel(&http).await?.id, channel.id);

    // The same nonce with enforce_nonce, sent twice, is one message.
    let send = || CreateMessage::new().content("Thank you.").nonce(Nonce::String("run:7:2".into())).enforce_nonce(true);
    let first = channel.id.send_message(&http, send()).await?;
    let second = channel.id.send_message(&http, send()).await?;
    assert_eq!(first.id, second.id);
    assert!(first.author.bot);
    assert_eq!(first.content, "Thank you.");
    assert_eq!(server.messages_in(channel.id.get()).len(), 1);

    // The bot receives its own message over the gateway, once.
    bot.expect_message("the bot's own message", |m| m.id == first.id && m.author.bot).await?;
    bot.drain(&server).await?;
    assert_eq!(bot.times_seen(first.id.get()), 1);

    // A response lost after Discord stored the message: the retry with the same nonce gets it back.
    server.fail_next_sends(1, Failure::StatusAfterWrite(500));
    let lost = channel
        .id
        .send_message(
            &http,
            CreateMessage::new().content("Case C-3 opened.").nonce(Nonce::String("run:7:3".into())).enforce_nonce(true),
        )
        .await;
    assert_eq!(lost.as_ref().err().and_then(discord_error), Some((500, 0, "500: Internal Server Error")));
    let retried = channel
        .id
        .send_message(
            &http,
            CreateMessage::new().content("Case C-3 opened.").nonce(Nonce::String("run:7:3".into())).enforce_nonce(true),
        )
        .await?;
    let stored: Vec<_> =
        server.messages_in(channel.id.get()).into_iter().filter(|m| m.content == "Case C-3 opened.").collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, retried.id.get());

    // A plain 500 stores nothing.
    server.fail_next_sends(1, Failure::Status(500));
    assert!(channel.id.say(&http, "not stored").await.is_err());
    assert!(server.messages_in(channel.id.get()).iter().all(|m| m.content != "not stored"));

    // A 429 reaches serenity (rate limiter off) as an unsuccessful request it cannot decode:
    // Discord's 429 body has no `code`, so serenity reports code -1 and loses `retry_after`.
    server.fail_next_sends(1, Failure::RateLimited { retry_after: Duration::from_millis(1500), global: false });
    let limited = channel.id.say(&http, "too fast").await.expect_err("429");
    let (status, code, message) = discord_error(&limited).expect("an HTTP error");
    assert_eq!((status, code), (429, -1), "{message}");

    // Over 2000 characters: serenity's builder refuses before sending; a raw body gets Discord's 50035.
    let before = server.requests().len();
    assert!(channel.id.say(&http, "x".repeat(2001)).await.is_err());
    assert_eq!(server.requests().len(), before, "serenity refused it without a request");
    let too_long =
        http.send_message(channel.id, vec![], &json!({ "content": "x".repeat(2001) })).await.expect_err("50035");
    let serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) = &too_long else { bail!("{too_long:?}") };
    assert_eq!((response.status_code.as_u16(), response.error.code), (400, 50035));
    assert_eq!(response.error.errors[0].path, "content");
    assert_eq!(response.error.errors[0].code, "BASE_TYPE_MAX_LENGTH");

    // Discord caps nonces at 25 characters; serenity does not check.
    let long_nonce = Nonce::String("ack:discord:123456789012345678:42".into());
    let refused =
        channel.id.send_message(&http, CreateMessage::new().content("hi").nonce(long_nonce)).await.expect_err("50035");
    let serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) = &refused else { bail!("{refused:?}") };
    assert_eq!((response.error.code, response.error.errors[0].path.as_str()), (50035, "nonce"));

    // A reaction, percent-encoded by serenity, arrives as the emoji.
    channel.id.create_reaction(&http, first.id, '👍').await?;
    let reactions = server.reactions();
    assert_eq!(reactions.len(), 1);
    assert_eq!((reactions[0].message_id, reactions[0].emoji.as_str()), (first.id.get(), "👍"));

    // An unknown channel is Discord's 10003.
    let unknown = ChannelId::new(123_456).say(&http, "hello").await.expect_err("10003");
    assert_eq!(discord_error(&unknown), Some((404, 10003, "Unknown Channel")));

    // A wrong token is refused on REST with 401.
    let stranger = http_for(&server, "not-the-token");
    let refused = stranger.get_current_user().await.expect_err("401");
    assert_eq!(discord_error(&refused), Some((401, 0, "401: Unauthorized")));
    assert_eq!(http.get_current_user().await?.id.get(), server.bot().id);

    bot.stop().await;
    Ok(())
}

#[tokio::test]
async fn serenity_registers_commands_and_answers_slash_commands_and_buttons() -> Result<()> {
    let (server, mut bot) = connected(ServerOptions::default()).await?;
    let http = bot.http.clone();
    server.add_guild_channel(GUILD, CHANNEL);

    let concern = CreateCommand::new("concern")
        .description("Raise a safeguarding concern")
        .add_option(CreateCommandOption::new(CommandOptionType::String, "category", "What kind of concern"));
    let registered = Command::set_global_commands(&http, vec![concern.clone()]).await?;
    assert_eq!(registered.len(), 1);
    let global = server.registered_commands(CommandScope::Global);
    assert_eq!((global[0].id, global[0].name.as_str()), (registered[0].id.get(), "concern"));
    // A bulk overwrite keeps the id of a command it keeps.
    assert_eq!(Command::set_global_commands(&http, vec![concern]).await?[0].id, registered[0].id);
    let in_guild =
        GuildId::new(GUILD).set_commands(&http, vec![CreateCommand::new("ack").description("Acknowledge")]).await?;
    assert_eq!(in_guild[0].guild_id, Some(GuildId::new(GUILD)));
    assert_eq!(server.registered_commands(CommandScope::Guild(GUILD)).len(), 1);
    // Discord requires a description for slash commands.
    let refused =
        Command::set_global_commands(&http, vec![CreateCommand::new("nodescription")]).await.expect_err("50035");
    assert_eq!(discord_error(&refused).map(|(s, c, _)| (s, c)), Some((400, 50035)));
    assert_eq!(server.registered_commands(CommandScope::Global).len(), 1, "a refused overwrite changes nothing");

    // A slash command in a guild, answered at once.
    let dispatched = server.dispatch_interaction(
        IncomingInteraction::slash_command(alex(), Place::Guild { guild_id: GUILD, channel_id: CHANNEL }, "concern")
            .option("category", OptionValue::String("neglect".into())),
    )?;
    let Interaction::Command(command) = bot.expect_interaction(dispatched.id).await? else { bail!("not a command") };
    assert_eq!(command.data.name, "concern");
    assert_eq!(command.user.id.get(), alex().id);
    assert_eq!(command.data.options[0].value, CommandDataOptionValue::String("neglect".into()));
    let answer = CreateInteractionResponseMessage::new().content("I'll ask you privately.").ephemeral(true);
    command.create_response(&http, CreateInteractionResponse::Message(answer.clone())).await?;
    let callback = server.wait_for_callback(dispatched.id, WAIT).await?;
    assert!(callback.accepted());
    assert_eq!(callback.callback_type, Some(4));
    assert_eq!(callback.data["content"], "I'll ask you privately.");
    assert!(callback.elapsed < Duration::from_secs(3), "{:?}", callback.elapsed);
    let response = server.wait_for_message(|m| m.content == "I'll ask you privately.", WAIT).await?;
    assert!(response.is_ephemeral());
    // A second answer is Discord's 40060.
    let again = command.create_response(&http, CreateInteractionResponse::Message(answer)).await.expect_err("40060");
    assert_eq!(discord_error(&again).map(|(s, c, _)| (s, c)), Some((400, 40060)));

    // A slash command in a DM, deferred and then edited.
    let dispatched = server.dispatch_interaction(IncomingInteraction::slash_command(alex(), Place::Dm, "concern"))?;
    let Interaction::Command(command) = bot.expect_interaction(dispatched.id).await? else { bail!("not a command") };
    assert_eq!(command.guild_id, None);
    command.defer(&http).await?;
    command.edit_response(&http, EditInteractionResponse::new().content("Recorded.")).await?;
    let callback = server.wait_for_callback(dispatched.id, WAIT).await?;
    assert_eq!((callback.callback_type, callback.status), (Some(5), 204));
    let edited = server.wait_for_message(|m| m.content == "Recorded.", WAIT).await?;
    assert_eq!(Some(edited.channel_id), server.dm_channel_of(alex().id));
    assert_eq!(edited.flags & 128, 0, "no longer loading");

    // A button on a bot message, clicked and acknowledged.
    let question = ChannelId::new(CHANNEL)
        .send_message(
            &http,
            CreateMessage::new()
                .content("Is the child at immediate risk?")
                .button(CreateButton::new("risk:yes").label("Yes")),
        )
        .await?;
    assert_eq!(server.messages_in(CHANNEL).last().map(|m| m.button_custom_ids()), Some(vec!["risk:yes".to_owned()]));
    let place = Place::Guild { guild_id: GUILD, channel_id: CHANNEL };
    let click =
        server.dispatch_interaction(IncomingInteraction::button(alex(), place, question.id.get(), "risk:yes"))?;
    let Interaction::Component(component) = bot.expect_interaction(click.id).await? else { bail!("not a component") };
    assert_eq!(component.data.custom_id, "risk:yes");
    assert_eq!(component.message.id, question.id);
    component.create_response(&http, CreateInteractionResponse::Acknowledge).await?;
    let callback = server.wait_for_callback(click.id, WAIT).await?;
    assert_eq!((callback.callback_type, callback.status), (Some(6), 204));
    // Discord only sends clicks on buttons that exist.
    assert!(
        server.dispatch_interaction(IncomingInteraction::button(alex(), place, question.id.get(), "risk:no")).is_err()
    );

    bot.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_interaction_answered_after_the_deadline_gets_unknown_interaction() -> Result<()> {
    let options = ServerOptions { interaction_deadline: Duration::from_millis(300), ..ServerOptions::default() };
    let (server, mut bot) = connected(options).await?;
    let http = bot.http.clone();
    Command::set_global_commands(&http, vec![CreateCommand::new("concern").description("Raise a concern")]).await?;

    let dispatched = server.dispatch_interaction(IncomingInteraction::slash_command(alex(), Place::Dm, "concern"))?;
    let Interaction::Command(command) = bot.expect_interaction(dispatched.id).await? else { bail!("not a command") };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = command.defer(&http).await.expect_err("10062");
    assert_eq!(discord_error(&late), Some((404, 10062, "Unknown interaction")));
    let callback = server.wait_for_callback(dispatched.id, WAIT).await?;
    assert!(!callback.accepted());
    assert_eq!(callback.error_code, Some(10062));
    assert!(callback.elapsed >= Duration::from_millis(500), "{:?}", callback.elapsed);

    bot.stop().await;
    Ok(())
}

#[tokio::test]
async fn reconnect_and_a_dropped_connection_resume_the_session_without_losing_dispatches() -> Result<()> {
    // A short heartbeat interval, so heartbeats and their ACKs flow during the test: a missing ACK
    // would make serenity start a new session, which the counters below would show.
    let options = ServerOptions { heartbeat_interval: Duration::from_millis(500), ..ServerOptions::default() };
    let (server, mut bot) = connected(options).await?;
    let session = server.current_session().context("a session")?;

    // RECONNECT (op 7); a message said before the bot is back is replayed on RESUME.
    server.send_reconnect()?;
    let during_reconnect =
        server.dispatch_message(IncomingMessage::guild(alex(), GUILD, CHANNEL, "said during reconnect"));
    server.wait_for_stats(|s| s.resumes == 1, WAIT).await?;
    bot.expect_message("the message said during reconnect", |m| m.id.get() == during_reconnect.message_id).await?;

    // A dropped TCP connection; same again.
    server.drop_connection()?;
    let during_drop = server.dispatch_message(IncomingMessage::dm(alex(), "said while the connection was down"));
    server.wait_for_stats(|s| s.resumes == 2, WAIT).await?;
    bot.expect_message("the message said while down", |m| m.id.get() == during_drop.message_id).await?;

    // Connected again: dispatches flow directly.
    let after = server.dispatch_message(IncomingMessage::guild(alex(), GUILD, CHANNEL, "after"));
    bot.expect_message("the message after", |m| m.id.get() == after.message_id).await?;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    bot.drain(&server).await?;
    for id in [during_reconnect.message_id, during_drop.message_id, after.message_id] {
        assert_eq!(bot.times_seen(id), 1, "message {id} seen once");
    }
    let resumed = bot.seen.iter().filter(|e| matches!(e, Seen::Resumed)).count();
    assert_eq!(resumed, 2);
    let stats = server.gateway_stats();
    assert_eq!((stats.identifies, stats.resumes, stats.invalid_sessions), (1, 2, 0), "{stats:?}");
    assert_eq!(stats.connections, 3);
    assert!(stats.heartbeats >= 2, "{stats:?}");
    assert_eq!(server.current_session().map(|s| s.session_id), Some(session.session_id.clone()));

    // An invalidated session cannot be resumed: serenity identifies again and gets a new one.
    server.invalidate_session()?;
    server.wait_for_stats(|s| s.identifies == 2, Duration::from_secs(20)).await?;
    let new_session = server.wait_identified(WAIT).await?;
    assert_ne!(new_session.session_id, session.session_id);
    let fresh = server.dispatch_message(IncomingMessage::dm(alex(), "in the new session"));
    bot.expect_message("a message in the new session", |m| m.id.get() == fresh.message_id).await?;

    bot.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_wrong_token_makes_client_start_fail_promptly_without_retrying() -> Result<()> {
    let server = Server::start(ServerOptions::default()).await?;
    let bot = start_bot(&server, "not-the-token").await?;
    let started = Instant::now();
    let outcome = tokio::time::timeout(WAIT, bot.run).await.context("client.start() kept going")??;
    let elapsed = started.elapsed();
    assert!(matches!(outcome, Err(serenity::Error::Gateway(GatewayError::InvalidAuthentication))), "{outcome:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = server.gateway_stats();
    assert_eq!((stats.authentication_failures, stats.identifies, stats.connections), (1, 0, 1), "{stats:?}");
    Ok(())
}
