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

mod bindings;
mod effects;
mod replay;
#[cfg(test)]
mod tests;

pub use effects::*;

use bindings::{register_effects, register_escalation};
use replay::*;

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

/// The longest `sleep` a script may ask for.
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
