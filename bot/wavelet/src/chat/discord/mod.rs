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

use crate::chat::ChatContext;
use crate::delivery::ingest::SubmitError;
use crate::delivery::{ChatAdapter, SendError, SendFuture};
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

mod inbound;
mod render;
#[cfg(test)]
mod tests;

use inbound::*;
use render::*;

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

/// At a stop, how long the events that had arrived get to be handed in.
pub const HAND_IN_ON_STOP: Duration = Duration::from_secs(3);

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
    ctx: ChatContext,
    /// The bot's own user id: its own messages come back over the gateway and are ignored.
    me: UserId,
    /// The configured group channels.
    group_channels: HashSet<u64>,
    /// DM channels by the person's user id, found or created. Never held across an await
    /// (creating a DM channel is idempotent on Discord: a race makes the same channel).
    dms: Mutex<HashMap<u64, ChannelId>>,
    /// The running gateway client's shards, for [`DiscordAdapter::shutdown`].
    shards: Mutex<Option<Arc<ShardManager>>>,
    /// Set by [`DiscordAdapter::shutdown`]: the gateway closing is a stop, not a loss.
    stopping: std::sync::atomic::AtomicBool,
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
        ctx: ChatContext,
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
        let group_channels = ctx
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
            ctx,
            me: me.id,
            group_channels,
            dms: Mutex::default(),
            shards: Mutex::default(),
            stopping: Default::default(),
        }))
    }

    /// Connects to the gateway and hands what people say to the ingest until the connection
    /// ends for good. serenity resumes dropped connections and RECONNECTs by itself; this
    /// returns `Ok` after [`DiscordAdapter::shutdown`] (once what had arrived is handed in,
    /// for at most [`HAND_IN_ON_STOP`]), and an error that says what to do when Discord will
    /// not have the bot (a revoked token, close code 4004; an intent the application may
    /// not use, 4014).
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut client: Client =
            ClientBuilder::new_with_http(http_client(&self.token, self.api_base.as_deref()), self.intents)
                .event_handler(Forward(tx))
                .await
                .context("cannot set up the Discord gateway client")?;
        *self.shards.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.shard_manager.clone());
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            // Stopped before the gateway was opened.
            return Ok(());
        }
        let mut handling = tokio::spawn(self.clone().handle_inbound(rx, client.http.clone()));
        let outcome = client.start().await;
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            // The client's event handler holds the sending side: dropped with the client,
            // the loop hands in what had arrived and ends.
            drop(client);
            if tokio::time::timeout(HAND_IN_ON_STOP, &mut handling).await.is_err() {
                handling.abort();
                tracing::info!("discord events still arriving at the stop left for the catch-up at the next start");
            }
            tracing::info!("discord gateway closed");
            return Ok(());
        }
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

    /// Closes the gateway connection (a clean close: Discord ends the session), and
    /// [`DiscordAdapter::run`] returns. Sending goes on working.
    pub async fn shutdown(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
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
    async fn handle_inbound(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Inbound>, http: Arc<Http>) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 64).await > 0 {
            batch.sort_by_key(|i| i.id());
            for inbound in batch.drain(..) {
                match inbound {
                    Inbound::Ready { session } => {
                        tracing::info!(session = %session, "discord gateway session started");
                        tokio::spawn(self.clone().on_ready(http.clone()));
                    }
                    Inbound::Message(m) => {
                        let Some(event) = self.message_event(&m) else { continue };
                        let committing = hand_in(&self.ctx, event).await;
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
                        let committing = hand_in(&self.ctx, event).await;
                        tokio::spawn(answer_command(http.clone(), c, committing, at));
                    }
                    Inbound::Component(c, at) => {
                        let Some((event, click)) = self.click_event(&c) else {
                            tokio::spawn(respond_not_served(http.clone(), Interaction::Component(*c)));
                            continue;
                        };
                        let committing = hand_in(&self.ctx, event).await;
                        tokio::spawn(answer_click(http.clone(), c, click, committing, at));
                    }
                }
            }
        }
    }

    /// A new session: register the slash commands, then take in what was said while no
    /// session was connected.
    async fn on_ready(self: Arc<Self>, http: Arc<Http>) {
        let metas = self.ctx.workflow_commands();
        match Command::set_global_commands(&http, slash_commands(&metas)).await {
            Ok(registered) => tracing::info!(commands = registered.len(), "discord slash commands registered"),
            Err(e) => tracing::warn!(error = %describe(&e), "discord slash commands not registered"),
        }
        self.catch_up().await;
    }

    /// Messages said while Wavelet had no session (it was down, or Discord would not resume
    /// its session): each group channel's and each known person's DM channel's history from
    /// [`CATCH_UP_MARGIN`] before the last event taken from Discord, oldest first. In a DM
    /// channel only the person's own messages count. What was taken already is dropped by the
    /// inbox; what was typed before the question it would answer is refused by the runtime
    /// (messages keep the time they were said). Nothing was ever taken from Discord: there
    /// is no history that is Wavelet's to answer.
    async fn catch_up(&self) {
        let since = loop {
            match self.ctx.last_taken_at(Platform::Discord).await {
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
            .ctx
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
                        committing.push((m.id, hand_in(&self.ctx, event).await));
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
        Millis(i64::try_from(id >> 22).unwrap_or(i64::MAX).saturating_add(DISCORD_EPOCH_MS)).min(self.ctx.now())
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
