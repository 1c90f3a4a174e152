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
}

mod parse;
pub use parse::resolve_sqlite_url;

#[cfg(test)]
mod tests;
