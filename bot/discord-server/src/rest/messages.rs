//! Messages, DM channels, reactions: `/channels/…` and `/users/@me/channels`.
//!
//! <https://discord.com/developers/docs/resources/message>,
//! <https://discord.com/developers/docs/resources/user#create-dm>

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use serde_json::{Map, Value};

use super::{Answer, Reply, flags, json_object, perform, query_param, snowflake};
use crate::ids::timestamp_now;
use crate::model::{Endpoint, MessageOrigin, Snowflake, StoredMessage, StoredReaction, TestUser};
use crate::payloads::{self, FieldError};
use crate::state::{ChannelKind, Shared, State as ServerState, snowflake_of};

pub(super) async fn create_dm(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Answer {
    let body = json_object(&headers, &body)?;
    let recipient = body.get("recipient_id").and_then(snowflake_of).ok_or_else(|| {
        Reply::form(vec![FieldError::new("recipient_id", "BASE_TYPE_REQUIRED", "This field is required")])
    })?;
    let bot_id = shared.bot().id;
    Ok(perform(&shared, Endpoint::CreateDm, |state| {
        let Some(user) = state.users.get(&recipient).cloned() else {
            return Reply::error(400, 50033, "Invalid Recipient(s)");
        };
        if user.id == bot_id {
            return Reply::error(403, 50007, "Cannot send messages to this user");
        }
        let channel = state.dm_channel_for(recipient);
        Reply::ok(payloads::private_channel(channel, &user, state.last_message_in(channel)))
    }))
}

/// The fields of a message body (create, edit, interaction response, followup), checked.
#[derive(Debug, Default)]
pub(super) struct MessageInput {
    pub(super) content: Option<String>,
    pub(super) nonce: Option<Value>,
    pub(super) enforce_nonce: bool,
    pub(super) embeds: Option<Vec<Value>>,
    pub(super) components: Option<Vec<Value>>,
    pub(super) allowed_mentions: Option<Value>,
    pub(super) flags: Option<u64>,
    /// Stickers, a poll or attachments: content this server does not model, but which makes a
    /// message non-empty.
    pub(super) other_content: bool,
}

impl MessageInput {
    /// Reads and checks a message body. `path` prefixes field paths in errors (`data.` for
    /// interaction callbacks).
    pub(super) fn parse(body: &Map<String, Value>, path: &str) -> Result<Self, Reply> {
        let mut errors = Vec::new();
        let field = |name: &str| format!("{path}{name}");
        let mut input = MessageInput::default();

        match body.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => {
                if text.chars().count() > 2000 {
                    errors.push(FieldError::new(
                        field("content"),
                        "BASE_TYPE_MAX_LENGTH",
                        "Must be 2000 or fewer in length.",
                    ));
                }
                input.content = Some(text.clone());
            }
            Some(_) => errors.push(FieldError::new(
                field("content"),
                "STRING_TYPE_CONVERT",
                "Could not interpret value as string.",
            )),
        }
        match body.get("nonce") {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) if text.chars().count() > 25 => {
                errors.push(FieldError::new(field("nonce"), "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."));
            }
            Some(nonce @ (Value::String(_) | Value::Number(_))) => input.nonce = Some(nonce.clone()),
            Some(_) => {
                errors.push(FieldError::new(field("nonce"), "NONCE_TYPE_INVALID", "Nonce must be a string or integer."))
            }
        }
        input.enforce_nonce = body.get("enforce_nonce").and_then(Value::as_bool).unwrap_or(false);
        if let Some(embeds) = body.get("embeds").filter(|e| !e.is_null()) {
            match embeds.as_array() {
                Some(list) if list.len() > 10 => errors.push(FieldError::new(
                    field("embeds"),
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 10 or fewer in length.",
                )),
                Some(list) => input.embeds = Some(list.clone()),
                None => errors.push(FieldError::new(field("embeds"), "BASE_TYPE_BAD_TYPE", "Must be an array.")),
            }
        }
        input.flags = body.get("flags").and_then(Value::as_u64);
        if let Some(components) = body.get("components").filter(|c| !c.is_null()) {
            match components.as_array() {
                Some(list) => {
                    if input.flags.unwrap_or(0) & flags::IS_COMPONENTS_V2 == 0 {
                        check_components(list, &field("components"), &mut errors);
                    }
                    input.components = Some(list.clone());
                }
                None => errors.push(FieldError::new(field("components"), "BASE_TYPE_BAD_TYPE", "Must be an array.")),
            }
        }
        input.allowed_mentions = body.get("allowed_mentions").filter(|a| !a.is_null()).cloned();
        let non_empty_array = |key: &str| body.get(key).and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        input.other_content = non_empty_array("sticker_ids")
            || non_empty_array("attachments")
            || body.get("poll").is_some_and(|p| !p.is_null());

        if errors.is_empty() { Ok(input) } else { Err(Reply::form(errors)) }
    }

    /// Discord refuses a message with none of content, embeds, components, stickers, files, poll
    /// (content of only whitespace counts as none: Discord trims it).
    pub(super) fn is_empty(&self) -> bool {
        self.content.as_deref().unwrap_or_default().trim().is_empty()
            && self.embeds.as_ref().is_none_or(Vec::is_empty)
            && self.components.as_ref().is_none_or(Vec::is_empty)
            && !self.other_content
    }

    /// The nonce as a dedup key: `"42"` and `42` are the same nonce.
    fn nonce_key(&self) -> Option<String> {
        match self.nonce.as_ref()? {
            Value::String(text) => Some(text.clone()),
            other => Some(other.to_string()),
        }
    }

    /// Applies the present fields to an existing message (an edit).
    pub(super) fn apply_to(&self, message: &mut StoredMessage, state: &ServerState) {
        if let Some(content) = &self.content {
            message.content = content.clone();
            let (mentions, everyone) = state.mentions_in(content, self.allowed_mentions.as_ref());
            message.mentions = mentions;
            message.mention_everyone = everyone;
        }
        if let Some(embeds) = &self.embeds {
            message.embeds = embeds.clone();
        }
        if let Some(components) = &self.components {
            message.components = components.clone();
        }
        if self.allowed_mentions.is_some() {
            message.allowed_mentions = self.allowed_mentions.clone();
        }
        message.flags &= !flags::LOADING;
        message.edited_timestamp = Some(timestamp_now());
    }
}

/// Checks action rows and the buttons and selects in them, as the component reference documents:
/// at most 5 rows; a row holds 1–5 buttons or one select; a non-link button needs a `custom_id`
/// of at most 100 characters, a link button a `url`; `custom_id`s are unique in the message.
fn check_components(rows: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    if rows.len() > 5 {
        errors.push(FieldError::new(path, "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length."));
    }
    let mut seen = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let row_path = format!("{path}.{r}");
        if row.get("type").and_then(Value::as_u64) != Some(1) {
            errors.push(FieldError::new(
                format!("{row_path}.type"),
                "UNION_TYPE_CHOICES",
                "Value of field \"type\" must be one of (1,).",
            ));
            continue;
        }
        let children = row.get("components").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if children.is_empty() || children.len() > 5 {
            errors.push(FieldError::new(
                format!("{row_path}.components"),
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 5 in length.",
            ));
        }
        for (c, child) in children.iter().enumerate() {
            let child_path = format!("{row_path}.components.{c}");
            let custom_id = child.get("custom_id").and_then(Value::as_str);
            match child.get("type").and_then(Value::as_u64) {
                Some(2) => {
                    let style = child.get("style").and_then(Value::as_u64);
                    if !matches!(style, Some(1..=6)) {
                        errors.push(FieldError::new(
                            format!("{child_path}.style"),
                            "BASE_TYPE_CHOICES",
                            "Value must be one of {1, 2, 3, 4, 5, 6}.",
                        ));
                    }
                    if style == Some(5) {
                        if child.get("url").and_then(Value::as_str).is_none() {
                            errors.push(FieldError::new(
                                format!("{child_path}.url"),
                                "BASE_TYPE_REQUIRED",
                                "This field is required",
                            ));
                        }
                        if custom_id.is_some() {
                            errors.push(FieldError::new(
                                format!("{child_path}.custom_id"),
                                "BUTTON_COMPONENT_CUSTOM_ID_ON_LINK",
                                "A link button cannot have a custom_id.",
                            ));
                        }
                        continue;
                    }
                    if style == Some(6) {
                        continue;
                    }
                    if child.get("label").and_then(Value::as_str).is_some_and(|l| l.chars().count() > 80) {
                        errors.push(FieldError::new(
                            format!("{child_path}.label"),
                            "BASE_TYPE_MAX_LENGTH",
                            "Must be 80 or fewer in length.",
                        ));
                    }
                }
                Some(3 | 5..=8) => {
                    if children.len() > 1 {
                        errors.push(FieldError::new(
                            format!("{row_path}.components"),
                            "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                            "The specified component exceeds the maximum width",
                        ));
                    }
                }
                _ => {
                    errors.push(FieldError::new(
                        format!("{child_path}.type"),
                        "UNION_TYPE_CHOICES",
                        "Value of field \"type\" must be one of (2, 3, 5, 6, 7, 8).",
                    ));
                    continue;
                }
            }
            match custom_id {
                None => errors.push(FieldError::new(
                    format!("{child_path}.custom_id"),
                    "BASE_TYPE_REQUIRED",
                    "This field is required",
                )),
                Some(id) if id.is_empty() || id.chars().count() > 100 => errors.push(FieldError::new(
                    format!("{child_path}.custom_id"),
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )),
                Some(id) if seen.contains(&id) => errors.push(FieldError::new(
                    format!("{child_path}.custom_id"),
                    "COMPONENT_CUSTOM_ID_DUPLICATED",
                    "Component custom id cannot be duplicated",
                )),
                Some(id) => seen.push(id),
            }
        }
    }
}

/// A new message from the bot (or the application, for interaction responses) in a channel.
pub(super) fn new_message(
    state: &mut ServerState,
    channel_id: Snowflake,
    author: &TestUser,
    input: &MessageInput,
    origin: MessageOrigin,
    allowed_flags: u64,
) -> StoredMessage {
    let content = input.content.clone().unwrap_or_default();
    let (mentions, mention_everyone) = state.mentions_in(&content, input.allowed_mentions.as_ref());
    let guild_id = match state.channels.get(&channel_id).copied() {
        Some(ChannelKind::Guild(guild_id)) => Some(guild_id),
        _ => None,
    };
    let (kind, webhook_id) = match origin {
        MessageOrigin::InteractionResponse { interaction_id } => {
            let from_command = state.interactions.get(&interaction_id).is_some_and(|i| i.source_message.is_none());
            (if from_command { 20 } else { 0 }, Some(state.application_id))
        }
        MessageOrigin::Followup { .. } => (0, Some(state.application_id)),
        MessageOrigin::Bot | MessageOrigin::Person => (0, None),
    };
    StoredMessage {
        id: state.ids.next(),
        channel_id,
        guild_id,
        author: author.clone(),
        content,
        timestamp: timestamp_now(),
        edited_timestamp: None,
        nonce: input.nonce.clone(),
        embeds: input.embeds.clone().unwrap_or_default(),
        components: input.components.clone().unwrap_or_default(),
        allowed_mentions: input.allowed_mentions.clone(),
        mentions,
        mention_everyone,
        flags: input.flags.unwrap_or(0) & allowed_flags,
        kind,
        webhook_id,
        origin,
    }
}

pub(super) async fn create_message(
    State(shared): State<Arc<Shared>>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let channel_id = snowflake("channel_id", &channel_id)?;
    let input = MessageInput::parse(&json_object(&headers, &body)?, "")?;
    if input.is_empty() {
        return Err(Reply::empty_message());
    }
    let bot = shared.bot().clone();
    let nonce_window = shared.options.nonce_window;
    Ok(perform(&shared, Endpoint::CreateMessage, |state| {
        let Some(kind) = state.channels.get(&channel_id).copied() else { return Reply::unknown_channel() };
        if let ChannelKind::Dm { recipient } = kind
            && state.users.get(&recipient).is_some_and(|u| u.bot)
        {
            return Reply::error(403, 50007, "Cannot send messages to this user");
        }
        let nonce_key = input.nonce_key().map(|nonce| (bot.id, nonce));
        if input.enforce_nonce
            && let Some(key) = &nonce_key
            && let Some((first, at)) = state.nonces.get(key)
            && at.elapsed() < nonce_window
            && let Some(first) = state.messages.iter().find(|m| m.id == *first)
        {
            return Reply::ok(payloads::message(first));
        }
        let message = new_message(state, channel_id, &bot, &input, MessageOrigin::Bot, flags::SETTABLE);
        if let Some(key) = nonce_key {
            let fresh = state.nonces.get(&key).is_none_or(|(_, at)| at.elapsed() >= nonce_window);
            if fresh {
                state.nonces.insert(key, (message.id, Instant::now()));
            }
        }
        state.messages.push(message.clone());
        state.dispatch_message_create(&message, bot.id);
        Reply::ok(payloads::message(&message))
    }))
}

pub(super) async fn list_messages(
    State(shared): State<Arc<Shared>>,
    Path(channel_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Answer {
    let channel_id = snowflake("channel_id", &channel_id)?;
    let query = query.as_deref();
    let limit = query_param(query, "limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(50).clamp(1, 100);
    let before = query_param(query, "before").and_then(|b| b.parse::<Snowflake>().ok());
    let after = query_param(query, "after").and_then(|a| a.parse::<Snowflake>().ok());
    shared.read(|state| {
        if !state.channels.contains_key(&channel_id) {
            return Err(Reply::unknown_channel());
        }
        let in_range = |m: &&_| {
            let m: &crate::model::StoredMessage = m;
            m.channel_id == channel_id
                && !m.is_ephemeral()
                && before.is_none_or(|b| m.id < b)
                && after.is_none_or(|a| m.id > a)
        };
        // As Discord: `after` pages forward (the `limit` messages right after it), otherwise
        // backward from the newest (or from `before`); either way the page is newest first.
        let page: Vec<Value> = if after.is_some() && before.is_none() {
            let oldest_first: Vec<_> = state.messages.iter().filter(in_range).take(limit).collect();
            oldest_first.into_iter().rev().map(payloads::message).collect()
        } else {
            state.messages.iter().rev().filter(in_range).take(limit).map(payloads::message).collect()
        };
        Ok(Reply::ok(Value::Array(page)))
    })
}

pub(super) async fn get_message(
    State(shared): State<Arc<Shared>>,
    Path((channel_id, message_id)): Path<(String, String)>,
) -> Answer {
    let channel_id = snowflake("channel_id", &channel_id)?;
    let message_id = snowflake("message_id", &message_id)?;
    shared.read(|state| {
        if !state.channels.contains_key(&channel_id) {
            return Err(Reply::unknown_channel());
        }
        let message =
            state.message(channel_id, message_id).filter(|m| !m.is_ephemeral()).ok_or_else(Reply::unknown_message)?;
        Ok(Reply::ok(payloads::message(message)))
    })
}

pub(super) async fn edit_message(
    State(shared): State<Arc<Shared>>,
    Path((channel_id, message_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let channel_id = snowflake("channel_id", &channel_id)?;
    let message_id = snowflake("message_id", &message_id)?;
    let input = MessageInput::parse(&json_object(&headers, &body)?, "")?;
    let bot_id = shared.bot().id;
    shared.update(|state| {
        if !state.channels.contains_key(&channel_id) {
            return Err(Reply::unknown_channel());
        }
        let existing = state.message(channel_id, message_id).ok_or_else(Reply::unknown_message)?;
        if existing.author.id != bot_id {
            return Err(Reply::error(403, 50005, "Cannot edit a message authored by another user"));
        }
        let mut edited = existing.clone();
        input.apply_to(&mut edited, state);
        let reply = Reply::ok(payloads::message(&edited));
        if let Some(slot) = state.message_mut(channel_id, message_id) {
            *slot = edited;
        }
        Ok(reply)
    })
}

/// A unicode emoji, as far as this server can tell: not empty, not `name:id` (custom emojis are
/// not modelled), and not plain ASCII text.
fn is_unicode_emoji(emoji: &str) -> bool {
    !emoji.is_empty() && !emoji.contains(':') && !emoji.is_ascii()
}

pub(super) async fn add_reaction(
    State(shared): State<Arc<Shared>>,
    Path((channel_id, message_id, emoji)): Path<(String, String, String)>,
) -> Answer {
    let channel_id = snowflake("channel_id", &channel_id)?;
    let message_id = snowflake("message_id", &message_id)?;
    let bot_id = shared.bot().id;
    Ok(perform(&shared, Endpoint::CreateReaction, |state| {
        if !state.channels.contains_key(&channel_id) {
            return Reply::unknown_channel();
        }
        if state.message(channel_id, message_id).is_none() {
            return Reply::unknown_message();
        }
        if !is_unicode_emoji(&emoji) {
            return Reply::error(400, 10014, "Unknown Emoji");
        }
        let reaction = StoredReaction { channel_id, message_id, emoji, user_id: bot_id };
        if !state.reactions.contains(&reaction) {
            state.reactions.push(reaction);
        }
        Reply::no_content()
    }))
}

pub(super) async fn remove_reaction(
    State(shared): State<Arc<Shared>>,
    Path((channel_id, message_id, emoji)): Path<(String, String, String)>,
) -> Answer {
    let channel_id = snowflake("channel_id", &channel_id)?;
    let message_id = snowflake("message_id", &message_id)?;
    let bot_id = shared.bot().id;
    shared.update(|state| {
        if state.message(channel_id, message_id).is_none() {
            return Err(Reply::unknown_message());
        }
        state.reactions.retain(|r| {
            !(r.channel_id == channel_id && r.message_id == message_id && r.emoji == emoji && r.user_id == bot_id)
        });
        Ok(Reply::no_content())
    })
}

pub(super) async fn trigger_typing(State(shared): State<Arc<Shared>>, Path(channel_id): Path<String>) -> Answer {
    let channel_id = snowflake("channel_id", &channel_id)?;
    if shared.read(|state| state.channels.contains_key(&channel_id)) {
        Ok(Reply::no_content())
    } else {
        Err(Reply::unknown_channel())
    }
}
