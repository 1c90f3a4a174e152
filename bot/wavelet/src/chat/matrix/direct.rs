//! Direct rooms: the room Wavelet talks privately to a person in. Remembered, recorded in
//! Wavelet's store before anything is sent there, and marked with a state event
//! ([`DIRECT_MARK`]) when Wavelet makes it, so a crash between making a room and recording
//! it never leads to a second room: the next start finds the first by its mark, once its
//! first sync is in.

use super::{MatrixAdapter, send_error};
use crate::delivery::SendError;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::{AnyInitialStateEvent, InitialStateEvent, StateEventType};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use matrix_sdk::{Room, RoomState};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use wavelet_core::Platform;

/// The longest a send to a person waits for the first sync of this start before it looks
/// for their direct room (it is then tried again later).
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(10);

/// The state event that marks a room as the direct room this bot made for a person (its
/// state key is [`mark_key`]): found again by it after a crash that came before the room
/// was recorded.
const DIRECT_MARK: &str = "org.wavelet.direct_room";

/// The mark's state key for `user`. Not the bare user id: a state key that starts with `@`
/// may be set only by that user (Synapse refuses the room's creation otherwise).
fn mark_key(user: &UserId) -> String {
    format!("for {user}")
}

/// A new direct room with `user`: as matrix-sdk's `create_dm` makes one (invited, marked
/// direct, trusted private chat, encrypted), and marked as Wavelet's for `user`.
fn direct_room_request(user: &UserId) -> create_room::v3::Request {
    let state = |event: serde_json::Value| {
        Raw::<AnyInitialStateEvent>::from_json(
            serde_json::value::to_raw_value(&event).expect("a JSON value serialises"),
        )
    };
    let encryption = InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults());
    let mut request = create_room::v3::Request::new();
    request.invite = vec![user.to_owned()];
    request.is_direct = true;
    request.preset = Some(create_room::v3::RoomPreset::TrustedPrivateChat);
    request.initial_state = vec![
        encryption.to_raw_any(),
        state(serde_json::json!({ "type": DIRECT_MARK, "state_key": mark_key(user), "content": {} })),
    ];
    request
}

impl MatrixAdapter {
    /// The direct room with a person: the one remembered, or recorded in Wavelet's store,
    /// or (once this start's first sync is in) one this bot made for them and marked, or
    /// their direct room in the account's `m.direct`; else a new one, made encrypted and
    /// marked, and recorded before anything is sent there. A crash between making a room
    /// and recording it therefore never leads to a second room: the next start finds the
    /// first by its mark.
    pub(super) async fn direct_room(&self, user: &UserId) -> Result<Room, SendError> {
        let mut direct = self.direct.lock().await;
        if let Some(room) = self.joined(direct.get(user)) {
            return Ok(room);
        }
        let recorded = self.ctx.direct_room(Platform::Matrix, user.as_str()).await.map_err(|e| {
            SendError::Temporary(format!("the store did not say which room is this person's direct room: {e}"))
        })?;
        let recorded = recorded.and_then(|id| RoomId::parse(id).ok());
        if let Some(room) = self.joined(recorded.as_ref()) {
            direct.insert(user.to_owned(), room.room_id().to_owned());
            return Ok(room);
        }
        // A room made just before a crash is known only once the first sync is in.
        self.first_sync().await?;
        if let Some(room) = self.joined(recorded.as_ref()) {
            direct.insert(user.to_owned(), room.room_id().to_owned());
            return Ok(room);
        }
        if let Some(room) = self.marked_room(user).await.or_else(|| self.client.get_dm_room(user)) {
            self.remember_direct(&mut direct, user, &room).await;
            return Ok(room);
        }
        let room = self.client.create_room(direct_room_request(user)).await.map_err(send_error)?;
        tracing::info!(room = %room.room_id(), "created a direct room");
        crate::faults::point("matrix.direct_room_created");
        self.ctx.record_direct_room(Platform::Matrix, user.as_str(), room.room_id().as_str()).await.map_err(|e| {
            SendError::Temporary(format!(
                "the new direct room is not recorded yet (it is found again by its mark): {e}"
            ))
        })?;
        crate::faults::point("matrix.direct_room_recorded");
        direct.insert(user.to_owned(), room.room_id().to_owned());
        Ok(room)
    }

    /// The room `id`, if this bot is joined to it.
    fn joined(&self, id: Option<&OwnedRoomId>) -> Option<Room> {
        self.client.get_room(id?).filter(|room| room.state() == RoomState::Joined)
    }

    /// Opens `user`'s direct room ahead of need, in the background, when a person in the
    /// directory is seen in a configured room and no direct room of theirs is known here
    /// yet: their first question then goes out as fast as later ones, not after a room is
    /// made. (A send that needs the room meanwhile waits for it: one lock.)
    pub(super) fn open_ahead(self: &Arc<Self>, user: &UserId) {
        if self.person_of(user).is_none() {
            return;
        }
        if let Ok(direct) = self.direct.try_lock()
            && direct.contains_key(user)
        {
            return;
        }
        let (me, user) = (self.clone(), user.to_owned());
        tokio::spawn(async move {
            if let Err(e) = me.direct_room(&user).await {
                tracing::debug!(error = %e, "direct room not opened ahead; it is opened when first needed");
            }
        });
    }

    /// Remembers `room` as `user`'s direct room, here and in the store (a failure to
    /// record is logged: the room is found again by its mark, or recorded next time).
    pub(super) async fn remember_direct(
        &self,
        direct: &mut HashMap<OwnedUserId, OwnedRoomId>,
        user: &UserId,
        room: &Room,
    ) {
        direct.insert(user.to_owned(), room.room_id().to_owned());
        if let Err(e) = self.ctx.record_direct_room(Platform::Matrix, user.as_str(), room.room_id().as_str()).await {
            tracing::warn!(room = %room.room_id(), error = %e, "direct room not recorded; it is looked for again next time");
        }
    }

    /// Waits (at most [`FIRST_SYNC_WAIT`]) until this start's first sync is in.
    async fn first_sync(&self) -> Result<(), SendError> {
        let mut synced = self.synced.subscribe();
        match tokio::time::timeout(FIRST_SYNC_WAIT, synced.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(SendError::Temporary("waiting for the first sync before looking for a direct room".into())),
        }
    }

    /// A joined room this bot made as `user`'s direct room, found by its mark.
    async fn marked_room(&self, user: &UserId) -> Option<Room> {
        for room in self.client.joined_rooms() {
            let mark = room.get_state_event(StateEventType::from(DIRECT_MARK), &mark_key(user)).await;
            if matches!(mark, Ok(Some(_))) {
                return Some(room);
            }
        }
        None
    }
}
