//! The words Wavelet uses (DESIGN.md, "Words") as plain data: people, rooms, events,
//! outbound messages. Platform types never reach past the adapters; these do.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds since the Unix epoch, UTC. The only notion of time the core knows; the
/// runtime's clock produces it, replay records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub i64);

impl Millis {
    pub fn plus(self, d: std::time::Duration) -> Millis {
        Millis(self.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// RFC 3339 with milliseconds, e.g. `2026-11-25T10:00:00.000Z`.
    /// Times past the year 9999 (which RFC 3339 cannot write) are written as its end.
    pub fn rfc3339(self) -> String {
        const MAX: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.0.clamp(0, MAX) as u64);
        humantime::format_rfc3339_millis(t).to_string()
    }

    /// For people: `2026-11-25 10:05 UTC`.
    pub fn short(self) -> String {
        let t = self.rfc3339();
        format!("{} {} UTC", &t[..10], &t[11..16])
    }

    pub fn parse_rfc3339(s: &str) -> Option<Millis> {
        let t = humantime::parse_rfc3339_weak(s).ok()?;
        let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        i64::try_from(d.as_millis()).ok().map(Millis)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

/// A chat platform. `Console` is the local terminal room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Console,
    Matrix,
    Discord,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Console, Platform::Matrix, Platform::Discord];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Console => "console",
            Platform::Matrix => "matrix",
            Platform::Discord => "discord",
        }
    }

    pub fn parse(s: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a message is said: a shared room on a platform, or the direct conversation
/// between the bot and one account. Its text form (`console:north`, `dm:console:alice`,
/// `matrix:!abc`) is what the store keeps.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoomRef {
    /// A shared room: a Matrix room id, a Discord channel id, a console room name.
    Shared { platform: Platform, id: String },
    /// The private conversation with one account on a platform.
    Direct { platform: Platform, account: String },
}

impl RoomRef {
    pub fn platform(&self) -> Platform {
        match self {
            RoomRef::Shared { platform, .. } | RoomRef::Direct { platform, .. } => *platform,
        }
    }

    pub fn is_direct(&self) -> bool {
        matches!(self, RoomRef::Direct { .. })
    }

    /// Parses the text form. Shared rooms are `platform:id`; direct ones
    /// `dm:platform:account`.
    pub fn parse(s: &str) -> Option<RoomRef> {
        if let Some(rest) = s.strip_prefix("dm:") {
            let (p, account) = rest.split_once(':')?;
            let platform = Platform::parse(p)?;
            if account.is_empty() {
                return None;
            }
            return Some(RoomRef::Direct { platform, account: account.to_string() });
        }
        let (p, id) = s.split_once(':')?;
        let platform = Platform::parse(p)?;
        if id.is_empty() {
            return None;
        }
        Some(RoomRef::Shared { platform, id: id.to_string() })
    }
}

impl fmt::Display for RoomRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoomRef::Shared { platform, id } => write!(f, "{platform}:{id}"),
            RoomRef::Direct { platform, account } => write!(f, "dm:{platform}:{account}"),
        }
    }
}

impl Serialize for RoomRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RoomRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RoomRef::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not a room: {s}")))
    }
}

/// One account on one platform: the identity an adapter reports for a sender.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Account {
    pub platform: Platform,
    pub id: String,
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.platform, self.id)
    }
}

/// Something said to the bot, as an adapter hands it over: already converted from the
/// platform's own types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundEvent {
    /// The platform's own id for this event (Matrix event id, Discord message id, a
    /// console counter). The inbox records each `(platform, event_id)` once.
    pub event_id: String,
    pub room: RoomRef,
    pub sender: Account,
    pub text: String,
    /// When it was said: the platform's own timestamp when it has one (a message that waited
    /// while Wavelet was down keeps the time it was typed), never later than Wavelet's clock.
    pub received_at: Millis,
    /// For a click on a button of one of the bot's messages: that message's
    /// [`message_tag`], so the click answers only the question it was on.
    pub on_message: Option<String>,
}

/// A short tag for the bot's message with this idempotency key, which a platform can carry
/// on the message's buttons and hand back with a click.
pub fn message_tag(idempotency_key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(idempotency_key.as_bytes())[..6])
}

/// A message the bot must deliver, as it sits in the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// Stable across retries: derived from (run, step, part). Becomes the Matrix
    /// transaction id or the Discord nonce.
    pub idempotency_key: String,
    pub room: RoomRef,
    /// The person it is addressed to, when it is a direct message.
    pub person: Option<String>,
    pub body: MessageBody,
}

/// What a message says, in a form each adapter can render its own way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageBody {
    /// Plain text written by the bot or a script.
    Text { text: String },
    /// A question with a closed list of answers.
    Choice { prompt: String, options: Vec<String> },
    /// An escalation notice: a platform that can (Matrix reactions, Discord buttons)
    /// offers a one-tap acknowledgement, which its adapter hands in as `ack <case_id>`
    /// from the person who tapped.
    Escalation { text: String, case_id: String },
}

impl MessageBody {
    /// The plain-text rendering every platform can show (the console's, and Matrix's
    /// `body`).
    pub fn plain(&self) -> String {
        match self {
            MessageBody::Text { text } | MessageBody::Escalation { text, .. } => text.clone(),
            MessageBody::Choice { prompt, options } => {
                let mut s = prompt.clone();
                for (i, o) in options.iter().enumerate() {
                    s.push_str(&format!("\n{}. {}", i + 1, o));
                }
                s
            }
        }
    }
}

/// Roles a person may hold. Configurations may define more; these four are the ones
/// Wavelet itself gives meaning to.
pub mod roles {
    pub const PRACTITIONER: &str = "practitioner";
    pub const LEAD: &str = "lead";
    pub const COORDINATOR: &str = "coordinator";
    pub const REVIEWER: &str = "reviewer";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_refs_round_trip_through_text() {
        for s in ["console:north", "dm:console:alice", "matrix:!abc:example.org", "discord:123"] {
            let r = RoomRef::parse(s).unwrap();
            assert_eq!(r.to_string(), s);
        }
        assert_eq!(RoomRef::parse("dm:console:"), None);
        assert_eq!(RoomRef::parse("irc:x"), None);
        assert_eq!(RoomRef::parse("console"), None);
    }

    #[test]
    fn millis_format_as_rfc3339() {
        assert_eq!(Millis(0).rfc3339(), "1970-01-01T00:00:00.000Z");
        let m = Millis::parse_rfc3339("2026-11-25T10:00:00Z").unwrap();
        assert_eq!(m.rfc3339(), "2026-11-25T10:00:00.000Z");
        assert_eq!(Millis(i64::MAX).rfc3339(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn choices_render_as_a_numbered_list() {
        let b = MessageBody::Choice { prompt: "Risk?".into(), options: vec!["no".into(), "yes".into()] };
        assert_eq!(b.plain(), "Risk?\n1. no\n2. yes");
    }
}
