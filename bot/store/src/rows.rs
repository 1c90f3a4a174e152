//! The rows the store keeps, as Wavelet reads them, and how each is read from a
//! database row (the `*_from_tuple` mappers) and written to one.

use crate::{Error, Result};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use wavelet_core::engine::{History, Wait};
use wavelet_core::escalation::Stage;
use wavelet_core::ledger::{Link, StoredEntry};
use wavelet_core::{Millis, OutboundMessage, RoomRef};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Waiting,
    Finished,
    Failed,
    Diverged,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Waiting => "waiting",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Diverged => "diverged",
            RunStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<RunStatus> {
        Ok(match s {
            "waiting" => RunStatus::Waiting,
            "finished" => RunStatus::Finished,
            "failed" => RunStatus::Failed,
            "diverged" => RunStatus::Diverged,
            "cancelled" => RunStatus::Cancelled,
            other => return Err(Error::Corrupt(format!("unknown run status {other}"))),
        })
    }
}

/// One run as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub workflow: String,
    pub script_hash: String,
    pub status: RunStatus,
    pub starter: String,
    pub group_id: String,
    /// The room the run was started from.
    pub room: RoomRef,
    pub history: History,
    pub wait: Option<Wait>,
    /// For answer waits: who, where, and the order waits on that pair were made in.
    pub wait_person: Option<String>,
    pub wait_room: Option<RoomRef>,
    pub wait_seq: Option<i64>,
    /// When the current question was put to the person (queued questions: when asked).
    pub wait_since: Option<Millis>,
    pub error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl RunRow {
    /// Stops waiting (answered, cancelled, fired, ended). Returns whom and where the run
    /// was waiting on, so the next queued question there can be asked.
    pub fn clear_wait(&mut self) -> Option<(String, RoomRef)> {
        self.wait = None;
        self.wait_seq = None;
        self.wait_since = None;
        let room = self.wait_room.take();
        self.wait_person.take().zip(room)
    }
}

pub(crate) const RUN_COLUMNS: &str = "id, workflow, script_hash, status, starter, group_id, room, history, wait, wait_person, wait_room, wait_seq, error, created_at, updated_at, wait_since";

pub(crate) type RunTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    i64,
    i64,
    Option<i64>,
);

/// The runs of `rows`, each decoded as it arrives, while the database reads the next.
pub(crate) async fn decode_runs(rows: impl futures_util::Stream<Item = sqlx::Result<RunTuple>>) -> Result<Vec<RunRow>> {
    rows.map_err(Error::from).and_then(|r| async { run_from_tuple(r) }).try_collect().await
}

pub(crate) fn run_from_tuple(r: RunTuple) -> Result<RunRow> {
    Ok(RunRow {
        id: r.0,
        workflow: r.1,
        script_hash: r.2,
        status: RunStatus::parse(&r.3)?,
        starter: r.4,
        group_id: r.5,
        room: parse_room(&r.6)?,
        history: serde_json::from_str(&r.7).map_err(|e| Error::Corrupt(format!("run history: {e}")))?,
        wait: r
            .8
            .map(|w| serde_json::from_str(&w))
            .transpose()
            .map_err(|e| Error::Corrupt(format!("run wait: {e}")))?,
        wait_person: r.9,
        wait_room: r.10.as_deref().map(parse_room).transpose()?,
        wait_seq: r.11,
        error: r.12,
        created_at: Millis(r.13),
        updated_at: Millis(r.14),
        wait_since: r.15.map(Millis),
    })
}

pub(crate) const CASE_SQL: &str =
    "SELECT id, run_id, group_id, subject, category, risk, status, opened_at, closed_at FROM cases WHERE id = $1";
pub(crate) type CaseTuple = (String, String, String, String, String, String, String, i64, Option<i64>);

pub(crate) fn case_from_tuple(r: CaseTuple) -> CaseRow {
    CaseRow {
        id: r.0,
        run_id: r.1,
        group_id: r.2,
        subject: r.3,
        category: r.4,
        risk: r.5,
        status: r.6,
        opened_at: Millis(r.7),
        closed_at: r.8.map(Millis),
    }
}

/// `C-12` → 12, for ordering cases opened in the same millisecond.
pub(crate) fn case_number(id: &str) -> i64 {
    id.trim_start_matches("C-").parse().unwrap_or(i64::MAX)
}

pub(crate) fn escalation_status(s: EscalationStatus) -> &'static str {
    match s {
        EscalationStatus::Active => "active",
        EscalationStatus::Acknowledged => "acknowledged",
        EscalationStatus::Stopped => "stopped",
    }
}

/// An outbox row's message, from its stored columns.
pub(crate) fn outbox_message(key: String, room: &str, person: Option<String>, body: &str) -> Result<OutboundMessage> {
    Ok(OutboundMessage {
        idempotency_key: key,
        room: parse_room(room)?,
        person,
        body: serde_json::from_str(body).map_err(|e| Error::Corrupt(format!("outbox body: {e}")))?,
    })
}

pub(crate) fn parse_room(s: &str) -> Result<RoomRef> {
    RoomRef::parse(s).ok_or_else(|| Error::Corrupt(format!("bad room {s}")))
}

pub(crate) fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// A case as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CaseRow {
    pub id: String,
    pub run_id: String,
    pub group_id: String,
    pub subject: String,
    pub category: String,
    pub risk: String,
    pub status: String,
    pub opened_at: Millis,
    pub closed_at: Option<Millis>,
}

/// An outbox row waiting for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMessage {
    pub id: i64,
    pub message: OutboundMessage,
    pub attempts: i32,
}

/// A timer that is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueTimer {
    pub run_id: String,
    pub step: i64,
    pub due_at: Millis,
}

/// Something due, claimed by one process: a run's timer, an escalation's next stage, or
/// a scheduled workflow.
#[derive(Clone, Debug, PartialEq)]
pub enum Due {
    Timer(DueTimer),
    Escalation(Box<EscalationRow>),
    Schedule(DueSchedule),
}

impl Due {
    pub fn due_at(&self) -> Millis {
        match self {
            Due::Timer(t) => t.due_at,
            Due::Escalation(e) => e.next_at.unwrap_or(Millis(0)),
            Due::Schedule(s) => s.due_at,
        }
    }
}

/// A scheduled workflow that is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueSchedule {
    pub id: String,
    pub cron: String,
    pub workflow: String,
    pub group_id: String,
    pub due_at: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EscalationStatus {
    Active,
    Acknowledged,
    /// Its case was closed first.
    Stopped,
}

/// One escalation as stored: its plan (the policy when it began) and where it has got to.
#[derive(Clone, Debug, PartialEq)]
pub struct EscalationRow {
    pub id: String,
    pub case_id: String,
    pub policy: String,
    pub run_id: String,
    pub group_id: String,
    pub plan: Vec<Stage>,
    /// The stage notified last (index into `plan`).
    pub stage: usize,
    pub status: EscalationStatus,
    /// When the next stage is due; `None` after the final level, or once acknowledged.
    pub next_at: Option<Millis>,
    /// Everyone notified so far: they may acknowledge.
    pub notified: Vec<String>,
    pub started_at: Millis,
    pub acked_by: Option<String>,
    pub acked_at: Option<Millis>,
}

pub(crate) const ESCALATION_COLUMNS: &str =
    "id, case_id, policy, run_id, group_id, plan, stage, status, next_at, notified, started_at, acked_by, acked_at";

pub(crate) type EscalationTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    Option<i64>,
    String,
    i64,
    Option<String>,
    Option<i64>,
);

pub(crate) fn escalation_from_tuple(r: EscalationTuple) -> Result<EscalationRow> {
    Ok(EscalationRow {
        id: r.0,
        case_id: r.1,
        policy: r.2,
        run_id: r.3,
        group_id: r.4,
        plan: serde_json::from_str(&r.5).map_err(|e| Error::Corrupt(format!("escalation plan: {e}")))?,
        stage: usize::try_from(r.6).map_err(|_| Error::Corrupt("escalation stage".into()))?,
        status: match r.7.as_str() {
            "active" => EscalationStatus::Active,
            "acknowledged" => EscalationStatus::Acknowledged,
            "stopped" => EscalationStatus::Stopped,
            other => return Err(Error::Corrupt(format!("unknown escalation status {other}"))),
        },
        next_at: r.8.map(Millis),
        notified: serde_json::from_str(&r.9).map_err(|e| Error::Corrupt(format!("escalation notified: {e}")))?,
        started_at: Millis(r.10),
        acked_by: r.11,
        acked_at: r.12.map(Millis),
    })
}

/// A message claimed for delivery by this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedMessage {
    pub id: i64,
    pub message: OutboundMessage,
    pub attempts: i32,
    pub run_id: Option<String>,
    /// The case, when this is one room's copy of a share.
    pub share_case: Option<String>,
}

/// A ledger row joined with its content: seq, at, kind, case, run, actor, script hash,
/// content hash, previous hash, hash, content, erased at.
pub(crate) type EntryTuple = (
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
);

pub(crate) fn entry_from_tuple(r: EntryTuple) -> Result<StoredEntry> {
    // Unreadable or missing content (without a recorded erasure) is reported by verify as
    // changed content: not a crash, and not an erasure.
    let content = match (r.10, r.11) {
        (Some(c), _) => {
            Some(serde_json::from_str(&c).unwrap_or_else(|_| serde_json::Value::String("<unreadable>".into())))
        }
        (None, Some(_erased_at)) => None,
        (None, None) => Some(serde_json::Value::String("<content row missing>".into())),
    };
    Ok(StoredEntry {
        link: Link {
            seq: r.0,
            at: Millis(r.1),
            kind: r.2,
            case_id: r.3,
            run_id: r.4,
            actor: r.5,
            script_hash: r.6,
            content_hash: r.7,
            prev_hash: r.8,
            hash: r.9,
        },
        content,
    })
}
