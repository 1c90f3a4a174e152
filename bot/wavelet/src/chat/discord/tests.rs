//! The Discord adapter's own rules, without a server.

use super::*;

#[test]
fn mentions_are_broken_visibly() {
    let j = '\u{2060}';
    let cases = [
        ("hi @everyone and @here", format!("hi @{j}everyone and @{j}here")),
        ("@EVERYONE @Here", format!("@{j}EVERYONE @{j}Here")),
        ("<@123> <@!456> <@&789>", format!("<@{j}123> <@{j}!456> <@{j}&789>")),
        ("alice@example.org", "alice@example.org".to_string()),
        ("@", "@".to_string()),
        ("<@", format!("<@{j}")),
        ("é@everyoneé", format!("é@{j}everyoneé")),
    ];
    for (input, expected) in cases {
        assert_eq!(no_pings(input), expected, "{input:?}");
    }
}

#[test]
fn long_text_splits_at_lines_then_words_and_joins_back() {
    let text = format!("{}\n{}", "a".repeat(1500), "b ".repeat(1000));
    let parts = split(&text, 2000);
    assert_eq!(parts.concat(), text);
    assert!(parts.iter().all(|p| p.chars().count() <= 2000));
    assert!(parts[0].ends_with('\n'), "cut at the line break");
    assert!(parts[1].ends_with(' '), "then at a space");
    let unbroken = "x".repeat(4500);
    let parts = split(&unbroken, 2000);
    assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![2000, 2000, 500]);
    let wide = "é".repeat(2001);
    assert_eq!(split(&wide, 2000).iter().map(|p| p.chars().count()).collect::<Vec<_>>(), vec![2000, 1]);
    assert_eq!(split("", 2000), vec![String::new()]);
}

#[test]
fn choices_get_buttons_that_stand_for_their_options() {
    let body = MessageBody::Choice { prompt: "Risk?".into(), options: vec!["no".into(), "2".into(), "y".repeat(120)] };
    let parts = render(&body, "run:R-1:2");
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].content, format!("Risk?\n1. no\n2. 2\n3. {}", "y".repeat(120)));
    let clicks: Vec<String> =
        parts[0].buttons.iter().map(|b| Click::parse(&b.custom_id).expect("ours").text()).collect();
    // A label that is a number, or too long for a custom id, is handed in as its number.
    assert_eq!(clicks, vec!["no".to_string(), "2".into(), "3".into()]);
    assert!(parts[0].buttons.iter().all(|b| b.custom_id.chars().count() <= MAX_CUSTOM_ID_CHARS));
    assert!(parts[0].buttons.iter().all(|b| b.label.chars().count() <= MAX_LABEL_CHARS));
    let many = MessageBody::Choice { prompt: "Pick".into(), options: (1..=26).map(|i| format!("o{i}")).collect() };
    assert!(render(&many, "run:R-1:2")[0].buttons.is_empty(), "over 25 options: the numbered list only");
    let rows = action_rows(
        &render(
            &MessageBody::Choice { prompt: "p".into(), options: (1..=7).map(|i| format!("o{i}")).collect() },
            "run:R-1:2",
        )[0]
        .buttons,
    );
    assert_eq!(rows.len(), 2);
}

#[test]
fn no_part_of_a_long_message_is_only_whitespace() {
    let text = format!("start{}end", "\n".repeat(5_000));
    let parts = render(&MessageBody::Text { text }, "k");
    assert!(parts.iter().all(|p| !p.content.trim().is_empty()), "{:?}", parts.len());
    let joined: String = parts.iter().map(|p| p.content.as_str()).collect();
    assert_eq!(joined.replace('\n', ""), "startend");
}

#[test]
fn a_choice_button_names_its_question() {
    let body = MessageBody::Choice { prompt: "Risk?".into(), options: vec!["no".into(), "yes".into()] };
    let tag = message_tag("run:R-1:2");
    for button in &render(&body, "run:R-1:2")[0].buttons {
        let click = Click::parse(&button.custom_id).expect("ours");
        assert_eq!(click.question(), Some(tag.as_str()), "{}", button.custom_id);
    }
    assert_ne!(message_tag("run:R-1:3"), tag, "another question, another tag");
    // A button from before tags still stands for its option, with no question named.
    let old = Click::parse("wavelet:choose:2:yes").expect("ours");
    assert_eq!((old.question(), old.text()), (None, "yes".to_string()));
    let tagged = Click::parse(&format!("wavelet:choose:{tag}:1")).expect("ours");
    assert_eq!((tagged.question(), tagged.text()), (Some(tag.as_str()), "1".to_string()));
}

#[test]
fn escalation_notices_get_an_acknowledge_button() {
    let body = MessageBody::Escalation { text: "Case C-12 needs acknowledging.".into(), case_id: "C-12".into() };
    let parts = render(&body, "run:R-1:2");
    assert_eq!(parts[0].buttons.len(), 1);
    assert_eq!(parts[0].buttons[0].label, "Acknowledge C-12");
    assert_eq!(Click::parse(&parts[0].buttons[0].custom_id), Some(Click::Ack("C-12".into())));
    assert_eq!(Click::parse("wavelet:ack:C-12 @everyone"), None);
    assert_eq!(Click::parse("wavelet:choose:0"), None);
    assert_eq!(Click::parse("somebody-else:1"), None);
}

#[test]
fn a_long_message_is_split_with_buttons_on_its_last_part_and_a_nonce_per_part() {
    let body = MessageBody::Escalation { text: "w ".repeat(2500), case_id: "C-1".into() };
    let parts = render(&body, "run:R-1:2");
    assert_eq!(parts.len(), 3);
    assert!(parts[..2].iter().all(|p| p.buttons.is_empty()));
    assert_eq!(parts[2].buttons.len(), 1);
    let key = "esc:E-1:0:room:0";
    let nonces: Vec<String> = (0..3).map(|i| nonce(key, i)).collect();
    assert!(nonces.iter().all(|n| n.len() == NONCE_CHARS));
    assert_eq!(nonces[0], nonce(key, 0), "the same for every resend");
    assert!(nonces[0] != nonces[1] && nonces[1] != nonces[2]);
}

#[test]
fn slash_commands_follow_discords_rules() {
    let meta = |command: &str, description: &str| WorkflowMeta {
        command: command.into(),
        description: description.into(),
        allowed_roles: vec![],
    };
    let commands = slash_commands(&[meta("concern", "Raise a concern"), meta(&"x".repeat(33), ""), meta("digest", "")]);
    let json: Vec<serde_json::Value> = commands.iter().map(|c| serde_json::to_value(c).unwrap()).collect();
    let names: Vec<&str> = json.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["concern", "digest", "help", "cancel", "ack"]);
    // Guild (0) and the bot's DM (1) only; installed to servers (0) only.
    assert!(json.iter().all(|c| c["contexts"] == serde_json::json!([0, 1])), "{json:?}");
    assert!(json.iter().all(|c| c["integration_types"] == serde_json::json!([0])), "{json:?}");
    let names = ["Concern", "raise concern", "café", "a.b", "ünïcode-ok", "x_y-1"];
    let valid: Vec<bool> = names.iter().map(|n| is_slash_command_name(n)).collect();
    assert_eq!(valid, [false, false, true, false, true, true]);
    assert_eq!(json[1]["description"], "Start the digest workflow");
    assert_eq!(json[4]["options"][0]["name"], "case");
    assert_eq!(command_description(&"d".repeat(300), "x").chars().count(), 100);
}
