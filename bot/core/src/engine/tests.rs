//! Replay, suspension, divergence and the sandbox, tested with scripts in strings.

use super::*;
use std::path::Path;

struct TestHost {
    now: i64,
    cases: u32,
}

impl Host for TestHost {
    fn now(&mut self) -> Millis {
        Millis(self.now)
    }
    fn new_case_id(&mut self) -> String {
        self.cases += 1;
        format!("C-{}", self.cases)
    }
    fn person_exists(&self, id: &str) -> bool {
        matches!(id, "alice" | "bea")
    }
    fn group_exists(&self, id: &str) -> bool {
        id == "north"
    }
    fn role_exists(&self, id: &str) -> bool {
        matches!(id, "lead" | "practitioner")
    }
    fn policy_exists(&self, id: &str) -> bool {
        id == "immediate"
    }
    fn new_escalation_id(&mut self) -> String {
        "E-1".into()
    }
    fn members(&self, _group: &str, role: &str) -> Vec<String> {
        if role == "lead" { vec!["bea".into()] } else { vec!["alice".into(), "bea".into()] }
    }
}

fn host() -> TestHost {
    TestHost { now: 1_000, cases: 0 }
}

fn ctx() -> RunContext {
    RunContext {
        run_id: "R-1".into(),
        workflow: "t".into(),
        starter: "alice".into(),
        group: "north".into(),
        room: "console:north".into(),
    }
}

const HEADER: &str = "const ALLOWED_ROLES = [\"practitioner\"];\n";

fn compile(body: &str) -> Workflow {
    let engine = WorkflowEngine::new(SandboxLimits::default());
    engine.compile("t", Path::new("workflows/t.rhai"), &format!("{HEADER}{body}")).expect("compiles")
}

fn compile_err(src: &str) -> ScriptError {
    let engine = WorkflowEngine::new(SandboxLimits::default());
    engine.compile("t", Path::new("workflows/t.rhai"), src).expect_err("must not compile")
}

/// Advances the run, answering each question with the next of `answers`, until it
/// finishes, fails or runs out of answers. Returns every effect and the last outcome.
fn drive(wf: &Workflow, answers: &[&str]) -> (Vec<Effect>, Outcome, History) {
    let engine = WorkflowEngine::new(SandboxLimits::default());
    let mut h = host();
    let mut history = History::new();
    let mut effects = Vec::new();
    let mut answers = answers.iter();
    loop {
        let adv = engine.advance(wf, &ctx(), history, &mut h);
        effects.extend(adv.effects);
        // Every advance goes through the store's JSON, as it does in the runtime.
        history = serde_json::from_str(&serde_json::to_string(&adv.history).unwrap()).unwrap();
        match adv.outcome {
            Outcome::Waiting(Wait::Answer { .. }) => match answers.next() {
                Some(a) => history.last_mut().unwrap().result = Some(serde_json::json!(a)),
                None => return (effects, Outcome::Waiting(Wait::Timer { step: 0, until: Millis(0) }), history),
            },
            Outcome::Waiting(Wait::Timer { until, .. }) => {
                h.now = until.0;
                history.last_mut().unwrap().result = Some(serde_json::json!(until.0));
            }
            other => return (effects, other, history),
        }
    }
}

fn failure(body: &str) -> ScriptError {
    match drive(&compile(body), &["x", "y", "z"]).1 {
        Outcome::Failed(e) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_run_suspends_at_each_question_and_replays_to_the_end() {
    let wf = compile(
        r#"
        fn run(ctx) {
            let subject = ask(ctx.starter, "Initials?");
            let risk = choose(ctx.starter, "Risk?", ["no", "yes"]);
            let c = open_case(#{ subject: subject, category: "neglect", risk: risk });
            note(c, "details");
            share(ctx.group, c, `New concern ${c.id}`, #{ purpose: "protect", basis: "public task" });
            tell(ctx.starter, `Thanks, ${c.id}`);
        }
        "#,
    );
    let (effects, outcome, history) = drive(&wf, &["AB 2015", "yes"]);
    assert_eq!(outcome, Outcome::Finished);
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["ask", "choose", "open_case", "note", "share", "tell"]);
    // Each effect performed once, however many replays it took.
    assert_eq!(effects.len(), 6);
    assert!(
        matches!(&effects[4], Effect::Share { text, case_id, .. } if text == "New concern C-1" && case_id == "C-1")
    );
    assert!(
        matches!(&effects[5], Effect::Tell { person, text, step: 5 } if person == "alice" && text == "Thanks, C-1")
    );
}

#[test]
fn a_decision_not_to_share_is_an_effect_with_its_reason_and_needs_one() {
    let wf = compile(
        r#"
        fn run(ctx) {
            let c = open_case(#{ subject: "AB 2015", category: "neglect", risk: "no" });
            decline_share("north", c, #{ reason: "no risk of harm; the school supports the family", consent: "not sought" });
            tell(ctx.starter, "Recorded");
        }
        "#,
    );
    let (effects, outcome, history) = drive(&wf, &[]);
    assert_eq!(outcome, Outcome::Finished);
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["open_case", "decline_share", "tell"]);
    assert_eq!(
        effects[1],
        Effect::DeclineShare {
            step: 1,
            group: "north".into(),
            case_id: "C-1".into(),
            reason: "no risk of harm; the school supports the family".into(),
            consent: Some("not sought".into()),
        }
    );
    let case = "let c = open_case(#{ subject: \"AB\", category: \"other\", risk: \"no\" });";
    for (call, says) in [
        ("decline_share(\"north\", c, #{})", "needs its reason"),
        ("decline_share(\"north\", c, #{ reason: \"  \" })", "needs its reason"),
        ("decline_share(\"north\", c, #{ reason: \"r\", purpose: \"p\" })", "unknown field `purpose`"),
        ("decline_share(\"south\", c, #{ reason: \"r\" })", "south"),
    ] {
        let e = failure(&format!("fn run(ctx) {{ {case} {call}; }}"));
        assert!(e.message.contains(says), "{call}: {}", e.message);
        assert_eq!(e.line, 2, "{call}: the line of the call (the header is line 1)");
    }
}

#[test]
fn suspension_passes_through_try_catch_functions_and_closures() {
    let wf = compile(
        r#"
        fn inner(who) {
            let a = "";
            try { a = ask(who, "Q1"); } catch (e) { a = "caught"; }
            a
        }
        fn run(ctx) {
            let a = inner(ctx.starter);
            let f = |who| ask(who, "Q2");
            let b = f.call(ctx.starter);
            tell(ctx.starter, a + "/" + b);
        }
        "#,
    );
    let (effects, outcome, _) = drive(&wf, &["one", "two"]);
    assert_eq!(outcome, Outcome::Finished);
    assert!(matches!(effects.last(), Some(Effect::Tell { text, .. }) if text == "one/two"));
}

#[test]
fn replay_returns_recorded_results_without_new_effects() {
    let wf = compile(r#"fn run(ctx) { let t = now(); tell(ctx.starter, t); let a = ask(ctx.starter, "Q"); }"#);
    let engine = WorkflowEngine::new(SandboxLimits::default());
    let mut h = host();
    let first = engine.advance(&wf, &ctx(), History::new(), &mut h);
    assert_eq!(first.effects.len(), 2);
    // Time moves on; the replay still sees the recorded reading and sends nothing again.
    h.now = 99_999;
    let again = engine.advance(&wf, &ctx(), first.history.clone(), &mut h);
    assert!(again.effects.is_empty());
    assert!(matches!(again.outcome, Outcome::Waiting(Wait::Answer { step: 2, .. })));
    assert_eq!(again.history, first.history);
}

#[test]
fn a_replay_that_asks_for_something_else_is_diverged() {
    let wf = compile(r#"fn run(ctx) { let a = ask(ctx.starter, "Q"); tell(ctx.starter, a); }"#);
    let other = compile(r#"fn run(ctx) { let a = ask(ctx.starter, "Another question"); tell(ctx.starter, a); }"#);
    let engine = WorkflowEngine::new(SandboxLimits::default());
    let mut h = host();
    let mut history = engine.advance(&wf, &ctx(), History::new(), &mut h).history;
    history[0].result = Some(serde_json::json!("x"));
    let adv = engine.advance(&other, &ctx(), history.clone(), &mut h);
    assert!(matches!(adv.outcome, Outcome::Diverged { step: 0, .. }), "{:?}", adv.outcome);
    assert!(adv.effects.is_empty(), "nothing is performed after divergence");
    assert_eq!(adv.history, history);
}

#[test]
fn sleep_waits_for_a_timer_due_after_the_duration() {
    // Regression: effects before the timer must not read back as pending.
    let wf = compile(r#"fn run(ctx) { tell(ctx.starter, "soon"); sleep("15m"); tell(ctx.starter, "later"); }"#);
    let engine = WorkflowEngine::new(SandboxLimits::default());
    let adv = engine.advance(&wf, &ctx(), History::new(), &mut host());
    assert_eq!(adv.outcome, Outcome::Waiting(Wait::Timer { step: 1, until: Millis(1_000 + 15 * 60_000) }));
    let (effects, outcome, _) = drive(&wf, &[]);
    assert_eq!(outcome, Outcome::Finished);
    assert!(matches!(effects.last(), Some(Effect::Tell { .. })));
}

#[test]
fn sandbox_stops_runaway_scripts_with_a_clear_reason() {
    let cases: &[(&str, &str)] = &[
        ("fn run(ctx) { let n = 0; loop { n += 1; } }", "endless loop"),
        ("fn f(n) { f(n + 1) } fn run(ctx) { f(0) }", "too deeply"),
        (r#"fn run(ctx) { let s = "x"; loop { s += s; } }"#, "too large"),
        (r#"fn run(ctx) { let a = []; loop { a.push(1); } }"#, "too large"),
        (r#"fn run(ctx) { import "secrets" as s; }"#, "import"),
        (r#"fn run(ctx) { ask("mallory", "Q"); }"#, "nobody with id `mallory`"),
        (r#"fn run(ctx) { send("south", "hi"); }"#, "no group with id `south`"),
        (r#"fn run(ctx) { share(ctx.group, "C-1", "hi", #{ purpose: "p" }); }"#, "lawful basis"),
        (r#"fn run(ctx) { sleep("soon"); }"#, "not a duration"),
        (r#"fn run(ctx) { ask(ctx.starter, "Q", #{ colour: "red" }); }"#, "unknown option `colour`"),
        (r#"fn run(ctx) { throw "my own error"; }"#, "my own error"),
        (r#"fn run(ctx) { let x = ctx.nothing; }"#, "nothing"),
    ];
    for (body, reason) in cases {
        if std::env::var("DEBUG_SANDBOX").is_ok() {
            eprintln!("{body}: {:?}", failure(body));
        }
        let e = failure(body);
        assert!(e.message.contains(reason), "{body}: {:?} should mention {reason:?}", e.message);
        assert_eq!(e.file, "workflows/t.rhai");
        // rhai cannot place the operation limit; everything else points into the script.
        if !["endless", "too deeply", "too large"].iter().any(|r| reason.contains(r)) {
            assert!(e.line >= 2, "{body}: line {} should point into the script", e.line);
        }
    }
}

#[test]
fn failures_point_at_the_line_and_column() {
    let e = failure("fn run(ctx) {\n    let x = 1;\n    tell(ctx.starter, \"\");\n}");
    // The header adds one line.
    assert_eq!((e.line, e.column), (4, 5), "{e}");
    assert!(e.message.contains("empty"));
}

#[test]
fn compile_errors_name_file_line_and_column() {
    let e = compile_err("const ALLOWED_ROLES = [\"lead\"];\nfn run(ctx) {\n  let x = ;\n}");
    assert_eq!((e.file.as_str(), e.line), ("workflows/t.rhai", 3), "{e}");
    let e = compile_err("const ALLOWED_ROLES = [\"lead\"];\nfn run(ctx) { eval(\"1\") }");
    assert!(e.message.contains("eval is not available"), "{e}");
    for call in ["print(\"hello\")", "debug(1)"] {
        let e = compile_err(&format!("const ALLOWED_ROLES = [\"lead\"];\nfn run(ctx) {{ {call}; }}"));
        assert!(e.message.contains("use tell(person, text)"), "{e}");
        assert_eq!(e.line, 2, "{e}");
    }
    let e = compile_err("const ALLOWED_ROLES = [\"lead\"];\nfn start(ctx) { }");
    assert!(e.message.contains("fn run(ctx)"), "{e}");
    let e = compile_err("fn run(ctx) { }");
    assert!(e.message.contains("ALLOWED_ROLES"), "{e}");
    let e = compile_err("const ALLOWED_ROLES = [\"lead\"];\nfn run(ctx) { let y = undefined_thing; }");
    assert!(e.message.contains("undefined_thing"), "{e}");
}

#[test]
fn metadata_comes_from_top_level_constants() {
    let wf = compile_err_or_ok(
        "const COMMAND = \"concern\";\nconst DESCRIPTION = \"Raise a concern\";\nconst ALLOWED_ROLES = [\"practitioner\", \"lead\"];\nfn run(ctx) {}",
    );
    assert_eq!(wf.meta.command, "concern");
    assert_eq!(wf.meta.description, "Raise a concern");
    assert_eq!(wf.meta.allowed_roles, ["practitioner", "lead"]);
    assert!(wf.may_start(&["lead".into()]));
    assert!(!wf.may_start(&["reviewer".into()]));
    assert_eq!(wf.hash, source_hash(&wf.source));
}

fn compile_err_or_ok(src: &str) -> Workflow {
    WorkflowEngine::new(SandboxLimits::default()).compile("t", Path::new("t.rhai"), src).expect("compiles")
}

#[test]
fn history_serializes_stably() {
    let e = HistoryEntry {
        kind: EffectKind::OpenCase,
        fingerprint: "ab".into(),
        result: Some(serde_json::json!({"id": "C-1"})),
    };
    assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"kind":"open_case","fingerprint":"ab","result":{"id":"C-1"}}"#);
}

#[test]
fn a_question_asked_inside_sort_waits_instead_of_finishing() {
    // rhai's sort swallows errors from its comparator, suspension included; the script
    // then runs on to its end, but the run must still wait for the answer.
    let wf = compile(
        r#"fn run(ctx) { let x = [1, 2]; x.sort(|a, b| if ask(ctx.starter, "Reverse?") == "yes" { b - a } else { a - b }); }"#,
    );
    let engine = WorkflowEngine::new(SandboxLimits::default());
    let adv = engine.advance(&wf, &ctx(), History::new(), &mut host());
    assert!(matches!(adv.outcome, Outcome::Waiting(Wait::Answer { step: 0, .. })), "{:?}", adv.outcome);
    let (effects, outcome, _) = drive(
        &compile(
            r#"fn run(ctx) { let x = [1, 2]; x.sort(|a, b| if ask(ctx.starter, "Reverse?") == "yes" { b - a } else { a - b }); tell(ctx.starter, `${x}`); }"#,
        ),
        &["yes"],
    );
    assert_eq!(outcome, Outcome::Finished);
    assert!(matches!(effects.last(), Some(Effect::Tell { text, .. }) if text == "[2, 1]"), "{effects:?}");
}

#[test]
fn a_sleep_longer_than_five_years_is_refused() {
    let e = failure(r#"fn run(ctx) { sleep("9000 years"); }"#);
    assert!(e.message.contains("longest wait"), "{e}");
}

#[test]
fn escalate_and_wait_for_ack_resume_with_the_ack_or_unit_on_timeout() {
    let wf = compile(
        r#"
        fn run(ctx) {
            let c = open_case(#{ subject: "AB 2015", category: "neglect", risk: "yes" });
            let e = escalate(c, "immediate");
            let ack = wait_for_ack(c, "15m");
            if ack == () {
                tell(ctx.starter, `nobody acknowledged ${c.id} (${e})`);
            } else {
                tell(ctx.starter, `${ack.by} acknowledged at ${ack.at}`);
            }
        }
        "#,
    );
    let engine = WorkflowEngine::new(SandboxLimits::default());
    let mut h = host();
    let adv = engine.advance(&wf, &ctx(), History::new(), &mut h);
    assert!(matches!(&adv.effects[1], Effect::Escalate { case_id, policy, escalation_id, step: 1 }
        if case_id == "C-1" && policy == "immediate" && escalation_id == "E-1"));
    let until = Millis(1_000 + 15 * 60_000);
    assert_eq!(adv.effects[2], Effect::WaitForAck { step: 2, case_id: "C-1".into(), until });
    assert_eq!(adv.outcome, Outcome::Waiting(Wait::Ack { step: 2, case_id: "C-1".into(), until }));

    // Acknowledged: the script sees who and when.
    let mut acked = adv.history.clone();
    acked[2].result = Some(serde_json::json!({ "by": "bea", "at": 0 }));
    let adv2 = engine.advance(&wf, &ctx(), acked, &mut h);
    assert_eq!(adv2.outcome, Outcome::Finished);
    assert!(
        matches!(&adv2.effects[0], Effect::Tell { text, .. } if text == "bea acknowledged at 1970-01-01T00:00:00.000Z")
    );
    // The deadline came first: the script sees ().
    let mut timed_out = adv.history;
    timed_out[2].result = Some(ACK_TIMED_OUT);
    let adv3 = engine.advance(&wf, &ctx(), timed_out, &mut h);
    assert!(matches!(&adv3.effects[0], Effect::Tell { text, .. } if text == "nobody acknowledged C-1 (E-1)"));
}

#[test]
fn escalating_by_an_unknown_policy_fails_with_the_fix() {
    let e = failure(
        r#"
        fn run(ctx) {
            let c = open_case(#{ subject: "AB 2015", category: "neglect", risk: "yes" });
            escalate(c, "urgent");
        }
        "#,
    );
    assert!(e.message.contains("no policy `urgent`"), "{e}");
    assert_eq!((e.line, e.column), (5, 13)); // the header is line 1
}

#[test]
fn sleep_until_waits_for_an_absolute_time_and_refuses_nonsense() {
    let wf = compile(
        r#"
        fn run(ctx) {
            sleep_until("2026-11-30T09:00:00Z");
            tell(ctx.starter, "Monday");
        }
        "#,
    );
    let engine = WorkflowEngine::new(SandboxLimits::default());
    let adv = engine.advance(&wf, &ctx(), History::new(), &mut host());
    let until = Millis::parse_rfc3339("2026-11-30T09:00:00Z").unwrap();
    assert_eq!(adv.outcome, Outcome::Waiting(Wait::Timer { step: 0, until }));
    assert_eq!(adv.effects, vec![Effect::Sleep { step: 0, until }]);
    let e = failure(r#"fn run(ctx) { sleep_until("next monday"); }"#);
    assert!(e.message.contains("is not a time"), "{e}");
}

#[test]
fn open_cases_waits_for_the_store_and_members_come_from_the_directory() {
    let wf = compile(
        r#"
        fn run(ctx) {
            let leads = members(ctx.group, "lead");
            let open = open_cases(ctx.group);
            for lead in leads {
                tell(lead, `${open.len()} open: ${open[0].id}`);
            }
        }
        "#,
    );
    let engine = WorkflowEngine::new(SandboxLimits::default());
    let adv = engine.advance(&wf, &ctx(), History::new(), &mut host());
    let query = Query::OpenCases { group: "north".into() };
    assert_eq!(adv.outcome, Outcome::Waiting(Wait::Query { step: 1, query }));
    let mut history = adv.history;
    history[1].result = Some(serde_json::json!([{ "id": "C-3" }]));
    let adv = engine.advance(&wf, &ctx(), history, &mut host());
    assert_eq!(adv.outcome, Outcome::Finished);
    assert_eq!(adv.effects, vec![Effect::Tell { step: 2, person: "bea".into(), text: "1 open: C-3".into() }]);
}

#[test]
fn members_of_an_unknown_role_is_an_error_not_nobody() {
    let e = failure(r#"fn run(ctx) { members(ctx.group, "leed"); }"#);
    assert!(e.message.contains("no role `leed`"), "{e}");
}

#[test]
fn a_fingerprint_is_over_the_effect_and_its_arguments_as_compact_json() {
    // Stored histories hold fingerprints: the encoding must not change.
    let args = serde_json::json!({ "prompt": "Child's \"initials\"\n", "choices": ["a", "é"], "n": 1.5 });
    let mut h = Sha256::new();
    h.update(b"ask\0");
    h.update(args.to_string().as_bytes());
    assert_eq!(fingerprint(EffectKind::Ask, &args), hex::encode(&h.finalize()[..8]));
    // Pinned, so that a change of serde_json's output shows here too (computed apart from
    // serde_json: SHA-256 of "ask", a 0 byte, and the compact JSON with sorted keys).
    assert_eq!(fingerprint(EffectKind::Ask, &args), "1c9b665da206e1a5");
}
