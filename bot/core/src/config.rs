//! The configuration file (`wavelet.toml`): store, workflows folder, limits and the
//! directory of roles, agencies, people and groups. Parsing reports every mistake at once,
//! each with the file, line, column and key, and what to do about it. Secrets never come
//! from the file: only from the environment.

use crate::domain::{Account, RoomRef};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable that holds the store URL when it carries a password, and
/// that overrides `store.url` whenever it is set.
pub const DATABASE_URL_ENV: &str = "WAVELET_DATABASE_URL";

/// A checked configuration. Every reference in it (a person's agency and roles, a
/// group's members, agencies and rooms) has been resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub store: StoreConfig,
    pub workflows: WorkflowsConfig,
    pub limits: Limits,
    pub roles: Vec<Role>,
    pub agencies: Vec<Agency>,
    pub people: Vec<Person>,
    pub groups: Vec<Group>,
    /// Escalation policies, by id (`[[policy]]`).
    pub policies: Vec<Policy>,
    /// Workflows that start on their own (`[[schedule]]`).
    pub schedules: Vec<Schedule>,
    /// The ledger's outside witness (`[audit]`), when configured.
    pub witness: Option<WitnessConfig>,
    /// The Matrix connection (`[matrix]`), when Wavelet talks on Matrix.
    pub matrix: Option<MatrixConfig>,
    /// The Discord connection (`[discord]`), when Wavelet talks on Discord.
    pub discord: Option<DiscordConfig>,
}

/// How Wavelet connects to Discord. The bot token comes from the environment only
/// (`WAVELET_DISCORD_TOKEN`), never from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscordConfig {
    /// FOR TESTS ONLY: the base address of a local server speaking the Discord protocol
    /// (`http://127.0.0.1:PORT`). When set, REST calls and the gateway go there and
    /// serenity's rate limiter is switched off (it would otherwise send everything to
    /// discord.com); against real Discord, leave it out.
    pub api_base: Option<String>,
    /// Whether to ask for the privileged MESSAGE_CONTENT intent, which prefix commands
    /// (`!concern`) and typed answers in guild channels need. Default true; with false,
    /// guild channels take slash commands and buttons only (direct messages always work).
    pub message_content: bool,
}

impl Config {
    /// Whether any chat platform (Matrix, Discord) is configured; without one, `wavelet
    /// run` serves the console room.
    pub fn has_chat_platform(&self) -> bool {
        self.matrix.is_some() || self.discord.is_some()
    }
}

/// Where and as whom Wavelet connects to Matrix. Secrets come from the environment:
/// `WAVELET_MATRIX_PASSWORD` (first login) and `WAVELET_MATRIX_STORE_PASSPHRASE` (the
/// state and crypto stores' encryption).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixConfig {
    /// The homeserver's base URL, e.g. `https://matrix.example.org`.
    pub homeserver: String,
    /// The bot's user id, e.g. `@wavelet:example.org`.
    pub user: String,
    /// The session, sync position, state and crypto stores; resolved against the config
    /// file's folder. Default `matrix-state`.
    pub state_dir: PathBuf,
}

/// The id of Wavelet's own schedule that posts the ledger's head (see [`WitnessConfig`]);
/// a `[[schedule]]` may not take it.
pub const WITNESS_SCHEDULE: &str = "ledger-witness";

/// The ledger's outside witness (`[audit]`): when `cron` (UTC) says, Wavelet posts the
/// ledger's head (its last entry's number and hash) into `group`'s rooms. A copy of the
/// chain made to verify after rewriting it (which a database superuser can do) no longer
/// ends at, or passes through, a hash posted earlier: `wavelet audit verify --witness
/// ENTRY:HASH` checks the chain against what was posted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessConfig {
    pub group: String,
    pub cron: crate::schedule::Cron,
}

impl WitnessConfig {
    /// The schedule that fires the witness, kept in the store like a workflow's.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            id: WITNESS_SCHEDULE.to_string(),
            workflow: String::new(),
            cron: self.cron.clone(),
            group: self.group.clone(),
        }
    }
}

/// A workflow started by the clock: `cron` (UTC) says when, for `group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub id: String,
    /// The workflow's command (its `COMMAND`, or file name).
    pub workflow: String,
    pub cron: crate::schedule::Cron,
    pub group: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// `sqlite://PATH` (relative paths are relative to the config file's folder) or
    /// `postgres://…`. Default: `sqlite://wavelet.db` beside the config file.
    pub url: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowsConfig {
    /// Folder of `*.rhai` scripts, resolved against the config file's folder.
    pub dir: PathBuf,
    /// How often a running Wavelet looks for edited workflows. Default 2 s.
    pub reload_interval: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Longest answer accepted from a person, in characters. Default 4,000.
    pub max_answer_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_answer_chars: 4_000 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub id: String,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agency {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    pub id: String,
    pub name: String,
    pub agency: String,
    pub roles: Vec<String>,
    /// At most one per platform. Every person gets a console account named after their
    /// id unless the file gives another.
    pub accounts: Vec<Account>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub name: String,
    /// People named directly.
    pub members: Vec<String>,
    /// Agencies whose every person is a member.
    pub agencies: Vec<String>,
    /// The group's rooms, on any platform (never direct rooms).
    pub rooms: Vec<RoomRef>,
}

/// An escalation policy: notify level by level until someone acknowledges; run the levels
/// `repeat` more times; then the final level, which always comes when nobody has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub id: String,
    pub description: String,
    pub levels: Vec<Level>,
    /// How many more times the levels run before the final level. Default 0.
    pub repeat: u32,
    /// Notified when every level (and repeat) went unacknowledged. Every policy has one.
    pub final_notify: Vec<Notify>,
}

impl Policy {
    /// Levels notified in all, the final one included.
    pub fn total_levels(&self) -> usize {
        self.levels.len() * (self.repeat as usize + 1) + 1
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    pub notify: Vec<Notify>,
    /// How long to wait for an acknowledgement before the next level.
    pub wait: Duration,
}

/// Who a level notifies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Notify {
    /// `person:ID`: one person, privately.
    Person(String),
    /// `role:ID`: every member of the case's group holding the role, privately.
    Role(String),
    /// `group`: the case's group's rooms.
    GroupRooms,
    /// `room:PLATFORM:ID`: one shared room.
    Room(RoomRef),
}

impl Notify {
    /// Parses the text form used in `notify` lists and stored escalation plans.
    pub fn parse(text: &str) -> Option<Notify> {
        let v = text.trim();
        if v == "group" {
            return Some(Notify::GroupRooms);
        }
        if let Some(id) = v.strip_prefix("person:").filter(|id| !id.is_empty()) {
            return Some(Notify::Person(id.to_string()));
        }
        if let Some(id) = v.strip_prefix("role:").filter(|id| !id.is_empty()) {
            return Some(Notify::Role(id.to_string()));
        }
        match RoomRef::parse(v.strip_prefix("room:")?) {
            Some(room @ RoomRef::Shared { .. }) => Some(Notify::Room(room)),
            _ => None,
        }
    }
}

impl serde::Serialize for Notify {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Notify {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Notify::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not a notify target: {s}")))
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notify::Person(p) => write!(f, "person:{p}"),
            Notify::Role(r) => write!(f, "role:{r}"),
            Notify::GroupRooms => f.write_str("group"),
            Notify::Room(r) => write!(f, "room:{r}"),
        }
    }
}

/// One mistake in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column of the offending key or value.
    pub line: usize,
    pub column: usize,
    /// The dotted key, e.g. `person[2].agency` or `store.url`.
    pub key: String,
    /// What is wrong and what to do, in one or two sentences.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}: {}", self.file.display(), self.line, self.column, self.key, self.message)
    }
}

/// Every mistake found in one file, in the order they appear.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} mistake{} in the configuration:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Looks up an environment variable; the runtime passes `std::env::var`, tests a map.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Parses and checks `source`, the text of the file at `path`.
    pub fn parse(path: &Path, source: &str, env: EnvLookup<'_>) -> Result<Config, ConfigErrors> {
        parse::parse(path, source, env)
    }

    pub fn person(&self, id: &str) -> Option<&Person> {
        self.people.iter().find(|p| p.id == id)
    }

    pub fn policy(&self, id: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.id == id)
    }
}

mod parse;
pub use parse::resolve_sqlite_url;

#[cfg(test)]
mod tests;
