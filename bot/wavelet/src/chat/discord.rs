//! The Discord adapter (cargo feature `discord`): Wavelet as a Discord bot, through serenity
//! 0.12 (gateway and REST, no cache, no command framework).
//!
//! - **Identity**: the bot token comes from `WAVELET_DISCORD_TOKEN` only. It is checked with
//!   `GET /users/@me` before anything else, so a wrong token is a clear error at start, never
//!   a gateway retry loop; a gateway close with 4004 later ends [`DiscordAdapter::run`] with a
//!   clear error too. Discord user ids (never names) decide who is who; strangers are refused
//!   by the runtime, which records the refusal.
//! - **Rooms**: the configured group channels (`discord:<channel id>`) and direct messages.
//!   A person's DM channel is created once and remembered.
//! - **Inbound**: messages (prefix commands like `!concern` and typed answers; guild channels
//!   need the MESSAGE_CONTENT intent for those), slash commands (registered at each READY
//!   for the loaded workflows, plus `help`, `cancel` and `ack`) and button clicks. A slash
//!   command becomes the text `!<command>`; a button the chosen option (or `ack C-n`). Each
//!   is handed to the ingest under its message or interaction id (`message:<id>`,
//!   `interaction:<id>`), so a redelivery after a RESUME or a restart is dropped by the
//!   inbox. Interactions are answered after the event is committed, or deferred when the
//!   commit takes too long, well within Discord's 3 s; a refused event gets an ephemeral
//!   error, never silence. After a new session (a start, or a session Discord would not
//!   resume), messages said meanwhile are read from each channel's history, from a little
//!   before the last event taken. Events carry the time in their snowflake, so what was
//!   typed before a question is not taken as its answer; a choice button names its question.
//! - **Outbound**: practitioners' text never pings: `allowed_mentions` parses nothing, and
//!   `@everyone`, `@here` and `<@…>` are broken visibly with a word joiner. Messages over
//!   2,000 characters are split at line or word boundaries. Each part carries a nonce derived
//!   from the message's idempotency key with `enforce_nonce`, so a resend after a crash gets
//!   the first message back instead of posting twice (within Discord's nonce window, a few
//!   minutes). `choose` questions carry buttons (and the numbered list, so typing works
//!   too); escalation notices an Acknowledge button.
//!
//! Only this file knows serenity's types.

use crate::delivery::ingest::{Ingest, SubmitError};
use crate::delivery::{ChatAdapter, SendError, SendFuture};
use crate::runtime::Runtime;
use anyhow::{Context as _, bail};
use serenity::all::{
    ButtonStyle, ChannelId, Client, ClientBuilder, Command, CommandDataOptionValue, CommandInteraction,
    CommandOptionType, ComponentInteraction, Context, CreateActionRow, CreateAllowedMentions, CreateButton,
    CreateCommand, CreateCommandOption, CreateInteractionResponse, CreateInteractionResponseFollowup,
    CreateInteractionResponseMessage, CreateMessage, EditInteractionResponse, EventHandler, GatewayError,
    GatewayIntents, GetMessages, Http, HttpBuilder, HttpError, InstallationContext, Interaction, InteractionContext,
    Message, MessageId, MessageType, Nonce, Ready, ShardManager, UserId,
};
use serenity::async_trait;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use wavelet_core::config::DiscordConfig;
use wavelet_core::engine::WorkflowMeta;
use wavelet_core::{Account, InboundEvent, MessageBody, Millis, OutboundMessage, Platform, RoomRef, message_tag};

/// The environment variable the bot token is read from.
pub const TOKEN_ENV: &str = "WAVELET_DISCORD_TOKEN";

/// Discord's limits: characters in a message, buttons in a row and on a message, characters
/// in a button label and a custom id, characters in a nonce.
const MAX_MESSAGE_CHARS: usize = 2_000;
const BUTTONS_PER_ROW: usize = 5;
const MAX_BUTTONS: usize = 25;
const MAX_LABEL_CHARS: usize = 80;
const MAX_CUSTOM_ID_CHARS: usize = 100;
const NONCE_CHARS: usize = 25;
/// Characters in a [`message_tag`].
const TAG_CHARS: usize = 12;

/// How long an interaction may wait for its event's commit before it is deferred: Discord
/// wants a callback within 3 s of the interaction.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// After a new session, each channel's history is read from a little before the last
/// event Wavelet took from Discord (events are handed in out of order by a few seconds at
/// most; the inbox drops what was taken already), in pages of 100, at most this many pages
/// per channel.
const CATCH_UP_MARGIN: Duration = Duration::from_secs(300);
const CATCH_UP_PAGES: usize = 50;

/// Discord's epoch (the first second of 2015) in Unix milliseconds: snowflakes count from it.
const DISCORD_EPOCH_MS: i64 = 1_420_070_400_000;

/// When Discord answers 429 without a usable `retry_after` (serenity drops the body of a
/// rate-limit answer it does not handle itself), wait this long.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(5);

/// Custom ids of Wavelet's buttons: `wavelet:ack:C-12`, and `wavelet:choose:<tag>:2[:label]`
/// where the tag is the question's [`message_tag`] (ids without one are from before tags).
const ACK_BUTTON: &str = "wavelet:ack:";
const CHOOSE_BUTTON: &str = "wavelet:choose:";

pub struct DiscordAdapter {
    /// REST for outbound messages and DM channels.
    http: Arc<Http>,
    token: String,
    api_base: Option<String>,
    intents: GatewayIntents,
    rt: Arc<Runtime>,
    /// The bot's own user id: its own messages come back over the gateway and are ignored.
    me: UserId,
    /// The configured group channels.
    group_channels: HashSet<u64>,
    /// DM channels by the person's user id, found or created. Never held across an await
    /// (creating a DM channel is idempotent on Discord: a race makes the same channel).
    dms: Mutex<HashMap<u64, ChannelId>>,
    /// The running gateway client's shards, for [`DiscordAdapter::shutdown`].
    shards: Mutex<Option<Arc<ShardManager>>>,
}

/// The HTTP client: against Discord with serenity's rate limiter, or (tests only) against a
/// local server, where the proxy is honoured only with the rate limiter off.
fn http_client(token: &str, api_base: Option<&str>) -> Http {
    // Nothing Wavelet sends pings anyone, edits of interaction answers included.
    let builder = HttpBuilder::new(token).default_allowed_mentions(CreateAllowedMentions::new());
    match api_base {
        Some(base) => builder.proxy(base).ratelimiter_disabled(true).build(),
        None => builder.build(),
    }
}

impl DiscordAdapter {
    /// Checks the token (and, with `api_base`, that the server hands out a gateway) before
    /// any gateway connection, with errors that say what to do.
    pub async fn connect(
        cfg: &DiscordConfig,
        token: Option<&str>,
        rt: Arc<Runtime>,
    ) -> anyhow::Result<Arc<DiscordAdapter>> {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            bail!(
                "the configuration has a [discord] section, but {TOKEN_ENV} is not set; set it to the bot's token (Discord Developer Portal → your application → Bot → Reset Token)"
            );
        };
        let api_base = cfg.api_base.clone();
        let http = http_client(token, api_base.as_deref());
        let where_ = api_base.as_deref().unwrap_or("discord.com");
        let me = match http.get_current_user().await {
            Ok(me) => me,
            Err(e) if status_of(&e) == Some(401) => bail!(
                "Discord refused the bot token in {TOKEN_ENV} (401 Unauthorized); copy the current token from the Developer Portal (your application → Bot → Reset Token) into {TOKEN_ENV}"
            ),
            Err(e) => bail!(
                "cannot check the bot token with Discord at {where_}: {}; check the network (and discord.api_base, if set)",
                describe(&e)
            ),
        };
        if !me.bot {
            bail!(
                "the token in {TOKEN_ENV} belongs to a user account, not a bot; create a bot for your application in the Developer Portal and use its token"
            );
        }
        // If this call failed, serenity would quietly connect to Discord's own gateway.
        if let Some(base) = &api_base {
            http.get_gateway().await.map_err(|e| {
                anyhow::anyhow!("the server at discord.api_base {base} does not hand out a gateway: {}", describe(&e))
            })?;
        }
        let mut intents = GatewayIntents::GUILD_MESSAGES | GatewayIntents::DIRECT_MESSAGES;
        if cfg.message_content {
            intents |= GatewayIntents::MESSAGE_CONTENT;
        }
        let group_channels = rt
            .directory()
            .groups()
            .iter()
            .flat_map(|g| &g.rooms)
            .filter_map(|r| match r {
                RoomRef::Shared { platform: Platform::Discord, id } => id.parse().ok(),
                _ => None,
            })
            .collect();
        tracing::info!(bot = me.id.get(), "discord token accepted");
        Ok(Arc::new(DiscordAdapter {
            http: Arc::new(http),
            token: token.to_string(),
            api_base,
            intents,
            rt,
            me: me.id,
            group_channels,
            dms: Mutex::default(),
            shards: Mutex::default(),
        }))
    }

    /// Connects to the gateway and hands what people say to the ingest until the connection
    /// ends for good. serenity resumes dropped connections and RECONNECTs by itself; this
    /// returns only when Discord will not have the bot (a revoked token, close code 4004; an
    /// intent the application may not use, 4014), with an error that says what to do.
    pub async fn run(self: Arc<Self>, ingest: Ingest) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut client: Client =
            ClientBuilder::new_with_http(http_client(&self.token, self.api_base.as_deref()), self.intents)
                .event_handler(Forward(tx))
                .await
                .context("cannot set up the Discord gateway client")?;
        *self.shards.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.shard_manager.clone());
        let handling = tokio::spawn(self.clone().handle_inbound(rx, client.http.clone(), ingest));
        let outcome = client.start().await;
        handling.abort();
        match outcome {
            Ok(()) => bail!("the Discord gateway connection was shut down"),
            Err(serenity::Error::Gateway(GatewayError::InvalidAuthentication)) => {
                tracing::error!("discord closed the gateway: authentication failed (4004)");
                bail!(
                    "Discord closed the gateway with 4004 (authentication failed): the token in {TOKEN_ENV} was reset or revoked; set the current token and start Wavelet again"
                )
            }
            Err(serenity::Error::Gateway(GatewayError::DisallowedGatewayIntents)) => {
                tracing::error!("discord closed the gateway: disallowed intents (4014)");
                bail!(
                    "Discord refused the MESSAGE_CONTENT intent (4014): switch on \"Message Content Intent\" on your application's Bot page in the Developer Portal, or set message_content = false under [discord] (guild channels then take slash commands and buttons only)"
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "discord gateway connection ended");
                bail!("the Discord gateway connection ended: {e}")
            }
        }
    }

    /// Closes the gateway connection (a clean close: Discord ends the session).
    pub async fn shutdown(&self) {
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(shards) = shards {
            shards.shutdown_all().await;
        }
    }

    /// The one loop that hands inbound events to the ingest. serenity runs each event
    /// handler call in a task of its own, so events that arrived together can reach this
    /// loop out of order: each batch is put back in Discord's order (ids grow with time) and
    /// queued on the ingest in that order; waiting for the commits (and answering
    /// interactions) happens beside the loop.
    async fn handle_inbound(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Inbound>,
        http: Arc<Http>,
        ingest: Ingest,
    ) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 64).await > 0 {
            batch.sort_by_key(|i| i.id());
            for inbound in batch.drain(..) {
                match inbound {
                    Inbound::Ready { session } => {
                        tracing::info!(session = %session, "discord gateway session started");
                        tokio::spawn(self.clone().on_ready(http.clone(), ingest.clone()));
                    }
                    Inbound::Message(m) => {
                        let Some(event) = self.message_event(&m) else { continue };
                        let committing = hand_in(&ingest, event).await;
                        let id = m.id.get();
                        tokio::spawn(async move {
                            if let Err(e) = committing.await {
                                tracing::error!(message = id, error = %e, "discord message not taken");
                            }
                        });
                    }
                    Inbound::Command(c, at) => {
                        let Some(event) = self.command_event(&c) else {
                            tokio::spawn(respond_not_served(http.clone(), Interaction::Command(*c)));
                            continue;
                        };
                        let committing = hand_in(&ingest, event).await;
                        tokio::spawn(answer_command(http.clone(), c, committing, at));
                    }
                    Inbound::Component(c, at) => {
                        let Some((event, click)) = self.click_event(&c) else {
                            tokio::spawn(respond_not_served(http.clone(), Interaction::Component(*c)));
                            continue;
                        };
                        let committing = hand_in(&ingest, event).await;
                        tokio::spawn(answer_click(http.clone(), c, click, committing, at));
                    }
                }
            }
        }
    }

    /// A new session: register the slash commands, then take in what was said while no
    /// session was connected.
    async fn on_ready(self: Arc<Self>, http: Arc<Http>, ingest: Ingest) {
        let metas = self.rt.workflows().read().map(|w| w.metas()).unwrap_or_default();
        match Command::set_global_commands(&http, slash_commands(&metas)).await {
            Ok(registered) => tracing::info!(commands = registered.len(), "discord slash commands registered"),
            Err(e) => tracing::warn!(error = %describe(&e), "discord slash commands not registered"),
        }
        self.catch_up(&ingest).await;
    }

    /// Messages said while Wavelet had no session (it was down, or Discord would not resume
    /// its session): each group channel's and each known person's DM channel's history from
    /// [`CATCH_UP_MARGIN`] before the last event taken from Discord, oldest first. In a DM
    /// channel only the person's own messages count. What was taken already is dropped by the
    /// inbox; what was typed before the question it would answer is refused by the runtime
    /// (messages keep the time they were said). Nothing was ever taken from Discord: there
    /// is no history that is Wavelet's to answer.
    async fn catch_up(&self, ingest: &Ingest) {
        let since = loop {
            match self.rt.store().last_inbox_at(Platform::Discord).await {
                Ok(Some(at)) => break at,
                Ok(None) => {
                    tracing::info!("discord history not read: nothing was taken from Discord before");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "discord history not read yet: the store is not answering; trying again");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        };
        let from = since.0.saturating_sub(i64::try_from(CATCH_UP_MARGIN.as_millis()).unwrap_or(0));
        let from = MessageId::new(snowflake_at(from));
        let mut channels: Vec<(ChannelId, Option<UserId>)> =
            self.group_channels.iter().map(|&c| (ChannelId::new(c), None)).collect();
        let people: Vec<u64> = self
            .rt
            .directory()
            .people()
            .iter()
            .flat_map(|p| &p.accounts)
            .filter(|a| a.platform == Platform::Discord)
            .filter_map(|a| snowflake(&a.id))
            .collect();
        for person in people {
            match self.dm_channel(person).await {
                Ok(c) => channels.push((c, Some(UserId::new(person)))),
                Err(e) => tracing::warn!(error = %e, "discord DM channel not opened for catching up"),
            }
        }
        let mut taken = 0;
        for (channel, person) in channels {
            let mut after = from;
            let mut committing = Vec::new();
            for page in 0.. {
                if page == CATCH_UP_PAGES {
                    tracing::warn!(channel = channel.get(), "discord history beyond the catch-up limit not read");
                    break;
                }
                let mut got = match channel.messages(&*self.http, GetMessages::new().after(after).limit(100)).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(channel = channel.get(), error = %describe(&e), "discord history not read");
                        break;
                    }
                };
                got.sort_by_key(|m| m.id);
                let full = got.len() == 100;
                for m in &got {
                    after = after.max(m.id);
                    if person.is_some_and(|p| m.author.id != p) {
                        continue;
                    }
                    if let Some(event) = self.message_event(m) {
                        committing.push((m.id, hand_in(ingest, event).await));
                    }
                }
                if !full {
                    break;
                }
            }
            for (id, c) in committing {
                match c.await {
                    Ok(()) => taken += 1,
                    Err(e) => tracing::error!(message = id.get(), error = %e, "discord message not taken"),
                }
            }
        }
        tracing::info!(messages = taken, "discord history read for messages said while not connected");
    }

    /// When something with this snowflake was said, never later than Wavelet's clock.
    fn said_at(&self, id: u64) -> Millis {
        Millis(i64::try_from(id >> 22).unwrap_or(i64::MAX).saturating_add(DISCORD_EPOCH_MS)).min(self.rt.now())
    }

    fn account(user: UserId) -> Account {
        Account { platform: Platform::Discord, id: user.get().to_string() }
    }

    /// Where something was said: a configured group channel, or the DM with `user`; `None`
    /// for any other guild channel. The group channels are looked up first: messages read
    /// from a channel's history come without a guild id, even from a guild channel.
    fn room(&self, channel: ChannelId, in_guild: bool, user: UserId) -> Option<RoomRef> {
        if self.group_channels.contains(&channel.get()) {
            return Some(RoomRef::Shared { platform: Platform::Discord, id: channel.get().to_string() });
        }
        if in_guild {
            return None;
        }
        self.dms.lock().unwrap_or_else(|e| e.into_inner()).insert(user.get(), channel);
        Some(RoomRef::Direct { platform: Platform::Discord, account: user.get().to_string() })
    }

    fn message_event(&self, m: &Message) -> Option<InboundEvent> {
        // The bot's own messages come back over the gateway; other bots and webhooks are
        // not people; joins, pins and the like are not said to anyone.
        if m.author.id == self.me
            || m.author.bot
            || m.webhook_id.is_some()
            || !matches!(m.kind, MessageType::Regular | MessageType::InlineReply)
        {
            return None;
        }
        let room = self.room(m.channel_id, m.guild_id.is_some(), m.author.id)?;
        // Without MESSAGE_CONTENT a guild message arrives empty: nothing to take.
        if matches!(room, RoomRef::Shared { .. }) && m.content.is_empty() {
            return None;
        }
        Some(InboundEvent {
            event_id: format!("message:{}", m.id.get()),
            room,
            sender: Self::account(m.author.id),
            text: m.content.clone(),
            received_at: self.said_at(m.id.get()),
            on_message: None,
        })
    }

    fn command_event(&self, c: &CommandInteraction) -> Option<InboundEvent> {
        let room = self.room(c.channel_id, c.guild_id.is_some(), c.user.id)?;
        let mut text = format!("!{}", c.data.name);
        for option in &c.data.options {
            if let CommandDataOptionValue::String(value) = &option.value
                && let Some(word) = value.split_whitespace().next()
            {
                text.push(' ');
                text.extend(word.chars().take(40));
            }
        }
        Some(InboundEvent {
            event_id: format!("interaction:{}", c.id.get()),
            room,
            sender: Self::account(c.user.id),
            text,
            received_at: self.said_at(c.id.get()),
            on_message: None,
        })
    }

    fn click_event(&self, c: &ComponentInteraction) -> Option<(InboundEvent, Click)> {
        let click = Click::parse(&c.data.custom_id)?;
        let room = self.room(c.channel_id, c.guild_id.is_some(), c.user.id)?;
        let event = InboundEvent {
            event_id: format!("interaction:{}", c.id.get()),
            room,
            sender: Self::account(c.user.id),
            text: click.text(),
            received_at: self.said_at(c.id.get()),
            on_message: click.question().map(str::to_string),
        };
        Some((event, click))
    }

    /// The DM channel with a person: remembered, or opened (Discord hands back the existing
    /// one) and remembered.
    async fn dm_channel(&self, user: u64) -> Result<ChannelId, SendError> {
        if let Some(c) = self.dms.lock().unwrap_or_else(|e| e.into_inner()).get(&user) {
            return Ok(*c);
        }
        let user_id = UserId::new(user);
        let channel = user_id.create_dm_channel(&*self.http).await.map_err(send_error)?;
        tracing::info!(channel = channel.id.get(), "discord DM channel opened");
        self.dms.lock().unwrap_or_else(|e| e.into_inner()).insert(user, channel.id);
        Ok(channel.id)
    }

    async fn send_one(&self, m: &OutboundMessage) -> Result<(), SendError> {
        let channel = match &m.room {
            RoomRef::Shared { platform: Platform::Discord, id } => match snowflake(id) {
                Some(c) => ChannelId::new(c),
                None => return Err(SendError::Permanent("not a Discord channel id".into())),
            },
            RoomRef::Direct { platform: Platform::Discord, account } => match snowflake(account) {
                Some(user) => self.dm_channel(user).await?,
                None => return Err(SendError::Permanent("not a Discord user id".into())),
            },
            _ => return Err(SendError::Permanent("not a Discord room".into())),
        };
        for (index, part) in render(&m.body, &m.idempotency_key).into_iter().enumerate() {
            let mut message = CreateMessage::new()
                .content(part.content)
                .nonce(Nonce::String(nonce(&m.idempotency_key, index)))
                .enforce_nonce(true)
                .allowed_mentions(CreateAllowedMentions::new());
            if !part.buttons.is_empty() {
                message = message.components(action_rows(&part.buttons));
            }
            channel.send_message(&*self.http, message).await.map_err(send_error)?;
        }
        Ok(())
    }
}

impl ChatAdapter for DiscordAdapter {
    fn platform(&self) -> Platform {
        Platform::Discord
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(self.send_one(message))
    }

    /// Discord limits each channel on its own; a few side by side keep one slow room from
    /// holding up the others without inviting the global limit.
    fn parallel_rooms(&self) -> usize {
        4
    }
}

/// What the gateway hands over, as the inbound loop takes it. `Instant`s are when an
/// interaction arrived (its answer is due within 3 s of that).
enum Inbound {
    Ready { session: String },
    Message(Box<Message>),
    Command(Box<CommandInteraction>, Instant),
    Component(Box<ComponentInteraction>, Instant),
}

impl Inbound {
    fn id(&self) -> u64 {
        match self {
            Inbound::Ready { .. } => 0,
            Inbound::Message(m) => m.id.get(),
            Inbound::Command(c, _) => c.id.get(),
            Inbound::Component(c, _) => c.id.get(),
        }
    }
}

/// serenity's event handler: forwards to the inbound loop and does nothing else.
struct Forward(mpsc::UnboundedSender<Inbound>);

#[async_trait]
impl EventHandler for Forward {
    async fn ready(&self, _: Context, ready: Ready) {
        let _ = self.0.send(Inbound::Ready { session: ready.session_id });
    }

    async fn message(&self, _: Context, message: Message) {
        let _ = self.0.send(Inbound::Message(Box::new(message)));
    }

    async fn interaction_create(&self, _: Context, interaction: Interaction) {
        let at = Instant::now();
        let _ = match interaction {
            Interaction::Command(c) => self.0.send(Inbound::Command(Box::new(c), at)),
            Interaction::Component(c) => self.0.send(Inbound::Component(Box::new(c), at)),
            _ => Ok(()),
        };
    }
}

type Committing = Pin<Box<dyn Future<Output = Result<(), SubmitError>> + Send>>;

/// Queues an event on the ingest and returns the wait for its commit. The first poll puts the
/// event on the queue (or in line for a place on it, which tokio keeps in order), so events
/// are queued in the order they are handed in here.
async fn hand_in(ingest: &Ingest, event: InboundEvent) -> Committing {
    let ingest = ingest.clone();
    let mut committing: Committing = Box::pin(async move { ingest.submit(event).await });
    match std::future::poll_fn(|cx| Poll::Ready(committing.as_mut().poll(cx))).await {
        Poll::Ready(result) => Box::pin(std::future::ready(result)),
        Poll::Pending => committing,
    }
}

/// The commit, if it comes before the interaction's answer is due; else the wait, still going.
async fn commit_within(mut committing: Committing, arrived: Instant) -> Result<Result<(), SubmitError>, Committing> {
    let due = tokio::time::Instant::from_std(arrived + ANSWER_WITHIN);
    match tokio::time::timeout_at(due, &mut committing).await {
        Ok(result) => Ok(result),
        Err(_) => Err(committing),
    }
}

fn not_taken(e: &SubmitError) -> String {
    let what = match e {
        SubmitError::ShuttingDown => "Wavelet is restarting",
        SubmitError::Refused(_) => "Wavelet could not record it",
    };
    format!("That was not taken: {what}. Please try again in a moment.")
}

fn ephemeral(text: String) -> CreateInteractionResponseMessage {
    CreateInteractionResponseMessage::new().content(text).ephemeral(true).allowed_mentions(CreateAllowedMentions::new())
}

/// A slash command: answered (only to the person) once its event is committed; deferred
/// first when the commit takes longer than Discord waits.
async fn answer_command(http: Arc<Http>, c: Box<CommandInteraction>, committing: Committing, arrived: Instant) {
    let text = |result: &Result<(), SubmitError>| match result {
        Ok(()) => format!("Received `/{}`.", c.data.name),
        Err(e) => not_taken(e),
    };
    let outcome = match commit_within(committing, arrived).await {
        Ok(result) => {
            if let Err(e) = &result {
                tracing::error!(interaction = c.id.get(), error = %e, "discord command not taken");
            }
            c.create_response(&*http, CreateInteractionResponse::Message(ephemeral(text(&result)))).await
        }
        Err(committing) => {
            if let Err(e) = c.defer_ephemeral(&*http).await {
                tracing::warn!(interaction = c.id.get(), error = %describe(&e), "discord command not deferred");
            }
            let result = committing.await;
            c.edit_response(&*http, EditInteractionResponse::new().content(text(&result))).await.map(|_| ())
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(interaction = c.id.get(), error = %describe(&e), "discord command not answered");
    }
}

/// A button click: acknowledged once its event is committed. An answered choice's buttons are
/// taken off its question, so a stray click later cannot answer another question; an
/// Acknowledge button stays for the others notified. A click that was not taken gets an
/// ephemeral error.
async fn answer_click(
    http: Arc<Http>,
    c: Box<ComponentInteraction>,
    click: Click,
    committing: Committing,
    arrived: Instant,
) {
    let settle = |click: &Click| match click {
        Click::Choose { .. } => {
            CreateInteractionResponse::UpdateMessage(CreateInteractionResponseMessage::new().components(Vec::new()))
        }
        Click::Ack(_) => CreateInteractionResponse::Acknowledge,
    };
    let outcome = match commit_within(committing, arrived).await {
        Ok(Ok(())) => c.create_response(&*http, settle(&click)).await,
        Ok(Err(e)) => {
            tracing::error!(interaction = c.id.get(), error = %e, "discord click not taken");
            c.create_response(&*http, CreateInteractionResponse::Message(ephemeral(not_taken(&e)))).await
        }
        Err(committing) => {
            if let Err(e) = c.defer(&*http).await {
                tracing::warn!(interaction = c.id.get(), error = %describe(&e), "discord click not deferred");
            }
            match committing.await {
                Ok(()) if matches!(click, Click::Choose { .. }) => {
                    c.edit_response(&*http, EditInteractionResponse::new().components(Vec::new())).await.map(|_| ())
                }
                Ok(()) => Ok(()),
                Err(e) => {
                    let followup = CreateInteractionResponseFollowup::new()
                        .content(not_taken(&e))
                        .ephemeral(true)
                        .allowed_mentions(CreateAllowedMentions::new());
                    c.create_followup(&*http, followup).await.map(|_| ())
                }
            }
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(interaction = c.id.get(), error = %describe(&e), "discord click not answered");
    }
}

/// An interaction somewhere Wavelet does not serve (a guild channel no group owns) or on a
/// button that is not Wavelet's: said so, only to the person.
async fn respond_not_served(http: Arc<Http>, interaction: Interaction) {
    let text = match &interaction {
        Interaction::Component(c) if Click::parse(&c.data.custom_id).is_none() => "This button is not Wavelet's.",
        _ => "Wavelet does not work in this channel. Use your group's channel, or a direct message with me.",
    };
    let response = CreateInteractionResponse::Message(ephemeral(text.into()));
    let outcome = match &interaction {
        Interaction::Command(c) => c.create_response(&*http, response).await,
        Interaction::Component(c) => c.create_response(&*http, response).await,
        _ => Ok(()),
    };
    if let Err(e) = outcome {
        tracing::warn!(interaction = interaction.id().get(), error = %describe(&e), "discord interaction not answered");
    }
}

/// What a click on one of Wavelet's buttons means.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Click {
    /// An escalation notice's Acknowledge button: `ack C-12`.
    Ack(String),
    /// An option of a `choose` question: the question's [`message_tag`] (none on buttons
    /// from before tags), the option's 1-based number, and its label when the custom id could
    /// carry it.
    Choose { question: Option<String>, number: usize, label: Option<String> },
}

impl Click {
    fn parse(custom_id: &str) -> Option<Click> {
        if let Some(case) = custom_id.strip_prefix(ACK_BUTTON) {
            let digits = case.strip_prefix("C-")?;
            return (!digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| Click::Ack(case.to_string()));
        }
        let rest = custom_id.strip_prefix(CHOOSE_BUTTON)?;
        let (question, rest) = match rest.split_once(':') {
            Some((tag, rest)) if tag.len() == TAG_CHARS && tag.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (Some(tag.to_string()), rest)
            }
            _ => (None, rest),
        };
        let (number, label) = match rest.split_once(':') {
            Some((n, label)) => (n, Some(label.to_string())),
            None => (rest, None),
        };
        Some(Click::Choose { question, number: number.parse().ok().filter(|&n| n > 0)?, label })
    }

    /// The tag of the question a choice was on.
    fn question(&self) -> Option<&str> {
        match self {
            Click::Choose { question, .. } => question.as_deref(),
            Click::Ack(_) => None,
        }
    }

    /// The text the click stands for: what the person would have typed.
    fn text(&self) -> String {
        match self {
            Click::Ack(case) => format!("ack {case}"),
            Click::Choose { label: Some(label), .. } => label.clone(),
            Click::Choose { number, label: None, .. } => number.to_string(),
        }
    }

    fn custom_id(&self) -> String {
        match self {
            Click::Ack(case) => format!("{ACK_BUTTON}{case}"),
            Click::Choose { question, number, label } => {
                let short = match question {
                    Some(tag) => format!("{CHOOSE_BUTTON}{tag}:{number}"),
                    None => format!("{CHOOSE_BUTTON}{number}"),
                };
                match label {
                    Some(label) => {
                        let long = format!("{short}:{label}");
                        if long.chars().count() <= MAX_CUSTOM_ID_CHARS { long } else { short }
                    }
                    None => short,
                }
            }
        }
    }
}

/// A button as Wavelet renders it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Button {
    custom_id: String,
    label: String,
    primary: bool,
}

/// One Discord message of a rendered [`MessageBody`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Part {
    content: String,
    buttons: Vec<Button>,
}

/// A body as Discord messages: text with mentions broken, split at Discord's limit, and the
/// buttons (on the last part) for a choice or an escalation notice.
fn render(body: &MessageBody, key: &str) -> Vec<Part> {
    let buttons = match body {
        MessageBody::Text { .. } => Vec::new(),
        MessageBody::Choice { options, .. } if options.len() <= MAX_BUTTONS => options
            .iter()
            .enumerate()
            .map(|(i, option)| {
                // A label that reads as a number would be taken as that option's number.
                let label = (option.trim().parse::<f64>().is_err()).then(|| option.clone());
                let click = Click::Choose { question: Some(message_tag(key)), number: i + 1, label };
                Button { custom_id: click.custom_id(), label: button_label(option), primary: false }
            })
            .collect(),
        MessageBody::Choice { .. } => Vec::new(),
        MessageBody::Escalation { case_id, .. } => vec![Button {
            custom_id: Click::Ack(case_id.clone()).custom_id(),
            label: button_label(&format!("Acknowledge {case_id}")),
            primary: true,
        }],
    };
    let mut texts = split(&no_pings(&body.plain()), MAX_MESSAGE_CHARS);
    // Discord refuses a message of only whitespace: such a piece of a long text is left out
    // (the others still carry every visible character).
    if texts.iter().any(|t| !t.trim().is_empty()) {
        texts.retain(|t| !t.trim().is_empty());
    }
    let last = texts.len() - 1;
    texts
        .into_iter()
        .enumerate()
        .map(|(i, content)| Part { content, buttons: if i == last { buttons.clone() } else { Vec::new() } })
        .collect()
}

fn button_label(text: &str) -> String {
    let one_line = wavelet_core::text::one_line(text);
    if one_line.chars().count() <= MAX_LABEL_CHARS {
        return one_line;
    }
    let mut short: String = one_line.chars().take(MAX_LABEL_CHARS - 1).collect();
    short.push('…');
    short
}

fn action_rows(buttons: &[Button]) -> Vec<CreateActionRow> {
    buttons
        .chunks(BUTTONS_PER_ROW)
        .map(|row| {
            CreateActionRow::Buttons(
                row.iter()
                    .map(|b| {
                        let style = if b.primary { ButtonStyle::Primary } else { ButtonStyle::Secondary };
                        CreateButton::new(b.custom_id.clone()).label(b.label.clone()).style(style)
                    })
                    .collect(),
            )
        })
        .collect()
}

/// Text that pings nobody when shown, even to a client that ignored `allowed_mentions`:
/// `@everyone`, `@here` (any case) and the mention syntax `<@…>` / `<@&…>` get a word joiner
/// after the `@`, which reads the same and is no longer a mention.
fn no_pings(text: &str) -> String {
    const JOINER: char = '\u{2060}';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at + 1]);
        let after = &rest[at + 1..];
        let lower = |n: usize| after.get(..n).map(str::to_ascii_lowercase);
        let mass = lower(8).as_deref() == Some("everyone") || lower(4).as_deref() == Some("here");
        if mass || out[..out.len() - 1].ends_with('<') {
            out.push(JOINER);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Splits text into pieces of at most `max` characters, at a line break when there is one
/// in the second half of the piece, else at a space, else anywhere. The pieces joined give
/// the text back.
fn split(text: &str, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max {
        let limit = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let window = &rest[..limit];
        let after = |c: char| window.char_indices().rev().find(|&(i, ch)| ch == c && i > limit / 2);
        let cut = after('\n')
            .or_else(|| window.char_indices().rev().find(|&(i, ch)| ch.is_whitespace() && i > limit / 2))
            .map_or(limit, |(i, ch)| i + ch.len_utf8());
        parts.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    parts.push(rest.to_string());
    parts
}

/// The Discord nonce of one part of a message: the same for every resend of it, and at most
/// 25 characters (Discord's limit; idempotency keys are longer).
fn nonce(key: &str, part: usize) -> String {
    wavelet_core::engine::source_hash(&format!("{key}#{part}"))[..NONCE_CHARS].to_string()
}

/// The first snowflake of the millisecond `at` (Unix time); 1 before Discord's epoch.
fn snowflake_at(at: i64) -> u64 {
    u64::try_from(at.saturating_sub(DISCORD_EPOCH_MS)).map_or(1, |ms| (ms << 22).max(1))
}

/// A Discord id in text, if it is one (serenity's id types panic on 0).
fn snowflake(text: &str) -> Option<u64> {
    text.parse().ok().filter(|&n| n != 0)
}

/// The slash commands Wavelet offers: each loaded workflow whose command Discord accepts as
/// a name, and `help`, `cancel` and `ack` with the case to acknowledge.
fn slash_commands(workflows: &[WorkflowMeta]) -> Vec<CreateCommand> {
    let builtin = ["help", "cancel", "ack"];
    let mut commands: Vec<CreateCommand> = workflows
        .iter()
        .filter(|w| {
            let ok = is_slash_command_name(&w.command) && !builtin.contains(&w.command.as_str());
            if !ok {
                tracing::warn!(command = %w.command, "workflow command is not a valid Discord slash command name; only its prefix command works");
            }
            ok
        })
        .map(|w| CreateCommand::new(&w.command).description(command_description(&w.description, &w.command)))
        .collect();
    commands.push(CreateCommand::new("help").description("What you can do with Wavelet here"));
    commands.push(CreateCommand::new("cancel").description("End your open dialog with Wavelet"));
    commands.push(CreateCommand::new("ack").description("Acknowledge a case (stops its escalation)").add_option(
        CreateCommandOption::new(CommandOptionType::String, "case", "The case id, like C-12").required(true),
    ));
    // Only in servers the bot is in and in DMs with the bot: not in other people's DMs (a
    // user-installed app could be used there, and Wavelet would take that DM for theirs).
    commands
        .into_iter()
        .map(|c| {
            c.contexts(vec![InteractionContext::Guild, InteractionContext::BotDm])
                .integration_types(vec![InstallationContext::Guild])
        })
        .collect()
}

/// Discord's rule for a slash command's name: 1 to 32 characters, lowercase letters and
/// digits of any script, `-` and `_`. One bad name would fail the whole registration.
fn is_slash_command_name(name: &str) -> bool {
    (1..=32).contains(&name.chars().count())
        && name.chars().all(|c| (c.is_alphanumeric() && !c.is_uppercase()) || matches!(c, '-' | '_'))
}

/// Discord wants 1 to 100 characters.
fn command_description(description: &str, command: &str) -> String {
    let text = wavelet_core::text::one_line(description).trim().to_string();
    let text = if text.is_empty() { format!("Start the {command} workflow") } else { text };
    if text.chars().count() <= 100 {
        return text;
    }
    let mut short: String = text.chars().take(99).collect();
    short.push('…');
    short
}

fn status_of(e: &serenity::Error) -> Option<u16> {
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => Some(r.status_code.as_u16()),
        _ => None,
    }
}

/// A serenity error for logs and the ledger: status, Discord's code and message; never a URL
/// (an interaction's URL holds its token) or content.
fn describe(e: &serenity::Error) -> String {
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            format!("HTTP {} (Discord code {}: {})", r.status_code.as_u16(), r.error.code, r.error.message)
        }
        serenity::Error::Http(HttpError::Request(r)) if r.is_timeout() => "the request timed out".into(),
        serenity::Error::Http(HttpError::Request(r)) if r.is_connect() => "cannot connect".into(),
        serenity::Error::Http(HttpError::Request(_)) => "the request failed".into(),
        serenity::Error::Model(m) => format!("refused before sending: {m}"),
        other => other.to_string(),
    }
}

/// How a failed send is retried: 429 waits (serenity handles Discord's rate limits itself
/// unless its limiter is off; what reaches here has lost `retry_after`); refusals of the
/// message or the channel are permanent; server errors and the network are temporary.
fn send_error(e: serenity::Error) -> SendError {
    let text = describe(&e);
    match &e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => match r.status_code.as_u16() {
            429 => SendError::RateLimited(DEFAULT_RATE_LIMIT_WAIT),
            400 | 403 | 404 | 413 => SendError::Permanent(text),
            _ => SendError::Temporary(text),
        },
        serenity::Error::Model(_) => SendError::Permanent(text),
        _ => SendError::Temporary(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_broken_visibly() {
        let j = '\u{2060}';
        let cases = [
            ("hi @everyone and @here", format!("hi @{j}everyone and @{j}here")),
            ("@EVERYONE @Here", format!("@{j}EVERYONE @{j}Here")),
            ("<@123> <@!456> <@&789>", format!("<@{j}123> <@{j}!456> <@{j}&789>")),
            ("alice@example.org", "alice@example.org".to_string()),
            ("@", "@".to_string()),
            ("<@", format!("<@{j}")),
            ("é@everyoneé", format!("é@{j}everyoneé")),
        ];
        for (input, expected) in cases {
            assert_eq!(no_pings(input), expected, "{input:?}");
        }
    }

    #[test]
    fn long_text_splits_at_lines_then_words_and_joins_back() {
        let text = format!("{}\n{}", "a".repeat(1500), "b ".repeat(1000));
        let parts = split(&text, 2000);
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().all(|p| p.chars().count() <= 2000));
        assert!(parts[0].ends_with('\n'), "cut at the line break");
        assert!(parts[1].ends_with(' '), "then at a space");
        let unbroken = "x".repeat(4500);
        let parts = split(&unbroken, 2000);
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![2000, 2000, 500]);
        let wide = "é".repeat(2001);
        assert_eq!(split(&wide, 2000).iter().map(|p| p.chars().count()).collect::<Vec<_>>(), vec![2000, 1]);
        assert_eq!(split("", 2000), vec![String::new()]);
    }

    #[test]
    fn choices_get_buttons_that_stand_for_their_options() {
        let body =
            MessageBody::Choice { prompt: "Risk?".into(), options: vec!["no".into(), "2".into(), "y".repeat(120)] };
        let parts = render(&body, "run:R-1:2");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].content, format!("Risk?\n1. no\n2. 2\n3. {}", "y".repeat(120)));
        let clicks: Vec<String> =
            parts[0].buttons.iter().map(|b| Click::parse(&b.custom_id).expect("ours").text()).collect();
        // A label that is a number, or too long for a custom id, is handed in as its number.
        assert_eq!(clicks, vec!["no".to_string(), "2".into(), "3".into()]);
        assert!(parts[0].buttons.iter().all(|b| b.custom_id.chars().count() <= MAX_CUSTOM_ID_CHARS));
        assert!(parts[0].buttons.iter().all(|b| b.label.chars().count() <= MAX_LABEL_CHARS));
        let many = MessageBody::Choice { prompt: "Pick".into(), options: (1..=26).map(|i| format!("o{i}")).collect() };
        assert!(render(&many, "run:R-1:2")[0].buttons.is_empty(), "over 25 options: the numbered list only");
        let rows = action_rows(
            &render(
                &MessageBody::Choice { prompt: "p".into(), options: (1..=7).map(|i| format!("o{i}")).collect() },
                "run:R-1:2",
            )[0]
            .buttons,
        );
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn no_part_of_a_long_message_is_only_whitespace() {
        let text = format!("start{}end", "\n".repeat(5_000));
        let parts = render(&MessageBody::Text { text }, "k");
        assert!(parts.iter().all(|p| !p.content.trim().is_empty()), "{:?}", parts.len());
        let joined: String = parts.iter().map(|p| p.content.as_str()).collect();
        assert_eq!(joined.replace('\n', ""), "startend");
    }

    #[test]
    fn a_choice_button_names_its_question() {
        let body = MessageBody::Choice { prompt: "Risk?".into(), options: vec!["no".into(), "yes".into()] };
        let tag = message_tag("run:R-1:2");
        for button in &render(&body, "run:R-1:2")[0].buttons {
            let click = Click::parse(&button.custom_id).expect("ours");
            assert_eq!(click.question(), Some(tag.as_str()), "{}", button.custom_id);
        }
        assert_ne!(message_tag("run:R-1:3"), tag, "another question, another tag");
        // A button from before tags still stands for its option, with no question named.
        let old = Click::parse("wavelet:choose:2:yes").expect("ours");
        assert_eq!((old.question(), old.text()), (None, "yes".to_string()));
        let tagged = Click::parse(&format!("wavelet:choose:{tag}:1")).expect("ours");
        assert_eq!((tagged.question(), tagged.text()), (Some(tag.as_str()), "1".to_string()));
    }

    #[test]
    fn escalation_notices_get_an_acknowledge_button() {
        let body = MessageBody::Escalation { text: "Case C-12 needs acknowledging.".into(), case_id: "C-12".into() };
        let parts = render(&body, "run:R-1:2");
        assert_eq!(parts[0].buttons.len(), 1);
        assert_eq!(parts[0].buttons[0].label, "Acknowledge C-12");
        assert_eq!(Click::parse(&parts[0].buttons[0].custom_id), Some(Click::Ack("C-12".into())));
        assert_eq!(Click::parse("wavelet:ack:C-12 @everyone"), None);
        assert_eq!(Click::parse("wavelet:choose:0"), None);
        assert_eq!(Click::parse("somebody-else:1"), None);
    }

    #[test]
    fn a_long_message_is_split_with_buttons_on_its_last_part_and_a_nonce_per_part() {
        let body = MessageBody::Escalation { text: "w ".repeat(2500), case_id: "C-1".into() };
        let parts = render(&body, "run:R-1:2");
        assert_eq!(parts.len(), 3);
        assert!(parts[..2].iter().all(|p| p.buttons.is_empty()));
        assert_eq!(parts[2].buttons.len(), 1);
        let key = "esc:E-1:0:room:0";
        let nonces: Vec<String> = (0..3).map(|i| nonce(key, i)).collect();
        assert!(nonces.iter().all(|n| n.len() == NONCE_CHARS));
        assert_eq!(nonces[0], nonce(key, 0), "the same for every resend");
        assert!(nonces[0] != nonces[1] && nonces[1] != nonces[2]);
    }

    #[test]
    fn slash_commands_follow_discords_rules() {
        let meta = |command: &str, description: &str| WorkflowMeta {
            command: command.into(),
            description: description.into(),
            allowed_roles: vec![],
        };
        let commands =
            slash_commands(&[meta("concern", "Raise a concern"), meta(&"x".repeat(33), ""), meta("digest", "")]);
        let json: Vec<serde_json::Value> = commands.iter().map(|c| serde_json::to_value(c).unwrap()).collect();
        let names: Vec<&str> = json.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["concern", "digest", "help", "cancel", "ack"]);
        // Guild (0) and the bot's DM (1) only; installed to servers (0) only.
        assert!(json.iter().all(|c| c["contexts"] == serde_json::json!([0, 1])), "{json:?}");
        assert!(json.iter().all(|c| c["integration_types"] == serde_json::json!([0])), "{json:?}");
        let names = ["Concern", "raise concern", "café", "a.b", "ünïcode-ok", "x_y-1"];
        let valid: Vec<bool> = names.iter().map(|n| is_slash_command_name(n)).collect();
        assert_eq!(valid, [false, false, true, false, true, true]);
        assert_eq!(json[1]["description"], "Start the digest workflow");
        assert_eq!(json[4]["options"][0]["name"], "case");
        assert_eq!(command_description(&"d".repeat(300), "x").chars().count(), 100);
    }
}
