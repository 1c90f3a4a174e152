//! Direct rooms: the room Wavelet talks privately to a person in, per platform and
//! account, as the chat adapter that made or found it recorded it.

use crate::{Result, Store};
use wavelet_core::{Millis, Platform};

impl Store {
    /// The direct room recorded for `account` on `platform`, if any.
    pub async fn direct_room(&self, platform: Platform, account: &str) -> Result<Option<String>> {
        Ok(on_pool!(self, p => sqlx::query_scalar("SELECT room FROM direct_rooms WHERE platform = $1 AND account = $2")
            .bind(platform.as_str())
            .bind(account)
            .fetch_optional(p)
            .await)?)
    }

    /// Records `room` as the direct room for `account` on `platform` (replacing the one
    /// recorded before, if any), committed when this returns.
    pub async fn record_direct_room(&self, platform: Platform, account: &str, room: &str, at: Millis) -> Result<()> {
        on_pool!(self, p => sqlx::query(
            "INSERT INTO direct_rooms (platform, account, room, recorded_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (platform, account) DO UPDATE SET room = excluded.room, recorded_at = excluded.recorded_at",
        )
        .bind(platform.as_str())
        .bind(account)
        .bind(room)
        .bind(at.0)
        .execute(p)
        .await
        .map(|_| ()))?;
        Ok(())
    }
}
