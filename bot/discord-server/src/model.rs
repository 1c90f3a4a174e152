//! The server's own words: who speaks, where, what was stored, what a test can inject.
//!
//! These are plain data. JSON is built from them only in [`crate::payloads`].

use std::time::Duration;

use serde_json::Value;

/// A Discord id (a "snowflake"): a 64-bit number, sent as a string in JSON.
pub type Snowflake = u64;

/// Gateway intents the server looks at (`1 << n`, as Discord numbers them).
///
/// <https://discord.com/developers/docs/events/gateway#list-of-intents>
pub mod intents {
    /// `GUILD_MEMBERS`, privileged.
    pub const GUILD_MEMBERS: u64 = 1 << 1;
    /// `GUILD_PRESENCES`, privileged.
    pub const GUILD_PRESENCES: u64 = 1 << 8;
    /// `GUILD_MESSAGES`: `MESSAGE_CREATE` in guild channels.
    pub const GUILD_MESSAGES: u64 = 1 << 9;
    /// `DIRECT_MESSAGES`: `MESSAGE_CREATE` in DMs.
    pub const DIRECT_MESSAGES: u64 = 1 << 12;
    /// `MESSAGE_CONTENT`, privileged: without it guild messages arrive with empty content.
    pub const MESSAGE_CONTENT: u64 = 1 << 15;
    /// The three privileged intents; asking for one the application is not allowed closes with 4014.
    pub const PRIVILEGED: u64 = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT;
}

/// A Discord user the server knows: a person, or the bot itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestUser {
    /// The user id.
    pub id: Snowflake,
    /// The unique username.
    pub username: String,
    /// The display name, if set.
    pub global_name: Option<String>,
    /// True only for bot accounts. Discord omits `bot` for people, and serenity refuses to DM a
    /// user that carries `bot: true`.
    pub bot: bool,
}

impl TestUser {
    /// A person.
    pub fn human(id: Snowflake, username: impl Into<String>) -> Self {
        Self { id, username: username.into(), global_name: None, bot: false }
    }

    /// A bot account.
    pub fn bot(id: Snowflake, username: impl Into<String>) -> Self {
        Self { id, username: username.into(), global_name: None, bot: true }
    }
}

/// Where something is said: a guild text channel, or the direct conversation between one person
/// and the bot (whose channel id is the one `POST /users/@me/channels` returns for that person).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A text channel (type 0) in a guild.
    Guild {
        /// The guild.
        guild_id: Snowflake,
        /// The channel.
        channel_id: Snowflake,
    },
    /// The DM channel (type 1) between the speaker and the bot, created on first use.
    Dm,
}

/// A person saying something, for [`crate::Server::dispatch_message`].
#[derive(Clone, Debug)]
pub struct IncomingMessage {
    /// Who says it.
    pub author: TestUser,
    /// Where.
    pub place: Place,
    /// The text. `<@id>` mentions of known users end up in the message's `mentions`.
    pub content: String,
}

impl IncomingMessage {
    /// A message in a guild text channel.
    pub fn guild(author: TestUser, guild_id: Snowflake, channel_id: Snowflake, content: impl Into<String>) -> Self {
        Self { author, place: Place::Guild { guild_id, channel_id }, content: content.into() }
    }

    /// A direct message to the bot.
    pub fn dm(author: TestUser, content: impl Into<String>) -> Self {
        Self { author, place: Place::Dm, content: content.into() }
    }
}

/// The value of one slash-command option, with its Discord option type.
#[derive(Clone, Debug, PartialEq)]
pub enum OptionValue {
    /// `STRING` (3).
    String(String),
    /// `INTEGER` (4).
    Integer(i64),
    /// `BOOLEAN` (5).
    Boolean(bool),
    /// `NUMBER` (10).
    Number(f64),
}

impl OptionValue {
    /// The application command option type number.
    pub fn option_type(&self) -> u8 {
        match self {
            OptionValue::String(_) => 3,
            OptionValue::Integer(_) => 4,
            OptionValue::Boolean(_) => 5,
            OptionValue::Number(_) => 10,
        }
    }
}

/// What a person did that makes an interaction.
#[derive(Clone, Debug)]
pub enum InteractionKind {
    /// Ran a slash command (interaction type 2, command type `CHAT_INPUT`). The command must have
    /// been registered (globally, or in the guild the interaction happens in), as on Discord.
    SlashCommand {
        /// The command name.
        name: String,
        /// Top-level options (subcommands are not modelled).
        options: Vec<(String, OptionValue)>,
    },
    /// Clicked a button (interaction type 3, component type 2). The message must exist in the
    /// channel and carry a button with that `custom_id`, as on Discord.
    Button {
        /// The message the button is on.
        message_id: Snowflake,
        /// The button's `custom_id`.
        custom_id: String,
    },
}

/// A person interacting with the bot, for [`crate::Server::dispatch_interaction`].
#[derive(Clone, Debug)]
pub struct IncomingInteraction {
    /// Who.
    pub user: TestUser,
    /// Where.
    pub place: Place,
    /// What.
    pub kind: InteractionKind,
}

impl IncomingInteraction {
    /// A slash command.
    pub fn slash_command(user: TestUser, place: Place, name: impl Into<String>) -> Self {
        Self { user, place, kind: InteractionKind::SlashCommand { name: name.into(), options: Vec::new() } }
    }

    /// Adds an option to a slash command (does nothing to a button click).
    pub fn option(mut self, name: impl Into<String>, value: OptionValue) -> Self {
        if let InteractionKind::SlashCommand { options, .. } = &mut self.kind {
            options.push((name.into(), value));
        }
        self
    }

    /// A button click on a message.
    pub fn button(user: TestUser, place: Place, message_id: Snowflake, custom_id: impl Into<String>) -> Self {
        Self { user, place, kind: InteractionKind::Button { message_id, custom_id: custom_id.into() } }
    }
}

/// Why a message exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageOrigin {
    /// A person said it ([`crate::Server::dispatch_message`]).
    Person,
    /// The bot sent it with `POST /channels/{id}/messages`.
    Bot,
    /// The initial response to an interaction (callback type 4 or 5).
    InteractionResponse {
        /// The interaction.
        interaction_id: Snowflake,
    },
    /// A followup (`POST /webhooks/{app}/{token}`).
    Followup {
        /// The interaction.
        interaction_id: Snowflake,
    },
}

/// A message as the server holds it.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    /// Message id.
    pub id: Snowflake,
    /// Channel id.
    pub channel_id: Snowflake,
    /// The guild, for guild channels.
    pub guild_id: Option<Snowflake>,
    /// The author.
    pub author: TestUser,
    /// The text.
    pub content: String,
    /// RFC 3339 creation time, as Discord writes it (`…+00:00`).
    pub timestamp: String,
    /// RFC 3339 time of the last edit.
    pub edited_timestamp: Option<String>,
    /// The `nonce` sent with it (string or integer), echoed back as Discord does.
    pub nonce: Option<Value>,
    /// Embeds, as sent.
    pub embeds: Vec<Value>,
    /// Components (action rows), as sent.
    pub components: Vec<Value>,
    /// The `allowed_mentions` sent with it, if any.
    pub allowed_mentions: Option<Value>,
    /// Users mentioned and allowed to be pinged (after `allowed_mentions`).
    pub mentions: Vec<TestUser>,
    /// Whether `@everyone`/`@here` pinged (after `allowed_mentions`).
    pub mention_everyone: bool,
    /// Message flags (64 = ephemeral, 128 = loading).
    pub flags: u64,
    /// Message type: 0 default, 20 chat-input command response.
    pub kind: u8,
    /// Set on interaction responses and followups: the application id, as Discord does.
    pub webhook_id: Option<Snowflake>,
    /// Why the message exists.
    pub origin: MessageOrigin,
}

impl StoredMessage {
    /// The `custom_id`s of every button on the message.
    pub fn button_custom_ids(&self) -> Vec<String> {
        self.components
            .iter()
            .filter_map(|row| row.get("components").and_then(Value::as_array))
            .flatten()
            .filter_map(|component| component.get("custom_id").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// True for ephemeral messages (flag 64): only the interacting user sees them.
    pub fn is_ephemeral(&self) -> bool {
        self.flags & 64 != 0
    }
}

/// One call to `POST /interactions/{id}/{token}/callback`, accepted or not.
#[derive(Clone, Debug)]
pub struct InteractionCallback {
    /// The interaction id in the path.
    pub interaction_id: Snowflake,
    /// The callback `type` (4 message, 5 deferred message, 6 deferred update, 7 update, 9 modal).
    pub callback_type: Option<u64>,
    /// The callback `data`, as sent.
    pub data: Value,
    /// Time from the dispatch of the interaction to the arrival of this callback.
    pub elapsed: Duration,
    /// The HTTP status the server answered with (204 when accepted).
    pub status: u16,
    /// The Discord error code, when refused (10062 too late, 40060 already acknowledged, …).
    pub error_code: Option<u64>,
}

impl InteractionCallback {
    /// True if the server accepted it.
    pub fn accepted(&self) -> bool {
        self.status == 204
    }
}

/// A reaction the bot added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReaction {
    /// The channel.
    pub channel_id: Snowflake,
    /// The message.
    pub message_id: Snowflake,
    /// The emoji as it arrived, percent-decoded: a unicode emoji, or `name:id`.
    pub emoji: String,
    /// Who reacted (the bot).
    pub user_id: Snowflake,
}

/// Which commands: the global ones, or one guild's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandScope {
    /// `/applications/{app}/commands`.
    Global,
    /// `/applications/{app}/guilds/{guild}/commands`.
    Guild(Snowflake),
}

/// An application command as registered.
#[derive(Clone, Debug)]
pub struct RegisteredCommand {
    /// Command id (kept across bulk overwrites for the same name and type, as Discord does).
    pub id: Snowflake,
    /// Where it is registered.
    pub scope: CommandScope,
    /// Version id, new on every change.
    pub version: Snowflake,
    /// Command type: 1 `CHAT_INPUT` (slash), 2 user, 3 message.
    pub kind: u8,
    /// The name.
    pub name: String,
    /// The description (empty for user and message commands).
    pub description: String,
    /// The definition as sent by the bot (options, permissions, contexts…).
    pub definition: Value,
}

impl RegisteredCommand {
    /// Whether Discord would offer this command in a DM with the bot: global, and not switched off
    /// by `dm_permission: false` or by `contexts` lacking `BOT_DM` (1).
    pub fn usable_in_dm(&self) -> bool {
        if self.scope != CommandScope::Global {
            return false;
        }
        if let Some(contexts) = self.definition.get("contexts").and_then(Value::as_array) {
            return contexts.iter().any(|c| c.as_u64() == Some(1));
        }
        self.definition.get("dm_permission").and_then(Value::as_bool) != Some(false)
    }
}

/// An HTTP request the server answered.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// Status answered.
    pub status: u16,
}

/// REST endpoints a test can make fail with [`crate::Server::fail_next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /channels/{id}/messages`.
    CreateMessage,
    /// `POST /users/@me/channels`.
    CreateDm,
    /// `PUT /channels/{c}/messages/{m}/reactions/{emoji}/@me`.
    CreateReaction,
    /// `POST /interactions/{id}/{token}/callback`.
    InteractionCallback,
    /// `POST /webhooks/{app}/{token}` and `PATCH /webhooks/{app}/{token}/messages/…`.
    Followup,
    /// `PUT`/`POST` on `/applications/{app}/…commands`.
    RegisterCommands,
}

/// A failure to inject into the next calls of an [`Endpoint`].
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// Answer with this status and a Discord error body; the request has no effect.
    Status(u16),
    /// Answer 429 with Discord's rate-limit body (`message`, `retry_after` in seconds, `global`)
    /// and headers (`Retry-After`, `X-RateLimit-*`); the request has no effect.
    RateLimited {
        /// How long Discord asks the client to wait.
        retry_after: Duration,
        /// A global (rather than per-route) limit.
        global: bool,
    },
    /// The request takes effect (a message is stored and dispatched), then the answer is this
    /// status: what a client sees when a response is lost after Discord committed the write.
    StatusAfterWrite(u16),
}

/// The gateway's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Websocket connections accepted.
    pub connections: u64,
    /// Successful IDENTIFYs (each starts a new session and gets READY).
    pub identifies: u64,
    /// Successful RESUMEs (each got its missed dispatches replayed, then RESUMED).
    pub resumes: u64,
    /// RESUMEs refused with INVALID_SESSION (unknown or invalidated session).
    pub invalid_sessions: u64,
    /// IDENTIFYs or RESUMEs refused with close code 4004.
    pub authentication_failures: u64,
    /// Heartbeats (op 1) received.
    pub heartbeats: u64,
    /// Dispatches sent (replays of missed dispatches on RESUME count again).
    pub dispatches_sent: u64,
}

/// The result of [`crate::Server::dispatch_message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchedMessage {
    /// The new message's id.
    pub message_id: Snowflake,
    /// Its channel (for a DM, the person's DM channel with the bot).
    pub channel_id: Snowflake,
    /// The sequence number of its `MESSAGE_CREATE`, or `None` if no session receives it (no bot
    /// has identified, or its intents filter it out). The message is stored either way, as it
    /// would exist on Discord while the bot was away.
    pub seq: Option<u64>,
}

/// The result of [`crate::Server::dispatch_interaction`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchedInteraction {
    /// Interaction id.
    pub id: Snowflake,
    /// Interaction token (for the callback and followups).
    pub token: String,
    /// The channel it happened in.
    pub channel_id: Snowflake,
    /// The sequence number of its `INTERACTION_CREATE`, or `None` if no session receives it.
    pub seq: Option<u64>,
}
