//! A group that spans platforms: its rooms are a Matrix room on a real Synapse and a Discord
//! channel on the local Discord-protocol server, and one Wavelet serves both. Needs
//! `--features matrix,discord` and the venv from `scripts/synapse-venv` (`scripts/test`
//! provides both).
#![cfg(all(feature = "matrix", feature = "discord"))]
#![recursion_limit = "256"]

#[path = "support/synapse.rs"]
mod synapse;

#[path = "support/matrix_world.rs"]
mod world;

#[path = "support/discord_world.rs"]
mod discord_world;

use discord_world::{GUILD, NORTH, Options, alice, bea, expect, expect_dm};
use std::path::Path;
use std::sync::Arc;
use synapse::Synapse;
use wavelet::chat::ChatContext;
use wavelet::chat::discord::DiscordAdapter;
use wavelet::chat::matrix::MatrixAdapter;
use wavelet::delivery::Adapters;
use wavelet_discord_server::{IncomingInteraction, IncomingMessage, Place, Server, ServerOptions};
use world::{Person, log_to_test_output};

/// Wavelet on both platforms, in this process.
struct Bot {
    rt: Arc<wavelet::runtime::Runtime>,
    discord: Arc<DiscordAdapter>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    background: Option<wavelet::delivery::service::Background>,
}

impl Bot {
    async fn start(config: &Path, discord_server: &Server) -> Bot {
        let (cfg, rt) = world::runtime(config).await;
        let (ingest, worker) =
            wavelet::delivery::ingest::Ingest::spawn(rt.clone(), wavelet::delivery::ingest::MAX_BATCH);
        let ctx = ChatContext::new(rt.clone(), ingest);
        let matrix =
            MatrixAdapter::connect(cfg.matrix.as_ref().unwrap(), &world::secrets(), ctx.clone()).await.unwrap();
        let discord =
            DiscordAdapter::connect(cfg.discord.as_ref().unwrap(), Some(discord_server.token()), ctx).await.unwrap();
        let mut adapters = Adapters::default();
        adapters.add(matrix.clone());
        adapters.add(discord.clone());
        let sync = tokio::spawn(matrix.run());
        let gateway = tokio::spawn({
            let discord = discord.clone();
            async move {
                let _ = discord.run().await;
            }
        });
        let background = wavelet::delivery::service::spawn(rt.clone(), adapters);
        discord_server.wait_identified(discord_world::WAIT).await.unwrap();
        discord_world::eventually("the slash commands", || discord_world::command_registrations(discord_server) > 0)
            .await;
        Bot { rt, discord, tasks: vec![sync, gateway, worker], background: Some(background) }
    }

    async fn stop(mut self) {
        self.discord.shutdown().await;
        for t in &self.tasks {
            t.abort();
        }
        if let Some(b) = self.background.take() {
            b.stop().await;
        }
        self.rt.store().close().await;
    }
}

/// A practitioner on Discord raises a concern about a child at immediate risk; the share
/// reaches the group's Discord channel and its Matrix room, each delivery recorded; the lead,
/// on Matrix, acknowledges; the practitioner is told on Discord.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_share_reaches_the_groups_matrix_room_and_discord_channel_and_a_lead_on_matrix_acknowledges() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let synapse = Synapse::start().await;
    synapse.register("wavelet", "wavelet-password", false).await;
    let lead = Person::new(&synapse, dir.path(), "bea").await;
    let wavelet_user = synapse.user_id("wavelet").try_into().unwrap();
    let room = lead.create_room(vec![wavelet_user], false, false).await;
    let discord = discord_world::start_server(ServerOptions::default()).await;

    // alice on Discord, bea on Matrix; the group's rooms on both.
    let text = discord_world::discord_text(
        dir.path(),
        Options::default(),
        &format!("rooms = [\"matrix:{room}\", \"discord:{NORTH}\"]"),
    )
    .replace(&format!("accounts = {{ discord = \"{}\" }}", bea().id), "accounts = { matrix = \"@bea:localhost\" }");
    let text = format!(
        "{text}\n[matrix]\nhomeserver = \"{}\"\nuser = \"@wavelet:localhost\"\nstate_dir = \"{}\"\n\n[discord]\napi_base = \"{}\"\n",
        synapse.base_url(),
        dir.path().join("matrix-state").display(),
        discord.http_url()
    );
    let config = dir.path().join("wavelet.toml");
    std::fs::write(&config, text).unwrap();
    let bot = Bot::start(&config, &discord).await;
    lead.wait_for_members(&room, 2).await;

    let in_north = Place::Guild { guild_id: GUILD, channel_id: NORTH };
    let slash = discord.dispatch_interaction(IncomingInteraction::slash_command(alice(), in_north, "concern")).unwrap();
    assert!(discord.wait_for_callback(slash.id, discord_world::WAIT).await.unwrap().accepted());
    expect_dm(&discord, &alice(), "Child's initials").await;
    discord.dispatch_message(IncomingMessage::dm(alice(), "AB 2015"));
    expect_dm(&discord, &alice(), "What kind of concern").await;
    discord.dispatch_message(IncomingMessage::dm(alice(), "neglect"));
    expect_dm(&discord, &alice(), "Is the child at immediate risk").await;
    discord.dispatch_message(IncomingMessage::dm(alice(), "yes"));
    expect_dm(&discord, &alice(), "What did you see or hear").await;
    discord.dispatch_message(IncomingMessage::dm(alice(), "Came in hungry again"));

    // One share, two rooms: the Discord channel and the Matrix room.
    let summary = "New neglect concern C-1, risk: yes";
    expect(&discord, NORTH, summary).await;
    lead.expect(summary, Some(&room), None).await;

    // The lead, on Matrix, is asked privately and acknowledges; alice hears it on Discord.
    let lead_dm = lead.expect("Escalation E-1 (immediate, level 1)", None, Some(&room)).await;
    lead.say(&lead_dm, "ack C-1").await;
    lead.expect("Thank you: you have acknowledged C-1", Some(&lead_dm), None).await;
    expect_dm(&discord, &alice(), "Bea Lindqvist (St Mary's Primary School) acknowledged C-1").await;

    // The ledger: one share, and one delivery per room.
    let entries = bot.rt.store().ledger_page(0, i64::MAX).await.unwrap();
    assert_eq!(entries.iter().filter(|e| e.link.kind == "share").count(), 1);
    let mut delivered: Vec<String> = entries
        .iter()
        .filter(|e| e.link.kind == "share.delivered")
        .filter_map(|e| e.content.as_ref()?["room"].as_str().map(str::to_string))
        .collect();
    delivered.sort();
    assert_eq!(delivered, vec![format!("discord:{NORTH}"), format!("matrix:{room}")]);
    assert!(entries.iter().any(|e| e.link.kind == "case.acknowledged"));
    let head = bot.rt.store().ledger_head().await.unwrap();
    wavelet_core::ledger::verify(entries, &head).unwrap();
    bot.stop().await;
}
