//! What the benchmarks share: a generated directory and fresh stores.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use wavelet_core::{Account, Config, InboundEvent, Millis, Platform, RoomRef};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Members per group: a realistic multi-agency group, so each share lists its recipients.
pub const GROUP_SIZE: usize = 20;

/// A directory of `n` practitioners (`p0`, `p1`, …) in groups of [`GROUP_SIZE`], each
/// group with its own console room and its first member a lead too, serving the
/// workflows in `workflows`, with the example's escalation policies.
pub fn config(dir: &Path, workflows: &Path, n: usize) -> Config {
    let mut s = format!(
        "[workflows]\ndir = \"{}\"\n[[role]]\nid = \"practitioner\"\n[[role]]\nid = \"lead\"\n[[agency]]\nid = \"school\"\nname = \"School\"\n",
        workflows.display()
    );
    for i in 0..n {
        let roles = if i % GROUP_SIZE == 0 { "\"practitioner\", \"lead\"" } else { "\"practitioner\"" };
        s.push_str(&format!("[[person]]\nid = \"p{i}\"\nname = \"P {i}\"\nagency = \"school\"\nroles = [{roles}]\n"));
    }
    for (id, wait) in [("immediate", "15m"), ("prompt", "4h")] {
        s.push_str(&format!(
            "[[policy]]\nid = \"{id}\"\n[[policy.level]]\nnotify = [\"role:lead\"]\nwait = \"{wait}\"\n[policy.final]\nnotify = [\"group\"]\n"
        ));
    }
    for g in 0..n.div_ceil(GROUP_SIZE) {
        let members: Vec<String> =
            (g * GROUP_SIZE..((g + 1) * GROUP_SIZE).min(n)).map(|i| format!("\"p{i}\"")).collect();
        s.push_str(&format!(
            "[[group]]\nid = \"g{g}\"\nname = \"Group {g}\"\nmembers = [{}]\nrooms = [\"console:g{g}\"]\n",
            members.join(", ")
        ));
    }
    let path = dir.join("bench.toml");
    Config::parse(&path, &s, &|_| None).expect("bench config")
}

/// Practitioner `person`'s `step`-th message of a concern dialog in the generated
/// directory: step 0 in their group's room (the command), the rest privately (answers).
pub fn event(person: usize, step: usize, text: &str, received_at: Millis) -> InboundEvent {
    let who = format!("p{person}");
    let room = if step == 0 {
        RoomRef::Shared { platform: Platform::Console, id: format!("g{}", person / GROUP_SIZE) }
    } else {
        RoomRef::Direct { platform: Platform::Console, account: who.clone() }
    };
    InboundEvent {
        event_id: format!("b-{person}-{step}"),
        room,
        sender: Account { platform: Platform::Console, id: who },
        text: text.into(),
        received_at,
        on_message: None,
    }
}

/// A fresh store: a SQLite file in `dir`, or a new database on `DATABASE_URL`'s server
/// (`None` when it is not set).
pub async fn fresh_url(backend: &str, dir: &Path, tag: &str) -> Option<String> {
    match backend {
        "sqlite" => Some(format!("sqlite://{}", dir.join(format!("{tag}.db")).display())),
        _ => {
            let base = std::env::var("DATABASE_URL").ok()?;
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&base).await.ok()?;
            let db = format!("wavelet_bench_{tag}_{}", std::process::id());
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}"))).execute(&mut c).await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut c).await.ok()?;
            let (head, _) = base.rsplit_once('/')?;
            Some(format!("{head}/{db}"))
        }
    }
}

/// This process's CPU time so far (user + system), from /proc.
pub fn cpu_time() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; after the `)` the state (field 3)
    // comes first. In ticks of 1/100 s.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let ticks = tick(11) + tick(12);
    std::time::Duration::from_millis(ticks * 10)
}
