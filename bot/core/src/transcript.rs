//! Transcripts: coordinators' offline tests of a workflow, in a form a non-programmer can
//! read and write. This module parses them and checks what the bot did against them; the
//! runtime plays them (`wavelet test`).
//!
//! ```text
//! # A teacher raises a concern; the group sees a minimal summary.
//! config: ../../examples/wavelet.toml
//! start: 2026-11-25T09:00:00Z
//!
//! alice in north: !concern              <- alice speaks in the room `north`
//! bot to alice: Child's initials ...    <- the bot writes to alice privately (`...` = anything)
//! alice: AB 2015                        <- alice answers in her private room with the bot
//! bot in north: New neglect concern C-1, risk: no
//! shared with north: New neglect concern C-1, risk: no
//! not shared with north: ...            <- a recorded decision not to share, and its reason
//! after 15m                             <- the clock moves on; due timers fire
//! ```
//!
//! A line starting with two spaces continues the message above it on a new line. Every
//! message the bot sends must be expected, in order, before the next thing anyone says.

use crate::domain::Millis;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transcript {
    pub path: PathBuf,
    /// The configuration to run with, relative to the transcript's folder.
    pub config: Option<PathBuf>,
    /// Where the simulated clock starts. Default 2026-01-05T09:00:00Z (a Monday).
    pub start: Millis,
    pub steps: Vec<Step>,
}

pub const DEFAULT_START: &str = "2026-01-05T09:00:00Z";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1-based line in the transcript file.
    pub line: usize,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A person says something: in a room, or (no room) privately to the bot.
    Say {
        person: String,
        room: Option<String>,
        text: String,
    },
    Expect(Expectation),
    /// Move the simulated clock on.
    After(Duration),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expectation {
    Message {
        to: Target,
        text: String,
    },
    Share {
        group: String,
        text: String,
    },
    /// A recorded decision not to share with `group`, for `reason`.
    NotShared {
        group: String,
        reason: String,
    },
}

/// Where a bot message goes: privately to a person, or into a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Person(String),
    Room(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Person(p) => write!(f, "bot to {p}"),
            Target::Room(r) => write!(f, "bot in {r}"),
        }
    }
}

/// Something the bot did, as the runner saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Message { to: Target, text: String },
    Share { group: String, text: String },
    NotShared { group: String, reason: String },
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observed::Message { to, text } => write!(f, "{to}: {}", indent(text)),
            Observed::Share { group, text } => write!(f, "shared with {group}: {}", indent(text)),
            Observed::NotShared { group, reason } => write!(f, "not shared with {group}: {}", indent(reason)),
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expectation::Message { to, text } => write!(f, "{to}: {}", indent(text)),
            Expectation::Share { group, text } => write!(f, "shared with {group}: {}", indent(text)),
            Expectation::NotShared { group, reason } => write!(f, "not shared with {group}: {}", indent(reason)),
        }
    }
}

fn indent(text: &str) -> String {
    text.replace('\n', "\n  ")
}

/// A line the parser could not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || c == '!' || c == ':')
}

impl Transcript {
    pub fn parse(path: &Path, source: &str) -> Result<Transcript, ParseError> {
        let err = |line: usize, message: String| ParseError { file: path.display().to_string(), line, message };
        let mut t = Transcript {
            path: path.to_path_buf(),
            config: None,
            start: Millis::parse_rfc3339(DEFAULT_START).unwrap_or(Millis(0)),
            steps: Vec::new(),
        };
        for (i, raw) in source.lines().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
                continue;
            }
            if raw.starts_with("  ") || raw.starts_with('\t') {
                let more = raw.strip_prefix("  ").unwrap_or_else(|| raw.trim_start_matches('\t'));
                match t.steps.last_mut().map(|s| &mut s.action) {
                    Some(Action::Say { text, .. })
                    | Some(Action::Expect(Expectation::Message { text, .. }))
                    | Some(Action::Expect(Expectation::Share { text, .. }))
                    | Some(Action::Expect(Expectation::NotShared { reason: text, .. })) => {
                        text.push('\n');
                        text.push_str(more);
                    }
                    _ => {
                        return Err(err(
                            line,
                            "an indented line continues a message, but there is none above it".into(),
                        ));
                    }
                }
                continue;
            }
            let l = raw.trim_end();
            if let Some(rest) = l.strip_prefix("config:") {
                t.config = Some(PathBuf::from(rest.trim()));
                continue;
            }
            if let Some(rest) = l.strip_prefix("start:") {
                t.start = Millis::parse_rfc3339(rest.trim()).ok_or_else(|| {
                    err(line, format!("`{}` is not a time; write e.g. 2026-01-05T09:00:00Z", rest.trim()))
                })?;
                continue;
            }
            if let Some(rest) = l.strip_prefix("after ").or_else(|| l.strip_prefix("wait ")) {
                let d = humantime::parse_duration(rest.trim()).map_err(|e| {
                    err(line, format!("`{}` is not a duration ({e}); write e.g. 15m or 2h", rest.trim()))
                })?;
                t.steps.push(Step { line, action: Action::After(d) });
                continue;
            }
            let Some((head, text)) = l.split_once(':') else {
                return Err(err(
                    line,
                    "expected `person: text`, `person in room: text`, `bot to person: text`, `bot in room: text`, `shared with group: text`, `not shared with group: reason` or `after 15m`".into(),
                ));
            };
            let text = text.strip_prefix(' ').unwrap_or(text).to_string();
            let words: Vec<&str> = head.split_whitespace().collect();
            let action = match words.as_slice() {
                ["bot", "to", p] if is_name(p) => {
                    Action::Expect(Expectation::Message { to: Target::Person(p.to_string()), text })
                }
                ["bot", "in", r] if is_name(r) => {
                    Action::Expect(Expectation::Message { to: Target::Room(r.to_string()), text })
                }
                ["shared", "with", g] if is_name(g) => {
                    Action::Expect(Expectation::Share { group: g.to_string(), text })
                }
                ["not", "shared", "with", g] if is_name(g) => {
                    Action::Expect(Expectation::NotShared { group: g.to_string(), reason: text })
                }
                [p, "in", r] if is_name(p) && is_name(r) && *p != "bot" => {
                    Action::Say { person: p.to_string(), room: Some(r.to_string()), text }
                }
                [p] if is_name(p) && *p != "bot" => Action::Say { person: p.to_string(), room: None, text },
                _ => return Err(err(line, format!("I can't read `{head}:`; see the examples in workflows/tests"))),
            };
            t.steps.push(Step { line, action });
        }
        Ok(t)
    }
}

/// Whether `text` fits `pattern`, where `...` in the pattern stands for any text.
pub fn fits(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Why a transcript failed, with enough around it to see what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub line: usize,
    pub expected: Option<String>,
    pub actual: Vec<String>,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "line {}: {}", self.line, self.message)?;
        if let Some(e) = &self.expected {
            writeln!(f, "  - expected  {e}")?;
        }
        if self.actual.is_empty() {
            writeln!(f, "  + actual    (nothing)")?;
        }
        for a in &self.actual {
            writeln!(f, "  + actual    {a}")?;
        }
        Ok(())
    }
}

/// Matches what the bot did against what the transcript expects, in order.
#[derive(Debug, Default)]
pub struct Checker {
    messages: std::collections::VecDeque<Observed>,
    shares: std::collections::VecDeque<Observed>,
}

impl Checker {
    pub fn observe(&mut self, o: Observed) {
        match o {
            Observed::Message { .. } => self.messages.push_back(o),
            // Decisions to share and not to share, in the order they were made.
            Observed::Share { .. } | Observed::NotShared { .. } => self.shares.push_back(o),
        }
    }

    pub fn expect(&mut self, e: &Expectation, line: usize) -> Result<(), Failure> {
        let queue = match e {
            Expectation::Message { .. } => &mut self.messages,
            Expectation::Share { .. } | Expectation::NotShared { .. } => &mut self.shares,
        };
        let Some(next) = queue.front() else {
            return Err(Failure {
                line,
                expected: Some(e.to_string()),
                actual: vec![],
                message: "the bot did not do this".into(),
            });
        };
        let ok = match (e, next) {
            (Expectation::Message { to, text }, Observed::Message { to: t2, text: x2 }) => to == t2 && fits(text, x2),
            (Expectation::Share { group, text }, Observed::Share { group: g2, text: x2 }) => {
                group == g2 && fits(text, x2)
            }
            (Expectation::NotShared { group, reason }, Observed::NotShared { group: g2, reason: r2 }) => {
                group == g2 && fits(reason, r2)
            }
            _ => false,
        };
        if !ok {
            return Err(Failure {
                line,
                expected: Some(e.to_string()),
                actual: queue.iter().map(|o| o.to_string()).collect(),
                message: "the bot did something else".into(),
            });
        }
        queue.pop_front();
        Ok(())
    }

    /// Everything observed must have been expected by now (before the next input, and at
    /// the end).
    pub fn settle(&mut self, line: usize) -> Result<(), Failure> {
        if self.messages.is_empty() && self.shares.is_empty() {
            return Ok(());
        }
        let actual = self.messages.iter().chain(self.shares.iter()).map(|o| o.to_string()).collect();
        Err(Failure {
            line,
            expected: None,
            actual,
            message: "the bot did more than the transcript expects here".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_not_to_share_is_read_with_its_reason_over_several_lines() {
        let t = Transcript::parse(Path::new("t.transcript"), "not shared with north: no risk\n  of harm\n").unwrap();
        assert_eq!(
            t.steps[0].action,
            Action::Expect(Expectation::NotShared { group: "north".into(), reason: "no risk\nof harm".into() })
        );
        assert!(Transcript::parse(Path::new("t.transcript"), "not shared with north\n").is_err());
    }

    #[test]
    fn transcripts_parse_into_steps() {
        let src = "# comment\nconfig: ../x.toml\nstart: 2026-11-25T09:00:00Z\n\nalice in north: !concern\nbot to alice: Category?\n  1. neglect\nalice: 1\nafter 15m\nshared with north: New ...\nbot in north: hi";
        let t = Transcript::parse(Path::new("t.transcript"), src).unwrap();
        assert_eq!(t.config, Some(PathBuf::from("../x.toml")));
        assert_eq!(t.start, Millis::parse_rfc3339("2026-11-25T09:00:00Z").unwrap());
        let actions: Vec<_> = t.steps.iter().map(|s| (s.line, s.action.clone())).collect();
        assert_eq!(
            actions,
            vec![
                (5, Action::Say { person: "alice".into(), room: Some("north".into()), text: "!concern".into() }),
                (
                    6,
                    Action::Expect(Expectation::Message {
                        to: Target::Person("alice".into()),
                        text: "Category?\n1. neglect".into()
                    })
                ),
                (8, Action::Say { person: "alice".into(), room: None, text: "1".into() }),
                (9, Action::After(Duration::from_secs(900))),
                (10, Action::Expect(Expectation::Share { group: "north".into(), text: "New ...".into() })),
                (11, Action::Expect(Expectation::Message { to: Target::Room("north".into()), text: "hi".into() })),
            ]
        );
    }

    #[test]
    fn unreadable_lines_are_named() {
        for (src, needle) in [
            ("hello there", "expected `person: text`"),
            ("bot says: hi", "can't read `bot says:`"),
            ("  stray", "continues a message"),
            ("after soon", "not a duration"),
            ("start: yesterday", "not a time"),
        ] {
            let e = Transcript::parse(Path::new("t"), src).unwrap_err();
            assert!(e.message.contains(needle), "{src:?}: {}", e.message);
            assert_eq!(e.line, 1);
        }
    }

    #[test]
    fn ellipsis_matches_any_text() {
        for (p, t, ok) in [
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("a...", "abc", true),
            ("...c", "abc", true),
            ("a...c", "abc", true),
            ("a...c", "ab", false),
            ("New ... concern C-1...", "New neglect concern C-1, risk: no", true),
            ("x...y...z", "xyz", true),
            ("x...y...z", "xzy", false),
        ] {
            assert_eq!(fits(p, t), ok, "{p:?} ~ {t:?}");
        }
    }

    #[test]
    fn checker_reports_the_unexpected_and_the_missing() {
        let mut c = Checker::default();
        c.observe(Observed::Message { to: Target::Person("alice".into()), text: "Q1".into() });
        let e =
            c.expect(&Expectation::Message { to: Target::Person("alice".into()), text: "Q2".into() }, 3).unwrap_err();
        assert_eq!(e.actual, ["bot to alice: Q1"]);
        c.expect(&Expectation::Message { to: Target::Person("alice".into()), text: "Q1".into() }, 4).unwrap();
        let e = c.expect(&Expectation::Share { group: "north".into(), text: "x".into() }, 5).unwrap_err();
        assert!(e.message.contains("did not"));
        c.observe(Observed::Share { group: "north".into(), text: "x".into() });
        assert!(c.settle(6).is_err());
    }
}
