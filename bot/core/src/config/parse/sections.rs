//! Each section of the file, read into raw values with their spans: `[store]`,
//! `[workflows]`, `[matrix]`, `[discord]`, `[limits]`, `[audit]`, and the directory's
//! `[[role]]`, `[[agency]]`, `[[person]]`, `[[group]]`, `[[schedule]]` and `[[policy]]`.

use super::*;

pub(super) const DEFAULT_STORE_URL: &str = "sqlite://wavelet.db";
pub(super) const DEFAULT_WORKFLOWS_DIR: &str = "workflows";
pub(super) const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
pub(super) const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);
pub(super) const MAX_ANSWER_CHARS_LIMIT: usize = 1_000_000;

pub(super) const TOP_KEYS: &[&str] = &[
    "store",
    "workflows",
    "limits",
    "audit",
    "role",
    "agency",
    "person",
    "group",
    "policy",
    "schedule",
    "matrix",
    "discord",
];
pub(super) const MATRIX_KEYS: &[&str] = &["homeserver", "user", "state_dir"];
pub(super) const DISCORD_KEYS: &[&str] = &["api_base", "message_content"];
/// The environment variable the Discord bot token is read from.
pub(super) const DISCORD_TOKEN_ENV: &str = "WAVELET_DISCORD_TOKEN";
pub(super) const SCHEDULE_KEYS: &[&str] = &["id", "workflow", "cron", "group"];
pub(super) const POLICY_KEYS: &[&str] = &["id", "description", "repeat", "level", "final"];
pub(super) const LEVEL_KEYS: &[&str] = &["notify", "wait"];
pub(super) const FINAL_KEYS: &[&str] = &["notify"];
/// The shortest wait a level may have (short waits are for tests) and the longest.
pub(super) const MIN_LEVEL_WAIT: Duration = Duration::from_secs(1);
pub(super) const MAX_LEVEL_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
pub(super) const MAX_REPEAT: i64 = 10;
pub(super) const STORE_KEYS: &[&str] = &["url"];
pub(super) const WORKFLOWS_KEYS: &[&str] = &["dir", "reload_interval"];
pub(super) const LIMITS_KEYS: &[&str] = &["max_answer_chars"];
pub(super) const AUDIT_KEYS: &[&str] = &["witness_group", "witness_cron"];
/// When the witness posts by default: every day at 07:00 UTC.
pub(super) const DEFAULT_WITNESS_CRON: &str = "0 7 * * *";
pub(super) const ROLE_KEYS: &[&str] = &["id", "description"];
pub(super) const AGENCY_KEYS: &[&str] = &["id", "name"];
pub(super) const PERSON_KEYS: &[&str] = &["id", "name", "agency", "roles", "accounts"];
pub(super) const GROUP_KEYS: &[&str] = &["id", "name", "members", "agencies", "rooms"];
pub(super) const PLATFORM_KEYS: &[&str] = &["console", "matrix", "discord"];

pub(super) fn read_store(
    rep: &mut Report<'_>,
    root: &Table<'_, '_>,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> StoreConfig {
    let file_url = section(rep, root, "store").and_then(|t| {
        t.check_keys(rep, STORE_KEYS, "key");
        let url = t.string(rep, "url", r#"url = "sqlite://wavelet.db""#)?;
        check_store_url(rep, &url, &t.key("url"));
        Some(url)
    });
    let env_url = env(DATABASE_URL_ENV).map(|u| u.trim().to_string()).filter(|u| !u.is_empty());
    let url = match (env_url, file_url) {
        // The environment's URL is used exactly as given: it belongs to the process, not
        // to this file's folder.
        (Some(url), _) => url,
        (None, Some(url)) => resolve_sqlite_url(&url.v, base_dir),
        (None, None) => resolve_sqlite_url(DEFAULT_STORE_URL, base_dir),
    };
    StoreConfig { url }
}

/// Checks the file's store URL. Never puts the URL itself in a message: it may hold a
/// password.
pub(super) fn check_store_url(rep: &mut Report<'_>, url: &Sp<String>, key: &str) {
    let text = url.v.trim();
    if url_has_password(text) {
        rep.error(
            &url.span,
            key,
            format!(
                "this URL contains a password, and secrets belong in the environment, not in \
                this file; remove the password here and set {DATABASE_URL_ENV} to the full URL \
                instead"
            ),
        );
    }
    if let Some(rest) = text.strip_prefix("sqlite:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        if rest.split('?').next().unwrap_or("").is_empty() {
            rep.error(&url.span, key, r#"the SQLite URL names no file; write it like url = "sqlite://wavelet.db""#);
        }
    } else if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        let scheme = text
            .split_once("://")
            .map(|(scheme, _)| scheme)
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)));
        let what = match scheme {
            Some(scheme) => format!("`{scheme}` databases are not supported"),
            None => "this is not a database URL".to_string(),
        };
        rep.error(
            &url.span,
            key,
            format!(
                "{what}; Wavelet keeps its data in SQLite (url = \"sqlite://wavelet.db\") or \
                PostgreSQL (set {DATABASE_URL_ENV} to a postgres:// URL)"
            ),
        );
    }
}

/// Whether a URL carries a password: `scheme://user:password@host/…`, or a
/// `password=`/`sslpassword=` query parameter.
pub(super) fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((userinfo, _host)) = authority.rsplit_once('@')
        && let Some((_user, password)) = userinfo.split_once(':')
        && !password.is_empty()
    {
        return true;
    }
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or("");
    query.split('&').any(|pair| match pair.split_once('=') {
        Some((name, value)) => {
            (name.eq_ignore_ascii_case("password") || name.eq_ignore_ascii_case("sslpassword")) && !value.is_empty()
        }
        None => false,
    })
}

pub(super) fn read_workflows(rep: &mut Report<'_>, root: &Table<'_, '_>, base_dir: &Path) -> WorkflowsConfig {
    let mut dir = base_dir.join(DEFAULT_WORKFLOWS_DIR);
    let mut reload_interval = DEFAULT_RELOAD_INTERVAL;
    let Some(t) = section(rep, root, "workflows") else {
        return WorkflowsConfig { dir, reload_interval };
    };
    t.check_keys(rep, WORKFLOWS_KEYS, "key");
    let dir_example = r#"dir = "workflows""#;
    if let Some(d) = t.string(rep, "dir", dir_example) {
        if d.v.trim().is_empty() {
            rep.error(
                &d.span,
                t.key("dir"),
                format!("the folder is empty; name the folder of workflow scripts, like {dir_example}"),
            );
        } else {
            dir = base_dir.join(&d.v);
        }
    }
    let interval_example = r#"reload_interval = "2s""#;
    if let Some(s) = t.string(rep, "reload_interval", interval_example) {
        let key = t.key("reload_interval");
        match humantime::parse_duration(s.v.trim()) {
            Err(_) => rep.error(
                &s.span,
                key,
                format!(
                    "`{}` is not a duration; write a number and a unit, like \"2s\" or \
                    \"500ms\"",
                    s.v
                ),
            ),
            Ok(d) if d < MIN_RELOAD_INTERVAL => rep.error(
                &s.span,
                key,
                "the reload interval must be at least 100ms, or Wavelet would spend its time \
                    re-reading workflows; write \"100ms\" or more",
            ),
            Ok(d) => reload_interval = d,
        }
    }
    WorkflowsConfig { dir, reload_interval }
}

pub(super) fn read_matrix(rep: &mut Report<'_>, root: &Table<'_, '_>, base_dir: &Path) -> Option<MatrixConfig> {
    let t = section(rep, root, "matrix")?;
    t.check_keys(rep, MATRIX_KEYS, "key");
    let homeserver = t.required_string(rep, "homeserver", r#"homeserver = "https://matrix.example.org""#);
    if let Some(h) = &homeserver
        && !(h.v.starts_with("https://") || h.v.starts_with("http://"))
    {
        rep.error(
            &h.span,
            t.key("homeserver"),
            format!("`{}` is not a homeserver URL; write it like homeserver = \"https://matrix.example.org\"", h.v),
        );
    }
    let user = t.required_string(rep, "user", r#"user = "@wavelet:example.org""#);
    if let Some(u) = &user
        && !(u.v.starts_with('@') && u.v.contains(':'))
    {
        rep.error(
            &u.span,
            t.key("user"),
            format!("`{}` is not a Matrix user id; write the bot's full id, like user = \"@wavelet:example.org\"", u.v),
        );
    }
    let state_dir =
        t.string(rep, "state_dir", r#"state_dir = "matrix-state""#).map_or_else(|| "matrix-state".into(), |d| d.v);
    Some(MatrixConfig { homeserver: homeserver?.v, user: user?.v, state_dir: base_dir.join(state_dir) })
}

pub(super) fn read_discord(rep: &mut Report<'_>, root: &Table<'_, '_>) -> Option<DiscordConfig> {
    let t = section(rep, root, "discord")?;
    // `token` gets its own message: secrets belong in the environment.
    t.check_keys_besides(rep, DISCORD_KEYS, &["token"], "key");
    if let Some(token) = t.get("token") {
        rep.error(
            &token.span(),
            t.key("token"),
            format!(
                "secrets belong in the environment, not in this file; remove this line and set \
                {DISCORD_TOKEN_ENV} to the bot's token (and reset the token in the Developer Portal if \
                this file was shared)"
            ),
        );
    }
    let api_base = t.string(rep, "api_base", r#"api_base = "http://127.0.0.1:8080""#);
    if let Some(a) = &api_base {
        let v = a.v.trim_end_matches('/');
        let rest = v.strip_prefix("http://").or_else(|| v.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
            rep.error(
                &a.span,
                t.key("api_base"),
                format!(
                    "`{}` is not the base address of a server; write scheme, host and port only, like \
                    api_base = \"http://127.0.0.1:8080\" (api_base is for tests against a local \
                    Discord-protocol server: leave it out to use Discord)",
                    a.v
                ),
            );
        }
    }
    let message_content = match t.get("message_content") {
        None => true,
        Some(value) => match value.get_ref() {
            DeValue::Boolean(b) => *b,
            _ => {
                rep.wrong_type(value, &t.key("message_content"), "true or false", "message_content = true");
                true
            }
        },
    };
    Some(DiscordConfig { api_base: api_base.map(|a| a.v.trim_end_matches('/').to_string()), message_content })
}

/// Whether `id` is a Discord id (a snowflake): a non-zero 64-bit number in decimal.
pub(super) fn is_snowflake(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && id.parse::<u64>().is_ok_and(|n| n > 0)
}

pub(super) fn read_limits(rep: &mut Report<'_>, root: &Table<'_, '_>) -> Limits {
    let mut limits = Limits::default();
    let Some(t) = section(rep, root, "limits") else {
        return limits;
    };
    t.check_keys(rep, LIMITS_KEYS, "key");
    if let Some(value) = t.get("max_answer_chars") {
        let key = t.key("max_answer_chars");
        let wanted = format!("a whole number from 1 to {MAX_ANSWER_CHARS_LIMIT}; the default is 4000");
        match value.get_ref() {
            DeValue::Integer(i) => match integer(i)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=MAX_ANSWER_CHARS_LIMIT).contains(n))
            {
                Some(n) => limits.max_answer_chars = n,
                None => rep.error(&value.span(), key, format!("`max_answer_chars` must be {wanted}")),
            },
            _ => rep.wrong_type(value, &key, "an integer", "max_answer_chars = 4000"),
        }
    }
    limits
}

/// `[audit]`: the witness's group (to check against the groups) and its time.
pub(super) fn read_audit(
    rep: &mut Report<'_>,
    root: &Table<'_, '_>,
) -> Option<(Sp<String>, Option<crate::schedule::Cron>)> {
    let t = section(rep, root, "audit")?;
    t.check_keys(rep, AUDIT_KEYS, "key");
    let cron = match t.string(rep, "witness_cron", r#"witness_cron = "0 7 * * *""#) {
        Some(c) => read_cron(rep, t.key("witness_cron"), &c, "the witness should post daily, like \"0 7 * * *\""),
        None => crate::schedule::Cron::parse(DEFAULT_WITNESS_CRON).ok(),
    };
    let group = match t.string(rep, "witness_group", r#"witness_group = "reviewers""#) {
        Some(g) => g,
        None => {
            if t.get("witness_group").is_none() {
                t.missing(
                    rep,
                    "witness_group",
                    "add a line like witness_group = \"reviewers\": the group whose rooms receive the \
                    ledger's head each day",
                );
            }
            return None;
        }
    };
    Some((group, cron))
}

pub(super) struct RawRole {
    pub(super) path: String,
    pub(super) id: Option<Sp<String>>,
    pub(super) description: String,
}

pub(super) fn read_role(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawRole {
    t.check_keys(rep, ROLE_KEYS, "key");
    let id = read_id(rep, t, r#"id = "practitioner""#);
    let description =
        t.string(rep, "description", r#"description = "Raises concerns""#).map(|d| d.v).unwrap_or_default();
    RawRole { path: t.path.clone(), id, description }
}

pub(super) struct RawAgency {
    pub(super) path: String,
    pub(super) id: Option<Sp<String>>,
    pub(super) name: Option<String>,
}

pub(super) fn read_agency(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawAgency {
    t.check_keys(rep, AGENCY_KEYS, "key");
    RawAgency {
        path: t.path.clone(),
        id: read_id(rep, t, r#"id = "st-marys""#),
        name: t.required_text(rep, "name", r#"name = "St Mary's Primary School""#),
    }
}

pub(super) struct RawPerson {
    pub(super) path: String,
    pub(super) id: Option<Sp<String>>,
    pub(super) name: Option<String>,
    pub(super) agency: Option<Sp<String>>,
    pub(super) roles: Option<Vec<Item>>,
    pub(super) accounts: Vec<(Platform, Sp<String>)>,
}

pub(super) fn read_person(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawPerson {
    t.check_keys(rep, PERSON_KEYS, "key");
    let id = read_id(rep, t, r#"id = "alice""#);
    let name = t.required_text(rep, "name", r#"name = "Alice Okafor""#);
    let agency = t.required_string(rep, "agency", r#"agency = "st-marys""#);
    let roles_example = r#"roles = ["practitioner"]"#;
    if t.get("roles").is_none() {
        t.missing(rep, "roles", &format!("add a line like {roles_example}, or roles = [] if they hold none"));
    }
    let roles = t.strings(rep, "roles", roles_example);
    let accounts = read_accounts(rep, t);
    RawPerson { path: t.path.clone(), id, name, agency, roles, accounts }
}

/// A person's accounts, at most one per platform, in [`Platform::ALL`] order.
pub(super) fn read_accounts(rep: &mut Report<'_>, t: &Table<'_, '_>) -> Vec<(Platform, Sp<String>)> {
    let example = r#"accounts = { matrix = "@alice:example.org" }"#;
    let Some(value) = t.get("accounts") else {
        return Vec::new();
    };
    let Some(map) = value.get_ref().as_table() else {
        rep.wrong_type(value, &t.key("accounts"), "a table", example);
        return Vec::new();
    };
    let accounts = Table { map, span: value.span(), path: t.key("accounts") };
    accounts.check_keys(rep, PLATFORM_KEYS, "platform");
    Platform::ALL
        .into_iter()
        .filter_map(|platform| {
            let name = platform.as_str();
            let id = accounts.string(rep, name, example)?;
            if id.v.trim().is_empty() {
                rep.error(
                    &id.span,
                    accounts.key(name),
                    format!(
                        "the {name} account is empty; write the person's account id, like \
                        {example}, or remove the line"
                    ),
                );
                return None;
            }
            if platform == Platform::Discord && !is_snowflake(id.v.trim()) {
                rep.error(
                    &id.span,
                    accounts.key(name),
                    format!(
                        "`{}` is not a Discord user id; write the number Discord shows with Copy User ID \
                        (Developer Mode), like discord = \"123456789012345678\", not a user name",
                        id.v
                    ),
                );
                return None;
            }
            Some((platform, id))
        })
        .collect()
}

pub(super) struct RawGroup {
    pub(super) path: String,
    pub(super) id: Option<Sp<String>>,
    pub(super) name: Option<String>,
    pub(super) members: Vec<Item>,
    pub(super) agencies: Vec<Item>,
    pub(super) rooms: Vec<(String, Sp<RoomRef>)>,
}

pub(super) fn read_group(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawGroup {
    t.check_keys(rep, GROUP_KEYS, "key");
    let id = read_id(rep, t, r#"id = "north""#);
    let name = t.required_text(rep, "name", r#"name = "North locality safeguarding group""#);
    let members_example = r#"members = ["alice"]"#;
    let agencies_example = r#"agencies = ["st-marys"]"#;
    let members = t.strings(rep, "members", members_example);
    let agencies = t.strings(rep, "agencies", agencies_example);
    // A key given with the wrong type was reported already; only absent or empty lists
    // leave the group without anyone in it.
    let nobody = |name: &str| t.get(name).is_none_or(|v| v.get_ref().as_array().is_some_and(|a| a.is_empty()));
    if nobody("members") && nobody("agencies") {
        rep.error(
            &t.span,
            t.path.clone(),
            format!(
                "the group has neither members nor agencies, so nobody is in it; add \
                {members_example} or {agencies_example}"
            ),
        );
    }
    let rooms = read_rooms(rep, t);
    RawGroup {
        path: t.path.clone(),
        id,
        name,
        members: members.unwrap_or_default(),
        agencies: agencies.unwrap_or_default(),
        rooms,
    }
}

pub(super) struct RawSchedule {
    pub(super) path: String,
    pub(super) id: Option<Sp<String>>,
    pub(super) workflow: Option<Sp<String>>,
    pub(super) cron: Option<crate::schedule::Cron>,
    pub(super) group: Option<Sp<String>>,
}

pub(super) fn read_schedule(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawSchedule {
    t.check_keys(rep, SCHEDULE_KEYS, "key");
    let id = read_id(rep, t, r#"id = "monday-digest""#);
    let workflow = t.required_string(rep, "workflow", r#"workflow = "digest""#);
    let group = t.required_string(rep, "group", r#"group = "north""#);
    let cron = t
        .required_string(rep, "cron", r#"cron = "0 9 * * MON""#)
        .and_then(|c| read_cron(rep, t.key("cron"), &c, "the schedule would never fire; check the day and month"));
    RawSchedule { path: t.path.clone(), id, workflow, cron, group }
}

/// A cron expression at `key`, reported if it does not parse or names a day that never
/// comes (`never`: what that means and what to do).
pub(super) fn read_cron(
    rep: &mut Report<'_>,
    key: String,
    c: &Sp<String>,
    never: &str,
) -> Option<crate::schedule::Cron> {
    match crate::schedule::Cron::parse(&c.v) {
        Ok(cron) if cron.next_after(crate::domain::Millis(0)).is_none() => {
            rep.error(&c.span, key, format!("`{}` names a day that never comes; {never}", c.v));
            None
        }
        Ok(cron) => Some(cron),
        Err(e) => {
            rep.error(&c.span, key, e);
            None
        }
    }
}

pub(super) struct RawPolicy {
    pub(super) path: String,
    pub(super) id: Option<Sp<String>>,
    pub(super) description: String,
    pub(super) levels: Vec<RawLevel>,
    pub(super) repeat: u32,
    pub(super) final_notify: Vec<(String, Sp<Notify>)>,
}

pub(super) struct RawLevel {
    pub(super) notify: Vec<(String, Sp<Notify>)>,
    pub(super) wait: Option<Duration>,
}

pub(super) const POLICY_EXAMPLE: &str = r#"[[policy.level]] with notify = ["role:lead"] and wait = "15m""#;

pub(super) fn read_policy(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawPolicy {
    t.check_keys(rep, POLICY_KEYS, "key");
    let id = read_id(rep, t, r#"id = "immediate""#);
    let description = t
        .string(rep, "description", r#"description = "A child may be at immediate risk""#)
        .map(|d| d.v)
        .unwrap_or_default();
    let mut repeat = 0;
    if let Some(value) = t.get("repeat") {
        let key = t.key("repeat");
        match value.get_ref() {
            DeValue::Integer(i) => match integer(i).filter(|n| (0..=MAX_REPEAT).contains(n)) {
                Some(n) => repeat = n as u32,
                None => rep.error(
                    &value.span(),
                    key,
                    format!("`repeat` must be a whole number from 0 to {MAX_REPEAT}: how many more times the levels run before the final level"),
                ),
            },
            _ => rep.wrong_type(value, &key, "an integer", "repeat = 1"),
        }
    }
    let level_tables = sections(rep, t, "level");
    if t.get("level").is_none() {
        t.missing(rep, "level", &format!("a policy needs at least one level; add {POLICY_EXAMPLE}"));
    }
    let levels = level_tables
        .iter()
        .map(|l| {
            l.check_keys(rep, LEVEL_KEYS, "key");
            let notify = read_notify(rep, l);
            let wait = read_wait(rep, l);
            RawLevel { notify, wait }
        })
        .collect();
    let final_notify = match section(rep, t, "final") {
        Some(f) => {
            f.check_keys(rep, FINAL_KEYS, "key");
            read_notify(rep, &f)
        }
        None => {
            t.missing(
                rep,
                "final",
                "every policy ends with a final level that cannot be skipped; add [policy.final] with notify = [\"role:coordinator\"]",
            );
            Vec::new()
        }
    };
    RawPolicy { path: t.path.clone(), id, description, levels, repeat, final_notify }
}

pub(super) fn read_wait(rep: &mut Report<'_>, t: &Table<'_, '_>) -> Option<Duration> {
    let example = r#"wait = "15m""#;
    let s = t.required_string(rep, "wait", example)?;
    let key = t.key("wait");
    match humantime::parse_duration(s.v.trim()) {
        Err(_) => {
            rep.error(&s.span, key, format!("`{}` is not a duration; write a number and a unit, like {example}", s.v));
            None
        }
        Ok(d) if d < MIN_LEVEL_WAIT || d > MAX_LEVEL_WAIT => {
            rep.error(&s.span, key, "a level waits from 1s to 7 days for an acknowledgement; write e.g. \"15m\"");
            None
        }
        Ok(d) => Some(d),
    }
}

/// A level's `notify` list: `person:ID`, `role:ID` (within the case's group), `group` (the
/// case's group's rooms) or `room:PLATFORM:ID`.
pub(super) fn read_notify(rep: &mut Report<'_>, t: &Table<'_, '_>) -> Vec<(String, Sp<Notify>)> {
    let example = r#"notify = ["role:lead", "group"]"#;
    let Some(items) = t.strings(rep, "notify", example) else {
        if t.get("notify").is_none() {
            t.missing(rep, "notify", &format!("say who this level notifies, like {example}"));
        }
        return Vec::new();
    };
    if items.is_empty() {
        rep.error(
            &t.span,
            t.key("notify"),
            format!("the list is empty, so nobody would be told; write it like {example}"),
        );
    }
    items
        .into_iter()
        .filter_map(|(key, text)| {
            let parsed = Notify::parse(&text.v);
            match parsed {
                Some(n) => Some((key, Sp { v: n, span: text.span })),
                None => {
                    rep.error(
                        &text.span,
                        key,
                        format!(
                            "`{}` names nobody; write person:ID, role:ID (that role within the case's group), group (the case's group's rooms) or room:PLATFORM:ID, like {example}",
                            text.v
                        ),
                    );
                    None
                }
            }
        })
        .collect()
}

pub(super) fn read_rooms(rep: &mut Report<'_>, t: &Table<'_, '_>) -> Vec<(String, Sp<RoomRef>)> {
    let example = r#"rooms = ["console:north"]"#;
    let no_rooms = format!("a group needs at least one room, or nobody can reach it; add {example}");
    let Some(value) = t.get("rooms") else {
        t.missing(rep, "rooms", &no_rooms);
        return Vec::new();
    };
    let Some(texts) = t.strings(rep, "rooms", example) else {
        return Vec::new();
    };
    if value.get_ref().as_array().is_some_and(|a| a.is_empty()) {
        rep.error(&value.span(), t.key("rooms"), no_rooms);
    }
    texts
        .into_iter()
        .filter_map(|(item_key, text)| match RoomRef::parse(text.v.trim()) {
            Some(RoomRef::Shared { platform: Platform::Discord, id }) if !is_snowflake(&id) => {
                rep.error(
                    &text.span,
                    item_key,
                    format!(
                        "`{}` does not name a Discord channel; write discord: and the channel's id (Copy \
                        Channel ID with Developer Mode on), like \"discord:123456789012345678\"",
                        text.v
                    ),
                );
                None
            }
            Some(room @ RoomRef::Shared { .. }) => Some((item_key, Sp { v: room, span: text.span })),
            Some(RoomRef::Direct { .. }) => {
                rep.error(
                    &text.span,
                    item_key,
                    format!(
                        "`{}` is a direct conversation with one account, not a shared \
                            room; list the group's shared rooms, like \"console:north\"",
                        text.v
                    ),
                );
                None
            }
            None => {
                rep.error(
                    &text.span,
                    item_key,
                    format!(
                        "`{}` is not a room; write platform:id, where the platform is \
                            console, matrix or discord, like \"console:north\" or \
                            \"matrix:!abc:example.org\"",
                        text.v
                    ),
                );
                None
            }
        })
        .collect()
}
