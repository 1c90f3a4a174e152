//! What a step of a script asks of the host, as data: effects, waits, queries, the run's
//! history and the outcome of an advance; and the `Host` the runtime implements.

use super::*;

/// What a script may be asked to validate about an answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerSpec {
    /// A closed list: the answer is one of these (by number or by label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    /// A regular expression the whole answer must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Said to the person when the answer does not fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// A tighter limit than the configuration's, in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chars: Option<usize>,
}

/// One recorded effect of a run: what was asked for (its kind and a fingerprint of its
/// arguments, to detect divergence) and its result once known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub kind: EffectKind,
    pub fingerprint: String,
    /// `None` while the run waits for it (only ever the last entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

pub type History = Vec<HistoryEntry>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectKind {
    Ask,
    Choose,
    Tell,
    Send,
    Share,
    DeclineShare,
    OpenCase,
    CloseCase,
    Note,
    Now,
    Sleep,
    SleepUntil,
    Escalate,
    WaitForAck,
    OpenCases,
    Members,
}

impl EffectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EffectKind::Ask => "ask",
            EffectKind::Choose => "choose",
            EffectKind::Tell => "tell",
            EffectKind::Send => "send",
            EffectKind::Share => "share",
            EffectKind::DeclineShare => "decline_share",
            EffectKind::OpenCase => "open_case",
            EffectKind::CloseCase => "close_case",
            EffectKind::Note => "note",
            EffectKind::Now => "now",
            EffectKind::Sleep => "sleep",
            EffectKind::SleepUntil => "sleep_until",
            EffectKind::Escalate => "escalate",
            EffectKind::WaitForAck => "wait_for_ack",
            EffectKind::OpenCases => "open_cases",
            EffectKind::Members => "members",
        }
    }
}

/// The case a run opened, as scripts and the store see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseFields {
    pub id: String,
    pub subject: String,
    pub category: String,
    pub risk: String,
}

/// Something the host must do for a run, produced by the step that asked for it.
/// `step` is the effect's position in the history: with the run id it makes the
/// idempotency key of anything sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    Ask {
        step: usize,
        person: String,
        prompt: String,
        spec: AnswerSpec,
    },
    Tell {
        step: usize,
        person: String,
        text: String,
    },
    Send {
        step: usize,
        group: String,
        text: String,
    },
    Share {
        step: usize,
        group: String,
        case_id: String,
        text: String,
        purpose: String,
        basis: String,
        consent: Option<String>,
    },
    /// A decision not to share with a group, and why: recorded as a share is, nothing sent.
    DeclineShare {
        step: usize,
        group: String,
        case_id: String,
        reason: String,
        consent: Option<String>,
    },
    OpenCase {
        step: usize,
        case: CaseFields,
    },
    CloseCase {
        step: usize,
        case_id: String,
        reason: String,
    },
    Note {
        step: usize,
        case_id: String,
        text: String,
    },
    Sleep {
        step: usize,
        until: Millis,
    },
    /// Start escalating a case by a policy from the configuration.
    Escalate {
        step: usize,
        case_id: String,
        policy: String,
        escalation_id: String,
    },
    /// Wait for the case's next acknowledgement, at most until `until`.
    WaitForAck {
        step: usize,
        case_id: String,
        until: Millis,
    },
}

/// Why a run is waiting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "wait", rename_all = "snake_case")]
pub enum Wait {
    Answer {
        step: usize,
        person: String,
        prompt: String,
        spec: AnswerSpec,
    },
    Timer {
        step: usize,
        until: Millis,
    },
    /// The case's next acknowledgement, or `until`, whichever comes first.
    Ack {
        step: usize,
        case_id: String,
        until: Millis,
    },
    /// Something only the store knows; the host answers at once and advances again.
    Query {
        step: usize,
        query: Query,
    },
}

/// What a script may ask of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum Query {
    /// The group's open cases, oldest first, with their escalations' state.
    OpenCases { group: String },
}

impl Wait {
    pub fn step(&self) -> usize {
        match self {
            Wait::Answer { step, .. }
            | Wait::Timer { step, .. }
            | Wait::Ack { step, .. }
            | Wait::Query { step, .. } => *step,
        }
    }
}

/// How an advance ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Waiting(Wait),
    Finished,
    /// The script raised an error or broke a sandbox limit. What it did before that stands.
    Failed(ScriptError),
    /// Replay asked for a different effect than the history holds at `step`: nothing of
    /// this advance may be performed.
    Diverged {
        step: usize,
        recorded: String,
        requested: String,
    },
}

/// The result of one advance.
#[derive(Clone, Debug)]
pub struct Advance {
    pub history: History,
    pub effects: Vec<Effect>,
    pub outcome: Outcome,
}

/// What a run knows about how it began; scripts see it as the `ctx` map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunContext {
    pub run_id: String,
    pub workflow: String,
    pub starter: String,
    pub group: String,
    pub room: String,
}

/// What the engine needs from outside while it runs a script.
pub trait Host {
    /// The current time, recorded the first time a script reads it.
    fn now(&mut self) -> Millis;
    /// A fresh case id, e.g. `C-42`.
    fn new_case_id(&mut self) -> String;
    fn person_exists(&self, id: &str) -> bool;
    fn group_exists(&self, id: &str) -> bool;
    /// Whether the configuration has an escalation policy with this id.
    fn policy_exists(&self, id: &str) -> bool;
    /// Whether the configuration defines this role.
    fn role_exists(&self, id: &str) -> bool;
    /// A fresh escalation id, e.g. `E-7`.
    fn new_escalation_id(&mut self) -> String;
    /// The members of a group holding a role (every member for an empty role), in
    /// directory order.
    fn members(&self, group: &str, role: &str) -> Vec<String>;
}

/// What `wait_for_ack` records when the deadline passes first.
pub const ACK_TIMED_OUT: serde_json::Value = serde_json::Value::Bool(false);
