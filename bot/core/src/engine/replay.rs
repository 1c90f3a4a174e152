//! Replay: the run's history, walked as the script runs from the top. Each effect function
//! asks the [`Replay`] for its result at its position; a recorded one is returned, a new one
//! is performed (or waited for) and the script stops with a suspension it cannot catch.

use super::*;

/// The recorded result of an effect that returns nothing. Not `null`: JSON's null reads
/// back as "no result yet", which would make a finished effect look pending.
pub(super) const DONE: serde_json::Value = serde_json::Value::Bool(true);

/// The marker a suspended or diverged replay stops with.
pub(super) const SUSPEND: &str = "wavelet:suspend";

pub(super) struct Replay<'h> {
    pub(super) history: History,
    /// The next history position the script will reach.
    pub(super) position: usize,
    pub(super) effects: Vec<Effect>,
    pub(super) stop: Option<Stop>,
    pub(super) host: &'h mut dyn Host,
    pub(super) max_history: usize,
}

pub(super) enum Stop {
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
pub(super) struct ReplayGuard<'r, 'h> {
    pub(super) previous: Option<*mut Replay<'static>>,
    pub(super) _replay: std::marker::PhantomData<&'r mut Replay<'h>>,
}

impl<'r, 'h> ReplayGuard<'r, 'h> {
    pub(super) fn enter(replay: &'r mut Replay<'h>) -> ReplayGuard<'r, 'h> {
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

pub(super) type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

pub(super) fn script_error(msg: impl Into<String>, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(Dynamic::from(msg.into()), pos))
}

/// Runs `f` against the replay in progress on this thread.
pub(super) fn with_replay<T>(pos: Position, f: impl FnOnce(&mut Replay<'_>) -> RhaiResult<T>) -> RhaiResult<T> {
    let ptr = CURRENT.with(|c| *c.borrow());
    match ptr {
        // SAFETY: the pointer is set by `ReplayGuard::enter` from a `&mut Replay` that
        // outlives the script evaluation, cleared when the guard drops, and only used on
        // this thread while the evaluation (which holds no other reference) runs.
        Some(p) => f(unsafe { &mut *p }),
        None => Err(script_error("effect functions can only be used inside a workflow run", pos)),
    }
}

pub(super) fn fingerprint(kind: EffectKind, args: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    // Straight into the hash: the same bytes as `args.to_string()`, without the copy.
    let _ = serde_json::to_writer(&mut h, args);
    hex::encode(&h.finalize()[..8])
}

pub(super) fn suspend(pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorTerminated(Dynamic::from(SUSPEND), pos))
}

impl Replay<'_> {
    /// The heart of replay: returns the recorded result of the effect at the current
    /// position, or performs it. `wait` is given for effects that stop the run until
    /// their result arrives (an answer, a timer); `perform` records the effect to carry
    /// out and returns its immediate result.
    pub(super) fn effect(
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
