//! The Synapse harness (`support/synapse.rs`) itself, over plain client-server API calls:
//! users it registers are real, rooms work, rate limits stay out of the way, and a
//! restart keeps the database, the tokens and the port. Needs the venv from
//! `scripts/synapse-venv` (`scripts/test` makes it).

#[path = "support/synapse.rs"]
mod synapse;

use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use synapse::Synapse;

/// `BASE/_matrix/client/v3/SEGMENTS…`, each segment percent-encoded (room ids hold `!`).
fn client_url(server: &Synapse, segments: &[&str]) -> Url {
    let mut url = Url::parse(server.base_url()).unwrap();
    url.path_segments_mut().unwrap().extend(["_matrix", "client", "v3"]).extend(segments);
    url
}

/// One client-server API call (`token` "" for none); returns the status and the JSON body.
async fn call(
    server: &Synapse,
    method: Method,
    segments: &[&str],
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = server.http().request(method, client_url(server, segments));
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{segments:?}: {e}\n{}", server.log_tail(20)));
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{segments:?}: not JSON ({e}): {text}")))
}

async fn whoami(server: &Synapse, token: &str) -> (StatusCode, Value) {
    call(server, Method::GET, &["account", "whoami"], token, None).await
}

async fn joined_members(server: &Synapse, room: &str, token: &str) -> Vec<String> {
    let (status, body) = call(server, Method::GET, &["rooms", room, "joined_members"], token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut members: Vec<String> = body["joined"].as_object().unwrap().keys().cloned().collect();
    members.sort();
    members
}

#[tokio::test]
async fn registered_users_share_a_room_and_keep_their_tokens_across_a_restart() {
    let mut server = Synapse::start().await;
    assert_eq!(server.server_name(), "localhost");
    assert!(server.base_url().starts_with("http://127.0.0.1:"), "{}", server.base_url());

    let (alice, alice_token) = server.register("alice", "alice-password", false).await;
    let (bob, bob_token) = server.register("bob", "bob-password", true).await;
    assert_eq!(alice, "@alice:localhost");
    assert_eq!(bob, server.user_id("bob"));
    assert_ne!(alice_token, bob_token);

    for (user, token) in [(&alice, &alice_token), (&bob, &bob_token)] {
        let (status, body) = whoami(&server, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["user_id"], json!(user));
    }
    let (status, body) = whoami(&server, "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");

    // Alice's private room: Bob can join only once invited.
    let create = json!({ "preset": "private_chat", "name": "north" });
    let (status, body) = call(&server, Method::POST, &["createRoom"], &alice_token, Some(create)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    assert!(room.starts_with('!'), "{room}");
    let (status, body) = call(&server, Method::POST, &["rooms", &room, "join"], &bob_token, Some(json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "joined uninvited: {body}");
    let invite = json!({ "user_id": bob });
    let (status, body) = call(&server, Method::POST, &["rooms", &room, "invite"], &alice_token, Some(invite)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&server, Method::POST, &["rooms", &room, "join"], &bob_token, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], json!(room));
    assert_eq!(joined_members(&server, &room, &alice_token).await, [alice.clone(), bob.clone()]);

    // A message with a transaction id: the id the outbox's idempotency key becomes.
    let message = json!({ "msgtype": "m.text", "body": "hello" });
    let send = ["rooms", room.as_str(), "send", "m.room.message", "wavelet-txn-1"];
    let (status, body) = call(&server, Method::PUT, &send, &bob_token, Some(message.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();

    // Restart: a new process on the same port and database.
    let (port, pid) = (server.port(), server.pid().unwrap());
    server.restart().await;
    assert_eq!(server.port(), port);
    assert_ne!(server.pid().unwrap(), pid);
    eprintln!("restarted in {:.1?}", server.startup_time());
    let (status, body) = whoami(&server, &alice_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], json!(alice));
    assert_eq!(joined_members(&server, &room, &bob_token).await, [alice.clone(), bob.clone()]);
    // Synapse kept the transaction: a resend after the restart is the same event.
    let (status, body) = call(&server, Method::PUT, &send, &bob_token, Some(message)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event_id"], json!(event_id), "a resend after the restart made a new event");

    // Stopped, the server refuses connections; started again, it serves the same data.
    server.stop().await;
    assert!(!server.is_running());
    let refused = server.http().get(client_url(&server, &["account", "whoami"])).bearer_auth(&bob_token).send().await;
    assert!(refused.as_ref().is_err_and(reqwest::Error::is_connect), "{refused:?}");
    server.restart().await;
    let (status, body) = whoami(&server, &bob_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], json!(bob));
}

/// Synapse's defaults refuse the 4th quick login from one address, the 11th room and the
/// 11th message in a burst; tests must never meet those limits.
#[tokio::test]
async fn rate_limits_stay_out_of_the_way_of_tests() {
    let server = Synapse::start().await;
    let (carol, carol_token) = server.register("carol", "carol-password", false).await;

    for attempt in 0..8 {
        let login = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": "carol" },
            "password": "carol-password",
        });
        let (status, body) = call(&server, Method::POST, &["login"], "", Some(login)).await;
        assert_eq!(status, StatusCode::OK, "login {attempt}: {body}");
        assert_eq!(body["user_id"], json!(carol));
    }

    let mut rooms = Vec::new();
    for n in 0..12 {
        let (status, body) = call(&server, Method::POST, &["createRoom"], &carol_token, Some(json!({}))).await;
        assert_eq!(status, StatusCode::OK, "room {n}: {body}");
        rooms.push(body["room_id"].as_str().unwrap().to_owned());
    }
    rooms.sort();
    rooms.dedup();
    assert_eq!(rooms.len(), 12);

    for n in 0..15 {
        let txn = format!("burst-{n}");
        let send = ["rooms", rooms[0].as_str(), "send", "m.room.message", txn.as_str()];
        let message = json!({ "msgtype": "m.text", "body": format!("message {n}") });
        let (status, body) = call(&server, Method::PUT, &send, &carol_token, Some(message)).await;
        assert_eq!(status, StatusCode::OK, "message {n}: {body}");
    }
}
