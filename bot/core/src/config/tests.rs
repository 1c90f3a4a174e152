//! Configuration parsing, driven by sample files: each test feeds a file to
//! [`Config::parse`] and states the mistakes it must report, where and about what.
//!
//! Over 800 lines: one sample file per mistake the parser must report, read top to
//! bottom like the configuration itself.

use super::*;
use crate::domain::Platform;
use std::collections::HashMap;

const FILE: &str = "/etc/wavelet/wavelet.toml";

/// Drops the first line break and the indentation common to every line, so that sample
/// files can sit indented in the tests. Line 1 is the line after the opening quote.
fn dedent(source: &str) -> String {
    let source = source.strip_prefix('\n').unwrap_or(source);
    let indent =
        source.lines().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    source.lines().map(|l| l.get(indent..).unwrap_or("").trim_end()).collect::<Vec<_>>().join("\n")
}

fn parse_with_env(source: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let env = move |name: &str| vars.get(name).cloned();
    Config::parse(Path::new(FILE), &dedent(source), &env)
}

fn parse_ok(source: &str) -> Config {
    match parse_with_env(source, &[]) {
        Ok(config) => config,
        Err(errors) => panic!("expected the file to be accepted, got\n{errors}"),
    }
}

/// Parses `source` and checks the mistakes reported, in order. Each expected mistake is
/// `("LINE:COLUMN KEY", "a fragment of the message")`.
fn check(source: &str, expected: &[(&str, &str)]) -> Vec<ConfigError> {
    check_env(source, &[], expected)
}

fn check_env(source: &str, vars: &[(&str, &str)], expected: &[(&str, &str)]) -> Vec<ConfigError> {
    let errors = match parse_with_env(source, vars) {
        Ok(_) => Vec::new(),
        Err(ConfigErrors(errors)) => errors,
    };
    let listing: String = errors.iter().map(|e| format!("  {e}\n")).collect();
    assert_eq!(errors.len(), expected.len(), "wrong number of mistakes reported:\n{listing}");
    for (e, (place, fragment)) in errors.iter().zip(expected) {
        assert_eq!(format!("{}:{} {}", e.line, e.column, e.key), *place, "mistakes reported:\n{listing}");
        assert!(e.message.contains(fragment), "message for {place} should contain {fragment:?}:\n{listing}");
        assert_eq!(e.file, Path::new(FILE));
    }
    errors
}

#[test]
fn a_full_example_parses_to_the_expected_config() {
    let config = parse_ok(
        r#"
        [store]
        url = "sqlite://data/wavelet.db"

        [workflows]
        dir = "../workflows"
        reload_interval = "500ms"

        [limits]
        max_answer_chars = 2_000

        [[role]]
        id = "practitioner"
        description = "Raises concerns"

        [[role]]
        id = "lead"

        [[agency]]
        id = "st-marys"
        name = "St Mary's Primary School"

        [[agency]]
        id = "police"
        name = "North Police"

        [[person]]
        id = "alice"
        name = "Alice Okafor"
        agency = "st-marys"
        roles = ["practitioner"]
        accounts = { discord = "123456789", matrix = "@alice:example.org" }

        [[person]]
        id = "bob_2"
        name = "Bob Stone"
        agency = "police"
        roles = ["lead", "practitioner"]

        [person.accounts]
        console = "bobby"

        [[group]]
        id = "north"
        name = "North locality safeguarding group"
        members = ["alice"]
        agencies = ["police"]
        rooms = ["console:north", "matrix:!abc:example.org", "discord:456"]

        [[policy]]
        id = "immediate"
        repeat = 1

        [[policy.level]]
        notify = ["role:lead"]
        wait = "15m"

        [[policy.level]]
        notify = ["role:lead", "group", "person:alice"]
        wait = "10m"

        [policy.final]
        notify = ["room:console:north"]
        "#,
    );
    let account = |platform, id: &str| Account { platform, id: id.to_string() };
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let expected = Config {
        path: PathBuf::from(FILE),
        store: StoreConfig { url: "sqlite:///etc/wavelet/data/wavelet.db".to_string() },
        workflows: WorkflowsConfig {
            dir: PathBuf::from("/etc/wavelet/../workflows"),
            reload_interval: Duration::from_millis(500),
        },
        limits: Limits { max_answer_chars: 2_000 },
        roles: vec![
            Role { id: "practitioner".to_string(), description: "Raises concerns".to_string() },
            Role { id: "lead".to_string(), description: String::new() },
        ],
        agencies: vec![
            Agency { id: "st-marys".to_string(), name: "St Mary's Primary School".to_string() },
            Agency { id: "police".to_string(), name: "North Police".to_string() },
        ],
        people: vec![
            Person {
                id: "alice".to_string(),
                name: "Alice Okafor".to_string(),
                agency: "st-marys".to_string(),
                roles: strings(&["practitioner"]),
                accounts: vec![
                    account(Platform::Console, "alice"),
                    account(Platform::Matrix, "@alice:example.org"),
                    account(Platform::Discord, "123456789"),
                ],
            },
            Person {
                id: "bob_2".to_string(),
                name: "Bob Stone".to_string(),
                agency: "police".to_string(),
                roles: strings(&["lead", "practitioner"]),
                accounts: vec![account(Platform::Console, "bobby")],
            },
        ],
        groups: vec![Group {
            id: "north".to_string(),
            name: "North locality safeguarding group".to_string(),
            members: strings(&["alice"]),
            agencies: strings(&["police"]),
            rooms: vec![
                RoomRef::Shared { platform: Platform::Console, id: "north".to_string() },
                RoomRef::Shared { platform: Platform::Matrix, id: "!abc:example.org".to_string() },
                RoomRef::Shared { platform: Platform::Discord, id: "456".to_string() },
            ],
        }],
        policies: vec![Policy {
            id: "immediate".to_string(),
            description: String::new(),
            levels: vec![
                Level { notify: vec![Notify::Role("lead".into())], wait: Duration::from_secs(900) },
                Level {
                    notify: vec![Notify::Role("lead".into()), Notify::GroupRooms, Notify::Person("alice".into())],
                    wait: Duration::from_secs(600),
                },
            ],
            repeat: 1,
            final_notify: vec![Notify::Room(RoomRef::Shared { platform: Platform::Console, id: "north".into() })],
        }],
        schedules: vec![],
        witness: None,
        matrix: None,
        discord: None,
    };
    assert_eq!(config, expected);
}

#[test]
fn an_empty_file_gives_the_defaults_beside_the_config_file() {
    let config = parse_ok("");
    assert_eq!(config.store.url, "sqlite:///etc/wavelet/wavelet.db");
    assert_eq!(config.workflows.dir, Path::new("/etc/wavelet/workflows"));
    assert_eq!(config.workflows.reload_interval, Duration::from_secs(2));
    assert_eq!(config.limits.max_answer_chars, 4_000);
    assert!(config.roles.is_empty() && config.agencies.is_empty());
    assert!(config.people.is_empty() && config.groups.is_empty());
}

#[test]
fn every_mistake_is_reported_not_just_the_first() {
    check(
        r#"
        [store]
        url = "sqlite://wavelet.db"
        colour = "blue"

        [limits]
        max_answer_chars = "lots"

        [[agency]]
        id = "St Marys"
        name = "St Mary's"

        [[person]]
        id = "alice"
        name = "Alice"
        agency = "st-marys"
        roles = ["practitioner"]

        [[group]]
        id = "north"
        name = "North"
        rooms = []
        "#,
        &[
            ("3:1 store.colour", "unknown key `colour`"),
            ("6:20 limits.max_answer_chars", "expected an integer, found a string"),
            ("9:6 agency[1].id", "`St Marys` is not a valid id"),
            ("15:10 person[1].agency", "no [[agency]] has the id `st-marys`"),
            ("16:10 person[1].roles[1]", "no [[role]] has the id `practitioner`"),
            ("18:1 group[1]", "neither members nor agencies"),
            ("21:9 group[1].rooms", "at least one room"),
        ],
    );
}

#[test]
fn unknown_key_suggests_the_near_miss() {
    check(
        r#"
        [[roles]]
        id = "lead"

        [[agency]]
        id = "police"
        name = "Police"

        [[person]]
        id = "alice"
        name = "Alice"
        agncy = "police"
        roles = []
        accounts = { matrx = "@alice:example.org" }
        favourite_colour = "green"
        "#,
        &[
            ("1:3 roles", "unknown key `roles`; did you mean `role`?"),
            ("8:1 person[1].agency", "`agency` is missing"),
            ("11:1 person[1].agncy", "unknown key `agncy`; did you mean `agency`?"),
            ("13:14 person[1].accounts.matrx", "unknown platform `matrx`; did you mean `matrix`?"),
            (
                "14:1 person[1].favourite_colour",
                "use one of the keys allowed here: `id`, `name`, `agency`, `roles` or `accounts`",
            ),
        ],
    );
}

#[test]
fn person_in_unknown_agency_names_the_key_and_line() {
    let errors = check(
        r#"
        [[agency]]
        id = "st-marys"
        name = "St Mary's Primary School"

        [[person]]
        id = "alice"
        name = "Alice"
        agency = "st-mary"
        roles = []

        [[person]]
        id = "bob"
        name = "Bob"
        agency = "fire"
        roles = []
        "#,
        &[
            ("8:10 person[1].agency", "did you mean `st-marys`? If not, add an [[agency]] with id = \"st-mary\""),
            ("14:10 person[2].agency", "no [[agency]] has the id `fire`; add an [[agency]] with id = \"fire\""),
        ],
    );
    assert_eq!(
        errors[1].to_string(),
        format!(
            "{FILE}:14:10: person[2].agency: no [[agency]] has the id `fire`; \
             add an [[agency]] with id = \"fire\""
        )
    );
}

#[test]
fn undefined_role_says_to_add_it() {
    check(
        r#"
        [[role]]
        id = "lead"

        [[agency]]
        id = "police"
        name = "Police"

        [[person]]
        id = "alice"
        name = "Alice"
        agency = "police"
        roles = ["lead", "reviewer", "laed", "lead"]
        "#,
        &[
            ("12:18 person[1].roles[2]", "no [[role]] has the id `reviewer`; add a [[role]] with id = \"reviewer\""),
            ("12:30 person[1].roles[3]", "did you mean `lead`?"),
            ("12:38 person[1].roles[4]", "`lead` is already listed on line 12; remove the repeat"),
        ],
    );
}

#[test]
fn password_in_store_url_is_refused_without_echoing_it() {
    for url in [
        "postgres://wavelet:hunter2@db.example.org/wavelet",
        "postgresql://wavelet:hunter2@db.example.org:5432/wavelet?sslmode=require",
        "postgres://wavelet@db.example.org/wavelet?sslmode=require&password=hunter2",
    ] {
        let source = format!("[store]\nurl = \"{url}\"\n");
        let errors = check(&source, &[("2:7 store.url", "secrets belong in the environment")]);
        let text = ConfigErrors(errors).to_string();
        assert!(text.contains(DATABASE_URL_ENV), "{text}");
        assert!(!text.contains("hunter2"), "the password was echoed: {text}");
    }
    // Still refused when the environment overrides it: the secret is in the file.
    check_env(
        "[store]\nurl = \"postgres://u:hunter2@db/w\"\n",
        &[(DATABASE_URL_ENV, "postgres://db/w")],
        &[("2:7 store.url", "remove the password here")],
    );
    // A user name alone is no secret.
    let config = parse_ok(r#"store.url = "postgres://wavelet@db.example.org/wavelet""#);
    assert_eq!(config.store.url, "postgres://wavelet@db.example.org/wavelet");
}

#[test]
fn env_url_overrides_the_file() {
    let with_password = "postgres://wavelet:hunter2@db.example.org/wavelet";
    let config = parse_with_env("[store]\nurl = \"sqlite://wavelet.db\"\n", &[(DATABASE_URL_ENV, with_password)]);
    assert_eq!(config.map(|c| c.store.url), Ok(with_password.to_string()));

    let config = parse_with_env("", &[(DATABASE_URL_ENV, "sqlite::memory:")]);
    assert_eq!(config.map(|c| c.store.url), Ok("sqlite::memory:".to_string()));

    // Set but blank is the same as unset.
    let config = parse_with_env("[store]\nurl = \"sqlite://w.db\"\n", &[(DATABASE_URL_ENV, " ")]);
    assert_eq!(config.map(|c| c.store.url), Ok("sqlite:///etc/wavelet/w.db".to_string()));
}

#[test]
fn duplicate_ids_name_both_lines() {
    check(
        r#"
        [[role]]
        id = "lead"
        [[role]]
        id = "lead"

        [[agency]]
        id = "police"
        name = "Police"

        [[person]]
        id = "alice"
        name = "Alice"
        agency = "police"
        roles = []

        [[person]]
        id = "alice"
        name = "Alice Again"
        agency = "police"
        roles = []

        [[group]]
        id = "north"
        name = "North"
        members = ["alice"]
        rooms = ["console:north"]
        [[group]]
        id = "north"
        name = "North Two"
        members = ["alice"]
        rooms = ["console:north-two"]
        "#,
        &[
            ("4:6 role[2].id", "the role id `lead` is already used on line 2; give each [[role]] its own id"),
            ("17:6 person[2].id", "the person id `alice` is already used on line 11"),
            ("28:6 group[2].id", "the group id `north` is already used on line 23"),
        ],
    );
}

#[test]
fn console_account_defaults_to_person_id() {
    let config = parse_ok(
        r#"
        [[agency]]
        id = "police"
        name = "Police"

        [[person]]
        id = "alice"
        name = "Alice"
        agency = "police"
        roles = []

        [[person]]
        id = "bob"
        name = "Bob"
        agency = "police"
        roles = []
        accounts = { matrix = "@bob:example.org", console = "robert" }
        "#,
    );
    let accounts = |id: &str| config.person(id).map(|p| p.accounts.iter().map(ToString::to_string).collect::<Vec<_>>());
    assert_eq!(accounts("alice"), Some(vec!["console:alice".to_string()]));
    assert_eq!(accounts("bob"), Some(vec!["console:robert".to_string(), "matrix:@bob:example.org".to_string()]));
}

#[test]
fn an_account_given_to_two_people_is_refused() {
    check(
        r#"
        [[agency]]
        id = "police"
        name = "Police"

        [[person]]
        id = "alice"
        name = "Alice"
        agency = "police"
        roles = []
        accounts = { matrix = "@al:example.org" }

        [[person]]
        id = "bob"
        name = "Bob"
        agency = "police"
        roles = []
        accounts = { matrix = "@al:example.org", console = "alice", discord = "" }
        "#,
        &[
            (
                "17:23 person[2].accounts.matrix",
                "the matrix account `@al:example.org` already belongs to person `alice` (line 10)",
            ),
            ("17:52 person[2].accounts.console", "the console account `alice` is already person `alice`'s"),
            ("17:71 person[2].accounts.discord", "the discord account is empty"),
        ],
    );
}

#[test]
fn missing_required_keys_are_reported_at_the_section_header() {
    check(
        r#"
        [[role]]
        description = "No id"

        [[agency]]
        id = "police"

        [[person]]
        id = "alice"

        [[group]]
        id = "north"
        "#,
        &[
            ("1:1 role[1].id", "`id` is missing; add a line like id = \"practitioner\""),
            ("4:1 agency[1].name", "`name` is missing"),
            ("7:1 person[1].name", "`name` is missing"),
            ("7:1 person[1].agency", "`agency` is missing"),
            ("7:1 person[1].roles", "or roles = [] if they hold none"),
            ("10:1 group[1].name", "`name` is missing"),
            ("10:1 group[1]", "add members = [\"alice\"] or agencies = [\"st-marys\"]"),
            ("10:1 group[1].rooms", "a group needs at least one room, or nobody can reach it"),
        ],
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    check(
        r#"
        store = "sqlite://wavelet.db"

        [workflows]
        dir = ["workflows"]
        reload_interval = 2

        [[agency]]
        id = 7
        name = true

        [[person]]
        id = "alice"
        name = "Alice"
        agency = "x"
        roles = "lead"
        accounts = ["alice"]
        "#,
        &[
            ("1:9 store", "expected a table, found a string; write one [store] section"),
            ("4:7 workflows.dir", "expected a string, found an array; write it like dir = \"workflows\""),
            ("5:19 workflows.reload_interval", "expected a string, found an integer"),
            ("8:6 agency[1].id", "expected a string, found an integer"),
            ("9:8 agency[1].name", "expected a string, found a boolean"),
            ("14:10 person[1].agency", "no [[agency]] has the id `x`"),
            ("15:9 person[1].roles", "expected an array of strings, found a string"),
            ("16:12 person[1].accounts", "expected a table, found an array"),
        ],
    );
}

#[test]
fn ids_must_be_lowercase_letters_digits_dashes_and_underscores() {
    check(
        r#"
        [[role]]
        id = "Lead Practitioner"
        [[role]]
        id = ""
        [[role]]
        id = "ok_id-2"
        "#,
        &[
            ("2:6 role[1].id", "use only lowercase letters a-z, digits 0-9, `-` and `_`, like `lead-practitioner`"),
            ("4:6 role[2].id", "the id is empty"),
        ],
    );
}

#[test]
fn group_members_and_agencies_must_be_defined() {
    check(
        r#"
        [[agency]]
        id = "police"
        name = "Police"

        [[person]]
        id = "alice"
        name = "Alice"
        agency = "police"
        roles = []

        [[group]]
        id = "north"
        name = "North"
        members = ["alice", "alcie", 3]
        agencies = ["police", "health"]
        rooms = ["console:north"]
        "#,
        &[
            ("14:21 group[1].members[2]", "no [[person]] has the id `alcie`; did you mean `alice`?"),
            ("14:30 group[1].members[3]", "expected a string, found an integer"),
            ("15:23 group[1].agencies[2]", "add an [[agency]] with id = \"health\""),
        ],
    );
}

#[test]
fn rooms_must_be_shared_rooms_on_known_platforms() {
    check(
        r#"
        [[agency]]
        id = "police"
        name = "Police"

        [[group]]
        id = "north"
        name = "North"
        agencies = ["police"]
        rooms = ["console:north", "slack:north", "dm:console:alice", "matrix:"]

        [[group]]
        id = "south"
        name = "South"
        agencies = ["police"]
        "#,
        &[
            ("9:27 group[1].rooms[2]", "`slack:north` is not a room; write platform:id"),
            ("9:42 group[1].rooms[3]", "is a direct conversation with one account, not a shared room"),
            ("9:62 group[1].rooms[4]", "`matrix:` is not a room"),
            ("11:1 group[2].rooms", "`rooms` is missing; a group needs at least one room"),
        ],
    );
}

#[test]
fn a_room_claimed_by_two_groups_is_refused() {
    check(
        r#"
        [[agency]]
        id = "police"
        name = "Police"

        [[group]]
        id = "north"
        name = "North"
        agencies = ["police"]
        rooms = ["console:north", "matrix:!abc:example.org"]

        [[group]]
        id = "south"
        name = "South"
        agencies = ["police"]
        rooms = ["console:south", "matrix:!abc:example.org"]
        "#,
        &[("15:27 group[2].rooms[2]", "the room `matrix:!abc:example.org` already belongs to group `north` (line 9)")],
    );
}

#[test]
fn syntax_errors_are_reported_with_their_position_alongside_other_mistakes() {
    check(
        r#"
        [store]
        url = "sqlite://wavelet.db

        [[agency]]
        id = "police"
        name =
        colour = "blue"

        [store]
        "#,
        &[
            ("2:27 syntax", "not valid TOML"),
            ("6:7 syntax", "not valid TOML"),
            ("7:1 agency[1].colour", "unknown key `colour`"),
            ("9:2 syntax", "already given above"),
        ],
    );
}

#[test]
fn store_urls_resolve_against_the_config_folder() {
    let url = |source: &str| parse_ok(source).store.url;
    assert_eq!(url(r#"store.url = "sqlite:w.db?mode=rwc""#), "sqlite:///etc/wavelet/w.db?mode=rwc");
    assert_eq!(url(r#"store.url = "sqlite:///var/lib/w.db""#), "sqlite:///var/lib/w.db");
    assert_eq!(url(r#"store.url = "sqlite::memory:""#), "sqlite::memory:");
    assert_eq!(url(r#"store.url = "postgresql://db/w""#), "postgresql://db/w");
    assert_eq!(resolve_sqlite_url("sqlite://w.db", Path::new("")), "sqlite://w.db");
    assert_eq!(resolve_sqlite_url("sqlite://w.db", Path::new("conf")), "sqlite://conf/w.db");
    check(
        r#"
        [store]
        url = "mysql://db/w"
        [workflows]
        dir = ""
        "#,
        &[
            ("2:7 store.url", "`mysql` databases are not supported; Wavelet keeps its data in SQLite"),
            ("4:7 workflows.dir", "the folder is empty"),
        ],
    );
    check(r#"store.url = "sqlite://""#, &[("1:13 store.url", "the SQLite URL names no file")]);
}

#[test]
fn reload_interval_and_limits_are_checked() {
    check(
        r#"
        [workflows]
        reload_interval = "10ms"
        [limits]
        max_answer_chars = 0
        "#,
        &[
            ("2:19 workflows.reload_interval", "must be at least 100ms"),
            ("4:20 limits.max_answer_chars", "a whole number from 1 to 1000000"),
        ],
    );
    check(
        r#"
        workflows.reload_interval = "soon"
        limits.max_answer_chars = 99999999999999999999
        "#,
        &[
            ("1:29 workflows.reload_interval", "`soon` is not a duration; write a number and a unit"),
            ("2:27 limits.max_answer_chars", "a whole number from 1 to 1000000"),
        ],
    );
}

#[test]
fn sections_written_with_the_wrong_brackets_are_reported() {
    check(
        r#"
        [[store]]
        url = "sqlite://w.db"

        [person]
        id = "alice"
        name = "Alice"
        "#,
        &[
            ("1:1 store", "expected a table, found an array; write one [store] section (single brackets)"),
            ("4:1 person", "write [[person]] with double brackets"),
            ("4:1 person[1].agency", "`agency` is missing"),
            ("4:1 person[1].roles", "`roles` is missing"),
        ],
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    check(
        r#"
        [[agency]]
        id = "police"
        name = "Police"
        [[person]]
        id = "zoe"
        name = "Zoë Ørsted" !
        agency = "police"
        roles = []
        accounts = { matrix = "@zoë:example.org", slack = "zoë" }
        "#,
        &[("6:21 syntax", "not valid TOML"), ("9:43 person[1].accounts.slack", "unknown platform `slack`")],
    );
}

#[test]
fn policy_mistakes_are_all_reported() {
    check(
        r#"
        [[role]]
        id = "lead"

        [[policy]]
        id = "immediate"
        repeat = 99

        [[policy.level]]
        notify = ["role:leed", "person:nobody", "everyone"]
        wait = "soon"

        [[policy.level]]
        notify = []
        wait = "0s"

        [[policy]]
        id = "slow"
        "#,
        &[
            ("4:1 policy[1].final", "final level that cannot be skipped"),
            ("6:10 policy[1].repeat", "from 0 to 10"),
            ("9:11 policy[1].level[1].notify[1]", "did you mean `lead`?"),
            ("9:24 policy[1].level[1].notify[2]", "no [[person]] has the id `nobody`"),
            ("9:41 policy[1].level[1].notify[3]", "names nobody"),
            ("10:8 policy[1].level[1].wait", "not a duration"),
            ("12:1 policy[1].level[2].notify", "the list is empty"),
            ("14:8 policy[1].level[2].wait", "from 1s to 7 days"),
            ("16:1 policy[2].level", "at least one level"),
            ("16:1 policy[2].final", "final level"),
        ],
    );
}

#[test]
fn schedule_mistakes_are_reported() {
    check(
        r#"
        [[schedule]]
        id = "digest"
        workflow = "digest"
        cron = "0 25 * * MON"
        group = "south"

        [[schedule]]
        id = "digest"
        cron = "0 9 * * MON"
        group = "south"

        [[schedule]]
        id = "leap"
        workflow = "digest"
        cron = "0 9 30 2 *"
        group = "north"
        "#,
        &[
            ("4:8 schedule[1].cron", "the hour `25` is outside 0-23"),
            ("5:9 schedule[1].group", "no [[group]] has the id `south`"),
            ("7:1 schedule[2].workflow", "`workflow` is missing"),
            ("8:6 schedule[2].id", "already used on line 2"),
            ("10:9 schedule[2].group", "no [[group]]"),
            ("15:8 schedule[3].cron", "never comes"),
            ("16:9 schedule[3].group", "no [[group]]"),
        ],
    );
}

#[test]
fn the_ledger_witness_takes_a_group_and_a_time_defaulting_to_seven_each_morning() {
    let group = r#"
        [[agency]]
        id = "csc"
        name = "Children's Social Care"

        [[group]]
        id = "reviewers"
        name = "Audit reviewers"
        agencies = ["csc"]
        rooms = ["console:reviewers"]
        "#;
    let config = parse_ok(&format!("{group}\n[audit]\nwitness_group = \"reviewers\"\n"));
    let witness = config.witness.expect("a witness");
    assert_eq!(witness.group, "reviewers");
    assert_eq!(witness.cron, crate::schedule::Cron::parse("0 7 * * *").unwrap());
    let schedule = witness.schedule();
    assert_eq!((schedule.id.as_str(), schedule.group.as_str()), (WITNESS_SCHEDULE, "reviewers"));
    let config =
        parse_ok(&format!("{group}\n[audit]\nwitness_group = \"reviewers\"\nwitness_cron = \"30 18 * * FRI\"\n"));
    assert_eq!(config.witness.unwrap().cron, crate::schedule::Cron::parse("30 18 * * FRI").unwrap());
    assert_eq!(parse_ok(group).witness, None, "no [audit], no witness");
}

#[test]
fn ledger_witness_mistakes_are_reported() {
    check(
        r#"
        [audit]
        witness_group = "reviewer"
        witness_cron = "0 7 * *"
        witness_room = "console:reviewers"

        [[agency]]
        id = "csc"
        name = "Children's Social Care"

        [[group]]
        id = "reviewers"
        name = "Audit reviewers"
        agencies = ["csc"]
        rooms = ["console:reviewers"]

        [[schedule]]
        id = "ledger-witness"
        workflow = "digest"
        cron = "0 9 * * MON"
        group = "reviewers"
        "#,
        &[
            ("2:17 audit.witness_group", "did you mean `reviewers`?"),
            ("3:16 audit.witness_cron", "five fields"),
            ("4:1 audit.witness_room", "unknown key `witness_room`"),
            ("17:6 schedule[1].id", "the id of Wavelet's own schedule"),
        ],
    );
    check(
        r#"
        [audit]
        witness_cron = "0 7 31 2 *"
        "#,
        &[("1:1 audit.witness_group", "`witness_group` is missing"), ("2:16 audit.witness_cron", "never comes")],
    );
}

#[test]
fn a_discord_section_parses_with_its_defaults() {
    let config = parse_ok(
        r#"
        [discord]
        "#,
    );
    assert_eq!(config.discord, Some(DiscordConfig { api_base: None, message_content: true }));
    assert!(config.has_chat_platform());
    let config = parse_ok(
        r#"
        [discord]
        api_base = "http://127.0.0.1:8080/"
        message_content = false
        "#,
    );
    let expected = DiscordConfig { api_base: Some("http://127.0.0.1:8080".into()), message_content: false };
    assert_eq!(config.discord, Some(expected));
    assert!(!parse_ok("").has_chat_platform());
}

#[test]
fn discord_mistakes_are_all_reported() {
    check(
        r#"
        [discord]
        token = "MTA5.secret.token"
        api_base = "discord.com/api"
        message_content = "yes"
        intents = 3
        "#,
        &[
            (
                "2:9 discord.token",
                "secrets belong in the environment, not in this file; remove this line and set WAVELET_DISCORD_TOKEN",
            ),
            ("3:12 discord.api_base", "`discord.com/api` is not the base address of a server"),
            ("4:19 discord.message_content", "expected true or false, found a string"),
            (
                "5:1 discord.intents",
                "unknown key `intents`; remove it, or use one of the keys allowed here: `api_base` or `message_content`",
            ),
        ],
    );
    check(
        r#"
        [discord]
        api_base = "http://127.0.0.1:8080/api/v10"
        "#,
        &[("2:12 discord.api_base", "write scheme, host and port only")],
    );
    check(
        r#"
        discord = "yes"
        "#,
        &[("1:11 discord", "expected a table, found a string; write one [discord] section")],
    );
}

#[test]
fn discord_accounts_and_channels_must_be_ids_not_names() {
    check(
        r#"
        [[agency]]
        id = "police"
        name = "Police"

        [[person]]
        id = "alice"
        name = "Alice"
        agency = "police"
        roles = []
        accounts = { discord = "alice#1234" }

        [[person]]
        id = "bob"
        name = "Bob"
        agency = "police"
        roles = []
        accounts = { discord = "0" }

        [[group]]
        id = "north"
        name = "North"
        members = ["alice", "bob"]
        rooms = ["discord:general", "discord:123456789012345678", "discord:99999999999999999999"]
        "#,
        &[
            ("10:24 person[1].accounts.discord", "`alice#1234` is not a Discord user id"),
            ("17:24 person[2].accounts.discord", "`0` is not a Discord user id"),
            ("23:10 group[1].rooms[1]", "`discord:general` does not name a Discord channel"),
            ("23:59 group[1].rooms[3]", "`discord:99999999999999999999` does not name a Discord channel"),
        ],
    );
}
