//! The gateway, spoken to frame by frame: the paths a well-behaved serenity never takes (bad
//! opcodes, unknown sessions, intents it lacks) must still behave as Discord documents.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wavelet_discord_server::{IncomingMessage, Server, ServerOptions, TestUser, intents};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);
const GUILD: u64 = 700_000_000_000_000_001;
const CHANNEL: u64 = 700_000_000_000_000_002;
const MESSAGES: u64 = intents::GUILD_MESSAGES | intents::DIRECT_MESSAGES | intents::MESSAGE_CONTENT;

/// What the client read next.
#[derive(Debug, PartialEq)]
enum Read {
    Frame(Value),
    /// A close frame: code and reason.
    Closed(u16, String),
    /// The connection ended without a closing handshake.
    Dropped,
}

fn alex() -> TestUser {
    TestUser::human(800_000_000_000_000_001, "alex")
}

async fn connect(server: &Server) -> Result<Socket> {
    let (socket, _) = tokio_tungstenite::connect_async(format!("{}/?v=10&encoding=json", server.gateway_url())).await?;
    Ok(socket)
}

async fn read(socket: &mut Socket) -> Result<Read> {
    loop {
        let next = tokio::time::timeout(WAIT, socket.next()).await.context("nothing arrived")?;
        return Ok(match next {
            Some(Ok(Message::Text(text))) => Read::Frame(serde_json::from_str(&text)?),
            Some(Ok(Message::Close(Some(frame)))) => Read::Closed(frame.code.into(), frame.reason.into_owned()),
            Some(Ok(Message::Close(None))) => Read::Closed(1005, String::new()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => bail!("unexpected {other:?}"),
            Some(Err(_)) | None => Read::Dropped,
        });
    }
}

async fn frame(socket: &mut Socket) -> Result<Value> {
    match read(socket).await? {
        Read::Frame(value) => Ok(value),
        other => bail!("expected a frame, got {other:?}"),
    }
}

async fn send(socket: &mut Socket, value: Value) -> Result<()> {
    socket.send(Message::Text(value.to_string())).await?;
    Ok(())
}

fn identify(token: &str, intents: u64) -> Value {
    json!({ "op": 2, "d": {
        "token": token,
        "intents": intents,
        "properties": { "os": "linux", "browser": "test", "device": "test" },
    }})
}

fn resume(token: &str, session_id: &str, seq: u64) -> Value {
    json!({ "op": 6, "d": { "token": token, "session_id": session_id, "seq": seq } })
}

/// Connects, reads HELLO, identifies and reads READY; returns the socket and session id.
async fn identified(server: &Server, intents: u64) -> Result<(Socket, String)> {
    let mut socket = connect(server).await?;
    frame(&mut socket).await?;
    send(&mut socket, identify(server.token(), intents)).await?;
    let ready = frame(&mut socket).await?;
    assert_eq!((ready["t"].as_str(), ready["s"].as_u64()), (Some("READY"), Some(1)), "{ready}");
    Ok((socket, ready["d"]["session_id"].as_str().context("session_id")?.to_owned()))
}

#[tokio::test]
async fn hello_comes_first_then_ready_and_heartbeats_are_acknowledged() -> Result<()> {
    let options = ServerOptions { heartbeat_interval: Duration::from_millis(1234), ..ServerOptions::default() };
    let server = Server::start(options).await?;
    let mut socket = connect(&server).await?;
    let hello = frame(&mut socket).await?;
    assert_eq!(hello, json!({ "op": 10, "d": { "heartbeat_interval": 1234 }, "s": null, "t": null }));

    // The token may come with or without the `Bot ` prefix.
    send(&mut socket, identify(&format!("Bot {}", server.token()), MESSAGES)).await?;
    let ready = frame(&mut socket).await?;
    assert_eq!((ready["op"].as_u64(), ready["t"].as_str(), ready["s"].as_u64()), (Some(0), Some("READY"), Some(1)));
    assert_eq!(ready["d"]["user"]["id"], server.bot().id.to_string());
    assert_eq!(ready["d"]["application"]["id"], server.application_id().to_string());
    assert_eq!(ready["d"]["resume_gateway_url"], server.gateway_url());
    assert_eq!(ready["d"]["application"]["flags"], 1 << 19, "GATEWAY_MESSAGE_CONTENT_LIMITED");

    send(&mut socket, json!({ "op": 1, "d": 1 })).await?;
    assert_eq!(frame(&mut socket).await?["op"], 11);
    assert_eq!(server.gateway_stats().heartbeats, 1);

    // A zombie connection: heartbeats are counted but not acknowledged.
    server.withhold_heartbeat_acks(true);
    send(&mut socket, json!({ "op": 1, "d": 1 })).await?;
    assert!(tokio::time::timeout(Duration::from_millis(200), socket.next()).await.is_err(), "no ACK");
    assert_eq!(server.gateway_stats().heartbeats, 2);
    Ok(())
}

#[tokio::test]
async fn protocol_errors_close_with_discords_codes() -> Result<()> {
    let server = Server::start(ServerOptions::default()).await?;
    let cases: Vec<(&str, Vec<Value>, u16)> = vec![
        ("wrong token", vec![identify("nope", MESSAGES)], 4004),
        ("presence update before identifying", vec![json!({ "op": 3, "d": { "status": "online" } })], 4003),
        ("an opcode clients never send", vec![json!({ "op": 11 })], 4001),
        ("no intents", vec![json!({ "op": 2, "d": { "token": server.token(), "properties": {} } })], 4013),
        ("privileged intent not switched on", vec![identify(server.token(), intents::GUILD_MEMBERS)], 4014),
        (
            "bad shard",
            vec![json!({ "op": 2, "d": { "token": server.token(), "intents": 0, "shard": [1, 1], "properties": {} } })],
            4010,
        ),
        ("identify twice", vec![identify(server.token(), MESSAGES), identify(server.token(), MESSAGES)], 4005),
    ];
    for (case, frames, code) in cases {
        let mut socket = connect(&server).await?;
        frame(&mut socket).await?;
        for f in frames {
            send(&mut socket, f).await?;
        }
        let closed = loop {
            match read(&mut socket).await? {
                Read::Frame(f) if f["t"] == "READY" => continue,
                other => break other,
            }
        };
        assert!(matches!(&closed, Read::Closed(c, _) if *c == code), "{case}: {closed:?}");
    }

    let mut socket = connect(&server).await?;
    frame(&mut socket).await?;
    socket.send(Message::Text("{ not json".into())).await?;
    assert!(matches!(read(&mut socket).await?, Read::Closed(4002, _)));

    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{}/?v=6", server.gateway_url())).await?;
    frame(&mut socket).await?;
    assert!(matches!(read(&mut socket).await?, Read::Closed(4012, _)));
    assert_eq!(server.gateway_stats().authentication_failures, 1);
    Ok(())
}

#[tokio::test]
async fn resume_replays_what_was_missed_in_order_then_resumed() -> Result<()> {
    let server = Server::start(ServerOptions::default()).await?;
    let (mut socket, session_id) = identified(&server, MESSAGES).await?;
    let say = |text: &str| server.dispatch_message(IncomingMessage::guild(alex(), GUILD, CHANNEL, text));

    let first = say("one");
    assert_eq!(first.seq, Some(2));
    assert_eq!(frame(&mut socket).await?["d"]["content"], "one");
    let second = say("two");
    // The client saw the connection drop before it processed "two".
    server.drop_connection()?;
    assert_eq!(read(&mut socket).await?, Read::Frame(frame_of_seq(&server, second.seq)?));
    assert_eq!(read(&mut socket).await?, Read::Dropped, "no closing handshake");
    let third = say("three");
    assert_eq!(third.seq, Some(4), "dispatches continue the session's sequence while disconnected");

    let mut socket = connect(&server).await?;
    frame(&mut socket).await?;
    send(&mut socket, resume(server.token(), &session_id, 2)).await?;
    let replayed = [frame(&mut socket).await?, frame(&mut socket).await?];
    let seen: Vec<_> = replayed.iter().map(|f| (f["s"].as_u64(), f["d"]["content"].as_str())).collect();
    assert_eq!(seen, vec![(Some(3), Some("two")), (Some(4), Some("three"))]);
    let resumed = frame(&mut socket).await?;
    assert_eq!((resumed["t"].as_str(), resumed["s"].as_u64()), (Some("RESUMED"), Some(5)));
    assert_eq!(say("four").seq, Some(6));
    assert_eq!(frame(&mut socket).await?["d"]["content"], "four");
    let stats = server.gateway_stats();
    assert_eq!((stats.identifies, stats.resumes), (1, 1));
    Ok(())
}

/// The frame a dispatch with this sequence number was sent as (it is what the client would read).
fn frame_of_seq(server: &Server, seq: Option<u64>) -> Result<Value> {
    let message = server.messages_in(CHANNEL).into_iter().last().context("a message")?;
    Ok(json!({
        "op": 0,
        "t": "MESSAGE_CREATE",
        "s": seq,
        "d": wavelet_discord_server::payloads::message_create(&message, true),
    }))
}

#[tokio::test]
async fn resuming_an_unknown_session_or_from_the_future_is_refused() -> Result<()> {
    let server = Server::start(ServerOptions::default()).await?;
    let mut socket = connect(&server).await?;
    frame(&mut socket).await?;
    send(&mut socket, resume(server.token(), "no-such-session", 1)).await?;
    assert_eq!(frame(&mut socket).await?, json!({ "op": 9, "d": false, "s": null, "t": null }));
    assert_eq!(server.gateway_stats().invalid_sessions, 1);

    let (_live, session_id) = identified(&server, MESSAGES).await?;
    let mut socket = connect(&server).await?;
    frame(&mut socket).await?;
    send(&mut socket, resume(server.token(), &session_id, 99)).await?;
    assert!(matches!(read(&mut socket).await?, Read::Closed(4007, _)));

    server.invalidate_session()?;
    let mut socket = connect(&server).await?;
    frame(&mut socket).await?;
    send(&mut socket, resume(server.token(), &session_id, 1)).await?;
    assert_eq!(frame(&mut socket).await?["op"], 9, "an invalidated session cannot be resumed");
    Ok(())
}

#[tokio::test]
async fn intents_decide_which_messages_arrive_and_with_what_content() -> Result<()> {
    let server = Server::start(ServerOptions::default()).await?;
    // Guild messages, but neither DMs nor message content.
    let (mut socket, _) = identified(&server, intents::GUILD_MESSAGES).await?;

    let dm = server.dispatch_message(IncomingMessage::dm(alex(), "private"));
    assert_eq!(dm.seq, None, "no DIRECT_MESSAGES, no dispatch");
    assert_eq!(server.messages_in(dm.channel_id).len(), 1, "the DM exists all the same");

    server.dispatch_message(IncomingMessage::guild(alex(), GUILD, CHANNEL, "hidden"));
    let hidden = frame(&mut socket).await?;
    assert_eq!((hidden["s"].as_u64(), hidden["d"]["content"].as_str()), (Some(2), Some("")));

    let mention = format!("<@{}> please look", server.bot().id);
    server.dispatch_message(IncomingMessage::guild(alex(), GUILD, CHANNEL, mention.clone()));
    let mentioned = frame(&mut socket).await?;
    assert_eq!(mentioned["d"]["content"], mention.as_str(), "a mention of the bot carries its content");
    assert_eq!(mentioned["d"]["mentions"][0]["id"], server.bot().id.to_string());
    Ok(())
}

#[tokio::test]
async fn reconnect_is_op_7_and_stops_dispatches_on_that_connection() -> Result<()> {
    let server = Server::start(ServerOptions::default()).await?;
    let (mut socket, session_id) = identified(&server, MESSAGES).await?;
    server.send_reconnect()?;
    assert_eq!(frame(&mut socket).await?, json!({ "op": 7, "d": null, "s": null, "t": null }));
    let missed = server.dispatch_message(IncomingMessage::guild(alex(), GUILD, CHANNEL, "missed"));
    assert!(tokio::time::timeout(Duration::from_millis(200), socket.next()).await.is_err(), "nothing more on it");
    assert!(!server.current_session().context("session")?.connected);

    let mut socket = connect(&server).await?;
    frame(&mut socket).await?;
    send(&mut socket, resume(server.token(), &session_id, 1)).await?;
    let replayed = frame(&mut socket).await?;
    assert_eq!((replayed["s"].as_u64(), replayed["d"]["content"].as_str()), (missed.seq, Some("missed")));
    assert_eq!(frame(&mut socket).await?["t"], "RESUMED");
    Ok(())
}
