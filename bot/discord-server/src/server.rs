//! [`Server`]: start it, point a bot at it, make people speak, and look at what the bot did.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::ids::{random_hex, timestamp_now};
use crate::model::{
    CommandScope, DispatchedInteraction, DispatchedMessage, Endpoint, Failure, GatewayStats, IncomingInteraction,
    IncomingMessage, InteractionCallback, InteractionKind, MessageOrigin, Place, RegisteredCommand, RequestRecord,
    Snowflake, StoredMessage, StoredReaction, TestUser, intents,
};
use crate::payloads::{self, InteractionInfo};
use crate::state::{InteractionRecord, Outgoing, Shared, State};
use crate::{Error, Result, rest};

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The bot token the server accepts (REST: `Authorization: Bot <token>`; gateway: IDENTIFY
    /// and RESUME, with or without the `Bot ` prefix).
    pub token: String,
    /// The bot's user.
    pub bot: TestUser,
    /// The bot's application id.
    pub application_id: Snowflake,
    /// The `heartbeat_interval` sent in HELLO (Discord sends about 41.25 s).
    pub heartbeat_interval: Duration,
    /// How long after dispatching an interaction its callback is accepted (Discord: 3 s).
    pub interaction_deadline: Duration,
    /// Privileged intents switched on for the application (the developer portal's toggles).
    /// Asking for any other privileged intent in IDENTIFY closes with 4014. Default:
    /// `MESSAGE_CONTENT`.
    pub allowed_privileged_intents: u64,
    /// How long `enforce_nonce` remembers a nonce. Discord says "the past few minutes"; the
    /// exact window is not documented. Default: 5 minutes.
    pub nonce_window: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            token: "MTA5ODc2NTQzMjEwOTg3NjU0.Wavelet.local-test-server-token".into(),
            bot: TestUser::bot(1_098_765_432_109_876_543, "wavelet"),
            application_id: 1_098_765_432_109_876_544,
            heartbeat_interval: Duration::from_millis(41_250),
            interaction_deadline: Duration::from_secs(3),
            allowed_privileged_intents: intents::MESSAGE_CONTENT,
            nonce_window: Duration::from_secs(5 * 60),
        }
    }
}

/// The current gateway session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id READY gave.
    pub session_id: String,
    /// The last sequence number dispatched in it.
    pub seq: u64,
    /// The intents IDENTIFY asked for.
    pub intents: u64,
    /// Whether a websocket currently carries it.
    pub connected: bool,
}

/// A local server speaking the Discord protocol on `127.0.0.1`: REST under `/api/v10/…` and the
/// gateway websocket on `/`, on one port. Cloning gives another handle to the same server; it
/// stops when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct Server {
    shared: Arc<Shared>,
    _running: Arc<Running>,
}

#[derive(Debug)]
struct Running {
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.update(|state| {
            for connection in state.connections.values() {
                let _ = connection.tx.send(Outgoing::Abort);
            }
        });
    }
}

impl Server {
    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    pub async fn start(options: ServerOptions) -> Result<Server> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.map_err(Error::Bind)?;
        let address = listener.local_addr().map_err(Error::Bind)?;
        let shared = Shared::new(options, format!("http://{address}"), format!("ws://{address}"));
        let router = rest::router(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::warn!(%error, "local Discord server stopped");
            }
        });
        Ok(Server { shared: shared.clone(), _running: Arc::new(Running { task, shared }) })
    }

    /// `http://127.0.0.1:PORT`: what serenity's `HttpBuilder::proxy` takes.
    pub fn http_url(&self) -> &str {
        &self.shared.http_url
    }

    /// `ws://127.0.0.1:PORT`: the gateway url `GET /api/v10/gateway` returns.
    pub fn gateway_url(&self) -> &str {
        &self.shared.gateway_url
    }

    /// The bot token the server accepts.
    pub fn token(&self) -> &str {
        &self.shared.options.token
    }

    /// The bot's user.
    pub fn bot(&self) -> &TestUser {
        self.shared.bot()
    }

    /// The bot's application id.
    pub fn application_id(&self) -> Snowflake {
        self.shared.options.application_id
    }

    /// Makes a user known (a DM can then be opened with them, and `<@id>` mentions them). People
    /// who speak through [`Server::dispatch_message`] become known by speaking.
    pub fn add_user(&self, user: TestUser) {
        self.shared.update(|state| state.remember_user(&user));
    }

    /// Makes a guild text channel exist (and the bot a member of the guild). Channels also come to
    /// exist when someone speaks in them.
    pub fn add_guild_channel(&self, guild_id: Snowflake, channel_id: Snowflake) {
        self.shared.update(|state| state.add_guild_channel(guild_id, channel_id));
    }

    // Gateway.

    /// The gateway's counters.
    pub fn gateway_stats(&self) -> GatewayStats {
        self.shared.read(|state| state.stats.clone())
    }

    /// The current session (the last one identified, or resumed when none was current).
    pub fn current_session(&self) -> Option<SessionInfo> {
        self.shared.read(current_session)
    }

    /// Waits until a bot has identified and been sent READY.
    pub async fn wait_identified(&self, timeout: Duration) -> Result<SessionInfo> {
        self.wait_until("a bot to identify", timeout, |state| {
            current_session(state).filter(|_| state.stats.identifies > 0)
        })
        .await
    }

    /// Waits until a websocket carries the current session (after READY or RESUMED).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<SessionInfo> {
        self.wait_until("the session to be connected", timeout, |state| current_session(state).filter(|s| s.connected))
            .await
    }

    /// Waits until the gateway's counters satisfy `check`.
    pub async fn wait_for_stats(
        &self,
        check: impl Fn(&GatewayStats) -> bool,
        timeout: Duration,
    ) -> Result<GatewayStats> {
        self.wait_until("gateway counters", timeout, |state| check(&state.stats).then(|| state.stats.clone())).await
    }

    /// A person says something in a guild channel or in their DM with the bot. The message is
    /// stored (as it would exist on Discord) and dispatched as `MESSAGE_CREATE` to the current
    /// session, subject to its intents; while the session has no connection, the dispatch waits
    /// in the session's history for a RESUME.
    pub fn dispatch_message(&self, message: IncomingMessage) -> DispatchedMessage {
        let bot_id = self.shared.bot().id;
        self.shared.update(|state| {
            state.remember_user(&message.author);
            let (channel_id, guild_id) = place(state, message.place, message.author.id);
            let (mentions, mention_everyone) = state.mentions_in(&message.content, None);
            let stored = StoredMessage {
                id: state.ids.next(),
                channel_id,
                guild_id,
                author: message.author,
                content: message.content,
                timestamp: timestamp_now(),
                edited_timestamp: None,
                nonce: None,
                embeds: Vec::new(),
                components: Vec::new(),
                allowed_mentions: None,
                mentions,
                mention_everyone,
                flags: 0,
                kind: 0,
                webhook_id: None,
                origin: MessageOrigin::Person,
            };
            state.messages.push(stored.clone());
            let seq = state.dispatch_message_create(&stored, bot_id);
            DispatchedMessage { message_id: stored.id, channel_id, seq }
        })
    }

    /// A person runs a slash command or clicks a button; dispatched as `INTERACTION_CREATE`.
    ///
    /// As on Discord, a slash command must be registered (globally, or in the guild where it is
    /// run; in a DM only global commands usable in DMs), and a button must exist on the message
    /// with that `custom_id`. The 3 s answer deadline counts from this call.
    pub fn dispatch_interaction(&self, interaction: IncomingInteraction) -> Result<DispatchedInteraction> {
        let application_id = self.shared.options.application_id;
        self.shared.update(|state| {
            state.remember_user(&interaction.user);
            let (channel_id, guild_id) = place(state, interaction.place, interaction.user.id);
            let id = state.ids.next();
            let token = format!("aW50ZXJhY3Rpb246{id}{}", random_hex(64));
            let info =
                InteractionInfo { id, application_id, token: &token, user: &interaction.user, guild_id, channel_id };
            let (payload, source_message) = match &interaction.kind {
                InteractionKind::SlashCommand { name, options } => {
                    let command = find_slash_command(state, guild_id, name)
                        .ok_or_else(|| Error::UnknownCommand { name: name.clone() })?;
                    (payloads::command_interaction(&info, &command, options), None)
                }
                InteractionKind::Button { message_id, custom_id } => {
                    let message = state
                        .message(channel_id, *message_id)
                        .ok_or(Error::UnknownMessage { channel_id, message_id: *message_id })?;
                    if !message.button_custom_ids().contains(custom_id) {
                        return Err(Error::UnknownComponent { message_id: *message_id, custom_id: custom_id.clone() });
                    }
                    (payloads::component_interaction(&info, message, custom_id), Some(*message_id))
                }
            };
            state.interactions.insert(
                id,
                InteractionRecord {
                    token: token.clone(),
                    source_message,
                    channel_id,
                    dispatched_at: Instant::now(),
                    acknowledged: None,
                    original_message: None,
                    followups: Vec::new(),
                },
            );
            let seq = state.dispatch("INTERACTION_CREATE", |_| Some(payload));
            Ok(DispatchedInteraction { id, token, channel_id, seq })
        })
    }

    /// Sends RECONNECT (op 7) on the current connection and stops dispatching on it: the client
    /// should reconnect and RESUME, and gets what was dispatched meanwhile replayed.
    pub fn send_reconnect(&self) -> Result<()> {
        self.shared.update(|state| {
            let connection = state.current_connection().ok_or(Error::NotConnected)?;
            if let Some(c) = state.connections.get(&connection) {
                let _ = c.tx.send(Outgoing::Frame(payloads::reconnect().to_string()));
            }
            let session = state.connections.get_mut(&connection).and_then(|c| c.session.take());
            state.detach(session.as_deref(), connection);
            Ok(())
        })
    }

    /// Drops the current connection without a closing handshake, as a network failure would. The
    /// session stays resumable.
    pub fn drop_connection(&self) -> Result<()> {
        self.tell_current_connection(Outgoing::Abort)
    }

    /// Closes the current connection with a close code (e.g. 4000 unknown error, 4009 session
    /// timed out). The session stays resumable unless [`Server::invalidate_session`] is called.
    pub fn close_connection(&self, code: u16, reason: &str) -> Result<()> {
        self.tell_current_connection(Outgoing::Close(code, reason.to_owned()))
    }

    fn tell_current_connection(&self, what: Outgoing) -> Result<()> {
        self.shared.update(|state| {
            let connection = state.current_connection().ok_or(Error::NotConnected)?;
            state.tell_connection(connection, what);
            Ok(())
        })
    }

    /// Ends the current session: a connected client gets INVALID_SESSION (`d: false`), and any
    /// later RESUME of it gets the same. The client must IDENTIFY again.
    pub fn invalidate_session(&self) -> Result<()> {
        self.shared.update(|state| {
            let session_id = state.current_session.take().ok_or(Error::NotIdentified)?;
            let Some(session) = state.sessions.get_mut(&session_id) else { return Err(Error::NotIdentified) };
            session.resumable = false;
            if let Some(connection) = session.connection.take()
                && let Some(c) = state.connections.get_mut(&connection)
            {
                c.session = None;
                let _ = c.tx.send(Outgoing::Frame(payloads::invalid_session(false).to_string()));
            }
            Ok(())
        })
    }

    /// Stops (or resumes) answering heartbeats with HEARTBEAT_ACK, to make a connection look
    /// like a zombie.
    pub fn withhold_heartbeat_acks(&self, withhold: bool) {
        self.shared.update(|state| state.withhold_heartbeat_acks = withhold);
    }

    // REST failures.

    /// Makes the next `count` calls to `endpoint` fail with `failure`.
    pub fn fail_next(&self, endpoint: Endpoint, count: usize, failure: Failure) {
        self.shared.update(|state| {
            state.failures.entry(endpoint).or_default().extend(std::iter::repeat_n(failure, count));
        });
    }

    /// Makes the next `count` `POST /channels/{id}/messages` fail with `failure`.
    pub fn fail_next_sends(&self, count: usize, failure: Failure) {
        self.fail_next(Endpoint::CreateMessage, count, failure);
    }

    // Inspection.

    /// Every message in a channel, oldest first (ephemeral ones included).
    pub fn messages_in(&self, channel_id: Snowflake) -> Vec<StoredMessage> {
        self.shared.read(|state| state.messages.iter().filter(|m| m.channel_id == channel_id).cloned().collect())
    }

    /// Every message the bot (or its application) wrote, oldest first.
    pub fn messages_from_bot(&self) -> Vec<StoredMessage> {
        let bot_id = self.bot().id;
        self.shared.read(|state| state.messages.iter().filter(|m| m.author.id == bot_id).cloned().collect())
    }

    /// Waits for a message that satisfies `check`, and returns it.
    pub async fn wait_for_message(
        &self,
        check: impl Fn(&StoredMessage) -> bool,
        timeout: Duration,
    ) -> Result<StoredMessage> {
        self.wait_until("a message", timeout, |state| state.messages.iter().find(|m| check(m)).cloned()).await
    }

    /// Every interaction callback received, accepted or refused, in order of arrival.
    pub fn callbacks(&self) -> Vec<InteractionCallback> {
        self.shared.read(|state| state.callbacks.clone())
    }

    /// Waits for the first callback to an interaction.
    pub async fn wait_for_callback(&self, interaction_id: Snowflake, timeout: Duration) -> Result<InteractionCallback> {
        self.wait_until("an interaction callback", timeout, |state| {
            state.callbacks.iter().find(|c| c.interaction_id == interaction_id).cloned()
        })
        .await
    }

    /// The application commands registered in a scope.
    pub fn registered_commands(&self, scope: CommandScope) -> Vec<RegisteredCommand> {
        self.shared.read(|state| state.commands.iter().filter(|c| c.scope == scope).cloned().collect())
    }

    /// The DM channel between a user and the bot, if it exists yet.
    pub fn dm_channel_of(&self, user_id: Snowflake) -> Option<Snowflake> {
        self.shared.read(|state| state.dm_by_user.get(&user_id).copied())
    }

    /// Reactions the bot has on messages.
    pub fn reactions(&self) -> Vec<StoredReaction> {
        self.shared.read(|state| state.reactions.clone())
    }

    /// Every HTTP request answered, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.read(|state| state.requests.clone())
    }

    async fn wait_until<T>(&self, what: &str, timeout: Duration, check: impl Fn(&State) -> Option<T>) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.shared
            .wait_for(deadline, check)
            .await
            .ok_or_else(|| Error::Timeout { waited: timeout, what: what.to_owned() })
    }
}

fn current_session(state: &State) -> Option<SessionInfo> {
    let session_id = state.current_session.as_ref()?;
    let session = state.sessions.get(session_id)?;
    Some(SessionInfo {
        session_id: session_id.clone(),
        seq: session.seq,
        intents: session.intents,
        connected: session.connection.is_some(),
    })
}

/// The channel (and guild) a place means for a user, creating it if needed.
fn place(state: &mut State, place: Place, user_id: Snowflake) -> (Snowflake, Option<Snowflake>) {
    match place {
        Place::Guild { guild_id, channel_id } => {
            state.add_guild_channel(guild_id, channel_id);
            (channel_id, Some(guild_id))
        }
        Place::Dm => (state.dm_channel_for(user_id), None),
    }
}

/// The slash command a person can run here: a guild's own command first, then a global one (in a
/// DM only if usable in DMs).
fn find_slash_command(state: &State, guild_id: Option<Snowflake>, name: &str) -> Option<RegisteredCommand> {
    let named = |c: &&RegisteredCommand| c.kind == 1 && c.name == name;
    guild_id
        .and_then(|g| state.commands.iter().filter(named).find(|c| c.scope == CommandScope::Guild(g)))
        .or_else(|| {
            state
                .commands
                .iter()
                .filter(named)
                .find(|c| c.scope == CommandScope::Global && (guild_id.is_some() || c.usable_in_dm()))
        })
        .cloned()
}
