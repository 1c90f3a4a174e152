//! Snowflakes, timestamps and opaque tokens, made the way Discord makes them.
//!
//! <https://discord.com/developers/docs/reference#snowflakes>

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::Snowflake;

/// Discord's epoch, the first second of 2015, in ms since the Unix epoch.
pub(crate) const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// Hands out increasing snowflakes whose top bits are the current time, so that serenity's
/// `created_at()` on an id is close to the message's `timestamp`.
#[derive(Debug, Default)]
pub(crate) struct SnowflakeGenerator {
    last: u64,
}

impl SnowflakeGenerator {
    pub(crate) fn next(&mut self) -> Snowflake {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64;
        let from_time = now_ms.saturating_sub(DISCORD_EPOCH_MS) << 22;
        self.last = from_time.max(self.last + 1);
        self.last
    }
}

/// Now, as Discord writes timestamps: `2017-07-11T17:27:07.299000+00:00`.
pub(crate) fn timestamp_now() -> String {
    let text = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    match text.strip_suffix('Z') {
        Some(without_zone) => format!("{without_zone}+00:00"),
        None => text,
    }
}

/// `n` random hex characters, for session ids and interaction tokens (not secrets: this is a
/// test server).
pub(crate) fn random_hex(n: usize) -> String {
    let mut out = String::with_capacity(n + 16);
    while out.len() < n {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_usize(out.len());
        out.push_str(&format!("{:016x}", hasher.finish()));
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflakes_increase_and_carry_the_time() {
        let mut ids = SnowflakeGenerator::default();
        let first = ids.next();
        let second = ids.next();
        assert!(second > first);
        let ms = (first >> 22) + DISCORD_EPOCH_MS;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(now.abs_diff(ms) < 5_000, "{ms} vs {now}");
    }

    #[test]
    fn timestamps_use_an_explicit_utc_offset_like_discord() {
        let ts = timestamp_now();
        assert!(ts.ends_with("+00:00"), "{ts}");
        assert_eq!(ts.len(), "2017-07-11T17:27:07.299000+00:00".len(), "{ts}");
    }

    #[test]
    fn random_hex_has_the_length_asked_for() {
        let a = random_hex(32);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(32));
    }
}
