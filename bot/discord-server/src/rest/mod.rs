//! The REST API under `/api/v10`, and the websocket upgrade on `/`.
//!
//! Every answer is built from [`crate::payloads`]. Requests are checked the way Discord documents
//! it (authentication, snowflakes, lengths, required fields), because a server that accepts
//! anything would let an adapter pass its tests and fail on Discord.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Map, Value};

use crate::gateway;

mod commands;
mod interactions;
mod messages;

use crate::model::{Endpoint, Failure, RequestRecord, Snowflake};
use crate::payloads::{self, FieldError};
use crate::state::{Shared, State as ServerState};

/// Message flags.
mod flags {
    pub(super) const SUPPRESS_EMBEDS: u64 = 1 << 2;
    pub(super) const EPHEMERAL: u64 = 1 << 6;
    pub(super) const LOADING: u64 = 1 << 7;
    pub(super) const SUPPRESS_NOTIFICATIONS: u64 = 1 << 12;
    pub(super) const IS_VOICE_MESSAGE: u64 = 1 << 13;
    pub(super) const IS_COMPONENTS_V2: u64 = 1 << 15;
    /// What `POST /channels/{id}/messages` may set.
    pub(super) const SETTABLE: u64 = SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | IS_VOICE_MESSAGE | IS_COMPONENTS_V2;
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let global_commands = "/api/v10/applications/{application_id}/commands";
    let guild_commands_path = "/api/v10/applications/{application_id}/guilds/{guild_id}/commands";
    Router::new()
        .route("/", get(gateway_socket))
        .route("/api/v10/gateway", get(get_gateway))
        .route("/api/v10/gateway/bot", get(get_gateway_bot))
        .route("/api/v10/users/@me", get(get_current_user))
        .route("/api/v10/users/@me/channels", post(messages::create_dm))
        .route("/api/v10/channels/{channel_id}/messages", post(messages::create_message).get(messages::list_messages))
        .route(
            "/api/v10/channels/{channel_id}/messages/{message_id}",
            get(messages::get_message).patch(messages::edit_message),
        )
        .route(
            "/api/v10/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
            put(messages::add_reaction).delete(messages::remove_reaction),
        )
        .route("/api/v10/channels/{channel_id}/typing", post(messages::trigger_typing))
        .route(
            global_commands,
            get(commands::list_global_commands)
                .put(commands::overwrite_global_commands)
                .post(commands::create_global_command),
        )
        .route(
            &format!("{global_commands}/{{command_id}}"),
            get(commands::get_global_command).delete(commands::delete_global_command),
        )
        .route(
            guild_commands_path,
            get(commands::list_guild_commands)
                .put(commands::overwrite_guild_commands)
                .post(commands::create_guild_command),
        )
        .route(
            &format!("{guild_commands_path}/{{command_id}}"),
            get(commands::get_guild_command).delete(commands::delete_guild_command),
        )
        .route("/api/v10/interactions/{interaction_id}/{token}/callback", post(interactions::interaction_callback))
        .route("/api/v10/webhooks/{application_id}/{token}", post(interactions::create_followup))
        .route(
            "/api/v10/webhooks/{application_id}/{token}/messages/{message_id}",
            get(interactions::get_webhook_message).patch(interactions::edit_webhook_message),
        )
        .fallback(|| async { Reply::status(404) })
        .method_not_allowed_fallback(|| async { Reply::status(405) })
        .layer(middleware::from_fn_with_state(shared.clone(), authenticate_and_record))
        .with_state(shared)
}

/// An HTTP answer with a JSON body (or none).
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    status: StatusCode,
    body: Option<Value>,
    headers: Vec<(HeaderName, String)>,
}

type Answer = Result<Reply, Reply>;

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: Some(body),
            headers: Vec::new(),
        }
    }

    fn ok(body: Value) -> Self {
        Self::json(200, body)
    }

    fn no_content() -> Self {
        Self { status: StatusCode::NO_CONTENT, body: None, headers: Vec::new() }
    }

    fn error(status: u16, code: u64, message: &str) -> Self {
        Self::json(status, payloads::error(code, message))
    }

    fn status(status: u16) -> Self {
        Self::json(status, payloads::status_error(status))
    }

    fn form(errors: Vec<FieldError>) -> Self {
        Self::json(400, payloads::invalid_form_body(&errors))
    }

    fn unknown_channel() -> Self {
        Self::error(404, 10003, "Unknown Channel")
    }

    fn unknown_message() -> Self {
        Self::error(404, 10008, "Unknown Message")
    }

    fn unknown_webhook() -> Self {
        Self::error(404, 10015, "Unknown Webhook")
    }

    fn unknown_interaction() -> Self {
        Self::error(404, 10062, "Unknown interaction")
    }

    fn missing_access() -> Self {
        Self::error(403, 50001, "Missing Access")
    }

    fn empty_message() -> Self {
        Self::error(400, 50006, "Cannot send an empty message")
    }

    /// 429 with Discord's body and headers.
    fn rate_limited(retry_after: Duration, global: bool) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let reset = (now + retry_after).as_secs_f64();
        let mut reply = Self::json(429, payloads::rate_limited(retry_after, global));
        let mut header = |name: &'static str, value: String| reply.headers.push((HeaderName::from_static(name), value));
        header("retry-after", retry_after.as_secs_f64().ceil().to_string());
        header("x-ratelimit-limit", "5".into());
        header("x-ratelimit-remaining", "0".into());
        header("x-ratelimit-reset", format!("{reset:.3}"));
        header("x-ratelimit-reset-after", format!("{:.3}", retry_after.as_secs_f64()));
        header("x-ratelimit-bucket", "wavelet-local-bucket".into());
        header("x-ratelimit-scope", if global { "global" } else { "user" }.into());
        if global {
            header("x-ratelimit-global", "true".into());
        }
        reply
    }

    fn for_failure(failure: &Failure) -> Self {
        match failure {
            Failure::Status(status) | Failure::StatusAfterWrite(status) => Self::status(*status),
            Failure::RateLimited { retry_after, global } => Self::rate_limited(*retry_after, *global),
        }
    }

    fn is_success(&self) -> bool {
        self.status.is_success()
    }

    fn error_code(&self) -> Option<u64> {
        self.body.as_ref().and_then(|b| b.get("code")).and_then(Value::as_u64)
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = match self.body {
            Some(body) => (self.status, [(CONTENT_TYPE, "application/json")], body.to_string()).into_response(),
            None => self.status.into_response(),
        };
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// Runs `work` unless a failure was injected for `endpoint`; a [`Failure::StatusAfterWrite`] lets
/// the work happen and then replaces a successful answer.
fn perform(shared: &Shared, endpoint: Endpoint, work: impl FnOnce(&mut ServerState) -> Reply) -> Reply {
    shared.update(|state| match state.take_failure(endpoint) {
        Some(Failure::StatusAfterWrite(status)) => {
            let reply = work(state);
            if reply.is_success() { Reply::status(status) } else { reply }
        }
        Some(failure) => Reply::for_failure(&failure),
        None => work(state),
    })
}

/// Checks `Authorization: Bot <token>` and records every request.
///
/// `GET /gateway` needs no authentication, and the header is ignored there: serenity calls it
/// before anything else, and on any failure silently falls back to `wss://gateway.discord.gg`
/// (unreachable here), so a bad token would never get to IDENTIFY and its 4004. Discord
/// authenticates interaction callbacks and interaction webhooks by the token in the path, so
/// those pass without the header, but not with a wrong one.
async fn authenticate_and_record(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let response =
        if authorized(&shared, &request) { next.run(request).await } else { Reply::status(401).into_response() };
    let status = response.status().as_u16();
    shared.update(|state| state.requests.push(RequestRecord { method, path, status }));
    response
}

fn authorized(shared: &Shared, request: &Request) -> bool {
    let Some(route) = request.uri().path().strip_prefix("/api/v10") else { return true };
    if route == "/gateway" {
        return true;
    }
    let header = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let valid = header.is_some_and(|h| h.strip_prefix("Bot ") == Some(shared.options.token.as_str()));
    let needs_header = !(route.starts_with("/interactions/") || route.starts_with("/webhooks/"));
    valid || (header.is_none() && !needs_header)
}

fn snowflake(field: &str, raw: &str) -> Result<Snowflake, Reply> {
    raw.parse::<Snowflake>().ok().filter(|id| *id != 0).ok_or_else(|| {
        Reply::form(vec![FieldError::new(field, "NUMBER_TYPE_COERCE", format!("Value \"{raw}\" is not snowflake."))])
    })
}

fn json_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, Reply> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if content_type.starts_with("multipart/") {
        return Err(Reply::error(
            400,
            0,
            "multipart/form-data (file uploads) is not supported by the local Discord server",
        ));
    }
    serde_json::from_slice(body).map_err(|_| Reply::error(400, 50109, "The request body contains invalid JSON."))
}

fn json_object(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, Reply> {
    match json_body(headers, body)? {
        Value::Object(map) => Ok(map),
        _ => Err(Reply::form(vec![FieldError::new(
            "",
            "DICT_TYPE_CONVERT",
            "Only dictionaries may be used in a DictType",
        )])),
    }
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.to_owned())
}

async fn gateway_socket(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    let version = query_param(query.as_deref(), "v");
    upgrade.on_upgrade(move |socket| gateway::serve_connection(shared, socket, version))
}

async fn get_gateway(State(shared): State<Arc<Shared>>) -> Reply {
    Reply::ok(payloads::gateway(&shared.gateway_url))
}

async fn get_gateway_bot(State(shared): State<Arc<Shared>>) -> Reply {
    Reply::ok(payloads::gateway_bot(&shared.gateway_url))
}

async fn get_current_user(State(shared): State<Arc<Shared>>) -> Reply {
    Reply::ok(payloads::current_user(shared.bot()))
}
