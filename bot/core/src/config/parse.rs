//! Reading `wavelet.toml`. The text is parsed with toml's span-preserving, error-recovering
//! parser and then walked by hand, so that every mistake is found in one pass: syntax
//! errors, unknown keys (with the near miss suggested), missing keys, wrong types, bad or
//! duplicate ids, references to roles, agencies and people nobody defined, accounts and
//! rooms claimed twice, unreachable groups and passwords written into the file. Each is a
//! [`ConfigError`] with the line, column and dotted key of the offending text, and the
//! list comes back in file order.

use super::{
    Agency, Config, ConfigError, ConfigErrors, DATABASE_URL_ENV, DiscordConfig, EnvLookup, Group, Level, Limits,
    MatrixConfig, Notify, Person, Policy, Role, Schedule, StoreConfig, WITNESS_SCHEDULE, WitnessConfig,
    WorkflowsConfig,
};
use crate::domain::{Account, Platform, RoomRef};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeInteger, DeTable, DeValue};

type Span = Range<usize>;
type Value<'i> = Spanned<DeValue<'i>>;

const DEFAULT_STORE_URL: &str = "sqlite://wavelet.db";
const DEFAULT_WORKFLOWS_DIR: &str = "workflows";
const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);
const MAX_ANSWER_CHARS_LIMIT: usize = 1_000_000;

const TOP_KEYS: &[&str] = &[
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
const MATRIX_KEYS: &[&str] = &["homeserver", "user", "state_dir"];
const DISCORD_KEYS: &[&str] = &["api_base", "message_content"];
/// The environment variable the Discord bot token is read from.
const DISCORD_TOKEN_ENV: &str = "WAVELET_DISCORD_TOKEN";
const SCHEDULE_KEYS: &[&str] = &["id", "workflow", "cron", "group"];
const POLICY_KEYS: &[&str] = &["id", "description", "repeat", "level", "final"];
const LEVEL_KEYS: &[&str] = &["notify", "wait"];
const FINAL_KEYS: &[&str] = &["notify"];
/// The shortest wait a level may have (short waits are for tests) and the longest.
const MIN_LEVEL_WAIT: Duration = Duration::from_secs(1);
const MAX_LEVEL_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_REPEAT: i64 = 10;
const STORE_KEYS: &[&str] = &["url"];
const WORKFLOWS_KEYS: &[&str] = &["dir", "reload_interval"];
const LIMITS_KEYS: &[&str] = &["max_answer_chars"];
const AUDIT_KEYS: &[&str] = &["witness_group", "witness_cron"];
/// When the witness posts by default: every day at 07:00 UTC.
const DEFAULT_WITNESS_CRON: &str = "0 7 * * *";
const ROLE_KEYS: &[&str] = &["id", "description"];
const AGENCY_KEYS: &[&str] = &["id", "name"];
const PERSON_KEYS: &[&str] = &["id", "name", "agency", "roles", "accounts"];
const GROUP_KEYS: &[&str] = &["id", "name", "members", "agencies", "rooms"];
const PLATFORM_KEYS: &[&str] = &["console", "matrix", "discord"];

/// Turns a `sqlite:` URL whose path is relative into one whose path is joined onto
/// `base_dir` (the configuration file's folder), always written `sqlite://PATH`. Absolute
/// paths, in-memory databases (`sqlite::memory:`) and every other kind of URL come back
/// unchanged. A query string (`?mode=rwc`) is kept.
pub fn resolve_sqlite_url(url: &str, base_dir: &Path) -> String {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return url.to_string();
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (file, query) = match rest.find('?') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if file.is_empty() || file == ":memory:" {
        return url.to_string();
    }
    let file = Path::new(file);
    if file.is_absolute() {
        format!("sqlite://{}{query}", file.display())
    } else {
        format!("sqlite://{}{query}", base_dir.join(file).display())
    }
}

/// Parses and checks `source`, the text of the file at `path`; see [`Config::parse`].
pub(super) fn parse(path: &Path, source: &str, env: EnvLookup<'_>) -> Result<Config, ConfigErrors> {
    let mut rep = Report::new(path, source);
    let (doc, syntax_errors) = DeTable::parse_recoverable(source);
    for e in &syntax_errors {
        rep.syntax(e);
    }
    // Keep reading what the parser recovered: the remaining mistakes are worth knowing
    // about too, and the syntax errors above make sure nothing half-read is accepted.
    let root = Table { map: doc.get_ref(), span: 0..0, path: String::new() };
    root.check_keys(&mut rep, TOP_KEYS, "key");
    let base_dir = path.parent().unwrap_or_else(|| Path::new(""));

    let store = read_store(&mut rep, &root, base_dir, env);
    let workflows = read_workflows(&mut rep, &root, base_dir);
    let limits = read_limits(&mut rep, &root);
    let witness = read_audit(&mut rep, &root);
    let matrix = read_matrix(&mut rep, &root, base_dir);
    let discord = read_discord(&mut rep, &root);

    let roles: Vec<RawRole> = sections(&mut rep, &root, "role").iter().map(|t| read_role(&mut rep, t)).collect();
    let agencies: Vec<RawAgency> =
        sections(&mut rep, &root, "agency").iter().map(|t| read_agency(&mut rep, t)).collect();
    let people: Vec<RawPerson> = sections(&mut rep, &root, "person").iter().map(|t| read_person(&mut rep, t)).collect();
    let groups: Vec<RawGroup> = sections(&mut rep, &root, "group").iter().map(|t| read_group(&mut rep, t)).collect();
    let policies: Vec<RawPolicy> =
        sections(&mut rep, &root, "policy").iter().map(|t| read_policy(&mut rep, t)).collect();
    let schedules: Vec<RawSchedule> =
        sections(&mut rep, &root, "schedule").iter().map(|t| read_schedule(&mut rep, t)).collect();

    let role_ids = unique_ids(&mut rep, "role", roles.iter().map(|r| (&r.path, &r.id)));
    let agency_ids = unique_ids(&mut rep, "agency", agencies.iter().map(|a| (&a.path, &a.id)));
    let person_ids = unique_ids(&mut rep, "person", people.iter().map(|p| (&p.path, &p.id)));
    let group_ids = unique_ids(&mut rep, "group", groups.iter().map(|g| (&g.path, &g.id)));
    unique_ids(&mut rep, "schedule", schedules.iter().map(|s| (&s.path, &s.id)));
    if let Some((group, _)) = &witness {
        check_ref(&mut rep, group, "audit.witness_group", "group", &group_ids);
    }
    for s in &schedules {
        if let Some(id) = s.id.as_ref().filter(|id| id.v == WITNESS_SCHEDULE) {
            rep.error(
                &id.span,
                format!("{}.id", s.path),
                format!(
                    "`{WITNESS_SCHEDULE}` is the id of Wavelet's own schedule (the ledger witness, set in \
                    [audit]); give this schedule another id"
                ),
            );
        }
        if let Some(g) = &s.group {
            check_ref(&mut rep, g, &format!("{}.group", s.path), "group", &group_ids);
        }
    }
    unique_ids(&mut rep, "policy", policies.iter().map(|p| (&p.path, &p.id)));
    for p in &policies {
        let targets = p.levels.iter().flat_map(|l| &l.notify).chain(&p.final_notify);
        for (key, target) in targets {
            match &target.v {
                Notify::Person(id) => {
                    check_ref(&mut rep, &Sp { v: id.clone(), span: target.span.clone() }, key, "person", &person_ids)
                }
                Notify::Role(id) => {
                    check_ref(&mut rep, &Sp { v: id.clone(), span: target.span.clone() }, key, "role", &role_ids)
                }
                Notify::GroupRooms | Notify::Room(_) => {}
            }
        }
    }

    for p in &people {
        if let Some(agency) = &p.agency {
            let key = format!("{}.agency", p.path);
            check_ref(&mut rep, agency, &key, "agency", &agency_ids);
        }
        for (key, role) in p.roles.iter().flatten() {
            check_ref(&mut rep, role, key, "role", &role_ids);
        }
    }
    for g in &groups {
        for (key, member) in &g.members {
            check_ref(&mut rep, member, key, "person", &person_ids);
        }
        for (key, agency) in &g.agencies {
            check_ref(&mut rep, agency, key, "agency", &agency_ids);
        }
    }
    let accounts = check_accounts(&mut rep, &people, &person_ids);
    check_rooms(&mut rep, &groups);

    if !rep.errors.is_empty() {
        let mut errors = rep.errors;
        // A value the parser could not read is reported once, as a syntax error, not
        // again as whatever the parser recovered in its place.
        let unreadable: Vec<(usize, usize)> =
            errors.iter().take(syntax_errors.len()).map(|e| (e.line, e.column)).collect();
        let mut index = 0;
        errors.retain(|e| {
            index += 1;
            index <= unreadable.len() || !unreadable.contains(&(e.line, e.column))
        });
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(ConfigErrors(errors));
    }

    // No mistakes, so every required field below is present; `?` only guards the types.
    Ok(Config {
        path: path.to_path_buf(),
        store,
        workflows,
        limits,
        roles: roles.into_iter().filter_map(|r| Some(Role { id: r.id?.v, description: r.description })).collect(),
        agencies: agencies.into_iter().filter_map(|a| Some(Agency { id: a.id?.v, name: a.name? })).collect(),
        people: people
            .into_iter()
            .zip(accounts)
            .filter_map(|(p, accounts)| {
                Some(Person {
                    id: p.id?.v,
                    name: p.name?,
                    agency: p.agency?.v,
                    roles: p.roles?.into_iter().map(|(_, r)| r.v).collect(),
                    accounts,
                })
            })
            .collect(),
        groups: groups
            .into_iter()
            .filter_map(|g| {
                Some(Group {
                    id: g.id?.v,
                    name: g.name?,
                    members: g.members.into_iter().map(|(_, m)| m.v).collect(),
                    agencies: g.agencies.into_iter().map(|(_, a)| a.v).collect(),
                    rooms: g.rooms.into_iter().map(|(_, r)| r.v).collect(),
                })
            })
            .collect(),
        matrix,
        discord,
        schedules: schedules
            .into_iter()
            .filter_map(|s| Some(Schedule { id: s.id?.v, workflow: s.workflow?.v, cron: s.cron?, group: s.group?.v }))
            .collect(),
        witness: witness.and_then(|(group, cron)| Some(WitnessConfig { group: group.v, cron: cron? })),
        policies: policies
            .into_iter()
            .filter_map(|p| {
                Some(Policy {
                    id: p.id?.v,
                    description: p.description,
                    levels: p
                        .levels
                        .into_iter()
                        .map(|l| {
                            Some(Level { notify: l.notify.into_iter().map(|(_, n)| n.v).collect(), wait: l.wait? })
                        })
                        .collect::<Option<Vec<_>>>()?,
                    repeat: p.repeat,
                    final_notify: p.final_notify.into_iter().map(|(_, n)| n.v).collect(),
                })
            })
            .collect(),
    })
}

/// An item of an array, with its dotted key.
type Item = (String, Sp<String>);

/// A value with the byte range of the text it came from.
#[derive(Clone, Debug)]
struct Sp<T> {
    v: T,
    span: Span,
}

/// The mistakes found so far, and what is needed to place them.
struct Report<'a> {
    file: &'a Path,
    source: &'a str,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl<'a> Report<'a> {
    fn new(file: &'a Path, source: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(source.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Report { file, source, line_starts, errors: Vec::new() }
    }

    /// The 1-based line and column (counted in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.line_starts.partition_point(|&start| start <= offset).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let column =
            self.source.get(start..).unwrap_or("").char_indices().take_while(|&(i, _)| start + i < offset).count();
        (line, column + 1)
    }

    fn line(&self, span: &Span) -> usize {
        self.position(span.start).0
    }

    fn error(&mut self, span: &Span, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    fn syntax(&mut self, e: &toml::de::Error) {
        let span = e.span().unwrap_or(0..0);
        let what = e.message().trim();
        let message = if what == "duplicate key" {
            "this key or section is already given above; keep only one of them".to_string()
        } else {
            format!(
                "this is not valid TOML ({what}); correct it here (the syntax is at \
                    https://toml.io)"
            )
        };
        self.error(&span, "syntax", message);
    }

    fn wrong_type(&mut self, value: &Value<'_>, key: &str, expected: &str, example: &str) {
        let found = article(value.get_ref());
        self.error(&value.span(), key, format!("expected {expected}, found {found}; write it like {example}"));
    }
}

/// One table of the file, and where it is.
struct Table<'t, 'i> {
    map: &'t DeTable<'i>,
    /// The table's header (`[[person]]`), or the whole inline table: where a missing key
    /// is reported.
    span: Span,
    /// The dotted key of the table itself, e.g. `person[2]`; empty at the top level.
    path: String,
}

impl<'t, 'i> Table<'t, 'i> {
    fn key(&self, name: &str) -> String {
        if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) }
    }

    fn get(&self, name: &str) -> Option<&'t Value<'i>> {
        self.map.get(name)
    }

    /// Reports every key not in `allowed`; `noun` is what the keys are ("key",
    /// "platform").
    fn check_keys(&self, rep: &mut Report<'_>, allowed: &[&str], noun: &str) {
        self.check_keys_besides(rep, allowed, &[], noun);
    }

    /// As [`Table::check_keys`], leaving alone the keys in `handled` (which get their own
    /// message elsewhere and are not offered as allowed).
    fn check_keys_besides(&self, rep: &mut Report<'_>, allowed: &[&str], handled: &[&str], noun: &str) {
        for (key, _) in self.map.iter() {
            let name: &str = key.get_ref();
            if allowed.contains(&name) || handled.contains(&name) {
                continue;
            }
            let hint = match closest(name, allowed.iter().copied()) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("remove it, or use one of the {noun}s allowed here: {}", one_of(allowed)),
            };
            rep.error(&key.span(), self.key(name), format!("unknown {noun} `{name}`; {hint}"));
        }
    }

    fn missing(&self, rep: &mut Report<'_>, name: &str, advice: &str) {
        rep.error(&self.span, self.key(name), format!("`{name}` is missing; {advice}"));
    }

    /// An optional string.
    fn string(&self, rep: &mut Report<'_>, name: &str, example: &str) -> Option<Sp<String>> {
        let value = self.get(name)?;
        expect_string(rep, value, &self.key(name), example)
    }

    /// A required string.
    fn required_string(&self, rep: &mut Report<'_>, name: &str, example: &str) -> Option<Sp<String>> {
        if self.get(name).is_none() {
            self.missing(rep, name, &format!("add a line like {example}"));
            return None;
        }
        self.string(rep, name, example)
    }

    /// A required string that must not be blank, such as a display name.
    fn required_text(&self, rep: &mut Report<'_>, name: &str, example: &str) -> Option<String> {
        let text = self.required_string(rep, name, example)?;
        if text.v.trim().is_empty() {
            rep.error(&text.span, self.key(name), format!("`{name}` is empty; write it like {example}"));
            return None;
        }
        Some(text.v)
    }

    /// An optional array of strings, each with its own dotted key (`roles[2]`). The items
    /// that are strings come back; `None` when the key is absent or not an array. Repeats
    /// are reported and dropped.
    fn strings(&self, rep: &mut Report<'_>, name: &str, example: &str) -> Option<Vec<Item>> {
        let value = self.get(name)?;
        let key = self.key(name);
        let Some(items) = value.get_ref().as_array() else {
            rep.wrong_type(value, &key, "an array of strings", example);
            return None;
        };
        let mut out: Vec<Item> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{}]", i + 1);
            let Some(s) = expect_string(rep, item, &item_key, example) else {
                continue;
            };
            if let Some((_, first)) = out.iter().find(|(_, o)| o.v == s.v) {
                let line = rep.line(&first.span);
                rep.error(&s.span, item_key, format!("`{}` is already listed on line {line}; remove the repeat", s.v));
                continue;
            }
            out.push((item_key, s));
        }
        Some(out)
    }
}

fn expect_string(rep: &mut Report<'_>, value: &Value<'_>, key: &str, example: &str) -> Option<Sp<String>> {
    match value.get_ref().as_str() {
        Some(s) => Some(Sp { v: s.to_string(), span: value.span() }),
        None => {
            rep.wrong_type(value, key, "a string", example);
            None
        }
    }
}

fn integer(i: &DeInteger<'_>) -> Option<i64> {
    i64::from_str_radix(i.as_str(), i.radix()).ok()
}

/// A single `[name]` section.
fn section<'t, 'i>(rep: &mut Report<'_>, root: &Table<'t, 'i>, name: &str) -> Option<Table<'t, 'i>> {
    let value = root.get(name)?;
    match value.get_ref() {
        DeValue::Table(map) => Some(Table { map, span: value.span(), path: name.to_string() }),
        other => {
            let found = article(other);
            rep.error(
                &value.span(),
                name,
                format!(
                    "expected a table, found {found}; write one [{name}] section (single \
                    brackets) with its keys below it"
                ),
            );
            None
        }
    }
}

/// The `[[name]]` sections, in file order.
fn sections<'t, 'i>(rep: &mut Report<'_>, root: &Table<'t, 'i>, name: &str) -> Vec<Table<'t, 'i>> {
    let Some(value) = root.get(name) else {
        return Vec::new();
    };
    match value.get_ref() {
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let path = format!("{}[{}]", root.key(name), i + 1);
                match item.get_ref() {
                    DeValue::Table(map) => Some(Table { map, span: item.span(), path }),
                    other => {
                        let found = article(other);
                        rep.error(
                            &item.span(),
                            path,
                            format!(
                                "expected a table, found {found}; write each one as a \
                                [[{name}]] section with its keys below it"
                            ),
                        );
                        None
                    }
                }
            })
            .collect(),
        DeValue::Table(map) => {
            rep.error(
                &value.span(),
                name,
                format!("write [[{name}]] with double brackets, one section for each {name}"),
            );
            vec![Table { map, span: value.span(), path: format!("{}[1]", root.key(name)) }]
        }
        other => {
            let found = article(other);
            rep.error(
                &value.span(),
                name,
                format!(
                    "expected [[{name}]] sections, found {found}; write a [[{name}]] section \
                    for each {name}"
                ),
            );
            Vec::new()
        }
    }
}

fn read_store(rep: &mut Report<'_>, root: &Table<'_, '_>, base_dir: &Path, env: EnvLookup<'_>) -> StoreConfig {
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
fn check_store_url(rep: &mut Report<'_>, url: &Sp<String>, key: &str) {
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
fn url_has_password(url: &str) -> bool {
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

fn read_workflows(rep: &mut Report<'_>, root: &Table<'_, '_>, base_dir: &Path) -> WorkflowsConfig {
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

fn read_matrix(rep: &mut Report<'_>, root: &Table<'_, '_>, base_dir: &Path) -> Option<MatrixConfig> {
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

fn read_discord(rep: &mut Report<'_>, root: &Table<'_, '_>) -> Option<DiscordConfig> {
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
fn is_snowflake(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && id.parse::<u64>().is_ok_and(|n| n > 0)
}

fn read_limits(rep: &mut Report<'_>, root: &Table<'_, '_>) -> Limits {
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
fn read_audit(rep: &mut Report<'_>, root: &Table<'_, '_>) -> Option<(Sp<String>, Option<crate::schedule::Cron>)> {
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

struct RawRole {
    path: String,
    id: Option<Sp<String>>,
    description: String,
}

fn read_role(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawRole {
    t.check_keys(rep, ROLE_KEYS, "key");
    let id = read_id(rep, t, r#"id = "practitioner""#);
    let description =
        t.string(rep, "description", r#"description = "Raises concerns""#).map(|d| d.v).unwrap_or_default();
    RawRole { path: t.path.clone(), id, description }
}

struct RawAgency {
    path: String,
    id: Option<Sp<String>>,
    name: Option<String>,
}

fn read_agency(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawAgency {
    t.check_keys(rep, AGENCY_KEYS, "key");
    RawAgency {
        path: t.path.clone(),
        id: read_id(rep, t, r#"id = "st-marys""#),
        name: t.required_text(rep, "name", r#"name = "St Mary's Primary School""#),
    }
}

struct RawPerson {
    path: String,
    id: Option<Sp<String>>,
    name: Option<String>,
    agency: Option<Sp<String>>,
    roles: Option<Vec<Item>>,
    accounts: Vec<(Platform, Sp<String>)>,
}

fn read_person(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawPerson {
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
fn read_accounts(rep: &mut Report<'_>, t: &Table<'_, '_>) -> Vec<(Platform, Sp<String>)> {
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

struct RawGroup {
    path: String,
    id: Option<Sp<String>>,
    name: Option<String>,
    members: Vec<Item>,
    agencies: Vec<Item>,
    rooms: Vec<(String, Sp<RoomRef>)>,
}

fn read_group(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawGroup {
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

struct RawSchedule {
    path: String,
    id: Option<Sp<String>>,
    workflow: Option<Sp<String>>,
    cron: Option<crate::schedule::Cron>,
    group: Option<Sp<String>>,
}

fn read_schedule(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawSchedule {
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
fn read_cron(rep: &mut Report<'_>, key: String, c: &Sp<String>, never: &str) -> Option<crate::schedule::Cron> {
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

struct RawPolicy {
    path: String,
    id: Option<Sp<String>>,
    description: String,
    levels: Vec<RawLevel>,
    repeat: u32,
    final_notify: Vec<(String, Sp<Notify>)>,
}

struct RawLevel {
    notify: Vec<(String, Sp<Notify>)>,
    wait: Option<Duration>,
}

const POLICY_EXAMPLE: &str = r#"[[policy.level]] with notify = ["role:lead"] and wait = "15m""#;

fn read_policy(rep: &mut Report<'_>, t: &Table<'_, '_>) -> RawPolicy {
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

fn read_wait(rep: &mut Report<'_>, t: &Table<'_, '_>) -> Option<Duration> {
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
fn read_notify(rep: &mut Report<'_>, t: &Table<'_, '_>) -> Vec<(String, Sp<Notify>)> {
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

fn read_rooms(rep: &mut Report<'_>, t: &Table<'_, '_>) -> Vec<(String, Sp<RoomRef>)> {
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

/// The required `id` of a role, agency, person or group. A malformed id is reported but
/// still returned, so that references to it are not reported a second time.
fn read_id(rep: &mut Report<'_>, t: &Table<'_, '_>, example: &str) -> Option<Sp<String>> {
    let id = t.required_string(rep, "id", example)?;
    if id.v.is_empty() {
        rep.error(
            &id.span,
            t.key("id"),
            format!(
                "the id is empty; give one of lowercase letters, digits, `-` and `_`, like \
                {example}"
            ),
        );
        return None;
    }
    if !id.v.chars().all(is_id_char) {
        let suggestion = slug(&id.v);
        let try_this = if suggestion.is_empty() { String::new() } else { format!(", like `{suggestion}`") };
        rep.error(
            &id.span,
            t.key("id"),
            format!(
                "`{}` is not a valid id; use only lowercase letters a-z, digits 0-9, `-` and \
                    `_`{try_this}",
                id.v
            ),
        );
    }
    Some(id)
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

/// `St Mary's` → `st-mary-s`: a valid id close to the text given.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if is_id_char(c) {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// Where each id was first defined: its index among its kind and its line.
struct Defined {
    first: HashMap<String, (usize, usize)>,
}

impl Defined {
    fn contains(&self, id: &str) -> bool {
        self.first.contains_key(id)
    }
}

/// Reports ids used twice within one kind, at the second use; returns the ids defined.
fn unique_ids<'r>(
    rep: &mut Report<'_>,
    kind: &str,
    ids: impl Iterator<Item = (&'r String, &'r Option<Sp<String>>)>,
) -> Defined {
    let mut first: HashMap<String, (usize, usize)> = HashMap::new();
    for (index, (path, id)) in ids.enumerate() {
        let Some(id) = id else { continue };
        match first.get(&id.v) {
            Some(&(_, line)) => rep.error(
                &id.span,
                format!("{path}.id"),
                format!(
                    "the {kind} id `{}` is already used on line {line}; give each [[{kind}]] its \
                        own id",
                    id.v
                ),
            ),
            None => {
                let line = rep.line(&id.span);
                first.insert(id.v.clone(), (index, line));
            }
        }
    }
    Defined { first }
}

/// Reports a reference to a `kind` id that nothing defines.
fn check_ref(rep: &mut Report<'_>, id: &Sp<String>, key: &str, kind: &str, defined: &Defined) {
    if defined.contains(&id.v) {
        return;
    }
    let a = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    let add = format!("add {a} [[{kind}]] with id = \"{}\"", id.v);
    // Only well-formed ids are worth suggesting.
    let valid = defined.first.keys().map(String::as_str).filter(|d| d.chars().all(is_id_char));
    let advice = match closest(&id.v, valid) {
        Some(near) => format!("did you mean `{near}`? If not, {add}"),
        None => add,
    };
    rep.error(&id.span, key, format!("no [[{kind}]] has the id `{}`; {advice}", id.v));
}

/// Reports accounts claimed by two people, and returns each person's accounts with the
/// console account defaulted to their id.
fn check_accounts(rep: &mut Report<'_>, people: &[RawPerson], ids: &Defined) -> Vec<Vec<Account>> {
    struct Claim<'p> {
        owner: &'p str,
        line: usize,
        key: String,
        span: Span,
    }
    let mut claims: HashMap<Account, Claim<'_>> = HashMap::new();
    for p in people {
        let owner = p.id.as_ref().map_or(p.path.as_str(), |id| id.v.as_str());
        for (platform, id) in &p.accounts {
            let account = Account { platform: *platform, id: id.v.clone() };
            let key = format!("{}.accounts.{platform}", p.path);
            match claims.get(&account) {
                Some(claim) => rep.error(
                    &id.span,
                    key,
                    format!(
                        "the {platform} account `{}` already belongs to person `{}` (line {}); \
                            an account can belong to one person only, so remove it from one of \
                            them",
                        id.v, claim.owner, claim.line
                    ),
                ),
                None => {
                    let line = rep.line(&id.span);
                    claims.insert(account, Claim { owner, line, key, span: id.span.clone() });
                }
            }
        }
    }

    let mut out = Vec::with_capacity(people.len());
    for (index, p) in people.iter().enumerate() {
        let mut accounts: Vec<Account> =
            p.accounts.iter().map(|(platform, id)| Account { platform: *platform, id: id.v.clone() }).collect();
        let has_console = accounts.iter().any(|a| a.platform == Platform::Console);
        if let Some(id) = &p.id
            && !has_console
        {
            let account = Account { platform: Platform::Console, id: id.v.clone() };
            // Only the first person with an id gets its default: a repeated id is
            // reported already.
            let first = ids.first.get(&id.v).is_some_and(|&(i, _)| i == index);
            if first && let Some(claim) = claims.get(&account) {
                rep.error(
                    &claim.span,
                    claim.key.clone(),
                    format!(
                        "the console account `{0}` is already person `{0}`'s, as every person \
                            without a console account gets one named after their id; give `{1}` \
                            another console account, or give `{0}` one of their own",
                        id.v, claim.owner
                    ),
                );
            }
            accounts.insert(0, account);
        }
        out.push(accounts);
    }
    out
}

/// Reports rooms claimed by two groups (or twice by one).
fn check_rooms(rep: &mut Report<'_>, groups: &[RawGroup]) {
    let mut claims: HashMap<&RoomRef, (usize, &str, usize)> = HashMap::new();
    for (index, g) in groups.iter().enumerate() {
        let owner = g.id.as_ref().map_or(g.path.as_str(), |id| id.v.as_str());
        for (key, room) in &g.rooms {
            match claims.get(&room.v) {
                Some(&(other, other_owner, line)) => {
                    let message = if other == index {
                        format!("the room `{}` is already listed on line {line}; remove the repeat", room.v)
                    } else {
                        format!(
                            "the room `{}` already belongs to group `{other_owner}` (line \
                                {line}); a room can belong to one group only, so remove it from \
                                one of them",
                            room.v
                        )
                    };
                    rep.error(&room.span, key, message);
                }
                None => {
                    let line = rep.line(&room.span);
                    claims.insert(&room.v, (index, owner, line));
                }
            }
        }
    }
}

/// The candidate nearest to `word` by edit distance, if it is within 2 edits.
fn closest<'c>(word: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, _)| d <= 2)
        .min_by_key(|&(d, c)| (d, c))
        .map(|(_, c)| c)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = Vec::with_capacity(b.len() + 1);
        row.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            let delete = prev[j + 1] + 1;
            let insert = row[j] + 1;
            row.push(substitute.min(delete).min(insert));
        }
        prev = row;
    }
    prev[b.len()]
}

/// `a`, `b` or `c`.
fn one_of(words: &[&str]) -> String {
    let words: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => words.join(""),
    }
}

fn article(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}
