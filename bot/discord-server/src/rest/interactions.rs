//! Interaction callbacks, followups and `@original`: `/interactions/…` and `/webhooks/{app}/{token}…`.
//!
//! <https://discord.com/developers/docs/interactions/receiving-and-responding>

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::{Map, Value};

use super::messages::{MessageInput, new_message};
use super::{Answer, Reply, flags, json_object, perform};
use crate::model::{Endpoint, Failure, InteractionCallback, MessageOrigin, Snowflake, TestUser};
use crate::payloads::{self, FieldError};
use crate::state::{InteractionRecord, Shared, State as ServerState};

/// Interaction tokens stay valid for followups this long.
const INTERACTION_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The callback types valid for an interaction: commands may not use the component-only 6 and 7.
fn callback_type_allowed(callback_type: u64, from_component: bool) -> bool {
    matches!(callback_type, 4 | 5 | 9) || (from_component && matches!(callback_type, 6 | 7))
}

pub(super) async fn interaction_callback(
    State(shared): State<Arc<Shared>>,
    Path((interaction_id, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let received_at = Instant::now();
    let body = json_object(&headers, &body);
    let interaction_id = interaction_id.parse::<Snowflake>().unwrap_or(0);
    let deadline = shared.options.interaction_deadline;
    let bot = shared.bot().clone();
    shared.update(|state| {
        let interaction = state.interactions.get(&interaction_id).filter(|i| i.token == token).cloned();
        let elapsed = interaction.as_ref().map_or(Duration::ZERO, |i| received_at.duration_since(i.dispatched_at));
        let callback_type = body.as_ref().ok().and_then(|b| b.get("type")).and_then(Value::as_u64);
        let data = body.as_ref().ok().and_then(|b| b.get("data")).cloned().unwrap_or(Value::Null);
        let reply =
            answer_callback(state, interaction_id, interaction.as_ref(), elapsed, deadline, body.as_ref(), &bot);
        state.callbacks.push(InteractionCallback {
            interaction_id,
            callback_type,
            data,
            elapsed,
            status: reply.status.as_u16(),
            error_code: if reply.is_success() { None } else { reply.error_code() },
        });
        reply
    })
}

fn answer_callback(
    state: &mut ServerState,
    interaction_id: Snowflake,
    interaction: Option<&InteractionRecord>,
    elapsed: Duration,
    deadline: Duration,
    body: Result<&Map<String, Value>, &Reply>,
    bot: &TestUser,
) -> Reply {
    let Some(interaction) = interaction else { return Reply::unknown_interaction() };
    let failure = state.take_failure(Endpoint::InteractionCallback);
    if let Some(failure) = failure.as_ref().filter(|f| !matches!(f, Failure::StatusAfterWrite(_))) {
        return Reply::for_failure(failure);
    }
    if interaction.acknowledged.is_some() {
        return Reply::error(400, 40060, "Interaction has already been acknowledged.");
    }
    if elapsed > deadline {
        return Reply::unknown_interaction();
    }
    let body = match body {
        Ok(body) => body,
        Err(reply) => return reply.clone(),
    };
    let from_component = interaction.source_message.is_some();
    let callback_type = match body.get("type").and_then(Value::as_u64) {
        Some(kind) if callback_type_allowed(kind, from_component) => kind,
        _ => {
            let choices = if from_component { "{4, 5, 6, 7, 9}" } else { "{4, 5, 9}" };
            return Reply::form(vec![FieldError::new(
                "type",
                "BASE_TYPE_CHOICES",
                format!("Value must be one of {choices}."),
            )]);
        }
    };
    let data = body.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
    let input = match MessageInput::parse(&data, "data.") {
        Ok(input) => input,
        Err(reply) => return reply,
    };
    let origin = MessageOrigin::InteractionResponse { interaction_id };
    let mut original = None;
    match callback_type {
        4 => {
            if input.is_empty() {
                return Reply::empty_message();
            }
            let message =
                new_message(state, interaction.channel_id, bot, &input, origin, flags::SETTABLE | flags::EPHEMERAL);
            state.messages.push(message.clone());
            state.dispatch_message_create(&message, bot.id);
            original = Some(message.id);
        }
        5 => {
            let loading = MessageInput {
                flags: Some(input.flags.unwrap_or(0) & flags::EPHEMERAL | flags::LOADING),
                ..Default::default()
            };
            let message =
                new_message(state, interaction.channel_id, bot, &loading, origin, flags::EPHEMERAL | flags::LOADING);
            state.messages.push(message.clone());
            state.dispatch_message_create(&message, bot.id);
            original = Some(message.id);
        }
        7 => {
            if let Some(source) = interaction.source_message {
                let mut edited = state.message(interaction.channel_id, source).cloned();
                if let Some(edited) = edited.as_mut() {
                    input.apply_to(edited, state);
                }
                if let (Some(edited), Some(slot)) = (edited, state.message_mut(interaction.channel_id, source)) {
                    *slot = edited;
                }
            }
        }
        9 => {
            let mut errors = Vec::new();
            for field in ["custom_id", "title", "components"] {
                if data.get(field).is_none() {
                    errors.push(FieldError::new(
                        format!("data.{field}"),
                        "BASE_TYPE_REQUIRED",
                        "This field is required",
                    ));
                }
            }
            if !errors.is_empty() {
                return Reply::form(errors);
            }
        }
        _ => {}
    }
    if let Some(record) = state.interactions.get_mut(&interaction_id) {
        record.acknowledged = Some(callback_type);
        record.original_message = original;
    }
    match failure {
        Some(Failure::StatusAfterWrite(status)) => Reply::status(status),
        _ => Reply::no_content(),
    }
}

/// The interaction behind a webhook token, if the token is still usable for followups: the
/// interaction was acknowledged (Discord invalidates a token that missed its 3 s deadline) and is
/// less than 15 minutes old.
fn webhook_interaction(
    state: &ServerState,
    application_id: Snowflake,
    raw_application: &str,
    token: &str,
) -> Result<Snowflake, Reply> {
    if raw_application.parse::<Snowflake>().ok() != Some(application_id) {
        return Err(Reply::unknown_webhook());
    }
    state
        .interactions
        .iter()
        .find(|(_, i)| {
            i.token == token && i.acknowledged.is_some() && i.dispatched_at.elapsed() < INTERACTION_TOKEN_LIFETIME
        })
        .map(|(id, _)| *id)
        .ok_or_else(Reply::unknown_webhook)
}

pub(super) async fn create_followup(
    State(shared): State<Arc<Shared>>,
    Path((application_id, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let input = MessageInput::parse(&json_object(&headers, &body)?, "")?;
    if input.is_empty() {
        return Err(Reply::empty_message());
    }
    let bot = shared.bot().clone();
    let our_application = shared.options.application_id;
    Ok(perform(&shared, Endpoint::Followup, |state| {
        let interaction_id = match webhook_interaction(state, our_application, &application_id, &token) {
            Ok(id) => id,
            Err(reply) => return reply,
        };
        let Some(interaction) = state.interactions.get(&interaction_id).cloned() else {
            return Reply::unknown_webhook();
        };
        // After a deferred response, the first followup edits the loading message (documented,
        // deprecated behaviour).
        if interaction.acknowledged == Some(5)
            && interaction.followups.is_empty()
            && let Some(original) = interaction.original_message
            && let Some(mut message) =
                state.message(interaction.channel_id, original).filter(|m| m.flags & flags::LOADING != 0).cloned()
        {
            input.apply_to(&mut message, state);
            let reply = Reply::ok(payloads::message(&message));
            if let Some(slot) = state.message_mut(interaction.channel_id, original) {
                *slot = message;
            }
            return reply;
        }
        let origin = MessageOrigin::Followup { interaction_id };
        let message =
            new_message(state, interaction.channel_id, &bot, &input, origin, flags::SETTABLE | flags::EPHEMERAL);
        state.messages.push(message.clone());
        state.dispatch_message_create(&message, bot.id);
        if let Some(record) = state.interactions.get_mut(&interaction_id) {
            record.followups.push(message.id);
        }
        Reply::ok(payloads::message(&message))
    }))
}

/// The message `@original` or a followup id names for an interaction.
fn webhook_message(
    state: &ServerState,
    interaction_id: Snowflake,
    raw_message: &str,
) -> Option<(Snowflake, Snowflake)> {
    let interaction = state.interactions.get(&interaction_id)?;
    let message_id = if raw_message == "@original" {
        interaction
            .original_message
            .or(interaction.source_message.filter(|_| matches!(interaction.acknowledged, Some(6 | 7))))?
    } else {
        let id = raw_message.parse().ok()?;
        interaction.followups.contains(&id).then_some(id)?
    };
    Some((interaction.channel_id, message_id))
}

pub(super) async fn get_webhook_message(
    State(shared): State<Arc<Shared>>,
    Path((application_id, token, message_id)): Path<(String, String, String)>,
) -> Answer {
    let our_application = shared.options.application_id;
    shared.read(|state| {
        let interaction_id = webhook_interaction(state, our_application, &application_id, &token)?;
        let (channel_id, message_id) =
            webhook_message(state, interaction_id, &message_id).ok_or_else(Reply::unknown_message)?;
        let message = state.message(channel_id, message_id).ok_or_else(Reply::unknown_message)?;
        Ok(Reply::ok(payloads::message(message)))
    })
}

pub(super) async fn edit_webhook_message(
    State(shared): State<Arc<Shared>>,
    Path((application_id, token, message_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let input = MessageInput::parse(&json_object(&headers, &body)?, "")?;
    let our_application = shared.options.application_id;
    Ok(perform(&shared, Endpoint::Followup, |state| {
        let target = webhook_interaction(state, our_application, &application_id, &token).and_then(|interaction_id| {
            webhook_message(state, interaction_id, &message_id).ok_or_else(Reply::unknown_message)
        });
        let (channel_id, message_id) = match target {
            Ok(target) => target,
            Err(reply) => return reply,
        };
        let Some(mut message) = state.message(channel_id, message_id).cloned() else { return Reply::unknown_message() };
        input.apply_to(&mut message, state);
        let reply = Reply::ok(payloads::message(&message));
        if let Some(slot) = state.message_mut(channel_id, message_id) {
            *slot = message;
        }
        reply
    }))
}
