//! Everything the server remembers, behind one mutex that is never held across an `.await`.
//!
//! The REST handlers, the gateway connections and the test controls all change the world through
//! [`Shared::update`], which wakes every waiter afterwards.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use crate::ids::SnowflakeGenerator;
use crate::model::{
    Endpoint, Failure, GatewayStats, InteractionCallback, RegisteredCommand, RequestRecord, Snowflake, StoredMessage,
    StoredReaction, TestUser, intents,
};
use crate::payloads;
use crate::server::ServerOptions;

/// What a gateway connection task is told to do.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Send this text frame.
    Frame(String),
    /// Send a close frame with this code and reason, then end the connection.
    Close(u16, String),
    /// End the connection at once, without a closing handshake (a dropped TCP connection).
    Abort,
}

/// One open websocket.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) tx: mpsc::UnboundedSender<Outgoing>,
    /// The session this connection carries, once it has identified or resumed.
    pub(crate) session: Option<String>,
}

/// One gateway session: lives across connections until invalidated.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) intents: u64,
    /// The last sequence number used.
    pub(crate) seq: u64,
    /// Every dispatch of the session, for replay on RESUME.
    pub(crate) history: Vec<(u64, String)>,
    /// The connection currently carrying the session.
    pub(crate) connection: Option<u64>,
    /// False once invalidated: RESUME then gets INVALID_SESSION.
    pub(crate) resumable: bool,
}

/// What kind of channel an id is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChannelKind {
    Guild(Snowflake),
    Dm { recipient: Snowflake },
}

/// An interaction the server dispatched.
#[derive(Clone, Debug)]
pub(crate) struct InteractionRecord {
    pub(crate) token: String,
    /// The message a component was clicked on; `None` for commands.
    pub(crate) source_message: Option<Snowflake>,
    pub(crate) channel_id: Snowflake,
    pub(crate) dispatched_at: Instant,
    /// The accepted callback type, once acknowledged.
    pub(crate) acknowledged: Option<u64>,
    /// The message created by a type 4 or 5 callback.
    pub(crate) original_message: Option<Snowflake>,
    /// Followup messages, in order.
    pub(crate) followups: Vec<Snowflake>,
}

/// Everything the server remembers.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The application; interaction responses carry it as their `webhook_id`.
    pub(crate) application_id: Snowflake,
    pub(crate) ids: SnowflakeGenerator,
    pub(crate) users: HashMap<Snowflake, TestUser>,
    pub(crate) channels: HashMap<Snowflake, ChannelKind>,
    pub(crate) guilds: HashSet<Snowflake>,
    pub(crate) dm_by_user: HashMap<Snowflake, Snowflake>,
    pub(crate) messages: Vec<StoredMessage>,
    /// `(author, nonce)` → (message, when), for `enforce_nonce`.
    pub(crate) nonces: HashMap<(Snowflake, String), (Snowflake, Instant)>,
    pub(crate) reactions: Vec<StoredReaction>,
    pub(crate) commands: Vec<RegisteredCommand>,
    pub(crate) interactions: HashMap<Snowflake, InteractionRecord>,
    pub(crate) callbacks: Vec<InteractionCallback>,
    pub(crate) failures: HashMap<Endpoint, VecDeque<Failure>>,
    pub(crate) requests: Vec<RequestRecord>,
    pub(crate) connections: HashMap<u64, Connection>,
    pub(crate) next_connection: u64,
    pub(crate) sessions: HashMap<String, Session>,
    pub(crate) current_session: Option<String>,
    pub(crate) stats: GatewayStats,
    pub(crate) withhold_heartbeat_acks: bool,
}

/// The server's state plus what never changes.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) options: ServerOptions,
    /// `http://127.0.0.1:PORT`.
    pub(crate) http_url: String,
    /// `ws://127.0.0.1:PORT`.
    pub(crate) gateway_url: String,
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    pub(crate) fn new(options: ServerOptions, http_url: String, gateway_url: String) -> Arc<Self> {
        let mut state = State { application_id: options.application_id, ..State::default() };
        state.users.insert(options.bot.id, options.bot.clone());
        Arc::new(Self { options, http_url, gateway_url, state: Mutex::new(state), changed: Notify::new() })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the state.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock())
    }

    /// Changes the state, then wakes every waiter.
    pub(crate) fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let result = f(&mut self.lock());
        self.changed.notify_waiters();
        result
    }

    /// Waits until `check` finds something, or the deadline passes.
    pub(crate) async fn wait_for<T>(
        &self,
        deadline: tokio::time::Instant,
        check: impl Fn(&State) -> Option<T>,
    ) -> Option<T> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = self.read(&check) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.read(&check);
            }
        }
    }

    pub(crate) fn bot(&self) -> &TestUser {
        &self.options.bot
    }
}

impl State {
    pub(crate) fn remember_user(&mut self, user: &TestUser) {
        self.users.insert(user.id, user.clone());
    }

    pub(crate) fn add_guild_channel(&mut self, guild_id: Snowflake, channel_id: Snowflake) {
        self.guilds.insert(guild_id);
        self.channels.entry(channel_id).or_insert(ChannelKind::Guild(guild_id));
    }

    /// The DM channel between `user_id` and the bot, created on first use and then kept.
    pub(crate) fn dm_channel_for(&mut self, user_id: Snowflake) -> Snowflake {
        if let Some(channel) = self.dm_by_user.get(&user_id) {
            return *channel;
        }
        let channel = self.ids.next();
        self.dm_by_user.insert(user_id, channel);
        self.channels.insert(channel, ChannelKind::Dm { recipient: user_id });
        channel
    }

    pub(crate) fn message(&self, channel_id: Snowflake, message_id: Snowflake) -> Option<&StoredMessage> {
        self.messages.iter().find(|m| m.id == message_id && m.channel_id == channel_id)
    }

    pub(crate) fn message_mut(&mut self, channel_id: Snowflake, message_id: Snowflake) -> Option<&mut StoredMessage> {
        self.messages.iter_mut().find(|m| m.id == message_id && m.channel_id == channel_id)
    }

    pub(crate) fn last_message_in(&self, channel_id: Snowflake) -> Option<Snowflake> {
        self.messages.iter().rev().find(|m| m.channel_id == channel_id).map(|m| m.id)
    }

    /// Users mentioned with `<@id>` or `<@!id>` in `content` and allowed to be pinged, and whether
    /// `@everyone`/`@here` pings, after `allowed_mentions` as Discord documents it: absent, every
    /// mention in the content counts; present, only the types in `parse` and the ids in `users`.
    pub(crate) fn mentions_in(&self, content: &str, allowed_mentions: Option<&Value>) -> (Vec<TestUser>, bool) {
        let parse: Option<Vec<&str>> = allowed_mentions
            .and_then(|a| a.get("parse"))
            .and_then(Value::as_array)
            .map(|p| p.iter().filter_map(Value::as_str).collect());
        let listed_users: Vec<Snowflake> = allowed_mentions
            .and_then(|a| a.get("users"))
            .and_then(Value::as_array)
            .map(|u| u.iter().filter_map(snowflake_of).collect())
            .unwrap_or_default();
        let allows = |kind: &str| allowed_mentions.is_none() || parse.as_ref().is_some_and(|p| p.contains(&kind));

        let mut mentioned = Vec::new();
        let mut rest = content;
        while let Some(start) = rest.find("<@") {
            rest = &rest[start + 2..];
            let digits = rest.strip_prefix('!').unwrap_or(rest);
            let Some(end) = digits.find('>') else { break };
            if let Ok(user_id) = digits[..end].parse::<Snowflake>()
                && let Some(user) = self.users.get(&user_id)
                && (allows("users") || listed_users.contains(&user_id))
                && !mentioned.iter().any(|m: &TestUser| m.id == user_id)
            {
                mentioned.push(user.clone());
            }
        }
        let everyone = (content.contains("@everyone") || content.contains("@here")) && allows("everyone");
        (mentioned, everyone)
    }

    /// Sends a dispatch to the current session. `make` gets the session's intents and returns the
    /// event's `d`, or `None` when the intents filter the event out. Returns the sequence number.
    pub(crate) fn dispatch(&mut self, event: &str, make: impl FnOnce(u64) -> Option<Value>) -> Option<u64> {
        let session_id = self.current_session.clone()?;
        self.dispatch_to(&session_id, event, make)
    }

    pub(crate) fn dispatch_to(
        &mut self,
        session_id: &str,
        event: &str,
        make: impl FnOnce(u64) -> Option<Value>,
    ) -> Option<u64> {
        let session = self.sessions.get_mut(session_id)?;
        let data = make(session.intents)?;
        session.seq += 1;
        let seq = session.seq;
        let text = payloads::dispatch(event, seq, data).to_string();
        session.history.push((seq, text.clone()));
        if let Some(connection) = session.connection.and_then(|id| self.connections.get(&id)) {
            let _ = connection.tx.send(Outgoing::Frame(text));
            self.stats.dispatches_sent += 1;
        }
        Some(seq)
    }

    /// Dispatches `MESSAGE_CREATE` for a stored message, as Discord does for every message the bot
    /// can see, its own included: guild messages need `GUILD_MESSAGES`, DMs `DIRECT_MESSAGES`, and
    /// without `MESSAGE_CONTENT` the content is empty except in DMs, in the bot's own messages and
    /// in messages that mention the bot. Ephemeral messages are never dispatched.
    pub(crate) fn dispatch_message_create(&mut self, message: &StoredMessage, bot_id: Snowflake) -> Option<u64> {
        if message.is_ephemeral() {
            return None;
        }
        self.dispatch("MESSAGE_CREATE", |session_intents| {
            let needed = if message.guild_id.is_some() { intents::GUILD_MESSAGES } else { intents::DIRECT_MESSAGES };
            if session_intents & needed == 0 {
                return None;
            }
            let with_content = session_intents & intents::MESSAGE_CONTENT != 0
                || message.guild_id.is_none()
                || message.author.id == bot_id
                || message.mentions.iter().any(|u| u.id == bot_id);
            Some(payloads::message_create(message, with_content))
        })
    }

    /// The connection carrying the current session.
    pub(crate) fn current_connection(&self) -> Option<u64> {
        let session = self.sessions.get(self.current_session.as_ref()?)?;
        session.connection
    }

    /// Tells a connection what to do; if that ends it, detaches it from its session first, so that
    /// no dispatch is sent on it any more (they wait in the session's history for a RESUME).
    pub(crate) fn tell_connection(&mut self, connection_id: u64, what: Outgoing) {
        let ends = matches!(what, Outgoing::Close(..) | Outgoing::Abort);
        if let Some(connection) = self.connections.get_mut(&connection_id) {
            let _ = connection.tx.send(what);
            if ends {
                let session = connection.session.take();
                self.detach(session.as_deref(), connection_id);
            }
        }
    }

    pub(crate) fn detach(&mut self, session_id: Option<&str>, connection_id: u64) {
        if let Some(session) = session_id.and_then(|id| self.sessions.get_mut(id))
            && session.connection == Some(connection_id)
        {
            session.connection = None;
        }
    }

    pub(crate) fn take_failure(&mut self, endpoint: Endpoint) -> Option<Failure> {
        self.failures.get_mut(&endpoint).and_then(VecDeque::pop_front)
    }
}

/// A snowflake written as a string (as Discord does) or a number.
pub(crate) fn snowflake_of(value: &Value) -> Option<Snowflake> {
    match value {
        Value::String(text) => text.parse().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
    .filter(|id| *id != 0)
}
