//! The console room: a terminal where you speak as any person in the directory and see
//! what the bot says to whom and where. It reads lines from stdin, so a file of lines can
//! be piped in to demo or test a workflow. It is also the console platform's adapter.

use crate::chat::ChatContext;
use crate::delivery::{Adapters, ChatAdapter, SendFuture};
use std::io::Write;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use wavelet_core::{Account, Directory, InboundEvent, OutboundMessage, Platform, RoomRef, text};

/// Prints what the bot says, one block per message.
pub struct ConsoleAdapter {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    dir: Arc<Directory>,
    /// Print each message's idempotency key before it (`--show-keys`): what a chat
    /// platform would dedupe a resend by, for tests and debugging.
    show_keys: bool,
}

impl ConsoleAdapter {
    pub fn new(out: Box<dyn Write + Send>, dir: Arc<Directory>) -> ConsoleAdapter {
        ConsoleAdapter { out: Arc::new(Mutex::new(out)), dir, show_keys: false }
    }

    pub fn showing_keys(mut self, show: bool) -> ConsoleAdapter {
        self.show_keys = show;
        self
    }

    fn print(&self, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

impl ChatAdapter for ConsoleAdapter {
    fn platform(&self) -> Platform {
        Platform::Console
    }

    fn send<'a>(&'a self, m: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(async move {
            let body = text::for_display(&m.body.plain()).replace('\n', "\n    ");
            let head = match &m.room {
                RoomRef::Direct { platform, account } => {
                    let who = self
                        .dir
                        .person_for(&Account { platform: *platform, id: account.clone() })
                        .map_or_else(|| account.clone(), |p| p.id.clone());
                    format!("  [to {who}] wavelet:")
                }
                RoomRef::Shared { id, .. } => format!("  [in {id}] wavelet:"),
            };
            if self.show_keys {
                self.print(&format!("{{{}}}{head} {body}", m.idempotency_key));
            } else {
                self.print(&format!("{head} {body}"));
            }
            Ok(())
        })
    }
}

/// Where the person at the keyboard is speaking.
struct Seat {
    person: String,
    /// `None`: privately to the bot.
    room: Option<String>,
}

fn console_account(dir: &Directory, person: &str) -> String {
    dir.person(person)
        .and_then(|p| p.accounts.iter().find(|a| a.platform == Platform::Console))
        .map_or_else(|| person.to_string(), |a| a.id.clone())
}

const HELP: &str = "Type to speak. Commands: `:as PERSON` speak as someone else, `:in ROOM` speak in a room, `:dm` speak privately to the bot, `:wait 15s` let time pass, `:who` the directory, `:rooms` the rooms, `:quit`.";

/// How the console room reads its input.
#[derive(Clone, Debug, Default)]
pub struct ConsoleOptions {
    /// Who speaks first (a person id); default the first person in the directory.
    pub start_as: Option<String>,
    /// Print each line read (piped input), so the output reads as a conversation.
    pub echo: bool,
    /// Names the input: its lines get the event ids `NAME-LINE`, so feeding the same
    /// input again (after a crash) skips the lines already handled, the way a chat
    /// platform redelivers what a bot had not acknowledged. Default: ids unique per run.
    pub input_id: Option<String>,
}

/// Runs the console room until the input ends or `:quit`: each line is handed in through
/// `ctx` and what it queued for `adapters` is printed before the next line is read.
pub async fn run(
    ctx: &ChatContext,
    adapters: &Adapters,
    console: Arc<ConsoleAdapter>,
    mut input: impl AsyncBufRead + Unpin,
    options: ConsoleOptions,
) -> anyhow::Result<()> {
    let ConsoleOptions { start_as, echo, input_id } = options;
    let dir = ctx.directory();
    let first = start_as.or_else(|| dir.people().first().map(|p| p.id.clone())).unwrap_or_default();
    if dir.person(&first).is_none() {
        anyhow::bail!("`{first}` is not in the directory; `--as` takes a person id from the configuration");
    }
    let first_room = dir.person(&first).and_then(|p| dir.groups_of(p).next()).and_then(|g| {
        g.rooms.iter().find_map(|r| match r {
            RoomRef::Shared { platform: Platform::Console, id } => Some(id.clone()),
            _ => None,
        })
    });
    let mut seat = Seat { person: first, room: first_room };
    console.print(&format!("Wavelet console. {HELP}"));
    let started = ctx.now().0;
    let mut n = 0u64;
    let mut line_number = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line).await? == 0 {
            break;
        }
        line_number += 1;
        let said = line.trim_end_matches(['\n', '\r']);
        if said.trim().is_empty() {
            continue;
        }
        let place = seat.room.clone().map_or_else(|| "to wavelet".to_string(), |r| format!("in {r}"));
        if echo {
            console.print(&format!("{} {place}> {}", seat.person, text::for_display(said)));
        }
        if let Some(cmd) = said.trim().strip_prefix(':') {
            let mut words = cmd.split_whitespace();
            match (words.next(), words.next()) {
                (Some("quit"), _) => break,
                (Some("as"), Some(p)) if dir.person(p).is_some() => seat.person = p.to_string(),
                (Some("as"), Some(p)) => {
                    console.print(&format!("  (nobody called `{p}` in the directory; `:who` lists people)"))
                }
                (Some("in"), Some(r)) => seat.room = Some(r.to_string()),
                (Some("dm"), _) => seat.room = None,
                (Some("wait"), Some(d)) => match wavelet_core::engine::parse_duration(d) {
                    Ok(d) => {
                        tokio::time::sleep(d).await;
                        if let Err(e) = ctx.deliver_now(adapters).await {
                            tracing::warn!(error = %e, "delivery failed; will retry");
                        }
                    }
                    Err(_) => console.print(&format!("  (`{d}` is not a duration; write e.g. `:wait 15s`)")),
                },
                (Some("who"), _) => {
                    for p in dir.people() {
                        console.print(&format!("  {} — {} ({}), {}", p.id, p.name, p.agency, p.roles.join(", ")));
                    }
                }
                (Some("rooms"), _) => {
                    for g in dir.groups() {
                        let rooms: Vec<String> = g.rooms.iter().map(|r| r.to_string()).collect();
                        console.print(&format!("  {} — {}: {}", g.id, g.name, rooms.join(", ")));
                    }
                }
                _ => console.print(&format!("  {HELP}")),
            }
            continue;
        }
        n += 1;
        let account = console_account(dir, &seat.person);
        let room = match &seat.room {
            Some(r) => RoomRef::Shared { platform: Platform::Console, id: r.clone() },
            None => RoomRef::Direct { platform: Platform::Console, account: account.clone() },
        };
        let event_id = match &input_id {
            Some(name) => format!("{name}-{line_number}"),
            None => format!("console-{started}-{n}"),
        };
        let event = InboundEvent {
            event_id,
            room,
            sender: Account { platform: Platform::Console, id: account },
            text: said.to_string(),
            received_at: ctx.now(),
            on_message: None,
        };
        // Through the ingest, so a store that goes away holds the line until it is back.
        if let Err(e) = ctx.submit(event).await {
            console.print(&format!("  (not taken: {e}; please say it again)"));
            continue;
        }
        if let Err(e) = ctx.deliver_now(adapters).await {
            tracing::warn!(error = %e, "delivery failed; will retry");
        }
    }
    Ok(())
}
