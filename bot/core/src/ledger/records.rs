//! What each kind of ledger entry holds, as types. A [`Record`] is the content of one
//! entry; [`Record::content`] is the one place a record becomes the JSON the chain hashes
//! (its canonical encoding is [`super::canonical_json`]), and [`Record::kind`] names its
//! entry kind. A change to a field here is a change to the audit format: the snapshots in
//! `tests/ledger_records.rs` make it a reviewed one.
//!
//! Field names are the format's, as reviewers and exports see them; optional fields that
//! are written as `null` when absent are `Option`s, and fields left out when absent say so.

use super::{Draft, EntryKind};
use crate::Millis;
use crate::escalation::Stage;
use serde::Serialize;

/// A person a share reached (or would have), and their agency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recipient {
    pub person: String,
    pub agency: String,
}

/// How a scheduled run came about: added to its `run.started` record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScheduleOrigin {
    /// The schedule's id.
    pub schedule: String,
    /// When it was due (RFC 3339).
    pub due: String,
    /// How late it fired (Wavelet was down when it fell due).
    pub late_ms: i64,
}

/// An escalation an acknowledgement stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoppedEscalation {
    pub escalation: String,
    /// The stage it had reached, 1-based.
    pub stage: usize,
    /// Milliseconds from its start to the acknowledgement.
    pub after_ms: i64,
}

/// A message that went through the outbox (a share's copy delivered, or a message parked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutboxMessage {
    /// The outbox row.
    pub outbox: i64,
    /// Its idempotency key.
    pub key: String,
    pub room: String,
    pub run: Option<String>,
}

/// What an audit read was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AuditReadOf {
    /// A case's timeline: `{"read": "case timeline", "case": …}`.
    Case { read: &'static str, case: String },
    /// An export of the ledger: `{"read": "export", "format": …}`.
    Export { read: &'static str, format: String },
}

impl AuditReadOf {
    pub fn case(case: &str) -> AuditReadOf {
        AuditReadOf::Case { read: "case timeline", case: case.to_string() }
    }

    pub fn export(format: &str) -> AuditReadOf {
        AuditReadOf::Export { read: "export", format: format.to_string() }
    }
}

/// The content of one ledger entry, by kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Record {
    /// A run began (by a command, or a schedule: `origin`).
    RunStarted {
        workflow: String,
        command: String,
        group: String,
        room: String,
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        origin: Option<ScheduleOrigin>,
    },
    RunFinished {},
    RunFailed {
        error: Option<String>,
    },
    /// A replay asked for a different effect than the history holds at `step`.
    RunDiverged {
        step: usize,
        recorded: String,
        requested: String,
    },
    RunCancelled {
        room: String,
    },
    QuestionAsked {
        step: usize,
        to: String,
        /// `None` when the person has no room Wavelet can reach them in.
        room: Option<String>,
        prompt: String,
        choices: Option<Vec<String>>,
    },
    QuestionAnswered {
        step: usize,
        answer: String,
        room: String,
    },
    MessageTold {
        step: usize,
        to: String,
        text: String,
    },
    /// A message posted to a group's rooms (`send`).
    MessageSent {
        step: usize,
        group: String,
        rooms: Vec<String>,
        text: String,
    },
    Share {
        step: usize,
        group: String,
        what: String,
        recipients: Vec<Recipient>,
        rooms: Vec<String>,
        purpose: String,
        lawful_basis: String,
        consent: Option<String>,
        decided_by: String,
        workflow: String,
    },
    /// A decision not to share: with whom it would have gone, and why not.
    ShareDeclined {
        step: usize,
        group: String,
        recipients: Vec<Recipient>,
        rooms: Vec<String>,
        reason: String,
        consent: Option<String>,
        decided_by: String,
        workflow: String,
    },
    CaseOpened {
        step: usize,
        subject: String,
        category: String,
        risk: String,
        group: String,
    },
    CaseClosed {
        step: usize,
        reason: String,
        stopped_escalations: Vec<String>,
    },
    CaseNote {
        step: usize,
        text: String,
    },
    /// A run sleeps until `until`, or (`waits_for`) waits for something until then.
    TimerSet {
        step: usize,
        until: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        waits_for: Option<&'static str>,
    },
    TimerFired {
        step: i64,
        due: String,
        late_ms: i64,
    },
    RefusedUnknownPerson {
        account: String,
        room: String,
        event_id: String,
    },
    RefusedNotAllowed {
        command: String,
        room: String,
    },
    WorkflowLoaded {
        workflow: String,
    },
    WorkflowRefused {
        file: String,
        error: String,
    },
    AuditRead(AuditReadOf),
    /// Entry `seq`'s content was lawfully erased; `reason` is a reference.
    ContentErased {
        seq: i64,
        reason: String,
    },
    EscalationStarted {
        step: usize,
        escalation: String,
        policy: String,
        stages: Vec<Stage>,
    },
    EscalationNotified {
        escalation: String,
        policy: String,
        /// 1-based.
        stage: usize,
        level: usize,
        round: u32,
        #[serde(rename = "final")]
        is_final: bool,
        people: Vec<String>,
        rooms: Vec<String>,
        text: String,
        due: String,
        late_ms: i64,
    },
    CaseAcknowledged {
        room: String,
        escalations: Vec<StoppedEscalation>,
        /// Runs that waited for this acknowledgement and go on.
        runs: Vec<String>,
    },
    AcknowledgementLate {
        room: String,
        already_by: Option<String>,
        already_at: Option<String>,
    },
    AcknowledgementRefused {
        room: String,
    },
    DeliveryFailed {
        #[serde(flatten)]
        message: OutboxMessage,
        attempts: i32,
        error: String,
    },
    /// An invitation to a room not in the configuration, declined.
    RefusedInvite {
        room: String,
        direct: bool,
    },
    ShareDelivered(OutboxMessage),
    LedgerWitnessed {
        seq: i64,
        hash: String,
        group: String,
        rooms: Vec<String>,
    },
    LedgerWitnessWithheld {
        since: i64,
        fault_seq: i64,
        problem: String,
        group: String,
    },
}

impl Record {
    /// The kind of entry this record is the content of.
    pub fn kind(&self) -> EntryKind {
        match self {
            Record::RunStarted { .. } => EntryKind::RunStarted,
            Record::RunFinished {} => EntryKind::RunFinished,
            Record::RunFailed { .. } => EntryKind::RunFailed,
            Record::RunDiverged { .. } => EntryKind::RunDiverged,
            Record::RunCancelled { .. } => EntryKind::RunCancelled,
            Record::QuestionAsked { .. } => EntryKind::QuestionAsked,
            Record::QuestionAnswered { .. } => EntryKind::QuestionAnswered,
            Record::MessageTold { .. } => EntryKind::MessageTold,
            Record::MessageSent { .. } => EntryKind::MessageSent,
            Record::Share { .. } => EntryKind::Share,
            Record::ShareDeclined { .. } => EntryKind::ShareDeclined,
            Record::CaseOpened { .. } => EntryKind::CaseOpened,
            Record::CaseClosed { .. } => EntryKind::CaseClosed,
            Record::CaseNote { .. } => EntryKind::CaseNote,
            Record::TimerSet { .. } => EntryKind::TimerSet,
            Record::TimerFired { .. } => EntryKind::TimerFired,
            Record::RefusedUnknownPerson { .. } => EntryKind::RefusedUnknownPerson,
            Record::RefusedNotAllowed { .. } => EntryKind::RefusedNotAllowed,
            Record::WorkflowLoaded { .. } => EntryKind::WorkflowLoaded,
            Record::WorkflowRefused { .. } => EntryKind::WorkflowRefused,
            Record::AuditRead(_) => EntryKind::AuditRead,
            Record::ContentErased { .. } => EntryKind::ContentErased,
            Record::EscalationStarted { .. } => EntryKind::EscalationStarted,
            Record::EscalationNotified { .. } => EntryKind::EscalationNotified,
            Record::CaseAcknowledged { .. } => EntryKind::CaseAcknowledged,
            Record::AcknowledgementLate { .. } => EntryKind::AcknowledgementLate,
            Record::AcknowledgementRefused { .. } => EntryKind::AcknowledgementRefused,
            Record::DeliveryFailed { .. } => EntryKind::DeliveryFailed,
            Record::RefusedInvite { .. } => EntryKind::RefusedInvite,
            Record::ShareDelivered(_) => EntryKind::ShareDelivered,
            Record::LedgerWitnessed { .. } => EntryKind::LedgerWitnessed,
            Record::LedgerWitnessWithheld { .. } => EntryKind::LedgerWitnessWithheld,
        }
    }

    /// The entry's content, as the chain hashes it (after [`super::canonical_json`]).
    pub fn content(&self) -> serde_json::Value {
        // Every field is a string, number, bool, list or map of those: serialising cannot
        // fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl Draft {
    /// `record`, done at `at` by `actor` (a person, an account, or `wavelet`), about no
    /// case and outside any run until [`Draft::about`] and [`Draft::in_run`] say so.
    pub fn of(at: Millis, actor: impl Into<String>, record: Record) -> Draft {
        Draft {
            at,
            kind: record.kind(),
            case_id: None,
            run_id: None,
            actor: actor.into(),
            script_hash: None,
            content: record.content(),
        }
    }

    /// The case this entry is about.
    pub fn about(mut self, case_id: Option<String>) -> Draft {
        self.case_id = case_id;
        self
    }

    /// The run this entry belongs to, and the script version it ran, if it acted by one.
    pub fn in_run(mut self, run_id: Option<String>, script_hash: Option<String>) -> Draft {
        self.run_id = run_id;
        self.script_hash = script_hash;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::canonical_json;

    fn check(record: Record, kind: &str, expected: &str) {
        assert_eq!(record.kind().as_str(), kind);
        assert_eq!(canonical_json(&record.content()), expected);
    }

    fn message() -> OutboxMessage {
        OutboxMessage { outbox: 7, key: "run:R-1:5:0".into(), room: "matrix:!r".into(), run: Some("R-1".into()) }
    }

    /// One example of every kind, in its canonical form: the audit format, pinned.
    #[test]
    fn every_record_has_its_canonical_form() {
        let origin = ScheduleOrigin { schedule: "monday".into(), due: "2026-11-30T09:00:00Z".into(), late_ms: 5 };
        check(
            Record::RunStarted {
                workflow: "digest".into(),
                command: "digest".into(),
                group: "north".into(),
                room: "console:north".into(),
                origin: Some(origin),
            },
            "run.started",
            r#"{"command":"digest","due":"2026-11-30T09:00:00Z","group":"north","late_ms":5,"room":"console:north","schedule":"monday","workflow":"digest"}"#,
        );
        check(
            Record::RunStarted {
                workflow: "raise_concern".into(),
                command: "concern".into(),
                group: "north".into(),
                room: "console:north".into(),
                origin: None,
            },
            "run.started",
            r#"{"command":"concern","group":"north","room":"console:north","workflow":"raise_concern"}"#,
        );
        check(Record::RunFinished {}, "run.finished", "{}");
        check(
            Record::RunFailed { error: Some("x.rhai:1:2: boom".into()) },
            "run.failed",
            r#"{"error":"x.rhai:1:2: boom"}"#,
        );
        check(
            Record::RunDiverged { step: 0, recorded: "ask".into(), requested: "tell".into() },
            "run.diverged",
            r#"{"recorded":"ask","requested":"tell","step":0}"#,
        );
        check(
            Record::RunCancelled { room: "dm:console:alice".into() },
            "run.cancelled",
            r#"{"room":"dm:console:alice"}"#,
        );
        check(
            Record::QuestionAsked {
                step: 2,
                to: "alice".into(),
                room: None,
                prompt: "Risk?".into(),
                choices: Some(vec!["no".into(), "yes".into()]),
            },
            "question.asked",
            r#"{"choices":["no","yes"],"prompt":"Risk?","room":null,"step":2,"to":"alice"}"#,
        );
        check(
            Record::QuestionAnswered { step: 2, answer: "yes".into(), room: "dm:console:alice".into() },
            "question.answered",
            r#"{"answer":"yes","room":"dm:console:alice","step":2}"#,
        );
        check(
            Record::MessageTold { step: 3, to: "alice".into(), text: "Thanks".into() },
            "message.told",
            r#"{"step":3,"text":"Thanks","to":"alice"}"#,
        );
        check(
            Record::MessageSent {
                step: 1,
                group: "north".into(),
                rooms: vec!["console:north".into()],
                text: "Hi".into(),
            },
            "message.sent",
            r#"{"group":"north","rooms":["console:north"],"step":1,"text":"Hi"}"#,
        );
        let recipients = vec![Recipient { person: "bea".into(), agency: "st-marys".into() }];
        check(
            Record::Share {
                step: 6,
                group: "north".into(),
                what: "New concern C-1".into(),
                recipients: recipients.clone(),
                rooms: vec!["console:north".into()],
                purpose: "protect a child".into(),
                lawful_basis: "public task".into(),
                consent: None,
                decided_by: "alice".into(),
                workflow: "raise_concern".into(),
            },
            "share",
            r#"{"consent":null,"decided_by":"alice","group":"north","lawful_basis":"public task","purpose":"protect a child","recipients":[{"agency":"st-marys","person":"bea"}],"rooms":["console:north"],"step":6,"what":"New concern C-1","workflow":"raise_concern"}"#,
        );
        check(
            Record::ShareDeclined {
                step: 6,
                group: "north".into(),
                recipients,
                rooms: vec![],
                reason: "no consent".into(),
                consent: Some("refused".into()),
                decided_by: "alice".into(),
                workflow: "raise_concern".into(),
            },
            "share.declined",
            r#"{"consent":"refused","decided_by":"alice","group":"north","reason":"no consent","recipients":[{"agency":"st-marys","person":"bea"}],"rooms":[],"step":6,"workflow":"raise_concern"}"#,
        );
        check(
            Record::CaseOpened {
                step: 4,
                subject: "AB 2015".into(),
                category: "neglect".into(),
                risk: "yes".into(),
                group: "north".into(),
            },
            "case.opened",
            r#"{"category":"neglect","group":"north","risk":"yes","step":4,"subject":"AB 2015"}"#,
        );
        check(
            Record::CaseClosed { step: 9, reason: "resolved".into(), stopped_escalations: vec!["E-1".into()] },
            "case.closed",
            r#"{"reason":"resolved","step":9,"stopped_escalations":["E-1"]}"#,
        );
        check(Record::CaseNote { step: 5, text: "Seen".into() }, "case.note", r#"{"step":5,"text":"Seen"}"#);
        check(
            Record::TimerSet { step: 1, until: "2026-11-25T09:00:00Z".into(), waits_for: None },
            "timer.set",
            r#"{"step":1,"until":"2026-11-25T09:00:00Z"}"#,
        );
        check(
            Record::TimerSet { step: 1, until: "2026-11-25T09:00:00Z".into(), waits_for: Some("acknowledgement") },
            "timer.set",
            r#"{"step":1,"until":"2026-11-25T09:00:00Z","waits_for":"acknowledgement"}"#,
        );
        check(
            Record::TimerFired { step: 1, due: "2026-11-25T09:00:00Z".into(), late_ms: 0 },
            "timer.fired",
            r#"{"due":"2026-11-25T09:00:00Z","late_ms":0,"step":1}"#,
        );
        check(
            Record::RefusedUnknownPerson {
                account: "console:zed".into(),
                room: "console:north".into(),
                event_id: "e1".into(),
            },
            "refused.unknown_person",
            r#"{"account":"console:zed","event_id":"e1","room":"console:north"}"#,
        );
        check(
            Record::RefusedNotAllowed { command: "digest".into(), room: "console:north".into() },
            "refused.not_allowed",
            r#"{"command":"digest","room":"console:north"}"#,
        );
        check(Record::WorkflowLoaded { workflow: "digest".into() }, "workflow.loaded", r#"{"workflow":"digest"}"#);
        check(
            Record::WorkflowRefused { file: "x.rhai".into(), error: "x.rhai:1:1: bad".into() },
            "workflow.refused",
            r#"{"error":"x.rhai:1:1: bad","file":"x.rhai"}"#,
        );
        check(Record::AuditRead(AuditReadOf::case("C-1")), "audit.read", r#"{"case":"C-1","read":"case timeline"}"#);
        check(Record::AuditRead(AuditReadOf::export("jsonl")), "audit.read", r#"{"format":"jsonl","read":"export"}"#);
        check(
            Record::ContentErased { seq: 12, reason: "RET-1".into() },
            "content.erased",
            r#"{"reason":"RET-1","seq":12}"#,
        );
        let stage = Stage { level: 1, round: 0, is_final: false, notify: vec![], wait_ms: Some(900_000) };
        let stage_json = canonical_json(&serde_json::to_value(&stage).unwrap());
        check(
            Record::EscalationStarted {
                step: 7,
                escalation: "E-1".into(),
                policy: "immediate".into(),
                stages: vec![stage],
            },
            "escalation.started",
            &format!(r#"{{"escalation":"E-1","policy":"immediate","stages":[{stage_json}],"step":7}}"#),
        );
        check(
            Record::EscalationNotified {
                escalation: "E-1".into(),
                policy: "immediate".into(),
                stage: 1,
                level: 1,
                round: 0,
                is_final: false,
                people: vec!["bea".into()],
                rooms: vec![],
                text: "Escalation".into(),
                due: "2026-11-25T09:00:00Z".into(),
                late_ms: 0,
            },
            "escalation.notified",
            r#"{"due":"2026-11-25T09:00:00Z","escalation":"E-1","final":false,"late_ms":0,"level":1,"people":["bea"],"policy":"immediate","rooms":[],"round":0,"stage":1,"text":"Escalation"}"#,
        );
        check(
            Record::CaseAcknowledged {
                room: "dm:console:carl".into(),
                escalations: vec![StoppedEscalation { escalation: "E-1".into(), stage: 1, after_ms: 300_000 }],
                runs: vec![],
            },
            "case.acknowledged",
            r#"{"escalations":[{"after_ms":300000,"escalation":"E-1","stage":1}],"room":"dm:console:carl","runs":[]}"#,
        );
        check(
            Record::AcknowledgementLate { room: "console:north".into(), already_by: None, already_at: None },
            "acknowledgement.late",
            r#"{"already_at":null,"already_by":null,"room":"console:north"}"#,
        );
        check(
            Record::AcknowledgementRefused { room: "dm:console:eve".into() },
            "acknowledgement.refused",
            r#"{"room":"dm:console:eve"}"#,
        );
        check(
            Record::DeliveryFailed { message: message(), attempts: 12, error: "permanent: gone".into() },
            "delivery.failed",
            r#"{"attempts":12,"error":"permanent: gone","key":"run:R-1:5:0","outbox":7,"room":"matrix:!r","run":"R-1"}"#,
        );
        check(
            Record::RefusedInvite { room: "matrix:!x".into(), direct: true },
            "refused.invite",
            r#"{"direct":true,"room":"matrix:!x"}"#,
        );
        check(
            Record::ShareDelivered(message()),
            "share.delivered",
            r#"{"key":"run:R-1:5:0","outbox":7,"room":"matrix:!r","run":"R-1"}"#,
        );
        check(
            Record::LedgerWitnessed {
                seq: 40,
                hash: "ab".into(),
                group: "reviewers".into(),
                rooms: vec!["console:reviewers".into()],
            },
            "ledger.witnessed",
            r#"{"group":"reviewers","hash":"ab","rooms":["console:reviewers"],"seq":40}"#,
        );
        check(
            Record::LedgerWitnessWithheld {
                since: 3,
                fault_seq: 5,
                problem: "changed".into(),
                group: "reviewers".into(),
            },
            "ledger.witness_withheld",
            r#"{"fault_seq":5,"group":"reviewers","problem":"changed","since":3}"#,
        );
    }
}
