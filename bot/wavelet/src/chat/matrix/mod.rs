//! The Matrix adapter (cargo feature `matrix`): Wavelet as a Matrix user, with
//! matrix-sdk's end-to-end encryption and its SQLite state and crypto stores.
//!
//! - **Identity**: the session (user id, device id, access token) is kept in the state
//!   folder beside the stores, so a restart is the same device. A saved session without
//!   its stores is refused: restoring it would break encryption for that device.
//! - **Rooms**: invites to the configured group rooms are accepted, and so are direct
//!   invites from people in the directory; every other invite is declined and recorded.
//!   Private questions go to a direct room with the person (encrypted), created once.
//! - **Sync**: the first sync after the first login skips history; after that Wavelet
//!   keeps its own sync position in the state folder (`sync-position`), written only once
//!   every event of a sync is committed, so a restart (after a stop or a crash at any
//!   point) picks up what arrived meanwhile and what was being handled, and the inbox
//!   drops what was handled already. The homeserver going away is retried with backoff
//!   and logged (ids only). [`MatrixAdapter::stop`] ends the loop at once.
//! - **Messages**: a plain body and an HTML body; practitioners' text is escaped, and
//!   `m.mentions` is always empty, so nothing Wavelet sends pings a room. Each send
//!   carries a transaction id derived from the message's idempotency key, so the
//!   homeserver drops a resend after a crash.
//!
//! Only this file knows matrix-sdk's types.

mod direct;

use crate::chat::ChatContext;
use crate::delivery::ingest::SubmitError;
use crate::delivery::{ChatAdapter, SendError, SendFuture};
use anyhow::{Context, bail};
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::encryption::{BackupDownloadStrategy, EncryptionSettings};
use matrix_sdk::ruma::events::Mentions;
use matrix_sdk::ruma::events::reaction::OriginalSyncReactionEvent;
use matrix_sdk::ruma::events::room::member::{MembershipState, OriginalSyncRoomMemberEvent, StrippedRoomMemberEvent};
use matrix_sdk::ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomId, UserId,
};
use matrix_sdk::store::{StateStoreDataKey, StateStoreDataValue};
use matrix_sdk::{Client, Room, RoomState};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wavelet_core::config::MatrixConfig;
use wavelet_core::{Account, InboundEvent, MessageBody, Millis, OutboundMessage, Platform, RoomRef};

/// The environment variables the adapter reads its secrets from.
pub const PASSWORD_ENV: &str = "WAVELET_MATRIX_PASSWORD";
pub const PASSPHRASE_ENV: &str = "WAVELET_MATRIX_STORE_PASSPHRASE";
pub const RECOVERY_KEY_ENV: &str = "WAVELET_MATRIX_RECOVERY_KEY";

/// The longest the next `/sync` waits for the replies the last one's events queued: long
/// enough for a send to a homeserver nearby, short enough that a slow send never holds
/// back what people say next for long.
const HOLD_SYNC: Duration = Duration::from_millis(500);

/// Secrets, from the environment only.
#[derive(Clone, Default)]
pub struct Secrets {
    /// For the first login (later starts restore the saved session).
    pub password: Option<String>,
    /// Encrypts the state and crypto stores.
    pub passphrase: Option<String>,
    /// The account's recovery key, to fetch its cross-signing keys (a bot whose account
    /// already has cross-signing set up elsewhere).
    pub recovery_key: Option<String>,
}

impl Secrets {
    pub fn from_env() -> Secrets {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Secrets { password: get(PASSWORD_ENV), passphrase: get(PASSPHRASE_ENV), recovery_key: get(RECOVERY_KEY_ENV) }
    }
}

pub struct MatrixAdapter {
    client: Client,
    ctx: ChatContext,
    /// Shared rooms of the configured groups.
    group_rooms: Vec<OwnedRoomId>,
    /// Direct rooms found or created, by the person's user id. One lock so that two
    /// messages to a new person make one room.
    direct: tokio::sync::Mutex<HashMap<OwnedUserId, OwnedRoomId>>,
    /// Whether this start logged in afresh (the first sync then skips history).
    fresh_login: bool,
    /// Set once this start's first sync is in: the rooms made before it (a direct room made
    /// just before a crash) are known from then on.
    synced: tokio::sync::watch::Sender<bool>,
    /// The store's commit count once this sync's events were taken (0: none taken): a
    /// delivery pass that begins after it sends their replies.
    replies_after: std::sync::atomic::AtomicU64,
    /// Where Wavelet keeps its own sync position ([`position_path`]).
    position: PathBuf,
    /// Set by [`MatrixAdapter::stop`]: the sync loop ends.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Whether an event of the sync being handled was not taken (the ingest was closing):
    /// the sync's position is then not kept.
    untaken: std::sync::atomic::AtomicBool,
    /// Held (an advisory file lock) while this adapter lives: one process per state folder.
    _lock: std::fs::File,
}

fn session_path(state: &Path) -> PathBuf {
    state.join("session.json")
}

fn store_path(state: &Path) -> PathBuf {
    state.join("store")
}

/// Wavelet's own sync position: the `next_batch` of the last sync whose every event was
/// taken (committed by the ingest). matrix-sdk saves its position before it runs the event
/// handlers, so a process killed while handling a sync would resume after events it never
/// took; resuming from this one brings them again, and the inbox drops what was taken.
fn position_path(state: &Path) -> PathBuf {
    state.join("sync-position")
}

/// The sync position kept by the last run, if there is one to resume from.
fn kept_position(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(p) if !p.trim().is_empty() => Some(p.trim().to_string()),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "matrix sync position unreadable; resuming from matrix-sdk's own");
            None
        }
    }
}

/// Locks the state folder for this process, or says who must not share it.
fn lock_state_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "the Matrix state folder {} is in use by another Wavelet process; each process needs a state_dir of its own (and is then a device of its own)",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the Matrix state folder {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl MatrixAdapter {
    /// Logs in (first start) or restores the saved session, with the stores in the state
    /// folder. Clear errors for a missing password, a store without its session or the
    /// reverse, and a session of another user.
    pub async fn connect(
        cfg: &MatrixConfig,
        secrets: &Secrets,
        ctx: ChatContext,
    ) -> anyhow::Result<Arc<MatrixAdapter>> {
        private_dir(&cfg.state_dir)?;
        let lock = lock_state_dir(&cfg.state_dir)?;
        let session_file = session_path(&cfg.state_dir);
        let store = store_path(&cfg.state_dir);
        let saved = session_file.exists();
        if saved && !store.exists() {
            bail!(
                "the Matrix session in {} has no state and crypto store beside it ({} is missing); restoring it would break encryption for this device. Remove {} to log in again as a new device (people's clients will see a new device), or restore the store from a backup",
                session_file.display(),
                store.display(),
                session_file.display()
            );
        }
        if !saved && store.exists() {
            bail!(
                "{} holds a Matrix store but no session; a store cannot be reused for a new login. Move the folder away to start afresh",
                store.display()
            );
        }
        // Cross-signing is bootstrapped on a password login, so clients that hide
        // unverified devices still show what the bot says.
        let encryption = EncryptionSettings {
            auto_enable_cross_signing: true,
            backup_download_strategy: BackupDownloadStrategy::default(),
            auto_enable_backups: false,
        };
        let client = Client::builder()
            .homeserver_url(&cfg.homeserver)
            .with_encryption_settings(encryption)
            .sqlite_store(&store, secrets.passphrase.as_deref())
            .build()
            .await
            .with_context(|| format!("cannot open the Matrix client for {}", cfg.homeserver))?;
        if saved {
            let text = std::fs::read_to_string(&session_file)
                .with_context(|| format!("cannot read {}", session_file.display()))?;
            let session: MatrixSession =
                serde_json::from_str(&text).with_context(|| format!("{} is damaged", session_file.display()))?;
            if session.meta.user_id.as_str() != cfg.user {
                bail!(
                    "the saved Matrix session in {} belongs to another user than matrix.user; use a state folder of its own for each bot account",
                    session_file.display()
                );
            }
            // Resume from Wavelet's own sync position: made matrix-sdk's before the session
            // is restored (which loads it), so its first sync is not taken for one it has
            // seen ("the same sync response twice") and dropped.
            if let Some(position) = kept_position(&position_path(&cfg.state_dir)) {
                client
                    .state_store()
                    .set_kv_data(StateStoreDataKey::SyncToken, StateStoreDataValue::SyncToken(position))
                    .await
                    .context("cannot set the Matrix sync position in the state store")?;
            }
            client.restore_session(session).await.context("cannot restore the saved Matrix session")?;
            tracing::info!("matrix session restored");
        } else {
            let Some(password) = &secrets.password else {
                bail!(
                    "the first Matrix login needs the bot's password in {PASSWORD_ENV}; later starts reuse the saved session"
                );
            };
            client
                .matrix_auth()
                .login_username(&cfg.user, password)
                .initial_device_display_name("Wavelet")
                .await
                .context("Matrix login failed; check matrix.user and the password")?;
            let session = client.matrix_auth().session().context("no session after login")?;
            write_private(&session_file, &serde_json::to_string(&session)?)?;
            tracing::info!("matrix login as a new device; session saved");
        }
        if let Some(key) = &secrets.recovery_key {
            client
                .encryption()
                .recovery()
                .recover(key)
                .await
                .with_context(|| format!("the recovery key in {RECOVERY_KEY_ENV} was not accepted"))?;
            tracing::info!("matrix cross-signing keys recovered");
        }
        let group_rooms = ctx
            .directory()
            .groups()
            .iter()
            .flat_map(|g| &g.rooms)
            .filter_map(|r| match r {
                RoomRef::Shared { platform: Platform::Matrix, id } => RoomId::parse(id).ok(),
                _ => None,
            })
            .collect();
        Ok(Arc::new(MatrixAdapter {
            client,
            ctx,
            group_rooms,
            direct: tokio::sync::Mutex::default(),
            fresh_login: !saved,
            synced: tokio::sync::watch::channel(false).0,
            replies_after: Default::default(),
            position: position_path(&cfg.state_dir),
            stopping: tokio::sync::watch::channel(false).0,
            untaken: Default::default(),
            _lock: lock,
        }))
    }

    /// Whether this device holds the account's cross-signing keys (master, self-signing and
    /// user-signing).
    pub async fn cross_signed(&self) -> bool {
        self.client
            .encryption()
            .cross_signing_status()
            .await
            .is_some_and(|s| s.has_master && s.has_self_signing && s.has_user_signing)
    }

    /// Ends the sync loop ([`MatrixAdapter::run`] returns): at once if it is waiting for
    /// the homeserver, or cutting short the handling of a sync, whose events then come
    /// again at the next start (the sync position is kept only once all are taken).
    /// Sending goes on working.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Syncs until [`MatrixAdapter::stop`] (or the task is dropped): hands messages to the
    /// ingest, answers invites, and retries with backoff (saying so) while the homeserver
    /// is away.
    pub async fn run(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            () = self.clone().sync() => {}
            _ = stopping.wait_for(|s| *s) => tracing::info!("matrix sync stopped"),
        }
    }

    async fn sync(self: Arc<Self>) {
        let mut settings = SyncSettings::default().timeout(Duration::from_secs(30));
        if self.fresh_login {
            // History is not ours to answer: one sync before any handler exists.
            loop {
                match self.client.sync_once(SyncSettings::default()).await {
                    Ok(r) => {
                        self.keep_position(&r.next_batch);
                        settings = settings.token(r.next_batch);
                        self.synced.send_replace(true);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "first Matrix sync failed; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        }
        self.accept_pending_invites().await;
        // The handlers live in the client, which this adapter owns: they hold it weakly, so
        // a stopped adapter is dropped (and its state folder unlocked).
        let me = Arc::downgrade(&self);
        self.client.add_event_handler(move |ev: StrippedRoomMemberEvent, room: Room| {
            let me = me.clone();
            async move {
                if let Some(me) = me.upgrade() {
                    me.on_invite(ev, room).await
                }
            }
        });
        let me = Arc::downgrade(&self);
        self.client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room| {
            let me = me.clone();
            async move {
                if let Some(me) = me.upgrade() {
                    me.on_message(ev, room).await
                }
            }
        });
        let me = Arc::downgrade(&self);
        self.client.add_event_handler(move |ev: OriginalSyncRoomMemberEvent, room: Room| {
            let me = me.clone();
            async move {
                if let Some(me) = me.upgrade() {
                    me.on_member(&ev, &room)
                }
            }
        });
        let me = Arc::downgrade(&self);
        self.client.add_event_handler(move |ev: OriginalSyncReactionEvent, room: Room| {
            let me = me.clone();
            async move {
                if let Some(me) = me.upgrade() {
                    me.on_reaction(ev, room).await
                }
            }
        });
        let mut delay = Duration::from_secs(1);
        let mut away = false;
        loop {
            match self.client.sync_once(settings.clone()).await {
                Ok(r) => {
                    if away {
                        tracing::info!("matrix homeserver is back; syncing again");
                        away = false;
                    }
                    delay = Duration::from_secs(1);
                    if !self.untaken.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        self.keep_position(&r.next_batch);
                    }
                    self.synced.send_replace(true);
                    settings = settings.token(r.next_batch);
                    self.hold_for_replies().await;
                }
                Err(e) => {
                    if !away {
                        tracing::warn!(error = %e, "matrix sync failed; retrying with backoff");
                        away = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Keeps `position` as where the next start resumes (written aside, then renamed, so a
    /// crash leaves the old position or the new, never half of one).
    fn keep_position(&self, position: &str) {
        let aside = self.position.with_extension("new");
        let kept = std::fs::write(&aside, position).and_then(|()| std::fs::rename(&aside, &self.position));
        if let Err(e) = kept {
            tracing::warn!(file = %self.position.display(), error = %e, "matrix sync position not kept; a restart resumes from an earlier one");
        }
    }

    /// Holds the next `/sync` until the replies this sync's events queued are sent (at most
    /// [`HOLD_SYNC`]): a homeserver serving the next long poll and the reply side by side
    /// answers both more slowly.
    async fn hold_for_replies(&self) {
        let commits = self.replies_after.swap(0, std::sync::atomic::Ordering::SeqCst);
        if commits > 0 {
            let sent = self.ctx.replies_sent_after(commits, HOLD_SYNC).await;
            tracing::debug!(sent, "next matrix sync after the replies");
        }
    }

    /// Notes that an event was taken: it was committed after the store had made `before`
    /// commits, so a delivery pass that begins after `before + 1` sends its replies. (Not
    /// the count after: a commit that wakes no pass may land in between, and the hold
    /// would then wait for a pass that is not coming.)
    fn taken(&self, before: u64) {
        self.replies_after.fetch_max(before + 1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Invites that arrived before the handlers existed (e.g. while Wavelet was down).
    async fn accept_pending_invites(&self) {
        for room in self.client.invited_rooms() {
            let inviter = room.invite_details().await.ok().and_then(|d| d.inviter).map(|m| m.user_id().to_owned());
            self.decide_invite(&room, inviter.as_deref(), false).await;
        }
    }

    async fn on_invite(&self, ev: StrippedRoomMemberEvent, room: Room) {
        if Some(ev.state_key.as_ref()) != self.client.user_id() || room.state() != RoomState::Invited {
            return;
        }
        let direct = ev.content.is_direct.unwrap_or(false);
        self.decide_invite(&room, Some(&ev.sender), direct).await;
    }

    /// Joins a configured group room or a direct room a known person opened; declines the
    /// rest and records the refusal.
    async fn decide_invite(&self, room: &Room, inviter: Option<&UserId>, direct: bool) {
        let known = inviter.and_then(|u| self.person_of(u));
        let wanted = self.group_rooms.iter().any(|r| r == room.room_id()) || (known.is_some() && direct);
        if wanted {
            for attempt in 0..5u32 {
                match room.join().await {
                    Ok(()) => {
                        tracing::info!(room = %room.room_id(), "joined a Matrix room");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(room = %room.room_id(), attempt, error = %e, "joining failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                    }
                }
            }
            return;
        }
        tracing::info!(room = %room.room_id(), "declined an invite to a room not in the configuration");
        if let Err(e) = room.leave().await {
            tracing::warn!(room = %room.room_id(), error = %e, "declining the invite failed");
        }
        let inviter = inviter.map_or_else(|| "unknown".into(), |u| format!("matrix:{u}"));
        self.ctx.record_refused_invite(inviter, format!("matrix:{}", room.room_id()), direct).await;
    }

    fn person_of(&self, user: &UserId) -> Option<String> {
        self.ctx.person_for(&Account { platform: Platform::Matrix, id: user.to_string() }).map(|p| p.id.clone())
    }

    /// When an event was said: the homeserver's timestamp, never later than Wavelet's clock.
    fn said_at(&self, ts: MilliSecondsSinceUnixEpoch) -> Millis {
        let ts = Millis(i64::try_from(u64::from(ts.get())).unwrap_or(i64::MAX));
        ts.min(self.ctx.now())
    }

    async fn on_message(self: &Arc<Self>, ev: OriginalSyncRoomMessageEvent, room: Room) {
        if Some(ev.sender.as_ref()) == self.client.user_id() || room.state() != RoomState::Joined {
            return;
        }
        tracing::debug!(event_id = %ev.event_id, "matrix message received");
        let text = match &ev.content.msgtype {
            MessageType::Text(t) => t.body.clone(),
            MessageType::Notice(_) => return,
            other => other.body().to_string(),
        };
        let Some(room_ref) = self.room_ref(&room, &ev.sender).await else { return };
        if !room_ref.is_direct() {
            self.open_ahead(&ev.sender);
        }
        self.hand_in(&ev.event_id, &ev.sender, ev.origin_server_ts, room_ref, text).await;
    }

    /// Someone joined a room: a person in the directory joining a configured room gets
    /// their direct room opened ahead of need.
    fn on_member(self: &Arc<Self>, ev: &OriginalSyncRoomMemberEvent, room: &Room) {
        if ev.content.membership == MembershipState::Join
            && self.group_rooms.iter().any(|r| r == room.room_id())
            && Some(ev.state_key.as_ref()) != self.client.user_id()
        {
            self.open_ahead(&ev.state_key);
        }
    }

    /// Hands an event to the ingest and notes that the next sync waits for its replies.
    async fn hand_in(
        &self,
        id: &EventId,
        sender: &UserId,
        said: MilliSecondsSinceUnixEpoch,
        room: RoomRef,
        text: String,
    ) {
        // matrix-sdk has saved its sync position by now; Wavelet's own is not yet moved.
        crate::faults::point("matrix.event_received");
        let event = InboundEvent {
            event_id: id.to_string(),
            room,
            sender: Account { platform: Platform::Matrix, id: sender.to_string() },
            text,
            received_at: self.said_at(said),
            on_message: None,
        };
        let before = self.ctx.commits();
        match self.ctx.submit(event).await {
            Ok(()) => self.taken(before),
            // Not taken: the sync's position is not kept, so the next start brings it again.
            Err(SubmitError::ShuttingDown) => {
                self.untaken.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(event_id = %id, "matrix event left for the next start: wavelet is stopping");
            }
            // Refused by the runtime (not a store outage, which the ingest holds and
            // retries): a bug, said loudly.
            Err(e) => tracing::error!(event_id = %id, error = %e, "matrix event not taken"),
        }
    }

    /// Where a message in `room` from `sender` was said: a configured group room, the
    /// sender's direct room (a room of two, the bot and them), or nowhere Wavelet serves.
    async fn room_ref(&self, room: &Room, sender: &UserId) -> Option<RoomRef> {
        if self.group_rooms.iter().any(|r| r == room.room_id()) {
            Some(RoomRef::Shared { platform: Platform::Matrix, id: room.room_id().to_string() })
        } else if room.joined_members_count() <= 2 {
            // Their room of two with the bot: where Wavelet answers them from now on.
            let mut direct = self.direct.lock().await;
            let moved = direct.get(sender).is_none_or(|r| r != room.room_id());
            if moved && self.person_of(sender).is_some() {
                self.remember_direct(&mut direct, sender, room).await;
            }
            Some(RoomRef::Direct { platform: Platform::Matrix, account: sender.to_string() })
        } else {
            None
        }
    }

    /// A reaction on one of Wavelet's escalation notices is a one-tap acknowledgement:
    /// handed in as `ack C-…` from the person who reacted (who may or may not be allowed
    /// to acknowledge: the runtime decides, and records either way).
    async fn on_reaction(&self, ev: OriginalSyncReactionEvent, room: Room) {
        if Some(ev.sender.as_ref()) == self.client.user_id() || room.state() != RoomState::Joined {
            return;
        }
        let Ok(target) = room.event(&ev.content.relates_to.event_id, None).await else { return };
        let raw = target.raw();
        let by_us =
            raw.get_field::<String>("sender").ok().flatten().as_deref() == self.client.user_id().map(|u| u.as_str());
        let body = raw
            .get_field::<serde_json::Value>("content")
            .ok()
            .flatten()
            .and_then(|c| c["body"].as_str().map(str::to_string));
        let Some(case) = body.filter(|_| by_us).and_then(|b| case_of_notice(&b)) else { return };
        let Some(room_ref) = self.room_ref(&room, &ev.sender).await else { return };
        self.hand_in(&ev.event_id, &ev.sender, ev.origin_server_ts, room_ref, format!("ack {case}")).await;
    }

    async fn send_one(&self, m: &OutboundMessage) -> Result<(), SendError> {
        let room = match &m.room {
            RoomRef::Shared { platform: Platform::Matrix, id } => {
                let id = RoomId::parse(id).map_err(|_| SendError::Permanent("not a Matrix room id".into()))?;
                match self.client.get_room(&id) {
                    Some(r) if r.state() == RoomState::Joined => r,
                    _ => {
                        return Err(SendError::Temporary(
                            "Wavelet is not (yet) in this room; invite it, or check the room id".into(),
                        ));
                    }
                }
            }
            RoomRef::Direct { platform: Platform::Matrix, account } => {
                let user = UserId::parse(account).map_err(|_| SendError::Permanent("not a Matrix user id".into()))?;
                self.direct_room(&user).await?
            }
            _ => return Err(SendError::Permanent("not a Matrix room".into())),
        };
        tracing::debug!(key = %m.idempotency_key, "matrix send starting");
        room.send(content(&m.body))
            .with_transaction_id(transaction_id(&m.idempotency_key))
            .await
            .map_err(send_error)?;
        tracing::debug!(key = %m.idempotency_key, "matrix sent");
        Ok(())
    }
}

impl ChatAdapter for MatrixAdapter {
    fn platform(&self) -> Platform {
        Platform::Matrix
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(self.send_one(message))
    }

    /// A send takes a homeserver round trip (tens of ms); rooms need not wait for each other.
    fn parallel_rooms(&self) -> usize {
        8
    }
}

/// The case an escalation notice asks to acknowledge: the `C-…` in "Reply `ack C-…`".
fn case_of_notice(body: &str) -> Option<String> {
    let rest = &body[body.find("Reply `ack ")? + "Reply `ack ".len()..];
    let id = &rest[..rest.find('`')?];
    let digits = id.strip_prefix("C-")?;
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())).then(|| id.to_string())
}

/// The homeserver's transaction id for a message: the same for every resend of it.
pub fn transaction_id(key: &str) -> OwnedTransactionId {
    OwnedTransactionId::from(format!("wavelet-{}", &wavelet_core::engine::source_hash(key)[..32]))
}

/// A plain body and an HTML body. Text is escaped for HTML, `@room` cannot ping, and the
/// empty `m.mentions` tells clients nobody is mentioned.
pub fn content(body: &MessageBody) -> RoomMessageEventContent {
    let (plain, html) = match body {
        MessageBody::Text { text } | MessageBody::Escalation { text, .. } => {
            (no_room_ping(text), escape(text).replace('\n', "<br>"))
        }
        MessageBody::Choice { prompt, options } => {
            let items: String = options.iter().map(|o| format!("<li>{}</li>", escape(o))).collect();
            (no_room_ping(&body.plain()), format!("<p>{}</p><ol>{items}</ol>", escape(prompt).replace('\n', "<br>")))
        }
    };
    RoomMessageEventContent::text_html(plain, html).add_mentions(Mentions::new())
}

/// `@room` with a word joiner inside: read the same, pings nobody on older clients.
fn no_room_ping(text: &str) -> String {
    text.replace("@room", "@\u{2060}room")
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in no_room_ping(text).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn send_error(e: matrix_sdk::Error) -> SendError {
    match e.as_client_api_error().map(|c| c.status_code.as_u16()) {
        Some(429) => SendError::RateLimited(Duration::from_secs(5)),
        Some(403 | 404) => SendError::Permanent(e.to_string()),
        _ => SendError::Temporary(e.to_string()),
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options.open(path)?.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn practitioners_text_is_escaped_and_pings_nobody() {
        let c = content(&MessageBody::Text { text: "<b>hi</b> @room & \"x\"".into() });
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["body"], "<b>hi</b> @\u{2060}room & \"x\"");
        assert_eq!(json["formatted_body"], "&lt;b&gt;hi&lt;/b&gt; @\u{2060}room &amp; &quot;x&quot;");
        assert_eq!(json["m.mentions"], serde_json::json!({}));
    }

    #[test]
    fn choices_are_a_numbered_list() {
        let c = content(&MessageBody::Choice { prompt: "Risk?".into(), options: vec!["no".into(), "<yes>".into()] });
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["body"], "Risk?\n1. no\n2. <yes>");
        assert_eq!(json["formatted_body"], "<p>Risk?</p><ol><li>no</li><li>&lt;yes&gt;</li></ol>");
    }

    #[test]
    fn a_reaction_acknowledges_the_case_its_notice_names() {
        let notice = "Escalation E-1 (prompt, level 1): case C-12 (neglect, risk: yes) needs acknowledging. Reply `ack C-12` to take it.";
        assert_eq!(case_of_notice(notice).as_deref(), Some("C-12"));
        assert_eq!(case_of_notice("Reply `ack C-…` with its id to take one."), None);
        assert_eq!(case_of_notice("hello"), None);
    }

    #[test]
    fn a_message_keeps_its_transaction_id() {
        assert_eq!(transaction_id("run:R-1:0"), transaction_id("run:R-1:0"));
        assert_ne!(transaction_id("run:R-1:0"), transaction_id("run:R-1:1"));
    }
}
