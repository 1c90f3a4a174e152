//! The Discord side of the tests: people as the local Discord-protocol server's users, the
//! example configuration pointed at that server, and Wavelet started and stopped in-process.
//!
//! Include it as `mod discord_world;` at the crate root:
//!
//! ```ignore
//! #[path = "support/discord_world.rs"]
//! mod discord_world;
//! ```
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wavelet::chat::discord::DiscordAdapter;
use wavelet::delivery::Adapters;
use wavelet::runtime::SystemClock;
use wavelet_discord_server::{CommandScope, Server, ServerOptions, StoredMessage, TestUser};

/// How long anything the bot should do may take.
pub const WAIT: Duration = Duration::from_secs(15);
/// The guild of the group's channel, and the channel (`discord:<NORTH>` in the configuration).
pub const GUILD: u64 = 710_000_000_000_000_001;
pub const NORTH: u64 = 710_000_000_000_000_002;

/// alice (practitioner) and bea (practitioner and lead) of the example configuration, and
/// mallory, whom the directory does not know.
pub fn alice() -> TestUser {
    TestUser::human(810_000_000_000_000_001, "alice")
}
pub fn bea() -> TestUser {
    TestUser::human(810_000_000_000_000_002, "bea")
}
pub fn mallory() -> TestUser {
    TestUser::human(810_000_000_000_000_666, "mallory")
}

/// A local Discord-protocol server with the group's channel, and alice, bea and mallory
/// known to it (on Discord they would share the guild with the bot, so it can DM them).
pub async fn start_server(options: ServerOptions) -> Server {
    let server = Server::start(options).await.unwrap();
    server.add_guild_channel(GUILD, NORTH);
    for person in [alice(), bea(), mallory()] {
        server.add_user(person);
    }
    server
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Wavelet's log (ids only) in the test's output; `WAVELET_LOG` sets the filter.
pub fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WAVELET_LOG").unwrap_or_else(|_| "wavelet=info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Changes to the example configuration beyond pointing it at the server.
#[derive(Default)]
pub struct Options {
    /// Another workflows folder.
    pub workflows: Option<PathBuf>,
    /// `[limits] max_answer_chars`.
    pub max_answer_chars: Option<usize>,
}

/// The example configuration with alice and bea on Discord, the group `north` in the channel
/// `NORTH`, the store in `dir`, and `[discord]` pointed at `server`.
pub fn config(dir: &Path, server: &Server, options: Options) -> PathBuf {
    let text = discord_text(dir, options, &format!("rooms = [\"discord:{NORTH}\"]"));
    let text = format!("{text}\n[discord]\napi_base = \"{}\"\n", server.http_url());
    let path = dir.join("wavelet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The example configuration's text with the Discord accounts, the store in `dir`, and the
/// group's `rooms` line replaced by `rooms` (no `[discord]` section).
pub fn discord_text(dir: &Path, options: Options, rooms: &str) -> String {
    let text = std::fs::read_to_string(root().join("examples/wavelet.toml")).unwrap();
    let text = text.split("[[schedule]]").next().unwrap();
    let workflows = options.workflows.unwrap_or_else(|| root().join("workflows"));
    let mut text = text
        .replace("url = \"sqlite://wavelet.db\"", &format!("url = \"sqlite://{}\"", dir.join("w.db").display()))
        .replace("dir = \"../workflows\"", &format!("dir = \"{}\"", workflows.display()))
        .replace(
            "accounts = { console = \"alice\" }",
            &format!("accounts = {{ console = \"alice\", discord = \"{}\" }}", alice().id),
        )
        .replace(
            "roles = [\"practitioner\", \"lead\"]\n",
            &format!("roles = [\"practitioner\", \"lead\"]\naccounts = {{ discord = \"{}\" }}\n", bea().id),
        )
        .replace("rooms = [\"console:north\"]", rooms);
    if let Some(n) = options.max_answer_chars {
        text = text.replace("max_answer_chars = 4000", &format!("max_answer_chars = {n}"));
    }
    text
}

/// Wavelet, in this process: the runtime, the Discord adapter on the gateway handing events
/// to the ingest, and the background loop delivering the outbox.
pub struct Bot {
    pub rt: Arc<wavelet::runtime::Runtime>,
    pub adapter: Arc<DiscordAdapter>,
    /// The gateway task: it ends only when Discord will not have the bot.
    pub gateway: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    worker: tokio::task::JoinHandle<()>,
    background: Option<wavelet::delivery::service::Background>,
}

impl Bot {
    /// Starts Wavelet on `config` and waits until it has a gateway session and has registered
    /// its slash commands.
    pub async fn start(config: &Path, server: &Server) -> Bot {
        let cfg = wavelet::app::load_config(config, &|_| None).unwrap();
        let url = cfg.store.url.clone();
        let rt = wavelet::app::build(cfg.clone(), &url, Arc::new(SystemClock)).await.unwrap().runtime;
        let identified = server.gateway_stats().identifies;
        let registrations = command_registrations(server);
        let (ingest, worker) =
            wavelet::delivery::ingest::Ingest::spawn(rt.clone(), wavelet::delivery::ingest::MAX_BATCH);
        let ctx = wavelet::chat::ChatContext::new(rt.clone(), ingest);
        let adapter = DiscordAdapter::connect(cfg.discord.as_ref().unwrap(), Some(server.token()), ctx).await.unwrap();
        let mut adapters = Adapters::default();
        adapters.add(adapter.clone());
        let gateway = tokio::spawn(adapter.clone().run());
        let background = wavelet::delivery::service::spawn(rt.clone(), adapters);
        server.wait_for_stats(|s| s.identifies > identified, WAIT).await.unwrap();
        eventually("the slash commands to be registered", || command_registrations(server) > registrations).await;
        Bot { rt, adapter, gateway: Some(gateway), worker, background: Some(background) }
    }

    /// Stops it: the gateway closed, the tasks ended, the store closed.
    pub async fn stop(mut self) {
        self.adapter.shutdown().await;
        if let Some(g) = self.gateway.take() {
            g.abort();
        }
        self.worker.abort();
        if let Some(b) = self.background.take() {
            b.stop().await;
        }
        self.rt.store().close().await;
    }
}

/// How many times the global slash commands were written.
pub fn command_registrations(server: &Server) -> usize {
    server.requests().iter().filter(|r| r.method == "PUT" && r.path.ends_with("/commands") && r.status == 200).count()
}

/// The names of the global slash commands.
pub fn slash_command_names(server: &Server) -> Vec<String> {
    server.registered_commands(CommandScope::Global).into_iter().map(|c| c.name).collect()
}

/// Waits until `check` holds.
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The DM channel between a person and the bot, once the bot has opened it.
pub async fn dm_of(server: &Server, user: &TestUser) -> u64 {
    eventually("the DM channel to be opened", || server.dm_channel_of(user.id).is_some()).await;
    server.dm_channel_of(user.id).unwrap()
}

/// Waits for a message from the bot in `channel` that starts with `start`.
pub async fn expect(server: &Server, channel: u64, start: &str) -> StoredMessage {
    let bot = server.bot().id;
    let found = server
        .wait_for_message(|m| m.author.id == bot && m.channel_id == channel && m.content.starts_with(start), WAIT)
        .await;
    match found {
        Ok(m) => m,
        Err(_) => {
            let said: Vec<String> =
                server.messages_in(channel).into_iter().filter(|m| m.author.id == bot).map(|m| m.content).collect();
            panic!("the bot never said {start:?} in {channel}; it said {said:#?}")
        }
    }
}

/// Waits for a bot message in the DM with `user` that starts with `start`.
pub async fn expect_dm(server: &Server, user: &TestUser, start: &str) -> StoredMessage {
    let channel = dm_of(server, user).await;
    expect(server, channel, start).await
}

/// How many of the bot's messages in `channel` start with `start`.
pub fn count(server: &Server, channel: u64, start: &str) -> usize {
    let bot = server.bot().id;
    server.messages_in(channel).iter().filter(|m| m.author.id == bot && m.content.starts_with(start)).count()
}

/// The custom id of the button labelled `label` on a message.
pub fn button(message: &StoredMessage, label: &str) -> String {
    message
        .components
        .iter()
        .filter_map(|row| row["components"].as_array())
        .flatten()
        .find(|b| b["label"] == label)
        .and_then(|b| b["custom_id"].as_str())
        .unwrap_or_else(|| panic!("no button {label:?} on {:?}", message.components))
        .to_string()
}
