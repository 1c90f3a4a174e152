//! Reply latency on a real Synapse: a practitioner's message to the bot's answer arriving
//! at the practitioner's client, for Wavelet and, interleaved with it on the same server,
//! for a minimal echo bot (a matrix-sdk client that sends back what it hears: the floor
//! any bot on that server can reach). In unencrypted and in encrypted direct rooms, with
//! Wavelet on SQLite and, when `DATABASE_URL` is set, on PostgreSQL.
//!
//! Wavelet's round trips are the answers of the shipped concern dialog (each answer gets
//! the next question; the last gets the thank-you, sent after the group's summary), so
//! each one is a full step: inbox, replay, ledger, outbox, commit, then delivery.
//!
//! Then a person's first question: people new to Wavelet join the group's room (Wavelet
//! opens their direct room as they join) and each raises a concern; the time from their
//! `!concern` to the first question at their client, and the same for a second concern
//! (after `!cancel`), when nothing is new.
//!
//! `cargo bench -p wavelet --features matrix --bench matrix_latency` (scripts/bench runs it
//! with the venv and a durable PostgreSQL). `WAVELET_BENCH_ROUND_TRIPS` sets the number
//! of round trips per bot and room kind (default 300); `WAVELET_BENCH_NEW_PEOPLE` the
//! number of people new to Wavelet (default 10; 0 leaves that part out).
#![recursion_limit = "256"]

#[path = "../../../tests/support/synapse.rs"]
mod synapse;
#[path = "../../../tests/support/matrix_world.rs"]
mod world;

use matrix_sdk::ruma::OwnedRoomId;
use matrix_sdk::ruma::events::room::member::StrippedRoomMemberEvent;
use matrix_sdk::ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::{Client, Room, RoomState};
use std::path::Path;
use std::time::{Duration, Instant};
use synapse::Synapse;
use world::{Bot, Person};

/// Round trips left out at the start of each series (first sends share room keys, warm
/// caches and open connections).
const WARM_UP: usize = 8;

/// The concern dialog's answers, each with the start of the answer it gets.
const DIALOG: [(&str, &str); 4] = [
    ("AB 2015", "What kind of concern"),
    ("1", "Is the child at immediate risk"),
    ("no", "What did you see or hear"),
    ("Seen at drop-off, hungry again.", "Thank you."),
];

fn main() {
    // A trace of where a round trip goes: WAVELET_LOG=wavelet=debug,bench=debug (ids only).
    if std::env::var("WAVELET_LOG").is_ok() {
        world::log_to_test_output();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    rt.block_on(async {
        let n: usize = std::env::var("WAVELET_BENCH_ROUND_TRIPS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Synapse::start().await;
        let alice = Person::new(&server, dir.path(), "alice").await;
        println!("reply latency on a local Synapse, {n} round trips per bot and room kind (after {WARM_UP} warm-up)");
        println!(
            "{:<12} {:<9} {:<8} {:>5} {:>9} {:>9} {:>9}   p50 by answer 1-4 ms",
            "room", "store", "bot", "n", "p50 ms", "p99 ms", "mean ms"
        );
        let mut scenario = 0;
        for encrypted in [false, true] {
            for backend in ["sqlite", "postgres"] {
                let store = match backend {
                    "postgres" => match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
                        Some(base) => Some(fresh_pg(&base, scenario).await),
                        None => {
                            println!("postgres skipped: set DATABASE_URL (scripts/bench does) to measure it");
                            continue;
                        }
                    },
                    _ => None,
                };
                scenario += 1;
                let sdir = dir.path().join(format!("s{scenario}"));
                std::fs::create_dir_all(&sdir).unwrap();
                let (echo, wavelet) = measure(&server, &alice, &sdir, scenario, encrypted, store, n).await;
                let room = if encrypted { "encrypted" } else { "unencrypted" };
                report(room, backend, "echo", &echo.iter().map(|t| t.0).collect::<Vec<_>>(), &by_answer(&echo));
                report(
                    room,
                    backend,
                    "wavelet",
                    &wavelet.iter().map(|t| t.0).collect::<Vec<_>>(),
                    &by_answer(&wavelet),
                );
            }
        }
        let k: usize = std::env::var("WAVELET_BENCH_NEW_PEOPLE").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
        if k > 0 {
            let fdir = dir.path().join("first");
            std::fs::create_dir_all(&fdir).unwrap();
            let (first, later) = first_questions(&server, &alice, &fdir, k).await;
            println!("\nthe first question of a concern, from `!concern` in the group's room, {k} people new to Wavelet (SQLite)");
            println!("{:<34} {:>5} {:>9} {:>9} {:>9}", "", "n", "p50 ms", "max ms", "mean ms");
            for (what, times) in [("first concern (room opened ahead)", &first), ("second concern", &later)] {
                let ms = sorted_ms(times);
                let mean = ms.iter().sum::<f64>() / ms.len() as f64;
                println!(
                    "{what:<34} {:>5} {:>9.1} {:>9.1} {:>9.1}",
                    ms.len(),
                    quantile(&ms, 0.50),
                    ms[ms.len() - 1],
                    mean
                );
            }
        }
    });
}

/// `k` people new to Wavelet join the group's room, wait until the direct room Wavelet
/// opens for them is theirs, and raise a concern each: the times to their first question,
/// then (after `!cancel`) to the first question of a second concern.
async fn first_questions(server: &Synapse, alice: &Person, dir: &Path, k: usize) -> (Vec<Duration>, Vec<Duration>) {
    let bot_name = "wavelet_first";
    server.register(bot_name, "wavelet-password", false).await;
    let mut people = Vec::new();
    for i in 0..k {
        people.push(Person::new(server, dir, &format!("p{i}")).await);
    }
    let north = alice.create_room(vec![server.user_id(bot_name).try_into().unwrap()], false, false).await;
    let config = world::config(dir, server, &north);
    let ids: Vec<String> = (0..k).map(|i| format!("p{i}")).collect();
    let members: String = ids.iter().map(|id| format!(", \"{id}\"")).collect();
    let mut text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("@wavelet:localhost", &server.user_id(bot_name))
        .replace("members = [\"alice\", \"bea\"", &format!("members = [\"alice\", \"bea\"{members}"));
    for id in &ids {
        text.push_str(&format!(
            "\n[[person]]\nid = \"{id}\"\nname = \"{id}\"\nagency = \"st-marys\"\nroles = [\"practitioner\"]\naccounts = {{ matrix = \"{}\" }}\n",
            server.user_id(id)
        ));
    }
    std::fs::write(&config, text).unwrap();
    let bot = Bot::start(&config).await;
    alice.wait_for_members(&north, 2).await;
    let group = alice.client.get_room(&north).unwrap();
    for p in &people {
        group.invite_user_by_id(&p.user_id()).await.unwrap();
    }
    // Each has joined, and joined the direct room Wavelet opened for them.
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in &people {
        while p.client.rooms().iter().filter(|r| r.state() == RoomState::Joined).count() < 2 {
            assert!(Instant::now() < deadline, "no direct room opened for {}", p.user_id());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (mut first, mut later) = (Vec::new(), Vec::new());
    for p in &people {
        let start = Instant::now();
        p.say(&north, "!concern").await;
        let seen = p.expect_seen("Child's initials", None, Some(&north)).await;
        first.push(seen.at - start);
        p.say(&seen.room, "!cancel").await;
        p.expect("", Some(&seen.room), None).await;
        let start = Instant::now();
        p.say(&north, "!concern").await;
        later.push(p.expect_seen("Child's initials", None, Some(&north)).await.at - start);
    }
    bot.stop().await;
    (first, later)
}

/// One series: a fresh Wavelet (its own account and store) and a fresh echo bot, each in
/// a direct room with alice of the given kind; `n` round trips each, interleaved. Each time
/// comes with the index of the dialog's answer it was (0 to 3).
async fn measure(
    server: &Synapse,
    alice: &Person,
    dir: &Path,
    scenario: usize,
    encrypted: bool,
    store: Option<String>,
    n: usize,
) -> (Vec<(Duration, usize)>, Vec<(Duration, usize)>) {
    let bot_name = format!("wavelet{scenario}");
    let echo_name = format!("echo{scenario}");
    server.register(&bot_name, "wavelet-password", false).await;
    let bot_id = server.user_id(&bot_name).try_into().unwrap();
    let echo = EchoBot::start(server, dir, &echo_name).await;

    // The group's room and Wavelet, then the two direct rooms alice opens.
    let north = alice.create_room(vec![bot_id], encrypted, false).await;
    let config = world::config(dir, server, &north);
    let mut text = std::fs::read_to_string(&config).unwrap().replace("@wavelet:localhost", &server.user_id(&bot_name));
    if let Some(url) = &store {
        let sqlite = format!("url = \"sqlite://{}\"", dir.join("w.db").display());
        text = text.replace(&sqlite, &format!("url = \"{url}\""));
    }
    std::fs::write(&config, text).unwrap();
    let bot = Bot::start(&config).await;
    alice.wait_for_members(&north, 2).await;
    let dm = alice.create_room(vec![server.user_id(&bot_name).try_into().unwrap()], encrypted, true).await;
    let echo_dm = alice.create_room(vec![server.user_id(&echo_name).try_into().unwrap()], encrypted, true).await;
    alice.wait_for_members(&dm, 2).await;
    alice.wait_for_members(&echo_dm, 2).await;
    // Speaking in the direct room first makes it the one Wavelet asks in.
    alice.say(&dm, "!help").await;
    alice.expect("", Some(&dm), None).await;

    let (mut echo_times, mut wavelet_times) = (Vec::new(), Vec::new());
    let mut i = 0;
    while wavelet_times.len() < n + WARM_UP {
        alice.say(&north, "!concern").await;
        alice.expect("Child's initials", Some(&dm), None).await;
        for (at, (answer, reply)) in DIALOG.into_iter().enumerate() {
            let word = format!("echo {i}");
            echo_times.push((round_trip(alice, &echo_dm, &word, &word).await, at));
            wavelet_times.push((round_trip(alice, &dm, answer, reply).await, at));
            i += 1;
        }
        // The group's summaries are not timed.
        alice.seen.lock().unwrap().retain(|s| s.room != north);
    }
    bot.stop().await;
    echo.stop();
    let keep = |v: Vec<(Duration, usize)>| v.into_iter().skip(WARM_UP).take(n).collect();
    (keep(echo_times), keep(wavelet_times))
}

/// Sends `text` in `room` and waits for an answer starting with `reply` there; the time
/// from just before the send to the answer's arrival at alice's client.
async fn round_trip(alice: &Person, room: &OwnedRoomId, text: &str, reply: &str) -> Duration {
    let start = Instant::now();
    tracing::debug!(target: "bench", "alice sends");
    alice.say(room, text).await;
    tracing::debug!(target: "bench", "alice sent");
    let seen = alice.expect_seen(reply, Some(room), None).await.at;
    tracing::debug!(target: "bench", "alice got the reply");
    seen - start
}

fn report(room: &str, store: &str, bot: &str, times: &[Duration], more: &str) {
    let ms = sorted_ms(times);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "{room:<12} {store:<9} {bot:<8} {:>5} {:>9.1} {:>9.1} {:>9.1}   {more}",
        ms.len(),
        quantile(&ms, 0.50),
        quantile(&ms, 0.99),
        mean
    );
}

/// The median at each of the dialog's answers apart (for the echo bot, the line sent just
/// before it): Wavelet's step for the last answer sends the group's summary too, so it is
/// not the same work as the others.
fn by_answer(times: &[(Duration, usize)]) -> String {
    (0..DIALOG.len())
        .map(|at| {
            let ms = sorted_ms(&times.iter().filter(|t| t.1 == at).map(|t| t.0).collect::<Vec<_>>());
            if ms.is_empty() { "-".to_string() } else { format!("{:.1}", quantile(&ms, 0.50)) }
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

fn sorted_ms(times: &[Duration]) -> Vec<f64> {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A new database on `DATABASE_URL`'s server.
async fn fresh_pg(base: &str, scenario: usize) -> String {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(base).await.expect("DATABASE_URL reachable");
    let db = format!("wavelet_bench_latency_{scenario}_{}", std::process::id());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}"))).execute(&mut c).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut c).await.unwrap();
    let (head, _) = base.rsplit_once('/').expect("a database URL");
    format!("{head}/{db}")
}

/// The floor: a matrix-sdk client that joins what it is invited to and sends back every
/// text it hears, at once, syncing in a loop of `sync_once` as Wavelet does, with its store
/// encrypted as Wavelet's is.
struct EchoBot {
    sync: tokio::task::JoinHandle<()>,
}

impl EchoBot {
    async fn start(server: &Synapse, dir: &Path, name: &str) -> EchoBot {
        server.register(name, "echo-password", false).await;
        // Its store encrypted with a passphrase, as Wavelet's is: the same cost per event.
        let store = dir.join(format!("client-{name}"));
        let passphrase = world::secrets().passphrase;
        let client =
            world::logged_in_with_store_passphrase(server, &store, name, "echo-password", passphrase.as_deref()).await;
        client.add_event_handler(|ev: StrippedRoomMemberEvent, room: Room, client: Client| async move {
            if Some(ev.state_key.as_ref()) == client.user_id() && room.state() == RoomState::Invited {
                let _ = room.join().await;
            }
        });
        client.add_event_handler(|ev: OriginalSyncRoomMessageEvent, room: Room, client: Client| async move {
            if Some(ev.sender.as_ref()) == client.user_id() || room.state() != RoomState::Joined {
                return;
            }
            if let MessageType::Text(t) = &ev.content.msgtype {
                tracing::debug!(target: "bench", "echo heard");
                let _ = room.send(RoomMessageEventContent::text_plain(&t.body)).await;
                tracing::debug!(target: "bench", "echo sent");
            }
        });
        // The same sync loop as Wavelet's adapter (matrix-sdk's `Client::sync` would wait a
        // second between quick syncs: not the floor).
        let sync = tokio::spawn(world::sync_forever(client));
        EchoBot { sync }
    }

    fn stop(self) {
        self.sync.abort();
    }
}
