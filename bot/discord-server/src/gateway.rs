//! The gateway: one task per websocket, speaking Discord's opcodes.
//!
//! <https://discord.com/developers/docs/events/gateway> (connection lifecycle, resuming),
//! <https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway> (opcodes and
//! close codes).

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::ids::random_hex;
use crate::model::intents;
use crate::payloads;
use crate::state::{Connection, Outgoing, Session, Shared, State};

/// Discord's gateway close codes used here.
pub(crate) mod close {
    pub(crate) const UNKNOWN_OPCODE: u16 = 4001;
    pub(crate) const DECODE_ERROR: u16 = 4002;
    pub(crate) const NOT_AUTHENTICATED: u16 = 4003;
    pub(crate) const AUTHENTICATION_FAILED: u16 = 4004;
    pub(crate) const ALREADY_AUTHENTICATED: u16 = 4005;
    pub(crate) const INVALID_SEQ: u16 = 4007;
    pub(crate) const INVALID_SHARD: u16 = 4010;
    pub(crate) const INVALID_API_VERSION: u16 = 4012;
    pub(crate) const INVALID_INTENTS: u16 = 4013;
    pub(crate) const DISALLOWED_INTENTS: u16 = 4014;
}

/// Serves one websocket until either side ends it.
pub(crate) async fn serve_connection(shared: Arc<Shared>, mut socket: WebSocket, version: Option<String>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let connection_id = shared.update(|state| {
        state.next_connection += 1;
        state.stats.connections += 1;
        state.connections.insert(state.next_connection, Connection { tx, session: None });
        state.next_connection
    });

    let hello = payloads::hello(shared.options.heartbeat_interval.as_millis() as u64).to_string();
    if socket.send(Message::Text(hello.into())).await.is_ok() {
        if version.as_deref().is_some_and(|v| v != payloads::API_VERSION.to_string()) {
            shared.update(|state| {
                state.tell_connection(
                    connection_id,
                    Outgoing::Close(close::INVALID_API_VERSION, "Invalid API version".into()),
                )
            });
        }
        run(&shared, connection_id, &mut socket, &mut rx).await;
    }

    shared.update(|state| {
        if let Some(connection) = state.connections.remove(&connection_id) {
            state.detach(connection.session.as_deref(), connection_id);
        }
    });
}

async fn run(shared: &Shared, connection_id: u64, socket: &mut WebSocket, rx: &mut mpsc::UnboundedReceiver<Outgoing>) {
    loop {
        tokio::select! {
            // Frames queued before a close go out first.
            biased;
            outgoing = rx.recv() => match outgoing {
                Some(Outgoing::Frame(text)) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Some(Outgoing::Close(code, reason)) => {
                    let frame = CloseFrame { code, reason: reason.as_str().into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    return;
                }
                // Returning drops the socket: the TCP connection ends without a closing handshake.
                Some(Outgoing::Abort) | None => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    shared.update(|state| receive(shared, state, connection_id, text.as_str()));
                }
                Some(Ok(Message::Binary(_))) => {
                    // Clients send JSON text; ETF and compressed client frames are not supported.
                    shared.update(|state| {
                        state.tell_connection(connection_id, Outgoing::Close(close::DECODE_ERROR, "Decode error".into()))
                    });
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
        }
    }
}

/// Handles one frame from the client.
fn receive(shared: &Shared, state: &mut State, connection_id: u64, text: &str) {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return state.tell_connection(connection_id, Outgoing::Close(close::DECODE_ERROR, "Decode error".into()));
    };
    let data = frame.get("d").cloned().unwrap_or(Value::Null);
    let session = state.connections.get(&connection_id).and_then(|c| c.session.clone());
    match frame.get("op").and_then(Value::as_u64) {
        Some(1) => {
            state.stats.heartbeats += 1;
            if !state.withhold_heartbeat_acks
                && let Some(connection) = state.connections.get(&connection_id)
            {
                let _ = connection.tx.send(Outgoing::Frame(payloads::heartbeat_ack().to_string()));
            }
        }
        Some(2) if session.is_some() => already_authenticated(state, connection_id),
        Some(2) => identify(shared, state, connection_id, &data),
        Some(6) if session.is_some() => already_authenticated(state, connection_id),
        Some(6) => resume(shared, state, connection_id, &data),
        // Presence update, voice state update, request guild members, request soundboard sounds:
        // accepted and ignored once identified.
        Some(3 | 4 | 8 | 31) if session.is_some() => {}
        Some(3 | 4 | 8 | 31) => {
            state.tell_connection(connection_id, Outgoing::Close(close::NOT_AUTHENTICATED, "Not authenticated.".into()))
        }
        _ => state.tell_connection(connection_id, Outgoing::Close(close::UNKNOWN_OPCODE, "Unknown opcode.".into())),
    }
}

fn already_authenticated(state: &mut State, connection_id: u64) {
    state
        .tell_connection(connection_id, Outgoing::Close(close::ALREADY_AUTHENTICATED, "Already authenticated.".into()));
}

/// IDENTIFY and RESUME carry the token without the `Bot ` prefix by Discord's docs; serenity
/// sends it with the prefix, which Discord accepts. Both are accepted here.
fn token_matches(shared: &Shared, data: &Value) -> bool {
    let sent = data.get("token").and_then(Value::as_str).unwrap_or_default();
    sent.strip_prefix("Bot ").unwrap_or(sent) == shared.options.token
}

fn authentication_failed(state: &mut State, connection_id: u64) {
    state.stats.authentication_failures += 1;
    state
        .tell_connection(connection_id, Outgoing::Close(close::AUTHENTICATION_FAILED, "Authentication failed.".into()));
}

fn identify(shared: &Shared, state: &mut State, connection_id: u64, data: &Value) {
    if !token_matches(shared, data) {
        return authentication_failed(state, connection_id);
    }
    let Some(requested_intents) = data.get("intents").and_then(Value::as_u64) else {
        return state
            .tell_connection(connection_id, Outgoing::Close(close::INVALID_INTENTS, "Invalid intent(s).".into()));
    };
    if requested_intents & intents::PRIVILEGED & !shared.options.allowed_privileged_intents != 0 {
        let reason = "Disallowed intent(s).".into();
        return state.tell_connection(connection_id, Outgoing::Close(close::DISALLOWED_INTENTS, reason));
    }
    let shard = match data.get("shard") {
        None | Some(Value::Null) => None,
        Some(shard) => match (shard.get(0).and_then(Value::as_u64), shard.get(1).and_then(Value::as_u64)) {
            (Some(id), Some(total)) if id < total => Some([id, total]),
            _ => {
                return state
                    .tell_connection(connection_id, Outgoing::Close(close::INVALID_SHARD, "Invalid shard.".into()));
            }
        },
    };

    let session_id = random_hex(32);
    state.sessions.insert(
        session_id.clone(),
        Session {
            intents: requested_intents,
            seq: 0,
            history: Vec::new(),
            connection: Some(connection_id),
            resumable: true,
        },
    );
    if let Some(connection) = state.connections.get_mut(&connection_id) {
        connection.session = Some(session_id.clone());
    }
    state.current_session = Some(session_id.clone());
    state.stats.identifies += 1;

    let ready = payloads::ready(&payloads::ReadyInfo {
        session_id: &session_id,
        bot: shared.bot(),
        application_id: shared.options.application_id,
        application_flags: application_flags(shared.options.allowed_privileged_intents),
        resume_gateway_url: &shared.gateway_url,
        shard,
    });
    state.dispatch_to(&session_id, "READY", |_| Some(ready));
}

/// The application flags Discord sets when a privileged intent is switched on in the developer
/// portal for an application in fewer than 100 guilds (`GATEWAY_*_LIMITED`).
fn application_flags(allowed_privileged_intents: u64) -> u64 {
    let mut flags = 0;
    if allowed_privileged_intents & intents::GUILD_PRESENCES != 0 {
        flags |= 1 << 13;
    }
    if allowed_privileged_intents & intents::GUILD_MEMBERS != 0 {
        flags |= 1 << 15;
    }
    if allowed_privileged_intents & intents::MESSAGE_CONTENT != 0 {
        flags |= 1 << 19;
    }
    flags
}

fn resume(shared: &Shared, state: &mut State, connection_id: u64, data: &Value) {
    if !token_matches(shared, data) {
        return authentication_failed(state, connection_id);
    }
    let session_id = data.get("session_id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let client_seq = data.get("seq").and_then(Value::as_u64).unwrap_or(0);

    let Some(session) = state.sessions.get_mut(&session_id).filter(|s| s.resumable) else {
        state.stats.invalid_sessions += 1;
        if let Some(connection) = state.connections.get(&connection_id) {
            let _ = connection.tx.send(Outgoing::Frame(payloads::invalid_session(false).to_string()));
        }
        return;
    };
    if client_seq > session.seq {
        return state.tell_connection(connection_id, Outgoing::Close(close::INVALID_SEQ, "Invalid seq.".into()));
    }

    // Move the session to this connection; an older connection still carrying it is dropped.
    let previous = session.connection.replace(connection_id);
    let missed: Vec<String> =
        session.history.iter().filter(|(seq, _)| *seq > client_seq).map(|(_, text)| text.clone()).collect();
    if let Some(previous) = previous.filter(|p| *p != connection_id)
        && let Some(old) = state.connections.get_mut(&previous)
    {
        old.session = None;
        let _ = old.tx.send(Outgoing::Abort);
    }
    if let Some(connection) = state.connections.get_mut(&connection_id) {
        connection.session = Some(session_id.clone());
        for text in &missed {
            let _ = connection.tx.send(Outgoing::Frame(text.clone()));
        }
    }
    state.stats.dispatches_sent += missed.len() as u64;
    state.stats.resumes += 1;
    if state.current_session.is_none() {
        state.current_session = Some(session_id.clone());
    }
    state.dispatch_to(&session_id, "RESUMED", |_| Some(payloads::resumed()));
}
