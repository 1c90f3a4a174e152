//! The Matrix side of the tests and of the latency benchmark: people at real Matrix
//! clients (matrix-sdk, each with its own crypto store), rooms as they make them, the
//! example configuration pointed at a Synapse, and Wavelet started and stopped in-process.
//!
//! Include it after `support/synapse.rs`, as `mod synapse;` at the crate root:
//!
//! ```ignore
//! #[path = "support/synapse.rs"]
//! mod synapse;
//! #[path = "support/matrix_world.rs"]
//! mod world;
//! ```
#![allow(dead_code)]

use crate::synapse::Synapse;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::member::StrippedRoomMemberEvent;
use matrix_sdk::ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use matrix_sdk::{Client, Room, RoomMemberships, RoomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wavelet::chat::matrix::{MatrixAdapter, Secrets};
use wavelet::delivery::Adapters;
use wavelet::runtime::SystemClock;

/// The repository's top folder.
pub fn root() -> PathBuf {
    // The first folder up that holds the examples: `tests/` includes this file, and so do
    // the benches in `bot/wavelet/`.
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.ancestors().find(|d| d.join("examples/wavelet.toml").is_file());
    root.unwrap_or_else(|| panic!("no examples/wavelet.toml above {}", here.display())).to_path_buf()
}

/// A text message a person's client received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub room: OwnedRoomId,
    pub text: String,
    pub event: OwnedEventId,
    /// The content as received (decrypted): the HTML body and `m.mentions` are in it.
    pub content: RoomMessageEventContent,
    /// When this client's sync handed it over.
    pub at: Instant,
}

/// A person at a real Matrix client: joins what they are invited to, and keeps the text
/// messages others send them.
pub struct Person {
    pub client: Client,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<tokio::sync::Notify>,
    _sync: tokio::task::JoinHandle<()>,
}

impl Person {
    pub async fn new(server: &Synapse, dir: &Path, name: &str) -> Person {
        let password = format!("{name}-password");
        server.register(name, &password, false).await;
        let client = logged_in(server, &dir.join(format!("client-{name}")), name, &password).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(tokio::sync::Notify::new());
        client.add_event_handler(|ev: StrippedRoomMemberEvent, room: Room, client: Client| async move {
            if Some(ev.state_key.as_ref()) == client.user_id() && room.state() == RoomState::Invited {
                for _ in 0..10 {
                    if room.join().await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        let (s, a) = (seen.clone(), arrived.clone());
        client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room, client: Client| {
            let (s, a) = (s.clone(), a.clone());
            async move {
                let at = Instant::now();
                if Some(ev.sender.as_ref()) == client.user_id() {
                    return;
                }
                if let MessageType::Text(t) = &ev.content.msgtype {
                    let room = room.room_id().to_owned();
                    let (text, event, content) = (t.body.clone(), ev.event_id.clone(), ev.content.clone());
                    s.lock().unwrap().push(Seen { room, text, event, content, at });
                    a.notify_waiters();
                }
            }
        });
        let sync = tokio::spawn(sync_forever(client.clone()));
        Person { client, seen, arrived, _sync: sync }
    }

    /// Waits until `room` has at least `n` joined members, as this person's client sees it.
    pub async fn wait_for_members(&self, room: &OwnedRoomId, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.client.get_room(room).unwrap();
            let joined = r.members(RoomMemberships::JOIN).await.map(|m| m.len()).unwrap_or(0);
            if joined >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {joined} of {n} members ever joined");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn user_id(&self) -> OwnedUserId {
        self.client.user_id().unwrap().to_owned()
    }

    pub async fn say(&self, room: &OwnedRoomId, text: &str) {
        let r = self.client.get_room(room).expect("in the room");
        r.send(RoomMessageEventContent::text_plain(text)).await.unwrap();
    }

    /// A room this person makes, with `invite` invited; encrypted or not. A direct room is
    /// flagged as such in the invites (`is_direct`), as clients do for a DM.
    pub async fn create_room(&self, invite: Vec<OwnedUserId>, encrypted: bool, direct: bool) -> OwnedRoomId {
        let mut request = CreateRoom::new();
        request.invite = invite;
        request.is_direct = direct;
        if direct {
            request.preset = Some(RoomPreset::TrustedPrivateChat);
        }
        if encrypted {
            request.initial_state = vec![
                InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                    .to_raw_any(),
            ];
        }
        self.client.create_room(request).await.unwrap().room_id().to_owned()
    }

    /// Waits for a message starting with `start`, in `room` (or any room but `not_in`);
    /// returns the room it came in.
    pub async fn expect(&self, start: &str, room: Option<&OwnedRoomId>, not_in: Option<&OwnedRoomId>) -> OwnedRoomId {
        self.expect_seen(start, room, not_in).await.room
    }

    /// As [`Person::expect`], with the message's event id.
    pub async fn expect_event(
        &self,
        start: &str,
        room: Option<&OwnedRoomId>,
        not_in: Option<&OwnedRoomId>,
    ) -> (OwnedRoomId, OwnedEventId) {
        let s = self.expect_seen(start, room, not_in).await;
        (s.room, s.event)
    }

    /// As [`Person::expect`], with all that is known of the message (when it arrived too).
    /// Takes the message out of [`Person::seen`].
    pub async fn expect_seen(&self, start: &str, room: Option<&OwnedRoomId>, not_in: Option<&OwnedRoomId>) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            // Registered before looking, so an arrival in between is not missed.
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut seen = self.seen.lock().unwrap();
                if let Some(i) = seen.iter().position(|s| {
                    s.text.starts_with(start)
                        && room.is_none_or(|x| *x == s.room)
                        && not_in.is_none_or(|x| *x != s.room)
                }) {
                    return seen.remove(i);
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} never got {start:?}; got {:?}",
                    self.user_id(),
                    seen.iter().map(|s| &s.text).collect::<Vec<_>>()
                );
            }
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
    }

    /// How many of the messages kept start with `start`.
    pub fn count_seen(&self, start: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| s.text.starts_with(start)).count()
    }
}

/// A matrix-sdk client logged in as `name` (a new device, its crypto store in `store`),
/// past its first sync.
pub async fn logged_in(server: &Synapse, store: &Path, name: &str, password: &str) -> Client {
    logged_in_with_store_passphrase(server, store, name, password, None).await
}

/// As [`logged_in`], with the store encrypted under `passphrase` (as Wavelet's is).
pub async fn logged_in_with_store_passphrase(
    server: &Synapse,
    store: &Path,
    name: &str,
    password: &str,
    passphrase: Option<&str>,
) -> Client {
    let client =
        Client::builder().homeserver_url(server.base_url()).sqlite_store(store, passphrase).build().await.unwrap();
    client.matrix_auth().login_username(name, password).await.unwrap();
    client.sync_once(SyncSettings::default()).await.unwrap();
    client
}

/// Syncs until the task is aborted, across a homeserver restart, as a real client does.
/// A loop of `sync_once` rather than `Client::sync`, which waits a second before a sync
/// that follows one less than a second old: that would put a second into every reply a
/// test or the latency benchmark waits for, when the reply follows the person's own
/// message.
pub async fn sync_forever(client: Client) {
    let mut settings = SyncSettings::default().timeout(Duration::from_secs(30));
    loop {
        match client.sync_once(settings.clone()).await {
            Ok(r) => settings = settings.token(r.next_batch),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Wavelet's log (ids only) in the test's output; `WAVELET_LOG` sets the filter.
pub fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WAVELET_LOG").unwrap_or_else(|_| "wavelet=info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// The example configuration, on Matrix: alice and bea have Matrix accounts, the group's
/// room is `room`, and the bot is `@wavelet:localhost`.
pub fn config(dir: &Path, server: &Synapse, room: &OwnedRoomId) -> PathBuf {
    let text = std::fs::read_to_string(root().join("examples/wavelet.toml")).unwrap();
    let text = text.split("[[schedule]]").next().unwrap();
    let text = text
        .replace("url = \"sqlite://wavelet.db\"", &format!("url = \"sqlite://{}\"", dir.join("w.db").display()))
        .replace("dir = \"../workflows\"", &format!("dir = \"{}\"", root().join("workflows").display()))
        .replace(
            "accounts = { console = \"alice\" }",
            "accounts = { console = \"alice\", matrix = \"@alice:localhost\" }",
        )
        .replace(
            "roles = [\"practitioner\", \"lead\"]\n",
            "roles = [\"practitioner\", \"lead\"]\naccounts = { matrix = \"@bea:localhost\" }\n",
        )
        .replace("rooms = [\"console:north\"]", &format!("rooms = [\"matrix:{room}\"]"));
    let text = format!(
        "{text}\n[matrix]\nhomeserver = \"{}\"\nuser = \"@wavelet:localhost\"\nstate_dir = \"{}\"\n",
        server.base_url(),
        dir.join("matrix-state").display()
    );
    let path = dir.join("wavelet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The bot account's secrets in the tests (`wavelet-password`, a store passphrase).
pub fn secrets() -> Secrets {
    Secrets {
        password: Some("wavelet-password".into()),
        passphrase: Some("store passphrase".into()),
        recovery_key: None,
    }
}

/// The configuration at `config` and a runtime on its store.
pub async fn runtime(config: &Path) -> (wavelet_core::Config, Arc<wavelet::runtime::Runtime>) {
    let cfg = wavelet::app::load_config(config, &|_| None).unwrap();
    let rt = wavelet::app::build(cfg.clone(), &cfg.store.url, Arc::new(SystemClock)).await.unwrap().runtime;
    (cfg, rt)
}

/// A chat context on `rt`, with its ingest worker.
pub fn context(rt: &Arc<wavelet::runtime::Runtime>) -> (wavelet::chat::ChatContext, tokio::task::JoinHandle<()>) {
    let (ingest, worker) = wavelet::delivery::ingest::Ingest::spawn(rt.clone(), wavelet::delivery::ingest::MAX_BATCH);
    (wavelet::chat::ChatContext::new(rt.clone(), ingest), worker)
}

/// Wavelet, in this process: the runtime, the Matrix adapter syncing into the ingest, and
/// the background loop delivering the outbox.
pub struct Bot {
    pub rt: Arc<wavelet::runtime::Runtime>,
    pub adapter: Arc<MatrixAdapter>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    background: Option<wavelet::delivery::service::Background>,
}

impl Bot {
    pub async fn start(config: &Path) -> Bot {
        let (cfg, rt) = runtime(config).await;
        let (ctx, worker) = context(&rt);
        let m = MatrixAdapter::connect(cfg.matrix.as_ref().unwrap(), &secrets(), ctx).await.unwrap();
        let mut adapters = Adapters::default();
        adapters.add(m.clone());
        let m_ref = m.clone();
        let sync = tokio::spawn(m.run());
        let background = wavelet::delivery::service::spawn(rt.clone(), adapters);
        Bot { rt, adapter: m_ref, tasks: vec![sync, worker], background: Some(background) }
    }

    pub async fn stop(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(b) = self.background.take() {
            b.stop().await;
        }
        self.rt.store().close().await;
    }
}
