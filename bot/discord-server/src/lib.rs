//! A local server that speaks the Discord protocol, for testing a serenity 0.12 bot on loopback
//! (Discord itself cannot be reached from our machines).
//!
//! One port on `127.0.0.1` serves the REST API under `/api/v10/…` and the gateway websocket on
//! `/`. Point serenity at it with
//! `HttpBuilder::new(server.token()).proxy(server.http_url()).ratelimiter_disabled(true)` and
//! `ClientBuilder::new_with_http`; `GET /api/v10/gateway` hands serenity the websocket url.
//!
//! ```no_run
//! # async fn example() -> Result<(), wavelet_discord_server::Error> {
//! use std::time::Duration;
//! use wavelet_discord_server::{IncomingMessage, Server, ServerOptions, TestUser};
//!
//! let server = Server::start(ServerOptions::default()).await?;
//! // … start a serenity client against server.http_url() …
//! server.wait_identified(Duration::from_secs(5)).await?;
//! let alex = TestUser::human(42, "alex");
//! server.dispatch_message(IncomingMessage::dm(alex.clone(), "!concern"));
//! let reply = server.wait_for_message(|m| m.author.bot, Duration::from_secs(5)).await?;
//! assert_eq!(Some(reply.channel_id), server.dm_channel_of(alex.id));
//! # Ok(()) }
//! ```
//!
//! # What is faithful to Discord
//!
//! Every payload is built in [`payloads`] from Discord's documented structures, and unit-tested
//! against serenity 0.12's own types (serenity silently drops a dispatch it cannot read).
//!
//! - **Gateway** ([Gateway](https://discord.com/developers/docs/events/gateway),
//!   [events](https://discord.com/developers/docs/events/gateway-events),
//!   [close codes](https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway)):
//!   HELLO with the configured interval; IDENTIFY checked for token (4004), intents present
//!   (4013), privileged intents switched on for the app (4014), shard (4010), a second
//!   IDENTIFY or RESUME on one connection (4005); anything else before identifying closes 4003,
//!   unknown opcodes 4001, undecodable frames 4002, a `v` other than 10 closes 4012. READY has
//!   `v`, `user`, `guilds`, `session_id`, `resume_gateway_url`, `shard`, `application`. Every
//!   dispatch has an increasing `s` per session. Heartbeats get HEARTBEAT_ACK. RESUME with a
//!   known session replays every dispatch after the client's `seq`, in order, then RESUMED; an
//!   unknown or invalidated session gets INVALID_SESSION (`d: false`); a `seq` ahead of the
//!   session closes 4007. Dispatches honour intents: `MESSAGE_CREATE` needs `GUILD_MESSAGES` or
//!   `DIRECT_MESSAGES`, and without `MESSAGE_CONTENT` guild messages arrive with empty content
//!   unless they mention the bot or are its own. The bot receives its own messages, as on
//!   Discord, so an adapter must ignore them.
//! - **REST** ([messages](https://discord.com/developers/docs/resources/message#create-message),
//!   [DMs](https://discord.com/developers/docs/resources/user#create-dm),
//!   [reactions](https://discord.com/developers/docs/resources/message#create-reaction),
//!   [commands](https://discord.com/developers/docs/interactions/application-commands#bulk-overwrite-global-application-commands),
//!   [interaction callbacks and followups](https://discord.com/developers/docs/interactions/receiving-and-responding#responding-to-an-interaction),
//!   [errors](https://discord.com/developers/docs/topics/opcodes-and-status-codes#json),
//!   [rate limits](https://discord.com/developers/docs/topics/rate-limits)): every call needs
//!   `Authorization: Bot <token>` (401, `{"message": "401: Unauthorized", "code": 0}`) except
//!   those Discord documents otherwise: `GET /gateway` needs none (the header is ignored, so a
//!   bad token is refused by IDENTIFY with 4004), and interaction callbacks and webhooks take
//!   their token in the path. Create message: content up to 2000 characters, nonce up
//!   to 25, at most 10 embeds, action rows and buttons checked, an empty message refused (50006);
//!   `nonce` + `enforce_nonce` from the same author within the window returns the first
//!   message; `allowed_mentions` decides `mentions` and `mention_everyone`. DM channels are
//!   created once per person and reused. Application commands are checked (names, descriptions,
//!   option order) and a bulk overwrite keeps ids of commands it keeps. Interaction callbacks
//!   are accepted once (then 40060), within the deadline (then 10062), with the callback types
//!   valid for the interaction; type 4 and 5 create the response message, type 7 edits the
//!   clicked message; followups and `@original` edits need an acknowledged interaction. Unknown
//!   ids get Discord's 404 codes (10003 channel, 10008 message, 10014 emoji, 10015 webhook,
//!   10062 interaction, 10063 command); invalid bodies get 50035 with the nested `errors`
//!   object, invalid JSON 50109. 429s carry Discord's body (`message`, `retry_after`, `global`,
//!   no `code`) and its `Retry-After` and `X-RateLimit-*` headers.
//!
//! # What is simplified
//!
//! - No guilds in READY and no `GUILD_CREATE`: guild channels exist by
//!   [`Server::add_guild_channel`] or by someone speaking in them; roles and permissions are not
//!   modelled (members have no roles; `app_permissions` is a fixed, generous set).
//! - No `MESSAGE_UPDATE`, `MESSAGE_REACTION_ADD` or typing dispatches; message edits are stored
//!   only. Custom emojis do not exist (reacting with `name:id` gets 10014), and a unicode emoji
//!   is recognised only as "not plain ASCII".
//! - Sessions never expire and a missed heartbeat never closes a connection; frames are sent as
//!   uncompressed JSON text even though serenity's IDENTIFY asks for `compress`; binary
//!   (ETF/zlib) frames from a client are refused with 4002.
//! - No file uploads (`multipart/form-data` gets a 400 that says so), polls, stickers, threads,
//!   subcommands in dispatched interactions, autocomplete, modals beyond recording the callback,
//!   or `with_response` on callbacks (always 204). No rate limiting unless injected with
//!   [`Server::fail_next`]; normal answers carry no `X-RateLimit-*` headers.
//! - The inner `code` strings of 50035 errors (`BASE_TYPE_MAX_LENGTH`, …) follow what Discord
//!   is seen to send; only the outer shape is documented. The `enforce_nonce` window is not
//!   documented ("a few minutes"); it is [`ServerOptions::nonce_window`]. Refusing followups
//!   to an interaction that was never acknowledged (10015) is this server's reading of "the token
//!   is invalidated" after the 3 s deadline.

#![warn(missing_docs)]

mod gateway;
mod ids;
mod model;
pub mod payloads;
mod rest;
mod server;
mod state;

use std::time::Duration;

pub use model::{
    CommandScope, DispatchedInteraction, DispatchedMessage, Endpoint, Failure, GatewayStats, IncomingInteraction,
    IncomingMessage, InteractionCallback, InteractionKind, MessageOrigin, OptionValue, Place, RegisteredCommand,
    RequestRecord, Snowflake, StoredMessage, StoredReaction, TestUser, intents,
};
pub use server::{Server, ServerOptions, SessionInfo};

/// What can go wrong driving the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be set up.
    #[error("could not start the local Discord server: {0}")]
    Bind(std::io::Error),
    /// A wait ran out.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// What it waited for.
        what: String,
    },
    /// No websocket carries the current session.
    #[error("no bot is connected to the gateway")]
    NotConnected,
    /// No bot has identified.
    #[error("no bot has identified on the gateway")]
    NotIdentified,
    /// A slash command that is not registered where the interaction happens.
    #[error("no slash command {name:?} is registered where the interaction happens")]
    UnknownCommand {
        /// The command name.
        name: String,
    },
    /// A button click on a message that does not exist in that channel.
    #[error("message {message_id} does not exist in channel {channel_id}")]
    UnknownMessage {
        /// The channel.
        channel_id: Snowflake,
        /// The message.
        message_id: Snowflake,
    },
    /// A button click on a message without that button.
    #[error("message {message_id} has no button with custom_id {custom_id:?}")]
    UnknownComponent {
        /// The message.
        message_id: Snowflake,
        /// The custom id.
        custom_id: String,
    },
}

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
