//! Routing (DESIGN.md, "The flow"): decides what an inbound message is — an answer to a
//! waiting run, a command, or nothing for the bot — from the directory, the workflows on
//! offer and what the store says is waiting. It decides; the runtime acts.

use crate::directory::Directory;
use crate::domain::{InboundEvent, RoomRef};
use crate::engine::WorkflowMeta;

/// What the store knows about the run waiting on this person in this room, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingRun {
    pub run_id: String,
}

/// A command a person typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Cancel,
    /// `ack C-42`: acknowledge a case (stops its escalation). The case id, if given.
    Ack(Option<String>),
    /// A workflow's command, e.g. `concern`.
    Workflow(String),
}

/// What to do with an inbound message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The sender is not in the directory and spoke to the bot: refuse, and record it.
    RefuseUnknown,
    /// Chatter not addressed to the bot.
    Ignore,
    /// An answer for the run waiting on this person in this room.
    Resume {
        run_id: String,
        person: String,
    },
    /// Start a workflow for this person, on behalf of this group.
    Start {
        person: String,
        command: String,
        group: String,
    },
    Help {
        person: String,
    },
    /// End the person's open dialog in this room.
    Cancel {
        person: String,
        run_id: Option<String>,
    },
    /// Acknowledge a case: stop its escalation, resume runs waiting for it.
    Ack {
        person: String,
        case_id: Option<String>,
    },
    /// The person may not start this workflow (their roles do not allow it).
    NotAllowed {
        person: String,
        command: String,
    },
    UnknownCommand {
        person: String,
        command: String,
    },
    /// The person is in no group this room or their membership can stand for.
    NoGroup {
        person: String,
    },
}

/// Parses a command: `!name` or `/name` anywhere; bare `help` and `cancel` in a direct
/// room; bare `ack C-42` anywhere. Arguments after the name are ignored, except the case
/// id of `ack`.
pub fn parse_command(text: &str, direct: bool) -> Option<Command> {
    let t = text.trim();
    if let Some(id) = bare_ack(t) {
        return Some(Command::Ack(Some(id)));
    }
    let name = if let Some(rest) = t.strip_prefix('!').or_else(|| t.strip_prefix('/')) {
        rest.split_whitespace().next()?.to_lowercase()
    } else if direct && (t.eq_ignore_ascii_case("help") || t.eq_ignore_ascii_case("cancel")) {
        t.to_lowercase()
    } else {
        return None;
    };
    Some(match name.as_str() {
        "help" => Command::Help,
        "cancel" => Command::Cancel,
        "ack" => Command::Ack(t.split_whitespace().nth(1).map(|w| w.to_ascii_uppercase())),
        _ => Command::Workflow(name),
    })
}

/// `ack C-42` on its own (any case): specific enough to be a command wherever it is said,
/// even while a question waits.
fn bare_ack(t: &str) -> Option<String> {
    let mut words = t.split_whitespace();
    let (first, id, rest) = (words.next()?, words.next()?, words.next());
    let digits = id.get(2..)?;
    let is_case = id.len() > 2
        && id[..2].eq_ignore_ascii_case("C-")
        && digits.len() <= 18
        && digits.chars().all(|c| c.is_ascii_digit());
    (first.eq_ignore_ascii_case("ack") && is_case && rest.is_none()).then(|| format!("C-{digits}"))
}

/// Decides the route of one message. `waiting` is the run waiting on the sender in this
/// room (the store's answer); `workflows` are those on offer now.
pub fn route<'a>(
    dir: &Directory,
    event: &InboundEvent,
    waiting: Option<&WaitingRun>,
    workflows: impl IntoIterator<Item = &'a WorkflowMeta>,
) -> Route {
    let direct = event.room.is_direct();
    let command = parse_command(&event.text, direct);
    let Some(person) = dir.person_for(&event.sender) else {
        // Refuse whoever addresses the bot; leave other people's chatter alone.
        return if direct || command.is_some() { Route::RefuseUnknown } else { Route::Ignore };
    };
    let pid = person.id.clone();
    if let Some(w) = waiting {
        match &command {
            Some(Command::Cancel) => return Route::Cancel { person: pid, run_id: Some(w.run_id.clone()) },
            Some(Command::Ack(_)) => {}
            // A bare `help` is an answer; `!help` and `!concern` are commands.
            Some(Command::Help | Command::Workflow(_)) if !event.text.trim().eq_ignore_ascii_case("help") => {}
            _ => return Route::Resume { run_id: w.run_id.clone(), person: pid },
        }
    }
    match command {
        None => Route::Ignore,
        Some(Command::Help) => Route::Help { person: pid },
        Some(Command::Cancel) => Route::Cancel { person: pid, run_id: None },
        Some(Command::Ack(case_id)) => Route::Ack { person: pid, case_id },
        Some(Command::Workflow(name)) => {
            let Some(meta) = workflows.into_iter().find(|m| m.command == name) else {
                return Route::UnknownCommand { person: pid, command: name };
            };
            if !meta.allowed_roles.iter().any(|r| person.roles.contains(r)) {
                return Route::NotAllowed { person: pid, command: name };
            }
            match group_for(dir, &event.room, &pid) {
                Some(group) => Route::Start { person: pid, command: name, group },
                None => Route::NoGroup { person: pid },
            }
        }
    }
}

/// The group a run started here acts for: the group owning a shared room (when the person
/// is a member), or in a direct room the person's first group.
pub fn group_for(dir: &Directory, room: &RoomRef, person_id: &str) -> Option<String> {
    let person = dir.person(person_id)?;
    match room {
        RoomRef::Shared { .. } => dir.group_for_room(room).filter(|g| dir.is_member(g, person)).map(|g| g.id.clone()),
        RoomRef::Direct { .. } => dir.groups_of(person).next().map(|g| g.id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::domain::{Account, Millis, Platform};
    use std::path::Path;

    const CONFIG: &str = r#"
[[role]]
id = "practitioner"
[[role]]
id = "reviewer"
[[agency]]
id = "school"
name = "School"
[[person]]
id = "alice"
name = "Alice"
agency = "school"
roles = ["practitioner"]
[[person]]
id = "rey"
name = "Rey"
agency = "school"
roles = ["reviewer"]
[[group]]
id = "north"
name = "North"
members = ["alice", "rey"]
rooms = ["console:north"]
"#;

    fn dir() -> Directory {
        Directory::new(Config::parse(Path::new("t.toml"), CONFIG, &|_| None).expect("valid config"))
    }

    fn concern() -> WorkflowMeta {
        WorkflowMeta {
            command: "concern".into(),
            description: String::new(),
            allowed_roles: vec!["practitioner".into()],
        }
    }

    fn event(sender: &str, room: &str, text: &str) -> InboundEvent {
        InboundEvent {
            event_id: "e1".into(),
            room: RoomRef::parse(room).unwrap(),
            sender: Account { platform: Platform::Console, id: sender.into() },
            text: text.into(),
            received_at: Millis(0),
            on_message: None,
        }
    }

    fn check(sender: &str, room: &str, text: &str, waiting: bool, expected: Route) {
        let w = WaitingRun { run_id: "R-1".into() };
        let meta = [concern()];
        let got = route(&dir(), &event(sender, room, text), waiting.then_some(&w), meta.iter());
        assert_eq!(got, expected, "{sender} in {room}: {text:?} (waiting: {waiting})");
    }

    #[test]
    fn messages_route_by_sender_room_and_waiting_run() {
        let alice = || "alice".to_string();
        check(
            "alice",
            "console:north",
            "!concern",
            false,
            Route::Start { person: alice(), command: "concern".into(), group: "north".into() },
        );
        check(
            "alice",
            "dm:console:alice",
            "/concern now",
            false,
            Route::Start { person: alice(), command: "concern".into(), group: "north".into() },
        );
        check("alice", "console:north", "just chatting", false, Route::Ignore);
        check("alice", "dm:console:alice", "AB 2015", true, Route::Resume { run_id: "R-1".into(), person: alice() });
        // Bare words that look like commands are answers while a question waits…
        check("alice", "dm:console:alice", "help", true, Route::Resume { run_id: "R-1".into(), person: alice() });
        // …except cancel, which always ends the dialog.
        check(
            "alice",
            "dm:console:alice",
            "cancel",
            true,
            Route::Cancel { person: alice(), run_id: Some("R-1".into()) },
        );
        check("alice", "dm:console:alice", "!help", true, Route::Help { person: alice() });
        check("alice", "dm:console:alice", "help", false, Route::Help { person: alice() });
        // A command while a question waits is a command (the runtime refuses a second dialog).
        check(
            "alice",
            "dm:console:alice",
            "!concern",
            true,
            Route::Start { person: alice(), command: "concern".into(), group: "north".into() },
        );
        check("alice", "console:north", "help", false, Route::Ignore);
        check(
            "alice",
            "console:north",
            "!nonsense",
            false,
            Route::UnknownCommand { person: alice(), command: "nonsense".into() },
        );
        check(
            "rey",
            "console:north",
            "!concern",
            false,
            Route::NotAllowed { person: "rey".into(), command: "concern".into() },
        );
        check("mallory", "console:north", "!concern", false, Route::RefuseUnknown);
        check("mallory", "dm:console:mallory", "hello", false, Route::RefuseUnknown);
        check("mallory", "console:north", "hello", false, Route::Ignore);
        check("alice", "console:elsewhere", "!concern", false, Route::NoGroup { person: alice() });
        // Acknowledgements: bare or as a command, in any room, even while a question waits.
        let ack = |id: &str| Route::Ack { person: alice(), case_id: Some(id.into()) };
        check("alice", "console:north", "ack C-42", false, ack("C-42"));
        check("alice", "dm:console:alice", "Ack c-7", true, ack("C-7"));
        check("alice", "dm:console:alice", "!ack C-7", true, ack("C-7"));
        check("alice", "console:north", "!ack", false, Route::Ack { person: alice(), case_id: None });
        check("alice", "console:north", "ack it please", false, Route::Ignore);
        check(
            "alice",
            "dm:console:alice",
            "ack C-7 and more",
            true,
            Route::Resume { run_id: "R-1".into(), person: alice() },
        );
        check("mallory", "console:north", "ack C-1", false, Route::RefuseUnknown);
    }

    #[test]
    fn hostile_text_parses_without_panics() {
        for text in ["", "!", "/", "! ", "\0!concern", "!\u{202E}concern", &"!x".repeat(500_000)] {
            let _ = parse_command(text, true);
        }
        assert_eq!(parse_command("!CONCERN", false), Some(Command::Workflow("concern".into())));
    }
}
