//! Application commands: `/applications/{app}/commands` and `/applications/{app}/guilds/{guild}/commands`.
//!
//! <https://discord.com/developers/docs/interactions/application-commands>

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::Value;

use super::{Answer, Reply, json_body, perform, snowflake};
use crate::model::{CommandScope, Endpoint, RegisteredCommand, Snowflake};
use crate::payloads::{self, FieldError};
use crate::state::{Shared, State as ServerState};

fn check_application(shared: &Shared, raw: &str) -> Result<(), Reply> {
    if snowflake("application_id", raw)? == shared.options.application_id {
        Ok(())
    } else {
        Err(Reply::missing_access())
    }
}

fn guild_scope(raw: &str) -> Result<CommandScope, Reply> {
    Ok(CommandScope::Guild(snowflake("guild_id", raw)?))
}

fn check_scope(state: &ServerState, scope: CommandScope) -> Result<(), Reply> {
    match scope {
        CommandScope::Guild(guild_id) if !state.guilds.contains(&guild_id) => Err(Reply::missing_access()),
        _ => Ok(()),
    }
}

/// A command definition that passed the checks.
struct CommandDefinition {
    kind: u8,
    name: String,
    description: String,
    definition: Value,
}

fn is_valid_command_name(name: &str, kind: u8) -> bool {
    let length = name.chars().count();
    if !(1..=32).contains(&length) {
        return false;
    }
    // CHAT_INPUT names: lowercase letters and digits of any script, `-`, `_`, `'`.
    kind != 1 || name.chars().all(|c| (c.is_alphanumeric() && !c.is_uppercase()) || matches!(c, '-' | '_' | '\''))
}

fn check_description(value: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) -> String {
    match value.and_then(Value::as_str) {
        None => {
            errors.push(FieldError::new(path, "BASE_TYPE_REQUIRED", "This field is required"));
            String::new()
        }
        Some(text) if !(1..=100).contains(&text.chars().count()) => {
            errors.push(FieldError::new(path, "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."));
            text.to_owned()
        }
        Some(text) => text.to_owned(),
    }
}

fn check_options(options: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    if options.len() > 25 {
        errors.push(FieldError::new(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."));
    }
    let mut optional_seen = false;
    for (i, option) in options.iter().enumerate() {
        let option_path = format!("{path}.{i}");
        let kind = option.get("type").and_then(Value::as_u64);
        if !matches!(kind, Some(1..=11)) {
            errors.push(FieldError::new(
                format!("{option_path}.type"),
                "BASE_TYPE_CHOICES",
                "Value must be one of {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}.",
            ));
        }
        let name = option.get("name").and_then(Value::as_str).unwrap_or_default();
        if !is_valid_command_name(name, 1) {
            errors.push(FieldError::new(
                format!("{option_path}.name"),
                "APPLICATION_COMMAND_INVALID_NAME",
                "Command name is invalid",
            ));
        }
        check_description(option.get("description"), &format!("{option_path}.description"), errors);
        if option.get("choices").and_then(Value::as_array).is_some_and(|c| c.len() > 25) {
            errors.push(FieldError::new(
                format!("{option_path}.choices"),
                "BASE_TYPE_MAX_LENGTH",
                "Must be 25 or fewer in length.",
            ));
        }
        if matches!(kind, Some(1 | 2)) {
            let nested = option.get("options").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            check_options(nested, &format!("{option_path}.options"), errors);
        } else {
            let required = option.get("required").and_then(Value::as_bool).unwrap_or(false);
            if required && optional_seen {
                errors.push(FieldError::new(
                    format!("{option_path}.required"),
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                ));
            }
            optional_seen |= !required;
        }
    }
}

/// Checks one command definition as the application command docs describe it.
fn check_command(definition: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<CommandDefinition> {
    let at = |field: &str| if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") };
    let before = errors.len();
    if !definition.is_object() {
        errors.push(FieldError::new(path, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType"));
        return None;
    }
    let kind = match definition.get("type") {
        None | Some(Value::Null) => 1,
        Some(kind) => match kind.as_u64() {
            Some(kind @ 1..=4) => kind as u8,
            _ => {
                errors.push(FieldError::new(at("type"), "BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3, 4}."));
                1
            }
        },
    };
    let name = definition.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    if !is_valid_command_name(&name, kind) {
        errors.push(FieldError::new(at("name"), "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"));
    }
    let description = if kind == 1 {
        check_description(definition.get("description"), &at("description"), errors)
    } else {
        let text = definition.get("description").and_then(Value::as_str).unwrap_or_default();
        if !text.is_empty() {
            errors.push(FieldError::new(
                at("description"),
                "APPLICATION_COMMAND_DESCRIPTION_NOT_EMPTY",
                "Description must be empty for user and message commands",
            ));
        }
        String::new()
    };
    if let Some(options) = definition.get("options").and_then(Value::as_array) {
        check_options(options, &at("options"), errors);
    }
    (errors.len() == before).then(|| CommandDefinition { kind, name, description, definition: definition.clone() })
}

/// Stores a definition in a scope: the same name and type keep their id (a new version), as a
/// bulk overwrite on Discord does. Returns the command and whether it is new.
fn upsert_command(state: &mut ServerState, scope: CommandScope, new: CommandDefinition) -> (RegisteredCommand, bool) {
    let version = state.ids.next();
    if let Some(existing) =
        state.commands.iter_mut().find(|c| c.scope == scope && c.name == new.name && c.kind == new.kind)
    {
        existing.version = version;
        existing.description = new.description;
        existing.definition = new.definition;
        return (existing.clone(), false);
    }
    let command = RegisteredCommand {
        id: state.ids.next(),
        scope,
        version,
        kind: new.kind,
        name: new.name,
        description: new.description,
        definition: new.definition,
    };
    state.commands.push(command.clone());
    (command, true)
}

fn commands_reply(state: &ServerState, scope: CommandScope, application_id: Snowflake) -> Reply {
    let list =
        state.commands.iter().filter(|c| c.scope == scope).map(|c| payloads::application_command(c, application_id));
    Reply::ok(Value::Array(list.collect()))
}

fn list_commands(shared: &Shared, raw_application: &str, scope: CommandScope) -> Answer {
    check_application(shared, raw_application)?;
    shared.read(|state| {
        check_scope(state, scope)?;
        Ok(commands_reply(state, scope, shared.options.application_id))
    })
}

fn overwrite_commands(
    shared: &Shared,
    raw_application: &str,
    scope: CommandScope,
    headers: &HeaderMap,
    body: &Bytes,
) -> Answer {
    check_application(shared, raw_application)?;
    let Value::Array(definitions) = json_body(headers, body)? else {
        return Err(Reply::form(vec![FieldError::new(
            "",
            "LIST_TYPE_CONVERT",
            "Only iterables may be used in a ListType",
        )]));
    };
    let mut errors = Vec::new();
    let mut checked = Vec::new();
    for (i, definition) in definitions.iter().enumerate() {
        if let Some(command) = check_command(definition, &i.to_string(), &mut errors) {
            if checked.iter().any(|c: &CommandDefinition| c.name == command.name && c.kind == command.kind) {
                errors.push(FieldError::new(
                    i.to_string(),
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    "Application command names must be unique",
                ));
            }
            checked.push(command);
        }
    }
    if !errors.is_empty() {
        return Err(Reply::form(errors));
    }
    let application_id = shared.options.application_id;
    Ok(perform(shared, Endpoint::RegisterCommands, |state| {
        if let Err(reply) = check_scope(state, scope) {
            return reply;
        }
        let kept: Vec<(String, u8)> = checked.iter().map(|c| (c.name.clone(), c.kind)).collect();
        state.commands.retain(|c| c.scope != scope || kept.contains(&(c.name.clone(), c.kind)));
        for command in checked {
            upsert_command(state, scope, command);
        }
        commands_reply(state, scope, application_id)
    }))
}

fn create_command(
    shared: &Shared,
    raw_application: &str,
    scope: CommandScope,
    headers: &HeaderMap,
    body: &Bytes,
) -> Answer {
    check_application(shared, raw_application)?;
    let definition = json_body(headers, body)?;
    let mut errors = Vec::new();
    let Some(command) = check_command(&definition, "", &mut errors) else { return Err(Reply::form(errors)) };
    let application_id = shared.options.application_id;
    Ok(perform(shared, Endpoint::RegisterCommands, |state| {
        if let Err(reply) = check_scope(state, scope) {
            return reply;
        }
        let (command, created) = upsert_command(state, scope, command);
        Reply::json(if created { 201 } else { 200 }, payloads::application_command(&command, application_id))
    }))
}

fn find_command(
    shared: &Shared,
    raw_application: &str,
    scope: CommandScope,
    raw_command: &str,
    delete: bool,
) -> Answer {
    check_application(shared, raw_application)?;
    let command_id = snowflake("command_id", raw_command)?;
    shared.update(|state| {
        check_scope(state, scope)?;
        let position = state.commands.iter().position(|c| c.scope == scope && c.id == command_id);
        let Some(position) = position else { return Err(Reply::error(404, 10063, "Unknown application command")) };
        if delete {
            state.commands.remove(position);
            Ok(Reply::no_content())
        } else {
            Ok(Reply::ok(payloads::application_command(&state.commands[position], shared.options.application_id)))
        }
    })
}

pub(super) async fn list_global_commands(
    State(shared): State<Arc<Shared>>,
    Path(application_id): Path<String>,
) -> Answer {
    list_commands(&shared, &application_id, CommandScope::Global)
}

pub(super) async fn overwrite_global_commands(
    State(shared): State<Arc<Shared>>,
    Path(application_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    overwrite_commands(&shared, &application_id, CommandScope::Global, &headers, &body)
}

pub(super) async fn create_global_command(
    State(shared): State<Arc<Shared>>,
    Path(application_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    create_command(&shared, &application_id, CommandScope::Global, &headers, &body)
}

pub(super) async fn get_global_command(
    State(shared): State<Arc<Shared>>,
    Path((application_id, command_id)): Path<(String, String)>,
) -> Answer {
    find_command(&shared, &application_id, CommandScope::Global, &command_id, false)
}

pub(super) async fn delete_global_command(
    State(shared): State<Arc<Shared>>,
    Path((application_id, command_id)): Path<(String, String)>,
) -> Answer {
    find_command(&shared, &application_id, CommandScope::Global, &command_id, true)
}

pub(super) async fn list_guild_commands(
    State(shared): State<Arc<Shared>>,
    Path((application_id, guild_id)): Path<(String, String)>,
) -> Answer {
    list_commands(&shared, &application_id, guild_scope(&guild_id)?)
}

pub(super) async fn overwrite_guild_commands(
    State(shared): State<Arc<Shared>>,
    Path((application_id, guild_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    overwrite_commands(&shared, &application_id, guild_scope(&guild_id)?, &headers, &body)
}

pub(super) async fn create_guild_command(
    State(shared): State<Arc<Shared>>,
    Path((application_id, guild_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    create_command(&shared, &application_id, guild_scope(&guild_id)?, &headers, &body)
}

pub(super) async fn get_guild_command(
    State(shared): State<Arc<Shared>>,
    Path((application_id, guild_id, command_id)): Path<(String, String, String)>,
) -> Answer {
    find_command(&shared, &application_id, guild_scope(&guild_id)?, &command_id, false)
}

pub(super) async fn delete_guild_command(
    State(shared): State<Arc<Shared>>,
    Path((application_id, guild_id, command_id)): Path<(String, String, String)>,
) -> Answer {
    find_command(&shared, &application_id, guild_scope(&guild_id)?, &command_id, true)
}
