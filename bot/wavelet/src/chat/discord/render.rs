//! What Wavelet sends Discord: messages split at Discord's limit with mentions
//! neutralised, buttons for choices and acknowledgements, nonces from idempotency keys,
//! slash commands from the workflows on offer; and serenity's errors in our words.

use super::*;

/// A button as Wavelet renders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Button {
    pub(super) custom_id: String,
    pub(super) label: String,
    pub(super) primary: bool,
}

/// One Discord message of a rendered [`MessageBody`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Part {
    pub(super) content: String,
    pub(super) buttons: Vec<Button>,
}

/// A body as Discord messages: text with mentions broken, split at Discord's limit, and the
/// buttons (on the last part) for a choice or an escalation notice.
pub(super) fn render(body: &MessageBody, key: &str) -> Vec<Part> {
    let buttons = match body {
        MessageBody::Text { .. } => Vec::new(),
        MessageBody::Choice { options, .. } if options.len() <= MAX_BUTTONS => options
            .iter()
            .enumerate()
            .map(|(i, option)| {
                // A label that reads as a number would be taken as that option's number.
                let label = (option.trim().parse::<f64>().is_err()).then(|| option.clone());
                let click = Click::Choose { question: Some(message_tag(key)), number: i + 1, label };
                Button { custom_id: click.custom_id(), label: button_label(option), primary: false }
            })
            .collect(),
        MessageBody::Choice { .. } => Vec::new(),
        MessageBody::Escalation { case_id, .. } => vec![Button {
            custom_id: Click::Ack(case_id.clone()).custom_id(),
            label: button_label(&format!("Acknowledge {case_id}")),
            primary: true,
        }],
    };
    let mut texts = split(&no_pings(&body.plain()), MAX_MESSAGE_CHARS);
    // Discord refuses a message of only whitespace: such a piece of a long text is left out
    // (the others still carry every visible character).
    if texts.iter().any(|t| !t.trim().is_empty()) {
        texts.retain(|t| !t.trim().is_empty());
    }
    let last = texts.len() - 1;
    texts
        .into_iter()
        .enumerate()
        .map(|(i, content)| Part { content, buttons: if i == last { buttons.clone() } else { Vec::new() } })
        .collect()
}

pub(super) fn button_label(text: &str) -> String {
    let one_line = wavelet_core::text::one_line(text);
    if one_line.chars().count() <= MAX_LABEL_CHARS {
        return one_line;
    }
    let mut short: String = one_line.chars().take(MAX_LABEL_CHARS - 1).collect();
    short.push('…');
    short
}

pub(super) fn action_rows(buttons: &[Button]) -> Vec<CreateActionRow> {
    buttons
        .chunks(BUTTONS_PER_ROW)
        .map(|row| {
            CreateActionRow::Buttons(
                row.iter()
                    .map(|b| {
                        let style = if b.primary { ButtonStyle::Primary } else { ButtonStyle::Secondary };
                        CreateButton::new(b.custom_id.clone()).label(b.label.clone()).style(style)
                    })
                    .collect(),
            )
        })
        .collect()
}

/// Text that pings nobody when shown, even to a client that ignored `allowed_mentions`:
/// `@everyone`, `@here` (any case) and the mention syntax `<@…>` / `<@&…>` get a word joiner
/// after the `@`, which reads the same and is no longer a mention.
pub(super) fn no_pings(text: &str) -> String {
    const JOINER: char = '\u{2060}';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at + 1]);
        let after = &rest[at + 1..];
        let lower = |n: usize| after.get(..n).map(str::to_ascii_lowercase);
        let mass = lower(8).as_deref() == Some("everyone") || lower(4).as_deref() == Some("here");
        if mass || out[..out.len() - 1].ends_with('<') {
            out.push(JOINER);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Splits text into pieces of at most `max` characters, at a line break when there is one
/// in the second half of the piece, else at a space, else anywhere. The pieces joined give
/// the text back.
pub(super) fn split(text: &str, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max {
        let limit = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let window = &rest[..limit];
        let after = |c: char| window.char_indices().rev().find(|&(i, ch)| ch == c && i > limit / 2);
        let cut = after('\n')
            .or_else(|| window.char_indices().rev().find(|&(i, ch)| ch.is_whitespace() && i > limit / 2))
            .map_or(limit, |(i, ch)| i + ch.len_utf8());
        parts.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    parts.push(rest.to_string());
    parts
}

/// The Discord nonce of one part of a message: the same for every resend of it, and at most
/// 25 characters (Discord's limit; idempotency keys are longer).
pub(super) fn nonce(key: &str, part: usize) -> String {
    wavelet_core::engine::source_hash(&format!("{key}#{part}"))[..NONCE_CHARS].to_string()
}

/// The first snowflake of the millisecond `at` (Unix time); 1 before Discord's epoch.
pub(super) fn snowflake_at(at: i64) -> u64 {
    u64::try_from(at.saturating_sub(DISCORD_EPOCH_MS)).map_or(1, |ms| (ms << 22).max(1))
}

/// A Discord id in text, if it is one (serenity's id types panic on 0).
pub(super) fn snowflake(text: &str) -> Option<u64> {
    text.parse().ok().filter(|&n| n != 0)
}

/// The slash commands Wavelet offers: each loaded workflow whose command Discord accepts as
/// a name, and `help`, `cancel` and `ack` with the case to acknowledge.
pub(super) fn slash_commands(workflows: &[WorkflowMeta]) -> Vec<CreateCommand> {
    let builtin = ["help", "cancel", "ack"];
    let mut commands: Vec<CreateCommand> = workflows
        .iter()
        .filter(|w| {
            let ok = is_slash_command_name(&w.command) && !builtin.contains(&w.command.as_str());
            if !ok {
                tracing::warn!(command = %w.command, "workflow command is not a valid Discord slash command name; only its prefix command works");
            }
            ok
        })
        .map(|w| CreateCommand::new(&w.command).description(command_description(&w.description, &w.command)))
        .collect();
    commands.push(CreateCommand::new("help").description("What you can do with Wavelet here"));
    commands.push(CreateCommand::new("cancel").description("End your open dialog with Wavelet"));
    commands.push(CreateCommand::new("ack").description("Acknowledge a case (stops its escalation)").add_option(
        CreateCommandOption::new(CommandOptionType::String, "case", "The case id, like C-12").required(true),
    ));
    // Only in servers the bot is in and in DMs with the bot: not in other people's DMs (a
    // user-installed app could be used there, and Wavelet would take that DM for theirs).
    commands
        .into_iter()
        .map(|c| {
            c.contexts(vec![InteractionContext::Guild, InteractionContext::BotDm])
                .integration_types(vec![InstallationContext::Guild])
        })
        .collect()
}

/// Discord's rule for a slash command's name: 1 to 32 characters, lowercase letters and
/// digits of any script, `-` and `_`. One bad name would fail the whole registration.
pub(super) fn is_slash_command_name(name: &str) -> bool {
    (1..=32).contains(&name.chars().count())
        && name.chars().all(|c| (c.is_alphanumeric() && !c.is_uppercase()) || matches!(c, '-' | '_'))
}

/// Discord wants 1 to 100 characters.
pub(super) fn command_description(description: &str, command: &str) -> String {
    let text = wavelet_core::text::one_line(description).trim().to_string();
    let text = if text.is_empty() { format!("Start the {command} workflow") } else { text };
    if text.chars().count() <= 100 {
        return text;
    }
    let mut short: String = text.chars().take(99).collect();
    short.push('…');
    short
}

pub(super) fn status_of(e: &serenity::Error) -> Option<u16> {
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => Some(r.status_code.as_u16()),
        _ => None,
    }
}

/// A serenity error for logs and the ledger: status, Discord's code and message; never a URL
/// (an interaction's URL holds its token) or content.
pub(super) fn describe(e: &serenity::Error) -> String {
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            format!("HTTP {} (Discord code {}: {})", r.status_code.as_u16(), r.error.code, r.error.message)
        }
        serenity::Error::Http(HttpError::Request(r)) if r.is_timeout() => "the request timed out".into(),
        serenity::Error::Http(HttpError::Request(r)) if r.is_connect() => "cannot connect".into(),
        serenity::Error::Http(HttpError::Request(_)) => "the request failed".into(),
        serenity::Error::Model(m) => format!("refused before sending: {m}"),
        other => other.to_string(),
    }
}

/// How a failed send is retried: 429 waits (serenity handles Discord's rate limits itself
/// unless its limiter is off; what reaches here has lost `retry_after`); refusals of the
/// message or the channel are permanent; server errors and the network are temporary.
pub(super) fn send_error(e: serenity::Error) -> SendError {
    let text = describe(&e);
    match &e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => match r.status_code.as_u16() {
            429 => SendError::RateLimited(DEFAULT_RATE_LIMIT_WAIT),
            400 | 403 | 404 | 413 => SendError::Permanent(text),
            _ => SendError::Temporary(text),
        },
        serenity::Error::Model(_) => SendError::Permanent(text),
        _ => SendError::Temporary(text),
    }
}
