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

mod check;
mod sections;
mod walk;

use check::*;
use sections::*;
use walk::*;

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
