//! The REST API, spoken to request by request: each rule Discord documents, checked with the
//! request a careless adapter might send.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use wavelet_discord_server::{
    CommandScope, Endpoint, Failure, IncomingInteraction, Place, Server, ServerOptions, TestUser,
};

const GUILD: u64 = 700_000_000_000_000_001;
const CHANNEL: u64 = 700_000_000_000_000_002;

fn alex() -> TestUser {
    TestUser::human(800_000_000_000_000_001, "alex")
}

struct Api {
    server: Server,
    client: reqwest::Client,
}

/// One answer: status, body (null when empty) and headers.
struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Api {
    async fn start(options: ServerOptions) -> Result<Self> {
        let server = Server::start(options).await?;
        server.add_guild_channel(GUILD, CHANNEL);
        server.add_user(alex());
        Ok(Self { server, client: reqwest::Client::new() })
    }

    async fn call_as(&self, auth: Option<&str>, method: &str, path: &str, body: Option<Value>) -> Result<Answer> {
        let url = format!("{}/api/v10{path}", self.server.http_url());
        let mut request = self.client.request(method.parse()?, url);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? };
        Ok(Answer { status, body, headers })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Answer> {
        let auth = format!("Bot {}", self.server.token());
        self.call_as(Some(&auth), method, path, body).await
    }

    async fn post_message(&self, channel: u64, body: Value) -> Result<Answer> {
        self.call("POST", &format!("/channels/{channel}/messages"), Some(body)).await
    }
}

/// Asserts a Discord error: status, code, and (for 50035) the paths of the invalid fields.
#[track_caller]
fn assert_refused(answer: &Answer, status: u16, code: u64, paths: &[&str]) {
    assert_eq!((answer.status, answer.body["code"].as_u64()), (status, Some(code)), "{}", answer.body);
    for path in paths {
        let mut node = &answer.body["errors"];
        for segment in path.split('.') {
            node = &node[segment];
        }
        assert!(node["_errors"][0]["code"].is_string(), "no error at {path}: {}", answer.body);
    }
}

#[tokio::test]
async fn every_call_needs_the_bot_token_except_where_discord_says_otherwise() -> Result<()> {
    let api = Api::start(ServerOptions::default()).await?;
    let unauthorized = json!({ "message": "401: Unauthorized", "code": 0 });
    for auth in [None, Some("Bot wrong"), Some(api.server.token()), Some("Bearer x")] {
        let answer = api.call_as(auth, "GET", "/users/@me", None).await?;
        assert_eq!((answer.status, &answer.body), (401, &unauthorized), "{auth:?}");
    }
    assert_eq!(api.call("GET", "/users/@me", None).await?.body["id"], api.server.bot().id.to_string());
    assert_eq!(api.call_as(None, "GET", "/gateway", None).await?.body["url"], api.server.gateway_url());
    assert_eq!(api.call("GET", "/gateway/bot", None).await?.body["shards"], 1);

    assert_eq!(api.call("GET", "/nowhere", None).await?.body, json!({ "message": "404: Not Found", "code": 0 }));
    assert_eq!(api.call("DELETE", "/users/@me", None).await?.status, 405);
    Ok(())
}

#[tokio::test]
async fn message_bodies_are_checked_as_discord_documents() -> Result<()> {
    let api = Api::start(ServerOptions::default()).await?;
    let eleven_embeds = vec![json!({ "description": "an embed" }); 11];
    let cases: Vec<(Value, u16, u64, Vec<&str>)> = vec![
        (json!({}), 400, 50006, vec![]),
        (json!({ "content": "" }), 400, 50006, vec![]),
        (json!({ "content": " \n\t " }), 400, 50006, vec![]),
        (json!({ "content": "x".repeat(2001) }), 400, 50035, vec!["content"]),
        (json!({ "content": "hi", "nonce": "n".repeat(26) }), 400, 50035, vec!["nonce"]),
        (json!({ "content": "hi", "embeds": eleven_embeds }), 400, 50035, vec!["embeds"]),
        (
            json!({ "content": "hi", "components": [{ "type": 1, "components": [{ "type": 2, "style": 1, "label": "Yes" }] }] }),
            400,
            50035,
            vec!["components.0.components.0.custom_id"],
        ),
        (
            json!({ "content": "hi", "components": [{ "type": 1, "components": [
                { "type": 2, "style": 1, "custom_id": "same" },
                { "type": 2, "style": 2, "custom_id": "same" },
            ] }] }),
            400,
            50035,
            vec!["components.0.components.1.custom_id"],
        ),
        (
            json!({ "content": "hi", "components": [{ "type": 2, "style": 1, "custom_id": "bare" }] }),
            400,
            50035,
            vec!["components.0.type"],
        ),
    ];
    for (body, status, code, paths) in cases {
        let answer = api.post_message(CHANNEL, body.clone()).await?;
        assert_refused(&answer, status, code, &paths);
    }
    assert!(api.server.messages_in(CHANNEL).is_empty(), "nothing refused was stored");

    let not_json = api
        .client
        .post(format!("{}/api/v10/channels/{CHANNEL}/messages", api.server.http_url()))
        .header("authorization", format!("Bot {}", api.server.token()))
        .body("{ nope")
        .send()
        .await?;
    assert_eq!(not_json.status().as_u16(), 400);
    assert_eq!(serde_json::from_str::<Value>(&not_json.text().await?)?["code"], 50109);

    assert_refused(&api.post_message(1234, json!({ "content": "hi" })).await?, 404, 10003, &[]);
    assert_refused(
        &api.call("POST", "/channels/general/messages", Some(json!({ "content": "hi" }))).await?,
        400,
        50035,
        &["channel_id"],
    );

    let ok = api
        .post_message(
            CHANNEL,
            json!({ "content": "hello", "components": [{ "type": 1, "components": [
        { "type": 2, "style": 1, "custom_id": "yes", "label": "Yes" },
        { "type": 2, "style": 5, "url": "https://example.org", "label": "Guidance" },
    ] }] }),
        )
        .await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["author"]["id"], api.server.bot().id.to_string());
    assert_eq!(ok.body["components"][0]["components"][1]["url"], "https://example.org");
    let stored = api
        .call("GET", &format!("/channels/{CHANNEL}/messages/{}", ok.body["id"].as_str().unwrap_or_default()), None)
        .await?;
    assert_eq!(stored.body, ok.body);
    Ok(())
}

#[tokio::test]
async fn enforce_nonce_returns_the_first_message_and_only_when_asked() -> Result<()> {
    let api = Api::start(ServerOptions::default()).await?;
    let first = api.post_message(CHANNEL, json!({ "content": "one", "nonce": "42" })).await?;
    // Without enforce_nonce the same nonce makes a new message.
    let second = api.post_message(CHANNEL, json!({ "content": "two", "nonce": "42" })).await?;
    assert_ne!(first.body["id"], second.body["id"]);
    // With it, the first message with that nonce comes back, unchanged; 42 and "42" are one nonce.
    let third = api.post_message(CHANNEL, json!({ "content": "three", "nonce": 42, "enforce_nonce": true })).await?;
    assert_eq!(third.status, 200);
    assert_eq!((&third.body["id"], &third.body["content"]), (&first.body["id"], &json!("one")));
    assert_eq!(api.server.messages_in(CHANNEL).len(), 2);
    assert_eq!(third.body["nonce"], "42", "the nonce is echoed as sent first");

    // The window is the server's option; past it, the nonce is fresh again.
    let api =
        Api::start(ServerOptions { nonce_window: Duration::from_millis(100), ..ServerOptions::default() }).await?;
    let first = api.post_message(CHANNEL, json!({ "content": "one", "nonce": "n", "enforce_nonce": true })).await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let later = api.post_message(CHANNEL, json!({ "content": "one", "nonce": "n", "enforce_nonce": true })).await?;
    assert_ne!(first.body["id"], later.body["id"]);
    Ok(())
}

#[tokio::test]
async fn history_pages_backward_by_default_and_forward_after_an_id() -> Result<()> {
    let api = Api::start(ServerOptions::default()).await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        let sent = api.post_message(CHANNEL, json!({ "content": format!("m{i}") })).await?;
        ids.push(sent.body["id"].as_str().unwrap().to_string());
    }
    let contents = |a: &Answer| a.body.as_array().unwrap().iter().map(|m| m["content"].clone()).collect::<Vec<_>>();
    // The newest `limit`, newest first.
    let newest = api.call("GET", &format!("/channels/{CHANNEL}/messages?limit=2"), None).await?;
    assert_eq!(contents(&newest), [json!("m4"), json!("m3")]);
    // `after`: the `limit` messages right after it (the oldest of the rest), newest first.
    let after = api.call("GET", &format!("/channels/{CHANNEL}/messages?after={}&limit=2", ids[0]), None).await?;
    assert_eq!(contents(&after), [json!("m2"), json!("m1")]);
    let before = api.call("GET", &format!("/channels/{CHANNEL}/messages?before={}&limit=2", ids[3]), None).await?;
    assert_eq!(contents(&before), [json!("m2"), json!("m1")]);
    Ok(())
}

#[tokio::test]
async fn allowed_mentions_decide_who_is_pinged() -> Result<()> {
    let api = Api::start(ServerOptions::default()).await?;
    let content = format!("<@{}> and @everyone", alex().id);
    let loud = api.post_message(CHANNEL, json!({ "content": content })).await?;
    assert_eq!(
        (loud.body["mentions"][0]["id"].as_str(), &loud.body["mention_everyone"]),
        (Some(alex().id.to_string().as_str()), &json!(true))
    );
    let quiet = api.post_message(CHANNEL, json!({ "content": content, "allowed_mentions": { "parse": [] } })).await?;
    assert_eq!((&quiet.body["mentions"], &quiet.body["mention_everyone"]), (&json!([]), &json!(false)));
    let only_alex = api
        .post_message(CHANNEL, json!({ "content": content, "allowed_mentions": { "users": [alex().id.to_string()] } }))
        .await?;
    assert_eq!(
        (only_alex.body["mentions"].as_array().map(Vec::len), &only_alex.body["mention_everyone"]),
        (Some(1), &json!(false))
    );
    assert_eq!(api.server.messages_in(CHANNEL)[1].allowed_mentions, Some(json!({ "parse": [] })));
    Ok(())
}

#[tokio::test]
async fn injected_failures_look_like_discords() -> Result<()> {
    let api = Api::start(ServerOptions::default()).await?;
    api.server.fail_next_sends(1, Failure::RateLimited { retry_after: Duration::from_millis(1500), global: false });
    let limited = api.post_message(CHANNEL, json!({ "content": "hi" })).await?;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.body, json!({ "message": "You are being rate limited.", "retry_after": 1.5, "global": false }));
    let header = |name: &str| limited.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("retry-after").as_deref(), Some("2"));
    assert_eq!(header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header("x-ratelimit-scope").as_deref(), Some("user"));
    assert!(header("x-ratelimit-reset-after").is_some() && header("x-ratelimit-bucket").is_some());

    api.server.fail_next(Endpoint::CreateDm, 2, Failure::Status(502));
    for _ in 0..2 {
        let failed =
            api.call("POST", "/users/@me/channels", Some(json!({ "recipient_id": alex().id.to_string() }))).await?;
        assert_eq!((failed.status, &failed.body), (502, &json!({ "message": "502: Bad Gateway", "code": 0 })));
    }
    assert_eq!(api.server.dm_channel_of(alex().id), None);
    let dm = api.call("POST", "/users/@me/channels", Some(json!({ "recipient_id": alex().id.to_string() }))).await?;
    assert_eq!((dm.status, dm.body["type"].as_u64()), (200, Some(1)));
    assert_eq!(api.server.messages_in(CHANNEL).len(), 0, "the 429 stored nothing");
    Ok(())
}

#[tokio::test]
async fn dms_are_opened_only_with_known_people() -> Result<()> {
    let api = Api::start(ServerOptions::default()).await?;
    let open = |id: u64| api.call("POST", "/users/@me/channels", Some(json!({ "recipient_id": id.to_string() })));
    assert_refused(&open(999).await?, 400, 50033, &[]);
    assert_refused(&open(api.server.bot().id).await?, 403, 50007, &[]);
    let bot_friend = TestUser::bot(600, "otherbot");
    api.server.add_user(bot_friend.clone());
    let channel = open(bot_friend.id).await?.body["id"].as_str().unwrap_or_default().to_owned();
    assert_refused(
        &api.call("POST", &format!("/channels/{channel}/messages"), Some(json!({ "content": "hi" }))).await?,
        403,
        50007,
        &[],
    );
    Ok(())
}

#[tokio::test]
async fn commands_are_checked_and_kept_per_scope() -> Result<()> {
    let api = Api::start(ServerOptions::default()).await?;
    let app = api.server.application_id();
    let global = format!("/applications/{app}/commands");
    let cases: Vec<(Value, &str)> = vec![
        (json!([{ "name": "Concern", "description": "upper case" }]), "0.name"),
        (json!([{ "name": "has space", "description": "space" }]), "0.name"),
        (json!([{ "name": "concern" }]), "0.description"),
        (json!([{ "name": "concern", "description": "d".repeat(101) }]), "0.description"),
        (
            json!([{ "name": "concern", "description": "ok", "options": [
            { "type": 3, "name": "later", "description": "optional" },
            { "type": 3, "name": "first", "description": "required", "required": true },
        ] }]),
            "0.options.1.required",
        ),
        (json!([{ "name": "concern", "description": "a" }, { "name": "concern", "description": "b" }]), "1"),
    ];
    for (body, path) in cases {
        assert_refused(&api.call("PUT", &global, Some(body)).await?, 400, 50035, &[path]);
    }
    assert!(api.server.registered_commands(CommandScope::Global).is_empty());

    let created = api.call("POST", &global, Some(json!({ "name": "concern", "description": "Raise one" }))).await?;
    assert_eq!(created.status, 201);
    let updated =
        api.call("POST", &global, Some(json!({ "name": "concern", "description": "Raise a concern" }))).await?;
    assert_eq!((updated.status, &updated.body["id"]), (200, &created.body["id"]));
    assert_ne!(updated.body["version"], created.body["version"]);
    // A user command has no description and may use spaces and capitals.
    let user_command = api.call("POST", &global, Some(json!({ "name": "Raise concern", "type": 2 }))).await?;
    assert_eq!(user_command.status, 201, "{}", user_command.body);
    assert_eq!(api.call("GET", &global, None).await?.body.as_array().map(Vec::len), Some(2));
    let id = created.body["id"].as_str().unwrap_or_default();
    assert_eq!(api.call("DELETE", &format!("{global}/{id}"), None).await?.status, 204);
    assert_refused(&api.call("DELETE", &format!("{global}/{id}"), None).await?, 404, 10063, &[]);

    assert_refused(&api.call("GET", "/applications/1/commands", None).await?, 403, 50001, &[]);
    assert_refused(
        &api.call("PUT", &format!("/applications/{app}/guilds/5/commands"), Some(json!([]))).await?,
        403,
        50001,
        &[],
    );
    let in_guild = api
        .call(
            "PUT",
            &format!("/applications/{app}/guilds/{GUILD}/commands"),
            Some(json!([{ "name": "ack", "description": "Acknowledge" }])),
        )
        .await?;
    assert_eq!(in_guild.body[0]["guild_id"], GUILD.to_string());
    Ok(())
}

#[tokio::test]
async fn interactions_need_registered_commands_and_followups_need_an_answer() -> Result<()> {
    let api = Api::start(ServerOptions::default()).await?;
    let app = api.server.application_id();
    let here = Place::Guild { guild_id: GUILD, channel_id: CHANNEL };
    assert!(api.server.dispatch_interaction(IncomingInteraction::slash_command(alex(), here, "concern")).is_err());
    api.call(
        "PUT",
        &format!("/applications/{app}/guilds/{GUILD}/commands"),
        Some(json!([{ "name": "concern", "description": "d" }])),
    )
    .await?;
    assert!(
        api.server.dispatch_interaction(IncomingInteraction::slash_command(alex(), Place::Dm, "concern")).is_err(),
        "a guild command is not offered in DMs"
    );
    let interaction = api.server.dispatch_interaction(IncomingInteraction::slash_command(alex(), here, "concern"))?;

    let followup = format!("/webhooks/{app}/{}", interaction.token);
    assert_refused(
        &api.call_as(None, "POST", &followup, Some(json!({ "content": "too soon" }))).await?,
        404,
        10015,
        &[],
    );
    let callback = format!("/interactions/{}/{}/callback", interaction.id, interaction.token);
    assert_refused(&api.call_as(None, "POST", &callback, Some(json!({ "type": 6 }))).await?, 400, 50035, &["type"]);
    assert_refused(
        &api.call_as(
            None,
            "POST",
            &format!("/interactions/{}/wrong/callback", interaction.id),
            Some(json!({ "type": 5 })),
        )
        .await?,
        404,
        10062,
        &[],
    );
    let answered =
        api.call_as(None, "POST", &callback, Some(json!({ "type": 4, "data": { "content": "On it." } }))).await?;
    assert_eq!(answered.status, 204);
    let original = api.call_as(None, "GET", &format!("{followup}/messages/@original"), None).await?;
    assert_eq!((original.body["content"].as_str(), original.body["type"].as_u64()), (Some("On it."), Some(20)));
    assert_eq!(original.body["webhook_id"], app.to_string());

    let sent = api.call_as(None, "POST", &followup, Some(json!({ "content": "Case C-1 opened." }))).await?;
    assert_eq!((sent.status, sent.body["content"].as_str()), (200, Some("Case C-1 opened.")));
    let edited = api
        .call_as(None, "PATCH", &format!("{followup}/messages/@original"), Some(json!({ "content": "Done." })))
        .await?;
    assert_eq!(edited.body["content"], "Done.");
    assert!(edited.body["edited_timestamp"].is_string());
    let contents: Vec<_> = api.server.messages_in(CHANNEL).into_iter().map(|m| m.content).collect();
    assert_eq!(contents, vec!["Done.", "Case C-1 opened."]);
    let statuses: Vec<_> = api.server.callbacks().iter().map(|c| (c.status, c.error_code)).collect();
    assert_eq!(statuses, vec![(400, Some(50035)), (404, Some(10062)), (204, None)]);
    Ok(())
}
