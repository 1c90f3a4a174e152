//! Every idempotency key Wavelet gives a message, one function each. A key is stable
//! across retries and restarts: it becomes the platform's dedup key (the Matrix
//! transaction id, the Discord nonce), and the outbox keeps the first message queued
//! under it. Two messages that must both arrive never share a key; the same message
//! queued twice (a replay, a redelivered event) always does. ARCHITECTURE.md lists them.
//!
//! Keys that are sent to several people end in the person (`…:PERSON`, see
//! [`for_person`]); the rest of the key says what the message is.

use crate::Platform;
use std::fmt::Display;

/// A run's question (or message) to one person at `step`: `run:<run>:<step>`.
pub fn question(run: &str, step: usize) -> String {
    format!("run:{run}:{step}")
}

/// The notice that a run's question waits behind another in the same room:
/// `run:<run>:<step>:queued`.
pub fn question_queued(run: &str, step: usize) -> String {
    format!("run:{run}:{step}:queued")
}

/// A run's message at `step` to the `n`-th room of a group (a share, a post):
/// `run:<run>:<step>:<n>`.
pub fn run_room(run: &str, step: usize, n: usize) -> String {
    format!("run:{run}:{step}:{n}")
}

/// Why a run tells someone something outside its script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunNotice {
    /// The run failed: its starter is told.
    Failed,
    /// The run failed or diverged: the coordinators are told where.
    Coordinators,
}

/// A run's notice to one person: `run:<run>:failed:<person>`,
/// `run:<run>:coordinators:<person>`.
pub fn run_notice(run: &str, why: RunNotice, person: &str) -> String {
    let why = match why {
        RunNotice::Failed => "failed",
        RunNotice::Coordinators => "coordinators",
    };
    format!("run:{run}:{why}:{person}")
}

/// Wavelet's reply to an inbound event: `re:<platform>:<event>`.
pub fn reply(platform: Platform, event: &str) -> String {
    format!("re:{platform}:{event}")
}

/// What an acknowledgement (inbound event `event`) tells someone other than the one who
/// acknowledged: `ack:<platform>:<event>:<person>`.
pub fn acknowledged(platform: Platform, event: &str, person: &str) -> String {
    format!("ack:{platform}:{event}:{person}")
}

/// An escalation stage's notice to one person: `esc:<escalation>:<stage>:<person>`.
pub fn escalation_person(escalation: &str, stage: usize, person: &str) -> String {
    format!("esc:{escalation}:{stage}:{person}")
}

/// An escalation stage's notice to the `n`-th room it reaches:
/// `esc:<escalation>:<stage>:room:<n>`.
pub fn escalation_room(escalation: &str, stage: usize, n: usize) -> String {
    format!("esc:{escalation}:{stage}:room:{n}")
}

/// The coordinators' notice that an escalation stage reached nobody (one per coordinator,
/// see [`for_person`]): `esc:<escalation>:<stage>:nobody`.
pub fn escalation_nobody(escalation: &str, stage: usize) -> String {
    format!("esc:{escalation}:{stage}:nobody")
}

/// The coordinators' notice that outbox message `outbox_id` was parked (one per
/// coordinator, see [`for_person`]): `failed:<outbox id>`.
pub fn parked(outbox_id: i64) -> String {
    format!("failed:{outbox_id}")
}

/// The ledger witness due at `due_at` (ms), posted in `room`: `witness:<due>:<room>`.
pub fn witness(due_at: i64, room: impl Display) -> String {
    format!("witness:{due_at}:{room}")
}

/// The alarm that the witness due at `due_at` was withheld (one per person told, see
/// [`for_person`]): `witness:<due>:withheld`.
pub fn witness_withheld(due_at: i64) -> String {
    format!("witness:{due_at}:withheld")
}

/// The coordinators' notice that a workflow version was loaded while running (the time
/// makes each its own message: a version may be loaded again): `reload:<hash>:<at>`.
pub fn workflow_reloaded(hash: &str, at: i64) -> String {
    format!("reload:{hash}:{at}")
}

/// The coordinators' notice that a workflow file was refused: `refused:<file>:<at>`.
pub fn workflow_refused(file: &str, at: i64) -> String {
    format!("refused:{file}:{at}")
}

/// The coordinators' notice that schedule `id`, due at `due_at` (ms), could not start its
/// workflow (one per coordinator, see [`for_person`]): `schedule:<id>:<due>`.
pub fn schedule_failed(id: &str, due_at: i64) -> String {
    format!("schedule:{id}:{due_at}")
}

/// One person's copy of a notice sent to several: `<key>:<person>`.
pub fn for_person(key: &str, person: &str) -> String {
    format!("{key}:{person}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(actual: String, expected: &str) {
        assert_eq!(actual, expected);
    }

    /// The keys are the platforms' dedup keys for messages already queued in stores:
    /// a changed format would resend them after an upgrade.
    #[test]
    fn every_key_keeps_its_format() {
        check(question("R-1", 3), "run:R-1:3");
        check(question_queued("R-1", 3), "run:R-1:3:queued");
        check(run_room("R-1", 3, 0), "run:R-1:3:0");
        check(run_notice("R-1", RunNotice::Failed, "alice"), "run:R-1:failed:alice");
        check(run_notice("R-1", RunNotice::Coordinators, "cora"), "run:R-1:coordinators:cora");
        check(reply(Platform::Matrix, "$ev"), "re:matrix:$ev");
        check(acknowledged(Platform::Discord, "interaction:9", "bea"), "ack:discord:interaction:9:bea");
        check(escalation_person("E-1", 2, "carl"), "esc:E-1:2:carl");
        check(escalation_room("E-1", 2, 1), "esc:E-1:2:room:1");
        check(escalation_nobody("E-1", 2), "esc:E-1:2:nobody");
        check(parked(42), "failed:42");
        check(witness(1_764_000_000_000, "console:reviewers"), "witness:1764000000000:console:reviewers");
        check(witness_withheld(1_764_000_000_000), "witness:1764000000000:withheld");
        check(workflow_reloaded("abc", 7), "reload:abc:7");
        check(workflow_refused("x.rhai", 7), "refused:x.rhai:7");
        check(schedule_failed("monday-digest", 7), "schedule:monday-digest:7");
        check(for_person(&parked(42), "cora"), "failed:42:cora");
    }
}
