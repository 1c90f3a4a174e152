//! How the real `wavelet run` process ends while it serves Matrix (a real Synapse),
//! Discord (the Discord-protocol server) or both. Stopped on SIGTERM or SIGINT in the
//! middle of a dialog, it exits 0 within 10 s and logs "wavelet stopped"; killed while it
//! handles what a sync brought, it loses none of it. Either way the next start goes on
//! with the dialog. Needs `--features matrix,discord` and the venv from
//! `scripts/synapse-venv` (`scripts/test` provides both).
#![cfg(all(feature = "matrix", feature = "discord"))]
#![recursion_limit = "256"]

#[path = "support/synapse.rs"]
mod synapse;

#[path = "support/matrix_world.rs"]
mod world;

#[path = "support/discord_world.rs"]
mod discord_world;

#[path = "support/process.rs"]
mod process;

use discord_world::{GUILD, NORTH, Options, alice, expect_dm};
use matrix_sdk::ruma::OwnedRoomId;
use process::Process;
use std::path::{Path, PathBuf};
use std::time::Duration;
use synapse::Synapse;
use wavelet_discord_server::{IncomingInteraction, IncomingMessage, Place, Server, ServerOptions};
use world::Person;

/// What an operator's service manager allows before it kills: the bound.
const STOP_BOUND: Duration = Duration::from_secs(10);
const START: Duration = Duration::from_secs(60);

fn matrix_env() -> Vec<(&'static str, &'static str)> {
    vec![("WAVELET_MATRIX_PASSWORD", "wavelet-password"), ("WAVELET_MATRIX_STORE_PASSPHRASE", "store passphrase")]
}

/// Stops `p` with `signal` and checks the stop was clean: exit code 0 within the bound,
/// "wavelet stopped" the last thing it logged, and nothing at WARN or ERROR in the whole
/// run (the log is read as an operator gets it: the default filter, no colour codes).
async fn stop_cleanly(p: &mut Process, signal: i32, what: &str) {
    let Some((status, took)) = p.stop_with(signal, STOP_BOUND * 3).await else {
        panic!("{what}: still running {:?} after the signal; its log:\n{}", STOP_BOUND * 3, p.log().join("\n"));
    };
    let log = p.log();
    eprintln!("{what}: stopped in {took:?} ({status})");
    assert!(status.success(), "{what}: exit {status}; log:\n{}", log.join("\n"));
    assert!(took < STOP_BOUND, "{what}: took {took:?} to stop; log:\n{}", log.join("\n"));
    assert!(
        log.last().is_some_and(|l| l.contains("wavelet stopped")),
        "{what}: \"wavelet stopped\" is not the last line; log:\n{}",
        log.join("\n")
    );
    assert!(!log.iter().any(|l| l.contains('\u{1b}')), "{what}: colour codes in a log that is not a terminal");
    let warnings = p.warnings();
    assert!(warnings.is_empty(), "{what}: logged at WARN or ERROR on a healthy run: {warnings:#?}");
}

/// A Synapse with the bot's account and alice, and a group room alice made with the bot
/// invited.
async fn matrix_world(dir: &Path) -> (Synapse, Person, OwnedRoomId) {
    let server = Synapse::start().await;
    server.register("wavelet", "wavelet-password", false).await;
    let alice = Person::new(&server, dir, "alice").await;
    let north = alice.create_room(vec![server.user_id("wavelet").try_into().unwrap()], false, false).await;
    (server, alice, north)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_matrix_a_sigterm_stops_it_cleanly_mid_dialog_and_the_dialog_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (server, alice, north) = matrix_world(dir.path()).await;
    let config = world::config(dir.path(), &server, &north);
    let mut wavelet = Process::start(&config, &matrix_env());
    wavelet.wait_logged("wavelet running", START).await;
    alice.wait_for_members(&north, 2).await;
    alice.say(&north, "!concern").await;
    let dm = alice.expect("Child's initials", None, Some(&north)).await;
    alice.say(&dm, "AB 2015").await;
    alice.expect("What kind of concern", Some(&dm), None).await;
    stop_cleanly(&mut wavelet, libc::SIGTERM, "matrix, SIGTERM").await;

    // Said while Wavelet was stopped: taken at the next start, and the dialog goes on.
    alice.say(&dm, "1").await;
    let mut wavelet = Process::start(&config, &matrix_env());
    alice.expect("Is the child at immediate risk", Some(&dm), None).await;
    stop_cleanly(&mut wavelet, libc::SIGINT, "matrix, SIGINT").await;
}

/// matrix-sdk saves its sync position before it hands the events to Wavelet: killed in
/// between, a start that resumed from that position would never see them. Wavelet resumes
/// from its own, kept once a sync's events are committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_matrix_a_kill_while_a_sync_is_handled_loses_none_of_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let (server, alice, north) = matrix_world(dir.path()).await;
    let config = world::config(dir.path(), &server, &north);
    let mut env = matrix_env();
    env.push(("WAVELET_TEST_CRASH_AT", "matrix.event_received:1"));
    let mut wavelet = Process::start(&config, &env);
    wavelet.wait_logged("wavelet running", START).await;
    alice.wait_for_members(&north, 2).await;
    alice.say(&north, "!concern").await;
    let status = wavelet.wait_exit(START).await;
    assert!(!status.success(), "killed at the crash point: {status}");

    let mut wavelet = Process::start(&config, &matrix_env());
    let dm = alice.expect("Child's initials", None, Some(&north)).await;
    alice.say(&dm, "AB 2015").await;
    alice.expect("What kind of concern", Some(&dm), None).await;
    assert_eq!(alice.count_seen("Child's initials"), 0, "asked once, not again");
    stop_cleanly(&mut wavelet, libc::SIGTERM, "matrix, after a crash").await;
}

/// Killed just after it made alice's direct room (before recording it), or just after it
/// recorded it (before the first send there): the next start uses that room, and alice
/// gets each message once, in one direct room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_matrix_a_kill_around_making_a_direct_room_leaves_one_room_and_each_message_once() {
    for point in ["matrix.direct_room_created", "matrix.direct_room_recorded"] {
        let dir = tempfile::tempdir().unwrap();
        let (server, alice, north) = matrix_world(dir.path()).await;
        let config = world::config(dir.path(), &server, &north);
        let crash_at = format!("{point}:1");
        let mut env = matrix_env();
        env.push(("WAVELET_TEST_CRASH_AT", &crash_at));
        let mut wavelet = Process::start(&config, &env);
        wavelet.wait_logged("wavelet running", START).await;
        alice.wait_for_members(&north, 2).await;
        alice.say(&north, "!concern").await;
        let status = wavelet.wait_exit(START).await;
        assert!(!status.success(), "{point}: killed at the crash point: {status}");

        let mut wavelet = Process::start(&config, &matrix_env());
        let dm = alice.expect("Child's initials", None, Some(&north)).await;
        alice.say(&dm, "AB 2015").await;
        alice.expect("What kind of concern", Some(&dm), None).await;
        // Time for a second invite, had there been one, to reach alice.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut rooms: Vec<OwnedRoomId> = alice.client.rooms().iter().map(|r| r.room_id().to_owned()).collect();
        rooms.retain(|r| *r != north);
        assert_eq!(rooms, vec![dm.clone()], "{point}: one direct room");
        assert_eq!(alice.count_seen("Child's initials"), 0, "{point}: asked once");
        stop_cleanly(&mut wavelet, libc::SIGTERM, point).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_discord_a_sigterm_stops_it_cleanly_mid_dialog_and_closes_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let server = discord_world::start_server(ServerOptions::default()).await;
    let config = discord_world::config(dir.path(), &server, Options::default());
    let env = [("WAVELET_DISCORD_TOKEN", server.token())];
    let mut wavelet = Process::start(&config, &env);
    wavelet.wait_logged("wavelet running", START).await;
    server.wait_identified(discord_world::WAIT).await.unwrap();
    discord_world::eventually("the slash commands", || discord_world::command_registrations(&server) > 0).await;
    let in_north = Place::Guild { guild_id: GUILD, channel_id: NORTH };
    let slash = server.dispatch_interaction(IncomingInteraction::slash_command(alice(), in_north, "concern")).unwrap();
    assert!(server.wait_for_callback(slash.id, discord_world::WAIT).await.unwrap().accepted());
    expect_dm(&server, &alice(), "Child's initials").await;
    discord_world::eventually("the gateway to be connected", || server.current_session().is_some()).await;
    stop_cleanly(&mut wavelet, libc::SIGTERM, "discord, SIGTERM").await;
    assert!(wavelet.logged("discord gateway closed"), "the gateway was closed, not dropped");

    // The next start identifies again and the dialog goes on.
    let identified = server.gateway_stats().identifies;
    let mut wavelet = Process::start(&config, &env);
    server.wait_for_stats(|s| s.identifies > identified, discord_world::WAIT).await.unwrap();
    server.dispatch_message(IncomingMessage::dm(alice(), "AB 2015"));
    expect_dm(&server, &alice(), "What kind of concern").await;
    stop_cleanly(&mut wavelet, libc::SIGTERM, "discord, second SIGTERM").await;
}

/// Discord will not have the bot any more (the token was reset: close code 4004): the
/// process stops on its own, cleanly, and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_discord_a_revoked_token_stops_it_with_an_error_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let server = discord_world::start_server(ServerOptions::default()).await;
    let config = discord_world::config(dir.path(), &server, Options::default());
    let mut wavelet = Process::start(&config, &[("WAVELET_DISCORD_TOKEN", server.token())]);
    wavelet.wait_logged("wavelet running", START).await;
    server.wait_identified(discord_world::WAIT).await.unwrap();
    server.close_connection(4004, "Authentication failed.").unwrap();
    let status = wavelet.wait_exit(STOP_BOUND).await;
    let log = wavelet.log().join("\n");
    assert_eq!(status.code(), Some(1), "a failure exit, not a panic or a signal: {status}; log:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("wavelet stopped"), "stopped in order: {log}");
    assert!(log.contains("WAVELET_DISCORD_TOKEN"), "says which setting to fix: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_matrix_and_discord_a_sigint_stops_both_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (synapse, alice_m, north_m) = matrix_world(dir.path()).await;
    let discord = discord_world::start_server(ServerOptions::default()).await;
    let config = both_config(dir.path(), &synapse, &north_m, &discord);
    let mut env = matrix_env();
    env.push(("WAVELET_DISCORD_TOKEN", discord.token()));
    let mut wavelet = Process::start(&config, &env);
    wavelet.wait_logged("wavelet running", START).await;
    discord.wait_identified(discord_world::WAIT).await.unwrap();
    alice_m.wait_for_members(&north_m, 2).await;
    alice_m.say(&north_m, "!concern").await;
    alice_m.expect("Child's initials", None, Some(&north_m)).await;
    stop_cleanly(&mut wavelet, libc::SIGINT, "matrix and discord, SIGINT").await;
}

/// The group's rooms on both platforms: alice on Matrix (and Discord), bea on Discord.
fn both_config(dir: &Path, synapse: &Synapse, room: &OwnedRoomId, discord: &Server) -> PathBuf {
    let text = discord_world::discord_text(
        dir,
        Options::default(),
        &format!("rooms = [\"matrix:{room}\", \"discord:{NORTH}\"]"),
    )
    .replace(
        &format!("accounts = {{ console = \"alice\", discord = \"{}\" }}", alice().id),
        &format!("accounts = {{ console = \"alice\", discord = \"{}\", matrix = \"@alice:localhost\" }}", alice().id),
    );
    let text = format!(
        "{text}\n[matrix]\nhomeserver = \"{}\"\nuser = \"@wavelet:localhost\"\nstate_dir = \"{}\"\n\n[discord]\napi_base = \"{}\"\n",
        synapse.base_url(),
        dir.join("matrix-state").display(),
        discord.http_url()
    );
    let path = dir.join("wavelet.toml");
    std::fs::write(&path, text).unwrap();
    path
}
