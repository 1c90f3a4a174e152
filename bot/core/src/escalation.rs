//! Escalation policies laid out as stages (DESIGN.md, "Words": escalation). A policy's
//! levels, run `repeat + 1` times, then its final level, make one list of stages; an
//! escalation notifies stage after stage until someone acknowledges. The plan is stored
//! with the escalation, so editing the configuration never changes one in flight.

use crate::config::{Notify, Policy};
use crate::directory::Directory;
use crate::domain::{Millis, RoomRef};
use serde::{Deserialize, Serialize};

/// One stage of an escalation: a level of the policy in one round, or the final level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The policy's level, 1-based; `levels + 1` for the final level.
    pub level: usize,
    /// 0 for the first pass through the levels, 1 for the first repeat, …
    pub round: u32,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub notify: Vec<Notify>,
    /// How long to wait for an acknowledgement before the next stage; `None` for the final.
    pub wait_ms: Option<u64>,
}

/// The stages a policy goes through, in order; the last is always the final level.
pub fn plan(policy: &Policy) -> Vec<Stage> {
    let mut stages = Vec::with_capacity(policy.total_levels());
    for round in 0..=policy.repeat {
        for (i, l) in policy.levels.iter().enumerate() {
            stages.push(Stage {
                level: i + 1,
                round,
                is_final: false,
                notify: l.notify.clone(),
                wait_ms: Some(u64::try_from(l.wait.as_millis()).unwrap_or(u64::MAX)),
            });
        }
    }
    stages.push(Stage {
        level: policy.levels.len() + 1,
        round: policy.repeat,
        is_final: true,
        notify: policy.final_notify.clone(),
        wait_ms: None,
    });
    stages
}

/// Who one stage reaches: people privately, and shared rooms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recipients {
    pub people: Vec<String>,
    pub rooms: Vec<RoomRef>,
}

/// Resolves a stage's targets for a case of `group`: roles are looked up among the group's
/// members; `group` means the group's rooms. Each person and room appears once.
pub fn recipients(dir: &Directory, stage: &Stage, group: &str) -> Recipients {
    let mut r = Recipients::default();
    let g = dir.group(group);
    let add_person = |r: &mut Recipients, id: &str| {
        if !r.people.iter().any(|p| p == id) && dir.person(id).is_some() {
            r.people.push(id.to_string());
        }
    };
    for n in &stage.notify {
        match n {
            Notify::Person(id) => add_person(&mut r, id),
            Notify::Role(role) => {
                if let Some(g) = g {
                    for p in dir.members_with_role(g, role) {
                        add_person(&mut r, &p.id);
                    }
                }
            }
            Notify::GroupRooms => {
                for room in g.map(|g| g.rooms.as_slice()).unwrap_or_default() {
                    if !r.rooms.contains(room) {
                        r.rooms.push(room.clone());
                    }
                }
            }
            Notify::Room(room) => {
                if !r.rooms.contains(room) {
                    r.rooms.push(room.clone());
                }
            }
        }
    }
    r
}

/// What an escalation says about its case: nothing beyond what the group's summary shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseSummary {
    pub id: String,
    pub category: String,
    pub risk: String,
}

/// The notice one stage sends. `late_ms`: how far past its due time it goes out.
pub fn notice(escalation: &str, policy: &str, stage: &Stage, case: &CaseSummary, late_ms: i64, due: Millis) -> String {
    let what = format!("case {} ({}, risk: {})", case.id, case.category, case.risk);
    let mut s = if stage.is_final {
        format!(
            "FINAL escalation {escalation} ({policy}): {what} is still not acknowledged after every level. Reply `ack {}` to take it.",
            case.id
        )
    } else {
        let round = if stage.round > 0 { format!(", repeat {}", stage.round) } else { String::new() };
        format!(
            "Escalation {escalation} ({policy}, level {}{round}): {what} needs acknowledging. Reply `ack {}` to take it.",
            stage.level, case.id
        )
    };
    if late_ms >= LATE_NOTICE_MS {
        s.push_str(&crate::render::late_note(due, late_ms));
    }
    s
}

/// Lateness worth telling people about.
pub const LATE_NOTICE_MS: i64 = 60_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Level};
    use std::path::Path;
    use std::time::Duration;

    fn policy() -> Policy {
        Policy {
            id: "immediate".into(),
            description: String::new(),
            levels: vec![
                Level { notify: vec![Notify::Role("lead".into())], wait: Duration::from_secs(900) },
                Level { notify: vec![Notify::GroupRooms], wait: Duration::from_secs(600) },
            ],
            repeat: 1,
            final_notify: vec![Notify::Person("cora".into())],
        }
    }

    #[test]
    fn a_plan_runs_the_levels_repeat_plus_one_times_then_the_final() {
        let p = plan(&policy());
        let shape: Vec<(usize, u32, bool, Option<u64>)> =
            p.iter().map(|s| (s.level, s.round, s.is_final, s.wait_ms)).collect();
        assert_eq!(
            shape,
            vec![
                (1, 0, false, Some(900_000)),
                (2, 0, false, Some(600_000)),
                (1, 1, false, Some(900_000)),
                (2, 1, false, Some(600_000)),
                (3, 1, true, None)
            ]
        );
        assert_eq!(p.len(), policy().total_levels());
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Stage>>(&json).unwrap(), p);
    }

    #[test]
    fn recipients_are_the_roles_within_the_group_and_its_rooms() {
        let src = r#"
[[role]]
id = "lead"
[[agency]]
id = "a"
name = "A"
[[person]]
id = "bea"
name = "Bea"
agency = "a"
roles = ["lead"]
[[person]]
id = "zed"
name = "Zed"
agency = "a"
roles = ["lead"]
[[person]]
id = "cora"
name = "Cora"
agency = "a"
roles = []
[[group]]
id = "north"
name = "North"
members = ["bea", "cora"]
rooms = ["console:north"]
"#;
        let dir = Directory::new(Config::parse(Path::new("t.toml"), src, &|_| None).unwrap());
        let p = plan(&policy());
        // zed is a lead, but not in this group.
        assert_eq!(recipients(&dir, &p[0], "north"), Recipients { people: vec!["bea".into()], rooms: vec![] });
        assert_eq!(recipients(&dir, &p[1], "north").rooms, vec![RoomRef::parse("console:north").unwrap()]);
        assert_eq!(recipients(&dir, &p[4], "north").people, vec!["cora".to_string()]);
    }

    #[test]
    fn a_late_notice_says_how_late() {
        let p = plan(&policy());
        let case = CaseSummary { id: "C-1".into(), category: "neglect".into(), risk: "yes".into() };
        let due = Millis::parse_rfc3339("2026-11-25T10:15:00Z").unwrap();
        let on_time = notice("E-1", "immediate", &p[2], &case, 0, due);
        assert_eq!(
            on_time,
            "Escalation E-1 (immediate, level 1, repeat 1): case C-1 (neglect, risk: yes) needs acknowledging. Reply `ack C-1` to take it."
        );
        let late = notice("E-1", "immediate", &p[4], &case, 2 * 3_600_000 + 5 * 60_000, due);
        assert!(late.starts_with("FINAL escalation E-1"), "{late}");
        assert!(late.ends_with("(This was due at 2026-11-25 10:15 UTC and comes 2 h 5 min late.)"), "{late}");
    }
}
