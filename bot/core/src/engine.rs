//! The workflow engine: compiles coordinators' Rhai scripts in a sandbox and advances a
//! run by deterministic replay (DESIGN.md, "Durable runs by replay").
//!
//! A run's [`History`] holds the result of every effect its script has asked for. To
//! advance a run the engine runs the script from the top; each effect function looks at
//! its position in the history and returns the recorded result, or, past the end,
//! performs the effect (as data: an [`Effect`] for the host to carry out) and, where it
//! must wait (an answer, a timer), stops the script with an error `try`/`catch` cannot
//! catch. The engine does no I/O: the host supplies the clock and new case ids.

use crate::domain::Millis;
use crate::text;
use rhai::packages::{
    ArithmeticPackage, BasicArrayPackage, BasicFnPackage, BasicIteratorPackage, BasicMapPackage, BasicMathPackage,
    BasicStringPackage, LogicPackage, MoreStringPackage, Package,
};
use rhai::{
    AST, Array, CallFnOptions, Dynamic, Engine, EvalAltResult, ImmutableString, Map, NativeCallContext, Position, Scope,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Limits a script runs under. rhai sets none of the size or operation limits itself.
#[derive(Clone, Debug)]
pub struct SandboxLimits {
    /// Operations in one advance (one replay from the top).
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_expr_depth: usize,
    pub max_string_bytes: usize,
    pub max_array_len: usize,
    pub max_map_len: usize,
    pub max_variables: usize,
    pub max_functions: usize,
    /// Effects one run may record in its whole life.
    pub max_history: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            max_operations: 500_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_bytes: 256 * 1024,
            max_array_len: 10_000,
            max_map_len: 1_000,
            max_variables: 1_000,
            max_functions: 256,
            max_history: 10_000,
        }
    }
}

/// Where a script went wrong, for a coordinator: file, line, column and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Line 0: rhai could not say where (e.g. the operation limit inside a loop).
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
        }
    }
}

impl std::error::Error for ScriptError {}

/// What a workflow declares about itself, read from its top-level constants:
/// `const COMMAND = "concern";`, `const DESCRIPTION = "…";`,
/// `const ALLOWED_ROLES = ["practitioner", "lead"];`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowMeta {
    pub command: String,
    pub description: String,
    pub allowed_roles: Vec<String>,
}

/// A compiled workflow: one version of one script, named by the SHA-256 of its source.
#[derive(Clone, Debug)]
pub struct Workflow {
    /// The file stem, e.g. `raise_concern`.
    pub name: String,
    pub file: PathBuf,
    /// Hex SHA-256 of `source`: the version a run is pinned to.
    pub hash: String,
    pub source: String,
    pub meta: WorkflowMeta,
    ast: AST,
}

/// The hex SHA-256 of a script's source.
pub fn source_hash(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))
}

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

/// The sandboxed rhai engine, shared by every run.
pub struct WorkflowEngine {
    engine: Engine,
    limits: SandboxLimits,
}

impl std::fmt::Debug for WorkflowEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowEngine").field("limits", &self.limits).finish()
    }
}

/// The recorded result of an effect that returns nothing. Not `null`: JSON's null reads
/// back as "no result yet", which would make a finished effect look pending.
const DONE: serde_json::Value = serde_json::Value::Bool(true);

/// The marker a suspended or diverged replay stops with.
const SUSPEND: &str = "wavelet:suspend";

struct Replay<'h> {
    history: History,
    /// The next history position the script will reach.
    position: usize,
    effects: Vec<Effect>,
    stop: Option<Stop>,
    host: &'h mut dyn Host,
    max_history: usize,
}

enum Stop {
    Wait(Wait),
    Diverged { step: usize, recorded: String, requested: String },
}

thread_local! {
    /// The replay in progress on this thread. Script evaluation is synchronous, so the
    /// effect functions find their run here. The lifetime is erased while the script
    /// runs and restored by [`ReplayGuard`].
    static CURRENT: RefCell<Option<*mut Replay<'static>>> = const { RefCell::new(None) };
}

/// Keeps the replay borrowed (so it cannot move) while its pointer is installed, and puts
/// back whatever was installed before.
struct ReplayGuard<'r, 'h> {
    previous: Option<*mut Replay<'static>>,
    _replay: std::marker::PhantomData<&'r mut Replay<'h>>,
}

impl<'r, 'h> ReplayGuard<'r, 'h> {
    fn enter(replay: &'r mut Replay<'h>) -> ReplayGuard<'r, 'h> {
        let ptr = std::ptr::from_mut(replay).cast::<Replay<'static>>();
        let previous = CURRENT.with(|c| c.borrow_mut().replace(ptr));
        ReplayGuard { previous, _replay: std::marker::PhantomData }
    }
}

impl Drop for ReplayGuard<'_, '_> {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = self.previous);
    }
}

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn script_error(msg: impl Into<String>, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(Dynamic::from(msg.into()), pos))
}

/// Runs `f` against the replay in progress on this thread.
fn with_replay<T>(pos: Position, f: impl FnOnce(&mut Replay<'_>) -> RhaiResult<T>) -> RhaiResult<T> {
    let ptr = CURRENT.with(|c| *c.borrow());
    match ptr {
        // SAFETY: the pointer is set by `ReplayGuard::enter` from a `&mut Replay` that
        // outlives the script evaluation, cleared when the guard drops, and only used on
        // this thread while the evaluation (which holds no other reference) runs.
        Some(p) => f(unsafe { &mut *p }),
        None => Err(script_error("effect functions can only be used inside a workflow run", pos)),
    }
}

fn fingerprint(kind: EffectKind, args: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    // Straight into the hash: the same bytes as `args.to_string()`, without the copy.
    let _ = serde_json::to_writer(&mut h, args);
    hex::encode(&h.finalize()[..8])
}

fn suspend(pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorTerminated(Dynamic::from(SUSPEND), pos))
}

impl Replay<'_> {
    /// The heart of replay: returns the recorded result of the effect at the current
    /// position, or performs it. `wait` is given for effects that stop the run until
    /// their result arrives (an answer, a timer); `perform` records the effect to carry
    /// out and returns its immediate result.
    fn effect(
        &mut self,
        kind: EffectKind,
        args: serde_json::Value,
        pos: Position,
        wait: Option<&dyn Fn(usize) -> Wait>,
        perform: impl FnOnce(&mut Self, usize) -> RhaiResult<serde_json::Value>,
    ) -> RhaiResult<serde_json::Value> {
        // A callback that swallowed the suspension (rhai's `sort` ignores errors) must not
        // go on to ask for more.
        if self.stop.is_some() {
            return Err(suspend(pos));
        }
        let step = self.position;
        let fp = fingerprint(kind, &args);
        if step < self.history.len() {
            let entry = &self.history[step];
            if entry.kind != kind || entry.fingerprint != fp {
                self.stop = Some(Stop::Diverged {
                    step,
                    recorded: format!("{} ({})", entry.kind.as_str(), entry.fingerprint),
                    requested: format!("{} ({})", kind.as_str(), fp),
                });
                return Err(suspend(pos));
            }
            if let Some(v) = &entry.result {
                self.position += 1;
                return Ok(v.clone());
            }
            // Still waiting for this one.
            self.stop = wait.map(|w| Stop::Wait(w(step)));
            return Err(suspend(pos));
        }
        if self.history.len() >= self.max_history {
            return Err(script_error(
                format!(
                    "this run has recorded {} effects, the most one run may; is the workflow looping?",
                    self.max_history
                ),
                pos,
            ));
        }
        let result = perform(self, step)?;
        if let Some(w) = wait {
            self.history.push(HistoryEntry { kind, fingerprint: fp, result: None });
            self.stop = Some(Stop::Wait(w(step)));
            return Err(suspend(pos));
        }
        self.history.push(HistoryEntry { kind, fingerprint: fp, result: Some(result.clone()) });
        self.position += 1;
        Ok(result)
    }
}

fn json_to_dynamic(v: &serde_json::Value) -> Dynamic {
    match v {
        serde_json::Value::Null => Dynamic::UNIT,
        serde_json::Value::Bool(b) => Dynamic::from_bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Dynamic::from(s.clone()),
        serde_json::Value::Array(a) => Dynamic::from_array(a.iter().map(json_to_dynamic).collect()),
        serde_json::Value::Object(o) => {
            let mut m = Map::new();
            for (k, v) in o {
                m.insert(k.as_str().into(), json_to_dynamic(v));
            }
            Dynamic::from_map(m)
        }
    }
}

fn case_to_dynamic(c: &CaseFields) -> Dynamic {
    let mut m = Map::new();
    m.insert("id".into(), Dynamic::from(c.id.clone()));
    m.insert("subject".into(), Dynamic::from(c.subject.clone()));
    m.insert("category".into(), Dynamic::from(c.category.clone()));
    m.insert("risk".into(), Dynamic::from(c.risk.clone()));
    Dynamic::from_map(m)
}

/// A case argument: the map `open_case` returned, or its id.
fn case_id_of(case: &Dynamic, what: &str, pos: Position) -> RhaiResult<String> {
    if let Some(s) = case.clone().try_cast::<ImmutableString>() {
        return Ok(s.to_string());
    }
    if let Some(m) = case.read_lock::<Map>()
        && let Some(id) = m.get("id").and_then(|v| v.clone().try_cast::<ImmutableString>())
    {
        return Ok(id.to_string());
    }
    Err(script_error(format!("{what}: expected a case (what open_case returned) or a case id"), pos))
}

fn map_str(m: &Map, key: &str) -> Option<String> {
    m.get(key).map(|v| if v.is_string() { v.clone().into_string().unwrap_or_default() } else { v.to_string() })
}

fn check_person(r: &Replay<'_>, who: &str, what: &str, pos: Position) -> RhaiResult<()> {
    if r.host.person_exists(who) {
        Ok(())
    } else {
        Err(script_error(format!("{what}: nobody with id `{who}` is in the directory"), pos))
    }
}

fn check_group(r: &Replay<'_>, group: &str, what: &str, pos: Position) -> RhaiResult<()> {
    if r.host.group_exists(group) {
        Ok(())
    } else {
        Err(script_error(format!("{what}: no group with id `{group}` is in the directory"), pos))
    }
}

fn check_text(text: &str, what: &str, pos: Position) -> RhaiResult<()> {
    if text.trim().is_empty() {
        return Err(script_error(format!("{what}: the text is empty"), pos));
    }
    Ok(())
}

fn ask_impl(
    ctx: &NativeCallContext,
    who: &str,
    prompt: &str,
    spec: AnswerSpec,
    kind: EffectKind,
) -> RhaiResult<Dynamic> {
    let pos = ctx.call_position();
    let name = kind.as_str();
    if let Some(choices) = &spec.choices
        && choices.is_empty()
    {
        return Err(script_error(format!("{name}: the list of choices is empty"), pos));
    }
    check_text(prompt, name, pos)?;
    let args = serde_json::json!({ "person": who, "prompt": prompt, "spec": spec });
    let v = with_replay(pos, |r| {
        check_person(r, who, name, pos)?;
        let wait =
            |step| Wait::Answer { step, person: who.to_string(), prompt: prompt.to_string(), spec: spec.clone() };
        r.effect(kind, args, pos, Some(&wait), |r, step| {
            // Checked when first asked, not on every replay: compiling a pattern is costly.
            if let Some(p) = &spec.pattern
                && let Err(e) = text::answer_pattern(p)
            {
                return Err(script_error(format!("{name}: the pattern is not a valid regular expression: {e}"), pos));
            }
            r.effects.push(Effect::Ask {
                step,
                person: who.to_string(),
                prompt: prompt.to_string(),
                spec: spec.clone(),
            });
            Ok(serde_json::Value::Null)
        })
    })?;
    Ok(json_to_dynamic(&v))
}

fn spec_from_map(opts: &Map, pos: Position) -> RhaiResult<AnswerSpec> {
    let mut spec = AnswerSpec::default();
    for (k, v) in opts {
        match k.as_str() {
            "pattern" => spec.pattern = Some(v.to_string()),
            "hint" => spec.hint = Some(v.to_string()),
            "max_chars" => {
                let n = v.as_int().map_err(|_| script_error("ask: max_chars must be a number", pos))?;
                if n < 1 {
                    return Err(script_error("ask: max_chars must be at least 1", pos));
                }
                spec.max_chars = Some(n as usize);
            }
            other => {
                return Err(script_error(
                    format!("ask: unknown option `{other}`; the options are pattern, hint and max_chars"),
                    pos,
                ));
            }
        }
    }
    Ok(spec)
}

fn strings_of(a: &Array, what: &str, pos: Position) -> RhaiResult<Vec<String>> {
    a.iter()
        .map(|v| {
            if v.is_string() {
                Ok(v.to_string())
            } else {
                Err(script_error(format!("{what}: every choice must be a string"), pos))
            }
        })
        .collect()
}

/// Refuses a field of `map` not in `allowed`: "`what`: unknown field `k`; `takes`".
fn only_fields(map: &Map, allowed: &[&str], what: &str, takes: &str, pos: Position) -> RhaiResult<()> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(script_error(format!("{what}: unknown field `{k}`; {takes}"), pos)),
        None => Ok(()),
    }
}

fn register_effects(engine: &mut Engine) {
    engine.register_fn("ask", |ctx: NativeCallContext, who: &str, prompt: &str| {
        ask_impl(&ctx, who, prompt, AnswerSpec::default(), EffectKind::Ask)
    });
    engine.register_fn("ask", |ctx: NativeCallContext, who: &str, prompt: &str, opts: Map| {
        let spec = spec_from_map(&opts, ctx.call_position())?;
        ask_impl(&ctx, who, prompt, spec, EffectKind::Ask)
    });
    engine.register_fn("choose", |ctx: NativeCallContext, who: &str, prompt: &str, options: Array| {
        let choices = strings_of(&options, "choose", ctx.call_position())?;
        let spec = AnswerSpec { choices: Some(choices), ..AnswerSpec::default() };
        ask_impl(&ctx, who, prompt, spec, EffectKind::Choose)
    });
    engine.register_fn("tell", |ctx: NativeCallContext, who: &str, text: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        check_text(text, "tell", pos)?;
        with_replay(pos, |r| {
            check_person(r, who, "tell", pos)?;
            let args = serde_json::json!({ "person": who, "text": text });
            r.effect(EffectKind::Tell, args, pos, None, |r, step| {
                r.effects.push(Effect::Tell { step, person: who.into(), text: text.into() });
                Ok(DONE)
            })
        })?;
        Ok(())
    });
    engine.register_fn("send", |ctx: NativeCallContext, group: &str, text: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        check_text(text, "send", pos)?;
        with_replay(pos, |r| {
            check_group(r, group, "send", pos)?;
            let args = serde_json::json!({ "group": group, "text": text });
            r.effect(EffectKind::Send, args, pos, None, |r, step| {
                r.effects.push(Effect::Send { step, group: group.into(), text: text.into() });
                Ok(DONE)
            })
        })?;
        Ok(())
    });
    engine.register_fn(
        "share",
        |ctx: NativeCallContext, group: &str, case: Dynamic, text: &str, why: Map| -> RhaiResult<()> {
            let pos = ctx.call_position();
            let case_id = case_id_of(&case, "share", pos)?;
            check_text(text, "share", pos)?;
            let purpose = map_str(&why, "purpose").filter(|s| !s.trim().is_empty());
            let basis = map_str(&why, "basis").filter(|s| !s.trim().is_empty());
            let consent = map_str(&why, "consent");
            only_fields(&why, &["purpose", "basis", "consent"], "share", "a share takes purpose, basis and consent", pos)?;
            let (Some(purpose), Some(basis)) = (purpose, basis) else {
                return Err(script_error(
                    "share: every share needs a purpose and a lawful basis, e.g. #{ purpose: \"protect a child from harm\", basis: \"public task\" }",
                    pos,
                ));
            };
            with_replay(pos, |r| {
                check_group(r, group, "share", pos)?;
                let args = serde_json::json!({ "group": group, "case": case_id, "text": text, "purpose": purpose, "basis": basis, "consent": consent });
                r.effect(EffectKind::Share, args, pos, None, |r, step| {
                    r.effects.push(Effect::Share {
                        step,
                        group: group.into(),
                        case_id: case_id.clone(),
                        text: text.into(),
                        purpose: purpose.clone(),
                        basis: basis.clone(),
                        consent: consent.clone(),
                    });
                    Ok(DONE)
                })
            })?;
            Ok(())
        },
    );
    engine.register_fn(
        "decline_share",
        |ctx: NativeCallContext, group: &str, case: Dynamic, why: Map| -> RhaiResult<()> {
            let pos = ctx.call_position();
            let case_id = case_id_of(&case, "decline_share", pos)?;
            only_fields(
                &why,
                &["reason", "consent"],
                "decline_share",
                "a decision not to share takes reason and consent",
                pos,
            )?;
            let Some(reason) = map_str(&why, "reason").filter(|s| !s.trim().is_empty()) else {
                return Err(script_error(
                    "decline_share: every decision not to share needs its reason, e.g. #{ reason: \"no risk of harm; \
                     the family is supported by the school\" }",
                    pos,
                ));
            };
            let consent = map_str(&why, "consent");
            with_replay(pos, |r| {
                check_group(r, group, "decline_share", pos)?;
                let args = serde_json::json!({ "group": group, "case": case_id, "reason": reason, "consent": consent });
                r.effect(EffectKind::DeclineShare, args, pos, None, |r, step| {
                    r.effects.push(Effect::DeclineShare {
                        step,
                        group: group.into(),
                        case_id: case_id.clone(),
                        reason: reason.clone(),
                        consent: consent.clone(),
                    });
                    Ok(DONE)
                })
            })?;
            Ok(())
        },
    );
    engine.register_fn("open_case", |ctx: NativeCallContext, fields: Map| -> RhaiResult<Dynamic> {
        let pos = ctx.call_position();
        let get = |k: &str| -> RhaiResult<String> {
            map_str(&fields, k).filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                script_error(format!("open_case: `{k}` is missing; a case needs subject, category and risk"), pos)
            })
        };
        let (subject, category, risk) = (get("subject")?, get("category")?, get("risk")?);
        only_fields(
            &fields,
            &["subject", "category", "risk"],
            "open_case",
            "a case takes subject, category and risk",
            pos,
        )?;
        let args = serde_json::json!({ "subject": subject, "category": category, "risk": risk });
        let v = with_replay(pos, |r| {
            r.effect(EffectKind::OpenCase, args, pos, None, |r, step| {
                let case = CaseFields {
                    id: r.host.new_case_id(),
                    subject: subject.clone(),
                    category: category.clone(),
                    risk: risk.clone(),
                };
                let v = serde_json::to_value(&case).map_err(|e| script_error(e.to_string(), pos))?;
                r.effects.push(Effect::OpenCase { step, case });
                Ok(v)
            })
        })?;
        let case: CaseFields = serde_json::from_value(v).map_err(|e| script_error(format!("open_case: {e}"), pos))?;
        Ok(case_to_dynamic(&case))
    });
    engine.register_fn("close_case", |ctx: NativeCallContext, case: Dynamic, reason: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        let case_id = case_id_of(&case, "close_case", pos)?;
        check_text(reason, "close_case", pos)?;
        with_replay(pos, |r| {
            let args = serde_json::json!({ "case": case_id, "reason": reason });
            r.effect(EffectKind::CloseCase, args, pos, None, |r, step| {
                r.effects.push(Effect::CloseCase { step, case_id: case_id.clone(), reason: reason.into() });
                Ok(DONE)
            })
        })?;
        Ok(())
    });
    engine.register_fn("note", |ctx: NativeCallContext, case: Dynamic, text: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        let case_id = case_id_of(&case, "note", pos)?;
        check_text(text, "note", pos)?;
        with_replay(pos, |r| {
            let args = serde_json::json!({ "case": case_id, "text": text });
            r.effect(EffectKind::Note, args, pos, None, |r, step| {
                r.effects.push(Effect::Note { step, case_id: case_id.clone(), text: text.into() });
                Ok(DONE)
            })
        })?;
        Ok(())
    });
    engine.register_fn("now", |ctx: NativeCallContext| -> RhaiResult<String> {
        let pos = ctx.call_position();
        let v = with_replay(pos, |r| {
            r.effect(EffectKind::Now, serde_json::Value::Null, pos, None, |r, _| Ok(serde_json::json!(r.host.now().0)))
        })?;
        Ok(Millis(v.as_i64().unwrap_or(0)).rfc3339())
    });
    engine.register_fn("sleep", |ctx: NativeCallContext, duration: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        let d = parse_duration(duration).map_err(|e| {
            script_error(format!("sleep: `{duration}` is not a duration ({e}); write e.g. \"15m\" or \"2h\""), pos)
        })?;
        if d > MAX_SLEEP {
            return Err(script_error("sleep: the longest wait is 5 years", pos));
        }
        with_replay(pos, |r| {
            let args = serde_json::json!({ "duration_ms": d.as_millis() as u64 });
            // The due time is fixed when the timer is first set, and kept in the history.
            let until = if r.position < r.history.len() { Millis(0) } else { r.host.now().plus(d) };
            let wait = move |step| Wait::Timer { step, until };
            r.effect(EffectKind::Sleep, args, pos, Some(&wait), |r, step| {
                r.effects.push(Effect::Sleep { step, until });
                Ok(serde_json::Value::Null)
            })
        })?;
        Ok(())
    });
}

fn register_escalation(engine: &mut Engine) {
    engine.register_fn("escalate", |ctx: NativeCallContext, case: Dynamic, policy: &str| -> RhaiResult<String> {
        let pos = ctx.call_position();
        let case_id = case_id_of(&case, "escalate", pos)?;
        let v = with_replay(pos, |r| {
            let args = serde_json::json!({ "case": case_id, "policy": policy });
            r.effect(EffectKind::Escalate, args, pos, None, |r, step| {
                // Checked when the escalation starts, not on replay: a policy renamed since
                // must not break a run that escalated under the old name.
                if !r.host.policy_exists(policy) {
                    return Err(script_error(
                        format!(
                            "escalate: no policy `{policy}` in the configuration; add a [[policy]] with id = \"{policy}\""
                        ),
                        pos,
                    ));
                }
                let escalation_id = r.host.new_escalation_id();
                r.effects.push(Effect::Escalate {
                    step,
                    case_id: case_id.clone(),
                    policy: policy.to_string(),
                    escalation_id: escalation_id.clone(),
                });
                Ok(serde_json::json!(escalation_id))
            })
        })?;
        Ok(v.as_str().unwrap_or_default().to_string())
    });
    engine.register_fn(
        "wait_for_ack",
        |ctx: NativeCallContext, case: Dynamic, deadline: &str| -> RhaiResult<Dynamic> {
            let pos = ctx.call_position();
            let case_id = case_id_of(&case, "wait_for_ack", pos)?;
            let d = parse_duration(deadline).map_err(|e| {
                script_error(
                    format!("wait_for_ack: `{deadline}` is not a duration ({e}); write e.g. \"15m\" or \"2h\""),
                    pos,
                )
            })?;
            if d > MAX_SLEEP {
                return Err(script_error("wait_for_ack: the longest wait is 5 years", pos));
            }
            let v = with_replay(pos, |r| {
                let args = serde_json::json!({ "case": case_id, "deadline_ms": d.as_millis() as u64 });
                let until = if r.position < r.history.len() { Millis(0) } else { r.host.now().plus(d) };
                let id = case_id.clone();
                let wait = move |step| Wait::Ack { step, case_id: id.clone(), until };
                r.effect(EffectKind::WaitForAck, args, pos, Some(&wait), |r, step| {
                    r.effects.push(Effect::WaitForAck { step, case_id: case_id.clone(), until });
                    Ok(serde_json::Value::Null)
                })
            })?;
            // `#{ by: "bea", at: "2026-…" }`, or `()` when the deadline came first.
            Ok(match v.get("by").and_then(|b| b.as_str()) {
                Some(by) => {
                    let mut m = Map::new();
                    m.insert("by".into(), Dynamic::from(by.to_string()));
                    let at = Millis(v.get("at").and_then(|a| a.as_i64()).unwrap_or(0));
                    m.insert("at".into(), Dynamic::from(at.rfc3339()));
                    Dynamic::from_map(m)
                }
                None => Dynamic::UNIT,
            })
        },
    );
    engine.register_fn("open_cases", |ctx: NativeCallContext, group: &str| -> RhaiResult<Dynamic> {
        let pos = ctx.call_position();
        let v = with_replay(pos, |r| {
            check_group(r, group, "open_cases", pos)?;
            let args = serde_json::json!({ "group": group });
            let query = Query::OpenCases { group: group.to_string() };
            let wait = move |step| Wait::Query { step, query: query.clone() };
            r.effect(EffectKind::OpenCases, args, pos, Some(&wait), |_, _| Ok(serde_json::Value::Null))
        })?;
        Ok(json_to_dynamic(&v))
    });
    engine.register_fn("members", |ctx: NativeCallContext, group: &str, role: &str| -> RhaiResult<Dynamic> {
        let pos = ctx.call_position();
        let v = with_replay(pos, |r| {
            check_group(r, group, "members", pos)?;
            if !role.is_empty() && !r.host.role_exists(role) {
                return Err(script_error(
                    format!("members: no role `{role}` in the configuration; use a [[role]] id, or \"\" for everyone"),
                    pos,
                ));
            }
            let args = serde_json::json!({ "group": group, "role": role });
            r.effect(EffectKind::Members, args, pos, None, |r, _| Ok(serde_json::json!(r.host.members(group, role))))
        })?;
        Ok(json_to_dynamic(&v))
    });
    engine.register_fn("sleep_until", |ctx: NativeCallContext, time: &str| -> RhaiResult<()> {
        let pos = ctx.call_position();
        let Some(at) = Millis::parse_rfc3339(time.trim()) else {
            return Err(script_error(
                format!("sleep_until: `{time}` is not a time; write it like \"2026-11-30T09:00:00Z\""),
                pos,
            ));
        };
        with_replay(pos, |r| {
            let args = serde_json::json!({ "until": at.0 });
            let wait = move |step| Wait::Timer { step, until: at };
            r.effect(EffectKind::SleepUntil, args, pos, Some(&wait), |r, step| {
                r.effects.push(Effect::Sleep { step, until: at });
                Ok(serde_json::Value::Null)
            })
        })?;
        Ok(())
    });
}

/// The longest `sleep` a script may ask for.
pub const MAX_SLEEP: Duration = Duration::from_secs(5 * 366 * 24 * 3600);

/// Parses a duration as coordinators write it: `15m`, `2h 30m`, `1day`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

impl WorkflowEngine {
    pub fn new(limits: SandboxLimits) -> WorkflowEngine {
        let mut engine = Engine::new_raw();
        // The language without a clock, `sleep`, `print` to stdout or file access.
        for module in [
            ArithmeticPackage::new().as_shared_module(),
            LogicPackage::new().as_shared_module(),
            BasicStringPackage::new().as_shared_module(),
            MoreStringPackage::new().as_shared_module(),
            BasicIteratorPackage::new().as_shared_module(),
            BasicFnPackage::new().as_shared_module(),
            BasicArrayPackage::new().as_shared_module(),
            BasicMapPackage::new().as_shared_module(),
            BasicMathPackage::new().as_shared_module(),
        ] {
            engine.register_global_module(module);
        }
        // Refused when the script is compiled, with a reason (see `compile`).
        for symbol in ["eval", "print", "debug"] {
            engine.disable_symbol(symbol);
        }
        // Never evaluate functions while compiling: effects must only run in a replay.
        engine.set_optimization_level(rhai::OptimizationLevel::Simple);
        engine.set_strict_variables(true);
        engine.set_fail_on_invalid_map_property(true);
        engine.set_max_operations(limits.max_operations);
        engine.set_max_call_levels(limits.max_call_levels);
        engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
        engine.set_max_string_size(limits.max_string_bytes);
        engine.set_max_array_size(limits.max_array_len);
        engine.set_max_map_size(limits.max_map_len);
        engine.set_max_variables(limits.max_variables);
        engine.set_max_functions(limits.max_functions);
        // `import` finds nothing: workflows cannot read files.
        engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        engine.on_print(|_| {});
        engine.on_debug(|_, _, _| {});
        register_effects(&mut engine);
        register_escalation(&mut engine);
        WorkflowEngine { engine, limits }
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Compiles one workflow file. `name` is its file stem; `file` is shown in errors.
    pub fn compile(&self, name: &str, file: &Path, source: &str) -> Result<Workflow, ScriptError> {
        let shown = file.display().to_string();
        let err =
            |line: usize, column: usize, message: String| ScriptError { file: shown.clone(), line, column, message };
        if source.len() > 1024 * 1024 {
            return Err(err(1, 1, "the script is larger than 1 MiB; split it up".into()));
        }
        let ast = self.engine.compile(source).map_err(|e| {
            let pos = e.position();
            let message = e.err_type().to_string();
            let message = if message.contains("'eval'") {
                "eval is not available in workflows: write the code out".to_string()
            } else if message.contains("'print'") || message.contains("'debug'") {
                "print and debug are not available in workflows: use tell(person, text) to say something".to_string()
            } else if message.contains("'case' is a reserved keyword") {
                "`case` is a word rhai keeps for itself: name the variable something else, e.g. `concern`".to_string()
            } else {
                message
            };
            err(pos.line().unwrap_or(1), pos.position().unwrap_or(1), message)
        })?;
        if !ast.iter_functions().any(|f| f.name == "run" && f.params.len() == 1) {
            return Err(err(
                1,
                1,
                "a workflow needs a function `fn run(ctx) { … }`: Wavelet calls it to start a run".into(),
            ));
        }
        let mut command = None;
        let mut description = String::new();
        let mut allowed_roles = None;
        for (k, _, v) in ast.iter_literal_variables(true, false) {
            match k {
                "COMMAND" => command = v.into_string().ok(),
                "DESCRIPTION" => description = v.into_string().unwrap_or_default(),
                "ALLOWED_ROLES" => {
                    allowed_roles = v.into_array().ok().map(|a| a.iter().map(|r| r.to_string()).collect::<Vec<_>>())
                }
                _ => {}
            }
        }
        let command = command.unwrap_or_else(|| name.to_string());
        if command.is_empty()
            || !command.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(err(1, 1, format!("COMMAND `{command}` must be lower-case letters, digits, `-` or `_`")));
        }
        let Some(allowed_roles) = allowed_roles else {
            return Err(err(
                1,
                1,
                "a workflow must say who may start it: add e.g. `const ALLOWED_ROLES = [\"practitioner\", \"lead\"];`"
                    .into(),
            ));
        };
        Ok(Workflow {
            name: name.to_string(),
            file: file.to_path_buf(),
            hash: source_hash(source),
            source: source.to_string(),
            meta: WorkflowMeta { command, description, allowed_roles },
            ast,
        })
    }

    /// Runs the workflow from the top against `history` and returns what it did next.
    pub fn advance(&self, wf: &Workflow, ctx: &RunContext, history: History, host: &mut dyn Host) -> Advance {
        let recorded = history.len();
        let mut replay = Replay {
            history,
            position: 0,
            effects: Vec::new(),
            stop: None,
            host,
            max_history: self.limits.max_history,
        };
        let result = {
            let _guard = ReplayGuard::enter(&mut replay);
            let mut ctx_map = Map::new();
            ctx_map.insert("run".into(), ctx.run_id.clone().into());
            ctx_map.insert("workflow".into(), ctx.workflow.clone().into());
            ctx_map.insert("starter".into(), ctx.starter.clone().into());
            ctx_map.insert("group".into(), ctx.group.clone().into());
            ctx_map.insert("room".into(), ctx.room.clone().into());
            let mut scope = Scope::new();
            let options = CallFnOptions::new().eval_ast(true).rewind_scope(true);
            self.engine.call_fn_with_options::<Dynamic>(
                options,
                &mut scope,
                &wf.ast,
                "run",
                (Dynamic::from_map(ctx_map),),
            )
        };
        let Replay { mut history, effects, stop, .. } = replay;
        let outcome = match (result, stop) {
            (_, Some(Stop::Diverged { step, recorded: r, requested })) => {
                history.truncate(recorded);
                return Advance {
                    history,
                    effects: Vec::new(),
                    outcome: Outcome::Diverged { step, recorded: r, requested },
                };
            }
            (Err(e), Some(Stop::Wait(w))) if is_suspend(&e) => Outcome::Waiting(w),
            (Err(e), None) if is_suspend(&e) => Outcome::Failed(ScriptError {
                file: wf.file.display().to_string(),
                line: 1,
                column: 1,
                message: "the run was advanced while it still waits for something (internal error)".into(),
            }),
            (Ok(_), None) => Outcome::Finished,
            // A callback that swallows errors (rhai's `sort`) asked and the script ran on to
            // its end: it still waits. Nothing after the question was performed (effects
            // refuse to run once a replay has stopped), and the replay with the answer
            // runs the callback properly.
            (Ok(_), Some(Stop::Wait(w))) => Outcome::Waiting(w),
            // An error after a swallowed suspension came from running on without the
            // answer; the replay with it will tell whether it is real.
            (Err(_), Some(Stop::Wait(w))) => Outcome::Waiting(w),
            (Err(e), _) => Outcome::Failed(describe_failure(&wf.file, &e)),
        };
        Advance { history, effects, outcome }
    }
}

fn is_suspend(e: &EvalAltResult) -> bool {
    match e {
        EvalAltResult::ErrorTerminated(v, _) => v.clone().into_string().is_ok_and(|s| s == SUSPEND),
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => is_suspend(inner),
        _ => false,
    }
}

/// Turns a rhai error into what a coordinator reads: the innermost position and a plain
/// message (sandbox limits named as such).
fn describe_failure(file: &Path, e: &EvalAltResult) -> ScriptError {
    // The innermost error says what; the deepest known position says where.
    let mut inner = e;
    let mut pos = e.position();
    while let EvalAltResult::ErrorInFunctionCall(_, _, next, _) = inner {
        inner = next;
        if !inner.position().is_none() {
            pos = inner.position();
        }
    }
    let message = match inner {
        EvalAltResult::ErrorTooManyOperations(_) => {
            "the script ran too long (sandbox operation limit); is there an endless loop?".to_string()
        }
        EvalAltResult::ErrorStackOverflow(_) => {
            "the script called itself too deeply (sandbox call depth limit)".to_string()
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => format!("{what} grew too large (sandbox size limit)"),
        EvalAltResult::ErrorModuleNotFound(m, _) => {
            format!("import of `{m}` refused: workflows cannot load files or modules")
        }
        EvalAltResult::ErrorRuntime(v, _) => v.to_string(),
        EvalAltResult::ErrorTooManyModules(_) => "workflows cannot import modules".to_string(),
        other => other.to_string(),
    };
    let (line, column) = if pos.is_none() { (0, 0) } else { (pos.line().unwrap_or(1), pos.position().unwrap_or(1)) };
    ScriptError { file: file.display().to_string(), line, column, message: text::one_line(&message) }
}

impl Workflow {
    /// Whether a person holding `roles` may start this workflow.
    pub fn may_start(&self, roles: &[String]) -> bool {
        self.meta.allowed_roles.iter().any(|r| roles.contains(r))
    }
}

#[cfg(test)]
mod tests;
